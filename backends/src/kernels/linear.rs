//! Recurrent (causal, unnormalized) linear attention on the CPU: a loop over time
//! updating the `Dk × Dv` state `S`, `S = a_t ⊙ S + k_tᵀ·v_t` and `out_t = q_t·S`,
//! with `a_t = 1` (no decay), a scalar per step (`Decay::Step`) or one per row of the
//! state (`Decay::Gate`). The multipliers come in as `exp(log_decay)`, computed by
//! the caller.
//!
//! The state splits into independent `Dk × LANES` column tiles (a tile only ever
//! meets the same columns of `v` and of the output), and a tile into blocks of at
//! most [`ROWS`] rows, which live in registers while they walk time (`scf.for`
//! carried vectors, one per row, every row of a block unrolled: Dk is a
//! constant). Per step and row, two FMAs whose scalar operands `k_t[i]`, `q_t[i]`
//! are broadcast loads (folded into the FMA): `S_i = k_t[i]·v_t + S_i` and `acc +=
//! q_t[i]·S_i`, summed in [`PARTIALS`] independent chains; the first row block
//! writes `out_t`, later ones add to it.
//!
//! Tasks run in parallel over (batch, head) — or (batch, head, column tile) when
//! there are few heads — and walk time in chunks of [`CHUNK`] steps: every block of
//! every tile of the task runs the chunk in turn (its rows of the state loaded
//! from and stored back to the task's stack buffer), so the chunk's rows of `q`,
//! `k`, `v` and the output stay in L1/L2 while they are reused. Walking all of time
//! per block instead streams `q` and `k` from L3 once per block and tile, which
//! bounds the kernel by memory bandwidth at a third of its FMA rate. The last tile
//! of a Dv that is not a multiple of `LANES` reads and writes masked vectors (the
//! lanes past Dv hold 0) — or, when it has at most [`NARROW`] columns (the column
//! of ones a normalizer appends to `v`), runs column by column vectorized over Dk.

use super::{function, strided_type, Code, KernelSet, LANES};
use attnc_ir::Decay;

/// Most rows of the state a pass over time keeps in registers (one vector each, next
/// to `v_t`, the partial sums and the broadcasts: 32 AVX-512 registers in all).
const ROWS: usize = 24;

/// Independent accumulation chains of `q_t·S` (the FMA latency times its throughput).
const PARTIALS: usize = 4;

/// One recurrent linear attention: `q, k [B, H, N, Dk]`, `v [B, H, N, Dv]` and the
/// decay multipliers `a` (`[B, H, N]` for a step decay, `[B, H, N, Dk]` for a gate).
#[derive(Clone, Debug)]
pub(crate) struct LinearKernel {
    pub q: Vec<usize>,
    pub v: Vec<usize>,
    pub decay: Decay,
}

impl LinearKernel {
    fn key(&self) -> String {
        let [b, h, n, dk] = [self.q[0], self.q[1], self.q[2], self.q[3]];
        format!(
            "linear.{b}x{h}x{n}x{dk}x{}.{}",
            self.v[3],
            self.decay.name()
        )
    }

    /// The shape of the multipliers, when there is a decay.
    fn decay_sizes(&self) -> Option<Vec<usize>> {
        match self.decay {
            Decay::None => None,
            Decay::Step | Decay::Head => Some(self.q[..3].to_vec()),
            Decay::Gate => Some(self.q.clone()),
        }
    }

    pub fn out(&self) -> Vec<usize> {
        vec![self.q[0], self.q[1], self.q[2], self.v[3]]
    }

    /// Operand types: q, k, v, [a], out.
    pub fn operand_types(&self) -> Vec<String> {
        let mut t = vec![
            strided_type(&self.q, "f32"),
            strided_type(&self.q, "f32"),
            strided_type(&self.v, "f32"),
        ];
        t.extend(self.decay_sizes().map(|s| strided_type(&s, "f32")));
        t.push(strided_type(&self.out(), "f32"));
        t
    }
}

/// The kernel for `l` (written once per shape and decay); returns its symbol.
pub(crate) fn linear(set: &mut KernelSet, l: &LinearKernel) -> String {
    set.get(l.key(), |name| write_linear(name, l))
}

/// Steps of one chunk of time: each row block of each column tile walks the chunk
/// in turn, so the chunk's `q`, `k`, `v` and output rows are read from L1/L2
/// however many tiles and blocks share them.
const CHUNK: usize = 32;

/// Fewest (batch, head) tasks for which one task takes every column tile of its head
/// (each `q`/`k` row is then read from memory once); with fewer, each tile is a task.
const WHOLE_HEADS: usize = 8;

/// Most bytes of state a task keeps on its stack when it takes a whole head.
const WHOLE_STATE_BYTES: usize = 256 << 10;

/// What the code of one task refers to.
struct Task<'a> {
    l: &'a LinearKernel,
    ib: String,
    ih: String,
    types: &'a [String],
    /// The task's state tiles, `Dk × (tiles · LANES)` (value, type).
    state: (String, String),
    /// The state of a narrow last tile, column by column: `w × Dk` (see
    /// [`narrow_chunk`]).
    narrow: Option<(String, String)>,
}

/// Widest last tile run column by column ([`narrow_chunk`]) instead of as a masked
/// `LANES`-wide tile, which costs as much as a full one: per step, `2·w·Dk/LANES`
/// FMAs and `w` horizontal sums against `2·Dk` FMAs.
const NARROW: usize = 4;

/// The width of the last tile when [`narrow_chunk`] runs it (Dk whole vectors, its
/// columns' state vectors fitting in registers).
fn narrow_width(dk: usize, dv: usize) -> Option<usize> {
    let w = dv % LANES;
    (w > 0 && w <= NARROW && dk.is_multiple_of(LANES) && w * dk / LANES <= 16).then_some(w)
}

fn write_linear(name: &str, l: &LinearKernel) -> String {
    let types = l.operand_types();
    let mut names = vec!["%q", "%k", "%v"];
    if l.decay != Decay::None {
        names.push("%a");
    }
    names.push("%o");
    let params: Vec<(String, String)> = names
        .iter()
        .map(|n| n.to_string())
        .zip(types.iter().cloned())
        .collect();
    let (b, h, n, dk) = (l.q[0], l.q[1], l.q[2], l.q[3]);
    let dv = l.v[3];
    let mut c = Code::new();
    let to = &types[types.len() - 1];
    if dk == 0 {
        // An empty state: every output is 0.
        let zero = c.f32(0.0);
        c.line(format_args!(
            "linalg.fill ins({zero} : f32) outs(%o : {to})"
        ));
        return function(name, &params, c.finish());
    }
    let tiles = dv.div_ceil(LANES);
    let full = dv / LANES;
    let whole = b * h >= WHOLE_HEADS && dk * tiles * LANES * 4 <= WHOLE_STATE_BYTES;
    let (bv, hv, tv) = (c.idx(b), c.idx(h), c.idx(tiles));
    let ubs: Vec<&str> = if whole {
        vec![&bv, &hv]
    } else {
        vec![&bv, &hv, &tv]
    };
    c.parallel(&ubs, |c, ivs| {
        let width = if whole { tiles * LANES } else { LANES };
        let ts = format!("memref<{dk}x{width}xf32>");
        let state = c.alloca(&ts);
        let (zero, dkv, zero_v) = (c.idx(0), c.idx(dk), c.splat(0.0));
        c.for_range(&zero, &dkv, 1, |c, i| {
            for col in (0..width).step_by(LANES) {
                let col = c.idx(col);
                c.line(format_args!(
                    "vector.store {zero_v}, {state}[{i}, {col}] : {ts}, vector<{LANES}xf32>"
                ));
            }
        });
        let narrow = narrow_width(dk, dv).map(|w| {
            let tn = format!("memref<{w}x{dk}xf32>");
            let buffer = c.alloca(&tn);
            for col in 0..w {
                let col = c.idx(col);
                for i in (0..dk).step_by(LANES) {
                    let i = c.idx(i);
                    c.line(format_args!(
                        "vector.store {zero_v}, {buffer}[{col}, {i}] : {tn}, vector<{LANES}xf32>"
                    ));
                }
            }
            (buffer, tn)
        });
        let t = Task {
            l,
            ib: ivs[0].clone(),
            ih: ivs[1].clone(),
            types: &types,
            state: (state, ts),
            narrow,
        };
        let nv = c.idx(n);
        c.for_range(&zero, &nv, CHUNK, |c, t0| {
            let end = c.add_const(t0, CHUNK);
            let t1 = c.min(&end, &nv);
            let steps = (t0, t1.as_str());
            if whole {
                for tile in 0..tiles {
                    let j0 = c.idx(tile * LANES);
                    let col = j0.clone();
                    let masked = tile == full;
                    tile_chunk(c, &t, steps, (&j0, &col), dk, masked);
                }
                return;
            }
            let lanes = c.idx(LANES);
            let j0 = c.ix("muli", &ivs[2], &lanes);
            let col = c.idx(0);
            if full == tiles || full == 0 {
                tile_chunk(c, &t, steps, (&j0, &col), dk, full == 0);
            } else {
                let fullv = c.idx(full);
                let inside = c.let_(format_args!("arith.cmpi ult, {}, {fullv} : index", ivs[2]));
                c.if_else(
                    &inside,
                    |c| tile_chunk(c, &t, steps, (&j0, &col), dk, false),
                    |c| tile_chunk(c, &t, steps, (&j0, &col), dk, true),
                );
            }
        });
    });
    function(name, &params, c.finish())
}

/// `[lo, hi)` row ranges of at most [`ROWS`] rows, as even as they come.
fn row_blocks(dk: usize) -> Vec<(usize, usize)> {
    let blocks = dk.div_ceil(ROWS);
    let per = dk.div_ceil(blocks);
    (0..blocks)
        .map(|i| (i * per, ((i + 1) * per).min(dk)))
        .filter(|(lo, hi)| lo < hi)
        .collect()
}

/// Steps `[t0, t1)` of one column tile: [`chunk`], or [`narrow_chunk`] for a narrow
/// last tile.
fn tile_chunk(
    c: &mut Code,
    t: &Task,
    steps: (&str, &str),
    (j0, col): (&str, &str),
    dk: usize,
    masked: bool,
) {
    match (&t.narrow, masked) {
        (Some(_), true) => narrow_chunk(c, t, steps, j0, dk),
        _ => chunk(c, t, steps, (j0, col), dk, masked),
    }
}

/// Steps `[t0, t1)` of the `w` (≤ [`NARROW`]) columns of the last tile, one state
/// column `s_c` (Dk values, `Dk / LANES` vectors) at a time, vectorized over Dk:
/// `s_c = a_t ⊙ s_c + v_t[c]·k_t` and `out_t[c] = q_t · s_c` (a horizontal sum).
fn narrow_chunk(c: &mut Code, t: &Task, (t0, t1): (&str, &str), j0: &str, dk: usize) {
    let vt = format!("vector<{LANES}xf32>");
    let Some((sb, ts)) = &t.narrow else {
        return;
    };
    let w = t.l.v[3] % LANES;
    let (tq, tk, tvv, to) = (
        &t.types[0],
        &t.types[1],
        &t.types[2],
        &t.types[t.types.len() - 1],
    );
    let ta = (t.l.decay != Decay::None).then(|| t.types[3].clone());
    let (ib, ih) = (&t.ib, &t.ih);
    let vectors = dk / LANES;
    let mut iters = Vec::new();
    for col in 0..w {
        let colv = c.idx(col);
        for j in 0..vectors {
            let jv = c.idx(j * LANES);
            let s = c.let_(format_args!("vector.load {sb}[{colv}, {jv}] : {ts}, {vt}"));
            iters.push((s, vt.clone()));
        }
    }
    let one = c.idx(1);
    let last = c.for_((t0, t1, &one), &iters, |c, step, state| {
        let row = |c: &mut Code, m: &str, ty: &str, j: usize| {
            let jv = c.idx(j * LANES);
            c.let_(format_args!(
                "vector.load {m}[{ib}, {ih}, {step}, {jv}] : {ty}, {vt}"
            ))
        };
        let ks: Vec<String> = (0..vectors).map(|j| row(c, "%k", tk, j)).collect();
        let qs: Vec<String> = (0..vectors).map(|j| row(c, "%q", tq, j)).collect();
        let decay: Option<Vec<String>> = match (&ta, t.l.decay) {
            (Some(ta), Decay::Gate) => Some((0..vectors).map(|j| row(c, "%a", ta, j)).collect()),
            (Some(ta), _) => {
                let a = c.let_(format_args!("memref.load %a[{ib}, {ih}, {step}] : {ta}"));
                let a = c.let_(format_args!("vector.broadcast {a} : f32 to {vt}"));
                Some(vec![a; vectors])
            }
            (None, _) => None,
        };
        let mut next = Vec::with_capacity(w * vectors);
        for col in 0..w {
            let jc = c.add_const(j0, col);
            let x = c.let_(format_args!(
                "memref.load %v[{ib}, {ih}, {step}, {jc}] : {tvv}"
            ));
            let xb = c.let_(format_args!("vector.broadcast {x} : f32 to {vt}"));
            let mut acc: Option<String> = None;
            for j in 0..vectors {
                let s = &state[col * vectors + j];
                let new = match &decay {
                    Some(a) => {
                        let kv = c.vop("arith.mulf", &[&ks[j], &xb]);
                        c.vop("vector.fma", &[&a[j], s, &kv])
                    }
                    None => c.vop("vector.fma", &[&ks[j], &xb, s]),
                };
                acc = Some(match acc {
                    None => c.vop("arith.mulf", &[&qs[j], &new]),
                    Some(acc) => c.vop("vector.fma", &[&qs[j], &new, &acc]),
                });
                next.push(new);
            }
            let acc = acc.unwrap_or_else(|| c.splat(0.0));
            let sum = c.let_(format_args!(
                "vector.reduction <add>, {acc} fastmath<reassoc> : {vt} into f32"
            ));
            c.line(format_args!(
                "memref.store {sum}, %o[{ib}, {ih}, {step}, {jc}] : {to}"
            ));
        }
        next
    });
    for col in 0..w {
        let colv = c.idx(col);
        for j in 0..vectors {
            let jv = c.idx(j * LANES);
            c.line(format_args!(
                "vector.store {}, {sb}[{colv}, {jv}] : {ts}, {vt}",
                last[col * vectors + j]
            ));
        }
    }
}

/// Steps `[t0, t1)` of one column tile (output columns from `j0`, state columns from
/// `col`), every row block in turn: its rows of the state come from the task's
/// buffer into registers and go back after. `masked` for the tile running past Dv.
fn chunk(
    c: &mut Code,
    t: &Task,
    (t0, t1): (&str, &str),
    (j0, col): (&str, &str),
    dk: usize,
    masked: bool,
) {
    let vt = format!("vector<{LANES}xf32>");
    let (tq, tk, tvv, to) = (
        &t.types[0],
        &t.types[1],
        &t.types[2],
        &t.types[t.types.len() - 1],
    );
    let ta = (t.l.decay != Decay::None).then(|| t.types[3].clone());
    let (ib, ih) = (&t.ib, &t.ih);
    let (sb, ts) = (&t.state.0, &t.state.1);
    let read = |c: &mut Code, m: &str, ty: &str, row: &str| -> String {
        if masked {
            let pad = c.f32(0.0);
            c.let_(format_args!(
                "vector.transfer_read {m}[{ib}, {ih}, {row}, {j0}], {pad} {{in_bounds = [false]}} : {ty}, {vt}"
            ))
        } else {
            c.let_(format_args!(
                "vector.load {m}[{ib}, {ih}, {row}, {j0}] : {ty}, {vt}"
            ))
        }
    };
    let write = |c: &mut Code, x: &str, row: &str| {
        if masked {
            c.line(format_args!(
                "vector.transfer_write {x}, %o[{ib}, {ih}, {row}, {j0}] {{in_bounds = [false]}} : {vt}, {to}"
            ));
        } else {
            c.line(format_args!(
                "vector.store {x}, %o[{ib}, {ih}, {row}, {j0}] : {to}, {vt}"
            ));
        }
    };
    let broadcast = |c: &mut Code, m: &str, ty: &str, index: &str| -> String {
        let s = c.let_(format_args!("memref.load {m}[{index}] : {ty}"));
        c.let_(format_args!("vector.broadcast {s} : f32 to {vt}"))
    };
    for (block, (lo, hi)) in row_blocks(dk).into_iter().enumerate() {
        let iters: Vec<(String, String)> = (lo..hi)
            .map(|i| {
                let iv = c.idx(i);
                let s = c.let_(format_args!("vector.load {sb}[{iv}, {col}] : {ts}, {vt}"));
                (s, vt.clone())
            })
            .collect();
        let one = c.idx(1);
        let last = c.for_((t0, t1, &one), &iters, |c, step, state| {
            let v = read(c, "%v", tvv, step);
            let a_step = match (&ta, t.l.decay) {
                (Some(ta), Decay::Step | Decay::Head) => {
                    Some(broadcast(c, "%a", ta, &format!("{ib}, {ih}, {step}")))
                }
                _ => None,
            };
            let mut parts: Vec<Option<String>> = vec![None; PARTIALS];
            let mut next = Vec::with_capacity(hi - lo);
            for (r, i) in (lo..hi).enumerate() {
                let iv = c.idx(i);
                let at = format!("{ib}, {ih}, {step}, {iv}");
                let kb = broadcast(c, "%k", tk, &at);
                let s = &state[r];
                let new = match (&ta, t.l.decay) {
                    (Some(ta), Decay::Gate) => {
                        let ab = broadcast(c, "%a", ta, &at);
                        let kv = c.vop("arith.mulf", &[&kb, &v]);
                        c.vop("vector.fma", &[&ab, s, &kv])
                    }
                    _ => match &a_step {
                        Some(ab) => {
                            let kv = c.vop("arith.mulf", &[&kb, &v]);
                            c.vop("vector.fma", &[ab, s, &kv])
                        }
                        None => c.vop("vector.fma", &[&kb, &v, s]),
                    },
                };
                let qb = broadcast(c, "%q", tq, &at);
                let p = r % PARTIALS;
                parts[p] = Some(match &parts[p] {
                    None => c.vop("arith.mulf", &[&qb, &new]),
                    Some(acc) => c.vop("vector.fma", &[&qb, &new, acc]),
                });
                next.push(new);
            }
            let mut sums: Vec<String> = parts.into_iter().flatten().collect();
            while sums.len() > 1 {
                let half = sums.len().div_ceil(2);
                let mut paired = Vec::with_capacity(half);
                for i in 0..half {
                    paired.push(match sums.get(i + half) {
                        Some(other) => c.vop("arith.addf", &[&sums[i], other]),
                        None => sums[i].clone(),
                    });
                }
                sums = paired;
            }
            let mut out = sums.pop().unwrap_or_else(|| c.splat(0.0));
            if block > 0 {
                let old = read(c, "%o", to, step);
                out = c.vop("arith.addf", &[&old, &out]);
            }
            write(c, &out, step);
            next
        });
        for (r, i) in (lo..hi).enumerate() {
            let iv = c.idx(i);
            c.line(format_args!(
                "vector.store {}, {sb}[{iv}, {col}] : {ts}, {vt}",
                last[r]
            ));
        }
    }
}
