//! Hugging Face `transformers` tensor names → attnc params, per family.
//!
//! PyTorch's `nn.Linear` stores `[out, in]`; attnc's matmul weights are `[in, out]`,
//! so most weights are transposed. The exceptions and special cases are each noted
//! where they are mapped: GPT-2's `Conv1D` (already `[in, out]`, and q, k, v fused in
//! one `c_attn`), DeepSeek's fused `kv_a_proj_with_mqa` and per-head `kv_b_proj`
//! (split by rows) and its interleaved rotary layout (permuted to rotate-half), and
//! experts stored one module each (stacked).

use super::Recipe;
use attnc_ir::spec::{LayerConfig, Spec};
use std::collections::BTreeSet;

/// A naming family: the architectures that share module names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `model.layers.N.self_attn.q_proj`, ...: Llama, Mistral, Qwen2, Mixtral,
    /// Qwen2-MoE, DeepSeek-V2/V3.
    Llama,
    /// `transformer.h.N.attn.c_attn`, ...: GPT-2.
    Gpt2,
    /// `encoder.layer.N.attention.self.query`, ...: BERT.
    Bert,
    /// `vit.encoder.layer.N.attention.attention.query`, ...: ViT.
    Vit,
    /// `backbone.layers.N.mixer.in_proj`, ...: Mamba2.
    Mamba2,
    /// `model.layers.N.mamba.in_proj`, `model.layers.N.feed_forward`, ...: Jamba.
    Jamba,
}

impl Family {
    pub const NAMES: &'static [&'static str] = &[
        "llama-style (model.layers.N.self_attn)",
        "gpt2",
        "bert",
        "vit",
        "mamba2 (backbone.layers.N.mixer)",
        "jamba (model.layers.N.mamba)",
    ];

    pub fn detect(stored: &BTreeSet<&str>) -> Option<Family> {
        // Jamba shares `model.layers.` with the Llama family: its Mamba and
        // feed-forward modules tell it apart.
        if stored.iter().any(|n| {
            n.starts_with("model.layers.")
                && (n.contains(".mamba.") || n.contains(".feed_forward."))
        }) {
            return Some(Family::Jamba);
        }
        if stored
            .iter()
            .any(|n| n.starts_with("backbone.layers.") || *n == "backbone.embeddings.weight")
        {
            return Some(Family::Mamba2);
        }
        if stored
            .iter()
            .any(|n| n.starts_with("model.layers.") || *n == "model.embed_tokens.weight")
        {
            return Some(Family::Llama);
        }
        if stored.iter().any(|n| n.ends_with("wte.weight")) {
            return Some(Family::Gpt2);
        }
        if stored.iter().any(|n| n.starts_with("vit.")) {
            return Some(Family::Vit);
        }
        if stored
            .iter()
            .any(|n| n.ends_with("embeddings.word_embeddings.weight"))
        {
            return Some(Family::Bert);
        }
        None
    }
}

type R<T> = Result<T, String>;

/// What makes attnc param `name` of shape `shape`.
pub fn recipe(
    family: Family,
    spec: &Spec,
    stored: &BTreeSet<&str>,
    name: &str,
    shape: &[usize],
) -> R<Recipe> {
    let m = Mapper {
        spec,
        stored,
        shape,
    };
    let layer = name
        .strip_prefix("layers.")
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(i, rest)| Some((i.parse::<u64>().ok()?, rest)));
    let found = match (family, layer) {
        (Family::Llama, None) => m.llama_global(name),
        (Family::Llama, Some((i, rest))) => {
            let cfg = spec.layer_config(i).map_err(|e| e.to_string())?;
            m.llama_layer(&cfg, &format!("model.layers.{i}"), rest)?
        }
        (Family::Gpt2, None) => m.gpt2_global(name),
        (Family::Gpt2, Some((i, rest))) => m.gpt2_layer(i, rest)?,
        (Family::Bert, None) => m.bert_global(name),
        (Family::Bert, Some((i, rest))) => m.bert_layer(i, rest),
        (Family::Vit, None) => m.vit_global(name),
        (Family::Vit, Some((i, rest))) => m.vit_layer(i, rest),
        (Family::Mamba2, None) => m.mamba2_global(name),
        (Family::Jamba, None) => m.jamba_global(name),
        (Family::Mamba2 | Family::Jamba, Some((i, rest))) => {
            let cfg = spec.layer_config(i).map_err(|e| e.to_string())?;
            if family == Family::Mamba2 {
                m.mamba2_layer(&cfg, i, rest)?
            } else {
                m.jamba_layer(&cfg, i, rest)?
            }
        }
    };
    found.ok_or_else(|| format!("no {family:?}-family tensor is mapped to it"))
}

/// Stored tensors no param reads that are not weights of the network, with why.
pub fn harmless(family: Family, spec: Option<&Spec>, name: &str) -> Option<&'static str> {
    if name.ends_with("rotary_emb.inv_freq") {
        return Some("RoPE frequencies, a buffer recomputed from the config");
    }
    match family {
        Family::Gpt2 if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") => {
            Some("GPT-2's causal-mask buffer")
        }
        // Some checkpoints store the tied head as well as the table it is tied to.
        Family::Llama | Family::Gpt2 | Family::Mamba2 | Family::Jamba
            if name == "lm_head.weight" && spec.is_some_and(|s| s.tie_embeddings) =>
        {
            Some("the head is tied to the token table (tie_word_embeddings)")
        }
        Family::Bert | Family::Vit
            if name.starts_with("pooler.")
                || name.starts_with("bert.pooler.")
                || name.starts_with("vit.pooler.")
                || name.starts_with("cls.") =>
        {
            Some("a pooler or pre-training head the model's output does not go through")
        }
        Family::Bert if name.ends_with("embeddings.position_ids") => {
            Some("the position ids 0..n, a buffer")
        }
        _ => None,
    }
}

struct Mapper<'a> {
    spec: &'a Spec,
    stored: &'a BTreeSet<&'a str>,
    /// The param's shape.
    shape: &'a [usize],
}

impl Mapper<'_> {
    fn whole(&self, name: impl Into<String>) -> Option<Recipe> {
        Some(Recipe::Whole {
            name: name.into(),
            shape: self.shape.to_vec(),
        })
    }

    /// A `Linear`'s `[out, in]` weight for a `[in, out]` param.
    fn linear(&self, name: impl Into<String>) -> Option<Recipe> {
        let (i, o) = self.matrix()?;
        Some(Recipe::transposed(name, o, i))
    }

    fn matrix(&self) -> Option<(usize, usize)> {
        match self.shape {
            [i, o] => Some((*i, *o)),
            _ => None,
        }
    }

    /// The first of `names` the checkpoint has (else the first, to be reported missing).
    fn first<'n>(&self, names: &[&'n str]) -> &'n str {
        names
            .iter()
            .find(|n| self.stored.contains(**n))
            .unwrap_or(&names[0])
    }

    fn llama_global(&self, name: &str) -> Option<Recipe> {
        match name {
            "embed.tokens" => self.whole("model.embed_tokens.weight"),
            "final_norm.weight" => self.whole("model.norm.weight"),
            "lm_head" => self.linear("lm_head.weight"),
            _ => None,
        }
    }

    fn llama_layer(&self, cfg: &LayerConfig, p: &str, rest: &str) -> R<Option<Recipe>> {
        let a = format!("{p}.self_attn");
        if let Some(m) = &cfg.attention.mla {
            if let Some(r) = self.mla(cfg.attention.heads, m, &a, rest)? {
                return Ok(Some(r));
            }
        }
        // A mixture's module: Mixtral's `block_sparse_moe`, the others' `mlp`.
        let (sparse, plain) = (
            format!("{p}.block_sparse_moe.gate.weight"),
            format!("{p}.mlp.gate.weight"),
        );
        let moe = self.first(&[&sparse, &plain]);
        let moe = moe.strip_suffix(".gate.weight").unwrap_or(moe).to_string();
        let mlp = format!("{p}.mlp");
        Ok(match rest {
            "attn_norm.weight" => self.whole(format!("{p}.input_layernorm.weight")),
            "ffn_norm.weight" => self.whole(format!("{p}.post_attention_layernorm.weight")),
            "attn.wq" => self.linear(format!("{a}.q_proj.weight")),
            "attn.wk" => self.linear(format!("{a}.k_proj.weight")),
            "attn.wv" => self.linear(format!("{a}.v_proj.weight")),
            "attn.wo" => self.linear(format!("{a}.o_proj.weight")),
            "attn.bq" => self.whole(format!("{a}.q_proj.bias")),
            "attn.bk" => self.whole(format!("{a}.k_proj.bias")),
            "attn.bv" => self.whole(format!("{a}.v_proj.bias")),
            "attn.bo" => self.whole(format!("{a}.o_proj.bias")),
            "ffn.w_gate" => self.linear(format!("{mlp}.gate_proj.weight")),
            "ffn.w_up" => self.linear(format!("{mlp}.up_proj.weight")),
            "ffn.w_down" => self.linear(format!("{mlp}.down_proj.weight")),
            "ffn.b_gate" => self.whole(format!("{mlp}.gate_proj.bias")),
            "ffn.b_up" => self.whole(format!("{mlp}.up_proj.bias")),
            "ffn.b_down" => self.whole(format!("{mlp}.down_proj.bias")),
            "ffn.router" => self.linear(format!("{moe}.gate.weight")),
            "ffn.experts.w_gate" => self.experts(&moe, &["gate_proj", "w1"]),
            "ffn.experts.w_up" => self.experts(&moe, &["up_proj", "w3"]),
            "ffn.experts.w_down" => self.experts(&moe, &["down_proj", "w2"]),
            _ => match rest.strip_prefix("ffn.shared.") {
                // Qwen2-MoE's `shared_expert` (+ its sigmoid gate), DeepSeek's
                // `shared_experts` (one MLP for all of them).
                Some("gate") => self.linear(format!("{mlp}.shared_expert_gate.weight")),
                Some(w) => {
                    let proj = match w {
                        "w_gate" => "gate_proj",
                        "w_up" => "up_proj",
                        "w_down" => "down_proj",
                        _ => return Ok(None),
                    };
                    let one = format!("{mlp}.shared_expert.{proj}.weight");
                    let many = format!("{mlp}.shared_experts.{proj}.weight");
                    self.linear(self.first(&[&one, &many]).to_string())
                }
                None => None,
            },
        })
    }

    /// `[E, in, out]` from `E` stored `[out, in]` experts named `{moe}.experts.e.{proj}`
    /// (the first naming of `projs` the checkpoint uses).
    fn experts(&self, moe: &str, projs: &[&str]) -> Option<Recipe> {
        let [e, i, o] = self.shape else { return None };
        let candidates: Vec<String> = projs
            .iter()
            .map(|p| format!("{moe}.experts.0.{p}.weight"))
            .collect();
        let refs: Vec<&str> = candidates.iter().map(String::as_str).collect();
        let chosen = self.first(&refs);
        let proj = projs[refs.iter().position(|c| *c == chosen).unwrap_or(0)];
        Some(Recipe::Stack(
            (0..*e)
                .map(|j| Recipe::transposed(format!("{moe}.experts.{j}.{proj}.weight"), *o, *i))
                .collect(),
        ))
    }

    /// DeepSeek's MLA. Its rotary halves are interleaved (`x0, y0, x1, y1, ...`;
    /// modeling_deepseek.py permutes them to rotate-half before rotating): attnc's
    /// rope is rotate-half, so the rotary output rows are permuted here instead.
    fn mla(&self, heads: u64, m: &attnc_ir::spec::Mla, a: &str, rest: &str) -> R<Option<Recipe>> {
        let h = heads as usize;
        let (dn, dr, dv) = (
            m.qk_nope_head_dim as usize,
            m.qk_rope_head_dim as usize,
            m.v_head_dim as usize,
        );
        let r = m.kv_lora_rank as usize;
        match rest {
            "attn.q_norm.weight" => return Ok(self.whole(format!("{a}.q_a_layernorm.weight"))),
            "attn.kv_norm.weight" => return Ok(self.whole(format!("{a}.kv_a_layernorm.weight"))),
            _ => {}
        }
        let Some((i, o)) = self.matrix() else {
            return Ok(None);
        };
        let rope_order = |base: usize| (0..dr).map(move |j| base + interleaved(j, dr));
        // Query rows, head by head: dn non-rotary rows, then the rotary ones permuted.
        let q_rows = || -> Vec<usize> {
            (0..h)
                .flat_map(|hh| {
                    let base = hh * (dn + dr);
                    (base..base + dn).chain(rope_order(base + dn))
                })
                .collect()
        };
        let select = |name: String, rows: usize, cols: usize, indices: Vec<usize>| Recipe::Select {
            name,
            shape: vec![rows, cols],
            axis: 0,
            indices,
            transpose: true,
        };
        Ok(Some(match rest {
            "attn.wq" => select(format!("{a}.q_proj.weight"), h * (dn + dr), i, q_rows()),
            "attn.wq_a" => Recipe::transposed(format!("{a}.q_a_proj.weight"), o, i),
            "attn.wq_b" => select(format!("{a}.q_b_proj.weight"), h * (dn + dr), i, q_rows()),
            // kv_a_proj_with_mqa: [r + dr, d], the latent's rows, then the shared
            // rotary key's.
            "attn.wkv_a" => select(
                format!("{a}.kv_a_proj_with_mqa.weight"),
                r + dr,
                i,
                (0..r).collect(),
            ),
            "attn.wk_rope" => select(
                format!("{a}.kv_a_proj_with_mqa.weight"),
                r + dr,
                i,
                rope_order(r).collect(),
            ),
            // kv_b_proj: [heads·(dn + dv), r], per head its key rows then value rows.
            "attn.wk_b" => select(
                format!("{a}.kv_b_proj.weight"),
                h * (dn + dv),
                r,
                (0..h)
                    .flat_map(|hh| hh * (dn + dv)..hh * (dn + dv) + dn)
                    .collect(),
            ),
            "attn.wv_b" => select(
                format!("{a}.kv_b_proj.weight"),
                h * (dn + dv),
                r,
                (0..h)
                    .flat_map(|hh| hh * (dn + dv) + dn..(hh + 1) * (dn + dv))
                    .collect(),
            ),
            _ => return Ok(None),
        }))
    }

    fn gpt2_prefix(&self) -> &'static str {
        if self.stored.iter().any(|n| n.starts_with("transformer.")) {
            "transformer."
        } else {
            ""
        }
    }

    fn gpt2_global(&self, name: &str) -> Option<Recipe> {
        let t = self.gpt2_prefix();
        match name {
            "embed.tokens" => self.whole(format!("{t}wte.weight")),
            "embed.positions" => self.whole(format!("{t}wpe.weight")),
            "final_norm.weight" => self.whole(format!("{t}ln_f.weight")),
            "final_norm.bias" => self.whole(format!("{t}ln_f.bias")),
            "lm_head" => self.linear("lm_head.weight"),
            _ => None,
        }
    }

    /// GPT-2's `Conv1D` stores `[in, out]` (no transpose); `c_attn` is q, k and v side
    /// by side, `[d, 3d]`, split by columns.
    fn gpt2_layer(&self, i: u64, rest: &str) -> R<Option<Recipe>> {
        let p = format!("{}h.{i}", self.gpt2_prefix());
        let d = self.spec.d_model as usize;
        let third = |k: usize, bias: bool| {
            let name = format!("{p}.attn.c_attn.{}", if bias { "bias" } else { "weight" });
            let (shape, axis) = if bias {
                (vec![3 * d], 0)
            } else {
                (vec![d, 3 * d], 1)
            };
            Recipe::Select {
                name,
                shape,
                axis,
                indices: (k * d..(k + 1) * d).collect(),
                transpose: false,
            }
        };
        Ok(match rest {
            "attn_norm.weight" => self.whole(format!("{p}.ln_1.weight")),
            "attn_norm.bias" => self.whole(format!("{p}.ln_1.bias")),
            "ffn_norm.weight" => self.whole(format!("{p}.ln_2.weight")),
            "ffn_norm.bias" => self.whole(format!("{p}.ln_2.bias")),
            "attn.wq" => Some(third(0, false)),
            "attn.wk" => Some(third(1, false)),
            "attn.wv" => Some(third(2, false)),
            "attn.bq" => Some(third(0, true)),
            "attn.bk" => Some(third(1, true)),
            "attn.bv" => Some(third(2, true)),
            "attn.wo" => self.whole(format!("{p}.attn.c_proj.weight")),
            "attn.bo" => self.whole(format!("{p}.attn.c_proj.bias")),
            "ffn.w_up" => self.whole(format!("{p}.mlp.c_fc.weight")),
            "ffn.b_up" => self.whole(format!("{p}.mlp.c_fc.bias")),
            "ffn.w_down" => self.whole(format!("{p}.mlp.c_proj.weight")),
            "ffn.b_down" => self.whole(format!("{p}.mlp.c_proj.bias")),
            _ => None,
        })
    }
}

impl Mapper<'_> {
    fn bert_prefix(&self) -> &'static str {
        if self.stored.iter().any(|n| n.starts_with("bert.")) {
            "bert."
        } else {
            ""
        }
    }

    /// A LayerNorm's `weight` / `bias` (`gamma` / `beta` in older checkpoints).
    fn layer_norm(&self, module: &str, part: &str) -> Option<Recipe> {
        let old = if part == "weight" { "gamma" } else { "beta" };
        let (new, old) = (format!("{module}.{part}"), format!("{module}.{old}"));
        self.whole(self.first(&[&new, &old]).to_string())
    }

    fn bert_global(&self, name: &str) -> Option<Recipe> {
        let e = format!("{}embeddings", self.bert_prefix());
        match name {
            "embed.tokens" => self.whole(format!("{e}.word_embeddings.weight")),
            "embed.positions" => self.whole(format!("{e}.position_embeddings.weight")),
            "embed.token_types" => self.whole(format!("{e}.token_type_embeddings.weight")),
            "embed.norm.weight" => self.layer_norm(&format!("{e}.LayerNorm"), "weight"),
            "embed.norm.bias" => self.layer_norm(&format!("{e}.LayerNorm"), "bias"),
            _ => None,
        }
    }

    /// BERT is post-norm: `attn_norm` follows the attention's residual
    /// (`attention.output.LayerNorm`), `ffn_norm` the MLP's (`output.LayerNorm`).
    fn bert_layer(&self, i: u64, rest: &str) -> Option<Recipe> {
        let p = format!("{}encoder.layer.{i}", self.bert_prefix());
        self.encoder_layer(
            rest,
            &format!("{p}.attention.self"),
            &format!("{p}.attention.output.dense"),
            &format!("{p}.attention.output.LayerNorm"),
            &format!("{p}.intermediate.dense"),
            &format!("{p}.output.dense"),
            &format!("{p}.output.LayerNorm"),
        )
    }

    /// One BERT-style encoder layer's params from its modules' names.
    #[allow(clippy::too_many_arguments)]
    fn encoder_layer(
        &self,
        rest: &str,
        qkv: &str,
        out: &str,
        attn_norm: &str,
        up: &str,
        down: &str,
        ffn_norm: &str,
    ) -> Option<Recipe> {
        match rest {
            "attn.wq" => self.linear(format!("{qkv}.query.weight")),
            "attn.wk" => self.linear(format!("{qkv}.key.weight")),
            "attn.wv" => self.linear(format!("{qkv}.value.weight")),
            "attn.bq" => self.whole(format!("{qkv}.query.bias")),
            "attn.bk" => self.whole(format!("{qkv}.key.bias")),
            "attn.bv" => self.whole(format!("{qkv}.value.bias")),
            "attn.wo" => self.linear(format!("{out}.weight")),
            "attn.bo" => self.whole(format!("{out}.bias")),
            "attn_norm.weight" => self.layer_norm(attn_norm, "weight"),
            "attn_norm.bias" => self.layer_norm(attn_norm, "bias"),
            "ffn.w_up" => self.linear(format!("{up}.weight")),
            "ffn.b_up" => self.whole(format!("{up}.bias")),
            "ffn.w_down" => self.linear(format!("{down}.weight")),
            "ffn.b_down" => self.whole(format!("{down}.bias")),
            "ffn_norm.weight" => self.layer_norm(ffn_norm, "weight"),
            "ffn_norm.bias" => self.layer_norm(ffn_norm, "bias"),
            _ => None,
        }
    }

    fn vit_global(&self, name: &str) -> Option<Recipe> {
        let e = "vit.embeddings";
        match name {
            // The patch convolution's `[d, c, p, p]` kernel, read as `[d, c·p·p]`
            // (attnc flattens a patch in the same (c, i, j) order) and transposed.
            "embed.patch.weight" => {
                let (i, o) = self.matrix()?;
                Some(Recipe::transposed(
                    format!("{e}.patch_embeddings.projection.weight"),
                    o,
                    i,
                ))
            }
            "embed.patch.bias" => self.whole(format!("{e}.patch_embeddings.projection.bias")),
            "embed.class_token" => self.whole(format!("{e}.cls_token")),
            "embed.positions" => self.whole(format!("{e}.position_embeddings")),
            "final_norm.weight" => self.whole("vit.layernorm.weight"),
            "final_norm.bias" => self.whole("vit.layernorm.bias"),
            "head.weight" => self.linear("classifier.weight"),
            "head.bias" => self.whole("classifier.bias"),
            _ => None,
        }
    }

    /// ViT is pre-norm: `layernorm_before` the attention, `layernorm_after` it.
    fn vit_layer(&self, i: u64, rest: &str) -> Option<Recipe> {
        let p = format!("vit.encoder.layer.{i}");
        self.encoder_layer(
            rest,
            &format!("{p}.attention.attention"),
            &format!("{p}.attention.output.dense"),
            &format!("{p}.layernorm_before"),
            &format!("{p}.intermediate.dense"),
            &format!("{p}.output.dense"),
            &format!("{p}.layernorm_after"),
        )
    }
}

/// The stored (interleaved) index of rotate-half feature `j` of a width-`d` rotary
/// part: the first half takes the even features, the second the odd.
fn interleaved(j: usize, d: usize) -> usize {
    if j < d / 2 {
        2 * j
    } else {
        2 * (j - d / 2) + 1
    }
}

/// Rows `range` of a stored `[rows, cols]` matrix (a vector when `cols` is 0),
/// transposed when `transpose` (a `Linear`'s `[out, in]` to attnc's `[in, out]`).
fn rows(
    name: String,
    rows: usize,
    cols: usize,
    range: std::ops::Range<usize>,
    transpose: bool,
) -> Recipe {
    Recipe::Select {
        name,
        shape: if cols == 0 {
            vec![rows]
        } else {
            vec![rows, cols]
        },
        axis: 0,
        indices: range.collect(),
        transpose,
    }
}

/// Mamba2 and Jamba. Each fuses projections PyTorch applies at once: Mamba2's
/// `in_proj` is `[z, x, B, C, Δ]` by rows (`Mamba2Mixer`'s split `[d_inner,
/// conv_dim, heads]`, `conv_dim = [x, B, C]`), and its depthwise `conv1d` (`[conv_dim,
/// 1, K]`, read as `[conv_dim, K]`) runs over `[x, B, C]`: each part's rows become one
/// attnc param, the kernel transposed to `[K, channels]`. Jamba's `in_proj` is `[x,
/// z]` (`chunk(2)`), its `x_proj` `[Δ, B, C]`.
impl Mapper<'_> {
    fn mamba2_global(&self, name: &str) -> Option<Recipe> {
        match name {
            "embed.tokens" => self.whole("backbone.embeddings.weight"),
            "final_norm.weight" => self.whole("backbone.norm_f.weight"),
            "lm_head" => self.linear("lm_head.weight"),
            _ => None,
        }
    }

    fn mamba2_layer(&self, cfg: &LayerConfig, i: u64, rest: &str) -> R<Option<Recipe>> {
        let p = format!("backbone.layers.{i}");
        let m = format!("{p}.mixer");
        if rest == "attn_norm.weight" {
            return Ok(self.whole(format!("{p}.norm.weight")));
        }
        let Some(attnc_ir::spec::Mixer::Mamba2 {
            state,
            conv,
            groups,
            ..
        }) = cfg.attention.mixer
        else {
            return Ok(None);
        };
        let d = self.spec.d_model as usize;
        let heads = cfg.attention.heads as usize;
        let inner = heads * cfg.attention.head_dim as usize;
        let gn = (groups * state) as usize;
        let conv_dim = inner + 2 * gn;
        let proj = inner + conv_dim + heads;
        let in_proj =
            |r: std::ops::Range<usize>| Some(rows(format!("{m}.in_proj.weight"), proj, d, r, true));
        let k = conv.map_or(0, |(k, _)| k as usize);
        let kernel = |r: std::ops::Range<usize>| {
            Some(rows(format!("{m}.conv1d.weight"), conv_dim, k, r, true))
        };
        let bias = |r: std::ops::Range<usize>| {
            Some(rows(format!("{m}.conv1d.bias"), conv_dim, 0, r, false))
        };
        let (x, b, c) = (0..inner, inner..inner + gn, inner + gn..conv_dim);
        Ok(match rest.strip_prefix("attn.") {
            Some("w_z") => in_proj(0..inner),
            Some("w_x") => in_proj(inner..2 * inner),
            Some("w_b") => in_proj(2 * inner..2 * inner + gn),
            Some("w_c") => in_proj(2 * inner + gn..inner + conv_dim),
            Some("w_dt") => in_proj(inner + conv_dim..proj),
            Some("conv_x") => kernel(x),
            Some("conv_b") => kernel(b),
            Some("conv_c") => kernel(c),
            Some("conv_x_bias") => bias(x),
            Some("conv_b_bias") => bias(b),
            Some("conv_c_bias") => bias(c),
            Some("dt_bias") => self.whole(format!("{m}.dt_bias")),
            Some("A_log") => self.whole(format!("{m}.A_log")),
            Some("D") => self.whole(format!("{m}.D")),
            Some("norm.weight") => self.whole(format!("{m}.norm.weight")),
            Some("w_out") => self.linear(format!("{m}.out_proj.weight")),
            _ => None,
        })
    }

    fn jamba_global(&self, name: &str) -> Option<Recipe> {
        match name {
            "embed.tokens" => self.whole("model.embed_tokens.weight"),
            "final_norm.weight" => self.whole("model.final_layernorm.weight"),
            "lm_head" => self.linear("lm_head.weight"),
            _ => None,
        }
    }

    fn jamba_layer(&self, cfg: &LayerConfig, i: u64, rest: &str) -> R<Option<Recipe>> {
        let p = format!("model.layers.{i}");
        let (a, f) = (format!("{p}.self_attn"), format!("{p}.feed_forward"));
        let found = match rest {
            "attn_norm.weight" => self.whole(format!("{p}.input_layernorm.weight")),
            "ffn_norm.weight" => self.whole(format!("{p}.pre_ff_layernorm.weight")),
            "attn.wq" => self.linear(format!("{a}.q_proj.weight")),
            "attn.wk" => self.linear(format!("{a}.k_proj.weight")),
            "attn.wv" => self.linear(format!("{a}.v_proj.weight")),
            "attn.wo" => self.linear(format!("{a}.o_proj.weight")),
            "ffn.w_gate" => self.linear(format!("{f}.gate_proj.weight")),
            "ffn.w_up" => self.linear(format!("{f}.up_proj.weight")),
            "ffn.w_down" => self.linear(format!("{f}.down_proj.weight")),
            "ffn.router" => self.linear(format!("{f}.router.weight")),
            "ffn.experts.w_gate" => self.experts(&f, &["gate_proj"]),
            "ffn.experts.w_up" => self.experts(&f, &["up_proj"]),
            "ffn.experts.w_down" => self.experts(&f, &["down_proj"]),
            _ => None,
        };
        if found.is_some() {
            return Ok(found);
        }
        let Some(attnc_ir::spec::Mixer::Mamba {
            state,
            expand,
            conv,
            dt_rank,
            ..
        }) = cfg.attention.mixer
        else {
            return Ok(None);
        };
        let m = format!("{p}.mamba");
        let d = self.spec.d_model as usize;
        let inner = (expand * self.spec.d_model) as usize;
        let (n, r) = (state as usize, dt_rank as usize);
        let x_proj = |range: std::ops::Range<usize>| {
            Some(rows(
                format!("{m}.x_proj.weight"),
                r + 2 * n,
                inner,
                range,
                true,
            ))
        };
        Ok(match rest.strip_prefix("attn.") {
            Some("w_x") => Some(rows(
                format!("{m}.in_proj.weight"),
                2 * inner,
                d,
                0..inner,
                true,
            )),
            Some("w_z") => Some(rows(
                format!("{m}.in_proj.weight"),
                2 * inner,
                d,
                inner..2 * inner,
                true,
            )),
            Some("conv_x") => Some(Recipe::transposed(
                format!("{m}.conv1d.weight"),
                inner,
                conv as usize,
            )),
            Some("conv_x_bias") => self.whole(format!("{m}.conv1d.bias")),
            Some("w_dt_in") => x_proj(0..r),
            Some("w_b") => x_proj(r..r + n),
            Some("w_c") => x_proj(r + n..r + 2 * n),
            Some("dt_norm.weight") => self.whole(format!("{m}.dt_layernorm.weight")),
            Some("b_norm.weight") => self.whole(format!("{m}.b_layernorm.weight")),
            Some("c_norm.weight") => self.whole(format!("{m}.c_layernorm.weight")),
            Some("w_dt") => self.linear(format!("{m}.dt_proj.weight")),
            Some("dt_bias") => self.whole(format!("{m}.dt_proj.bias")),
            Some("A_log") => self.whole(format!("{m}.A_log")),
            Some("D") => self.whole(format!("{m}.D")),
            Some("w_out") => self.linear(format!("{m}.out_proj.weight")),
            _ => None,
        })
    }
}
