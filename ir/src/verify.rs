//! The verifier: checks every invariant the rest of the compiler relies on.

use crate::{infer, Graph, IrError, Op, Result, TensorType};
use std::collections::HashSet;

/// Check that `graph` is well formed: operands come before their users, every node's
/// stored type is the type its op infers, source names are unique and outputs exist.
pub fn verify(graph: &Graph) -> Result<()> {
    let mut names = HashSet::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        let fail = |message: String| IrError::Verify {
            layer: node.layer.clone(),
            node: id.index(),
            op: node.op.name().to_string(),
            message,
        };
        let operands = graph.operands(id);
        if let Some(bad) = operands.iter().find(|o| o.index() >= id.index()) {
            return Err(fail(format!(
                "uses %{}, which is not defined before it",
                bad.index()
            )));
        }
        let args: Vec<&TensorType> = operands.iter().map(|&o| &graph.node(o).ty).collect();
        let declared = node.op.is_source().then_some(&node.ty);
        let inferred = infer(&node.op, &args, declared, &graph.dims).map_err(&fail)?;
        if !same_type(graph, &inferred, &node.ty) {
            return Err(fail(format!(
                "declared type {} {} but the op computes {} {}",
                graph.dims.describe(&node.ty.shape),
                node.ty.dtype,
                graph.dims.describe(&inferred.shape),
                inferred.dtype
            )));
        }
        if let Op::Input { name } | Op::Param { name } = &node.op {
            if !names.insert(name.clone()) {
                return Err(fail(format!("the name `{name}` is defined twice")));
            }
        }
    }
    let mut out_names = HashSet::new();
    for (name, id) in graph.outputs() {
        if id.index() >= graph.len() {
            return Err(IrError::Spec {
                layer: None,
                message: format!(
                    "output `{name}` refers to %{}, which does not exist",
                    id.index()
                ),
            });
        }
        if !out_names.insert(name) {
            return Err(IrError::Spec {
                layer: None,
                message: format!("output `{name}` is defined twice"),
            });
        }
    }
    Ok(())
}

/// Types agree when dtypes match and shapes have the same concrete sizes (a declared
/// `[b, 768]` matches an inferred `[b, d_model]` when `d_model = 768`).
pub fn same_type(graph: &Graph, a: &TensorType, b: &TensorType) -> bool {
    a.dtype == b.dtype
        && match (graph.dims.resolve(&a.shape), graph.dims.resolve(&b.shape)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}
