//! Reading a spec: TOML or JSON text, `--set` overrides, `--tiny` shrinking.
//!
//! Errors in the text carry line and column (serde reports them); an unknown key gets
//! the nearest valid name as a hint. Overrides are applied to the parsed spec's value
//! tree and deserialised again, so they are checked exactly like the file.

use super::{Spec, ATTENTION_FIELDS, DIFFUSION_FIELDS, FFN_FIELDS, SPEC_FIELDS};
use crate::IrError;
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// `.json` is JSON, anything else TOML.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            _ => Format::Toml,
        }
    }
}

/// What to read and how to adjust it.
#[derive(Clone, Debug, Default)]
pub struct SpecSource {
    /// `KEY=VALUE` overrides, in order; a KEY is a dotted path (`attention.heads`) or
    /// a unique short name (`seq`, `layers`, `heads`).
    pub sets: Vec<String>,
    /// Shrink to a structurally identical small model (see `tiny.rs`).
    pub tiny: bool,
}

/// Parse spec text. Syntax and schema errors are `IrError::Parse` with a position.
pub fn parse_spec(text: &str, format: Format, source: &SpecSource) -> Result<Spec, IrError> {
    // Editors on some systems start UTF-8 files with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let spec: Spec = match format {
        Format::Toml => toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map_or((1, 1), |span| line_col(text, span.start));
            IrError::Parse {
                line,
                col,
                message: with_hint(e.message()),
            }
        })?,
        Format::Json => serde_json::from_str(text).map_err(|e| {
            let full = e.to_string();
            let message = match full.rfind(" at line ") {
                Some(i) => full[..i].to_string(),
                None => full,
            };
            IrError::Parse {
                line: e.line().max(1),
                col: e.column().max(1),
                message: with_hint(&message),
            }
        })?,
    };
    let mut pinned = Vec::new();
    let spec = if source.sets.is_empty() {
        spec
    } else {
        let mut tree = serde_json::to_value(&spec).map_err(|e| set_error("", &e.to_string()))?;
        for set in &source.sets {
            pinned.push(apply_set(&mut tree, set)?);
        }
        serde_json::from_value(tree)
            .map_err(|e| set_error(&source.sets.join(" "), &with_hint(&e.to_string())))?
    };
    let spec = spec.with_vision_seq()?;
    // Every layer of the spec as written must be valid, so shrinking never hides an
    // error (or turns a wrong spec into a different, valid one).
    spec.layer_configs()?;
    if source.tiny {
        let tiny = spec.tiny(&pinned).with_vision_seq()?;
        tiny.layer_configs()?;
        return Ok(tiny);
    }
    Ok(spec)
}

/// Read a spec file (TOML unless it ends in `.json`).
pub fn load_spec(path: &Path, source: &SpecSource) -> Result<Spec, String> {
    let text = crate::read_source(path)?;
    let format = Format::from_path(path);
    let parsed = if format == Format::Json && super::hf::is_hf_config(&text) {
        // A Hugging Face config.json: imported, then `--set` / `--tiny` as for a spec.
        super::hf::import_hf(&text, &hf_model_name(path)).and_then(|imported| {
            let json = serde_json::to_string(&imported.spec).map_err(|e| IrError::Spec {
                layer: None,
                message: e.to_string(),
            })?;
            parse_spec(&json, Format::Json, source)
        })
    } else {
        parse_spec(&text, format, source)
    };
    parsed.map_err(|e| match e {
        IrError::Parse { line, col, message } => {
            format!("{}:{line}:{col}: {message}", path.display())
        }
        other => format!("{}: {other}", path.display()),
    })
}

/// The name of an imported model: the file's stem, or its directory's name for a
/// file called `config.json` (as the Hugging Face hub lays models out).
pub fn hf_model_name(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|s| s.to_str());
    match parent {
        Some(dir) if stem == "config" => dir.to_string(),
        _ => stem.to_string(),
    }
}

fn set_error(set: &str, message: &str) -> IrError {
    IrError::Spec {
        layer: None,
        message: format!("--set {set}: {message}"),
    }
}

/// Apply one `KEY=VALUE`; returns the full dotted path it wrote.
fn apply_set(tree: &mut Value, set: &str) -> Result<String, IrError> {
    let (key, raw) = set
        .split_once('=')
        .ok_or_else(|| set_error(set, "expected KEY=VALUE"))?;
    let (key, raw) = (key.trim(), raw.trim());
    // JSON literals (numbers, booleans, quoted strings, arrays); anything else is a string.
    let value = serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.into()));
    let path = resolve_key(tree, key).map_err(|m| set_error(set, &m))?;
    let mut node = &mut *tree;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        node = match node {
            Value::Object(map) => {
                if last {
                    map.insert(part.to_string(), value);
                    return Ok(path);
                }
                map.entry(part.to_string())
                    .or_insert_with(|| Value::Object(Default::default()))
            }
            Value::Array(items) => {
                let idx: usize =
                    part.parse()
                        .ok()
                        .filter(|&i| i < items.len())
                        .ok_or_else(|| {
                            set_error(
                                set,
                                &format!("`{part}` is not an index into a list of {}", items.len()),
                            )
                        })?;
                if last {
                    items[idx] = value;
                    return Ok(path);
                }
                &mut items[idx]
            }
            _ => {
                return Err(set_error(
                    set,
                    &format!("`{part}` is inside a value, not a table"),
                ))
            }
        };
    }
    Err(set_error(set, "empty key"))
}

/// A dotted path stays as written; a short name is looked up in `dims`, then among
/// the top-level, attention and ffn fields.
fn resolve_key(tree: &Value, key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.contains('.') {
        return Ok(key.to_string());
    }
    if tree.get("dims").and_then(|d| d.get(key)).is_some() || key == "batch" || key == "seq" {
        return Ok(format!("dims.{key}"));
    }
    if SPEC_FIELDS.contains(&key) {
        return Ok(key.to_string());
    }
    if ATTENTION_FIELDS.contains(&key) {
        return Ok(format!("attention.{key}"));
    }
    if FFN_FIELDS.contains(&key) {
        return Ok(format!("ffn.{key}"));
    }
    if DIFFUSION_FIELDS.contains(&key) {
        return Ok(format!("diffusion.{key}"));
    }
    let mut known: Vec<&str> = SPEC_FIELDS.to_vec();
    known.extend(ATTENTION_FIELDS);
    known.extend(FFN_FIELDS);
    known.extend(DIFFUSION_FIELDS);
    let dims: Vec<String> = tree
        .get("dims")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    known.extend(dims.iter().map(String::as_str));
    Err(format!(
        "unknown key `{key}`{} (use a dotted path such as `dims.{key}` to add a new dimension)",
        suggestion(key, &known)
    ))
}

/// serde says "unknown field `hedas`, expected one of `heads`, ..."; add the nearest.
fn with_hint(message: &str) -> String {
    let message = message.trim_end().to_string();
    if !message.starts_with("unknown field") && !message.starts_with("unknown variant") {
        return message;
    }
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    match quoted.split_first() {
        Some((bad, known)) => format!("{message}{}", suggestion(bad, known)),
        None => message,
    }
}

/// `; did you mean `heads`?` when a known name is close to `word`, else nothing.
pub(crate) fn suggestion(word: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (strsim::levenshtein(word, k), *k))
        .min();
    match best {
        Some((d, k)) if d <= (word.len() / 3).max(2) && d > 0 => format!("; did you mean `{k}`?"),
        _ => String::new(),
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
