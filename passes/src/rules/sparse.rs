//! `sparse`: masked attention into block-sparse attention.
//!
//! `attention-block-sparse` offers, for each block size the CPU and GPU kernels
//! support, the same attention computed only over the blocks its mask leaves
//! non-empty ([`BlockLayout`]); the mask is evaluated only in the blocks it cuts
//! through. It is exact — an empty block contributes `exp(-inf) = 0` to every row it
//! touches — and the cost model, which charges only the computed blocks plus a
//! per-block overhead, picks the block size, or keeps the dense kernel when the mask
//! skips too little to pay for the block list.

use super::{class_rule, sizes, Build, Candidates, Family, Rule, B};
use crate::{Attn, EGraph};
use attnc_ir::{Attention, BlockLayout, Op};
use egg::{Id, Subst};

const S: Family = Family::Sparse;

/// Block sizes `[query rows, keys]` offered: the kernels' register tiles take
/// multiples of 16 rows and 32 or 64 keys.
pub const BLOCK_SIZES: [[u64; 2]; 5] = [[16, 16], [32, 32], [64, 32], [64, 64], [128, 64]];

#[rustfmt::skip]
pub fn rules() -> Vec<Rule> {
    vec![
        // attention(q, k, v; mask) == block_sparse_attention(q, k, v; mask, block) —
        // the skipped blocks are exactly those where the mask holds nowhere.
        class_rule("attention-block-sparse", S,
            "attention(q, k, v; mask) == block_sparse_attention(q, k, v; mask, blocks where the mask holds)",
            |eg, id| found(!readings(eg, id).is_empty()), build),
    ]
}

fn found(yes: bool) -> Vec<Subst> {
    if yes {
        vec![Subst::default()]
    } else {
        Vec::new()
    }
}

/// `(node, block-sparse attribute, operands)` for every dense masked attention of
/// class `id` and every block size whose layout skips at least one block.
fn readings(eg: &EGraph, id: Id) -> Vec<(&Attn, Attention, Vec<Id>)> {
    let mut out = Vec::new();
    for n in &eg[id].nodes {
        let Attn::Attention(children) = n else {
            continue;
        };
        let Some(attr) = crate::attr_in(eg, children[0]).and_then(|a| a.attention()) else {
            continue;
        };
        if attr.block.is_some() || attr.mask.is_none() {
            continue;
        }
        let ops: Vec<Id> = children[1..].iter().map(|&c| eg.find(c)).collect();
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
