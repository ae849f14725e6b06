//! Expansions: dynamic sparse attention written as plain ops — MoBA as the ops that
//! compute its block list, then `block_sparse_attention` over that list; Reformer's
//! LSH attention as hashing, a sort and chunk-batched attention, the Routing
//! Transformer's as top-`window` selection per centroid and cluster-batched attention
//! (their masks compare positions after a data-dependent permutation, which a mask
//! over `(b, h, q, k)` cannot say, so they do not go through the block-sparse kernel;
//! batched over chunks or clusters they never form `N²` scores either). Backends that have no kernel
//! of their own for such an op run its expansion; the interpreter evaluates the op
//! directly, so the expansion is checked against the op's own semantics.

use crate::{
    Attention, BinaryOp, CmpOp, DType, Dim, Graph, GraphBuilder, IrError, Lsh, MaskExpr, Moba,
    NodeId, Op, ReduceKind, Result, Routing, Shape, TensorType, TopKOutput, UnaryOp,
};
use std::collections::HashMap;

mod linear;

pub use linear::is_kernel_form;

/// Whether `graph` has an op that [`expand`] rewrites.
pub fn needs_expansion(graph: &Graph) -> bool {
    graph.node_ids().any(|id| match &graph.node(id).op {
        Op::Moba(_) | Op::Lsh(_) | Op::Routing(_) => true,
        Op::LinearAttention(l) => !is_kernel_form(l),
        _ => false,
    })
}

/// `graph` with every `moba_attention` replaced by its block list and a
/// `block_sparse_attention` over it, every `lsh_attention` by its hashing, sort and
/// chunked attention, every `routing_attention` by its cluster selection, attention
/// batched over the clusters and a scatter of the results back; everything else (names, layers, outputs, the
/// order of inputs and params) as it was.
pub fn expand(graph: &Graph) -> Result<Graph> {
    rebuild(graph, |b, op, operands| {
        Ok(Some(match op {
            Op::Moba(m) => moba(b, m, operands)?,
            Op::Lsh(l) => lsh(b, l, operands)?,
            Op::Routing(r) => routing(b, r, operands)?,
            Op::LinearAttention(l) if !is_kernel_form(l) => linear::linear(b, l, operands)?,
            _ => return Ok(None),
        }))
    })
}

/// `graph` rebuilt node by node, `replace` giving the new node for an op it rewrites
/// (`None`: the op is copied) from the already mapped operands, in the node's layer;
/// names, outputs and the order of inputs and params stay as they were.
pub fn rebuild(
    graph: &Graph,
    mut replace: impl FnMut(&mut GraphBuilder, &Op, &[NodeId]) -> Result<Option<NodeId>>,
) -> Result<Graph> {
    let mut b = GraphBuilder::new(graph.name.clone(), graph.dims.clone());
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        b.set_layer(node.layer.clone());
        let operands: Vec<NodeId> = graph.operands(id).iter().map(|o| map[o]).collect();
        let new = match replace(&mut b, &node.op, &operands)? {
            Some(new) => new,
            None => {
                let declared = node.op.is_source().then(|| node.ty.clone());
                b.add(node.op.clone(), &operands, declared)?
            }
        };
        map.insert(id, new);
    }
    for (name, id) in graph.outputs() {
        b.output(name.clone(), map[id])?;
    }
    b.finish()
}

/// Resolved sizes of `x`.
fn sizes_of(b: &GraphBuilder, x: NodeId, op: &str) -> Result<Vec<usize>> {
    let s = b
        .dims()
        .resolve(&b.ty(x).shape)
        .map_err(|message| IrError::Type {
            layer: b.layer().map(str::to_string),
            op: op.into(),
            message,
        })?;
    Ok(s.iter().map(|&n| n as usize).collect())
}

fn reshape(b: &mut GraphBuilder, x: NodeId, sizes: &[usize]) -> Result<NodeId> {
    b.op(
        Op::Reshape {
            shape: shape(sizes),
        },
        &[x],
    )
}

fn slice(b: &mut GraphBuilder, x: NodeId, axis: usize, start: usize, end: usize) -> Result<NodeId> {
    b.op(
        Op::Slice {
            axis,
            start: Dim::Const(start as u64),
            end: Dim::Const(end as u64),
        },
        &[x],
    )
}

/// Rows `perm[b, h, i]` of `x [B, H, N, F]` for each `(b, h)` (`perm [B, H, M]`
/// gives `[B, H, M, F]`): one gather of the flattened rows at `perm + (b·H + h)·N`.
fn take_rows(b: &mut GraphBuilder, x: NodeId, perm: NodeId) -> Result<NodeId> {
    let (idx, s) = flat_rows(b, x, perm)?;
    let (bh, n, f) = (s[0] * s[1], s[2], s[3]);
    let m = sizes_of(b, perm, "take_rows")?[2];
    let rows = reshape(b, x, &[bh * n, f])?;
    let taken = b.op(Op::Gather { axis: 0 }, &[rows, idx])?;
    reshape(b, taken, &[s[0], s[1], m, f])
}

/// `perm + (b·H + h)·N`, flattened, for rows of `x [B, H, N, F]`; and `x`'s sizes.
fn flat_rows(b: &mut GraphBuilder, x: NodeId, perm: NodeId) -> Result<(NodeId, Vec<usize>)> {
    let s = sizes_of(b, x, "take_rows")?;
    let (bh, n) = (s[0] * s[1], s[2]);
    let m = sizes_of(b, perm, "take_rows")?[2];
    let heads = b.add(
        Op::Iota { axis: 0 },
        &[],
        Some(TensorType::new(shape(&[bh, 1]), DType::I64)),
    )?;
    let heads = reshape(b, heads, &[s[0], s[1], 1])?;
    let len = b.constant(n as f64, DType::I64)?;
    let offsets = b.op(Op::Binary(BinaryOp::Mul), &[heads, len])?;
    let idx = b.op(Op::Binary(BinaryOp::Add), &[perm, offsets])?;
    Ok((reshape(b, idx, &[bh * m])?, s))
}

/// `x / sqrt(|x|² + 1e-6)` over the last axis of `x [B, H, N, D]`: the unit keys of
/// shared-QK attention.
fn unit_rows(b: &mut GraphBuilder, x: NodeId) -> Result<NodeId> {
    let dtype = b.ty(x).dtype;
    let sq = b.op(Op::Binary(BinaryOp::Mul), &[x, x])?;
    let sq = b.op(
        Op::Reduce {
            kind: ReduceKind::Sum,
            axes: vec![3],
            keep_dims: true,
        },
        &[sq],
    )?;
    let eps = b.constant(1e-6, dtype)?;
    let sq = b.op(Op::Binary(BinaryOp::Add), &[sq, eps])?;
    let inv = b.op(Op::Unary(UnaryOp::Rsqrt), &[sq])?;
    b.op(Op::Binary(BinaryOp::Mul), &[x, inv])
}

/// The order that sorts each row of `keys [B, H, N]` (i64, distinct) ascending.
fn argsort(b: &mut GraphBuilder, keys: NodeId, n: usize) -> Result<NodeId> {
    let neg = b.op(Op::Unary(UnaryOp::Neg), &[keys])?;
    b.op(
        Op::TopK {
            k: n as u64,
            output: TopKOutput::Indices,
        },
        &[neg],
    )
}

/// Reformer's LSH attention, round by round: buckets by the rotations, the sort by
/// (bucket, position), attention of each chunk over itself and the chunk before
/// (batched over the chunks: `N · 2·chunk` scores per head, never `N²`), the rows put
/// back in order, the rounds mixed by their log-sum-exps.
fn lsh(b: &mut GraphBuilder, l: &Lsh, ops: &[NodeId]) -> Result<NodeId> {
    let (x, v, rot) = (ops[0], ops[1], ops[2]);
    let xs = sizes_of(b, x, "lsh_attention")?;
    let dv = sizes_of(b, v, "lsh_attention")?[3];
    let (bsz, h, n, d) = (xs[0], xs[1], xs[2], xs[3]);
    let half = (l.buckets / 2) as usize;
    let c = l.chunk as usize;
    let nc = n / c;
    let dtype = b.ty(x).dtype;
    let unit = unit_rows(b, x)?;
    let positions = b.add(
        Op::Iota { axis: 0 },
        &[],
        Some(TensorType::new(shape(&[n]), DType::I64)),
    )?;
    let len = b.constant(n as f64, DType::I64)?;
    let minus_inf = b.constant(f64::NEG_INFINITY, dtype)?;
    let own = b.constant(-1e5, dtype)?;
    let scale = b.constant(l.scale, dtype)?;
    // The chunk before each chunk (the first's is the last).
    let previous = |b: &mut GraphBuilder, t: NodeId| -> Result<NodeId> {
        if nc == 1 {
            return Ok(t);
        }
        let last = slice(b, t, 2, nc - 1, nc)?;
        let rest = slice(b, t, 2, 0, nc - 1)?;
        b.op(Op::Concat { axis: 2 }, &[last, rest])
    };
    let mut outs = Vec::new();
    let mut lses = Vec::new();
    for r in 0..l.n_hashes as usize {
        let rr = slice(b, rot, 0, r, r + 1)?;
        let rr = reshape(b, rr, &[d, half])?;
        let proj = b.op(Op::MatMul, &[x, rr])?;
        let neg = b.op(Op::Unary(UnaryOp::Neg), &[proj])?;
        let both = b.op(Op::Concat { axis: 3 }, &[proj, neg])?;
        let bucket = b.op(
            Op::TopK {
                k: 1,
                output: TopKOutput::Indices,
            },
            &[both],
        )?;
        let bucket = reshape(b, bucket, &[bsz, h, n])?;
        let key = b.op(Op::Binary(BinaryOp::Mul), &[bucket, len])?;
        let key = b.op(Op::Binary(BinaryOp::Add), &[key, positions])?;
        let perm = argsort(b, key, n)?;
        let chunks = |b: &mut GraphBuilder, t: NodeId, f: usize| -> Result<NodeId> {
            let sorted = take_rows(b, t, perm)?;
            reshape(b, sorted, &[bsz, h, nc, c, f])
        };
        let qc = chunks(b, x, d)?;
        let kc = chunks(b, unit, d)?;
        let vc = chunks(b, v, dv)?;
        let pc = reshape(b, perm, &[bsz, h, nc, c])?;
        let kprev = previous(b, kc)?;
        let keys = b.op(Op::Concat { axis: 3 }, &[kprev, kc])?;
        let vprev = previous(b, vc)?;
        let values = b.op(Op::Concat { axis: 3 }, &[vprev, vc])?;
        let pprev = previous(b, pc)?;
        let kpos = b.op(Op::Concat { axis: 3 }, &[pprev, pc])?;
        let kpos = reshape(b, kpos, &[bsz, h, nc, 1, 2 * c])?;
        let qpos = reshape(b, pc, &[bsz, h, nc, c, 1])?;
        let kt = b.op(
            Op::Transpose {
                perm: vec![0, 1, 2, 4, 3],
            },
            &[keys],
        )?;
        let mut s = b.op(Op::MatMul, &[qc, kt])?;
        s = b.op(Op::Binary(BinaryOp::Mul), &[s, scale])?;
        if l.causal {
            let allowed = b.op(Op::Compare(CmpOp::Le), &[kpos, qpos])?;
            s = b.op(Op::Select, &[allowed, s, minus_inf])?;
        }
        let itself = b.op(Op::Compare(CmpOp::Eq), &[kpos, qpos])?;
        s = b.op(Op::Select, &[itself, own, s])?;
        let reduce = |b: &mut GraphBuilder, kind, t| {
            b.op(
                Op::Reduce {
                    kind,
                    axes: vec![4],
                    keep_dims: true,
                },
                &[t],
            )
        };
        let mx = reduce(b, ReduceKind::Max, s)?;
        let shifted = b.op(Op::Binary(BinaryOp::Sub), &[s, mx])?;
        let e = b.op(Op::Unary(UnaryOp::Exp), &[shifted])?;
        let sum = reduce(b, ReduceKind::Sum, e)?;
        let p = b.op(Op::Binary(BinaryOp::Div), &[e, sum])?;
        let log = b.op(Op::Unary(UnaryOp::Log), &[sum])?;
        let lse = b.op(Op::Binary(BinaryOp::Add), &[log, mx])?;
        let o = b.op(Op::MatMul, &[p, values])?;
        // Back to the original order.
        let back = argsort(b, perm, n)?;
        let o = reshape(b, o, &[bsz, h, n, dv])?;
        outs.push(take_rows(b, o, back)?);
        let lse = reshape(b, lse, &[bsz, h, n, 1])?;
        lses.push(take_rows(b, lse, back)?);
    }
    if outs.len() == 1 {
        return Ok(outs[0]);
    }
    let all = b.op(Op::Concat { axis: 3 }, &lses)?;
    let w = b.op(Op::Softmax { axis: 3 }, &[all])?;
    let mut out = None;
    for (r, o) in outs.into_iter().enumerate() {
        let wr = slice(b, w, 3, r, r + 1)?;
        let term = b.op(Op::Binary(BinaryOp::Mul), &[o, wr])?;
        out = Some(match out {
            None => term,
            Some(acc) => b.op(Op::Binary(BinaryOp::Add), &[acc, term])?,
        });
    }
    Ok(out.expect("at least two rounds"))
}

/// Routing attention: affinities of the unit vectors with the centroids, each
/// cluster's top-`window` members gathered, attention batched over the clusters, the
/// results scatter-added back to their positions and divided by how many clusters
/// each position is in.
fn routing(b: &mut GraphBuilder, r: &Routing, ops: &[NodeId]) -> Result<NodeId> {
    let (x, v, mu) = (ops[0], ops[1], ops[2]);
    let xs = sizes_of(b, x, "routing_attention")?;
    let dv = sizes_of(b, v, "routing_attention")?[3];
    let (bsz, h, n, d) = (xs[0], xs[1], xs[2], xs[3]);
    let (nc, w) = (r.clusters as usize, r.window as usize);
    let dtype = b.ty(x).dtype;
    let unit = unit_rows(b, x)?;
    // [B, H, N, D] · [H, D, C] -> [B, H, N, C] -> [B, H, C, N]
    let mt = b.op(
        Op::Transpose {
            perm: vec![0, 2, 1],
        },
        &[mu],
    )?;
    let aff = b.op(Op::MatMul, &[unit, mt])?;
    let aff = b.op(
        Op::Transpose {
            perm: vec![0, 1, 3, 2],
        },
        &[aff],
    )?;
    let members = b.op(
        Op::TopK {
            k: w as u64,
            output: TopKOutput::Indices,
        },
        &[aff],
    )?;
    let members = reshape(b, members, &[bsz, h, nc * w])?;
    let gather = |b: &mut GraphBuilder, t: NodeId, f: usize| -> Result<NodeId> {
        let rows = take_rows(b, t, members)?;
        reshape(b, rows, &[bsz, h, nc, w, f])
    };
    let (qg, kg, vg) = (gather(b, x, d)?, gather(b, unit, d)?, gather(b, v, dv)?);
    let kt = b.op(
        Op::Transpose {
            perm: vec![0, 1, 2, 4, 3],
        },
        &[kg],
    )?;
    let mut s = b.op(Op::MatMul, &[qg, kt])?;
    let scale = b.constant(r.scale, dtype)?;
    s = b.op(Op::Binary(BinaryOp::Mul), &[s, scale])?;
    if r.causal {
        let qpos = reshape(b, members, &[bsz, h, nc, w, 1])?;
        let kpos = reshape(b, members, &[bsz, h, nc, 1, w])?;
        let allowed = b.op(Op::Compare(CmpOp::Le), &[kpos, qpos])?;
        let minus_inf = b.constant(f64::NEG_INFINITY, dtype)?;
        s = b.op(Op::Select, &[allowed, s, minus_inf])?;
    }
    let p = b.op(Op::Softmax { axis: 4 }, &[s])?;
    let o = b.op(Op::MatMul, &[p, vg])?;
    let o = reshape(b, o, &[bsz * h * nc * w, dv])?;
    let (idx, _) = flat_rows(b, x, members)?;
    let zero = b.constant(0.0, dtype)?;
    let zeros = b.op(
        Op::Broadcast {
            shape: shape(&[bsz * h * n, dv]),
        },
        &[zero],
    )?;
    let sum = b.op(Op::ScatterAdd { axis: 0 }, &[zeros, idx, o])?;
    let one = b.constant(1.0, dtype)?;
    let ones = b.op(
        Op::Broadcast {
            shape: shape(&[bsz * h * nc * w, 1]),
        },
        &[one],
    )?;
    let zeros1 = b.op(
        Op::Broadcast {
            shape: shape(&[bsz * h * n, 1]),
        },
        &[zero],
    )?;
    let count = b.op(Op::ScatterAdd { axis: 0 }, &[zeros1, idx, ones])?;
    let count = b.op(Op::Binary(BinaryOp::Max), &[count, one])?;
    let mean = b.op(Op::Binary(BinaryOp::Div), &[sum, count])?;
    reshape(b, mean, &[bsz, h, n, dv])
}

fn shape(sizes: &[usize]) -> Shape {
    Shape(sizes.iter().map(|&n| Dim::Const(n as u64)).collect())
}

/// MoBA's block list — each query block's own block and its `top_k` best earlier
/// key blocks by `mean(Q_block) · mean(K_block)`, unfilled slots `-1` — and causal
/// attention over it.
fn moba(b: &mut GraphBuilder, m: &Moba, ops: &[NodeId]) -> Result<NodeId> {
    let (q, k, v) = (ops[0], ops[1], ops[2]);
    let dims = b.dims().clone();
    let sizes = |b: &GraphBuilder, x: NodeId| -> Result<Vec<usize>> {
        let s = dims
            .resolve(&b.ty(x).shape)
            .map_err(|message| IrError::Type {
                layer: b.layer().map(str::to_string),
                op: "moba_attention".into(),
                message,
            })?;
        Ok(s.iter().map(|&n| n as usize).collect())
    };
    let (qs, ks) = (sizes(b, q)?, sizes(b, k)?);
    let (bsz, h, s, d) = (qs[0], qs[1], qs[2], qs[3]);
    let hk = ks[1];
    let bs = m.block as usize;
    let nb = s / bs;
    let mean_blocks = |b: &mut GraphBuilder, x: NodeId, heads: usize| -> Result<NodeId> {
        let r = b.op(
            Op::Reshape {
                shape: shape(&[bsz, heads, nb, bs, d]),
            },
            &[x],
        )?;
        b.op(
            Op::Reduce {
                kind: ReduceKind::Mean,
                axes: vec![3],
                keep_dims: false,
            },
            &[r],
        )
    };
    let qbar = mean_blocks(b, q, h)?;
    let mut kbar = mean_blocks(b, k, hk)?;
    if hk != h {
        let g = h / hk;
        let r = b.op(
            Op::Reshape {
                shape: shape(&[bsz, hk, 1, nb, d]),
            },
            &[kbar],
        )?;
        let r = b.op(
            Op::Broadcast {
                shape: shape(&[bsz, hk, g, nb, d]),
            },
            &[r],
        )?;
        kbar = b.op(
            Op::Reshape {
                shape: shape(&[bsz, h, nb, d]),
            },
            &[r],
        )?;
    }
    let kt = b.op(
        Op::Transpose {
            perm: vec![0, 1, 3, 2],
        },
        &[kbar],
    )?;
    let scores = b.op(Op::MatMul, &[qbar, kt])?;
    // Only earlier blocks compete (`k` and `q` are block indices here).
    let earlier = b.add(
        Op::Mask {
            expr: MaskExpr::parse("k < q").expect("a valid mask"),
        },
        &[],
        Some(TensorType::new(shape(&[nb, nb]), DType::Bool)),
    )?;
    let dtype = b.ty(q).dtype;
    let minus_inf = b.constant(f64::NEG_INFINITY, dtype)?;
    let scores = b.op(Op::Select, &[earlier, scores, minus_inf])?;
    let own = b.add(
        Op::Iota { axis: 0 },
        &[],
        Some(TensorType::new(shape(&[nb, 1]), DType::I64)),
    )?;
    let own = b.op(
        Op::Broadcast {
            shape: shape(&[bsz, h, nb, 1]),
        },
        &[own],
    )?;
    let top = (m.top_k as usize).min(nb);
    let list = if top == 0 {
        own
    } else {
        let idx = b.op(
            Op::TopK {
                k: top as u64,
                output: TopKOutput::Indices,
            },
            &[scores],
        )?;
        let val = b.op(
            Op::TopK {
                k: top as u64,
                output: TopKOutput::Values,
            },
            &[scores],
        )?;
        // A query block with fewer earlier blocks than `top_k` leaves slots empty.
        let valid = b.op(Op::Compare(CmpOp::Gt), &[val, minus_inf])?;
        let none = b.constant(-1.0, DType::I64)?;
        let idx = b.op(Op::Select, &[valid, idx, none])?;
        b.op(Op::Concat { axis: 3 }, &[idx, own])?
    };
    let attn = Attention {
        mask: Some(MaskExpr::parse("k <= q").expect("a valid mask")),
        groups: m.groups,
        block: Some([m.block, m.block]),
        listed: true,
        ..Attention::new(m.scale)
    };
    b.op(Op::Attention(attn), &[q, k, v, list])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{eval, Precision};
    use crate::{random_bindings, Dims};

    /// The expansion computes what the op does, in the interpreter: MHA and GQA,
    /// `top_k` from none to more than there are earlier blocks.
    #[test]
    fn moba_expansion_agrees_with_the_op() {
        for (h, hk, top_k, block) in [(2, 2, 2, 4), (4, 2, 1, 8), (2, 1, 0, 4), (2, 2, 9, 8)] {
            let mut b = GraphBuilder::new("moba", Dims::new());
            let q = b.input("q", shape(&[2, h, 32, 5]), DType::F32).unwrap();
            let k = b.input("k", shape(&[2, hk, 32, 5]), DType::F32).unwrap();
            let v = b.input("v", shape(&[2, hk, 32, 3]), DType::F32).unwrap();
            let m = Moba {
                scale: 0.7,
                groups: (h / hk) as u64,
                block,
                top_k,
            };
            let o = b.op(Op::Moba(m), &[q, k, v]).unwrap();
            b.output("o", o).unwrap();
            let g = b.finish().unwrap();
            let e = expand(&g).unwrap();
            assert!(!needs_expansion(&e));
            let bind = random_bindings(&g, 9);
            let want = eval(&g, &bind, Precision::F64).unwrap();
            let got = eval(&e, &bind, Precision::F64).unwrap();
            let err = want[0].max_abs_diff(&got[0]);
            assert!(err < 1e-12, "h={h}/{hk} top_k={top_k} block={block}: {err}");
        }
    }

    /// The expansion of LSH attention computes what the op does: one and several
    /// rounds, causal or not, one chunk and several.
    #[test]
    fn lsh_expansion_agrees_with_the_op() {
        for (rounds, buckets, chunk, causal) in [
            (1, 4, 8, true),
            (3, 6, 4, true),
            (2, 2, 32, false),
            (2, 8, 8, false),
        ] {
            let mut b = GraphBuilder::new("lsh", Dims::new());
            let x = b.input("qk", shape(&[2, 2, 32, 6]), DType::F32).unwrap();
            let v = b.input("v", shape(&[2, 2, 32, 3]), DType::F32).unwrap();
            let r = b
                .input("rot", shape(&[rounds, 6, buckets / 2]), DType::F32)
                .unwrap();
            let l = Lsh {
                scale: 0.8,
                n_hashes: rounds as u64,
                buckets: buckets as u64,
                chunk,
                causal,
            };
            let o = b.op(Op::Lsh(l), &[x, v, r]).unwrap();
            b.output("o", o).unwrap();
            let g = b.finish().unwrap();
            let e = expand(&g).unwrap();
            assert!(!needs_expansion(&e));
            let bind = random_bindings(&g, 4);
            let want = eval(&g, &bind, Precision::F64).unwrap();
            let got = eval(&e, &bind, Precision::F64).unwrap();
            let err = want[0].max_abs_diff(&got[0]);
            assert!(
                err < 1e-9,
                "{rounds} rounds, {buckets} buckets, chunk {chunk}: {err}"
            );
        }
    }

    /// The expansion of routing attention computes what the op does: positions in
    /// several clusters, in none, causal or not.
    #[test]
    fn routing_expansion_agrees_with_the_op() {
        for (clusters, window, causal) in [(4u64, 8u64, true), (2, 20, false), (3, 5, true)] {
            let mut b = GraphBuilder::new("routing", Dims::new());
            let x = b.input("qk", shape(&[2, 2, 24, 6]), DType::F32).unwrap();
            let v = b.input("v", shape(&[2, 2, 24, 3]), DType::F32).unwrap();
            let mu = b
                .input("mu", shape(&[2, clusters as usize, 6]), DType::F32)
                .unwrap();
            let r = Routing {
                scale: 0.8,
                clusters,
                window,
                causal,
            };
            let o = b.op(Op::Routing(r), &[x, v, mu]).unwrap();
            b.output("o", o).unwrap();
            let g = b.finish().unwrap();
            let e = expand(&g).unwrap();
            assert!(!needs_expansion(&e));
            let bind = random_bindings(&g, 6);
            let want = eval(&g, &bind, Precision::F64).unwrap();
            let got = eval(&e, &bind, Precision::F64).unwrap();
            let err = want[0].max_abs_diff(&got[0]);
            assert!(err < 1e-9, "{clusters} clusters of {window}: {err}");
        }
    }
}
