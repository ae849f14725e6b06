//! Elementwise kernels with fusion: one thread per output element (a grid-stride
//! loop), the element's value computed from an expression over graph nodes.
//!
//! A node is *inlined* into the expression of its reader when the plan decides so
//! (one use, or a free source: `const`, `iota`, `mask`, `random_features`); otherwise
//! it has a buffer and the expression loads it. Every position is a [`Pos`] — a
//! linear index into a row-major shape and/or its coordinates — and each op maps the
//! position of its result to the positions of its operands with static strides:
//! numpy broadcasting (size-1 and missing axes read index 0), transposes (permuted
//! coordinates), slices (shifted), reshapes (the same linear index), concat (a branch
//! per operand), gather and embedding (an index loaded from the indices operand,
//! clamped into range), rope (the element and its rotate-half partner).
//!
//! Values are computed in f32 for every float type (bools as `i1`, integers in their
//! own width) and rounded to their node's dtype after each op, as the interpreter
//! rounds every result, so fusing changes no value.

use super::code::W;
use super::math::{self, compute};
use super::module::{Args, Globals};
use crate::{BackendError, Result};
use attnc_ir::{BinaryOp, CmpOp, DType, Graph, NodeId, Op};

/// A position in a row-major tensor of `sizes`: its linear index, its coordinates,
/// or both.
#[derive(Clone, Debug)]
pub(crate) struct Pos {
    pub sizes: Vec<usize>,
    lin: Option<String>,
    coords: Option<Vec<String>>,
}

impl Pos {
    pub fn linear(sizes: &[usize], lin: String) -> Pos {
        Pos {
            sizes: sizes.to_vec(),
            lin: Some(lin),
            coords: None,
        }
    }

    pub fn at(sizes: &[usize], coords: Vec<String>) -> Pos {
        Pos {
            sizes: sizes.to_vec(),
            lin: None,
            coords: Some(coords),
        }
    }

    /// The coordinates (from the linear index: `c_d = (i / stride_d) % n_d`).
    pub fn coords(&self, w: &mut W) -> Vec<String> {
        if let Some(c) = &self.coords {
            return c.clone();
        }
        let lin = self.lin.clone().unwrap_or_else(|| w.idx(0));
        let r = self.sizes.len();
        let mut out = vec![String::new(); r];
        let mut rest = lin;
        for d in (0..r).rev() {
            let n = self.sizes[d];
            if n == 1 {
                out[d] = w.idx(0);
            } else if d == 0 {
                out[d] = rest.clone();
            } else {
                out[d] = w.rem_c(&rest, n);
                rest = w.div_c(&rest, n);
            }
        }
        out
    }

    /// The linear index (from the coordinates: `Σ c_d · stride_d`).
    pub fn lin(&self, w: &mut W) -> String {
        if let Some(l) = &self.lin {
            return l.clone();
        }
        let coords = self.coords.clone().unwrap_or_default();
        let strides = attnc_ir::strides(&self.sizes);
        let mut acc: Option<String> = None;
        for (d, c) in coords.iter().enumerate() {
            if self.sizes[d] == 1 {
                continue;
            }
            let term = w.mul_c(c, strides[d]);
            acc = Some(match acc {
                None => term,
                Some(a) => w.add(&a, &term),
            });
        }
        acc.unwrap_or_else(|| w.idx(0))
    }

    /// The position of an operand of `sizes` read with numpy broadcasting.
    pub fn broadcast(&self, w: &mut W, sizes: &[usize]) -> Pos {
        if sizes == self.sizes.as_slice() {
            return self.clone();
        }
        if sizes.iter().product::<usize>() == 1 {
            return Pos::linear(sizes, w.idx(0));
        }
        let out = self.coords(w);
        let offset = self.sizes.len() - sizes.len();
        let coords = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                if n == 1 {
                    w.idx(0)
                } else {
                    out[offset + i].clone()
                }
            })
            .collect();
        Pos::at(sizes, coords)
    }
}

/// The messages of the run-time checks, as the CPU backend words them.
pub(crate) const INDEX_OUT_OF_RANGE: &str = "an index is out of range";
pub(crate) const DIVISION_BY_ZERO: &str = "integer division by zero";

/// What an elementwise expression can read: the buffers of materialized nodes.
pub(crate) struct Ew<'a> {
    pub graph: &'a Graph,
    /// By node index: evaluated inside the expression of its reader.
    pub inline: &'a [bool],
    /// By node index: the plan buffer holding the node's value.
    pub bufs: &'a [Option<usize>],
    pub args: &'a mut Args,
    pub globals: &'a mut Globals,
}

/// Whether `op` can be computed inside an elementwise expression.
pub(crate) fn fusible(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_)
            | Op::Binary(_)
            | Op::Compare(_)
            | Op::Select
            | Op::Cast { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Broadcast { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Gather { .. }
            | Op::Embedding
            | Op::Rope { .. }
            | Op::Iota { .. }
            | Op::Mask { .. }
            | Op::Const { .. }
            | Op::RandomFeatures { .. }
    )
}

/// Sources that cost nothing to recompute: inlined into every reader.
pub(crate) fn free(op: &Op) -> bool {
    matches!(
        op,
        Op::Const { .. } | Op::Iota { .. } | Op::Mask { .. } | Op::RandomFeatures { .. }
    )
}

fn unlowerable(graph: &Graph, id: NodeId, message: String) -> BackendError {
    let node = graph.node(id);
    BackendError::Unlowerable {
        op: node.op.name().to_string(),
        layer: node.layer.clone(),
        node: id.index(),
        message,
    }
}

impl Ew<'_> {
    fn sizes(&self, id: NodeId) -> Vec<usize> {
        self.graph.sizes(id)
    }

    fn dtype(&self, id: NodeId) -> DType {
        self.graph.node(id).ty.dtype
    }

    /// The value of node `id` at `pos` (a position in its own shape), in its compute
    /// type.
    pub fn eval(&mut self, w: &mut W, id: NodeId, pos: &Pos) -> Result<String> {
        let graph = self.graph;
        let node = graph.node(id);
        let dtype = node.ty.dtype;
        if let Op::Const { value } = node.op {
            return Ok(math::literal(w, value, dtype));
        }
        if !self.inline[id.index()] {
            if let Some(buf) = self.bufs[id.index()] {
                let n: usize = self.sizes(id).iter().product();
                let p = self.args.get(buf, dtype, n);
                let at = pos.lin(w);
                return Ok(math::load(w, &p, dtype, n, &at));
            }
        }
        let ops = graph.operands(id);
        let sizes = self.sizes(id);
        let v = match &node.op {
            Op::Unary(u) => {
                let x = self.eval_bcast(w, ops[0], pos)?;
                if dtype.is_float() {
                    math::unary_f32(w, *u, &x)
                } else {
                    math::unary_int(w, *u, &x, compute(dtype))
                }
            }
            Op::Binary(b) => {
                let x = self.eval_bcast(w, ops[0], pos)?;
                let y = self.eval_bcast(w, ops[1], pos)?;
                if dtype.is_float() {
                    math::binary_f32(w, *b, &x, &y)
                } else {
                    let ty = compute(dtype);
                    match b {
                        BinaryOp::Add => w.let_(format_args!("arith.addi {x}, {y} : {ty}")),
                        BinaryOp::Sub => w.let_(format_args!("arith.subi {x}, {y} : {ty}")),
                        BinaryOp::Mul => w.let_(format_args!("arith.muli {x}, {y} : {ty}")),
                        BinaryOp::Max => w.let_(format_args!("arith.maxsi {x}, {y} : {ty}")),
                        BinaryOp::Min => w.let_(format_args!("arith.minsi {x}, {y} : {ty}")),
                        BinaryOp::Div => {
                            let flag = self.args.flag(Some(id.index()), DIVISION_BY_ZERO);
                            let zero = w.constant(0, ty);
                            let by_zero = w.let_(format_args!("arith.cmpi eq, {y}, {zero} : {ty}"));
                            w.raise(&flag, &by_zero);
                            math::int_div(w, &x, &y, ty)
                        }
                        BinaryOp::Pow => {
                            return Err(unlowerable(
                                graph,
                                id,
                                "the GPU backend does not support `pow` on integers yet".into(),
                            ))
                        }
                    }
                }
            }
            Op::Compare(c) => {
                let from = self.dtype(ops[0]);
                let x = self.eval_bcast(w, ops[0], pos)?;
                let y = self.eval_bcast(w, ops[1], pos)?;
                compare(w, *c, &x, &y, from)
            }
            Op::Select => {
                let c = self.eval_bcast(w, ops[0], pos)?;
                let x = self.eval_bcast(w, ops[1], pos)?;
                let y = self.eval_bcast(w, ops[2], pos)?;
                w.select(&c, &x, &y, compute(dtype))
            }
            Op::Cast { to } => {
                let from = self.dtype(ops[0]);
                let x = self.eval(w, ops[0], pos)?;
                math::convert(w, &x, from, *to)
            }
            Op::Reshape { .. } => {
                let lin = pos.lin(w);
                let inner = Pos::linear(&self.sizes(ops[0]), lin);
                self.eval(w, ops[0], &inner)?
            }
            Op::Transpose { perm } => {
                let out = pos.coords(w);
                let mut coords = vec![String::new(); perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    coords[p] = out[i].clone();
                }
                let inner = Pos::at(&self.sizes(ops[0]), coords);
                self.eval(w, ops[0], &inner)?
            }
            Op::Broadcast { .. } => self.eval_bcast(w, ops[0], pos)?,
            Op::Slice { axis, start, .. } => {
                let start = graph.dims.resolve_dim(start).unwrap_or(0) as usize;
                let mut coords = pos.coords(w);
                coords[*axis] = w.add_c(&coords[*axis], start);
                let inner = Pos::at(&self.sizes(ops[0]), coords);
                self.eval(w, ops[0], &inner)?
            }
            Op::Concat { axis } => {
                let coords = pos.coords(w);
                self.concat(w, &ops, *axis, &coords, 0, 0, dtype)?
            }
            Op::Gather { axis } => {
                let data = self.sizes(ops[0]);
                let isz = self.sizes(ops[1]);
                let coords = pos.coords(w);
                let icoords = coords[*axis..*axis + isz.len()].to_vec();
                let ipos = Pos::at(&isz, icoords);
                let index = self.index(w, id, ops[1], &ipos, data[*axis])?;
                let mut dc: Vec<String> = coords[..*axis].to_vec();
                dc.push(index);
                dc.extend(coords[*axis + isz.len()..].iter().cloned());
                self.eval(w, ops[0], &Pos::at(&data, dc))?
            }
            Op::Embedding => {
                let table = self.sizes(ops[0]);
                let isz = self.sizes(ops[1]);
                let coords = pos.coords(w);
                let r = coords.len();
                let ipos = Pos::at(&isz, coords[..r - 1].to_vec());
                let row = self.index(w, id, ops[1], &ipos, table[0])?;
                let tc = vec![row, coords[r - 1].clone()];
                self.eval(w, ops[0], &Pos::at(&table, tc))?
            }
            Op::Rope { theta, scaling } => self.rope(w, ops[0], pos, *theta, scaling)?,
            Op::Iota { axis } => {
                let c = pos.coords(w)[*axis].clone();
                let ty = compute(dtype);
                w.index_cast(&c, "index", ty)
            }
            Op::Mask { expr } => {
                super::mask::declare_tables(self.globals, expr, &graph.dims);
                let coords = pos.coords(w);
                let r = coords.len();
                let mut at: [String; 4] = Default::default();
                for (k, slot) in at.iter_mut().enumerate() {
                    *slot = if k + r >= 4 {
                        w.index_cast(&coords[k + r - 4], "index", "i64")
                    } else {
                        w.i64(0)
                    };
                }
                super::mask::holds(w, expr, &at, &graph.dims)
            }
            Op::RandomFeatures { seed } => {
                let values = attnc_ir::orthogonal_features(sizes[0], sizes[1], *seed);
                let (name, ty) = dense_global(self.globals, &values, &sizes, dtype, *seed);
                let table = w.hoisted(format!("memref.get_global @{name} : {ty}"));
                let at = pos.lin(w);
                let v = w.load(&table, &ty, &[&at]);
                math::widen(w, &v, dtype)
            }
            _ => {
                return Err(BackendError::InvalidGraph {
                    message: format!(
                        "internal: %{} {} has no buffer for an elementwise kernel to read",
                        id.index(),
                        node.op.name()
                    ),
                })
            }
        };
        Ok(math::round(w, &v, dtype))
    }

    /// Operand `id` read at `pos` (a position of its reader) with broadcasting.
    fn eval_bcast(&mut self, w: &mut W, id: NodeId, pos: &Pos) -> Result<String> {
        let inner = pos.broadcast(w, &self.sizes(id));
        self.eval(w, id, &inner)
    }

    /// An index value of `indices` at `pos`, clamped into `[0, n)`, as an `index`;
    /// one that needed clamping fails `reader`'s run-time check.
    fn index(
        &mut self,
        w: &mut W,
        reader: NodeId,
        indices: NodeId,
        pos: &Pos,
        n: usize,
    ) -> Result<String> {
        let dt = self.dtype(indices);
        let v = self.eval(w, indices, pos)?;
        let v = if dt == DType::I32 {
            w.let_(format_args!("arith.extsi {v} : i32 to i64"))
        } else {
            v
        };
        let zero = w.i64(0);
        let last = w.i64(n.saturating_sub(1) as i64);
        let flag = self.args.flag(Some(reader.index()), INDEX_OUT_OF_RANGE);
        let below = w.let_(format_args!("arith.cmpi slt, {v}, {zero} : i64"));
        let above = w.let_(format_args!("arith.cmpi sgt, {v}, {last} : i64"));
        let bad = w.or(&below, &above);
        w.raise(&flag, &bad);
        let v = w.let_(format_args!("arith.maxsi {v}, {zero} : i64"));
        let v = w.let_(format_args!("arith.minsi {v}, {last} : i64"));
        Ok(w.index_cast(&v, "i64", "index"))
    }

    /// Operand `k` of a concat (and those after it) at `coords`: a branch per operand
    /// on the coordinate along `axis`, `start` being where operand `k` begins.
    #[allow(clippy::too_many_arguments)]
    fn concat(
        &mut self,
        w: &mut W,
        ops: &[NodeId],
        axis: usize,
        coords: &[String],
        k: usize,
        start: usize,
        dtype: DType,
    ) -> Result<String> {
        let sizes = self.sizes(ops[k]);
        let mut local = coords.to_vec();
        let shifted = if start == 0 {
            coords[axis].clone()
        } else {
            let s = w.idx(start);
            w.let_(format_args!("arith.subi {}, {s} : index", coords[axis]))
        };
        local[axis] = shifted;
        if k + 1 == ops.len() {
            return self.eval(w, ops[k], &Pos::at(&sizes, local));
        }
        let end = start + sizes[axis];
        let inside = w.lt_c(&coords[axis], end);
        let ty = compute(dtype);
        let t = w.if_begin(&inside, &[ty]);
        let a = self.eval(w, ops[k], &Pos::at(&sizes, local))?;
        w.if_else(&t, &[a]);
        let b = self.concat(w, ops, axis, coords, k + 1, end, dtype)?;
        Ok(w.if_end(t, &[b]).remove(0))
    }

    /// Rotary embedding of `x` at `pos`: `x_i cos θ - x_{i+d/2} sin θ` in the first
    /// half, `x_i cos θ + x_{i-d/2} sin θ` in the second, `θ = p · theta^(-2j/d)` with
    /// `p` the index along the second-to-last axis, `j = i mod d/2`.
    fn rope(
        &mut self,
        w: &mut W,
        x: NodeId,
        pos: &Pos,
        theta: f64,
        scaling: &attnc_ir::RopeScaling,
    ) -> Result<String> {
        let sizes = self.sizes(x);
        let r = sizes.len();
        let d = sizes[r - 1];
        let half = d / 2;
        let coords = pos.coords(w);
        let i = coords[r - 1].clone();
        let h = w.idx(half);
        let lower = w.cmp_ix("ult", &i, &h);
        let i_minus = w.let_(format_args!("arith.subi {i}, {h} : index"));
        let i_plus = w.add(&i, &h);
        let j = w.select(&lower, &i, &i_minus, "index");
        let partner = w.select(&lower, &i_plus, &i_minus, "index");
        let mut pc = coords.clone();
        pc[r - 1] = partner;
        let v = self.eval(w, x, &Pos::at(&sizes, coords.clone()))?;
        let pv = self.eval(w, x, &Pos::at(&sizes, pc))?;
        let freqs = scaling.inv_freqs(theta, d);
        // Named by the table's contents: two scalings never share a global.
        let name = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            freqs.iter().for_each(|f| f.to_bits().hash(&mut h));
            format!("attnc_rope_{d}_{:016x}", h.finish())
        };
        let ty = self.globals.constant_f64(&name, &freqs);
        let table = w.hoisted(format!("memref.get_global @{name} : {ty}"));
        let freq = w.load(&table, &ty, &[&j]);
        let p = w.index_cast(&coords[r - 2], "index", "i64");
        let p = w.let_(format_args!("arith.sitofp {p} : i64 to f64"));
        let angle = w.let_(format_args!("arith.mulf {p}, {freq} : f64"));
        let (mut sin, mut cos) = math::sin_cos_f64(w, &angle);
        let magnitude = scaling.attention_factor();
        if magnitude != 1.0 {
            let m = w.let_(format_args!(
                "arith.constant 0x{:016X} : f64",
                magnitude.to_bits()
            ));
            sin = w.let_(format_args!("arith.mulf {sin}, {m} : f64"));
            cos = w.let_(format_args!("arith.mulf {cos}, {m} : f64"));
        }
        let a = math::fmul(w, &v, &cos);
        let b = math::fmul(w, &pv, &sin);
        let nb = math::fneg(w, &b);
        let b = math::fselect(w, &lower, &nb, &b);
        Ok(math::fadd(w, &a, &b))
    }
}

/// `a <op> b` on values of `from`: ordered float predicates except `ne` (as Rust's
/// operators), signed integers, unsigned bools (true is 1).
pub(crate) fn compare(w: &mut W, op: CmpOp, a: &str, b: &str, from: DType) -> String {
    if from.is_float() {
        let pred = match op {
            CmpOp::Lt => "olt",
            CmpOp::Le => "ole",
            CmpOp::Gt => "ogt",
            CmpOp::Ge => "oge",
            CmpOp::Eq => "oeq",
            CmpOp::Ne => "une",
        };
        return math::fcmp(w, pred, a, b);
    }
    let unsigned = from == DType::Bool;
    let pred = match (op, unsigned) {
        (CmpOp::Lt, false) => "slt",
        (CmpOp::Le, false) => "sle",
        (CmpOp::Gt, false) => "sgt",
        (CmpOp::Ge, false) => "sge",
        (CmpOp::Lt, true) => "ult",
        (CmpOp::Le, true) => "ule",
        (CmpOp::Gt, true) => "ugt",
        (CmpOp::Ge, true) => "uge",
        (CmpOp::Eq, _) => "eq",
        (CmpOp::Ne, _) => "ne",
    };
    let ty = compute(from);
    w.let_(format_args!("arith.cmpi {pred}, {a}, {b} : {ty}"))
}

/// A dense constant (random features) as a module global in its storage type.
fn dense_global(
    globals: &mut Globals,
    values: &[f64],
    sizes: &[usize],
    dtype: DType,
    seed: u64,
) -> (String, String) {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for &x in values {
        match dtype {
            DType::F16 => bytes.extend(half::f16::from_f64(x).to_le_bytes()),
            DType::BF16 => bytes.extend(half::bf16::from_f64(x).to_le_bytes()),
            _ => bytes.extend((x as f32).to_le_bytes()),
        }
    }
    let name = format!(
        "attnc_features_{}x{}_{}_{seed}",
        sizes[0],
        sizes[1],
        math::storage(dtype)
    );
    let ty = globals.constant_bytes(&name, math::storage(dtype), values.len(), &bytes);
    (name, ty)
}

/// One elementwise kernel: `root`'s value at every element of its shape, stored into
/// buffer `out` (a fresh buffer of `root`'s type). Returns the body and its
/// arguments; the caller launches it with [`launch_grid`].
pub(crate) fn kernel(
    graph: &Graph,
    inline: &[bool],
    bufs: &[Option<usize>],
    globals: &mut Globals,
    root: NodeId,
    out: usize,
) -> Result<(String, Args, usize)> {
    let mut args = Args::default();
    let sizes = graph.sizes(root);
    let dtype = graph.node(root).ty.dtype;
    let n: usize = sizes.iter().product();
    let o = args.output(out, dtype, n);
    let mut w = W::new();
    let mut err = None;
    {
        let mut ew = Ew {
            graph,
            inline,
            bufs,
            args: &mut args,
            globals,
        };
        w.grid_stride(n, BLOCK, |w, i| {
            let pos = Pos::linear(&sizes, i.to_string());
            match ew.eval(w, root, &pos) {
                Ok(v) => math::store(w, &v, &o, dtype, n, i),
                Err(e) => err = Some(e),
            }
        });
    }
    match err {
        Some(e) => Err(e),
        None => Ok((w.finish(), args, n)),
    }
}

/// Threads per block of elementwise and other one-thread-per-item kernels.
pub(crate) const BLOCK: usize = 256;

/// Blocks for `n` items, one per thread (at least one block; past 2^24 blocks the
/// grid-stride loop takes the rest).
pub(crate) fn launch_grid(n: usize) -> [u32; 3] {
    [n.div_ceil(BLOCK).clamp(1, 1 << 24) as u32, 1, 1]
}
