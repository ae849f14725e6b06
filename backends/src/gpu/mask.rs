//! Mask expressions as scalar `arith` code in a kernel: the GPU form of the CPU
//! lowering's `mask_holds` (`lower::elementwise`), with the same rules as
//! [`attnc_ir::MaskExpr::eval`] — arithmetic wraps in i64, a division by zero or
//! `MIN / -1` gives 0, `&&` / `||` evaluate both sides (nothing can fail). BigBird's
//! `random_blocks` reads the same compile-time bitmap the CPU kernels use
//! ([`crate::kernels::declare_random_tables`]), declared in the `gpu.module`.

use super::code::W;
use super::module::Globals;
use attnc_ir::{Coord, Dims, MaskBinOp, MaskExpr};

/// Declare (once per module) the bitmaps the `random_blocks` calls of `expr` read.
pub(crate) fn declare_tables(globals: &mut Globals, expr: &MaskExpr, dims: &Dims) {
    let mut set = crate::kernels::KernelSet::default();
    crate::kernels::declare_random_tables(&mut set, expr, dims);
    for line in set.text().lines() {
        globals.add(line);
    }
}

/// Whether `expr` holds at `coords`, the `i64` values of `(b, h, q, k)`: an `i1`.
pub(crate) fn holds(w: &mut W, expr: &MaskExpr, coords: &[String; 4], dims: &Dims) -> String {
    let (v, is_bool) = value(w, expr, coords, dims);
    as_bool(w, (v, is_bool))
}

fn as_bool(w: &mut W, (v, is_bool): (String, bool)) -> String {
    if is_bool {
        return v;
    }
    let z = w.i64(0);
    w.let_(format_args!("arith.cmpi ne, {v}, {z} : i64"))
}

fn as_int(w: &mut W, (v, is_bool): (String, bool)) -> String {
    if is_bool {
        w.let_(format_args!("arith.extui {v} : i1 to i64"))
    } else {
        v
    }
}

fn coord_index(c: Coord) -> usize {
    match c {
        Coord::B => 0,
        Coord::H => 1,
        Coord::Q => 2,
        Coord::K => 3,
    }
}

/// A subexpression: an `i64` (`false`) or an `i1` (`true`).
fn value(w: &mut W, e: &MaskExpr, coords: &[String; 4], dims: &Dims) -> (String, bool) {
    match e {
        MaskExpr::Int(n) => (w.i64(*n), false),
        MaskExpr::Coord(c) => (coords[coord_index(*c)].clone(), false),
        MaskExpr::Dim(d) => (w.i64(dims.get(d).unwrap_or(0) as i64), false),
        MaskExpr::Neg(x) => {
            let v = value(w, x, coords, dims);
            let v = as_int(w, v);
            let z = w.i64(0);
            (w.let_(format_args!("arith.subi {z}, {v} : i64")), false)
        }
        MaskExpr::Not(x) => {
            let v = value(w, x, coords, dims);
            let b = as_bool(w, v);
            (w.not(&b), true)
        }
        MaskExpr::Bin(op, l, r) => {
            let lv = value(w, l, coords, dims);
            let rv = value(w, r, coords, dims);
            binary(w, *op, lv, rv)
        }
        MaskExpr::RandomBlocks(args) => {
            let (symbol, ty, n) = crate::kernels::random_table(args, dims);
            let qb = value(w, &args[0], coords, dims);
            let qb = as_int(w, qb);
            let kb = value(w, &args[1], coords, dims);
            let kb = as_int(w, kb);
            let zero = w.i64(0);
            let nv = w.i64(n);
            let mut ok = w.bool(true);
            for x in [&qb, &kb] {
                let lo = w.let_(format_args!("arith.cmpi sge, {x}, {zero} : i64"));
                let hi = w.let_(format_args!("arith.cmpi slt, {x}, {nv} : i64"));
                ok = w.and(&ok, &lo);
                ok = w.and(&ok, &hi);
            }
            let row = w.let_(format_args!("arith.muli {qb}, {nv} : i64"));
            let at = w.let_(format_args!("arith.addi {row}, {kb} : i64"));
            let at = w.select(&ok, &at, &zero, "i64");
            let at = w.index_cast(&at, "i64", "index");
            let table = w.hoisted(format!("memref.get_global @{symbol} : {ty}"));
            let byte = w.load(&table, &ty, &[&at]);
            let z8 = w.constant(0, "i8");
            let held = w.let_(format_args!("arith.cmpi ne, {byte}, {z8} : i8"));
            (w.and(&ok, &held), true)
        }
    }
}

fn binary(w: &mut W, op: MaskBinOp, l: (String, bool), r: (String, bool)) -> (String, bool) {
    use MaskBinOp::*;
    if matches!(op, And | Or) {
        let a = as_bool(w, l);
        let b = as_bool(w, r);
        return if op == And {
            (w.and(&a, &b), true)
        } else {
            (w.or(&a, &b), true)
        };
    }
    let a = as_int(w, l);
    let b = as_int(w, r);
    let int = |w: &mut W, name: &str| (w.let_(format_args!("arith.{name} {a}, {b} : i64")), false);
    let cmp = |w: &mut W, pred: &str| {
        (
            w.let_(format_args!("arith.cmpi {pred}, {a}, {b} : i64")),
            true,
        )
    };
    match op {
        Add => int(w, "addi"),
        Sub => int(w, "subi"),
        Mul => int(w, "muli"),
        Div | Rem => {
            // 0 for a zero divisor or MIN / -1, as the interpreter.
            let (z, one, m1, min) = (w.i64(0), w.i64(1), w.i64(-1), w.i64(i64::MIN));
            let by_zero = w.let_(format_args!("arith.cmpi eq, {b}, {z} : i64"));
            let a_min = w.let_(format_args!("arith.cmpi eq, {a}, {min} : i64"));
            let b_m1 = w.let_(format_args!("arith.cmpi eq, {b}, {m1} : i64"));
            let ov = w.and(&a_min, &b_m1);
            let bad = w.or(&by_zero, &ov);
            let d = w.select(&bad, &one, &b, "i64");
            let name = if op == Div { "divsi" } else { "remsi" };
            let q = w.let_(format_args!("arith.{name} {a}, {d} : i64"));
            (w.select(&bad, &z, &q, "i64"), false)
        }
        Lt => cmp(w, "slt"),
        Le => cmp(w, "sle"),
        Gt => cmp(w, "sgt"),
        Ge => cmp(w, "sge"),
        Eq => cmp(w, "eq"),
        Ne => cmp(w, "ne"),
        And | Or => unreachable_logical(w),
    }
}

/// `And` / `Or` return above; this keeps the match total without a panic.
fn unreachable_logical(w: &mut W) -> (String, bool) {
    (w.bool(false), true)
}
