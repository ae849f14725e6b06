//! attnc against an independent reference: for each Hugging Face family, a tiny
//! random model built by a plain numpy script written from the published formulas
//! (`tests/reference/hf_reference.py`, which knows nothing of attnc), its weights
//! saved as safetensors under their Hugging Face names; `attnc run CONFIG --weights
//! --tokens --out` must reproduce numpy's output to 1e-4.
//!
//! Needs python3 with numpy and safetensors (`scripts/setup.sh` installs them).

mod common;

use attnc::npy;
use common::{attnc, path_str, stderr, temp_dir};
use std::path::Path;
use std::process::Command;

/// Build the reference model for `config` in `dtype`, run attnc on it and return the
/// largest |attnc − numpy| and numpy's largest |value|.
fn compare(config: &str, dtype: &str, extra: &[&str]) -> (f64, f64) {
    let name = Path::new(config).file_stem().unwrap().to_str().unwrap();
    let dir = temp_dir(&format!("ref-{name}-{dtype}"));
    let py = Command::new("python3")
        .args([
            "tests/reference/hf_reference.py",
            config,
            path_str(&dir),
            "--dtype",
            dtype,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3 runs (scripts/setup.sh installs numpy and safetensors)");
    assert!(
        py.status.success(),
        "the numpy reference failed for {config} (does python3 have numpy and safetensors? scripts/setup.sh installs them): {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let out = dir.join("attnc.npy");
    let weights = dir.join("model.safetensors");
    let mut args = vec![
        "run",
        config,
        "--weights",
        path_str(&weights),
        "--out",
        path_str(&out),
    ];
    let tokens = dir.join("tokens.npy");
    let pixels = format!("pixels={}", path_str(&dir.join("pixels.npy")));
    if tokens.exists() {
        args.extend(["--tokens", path_str(&tokens)]);
    } else {
        args.extend(["--input", &pixels]);
    }
    args.extend(extra);
    let o = attnc(&args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    let got = npy::read(&out).unwrap();
    let want = npy::read(&dir.join("expected.npy")).unwrap();
    assert_eq!(got.shape, want.shape, "{config}: output shapes");
    let err = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let scale = want.data.iter().map(|v| v.abs()).fold(0.0, f64::max);
    (err, scale)
}

fn agrees(config: &str) {
    let (err, scale) = compare(config, "f32", &[]);
    assert!(
        scale > 0.1,
        "{config}: the reference output is ~0 ({scale})"
    );
    assert!(
        err <= 1e-4,
        "{config}: attnc differs from the numpy reference by {err:.3e} (outputs up to {scale:.2})"
    );
}

macro_rules! families {
    ($($test:ident => $config:literal,)*) => {$(
        #[test]
        fn $test() {
            agrees(concat!("tests/reference/configs/", $config));
        }
    )*};
}

families! {
    llama => "llama.json",
    llama3_rope_scaling => "llama3_scaled.json",
    mistral_sliding_window => "mistral.json",
    qwen2 => "qwen2.json",
    mixtral => "mixtral.json",
    qwen2_moe => "qwen2_moe.json",
    deepseek_v2 => "deepseek_v2.json",
    deepseek_v2_q_lora_yarn => "deepseek_v2_qlora.json",
    gpt2 => "gpt2.json",
    bert => "bert.json",
    vit => "vit.json",
    mamba2 => "mamba2.json",
    mamba2_one_group_tied => "mamba2_tied.json",
    jamba => "jamba.json",
}

/// Half-precision checkpoints: the weights are read as stored (numpy computes with
/// the same rounded values), so attnc still agrees to f32 accuracy.
#[test]
fn f16_and_bf16_weights() {
    for dtype in ["f16", "bf16"] {
        let (err, scale) = compare("tests/reference/configs/llama.json", dtype, &[]);
        assert!(scale > 0.1);
        assert!(err <= 1e-4, "{dtype}: {err:.3e}");
    }
}

/// The optimized model checked against the interpreter too, with real weights.
#[test]
fn checked_run_with_weights() {
    let (err, _) = compare("tests/reference/configs/mixtral.json", "f32", &["--check"]);
    assert!(err <= 1e-4, "{err:.3e}");
}
