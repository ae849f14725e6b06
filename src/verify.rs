//! Translation validation (`compile --verify`): the original graph, the optimized
//! graph and, on the CPU, the compiled code run on the same seeded random inputs, and
//! every layer's results are compared. The first layer whose results disagree is
//! named, with the stage that broke it (the rewrites or the backend).
//!
//! A layer's results are its *boundary*: the values it hands to another layer or to
//! the graph's outputs. The optimizer keeps, for every original node, the node of the
//! optimized graph that computes its e-class ([`passes::Optimized::origin`]), so each
//! boundary value is compared with exactly the value the rewrites claim is equal.

use crate::{available_memory, default_tolerance, err, gib, Result};
use attnc_ir::{interp, Graph, NodeId, Tensor};
use serde::Serialize;
use std::collections::BTreeMap;

/// Options of [`verify`].
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    pub seed: u64,
    /// Largest error accepted, relative to the largest magnitude of the value compared
    /// (at least 1); default [`default_tolerance`].
    pub tol: Option<f64>,
    /// Also compile the optimized graph for this CPU and compare its results.
    pub compiled: bool,
    /// Threads of the compiled code (default: all cores).
    pub threads: Option<usize>,
}

/// One layer's results, compared.
#[derive(Clone, Debug, Serialize)]
pub struct LayerCheck {
    pub layer: String,
    /// Boundary values compared (those the optimized graph still computes).
    pub values: usize,
    /// Largest |optimized − original| over them, both in the f64 interpreter.
    pub optimized_err: f64,
    /// Largest |compiled − original| over them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compiled_err: Option<f64>,
}

/// Where the optimized program first departs from the original.
#[derive(Clone, Debug, Serialize)]
pub struct Divergence {
    pub layer: String,
    /// `optimized` (the rewrites changed the value) or `compiled` (the backend did).
    pub stage: &'static str,
    /// The original node whose value differs, and its op.
    pub node: usize,
    pub op: String,
    pub max_abs_err: f64,
    /// The error allowed for this value: `tol · max(1, max |value|)`.
    pub bound: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub model: String,
    /// The sizes verified at.
    pub dims: BTreeMap<String, u64>,
    pub seed: u64,
    pub tol: f64,
    pub layers: Vec<LayerCheck>,
    pub optimized_max_abs_err: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compiled_max_abs_err: Option<f64>,
    /// The first layer (in the original's order) whose results disagree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub divergence: Option<Divergence>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.divergence.is_none()
    }
}

/// Compare `original` with its optimization `optimized` layer by layer on seeded
/// random inputs. A disagreement is not an `Err`: it is the report's `divergence`.
pub fn verify(
    original: &Graph,
    optimized: &attnc_passes::Optimized,
    options: &VerifyOptions,
) -> Result<VerifyReport> {
    check_verify_memory(original, &optimized.graph, available_memory())?;
    let tol = options.tol.unwrap_or_else(|| default_tolerance(original));
    let bindings = attnc_ir::random_bindings(original, options.seed);
    let want = interp::eval_nodes(original, &bindings, interp::Precision::F64)
        .map_err(|e| err(format!("verify: interpreter (original graph): {e}")))?;
    let got = interp::eval_nodes(&optimized.graph, &bindings, interp::Precision::F64)
        .map_err(|e| err(format!("verify: interpreter (optimized graph): {e}")))?;

    // (layer, [(original node, optimized node)]) in the original's layer order.
    let layers: Vec<(String, Vec<(NodeId, NodeId)>)> = boundaries(original)
        .into_iter()
        .map(|(layer, nodes)| {
            let pairs = nodes
                .into_iter()
                .filter_map(|n| {
                    optimized
                        .origin
                        .get(n.index())
                        .copied()
                        .flatten()
                        .map(|m| (n, m))
                })
                .collect();
            (layer, pairs)
        })
        .collect();

    let compiled = if options.compiled {
        Some(compiled_values(
            &optimized.graph,
            &layers,
            &bindings,
            options.threads,
        )?)
    } else {
        None
    };

    let mut report = VerifyReport {
        model: original.name.clone(),
        dims: original
            .dims
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        seed: options.seed,
        tol,
        layers: Vec::new(),
        optimized_max_abs_err: 0.0,
        compiled_max_abs_err: compiled.as_ref().map(|_| 0.0),
        divergence: None,
    };
    let mut k = 0; // index into the compiled code's extra outputs
    for (layer, pairs) in &layers {
        let mut check = LayerCheck {
            layer: layer.clone(),
            values: pairs.len(),
            optimized_err: 0.0,
            compiled_err: compiled.as_ref().map(|_| 0.0),
        };
        for &(n, m) in pairs {
            let reference = &want[n.index()];
            let bound = tol * max_magnitude(reference).max(1.0);
            let mut stages = vec![("optimized", &got[m.index()])];
            if let Some(values) = &compiled {
                stages.push(("compiled", &values[k]));
            }
            k += 1;
            for (stage, value) in stages {
                let e = reference.max_abs_diff(value);
                let (layer_err, total) = match stage {
                    "optimized" => (&mut check.optimized_err, &mut report.optimized_max_abs_err),
                    _ => (
                        check.compiled_err.as_mut().expect("compiled stage"),
                        report
                            .compiled_max_abs_err
                            .as_mut()
                            .expect("compiled stage"),
                    ),
                };
                *layer_err = layer_err.max(e);
                *total = total.max(e);
                // NaN errors (never from max_abs_diff, but be strict) count as failures.
                if report.divergence.is_none() && (e.is_nan() || e > bound) {
                    report.divergence = Some(Divergence {
                        layer: layer.clone(),
                        stage,
                        node: n.index(),
                        op: original.node(n).op.name().to_string(),
                        max_abs_err: e,
                        bound,
                    });
                }
            }
        }
        report.layers.push(check);
    }
    Ok(report)
}

/// Each layer's boundary nodes (read by another layer or an output), layers in the
/// order of their first node. Sources (inputs, params, constants) are not results.
fn boundaries(graph: &Graph) -> Vec<(String, Vec<NodeId>)> {
    let layer = |id: NodeId| graph.node(id).layer.as_deref().unwrap_or("(none)");
    let mut boundary = vec![false; graph.len()];
    for id in graph.node_ids() {
        for o in graph.operands(id) {
            if layer(o) != layer(id) {
                boundary[o.index()] = true;
            }
        }
    }
    for (_, id) in graph.outputs() {
        boundary[id.index()] = true;
    }
    let mut order: Vec<(String, Vec<NodeId>)> = Vec::new();
    for id in graph.node_ids() {
        if graph.node(id).op.is_source() {
            continue;
        }
        let name = layer(id);
        let at = match order.iter().position(|(l, _)| l == name) {
            Some(i) => i,
            None => {
                order.push((name.to_string(), Vec::new()));
                order.len() - 1
            }
        };
        if boundary[id.index()] {
            order[at].1.push(id);
        }
    }
    order
}

/// The boundary values of `layers` (optimized nodes, in order) computed by the
/// optimized graph compiled for this CPU, read out as extra outputs.
fn compiled_values(
    optimized: &Graph,
    layers: &[(String, Vec<(NodeId, NodeId)>)],
    bindings: &std::collections::HashMap<String, Tensor>,
    threads: Option<usize>,
) -> Result<Vec<Tensor>> {
    let extra: Vec<(String, NodeId)> = layers
        .iter()
        .flat_map(|(_, pairs)| pairs.iter().map(|&(_, m)| m))
        .enumerate()
        .map(|(k, m)| (format!("verify_{k}"), m))
        .collect();
    let first = optimized.outputs().len();
    let instrumented = optimized
        .with_outputs(extra)
        .map_err(|e| err(format!("verify: {e}")))?;
    let mut model = attnc_backends::CompiledModel::new(&instrumented)
        .map_err(|e| err(format!("verify: compiling the optimized graph: {e}")))?;
    if let Some(n) = threads {
        model.set_threads(n);
    }
    let mut outputs = model
        .run(bindings)
        .map_err(|e| err(format!("verify: running the compiled code: {e}")))?;
    Ok(outputs.split_off(first))
}

fn max_magnitude(t: &Tensor) -> f64 {
    t.data
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0, |m, v| m.max(v.abs()))
}

/// Refuse a verification whose values cannot all be held: every node of both graphs
/// is kept in f64 (the layer-by-layer comparison needs them), with a quarter of the
/// available memory at most.
fn check_verify_memory(original: &Graph, optimized: &Graph, available: u64) -> Result<()> {
    let elems = |g: &Graph| {
        g.node_ids()
            .map(|id| g.sizes(id).iter().map(|&n| n as u64).product::<u64>())
            .fold(0u64, u64::saturating_add)
    };
    let need = elems(original)
        .saturating_add(elems(optimized))
        .saturating_mul(8);
    if need <= available / 4 {
        return Ok(());
    }
    Err(err(format!(
        "verifying this model keeps every value of both graphs, about {:.1} GiB, more than a quarter of the {:.1} GiB available; verify at a smaller size (--tiny or --set)",
        gib(need),
        gib(available)
    )))
}
