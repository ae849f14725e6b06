//! Each IR layer is outlined into its own `noinline` function called from `@forward`:
//! tensors cross layers in buffers `@forward` allocates, outputs and run-time checks
//! are written where they are computed, identical layers share one function, and the
//! results agree with the interpreter.

mod common;

use attnc_backends::{emit_llvm_ir, emit_mlir, CompiledModel};
use attnc_ir::{BinaryOp, CmpOp, DType, Graph, Op, ReduceKind, Shape, UnaryOp};
use common::{check, graph, shape, tensor};

/// embed → layers.0 → layers.1 → head → layers.0 again, with what crosses layer
/// boundaries in every form: a residual read two layers on, a param read by two
/// layers (tied embedding), an argument passed on unchanged (a no-op reshape), a
/// view of an argument passed on (a reshape), outputs made in a middle layer, a bool
/// output, an input that is an output, and a run-time check (the embedding).
fn layered() -> Graph {
    graph(|b| {
        let tokens = b.input("tokens", shape(&[6]), DType::I64)?;
        b.set_layer(Some("embed".into()));
        let table = b.param("table", shape(&[11, 8]), DType::F32)?;
        let e = b.op(Op::Embedding, &[table, tokens])?;

        b.set_layer(Some("layers.0".into()));
        let w = b.param("layers.0.w", shape(&[8, 8]), DType::F32)?;
        let h = b.op(Op::MatMul, &[e, w])?;
        let h = b.op(Op::Unary(UnaryOp::Tanh), &[h])?;
        let r = b.op(Op::Binary(BinaryOp::Add), &[e, h])?;

        b.set_layer(Some("layers.1".into()));
        let same = b.op(
            Op::Reshape {
                shape: Shape::new([6u64, 8]),
            },
            &[r],
        )?;
        let flat = b.op(
            Op::Reshape {
                shape: Shape::new([48u64]),
            },
            &[r],
        )?;
        let z = b.op(Op::Binary(BinaryOp::Mul), &[r, e])?;

        b.set_layer(Some("head".into()));
        let tt = b.op(Op::Transpose { perm: vec![1, 0] }, &[table])?;
        let logits = b.op(Op::MatMul, &[same, tt])?;
        let total = b.op(
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: vec![0],
                keep_dims: false,
            },
            &[flat],
        )?;
        let zero = b.constant(0.0, DType::F32)?;
        let positive = b.op(Op::Compare(CmpOp::Gt), &[logits, zero])?;

        b.set_layer(Some("layers.0".into()));
        let one = b.constant(1.0, DType::F32)?;
        let z1 = b.op(Op::Binary(BinaryOp::Add), &[z, one])?;
        Ok(vec![logits, total, positive, flat, z1, tokens, r])
    })
}

#[test]
fn outlined_layers_match_the_interpreter() {
    let g = layered();
    let mut bindings = attnc_ir::random_bindings(&g, 3);
    bindings.insert(
        "tokens".into(),
        tensor(DType::I64, &[6], &[0.0, 3.0, 10.0, 3.0, 7.0, 1.0]),
    );
    common::check_with(&g, &bindings);
    let model = CompiledModel::new(&g).unwrap();
    let first = model.run(&bindings).unwrap();
    assert_eq!(model.run(&bindings).unwrap(), first);
}

#[test]
fn checks_inside_a_layer_function_are_reported() {
    let g = layered();
    let model = CompiledModel::new(&g).unwrap();
    let mut bindings = attnc_ir::random_bindings(&g, 3);
    bindings.insert(
        "tokens".into(),
        tensor(DType::I64, &[6], &[0.0, 3.0, 11.0, 3.0, 7.0, 1.0]),
    );
    let e = model.run(&bindings).unwrap_err();
    assert_eq!(
        e.to_string(),
        "layer `embed`: %2 = embedding: an index is out of range"
    );
}

#[test]
fn every_layer_is_its_own_function() {
    let text = emit_mlir(&layered()).unwrap();
    for name in [
        "@forward.0.embed(",
        "@forward.1.layers.0(",
        "@forward.2.layers.1(",
        "@forward.3.head(",
        "@forward.4.layers.0(",
    ] {
        assert!(
            text.contains(&format!("func.func private {name}")),
            "{name}\n{text}"
        );
        assert_eq!(
            text.matches(&format!("call {name}")).count(),
            1,
            "{name}\n{text}"
        );
    }
    assert_eq!(layer_functions(&text), 6, "{text}");
    assert!(text.contains("\"noinline\""), "{text}");

    // LLVM keeps them apart: five noinline definitions (`@forward` itself is inlined
    // into its C interface).
    let ir = emit_llvm_ir(&layered()).unwrap();
    for name in ["forward.0.embed", "forward.3.head", "forward.4.layers.0"] {
        assert!(ir.contains(&format!("@{name}(")), "{name}\n{ir}");
    }
    let noinline = ir
        .lines()
        // (The bodies of parallel loops are outlined too, as `<function>..omp_par`.)
        .filter(|l| l.starts_with("define") && l.contains("@forward.") && !l.contains("omp_par"))
        .count();
    assert_eq!(noinline, 5, "{ir}");
    assert!(ir.contains("noinline"), "{ir}");
}

#[test]
fn graphs_without_layers_are_one_function() {
    let g = graph(|b| {
        let x = b.input("x", shape(&[3, 5]), DType::F32)?;
        let y = b.op(Op::Unary(UnaryOp::Exp), &[x])?;
        Ok(vec![y, x])
    });
    let text = emit_mlir(&g).unwrap();
    assert!(text.contains("func.func private @forward.0("), "{text}");
    assert_eq!(text.matches("func.func").count(), 2, "{text}");
    check(&g);
}

/// `x + tanh(x·w)` in `n` layers with the same shapes: one function, called `n` times
/// with each layer's own weights.
fn uniform_stack(n: usize) -> Graph {
    graph(|b| {
        let mut x = b.input("x", shape(&[4, 6]), DType::F32)?;
        for i in 0..n {
            b.set_layer(Some(format!("layers.{i}")));
            let w = b.param(format!("layers.{i}.w"), shape(&[6, 6]), DType::F32)?;
            let h = b.op(Op::MatMul, &[x, w])?;
            let h = b.op(Op::Unary(UnaryOp::Tanh), &[h])?;
            x = b.op(Op::Binary(BinaryOp::Add), &[x, h])?;
        }
        b.set_layer(Some("head".into()));
        let total = b.op(
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes: vec![1],
                keep_dims: false,
            },
            &[x],
        )?;
        Ok(vec![total])
    })
}

#[test]
fn identical_layers_share_one_function() {
    let g = uniform_stack(4);
    let text = emit_mlir(&g).unwrap();
    assert!(
        text.contains("func.func private @forward.0.layers.0("),
        "{text}"
    );
    assert!(
        text.contains("func.func private @forward.4.head("),
        "{text}"
    );
    assert_eq!(layer_functions(&text), 3, "{text}");
    assert_eq!(
        text.matches("call @forward.0.layers.0(").count(),
        4,
        "{text}"
    );
    check(&g);
}

/// `@forward` and the layer functions (kernels, `@attnc.*`, and OpenMP declarations aside).
fn layer_functions(text: &str) -> usize {
    text.lines()
        .filter(|l| l.contains("func.func") && !l.contains("@attnc.") && !l.contains("@omp_"))
        .count()
}
