//! `--convert`: approximations the user asks for, applied to the optimized graph and
//! optimized again, with the error they introduce measured on seeded inputs next to
//! the speedup they buy (one attention alone, at the model's sequence length).

use crate::{backends, err, ms_since, passes, Result};
use attnc_ir::Graph;
use passes::{Approximation, Optimized, Options};
use serde::Serialize;
use std::time::Instant;

/// What one approximation did and cost.
#[derive(Clone, Debug, Serialize)]
pub struct ApproximationReport {
    /// `performer:256`, `window:4096,sinks:4`.
    pub name: String,
    /// Layers whose attention it replaced.
    pub layers: Vec<String>,
    /// Where the error and the speedup were measured: the first converted layer's
    /// attention alone, with its shapes (batch 1, one KV head and its query heads).
    pub measured_on: String,
    pub shape: Vec<usize>,
    /// Largest |approximate − exact| over the attention's output, and that over the
    /// largest |exact|.
    pub max_abs_err: f64,
    pub rel_err: f64,
    /// Median times of the compiled attention: exact (optimized) and approximate.
    pub baseline_ms: f64,
    pub ms: f64,
    pub speedup: f64,
}

/// An approximated model: the converted graph (the function the compiled code must
/// compute), its optimized form, and the layers each approximation changed.
pub(crate) struct Applied {
    pub converted: Graph,
    pub optimized: Optimized,
    pub layers: Vec<Vec<String>>,
}

/// `opt` (the optimized `graph`) with every approximation applied in order, then
/// optimized again; the report's "before" side stays the original graph's.
pub(crate) fn apply(
    opt: &Optimized,
    approximations: &[Approximation],
    options: &Options,
) -> Result<Applied> {
    let mut g = opt.graph.clone();
    let mut layers = Vec::new();
    for a in approximations {
        let (converted, changed) =
            passes::approximate(&g, a).map_err(|e| err(format!("--convert {a}: {e}")))?;
        if changed.is_empty() {
            return Err(err(format!(
                "--convert {a}: the model has no fused attention to convert"
            )));
        }
        g = converted;
        layers.push(changed);
    }
    let mut again = passes::optimize(&g, options).map_err(|e| err(format!("optimizer: {e}")))?;
    let before = &opt.report;
    for l in again.report.layers.iter_mut() {
        if let Some(b) = before.layers.iter().find(|b| b.name == l.name) {
            l.before = b.before.clone();
            l.flops_before = b.flops_before;
            l.bytes_before = b.bytes_before;
            l.cost_before = b.cost_before;
            let mut rules = b.rules.clone();
            rules.extend(l.rules.iter().filter(|r| !b.rules.contains(r)).cloned());
            l.rules = rules;
        }
    }
    again.report.cost_before = before.cost_before;
    let mut fired = before.fired.clone();
    for (rule, n) in &again.report.fired {
        match fired.iter_mut().find(|(r, _)| r == rule) {
            Some(entry) => entry.1 += n,
            None => fired.push((rule.clone(), *n)),
        }
    }
    again.report.fired = fired;
    Ok(Applied {
        converted: g,
        optimized: again,
        layers,
    })
}

/// The error and speedup of `approximations` on the first fused attention of
/// `optimized` (the exact optimized graph), measured on inputs drawn from `seed`.
pub(crate) fn measure(
    optimized: &Graph,
    approximations: &[Approximation],
    layers: Vec<Vec<String>>,
    options: &Options,
    seed: u64,
) -> Result<Vec<ApproximationReport>> {
    let Some((alone, layer)) = passes::approx::attention_alone(optimized) else {
        return Err(err(
            "--convert: no fused attention to measure the approximation on",
        ));
    };
    let opt = |g: &Graph| {
        passes::optimize(g, options)
            .map(|o| o.graph)
            .map_err(|e| err(format!("optimizer: {e}")))
    };
    let exact = opt(&alone)?;
    let mut reports = Vec::new();
    let mut converted = alone.clone();
    for (a, changed) in approximations.iter().zip(layers) {
        converted = passes::approximate(&converted, a)
            .map_err(|e| err(format!("--convert {a}: {e}")))?
            .0;
        let approx = opt(&converted)?;
        let bindings = attnc_ir::random_bindings(&alone, seed);
        let compile = |g: &Graph| backends::CompiledModel::new(g).map_err(|e| err(e.to_string()));
        let models = [compile(&exact)?, compile(&approx)?];
        let mut times = [Vec::new(), Vec::new()];
        let mut outputs = Vec::new();
        for round in 0..4 {
            for (i, m) in models.iter().enumerate() {
                let t = Instant::now();
                let out = m.run(&bindings).map_err(|e| err(e.to_string()))?;
                if round > 0 {
                    times[i].push(ms_since(t));
                }
                if round == 0 {
                    outputs.push(out.into_iter().next());
                }
            }
        }
        let (Some(Some(want)), Some(Some(got))) = (outputs.first(), outputs.get(1)) else {
            return Err(err("--convert: the measured attention gave no output"));
        };
        let max_abs_err = want.max_abs_diff(got);
        let scale = want.data.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let [t0, t1] = times;
        let (baseline_ms, ms) = (median(t0), median(t1));
        // The compiled exact attention is itself checked against the interpreter
        // elsewhere; a non-finite reference would make the error meaningless.
        if !scale.is_finite() {
            return Err(err(
                "--convert: the exact attention is not finite on seeded inputs",
            ));
        }
        reports.push(ApproximationReport {
            name: a.to_string(),
            layers: changed,
            measured_on: layer.clone(),
            shape: want.shape.clone(),
            max_abs_err,
            rel_err: max_abs_err / scale.max(f64::MIN_POSITIVE),
            baseline_ms,
            ms,
            speedup: baseline_ms / ms,
        });
    }
    Ok(reports)
}
