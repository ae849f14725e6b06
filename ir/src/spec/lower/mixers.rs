//! Token mixers other than softmax attention, each in its paper's quadratic form:
//! kernel attention `φ(q)·φ(k)ᵀ·v` with its normalizer, Linformer's projected keys and
//! values, RetNet's decay matrix, GLA's gated scores `(q ⊙ b)·(k / b)ᵀ`, Mamba2's SSD
//! `(C·Bᵀ ⊙ L)·x`, axial attention over the rows and columns of a grid. The linear,
//! chunkwise and recurrent forms are the optimizer's to find.

use super::Lowerer;
use crate::spec::{Attention, FeatureMap, Mixer, Position};
use crate::{
    BinaryOp, DType, Dim, IrError, MaskExpr, NodeId, Op, ReduceKind, Shape, TensorType, UnaryOp,
};

type R<T> = Result<T, IrError>;

impl Lowerer<'_> {
    pub(super) fn mixer(&mut self, a: &Attention, m: Mixer, x: NodeId, prefix: &str) -> R<NodeId> {
        match m {
            Mixer::Kernel {
                feature_map,
                causal,
            } => {
                let (q, k, v, q_dim) = self.heads_qkv(a, x, prefix)?;
                let features = match feature_map {
                    FeatureMap::Performer { features, seed } => {
                        // One draw per layer, shared by queries and keys.
                        let seed = seed.wrapping_add(self.layer_index);
                        let head_dim = Dim::Const(a.head_dim);
                        let shape = Shape(vec![Dim::Const(features), head_dim]);
                        Some(self.b.add(
                            Op::RandomFeatures { seed },
                            &[],
                            Some(TensorType::new(shape, self.dtype)),
                        )?)
                    }
                    _ => None,
                };
                let fq = self.feature_map(feature_map, features, a.scale, q)?;
                let fk = self.feature_map(feature_map, features, a.scale, k)?;
                let o = self.kernel_attention(fq, fk, v, causal)?;
                self.merge_heads(o, a, &q_dim, prefix)
            }
            Mixer::Linformer { k: kp } => {
                let (q, k, v, q_dim) = self.heads_qkv(a, x, prefix)?;
                // E, F: [k, seq], applied to every head's keys and values.
                let (proj, seq) = (Dim::Const(kp), Dim::sym("seq"));
                let e = self.param(format!("{prefix}.proj_k"), &[&proj, &seq])?;
                let f = self.param(format!("{prefix}.proj_v"), &[&proj, &seq])?;
                let k = self.op(Op::MatMul, &[e, k])?;
                let v = self.op(Op::MatMul, &[f, v])?;
                let heads = self.dim("heads", a.heads);
                self.attend(a, q, k, v, &heads, &q_dim, prefix)
            }
            Mixer::Retnet => {
                let (q, k, v, q_dim) = self.heads_qkv(a, x, prefix)?;
                let scale = self.scalar(a.scale)?;
                let k = self.bin(BinaryOp::Mul, k, scale)?;
                let decay = self.retnet_decay(a.heads)?;
                let s = self.scores(q, k)?;
                let s = self.bin(BinaryOp::Mul, s, decay)?;
                let o = self.op(Op::MatMul, &[s, v])?;
                self.gated_output(o, a, x, &q_dim, prefix, "wg")
            }
            Mixer::Gla { gate_rank } => {
                let (q, k, v, q_dim) = self.heads_qkv(a, x, prefix)?;
                let scale = self.scalar(a.scale)?;
                let q = self.bin(BinaryOp::Mul, q, scale)?;
                // log α = log σ(x·W₁·W₂ + b) / 16, per head and key channel.
                let d = Dim::sym("d_model");
                let rank = Dim::Const(gate_rank);
                let g = self.linear(x, prefix, "wg_a", None, &d, &rank)?;
                let g = self.linear(g, prefix, "wg_b", Some("bg"), &rank, &q_dim)?;
                let g = self.unary(UnaryOp::Sigmoid, g)?;
                let g = self.unary(UnaryOp::Log, g)?;
                let tau = self.scalar(1.0 / 16.0)?;
                let g = self.bin(BinaryOp::Mul, g, tau)?;
                let heads = self.dim("heads", a.heads);
                let head_dim = self.dim("head_dim", a.head_dim);
                let g = self.split_heads(g, &heads, &head_dim)?;
                // b_i = exp(Σ_{t≤i} log α_t): scores (q ⊙ b)·(k / b)ᵀ, causal.
                let lc = self.op(Op::CumSum { axis: 2 }, &[g])?;
                let up = self.unary(UnaryOp::Exp, lc)?;
                let neg = self.unary(UnaryOp::Neg, lc)?;
                let down = self.unary(UnaryOp::Exp, neg)?;
                let qb = self.bin(BinaryOp::Mul, q, up)?;
                let kb = self.bin(BinaryOp::Mul, k, down)?;
                let s = self.scores(qb, kb)?;
                let s = self.causal_zero(s)?;
                let o = self.op(Op::MatMul, &[s, v])?;
                self.gated_output(o, a, x, &q_dim, prefix, "wr")
            }
            Mixer::Mamba2 {
                state,
                conv,
                groups,
                ..
            } => self.mamba2(a, state, conv, groups, x, prefix),
            Mixer::Mamba {
                state,
                expand,
                conv,
                conv_bias,
                dt_rank,
            } => self.mamba(state, expand, (conv, conv_bias), dt_rank, x, prefix),
            Mixer::Axial { rows } => self.axial(a, rows, x, prefix),
        }
    }

    /// Queries, keys and values split into heads (rotated when the model uses RoPE),
    /// keys and values repeated to every query head; and the width of all heads.
    fn heads_qkv(
        &mut self,
        a: &Attention,
        x: NodeId,
        prefix: &str,
    ) -> R<(NodeId, NodeId, NodeId, Dim)> {
        let (q, mut k, mut v) = self.project_heads(a, x, prefix)?;
        if a.heads != a.kv_heads {
            let kv_heads = self.dim("kv_heads", a.kv_heads);
            let head_dim = self.dim("head_dim", a.head_dim);
            k = self.repeat_kv(k, a, &kv_heads, &head_dim)?;
            v = self.repeat_kv(v, a, &kv_heads, &head_dim)?;
        }
        let q_dim = self.width("q_dim", a.heads * a.head_dim);
        Ok((q, k, v, q_dim))
    }

    /// Queries `[batch, heads, seq, head_dim]`, keys and values `[batch, kv_heads,
    /// seq, head_dim]` projected from `x` (with biases when the spec has them),
    /// rotated when the model uses RoPE.
    pub(super) fn project_heads(
        &mut self,
        a: &Attention,
        x: NodeId,
        prefix: &str,
    ) -> R<(NodeId, NodeId, NodeId)> {
        let d = Dim::sym("d_model");
        let heads = self.dim("heads", a.heads);
        let kv_heads = self.dim("kv_heads", a.kv_heads);
        let head_dim = self.dim("head_dim", a.head_dim);
        let q_dim = self.width("q_dim", a.heads * a.head_dim);
        let kv_dim = self.width("kv_dim", a.kv_heads * a.head_dim);
        let bias = |name: &'static str| a.qkv_bias.then_some(name);
        let q = self.linear(x, prefix, "wq", bias("bq"), &d, &q_dim)?;
        let k = self.linear(x, prefix, "wk", bias("bk"), &d, &kv_dim)?;
        let v = self.linear(x, prefix, "wv", bias("bv"), &d, &kv_dim)?;
        // [batch, seq, heads·head_dim] -> [batch, heads, seq, head_dim]
        let mut q = self.split_heads(q, &heads, &head_dim)?;
        let mut k = self.split_heads(k, &kv_heads, &head_dim)?;
        let v = self.split_heads(v, &kv_heads, &head_dim)?;
        if self.spec.position == Position::Rope {
            q = self.rope(q)?;
            k = self.rope(k)?;
        }
        Ok((q, k, v))
    }

    /// `d_model` when `width` is the model width, else a dimension named `name`.
    pub(super) fn width(&mut self, name: &str, width: u64) -> Dim {
        if width == self.spec.d_model {
            Dim::sym("d_model")
        } else {
            self.dim(name, width)
        }
    }

    /// φ(x) over the last axis of `x [B, H, N, D]`.
    fn feature_map(
        &mut self,
        map: FeatureMap,
        omega: Option<NodeId>,
        scale: f64,
        x: NodeId,
    ) -> R<NodeId> {
        match map {
            FeatureMap::Elu => {
                let e = self.unary(UnaryOp::Elu, x)?;
                let one = self.scalar(1.0)?;
                self.bin(BinaryOp::Add, e, one)
            }
            FeatureMap::Relu => self.unary(UnaryOp::Relu, x),
            FeatureMap::Identity => Ok(x),
            FeatureMap::Performer { .. } => {
                let omega = omega.ok_or_else(|| self.error("the Performer needs its features"))?;
                crate::favor_features(&mut self.b, x, omega, scale)
            }
        }
    }

    fn error(&self, message: &str) -> IrError {
        IrError::Spec {
            layer: self.b.layer().map(str::to_string),
            message: message.into(),
        }
    }

    /// `q·kᵀ` over `[B, H, N, ·]`.
    fn scores(&mut self, q: NodeId, k: NodeId) -> R<NodeId> {
        let kt = self.op(
            Op::Transpose {
                perm: vec![0, 1, 3, 2],
            },
            &[k],
        )?;
        self.op(Op::MatMul, &[q, kt])
    }

    /// The causal mask `k <= q` over `[seq, seq]`.
    fn causal_mask(&mut self) -> R<NodeId> {
        let seq = Dim::sym("seq");
        self.b.add(
            Op::Mask {
                expr: MaskExpr::parse("k <= q").expect("a valid mask"),
            },
            &[],
            Some(TensorType::new(Shape(vec![seq.clone(), seq]), DType::Bool)),
        )
    }

    /// Scores with the keys after each query zeroed.
    fn causal_zero(&mut self, s: NodeId) -> R<NodeId> {
        let m = self.causal_mask()?;
        let zero = self.scalar(0.0)?;
        self.op(Op::Select, &[m, s, zero])
    }

    /// `exp(e)` where `k <= q`, 0 elsewhere, masked before the exponential.
    fn causal_exp(&mut self, e: NodeId) -> R<NodeId> {
        let m = self.causal_mask()?;
        let ninf = self.scalar(f64::NEG_INFINITY)?;
        let e = self.op(Op::Select, &[m, e, ninf])?;
        self.unary(UnaryOp::Exp, e)
    }

    /// `(φq·φkᵀ, causal)·v / Σ_k (φq·φkᵀ, causal)`.
    fn kernel_attention(&mut self, fq: NodeId, fk: NodeId, v: NodeId, causal: bool) -> R<NodeId> {
        let mut s = self.scores(fq, fk)?;
        if causal {
            s = self.causal_zero(s)?;
        }
        let num = self.op(Op::MatMul, &[s, v])?;
        let den = self.op(
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: vec![3],
                keep_dims: true,
            },
            &[s],
        )?;
        self.bin(BinaryOp::Div, num, den)
    }

    /// RetNet's `D[h, i, j] = γ_h^(i−j)` for `j ≤ i`, else 0, with `γ_h = 1 − 2^(−5−h)`:
    /// `[1, H, seq, seq]`.
    fn retnet_decay(&mut self, n_heads: u64) -> R<NodeId> {
        let (seq, one) = (Dim::sym("seq"), Dim::Const(1));
        let heads = self.dim("heads", n_heads);
        let ty = |s: Shape| Some(TensorType::new(s, DType::I64));
        let h = self
            .b
            .add(Op::Iota { axis: 0 }, &[], ty(self.shape(&[&heads])))?;
        let h = self.op(Op::Cast { to: self.dtype }, &[h])?;
        let five = self.scalar(5.0)?;
        let e = self.bin(BinaryOp::Add, h, five)?;
        let e = self.unary(UnaryOp::Neg, e)?;
        let two = self.scalar(2.0)?;
        let p = self.bin(BinaryOp::Pow, two, e)?;
        let c1 = self.scalar(1.0)?;
        let gamma = self.bin(BinaryOp::Sub, c1, p)?;
        let log_gamma = self.unary(UnaryOp::Log, gamma)?;
        let log_gamma = self.reshape(log_gamma, &[&one, &heads, &one, &one])?;
        let qi = self
            .b
            .add(Op::Iota { axis: 0 }, &[], ty(self.shape(&[&seq, &seq])))?;
        let ki = self
            .b
            .add(Op::Iota { axis: 1 }, &[], ty(self.shape(&[&seq, &seq])))?;
        let rel = self.bin(BinaryOp::Sub, qi, ki)?;
        let rel = self.op(Op::Cast { to: self.dtype }, &[rel])?;
        let e = self.bin(BinaryOp::Mul, rel, log_gamma)?;
        self.causal_exp(e)
    }

    /// A per-head RMS norm of `o [B, H, N, D]`, heads joined, a swish gate
    /// `silu(x·W_gate)` and the output projection `wo` (RetNet, GLA).
    fn gated_output(
        &mut self,
        o: NodeId,
        a: &Attention,
        x: NodeId,
        q_dim: &Dim,
        prefix: &str,
        gate: &str,
    ) -> R<NodeId> {
        let head_dim = self.dim("head_dim", a.head_dim);
        let gamma = self.param(format!("{prefix}.head_norm.weight"), &[&head_dim])?;
        let eps = self.spec.norm_eps;
        let o = self.op(Op::RmsNorm { eps }, &[o, gamma])?;
        let o = self.join_heads(o, q_dim)?;
        let d = Dim::sym("d_model");
        let g = self.linear(x, prefix, gate, None, &d, q_dim)?;
        let g = self.unary(UnaryOp::Silu, g)?;
        let o = self.bin(BinaryOp::Mul, o, g)?;
        let out_bias = a.out_bias.then_some("bo");
        self.linear(o, prefix, "wo", out_bias, q_dim, &d)
    }

    /// Mamba2's mixer with SSD in its quadratic (dual) form: `y = (C·Bᵀ ⊙ L)·(x·Δ) +
    /// D·x` with `L[i, j] = exp(Σ_{t=j+1..i} Δ_t·A)` for `j ≤ i`, per head; `B`, `C`
    /// shared by the `heads / groups` heads of each group, the gated RMS norm
    /// `norm(y ⊙ silu(z))` and the output projection. With `conv`, `x`, `B` and `C`
    /// first go through the causal depthwise convolution (Mamba2's `conv1d` over the
    /// concatenated `xBC` channels, split per part: `conv_x`, `conv_b`, `conv_c`);
    /// without, straight to `silu`.
    fn mamba2(
        &mut self,
        a: &Attention,
        state: u64,
        conv: Option<(u64, bool)>,
        groups: u64,
        x: NodeId,
        prefix: &str,
    ) -> R<NodeId> {
        let (batch, seq, d, one) = (
            Dim::sym("batch"),
            Dim::sym("seq"),
            Dim::sym("d_model"),
            Dim::Const(1),
        );
        let heads = self.dim("heads", a.heads);
        let head_dim = self.dim("head_dim", a.head_dim);
        let inner = self.width("d_inner", a.heads * a.head_dim);
        let n = self.dim("state_size", state);
        let gn = if groups == 1 {
            n.clone()
        } else {
            self.dim("groups_state", groups * state)
        };
        let z = self.linear(x, prefix, "w_z", None, &d, &inner)?;
        let mut xs = self.linear(x, prefix, "w_x", None, &d, &inner)?;
        let mut bm = self.linear(x, prefix, "w_b", None, &d, &gn)?;
        let mut cm = self.linear(x, prefix, "w_c", None, &d, &gn)?;
        let dt = self.linear(x, prefix, "w_dt", Some("dt_bias"), &d, &heads)?;
        if let Some((k, bias)) = conv {
            xs = self.causal_conv(xs, k, bias, &inner, prefix, "conv_x")?;
            bm = self.causal_conv(bm, k, bias, &gn, prefix, "conv_b")?;
            cm = self.causal_conv(cm, k, bias, &gn, prefix, "conv_c")?;
        }
        let xs = self.unary(UnaryOp::Silu, xs)?;
        let bm = self.unary(UnaryOp::Silu, bm)?;
        let cm = self.unary(UnaryOp::Silu, cm)?;
        // Δ = softplus(dt) = log(1 + exp(dt)); A = −exp(A_log).
        let dt = self.unary(UnaryOp::Exp, dt)?;
        let c1 = self.scalar(1.0)?;
        let dt = self.bin(BinaryOp::Add, dt, c1)?;
        let dt = self.unary(UnaryOp::Log, dt)?;
        let a_log = self.param(format!("{prefix}.A_log"), &[&heads])?;
        let a_neg = self.unary(UnaryOp::Exp, a_log)?;
        let a_neg = self.unary(UnaryOp::Neg, a_neg)?;
        let log_decay = self.bin(BinaryOp::Mul, dt, a_neg)?;
        let log_decay = self.op(
            Op::Transpose {
                perm: vec![0, 2, 1],
            },
            &[log_decay],
        )?;
        let xh = self.split_heads(xs, &heads, &head_dim)?;
        let dt_h = self.op(
            Op::Transpose {
                perm: vec![0, 2, 1],
            },
            &[dt],
        )?;
        let dt_h = self.reshape(dt_h, &[&batch, &heads, &seq, &one])?;
        let xd = self.bin(BinaryOp::Mul, xh, dt_h)?;
        let shared = |l: &mut Self, t: NodeId| -> R<NodeId> {
            if groups == 1 {
                let t = l.reshape(t, &[&batch, &one, &seq, &n])?;
                return l.op(
                    Op::Broadcast {
                        shape: l.shape(&[&batch, &heads, &seq, &n]),
                    },
                    &[t],
                );
            }
            // Group g serves heads g·(H/G) .. (g+1)·(H/G) (repeat_interleave).
            let g = Dim::Const(groups);
            let per = Dim::Const(a.heads / groups);
            let t = l.reshape(t, &[&batch, &seq, &g, &n])?;
            let t = l.op(
                Op::Transpose {
                    perm: vec![0, 2, 1, 3],
                },
                &[t],
            )?;
            let t = l.reshape(t, &[&batch, &g, &one, &seq, &n])?;
            let t = l.op(
                Op::Broadcast {
                    shape: l.shape(&[&batch, &g, &per, &seq, &n]),
                },
                &[t],
            )?;
            l.reshape(t, &[&batch, &heads, &seq, &n])
        };
        let bh = shared(self, bm)?;
        let ch = shared(self, cm)?;
        // L = exp(segsum(log a)), causal.
        let lc = self.op(Op::CumSum { axis: 2 }, &[log_decay])?;
        let rows = self.reshape(lc, &[&batch, &heads, &seq, &one])?;
        let cols = self.reshape(lc, &[&batch, &heads, &one, &seq])?;
        let seg = self.bin(BinaryOp::Sub, rows, cols)?;
        let l = self.causal_exp(seg)?;
        let s = self.scores(ch, bh)?;
        let s = self.bin(BinaryOp::Mul, s, l)?;
        let y = self.op(Op::MatMul, &[s, xd])?;
        let skip = self.param(format!("{prefix}.D"), &[&heads])?;
        let skip = self.reshape(skip, &[&one, &heads, &one, &one])?;
        let skip = self.bin(BinaryOp::Mul, xh, skip)?;
        let y = self.bin(BinaryOp::Add, y, skip)?;
        let y = self.join_heads(y, &inner)?;
        let gate = self.unary(UnaryOp::Silu, z)?;
        let y = self.bin(BinaryOp::Mul, y, gate)?;
        let gamma = self.param(format!("{prefix}.norm.weight"), &[&inner])?;
        let eps = self.spec.norm_eps;
        let y = self.op(Op::RmsNorm { eps }, &[y, gamma])?;
        self.linear(y, prefix, "w_out", None, &inner, &d)
    }

    /// The causal depthwise convolution of `x [batch, seq, c]` along the sequence:
    /// `out[t] = Σ_j w[j]·x[t − (K−1) + j] (+ b)`, zeros before the first step
    /// (PyTorch's `Conv1d(groups = c, padding = K − 1)` cut to `seq`). Params
    /// `{name} [K, c]` and `{name}_bias [c]`; written as the sum of `K` shifted
    /// copies of the zero-padded input.
    fn causal_conv(
        &mut self,
        x: NodeId,
        k: u64,
        bias: bool,
        c: &Dim,
        prefix: &str,
        name: &str,
    ) -> R<NodeId> {
        let (batch, seq) = (Dim::sym("batch"), Dim::sym("seq"));
        let n = self.spec.dims.get("seq").copied().unwrap_or(0);
        let kd = Dim::Const(k);
        let w = self.param(format!("{prefix}.{name}"), &[&kd, c])?;
        let padded = if k > 1 {
            let zero = self.scalar(0.0)?;
            let pad = Dim::Const(k - 1);
            let zeros = self.op(
                Op::Broadcast {
                    shape: self.shape(&[&batch, &pad, c]),
                },
                &[zero],
            )?;
            self.op(Op::Concat { axis: 1 }, &[zeros, x])?
        } else {
            x
        };
        let mut acc: Option<NodeId> = None;
        for j in 0..k {
            let shifted = if k > 1 {
                self.op(
                    Op::Slice {
                        axis: 1,
                        start: Dim::Const(j),
                        end: Dim::Const(j + n),
                    },
                    &[padded],
                )?
            } else {
                padded
            };
            let wj = self.op(
                Op::Slice {
                    axis: 0,
                    start: Dim::Const(j),
                    end: Dim::Const(j + 1),
                },
                &[w],
            )?;
            let wj = self.reshape(wj, &[c])?;
            let term = self.bin(BinaryOp::Mul, shifted, wj)?;
            acc = Some(match acc {
                None => term,
                Some(a) => self.bin(BinaryOp::Add, a, term)?,
            });
        }
        let mut y = acc.expect("a kernel of at least one tap");
        if bias {
            let b = self.param(format!("{prefix}.{name}_bias"), &[c])?;
            y = self.bin(BinaryOp::Add, y, b)?;
        }
        // The slices are sized by number: name the sequence axis again.
        self.reshape(y, &[&batch, &seq, c])
    }

    /// Mamba-1's selective scan as Jamba uses it (`JambaMambaMixer`): `x, z` from
    /// `in_proj` (`w_x`, `w_z`); `x` through the causal depthwise convolution and
    /// `silu`; `x_proj` gives `Δ` of rank `dt_rank`, `B` and `C` (`w_dt_in`, `w_b`,
    /// `w_c`), each RMS-normed (`dt_norm`, `b_norm`, `c_norm`); `Δ =
    /// softplus(Δ·dt_proj + dt_bias)`; then per channel `c` and state `n` the
    /// recurrence `h_t = exp(Δ_t·A)·h_{t−1} + Δ_t·B_t·x_t` with `A = −exp(A_log)`
    /// (a linear scan along the sequence), `y_t = h_t·C_t + D·x_t`, gated by
    /// `silu(z)` and projected out (`w_out`).
    fn mamba(
        &mut self,
        state: u64,
        expand: u64,
        conv: (u64, bool),
        dt_rank: u64,
        x: NodeId,
        prefix: &str,
    ) -> R<NodeId> {
        let (batch, seq, d, one) = (
            Dim::sym("batch"),
            Dim::sym("seq"),
            Dim::sym("d_model"),
            Dim::Const(1),
        );
        let inner = self.width("d_inner", expand * self.spec.d_model);
        let n = self.dim("state_size", state);
        let r = self.dim("dt_rank", dt_rank);
        let eps = self.spec.norm_eps;
        let xs = self.linear(x, prefix, "w_x", None, &d, &inner)?;
        let z = self.linear(x, prefix, "w_z", None, &d, &inner)?;
        let xs = self.causal_conv(xs, conv.0, conv.1, &inner, prefix, "conv_x")?;
        let xs = self.unary(UnaryOp::Silu, xs)?;
        let norm = |l: &mut Self, t: NodeId, name: &str, w: &Dim| -> R<NodeId> {
            let g = l.param(format!("{prefix}.{name}.weight"), &[w])?;
            l.op(Op::RmsNorm { eps }, &[t, g])
        };
        let dt = self.linear(xs, prefix, "w_dt_in", None, &inner, &r)?;
        let dt = norm(self, dt, "dt_norm", &r)?;
        let bm = self.linear(xs, prefix, "w_b", None, &inner, &n)?;
        let bm = norm(self, bm, "b_norm", &n)?;
        let cm = self.linear(xs, prefix, "w_c", None, &inner, &n)?;
        let cm = norm(self, cm, "c_norm", &n)?;
        // Δ = softplus(dt·W + b) = log(1 + exp(·)), [B, N, inner].
        let dt = self.linear(dt, prefix, "w_dt", Some("dt_bias"), &r, &inner)?;
        let dt = self.unary(UnaryOp::Exp, dt)?;
        let c1 = self.scalar(1.0)?;
        let dt = self.bin(BinaryOp::Add, dt, c1)?;
        let dt = self.unary(UnaryOp::Log, dt)?;
        // exp(Δ·A) and Δ·B·x over [B, N, inner, state].
        let a_log = self.param(format!("{prefix}.A_log"), &[&inner, &n])?;
        let a_neg = self.unary(UnaryOp::Exp, a_log)?;
        let a_neg = self.unary(UnaryOp::Neg, a_neg)?;
        let dt4 = self.reshape(dt, &[&batch, &seq, &inner, &one])?;
        let decay = self.bin(BinaryOp::Mul, dt4, a_neg)?;
        let decay = self.unary(UnaryOp::Exp, decay)?;
        let dx = self.bin(BinaryOp::Mul, dt, xs)?;
        let dx = self.reshape(dx, &[&batch, &seq, &inner, &one])?;
        let b4 = self.reshape(bm, &[&batch, &seq, &one, &n])?;
        let input = self.bin(BinaryOp::Mul, dx, b4)?;
        let h = self.op(Op::Scan { axis: 1 }, &[input, decay])?;
        // y = h·C per channel: [B, N, inner, state]·[B, N, state, 1].
        let c4 = self.reshape(cm, &[&batch, &seq, &n, &one])?;
        let y = self.op(Op::MatMul, &[h, c4])?;
        let y = self.reshape(y, &[&batch, &seq, &inner])?;
        let skip = self.param(format!("{prefix}.D"), &[&inner])?;
        let skip = self.bin(BinaryOp::Mul, xs, skip)?;
        let y = self.bin(BinaryOp::Add, y, skip)?;
        let gate = self.unary(UnaryOp::Silu, z)?;
        let y = self.bin(BinaryOp::Mul, y, gate)?;
        self.linear(y, prefix, "w_out", None, &inner, &d)
    }

    /// Axial attention (Ho et al., 2019) over the sequence read as a `rows × cols`
    /// grid: full attention along each row, and along each column, summed. Each axis
    /// is a batch of short sequences: the grid is transposed to put the axis last and
    /// the other axis is folded into the batch, exactly as written by hand.
    fn axial(&mut self, a: &Attention, rows: u64, x: NodeId, prefix: &str) -> R<NodeId> {
        let batch = self.spec.dims.get("batch").copied().unwrap_or(1);
        let seq = self.spec.dims.get("seq").copied().unwrap_or(0);
        let cols = seq / rows;
        let d = Dim::sym("d_model");
        let (r, c) = (self.dim("axial_rows", rows), self.dim("axial_cols", cols));
        let b = Dim::sym("batch");
        // [B, seq, d] -> [B, rows, cols, d]
        let grid = self.reshape(x, &[&b, &r, &c, &d])?;
        let along_rows =
            self.axis_attention(a, grid, batch * rows, cols, &format!("{prefix}.row"))?;
        let along_rows = self.reshape(along_rows, &[&b, &r, &c, &d])?;
        let t = self.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[grid],
        )?;
        let along_cols = self.axis_attention(a, t, batch * cols, rows, &format!("{prefix}.col"))?;
        let along_cols = self.reshape(along_cols, &[&b, &c, &r, &d])?;
        let along_cols = self.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[along_cols],
        )?;
        let sum = self.bin(BinaryOp::Add, along_rows, along_cols)?;
        let seq = Dim::sym("seq");
        self.reshape(sum, &[&b, &seq, &d])
    }

    /// Multi-head softmax attention over the last-but-one axis of `x [.., len, d]`,
    /// the leading axes folded into a batch of `outer`: `[outer, len, d]` out.
    fn axis_attention(
        &mut self,
        a: &Attention,
        x: NodeId,
        outer: u64,
        len: u64,
        prefix: &str,
    ) -> R<NodeId> {
        let (o, n, d) = (Dim::Const(outer), Dim::Const(len), Dim::sym("d_model"));
        let heads = self.dim("heads", a.heads);
        let head_dim = self.dim("head_dim", a.head_dim);
        let q_dim = self.width("q_dim", a.heads * a.head_dim);
        let x = self.reshape(x, &[&o, &n, &d])?;
        let split = |l: &mut Self, t: NodeId| -> R<NodeId> {
            let t = l.reshape(t, &[&o, &n, &heads, &head_dim])?;
            l.op(
                Op::Transpose {
                    perm: vec![0, 2, 1, 3],
                },
                &[t],
            )
        };
        let q = self.linear(x, prefix, "wq", None, &d, &q_dim)?;
        let k = self.linear(x, prefix, "wk", None, &d, &q_dim)?;
        let v = self.linear(x, prefix, "wv", None, &d, &q_dim)?;
        let (q, k, v) = (split(self, q)?, split(self, k)?, split(self, v)?);
        let s = self.scores(q, k)?;
        let scale = self.scalar(a.scale)?;
        let s = self.bin(BinaryOp::Mul, s, scale)?;
        let p = self.op(Op::Softmax { axis: 3 }, &[s])?;
        let y = self.op(Op::MatMul, &[p, v])?;
        let y = self.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[y],
        )?;
        let y = self.reshape(y, &[&o, &n, &q_dim])?;
        self.linear(y, prefix, "wo", None, &q_dim, &d)
    }
}
