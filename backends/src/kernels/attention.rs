//! Fused attention on the CPU, FlashAttention-2 style: one task per (batch, KV head,
//! query block, query head of the group) holds a `BQ`-row block of queries and
//! streams the keys and values past it in `BK`-key blocks, keeping a running row
//! max `m`, row sum `l` and an unnormalized output `O` (rescaled by `2^(m_old -
//! m_new)` when the max grows). Nothing of size `Sq × Sk` is ever allocated: the
//! scratch of a task is `BQ × (BK + Dv)` floats on its stack, and the only
//! allocation is K repacked per block (`O(Sk · Dk)`).
//!
//! - Scores `S = Q·Kᵀ` of a block: `RS`-row register tiles over the `BK` keys of the
//!   block (`RS·BK/16` = 16 accumulators), K packed transposed per block (`Kp[d][j]`,
//!   zero-padded past Sk) so each step is `BK/16` vector loads and `RS` broadcasts.
//! - Softmax in base 2: scores are scaled by `scale·log2 e` (the modifiers — softcap,
//!   bias, mask — work on the natural scores first), `2^x` is a vectorized polynomial
//!   (exact 0 for masked `-inf` scores). A row fully masked so far keeps `m = -inf`
//!   and contributes nothing; a row masked everywhere ends `0/0 = NaN`, as the
//!   interpreter's softmax does.
//! - `O += P·V`: `RP`-row register tiles over Dv, loaded and rescaled once per block.
//! - Blocks: dense `attention` visits every key block and, when it has a mask,
//!   evaluates it everywhere, 16 keys at a time. `block_sparse_attention` visits only
//!   the blocks of its [`BlockLayout`] — computed at compile time from the mask
//!   expression and stored as a constant CSR list (`rows`, `entries`), one per layout
//!   group (shared by all heads and batch rows when the mask reads neither) — and
//!   evaluates the mask only in the partial ones. The block size is the op's.
//! - GQA: the query heads of a group are adjacent tasks, so a thread streams one KV
//!   head's blocks for all of them while they are in cache; K/V are never repeated.
//! - Load balance: query blocks are visited in a zigzag (first, last, second, ...), so
//!   OpenMP's static chunks get as many long causal rows as short ones — unless the
//!   layout's rows carry even work (a sliding window), when they go in order and a
//!   thread's consecutive tasks share key blocks in cache.

use super::{exp2, function, strided_type, Code, Exp2, KernelSet, LANES};
use attnc_ir::{
    dense_attention_block, listed_tile, Attention, BlockLayout, Dims, MaskBinOp, MaskExpr,
};
use std::collections::hash_map::DefaultHasher;
use std::fmt::Write;
use std::hash::{Hash, Hasher};

/// Query rows per task and keys per block: `(BQ, BK)`. Dense attention uses
/// [`dense_attention_block`] — 64 × 64 was the best of {32, 64} × {32, 64, 128}
/// measured for D = 64 and D = 128 (128 keys need 32 accumulators per score tile and
/// spill); block-sparse its own.
fn blocks(a: &Attention, sq: usize, sk: usize) -> (usize, usize) {
    let [bq, bk] = match a.block {
        Some(b) if a.listed => listed_tile(b.map(|n| n as usize)),
        Some(b) => b.map(|n| n as usize),
        None => dense_attention_block(sq, sk),
    };
    (bq, bk)
}

/// Whether the kernel can compile `a`: block-sparse blocks of 16 to 128 query rows
/// (a multiple of 16: `α` and `l` are updated 16 rows at a time) and 16, 32 or 64 keys
/// (the score tile's accumulators), and a mask the backends can evaluate.
pub(crate) fn check(a: &Attention, dims: &Dims) -> Result<(), String> {
    if let (Some([lq, lk]), true) = (a.block, a.listed) {
        if lq % 16 != 0 || lk % 16 != 0 {
            return Err(format!(
                "the CPU kernel tiles listed blocks whose sides are multiples of 16, not {lq}x{lk}"
            ));
        }
    } else if let Some([bq, bk]) = a.block {
        let rows_ok = bq % 16 == 0 && (16..=128).contains(&bq);
        let keys_ok = matches!(bk, 16 | 32 | 64);
        if !rows_ok || !keys_ok {
            return Err(format!(
                "the CPU kernel tiles blocks of 16 to 128 query rows (a multiple of 16) by 16, 32 or 64 keys, not {bq}x{bk}"
            ));
        }
    }
    match &a.mask {
        Some(m) => super::check_mask(m, dims),
        None => Ok(()),
    }
}
/// Rows of a score register tile: 16 accumulators (4 rows of 64 keys, 8 of 32, 16 of
/// 16), within one block.
fn score_rows(bq: usize, bk: usize) -> usize {
    (16 * LANES / bk).min(bq)
}

const LOG2E: f64 = std::f64::consts::LOG2_E;

/// One fused attention: the op and its operand shapes.
pub(crate) struct AttentionKernel<'a> {
    pub op: &'a Attention,
    pub q: Vec<usize>,
    pub k: Vec<usize>,
    pub v: Vec<usize>,
    pub bias: Option<Vec<usize>>,
    /// Document ids (`segments`), i64 `[B, S]`.
    pub segments: Option<Vec<usize>>,
    /// The block list operand (`listed`), i64.
    pub list: Option<Vec<usize>>,
    pub dims: &'a Dims,
}

impl AttentionKernel<'_> {
    fn out(&self) -> Vec<usize> {
        vec![self.q[0], self.q[1], self.q[2], self.v[3]]
    }

    fn key(&self) -> String {
        let mut h = DefaultHasher::new();
        let a = self.op;
        (
            a.scale.to_bits(),
            a.softcap.map(f64::to_bits),
            a.groups,
            a.block,
        )
            .hash(&mut h);
        a.mask.as_ref().map(|m| m.to_string()).hash(&mut h);
        (
            &self.q,
            &self.k,
            &self.v,
            &self.bias,
            &self.segments,
            &self.list,
        )
            .hash(&mut h);
        if let Some(m) = &a.mask {
            for name in m.dim_names() {
                (self.dims.get(&name)).hash(&mut h);
            }
        }
        format!("attention.{:016x}", h.finish())
    }

    /// Operand types: q, k, v, [bias], out.
    pub fn operand_types(&self) -> Vec<String> {
        let mut t = vec![
            strided_type(&self.q, "f32"),
            strided_type(&self.k, "f32"),
            strided_type(&self.v, "f32"),
        ];
        if let Some(b) = &self.bias {
            t.push(strided_type(b, "f32"));
        }
        if let Some(s) = &self.segments {
            t.push(strided_type(s, "i64"));
        }
        if let Some(l) = &self.list {
            t.push(strided_type(l, "i64"));
        }
        t.push(strided_type(&self.out(), "f32"));
        t
    }
}

/// The kernel for `a` (written once per distinct op and shapes); returns its symbol.
pub(crate) fn attention(set: &mut KernelSet, a: &AttentionKernel) -> String {
    if let Some(m) = &a.op.mask {
        super::declare_random_tables(set, m, a.dims);
    }
    let avx512 = set.avx512;
    set.get(a.key(), |name| write_attention(name, a, avx512))
}

/// Shapes and derived sizes.
struct Shape {
    /// Query rows per task, keys per block.
    bq: usize,
    bk: usize,
    b: usize,
    hk: usize,
    groups: usize,
    sq: usize,
    sk: usize,
    dk: usize,
    dv: usize,
    nqb: usize,
    nkb: usize,
    /// Vectors per output row.
    nvd: usize,
    /// Rows of an output register tile.
    rp: usize,
}

fn write_attention(name: &str, a: &AttentionKernel, avx512: bool) -> String {
    let (b, h, sq, dk) = (a.q[0], a.q[1], a.q[2], a.q[3]);
    let (hk, sk, dv) = (a.k[1], a.k[2], a.v[3]);
    let nvd = dv.div_ceil(LANES);
    let rp = [8, 4, 2, 1]
        .into_iter()
        .find(|r| r * nvd <= 16)
        .unwrap_or(1);
    let (bq, bk) = blocks(a.op, sq, sk);
    let s = Shape {
        bq,
        bk,
        b,
        hk,
        groups: h / hk.max(1),
        sq,
        sk,
        dk,
        dv,
        nqb: sq.div_ceil(bq),
        nkb: sk.div_ceil(bk),
        nvd,
        rp,
    };
    let types = a.operand_types();
    let mut names = vec!["%q", "%k", "%v"];
    if a.bias.is_some() {
        names.push("%bias");
    }
    if a.segments.is_some() {
        names.push("%seg");
    }
    if a.list.is_some() {
        names.push("%list");
    }
    names.push("%o");
    let params: Vec<(String, String)> = names
        .iter()
        .map(|n| n.to_string())
        .zip(types.iter().cloned())
        .collect();
    let (tq, tk, tv, to) = (&types[0], &types[1], &types[2], types.last().unwrap());
    let tbias = a.bias.as_ref().map(|_| types[3].clone());
    let tlist = a.list.as_ref().map(|_| types[types.len() - 2].clone());
    let tseg = a
        .segments
        .as_ref()
        .map(|_| types[3 + a.bias.is_some() as usize].clone());

    // Block-sparse: the layout as two constant lists (`check` bounded its size).
    let mut prelude = String::new();
    let layout = a.op.block.filter(|_| !a.op.listed).and_then(|_| {
        let sizes = [s.b, s.hk * s.groups, s.sq, s.sk];
        let l = BlockLayout::of(a.op.mask.as_ref(), a.dims, sizes, [bq, bk]).ok()?;
        let mut globals = Vec::new();
        for (suffix, xs) in [("rows", &l.rows), ("entries", &l.entries)] {
            let hex: String = xs
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .map(|b| format!("{b:02X}"))
                .collect();
            // An empty list still needs one element to be a valid memref.
            let (n, hex) = if xs.is_empty() {
                (1, "00000000".to_string())
            } else {
                (xs.len(), hex)
            };
            let g = format!("{name}.{suffix}");
            let _ = writeln!(
                prelude,
                "memref.global \"private\" constant @{g} : memref<{n}xi32> = dense<\"0x{hex}\">"
            );
            globals.push((g, format!("memref<{n}xi32>")));
        }
        Some((l, globals))
    });

    let mut c = Code::new();
    // K, transposed per block: Kp[b][hk][kb][d][j] = K[b][hk][kb·BK + j][d] (0 past Sk).
    let tkp = format!("memref<{}x{}x{}x{}x{bk}xf32>", s.b, s.hk, s.nkb, s.dk);
    let kp = c.let_(format_args!(
        "memref.alloc() {{alignment = 64 : i64}} : {tkp}"
    ));
    let (bv, hkv, nkbv) = (c.idx(s.b), c.idx(s.hk), c.idx(s.nkb));
    c.parallel(&[&bv, &hkv, &nkbv], |c, ivs| {
        let (ib, ihk, kb) = (&ivs[0], &ivs[1], &ivs[2]);
        let zero = c.idx(0);
        let bkv = c.idx(bk);
        let last = c.idx(s.sk - 1);
        let skv = c.idx(s.sk);
        let pad = c.f32(0.0);
        let k0 = c.mad(&zero, kb, bk);
        c.for_range(&zero, &bkv, 1, |c, j| {
            let key = c.ix("addi", &k0, j);
            let inside = c.let_(format_args!("arith.cmpi ult, {key}, {skv} : index"));
            let clamped = c.min(&key, &last);
            let zero = c.idx(0);
            let dkv = c.idx(s.dk);
            c.for_range(&zero, &dkv, 1, |c, d| {
                let x = c.let_(format_args!(
                    "memref.load %k[{ib}, {ihk}, {clamped}, {d}] : {tk}"
                ));
                let x = c.let_(format_args!("arith.select {inside}, {x}, {pad} : f32"));
                c.line(format_args!(
                    "memref.store {x}, {kp}[{ib}, {ihk}, {kb}, {d}, {j}] : {tkp}"
                ));
            });
        });
    });

    // A block list: the mask's coverage of every tile, looked up per listed block.
    let kinds = a.op.listed.then(|| {
        let sizes = [s.b, s.hk * s.groups, s.sq, s.sk];
        let l = BlockLayout::of(a.op.mask.as_ref(), a.dims, sizes, [bq, bk]).ok();
        let groups = l.as_ref().map_or(1, |l| l.groups());
        let mut kinds = vec![0u8; groups * s.nqb * s.nkb];
        if let Some(l) = &l {
            for g in 0..groups {
                for qt in 0..s.nqb {
                    for (kt, partial) in l.row(g, qt) {
                        kinds[(g * s.nqb + qt) * s.nkb + kt] = 1 + partial as u8;
                    }
                }
            }
        }
        let hex: String = kinds.iter().map(|b| format!("{b:02X}")).collect();
        let g = format!("{name}.kinds");
        let t = format!("memref<{}xi8>", kinds.len());
        let _ = writeln!(
            prelude,
            "memref.global \"private\" constant @{g} : {t} = dense<\"0x{hex}\">"
        );
        (g, t, l.map_or((false, false), |l| (l.by_batch, l.by_head)))
    });
    let listed = kinds.map(|(g, t, (by_batch, by_head))| {
        let [lq, lk] = a.op.block.unwrap_or([1, 1]).map(|n| n as usize);
        let list = a.list.as_deref().unwrap_or(&[0, 0, 0, 0]);
        let table = c.let_(format_args!("memref.get_global @{g} : {t}"));
        Listed {
            kinds: (table, t),
            list_type: tlist.clone().unwrap_or_default(),
            q_tiles: lq / bq,
            k_tiles: lk / bk,
            key_blocks: s.sk.div_ceil(lk),
            slots: list[3],
            by_batch,
            by_head,
        }
    });
    let blocks = layout.as_ref().map(|(l, globals)| {
        let [rows, entries] = [&globals[0], &globals[1]].map(|(g, t)| {
            (
                c.let_(format_args!("memref.get_global @{g} : {t}")),
                t.clone(),
            )
        });
        Blocks {
            rows,
            entries,
            by_batch: l.by_batch,
            by_head: l.by_head,
        }
    });
    // Query blocks in order when their work is even (a band: neighbours share key
    // blocks, so a thread's consecutive tasks reuse them in cache); zigzag when it
    // grows along the rows (causal), so static chunks get equal work.
    let balanced = layout.as_ref().is_some_and(|(l, _)| {
        let n = l.q_blocks;
        let work = |r: std::ops::Range<usize>| -> u64 {
            r.map(|qb| (l.rows[qb + 1] - l.rows[qb]) as u64).sum()
        };
        n >= 4 && 2 * work(n / 2..n) <= 3 * work(0..n / 2)
    });
    let bounds = [
        (0, s.b as i64 - 1),
        (0, (s.hk * s.groups) as i64 - 1),
        (0, (s.nqb * bq) as i64 - 1),
        (0, (s.nkb * bk) as i64 - 1),
    ];
    let mask_int = match &a.op.mask {
        Some(m) if fits_i32(m, bounds, a.dims) && s.sk < i32::MAX as usize => "i32",
        _ => "i64",
    };
    let gv = c.idx(s.groups);
    let nqbv = c.idx(s.nqb);
    c.parallel(&[&bv, &hkv, &nqbv, &gv], |c, ivs| {
        let (ib, ihk, qz, g) = (&ivs[0], &ivs[1], &ivs[2], &ivs[3]);
        let ctx = Task {
            s: &s,
            a,
            ib: ib.clone(),
            ihk: ihk.clone(),
            ih: c.mad(g, ihk, s.groups),
            qb: if balanced {
                qz.clone()
            } else {
                zigzag(c, qz, s.nqb)
            },
            kp: (kp.clone(), tkp.clone()),
            tq: tq.clone(),
            tv: tv.clone(),
            to: to.clone(),
            tbias: tbias.clone(),
            tseg: tseg.clone(),
            mask_int,
            avx512,
        };
        task(c, &ctx, blocks.as_ref(), listed.as_ref());
    });
    prelude + &function(name, &params, c.finish())
}

/// Whether a block evaluates the mask.
enum Partial {
    Static(bool),
    /// An `i1` computed at run time.
    Dynamic(String),
}

/// A block-sparse layout in the kernel: the loaded CSR lists and how a task finds
/// its group.
struct Blocks {
    rows: (String, String),
    entries: (String, String),
    by_batch: bool,
    by_head: bool,
}

/// A data-dependent block list in the kernel: each listed `[lq, lk]` block is
/// `q_tiles × k_tiles` kernel tiles; `kinds` is the mask's coverage of every tile
/// (0 empty, 1 full, 2 partial) per layout group.
struct Listed {
    kinds: (String, String),
    list_type: String,
    q_tiles: usize,
    k_tiles: usize,
    /// Listed key blocks that exist: `⌈Sk / lk⌉`.
    key_blocks: usize,
    slots: usize,
    by_batch: bool,
    by_head: bool,
}

/// `qz`-th query block in zigzag order: 0, n-1, 1, n-2, ...
fn zigzag(c: &mut Code, qz: &str, n: usize) -> String {
    let two = c.idx(2);
    let half = c.ix("divui", qz, &two);
    let odd = c.ix("remui", qz, &two);
    let last = c.idx(n - 1);
    let from_end = c.ix("subi", &last, &half);
    let one = c.idx(1);
    let is_odd = c.let_(format_args!("arith.cmpi eq, {odd}, {one} : index"));
    c.let_(format_args!(
        "arith.select {is_odd}, {from_end}, {half} : index"
    ))
}

/// What one task's code refers to.
struct Task<'a> {
    s: &'a Shape,
    a: &'a AttentionKernel<'a>,
    ib: String,
    ihk: String,
    ih: String,
    qb: String,
    kp: (String, String),
    tq: String,
    tv: String,
    to: String,
    tbias: Option<String>,
    /// The document ids' type, when the op has them.
    tseg: Option<String>,
    /// The integer type the mask is evaluated in: `i32` when every subexpression
    /// provably fits (half the vector work), else `i64`.
    mask_int: &'static str,
    avx512: bool,
}

fn task(c: &mut Code, t: &Task, blocks: Option<&Blocks>, listed: Option<&Listed>) {
    let s = t.s;
    let (bq, bk) = (s.bq, s.bk);
    let vt = format!("vector<{LANES}xf32>");
    let ow = s.nvd * LANES;
    let ts = format!("memref<{bq}x{bk}xf32>");
    let tob = format!("memref<{bq}x{ow}xf32>");
    let trow = format!("memref<{bq}xf32>");
    let sbuf = c.alloca(&ts);
    let obuf = c.alloca(&tob);
    let mbuf = c.alloca(&trow);
    let lbuf = c.alloca(&trow);
    let abuf = c.alloca(&trow);
    // Row sums of a block, until a vector pass folds them into l.
    let sums = c.alloca(&trow);
    let zero = c.idx(0);
    let bqv = c.idx(bq);
    let q0 = c.mad(&zero, &t.qb, bq);
    let sqv = c.idx(s.sq);
    let rest = c.ix("subi", &sqv, &q0);
    let rows = c.min(&bqv, &rest);
    // m = -inf, l = 0, O = 0.
    let minus_inf = c.f32(f32::NEG_INFINITY);
    let fzero = c.f32(0.0);
    let zv = c.splat(0.0);
    c.for_range(&zero, &bqv, 1, |c, i| {
        c.line(format_args!(
            "memref.store {minus_inf}, {mbuf}[{i}] : {trow}"
        ));
        c.line(format_args!("memref.store {fzero}, {lbuf}[{i}] : {trow}"));
        for v in 0..s.nvd {
            let off = c.idx(v * LANES);
            c.line(format_args!(
                "vector.store {zv}, {obuf}[{i}, {off}] : {tob}, {vt}"
            ));
        }
    });
    let nkbv = c.idx(s.nkb);
    // The modifiers (softcap, bias) work on natural scores `q·k·scale`, so the tile
    // is scaled; otherwise the tile keeps raw dot products and the scale (with
    // `log2 e`) is folded into the exponent's FMA — the row max commutes with a
    // positive scale.
    let modifiers = t.a.op.softcap.is_some() || t.a.bias.is_some() || t.a.op.scale <= 0.0;
    let (tile_scale, exp_scale) = if modifiers {
        (Some(t.a.op.scale), LOG2E)
    } else {
        (None, t.a.op.scale * LOG2E)
    };
    let ragged = !s.sk.is_multiple_of(bk);
    let documents = t.a.op.segments;
    let masked = t.a.op.mask.is_some() || ragged || documents;
    // One key block: scores, (masked) online softmax, `O += P·V`. `partial` is whether
    // the mask is evaluated, known at compile time or read from the layout.
    let block = |c: &mut Code, kb: &str, partial: Partial| {
        let zero = c.idx(0);
        let k0 = c.mad(&zero, kb, bk);
        scores(c, t, &sbuf, &ts, kb, &q0, tile_scale);
        let softmax = |c: &mut Code, partial: bool| {
            softmax_rows(
                c,
                t,
                (&sbuf, &ts),
                (&mbuf, &lbuf, &abuf, &sums, &trow),
                &q0,
                &k0,
                partial,
                exp_scale,
            );
        };
        match partial {
            Partial::Static(p) => softmax(c, p),
            Partial::Dynamic(p) => {
                c.if_else(&p, |c| softmax(c, true), |c| softmax(c, false));
            }
        }
        accumulate(c, t, (&sbuf, &ts), (&obuf, &tob), (&abuf, &trow), &k0);
    };
    match (blocks, listed) {
        // A block list: each valid slot of this task's row, tile by tile, each tile
        // as the mask covers it.
        (_, Some(li)) => {
            let group = match (li.by_batch, li.by_head) {
                (true, _) => c.mad(&t.ih, &t.ib, s.hk * s.groups),
                (false, true) => t.ih.clone(),
                _ => c.idx(0),
            };
            let qtiles = c.idx(li.q_tiles);
            let lrow = c.ix("divui", &t.qb, &qtiles);
            let trow = c.mad(&t.qb, &group, s.nqb);
            let nkbv = c.idx(s.nkb);
            let trow = c.ix("muli", &trow, &nkbv);
            let slots = c.idx(li.slots);
            let (lt, (kinds, kt_ty)) = (&li.list_type, &li.kinds);
            let nkl = c.constant(li.key_blocks as i64, "i64");
            let zero64 = c.constant(0, "i64");
            c.for_range(&zero, &slots, 1, |c, slot| {
                let e = c.let_(format_args!(
                    "memref.load %list[{}, {}, {lrow}, {slot}] : {lt}",
                    t.ib, t.ih
                ));
                let lo = c.let_(format_args!("arith.cmpi sge, {e}, {zero64} : i64"));
                let hi = c.let_(format_args!("arith.cmpi slt, {e}, {nkl} : i64"));
                let valid = c.let_(format_args!("arith.andi {lo}, {hi} : i1"));
                c.if_(&valid, |c| {
                    let e = c.let_(format_args!("arith.index_cast {e} : i64 to index"));
                    for j in 0..li.k_tiles {
                        let jv = c.idx(j);
                        let kt = c.mad(&jv, &e, li.k_tiles);
                        let last = c.idx(s.nkb);
                        let exists = c.let_(format_args!("arith.cmpi ult, {kt}, {last} : index"));
                        c.if_(&exists, |c| {
                            let at = c.ix("addi", &trow, &kt);
                            let k8 = c.let_(format_args!("memref.load {kinds}[{at}] : {kt_ty}"));
                            let zero8 = c.constant(0, "i8");
                            let live = c.let_(format_args!("arith.cmpi ne, {k8}, {zero8} : i8"));
                            c.if_(&live, |c| {
                                let two = c.constant(2, "i8");
                                let p = c.let_(format_args!("arith.cmpi eq, {k8}, {two} : i8"));
                                let p = if documents {
                                    Partial::Static(true)
                                } else {
                                    Partial::Dynamic(p)
                                };
                                block(c, &kt, p);
                            });
                        });
                    }
                });
            });
        }
        // Block-sparse: the entries of this task's row of its group's layout.
        (Some(bl), None) => {
            let group = match (bl.by_batch, bl.by_head) {
                (true, _) => c.mad(&t.ih, &t.ib, s.hk * s.groups),
                (false, true) => t.ih.clone(),
                _ => c.idx(0),
            };
            let row = c.mad(&t.qb, &group, s.nqb);
            let next = c.add_const(&row, 1);
            let ((rows_m, rows_t), (ents_m, ents_t)) = (&bl.rows, &bl.entries);
            let bound = |c: &mut Code, r: &str| {
                let x = c.let_(format_args!("memref.load {rows_m}[{r}] : {rows_t}"));
                c.let_(format_args!("arith.index_cast {x} : i32 to index"))
            };
            let (start, end) = (bound(c, &row), bound(c, &next));
            c.for_range(&start, &end, 1, |c, e| {
                let x = c.let_(format_args!("memref.load {ents_m}[{e}] : {ents_t}"));
                let x = c.let_(format_args!("arith.index_cast {x} : i32 to index"));
                let one = c.idx(1);
                let kb = c.ix("shrui", &x, &one);
                let bit = c.ix("andi", &x, &one);
                let partial = c.let_(format_args!("arith.cmpi eq, {bit}, {one} : index"));
                let partial = if documents {
                    Partial::Static(true)
                } else {
                    Partial::Dynamic(partial)
                };
                block(c, &kb, partial);
            });
        }
        // Dense: every key block; the mask everywhere, or only past the last key.
        (None, None) => c.for_range(&zero, &nkbv, 1, |c, kb| {
            let partial = if masked && t.a.op.mask.is_none() && !documents {
                let last = c.idx(s.nkb - 1);
                Partial::Dynamic(c.let_(format_args!("arith.cmpi eq, {kb}, {last} : index")))
            } else {
                Partial::Static(masked)
            };
            block(c, kb, partial);
        }),
    }
    // out = O / l for the rows of the block.
    let zero = c.idx(0);
    let one_f = c.f32(1.0);
    c.for_range(&zero, &rows, 1, |c, i| {
        let l = c.let_(format_args!("memref.load {lbuf}[{i}] : {trow}"));
        let inv = c.let_(format_args!("arith.divf {one_f}, {l} : f32"));
        let invv = c.let_(format_args!("vector.broadcast {inv} : f32 to {vt}"));
        let row = c.ix("addi", &q0, i);
        for v in 0..s.nvd {
            let off = c.idx(v * LANES);
            let o = c.let_(format_args!("vector.load {obuf}[{i}, {off}] : {tob}, {vt}"));
            let o = c.vop("arith.mulf", &[&o, &invv]);
            let in_bounds = s.dv.is_multiple_of(LANES);
            c.line(format_args!(
                "vector.transfer_write {o}, %o[{}, {}, {row}, {off}] {{in_bounds = [{in_bounds}]}} : {vt}, {}",
                t.ib, t.ih, t.to
            ));
        }
    });
}

/// `S[i][j] = q_i · k_j` (times `tile_scale` if given) for the block's keys, in
/// `RS`-row tiles ([`score_rows`]).
fn scores(
    c: &mut Code,
    t: &Task,
    sbuf: &str,
    ts: &str,
    kb: &str,
    q0: &str,
    tile_scale: Option<f64>,
) {
    let s = t.s;
    let (bq, bk) = (s.bq, s.bk);
    let vt = format!("vector<{LANES}xf32>");
    let (kp, tkp) = (&t.kp.0, &t.kp.1);
    let zero = c.idx(0);
    let rs = score_rows(bq, bk);
    let tiles = c.idx(bq / rs);
    let last_q = c.idx(s.sq - 1);
    c.for_range(&zero, &tiles, 1, |c, rt| {
        let zero = c.idx(0);
        let r0 = c.mad(&zero, rt, rs);
        let qrows: Vec<String> = (0..rs)
            .map(|r| {
                let i = c.add_const(&r0, r);
                let q = c.ix("addi", q0, &i);
                c.min(&q, &last_q)
            })
            .collect();
        let zv = c.splat(0.0);
        let iters: Vec<(String, String)> = (0..rs * bk / LANES)
            .map(|_| (zv.clone(), vt.clone()))
            .collect();
        let (dkv, one) = (c.idx(s.dk), c.idx(1));
        let acc = c.for_((&zero, &dkv, &one), &iters, |c, d, acc| {
            let ks: Vec<String> = (0..bk / LANES)
                .map(|v| {
                    let off = c.idx(v * LANES);
                    c.let_(format_args!(
                        "vector.load {kp}[{}, {}, {kb}, {d}, {off}] : {tkp}, {vt}",
                        t.ib, t.ihk
                    ))
                })
                .collect();
            let mut next = Vec::new();
            for qrow in &qrows {
                let x = c.let_(format_args!(
                    "memref.load %q[{}, {}, {qrow}, {d}] : {}",
                    t.ib, t.ih, t.tq
                ));
                let xb = c.let_(format_args!("vector.broadcast {x} : f32 to {vt}"));
                for kv in &ks {
                    let a = &acc[next.len()];
                    next.push(c.vop("vector.fma", &[&xb, kv, a]));
                }
            }
            next
        });
        let scalev = tile_scale.map(|x| c.splat(x as f32));
        for r in 0..rs {
            let i = c.add_const(&r0, r);
            for v in 0..bk / LANES {
                let x = &acc[r * (bk / LANES) + v];
                let x = match &scalev {
                    Some(sv) => c.vop("arith.mulf", &[x, sv]),
                    None => x.clone(),
                };
                let off = c.idx(v * LANES);
                c.line(format_args!(
                    "vector.store {x}, {sbuf}[{i}, {off}] : {ts}, {vt}"
                ));
            }
        }
    });
}

/// Per row of the block: modifiers and mask, the new running max `m` (base 2),
/// `P = 2^(x·c - m)` written over S, and the row sum; then, 16 rows at a time,
/// `α = 2^(m_old - m_new)` and `l = l·α + ΣP` (`c` = `exp_scale`, positive).
#[allow(clippy::too_many_arguments)]
fn softmax_rows(
    c: &mut Code,
    t: &Task,
    (sbuf, ts): (&str, &str),
    (mbuf, lbuf, abuf, sums, trow): (&str, &str, &str, &str, &str),
    q0: &str,
    k0: &str,
    partial: bool,
    exp_scale: f64,
) {
    let a = t.a;
    let (bq, bk) = (t.s.bq, t.s.bk);
    let vt = format!("vector<{LANES}xf32>");
    let zero = c.idx(0);
    let bqv = c.idx(bq);
    let cs = c.f32(exp_scale as f32);
    let csv = c.splat(exp_scale as f32);
    c.for_range(&zero, &bqv, 1, |c, i| {
        let mut xs: Vec<String> = (0..bk / LANES)
            .map(|v| {
                let off = c.idx(v * LANES);
                c.let_(format_args!("vector.load {sbuf}[{i}, {off}] : {ts}, {vt}"))
            })
            .collect();
        let q = c.ix("addi", q0, i);
        if let Some(cap) = a.op.softcap {
            for x in xs.iter_mut() {
                *x = softcap(c, x, cap, t.avx512);
            }
        }
        if let (Some(bias), Some(tb)) = (&a.bias, &t.tbias) {
            for (v, x) in xs.iter_mut().enumerate() {
                let k = c.add_const(k0, v * LANES);
                let bv = bias_vector(c, t, bias, tb, &q, &k);
                *x = c.vop("arith.addf", &[x, &bv]);
            }
        }
        if partial {
            let minus_inf = c.splat(f32::NEG_INFINITY);
            for (v, x) in xs.iter_mut().enumerate() {
                let k = c.add_const(k0, v * LANES);
                let holds = mask_vector(c, t, &q, &k);
                *x = c.let_(format_args!(
                    "arith.select {holds}, {x}, {minus_inf} : vector<{LANES}xi1>, {vt}"
                ));
            }
        }
        // Reductions as trees (`reassoc`) and `max` as one `vmaxps` (`nnan`): a NaN
        // score still makes the row NaN through its `P` and the row sum.
        let mut mx = xs[0].clone();
        for x in &xs[1..] {
            mx = c.let_(format_args!(
                "arith.maxnumf {mx}, {x} fastmath<nnan> : {vt}"
            ));
        }
        let row_max = c.let_(format_args!(
            "vector.reduction <maxnumf>, {mx} fastmath<nnan,reassoc> : {vt} into f32"
        ));
        let row_max = c.let_(format_args!("arith.mulf {row_max}, {cs} : f32"));
        let m_old = c.let_(format_args!("memref.load {mbuf}[{i}] : {trow}"));
        let m_new = c.let_(format_args!("arith.maxnumf {m_old}, {row_max} : f32"));
        let minus_inf = c.f32(f32::NEG_INFINITY);
        let none = c.let_(format_args!("arith.cmpf oeq, {m_new}, {minus_inf} : f32"));
        let fzero = c.f32(0.0);
        // A row with nothing unmasked yet subtracts 0: its scores stay -inf → P = 0.
        let m_use = c.let_(format_args!("arith.select {none}, {fzero}, {m_new} : f32"));
        let neg = c.let_(format_args!("arith.negf {m_use} : f32"));
        let negv = c.let_(format_args!("vector.broadcast {neg} : f32 to {vt}"));
        let mut sum: Option<String> = None;
        for (v, x) in xs.iter().enumerate() {
            let d = c.vop("vector.fma", &[x, &csv, &negv]);
            // `-inf` only where masked (or in a bias); finite scores need no clamp.
            let p = exp2(
                c,
                &d,
                Exp2 {
                    neg_inf: partial || a.bias.is_some(),
                    positive: false,
                    avx512: t.avx512,
                },
            );
            let off = c.idx(v * LANES);
            c.line(format_args!(
                "vector.store {p}, {sbuf}[{i}, {off}] : {ts}, {vt}"
            ));
            sum = Some(match sum {
                None => p,
                Some(acc) => c.vop("arith.addf", &[&acc, &p]),
            });
        }
        let sum = sum.unwrap_or_default();
        let row_sum = c.let_(format_args!(
            "vector.reduction <add>, {sum} fastmath<reassoc> : {vt} into f32"
        ));
        let dm = c.let_(format_args!("arith.subf {m_old}, {m_use} : f32"));
        c.line(format_args!("memref.store {row_sum}, {sums}[{i}] : {trow}"));
        c.line(format_args!("memref.store {m_new}, {mbuf}[{i}] : {trow}"));
        c.line(format_args!("memref.store {dm}, {abuf}[{i}] : {trow}"));
    });
    // α = 2^(m_old - m_use), l = l·α + row sum: 16 rows per step.
    for v in 0..bq / LANES {
        let off = c.idx(v * LANES);
        let dm = c.let_(format_args!("vector.load {abuf}[{off}] : {trow}, {vt}"));
        let alpha = exp2(
            c,
            &dm,
            Exp2 {
                neg_inf: true,
                positive: false,
                avx512: t.avx512,
            },
        );
        let l = c.let_(format_args!("vector.load {lbuf}[{off}] : {trow}, {vt}"));
        let rs = c.let_(format_args!("vector.load {sums}[{off}] : {trow}, {vt}"));
        let l = c.vop("vector.fma", &[&l, &alpha, &rs]);
        c.line(format_args!(
            "vector.store {l}, {lbuf}[{off}] : {trow}, {vt}"
        ));
        c.line(format_args!(
            "vector.store {alpha}, {abuf}[{off}] : {trow}, {vt}"
        ));
    }
}

/// `O[i] = O[i]·α_i + Σ_j P[i][j]·V[k0 + j]` over the block's keys, `RP`-row tiles.
fn accumulate(
    c: &mut Code,
    t: &Task,
    (sbuf, ts): (&str, &str),
    (obuf, tob): (&str, &str),
    (abuf, trow): (&str, &str),
    k0: &str,
) {
    let s = t.s;
    let (bq, bk) = (s.bq, s.bk);
    let vt = format!("vector<{LANES}xf32>");
    let zero = c.idx(0);
    let bkv = c.idx(bk);
    let skv = c.idx(s.sk);
    let rest = c.ix("subi", &skv, k0);
    let jn = c.min(&bkv, &rest);
    let tiles = c.idx(bq / s.rp);
    let pad = c.f32(0.0);
    let in_bounds = s.dv.is_multiple_of(LANES);
    c.for_range(&zero, &tiles, 1, |c, rt| {
        let zero = c.idx(0);
        let r0 = c.mad(&zero, rt, s.rp);
        let mut iters = Vec::new();
        let rowsi: Vec<String> = (0..s.rp).map(|r| c.add_const(&r0, r)).collect();
        for i in &rowsi {
            let al = c.let_(format_args!("memref.load {abuf}[{i}] : {trow}"));
            let alv = c.let_(format_args!("vector.broadcast {al} : f32 to {vt}"));
            for v in 0..s.nvd {
                let off = c.idx(v * LANES);
                let o = c.let_(format_args!("vector.load {obuf}[{i}, {off}] : {tob}, {vt}"));
                iters.push((c.vop("arith.mulf", &[&o, &alv]), vt.clone()));
            }
        }
        let one = c.idx(1);
        let acc = c.for_((&zero, &jn, &one), &iters, |c, j, acc| {
            let key = c.ix("addi", k0, j);
            let vs: Vec<String> = (0..s.nvd)
                .map(|v| {
                    let off = c.idx(v * LANES);
                    c.let_(format_args!(
                        "vector.transfer_read %v[{}, {}, {key}, {off}], {pad} {{in_bounds = [{in_bounds}]}} : {}, {vt}",
                        t.ib, t.ihk, t.tv
                    ))
                })
                .collect();
            let mut next = Vec::new();
            for i in &rowsi {
                let p = c.let_(format_args!("memref.load {sbuf}[{i}, {j}] : {ts}"));
                let pb = c.let_(format_args!("vector.broadcast {p} : f32 to {vt}"));
                for vv in &vs {
                    let a = &acc[next.len()];
                    next.push(c.vop("vector.fma", &[&pb, vv, a]));
                }
            }
            next
        });
        for (r, i) in rowsi.iter().enumerate() {
            for v in 0..s.nvd {
                let off = c.idx(v * LANES);
                c.line(format_args!(
                    "vector.store {}, {obuf}[{i}, {off}] : {tob}, {vt}",
                    acc[r * s.nvd + v]
                ));
            }
        }
    });
}

/// `c·tanh(x/c)`, with `tanh(y) = 1 - 2/(2^(2y·log2 e) + 1)` (exact at ±inf).
fn softcap(c: &mut Code, x: &str, cap: f64, avx512: bool) -> String {
    let inv = c.splat((2.0 * LOG2E / cap) as f32);
    let y = c.vop("arith.mulf", &[x, &inv]);
    let e = exp2(
        c,
        &y,
        Exp2 {
            neg_inf: true,
            positive: true,
            avx512,
        },
    );
    let one = c.splat(1.0);
    let two = c.splat(2.0);
    let d = c.vop("arith.addf", &[&e, &one]);
    let r = c.vop("arith.divf", &[&two, &d]);
    let t = c.vop("arith.subf", &[&one, &r]);
    let capv = c.splat(cap as f32);
    c.vop("arith.mulf", &[&t, &capv])
}

/// The bias for row `q` and keys `k..k+16`, broadcast as numpy does into
/// `[B, H, Sq, Sk]` (size-1 and missing dims read index 0).
fn bias_vector(c: &mut Code, t: &Task, sizes: &[usize], ty: &str, q: &str, k: &str) -> String {
    let vt = format!("vector<{LANES}xf32>");
    let full = [t.ib.as_str(), t.ih.as_str(), q, k];
    let lead = 4 - sizes.len();
    let zero = c.idx(0);
    let mut idx: Vec<String> = sizes
        .iter()
        .enumerate()
        .map(|(d, &n)| {
            if n == 1 {
                zero.clone()
            } else {
                full[lead + d].to_string()
            }
        })
        .collect();
    let last = sizes.last().copied().unwrap_or(1);
    if sizes.is_empty() {
        let x = c.let_(format_args!("memref.load %bias[] : {ty}"));
        return c.let_(format_args!("vector.broadcast {x} : f32 to {vt}"));
    }
    if last == 1 {
        let x = c.let_(format_args!("memref.load %bias[{}] : {ty}", idx.join(", ")));
        return c.let_(format_args!("vector.broadcast {x} : f32 to {vt}"));
    }
    let pad = c.f32(0.0);
    if let Some(l) = idx.last_mut() {
        *l = k.to_string();
    }
    c.let_(format_args!(
        "vector.transfer_read %bias[{}], {pad} {{in_bounds = [false]}} : {ty}, {vt}",
        idx.join(", ")
    ))
}

/// Whether the mask holds (and the key exists) at row `q`, keys `k..k+16`.
fn mask_vector(c: &mut Code, t: &Task, q: &str, k: &str) -> String {
    let ity = t.mask_int;
    let vi = format!("vector<{LANES}x{ity}>");
    let v64 = format!("vector<{LANES}xi64>");
    let splat = |c: &mut Code, x: &str| {
        let i = c.let_(format_args!("arith.index_cast {x} : index to {ity}"));
        c.let_(format_args!("vector.broadcast {i} : {ity} to {vi}"))
    };
    let lanes: Vec<String> = (0..LANES).map(|l| l.to_string()).collect();
    let iota = c.constant(format_args!("dense<[{}]>", lanes.join(", ")), &vi);
    let kb = splat(c, k);
    let kv = c.let_(format_args!("arith.addi {kb}, {iota} : {vi}"));
    let coords = [splat(c, &t.ib), splat(c, &t.ih), splat(c, q), kv.clone()];
    let skv = c.constant(format_args!("dense<{}>", t.s.sk), &vi);
    let mut holds = c.let_(format_args!("arith.cmpi slt, {kv}, {skv} : {vi}"));
    if let Some(ts) = &t.tseg {
        // The key's document is the query's (rows past Sq read the last row's).
        let last = c.idx(t.s.sq - 1);
        let qrow = c.min(q, &last);
        let qs = c.let_(format_args!("memref.load %seg[{}, {qrow}] : {ts}", t.ib));
        let qs = c.let_(format_args!("vector.broadcast {qs} : i64 to {v64}"));
        let pad = c.constant(-1, "i64");
        let ks = c.let_(format_args!(
            "vector.transfer_read %seg[{}, {k}], {pad} {{in_bounds = [false]}} : {ts}, {v64}",
            t.ib
        ));
        let same = c.let_(format_args!("arith.cmpi eq, {qs}, {ks} : {v64}"));
        holds = c.let_(format_args!(
            "arith.andi {holds}, {same} : vector<{LANES}xi1>"
        ));
    }
    if let Some(m) = &t.a.op.mask {
        let (v, is_bool) = mask_value(c, m, &coords, t.a.dims, ity);
        let b = if is_bool {
            v
        } else {
            let z = c.constant("dense<0>", &vi);
            c.let_(format_args!("arith.cmpi ne, {v}, {z} : {vi}"))
        };
        holds = c.let_(format_args!("arith.andi {holds}, {b} : vector<{LANES}xi1>"));
    }
    holds
}

/// Whether every subexpression of `e` stays strictly inside i32 over `bounds`: then
/// i32 arithmetic gives exactly the i64 results.
fn fits_i32(e: &MaskExpr, bounds: [(i64, i64); 4], dims: &Dims) -> bool {
    let (lo, hi) = e.range(bounds, dims);
    let inside = lo > i32::MIN as i64 && hi <= i32::MAX as i64;
    inside
        && match e {
            MaskExpr::Int(_) | MaskExpr::Coord(_) | MaskExpr::Dim(_) => true,
            MaskExpr::Neg(x) | MaskExpr::Not(x) => fits_i32(x, bounds, dims),
            MaskExpr::Bin(_, l, r) => fits_i32(l, bounds, dims) && fits_i32(r, bounds, dims),
            MaskExpr::RandomBlocks(args) => args.iter().all(|a| fits_i32(a, bounds, dims)),
        }
}

/// A mask subexpression on 16 lanes: `vector<16xi64>` (false) or `vector<16xi1>`
/// (true), with [`MaskExpr::eval`]'s rules (division by 0 gives 0, arithmetic wraps).
fn mask_value(
    c: &mut Code,
    e: &MaskExpr,
    coords: &[String; 4],
    dims: &Dims,
    ity: &str,
) -> (String, bool) {
    let vi = format!("vector<{LANES}x{ity}>");
    let vb = format!("vector<{LANES}xi1>");
    let int = |c: &mut Code, n: i64| c.constant(format_args!("dense<{n}>"), &vi);
    let as_int = |c: &mut Code, (v, is_bool): (String, bool)| {
        if is_bool {
            c.let_(format_args!("arith.extui {v} : {vb} to {vi}"))
        } else {
            v
        }
    };
    let as_bool = |c: &mut Code, (v, is_bool): (String, bool)| {
        if is_bool {
            v
        } else {
            let z = c.constant("dense<0>", &vi);
            c.let_(format_args!("arith.cmpi ne, {v}, {z} : {vi}"))
        }
    };
    match e {
        MaskExpr::RandomBlocks(args) => {
            // A gather from the module's bitmap (`declare_random_tables`).
            let (symbol, ty, n) = super::random_table(args, dims);
            let qb = mask_value(c, &args[0], coords, dims, ity);
            let qb = as_int(c, qb);
            let kb = mask_value(c, &args[1], coords, dims, ity);
            let kb = as_int(c, kb);
            let (z, nv) = (int(c, 0), int(c, n));
            let mut ok = c.constant("dense<true>", &vb);
            for x in [&qb, &kb] {
                let lo = c.let_(format_args!("arith.cmpi sge, {x}, {z} : {vi}"));
                let hi = c.let_(format_args!("arith.cmpi slt, {x}, {nv} : {vi}"));
                ok = c.let_(format_args!("arith.andi {ok}, {lo} : {vb}"));
                ok = c.let_(format_args!("arith.andi {ok}, {hi} : {vb}"));
            }
            let row = c.let_(format_args!("arith.muli {qb}, {nv} : {vi}"));
            let at = c.let_(format_args!("arith.addi {row}, {kb} : {vi}"));
            let at = c.let_(format_args!("arith.select {ok}, {at}, {z} : {vb}, {vi}"));
            let table = c.let_(format_args!("memref.get_global @{symbol} : {ty}"));
            let v8 = format!("vector<{LANES}xi8>");
            let pass = c.constant("dense<0>", &v8);
            let base = c.idx(0);
            let bytes = c.let_(format_args!(
                "vector.gather {table}[{base}] [{at}], {ok}, {pass} : {ty}, {vi}, {vb}, {v8} into {v8}"
            ));
            let held = c.let_(format_args!("arith.cmpi ne, {bytes}, {pass} : {v8}"));
            (c.let_(format_args!("arith.andi {ok}, {held} : {vb}")), true)
        }
        MaskExpr::Int(n) => (int(c, *n), false),
        MaskExpr::Coord(k) => (coords[*k as usize].clone(), false),
        MaskExpr::Dim(d) => (int(c, dims.get(d).map_or(0, |v| v as i64)), false),
        MaskExpr::Neg(x) => {
            let v = mask_value(c, x, coords, dims, ity);
            let v = as_int(c, v);
            let z = int(c, 0);
            (c.let_(format_args!("arith.subi {z}, {v} : {vi}")), false)
        }
        MaskExpr::Not(x) => {
            let v = mask_value(c, x, coords, dims, ity);
            let b = as_bool(c, v);
            let t = c.constant("dense<true>", &vb);
            (c.let_(format_args!("arith.xori {b}, {t} : {vb}")), true)
        }
        MaskExpr::Bin(op, l, r) => {
            use MaskBinOp::*;
            let lv = mask_value(c, l, coords, dims, ity);
            let rv = mask_value(c, r, coords, dims, ity);
            let logical = |c: &mut Code, name: &str, lv, rv| {
                let a = as_bool(c, lv);
                let b = as_bool(c, rv);
                (c.let_(format_args!("arith.{name} {a}, {b} : {vb}")), true)
            };
            match op {
                And => return logical(c, "andi", lv, rv),
                Or => return logical(c, "ori", lv, rv),
                _ => {}
            }
            let a = as_int(c, lv);
            let b = as_int(c, rv);
            let cmp = |c: &mut Code, pred: &str| {
                (
                    c.let_(format_args!("arith.cmpi {pred}, {a}, {b} : {vi}")),
                    true,
                )
            };
            match op {
                Add => (c.let_(format_args!("arith.addi {a}, {b} : {vi}")), false),
                Sub => (c.let_(format_args!("arith.subi {a}, {b} : {vi}")), false),
                Mul => (c.let_(format_args!("arith.muli {a}, {b} : {vi}")), false),
                Div | Rem => {
                    // 0 for a zero divisor or MIN / -1, as the interpreter.
                    let (z, one, m1) = (int(c, 0), int(c, 1), int(c, -1));
                    let min = int(
                        c,
                        if ity == "i32" {
                            i32::MIN as i64
                        } else {
                            i64::MIN
                        },
                    );
                    let by_zero = c.let_(format_args!("arith.cmpi eq, {b}, {z} : {vi}"));
                    let a_min = c.let_(format_args!("arith.cmpi eq, {a}, {min} : {vi}"));
                    let b_m1 = c.let_(format_args!("arith.cmpi eq, {b}, {m1} : {vi}"));
                    let ov = c.let_(format_args!("arith.andi {a_min}, {b_m1} : {vb}"));
                    let bad = c.let_(format_args!("arith.ori {by_zero}, {ov} : {vb}"));
                    let d = c.let_(format_args!("arith.select {bad}, {one}, {b} : {vb}, {vi}"));
                    let name = if *op == Div { "divsi" } else { "remsi" };
                    let q = c.let_(format_args!("arith.{name} {a}, {d} : {vi}"));
                    (
                        c.let_(format_args!("arith.select {bad}, {z}, {q} : {vb}, {vi}")),
                        false,
                    )
                }
                Lt => cmp(c, "slt"),
                Le => cmp(c, "sle"),
                Gt => cmp(c, "sgt"),
                Ge => cmp(c, "sge"),
                Eq => cmp(c, "eq"),
                Ne => cmp(c, "ne"),
                And | Or => logical(c, "andi", (a.clone(), false), (b.clone(), false)),
            }
        }
    }
}
