//! `algebra`: identities of the plain ops. Scalars move through linear ops (so a
//! scale written on Q, K or the weights meets the scores where fusion looks for it),
//! softmax written out as exp/sum/div becomes `softmax`, transpose and reshape pairs
//! cancel, and projections that share an input merge into one matmul.

use super::{
    bound, class_rule, pattern_rule, scalar, sizes, type_in, Build, Candidates, Family, Rule,
};
use crate::{Attn, Attr, EGraph, SourceKind};
use attnc_ir::{BinaryOp, Dim, Op, ReduceKind, Shape};
use egg::{Id, Subst};

const A: Family = Family::Algebra;

/// Projections merged into one matmul at most: Q, K, V or gate, up.
const MAX_MERGED_PROJECTIONS: usize = 4;

fn mul() -> Op {
    Op::Binary(BinaryOp::Mul)
}

/// The classes bound to `names`, if every one is bound.
fn classes<const N: usize>(subst: &Subst, names: [&str; N]) -> Option<[Id; N]> {
    let mut out = [Id::from(0); N];
    for (o, n) in out.iter_mut().zip(names) {
        *o = bound(subst, n)?;
    }
    Some(out)
}

/// `x·c` with `x`, `c` given, for the scalar rules' right-hand sides.
fn scaled<'e>(b: &mut Build<'e>, x: super::B, c: super::B) -> Option<super::B> {
    b.op(&mul(), &[x, c])
}

/// One candidate from a builder that may fail.
fn one(b: Option<Build<'_>>) -> Candidates<'_> {
    b.into_iter().collect()
}

/// A scalar-moving rule: `lhs` binds `?x`, `?c` (and `?y` for matmul); `rhs` builds the
/// right side from the bound classes once `?c` is known to be a scalar constant.
fn scalar_rule(
    name: &'static str,
    identity: &'static str,
    lhs: &str,
    rhs: fn(&mut Build, &Subst) -> Option<super::B>,
) -> Rule {
    pattern_rule(name, A, identity, lhs, move |eg, _, subst| {
        let Some(c) = bound(subst, "?c") else {
            return Vec::new();
        };
        if scalar(eg, c).is_none() {
            return Vec::new();
        }
        let mut b = Build::new(eg);
        one(rhs(&mut b, subst).map(|_| b))
    })
}

fn var_class(b: &mut Build, subst: &Subst, name: &str) -> Option<super::B> {
    Some(b.class(bound(subst, name)?))
}

#[rustfmt::skip]
pub fn rules() -> Vec<Rule> {
    vec![
        // c·x == x·c for a scalar constant c: scalars sit on the right.
        scalar_rule("mul-scalar-right", "c·x == x·c", "(binary mul ?c ?x)", |b, s| {
            let (x, c) = (var_class(b, s, "?x")?, var_class(b, s, "?c")?);
            scaled(b, x, c)
        }),
        // matmul(a·c, y) == matmul(a, y)·c
        scalar_rule("matmul-scale-lhs", "matmul(a·c, b) == matmul(a, b)·c",
            "(matmul (binary mul ?x ?c) ?y)", |b, s| {
            let (x, y, c) = (var_class(b, s, "?x")?, var_class(b, s, "?y")?, var_class(b, s, "?c")?);
            let m = b.op(&Op::MatMul, &[x, y])?;
            scaled(b, m, c)
        }),
        // matmul(y, a·c) == matmul(y, a)·c
        scalar_rule("matmul-scale-rhs", "matmul(a, b·c) == matmul(a, b)·c",
            "(matmul ?y (binary mul ?x ?c))", |b, s| {
            let (x, y, c) = (var_class(b, s, "?x")?, var_class(b, s, "?y")?, var_class(b, s, "?c")?);
            let m = b.op(&Op::MatMul, &[y, x])?;
            scaled(b, m, c)
        }),
        // transpose(x·c) == transpose(x)·c
        scalar_rule("transpose-scale", "transpose(x·c) == transpose(x)·c",
            "(transpose ?p (binary mul ?x ?c))", |b, s| {
            let p = b.class(bound(s, "?p")?);
            let (x, c) = (var_class(b, s, "?x")?, var_class(b, s, "?c")?);
            let perm = attr_perm(b, p)?;
            let t = b.op(&Op::Transpose { perm }, &[x])?;
            scaled(b, t, c)
        }),
        // transpose(x)·c == transpose(x·c)
        scalar_rule("scale-into-transpose", "transpose(x)·c == transpose(x·c)",
            "(binary mul (transpose ?p ?x) ?c)", |b, s| {
            let p = b.class(bound(s, "?p")?);
            let (x, c) = (var_class(b, s, "?x")?, var_class(b, s, "?c")?);
            let perm = attr_perm(b, p)?;
            let xc = scaled(b, x, c)?;
            b.op(&Op::Transpose { perm }, &[xc])
        }),
        // reshape(x)·c == reshape(x·c)
        scalar_rule("scale-into-reshape", "reshape(x)·c == reshape(x·c)",
            "(binary mul (reshape ?p ?x) ?c)", |b, s| {
            let p = b.class(bound(s, "?p")?);
            let (x, c) = (var_class(b, s, "?x")?, var_class(b, s, "?c")?);
            let shape = attr_shape(b, p)?;
            let xc = scaled(b, x, c)?;
            b.op(&Op::Reshape { shape }, &[xc])
        }),
        // rope(x)·c == rope(x·c): the rotation is linear in x.
        scalar_rule("scale-into-rope", "rope(x)·c == rope(x·c)",
            "(binary mul (rope ?p ?x) ?c)", |b, s| {
            let p = b.class(bound(s, "?p")?);
            let (x, c) = (var_class(b, s, "?x")?, var_class(b, s, "?c")?);
            // The rope op itself, attributes and all (the scaling comes along).
            let rope = match b.attr_at(p)? {
                Attr::Theta(theta, kind, params) => {
                    let values: Vec<f64> = params.iter().map(|v| v.get()).collect();
                    Op::Rope {
                        theta: theta.get(),
                        scaling: attnc_ir::RopeScaling::from_params(kind, &values)?,
                    }
                }
                _ => return None,
            };
            let xc = scaled(b, x, c)?;
            b.op(&rope, &[xc])
        }),
        // matmul(x, W)·c == matmul(x, W·c): the scale folds into a weight (1/√d into W_q).
        scalar_rule("scale-into-weight", "matmul(x, W)·c == matmul(x, W·c)",
            "(binary mul (matmul ?x ?w) ?c)", |b, s| {
            let w = bound(s, "?w")?;
            if !is_param(b, w) { return None; }
            let (x, w, c) = (var_class(b, s, "?x")?, b.class(w), var_class(b, s, "?c")?);
            let wc = scaled(b, w, c)?;
            b.op(&Op::MatMul, &[x, wc])
        }),
        // (x·c1)·c2 == x·(c1·c2)
        pattern_rule("scale-scale", A, "(x·c1)·c2 == x·(c1·c2)",
            "(binary mul (binary mul ?x ?c1) ?c2)", |eg, _, s| {
            let Some([x, c1, c2]) = classes(s, ["?x", "?c1", "?c2"]) else { return Vec::new() };
            let (Some(v1), Some(v2)) = (scalar(eg, c1), scalar(eg, c2)) else { return Vec::new() };
            let mut b = Build::new(eg);
            let dtype = type_in(eg, c1).map(|t| t.dtype);
            let built = (|| {
                let x = b.class(x);
                let c = b.constant(v1 * v2, dtype?)?;
                scaled(&mut b, x, c)
            })();
            one(built.map(|_| b))
        }),
        // x / c == x·(1/c) for a constant c ≠ 0.
        pattern_rule("div-to-mul", A, "x / c == x·(1/c)", "(binary div ?x ?c)", |eg, _, s| {
            let Some([x, c]) = classes(s, ["?x", "?c"]) else { return Vec::new() };
            let Some(v) = scalar(eg, c) else { return Vec::new() };
            if v == 0.0 || !v.is_finite() { return Vec::new(); }
            let mut b = Build::new(eg);
            let dtype = type_in(eg, c).map(|t| t.dtype);
            let built = (|| {
                let x = b.class(x);
                let c = b.constant(1.0 / v, dtype?)?;
                scaled(&mut b, x, c)
            })();
            one(built.map(|_| b))
        }),
        // exp(x − max(x)) / sum(exp(x − max(x))) == softmax(x), along one kept axis.
        pattern_rule("softmax-expanded", A, "exp(x - max(x)) / sum(exp(x - max(x))) == softmax(x)",
            "(binary div (unary exp (binary sub ?x (reduce ?m ?x))) \
                         (reduce ?s (unary exp (binary sub ?x (reduce ?m ?x)))))",
            |eg, _, s| softmax_of(eg, s, Some(ReduceKind::Max))),
        // exp(x) / sum(exp(x)) == softmax(x), along one kept axis (softmax shifts by the
        // max, which only avoids overflow).
        pattern_rule("softmax-unshifted", A, "exp(x) / sum(exp(x)) == softmax(x)",
            "(binary div (unary exp ?x) (reduce ?s (unary exp ?x)))",
            |eg, _, s| softmax_of(eg, s, None)),
        // transpose(transpose(x, q), p) == transpose(x, q∘p), or x when that is the identity.
        pattern_rule("transpose-transpose", A, "transpose(transpose(x, q), p) == transpose(x, q[p])",
            "(transpose ?p (transpose ?q ?x))", |eg, _, s| {
            let Some([p, q, x]) = classes(s, ["?p", "?q", "?x"]) else { return Vec::new() };
            let (Some(Attr::Perm(p)), Some(Attr::Perm(q))) = (crate::attr_in(eg, p), crate::attr_in(eg, q)) else {
                return Vec::new();
            };
            let perm: Vec<usize> = p.iter().map(|&i| q[i]).collect();
            let mut b = Build::new(eg);
            let xb = b.class(x);
            if perm.iter().enumerate().all(|(i, &p)| i == p) {
                return vec![b];
            }
            one(b.op(&Op::Transpose { perm }, &[xb]).map(|_| b))
        }),
        // reshape(reshape(x, t), s) == reshape(x, s)
        pattern_rule("reshape-reshape", A, "reshape(reshape(x, t), s) == reshape(x, s)",
            "(reshape ?s (reshape ?t ?x))", |eg, _, s| {
            let Some([sh, x]) = classes(s, ["?s", "?x"]) else { return Vec::new() };
            let Some(Attr::Shape(shape)) = crate::attr_in(eg, sh) else { return Vec::new() };
            let mut b = Build::new(eg);
            let xb = b.class(x);
            one(b.op(&Op::Reshape { shape: shape.clone() }, &[xb]).map(|_| b))
        }),
        // reshape(x, shape(x)) == x
        pattern_rule("reshape-identity", A, "reshape(x, shape(x)) == x", "(reshape ?s ?x)", |eg, root, s| {
            let Some(x) = bound(s, "?x") else { return Vec::new() };
            if sizes(eg, x) != sizes(eg, root) { return Vec::new(); }
            let mut b = Build::new(eg);
            b.class(x);
            vec![b]
        }),
        // x·W₁ … x·Wₙ == slices of x·[W₁ … Wₙ]: projections sharing an input become one matmul.
        class_rule("merge-projections", A, "(x·W1, x·W2) == split(x·[W1 W2])",
            merge_search, merge_build),
    ]
}

fn attr_perm(b: &Build, p: super::B) -> Option<Vec<usize>> {
    match b.attr_at(p)? {
        Attr::Perm(perm) => Some(perm.clone()),
        _ => None,
    }
}

fn attr_shape(b: &Build, p: super::B) -> Option<Shape> {
    match b.attr_at(p)? {
        Attr::Shape(s) => Some(s.clone()),
        _ => None,
    }
}

fn is_param(b: &Build, id: Id) -> bool {
    b.egraph()[id]
        .nodes
        .iter()
        .any(|n| matches!(n, Attn::Source(s) if matches!(s.kind, SourceKind::Param(_))))
}

/// `softmax(x)` when `?s` sums (and `?m`, if `max` is asked for, maxes) over the same
/// single axis with the axis kept, so the division broadcasts back along it.
fn softmax_of<'e>(eg: &'e EGraph, s: &Subst, max: Option<ReduceKind>) -> Candidates<'e> {
    let one_axis = |id: Option<Id>, want: ReduceKind| match id.and_then(|i| crate::attr_in(eg, i)) {
        Some(Attr::Reduce {
            kind,
            axes,
            keep_dims: true,
        }) if *kind == want && axes.len() == 1 => Some(axes[0]),
        _ => None,
    };
    let Some(axis) = one_axis(bound(s, "?s"), ReduceKind::Sum) else {
        return Vec::new();
    };
    if max.is_some() && one_axis(bound(s, "?m"), ReduceKind::Max) != Some(axis) {
        return Vec::new();
    }
    let Some(x) = bound(s, "?x") else {
        return Vec::new();
    };
    let mut b = Build::new(eg);
    let xb = b.class(x);
    one(b.op(&Op::Softmax { axis }, &[xb]).map(|_| b))
}

/// The weight of a projection: a rank-2 param.
fn projection_weight(egraph: &EGraph, node: &Attn) -> Option<(Id, Id, String)> {
    let Attn::MatMul([x, w]) = node else {
        return None;
    };
    let w = egraph.find(*w);
    let name = egraph[w].nodes.iter().find_map(|n| match n {
        Attn::Source(s) => match &s.kind {
            SourceKind::Param(name) if s.ty.rank() == 2 => Some(name.clone()),
            _ => None,
        },
        _ => None,
    })?;
    Some((egraph.find(*x), w, name))
}

/// The projections `x·Wᵢ` that share `x` with class `id`'s own `x·W`, ordered by
/// weight name so every sibling builds the same merged matmul.
fn siblings(egraph: &EGraph, id: Id) -> Option<(Id, Vec<(Id, String)>)> {
    let (x, w, _) = egraph[id]
        .nodes
        .iter()
        .find_map(|n| projection_weight(egraph, n))?;
    let rows = sizes(egraph, w)?[0];
    let dtype = type_in(egraph, w)?.dtype;
    let mut ws: Vec<(Id, String)> = Vec::new();
    for parent in egraph[x].parents() {
        let node = egraph.id_to_node(parent);
        if let Some((px, pw, name)) = projection_weight(egraph, node) {
            let same = px == x
                && sizes(egraph, pw).is_some_and(|s| s[0] == rows)
                && type_in(egraph, pw).is_some_and(|t| t.dtype == dtype);
            if same && !ws.iter().any(|(i, _)| *i == pw) {
                ws.push((pw, name));
            }
        }
    }
    ws.sort_by(|a, b| a.1.cmp(&b.1));
    ws.truncate(MAX_MERGED_PROJECTIONS);
    (ws.len() >= 2 && ws.iter().any(|(i, _)| *i == w)).then_some((x, ws))
}

fn merge_search(egraph: &EGraph, id: Id) -> Vec<Subst> {
    match siblings(egraph, id) {
        Some(_) => vec![Subst::default()],
        None => Vec::new(),
    }
}

fn merge_build<'e>(egraph: &'e EGraph, id: Id, _: &Subst) -> Candidates<'e> {
    let Some((x, ws)) = siblings(egraph, id) else {
        return Vec::new();
    };
    let Some((_, own, _)) = egraph[id]
        .nodes
        .iter()
        .find_map(|n| projection_weight(egraph, n))
    else {
        return Vec::new();
    };
    let mut b = Build::new(egraph);
    let built = (|| {
        let mut start = 0;
        let mut range = None;
        let mut parts = Vec::new();
        for (w, _) in &ws {
            let cols = sizes(egraph, *w)?[1];
            if *w == own {
                range = Some((start, start + cols));
            }
            start += cols;
            parts.push(b.class(*w));
        }
        let (lo, hi) = range?;
        let wcat = b.op(&Op::Concat { axis: 1 }, &parts)?;
        let xb = b.class(x);
        let merged = b.op(&Op::MatMul, &[xb, wcat])?;
        let rank = b.ty(merged)?.rank();
        b.op(
            &Op::Slice {
                axis: rank - 1,
                start: Dim::Const(lo),
                end: Dim::Const(hi),
            },
            &[merged],
        )
    })();
    one(built.map(|_| b))
}
