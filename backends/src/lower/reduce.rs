//! Reductions and the ops built from them: reduce_sum / max / mean, softmax,
//! layer_norm, rms_norm and matmul. Floats accumulate in f32 over a `linalg.fill`ed
//! init; a final elementwise step scales (means) and narrows to the result type.

use super::elementwise::map;
use super::emit::{Elem, Emitter, Generic, Iter, Ix, Map, Val};
use attnc_ir::ReduceKind;

/// The accumulator of a reduction: its element type and starting value.
#[derive(Clone, Copy)]
pub(super) struct Acc {
    pub elem: Elem,
    pub init: f64,
}

/// A reduction `linalg.generic` over the loop domain `domain`, reducing the loops in
/// `axes`. The result has the other loops in order, and size-1 dims for the reduced
/// ones when `keep`. `body` gets the input scalars and then the accumulator (last).
pub(super) fn accumulate(
    em: &mut Emitter,
    domain: &[usize],
    axes: &[usize],
    keep: bool,
    ins: Vec<(&Val, Map)>,
    acc: Acc,
    body: impl FnOnce(&mut Emitter, &[String]) -> String,
) -> Val {
    let mut sizes = Vec::new();
    let mut results = Vec::new();
    for (d, &n) in domain.iter().enumerate() {
        match (axes.contains(&d), keep) {
            (false, _) => {
                sizes.push(n);
                results.push(Ix::D(d));
            }
            (true, true) => {
                sizes.push(1);
                results.push(Ix::Zero);
            }
            (true, false) => {}
        }
    }
    let init = em.filled(&sizes, acc.elem, acc.init);
    let iters = (0..domain.len())
        .map(|d| {
            if axes.contains(&d) {
                Iter::Reduction
            } else {
                Iter::Parallel
            }
        })
        .collect();
    let g = Generic {
        ins,
        init,
        out_map: Map::new(domain.len(), results),
        iters,
    };
    em.generic(g, body)
}

/// Σ over `axes` (or the maximum) of `x`, in the compute type, keeping the dims.
fn sum_or_max(em: &mut Emitter, x: &Val, axes: &[usize], keep: bool, max: bool) -> Val {
    let (elem, f) = (x.elem, x.elem.compute());
    let init = if max { f64::NEG_INFINITY } else { 0.0 };
    let ins = vec![(x, Map::identity(x.rank()))];
    accumulate(
        em,
        &x.sizes,
        axes,
        keep,
        ins,
        Acc { elem: f, init },
        |em, args| {
            let v = em.extend(&args[0], elem, f);
            // NaN-propagating maximum, as the interpreter's.
            em.arith2(if max { "maximumf" } else { "addf" }, &args[1], &v, f)
        },
    )
}

/// `acc / count` (when given) narrowed to `elem`; no op when neither is needed.
fn finish(em: &mut Emitter, acc: &Val, count: Option<usize>, elem: Elem) -> Val {
    if count.is_none() && acc.elem == elem {
        return acc.clone();
    }
    let f = acc.elem;
    map(em, &acc.sizes.clone(), elem, &[acc], |em, args| {
        let v = match count {
            Some(n) => {
                let n = em.constant(n as f64, f);
                em.arith2("divf", &args[0], &n, f)
            }
            None => args[0].clone(),
        };
        em.narrow(&v, f, elem)
    })
}

pub(super) fn reduce(
    em: &mut Emitter,
    x: &Val,
    kind: ReduceKind,
    axes: &[usize],
    keep: bool,
) -> Val {
    let acc = sum_or_max(em, x, axes, keep, kind == ReduceKind::Max);
    let count = (kind == ReduceKind::Mean).then(|| axes.iter().map(|&a| x.sizes[a]).product());
    finish(em, &acc, count, x.elem)
}

/// exp(x - max) / Σ exp(x - max) along `axis`.
pub(super) fn softmax(em: &mut Emitter, x: &Val, axis: usize) -> Val {
    let (elem, f) = (x.elem, x.elem.compute());
    let max = sum_or_max(em, x, &[axis], true, true);
    let e = map(em, &x.sizes, f, &[x, &max], |em, args| {
        let v = em.extend(&args[0], elem, f);
        let d = em.arith2("subf", &v, &args[1], f);
        em.math1("exp", &d, f)
    });
    let sum = sum_or_max(em, &e, &[axis], true, false);
    map(em, &x.sizes, elem, &[&e, &sum], |em, args| {
        let q = em.arith2("divf", &args[0], &args[1], f);
        em.narrow(&q, f, elem)
    })
}

/// The mean over the last axis (size-1 dim kept, in the compute type) of `x`, or of
/// `(x - center)²` when a center (broadcast into `x`) is given.
fn last_axis_mean(em: &mut Emitter, x: &Val, center: Option<&Val>) -> Val {
    let (elem, f) = (x.elem, x.elem.compute());
    let last = x.rank() - 1;
    let d = x.sizes[last];
    let acc = match center {
        Some(center) => {
            let ins = vec![
                (x, Map::identity(x.rank())),
                (center, Map::broadcast(&center.sizes, &x.sizes)),
            ];
            let acc = Acc { elem: f, init: 0.0 };
            accumulate(em, &x.sizes, &[last], true, ins, acc, |em, args| {
                let v = em.extend(&args[0], elem, f);
                let c = em.arith2("subf", &v, &args[1], f);
                let c2 = em.arith2("mulf", &c, &c, f);
                em.arith2("addf", &args[2], &c2, f)
            })
        }
        None => sum_or_max(em, x, &[last], true, false),
    };
    finish(em, &acc, Some(d), f)
}

/// (x - mean) / √(var + eps) · gamma + beta over the last axis (biased variance).
pub(super) fn layer_norm(em: &mut Emitter, x: &Val, gamma: &Val, beta: &Val, eps: f64) -> Val {
    let (elem, f) = (x.elem, x.elem.compute());
    let mean = last_axis_mean(em, x, None);
    let var = last_axis_mean(em, x, Some(&mean));
    map(
        em,
        &x.sizes,
        elem,
        &[x, &mean, &var, gamma, beta],
        |em, args| {
            let v = em.extend(&args[0], elem, f);
            let g = em.extend(&args[3], elem, f);
            let b = em.extend(&args[4], elem, f);
            let eps = em.constant(eps, f);
            let c = em.arith2("subf", &v, &args[1], f);
            let ve = em.arith2("addf", &args[2], &eps, f);
            let r = em.math1("rsqrt", &ve, f);
            let n = em.arith2("mulf", &c, &r, f);
            let s = em.arith2("mulf", &n, &g, f);
            let y = em.arith2("addf", &s, &b, f);
            em.narrow(&y, f, elem)
        },
    )
}

/// x / √(mean(x²) + eps) · gamma over the last axis.
pub(super) fn rms_norm(em: &mut Emitter, x: &Val, gamma: &Val, eps: f64) -> Val {
    let (elem, f) = (x.elem, x.elem.compute());
    let zero = super::elementwise::constant(em, 0.0, f);
    // mean((x - 0)²)
    let ms = last_axis_mean(em, x, Some(&zero));
    map(em, &x.sizes, elem, &[x, &ms, gamma], |em, args| {
        let v = em.extend(&args[0], elem, f);
        let g = em.extend(&args[2], elem, f);
        let eps = em.constant(eps, f);
        let me = em.arith2("addf", &args[1], &eps, f);
        let r = em.math1("rsqrt", &me, f);
        let n = em.arith2("mulf", &v, &r, f);
        let y = em.arith2("mulf", &n, &g, f);
        em.narrow(&y, f, elem)
    })
}

/// `[.., m, k] × [.., k, n]` with broadcast batch dims: loops (batch.., m, n, k), k
/// reduced into a zero-filled accumulator.
pub(super) fn matmul(em: &mut Emitter, a: &Val, b: &Val, out: &[usize]) -> Val {
    let nb = out.len() - 2;
    let (m, n, k) = (Ix::D(nb), Ix::D(nb + 1), Ix::D(nb + 2));
    let operand_map = |v: &Val, rows: Ix, cols: Ix| {
        let batch = &v.sizes[..v.rank() - 2];
        let mut results = Map::broadcast(batch, &out[..nb]).results;
        results.extend([rows, cols]);
        Map::new(nb + 3, results)
    };
    let ins = vec![(a, operand_map(a, m, k)), (b, operand_map(b, k, n))];
    let (elem, c) = (a.elem, a.elem.compute());
    let init = em.filled(out, c, 0.0);
    let mut iters = vec![Iter::Parallel; nb + 2];
    iters.push(Iter::Reduction);
    let g = Generic {
        ins,
        init,
        out_map: Map::new(nb + 3, (0..nb + 2).map(Ix::D).collect()),
        iters,
    };
    let acc = em.generic(g, |em, args| {
        if elem.is_float() {
            let x = em.extend(&args[0], elem, c);
            let y = em.extend(&args[1], elem, c);
            let p = em.arith2("mulf", &x, &y, c);
            em.arith2("addf", &args[2], &p, c)
        } else {
            let p = em.arith2("muli", &args[0], &args[1], c);
            em.arith2("addi", &args[2], &p, c)
        }
    });
    finish(em, &acc, None, elem)
}

/// A rank-0 `i8` tensor: 1 if `pred` (an `i1` of one element of `x`) holds for any
/// element, else 0. The status flags of run-time checks are built from this.
pub(super) fn any(
    em: &mut Emitter,
    x: &Val,
    pred: impl FnOnce(&mut Emitter, &str) -> String,
) -> Val {
    let all: Vec<usize> = (0..x.rank()).collect();
    let ins = vec![(x, Map::identity(x.rank()))];
    let acc = Acc {
        elem: Elem::I8,
        init: 0.0,
    };
    accumulate(em, &x.sizes, &all, false, ins, acc, |em, args| {
        let holds = pred(em, &args[0]);
        let holds = em.convert("extui", &holds, Elem::I1, Elem::I8);
        em.arith2("ori", &args[1], &holds, Elem::I8)
    })
}
