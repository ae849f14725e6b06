//! Hugging Face encoders: BERT (BertModel) and ViT (ViTForImageClassification)
//! configs import onto attnc's encoder and vision specs.

use attnc_ir::spec::hf::import_hf;
use attnc_ir::spec::{lower, parse_spec, Arch, Format, NormPlacement, Position, SpecSource};

fn config(name: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hf/");
    std::fs::read_to_string(format!("{root}{name}")).unwrap()
}

fn params(g: &attnc_ir::Graph) -> u64 {
    g.params()
        .iter()
        .map(|(_, id)| g.sizes(*id).iter().product::<usize>() as u64)
        .sum()
}

#[test]
fn bert_base_is_a_post_norm_encoder_with_embedding_norm() {
    let imported = import_hf(&config("bert-base.json"), "bert").unwrap();
    let s = &imported.spec;
    assert_eq!(s.arch, Arch::Encoder);
    assert_eq!(s.norm_placement, NormPlacement::Post);
    assert_eq!(s.position, Position::Learned);
    assert!(s.embed_norm);
    assert_eq!(s.token_types, Some(2));
    let g = lower(s).unwrap();
    // BertModel without its pooler: 110.1M − 0.59M.
    assert_eq!(params(&g), 108_891_648);
    assert_eq!(g.outputs()[0].0, "hidden");
    for name in ["embed.token_types", "embed.norm.weight", "embed.norm.bias"] {
        assert!(g.params().iter().any(|(n, _)| *n == name), "{name}");
    }
}

#[test]
fn bert_fields_that_change_the_math_are_errors() {
    let text = config("bert-base.json");
    for (from, to, needle) in [
        (
            r#""position_embedding_type": "absolute""#,
            r#""position_embedding_type": "relative_key""#,
            "position_embedding_type",
        ),
        (
            r#""hidden_act": "gelu""#,
            r#""hidden_act": "swish""#,
            "hidden_act",
        ),
        (
            r#""use_cache": true"#,
            r#""use_cache": true, "is_decoder": true"#,
            "is_decoder",
        ),
    ] {
        let bad = text.replace(from, to);
        let e = import_hf(&bad, "bert").unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
}

const VIT: &str = r#"{
  "architectures": ["ViTForImageClassification"],
  "attention_probs_dropout_prob": 0.0, "encoder_stride": 16, "hidden_act": "gelu",
  "hidden_dropout_prob": 0.0, "hidden_size": 768, "id2label": {"0": "a", "1": "b", "2": "c"},
  "image_size": 224, "initializer_range": 0.02, "intermediate_size": 3072,
  "label2id": {"a": 0, "b": 1, "c": 2}, "layer_norm_eps": 1e-12, "model_type": "vit",
  "num_attention_heads": 12, "num_channels": 3, "num_hidden_layers": 12,
  "patch_size": 16, "qkv_bias": true, "transformers_version": "4.13.0.dev0"
}"#;

#[test]
fn vit_classifies_into_the_labels_of_id2label() {
    let imported = import_hf(VIT, "vit").unwrap();
    // The sequence is derived from the image, as loading a spec does.
    let json = serde_json::to_string(&imported.spec).unwrap();
    let spec = parse_spec(&json, Format::Json, &SpecSource::default()).unwrap();
    let g = lower(&spec).unwrap();
    let (_, logits) = g.outputs()[0].clone();
    assert_eq!(g.sizes(logits), vec![1, 3]);
    // ViT-B/16 with a 3-class head: 85.80M + 768·3 + 3.
    assert_eq!(params(&g), 85_800_963);
    let bad = VIT.replace(
        r#""qkv_bias": true"#,
        r#""qkv_bias": true, "num_labels": 5"#,
    );
    let e = import_hf(&bad, "vit").unwrap_err().to_string();
    assert!(e.contains("num_labels"), "{e}");
}
