//! GPT-2.

use super::{base, dims, dtype, Config};
use crate::spec::{AttentionFields, FfnFields, FfnKind, NormKind, Position, Spec};
use crate::IrError;
use serde_json::Value;

pub(super) fn gpt2(c: &mut Config, name: &str, notes: &mut Vec<String>) -> Result<Spec, IrError> {
    let d = c.need_u64("n_embd")?;
    let mut s = base(name, c.need_u64("vocab_size")?, d, c.need_u64("n_layer")?);
    s.dtype = dtype(c, notes)?;
    s.norm = NormKind::LayerNorm;
    s.norm_eps = c.f64("layer_norm_epsilon")?.unwrap_or(1e-5);
    s.position = Position::Learned;
    let positions = c.need_u64("n_positions")?;
    s.max_positions = Some(positions);
    // GPT2LMHeadModel always ties its head to the token table.
    s.tie_embeddings = c.bool("tie_word_embeddings")?.unwrap_or(true);
    s.dims = dims(Some(positions), None, notes);
    let kind = match c.str("activation_function")?.as_deref() {
        None | Some("gelu_new") | Some("gelu_pytorch_tanh") => FfnKind::GeluTanh,
        Some("gelu") => FfnKind::Gelu,
        Some("relu") => FfnKind::Relu,
        Some(_) => {
            return Err(c.bad(
                "activation_function",
                "expected gelu_new, gelu_pytorch_tanh, gelu or relu",
            ))
        }
    };
    c.only(
        "scale_attn_weights",
        &[Value::from(true)],
        "unscaled scores are not modelled",
    )?;
    c.only(
        "scale_attn_by_inverse_layer_idx",
        &[Value::from(false)],
        "per-layer score scaling is not modelled",
    )?;
    let heads = c.need_u64("n_head")?;
    s.attention = AttentionFields {
        heads: Some(heads),
        head_dim: Some(d / heads.max(1)),
        mask: Some("k <= q".into()),
        qkv_bias: Some(true),
        out_bias: Some(true),
        ..AttentionFields::default()
    };
    s.ffn = FfnFields {
        kind: Some(kind),
        hidden: Some(c.u64("n_inner")?.unwrap_or(4 * d)),
        bias: Some(true),
        ..FfnFields::default()
    };
    Ok(s)
}
