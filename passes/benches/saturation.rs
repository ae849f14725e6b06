//! Saturation + extraction on full-size models: the optimizer runs on every compile,
//! so it must stay well under a second for a 32-layer model.
//! `cargo bench -p attnc-passes` (reports the e-graph size once per model).

use attnc_ir::spec::{load_spec, lower, SpecSource};
use attnc_passes::{optimize, Options, Target};
use criterion::{criterion_group, criterion_main, Criterion};
use std::path::Path;

fn model(name: &str) -> attnc_ir::Graph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(format!("{name}.toml"));
    lower(&load_spec(&path, &SpecSource::default()).unwrap()).unwrap()
}

fn saturate_and_extract(c: &mut Criterion) {
    let options = Options::new(Target::cpu());
    for name in ["llama3-8b", "deepseek-v2-lite"] {
        let graph = model(name);
        let r = optimize(&graph, &options).unwrap().report;
        eprintln!(
            "{name}: {} graph nodes -> e-graph of {} nodes / {} classes, {} iterations, {}",
            graph.len(),
            r.egraph_nodes,
            r.egraph_classes,
            r.iterations,
            r.stop_reason
        );
        c.bench_function(&format!("optimize {name}"), |b| {
            b.iter(|| optimize(&graph, &options).unwrap())
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = saturate_and_extract
}
criterion_main!(benches);
