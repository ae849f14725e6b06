//! FLOP and byte counts per node and per layer: what `attnc inspect` reports and the
//! baseline the cost models refine.
//!
//! Conventions: a multiply-add is 2 FLOPs; an elementwise op is 1 FLOP per element
//! (transcendentals included — the count is of operations, not cycles); bytes are
//! the operands read plus the result written, at the dtype's width. Views (reshape)
//! and sources move nothing. Counts saturate at `u64::MAX` rather than overflow.

use crate::{Graph, NodeId, Op};

/// FLOPs of one node.
pub fn node_flops(graph: &Graph, id: NodeId) -> u64 {
    let out: u64 = elements(graph, id);
    let first_in = || {
        graph
            .operands(id)
            .first()
            .map_or(0, |&a| elements(graph, a))
    };
    match &graph.node(id).op {
        Op::Input { .. } | Op::Param { .. } | Op::Const { .. } | Op::Iota { .. } => 0,
        Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Broadcast { .. }
        | Op::Concat { .. }
        | Op::Slice { .. }
        | Op::Gather { .. }
        | Op::Embedding
        | Op::Cast { .. } => 0,
        Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select | Op::Mask { .. } => out,
        Op::Reduce { .. } | Op::CumSum { .. } => first_in(),
        Op::ScatterAdd { .. } => graph.operands(id).get(2).map_or(0, |&u| elements(graph, u)),
        // max, subtract, exp, sum, divide
        Op::Softmax { .. } => out.saturating_mul(5),
        // mean, subtract, square, mean, rsqrt, scale, shift (+ gamma, beta)
        Op::LayerNorm { .. } => out.saturating_mul(8),
        Op::RmsNorm { .. } => out.saturating_mul(4),
        // two multiplies and an add per element, plus the angle
        Op::Rope { .. } => out.saturating_mul(4),
        // a comparison per input element and pass
        Op::TopK { k, .. } => first_in().saturating_mul(*k),
        Op::MatMul => {
            let a = graph.operands(id)[0];
            let k = *graph.sizes(a).last().unwrap_or(&1) as u64;
            out.saturating_mul(k).saturating_mul(2)
        }
    }
}

/// Bytes moved by one node.
pub fn node_bytes(graph: &Graph, id: NodeId) -> u64 {
    let node = graph.node(id);
    if node.op.is_source() || matches!(node.op, Op::Reshape { .. }) {
        return 0;
    }
    let read: u64 = graph
        .operands(id)
        .iter()
        .map(|&a| elements(graph, a).saturating_mul(graph.node(a).ty.dtype.size_bytes()))
        .fold(0, u64::saturating_add);
    read.saturating_add(elements(graph, id).saturating_mul(node.ty.dtype.size_bytes()))
}

fn elements(graph: &Graph, id: NodeId) -> u64 {
    // Each tensor is below 2^48 elements, so this product cannot overflow.
    graph.sizes(id).iter().map(|&n| n as u64).product()
}

/// Totals for one layer (`embed`, `layers.3.attn`, ...), in order of first appearance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerStats {
    pub name: String,
    /// Op names of the layer's compute nodes, in order (sources left out).
    pub ops: Vec<String>,
    pub flops: u64,
    pub bytes: u64,
}

pub fn layer_stats(graph: &Graph) -> Vec<LayerStats> {
    let mut out: Vec<LayerStats> = Vec::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        let name = node.layer.clone().unwrap_or_else(|| "(none)".into());
        let idx = match out.iter().position(|l| l.name == name) {
            Some(i) => i,
            None => {
                out.push(LayerStats {
                    name,
                    ops: Vec::new(),
                    flops: 0,
                    bytes: 0,
                });
                out.len() - 1
            }
        };
        let l = &mut out[idx];
        if !node.op.is_source() {
            l.ops.push(node.op.name().to_string());
        }
        l.flops = l.flops.saturating_add(node_flops(graph, id));
        l.bytes = l.bytes.saturating_add(node_bytes(graph, id));
    }
    out
}
