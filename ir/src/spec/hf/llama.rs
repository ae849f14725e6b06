//! Llama and the architectures built on it.

use super::{base, dims, dtype, Config};
use crate::spec::{AttentionFields, FfnFields, FfnKind, Override, RopeScalingFields, Spec};
use crate::IrError;
use serde_json::Value;

/// Llama and the architectures built on it: Mistral and Qwen2 (dense), Mixtral and
/// Qwen2-MoE (experts), DeepSeek-V2/V3 (MLA and DeepSeekMoE).
pub(super) fn llama_family(
    c: &mut Config,
    name: &str,
    notes: &mut Vec<String>,
) -> Result<Spec, IrError> {
    let t = c.model_type.clone();
    let mut s = base(
        name,
        c.need_u64("vocab_size")?,
        c.need_u64("hidden_size")?,
        c.need_u64("num_hidden_layers")?,
    );
    s.dtype = dtype(c, notes)?;
    s.norm_eps = c.f64("rms_norm_eps")?.unwrap_or(1e-6);
    s.rope_theta = c.f64("rope_theta")?.unwrap_or(10000.0);
    s.tie_embeddings = c.bool("tie_word_embeddings")?.unwrap_or(false);
    c.only(
        "hidden_act",
        &[Value::from("silu")],
        "attnc models SwiGLU MLPs with silu",
    )?;
    let heads = c.need_u64("num_attention_heads")?;
    let kv_heads = c.u64("num_key_value_heads")?.unwrap_or(heads);
    let max_positions = c.u64("max_position_embeddings")?;
    let (scaling, score_scale) = rope_scaling(c, max_positions)?;
    s.rope_scaling = scaling;
    // Sliding windows: Mistral's `sliding_window`; Qwen2's only with its flag.
    let window = match t.as_str() {
        "mistral" | "mixtral" => c.u64("sliding_window")?,
        "qwen2" | "qwen2_moe" => {
            let on = c.bool("use_sliding_window")?.unwrap_or(false);
            let w = c.u64("sliding_window")?;
            if on {
                return Err(c.bad(
                    "use_sliding_window",
                    "Qwen2's per-layer sliding window (max_window_layers) is not modelled",
                ));
            }
            let _ = w;
            None
        }
        _ => None,
    };
    s.dims = dims(max_positions, window, notes);
    let bias = c.bool("attention_bias")?.unwrap_or(false);
    s.attention = AttentionFields {
        heads: Some(heads),
        kv_heads: Some(kv_heads),
        head_dim: Some(c.u64("head_dim")?.unwrap_or(s.d_model / heads.max(1))),
        mask: Some(match window {
            Some(_) => "k <= q && q - k < window".into(),
            None => "k <= q".into(),
        }),
        // Qwen2 has biases on q, k and v (not on o), with no config field.
        qkv_bias: Some(bias || t.starts_with("qwen2")),
        out_bias: Some(bias),
        ..AttentionFields::default()
    };
    let intermediate = c.u64("intermediate_size")?;
    let dense = |hidden: Option<u64>| FfnFields {
        kind: Some(FfnKind::Swiglu),
        hidden,
        bias: Some(false),
        ..FfnFields::default()
    };
    s.ffn = dense(intermediate);
    if t != "deepseek_v2" {
        s.ffn.bias = Some(c.bool("mlp_bias")?.unwrap_or(false));
    }
    match t.as_str() {
        "mixtral" => {
            s.ffn = FfnFields {
                kind: Some(FfnKind::Moe),
                expert_kind: Some(FfnKind::Swiglu),
                hidden: intermediate,
                experts: Some(c.need_u64("num_local_experts")?),
                top_k: Some(c.need_u64("num_experts_per_tok")?),
                router: Some("softmax_topk".into()),
                norm_topk_prob: Some(true),
                ..FfnFields::default()
            };
        }
        "qwen2_moe" => {
            let step = c.u64("decoder_sparse_step")?.unwrap_or(1);
            let experts = c.need_u64("num_experts")?;
            s.ffn = FfnFields {
                kind: Some(FfnKind::Moe),
                expert_kind: Some(FfnKind::Swiglu),
                hidden: Some(c.need_u64("moe_intermediate_size")?),
                experts: Some(experts),
                top_k: Some(c.need_u64("num_experts_per_tok")?),
                norm_topk_prob: Some(c.bool("norm_topk_prob")?.unwrap_or(false)),
                ..FfnFields::default()
            };
            if let Some(h) = c.u64("shared_expert_intermediate_size")?.filter(|&h| h > 0) {
                s.ffn.shared_experts = Some(1);
                s.ffn.shared_hidden = Some(h);
                s.ffn.shared_expert_gate = Some(true);
            }
            // Dense layers: those in `mlp_only_layers` and, with a sparse step k,
            // those whose (index + 1) is not a multiple of k.
            let only: Vec<u64> = match c.raw("mlp_only_layers") {
                None => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_u64()
                            .ok_or_else(|| c.bad("mlp_only_layers", "expected layer indices"))
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(c.bad("mlp_only_layers", "expected layer indices")),
            };
            let dense_layers: Vec<u64> = (0..s.layers)
                .filter(|&l| only.contains(&l) || step == 0 || (l + 1) % step != 0)
                .collect();
            if !dense_layers.is_empty() {
                s.overrides.push(Override {
                    layers: dense_layers,
                    attention: None,
                    ffn: Some(dense(intermediate)),
                });
            }
        }
        "deepseek_v2" => {
            deepseek(c, &mut s, intermediate)?;
            // YaRN's correction of the scores: softmax scale · mscale(all dims)².
            if let Some(m) = score_scale {
                let qk = s.attention.qk_nope_head_dim.unwrap_or(0)
                    + s.attention.qk_rope_head_dim.unwrap_or(0);
                s.attention.scale = Some(m * m / (qk as f64).sqrt());
            }
        }
        _ => {}
    }
    Ok(s)
}

/// `rope_scaling` → the spec's `[rope_scaling]` (transformers'
/// `modeling_rope_utils`, DeepSeek's `DeepseekV2YarnRotaryEmbedding`), and for YaRN
/// with `mscale_all_dim` the factor DeepSeek multiplies the softmax scale by (twice).
fn rope_scaling(
    c: &mut Config,
    max_positions: Option<u64>,
) -> Result<(Option<RopeScalingFields>, Option<f64>), IrError> {
    let Some(v) = c.raw("rope_scaling") else {
        return Ok((None, None));
    };
    let bad = |m: &str| c.bad("rope_scaling", m);
    let Value::Object(map) = &v else {
        return Err(bad("expected an object"));
    };
    let kind = map
        .get("rope_type")
        .or_else(|| map.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad("names no `rope_type` (or `type`)"))?;
    let known: &[&str] = match kind {
        "default" => &[],
        "linear" => &["factor"],
        "llama3" => &[
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        "yarn" => &[
            "factor",
            "original_max_position_embeddings",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "attention_factor",
        ],
        _ => {
            return Err(bad(
                "attnc models linear, llama3 and yarn RoPE scaling; this kind changes the angles differently",
            ))
        }
    };
    if let Some(k) = map
        .keys()
        .find(|k| !known.contains(&k.as_str()) && *k != "type" && *k != "rope_type")
    {
        return Err(bad(&format!(
            "`{k}` is not a field of {kind} scaling attnc maps"
        )));
    }
    if kind == "default" {
        return Ok((None, None));
    }
    let num = |k: &str| -> Result<Option<f64>, IrError> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| bad(&format!("`{k}` is not a number"))),
        }
    };
    let factor = num("factor")?.ok_or_else(|| bad("needs a `factor`"))?;
    let original = match num("original_max_position_embeddings")? {
        Some(o) if o >= 1.0 && o.fract() == 0.0 => Some(o as u64),
        Some(_) => return Err(bad("`original_max_position_embeddings` is not a count")),
        None => None,
    };
    let mut f = RopeScalingFields {
        kind: kind.to_string(),
        factor,
        low_freq_factor: num("low_freq_factor")?,
        high_freq_factor: num("high_freq_factor")?,
        original_max_positions: original,
        beta_fast: num("beta_fast")?,
        beta_slow: num("beta_slow")?,
        attention_factor: num("attention_factor")?,
    };
    let mut score = None;
    if kind == "yarn" {
        // Without its own, YaRN's original context is the configured one.
        f.original_max_positions = original.or(max_positions);
        if let (Some(m), Some(all)) = (num("mscale")?, num("mscale_all_dim")?) {
            let ms = |m: f64| crate::rope::yarn_mscale(factor, m);
            f.attention_factor = Some(ms(m) / ms(all));
            score = Some(ms(all));
        }
    }
    Ok((Some(f), score))
}

fn deepseek(c: &mut Config, s: &mut Spec, intermediate: Option<u64>) -> Result<(), IrError> {
    let heads = s.attention.heads;
    if s.attention.kv_heads != heads {
        return Err(c.bad("num_key_value_heads", "MLA has one latent for every head"));
    }
    s.attention = AttentionFields {
        heads,
        kv_lora_rank: Some(c.need_u64("kv_lora_rank")?),
        q_lora_rank: c.u64("q_lora_rank")?,
        qk_nope_head_dim: Some(c.need_u64("qk_nope_head_dim")?),
        qk_rope_head_dim: Some(c.need_u64("qk_rope_head_dim")?),
        v_head_dim: Some(c.need_u64("v_head_dim")?),
        mask: Some("k <= q".into()),
        out_bias: s.attention.out_bias,
        ..AttentionFields::default()
    };
    if s.attention.out_bias == Some(true) {
        return Err(c.bad(
            "attention_bias",
            "MLA projections with biases are not modelled",
        ));
    }
    let Some(experts) = c.u64("n_routed_experts")? else {
        return Ok(());
    };
    c.only(
        "moe_layer_freq",
        &[Value::from(1)],
        "mixtures in every layer after the dense ones are what attnc models",
    )?;
    c.only(
        "scoring_func",
        &[Value::from("softmax")],
        "DeepSeek-V2's softmax router",
    )?;
    let method = c.str("topk_method")?.unwrap_or_else(|| "greedy".into());
    let groups = c.u64("n_group")?;
    let topk_groups = c.u64("topk_group")?;
    if method != "greedy" && groups != topk_groups {
        return Err(c.bad(
            "topk_method",
            "group-limited routing (topk_group < n_group) is not modelled",
        ));
    }
    let shared = c.u64("n_shared_experts")?.filter(|&n| n > 0);
    let top_k = c.need_u64("num_experts_per_tok")?;
    let norm_topk_prob = c.bool("norm_topk_prob")?.unwrap_or(false);
    // DeepSeek-V2's gate either renormalizes the top-k weights (k > 1 with
    // norm_topk_prob) or scales them by routed_scaling_factor, never both.
    let renorm = norm_topk_prob && top_k > 1;
    let routed_scaling = c
        .f64("routed_scaling_factor")?
        .filter(|&f| f != 1.0 && !renorm);
    s.ffn = FfnFields {
        kind: Some(FfnKind::Moe),
        expert_kind: Some(FfnKind::Swiglu),
        hidden: Some(c.need_u64("moe_intermediate_size")?),
        experts: Some(experts),
        top_k: Some(top_k),
        norm_topk_prob: Some(renorm),
        routed_scaling_factor: routed_scaling,
        shared_experts: shared,
        ..FfnFields::default()
    };
    let first_dense = c.u64("first_k_dense_replace")?.unwrap_or(0).min(s.layers);
    if first_dense > 0 {
        s.overrides.push(Override {
            layers: (0..first_dense).collect(),
            attention: None,
            ffn: Some(FfnFields {
                kind: Some(FfnKind::Swiglu),
                hidden: intermediate,
                bias: Some(false),
                ..FfnFields::default()
            }),
        });
    }
    Ok(())
}
