//! The reference interpreter: evaluates any graph with plain, readable loops.
//!
//! It is the oracle for every rewrite and backend, so it favours obviousness over
//! speed. (Work in progress: evaluation is being written.)

use crate::{DType, Tensor};

/// Round every element to what `t.dtype` can hold (f32, f16, bf16; integers truncate
/// toward zero; bools become 0 or 1).
pub fn round_to_dtype(t: &mut Tensor) {
    match t.dtype {
        DType::F32 => t.data.iter_mut().for_each(|v| *v = *v as f32 as f64),
        DType::F16 => t
            .data
            .iter_mut()
            .for_each(|v| *v = half::f16::from_f64(*v).to_f64()),
        DType::BF16 => t
            .data
            .iter_mut()
            .for_each(|v| *v = half::bf16::from_f64(*v).to_f64()),
        DType::I32 => t
            .data
            .iter_mut()
            .for_each(|v| *v = (v.trunc() as i64 as i32) as f64),
        DType::I64 => t.data.iter_mut().for_each(|v| *v = v.trunc() as i64 as f64),
        DType::Bool => t.data.iter_mut().for_each(|v| *v = (*v != 0.0) as u8 as f64),
    }
}
