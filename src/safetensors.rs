//! Reading and writing `.safetensors` files, and sharded checkpoints
//! (`model.safetensors.index.json`).
//!
//! A file is an 8-byte little-endian header length, a JSON header naming each
//! tensor's dtype, shape and byte range, then the data. Files are memory-mapped: a
//! tensor's bytes are read (and converted to f64) only when it is bound, one tensor
//! at a time, so a checkpoint is never copied into memory whole.

use crate::{err, Result};
use memmap2::Mmap;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Element types attnc reads. Others (integers, f8) are an error naming the tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredType {
    F64,
    F32,
    F16,
    Bf16,
}

impl StoredType {
    fn parse(s: &str) -> Option<StoredType> {
        Some(match s {
            "F64" => StoredType::F64,
            "F32" => StoredType::F32,
            "F16" => StoredType::F16,
            "BF16" => StoredType::Bf16,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            StoredType::F64 => 8,
            StoredType::F32 => 4,
            StoredType::F16 | StoredType::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StoredType::F64 => "F64",
            StoredType::F32 => "F32",
            StoredType::F16 => "F16",
            StoredType::Bf16 => "BF16",
        }
    }
}

/// Where one tensor lies.
#[derive(Clone, Debug)]
pub struct Entry {
    pub dtype: StoredType,
    pub shape: Vec<usize>,
    /// The mapped file it is in (an index into [`Checkpoint::files`]).
    file: usize,
    /// Byte range in that file (absolute).
    start: usize,
    end: usize,
}

/// One or more memory-mapped safetensors files, read as one name space.
pub struct Checkpoint {
    /// The path the user named (for messages).
    pub path: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    pub tensors: BTreeMap<String, Entry>,
}

/// Headers longer than this are not a safetensors file (the format caps them at 100 MB).
const MAX_HEADER: u64 = 100 << 20;

impl Checkpoint {
    /// Open `path`: a `.safetensors` file or a sharded checkpoint's `.index.json`.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let mut c = Checkpoint {
            path: path.to_path_buf(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        if path.to_string_lossy().ends_with(".json") {
            c.open_index(path)?;
        } else {
            c.add_file(path, None)?;
        }
        Ok(c)
    }

    /// `{"weight_map": {tensor: shard file}}`: every shard opened once, and each
    /// tensor must be in the shard the index names.
    fn open_index(&mut self, path: &Path) -> Result<()> {
        let text = attnc_ir::read_source(path).map_err(err)?;
        let bad = |m: &str| err(format!("{}: {m}", path.display()));
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| bad(&format!("not a safetensors index: {e}")))?;
        let map = value
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("a safetensors index has a `weight_map` object"))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(&format!("`weight_map.{tensor}` is not a file name")))?;
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(bad(&format!(
                    "shard `{file}` of `{tensor}` is not a file beside the index"
                )));
            }
            shards.entry(file).or_default().push(tensor);
        }
        for (file, names) in shards {
            self.add_file(&dir.join(file), Some(&names))?;
        }
        Ok(())
    }

    /// Map `path` and read its header; with `expected`, exactly those tensors must be
    /// in it (the index's promise).
    fn add_file(&mut self, path: &Path, expected: Option<&[&str]>) -> Result<()> {
        let bad = |m: String| err(format!("{}: {m}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        // SAFETY: the map is read-only; a file changed under a running process could
        // change the bytes read, never memory safety (the bytes are plain numbers).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| bad(format!("cannot map: {e}")))?;
        if map.len() < 8 {
            return Err(bad(
                "not a safetensors file: shorter than its 8-byte header length".into(),
            ));
        }
        let n = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
        if n > MAX_HEADER || 8 + n > map.len() as u64 {
            return Err(bad(format!(
                "not a safetensors file: a header of {n} bytes in a file of {}",
                map.len()
            )));
        }
        let data_start = 8 + n as usize;
        let header: Map<String, Value> = serde_json::from_slice(&map[8..data_start])
            .map_err(|e| bad(format!("not a safetensors file: its header: {e}")))?;
        let index = self.files.len();
        for (name, info) in &header {
            if name == "__metadata__" {
                continue;
            }
            let entry = parse_entry(info, index, data_start, map.len())
                .map_err(|m| bad(format!("tensor `{name}`: {m}")))?;
            if let Some(names) = expected {
                if !names.contains(&name.as_str()) {
                    // In the shard but not in the index: the index is the truth.
                    continue;
                }
            }
            if self.tensors.insert(name.clone(), entry).is_some() {
                return Err(bad(format!("tensor `{name}` is stored twice")));
            }
        }
        if let Some(names) = expected {
            if let Some(missing) = names.iter().find(|n| !header.contains_key(**n)) {
                return Err(bad(format!(
                    "the index places `{missing}` in this shard, but it is not there"
                )));
            }
        }
        self.files.push((path.to_path_buf(), map));
        Ok(())
    }

    /// The elements of tensor `name` as f64, row-major.
    pub fn read(&self, name: &str) -> Result<Vec<f64>> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| err(format!("{}: no tensor `{name}`", self.path.display())))?;
        let bytes = &self.files[e.file].1[e.start..e.end];
        let mut out = Vec::with_capacity(bytes.len() / e.dtype.size());
        match e.dtype {
            StoredType::F64 => out.extend(
                bytes
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))),
            ),
            StoredType::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64),
            ),
            StoredType::F16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64()),
            ),
            StoredType::Bf16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64()),
            ),
        }
        Ok(out)
    }
}

fn parse_entry(
    info: &Value,
    file: usize,
    data_start: usize,
    file_len: usize,
) -> std::result::Result<Entry, String> {
    let dtype = info
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or("no `dtype`")?;
    let dtype = StoredType::parse(dtype)
        .ok_or_else(|| format!("dtype {dtype} is not one attnc reads (F64, F32, F16, BF16)"))?;
    let shape: Vec<usize> = info
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("no `shape`")?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<_>>()
        .ok_or("`shape` is not a list of sizes")?;
    let offsets = info
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|o| o.len() == 2)
        .ok_or("no `data_offsets` pair")?;
    let offset = |i: usize| {
        offsets[i]
            .as_u64()
            .and_then(|o| usize::try_from(o).ok())
            .ok_or("`data_offsets` are not byte offsets")
    };
    let (begin, end) = (offset(0)?, offset(1)?);
    let elements = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("its size overflows")?;
    let bytes = elements
        .checked_mul(dtype.size())
        .ok_or("its size overflows")?;
    if end < begin || end - begin != bytes {
        return Err(format!(
            "shape {shape:?} of {} needs {bytes} bytes, data_offsets give {}",
            dtype.name(),
            end.saturating_sub(begin)
        ));
    }
    let (start, stop) = (data_start + begin, data_start + end);
    if stop > file_len {
        return Err(format!(
            "data_offsets [{begin}, {end}] run past the end of the file"
        ));
    }
    Ok(Entry {
        dtype,
        shape,
        file,
        start,
        end: stop,
    })
}

/// Write `tensors` (name, shape, values) as a safetensors file of f32 or f64.
pub fn write(path: &Path, tensors: &[(String, Vec<usize>, &[f64])], f64_data: bool) -> Result<()> {
    let size = if f64_data { 8 } else { 4 };
    let mut header = Map::new();
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let bytes = data.len() * size;
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": if f64_data { "F64" } else { "F32" },
                "shape": shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).map_err(|e| err(e.to_string()))?;
    // The data starts 8-byte aligned, as the reference writer pads it.
    while (8 + head.len()) % 8 != 0 {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend((head.len() as u64).to_le_bytes());
    out.extend(head);
    for (_, _, data) in tensors {
        for &v in data.iter() {
            if f64_data {
                out.extend(v.to_le_bytes());
            } else {
                out.extend((v as f32).to_le_bytes());
            }
        }
    }
    std::fs::write(path, out).map_err(|e| err(format!("{}: cannot write: {e}", path.display())))
}
