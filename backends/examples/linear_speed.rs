//! Linear attention in each of its forms vs dense fused (quadratic) attention, timed
//! in one run (alternating), with the useful FLOP rate against this machine's f32
//! GEMM rate measured alongside:
//! `cargo run --release -p attnc-backends --example linear_speed -- N H D [causal|noncausal]`
//! (B = 1, Dk = Dv = D, normalized, no decay, f32). `FORMS` picks the forms (default
//! `parallel,chunkwise:32,chunkwise:64,chunkwise:128,recurrent`; non-causal has only
//! the parallel form), `REPS` the repetitions, `GEMM` the side of the square GEMM
//! (default 1024).
use attnc_backends::CompiledModel;
use attnc_ir::{
    Attention, DType, Decay, Dims, Graph, GraphBuilder, LinearAttention, LinearForm, MaskExpr, Op,
    Shape,
};
use std::time::Instant;

fn inputs(b: &mut GraphBuilder, n: u64, h: u64, d: u64) -> [attnc_ir::NodeId; 3] {
    ["q", "k", "v"].map(|name| b.input(name, Shape::new([1, h, n, d]), DType::F32).unwrap())
}

fn linear(n: u64, h: u64, d: u64, causal: bool, form: LinearForm) -> Graph {
    let mut b = GraphBuilder::new("linear", Dims::new());
    let [q, k, v] = inputs(&mut b, n, h, d);
    let l = LinearAttention {
        causal,
        decay: Decay::None,
        normalize: true,
        form,
    };
    let y = b.op(Op::LinearAttention(l), &[q, k, v]).unwrap();
    b.output("o", y).unwrap();
    b.finish().unwrap()
}

fn dense(n: u64, h: u64, d: u64, causal: bool) -> Graph {
    let mut b = GraphBuilder::new("attn", Dims::new());
    let [q, k, v] = inputs(&mut b, n, h, d);
    let a = Attention {
        mask: causal.then(|| MaskExpr::parse("k <= q").unwrap()),
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

fn parse_form(s: &str) -> LinearForm {
    match s.split_once(':') {
        Some(("chunkwise", c)) => LinearForm::Chunkwise {
            chunk: c.parse().unwrap(),
        },
        _ if s == "parallel" => LinearForm::Parallel,
        _ if s == "recurrent" => LinearForm::Recurrent,
        _ => panic!("unknown form `{s}`: parallel, chunkwise:C or recurrent"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args[0].parse().unwrap();
    let h: u64 = args[1].parse().unwrap();
    let d: u64 = args[2].parse().unwrap();
    let causal = match args.get(3).map(String::as_str) {
        None | Some("causal") => true,
        Some("noncausal") => false,
        Some(other) => panic!("`{other}`: causal or noncausal"),
    };
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let gemm_n: u64 = std::env::var("GEMM")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1024);
    let forms = std::env::var("FORMS")
        .unwrap_or_else(|_| "parallel,chunkwise:32,chunkwise:64,chunkwise:128,recurrent".into());
    let mut cases: Vec<(String, Graph)> = vec![("dense".to_string(), dense(n, h, d, causal))];
    for f in forms.split(',').filter(|f| !f.is_empty()) {
        let form = parse_form(f);
        let valid = match form {
            LinearForm::Parallel => true,
            LinearForm::Chunkwise { chunk } => causal && n.is_multiple_of(chunk),
            LinearForm::Recurrent => causal,
        };
        if !valid {
            eprintln!("skipping `{f}`: not a form of this attention");
            continue;
        }
        cases.push((f.to_string(), linear(n, h, d, causal, form)));
    }
    // Useful work of linear attention: the state `kᵀ·[v, 1]` and its product with
    // the queries, `2·N·D·(D + 1)` FLOPs each.
    let useful = 4.0 * (h * n * d * (d + 1)) as f64;
    let gemm = matmul(gemm_n);
    let mut compile = Vec::new();
    let mut models: Vec<_> = cases
        .iter()
        .map(|(_, g)| {
            let t = Instant::now();
            let m = CompiledModel::new(g).unwrap();
            compile.push(t.elapsed().as_secs_f64());
            let p = m.prepare_random(g, 1).unwrap();
            (m, p)
        })
        .collect();
    let gm = CompiledModel::new(&gemm).unwrap();
    let mut gp = gm.prepare_random(&gemm, 1).unwrap();
    gm.run_prepared(&mut gp).unwrap();
    for (m, p) in models.iter_mut() {
        m.run_prepared(p).unwrap();
    }
    let mut best = vec![f64::MAX; models.len()];
    let mut gemm_best = f64::MAX;
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
        "N={n} H={h} D={d} {}: useful {:.3} GFLOP; f32 GEMM {gemm_n}^3 {gemm_rate:.1} GFLOP/s",
        if causal { "causal" } else { "non-causal" },
        useful / 1e9
    );
    println!(
        "{:>14} {:>10} {:>9} {:>8} {:>10} {:>9} {:>10}",
        "form", "ms", "GFLOP/s", "of GEMM", "ms/token", "speedup", "compile s"
    );
    for (i, (name, _)) in cases.iter().enumerate() {
        let rate = useful / best[i] / 1e9;
        let (rate, of_gemm) = if i == 0 {
            // The quadratic baseline does other work: no rate of this kind.
            (f64::NAN, f64::NAN)
        } else {
            (rate, 100.0 * rate / gemm_rate)
        };
        println!(
            "{name:>14} {:>10.3} {rate:>9.1} {of_gemm:>7.1}% {:>10.6} {:>8.2}x {:>10.2}",
            best[i] * 1e3,
            best[i] * 1e3 / n as f64,
            best[0] / best[i],
            compile[i]
        );
    }
}
