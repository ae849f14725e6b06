//! Data movement: reshape, transpose, broadcast, concat, slice, gather / embedding,
//! and rope (which reads a partner element of the same row).
//!
//! Every result is a fresh, contiguous tensor. Views would be cheaper, but a strided
//! view that reaches a copy after bufferization becomes a call to `memrefCopy`, a
//! runtime function the JIT does not have; a later tiling issue can revisit this.
//! The exception is a slice that only ops reading it in place use (elementwise
//! generics, concats, kernels): it stays a view (see `absorbed_layouts`).

use super::elementwise::map;
use super::emit::{list, tensor_type, Elem, Emitter, Generic, Ix, Map, Val};
use super::reduce::any;

/// Collapse to 1-D, then expand to the new sizes (row-major order is unchanged).
pub(super) fn reshape(em: &mut Emitter, x: &Val, sizes: &[usize]) -> Val {
    if x.sizes == sizes {
        return x.clone();
    }
    let n: usize = x.sizes.iter().product();
    let elem = x.elem;
    let flat_ty = tensor_type(&[n], elem);
    let flat = match x.rank() {
        1 => x.clone(),
        // A scalar has no dims to collapse: expand it to [1] instead.
        0 => em.tensor_op(
            format_args!(
                "tensor.expand_shape {} [] output_shape [1] : {} into {flat_ty}",
                x.name,
                x.ty()
            ),
            &[n],
            elem,
        ),
        r => em.tensor_op(
            format_args!(
                "tensor.collapse_shape {} [{}] : {} into {flat_ty}",
                x.name,
                list(&(0..r).collect::<Vec<_>>()),
                x.ty()
            ),
            &[n],
            elem,
        ),
    };
    let ty = tensor_type(sizes, elem);
    match sizes.len() {
        1 => flat,
        0 => em.tensor_op(
            format_args!(
                "tensor.collapse_shape {} [] : {flat_ty} into {ty}",
                flat.name
            ),
            sizes,
            elem,
        ),
        r => em.tensor_op(
            format_args!(
                "tensor.expand_shape {} [{}] output_shape {} : {flat_ty} into {ty}",
                flat.name,
                list(&(0..r).collect::<Vec<_>>()),
                list(sizes)
            ),
            sizes,
            elem,
        ),
    }
}

/// `out[i_0, …] = x[i_perm⁻¹…]`: result axis `j` is input axis `perm[j]`.
pub(super) fn transpose(em: &mut Emitter, x: &Val, perm: &[usize]) -> Val {
    let sizes: Vec<usize> = perm.iter().map(|&p| x.sizes[p]).collect();
    let results = (0..x.rank())
        .map(|axis| Ix::D(perm.iter().position(|&p| p == axis).unwrap_or(axis)))
        .collect();
    let init = em.empty(&sizes, x.elem);
    let ins = vec![(x, Map::new(sizes.len(), results))];
    em.generic(Generic::parallel(ins, init), |_, args| args[0].clone())
}

pub(super) fn broadcast(em: &mut Emitter, x: &Val, sizes: &[usize]) -> Val {
    map(em, sizes, x.elem, &[x], |_, args| args[0].clone())
}

/// Copy each operand into its slot of one result: a generic writes the operand into
/// an `extract_slice` of the result, and `insert_slice` puts it back, a pattern
/// bufferization turns into in-place writes without copies.
pub(super) fn concat(em: &mut Emitter, operands: &[Val], axis: usize, sizes: &[usize]) -> Val {
    if let [only] = operands {
        return only.clone();
    }
    let elem = operands[0].elem;
    let mut dest = em.empty(sizes, elem);
    let strides = list(&vec![1; sizes.len()]);
    let mut offset = 0;
    for op in operands {
        let len = op.sizes[axis];
        if len == 0 {
            continue;
        }
        let mut offsets = vec![0; sizes.len()];
        offsets[axis] = offset;
        let (offsets, op_sizes) = (list(&offsets), list(&op.sizes));
        let slot = em.tensor_op(
            format_args!(
                "tensor.extract_slice {}{offsets} {op_sizes} {strides} : {} to {}",
                dest.name,
                dest.ty(),
                op.ty()
            ),
            &op.sizes,
            elem,
        );
        let ins = vec![(op, Map::identity(op.rank()))];
        let filled = em.generic(Generic::parallel(ins, slot), |_, args| args[0].clone());
        dest = em.tensor_op(
            format_args!(
                "tensor.insert_slice {} into {}{offsets} {op_sizes} {strides} : {} into {}",
                filled.name,
                dest.name,
                op.ty(),
                dest.ty()
            ),
            sizes,
            elem,
        );
        offset += len;
    }
    dest
}

/// Elements `start..start + sizes[axis]` along `axis`: a view (`extract_slice`),
/// for ops that read it in place; [`copy`] it into a fresh tensor for the others.
pub(super) fn slice_view(
    em: &mut Emitter,
    x: &Val,
    axis: usize,
    start: usize,
    sizes: &[usize],
) -> Val {
    let mut offsets = vec![0; x.rank()];
    offsets[axis] = start;
    em.tensor_op(
        format_args!(
            "tensor.extract_slice {}{} {} {} : {} to {}",
            x.name,
            list(&offsets),
            list(sizes),
            list(&vec![1; x.rank()]),
            x.ty(),
            tensor_type(sizes, x.elem)
        ),
        sizes,
        x.elem,
    )
}

/// `x` copied into a fresh, contiguous tensor.
pub(super) fn copy(em: &mut Emitter, x: &Val) -> Val {
    map(em, &x.sizes, x.elem, &[x], |_, args| args[0].clone())
}

/// `out[a.., i.., b..] = data[a.., indices[i..], b..]` along `axis` (embedding is
/// axis 0 of the table). Indices are clamped into range so memory stays safe; the
/// separate [`index_out_of_range`] flag reports any that were not.
pub(super) fn gather(
    em: &mut Emitter,
    data: &Val,
    indices: &Val,
    axis: usize,
    sizes: &[usize],
) -> Val {
    let n = data.sizes[axis];
    if n == 0 {
        // Nothing to read: the result is empty, or every index is out of range.
        return em.filled(sizes, data.elem, 0.0);
    }
    let ri = indices.rank();
    let idx_map = Map::new(sizes.len(), (axis..axis + ri).map(Ix::D).collect());
    let init = em.empty(sizes, data.elem);
    let idx_elem = indices.elem;
    em.generic(
        Generic::parallel(vec![(indices, idx_map)], init),
        |em, args| {
            let i = em.convert("index_cast", &args[0], idx_elem, Elem::Index);
            let zero = em.const_index(0);
            let last = em.const_index(n - 1);
            let i = em.arith2("maxsi", &i, &zero, Elem::Index);
            let i = em.arith2("minsi", &i, &last, Elem::Index);
            let coords: Vec<String> = (0..data.rank())
                .map(|p| match p.cmp(&axis) {
                    std::cmp::Ordering::Less => em.index(p),
                    std::cmp::Ordering::Equal => i.clone(),
                    std::cmp::Ordering::Greater => em.index(p - 1 + ri),
                })
                .collect();
            em.extract(data, &coords)
        },
    )
}

/// A rank-0 `i8` tensor: 1 if any of `indices` is outside `0..n`, else 0.
pub(super) fn index_out_of_range(em: &mut Emitter, indices: &Val, n: usize) -> Val {
    let i = indices.elem;
    any(em, indices, |em, v| {
        let zero = em.constant(0.0, i);
        let n = em.op(format_args!("arith.constant {n} : {}", i.mlir()));
        let below = em.cmpi("slt", v, &zero, i);
        let above = em.cmpi("sge", v, &n, i);
        em.arith2("ori", &below, &above, Elem::I1)
    })
}

/// Rotary embedding over the last axis (size d, half h = d/2), position p = index
/// along the second-to-last axis, rotate-half pairing (i, i + h), θ_j = theta^(-2j/d):
///   out[i]     = x[i]·cos(p·θ_i) - x[i+h]·sin(p·θ_i)    (i < h)
///   out[i + h] = x[i+h]·cos(p·θ_i) + x[i]·sin(p·θ_i)
/// Angles and products are computed in f64.
pub(super) fn rope(em: &mut Emitter, x: &Val, theta: f64, scaling: &attnc_ir::RopeScaling) -> Val {
    let r = x.rank();
    let d = x.sizes[r - 1];
    let (elem, f) = (x.elem, Elem::F64);
    // The inverse frequencies, one table for the op (the same definition as the
    // interpreter's): `theta^(-2j/d)`, rescaled for long contexts.
    let freqs = scaling.inv_freqs(theta, d);
    let table =
        super::elementwise::dense(em, &freqs, &[freqs.len()], f).expect("f64 is a float type");
    let magnitude = scaling.attention_factor();
    map(em, &x.sizes, elem, &[x], |em, args| {
        let v = em.extend(&args[0], elem, f);
        let mut coords: Vec<String> = (0..r - 1).map(|dim| em.index(dim)).collect();
        let i = em.index(r - 1);
        let h = em.const_index(d / 2);
        let lower = em.cmpi("ult", &i, &h, Elem::Index);
        let i_minus_h = em.arith2("subi", &i, &h, Elem::Index);
        let i_plus_h = em.arith2("addi", &i, &h, Elem::Index);
        let j = em.select(&lower, &i, &i_minus_h, Elem::Index);
        coords.push(em.select(&lower, &i_plus_h, &i_minus_h, Elem::Index));
        let partner = em.extract(x, &coords);
        let partner = em.extend(&partner, elem, f);
        let p = index_to_f64(em, &coords[r - 2]);
        let freq = em.extract(&table, &[j]);
        let angle = em.arith2("mulf", &p, &freq, f);
        let mut cos = em.math1("cos", &angle, f);
        let mut sin = em.math1("sin", &angle, f);
        if magnitude != 1.0 {
            let m = em.constant(magnitude, f);
            cos = em.arith2("mulf", &cos, &m, f);
            sin = em.arith2("mulf", &sin, &m, f);
        }
        let minus_one = em.constant(-1.0, f);
        let one = em.constant(1.0, f);
        let sign = em.select(&lower, &minus_one, &one, f);
        let a = em.arith2("mulf", &v, &cos, f);
        let b = em.arith2("mulf", &partner, &sin, f);
        let b = em.arith2("mulf", &sign, &b, f);
        let y = em.arith2("addf", &a, &b, f);
        em.narrow(&y, f, elem)
    })
}

fn index_to_f64(em: &mut Emitter, i: &str) -> String {
    let n = em.convert("index_cast", i, Elem::Index, Elem::I64);
    em.convert("sitofp", &n, Elem::I64, Elem::F64)
}
