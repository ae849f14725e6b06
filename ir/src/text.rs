//! The `.air` text format: a line-oriented spelling of a [`Graph`] that people read,
//! write by hand and keep in snapshots.
//!
//! ```text
//! graph gpt2
//! dims batch = 1, d_model = 768, seq = 128, vocab = 50257
//! layer embed
//! %0 = input "tokens" : [batch, seq] i64
//! %1 = param "wte" : [vocab, d_model] f32
//! %2 = embedding %1, %0 : [batch, seq, d_model] f32
//! layer
//! %3 = reduce_sum %2 {axes = [2], keep_dims = true} : [batch, seq, 1] f32
//! output sums = %3
//! ```
//!
//! One statement per line; `#` starts a comment. `layer NAME` sets the layer of the
//! ops that follow and a bare `layer` resets it. Every op line spells out its result
//! type: the parser checks it against inference but keeps the written spelling, so a
//! hand-written `[1, 128, 768]` survives a round trip.
//!
//! The parser never panics and never recurses on user text (attribute lists hold
//! scalars only; mask expressions bound their own depth). Every error is an
//! [`IrError::Parse`] at a 1-based line and column that says what was expected.

use crate::{
    infer, Attention, BinaryOp, CmpOp, DType, Dim, Dims, Graph, GraphBuilder, IrError, LinearForm,
    MaskExpr, NodeId, Op, ReduceKind, Result, Shape, TensorType, TopKOutput, UnaryOp,
};
use std::collections::HashMap;
use std::fmt::Write;

// ---------------------------------------------------------------------------------
// Printer
// ---------------------------------------------------------------------------------

/// The text form of `graph`. [`parse`] reads it back to an equal graph.
pub fn print(graph: &Graph) -> String {
    let mut out = String::new();
    // `write!` to a `String` cannot fail, so its results are ignored throughout.
    let _ = writeln!(out, "graph {}", name_text(&graph.name));
    if !graph.dims.is_empty() {
        let bindings: Vec<String> = graph
            .dims
            .iter()
            .map(|(name, size)| format!("{name} = {size}"))
            .collect();
        let _ = writeln!(out, "dims {}", bindings.join(", "));
    }
    let mut layer: Option<&str> = None;
    for id in graph.node_ids() {
        let node = graph.node(id);
        if node.layer.as_deref() != layer {
            layer = node.layer.as_deref();
            match layer {
                Some(l) => {
                    let _ = writeln!(out, "layer {}", name_text(l));
                }
                None => out.push_str("layer\n"),
            }
        }
        let operands: Vec<String> = graph
            .operands(id)
            .iter()
            .map(|o| format!("%{}", o.index()))
            .collect();
        let _ = writeln!(
            out,
            "%{} = {} : {}",
            id.index(),
            op_text(&node.op, &operands.join(", ")),
            node.ty
        );
    }
    for (name, id) in graph.outputs() {
        let _ = writeln!(out, "output {} = %{}", name_text(name), id.index());
    }
    out
}

/// `name`, its positional argument, `operands` and `{attrs}`, as on an op line. The
/// DOT export uses it without operands for node labels.
pub(crate) fn op_text(op: &Op, operands: &str) -> String {
    let mut s = op.name().to_string();
    match op {
        Op::Input { name } | Op::Param { name } => {
            s.push(' ');
            s.push_str(&quote(name));
        }
        Op::Mask { expr }
        | Op::Attention(Attention {
            mask: Some(expr), ..
        }) => {
            s.push(' ');
            s.push_str(&quote(&expr.to_string()));
        }
        Op::Const { value } => {
            s.push(' ');
            s.push_str(&float_text(*value));
        }
        _ => {}
    }
    if !operands.is_empty() {
        s.push(' ');
        s.push_str(operands);
    }
    let attrs = attributes(op);
    if !attrs.is_empty() {
        let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        let _ = write!(s, " {{{}}}", attrs.join(", "));
    }
    s
}

/// The attributes of `op` in print order, as `(name, value text)`. This is the one
/// place that names attributes: the parser takes the accepted names from it too.
fn attributes(op: &Op) -> Vec<(&'static str, String)> {
    let list = |xs: &[usize]| {
        let xs: Vec<String> = xs.iter().map(usize::to_string).collect();
        format!("[{}]", xs.join(", "))
    };
    match op {
        Op::Iota { axis }
        | Op::Softmax { axis }
        | Op::Concat { axis }
        | Op::Gather { axis }
        | Op::ScatterAdd { axis }
        | Op::CumSum { axis }
        | Op::Scan { axis } => vec![("axis", axis.to_string())],
        Op::RandomFeatures { seed } => vec![("seed", seed.to_string())],
        Op::LinearAttention(l) => {
            let form = match l.form {
                LinearForm::Parallel => "parallel",
                LinearForm::Chunkwise { .. } => "chunkwise",
                LinearForm::Recurrent => "recurrent",
            };
            let mut attrs = vec![
                ("form", form.to_string()),
                ("causal", l.causal.to_string()),
                ("decay", l.decay.name().to_string()),
                ("normalize", l.normalize.to_string()),
            ];
            if let LinearForm::Chunkwise { chunk } = l.form {
                attrs.push(("chunk", chunk.to_string()));
            }
            attrs
        }
        Op::MoeDispatch(m) => vec![
            ("activation", m.activation.name().to_string()),
            ("gated", m.gated.to_string()),
            ("choice", m.choice.name().to_string()),
            ("k", m.k.to_string()),
            ("shared", m.shared.name().to_string()),
        ],
        Op::Cast { to } => vec![("to", to.name().to_string())],
        Op::Reduce {
            axes, keep_dims, ..
        } => vec![("axes", list(axes)), ("keep_dims", keep_dims.to_string())],
        Op::LayerNorm { eps } | Op::RmsNorm { eps } => vec![("eps", float_text(*eps))],
        Op::Reshape { shape } | Op::Broadcast { shape } => vec![("shape", shape.to_string())],
        Op::Transpose { perm } => vec![("perm", list(perm))],
        Op::Slice { axis, start, end } => vec![
            ("axis", axis.to_string()),
            ("start", start.to_string()),
            ("end", end.to_string()),
        ],
        Op::Rope { theta, scaling } => {
            let mut attrs = vec![("theta", float_text(*theta))];
            let f = |v: f64| float_text(v);
            match *scaling {
                crate::RopeScaling::None => {}
                crate::RopeScaling::Linear { factor } => {
                    attrs.push(("scaling", scaling.name().into()));
                    attrs.push(("factor", f(factor)));
                }
                crate::RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_positions,
                } => {
                    attrs.push(("scaling", scaling.name().into()));
                    attrs.push(("factor", f(factor)));
                    attrs.push(("low_freq_factor", f(low_freq_factor)));
                    attrs.push(("high_freq_factor", f(high_freq_factor)));
                    attrs.push(("original_max_positions", original_max_positions.to_string()));
                }
                crate::RopeScaling::Yarn {
                    factor,
                    original_max_positions,
                    beta_fast,
                    beta_slow,
                    attention_factor,
                } => {
                    attrs.push(("scaling", scaling.name().into()));
                    attrs.push(("factor", f(factor)));
                    attrs.push(("original_max_positions", original_max_positions.to_string()));
                    attrs.push(("beta_fast", f(beta_fast)));
                    attrs.push(("beta_slow", f(beta_slow)));
                    attrs.push(("attention_factor", f(attention_factor)));
                }
            }
            attrs
        }
        Op::TopK { k, .. } => vec![("k", k.to_string())],
        Op::Attention(a) => {
            let mut attrs = vec![
                ("scale", float_text(a.scale)),
                ("groups", a.groups.to_string()),
            ];
            if let Some(c) = a.softcap {
                attrs.push(("softcap", float_text(c)));
            }
            attrs.push(("bias", a.bias.to_string()));
            if a.segments {
                attrs.push(("segments", "true".to_string()));
            }
            if let Some([bq, bk]) = a.block {
                attrs.push(("block_q", bq.to_string()));
                attrs.push(("block_k", bk.to_string()));
                if a.listed {
                    attrs.push(("listed", "true".to_string()));
                }
            }
            attrs
        }
        Op::Routing(r) => vec![
            ("scale", float_text(r.scale)),
            ("clusters", r.clusters.to_string()),
            ("window", r.window.to_string()),
            ("causal", r.causal.to_string()),
        ],
        Op::Lsh(l) => vec![
            ("scale", float_text(l.scale)),
            ("n_hashes", l.n_hashes.to_string()),
            ("buckets", l.buckets.to_string()),
            ("chunk", l.chunk.to_string()),
            ("causal", l.causal.to_string()),
        ],
        Op::Moba(m) => vec![
            ("scale", float_text(m.scale)),
            ("groups", m.groups.to_string()),
            ("block", m.block.to_string()),
            ("top_k", m.top_k.to_string()),
        ],
        Op::Input { .. }
        | Op::Param { .. }
        | Op::Const { .. }
        | Op::Mask { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Select
        | Op::MatMul
        | Op::Embedding => Vec::new(),
    }
}

/// Shortest round-trip spelling (`0.125`, `1e-5`, `500000.0`, `-inf`); `nan` rather
/// than Rust's `NaN` so every float word is lower case.
fn float_text(v: f64) -> String {
    if v.is_nan() {
        "nan".to_string()
    } else {
        format!("{v:?}")
    }
}

/// A graph, layer or output name: bare when it is an identifier, quoted otherwise, so
/// any string survives a round trip.
fn name_text(name: &str) -> String {
    if is_ident(name) {
        name.to_string()
    } else {
        quote(name)
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_ident_start) && chars.all(is_ident_char)
}

// ---------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// `gpt2`, `matmul`, `layers.0.attn`, `f32`, `true`.
    Ident(String),
    /// `%3` or `%x`: the name after the `%`.
    Ref(String),
    /// The digits and letters of a number, unchecked: `128`, `0.125`, `1e-5`.
    Number(String),
    /// A quoted string with escapes resolved; `cols[i]` is the source column of the
    /// `i`-th character (and one more entry for the closing quote), so an error inside
    /// a mask expression points at the right column of the file.
    Str { value: String, cols: Vec<usize> },
    /// One of `= , : [ ] { } -`.
    Punct(char),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    col: usize,
}

const PUNCTUATION: &str = "=,:[]{}-";

fn parse_error(line: usize, col: usize, message: impl Into<String>) -> IrError {
    IrError::Parse {
        line,
        col,
        message: message.into(),
    }
}

/// Tokens of one line and the column where the line (or its comment) ends.
fn lex(line: usize, text: &str) -> Result<(Vec<Token>, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(c) = at(i) {
        let col = i + 1;
        if c == '#' {
            break;
        }
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let take_while = |i: &mut usize, pred: &dyn Fn(char) -> bool| {
            let start = *i;
            while at(*i).is_some_and(pred) {
                *i += 1;
            }
            chars[start..*i].iter().collect::<String>()
        };
        let tok = if is_ident_start(c) {
            Tok::Ident(take_while(&mut i, &is_ident_char))
        } else if c.is_ascii_digit() {
            // Greedy (`12ab` is one bad number rather than `12` then `ab`); a sign is
            // part of the number only right after an exponent's `e`.
            let start = i;
            while let Some(d) = at(i) {
                let exponent_sign =
                    matches!(d, '+' | '-') && i > start && matches!(at(i - 1), Some('e' | 'E'));
                if d.is_ascii_alphanumeric() || matches!(d, '.' | '_') || exponent_sign {
                    i += 1;
                } else {
                    break;
                }
            }
            Tok::Number(chars[start..i].iter().collect())
        } else if c == '%' {
            i += 1;
            let name = take_while(&mut i, &is_ident_char);
            if name.is_empty() {
                return Err(parse_error(
                    line,
                    col,
                    "expected a value name after `%`, like `%3` or `%x`",
                ));
            }
            Tok::Ref(name)
        } else if c == '"' {
            lex_string(line, &chars, &mut i)?
        } else if PUNCTUATION.contains(c) {
            i += 1;
            Tok::Punct(c)
        } else {
            return Err(parse_error(
                line,
                col,
                format!(
                    "unexpected character `{c}`; expected a name, a number, a `%value`, \
                     a quoted string or one of `= , : [ ] {{ }}`"
                ),
            ));
        };
        tokens.push(Token { tok, col });
    }
    Ok((tokens, i + 1))
}

/// A string starting at the quote `chars[*i]`; leaves `*i` after the closing quote.
fn lex_string(line: usize, chars: &[char], i: &mut usize) -> Result<Tok> {
    let open = *i + 1;
    *i += 1;
    let mut value = String::new();
    let mut cols = Vec::new();
    loop {
        let c = match chars.get(*i) {
            None => {
                return Err(parse_error(
                    line,
                    open,
                    "unterminated string: expected a closing `\"` on the same line",
                ))
            }
            Some('"') => {
                cols.push(*i + 1);
                *i += 1;
                return Ok(Tok::Str { value, cols });
            }
            Some('\\') => {
                let c = match chars.get(*i + 1) {
                    Some('"') => '"',
                    Some('\\') => '\\',
                    Some('n') => '\n',
                    Some('r') => '\r',
                    Some('t') => '\t',
                    other => {
                        let found =
                            other.map_or("the end of the line".to_string(), |c| format!("`\\{c}`"));
                        return Err(parse_error(
                            line,
                            *i + 1,
                            format!(
                                "expected an escape (`\\\"`, `\\\\`, `\\n`, `\\r` or `\\t`) \
                                 in the string, found {found}"
                            ),
                        ));
                    }
                };
                cols.push(*i + 1);
                *i += 2;
                c
            }
            Some(&c) => {
                cols.push(*i + 1);
                *i += 1;
                c
            }
        };
        value.push(c);
    }
}

/// How a token reads in a message: "`{`", "the end of the line".
fn describe(tok: Option<&Tok>) -> String {
    let Some(tok) = tok else {
        return "the end of the line".to_string();
    };
    match tok {
        Tok::Ident(s) | Tok::Number(s) => format!("`{}`", clip(s)),
        Tok::Ref(s) => format!("`%{}`", clip(s)),
        Tok::Str { value, .. } => format!("the string `{}`", quote(&clip(value))),
        Tok::Punct(c) => format!("`{c}`"),
    }
}

/// User text quoted in a message, cut short so a 10 000-digit number does not
/// drown the message.
fn clip(s: &str) -> String {
    const MAX: usize = 32;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        s.chars().take(MAX).chain("...".chars()).collect()
    }
}

/// The tokens of one line with a read position.
struct Cursor {
    tokens: Vec<Token>,
    pos: usize,
    line: usize,
    end_col: usize,
}

impl Cursor {
    fn new(line: usize, text: &str) -> Result<Cursor> {
        let (tokens, end_col) = lex(line, text)?;
        Ok(Cursor {
            tokens,
            pos: 0,
            line,
            end_col,
        })
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.tok)
    }

    /// Column of the next token, or of the end of the line.
    fn col(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end_col, |t| t.col)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.tokens.len()
    }

    fn bump(&mut self) {
        self.pos += 1;
    }

    fn error(&self, col: usize, message: impl Into<String>) -> IrError {
        parse_error(self.line, col, message)
    }

    /// "expected `what`, found `next token`" at the next token.
    fn expected(&self, what: &str) -> IrError {
        self.error(
            self.col(),
            format!("expected {what}, found {}", describe(self.peek())),
        )
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(&Tok::Punct(c));
        if found {
            self.bump();
        }
        found
    }

    fn expect(&mut self, c: char, what: &str) -> Result<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    fn expect_end(&self, what: &str) -> Result<()> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    /// An identifier and its column.
    fn ident(&mut self, what: &str) -> Result<(String, usize)> {
        self.word(what, |t| match t {
            Tok::Ident(s) => Some(s),
            _ => None,
        })
    }

    /// A `%name` reference and its column.
    fn reference(&mut self, what: &str) -> Result<(String, usize)> {
        self.word(what, |t| match t {
            Tok::Ref(s) => Some(s),
            _ => None,
        })
    }

    /// The text of the next token if `pick` accepts it, and its column.
    fn word(&mut self, what: &str, pick: fn(&Tok) -> Option<&String>) -> Result<(String, usize)> {
        let col = self.col();
        match self.peek().and_then(pick) {
            Some(s) => {
                let s = s.clone();
                self.bump();
                Ok((s, col))
            }
            None => Err(self.expected(what)),
        }
    }

    /// A quoted string, its column and the columns of its characters.
    fn string(&mut self, what: &str) -> Result<(String, usize, Vec<usize>)> {
        let col = self.col();
        match self.peek() {
            Some(Tok::Str { value, cols }) => {
                let out = (value.clone(), col, cols.clone());
                self.bump();
                Ok(out)
            }
            _ => Err(self.expected(what)),
        }
    }

    /// A graph, layer or output name: an identifier or a quoted string.
    fn name(&mut self, what: &str) -> Result<String> {
        match self.peek() {
            Some(Tok::Ident(s)) | Some(Tok::Str { value: s, .. }) => {
                let s = s.clone();
                self.bump();
                Ok(s)
            }
            _ => Err(self.expected(what)),
        }
    }

    /// A number (optionally negative) or a name: one attribute value, list element,
    /// dimension or constant.
    fn scalar(&mut self, what: &str) -> Result<Scalar> {
        let col = self.col();
        let negative = self.eat('-');
        let sign = if negative { "-" } else { "" };
        let (text, is_number) = match self.peek() {
            Some(Tok::Number(s)) => (format!("{sign}{s}"), true),
            Some(Tok::Ident(s)) => (format!("{sign}{s}"), false),
            _ => return Err(self.expected(what)),
        };
        self.bump();
        Ok(Scalar {
            text,
            is_number,
            col,
            line: self.line,
        })
    }

    /// The elements of a `[a, b, ..]` list whose `[` was just read.
    fn list(&mut self, what: &str) -> Result<Vec<Scalar>> {
        let mut items = Vec::new();
        if self.eat(']') {
            return Ok(items);
        }
        loop {
            items.push(self.scalar(what)?);
            if self.eat(']') {
                return Ok(items);
            }
            self.expect(',', "`,` or `]` in the list")?;
        }
    }
}

/// An unchecked number or name; its meaning depends on where it stands.
#[derive(Clone, Debug)]
struct Scalar {
    text: String,
    is_number: bool,
    col: usize,
    line: usize,
}

impl Scalar {
    fn error(&self, message: String) -> IrError {
        parse_error(self.line, self.col, message)
    }

    fn u64(&self, what: &str) -> Result<u64> {
        if !(self.is_number && self.text.bytes().all(|b| b.is_ascii_digit())) {
            return Err(self.error(format!(
                "expected a non-negative integer for {what}, found `{}`",
                clip(&self.text)
            )));
        }
        self.text.parse().map_err(|_| {
            self.error(format!(
                "`{}` is too large for {what} (at most {})",
                clip(&self.text),
                u64::MAX
            ))
        })
    }

    fn usize(&self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        usize::try_from(n).map_err(|_| {
            self.error(format!(
                "`{n}` is too large for {what} (at most {})",
                usize::MAX
            ))
        })
    }

    fn f64(&self, what: &str) -> Result<f64> {
        let value = match self.text.as_str() {
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            "nan" | "-nan" => Some(f64::NAN),
            t if self.is_number => t.parse::<f64>().ok(),
            _ => None,
        };
        match value {
            // A finite literal that overflows would silently become infinite.
            Some(v) if v.is_finite() || !self.is_number => Ok(v),
            Some(_) => Err(self.error(format!(
                "`{}` is out of range for {what}; write `inf` or `-inf` for an infinity",
                clip(&self.text)
            ))),
            None => Err(self.error(format!(
                "expected a number like `0.125`, `1e-5`, `-inf` or `nan` for {what}, found `{}`",
                clip(&self.text)
            ))),
        }
    }

    fn bool(&self, what: &str) -> Result<bool> {
        match self.text.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            t => Err(self.error(format!(
                "expected `true` or `false` for {what}, found `{}`",
                clip(t)
            ))),
        }
    }

    fn dtype(&self, what: &str) -> Result<DType> {
        DType::from_name(&self.text).ok_or_else(|| self.error(unknown_dtype(&self.text, what)))
    }

    /// A dimension: a size, or a name bound on the `dims` line.
    fn dim(&self, what: &str, dims: &Dims) -> Result<Dim> {
        if self.is_number {
            return self.u64(what).map(Dim::Const);
        }
        if !is_ident(&self.text) {
            return Err(self.error(format!(
                "expected a size or a dimension name like `seq` for {what}, found `{}`",
                clip(&self.text)
            )));
        }
        if dims.get(&self.text).is_none() {
            return Err(self.error(format!(
                "dimension `{0}` is not bound; add `{0} = N` to the `dims` line",
                self.text
            )));
        }
        Ok(Dim::Sym(self.text.clone()))
    }
}

fn unknown_dtype(name: &str, what: &str) -> String {
    let all: Vec<String> = DType::ALL.iter().map(|d| format!("`{d}`")).collect();
    format!(
        "unknown dtype `{}` for {what}; expected one of {}",
        clip(name),
        all.join(", ")
    )
}

// ---------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------

/// Parse the text form of a graph (see the module docs). The result is verified.
pub fn parse(text: &str) -> Result<Graph> {
    let mut parser = Parser::new();
    let mut last_line = 1;
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let mut cur = Cursor::new(line, raw.strip_suffix('\r').unwrap_or(raw))?;
        if cur.at_end() {
            continue;
        }
        last_line = line;
        parser.statement(&mut cur)?;
    }
    parser.finish(last_line)
}

/// A written attribute: `name = value`.
struct Attr {
    name: String,
    col: usize,
    value: Value,
}

enum Value {
    Scalar(Scalar),
    List { items: Vec<Scalar>, col: usize },
}

/// The attributes written on one op line, read by name.
struct Attrs<'a> {
    items: Vec<Attr>,
    op: &'static str,
    /// The names `op` takes, from [`attributes`].
    accepted: Vec<&'static str>,
    /// Where a missing attribute is reported: the op name.
    op_col: usize,
    line: usize,
    dims: &'a Dims,
}

impl Attrs<'_> {
    /// Reject attributes `op` does not take, before reading any, so a misspelt name
    /// is reported as such rather than as a missing one.
    fn check_names(&self) -> Result<()> {
        let accepted = &self.accepted;
        for attr in &self.items {
            if accepted.contains(&attr.name.as_str()) {
                continue;
            }
            let message = if accepted.is_empty() {
                format!("`{}` takes no attributes, found `{}`", self.op, attr.name)
            } else {
                let nearest = accepted
                    .iter()
                    .min_by_key(|a| strsim::levenshtein(a, &attr.name))
                    .filter(|a| strsim::levenshtein(a, &attr.name) <= 2);
                let hint = match nearest {
                    Some(a) if accepted.len() == 1 => format!("did you mean `{a}`?"),
                    Some(a) => format!("did you mean `{a}`? (it takes {})", backticked(accepted)),
                    None => format!("it takes {}", backticked(accepted)),
                };
                format!("`{}` has no attribute `{}`; {hint}", self.op, attr.name)
            };
            return Err(parse_error(self.line, attr.col, message));
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Result<&Value> {
        self.items
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.value)
            .ok_or_else(|| {
                parse_error(
                    self.line,
                    self.op_col,
                    format!(
                        "`{}` needs the attribute `{name}` (it takes {})",
                        self.op,
                        backticked(&self.accepted)
                    ),
                )
            })
    }

    /// The attribute `name` if it was written (for optional attributes).
    fn optional(&self, name: &str) -> Option<&Value> {
        self.items.iter().find(|a| a.name == name).map(|a| &a.value)
    }

    fn what(&self, name: &str) -> String {
        format!("the attribute `{name}` of `{}`", self.op)
    }

    fn scalar(&self, name: &str) -> Result<&Scalar> {
        match self.get(name)? {
            Value::Scalar(s) => Ok(s),
            Value::List { col, .. } => Err(parse_error(
                self.line,
                *col,
                format!(
                    "expected a single value for {}, found a list",
                    self.what(name)
                ),
            )),
        }
    }

    fn list(&self, name: &str) -> Result<&[Scalar]> {
        match self.get(name)? {
            Value::List { items, .. } => Ok(items),
            Value::Scalar(s) => Err(s.error(format!(
                "expected a list like `[0, 1]` for {}, found `{}`",
                self.what(name),
                clip(&s.text)
            ))),
        }
    }

    fn usize(&self, name: &str) -> Result<usize> {
        self.scalar(name)?.usize(&self.what(name))
    }

    fn u64(&self, name: &str) -> Result<u64> {
        self.scalar(name)?.u64(&self.what(name))
    }

    fn f64(&self, name: &str) -> Result<f64> {
        self.scalar(name)?.f64(&self.what(name))
    }

    fn bool(&self, name: &str) -> Result<bool> {
        self.scalar(name)?.bool(&self.what(name))
    }

    fn dtype(&self, name: &str) -> Result<DType> {
        self.scalar(name)?.dtype(&self.what(name))
    }

    /// One of the names `choices`.
    fn word(&self, name: &str, choices: &[&'static str]) -> Result<&'static str> {
        let s = self.scalar(name)?;
        choices
            .iter()
            .find(|c| **c == s.text)
            .copied()
            .ok_or_else(|| {
                s.error(format!(
                    "expected one of {} for {}, found `{}`",
                    choices.join(", "),
                    self.what(name),
                    clip(&s.text)
                ))
            })
    }

    fn dim(&self, name: &str) -> Result<Dim> {
        self.scalar(name)?.dim(&self.what(name), self.dims)
    }

    fn usizes(&self, name: &str) -> Result<Vec<usize>> {
        let what = self.what(name);
        self.list(name)?.iter().map(|s| s.usize(&what)).collect()
    }

    fn shape(&self, name: &str) -> Result<Shape> {
        let what = self.what(name);
        let dims = self.list(name)?.iter().map(|s| s.dim(&what, self.dims));
        Ok(Shape(dims.collect::<Result<_>>()?))
    }
}

/// A quoted mask expression; errors point at the column inside the quotes.
fn mask_expr(cur: &mut Cursor, expected: &str) -> Result<MaskExpr> {
    let (text, col, cols) = cur.string(expected)?;
    MaskExpr::parse(&text).map_err(|e| {
        let at = cols.get(e.col.saturating_sub(1)).copied().unwrap_or(col);
        cur.error(at, format!("in the mask expression: {}", e.message))
    })
}

fn backticked(names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    names.join(", ")
}

/// One op of every kind, with placeholder attributes: the parser's table of op names,
/// built from the op enums so it can never disagree with [`Op::name`].
fn op_templates() -> Vec<Op> {
    let mut ops = vec![
        Op::Input {
            name: String::new(),
        },
        Op::Param {
            name: String::new(),
        },
        Op::Const { value: 0.0 },
        Op::Iota { axis: 0 },
        Op::Select,
        Op::Cast { to: DType::F32 },
        Op::Softmax { axis: 0 },
        Op::LayerNorm { eps: 0.0 },
        Op::RmsNorm { eps: 0.0 },
        Op::MatMul,
        Op::Reshape {
            shape: Shape::scalar(),
        },
        Op::Transpose { perm: Vec::new() },
        Op::Broadcast {
            shape: Shape::scalar(),
        },
        Op::Concat { axis: 0 },
        Op::Slice {
            axis: 0,
            start: Dim::Const(0),
            end: Dim::Const(0),
        },
        Op::Gather { axis: 0 },
        Op::ScatterAdd { axis: 0 },
        Op::Embedding,
        // Every scaling, so the templates accept all their attributes.
        Op::Rope {
            theta: 0.0,
            scaling: Default::default(),
        },
        Op::Rope {
            theta: 0.0,
            scaling: crate::RopeScaling::Llama3 {
                factor: 1.0,
                low_freq_factor: 1.0,
                high_freq_factor: 2.0,
                original_max_positions: 1,
            },
        },
        Op::Rope {
            theta: 0.0,
            scaling: crate::RopeScaling::Yarn {
                factor: 1.0,
                original_max_positions: 1,
                beta_fast: 1.0,
                beta_slow: 1.0,
                attention_factor: 1.0,
            },
        },
        Op::TopK {
            k: 0,
            output: TopKOutput::Values,
        },
        Op::TopK {
            k: 0,
            output: TopKOutput::Indices,
        },
        Op::CumSum { axis: 0 },
        Op::Scan { axis: 0 },
        Op::RandomFeatures { seed: 0 },
        // Chunkwise, so the template accepts the optional `chunk`.
        Op::LinearAttention(crate::LinearAttention {
            causal: true,
            decay: crate::Decay::None,
            normalize: false,
            form: LinearForm::Chunkwise { chunk: 1 },
        }),
        Op::MoeDispatch(crate::MoeDispatch {
            activation: UnaryOp::Silu,
            gated: true,
            choice: crate::MoeChoice::Token,
            k: 1,
            shared: crate::MoeShared::None,
        }),
        Op::Mask {
            expr: MaskExpr::Int(0),
        },
        // A softcap, so the template accepts the optional attribute.
        Op::Attention(Attention {
            softcap: Some(1.0),
            segments: true,
            ..Attention::new(1.0)
        }),
        Op::Moba(crate::Moba {
            scale: 1.0,
            groups: 1,
            block: 1,
            top_k: 0,
        }),
        Op::Routing(crate::Routing {
            scale: 1.0,
            clusters: 1,
            window: 1,
            causal: false,
        }),
        Op::Lsh(crate::Lsh {
            scale: 1.0,
            n_hashes: 1,
            buckets: 2,
            chunk: 1,
            causal: false,
        }),
        // A softcap and a block list, so the template accepts the optional attributes.
        Op::Attention(Attention {
            softcap: Some(1.0),
            block: Some([1, 1]),
            listed: true,
            segments: true,
            ..Attention::new(1.0)
        }),
    ];
    ops.extend(UnaryOp::ALL.map(Op::Unary));
    ops.extend(BinaryOp::ALL.map(Op::Binary));
    ops.extend(CmpOp::ALL.map(Op::Compare));
    ops.extend(ReduceKind::ALL.map(|kind| Op::Reduce {
        kind,
        axes: Vec::new(),
        keep_dims: false,
    }));
    ops
}

/// `template` with its attributes read from `attrs` (positional arguments are filled
/// in before). Exhaustive, so a new op cannot be forgotten here.
fn fill(template: Op, attrs: &Attrs) -> Result<Op> {
    attrs.check_names()?;
    Ok(match template {
        Op::Iota { .. } => Op::Iota {
            axis: attrs.usize("axis")?,
        },
        Op::Softmax { .. } => Op::Softmax {
            axis: attrs.usize("axis")?,
        },
        Op::Concat { .. } => Op::Concat {
            axis: attrs.usize("axis")?,
        },
        Op::Gather { .. } => Op::Gather {
            axis: attrs.usize("axis")?,
        },
        Op::ScatterAdd { .. } => Op::ScatterAdd {
            axis: attrs.usize("axis")?,
        },
        Op::CumSum { .. } => Op::CumSum {
            axis: attrs.usize("axis")?,
        },
        Op::Scan { .. } => Op::Scan {
            axis: attrs.usize("axis")?,
        },
        Op::RandomFeatures { .. } => Op::RandomFeatures {
            seed: attrs.u64("seed")?,
        },
        Op::LinearAttention(_) => {
            let form = match attrs.word("form", &["parallel", "chunkwise", "recurrent"])? {
                "parallel" => LinearForm::Parallel,
                "chunkwise" => LinearForm::Chunkwise {
                    chunk: attrs.u64("chunk")?,
                },
                _ => LinearForm::Recurrent,
            };
            let decay = match attrs.word("decay", &["none", "head", "step", "gate"])? {
                "none" => crate::Decay::None,
                "head" => crate::Decay::Head,
                "step" => crate::Decay::Step,
                _ => crate::Decay::Gate,
            };
            Op::LinearAttention(crate::LinearAttention {
                causal: attrs.bool("causal")?,
                decay,
                normalize: attrs.bool("normalize")?,
                form,
            })
        }
        Op::MoeDispatch(_) => {
            let activation =
                match attrs.word("activation", &["silu", "gelu", "gelu_tanh", "relu"])? {
                    "silu" => UnaryOp::Silu,
                    "gelu" => UnaryOp::Gelu,
                    "gelu_tanh" => UnaryOp::GeluTanh,
                    _ => UnaryOp::Relu,
                };
            let choice = match attrs.word("choice", &["token", "expert"])? {
                "token" => crate::MoeChoice::Token,
                _ => crate::MoeChoice::Expert,
            };
            Op::MoeDispatch(crate::MoeDispatch {
                activation,
                gated: attrs.bool("gated")?,
                choice,
                k: attrs.u64("k")?,
                shared: match attrs.word("shared", &["none", "always", "gated"])? {
                    "none" => crate::MoeShared::None,
                    "always" => crate::MoeShared::Always,
                    _ => crate::MoeShared::Gated,
                },
            })
        }
        Op::Cast { .. } => Op::Cast {
            to: attrs.dtype("to")?,
        },
        Op::Reduce { kind, .. } => Op::Reduce {
            kind,
            axes: attrs.usizes("axes")?,
            keep_dims: attrs.bool("keep_dims")?,
        },
        Op::LayerNorm { .. } => Op::LayerNorm {
            eps: attrs.f64("eps")?,
        },
        Op::RmsNorm { .. } => Op::RmsNorm {
            eps: attrs.f64("eps")?,
        },
        Op::Reshape { .. } => Op::Reshape {
            shape: attrs.shape("shape")?,
        },
        Op::Broadcast { .. } => Op::Broadcast {
            shape: attrs.shape("shape")?,
        },
        Op::Transpose { .. } => Op::Transpose {
            perm: attrs.usizes("perm")?,
        },
        Op::Slice { .. } => Op::Slice {
            axis: attrs.usize("axis")?,
            start: attrs.dim("start")?,
            end: attrs.dim("end")?,
        },
        Op::Rope { .. } => Op::Rope {
            theta: attrs.f64("theta")?,
            scaling: match attrs.optional("scaling") {
                None => crate::RopeScaling::None,
                Some(_) => match attrs.word("scaling", &["none", "linear", "llama3", "yarn"])? {
                    "linear" => crate::RopeScaling::Linear {
                        factor: attrs.f64("factor")?,
                    },
                    "llama3" => crate::RopeScaling::Llama3 {
                        factor: attrs.f64("factor")?,
                        low_freq_factor: attrs.f64("low_freq_factor")?,
                        high_freq_factor: attrs.f64("high_freq_factor")?,
                        original_max_positions: attrs.u64("original_max_positions")?,
                    },
                    "yarn" => crate::RopeScaling::Yarn {
                        factor: attrs.f64("factor")?,
                        original_max_positions: attrs.u64("original_max_positions")?,
                        beta_fast: attrs.f64("beta_fast")?,
                        beta_slow: attrs.f64("beta_slow")?,
                        attention_factor: attrs.f64("attention_factor")?,
                    },
                    _ => crate::RopeScaling::None,
                },
            },
        },
        Op::TopK { output, .. } => Op::TopK {
            k: attrs.u64("k")?,
            output,
        },
        Op::Routing(_) => Op::Routing(crate::Routing {
            scale: attrs.f64("scale")?,
            clusters: attrs.u64("clusters")?,
            window: attrs.u64("window")?,
            causal: attrs.bool("causal")?,
        }),
        Op::Lsh(_) => Op::Lsh(crate::Lsh {
            scale: attrs.f64("scale")?,
            n_hashes: attrs.u64("n_hashes")?,
            buckets: attrs.u64("buckets")?,
            chunk: attrs.u64("chunk")?,
            causal: attrs.bool("causal")?,
        }),
        Op::Moba(_) => Op::Moba(crate::Moba {
            scale: attrs.f64("scale")?,
            groups: attrs.u64("groups")?,
            block: attrs.u64("block")?,
            top_k: attrs.u64("top_k")?,
        }),
        Op::Attention(a) => Op::Attention(Attention {
            scale: attrs.f64("scale")?,
            groups: attrs.u64("groups")?,
            softcap: attrs
                .optional("softcap")
                .map(|_| attrs.f64("softcap"))
                .transpose()?,
            bias: attrs
                .optional("bias")
                .map_or(Ok(false), |_| attrs.bool("bias"))?,
            block: match a.block {
                Some(_) => Some([attrs.u64("block_q")?, attrs.u64("block_k")?]),
                None => None,
            },
            segments: attrs
                .optional("segments")
                .map_or(Ok(false), |_| attrs.bool("segments"))?,
            listed: a.block.is_some()
                && attrs
                    .optional("listed")
                    .map_or(Ok(false), |_| attrs.bool("listed"))?,
            mask: a.mask,
        }),
        op @ (Op::Input { .. }
        | Op::Param { .. }
        | Op::Const { .. }
        | Op::Mask { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Select
        | Op::MatMul
        | Op::Embedding) => op,
    })
}

/// What the parser has seen so far. The builder is created at the first statement
/// after the `dims` lines, because a [`GraphBuilder`] takes its dims up front.
struct Parser {
    templates: Vec<Op>,
    /// The graph's name and the line of the `graph` statement.
    graph: Option<(String, usize)>,
    dims: Dims,
    /// Line binding each dimension, for duplicate messages.
    dim_lines: HashMap<String, usize>,
    builder: Option<GraphBuilder>,
    /// `%name` → node and the line defining it.
    values: HashMap<String, (NodeId, usize)>,
    /// Line and op column of every node, by index, to place verifier errors.
    node_pos: Vec<(usize, usize)>,
    /// Input and param names → defining line (they share one namespace).
    sources: HashMap<String, usize>,
    outputs: HashMap<String, usize>,
}

impl Parser {
    fn new() -> Parser {
        Parser {
            templates: op_templates(),
            graph: None,
            dims: Dims::new(),
            dim_lines: HashMap::new(),
            builder: None,
            values: HashMap::new(),
            node_pos: Vec::new(),
            sources: HashMap::new(),
            outputs: HashMap::new(),
        }
    }

    fn builder(&mut self) -> &mut GraphBuilder {
        let (name, dims) = (&self.graph, &self.dims);
        self.builder
            .get_or_insert_with(|| new_builder(name.as_ref(), dims))
    }

    fn statement(&mut self, cur: &mut Cursor) -> Result<()> {
        let keyword = match cur.peek() {
            Some(Tok::Ident(k)) => k.as_str(),
            _ => "",
        };
        if self.graph.is_none() {
            if keyword != "graph" {
                return Err(cur.expected("`graph NAME` as the first line"));
            }
            return self.graph_line(cur);
        }
        match keyword {
            "graph" => {
                let first = self.graph.as_ref().map_or(1, |(_, l)| *l);
                Err(cur.error(
                    cur.col(),
                    format!(
                        "expected one `graph` line, but the graph was already named on \
                         line {first}"
                    ),
                ))
            }
            "dims" => self.dims_line(cur),
            "layer" => self.layer_line(cur),
            "output" => self.output_line(cur),
            _ if matches!(cur.peek(), Some(Tok::Ref(_))) => self.op_line(cur),
            _ => Err(cur.expected(
                "an op like `%3 = add %1, %2 : [b, s] f32`, or a `layer`, `output` or `dims` line",
            )),
        }
    }

    fn graph_line(&mut self, cur: &mut Cursor) -> Result<()> {
        cur.bump();
        let name =
            cur.name("the graph's name after `graph` (a name like `gpt2` or a quoted string)")?;
        cur.expect_end("the end of the line after the graph's name")?;
        self.graph = Some((name, cur.line));
        Ok(())
    }

    /// `dims seq = 128, d_model = 768`.
    fn dims_line(&mut self, cur: &mut Cursor) -> Result<()> {
        if self.builder.is_some() {
            return Err(cur.error(
                cur.col(),
                "expected `dims` before the first `layer`, op or `output` line, since every \
                 type depends on it",
            ));
        }
        cur.bump();
        loop {
            let (name, col) = cur.ident("a dimension binding like `seq = 128`")?;
            if let Some(first) = self.dim_lines.get(&name) {
                return Err(cur.error(
                    col,
                    format!(
                        "dimension `{name}` is already bound on line {first}; bind each name once"
                    ),
                ));
            }
            cur.expect('=', &format!("`=` after `{name}`, as in `{name} = 128`"))?;
            let size = cur
                .scalar(&format!("the size of `{name}`, as in `{name} = 128`"))?
                .u64(&format!("the size of `{name}`"))?;
            self.dims.bind(name.clone(), size);
            self.dim_lines.insert(name, cur.line);
            if cur.at_end() {
                return Ok(());
            }
            cur.expect(',', "`,` before the next binding, or the end of the line")?;
        }
    }

    /// `layer NAME`, or a bare `layer` to leave the current one.
    fn layer_line(&mut self, cur: &mut Cursor) -> Result<()> {
        cur.bump();
        let layer = if cur.at_end() {
            None
        } else {
            Some(cur.name("a layer name like `layers.0.attn`, or nothing to leave the layer")?)
        };
        cur.expect_end("the end of the line after the layer name")?;
        self.builder().set_layer(layer);
        Ok(())
    }

    /// `output NAME = %ref`.
    fn output_line(&mut self, cur: &mut Cursor) -> Result<()> {
        cur.bump();
        let col = cur.col();
        let name = cur.name("the output's name after `output`, as in `output logits = %7`")?;
        cur.expect(
            '=',
            &format!(
                "`=` after the output name, as in `output {} = %7`",
                name_text(&name)
            ),
        )?;
        let (value, value_col) = cur.reference("the value to output, like `%7`")?;
        cur.expect_end("the end of the line after the output's value")?;
        let id = self.lookup(cur.line, &value, value_col)?;
        if let Some(first) = self.outputs.get(&name) {
            return Err(cur.error(
                col,
                format!(
                    "output `{name}` is already defined on line {first}; output names must \
                     be unique"
                ),
            ));
        }
        self.outputs.insert(name.clone(), cur.line);
        let line = cur.line;
        self.builder()
            .output(name, id)
            .map_err(|e| parse_error(line, col, e.to_string()))
    }

    fn lookup(&self, line: usize, name: &str, col: usize) -> Result<NodeId> {
        self.values.get(name).map(|(id, _)| *id).ok_or_else(|| {
            parse_error(
                line,
                col,
                format!("`%{name}` is not defined; expected a value defined on an earlier line"),
            )
        })
    }

    /// `%N = OPNAME [positional] [operands] [{attrs}] : TYPE`.
    fn op_line(&mut self, cur: &mut Cursor) -> Result<()> {
        let line = cur.line;
        let (result, result_col) = cur.reference("the result name, like `%3`")?;
        if let Some((_, first)) = self.values.get(&result) {
            return Err(cur.error(
                result_col,
                format!("`%{result}` is already defined on line {first}; expected a new name"),
            ));
        }
        cur.expect(
            '=',
            &format!("`=` after `%{result}`, as in `%{result} = add %1, %2`"),
        )?;
        let (op_name, op_col) = cur.ident("an op name like `matmul` or `add`")?;
        let Some(template) = self.templates.iter().find(|t| t.name() == op_name).cloned() else {
            return Err(cur.error(op_col, self.unknown_op(&op_name)));
        };
        let template = self.positional(cur, template)?;
        let operands = self.operands(cur)?;
        let items = attr_list(cur)?;
        cur.expect(':', "`:` followed by a type like `[b, s] f32`")?;
        let type_col = cur.col();
        let ty = self.tensor_type(cur)?;
        cur.expect_end("the end of the line after the type")?;
        let attrs = Attrs {
            items,
            op: template.name(),
            // Every variant's attributes (rope's scalings each add their own).
            accepted: self.accepted(template.name()),
            op_col,
            line,
            dims: &self.dims,
        };
        let op = fill(template, &attrs)?;
        if let Op::Input { name } | Op::Param { name } = &op {
            if let Some(first) = self.sources.get(name) {
                return Err(cur.error(
                    op_col,
                    format!(
                        "`{name}` is already defined on line {first}; input and param names \
                         must be unique"
                    ),
                ));
            }
            self.sources.insert(name.clone(), line);
        }
        // Inference failing (or a bad source declaration) points at the op; a type
        // that disagrees with what the op computes points at the type.
        let infers = !op.is_source() && {
            let b = self.builder();
            let args: Vec<&TensorType> = operands.iter().map(|&o| b.ty(o)).collect();
            infer(&op, &args, None, b.dims()).is_ok()
        };
        let id = self
            .builder()
            .add_declared(op, &operands, ty)
            .map_err(|e| {
                parse_error(line, if infers { type_col } else { op_col }, e.to_string())
            })?;
        self.values.insert(result, (id, line));
        self.node_pos.push((line, op_col));
        Ok(())
    }

    fn accepted(&self, op: &str) -> Vec<&'static str> {
        let mut names = Vec::new();
        for t in self.templates.iter().filter(|t| t.name() == op) {
            for (n, _) in attributes(t) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        names
    }

    fn unknown_op(&self, name: &str) -> String {
        let nearest = self
            .templates
            .iter()
            .map(|t| t.name())
            .min_by_key(|n| strsim::levenshtein(n, name));
        match nearest {
            Some(n) if strsim::levenshtein(n, name) <= (name.len() / 3).max(2) => {
                format!("unknown op `{}`; did you mean `{n}`?", clip(name))
            }
            _ => format!(
                "unknown op `{}`; expected an op name like `matmul`, `add` or `softmax`",
                clip(name)
            ),
        }
    }

    /// The argument written right after the op name of source ops:
    /// `input "tokens"`, `param "wte"`, `mask "k <= q"`, `const 0.125`.
    fn positional(&self, cur: &mut Cursor, template: Op) -> Result<Op> {
        Ok(match template {
            Op::Input { .. } => Op::Input {
                name: cur
                    .string("the input's name in quotes, as in `input \"tokens\"`")?
                    .0,
            },
            Op::Param { .. } => Op::Param {
                name: cur
                    .string("the param's name in quotes, as in `param \"wte\"`")?
                    .0,
            },
            Op::Const { .. } => Op::Const {
                value: cur
                    .scalar("a number after `const`, like `0.125` or `-inf`")?
                    .f64("the value of `const`")?,
            },
            Op::Mask { .. } => Op::Mask {
                expr: mask_expr(cur, "a mask expression in quotes, as in `mask \"k <= q\"`")?,
            },
            // The mask of an attention is optional: a quoted expression or nothing.
            Op::Attention(mut a) => {
                a.mask = None;
                if matches!(cur.peek(), Some(Tok::Str { .. })) {
                    a.mask = Some(mask_expr(cur, "a mask expression in quotes")?);
                }
                Op::Attention(a)
            }
            op => op,
        })
    }

    /// `%a, %b, ...`, each defined on an earlier line; possibly none.
    fn operands(&self, cur: &mut Cursor) -> Result<Vec<NodeId>> {
        let mut operands = Vec::new();
        if matches!(cur.peek(), Some(Tok::Ref(_))) {
            loop {
                let (name, col) = cur.reference("an operand like `%3` after `,`")?;
                operands.push(self.lookup(cur.line, &name, col)?);
                if !cur.eat(',') {
                    break;
                }
            }
        }
        if matches!(cur.peek(), Some(Tok::Ref(_))) {
            return Err(cur.expected("`,` between operands"));
        }
        Ok(operands)
    }

    /// `[dims] dtype`.
    fn tensor_type(&self, cur: &mut Cursor) -> Result<TensorType> {
        cur.expect('[', "a type like `[b, s] f32` after `:`")?;
        let what = "a dimension (a size or a name like `seq`)";
        let dims = cur.list(what)?;
        let shape = dims
            .iter()
            .map(|d| d.dim("a dimension", &self.dims))
            .collect::<Result<Vec<Dim>>>()?;
        let col = cur.col();
        let (dtype, _) = cur.ident("a dtype like `f32` after the shape")?;
        let dtype = DType::from_name(&dtype)
            .ok_or_else(|| cur.error(col, unknown_dtype(&dtype, "the result")))?;
        Ok(TensorType::new(Shape(shape), dtype))
    }

    fn finish(mut self, last_line: usize) -> Result<Graph> {
        if self.graph.is_none() {
            return Err(parse_error(
                1,
                1,
                "expected `graph NAME` as the first line, found the end of the input",
            ));
        }
        let node_pos = std::mem::take(&mut self.node_pos);
        let builder = match self.builder {
            Some(b) => b,
            None => new_builder(self.graph.as_ref(), &self.dims),
        };
        builder.finish().map_err(|e| {
            let (line, col) = match &e {
                IrError::Verify { node, .. } => node_pos.get(*node).copied(),
                _ => None,
            }
            .unwrap_or((last_line, 1));
            parse_error(line, col, e.to_string())
        })
    }
}

fn new_builder(graph: Option<&(String, usize)>, dims: &Dims) -> GraphBuilder {
    let name = graph.map_or(String::new(), |(n, _)| n.clone());
    GraphBuilder::new(name, dims.clone())
}

/// `{name = value, ...}` if present; names are checked against the op later.
fn attr_list(cur: &mut Cursor) -> Result<Vec<Attr>> {
    let mut items: Vec<Attr> = Vec::new();
    if !cur.eat('{') || cur.eat('}') {
        return Ok(items);
    }
    loop {
        let (name, col) = cur.ident("an attribute name like `axis`")?;
        if items.iter().any(|a| a.name == name) {
            return Err(cur.error(
                col,
                format!("attribute `{name}` is given twice; expected each once"),
            ));
        }
        cur.expect('=', &format!("`=` after `{name}`, as in `{{{name} = 0}}`"))?;
        let value = if cur.peek() == Some(&Tok::Punct('[')) {
            let col = cur.col();
            cur.bump();
            let items = cur.list("a number or a name in the list")?;
            Value::List { items, col }
        } else {
            Value::Scalar(cur.scalar(&format!(
                "a value for `{name}`: a number, a name or a list like `[0, 1]`"
            ))?)
        };
        items.push(Attr { name, col, value });
        if cur.eat('}') {
            return Ok(items);
        }
        cur.expect(',', "`,` or `}` after the attribute value")?;
    }
}
