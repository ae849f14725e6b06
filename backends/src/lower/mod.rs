//! Lowering of an [`attnc_ir::Graph`] to MLIR text at the tensor level.
//!
//! The graph becomes one `func.func @forward` whose arguments are memrefs: every
//! input, then every param (graph order), then one out-param per output, then one
//! `memref<i8>` status flag per run-time check (an index of `gather` / `embedding`
//! out of range, an integer division by zero). Inputs
//! enter as `bufferization.to_tensor ... restrict`, outputs leave through
//! `bufferization.materialize_in_destination ... restrict writable`, so the function
//! returns nothing and the C interface is just one descriptor pointer per argument.
//!
//! Each node the outputs depend on becomes a few tensor-level ops (`linalg.generic`, `linalg.fill`,
//! `tensor.empty`, slices and reshapes, `arith`, `math`), named `%vN` and located at
//! `loc("<layer>:%<node> <op>")`. Families live in their own modules.

mod elementwise;
mod emit;
mod layout;
mod reduce;

use crate::{BackendError, Result};
use attnc_ir::{BinaryOp, DType, Graph, NodeId, Op};
use emit::{memref_type, tensor_type, Elem, Emitter, Generic, Map, Val};
use std::fmt::Write;

/// One memref argument of `@forward` that carries a tensor in or out.
#[derive(Clone, Debug)]
pub(crate) struct Boundary {
    pub name: String,
    /// `input`, `param` or `output`, for messages.
    pub kind: &'static str,
    pub dtype: DType,
    pub sizes: Vec<usize>,
}

/// A condition the interpreter reports as an error at run time. Compiled code keeps
/// going safely (indices are clamped, divisors replaced) and sets the check's flag
/// argument to 1; the host turns that into the error.
#[derive(Clone, Debug)]
pub(crate) struct Check {
    pub node: usize,
    pub op: String,
    pub layer: Option<String>,
    pub message: &'static str,
}

/// The argument list of `@forward`, in order: `inputs` (inputs, then params),
/// `outputs`, then one flag per `checks` entry.
#[derive(Clone, Debug, Default)]
pub(crate) struct Signature {
    pub inputs: Vec<Boundary>,
    pub outputs: Vec<Boundary>,
    pub checks: Vec<Check>,
}

/// The MLIR source of a graph and the signature of its `@forward`.
pub(crate) struct Lowered {
    pub text: String,
    pub signature: Signature,
}

/// The name of the lowered function (its C interface is `_mlir_ciface_forward`).
pub(crate) const ENTRY: &str = "forward";

/// Lower `graph` to MLIR text (not yet parsed or verified).
pub(crate) fn lower(graph: &Graph) -> Result<Lowered> {
    let mut l = Lowering {
        graph,
        em: Emitter::new(),
        values: vec![None; graph.len()],
        args: vec![None; graph.len()],
        signature: Signature::default(),
        flags: Vec::new(),
    };
    l.declare_sources();
    let live = live_nodes(graph);
    for id in graph.node_ids().filter(|id| live[id.index()]) {
        l.em.set_loc(&location(graph, id));
        let val = l.lower_node(id)?;
        l.values[id.index()] = Some(val);
    }
    l.store_outputs()?;
    Ok(l.finish())
}

/// The nodes the outputs depend on. Only those are lowered (as the interpreter only
/// evaluates those); every input and param stays an argument all the same.
fn live_nodes(graph: &Graph) -> Vec<bool> {
    let mut live = vec![false; graph.len()];
    for (_, id) in graph.outputs() {
        if let Some(slot) = live.get_mut(id.index()) {
            *slot = true;
        }
    }
    // Operands precede their users, so one backward sweep reaches every needed node.
    for i in (0..graph.len()).rev() {
        if live[i] {
            for o in graph.operands(NodeId::new(i)) {
                live[o.index()] = true;
            }
        }
    }
    live
}

/// `layers.0.attn:%12 matmul`: what a diagnostic prints as the place of an op.
pub(crate) fn location(graph: &Graph, id: NodeId) -> String {
    let node = graph.node(id);
    match &node.layer {
        Some(layer) => format!("{layer}:%{} {}", id.index(), node.op.name()),
        None => format!("%{} {}", id.index(), node.op.name()),
    }
}

struct Lowering<'g> {
    graph: &'g Graph,
    em: Emitter,
    /// The tensor each lowered node produced, by node index.
    values: Vec<Option<Val>>,
    /// The function argument of each input / param node.
    args: Vec<Option<String>>,
    signature: Signature,
    /// Status flags (rank-0 i8 tensors) of the run-time checks, in signature order.
    flags: Vec<Val>,
}

impl Lowering<'_> {
    /// Give every input, then every param, its memref argument.
    fn declare_sources(&mut self) {
        let graph = self.graph;
        let sources = graph
            .inputs()
            .into_iter()
            .map(|s| (s, "input"))
            .chain(graph.params().into_iter().map(|s| (s, "param")));
        for (i, ((name, id), kind)) in sources.enumerate() {
            self.args[id.index()] = Some(format!("%arg{i}"));
            self.signature.inputs.push(Boundary {
                name: name.to_string(),
                kind,
                dtype: graph.node(id).ty.dtype,
                sizes: graph.sizes(id),
            });
        }
    }

    /// The lowered value of an operand. Operands precede their users in a verified
    /// graph, so a missing one means the graph was not verified.
    fn operand(&self, id: NodeId) -> Result<Val> {
        self.values
            .get(id.index())
            .cloned()
            .flatten()
            .ok_or_else(|| BackendError::InvalidGraph {
                message: format!("%{} is used before it is defined", id.index()),
            })
    }

    fn lower_node(&mut self, id: NodeId) -> Result<Val> {
        let graph = self.graph;
        let node = graph.node(id);
        let ops: Vec<Val> = graph
            .operands(id)
            .into_iter()
            .map(|o| self.operand(o))
            .collect::<Result<_>>()?;
        // The families index their operands; a verified graph has the op's arity.
        if node.op.arity().map_or(ops.is_empty(), |n| ops.len() != n) {
            return Err(BackendError::InvalidGraph {
                message: format!(
                    "%{} {} has {} operands",
                    id.index(),
                    node.op.name(),
                    ops.len()
                ),
            });
        }
        let sizes = graph.sizes(id);
        let elem = Elem::of(node.ty.dtype);
        let em = &mut self.em;
        Ok(match &node.op {
            Op::Input { .. } | Op::Param { .. } => {
                let arg = self.args[id.index()].clone().unwrap_or_default();
                enter(em, &arg, &sizes, node.ty.dtype)
            }
            Op::Const { value } => elementwise::constant(em, *value, elem),
            Op::Iota { axis } => elementwise::iota(em, &sizes, *axis, elem),
            Op::Unary(u) => elementwise::unary(em, *u, &ops[0]),
            Op::Binary(BinaryOp::Div) if !elem.is_float() => {
                self.checked_division(id, &ops[0], &ops[1], &sizes)
            }
            Op::Binary(b) => elementwise::binary(em, *b, &ops[0], &ops[1], &sizes),
            Op::Compare(c) => elementwise::compare(em, *c, &ops[0], &ops[1], &sizes),
            Op::Select => elementwise::select(em, &ops[0], &ops[1], &ops[2], &sizes),
            Op::Cast { to } => elementwise::cast(em, &ops[0], Elem::of(*to)),
            Op::Mask { expr } => elementwise::mask(em, expr, &sizes, &graph.dims),
            Op::Reduce {
                kind,
                axes,
                keep_dims,
            } => reduce::reduce(em, &ops[0], *kind, axes, *keep_dims),
            Op::Softmax { axis } => reduce::softmax(em, &ops[0], *axis),
            Op::LayerNorm { eps } => reduce::layer_norm(em, &ops[0], &ops[1], &ops[2], *eps),
            Op::RmsNorm { eps } => reduce::rms_norm(em, &ops[0], &ops[1], *eps),
            Op::MatMul => reduce::matmul(em, &ops[0], &ops[1], &sizes),
            Op::Reshape { .. } => layout::reshape(em, &ops[0], &sizes),
            Op::Transpose { perm } => layout::transpose(em, &ops[0], perm),
            Op::Broadcast { .. } => layout::broadcast(em, &ops[0], &sizes),
            Op::Concat { axis } => layout::concat(em, &ops, *axis, &sizes),
            Op::Slice { axis, start, .. } => {
                // The verifier resolved `start`; the result sizes give the length.
                let start = graph.dims.resolve_dim(start).unwrap_or(0) as usize;
                layout::slice(em, &ops[0], *axis, start, &sizes)
            }
            Op::Gather { axis } => self.checked_gather(id, &ops[0], &ops[1], *axis, &sizes),
            Op::Embedding => self.checked_gather(id, &ops[0], &ops[1], 0, &sizes),
            Op::Rope { theta } => layout::rope(em, &ops[0], *theta),
            // Everything else (top-k, cumsum, scatter_add and ops added to the IR after
            // this backend) is reported, never guessed at.
            _ => {
                return Err(BackendError::Unsupported {
                    op: node.op.name().to_string(),
                    layer: node.layer.clone(),
                    node: id.index(),
                })
            }
        })
    }

    /// `gather` / `embedding`: read with clamped indices and check that none needed
    /// clamping.
    fn checked_gather(
        &mut self,
        id: NodeId,
        data: &Val,
        indices: &Val,
        axis: usize,
        sizes: &[usize],
    ) -> Val {
        let flag = layout::index_out_of_range(&mut self.em, indices, data.sizes[axis]);
        self.check(id, flag, "an index is out of range");
        layout::gather(&mut self.em, data, indices, axis, sizes)
    }

    /// Integer division: a zero divisor is an error, as in the interpreter.
    fn checked_division(&mut self, id: NodeId, a: &Val, b: &Val, sizes: &[usize]) -> Val {
        let flag = elementwise::any_zero(&mut self.em, b);
        self.check(id, flag, "integer division by zero");
        elementwise::binary(&mut self.em, BinaryOp::Div, a, b, sizes)
    }

    /// Record a run-time check of node `id` whose flag tensor is `flag`.
    fn check(&mut self, id: NodeId, flag: Val, message: &'static str) {
        let node = self.graph.node(id);
        self.flags.push(flag);
        self.signature.checks.push(Check {
            node: id.index(),
            op: node.op.name().to_string(),
            layer: node.layer.clone(),
            message,
        });
    }

    /// Write every output (and status flag) into its out-param.
    fn store_outputs(&mut self) -> Result<()> {
        let graph = self.graph;
        let first = self.signature.inputs.len();
        for (i, (name, id)) in graph.outputs().iter().enumerate() {
            self.em.set_loc(&format!("output `{name}`"));
            let val = self.operand(*id)?;
            let dtype = graph.node(*id).ty.dtype;
            let val = leave(&mut self.em, &val, dtype);
            materialize(&mut self.em, &val, &format!("%arg{}", first + i));
            self.signature.outputs.push(Boundary {
                name: name.clone(),
                kind: "output",
                dtype,
                sizes: val.sizes.clone(),
            });
        }
        let first = first + self.signature.outputs.len();
        for (i, flag) in std::mem::take(&mut self.flags).iter().enumerate() {
            let check = &self.signature.checks[i];
            self.em
                .set_loc(&format!("%{} {} check", check.node, check.op));
            materialize(&mut self.em, flag, &format!("%arg{}", first + i));
        }
        Ok(())
    }

    /// The whole module: signature, body, return.
    fn finish(self) -> Lowered {
        let sig = self.signature;
        let mut params: Vec<String> = Vec::new();
        for b in sig.inputs.iter().chain(&sig.outputs) {
            let ty = memref_type(&b.sizes, Elem::at_boundary(b.dtype));
            params.push(format!("%arg{}: {ty}", params.len()));
        }
        for _ in &sig.checks {
            params.push(format!("%arg{}: memref<i8>", params.len()));
        }
        let mut text = String::new();
        let _ = writeln!(text, "module {{");
        let _ = writeln!(
            text,
            "func.func @{ENTRY}({}) attributes {{llvm.emit_c_interface}} {{",
            params.join(", ")
        );
        text.push_str(&self.em.finish());
        let _ = writeln!(text, "  return");
        let _ = writeln!(text, "}}");
        let _ = writeln!(text, "}}");
        Lowered {
            text,
            signature: sig,
        }
    }
}

/// An input buffer as a tensor; bools arrive as bytes and become `i1`.
fn enter(em: &mut Emitter, arg: &str, sizes: &[usize], dtype: DType) -> Val {
    let outside = Elem::at_boundary(dtype);
    let memref = memref_type(sizes, outside);
    let ty = tensor_type(sizes, outside);
    let raw = em.tensor_op(
        format_args!("bufferization.to_tensor {arg} restrict : {memref} to {ty}"),
        sizes,
        outside,
    );
    if dtype != DType::Bool {
        return raw;
    }
    let init = em.empty(sizes, Elem::I1);
    let ins = vec![(&raw, Map::identity(raw.rank()))];
    em.generic(Generic::parallel(ins, init), |em, args| {
        let zero = em.constant(0.0, Elem::I8);
        em.cmpi("ne", &args[0], &zero, Elem::I8)
    })
}

/// A result tensor in its boundary element type; bools leave as bytes.
fn leave(em: &mut Emitter, val: &Val, dtype: DType) -> Val {
    if dtype != DType::Bool {
        return val.clone();
    }
    let init = em.empty(&val.sizes, Elem::I8);
    let ins = vec![(val, Map::identity(val.rank()))];
    em.generic(Generic::parallel(ins, init), |em, args| {
        em.convert("extui", &args[0], Elem::I1, Elem::I8)
    })
}

fn materialize(em: &mut Emitter, val: &Val, arg: &str) {
    let memref = memref_type(&val.sizes, val.elem);
    em.stmt(format_args!(
        "bufferization.materialize_in_destination {} in restrict writable {arg} : ({}, {memref}) -> ()",
        val.name,
        val.ty()
    ));
}
