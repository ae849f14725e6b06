//! Multi-op graphs compared end to end: an attention block and a GPT-2 style MLP,
//! plus the text emitters on them.

mod common;

use attnc_backends::{emit_llvm_ir, emit_mlir, CompiledModel};
use attnc_ir::{
    BinaryOp, DType, Dims, Graph, MaskExpr, Op, ReduceKind, Shape, TensorType, UnaryOp,
};
use common::{check, graph_with_dims, shape};

/// softmax(q·kᵀ·s + causal mask)·v over [b, h, s, d] = [1, 2, 7, 8].
fn attention() -> Graph {
    graph_with_dims(Dims::new(), |b| {
        b.set_layer(Some("layers.0.attn".into()));
        let q = b.input("q", shape(&[1, 2, 7, 8]), DType::F32)?;
        let k = b.input("k", shape(&[1, 2, 7, 8]), DType::F32)?;
        let v = b.input("v", shape(&[1, 2, 7, 8]), DType::F32)?;
        let kt = b.op(
            Op::Transpose {
                perm: vec![0, 1, 3, 2],
            },
            &[k],
        )?;
        let scores = b.op(Op::MatMul, &[q, kt])?;
        let scale = b.constant(1.0 / 8f64.sqrt(), DType::F32)?;
        let scaled = b.op(Op::Binary(BinaryOp::Mul), &[scores, scale])?;
        let causal = MaskExpr::parse("k <= q").unwrap();
        let mask = b.add(
            Op::Mask { expr: causal },
            &[],
            Some(TensorType::new(Shape::new([7u64, 7]), DType::Bool)),
        )?;
        let ninf = b.constant(f64::NEG_INFINITY, DType::F32)?;
        let masked = b.op(Op::Select, &[mask, scaled, ninf])?;
        let p = b.op(Op::Softmax { axis: 3 }, &[masked])?;
        Ok(vec![b.op(Op::MatMul, &[p, v])?])
    })
}

/// x + proj(gelu_tanh(fc(layer_norm(x)))) over [seq, d] = [5, 12], hidden 48, and
/// the mean of the result (a reduce).
fn gpt2_mlp() -> Graph {
    graph_with_dims(Dims::new(), |b| {
        b.set_layer(Some("h.0.mlp".into()));
        let x = b.input("x", shape(&[5, 12]), DType::F32)?;
        let g = b.param("ln.g", shape(&[12]), DType::F32)?;
        let beta = b.param("ln.b", shape(&[12]), DType::F32)?;
        let w1 = b.param("fc.w", shape(&[12, 48]), DType::F32)?;
        let b1 = b.param("fc.b", shape(&[48]), DType::F32)?;
        let w2 = b.param("proj.w", shape(&[48, 12]), DType::F32)?;
        let n = b.op(Op::LayerNorm { eps: 1e-5 }, &[x, g, beta])?;
        let h = b.op(Op::MatMul, &[n, w1])?;
        let h = b.op(Op::Binary(BinaryOp::Add), &[h, b1])?;
        let h = b.op(Op::Unary(UnaryOp::GeluTanh), &[h])?;
        let o = b.op(Op::MatMul, &[h, w2])?;
        let y = b.op(Op::Binary(BinaryOp::Add), &[x, o])?;
        let m = b.op(
            Op::Reduce {
                kind: ReduceKind::Mean,
                axes: vec![0, 1],
                keep_dims: false,
            },
            &[y],
        )?;
        Ok(vec![y, m])
    })
}

#[test]
fn attention_block_matches_the_interpreter() {
    check(&attention());
}

#[test]
fn gpt2_mlp_matches_the_interpreter() {
    check(&gpt2_mlp());
}

#[test]
fn repeated_runs_give_the_same_outputs() {
    let g = attention();
    let model = CompiledModel::new(&g).unwrap();
    assert_eq!(model.output_names(), vec!["out0"]);
    let bindings = attnc_ir::random_bindings(&g, 11);
    let first = model.run(&bindings).unwrap();
    for _ in 0..20 {
        assert_eq!(model.run(&bindings).unwrap(), first);
    }
}

#[test]
fn emit_mlir_is_one_verified_forward_function() {
    let text = emit_mlir(&attention()).unwrap();
    assert!(text.contains("func.func @forward("), "{text}");
    assert!(text.contains("llvm.emit_c_interface"), "{text}");
    assert!(text.contains("linalg.generic"), "{text}");
    assert!(
        text.contains("bufferization.materialize_in_destination"),
        "{text}"
    );
    // It parses again as it is printed.
    assert_eq!(emit_mlir(&attention()).unwrap(), text);
}

#[test]
fn emit_llvm_ir_is_optimized_for_the_host() {
    let text = emit_llvm_ir(&gpt2_mlp()).unwrap();
    assert!(
        text.contains("define void @_mlir_ciface_forward("),
        "{text}"
    );
    assert!(text.contains("\"target-cpu\""), "{text}");
    assert!(text.contains("target triple"), "{text}");
}
