//! Kernels with one thread per independent line: top-k (a row), cumsum and
//! linear_scan (a line along the axis), scatter_add (a line across the scattered
//! axis, in index order), and the buffer copy the plan uses for outputs.

use super::code::W;
use super::ew::{launch_grid, BLOCK};
use super::math::{self, compute};
use super::module::{Args, KernelCode};
use attnc_ir::{DType, TopKOutput};

fn code(op: &str, args: Args, w: W) -> KernelCode {
    KernelCode {
        op: op.into(),
        args,
        block: [BLOCK as u32, 1, 1],
        shared_bytes: 0,
        body: w.finish(),
    }
}

/// `out = x` (same dtype and size).
pub(crate) fn copy(x: usize, out: usize, dtype: DType, n: usize) -> (KernelCode, [u32; 3]) {
    let mut args = Args::default();
    let xp = args.get(x, dtype, n);
    let op = args.output(out, dtype, n);
    let ty = math::memref(dtype, n);
    let mut w = W::new();
    w.grid_stride(n, BLOCK, |w, i| {
        let v = w.load(&xp, &ty, &[i]);
        w.store(&v, &op, &ty, &[i]);
    });
    (code("copy", args, w), launch_grid(n))
}

/// The `k` largest of each row of `n` (last axis), descending; ties to the lower
/// index; NaN above everything (the interpreter's order). One thread per row, `k`
/// passes over it: each pass takes the best element ranked below the previous pick.
pub(crate) fn topk(
    x: (usize, DType),
    rows: usize,
    n: usize,
    k: usize,
    output: TopKOutput,
    out: (usize, DType),
) -> (KernelCode, [u32; 3]) {
    let (xdt, odt) = (x.1, out.1);
    let float = xdt.is_float();
    let ct = compute(xdt);
    let mut args = Args::default();
    let xp = args.get(x.0, xdt, rows * n);
    let op = args.output(out.0, odt, rows * k);
    let mut w = W::new();
    // (value, is NaN, index) a ≻ b: a ranks higher, or equally with a lower index.
    let above = |w: &mut W, a: &[String], b: &[String]| -> String {
        let gt = if float {
            let vgt = math::fcmp(w, "ogt", &a[0], &b[0]);
            let not_bn = w.not(&b[1]);
            let an_bn = w.and(&a[1], &not_bn);
            w.or(&an_bn, &vgt)
        } else {
            w.let_(format_args!("arith.cmpi sgt, {}, {} : {ct}", a[0], b[0]))
        };
        let eq = if float {
            let veq = math::fcmp(w, "oeq", &a[0], &b[0]);
            let both = w.and(&a[1], &b[1]);
            w.or(&both, &veq)
        } else {
            w.let_(format_args!("arith.cmpi eq, {}, {} : {ct}", a[0], b[0]))
        };
        let lower = w.cmp_ix("ult", &a[2], &b[2]);
        let tie = w.and(&eq, &lower);
        w.or(&gt, &tie)
    };
    w.grid_stride(rows, BLOCK, |w, row| {
        let base = w.mul_c(row, n);
        let init_v = math::literal(w, 0.0, xdt);
        let f = w.bool(false);
        let t = w.bool(true);
        let zero = w.idx(0);
        let state = vec![
            (init_v.clone(), ct.to_string()),
            (f.clone(), "i1".to_string()),
            (zero.clone(), "index".to_string()),
            (t.clone(), "i1".to_string()),
        ];
        let (lb, ub, one) = (w.idx(0), w.idx(k), w.idx(1));
        w.for_((&lb, &ub, &one), &state, |w, p, prev| {
            let first = prev[3].clone();
            let scan = vec![
                (init_v.clone(), ct.to_string()),
                (f.clone(), "i1".to_string()),
                (zero.clone(), "index".to_string()),
                (f.clone(), "i1".to_string()),
            ];
            let (lb, ub, one) = (w.idx(0), w.idx(n), w.idx(1));
            let best = w.for_((&lb, &ub, &one), &scan, |w, i, b| {
                let at = w.add(&base, i);
                let v = math::load(w, &xp, xdt, rows * n, &at);
                let nan = if float {
                    math::fcmp(w, "uno", &v, &v)
                } else {
                    w.bool(false)
                };
                let cand = vec![v.clone(), nan.clone(), i.to_string()];
                let below_prev = above(w, &prev[..3], &cand);
                let after = w.or(&first, &below_prev);
                let beats = above(w, &cand, &b[..3]);
                let not_found = w.not(&b[3]);
                let better = w.or(&not_found, &beats);
                let take = w.and(&after, &better);
                vec![
                    w.select(&take, &v, &b[0], ct),
                    w.select(&take, &nan, &b[1], "i1"),
                    w.select(&take, i, &b[2], "index"),
                    w.or(&b[3], &take),
                ]
            });
            let at = w.mad_c(p, row, k);
            match output {
                TopKOutput::Values => math::store(w, &best[0], &op, odt, rows * k, &at),
                TopKOutput::Indices => {
                    let i = w.index_cast(&best[2], "index", compute(odt));
                    math::store(w, &i, &op, odt, rows * k, &at);
                }
            }
            let f = w.bool(false);
            vec![best[0].clone(), best[1].clone(), best[2].clone(), f]
        });
    });
    let name = match output {
        TopKOutput::Values => "topk_values",
        TopKOutput::Indices => "topk_indices",
    };
    (code(name, args, w), launch_grid(rows))
}

/// The lines along `axis` of a tensor `[outer, n, inner]`: `(outer, n, inner)`.
pub(crate) fn split(sizes: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = sizes[..axis].iter().product();
    let inner = sizes[axis + 1..].iter().product();
    (outer, sizes[axis], inner)
}

/// Inclusive `cumsum` (`decay` absent) or `linear_scan` `out[t] = a[t]·out[t-1] +
/// x[t]` along the middle axis of `[outer, n, inner]`: one thread per line.
pub(crate) fn scan(
    x: (usize, DType),
    decay: Option<usize>,
    out: usize,
    (outer, n, inner): (usize, usize, usize),
) -> (KernelCode, [u32; 3]) {
    let dt = x.1;
    let ct = compute(dt);
    let total = outer * n * inner;
    let mut args = Args::default();
    let xp = args.get(x.0, dt, total);
    let ap = decay.map(|a| args.get(a, dt, total));
    let op = args.output(out, dt, total);
    let lines = outer * inner;
    let mut w = W::new();
    w.grid_stride(lines, BLOCK, |w, line| {
        let o = w.div_c(line, inner);
        let r = w.rem_c(line, inner);
        let base = w.mad_c(&r, &o, n * inner);
        let zero = math::literal(w, 0.0, dt);
        let (lb, ub, one) = (w.idx(0), w.idx(n), w.idx(1));
        w.for_((&lb, &ub, &one), &[(zero, ct.to_string())], |w, i, acc| {
            let at = w.mad_c(&base, i, inner);
            let v = math::load(w, &xp, dt, total, &at);
            let s = match (&ap, dt.is_float()) {
                (Some(ap), _) => {
                    let a = math::load(w, ap, dt, total, &at);
                    math::fma(w, &a, &acc[0], &v)
                }
                (None, true) => math::fadd(w, &acc[0], &v),
                (None, false) => w.let_(format_args!("arith.addi {}, {v} : {ct}", acc[0])),
            };
            math::store(w, &s, &op, dt, total, &at);
            vec![s]
        });
    });
    let name = if decay.is_some() {
        "linear_scan"
    } else {
        "cumsum"
    };
    (code(name, args, w), launch_grid(lines))
}

/// `out[o, idx[j], r] += upd[o, j, r]` for `j` in order, `out` already holding `data`
/// (`[outer, n, inner]`, `m` indices): one thread per `(o, r)` line. An index outside
/// `[0, n)` adds nothing and fails the run-time check (the interpreter's error).
pub(crate) fn scatter_add(
    indices: (usize, DType, usize),
    updates: usize,
    out: (usize, DType),
    (outer, n, inner): (usize, usize, usize),
) -> (KernelCode, [u32; 3]) {
    let (dt, m) = (out.1, indices.2);
    let ct = compute(dt);
    let mut args = Args::default();
    let ip = args.get(indices.0, indices.1, m);
    let up = args.get(updates, dt, outer * m * inner);
    let op = args.output(out.0, dt, outer * n * inner);
    let flag = args.flag(None, super::ew::INDEX_OUT_OF_RANGE);
    let lines = outer * inner;
    let mut w = W::new();
    w.grid_stride(lines, BLOCK, |w, line| {
        let o = w.div_c(line, inner);
        let r = w.rem_c(line, inner);
        w.for_c(0, m, 1, |w, j| {
            let it = math::memref(indices.1, m);
            let i = w.load(&ip, &it, &[j]);
            let i = if indices.1 == DType::I32 {
                w.let_(format_args!("arith.extsi {i} : i32 to i64"))
            } else {
                i
            };
            let zero = w.i64(0);
            let nv = w.i64(n as i64);
            let lo = w.let_(format_args!("arith.cmpi sge, {i}, {zero} : i64"));
            let hi = w.let_(format_args!("arith.cmpi slt, {i}, {nv} : i64"));
            let ok = w.and(&lo, &hi);
            let bad = w.not(&ok);
            w.raise(&flag, &bad);
            let (up, op) = (up.clone(), op.clone());
            let (o, r) = (o.clone(), r.clone());
            w.if_(&ok, |w| {
                let i = w.index_cast(&i, "i64", "index");
                let row = w.mad_c(&i, &o, n);
                let at = w.mad_c(&r, &row, inner);
                let urow = w.mad_c(j, &o, m);
                let uat = w.mad_c(&r, &urow, inner);
                let u = math::load(w, &up, dt, outer * m * inner, &uat);
                let cur = math::load(w, &op, dt, outer * n * inner, &at);
                let s = if dt.is_float() {
                    math::fadd(w, &cur, &u)
                } else {
                    w.let_(format_args!("arith.addi {cur}, {u} : {ct}"))
                };
                math::store(w, &s, &op, dt, outer * n * inner, &at);
            });
        });
    });
    (code("scatter_add", args, w), launch_grid(lines))
}
