//! Fused attention, lowered plainly: the `[B, H, Sq, Sk]` scores are materialised
//! (a tiled FlashAttention kernel is to replace this). Four steps:
//!
//! 1. `q·k`: a contraction over the head dim, loops `(b, h, q, k, d)`;
//! 2. per score: scale, optional softcap, optional bias, optional mask → `-inf`;
//! 3. softmax over the keys (the `softmax` op's lowering);
//! 4. `p·v`: a contraction over the keys, loops `(b, h, q, e, k)`.
//!
//! Everything is computed in the compute type (f32 for half floats) and narrowed once
//! at the end, as the interpreter rounds only the result. K and V are read at head
//! `h floordiv groups` through their indexing maps, so GQA / MQA never repeat them.

use super::elementwise::{map, mask_holds};
use super::emit::{Elem, Emitter, Ix, Map, Val};
use super::reduce::{accumulate, softmax, Acc};
use attnc_ir::{Attention, Dims};

/// `attention(q, k, v [, bias])` with the semantics of [`Attention`].
pub(super) fn attention(
    em: &mut Emitter,
    a: &Attention,
    q: &Val,
    k: &Val,
    v: &Val,
    bias: Option<&Val>,
    dims: &Dims,
) -> Val {
    let (elem, f) = (q.elem, q.elem.compute());
    let (b, h, sq, dk) = (q.sizes[0], q.sizes[1], q.sizes[2], q.sizes[3]);
    let (sk, dv) = (k.sizes[2], v.sizes[3]);
    // The KV head of query head `d1`; a plain `d1` for MHA keeps the map an identity.
    let kv = match a.groups {
        0 | 1 => Ix::D(1),
        g => Ix::FloorDiv(1, g),
    };
    let (d0, d2, d3, d4) = (Ix::D(0), Ix::D(2), Ix::D(3), Ix::D(4));

    // q·k over loops (b, h, q, k, d).
    let dot = contract(
        em,
        &[b, h, sq, sk, dk],
        (q, Map::new(5, vec![d0, Ix::D(1), d2, d4])),
        (k, Map::new(5, vec![d0, kv, d3, d4])),
    );

    // One elementwise pass over the scores, in the op's order. The bias broadcasts
    // into [B, H, Sq, Sk] as numpy does (the verifier checked it does).
    let scores_sizes = [b, h, sq, sk];
    let mut operands = vec![&dot];
    operands.extend(bias);
    let bias_elem = bias.map(|t| t.elem);
    let scores = map(em, &scores_sizes, f, &operands, |em, args| {
        let scale = em.constant(a.scale, f);
        let mut s = em.arith2("mulf", &args[0], &scale, f);
        if let Some(c) = a.softcap {
            // c·tanh(s / c): bounded scores (Gemma 2, Grok).
            let c = em.constant(c, f);
            let t = em.arith2("divf", &s, &c, f);
            let t = em.math1("tanh", &t, f);
            s = em.arith2("mulf", &c, &t, f);
        }
        if let Some(be) = bias_elem {
            let x = em.extend(&args[1], be, f);
            s = em.arith2("addf", &s, &x, f);
        }
        if let Some(expr) = &a.mask {
            // The mask sees the scores' own coordinates: h is the query head.
            let coords: Vec<String> = (0..4)
                .map(|d| {
                    let i = em.index(d);
                    em.convert("index_cast", &i, Elem::Index, Elem::I64)
                })
                .collect();
            let holds = mask_holds(em, expr, &coords, dims);
            let minus_inf = em.constant(f64::NEG_INFINITY, f);
            s = em.select(&holds, &s, &minus_inf, f);
        }
        s
    });

    let p = softmax(em, &scores, 3);

    // p·v over loops (b, h, q, e, k).
    let out = contract(
        em,
        &[b, h, sq, dv, sk],
        (&p, Map::new(5, vec![d0, Ix::D(1), d2, d4])),
        (v, Map::new(5, vec![d0, kv, d4, d3])),
    );
    if elem == f {
        return out;
    }
    map(em, &out.sizes.clone(), elem, &[&out], |em, args| {
        em.narrow(&args[0], f, elem)
    })
}

/// Σ over the last loop of `domain` of `x·y` (each read through its map), in the
/// compute type of `y`, into a zero-filled accumulator over the other loops.
fn contract(em: &mut Emitter, domain: &[usize], x: (&Val, Map), y: (&Val, Map)) -> Val {
    let (xe, ye) = (x.0.elem, y.0.elem);
    let f = ye.compute();
    let reduced = [domain.len() - 1];
    let acc = Acc { elem: f, init: 0.0 };
    accumulate(em, domain, &reduced, false, vec![x, y], acc, |em, args| {
        let a = em.extend(&args[0], xe, f);
        let b = em.extend(&args[1], ye, f);
        let p = em.arith2("mulf", &a, &b, f);
        em.arith2("addf", &args[2], &p, f)
    })
}
