//! `[diffusion]`: a masked-diffusion language model (LLaDA, Nie et al. 2025; Block
//! Diffusion, Arriola et al. 2025). The network is the spec's transformer — token ids
//! in, logits out, usually bidirectional (`mask = "none"`) or block-causal — and
//! this section describes how it generates: the last `gen_length` positions start as
//! `mask_token`, and `steps` denoising passes unmask them, `block_length` positions
//! at a time from left to right (semi-autoregressive blocks; one block when
//! `block_length = gen_length`), keeping in each step the predictions the model is
//! most confident of (`remasking = "low_confidence"`) or random ones (`"random"`).
//! The sampler itself is the driver's (`attnc run --diffusion-steps T`).

use super::Spec;
use crate::IrError;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remasking {
    /// Keep the predictions with the highest probability (LLaDA's default).
    #[default]
    LowConfidence,
    /// Keep predictions at random positions (seeded).
    Random,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionFields {
    /// The id of the mask token (`[MASK]`), below `vocab`.
    pub mask_token: u64,
    /// Positions generated, at the end of the sequence (default: half of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gen_length: Option<u64>,
    /// Positions unmasked per semi-autoregressive block (default: `gen_length`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_length: Option<u64>,
    /// Denoising steps when `run` is not given `--diffusion-steps` (default:
    /// `gen_length`, one token per step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    #[serde(default)]
    pub remasking: Remasking,
}

pub const DIFFUSION_FIELDS: &[&str] = &[
    "mask_token",
    "gen_length",
    "block_length",
    "steps",
    "remasking",
];

/// The resolved sampler settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Diffusion {
    pub mask_token: u64,
    pub gen_length: u64,
    pub block_length: u64,
    pub steps: u64,
    pub remasking: Remasking,
}

impl Spec {
    /// The sampler settings, checked against the sequence and vocabulary; `None`
    /// without a `[diffusion]` section.
    pub fn diffusion(&self) -> Result<Option<Diffusion>, IrError> {
        let Some(f) = &self.diffusion else {
            return Ok(None);
        };
        let fail = |message: String| {
            Err(IrError::Spec {
                layer: None,
                message,
            })
        };
        let seq = self.dim("seq")?;
        if f.mask_token >= self.vocab {
            return fail(format!(
                "`diffusion.mask_token` = {} is not a token id below `vocab` = {}",
                f.mask_token, self.vocab
            ));
        }
        let gen_length = f.gen_length.unwrap_or((seq / 2).max(1));
        if gen_length == 0 || gen_length > seq {
            return fail(format!(
                "`diffusion.gen_length` = {gen_length} must be between 1 and `dims.seq` = {seq}"
            ));
        }
        let block_length = f.block_length.unwrap_or(gen_length);
        if block_length == 0 || !gen_length.is_multiple_of(block_length) {
            return fail(format!(
                "`diffusion.block_length` = {block_length} must divide `diffusion.gen_length` = {gen_length}"
            ));
        }
        let blocks = gen_length / block_length;
        let steps = f.steps.unwrap_or(gen_length);
        if let Err(message) = check_steps(steps, blocks, "`diffusion.steps`") {
            return fail(message);
        }
        Ok(Some(Diffusion {
            mask_token: f.mask_token,
            gen_length,
            block_length,
            steps,
            remasking: f.remasking,
        }))
    }

    /// `--tiny` for the sampler: the mask token kept below the tiny vocabulary (the
    /// last id), blocks scaled with the sequence (at least 4 positions), and half of
    /// the tiny sequence generated in whole blocks.
    pub(super) fn tiny_diffusion(&mut self, old_seq: u64, pinned: &[String]) {
        let new_seq = self.dims.get("seq").copied().unwrap_or(1);
        let vocab = self.vocab;
        let Some(f) = self.diffusion.as_mut() else {
            return;
        };
        let free = |path: &str| !pinned.iter().any(|p| p == path);
        if free("diffusion.mask_token") && f.mask_token >= vocab {
            f.mask_token = vocab.saturating_sub(1);
        }
        let old_gen = f.gen_length.unwrap_or((old_seq / 2).max(1));
        let old_block = f.block_length.unwrap_or(old_gen);
        let block = if free("diffusion.block_length") {
            let scaled = (old_block as f64 * new_seq as f64 / old_seq.max(1) as f64).round() as u64;
            let b = scaled.max(old_block.min(4)).clamp(1, new_seq.max(1));
            f.block_length = Some(b);
            b
        } else {
            old_block
        };
        if free("diffusion.gen_length") {
            let half = (new_seq / 2).max(block);
            let g = (half / block).max(1) * block;
            f.gen_length = Some(g.min(new_seq));
        }
        if free("diffusion.steps") {
            f.steps = None;
        }
    }
}

/// `steps` denoising steps over `blocks` blocks: at least one per block, the same
/// number in each.
pub fn check_steps(steps: u64, blocks: u64, what: &str) -> Result<(), String> {
    if steps == 0 || !steps.is_multiple_of(blocks) {
        return Err(format!(
            "{what} = {steps} must be a positive multiple of the {blocks} blocks (`gen_length / block_length`)"
        ));
    }
    Ok(())
}
