//! Model specs: the user-facing description of an encoder or decoder stack.
//!
//! A spec is TOML (or JSON) deserialised with serde into the boundary types below —
//! every field optional where a sensible default exists, unknown keys rejected —
//! then resolved into one concrete [`LayerConfig`] per layer (base sections, then the
//! layer's kind from `pattern`, then `[[override]]` entries) and lowered to IR by
//! [`lower`]. The field names follow Hugging Face configs where one exists so that a
//! `config.json` maps onto a spec field by field.

mod diffusion;
pub mod hf;
mod load;
mod lower;
mod moe;
mod tiny;
mod vision;

pub use diffusion::{check_steps, Diffusion, DiffusionFields, Remasking, DIFFUSION_FIELDS};
pub use load::{hf_model_name, load_spec, parse_spec, Format, SpecSource};
pub use lower::lower;
pub use moe::{Moe, Router, Scoring, SharedExperts};
pub use vision::{Pool, Vision, VisionFields};

use crate::{IrError, MaskExpr};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Causal language model: token ids in, logits out.
    #[default]
    Decoder,
    /// Bidirectional encoder: token ids in, hidden states out.
    Encoder,
    /// Vision Transformer: an image in, class logits out (see [`VisionFields`]).
    Vit,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    #[default]
    LayerNorm,
    RmsNorm,
}

/// Where the norm sits relative to the residual connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormPlacement {
    /// `x + f(norm(x))`, with a final norm before the head (GPT-2, Llama).
    #[default]
    Pre,
    /// `norm(x + f(x))` (BERT, the original Transformer).
    Post,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// A learned table of `max_positions` vectors added to the token embeddings.
    Learned,
    /// Rotary embeddings applied to queries and keys.
    Rope,
    /// Linear biases on the attention scores (Press et al.).
    Alibi,
    #[default]
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FfnKind {
    /// `W2·gelu(W1·x)` with exact (erf) GELU.
    Gelu,
    /// Same with GELU's tanh approximation (GPT-2).
    GeluTanh,
    Relu,
    /// `W_down·(silu(W_gate·x) ⊙ W_up·x)` (Llama).
    Swiglu,
    /// Mixture of experts: a router and `experts` MLPs of `expert_kind` (see [`Moe`]).
    Moe,
    /// No feed-forward block: the layer is its mixer alone (pure Mamba stacks).
    None,
}

/// The whole spec as written. `deny_unknown_fields` makes a typo an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    #[serde(default)]
    pub arch: Arch,
    /// Token vocabulary (not used by `arch = "vit"`).
    #[serde(default)]
    pub vocab: u64,
    pub d_model: u64,
    pub layers: u64,
    /// Named sizes: `batch` and `seq` are required; others (e.g. `window`) may be
    /// used in mask expressions.
    #[serde(default)]
    pub dims: BTreeMap<String, u64>,
    #[serde(default = "default_dtype")]
    pub dtype: String,
    #[serde(default)]
    pub norm: NormKind,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_placement: NormPlacement,
    #[serde(default)]
    pub position: Position,
    /// Size of the learned position table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_positions: Option<u64>,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// RoPE's context-extension scaling (Llama 3.1, YaRN, linear), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScalingFields>,
    /// The output head reuses the token embedding table.
    #[serde(default)]
    pub tie_embeddings: bool,
    /// A norm of the summed embeddings before the first layer (BERT's
    /// `embeddings.LayerNorm`), with params `embed.norm.*`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub embed_norm: bool,
    /// Token-type (segment) embeddings, a table of this many types (BERT). Every
    /// token is of type 0: the single-segment input BertModel assumes without
    /// `token_type_ids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_types: Option<u64>,
    #[serde(default)]
    pub attention: AttentionFields,
    #[serde(default)]
    pub ffn: FfnFields,
    /// Layer kinds cycled over the stack (`["local", "local", "global"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pattern: Vec<String>,
    /// What each kind in `pattern` changes relative to the base sections.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kinds: BTreeMap<String, LayerFields>,
    /// Changes to specific layers, applied last.
    #[serde(default, rename = "override", skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
    /// A masked-diffusion language model's sampler (see [`DiffusionFields`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffusion: Option<DiffusionFields>,
    /// `arch = "vit"`: the image and the head (see [`VisionFields`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<VisionFields>,
}

/// `[rope_scaling]`: how RoPE's frequencies are rescaled for a longer context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScalingFields {
    /// `linear`, `llama3` or `yarn`.
    pub kind: String,
    pub factor: f64,
    /// llama3: wavelengths over `original_max_positions / low_freq_factor` are
    /// divided by `factor`, those under `/ high_freq_factor` kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    /// llama3 and yarn: the context the model was trained with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_positions: Option<u64>,
    /// yarn: the ramp's ends in rotations (default 32 and 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_fast: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_slow: Option<f64>,
    /// yarn: the cos/sin multiplier (default `0.1·ln(factor) + 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
}

impl Spec {
    /// The resolved `[rope_scaling]`.
    pub fn rope_scaling(&self) -> Result<crate::RopeScaling, IrError> {
        use crate::RopeScaling as S;
        let Some(f) = &self.rope_scaling else {
            return Ok(S::None);
        };
        let fail = |m: String| Spec::spec_error(None, format!("`rope_scaling`: {m}"));
        let need_f = |v: Option<f64>, name: &str| {
            v.ok_or_else(|| fail(format!("kind = \"{}\" needs `{name}`", f.kind)))
        };
        let need_u = |v: Option<u64>, name: &str| {
            v.ok_or_else(|| fail(format!("kind = \"{}\" needs `{name}`", f.kind)))
        };
        let s = match f.kind.as_str() {
            "linear" => S::Linear { factor: f.factor },
            "llama3" => S::Llama3 {
                factor: f.factor,
                low_freq_factor: need_f(f.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need_f(f.high_freq_factor, "high_freq_factor")?,
                original_max_positions: need_u(f.original_max_positions, "original_max_positions")?,
            },
            "yarn" => S::Yarn {
                factor: f.factor,
                original_max_positions: need_u(f.original_max_positions, "original_max_positions")?,
                beta_fast: f.beta_fast.unwrap_or(32.0),
                beta_slow: f.beta_slow.unwrap_or(1.0),
                attention_factor: f
                    .attention_factor
                    .unwrap_or_else(|| crate::rope::yarn_mscale(f.factor, 1.0)),
            },
            other => {
                return Err(fail(format!(
                    "kind = \"{other}\" is not one of linear, llama3, yarn"
                )))
            }
        };
        s.check().map_err(fail)?;
        if self.position != Position::Rope {
            return Err(fail("set, but `position` is not \"rope\"".into()));
        }
        Ok(s)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_dtype() -> String {
    "f32".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10000.0
}

/// Attention fields; every one optional so the same type serves base sections,
/// layer kinds and overrides.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<u64>,
    /// Key/value heads (GQA when fewer than `heads`, MQA when 1). Default: `heads`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<u64>,
    /// Default: `d_model / heads`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<u64>,
    /// Mask expression over (b, h, q, k); `"none"` for full attention. Default:
    /// `k <= q` for decoders, none for encoders.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// `none` or `softcap:C` (`C·tanh(s/C)`, Gemma 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score_modifier: Option<String>,
    /// Document masking: an input `segments: i64 [batch, seq]` of document ids; a key
    /// counts only in its query's document (on top of `mask`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_mask: Option<bool>,
    /// `softmax` (default) or `moba`: mixture of block attention (causal; each query
    /// block attends to its own block and the `moba_top_k` best earlier blocks of
    /// `moba_block` tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moba_block: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moba_top_k: Option<u64>,
    /// `kind = "lsh"` (Reformer, shared-QK): hash rounds, buckets (even) and the
    /// chunk length of the sorted sequence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsh_hashes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsh_buckets: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsh_chunk: Option<u64>,
    /// `kind = "routing"` (Routing Transformer, shared-QK): k-means clusters and the
    /// positions each takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_clusters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_window: Option<u64>,
    /// `kind = "linear"`: the feature map φ of `φ(q)·φ(k)ᵀ` — `elu` (elu + 1,
    /// Katharopoulos et al.; the default), `relu`, `identity` or `performer` (FAVOR+
    /// positive orthogonal random features).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_map: Option<String>,
    /// Performer: the number of random features (default 256) and their seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_seed: Option<u64>,
    /// `kind = "linformer"`: the projected sequence length `k` of keys and values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linformer_k: Option<u64>,
    /// `kind = "gla"`: the rank of the low-rank gate projection (default 16).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate_rank: Option<u64>,
    /// `kind = "mamba2"`: the SSM state size `d_state` (default 128) and the inner
    /// width factor `expand` (default 2); `heads × head_dim` must be `expand ·
    /// d_model`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expand: Option<u64>,
    /// `kind = "mamba2"` / `"mamba"`: the width `K` of the causal depthwise
    /// convolution over `x` (and Mamba2's `B`, `C`) before `silu` (Mamba2 default:
    /// none; Mamba default 4), with a bias per channel unless `conv_bias = false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_kernel: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_bias: Option<bool>,
    /// `kind = "mamba2"`: groups of `B` and `C` (default 1), `heads / groups` heads
    /// each (`n_groups`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<u64>,
    /// `kind = "mamba"`: the rank of the `Δ` projection (default `⌈d_model / 16⌉`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dt_rank: Option<u64>,
    /// `kind = "axial"`: attention along the rows, then the columns, of the sequence
    /// read as an `axial_rows × (seq / axial_rows)` grid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub axial_rows: Option<u64>,
    /// Score scale. Default: `1/sqrt(head_dim)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qkv_bias: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_bias: Option<bool>,
    /// Multi-head latent attention (DeepSeek-V2): the rank `r` of the joint key/value
    /// latent `c = rms_norm(x·W_kv_a)`. Setting it turns the layer into MLA, which
    /// then needs `qk_nope_head_dim`, `qk_rope_head_dim` and `v_head_dim`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_lora_rank: Option<u64>,
    /// MLA only: the rank of the low-rank query projection. Unset: a full `W_q`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q_lora_rank: Option<u64>,
    /// MLA only: per-head width of the rotary part of queries and keys (the key part
    /// is shared by all heads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qk_rope_head_dim: Option<u64>,
    /// MLA only: per-head width of the non-rotary part of queries and keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qk_nope_head_dim: Option<u64>,
    /// MLA only: per-head width of the values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v_head_dim: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FfnFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<FfnKind>,
    /// Hidden width of the MLP (of each expert for MoE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias: Option<bool>,
    /// MoE: routed experts (`num_local_experts`, `n_routed_experts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experts: Option<u64>,
    /// MoE: experts per token of the top-k router (`num_experts_per_tok`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    /// MoE: always-on shared experts (DeepSeekMoE's `n_shared_experts`), together
    /// one MLP of `shared_hidden` (default `shared_experts × hidden`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_experts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_hidden: Option<u64>,
    /// MoE: the shared experts' output is scaled by `sigmoid(x·w)` (Qwen2-MoE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_expert_gate: Option<bool>,
    /// MoE: `softmax_topk` (Mixtral, DeepSeekMoE), `switch` (top-1 with capacity),
    /// `expert_choice` (each expert picks its tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    /// MoE: Switch's and expert choice's capacity, `capacity_factor × tokens /
    /// experts` tokens per expert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_factor: Option<f64>,
    /// MoE: the MLP of each expert: `swiglu` (default), `gelu`, `gelu_tanh`, `relu`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expert_kind: Option<FfnKind>,
    /// MoE: router scores `softmax` (default) or `sigmoid` (DeepSeek-V3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scoring_func: Option<String>,
    /// MoE: the top-k gates are divided by their sum (Mixtral: true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub norm_topk_prob: Option<bool>,
    /// MoE: routed gates are multiplied by this (DeepSeek).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routed_scaling_factor: Option<f64>,
    /// MoE: a learned bias per expert added to the scores for selecting experts
    /// only, not to the gates (auxiliary-loss-free load balancing, DeepSeek-V3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection_bias: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<AttentionFields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn: Option<FfnFields>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Layer indices this override applies to.
    pub layers: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<AttentionFields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn: Option<FfnFields>,
}

/// Field names per section, for `--set` short keys and "did you mean" hints.
pub const SPEC_FIELDS: &[&str] = &[
    "name",
    "arch",
    "vocab",
    "d_model",
    "layers",
    "dims",
    "dtype",
    "norm",
    "norm_eps",
    "norm_placement",
    "position",
    "max_positions",
    "rope_theta",
    "rope_scaling",
    "tie_embeddings",
    "embed_norm",
    "token_types",
    "attention",
    "ffn",
    "pattern",
    "kinds",
    "override",
    "diffusion",
    "vision",
];
pub const ATTENTION_FIELDS: &[&str] = &[
    "heads",
    "kv_heads",
    "head_dim",
    "mask",
    "score_modifier",
    "document_mask",
    "kind",
    "moba_block",
    "moba_top_k",
    "lsh_hashes",
    "lsh_buckets",
    "lsh_chunk",
    "routing_clusters",
    "routing_window",
    "feature_map",
    "features",
    "feature_seed",
    "linformer_k",
    "gate_rank",
    "state_size",
    "expand",
    "conv_kernel",
    "conv_bias",
    "groups",
    "dt_rank",
    "axial_rows",
    "scale",
    "qkv_bias",
    "out_bias",
    "kv_lora_rank",
    "q_lora_rank",
    "qk_rope_head_dim",
    "qk_nope_head_dim",
    "v_head_dim",
];
pub const FFN_FIELDS: &[&str] = &[
    "kind",
    "hidden",
    "bias",
    "experts",
    "top_k",
    "shared_experts",
    "shared_hidden",
    "shared_expert_gate",
    "router",
    "capacity_factor",
    "expert_kind",
    "scoring_func",
    "norm_topk_prob",
    "routed_scaling_factor",
    "selection_bias",
];

impl AttentionFields {
    /// Fields set in `over` replace those in `self`.
    fn merged(&self, over: &AttentionFields) -> AttentionFields {
        AttentionFields {
            heads: over.heads.or(self.heads),
            kv_heads: over.kv_heads.or(self.kv_heads),
            head_dim: over.head_dim.or(self.head_dim),
            mask: over.mask.clone().or_else(|| self.mask.clone()),
            score_modifier: over
                .score_modifier
                .clone()
                .or_else(|| self.score_modifier.clone()),
            kind: over.kind.clone().or_else(|| self.kind.clone()),
            document_mask: over.document_mask.or(self.document_mask),
            moba_block: over.moba_block.or(self.moba_block),
            moba_top_k: over.moba_top_k.or(self.moba_top_k),
            lsh_hashes: over.lsh_hashes.or(self.lsh_hashes),
            lsh_buckets: over.lsh_buckets.or(self.lsh_buckets),
            lsh_chunk: over.lsh_chunk.or(self.lsh_chunk),
            routing_clusters: over.routing_clusters.or(self.routing_clusters),
            routing_window: over.routing_window.or(self.routing_window),
            feature_map: over
                .feature_map
                .clone()
                .or_else(|| self.feature_map.clone()),
            features: over.features.or(self.features),
            feature_seed: over.feature_seed.or(self.feature_seed),
            linformer_k: over.linformer_k.or(self.linformer_k),
            gate_rank: over.gate_rank.or(self.gate_rank),
            state_size: over.state_size.or(self.state_size),
            expand: over.expand.or(self.expand),
            conv_kernel: over.conv_kernel.or(self.conv_kernel),
            conv_bias: over.conv_bias.or(self.conv_bias),
            groups: over.groups.or(self.groups),
            dt_rank: over.dt_rank.or(self.dt_rank),
            axial_rows: over.axial_rows.or(self.axial_rows),
            scale: over.scale.or(self.scale),
            qkv_bias: over.qkv_bias.or(self.qkv_bias),
            out_bias: over.out_bias.or(self.out_bias),
            kv_lora_rank: over.kv_lora_rank.or(self.kv_lora_rank),
            q_lora_rank: over.q_lora_rank.or(self.q_lora_rank),
            qk_rope_head_dim: over.qk_rope_head_dim.or(self.qk_rope_head_dim),
            qk_nope_head_dim: over.qk_nope_head_dim.or(self.qk_nope_head_dim),
            v_head_dim: over.v_head_dim.or(self.v_head_dim),
        }
    }
}

impl FfnFields {
    fn merged(&self, over: &FfnFields) -> FfnFields {
        FfnFields {
            kind: over.kind.or(self.kind),
            hidden: over.hidden.or(self.hidden),
            bias: over.bias.or(self.bias),
            experts: over.experts.or(self.experts),
            top_k: over.top_k.or(self.top_k),
            shared_experts: over.shared_experts.or(self.shared_experts),
            shared_hidden: over.shared_hidden.or(self.shared_hidden),
            shared_expert_gate: over.shared_expert_gate.or(self.shared_expert_gate),
            router: over.router.clone().or_else(|| self.router.clone()),
            capacity_factor: over.capacity_factor.or(self.capacity_factor),
            expert_kind: over.expert_kind.or(self.expert_kind),
            scoring_func: over
                .scoring_func
                .clone()
                .or_else(|| self.scoring_func.clone()),
            norm_topk_prob: over.norm_topk_prob.or(self.norm_topk_prob),
            routed_scaling_factor: over.routed_scaling_factor.or(self.routed_scaling_factor),
            selection_bias: over.selection_bias.or(self.selection_bias),
        }
    }
}

/// How attention scores are modified before masking.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScoreModifier {
    None,
    /// `c·tanh(s/c)`.
    Softcap(f64),
}

/// The resolved attention block of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub heads: u64,
    /// Equal to `heads` for MLA.
    pub kv_heads: u64,
    /// For MLA, the query/key head width `qk_nope_head_dim + qk_rope_head_dim`
    /// (`attention.head_dim` is not used by MLA).
    pub head_dim: u64,
    pub mask: Option<MaskExpr>,
    pub score_modifier: ScoreModifier,
    /// Keys only in the query's document (the `segments` input).
    pub document_mask: bool,
    /// Set for MoBA: `(block, top_k)`.
    pub moba: Option<(u64, u64)>,
    /// Set for Reformer's LSH attention: `(hash rounds, buckets, chunk)`.
    pub lsh: Option<(u64, u64, u64)>,
    /// Set for Routing attention: `(clusters, window)`.
    pub routing: Option<(u64, u64)>,
    /// Set for the linear, recurrent and axial mixers.
    pub mixer: Option<Mixer>,
    pub scale: f64,
    pub qkv_bias: bool,
    pub out_bias: bool,
    /// Set for multi-head latent attention.
    pub mla: Option<Mla>,
}

/// A token mixer other than softmax attention over `(q, k)`, each lowered in its
/// paper's quadratic (parallel) form.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mixer {
    /// `φ(q)·φ(k)ᵀ·v / φ(q)·Σφ(k)`, causal when the mask is `k <= q`.
    Kernel {
        feature_map: FeatureMap,
        causal: bool,
    },
    /// Linformer: keys and values projected along the sequence to `k` rows.
    Linformer { k: u64 },
    /// RetNet's retention: `(q·kᵀ ⊙ D)·v` with `D = γ_h^(i-j)` (causal), `γ_h = 1 −
    /// 2^(−5−h)`, a per-head RMS norm and a swish output gate.
    Retnet,
    /// Gated linear attention: data-dependent per-channel decay `α = σ(x·W₁·W₂ +
    /// b)^(1/16)` of rank `gate_rank`.
    Gla { gate_rank: u64 },
    /// Mamba2's SSD mixer: a scalar decay per head and step `exp(Δ·A)`, shared `B`,
    /// `C` of width `state`, inner width `expand · d_model`.
    Mamba2 {
        state: u64,
        expand: u64,
        /// The causal depthwise convolution's width and whether it has a bias.
        conv: Option<(u64, bool)>,
        /// Groups of `B` and `C`, `heads / groups` heads each.
        groups: u64,
    },
    /// Mamba-1's selective scan (Jamba's mixer): a decay per channel and state
    /// `exp(Δ·A)`, `A [d_inner, state]`, `Δ` of rank `dt_rank`, a causal depthwise
    /// convolution of width `conv` (with a bias when `conv_bias`), RMS norms on `Δ`,
    /// `B` and `C` (Jamba's), inner width `expand · d_model`.
    Mamba {
        state: u64,
        expand: u64,
        conv: u64,
        conv_bias: bool,
        dt_rank: u64,
    },
    /// Axial attention over a `rows × (seq / rows)` grid: along rows, then columns.
    Axial { rows: u64 },
}

/// The feature map of kernel attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureMap {
    /// `elu(x) + 1`.
    Elu,
    Relu,
    Identity,
    /// FAVOR+: `exp(ω·x̃ − |x̃|²/2) / √m` with `x̃ = x·d^(-1/4)` and `m` seeded
    /// orthogonal random features, so `φ(q)·φ(k) ≈ exp(q·k/√d)`.
    Performer {
        features: u64,
        seed: u64,
    },
}

/// The resolved multi-head latent attention (DeepSeek-V2) sizes of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mla {
    /// Rank `r` of the joint key/value latent.
    pub kv_lora_rank: u64,
    /// Rank of the low-rank query projection, when queries are low-rank.
    pub q_lora_rank: Option<u64>,
    /// `dr`: per-head rotary width of queries and (shared) keys.
    pub qk_rope_head_dim: u64,
    /// `dn`: per-head non-rotary width of queries and keys.
    pub qk_nope_head_dim: u64,
    /// `dv`: per-head value width.
    pub v_head_dim: u64,
}

impl Mla {
    /// `dn + dr`, the width of one query/key head.
    pub fn qk_head_dim(&self) -> u64 {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }
}

/// The resolved feed-forward block of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Ffn {
    pub kind: FfnKind,
    /// The MLP's hidden width; each expert's for a mixture.
    pub hidden: u64,
    pub bias: bool,
    /// Set exactly when `kind` is [`FfnKind::Moe`].
    pub moe: Option<Moe>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerConfig {
    pub index: u64,
    /// The kind from `pattern`, if any.
    pub kind: Option<String>,
    pub attention: Attention,
    pub ffn: Ffn,
}

/// Dimension names the lowering binds from spec fields: `[dims]` may not set them,
/// or a shape would silently disagree with the field.
const RESERVED_DIMS: &[(&str, &str)] = &[
    ("vocab", "`vocab`"),
    ("d_model", "`d_model`"),
    ("max_positions", "`max_positions`"),
    ("heads", "`attention.heads`"),
    ("kv_heads", "`attention.kv_heads`"),
    ("head_dim", "`attention.head_dim`"),
    ("q_dim", "`attention.heads × head_dim`"),
    ("kv_dim", "`attention.kv_heads × head_dim`"),
    ("kv_group", "`attention.heads / kv_heads`"),
    ("kv_lora_rank", "`attention.kv_lora_rank`"),
    ("q_lora_rank", "`attention.q_lora_rank`"),
    ("qk_rope_head_dim", "`attention.qk_rope_head_dim`"),
    ("qk_nope_head_dim", "`attention.qk_nope_head_dim`"),
    ("v_head_dim", "`attention.v_head_dim`"),
    (
        "qk_head_dim",
        "`attention.qk_nope_head_dim + qk_rope_head_dim`",
    ),
    (
        "mla_q_dim",
        "`attention.heads × (qk_nope_head_dim + qk_rope_head_dim)`",
    ),
    ("mla_kv_dim", "`attention.heads × qk_nope_head_dim`"),
    ("mla_v_dim", "`attention.heads × v_head_dim`"),
    ("ffn_hidden", "`ffn.hidden`"),
    (
        "tokens",
        "`dims.batch × dims.seq` (the tokens a mixture of experts routes)",
    ),
    ("experts", "`ffn.experts`"),
    ("token_types", "`token_types`"),
    ("shared_hidden", "`ffn.shared_hidden`"),
];

/// Largest layer count and size accepted: past these a spec is a typo, not a model,
/// and the error is kinder than an allocation failure later.
pub const MAX_LAYERS: u64 = 4096;
pub const MAX_DIM: u64 = 1 << 32;

impl Spec {
    fn spec_error(layer: Option<String>, message: impl Into<String>) -> IrError {
        IrError::Spec {
            layer,
            message: message.into(),
        }
    }

    pub fn dim(&self, name: &str) -> Result<u64, IrError> {
        self.dims.get(name).copied().ok_or_else(|| {
            Spec::spec_error(
                None,
                format!("`dims.{name}` is required (e.g. `{name} = 1`)"),
            )
        })
    }

    /// Checks that do not depend on a layer.
    pub fn validate(&self) -> Result<(), IrError> {
        let vocab = (self.arch != Arch::Vit).then_some(("vocab", self.vocab));
        let sizes = [("d_model", self.d_model), ("layers", self.layers)];
        let types = self.token_types.map(|t| ("token_types", t));
        for (name, v) in vocab
            .into_iter()
            .chain(sizes)
            .chain(types)
            .chain(self.dims.iter().map(|(k, v)| (k.as_str(), *v)))
        {
            if v == 0 {
                return Err(Spec::spec_error(
                    None,
                    format!("`{name}` must be at least 1"),
                ));
            }
            if v > MAX_DIM {
                return Err(Spec::spec_error(
                    None,
                    format!("`{name}` = {v} is larger than the supported maximum {MAX_DIM}"),
                ));
            }
        }
        if self.layers > MAX_LAYERS {
            return Err(Spec::spec_error(
                None,
                format!("`layers` = {} is more than {MAX_LAYERS}", self.layers),
            ));
        }
        self.dim("batch")?;
        self.dim("seq")?;
        if crate::DType::from_name(&self.dtype).is_none_or(|d| !d.is_float()) {
            return Err(Spec::spec_error(
                None,
                format!("`dtype` = {:?} is not one of f32, f16, bf16", self.dtype),
            ));
        }
        if self.position == Position::Learned {
            let max = self.max_positions.ok_or_else(|| {
                Spec::spec_error(None, "`position = \"learned\"` needs `max_positions`")
            })?;
            let seq = self.dim("seq")?;
            if seq > max {
                return Err(Spec::spec_error(
                    None,
                    format!("`dims.seq` = {seq} is longer than `max_positions` = {max}"),
                ));
            }
        }
        if self.token_types.is_some() && self.arch == Arch::Vit {
            return Err(Spec::spec_error(
                None,
                "`token_types` embeds token types; a ViT has no tokens",
            ));
        }
        self.rope_scaling()?;
        self.diffusion()?;
        self.vision()?;
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return Err(Spec::spec_error(
                None,
                "`norm_eps` must be a positive number",
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(Spec::spec_error(
                None,
                "`rope_theta` must be a positive number",
            ));
        }
        for name in self.dims.keys() {
            if let Some((_, field)) = RESERVED_DIMS.iter().find(|(d, _)| d == name) {
                return Err(Spec::spec_error(
                    None,
                    format!("`dims.{name}` is derived from {field}; remove it from `[dims]`"),
                ));
            }
        }
        for kind in &self.pattern {
            if !self.kinds.contains_key(kind) {
                let known: Vec<&str> = self.kinds.keys().map(String::as_str).collect();
                return Err(Spec::spec_error(
                    None,
                    format!(
                        "`pattern` names the layer kind `{kind}`, which has no `[kinds.{kind}]` section{}",
                        crate::spec::load::suggestion(kind, &known)
                    ),
                ));
            }
        }
        for o in &self.overrides {
            if let Some(&bad) = o.layers.iter().find(|&&l| l >= self.layers) {
                return Err(Spec::spec_error(
                    None,
                    format!(
                        "an `[[override]]` names layer {bad}, but the model has {} layers",
                        self.layers
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The concrete configuration of every layer.
    pub fn layer_configs(&self) -> Result<Vec<LayerConfig>, IrError> {
        self.validate()?;
        (0..self.layers).map(|i| self.layer_config(i)).collect()
    }

    pub fn layer_config(&self, index: u64) -> Result<LayerConfig, IrError> {
        let kind = (!self.pattern.is_empty())
            .then(|| self.pattern[(index % self.pattern.len() as u64) as usize].clone());
        let mut attention = self.attention.clone();
        let mut ffn = self.ffn.clone();
        if let Some(k) = kind.as_ref().and_then(|k| self.kinds.get(k)) {
            if let Some(a) = &k.attention {
                attention = attention.merged(a);
            }
            if let Some(f) = &k.ffn {
                ffn = ffn.merged(f);
            }
        }
        for o in self.overrides.iter().filter(|o| o.layers.contains(&index)) {
            if let Some(a) = &o.attention {
                attention = attention.merged(a);
            }
            if let Some(f) = &o.ffn {
                ffn = ffn.merged(f);
            }
        }
        let layer = format!("layers.{index}");
        let err = |m: String| Spec::spec_error(Some(layer.clone()), m);
        let positive = |name: &str, v: Option<u64>| -> Result<Option<u64>, IrError> {
            match v {
                Some(0) => Err(err(format!("`{name}` must be at least 1"))),
                Some(v) if v > MAX_DIM => Err(err(format!("`{name}` = {v} is too large"))),
                v => Ok(v),
            }
        };
        let heads = positive("attention.heads", attention.heads)?
            .ok_or_else(|| err("`attention.heads` is required".into()))?;
        let kv_heads = positive("attention.kv_heads", attention.kv_heads)?.unwrap_or(heads);
        let mla = self.mla(&attention, heads, kv_heads, &err)?;
        if heads % kv_heads != 0 {
            return Err(err(format!(
                "`attention.heads` ({heads}) must be a multiple of `attention.kv_heads` ({kv_heads})"
            )));
        }
        let head_dim = match (mla, positive("attention.head_dim", attention.head_dim)?) {
            (Some(m), _) => m.qk_head_dim(),
            (None, Some(d)) => d,
            (None, None) if self.d_model.is_multiple_of(heads) => self.d_model / heads,
            (None, None) => {
                return Err(err(format!(
                    "`d_model` ({}) is not divisible by `attention.heads` ({heads}): set `attention.head_dim`",
                    self.d_model
                )))
            }
        };
        if self.position == Position::Rope && mla.is_none() && head_dim % 2 != 0 {
            return Err(err(format!(
                "RoPE needs an even `attention.head_dim`, got {head_dim}"
            )));
        }
        let mask_text = attention.mask.clone().unwrap_or_else(|| match self.arch {
            Arch::Decoder => "k <= q".into(),
            Arch::Encoder | Arch::Vit => "none".into(),
        });
        let mask = if mask_text.trim() == "none" {
            None
        } else {
            let e = MaskExpr::parse(&mask_text)
                .map_err(|e| err(format!("`attention.mask` {mask_text:?}: {e}")))?;
            for d in e.dim_names() {
                if !self.dims.contains_key(&d) {
                    return Err(err(format!(
                        "`attention.mask` {mask_text:?} refers to `{d}`: add it to `[dims]` (e.g. `{d} = 4096`)"
                    )));
                }
            }
            Some(e)
        };
        let attn_kind = attention.kind.as_deref().map(str::trim);
        if attention.document_mask == Some(true) && !matches!(attn_kind, None | Some("softmax")) {
            return Err(err(
                "`attention.document_mask` works with softmax attention, not `attention.kind` = {attn_kind:?}"
                    .replace("{attn_kind:?}", &format!("{attn_kind:?}")),
            ));
        }
        let lsh_set = attention.lsh_hashes.is_some()
            || attention.lsh_buckets.is_some()
            || attention.lsh_chunk.is_some();
        if lsh_set && attn_kind != Some("lsh") {
            return Err(err(
                "`attention.lsh_hashes` / `lsh_buckets` / `lsh_chunk` need `attention.kind = \"lsh\"`".into(),
            ));
        }
        let lsh = if attn_kind == Some("lsh") {
            let hashes = positive("attention.lsh_hashes", attention.lsh_hashes)?.unwrap_or(1);
            let buckets =
                positive("attention.lsh_buckets", attention.lsh_buckets)?.ok_or_else(|| {
                    err("`attention.kind = \"lsh\"` needs `attention.lsh_buckets`".into())
                })?;
            let chunk = positive("attention.lsh_chunk", attention.lsh_chunk)?.ok_or_else(|| {
                err("`attention.kind = \"lsh\"` needs `attention.lsh_chunk`".into())
            })?;
            let seq = self.dim("seq")?;
            if buckets < 2 || buckets % 2 != 0 {
                return Err(err(format!(
                    "`attention.lsh_buckets` must be even and at least 2, got {buckets}"
                )));
            }
            if seq % chunk != 0 {
                return Err(err(format!(
                    "`attention.lsh_chunk` ({chunk}) must divide `dims.seq` ({seq})"
                )));
            }
            if attention.mask.is_some() || kv_heads != heads || mla.is_some() {
                return Err(err(
                    "LSH attention shares queries and keys: no `attention.mask` (decoders are causal), no grouped KV heads, no MLA".into(),
                ));
            }
            Some((hashes, buckets, chunk))
        } else {
            None
        };
        let routing_set =
            attention.routing_clusters.is_some() || attention.routing_window.is_some();
        if routing_set && attn_kind != Some("routing") {
            return Err(err(
                "`attention.routing_clusters` / `routing_window` need `attention.kind = \"routing\"`".into(),
            ));
        }
        let routing = if attn_kind == Some("routing") {
            let clusters = positive("attention.routing_clusters", attention.routing_clusters)?
                .ok_or_else(|| {
                    err("`attention.kind = \"routing\"` needs `attention.routing_clusters`".into())
                })?;
            let seq = self.dim("seq")?;
            let window = positive("attention.routing_window", attention.routing_window)?
                .unwrap_or(seq.div_ceil(clusters));
            if window > seq {
                return Err(err(format!(
                    "`attention.routing_window` ({window}) is longer than `dims.seq` ({seq})"
                )));
            }
            if attention.mask.is_some() || kv_heads != heads || mla.is_some() {
                return Err(err(
                    "routing attention shares queries and keys: no `attention.mask` (decoders are causal), no grouped KV heads, no MLA".into(),
                ));
            }
            Some((clusters, window))
        } else {
            None
        };
        let moba = match attn_kind {
            None | Some("softmax") | Some("lsh") | Some("routing") => {
                if attention.moba_block.is_some() || attention.moba_top_k.is_some() {
                    return Err(err(
                        "`attention.moba_block` / `moba_top_k` need `attention.kind = \"moba\"`"
                            .into(),
                    ));
                }
                None
            }
            Some("moba") => {
                let block =
                    positive("attention.moba_block", attention.moba_block)?.ok_or_else(|| {
                        err("`attention.kind = \"moba\"` needs `attention.moba_block`".into())
                    })?;
                let top_k = attention.moba_top_k.unwrap_or(3);
                let seq = self.dim("seq")?;
                if seq % block != 0 {
                    return Err(err(format!(
                        "`attention.moba_block` ({block}) must divide `dims.seq` ({seq})"
                    )));
                }
                if attention.mask.is_some() || self.arch != Arch::Decoder {
                    return Err(err(
                        "MoBA is causal self-attention: use it in a decoder without `attention.mask`".into(),
                    ));
                }
                if mla.is_some() {
                    return Err(err(
                        "MoBA with multi-head latent attention is not supported".into(),
                    ));
                }
                Some((block, top_k))
            }
            Some(k) if MIXERS.contains(&k) => {
                if attention.moba_block.is_some() || attention.moba_top_k.is_some() {
                    return Err(err(
                        "`attention.moba_block` / `moba_top_k` need `attention.kind = \"moba\"`"
                            .into(),
                    ));
                }
                None
            }
            Some(other) => {
                return Err(err(format!(
                    "`attention.kind` = {other:?}: expected \"softmax\", \"moba\", \"lsh\", \"routing\", {}",
                    MIXERS.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(", ")
                )))
            }
        };
        let mixer = self.mixer(&attention, attn_kind, mask.as_ref(), heads, head_dim, &err)?;
        if mixer.is_some() && (mla.is_some() || attention.document_mask == Some(true)) {
            return Err(err(format!(
                "`attention.kind` = {:?} works without MLA and document masks",
                attn_kind.unwrap_or_default()
            )));
        }
        let score_modifier = parse_score_modifier(attention.score_modifier.as_deref())
            .map_err(|m| err(format!("`attention.score_modifier`: {m}")))?;
        // For MLA `head_dim` is `dn + dr`, so this is `1/sqrt(dn + dr)`.
        let scale = attention.scale.unwrap_or(1.0 / (head_dim as f64).sqrt());
        if !scale.is_finite() {
            return Err(err(format!(
                "`attention.scale` must be a finite number, got {scale}"
            )));
        }
        let ffn_kind = ffn
            .kind
            .ok_or_else(|| err("`ffn.kind` is required".into()))?;
        let hidden = match positive("ffn.hidden", ffn.hidden)? {
            Some(h) => h,
            None if ffn_kind == FfnKind::None => 0,
            None => return Err(err("`ffn.hidden` is required".into())),
        };
        let moe = self.moe(&ffn, ffn_kind, hidden, &err)?;
        Ok(LayerConfig {
            index,
            kind,
            attention: Attention {
                heads,
                kv_heads,
                head_dim,
                mask,
                score_modifier,
                document_mask: attention.document_mask.unwrap_or(false),
                moba,
                lsh,
                routing,
                mixer,
                scale,
                qkv_bias: attention.qkv_bias.unwrap_or(false),
                out_bias: attention.out_bias.unwrap_or(false),
                mla,
            },
            ffn: Ffn {
                kind: ffn_kind,
                hidden,
                bias: ffn.bias.unwrap_or(false),
                moe,
            },
        })
    }
}

/// `attention.kind` values that are token mixers ([`Mixer`]).
const MIXERS: &[&str] = &[
    "linear",
    "linformer",
    "retnet",
    "gla",
    "mamba2",
    "mamba",
    "axial",
];

impl Spec {
    /// The mixer of a layer's merged attention fields (`None` for softmax attention
    /// and the sparse kinds); an error for fields of another kind or a mask the
    /// mixer cannot take.
    fn mixer(
        &self,
        a: &AttentionFields,
        kind: Option<&str>,
        mask: Option<&MaskExpr>,
        heads: u64,
        head_dim: u64,
        err: &dyn Fn(String) -> IrError,
    ) -> Result<Option<Mixer>, IrError> {
        let mamba = matches!(kind, Some("mamba2") | Some("mamba"));
        let mamba_owned = [
            ("conv_kernel", a.conv_kernel.is_some()),
            ("conv_bias", a.conv_bias.is_some()),
        ];
        for (field, set) in mamba_owned {
            if set && !mamba {
                return Err(err(format!(
                    "`attention.{field}` needs `attention.kind = \"mamba2\"` or `\"mamba\"`"
                )));
            }
        }
        let owned: [(&str, bool, &str); 7] = [
            (
                "feature_map` / `features` / `feature_seed",
                a.feature_map.is_some() || a.features.is_some() || a.feature_seed.is_some(),
                "linear",
            ),
            ("linformer_k", a.linformer_k.is_some(), "linformer"),
            ("gate_rank", a.gate_rank.is_some(), "gla"),
            (
                "state_size` / `expand",
                a.state_size.is_some() || a.expand.is_some(),
                if kind == Some("mamba") {
                    "mamba"
                } else {
                    "mamba2"
                },
            ),
            ("groups", a.groups.is_some(), "mamba2"),
            ("dt_rank", a.dt_rank.is_some(), "mamba"),
            ("axial_rows", a.axial_rows.is_some(), "axial"),
        ];
        for (fields, set, owner) in owned {
            if set && kind != Some(owner) {
                return Err(err(format!(
                    "`attention.{fields}` need `attention.kind = \"{owner}\"`"
                )));
            }
        }
        let Some(kind) = kind.filter(|k| MIXERS.contains(k)) else {
            return Ok(None);
        };
        let size = |name: &str, v: Option<u64>, default: u64| match v {
            Some(0) => Err(err(format!("`attention.{name}` must be at least 1"))),
            Some(v) if v > MAX_DIM => Err(err(format!("`attention.{name}` = {v} is too large"))),
            v => Ok(v.unwrap_or(default)),
        };
        // A causal convolution wider than the sequence is not an error of the
        // model, but a kernel of 0 is; `dims.seq` bounds neither.
        let conv_size = |v: Option<u64>, default: u64| match v {
            Some(0) => Err(err("`attention.conv_kernel` must be at least 1".into())),
            Some(v) if v > 1024 => Err(err(format!(
                "`attention.conv_kernel` = {v} is too large (at most 1024)"
            ))),
            v => Ok(v.unwrap_or(default)),
        };
        let causal = match mask {
            None => false,
            Some(m) if *m == MaskExpr::parse("k <= q").expect("a valid mask") => true,
            Some(m) => {
                return Err(err(format!(
                "`attention.kind = \"{kind}\"` takes the causal mask `k <= q` or none, not `{m}`"
            )))
            }
        };
        let seq = self.dim("seq")?;
        let needs_causal = |what: &str| {
            if causal {
                Ok(())
            } else {
                Err(err(format!(
                    "{what} is causal: use it in a decoder (mask `k <= q`)"
                )))
            }
        };
        Ok(Some(match kind {
            "linear" => {
                let feature_map = match a.feature_map.as_deref().map(str::trim) {
                    None | Some("elu") => FeatureMap::Elu,
                    Some("relu") => FeatureMap::Relu,
                    Some("identity") => FeatureMap::Identity,
                    Some("performer") => FeatureMap::Performer {
                        features: size("features", a.features, 256)?,
                        seed: a.feature_seed.unwrap_or(0),
                    },
                    Some(other) => {
                        return Err(err(format!(
                            "`attention.feature_map` = {other:?}: expected \"elu\", \"relu\", \"identity\" or \"performer\""
                        )))
                    }
                };
                if a.features.is_some() && !matches!(feature_map, FeatureMap::Performer { .. }) {
                    return Err(err(
                        "`attention.features` is the Performer's: set `attention.feature_map = \"performer\"`".into(),
                    ));
                }
                Mixer::Kernel {
                    feature_map,
                    causal,
                }
            }
            "linformer" => {
                if causal {
                    return Err(err(
                        "Linformer projects the whole sequence: it has no causal form (set `attention.mask = \"none\"`)".into(),
                    ));
                }
                Mixer::Linformer {
                    k: size("linformer_k", a.linformer_k, 256)?,
                }
            }
            "retnet" => {
                needs_causal("RetNet's retention")?;
                Mixer::Retnet
            }
            "gla" => {
                needs_causal("gated linear attention")?;
                Mixer::Gla {
                    gate_rank: size("gate_rank", a.gate_rank, 16)?,
                }
            }
            "mamba2" => {
                needs_causal("Mamba2")?;
                let expand = size("expand", a.expand, 2)?;
                if heads * head_dim != expand * self.d_model {
                    return Err(err(format!(
                        "Mamba2's heads × head_dim ({heads} × {head_dim}) must be expand × d_model ({expand} × {})",
                        self.d_model
                    )));
                }
                let groups = size("groups", a.groups, 1)?;
                if !heads.is_multiple_of(groups) {
                    return Err(err(format!(
                        "`attention.groups` = {groups} must divide the Mamba2 heads ({heads})"
                    )));
                }
                let conv = match a.conv_kernel {
                    None => {
                        if a.conv_bias.is_some() {
                            return Err(err(
                                "`attention.conv_bias` needs `attention.conv_kernel`".into()
                            ));
                        }
                        None
                    }
                    Some(_) => Some((conv_size(a.conv_kernel, 4)?, a.conv_bias.unwrap_or(true))),
                };
                Mixer::Mamba2 {
                    state: size("state_size", a.state_size, 128)?,
                    expand,
                    conv,
                    groups,
                }
            }
            "mamba" => {
                needs_causal("Mamba")?;
                Mixer::Mamba {
                    state: size("state_size", a.state_size, 16)?,
                    expand: size("expand", a.expand, 2)?,
                    conv: conv_size(a.conv_kernel, 4)?,
                    conv_bias: a.conv_bias.unwrap_or(true),
                    dt_rank: size("dt_rank", a.dt_rank, self.d_model.div_ceil(16).max(1))?,
                }
            }
            _ => {
                let rows = size("axial_rows", a.axial_rows, 1)?;
                if a.axial_rows.is_none() || seq % rows != 0 {
                    return Err(err(format!(
                        "axial attention needs `attention.axial_rows` dividing `dims.seq` ({seq})"
                    )));
                }
                if mask.is_some() {
                    return Err(err(
                        "axial attention here is bidirectional: set `attention.mask = \"none\"`"
                            .into(),
                    ));
                }
                Mixer::Axial { rows }
            }
        }))
    }

    /// The MLA sizes of a layer's merged attention fields: `None` unless
    /// `kv_lora_rank` is set, an error when the MLA fields are inconsistent.
    fn mla(
        &self,
        a: &AttentionFields,
        heads: u64,
        kv_heads: u64,
        err: &dyn Fn(String) -> IrError,
    ) -> Result<Option<Mla>, IrError> {
        let size = |name: &str, v: Option<u64>| -> Result<Option<u64>, IrError> {
            match v {
                Some(0) => Err(err(format!("`attention.{name}` must be at least 1"))),
                Some(v) if v > MAX_DIM => {
                    Err(err(format!("`attention.{name}` = {v} is too large")))
                }
                v => Ok(v),
            }
        };
        let q_lora_rank = size("q_lora_rank", a.q_lora_rank)?;
        let dr = size("qk_rope_head_dim", a.qk_rope_head_dim)?;
        let dn = size("qk_nope_head_dim", a.qk_nope_head_dim)?;
        let dv = size("v_head_dim", a.v_head_dim)?;
        let Some(rank) = size("kv_lora_rank", a.kv_lora_rank)? else {
            let stray = [
                ("q_lora_rank", q_lora_rank),
                ("qk_rope_head_dim", dr),
                ("qk_nope_head_dim", dn),
                ("v_head_dim", dv),
            ];
            if let Some((name, _)) = stray.iter().find(|(_, v)| v.is_some()) {
                return Err(err(format!(
                    "`attention.{name}` is a multi-head latent attention (MLA) field: set `attention.kv_lora_rank` to use MLA, or remove it"
                )));
            }
            return Ok(None);
        };
        let required = |name: &str, v: Option<u64>| {
            v.ok_or_else(|| {
                err(format!(
                    "`attention.{name}` is required with `attention.kv_lora_rank` (multi-head latent attention)"
                ))
            })
        };
        let qk_nope_head_dim = required("qk_nope_head_dim", dn)?;
        let qk_rope_head_dim = required("qk_rope_head_dim", dr)?;
        let v_head_dim = required("v_head_dim", dv)?;
        if kv_heads != heads {
            return Err(err(format!(
                "multi-head latent attention (`attention.kv_lora_rank`) has one key/value head per query head: `attention.kv_heads` ({kv_heads}) must equal `attention.heads` ({heads}) or be unset"
            )));
        }
        if self.position != Position::Rope {
            // The variant names are the spec's spellings, lowercased.
            let p = format!("{:?}", self.position).to_lowercase();
            return Err(err(format!(
                "multi-head latent attention (`attention.kv_lora_rank`) needs `position = \"rope\"`, got {p:?}"
            )));
        }
        if qk_rope_head_dim % 2 != 0 {
            return Err(err(format!(
                "RoPE needs an even `attention.qk_rope_head_dim`, got {qk_rope_head_dim}"
            )));
        }
        if a.qkv_bias == Some(true) {
            return Err(err(
                "`attention.qkv_bias` is not supported with multi-head latent attention (`attention.kv_lora_rank`)".into(),
            ));
        }
        Ok(Some(Mla {
            kv_lora_rank: rank,
            q_lora_rank,
            qk_rope_head_dim,
            qk_nope_head_dim,
            v_head_dim,
        }))
    }
}

fn parse_score_modifier(text: Option<&str>) -> Result<ScoreModifier, String> {
    match text.map(str::trim) {
        None | Some("none") => Ok(ScoreModifier::None),
        Some(t) => match t.strip_prefix("softcap:") {
            Some(c) => match c.trim().parse::<f64>() {
                Ok(c) if c > 0.0 && c.is_finite() => Ok(ScoreModifier::Softcap(c)),
                _ => Err(format!("softcap needs a positive number, got {c:?}")),
            },
            None => Err(format!(
                "unknown modifier {t:?}; expected `none` or `softcap:C`"
            )),
        },
    }
}
