//! `fusion`: plain attention into fused attention, GQA and MLA.
//!
//! The fused `attention` op computes `softmax(mask(bias + cap(scale·q·kᵀ)))·v` with an
//! online softmax, so the `Sq × Sk` scores never exist in memory. `attention-fuse`
//! reads a score expression back through each optional stage the way frontends write
//! it; `attention-gqa` drops `repeat_kv`; `mla-absorb` moves MLA's K and V
//! up-projections out of the attention, which then runs on the shared latent.

use super::{class_rule, found, scalar, sizes, type_in, Build, Candidates, Family, Rule, B};
use crate::{Attn, Attr, EGraph, SourceKind};
use attnc_ir::{Attention, BinaryOp, CmpOp, Coord, Dim, MaskExpr, Op, Shape, UnaryOp};
use egg::{Id, Subst};

const F: Family = Family::Fusion;

/// Readings of one score class kept at most: real graphs have one or two, the bound
/// keeps a pathological e-graph from multiplying them.
const MAX_READINGS: usize = 8;

#[rustfmt::skip]
pub fn rules() -> Vec<Rule> {
    vec![
        // softmax(mask(bias + cap(scale·q·kᵀ)))·v == attention(q, k, v; scale, cap, bias, mask)
        class_rule("attention-fuse", F,
            "softmax(mask(bias + cap(q·kᵀ·scale)))·v == attention(q, k, v)",
            |eg, id| found(!fusions(eg, id).is_empty()), fuse_build),
        // attention(q, repeat_kv(k, G), repeat_kv(v, G); groups g) == attention(q, k, v; groups g·G)
        class_rule("attention-gqa", F,
            "attention(q, repeat_kv(k), repeat_kv(v)) == attention(q, k, v; groups·G)",
            |eg, id| found(!gqa_readings(eg, id).is_empty()), gqa_build),
        // attention([q_n, q_r], [c·W_uk, k_r], c·W_uv) ==
        //   attention([q_n·W_ukᵀ, q_r], [c, k_r], c; groups = H)·W_uv
        class_rule("mla-absorb", F,
            "attention([qn, qr], [c·Wuk, kr], c·Wuv) == attention([qn·Wukᵀ, qr], [c, kr], c)·Wuv",
            |eg, id| found(!mla_readings(eg, id).is_empty()), mla_build),
    ]
}

// ---------------------------------------------------------------------------------
// attention-fuse

/// One reading of a score class as `mask(bias + cap(scale·q·kᵀ))`.
#[derive(Clone, Debug, Default)]
struct Scores {
    q: Option<Id>,
    k: Option<Id>,
    scale: Option<Id>,
    cap: Option<Id>,
    bias: Option<Id>,
    /// The boolean tensor of a select mask or an additive `-inf` mask.
    mask: Option<Id>,
    /// Document ids `[B, S]` of a `select(seg[b,q] == seg[b,k], s, -inf)`.
    segments: Option<Id>,
}

/// A complete match: `softmax(scores)·v`.
#[derive(Clone, Debug)]
struct Fusion {
    node: Attn,
    scores: Scores,
    v: Id,
}

fn is_const(eg: &EGraph, id: Id, value: f64) -> bool {
    scalar(eg, id) == Some(value)
}

fn binary(eg: &EGraph, node: &Attn, op: BinaryOp) -> Option<(Id, Id)> {
    match node {
        Attn::Binary([a, x, y]) if crate::attr_in(eg, *a) == Some(&Attr::Binary(op)) => {
            Some((eg.find(*x), eg.find(*y)))
        }
        _ => None,
    }
}

fn unary(eg: &EGraph, node: &Attn, op: UnaryOp) -> Option<Id> {
    match node {
        Attn::Unary([a, x]) if crate::attr_in(eg, *a) == Some(&Attr::Unary(op)) => {
            Some(eg.find(*x))
        }
        _ => None,
    }
}

/// `select(m, 0, -inf)`: an additive mask.
fn additive_mask(eg: &EGraph, id: Id) -> Option<Id> {
    eg[id].nodes.iter().find_map(|n| match n {
        Attn::Select([m, z, ninf])
            if is_const(eg, eg.find(*z), 0.0)
                && is_const(eg, eg.find(*ninf), f64::NEG_INFINITY) =>
        {
            Some(eg.find(*m))
        }
        _ => None,
    })
}

/// `seg` if class `m` is `reshape(seg, [B, 1, S, 1]) == reshape(seg, [B, 1, 1, S])`.
fn same_document(eg: &EGraph, m: Id) -> Option<Id> {
    let reshaped = |id: Id, want: &dyn Fn(&[u64], &[u64]) -> bool| {
        eg[eg.find(id)].nodes.iter().find_map(|n| match n {
            Attn::Reshape([_, x]) => {
                let x = eg.find(*x);
                let (xs, rs) = (sizes(eg, x)?, sizes(eg, eg.find(id))?);
                let int = type_in(eg, x).is_some_and(|t| t.dtype.is_int());
                (int && xs.len() == 2 && want(&xs, &rs)).then_some(x)
            }
            _ => None,
        })
    };
    eg[m].nodes.iter().find_map(|n| match n {
        Attn::Compare([a, x, y]) if crate::attr_in(eg, *a) == Some(&Attr::Compare(CmpOp::Eq)) => {
            let q = reshaped(*x, &|s, r| r == [s[0], 1, s[1], 1])?;
            let k = reshaped(*y, &|s, r| r == [s[0], 1, 1, s[1]])?;
            (q == k).then_some(q)
        }
        _ => None,
    })
}

/// Stages, outermost first: 0 documents, 1 mask, 2 bias, 3 softcap, 4 scale, 5 `q·kᵀ`.
fn read_scores(eg: &EGraph, id: Id, stage: u8, acc: &Scores, out: &mut Vec<Scores>) {
    if out.len() >= MAX_READINGS || stage > 5 {
        return;
    }
    for node in &eg[id].nodes {
        let mut next = acc.clone();
        let inner = match stage {
            0 => match node {
                Attn::Select([m, x, ninf]) if is_const(eg, eg.find(*ninf), f64::NEG_INFINITY) => {
                    same_document(eg, eg.find(*m)).map(|seg| {
                        next.segments = Some(seg);
                        eg.find(*x)
                    })
                }
                _ => None,
            },
            1 => match node {
                Attn::Select([m, x, ninf]) if is_const(eg, eg.find(*ninf), f64::NEG_INFINITY) => {
                    next.mask = Some(eg.find(*m));
                    Some(eg.find(*x))
                }
                _ => binary(eg, node, BinaryOp::Add).and_then(|(x, a)| {
                    next.mask = Some(additive_mask(eg, a)?);
                    Some(x)
                }),
            },
            2 => binary(eg, node, BinaryOp::Add).map(|(x, b)| {
                next.bias = Some(b);
                x
            }),
            3 => binary(eg, node, BinaryOp::Mul).and_then(|(t, c)| {
                let cap = scalar(eg, c)?;
                let u = eg[t]
                    .nodes
                    .iter()
                    .find_map(|n| unary(eg, n, UnaryOp::Tanh))?;
                let x = eg[u].nodes.iter().find_map(|n| {
                    binary(eg, n, BinaryOp::Div).filter(|&(_, c2)| scalar(eg, c2) == Some(cap))
                })?;
                next.cap = Some(c);
                Some(x.0)
            }),
            4 => binary(eg, node, BinaryOp::Mul).and_then(|(x, c)| {
                scalar(eg, c)?;
                next.scale = Some(c);
                Some(x)
            }),
            _ => {
                if let Attn::MatMul([q, t]) = node {
                    let t = eg.find(*t);
                    for tn in &eg[t].nodes {
                        if let Attn::Transpose([p, k]) = tn {
                            if crate::attr_in(eg, *p) == Some(&Attr::Perm(vec![0, 1, 3, 2])) {
                                let mut done = acc.clone();
                                done.q = Some(eg.find(*q));
                                done.k = Some(eg.find(*k));
                                out.push(done);
                            }
                        }
                    }
                }
                None
            }
        };
        if let Some(x) = inner {
            read_scores(eg, x, stage + 1, &next, out);
        }
    }
    // Every stage but the core is optional.
    if stage < 5 {
        read_scores(eg, id, stage + 1, acc, out);
    }
}

/// Every `softmax(scores, last axis)·v` in class `id` that reads as attention.
fn fusions(eg: &EGraph, id: Id) -> Vec<Fusion> {
    let mut out = Vec::new();
    for node in &eg[id].nodes {
        let Attn::MatMul([p, v]) = node else { continue };
        let (p, v) = (eg.find(*p), eg.find(*v));
        if type_in(eg, v).is_none_or(|t| t.rank() != 4) {
            continue;
        }
        for pn in &eg[p].nodes {
            let Attn::Softmax([axis, s]) = pn else {
                continue;
            };
            if crate::attr_in(eg, *axis) != Some(&Attr::Axis(3)) {
                continue;
            }
            let mut readings = Vec::new();
            read_scores(eg, eg.find(*s), 0, &Scores::default(), &mut readings);
            out.extend(readings.into_iter().map(|scores| Fusion {
                node: node.clone(),
                scores,
                v,
            }));
            if out.len() >= MAX_READINGS {
                return out;
            }
        }
    }
    out
}

/// The mask expression of class `m` if it can ride on the fused op as an attribute:
/// a `mask` source whose axes are exactly the trailing axes of the scores (no
/// broadcasting of an axis the expression reads).
fn mask_attribute(eg: &EGraph, m: Id, scores: &[u64]) -> Option<MaskExpr> {
    let (expr, ty) = eg[m].nodes.iter().find_map(|n| match n {
        Attn::Source(s) => match &s.kind {
            SourceKind::Mask(e) => Some((e.clone(), s.ty.clone())),
            _ => None,
        },
        _ => None,
    })?;
    let ms = eg.analysis.dims.resolve(&ty.shape).ok()?;
    let r = ms.len();
    if r > 4 || ms[..] != scores[4 - r..] {
        return None;
    }
    let covered = expr.coords().iter().all(|c| {
        let axis = match c {
            Coord::B => 0,
            Coord::H => 1,
            Coord::Q => 2,
            Coord::K => 3,
        };
        axis >= 4 - r
    });
    covered.then_some(expr)
}

fn fuse_build<'e>(eg: &'e EGraph, id: Id, _: &Subst) -> Candidates<'e> {
    let Some(scores_sizes) = sizes(eg, id) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for f in fusions(eg, id) {
        let s = &f.scores;
        let (Some(q), Some(k)) = (s.q, s.k) else {
            continue;
        };
        let (Some(qs), Some(ks)) = (sizes(eg, q), sizes(eg, k)) else {
            continue;
        };
        if qs.len() != 4 || ks.len() != 4 {
            continue;
        }
        let score_shape = [qs[0], qs[1], qs[2], ks[2]];
        let _ = &scores_sizes;
        let mut attn = Attention::new(s.scale.and_then(|c| scalar(eg, c)).unwrap_or(1.0));
        attn.softcap = s.cap.and_then(|c| scalar(eg, c));
        let mut b = Build::replacing(eg, &f.node);
        let built = (|| {
            let (qb, kb, vb) = (b.class(q), b.class(k), b.class(f.v));
            let mut bias = s.bias.map(|x| b.class(x));
            if let Some(m) = s.mask {
                match mask_attribute(eg, m, &score_shape) {
                    Some(expr) => attn.mask = Some(expr),
                    // Any other boolean tensor becomes an additive bias.
                    None if bias.is_none() => {
                        let dtype = type_in(eg, q)?.dtype;
                        let mb = b.class(m);
                        let zero = b.constant(0.0, dtype)?;
                        let ninf = b.constant(f64::NEG_INFINITY, dtype)?;
                        bias = Some(b.op(&Op::Select, &[mb, zero, ninf])?);
                    }
                    None => return None,
                }
            }
            let mut operands = vec![qb, kb, vb];
            if let Some(x) = bias {
                attn.bias = true;
                operands.push(x);
            }
            if let Some(seg) = s.segments {
                // Self-attention over the segments' sequence.
                if sizes(eg, seg)? != [qs[0], ks[2]] || qs[2] != ks[2] {
                    return None;
                }
                attn.segments = true;
                operands.push(b.class(seg));
            }
            b.op(&Op::Attention(attn), &operands)
        })();
        if built.is_some() {
            out.push(b);
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// attention-gqa

/// `k` if class `id` is `repeat_kv(k, G)`:
/// `reshape([B, Hkv·G, S, D], broadcast([B, Hkv, G, S, D], reshape([B, Hkv, 1, S, D], k)))`.
fn repeated(eg: &EGraph, id: Id) -> Option<(Id, u64)> {
    let out = sizes(eg, id)?;
    for n in &eg[id].nodes {
        let Attn::Reshape([_, x]) = n else { continue };
        let x = eg.find(*x);
        for xn in &eg[x].nodes {
            let Attn::Broadcast([_, y]) = xn else {
                continue;
            };
            let y = eg.find(*y);
            for yn in &eg[y].nodes {
                let Attn::Reshape([_, k]) = yn else { continue };
                let k = eg.find(*k);
                let (xs, ys, ks) = (sizes(eg, x)?, sizes(eg, y)?, sizes(eg, k)?);
                let fits = ks.len() == 4
                    && out.len() == 4
                    && ys == [ks[0], ks[1], 1, ks[2], ks[3]]
                    && xs.len() == 5
                    && xs[..2] == ks[..2]
                    && xs[3..] == ks[2..]
                    && out == [ks[0], ks[1] * xs[2], ks[2], ks[3]];
                if fits {
                    return Some((k, xs[2]));
                }
            }
        }
    }
    None
}

/// `(attention attribute, q, k, v, bias)` of an attention node.
fn attention_parts(eg: &EGraph, node: &Attn) -> Option<(Attention, Vec<Id>)> {
    let Attn::Attention(children) = node else {
        return None;
    };
    let attr = crate::attr_in(eg, children[0])?.attention()?;
    Some((attr, children[1..].iter().map(|&c| eg.find(c)).collect()))
}

fn gqa_readings(eg: &EGraph, id: Id) -> Vec<(&Attn, Attention, Vec<Id>)> {
    let mut out = Vec::new();
    for n in &eg[id].nodes {
        let Some((mut attr, mut ops)) = attention_parts(eg, n) else {
            continue;
        };
        let (Some((k, gk)), Some((v, gv))) = (repeated(eg, ops[1]), repeated(eg, ops[2])) else {
            continue;
        };
        if gk != gv {
            continue;
        }
        attr.groups *= gk;
        ops[1] = k;
        ops[2] = v;
        out.push((n, attr, ops));
    }
    out
}

fn gqa_build<'e>(eg: &'e EGraph, id: Id, _: &Subst) -> Candidates<'e> {
    let mut out = Vec::new();
    for (node, attr, ops) in gqa_readings(eg, id) {
        let mut b = Build::replacing(eg, node);
        let operands: Vec<B> = ops.iter().map(|&o| b.class(o)).collect();
        if b.op(&Op::Attention(attr), &operands).is_some() {
            out.push(b);
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// mla-absorb

/// MLA's attention inputs, read back from the textbook lowering.
struct Mla<'e> {
    node: &'e Attn,
    attr: Attention,
    q_nope: Id,
    q_rope: Id,
    k_rope: Id,
    latent: Id,
    w_uk: Id,
    w_uv: Id,
    bias: Option<Id>,
}

/// `(a, b)` if class `id` is `concat(a, b; axis 3)`.
fn concat_pair(eg: &EGraph, id: Id) -> Vec<(Id, Id)> {
    eg[id]
        .nodes
        .iter()
        .filter_map(|n| match n {
            Attn::Concat(c) if c.len() == 3 && crate::attr_in(eg, c[0]) == Some(&Attr::Axis(3)) => {
                Some((eg.find(c[1]), eg.find(c[2])))
            }
            _ => None,
        })
        .collect()
}

/// `(c, W)` if class `id` is `transpose(reshape(c·W, [B, S, H, D]), [0, 2, 1, 3])`
/// with `W` a rank-2 weight: one per-head up-projection of a latent `c`.
fn up_projection(eg: &EGraph, id: Id) -> Option<(Id, Id)> {
    for n in &eg[id].nodes {
        let Attn::Transpose([p, r]) = n else { continue };
        if crate::attr_in(eg, *p) != Some(&Attr::Perm(vec![0, 2, 1, 3])) {
            continue;
        }
        for rn in &eg[eg.find(*r)].nodes {
            let Attn::Reshape([_, m]) = rn else { continue };
            for mn in &eg[eg.find(*m)].nodes {
                let Attn::MatMul([c, w]) = mn else { continue };
                let (c, w) = (eg.find(*c), eg.find(*w));
                if sizes(eg, w).is_some_and(|s| s.len() == 2)
                    && sizes(eg, c).is_some_and(|s| s.len() == 3)
                {
                    return Some((c, w));
                }
            }
        }
    }
    None
}

/// `k_r` if class `id` is `broadcast(k_r)` with `k_r` of one head.
fn one_head_broadcast(eg: &EGraph, id: Id) -> Option<Id> {
    eg[id].nodes.iter().find_map(|n| match n {
        Attn::Broadcast([_, x]) => {
            let x = eg.find(*x);
            (sizes(eg, x)?.get(1) == Some(&1)).then_some(x)
        }
        _ => None,
    })
}

fn mla_readings(eg: &EGraph, id: Id) -> Vec<Mla<'_>> {
    let mut out = Vec::new();
    for n in &eg[id].nodes {
        let Some((attr, ops)) = attention_parts(eg, n) else {
            continue;
        };
        if attr.groups != 1 {
            continue;
        }
        let Some((latent, w_uv)) = up_projection(eg, ops[2]) else {
            continue;
        };
        for (q_nope, q_rope) in concat_pair(eg, ops[0]) {
            for (k_nope, k_b) in concat_pair(eg, ops[1]) {
                let (Some((c, w_uk)), Some(k_rope)) =
                    (up_projection(eg, k_nope), one_head_broadcast(eg, k_b))
                else {
                    continue;
                };
                if c != latent {
                    continue;
                }
                out.push(Mla {
                    node: n,
                    attr: attr.clone(),
                    q_nope,
                    q_rope,
                    k_rope,
                    latent,
                    w_uk,
                    w_uv,
                    bias: ops.get(3).copied(),
                });
            }
        }
    }
    out
}

fn mla_build<'e>(eg: &'e EGraph, id: Id, _: &Subst) -> Candidates<'e> {
    let mut out = Vec::new();
    for m in mla_readings(eg, id) {
        let mut b = Build::replacing(eg, m.node);
        let built = (|| {
            let qn = sizes(eg, m.q_nope)?; // [B, H, S, dn]
            let cs = sizes(eg, m.latent)?; // [B, S, r]
            let vs = sizes(eg, m.w_uv)?; // [r, H·dv]
            let (heads, dn, r) = (qn[1], qn[3], cs[2]);
            let dv = vs[1] / heads.max(1);
            let n = |x: u64| Dim::Const(x);
            // W_uk [r, H·dn] → per head [H, dn, r]: q_nope·W_ukᵀ lands in latent space.
            let w_uk = b.class(m.w_uk);
            let w_uk = b.op(
                &Op::Reshape {
                    shape: Shape(vec![n(r), n(heads), n(dn)]),
                },
                &[w_uk],
            )?;
            let w_uk = b.op(
                &Op::Transpose {
                    perm: vec![1, 2, 0],
                },
                &[w_uk],
            )?;
            let q_nope = b.class(m.q_nope);
            let q_lat = b.op(&Op::MatMul, &[q_nope, w_uk])?;
            let q_rope = b.class(m.q_rope);
            let q = b.op(&Op::Concat { axis: 3 }, &[q_lat, q_rope])?;
            // The latent is one KV head shared by every query head (MQA over c).
            let c = b.class(m.latent);
            let c4 = b.op(
                &Op::Reshape {
                    shape: Shape(vec![n(cs[0]), n(1), n(cs[1]), n(r)]),
                },
                &[c],
            )?;
            let k_rope = b.class(m.k_rope);
            let k = b.op(&Op::Concat { axis: 3 }, &[c4, k_rope])?;
            let mut attr = m.attr.clone();
            attr.groups = heads;
            let mut operands = vec![q, k, c4];
            if let Some(x) = m.bias {
                operands.push(b.class(x));
            }
            let o = b.op(&Op::Attention(attr), &operands)?;
            // W_uv [r, H·dv] → per head [H, r, dv], applied after the attention.
            let w_uv = b.class(m.w_uv);
            let w_uv = b.op(
                &Op::Reshape {
                    shape: Shape(vec![n(r), n(heads), n(dv)]),
                },
                &[w_uv],
            )?;
            let w_uv = b.op(
                &Op::Transpose {
                    perm: vec![1, 0, 2],
                },
                &[w_uv],
            )?;
            b.op(&Op::MatMul, &[o, w_uv])
        })();
        if built.is_some() {
            out.push(b);
        }
    }
    out
}
