//! `arch = "vit"` and `[vision]`: a Vision Transformer (Dosovitskiy et al., 2021).
//! The image is cut into `patch_size²` patches, each flattened and projected to
//! `d_model` (a matmul over flattened patches — the strided convolution of the
//! reference implementation, written as what it computes); a learned class token
//! goes in front, learned positions are added, the encoder layers attend
//! bidirectionally, and the head classifies the final class token (or the mean of
//! the patch tokens). The sequence is derived: `(image_size / patch_size)²` patches,
//! plus one with the class token. Field names follow Hugging Face's `ViTConfig`.

use super::{Arch, Position, Spec};
use crate::IrError;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// The final class token.
    Cls,
    /// The mean of the final patch tokens.
    Mean,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionFields {
    /// Side of the square input image, in pixels (default 224).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u64>,
    /// Side of a square patch (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_size: Option<u64>,
    /// Channels of the image (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_channels: Option<u64>,
    /// Classes the head predicts (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<u64>,
    /// A learned class token in front of the patches (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_token: Option<bool>,
    /// What the head reads: `cls` (default with a class token) or `mean`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,
}

/// The resolved vision settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vision {
    pub image_size: u64,
    pub patch_size: u64,
    pub num_channels: u64,
    pub num_classes: u64,
    pub class_token: bool,
    pub pool: Pool,
}

impl Vision {
    /// Patches along one side of the image.
    pub fn grid(&self) -> u64 {
        self.image_size / self.patch_size
    }

    /// The sequence the encoder sees.
    pub fn seq(&self) -> u64 {
        self.grid() * self.grid() + self.class_token as u64
    }
}

fn fail<T>(message: String) -> Result<T, IrError> {
    Err(IrError::Spec {
        layer: None,
        message,
    })
}

impl Spec {
    /// The vision settings of a ViT, checked; `None` for other archs (an error if
    /// they have a `[vision]` section).
    pub fn vision(&self) -> Result<Option<Vision>, IrError> {
        let f = match (&self.vision, self.arch) {
            (None, Arch::Vit) => return fail("`arch = \"vit\"` needs a `[vision]` section".into()),
            (Some(_), a) if a != Arch::Vit => {
                return fail("`[vision]` applies to `arch = \"vit\"` only".into())
            }
            (None, _) => return Ok(None),
            (Some(f), _) => f,
        };
        let v = Vision {
            image_size: f.image_size.unwrap_or(224),
            patch_size: f.patch_size.unwrap_or(16),
            num_channels: f.num_channels.unwrap_or(3),
            num_classes: f.num_classes.unwrap_or(1000),
            class_token: f.class_token.unwrap_or(true),
            pool: f.pool.unwrap_or(if f.class_token.unwrap_or(true) {
                Pool::Cls
            } else {
                Pool::Mean
            }),
        };
        for (name, n) in [
            ("image_size", v.image_size),
            ("patch_size", v.patch_size),
            ("num_channels", v.num_channels),
            ("num_classes", v.num_classes),
        ] {
            if n == 0 || n > super::MAX_DIM {
                return fail(format!("`vision.{name}` = {n} is out of range"));
            }
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return fail(format!(
                "`vision.image_size` = {} is not a multiple of `vision.patch_size` = {}",
                v.image_size, v.patch_size
            ));
        }
        // Both sizes are dimensions of the graph: bound them before multiplying on.
        let grid = v.grid();
        if grid.checked_mul(grid).is_none_or(|n| n >= super::MAX_DIM) {
            return fail(format!(
                "`vision.image_size` / `vision.patch_size` = {} / {}: {grid}² patches are too many",
                v.image_size, v.patch_size
            ));
        }
        let patch_dim =
            (v.patch_size.checked_mul(v.patch_size)).and_then(|pp| pp.checked_mul(v.num_channels));
        if patch_dim.is_none_or(|n| n > super::MAX_DIM) {
            return fail(format!(
                "`vision.num_channels` × `vision.patch_size`² = {} × {}² is too large",
                v.num_channels, v.patch_size
            ));
        }
        if v.pool == Pool::Cls && !v.class_token {
            return fail("`vision.pool = \"cls\"` needs `vision.class_token = true`".into());
        }
        if !matches!(self.position, Position::None | Position::Learned) {
            return fail(
                "a ViT has learned positions: leave `position` unset or \"learned\"".into(),
            );
        }
        if self.tie_embeddings {
            return fail(
                "`tie_embeddings`: a ViT has no token embedding to tie to its head".into(),
            );
        }
        Ok(Some(v))
    }

    /// A ViT's `dims.seq` is its patch count (plus the class token): filled in when
    /// unset, an error when set to something else; the same for `max_positions`
    /// (filled in only with `position = "learned"`, which a ViT has either way).
    pub(crate) fn with_vision_seq(mut self) -> Result<Spec, IrError> {
        let Some(v) = self.vision()? else {
            return Ok(self);
        };
        match self.dims.get("seq") {
            None => {
                self.dims.insert("seq".into(), v.seq());
            }
            Some(&s) if s != v.seq() => {
                return fail(format!(
                    "`dims.seq` = {s}, but a {0}x{0} image in {1}x{1} patches is a sequence of {2}; leave `dims.seq` unset",
                    v.image_size,
                    v.patch_size,
                    v.seq()
                ))
            }
            Some(_) => {}
        }
        // The position table has one row per token.
        match self.max_positions {
            None if self.position == Position::Learned => self.max_positions = Some(v.seq()),
            Some(m) if m != v.seq() => {
                return fail(format!(
                    "`max_positions` = {m}: a ViT has one learned position per token ({}); leave `max_positions` unset",
                    v.seq()
                ))
            }
            _ => {}
        }
        // Axial attention over the patch grid: rows of `grid` patches by default.
        if self.attention.kind.as_deref() == Some("axial") && self.attention.axial_rows.is_none() {
            self.attention.axial_rows = Some(v.grid());
        }
        Ok(self)
    }

    /// `--tiny` for a ViT: 4×4 patches of 4×4 pixels, at most 10 classes; the
    /// sequence re-derived.
    pub(super) fn tiny_vision(&mut self, pinned: &[String]) {
        let Some(f) = self.vision.as_mut() else {
            return;
        };
        let free = |path: &str| !pinned.iter().any(|p| p == path);
        if free("vision.patch_size") {
            f.patch_size = Some(4);
        }
        if free("vision.image_size") {
            f.image_size = Some(4 * f.patch_size.unwrap_or(16));
        }
        if free("vision.num_classes") {
            f.num_classes = Some(f.num_classes.unwrap_or(1000).min(10));
        }
        if free("dims.seq") {
            self.dims.remove("seq");
        }
        // Re-derived from the new sequence (see `with_vision_seq`).
        if free("max_positions") {
            self.max_positions = None;
        }
    }
}
