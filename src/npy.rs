//! NumPy `.npy` files: inputs (token ids, pixels) in, outputs out.
//!
//! Format 1.0–3.0: the magic `\x93NUMPY`, a version, a little-endian header length,
//! a Python-literal dict `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 8), }`
//! and the data, C-ordered.

use crate::{err, Result};
use std::path::Path;

/// An array read from a file: its shape and elements as f64 (exact for integers
/// below 2^53, which token ids are).
#[derive(Clone, Debug)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
    /// Whether the file held integers.
    pub integer: bool,
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// One element's little-endian bytes to f64.
type Decode = fn(&[u8]) -> f64;

/// Read `path`. Element types: little-endian i8/i16/i32/i64, u8/u16/u32, f2/f4/f8, bool.
pub fn read(path: &Path) -> Result<Array> {
    // The elements become f64: a file larger than a ninth of the free memory cannot be
    // held (and `/dev/zero` never ends), so the read stops there.
    let bytes = read_bounded(path, crate::available_memory() / 9)?;
    parse(&bytes).map_err(|m| err(format!("{}: {m}", path.display())))
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    attnc_ir::read_at_most(path, max)
        .map_err(err)?
        .ok_or_else(|| {
            err(format!(
                "{}: too large to load: its elements, as f64, would not fit in the free memory \
             (the read stopped at {:.3} GiB)",
                path.display(),
                crate::gib(max)
            ))
        })
}

fn parse(bytes: &[u8]) -> std::result::Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize,
            12,
        ),
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let header = bytes
        .get(start..start + len)
        .ok_or("the .npy header runs past the end of the file")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let descr = field(header, "descr").ok_or("the .npy header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if field(header, "fortran_order").map(str::trim) == Some("True") {
        return Err(
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into(),
        );
    }
    let shape = shape(header)?;
    let n = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("the array's size overflows")?;
    let (size, integer, read): (usize, bool, Decode) = match descr {
        "<i8" => (8, true, |b| {
            i64::from_le_bytes(b.try_into().unwrap()) as f64
        }),
        "<i4" => (4, true, |b| {
            i32::from_le_bytes(b.try_into().unwrap()) as f64
        }),
        "<i2" => (2, true, |b| {
            i16::from_le_bytes(b.try_into().unwrap()) as f64
        }),
        "|i1" => (1, true, |b| b[0] as i8 as f64),
        "|u1" => (1, true, |b| b[0] as f64),
        "<u2" => (2, true, |b| {
            u16::from_le_bytes(b.try_into().unwrap()) as f64
        }),
        "<u4" => (4, true, |b| {
            u32::from_le_bytes(b.try_into().unwrap()) as f64
        }),
        "|b1" => (1, true, |b| (b[0] != 0) as u8 as f64),
        "<f8" => (8, false, |b| f64::from_le_bytes(b.try_into().unwrap())),
        "<f4" => (4, false, |b| {
            f32::from_le_bytes(b.try_into().unwrap()) as f64
        }),
        "<f2" => (2, false, |b| {
            half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64()
        }),
        other => return Err(format!("element type '{other}' is not supported")),
    };
    let data = &bytes[start + len..];
    let want = n.checked_mul(size).ok_or("the array's size overflows")?;
    if data.len() != want {
        return Err(format!(
            "shape {shape:?} of '{descr}' needs {want} bytes of data, the file has {}",
            data.len()
        ));
    }
    Ok(Array {
        shape,
        data: data.chunks_exact(size).map(read).collect(),
        integer,
    })
}

/// The text after `'key':` up to the next top-level comma (a tuple counts as one).
fn field<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

fn shape(header: &str) -> std::result::Result<Vec<usize>, String> {
    let s = field(header, "shape").ok_or("the .npy header has no 'shape'")?;
    let s = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or("the .npy 'shape' is not a tuple")?;
    s.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<usize>()
                .map_err(|_| format!("bad size `{d}` in the .npy shape"))
        })
        .collect()
}

/// Write `data` of `shape` as `<f4` (or `<f8` with `f64_data`).
pub fn write(path: &Path, shape: &[usize], data: &[f64], f64_data: bool) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let descr = if f64_data { "<f8" } else { "<f4" };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic, version and length take 10 bytes; pad so the data starts 64-aligned.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 8);
    out.extend(MAGIC);
    out.extend([1u8, 0]);
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for &v in data {
        if f64_data {
            out.extend(v.to_le_bytes());
        } else {
            out.extend((v as f32).to_le_bytes());
        }
    }
    std::fs::write(path, out).map_err(|e| err(format!("{}: cannot write: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_files_are_refused_after_a_bounded_read() {
        let e = read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err().0;
        assert!(e.starts_with("/dev/zero: too large to load"), "{e}");
        assert_eq!(
            read_bounded(Path::new("/dev/null"), 0).unwrap(),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn round_trip_and_header_fields() {
        let dir = std::env::temp_dir().join(format!("attnc-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        write(&p, &[2, 3], &[1.0, -2.5, 3.0, 4.0, 5.0, 6.25], false).unwrap();
        let a = read(&p).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, -2.5, 3.0, 4.0, 5.0, 6.25]);
        assert!(!a.integer);
        write(&p, &[4], &[1.0, 2.0, 3.0, 4.0], true).unwrap();
        assert_eq!(read(&p).unwrap().shape, vec![4]);
        assert!(parse(b"not numpy").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
