//! Host buffers: [`Tensor`]s (f64 for every dtype) converted to the element type
//! compiled code reads and writes, as bytes for files and C programs.

use crate::error::describe;
use crate::lower::Boundary;
use crate::{BackendError, Result};
use attnc_ir::{DType, Tensor};

/// A typed, naturally aligned buffer for one memref argument.
pub(crate) enum HostBuffer {
    F32(Vec<f32>),
    /// f16 or bf16 bit patterns.
    Half(Vec<u16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    /// Bools, one byte each (0 or 1), and status flags.
    Bytes(Vec<u8>),
}

impl HostBuffer {
    /// The elements of `t` rounded to its dtype, as the interpreter rounds them.
    pub fn from_tensor(t: &Tensor) -> HostBuffer {
        let d = &t.data;
        match t.dtype {
            DType::F32 => HostBuffer::F32(d.iter().map(|&v| v as f32).collect()),
            DType::F16 => HostBuffer::Half(
                d.iter()
                    .map(|&v| half::f16::from_f64(v).to_bits())
                    .collect(),
            ),
            DType::BF16 => HostBuffer::Half(
                d.iter()
                    .map(|&v| half::bf16::from_f64(v).to_bits())
                    .collect(),
            ),
            DType::I32 => HostBuffer::I32(d.iter().map(|&v| v.trunc() as i64 as i32).collect()),
            DType::I64 => HostBuffer::I64(d.iter().map(|&v| v.trunc() as i64).collect()),
            DType::Bool => HostBuffer::Bytes(d.iter().map(|&v| (v != 0.0) as u8).collect()),
        }
    }

    pub fn zeroed(dtype: DType, len: usize) -> HostBuffer {
        match dtype {
            DType::F32 => HostBuffer::F32(vec![0.0; len]),
            DType::F16 | DType::BF16 => HostBuffer::Half(vec![0; len]),
            DType::I32 => HostBuffer::I32(vec![0; len]),
            DType::I64 => HostBuffer::I64(vec![0; len]),
            DType::Bool => HostBuffer::Bytes(vec![0; len]),
        }
    }

    pub fn to_tensor(&self, dtype: DType, shape: Vec<usize>) -> Tensor {
        let data: Vec<f64> = match (self, dtype) {
            (HostBuffer::F32(v), _) => v.iter().map(|&x| x as f64).collect(),
            (HostBuffer::Half(v), DType::BF16) => v
                .iter()
                .map(|&x| half::bf16::from_bits(x).to_f64())
                .collect(),
            (HostBuffer::Half(v), _) => v
                .iter()
                .map(|&x| half::f16::from_bits(x).to_f64())
                .collect(),
            (HostBuffer::I32(v), _) => v.iter().map(|&x| x as f64).collect(),
            (HostBuffer::I64(v), _) => v.iter().map(|&x| x as f64).collect(),
            (HostBuffer::Bytes(v), _) => v.iter().map(|&x| (x != 0) as u8 as f64).collect(),
        };
        Tensor::new(dtype, shape, data)
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            HostBuffer::F32(v) => v.as_mut_ptr().cast(),
            HostBuffer::Half(v) => v.as_mut_ptr().cast(),
            HostBuffer::I32(v) => v.as_mut_ptr().cast(),
            HostBuffer::I64(v) => v.as_mut_ptr().cast(),
            HostBuffer::Bytes(v) => v.as_mut_ptr(),
        }
    }

    /// Elements (not bytes).
    pub fn len(&self) -> usize {
        match self {
            HostBuffer::F32(v) => v.len(),
            HostBuffer::Half(v) => v.len(),
            HostBuffer::I32(v) => v.len(),
            HostBuffer::I64(v) => v.len(),
            HostBuffer::Bytes(v) => v.len(),
        }
    }

    /// The elements as little-endian bytes, the layout compiled code reads.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            HostBuffer::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostBuffer::Half(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostBuffer::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostBuffer::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostBuffer::Bytes(v) => v.clone(),
        }
    }

    /// Elements of `dtype` from little-endian bytes (`None` if the length is not a
    /// whole number of elements).
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Option<HostBuffer> {
        let n = dtype.size_bytes() as usize;
        if !bytes.len().is_multiple_of(n) {
            return None;
        }
        let chunks = bytes.chunks_exact(n);
        Some(match dtype {
            DType::F32 => HostBuffer::F32(
                chunks
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            DType::F16 | DType::BF16 => {
                HostBuffer::Half(chunks.map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
            }
            DType::I32 => HostBuffer::I32(
                chunks
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            DType::I64 => HostBuffer::I64(
                chunks
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
            DType::Bool => HostBuffer::Bytes(bytes.to_vec()),
        })
    }

    pub fn first_byte(&self) -> u8 {
        match self {
            HostBuffer::Bytes(v) => v.first().copied().unwrap_or(0),
            _ => 0,
        }
    }
}

/// Check a binding against the graph's input or param before any compiled code sees
/// it: dtype, shape, and a data length that matches the shape.
pub(crate) fn check_binding(b: &Boundary, t: &Tensor) -> Result<()> {
    let mismatch = |got: String| BackendError::BindingMismatch {
        kind: b.kind,
        name: b.name.clone(),
        expected: describe(&b.sizes, b.dtype),
        got,
    };
    if t.dtype != b.dtype || t.shape != b.sizes {
        return Err(mismatch(describe(&t.shape, t.dtype)));
    }
    let n: usize = b.sizes.iter().product();
    if t.data.len() != n {
        return Err(mismatch(format!(
            "{} with {} elements",
            describe(&t.shape, t.dtype),
            t.data.len()
        )));
    }
    Ok(())
}

/// `t` as the little-endian bytes compiled code (and a C program calling
/// `attnc_forward`) reads: its elements rounded to its dtype, bools one byte each.
pub fn tensor_to_bytes(t: &Tensor) -> Vec<u8> {
    HostBuffer::from_tensor(t).to_bytes()
}

/// A tensor of `dtype` and `shape` from such bytes; `None` if their length is not
/// the shape's.
pub fn tensor_from_bytes(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Option<Tensor> {
    let buffer = HostBuffer::from_bytes(dtype, bytes)?;
    (buffer.len() == shape.iter().product::<usize>()).then(|| buffer.to_tensor(dtype, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_rounds_to_dtype() {
        let t = Tensor::new(DType::BF16, vec![2], vec![1.0, 1.00390625]);
        let back = HostBuffer::from_tensor(&t).to_tensor(DType::BF16, vec![2]);
        assert_eq!(back.data, vec![1.0, 1.0]);
        let b = Tensor::new(DType::Bool, vec![3], vec![0.0, 2.0, 1.0]);
        let back = HostBuffer::from_tensor(&b).to_tensor(DType::Bool, vec![3]);
        assert_eq!(back.data, vec![0.0, 1.0, 1.0]);
    }
}
