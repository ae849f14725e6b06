//! Sparse mixture of experts: the fused `moe_dispatch` kernel against the dense-gated
//! plain form and the unfused per-expert schedule, with this machine's f32 GEMM
//! rate measured in the same run:
//! `cargo run --release -p attnc-backends --example moe_speed`.
//!
//! Every case runs the same router (`x·w_r + bias`, softmax, top-k mask) on
//! `x [T, D]` and SwiGLU experts (`E` of them, hidden size `H`), f32:
//! - `fused`: `moe_dispatch` (the backend's kernel);
//! - `unfused`: the same op compiled with `ATTNC_MOE_SCHEDULE=unfused` — the same
//!   grouping and packed weights, but the gathered rows materialized, plain GEMMs
//!   (gate and up separately) writing raw results, a separate activation pass and a
//!   weighted scatter-add;
//! - `dense`: every expert for every token, as plain ops — `x·w [E, D, H]` twice,
//!   silu, mul, `[E, T, H]·[E, H, D]`, times the transposed gate `[E, T, 1]`,
//!   `reduce_sum` over `E`;
//! - `gemm`: the GEMM kernel on `[T·k, D]×[D, 2H]` and on `[T·k, H]×[H, D]` (the
//!   shapes of the useful work; `gemm pair`: both, from their best times), and on
//!   a square 2048³ (the kernel's best shape here).
//!
//! Useful FLOPs: router `2·T·D·E` plus `2·T·k·3·D·H` (the GEMM rows count their
//! own FLOPs). `of GEMM`: the rate against the GEMM pair's; `t/fused`: the time
//! against the fused kernel's (above 1: slower); `vs dense`: the largest difference
//! from the dense form's result, relative to its largest value. `hot` binds a
//! router bias that puts every token's first choice on expert 0.
//!
//! Environment: `TOKENS` (default `2048,8192`), `HOT` (tokens of the hot-expert
//! cases, default `2048`), `D`, `H`, `E`, `K` (default 512, 1408, 8, 2), `REPS`
//! (default 5). Freed memory stays mapped (glibc thresholds at 1 GiB, as the `attnc`
//! binary sets them), so no case pays page faults for its temporaries on every call.
use attnc_backends::{CompiledModel, Prepared};
use attnc_ir::{
    BinaryOp, CmpOp, DType, Dims, Graph, GraphBuilder, MoeChoice, MoeDispatch, MoeShared, NodeId,
    Op, ReduceKind, Shape, Tensor, TopKOutput, UnaryOp,
};
use std::collections::HashMap;
use std::time::Instant;

#[derive(Clone, Copy)]
struct Config {
    t: u64,
    d: u64,
    h: u64,
    e: u64,
    k: u64,
}

/// Inputs and router: `x`, the expert weights and the top-k gate `[T, E]`.
fn router(b: &mut GraphBuilder, c: Config) -> (NodeId, NodeId, [NodeId; 3]) {
    let Config { t, d, h, e, k } = c;
    let x = b.input("x", Shape::new([t, d]), DType::F32).unwrap();
    let wr = b.param("w_router", Shape::new([d, e]), DType::F32).unwrap();
    let bias = b.input("bias", Shape::new([e]), DType::F32).unwrap();
    let wg = b
        .param("w_gate", Shape::new([e, d, h]), DType::F32)
        .unwrap();
    let wu = b.param("w_up", Shape::new([e, d, h]), DType::F32).unwrap();
    let wd = b
        .param("w_down", Shape::new([e, h, d]), DType::F32)
        .unwrap();
    let logits = b.op(Op::MatMul, &[x, wr]).unwrap();
    let logits = b.op(Op::Binary(BinaryOp::Add), &[logits, bias]).unwrap();
    let probs = b.op(Op::Softmax { axis: 1 }, &[logits]).unwrap();
    let top = b
        .op(
            Op::TopK {
                k,
                output: TopKOutput::Values,
            },
            &[probs],
        )
        .unwrap();
    let kth = b
        .op(
            Op::Slice {
                axis: 1,
                start: (k - 1).into(),
                end: k.into(),
            },
            &[top],
        )
        .unwrap();
    let keep = b.op(Op::Compare(CmpOp::Ge), &[probs, kth]).unwrap();
    let zero = b.constant(0.0, DType::F32).unwrap();
    let gate = b.op(Op::Select, &[keep, probs, zero]).unwrap();
    (x, gate, [wg, wu, wd])
}

fn sparse(c: Config) -> Graph {
    let mut b = GraphBuilder::new("moe", Dims::new());
    let (x, gate, [wg, wu, wd]) = router(&mut b, c);
    let m = MoeDispatch {
        activation: UnaryOp::Silu,
        gated: true,
        choice: MoeChoice::Token,
        k: c.k,
        shared: MoeShared::None,
    };
    let y = b.op(Op::MoeDispatch(m), &[x, gate, wg, wu, wd]).unwrap();
    b.output("y", y).unwrap();
    b.finish().unwrap()
}

/// The router alone, its gate as the output (to report the experts' loads).
fn gate_only(c: Config) -> Graph {
    let mut b = GraphBuilder::new("router", Dims::new());
    let (_, gate, _) = router(&mut b, c);
    b.output("gate", gate).unwrap();
    b.finish().unwrap()
}

fn dense(c: Config) -> Graph {
    let mut b = GraphBuilder::new("moe_dense", Dims::new());
    let (x, gate, [wg, wu, wd]) = router(&mut b, c);
    let g = b.op(Op::MatMul, &[x, wg]).unwrap();
    let u = b.op(Op::MatMul, &[x, wu]).unwrap();
    let a = b.op(Op::Unary(UnaryOp::Silu), &[g]).unwrap();
    let hidden = b.op(Op::Binary(BinaryOp::Mul), &[a, u]).unwrap();
    let y = b.op(Op::MatMul, &[hidden, wd]).unwrap();
    let gt = b.op(Op::Transpose { perm: vec![1, 0] }, &[gate]).unwrap();
    let gt = b
        .op(
            Op::Reshape {
                shape: Shape::new([c.e, c.t, 1]),
            },
            &[gt],
        )
        .unwrap();
    let y = b.op(Op::Binary(BinaryOp::Mul), &[y, gt]).unwrap();
    let y = b
        .op(
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: vec![0],
                keep_dims: false,
            },
            &[y],
        )
        .unwrap();
    b.output("y", y).unwrap();
    b.finish().unwrap()
}

fn gemm(m: u64, n: u64, k: u64) -> Graph {
    let mut b = GraphBuilder::new("gemm", Dims::new());
    let x = b.input("a", Shape::new([m, k]), DType::F32).unwrap();
    let w = b.param("b", Shape::new([k, n]), DType::F32).unwrap();
    let y = b.op(Op::MatMul, &[x, w]).unwrap();
    b.output("c", y).unwrap();
    b.finish().unwrap()
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

/// A compiled case with its buffers; `best` is its best time so far.
struct Case {
    name: String,
    model: CompiledModel,
    prepared: Prepared,
    best: f64,
}

impl Case {
    fn new(name: &str, g: &Graph, bindings: Option<&HashMap<String, Tensor>>) -> Case {
        let t = Instant::now();
        let model = CompiledModel::new(g).unwrap();
        eprintln!("  compiled {name} in {:.2} s", t.elapsed().as_secs_f64());
        let prepared = match bindings {
            Some(b) => model.prepare(b).unwrap(),
            None => model.prepare_random(g, 1).unwrap(),
        };
        Case {
            name: name.into(),
            model,
            prepared,
            best: f64::MAX,
        }
    }

    fn time(&mut self) -> f64 {
        let t = Instant::now();
        self.model.run_prepared(&mut self.prepared).unwrap();
        let s = t.elapsed().as_secs_f64();
        self.best = self.best.min(s);
        s
    }

    fn output(&self) -> Tensor {
        self.model.outputs(&self.prepared).remove(0)
    }
}

fn keep_freed_memory_mapped() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: `mallopt` only changes glibc's allocation thresholds; called before
    // any other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 30);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Largest difference between `a` and `b`, relative to the largest value of `b`.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.data.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    a.max_abs_diff(b) / scale
}

fn main() {
    keep_freed_memory_mapped();
    let (d, h, e, k) = (env("D", 512), env("H", 1408), env("E", 8), env("K", 2));
    let reps = env("REPS", 5) as usize;
    let tokens = env_list("TOKENS", "2048,8192");
    let hot = env_list("HOT", "2048");
    let mut runs: Vec<(u64, bool)> = tokens.iter().map(|&t| (t, false)).collect();
    runs.extend(hot.iter().map(|&t| (t, true)));
    println!(
        "moe_dispatch: top-{k} of {e} SwiGLU experts, D={d} H={h}, f32, best of {reps}; threads: {}",
        std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| "all".into())
    );
    println!(
        "{:>5} {:>4} {:>10} {:>10} {:>12} {:>9} {:>8} {:>9} {:>9}",
        "T", "hot", "case", "ms", "tokens/s", "GFLOP/s", "of GEMM", "t/fused", "vs dense"
    );
    let mut loads = Vec::new();
    for (t, is_hot) in runs {
        let c = Config { t, d, h, e, k };
        let useful = 2.0 * (t * d * e) as f64 + 2.0 * (t * k * 3 * d * h) as f64;
        let g_sparse = sparse(c);
        let mut bindings = attnc_ir::random_bindings(&g_sparse, 1);
        let mut bias = vec![0.0; e as usize];
        if is_hot {
            // Large enough to win every row, small enough that the other
            // probabilities stay normal floats (and distinct).
            bias[0] = 20.0;
        }
        bindings.insert(
            "bias".into(),
            Tensor::new(DType::F32, vec![e as usize], bias),
        );
        let router_graph = gate_only(c);
        let gate = &CompiledModel::new(&router_graph)
            .unwrap()
            .run(&bindings)
            .unwrap()[0];
        let load: Vec<usize> = (0..e as usize)
            .map(|x| {
                gate.data
                    .iter()
                    .skip(x)
                    .step_by(e as usize)
                    .filter(|&&v| v != 0.0)
                    .count()
            })
            .collect();
        eprintln!("  T={t}: tokens per expert {load:?}");
        loads.push(format!(
            "T={t}{}: {load:?}",
            if is_hot { " hot" } else { "" }
        ));
        let mut cases = vec![Case::new("fused", &g_sparse, Some(&bindings))];
        std::env::set_var("ATTNC_MOE_SCHEDULE", "unfused");
        cases.push(Case::new("unfused", &g_sparse, Some(&bindings)));
        std::env::remove_var("ATTNC_MOE_SCHEDULE");
        cases.push(Case::new("dense", &dense(c), Some(&bindings)));
        let tk = t * k;
        cases.push(Case::new("gemm up", &gemm(tk, 2 * h, d), None));
        cases.push(Case::new("gemm down", &gemm(tk, d, h), None));
        cases.push(Case::new("gemm 2048³", &gemm(2048, 2048, 2048), None));
        // Every case once, then `reps` rounds of all of them in turn.
        for _ in 0..=reps {
            for case in cases.iter_mut() {
                case.time();
            }
        }
        let flops = [
            useful,
            useful,
            useful,
            2.0 * (tk * 2 * h * d) as f64,
            2.0 * (tk * d * h) as f64,
            2.0 * 2048f64.powi(3),
        ];
        let rate = |i: usize| flops[i] / cases[i].best / 1e9;
        // The pair: both GEMMs' best times together.
        let pair_best = cases[3].best + cases[4].best;
        let pair_rate = (flops[3] + flops[4]) / pair_best / 1e9;
        let want = cases[2].output();
        let fused = cases[0].best;
        for (i, case) in cases.iter().enumerate() {
            let diff = if i <= 2 {
                rel_diff(&case.output(), &want)
            } else {
                f64::NAN
            };
            println!(
                "{t:>5} {:>4} {:>10} {:>10.2} {:>12.0} {:>9.1} {:>7.1}% {:>8.2}x {:>9.1e}",
                if is_hot { "yes" } else { "" },
                case.name,
                case.best * 1e3,
                if i <= 2 {
                    t as f64 / case.best
                } else {
                    f64::NAN
                },
                rate(i),
                100.0 * rate(i) / pair_rate,
                case.best / fused,
                diff
            );
        }
        println!(
            "{t:>5} {:>4} {:>10} {:>10.2} {:>12} {:>9.1} {:>7.1}%",
            if is_hot { "yes" } else { "" },
            "gemm pair",
            pair_best * 1e3,
            "",
            pair_rate,
            100.0
        );
        println!(
            "      fused: {:.1}% of the up-GEMM rate, {:.1}% of the GEMM pair's, {:.1}% of the 2048³ GEMM's; fused/dense {:.2}x, fused/unfused {:.2}x",
            100.0 * rate(0) / rate(3),
            100.0 * rate(0) / pair_rate,
            100.0 * rate(0) / rate(5),
            cases[2].best / fused,
            cases[1].best / fused
        );
    }
    println!("tokens per expert: {}", loads.join("; "));
}
