//! `attnc explain`: the chain of rewrites that turns one layer's plain form into its
//! optimized form, from egg's explanations, printed as one step per rule with the
//! sub-term it rewrote before and after.

use crate::optimize::{extract_cheapest, saturate};
use crate::{to_egraph_with, Attn, Options, SourceKind};
use attnc_ir::{Graph, GraphBuilder, IrError, NodeId, Op, Result};
use egg::{FlatTerm, Id, RecExpr};
use std::collections::HashMap;

/// Sub-terms deeper than this print as `…`: a step shows where it happened, not the
/// whole layer.
const SHOW_DEPTH: usize = 4;

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub rule: String,
    /// The identity the rule implements.
    pub identity: String,
    /// Whether the rule was applied right to left (an equality used backwards).
    pub backward: bool,
    pub before: String,
    pub after: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub layer: String,
    /// Each layer output: `(before, after)` in full.
    pub outputs: Vec<(String, String)>,
    pub steps: Vec<Step>,
}

/// The layer `layer` of `graph` as a graph of its own: values from other layers come
/// in as inputs named `%N` (their node number); values other layers use go out.
pub fn layer_graph(graph: &Graph, layer: &str) -> Result<Graph> {
    let inside = |id: NodeId| graph.node(id).layer.as_deref() == Some(layer);
    let mut b = GraphBuilder::new(format!("{}:{layer}", graph.name), graph.dims.clone());
    b.set_layer(Some(layer.to_string()));
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    let mut any = false;
    for id in graph.node_ids().filter(|&id| inside(id)) {
        any = true;
        let mut operands = Vec::new();
        for o in graph.operands(id) {
            let value = match map.get(&o) {
                Some(&v) => v,
                None => {
                    let ty = graph.node(o).ty.clone();
                    let input = b.input(format!("%{}", o.index()), ty.shape, ty.dtype)?;
                    map.insert(o, input);
                    input
                }
            };
            operands.push(value);
        }
        let node = graph.node(id);
        let declared = node.op.is_source().then(|| node.ty.clone());
        map.insert(id, b.add(node.op.clone(), &operands, declared)?);
    }
    if !any {
        let layers: Vec<String> = attnc_ir::layer_stats(graph)
            .into_iter()
            .map(|l| l.name)
            .collect();
        return Err(IrError::Spec {
            layer: Some(layer.to_string()),
            message: format!("no layer `{layer}`; the layers are {}", layers.join(", ")),
        });
    }
    let graph_outputs: Vec<NodeId> = graph.outputs().iter().map(|(_, id)| *id).collect();
    for id in graph.node_ids().filter(|&id| inside(id)) {
        let used_outside = graph.users(id).into_iter().any(|u| !inside(u));
        if used_outside || graph_outputs.contains(&id) {
            b.output(format!("%{}", id.index()), map[&id])?;
        }
    }
    b.finish()
}

/// The expression of `graph`'s node `root`, shared sub-terms kept shared.
fn expr_of(graph: &Graph, root: NodeId) -> Result<RecExpr<Attn>> {
    let mut expr = RecExpr::default();
    crate::convert::add_nodes(graph, root.index() + 1, |n| expr.add(n))?;
    Ok(expr)
}

/// Explain how `layer` of `graph` was optimized under `options`.
pub fn explain(graph: &Graph, layer: &str, options: &Options) -> Result<Explanation> {
    let sub = layer_graph(graph, layer)?;
    let mut program = to_egraph_with(&sub, true)?;
    let rules = options.rules.rules();
    saturate(&mut program, &rules, options);
    let (optimized, _) = extract_cheapest(&program, &options.target)?;
    let identities: HashMap<&str, &str> = rules.iter().map(|r| (r.name, r.identity)).collect();
    let mut out = Explanation {
        layer: layer.to_string(),
        outputs: Vec::new(),
        steps: Vec::new(),
    };
    for ((_, a), (_, b)) in sub.outputs().iter().zip(optimized.outputs()) {
        let before = expr_of(&sub, *a)?;
        let after = expr_of(&optimized, *b)?;
        out.outputs.push((show_expr(&before), show_expr(&after)));
        let mut explanation = program.egraph.explain_equivalence(&before, &after);
        let flat = explanation.make_flat_explanation().clone();
        for pair in flat.windows(2) {
            if let Some(step) = rewritten(&pair[0], &pair[1]) {
                let rule = step.0.to_string();
                out.steps.push(Step {
                    identity: identities
                        .get(rule.as_str())
                        .copied()
                        .unwrap_or("")
                        .to_string(),
                    rule,
                    backward: step.1,
                    before: show_flat(step.2, 0),
                    after: show_flat(step.3, 0),
                });
            }
        }
    }
    Ok(out)
}

/// The rule, direction, and the sub-terms before and after of the one rewrite
/// between two consecutive flat terms.
fn rewritten<'a>(
    prev: &'a FlatTerm<Attn>,
    next: &'a FlatTerm<Attn>,
) -> Option<(egg::Symbol, bool, &'a FlatTerm<Attn>, &'a FlatTerm<Attn>)> {
    if let Some(r) = next.forward_rule {
        return Some((r, false, prev, next));
    }
    if let Some(r) = next.backward_rule {
        return Some((r, true, prev, next));
    }
    prev.children
        .iter()
        .zip(&next.children)
        .find_map(|(p, n)| rewritten(p, n))
}

/// One node's label: the op with its attribute, or a source's name.
fn label(node: &Attn, attr: Option<&crate::Attr>) -> String {
    match node {
        Attn::Source(s) => match &s.kind {
            // `layers.0.attn.wq` → `attn.wq`: the layer is named above the steps.
            SourceKind::Param(n) => {
                let cut = n.rmatch_indices('.').nth(1).map_or(0, |(i, _)| i + 1);
                n[cut..].to_string()
            }
            SourceKind::Input(n) => n.clone(),
            SourceKind::Const(v) => v.to_string(),
            SourceKind::Iota(a) => format!("iota{a}"),
            SourceKind::Mask(e) => format!("mask\"{e}\""),
            SourceKind::Features(seed) => format!("random_features{seed}"),
        },
        Attn::Attr(a) => a.to_string(),
        _ => match node.to_op(attr) {
            Ok(op) => op_label(&op, attr),
            Err(_) => node.to_string(),
        },
    }
}

fn op_label(op: &Op, attr: Option<&crate::Attr>) -> String {
    match (op, attr) {
        (Op::Binary(_) | Op::Unary(_) | Op::Compare(_), _) | (_, None) => op.name().to_string(),
        (_, Some(a)) => format!("{}[{a}]", op.name()),
    }
}

fn show_flat(t: &FlatTerm<Attn>, depth: usize) -> String {
    if depth > SHOW_DEPTH {
        return "…".into();
    }
    let attr = match (t.node.attr(), t.children.first()) {
        (Some(_), Some(first)) => match &first.node {
            Attn::Attr(a) => Some(a),
            _ => None,
        },
        _ => None,
    };
    let skip = attr.is_some() as usize;
    let head = label(&t.node, attr);
    if t.children.len() <= skip {
        return head;
    }
    let args: Vec<String> = t.children[skip..]
        .iter()
        .map(|c| show_flat(c, depth + 1))
        .collect();
    format!("{head}({})", args.join(", "))
}

fn show_expr(e: &RecExpr<Attn>) -> String {
    fn go(e: &RecExpr<Attn>, id: Id, depth: usize) -> String {
        if depth > SHOW_DEPTH + 2 {
            return "…".into();
        }
        let node = &e[id];
        let attr = node.attr().and_then(|a| match &e[a] {
            Attn::Attr(a) => Some(a),
            _ => None,
        });
        let head = label(node, attr);
        let ops = node.operands();
        if ops.is_empty() {
            return head;
        }
        let args: Vec<String> = ops.iter().map(|&c| go(e, c, depth + 1)).collect();
        format!("{head}({})", args.join(", "))
    }
    go(e, Id::from(e.as_ref().len() - 1), 0)
}
