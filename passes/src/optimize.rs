//! The optimizer pipeline: Graph → e-graph → saturate → DAG-extract → Graph, with a
//! report of what happened per layer.

use crate::rules::{Rule, RuleSelection};
use crate::{build_graph_mapped, to_egraph_with, DagChoice, Program, Target};
use attnc_ir::{layer_stats, op_flops, BlockLayout, DType, Graph, NodeId, Op, Result};
use egg::{Runner, StopReason};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// E-nodes at most: a 32-layer model starts near 2,000 and saturates below 10,000 with
/// the shipped rules; the limit only stops a rule set that grows without end.
pub const NODE_LIMIT: usize = 200_000;
/// Rounds of rule application: fusion needs a handful (algebra moves the scale, then
/// fusion, then GQA, then MLA); more rounds only re-find what is there.
pub const ITER_LIMIT: usize = 12;
/// Wall-clock bound on saturation, so a compile never hangs; whatever was found by
/// then is extracted (every e-graph state is a correct program).
pub const TIME_LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    pub rules: RuleSelection,
    pub node_limit: usize,
    pub iter_limit: usize,
    pub time_limit: Duration,
}

impl Options {
    pub fn new(target: Target) -> Options {
        Options {
            target,
            rules: RuleSelection::all(),
            node_limit: NODE_LIMIT,
            iter_limit: ITER_LIMIT,
            time_limit: TIME_LIMIT,
        }
    }
}

/// One layer, before and after.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerReport {
    pub name: String,
    pub before: Vec<String>,
    pub after: Vec<String>,
    pub flops_before: u64,
    pub flops_after: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Estimated time on the target, nanoseconds.
    pub cost_before: f64,
    pub cost_after: f64,
    /// Rules that fired on this layer's e-classes, in order of first firing.
    pub rules: Vec<String>,
    /// Block-sparse attention in the optimized layer: the block size chosen, the
    /// fraction of blocks computed, and the FLOPs that skips against the same
    /// attention computed densely.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<[u64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_density: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flops_saved: Option<u64>,
}

/// `(block, density, FLOPs saved)` of the block-sparse attentions of each layer (the
/// density over all of them, weighted by their blocks).
fn sparsity(graph: &Graph) -> HashMap<String, ([u64; 2], f64, u64)> {
    let mut acc: HashMap<String, ([u64; 2], u64, u64, u64)> = HashMap::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        let Op::Attention(a) = &node.op else { continue };
        let Some(block) = a.block else { continue };
        let ops = graph.operands(id);
        let (q, k) = (graph.sizes(ops[0]), graph.sizes(ops[1]));
        let sizes = [q[0], q[1], q[2], k[2]];
        let bs = block.map(|n| n as usize);
        let Ok(l) = BlockLayout::of(a.mask.as_ref(), &graph.dims, sizes, bs) else {
            continue;
        };
        let args: Vec<Vec<usize>> = ops.iter().map(|&o| graph.sizes(o)).collect();
        let args: Vec<&[usize]> = args.iter().map(Vec::as_slice).collect();
        let out = graph.sizes(id);
        let dense = Op::Attention(attnc_ir::Attention {
            block: None,
            ..a.clone()
        });
        let saved = op_flops(&dense, &args, &out, &graph.dims).saturating_sub(op_flops(
            &node.op,
            &args,
            &out,
            &graph.dims,
        ));
        let name = node.layer.clone().unwrap_or_else(|| "(none)".into());
        let e = acc.entry(name).or_insert((block, 0, 0, 0));
        e.1 += l.computed_blocks();
        e.2 += l.total_blocks();
        e.3 = e.3.saturating_add(saved);
    }
    acc.into_iter()
        .map(|(k, (b, c, t, s))| (k, (b, c as f64 / t.max(1) as f64, s)))
        .collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub layers: Vec<LayerReport>,
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    pub iterations: usize,
    /// `saturated`, or which limit stopped saturation.
    pub stop_reason: String,
    pub saturation_ms: f64,
    pub extraction_ms: f64,
    pub cost_before: f64,
    pub cost_after: f64,
    /// `(rule, applications)` over the whole graph, in rule order.
    pub fired: Vec<(String, usize)>,
}

pub struct Optimized {
    pub graph: Graph,
    pub report: Report,
    /// For each node of the input graph, the node of `graph` that computes the same
    /// value (its e-class), if extraction kept one.
    pub origin: Vec<Option<NodeId>>,
}

/// Estimated time of each node of `graph` on `target`, nanoseconds.
pub fn node_costs(graph: &Graph, target: &Target) -> Vec<f64> {
    graph
        .node_ids()
        .map(|id| {
            let args: Vec<(Vec<usize>, DType)> = graph
                .operands(id)
                .iter()
                .map(|&a| (graph.sizes(a), graph.node(a).ty.dtype))
                .collect();
            let args: Vec<(&[usize], DType)> =
                args.iter().map(|(s, d)| (s.as_slice(), *d)).collect();
            let node = graph.node(id);
            target
                .op_cost(
                    &node.op,
                    &args,
                    (&graph.sizes(id), node.ty.dtype),
                    &graph.dims,
                )
                .ns()
        })
        .collect()
}

/// Estimated time per layer and in all, nanoseconds.
fn layer_costs(graph: &Graph, target: &Target) -> (HashMap<String, f64>, f64) {
    let mut out: HashMap<String, f64> = HashMap::new();
    let mut total = 0.0;
    for (i, c) in node_costs(graph, target).into_iter().enumerate() {
        let node = graph.node(NodeId::new(i));
        let name = node.layer.clone().unwrap_or_else(|| "(none)".into());
        *out.entry(name).or_default() += c;
        total += c;
    }
    (out, total)
}

/// How saturation went.
pub(crate) struct Saturation {
    pub stop_reason: String,
    pub iterations: usize,
    pub ms: f64,
}

/// Runs `rules` on `program` under the limits of `options`.
pub(crate) fn saturate(program: &mut Program, rules: &[Rule], options: &Options) -> Saturation {
    let t = Instant::now();
    let runner = Runner::default()
        .with_egraph(std::mem::take(&mut program.egraph))
        .with_node_limit(options.node_limit)
        .with_iter_limit(options.iter_limit)
        .with_time_limit(options.time_limit)
        .run(rules.iter().map(|r| &r.rewrite));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let stop_reason = match &runner.stop_reason {
        Some(StopReason::Saturated) | None => "saturated".to_string(),
        Some(StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
        Some(StopReason::NodeLimit(n)) => format!("node limit ({n} e-nodes)"),
        Some(StopReason::TimeLimit(s)) => format!("time limit ({s:.1} s)"),
        Some(StopReason::Other(s)) => s.clone(),
    };
    let iterations = runner.iterations.len();
    program.egraph = runner.egraph;
    Saturation {
        stop_reason,
        iterations,
        ms,
    }
}

/// The cheapest graph in `program` on `target` (DAG cost). Every original node has a
/// finite, acyclic choice, so the fallback to a class's first node is never needed
/// for what the outputs reach.
pub(crate) fn extract_cheapest(
    program: &Program,
    target: &Target,
) -> Result<(Graph, Vec<Option<NodeId>>)> {
    let egraph = &program.egraph;
    let choice = DagChoice::new(egraph, |id, node| target.node_cost(egraph, id, node));
    build_graph_mapped(program, |id| {
        choice
            .node(egraph, id)
            .unwrap_or_else(|| &egraph[egraph.find(id)].nodes[0])
    })
}

/// Optimize `graph` for `options.target`.
pub fn optimize(graph: &Graph, options: &Options) -> Result<Optimized> {
    optimize_with_rules(graph, options, &options.rules.rules())
}

/// [`optimize`] with `rules` instead of `options.rules` (how tests try rule sets that
/// are not shipped, such as a deliberately wrong rule).
pub fn optimize_with_rules(graph: &Graph, options: &Options, rules: &[Rule]) -> Result<Optimized> {
    let mut program = to_egraph_with(graph, false)?;
    let saturation = saturate(&mut program, rules, options);
    let target = &options.target;
    let t = Instant::now();
    let (optimized, origin) = extract_cheapest(&program, target)?;
    let extraction_ms = t.elapsed().as_secs_f64() * 1e3;
    let egraph = &program.egraph;

    // What fired, per layer and overall.
    let layer_of = program.layer_map();
    let mut per_layer: HashMap<String, Vec<String>> = HashMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (rule, class) in &egraph.analysis.fired {
        let rule = rule.to_string();
        *counts.entry(rule.clone()).or_default() += 1;
        let layer = layer_of
            .get(&egraph.find(*class))
            .cloned()
            .flatten()
            .unwrap_or_else(|| "(none)".into());
        let list = per_layer.entry(layer).or_default();
        if !list.contains(&rule) {
            list.push(rule);
        }
    }
    let fired: Vec<(String, usize)> = rules
        .iter()
        .filter_map(|r| counts.get(r.name).map(|&n| (r.name.to_string(), n)))
        .collect();

    let (before, after) = (layer_stats(graph), layer_stats(&optimized));
    let sparse = sparsity(&optimized);
    let (cost_b, total_b) = layer_costs(graph, target);
    let (cost_a, total_a) = layer_costs(&optimized, target);
    let mut layers: Vec<LayerReport> = Vec::new();
    for l in &before {
        let a = after.iter().find(|a| a.name == l.name);
        layers.push(LayerReport {
            name: l.name.clone(),
            before: l.ops.clone(),
            after: a.map(|a| a.ops.clone()).unwrap_or_default(),
            flops_before: l.flops,
            flops_after: a.map_or(0, |a| a.flops),
            bytes_before: l.bytes,
            bytes_after: a.map_or(0, |a| a.bytes),
            cost_before: cost_b.get(&l.name).copied().unwrap_or(0.0),
            cost_after: cost_a.get(&l.name).copied().unwrap_or(0.0),
            rules: per_layer.remove(&l.name).unwrap_or_default(),
            block: sparse.get(&l.name).map(|s| s.0),
            block_density: sparse.get(&l.name).map(|s| s.1),
            flops_saved: sparse.get(&l.name).map(|s| s.2),
        });
    }
    for a in after
        .iter()
        .filter(|a| !before.iter().any(|b| b.name == a.name))
    {
        layers.push(LayerReport {
            name: a.name.clone(),
            before: Vec::new(),
            after: a.ops.clone(),
            flops_before: 0,
            flops_after: a.flops,
            bytes_before: 0,
            bytes_after: a.bytes,
            cost_before: 0.0,
            cost_after: cost_a.get(&a.name).copied().unwrap_or(0.0),
            rules: per_layer.remove(&a.name).unwrap_or_default(),
            block: sparse.get(&a.name).map(|s| s.0),
            block_density: sparse.get(&a.name).map(|s| s.1),
            flops_saved: sparse.get(&a.name).map(|s| s.2),
        });
    }
    let report = Report {
        target: target.name.clone(),
        egraph_nodes: egraph.total_number_of_nodes(),
        egraph_classes: egraph.number_of_classes(),
        iterations: saturation.iterations,
        stop_reason: saturation.stop_reason,
        saturation_ms: saturation.ms,
        extraction_ms,
        cost_before: total_b,
        cost_after: total_a,
        fired,
        layers,
    };
    Ok(Optimized {
        graph: optimized,
        report,
        origin,
    })
}
