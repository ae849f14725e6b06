//! `sparse`: masked attention into block-sparse attention.
//!
//! `attention-block-sparse` offers, for each block size the CPU and GPU kernels
//! support, the same attention computed only over the blocks its mask leaves
//! non-empty ([`BlockLayout`]); the mask is evaluated only in the blocks it cuts
//! through. It is exact — an empty block contributes `exp(-inf) = 0` to every row it
//! touches — and the cost model, which charges only the computed blocks plus a
//! per-block overhead, picks the block size, or keeps the dense kernel when the mask
//! skips too little to pay for the block list.
//!
//! `attention-document-blocks` does the same for document masking, whose blocks
//! depend on data: the block list is computed in the graph from the segment ids —
//! each block's smallest and largest id, a key block listed for a query block when
//! their id ranges meet — so it is computed once per input and shared (hash-consed)
//! by every layer and head that reads the same segments.

use super::{class_rule, found, sizes, Build, Candidates, Family, Rule, B};
use crate::{Attn, EGraph, Source, SourceKind};
use attnc_ir::{
    Attention, BlockLayout, CmpOp, DType, Dim, Op, ReduceKind, Shape, TensorType, UnaryOp,
};
use egg::{Id, Subst};

const S: Family = Family::Sparse;

/// Block sizes `[query rows, keys]` offered: the kernels' register tiles take
/// multiples of 16 rows and 32 or 64 keys.
pub const BLOCK_SIZES: [[u64; 2]; 5] = [[16, 16], [32, 32], [64, 32], [64, 64], [128, 64]];

/// Above this density only the dense block size is offered.
const NEARLY_DENSE: f64 = 0.9;

#[rustfmt::skip]
pub fn rules() -> Vec<Rule> {
    vec![
        // attention(q, k, v; mask) == block_sparse_attention(q, k, v; mask, block) —
        // the skipped blocks are exactly those where the mask holds nowhere.
        class_rule("attention-block-sparse", S,
            "attention(q, k, v; mask) == block_sparse_attention(q, k, v; mask, blocks where the mask holds)",
            |eg, id| found(!readings(eg, id).is_empty()), build),
        // attention(q, k, v, seg; mask) == block_sparse_attention(q, k, v, seg,
        //   blocks(seg); mask) — a block whose query and key id ranges do not meet
        //   holds no key of the query's document.
        class_rule("attention-document-blocks", S,
            "attention(q, k, v, seg) == block_sparse_attention(q, k, v, seg, blocks whose id ranges meet)",
            |eg, id| found(!document_readings(eg, id).is_empty()), document_build),
    ]
}

/// Square block sizes offered for document blocks (they must divide the sequence).
const DOCUMENT_BLOCKS: [u64; 2] = [32, 64];

/// `(node, attribute, operands, block)` for every dense document-masked attention of
/// class `id` and block size dividing its sequence.
fn document_readings(eg: &EGraph, id: Id) -> Vec<(&Attn, Attention, Vec<Id>, u64)> {
    let mut out = Vec::new();
    for (n, attr, ops) in dense_attentions(eg, id) {
        if !attr.segments {
            continue;
        }
        let Some(q) = sizes(eg, ops[0]) else { continue };
        for bs in DOCUMENT_BLOCKS {
            if q.len() == 4 && q[2] % bs == 0 && q[2] > bs {
                out.push((n, attr.clone(), ops.clone(), bs));
            }
        }
    }
    out
}

fn document_build<'e>(eg: &'e EGraph, id: Id, _: &Subst) -> Candidates<'e> {
    let mut out = Vec::new();
    for (node, attr, ops, bs) in document_readings(eg, id) {
        let mut b = Build::replacing(eg, node);
        let built = (|| {
            let q = sizes(eg, ops[0])?;
            let (batch, heads, s) = (q[0], q[1], q[2]);
            let nb = s / bs;
            let operands: Vec<B> = ops.iter().map(|&o| b.class(o)).collect();
            let seg = operands[3 + attr.bias as usize];
            let shape = |xs: &[u64]| Shape(xs.iter().map(|&n| Dim::Const(n)).collect());
            let reshape =
                |b: &mut Build, x: B, xs: &[u64]| b.op(&Op::Reshape { shape: shape(xs) }, &[x]);
            let max = |b: &mut Build, x: B| {
                b.op(
                    &Op::Reduce {
                        kind: ReduceKind::Max,
                        axes: vec![2],
                        keep_dims: false,
                    },
                    &[x],
                )
            };
            // Each block's id range: [lo, hi] = [-max(-seg), max(seg)] over the block,
            // in f32 (reductions are float; ids below 2^24 are exact).
            let blocks = reshape(&mut b, seg, &[batch, nb, bs])?;
            let blocks = b.op(&Op::Cast { to: DType::F32 }, &[blocks])?;
            let hi = max(&mut b, blocks)?;
            let neg = b.op(&Op::Unary(UnaryOp::Neg), &[blocks])?;
            let neg_lo = max(&mut b, neg)?;
            let lo = b.op(&Op::Unary(UnaryOp::Neg), &[neg_lo])?;
            let (lo_q, hi_q) = (
                reshape(&mut b, lo, &[batch, nb, 1])?,
                reshape(&mut b, hi, &[batch, nb, 1])?,
            );
            let (lo_k, hi_k) = (
                reshape(&mut b, lo, &[batch, 1, nb])?,
                reshape(&mut b, hi, &[batch, 1, nb])?,
            );
            let a = b.op(&Op::Compare(CmpOp::Le), &[lo_q, hi_k])?;
            let c = b.op(&Op::Compare(CmpOp::Le), &[lo_k, hi_q])?;
            // a && c
            let meet = b.op(&Op::Select, &[a, c, a])?;
            let key_block = b.node(Attn::Source(Source {
                kind: SourceKind::Iota(2),
                ty: TensorType::new(shape(&[batch, nb, nb]), DType::I64),
            }))?;
            let none = b.constant(-1.0, DType::I64)?;
            let list = b.op(&Op::Select, &[meet, key_block, none])?;
            let list = reshape(&mut b, list, &[batch, 1, nb, nb])?;
            let list = b.op(
                &Op::Broadcast {
                    shape: shape(&[batch, heads, nb, nb]),
                },
                &[list],
            )?;
            let sparse = Attention {
                block: Some([bs, bs]),
                listed: true,
                ..attr.clone()
            };
            let mut all = operands.clone();
            all.push(list);
            b.op(&Op::Attention(sparse), &all)
        })();
        if built.is_some() {
            out.push(b);
        }
    }
    out
}

/// `(node, attribute, operands)` of every dense (not yet block-sparse) attention of
/// class `id`.
fn dense_attentions(eg: &EGraph, id: Id) -> impl Iterator<Item = (&Attn, Attention, Vec<Id>)> {
    eg[id].nodes.iter().filter_map(move |n| {
        let Attn::Attention(children) = n else {
            return None;
        };
        let attr = crate::attr_in(eg, children[0])?.attention()?;
        let ops = children[1..].iter().map(|&c| eg.find(c)).collect();
        attr.block.is_none().then_some((n, attr, ops))
    })
}

/// `(node, block-sparse attribute, operands)` for every dense masked attention of
/// class `id` and every block size whose layout skips at least one block.
fn readings(eg: &EGraph, id: Id) -> Vec<(&Attn, Attention, Vec<Id>)> {
    let mut out = Vec::new();
    for (n, attr, ops) in dense_attentions(eg, id) {
        if attr.mask.is_none() {
            continue;
        }
        let (Some(q), Some(k)) = (sizes(eg, ops[0]), sizes(eg, ops[1])) else {
            continue;
        };
        if q.len() != 4 || k.len() != 4 {
            continue;
        }
        let shape = [q[0], q[1], q[2], k[2]].map(|n| n as usize);
        for block in BLOCK_SIZES {
            let Ok(layout) = BlockLayout::of(
                attr.mask.as_ref(),
                &eg.analysis.dims,
                shape,
                block.map(|n| n as usize),
            ) else {
                continue;
            };
            // Nearly dense: only the dense kernel's own tiles, so the sparse form does
            // the dense work minus the skipped blocks and is never slower.
            let dense_tile = attnc_ir::dense_attention_block(shape[2], shape[3]);
            let nearly_dense = layout.density() > NEARLY_DENSE;
            if nearly_dense && block.map(|n| n as usize) != dense_tile {
                continue;
            }
            if layout.computed_blocks() < layout.total_blocks() {
                let sparse = Attention {
                    block: Some(block),
                    ..attr.clone()
                };
                out.push((n, sparse, ops.clone()));
            }
        }
    }
    out
}

fn build<'e>(eg: &'e EGraph, id: Id, _: &Subst) -> Candidates<'e> {
    let mut out = Vec::new();
    for (node, attr, ops) in readings(eg, id) {
        let mut b = Build::replacing(eg, node);
        let operands: Vec<B> = ops.iter().map(|&o| b.class(o)).collect();
        if b.op(&Op::Attention(attr), &operands).is_some() {
            out.push(b);
        }
    }
    out
}
