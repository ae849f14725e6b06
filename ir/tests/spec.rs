//! Model specs: parsing, errors with positions and hints, `--set`, `--tiny`, lowering.

use attnc_ir::spec::{lower, parse_spec, Format, SpecSource};
use attnc_ir::{IrError, Op};

const GPT2: &str = include_str!("../../examples/gpt2.toml");
const LLAMA: &str = include_str!("../../examples/llama3-8b.toml");
const MISTRAL: &str = include_str!("../../examples/mistral-7b.toml");
const DEEPSEEK: &str = include_str!("../../examples/deepseek-v2-lite.toml");

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

/// GPT-2 with a mixture in place of its MLP: `ffn` replaces `kind = "gelu_tanh"`.
fn gpt2_moe(ffn: &str) -> String {
    GPT2.replace("kind = \"gelu_tanh\"", &format!("kind = \"moe\"\n{ffn}"))
        .replace("hidden = 3072\nbias = true", "hidden = 3072")
}

#[test]
fn moe_lowers_in_dense_gated_form() {
    let text = gpt2_moe("experts = 8\ntop_k = 2\nexpert_kind = \"gelu_tanh\"");
    let s = parse(&text, &[], false).unwrap();
    let m = s.layer_config(0).unwrap().ffn.moe.unwrap();
    assert_eq!(m.router, attnc_ir::spec::Router::TopK { k: 2 });
    let g = lower(&s).unwrap();
    // Per layer: the router's top-k and the experts as batched matmuls over all 8.
    assert_eq!(count(&g, "topk_indices"), 12);
    assert_eq!(count(&g, "gelu_tanh"), 12);
    assert_eq!(g.dims.get("experts"), Some(8));
    assert_eq!(g.dims.get("tokens"), Some(1024));
    let names = params(&g);
    for p in ["router", "experts.w_up", "experts.w_down"] {
        assert!(
            names.contains(&format!("layers.3.ffn.{p}")),
            "{p}: {names:?}"
        );
    }
    // Switch: capacity ⌈1.25 × 1024 / 8⌉ = 160 tokens per expert.
    let s = parse(
        &gpt2_moe("experts = 8\nrouter = \"switch\"\ncapacity_factor = 1.25"),
        &[],
        false,
    )
    .unwrap();
    let m = s.layer_config(0).unwrap().ffn.moe.unwrap();
    assert_eq!(m.router, attnc_ir::spec::Router::Switch { capacity: 160 });
    assert_eq!(count(&lower(&s).unwrap(), "cumsum"), 12);
    // Expert choice: 2 × 1024 / 8 = 256 tokens per expert by default.
    let s = parse(
        &gpt2_moe("experts = 8\nrouter = \"expert_choice\""),
        &[],
        false,
    )
    .unwrap();
    let m = s.layer_config(0).unwrap().ffn.moe.unwrap();
    assert_eq!(
        m.router,
        attnc_ir::spec::Router::ExpertChoice { capacity: 256 }
    );
    // Shared experts: one MLP of 2 × hidden, gated by a sigmoid.
    let text = gpt2_moe("experts = 8\ntop_k = 2\nshared_experts = 2\nshared_expert_gate = true");
    let s = parse(&text, &[], false).unwrap();
    let shared = s.layer_config(0).unwrap().ffn.moe.unwrap().shared.unwrap();
    assert_eq!((shared.hidden, shared.gate), (2 * 3072, true));
    let names = params(&lower(&s).unwrap());
    assert!(names.contains(&"layers.0.ffn.shared.gate".to_string()));
}

#[test]
fn moe_field_errors_name_the_field_and_layer() {
    let cases: [(&str, &[&str]); 12] = [
        ("top_k = 2", &["layers.0", "ffn.experts"]),
        ("experts = 1\ntop_k = 1", &["at least 2 experts"]),
        ("experts = 4", &["softmax_topk", "top_k"]),
        (
            "experts = 4\ntop_k = 5",
            &["top_k", "more than the 4 experts"],
        ),
        ("experts = 4\nrouter = \"switch\"\ntop_k = 2", &["top-1"]),
        (
            "experts = 4\nrouter = \"expert_choice\"\ntop_k = 2",
            &["expert_choice", "top_k"],
        ),
        ("experts = 4\nrouter = \"hash\"", &["ffn.router", "hash"]),
        (
            "experts = 4\ntop_k = 2\ncapacity_factor = 1.0",
            &["capacity_factor", "switch"],
        ),
        (
            "experts = 4\nrouter = \"switch\"\ncapacity_factor = -1.0",
            &["capacity_factor", "positive"],
        ),
        (
            "experts = 4\nrouter = \"switch\"\nnorm_topk_prob = true",
            &["norm_topk_prob", "softmax_topk"],
        ),
        (
            "experts = 4\ntop_k = 2\nscoring_func = \"tanh\"",
            &["scoring_func", "tanh"],
        ),
        (
            "experts = 4\ntop_k = 2\nexpert_kind = \"moe\"",
            &["expert_kind", "moe"],
        ),
    ];
    for (ffn, want) in cases {
        let e = parse(&gpt2_moe(ffn), &[], false).unwrap_err().to_string();
        for w in want {
            assert!(e.contains(w), "{ffn}: {e}");
        }
    }
    // MoE fields on a dense FFN are a mistake, not silently ignored ...
    let e = parse(GPT2, &["ffn.top_k=2"], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ffn.top_k") && e.contains("moe"), "{e}");
    // ... unless a dense layer overrides a mixture (DeepSeek's first layer).
    let s = parse(DEEPSEEK, &[], false).unwrap();
    assert!(s.layer_config(0).unwrap().ffn.moe.is_none());
    assert!(s.layer_config(1).unwrap().ffn.moe.is_some());
}

#[test]
fn moe_lowering_interprets_with_tiny_sizes() {
    use attnc_ir::interp::{eval, Precision};
    let text = gpt2_moe("experts = 6\ntop_k = 3\nnorm_topk_prob = true\nshared_experts = 1");
    let s = parse(&text, &[], true).unwrap();
    let m = s.layer_config(0).unwrap().ffn.moe.unwrap();
    // Tiny: six experts kept, top-3 of them.
    assert_eq!(
        (m.experts, m.router),
        (6, attnc_ir::spec::Router::TopK { k: 3 })
    );
    let g = lower(&s).unwrap();
    let out = eval(&g, &attnc_ir::random_bindings(&g, 1), Precision::F64).unwrap();
    assert!(out[0].data.iter().all(|v| v.is_finite()));
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

fn params(graph: &attnc_ir::Graph) -> Vec<String> {
    graph.params().iter().map(|(n, _)| n.to_string()).collect()
}

fn param_count(graph: &attnc_ir::Graph) -> u64 {
    graph
        .params()
        .iter()
        .map(|(_, id)| graph.sizes(*id).iter().map(|&n| n as u64).product::<u64>())
        .sum()
}

/// A small MLA model, written out (not `--tiny`), with low-rank queries.
const MLA_TINY: &str = r#"
name = "mla-tiny"
vocab = 50
d_model = 24
layers = 2
norm = "rmsnorm"
norm_eps = 1e-6
position = "rope"

[dims]
batch = 2
seq = 8

[attention]
heads = 3
kv_lora_rank = 10
q_lora_rank = 12
qk_nope_head_dim = 6
qk_rope_head_dim = 4
v_head_dim = 5

[ffn]
kind = "swiglu"
hidden = 32
"#;

#[test]
fn mistral_has_a_sliding_window() {
    let s = parse(MISTRAL, &[], false).unwrap();
    let l = s.layer_config(0).unwrap();
    assert_eq!(
        l.attention.mask.unwrap().to_string(),
        "k <= q && q - k < window"
    );
    let g = lower(&s).unwrap();
    assert_eq!(g.dims.get("window"), Some(4096));
    assert_eq!(count(&g, "mask"), 32);
    assert_eq!(g.sizes(g.outputs()[0].1), vec![1, 8192, 32000]);
    // 7.24B parameters (Mistral 7B v0.1).
    assert_eq!(param_count(&g), 7_241_732_096);
    let tiny = parse(MISTRAL, &[], true).unwrap();
    assert_eq!(tiny.dims["window"], 16);
    lower(&tiny).unwrap();
}

#[test]
fn mla_fields_parse_and_resolve() {
    let s = parse(DEEPSEEK, &[], false).unwrap();
    let a = s.layer_config(0).unwrap().attention;
    let m = a.mla.expect("kv_lora_rank makes the layer MLA");
    assert_eq!(
        m,
        attnc_ir::spec::Mla {
            kv_lora_rank: 512,
            q_lora_rank: None,
            qk_rope_head_dim: 64,
            qk_nope_head_dim: 128,
            v_head_dim: 128,
        }
    );
    assert_eq!((a.heads, a.kv_heads, a.head_dim), (16, 16, 192));
    assert_eq!(
        a.scale,
        1.0 / 192f64.sqrt(),
        "default scale is 1/sqrt(dn+dr)"
    );
    // Short keys reach the new fields, and JSON round-trips them.
    let s = parse(DEEPSEEK, &["q_lora_rank=256", "kv_lora_rank=64"], false).unwrap();
    let m = s.layer_config(0).unwrap().attention.mla.unwrap();
    assert_eq!((m.kv_lora_rank, m.q_lora_rank), (64, Some(256)));
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(
        parse_spec(&json, Format::Json, &SpecSource::default()).unwrap(),
        s
    );
    // A plain layer has no MLA.
    assert!(parse(LLAMA, &[], false)
        .unwrap()
        .layer_config(0)
        .unwrap()
        .attention
        .mla
        .is_none());
}

#[test]
fn mla_validation_errors_name_the_layer_and_field() {
    for field in ["qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"] {
        let text = DEEPSEEK
            .lines()
            .filter(|l| !l.starts_with(field))
            .collect::<Vec<_>>()
            .join("\n");
        let e = parse(&text, &[], false).unwrap_err().to_string();
        assert!(
            e.contains("layers.0")
                && e.contains(&format!("`attention.{field}` is required"))
                && e.contains("kv_lora_rank"),
            "{e}"
        );
    }
    let e = parse(DEEPSEEK, &["kv_heads=4"], false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layers.0") && e.contains("kv_heads") && e.contains("must equal"),
        "{e}"
    );
    // kv_heads equal to heads is fine.
    parse(DEEPSEEK, &["kv_heads=16"], false).unwrap();
    for position in ["none", "alibi"] {
        let e = parse(DEEPSEEK, &[&format!("position={position}")], false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layers.0") && e.contains("rope") && e.contains(position),
            "{e}"
        );
    }
    let e = parse(DEEPSEEK, &["qk_rope_head_dim=7"], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("even") && e.contains("qk_rope_head_dim"), "{e}");
    let e = parse(DEEPSEEK, &["v_head_dim=0"], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("v_head_dim") && e.contains("at least 1"), "{e}");
    let e = parse(DEEPSEEK, &["qkv_bias=true"], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("qkv_bias") && e.contains("latent"), "{e}");
    // MLA-only fields without kv_lora_rank are a mistake, not silently ignored.
    let e = parse(LLAMA, &["qk_rope_head_dim=64"], false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layers.0") && e.contains("qk_rope_head_dim") && e.contains("kv_lora_rank"),
        "{e}"
    );
    // ... and the error is per layer when an override sets it.
    let text = format!("{DEEPSEEK}\n[[override]]\nlayers = [5]\nattention = {{ kv_heads = 2 }}\n");
    let e = parse(&text, &[], true).unwrap_err().to_string();
    assert!(e.contains("layers.5") && e.contains("kv_heads"), "{e}");
    // MLA dim names are derived, not free.
    let e = parse(DEEPSEEK, &["dims.kv_lora_rank=3"], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("derived from `attention.kv_lora_rank`"), "{e}");
}

#[test]
fn mla_lowers_at_full_size() {
    let g = lower(&parse(DEEPSEEK, &[], false).unwrap()).unwrap();
    // Attention in every layer, a router in every layer but the first (dense).
    assert_eq!(count(&g, "softmax"), 27 + 26);
    assert_eq!(count(&g, "concat"), 54);
    assert_eq!(count(&g, "slice"), 54);
    assert_eq!(count(&g, "rope"), 54);
    // attn_norm, kv_norm and ffn_norm per layer, and the final norm.
    assert_eq!(count(&g, "rms_norm"), 27 * 3 + 1);
    assert_eq!(g.dims.get("mla_q_dim"), Some(16 * 192));
    assert_eq!(g.dims.get("qk_head_dim"), Some(192));
    assert_eq!(g.dims.get("head_dim"), None, "MLA does not use head_dim");
    assert_eq!(g.sizes(g.outputs()[0].1), vec![1, 4096, 102400]);
    // Embedding and head 2 × 209.7M, 27 × (attention 13.76M + norms), the first
    // layer's dense SwiGLU 67.24M, 26 × (64 routed experts 553.6M + the shared
    // experts 17.3M + the router): DeepSeek-V2-Lite's 15.7B.
    let dense = 3 * 2048 * 10944;
    let moe = 64 * 3 * 2048 * 1408 + 3 * 2048 * 2816 + 2048 * 64;
    assert_eq!(param_count(&g), 2_606_624_256 - 26 * dense + 26 * moe);
}

#[test]
fn mla_lowering_interprets() {
    use attnc_ir::interp::{eval, Precision};
    let s = parse(MLA_TINY, &[], false).unwrap();
    let g = lower(&s).unwrap();
    let names = params(&g);
    for p in [
        "wq_a",
        "q_norm.weight",
        "wq_b",
        "wkv_a",
        "kv_norm.weight",
        "wk_rope",
        "wk_b",
        "wv_b",
        "wo",
    ] {
        for layer in 0..2 {
            let name = format!("layers.{layer}.attn.{p}");
            assert!(names.contains(&name), "missing {name} in {names:?}");
        }
    }
    assert!(!names
        .iter()
        .any(|n| n.ends_with(".wk") || n.ends_with(".wv")));
    let out = eval(&g, &attnc_ir::random_bindings(&g, 3), Precision::F64).unwrap();
    assert_eq!(out[0].shape, vec![2, 8, 50]);
    assert!(out[0].data.iter().all(|v| v.is_finite()));

    // Without q_lora_rank the query is one full-rank projection.
    let text = MLA_TINY.replace("q_lora_rank = 12\n", "");
    let g = lower(&parse(&text, &[], false).unwrap()).unwrap();
    let names = params(&g);
    assert!(names.contains(&"layers.0.attn.wq".to_string()));
    assert!(!names
        .iter()
        .any(|n| n.contains("wq_a") || n.contains("q_norm")));
    let out = eval(&g, &attnc_ir::random_bindings(&g, 3), Precision::F64).unwrap();
    assert!(out[0].data.iter().all(|v| v.is_finite()));
}

#[test]
fn tiny_shrinks_mla_and_keeps_pins() {
    let tiny = parse(DEEPSEEK, &[], true).unwrap();
    let a = tiny.layer_config(0).unwrap().attention;
    let m = a.mla.unwrap();
    assert_eq!(
        (
            m.kv_lora_rank,
            m.q_lora_rank,
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.v_head_dim
        ),
        (16, None, 8, 4, 8)
    );
    assert_eq!(tiny.d_model, a.heads * m.v_head_dim);
    assert_eq!(tiny.layers, 2);
    let g = lower(&tiny).unwrap();
    assert_eq!(count(&g, "concat"), 4);

    let tiny = parse(DEEPSEEK, &["q_lora_rank=1536", "qk_rope_head_dim=16"], true).unwrap();
    let m = tiny.layer_config(0).unwrap().attention.mla.unwrap();
    assert_eq!(m.q_lora_rank, Some(1536), "pinned with --set");
    assert_eq!(m.qk_rope_head_dim, 16, "pinned with --set");
    assert_eq!(m.kv_lora_rank, 16);
    // A low-rank query from the file shrinks too.
    let text = DEEPSEEK.replace("v_head_dim = 128", "v_head_dim = 128\nq_lora_rank = 1536");
    let tiny = parse(&text, &[], true).unwrap();
    let m = tiny.layer_config(0).unwrap().attention.mla.unwrap();
    assert_eq!(m.q_lora_rank, Some(16));
    let g = lower(&tiny).unwrap();
    assert!(params(&g).contains(&"layers.1.attn.q_norm.weight".to_string()));
}
