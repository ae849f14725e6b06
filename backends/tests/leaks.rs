//! Temporaries are freed: running a model many times does not grow the process.
//! (Its own test binary, so no other test allocates meanwhile.)

mod common;

use attnc_backends::CompiledModel;
use attnc_ir::{BinaryOp, DType, Op, Shape, UnaryOp};
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

/// Run `g` 200 times after a warm-up; the process must not grow.
fn assert_no_leak(g: &attnc_ir::Graph) {
    let model = CompiledModel::new(g).unwrap();
    let bindings = attnc_ir::random_bindings(g, 5);
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

/// Several 1 MiB temporaries per run: 200 leaking runs would add well over 500 MiB.
/// With `layered`, each op is a layer of its own, so the tensors also cross function
/// boundaries (results freed by `@forward`, a returned view of an argument cloned).
fn softmax_graph(layered: bool) -> attnc_ir::Graph {
    graph(|b| {
        let layer = |b: &mut attnc_ir::GraphBuilder, name: &str| {
            if layered {
                b.set_layer(Some(name.into()));
            }
        };
        let x = b.input("x", shape(&[512, 512]), DType::F32)?;
        layer(b, "exp");
        let e = b.op(Op::Unary(UnaryOp::Exp), &[x])?;
        layer(b, "transpose");
        let t = b.op(Op::Transpose { perm: vec![1, 0] }, &[e])?;
        layer(b, "add");
        let s = b.op(Op::Binary(BinaryOp::Add), &[t, x])?;
        layer(b, "softmax");
        let m = b.op(Op::Softmax { axis: 1 }, &[s])?;
        layer(b, "flatten");
        let f = b.op(
            Op::Reshape {
                shape: Shape::new([512u64 * 512]),
            },
            &[m],
        )?;
        layer(b, "slice");
        let sl = b.op(
            Op::Slice {
                axis: 0,
                start: 0u64.into(),
                end: 512u64.into(),
            },
            &[f],
        )?;
        Ok(vec![sl, e])
    })
}

#[test]
fn repeated_runs_do_not_leak_temporaries() {
    assert_no_leak(&softmax_graph(false));
    assert_no_leak(&softmax_graph(true));
}
