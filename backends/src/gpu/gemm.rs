//! Matrix multiplication: a shared-memory tiled SIMT GEMM in f32 (half-precision
//! operands are widened as they are staged), correct for any `M, N, K` through
//! bounds checks.
//!
//! A block of 256 threads (16 × 16, `tx = tid % 16`, `ty = tid / 16`) computes a
//! `BM × BN` tile of C (128 × 128, or 64 × 64 when a side is at most 64). Per
//! `BK = 32` step of K it stages `A[m0.., k0..]` transposed into `As[BK][BM + 1]`
//! (threads read consecutive k — coalesced — and the `+ 1` pad puts the 32 k of one
//! row in 32 different banks) and `B[k0.., n0..]` into `Bs[BK][BN]`, then every
//! thread accumulates its `TM × TN` register tile (`TM = BM/16`, `TN = BN/16`) of
//! rows `ty + 16·i` and columns `tx + 16·j` with FMAs: per k, `TM` broadcast loads of
//! `As` and `TN` conflict-free loads of `Bs`. Out-of-range elements of A and B are
//! staged as 0 (their addresses clamped into range, then the value selected), and
//! only in-range elements of C are stored.
//!
//! The core ([`tiled`]) takes its operands as closures, so the same code serves the
//! plain batched matmul (batch dims broadcast, one grid column per batch × column
//! tile) and the grouped expert GEMMs of `moe_dispatch` (rows gathered through a
//! token list, two weight matrices sharing one A tile, a fused epilogue).

use super::code::W;
use super::ew::{Pos, BLOCK};
use super::math;
use super::module::{Args, KernelCode};
use attnc_ir::DType;

pub(crate) const BK: usize = 32;

/// k steps per iteration of the inner loop.
const UNROLL: usize = 4;

/// A tile shape.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tile {
    pub bm: usize,
    pub bn: usize,
}

impl Tile {
    /// 128 × 128, or 64 × 64 for a matrix with a side of at most 64.
    pub fn for_shape(m: usize, n: usize) -> Tile {
        if m <= 64 || n <= 64 {
            Tile { bm: 64, bn: 64 }
        } else {
            Tile { bm: 128, bn: 128 }
        }
    }

    pub fn tm(&self) -> usize {
        self.bm / 16
    }

    pub fn tn(&self) -> usize {
        self.bn / 16
    }

    /// Shared memory for `nb` B matrices.
    pub fn shared_bytes(&self, nb: usize) -> usize {
        4 * BK * (self.bm + 1) + nb * 4 * BK * self.bn
    }
}

/// Reads an element of an operand (f32) at in-range `(row, col)` indices.
pub(crate) type Read<'a> = &'a dyn Fn(&mut W, &str, &str) -> String;

/// The accumulators of one block's tile: `acc[b][i·TN + j]` for B matrix `b`, row
/// `ty + 16·i`, column `tx + 16·j` of the tile at `(m0, n0)`. Rows at or past
/// `m_bound` (an index value) and columns past `n`, keys past `k` read as 0.
#[allow(clippy::too_many_arguments)]
pub(crate) fn tiled(
    w: &mut W,
    t: Tile,
    (m0, n0): (&str, &str),
    m_bound: &str,
    n: usize,
    k: usize,
    a: Read,
    bs: &[Read],
) -> Vec<Vec<String>> {
    let (tm, tn) = (t.tm(), t.tn());
    let tid = w.thread_id("x");
    let tx = w.rem_c(&tid, 16);
    let ty = w.div_c(&tid, 16);
    let (as_, as_t) = w.shared(0, &format!("{BK}x{}xf32", t.bm + 1));
    let b_smem: Vec<(String, String)> = (0..bs.len())
        .map(|b| {
            w.shared(
                4 * BK * (t.bm + 1) + b * 4 * BK * t.bn,
                &format!("{BK}x{}xf32", t.bn),
            )
        })
        .collect();
    let zero_f = w.f32(0.0);
    let iters: Vec<(String, String)> = (0..bs.len() * tm * tn)
        .map(|_| (zero_f.clone(), "f32".to_string()))
        .collect();
    let (lb, ub, one) = (w.idx(0), w.idx(k.div_ceil(BK)), w.idx(1));
    let out = w.for_((&lb, &ub, &one), &iters, |w, kt, acc| {
        let k0 = w.mul_c(kt, BK);
        // Stage A transposed: element e = tid + 256·p is (row e / BK, k e % BK).
        for p in 0..t.bm * BK / BLOCK {
            let (r, c) = w.split_item(&tid, p, BLOCK, BK);
            let gm = w.add(m0, &r);
            let gk = w.add(&k0, &c);
            let ok_m = w.cmp_ix("ult", &gm, m_bound);
            let ok_k = w.lt_c(&gk, k);
            let ok = w.and(&ok_m, &ok_k);
            let t = w.if_begin(&ok, &["f32"]);
            let v = a(w, &gm, &gk);
            w.if_else(&t, &[v]);
            let v = w.if_end(t, std::slice::from_ref(&zero_f)).remove(0);
            w.store(&v, &as_, &as_t, &[&c, &r]);
        }
        // Stage each B: element e is (k e / BN, column e % BN).
        for (b, read) in bs.iter().enumerate() {
            let (sm, st) = &b_smem[b];
            for p in 0..BK * t.bn / BLOCK {
                let (r, c) = w.split_item(&tid, p, BLOCK, t.bn);
                let gk = w.add(&k0, &r);
                let gn = w.add(n0, &c);
                let ok_k = w.lt_c(&gk, k);
                let ok_n = w.lt_c(&gn, n);
                let ok = w.and(&ok_k, &ok_n);
                let t = w.if_begin(&ok, &["f32"]);
                let v = read(w, &gk, &gn);
                w.if_else(&t, &[v]);
                let v = w.if_end(t, std::slice::from_ref(&zero_f)).remove(0);
                w.store(&v, sm, st, &[&r, &c]);
            }
        }
        w.barrier();
        // The k steps of the tile, `UNROLL` at a time.
        let (lb, ub, st) = (w.idx(0), w.idx(BK), w.idx(UNROLL));
        let carried: Vec<(String, String)> =
            acc.iter().map(|a| (a.clone(), "f32".to_string())).collect();
        let acc = w.for_((&lb, &ub, &st), &carried, |w, k0, acc| {
            let mut acc: Vec<String> = acc.to_vec();
            for u in 0..UNROLL {
                let kv = w.add_c(k0, u);
                let av: Vec<String> = (0..tm)
                    .map(|i| {
                        let row = w.add_c(&ty, 16 * i);
                        w.load(&as_, &as_t, &[&kv, &row])
                    })
                    .collect();
                for (b, (sm, st)) in b_smem.iter().enumerate() {
                    let bv: Vec<String> = (0..tn)
                        .map(|j| {
                            let col = w.add_c(&tx, 16 * j);
                            w.load(sm, st, &[&kv, &col])
                        })
                        .collect();
                    for (i, a) in av.iter().enumerate() {
                        for (j, bj) in bv.iter().enumerate() {
                            let slot = (b * tm + i) * tn + j;
                            acc[slot] = math::fma(w, a, bj, &acc[slot]);
                        }
                    }
                }
            }
            acc
        });
        // Everyone is done with the tiles before they are staged again.
        w.barrier();
        acc
    });
    (0..bs.len())
        .map(|b| out[b * tm * tn..(b + 1) * tm * tn].to_vec())
        .collect()
}

/// `(row, column)` in the tile of accumulator `(i, j)`.
pub(crate) fn tile_position(w: &mut W, i: usize, j: usize) -> (String, String) {
    let tid = w.thread_id("x");
    let tx = w.rem_c(&tid, 16);
    let ty = w.div_c(&tid, 16);
    (w.add_c(&ty, 16 * i), w.add_c(&tx, 16 * j))
}

/// Operand and result shapes of one matmul.
pub(crate) struct MatMul {
    pub a: (usize, DType, Vec<usize>),
    pub b: (usize, DType, Vec<usize>),
    pub out: (usize, DType, Vec<usize>),
}

/// A batched float matmul `[.., m, k] × [.., k, n]` (batch dims broadcast).
pub(crate) fn matmul(mm: &MatMul) -> Result<(KernelCode, [u32; 3]), String> {
    let (asz, bsz, csz) = (&mm.a.2, &mm.b.2, &mm.out.2);
    let r = csz.len();
    let (m, n) = (csz[r - 2], csz[r - 1]);
    let k = asz[asz.len() - 1];
    let batch_dims = &csz[..r - 2];
    let batch: usize = batch_dims.iter().product();
    let t = Tile::for_shape(m, n);
    let (nbm, nbn) = (m.div_ceil(t.bm), n.div_ceil(t.bn));
    if nbm > 65535 {
        return Err(format!(
            "{m} rows are more than the GPU kernel's grid holds ({} row tiles of {})",
            nbm, t.bm
        ));
    }
    let grid_x = nbn * batch;
    if grid_x > i32::MAX as usize || m == 0 || n == 0 {
        return Err(format!(
            "a {m}x{n} result over {batch} batches is out of the grid's range"
        ));
    }
    let mut args = Args::default();
    let (na, nb, nc) = (
        asz.iter().product::<usize>(),
        bsz.iter().product::<usize>(),
        csz.iter().product::<usize>(),
    );
    let ap = args.get(mm.a.0, mm.a.1, na);
    let bp = args.get(mm.b.0, mm.b.1, nb);
    let cp = args.output(mm.out.0, mm.out.1, nc);
    let mut w = W::new();
    let bx = w.block_id("x");
    let by = w.block_id("y");
    let z = w.div_c(&bx, nbn);
    let tn_idx = w.rem_c(&bx, nbn);
    // The matrices of A and B this batch index reads (batch dims broadcast).
    let zpos = Pos::linear(batch_dims, z.clone());
    let a_mat = zpos.broadcast(&mut w, &asz[..asz.len() - 2]).lin(&mut w);
    let b_mat = zpos.broadcast(&mut w, &bsz[..bsz.len() - 2]).lin(&mut w);
    let a_base = w.mul_c(&a_mat, m * k);
    let b_base = w.mul_c(&b_mat, k * n);
    let c_base = w.mul_c(&z, m * n);
    let m0 = w.mul_c(&by, t.bm);
    let n0 = w.mul_c(&tn_idx, t.bn);
    let (adt, bdt) = (mm.a.1, mm.b.1);
    let read_a = |w: &mut W, row: &str, col: &str| {
        let o = w.mad_c(col, row, k);
        let o = w.add(&a_base, &o);
        math::load(w, &ap, adt, na, &o)
    };
    let read_b = |w: &mut W, row: &str, col: &str| {
        let o = w.mad_c(col, row, n);
        let o = w.add(&b_base, &o);
        math::load(w, &bp, bdt, nb, &o)
    };
    let mb = w.idx(m);
    let acc = tiled(&mut w, t, (&m0, &n0), &mb, n, k, &read_a, &[&read_b]);
    for i in 0..t.tm() {
        for j in 0..t.tn() {
            let (lr, lc) = tile_position(&mut w, i, j);
            let row = w.add(&m0, &lr);
            let col = w.add(&n0, &lc);
            let ok_r = w.lt_c(&row, m);
            let ok_c = w.lt_c(&col, n);
            let ok = w.and(&ok_r, &ok_c);
            let v = acc[0][i * t.tn() + j].clone();
            let (cp, odt) = (cp.clone(), mm.out.1);
            w.if_(&ok, |w| {
                let o = w.mad_c(&col, &row, n);
                let o = w.add(&c_base, &o);
                math::store(w, &v, &cp, odt, nc, &o);
            });
        }
    }
    Ok((
        KernelCode {
            op: "matmul".into(),
            args,
            block: [BLOCK as u32, 1, 1],
            shared_bytes: t.shared_bytes(1) as u32,
            body: w.finish(),
        },
        [grid_x as u32, nbm as u32, 1],
    ))
}

/// An integer matmul: one thread per result, summing in order (wrapping).
pub(crate) fn matmul_int(mm: &MatMul) -> (KernelCode, [u32; 3]) {
    let (asz, bsz, csz) = (&mm.a.2, &mm.b.2, &mm.out.2);
    let r = csz.len();
    let (m, n) = (csz[r - 2], csz[r - 1]);
    let k = asz[asz.len() - 1];
    let batch_dims = csz[..r - 2].to_vec();
    let dt = mm.out.1;
    let ct = math::compute(dt);
    let mut args = Args::default();
    let (na, nb, nc) = (
        asz.iter().product::<usize>(),
        bsz.iter().product::<usize>(),
        csz.iter().product::<usize>(),
    );
    let ap = args.get(mm.a.0, dt, na);
    let bp = args.get(mm.b.0, dt, nb);
    let cp = args.output(mm.out.0, dt, nc);
    let mut w = W::new();
    w.grid_stride(nc, BLOCK, |w, o| {
        let col = w.rem_c(o, n);
        let rest = w.div_c(o, n);
        let row = w.rem_c(&rest, m);
        let z = w.div_c(&rest, m);
        let zpos = Pos::linear(&batch_dims, z);
        let a_mat = zpos.broadcast(w, &asz[..asz.len() - 2]).lin(w);
        let b_mat = zpos.broadcast(w, &bsz[..bsz.len() - 2]).lin(w);
        let a_row = w.mul_c(&a_mat, m * k);
        let a_row = w.mad_c(&a_row, &row, k);
        let b_col = w.mul_c(&b_mat, k * n);
        let b_col = w.add(&b_col, &col);
        let zero = w.constant(0, ct);
        let (lb, ub, one) = (w.idx(0), w.idx(k), w.idx(1));
        let s = w.for_((&lb, &ub, &one), &[(zero, ct.to_string())], |w, p, acc| {
            let ao = w.add(&a_row, p);
            let bo = w.mad_c(&b_col, p, n);
            let x = math::load(w, &ap, dt, na, &ao);
            let y = math::load(w, &bp, dt, nb, &bo);
            let xy = w.let_(format_args!("arith.muli {x}, {y} : {ct}"));
            vec![w.let_(format_args!("arith.addi {}, {xy} : {ct}", acc[0]))]
        });
        math::store(w, &s[0], &cp, dt, nc, o);
    });
    (
        KernelCode {
            op: "matmul".into(),
            args,
            block: [BLOCK as u32, 1, 1],
            shared_bytes: 0,
            body: w.finish(),
        },
        super::ew::launch_grid(nc),
    )
}
