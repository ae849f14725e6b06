//! Temporaries are freed: running a model many times does not grow the process.
//! (Its own test binary, so no other test allocates meanwhile.)

mod common;

use attnc_backends::CompiledModel;
use attnc_ir::{BinaryOp, DType, Op, UnaryOp};
use common::{graph, shape};

/// Resident set size in bytes (Linux).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[test]
fn repeated_runs_do_not_leak_temporaries() {
    // Several 1 MiB temporaries per run: 200 leaking runs would add well over 500 MiB.
    let g = graph(|b| {
        let x = b.input("x", shape(&[512, 512]), DType::F32)?;
        let e = b.op(Op::Unary(UnaryOp::Exp), &[x])?;
        let t = b.op(Op::Transpose { perm: vec![1, 0] }, &[e])?;
        let s = b.op(Op::Binary(BinaryOp::Add), &[t, x])?;
        let m = b.op(Op::Softmax { axis: 1 }, &[s])?;
        Ok(vec![b.op(
            Op::Slice {
                axis: 0,
                start: 0u64.into(),
                end: 1u64.into(),
            },
            &[m],
        )?])
    });
    let model = CompiledModel::new(&g).unwrap();
    let bindings = attnc_ir::random_bindings(&g, 5);
    for _ in 0..10 {
        model.run(&bindings).unwrap();
    }
    let before = rss();
    for _ in 0..200 {
        model.run(&bindings).unwrap();
    }
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "RSS grew by {} MiB over 200 runs",
        grown >> 20
    );
}
