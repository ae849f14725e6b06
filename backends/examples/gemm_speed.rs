//! Quick GEMM timing: `cargo run --release -p attnc-backends --example gemm_speed -- M N K`.
use attnc_ir::{random_bindings, DType, Dims, GraphBuilder, Op, Shape};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (m, n, k) = (args[0], args[1], args[2]);
    let mut b = GraphBuilder::new("gemm", Dims::new());
    let x = b
        .input("a", Shape::new([m as u64, k as u64]), DType::F32)
        .unwrap();
    let w = b
        .param("b", Shape::new([k as u64, n as u64]), DType::F32)
        .unwrap();
    let y = b.op(Op::MatMul, &[x, w]).unwrap();
    b.output("c", y).unwrap();
    let g = b.finish().unwrap();
    if let Ok(path) = std::env::var("DUMP") {
        std::fs::write(path, attnc_backends::emit_llvm_ir(&g).unwrap()).unwrap();
    }
    let t = Instant::now();
    let model = attnc_backends::CompiledModel::new(&g).unwrap();
    eprintln!("compile {:?}", t.elapsed());
    let mut p = model.prepare(&random_bindings(&g, 1)).unwrap();
    model.run_prepared(&mut p).unwrap();
    let mut s = f64::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        model.run_prepared(&mut p).unwrap();
        s = s.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{m}x{n}x{k}: {:.3} ms, {:.1} GFLOP/s",
        s * 1e3,
        2.0 * (m * n * k) as f64 / s / 1e9
    );
}
