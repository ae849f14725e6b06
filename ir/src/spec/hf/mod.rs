//! Hugging Face `config.json` → [`Spec`]: the common architectures mapped field by
//! field (`attnc import`, and `attnc compile config.json` directly).
//!
//! Every key of the config is accounted for: mapped onto a spec field, checked to
//! hold the one value attnc models (`hidden_act = "silu"`, `rope_scaling = null`,
//! ...), or listed as ignored with the reason it cannot change the network's output
//! (dropout, token ids, training losses, parallelism). Anything else is an error
//! naming the key: a field that may change the math is never dropped silently.
//!
//! The spec computes in f32 (the weights' `torch_dtype` is noted; `--set dtype=bf16`
//! computes in it). The sequence length is a run-time size, not part of the model: `dims.seq` is
//! `max_position_embeddings` capped at 4096 (twice the sliding window, when there is
//! one, so the window matters), `dims.batch` 1; `--set` changes either.

use super::{AttentionFields, FfnFields, NormKind, NormPlacement, Position, Spec};
use crate::IrError;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};

mod bert;
mod gpt2;
mod llama;
mod mamba;
mod vit;

/// An imported config: the spec, and the keys ignored with the reason each is
/// harmless.
#[derive(Clone, Debug)]
pub struct Imported {
    pub spec: Spec,
    pub ignored: Vec<(String, &'static str)>,
    /// Choices the import made that the config does not state (the sequence length).
    pub notes: Vec<String>,
}

/// The `model_type`s [`import_hf`] maps.
pub const SUPPORTED: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "mixtral",
    "qwen2_moe",
    "deepseek_v2",
    "gpt2",
    "bert",
    "vit",
    "mamba2",
    "jamba",
];

/// Whether `text` looks like a Hugging Face config (a JSON object with `model_type`)
/// rather than an attnc spec written in JSON.
pub fn is_hf_config(text: &str) -> bool {
    serde_json::from_str::<Value>(&mamba::python_json(
        text.strip_prefix('\u{feff}').unwrap_or(text),
    ))
    .ok()
    .and_then(|v| v.get("model_type").map(Value::is_string))
    .unwrap_or(false)
}

pub(super) fn error(message: impl Into<String>) -> IrError {
    IrError::Spec {
        layer: None,
        message: message.into(),
    }
}

/// Keys that never change the forward function, with why.
const HARMLESS: &[(&str, &str)] = &[
    ("architectures", "names the Python class"),
    ("auto_map", "names the Python classes of remote code"),
    (
        "transformers_version",
        "the library version that wrote the file",
    ),
    ("_name_or_path", "where the model was loaded from"),
    (
        "bos_token_id",
        "a tokenizer id; the network takes ids as given",
    ),
    (
        "eos_token_id",
        "a tokenizer id; the network takes ids as given",
    ),
    (
        "pad_token_id",
        "a tokenizer id; the network takes ids as given",
    ),
    (
        "initializer_range",
        "initialization of training; weights are bound or drawn",
    ),
    ("use_cache", "a generation-time KV cache; the same function"),
    ("attention_dropout", "dropout is inactive at inference"),
    ("hidden_dropout", "dropout is inactive at inference"),
    ("resid_pdrop", "dropout is inactive at inference"),
    ("embd_pdrop", "dropout is inactive at inference"),
    ("attn_pdrop", "dropout is inactive at inference"),
    ("summary_first_dropout", "dropout is inactive at inference"),
    ("hidden_dropout_prob", "dropout is inactive at inference"),
    (
        "attention_probs_dropout_prob",
        "dropout is inactive at inference",
    ),
    ("classifier_dropout", "dropout is inactive at inference"),
    (
        "encoder_stride",
        "the decoder of masked image modeling, not the classifier",
    ),
    (
        "problem_type",
        "the training loss of the classification head",
    ),
    (
        "gradient_checkpointing",
        "recomputes activations in training; the same function",
    ),
    (
        "pretraining_tp",
        "splits matmuls across tensor-parallel ranks; the same product",
    ),
    ("router_aux_loss_coef", "a training loss"),
    (
        "output_router_logits",
        "returns router logits for the training loss",
    ),
    (
        "router_jitter_noise",
        "noise on the router during training only",
    ),
    ("aux_loss_alpha", "a training loss"),
    ("seq_aux", "a training loss"),
    (
        "ep_size",
        "expert parallelism across devices; the same function",
    ),
    ("n_ctx", "GPT-2's alias of n_positions"),
    (
        "reorder_and_upcast_attn",
        "the precision of GPT-2's score computation, not its value",
    ),
    (
        "summary_type",
        "the sequence-classification head of GPT2DoubleHeadsModel",
    ),
    (
        "summary_use_proj",
        "the sequence-classification head of GPT2DoubleHeadsModel",
    ),
    (
        "summary_activation",
        "the sequence-classification head of GPT2DoubleHeadsModel",
    ),
    (
        "summary_proj_to_labels",
        "the sequence-classification head of GPT2DoubleHeadsModel",
    ),
    (
        "task_specific_params",
        "generation settings of downstream tasks",
    ),
    (
        "max_window_layers",
        "used only with use_sliding_window = true",
    ),
    (
        "chunk_size",
        "Mamba2's SSD block length in transformers; the chunked and quadratic forms compute the same function",
    ),
    (
        "time_step_min",
        "Mamba's initialization of dt_bias; the bias is a weight",
    ),
    (
        "time_step_max",
        "Mamba's initialization of dt_bias; the bias is a weight",
    ),
    (
        "time_step_floor",
        "Mamba's initialization of dt_bias; the bias is a weight",
    ),
    (
        "time_step_init_scheme",
        "Mamba's initialization of dt_proj; the weights are bound or drawn",
    ),
    (
        "time_step_scale",
        "Mamba's initialization of dt_proj; the weights are bound or drawn",
    ),
    (
        "time_step_rank",
        "stored by Mamba2Mixer but never used: Mamba2's Δ is one value per head",
    ),
    (
        "rescale_prenorm_residual",
        "Mamba's initialization of out_proj; the weights are bound or drawn",
    ),
    (
        "residual_in_fp32",
        "Mamba keeps the residual in f32; attnc computes in f32 throughout",
    ),
    (
        "use_mamba_kernels",
        "Jamba's fused CUDA kernels compute the same selective scan",
    ),
    (
        "num_logits_to_keep",
        "generation computes only the last logits; the same function",
    ),
];

/// The config being mapped: its keys, and which have been read.
pub(super) struct Config {
    pub(super) model_type: String,
    map: Map<String, Value>,
    used: HashSet<String>,
}

impl Config {
    pub(super) fn raw(&mut self, key: &str) -> Option<Value> {
        self.used.insert(key.to_string());
        self.map.get(key).filter(|v| !v.is_null()).cloned()
    }

    pub(super) fn bad(&self, key: &str, what: &str) -> IrError {
        error(format!(
            "`{key}` = {} in this {} config: {what}",
            self.map.get(key).cloned().unwrap_or(Value::Null),
            self.model_type
        ))
    }

    /// `key` read with `read` (absent and null: `None`); any other value that `read`
    /// rejects is an error saying what was `expected`.
    pub(super) fn typed<T>(
        &mut self,
        key: &str,
        expected: &str,
        read: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<T>, IrError> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => read(&v).map(Some).ok_or_else(|| self.bad(key, expected)),
        }
    }

    pub(super) fn u64(&mut self, key: &str) -> Result<Option<u64>, IrError> {
        self.typed(key, "expected a non-negative integer", Value::as_u64)
    }

    pub(super) fn need_u64(&mut self, key: &str) -> Result<u64, IrError> {
        self.u64(key)?
            .ok_or_else(|| error(format!("this {} config has no `{key}`", self.model_type)))
    }

    pub(super) fn f64(&mut self, key: &str) -> Result<Option<f64>, IrError> {
        self.typed(key, "expected a number", Value::as_f64)
    }

    pub(super) fn bool(&mut self, key: &str) -> Result<Option<bool>, IrError> {
        self.typed(key, "expected true or false", Value::as_bool)
    }

    pub(super) fn str(&mut self, key: &str) -> Result<Option<String>, IrError> {
        self.typed(key, "expected a string", |v| v.as_str().map(str::to_string))
    }

    /// `key` must be absent, null or one of `allowed` (what attnc models).
    pub(super) fn only(&mut self, key: &str, allowed: &[Value], why: &str) -> Result<(), IrError> {
        match self.raw(key) {
            Some(v) if !allowed.contains(&v) => Err(self.bad(key, why)),
            _ => Ok(()),
        }
    }

    /// Every key not read must be harmless; returns those, with why.
    fn finish(&self) -> Result<Vec<(String, &'static str)>, IrError> {
        let mut ignored = Vec::new();
        let mut keys: Vec<&String> = self.map.keys().collect();
        keys.sort();
        for key in keys {
            if self.used.contains(key.as_str()) {
                continue;
            }
            match HARMLESS.iter().find(|(k, _)| k == key) {
                Some((_, why)) => ignored.push((key.clone(), *why)),
                None => {
                    return Err(error(format!(
                        "`{key}` in this {} config is not a field attnc maps or knows to be harmless; \
                         it may change the model, so the import stops (supported fields are listed in \
                         ir/src/spec/hf.rs)",
                        self.model_type
                    )))
                }
            }
        }
        Ok(ignored)
    }
}

/// Map a `config.json` text onto a spec named `name`.
pub fn import_hf(text: &str, name: &str) -> Result<Imported, IrError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: Value =
        serde_json::from_str(&mamba::python_json(text)).map_err(|e| IrError::Parse {
            line: e.line().max(1),
            col: e.column().max(1),
            message: e.to_string(),
        })?;
    let Value::Object(map) = value else {
        return Err(error("a config.json holds one JSON object"));
    };
    let model_type = match map.get("model_type").and_then(Value::as_str) {
        Some(t) => t.to_string(),
        None => return Err(error("a Hugging Face config.json names its `model_type`")),
    };
    let mut c = Config {
        model_type: model_type.clone(),
        map,
        used: HashSet::from(["model_type".to_string()]),
    };
    let mut notes = Vec::new();
    let spec = match model_type.as_str() {
        "llama" | "mistral" | "qwen2" | "mixtral" | "qwen2_moe" | "deepseek_v2" => {
            llama::llama_family(&mut c, name, &mut notes)?
        }
        "gpt2" => gpt2::gpt2(&mut c, name, &mut notes)?,
        "bert" => bert::bert(&mut c, name, &mut notes)?,
        "vit" => vit::vit(&mut c, name, &mut notes)?,
        "mamba2" => mamba::mamba2(&mut c, name, &mut notes)?,
        "jamba" => mamba::jamba(&mut c, name, &mut notes)?,
        other => {
            return Err(error(format!(
                "`model_type` = \"{other}\" is not supported; attnc imports {}",
                SUPPORTED.join(", ")
            )))
        }
    };
    let ignored = c.finish()?;
    // A ViT's sequence is derived from the image when the spec is loaded; the
    // spec is checked as it will be then.
    spec.clone().with_vision_seq()?.validate()?;
    Ok(Imported {
        spec,
        ignored,
        notes,
    })
}

/// The spec computes in f32 whatever `torch_dtype` the weights are stored in: the
/// same network, more precisely (a bf16 router's near-ties would otherwise decide
/// different experts than the f64 reference). `--set dtype=bf16` computes in the
/// weights' type.
pub(super) fn dtype(c: &mut Config, notes: &mut Vec<String>) -> Result<String, IrError> {
    let stored = match c.str("torch_dtype")?.as_deref() {
        None | Some("float32") => "f32",
        Some("float16") => "f16",
        Some("bfloat16") => "bf16",
        Some(_) => return Err(c.bad("torch_dtype", "expected float32, float16 or bfloat16")),
    };
    if stored != "f32" {
        notes.push(format!(
            "dtype = f32: the weights are stored in {stored} (torch_dtype); --set dtype={stored} computes in it"
        ));
    }
    Ok("f32".into())
}

/// `dims`: batch 1 and the sequence (see the module docs).
pub(super) fn dims(
    max_positions: Option<u64>,
    window: Option<u64>,
    notes: &mut Vec<String>,
) -> BTreeMap<String, u64> {
    let want = window.map_or(4096, |w| (2 * w).max(4096));
    let seq = max_positions.map_or(want, |m| m.min(want));
    notes.push(format!(
        "dims.seq = {seq} (max_position_embeddings {}); change it with --set seq=N",
        max_positions.map_or("unset".into(), |m| m.to_string())
    ));
    let mut d = BTreeMap::from([("batch".to_string(), 1), ("seq".to_string(), seq)]);
    if let Some(w) = window {
        d.insert("window".into(), w);
    }
    d
}

pub(super) fn base(name: &str, vocab: u64, d_model: u64, layers: u64) -> Spec {
    Spec {
        name: name.to_string(),
        arch: super::Arch::Decoder,
        vocab,
        d_model,
        layers,
        dims: BTreeMap::new(),
        dtype: "f32".into(),
        norm: NormKind::RmsNorm,
        norm_eps: 1e-6,
        norm_placement: NormPlacement::Pre,
        position: Position::Rope,
        max_positions: None,
        rope_theta: 10000.0,
        tie_embeddings: false,
        attention: AttentionFields::default(),
        ffn: FfnFields::default(),
        pattern: Vec::new(),
        kinds: BTreeMap::new(),
        overrides: Vec::new(),
        diffusion: None,
        vision: None,
        rope_scaling: None,
        embed_norm: false,
        token_types: None,
    }
}

impl Imported {
    /// The spec as TOML, headed by comments saying where it came from, the choices
    /// the import made and every ignored key with why it is harmless.
    pub fn to_toml(&self, source: &str) -> Result<String, IrError> {
        let body = toml::to_string(&self.spec).map_err(|e| error(format!("writing TOML: {e}")))?;
        let mut s = format!("# Imported from {source} by `attnc import`.\n");
        for n in &self.notes {
            s += &format!("# {n}\n");
        }
        if !self.ignored.is_empty() {
            s += "# Ignored keys of the config (none changes the network's output):\n";
            for (key, why) in &self.ignored {
                s += &format!("#   {key}: {why}\n");
            }
        }
        Ok(s + &body)
    }
}
