//! Model specs: parsing, errors with positions and hints, `--set`, `--tiny`, lowering.

use attnc_ir::spec::{lower, parse_spec, Format, SpecSource};
use attnc_ir::{IrError, Op};

const GPT2: &str = include_str!("../../examples/gpt2.toml");
const LLAMA: &str = include_str!("../../examples/llama3-8b.toml");

fn parse(text: &str, sets: &[&str], tiny: bool) -> Result<attnc_ir::spec::Spec, IrError> {
    let source = SpecSource {
        sets: sets.iter().map(|s| s.to_string()).collect(),
        tiny,
    };
    parse_spec(text, Format::Toml, &source)
}

fn count(graph: &attnc_ir::Graph, name: &str) -> usize {
    graph
        .node_ids()
        .filter(|&id| graph.node(id).op.name() == name)
        .count()
}

#[test]
fn examples_lower_at_full_size() {
    let g = lower(&parse(LLAMA, &[], false).unwrap()).unwrap();
    assert_eq!(count(&g, "softmax"), 32);
    assert_eq!(count(&g, "rope"), 64);
    assert_eq!(count(&g, "rms_norm"), 65);
    assert_eq!(g.dims.get("kv_group"), Some(4));
    assert_eq!(g.outputs()[0].0, "logits");
    assert_eq!(g.sizes(g.outputs()[0].1), vec![1, 8192, 128256]);

    let g = lower(&parse(GPT2, &[], false).unwrap()).unwrap();
    assert_eq!(count(&g, "softmax"), 12);
    assert_eq!(count(&g, "gelu_tanh"), 12);
    assert_eq!(count(&g, "layer_norm"), 25);
    assert_eq!(count(&g, "mask"), 12);
    let params: u64 = g
        .params()
        .iter()
        .map(|(_, id)| g.sizes(*id).iter().map(|&n| n as u64).product::<u64>())
        .sum();
    assert_eq!(params, 124_439_808, "GPT-2 small has 124.4M parameters");
}

#[test]
fn llama_parameter_count_is_8b() {
    let g = lower(&parse(LLAMA, &[], false).unwrap()).unwrap();
    let params: u64 = g
        .params()
        .iter()
        .map(|(_, id)| g.sizes(*id).iter().map(|&n| n as u64).product::<u64>())
        .sum();
    assert_eq!(params, 8_030_261_248);
}

#[test]
fn tiny_keeps_structure() {
    let full = parse(LLAMA, &[], false).unwrap();
    let tiny = parse(LLAMA, &[], true).unwrap();
    let (f, t) = (full.layer_config(0).unwrap(), tiny.layer_config(0).unwrap());
    assert_eq!(
        f.attention.heads / f.attention.kv_heads,
        t.attention.heads / t.attention.kv_heads
    );
    assert_eq!(t.attention.kv_heads, 2);
    assert_eq!(t.attention.head_dim, 8);
    assert_eq!(tiny.d_model, t.attention.heads * t.attention.head_dim);
    assert_eq!(tiny.layers, 2);
    assert_eq!(tiny.dims["seq"], 32);
    // FFN ratio 14336/4096 = 3.5 is kept.
    assert_eq!(t.ffn.hidden as f64 / tiny.d_model as f64, 3.5);
    assert_eq!(f.attention.mask, t.attention.mask);
    lower(&tiny).unwrap();
}

#[test]
fn tiny_scales_windows_with_the_sequence() {
    let text = format!(
        "{}\n",
        LLAMA
            .replace("seq = 8192", "seq = 8192\nwindow = 4096")
            .replace("mask = \"k <= q\"", "mask = \"k <= q && q - k < window\"")
    );
    let tiny = parse(&text, &[], true).unwrap();
    assert_eq!(tiny.dims["window"], 16);
}

#[test]
fn set_overrides_short_and_dotted_keys_and_wins_over_tiny() {
    let s = parse(GPT2, &["seq=64", "layers=2", "attention.heads=4"], true).unwrap();
    assert_eq!(s.dims["seq"], 64);
    assert_eq!(s.layers, 2);
    assert_eq!(s.attention.heads, Some(4));
    let s = parse(GPT2, &["kv_heads=4", "heads=8"], false).unwrap();
    assert_eq!(s.attention.kv_heads, Some(4));
    let g = lower(&s).unwrap();
    assert_eq!(
        count(&g, "broadcast"),
        24,
        "GQA repeats K and V in every layer"
    );
}

#[test]
fn unknown_keys_are_errors_with_position_and_hint() {
    let text = GPT2.replace("heads = 12", "hedas = 12");
    let e = parse(&text, &[], false).unwrap_err();
    let IrError::Parse { line, col, message } = e else {
        panic!("expected a parse error, got {e:?}")
    };
    let expected_line = GPT2.lines().position(|l| l.starts_with("heads")).unwrap() + 1;
    assert_eq!((line, col), (expected_line, 1));
    assert!(message.contains("did you mean `heads`?"), "{message}");

    let e = parse(GPT2, &["hedas=3"], false).unwrap_err().to_string();
    assert!(e.contains("did you mean `heads`?"), "{e}");

    let text = GPT2.replace("kind = \"gelu_tanh\"", "kind = \"gelu_tanhh\"");
    let e = parse(&text, &[], false).unwrap_err().to_string();
    assert!(e.contains("did you mean `gelu_tanh`?"), "{e}");
}

#[test]
fn malformed_toml_and_json_report_line_and_column() {
    let e = parse("name = \"x\"\nvocab = = 3\n", &[], false).unwrap_err();
    assert!(matches!(e, IrError::Parse { line: 2, .. }), "{e:?}");
    let e = parse_spec(
        "{\n  \"name\": \"x\",\n  \"vocab\": }",
        Format::Json,
        &SpecSource::default(),
    )
    .unwrap_err();
    assert!(matches!(e, IrError::Parse { line: 3, .. }), "{e:?}");
}

#[test]
fn json_specs_are_accepted() {
    let spec = parse(GPT2, &[], false).unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    let back = parse_spec(&json, Format::Json, &SpecSource::default()).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn semantic_errors_name_the_layer() {
    // Every layer is resolved when the spec is read, so these fail in `parse_spec`.
    let text = format!("{GPT2}\n[[override]]\nlayers = [3]\nattention = {{ kv_heads = 5 }}\n");
    let e = parse(&text, &[], false).unwrap_err().to_string();
    assert!(e.contains("layers.3") && e.contains("multiple"), "{e}");
    // ... and --tiny cannot hide them.
    let e = parse(&text, &[], true).unwrap_err().to_string();
    assert!(e.contains("layers.3") && e.contains("multiple"), "{e}");

    let text = GPT2.replace("mask = \"k <= q\"", "mask = \"k <= q & q < 3\"");
    let e = parse(&text, &[], false).unwrap_err().to_string();
    assert!(e.contains("layers.0") && e.contains("&&"), "{e}");

    let text = GPT2.replace("mask = \"k <= q\"", "mask = \"q - k < window\"");
    let e = parse(&text, &[], false).unwrap_err().to_string();
    assert!(e.contains("window") && e.contains("[dims]"), "{e}");

    let e = parse(GPT2, &["dims.vocab=3"], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("derived from `vocab`"), "{e}");
    let e = parse(GPT2, &["rope_theta=0"], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rope_theta"), "{e}");
    let text = GPT2.replace("out_bias = true", "out_bias = true\nscale = inf");
    let e = parse(&text, &[], false).unwrap_err().to_string();
    assert!(
        e.contains("`attention.scale` must be a finite number"),
        "{e}"
    );

    let e = parse(GPT2, &["seq=2048"], false).unwrap_err().to_string();
    assert!(e.contains("max_positions"), "{e}");
    let e = parse(GPT2, &["d_model=0"], false).unwrap_err().to_string();
    assert!(e.contains("at least 1"), "{e}");
    let e = parse(GPT2, &["seq=9223372036854775807"], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("maximum"), "{e}");
}

#[test]
fn huge_sizes_fail_cleanly_in_lowering() {
    // Each dim is allowed, but their product overflows the element limit.
    let s = parse(
        GPT2,
        &["seq=1000000", "max_positions=1000000", "vocab=4000000000"],
        false,
    )
    .unwrap();
    let e = lower(&s).unwrap_err().to_string();
    assert!(e.contains("2^48"), "{e}");
}

#[test]
fn patterns_and_overrides_change_layers() {
    let text = format!(
        "{}\npattern = [\"local\", \"global\"]\n[kinds.local.attention]\nmask = \"k <= q && q - k < window\"\n[kinds.global]\n[[override]]\nlayers = [0]\nffn = {{ kind = \"relu\" }}\n",
        GPT2.replace("seq = 1024", "seq = 1024\nwindow = 128")
    );
    // `pattern` must come before the tables in TOML: put it at the top instead.
    let text = text.replace("\npattern = [\"local\", \"global\"]\n", "\n");
    let text = format!("pattern = [\"local\", \"global\"]\n{text}");
    let s = parse(&text, &[], false).unwrap();
    let l0 = s.layer_config(0).unwrap();
    let l1 = s.layer_config(1).unwrap();
    assert_eq!(l0.kind.as_deref(), Some("local"));
    assert!(l0.attention.mask.unwrap().to_string().contains("window"));
    assert_eq!(l1.attention.mask.unwrap().to_string(), "k <= q");
    assert_eq!(l0.ffn.kind, attnc_ir::spec::FfnKind::Relu);
    let g = lower(&s).unwrap();
    assert_eq!(count(&g, "relu"), 1);
    let tiny = parse(&text, &[], true).unwrap();
    assert_eq!(tiny.dims["window"], 4);
    lower(&tiny).unwrap();
}

#[test]
fn moe_is_parsed_but_lowering_says_not_yet() {
    let text = GPT2.replace(
        "kind = \"gelu_tanh\"",
        "kind = \"moe\"\nexperts = 8\ntop_k = 2\nrouter = \"softmax_topk\"",
    );
    let s = parse(&text, &[], false).unwrap();
    let e = lower(&s).unwrap_err().to_string();
    assert!(e.contains("layers.0") && e.contains("moe"), "{e}");
}

#[test]
fn alibi_and_softcap_lower() {
    let text = GPT2
        .replace("position = \"learned\"", "position = \"alibi\"")
        .replace(
            "out_bias = true",
            "out_bias = true\nscore_modifier = \"softcap:30\"",
        );
    let g = lower(&parse(&text, &[], true).unwrap()).unwrap();
    assert_eq!(count(&g, "tanh"), 2);
    assert_eq!(count(&g, "iota"), 6);
    assert!(g
        .node_ids()
        .all(|id| !matches!(g.node(id).op, Op::Slice { .. })));
}
