//! `Graph` to e-graph and back. Every IR node becomes an e-node; identical subterms
//! are hash-consed into one class (common-subexpression elimination, which is exact).
//! Extraction picks one node per class with a cost function and rebuilds a `Graph`
//! through `GraphBuilder`, which re-infers and checks every type.

use crate::{attr_in, attr_of, Attn, EGraph, Source, SourceKind, TypeAnalysis};
use attnc_ir::{verify, Graph, GraphBuilder, IrError, NodeId, Result};
use egg::{AstSize, CostFunction, Extractor, Id};
use std::collections::HashMap;

/// A graph held in an e-graph: the roots of its outputs plus what the e-graph itself
/// does not keep (the graph's name, the order of its sources, the layer of each class).
pub struct Program {
    pub egraph: EGraph,
    pub name: String,
    /// `(output name, root class)`, in the graph's output order.
    pub outputs: Vec<(String, Id)>,
    /// Every source class, in the graph's order: inputs and params keep their order,
    /// and a weight nothing uses is kept (its binding is still expected).
    sources: Vec<Id>,
    /// `(class when added, layer)` in insertion order: a class's layer is the one of
    /// the first node added to it.
    layers: Vec<(Id, Option<String>)>,
}

/// The e-graph of `graph`, which is verified first.
pub fn to_egraph(graph: &Graph) -> Result<Program> {
    to_egraph_with(graph, false)
}

/// [`to_egraph`], recording why classes merge when `explain` is set (egg explanations
/// must be on before the first node is added).
pub fn to_egraph_with(graph: &Graph, explain: bool) -> Result<Program> {
    verify(graph)?;
    let mut egraph = EGraph::new(TypeAnalysis::new(graph.dims.clone()));
    if explain {
        egraph = egraph.with_explanations_enabled();
    }
    let class = add_nodes(graph, graph.len(), |enode| egraph.add(enode))?;
    let mut sources = Vec::new();
    let mut layers = Vec::with_capacity(graph.len());
    for nid in graph.node_ids() {
        let node = graph.node(nid);
        if node.op.is_source() {
            sources.push(class[nid.index()]);
        }
        layers.push((class[nid.index()], node.layer.clone()));
    }
    egraph.rebuild();
    let outputs = graph
        .outputs()
        .iter()
        .map(|(name, id)| (name.clone(), class[id.index()]))
        .collect();
    Ok(Program {
        egraph,
        name: graph.name.clone(),
        outputs,
        sources,
        layers,
    })
}

/// Adds the first `count` nodes of `graph` as e-nodes through `add` (an e-graph's or
/// a `RecExpr`'s), operands before users; returns the id each node got.
pub(crate) fn add_nodes(
    graph: &Graph,
    count: usize,
    mut add: impl FnMut(Attn) -> Id,
) -> Result<Vec<Id>> {
    let mut ids: Vec<Id> = Vec::with_capacity(count);
    for nid in graph.node_ids().take(count) {
        let node = graph.node(nid);
        let id = match Source::of(&node.op, &node.ty) {
            Some(source) => add(Attn::Source(source)),
            None => {
                let mut children: Vec<Id> = attr_of(&node.op)
                    .map(|a| add(Attn::Attr(a)))
                    .into_iter()
                    .collect();
                children.extend(graph.operands(nid).iter().map(|o| ids[o.index()]));
                let enode = Attn::of_op(&node.op, &children).ok_or_else(|| IrError::Type {
                    layer: node.layer.clone(),
                    op: node.op.name().to_string(),
                    message: format!("%{}: operands do not fit the op", nid.index()),
                })?;
                add(enode)
            }
        };
        ids.push(id);
    }
    Ok(ids)
}

impl Program {
    /// The layer of every class (canonical id) that held an original node: the layer
    /// of the first node added to it.
    pub fn layer_map(&self) -> HashMap<Id, Option<String>> {
        let mut layer_of: HashMap<Id, Option<String>> = HashMap::new();
        for (id, layer) in &self.layers {
            layer_of
                .entry(self.egraph.find(*id))
                .or_insert_with(|| layer.clone());
        }
        layer_of
    }
}

/// The cheapest graph in `program` by e-node count ([`AstSize`]).
pub fn extract(program: &Program) -> Result<Graph> {
    extract_with(program, AstSize)
}

/// The graph egg's tree-cost extractor picks with `cost`.
pub fn extract_with<CF: CostFunction<Attn>>(program: &Program, cost: CF) -> Result<Graph> {
    let extractor = Extractor::new(&program.egraph, cost);
    build_graph(program, |id| extractor.find_best_node(id))
}

/// The graph made of the node `choose` picks in each class: one node per class
/// reachable from the sources and outputs, added in a topological order (each source
/// in the original order, then each output's operands depth first), with its class's
/// layer, and the outputs in their order. A choice that forms a cycle is an error.
pub fn build_graph<'a>(program: &'a Program, choose: impl Fn(Id) -> &'a Attn) -> Result<Graph> {
    build_graph_mapped(program, choose).map(|(graph, _)| graph)
}

/// [`build_graph`], also giving, for each node of the graph the program was made
/// from, the node of the new graph that computes its class (if one was built): the
/// correspondence translation validation compares values through.
pub fn build_graph_mapped<'a>(
    program: &'a Program,
    choose: impl Fn(Id) -> &'a Attn,
) -> Result<(Graph, Vec<Option<NodeId>>)> {
    let egraph = &program.egraph;
    let layer_of = program.layer_map();
    // A class a rewrite created has no layer of its own: it joins its first user's.
    let mut inherited: HashMap<Id, Option<String>> = HashMap::new();
    let mut builder = GraphBuilder::new(program.name.clone(), egraph.analysis.dims.clone());
    let mut built: HashMap<Id, NodeId> = HashMap::new();
    // What the outputs use, so nodes come out in the original order where they can.
    let mut used: std::collections::HashSet<Id> = std::collections::HashSet::new();
    let mut todo: Vec<Id> = program
        .outputs
        .iter()
        .map(|(_, id)| egraph.find(*id))
        .collect();
    while let Some(id) = todo.pop() {
        if used.insert(id) {
            todo.extend(choose(id).operands().iter().map(|&o| egraph.find(o)));
        }
    }
    // Inputs and params stay even when unused (their bindings are still expected);
    // constants and masks nothing reads go.
    let sources: std::collections::HashSet<Id> = program
        .sources
        .iter()
        .map(|&id| egraph.find(id))
        .filter(|&id| {
            matches!(choose(id), Attn::Source(s)
                if matches!(s.kind, SourceKind::Input(_) | SourceKind::Param(_)))
        })
        .collect();
    let originals: Vec<Id> = program
        .layers
        .iter()
        .map(|(id, _)| egraph.find(*id))
        .filter(|id| used.contains(id) || sources.contains(id))
        .collect();
    let roots = originals
        .iter()
        .chain(program.outputs.iter().map(|(_, id)| id));
    // Post-order without recursion: models are deep. `(class, operands done)`.
    let mut stack: Vec<(Id, bool)> = Vec::new();
    let mut open: std::collections::HashSet<Id> = std::collections::HashSet::new();
    for &root in roots {
        stack.push((egraph.find(root), false));
        while let Some((id, ready)) = stack.pop() {
            if built.contains_key(&id) {
                continue;
            }
            let node = choose(id);
            if !ready {
                if !open.insert(id) {
                    return Err(IrError::Type {
                        layer: layer_of.get(&id).cloned().flatten(),
                        op: node.to_string(),
                        message: "internal error: the extracted program has a cycle".into(),
                    });
                }
                stack.push((id, true));
                let layer = layer_of
                    .get(&id)
                    .or_else(|| inherited.get(&id))
                    .cloned()
                    .flatten();
                for &o in node.operands().iter().rev() {
                    let o = egraph.find(o);
                    if !layer_of.contains_key(&o) {
                        inherited.entry(o).or_insert_with(|| layer.clone());
                    }
                    if !built.contains_key(&o) {
                        stack.push((o, false));
                    }
                }
                continue;
            }
            let attr = node.attr().and_then(|a| attr_in(egraph, a));
            let op = node.to_op(attr).map_err(|message| IrError::Type {
                layer: None,
                op: node.to_string(),
                message,
            })?;
            let operands: Vec<NodeId> = node
                .operands()
                .iter()
                .map(|o| built[&egraph.find(*o)])
                .collect();
            let declared = match node {
                Attn::Source(s) => Some(s.ty.clone()),
                _ => None,
            };
            let layer = layer_of.get(&id).or_else(|| inherited.get(&id));
            builder.set_layer(layer.cloned().flatten());
            let nid = builder.add(op, &operands, declared)?;
            built.insert(id, nid);
            open.remove(&id);
        }
    }
    builder.set_layer(None);
    for (name, id) in &program.outputs {
        builder.output(name.clone(), built[&egraph.find(*id)])?;
    }
    let origin = program
        .layers
        .iter()
        .map(|(id, _)| built.get(&egraph.find(*id)).copied())
        .collect();
    Ok((builder.finish()?, origin))
}
