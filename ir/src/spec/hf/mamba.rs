//! Mamba2 (`Mamba2ForCausalLM`) and Jamba (`JambaForCausalLM`): state-space mixers,
//! alone or mixed with attention and experts.

use super::{base, dims, dtype, Config};
use crate::spec::{AttentionFields, FfnFields, FfnKind, LayerFields, Position, Spec};
use crate::IrError;
use serde_json::Value;
use std::borrow::Cow;

/// Python's `json` writes an infinite float as a bare `Infinity` (Mamba2's
/// `time_step_limit = [0.0, Infinity]`), which is not JSON: outside strings, the
/// tokens `Infinity`, `-Infinity` and `NaN` become the strings `"Infinity"`,
/// `"-Infinity"` and `"NaN"`, which the fields that may hold them accept.
pub(super) fn python_json(text: &str) -> Cow<'_, str> {
    if !text.contains("Infinity") && !text.contains("NaN") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let (mut in_str, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(ch) = rest.chars().next() {
        if in_str {
            out.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_str = false;
            }
            rest = &rest[ch.len_utf8()..];
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        if let Some(t) = token {
            out.push('"');
            out.push_str(t);
            out.push('"');
            rest = &rest[t.len()..];
            continue;
        }
        if ch == '"' {
            in_str = true;
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    Cow::Owned(out)
}

fn is_inf(v: &Value) -> bool {
    v.as_str() == Some("Infinity") || v.as_f64().is_some_and(|f| f == f64::INFINITY)
}

/// `Mamba2ForCausalLM` (transformers' `modeling_mamba2.py`): pre-norm blocks of the
/// Mamba2 mixer alone, RMS norms of `layer_norm_epsilon`, the gated norm
/// `norm(y ⊙ silu(z))` over the whole inner width.
pub(super) fn mamba2(c: &mut Config, name: &str, notes: &mut Vec<String>) -> Result<Spec, IrError> {
    let d = c.need_u64("hidden_size")?;
    let mut s = base(
        name,
        c.need_u64("vocab_size")?,
        d,
        c.need_u64("num_hidden_layers")?,
    );
    s.dtype = dtype(c, notes)?;
    s.position = Position::None;
    s.norm_eps = c.f64("layer_norm_epsilon")?.unwrap_or(1e-5);
    // Mamba2Config's default.
    s.tie_embeddings = c.bool("tie_word_embeddings")?.unwrap_or(false);
    s.dims = dims(c.u64("max_position_embeddings")?, None, notes);
    c.only(
        "hidden_act",
        &[Value::from("silu")],
        "the convolution's activation attnc models is silu",
    )?;
    c.only(
        "rms_norm",
        &[Value::from(true)],
        "transformers' Mamba2 always uses RMS norms; a config asking for LayerNorm does not describe the network it runs",
    )?;
    c.only(
        "use_bias",
        &[Value::from(false)],
        "biases on in_proj and out_proj are not modelled",
    )?;
    // Mamba2Mixer does not read `norm_before_gate`: it always gates, then norms
    // (`MambaRMSNormGated(y, gate)`, and `norm_before_gate=False` in the fused
    // kernels), which is what attnc computes for either value.
    if c.bool("norm_before_gate")? == Some(true) {
        notes.push(
            "norm_before_gate = true is not read by transformers' Mamba2, which gates before the norm; so does attnc"
                .into(),
        );
    }
    match c.raw("time_step_limit") {
        None => {}
        Some(Value::Array(a)) if a.len() == 2 && a[0].as_f64() == Some(0.0) && is_inf(&a[1]) => {}
        Some(_) => {
            return Err(c.bad(
                "time_step_limit",
                "Δ clamped to a range other than (0, inf) is not modelled",
            ))
        }
    }
    let heads = c.need_u64("num_heads")?;
    let head_dim = c.need_u64("head_dim")?;
    let expand = c.u64("expand")?.unwrap_or(2);
    if heads * head_dim != expand * d {
        return Err(c.bad(
            "num_heads",
            &format!("num_heads × head_dim ({heads} × {head_dim}) must be expand × hidden_size ({expand} × {d})"),
        ));
    }
    let groups = c.u64("n_groups")?.unwrap_or(8);
    if groups == 0 || !heads.is_multiple_of(groups) {
        return Err(c.bad("n_groups", "the groups of B and C must divide num_heads"));
    }
    s.attention = AttentionFields {
        kind: Some("mamba2".into()),
        heads: Some(heads),
        head_dim: Some(head_dim),
        state_size: Some(c.u64("state_size")?.unwrap_or(128)),
        expand: Some(expand),
        groups: Some(groups),
        conv_kernel: Some(c.u64("conv_kernel")?.unwrap_or(4)),
        conv_bias: Some(c.bool("use_conv_bias")?.unwrap_or(true)),
        mask: Some("k <= q".into()),
        ..AttentionFields::default()
    };
    s.ffn = FfnFields {
        kind: Some(FfnKind::None),
        ..FfnFields::default()
    };
    Ok(s)
}

/// `JambaForCausalLM` (transformers' `modeling_jamba.py`): layer `i` mixes with
/// attention when `i % attn_layer_period == attn_layer_offset`, else with Mamba's
/// selective scan, and has a mixture of experts when `i % expert_layer_period ==
/// expert_layer_offset` (and `num_experts > 1`), else a SwiGLU MLP. The attention
/// has no positions; the router is a softmax whose top-k weights are used as they
/// are (`JambaSparseMoeBlock` does not renormalize them).
pub(super) fn jamba(c: &mut Config, name: &str, notes: &mut Vec<String>) -> Result<Spec, IrError> {
    let d = c.need_u64("hidden_size")?;
    let layers = c.need_u64("num_hidden_layers")?;
    let mut s = base(name, c.need_u64("vocab_size")?, d, layers);
    s.dtype = dtype(c, notes)?;
    s.position = Position::None;
    s.norm_eps = c.f64("rms_norm_eps")?.unwrap_or(1e-6);
    s.tie_embeddings = c.bool("tie_word_embeddings")?.unwrap_or(false);
    c.only(
        "hidden_act",
        &[Value::from("silu")],
        "attnc models SwiGLU MLPs and the convolution's activation with silu",
    )?;
    if c.u64("sliding_window")?.is_some() {
        return Err(c.bad(
            "sliding_window",
            "Jamba's sliding window (flash-attention only) is not modelled",
        ));
    }
    c.only(
        "mamba_proj_bias",
        &[Value::from(false)],
        "biases on the Mamba in_proj and out_proj are not modelled",
    )?;
    s.dims = dims(c.u64("max_position_embeddings")?, None, notes);
    let heads = c.u64("num_attention_heads")?.unwrap_or(32);
    let kv_heads = c.u64("num_key_value_heads")?.unwrap_or(8);
    if heads == 0 || d % heads != 0 {
        return Err(c.bad("num_attention_heads", "must divide hidden_size"));
    }
    s.attention = AttentionFields {
        heads: Some(heads),
        kv_heads: Some(kv_heads),
        head_dim: Some(d / heads),
        mask: Some("k <= q".into()),
        ..AttentionFields::default()
    };
    let hidden = c.u64("intermediate_size")?.unwrap_or(14336);
    s.ffn = FfnFields {
        kind: Some(FfnKind::Swiglu),
        hidden: Some(hidden),
        bias: Some(false),
        ..FfnFields::default()
    };
    let dt_rank = match c.raw("mamba_dt_rank") {
        None => d.div_ceil(16),
        Some(Value::String(a)) if a == "auto" => d.div_ceil(16),
        Some(v) => match v.as_u64() {
            Some(r) if r > 0 => r,
            _ => return Err(c.bad("mamba_dt_rank", "expected \"auto\" or a positive integer")),
        },
    };
    let mamba = AttentionFields {
        kind: Some("mamba".into()),
        state_size: Some(c.u64("mamba_d_state")?.unwrap_or(16)),
        expand: Some(c.u64("mamba_expand")?.unwrap_or(2)),
        conv_kernel: Some(c.u64("mamba_d_conv")?.unwrap_or(4)),
        conv_bias: Some(c.bool("mamba_conv_bias")?.unwrap_or(true)),
        dt_rank: Some(dt_rank),
        ..AttentionFields::default()
    };
    let experts = c.u64("num_experts")?.unwrap_or(16);
    let top_k = c.u64("num_experts_per_tok")?.unwrap_or(2);
    let moe = FfnFields {
        kind: Some(FfnKind::Moe),
        expert_kind: Some(FfnKind::Swiglu),
        hidden: Some(hidden),
        experts: Some(experts),
        top_k: Some(top_k),
        router: Some("softmax_topk".into()),
        norm_topk_prob: Some(false),
        ..FfnFields::default()
    };
    let period = |key: &str, default: u64, c: &mut Config| -> Result<u64, IrError> {
        match c.u64(key)?.unwrap_or(default) {
            0 => Err(c.bad(key, "a period is at least 1")),
            p => Ok(p),
        }
    };
    let attn_period = period("attn_layer_period", 8, c)?;
    let attn_offset = c.u64("attn_layer_offset")?.unwrap_or(4);
    let expert_period = period("expert_layer_period", 2, c)?;
    let expert_offset = c.u64("expert_layer_offset")?.unwrap_or(1);
    // One period of both patterns (their lcm), or the whole stack when shorter.
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let lcm = attn_period / gcd(attn_period, expert_period) * expert_period;
    let len = lcm.min(layers).max(1);
    for i in 0..len {
        let attn = i % attn_period == attn_offset;
        let sparse = experts > 1 && i % expert_period == expert_offset;
        let kind = match (attn, sparse) {
            (true, false) => "attention",
            (true, true) => "attention_moe",
            (false, false) => "mamba",
            (false, true) => "mamba_moe",
        };
        s.pattern.push(kind.into());
        s.kinds.entry(kind.into()).or_insert_with(|| LayerFields {
            attention: (!attn).then(|| mamba.clone()),
            ffn: sparse.then(|| moe.clone()),
        });
    }
    Ok(s)
}
