//! The `.air` text format: round trips over every op, the exact printed form, and
//! errors that point at the right line and column (and never panic).

use attnc_ir::*;

type R<T> = std::result::Result<T, IrError>;

fn dims(pairs: &[(&str, u64)]) -> Dims {
    let mut d = Dims::new();
    for &(name, size) in pairs {
        d.bind(name, size);
    }
    d
}

fn shape(dims: &[&str]) -> Shape {
    Shape(
        dims.iter()
            .map(|d| match d.parse::<u64>() {
                Ok(n) => Dim::Const(n),
                Err(_) => Dim::sym(*d),
            })
            .collect(),
    )
}

fn f32_param(b: &mut GraphBuilder, name: &str, dims: &[&str]) -> R<NodeId> {
    b.param(name, shape(dims), DType::F32)
}

/// A one-block transformer: embedding, layer norm, attention with rope, a sliding
/// window mask and `-inf` fill, rms norm, tied logits and top-k.
fn transformer() -> R<Graph> {
    let mut b = GraphBuilder::new(
        "tiny_gpt",
        dims(&[
            ("batch", 2),
            ("seq", 8),
            ("d_model", 16),
            ("vocab", 32),
            ("heads", 2),
            ("d_head", 8),
            ("window", 4),
        ]),
    );
    b.set_layer(Some("embed".into()));
    let tokens = b.input("tokens", shape(&["batch", "seq"]), DType::I64)?;
    let wte = f32_param(&mut b, "wte", &["vocab", "d_model"])?;
    let x = b.op(Op::Embedding, &[wte, tokens])?;

    b.set_layer(Some("layers.0.attn".into()));
    let gamma = f32_param(&mut b, "ln.g", &["d_model"])?;
    let beta = f32_param(&mut b, "ln.b", &["d_model"])?;
    let h = b.op(Op::LayerNorm { eps: 1e-5 }, &[x, gamma, beta])?;
    let split = |b: &mut GraphBuilder, w: &str, h: NodeId| -> R<NodeId> {
        let w = f32_param(b, w, &["d_model", "d_model"])?;
        // A rank-2 weight broadcasts over the batch dims of a rank-3 activation.
        let y = b.op(Op::MatMul, &[h, w])?;
        let y = b.op(
            Op::Reshape {
                shape: shape(&["batch", "seq", "heads", "d_head"]),
            },
            &[y],
        )?;
        b.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[y],
        )
    };
    let q = split(&mut b, "wq", h)?;
    let q = b.op(
        Op::Rope {
            theta: 10000.0,
            scaling: attnc_ir::RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_positions: 8192,
            },
        },
        &[q],
    )?;
    let k = split(&mut b, "wk", h)?;
    let k = b.op(
        // A scaled rope, so its attributes round-trip too.
        Op::Rope {
            theta: 500000.0,
            scaling: attnc_ir::RopeScaling::Yarn {
                factor: 40.0,
                original_max_positions: 4096,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: 1.0,
            },
        },
        &[k],
    )?;
    let v = split(&mut b, "wv", h)?;
    let kt = b.op(
        Op::Transpose {
            perm: vec![0, 1, 3, 2],
        },
        &[k],
    )?;
    let s = b.op(Op::MatMul, &[q, kt])?;
    let scale = b.constant(0.125, DType::F32)?;
    let s = b.op(Op::Binary(BinaryOp::Mul), &[s, scale])?;
    let expr = MaskExpr::parse("k <= q && q - k < window").map_err(|e| IrError::Parse {
        line: 0,
        col: e.col,
        message: e.message,
    })?;
    let mask = b.add(
        Op::Mask { expr },
        &[],
        Some(TensorType::new(shape(&["seq", "seq"]), DType::Bool)),
    )?;
    let neg_inf = b.constant(f64::NEG_INFINITY, DType::F32)?;
    let s = b.op(Op::Select, &[mask, s, neg_inf])?;
    let p = b.op(Op::Softmax { axis: 3 }, &[s])?;
    let o = b.op(Op::MatMul, &[p, v])?;
    let o = b.op(
        Op::Transpose {
            perm: vec![0, 2, 1, 3],
        },
        &[o],
    )?;
    let o = b.op(
        Op::Reshape {
            shape: shape(&["batch", "seq", "d_model"]),
        },
        &[o],
    )?;

    b.set_layer(None);
    let g2 = f32_param(&mut b, "norm.g", &["d_model"])?;
    let r = b.op(Op::RmsNorm { eps: 1e-6 }, &[o, g2])?;

    b.set_layer(Some("head".into()));
    let wt = b.op(Op::Transpose { perm: vec![1, 0] }, &[wte])?;
    let logits = b.op(Op::MatMul, &[r, wt])?;
    let top_v = b.op(
        Op::TopK {
            k: 4,
            output: TopKOutput::Values,
        },
        &[logits],
    )?;
    let top_i = b.op(
        Op::TopK {
            k: 4,
            output: TopKOutput::Indices,
        },
        &[logits],
    )?;
    b.output("logits", logits)?;
    b.output("top_values", top_v)?;
    b.output("top_indices", top_i)?;
    b.finish()
}

/// Every elementwise op, reductions, data movement and integer ops on a small
/// matrix; no layers at all.
fn elementwise() -> R<Graph> {
    let mut b = GraphBuilder::new("ops", dims(&[("n", 4), ("m", 6), ("half", 3), ("j", 2)]));
    let a = b.input("a", shape(&["n", "m"]), DType::F32)?;
    let row = f32_param(&mut b, "row", &["m"])?;
    let mut outs = Vec::new();
    for u in UnaryOp::ALL {
        outs.push(b.op(Op::Unary(u), &[a])?);
    }
    for op in BinaryOp::ALL {
        outs.push(b.op(Op::Binary(op), &[a, row])?);
    }
    for op in CmpOp::ALL {
        let c = b.op(Op::Compare(op), &[row, a])?;
        outs.push(b.op(Op::Cast { to: DType::F32 }, &[c])?);
    }
    let cond = b.op(Op::Compare(CmpOp::Gt), &[a, row])?;
    outs.push(b.op(Op::Select, &[cond, a, row])?);
    for to in [DType::F16, DType::BF16, DType::I32, DType::I64, DType::Bool] {
        b.op(Op::Cast { to }, &[a])?;
    }
    for kind in ReduceKind::ALL {
        b.op(
            Op::Reduce {
                kind,
                axes: vec![1],
                keep_dims: true,
            },
            &[a],
        )?;
        b.op(
            Op::Reduce {
                kind,
                axes: vec![0, 1],
                keep_dims: false,
            },
            &[a],
        )?;
    }
    b.op(Op::CumSum { axis: 0 }, &[a])?;
    let iota = b.add(
        Op::Iota { axis: 1 },
        &[],
        Some(TensorType::new(shape(&["n", "m"]), DType::I64)),
    )?;
    for u in [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Relu] {
        b.op(Op::Unary(u), &[iota])?;
    }
    let three = b.constant(3.0, DType::I64)?;
    b.op(Op::Binary(BinaryOp::Add), &[iota, three])?;
    b.op(Op::CumSum { axis: 1 }, &[iota])?;
    b.op(
        Op::Broadcast {
            shape: shape(&["2", "n", "m"]),
        },
        &[row],
    )?;
    let cat = b.op(Op::Concat { axis: 1 }, &[a, a, a])?;
    b.op(
        Op::Slice {
            axis: 1,
            start: Dim::Const(0),
            end: Dim::sym("half"),
        },
        &[a],
    )?;
    b.op(
        Op::Slice {
            axis: 1,
            start: Dim::Const(2),
            end: Dim::Const(17),
        },
        &[cat],
    )?;
    let idx = b.input("idx", shape(&["j"]), DType::I64)?;
    b.op(Op::Gather { axis: 1 }, &[a, idx])?;
    let upd = b.input("upd", shape(&["n", "j"]), DType::F32)?;
    let sc = b.op(Op::ScatterAdd { axis: 1 }, &[a, idx, upd])?;
    for value in [
        0.0,
        -0.0,
        1e-5,
        500000.0,
        3.4e38,
        1e-300,
        -2.5,
        f64::INFINITY,
    ] {
        b.constant(value, DType::F32)?;
    }
    for (i, id) in outs.into_iter().enumerate() {
        b.output(format!("out{i}"), id)?;
    }
    b.output("scattered", sc)?;
    b.finish()
}

/// Names that are not identifiers are quoted; an empty layer name differs from none.
fn odd_names() -> R<Graph> {
    let mut b = GraphBuilder::new("my model", Dims::new());
    b.set_layer(Some("block 1/attn".into()));
    let x = b.input("x y \"z\" \\ #", shape(&["2", "3"]), DType::F32)?;
    b.set_layer(Some(String::new()));
    let y = b.op(Op::Unary(UnaryOp::Exp), &[x])?;
    b.set_layer(None);
    let z = b.op(Op::Unary(UnaryOp::Tanh), &[y])?;
    b.output("the output", z)?;
    b.output("#2", y)?;
    b.finish()
}

fn assert_round_trip(g: &Graph) {
    let text = print(g);
    let back = match parse(&text) {
        Ok(back) => back,
        Err(e) => panic!("{e}\n{text}"),
    };
    assert!(back == *g, "round trip changed the graph:\n{text}");
    assert_eq!(print(&back), text);
}

#[test]
fn round_trips_every_op() -> R<()> {
    for g in [transformer()?, elementwise()?, odd_names()?] {
        assert_round_trip(&g);
    }
    assert_round_trip(&GraphBuilder::new("empty", Dims::new()).finish()?);
    Ok(())
}

#[test]
fn every_op_name_is_covered_by_the_round_trip_graphs() -> R<()> {
    let text = print(&transformer()?) + &print(&elementwise()?);
    let names = UnaryOp::ALL
        .map(|u| u.name())
        .into_iter()
        .chain(BinaryOp::ALL.map(|b| b.name()))
        .chain(CmpOp::ALL.map(|c| c.name()))
        .chain(ReduceKind::ALL.map(|r| r.name()))
        .chain([
            "input",
            "param",
            "const",
            "iota",
            "select",
            "cast",
            "softmax",
            "layer_norm",
            "rms_norm",
            "matmul",
            "reshape",
            "transpose",
            "broadcast",
            "concat",
            "slice",
            "gather",
            "scatter_add",
            "embedding",
            "rope",
            "topk_values",
            "topk_indices",
            "cumsum",
            "mask",
        ]);
    for name in names {
        assert!(text.contains(&format!(" = {name} ")), "no `{name}` op");
    }
    Ok(())
}

#[test]
fn prints_the_documented_form() -> R<()> {
    let text = "\
graph gpt2
dims batch = 1, d_model = 768, seq = 128, vocab = 1000, window = 4
layer embed
%0 = input \"tokens\" : [batch, seq] i64
%1 = param \"wte\" : [vocab, d_model] f32
%2 = embedding %1, %0 : [batch, seq, d_model] f32
layer layers.0.attn
%3 = const 0.125 : [] f32
%4 = mul %2, %3 : [batch, seq, d_model] f32
%5 = mask \"k <= q && q - k < window\" : [seq, seq] bool
%6 = reduce_sum %4 {axes = [2], keep_dims = true} : [batch, seq, 1] f32
%7 = slice %1 {axis = 0, start = 0, end = seq} : [seq, d_model] f32
layer
%8 = layer_norm %7, %10, %11 {eps = 1e-5} : [seq, d_model] f32
output logits = %7
";
    // `%8` uses later values: fix the text up so it is valid, then compare exactly.
    let text = text.replace(
        "%8 = layer_norm %7, %10, %11 {eps = 1e-5} : [seq, d_model] f32\n",
        "%8 = const -inf : [] f32\n%9 = cast %4 {to = f16} : [batch, seq, d_model] f16\n",
    );
    let g = parse(&text)?;
    assert_eq!(print(&g), text);
    assert_eq!(g.len(), 10);
    assert_eq!(
        g.node(NodeId::new(4)).layer.as_deref(),
        Some("layers.0.attn")
    );
    assert_eq!(g.node(NodeId::new(8)).layer, None);
    assert_eq!(g.outputs(), &[("logits".to_string(), NodeId::new(7))]);
    Ok(())
}

#[test]
fn floats_print_shortest_and_special_values_round_trip() -> R<()> {
    let mut b = GraphBuilder::new("f", Dims::new());
    for v in [
        1e-5,
        500000.0,
        0.1,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ] {
        b.constant(v, DType::F32)?;
    }
    let g = b.finish()?;
    let text = print(&g);
    for line in [
        "%0 = const 1e-5 : [] f32",
        "%1 = const 500000.0 : [] f32",
        "%2 = const 0.1 : [] f32",
        "%3 = const -0.0 : [] f32",
        "%4 = const inf : [] f32",
        "%5 = const -inf : [] f32",
        "%6 = const nan : [] f32",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    // NaN is not equal to itself, so compare the text.
    assert_eq!(print(&parse(&text)?), text);
    let Op::Const { value } = parse(&text)?.node(NodeId::new(3)).op else {
        panic!("not a const");
    };
    assert!(value == 0.0 && value.is_sign_negative());
    Ok(())
}

#[test]
fn accepts_concrete_sizes_comments_custom_names_and_ints_for_floats() -> R<()> {
    let text = "\
# A hand-written graph.\r
graph hand   # trailing comment\r
\r
dims b = 1, s = 128, d = 768\r
%tokens = input \"x\" : [1, 128, 768] f32\r
%g = param \"g\" : [768] f32\r
%y = rms_norm %tokens, %g {eps = 1} : [1, 128, 768] f32  # int where a float goes\r
%z = matmul %y, %w : [1, 128, 768] f32\r
";
    // `%w` is not defined yet: the first attempt must fail on line 8 ...
    let Err(IrError::Parse { line, .. }) = parse(text) else {
        panic!("undefined operand accepted");
    };
    assert_eq!(line, 8);
    // ... and with it defined, the concrete spelling is kept.
    let text = text.replace(
        "%z = matmul %y, %w",
        "%w = param \"w\" : [d, 768] f32\r\n%z = matmul %y, %w",
    );
    let g = parse(&text)?;
    let last = g.node(NodeId::new(4));
    assert_eq!(
        last.ty,
        TensorType::new(shape(&["1", "128", "768"]), DType::F32)
    );
    assert!(matches!(g.node(NodeId::new(2)).op, Op::RmsNorm { eps } if eps == 1.0));
    // Printing renumbers the values by index.
    assert!(print(&g).contains("%4 = matmul %2, %3 : [1, 128, 768] f32\n"));
    Ok(())
}

#[test]
fn a_long_chain_parses_without_deep_recursion() -> R<()> {
    let mut text = String::from("graph chain\n%0 = input \"x\" : [2] f32\n");
    for i in 1..5000 {
        text.push_str(&format!("%{i} = neg %{} : [2] f32\n", i - 1));
    }
    assert_eq!(parse(&text)?.len(), 5000);
    Ok(())
}

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

const HEADER: &str = "graph g\ndims n = 4, m = 6\n%0 = input \"x\" : [n, m] f32\n";

/// Parse `HEADER` + `body` (so `body` starts on line 4) and return the error.
fn error(text: &str) -> (usize, usize, String) {
    match parse(text) {
        Err(IrError::Parse { line, col, message }) => (line, col, message),
        Err(e) => panic!("not a parse error: {e:?}"),
        Ok(_) => panic!("accepted:\n{text}"),
    }
}

fn body_error(body: &str) -> (usize, usize, String) {
    error(&format!("{HEADER}{body}"))
}

/// 1-based column of the first `needle` in `line`.
fn col_of(line: &str, needle: &str) -> usize {
    line.find(needle)
        .map(|i| line[..i].chars().count() + 1)
        .unwrap_or(0)
}

#[track_caller]
fn check(body: &str, at: &str, expect: &[&str]) {
    let (line, col, message) = body_error(body);
    let first = body.lines().next().unwrap_or_default();
    assert_eq!((line, col), (4, col_of(first, at)), "{message}");
    for e in expect {
        assert!(message.contains(e), "`{e}` not in: {message}");
    }
}

#[test]
fn unknown_op_suggests_the_nearest() {
    check(
        "%1 = matmull %0, %0 : [n, n] f32",
        "matmull",
        &["unknown op `matmull`", "did you mean `matmul`?"],
    );
    check(
        "%1 = gelu_tan %0 : [n, m] f32",
        "gelu_tan",
        &["did you mean `gelu_tanh`?"],
    );
    check(
        "%1 = zzzzzzzzzzzz %0 : [n, m] f32",
        "zzz",
        &["unknown op", "expected an op name"],
    );
}

#[test]
fn undefined_and_duplicate_values() {
    check(
        "%1 = add %0, %9 : [n, m] f32",
        "%9",
        &["`%9` is not defined", "earlier line"],
    );
    check(
        "%0 = neg %0 : [n, m] f32",
        "%0",
        &["`%0` is already defined on line 3"],
    );
    check(
        "%1 = neg %1 : [n, m] f32",
        "%1 : ",
        &["`%1` is not defined"],
    );
    check(
        "%1 = param \"x\" : [n] f32",
        "param",
        &["`x` is already defined on line 3", "unique"],
    );
    check(
        "%1 = add %0 %0 : [n, m] f32",
        "%0 :",
        &["expected `,` between operands"],
    );
    let (line, col, message) = body_error("output y = %0\noutput y = %0\n");
    assert_eq!((line, col), (5, 8), "{message}");
    assert!(
        message.contains("output `y` is already defined on line 4"),
        "{message}"
    );
    let (line, col, message) = body_error("output y = %5\n");
    assert_eq!((line, col), (4, 12));
    assert!(message.contains("`%5` is not defined"), "{message}");
}

#[test]
fn missing_or_malformed_types() {
    let (line, col, message) = body_error("%1 = neg %0");
    assert_eq!((line, col), (4, 12));
    assert_eq!(
        message,
        "expected `:` followed by a type like `[b, s] f32`, found the end of the line"
    );
    check(
        "%1 = neg %0 {} {axis = 1} : [n, m] f32",
        "{axis",
        &["expected `:` followed by a type like `[b, s] f32`, found `{`"],
    );
    check(
        "%1 = neg %0 : n, m f32",
        "n, m",
        &["expected a type like `[b, s] f32`"],
    );
    let (line, col, message) = body_error("%1 = neg %0 : [n, m]");
    assert_eq!((line, col), (4, 21));
    assert!(
        message.contains("expected a dtype like `f32` after the shape, found the end of the line"),
        "{message}"
    );
    check(
        "%1 = neg %0 : [n, m] f33",
        "f33",
        &["unknown dtype `f33`", "`f32`", "`bool`"],
    );
    check("%1 = neg %0 : [n m] f32", "m]", &["expected `,` or `]`"]);
    check(
        "%1 = neg %0 : [n, m] f32 extra",
        "extra",
        &["expected the end of the line after the type"],
    );
    check(
        "%1 = neg %0 : [n, foo] f32",
        "foo",
        &["dimension `foo` is not bound", "`foo = N`"],
    );
    check("%1 = neg %0 : [n, -1] f32", "-1", &["non-negative integer"]);
}

#[test]
fn attribute_errors_name_the_attribute_and_the_op() {
    check(
        "%1 = softmax %0 {axes = 1} : [n, m] f32",
        "axes",
        &["`softmax` has no attribute `axes`", "did you mean `axis`?"],
    );
    check(
        "%1 = softmax %0 : [n, m] f32",
        "softmax",
        &["`softmax` needs the attribute `axis`"],
    );
    check(
        "%1 = slice %0 {axis = 1, start = 0} : [n, m] f32",
        "slice",
        &["needs the attribute `end`", "`axis`, `start`, `end`"],
    );
    check(
        "%1 = softmax %0 {axis = 1, axis = 1} : [n, m] f32",
        "axis = 1}",
        &["attribute `axis` is given twice"],
    );
    check(
        "%1 = softmax %0 {axis = -1} : [n, m] f32",
        "-1",
        &["non-negative integer for the attribute `axis` of `softmax`"],
    );
    check(
        "%1 = softmax %0 {axis = [1]} : [n, m] f32",
        "[1]",
        &["expected a single value for the attribute `axis` of `softmax`"],
    );
    check(
        "%1 = reduce_sum %0 {axes = 1, keep_dims = true} : [n, 1] f32",
        "1,",
        &["expected a list like `[0, 1]` for the attribute `axes` of `reduce_sum`"],
    );
    check(
        "%1 = reduce_max %0 {axes = [1], keep_dims = yes} : [n, 1] f32",
        "yes",
        &["expected `true` or `false` for the attribute `keep_dims` of `reduce_max`"],
    );
    check(
        "%1 = cast %0 {to = f8} : [n, m] f32",
        "f8",
        &["unknown dtype `f8` for the attribute `to` of `cast`"],
    );
    check(
        "%1 = neg %0 {axis = 1} : [n, m] f32",
        "axis",
        &["`neg` takes no attributes, found `axis`"],
    );
    check(
        "%1 = layer_norm %0, %0, %0 {eps = tiny} : [n, m] f32",
        "tiny",
        &[
            "expected a number like `0.125`",
            "attribute `eps` of `layer_norm`",
        ],
    );
    check(
        "%1 = reshape %0 {shape = [n, x]} : [n, m] f32",
        "x]",
        &["dimension `x` is not bound"],
    );
    check(
        "%1 = softmax %0 {axis 1} : [n, m] f32",
        "1}",
        &["expected `=` after `axis`"],
    );
    check(
        "%1 = softmax %0 {axis = 1 : [n, m] f32",
        ":",
        &["expected `,` or `}`"],
    );
    check(
        "%1 = const abc : [] f32",
        "abc",
        &["expected a number", "`const`"],
    );
    check(
        "%1 = const 1e999 : [] f32",
        "1e999",
        &["out of range", "`inf`"],
    );
    check(
        "%1 = input tokens : [n] i64",
        "tokens",
        &["expected the input's name in quotes"],
    );
}

#[test]
fn type_errors_name_the_layer_and_both_shapes() {
    let (line, col, message) = error(&format!(
        "{HEADER}layer blocks.1.mlp\n\
         %1 = param \"w\" : [n, m] f32\n\
         %2 = matmul %0, %1 : [n, m] f32\n"
    ));
    assert_eq!((line, col), (6, 6), "{message}");
    for part in [
        "layer `blocks.1.mlp`",
        "`matmul`",
        "[n, m] (= [4, 6]) f32",
        "inner dims 6 and 4",
    ] {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
    // Inference succeeds but the written type disagrees: the column is the type's.
    check(
        "%1 = exp %0 : [m, n] f32",
        "[m, n]",
        &["declared type [m, n] (= [6, 4]) f32 but the op computes [n, m] (= [4, 6]) f32"],
    );
    check(
        "%1 = exp %0 : [n, m] f16",
        "[n, m]",
        &["declared type", "f16", "f32"],
    );
    check(
        "%1 = add %0 : [n, m] f32",
        "add",
        &["`add` takes 2 operands, got 1"],
    );
}

#[test]
fn mask_errors_point_inside_the_string() {
    let body = "%1 = mask \"k <= q & q < 4\" : [n, n] bool";
    let (line, col, message) = body_error(body);
    // The mask parser reports column 8 of the expression: the lone `&`.
    assert_eq!((line, col), (4, col_of(body, "& q")), "{message}");
    assert!(message.contains("did you mean `&&`?"), "{message}");
    let body = "%1 = mask \"k <= \" : [n, n] bool";
    let (_, col, message) = body_error(body);
    assert_eq!(col, col_of(body, "\" :"), "{message}");
    let deep = format!(
        "%1 = mask \"{}k <= q{}\" : [n, n] bool",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    let (_, _, message) = body_error(&deep);
    assert!(message.contains("deeper"), "{message}");
    check(
        "%1 = mask \"k <= zz\" : [n, n] bool",
        "mask",
        &["refers to `zz`"],
    );
}

#[test]
fn statement_level_errors() {
    assert_eq!(
        error(""),
        (
            1,
            1,
            "expected `graph NAME` as the first line, found the end of the input".into()
        )
    );
    assert_eq!(error("\n  # only a comment\n\n").0, 1);
    let (line, col, message) = error("hello world");
    assert_eq!((line, col), (1, 1));
    assert!(message.contains("expected `graph NAME` as the first line, found `hello`"));
    let (line, col, message) = error("graph g\n  $$$");
    assert_eq!((line, col), (2, 3));
    assert!(message.contains("unexpected character `$`"), "{message}");
    let (line, col, message) = error("graph g h");
    assert_eq!((line, col), (1, 9));
    assert!(
        message.contains("expected the end of the line"),
        "{message}"
    );
    let (line, _, message) = error("graph g\ngraph h");
    assert_eq!(line, 2);
    assert!(message.contains("already named on line 1"), "{message}");
    check("dims k = 3", "dims", &["expected `dims` before the first"]);
    check(
        "frobnicate",
        "frobnicate",
        &["expected an op like `%3 = add %1, %2"],
    );
    check(
        "%1 = input \"unterminated : [n] f32",
        "\"unterm",
        &["unterminated string"],
    );
    check(
        "%1 = input \"a\\qb\" : [n] f32",
        "\\q",
        &["expected an escape"],
    );
    check(
        "% = neg %0 : [n, m] f32",
        "%",
        &["expected a value name after `%`"],
    );
    check(
        "%1 neg %0 : [n, m] f32",
        "neg",
        &["expected `=` after `%1`"],
    );
    check(
        "layer a b",
        "b",
        &["expected the end of the line after the layer name"],
    );
    let (line, col, message) = error("graph g\ndims n = 4, n = 5");
    assert_eq!((line, col), (2, 13));
    assert!(
        message.contains("`n` is already bound on line 2"),
        "{message}"
    );
    let (_, col, message) = error("graph g\ndims n 4");
    assert_eq!(col, 8);
    assert!(message.contains("expected `=` after `n`"), "{message}");
    let (_, _, message) = error("graph g\ndims");
    assert!(
        message.contains("expected a dimension binding like `seq = 128`"),
        "{message}"
    );
}

#[test]
fn deep_nesting_and_huge_numbers_are_errors() {
    let nested = format!(
        "%1 = reshape %0 {{shape = {}n{}}} : [n, m] f32",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let (line, col, message) = body_error(&nested);
    assert_eq!((line, col), (4, col_of(&nested, "[[") + 1));
    assert!(
        message.contains("expected a number or a name in the list, found `[`"),
        "{message}"
    );
    check(
        "%1 = neg %0 : [99999999999999999999999, m] f32",
        "999",
        &["is too large for a dimension"],
    );
    let (line, col, message) = error("graph g\ndims n = 99999999999999999999999");
    assert_eq!((line, col), (2, 10));
    assert!(message.contains("too large"), "{message}");
    // Sizes that fit in u64 but whose product is absurd are a type error of the op.
    let (line, _, message) = error("graph g\ndims n = 4294967296\n%0 = input \"x\" : [n, n] f32");
    assert_eq!(line, 3);
    assert!(message.contains("2^48"), "{message}");
    check(
        "%1 = topk_values %0 {k = 18446744073709551615} : [n, 1] f32",
        "topk",
        &["out of range"],
    );
}

/// Every error, whatever the input, is a parse error with a real position.
fn assert_graceful(text: &str) {
    match parse(text) {
        Ok(_) => {}
        Err(IrError::Parse { line, col, message }) => {
            assert!(
                line >= 1 && col >= 1 && !message.is_empty(),
                "{line}:{col}: {message}"
            );
        }
        Err(e) => panic!("not a parse error: {e:?} for\n{text}"),
    }
}

#[test]
fn mutated_inputs_never_panic() -> R<()> {
    let text = print(&transformer()?);
    let chars: Vec<char> = text.chars().collect();
    for i in 0..chars.len() {
        let mut deleted = chars.clone();
        deleted.remove(i);
        assert_graceful(&deleted.iter().collect::<String>());
        assert_graceful(&chars[..i].iter().collect::<String>());
        for c in ['[', '}', ',', '%', '"', '-', '9', 'x', '\n', 'é'] {
            let mut replaced = chars.clone();
            replaced[i] = c;
            assert_graceful(&replaced.iter().collect::<String>());
        }
    }
    Ok(())
}

#[test]
fn to_dot_labels_nodes_and_operand_slots() -> R<()> {
    let g = parse(
        "graph d\ndims s = 2\n%0 = input \"x\" : [s, s] f32\n%1 = sub %0, %0 : [s, s] f32\n",
    )?;
    let dot = to_dot(&g);
    assert!(dot.starts_with("digraph {\n"));
    assert!(
        dot.contains("0 [ label = \"%0 input \\\"x\\\"\\n[s, s] f32\"]"),
        "{dot}"
    );
    assert!(
        dot.contains("1 [ label = \"%1 sub\\n[s, s] f32\"]"),
        "{dot}"
    );
    assert!(dot.contains("0 -> 1 [ label = \"0\"]"), "{dot}");
    assert!(dot.contains("0 -> 1 [ label = \"1\"]"), "{dot}");
    assert_eq!(dot, to_dot(&g));
    Ok(())
}
