//! Cost models: a roofline per target. An op costs `max(FLOPs / peak, bytes /
//! bandwidth)` plus a launch overhead per kernel (GPU); every op is its own kernel,
//! so a fused op is charged only for its own inputs and output. The target's numbers
//! come from a TOML description ([`Target`]); the defaults ship in `passes/targets/`.
//!
//! Costs are pure arithmetic on shapes: deterministic, so they can sit in snapshots.

use crate::{Attn, EGraph};
use attnc_ir::{
    dense_attention_block, listed_tile, op_bytes, op_flops, BlockLayout, DType, Dims, MaskExpr, Op,
    TensorType,
};

/// Vector operations of the online softmax per score: scale, max, exp2 (a few
/// FMAs on the polynomial), sum.
const SOFTMAX_OPS_PER_SCORE: f64 = 6.0;

/// Fixed vector work per computed block beyond its scores (loop setup, the block's
/// row max and `α` passes, loads of the layout), and the slowdown of 128-row tiles:
/// fitted to the CPU kernel's times for 16×16 … 128×64 blocks (`sparse_speed`).
const BLOCK_OVERHEAD_OPS: f64 = 1500.0;
const TALL_TILE_PENALTY: f64 = 1.2;

/// Expected fraction of a mask's blocks a document (segment-id) block list keeps: the
/// list is data, so the compile-time cost can only guess.
const DOCUMENT_FILL: f64 = 0.5;

/// Batched small GEMMs of chunkwise linear attention (`C × D` by `D × C` per chunk)
/// against a large GEMM, and the bandwidth of a pass over a freshly allocated
/// intermediate (first-touch page faults) against streaming DRAM: fitted to the CPU
/// times of every form at N = 1024 … 16384, D = 64 (`linear_speed`).
const CHUNK_GEMM_EFFICIENCY: f64 = 0.35;
const INTERMEDIATE_BANDWIDTH: f64 = 0.25;

/// Fraction of the smaller of compute and traffic time that does not overlap the
/// larger.
const OVERLAP_LOSS: f64 = 0.1;

fn half_out(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16)
}
use serde::Deserialize;
use std::cmp::Ordering;
use std::fmt;

/// Estimated run time in nanoseconds. Ordered totally (`f64::total_cmp`); infinity
/// marks a node that cannot be costed (an ill-typed candidate is never chosen).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Cost(pub f64);

impl Cost {
    pub const INFINITE: Cost = Cost(f64::INFINITY);

    pub fn ns(self) -> f64 {
        self.0
    }
}

impl Eq for Cost {}

impl Ord for Cost {
    fn cmp(&self, other: &Cost) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl PartialOrd for Cost {
    fn partial_cmp(&self, other: &Cost) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, other: Cost) -> Cost {
        Cost(self.0 + other.0)
    }
}

impl std::iter::Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost(0.0), |a, b| a + b)
    }
}

/// `1.234 ms`: four significant digits in the largest unit below the value.
impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        if !ns.is_finite() {
            return f.write_str("inf");
        }
        let (v, unit) = if ns >= 1e9 {
            (ns / 1e9, "s")
        } else if ns >= 1e6 {
            (ns / 1e6, "ms")
        } else if ns >= 1e3 {
            (ns / 1e3, "us")
        } else {
            (ns, "ns")
        };
        let digits = if v >= 100.0 {
            1
        } else if v >= 10.0 {
            2
        } else {
            3
        };
        write!(f, "{v:.digits$} {unit}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Cpu,
    Gpu,
}

/// A machine for the cost model, read from TOML (see `passes/targets/*.toml`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    pub cores: u64,
    /// Dense contractions (matmul, attention) at f32 and wider.
    pub matmul_gflops: f64,
    /// Dense contractions at f16/bf16; defaults to `matmul_gflops`.
    #[serde(default)]
    pub half_matmul_gflops: Option<f64>,
    /// Elementwise and reduction work.
    pub vector_gflops: f64,
    pub bandwidth_gbs: f64,
    /// Fixed cost of launching one kernel.
    pub launch_us: f64,
}

/// The shipped targets: `cpu` (this kind of x86 server), `h100`, `h200`.
const SHIPPED: [(&str, &str); 3] = [
    ("cpu", include_str!("../targets/cpu.toml")),
    ("h100", include_str!("../targets/h100.toml")),
    ("h200", include_str!("../targets/h200.toml")),
];

impl Target {
    /// A shipped target by name; `gpu` means the H200.
    pub fn named(name: &str) -> Option<Target> {
        let name = if name == "gpu" { "h200" } else { name };
        let (_, text) = SHIPPED.iter().find(|(n, _)| *n == name)?;
        // The shipped files are tested to parse.
        Target::from_toml(text).ok()
    }

    pub fn names() -> Vec<&'static str> {
        SHIPPED.iter().map(|(n, _)| *n).collect()
    }

    pub fn cpu() -> Target {
        Target::named("cpu").expect("the shipped cpu target parses")
    }

    pub fn from_toml(text: &str) -> Result<Target, String> {
        let t: Target = toml::from_str(text).map_err(|e| e.to_string())?;
        let rates = [
            ("matmul_gflops", t.matmul_gflops),
            ("vector_gflops", t.vector_gflops),
            ("bandwidth_gbs", t.bandwidth_gbs),
        ];
        for (name, v) in rates {
            if !(v > 0.0 && v.is_finite()) {
                return Err(format!("`{name}` must be a positive number, got {v}"));
            }
        }
        if !(t.launch_us >= 0.0 && t.launch_us.is_finite()) {
            return Err(format!("`launch_us` must be >= 0, got {}", t.launch_us));
        }
        Ok(t)
    }

    /// Roofline time of `op` on operands `args` giving `out`, sizes resolved.
    pub fn op_cost(
        &self,
        op: &Op,
        args: &[(&[usize], DType)],
        out: (&[usize], DType),
        dims: &Dims,
    ) -> Cost {
        // Sources are bound, not computed; a reshape is a view: no kernel, no traffic.
        if op.is_source() || matches!(op, Op::Reshape { .. }) {
            return Cost(0.0);
        }
        let sizes: Vec<&[usize]> = args.iter().map(|a| a.0).collect();
        let bytes = op_bytes(op, args, out) as f64;
        if let Op::Attention(a) = op {
            let memory = bytes / self.bandwidth_gbs;
            // Compute and traffic overlap imperfectly: a memory-bound attention still
            // gains from skipping blocks (which a pure roofline would call a tie).
            return match self.attention_compute(a, &sizes, half_out(out.1), dims) {
                Some(compute) => Cost(
                    compute.max(memory) + OVERLAP_LOSS * compute.min(memory) + self.launch_us * 1e3,
                ),
                None => Cost::INFINITE,
            };
        }
        if let Op::LinearAttention(l) = op {
            // Intermediates are separate passes, each on freshly allocated memory.
            let (compute, traffic) = self.linear_compute(l, &sizes);
            let memory = bytes / self.bandwidth_gbs;
            let passes = traffic / (self.bandwidth_gbs * INTERMEDIATE_BANDWIDTH);
            return Cost(
                compute.max(memory)
                    + OVERLAP_LOSS * compute.min(memory)
                    + passes
                    + self.launch_us * 1e3,
            );
        }
        let flops = op_flops(op, &sizes, out.0, dims) as f64;
        let peak = match op {
            Op::MatMul if half_out(out.1) => self.half_matmul_gflops.unwrap_or(self.matmul_gflops),
            Op::MatMul | Op::Moba(_) | Op::MoeDispatch(_) => self.matmul_gflops,
            _ => self.vector_gflops,
        };
        // GFLOP/s and GB/s are FLOPs and bytes per nanosecond.
        let compute = flops / peak;
        let memory = bytes / self.bandwidth_gbs;
        Cost(compute.max(memory) + self.launch_us * 1e3)
    }

    /// Compute time (ns) of a fused attention, block by block as the kernels run it:
    /// the two contractions of every computed block at the contraction peak; the
    /// online softmax of its scores, the mask of its partial blocks and the per-block
    /// rescale of the output rows at the vector rate. Dense attention computes every
    /// block ([`dense_attention_block`]) and evaluates its mask in each; block-sparse only the blocks of
    /// its layout, the mask only in partial ones. `None` if the layout is too large.
    fn attention_compute(
        &self,
        a: &attnc_ir::Attention,
        args: &[&[usize]],
        half: bool,
        dims: &Dims,
    ) -> Option<f64> {
        let (q, k, v) = (args[0], args[1], args[2]);
        let (dk, dv) = (q[3] as f64, v[3] as f64);
        let [bq, bk] = match a.block {
            Some(b) if a.listed => listed_tile(b.map(|n| n as usize)),
            Some(b) => b.map(|n| n as usize),
            None => dense_attention_block(q[2], k[2]),
        };
        let (blocks, partial) = match a.block {
            Some(_) if a.listed => {
                // Every slot, each in kernel tiles — but never more than the mask's
                // own layout leaves (the kernel skips its empty tiles). A document
                // list is data: half of that is expected to remain.
                let [lq, lk] = a.block.unwrap_or([1, 1]).map(|n| n as usize);
                let tiles = (lq / bq).max(1) * (lk / bk).max(1);
                let slots = args.last().map_or(0, |l| l[3]);
                let listed = (q[0] * q[1] * q[2].div_ceil(lq) * slots * tiles) as f64;
                let sizes = [q[0], q[1], q[2], k[2]];
                let l = BlockLayout::of(a.mask.as_ref(), dims, sizes, [bq, bk]).ok()?;
                let mut n = listed.min(l.computed_blocks() as f64);
                if a.segments {
                    n *= DOCUMENT_FILL;
                }
                (
                    n,
                    if a.mask.is_some() || a.segments {
                        n
                    } else {
                        0.0
                    },
                )
            }
            Some(_) => {
                let sizes = [q[0], q[1], q[2], k[2]];
                let l = BlockLayout::of(a.mask.as_ref(), dims, sizes, [bq, bk]).ok()?;
                let computed = l.computed_blocks() as f64;
                let partial = if a.segments {
                    computed
                } else {
                    l.partial_blocks() as f64
                };
                (computed, partial)
            }
            None => {
                let rows = (q[0] * q[1]) as f64 * q[2].div_ceil(bq) as f64;
                let all = rows * k[2].div_ceil(bk) as f64;
                let partial = if a.mask.is_some() || a.segments {
                    all
                } else if k[2] % bk != 0 {
                    rows
                } else {
                    0.0
                };
                (all, partial)
            }
        };
        let scores = blocks * (bq * bk) as f64;
        let mask_ops = a.mask.as_ref().map_or(1, MaskExpr::node_count) as f64 + 1.0;
        let peak = if half {
            self.half_matmul_gflops.unwrap_or(self.matmul_gflops)
        } else {
            self.matmul_gflops
        };
        let mut contraction = scores * 2.0 * (dk + dv) / peak;
        if bq > 64 {
            // Taller tiles than measured best: the score and output tiles leave L1.
            contraction *= TALL_TILE_PENALTY;
        }
        let softmax = scores * SOFTMAX_OPS_PER_SCORE;
        let mask = partial * (bq * bk) as f64 * mask_ops;
        let rescale = blocks * (bq as f64 * (dv + 8.0) + BLOCK_OVERHEAD_OPS);
        Some(contraction + (softmax + mask + rescale) / self.vector_gflops)
    }

    /// Compute time (ns) of a `linear_attention` in its form, and the bytes of the
    /// intermediates it writes and reads back beyond its operands and result (as
    /// the CPU runs it: the parallel and chunkwise forms as their expansion's plain
    /// ops, the recurrent form as one kernel). The state `kᵀ·v` and the readout
    /// `q·S` of the parallel form run at the contraction peak; a chunk's batched
    /// small GEMMs at [`CHUNK_GEMM_EFFICIENCY`] of it; masking and decay weights, the
    /// scan over chunk states and the recurrent loop (a rank-1 update and a
    /// matrix-vector product per step, no reuse for a GEMM) at the vector rate.
    /// Every pass over an intermediate is counted.
    fn linear_compute(&self, l: &attnc_ir::LinearAttention, args: &[&[usize]]) -> (f64, f64) {
        use attnc_ir::{Decay, LinearForm};
        let (q, v) = (args[0], args[2]);
        let (r, n, dk) = ((q[0] * q[1]) as f64, q[2] as f64, q[3] as f64);
        let dv = (v[3] + l.normalize as usize) as f64;
        let decayed = l.decay != Decay::None;
        let state = 2.0 * n * dk * dv;
        // A row of values: `[v, 1]` written, the result sliced and divided.
        let rows = 4.0 * n * dv;
        let normalizer = if l.normalize { 3.0 * rows } else { 0.0 };
        // Per chunk of `c` rows: scores (written, masked, read), their weights, their
        // product with `v` and its sum with the state's part.
        let chunks = |c: f64| {
            let contraction = 2.0 * n * c * (dk + dv);
            let weights = n * c * if decayed { 4.0 } else { 1.0 };
            (contraction, weights, 3.0 * 4.0 * n * c + 3.0 * rows)
        };
        let gemm = self.matmul_gflops;
        let (contraction, peak, vector, traffic) = match l.form {
            LinearForm::Parallel if !l.causal => (2.0 * state, gemm, n * dv, rows),
            LinearForm::Parallel => {
                let (c, w, t) = chunks(n);
                (c, gemm * CHUNK_GEMM_EFFICIENCY, w, t)
            }
            LinearForm::Chunkwise { chunk } => {
                let c = chunk as f64;
                let (intra, weights, scores) = chunks(c);
                let nc = (n / c).ceil();
                // States: written, scanned (read and written), shifted, read.
                let states = 5.0 * 4.0 * nc * dk * dv;
                let scan = 2.0 * nc * dk * dv;
                let peak = gemm * CHUNK_GEMM_EFFICIENCY;
                (
                    intra + 2.0 * state,
                    peak,
                    weights + scan,
                    scores + states + rows,
                )
            }
            LinearForm::Recurrent => {
                let decay = if decayed { n * dk * dv } else { 0.0 };
                (0.0, gemm, 2.0 * state + decay, 0.0)
            }
        };
        let compute = r * (contraction / peak + vector / self.vector_gflops);
        (compute, r * (traffic + normalizer))
    }

    /// The cost of `node`, a member of class `class`; operand types come from the
    /// analysis.
    pub fn node_cost(&self, egraph: &EGraph, class: egg::Id, node: &Attn) -> Cost {
        match &egraph[class].data.ty {
            Some(ty) => self.node_cost_typed(egraph, node, ty),
            None => Cost(0.0),
        }
    }

    /// The cost of `node` whose result type is `ty`.
    pub fn node_cost_typed(&self, egraph: &EGraph, node: &Attn, ty: &TensorType) -> Cost {
        let dims = &egraph.analysis.dims;
        let op = match node {
            Attn::Attr(_) => return Cost(0.0),
            Attn::Source(_) => return Cost(0.0),
            _ => {
                let attr = node.attr().and_then(|a| crate::attr_in(egraph, a));
                match node.to_op(attr) {
                    Ok(op) => op,
                    Err(_) => return Cost::INFINITE,
                }
            }
        };
        let mut args = Vec::new();
        for &c in node.operands() {
            let Some(t) = &egraph[c].data.ty else {
                return Cost::INFINITE;
            };
            match dims.resolve(&t.shape) {
                Ok(s) => args.push((s.iter().map(|&n| n as usize).collect::<Vec<_>>(), t.dtype)),
                Err(_) => return Cost::INFINITE,
            }
        }
        let Ok(out) = dims.resolve(&ty.shape) else {
            return Cost::INFINITE;
        };
        let out: Vec<usize> = out.iter().map(|&n| n as usize).collect();
        let args: Vec<(&[usize], DType)> = args.iter().map(|(s, d)| (s.as_slice(), *d)).collect();
        self.op_cost(&op, &args, (&out, ty.dtype), dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_targets_parse() {
        for name in Target::names() {
            let t = Target::named(name).unwrap_or_else(|| panic!("{name} does not parse"));
            assert_eq!(t.name, name);
        }
        assert_eq!(Target::named("gpu").map(|t| t.name), Some("h200".into()));
        assert!(Target::from_toml("name = \"x\"").is_err());
    }

    #[test]
    fn roofline_takes_the_slower_bound() {
        let t = Target::cpu();
        // 512^3 matmul: 268 MFLOP over 3 MiB: compute-bound on this target.
        let a: &[usize] = &[512, 512];
        let dims = Dims::new();
        let c = t.op_cost(
            &Op::MatMul,
            &[(a, DType::F32), (a, DType::F32)],
            (a, DType::F32),
            &dims,
        );
        let flops = 2.0 * 512f64.powi(3);
        assert_eq!(c.ns(), flops / t.matmul_gflops);
        // An add moves 3 MiB for 262k FLOPs: memory-bound.
        let add = Op::Binary(attnc_ir::BinaryOp::Add);
        let c = t.op_cost(
            &add,
            &[(a, DType::F32), (a, DType::F32)],
            (a, DType::F32),
            &dims,
        );
        assert_eq!(c.ns(), 3.0 * 512.0 * 512.0 * 4.0 / t.bandwidth_gbs);
        assert_eq!(Cost(1234567.0).to_string(), "1.235 ms");
    }
}
