//! A small typed emitter for MLIR text.
//!
//! Values carry their tensor type ([`Val`]), affine maps are data ([`Map`]), and every
//! statement is written with the location of the IR node being lowered, so a verifier
//! or pass diagnostic names the model's layer and node. Scalar helpers (`arith2`,
//! `math1`, `cmpf`, ...) are used inside `linalg.generic` bodies.

use attnc_ir::DType;
use std::fmt::{self, Display, Write};

/// A scalar element type as MLIR spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    I1,
    I8,
    I32,
    I64,
    Index,
    F16,
    BF16,
    F32,
    F64,
}

impl Elem {
    pub fn mlir(self) -> &'static str {
        match self {
            Elem::I1 => "i1",
            Elem::I8 => "i8",
            Elem::I32 => "i32",
            Elem::I64 => "i64",
            Elem::Index => "index",
            Elem::F16 => "f16",
            Elem::BF16 => "bf16",
            Elem::F32 => "f32",
            Elem::F64 => "f64",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Elem::F16 | Elem::BF16 | Elem::F32 | Elem::F64)
    }

    /// The element type of a tensor of `dtype` inside the function.
    pub fn of(dtype: DType) -> Elem {
        match dtype {
            DType::F32 => Elem::F32,
            DType::F16 => Elem::F16,
            DType::BF16 => Elem::BF16,
            DType::I32 => Elem::I32,
            DType::I64 => Elem::I64,
            DType::Bool => Elem::I1,
        }
    }

    /// The element type of a `dtype` buffer passed in or out of the function. Bools
    /// cross the boundary as one byte each (0 or 1): the in-memory layout of `i1` is
    /// not something host code should rely on.
    pub fn at_boundary(dtype: DType) -> Elem {
        match dtype {
            DType::Bool => Elem::I8,
            other => Elem::of(other),
        }
    }

    /// The type arithmetic on this element type is done in: half-precision floats are
    /// computed in f32 (as the f64 reference does not round intermediates either).
    pub fn compute(self) -> Elem {
        match self {
            Elem::F16 | Elem::BF16 => Elem::F32,
            other => other,
        }
    }
}

/// `3x5xf32`, or `f32` for a scalar.
fn shape_text(sizes: &[usize], elem: Elem) -> String {
    let mut s = String::new();
    for n in sizes {
        let _ = write!(s, "{n}x");
    }
    s.push_str(elem.mlir());
    s
}

pub(crate) fn tensor_type(sizes: &[usize], elem: Elem) -> String {
    format!("tensor<{}>", shape_text(sizes, elem))
}

pub(crate) fn memref_type(sizes: &[usize], elem: Elem) -> String {
    format!("memref<{}>", shape_text(sizes, elem))
}

/// `[0, 3, 1]`: the bracketed lists of `extract_slice` / `output_shape`.
pub(crate) fn list(items: &[usize]) -> String {
    let items: Vec<String> = items.iter().map(|n| n.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// The literal of `value` as an element of `elem`, rounded as the interpreter rounds
/// a constant: integers truncate toward zero and wrap, bools are `value != 0`. Floats
/// are written in hexadecimal, which MLIR reads as the bit pattern of the type, so
/// inf and NaN survive.
pub(crate) fn literal(value: f64, elem: Elem) -> String {
    match elem {
        Elem::I1 => (value != 0.0).to_string(),
        Elem::I8 => (value.trunc() as i64 as i8).to_string(),
        Elem::I32 => (value.trunc() as i64 as i32).to_string(),
        Elem::I64 | Elem::Index => (value.trunc() as i64).to_string(),
        Elem::F64 => format!("0x{:016X}", value.to_bits()),
        Elem::F32 => format!("0x{:08X}", (value as f32).to_bits()),
        Elem::F16 => format!("0x{:04X}", half::f16::from_f64(value).to_bits()),
        Elem::BF16 => format!("0x{:04X}", half::bf16::from_f64(value).to_bits()),
    }
}

/// A tensor value: SSA name and type.
#[derive(Clone, Debug)]
pub(crate) struct Val {
    pub name: String,
    pub sizes: Vec<usize>,
    pub elem: Elem,
}

impl Val {
    pub fn ty(&self) -> String {
        tensor_type(&self.sizes, self.elem)
    }

    pub fn rank(&self) -> usize {
        self.sizes.len()
    }
}

/// One result of an indexing map: a loop dimension, or the constant 0 that reads a
/// broadcast (size-1) dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ix {
    D(usize),
    Zero,
}

/// An affine map from `dims` loop dimensions to one index per operand dimension.
#[derive(Clone, Debug)]
pub(crate) struct Map {
    pub dims: usize,
    pub results: Vec<Ix>,
}

impl Map {
    pub fn new(dims: usize, results: Vec<Ix>) -> Map {
        Map { dims, results }
    }

    pub fn identity(dims: usize) -> Map {
        Map::new(dims, (0..dims).map(Ix::D).collect())
    }

    /// numpy broadcasting: an operand of `sizes` read in a loop nest over `out`. Leading
    /// dimensions the operand lacks are dropped; its size-1 dimensions read index 0.
    pub fn broadcast(sizes: &[usize], out: &[usize]) -> Map {
        let offset = out.len() - sizes.len();
        let results = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                if n == 1 && out[offset + i] != 1 {
                    Ix::Zero
                } else {
                    Ix::D(offset + i)
                }
            })
            .collect();
        Map::new(out.len(), results)
    }
}

impl Display for Map {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = (0..self.dims).map(|d| format!("d{d}")).collect();
        let results: Vec<String> = self
            .results
            .iter()
            .map(|r| match r {
                Ix::D(d) => format!("d{d}"),
                Ix::Zero => "0".to_string(),
            })
            .collect();
        write!(
            f,
            "affine_map<({}) -> ({})>",
            dims.join(", "),
            results.join(", ")
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Iter {
    Parallel,
    Reduction,
}

/// The operands of one `linalg.generic`: inputs with their maps, the init tensor
/// (`outs`) with its map, and the iterator type of every loop.
pub(crate) struct Generic<'a> {
    pub ins: Vec<(&'a Val, Map)>,
    pub init: Val,
    pub out_map: Map,
    pub iters: Vec<Iter>,
}

impl<'a> Generic<'a> {
    /// An all-parallel generic writing a fresh tensor read with the identity map.
    pub fn parallel(ins: Vec<(&'a Val, Map)>, init: Val) -> Generic<'a> {
        let rank = init.rank();
        Generic {
            ins,
            init,
            out_map: Map::identity(rank),
            iters: vec![Iter::Parallel; rank],
        }
    }
}

/// Writes the body of a `func.func`, statement by statement.
pub(crate) struct Emitter {
    out: String,
    next: usize,
    indent: usize,
    loc: String,
}

impl Emitter {
    pub fn new() -> Emitter {
        Emitter {
            out: String::new(),
            next: 0,
            indent: 2,
            loc: "loc(unknown)".to_string(),
        }
    }

    pub fn finish(self) -> String {
        self.out
    }

    /// Statements from now on carry `loc("<text>")`.
    pub fn set_loc(&mut self, text: &str) {
        self.loc = format!("loc(\"{}\")", escape(text));
    }

    pub fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%v{}", self.next)
    }

    /// One statement, with the current location.
    pub fn stmt(&mut self, text: impl Display) {
        let _ = writeln!(
            self.out,
            "{:indent$}{text} {}",
            "",
            self.loc,
            indent = self.indent
        );
    }

    /// A statement that opens a region (`... {`): written without a location (that
    /// goes after the closing brace, see [`Emitter::close_region`]); what follows is
    /// indented.
    pub fn open_region(&mut self, header: impl Display) {
        let _ = writeln!(self.out, "{:indent$}{header}", "", indent = self.indent);
        self.indent += 2;
    }

    /// `}` closing a region opened with [`Emitter::open_region`], with the location.
    pub fn close_region(&mut self) {
        self.indent -= 2;
        self.stmt("}");
    }

    /// `%vN = <rhs>`; returns `%vN`.
    pub fn op(&mut self, rhs: impl Display) -> String {
        let name = self.fresh();
        self.stmt(format_args!("{name} = {rhs}"));
        name
    }

    /// A tensor-valued statement.
    pub fn tensor_op(&mut self, rhs: impl Display, sizes: &[usize], elem: Elem) -> Val {
        let name = self.op(rhs);
        Val {
            name,
            sizes: sizes.to_vec(),
            elem,
        }
    }

    pub fn empty(&mut self, sizes: &[usize], elem: Elem) -> Val {
        let ty = tensor_type(sizes, elem);
        self.tensor_op(format_args!("tensor.empty() : {ty}"), sizes, elem)
    }

    /// A tensor of `sizes` filled with `value` (an init for reductions).
    pub fn filled(&mut self, sizes: &[usize], elem: Elem, value: f64) -> Val {
        let scalar = self.constant(value, elem);
        let empty = self.empty(sizes, elem);
        let ty = empty.ty();
        self.tensor_op(
            format_args!(
                "linalg.fill ins({scalar} : {}) outs({} : {ty}) -> {ty}",
                elem.mlir(),
                empty.name
            ),
            sizes,
            elem,
        )
    }

    /// A `linalg.generic`. `body` receives the block arguments (inputs, then the
    /// output element) and returns the value to yield.
    pub fn generic(
        &mut self,
        g: Generic,
        body: impl FnOnce(&mut Emitter, &[String]) -> String,
    ) -> Val {
        let maps: Vec<String> = g
            .ins
            .iter()
            .map(|(_, m)| m.to_string())
            .chain(std::iter::once(g.out_map.to_string()))
            .collect();
        let iters: Vec<&str> = sequential_tail(&g.iters, &g.init.sizes)
            .iter()
            .map(|i| match i {
                Iter::Parallel => "\"parallel\"",
                Iter::Reduction => "\"reduction\"",
            })
            .collect();
        let ins = if g.ins.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = g.ins.iter().map(|(v, _)| v.name.as_str()).collect();
            let types: Vec<String> = g.ins.iter().map(|(v, _)| v.ty()).collect();
            format!("ins({} : {}) ", names.join(", "), types.join(", "))
        };
        let result = self.fresh();
        let out_ty = g.init.ty();
        let _ = writeln!(
            self.out,
            "{:indent$}{result} = linalg.generic {{indexing_maps = [{}], iterator_types = [{}]}} {ins}outs({} : {out_ty}) {{",
            "",
            maps.join(", "),
            iters.join(", "),
            g.init.name,
            indent = self.indent
        );
        let args: Vec<String> = (0..=g.ins.len()).map(|_| self.fresh()).collect();
        let arg_decls: Vec<String> = g
            .ins
            .iter()
            .map(|(v, _)| v.elem)
            .chain(std::iter::once(g.init.elem))
            .zip(&args)
            .map(|(elem, a)| format!("{a}: {}", elem.mlir()))
            .collect();
        let _ = writeln!(
            self.out,
            "{:indent$}^bb0({}):",
            "",
            arg_decls.join(", "),
            indent = self.indent
        );
        self.indent += 2;
        let yielded = body(self, &args);
        self.stmt(format_args!(
            "linalg.yield {yielded} : {}",
            g.init.elem.mlir()
        ));
        self.indent -= 2;
        self.stmt(format_args!("}} -> {out_ty}"));
        Val {
            name: result,
            sizes: g.init.sizes,
            elem: g.init.elem,
        }
    }

    // --- scalars (inside generic bodies) -------------------------------------------

    pub fn constant(&mut self, value: f64, elem: Elem) -> String {
        self.op(format_args!(
            "arith.constant {} : {}",
            literal(value, elem),
            elem.mlir()
        ))
    }

    pub fn const_index(&mut self, n: usize) -> String {
        self.op(format_args!("arith.constant {n} : index"))
    }

    /// `linalg.index`: the current iteration along loop `dim`.
    pub fn index(&mut self, dim: usize) -> String {
        self.op(format_args!("linalg.index {dim} : index"))
    }

    /// A binary `arith` op (`addf`, `muli`, `maxnumf`, ...) on one type.
    pub fn arith2(&mut self, op: &str, a: &str, b: &str, elem: Elem) -> String {
        self.op(format_args!("arith.{op} {a}, {b} : {}", elem.mlir()))
    }

    /// A unary `math` op (`exp`, `tanh`, `erf`, ...).
    pub fn math1(&mut self, op: &str, a: &str, elem: Elem) -> String {
        self.op(format_args!("math.{op} {a} : {}", elem.mlir()))
    }

    pub fn cmpf(&mut self, pred: &str, a: &str, b: &str, elem: Elem) -> String {
        self.op(format_args!(
            "arith.cmpf {pred}, {a}, {b} : {}",
            elem.mlir()
        ))
    }

    pub fn cmpi(&mut self, pred: &str, a: &str, b: &str, elem: Elem) -> String {
        self.op(format_args!(
            "arith.cmpi {pred}, {a}, {b} : {}",
            elem.mlir()
        ))
    }

    pub fn select(&mut self, cond: &str, a: &str, b: &str, elem: Elem) -> String {
        self.op(format_args!(
            "arith.select {cond}, {a}, {b} : {}",
            elem.mlir()
        ))
    }

    /// A conversion op (`extf`, `sitofp`, `index_cast`, ...) from one type to another.
    pub fn convert(&mut self, op: &str, a: &str, from: Elem, to: Elem) -> String {
        self.op(format_args!(
            "arith.{op} {a} : {} to {}",
            from.mlir(),
            to.mlir()
        ))
    }

    /// Widen a float to `to` (no-op when equal). Half types go through f32, the one
    /// conversion every target does without a runtime library.
    pub fn extend(&mut self, a: &str, from: Elem, to: Elem) -> String {
        if from == to {
            a.to_string()
        } else if from != Elem::F32 && to == Elem::F64 {
            let v = self.convert("extf", a, from, Elem::F32);
            self.convert("extf", &v, Elem::F32, to)
        } else {
            self.convert("extf", a, from, to)
        }
    }

    /// Narrow a float to `to` (no-op when equal), through f32 as [`Emitter::extend`].
    pub fn narrow(&mut self, a: &str, from: Elem, to: Elem) -> String {
        if from == to {
            a.to_string()
        } else if from == Elem::F64 && to != Elem::F32 {
            let v = self.convert("truncf", a, from, Elem::F32);
            self.convert("truncf", &v, Elem::F32, to)
        } else {
            self.convert("truncf", a, from, to)
        }
    }

    /// `tensor.extract` of one element of `t` (captured from outside the generic).
    pub fn extract(&mut self, t: &Val, indices: &[String]) -> String {
        self.op(format_args!(
            "tensor.extract {}[{}] : {}",
            t.name,
            indices.join(", "),
            t.ty()
        ))
    }
}

/// The iterators `convert-linalg-to-parallel-loops` should see: an all-parallel
/// loop nest keeps its outer loops parallel (one `scf.parallel`, OpenMP's) and runs
/// its innermost loop as a sequential `scf.for` inside, marked `reduction` for
/// that conversion only (it builds one `scf.for` per non-parallel loop). Left all
/// parallel, OpenMP collapses the whole nest into one flat loop that recomputes
/// every index by division per element, which LLVM cannot vectorize; an inner
/// `scf.for` over contiguous elements it can. Only when the outer loops still
/// give every thread work.
fn sequential_tail(iters: &[Iter], sizes: &[usize]) -> Vec<Iter> {
    let mut out = iters.to_vec();
    let rank = iters.len();
    if rank >= 2
        && iters.iter().all(|&i| i == Iter::Parallel)
        && sizes.len() == rank
        && sizes[..rank - 1].iter().product::<usize>() >= PARALLEL_ROWS
        && sizes[rank - 1] > 1
    {
        out[rank - 1] = Iter::Reduction;
    }
    out
}

/// Fewest parallel iterations [`sequential_tail`] leaves a loop nest.
const PARALLEL_ROWS: usize = 16;

/// Escape a string for an MLIR string literal.
fn escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(s, "\\{:02X}", c as u32 & 0xFF);
            }
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_maps() {
        let m = Map::broadcast(&[3, 1], &[2, 3, 5]);
        assert_eq!(m.to_string(), "affine_map<(d0, d1, d2) -> (d1, 0)>");
        let s = Map::broadcast(&[], &[2, 3]);
        assert_eq!(s.to_string(), "affine_map<(d0, d1) -> ()>");
    }

    #[test]
    fn literals() {
        assert_eq!(literal(f64::NEG_INFINITY, Elem::F32), "0xFF800000");
        assert_eq!(literal(1.0, Elem::BF16), "0x3F80");
        assert_eq!(literal(-2.7, Elem::I32), "-2");
        assert_eq!(literal(3.0, Elem::I1), "true");
        assert_eq!(tensor_type(&[], Elem::F32), "tensor<f32>");
        assert_eq!(memref_type(&[3, 5], Elem::I8), "memref<3x5xi8>");
    }

    #[test]
    fn locations_are_escaped() {
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
