//! Fused attention, FlashAttention-2 style, in f32 SIMT code.
//!
//! One block of 256 threads per `(query tile, batch · head)`: `BQ` query rows stream
//! the keys and values past them in tiles of `BK`. Threads form a 16 × 16 grid (`tx =
//! tid % 16`, `ty = tid / 16`): a thread owns query rows `ty + 16·i` (`i < BQ/16`), the
//! score columns `tx + 16·j` (`j < BK/16`) of those rows and the output columns `tx +
//! 16·c` (`c < ⌈Dv/16⌉`). The 16 threads of a row are the 16 lanes of a half warp, so
//! row maxima and sums are `gpu.shuffle xor` over offsets 8, 4, 2, 1.
//!
//! Shared memory (dynamic): `Qs[Dk][BQ + 1]` (the query tile, transposed, loaded
//! once), one buffer holding first `Ks[Dk][BK + 1]` (the key tile, transposed) and
//! then `Vs[BK][Dv]` (the value tile), and `Ps[BQ][BK]` (the probabilities). The odd
//! row lengths of the transposed tiles put consecutive `d` in different banks when
//! they are written; reads are broadcasts (`Qs`, `Ps`) or consecutive (`Ks`, `Vs`).
//!
//! Per key tile: stage K (keys past `Sk` as 0); `S = Q·Kᵀ` in registers; the score
//! modifiers in order — `scale`, softcap `c·tanh(s/c)`, `+ bias` (broadcast into `[B,
//! H, Sq, Sk]`), `-inf` where the mask, the document ids or the key range exclude the
//! key (only in tiles that can exclude one); then the online softmax in base 2 —
//! scores times `log2 e`, running max `m`, `P = 2^(s - m)` (`ex2.approx`), running
//! sum `l = l·α + ΣP` with `α = 2^(m_old - m_new)`; stage V over K; `O = α·O + P·V`.
//! At the end `out = O / l`. A row masked so far keeps `m = -inf` and adds exactly 0
//! (its max is taken as 0 for the exponentials); a row masked everywhere ends `0/0 =
//! NaN`, as the interpreter's softmax of all `-inf` does.
//!
//! Which key tiles a query tile visits:
//! - `attention`: all of them; the mask (if any) is evaluated everywhere, the key
//!   range only in a ragged last tile.
//! - `block_sparse_attention` with a mask layout: the non-empty tiles of its
//!   [`BlockLayout`] (computed at compile time, a constant CSR list in the module —
//!   one row per query tile and layout group), the mask evaluated only in the
//!   partial ones. The tile is the op's block.
//! - with a block list (`listed`): the listed key blocks of the tile's row, each as
//!   the kernel tiles it covers, each tile as the mask's layout classifies it; a
//!   block listed twice is visited twice (it counts twice, as the op defines).
//!
//! GQA: query head `h` reads KV head `h / groups`; KV is never repeated.

use super::code::W;
use super::ew::{Pos, BLOCK};
use super::math;
use super::module::{Args, Globals, KernelCode};
use super::program::Arch;
use attnc_ir::{dense_attention_block, listed_tile, Attention, BlockLayout, DType, Dims};

const LOG2E: f64 = std::f64::consts::LOG2_E;

/// Operands of one attention: `(buffer, dtype, sizes)` each.
pub(crate) struct AttentionOperands {
    pub q: (usize, DType, Vec<usize>),
    pub k: (usize, DType, Vec<usize>),
    pub v: (usize, DType, Vec<usize>),
    pub bias: Option<(usize, DType, Vec<usize>)>,
    pub segments: Option<(usize, DType, Vec<usize>)>,
    pub list: Option<(usize, DType, Vec<usize>)>,
    pub out: (usize, DType, Vec<usize>),
}

/// Shared memory a block may use on `arch` (the opt-in maximum).
fn max_shared(arch: Arch) -> usize {
    arch.max_shared_bytes() as usize
}

/// The `[BQ, BK]` tile of `a`.
fn tile(a: &Attention, sq: usize, sk: usize) -> [usize; 2] {
    match a.block {
        Some(b) if a.listed => listed_tile(b.map(|n| n as usize)),
        Some(b) => b.map(|n| n as usize),
        None => dense_attention_block(sq, sk),
    }
}

fn shared_bytes(bq: usize, bk: usize, dk: usize, dv: usize) -> usize {
    4 * (dk * (bq + 1) + (dk * (bk + 1)).max(bk * dv) + bq * bk)
}

/// Whether the kernel can compile `a` on `arch`: tiles of 16 to 128 rows and keys
/// (multiples of 16), shared memory within the architecture's, a mask the backends
/// can evaluate.
pub(crate) fn check(
    a: &Attention,
    ops: &AttentionOperands,
    dims: &Dims,
    arch: Arch,
) -> Result<(), String> {
    let (sq, dk) = (ops.q.2[2], ops.q.2[3]);
    let (sk, dv) = (ops.k.2[2], ops.v.2[3]);
    let [bq, bk] = tile(a, sq, sk);
    let ok = |n: usize| n.is_multiple_of(16) && (16..=128).contains(&n);
    if !ok(bq) || !ok(bk) {
        return Err(format!(
            "the GPU kernel tiles blocks of 16 to 128 query rows and keys (multiples of 16), not {bq}x{bk}"
        ));
    }
    if let (Some([lq, lk]), true) = (a.block, a.listed) {
        if !(lq as usize).is_multiple_of(bq) || !(lk as usize).is_multiple_of(bk) {
            return Err(format!(
                "listed blocks of {lq}x{lk} do not split into kernel tiles"
            ));
        }
    }
    let bytes = shared_bytes(bq, bk, dk, dv);
    if bytes > max_shared(arch) {
        return Err(format!(
            "a {bq}x{bk} tile with head dims {dk}/{dv} needs {bytes} bytes of shared memory, more than {} has",
            arch.name()
        ));
    }
    if sq == 0 || sk == 0 || dk == 0 || dv == 0 {
        return Err("attention over an empty sequence or head".into());
    }
    if let (Some(_), false) = (a.block, a.listed) {
        let sizes = [ops.q.2[0], ops.q.2[1], sq, sk];
        BlockLayout::of(a.mask.as_ref(), dims, sizes, [bq, bk])?;
    }
    match &a.mask {
        Some(m) => crate::kernels::check_mask(m, dims),
        None => Ok(()),
    }
}

/// Whether a tile evaluates the mask: known when the kernel is written, or read
/// from the layout at run time (an `i1`).
#[derive(Clone)]
enum Partial {
    Static(bool),
    Dynamic(String),
}

struct Ctx<'a> {
    a: &'a Attention,
    dims: &'a Dims,
    bk: usize,
    rq: usize,
    rk: usize,
    cv: usize,
    b_sz: usize,
    h: usize,
    sq: usize,
    sk: usize,
    dk: usize,
    dv: usize,
    /// Parameters.
    kp: (String, DType, usize),
    vp: (String, DType, usize),
    bias: Option<(String, DType, Vec<usize>)>,
    seg: Option<(String, usize)>,
    /// Shared views.
    qs: (String, String),
    ks: (String, String),
    vs: (String, String),
    ps: (String, String),
    /// Block coordinates.
    b: String,
    hq: String,
    q0: String,
    kv_base_k: String,
    kv_base_v: String,
    tx: String,
    ty: String,
    /// The query segment of each of the thread's rows.
    qseg: Vec<String>,
}

/// The fused attention kernel and its grid.
pub(crate) fn attention(
    a: &Attention,
    ops: &AttentionOperands,
    dims: &Dims,
    globals: &mut Globals,
) -> (KernelCode, [u32; 3]) {
    let (b_sz, h, sq, dk) = (ops.q.2[0], ops.q.2[1], ops.q.2[2], ops.q.2[3]);
    let (hk, sk, dv) = (ops.k.2[1], ops.k.2[2], ops.v.2[3]);
    let groups = (h / hk.max(1)).max(1);
    let [bq, bk] = tile(a, sq, sk);
    let (rq, rk, cv) = (bq / 16, bk / 16, dv.div_ceil(16));
    let nqb = sq.div_ceil(bq);
    let nkb = sk.div_ceil(bk);
    let mut args = Args::default();
    let count = |s: &[usize]| s.iter().product::<usize>();
    let (nq, nk, nv) = (count(&ops.q.2), count(&ops.k.2), count(&ops.v.2));
    let qn = args.get(ops.q.0, ops.q.1, nq);
    let kn = args.get(ops.k.0, ops.k.1, nk);
    let vn = args.get(ops.v.0, ops.v.1, nv);
    let bias = ops
        .bias
        .as_ref()
        .map(|(buf, dt, s)| (args.get(*buf, *dt, count(s)), *dt, s.clone()));
    let seg = ops
        .segments
        .as_ref()
        .map(|(buf, dt, s)| (args.get(*buf, *dt, count(s)), s[1]));
    let list = ops
        .list
        .as_ref()
        .map(|(buf, dt, s)| (args.get(*buf, *dt, count(s)), s.clone()));
    let no = count(&ops.out.2);
    let op = args.output(ops.out.0, ops.out.1, no);

    if let Some(m) = &a.mask {
        super::mask::declare_tables(globals, m, dims);
    }
    let mut w = W::new();
    let tid = w.thread_id("x");
    let tx = w.rem_c(&tid, 16);
    let ty = w.div_c(&tid, 16);
    let qt = w.block_id("x");
    let bh = w.block_id("y");
    let b = w.div_c(&bh, h);
    let hq = w.rem_c(&bh, h);
    let hkv = w.div_c(&hq, groups);
    let q0 = w.mul_c(&qt, bq);
    let qs = w.shared(0, &format!("{dk}x{}xf32", bq + 1));
    let kv_off = 4 * dk * (bq + 1);
    let ks = w.shared(kv_off, &format!("{dk}x{}xf32", bk + 1));
    let vs = w.shared(kv_off, &format!("{bk}x{dv}xf32"));
    let ps_off = kv_off + 4 * (dk * (bk + 1)).max(bk * dv);
    let ps = w.shared(ps_off, &format!("{bq}x{bk}xf32"));
    let bkv = w.mad_c(&hkv, &b, hk);
    let kv_base_k = w.mul_c(&bkv, sk * dk);
    let kv_base_v = w.mul_c(&bkv, sk * dv);

    // The query tile, transposed, rows past Sq as 0.
    let q_base = w.mul_c(&bh, sq * dk);
    let zero_f = w.f32(0.0);
    for p in 0..(bq * dk).div_ceil(BLOCK) {
        let e = w.add_c(&tid, p * BLOCK);
        let inside = w.lt_c(&e, bq * dk);
        let (qs_m, qs_t) = qs.clone();
        let (qn, q0, q_base, zero_f) = (qn.clone(), q0.clone(), q_base.clone(), zero_f.clone());
        let qdt = ops.q.1;
        let (row, d) = w.split_item(&tid, p, BLOCK, dk);
        w.if_(&inside, |w| {
            let gq = w.add(&q0, &row);
            let ok = w.lt_c(&gq, sq);
            let t = w.if_begin(&ok, &["f32"]);
            let at = w.mad_c(&d, &gq, dk);
            let at = w.add(&q_base, &at);
            let v = math::load(w, &qn, qdt, nq, &at);
            w.if_else(&t, &[v]);
            let v = w.if_end(t, std::slice::from_ref(&zero_f)).remove(0);
            w.store(&v, &qs_m, &qs_t, &[&d, &row]);
        });
    }

    // The document of each query row of the thread.
    let qseg: Vec<String> = match &seg {
        Some((sp, s)) => (0..rq)
            .map(|i| {
                let r = w.add_c(&ty, 16 * i);
                let gq = w.add(&q0, &r);
                let last = w.idx(s - 1);
                let cq = w.min_ix(&gq, &last);
                let at = w.mad_c(&cq, &b, *s);
                w.load(sp, &math::memref(DType::I64, b_sz * s), &[&at])
            })
            .collect(),
        None => Vec::new(),
    };

    let ctx = Ctx {
        a,
        dims,
        bk,
        rq,
        rk,
        cv,
        b_sz,
        h,
        sq,
        sk,
        dk,
        dv,
        kp: (kn, ops.k.1, nk),
        vp: (vn, ops.v.1, nv),
        bias,
        seg,
        qs,
        ks,
        vs,
        ps,
        b: b.clone(),
        hq: hq.clone(),
        q0: q0.clone(),
        kv_base_k,
        kv_base_v,
        tx: tx.clone(),
        ty: ty.clone(),
        qseg,
    };

    // m = -inf, l = 0, O = 0.
    let ninf = w.f32(f32::NEG_INFINITY);
    let mut state: Vec<String> = Vec::new();
    state.extend((0..rq).map(|_| ninf.clone()));
    state.extend((0..rq).map(|_| zero_f.clone()));
    state.extend((0..rq * cv).map(|_| zero_f.clone()));
    let types: Vec<(String, String)> = state.iter().map(|v| (v.clone(), "f32".into())).collect();
    let documents = a.segments;
    let masked = a.mask.is_some() || documents;
    let ragged = !sk.is_multiple_of(bk);

    let state = match (a.block, a.listed) {
        (Some([lq, lk]), true) => {
            let (lp, ls) = list.clone().unwrap_or_default();
            let (lq, lk) = (lq as usize, lk as usize);
            let q_tiles = lq / bq;
            let k_tiles = lk / bk;
            let key_blocks = sk.div_ceil(lk);
            let slots = ls.get(3).copied().unwrap_or(0);
            let lrows = ls.get(2).copied().unwrap_or(1);
            // The mask's coverage of every kernel tile: 0 empty, 1 full, 2 partial.
            let sizes = [b_sz, h, sq, sk];
            let layout = BlockLayout::of(a.mask.as_ref(), dims, sizes, [bq, bk]).ok();
            let lgroups = layout.as_ref().map_or(1, |l| l.groups());
            let mut kinds = vec![0u32; lgroups * nqb * nkb];
            if let Some(l) = &layout {
                for g in 0..lgroups {
                    for qb in 0..nqb {
                        for (kt, partial) in l.row(g, qb) {
                            kinds[(g * nqb + qb) * nkb + kt] = 1 + partial as u32;
                        }
                    }
                }
            }
            let name = format!("attnc_kinds_{:016x}", hash_u32(&kinds));
            let kty = globals.constant_i32(&name, &kinds);
            let table = w.hoisted(format!("memref.get_global @{name} : {kty}"));
            let (by_batch, by_head) = layout
                .as_ref()
                .map_or((false, false), |l| (l.by_batch, l.by_head));
            let group = group_index(&mut w, by_batch, by_head, &b, &hq, h);
            let lrow = w.div_c(&qt, q_tiles);
            let trow = w.mad_c(&qt, &group, nqb);
            let trow = w.mul_c(&trow, nkb);
            let ltype = math::memref(DType::I64, count(&ls));
            let row_base = {
                let r = w.mad_c(&hq, &b, h);
                let r = w.mad_c(&lrow, &r, lrows);
                w.mul_c(&r, slots)
            };
            let (lb, ub, one) = (w.idx(0), w.idx(slots), w.idx(1));
            w.for_((&lb, &ub, &one), &types, |w, slot, st| {
                let at = w.add(&row_base, slot);
                let e = w.load(&lp, &ltype, &[&at]);
                let zero = w.i64(0);
                let nkl = w.i64(key_blocks as i64);
                let lo = w.let_(format_args!("arith.cmpi sge, {e}, {zero} : i64"));
                let hi = w.let_(format_args!("arith.cmpi slt, {e}, {nkl} : i64"));
                let valid = w.and(&lo, &hi);
                cond(w, &valid, st, |w, st| {
                    let e = w.index_cast(&e, "i64", "index");
                    let mut st = st.to_vec();
                    for j in 0..k_tiles {
                        let jv = w.idx(j);
                        let kt = w.mad_c(&jv, &e, k_tiles);
                        let exists = w.lt_c(&kt, nkb);
                        st = cond(w, &exists, &st, |w, st| {
                            let at = w.add(&trow, &kt);
                            let kind = w.load(&table, &kty, &[&at]);
                            let z = w.i32(0);
                            let live = w.let_(format_args!("arith.cmpi ne, {kind}, {z} : i32"));
                            cond(w, &live, st, |w, st| {
                                let two = w.i32(2);
                                let p = w.let_(format_args!("arith.cmpi eq, {kind}, {two} : i32"));
                                let partial = if documents {
                                    Partial::Static(true)
                                } else {
                                    Partial::Dynamic(p)
                                };
                                key_tile(w, &ctx, &kt, partial, st)
                            })
                        });
                    }
                    st
                })
            })
        }
        (Some(_), false) => {
            let sizes = [b_sz, h, sq, sk];
            let layout = BlockLayout::of(a.mask.as_ref(), dims, sizes, [bq, bk]).ok();
            let (rows, entries, by_batch, by_head) = match &layout {
                Some(l) => (l.rows.clone(), l.entries.clone(), l.by_batch, l.by_head),
                None => (vec![0; nqb + 1], Vec::new(), false, false),
            };
            let key = hash_u32(&rows) ^ hash_u32(&entries).rotate_left(17);
            let rname = format!("attnc_layout_rows_{key:016x}");
            let ename = format!("attnc_layout_entries_{key:016x}");
            let rty = globals.constant_i32(&rname, &rows);
            let ety = globals.constant_i32(&ename, &entries);
            let rt = w.hoisted(format!("memref.get_global @{rname} : {rty}"));
            let et = w.hoisted(format!("memref.get_global @{ename} : {ety}"));
            let group = group_index(&mut w, by_batch, by_head, &b, &hq, h);
            let row = w.mad_c(&qt, &group, nqb);
            let next = w.add_c(&row, 1);
            let start = w.load(&rt, &rty, &[&row]);
            let end = w.load(&rt, &rty, &[&next]);
            let start = w.index_cast(&start, "i32", "index");
            let end = w.index_cast(&end, "i32", "index");
            let one = w.idx(1);
            w.for_((&start, &end, &one), &types, |w, e, st| {
                let x = w.load(&et, &ety, &[e]);
                let x = w.index_cast(&x, "i32", "index");
                let one = w.idx(1);
                let kt = w.ix("shrui", &x, &one);
                let bit = w.ix("andi", &x, &one);
                let p = w.cmp_ix("eq", &bit, &one);
                let partial = if documents {
                    Partial::Static(true)
                } else {
                    Partial::Dynamic(p)
                };
                key_tile(w, &ctx, &kt, partial, st)
            })
        }
        _ => {
            let (lb, ub, one) = (w.idx(0), w.idx(nkb), w.idx(1));
            w.for_((&lb, &ub, &one), &types, |w, kt, st| {
                let partial = if masked {
                    Partial::Static(true)
                } else if ragged {
                    let last = w.idx(nkb - 1);
                    Partial::Dynamic(w.cmp_ix("eq", kt, &last))
                } else {
                    Partial::Static(false)
                };
                key_tile(w, &ctx, kt, partial, st)
            })
        }
    };

    // out = O / l for the rows and columns that exist.
    let out_base = w.mul_c(&bh, sq * dv);
    for i in 0..rq {
        let l = state[rq + i].clone();
        let r = w.add_c(&ty, 16 * i);
        let gq = w.add(&q0, &r);
        for c in 0..cv {
            let col = w.add_c(&tx, 16 * c);
            let ok_q = w.lt_c(&gq, sq);
            let ok_c = w.lt_c(&col, dv);
            let ok = w.and(&ok_q, &ok_c);
            let o = state[2 * rq + i * cv + c].clone();
            let (op, out_base, gq, l) = (op.clone(), out_base.clone(), gq.clone(), l.clone());
            let odt = ops.out.1;
            w.if_(&ok, |w| {
                let y = math::fdiv(w, &o, &l);
                let at = w.mad_c(&col, &gq, dv);
                let at = w.add(&out_base, &at);
                math::store(w, &y, &op, odt, no, &at);
            });
        }
    }
    let name = if a.block.is_some() {
        "block_sparse_attention"
    } else {
        "attention"
    };
    (
        KernelCode {
            op: name.into(),
            args,
            block: [BLOCK as u32, 1, 1],
            shared_bytes: shared_bytes(bq, bk, dk, dv) as u32,
            body: w.finish(),
        },
        [nqb as u32, (b_sz * h) as u32, 1],
    )
}

fn hash_u32(xs: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    xs.hash(&mut h);
    h.finish()
}

/// The layout group of batch row `b`, head `h`.
fn group_index(
    w: &mut W,
    by_batch: bool,
    by_head: bool,
    b: &str,
    hq: &str,
    heads: usize,
) -> String {
    match (by_batch, by_head) {
        (true, _) => w.mad_c(hq, b, heads),
        (false, true) => hq.to_string(),
        _ => w.idx(0),
    }
}

/// `if cond { body(state) } else { state }`: the state carried through a condition.
fn cond(
    w: &mut W,
    c: &str,
    state: &[String],
    body: impl FnOnce(&mut W, &[String]) -> Vec<String>,
) -> Vec<String> {
    let types: Vec<&str> = state.iter().map(|_| "f32").collect();
    let t = w.if_begin(c, &types);
    let new = body(w, state);
    w.if_else(&t, &new);
    w.if_end(t, state)
}

/// Largest of 4, 2, 1 dividing `n` (more keeps too many loads in flight).
fn unroll(n: usize) -> usize {
    [4, 2, 1]
        .into_iter()
        .find(|&u| n.is_multiple_of(u))
        .unwrap_or(1)
}

/// One key tile `kt`: the state `[m; RQ], [l; RQ], [O; RQ·CV]` after it.
fn key_tile(w: &mut W, c: &Ctx, kt: &str, partial: Partial, st: &[String]) -> Vec<String> {
    let (rq, rk, cv, bk, dk, dv) = (c.rq, c.rk, c.cv, c.bk, c.dk, c.dv);
    let tid = w.thread_id("x");
    let k0 = w.mul_c(kt, bk);
    let zero_f = w.f32(0.0);
    // The previous tile's readers of Ks/Vs and Ps are done.
    w.barrier();
    // Stage K transposed: element e = (key e / Dk, d e % Dk), keys past Sk as 0.
    for p in 0..(bk * dk).div_ceil(BLOCK) {
        let e = w.add_c(&tid, p * BLOCK);
        let inside = w.lt_c(&e, bk * dk);
        let (km, kdt, nk) = c.kp.clone();
        let (ksm, kst) = c.ks.clone();
        let (k0, base, zero_f) = (k0.clone(), c.kv_base_k.clone(), zero_f.clone());
        let (sk, dk) = (c.sk, c.dk);
        let (j, d) = w.split_item(&tid, p, BLOCK, dk);
        w.if_(&inside, |w| {
            let gk = w.add(&k0, &j);
            let ok = w.lt_c(&gk, sk);
            let t = w.if_begin(&ok, &["f32"]);
            let at = w.mad_c(&d, &gk, dk);
            let at = w.add(&base, &at);
            let v = math::load(w, &km, kdt, nk, &at);
            w.if_else(&t, &[v]);
            let v = w.if_end(t, std::slice::from_ref(&zero_f)).remove(0);
            w.store(&v, &ksm, &kst, &[&d, &j]);
        });
    }
    w.barrier();
    // S = Q·Kᵀ for the thread's RQ × RK scores.
    let iters: Vec<(String, String)> = (0..rq * rk)
        .map(|_| (zero_f.clone(), "f32".to_string()))
        .collect();
    let u = unroll(dk);
    let (lb, ub, step) = (w.idx(0), w.idx(dk), w.idx(u));
    let rows: Vec<String> = (0..rq).map(|i| w.add_c(&c.ty, 16 * i)).collect();
    let cols: Vec<String> = (0..rk).map(|j| w.add_c(&c.tx, 16 * j)).collect();
    let (qsm, qst) = c.qs.clone();
    let (ksm, kst) = c.ks.clone();
    let s = w.for_((&lb, &ub, &step), &iters, |w, d0, acc| {
        let mut acc = acc.to_vec();
        for uu in 0..u {
            let d = w.add_c(d0, uu);
            let qv: Vec<String> = rows.iter().map(|r| w.load(&qsm, &qst, &[&d, r])).collect();
            let kv: Vec<String> = cols.iter().map(|k| w.load(&ksm, &kst, &[&d, k])).collect();
            for i in 0..rq {
                for j in 0..rk {
                    acc[i * rk + j] = math::fma(w, &qv[i], &kv[j], &acc[i * rk + j]);
                }
            }
        }
        acc
    });
    // Scores in base 2, modifiers first.
    let a = c.a;
    let modifiers = a.softcap.is_some() || c.bias.is_some();
    let mut t: Vec<String> = Vec::with_capacity(rq * rk);
    let gq: Vec<String> = rows.iter().map(|r| w.add(&c.q0, r)).collect();
    let gk: Vec<String> = cols.iter().map(|k| w.add(&k0, k)).collect();
    for i in 0..rq {
        for j in 0..rk {
            let x = &s[i * rk + j];
            let v = if modifiers {
                let sc = w.f32(a.scale as f32);
                let mut v = math::fmul(w, x, &sc);
                if let Some(cap) = a.softcap {
                    let inv = w.f32((1.0 / cap) as f32);
                    let y = math::fmul(w, &v, &inv);
                    let th = math::tanh(w, &y);
                    let capv = w.f32(cap as f32);
                    v = math::fmul(w, &th, &capv);
                }
                if let Some((bp, bdt, bsz)) = &c.bias {
                    let lq = w.idx(c.sq - 1);
                    let lk = w.idx(c.sk - 1);
                    let cq = w.min_ix(&gq[i], &lq);
                    let ck = w.min_ix(&gk[j], &lk);
                    let full = [c.b_sz, c.h, c.sq, c.sk];
                    let pos = Pos::at(&full, vec![c.b.clone(), c.hq.clone(), cq, ck]);
                    let at = pos.broadcast(w, bsz).lin(w);
                    let n: usize = bsz.iter().product();
                    let bv = math::load(w, bp, *bdt, n, &at);
                    v = math::fadd(w, &v, &bv);
                }
                let l2 = w.f32(LOG2E as f32);
                math::fmul(w, &v, &l2)
            } else {
                let sc = w.f32((a.scale * LOG2E) as f32);
                math::fmul(w, x, &sc)
            };
            t.push(v);
        }
    }
    // Excluded keys to -inf, where the tile can have any.
    let apply = |w: &mut W, t: &[String]| -> Vec<String> {
        let ninf = w.f32(f32::NEG_INFINITY);
        let mut out = Vec::with_capacity(t.len());
        for i in 0..rq {
            for j in 0..rk {
                let mut ok = w.lt_c(&gk[j], c.sk);
                if let Some((sp, s)) = &c.seg {
                    let last = w.idx(s - 1);
                    let ck = w.min_ix(&gk[j], &last);
                    let at = w.mad_c(&ck, &c.b, *s);
                    let ks = w.load(sp, &math::memref(DType::I64, c.b_sz * s), &[&at]);
                    let same = w.let_(format_args!("arith.cmpi eq, {ks}, {} : i64", c.qseg[i]));
                    ok = w.and(&ok, &same);
                }
                if let Some(m) = &a.mask {
                    let coords = [
                        w.index_cast(&c.b, "index", "i64"),
                        w.index_cast(&c.hq, "index", "i64"),
                        w.index_cast(&gq[i], "index", "i64"),
                        w.index_cast(&gk[j], "index", "i64"),
                    ];
                    let holds = super::mask::holds(w, m, &coords, c.dims);
                    ok = w.and(&ok, &holds);
                }
                out.push(math::fselect(w, &ok, &t[i * rk + j], &ninf));
            }
        }
        out
    };
    let t = match partial {
        Partial::Static(false) => t,
        Partial::Static(true) => apply(w, &t),
        Partial::Dynamic(p) => {
            let types: Vec<&str> = t.iter().map(|_| "f32").collect();
            let tok = w.if_begin(&p, &types);
            let masked = apply(w, &t);
            w.if_else(&tok, &masked);
            w.if_end(tok, &t)
        }
    };
    // Online softmax per row.
    let ninf = w.f32(f32::NEG_INFINITY);
    let (psm, pst) = c.ps.clone();
    let mut m_new_all = Vec::with_capacity(rq);
    let mut l_new_all = Vec::with_capacity(rq);
    let mut alphas = Vec::with_capacity(rq);
    for i in 0..rq {
        let mut mx = t[i * rk].clone();
        for j in 1..rk {
            mx = math::fmax(w, &mx, &t[i * rk + j]);
        }
        for off in [8, 4, 2, 1] {
            let o = w.shuffle_xor(&mx, off, "f32");
            mx = math::fmax(w, &mx, &o);
        }
        let m_old = &st[i];
        let m_new = math::fmax(w, m_old, &mx);
        let none = math::fcmp(w, "oeq", &m_new, &ninf);
        let m_use = math::fselect(w, &none, &zero_f, &m_new);
        let mut sum = zero_f.clone();
        for j in 0..rk {
            let d = math::fsub(w, &t[i * rk + j], &m_use);
            let p = math::exp2(w, &d);
            w.store(&p, &psm, &pst, &[&rows[i], &cols[j]]);
            sum = math::fadd(w, &sum, &p);
        }
        for off in [8, 4, 2, 1] {
            let o = w.shuffle_xor(&sum, off, "f32");
            sum = math::fadd(w, &sum, &o);
        }
        let da = math::fsub(w, m_old, &m_use);
        let alpha = math::exp2(w, &da);
        let l_new = math::fma(w, &st[rq + i], &alpha, &sum);
        m_new_all.push(m_new);
        l_new_all.push(l_new);
        alphas.push(alpha);
    }
    // Everyone is done with Ks (and has written Ps): stage V over it.
    w.barrier();
    for p in 0..(bk * dv).div_ceil(BLOCK) {
        let e = w.add_c(&tid, p * BLOCK);
        let inside = w.lt_c(&e, bk * dv);
        let (vm, vdt, nv) = c.vp.clone();
        let (vsm, vst) = c.vs.clone();
        let (k0, base, zero_f) = (k0.clone(), c.kv_base_v.clone(), zero_f.clone());
        let sk = c.sk;
        let (j, col) = w.split_item(&tid, p, BLOCK, dv);
        w.if_(&inside, |w| {
            let gk = w.add(&k0, &j);
            let ok = w.lt_c(&gk, sk);
            let t = w.if_begin(&ok, &["f32"]);
            let at = w.mad_c(&col, &gk, dv);
            let at = w.add(&base, &at);
            let v = math::load(w, &vm, vdt, nv, &at);
            w.if_else(&t, &[v]);
            let v = w.if_end(t, std::slice::from_ref(&zero_f)).remove(0);
            w.store(&v, &vsm, &vst, &[&j, &col]);
        });
    }
    w.barrier();
    // O = α·O + P·V.
    let mut iters: Vec<(String, String)> = Vec::with_capacity(rq * cv);
    for i in 0..rq {
        for cc in 0..cv {
            let o = math::fmul(w, &st[2 * rq + i * cv + cc], &alphas[i]);
            iters.push((o, "f32".into()));
        }
    }
    let vcols: Vec<String> = (0..cv)
        .map(|cc| {
            let col = w.add_c(&c.tx, 16 * cc);
            let last = w.idx(dv - 1);
            w.min_ix(&col, &last)
        })
        .collect();
    let u = unroll(bk);
    let (lb, ub, step) = (w.idx(0), w.idx(bk), w.idx(u));
    let (vsm, vst) = c.vs.clone();
    let o = w.for_((&lb, &ub, &step), &iters, |w, j0, acc| {
        let mut acc = acc.to_vec();
        for uu in 0..u {
            let j = w.add_c(j0, uu);
            let pv: Vec<String> = rows.iter().map(|r| w.load(&psm, &pst, &[r, &j])).collect();
            let vv: Vec<String> = vcols.iter().map(|k| w.load(&vsm, &vst, &[&j, k])).collect();
            for i in 0..rq {
                for cc in 0..cv {
                    acc[i * cv + cc] = math::fma(w, &pv[i], &vv[cc], &acc[i * cv + cc]);
                }
            }
        }
        acc
    });
    let mut out = m_new_all;
    out.extend(l_new_all);
    out.extend(o);
    out
}
