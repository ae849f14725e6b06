//! Sparse mixture of experts (`moe_dispatch`) on the CPU: only the selected
//! `(token, expert)` pairs are computed, as grouped GEMMs over the tiled matmul code
//! of [`super::gemm`] (its packing routines, micro-kernel and register transpose).
//!
//! Phases, in one kernel function:
//! 1. Grouping, sequential, `O(T·E)` (vLLM's `moe_align_block_size`): the non-zeros
//!    of each gate column are counted (at most `k` per row or per column are kept:
//!    more set the kernel's status flag, and the extra pairs are skipped), each
//!    expert gets a run of pair slots starting at a multiple of `MR`, and one
//!    token-major pass fills the slots in (expert, token) order — `tok[s]`, `wgt[s] =
//!    gate[t, e]` — and, per token, the list of its slots in expert order (CSR:
//!    `tptr`, `tslot`) for the combine. Each GEMM then gets a work list of row
//!    blocks of all experts together ([`blocks`]: each expert's rows in equal
//!    blocks), so a hot expert is many tasks, not one thread's work.
//! 2. Weight packing, in parallel over (active expert, run of rows): each expert's
//!    weights are packed once into `NR`-wide panels over their whole depth, which
//!    every row block of the expert reads. Gated, a panel of the up GEMM holds 16
//!    columns of `w_gate` then the same 16 columns of `w_up`, so one register tile
//!    computes both projections of the same rows from the same packed A.
//! 3. Up GEMM: tasks (row block, run of column panels) taken dynamically (an
//!    atomic counter) by the threads of one parallel loop. A task packs A by
//!    gathering the rows `x[tok[s]]` (the gather is the packing: no gathered copy),
//!    then for each column panel, for each `KC` slice of the depth, runs every A
//!    panel of the block against the B slice (in L1); partial sums wait in a
//!    per-thread scratch tile, and the last slice's epilogue computes `act(g)·u`
//!    (or `act(u)`) and writes it transposed into `hidden [slots / MR, H, MR]` —
//!    already packed as the down GEMM's A panels.
//! 4. Down GEMM: the same tasks over `hidden` (read as it is, no packing) and
//!    `w_down[e]`, the depth `H` walked outermost when a block's A would not stay in
//!    L2 (one `KC` slice of it at a time, partial sums added into `y`); the epilogue
//!    scales each row by its `wgt` into `y [slots, D]`.
//! 5. Combine, in parallel over tokens: `out[t] = Σ y[slot]` over `t`'s slots, in
//!    expert order (0 for a token no expert selected).
//!
//! Row blocks are up to [`MAX_ROWS`] rows: a task streams its expert's packed
//! weights from memory once, so its rows are what amortizes that (128-row blocks
//! cost 10% of the rate at 2048 tokens, top-2 of 8). Slots past an expert's count
//! (up to its next multiple of `MR`) hold token 0 and weight 0; their rows are
//! computed and never read. Nothing is read or written outside its buffer whatever
//! the gate holds.
//!
//! [`Schedule::Unfused`] is the baseline the fused schedule is measured against
//! (the speed example only): the same grouping, packed weights and GEMM code, but
//! the gathered rows materialized, plain GEMMs (gate and up separately) writing raw
//! results row-major, a separate activation pass, and a weighted scatter-add of `y`
//! into the output.

use super::gemm::{
    micro_kernel, pack_a_rows, pack_b_rows, transpose_rows, BVector, Packed, KC, MR, NR,
    OMP_DECLARATIONS,
};
use super::{function, strided_type, vector_exp2, Code, KernelSet, LANES};
use attnc_ir::{MoeChoice, MoeDispatch, UnaryOp};

/// How the kernel is scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Schedule {
    /// The kernel the backend uses.
    Fused,
    /// Gather, plain GEMMs, activation, scatter-add as separate passes: a baseline
    /// for measurements, selected by `ATTNC_MOE_SCHEDULE=unfused` at compile time.
    Unfused,
}

impl Schedule {
    pub fn from_env() -> Schedule {
        match std::env::var("ATTNC_MOE_SCHEDULE").as_deref() {
            Ok("unfused") => Schedule::Unfused,
            _ => Schedule::Fused,
        }
    }
}

/// One `moe_dispatch`: `x [T, D]`, `gate [T, E]`, `w_gate [E, D, H]` (gated),
/// `w_up [E, D, H]`, `w_down [E, H, D]`, all f32; result `[T, D]` and a status flag
/// (`memref<i8>`, 1 when the gate breaks the op's bound).
#[derive(Clone, Debug)]
pub(crate) struct MoeKernel {
    pub op: MoeDispatch,
    pub t: usize,
    pub d: usize,
    pub e: usize,
    pub h: usize,
    pub schedule: Schedule,
}

impl MoeKernel {
    fn key(&self) -> String {
        let m = &self.op;
        format!(
            "moe.{}x{}x{}x{}.{}{}.{}{}{}",
            self.t,
            self.d,
            self.e,
            self.h,
            m.activation.name(),
            if m.gated { ".gated" } else { "" },
            m.choice.name(),
            m.k,
            match self.schedule {
                Schedule::Fused => "",
                Schedule::Unfused => ".unfused",
            }
        )
    }

    /// Operand types: x, gate, [w_gate], w_up, w_down, out, flag.
    pub fn operand_types(&self) -> Vec<String> {
        let (t, d, e, h) = (self.t, self.d, self.e, self.h);
        let mut types = vec![strided_type(&[t, d], "f32"), strided_type(&[t, e], "f32")];
        if self.op.gated {
            types.push(strided_type(&[e, d, h], "f32"));
        }
        types.push(strided_type(&[e, d, h], "f32"));
        types.push(strided_type(&[e, h, d], "f32"));
        types.push(strided_type(&[t, d], "f32"));
        types.push("memref<i8>".into());
        types
    }
}

/// The kernel for `m` (written once per shape and attributes); returns its symbol.
pub(crate) fn moe(set: &mut KernelSet, m: &MoeKernel) -> String {
    set.declare(OMP_DECLARATIONS);
    let avx512 = set.avx512;
    set.get(m.key(), |name| write_moe(name, m, avx512))
}

/// Most rows of a row block (a multiple of `MR`): the rows of one task of a
/// grouped GEMM, which read their expert's packed weights once.
const MAX_ROWS: usize = 512;

/// Bytes of packed A a task keeps in L2 while its column panels pass over it (the
/// whole depth, or one `KC` slice when the depth is split).
const A_BLOCK_BYTES: usize = 1 << 20;

/// Rows of the weights one packing task reads (all their columns, panel after
/// panel): each panel gets one contiguous run of rows, the rows are read along.
const PACK_ROWS: usize = 16;

/// Static sizes of one kernel.
struct Sizes {
    t: usize,
    d: usize,
    e: usize,
    h: usize,
    /// `k`, capped at what can matter (`max(T, E)`), for an index constant.
    k: usize,
    /// Most selected pairs.
    pairs: usize,
    /// Most slots: the pairs, each expert's run rounded up to whole `MR` panels.
    slots: usize,
    /// Most experts with a pair.
    active: usize,
    /// Width of `hidden` and `y` (whole `NR` panels).
    hs: usize,
    dp: usize,
}

impl Sizes {
    fn new(m: &MoeKernel) -> Sizes {
        let (t, d, e, h) = (m.t, m.d, m.e, m.h);
        let pairs = m.op.max_pairs(t as u64, e as u64) as usize;
        let active = e.min(pairs);
        Sizes {
            t,
            d,
            e,
            h,
            k: (m.op.k.min(t.max(e) as u64 + 1)) as usize,
            pairs,
            slots: (pairs + active * (MR - 1)).div_ceil(MR) * MR,
            active,
            hs: h.div_ceil(NR) * NR,
            dp: d.div_ceil(NR) * NR,
        }
    }
}

/// How one grouped GEMM splits its work: row blocks of at most `rows` rows (whole
/// `MR` panels), tasks of `chunk` column panels, and whether the depth is walked
/// outermost (`split`: one `KC` slice of A in cache at a time, partial sums added
/// into the output) or innermost (the whole depth of A in cache, sums finished in
/// registers and a scratch tile, so the epilogue may be nonlinear).
#[derive(Clone, Copy)]
struct Shape {
    rows: usize,
    chunk: usize,
    split: bool,
}

impl Shape {
    /// For depth `k`, `panels` column panels of which a task takes about
    /// `columns` columns; `whole`: the epilogue needs the whole depth.
    fn new(k: usize, panels: usize, columns: usize, whole: bool) -> Shape {
        let fit = |bytes_per_row: usize| {
            (A_BLOCK_BYTES / bytes_per_row.max(1) / MR * MR).clamp(MR, MAX_ROWS)
        };
        let whole_rows = fit(4 * k);
        let split = !whole && whole_rows < MAX_ROWS;
        let rows = if split {
            fit(4 * KC.min(k))
        } else {
            whole_rows
        };
        let tasks = (panels * NR).div_ceil(columns).max(1);
        Shape {
            rows,
            chunk: panels.div_ceil(tasks).max(1),
            split,
        }
    }
}

/// `memref<NxT>` and a fresh 64-byte aligned buffer of it.
fn alloc(c: &mut Code, ty: &str) -> String {
    c.let_(format_args!(
        "memref.alloc() {{alignment = 64 : i64}} : {ty}"
    ))
}

fn load(c: &mut Code, buf: &str, idx: &[&str], ty: &str) -> String {
    c.let_(format_args!("memref.load {buf}[{}] : {ty}", idx.join(", ")))
}

fn store(c: &mut Code, value: &str, buf: &str, idx: &[&str], ty: &str) {
    c.line(format_args!(
        "memref.store {value}, {buf}[{}] : {ty}",
        idx.join(", ")
    ));
}

/// `cond ? 1 : 0` as an index.
fn as_index(c: &mut Code, cond: &str) -> String {
    let one = c.idx(1);
    let zero = c.idx(0);
    c.let_(format_args!("arith.select {cond}, {one}, {zero} : index"))
}

/// What the grouping computes (buffers, their types, and the run-time counts).
struct Groups {
    /// Per slot: token (index) and weight (f32).
    tok: String,
    wgt: String,
    /// Per token: the first of its entries in `tslot` (`T + 1`).
    tptr: String,
    tslot: String,
    /// Per expert: pairs, first slot (a multiple of `MR`).
    cnt: String,
    aoff: String,
    /// Per expert: its index among the active experts (B buffers); the active
    /// experts in order.
    aid: String,
    act: String,
    /// Active experts (run-time value).
    nactive: String,
    t_tok: String,
    t_slots: String,
    t_pairs: String,
    t_experts: String,
    t_active: String,
    t_tokens: String,
}

/// Phase 1: count, align, fill, list the row blocks (sequential).
fn group(c: &mut Code, s: &Sizes, m: &MoeKernel, tg: &str) -> Groups {
    let t_experts = format!("memref<{}xindex>", s.e);
    let t_slots_i = format!("memref<{}xindex>", s.slots);
    let t_slots = format!("memref<{}xf32>", s.slots);
    let t_pairs = format!("memref<{}xindex>", s.pairs);
    let t_active = format!("memref<{}xindex>", s.active);
    let t_tokens = format!("memref<{}xindex>", s.t + 1);
    let cnt = alloc(c, &t_experts);
    let cur = alloc(c, &t_experts);
    let aoff = alloc(c, &t_experts);
    let aid = alloc(c, &t_experts);
    let act = alloc(c, &t_active);
    let tok = alloc(c, &t_slots_i);
    let wgt = alloc(c, &t_slots);
    let tptr = alloc(c, &t_tokens);
    let tslot = alloc(c, &t_pairs);
    let zero = c.idx(0);
    let one = c.idx(1);
    let (tv, ev, sv) = (c.idx(s.t), c.idx(s.e), c.idx(s.slots));
    let kv = c.idx(s.k);
    let zero8 = c.constant(0, "i8");
    let one8 = c.constant(1, "i8");
    let f0 = c.f32(0.0);
    c.line(format_args!("memref.store {zero8}, %flag[] : memref<i8>"));
    c.for_range(&zero, &ev, 1, |c, e| {
        store(c, &zero, &cnt, &[e], &t_experts)
    });
    c.for_range(&zero, &sv, 1, |c, sl| {
        let zero = c.idx(0);
        store(c, &zero, &tok, &[sl], &t_slots_i);
        let f0 = c.f32(0.0);
        store(c, &f0, &wgt, &[sl], &t_slots);
    });
    let token_choice = m.op.choice == MoeChoice::Token;
    // Whether (t, e) is a kept pair, given the pairs kept before it in its row (`rc`)
    // or column (`used`); and whether it is one too many.
    let decide = |c: &mut Code, t: &str, e: &str, before: &str| {
        let g = load(c, "%gate", &[t, e], tg);
        let nz = c.let_(format_args!("arith.cmpf une, {g}, {f0} : f32"));
        let under = c.let_(format_args!("arith.cmpi ult, {before}, {kv} : index"));
        let keep = c.let_(format_args!("arith.andi {nz}, {under} : i1"));
        let tru = c.constant(1, "i1");
        let at_k = c.let_(format_args!("arith.xori {under}, {tru} : i1"));
        let over = c.let_(format_args!("arith.andi {nz}, {at_k} : i1"));
        (g, keep, over)
    };
    // Count.
    c.for_range(&zero, &tv, 1, |c, t| {
        let zero = c.idx(0);
        let one = c.idx(1);
        c.for_(
            (&zero, &ev, &one),
            &[(zero.clone(), "index".into())],
            |c, e, rc| {
                let before = if token_choice {
                    rc[0].clone()
                } else {
                    load(c, &cnt, &[e], &t_experts)
                };
                let (_, keep, over) = decide(c, t, e, &before);
                c.if_(&keep, |c| {
                    let n = load(c, &cnt, &[e], &t_experts);
                    let n1 = c.add_const(&n, 1);
                    store(c, &n1, &cnt, &[e], &t_experts);
                });
                c.if_(&over, |c| {
                    c.line(format_args!("memref.store {one8}, %flag[] : memref<i8>"));
                });
                let add = as_index(c, &keep);
                vec![c.ix("addi", &rc[0], &add)]
            },
        );
    });
    // Aligned offsets and the active experts.
    let idx2 = [
        (zero.clone(), "index".to_string()),
        (zero.clone(), "index".to_string()),
    ];
    let r = c.for_((&zero, &ev, &one), &idx2, |c, e, carried| {
        let (acc, na) = (&carried[0], &carried[1]);
        let n = load(c, &cnt, &[e], &t_experts);
        store(c, acc, &aoff, &[e], &t_experts);
        store(c, acc, &cur, &[e], &t_experts);
        store(c, na, &aid, &[e], &t_experts);
        let zero = c.idx(0);
        let has = c.let_(format_args!("arith.cmpi ugt, {n}, {zero} : index"));
        c.if_(&has, |c| store(c, e, &act, &[na], &t_active));
        let up = c.add_const(&n, MR - 1);
        let mrv = c.idx(MR);
        let panels = c.ix("divui", &up, &mrv);
        let acc1 = c.mad(acc, &panels, MR);
        let add = as_index(c, &has);
        vec![acc1, c.ix("addi", na, &add)]
    });
    let nactive = r[1].clone();
    // Fill the slots (tokens in increasing order within an expert) and the CSR.
    let j = c.for_(
        (&zero, &tv, &one),
        &[(zero.clone(), "index".into())],
        |c, t, jj| {
            store(c, &jj[0], &tptr, &[t], &t_tokens);
            let zero = c.idx(0);
            let one = c.idx(1);
            let init = [
                (zero.clone(), "index".to_string()),
                (jj[0].clone(), "index".to_string()),
            ];
            let r = c.for_((&zero, &ev, &one), &init, |c, e, carried| {
                let (rc, j) = (&carried[0], &carried[1]);
                let before = if token_choice {
                    rc.clone()
                } else {
                    let at = load(c, &cur, &[e], &t_experts);
                    let base = load(c, &aoff, &[e], &t_experts);
                    c.ix("subi", &at, &base)
                };
                let (g, keep, _) = decide(c, t, e, &before);
                c.if_(&keep, |c| {
                    let sl = load(c, &cur, &[e], &t_experts);
                    let next = c.add_const(&sl, 1);
                    store(c, &next, &cur, &[e], &t_experts);
                    store(c, t, &tok, &[&sl], &t_slots_i);
                    store(c, &g, &wgt, &[&sl], &t_slots);
                    store(c, &sl, &tslot, &[j], &t_pairs);
                });
                let add = as_index(c, &keep);
                vec![c.ix("addi", rc, &add), c.ix("addi", j, &add)]
            });
            vec![r[1].clone()]
        },
    );
    store(c, &j[0], &tptr, &[&tv], &t_tokens);
    Groups {
        tok,
        wgt,
        tptr,
        tslot,
        cnt,
        aoff,
        aid,
        act,
        nactive,
        t_tok: t_slots_i,
        t_slots,
        t_pairs,
        t_experts,
        t_active,
        t_tokens,
    }
}

/// Row blocks of at most `rows` rows: expert, first slot, rows (buffers of
/// `memref<Nxindex>`) and how many (run-time).
struct Blocks {
    be: String,
    bs: String,
    bn: String,
    ty: String,
    count: String,
}

/// Each expert's rows in as few blocks of at most `rows` rows as fit, of equal
/// sizes (whole `MR` panels but the last): no block much smaller than the others,
/// which would stream its expert's weights for a few rows.
fn blocks(c: &mut Code, s: &Sizes, g: &Groups, rows: usize) -> Blocks {
    let ty = format!("memref<{}xindex>", s.pairs / rows + s.active);
    let (be, bs, bn) = (alloc(c, &ty), alloc(c, &ty), alloc(c, &ty));
    let zero = c.idx(0);
    let one = c.idx(1);
    let ev = c.idx(s.e);
    let te = &g.t_experts;
    let count = c.for_(
        (&zero, &ev, &one),
        &[(zero.clone(), "index".into())],
        |c, e, nb| {
            let n = load(c, &g.cnt, &[e], te);
            let up = c.add_const(&n, rows - 1);
            let rv = c.idx(rows);
            let parts = c.ix("divui", &up, &rv);
            let one = c.idx(1);
            let divisor = c.ix("maxsi", &parts, &one);
            let share = c.ix("addi", &n, &divisor);
            let share = c.ix("subi", &share, &one);
            let share = c.ix("divui", &share, &divisor);
            let share = c.add_const(&share, MR - 1);
            let mrv = c.idx(MR);
            let share = c.ix("divui", &share, &mrv);
            let per = c.ix("muli", &share, &mrv);
            let base = load(c, &g.aoff, &[e], te);
            let zero = c.idx(0);
            c.for_range(&zero, &parts, 1, |c, b| {
                let i = c.ix("addi", &nb[0], b);
                let skip = c.ix("muli", b, &per);
                let first = c.ix("addi", &base, &skip);
                let left = c.ix("subi", &n, &skip);
                let size = c.min(&per, &left);
                store(c, e, &be, &[&i], &ty);
                store(c, &first, &bs, &[&i], &ty);
                store(c, &size, &bn, &[&i], &ty);
            });
            vec![c.ix("addi", &nb[0], &parts)]
        },
    );
    Blocks {
        be,
        bs,
        bn,
        ty,
        count: count[0].clone(),
    }
}

/// The activation on `LANES` lanes, by the formulas of the elementwise lowering
/// (`exp` through [`vector_exp2`], `erf` by a rational approximation).
fn activation(c: &mut Code, op: UnaryOp, x: &str, avx512: bool) -> String {
    let log2e = std::f64::consts::LOG2_E;
    match op {
        // x · 1 / (1 + e⁻ˣ)
        UnaryOp::Silu => {
            let k = c.splat(-log2e as f32);
            let y = c.vop("arith.mulf", &[x, &k]);
            let e = vector_exp2(c, &y, avx512);
            let one = c.splat(1.0);
            let d = c.vop("arith.addf", &[&one, &e]);
            let s = c.vop("arith.divf", &[&one, &d]);
            c.vop("arith.mulf", &[x, &s])
        }
        // x/2 · (1 + erf(x/√2))
        UnaryOp::Gelu => {
            let k = c.splat(std::f64::consts::FRAC_1_SQRT_2 as f32);
            let s = c.vop("arith.mulf", &[x, &k]);
            let e = erf(c, &s);
            half_x_times_one_plus(c, x, &e)
        }
        // x/2 · (1 + tanh(√(2/π) · (x + 0.044715·x³))), tanh(z) = 1 - 2/(e^(2z) + 1)
        UnaryOp::GeluTanh => {
            let x2 = c.vop("arith.mulf", &[x, x]);
            let x3 = c.vop("arith.mulf", &[&x2, x]);
            let k3 = c.splat(0.044715);
            let inner = c.vop("vector.fma", &[&k3, &x3, x]);
            let k = c.splat(((2.0 / std::f64::consts::PI).sqrt() * 2.0 * log2e) as f32);
            let y = c.vop("arith.mulf", &[&inner, &k]);
            let e = vector_exp2(c, &y, avx512);
            let one = c.splat(1.0);
            let two = c.splat(2.0);
            let d = c.vop("arith.addf", &[&e, &one]);
            let r = c.vop("arith.divf", &[&two, &d]);
            let t = c.vop("arith.subf", &[&one, &r]);
            half_x_times_one_plus(c, x, &t)
        }
        // x < 0 ? 0 : x (NaN stays NaN)
        _ => {
            let zero = c.splat(0.0);
            let neg = c.let_(format_args!(
                "arith.cmpf olt, {x}, {zero} : vector<{LANES}xf32>"
            ));
            c.let_(format_args!(
                "arith.select {neg}, {zero}, {x} : vector<{LANES}xi1>, vector<{LANES}xf32>"
            ))
        }
    }
}

fn half_x_times_one_plus(c: &mut Code, x: &str, t: &str) -> String {
    let one = c.splat(1.0);
    let half = c.splat(0.5);
    let s = c.vop("arith.addf", &[&one, t]);
    let hx = c.vop("arith.mulf", &[&half, x]);
    c.vop("arith.mulf", &[&hx, &s])
}

/// `erf(x)` on `LANES` lanes: `x·P(x²)/Q(x²)` on `x` clamped to `[-4, 4]` (Eigen's
/// and XLA's float approximation; absolute error below 1e-7).
fn erf(c: &mut Code, x: &str) -> String {
    const ALPHA: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_1e-3,
        -1.609_603_3e-2,
    ];
    const BETA: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_474e-2,
    ];
    let lo = c.splat(-4.0);
    let hi = c.splat(4.0);
    let x = c.vop("arith.maxnumf", &[x, &lo]);
    let x = c.vop("arith.minnumf", &[&x, &hi]);
    let x2 = c.vop("arith.mulf", &[&x, &x]);
    let mut p = c.splat(ALPHA[0]);
    for &a in &ALPHA[1..] {
        let av = c.splat(a);
        p = c.vop("vector.fma", &[&x2, &p, &av]);
    }
    let p = c.vop("arith.mulf", &[&x, &p]);
    let mut q = c.splat(BETA[0]);
    for &b in &BETA[1..] {
        let bv = c.splat(b);
        q = c.vop("vector.fma", &[&x2, &q, &bv]);
    }
    c.vop("arith.divf", &[&p, &q])
}

/// What a grouped GEMM does with each finished tile.
#[derive(Clone, Copy, PartialEq)]
enum Epilogue {
    /// Gated up projection: a tile row is 16 columns of `x·w_gate` then the same 16
    /// of `x·w_up`; writes `act(g)·u`, 16 columns per panel, into `hidden` packed
    /// as the down projection's A panels.
    ActMul(UnaryOp),
    /// `act(tile)`, 32 columns per panel, into `hidden` packed the same way.
    Act(UnaryOp),
    /// `wgt[slot] · tile`, row-major (the down projection).
    Scale,
    /// The tile as it is, row-major.
    Store,
}

impl Epilogue {
    fn linear(self) -> bool {
        matches!(self, Epilogue::Scale | Epilogue::Store)
    }
}

/// Where the rows of A come from.
enum Rows<'a> {
    /// `x[tok[slot]]`: the gather fused into packing.
    Gather { x: &'a str, tx: &'a str },
    /// `buf[slot]`, row-major: packed per task.
    Slots { buf: &'a str, ty: &'a str },
    /// Already packed, `buf [slots / MR, k, MR]`: read as it is.
    Packed { buf: &'a str, ty: &'a str },
}

/// One grouped GEMM over every row block: `out[slots of a block] = epilogue(A ·
/// B[e])`, `B[e]` packed `[active, panels, k, NR]`.
struct Grouped<'a> {
    rows: Rows<'a>,
    k: usize,
    b: (&'a str, &'a str),
    panels: usize,
    /// The last panel holds at most `LANES` columns: half a tile.
    narrow_last: bool,
    epilogue: Epilogue,
    out: (&'a str, &'a str),
    blocks: &'a Blocks,
    shape: Shape,
}

/// The per-thread buffers and shared counters the phases use.
struct Ctx<'a> {
    g: &'a Groups,
    threads: String,
    ap: (String, String),
    acc: (String, String),
    counter: String,
    avx512: bool,
}

/// Phases 3 and 4: one parallel loop whose threads take (row block, column chunk)
/// tasks dynamically.
fn grouped_gemm(c: &mut Code, x: &Ctx, p: &Grouped) {
    let g = x.g;
    let bl = p.blocks;
    let shape = p.shape;
    assert!(!shape.split || p.epilogue.linear());
    let zero = c.idx(0);
    let zero32 = c.constant(0, "i32");
    c.line(format_args!(
        "memref.store {zero32}, {}[{zero}] : memref<1xi32>",
        x.counter
    ));
    let chunks = p.panels.div_ceil(shape.chunk);
    let cv = c.idx(chunks);
    let tasks = c.ix("muli", &bl.count, &cv);
    c.parallel(&[&x.threads], |c, ivs| {
        let w = ivs[0].clone();
        c.for_each_task(&x.counter, &tasks, |c, task| {
            let cv = c.idx(chunks);
            let blk = c.ix("divui", task, &cv);
            let chunk = c.ix("remui", task, &cv);
            let e = load(c, &bl.be, &[&blk], &bl.ty);
            let s0 = load(c, &bl.bs, &[&blk], &bl.ty);
            let n = load(c, &bl.bn, &[&blk], &bl.ty);
            let ae = load(c, &g.aid, &[&e], &g.t_experts);
            let up = c.add_const(&n, MR - 1);
            let mrv = c.idx(MR);
            let npa = c.ix("divui", &up, &mrv);
            let panel0 = c.ix("divui", &s0, &mrv);
            let jp0 = times(c, &chunk, shape.chunk);
            let jp1 = c.add_const(&jp0, shape.chunk);
            let pv = c.idx(p.panels);
            let jp1 = c.min(&jp1, &pv);
            let t = Task {
                x,
                p,
                w: &w,
                s0: &s0,
                npa: &npa,
                panel0: &panel0,
                ae: &ae,
                jps: (&jp0, &jp1),
            };
            let kv = c.idx(p.k);
            if shape.split {
                let zero = c.idx(0);
                c.for_range(&zero, &kv, KC, |c, pc| {
                    let kcv = c.idx(KC);
                    let kv = c.idx(p.k);
                    let rest = c.ix("subi", &kv, pc);
                    let kc = c.min(&kcv, &rest);
                    pack_a(c, &t, (pc, &kc));
                    t.for_panels(c, |c, jp, nv| {
                        t.for_a_panels(c, |c, ip, row0| {
                            let (a, b) = t.operands(c, ip, jp, pc);
                            micro_kernel(c, &a, &b, &kc, nv, |c, tile| {
                                let zero = c.idx(0);
                                let first =
                                    c.let_(format_args!("arith.cmpi eq, {pc}, {zero} : index"));
                                epilogue(c, &t, tile, (row0, jp), nv, Some(&first));
                            });
                        });
                    });
                });
                return;
            }
            let zero = c.idx(0);
            pack_a(c, &t, (&zero, &kv));
            let k_panels = p.k.div_ceil(KC);
            let (acc, tacc) = (&x.acc.0, &x.acc.1);
            let vt = format!("vector<{LANES}xf32>");
            t.for_panels(c, |c, jp, nv| {
                let zero = c.idx(0);
                let kv = c.idx(p.k);
                c.for_range(&zero, &kv, KC, |c, pc| {
                    let kcv = c.idx(KC);
                    let kv = c.idx(p.k);
                    let rest = c.ix("subi", &kv, pc);
                    let kc = c.min(&kcv, &rest);
                    t.for_a_panels(c, |c, ip, row0| {
                        let (a, b) = t.operands(c, ip, jp, pc);
                        micro_kernel(c, &a, &b, &kc, nv, |c, tile| {
                            if k_panels == 1 {
                                epilogue(c, &t, tile, (row0, jp), nv, None);
                                return;
                            }
                            // Partial sums wait in the scratch tile of `ip`.
                            let slot = |c: &mut Code, j: usize| {
                                let jv = c.idx(j);
                                let zero = c.idx(0);
                                format!("{acc}[{w}, {ip}, {jv}, {zero}]")
                            };
                            let zero = c.idx(0);
                            let first = c.let_(format_args!("arith.cmpi eq, {pc}, {zero} : index"));
                            let last_pc = c.idx((k_panels - 1) * KC);
                            let last =
                                c.let_(format_args!("arith.cmpi eq, {pc}, {last_pc} : index"));
                            let keep = |c: &mut Code, vals: &[String]| {
                                for (j, v) in vals.iter().enumerate() {
                                    let at = slot(c, j);
                                    c.line(format_args!("vector.store {v}, {at} : {tacc}, {vt}"));
                                }
                            };
                            c.if_else(
                                &first,
                                |c| keep(c, tile),
                                |c| {
                                    let sum: Vec<String> = tile
                                        .iter()
                                        .enumerate()
                                        .map(|(j, v)| {
                                            let at = slot(c, j);
                                            let old = c.let_(format_args!(
                                                "vector.load {at} : {tacc}, {vt}"
                                            ));
                                            c.vop("arith.addf", &[&old, v])
                                        })
                                        .collect();
                                    c.if_else(
                                        &last,
                                        |c| epilogue(c, &t, &sum, (row0, jp), nv, None),
                                        |c| keep(c, &sum),
                                    );
                                },
                            );
                        });
                    });
                });
            });
        });
    });
}

/// What the code of one task refers to.
struct Task<'a> {
    x: &'a Ctx<'a>,
    p: &'a Grouped<'a>,
    /// This thread's buffers.
    w: &'a str,
    /// The block's first slot and A panels (`ceil(rows / MR)`), its first panel
    /// among all slots, its active expert, its column panels.
    s0: &'a str,
    npa: &'a str,
    panel0: &'a str,
    ae: &'a str,
    jps: (&'a str, &'a str),
}

impl Task<'_> {
    /// The task's column panels, each with the vectors of its tile (a narrow last
    /// panel: 1).
    fn for_panels(&self, c: &mut Code, body: impl Fn(&mut Code, &str, usize)) {
        let p = self.p;
        c.for_range(self.jps.0, self.jps.1, 1, |c, jp| {
            if p.narrow_last {
                let last = c.idx(p.panels - 1);
                let narrow = c.let_(format_args!("arith.cmpi eq, {jp}, {last} : index"));
                c.if_else(&narrow, |c| body(c, jp, 1), |c| body(c, jp, NR / LANES));
            } else {
                body(c, jp, NR / LANES);
            }
        });
    }

    /// The block's A panels, each with its first slot.
    fn for_a_panels(&self, c: &mut Code, body: impl Fn(&mut Code, &str, &str)) {
        let zero = c.idx(0);
        c.for_range(&zero, self.npa, 1, |c, ip| {
            let row0 = c.mad(self.s0, ip, MR);
            body(c, ip, &row0);
        });
    }

    /// The packed A panel `ip` and B panel `jp` from depth `pc` on.
    fn operands<'b>(
        &'b self,
        c: &mut Code,
        ip: &'b str,
        jp: &'b str,
        pc: &'b str,
    ) -> (Packed<'b>, Packed<'b>) {
        let a = match self.p.rows {
            Rows::Packed { buf, ty } => Packed {
                buf,
                ty,
                at: vec![c.ix("addi", self.panel0, ip)],
                k0: Some(pc),
            },
            _ => Packed::new(&self.x.ap.0, &self.x.ap.1, &[self.w, ip]).from(pc),
        };
        let b = Packed::new(self.p.b.0, self.p.b.1, &[self.ae, jp]).from(pc);
        (a, b)
    }
}

/// Pack the block's rows of A, columns `col0..col0 + kc`, into this thread's
/// buffer (nothing to do when A comes packed).
fn pack_a(c: &mut Code, t: &Task, (col0, kc): (&str, &str)) {
    let (a, ta) = match t.p.rows {
        Rows::Packed { .. } => return,
        Rows::Gather { x, tx } => (x, tx),
        Rows::Slots { buf, ty } => (buf, ty),
    };
    let g = t.x.g;
    let (ap, tap) = (&t.x.ap.0, &t.x.ap.1);
    t.for_a_panels(c, |c, ip, row0| {
        let rows: Vec<(String, Option<String>)> = (0..MR)
            .map(|r| {
                let slot = c.add_const(row0, r);
                let row = match t.p.rows {
                    Rows::Gather { .. } => load(c, &g.tok, &[&slot], &g.t_tok),
                    _ => slot,
                };
                (row, None)
            })
            .collect();
        // At the same depth as the micro-kernel reads it (`col0` on).
        let dst = Packed::new(ap, tap, &[t.w, ip]).from(col0);
        pack_a_rows(c, (a, ta), &rows, (col0, kc), &dst);
    });
}

/// Write a finished tile of slots `row0..row0 + MR`, column panel `jp`; with
/// `first` (a split depth), the first slice stores and later ones add.
fn epilogue(
    c: &mut Code,
    t: &Task,
    tile: &[String],
    (row0, jp): (&str, &str),
    nv: usize,
    first: Option<&str>,
) {
    let p = t.p;
    let (out, tout) = p.out;
    let vt = format!("vector<{LANES}xf32>");
    let vm = format!("vector<{MR}xf32>");
    let avx512 = t.x.avx512;
    match p.epilogue {
        Epilogue::ActMul(_) | Epilogue::Act(_) => {
            // Into `hidden [slots / MR, H, MR]`: the tile's rows transposed.
            let mrv = c.idx(MR);
            let panel = c.ix("divui", row0, &mrv);
            let groups: Vec<(usize, Vec<String>)> = match p.epilogue {
                Epilogue::ActMul(op) => {
                    let h = (0..MR)
                        .map(|r| {
                            let a = activation(c, op, &tile[r * 2], avx512);
                            c.vop("arith.mulf", &[&a, &tile[r * 2 + 1]])
                        })
                        .collect();
                    vec![(0, h)]
                }
                Epilogue::Act(op) => (0..nv)
                    .map(|v| {
                        let h = (0..MR)
                            .map(|r| activation(c, op, &tile[r * nv + v], avx512))
                            .collect();
                        (v * LANES, h)
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let width = if matches!(p.epilogue, Epilogue::ActMul(_)) {
                LANES
            } else {
                NR
            };
            let col0 = times(c, jp, width);
            for (off, rows) in groups {
                let cols = transpose_rows(c, &rows);
                for (j, v) in cols.iter().enumerate() {
                    let k = c.add_const(&col0, off + j);
                    let zero = c.idx(0);
                    c.line(format_args!(
                        "vector.store {v}, {out}[{panel}, {k}, {zero}] : {tout}, {vm}"
                    ));
                }
            }
        }
        Epilogue::Scale | Epilogue::Store => {
            let col0 = times(c, jp, NR);
            let g = t.x.g;
            let write = |c: &mut Code, add: bool| {
                for r in 0..MR {
                    let row = c.add_const(row0, r);
                    let scale = (p.epilogue == Epilogue::Scale).then(|| {
                        let w = load(c, &g.wgt, &[&row], &g.t_slots);
                        c.let_(format_args!("vector.broadcast {w} : f32 to {vt}"))
                    });
                    for v in 0..nv {
                        let col = c.add_const(&col0, v * LANES);
                        let tv = &tile[r * nv + v];
                        let mut value = match &scale {
                            Some(s) => c.vop("arith.mulf", &[tv, s]),
                            None => tv.clone(),
                        };
                        if add {
                            let old = c.let_(format_args!(
                                "vector.load {out}[{row}, {col}] : {tout}, {vt}"
                            ));
                            value = c.vop("arith.addf", &[&old, &value]);
                        }
                        c.line(format_args!(
                            "vector.store {value}, {out}[{row}, {col}] : {tout}, {vt}"
                        ));
                    }
                }
            };
            match first {
                Some(first) => c.if_else(first, |c| write(c, false), |c| write(c, true)),
                None => write(c, false),
            }
        }
    }
}

/// One packed B: `dst [active, panels, k, NR]` from the weights of each active
/// expert, the vectors of panel `jp` given by `sources(jp)` as (weight, its type,
/// first column).
struct Pack<'a> {
    dst: (&'a str, &'a str),
    panels: usize,
    k: usize,
    /// (weight, type, columns per panel, offset in the panel, in bounds).
    vectors: Vec<(&'a str, &'a str, usize, usize, bool)>,
}

/// Phase 2: every active expert's panels, in parallel.
fn pack_weights(c: &mut Code, g: &Groups, pack: &Pack) {
    let rows = PACK_ROWS;
    let chunks = pack.k.div_ceil(rows);
    let cv = c.idx(chunks);
    let tasks = c.ix("muli", &g.nactive, &cv);
    c.parallel(&[&tasks], |c, ivs| {
        let i = &ivs[0];
        let cv = c.idx(chunks);
        let ae = c.ix("divui", i, &cv);
        let chunk = c.ix("remui", i, &cv);
        let row0 = times(c, &chunk, rows);
        let kv = c.idx(pack.k);
        let rest = c.ix("subi", &kv, &row0);
        let rv = c.idx(rows);
        let n = c.min(&rv, &rest);
        let e = load(c, &g.act, &[&ae], &g.t_active);
        pack_rows(c, pack, (&ae, &e), (&row0, &n));
    });
}

/// Rows `row0..row0 + n` of expert `e`'s weights into every panel of `pack` (of
/// active expert `ae`).
fn pack_rows(c: &mut Code, pack: &Pack, (ae, e): (&str, &str), (row0, n): (&str, &str)) {
    let zero = c.idx(0);
    let pv = c.idx(pack.panels);
    c.for_range(&zero, &pv, 1, |c, jp| {
        let sources: Vec<BVector> = pack
            .vectors
            .iter()
            .map(|&(buf, ty, width, off, in_bounds)| {
                let col0 = times(c, jp, width);
                BVector {
                    buf,
                    ty,
                    lead: vec![e.to_string()],
                    col: c.add_const(&col0, off),
                    in_bounds,
                }
            })
            .collect();
        let dst = Packed::new(pack.dst.0, pack.dst.1, &[ae, jp]).from(row0);
        pack_b_rows(c, &sources, (row0, n), &dst);
    });
}

/// `memref<?xPxKxNRxf32>` for `panels` panels of depth `k`, allocated for the
/// active experts.
fn packed_b(c: &mut Code, g: &Groups, panels: usize, k: usize) -> (String, String) {
    let ty = format!("memref<?x{panels}x{k}x{NR}xf32>");
    let buf = c.let_(format_args!(
        "memref.alloc({}) {{alignment = 64 : i64}} : {ty}",
        g.nactive
    ));
    (buf, ty)
}

/// `buf[row, col..col + LANES]` of an f32 row `D` wide: plain when whole, masked at
/// the end of the row.
fn read_row(c: &mut Code, buf: &str, ty: &str, (row, col): (&str, &str), whole: bool) -> String {
    let vt = format!("vector<{LANES}xf32>");
    if whole {
        return c.let_(format_args!("vector.load {buf}[{row}, {col}] : {ty}, {vt}"));
    }
    let pad = c.f32(0.0);
    c.let_(format_args!(
        "vector.transfer_read {buf}[{row}, {col}], {pad} {{in_bounds = [false]}} : {ty}, {vt}"
    ))
}

fn write_row(c: &mut Code, v: &str, buf: &str, ty: &str, (row, col): (&str, &str), whole: bool) {
    let vt = format!("vector<{LANES}xf32>");
    if whole {
        c.line(format_args!(
            "vector.store {v}, {buf}[{row}, {col}] : {ty}, {vt}"
        ));
    } else {
        c.line(format_args!(
            "vector.transfer_write {v}, {buf}[{row}, {col}] {{in_bounds = [false]}} : {vt}, {ty}"
        ));
    }
}

/// Columns a task of the up GEMM takes (about), and of the down GEMM: enough tasks
/// for the dynamic schedule to even out, few enough that A is packed rarely.
const UP_COLUMNS: usize = 1024;
const DOWN_COLUMNS: usize = 256;

fn write_moe(name: &str, m: &MoeKernel, avx512: bool) -> String {
    let types = m.operand_types();
    let mut names = vec!["%x", "%gate"];
    if m.op.gated {
        names.push("%wg");
    }
    names.extend(["%wu", "%wd", "%out", "%flag"]);
    let params: Vec<(String, String)> = names
        .iter()
        .map(|n| n.to_string())
        .zip(types.iter().cloned())
        .collect();
    let ty = |n: &str| types[names.iter().position(|x| *x == n).unwrap_or(0)].clone();
    let (tx, tg, tu, td, to) = (ty("%x"), ty("%gate"), ty("%wu"), ty("%wd"), ty("%out"));
    let tw = if m.op.gated { ty("%wg") } else { tu.clone() };
    let s = Sizes::new(m);
    let mut c = Code::new();
    let g = group(&mut c, &s, m, &tg);
    if s.d == 0 || s.t == 0 {
        // An empty result: only the check.
        return function(name, &params, c.finish());
    }
    if s.h == 0 || s.pairs == 0 {
        let zero = c.f32(0.0);
        c.line(format_args!(
            "linalg.fill ins({zero} : f32) outs(%out : {to})"
        ));
        return function(name, &params, c.finish());
    }
    let (t, d, h) = (s.t, s.d, s.h);
    let act = m.op.activation;
    let fused = m.schedule == Schedule::Fused;
    let narrow = |n: usize| (1..=LANES).contains(&(n % NR));
    // Up: gated and fused, 16 columns of w_gate then the same 16 of w_up per panel;
    // 32 columns of one weight otherwise.
    let interleaved = m.op.gated && fused;
    let pu = if interleaved {
        h.div_ceil(LANES)
    } else {
        h.div_ceil(NR)
    };
    let pd = d.div_ceil(NR);
    let up_shape = Shape::new(d, pu, UP_COLUMNS, fused);
    let down_shape = Shape::new(h, pd, DOWN_COLUMNS, false);
    let up_blocks = blocks(&mut c, &s, &g, up_shape.rows);
    let down_blocks = blocks(&mut c, &s, &g, down_shape.rows);
    let t32 = c.let_("func.call @omp_get_max_threads() : () -> i32");
    let tn = c.let_(format_args!("arith.index_cast {t32} : i32 to index"));
    let one = c.idx(1);
    let threads = c.ix("maxsi", &tn, &one);
    // Each thread's packed A (the rows of a block) and scratch tiles.
    let a_rows = if fused {
        up_shape.rows
    } else {
        up_shape.rows.max(down_shape.rows)
    };
    let tap = format!("memref<?x{}x{}x{MR}xf32>", a_rows / MR, d.max(h));
    let ap = c.let_(format_args!(
        "memref.alloc({threads}) {{alignment = 64 : i64}} : {tap}"
    ));
    let tacc = format!(
        "memref<?x{}x{}x{LANES}xf32>",
        up_shape.rows / MR,
        MR * NR / LANES
    );
    let acc = c.let_(format_args!(
        "memref.alloc({threads}) {{alignment = 64 : i64}} : {tacc}"
    ));
    let counter = alloc(&mut c, "memref<1xi32>");
    let ctx = Ctx {
        g: &g,
        threads,
        ap: (ap, tap),
        acc: (acc, tacc),
        counter,
        avx512,
    };
    let ty_y = format!("memref<{}x{}xf32>", s.slots, s.dp);
    let y = alloc(&mut c, &ty_y);
    // Down: w_down[e] [H, D] in 32-column panels.
    let (bd, tbd) = packed_b(&mut c, &g, pd, h);
    let whole_d = d.is_multiple_of(NR);
    let down_pack = Pack {
        dst: (&bd, &tbd),
        panels: pd,
        k: h,
        vectors: vec![
            ("%wd", td.as_str(), NR, 0, whole_d),
            ("%wd", td.as_str(), NR, LANES, whole_d),
        ],
    };
    let whole_h = h.is_multiple_of(NR);
    if fused {
        let vectors = if m.op.gated {
            let whole = h.is_multiple_of(LANES);
            vec![
                ("%wg", tw.as_str(), LANES, 0, whole),
                ("%wu", tu.as_str(), LANES, 0, whole),
            ]
        } else {
            vec![
                ("%wu", tu.as_str(), NR, 0, whole_h),
                ("%wu", tu.as_str(), NR, LANES, whole_h),
            ]
        };
        let (bu, tbu) = packed_b(&mut c, &g, pu, d);
        let up_pack = Pack {
            dst: (&bu, &tbu),
            panels: pu,
            k: d,
            vectors,
        };
        pack_weights(&mut c, &g, &up_pack);
        pack_weights(&mut c, &g, &down_pack);
        // `hidden`, packed as the down GEMM's A panels.
        let th = format!("memref<{}x{}x{MR}xf32>", s.slots / MR, s.hs);
        let hidden = alloc(&mut c, &th);
        let up = Grouped {
            rows: Rows::Gather { x: "%x", tx: &tx },
            k: d,
            b: (&bu, &tbu),
            panels: pu,
            narrow_last: !m.op.gated && narrow(h),
            epilogue: if m.op.gated {
                Epilogue::ActMul(act)
            } else {
                Epilogue::Act(act)
            },
            out: (&hidden, &th),
            blocks: &up_blocks,
            shape: up_shape,
        };
        grouped_gemm(&mut c, &ctx, &up);
        let down = Grouped {
            rows: Rows::Packed {
                buf: &hidden,
                ty: &th,
            },
            k: h,
            b: (&bd, &tbd),
            panels: pd,
            narrow_last: narrow(d),
            epilogue: Epilogue::Scale,
            out: (&y, &ty_y),
            blocks: &down_blocks,
            shape: down_shape,
        };
        grouped_gemm(&mut c, &ctx, &down);
        combine(&mut c, &g, (&y, &ty_y), (t, d), &to);
        return function(name, &params, c.finish());
    }
    // Unfused.
    let txg = format!("memref<{}x{}xf32>", s.slots, s.dp);
    let xg = alloc(&mut c, &txg);
    let weights: Vec<(&str, &str)> = if m.op.gated {
        vec![("%wg", tw.as_str()), ("%wu", tu.as_str())]
    } else {
        vec![("%wu", tu.as_str())]
    };
    let mut packed = Vec::new();
    for &(w, tw) in &weights {
        let (b, tb) = packed_b(&mut c, &g, pu, d);
        let pack = Pack {
            dst: (&b, &tb),
            panels: pu,
            k: d,
            vectors: vec![(w, tw, NR, 0, whole_h), (w, tw, NR, LANES, whole_h)],
        };
        pack_weights(&mut c, &g, &pack);
        packed.push((b, tb));
    }
    pack_weights(&mut c, &g, &down_pack);
    gather_rows(&mut c, &up_blocks, &g, (&tx, d), (&xg, &txg));
    let th = format!("memref<{}x{}xf32>", s.slots, s.hs);
    let mut raw = Vec::new();
    for (b, tb) in &packed {
        let r = alloc(&mut c, &th);
        let gemm = Grouped {
            rows: Rows::Slots { buf: &xg, ty: &txg },
            k: d,
            b: (b, tb),
            panels: pu,
            narrow_last: narrow(h),
            epilogue: Epilogue::Store,
            out: (&r, &th),
            blocks: &up_blocks,
            shape: up_shape,
        };
        grouped_gemm(&mut c, &ctx, &gemm);
        raw.push(r);
    }
    let hidden = alloc(&mut c, &th);
    activate(&mut c, &ctx, &up_blocks, (act, h), &raw, (&hidden, &th));
    let down = Grouped {
        rows: Rows::Slots {
            buf: &hidden,
            ty: &th,
        },
        k: h,
        b: (&bd, &tbd),
        panels: pd,
        narrow_last: narrow(d),
        epilogue: Epilogue::Store,
        out: (&y, &ty_y),
        blocks: &down_blocks,
        shape: down_shape,
    };
    grouped_gemm(&mut c, &ctx, &down);
    scatter_add(&mut c, &g, &up_blocks, (&y, &ty_y), d, &to);
    function(name, &params, c.finish())
}

/// Phase 5: `out[t] = Σ y[slot]` over the slots of token `t`, in expert order.
fn combine(c: &mut Code, g: &Groups, (y, ty): (&str, &str), (t, d): (usize, usize), to: &str) {
    let tv = c.idx(t);
    c.parallel(&[&tv], |c, ivs| {
        let tok = &ivs[0];
        let j0 = load(c, &g.tptr, &[tok], &g.t_tokens);
        let next = c.add_const(tok, 1);
        let j1 = load(c, &g.tptr, &[&next], &g.t_tokens);
        let vt = format!("vector<{LANES}xf32>");
        let sum = |c: &mut Code, col: &str| {
            let zero = c.splat(0.0);
            let one = c.idx(1);
            let r = c.for_((&j0, &j1, &one), &[(zero, vt.clone())], |c, j, acc| {
                let sl = load(c, &g.tslot, &[j], &g.t_pairs);
                let v = c.let_(format_args!("vector.load {y}[{sl}, {col}] : {ty}, {vt}"));
                vec![c.vop("arith.addf", &[&acc[0], &v])]
            });
            r[0].clone()
        };
        let full = d / LANES;
        let zero = c.idx(0);
        let fv = c.idx(full);
        c.for_range(&zero, &fv, 1, |c, v| {
            let col = times(c, v, LANES);
            let s = sum(c, &col);
            write_row(c, &s, "%out", to, (tok, &col), true);
        });
        if !d.is_multiple_of(LANES) {
            let col = c.idx(full * LANES);
            let s = sum(c, &col);
            write_row(c, &s, "%out", to, (tok, &col), false);
        }
    });
}

/// `v · n` on indices (`n` a constant).
fn times(c: &mut Code, v: &str, n: usize) -> String {
    let nv = c.idx(n);
    c.ix("muli", v, &nv)
}

/// Unfused: `xg[slot] = x[tok[slot]]` for the rows of every block (0 up to its last
/// whole `MR` rows).
fn gather_rows(
    c: &mut Code,
    bl: &Blocks,
    g: &Groups,
    (tx, d): (&str, usize),
    (xg, txg): (&str, &str),
) {
    c.parallel(&[&bl.count], |c, ivs| {
        let blk = &ivs[0];
        let s0 = load(c, &bl.bs, &[blk], &bl.ty);
        let n = load(c, &bl.bn, &[blk], &bl.ty);
        let up = c.add_const(&n, MR - 1);
        let mrv = c.idx(MR);
        let q = c.ix("divui", &up, &mrv);
        let rows = c.ix("muli", &q, &mrv);
        let zero = c.idx(0);
        c.for_range(&zero, &rows, 1, |c, r| {
            let slot = c.ix("addi", &s0, r);
            let t = load(c, &g.tok, &[&slot], &g.t_tok);
            let valid = c.let_(format_args!("arith.cmpi ult, {r}, {n} : index"));
            let zv = c.splat(0.0);
            for v in 0..d.div_ceil(LANES) {
                let col = c.idx(v * LANES);
                let whole = (v + 1) * LANES <= d;
                let xv = read_row(c, "%x", tx, (&t, &col), whole);
                let xv = c.let_(format_args!(
                    "arith.select {valid}, {xv}, {zv} : vector<{LANES}xf32>"
                ));
                write_row(c, &xv, xg, txg, (&slot, &col), true);
            }
        });
    });
}

/// Unfused: `hidden = act(g)·u` (or `act(u)`) over the rows of every block.
fn activate(
    c: &mut Code,
    x: &Ctx,
    bl: &Blocks,
    (op, h): (UnaryOp, usize),
    raw: &[String],
    (hidden, th): (&str, &str),
) {
    c.parallel(&[&bl.count], |c, ivs| {
        let blk = &ivs[0];
        let s0 = load(c, &bl.bs, &[blk], &bl.ty);
        let n = load(c, &bl.bn, &[blk], &bl.ty);
        let up = c.add_const(&n, MR - 1);
        let mrv = c.idx(MR);
        let q = c.ix("divui", &up, &mrv);
        let rows = c.ix("muli", &q, &mrv);
        let zero = c.idx(0);
        let vt = format!("vector<{LANES}xf32>");
        c.for_range(&zero, &rows, 1, |c, r| {
            let slot = c.ix("addi", &s0, r);
            let zero = c.idx(0);
            let nv = c.idx(h.div_ceil(LANES));
            c.for_range(&zero, &nv, 1, |c, v| {
                let col = times(c, v, LANES);
                let vals: Vec<String> = raw
                    .iter()
                    .map(|b| c.let_(format_args!("vector.load {b}[{slot}, {col}] : {th}, {vt}")))
                    .collect();
                let a = activation(c, op, &vals[0], x.avx512);
                let out = if vals.len() == 2 {
                    c.vop("arith.mulf", &[&a, &vals[1]])
                } else {
                    a
                };
                c.line(format_args!(
                    "vector.store {out}, {hidden}[{slot}, {col}] : {th}, {vt}"
                ));
            });
        });
    });
}

/// Unfused: `out = 0`, then `out[tok[slot]] += wgt[slot] · y[slot]` pair after pair,
/// in parallel over column vectors.
fn scatter_add(c: &mut Code, g: &Groups, bl: &Blocks, (y, ty): (&str, &str), d: usize, to: &str) {
    let zero = c.f32(0.0);
    c.line(format_args!(
        "linalg.fill ins({zero} : f32) outs(%out : {to})"
    ));
    let nv = c.idx(d.div_ceil(LANES));
    let whole = d.is_multiple_of(LANES);
    let vt = format!("vector<{LANES}xf32>");
    c.parallel(&[&nv], |c, ivs| {
        let col = times(c, &ivs[0], LANES);
        let zero = c.idx(0);
        c.for_range(&zero, &bl.count, 1, |c, blk| {
            let s0 = load(c, &bl.bs, &[blk], &bl.ty);
            let n = load(c, &bl.bn, &[blk], &bl.ty);
            let zero = c.idx(0);
            c.for_range(&zero, &n, 1, |c, r| {
                let slot = c.ix("addi", &s0, r);
                let t = load(c, &g.tok, &[&slot], &g.t_tok);
                let w = load(c, &g.wgt, &[&slot], &g.t_slots);
                let wb = c.let_(format_args!("vector.broadcast {w} : f32 to {vt}"));
                let yv = c.let_(format_args!("vector.load {y}[{slot}, {col}] : {ty}, {vt}"));
                let o = read_row(c, "%out", to, (&t, &col), whole);
                let o = c.vop("vector.fma", &[&wb, &yv, &o]);
                write_row(c, &o, "%out", to, (&t, &col), whole);
            });
        });
    });
}
