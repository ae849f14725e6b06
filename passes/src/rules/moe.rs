//! `moe`: a dense-gated mixture of experts into the sparse dispatch.
//!
//! The reference form of a mixture applies every expert to every token and weights
//! the results by a gate that is zero for the experts a token was not routed to:
//! `Σ_e gate[:, e] · FFN_e(x)`, `E` times the FLOPs of one MLP. Where the gate is
//! provably sparse — the analysis bounds its non-zeros per token (a top-k one-hot
//! has `k`) or per expert (expert choice) — `moe-dispatch` offers `moe_dispatch`,
//! which computes each expert only on the tokens routed to it (`k` times one MLP).
//! Both compute the same sum: the terms dropped are `0 · FFN_e(x)`, zero wherever the
//! experts are finite. `moe-shared` folds shared experts (an MLP of the same kind on
//! every token, optionally scaled by a per-token gate) into the dispatch, so routed and
//! shared results are combined in one pass.

use super::{class_rule, found, sizes, Build, Family, Rule};
use crate::{attr_in, Attn, Attr, EGraph};
use attnc_ir::{BinaryOp, MoeChoice, MoeDispatch, MoeShared, Op, ReduceKind, UnaryOp};
use egg::Id;

const M: Family = Family::Moe;

#[rustfmt::skip]
pub fn rules() -> Vec<Rule> {
    vec![
        // Σ_e gate[:, e]·FFN_e(x) == moe_dispatch(x, gate, W) where gate is k-sparse.
        class_rule("moe-dispatch", M,
            "Σ_e gate[:, e]·FFN_e(x) == moe_dispatch(x, gate, W) (gate k-sparse per token or expert)",
            |eg, id| found(!mixtures(eg, id).is_empty()),
            |eg, id, _| mixtures(eg, id).iter().filter_map(|m| dispatch(eg, m)).collect()),
        // moe_dispatch(x, gate, W) + s·FFN_s(x) == moe_dispatch(x, gate, W; shared W_s, s)
        class_rule("moe-shared", M,
            "moe_dispatch(x, gate, W) + s·FFN_s(x) == moe_dispatch(x, gate, W; shared FFN_s, s)",
            |eg, id| found(!with_shared(eg, id).is_empty()),
            |eg, id, _| with_shared(eg, id).iter().filter_map(|s| fold_shared(eg, s)).collect()),
    ]
}

// ---------------------------------------------------------------------------------
// Reading MLPs.

/// One MLP on `x`: `(act(x·w_gate) ⊙ x·w_up)·w_down` when gated, `act(x·w_up)·w_down`
/// otherwise — over stacked experts (`w [E, ·, ·]`) or a single MLP (`w [·, ·]`).
#[derive(Clone, Debug)]
struct Mlp {
    x: Id,
    activation: UnaryOp,
    /// `[w_gate,] w_up, w_down`.
    weights: Vec<Id>,
}

/// Both orders `(node, x, y)` of every `x op y` in class `id` (a commutative op).
fn binary_nodes(eg: &EGraph, id: Id, op: BinaryOp) -> Vec<(&Attn, Id, Id)> {
    let mut out = Vec::new();
    for n in &eg[id].nodes {
        if let Attn::Binary([a, x, y]) = n {
            if attr_in(eg, *a) == Some(&Attr::Binary(op)) {
                let (x, y) = (eg.find(*x), eg.find(*y));
                out.push((n, x, y));
                out.push((n, y, x));
            }
        }
    }
    out
}

fn binary(eg: &EGraph, id: Id, op: BinaryOp) -> Vec<(Id, Id)> {
    binary_nodes(eg, id, op)
        .into_iter()
        .map(|(_, x, y)| (x, y))
        .collect()
}

fn matmuls(eg: &EGraph, id: Id) -> Vec<(Id, Id)> {
    eg[id]
        .nodes
        .iter()
        .filter_map(|n| match n {
            Attn::MatMul([a, b]) => Some((eg.find(*a), eg.find(*b))),
            _ => None,
        })
        .collect()
}

/// `(activation, x)` of every expert activation `act(x)` in class `id`.
fn activations(eg: &EGraph, id: Id) -> Vec<(UnaryOp, Id)> {
    eg[id]
        .nodes
        .iter()
        .filter_map(|n| match n {
            Attn::Unary([a, x]) => match attr_in(eg, *a) {
                Some(Attr::Unary(
                    u @ (UnaryOp::Silu | UnaryOp::Gelu | UnaryOp::GeluTanh | UnaryOp::Relu),
                )) => Some((*u, eg.find(*x))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Every MLP whose result is class `id`; `stacked` selects expert weights `[E, ·, ·]`
/// (else single `[·, ·]`); `x` must be `[T, D]`.
fn mlps(eg: &EGraph, id: Id, stacked: bool) -> Vec<Mlp> {
    let rank = if stacked { 3 } else { 2 };
    let weight = |w: Id| sizes(eg, w).is_some_and(|s| s.len() == rank);
    let input = |x: Id| sizes(eg, x).is_some_and(|s| s.len() == 2);
    let mut out = Vec::new();
    for (h, down) in matmuls(eg, id) {
        if !weight(down) {
            continue;
        }
        // Gated: act(x·w_gate) ⊙ x·w_up.
        for (a, u) in binary(eg, h, BinaryOp::Mul) {
            for (activation, g) in activations(eg, a) {
                for (x, wg) in matmuls(eg, g) {
                    for (x2, wu) in matmuls(eg, u) {
                        if x == x2 && input(x) && weight(wg) && weight(wu) {
                            out.push(Mlp {
                                x,
                                activation,
                                weights: vec![wg, wu, down],
                            });
                        }
                    }
                }
            }
        }
        // Plain: act(x·w_up).
        for (activation, u) in activations(eg, h) {
            for (x, wu) in matmuls(eg, u) {
                if input(x) && weight(wu) {
                    out.push(Mlp {
                        x,
                        activation,
                        weights: vec![wu, down],
                    });
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// The dense-gated mixture.

/// A match of `reduce_sum_0(FFN_e(x) ⊙ reshape(transpose(gate)))`.
struct Mixture {
    /// The `reduce_sum` node matched.
    node: Attn,
    mlp: Mlp,
    gate: Id,
    choice: MoeChoice,
    k: u64,
}

/// The gate `[T, E]` behind `g [E, T, 1] = reshape(transpose(gate))`.
fn gates(eg: &EGraph, g: Id) -> Vec<Id> {
    let mut out = Vec::new();
    for n in &eg[g].nodes {
        let Attn::Reshape([_, t]) = n else { continue };
        for tn in &eg[eg.find(*t)].nodes {
            if let Attn::Transpose([p, gate]) = tn {
                if attr_in(eg, *p) == Some(&Attr::Perm(vec![1, 0])) {
                    out.push(eg.find(*gate));
                }
            }
        }
    }
    out
}

/// The tighter of the gate's bounds, as `(choice, k)`: the one that selects fewer
/// pairs.
fn gate_bound(eg: &EGraph, gate: Id) -> Option<(MoeChoice, u64)> {
    let s = sizes(eg, gate)?;
    let (t, e) = (s[0], s[1]);
    let f = eg[gate].data.sparsity;
    let token = f.row.map(|k| (MoeChoice::Token, k, t.saturating_mul(k)));
    let expert = f.col.map(|k| (MoeChoice::Expert, k, e.saturating_mul(k)));
    [token, expert]
        .into_iter()
        .flatten()
        .min_by_key(|&(_, _, pairs)| pairs)
        .map(|(choice, k, _)| (choice, k))
}

fn mixtures(eg: &EGraph, id: Id) -> Vec<Mixture> {
    let Some(out) = sizes(eg, id) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for n in &eg[id].nodes {
        let Attn::Reduce([a, w]) = n else { continue };
        let sum_over_experts = Attr::Reduce {
            kind: ReduceKind::Sum,
            axes: vec![0],
            keep_dims: false,
        };
        if attr_in(eg, *a) != Some(&sum_over_experts) {
            continue;
        }
        for (o, g) in binary(eg, eg.find(*w), BinaryOp::Mul) {
            for gate in gates(eg, g) {
                let Some((choice, k)) = gate_bound(eg, gate) else {
                    continue;
                };
                for mlp in mlps(eg, o, true) {
                    // x [T, D], gate [T, E], the experts [E, ·, ·]: the result [T, D].
                    let (x, gs) = (sizes(eg, mlp.x), sizes(eg, gate));
                    let experts = sizes(eg, mlp.weights[0]).map(|s| s[0]);
                    if x.as_ref() == Some(&out)
                        && gs.is_some_and(|g| g[0] == out[0] && Some(g[1]) == experts)
                    {
                        found.push(Mixture {
                            node: n.clone(),
                            mlp,
                            gate,
                            choice,
                            k,
                        });
                    }
                }
            }
        }
    }
    found
}

fn dispatch<'e>(eg: &'e EGraph, m: &Mixture) -> Option<Build<'e>> {
    let mut b = Build::replacing(eg, &m.node);
    let op = Op::MoeDispatch(MoeDispatch {
        activation: m.mlp.activation,
        gated: m.mlp.weights.len() == 3,
        choice: m.choice,
        k: m.k,
        shared: MoeShared::None,
    });
    let mut operands = vec![b.class(m.mlp.x), b.class(m.gate)];
    operands.extend(m.mlp.weights.iter().map(|&w| b.class(w)));
    b.op(&op, &operands)?;
    Some(b)
}

// ---------------------------------------------------------------------------------
// Shared experts.

struct WithShared {
    /// The `add` node matched.
    node: Attn,
    routed: MoeDispatch,
    operands: Vec<Id>,
    mlp: Mlp,
    /// The per-token scale `[T, 1]`, if any.
    scale: Option<Id>,
}

fn with_shared(eg: &EGraph, id: Id) -> Vec<WithShared> {
    let mut out = Vec::new();
    for (add, d, z) in binary_nodes(eg, id, BinaryOp::Add) {
        for n in &eg[d].nodes {
            let Attn::MoeDispatch(c) = n else { continue };
            let Some(Attr::Moe(routed)) = attr_in(eg, c[0]) else {
                continue;
            };
            if routed.shared != MoeShared::None {
                continue;
            }
            let operands: Vec<Id> = c[1..].iter().map(|&o| eg.find(o)).collect();
            let fits = |mlp: &Mlp| {
                mlp.x == operands[0]
                    && mlp.activation == routed.activation
                    && (mlp.weights.len() == 3) == routed.gated
            };
            for mlp in mlps(eg, z, false).into_iter().filter(fits) {
                out.push(WithShared {
                    node: add.clone(),
                    routed: *routed,
                    operands: operands.clone(),
                    mlp,
                    scale: None,
                });
            }
            let tokens = sizes(eg, operands[0]).map(|s| s[0]);
            for (s, y) in binary(eg, z, BinaryOp::Mul) {
                if sizes(eg, s) != tokens.map(|t| vec![t, 1]) {
                    continue;
                }
                for mlp in mlps(eg, y, false).into_iter().filter(fits) {
                    out.push(WithShared {
                        node: add.clone(),
                        routed: *routed,
                        operands: operands.clone(),
                        mlp,
                        scale: Some(s),
                    });
                }
            }
        }
    }
    out
}

fn fold_shared<'e>(eg: &'e EGraph, s: &WithShared) -> Option<Build<'e>> {
    let mut b = Build::replacing(eg, &s.node);
    let op = Op::MoeDispatch(MoeDispatch {
        shared: if s.scale.is_some() {
            MoeShared::Gated
        } else {
            MoeShared::Always
        },
        ..s.routed
    });
    let mut operands: Vec<_> = s.operands.iter().map(|&o| b.class(o)).collect();
    operands.extend(s.mlp.weights.iter().map(|&w| b.class(w)));
    operands.extend(s.scale.map(|g| b.class(g)));
    b.op(&op, &operands)?;
    Some(b)
}
