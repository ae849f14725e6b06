//! Helpers shared by the backend tests: build a tiny graph, run it compiled and in
//! the reference interpreter (f64), compare.

#![allow(dead_code)]

use attnc_backends::CompiledModel;
use attnc_ir::interp::{eval, Precision};
use attnc_ir::{DType, Dims, Graph, GraphBuilder, NodeId, Shape, Tensor};
use std::collections::HashMap;

pub type Bindings = HashMap<String, Tensor>;

pub fn shape(sizes: &[u64]) -> Shape {
    Shape::new(sizes.iter().copied())
}

/// A graph whose outputs (`out0`, `out1`, ...) are what `build` returns.
pub fn graph(build: impl FnOnce(&mut GraphBuilder) -> attnc_ir::Result<Vec<NodeId>>) -> Graph {
    graph_with_dims(Dims::new(), build)
}

pub fn graph_with_dims(
    dims: Dims,
    build: impl FnOnce(&mut GraphBuilder) -> attnc_ir::Result<Vec<NodeId>>,
) -> Graph {
    let mut b = GraphBuilder::new("test", dims);
    let outputs = build(&mut b).unwrap_or_else(|e| panic!("building the graph: {e}"));
    for (i, id) in outputs.into_iter().enumerate() {
        b.output(format!("out{i}"), id).unwrap();
    }
    b.finish()
        .unwrap_or_else(|e| panic!("verifying the graph: {e}"))
}

/// Largest difference tolerated, relative to the size of the expected values: f32
/// code against the f64 oracle, or one rounding step of a half type.
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
        _ => 1e-4,
    }
}

/// Run `graph` compiled and interpreted on random bindings (seed 7) and compare.
pub fn check(graph: &Graph) {
    check_with(graph, &attnc_ir::random_bindings(graph, 7));
}

pub fn check_with(graph: &Graph, bindings: &Bindings) {
    let model = CompiledModel::new(graph).unwrap_or_else(|e| panic!("compiling: {e}"));
    let got = model
        .run(bindings)
        .unwrap_or_else(|e| panic!("running: {e}"));
    let want =
        eval(graph, bindings, Precision::F64).unwrap_or_else(|e| panic!("interpreting: {e}"));
    assert_eq!(got.len(), want.len());
    for (((name, _), g), w) in graph.outputs().iter().zip(&got).zip(&want) {
        assert_eq!(g.dtype, w.dtype, "{name}: dtype");
        assert_eq!(g.shape, w.shape, "{name}: shape");
        let scale = w
            .data
            .iter()
            .filter(|v| v.is_finite())
            .fold(1.0f64, |m, v| m.max(v.abs()));
        let diff = g.max_abs_diff(w);
        assert!(
            diff <= tolerance(w.dtype) * scale,
            "{name}: max abs diff {diff}\n got  {:?}\n want {:?}",
            g.data,
            w.data
        );
    }
}

/// A tensor with explicit data.
pub fn tensor(dtype: DType, shape: &[usize], data: &[f64]) -> Tensor {
    Tensor::new(dtype, shape.to_vec(), data.to_vec())
}
