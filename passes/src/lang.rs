//! The e-graph language: one e-node per IR op family. An op's compile-time parameters
//! sit in an attribute leaf, its first child (`(softmax axis=3 ?x)`); its operands
//! follow. Sources (`input`, `param`, `const`, `iota`, `mask`) are leaves that carry
//! their name or value and their declared type. Result types are never spelled in a
//! node: they live in the analysis ([`crate::TypeAnalysis`]).

use attnc_ir::{
    BinaryOp, CmpOp, DType, Decay, Dim, LinearForm, MaskExpr, Op, ReduceKind, Shape, TensorType,
    TopKOutput, UnaryOp,
};
use egg::{define_language, Id};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

define_language! {
    /// An attnc e-node. Children: the attribute leaf first (families that have one),
    /// then the operands in IR order.
    pub enum Attn {
        "unary" = Unary([Id; 2]),          // (unary exp x)
        "binary" = Binary([Id; 3]),        // (binary add a b)
        "compare" = Compare([Id; 3]),      // (compare lt a b)
        "select" = Select([Id; 3]),        // (select cond a b), no attribute
        "cast" = Cast([Id; 2]),            // (cast f32 x)
        "reduce" = Reduce([Id; 2]),        // (reduce sum:2:keep x)
        "softmax" = Softmax([Id; 2]),      // (softmax axis=3 x)
        "layer_norm" = LayerNorm([Id; 4]), // (layer_norm eps=0.00001 x gamma beta)
        "rms_norm" = RmsNorm([Id; 3]),     // (rms_norm eps=0.00001 x gamma)
        "matmul" = MatMul([Id; 2]),        // (matmul a b), no attribute
        "reshape" = Reshape([Id; 2]),      // (reshape [batch,seq,12,64] x)
        "transpose" = Transpose([Id; 2]),  // (transpose perm=0,2,1,3 x)
        "broadcast" = Broadcast([Id; 2]),  // (broadcast [batch,seq,768] x)
        "concat" = Concat(Box<[Id]>),      // (concat axis=1 a b c)
        "slice" = Slice([Id; 2]),          // (slice slice=3:0..4 x)
        "gather" = Gather([Id; 3]),        // (gather axis=0 data indices)
        "scatter_add" = ScatterAdd([Id; 4]), // (scatter_add axis=0 data indices updates)
        "embedding" = Embedding([Id; 2]),  // (embedding table ids), no attribute
        "rope" = Rope([Id; 2]),            // (rope theta=10000.0 x)
        "topk" = TopK([Id; 2]),            // (topk k=2:values x)
        "cumsum" = CumSum([Id; 2]),        // (cumsum axis=1 x)
        "linear_scan" = Scan([Id; 3]),     // (linear_scan axis=2 x a)
        "attention" = Attention(Box<[Id]>), // (attention scale=0.125;groups=4 q k v [bias])
        "moba_attention" = Moba([Id; 4]), // (moba_attention moba=0.125;4;512;3 q k v)
        "lsh_attention" = Lsh([Id; 4]), // (lsh_attention lsh=0.125;8;64;64;causal qk v rotations)
        "routing_attention" = Routing([Id; 4]), // (routing_attention routing=0.125;16;512;causal qk v centroids)
        // (linear_attention linear=causal;step;plain;chunkwise:64 q k v [log_decay])
        "linear_attention" = LinearAttention(Box<[Id]>),
        // (moe_dispatch moe=silu;gated;token:2;none x gate [w_gate] w_up w_down [shared..])
        "moe_dispatch" = MoeDispatch(Box<[Id]>),
        Source(Source),
        Attr(Attr),
    }
}

/// An `f64` compared, hashed and ordered by its bits, so `-0.0`, `0.0` and each NaN
/// are distinct attributes: rewrites are exact, so is attribute equality.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct F64(pub u64);

impl F64 {
    pub fn new(x: f64) -> F64 {
        F64(x.to_bits())
    }

    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl fmt::Display for F64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:?}` is the shortest text that parses back to the same bits.
        write!(f, "{:?}", self.get())
    }
}

/// The compile-time parameters of one op, as a leaf e-node. The text form has no
/// spaces or parentheses, so it can be written in egg patterns, and `FromStr` inverts
/// `Display` exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Attr {
    Unary(UnaryOp),   // exp
    Binary(BinaryOp), // add
    Compare(CmpOp),   // lt
    DType(DType),     // f32
    Axis(usize),      // axis=2
    Reduce {
        kind: ReduceKind,
        axes: Vec<usize>,
        keep_dims: bool,
    }, // sum:1,2 or sum:1,2:keep
    Eps(F64),         // eps=0.00001
    /// RoPE's base and scaling: `theta=10000.0`, `theta=500000.0;llama3:8.0,1.0,4.0,8192.0`.
    Theta(F64, &'static str, Vec<F64>),
    Shape(Shape),     // [batch,seq,768]
    Perm(Vec<usize>), // perm=0,2,1,3
    Slice {
        axis: usize,
        start: Dim,
        end: Dim,
    }, // slice=3:0..seq
    TopK {
        k: u64,
        output: TopKOutput,
    }, // k=2:values or k=2:indices
    // scale=0.125;groups=4;softcap=30.0;bias;mask=k <= q (the mask last: it has spaces,
    // and rules never spell this attribute in a pattern)
    /// `routing=scale;clusters;window;causal|bidirectional`
    Routing {
        scale: F64,
        clusters: u64,
        window: u64,
        causal: bool,
    },
    /// `lsh=scale;n_hashes;buckets;chunk;causal|bidirectional`
    Lsh {
        scale: F64,
        n_hashes: u64,
        buckets: u64,
        chunk: u64,
        causal: bool,
    },
    /// `moba=scale;groups;block;top_k`
    Moba {
        scale: F64,
        groups: u64,
        block: u64,
        top_k: u64,
    },
    /// `linear=causal|bidirectional;DECAY;normalized|plain;FORM` with FORM one of
    /// `parallel`, `chunkwise:C`, `recurrent`.
    Linear(attnc_ir::LinearAttention),
    /// `moe=ACTIVATION;gated|plain;token|expert:K;none|always|gated` (the last: shared
    /// experts)
    Moe(attnc_ir::MoeDispatch),
    Attention {
        scale: F64,
        softcap: Option<F64>,
        mask: Option<MaskExpr>,
        groups: u64,
        bias: bool,
        /// `block=64x64`: block-sparse.
        block: Option<[u64; 2]>,
        /// `listed`: the blocks are a last operand.
        listed: bool,
        /// `segments`: document ids are an operand.
        segments: bool,
    },
}

impl Attr {
    pub fn of_attention(a: &attnc_ir::Attention) -> Attr {
        Attr::Attention {
            scale: F64::new(a.scale),
            softcap: a.softcap.map(F64::new),
            mask: a.mask.clone(),
            groups: a.groups,
            bias: a.bias,
            block: a.block,
            listed: a.listed,
            segments: a.segments,
        }
    }

    /// The IR form of an attention attribute.
    pub fn attention(&self) -> Option<attnc_ir::Attention> {
        match self {
            Attr::Attention {
                scale,
                softcap,
                mask,
                groups,
                bias,
                block,
                listed,
                segments,
            } => Some(attnc_ir::Attention {
                scale: scale.get(),
                softcap: softcap.map(F64::get),
                mask: mask.clone(),
                groups: *groups,
                bias: *bias,
                block: *block,
                listed: *listed,
                segments: *segments,
            }),
            _ => None,
        }
    }
}

fn list(xs: &[usize]) -> String {
    let xs: Vec<String> = xs.iter().map(usize::to_string).collect();
    xs.join(",")
}

fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|x| x.parse().map_err(|_| format!("`{x}` is not an axis")))
        .collect()
}

fn parse_dim(s: &str) -> Result<Dim, String> {
    if s.is_empty() {
        return Err("empty dimension".into());
    }
    Ok(match s.parse::<u64>() {
        Ok(n) => Dim::Const(n),
        Err(_) => Dim::sym(s),
    })
}

fn reduce_name(kind: ReduceKind) -> &'static str {
    match kind {
        ReduceKind::Sum => "sum",
        ReduceKind::Max => "max",
        ReduceKind::Mean => "mean",
    }
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Unary(u) => f.write_str(u.name()),
            Attr::Binary(b) => f.write_str(b.name()),
            Attr::Compare(c) => f.write_str(c.name()),
            Attr::DType(d) => f.write_str(d.name()),
            Attr::Axis(a) => write!(f, "axis={a}"),
            Attr::Reduce {
                kind,
                axes,
                keep_dims,
            } => {
                write!(f, "{}:{}", reduce_name(*kind), list(axes))?;
                if *keep_dims {
                    f.write_str(":keep")?;
                }
                Ok(())
            }
            Attr::Eps(x) => write!(f, "eps={x}"),
            Attr::Theta(x, kind, params) => {
                write!(f, "theta={x}")?;
                if !params.is_empty() || *kind != "none" {
                    let p: Vec<String> = params.iter().map(F64::to_string).collect();
                    write!(f, ";{kind}:{}", p.join(","))?;
                }
                Ok(())
            }
            Attr::Shape(s) => {
                let dims: Vec<String> = s.0.iter().map(Dim::to_string).collect();
                write!(f, "[{}]", dims.join(","))
            }
            Attr::Perm(p) => write!(f, "perm={}", list(p)),
            Attr::Slice { axis, start, end } => write!(f, "slice={axis}:{start}..{end}"),
            Attr::TopK { k, output } => {
                let which = match output {
                    TopKOutput::Values => "values",
                    TopKOutput::Indices => "indices",
                };
                write!(f, "k={k}:{which}")
            }
            Attr::Moba {
                scale,
                groups,
                block,
                top_k,
            } => write!(f, "moba={scale};{groups};{block};{top_k}"),
            Attr::Linear(l) => {
                let c = if l.causal { "causal" } else { "bidirectional" };
                let n = if l.normalize { "normalized" } else { "plain" };
                write!(f, "linear={c};{};{n};", l.decay.name())?;
                match l.form {
                    LinearForm::Parallel => f.write_str("parallel"),
                    LinearForm::Chunkwise { chunk } => write!(f, "chunkwise:{chunk}"),
                    LinearForm::Recurrent => f.write_str("recurrent"),
                }
            }
            Attr::Moe(m) => {
                let g = if m.gated { "gated" } else { "plain" };
                let (a, c) = (m.activation.name(), m.choice.name());
                write!(f, "moe={a};{g};{c}:{};{}", m.k, m.shared.name())
            }
            Attr::Routing {
                scale,
                clusters,
                window,
                causal,
            } => {
                let c = if *causal { "causal" } else { "bidirectional" };
                write!(f, "routing={scale};{clusters};{window};{c}")
            }
            Attr::Lsh {
                scale,
                n_hashes,
                buckets,
                chunk,
                causal,
            } => {
                let c = if *causal { "causal" } else { "bidirectional" };
                write!(f, "lsh={scale};{n_hashes};{buckets};{chunk};{c}")
            }
            Attr::Attention {
                scale,
                softcap,
                mask,
                groups,
                bias,
                block,
                listed,
                segments,
            } => {
                write!(f, "scale={scale};groups={groups}")?;
                if *segments {
                    f.write_str(";segments")?;
                }
                if let Some(c) = softcap {
                    write!(f, ";softcap={c}")?;
                }
                if *bias {
                    f.write_str(";bias")?;
                }
                if let Some([bq, bk]) = block {
                    write!(f, ";block={bq}x{bk}")?;
                }
                if *listed {
                    f.write_str(";listed")?;
                }
                if let Some(m) = mask {
                    write!(f, ";mask={m}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Attr {
    type Err = String;

    fn from_str(s: &str) -> Result<Attr, String> {
        if let Some(u) = UnaryOp::ALL.into_iter().find(|u| u.name() == s) {
            return Ok(Attr::Unary(u));
        }
        if let Some(b) = BinaryOp::ALL.into_iter().find(|b| b.name() == s) {
            return Ok(Attr::Binary(b));
        }
        if let Some(c) = CmpOp::ALL.into_iter().find(|c| c.name() == s) {
            return Ok(Attr::Compare(c));
        }
        if let Some(d) = DType::from_name(s) {
            return Ok(Attr::DType(d));
        }
        let float = |x: &str| {
            x.parse::<f64>()
                .map(F64::new)
                .map_err(|_| format!("`{x}` is not a number"))
        };
        if let Some(a) = s.strip_prefix("axis=") {
            return a
                .parse()
                .map(Attr::Axis)
                .map_err(|_| format!("bad axis `{a}`"));
        }
        if let Some(x) = s.strip_prefix("eps=") {
            return float(x).map(Attr::Eps);
        }
        if let Some(x) = s.strip_prefix("theta=") {
            let (theta, scaling) = x.split_once(';').unwrap_or((x, "none:"));
            let (kind, params) = scaling
                .split_once(':')
                .ok_or_else(|| format!("bad rope scaling `{scaling}`"))?;
            let params: Vec<F64> = params
                .split(',')
                .filter(|p| !p.is_empty())
                .map(float)
                .collect::<Result<_, _>>()?;
            let values: Vec<f64> = params.iter().map(|p| p.get()).collect();
            let scaling = attnc_ir::RopeScaling::from_params(kind, &values)
                .ok_or_else(|| format!("bad rope scaling `{scaling}`"))?;
            return Ok(Attr::Theta(float(theta)?, scaling.name(), params));
        }
        if let Some(p) = s.strip_prefix("perm=") {
            return parse_list(p).map(Attr::Perm);
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            if inner.is_empty() {
                return Ok(Attr::Shape(Shape::scalar()));
            }
            let dims: Vec<Dim> = inner.split(',').map(parse_dim).collect::<Result<_, _>>()?;
            return Ok(Attr::Shape(Shape(dims)));
        }
        if let Some(rest) = s.strip_prefix("slice=") {
            let (axis, range) = rest
                .split_once(':')
                .ok_or("slice needs `axis:start..end`")?;
            let (start, end) = range.split_once("..").ok_or("slice needs `start..end`")?;
            return Ok(Attr::Slice {
                axis: axis.parse().map_err(|_| format!("bad axis `{axis}`"))?,
                start: parse_dim(start)?,
                end: parse_dim(end)?,
            });
        }
        let direction = |c: &str| match c {
            "causal" => Ok(true),
            "bidirectional" => Ok(false),
            other => Err(format!("`{other}`: expected causal or bidirectional")),
        };
        if let Some(rest) = s.strip_prefix("routing=") {
            let parts: Vec<&str> = rest.split(';').collect();
            let [scale, clusters, window, causal] = parts[..] else {
                return Err(format!(
                    "`{s}`: routing needs `routing=scale;clusters;window;causal|bidirectional`"
                ));
            };
            let int = |x: &str| {
                x.parse::<u64>()
                    .map_err(|_| format!("`{x}` is not a count"))
            };
            return Ok(Attr::Routing {
                scale: float(scale)?,
                clusters: int(clusters)?,
                window: int(window)?,
                causal: direction(causal)?,
            });
        }
        if let Some(rest) = s.strip_prefix("lsh=") {
            let parts: Vec<&str> = rest.split(';').collect();
            let [scale, n_hashes, buckets, chunk, causal] = parts[..] else {
                return Err(format!(
                    "`{s}`: lsh needs `lsh=scale;n_hashes;buckets;chunk;causal|bidirectional`"
                ));
            };
            let int = |x: &str| {
                x.parse::<u64>()
                    .map_err(|_| format!("`{x}` is not a count"))
            };
            return Ok(Attr::Lsh {
                scale: float(scale)?,
                n_hashes: int(n_hashes)?,
                buckets: int(buckets)?,
                chunk: int(chunk)?,
                causal: direction(causal)?,
            });
        }
        if let Some(rest) = s.strip_prefix("linear=") {
            let parts: Vec<&str> = rest.split(';').collect();
            let [causal, decay, normalize, form] = parts[..] else {
                return Err(format!(
                    "`{s}`: linear needs `linear=causal|bidirectional;DECAY;normalized|plain;FORM`"
                ));
            };
            let decay = [Decay::None, Decay::Head, Decay::Step, Decay::Gate]
                .into_iter()
                .find(|d| d.name() == decay)
                .ok_or_else(|| format!("`{decay}` is not a decay (none, head, step, gate)"))?;
            let normalize = match normalize {
                "normalized" => true,
                "plain" => false,
                other => return Err(format!("`{other}`: expected normalized or plain")),
            };
            let form = match form.split_once(':') {
                Some(("chunkwise", c)) => LinearForm::Chunkwise {
                    chunk: c
                        .parse()
                        .map_err(|_| format!("`{c}` is not a chunk size"))?,
                },
                None if form == "parallel" => LinearForm::Parallel,
                None if form == "recurrent" => LinearForm::Recurrent,
                _ => return Err(format!("`{form}` is not a linear attention form")),
            };
            return Ok(Attr::Linear(attnc_ir::LinearAttention {
                causal: direction(causal)?,
                decay,
                normalize,
                form,
            }));
        }
        if let Some(rest) = s.strip_prefix("moe=") {
            let parts: Vec<&str> = rest.split(';').collect();
            let [activation, gated, choice, shared] = parts[..] else {
                return Err(format!(
                    "`{s}`: moe needs `moe=ACTIVATION;gated|plain;token|expert:K;none|always|gated`"
                ));
            };
            let shared = [
                attnc_ir::MoeShared::None,
                attnc_ir::MoeShared::Always,
                attnc_ir::MoeShared::Gated,
            ]
            .into_iter()
            .find(|m| m.name() == shared)
            .ok_or_else(|| format!("`{shared}`: expected none, always or gated"))?;
            let activation = UnaryOp::ALL
                .into_iter()
                .find(|u| u.name() == activation)
                .ok_or_else(|| format!("`{activation}` is not an activation"))?;
            let gated = match gated {
                "gated" => true,
                "plain" => false,
                other => return Err(format!("`{other}`: expected gated or plain")),
            };
            let (choice, k) = match choice.split_once(':') {
                Some(("token", k)) => (attnc_ir::MoeChoice::Token, k),
                Some(("expert", k)) => (attnc_ir::MoeChoice::Expert, k),
                _ => return Err(format!("`{choice}`: expected token:K or expert:K")),
            };
            let k = k.parse().map_err(|_| format!("`{k}` is not a count"))?;
            return Ok(Attr::Moe(attnc_ir::MoeDispatch {
                activation,
                gated,
                choice,
                k,
                shared,
            }));
        }
        if let Some(rest) = s.strip_prefix("moba=") {
            let parts: Vec<&str> = rest.split(';').collect();
            let [scale, groups, block, top_k] = parts[..] else {
                return Err(format!("`{s}`: moba needs `moba=scale;groups;block;top_k`"));
            };
            let int = |x: &str| {
                x.parse::<u64>()
                    .map_err(|_| format!("`{x}` is not a count"))
            };
            return Ok(Attr::Moba {
                scale: float(scale)?,
                groups: int(groups)?,
                block: int(block)?,
                top_k: int(top_k)?,
            });
        }
        if let Some(rest) = s.strip_prefix("scale=") {
            let (rest, mask) = match rest.split_once(";mask=") {
                Some((rest, m)) => (rest, Some(MaskExpr::parse(m).map_err(|e| e.message)?)),
                None => (rest, None),
            };
            let mut parts = rest.split(';');
            let scale = float(parts.next().unwrap_or_default())?;
            let mut attr = (None, None, false);
            let mut block = None;
            let mut listed = false;
            let mut segments = false;
            for part in parts {
                if let Some(g) = part.strip_prefix("groups=") {
                    attr.0 = Some(g.parse().map_err(|_| format!("bad groups `{g}`"))?);
                } else if let Some(c) = part.strip_prefix("softcap=") {
                    attr.1 = Some(float(c)?);
                } else if part == "bias" {
                    attr.2 = true;
                } else if part == "listed" {
                    listed = true;
                } else if part == "segments" {
                    segments = true;
                } else if let Some(b) = part.strip_prefix("block=") {
                    let bad = || format!("bad block `{b}`, expected `QxK`");
                    let (q, k) = b.split_once('x').ok_or_else(bad)?;
                    block = Some([q.parse().map_err(|_| bad())?, k.parse().map_err(|_| bad())?]);
                } else {
                    return Err(format!("`{part}` is not an attention attribute"));
                }
            }
            return Ok(Attr::Attention {
                scale,
                groups: attr.0.ok_or("attention needs `groups=`")?,
                softcap: attr.1,
                bias: attr.2,
                block,
                listed,
                segments,
                mask,
            });
        }
        if let Some(rest) = s.strip_prefix("k=") {
            let (k, which) = rest
                .split_once(':')
                .ok_or("topk needs `k=N:values|indices`")?;
            let output = match which {
                "values" => TopKOutput::Values,
                "indices" => TopKOutput::Indices,
                _ => return Err(format!("topk yields values or indices, not `{which}`")),
            };
            let k = k.parse().map_err(|_| format!("bad k `{k}`"))?;
            return Ok(Attr::TopK { k, output });
        }
        let kinds = [ReduceKind::Sum, ReduceKind::Max, ReduceKind::Mean];
        for kind in kinds {
            if let Some(rest) = s
                .strip_prefix(reduce_name(kind))
                .and_then(|r| r.strip_prefix(':'))
            {
                let (axes, keep_dims) = match rest.strip_suffix(":keep") {
                    Some(axes) => (axes, true),
                    None => (rest, false),
                };
                let axes = parse_list(axes)?;
                return Ok(Attr::Reduce {
                    kind,
                    axes,
                    keep_dims,
                });
            }
        }
        Err(format!("`{s}` is not an attribute"))
    }
}

/// Ordered by text: `Display` is injective (`FromStr` inverts it), so this is a total
/// order that agrees with `Eq`. The IR's op enums have no `Ord` of their own.
impl Ord for Attr {
    fn cmp(&self, other: &Attr) -> Ordering {
        self.to_string().cmp(&other.to_string())
    }
}

impl PartialOrd for Attr {
    fn partial_cmp(&self, other: &Attr) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What a source leaf is; its declared type is beside it in [`Source`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Input(String),
    Param(String),
    Const(F64),
    Iota(usize),
    Mask(MaskExpr),
    /// Performer features drawn from this seed.
    Features(u64),
}

/// A source op with its declared type: everything `GraphBuilder::add` needs to
/// rebuild it. Two equal sources are one value, so hash-consing them is exact.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Source {
    pub kind: SourceKind,
    pub ty: TensorType,
}

impl Source {
    /// The source leaf for `op` with its declared type, or `None` for a non-source op.
    pub fn of(op: &Op, ty: &TensorType) -> Option<Source> {
        let kind = match op {
            Op::Input { name } => SourceKind::Input(name.clone()),
            Op::Param { name } => SourceKind::Param(name.clone()),
            Op::Const { value } => SourceKind::Const(F64::new(*value)),
            Op::Iota { axis } => SourceKind::Iota(*axis),
            Op::Mask { expr } => SourceKind::Mask(expr.clone()),
            Op::RandomFeatures { seed } => SourceKind::Features(*seed),
            _ => return None,
        };
        Some(Source {
            kind,
            ty: ty.clone(),
        })
    }

    pub fn op(&self) -> Op {
        match &self.kind {
            SourceKind::Input(name) => Op::Input { name: name.clone() },
            SourceKind::Param(name) => Op::Param { name: name.clone() },
            SourceKind::Const(v) => Op::Const { value: v.get() },
            SourceKind::Iota(axis) => Op::Iota { axis: *axis },
            SourceKind::Mask(expr) => Op::Mask { expr: expr.clone() },
            SourceKind::Features(seed) => Op::RandomFeatures { seed: *seed },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SourceKind::Input(name) => write!(f, "input:{name:?}")?,
            SourceKind::Param(name) => write!(f, "param:{name:?}")?,
            SourceKind::Const(v) => write!(f, "const:{v}")?,
            SourceKind::Iota(axis) => write!(f, "iota:{axis}")?,
            SourceKind::Mask(expr) => write!(f, "mask:{:?}", expr.to_string())?,
            SourceKind::Features(seed) => write!(f, "random_features:{seed}")?,
        }
        write!(f, ":{}", self.ty)
    }
}

/// Rules never name a concrete weight or input: sources are not written in patterns.
impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Source, String> {
        Err(format!("`{s}`: sources are not written in patterns"))
    }
}

/// Ordered by text, like [`Attr`] (the text names kind, value and type, so it is
/// injective).
impl Ord for Source {
    fn cmp(&self, other: &Source) -> Ordering {
        self.to_string().cmp(&other.to_string())
    }
}

impl PartialOrd for Source {
    fn partial_cmp(&self, other: &Source) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The attribute leaf of a non-source `op`, or `None` when its family has none
/// (`select`, `matmul`, `embedding`) or it is a source.
pub fn attr_of(op: &Op) -> Option<Attr> {
    Some(match op {
        Op::Input { .. }
        | Op::Param { .. }
        | Op::Const { .. }
        | Op::Iota { .. }
        | Op::Mask { .. }
        | Op::RandomFeatures { .. }
        | Op::Select
        | Op::MatMul
        | Op::Embedding => return None,
        Op::Unary(u) => Attr::Unary(*u),
        Op::Binary(b) => Attr::Binary(*b),
        Op::Compare(c) => Attr::Compare(*c),
        Op::Cast { to } => Attr::DType(*to),
        Op::Reduce {
            kind,
            axes,
            keep_dims,
        } => Attr::Reduce {
            kind: *kind,
            axes: axes.clone(),
            keep_dims: *keep_dims,
        },
        Op::LayerNorm { eps } | Op::RmsNorm { eps } => Attr::Eps(F64::new(*eps)),
        Op::Rope { theta, scaling } => Attr::Theta(
            F64::new(*theta),
            scaling.name(),
            scaling.params().into_iter().map(F64::new).collect(),
        ),
        Op::Reshape { shape } | Op::Broadcast { shape } => Attr::Shape(shape.clone()),
        Op::Transpose { perm } => Attr::Perm(perm.clone()),
        Op::Softmax { axis }
        | Op::Concat { axis }
        | Op::Gather { axis }
        | Op::ScatterAdd { axis }
        | Op::CumSum { axis }
        | Op::Scan { axis } => Attr::Axis(*axis),
        Op::LinearAttention(l) => Attr::Linear(*l),
        Op::MoeDispatch(m) => Attr::Moe(*m),
        Op::Slice { axis, start, end } => Attr::Slice {
            axis: *axis,
            start: start.clone(),
            end: end.clone(),
        },
        Op::TopK { k, output } => Attr::TopK {
            k: *k,
            output: *output,
        },
        Op::Attention(a) => Attr::of_attention(a),
        Op::Routing(r) => Attr::Routing {
            scale: F64::new(r.scale),
            clusters: r.clusters,
            window: r.window,
            causal: r.causal,
        },
        Op::Lsh(l) => Attr::Lsh {
            scale: F64::new(l.scale),
            n_hashes: l.n_hashes,
            buckets: l.buckets,
            chunk: l.chunk,
            causal: l.causal,
        },
        Op::Moba(m) => Attr::Moba {
            scale: F64::new(m.scale),
            groups: m.groups,
            block: m.block,
            top_k: m.top_k,
        },
    })
}

impl Attn {
    /// The e-node of non-source `op` with `children` = its attribute leaf (when
    /// [`attr_of`] gives one) followed by its operands; `None` when `op` is a source
    /// or the children do not fit its arity.
    pub fn of_op(op: &Op, children: &[Id]) -> Option<Attn> {
        fn fit<const N: usize>(c: &[Id]) -> Option<[Id; N]> {
            c.try_into().ok()
        }
        let c = children;
        Some(match op {
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Const { .. }
            | Op::Iota { .. }
            | Op::Mask { .. }
            | Op::RandomFeatures { .. } => return None,
            Op::Unary(_) => Attn::Unary(fit(c)?),
            Op::Binary(_) => Attn::Binary(fit(c)?),
            Op::Compare(_) => Attn::Compare(fit(c)?),
            Op::Select => Attn::Select(fit(c)?),
            Op::Cast { .. } => Attn::Cast(fit(c)?),
            Op::Reduce { .. } => Attn::Reduce(fit(c)?),
            Op::Softmax { .. } => Attn::Softmax(fit(c)?),
            Op::LayerNorm { .. } => Attn::LayerNorm(fit(c)?),
            Op::RmsNorm { .. } => Attn::RmsNorm(fit(c)?),
            Op::MatMul => Attn::MatMul(fit(c)?),
            Op::Reshape { .. } => Attn::Reshape(fit(c)?),
            Op::Transpose { .. } => Attn::Transpose(fit(c)?),
            Op::Broadcast { .. } => Attn::Broadcast(fit(c)?),
            Op::Concat { .. } if !c.is_empty() => Attn::Concat(c.into()),
            Op::Concat { .. } => return None,
            Op::Slice { .. } => Attn::Slice(fit(c)?),
            Op::Gather { .. } => Attn::Gather(fit(c)?),
            Op::ScatterAdd { .. } => Attn::ScatterAdd(fit(c)?),
            Op::Embedding => Attn::Embedding(fit(c)?),
            Op::Rope { .. } => Attn::Rope(fit(c)?),
            Op::TopK { .. } => Attn::TopK(fit(c)?),
            Op::CumSum { .. } => Attn::CumSum(fit(c)?),
            Op::Scan { .. } => Attn::Scan(fit(c)?),
            Op::LinearAttention(l) if c.len() == 4 + (l.decay != Decay::None) as usize => {
                Attn::LinearAttention(c.into())
            }
            Op::LinearAttention(_) => return None,
            Op::MoeDispatch(m) if c.len() == 1 + m.arity() => Attn::MoeDispatch(c.into()),
            Op::MoeDispatch(_) => return None,
            Op::Attention(a)
                if c.len() == 4 + a.bias as usize + a.segments as usize + a.listed as usize =>
            {
                Attn::Attention(c.into())
            }
            Op::Attention(_) => return None,
            Op::Moba(_) => Attn::Moba(fit(c)?),
            Op::Lsh(_) => Attn::Lsh(fit(c)?),
            Op::Routing(_) => Attn::Routing(fit(c)?),
        })
    }

    /// Whether the first child is an attribute leaf.
    fn has_attr(&self) -> bool {
        !matches!(
            self,
            Attn::Select(_)
                | Attn::MatMul(_)
                | Attn::Embedding(_)
                | Attn::Source(_)
                | Attn::Attr(_)
        )
    }

    /// The attribute child, for families that have one.
    pub fn attr(&self) -> Option<Id> {
        use egg::Language;
        self.has_attr().then(|| self.children()[0])
    }

    /// The tensor operands, in IR order.
    pub fn operands(&self) -> &[Id] {
        use egg::Language;
        let c = self.children();
        if self.has_attr() {
            &c[1..]
        } else {
            c
        }
    }

    /// The IR op this node stands for, given its attribute (the leaf under
    /// [`Attn::attr`]); an error when the attribute does not belong to the family.
    pub fn to_op(&self, attr: Option<&Attr>) -> Result<Op, String> {
        Ok(match (self, attr) {
            (Attn::Source(s), _) => s.op(),
            (Attn::Select(_), _) => Op::Select,
            (Attn::MatMul(_), _) => Op::MatMul,
            (Attn::Embedding(_), _) => Op::Embedding,
            (Attn::Unary(_), Some(Attr::Unary(u))) => Op::Unary(*u),
            (Attn::Binary(_), Some(Attr::Binary(b))) => Op::Binary(*b),
            (Attn::Compare(_), Some(Attr::Compare(c))) => Op::Compare(*c),
            (Attn::Cast(_), Some(Attr::DType(to))) => Op::Cast { to: *to },
            (
                Attn::Reduce(_),
                Some(Attr::Reduce {
                    kind,
                    axes,
                    keep_dims,
                }),
            ) => Op::Reduce {
                kind: *kind,
                axes: axes.clone(),
                keep_dims: *keep_dims,
            },
            (Attn::Softmax(_), Some(Attr::Axis(axis))) => Op::Softmax { axis: *axis },
            (Attn::LayerNorm(_), Some(Attr::Eps(eps))) => Op::LayerNorm { eps: eps.get() },
            (Attn::RmsNorm(_), Some(Attr::Eps(eps))) => Op::RmsNorm { eps: eps.get() },
            (Attn::Reshape(_), Some(Attr::Shape(shape))) => Op::Reshape {
                shape: shape.clone(),
            },
            (Attn::Transpose(_), Some(Attr::Perm(perm))) => Op::Transpose { perm: perm.clone() },
            (Attn::Broadcast(_), Some(Attr::Shape(shape))) => Op::Broadcast {
                shape: shape.clone(),
            },
            (Attn::Concat(_), Some(Attr::Axis(axis))) => Op::Concat { axis: *axis },
            (Attn::Slice(_), Some(Attr::Slice { axis, start, end })) => Op::Slice {
                axis: *axis,
                start: start.clone(),
                end: end.clone(),
            },
            (Attn::Gather(_), Some(Attr::Axis(axis))) => Op::Gather { axis: *axis },
            (Attn::ScatterAdd(_), Some(Attr::Axis(axis))) => Op::ScatterAdd { axis: *axis },
            (Attn::Rope(_), Some(Attr::Theta(theta, kind, params))) => {
                let values: Vec<f64> = params.iter().map(|p| p.get()).collect();
                Op::Rope {
                    theta: theta.get(),
                    scaling: attnc_ir::RopeScaling::from_params(kind, &values)
                        .ok_or_else(|| format!("bad rope scaling `{kind}`"))?,
                }
            }
            (Attn::TopK(_), Some(Attr::TopK { k, output })) => Op::TopK {
                k: *k,
                output: *output,
            },
            (Attn::CumSum(_), Some(Attr::Axis(axis))) => Op::CumSum { axis: *axis },
            (Attn::Scan(_), Some(Attr::Axis(axis))) => Op::Scan { axis: *axis },
            (Attn::LinearAttention(_), Some(Attr::Linear(l))) => Op::LinearAttention(*l),
            (Attn::MoeDispatch(_), Some(Attr::Moe(m))) => Op::MoeDispatch(*m),
            (
                Attn::Moba(_),
                Some(Attr::Moba {
                    scale,
                    groups,
                    block,
                    top_k,
                }),
            ) => Op::Moba(attnc_ir::Moba {
                scale: scale.get(),
                groups: *groups,
                block: *block,
                top_k: *top_k,
            }),
            (
                Attn::Routing(_),
                Some(Attr::Routing {
                    scale,
                    clusters,
                    window,
                    causal,
                }),
            ) => Op::Routing(attnc_ir::Routing {
                scale: scale.get(),
                clusters: *clusters,
                window: *window,
                causal: *causal,
            }),
            (
                Attn::Lsh(_),
                Some(Attr::Lsh {
                    scale,
                    n_hashes,
                    buckets,
                    chunk,
                    causal,
                }),
            ) => Op::Lsh(attnc_ir::Lsh {
                scale: scale.get(),
                n_hashes: *n_hashes,
                buckets: *buckets,
                chunk: *chunk,
                causal: *causal,
            }),
            (Attn::Attention(_), Some(a @ Attr::Attention { .. })) => {
                Op::Attention(a.attention().expect("an attention attribute"))
            }
            (node, attr) => {
                let attr = attr.map_or("none".to_string(), Attr::to_string);
                return Err(format!("`{node}` cannot take the attribute `{attr}`"));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_print_and_parse_back() {
        let attrs = [
            Attr::Unary(UnaryOp::GeluTanh),
            Attr::Binary(BinaryOp::Max),
            Attr::Compare(CmpOp::Le),
            Attr::DType(DType::F32),
            Attr::Axis(3),
            Attr::Reduce {
                kind: ReduceKind::Max,
                axes: vec![1, 2],
                keep_dims: true,
            },
            Attr::Reduce {
                kind: ReduceKind::Mean,
                axes: vec![],
                keep_dims: false,
            },
            Attr::Eps(F64::new(1e-5)),
            Attr::Theta(F64::new(500000.0), "none", vec![]),
            Attr::Theta(
                F64::new(500000.0),
                "llama3",
                [8.0, 1.0, 4.0, 8192.0].map(F64::new).to_vec(),
            ),
            Attr::Shape(Shape::new([Dim::sym("batch"), Dim::Const(768)])),
            Attr::Shape(Shape::scalar()),
            Attr::Perm(vec![0, 2, 1, 3]),
            Attr::Slice {
                axis: 3,
                start: Dim::Const(0),
                end: Dim::sym("half"),
            },
            Attr::TopK {
                k: 2,
                output: TopKOutput::Indices,
            },
            Attr::Moba {
                scale: F64::new(0.125),
                groups: 4,
                block: 512,
                top_k: 3,
            },
            Attr::Lsh {
                scale: F64::new(0.125),
                n_hashes: 8,
                buckets: 64,
                chunk: 64,
                causal: true,
            },
            Attr::Routing {
                scale: F64::new(0.125),
                clusters: 16,
                window: 512,
                causal: false,
            },
            Attr::Linear(attnc_ir::LinearAttention {
                causal: true,
                decay: Decay::Gate,
                normalize: true,
                form: LinearForm::Chunkwise { chunk: 64 },
            }),
            Attr::Moe(attnc_ir::MoeDispatch {
                activation: UnaryOp::Silu,
                gated: true,
                choice: attnc_ir::MoeChoice::Token,
                k: 2,
                shared: attnc_ir::MoeShared::None,
            }),
            Attr::Moe(attnc_ir::MoeDispatch {
                activation: UnaryOp::GeluTanh,
                gated: false,
                choice: attnc_ir::MoeChoice::Expert,
                k: 640,
                shared: attnc_ir::MoeShared::Gated,
            }),
            Attr::Linear(attnc_ir::LinearAttention {
                causal: false,
                decay: Decay::None,
                normalize: false,
                form: LinearForm::Parallel,
            }),
        ];
        for attr in attrs {
            let text = attr.to_string();
            assert!(!text.contains([' ', '(', ')']), "{text}");
            assert_eq!(text.parse::<Attr>(), Ok(attr), "{text}");
        }
        let attention = Attr::Attention {
            scale: F64::new(0.125),
            softcap: Some(F64::new(30.0)),
            mask: Some(MaskExpr::parse("k <= q && q - k < window").unwrap()),
            groups: 4,
            bias: true,
            block: Some([64, 32]),
            listed: true,
            segments: true,
        };
        let text = attention.to_string();
        assert_eq!(text.parse::<Attr>(), Ok(attention), "{text}");
    }
}
