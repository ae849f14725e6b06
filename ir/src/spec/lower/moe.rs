//! A mixture of experts in the reference implementation's dense-gated form: every
//! expert applied to every token, `y = Σ_e gate[:, e] · FFN_e(x)`, with a gate that is
//! zero for the experts a token was not routed to. The router is written as the
//! papers do — scores, top-k, a one-hot of the chosen indices, capacity by a running
//! count — so that the gate's sparsity is a fact the optimizer can prove (from the
//! top-k) and turn into `moe_dispatch`, which computes only the selected pairs.

use super::Lowerer;
use crate::spec::{Ffn, FfnKind, Moe, Router, Scoring};
use crate::{
    BinaryOp, CmpOp, DType, Dim, IrError, NodeId, Op, ReduceKind, TensorType, TopKOutput, UnaryOp,
};

type R<T> = Result<T, IrError>;

impl Lowerer<'_> {
    /// `x [batch, seq, d_model]` through the mixture `m` of layer `prefix`.
    pub(super) fn moe(&mut self, f: &Ffn, m: &Moe, x: NodeId, prefix: &str) -> R<NodeId> {
        let (batch, seq, d) = (Dim::sym("batch"), Dim::sym("seq"), Dim::sym("d_model"));
        let tokens = self.spec.dim("batch")? * self.spec.dim("seq")?;
        let t = self.dim("tokens", tokens);
        let e = self.dim("experts", m.experts);
        let hidden = self.dim("ffn_hidden", f.hidden);
        let xt = self.reshape(x, &[&t, &d])?;
        let router = self.param(format!("{prefix}.router"), &[&d, &e])?;
        let logits = self.op(Op::MatMul, &[xt, router])?;
        let scores = match m.scoring {
            Scoring::Softmax => self.op(Op::Softmax { axis: 1 }, &[logits])?,
            Scoring::Sigmoid => self.unary(UnaryOp::Sigmoid, logits)?,
        };
        let gate = self.gate(m, scores, prefix, (&t, &e))?;
        let mut y = self.experts(m.expert_kind, xt, gate, prefix, (&t, &e, &d, &hidden))?;
        if let Some(s) = m.shared {
            let sh = self.dim("shared_hidden", s.hidden);
            let shared = format!("{prefix}.shared");
            let mut z = self.mlp(m.expert_kind, xt, &shared, &d, &sh)?;
            if s.gate {
                let one = Dim::Const(1);
                let w = self.param(format!("{shared}.gate"), &[&d, &one])?;
                let g = self.op(Op::MatMul, &[xt, w])?;
                let g = self.unary(UnaryOp::Sigmoid, g)?;
                z = self.bin(BinaryOp::Mul, g, z)?;
            }
            y = self.bin(BinaryOp::Add, y, z)?;
        }
        self.reshape(y, &[&batch, &seq, &d])
    }

    /// The routed gate `[T, E]`: each token's score on the experts it is routed to,
    /// zero elsewhere.
    fn gate(&mut self, m: &Moe, scores: NodeId, prefix: &str, (t, e): (&Dim, &Dim)) -> R<NodeId> {
        let mut gate = match m.router {
            Router::TopK { k } => {
                let select = if m.selection_bias {
                    // Selection only: the gate keeps the unbiased score.
                    let bias = self.param(format!("{prefix}.selection_bias"), &[e])?;
                    self.bin(BinaryOp::Add, scores, bias)?
                } else {
                    scores
                };
                let chosen = self.one_hot_top(select, k, (t, e))?;
                let mut gate = self.bin(BinaryOp::Mul, scores, chosen)?;
                if m.norm_topk_prob {
                    let sum = self.op(
                        Op::Reduce {
                            kind: ReduceKind::Sum,
                            axes: vec![1],
                            keep_dims: true,
                        },
                        &[gate],
                    )?;
                    gate = self.bin(BinaryOp::Div, gate, sum)?;
                }
                gate
            }
            Router::Switch { capacity } => {
                // Top-1, then each expert keeps its first `capacity` tokens: a token's
                // place in its expert's queue is the running count of the one-hot.
                // Counted in integers: a float count is inexact past 2^11 tokens in f16.
                let chosen = self.one_hot_top(scores, 1, (t, e))?;
                let count = self.op(Op::Cast { to: DType::I64 }, &[chosen])?;
                let place = self.op(Op::CumSum { axis: 0 }, &[count])?;
                let cap = self.b.constant(capacity as f64, DType::I64)?;
                let kept = self.op(Op::Compare(CmpOp::Le), &[place, cap])?;
                let kept = self.op(Op::Cast { to: self.dtype }, &[kept])?;
                let chosen = self.bin(BinaryOp::Mul, chosen, kept)?;
                self.bin(BinaryOp::Mul, scores, chosen)?
            }
            Router::ExpertChoice { capacity } => {
                // Each expert's top `capacity` tokens: the same top-k along tokens.
                let by_expert = self.op(Op::Transpose { perm: vec![1, 0] }, &[scores])?;
                let chosen = self.one_hot_top(by_expert, capacity, (e, t))?;
                let chosen = self.op(Op::Transpose { perm: vec![1, 0] }, &[chosen])?;
                self.bin(BinaryOp::Mul, scores, chosen)?
            }
        };
        if m.routed_scaling_factor != 1.0 {
            let s = self.scalar(m.routed_scaling_factor)?;
            gate = self.bin(BinaryOp::Mul, gate, s)?;
        }
        Ok(gate)
    }

    /// `[rows, cols]` 0/1: the `k` largest of each row of `x` (ties: the lower
    /// index), as `Σ_j (topk_indices(x)[:, j] == iota)`.
    fn one_hot_top(&mut self, x: NodeId, k: u64, (rows, cols): (&Dim, &Dim)) -> R<NodeId> {
        let (kd, one) = (Dim::Const(k), Dim::Const(1));
        let idx = self.op(
            Op::TopK {
                k,
                output: TopKOutput::Indices,
            },
            &[x],
        )?;
        let idx = self.reshape(idx, &[rows, &kd, &one])?;
        let ty = TensorType::new(self.shape(&[&one, &one, cols]), DType::I64);
        let iota = self.b.add(Op::Iota { axis: 2 }, &[], Some(ty))?;
        let hit = self.op(Op::Compare(CmpOp::Eq), &[idx, iota])?;
        let hit = self.op(Op::Cast { to: self.dtype }, &[hit])?;
        self.op(
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: vec![1],
                keep_dims: false,
            },
            &[hit],
        )
    }

    /// `Σ_e gate[:, e] · FFN_e(xt)` over stacked expert weights `[E, D, H]`,
    /// `[E, H, D]`: every expert on every token.
    fn experts(
        &mut self,
        kind: FfnKind,
        xt: NodeId,
        gate: NodeId,
        prefix: &str,
        (t, e, d, h): (&Dim, &Dim, &Dim, &Dim),
    ) -> R<NodeId> {
        let experts = format!("{prefix}.experts");
        let w_up = self.param(format!("{experts}.w_up"), &[e, d, h])?;
        let up = self.op(Op::MatMul, &[xt, w_up])?;
        let hidden = match kind {
            FfnKind::Swiglu => {
                let w_gate = self.param(format!("{experts}.w_gate"), &[e, d, h])?;
                let g = self.op(Op::MatMul, &[xt, w_gate])?;
                let g = self.unary(UnaryOp::Silu, g)?;
                self.bin(BinaryOp::Mul, g, up)?
            }
            other => self.unary(activation(other), up)?,
        };
        let w_down = self.param(format!("{experts}.w_down"), &[e, h, d])?;
        let out = self.op(Op::MatMul, &[hidden, w_down])?;
        let one = Dim::Const(1);
        let by_expert = self.op(Op::Transpose { perm: vec![1, 0] }, &[gate])?;
        let by_expert = self.reshape(by_expert, &[e, t, &one])?;
        let weighted = self.bin(BinaryOp::Mul, out, by_expert)?;
        self.op(
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: vec![0],
                keep_dims: false,
            },
            &[weighted],
        )
    }

    /// One bias-free MLP of `kind` with weights under `prefix`: a shared expert.
    fn mlp(&mut self, kind: FfnKind, x: NodeId, prefix: &str, d: &Dim, h: &Dim) -> R<NodeId> {
        let up = self.linear(x, prefix, "w_up", None, d, h)?;
        let hidden = match kind {
            FfnKind::Swiglu => {
                let g = self.linear(x, prefix, "w_gate", None, d, h)?;
                let g = self.unary(UnaryOp::Silu, g)?;
                self.bin(BinaryOp::Mul, g, up)?
            }
            other => self.unary(activation(other), up)?,
        };
        self.linear(hidden, prefix, "w_down", None, h, d)
    }
}

/// The activation of a non-gated MLP kind.
fn activation(kind: FfnKind) -> UnaryOp {
    match kind {
        FfnKind::Gelu => UnaryOp::Gelu,
        FfnKind::GeluTanh => UnaryOp::GeluTanh,
        _ => UnaryOp::Relu,
    }
}
