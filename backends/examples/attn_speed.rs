//! Quick fused-attention timing:
//! `cargo run --release -p attnc-backends --example attn_speed -- N H HKV D [causal]`.
use attnc_ir::{Attention, DType, Dims, GraphBuilder, MaskExpr, Op, Shape};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args[0].parse().unwrap();
    let h: u64 = args[1].parse().unwrap();
    let hk: u64 = args[2].parse().unwrap();
    let d: u64 = args[3].parse().unwrap();
    let causal = args.get(4).is_some_and(|a| a == "causal");
    let mut b = GraphBuilder::new("attn", Dims::new());
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
    let g = b.finish().unwrap();
    if let Ok(path) = std::env::var("DUMP") {
        std::fs::write(path, attnc_backends::emit_llvm_ir(&g).unwrap()).unwrap();
    }
    let model = attnc_backends::CompiledModel::new(&g).unwrap();
    let mut p = model.prepare_random(&g, 1).unwrap();
    model.run_prepared(&mut p).unwrap();
    let mut s = f64::MAX;
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    for _ in 0..reps {
        let t = Instant::now();
        model.run_prepared(&mut p).unwrap();
        s = s.min(t.elapsed().as_secs_f64());
    }
    let flops = 4.0 * (h * n * n * d) as f64 * if causal { 0.5 } else { 1.0 };
    // Peak resident memory of the process: the inputs, the output and the kernel's own.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: ?")
        .to_string();
    let tensors = 4.0 * (2 * h + 2 * hk) as f64 * (n * d) as f64 / (1 << 20) as f64;
    println!(
        "N={n} H={h}/{hk} D={d} causal={causal}: {:.3} ms, {:.1} GFLOP/s; q,k,v,o {tensors:.0} MiB, {hwm}",
        s * 1e3,
        flops / s / 1e9
    );
}
