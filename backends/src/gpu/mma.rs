//! A tensor-core GEMM for f16 / bf16 operands (f32 accumulation): `mma.sync
//! m16n8k16` through `nvvm.mma.sync`, behind [`super::GpuOptions::tensor_cores`].
//! **It has not run on a GPU yet**: it follows the PTX ISA's fragment layouts — the
//! same ones MLIR's NVGPU lowering uses (`getLaneIdAndValueIdToOperandCoord`) — and
//! the CPU emulator (`emulate.rs`) runs it with those layouts against the
//! interpreter, but a misreading shared by both would only show on hardware. The
//! SIMT GEMM stays the default until it has.
//!
//! A block of 256 threads (8 warps, 2 × 4) computes a 128 × 128 tile of C; warp `(wm,
//! wn)` owns rows `64·wm ..+64` and columns `32·wn ..+32`: 4 × 4 `m16n8` tiles, 64
//! f32 accumulators per thread. Per `BK = 32` step of K the block stages
//! `As[128][40]` (A's rows, in their own dtype, k contiguous) and `Bs[128][40]` (B
//! transposed: `Bs[n][k]`), out-of-range elements as 0; the row pitch of 40 halves
//! (20 words) puts the 8 rows × 4 words a fragment load touches in 32 different
//! banks. Fragments are read as 32-bit words (two consecutive k, the lower k in the
//! low half), with `g = lane / 4`, `t = lane % 4`:
//! - A (16 × 16, row): `a0 = A[g][2t..]`, `a1 = A[g+8][2t..]`, `a2 = A[g][2t+8..]`,
//!   `a3 = A[g+8][2t+8..]`;
//! - B (16 × 8, col): `b0 = B[2t..][g]`, `b1 = B[2t+8..][g]`;
//! - C / D (16 × 8): `c0, c1 = C[g][2t], C[g][2t+1]`, `c2, c3` the same in row `g+8`.

use super::code::W;
use super::ew::{Pos, BLOCK};
use super::gemm::MatMul;
use super::math;
use super::module::{Args, KernelCode};
use attnc_ir::DType;

const BM: usize = 128;
const BN: usize = 128;
const BK: usize = 32;
/// Row pitch of the staged tiles, in halves (BK + 8).
const PITCH: usize = BK + 8;

/// Whether the tensor-core kernel applies: both operands f16 or both bf16.
pub(crate) fn applies(mm: &MatMul) -> bool {
    mm.a.1 == mm.b.1 && matches!(mm.a.1, DType::F16 | DType::BF16)
}

pub(crate) fn matmul(mm: &MatMul) -> Result<(KernelCode, [u32; 3]), String> {
    let (asz, bsz, csz) = (&mm.a.2, &mm.b.2, &mm.out.2);
    let r = csz.len();
    let (m, n) = (csz[r - 2], csz[r - 1]);
    let k = asz[asz.len() - 1];
    let batch_dims = &csz[..r - 2];
    let batch: usize = batch_dims.iter().product();
    let (nbm, nbn) = (m.div_ceil(BM), n.div_ceil(BN));
    if nbm > 65535 || nbn * batch > i32::MAX as usize || m == 0 || n == 0 || k == 0 {
        return Err(format!(
            "a {m}x{n}x{k} matmul over {batch} batches is out of the grid's range"
        ));
    }
    let dt = mm.a.1;
    let st = math::storage(dt);
    let mut args = Args::default();
    let count = |s: &[usize]| s.iter().product::<usize>();
    let (na, nb, nc) = (count(asz), count(bsz), count(csz));
    let ap = args.get(mm.a.0, dt, na);
    let bp = args.get(mm.b.0, dt, nb);
    let cp = args.output(mm.out.0, mm.out.1, nc);
    let (at, bt) = (math::memref(dt, na), math::memref(dt, nb));
    let mut w = W::new();
    let tid = w.thread_id("x");
    let bx = w.block_id("x");
    let by = w.block_id("y");
    let z = w.div_c(&bx, nbn);
    let tn_idx = w.rem_c(&bx, nbn);
    let zpos = Pos::linear(batch_dims, z.clone());
    let a_mat = zpos.broadcast(&mut w, &asz[..asz.len() - 2]).lin(&mut w);
    let b_mat = zpos.broadcast(&mut w, &bsz[..bsz.len() - 2]).lin(&mut w);
    let a_base = w.mul_c(&a_mat, m * k);
    let b_base = w.mul_c(&b_mat, k * n);
    let c_base = w.mul_c(&z, m * n);
    let m0 = w.mul_c(&by, BM);
    let n0 = w.mul_c(&tn_idx, BN);
    let tile_bytes = 2 * BM * PITCH;
    let (as_, as_t) = w.shared(0, &format!("{BM}x{PITCH}x{st}"));
    let (as32, as32_t) = w.shared(0, &format!("{BM}x{}xi32", PITCH / 2));
    let (bs, bs_t) = w.shared(tile_bytes, &format!("{BN}x{PITCH}x{st}"));
    let (bs32, bs32_t) = w.shared(tile_bytes, &format!("{BN}x{}xi32", PITCH / 2));
    let warp = w.div_c(&tid, 32);
    let lane = w.rem_c(&tid, 32);
    let g = w.div_c(&lane, 4);
    let t = w.rem_c(&lane, 4);
    let wm = w.div_c(&warp, 4);
    let wn = w.rem_c(&warp, 4);
    let zero_h = w.constant("0x0000", st);
    let zero_f = w.f32(0.0);
    let acc0: Vec<(String, String)> = (0..64).map(|_| (zero_f.clone(), "f32".into())).collect();
    let (lb, ub, one) = (w.idx(0), w.idx(k.div_ceil(BK)), w.idx(1));
    let acc = w.for_((&lb, &ub, &one), &acc0, |w, kt, acc| {
        let k0 = w.mul_c(kt, BK);
        // Stage A: item (row tid/32 + 8p, k tid%32), coalesced along k.
        for p in 0..BM * BK / BLOCK {
            let (r, c) = w.split_item(&tid, p, BLOCK, BK);
            let gm = w.add(&m0, &r);
            let gk = w.add(&k0, &c);
            let ok_m = w.lt_c(&gm, m);
            let ok_k = w.lt_c(&gk, k);
            let ok = w.and(&ok_m, &ok_k);
            let tok = w.if_begin(&ok, &[st]);
            let o = w.mad_c(&gk, &gm, k);
            let o = w.add(&a_base, &o);
            let v = w.load(&ap, &at, &[&o]);
            w.if_else(&tok, &[v]);
            let v = w.if_end(tok, std::slice::from_ref(&zero_h)).remove(0);
            w.store(&v, &as_, &as_t, &[&r, &c]);
        }
        // Stage B transposed: item (k tid/128 + 2p, column tid%128), coalesced along n.
        for p in 0..BK * BN / BLOCK {
            let (r, c) = w.split_item(&tid, p, BLOCK, BN);
            let gk = w.add(&k0, &r);
            let gn = w.add(&n0, &c);
            let ok_k = w.lt_c(&gk, k);
            let ok_n = w.lt_c(&gn, n);
            let ok = w.and(&ok_k, &ok_n);
            let tok = w.if_begin(&ok, &[st]);
            let o = w.mad_c(&gn, &gk, n);
            let o = w.add(&b_base, &o);
            let v = w.load(&bp, &bt, &[&o]);
            w.if_else(&tok, &[v]);
            let v = w.if_end(tok, std::slice::from_ref(&zero_h)).remove(0);
            w.store(&v, &bs, &bs_t, &[&c, &r]);
        }
        w.barrier();
        let mut acc = acc.to_vec();
        for ks in 0..BK / 16 {
            let kw = ks * 8;
            let c_lo = w.add_c(&t, kw);
            let c_hi = w.add_c(&t, kw + 4);
            let frag = |w: &mut W, x: String| -> String {
                if dt == DType::F16 {
                    w.let_(format_args!("llvm.bitcast {x} : i32 to vector<2xf16>"))
                } else {
                    x
                }
            };
            let a_frags: Vec<Vec<String>> = (0..4)
                .map(|mt| {
                    let r0 = w.mad_c(&g, &wm, 64);
                    let r0 = w.add_c(&r0, 16 * mt);
                    let r8 = w.add_c(&r0, 8);
                    [(&r0, &c_lo), (&r8, &c_lo), (&r0, &c_hi), (&r8, &c_hi)]
                        .into_iter()
                        .map(|(r, c)| {
                            let x = w.load(&as32, &as32_t, &[r, c]);
                            frag(w, x)
                        })
                        .collect()
                })
                .collect();
            let b_frags: Vec<Vec<String>> = (0..4)
                .map(|nt| {
                    let n_ = w.mad_c(&g, &wn, 32);
                    let n_ = w.add_c(&n_, 8 * nt);
                    [&c_lo, &c_hi]
                        .into_iter()
                        .map(|c| {
                            let x = w.load(&bs32, &bs32_t, &[&n_, c]);
                            frag(w, x)
                        })
                        .collect()
                })
                .collect();
            for (mt, a) in a_frags.iter().enumerate() {
                for (nt, b) in b_frags.iter().enumerate() {
                    let base = (mt * 4 + nt) * 4;
                    let d = mma(w, dt, a, b, &acc[base..base + 4]);
                    acc[base..base + 4].clone_from_slice(&d);
                }
            }
        }
        // Everyone is done with the tiles before they are staged again.
        w.barrier();
        acc
    });
    for mt in 0..4 {
        for nt in 0..4 {
            for i in 0..4 {
                let row = w.mad_c(&g, &wm, 64);
                let row = w.add_c(&row, 16 * mt + 8 * (i / 2));
                let row = w.add(&m0, &row);
                let two_t = w.mul_c(&t, 2);
                let col = w.mad_c(&two_t, &wn, 32);
                let col = w.add_c(&col, 8 * nt + i % 2);
                let col = w.add(&n0, &col);
                let ok_r = w.lt_c(&row, m);
                let ok_c = w.lt_c(&col, n);
                let ok = w.and(&ok_r, &ok_c);
                let v = acc[(mt * 4 + nt) * 4 + i].clone();
                let (cp, c_base, odt) = (cp.clone(), c_base.clone(), mm.out.1);
                w.if_(&ok, |w| {
                    let o = w.mad_c(&col, &row, n);
                    let o = w.add(&c_base, &o);
                    math::store(w, &v, &cp, odt, nc, &o);
                });
            }
        }
    }
    Ok((
        KernelCode {
            op: "matmul_mma".into(),
            args,
            block: [BLOCK as u32, 1, 1],
            shared_bytes: (2 * tile_bytes) as u32,
            body: w.finish(),
        },
        [(nbn * batch) as u32, nbm as u32, 1],
    ))
}

/// `D = A·B + C` on one m16n8k16 tile: four f32 results.
fn mma(w: &mut W, dt: DType, a: &[String], b: &[String], c: &[String]) -> Vec<String> {
    let (types, operand) = match dt {
        DType::F16 => ("", "vector<2xf16>"),
        _ => (
            ", multiplicandAPtxType = #nvvm.mma_type<bf16>, multiplicandBPtxType = #nvvm.mma_type<bf16>",
            "i32",
        ),
    };
    let st = "!llvm.struct<(f32, f32, f32, f32)>";
    let d = w.let_(format_args!(
        "nvvm.mma.sync A[{}] B[{}] C[{}] {{layoutA = #nvvm.mma_layout<row>, layoutB = #nvvm.mma_layout<col>{types}, shape = #nvvm.shape<m = 16, n = 8, k = 16>}} : ({operand}, {operand}, f32) -> {st}",
        a.join(", "),
        b.join(", "),
        c.join(", ")
    ));
    (0..4)
        .map(|i| w.let_(format_args!("llvm.extractvalue {d}[{i}] : {st}")))
        .collect()
}
