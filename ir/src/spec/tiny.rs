//! `--tiny`: shrink a real-size spec to a structurally identical small model.
//!
//! Kept: the layer pattern and kinds, arch, norm and position kinds, head/KV-group
//! ratios, MLA (latent ranks and head widths shrunk), the FFN width ratio, mask expressions (with the dimensions they use scaled
//! by the same factor as the sequence), biases and modifiers. Shrunk: every size.
//! Values the user pinned with `--set` are left as set.

use super::{AttentionFields, FfnFields, Spec};

/// Sizes of the tiny model.
const TINY_SEQ: u64 = 32;
const TINY_BATCH: u64 = 2;
const TINY_HEAD_DIM: u64 = 8;
const TINY_MAX_KV_HEADS: u64 = 2;
const TINY_VOCAB: u64 = 97;
const TINY_LAYERS: u64 = 2;
const TINY_EXPERTS: u64 = 8;
/// Multi-head latent attention: latent ranks and the per-head widths.
const TINY_LORA_RANK: u64 = 16;
const TINY_NOPE_HEAD_DIM: u64 = 8;
const TINY_ROPE_HEAD_DIM: u64 = 4;
const TINY_V_HEAD_DIM: u64 = 8;

impl Spec {
    pub(super) fn tiny(&self, pinned: &[String]) -> Spec {
        let free = |path: &str| !pinned.iter().any(|p| p == path);
        let mut t = self.clone();

        let old_seq = self.dims.get("seq").copied().unwrap_or(1);
        if free("dims.seq") {
            t.dims.insert("seq".into(), old_seq.min(TINY_SEQ));
        }
        if free("dims.batch") {
            let b = self.dims.get("batch").copied().unwrap_or(1);
            t.dims.insert("batch".into(), b.min(TINY_BATCH));
        }
        let new_seq = t.dims["seq"];
        // Windows, strides, sink counts: every dim a mask refers to scales with seq.
        for name in self.mask_dims() {
            if let (Some(&v), true) = (self.dims.get(&name), free(&format!("dims.{name}"))) {
                // At least 4 (or the dim itself): a block-causal mask's blocks stay blocks.
                let scaled = (v as f64 * new_seq as f64 / old_seq as f64).round() as u64;
                t.dims.insert(name, scaled.max(v.min(4)).max(1));
            }
        }

        // Width: keep the head/KV-group ratio, shrink head_dim, and scale d_model with
        // the attention width so d_model/(heads·head_dim) is unchanged.
        let (heads, kv, hd) = self.base_heads();
        let group = heads / kv.max(1);
        let tiny_kv = kv.min(TINY_MAX_KV_HEADS);
        let tiny_hd = hd.min(TINY_HEAD_DIM);
        let width_ratio = (tiny_kv * group * tiny_hd) as f64 / (heads * hd).max(1) as f64;
        if free("d_model") {
            t.d_model = ((self.d_model as f64 * width_ratio).round() as u64).max(1);
        }
        let d_ratio = t.d_model as f64 / self.d_model as f64;
        shrink_attention(&mut t.attention, pinned, "attention");
        if free("attention.head_dim") && t.attention.head_dim.is_none() {
            t.attention.head_dim = Some(tiny_hd);
        }
        shrink_ffn(&mut t.ffn, d_ratio, pinned, "ffn");
        for (name, kind) in t.kinds.iter_mut() {
            if let Some(a) = kind.attention.as_mut() {
                shrink_attention(a, pinned, &format!("kinds.{name}.attention"));
            }
            if let Some(f) = kind.ffn.as_mut() {
                shrink_ffn(f, d_ratio, pinned, &format!("kinds.{name}.ffn"));
            }
        }
        for (i, o) in t.overrides.iter_mut().enumerate() {
            if let Some(a) = o.attention.as_mut() {
                shrink_attention(a, pinned, &format!("override.{i}.attention"));
            }
            if let Some(f) = o.ffn.as_mut() {
                shrink_ffn(f, d_ratio, pinned, &format!("override.{i}.ffn"));
            }
        }
        let base = t.attention.clone();
        fit_mamba_heads(
            &mut t.attention,
            &AttentionFields::default(),
            t.d_model,
            "attention",
            pinned,
        );
        for (name, kind) in t.kinds.iter_mut() {
            if let Some(a) = kind.attention.as_mut() {
                let at = format!("kinds.{name}.attention");
                fit_mamba_heads(a, &base, t.d_model, &at, pinned);
            }
        }
        if free("vocab") {
            t.vocab = self.vocab.min(TINY_VOCAB);
        }
        t.tiny_diffusion(old_seq, pinned);
        if free("max_positions") {
            t.max_positions = self.max_positions.map(|m| m.min(2 * new_seq).max(new_seq));
        }
        t.tiny_vision(pinned);
        if free("layers") {
            // One full period of the pattern (at least two layers), so every kind runs.
            t.layers = self
                .layers
                .min((self.pattern.len() as u64).max(TINY_LAYERS));
            // Overrides are kept when their layer still exists.
            let n = t.layers;
            for o in t.overrides.iter_mut() {
                o.layers.retain(|&l| l < n);
            }
            t.overrides.retain(|o| !o.layers.is_empty());
        }
        t
    }

    fn mask_dims(&self) -> Vec<String> {
        let mut masks: Vec<&str> = self.attention.mask.iter().map(String::as_str).collect();
        for k in self.kinds.values() {
            masks.extend(k.attention.iter().filter_map(|a| a.mask.as_deref()));
        }
        for o in &self.overrides {
            masks.extend(o.attention.iter().filter_map(|a| a.mask.as_deref()));
        }
        let mut names = Vec::new();
        for m in masks {
            if let Ok(e) = crate::MaskExpr::parse(m) {
                for d in e.dim_names() {
                    if d != "seq" && !names.contains(&d) {
                        names.push(d);
                    }
                }
            }
        }
        names
    }

    fn base_heads(&self) -> (u64, u64, u64) {
        let heads = self.attention.heads.unwrap_or(1).max(1);
        let kv = self.attention.kv_heads.unwrap_or(heads).max(1);
        // MLA's attention width (into `wo`) is `heads × v_head_dim`.
        let hd = match (self.attention.kv_lora_rank, self.attention.v_head_dim) {
            (Some(_), Some(dv)) => dv,
            _ => self
                .attention
                .head_dim
                .unwrap_or((self.d_model / heads).max(1)),
        };
        (heads, kv, hd)
    }
}

fn shrink_attention(a: &mut AttentionFields, pinned: &[String], at: &str) {
    let free = |field: &str| !pinned.iter().any(|p| *p == format!("{at}.{field}"));
    if let Some(heads) = a.heads {
        let kv = a.kv_heads.unwrap_or(heads).max(1);
        let group = (heads / kv).max(1);
        let tiny_kv = kv.min(TINY_MAX_KV_HEADS);
        if free("heads") {
            a.heads = Some(tiny_kv * group);
        }
        if a.kv_heads.is_some() && free("kv_heads") {
            a.kv_heads = Some(tiny_kv);
        }
    } else if let Some(kv) = a.kv_heads.filter(|_| free("kv_heads")) {
        a.kv_heads = Some(kv.min(TINY_MAX_KV_HEADS));
    }
    if let Some(d) = a.head_dim.filter(|_| free("head_dim")) {
        a.head_dim = Some(d.min(TINY_HEAD_DIM));
    }
    let shrink = |v: &mut Option<u64>, field: &str, tiny: u64| {
        if free(field) {
            *v = v.map(|n| n.min(tiny));
        }
    };
    shrink(&mut a.kv_lora_rank, "kv_lora_rank", TINY_LORA_RANK);
    shrink(&mut a.q_lora_rank, "q_lora_rank", TINY_LORA_RANK);
    shrink(
        &mut a.qk_nope_head_dim,
        "qk_nope_head_dim",
        TINY_NOPE_HEAD_DIM,
    );
    // Even stays even: RoPE pairs the rotary width.
    shrink(
        &mut a.qk_rope_head_dim,
        "qk_rope_head_dim",
        TINY_ROPE_HEAD_DIM,
    );
    shrink(&mut a.v_head_dim, "v_head_dim", TINY_V_HEAD_DIM);
    // Two MoBA blocks of the tiny sequence: one with an earlier block to choose.
    shrink(&mut a.moba_block, "moba_block", TINY_SEQ / 2);
    // Four chunks, four buckets: sorting and the chunk before still matter.
    shrink(&mut a.lsh_chunk, "lsh_chunk", TINY_SEQ / 4);
    shrink(&mut a.lsh_buckets, "lsh_buckets", 4);
    // Four clusters of a quarter of the tiny sequence each.
    shrink(&mut a.routing_clusters, "routing_clusters", 4);
    shrink(&mut a.routing_window, "routing_window", TINY_SEQ / 4);
    // Linear mixers: fewer features, projected rows, state and gate rank; a 4 × 8
    // axial grid.
    shrink(&mut a.features, "features", 16);
    shrink(&mut a.linformer_k, "linformer_k", TINY_SEQ / 4);
    shrink(&mut a.state_size, "state_size", 16);
    shrink(&mut a.dt_rank, "dt_rank", 4);
    shrink(&mut a.gate_rank, "gate_rank", 4);
    shrink(&mut a.axial_rows, "axial_rows", TINY_SEQ / 8);
}

/// Mamba2 ties its heads to the model width (`heads × head_dim = expand · d_model`):
/// after shrinking, the heads of a Mamba2 section are recomputed from the tiny width.
fn fit_mamba_heads(
    a: &mut AttentionFields,
    base: &AttentionFields,
    d_model: u64,
    at: &str,
    pinned: &[String],
) {
    let kind = a.kind.as_deref().or(base.kind.as_deref());
    if kind != Some("mamba2") || pinned.iter().any(|p| *p == format!("{at}.heads")) {
        return;
    }
    let head_dim = a.head_dim.or(base.head_dim).unwrap_or(TINY_HEAD_DIM);
    let expand = a.expand.or(base.expand).unwrap_or(2);
    let heads = (expand * d_model / head_dim.max(1)).max(1);
    a.heads = Some(heads);
    a.kv_heads = None;
    // The groups of B and C must still divide the heads.
    if let Some(g) = a.groups.or(base.groups) {
        let (mut x, mut y) = (g.max(1), heads);
        while y != 0 {
            (x, y) = (y, x % y);
        }
        if x != g && !pinned.iter().any(|p| *p == format!("{at}.groups")) {
            a.groups = Some(x);
        }
    }
}

fn shrink_ffn(f: &mut FfnFields, d_ratio: f64, pinned: &[String], at: &str) {
    let free = |field: &str| !pinned.iter().any(|p| *p == format!("{at}.{field}"));
    if free("hidden") {
        f.hidden = f
            .hidden
            .map(|h| ((h as f64 * d_ratio).round() as u64).max(4));
    }
    if free("shared_hidden") {
        f.shared_hidden = f
            .shared_hidden
            .map(|h| ((h as f64 * d_ratio).round() as u64).max(4));
    }
    // Eight experts at most, a token routed to at most half of them: the gate stays
    // sparse, so the tiny model exercises the same dispatch.
    if free("experts") {
        f.experts = f.experts.map(|e| e.min(TINY_EXPERTS));
    }
    if free("top_k") {
        let experts = f.experts.unwrap_or(TINY_EXPERTS);
        f.top_k = f.top_k.map(|k| k.min((experts / 2).max(1)));
    }
}
