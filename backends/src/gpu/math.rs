//! Scalar math on `f32` for the kernels, without libdevice: `convert-gpu-to-nvvm`
//! turns `math.exp`, `math.tanh`, `math.erf`, ... (and even `llvm.intr.sqrt`) into
//! calls of `__nv_*` functions, which would stay unresolved `.extern .func`s in the
//! PTX. So nothing here uses the `math` dialect: transcendental functions are PTX's
//! approximate instructions reached through `llvm.call_intrinsic` (opaque to MLIR,
//! lowered by LLVM's NVPTX backend) and arithmetic around them:
//!
//! - `2^x`: `ex2.approx.f32` (max relative error 2^-22, subnormals kept, `2^-inf = 0`);
//!   `e^x = 2^(x·log2 e)`.
//! - `log2 x`: `lg2.approx.f32` (max absolute error 2^-22.6 on [0.5, 2]); `ln x = log2
//!   x · ln 2`.
//! - `sqrt`: `llvm.sqrt.f32` (`sqrt.rn.f32`, correctly rounded); `rsqrt x = 1 / sqrt
//!   x` with IEEE division.
//! - `tanh`: `1 - 2/(e^(2|x|) + 1)` with its sign, an odd polynomial below 1/16
//!   (absolute error ~1e-7 everywhere; PTX's `tanh.approx` is only good to 2^-11).
//! - `erf`: Numerical Recipes' `erfc` (Chebyshev fit, fractional error < 1.2e-7).
//! - `sin` / `cos` (rotary embeddings only): the angle reduced modulo 2π in f64 first,
//!   then `sin.approx.f32` / `cos.approx.f32` on `[-π, π]` (absolute error ~2^-21).

use super::code::W;
use attnc_ir::{BinaryOp, DType, UnaryOp};

const LOG2E: f64 = std::f64::consts::LOG2_E;
const LN2: f64 = std::f64::consts::LN_2;

pub(crate) fn fop(w: &mut W, op: &str, a: &str, b: &str) -> String {
    w.let_(format_args!("arith.{op} {a}, {b} : f32"))
}

pub(crate) fn fadd(w: &mut W, a: &str, b: &str) -> String {
    fop(w, "addf", a, b)
}

pub(crate) fn fsub(w: &mut W, a: &str, b: &str) -> String {
    fop(w, "subf", a, b)
}

pub(crate) fn fmul(w: &mut W, a: &str, b: &str) -> String {
    fop(w, "mulf", a, b)
}

pub(crate) fn fdiv(w: &mut W, a: &str, b: &str) -> String {
    fop(w, "divf", a, b)
}

/// `a·b + c`, contracted into one `fma.rn.f32` by LLVM.
pub(crate) fn fma(w: &mut W, a: &str, b: &str, c: &str) -> String {
    let p = w.let_(format_args!("arith.mulf {a}, {b} fastmath<contract> : f32"));
    w.let_(format_args!("arith.addf {p}, {c} fastmath<contract> : f32"))
}

/// NaN-propagating maximum / minimum (`max.NaN.f32`).
pub(crate) fn fmax(w: &mut W, a: &str, b: &str) -> String {
    fop(w, "maximumf", a, b)
}

pub(crate) fn fmin(w: &mut W, a: &str, b: &str) -> String {
    fop(w, "minimumf", a, b)
}

pub(crate) fn fcmp(w: &mut W, pred: &str, a: &str, b: &str) -> String {
    w.let_(format_args!("arith.cmpf {pred}, {a}, {b} : f32"))
}

pub(crate) fn fneg(w: &mut W, a: &str) -> String {
    w.let_(format_args!("arith.negf {a} : f32"))
}

pub(crate) fn fselect(w: &mut W, cond: &str, a: &str, b: &str) -> String {
    w.select(cond, a, b, "f32")
}

/// `|x|`, clearing the sign bit (exact for every input, NaN and -0 included).
pub(crate) fn fabs(w: &mut W, x: &str) -> String {
    let bits = w.let_(format_args!("arith.bitcast {x} : f32 to i32"));
    let m = w.i32(0x7FFF_FFFF);
    let a = w.let_(format_args!("arith.andi {bits}, {m} : i32"));
    w.let_(format_args!("arith.bitcast {a} : i32 to f32"))
}

pub(crate) fn exp2(w: &mut W, x: &str) -> String {
    w.intrinsic("llvm.nvvm.ex2.approx.f32", &[x], &["f32"], "f32")
}

pub(crate) fn exp(w: &mut W, x: &str) -> String {
    let c = w.f32(LOG2E as f32);
    let y = fmul(w, x, &c);
    exp2(w, &y)
}

pub(crate) fn log2(w: &mut W, x: &str) -> String {
    w.intrinsic("llvm.nvvm.lg2.approx.f", &[x], &["f32"], "f32")
}

pub(crate) fn log(w: &mut W, x: &str) -> String {
    let l = log2(w, x);
    let c = w.f32(LN2 as f32);
    fmul(w, &l, &c)
}

pub(crate) fn sqrt(w: &mut W, x: &str) -> String {
    w.intrinsic("llvm.sqrt.f32", &[x], &["f32"], "f32")
}

pub(crate) fn rsqrt(w: &mut W, x: &str) -> String {
    let s = sqrt(w, x);
    let one = w.f32(1.0);
    fdiv(w, &one, &s)
}

pub(crate) fn floor(w: &mut W, x: &str) -> String {
    w.intrinsic("llvm.floor.f32", &[x], &["f32"], "f32")
}

/// Horner's scheme: `c[0] + x·(c[1] + x·(...))`.
fn poly(w: &mut W, x: &str, c: &[f64]) -> String {
    let mut acc = w.f32(c[c.len() - 1] as f32);
    for &k in c[..c.len() - 1].iter().rev() {
        let kc = w.f32(k as f32);
        acc = fma(w, &acc, x, &kc);
    }
    acc
}

pub(crate) fn tanh(w: &mut W, x: &str) -> String {
    let a = fabs(w, x);
    // Small |x|: x·(1 - x²/3 + 2x⁴/15 - 17x⁶/315).
    let x2 = fmul(w, x, x);
    let p = poly(w, &x2, &[1.0, -1.0 / 3.0, 2.0 / 15.0, -17.0 / 315.0]);
    let small = fmul(w, x, &p);
    // Otherwise 1 - 2/(e^(2|x|) + 1): exactly 1 once e^(2|x|) overflows.
    let c = w.f32((2.0 * LOG2E) as f32);
    let y = fmul(w, &a, &c);
    let e = exp2(w, &y);
    let one = w.f32(1.0);
    let two = w.f32(2.0);
    let d = fadd(w, &e, &one);
    let r = fdiv(w, &two, &d);
    let big = fsub(w, &one, &r);
    let zero = w.f32(0.0);
    let neg = fcmp(w, "olt", x, &zero);
    let nbig = fneg(w, &big);
    let big = fselect(w, &neg, &nbig, &big);
    let limit = w.f32(0.0625);
    let is_small = fcmp(w, "olt", &a, &limit);
    fselect(w, &is_small, &small, &big)
}

/// `erf(x)` as `±(1 - erfc(|x|))`, `erfc` by Numerical Recipes' `erfcc`.
pub(crate) fn erf(w: &mut W, x: &str) -> String {
    let z = fabs(w, x);
    let one = w.f32(1.0);
    let half = w.f32(0.5);
    let d = fma(w, &half, &z, &one);
    let t = fdiv(w, &one, &d);
    let p = poly(
        w,
        &t,
        &[
            -1.26551223,
            1.00002368,
            0.37409196,
            0.09678418,
            -0.18628806,
            0.27886807,
            -1.13520398,
            1.48851587,
            -0.82215223,
            0.17087277,
        ],
    );
    let z2 = fmul(w, &z, &z);
    let arg = fsub(w, &p, &z2);
    let e = exp(w, &arg);
    let erfc = fmul(w, &t, &e);
    let pos = fsub(w, &one, &erfc);
    let neg = fsub(w, &erfc, &one);
    let zero = w.f32(0.0);
    let ge = fcmp(w, "oge", x, &zero);
    fselect(w, &ge, &pos, &neg)
}

pub(crate) fn sigmoid(w: &mut W, x: &str) -> String {
    let n = fneg(w, x);
    let e = exp(w, &n);
    let one = w.f32(1.0);
    let d = fadd(w, &one, &e);
    fdiv(w, &one, &d)
}

/// `(sin θ, cos θ)` for an f64 angle: reduced to `[-π, π]` in f64, then PTX's
/// approximations in f32.
pub(crate) fn sin_cos_f64(w: &mut W, angle: &str) -> (String, String) {
    let tau = std::f64::consts::TAU;
    let inv = w.f64(1.0 / tau);
    let q = w.let_(format_args!("arith.mulf {angle}, {inv} : f64"));
    let n = w.intrinsic("llvm.roundeven.f64", &[&q], &["f64"], "f64");
    let t = w.f64(tau);
    let nt = w.let_(format_args!("arith.mulf {n}, {t} : f64"));
    let r = w.let_(format_args!("arith.subf {angle}, {nt} : f64"));
    let r = w.let_(format_args!("arith.truncf {r} : f64 to f32"));
    let s = w.intrinsic("llvm.nvvm.sin.approx.f", &[&r], &["f32"], "f32");
    let c = w.intrinsic("llvm.nvvm.cos.approx.f", &[&r], &["f32"], "f32");
    (s, c)
}

/// A unary op on an f32 value, with the formulas of the op docs.
pub(crate) fn unary_f32(w: &mut W, op: UnaryOp, x: &str) -> String {
    match op {
        UnaryOp::Neg => fneg(w, x),
        UnaryOp::Abs => fabs(w, x),
        UnaryOp::Exp => exp(w, x),
        UnaryOp::Log => log(w, x),
        UnaryOp::Sqrt => sqrt(w, x),
        UnaryOp::Rsqrt => rsqrt(w, x),
        UnaryOp::Tanh => tanh(w, x),
        UnaryOp::Sigmoid => sigmoid(w, x),
        UnaryOp::Silu => {
            let s = sigmoid(w, x);
            fmul(w, x, &s)
        }
        // x/2 · (1 + erf(x/√2))
        UnaryOp::Gelu => {
            let k = w.f32(std::f32::consts::FRAC_1_SQRT_2);
            let s = fmul(w, x, &k);
            let e = erf(w, &s);
            half_x_times_one_plus(w, x, &e)
        }
        // x/2 · (1 + tanh(√(2/π) · (x + 0.044715·x³)))
        UnaryOp::GeluTanh => {
            let x2 = fmul(w, x, x);
            let x3 = fmul(w, &x2, x);
            let c = w.f32(0.044715);
            let inner = fma(w, &c, &x3, x);
            let k = w.f32((2.0 / std::f64::consts::PI).sqrt() as f32);
            let arg = fmul(w, &k, &inner);
            let t = tanh(w, &arg);
            half_x_times_one_plus(w, x, &t)
        }
        // x > 0 ? x : eˣ - 1
        UnaryOp::Elu => {
            let zero = w.f32(0.0);
            let one = w.f32(1.0);
            let e = exp(w, x);
            let em1 = fsub(w, &e, &one);
            let pos = fcmp(w, "ogt", x, &zero);
            fselect(w, &pos, x, &em1)
        }
        // x < 0 ? 0 : x, so NaN stays NaN.
        UnaryOp::Relu => {
            let zero = w.f32(0.0);
            let neg = fcmp(w, "olt", x, &zero);
            fselect(w, &neg, &zero, x)
        }
    }
}

fn half_x_times_one_plus(w: &mut W, x: &str, t: &str) -> String {
    let one = w.f32(1.0);
    let half = w.f32(0.5);
    let s = fadd(w, &one, t);
    let hx = fmul(w, &half, x);
    fmul(w, &hx, &s)
}

/// `a^b` in f32 as `2^(b·log2|a|)`, with the sign of an odd integer power of a
/// negative base, NaN for a non-integer power of one, and `x^0 = 1^y = 1`.
pub(crate) fn pow(w: &mut W, a: &str, b: &str) -> String {
    let abs = fabs(w, a);
    let l = log2(w, &abs);
    let y = fmul(w, b, &l);
    let r = exp2(w, &y);
    let fb = floor(w, b);
    let integral = fcmp(w, "oeq", &fb, b);
    let half = w.f32(0.5);
    let h = fmul(w, b, &half);
    let fh = floor(w, &h);
    let odd = fcmp(w, "une", &fh, &h);
    let odd = w.and(&integral, &odd);
    let neg_r = fneg(w, &r);
    let signed = fselect(w, &odd, &neg_r, &r);
    let nan = w.f32(f32::NAN);
    let neg_base = fselect(w, &integral, &signed, &nan);
    let zero = w.f32(0.0);
    let one = w.f32(1.0);
    let is_neg = fcmp(w, "olt", a, &zero);
    let v = fselect(w, &is_neg, &neg_base, &r);
    let b0 = fcmp(w, "oeq", b, &zero);
    let a1 = fcmp(w, "oeq", a, &one);
    let trivial = w.or(&b0, &a1);
    fselect(w, &trivial, &one, &v)
}

/// A binary op on f32 values.
pub(crate) fn binary_f32(w: &mut W, op: BinaryOp, a: &str, b: &str) -> String {
    match op {
        BinaryOp::Add => fadd(w, a, b),
        BinaryOp::Sub => fsub(w, a, b),
        BinaryOp::Mul => fmul(w, a, b),
        BinaryOp::Div => fdiv(w, a, b),
        BinaryOp::Max => fmax(w, a, b),
        BinaryOp::Min => fmin(w, a, b),
        BinaryOp::Pow => pow(w, a, b),
    }
}

/// The MLIR element type a tensor of `dtype` is stored as in device memory (bools
/// are bytes, 0 or 1).
pub(crate) fn storage(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::I32 => "i32",
        DType::I64 => "i64",
        DType::Bool => "i8",
    }
}

/// The type values of `dtype` are computed in: floats in f32, bools as `i1`.
pub(crate) fn compute(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => "f32",
        DType::I32 => "i32",
        DType::I64 => "i64",
        DType::Bool => "i1",
    }
}

/// A stored element (as loaded) in its compute type.
pub(crate) fn widen(w: &mut W, v: &str, dtype: DType) -> String {
    match dtype {
        DType::F16 | DType::BF16 => {
            let s = storage(dtype);
            w.let_(format_args!("arith.extf {v} : {s} to f32"))
        }
        DType::Bool => {
            let z = w.constant(0, "i8");
            w.let_(format_args!("arith.cmpi ne, {v}, {z} : i8"))
        }
        _ => v.to_string(),
    }
}

/// A computed value in its storage type (rounding half floats to nearest even).
pub(crate) fn narrow(w: &mut W, v: &str, dtype: DType) -> String {
    match dtype {
        DType::F16 | DType::BF16 => {
            let s = storage(dtype);
            w.let_(format_args!("arith.truncf {v} : f32 to {s}"))
        }
        DType::Bool => w.let_(format_args!("arith.extui {v} : i1 to i8")),
        _ => v.to_string(),
    }
}

/// A computed value rounded as a result of `dtype` is (half floats: to their type).
pub(crate) fn round(w: &mut W, v: &str, dtype: DType) -> String {
    match dtype {
        DType::F16 | DType::BF16 => {
            let n = narrow(w, v, dtype);
            widen(w, &n, dtype)
        }
        _ => v.to_string(),
    }
}

/// Load element `at` of a 1-D buffer of `dtype` holding `n` elements, widened.
pub(crate) fn load(w: &mut W, buf: &str, dtype: DType, n: usize, at: &str) -> String {
    let ty = memref(dtype, n);
    let v = w.load(buf, &ty, &[at]);
    widen(w, &v, dtype)
}

/// Store computed value `v` at element `at` of a 1-D buffer of `dtype`.
pub(crate) fn store(w: &mut W, v: &str, buf: &str, dtype: DType, n: usize, at: &str) {
    let ty = memref(dtype, n);
    let s = narrow(w, v, dtype);
    w.store(&s, buf, &ty, &[at]);
}

/// The kernel parameter type of a buffer: 1-D, static, dense.
pub(crate) fn memref(dtype: DType, n: usize) -> String {
    format!("memref<{}x{}>", n.max(1), storage(dtype))
}

/// A literal of `dtype` in its compute type, rounded as the interpreter rounds a
/// constant (integers truncate and wrap, bools are `!= 0`, half floats round).
pub(crate) fn literal(w: &mut W, value: f64, dtype: DType) -> String {
    match dtype {
        DType::F32 => w.f32(value as f32),
        DType::F16 => w.f32(half::f16::from_f64(value).to_f32()),
        DType::BF16 => w.f32(half::bf16::from_f64(value).to_f32()),
        DType::I32 => w.i32(value.trunc() as i64 as i32 as i64),
        DType::I64 => w.i64(value.trunc() as i64),
        DType::Bool => w.bool(value != 0.0),
    }
}

/// An f32 to an integer as the interpreter casts: truncate toward zero, saturate to
/// i64 (NaN is 0), then wrap to i32 when that is the target. (`fptosi` alone is
/// poison out of range.)
pub(crate) fn f32_to_int(w: &mut W, x: &str, to: DType) -> String {
    let limit = w.f32(2f32.powi(63));
    let neg_limit = w.f32(-(2f32.powi(63)));
    let zero = w.f32(0.0);
    let nan = fcmp(w, "uno", x, x);
    let above = fcmp(w, "oge", x, &limit);
    let below = fcmp(w, "olt", x, &neg_limit);
    let out = w.or(&above, &below);
    let bad = w.or(&nan, &out);
    let safe = fselect(w, &bad, &zero, x);
    let v = w.let_(format_args!("arith.fptosi {safe} : f32 to i64"));
    let max = w.i64(i64::MAX);
    let min = w.i64(i64::MIN);
    let v = w.select(&above, &max, &v, "i64");
    let v = w.select(&below, &min, &v, "i64");
    if to == DType::I32 {
        w.let_(format_args!("arith.trunci {v} : i64 to i32"))
    } else {
        v
    }
}

/// A computed value of `from` as a computed value of `to`, with the interpreter's
/// rules (see [`attnc_ir::interp`]).
pub(crate) fn convert(w: &mut W, x: &str, from: DType, to: DType) -> String {
    use DType::*;
    let int_bits = |d: DType| if d == I32 { 32 } else { 64 };
    match (from, to) {
        _ if from == to => x.to_string(),
        (f, t) if f.is_float() && t.is_float() => round(w, x, t),
        (Bool, t) if t.is_float() => w.let_(format_args!("arith.uitofp {x} : i1 to f32")),
        (Bool, t) => {
            let ct = compute(t);
            w.let_(format_args!("arith.extui {x} : i1 to {ct}"))
        }
        (f, Bool) if f.is_float() => {
            let zero = w.f32(0.0);
            fcmp(w, "une", x, &zero)
        }
        (i, Bool) => {
            let ct = compute(i);
            let zero = w.constant(0, ct);
            w.let_(format_args!("arith.cmpi ne, {x}, {zero} : {ct}"))
        }
        (f, i) if f.is_float() => f32_to_int(w, x, i),
        (i, t) if t.is_float() => {
            let ct = compute(i);
            let v = w.let_(format_args!("arith.sitofp {x} : {ct} to f32"));
            round(w, &v, t)
        }
        (i, j) if int_bits(i) < int_bits(j) => w.let_(format_args!("arith.extsi {x} : i32 to i64")),
        _ => w.let_(format_args!("arith.trunci {x} : i64 to i32")),
    }
}

/// A unary op on an integer value (`allows_int`: neg, abs, relu).
pub(crate) fn unary_int(w: &mut W, op: UnaryOp, x: &str, ty: &str) -> String {
    let zero = w.constant(0, ty);
    match op {
        UnaryOp::Neg => w.let_(format_args!("arith.subi {zero}, {x} : {ty}")),
        UnaryOp::Abs => {
            let n = w.let_(format_args!("arith.subi {zero}, {x} : {ty}"));
            w.let_(format_args!("arith.maxsi {x}, {n} : {ty}"))
        }
        _ => w.let_(format_args!("arith.maxsi {x}, {zero} : {ty}")),
    }
}

/// Integer division truncating toward zero; `MIN / -1` wraps to MIN and a zero
/// divisor gives 0 (the interpreter reports that as an error; the GPU plan has no
/// status flags, see the module docs).
pub(crate) fn int_div(w: &mut W, a: &str, b: &str, ty: &str) -> String {
    let zero = w.constant(0, ty);
    let one = w.constant(1, ty);
    let minus_one = w.constant(-1, ty);
    let by_zero = w.let_(format_args!("arith.cmpi eq, {b}, {zero} : {ty}"));
    let by_m1 = w.let_(format_args!("arith.cmpi eq, {b}, {minus_one} : {ty}"));
    let bad = w.or(&by_zero, &by_m1);
    let d = w.select(&bad, &one, b, ty);
    let q = w.let_(format_args!("arith.divsi {a}, {d} : {ty}"));
    let neg = w.let_(format_args!("arith.subi {zero}, {a} : {ty}"));
    let q = w.select(&by_m1, &neg, &q, ty);
    w.select(&by_zero, &zero, &q, ty)
}
