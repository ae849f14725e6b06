//! DOT export, to look at a graph with Graphviz (`dot -Tsvg graph.dot`).
//!
//! Each node reads like its `.air` line without operands (`%3 matmul` over its type);
//! each edge is labelled with the operand slot it fills, which matters for
//! non-commutative ops. Output order is node and edge insertion order, so it is
//! deterministic and fit for snapshots.

use crate::text::op_text;
use crate::{Graph, Node, NodeId};
use petgraph::dot::{Config, Dot};
use petgraph::graph::{DiGraph, EdgeReference};

/// The graph in Graphviz DOT syntax.
pub fn to_dot(graph: &Graph) -> String {
    // Labels are written by the attribute getters rather than by petgraph, which
    // would need `Display` on the weights and cannot produce two-line labels.
    let node_attrs = |_: &DiGraph<Node, usize>, (id, node): (NodeId, &Node)| {
        format!(
            "label = \"%{} {}\\n{}\"",
            id.index(),
            escape(&op_text(&node.op, "")),
            escape(&node.ty.to_string())
        )
    };
    let edge_attrs = |_: &DiGraph<Node, usize>, edge: EdgeReference<'_, usize>| {
        format!("label = \"{}\"", edge.weight())
    };
    let dot = Dot::with_attr_getters(
        graph.petgraph(),
        &[Config::NodeNoLabel, Config::EdgeNoLabel],
        &edge_attrs,
        &node_attrs,
    );
    format!("{dot:?}")
}

/// Escape text for a double-quoted DOT string.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Dims, GraphBuilder, Op, Shape};

    #[test]
    fn labels_nodes_with_op_and_type_and_edges_with_slots() {
        let mut dims = Dims::new();
        dims.bind("s", 4);
        let mut b = GraphBuilder::new("g", dims);
        let x = b.input("x\"y", Shape::new(["s", "s"]), DType::F32).unwrap();
        let y = b.op(Op::MatMul, &[x, x]).unwrap();
        let z = b.op(Op::Softmax { axis: 1 }, &[y]).unwrap();
        b.output("z", z).unwrap();
        let g = b.finish().unwrap();
        let dot = to_dot(&g);
        assert_eq!(
            dot,
            "digraph {\n\
             \x20   0 [ label = \"%0 input \\\"x\\\\\\\"y\\\"\\n[s, s] f32\"]\n\
             \x20   1 [ label = \"%1 matmul\\n[s, s] f32\"]\n\
             \x20   2 [ label = \"%2 softmax {axis = 1}\\n[s, s] f32\"]\n\
             \x20   0 -> 1 [ label = \"0\"]\n\
             \x20   0 -> 1 [ label = \"1\"]\n\
             \x20   1 -> 2 [ label = \"0\"]\n\
             }\n"
        );
        assert_eq!(dot, to_dot(&g), "deterministic");
    }
}
