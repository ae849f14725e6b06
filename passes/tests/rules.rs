//! Every rule, both sides in the interpreter: a small graph holding the rule's left
//! side is saturated with that rule alone, and the extraction is forced onto the
//! rewritten nodes (original nodes cost 10⁶× more), so the right side is what runs.
//! The rule must fire and both graphs must agree on seeded random inputs.

use attnc_ir::interp::{eval, Precision};
use attnc_ir::{
    random_bindings, Attention, BinaryOp, DType, Dim, Dims, Graph, GraphBuilder, NodeId, Op,
    ReduceKind, Shape, UnaryOp,
};
use attnc_passes::rules::{all_rules, RuleSelection};
use attnc_passes::{build_graph, to_egraph, Cost, DagChoice, Target};
use std::collections::HashSet;

/// Saturates `g` with `rule` only, extracts preferring rewritten nodes, and checks the
/// result against `g`. Returns the extracted graph.
fn check_rule(rule: &str, g: &Graph) -> Graph {
    check_rule_with(rule, g, &random_bindings(g, 5))
}

/// [`check_rule`] on given bindings.
fn check_rule_with(
    rule: &str,
    g: &Graph,
    bindings: &std::collections::HashMap<String, attnc_ir::Tensor>,
) -> Graph {
    let mut program = to_egraph(g).unwrap();
    let original: HashSet<String> = program
        .egraph
        .classes()
        .flat_map(|c| c.nodes.iter().map(|n| format!("{n:?}")))
        .collect();
    let rules = RuleSelection::parse(rule).unwrap().rules();
    assert_eq!(rules.len(), 1, "{rule}");
    let runner = egg::Runner::default()
        .with_iter_limit(4)
        .with_egraph(std::mem::take(&mut program.egraph))
        .run(rules.iter().map(|r| &r.rewrite));
    program.egraph = runner.egraph;
    let eg = &program.egraph;
    assert!(
        eg.analysis.fired.iter().any(|(r, _)| r.as_str() == rule),
        "{rule} did not fire"
    );
    let target = Target::cpu();
    let choice = DagChoice::new(eg, |id, n| {
        let c = target.node_cost(eg, id, n);
        let weight = if original.contains(&format!("{n:?}")) {
            1e6
        } else {
            1.0
        };
        Cost(c.ns() * weight + 1.0)
    });
    let out = build_graph(&program, |id| choice.node(eg, id).unwrap()).unwrap();
    let want = eval(g, bindings, Precision::F64).unwrap();
    let got = eval(&out, bindings, Precision::F64).unwrap();
    for (w, o) in want.iter().zip(&got) {
        let err = w.max_abs_diff(o);
        assert!(
            err < 1e-9,
            "{rule}: sides differ by {err}\n{}",
            attnc_ir::print(&out)
        );
    }
    out
}

fn ops(g: &Graph) -> Vec<&'static str> {
    g.node_ids().map(|id| g.node(id).op.name()).collect()
}

fn builder() -> GraphBuilder {
    let mut dims = Dims::new();
    dims.bind("window", 3);
    GraphBuilder::new("t", dims)
}

fn input(b: &mut GraphBuilder, name: &str, shape: &[u64]) -> NodeId {
    let shape = Shape(shape.iter().map(|&n| Dim::Const(n)).collect());
    b.input(name, shape, DType::F32).unwrap()
}

fn param(b: &mut GraphBuilder, name: &str, shape: &[u64]) -> NodeId {
    let shape = Shape(shape.iter().map(|&n| Dim::Const(n)).collect());
    b.param(name, shape, DType::F32).unwrap()
}

fn bin(b: &mut GraphBuilder, op: BinaryOp, x: NodeId, y: NodeId) -> NodeId {
    b.op(Op::Binary(op), &[x, y]).unwrap()
}

fn c(b: &mut GraphBuilder, v: f64) -> NodeId {
    b.constant(v, DType::F32).unwrap()
}

fn done(mut b: GraphBuilder, out: NodeId) -> Graph {
    b.output("out", out).unwrap();
    b.finish().unwrap()
}

fn transpose(b: &mut GraphBuilder, x: NodeId, perm: &[usize]) -> NodeId {
    b.op(
        Op::Transpose {
            perm: perm.to_vec(),
        },
        &[x],
    )
    .unwrap()
}

#[test]
fn mul_scalar_right() {
    let mut b = builder();
    let x = input(&mut b, "x", &[3, 4]);
    let k = c(&mut b, 0.5);
    let y = bin(&mut b, BinaryOp::Mul, k, x);
    check_rule("mul-scalar-right", &done(b, y));
}

#[test]
fn matmul_scale_lhs_and_rhs() {
    for (rule, lhs) in [("matmul-scale-lhs", true), ("matmul-scale-rhs", false)] {
        let mut b = builder();
        let x = input(&mut b, "x", &[3, 4]);
        let w = param(&mut b, "w", &[4, 5]);
        let k = c(&mut b, 0.25);
        let y = if lhs {
            let xs = bin(&mut b, BinaryOp::Mul, x, k);
            b.op(Op::MatMul, &[xs, w]).unwrap()
        } else {
            let ws = bin(&mut b, BinaryOp::Mul, w, k);
            b.op(Op::MatMul, &[x, ws]).unwrap()
        };
        check_rule(rule, &done(b, y));
    }
}

#[test]
fn scalars_through_layout_and_rope() {
    for rule in [
        "transpose-scale",
        "scale-into-transpose",
        "scale-into-reshape",
        "scale-into-rope",
    ] {
        let mut b = builder();
        let x = input(&mut b, "x", &[2, 3, 4]);
        let k = c(&mut b, 3.0);
        let y = match rule {
            "transpose-scale" => {
                let xs = bin(&mut b, BinaryOp::Mul, x, k);
                transpose(&mut b, xs, &[0, 2, 1])
            }
            "scale-into-transpose" => {
                let t = transpose(&mut b, x, &[2, 0, 1]);
                bin(&mut b, BinaryOp::Mul, t, k)
            }
            "scale-into-reshape" => {
                let shape = Shape(vec![Dim::Const(6), Dim::Const(4)]);
                let r = b.op(Op::Reshape { shape }, &[x]).unwrap();
                bin(&mut b, BinaryOp::Mul, r, k)
            }
            _ => {
                let r = b
                    .op(
                        Op::Rope {
                            theta: 100.0,
                            scaling: Default::default(),
                        },
                        &[x],
                    )
                    .unwrap();
                bin(&mut b, BinaryOp::Mul, r, k)
            }
        };
        check_rule(rule, &done(b, y));
    }
}

#[test]
fn scale_into_weight() {
    let mut b = builder();
    let x = input(&mut b, "x", &[2, 3, 4]);
    let w = param(&mut b, "wq", &[4, 6]);
    let m = b.op(Op::MatMul, &[x, w]).unwrap();
    let k = c(&mut b, 0.125);
    let y = bin(&mut b, BinaryOp::Mul, m, k);
    let out = check_rule("scale-into-weight", &done(b, y));
    // The scale now multiplies the weight, not the activations.
    assert!(
        ops(&out).iter().position(|&o| o == "mul") < ops(&out).iter().position(|&o| o == "matmul")
    );
}

#[test]
fn scale_scale_and_div_to_mul() {
    let mut b = builder();
    let x = input(&mut b, "x", &[5]);
    let (k1, k2) = (c(&mut b, 3.0), c(&mut b, -0.5));
    let y = bin(&mut b, BinaryOp::Mul, x, k1);
    let y = bin(&mut b, BinaryOp::Mul, y, k2);
    check_rule("scale-scale", &done(b, y));

    let mut b = builder();
    let x = input(&mut b, "x", &[5]);
    let k = c(&mut b, 8.0);
    let y = bin(&mut b, BinaryOp::Div, x, k);
    check_rule("div-to-mul", &done(b, y));
}

/// `exp(x − max) / sum(exp(x − max))` (or without the max) along `axis`.
fn written_softmax(shift: bool, axis: usize) -> Graph {
    let mut b = builder();
    let x = input(&mut b, "x", &[3, 4, 5]);
    let reduce = |kind| Op::Reduce {
        kind,
        axes: vec![axis],
        keep_dims: true,
    };
    let z = if shift {
        let m = b.op(reduce(ReduceKind::Max), &[x]).unwrap();
        bin(&mut b, BinaryOp::Sub, x, m)
    } else {
        x
    };
    let e = b.op(Op::Unary(UnaryOp::Exp), &[z]).unwrap();
    let s = b.op(reduce(ReduceKind::Sum), &[e]).unwrap();
    let y = bin(&mut b, BinaryOp::Div, e, s);
    done(b, y)
}

#[test]
fn softmax_written_out() {
    for axis in [1, 2] {
        let out = check_rule("softmax-expanded", &written_softmax(true, axis));
        assert!(ops(&out).contains(&"softmax"));
        let out = check_rule("softmax-unshifted", &written_softmax(false, axis));
        assert!(ops(&out).contains(&"softmax"));
    }
}

#[test]
fn layout_pairs_cancel() {
    let mut b = builder();
    let x = input(&mut b, "x", &[2, 3, 4]);
    let t = transpose(&mut b, x, &[1, 2, 0]);
    let t = transpose(&mut b, t, &[2, 0, 1]);
    let y = bin(&mut b, BinaryOp::Add, t, x);
    let out = check_rule("transpose-transpose", &done(b, y));
    assert!(!ops(&out).contains(&"transpose"));

    let mut b = builder();
    let x = input(&mut b, "x", &[2, 3, 4]);
    let t = transpose(&mut b, x, &[1, 0, 2]);
    let t = transpose(&mut b, t, &[0, 2, 1]);
    check_rule("transpose-transpose", &done(b, t));

    let mut b = builder();
    let x = input(&mut b, "x", &[2, 3, 4]);
    let r = b
        .op(
            Op::Reshape {
                shape: Shape(vec![Dim::Const(6), Dim::Const(4)]),
            },
            &[x],
        )
        .unwrap();
    let r = b
        .op(
            Op::Reshape {
                shape: Shape(vec![Dim::Const(4), Dim::Const(6)]),
            },
            &[r],
        )
        .unwrap();
    check_rule("reshape-reshape", &done(b, r));

    let mut b = builder();
    let x = input(&mut b, "x", &[2, 3]);
    let r = b
        .op(
            Op::Reshape {
                shape: Shape(vec![Dim::Const(2), Dim::Const(3)]),
            },
            &[x],
        )
        .unwrap();
    let y = bin(&mut b, BinaryOp::Add, r, x);
    check_rule("reshape-identity", &done(b, y));
}

#[test]
fn projections_sharing_an_input_merge() {
    let mut b = builder();
    let x = input(&mut b, "x", &[2, 3, 4]);
    let wq = param(&mut b, "wq", &[4, 6]);
    let wk = param(&mut b, "wk", &[4, 2]);
    let wv = param(&mut b, "wv", &[4, 2]);
    let q = b.op(Op::MatMul, &[x, wq]).unwrap();
    let k = b.op(Op::MatMul, &[x, wk]).unwrap();
    let v = b.op(Op::MatMul, &[x, wv]).unwrap();
    let kv = bin(&mut b, BinaryOp::Mul, k, v);
    let out = b.op(Op::Concat { axis: 2 }, &[q, kv]).unwrap();
    let out = check_rule("merge-projections", &done(b, out));
    assert_eq!(ops(&out).iter().filter(|&&o| o == "matmul").count(), 1);
}

/// Plain attention as the lowering writes it, with each optional stage.
struct Plain {
    heads: u64,
    kv_heads: u64,
    scale: bool,
    softcap: bool,
    bias: bool,
    mask: Option<&'static str>,
    additive_mask: bool,
}

fn plain_attention(p: &Plain) -> Graph {
    let (bs, s, d) = (2, 5, 3);
    let mut b = builder();
    let q = input(&mut b, "q", &[bs, p.heads, s, d]);
    let mut k = input(&mut b, "k", &[bs, p.kv_heads, s, d]);
    let mut v = input(&mut b, "v", &[bs, p.kv_heads, s, d]);
    if p.heads != p.kv_heads {
        let g = p.heads / p.kv_heads;
        let n = |xs: &[u64]| Shape(xs.iter().map(|&x| Dim::Const(x)).collect());
        for t in [&mut k, &mut v] {
            let r = b
                .op(
                    Op::Reshape {
                        shape: n(&[bs, p.kv_heads, 1, s, d]),
                    },
                    &[*t],
                )
                .unwrap();
            let r = b
                .op(
                    Op::Broadcast {
                        shape: n(&[bs, p.kv_heads, g, s, d]),
                    },
                    &[r],
                )
                .unwrap();
            *t = b
                .op(
                    Op::Reshape {
                        shape: n(&[bs, p.heads, s, d]),
                    },
                    &[r],
                )
                .unwrap();
        }
    }
    let kt = transpose(&mut b, k, &[0, 1, 3, 2]);
    let mut sc = b.op(Op::MatMul, &[q, kt]).unwrap();
    if p.scale {
        let k = c(&mut b, 0.6);
        sc = bin(&mut b, BinaryOp::Mul, sc, k);
    }
    if p.softcap {
        let cap = c(&mut b, 1.5);
        let t = bin(&mut b, BinaryOp::Div, sc, cap);
        let t = b.op(Op::Unary(UnaryOp::Tanh), &[t]).unwrap();
        sc = bin(&mut b, BinaryOp::Mul, t, cap);
    }
    if p.bias {
        let bias = input(&mut b, "bias", &[p.heads, 1, s]);
        sc = bin(&mut b, BinaryOp::Add, sc, bias);
    }
    if let Some(expr) = p.mask {
        let expr = attnc_ir::MaskExpr::parse(expr).unwrap();
        let uses_h = expr.coords().contains(&attnc_ir::Coord::H);
        let shape: Vec<u64> = if uses_h {
            vec![p.heads, s, s]
        } else {
            vec![s, s]
        };
        let ty = attnc_ir::TensorType::new(
            Shape(shape.iter().map(|&x| Dim::Const(x)).collect()),
            DType::Bool,
        );
        let m = b.add(Op::Mask { expr }, &[], Some(ty)).unwrap();
        let ninf = c(&mut b, f64::NEG_INFINITY);
        if p.additive_mask {
            let zero = c(&mut b, 0.0);
            let add = b.op(Op::Select, &[m, zero, ninf]).unwrap();
            sc = bin(&mut b, BinaryOp::Add, sc, add);
        } else {
            sc = b.op(Op::Select, &[m, sc, ninf]).unwrap();
        }
    }
    let pr = b.op(Op::Softmax { axis: 3 }, &[sc]).unwrap();
    let o = b.op(Op::MatMul, &[pr, v]).unwrap();
    done(b, o)
}

fn attention_of(g: &Graph) -> Vec<Attention> {
    g.node_ids()
        .filter_map(|id| match &g.node(id).op {
            Op::Attention(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn attention_fuses_every_written_form() {
    let base = Plain {
        heads: 2,
        kv_heads: 2,
        scale: true,
        softcap: false,
        bias: false,
        mask: None,
        additive_mask: false,
    };
    let forms = [
        Plain { ..base },
        Plain {
            scale: false,
            ..base
        },
        Plain {
            mask: Some("k <= q"),
            ..base
        },
        Plain {
            mask: Some("k <= q"),
            additive_mask: true,
            ..base
        },
        Plain {
            mask: Some("k <= q && q - k < window"),
            softcap: true,
            ..base
        },
        Plain {
            mask: Some("h == 0 || k <= q"),
            bias: true,
            ..base
        },
        Plain {
            softcap: true,
            bias: true,
            ..base
        },
    ];
    for p in &forms {
        let out = check_rule("attention-fuse", &plain_attention(p));
        let fused = attention_of(&out);
        assert_eq!(fused.len(), 1, "{}", attnc_ir::print(&out));
        assert!(!ops(&out).contains(&"softmax"));
        assert_eq!(fused[0].mask.is_some(), p.mask.is_some());
        assert_eq!(fused[0].softcap.is_some(), p.softcap);
        assert_eq!(fused[0].bias, p.bias);
    }
}

#[test]
fn gqa_and_mqa_read_each_kv_head_once() {
    for kv_heads in [1, 2] {
        let p = Plain {
            heads: 4,
            kv_heads,
            scale: true,
            softcap: false,
            bias: false,
            mask: Some("k <= q"),
            additive_mask: false,
        };
        let g = plain_attention(&p);
        // Fuse first (alone), then group.
        let fused = check_rule("attention-fuse", &g);
        let out = check_rule("attention-gqa", &fused);
        let a = attention_of(&out);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].groups, 4 / kv_heads);
        assert!(
            !ops(&out).contains(&"broadcast"),
            "{}",
            attnc_ir::print(&out)
        );
    }
}

#[test]
fn mla_absorbs_the_up_projections() {
    use attnc_ir::spec::{lower, parse_spec, Format, SpecSource};
    let spec = r#"
        name = "mla"
        arch = "decoder"
        vocab = 11
        d_model = 12
        layers = 1
        norm = "rmsnorm"
        position = "rope"
        [dims]
        batch = 2
        seq = 5
        [attention]
        heads = 2
        kv_lora_rank = 6
        qk_nope_head_dim = 4
        qk_rope_head_dim = 2
        v_head_dim = 3
        [ffn]
        kind = "swiglu"
        hidden = 8
    "#;
    let source = SpecSource {
        sets: vec![],
        tiny: false,
    };
    let g = lower(&parse_spec(spec, Format::Toml, &source).unwrap()).unwrap();
    let fused = check_rule("attention-fuse", &g);
    let out = check_rule("mla-absorb", &fused);
    let a = attention_of(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(
        a[0].groups, 2,
        "the latent is one KV head shared by both query heads"
    );
}

/// A fused masked attention over 40 queries and keys: with 16- and 32-blocks the
/// causal window leaves blocks empty, so block-sparse forms join its class; the
/// extraction (forced onto them) runs one, and it agrees with the dense attention.
#[test]
fn masked_attention_becomes_block_sparse() {
    for mask in [
        "k <= q",
        "k <= q && q - k < 9",
        "k < 2 || (q - k <= 4 && k - q <= 4)",
        "h == 0 || k <= q",
    ] {
        let mut b = builder();
        let (h, s, d) = (2, 40, 4);
        let q = input(&mut b, "q", &[1, h, s, d]);
        let k = input(&mut b, "k", &[1, h, s, d]);
        let v = input(&mut b, "v", &[1, h, s, d]);
        let attn = Attention {
            mask: Some(attnc_ir::MaskExpr::parse(mask).unwrap()),
            ..Attention::new(0.5)
        };
        let o = b.op(Op::Attention(attn), &[q, k, v]).unwrap();
        let g = done(b, o);
        let out = check_rule("attention-block-sparse", &g);
        let a = attention_of(&out);
        assert_eq!(a.len(), 1);
        assert!(a[0].block.is_some(), "{mask}: {}", attnc_ir::print(&out));
    }
    // Full attention has no empty block: nothing to rewrite.
    let mut b = builder();
    let q = input(&mut b, "q", &[1, 1, 40, 4]);
    let o = b
        .op(
            Op::Attention(Attention {
                mask: Some(attnc_ir::MaskExpr::parse("k < 40").unwrap()),
                ..Attention::new(0.5)
            }),
            &[q, q, q],
        )
        .unwrap();
    let g = done(b, o);
    let mut program = to_egraph(&g).unwrap();
    let rules = RuleSelection::parse("attention-block-sparse")
        .unwrap()
        .rules();
    let runner = egg::Runner::default()
        .with_egraph(std::mem::take(&mut program.egraph))
        .run(rules.iter().map(|r| &r.rewrite));
    assert!(runner.egraph.analysis.fired.is_empty());
}

/// Document masking: the block list computed from the segment ids (packed documents
/// from `random_bindings`) skips only blocks with no key of the query's document.
#[test]
fn document_masks_get_a_block_list_from_the_segments() {
    for mask in [Some("k <= q"), None] {
        let mut b = builder();
        let (h, s, d) = (2, 128, 4);
        let q = input(&mut b, "q", &[2, h, s, d]);
        let k = input(&mut b, "k", &[2, h, s, d]);
        let v = input(&mut b, "v", &[2, h, s, d]);
        let seg = b
            .input(
                "segments",
                Shape(vec![Dim::Const(2), Dim::Const(s)]),
                DType::I64,
            )
            .unwrap();
        let attn = Attention {
            mask: mask.map(|m| attnc_ir::MaskExpr::parse(m).unwrap()),
            segments: true,
            ..Attention::new(0.5)
        };
        let o = b.op(Op::Attention(attn), &[q, k, v, seg]).unwrap();
        let g = done(b, o);
        let out = check_rule("attention-document-blocks", &g);
        let a = attention_of(&out);
        assert_eq!(a.len(), 1);
        assert!(a[0].listed && a[0].segments, "{}", attnc_ir::print(&out));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// The block list computed from segment ids agrees with the dense document mask
    /// for random ids — packed documents of random lengths and ids in any order —
    /// with and without a causal mask: both sides are equal in the interpreter.
    #[test]
    fn document_block_lists_agree_with_the_dense_mask(
        ids in proptest::collection::vec(0i64..24, 128),
        packed in proptest::bool::ANY,
        causal in proptest::bool::ANY,
    ) {
        let mut ids = ids;
        if packed {
            ids.sort();
        }
        let mut b = builder();
        let (h, s, d) = (1, 128, 3);
        let q = input(&mut b, "q", &[1, h, s, d]);
        let k = input(&mut b, "k", &[1, h, s, d]);
        let v = input(&mut b, "v", &[1, h, s, d]);
        let seg = b
            .input("segments", Shape(vec![Dim::Const(1), Dim::Const(s)]), DType::I64)
            .unwrap();
        let attn = Attention {
            mask: causal.then(|| attnc_ir::MaskExpr::parse("k <= q").unwrap()),
            segments: true,
            ..Attention::new(0.5)
        };
        let o = b.op(Op::Attention(attn), &[q, k, v, seg]).unwrap();
        let g = done(b, o);
        let mut bindings = random_bindings(&g, 5);
        let data: Vec<f64> = ids.iter().map(|&i| i as f64).collect();
        bindings.insert("segments".into(), attnc_ir::Tensor::new(DType::I64, vec![1, 128], data));
        check_rule_with("attention-document-blocks", &g, &bindings);
    }
}

/// The quadratic forms `linear-attention` reads, over `[2, 3, 16, ·]`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Quadratic {
    Kernel { causal: bool, normalize: bool },
    Retnet,
    Mamba,
    Gla,
}

fn quadratic(form: Quadratic) -> (Graph, std::collections::HashMap<String, attnc_ir::Tensor>) {
    use attnc_ir::{MaskExpr, TensorType};
    let (bs, h, n, d) = (2, 3, 16, 4);
    let mut b = builder();
    let q = input(&mut b, "q", &[bs, h, n, d]);
    let k = input(&mut b, "k", &[bs, h, n, d]);
    let v = input(&mut b, "v", &[bs, h, n, 5]);
    let nn = Shape(vec![Dim::Const(n), Dim::Const(n)]);
    let mask = b
        .add(
            Op::Mask {
                expr: MaskExpr::parse("k <= q").unwrap(),
            },
            &[],
            Some(TensorType::new(nn.clone(), DType::Bool)),
        )
        .unwrap();
    let zero = c(&mut b, 0.0);
    let ninf = c(&mut b, f64::NEG_INFINITY);
    let scores = |b: &mut GraphBuilder, q, k| {
        let kt = transpose(b, k, &[0, 1, 3, 2]);
        b.op(Op::MatMul, &[q, kt]).unwrap()
    };
    let causal_exp = |b: &mut GraphBuilder, e| {
        let e = b.op(Op::Select, &[mask, e, ninf]).unwrap();
        b.op(Op::Unary(UnaryOp::Exp), &[e]).unwrap()
    };
    let reshape = |b: &mut GraphBuilder, x, s: &[u64]| {
        let shape = Shape(s.iter().map(|&n| Dim::Const(n)).collect());
        b.op(Op::Reshape { shape }, &[x]).unwrap()
    };
    let (s, normalize) = match form {
        Quadratic::Kernel { causal, normalize } => {
            let mut s = scores(&mut b, q, k);
            if causal {
                s = b.op(Op::Select, &[mask, s, zero]).unwrap();
            }
            (s, normalize)
        }
        Quadratic::Retnet => {
            let lg = input(&mut b, "ld", &[h]);
            let lg = reshape(&mut b, lg, &[1, h, 1, 1]);
            let ty = Some(TensorType::new(nn.clone(), DType::I64));
            let qi = b.add(Op::Iota { axis: 0 }, &[], ty.clone()).unwrap();
            let ki = b.add(Op::Iota { axis: 1 }, &[], ty).unwrap();
            let rel = bin(&mut b, BinaryOp::Sub, qi, ki);
            let rel = b.op(Op::Cast { to: DType::F32 }, &[rel]).unwrap();
            let e = bin(&mut b, BinaryOp::Mul, rel, lg);
            let dm = causal_exp(&mut b, e);
            let s = scores(&mut b, q, k);
            (bin(&mut b, BinaryOp::Mul, s, dm), false)
        }
        Quadratic::Mamba => {
            let ld = input(&mut b, "ld", &[bs, h, n]);
            let lc = b.op(Op::CumSum { axis: 2 }, &[ld]).unwrap();
            let rows = reshape(&mut b, lc, &[bs, h, n, 1]);
            let cols = reshape(&mut b, lc, &[bs, h, 1, n]);
            let e = bin(&mut b, BinaryOp::Sub, rows, cols);
            let l = causal_exp(&mut b, e);
            let s = scores(&mut b, q, k);
            (bin(&mut b, BinaryOp::Mul, s, l), false)
        }
        Quadratic::Gla => {
            let g = input(&mut b, "ld", &[bs, h, n, d]);
            let lc = b.op(Op::CumSum { axis: 2 }, &[g]).unwrap();
            let up = b.op(Op::Unary(UnaryOp::Exp), &[lc]).unwrap();
            let neg = b.op(Op::Unary(UnaryOp::Neg), &[lc]).unwrap();
            let down = b.op(Op::Unary(UnaryOp::Exp), &[neg]).unwrap();
            let qb = bin(&mut b, BinaryOp::Mul, q, up);
            let kb = bin(&mut b, BinaryOp::Mul, k, down);
            let s = scores(&mut b, qb, kb);
            (b.op(Op::Select, &[mask, s, zero]).unwrap(), false)
        }
    };
    let num = b.op(Op::MatMul, &[s, v]).unwrap();
    let out = if normalize {
        let den = b
            .op(
                Op::Reduce {
                    kind: ReduceKind::Sum,
                    axes: vec![3],
                    keep_dims: true,
                },
                &[s],
            )
            .unwrap();
        bin(&mut b, BinaryOp::Div, num, den)
    } else {
        num
    };
    let g = done(b, out);
    // Positive features where rows are normalized, decays below one.
    let mut bindings = random_bindings(&g, 5);
    for (name, t) in bindings.iter_mut() {
        match name.as_str() {
            "q" | "k" if normalize => t.data.iter_mut().for_each(|x| *x = x.abs() + 0.1),
            "ld" => t.data.iter_mut().for_each(|x| *x = -0.3 * x.abs()),
            _ => {}
        }
    }
    (g, bindings)
}

fn linear_of(g: &Graph) -> Vec<attnc_ir::LinearAttention> {
    g.node_ids()
        .filter_map(|id| match &g.node(id).op {
            Op::LinearAttention(l) => Some(*l),
            _ => None,
        })
        .collect()
}

#[test]
fn kernelized_attention_becomes_linear_attention() {
    use attnc_ir::{Decay, LinearForm};
    let cases = [
        (
            Quadratic::Kernel {
                causal: false,
                normalize: true,
            },
            Decay::None,
        ),
        (
            Quadratic::Kernel {
                causal: true,
                normalize: true,
            },
            Decay::None,
        ),
        (
            Quadratic::Kernel {
                causal: false,
                normalize: false,
            },
            Decay::None,
        ),
        (Quadratic::Retnet, Decay::Head),
        (Quadratic::Mamba, Decay::Step),
        (Quadratic::Gla, Decay::Gate),
    ];
    for (form, decay) in cases {
        let (g, bindings) = quadratic(form);
        let out = check_rule_with("linear-attention", &g, &bindings);
        let l = linear_of(&out);
        assert_eq!(l.len(), 1, "{form:?}: {}", attnc_ir::print(&out));
        assert_eq!(
            (l[0].decay, l[0].form),
            (decay, LinearForm::Parallel),
            "{form:?}"
        );
        let causal = !matches!(form, Quadratic::Kernel { causal: false, .. });
        assert_eq!(l[0].causal, causal, "{form:?}");
        assert!(
            !ops(&out).contains(&"mask"),
            "{form:?}: the N×N mask is gone"
        );
    }
}

/// `linear_attention(q, k, v [, log_decay]; l)` over `[2, 2, n, 4]` (values 3 wide),
/// with bindings whose features are positive when normalized and decays below one.
fn linear_graph(
    l: attnc_ir::LinearAttention,
    n: u64,
) -> (Graph, std::collections::HashMap<String, attnc_ir::Tensor>) {
    use attnc_ir::Decay;
    let (bs, h, d) = (2, 2, 4);
    let mut b = builder();
    let q = input(&mut b, "q", &[bs, h, n, d]);
    let k = input(&mut b, "k", &[bs, h, n, d]);
    let v = input(&mut b, "v", &[bs, h, n, 3]);
    let mut operands = vec![q, k, v];
    match l.decay {
        Decay::None => {}
        Decay::Head => operands.push(input(&mut b, "ld", &[h])),
        Decay::Step => operands.push(input(&mut b, "ld", &[bs, h, n])),
        Decay::Gate => operands.push(input(&mut b, "ld", &[bs, h, n, d])),
    }
    let o = b.op(Op::LinearAttention(l), &operands).unwrap();
    let g = done(b, o);
    let mut bindings = random_bindings(&g, 5);
    for (name, t) in bindings.iter_mut() {
        match name.as_str() {
            "q" | "k" if l.normalize => t.data.iter_mut().for_each(|x| *x = x.abs() + 0.1),
            "ld" => t.data.iter_mut().for_each(|x| *x = -0.3 * x.abs()),
            _ => {}
        }
    }
    (g, bindings)
}

#[test]
fn causal_linear_attention_runs_chunkwise_or_recurrent() {
    use attnc_ir::{Decay, LinearAttention, LinearForm};
    for decay in [Decay::None, Decay::Head, Decay::Step, Decay::Gate] {
        for (rule, want) in [
            ("linear-chunkwise", LinearForm::Chunkwise { chunk: 16 }),
            ("linear-recurrent", LinearForm::Recurrent),
        ] {
            let l = LinearAttention {
                causal: true,
                decay,
                normalize: decay == Decay::None,
                form: LinearForm::Parallel,
            };
            let (g, bindings) = linear_graph(l, 64);
            let out = check_rule_with(rule, &g, &bindings);
            let forms: Vec<LinearForm> = linear_of(&out).iter().map(|l| l.form).collect();
            // The cheapest rewritten form; chunkwise offers 16 and 32 here.
            match want {
                LinearForm::Recurrent => assert_eq!(forms, [want], "{decay:?}"),
                _ => assert!(
                    matches!(forms[..], [LinearForm::Chunkwise { chunk: 16 | 32 }]),
                    "{decay:?}: {forms:?}"
                ),
            }
        }
    }
}

/// `linear-quadratic` writes a parallel `linear_attention` back in its quadratic
/// form, for every decay, causal or not, normalized or not.
#[test]
fn linear_attention_has_its_quadratic_form() {
    use attnc_ir::{Decay, LinearAttention, LinearForm};
    for decay in [Decay::None, Decay::Head, Decay::Step, Decay::Gate] {
        for causal in [true, false] {
            if decay != Decay::None && !causal {
                continue;
            }
            let l = LinearAttention {
                causal,
                decay,
                normalize: decay == Decay::None,
                form: LinearForm::Parallel,
            };
            let (g, bindings) = linear_graph(l, 16);
            let out = check_rule_with("linear-quadratic", &g, &bindings);
            assert!(
                linear_of(&out).is_empty(),
                "{l:?}: {}",
                attnc_ir::print(&out)
            );
        }
    }
}

/// A one-layer model whose FFN is the mixture `ffn` (TOML fields of `[ffn]`), in
/// the spec's dense-gated form.
fn moe_model(ffn: &str) -> Graph {
    use attnc_ir::spec::{lower, parse_spec, Format, SpecSource};
    let spec = format!(
        r#"
        name = "moe"
        arch = "decoder"
        vocab = 11
        d_model = 8
        layers = 1
        norm = "rmsnorm"
        [dims]
        batch = 2
        seq = 6
        [attention]
        heads = 2
        [ffn]
        kind = "moe"
        hidden = 6
        {ffn}
        "#
    );
    let source = SpecSource::default();
    lower(&parse_spec(&spec, Format::Toml, &source).unwrap()).unwrap()
}

fn moe_of(g: &Graph) -> Vec<attnc_ir::MoeDispatch> {
    g.node_ids()
        .filter_map(|id| match &g.node(id).op {
            Op::MoeDispatch(m) => Some(*m),
            _ => None,
        })
        .collect()
}

/// Every router's dense-gated mixture becomes `moe_dispatch`, bounded by what the
/// gate's analysis proves: `k` experts per token for top-k (Switch: one, its
/// capacity drops zeroing more), `capacity` tokens per expert for expert choice.
#[test]
fn dense_gated_mixtures_become_moe_dispatch() {
    use attnc_ir::{MoeChoice, MoeShared};
    let cases: [(&str, MoeChoice, u64, UnaryOp, bool); 7] = [
        ("experts = 4\ntop_k = 2", MoeChoice::Token, 2, UnaryOp::Silu, true),
        ("experts = 4\ntop_k = 2\nnorm_topk_prob = true", MoeChoice::Token, 2, UnaryOp::Silu, true),
        (
            "experts = 5\ntop_k = 3\nscoring_func = \"sigmoid\"\nselection_bias = true\nrouted_scaling_factor = 2.5\nexpert_kind = \"gelu\"",
            MoeChoice::Token, 3, UnaryOp::Gelu, false,
        ),
        ("experts = 4\nrouter = \"switch\"\ncapacity_factor = 1.0\nexpert_kind = \"relu\"", MoeChoice::Token, 1, UnaryOp::Relu, false),
        ("experts = 4\nrouter = \"switch\"\ncapacity_factor = 0.5", MoeChoice::Token, 1, UnaryOp::Silu, true),
        // 12 tokens, 4 experts, factor 1: each expert takes 3 of the 12.
        ("experts = 4\nrouter = \"expert_choice\"\ncapacity_factor = 1.0", MoeChoice::Expert, 3, UnaryOp::Silu, true),
        ("experts = 4\ntop_k = 1\nexpert_kind = \"gelu_tanh\"", MoeChoice::Token, 1, UnaryOp::GeluTanh, false),
    ];
    for (ffn, choice, k, activation, gated) in cases {
        let g = moe_model(ffn);
        let out = check_rule("moe-dispatch", &g);
        let want = attnc_ir::MoeDispatch {
            activation,
            gated,
            choice,
            k,
            shared: MoeShared::None,
        };
        assert_eq!(moe_of(&out), [want], "{ffn}");
        // The experts' FLOPs drop from E to k (or capacity) MLPs per token.
        let flops = |g: &Graph| -> u64 { attnc_ir::layer_stats(g).iter().map(|l| l.flops).sum() };
        assert!(flops(&out) < flops(&g), "{ffn}");
    }
}

/// Exact ties in the router scores (two experts with identical router columns): top-k
/// keeps the lower expert, in the dense and the dispatched forms alike.
#[test]
fn router_ties_go_to_the_lower_expert() {
    let g = moe_model("experts = 4\ntop_k = 1");
    let mut bindings = random_bindings(&g, 7);
    let router = bindings.get_mut("layers.0.ffn.router").unwrap();
    for row in router.data.chunks_mut(4) {
        row[2] = row[1];
    }
    let out = check_rule_with("moe-dispatch", &g, &bindings);
    assert_eq!(moe_of(&out).len(), 1);
}

/// A gate that is not provably sparse (a softmax over all experts, no top-k) stays
/// dense: the rule does not fire.
#[test]
fn a_dense_gate_is_not_dispatched() {
    use attnc_ir::spec::{lower, parse_spec, Format, SpecSource};
    // `experts = top_k`: every expert is selected, the one-hot bounds nothing.
    let spec = r#"
        name = "moe"
        vocab = 11
        d_model = 8
        layers = 1
        [dims]
        batch = 1
        seq = 4
        [attention]
        heads = 2
        [ffn]
        kind = "moe"
        hidden = 6
        experts = 3
        top_k = 3
        "#;
    let g = lower(&parse_spec(spec, Format::Toml, &SpecSource::default()).unwrap()).unwrap();
    let mut program = to_egraph(&g).unwrap();
    let rules = RuleSelection::parse("moe-dispatch").unwrap().rules();
    let runner = egg::Runner::default()
        .with_iter_limit(4)
        .with_egraph(std::mem::take(&mut program.egraph))
        .run(rules.iter().map(|r| &r.rewrite));
    assert!(runner.egraph.analysis.fired.is_empty());
}

/// Shared experts (DeepSeekMoE's always-on MLP, Qwen2-MoE's sigmoid-gated one) fold
/// into the dispatch.
#[test]
fn shared_experts_fold_into_the_dispatch() {
    use attnc_ir::{MoeChoice, MoeDispatch, MoeShared};
    for (gated_mlp, scaled) in [(true, false), (true, true), (false, false), (false, true)] {
        let (t, d, e, h, hs) = (7, 5, 4, 3, 6);
        let mut b = builder();
        let x = input(&mut b, "x", &[t, d]);
        let gate = input(&mut b, "gate", &[t, e]);
        let mut operands = vec![x, gate];
        if gated_mlp {
            operands.push(param(&mut b, "w_gate", &[e, d, h]));
        }
        operands.push(param(&mut b, "w_up", &[e, d, h]));
        operands.push(param(&mut b, "w_down", &[e, h, d]));
        let routed = MoeDispatch {
            activation: UnaryOp::Silu,
            gated: gated_mlp,
            choice: MoeChoice::Token,
            k: 2,
            shared: MoeShared::None,
        };
        let y = b.op(Op::MoeDispatch(routed), &operands).unwrap();
        let su = param(&mut b, "ws_up", &[d, hs]);
        let up = b.op(Op::MatMul, &[x, su]).unwrap();
        let hidden = if gated_mlp {
            let sg = param(&mut b, "ws_gate", &[d, hs]);
            let g = b.op(Op::MatMul, &[x, sg]).unwrap();
            let g = b.op(Op::Unary(UnaryOp::Silu), &[g]).unwrap();
            bin(&mut b, BinaryOp::Mul, g, up)
        } else {
            b.op(Op::Unary(UnaryOp::Silu), &[up]).unwrap()
        };
        let sd = param(&mut b, "ws_down", &[hs, d]);
        let mut z = b.op(Op::MatMul, &[hidden, sd]).unwrap();
        if scaled {
            let s = input(&mut b, "s", &[t, 1]);
            z = bin(&mut b, BinaryOp::Mul, s, z);
        }
        let out = bin(&mut b, BinaryOp::Add, y, z);
        let g = done(b, out);
        let mut bindings = random_bindings(&g, 3);
        // Two experts per token at most.
        let gate = bindings.get_mut("gate").unwrap();
        for (i, row) in gate.data.chunks_mut(e as usize).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                if j != i % 4 && j != (i + 1) % 4 {
                    *v = 0.0;
                }
            }
        }
        let out = check_rule_with("moe-shared", &g, &bindings);
        let shared = if scaled {
            MoeShared::Gated
        } else {
            MoeShared::Always
        };
        assert_eq!(moe_of(&out), [MoeDispatch { shared, ..routed }]);
    }
}

#[test]
fn every_rule_is_tested_here() {
    let source = include_str!("rules.rs");
    for rule in all_rules() {
        assert!(
            source.contains(&format!("\"{}\"", rule.name)),
            "no test names `{}`",
            rule.name
        );
    }
}
