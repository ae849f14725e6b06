//! ViT (ViTForImageClassification): a pre-norm encoder over image patches with a
//! class token, learned positions and a linear classifier on the class token.

use super::{base, dtype, Config};
use crate::spec::{
    Arch, AttentionFields, FfnFields, FfnKind, NormKind, NormPlacement, Position, Spec,
    VisionFields,
};
use crate::IrError;
use serde_json::Value;
use std::collections::BTreeMap;

pub(super) fn vit(c: &mut Config, name: &str, notes: &mut Vec<String>) -> Result<Spec, IrError> {
    let d = c.need_u64("hidden_size")?;
    let mut s = base(name, 0, d, c.need_u64("num_hidden_layers")?);
    s.arch = Arch::Vit;
    s.dtype = dtype(c, notes)?;
    s.norm = NormKind::LayerNorm;
    s.norm_eps = c.f64("layer_norm_eps")?.unwrap_or(1e-12);
    s.norm_placement = NormPlacement::Pre;
    s.position = Position::None;
    // The classes: `id2label` names them (`label2id` is its inverse).
    let classes = match c.raw("id2label") {
        Some(Value::Object(m)) => Some(m.len() as u64),
        None => None,
        Some(_) => return Err(c.bad("id2label", "expected an object of class names")),
    };
    let _ = c.raw("label2id");
    let classes = match (c.u64("num_labels")?, classes) {
        (Some(n), Some(m)) if n != m => {
            return Err(c.bad("num_labels", "disagrees with the classes of id2label"))
        }
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => 2,
    };
    s.vision = Some(VisionFields {
        image_size: Some(c.u64("image_size")?.unwrap_or(224)),
        patch_size: Some(c.u64("patch_size")?.unwrap_or(16)),
        num_channels: Some(c.u64("num_channels")?.unwrap_or(3)),
        num_classes: Some(classes),
        class_token: Some(true),
        pool: None,
    });
    s.dims = BTreeMap::from([("batch".to_string(), 1)]);
    let kind = match c.str("hidden_act")?.as_deref() {
        None | Some("gelu") => FfnKind::Gelu,
        Some("gelu_new") | Some("gelu_pytorch_tanh") => FfnKind::GeluTanh,
        Some("relu") => FfnKind::Relu,
        Some(_) => return Err(c.bad("hidden_act", "expected gelu, gelu_new or relu")),
    };
    let heads = c.need_u64("num_attention_heads")?;
    let bias = c.bool("qkv_bias")?.unwrap_or(true);
    s.attention = AttentionFields {
        heads: Some(heads),
        head_dim: Some(d / heads.max(1)),
        mask: Some("none".into()),
        qkv_bias: Some(bias),
        out_bias: Some(true),
        ..AttentionFields::default()
    };
    s.ffn = FfnFields {
        kind: Some(kind),
        hidden: Some(c.need_u64("intermediate_size")?),
        bias: Some(true),
        ..FfnFields::default()
    };
    Ok(s)
}
