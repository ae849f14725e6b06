//! ViT (ViTForImageClassification): a pre-norm encoder over image patches with a
//! class token, learned positions and a linear classifier on the class token.

use super::{base, dtype, Config};
use crate::spec::{Arch, NormKind, NormPlacement, Position, Spec, VisionFields};
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
    let bias = c.bool("qkv_bias")?.unwrap_or(true);
    super::bert::encoder_layers(c, &mut s, bias)?;
    Ok(s)
}
