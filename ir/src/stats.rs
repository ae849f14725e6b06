//! FLOP and byte counts per node and per layer: what `attnc inspect` reports and the
//! baseline the cost models refine.
//!
//! Conventions: a multiply-add is 2 FLOPs; an elementwise op is 1 FLOP per element
//! (transcendentals included — the count is of operations, not cycles); bytes are
//! the operands read plus the result written, at the dtype's width. Views (reshape)
//! and sources move nothing. Counts saturate at `u64::MAX` rather than overflow.

use crate::{BlockLayout, DType, Dims, Graph, NodeId, Op};

/// FLOPs of one node.
pub fn node_flops(graph: &Graph, id: NodeId) -> u64 {
    let args: Vec<Vec<usize>> = graph.operands(id).iter().map(|&a| graph.sizes(a)).collect();
    let args: Vec<&[usize]> = args.iter().map(Vec::as_slice).collect();
    op_flops(&graph.node(id).op, &args, &graph.sizes(id), &graph.dims)
}

/// FLOPs of `op` applied to operands of sizes `args`, giving a result of size `out`:
/// the one formula per op, shared by [`node_flops`] and the cost models. `dims` binds
/// the names a mask reads (a block-sparse attention counts only its computed blocks).
pub fn op_flops(op: &Op, args: &[&[usize]], out: &[usize], dims: &Dims) -> u64 {
    let count = |s: &[usize]| s.iter().map(|&n| n as u64).product::<u64>();
    let out_n = count(out);
    let first_in = || args.first().map_or(0, |a| count(a));
    match op {
        Op::Input { .. }
        | Op::Param { .. }
        | Op::Const { .. }
        | Op::Iota { .. }
        | Op::RandomFeatures { .. } => 0,
        Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Broadcast { .. }
        | Op::Concat { .. }
        | Op::Slice { .. }
        | Op::Gather { .. }
        | Op::Embedding
        | Op::Cast { .. } => 0,
        Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select | Op::Mask { .. } => out_n,
        Op::Reduce { .. } | Op::CumSum { .. } => first_in(),
        Op::Scan { .. } => first_in().saturating_mul(2),
        Op::LinearAttention(l) => linear_flops(l, args),
        Op::MoeDispatch(m) => moe_flops(m, args),
        Op::ScatterAdd { .. } => args.get(2).map_or(0, |u| count(u)),
        // max, subtract, exp, sum, divide
        Op::Softmax { .. } => out_n.saturating_mul(5),
        // mean, subtract, square, mean, rsqrt, scale, shift (+ gamma, beta)
        Op::LayerNorm { .. } => out_n.saturating_mul(8),
        Op::RmsNorm { .. } => out_n.saturating_mul(4),
        // two multiplies and an add per element, plus the angle
        Op::Rope { .. } => out_n.saturating_mul(4),
        // a comparison per input element and pass
        Op::TopK { k, .. } => first_in().saturating_mul(*k),
        // Two matmuls (q·kᵀ and p·v) plus the online softmax and masking per score;
        // block-sparse: per score of the computed blocks.
        Op::Attention(a) => {
            let (q, k, v) = (args[0], args[1], args[2]);
            let per_score = 2 * (q[3] + v[3]) as u64 + 6;
            let dense = ((q[0] * q[1] * q[2]) as u64)
                .saturating_mul(k[2] as u64)
                .saturating_mul(per_score);
            let Some([bq, bk]) = a.block else {
                return dense;
            };
            if a.listed {
                // Every slot of the list, as if none were empty.
                let slots = args.last().map_or(0, |l| l[3]) as u64;
                return ((q[0] * q[1]) as u64 * q[2].div_ceil(bq as usize) as u64)
                    .saturating_mul(slots)
                    .saturating_mul(bq * bk)
                    .saturating_mul(per_score);
            }
            let sizes = [q[0], q[1], q[2], k[2]];
            match BlockLayout::of(a.mask.as_ref(), dims, sizes, [bq as usize, bk as usize]) {
                Ok(l) => l
                    .computed_blocks()
                    .saturating_mul(bq * bk)
                    .saturating_mul(per_score),
                Err(_) => dense,
            }
        }
        // Block means and their scores, then attention over `top_k + 1` blocks per
        // query block (causal inside its own).
        Op::Moba(m) => {
            let (q, k, v) = (args[0], args[1], args[2]);
            let rows = (q[0] * q[1] * q[2]) as u64;
            let nb = (q[2] as u64).checked_div(m.block).unwrap_or(0);
            let pooling = ((q[0] * q[1] * q[2] * q[3]) + (k[0] * k[1] * k[2] * k[3])) as u64;
            let scoring = (q[0] * q[1]) as u64 * nb * nb * 2 * q[3] as u64;
            let keys = (m.top_k.min(nb) + 1) * m.block;
            let per_score = 2 * (q[3] + v[3]) as u64 + 6;
            rows.saturating_mul(keys)
                .saturating_mul(per_score)
                .saturating_add(pooling)
                .saturating_add(scoring)
        }
        // Affinities, the top-`window` selection per cluster, attention inside clusters.
        Op::Routing(r) => {
            let (x, v) = (args[0], args[1]);
            let rows = (x[0] * x[1] * x[2]) as u64;
            let routing = rows * x[3] as u64 * r.clusters * 2;
            let selection = rows * r.clusters * r.window;
            let members = (x[0] * x[1]) as u64 * r.clusters * r.window;
            let attend = members * r.window * (2 * (x[3] + v[3]) as u64 + 6);
            routing.saturating_add(selection).saturating_add(attend)
        }
        // Per round: hashing, the sort, and attention over two chunks per query.
        Op::Lsh(l) => {
            let (x, v) = (args[0], args[1]);
            let rows = (x[0] * x[1] * x[2]) as u64;
            let hashing = rows * x[3] as u64 * l.buckets;
            let sorting = rows * x[2] as u64;
            let attend = rows * 2 * l.chunk * (2 * (x[3] + v[3]) as u64 + 6);
            l.n_hashes
                .saturating_mul(hashing.saturating_add(sorting).saturating_add(attend))
        }
        Op::MatMul => {
            let k = *args[0].last().unwrap_or(&1) as u64;
            out_n.saturating_mul(k).saturating_mul(2)
        }
    }
}

/// FLOPs of a `linear_attention` in its form. With `R = B·H` rows of `N` steps and
/// `Dv'` value columns (`Dv + 1` with the normalizer, whose sums ride along as a
/// column of ones): the state `kᵀ·v` and the readout `q·S` cost `2·N·Dk·Dv'` each;
/// a chunk's scores and their product with `v` cost `2·N·C·(Dk + Dv')`.
fn linear_flops(l: &crate::LinearAttention, args: &[&[usize]]) -> u64 {
    use crate::{Decay, LinearForm};
    let (q, v) = (args[0], args[2]);
    let (r, n, dk) = ((q[0] * q[1]) as u64, q[2] as u64, q[3] as u64);
    let dv = v[3] as u64 + l.normalize as u64;
    let state = 2 * n * dk * dv;
    let block = |c: u64| 2 * n * c * (dk + dv) + if l.decay == Decay::None { 0 } else { 2 * n * c };
    let per_row = match l.form {
        LinearForm::Parallel if !l.causal => 2 * state,
        LinearForm::Parallel => block(n),
        LinearForm::Chunkwise { chunk } => {
            block(chunk) + 2 * state + 2 * n.div_ceil(chunk.max(1)) * dk * dv
        }
        LinearForm::Recurrent => {
            2 * state
                + if l.decay == Decay::None {
                    0
                } else {
                    n * dk * dv
                }
        }
    };
    r.saturating_mul(per_row)
}

/// FLOPs of a `moe_dispatch`: per selected `(token, expert)` pair at most, the up
/// (and gate) projection, the activation, the down projection and the weighted
/// combine; plus one pass over the gate to group the pairs.
fn moe_flops(m: &crate::MoeDispatch, args: &[&[usize]]) -> u64 {
    let routed = 3 + m.gated as usize;
    let (x, gate, up) = (args[0], args[1], args[routed - 1]);
    let (t, d, e, h) = (x[0] as u64, x[1] as u64, gate[1] as u64, up[2] as u64);
    let projections = 2 + m.gated as u64;
    let per_row = |h: u64| projections * 2 * d * h + (1 + m.gated as u64) * h + 2 * d;
    let shared = match m.shared {
        crate::MoeShared::None => 0,
        _ => t.saturating_mul(per_row(args[routed + 2 + m.gated as usize][0] as u64)),
    };
    m.max_pairs(t, e)
        .saturating_mul(per_row(h))
        .saturating_add(t * e)
        .saturating_add(shared)
}

/// Bytes moved by one node.
pub fn node_bytes(graph: &Graph, id: NodeId) -> u64 {
    let args: Vec<(Vec<usize>, DType)> = graph
        .operands(id)
        .iter()
        .map(|&a| (graph.sizes(a), graph.node(a).ty.dtype))
        .collect();
    let args: Vec<(&[usize], DType)> = args.iter().map(|(s, d)| (s.as_slice(), *d)).collect();
    let node = graph.node(id);
    op_bytes(&node.op, &args, (&graph.sizes(id), node.ty.dtype))
}

/// Bytes `op` reads and writes: every operand once plus the result. A fused op is
/// charged only for its own inputs and output — that is the point of fusing.
pub fn op_bytes(op: &Op, args: &[(&[usize], DType)], out: (&[usize], DType)) -> u64 {
    if op.is_source() || matches!(op, Op::Reshape { .. }) {
        return 0;
    }
    let bytes = |(s, d): (&[usize], DType)| {
        s.iter()
            .map(|&n| n as u64)
            .product::<u64>()
            .saturating_mul(d.size_bytes())
    };
    args.iter()
        .map(|&a| bytes(a))
        .fold(bytes(out), u64::saturating_add)
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
