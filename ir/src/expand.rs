//! Expansions: dynamic sparse attention written as the ops that compute its block
//! list, then `block_sparse_attention` over that list. Backends that have no kernel
//! of their own for such an op run its expansion; the interpreter evaluates the op
//! directly, so the expansion is checked against the op's own semantics.

use crate::{
    Attention, CmpOp, DType, Dim, Graph, GraphBuilder, IrError, MaskExpr, Moba, NodeId, Op,
    ReduceKind, Result, Shape, TensorType, TopKOutput,
};
use std::collections::HashMap;

/// Whether `graph` has an op that [`expand`] rewrites.
pub fn needs_expansion(graph: &Graph) -> bool {
    graph
        .node_ids()
        .any(|id| matches!(graph.node(id).op, Op::Moba(_)))
}

/// `graph` with every `moba_attention` replaced by its block list and a
/// `block_sparse_attention` over it; everything else (names, layers, outputs, the
/// order of inputs and params) as it was.
pub fn expand(graph: &Graph) -> Result<Graph> {
    let mut b = GraphBuilder::new(graph.name.clone(), graph.dims.clone());
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        b.set_layer(node.layer.clone());
        let operands: Vec<NodeId> = graph.operands(id).iter().map(|o| map[o]).collect();
        let new = match &node.op {
            Op::Moba(m) => moba(&mut b, m, &operands)?,
            op => {
                let declared = op.is_source().then(|| node.ty.clone());
                b.add(op.clone(), &operands, declared)?
            }
        };
        map.insert(id, new);
    }
    for (name, id) in graph.outputs() {
        b.output(name.clone(), map[id])?;
    }
    b.finish()
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
}
