//! Block-sparse vs dense-masked fused attention, timed in one run (alternating), with
//! the useful FLOP rate against this machine's f32 GEMM rate measured alongside:
//! `cargo run --release -p attnc-backends --example sparse_speed -- N H D MASK [NAME=V ...]`
//! e.g. `-- 4096 8 64 "k <= q && q - k < window" window=256`. `BLOCKS=64x64,32x32`
//! picks the block sizes (default: all the optimizer offers); `REPS` the repetitions.
use attnc_backends::CompiledModel;
use attnc_ir::{Attention, BlockLayout, DType, Dims, Graph, GraphBuilder, MaskExpr, Op, Shape};
use std::time::Instant;

fn attention(
    n: u64,
    h: u64,
    d: u64,
    dims: &Dims,
    mask: &MaskExpr,
    block: Option<[u64; 2]>,
) -> Graph {
    let mut b = GraphBuilder::new("attn", dims.clone());
    let q = b.input("q", Shape::new([1, h, n, d]), DType::F32).unwrap();
    let k = b.input("k", Shape::new([1, h, n, d]), DType::F32).unwrap();
    let v = b.input("v", Shape::new([1, h, n, d]), DType::F32).unwrap();
    let a = Attention {
        mask: Some(mask.clone()),
        block,
        ..Attention::new(1.0 / (d as f64).sqrt())
    };
    let y = b.op(Op::Attention(a), &[q, k, v]).unwrap();
    b.output("o", y).unwrap();
    b.finish().unwrap()
}

fn matmul(n: u64) -> Graph {
    let mut b = GraphBuilder::new("gemm", Dims::new());
    let x = b.input("a", Shape::new([n, n]), DType::F32).unwrap();
    let y = b.input("b", Shape::new([n, n]), DType::F32).unwrap();
    let z = b.op(Op::MatMul, &[x, y]).unwrap();
    b.output("c", z).unwrap();
    b.finish().unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args[0].parse().unwrap();
    let h: u64 = args[1].parse().unwrap();
    let d: u64 = args[2].parse().unwrap();
    let mask = MaskExpr::parse(&args[3]).unwrap();
    let mut dims = Dims::new();
    for kv in &args[4..] {
        let (k, v) = kv.split_once('=').unwrap();
        dims.bind(k, v.parse().unwrap());
    }
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let blocks: Vec<[u64; 2]> = match std::env::var("BLOCKS") {
        Ok(s) => s
            .split(',')
            .map(|b| {
                let (q, k) = b.split_once('x').unwrap();
                [q.parse().unwrap(), k.parse().unwrap()]
            })
            .collect(),
        Err(_) => attnc_passes::rules::sparse::BLOCK_SIZES.to_vec(),
    };
    // Useful work: 4·D FLOPs per (query, key) pair the mask keeps.
    let kept: u64 = (0..n as i64)
        .map(|q| {
            (0..n as i64)
                .filter(|&k| mask.holds(0, 0, q, k, &dims))
                .count() as u64
        })
        .sum();
    let useful = 4.0 * (h * d) as f64 * kept as f64;

    let mut cases = vec![(
        "dense".to_string(),
        attention(n, h, d, &dims, &mask, None),
        1.0,
    )];
    for b in &blocks {
        let l = BlockLayout::of(
            Some(&mask),
            &dims,
            [1, h as usize, n as usize, n as usize],
            b.map(|x| x as usize),
        )
        .unwrap();
        cases.push((
            format!("{}x{}", b[0], b[1]),
            attention(n, h, d, &dims, &mask, Some(*b)),
            l.density(),
        ));
    }
    let gemm_n = 2048;
    let gemm = matmul(gemm_n);
    let mut models: Vec<_> = cases
        .iter()
        .map(|(_, g, _)| {
            let m = CompiledModel::new(g).unwrap();
            let p = m.prepare_random(g, 1).unwrap();
            (m, p)
        })
        .collect();
    let gm = CompiledModel::new(&gemm).unwrap();
    let mut gp = gm.prepare_random(&gemm, 1).unwrap();
    gm.run_prepared(&mut gp).unwrap();
    let mut best = vec![f64::MAX; models.len()];
    let mut gemm_best = f64::MAX;
    for (m, p) in models.iter_mut() {
        m.run_prepared(p).unwrap();
    }
    for _ in 0..reps {
        let t = Instant::now();
        gm.run_prepared(&mut gp).unwrap();
        gemm_best = gemm_best.min(t.elapsed().as_secs_f64());
        for (i, (m, p)) in models.iter_mut().enumerate() {
            let t = Instant::now();
            m.run_prepared(p).unwrap();
            best[i] = best[i].min(t.elapsed().as_secs_f64());
        }
    }
    let gemm_rate = 2.0 * (gemm_n as f64).powi(3) / gemm_best / 1e9;
    println!(
        "N={n} H={h} D={d} mask `{mask}`: kept {:.4} of the scores; f32 GEMM {gemm_n}^3 {gemm_rate:.1} GFLOP/s",
        kept as f64 / (n * n) as f64
    );
    println!(
        "{:>8} {:>9} {:>10} {:>8} {:>8} {:>9} {:>8}",
        "blocks", "density", "ms", "GFLOP/s", "of GEMM", "speedup", "of 1/d"
    );
    for (i, (name, _, density)) in cases.iter().enumerate() {
        let speedup = best[0] / best[i];
        let rate = useful / best[i] / 1e9;
        println!(
            "{name:>8} {density:>9.4} {:>10.3} {rate:>8.1} {:>7.1}% {speedup:>8.2}x {:>7.1}%",
            best[i] * 1e3,
            100.0 * rate / gemm_rate,
            100.0 * speedup * density
        );
    }
}
