//! `linear_attention` as plain ops, per form: the normalizer as a column of ones
//! appended to `v` (its sums then ride through the same matmuls), the parallel form as
//! two matmuls over the whole sequence, the chunkwise form as batched matmuls per
//! chunk and a `linear_scan` passing the `Dk × Dv` state from chunk to chunk. What
//! stays is the recurrent form without a normalizer and with a scalar or gate decay,
//! which backends run as a loop over time ([`is_kernel_form`]).

use super::{reshape, sizes_of, slice};
use crate::{
    BinaryOp, DType, Decay, GraphBuilder, LinearAttention, LinearForm, MaskExpr, NodeId, Op,
    Result, Shape, TensorType, UnaryOp,
};

/// Whether a backend runs `l` as it is: the recurrent loop, unnormalized, with no
/// decay or one per step or channel.
pub fn is_kernel_form(l: &LinearAttention) -> bool {
    l.form == LinearForm::Recurrent && !l.normalize && l.decay != Decay::Head
}

pub(super) fn linear(b: &mut GraphBuilder, l: &LinearAttention, ops: &[NodeId]) -> Result<NodeId> {
    let (q, k, v) = (ops[0], ops[1], ops[2]);
    let s = sizes_of(b, q, "linear_attention")?;
    let dv = sizes_of(b, v, "linear_attention")?[3];
    let dtype = b.ty(q).dtype;
    let v1 = if l.normalize {
        let one = b.constant(1.0, dtype)?;
        let ones = broadcast(b, one, &[s[0], s[1], s[2], 1])?;
        b.op(Op::Concat { axis: 3 }, &[v, ones])?
    } else {
        v
    };
    // A fixed rate per head is a step decay that does not change along the sequence.
    let decay = match l.decay {
        Decay::None => None,
        Decay::Head => {
            let per_head = reshape(b, ops[3], &[1, s[1], 1])?;
            Some(broadcast(b, per_head, &s[..3])?)
        }
        Decay::Step | Decay::Gate => Some(ops[3]),
    };
    let kind = match l.decay {
        Decay::Head => Decay::Step,
        d => d,
    };
    let out = match l.form {
        LinearForm::Parallel if !l.causal => {
            let kt = b.op(
                Op::Transpose {
                    perm: vec![0, 1, 3, 2],
                },
                &[k],
            )?;
            let state = b.op(Op::MatMul, &[kt, v1])?;
            b.op(Op::MatMul, &[q, state])?
        }
        LinearForm::Parallel => chunkwise(b, kind, [q, k, v1], decay, s[2])?,
        LinearForm::Chunkwise { chunk } => chunkwise(b, kind, [q, k, v1], decay, chunk as usize)?,
        LinearForm::Recurrent => {
            let core = LinearAttention {
                decay: kind,
                normalize: false,
                ..*l
            };
            let mut operands = vec![q, k, v1];
            operands.extend(decay);
            b.op(Op::LinearAttention(core), &operands)?
        }
    };
    if !l.normalize {
        return Ok(out);
    }
    let num = slice(b, out, 3, 0, dv)?;
    let den = slice(b, out, 3, dv, dv + 1)?;
    b.op(Op::Binary(BinaryOp::Div), &[num, den])
}

/// Causal linear attention in chunks of `c` (dividing `N`): per chunk, the masked
/// (decayed) scores times `v`, plus the queries times the state left by the chunks
/// before, which a scan over the chunks' own states `kᵀ·v` carries forward.
fn chunkwise(
    b: &mut GraphBuilder,
    decay: Decay,
    [q, k, v]: [NodeId; 3],
    log_decay: Option<NodeId>,
    c: usize,
) -> Result<NodeId> {
    let s = sizes_of(b, q, "linear_attention")?;
    let (bs, h, n, dk) = (s[0], s[1], s[2], s[3]);
    let dv = sizes_of(b, v, "linear_attention")?[3];
    let dtype = b.ty(q).dtype;
    let nc = n / c;
    let qc = reshape(b, q, &[bs, h, nc, c, dk])?;
    let kc = reshape(b, k, &[bs, h, nc, c, dk])?;
    let vc = reshape(b, v, &[bs, h, nc, c, dv])?;
    let causal = b.add(
        Op::Mask {
            expr: MaskExpr::parse("k <= q").expect("a valid mask"),
        },
        &[],
        Some(TensorType::new(shape(&[c, c]), DType::Bool)),
    )?;
    let zero = b.constant(0.0, dtype)?;
    let ninf = b.constant(f64::NEG_INFINITY, dtype)?;
    let transpose = |b: &mut GraphBuilder, x| {
        b.op(
            Op::Transpose {
                perm: vec![0, 1, 2, 4, 3],
            },
            &[x],
        )
    };
    let mul = |b: &mut GraphBuilder, x, y| b.op(Op::Binary(BinaryOp::Mul), &[x, y]);
    let exp = |b: &mut GraphBuilder, x| b.op(Op::Unary(UnaryOp::Exp), &[x]);
    // Per chunk: queries and keys as the scores see them, queries as they read the
    // state (decayed from the chunk's start), keys as the state sees them (decayed to
    // the chunk's end), the decay of a whole chunk and the scores' own weights.
    let (q_in, k_in, q_state, k_state, chunk_decay, weights) = match (decay, log_decay) {
        (Decay::Gate, Some(ld)) => {
            let ld = reshape(b, ld, &[bs, h, nc, c, dk])?;
            let lc = b.op(Op::CumSum { axis: 3 }, &[ld])?;
            let up = exp(b, lc)?;
            let neg = b.op(Op::Unary(UnaryOp::Neg), &[lc])?;
            let down = exp(b, neg)?;
            let last = slice(b, lc, 3, c - 1, c)?;
            let to_end = b.op(Op::Binary(BinaryOp::Sub), &[last, lc])?;
            let to_end = exp(b, to_end)?;
            let (qg, kg, kw) = (mul(b, qc, up)?, mul(b, kc, down)?, mul(b, kc, to_end)?);
            let whole = exp(b, last)?;
            let whole = transpose(b, whole)?;
            let whole = broadcast(b, whole, &[bs, h, nc, dk, dv])?;
            (qg, kg, qg, kw, Some(whole), None)
        }
        (Decay::Step, Some(ld)) => {
            let ld = reshape(b, ld, &[bs, h, nc, c])?;
            let lc = b.op(Op::CumSum { axis: 3 }, &[ld])?;
            let rows = reshape(b, lc, &[bs, h, nc, c, 1])?;
            let cols = reshape(b, lc, &[bs, h, nc, 1, c])?;
            let diff = b.op(Op::Binary(BinaryOp::Sub), &[rows, cols])?;
            // Masked before the exponential, so no `exp` of a positive sum overflows.
            let diff = b.op(Op::Select, &[causal, diff, ninf])?;
            let weights = exp(b, diff)?;
            let last = slice(b, rows, 3, c - 1, c)?;
            let to_end = b.op(Op::Binary(BinaryOp::Sub), &[last, rows])?;
            let to_end = exp(b, to_end)?;
            let up = exp(b, rows)?;
            let (qd, kw) = (mul(b, qc, up)?, mul(b, kc, to_end)?);
            let whole = exp(b, last)?;
            let chunk = broadcast(b, whole, &[bs, h, nc, dk, dv])?;
            (qc, kc, qd, kw, Some(chunk), Some(weights))
        }
        _ => (qc, kc, qc, kc, None, None),
    };
    let kt = transpose(b, k_in)?;
    let scores = b.op(Op::MatMul, &[q_in, kt])?;
    let scores = match weights {
        Some(w) => mul(b, scores, w)?,
        None => b.op(Op::Select, &[causal, scores, zero])?,
    };
    let intra = b.op(Op::MatMul, &[scores, vc])?;
    let out = if nc == 1 {
        intra
    } else {
        let kt = transpose(b, k_state)?;
        let states = b.op(Op::MatMul, &[kt, vc])?;
        let running = match chunk_decay {
            Some(a) => b.op(Op::Scan { axis: 2 }, &[states, a])?,
            None => b.op(Op::CumSum { axis: 2 }, &[states])?,
        };
        let before = slice(b, running, 2, 0, nc - 1)?;
        let first = broadcast(b, zero, &[bs, h, 1, dk, dv])?;
        let before = b.op(Op::Concat { axis: 2 }, &[first, before])?;
        let inter = b.op(Op::MatMul, &[q_state, before])?;
        b.op(Op::Binary(BinaryOp::Add), &[intra, inter])?
    };
    reshape(b, out, &[bs, h, n, dv])
}

fn broadcast(b: &mut GraphBuilder, x: NodeId, sizes: &[usize]) -> Result<NodeId> {
    b.op(
        Op::Broadcast {
            shape: shape(sizes),
        },
        &[x],
    )
}

fn shape(sizes: &[usize]) -> Shape {
    super::shape(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expand::{expand, needs_expansion};
    use crate::interp::{eval, Precision};
    use crate::{random_bindings, Dims};

    /// Every form, decay and normalizer: the expansion computes what the op does.
    /// Queries and keys are positive where the normalizer divides by their scores,
    /// log decays negative.
    #[test]
    fn linear_expansion_agrees_with_the_op() {
        let forms = [
            LinearForm::Parallel,
            LinearForm::Chunkwise { chunk: 4 },
            LinearForm::Chunkwise { chunk: 16 },
            LinearForm::Recurrent,
        ];
        let decays = [Decay::None, Decay::Head, Decay::Step, Decay::Gate];
        for form in forms {
            for decay in decays {
                for normalize in [false, true] {
                    for causal in [true, false] {
                        let ok = causal || (form == LinearForm::Parallel && decay == Decay::None);
                        if ok {
                            check(LinearAttention {
                                causal,
                                decay,
                                normalize,
                                form,
                            });
                        }
                    }
                }
            }
        }
    }

    fn check(l: LinearAttention) {
        let (bs, h, n, dk, dv) = (2, 3, 16, 5, 4);
        let mut b = GraphBuilder::new("linear", Dims::new());
        let q = b.input("q", shape(&[bs, h, n, dk]), DType::F32).unwrap();
        let k = b.input("k", shape(&[bs, h, n, dk]), DType::F32).unwrap();
        let v = b.input("v", shape(&[bs, h, n, dv]), DType::F32).unwrap();
        let mut ops = vec![q, k, v];
        let decay_shape: &[usize] = match l.decay {
            Decay::None => &[],
            Decay::Head => &[h],
            Decay::Step => &[bs, h, n],
            Decay::Gate => &[bs, h, n, dk],
        };
        if l.decay != Decay::None {
            ops.push(b.input("ld", shape(decay_shape), DType::F32).unwrap());
        }
        let o = b.op(Op::LinearAttention(l), &ops).unwrap();
        b.output("o", o).unwrap();
        let g = b.finish().unwrap();
        let e = expand(&g).unwrap();
        assert!(!needs_expansion(&e), "{l:?}");
        let mut bind = random_bindings(&g, 5);
        for (name, t) in bind.iter_mut() {
            match name.as_str() {
                "q" | "k" if l.normalize => t.data.iter_mut().for_each(|x| *x = x.abs() + 0.1),
                "ld" => t.data.iter_mut().for_each(|x| *x = -0.3 * x.abs()),
                _ => {}
            }
        }
        let want = eval(&g, &bind, Precision::F64).unwrap();
        let got = eval(&e, &bind, Precision::F64).unwrap();
        let err = want[0].max_abs_diff(&got[0]);
        assert!(err < 1e-10, "{l:?}: {err}");
    }
}
