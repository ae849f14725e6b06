//! Binding a checkpoint's weights to a graph's params (`run --weights`).
//!
//! Every param gets a [`Recipe`]: which stored tensor(s) make it and how (transposed,
//! some rows or columns, experts stacked). Recipes are planned and checked against
//! the checkpoint's header before any data is read, so a missing, mis-shaped or
//! unused tensor is an error naming it up front; the data is then read from the
//! memory-mapped file one param at a time.
//!
//! A checkpoint is named either as attnc names its params (the IR's own names) or as
//! Hugging Face does; the convention is recognised from the tensor names, and the
//! per-architecture mapping is in [`hf`].

mod hf;

use crate::safetensors::Checkpoint;
use crate::{err, Result};
use attnc_ir::spec::Spec;
use attnc_ir::{Graph, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// How one param is made from stored tensors.
#[derive(Clone, Debug, PartialEq)]
pub enum Recipe {
    /// A stored tensor as it is (reshaped when only unit axes differ, such as ViT's
    /// `[1, seq, d]` positions for a `[seq, d]` param).
    Whole { name: String, shape: Vec<usize> },
    /// Selected rows (`axis` 0) or columns (`axis` 1) of a stored `[rows, cols]`
    /// matrix, in the given order (a vector's elements are its "rows"), then
    /// transposed if asked: a PyTorch `Linear` stores `[out, in]`, attnc `[in, out]`.
    Select {
        name: String,
        shape: Vec<usize>,
        axis: usize,
        indices: Vec<usize>,
        transpose: bool,
    },
    /// Recipes joined along a new first axis: the experts of a mixture.
    Stack(Vec<Recipe>),
}

impl Recipe {
    /// The whole stored `[rows, cols]` matrix, transposed.
    pub fn transposed(name: impl Into<String>, rows: usize, cols: usize) -> Recipe {
        Recipe::Select {
            name: name.into(),
            shape: vec![rows, cols],
            axis: 0,
            indices: (0..rows).collect(),
            transpose: true,
        }
    }

    fn leaves(&self, out: &mut Vec<(String, Vec<usize>)>) {
        match self {
            Recipe::Whole { name, shape } | Recipe::Select { name, shape, .. } => {
                out.push((name.clone(), shape.clone()))
            }
            Recipe::Stack(parts) => parts.iter().for_each(|p| p.leaves(out)),
        }
    }

    /// The elements, row-major.
    fn read(&self, ckpt: &Checkpoint) -> Result<Vec<f64>> {
        match self {
            Recipe::Whole { name, .. } => ckpt.read(name),
            Recipe::Select {
                name,
                shape,
                axis,
                indices,
                transpose,
            } => {
                let data = ckpt.read(name)?;
                let (rows, cols) = match shape[..] {
                    [r, c] => (r, c),
                    [r] => (r, 1),
                    _ => {
                        return Err(err(format!(
                            "internal: selecting from `{name}` of rank {}",
                            shape.len()
                        )))
                    }
                };
                let (out_rows, out_cols) = match axis {
                    0 => (indices.len(), cols),
                    _ => (rows, indices.len()),
                };
                let at = |r: usize, c: usize| match axis {
                    0 => data[indices[r] * cols + c],
                    _ => data[r * cols + indices[c]],
                };
                let mut out = Vec::with_capacity(out_rows * out_cols);
                if *transpose {
                    for c in 0..out_cols {
                        out.extend((0..out_rows).map(|r| at(r, c)));
                    }
                } else {
                    for r in 0..out_rows {
                        out.extend((0..out_cols).map(|c| at(r, c)));
                    }
                }
                Ok(out)
            }
            Recipe::Stack(parts) => {
                let mut out = Vec::new();
                for p in parts {
                    out.extend(p.read(ckpt)?);
                }
                Ok(out)
            }
        }
    }

    /// The shape it produces.
    fn shape(&self) -> Vec<usize> {
        match self {
            Recipe::Whole { shape, .. } => shape.clone(),
            Recipe::Select {
                shape,
                axis,
                indices,
                transpose,
                ..
            } => {
                let mut s = match shape.len() {
                    1 => vec![indices.len()],
                    _ if *axis == 0 => vec![indices.len(), shape[1]],
                    _ => vec![shape[0], indices.len()],
                };
                if *transpose && s.len() == 2 {
                    s.swap(0, 1);
                }
                s
            }
            Recipe::Stack(parts) => {
                let mut s = vec![parts.len()];
                s.extend(parts.first().map(Recipe::shape).unwrap_or_default());
                s
            }
        }
    }
}

/// The naming of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convention {
    /// attnc's own param names (`layers.0.attn.wq`, `[in, out]`).
    Native,
    /// Hugging Face `transformers` names of one family.
    Hf(hf::Family),
}

/// A checkpoint matched to a graph: a checked recipe for every param.
pub struct Weights {
    ckpt: Checkpoint,
    pub convention: Convention,
    recipes: BTreeMap<String, Recipe>,
    /// Stored tensors no param uses but known not to be weights of this network
    /// (buffers such as `rotary_emb.inv_freq`), with why.
    pub ignored: Vec<(String, &'static str)>,
}

impl Weights {
    /// Open `path` (`.safetensors` or a sharded `.index.json`) for `graph` (lowered
    /// from `spec`, when it came from one: the Hugging Face mapping needs the spec).
    pub fn open(path: &Path, graph: &Graph, spec: Option<&Spec>) -> Result<Weights> {
        let ckpt = Checkpoint::open(path)?;
        let params: Vec<(String, Vec<usize>)> = graph
            .params()
            .iter()
            .map(|(name, id)| (name.to_string(), graph.sizes(*id)))
            .collect();
        let stored: BTreeSet<&str> = ckpt.tensors.keys().map(String::as_str).collect();
        let file = path.display();
        let convention = if params.iter().any(|(n, _)| stored.contains(n.as_str())) {
            Convention::Native
        } else {
            match hf::Family::detect(&stored) {
                Some(f) => Convention::Hf(f),
                None => {
                    let some: Vec<&str> = stored.iter().take(4).copied().collect();
                    return Err(err(format!(
                        "{file}: the tensor names ({}, ...) are neither attnc's param names nor a Hugging Face family attnc maps ({})",
                        some.join(", "),
                        hf::Family::NAMES.join(", ")
                    )));
                }
            }
        };
        let mut recipes = BTreeMap::new();
        for (name, shape) in &params {
            let recipe = match convention {
                Convention::Native => Recipe::Whole {
                    name: name.clone(),
                    shape: shape.clone(),
                },
                Convention::Hf(family) => {
                    let spec = spec.ok_or_else(|| {
                        err(format!(
                            "{file}: Hugging Face weights are bound through the model's spec; this graph is IR text (name its params as attnc does, or run the spec)"
                        ))
                    })?;
                    hf::recipe(family, spec, &stored, name, shape)
                        .map_err(|m| err(format!("{file}: param `{name}`: {m}")))?
                }
            };
            check(&ckpt, &recipe, name, shape).map_err(|m| err(format!("{file}: {m}")))?;
            recipes.insert(name.clone(), recipe);
        }
        // Every stored tensor must be used, or be known to be harmless.
        let mut used = BTreeSet::new();
        for r in recipes.values() {
            let mut leaves = Vec::new();
            r.leaves(&mut leaves);
            used.extend(leaves.into_iter().map(|(n, _)| n));
        }
        let mut ignored = Vec::new();
        for name in ckpt.tensors.keys().filter(|n| !used.contains(*n)) {
            let why = match convention {
                Convention::Hf(f) => hf::harmless(f, spec, name),
                Convention::Native => None,
            };
            match why {
                Some(why) => ignored.push((name.clone(), why)),
                None => {
                    return Err(err(format!(
                        "{file}: tensor `{name}` is not used by the model (do the config and the weights belong together?)"
                    )))
                }
            }
        }
        Ok(Weights {
            ckpt,
            convention,
            recipes,
            ignored,
        })
    }

    /// Param `name` as a tensor of `dtype`, read from the file now.
    pub fn tensor(&self, name: &str, dtype: attnc_ir::DType) -> Result<Tensor> {
        let r = self
            .recipes
            .get(name)
            .ok_or_else(|| err(format!("internal: no recipe for param `{name}`")))?;
        let data = r.read(&self.ckpt)?;
        Ok(Tensor::new(dtype, r.shape(), data))
    }

    /// What each param is made from, for `--json` reports and tests.
    pub fn recipes(&self) -> &BTreeMap<String, Recipe> {
        &self.recipes
    }
}

/// The stored tensors exist with the shapes the recipe assumes, and it makes the
/// param's shape.
fn check(
    ckpt: &Checkpoint,
    r: &Recipe,
    param: &str,
    want: &[usize],
) -> std::result::Result<(), String> {
    let mut leaves = Vec::new();
    r.leaves(&mut leaves);
    for (name, shape) in &leaves {
        let Some(entry) = ckpt.tensors.get(name) else {
            return Err(format!("missing tensor `{name}` (for param `{param}`)"));
        };
        let ok = match r {
            // A whole tensor may differ from the param only in unit axes.
            Recipe::Whole { .. } => squeeze(&entry.shape) == squeeze(shape),
            // A selection reads the stored tensor as a matrix: its first axis, and
            // the rest flattened (a convolution kernel `[d, c, p, p]` as `[d, c·p·p]`).
            _ => {
                entry.shape.first() == shape.first()
                    && entry.shape.iter().product::<usize>() == shape.iter().product::<usize>()
                    && (entry.shape.len() >= shape.len())
            }
        };
        if !ok {
            return Err(format!(
                "tensor `{name}` has shape {:?}; the model needs {shape:?} (for param `{param}` {want:?})",
                entry.shape
            ));
        }
    }
    if let Recipe::Whole { .. } = r {
        return Ok(());
    }
    let got = r.shape();
    if got != want {
        return Err(format!(
            "internal: the recipe of param `{param}` makes {got:?}, the param is {want:?}"
        ));
    }
    Ok(())
}

fn squeeze(s: &[usize]) -> Vec<usize> {
    s.iter().copied().filter(|&d| d != 1).collect()
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("path", &self.ckpt.path)
            .field("convention", &self.convention)
            .field("params", &self.recipes.len())
            .finish()
    }
}
