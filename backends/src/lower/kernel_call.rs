//! Calls of the hand-scheduled kernels (`crate::kernels`) from tensor-level code.
//!
//! A kernel takes its operands as memrefs (`bufferization.to_buffer ... read_only`,
//! no copy) and writes a fresh buffer, entered back as a tensor. Half-precision
//! operands are widened to f32 first and the result narrowed once at the end — what
//! the interpreter computes (f32 accumulation, one rounding).

use super::elementwise::cast;
use super::emit::{memref_type, Elem, Emitter, Val};
use crate::kernels::attention::{attention as attention_kernel, AttentionKernel};
use crate::kernels::gemm::{gemm, Gemm};
use crate::kernels::linear::{linear as linear_kernel, LinearKernel};
use crate::kernels::moe::{moe as moe_kernel, MoeKernel, Schedule};
use crate::kernels::{strided_type, KernelSet};
use attnc_ir::{Attention, BinaryOp, Decay, Dims, MoeDispatch, MoeShared, UnaryOp};

/// `[.., m, k] × [.., k, n]` (float) through the GEMM kernel; an operand marked
/// transposed is the tensor whose last two axes it swaps (`[.., k, m]`, `[.., n, k]`).
pub(super) fn matmul(
    em: &mut Emitter,
    kernels: &mut KernelSet,
    (a, a_transposed): (&Val, bool),
    (b, b_transposed): (&Val, bool),
    out: &[usize],
) -> Val {
    let elem = a.elem;
    let a32 = cast(em, a, Elem::F32);
    let b32 = cast(em, b, Elem::F32);
    let g = Gemm {
        a: a32.sizes.clone(),
        b: b32.sizes.clone(),
        c: out.to_vec(),
        a_transposed,
        b_transposed,
    };
    let name = gemm(kernels, &g);
    let c = call(em, &name, &[&a32, &b32], out);
    cast(em, &c, elem)
}

/// The optional operands of a fused attention.
pub(super) struct Extra<'a> {
    pub bias: Option<&'a Val>,
    pub segments: Option<&'a Val>,
    pub list: Option<&'a Val>,
}

/// Fused attention (float) through the FlashAttention kernel.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    em: &mut Emitter,
    kernels: &mut KernelSet,
    op: &Attention,
    [q, k, v]: [&Val; 3],
    Extra {
        bias,
        segments,
        list,
    }: Extra,
    dims: &Dims,
) -> Val {
    let elem = q.elem;
    let q32 = cast(em, q, Elem::F32);
    let k32 = cast(em, k, Elem::F32);
    let v32 = cast(em, v, Elem::F32);
    let b32 = bias.map(|b| cast(em, b, Elem::F32));
    let spec = AttentionKernel {
        op,
        q: q32.sizes.clone(),
        k: k32.sizes.clone(),
        v: v32.sizes.clone(),
        bias: b32.as_ref().map(|b| b.sizes.clone()),
        segments: segments.map(|l| l.sizes.clone()),
        list: list.map(|l| l.sizes.clone()),
        dims,
    };
    let name = attention_kernel(kernels, &spec);
    let out = [q.sizes[0], q.sizes[1], q.sizes[2], v.sizes[3]];
    let mut inputs = vec![&q32, &k32, &v32];
    inputs.extend(b32.as_ref());
    inputs.extend(segments);
    inputs.extend(list);
    let o = call(em, &name, &inputs, &out);
    cast(em, &o, elem)
}

/// Recurrent linear attention (float, causal, unnormalized) through its kernel: the
/// decay's multipliers `exp(log_decay)` are computed here, elementwise.
pub(super) fn linear(
    em: &mut Emitter,
    kernels: &mut KernelSet,
    decay: Decay,
    [q, k, v]: [&Val; 3],
    log_decay: Option<&Val>,
) -> Val {
    let elem = q.elem;
    let q32 = cast(em, q, Elem::F32);
    let k32 = cast(em, k, Elem::F32);
    let v32 = cast(em, v, Elem::F32);
    let a = log_decay.map(|ld| {
        let ld32 = cast(em, ld, Elem::F32);
        super::elementwise::unary(em, UnaryOp::Exp, &ld32)
    });
    let spec = LinearKernel {
        q: q32.sizes.clone(),
        v: v32.sizes.clone(),
        decay: if a.is_some() { decay } else { Decay::None },
    };
    let name = linear_kernel(kernels, &spec);
    let mut inputs = vec![&q32, &k32, &v32];
    inputs.extend(a.as_ref());
    let o = call(em, &name, &inputs, &spec.out());
    cast(em, &o, elem)
}

/// `moe_dispatch(x, gate, [w_gate,] w_up, w_down, [shared..])` (float): the routed
/// experts through their kernel, shared experts (every token) through the GEMM
/// kernel and elementwise ops, added after the routed ones (the interpreter's
/// order), all in f32. Returns the result and the status flag of the gate's bound
/// (a rank-0 `i8` tensor, 1 when the gate has more non-zeros than `k` allows).
pub(super) fn moe(
    em: &mut Emitter,
    kernels: &mut KernelSet,
    op: &MoeDispatch,
    ops: &[Val],
) -> (Val, Val) {
    let elem = ops[0].elem;
    let f32s: Vec<Val> = ops.iter().map(|v| cast(em, v, Elem::F32)).collect();
    // `[w_gate,] w_up, w_down` end at `routed`.
    let routed = 3 + op.gated as usize;
    let (x, gate, up) = (&f32s[0], &f32s[1], &f32s[routed - 1]);
    let spec = MoeKernel {
        op: *op,
        t: x.sizes[0],
        d: x.sizes[1],
        e: gate.sizes[1],
        h: up.sizes[2],
        schedule: Schedule::from_env(),
    };
    let name = moe_kernel(kernels, &spec);
    let out = [spec.t, spec.d];
    let mut args = Vec::new();
    let types = spec.operand_types();
    for (v, ty) in f32s[..=routed].iter().zip(&types) {
        args.push(em.op(format_args!(
            "bufferization.to_buffer {} read_only : {} to {ty}",
            v.name,
            v.ty()
        )));
    }
    let plain = memref_type(&out, Elem::F32);
    let buffer = em.op(format_args!(
        "memref.alloc() {{alignment = 64 : i64}} : {plain}"
    ));
    args.push(em.op(format_args!(
        "memref.cast {buffer} : {plain} to {}",
        types[types.len() - 2]
    )));
    let flag = em.op("memref.alloc() : memref<i8>");
    args.push(flag.clone());
    em.stmt(format_args!(
        "func.call @{name}({}) : ({}) -> ()",
        args.join(", "),
        types.join(", ")
    ));
    let tensor = super::emit::tensor_type(&out, Elem::F32);
    let mut result = em.tensor_op(
        format_args!("bufferization.to_tensor {buffer} restrict writable : {plain} to {tensor}"),
        &out,
        Elem::F32,
    );
    let flag = em.tensor_op(
        format_args!("bufferization.to_tensor {flag} restrict writable : memref<i8> to tensor<i8>"),
        &[],
        Elem::I8,
    );
    if op.shared != MoeShared::None {
        let shared = &f32s[routed + 1..];
        let n = 2 + op.gated as usize;
        let (ws_up, ws_down) = (&shared[n - 2], &shared[n - 1]);
        let hs = ws_up.sizes[1];
        let project = |em: &mut Emitter, kernels: &mut KernelSet, w: &Val| {
            matmul(em, kernels, (x, false), (w, false), &[spec.t, hs])
        };
        let u = project(em, kernels, ws_up);
        let hidden = if op.gated {
            let g = project(em, kernels, &shared[0]);
            let a = super::elementwise::unary(em, op.activation, &g);
            super::elementwise::binary(em, BinaryOp::Mul, &a, &u, &[spec.t, hs])
        } else {
            super::elementwise::unary(em, op.activation, &u)
        };
        let mut y = matmul(em, kernels, (&hidden, false), (ws_down, false), &out);
        if op.shared == MoeShared::Gated {
            y = super::elementwise::binary(em, BinaryOp::Mul, &y, &shared[n], &out);
        }
        result = super::elementwise::binary(em, BinaryOp::Add, &result, &y, &out);
    }
    (cast(em, &result, elem), flag)
}

/// `func.call @name(inputs.., result)` on f32 operands; returns the result tensor.
pub(super) fn call(em: &mut Emitter, name: &str, inputs: &[&Val], out: &[usize]) -> Val {
    let mut args = Vec::new();
    let mut types = Vec::new();
    for v in inputs {
        let ty = strided_type(&v.sizes, v.elem.mlir());
        let m = em.op(format_args!(
            "bufferization.to_buffer {} read_only : {} to {ty}",
            v.name,
            v.ty()
        ));
        args.push(m);
        types.push(ty);
    }
    let plain = memref_type(out, Elem::F32);
    let buffer = em.op(format_args!(
        "memref.alloc() {{alignment = 64 : i64}} : {plain}"
    ));
    let ty = strided_type(out, "f32");
    let view = em.op(format_args!("memref.cast {buffer} : {plain} to {ty}"));
    args.push(view);
    types.push(ty);
    em.stmt(format_args!(
        "func.call @{name}({}) : ({}) -> ()",
        args.join(", "),
        types.join(", ")
    ));
    let tensor = super::emit::tensor_type(out, Elem::F32);
    em.tensor_op(
        format_args!("bufferization.to_tensor {buffer} restrict writable : {plain} to {tensor}"),
        out,
        Elem::F32,
    )
}
