//! What the backend refuses, and how it says so: bindings that do not fit, and
//! run-time conditions the interpreter also reports as errors. (Every IR op lowers;
//! the message of an op that would not is unit-tested in `error.rs`.)

mod common;

use attnc_backends::{BackendError, CompiledModel};
use attnc_ir::{BinaryOp, DType, Op};
use common::{graph, shape, tensor, Bindings};

fn add_graph() -> attnc_ir::Graph {
    graph(|b| {
        let x = b.input("x", shape(&[3, 5]), DType::F32)?;
        let w = b.param("w", shape(&[5]), DType::F32)?;
        Ok(vec![b.op(Op::Binary(BinaryOp::Add), &[x, w])?])
    })
}

#[test]
fn bindings_are_checked_before_running() {
    let g = add_graph();
    let model = CompiledModel::new(&g).unwrap();
    let good = attnc_ir::random_bindings(&g, 1);

    let mut wrong_shape = good.clone();
    wrong_shape.insert("x".into(), tensor(DType::F32, &[5, 3], &[0.0; 15]));
    let e = model.run(&wrong_shape).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input `x`: expected [3, 5] f32, got [5, 3] f32"
    );

    let mut wrong_dtype = good.clone();
    wrong_dtype.insert("w".into(), tensor(DType::F16, &[5], &[0.0; 5]));
    let e = model.run(&wrong_dtype).unwrap_err();
    assert_eq!(e.to_string(), "param `w`: expected [5] f32, got [5] f16");

    let mut short = good.clone();
    let mut t = tensor(DType::F32, &[5], &[0.0; 5]);
    t.data.pop();
    short.insert("w".into(), t);
    assert!(matches!(
        model.run(&short),
        Err(BackendError::BindingMismatch { .. })
    ));

    let mut missing = good.clone();
    missing.remove("w");
    let e = model.run(&missing).unwrap_err();
    assert_eq!(e.to_string(), "no value bound for param `w`");

    // The model is still fine afterwards, and repeated runs agree.
    let a = model.run(&good).unwrap();
    let b = model.run(&good).unwrap();
    assert_eq!(a, b);
}

#[test]
fn out_of_range_indices_are_errors_not_wild_reads() {
    let g = graph(|b| {
        let table = b.param("table", shape(&[5, 3]), DType::F32)?;
        b.set_layer(Some("embed".into()));
        let ids = b.input("ids", shape(&[4]), DType::I64)?;
        Ok(vec![b.op(Op::Embedding, &[table, ids])?])
    });
    let model = CompiledModel::new(&g).unwrap();
    let mut bindings: Bindings = attnc_ir::random_bindings(&g, 3);
    for bad in [5.0, -1.0, 1e6] {
        bindings.insert(
            "ids".into(),
            tensor(DType::I64, &[4], &[0.0, 1.0, bad, 4.0]),
        );
        let e = model.run(&bindings).unwrap_err();
        assert_eq!(
            e.to_string(),
            "layer `embed`: %2 = embedding: an index is out of range"
        );
    }
    bindings.insert(
        "ids".into(),
        tensor(DType::I64, &[4], &[0.0, 1.0, 2.0, 4.0]),
    );
    assert!(model.run(&bindings).is_ok());
}

#[test]
fn integer_division_by_zero_is_an_error() {
    let g = graph(|b| {
        let x = b.input("x", shape(&[3]), DType::I32)?;
        let y = b.input("y", shape(&[3]), DType::I32)?;
        Ok(vec![b.op(Op::Binary(BinaryOp::Div), &[x, y])?])
    });
    let model = CompiledModel::new(&g).unwrap();
    let x = tensor(DType::I32, &[3], &[i32::MIN as f64, 7.0, -7.0]);
    let ok: Bindings = [
        ("x".into(), x.clone()),
        ("y".into(), tensor(DType::I32, &[3], &[-1.0, 2.0, 2.0])),
    ]
    .into();
    common::check_with(&g, &ok);
    let zero: Bindings = [
        ("x".into(), x),
        ("y".into(), tensor(DType::I32, &[3], &[1.0, 0.0, 2.0])),
    ]
    .into();
    let e = model.run(&zero).unwrap_err();
    assert_eq!(e.to_string(), "%2 = div: integer division by zero");
    assert!(attnc_ir::interp::eval(&g, &zero, attnc_ir::interp::Precision::F64).is_err());
}

#[test]
fn ops_nothing_uses_are_not_compiled() {
    let g = graph(|b| {
        let x = b.input("x", shape(&[3, 5]), DType::F32)?;
        b.op(Op::CumSum { axis: 1 }, &[x])?;
        Ok(vec![b.op(Op::Unary(attnc_ir::UnaryOp::Exp), &[x])?])
    });
    common::check(&g);
}
