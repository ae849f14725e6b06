//! Hugging Face `config.json` import: the shipped configs map onto the same networks
//! as the hand-written example specs, and every field that could change the math is
//! either mapped or an error naming it.

use attnc_ir::spec::hf::{import_hf, is_hf_config};
use attnc_ir::spec::{lower, parse_spec, Format, SpecSource};

fn example(name: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/");
    std::fs::read_to_string(format!("{root}{name}")).unwrap()
}

/// The IR of a spec (TOML or imported JSON) with `sets`, named `model`.
fn ir(spec: attnc_ir::spec::Spec, sets: &[&str]) -> String {
    let json = serde_json::to_string(&spec).unwrap();
    let source = SpecSource {
        sets: sets.iter().map(|s| s.to_string()).collect(),
        tiny: false,
    };
    let mut spec = parse_spec(&json, Format::Json, &source).unwrap();
    spec.name = "model".into();
    attnc_ir::print(&lower(&spec).unwrap())
}

fn toml_spec(name: &str) -> attnc_ir::spec::Spec {
    let source = SpecSource::default();
    parse_spec(&example(name), Format::Toml, &source).unwrap()
}

#[test]
fn shipped_configs_are_the_example_networks() {
    // (config, hand-written spec, sets making the run-time sizes agree)
    let cases: &[(&str, &str, &[&str])] = &[
        ("hf/llama3-8b.json", "llama3-8b.toml", &["seq=8192"]),
        ("hf/mistral-7b.json", "mistral-7b.toml", &[]),
        ("hf/mixtral-8x7b.json", "mixtral-8x7b.toml", &[]),
        ("hf/qwen1.5-moe-a2.7b.json", "qwen2-moe.toml", &[]),
        ("hf/gpt2.json", "gpt2.toml", &[]),
    ];
    for (config, spec, sets) in cases {
        let text = example(config);
        assert!(is_hf_config(&text), "{config}");
        let imported = import_hf(&text, "model").unwrap_or_else(|e| panic!("{config}: {e}"));
        let want = ir(toml_spec(spec), &[]);
        let got = ir(imported.spec, sets);
        assert_eq!(got, want, "{config} differs from {spec}");
        assert!(
            imported.ignored.iter().any(|(k, _)| k == "architectures"),
            "{config}: {:?}",
            imported.ignored
        );
    }
    // An attnc spec written in JSON is not a config.
    let spec_json = serde_json::to_string(&toml_spec("gpt2.toml")).unwrap();
    assert!(!is_hf_config(&spec_json));
}

/// DeepSeek-V2-Lite's config.json with `rope_scaling` (YaRN, not modelled yet) null.
const DEEPSEEK_V2_LITE: &str = r#"{
  "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": false,
  "attention_dropout": 0.0, "aux_loss_alpha": 0.001, "bos_token_id": 100000,
  "eos_token_id": 100001, "first_k_dense_replace": 1, "hidden_act": "silu",
  "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 10944,
  "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v2",
  "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1,
  "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": false,
  "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27,
  "num_key_value_heads": 16, "pretraining_tp": 1, "q_lora_rank": null,
  "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
  "rope_scaling": null, "rope_theta": 10000, "routed_scaling_factor": 1.0,
  "scoring_func": "softmax", "seq_aux": true, "tie_word_embeddings": false,
  "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16",
  "transformers_version": "4.33.1", "use_cache": true, "v_head_dim": 128,
  "vocab_size": 102400
}"#;

#[test]
fn deepseek_v2_maps_mla_and_its_experts() {
    let imported = import_hf(DEEPSEEK_V2_LITE, "model").unwrap();
    assert_eq!(
        ir(imported.spec, &[]),
        ir(toml_spec("deepseek-v2-lite.toml"), &[])
    );
    // The shipped config, with its real YaRN scaling: the rope carries it, and the
    // softmax scale is DeepSeek's q_head_dim^-1/2 · mscale(40, 0.707)².
    let real = import_hf(&example("hf/deepseek-v2-lite.json"), "model").unwrap();
    let mscale = 0.1 * 0.707 * 40f64.ln() + 1.0;
    let scale = real.spec.attention.scale.unwrap();
    assert!(
        (scale - mscale * mscale / 192f64.sqrt()).abs() < 1e-15,
        "{scale}"
    );
    let text = ir(real.spec, &[]);
    assert!(
        text.contains("scaling = yarn, factor = 40.0, original_max_positions = 4096"),
        "{text}"
    );
    // A scaling attnc does not model is an error naming it.
    let dynamic = DEEPSEEK_V2_LITE.replace(
        r#""rope_scaling": null"#,
        r#""rope_scaling": {"type": "dynamic", "factor": 4}"#,
    );
    let e = import_hf(&dynamic, "model").unwrap_err().to_string();
    assert!(e.contains("rope_scaling") && e.contains("dynamic"), "{e}");
    let unknown = DEEPSEEK_V2_LITE.replace(
        r#""rope_scaling": null"#,
        r#""rope_scaling": {"type": "yarn", "factor": 4, "extrapolation": 2}"#,
    );
    let e = import_hf(&unknown, "model").unwrap_err().to_string();
    assert!(e.contains("extrapolation"), "{e}");
}

#[test]
fn llama3_rope_scaling_imports_onto_the_rope_op() {
    let llama = example("hf/llama3-8b.json").replace(
        r#""rope_scaling": null"#,
        r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#,
    );
    let imported = import_hf(&llama, "model").unwrap();
    let text = ir(imported.spec, &["layers=1"]);
    assert!(
        text.contains("scaling = llama3, factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0, original_max_positions = 8192"),
        "{text}"
    );
}

#[test]
fn fields_that_change_the_math_are_errors_naming_them() {
    let llama = example("hf/llama3-8b.json");
    let cases: &[(&str, &str, &[&str])] = &[
        (
            r#""rope_scaling": null"#,
            r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#,
            &["rope_scaling", "llama3"],
        ),
        (
            r#""hidden_act": "silu""#,
            r#""hidden_act": "gelu""#,
            &["hidden_act", "gelu"],
        ),
        (
            r#""use_cache": true"#,
            r#""use_cache": true, "qk_layernorm": true"#,
            &["qk_layernorm", "may change the model"],
        ),
        (
            r#""model_type": "llama""#,
            r#""model_type": "falcon""#,
            &["falcon", "llama, mistral"],
        ),
        (r#""hidden_size": 4096,"#, "", &["hidden_size"]),
        (
            r#""num_hidden_layers": 32"#,
            r#""num_hidden_layers": "32""#,
            &["num_hidden_layers", "integer"],
        ),
        (
            r#""torch_dtype": "bfloat16""#,
            r#""torch_dtype": "int8""#,
            &["torch_dtype"],
        ),
    ];
    for (from, to, needles) in cases {
        assert!(llama.contains(from), "{from}");
        let text = llama.replace(from, to);
        let e = import_hf(&text, "model").unwrap_err().to_string();
        for n in *needles {
            assert!(e.contains(n), "{to}: {e}");
        }
    }
    let e = import_hf("[1, 2]", "model").unwrap_err().to_string();
    assert!(e.contains("one JSON object"), "{e}");
    let e = import_hf("{\"model_type\": ", "model")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn imported_specs_note_what_they_chose() {
    let imported = import_hf(&example("hf/mistral-7b.json"), "mistral").unwrap();
    let toml = imported.to_toml("mistral-7b.json").unwrap();
    assert!(
        toml.contains("# dims.seq = 8192 (max_position_embeddings 32768)"),
        "{toml}"
    );
    assert!(toml.contains("#   use_cache: "), "{toml}");
    assert!(toml.contains("weights are stored in bf16"), "{toml}");
    // The TOML reads back as the same spec.
    let back = parse_spec(&toml, Format::Toml, &SpecSource::default()).unwrap();
    assert_eq!(back, imported.spec);
}

#[test]
fn mamba2_maps_its_mixer_convolution_and_groups() {
    use attnc_ir::spec::{FfnKind, Mixer};
    let text = example("hf/mamba2.json");
    // Python's json writes `Infinity` (time_step_limit): still a config.
    assert!(text.contains("Infinity") && is_hf_config(&text));
    let imported = import_hf(&text, "model").unwrap();
    let s = &imported.spec;
    assert_eq!((s.d_model, s.layers, s.vocab), (4096, 64, 32768));
    assert!(!s.tie_embeddings);
    let cfg = s.layer_config(0).unwrap();
    assert_eq!(
        cfg.attention.mixer,
        Some(Mixer::Mamba2 {
            state: 128,
            expand: 2,
            conv: Some((4, true)),
            groups: 8
        })
    );
    assert_eq!((cfg.attention.heads, cfg.attention.head_dim), (128, 64));
    assert_eq!(cfg.ffn.kind, FfnKind::None);
    for key in ["chunk_size", "time_step_min", "residual_in_fp32"] {
        assert!(imported.ignored.iter().any(|(k, _)| k == key), "{key}");
    }
    let cases: &[(&str, &str, &[&str])] = &[
        (r#""use_bias": false"#, r#""use_bias": true"#, &["use_bias"]),
        (
            r#""n_groups": 8"#,
            r#""n_groups": 3"#,
            &["n_groups", "divide"],
        ),
        ("Infinity", "100.0", &["time_step_limit", "(0, inf)"]),
        (
            r#""hidden_act": "silu""#,
            r#""hidden_act": "gelu""#,
            &["hidden_act"],
        ),
        (
            r#""num_heads": 128"#,
            r#""num_heads": 100"#,
            &["num_heads", "expand"],
        ),
        (r#""rms_norm": true"#, r#""rms_norm": false"#, &["rms_norm"]),
    ];
    for (from, to, needles) in cases {
        assert!(text.contains(from), "{from}");
        let e = import_hf(&text.replace(from, to), "model")
            .unwrap_err()
            .to_string();
        for n in *needles {
            assert!(e.contains(n), "{to}: {e}");
        }
    }
    // Without the convolution fields the spec keeps today's convolution-free mixer;
    // a field of the wrong kind is an error naming it.
    let bad = r#"name = "m"
vocab = 16
d_model = 8
layers = 1
[dims]
batch = 1
seq = 4
[attention]
heads = 2
head_dim = 4
groups = 2
"#;
    let e = parse_spec(bad, Format::Toml, &SpecSource::default())
        .and_then(|s| s.layer_config(0).map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("groups") && e.contains("mamba2"), "{e}");
}

#[test]
fn jamba_maps_its_layer_pattern_mamba_and_experts() {
    use attnc_ir::spec::{FfnKind, Mixer};
    let text = example("hf/jamba.json");
    let imported = import_hf(&text, "model").unwrap();
    let s = &imported.spec;
    assert_eq!((s.d_model, s.layers, s.vocab), (4096, 32, 65536));
    for l in 0..s.layers {
        let cfg = s.layer_config(l).unwrap();
        let attention = l % 8 == 4;
        let moe = l % 2 == 1;
        match cfg.attention.mixer {
            None => {
                assert!(attention, "layer {l}");
                assert_eq!((cfg.attention.heads, cfg.attention.kv_heads), (32, 8));
                assert_eq!(cfg.attention.head_dim, 128);
            }
            Some(m) => {
                assert!(!attention, "layer {l}");
                assert_eq!(
                    m,
                    Mixer::Mamba {
                        state: 16,
                        expand: 2,
                        conv: 4,
                        conv_bias: true,
                        dt_rank: 256
                    }
                );
            }
        }
        assert_eq!(cfg.ffn.kind == FfnKind::Moe, moe, "layer {l}");
        if let Some(m) = &cfg.ffn.moe {
            assert_eq!(m.experts, 16);
            assert_eq!(m.router, attnc_ir::spec::Router::TopK { k: 2 });
            // JambaSparseMoeBlock uses the softmax's top-k weights as they are.
            assert!(!m.norm_topk_prob);
        }
    }
    // dt_rank "auto" is ⌈hidden / 16⌉.
    let auto = import_hf(
        &text.replace(r#""mamba_dt_rank": 256"#, r#""mamba_dt_rank": "auto""#),
        "model",
    )
    .unwrap();
    assert_eq!(auto.spec, imported.spec);
    let cases: &[(&str, &str, &[&str])] = &[
        (
            r#""mamba_proj_bias": false"#,
            r#""mamba_proj_bias": true"#,
            &["mamba_proj_bias"],
        ),
        (
            r#""mamba_dt_rank": 256"#,
            r#""mamba_dt_rank": "big""#,
            &["mamba_dt_rank", "auto"],
        ),
        (
            r#""sliding_window": null"#,
            r#""sliding_window": 4096"#,
            &["sliding_window"],
        ),
        (
            r#""attn_layer_period": 8"#,
            r#""attn_layer_period": 0"#,
            &["attn_layer_period"],
        ),
    ];
    for (from, to, needles) in cases {
        assert!(text.contains(from), "{from}");
        let e = import_hf(&text.replace(from, to), "model")
            .unwrap_err()
            .to_string();
        for n in *needles {
            assert!(e.contains(n), "{to}: {e}");
        }
    }
}
