//! Diffusion language models from the command line: the sampling loop of
//! `run --diffusion-steps`, checked against the interpreter at every step, and Block
//! Diffusion's block-causal attention as block-sparse attention.

mod common;

use common::{attnc, fails_with, stderr, stdout};
use serde_json::Value;

fn sample(args: &[&str]) -> Value {
    let o = attnc(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("one JSON object")
}

fn llada(extra: &[&str]) -> Value {
    let mut args = vec![
        "run",
        "examples/llada-8b.toml",
        "--tiny",
        "--diffusion-steps",
        "8",
        "--json",
    ];
    args.extend(extra);
    sample(&args)
}

#[test]
fn llada_samples_and_matches_the_interpreter_at_every_step() {
    let r = llada(&["--check"]);
    let steps = r["per_step"].as_array().unwrap();
    assert_eq!(steps.len(), 8);
    // 16 generated positions in 4 blocks of 4, two steps per block, two tokens each.
    let mut masked = 16;
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["block"].as_u64(), Some(i as u64 / 2));
        assert_eq!(s["unmasked"].as_u64(), Some(2));
        masked -= 2;
        assert_eq!(s["masked"].as_u64(), Some(masked));
        let e = s["max_abs_err"].as_f64().unwrap();
        assert!(e < 1e-4, "step {i}: {e}");
        assert_eq!(s["tokens_agree"], true);
    }
    assert_eq!(r["tokens_agree"], true);
    let mask = r["mask_token"].as_i64().unwrap();
    let tokens = r["tokens"][0].as_array().unwrap();
    assert_eq!(tokens.len(), 32);
    assert!(
        tokens.iter().all(|t| t.as_i64() != Some(mask)),
        "{tokens:?}"
    );
    assert!(r["steps_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["interp_steps_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn sampling_is_deterministic_with_a_seed() {
    let a = llada(&[]);
    let b = llada(&[]);
    assert_eq!(a["tokens"], b["tokens"]);
    let c = llada(&["--seed", "3"]);
    assert_ne!(a["tokens"], c["tokens"]);
    // A given prompt is kept; random remasking samples too.
    let prompt: Vec<String> = (0..16).map(|i| (i * 5 % 90).to_string()).collect();
    let prompt = prompt.join(",");
    let r = llada(&[
        "--prompt",
        &prompt,
        "--set",
        "diffusion.remasking=\"random\"",
        "--check",
    ]);
    let tokens: Vec<String> = r["tokens"][0].as_array().unwrap()[..16]
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(tokens.join(","), prompt);
    assert_eq!(r["remasking"], "random");
    assert_eq!(r["tokens_agree"], true);
}

#[test]
fn block_diffusion_samples_and_runs_block_sparse() {
    let r = sample(&[
        "run",
        "examples/block-diffusion.toml",
        "--tiny",
        "--diffusion-steps",
        "4",
        "--check",
        "--json",
    ]);
    assert_eq!(r["per_step"].as_array().unwrap().len(), 4);
    assert!(r["max_abs_err"].as_f64().unwrap() < 1e-4);
    let o = attnc(&["inspect", "examples/block-diffusion.toml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let layer = (v["layers"].as_array().unwrap().iter())
        .find(|l| l["name"] == "layers.0.attn")
        .unwrap();
    let after: Vec<&str> = (layer["after"].as_array().unwrap().iter())
        .filter_map(Value::as_str)
        .collect();
    assert!(after.contains(&"block_sparse_attention"), "{after:?}");
    // 64 blocks of 16: the block-causal part is (n+1)/2n of the score matrix.
    let density = layer["block_density"].as_f64().unwrap();
    assert!((0.5..0.55).contains(&density), "{density}");
}

#[test]
fn bad_diffusion_runs_are_clear_errors() {
    fails_with(
        &[
            "run",
            "examples/gpt2.toml",
            "--tiny",
            "--diffusion-steps",
            "4",
        ],
        &["gpt2.toml", "[diffusion]"],
    );
    fails_with(
        &[
            "run",
            "examples/llada-8b.toml",
            "--tiny",
            "--diffusion-steps",
            "6",
        ],
        &["--diffusion-steps", "multiple", "4 blocks"],
    );
    fails_with(
        &[
            "run",
            "examples/llada-8b.toml",
            "--tiny",
            "--diffusion-steps",
            "4",
            "--prompt",
            "1,2,3",
        ],
        &["--prompt", "3 tokens", "16"],
    );
    fails_with(
        &[
            "run",
            "examples/llada-8b.toml",
            "--tiny",
            "--diffusion-steps",
            "4",
            "--prompt",
            "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,97",
        ],
        &["--prompt", "token 97", "vocab = 97"],
    );
}
