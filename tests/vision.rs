//! The Vision Transformer from the command line: ViT-B/16 and its axial variant run
//! and check at tiny size; at full size the optimizer fuses its attention for the GPU.

mod common;

use common::{stdout, succeeds};

#[test]
fn vit_runs_and_checks_with_and_without_axial_attention() {
    for extra in [
        &[][..],
        &[
            "--set",
            "vision.class_token=false",
            "--set",
            "attention.kind=axial",
        ][..],
        &["--set", "vision.pool=mean"][..],
    ] {
        let mut args = vec![
            "run",
            "examples/vit-b16.toml",
            "--tiny",
            "--check",
            "--json",
        ];
        args.extend(extra);
        let r: serde_json::Value = serde_json::from_str(&succeeds(&args)).unwrap();
        assert!(r["max_abs_err"].as_f64().unwrap() < 1e-4, "{extra:?}: {r}");
        assert_eq!(r["outputs"][0]["shape"], serde_json::json!([1, 10]));
    }
}

#[test]
fn vit_attention_is_fused_for_the_gpu() {
    let o = common::attnc(&[
        "inspect",
        "examples/vit-b16.toml",
        "--target",
        "gpu",
        "--json",
    ]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let layer = (v["layers"].as_array().unwrap().iter())
        .find(|l| l["name"] == "layers.0.attn")
        .unwrap();
    let after: Vec<&str> = (layer["after"].as_array().unwrap().iter())
        .filter_map(|x| x.as_str())
        .collect();
    assert!(after.contains(&"attention"), "{after:?}");
    assert!(!after.contains(&"softmax"), "{after:?}");
}
