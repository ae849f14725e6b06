//! Mask expressions: a small language over the attention coordinates `(b, h, q, k)`.
//!
//! `k <= q && q - k < window` is causal sliding-window attention. Integer arithmetic
//! (`+ - * / %`, unary `-`), comparisons (`< <= > >= == !=`), `&&`, `||`, `!` and
//! parentheses; any other name is a dimension bound in the graph's `dims` table.
//! One builtin, `random_blocks(qb, kb, r, n, seed)`, holds when key block `kb` is one
//! of the `r` distinct blocks of `0..n` drawn (seeded) for query block `qb` — BigBird's
//! random attention. The expression stays symbolic in the IR so later passes can
//! analyse it.

use crate::Dims;
use std::fmt;

/// One of the four attention coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coord {
    B,
    H,
    Q,
    K,
}

impl Coord {
    pub fn name(self) -> &'static str {
        match self {
            Coord::B => "b",
            Coord::H => "h",
            Coord::Q => "q",
            Coord::K => "k",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaskBinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl MaskBinOp {
    fn symbol(self) -> &'static str {
        use MaskBinOp::*;
        match self {
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            Rem => "%",
            Lt => "<",
            Le => "<=",
            Gt => ">",
            Ge => ">=",
            Eq => "==",
            Ne => "!=",
            And => "&&",
            Or => "||",
        }
    }

    /// Binding strength; higher binds tighter.
    fn precedence(self) -> u8 {
        use MaskBinOp::*;
        match self {
            Or => 1,
            And => 2,
            Eq | Ne => 3,
            Lt | Le | Gt | Ge => 4,
            Add | Sub => 5,
            Mul | Div | Rem => 6,
        }
    }

    fn is_arith(self) -> bool {
        use MaskBinOp::*;
        matches!(self, Add | Sub | Mul | Div | Rem)
    }
}

/// The kind of value an expression produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskKind {
    Int,
    Bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MaskExpr {
    Int(i64),
    Coord(Coord),
    /// A dimension name, bound in the graph's `dims`.
    Dim(String),
    Neg(Box<MaskExpr>),
    Not(Box<MaskExpr>),
    Bin(MaskBinOp, Box<MaskExpr>, Box<MaskExpr>),
    /// `random_blocks(qb, kb, r, n, seed)`: a condition; see [`random_blocks`].
    RandomBlocks(Box<[MaskExpr; 5]>),
}

/// Whether key block `kb` is one of the `r` distinct blocks of `0..n` drawn for query
/// block `qb` with `seed` (Floyd's sampling over a splitmix64 stream seeded by `seed`
/// and `qb`): exactly `min(r, n)` key blocks per query block in `0..n`, none for a
/// query block outside it. The same draw everywhere: interpreter, analyses, kernels.
pub fn random_blocks(qb: i64, kb: i64, r: i64, n: i64, seed: i64) -> bool {
    if !(0..n).contains(&qb) || !(0..n).contains(&kb) || r <= 0 {
        return false;
    }
    if r >= n {
        return true;
    }
    let mut rng = crate::Rng::new(
        (seed as u64)
            ^ (qb as u64)
                .wrapping_add(1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    // Floyd: for j in n-r..n pick t in 0..=j; take t unless taken, else j.
    let mut chosen: Vec<i64> = Vec::with_capacity(r as usize);
    for j in n - r..n {
        let t = (rng.next_u64() % (j as u64 + 1)) as i64;
        let pick = if chosen.contains(&t) { j } else { t };
        if pick == kb {
            return true;
        }
        chosen.push(pick);
    }
    false
}

/// The builtin functions of the mask language: name and argument count.
const BUILTINS: [(&str, usize); 1] = [("random_blocks", 5)];

/// Tallest expression tree the parser accepts (nesting and operator chains alike):
/// deep enough for any hand-written mask, shallow enough that every recursive walk
/// (evaluation, printing, lowering, drop) stays far from the stack limit.
pub const MAX_MASK_DEPTH: usize = 256;

/// A parse error at a 1-based column of the expression text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskError {
    pub col: usize,
    pub message: String,
}

impl fmt::Display for MaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.col, self.message)
    }
}

impl MaskExpr {
    /// Parse and type-check a mask expression; the result must be boolean.
    pub fn parse(text: &str) -> Result<MaskExpr, MaskError> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end: text.chars().count() + 1,
            depth: 0,
        };
        let (e, _) = p.expr(0)?;
        if let Some(t) = p.tokens.get(p.pos) {
            return Err(MaskError {
                col: t.col,
                message: format!("unexpected `{}` after the end of the expression", t.tok),
            });
        }
        match e.top_kind() {
            MaskKind::Bool => Ok(e),
            MaskKind::Int => Err(MaskError {
                col: 1,
                message: "a mask must be a condition (e.g. `k <= q`), not an integer".into(),
            }),
        }
    }

    /// Type of the expression, or why it is ill-typed.
    pub fn kind(&self) -> Result<MaskKind, String> {
        use MaskKind::*;
        match self {
            MaskExpr::Int(_) | MaskExpr::Coord(_) | MaskExpr::Dim(_) => Ok(Int),
            MaskExpr::Neg(e) => match e.kind()? {
                Int => Ok(Int),
                Bool => Err(format!("`-` needs an integer, got the condition `{e}`")),
            },
            MaskExpr::Not(e) => match e.kind()? {
                Bool => Ok(Bool),
                Int => Err(format!("`!` needs a condition, got the integer `{e}`")),
            },
            MaskExpr::RandomBlocks(args) => {
                for a in args.iter() {
                    if a.kind()? != Int {
                        return Err(format!("`random_blocks` takes integers, got `{a}`"));
                    }
                }
                Ok(Bool)
            }
            MaskExpr::Bin(op, l, r) => {
                let (lk, rk) = (l.kind()?, r.kind()?);
                let want = if matches!(op, MaskBinOp::And | MaskBinOp::Or) {
                    Bool
                } else {
                    Int
                };
                for (side, k) in [(l, lk), (r, rk)] {
                    if k != want {
                        return Err(format!(
                            "`{}` needs {} operands, got `{side}`",
                            op.symbol(),
                            if want == Int { "integer" } else { "condition" }
                        ));
                    }
                }
                Ok(if op.is_arith() { Int } else { Bool })
            }
        }
    }

    /// The kind of the top node alone; children are assumed well typed (the parser
    /// checks each node as it builds it).
    fn top_kind(&self) -> MaskKind {
        match self {
            MaskExpr::Int(_) | MaskExpr::Coord(_) | MaskExpr::Dim(_) | MaskExpr::Neg(_) => {
                MaskKind::Int
            }
            MaskExpr::Not(_) | MaskExpr::RandomBlocks(_) => MaskKind::Bool,
            MaskExpr::Bin(op, ..) if op.is_arith() => MaskKind::Int,
            MaskExpr::Bin(..) => MaskKind::Bool,
        }
    }

    /// Dimension names the expression refers to.
    pub fn dim_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.visit(&mut |e| {
            if let MaskExpr::Dim(d) = e {
                if !out.contains(d) {
                    out.push(d.clone());
                }
            }
        });
        out
    }

    /// Nodes of the expression tree: roughly the vector operations per element.
    pub fn node_count(&self) -> usize {
        let mut n = 0;
        self.visit(&mut |_| n += 1);
        n
    }

    /// The coordinates the expression reads.
    pub fn coords(&self) -> Vec<Coord> {
        let mut out = Vec::new();
        self.visit(&mut |e| {
            if let MaskExpr::Coord(c) = e {
                if !out.contains(c) {
                    out.push(*c);
                }
            }
        });
        out
    }

    fn visit(&self, f: &mut impl FnMut(&MaskExpr)) {
        f(self);
        match self {
            MaskExpr::Neg(e) | MaskExpr::Not(e) => e.visit(f),
            MaskExpr::Bin(_, l, r) => {
                l.visit(f);
                r.visit(f);
            }
            MaskExpr::RandomBlocks(args) => args.iter().for_each(|a| a.visit(f)),
            _ => {}
        }
    }

    /// Evaluate at one coordinate; conditions give 0 or 1. Division and remainder by
    /// zero give 0 (the mask language has no errors at run time), and arithmetic wraps.
    pub fn eval(&self, at: [i64; 4], dims: &Dims) -> i64 {
        use MaskBinOp::*;
        match self {
            MaskExpr::Int(n) => *n,
            MaskExpr::Coord(c) => at[*c as usize],
            MaskExpr::Dim(d) => dims.get(d).map_or(0, |v| v as i64),
            MaskExpr::Neg(e) => e.eval(at, dims).wrapping_neg(),
            MaskExpr::Not(e) => (e.eval(at, dims) == 0) as i64,
            MaskExpr::RandomBlocks(args) => {
                let [qb, kb, r, n, seed] = args.each_ref().map(|a| a.eval(at, dims));
                random_blocks(qb, kb, r, n, seed) as i64
            }
            MaskExpr::Bin(op, l, r) => {
                let a = l.eval(at, dims);
                // `&&` and `||` short-circuit like the C they look like.
                match op {
                    And if a == 0 => return 0,
                    Or if a != 0 => return 1,
                    _ => {}
                }
                let b = r.eval(at, dims);
                match op {
                    Add => a.wrapping_add(b),
                    Sub => a.wrapping_sub(b),
                    Mul => a.wrapping_mul(b),
                    Div => a.checked_div(b).unwrap_or(0),
                    Rem => a.checked_rem(b).unwrap_or(0),
                    Lt => (a < b) as i64,
                    Le => (a <= b) as i64,
                    Gt => (a > b) as i64,
                    Ge => (a >= b) as i64,
                    Eq => (a == b) as i64,
                    Ne => (a != b) as i64,
                    And | Or => (b != 0) as i64,
                }
            }
        }
    }

    pub fn holds(&self, b: i64, h: i64, q: i64, k: i64, dims: &Dims) -> bool {
        self.eval([b, h, q, k], dims) != 0
    }

    fn fmt_prec(&self, f: &mut fmt::Formatter<'_>, parent: u8) -> fmt::Result {
        match self {
            MaskExpr::Int(n) => write!(f, "{n}"),
            MaskExpr::Coord(c) => f.write_str(c.name()),
            MaskExpr::Dim(d) => f.write_str(d),
            MaskExpr::Neg(e) => {
                f.write_str("-")?;
                e.fmt_prec(f, 7)
            }
            MaskExpr::Not(e) => {
                f.write_str("!")?;
                e.fmt_prec(f, 7)
            }
            MaskExpr::RandomBlocks(args) => {
                let args: Vec<String> = args.iter().map(MaskExpr::to_string).collect();
                write!(f, "random_blocks({})", args.join(", "))
            }
            MaskExpr::Bin(op, l, r) => {
                let p = op.precedence();
                if p < parent {
                    f.write_str("(")?;
                }
                l.fmt_prec(f, p)?;
                write!(f, " {} ", op.symbol())?;
                // Left-associative: a right operand of equal precedence needs parentheses.
                r.fmt_prec(f, p + 1)?;
                if p < parent {
                    f.write_str(")")?;
                }
                Ok(())
            }
        }
    }
}

/// Where a mask holds over a box of coordinates (a block of the score matrix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Nowhere: the block is skipped.
    Empty,
    /// Everywhere: the block is computed without evaluating the mask.
    Full,
    /// Possibly somewhere: the mask is evaluated per element.
    Partial,
}

/// A closed interval of i64 values.
type Range = (i64, i64);

const ANY: Range = (i64::MIN, i64::MAX);

fn fit(lo: i128, hi: i128) -> Range {
    if lo < i64::MIN as i128 || hi > i64::MAX as i128 {
        // Arithmetic wraps: past i64 the value can be anything.
        ANY
    } else {
        (lo as i64, hi as i64)
    }
}

/// The truth of a value range: `Some(false)` if it is exactly 0, `Some(true)` if it
/// excludes 0, `None` if it may be either.
fn truth((lo, hi): Range) -> Option<bool> {
    if lo == 0 && hi == 0 {
        Some(false)
    } else if lo > 0 || hi < 0 {
        Some(true)
    } else {
        None
    }
}

fn boolean(t: Option<bool>) -> Range {
    match t {
        Some(true) => (1, 1),
        Some(false) => (0, 0),
        None => (0, 1),
    }
}

impl MaskExpr {
    /// An interval holding every value the expression takes when each coordinate
    /// `b, h, q, k` ranges over `bounds[i]` (inclusive): sound interval arithmetic
    /// (with [`MaskExpr::eval`]'s wrapping and division rules), tight for the affine
    /// masks (causal, windows, prefixes, blocks), conservative elsewhere.
    pub fn range(&self, bounds: [Range; 4], dims: &Dims) -> Range {
        use MaskBinOp::*;
        match self {
            MaskExpr::Int(n) => (*n, *n),
            MaskExpr::Coord(c) => bounds[*c as usize],
            MaskExpr::Dim(d) => {
                let v = dims.get(d).map_or(0, |v| v as i64);
                (v, v)
            }
            MaskExpr::Neg(e) => {
                let (lo, hi) = e.range(bounds, dims);
                fit(-(hi as i128), -(lo as i128))
            }
            MaskExpr::Not(e) => boolean(truth(e.range(bounds, dims)).map(|t| !t)),
            // By evaluation: exact where every argument is one value over the box
            // (a block inside one query block and one key block).
            MaskExpr::RandomBlocks(args) => {
                let r = args.each_ref().map(|a| a.range(bounds, dims));
                if r.iter().all(|(lo, hi)| lo == hi) {
                    let held = random_blocks(r[0].0, r[1].0, r[2].0, r[3].0, r[4].0);
                    boolean(Some(held))
                } else {
                    (0, 1)
                }
            }
            MaskExpr::Bin(op, l, r) => {
                let a = l.range(bounds, dims);
                let b = r.range(bounds, dims);
                let (a0, a1, b0, b1) = (a.0 as i128, a.1 as i128, b.0 as i128, b.1 as i128);
                let corners = |f: fn(i128, i128) -> i128| {
                    let c = [f(a0, b0), f(a0, b1), f(a1, b0), f(a1, b1)];
                    fit(*c.iter().min().unwrap(), *c.iter().max().unwrap())
                };
                let cmp = |t: bool, f: bool| {
                    boolean(if t {
                        Some(true)
                    } else if f {
                        Some(false)
                    } else {
                        None
                    })
                };
                match op {
                    Add => fit(a0 + b0, a1 + b1),
                    Sub => fit(a0 - b1, a1 - b0),
                    Mul => corners(|x, y| x * y),
                    Div if b0 > 0 || b1 < 0 => corners(|x, y| x / y),
                    Div => {
                        // The divisor may be 0 (giving 0): |a / b| <= |a|.
                        let m = a0.abs().max(a1.abs());
                        fit(-m, m)
                    }
                    Rem => rem_range(a, b),
                    Lt => cmp(a1 < b0, a0 >= b1),
                    Le => cmp(a1 <= b0, a0 > b1),
                    Gt => cmp(a0 > b1, a1 <= b0),
                    Ge => cmp(a0 >= b1, a1 < b0),
                    Eq => cmp(a0 == a1 && b0 == b1 && a0 == b0, a1 < b0 || b1 < a0),
                    Ne => cmp(a1 < b0 || b1 < a0, a0 == a1 && b0 == b1 && a0 == b0),
                    And => boolean(match (truth(a), truth(b)) {
                        (Some(false), _) | (_, Some(false)) => Some(false),
                        (Some(true), Some(true)) => Some(true),
                        _ => None,
                    }),
                    Or => boolean(match (truth(a), truth(b)) {
                        (Some(true), _) | (_, Some(true)) => Some(true),
                        (Some(false), Some(false)) => Some(false),
                        _ => None,
                    }),
                }
            }
        }
    }

    /// Whether the mask holds everywhere, nowhere or somewhere in the box `bounds`.
    pub fn coverage(&self, bounds: [Range; 4], dims: &Dims) -> Coverage {
        match truth(self.range(bounds, dims)) {
            Some(true) => Coverage::Full,
            Some(false) => Coverage::Empty,
            None => Coverage::Partial,
        }
    }
}

/// `a % b` (sign of `a`, 0 for `b == 0`) over intervals.
fn rem_range(a: Range, b: Range) -> Range {
    let (a0, a1) = (a.0 as i128, a.1 as i128);
    let m = (b.0 as i128).abs().max((b.1 as i128).abs()) - 1;
    if m < 0 {
        return (0, 0);
    }
    if b.0 == b.1 && b.0 != 0 {
        // A constant divisor: exact while `a` stays between two multiples of it.
        let c = (b.0 as i128).abs();
        if a0 >= 0 && a0 / c == a1 / c {
            return fit(a0 % c, a1 % c);
        }
        if a1 <= 0 && a0 / c == a1 / c {
            return fit(a0 % c, a1 % c);
        }
    }
    let lo = if a0 >= 0 { 0 } else { -m.min(a0.abs()) };
    let hi = if a1 <= 0 { 0 } else { m.min(a1) };
    fit(lo, hi)
}

impl fmt::Display for MaskExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_prec(f, 0)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Name(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Int(n) => write!(f, "{n}"),
            Tok::Name(s) => f.write_str(s),
            Tok::Op(s) => f.write_str(s),
            Tok::LParen => f.write_str("("),
            Tok::RParen => f.write_str(")"),
            Tok::Comma => f.write_str(","),
        }
    }
}

struct Token {
    tok: Tok,
    col: usize,
}

const OPERATORS: [&str; 19] = [
    "&&", "||", "<=", ">=", "==", "!=", "<", ">", "+", "-", "*", "/", "%", "!", "(", ")", "&", "|",
    ",",
];

fn lex(text: &str) -> Result<Vec<Token>, MaskError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            let n = s.parse::<i64>().map_err(|_| MaskError {
                col,
                message: format!("integer `{s}` is too large"),
            })?;
            out.push(Token {
                tok: Tok::Int(n),
                col,
            });
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Name(chars[start..i].iter().collect()),
                col,
            });
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let op = OPERATORS
                .iter()
                .find(|op| rest.starts_with(**op))
                .ok_or_else(|| MaskError {
                    col,
                    message: format!("unexpected character `{c}`"),
                })?;
            if *op == "&" || *op == "|" {
                return Err(MaskError {
                    col,
                    message: format!("`{op}` is not an operator; did you mean `{op}{op}`?"),
                });
            }
            i += op.len();
            out.push(Token {
                tok: match *op {
                    "(" => Tok::LParen,
                    ")" => Tok::RParen,
                    "," => Tok::Comma,
                    op => Tok::Op(op),
                },
                col,
            });
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
    depth: usize,
}

/// Operands of `op` must be integers for arithmetic and comparisons, conditions for
/// `&&` and `||`; a mismatch is reported at the operator.
fn check_operands(op: MaskBinOp, l: &MaskExpr, r: &MaskExpr, col: usize) -> Result<(), MaskError> {
    let want = if matches!(op, MaskBinOp::And | MaskBinOp::Or) {
        MaskKind::Bool
    } else {
        MaskKind::Int
    };
    for side in [l, r] {
        if side.top_kind() != want {
            return Err(MaskError {
                col,
                message: format!(
                    "`{}` needs {} operands, got `{side}`",
                    op.symbol(),
                    if want == MaskKind::Int {
                        "integer"
                    } else {
                        "condition"
                    }
                ),
            });
        }
    }
    Ok(())
}

fn binop(s: &str) -> Option<MaskBinOp> {
    use MaskBinOp::*;
    Some(match s {
        "+" => Add,
        "-" => Sub,
        "*" => Mul,
        "/" => Div,
        "%" => Rem,
        "<" => Lt,
        "<=" => Le,
        ">" => Gt,
        ">=" => Ge,
        "==" => Eq,
        "!=" => Ne,
        "&&" => And,
        "||" => Or,
        _ => return None,
    })
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn col(&self) -> usize {
        self.peek().map_or(self.end, |t| t.col)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, MaskError> {
        Err(MaskError {
            col: self.col(),
            message: message.into(),
        })
    }

    /// Precedence climbing: parse operators binding at least as tight as `min`.
    /// Returns the expression and the height of its tree.
    fn expr(&mut self, min: u8) -> Result<(MaskExpr, usize), MaskError> {
        self.enter()?;
        let (mut lhs, mut height) = self.unary()?;
        while let Some(Token {
            tok: Tok::Op(s),
            col,
        }) = self.peek()
        {
            let Some(op) = binop(s) else { break };
            if op.precedence() < min {
                break;
            }
            let col = *col;
            self.pos += 1;
            let (rhs, rhs_height) = self.expr(op.precedence() + 1)?;
            // A flat chain `a && b && ...` nests no parentheses but builds a tall tree.
            height = height.max(rhs_height) + 1;
            if height > MAX_MASK_DEPTH {
                return Err(MaskError {
                    col,
                    message: format!("expression nests deeper than {MAX_MASK_DEPTH}"),
                });
            }
            check_operands(op, &lhs, &rhs, col)?;
            lhs = MaskExpr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Ok((lhs, height))
    }

    /// Count one level of recursion; fail before the parser itself runs deep.
    fn enter(&mut self) -> Result<(), MaskError> {
        self.depth += 1;
        if self.depth > MAX_MASK_DEPTH {
            return self.err(format!("expression nests deeper than {MAX_MASK_DEPTH}"));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<(MaskExpr, usize), MaskError> {
        let Some(t) = self.peek() else {
            return self.err("expected a value, found the end of the expression");
        };
        let tok = t.tok.clone();
        self.pos += 1;
        match tok {
            Tok::Int(n) => Ok((MaskExpr::Int(n), 1)),
            Tok::Name(name)
                if matches!(
                    self.peek(),
                    Some(Token {
                        tok: Tok::LParen,
                        ..
                    })
                ) =>
            {
                self.call(&name)
            }
            Tok::Name(name) => Ok((
                match name.as_str() {
                    "b" => MaskExpr::Coord(Coord::B),
                    "h" => MaskExpr::Coord(Coord::H),
                    "q" => MaskExpr::Coord(Coord::Q),
                    "k" => MaskExpr::Coord(Coord::K),
                    _ => MaskExpr::Dim(name),
                },
                1,
            )),
            Tok::Op("-") => {
                let col = self.tokens[self.pos - 1].col;
                let (e, h) = self.nested_unary()?;
                if e.top_kind() != MaskKind::Int {
                    return Err(MaskError {
                        col,
                        message: format!("`-` needs an integer, got the condition `{e}`"),
                    });
                }
                Ok((MaskExpr::Neg(Box::new(e)), h + 1))
            }
            Tok::Op("!") => {
                let col = self.tokens[self.pos - 1].col;
                let (e, h) = self.nested_unary()?;
                if e.top_kind() != MaskKind::Bool {
                    return Err(MaskError {
                        col,
                        message: format!("`!` needs a condition, got the integer `{e}`"),
                    });
                }
                Ok((MaskExpr::Not(Box::new(e)), h + 1))
            }
            Tok::LParen => {
                let e = self.expr(0)?;
                match self.peek() {
                    Some(Token {
                        tok: Tok::RParen, ..
                    }) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => self.err("expected `)`"),
                }
            }
            other => {
                self.pos -= 1;
                self.err(format!("expected a value, found `{other}`"))
            }
        }
    }

    /// `name(arg, ...)`, the name just consumed and `(` next.
    fn call(&mut self, name: &str) -> Result<(MaskExpr, usize), MaskError> {
        let col = self.tokens[self.pos - 1].col;
        let Some(&(_, arity)) = BUILTINS.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = BUILTINS.iter().map(|(n, _)| *n).collect();
            return Err(MaskError {
                col,
                message: format!(
                    "unknown function `{name}`; the mask language has {}",
                    known.join(", ")
                ),
            });
        };
        self.pos += 1; // `(`
        let mut args = Vec::new();
        let mut height = 1;
        loop {
            let (e, h) = self.expr(0)?;
            if e.top_kind() != MaskKind::Int {
                return Err(MaskError {
                    col,
                    message: format!("`{name}` takes integers, got the condition `{e}`"),
                });
            }
            height = height.max(h + 1);
            args.push(e);
            match self.peek().map(|t| &t.tok) {
                Some(Tok::Comma) => self.pos += 1,
                Some(Tok::RParen) => {
                    self.pos += 1;
                    break;
                }
                _ => return self.err("expected `,` or `)` in the arguments"),
            }
        }
        let args: [MaskExpr; 5] = args.try_into().map_err(|a: Vec<MaskExpr>| MaskError {
            col,
            message: format!("`{name}` takes {arity} arguments, got {}", a.len()),
        })?;
        Ok((MaskExpr::RandomBlocks(Box::new(args)), height))
    }

    fn nested_unary(&mut self) -> Result<(MaskExpr, usize), MaskError> {
        self.enter()?;
        let e = self.unary();
        self.depth -= 1;
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Block coverage agrees with evaluating every element of the block.
    #[test]
    fn coverage_matches_evaluation() {
        let mut dims = Dims::new();
        dims.bind("window", 5);
        let masks = [
            "k <= q",
            "k <= q && q - k < window",
            "k < 3 || k <= q",
            "(q / 4) == (k / 4)",
            "k % 3 == 0",
            "h % 2 == 0 || k <= q",
            "!(k > q)",
            "q * 2 - k * 3 >= 1",
        ];
        for text in masks {
            let m = MaskExpr::parse(text).unwrap();
            for (q0, k0, bq, bk) in [
                (0, 0, 4, 4),
                (8, 0, 4, 4),
                (0, 8, 4, 4),
                (5, 3, 3, 7),
                (12, 9, 1, 1),
            ] {
                let bounds = [(0, 1), (0, 3), (q0, q0 + bq - 1), (k0, k0 + bk - 1)];
                let mut any = false;
                let mut all = true;
                for b in 0..2 {
                    for h in 0..4 {
                        for q in q0..q0 + bq {
                            for k in k0..k0 + bk {
                                let v = m.holds(b, h, q, k, &dims);
                                any |= v;
                                all &= v;
                            }
                        }
                    }
                }
                match m.coverage(bounds, &dims) {
                    Coverage::Empty => assert!(!any, "{text} at {bounds:?}: said empty"),
                    Coverage::Full => assert!(all, "{text} at {bounds:?}: said full"),
                    Coverage::Partial => {}
                }
            }
        }
        let causal = MaskExpr::parse("k <= q").unwrap();
        let at = |q0: i64, k0: i64| [(0, 0), (0, 0), (q0, q0 + 63), (k0, k0 + 63)];
        assert_eq!(causal.coverage(at(64, 0), &dims), Coverage::Full);
        assert_eq!(causal.coverage(at(0, 64), &dims), Coverage::Empty);
        assert_eq!(causal.coverage(at(64, 64), &dims), Coverage::Partial);
    }

    fn dims() -> Dims {
        let mut d = Dims::new();
        d.bind("window", 3);
        d
    }

    #[test]
    fn causal_sliding_window() {
        let e = MaskExpr::parse("k <= q && q - k < window").unwrap();
        let d = dims();
        assert!(e.holds(0, 0, 5, 5, &d));
        assert!(e.holds(0, 0, 5, 3, &d));
        assert!(!e.holds(0, 0, 5, 2, &d));
        assert!(!e.holds(0, 0, 2, 3, &d));
        assert_eq!(e.dim_names(), vec!["window".to_string()]);
    }

    #[test]
    fn precedence_and_printing_round_trip() {
        for text in [
            "k <= q",
            "(q - k) % 4 == 0 || k < 2",
            "!(k > q) && h * 2 + 1 != b",
            "q - (k - 1) >= 0",
            "-k + q >= 0",
        ] {
            let e = MaskExpr::parse(text).unwrap();
            let printed = e.to_string();
            assert_eq!(MaskExpr::parse(&printed).unwrap(), e, "{text} -> {printed}");
        }
        assert_eq!(
            MaskExpr::parse("a - b - c > 0").unwrap().to_string(),
            "a - b - c > 0"
        );
        assert_eq!(
            MaskExpr::parse("a - (b - c) > 0").unwrap().to_string(),
            "a - (b - c) > 0"
        );
    }

    #[test]
    fn errors_name_the_column() {
        let e = MaskExpr::parse("k <= q & q < 4").unwrap_err();
        assert_eq!(e.col, 8);
        assert!(e.message.contains("&&"));
        let e = MaskExpr::parse("k <= ").unwrap_err();
        assert_eq!(e.col, 6);
        let e = MaskExpr::parse("k + q").unwrap_err();
        assert!(e.message.contains("condition"));
        let e = MaskExpr::parse("k <= q || h").unwrap_err();
        assert_eq!(e.col, 8);
        assert!(
            e.message.contains("`||` needs condition operands, got `h`"),
            "{e}"
        );
        let e = MaskExpr::parse("k <= -(q < 2)").unwrap_err();
        assert_eq!(e.col, 6);
        let e = MaskExpr::parse("(k <= q").unwrap_err();
        assert!(e.message.contains("`)`"));
        let e = MaskExpr::parse("k <= q $").unwrap_err();
        assert_eq!(e.col, 8);
        let deep = format!("{}k <= q{}", "(".repeat(1000), ")".repeat(1000));
        assert!(MaskExpr::parse(&deep)
            .unwrap_err()
            .message
            .contains("deeper"));
        let deep = format!("{}k <= q", "!".repeat(100_000));
        assert!(MaskExpr::parse(&deep)
            .unwrap_err()
            .message
            .contains("deeper"));
        // A flat chain nests no parentheses but would build a 100 000-level tree.
        let chain = vec!["k <= q"; 100_000].join(" && ");
        let e = MaskExpr::parse(&chain).unwrap_err();
        assert!(e.message.contains("deeper"), "{e}");
        let ok = vec!["k <= q"; 100].join(" && ");
        assert!(MaskExpr::parse(&ok).is_ok());
    }

    #[test]
    fn division_by_zero_is_zero() {
        let e = MaskExpr::parse("q / (k - k) == 0 && q % 0 == 0").unwrap();
        assert!(e.holds(0, 0, 3, 1, &Dims::new()));
    }
}
