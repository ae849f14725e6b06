//! Graph → e-graph → graph: the round trip keeps names, layers and types, shares
//! duplicated subterms, and evaluates bit-for-bit like the original.

use attnc_ir::interp::{eval, Precision};
use attnc_ir::spec::{lower, parse_spec, Format, SpecSource};
use attnc_ir::{
    random_bindings, same_type, verify, DType, Graph, GraphBuilder, Op, Shape, UnaryOp,
};
use attnc_passes::{extract, to_egraph};
use std::panic::{catch_unwind, AssertUnwindSafe};

fn tiny(spec: &str) -> Graph {
    let source = SpecSource {
        sets: vec![],
        tiny: true,
    };
    lower(&parse_spec(spec, Format::Toml, &source).unwrap()).unwrap()
}

/// Round-trips `g` and checks everything the optimizer must keep; returns the result.
fn round_trip(g: &Graph) -> Graph {
    let back = extract(&to_egraph(g).unwrap()).unwrap();
    verify(&back).unwrap();
    let names = |xs: Vec<(&str, attnc_ir::NodeId)>| -> Vec<String> {
        xs.into_iter().map(|(n, _)| n.to_string()).collect()
    };
    assert_eq!(names(back.inputs()), names(g.inputs()));
    assert_eq!(names(back.params()), names(g.params()));
    assert_eq!(back.outputs().len(), g.outputs().len());
    for ((name, a), (name_back, b)) in g.outputs().iter().zip(back.outputs()) {
        assert_eq!(name, name_back);
        assert!(
            same_type(g, &g.node(*a).ty, &back.node(*b).ty),
            "output {name}"
        );
    }
    let bindings = random_bindings(g, 7);
    let want = eval(g, &bindings, Precision::F64).unwrap();
    let got = eval(&back, &bindings, Precision::F64).unwrap();
    for ((name, _), (w, o)) in g.outputs().iter().zip(want.iter().zip(&got)) {
        assert_eq!(w.max_abs_diff(o), 0.0, "output {name}");
    }
    back
}

/// Every layer name of `g`, in first-use order.
fn layers(g: &Graph) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in g.node_ids() {
        if let Some(l) = &g.node(id).layer {
            if !out.contains(l) {
                out.push(l.clone());
            }
        }
    }
    out
}

#[test]
fn gpt2_tiny_round_trips() {
    let g = tiny(include_str!("../../examples/gpt2.toml"));
    let back = round_trip(&g);
    assert!(back.len() <= g.len());
    assert_eq!(layers(&back), layers(&g));
}

#[test]
fn llama3_tiny_round_trips() {
    let g = tiny(include_str!("../../examples/llama3-8b.toml"));
    let back = round_trip(&g);
    assert!(back.len() <= g.len());
    assert_eq!(layers(&back), layers(&g));
}

#[test]
fn duplicated_subterm_is_shared() {
    let mut b = GraphBuilder::new("dup", Default::default());
    b.set_layer(Some("block".into()));
    let x = b.input("x", Shape::new([2u64, 3]), DType::F32).unwrap();
    let e1 = b.op(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
    let e2 = b.op(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
    let sum = b
        .op(Op::Binary(attnc_ir::BinaryOp::Add), &[e1, e2])
        .unwrap();
    b.output("y", sum).unwrap();
    let g = b.finish().unwrap();
    let back = round_trip(&g);
    assert_eq!((g.len(), back.len()), (4, 3));
    let add = back.outputs()[0].1;
    let ops = back.operands(add);
    assert_eq!(ops[0], ops[1]);
    assert_eq!(back.node(add).layer.as_deref(), Some("block"));
}

#[test]
fn merging_differently_typed_classes_panics_naming_both() {
    let mut b = GraphBuilder::new("two", Default::default());
    let x = b.input("x", Shape::new([2u64, 3]), DType::F32).unwrap();
    let y = b.input("y", Shape::new([3u64, 2]), DType::F32).unwrap();
    b.output("x", x).unwrap();
    b.output("y", y).unwrap();
    let mut program = to_egraph(&b.finish().unwrap()).unwrap();
    let (a, c) = (program.outputs[0].1, program.outputs[1].1);
    let result = catch_unwind(AssertUnwindSafe(|| {
        program.egraph.union(a, c);
        program.egraph.rebuild();
    }));
    let payload = result.expect_err("an unsound merge must panic");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("[2, 3] f32"), "{message}");
    assert!(message.contains("[3, 2] f32"), "{message}");
}
