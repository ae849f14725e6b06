//! f32 GEMM `C = A·B` in the BLIS/GotoBLAS structure, specialized to its shapes.
//!
//! Loops, outermost first (the cache each level targets in brackets):
//! - `jc` over N by [`NC`] columns and `pc` over K by [`KC`] (B's packed panel: L3);
//! - pack `B[pc.., jc..]` into `NR`-wide column panels, `Bp[jp][k][0..NR]`
//!   (zero-padded past N), in parallel over the panels;
//! - `ic` over M by [`MC`] rows: pack `A[ic.., pc..]` into `MR`-tall row panels,
//!   `Ap[ip][k][0..MR]` (zero-padded past M), in parallel (the block: L2);
//! - in parallel over (`jp`, `ip`), `ip` inner so a thread keeps one B panel in L1
//!   against the A panels of the block: the micro-kernel, an `MR×NR` register tile
//!   (`MR·NR/16` accumulators, each an AVX-512 vector), one broadcast of A and
//!   `NR/16` loads of B per FMA row, then `C += tile`, masked at the edges of C. A
//!   last panel of at most 16 columns (N = 65: the column of ones of a normalizer)
//!   runs an `MR×16` tile, half the work of a full one.
//!
//! Packing makes the micro-kernel's loads unit-stride and conflict-free whatever the
//! leading dimensions (a power-of-two stride otherwise maps every row of a panel to
//! one L1 set), and its zero padding is what handles sizes that are not multiples of
//! the tile: the micro-kernel always runs full tiles; only the update of C is masked.
//!
//! Packing A reads `LANES` columns of each of the `MR` rows as one vector and
//! transposes them in registers ([`transpose_rows`]); the pieces — [`pack_a_rows`]
//! (any rows: consecutive, or gathered through an index list), [`pack_b_rows`],
//! [`micro_kernel`] over any two packed panels ([`Packed`]) — are shared with the
//! grouped GEMMs of the mixture-of-experts kernel (`super::moe`).
//!
//! Operands may carry batch dimensions (`[.., M, K] × [.., K, N]`, broadcast as
//! numpy does): one GEMM per batch index, over 2-D views of the operands. Either
//! operand may come transposed (see [`Gemm`]): packing reads `Aᵀ` by contiguous
//! `MR`-wide rows and gathers `Bᵀ`'s columns, the micro-kernel is the same.

use super::{function, strided_type, Code, KernelSet, LANES};

/// Register tile: rows of A broadcast per k.
pub(crate) const MR: usize = 8;
/// Register tile: columns of B, `NR / LANES` vectors.
pub(crate) const NR: usize = 32;
/// Depth of one packed panel.
pub(crate) const KC: usize = 256;
/// Rows of A packed at once.
pub(crate) const MC: usize = 256;
/// Columns of B packed at once.
pub(crate) const NC: usize = 4096;

// Blocks are whole register tiles.
const _: () = assert!(MC.is_multiple_of(MR) && NC.is_multiple_of(NR) && NR.is_multiple_of(LANES));

/// The shapes of one GEMM: `a` is `[.., M, K]`, `b` is `[.., K, N]`, `c` the
/// broadcast result `[.., M, N]`. An operand marked transposed is passed as the
/// tensor it transposes (`a` as `[.., K, M]`, `b` as `[.., N, K]`): packing reads
/// it in its own layout, so `A·Bᵀ` and `Aᵀ·B` never materialize the transpose.
#[derive(Clone, Debug)]
pub(crate) struct Gemm {
    pub a: Vec<usize>,
    pub b: Vec<usize>,
    pub c: Vec<usize>,
    pub a_transposed: bool,
    pub b_transposed: bool,
}

impl Gemm {
    fn key(&self) -> String {
        let dims = |s: &[usize]| {
            s.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join("x")
        };
        let t = |transposed: bool| if transposed { "t" } else { "" };
        format!(
            "gemm.{}{}.{}{}",
            dims(&self.a),
            t(self.a_transposed),
            dims(&self.b),
            t(self.b_transposed)
        )
    }

    /// `K`: the contracted size.
    fn depth(&self) -> usize {
        let r = self.a.len();
        if self.a_transposed {
            self.a[r - 2]
        } else {
            self.a[r - 1]
        }
    }

    pub fn operand_types(&self) -> [String; 3] {
        [
            strided_type(&self.a, "f32"),
            strided_type(&self.b, "f32"),
            strided_type(&self.c, "f32"),
        ]
    }
}

/// The kernel for `g` (written once per shape); returns its symbol.
pub(crate) fn gemm(set: &mut KernelSet, g: &Gemm) -> String {
    set.declare(OMP_DECLARATIONS);
    set.get(g.key(), |name| write_gemm(name, g))
}

/// The OpenMP runtime calls the kernel makes (libomp defines them).
pub(crate) const OMP_DECLARATIONS: &str = "func.func private @omp_get_max_threads() -> i32\nfunc.func private @omp_get_thread_num() -> i32\n";

/// One parallel loop over (batch index, column slab) tasks — `S = ceil(T / batch)`
/// slabs of whole `NR` panels per GEMM for `T` threads, so every thread has work and
/// the only barrier is the loop's end — each task running the blocked loops of
/// [`gemm_2d`] on its slab with its thread's packing buffers.
fn write_gemm(name: &str, g: &Gemm) -> String {
    let [ta, tb, tc] = g.operand_types();
    let nb = g.c.len() - 2;
    let (m, n) = (g.c[nb], g.c[nb + 1]);
    let k = g.depth();
    let mut c = Code::new();
    if k == 0 {
        // No K panel writes C: it is all zeros.
        let zero = c.f32(0.0);
        c.line(format_args!(
            "linalg.fill ins({zero} : f32) outs(%c : {tc})"
        ));
    }
    let kc = KC.min(k);
    let nc = NC.min(n).div_ceil(NR) * NR;
    let mp = MC.min(m.div_ceil(MR) * MR) / MR;
    let t32 = c.let_("func.call @omp_get_max_threads() : () -> i32");
    let t = c.let_(format_args!("arith.index_cast {t32} : i32 to index"));
    let one = c.idx(1);
    let threads = c.ix("maxsi", &t, &one);
    let tap = format!("memref<?x{mp}x{kc}x{MR}xf32>");
    let tbp = format!("memref<?x{}x{kc}x{NR}xf32>", nc / NR);
    let ap = c.let_(format_args!(
        "memref.alloc({threads}) {{alignment = 64 : i64}} : {tap}"
    ));
    let bp = c.let_(format_args!(
        "memref.alloc({threads}) {{alignment = 64 : i64}} : {tbp}"
    ));
    let batch: usize = g.c[..nb].iter().product();
    let panels = n.div_ceil(NR);
    // Slabs per GEMM: ceil(T / batch), at least 1, at most one per panel.
    let bv = c.idx(batch);
    let per = ceil_div_v(&mut c, &threads, &bv);
    let pv = c.idx(panels);
    let slabs = c.min(&per, &pv);
    // Slab width in panels.
    let width = ceil_div_v(&mut c, &pv, &slabs);
    let tasks = c.ix("muli", &bv, &slabs);
    let dims = Dims {
        m,
        n,
        k,
        kc,
        nc,
        a_transposed: g.a_transposed,
        b_transposed: g.b_transposed,
    };
    c.parallel(&[&tasks], |c, ivs| {
        let task = &ivs[0];
        let id32 = c.let_("func.call @omp_get_thread_num() : () -> i32");
        let id = c.let_(format_args!("arith.index_cast {id32} : i32 to index"));
        let one = c.idx(1);
        let last = c.ix("subi", &threads, &one);
        let tid = c.min(&id, &last);
        let bidx = c.ix("divui", task, &slabs);
        let slab = c.ix("remui", task, &slabs);
        let p0 = c.ix("muli", &slab, &width);
        let p1 = c.ix("addi", &p0, &width);
        let nrv = c.idx(NR);
        let c0 = c.ix("muli", &p0, &nrv);
        let c1 = c.ix("muli", &p1, &nrv);
        let nv = c.idx(n);
        let c1 = c.min(&c1, &nv);
        let live = c.let_(format_args!("arith.cmpi ult, {c0}, {c1} : index"));
        c.if_(&live, |c| {
            // The batch indices of C, row-major from `bidx`.
            let mut idx = Vec::new();
            let mut stride = batch;
            for &size in &g.c[..nb] {
                stride /= size.max(1);
                let sv = c.idx(stride.max(1));
                let q = c.ix("divui", &bidx, &sv);
                let zv = c.idx(size.max(1));
                idx.push(c.ix("remui", &q, &zv));
            }
            let a2 = view(c, "%a", &g.a, &ta, &idx, nb);
            let b2 = view(c, "%b", &g.b, &tb, &idx, nb);
            let c2 = view(c, "%c", &g.c, &tc, &idx, nb);
            let bufs = Buffers {
                ap: (ap.clone(), tap.clone()),
                bp: (bp.clone(), tbp.clone()),
                tid,
            };
            gemm_2d(c, &dims, &bufs, [&a2, &b2, &c2], (&c0, &c1));
        });
    });
    let params = [
        ("%a".to_string(), ta),
        ("%b".to_string(), tb),
        ("%c".to_string(), tc),
    ];
    function(name, &params, c.finish())
}

struct Dims {
    m: usize,
    n: usize,
    k: usize,
    /// Depth of the packed panels: `min(KC, K)`.
    kc: usize,
    /// Columns packed at once, a multiple of `NR`.
    nc: usize,
    /// Whether A comes as `[K, M]`, B as `[N, K]`.
    a_transposed: bool,
    b_transposed: bool,
}

/// The packing buffers of every thread (value, type) and this thread's index in them.
struct Buffers {
    ap: (String, String),
    bp: (String, String),
    tid: String,
}

/// The 2-D view `[rows, cols]` of operand `v` (sizes `sizes`) at batch indices `idx`
/// of the result (numpy broadcasting: missing leading dims, size-1 dims read 0).
fn view(c: &mut Code, v: &str, sizes: &[usize], ty: &str, idx: &[String], nb: usize) -> String {
    let r = sizes.len();
    if r == 2 {
        return v.to_string();
    }
    let lead = nb - (r - 2);
    let mut offsets = Vec::new();
    for (d, &size) in sizes[..r - 2].iter().enumerate() {
        offsets.push(if size == 1 {
            "0".to_string()
        } else {
            idx[lead + d].clone()
        });
    }
    offsets.extend(["0".to_string(), "0".to_string()]);
    let mut lens = vec!["1".to_string(); r - 2];
    lens.extend([sizes[r - 2].to_string(), sizes[r - 1].to_string()]);
    let ones = vec!["1"; r];
    let out = strided_type(&sizes[r - 2..], "f32");
    c.let_(format_args!(
        "memref.subview {v}[{}] [{}] [{}] : {ty} to {out}",
        offsets.join(", "),
        lens.join(", "),
        ones.join(", ")
    ))
}

/// `C[:, c0..c1] = A · B[:, c0..c1]` by the blocked loops of the module docs, on one
/// thread (`c0` is a multiple of `NR`).
fn gemm_2d(c: &mut Code, d: &Dims, p: &Buffers, [a, b, cc]: [&str; 3], (c0, c1): (&str, &str)) {
    let ta = if d.a_transposed {
        strided_type(&[d.k, d.m], "f32")
    } else {
        strided_type(&[d.m, d.k], "f32")
    };
    let tb = if d.b_transposed {
        strided_type(&[d.n, d.k], "f32")
    } else {
        strided_type(&[d.k, d.n], "f32")
    };
    let tc = strided_type(&[d.m, d.n], "f32");
    let (zero, mv, kv) = (c.idx(0), c.idx(d.m), c.idx(d.k));
    let (ap, tap) = (&p.ap.0, &p.ap.1);
    let (bp, tbp) = (&p.bp.0, &p.bp.1);
    let tid = &p.tid;
    let pad = c.f32(0.0);
    // Vectors that may run past N need masking; rows past M are zero-padded by packing.
    let n_ragged = !d.n.is_multiple_of(NR);
    // A last panel of at most LANES columns runs a tile of one vector per row.
    let narrow_tail = (1..=LANES).contains(&(d.n % NR));
    let m_ragged = !d.m.is_multiple_of(MR);
    let in_bounds_n = d.n.is_multiple_of(LANES) && !n_ragged;

    let ncv = c.idx(d.nc);
    let step = c.idx(d.nc);
    c.for_((c0, c1, &step), &[], |c, jc, _| {
        let rest = c.ix("subi", c1, jc);
        let ncur = c.min(&ncv, &rest);
        let np = ceil_div(c, &ncur, NR);
        let kcv = c.idx(d.kc);
        c.for_range(&zero, &kv, d.kc, |c, pc| {
            let rest = c.ix("subi", &kv, pc);
            let kc = c.min(&kcv, &rest);
            // Pack B: Bp[jp][k][..] = B[pc + k, jc + jp·NR + ..].
            c.for_range(&zero, &np, 1, |c, jp| {
                let col0 = c.mad(jc, jp, NR);
                let zero = c.idx(0);
                if d.b_transposed {
                    // Bᵀ's rows are B's columns: NR of them gathered per k (0 past N).
                    let last = c.idx(d.n - 1);
                    let nv = c.idx(d.n);
                    let cols: Vec<(String, Option<String>)> = (0..NR)
                        .map(|j| {
                            let col = c.add_const(&col0, j);
                            if n_ragged {
                                let inside = c.let_(format_args!("arith.cmpi ult, {col}, {nv} : index"));
                                (c.min(&col, &last), Some(inside))
                            } else {
                                (col, None)
                            }
                        })
                        .collect();
                    c.for_range(&zero, &kc, 1, |c, kk| {
                        let row = c.ix("addi", pc, kk);
                        let elems: Vec<String> = cols
                            .iter()
                            .map(|(col, inside)| {
                                let x = c.let_(format_args!("memref.load {b}[{col}, {row}] : {tb}"));
                                match inside {
                                    Some(inside) => c.let_(format_args!("arith.select {inside}, {x}, {pad} : f32")),
                                    None => x,
                                }
                            })
                            .collect();
                        let vec = c.let_(format_args!(
                            "vector.from_elements {} : vector<{NR}xf32>",
                            elems.join(", ")
                        ));
                        let zero = c.idx(0);
                        c.line(format_args!(
                            "vector.store {vec}, {bp}[{tid}, {jp}, {kk}, {zero}] : {tbp}, vector<{NR}xf32>"
                        ));
                    });
                    return;
                }
                let sources: Vec<BVector> = (0..NR / LANES)
                    .map(|v| BVector {
                        buf: b,
                        ty: &tb,
                        lead: Vec::new(),
                        col: c.add_const(&col0, v * LANES),
                        in_bounds: in_bounds_n,
                    })
                    .collect();
                let dst = Packed::new(bp, tbp, &[tid.as_str(), jp]);
                pack_b_rows(c, &sources, (pc, &kc), &dst);
            });
            let mcv = c.idx(MC);
            c.for_range(&zero, &mv, MC, |c, ic| {
                let rest = c.ix("subi", &mv, ic);
                let mcur = c.min(&mcv, &rest);
                let mp = ceil_div(c, &mcur, MR);
                // Pack A: Ap[ip][k][r] = A[ic + ip·MR + r, pc + k] (0 past M).
                c.for_range(&zero, &mp, 1, |c, ip| {
                    let row0 = c.mad(ic, ip, MR);
                    let zero = c.idx(0);
                    if d.a_transposed {
                        // Aᵀ's rows are A's columns: MR contiguous values per k,
                        // read masked (0 past M) at the edge.
                        let vm = format!("vector<{MR}xf32>");
                        c.for_range(&zero, &kc, 1, |c, kk| {
                            let row = c.ix("addi", pc, kk);
                            let vec = if m_ragged {
                                c.let_(format_args!(
                                    "vector.transfer_read {a}[{row}, {row0}], {pad} {{in_bounds = [false]}} : {ta}, {vm}"
                                ))
                            } else {
                                c.let_(format_args!("vector.load {a}[{row}, {row0}] : {ta}, {vm}"))
                            };
                            let zero = c.idx(0);
                            c.line(format_args!(
                                "vector.store {vec}, {ap}[{tid}, {ip}, {kk}, {zero}] : {tap}, {vm}"
                            ));
                        });
                        return;
                    }
                    let last = c.idx(d.m - 1);
                    let rows: Vec<(String, Option<String>)> = (0..MR)
                        .map(|r| {
                            let row = c.add_const(&row0, r);
                            if m_ragged {
                                let inside = c.let_(format_args!("arith.cmpi ult, {row}, {mv} : index"));
                                let clamped = c.min(&row, &last);
                                (clamped, Some(inside))
                            } else {
                                (row, None)
                            }
                        })
                        .collect();
                    let dst = Packed::new(ap, tap, &[tid.as_str(), ip]);
                    pack_a_rows(c, (a, &ta), &rows, (pc, &kc), &dst);
                });
                // The micro-kernels of this block: one B panel against every A panel.
                c.for_range(&zero, &np, 1, |c, jp| {
                    let col0 = c.mad(jc, jp, NR);
                    let panel = |c: &mut Code, nv: usize| {
                        c.for_range(&zero, &mp, 1, |c, ip| {
                            let row0 = c.mad(ic, ip, MR);
                            prefetch_c(c, d, cc, &tc, &row0, &col0, nv);
                            let a_panel = Packed::new(ap, tap, &[tid.as_str(), ip]);
                            let b_panel = Packed::new(bp, tbp, &[tid.as_str(), jp]);
                            micro_kernel(c, &a_panel, &b_panel, &kc, nv, |c, tile| {
                                let zero = c.idx(0);
                                let first = c.let_(format_args!("arith.cmpi eq, {pc}, {zero} : index"));
                                let ragged = (m_ragged, n_ragged);
                                update_c(c, d, cc, &tc, (&row0, &col0), tile, &first, ragged, nv);
                            });
                        });
                    };
                    if narrow_tail {
                        // The last panel holds at most LANES columns of C: half a tile.
                        let end = c.add_const(&col0, LANES);
                        let n_value = c.idx(d.n);
                        let narrow = c.let_(format_args!("arith.cmpi uge, {end}, {n_value} : index"));
                        c.if_else(&narrow, |c| panel(c, 1), |c| panel(c, NR / LANES));
                    } else {
                        panel(c, NR / LANES);
                    }
                });
            });
        });
        Vec::new()
    });
}

/// `ceil(x / y)` of two index values.
fn ceil_div_v(c: &mut Code, x: &str, y: &str) -> String {
    let one = c.idx(1);
    let sum = c.ix("addi", x, y);
    let up = c.ix("subi", &sum, &one);
    c.ix("divui", &up, y)
}

fn ceil_div(c: &mut Code, x: &str, by: usize) -> String {
    let up = c.add_const(x, by - 1);
    let byv = c.idx(by);
    c.ix("divui", &up, &byv)
}

/// A packed panel: its element `(k, lane)` at `buf[at.., k0 + k, lane]`.
pub(crate) struct Packed<'a> {
    pub buf: &'a str,
    pub ty: &'a str,
    pub at: Vec<String>,
    /// Where the panel's `k` starts (0 when `None`).
    pub k0: Option<&'a str>,
}

impl<'a> Packed<'a> {
    pub fn new(buf: &'a str, ty: &'a str, at: &[&str]) -> Packed<'a> {
        Packed {
            buf,
            ty,
            at: at.iter().map(|s| s.to_string()).collect(),
            k0: None,
        }
    }

    /// The same panel read from depth `k0` on.
    pub fn from(mut self, k0: &'a str) -> Packed<'a> {
        self.k0 = Some(k0);
        self
    }

    /// `buf[at.., k0 + kk, lane]`.
    fn index(&self, c: &mut Code, kk: &str, lane: &str) -> String {
        let k = match self.k0 {
            Some(k0) => c.ix("addi", k0, kk),
            None => kk.to_string(),
        };
        let mut idx = self.at.clone();
        idx.extend([k, lane.to_string()]);
        format!("{}[{}]", self.buf, idx.join(", "))
    }
}

/// Pack `kc` columns of `MR` rows of A (each row an index of `a`, and whether it is
/// a real row: 0 is packed where it is not) from column `col0` on:
/// `dst[k][r] = A[rows[r], col0 + k]`. The rows may be anything — consecutive rows
/// of a matrix, or rows gathered through an index list. `LANES` columns at a time:
/// one vector load per row and an in-register transpose ([`transpose_rows`]); the
/// last `kc mod LANES` columns element by element.
pub(crate) fn pack_a_rows(
    c: &mut Code,
    (a, ta): (&str, &str),
    rows: &[(String, Option<String>)],
    (col0, kc): (&str, &str),
    dst: &Packed,
) {
    let zero = c.idx(0);
    let pad = c.f32(0.0);
    let vt = format!("vector<{LANES}xf32>");
    let vm = format!("vector<{}xf32>", rows.len());
    let lanes = c.idx(LANES);
    let q = c.ix("divui", kc, &lanes);
    let whole = c.ix("muli", &q, &lanes);
    if rows.len() == MR {
        c.for_range(&zero, &whole, LANES, |c, kk| {
            let col = c.ix("addi", col0, kk);
            let zv = c.splat(0.0);
            let vs: Vec<String> = rows
                .iter()
                .map(|(row, inside)| {
                    let v = c.let_(format_args!("vector.load {a}[{row}, {col}] : {ta}, {vt}"));
                    match inside {
                        Some(inside) => {
                            c.let_(format_args!("arith.select {inside}, {v}, {zv} : {vt}"))
                        }
                        None => v,
                    }
                })
                .collect();
            for (j, col) in transpose_rows(c, &vs).iter().enumerate() {
                let k = c.add_const(kk, j);
                let zero = c.idx(0);
                let at = dst.index(c, &k, &zero);
                c.line(format_args!("vector.store {col}, {at} : {}, {vm}", dst.ty));
            }
        });
    }
    let from = if rows.len() == MR {
        whole
    } else {
        zero.clone()
    };
    c.for_range(&from, kc, 1, |c, kk| {
        let col = c.ix("addi", col0, kk);
        let mut elems = Vec::new();
        for (row, inside) in rows {
            let x = c.let_(format_args!("memref.load {a}[{row}, {col}] : {ta}"));
            elems.push(match inside {
                Some(inside) => c.let_(format_args!("arith.select {inside}, {x}, {pad} : f32")),
                None => x,
            });
        }
        let vec = c.let_(format_args!(
            "vector.from_elements {} : {vm}",
            elems.join(", ")
        ));
        let zero = c.idx(0);
        let at = dst.index(c, kk, &zero);
        c.line(format_args!("vector.store {vec}, {at} : {}, {vm}", dst.ty));
    });
}

/// The transpose of `MR` rows of `LANES` lanes: `LANES` vectors of `MR` lanes,
/// column `j` holding `rows[0][j], .., rows[MR - 1][j]`. Three rounds of two-input
/// shuffles (pairs of rows, then quads, then all eight): 32 shuffles for 128 values.
pub(crate) fn transpose_rows(c: &mut Code, rows: &[String]) -> Vec<String> {
    const _: () = assert!(MR == 8 && LANES == 16);
    let vt = format!("vector<{LANES}xf32>");
    let shuffle = |c: &mut Code, x: &str, y: &str, mask: &[usize]| {
        let m: Vec<String> = mask.iter().map(|i| i.to_string()).collect();
        c.let_(format_args!(
            "vector.shuffle {x}, {y} [{}] : {vt}, {vt}",
            m.join(", ")
        ))
    };
    // Rows 2p and 2p + 1 interleaved: columns 8h.. 8h + 8, two values each.
    let mut pairs = Vec::new();
    for p in 0..4 {
        let halves: Vec<String> = (0..2)
            .map(|h| {
                let mask: Vec<usize> = (0..8).flat_map(|i| [8 * h + i, 16 + 8 * h + i]).collect();
                shuffle(c, &rows[2 * p], &rows[2 * p + 1], &mask)
            })
            .collect();
        pairs.push(halves);
    }
    // Rows 4q.. 4q + 4: columns 8h + 4f.. + 4, four values each.
    let mut quads = vec![vec![vec![String::new(); 2]; 2]; 2];
    for (q, quad) in quads.iter_mut().enumerate() {
        for (h, half) in quad.iter_mut().enumerate() {
            for (f, out) in half.iter_mut().enumerate() {
                let mask: Vec<usize> = (0..4)
                    .flat_map(|i| {
                        let l = 4 * f + i;
                        [2 * l, 2 * l + 1, 16 + 2 * l, 16 + 2 * l + 1]
                    })
                    .collect();
                *out = shuffle(c, &pairs[2 * q][h], &pairs[2 * q + 1][h], &mask);
            }
        }
    }
    // Column j: its four values in each quad.
    (0..LANES)
        .map(|j| {
            let (h, f, i) = (j / 8, (j % 8) / 4, j % 4);
            let mask: Vec<usize> = (0..4)
                .map(|r| 4 * i + r)
                .chain((0..4).map(|r| 16 + 4 * i + r))
                .collect();
            shuffle(c, &quads[0][h][f], &quads[1][h][f], &mask)
        })
        .collect()
}

/// One `LANES`-wide vector of a packed B panel: `buf[lead.., row, col..col + LANES]`
/// (0 past the end of the row unless `in_bounds`).
pub(crate) struct BVector<'a> {
    pub buf: &'a str,
    pub ty: &'a str,
    pub lead: Vec<String>,
    pub col: String,
    pub in_bounds: bool,
}

/// Pack `kc` rows of B from row `row0` on, one vector of `sources` after the other
/// in each packed row: `dst[k][v·LANES + ..] = sources[v] at row row0 + k`.
pub(crate) fn pack_b_rows(
    c: &mut Code,
    sources: &[BVector],
    (row0, kc): (&str, &str),
    dst: &Packed,
) {
    let zero = c.idx(0);
    let pad = c.f32(0.0);
    c.for_range(&zero, kc, 1, |c, kk| {
        let row = c.ix("addi", row0, kk);
        for (v, s) in sources.iter().enumerate() {
            let mut idx = s.lead.clone();
            idx.extend([row.clone(), s.col.clone()]);
            let x = c.let_(format_args!(
                "vector.transfer_read {}[{}], {pad} {{in_bounds = [{}]}} : {}, vector<{LANES}xf32>",
                s.buf,
                idx.join(", "),
                s.in_bounds,
                s.ty
            ));
            let off = c.idx(v * LANES);
            let at = dst.index(c, kk, &off);
            c.line(format_args!(
                "vector.store {x}, {at} : {}, vector<{LANES}xf32>",
                dst.ty
            ));
        }
    });
}

/// The `MR × nv·LANES` tile of `a · b` over `kc` (two packed panels: `a` of `MR`
/// rows, `b` of `NR` columns, of which the first `nv` vectors are used), in `MR·nv`
/// vectors (row-major), handed to `then`.
pub(crate) fn micro_kernel(
    c: &mut Code,
    a: &Packed,
    b: &Packed,
    kc: &str,
    nv: usize,
    then: impl FnOnce(&mut Code, &[String]),
) {
    let vt = format!("vector<{LANES}xf32>");
    let zero_v = c.splat(0.0);
    let iters: Vec<(String, String)> = (0..MR * nv).map(|_| (zero_v.clone(), vt.clone())).collect();
    let zero = c.idx(0);
    let one = c.idx(1);
    let tile = c.for_((&zero, kc, &one), &iters, |c, kk, acc| {
        let bs: Vec<String> = (0..nv)
            .map(|v| {
                let off = c.idx(v * LANES);
                let at = b.index(c, kk, &off);
                c.let_(format_args!("vector.load {at} : {}, {vt}", b.ty))
            })
            .collect();
        let mut next = Vec::new();
        for r in 0..MR {
            let ri = c.idx(r);
            let at = a.index(c, kk, &ri);
            let s = c.let_(format_args!("memref.load {at} : {}", a.ty));
            let bc = c.let_(format_args!("vector.broadcast {s} : f32 to {vt}"));
            for (v, bv) in bs.iter().enumerate() {
                let acc = &acc[r * nv + v];
                next.push(c.vop("vector.fma", &[&bc, bv, acc]));
            }
        }
        next
    });
    then(c, &tile);
}

/// Prefetch the C tile the micro-kernel will update, so its cache misses overlap the
/// k loop (C is read and written once per `KC` panel: a tile of rows `N` apart is
/// rarely still cached). Rows past M are clamped; columns past N are harmless (a
/// prefetch never faults) but skipped when the whole line is past N.
fn prefetch_c(c: &mut Code, d: &Dims, cc: &str, tc: &str, row0: &str, col0: &str, nv: usize) {
    let last = c.idx(d.m - 1);
    for r in 0..MR {
        let row = c.add_const(row0, r);
        let row = if !d.m.is_multiple_of(MR) {
            c.min(&row, &last)
        } else {
            row
        };
        for line in 0..nv {
            let col = c.add_const(col0, line * LANES);
            let lastc = c.idx(d.n - 1);
            let col = if !d.n.is_multiple_of(NR) {
                c.min(&col, &lastc)
            } else {
                col
            };
            c.line(format_args!(
                "memref.prefetch {cc}[{row}, {col}], write, locality<3>, data : {tc}"
            ));
        }
    }
}

/// `C[row0.., col0..] = tile` (`MR × nv·LANES`) for the first `KC` panel (`first`),
/// `+= tile` after: plain vector loads and stores for a tile inside C; rows past M
/// skipped and columns past N masked otherwise.
#[allow(clippy::too_many_arguments)]
fn update_c(
    c: &mut Code,
    d: &Dims,
    cc: &str,
    tc: &str,
    (row0, col0): (&str, &str),
    tile: &[String],
    first: &str,
    (m_ragged, n_ragged): (bool, bool),
    nv: usize,
) {
    let vt = format!("vector<{LANES}xf32>");
    let fast = |c: &mut Code, accumulate: bool| {
        for r in 0..MR {
            let row = c.add_const(row0, r);
            for v in 0..nv {
                let col = c.add_const(col0, v * LANES);
                let mut new = tile[r * nv + v].clone();
                if accumulate {
                    let old = c.let_(format_args!("vector.load {cc}[{row}, {col}] : {tc}, {vt}"));
                    new = c.vop("arith.addf", &[&old, &new]);
                }
                c.line(format_args!(
                    "vector.store {new}, {cc}[{row}, {col}] : {tc}, {vt}"
                ));
            }
        }
    };
    let edge = |c: &mut Code, accumulate: bool| {
        let pad = c.f32(0.0);
        let mv = c.idx(d.m);
        for r in 0..MR {
            let row = c.add_const(row0, r);
            let inside = c.let_(format_args!("arith.cmpi ult, {row}, {mv} : index"));
            c.if_(&inside, |c| {
                for v in 0..nv {
                    let col = c.add_const(col0, v * LANES);
                    let mut new = tile[r * nv + v].clone();
                    if accumulate {
                        let old = c.let_(format_args!(
                            "vector.transfer_read {cc}[{row}, {col}], {pad} {{in_bounds = [false]}} : {tc}, {vt}"
                        ));
                        new = c.vop("arith.addf", &[&old, &new]);
                    }
                    c.line(format_args!(
                        "vector.transfer_write {new}, {cc}[{row}, {col}] {{in_bounds = [false]}} : {vt}, {tc}"
                    ));
                }
            });
        }
    };
    let either = |c: &mut Code, path: &dyn Fn(&mut Code, bool)| {
        c.if_else(first, |c| path(c, false), |c| path(c, true));
    };
    if !m_ragged && !n_ragged {
        either(c, &fast);
        return;
    }
    let mv = c.idx(d.m);
    let n_value = c.idx(d.n);
    let row_end = c.add_const(row0, MR);
    let col_end = c.add_const(col0, nv * LANES);
    let rows_in = c.let_(format_args!("arith.cmpi ule, {row_end}, {mv} : index"));
    let cols_in = c.let_(format_args!("arith.cmpi ule, {col_end}, {n_value} : index"));
    let full = c.let_(format_args!("arith.andi {rows_in}, {cols_in} : i1"));
    c.if_else(&full, |c| either(c, &fast), |c| either(c, &edge));
}
