//! The operations of the IR, in their plain (unfused) form.
//!
//! Every op has a stable text name (`matmul`, `softmax`, ...) used by the text format,
//! by snapshots and, later, by the e-graph language; attributes are the op's
//! compile-time parameters, operands are graph edges.

use crate::{DType, Dim, MaskExpr, Shape};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Silu,
    /// Exact GELU, `x·Φ(x)` with the error function (BERT).
    Gelu,
    /// GELU's tanh approximation (GPT-2's `gelu_new`).
    GeluTanh,
    /// ELU with α = 1.
    Elu,
    Relu,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 13] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Silu,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Elu,
        UnaryOp::Relu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Silu => "silu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Elu => "elu",
            UnaryOp::Relu => "relu",
        }
    }

    /// Ops that also make sense on integers.
    pub fn allows_int(self) -> bool {
        matches!(self, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 7] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::Pow => "pow",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CmpOp {
    pub const ALL: [CmpOp; 6] = [
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
        CmpOp::Eq,
        CmpOp::Ne,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
        }
    }

    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Max,
    Mean,
}

impl ReduceKind {
    pub const ALL: [ReduceKind; 3] = [ReduceKind::Sum, ReduceKind::Max, ReduceKind::Mean];

    pub fn name(self) -> &'static str {
        match self {
            ReduceKind::Sum => "reduce_sum",
            ReduceKind::Max => "reduce_max",
            ReduceKind::Mean => "reduce_mean",
        }
    }
}

/// Which result of a top-k selection a `topk_*` op yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopKOutput {
    Values,
    Indices,
}

/// An operation. Shapes of results are computed by [`crate::infer`]; the source ops
/// (`input`, `param`, `const`, `iota`, `mask`) take their type from the node.
///
/// Axes are non-negative. Operand order is documented per op.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A model input (token ids, activations) fed at run time.
    Input {
        name: String,
    },
    /// A weight, bound once per model.
    Param {
        name: String,
    },
    /// A scalar constant (type `[]`); broadcasting makes it any shape.
    Const {
        value: f64,
    },
    /// `out[i…] = i_axis`: the index along `axis`, an integer tensor.
    Iota {
        axis: usize,
    },
    Unary(UnaryOp),
    /// `(a, b)`, numpy broadcasting, same dtype.
    Binary(BinaryOp),
    /// `(a, b)` → bool, numpy broadcasting.
    Compare(CmpOp),
    /// `(cond, a, b)`: `cond ? a : b`, broadcasting all three.
    Select,
    Cast {
        to: DType,
    },
    Reduce {
        kind: ReduceKind,
        axes: Vec<usize>,
        keep_dims: bool,
    },
    Softmax {
        axis: usize,
    },
    /// `(x, gamma, beta)`, normalising over the last axis.
    LayerNorm {
        eps: f64,
    },
    /// `(x, gamma)`, normalising over the last axis.
    RmsNorm {
        eps: f64,
    },
    /// `(a [.., m, k], b [.., k, n])` → `[.., m, n]`, batch dims broadcast.
    MatMul,
    Reshape {
        shape: Shape,
    },
    Transpose {
        perm: Vec<usize>,
    },
    /// numpy-style broadcast of the operand to `shape`.
    Broadcast {
        shape: Shape,
    },
    /// Any number of operands, joined along `axis`.
    Concat {
        axis: usize,
    },
    /// Elements `start..end` along `axis`.
    Slice {
        axis: usize,
        start: Dim,
        end: Dim,
    },
    /// `(data, indices)`: `out = data[.., indices[…], ..]` along `axis`; the result
    /// shape is `data[..axis] ++ indices ++ data[axis+1..]`.
    Gather {
        axis: usize,
    },
    /// `(data, indices [n], updates)`: `out = data; out[.., indices[j], ..] += updates[.., j, ..]`.
    ScatterAdd {
        axis: usize,
    },
    /// `(table [v, d], ids [..])` → `[.., d]`.
    Embedding,
    /// Rotary position embedding over the last axis (rotate-half pairing `i`, `i + d/2`),
    /// position = index along the second-to-last axis; the frequencies are
    /// `scaling.inv_freqs(theta, d)` (see [`crate::RopeScaling`]).
    Rope {
        theta: f64,
        scaling: crate::RopeScaling,
    },
    /// The `k` largest along the last axis, in descending order; ties go to the lower
    /// index.
    TopK {
        k: u64,
        output: TopKOutput,
    },
    /// Inclusive prefix sum along `axis`.
    CumSum {
        axis: usize,
    },
    /// `(x, a)`, same shape: the first-order linear recurrence
    /// `out[t] = a[t]·out[t-1] + x[t]` along `axis` (`out[-1] = 0`): a decayed prefix
    /// sum, the state passing of chunkwise linear attention.
    Scan {
        axis: usize,
    },
    /// Performer's positive orthogonal random features: a seeded `[m, d]` matrix
    /// whose rows, in blocks of `d`, are orthogonal, each scaled to the norm of an
    /// independent Gaussian vector ([`crate::orthogonal_features`]).
    RandomFeatures {
        seed: u64,
    },
    /// Materialise a mask expression over the trailing `(b, h, q, k)` coordinates.
    Mask {
        expr: MaskExpr,
    },
    /// Fused attention `(q, k, v [, bias] [, segments] [, blocks])`; see [`Attention`].
    Attention(Attention),
    /// MoBA-style block top-k attention `(q, k, v)`; see [`Moba`].
    Moba(Moba),
    /// Reformer LSH attention `(qk, v, rotations)`; see [`Lsh`].
    Lsh(Lsh),
    /// Routing Transformer attention `(qk, v, centroids)`; see [`Routing`].
    Routing(Routing),
    /// Linear attention `(q, k, v [, log_decay])`; see [`LinearAttention`].
    LinearAttention(LinearAttention),
    /// Sparse mixture-of-experts dispatch `(x, gate, [w_gate,] w_up, w_down)`; see
    /// [`MoeDispatch`].
    MoeDispatch(MoeDispatch),
}

/// Which side of a mixture's gate is bounded: what makes it sparse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MoeChoice {
    /// Tokens choose: at most `k` experts per token (top-k routing, Switch).
    Token,
    /// Experts choose: at most `k` tokens per expert (expert-choice routing).
    Expert,
}

impl MoeChoice {
    pub fn name(self) -> &'static str {
        match self {
            MoeChoice::Token => "token",
            MoeChoice::Expert => "expert",
        }
    }
}

/// Shared experts of a `moe_dispatch`: an MLP every token goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MoeShared {
    None,
    /// Added as is (DeepSeekMoE).
    Always,
    /// Scaled per token by a last operand `shared_gate [T, 1]` (Qwen2-MoE's sigmoid gate).
    Gated,
}

impl MoeShared {
    pub fn name(self) -> &'static str {
        match self {
            MoeShared::None => "none",
            MoeShared::Always => "always",
            MoeShared::Gated => "gated",
        }
    }

    /// Operands after the routed experts' weights.
    pub fn operands(self, gated: bool) -> usize {
        match self {
            MoeShared::None => 0,
            MoeShared::Always => 2 + gated as usize,
            MoeShared::Gated => 3 + gated as usize,
        }
    }
}

/// A mixture of `E` MLP experts computed only where its gate is non-zero: `x [T, D]`,
/// `gate [T, E]`, and stacked expert weights `w_gate [E, D, H]` (when `gated`),
/// `w_up [E, D, H]`, `w_down [E, H, D]`; with shared experts, their MLP's weights
/// `ws_gate [D, Hs]` (when `gated`), `ws_up [D, Hs]`, `ws_down [Hs, D]` and, when
/// `shared` is gated, `shared_gate [T, 1]`:
///
/// `out[t] = Σ_{e : gate[t, e] ≠ 0} gate[t, e] · FFN_e(x[t])`, with `FFN_e(x) =
/// (act(x·w_gate[e]) ⊙ x·w_up[e])·w_down[e]` when gated (SwiGLU: `act = silu`) and
/// `act(x·w_up[e])·w_down[e]` otherwise; shared experts add `s[t] · FFN_s(x[t])` (`s = 1`
/// or `shared_gate`), the same MLP with their weights.
///
/// This is the dense-gated mixture `Σ_e gate[t, e] · FFN_e(x[t])` wherever the
/// experts are finite (a zero gate contributes exactly zero there). The gate has at
/// most `k` non-zeros per token (`choice = token`) or per expert (`choice =
/// expert`); that bound sizes the computation (`T·k` or `E·k` selected pairs) and a
/// gate that breaks it is an error. Shared experts are experts whose gate column is
/// never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MoeDispatch {
    pub activation: UnaryOp,
    pub gated: bool,
    pub choice: MoeChoice,
    pub k: u64,
    pub shared: MoeShared,
}

impl MoeDispatch {
    /// Number of operands.
    pub fn arity(&self) -> usize {
        4 + self.gated as usize + self.shared.operands(self.gated)
    }

    /// Selected `(token, expert)` pairs at most, for `tokens` tokens and `experts`
    /// experts.
    pub fn max_pairs(&self, tokens: u64, experts: u64) -> u64 {
        match self.choice {
            MoeChoice::Token => tokens.saturating_mul(self.k.min(experts)),
            MoeChoice::Expert => experts.saturating_mul(self.k.min(tokens)),
        }
    }
}

/// How a `linear_attention` is computed: the function is the same for every form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinearForm {
    /// Non-causal: the state `kᵀ·v` once, then `q·state` (`O(N·Dk·Dv)`). Causal: the
    /// decayed, masked scores in one block (`O(N²)`, what RetNet calls parallel).
    Parallel,
    /// Causal: chunks of `chunk` positions, quadratic inside a chunk, the state passed
    /// from chunk to chunk (`O(N·chunk·D + N·Dk·Dv)`, batched matmuls).
    Chunkwise { chunk: u64 },
    /// Causal: a loop over time updating the `Dk × Dv` state (`O(N·Dk·Dv)`).
    Recurrent,
}

/// Where the decay of a causal `linear_attention` comes from; its operand holds
/// natural logs (≤ 0 for a decay).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decay {
    None,
    /// A fixed rate per head (RetNet): `log_decay [H]`, `w(i, j) = γ_h^(i-j)`.
    Head,
    /// A data-dependent scalar per head and step (Mamba2 / SSD): `log_decay [B, H, N]`.
    Step,
    /// A data-dependent gate per key channel (GLA): `log_decay [B, H, N, Dk]`.
    Gate,
}

impl Decay {
    pub fn name(self) -> &'static str {
        match self {
            Decay::None => "none",
            Decay::Head => "head",
            Decay::Step => "step",
            Decay::Gate => "gate",
        }
    }
}

/// Kernelized (linear) attention over feature maps already applied: `q, k [B, H, N,
/// Dk]`, `v [B, H, N, Dv]`, and with a decay `log_decay` (see [`Decay`]).
///
/// `out[i] = Σ_j (q_i ⊙ g_ij)·k_j · v_j`, over every `j` or, when `causal`, `j ≤ i`,
/// with `g_ij = exp(Σ_{t=j+1..i} log_decay_t)` (a scalar, or per channel for a
/// gate; 1 without decay), divided by `Σ_j (q_i ⊙ g_ij)·k_j` when `normalize` (the
/// normalizer of Katharopoulos et al. and Performer). A decay needs `causal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinearAttention {
    pub causal: bool,
    pub decay: Decay,
    pub normalize: bool,
    pub form: LinearForm,
}

/// Fused, IO-aware attention: `softmax(mask(bias + cap(q·kᵀ·scale)))·v` computed block
/// by block with an online softmax, never materialising the `Sq × Sk` scores.
///
/// Operands: `q [B, H, Sq, Dk]`, `k [B, H/groups, Sk, Dk]`, `v [B, H/groups, Sk, Dv]`
/// and, when `bias` is set, an additive bias that broadcasts to `[B, H, Sq, Sk]`
/// (ALiBi, relative positions). Query head `h` reads KV head `h / groups`, so GQA and
/// MQA read each KV head once. The result is `[B, H, Sq, Dv]`.
///
/// Per score, in order: `s = scale·(q·k)`; `s = softcap·tanh(s / softcap)` when a cap
/// is set; `s += bias`; `s = -inf` where the mask expression (over `b, h, q, k`, with
/// `h` the query head) is false. A row with every score masked is NaN, as the plain
/// softmax of all `-inf` is.
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub scale: f64,
    pub softcap: Option<f64>,
    pub mask: Option<MaskExpr>,
    /// Query heads per KV head (1: MHA, H/Hkv: GQA, H: MQA).
    pub groups: u64,
    /// Whether a fourth operand, the additive bias, is present.
    pub bias: bool,
    /// `block_sparse_attention`: the `[query, key]` block size over which the mask's
    /// block layout ([`crate::BlockLayout`]) is taken; only non-empty blocks are
    /// computed. The function is the same as without it: this is a schedule.
    pub block: Option<[u64; 2]>,
    /// With `block`: the blocks are data, not the mask's layout — a last operand
    /// `blocks: i64 [B, H, ⌈Sq/bq⌉, S]` lists for each query block up to `S` key
    /// blocks (`-1` and other indices outside the key blocks: none). A key counts
    /// where its block is listed and the mask holds, weighted by how many times the
    /// block is listed (once, for a list without repeats).
    pub listed: bool,
    /// Document masking: an operand `segments: i64 [B, S]` (self-attention) after the
    /// bias; a key counts only where its segment is the query's.
    pub segments: bool,
}

/// Mixture of block attention (MoBA, Lu et al. 2025; NSA's selection branch is the
/// same idea): causal self-attention where each query block of `block` rows attends
/// to its own block and to the `top_k` earlier key blocks whose mean key scores
/// highest against the block's mean query (ties: the earlier block). `q [B, H, S, D]`,
/// `k, v [B, H/groups, S, ·]`, `S` a multiple of `block`.
#[derive(Clone, Debug, PartialEq)]
pub struct Moba {
    pub scale: f64,
    pub groups: u64,
    pub block: u64,
    pub top_k: u64,
}

/// Reformer's LSH attention (Kitaev et al., 2020), shared-QK: per hash round `r`,
/// each position's bucket is `argmax([x·R_r, −x·R_r])` (`rotations [n_hashes, D,
/// buckets/2]`, random, given as a parameter); positions are sorted by (bucket,
/// position) and cut into chunks of `chunk`; each query attends to the keys of its
/// chunk and of the chunk before (the first chunk: the last), keys being the unit
/// vectors `x / sqrt(|x|² + 1e-6)`, scores scaled by `scale`, causal in the original
/// positions when `causal`, and a position's own score set to `-1e5` (it attends to
/// itself only when nothing else is allowed). The rounds' outputs are combined with
/// weights `softmax_r(logsumexp_r)`. `qk [B, H, N, D]`, `v [B, H, N, Dv]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lsh {
    pub scale: f64,
    pub n_hashes: u64,
    pub buckets: u64,
    pub chunk: u64,
    pub causal: bool,
}

/// The Routing Transformer's attention (Roy et al., 2021), shared-QK: each of the
/// `clusters` centroids (`centroids [H, C, D]`, learned by online k-means: given as a
/// parameter) takes the `window` positions whose unit vectors `x̂ = x / sqrt(|x|² +
/// 1e-6)` are most similar to it (ties: the earlier position); the members of a
/// cluster attend to each other (scores `x_i · x̂_j · scale`, causal in the positions
/// when `causal`); a position's output is the mean over the clusters it is in, 0 if
/// none. `qk [B, H, N, D]`, `v [B, H, N, Dv]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    pub scale: f64,
    pub clusters: u64,
    pub window: u64,
    pub causal: bool,
}

impl Attention {
    /// Plain scaled dot-product attention over all keys, one KV head per query head.
    pub fn new(scale: f64) -> Attention {
        Attention {
            scale,
            softcap: None,
            mask: None,
            groups: 1,
            bias: false,
            block: None,
            listed: false,
            segments: false,
        }
    }
}

impl Op {
    /// The op's name in the text format.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Const { .. } => "const",
            Op::Iota { .. } => "iota",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Compare(c) => c.name(),
            Op::Select => "select",
            Op::Cast { .. } => "cast",
            Op::Reduce { kind, .. } => kind.name(),
            Op::Softmax { .. } => "softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::MatMul => "matmul",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Broadcast { .. } => "broadcast",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Gather { .. } => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::Embedding => "embedding",
            Op::Rope { .. } => "rope",
            Op::TopK {
                output: TopKOutput::Values,
                ..
            } => "topk_values",
            Op::TopK {
                output: TopKOutput::Indices,
                ..
            } => "topk_indices",
            Op::CumSum { .. } => "cumsum",
            Op::Scan { .. } => "linear_scan",
            Op::RandomFeatures { .. } => "random_features",
            Op::Mask { .. } => "mask",
            Op::Attention(a) if a.block.is_some() => "block_sparse_attention",
            Op::Attention(_) => "attention",
            Op::Moba(_) => "moba_attention",
            Op::Lsh(_) => "lsh_attention",
            Op::Routing(_) => "routing_attention",
            Op::LinearAttention(_) => "linear_attention",
            Op::MoeDispatch(_) => "moe_dispatch",
        }
    }

    /// Source ops have no operands and carry their result type themselves.
    pub fn is_source(&self) -> bool {
        matches!(
            self,
            Op::Input { .. }
                | Op::Param { .. }
                | Op::Const { .. }
                | Op::Iota { .. }
                | Op::Mask { .. }
                | Op::RandomFeatures { .. }
        )
    }

    /// Number of operands, or `None` when variadic (`concat`).
    pub fn arity(&self) -> Option<usize> {
        Some(match self {
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Const { .. }
            | Op::Iota { .. }
            | Op::Mask { .. }
            | Op::RandomFeatures { .. } => 0,
            Op::Unary(_)
            | Op::Cast { .. }
            | Op::Reduce { .. }
            | Op::Softmax { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Broadcast { .. }
            | Op::Slice { .. }
            | Op::Rope { .. }
            | Op::TopK { .. }
            | Op::CumSum { .. } => 1,
            Op::Binary(_)
            | Op::Compare(_)
            | Op::RmsNorm { .. }
            | Op::MatMul
            | Op::Gather { .. }
            | Op::Scan { .. }
            | Op::Embedding => 2,
            Op::Select
            | Op::LayerNorm { .. }
            | Op::ScatterAdd { .. }
            | Op::Moba(_)
            | Op::Lsh(_)
            | Op::Routing(_) => 3,
            Op::Attention(a) => 3 + a.bias as usize + a.segments as usize + a.listed as usize,
            Op::LinearAttention(l) => 3 + (l.decay != Decay::None) as usize,
            Op::MoeDispatch(m) => m.arity(),
            Op::Concat { .. } => return None,
        })
    }
}
