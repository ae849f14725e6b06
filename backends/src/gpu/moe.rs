//! `moe_dispatch`: routed experts computed only for their selected tokens.
//!
//! 1. `moe_route` — one block per expert `e` walks the gate column in token order,
//!    256 tokens at a time, and compacts the tokens with a non-zero gate (warp
//!    ballots, per-warp counts in shared memory): `rows[e][i]` is the `i`-th token of
//!    expert `e` (stable: token order), `slot[t][e]` its position `i` (or -1), and
//!    `counts[e]` how many there are.
//! 2. `moe_offsets` — one thread: `offsets[e]` = pairs before expert `e` (a prefix sum
//!    of the counts), so expert `e`'s pairs are `offsets[e] .. offsets[e] + counts[e]`.
//! 3. `moe_up` — a grouped GEMM over `(column tile, row tile, expert)` work items
//!    (blocks past their expert's count return at once): the tile's rows are the
//!    expert's tokens gathered from `x`, times `w_gate[e]` and `w_up[e]` in one pass
//!    (two B matrices sharing the A tile), the gated activation `act(g)·u` (or
//!    `act(u)`) fused in the epilogue: `hidden[pair]`, f32.
//! 4. `moe_down` — the same over `hidden`, times `w_down[e]`, scaled by the pair's gate
//!    value in the epilogue: `y[pair]`, f32.
//! 5. Shared experts, when the op has them: two (or three) plain matmuls and an
//!    elementwise `act(g)·u` on every token.
//! 6. `moe_combine` — one thread per output element sums its token's pairs in expert
//!    order (the interpreter's order), adds `s·shared(x)`, rounds once.
//!
//! `hidden` and `y` have room for the op's bound on pairs ([`MoeDispatch::max_pairs`]);
//! a gate with more non-zeros than the bound allows (an error in the interpreter)
//! gets its pairs past the room dropped and fails the run-time check: a token with
//! more than `k` experts (counted in `moe_combine`), an expert with more than `k`
//! tokens (in `moe_offsets`).

use super::code::W;
use super::ew::{launch_grid, BLOCK};
use super::gemm::{self, tile_position, tiled, Tile};
use super::math;
use super::module::{Args, KernelCode};
use attnc_ir::{DType, MoeChoice, MoeDispatch, MoeShared, UnaryOp};

/// The buffers of one `moe_dispatch`: `(buffer, dims)` of each operand in op order,
/// the result, and the dtype of all.
pub(crate) struct MoeOperands {
    pub ops: Vec<(usize, Vec<usize>)>,
    pub out: usize,
    pub dtype: DType,
}

/// One launch of the expansion.
pub(crate) type Step = (KernelCode, [u32; 3]);

/// The launches, in order; `temp` makes a scratch buffer of a dtype and sizes.
pub(crate) fn moe(
    m: &MoeDispatch,
    o: &MoeOperands,
    temp: &mut dyn FnMut(DType, Vec<usize>) -> usize,
) -> Result<Vec<Step>, String> {
    let dt = o.dtype;
    let (x, gate) = (&o.ops[0], &o.ops[1]);
    let (t, d) = (x.1[0], x.1[1]);
    let e = gate.1[1];
    let routed = 3 + m.gated as usize;
    let w_up = &o.ops[routed - 1];
    let w_down = &o.ops[routed];
    let w_gate = m.gated.then(|| &o.ops[2]);
    let h = w_up.1[2];
    let pairs = m.max_pairs(t as u64, e as u64) as usize;
    let max_rows = match m.choice {
        MoeChoice::Token => t,
        MoeChoice::Expert => (m.k as usize).min(t),
    };
    if e == 0 || t == 0 || d == 0 || h == 0 || pairs == 0 {
        return Err("a mixture with no tokens, experts or hidden units".into());
    }
    if e > 65535 || t > i32::MAX as usize || pairs > i32::MAX as usize {
        return Err(format!(
            "{e} experts over {t} tokens are out of the kernels' range"
        ));
    }
    let rows = temp(DType::I32, vec![e, t]);
    let counts = temp(DType::I32, vec![e]);
    let offsets = temp(DType::I32, vec![e + 1]);
    let slot = temp(DType::I32, vec![t, e]);
    let hidden = temp(DType::F32, vec![pairs, h]);
    let y = temp(DType::F32, vec![pairs, d]);
    let mut steps = vec![
        route(gate.0, dt, (t, e), rows, slot, counts),
        offsets_kernel(
            counts,
            offsets,
            e,
            (m.choice == MoeChoice::Expert).then_some(m.k),
        ),
    ];
    let grouped = Grouped {
        t,
        e,
        d,
        h,
        pairs,
        max_rows,
        rows,
        counts,
        offsets,
    };
    steps.push(up(
        m,
        &grouped,
        x.0,
        dt,
        w_gate.map(|w| w.0),
        w_up.0,
        hidden,
    ));
    steps.push(down(&grouped, hidden, w_down.0, gate.0, dt, y));
    // Shared experts on every token: plain matmuls.
    let shared = if m.shared != MoeShared::None {
        let s = &o.ops[routed + 1..];
        let n = 2 + m.gated as usize;
        let hs = s[n - 2].1[1];
        let matmul = |temp: &mut dyn FnMut(DType, Vec<usize>) -> usize,
                      b: &(usize, Vec<usize>),
                      k: usize,
                      cols: usize,
                      a: (usize, DType, Vec<usize>)| {
            let out = temp(DType::F32, vec![t, cols]);
            let mm = gemm::MatMul {
                a,
                b: (b.0, dt, vec![k, cols]),
                out: (out, DType::F32, vec![t, cols]),
            };
            gemm::matmul(&mm).map(|step| (out, step))
        };
        let xa = (x.0, dt, vec![t, d]);
        let (su, step) = matmul(temp, &s[n - 2], d, hs, xa.clone())?;
        steps.push(step);
        let sg = if m.gated {
            let (sg, step) = matmul(temp, &s[0], d, hs, xa)?;
            steps.push(step);
            Some(sg)
        } else {
            None
        };
        let sh = temp(DType::F32, vec![t, hs]);
        steps.push(activate(m.activation, sg, su, sh, t * hs));
        let ha = (sh, DType::F32, vec![t, hs]);
        let (ys, step) = matmul(temp, &s[n - 1], hs, d, ha)?;
        steps.push(step);
        let scale = (m.shared == MoeShared::Gated).then(|| s[n].0);
        Some((ys, scale))
    } else {
        None
    };
    let token_bound = (m.choice == MoeChoice::Token).then_some(m.k);
    steps.push(combine(&grouped, slot, y, shared, dt, o.out, token_bound));
    Ok(steps)
}

/// Sizes and scratch buffers the grouped kernels share.
struct Grouped {
    t: usize,
    e: usize,
    d: usize,
    h: usize,
    pairs: usize,
    max_rows: usize,
    rows: usize,
    counts: usize,
    offsets: usize,
}

fn code(op: &str, args: Args, block: u32, shared: usize, w: W) -> KernelCode {
    KernelCode {
        op: op.into(),
        args,
        block: [block, 1, 1],
        shared_bytes: shared as u32,
        body: w.finish(),
    }
}

fn route(
    gate: usize,
    dt: DType,
    (t, e): (usize, usize),
    rows: usize,
    slot: usize,
    counts: usize,
) -> Step {
    const WARPS: usize = BLOCK / 32;
    let mut args = Args::default();
    let gp = args.get(gate, dt, t * e);
    let rp = args.output(rows, DType::I32, e * t);
    let sp = args.output(slot, DType::I32, t * e);
    let cp = args.output(counts, DType::I32, e);
    let (rt, st, ct) = (
        math::memref(DType::I32, e * t),
        math::memref(DType::I32, t * e),
        math::memref(DType::I32, e),
    );
    let mut w = W::new();
    let tid = w.thread_id("x");
    let ex = w.block_id("x");
    let lane = w.rem_c(&tid, 32);
    let warp = w.div_c(&tid, 32);
    let (sm, smt) = w.shared(0, &format!("{WARPS}xi32"));
    let lane32 = w.index_cast(&lane, "index", "i32");
    let one32 = w.i32(1);
    let bit = w.let_(format_args!("arith.shli {one32}, {lane32} : i32"));
    let below = w.let_(format_args!("arith.subi {bit}, {one32} : i32"));
    let all = w.i32(-1);
    let zero32 = w.i32(0);
    let (lb, ub, step) = (w.idx(0), w.idx(t), w.idx(BLOCK));
    let done = w.for_(
        (&lb, &ub, &step),
        &[(zero32.clone(), "i32".into())],
        |w, c0, run| {
            let tok = w.add(c0, &tid);
            let inside = w.lt_c(&tok, t);
            let last = w.idx(t - 1);
            let ctok = w.min_ix(&tok, &last);
            let at = w.mad_c(&ex, &ctok, e);
            let g = math::load(w, &gp, dt, t * e, &at);
            let zero = w.f32(0.0);
            let nz = math::fcmp(w, "une", &g, &zero);
            let nz = w.and(&nz, &inside);
            let ballot = w.intrinsic(
                "llvm.nvvm.vote.ballot.sync",
                &[&all, &nz],
                &["i32", "i1"],
                "i32",
            );
            let before = w.let_(format_args!("arith.andi {ballot}, {below} : i32"));
            let rank = w.intrinsic("llvm.ctpop.i32", &[&before], &["i32"], "i32");
            let total = w.intrinsic("llvm.ctpop.i32", &[&ballot], &["i32"], "i32");
            let idx0 = w.idx(0);
            let first = w.cmp_ix("eq", &lane, &idx0);
            let (sm2, smt2, warp2, total2) = (sm.clone(), smt.clone(), warp.clone(), total.clone());
            w.if_(&first, |w| w.store(&total2, &sm2, &smt2, &[&warp2]));
            w.barrier();
            // This warp's start: the counts of the warps before it; the chunk's total.
            let mut prior = run[0].clone();
            let mut sum = zero32.clone();
            for k in 0..WARPS {
                let kv = w.idx(k);
                let c = w.load(&sm, &smt, &[&kv]);
                let is_before = w.lt_c(&warp, k + 1);
                let is_before = w.not(&is_before);
                let add = w.select(&is_before, &c, &zero32, "i32");
                prior = w.let_(format_args!("arith.addi {prior}, {add} : i32"));
                sum = w.let_(format_args!("arith.addi {sum}, {c} : i32"));
            }
            // Nobody overwrites the counts before all have read them.
            w.barrier();
            let pos = w.let_(format_args!("arith.addi {prior}, {rank} : i32"));
            let (rp, sp, rt, st, pos2) =
                (rp.clone(), sp.clone(), rt.clone(), st.clone(), pos.clone());
            let (ex2, tok2, nz2) = (ex.clone(), tok.clone(), nz.clone());
            let minus = w.i32(-1);
            w.if_(&inside, |w| {
                let p = w.select(&nz2, &pos2, &minus, "i32");
                let sat = w.mad_c(&ex2, &tok2, e);
                w.store(&p, &sp, &st, &[&sat]);
                let (rp, rt, pos2, ex2, tok2) = (
                    rp.clone(),
                    rt.clone(),
                    pos2.clone(),
                    ex2.clone(),
                    tok2.clone(),
                );
                w.if_(&nz2, |w| {
                    let pi = w.index_cast(&pos2, "i32", "index");
                    let rat = w.mad_c(&pi, &ex2, t);
                    let tv = w.index_cast(&tok2, "index", "i32");
                    w.store(&tv, &rp, &rt, &[&rat]);
                });
            });
            vec![w.let_(format_args!("arith.addi {}, {sum} : i32", run[0]))]
        },
    );
    let idx0 = w.idx(0);
    let first = w.cmp_ix("eq", &tid, &idx0);
    let n = done[0].clone();
    w.if_(&first, |w| w.store(&n, &cp, &ct, &[&ex]));
    (
        code("moe_route", args, BLOCK as u32, 4 * WARPS, w),
        [e as u32, 1, 1],
    )
}

/// The messages of the bound checks, as the CPU backend words them.
pub(crate) const TOKEN_BOUND: &str =
    "a gate row has more non-zeros than the k experts a token may choose";
pub(crate) const EXPERT_BOUND: &str =
    "a gate column has more non-zeros than the k tokens an expert may choose";

/// `offsets` from `counts`; with `expert_bound`, a count above it fails the check.
fn offsets_kernel(counts: usize, offsets: usize, e: usize, expert_bound: Option<u64>) -> Step {
    let mut args = Args::default();
    let cp = args.get(counts, DType::I32, e);
    let op = args.output(offsets, DType::I32, e + 1);
    let flag = expert_bound.map(|k| (args.flag(None, EXPERT_BOUND), k.min(i32::MAX as u64)));
    let (ct, ot) = (math::memref(DType::I32, e), math::memref(DType::I32, e + 1));
    let mut w = W::new();
    let tid = w.thread_id("x");
    let idx0 = w.idx(0);
    let first = w.cmp_ix("eq", &tid, &idx0);
    w.if_(&first, |w| {
        let z = w.i32(0);
        let zero = w.idx(0);
        w.store(&z, &op, &ot, &[&zero]);
        let (lb, ub, one) = (w.idx(0), w.idx(e), w.idx(1));
        w.for_(
            (&lb, &ub, &one),
            &[(z.clone(), "i32".into())],
            |w, i, acc| {
                let c = w.load(&cp, &ct, &[i]);
                if let Some((flag, k)) = &flag {
                    let kv = w.i32(*k as i64);
                    let over = w.let_(format_args!("arith.cmpi sgt, {c}, {kv} : i32"));
                    w.raise(flag, &over);
                }
                let s = w.let_(format_args!("arith.addi {}, {c} : i32", acc[0]));
                let next = w.add_c(i, 1);
                w.store(&s, &op, &ot, &[&next]);
                vec![s]
            },
        );
    });
    (code("moe_offsets", args, 32, 0, w), [1, 1, 1])
}

/// The work item of a grouped GEMM block: expert, its count and first pair, the
/// tile's first row; the body runs only when the tile has rows.
struct Item {
    ex: String,
    count: String,
    offset: String,
    m0: String,
    n0: String,
}

fn item(w: &mut W, g: &Grouped, args: &mut Args, tile: Tile) -> Item {
    let cp = args.get(g.counts, DType::I32, g.e);
    let op = args.get(g.offsets, DType::I32, g.e + 1);
    let bx = w.block_id("x");
    let by = w.block_id("y");
    let ex = w.block_id("z");
    let count = w.load(&cp, &math::memref(DType::I32, g.e), &[&ex]);
    let count = w.index_cast(&count, "i32", "index");
    let offset = w.load(&op, &math::memref(DType::I32, g.e + 1), &[&ex]);
    let offset = w.index_cast(&offset, "i32", "index");
    let m0 = w.mul_c(&by, tile.bm);
    let n0 = w.mul_c(&bx, tile.bn);
    Item {
        ex,
        count,
        offset,
        m0,
        n0,
    }
}

fn grid(g: &Grouped, tile: Tile, cols: usize) -> [u32; 3] {
    [
        cols.div_ceil(tile.bn) as u32,
        g.max_rows.div_ceil(tile.bm).max(1) as u32,
        g.e as u32,
    ]
}

#[allow(clippy::too_many_arguments)]
fn up(
    m: &MoeDispatch,
    g: &Grouped,
    x: usize,
    dt: DType,
    w_gate: Option<usize>,
    w_up: usize,
    hidden: usize,
) -> Step {
    let tile = if w_gate.is_some() {
        Tile { bm: 128, bn: 64 }
    } else {
        Tile::for_shape(g.max_rows, g.h)
    };
    let (t, d, h, e) = (g.t, g.d, g.h, g.e);
    let mut args = Args::default();
    let xp = args.get(x, dt, t * d);
    let rp = args.get(g.rows, DType::I32, e * t);
    let up_p = args.get(w_up, dt, e * d * h);
    let gate_p = w_gate.map(|wg| args.get(wg, dt, e * d * h));
    let hp = args.output(hidden, DType::F32, g.pairs * h);
    let mut w = W::new();
    let it = item(&mut w, g, &mut args, tile);
    let has = w.cmp_ix("ult", &it.m0, &it.count);
    let rt = math::memref(DType::I32, e * t);
    let ex = it.ex.clone();
    // `r` is a row of the expert's token list.
    let read_a = |w: &mut W, r: &str, k: &str| {
        let at = w.mad_c(r, &ex, t);
        let tok = w.load(&rp, &rt, &[&at]);
        let tok = w.index_cast(&tok, "i32", "index");
        let o = w.mad_c(k, &tok, d);
        math::load(w, &xp, dt, t * d, &o)
    };
    let weight = |w: &mut W, p: &str, k: &str, c: &str| {
        let base = w.mul_c(&ex, d * h);
        let o = w.mad_c(c, k, h);
        let o = w.add(&base, &o);
        math::load(w, p, dt, e * d * h, &o)
    };
    let read_up = |w: &mut W, k: &str, c: &str| weight(w, &up_p, k, c);
    let gate_name = gate_p.clone().unwrap_or_default();
    let read_gate = |w: &mut W, k: &str, c: &str| weight(w, &gate_name, k, c);
    let (hp2, act, pairs) = (hp.clone(), m.activation, g.pairs);
    w.if_(&has, |w| {
        let mut bs: Vec<gemm::Read> = Vec::new();
        if gate_p.is_some() {
            bs.push(&read_gate);
        }
        bs.push(&read_up);
        let acc = tiled(w, tile, (&it.m0, &it.n0), &it.count, h, d, &read_a, &bs);
        for i in 0..tile.tm() {
            for j in 0..tile.tn() {
                let (lr, lc) = tile_position(w, i, j);
                let r = w.add(&it.m0, &lr);
                let col = w.add(&it.n0, &lc);
                let ok_r = w.cmp_ix("ult", &r, &it.count);
                let ok_c = w.lt_c(&col, h);
                let p = w.add(&it.offset, &r);
                let ok_p = w.lt_c(&p, pairs);
                let ok = w.and(&ok_r, &ok_c);
                let ok = w.and(&ok, &ok_p);
                let slot = i * tile.tn() + j;
                let v = if acc.len() == 2 {
                    let a = math::unary_f32(w, act, &acc[0][slot]);
                    math::fmul(w, &a, &acc[1][slot])
                } else {
                    math::unary_f32(w, act, &acc[0][slot])
                };
                let hp2 = hp2.clone();
                w.if_(&ok, |w| {
                    let at = w.mad_c(&col, &p, h);
                    math::store(w, &v, &hp2, DType::F32, pairs * h, &at);
                });
            }
        }
    });
    let nb = 1 + w_gate.is_some() as usize;
    (
        code("moe_up", args, BLOCK as u32, tile.shared_bytes(nb), w),
        grid(g, tile, h),
    )
}

fn down(g: &Grouped, hidden: usize, w_down: usize, gate: usize, dt: DType, y: usize) -> Step {
    let tile = Tile::for_shape(g.max_rows, g.d);
    let (t, d, h, e, pairs) = (g.t, g.d, g.h, g.e, g.pairs);
    let mut args = Args::default();
    let hp = args.get(hidden, DType::F32, pairs * h);
    let wp = args.get(w_down, dt, e * h * d);
    let gp = args.get(gate, dt, t * e);
    let rp = args.get(g.rows, DType::I32, e * t);
    let yp = args.output(y, DType::F32, pairs * d);
    let mut w = W::new();
    let it = item(&mut w, g, &mut args, tile);
    // Rows that have a pair slot: min(count, pairs - offset), at least 0.
    let room = {
        let p = w.idx(pairs);
        let off = w.min_ix(&it.offset, &p);
        let r = w.let_(format_args!("arith.subi {p}, {off} : index"));
        w.min_ix(&r, &it.count)
    };
    let has = w.cmp_ix("ult", &it.m0, &room);
    let read_a = |w: &mut W, r: &str, k: &str| {
        let p = w.add(&it.offset, r);
        let o = w.mad_c(k, &p, h);
        math::load(w, &hp, DType::F32, pairs * h, &o)
    };
    let read_b = |w: &mut W, k: &str, c: &str| {
        let base = w.mul_c(&it.ex, h * d);
        let o = w.mad_c(c, k, d);
        let o = w.add(&base, &o);
        math::load(w, &wp, dt, e * h * d, &o)
    };
    let rt = math::memref(DType::I32, e * t);
    w.if_(&has, |w| {
        let acc = tiled(w, tile, (&it.m0, &it.n0), &room, d, h, &read_a, &[&read_b]);
        for i in 0..tile.tm() {
            let (lr, _) = tile_position(w, i, 0);
            let r = w.add(&it.m0, &lr);
            let ok_r = w.cmp_ix("ult", &r, &room);
            // The pair's gate value (the row clamped for rows past the list).
            let one = w.idx(1);
            let last = w.let_(format_args!("arith.subi {room}, {one} : index"));
            let cr = w.min_ix(&r, &last);
            let at = w.mad_c(&cr, &it.ex, t);
            let tok = w.load(&rp, &rt, &[&at]);
            let tok = w.index_cast(&tok, "i32", "index");
            let gat = w.mad_c(&it.ex, &tok, e);
            let gv = math::load(w, &gp, dt, t * e, &gat);
            let p = w.add(&it.offset, &r);
            for j in 0..tile.tn() {
                let (_, lc) = tile_position(w, i, j);
                let col = w.add(&it.n0, &lc);
                let ok_c = w.lt_c(&col, d);
                let ok = w.and(&ok_r, &ok_c);
                let v = math::fmul(w, &gv, &acc[0][i * tile.tn() + j]);
                let (yp, p) = (yp.clone(), p.clone());
                w.if_(&ok, |w| {
                    let at = w.mad_c(&col, &p, d);
                    math::store(w, &v, &yp, DType::F32, pairs * d, &at);
                });
            }
        }
    });
    (
        code("moe_down", args, BLOCK as u32, tile.shared_bytes(1), w),
        grid(g, tile, d),
    )
}

/// `out = act(g)·u` (or `act(u)`), f32, `n` elements.
fn activate(act: UnaryOp, g: Option<usize>, u: usize, out: usize, n: usize) -> Step {
    let mut args = Args::default();
    let gp = g.map(|g| args.get(g, DType::F32, n));
    let up = args.get(u, DType::F32, n);
    let op = args.output(out, DType::F32, n);
    let mut w = W::new();
    w.grid_stride(n, BLOCK, |w, i| {
        let uv = math::load(w, &up, DType::F32, n, i);
        let v = match &gp {
            Some(gp) => {
                let gv = math::load(w, gp, DType::F32, n, i);
                let a = math::unary_f32(w, act, &gv);
                math::fmul(w, &a, &uv)
            }
            None => math::unary_f32(w, act, &uv),
        };
        math::store(w, &v, &op, DType::F32, n, i);
    });
    (
        code("moe_activation", args, BLOCK as u32, 0, w),
        launch_grid(n),
    )
}

fn combine(
    g: &Grouped,
    slot: usize,
    y: usize,
    shared: Option<(usize, Option<usize>)>,
    dt: DType,
    out: usize,
    token_bound: Option<u64>,
) -> Step {
    let (t, d, e, pairs) = (g.t, g.d, g.e, g.pairs);
    let mut args = Args::default();
    let sp = args.get(slot, DType::I32, t * e);
    let op_ = args.get(g.offsets, DType::I32, e + 1);
    let yp = args.get(y, DType::F32, pairs * d);
    let shared = shared.map(|(ys, scale)| {
        (
            args.get(ys, DType::F32, t * d),
            scale.map(|s| args.get(s, dt, t)),
        )
    });
    let outp = args.output(out, dt, t * d);
    let flag = token_bound.map(|k| (args.flag(None, TOKEN_BOUND), k.min(i32::MAX as u64)));
    let (st, ot) = (
        math::memref(DType::I32, t * e),
        math::memref(DType::I32, e + 1),
    );
    let mut w = W::new();
    w.grid_stride(t * d, BLOCK, |w, i| {
        let tok = w.div_c(i, d);
        let col = w.rem_c(i, d);
        let zero = w.f32(0.0);
        let chosen0 = w.i32(0);
        let (lb, ub, one) = (w.idx(0), w.idx(e), w.idx(1));
        let acc = w.for_(
            (&lb, &ub, &one),
            &[(zero.clone(), "f32".into()), (chosen0, "i32".into())],
            |w, ex, acc| {
                let at = w.mad_c(ex, &tok, e);
                let s = w.load(&sp, &st, &[&at]);
                let z = w.i32(0);
                let sel = w.let_(format_args!("arith.cmpi sge, {s}, {z} : i32"));
                let off = w.load(&op_, &ot, &[ex]);
                let p = w.let_(format_args!("arith.addi {off}, {s} : i32"));
                let pv = w.i32(pairs as i64);
                let room = w.let_(format_args!("arith.cmpi slt, {p}, {pv} : i32"));
                let ok = w.and(&sel, &room);
                let zero32 = w.i32(0);
                let p = w.select(&ok, &p, &zero32, "i32");
                let p = w.index_cast(&p, "i32", "index");
                let yat = w.mad_c(&col, &p, d);
                let v = math::load(w, &yp, DType::F32, pairs * d, &yat);
                let sum = math::fadd(w, &acc[0], &v);
                let one32 = w.i32(1);
                let more = w.let_(format_args!("arith.addi {}, {one32} : i32", acc[1]));
                let chosen = w.select(&sel, &more, &acc[1], "i32");
                vec![math::fselect(w, &ok, &sum, &acc[0]), chosen]
            },
        );
        if let Some((flag, k)) = &flag {
            // The token's experts, counted by every thread of its row.
            let kv = w.i32(*k as i64);
            let over = w.let_(format_args!("arith.cmpi sgt, {}, {kv} : i32", acc[1]));
            w.raise(flag, &over);
        }
        let mut v = acc[0].clone();
        if let Some((ys, scale)) = &shared {
            let sv = math::load(w, ys, DType::F32, t * d, i);
            let sv = match scale {
                Some(sc) => {
                    let s = math::load(w, sc, dt, t, &tok);
                    math::fmul(w, &s, &sv)
                }
                None => sv,
            };
            v = math::fadd(w, &v, &sv);
        }
        math::store(w, &v, &outp, dt, t * d, i);
    });
    (
        code("moe_combine", args, BLOCK as u32, 0, w),
        launch_grid(t * d),
    )
}
