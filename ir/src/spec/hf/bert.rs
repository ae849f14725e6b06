//! BERT (BertModel): a post-norm encoder with learned absolute positions, token-type
//! embeddings and a LayerNorm over the embeddings; the output is the last hidden
//! state (the pooler and the pre-training heads are not part of it).

use super::{base, dims, dtype, Config};
use crate::spec::Spec;
use crate::spec::{Arch, AttentionFields, FfnFields, FfnKind, NormKind, NormPlacement, Position};
use crate::IrError;
use serde_json::Value;

pub(super) fn bert(c: &mut Config, name: &str, notes: &mut Vec<String>) -> Result<Spec, IrError> {
    let d = c.need_u64("hidden_size")?;
    let mut s = base(
        name,
        c.need_u64("vocab_size")?,
        d,
        c.need_u64("num_hidden_layers")?,
    );
    s.arch = Arch::Encoder;
    s.dtype = dtype(c, notes)?;
    s.norm = NormKind::LayerNorm;
    s.norm_eps = c.f64("layer_norm_eps")?.unwrap_or(1e-12);
    s.norm_placement = NormPlacement::Post;
    s.position = Position::Learned;
    let positions = c.need_u64("max_position_embeddings")?;
    s.max_positions = Some(positions);
    s.embed_norm = true;
    s.token_types = Some(c.u64("type_vocab_size")?.unwrap_or(2));
    notes.push("every token is of type 0 (BertModel's default without token_type_ids)".into());
    s.dims = dims(Some(positions), None, notes);
    c.only(
        "position_embedding_type",
        &[Value::from("absolute")],
        "relative position embeddings are not modelled",
    )?;
    c.only(
        "is_decoder",
        &[Value::from(false)],
        "BERT as a causal decoder is not modelled",
    )?;
    c.only(
        "add_cross_attention",
        &[Value::from(false)],
        "cross-attention to an encoder is not modelled",
    )?;
    encoder_layers(c, &mut s, true)?;
    Ok(s)
}

/// The layers of a BERT-style encoder (BERT, ViT): bidirectional multi-head
/// attention with biases and a biased MLP of `hidden_act`.
pub(super) fn encoder_layers(c: &mut Config, s: &mut Spec, qkv_bias: bool) -> Result<(), IrError> {
    let kind = match c.str("hidden_act")?.as_deref() {
        None | Some("gelu") => FfnKind::Gelu,
        Some("gelu_new") | Some("gelu_pytorch_tanh") => FfnKind::GeluTanh,
        Some("relu") => FfnKind::Relu,
        Some(_) => return Err(c.bad("hidden_act", "expected gelu, gelu_new or relu")),
    };
    let heads = c.need_u64("num_attention_heads")?;
    s.attention = AttentionFields {
        heads: Some(heads),
        head_dim: Some(s.d_model / heads.max(1)),
        mask: Some("none".into()),
        qkv_bias: Some(qkv_bias),
        out_bias: Some(true),
        ..AttentionFields::default()
    };
    s.ffn = FfnFields {
        kind: Some(kind),
        hidden: Some(c.need_u64("intermediate_size")?),
        bias: Some(true),
        ..FfnFields::default()
    };
    Ok(())
}
