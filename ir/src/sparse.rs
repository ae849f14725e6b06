//! Block layouts: which `(query block, key block)` tiles of an attention's score
//! matrix a mask leaves non-empty, and which of those it cuts through.
//!
//! The layout is a pure function of the mask expression, the dimension values it
//! reads, the operand sizes and the block size, so it is computed once — at compile
//! time — and shared: by every layer with the same mask and sizes (a process-wide
//! memo), and by every head and batch row when the mask reads neither `h` nor `b`.
//! Blocks are classified with [`MaskExpr::coverage`]: interval arithmetic for the
//! affine masks, evaluation for the builtins (BigBird's random blocks).

use crate::{Coord, Coverage, Dims, MaskExpr};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Most `(group, query block, key block)` tiles a layout may have: past this the
/// blocks are too small for the sequence and the layout itself would be the cost.
pub const MAX_LAYOUT_BLOCKS: u64 = 1 << 26;

/// The `[query rows, keys]` block dense fused attention runs in: 64 × 64, the best
/// measured for D = 64 and D = 128 on the CPU, shrunk to the sequence when it is
/// shorter (a 16-, 32- or 64-key tile, whole 16-row groups) so a short sequence does
/// not pay for a padded tile.
pub fn dense_attention_block(sq: usize, sk: usize) -> [usize; 2] {
    let bq = sq.next_multiple_of(16).clamp(16, 64);
    let bk = match sk {
        0..=16 => 16,
        17..=32 => 32,
        _ => 64,
    };
    [bq, bk]
}

/// The kernel tile inside a listed block of `[lq, lk]` (a data-dependent block list):
/// the largest of 64, 32, 16 dividing each side.
pub fn listed_tile([lq, lk]: [usize; 2]) -> [usize; 2] {
    let fit = |n: usize| {
        [64, 32, 16]
            .into_iter()
            .find(|t| n.is_multiple_of(*t))
            .unwrap_or(16)
    };
    [fit(lq), fit(lk)]
}

/// The non-empty blocks of a mask, per layout group, in CSR form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    /// `[query rows, keys]` per block.
    pub block: [usize; 2],
    pub q_blocks: usize,
    pub k_blocks: usize,
    /// Whether the layout differs per batch row / per head (the mask reads `b` / `h`).
    pub by_batch: bool,
    pub by_head: bool,
    /// Batch and head counts of the attention.
    pub batch: usize,
    pub heads: usize,
    /// Row `g · q_blocks + qb` holds the entries `rows[r]..rows[r + 1]`.
    pub rows: Vec<u32>,
    /// `key block << 1 | partial`, ascending key blocks within a row. A partial block
    /// evaluates the mask per element; a full one never does.
    pub entries: Vec<u32>,
}

/// What a layout is built from; the memo key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    mask: Option<String>,
    dims: Vec<(String, Option<u64>)>,
    sizes: [usize; 4],
    block: [usize; 2],
}

impl BlockLayout {
    /// The layout of `mask` for `sizes = [batch, heads, Sq, Sk]` and `block = [bq,
    /// bk]` (memoized). A block that runs past `Sk` is partial: its missing keys are
    /// masked like any other. An error when the layout would be absurdly large.
    pub fn of(
        mask: Option<&MaskExpr>,
        dims: &Dims,
        sizes: [usize; 4],
        block: [usize; 2],
    ) -> Result<Arc<BlockLayout>, String> {
        static MEMO: OnceLock<Mutex<HashMap<Key, Arc<BlockLayout>>>> = OnceLock::new();
        let key = Key {
            mask: mask.map(MaskExpr::to_string),
            dims: mask
                .map(|m| m.dim_names())
                .unwrap_or_default()
                .into_iter()
                .map(|d| {
                    let v = dims.get(&d);
                    (d, v)
                })
                .collect(),
            sizes,
            block,
        };
        let memo = MEMO.get_or_init(Default::default);
        if let Some(l) = memo.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(l);
        }
        let layout = Arc::new(BlockLayout::build(mask, dims, sizes, block)?);
        if let Ok(mut m) = memo.lock() {
            m.insert(key, layout.clone());
        }
        Ok(layout)
    }

    fn build(
        mask: Option<&MaskExpr>,
        dims: &Dims,
        [batch, heads, sq, sk]: [usize; 4],
        [bq, bk]: [usize; 2],
    ) -> Result<BlockLayout, String> {
        if bq == 0 || bk == 0 {
            return Err("a block size must be at least 1".into());
        }
        let coords = mask.map(|m| m.coords()).unwrap_or_default();
        let by_batch = coords.contains(&Coord::B);
        let by_head = by_batch || coords.contains(&Coord::H);
        let (q_blocks, k_blocks) = (sq.div_ceil(bq), sk.div_ceil(bk));
        let groups = match (by_batch, by_head) {
            (true, _) => batch * heads,
            (false, true) => heads,
            _ => 1,
        };
        let tiles = (groups as u64)
            .saturating_mul(q_blocks as u64)
            .saturating_mul(k_blocks as u64);
        if tiles > MAX_LAYOUT_BLOCKS {
            return Err(format!(
                "{bq}x{bk} blocks give {tiles} blocks for {sq} queries x {sk} keys, more than {MAX_LAYOUT_BLOCKS}"
            ));
        }
        let mut rows = Vec::with_capacity(groups * q_blocks + 1);
        let mut entries = Vec::new();
        rows.push(0);
        for g in 0..groups {
            let (b, h) = match (by_batch, by_head) {
                (true, _) => (g / heads, g % heads),
                (false, true) => (0, g),
                _ => (0, 0),
            };
            // A group stands for all batch rows / heads the mask does not read.
            let b_range = if by_batch {
                (b as i64, b as i64)
            } else {
                (0, batch as i64 - 1)
            };
            let h_range = if by_head {
                (h as i64, h as i64)
            } else {
                (0, heads as i64 - 1)
            };
            for qb in 0..q_blocks {
                let q = ((qb * bq) as i64, ((qb * bq + bq).min(sq) - 1) as i64);
                for kb in 0..k_blocks {
                    let k = ((kb * bk) as i64, ((kb * bk + bk).min(sk) - 1) as i64);
                    let ragged = (kb + 1) * bk > sk;
                    let coverage = match mask {
                        Some(m) => m.coverage([b_range, h_range, q, k], dims),
                        None => Coverage::Full,
                    };
                    let partial = match coverage {
                        Coverage::Empty => continue,
                        Coverage::Full => ragged,
                        Coverage::Partial => true,
                    };
                    entries.push((kb as u32) << 1 | partial as u32);
                }
                rows.push(entries.len() as u32);
            }
        }
        Ok(BlockLayout {
            block: [bq, bk],
            q_blocks,
            k_blocks,
            by_batch,
            by_head,
            batch,
            heads,
            rows,
            entries,
        })
    }

    /// Layout groups: 1, `heads` or `batch · heads`.
    pub fn groups(&self) -> usize {
        self.rows.len().saturating_sub(1) / self.q_blocks.max(1)
    }

    /// The group of batch row `b`, head `h`.
    pub fn group(&self, b: usize, h: usize) -> usize {
        match (self.by_batch, self.by_head) {
            (true, _) => b * self.heads + h,
            (false, true) => h,
            _ => 0,
        }
    }

    /// `(key block, partial)` of query block `qb` in group `g`.
    pub fn row(&self, g: usize, qb: usize) -> impl Iterator<Item = (usize, bool)> + '_ {
        let r = g * self.q_blocks + qb;
        self.entries[self.rows[r] as usize..self.rows[r + 1] as usize]
            .iter()
            .map(|&e| ((e >> 1) as usize, e & 1 == 1))
    }

    /// Blocks computed over all batch rows and heads.
    pub fn computed_blocks(&self) -> u64 {
        let per_group = (self.batch * self.heads / self.groups().max(1)) as u64;
        self.entries.len() as u64 * per_group
    }

    /// Of the computed blocks, those that evaluate the mask.
    pub fn partial_blocks(&self) -> u64 {
        let per_group = (self.batch * self.heads / self.groups().max(1)) as u64;
        self.entries.iter().filter(|&&e| e & 1 == 1).count() as u64 * per_group
    }

    /// All blocks of the score matrices, computed or not.
    pub fn total_blocks(&self) -> u64 {
        (self.batch * self.heads) as u64 * (self.q_blocks * self.k_blocks) as u64
    }

    /// The fraction of blocks computed.
    pub fn density(&self) -> f64 {
        self.computed_blocks() as f64 / self.total_blocks().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_layout_is_the_lower_triangle() {
        let m = MaskExpr::parse("k <= q").unwrap();
        let l = BlockLayout::of(Some(&m), &Dims::new(), [2, 4, 256, 256], [64, 64]).unwrap();
        assert_eq!(l.groups(), 1);
        assert_eq!(l.computed_blocks(), 8 * 10);
        assert_eq!(l.partial_blocks(), 8 * 4);
        let row: Vec<_> = l.row(0, 2).collect();
        assert_eq!(row, vec![(0, false), (1, false), (2, true)]);
        assert!((l.density() - 10.0 / 16.0).abs() < 1e-12);
    }

    #[test]
    fn head_dependent_masks_get_a_layout_per_head() {
        let m = MaskExpr::parse("h == 0 || k <= q").unwrap();
        let l = BlockLayout::of(Some(&m), &Dims::new(), [1, 2, 128, 100], [64, 64]).unwrap();
        assert_eq!(l.groups(), 2);
        // Head 0 sees everything (the ragged last block stays partial).
        assert_eq!(l.row(0, 0).collect::<Vec<_>>(), vec![(0, false), (1, true)]);
        assert_eq!(l.row(1, 0).collect::<Vec<_>>(), vec![(0, true)]);
        assert_eq!(l.group(0, 1), 1);
    }

    #[test]
    fn absurd_layouts_are_errors() {
        let m = MaskExpr::parse("k <= q").unwrap();
        let huge = 1 << 24;
        assert!(BlockLayout::of(Some(&m), &Dims::new(), [1, 1, huge, huge], [16, 16]).is_err());
    }
}
