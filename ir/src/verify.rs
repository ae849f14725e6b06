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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Dims, Node, Shape};

    fn node(op: Op, shape: &[u64], dtype: DType) -> Node {
        Node {
            op,
            ty: TensorType::new(Shape::new(shape.iter().copied()), dtype),
            layer: Some("block.0".into()),
        }
    }

    fn input(name: &str, shape: &[u64]) -> Node {
        node(Op::Input { name: name.into() }, shape, DType::F32)
    }

    fn message(g: &Graph) -> String {
        verify(g).unwrap_err().to_string()
    }

    #[test]
    fn accepts_a_well_formed_graph() {
        let mut g = Graph::new("ok", Dims::new());
        let x = g.push(input("x", &[2, 3]), &[]);
        let y = g.push(
            node(Op::Unary(crate::UnaryOp::Exp), &[2, 3], DType::F32),
            &[x],
        );
        g.push_output("y".into(), y);
        verify(&g).unwrap();
    }

    #[test]
    fn rejects_a_stored_type_the_op_does_not_compute() {
        let mut g = Graph::new("bad", Dims::new());
        let x = g.push(input("x", &[2, 3]), &[]);
        g.push(
            node(Op::Unary(crate::UnaryOp::Exp), &[3, 2], DType::F32),
            &[x],
        );
        let m = message(&g);
        assert!(m.contains("block.0") && m.contains("%1 = exp"), "{m}");
        assert!(
            m.contains("declared type [3, 2] f32 but the op computes [2, 3] f32"),
            "{m}"
        );
    }

    #[test]
    fn rejects_use_before_definition() {
        let mut g = Graph::new("bad", Dims::new());
        let a = g.push(input("x", &[2]), &[]);
        let b = g.push(node(Op::Unary(crate::UnaryOp::Exp), &[2], DType::F32), &[a]);
        // %2 uses %3, defined after it.
        let c = g.push(
            node(Op::Binary(crate::BinaryOp::Add), &[2], DType::F32),
            &[b],
        );
        let d = g.push(node(Op::Unary(crate::UnaryOp::Neg), &[2], DType::F32), &[a]);
        g.connect(d, c, 1);
        assert!(message(&g).contains("uses %3, which is not defined before it"));
    }

    #[test]
    fn rejects_wrong_arity_duplicate_names_and_bad_outputs() {
        let mut g = Graph::new("bad", Dims::new());
        let a = g.push(input("x", &[2]), &[]);
        g.push(
            node(Op::Binary(crate::BinaryOp::Add), &[2], DType::F32),
            &[a],
        );
        assert!(message(&g).contains("takes 2 operands, got 1"));

        let mut g = Graph::new("bad", Dims::new());
        g.push(input("x", &[2]), &[]);
        g.push(node(Op::Param { name: "x".into() }, &[2], DType::F32), &[]);
        assert!(message(&g).contains("`x` is defined twice"));

        let mut g = Graph::new("bad", Dims::new());
        let a = g.push(input("x", &[2]), &[]);
        g.push_output("y".into(), a);
        g.push_output("y".into(), a);
        assert!(message(&g).contains("output `y` is defined twice"));

        let mut g = Graph::new("bad", Dims::new());
        g.push(input("x", &[2]), &[]);
        g.push_output("y".into(), crate::NodeId::new(7));
        assert!(message(&g).contains("does not exist"));
    }

    #[test]
    fn rejects_unbound_dims_and_oversized_tensors() {
        let mut g = Graph::new("bad", Dims::new());
        g.push(
            Node {
                op: Op::Input { name: "x".into() },
                ty: TensorType::new(Shape::new(["seq"]), DType::F32),
                layer: None,
            },
            &[],
        );
        assert!(message(&g).contains("`seq` is not bound"));

        let mut g = Graph::new("bad", Dims::new());
        g.push(input("x", &[1 << 30, 1 << 30]), &[]);
        assert!(message(&g).contains("2^48"));
    }
}
