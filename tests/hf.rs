//! Hugging Face configs from the command line: `attnc import`, and every command
//! taking a `config.json` directly.

mod common;

use common::{attnc, fails_with, path_str, stderr, stdout, succeeds, temp_file};

#[test]
fn import_writes_a_spec_that_compiles() {
    let out = temp_file("mistral-imported.toml", "");
    succeeds(&[
        "import",
        "examples/hf/mistral-7b.json",
        "-o",
        path_str(&out),
    ]);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.starts_with("# Imported from examples/hf/mistral-7b.json"),
        "{text}"
    );
    assert!(
        text.contains("mask = \"k <= q && q - k < window\""),
        "{text}"
    );
    let o = attnc(&["inspect", path_str(&out), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["model"], "mistral-7b");
}

#[test]
fn configs_compile_inspect_and_run_directly() {
    for (config, fast) in [
        ("examples/hf/llama3-8b.json", "block_sparse_attention"),
        ("examples/hf/mistral-7b.json", "block_sparse_attention"),
        ("examples/hf/mixtral-8x7b.json", "moe_dispatch"),
        ("examples/hf/qwen1.5-moe-a2.7b.json", "moe_dispatch"),
        ("examples/hf/gpt2.json", "block_sparse_attention"),
        ("examples/hf/qwen2-57b-a14b.json", "moe_dispatch"),
        // MLA with YaRN-scaled rope, DeepSeekMoE.
        ("examples/hf/deepseek-v2-lite.json", "moe_dispatch"),
        // Bidirectional: fused attention over every key.
        ("examples/hf/bert-base.json", "attention"),
        // Mamba2's SSD with its convolution and 8 groups of B, C: a linear
        // attention (chunkwise or recurrent) after optimization.
        ("examples/hf/mamba2.json", "linear_attention"),
        // Jamba: Mamba-1's selective scan, GQA every 8th layer, 16 experts.
        ("examples/hf/jamba.json", "moe_dispatch"),
    ] {
        let text = succeeds(&["compile", config, "--emit", "opt-ir"]);
        assert!(text.contains(fast), "{config}: no {fast}");
        let r = succeeds(&["run", config, "--tiny", "--check", "--json"]);
        let r: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert!(r["max_abs_err"].as_f64().unwrap() < 1e-4, "{config}: {r}");
    }
    // `--set` applies to an imported config as to a spec.
    let text = succeeds(&[
        "compile",
        "examples/hf/llama3-8b.json",
        "--set",
        "layers=1",
        "--set",
        "seq=128",
    ]);
    assert!(
        text.contains("seq = 128") && !text.contains("layers.1."),
        "{text}"
    );
}

#[test]
fn bad_configs_name_the_file_and_the_key() {
    let bad = temp_file(
        "bad-config.json",
        r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"type": "dynamic", "factor": 2}}"#,
    );
    fails_with(
        &["compile", path_str(&bad)],
        &["bad-config.json", "rope_scaling"],
    );
    fails_with(
        &["import", path_str(&bad)],
        &["bad-config.json", "rope_scaling"],
    );
    let unknown = temp_file("unknown-config.json", r#"{"model_type": "t5"}"#);
    fails_with(
        &["import", path_str(&unknown)],
        &["unknown-config.json", "t5", "not supported"],
    );
    fails_with(
        &["import", "no/such/config.json"],
        &["no/such/config.json", "cannot read"],
    );
}
