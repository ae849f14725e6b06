//! Fused attention on the GPU: TFLOP/s of the kernel attnc compiles for one
//! attention op, timed with CUDA events over the launches alone:
//! `cargo run --release -p attnc-backends --example gpu_attention`.
//!
//! Each case is `softmax(q·kᵀ/√D [+ causal mask])·v` with `q, k, v [B, H, N, D]` in
//! bf16 (f32 accumulation), optimized for the H200 as `attnc compile --target gpu`
//! does — so the causal case runs as `block_sparse_attention` over the non-empty
//! tiles — then planned, lowered to PTX and run through the CUDA driver. FLOPs are
//! the useful ones, `4·B·H·N²·D`, halved for causal (FlashAttention's convention),
//! so the rate is comparable with FlashAttention-2's published numbers (~350
//! TFLOP/s bf16 forward at N = 16384, D = 128 on H100-class GPUs).
//!
//! With `CHECK_N` (default 1024) the cases of that N also run on the CPU backend
//! from the same bf16 inputs, and the largest difference is printed; past 2⁻⁶ of
//! the output's scale (bf16 rounding is 2⁻⁸) the run fails.
//!
//! Environment: `N` (default `1024,4096,16384`), `B`, `H`, `D` (4, 32, 128), `REPS`
//! (default 10; the best is reported), `CHECK_N` (`0`: no CPU check). Without a GPU
//! it prints why and exits 1.
use attnc_backends::{compile_gpu, Arch, CompiledModel, GpuModel};
use attnc_ir::{Attention, DType, Dims, Graph, GraphBuilder, MaskExpr, Op, Shape, Tensor};
use std::collections::HashMap;
use std::process::ExitCode;

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {s}"))
        })
        .collect()
}

fn env_one(name: &str, default: u64) -> u64 {
    env_list(name, &default.to_string())[0]
}

fn attention(b: u64, h: u64, n: u64, d: u64, causal: bool) -> Graph {
    let mut g = GraphBuilder::new("attention", Dims::new());
    let shape = Shape::new([b, h, n, d]);
    let q = g.input("q", shape.clone(), DType::BF16).unwrap();
    let k = g.input("k", shape.clone(), DType::BF16).unwrap();
    let v = g.input("v", shape, DType::BF16).unwrap();
    let mut a = Attention::new(1.0 / (d as f64).sqrt());
    if causal {
        a.mask = Some(MaskExpr::parse("k <= q").unwrap());
    }
    let o = g.op(Op::Attention(a), &[q, k, v]).unwrap();
    g.output("o", o).unwrap();
    g.finish().unwrap()
}

/// Uniform values in [-1, 1), rounded to bf16 (splitmix64: fast for 10⁸ elements).
fn random_bf16(sizes: &[usize], seed: u64) -> Tensor {
    let n: usize = sizes.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let data = (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            half::bf16::from_f64(u).to_f64()
        })
        .collect();
    Tensor::new(DType::BF16, sizes.to_vec(), data)
}

fn main() -> ExitCode {
    let (b, h, d) = (env_one("B", 4), env_one("H", 32), env_one("D", 128));
    let reps = env_one("REPS", 10).max(1);
    let check_n = env_one("CHECK_N", 1024);
    let target = attnc_passes::Target::named("h200").unwrap();
    let mut failed = false;
    println!("B={b} H={h} D={d} bf16, best of {reps}");
    for n in env_list("N", "1024,4096,16384") {
        let sizes = [b, h, n, d].map(|x| x as usize);
        // Made once a GPU is there (10⁹ values at the largest N).
        let mut bindings: Option<HashMap<String, Tensor>> = None;
        for causal in [false, true] {
            let plain = attention(b, h, n, d, causal);
            let optimized =
                attnc_passes::optimize(&plain, &attnc_passes::Options::new(target.clone()))
                    .unwrap()
                    .graph;
            let form = optimized
                .node_ids()
                .map(|id| optimized.node(id).op.name())
                .find(|op| op.contains("attention"))
                .unwrap_or("?");
            let program = match compile_gpu(&optimized, Arch::Sm90) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("N={n} causal={causal}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let kernel = program
                .kernels
                .iter()
                .find(|k| k.op.contains("attention"))
                .map(|k| format!("{} block {:?} smem {}", k.name, k.block, k.shared_bytes))
                .unwrap_or_default();
            let model = match GpuModel::new(program, vec!["o".into()]) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let bindings = bindings.get_or_insert_with(|| {
                ["q", "k", "v"]
                    .iter()
                    .enumerate()
                    .map(|(i, name)| (name.to_string(), random_bf16(&sizes, i as u64 + 1)))
                    .collect()
            });
            model.bind(bindings).unwrap();
            model.execute().unwrap();
            let mut best = f64::MAX;
            for _ in 0..reps {
                best = best.min(model.execute().unwrap());
            }
            let flops = 4.0 * (b * h * n * n * d) as f64 * if causal { 0.5 } else { 1.0 };
            let tflops = flops / (best * 1e-3) / 1e12;
            let mut line = format!(
                "N={n:<6} causal={causal:<5} {form:<24} {best:>9.3} ms {tflops:>7.1} TFLOP/s  ({:.0}% of 350)  [{kernel}]",
                100.0 * tflops / 350.0
            );
            if n == check_n {
                let got = model.outputs().unwrap().remove(0);
                let cpu = CompiledModel::new(&optimized).unwrap();
                let want = cpu.run(bindings).unwrap().remove(0);
                let scale = want.data.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
                let diff = got.max_abs_diff(&want) / scale;
                line += &format!("  vs CPU: {diff:.2e}");
                if diff.is_nan() || diff > 1.0 / 64.0 {
                    line += "  FAILED";
                    failed = true;
                }
            }
            println!("{line}");
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
