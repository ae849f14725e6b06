//! Row kernels: softmax (any axis), layer_norm and rms_norm (last axis), and
//! reductions over any axes.
//!
//! A *row* is the set of elements one result depends on; its elements sit at `base +
//! i·stride`. Short rows (at most [`WARP_ROW`] elements) get one warp each, eight
//! rows per 256-thread block, reduced with `gpu.shuffle xor` alone; longer rows get a
//! whole 256-thread block, reduced per warp and then across the eight warps through
//! shared memory. Each thread walks its row with a stride of its group's size, so
//! consecutive lanes read consecutive elements of a last-axis row.
//!
//! Reductions that keep the last axis (`reduce_sum` over axis 1 of `[B, S, D]`) run
//! one thread per result instead, each summing its elements in order: neighbouring
//! threads then read neighbouring addresses. Integer reductions always do (no
//! integer shuffles needed).

use super::code::W;
use super::ew::BLOCK;
use super::math::{self, compute};
use super::module::{Args, KernelCode};
use attnc_ir::{DType, ReduceKind};

/// Longest row a single warp reduces.
pub(crate) const WARP_ROW: usize = 2048;
const WARPS: usize = BLOCK / 32;

/// How a row is split over threads.
#[derive(Clone, Copy, PartialEq)]
enum Group {
    Warp,
    Block,
}

/// The layout of the rows: `rows` rows of `n` elements; row `r` starts at `(r /
/// inner)·n·inner + r % inner` and steps by `inner`.
#[derive(Clone, Copy)]
pub(crate) struct Rows {
    pub rows: usize,
    pub n: usize,
    pub inner: usize,
}

impl Rows {
    fn group(&self) -> Group {
        if self.n <= WARP_ROW {
            Group::Warp
        } else {
            Group::Block
        }
    }

    fn grid(&self) -> [u32; 3] {
        let blocks = match self.group() {
            Group::Warp => self.rows.div_ceil(WARPS),
            Group::Block => self.rows,
        };
        [blocks.max(1) as u32, 1, 1]
    }
}

/// Reduce `v` (f32) with `op` (`maximumf`, `addf`) over the group: every thread of
/// the group gets the result.
fn reduce(w: &mut W, group: Group, v: &str, op: &str, identity: f32) -> String {
    let mut v = v.to_string();
    for off in [16, 8, 4, 2, 1] {
        let o = w.shuffle_xor(&v, off, "f32");
        v = math::fop(w, op, &v, &o);
    }
    if group == Group::Warp {
        return v;
    }
    let (sm, ty) = w.shared(0, &format!("{WARPS}xf32"));
    let tid = w.thread_id("x");
    let lane = w.rem_c(&tid, 32);
    let warp = w.div_c(&tid, 32);
    let zero = w.idx(0);
    let first = w.cmp_ix("eq", &lane, &zero);
    let vv = v.clone();
    w.if_(&first, |w| w.store(&vv, &sm, &ty, &[&warp]));
    w.barrier();
    let has = w.lt_c(&lane, WARPS);
    let id = w.f32(identity);
    let last = w.idx(WARPS - 1);
    let lane_c = w.min_ix(&lane, &last);
    let x = w.load(&sm, &ty, &[&lane_c]);
    let mut x = math::fselect(w, &has, &x, &id);
    for off in [16, 8, 4, 2, 1] {
        let o = w.shuffle_xor(&x, off, "f32");
        x = math::fop(w, op, &x, &o);
    }
    // Nobody rewrites the slots before everyone has read them.
    w.barrier();
    x
}

/// The row of this thread's group and the thread's lane in it, with the guard that
/// the row exists; `body` gets `(row, lane, group size)`.
fn for_row(w: &mut W, rows: Rows, body: impl FnOnce(&mut W, &str, &str, usize)) {
    let tid = w.thread_id("x");
    let bid = w.block_id("x");
    match rows.group() {
        Group::Warp => {
            let warp = w.div_c(&tid, 32);
            let lane = w.rem_c(&tid, 32);
            let row = w.mad_c(&warp, &bid, WARPS);
            let ok = w.lt_c(&row, rows.rows);
            w.if_(&ok, |w| body(w, &row, &lane, 32));
        }
        // One block per row: every thread takes part (the barriers need them all).
        Group::Block => body(w, &bid, &tid, BLOCK),
    }
}

/// The offset of element `i` of row `row`.
fn element(w: &mut W, rows: Rows, row: &str, i: &str) -> String {
    let base = if rows.inner == 1 {
        w.mul_c(row, rows.n)
    } else {
        let o = w.div_c(row, rows.inner);
        let r = w.rem_c(row, rows.inner);
        w.mad_c(&r, &o, rows.n * rows.inner)
    };
    w.mad_c(&base, i, rows.inner)
}

/// `scf.for i = lane to n step g` carrying one f32 from `init`; `step` folds element
/// `i` into it.
fn fold(
    w: &mut W,
    lane: &str,
    n: usize,
    g: usize,
    init: &str,
    step: impl FnOnce(&mut W, &str, &str) -> String,
) -> String {
    let ub = w.idx(n);
    let st = w.idx(g);
    let r = w.for_(
        (lane, &ub, &st),
        &[(init.to_string(), "f32".to_string())],
        |w, i, acc| vec![step(w, i, &acc[0])],
    );
    r[0].clone()
}

/// `exp(x - max) / Σ exp(x - max)` along each row.
pub(crate) fn softmax(x: (usize, DType), out: usize, rows: Rows) -> (KernelCode, [u32; 3]) {
    let mut args = Args::default();
    let total = rows.rows * rows.n;
    let (dtype, group) = (x.1, rows.group());
    let xp = args.get(x.0, dtype, total);
    let op = args.output(out, dtype, total);
    let mut w = W::new();
    for_row(&mut w, rows, |w, row, lane, g| {
        let ninf = w.f32(f32::NEG_INFINITY);
        let m = fold(w, lane, rows.n, g, &ninf, |w, i, acc| {
            let at = element(w, rows, row, i);
            let v = math::load(w, &xp, dtype, total, &at);
            math::fmax(w, acc, &v)
        });
        let m = reduce(w, group, &m, "maximumf", f32::NEG_INFINITY);
        let zero = w.f32(0.0);
        let s = fold(w, lane, rows.n, g, &zero, |w, i, acc| {
            let at = element(w, rows, row, i);
            let v = math::load(w, &xp, dtype, total, &at);
            let d = math::fsub(w, &v, &m);
            let e = math::exp(w, &d);
            math::fadd(w, acc, &e)
        });
        let s = reduce(w, group, &s, "addf", 0.0);
        let (ub, st) = (w.idx(rows.n), w.idx(g));
        w.for_ix(lane, &ub, &st, |w, i| {
            let at = element(w, rows, row, i);
            let v = math::load(w, &xp, dtype, total, &at);
            let d = math::fsub(w, &v, &m);
            let e = math::exp(w, &d);
            let y = math::fdiv(w, &e, &s);
            math::store(w, &y, &op, dtype, total, &at);
        });
    });
    finish("softmax", args, w, rows)
}

fn finish(op: &str, args: Args, w: W, rows: Rows) -> (KernelCode, [u32; 3]) {
    let shared = if rows.group() == Group::Block {
        (WARPS * 4) as u32
    } else {
        0
    };
    (
        KernelCode {
            op: op.into(),
            args,
            block: [BLOCK as u32, 1, 1],
            shared_bytes: shared,
            body: w.finish(),
        },
        rows.grid(),
    )
}

/// `layer_norm` (`beta` given) or `rms_norm` over the last axis of `x`, `rows` rows of
/// `d` elements, `gamma` and `beta` of `[d]`.
pub(crate) fn norm(
    x: (usize, DType),
    gamma: usize,
    beta: Option<usize>,
    out: usize,
    rows: usize,
    d: usize,
    eps: f64,
) -> (KernelCode, [u32; 3]) {
    let rows = Rows {
        rows,
        n: d,
        inner: 1,
    };
    let mut args = Args::default();
    let total = rows.rows * d;
    let (dtype, group) = (x.1, rows.group());
    let xp = args.get(x.0, dtype, total);
    let gp = args.get(gamma, dtype, d);
    let bp = beta.map(|b| args.get(b, dtype, d));
    let op = args.output(out, dtype, total);
    let mut w = W::new();
    for_row(&mut w, rows, |w, row, lane, g| {
        let zero = w.f32(0.0);
        let inv_d = w.f32(1.0 / d as f32);
        let epsv = w.f32(eps as f32);
        // LayerNorm: the mean, then the biased variance around it (two passes, as
        // the interpreter); RMSNorm: the mean square.
        let mean = if bp.is_some() {
            let s = fold(w, lane, d, g, &zero, |w, i, acc| {
                let at = element(w, rows, row, i);
                let v = math::load(w, &xp, dtype, total, &at);
                math::fadd(w, acc, &v)
            });
            let s = reduce(w, group, &s, "addf", 0.0);
            Some(math::fmul(w, &s, &inv_d))
        } else {
            None
        };
        let ss = fold(w, lane, d, g, &zero, |w, i, acc| {
            let at = element(w, rows, row, i);
            let v = math::load(w, &xp, dtype, total, &at);
            let c = match &mean {
                Some(m) => math::fsub(w, &v, m),
                None => v,
            };
            math::fma(w, &c, &c, acc)
        });
        let ss = reduce(w, group, &ss, "addf", 0.0);
        let var = math::fmul(w, &ss, &inv_d);
        let ve = math::fadd(w, &var, &epsv);
        let denom = math::sqrt(w, &ve);
        let (ub, st) = (w.idx(d), w.idx(g));
        w.for_ix(lane, &ub, &st, |w, i| {
            let at = element(w, rows, row, i);
            let v = math::load(w, &xp, dtype, total, &at);
            let c = match &mean {
                Some(m) => math::fsub(w, &v, m),
                None => v,
            };
            let y = math::fdiv(w, &c, &denom);
            let gv = math::load(w, &gp, dtype, d, i);
            let y = math::fmul(w, &y, &gv);
            let y = match &bp {
                Some(bp) => {
                    let bv = math::load(w, bp, dtype, d, i);
                    math::fadd(w, &y, &bv)
                }
                None => y,
            };
            math::store(w, &y, &op, dtype, total, &at);
        });
    });
    let name = if beta.is_some() {
        "layer_norm"
    } else {
        "rms_norm"
    };
    finish(name, args, w, rows)
}

/// `reduce_*` of `x` (`sizes`) over `axes` into `out`.
pub(crate) fn reduce_op(
    x: (usize, DType),
    sizes: &[usize],
    axes: &[usize],
    kind: ReduceKind,
    out: usize,
) -> (KernelCode, [u32; 3]) {
    let dtype = x.1;
    let total: usize = sizes.iter().product();
    let strides = attnc_ir::strides(sizes);
    let kept: Vec<usize> = (0..sizes.len()).filter(|a| !axes.contains(a)).collect();
    let mut reduced: Vec<usize> = axes.to_vec();
    reduced.sort_unstable();
    let outs: usize = kept.iter().map(|&a| sizes[a]).product();
    let count: usize = reduced.iter().map(|&a| sizes[a]).product();
    let last_reduced = sizes.is_empty() || reduced.last() == Some(&(sizes.len() - 1));
    let mut args = Args::default();
    let xp = args.get(x.0, dtype, total);
    let op = args.output(out, dtype, outs);
    let mut w = W::new();
    // Offset of the element with kept coordinates from `o` and reduced ones from `r`.
    let offset = |w: &mut W, axes: &[usize], linear: &str| -> String {
        let mut rest = linear.to_string();
        let mut acc = w.idx(0);
        for (k, &a) in axes.iter().enumerate().rev() {
            let n = sizes[a];
            let c = if k == 0 {
                rest.clone()
            } else {
                let c = w.rem_c(&rest, n);
                rest = w.div_c(&rest, n);
                c
            };
            acc = w.mad_c(&acc, &c, strides[a]);
        }
        acc
    };
    let float = dtype.is_float();
    let ct = compute(dtype);
    let identity = |w: &mut W| match (kind, float) {
        (ReduceKind::Max, true) => w.f32(f32::NEG_INFINITY),
        (_, true) => w.f32(0.0),
        (ReduceKind::Max, false) => w.constant(
            if dtype == DType::I32 {
                i32::MIN as i64
            } else {
                i64::MIN
            },
            ct,
        ),
        (_, false) => w.constant(0, ct),
    };
    let combine = |w: &mut W, a: &str, b: &str| -> String {
        match (kind, float) {
            (ReduceKind::Max, true) => math::fmax(w, a, b),
            (_, true) => math::fadd(w, a, b),
            (ReduceKind::Max, false) => w.let_(format_args!("arith.maxsi {a}, {b} : {ct}")),
            (_, false) => w.let_(format_args!("arith.addi {a}, {b} : {ct}")),
        }
    };
    let mean = |w: &mut W, v: &str| -> String {
        if kind != ReduceKind::Mean {
            return v.to_string();
        }
        if float {
            let c = w.f32(count as f32);
            math::fdiv(w, v, &c)
        } else {
            let c = w.constant(count, ct);
            math::int_div(w, v, &c, ct)
        }
    };
    let rows = Rows {
        rows: outs,
        n: count,
        inner: 1,
    };
    if float && last_reduced {
        let group = rows.group();
        for_row(&mut w, rows, |w, row, lane, g| {
            let base = offset(w, &kept, row);
            let init = identity(w);
            let v = fold(w, lane, count, g, &init, |w, i, acc| {
                let off = offset(w, &reduced, i);
                let at = w.add(&base, &off);
                let v = math::load(w, &xp, dtype, total, &at);
                combine(w, acc, &v)
            });
            let (op_name, id) = if kind == ReduceKind::Max {
                ("maximumf", f32::NEG_INFINITY)
            } else {
                ("addf", 0.0)
            };
            let v = reduce(w, group, &v, op_name, id);
            let v = mean(w, &v);
            let zero = w.idx(0);
            let first = w.cmp_ix("eq", lane, &zero);
            w.if_(&first, |w| math::store(w, &v, &op, dtype, outs, row));
        });
        return finish(kind.name(), args, w, rows);
    }
    // One thread per result, in order over its elements.
    w.grid_stride(outs, BLOCK, |w, o| {
        let base = offset(w, &kept, o);
        let init = identity(w);
        let (lb, ub, one) = (w.idx(0), w.idx(count), w.idx(1));
        let r = w.for_((&lb, &ub, &one), &[(init, ct.to_string())], |w, i, acc| {
            let off = offset(w, &reduced, i);
            let at = w.add(&base, &off);
            let v = math::load(w, &xp, dtype, total, &at);
            vec![combine(w, &acc[0], &v)]
        });
        let v = mean(w, &r[0]);
        math::store(w, &v, &op, dtype, outs, o);
    });
    (
        KernelCode {
            op: kind.name().into(),
            args,
            block: [BLOCK as u32, 1, 1],
            shared_bytes: 0,
            body: w.finish(),
        },
        super::ew::launch_grid(outs),
    )
}
