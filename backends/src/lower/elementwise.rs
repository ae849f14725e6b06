//! Elementwise families: constants (scalars, and dense tensors such as random
//! features), iota, unary / binary / compare ops, select, cast and mask expressions.
//! Each is one all-parallel `linalg.generic` whose operands are read through
//! numpy-broadcasting maps; floats are computed in f32 (see [`Elem::compute`]).

use super::emit::{tensor_type, Elem, Emitter, Generic, Map, Val};
use attnc_ir::{BinaryOp, CmpOp, Coord, Dims, MaskBinOp, MaskExpr, MaskKind, UnaryOp};

/// An all-parallel generic over `out` whose operands are broadcast into it. `body`
/// gets one scalar per operand (in its own element type) and yields an `elem`.
pub(super) fn map(
    em: &mut Emitter,
    out: &[usize],
    elem: Elem,
    operands: &[&Val],
    body: impl FnOnce(&mut Emitter, &[String]) -> String,
) -> Val {
    let init = em.empty(out, elem);
    let ins = operands
        .iter()
        .map(|v| (*v, Map::broadcast(&v.sizes, out)))
        .collect();
    em.generic(Generic::parallel(ins, init), body)
}

/// A scalar constant as a rank-0 tensor; users broadcast it.
pub(super) fn constant(em: &mut Emitter, value: f64, elem: Elem) -> Val {
    let ty = tensor_type(&[], elem);
    let lit = super::emit::literal(value, elem);
    em.tensor_op(
        format_args!("arith.constant dense<{lit}> : {ty}"),
        &[],
        elem,
    )
}

/// A constant tensor of `sizes` holding `values` (row-major), each rounded to the
/// float type `elem` once, written as the hexadecimal of its little-endian bytes.
/// `None` when `elem` is not a float.
pub(super) fn dense(em: &mut Emitter, values: &[f64], sizes: &[usize], elem: Elem) -> Option<Val> {
    use std::fmt::Write;
    let mut hex = String::with_capacity(8 * values.len());
    for &x in values {
        let bytes = match elem {
            Elem::F32 => (x as f32).to_le_bytes().to_vec(),
            Elem::F64 => x.to_le_bytes().to_vec(),
            Elem::F16 => half::f16::from_f64(x).to_le_bytes().to_vec(),
            Elem::BF16 => half::bf16::from_f64(x).to_le_bytes().to_vec(),
            _ => return None,
        };
        for b in bytes {
            let _ = write!(hex, "{b:02X}");
        }
    }
    let ty = tensor_type(sizes, elem);
    Some(em.tensor_op(
        format_args!("arith.constant dense<\"0x{hex}\"> : {ty}"),
        sizes,
        elem,
    ))
}

/// `out[i…] = i_axis`.
pub(super) fn iota(em: &mut Emitter, sizes: &[usize], axis: usize, elem: Elem) -> Val {
    map(em, sizes, elem, &[], |em, _| {
        let i = em.index(axis);
        em.convert("index_cast", &i, Elem::Index, elem)
    })
}

pub(super) fn unary(em: &mut Emitter, op: UnaryOp, x: &Val) -> Val {
    let elem = x.elem;
    map(em, &x.sizes.clone(), elem, &[x], |em, args| {
        if elem.is_float() {
            let c = elem.compute();
            let v = em.extend(&args[0], elem, c);
            let r = unary_float(em, op, &v, c);
            em.narrow(&r, c, elem)
        } else {
            unary_int(em, op, &args[0], elem)
        }
    })
}

/// The unary ops on a float scalar of type `f`, with the formulas of the op docs.
fn unary_float(em: &mut Emitter, op: UnaryOp, x: &str, f: Elem) -> String {
    match op {
        UnaryOp::Neg => em.op(format_args!("arith.negf {x} : {}", f.mlir())),
        UnaryOp::Abs => em.math1("absf", x, f),
        UnaryOp::Exp => em.math1("exp", x, f),
        UnaryOp::Log => em.math1("log", x, f),
        UnaryOp::Sqrt => em.math1("sqrt", x, f),
        UnaryOp::Rsqrt => em.math1("rsqrt", x, f),
        UnaryOp::Tanh => em.math1("tanh", x, f),
        UnaryOp::Sigmoid => sigmoid(em, x, f),
        UnaryOp::Silu => {
            let s = sigmoid(em, x, f);
            em.arith2("mulf", x, &s, f)
        }
        // x·Φ(x) = x/2 · (1 + erf(x/√2))
        UnaryOp::Gelu => {
            let k = em.constant(std::f64::consts::FRAC_1_SQRT_2, f);
            let s = em.arith2("mulf", x, &k, f);
            let e = em.math1("erf", &s, f);
            half_x_times_one_plus(em, x, &e, f)
        }
        // x/2 · (1 + tanh(√(2/π) · (x + 0.044715·x³)))
        UnaryOp::GeluTanh => {
            let x2 = em.arith2("mulf", x, x, f);
            let x3 = em.arith2("mulf", &x2, x, f);
            let c = em.constant(0.044715, f);
            let cx3 = em.arith2("mulf", &c, &x3, f);
            let inner = em.arith2("addf", x, &cx3, f);
            let k = em.constant((2.0 / std::f64::consts::PI).sqrt(), f);
            let arg = em.arith2("mulf", &k, &inner, f);
            let t = em.math1("tanh", &arg, f);
            half_x_times_one_plus(em, x, &t, f)
        }
        // x > 0 ? x : eˣ - 1
        UnaryOp::Elu => {
            let zero = em.constant(0.0, f);
            let one = em.constant(1.0, f);
            let e = em.math1("exp", x, f);
            let em1 = em.arith2("subf", &e, &one, f);
            let pos = em.cmpf("ogt", x, &zero, f);
            em.select(&pos, x, &em1, f)
        }
        // x < 0 ? 0 : x, so NaN stays NaN.
        UnaryOp::Relu => {
            let zero = em.constant(0.0, f);
            let neg = em.cmpf("olt", x, &zero, f);
            em.select(&neg, &zero, x, f)
        }
    }
}

/// 1 / (1 + e⁻ˣ)
fn sigmoid(em: &mut Emitter, x: &str, f: Elem) -> String {
    let one = em.constant(1.0, f);
    let neg = em.op(format_args!("arith.negf {x} : {}", f.mlir()));
    let e = em.math1("exp", &neg, f);
    let d = em.arith2("addf", &one, &e, f);
    em.arith2("divf", &one, &d, f)
}

/// x/2 · (1 + t)
fn half_x_times_one_plus(em: &mut Emitter, x: &str, t: &str, f: Elem) -> String {
    let one = em.constant(1.0, f);
    let half = em.constant(0.5, f);
    let s = em.arith2("addf", &one, t, f);
    let hx = em.arith2("mulf", &half, x, f);
    em.arith2("mulf", &hx, &s, f)
}

/// The unary ops that also exist on integers (`allows_int`): neg, abs, relu.
fn unary_int(em: &mut Emitter, op: UnaryOp, x: &str, i: Elem) -> String {
    let zero = em.constant(0.0, i);
    match op {
        UnaryOp::Neg => em.arith2("subi", &zero, x, i),
        UnaryOp::Abs => em.op(format_args!("math.absi {x} : {}", i.mlir())),
        // The IR's type rules admit no other op on integers.
        _ => em.arith2("maxsi", x, &zero, i),
    }
}

pub(super) fn binary(em: &mut Emitter, op: BinaryOp, a: &Val, b: &Val, out: &[usize]) -> Val {
    let elem = a.elem;
    map(em, out, elem, &[a, b], |em, args| {
        if elem.is_float() {
            let c = elem.compute();
            let x = em.extend(&args[0], elem, c);
            let y = em.extend(&args[1], elem, c);
            let r = binary_float(em, op, &x, &y, c);
            em.narrow(&r, c, elem)
        } else {
            binary_int(em, op, &args[0], &args[1], elem)
        }
    })
}

fn binary_float(em: &mut Emitter, op: BinaryOp, a: &str, b: &str, f: Elem) -> String {
    match op {
        BinaryOp::Add => em.arith2("addf", a, b, f),
        BinaryOp::Sub => em.arith2("subf", a, b, f),
        BinaryOp::Mul => em.arith2("mulf", a, b, f),
        BinaryOp::Div => em.arith2("divf", a, b, f),
        // NaN-propagating, as the interpreter's (and numpy's).
        BinaryOp::Max => em.arith2("maximumf", a, b, f),
        BinaryOp::Min => em.arith2("minimumf", a, b, f),
        BinaryOp::Pow => em.op(format_args!("math.powf {a}, {b} : {}", f.mlir())),
    }
}

fn binary_int(em: &mut Emitter, op: BinaryOp, a: &str, b: &str, i: Elem) -> String {
    match op {
        BinaryOp::Add => em.arith2("addi", a, b, i),
        BinaryOp::Sub => em.arith2("subi", a, b, i),
        BinaryOp::Mul => em.arith2("muli", a, b, i),
        BinaryOp::Div => int_division(em, a, b, i),
        BinaryOp::Max => em.arith2("maxsi", a, b, i),
        BinaryOp::Min => em.arith2("minsi", a, b, i),
        // Through f64, then back with Rust's saturating conversion.
        BinaryOp::Pow => {
            let x = em.convert("sitofp", a, i, Elem::F64);
            let y = em.convert("sitofp", b, i, Elem::F64);
            let p = em.op(format_args!("math.powf {x}, {y} : f64"));
            float_to_int(em, &p, Elem::F64, i)
        }
    }
}

/// Integer division truncating toward zero, MIN / -1 wrapping to MIN (as the
/// interpreter's `wrapping_div`). A zero divisor gives 0 here, never a trap; the node's
/// run-time check ([`any_zero`]) reports it as the error it is.
fn int_division(em: &mut Emitter, a: &str, b: &str, i: Elem) -> String {
    let zero = em.constant(0.0, i);
    let one = em.constant(1.0, i);
    let minus_one = em.constant(-1.0, i);
    let by_zero = em.cmpi("eq", b, &zero, i);
    let by_minus_one = em.cmpi("eq", b, &minus_one, i);
    let bad = em.arith2("ori", &by_zero, &by_minus_one, Elem::I1);
    let divisor = em.select(&bad, &one, b, i);
    let q = em.arith2("divsi", a, &divisor, i);
    // a / -1 = 0 - a, wrapping.
    let negated = em.arith2("subi", &zero, a, i);
    let q = em.select(&by_minus_one, &negated, &q, i);
    em.select(&by_zero, &zero, &q, i)
}

/// The status flag of an integer division: 1 if any divisor is 0.
pub(super) fn any_zero(em: &mut Emitter, b: &Val) -> Val {
    let i = b.elem;
    super::reduce::any(em, b, |em, v| {
        let zero = em.constant(0.0, i);
        em.cmpi("eq", v, &zero, i)
    })
}

/// Signed division or remainder that is 0 where Rust's `checked_div` / `checked_rem`
/// fail (divisor 0, or MIN / -1), as [`MaskExpr::eval`]: LLVM would trap there.
fn guarded_division(em: &mut Emitter, op: &str, a: &str, b: &str, i: Elem) -> String {
    let zero = em.constant(0.0, i);
    let one = em.constant(1.0, i);
    let minus_one = em.constant(-1.0, i);
    let min = em.op(format_args!("arith.constant {} : {}", int_min(i), i.mlir()));
    let by_zero = em.cmpi("eq", b, &zero, i);
    let a_min = em.cmpi("eq", a, &min, i);
    let b_minus_one = em.cmpi("eq", b, &minus_one, i);
    let overflow = em.arith2("andi", &a_min, &b_minus_one, Elem::I1);
    let bad = em.arith2("ori", &by_zero, &overflow, Elem::I1);
    let divisor = em.select(&bad, &one, b, i);
    let q = em.arith2(op, a, &divisor, i);
    em.select(&bad, &zero, &q, i)
}

fn int_min(i: Elem) -> i64 {
    match i {
        Elem::I8 => i8::MIN as i64,
        Elem::I32 => i32::MIN as i64,
        _ => i64::MIN,
    }
}

pub(super) fn compare(em: &mut Emitter, op: CmpOp, a: &Val, b: &Val, out: &[usize]) -> Val {
    let elem = a.elem;
    map(em, out, Elem::I1, &[a, b], |em, args| {
        if elem.is_float() {
            let c = elem.compute();
            let x = em.extend(&args[0], elem, c);
            let y = em.extend(&args[1], elem, c);
            // Ordered predicates (false on NaN) except `ne`, as Rust's operators.
            let pred = match op {
                CmpOp::Lt => "olt",
                CmpOp::Le => "ole",
                CmpOp::Gt => "ogt",
                CmpOp::Ge => "oge",
                CmpOp::Eq => "oeq",
                CmpOp::Ne => "une",
            };
            em.cmpf(pred, &x, &y, c)
        } else {
            let pred = match op {
                CmpOp::Lt => "slt",
                CmpOp::Le => "sle",
                CmpOp::Gt => "sgt",
                CmpOp::Ge => "sge",
                CmpOp::Eq => "eq",
                CmpOp::Ne => "ne",
            };
            em.cmpi(pred, &args[0], &args[1], elem)
        }
    })
}

pub(super) fn select(em: &mut Emitter, cond: &Val, a: &Val, b: &Val, out: &[usize]) -> Val {
    let elem = a.elem;
    map(em, out, elem, &[cond, a, b], |em, args| {
        em.select(&args[0], &args[1], &args[2], elem)
    })
}

pub(super) fn cast(em: &mut Emitter, x: &Val, to: Elem) -> Val {
    if x.elem == to {
        return x.clone();
    }
    let from = x.elem;
    map(em, &x.sizes.clone(), to, &[x], |em, args| {
        convert(em, &args[0], from, to)
    })
}

/// One scalar from `from` to `to`, with the interpreter's rounding: floats to ints
/// truncate toward zero (saturating), anything to bool is `!= 0`, bools are 0 or 1.
fn convert(em: &mut Emitter, x: &str, from: Elem, to: Elem) -> String {
    let f32 = Elem::F32;
    match (from, to) {
        _ if from == to => x.to_string(),
        (Elem::I1, t) if t.is_float() => {
            let v = em.convert("uitofp", x, Elem::I1, f32);
            em.narrow(&v, f32, t)
        }
        (Elem::I1, t) => em.convert("extui", x, Elem::I1, t),
        (f, Elem::I1) if f.is_float() => {
            let zero = em.constant(0.0, f);
            em.cmpf("une", x, &zero, f)
        }
        (i, Elem::I1) => {
            let zero = em.constant(0.0, i);
            em.cmpi("ne", x, &zero, i)
        }
        (f, t) if f.is_float() && t.is_float() => {
            let v = em.extend(x, f, f32);
            if t == Elem::F64 {
                em.extend(&v, f32, t)
            } else {
                em.narrow(&v, f32, t)
            }
        }
        (f, i) if f.is_float() => {
            let v = em.extend(x, f, f.compute());
            float_to_int(em, &v, f.compute(), i)
        }
        (i, t) if t.is_float() => {
            let v = em.convert("sitofp", x, i, f32);
            em.narrow(&v, f32, t)
        }
        (i, j) if int_bits(i) < int_bits(j) => em.convert("extsi", x, i, j),
        (i, j) => em.convert("trunci", x, i, j),
    }
}

fn int_bits(i: Elem) -> u32 {
    match i {
        Elem::I1 => 1,
        Elem::I8 => 8,
        Elem::I32 => 32,
        _ => 64,
    }
}

/// Float to integer as the interpreter rounds: truncate toward zero, saturate to i64
/// (NaN gives 0, like Rust's `as`), then wrap to i32 if that is the target.
/// `fptosi` alone yields poison out of range, which must never reach an index.
pub(super) fn float_to_int(em: &mut Emitter, x: &str, f: Elem, i: Elem) -> String {
    let i64t = Elem::I64;
    // ±2^63 are exact in every float type; anything at or past them saturates.
    let limit = em.constant(2f64.powi(63), f);
    let neg_limit = em.constant(-(2f64.powi(63)), f);
    let zero = em.constant(0.0, f);
    let nan = em.cmpf("uno", x, x, f);
    let above = em.cmpf("oge", x, &limit, f);
    let below = em.cmpf("olt", x, &neg_limit, f);
    let out_of_range = em.arith2("ori", &above, &below, Elem::I1);
    let unsafe_input = em.arith2("ori", &nan, &out_of_range, Elem::I1);
    let safe = em.select(&unsafe_input, &zero, x, f);
    let v = em.convert("fptosi", &safe, f, i64t);
    let max = em.op(format_args!("arith.constant {} : i64", i64::MAX));
    let min = em.op(format_args!("arith.constant {} : i64", i64::MIN));
    let v = em.select(&above, &max, &v, i64t);
    let wide = em.select(&below, &min, &v, i64t);
    if i == i64t {
        wide
    } else {
        em.convert("trunci", &wide, i64t, i)
    }
}

/// A mask over the trailing `(b, h, q, k)` coordinates: a rank-2 mask is `[q, k]`.
/// Coordinates the mask does not have are 0; dimension names are constants from
/// `dims`. Arithmetic wraps and division by zero gives 0, as [`MaskExpr::eval`].
pub(super) fn mask(em: &mut Emitter, expr: &MaskExpr, sizes: &[usize], dims: &Dims) -> Val {
    let first = 4 - sizes.len().min(4);
    map(em, sizes, Elem::I1, &[], |em, _| {
        let mut coords = Vec::with_capacity(4);
        for c in 0..4 {
            coords.push(if c >= first {
                let i = em.index(c - first);
                em.convert("index_cast", &i, Elem::Index, Elem::I64)
            } else {
                em.constant(0.0, Elem::I64)
            });
        }
        mask_holds(em, expr, &coords, dims)
    })
}

/// Whether `expr` holds at `coords` (the `i64` values of `b, h, q, k`): an `i1`, an
/// integer-valued expression holding where it is nonzero (as [`MaskExpr::holds`]).
pub(super) fn mask_holds(
    em: &mut Emitter,
    expr: &MaskExpr,
    coords: &[String],
    dims: &Dims,
) -> String {
    let (v, kind) = mask_value(em, expr, coords, dims);
    match kind {
        MaskKind::Bool => v,
        MaskKind::Int => {
            let zero = em.constant(0.0, Elem::I64);
            em.cmpi("ne", &v, &zero, Elem::I64)
        }
    }
}

/// One mask subexpression: an `i64` or an `i1`. Both sides of `&&` / `||` are
/// evaluated; that is the same as short-circuiting because nothing here can fail.
fn mask_value(
    em: &mut Emitter,
    e: &MaskExpr,
    coords: &[String],
    dims: &Dims,
) -> (String, MaskKind) {
    let i64t = Elem::I64;
    match e {
        MaskExpr::Int(n) => (int_constant(em, *n), MaskKind::Int),
        MaskExpr::Coord(c) => (coords[coord_index(*c)].clone(), MaskKind::Int),
        MaskExpr::Dim(d) => {
            let n = dims.get(d).unwrap_or(0) as i64;
            (int_constant(em, n), MaskKind::Int)
        }
        MaskExpr::Neg(x) => {
            let (v, _) = mask_value(em, x, coords, dims);
            let zero = int_constant(em, 0);
            (em.arith2("subi", &zero, &v, i64t), MaskKind::Int)
        }
        MaskExpr::Not(x) => {
            let (v, _) = mask_value(em, x, coords, dims);
            let t = em.op("arith.constant true");
            (em.arith2("xori", &v, &t, Elem::I1), MaskKind::Bool)
        }
        MaskExpr::Bin(op, l, r) => {
            let (a, _) = mask_value(em, l, coords, dims);
            let (b, _) = mask_value(em, r, coords, dims);
            mask_binary(em, *op, &a, &b)
        }
        MaskExpr::RandomBlocks(args) => {
            // A lookup in the module's bitmap (`kernels::declare_random_tables`).
            let (symbol, ty, n) = crate::kernels::random_table(args, dims);
            let (qb, _) = mask_value(em, &args[0], coords, dims);
            let (kb, _) = mask_value(em, &args[1], coords, dims);
            let zero = int_constant(em, 0);
            let nv = int_constant(em, n);
            let mut ok = em.op("arith.constant true");
            for x in [&qb, &kb] {
                let lo = em.cmpi("sge", x, &zero, i64t);
                let hi = em.cmpi("slt", x, &nv, i64t);
                ok = em.arith2("andi", &ok, &lo, Elem::I1);
                ok = em.arith2("andi", &ok, &hi, Elem::I1);
            }
            let row = em.arith2("muli", &qb, &nv, i64t);
            let at = em.arith2("addi", &row, &kb, i64t);
            let at = em.select(&ok, &at, &zero, i64t);
            let at = em.convert("index_cast", &at, i64t, Elem::Index);
            let table = em.op(format_args!("memref.get_global @{symbol} : {ty}"));
            let byte = em.op(format_args!("memref.load {table}[{at}] : {ty}"));
            let zero8 = em.op("arith.constant 0 : i8");
            let held = em.cmpi("ne", &byte, &zero8, Elem::I8);
            (em.arith2("andi", &ok, &held, Elem::I1), MaskKind::Bool)
        }
    }
}

fn mask_binary(em: &mut Emitter, op: MaskBinOp, a: &str, b: &str) -> (String, MaskKind) {
    use MaskBinOp::*;
    let i64t = Elem::I64;
    let int = |v| (v, MaskKind::Int);
    let cond = |v| (v, MaskKind::Bool);
    match op {
        Add => int(em.arith2("addi", a, b, i64t)),
        Sub => int(em.arith2("subi", a, b, i64t)),
        Mul => int(em.arith2("muli", a, b, i64t)),
        Div => int(guarded_division(em, "divsi", a, b, i64t)),
        Rem => int(guarded_division(em, "remsi", a, b, i64t)),
        Lt => cond(em.cmpi("slt", a, b, i64t)),
        Le => cond(em.cmpi("sle", a, b, i64t)),
        Gt => cond(em.cmpi("sgt", a, b, i64t)),
        Ge => cond(em.cmpi("sge", a, b, i64t)),
        Eq => cond(em.cmpi("eq", a, b, i64t)),
        Ne => cond(em.cmpi("ne", a, b, i64t)),
        And => cond(em.arith2("andi", a, b, Elem::I1)),
        Or => cond(em.arith2("ori", a, b, Elem::I1)),
    }
}

/// An exact i64 constant (through `f64` would round past 2^53).
fn int_constant(em: &mut Emitter, n: i64) -> String {
    em.op(format_args!("arith.constant {n} : i64"))
}

fn coord_index(c: Coord) -> usize {
    match c {
        Coord::B => 0,
        Coord::H => 1,
        Coord::Q => 2,
        Coord::K => 3,
    }
}
