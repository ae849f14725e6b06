//! `linear`: kernelized attention into linear attention, and its causal forms.
//!
//! `linear-attention` reads the quadratic form a paper writes — `(φq·φkᵀ)·v`,
//! optionally over the causal mask, weighted by a decay matrix (RetNet's `γ^(i−j)`,
//! Mamba2's `exp(segsum(log a))`) or with GLA's gates folded into queries and keys
//! (`(q ⊙ b)·(k / b)ᵀ`), and divided by its row sums when normalized — and offers
//! `linear_attention` in the parallel form: by associativity `(φq·φkᵀ)·v =
//! φq·(φkᵀ·v)` and `Σ_j φq·φk_j = φq·Σ_j φk_j`, so without a mask the `N × N` scores
//! never exist. The quadratic form stays in its class, so where `N` is small the cost
//! model keeps it (the reverse direction is the same equality).
//!
//! A causal `linear_attention` is also computed chunk by chunk or step by step:
//! `linear-chunkwise` (intra-chunk scores, the state passed between chunks, one
//! candidate per chunk size) and `linear-recurrent` (the state updated per step).
//! All are exact: sums regrouped, nothing dropped.

use super::{class_rule, found, scalar, sizes, Build, Candidates, Family, Rule};
use crate::{attr_in, Attn, Attr, EGraph, SourceKind};
use attnc_ir::{BinaryOp, Decay, LinearAttention, LinearForm, MaskExpr, Op, ReduceKind, UnaryOp};
use egg::{Id, Subst};

const L: Family = Family::Linear;

/// Chunk sizes offered for the chunkwise form (those dividing the sequence).
pub const CHUNKS: [u64; 4] = [16, 32, 64, 128];

#[rustfmt::skip]
pub fn rules() -> Vec<Rule> {
    vec![
        // (φq·φkᵀ ⊙ W)·v / Σ_k(φq·φkᵀ ⊙ W) == linear_attention(φq, φk, v; W) — W the
        // causal mask or a decay matrix; without them φq·(φkᵀ·v) / φq·Σφk.
        class_rule("linear-attention", L,
            "(φq·φkᵀ ⊙ decay)·v / rowsum == linear_attention(φq, φk, v; parallel)",
            |eg, id| found(!readings(eg, id).is_empty()), build),
        // linear_attention(causal; parallel) == linear_attention(causal; chunkwise C)
        class_rule("linear-chunkwise", L,
            "linear_attention(causal; parallel) == linear_attention(causal; chunkwise C)",
            |eg, id| found(!causal_parallel(eg, id).is_empty()), |eg, id, _| {
                let mut out = Vec::new();
                for (node, l, ops) in causal_parallel(eg, id) {
                    let Some(n) = sizes(eg, ops[0]).map(|s| s[2]) else { continue };
                    for chunk in CHUNKS.into_iter().filter(|c| n % c == 0 && *c < n) {
                        let form = LinearForm::Chunkwise { chunk };
                        out.extend(reform(eg, node, l, &ops, form));
                    }
                }
                out
            }),
        // linear_attention(parallel) == (φq·φkᵀ ⊙ decay)·v / rowsum — the same
        // identity read right to left, for graphs written with linear attention.
        class_rule("linear-quadratic", L,
            "linear_attention(φq, φk, v; parallel) == (φq·φkᵀ ⊙ decay)·v / rowsum",
            |eg, id| found(!parallel(eg, id).is_empty()), |eg, id, _| {
                parallel(eg, id)
                    .into_iter()
                    .filter_map(|(node, l, ops)| quadratic(eg, node, l, &ops))
                    .collect()
            }),
        // linear_attention(causal; parallel) == linear_attention(causal; recurrent)
        class_rule("linear-recurrent", L,
            "linear_attention(causal; parallel) == linear_attention(causal; recurrent)",
            |eg, id| found(!causal_parallel(eg, id).is_empty()), |eg, id, _| {
                causal_parallel(eg, id)
                    .into_iter()
                    .filter_map(|(node, l, ops)| reform(eg, node, l, &ops, LinearForm::Recurrent))
                    .collect()
            }),
    ]
}

// ---------------------------------------------------------------------------------
// Reading the quadratic form.

/// One reading of a score class: `φq·φkᵀ` with its causal mask or decay.
#[derive(Clone, Debug)]
struct Scores {
    q: Id,
    k: Id,
    causal: bool,
    decay: Decay,
    log_decay: Option<Id>,
}

/// A whole match: the node, its scores, `v`, whether normalized.
struct Reading<'e> {
    node: &'e Attn,
    scores: Scores,
    v: Id,
    normalize: bool,
}

fn binary(eg: &EGraph, node: &Attn, op: BinaryOp) -> Option<(Id, Id)> {
    match node {
        Attn::Binary([a, x, y]) if attr_in(eg, *a) == Some(&Attr::Binary(op)) => {
            Some((eg.find(*x), eg.find(*y)))
        }
        _ => None,
    }
}

/// Both orders of every `x op y` in class `id` (for commutative ops).
fn pairs(eg: &EGraph, id: Id, op: BinaryOp) -> Vec<(Id, Id)> {
    let mut out = Vec::new();
    for n in &eg[id].nodes {
        if let Some((x, y)) = binary(eg, n, op) {
            out.push((x, y));
            out.push((y, x));
        }
    }
    out
}

fn unary(eg: &EGraph, id: Id, op: UnaryOp) -> Vec<Id> {
    eg[id]
        .nodes
        .iter()
        .filter_map(|n| match n {
            Attn::Unary([a, x]) if attr_in(eg, *a) == Some(&Attr::Unary(op)) => Some(eg.find(*x)),
            _ => None,
        })
        .collect()
}

/// `(x, axis)` of every `cumsum(x, axis)` in class `id`.
fn cumsum(eg: &EGraph, id: Id) -> Vec<(Id, usize)> {
    eg[id]
        .nodes
        .iter()
        .filter_map(|n| match n {
            Attn::CumSum([a, x]) => match attr_in(eg, *a) {
                Some(Attr::Axis(axis)) => Some((eg.find(*x), *axis)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Whether class `m` is the causal mask `k <= q` over the scores' last two axes.
fn causal_mask(eg: &EGraph, m: Id, n: u64) -> bool {
    let causal = MaskExpr::parse("k <= q").expect("a valid mask");
    eg[m].nodes.iter().any(|node| match node {
        Attn::Source(s) => {
            let shape = eg.analysis.dims.resolve(&s.ty.shape).unwrap_or_default();
            matches!(&s.kind, SourceKind::Mask(e) if *e == causal)
                && shape.len() >= 2
                && shape[shape.len() - 2..] == [n, n]
                && shape[..shape.len() - 2].iter().all(|&d| d == 1)
        }
        _ => false,
    })
}

/// `x` of every `select(causal, x, fill)` in class `id`.
fn causal_select(eg: &EGraph, id: Id, n: u64, fill: f64) -> Vec<Id> {
    eg[id]
        .nodes
        .iter()
        .filter_map(|node| match node {
            Attn::Select([m, x, f])
                if causal_mask(eg, eg.find(*m), n) && scalar(eg, eg.find(*f)) == Some(fill) =>
            {
                Some(eg.find(*x))
            }
            _ => None,
        })
        .collect()
}

/// `(q, k)` of every `q·kᵀ` over `[B, H, N, D]` in class `id`.
fn products(eg: &EGraph, id: Id) -> Vec<(Id, Id)> {
    let mut out = Vec::new();
    for node in &eg[id].nodes {
        let Attn::MatMul([q, t]) = node else { continue };
        for tn in &eg[eg.find(*t)].nodes {
            if let Attn::Transpose([p, k]) = tn {
                if attr_in(eg, *p) == Some(&Attr::Perm(vec![0, 1, 3, 2])) {
                    let (q, k) = (eg.find(*q), eg.find(*k));
                    let (qs, ks) = (sizes(eg, q), sizes(eg, k));
                    if qs.as_ref().is_some_and(|s| s.len() == 4) && qs == ks {
                        out.push((q, k));
                    }
                }
            }
        }
    }
    out
}

/// GLA's gated product `(q ⊙ exp(L))·(k ⊙ exp(−L))ᵀ`, `L = cumsum(g)` along the
/// sequence: `(q, k, g)`.
fn gated_products(eg: &EGraph, id: Id) -> Vec<(Id, Id, Id)> {
    let mut out = Vec::new();
    for (qb, kb) in products(eg, id) {
        for (q, up) in pairs(eg, qb, BinaryOp::Mul) {
            for lc in unary(eg, up, UnaryOp::Exp) {
                for (k, down) in pairs(eg, kb, BinaryOp::Mul) {
                    let matches_down = unary(eg, down, UnaryOp::Exp)
                        .into_iter()
                        .any(|d| unary(eg, d, UnaryOp::Neg).contains(&lc));
                    for (g, axis) in cumsum(eg, lc) {
                        if matches_down
                            && axis == 2
                            && sizes(eg, g) == sizes(eg, q)
                            && sizes(eg, q) == sizes(eg, k)
                        {
                            out.push((q, k, g));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The log decay of a decay matrix `exp(select(causal, E, -inf))` in class `id`:
/// Mamba2's `E = L_i − L_j` with `L = cumsum(log a)` (`[B, H, N]`), or RetNet's `E =
/// (i − j)·log γ_h` (`log γ: [H]`).
fn decays(eg: &EGraph, id: Id, bhn: [u64; 3]) -> Vec<(Decay, Id)> {
    let [b, h, n] = bhn;
    let mut out = Vec::new();
    for sel in unary(eg, id, UnaryOp::Exp) {
        for e in causal_select(eg, sel, n, f64::NEG_INFINITY) {
            // Step: reshape(L, [B, H, N, 1]) − reshape(L, [B, H, 1, N]).
            for node in &eg[e].nodes {
                let Some((rows, cols)) = binary(eg, node, BinaryOp::Sub) else {
                    continue;
                };
                let (Some(r), Some(c)) = (
                    reshaped(eg, rows, &[b, h, n, 1]),
                    reshaped(eg, cols, &[b, h, 1, n]),
                ) else {
                    continue;
                };
                if r != c {
                    continue;
                }
                for (ld, axis) in cumsum(eg, r) {
                    if axis == 2 && sizes(eg, ld).as_deref() == Some(&[b, h, n][..]) {
                        out.push((Decay::Step, ld));
                    }
                }
            }
            // Head: cast(iota_q − iota_k) · reshape(log γ, [1, H, 1, 1]).
            for (rel, g) in pairs(eg, e, BinaryOp::Mul) {
                if !relative_positions(eg, rel, n) {
                    continue;
                }
                if let Some(lg) = reshaped(eg, g, &[1, h, 1, 1]) {
                    if sizes(eg, lg).as_deref() == Some(&[h][..]) {
                        out.push((Decay::Head, lg));
                    }
                }
            }
        }
    }
    out
}

/// `x` if class `id` is `reshape(x)` with result sizes `want`.
fn reshaped(eg: &EGraph, id: Id, want: &[u64]) -> Option<Id> {
    if sizes(eg, id).as_deref() != Some(want) {
        return None;
    }
    eg[id].nodes.iter().find_map(|n| match n {
        Attn::Reshape([_, x]) => Some(eg.find(*x)),
        _ => None,
    })
}

/// Whether class `id` is `cast(iota(axis 0) − iota(axis 1))` over `[N, N]`: `i − j`.
fn relative_positions(eg: &EGraph, id: Id, n: u64) -> bool {
    let iota = |c: Id, axis: usize| {
        eg[c].nodes.iter().any(|node| match node {
            Attn::Source(s) => {
                s.kind == SourceKind::Iota(axis)
                    && eg.analysis.dims.resolve(&s.ty.shape).ok().as_deref() == Some(&[n, n][..])
            }
            _ => false,
        })
    };
    eg[id].nodes.iter().any(|node| match node {
        Attn::Cast([_, x]) => eg[eg.find(*x)]
            .nodes
            .iter()
            .any(|d| binary(eg, d, BinaryOp::Sub).is_some_and(|(i, j)| iota(i, 0) && iota(j, 1))),
        _ => false,
    })
}

/// Every reading of class `s` as linear-attention scores.
fn read_scores(eg: &EGraph, s: Id) -> Vec<Scores> {
    let Some(ss) = sizes(eg, s).filter(|ss| ss.len() == 4 && ss[2] == ss[3]) else {
        return Vec::new();
    };
    let n = ss[2];
    let plain = |q, k, causal| Scores {
        q,
        k,
        causal,
        decay: Decay::None,
        log_decay: None,
    };
    let mut out: Vec<Scores> = products(eg, s)
        .into_iter()
        .map(|(q, k)| plain(q, k, false))
        .collect();
    for x in causal_select(eg, s, n, 0.0) {
        // GLA's gated product is also a plain product of `q ⊙ b` and `k / b`, whose
        // `1 / b` overflows over a long sequence: only the gated reading is offered.
        let gated = gated_products(eg, x);
        if gated.is_empty() {
            out.extend(products(eg, x).into_iter().map(|(q, k)| plain(q, k, true)));
        }
        for (q, k, g) in gated {
            out.push(Scores {
                q,
                k,
                causal: true,
                decay: Decay::Gate,
                log_decay: Some(g),
            });
        }
    }
    for (x, w) in pairs(eg, s, BinaryOp::Mul) {
        for (q, k) in products(eg, x) {
            let Some(qs) = sizes(eg, q) else { continue };
            for (decay, ld) in decays(eg, w, [qs[0], qs[1], n]) {
                out.push(Scores {
                    q,
                    k,
                    causal: true,
                    decay,
                    log_decay: Some(ld),
                });
            }
        }
    }
    out
}

/// `(p, v)` of every `p·v` in class `id`, `v [B, H, N, Dv]`.
fn applied(eg: &EGraph, id: Id) -> Vec<(&Attn, Id, Id)> {
    eg[id]
        .nodes
        .iter()
        .filter_map(|node| match node {
            Attn::MatMul([p, v]) => Some((node, eg.find(*p), eg.find(*v))),
            _ => None,
        })
        .collect()
}

fn readings(eg: &EGraph, id: Id) -> Vec<Reading<'_>> {
    let mut out = Vec::new();
    let fits = |sc: &Scores, v: Id| {
        let (qs, vs) = (sizes(eg, sc.q), sizes(eg, v));
        matches!((qs, vs), (Some(q), Some(v)) if v.len() == 4 && v[..3] == q[..3])
    };
    // Plain: `p·v`.
    for (node, p, v) in applied(eg, id) {
        for scores in read_scores(eg, p) {
            if fits(&scores, v) {
                out.push(Reading {
                    node,
                    scores,
                    v,
                    normalize: false,
                });
            }
        }
    }
    // Normalized: `(p·v) / Σ_k p`.
    for node in &eg[id].nodes {
        let Some((num, den)) = binary(eg, node, BinaryOp::Div) else {
            continue;
        };
        let sums: Vec<Id> = eg[den]
            .nodes
            .iter()
            .filter_map(|n| match n {
                Attn::Reduce([a, p]) => match attr_in(eg, *a) {
                    Some(Attr::Reduce {
                        kind: ReduceKind::Sum,
                        axes,
                        keep_dims: true,
                    }) if axes == &[3] => Some(eg.find(*p)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        for (_, p, v) in applied(eg, num) {
            if !sums.contains(&p) {
                continue;
            }
            for scores in read_scores(eg, p) {
                if fits(&scores, v) {
                    out.push(Reading {
                        node,
                        scores,
                        v,
                        normalize: true,
                    });
                }
            }
        }
    }
    out
}

fn build<'e>(eg: &'e EGraph, id: Id, _: &Subst) -> Candidates<'e> {
    let mut out = Vec::new();
    for r in readings(eg, id) {
        let l = LinearAttention {
            causal: r.scores.causal,
            decay: r.scores.decay,
            normalize: r.normalize,
            form: LinearForm::Parallel,
        };
        let mut b = Build::replacing(eg, r.node);
        let mut operands = vec![b.class(r.scores.q), b.class(r.scores.k), b.class(r.v)];
        operands.extend(r.scores.log_decay.map(|ld| b.class(ld)));
        if b.op(&Op::LinearAttention(l), &operands).is_some() {
            out.push(b);
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Causal forms.

/// Every `linear_attention` in the parallel form in class `id`.
fn parallel(eg: &EGraph, id: Id) -> Vec<(&Attn, LinearAttention, Vec<Id>)> {
    let mut out = Vec::new();
    for node in &eg[id].nodes {
        let attr = node.attr().and_then(|a| attr_in(eg, a));
        if let (Attn::LinearAttention(_), Some(Attr::Linear(l))) = (node, attr) {
            if l.form == LinearForm::Parallel {
                let ops = node.operands().iter().map(|&o| eg.find(o)).collect();
                out.push((node, *l, ops));
            }
        }
    }
    out
}

/// Every causal `linear_attention` in the parallel form in class `id`.
fn causal_parallel(eg: &EGraph, id: Id) -> Vec<(&Attn, LinearAttention, Vec<Id>)> {
    let mut out = parallel(eg, id);
    out.retain(|(_, l, _)| l.causal);
    out
}

/// The same linear attention in `form`.
fn reform<'e>(
    eg: &'e EGraph,
    node: &Attn,
    l: LinearAttention,
    ops: &[Id],
    form: LinearForm,
) -> Option<Build<'e>> {
    let mut b = Build::replacing(eg, node);
    let operands: Vec<_> = ops.iter().map(|&o| b.class(o)).collect();
    b.op(
        &Op::LinearAttention(LinearAttention { form, ..l }),
        &operands,
    )?;
    Some(b)
}

/// The quadratic form of a parallel `linear_attention`, as the spec frontend writes
/// it (and `linear-attention` reads it).
fn quadratic<'e>(eg: &'e EGraph, node: &Attn, l: LinearAttention, ops: &[Id]) -> Option<Build<'e>> {
    use crate::Source;
    use attnc_ir::{DType, Dim, Shape, TensorType};
    let s = sizes(eg, ops[0])?;
    let (bs, h, n) = (s[0], s[1], s[2]);
    let dtype = super::type_in(eg, ops[0])?.dtype;
    let mut b = Build::replacing(eg, node);
    let (q, k, v) = (b.class(ops[0]), b.class(ops[1]), b.class(ops[2]));
    let shape = |d: &[u64]| Shape(d.iter().map(|&x| Dim::Const(x)).collect());
    let square = |dtype| TensorType::new(shape(&[n, n]), dtype);
    let causal = SourceKind::Mask(MaskExpr::parse("k <= q").expect("a valid mask"));
    let mask = b.node(Attn::Source(Source {
        kind: causal,
        ty: square(DType::Bool),
    }))?;
    let zero = b.constant(0.0, dtype)?;
    let ninf = b.constant(f64::NEG_INFINITY, dtype)?;
    let transposed = Op::Transpose {
        perm: vec![0, 1, 3, 2],
    };
    let mul = Op::Binary(BinaryOp::Mul);
    let exp = Op::Unary(UnaryOp::Exp);
    let scores = match l.decay {
        Decay::Gate => {
            let g = b.class(ops[3]);
            let lc = b.op(&Op::CumSum { axis: 2 }, &[g])?;
            let up = b.op(&exp, &[lc])?;
            let neg = b.op(&Op::Unary(UnaryOp::Neg), &[lc])?;
            let down = b.op(&exp, &[neg])?;
            let qb = b.op(&mul, &[q, up])?;
            let kb = b.op(&mul, &[k, down])?;
            let kbt = b.op(&transposed, &[kb])?;
            let s = b.op(&Op::MatMul, &[qb, kbt])?;
            b.op(&Op::Select, &[mask, s, zero])?
        }
        Decay::Head | Decay::Step => {
            let ld = b.class(ops[3]);
            let e = if l.decay == Decay::Head {
                let lg = b.op(
                    &Op::Reshape {
                        shape: shape(&[1, h, 1, 1]),
                    },
                    &[ld],
                )?;
                let iota = |b: &mut Build<'e>, axis| {
                    b.node(Attn::Source(Source {
                        kind: SourceKind::Iota(axis),
                        ty: square(DType::I64),
                    }))
                };
                let (qi, ki) = (iota(&mut b, 0)?, iota(&mut b, 1)?);
                let rel = b.op(&Op::Binary(BinaryOp::Sub), &[qi, ki])?;
                let rel = b.op(&Op::Cast { to: dtype }, &[rel])?;
                b.op(&mul, &[rel, lg])?
            } else {
                let lc = b.op(&Op::CumSum { axis: 2 }, &[ld])?;
                let rows = b.op(
                    &Op::Reshape {
                        shape: shape(&[bs, h, n, 1]),
                    },
                    &[lc],
                )?;
                let cols = b.op(
                    &Op::Reshape {
                        shape: shape(&[bs, h, 1, n]),
                    },
                    &[lc],
                )?;
                b.op(&Op::Binary(BinaryOp::Sub), &[rows, cols])?
            };
            let e = b.op(&Op::Select, &[mask, e, ninf])?;
            let w = b.op(&exp, &[e])?;
            let kt = b.op(&transposed, &[k])?;
            let s = b.op(&Op::MatMul, &[q, kt])?;
            b.op(&mul, &[s, w])?
        }
        Decay::None => {
            let kt = b.op(&transposed, &[k])?;
            let s = b.op(&Op::MatMul, &[q, kt])?;
            if l.causal {
                b.op(&Op::Select, &[mask, s, zero])?
            } else {
                s
            }
        }
    };
    let num = b.op(&Op::MatMul, &[scores, v])?;
    if l.normalize {
        let sum = Op::Reduce {
            kind: ReduceKind::Sum,
            axes: vec![3],
            keep_dims: true,
        };
        let den = b.op(&sum, &[scores])?;
        b.op(&Op::Binary(BinaryOp::Div), &[num, den])?;
    }
    Some(b)
}
