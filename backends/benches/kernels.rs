//! The CPU backend's kernels against the machine's fp32 GEMM peak, in one run:
//!
//! - `gemm/openblas/2048` — OpenBLAS `cblas_sgemm` (loaded at run time, all cores;
//!   `OPENBLAS_CORETYPE=SkylakeX` unless set: Debian's 0.3.21 does not know
//!   Sapphire Rapids and would fall back to generic kernels) — the peak;
//! - `gemm/attnc/2048` — attnc's GEMM kernel, compiled from a one-matmul graph;
//! - `attention/{full,causal}/N` — fused attention, B=1 H=8 D=64, N = 512 … 8192;
//! - `attention/gqa32-8-d128/4096` — GQA 32 query / 8 KV heads, D=128;
//! - `moe/top2-of-8-swiglu/2048` — `moe_dispatch`, 2048 tokens each routed to 2 of 8
//!   SwiGLU experts (D=512, H=1408), a random top-2 gate.
//!
//! Attention counts only the useful matmul FLOPs, 4·B·H·N²·D (half of it causal);
//! the mixture those of the selected pairs, 2·T·k·3·D·H.
//! After criterion's own report, a table gives each case's best time as GFLOP/s and
//! as a fraction of the OpenBLAS peak measured in this run.
//!
//! `cargo bench -p attnc-backends --bench kernels` (add `-- gemm` to run a subset).

use attnc_backends::{CompiledModel, Prepared};
use attnc_ir::{
    random_bindings, Attention, DType, Dims, Graph, GraphBuilder, MaskExpr, MoeChoice, MoeDispatch,
    MoeShared, Op, Shape, Tensor, UnaryOp,
};
use criterion::Criterion;
use std::time::{Duration, Instant};

/// A benchmark case: its name, useful FLOPs per call, and the call.
struct Case {
    name: String,
    flops: f64,
    run: Box<dyn FnMut()>,
}

fn case(name: impl Into<String>, flops: f64, run: impl FnMut() + 'static) -> Case {
    Case {
        name: name.into(),
        flops,
        run: Box::new(run),
    }
}

fn seconds(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn compiled(graph: &Graph) -> (CompiledModel, Prepared) {
    let model = CompiledModel::new(graph).expect("compiles");
    let prepared = model.prepare(&random_bindings(graph, 1)).expect("binds");
    (model, prepared)
}

fn gemm_graph(n: u64) -> Graph {
    let mut b = GraphBuilder::new("gemm", Dims::new());
    let x = b.input("a", Shape::new([n, n]), DType::F32).unwrap();
    let w = b.param("b", Shape::new([n, n]), DType::F32).unwrap();
    let y = b.op(Op::MatMul, &[x, w]).unwrap();
    b.output("c", y).unwrap();
    b.finish().unwrap()
}

fn attention_graph(n: u64, h: u64, hk: u64, d: u64, causal: bool) -> Graph {
    let mut b = GraphBuilder::new("attention", Dims::new());
    let q = b.input("q", Shape::new([1, h, n, d]), DType::F32).unwrap();
    let k = b.input("k", Shape::new([1, hk, n, d]), DType::F32).unwrap();
    let v = b.input("v", Shape::new([1, hk, n, d]), DType::F32).unwrap();
    let mut a = Attention::new(1.0 / (d as f64).sqrt());
    a.groups = h / hk;
    if causal {
        a.mask = Some(MaskExpr::parse("k <= q").unwrap());
    }
    let y = b.op(Op::Attention(a), &[q, k, v]).unwrap();
    b.output("o", y).unwrap();
    b.finish().unwrap()
}

/// `moe_dispatch` over `x [t, d]` and a gate input `[t, e]`, SwiGLU experts; with
/// its bindings: random, the gate `k` distinct experts per token.
fn moe_case(t: u64, d: u64, e: u64, h: u64, k: u64) -> (CompiledModel, Prepared) {
    let mut b = GraphBuilder::new("moe", Dims::new());
    let x = b.input("x", Shape::new([t, d]), DType::F32).unwrap();
    let gate = b.input("gate", Shape::new([t, e]), DType::F32).unwrap();
    let w = ["w_gate", "w_up"].map(|n| b.param(n, Shape::new([e, d, h]), DType::F32).unwrap());
    let wd = b
        .param("w_down", Shape::new([e, h, d]), DType::F32)
        .unwrap();
    let m = MoeDispatch {
        activation: UnaryOp::Silu,
        gated: true,
        choice: MoeChoice::Token,
        k,
        shared: MoeShared::None,
    };
    let y = b
        .op(Op::MoeDispatch(m), &[x, gate, w[0], w[1], wd])
        .unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    let mut bindings = random_bindings(&g, 1);
    let (t, e) = (t as usize, e as usize);
    let mut values = vec![0.0; t * e];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for row in values.chunks_mut(e) {
        let mut picked = 0;
        while picked < k as usize {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let c = (state % e as u64) as usize;
            if row[c] == 0.0 {
                row[c] = 0.5;
                picked += 1;
            }
        }
    }
    bindings.insert("gate".into(), Tensor::new(DType::F32, vec![t, e], values));
    let model = CompiledModel::new(&g).expect("compiles");
    let prepared = model.prepare(&bindings).expect("binds");
    (model, prepared)
}

type Sgemm = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);

fn openblas() -> Option<(libloading::Library, Sgemm)> {
    if std::env::var_os("OPENBLAS_CORETYPE").is_none() {
        // SAFETY: set before any other thread exists and before OpenBLAS is loaded.
        unsafe { std::env::set_var("OPENBLAS_CORETYPE", "SkylakeX") };
    }
    for name in ["libopenblas.so.0", "libopenblas.so"] {
        // SAFETY: loading OpenBLAS runs only its own initializers.
        if let Ok(lib) = unsafe { libloading::Library::new(name) } {
            // SAFETY: `cblas_sgemm` has this C signature in every OpenBLAS.
            let f = unsafe { lib.get::<Sgemm>(b"cblas_sgemm\0").map(|s| *s) };
            if let Ok(f) = f {
                return Some((lib, f));
            }
        }
    }
    None
}

/// The reference GEMM (OpenBLAS, or attnc's own if OpenBLAS is missing) and every
/// case.
fn cases() -> (Case, Vec<Case>) {
    let n = 2048usize;
    let flops = 2.0 * (n * n * n) as f64;
    let g = gemm_graph(n as u64);
    let (model, mut p) = compiled(&g);
    let ours = case("gemm/attnc/2048", flops, move || {
        model.run_prepared(&mut p).unwrap()
    });
    let mut all = Vec::new();
    let peak = match openblas() {
        Some((lib, sgemm)) => {
            let a = vec![0.5f32; n * n];
            let b = vec![0.25f32; n * n];
            let mut out = vec![0f32; n * n];
            let ni = n as i32;
            all.push(ours);
            case("gemm/openblas/2048", flops, move || {
                let _keep_loaded = &lib;
                // SAFETY: row-major (101), no transposes (111): A, B, C are n×n with
                // leading dimension n, allocated above.
                unsafe {
                    sgemm(
                        101,
                        111,
                        111,
                        ni,
                        ni,
                        ni,
                        1.0,
                        a.as_ptr(),
                        ni,
                        b.as_ptr(),
                        ni,
                        0.0,
                        out.as_mut_ptr(),
                        ni,
                    )
                }
            })
        }
        None => {
            eprintln!("OpenBLAS not found (apt-get install libopenblas-dev): attnc's GEMM is the reference");
            ours
        }
    };
    for n in [512u64, 1024, 2048, 4096, 8192] {
        for causal in [false, true] {
            let g = attention_graph(n, 8, 8, 64, causal);
            let (model, mut p) = compiled(&g);
            let flops = 4.0 * (8 * n * n * 64) as f64 * if causal { 0.5 } else { 1.0 };
            let kind = if causal { "causal" } else { "full" };
            all.push(case(format!("attention/{kind}/{n}"), flops, move || {
                model.run_prepared(&mut p).unwrap()
            }));
        }
    }
    let n = 4096u64;
    let g = attention_graph(n, 32, 8, 128, false);
    let (model, mut p) = compiled(&g);
    let flops = 4.0 * (32 * n * n * 128) as f64;
    all.push(case("attention/gqa32-8-d128/4096", flops, move || {
        model.run_prepared(&mut p).unwrap()
    }));
    let (t, d, e, h, k) = (2048u64, 512, 8, 1408, 2);
    let (model, mut p) = moe_case(t, d, e, h, k);
    let flops = 2.0 * (t * k * 3 * d * h) as f64;
    all.push(case("moe/top2-of-8-swiglu/2048", flops, move || {
        model.run_prepared(&mut p).unwrap()
    }));
    (peak, all)
}

/// Each case as a fraction of the reference GEMM's GFLOP/s: `pairs` times, one GEMM
/// then the case repeated to take about as long, back to back; the median ratio is
/// reported (the clock of a shared machine drifts; in a pair it mostly cancels).
fn table(peak: &mut Case, all: &mut [Case], pairs: usize) {
    println!(
        "\nfraction of {} (paired runs, median of {pairs})",
        peak.name
    );
    println!(
        "{:<32} {:>10} {:>10} {:>10} {:>10}",
        "case", "median ms", "GFLOP/s", "peak GF/s", "fraction"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let t_peak = seconds(&mut peak.run);
    for c in all.iter_mut() {
        let reps = (t_peak / seconds(&mut c.run)).round().clamp(1.0, 1000.0) as usize;
        let (mut ratios, mut ms, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..pairs {
            let tp = seconds(&mut peak.run);
            let tc = (0..reps).map(|_| seconds(&mut c.run)).sum::<f64>() / reps as f64;
            let (gp, gc) = (peak.flops / tp / 1e9, c.flops / tc / 1e9);
            ratios.push(gc / gp);
            ms.push(tc * 1e3);
            peaks.push(gp);
        }
        let t = median(&mut ms);
        println!(
            "{:<32} {t:>10.3} {:>10.1} {:>10.1} {:>9.0}%",
            c.name,
            c.flops / t / 1e6,
            median(&mut peaks),
            100.0 * median(&mut ratios)
        );
    }
}

fn bench(c: &mut Criterion, peak: &mut Case, all: &mut [Case]) {
    for k in std::iter::once(peak).chain(all.iter_mut()) {
        c.bench_function(&k.name, |b| b.iter(&mut k.run));
    }
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let (mut peak, mut all) = cases();
    all.retain(|c| filter.as_deref().is_none_or(|f| c.name.contains(f)));
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c, &mut peak, &mut all);
    c.final_summary();
    table(&mut peak, &mut all, 9);
}
