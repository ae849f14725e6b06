//! Lowering of an [`attnc_ir::Graph`] to MLIR text at the tensor level.
//!
//! The graph becomes a `func.func @forward` whose arguments are memrefs: every
//! input, then every param (graph order), then one out-param per output, then one
//! `memref<i8>` status flag per run-time check (an index of `gather` / `embedding`
//! out of range, an integer division by zero). It returns nothing, so the C interface
//! is just one descriptor pointer per argument.
//!
//! Each IR layer — a run of consecutive nodes with the same `Node.layer` (`embed`,
//! `layers.0.attn`, `layers.0.ffn`, ..., `head`) — is outlined into its own private
//! function `@forward.<i>.<layer>`, which `@forward` calls in order. Layer functions
//! take memrefs only and return nothing (destination-passing style):
//! - what a layer reads that is made elsewhere (inputs, params, tensors of earlier
//!   layers) comes in as a memref argument, entered as `to_tensor ... restrict`;
//! - what later layers read, what is a graph output and the status flags of its
//!   checks go out through `materialize_in_destination ... restrict writable` into
//!   memref arguments: `@forward` allocates one buffer per tensor crossing layers
//!   (`memref.alloc`, freed by the deallocation pipeline when `@forward` returns) and
//!   passes its own out-params and flags down.
//!
//! So no tensor crosses a function boundary and each function bufferizes on its own;
//! every buffer a layer function allocates is a temporary it frees before returning,
//! and `@forward`'s buffers come from distinct allocations, so deallocation needs no
//! run-time alias checks.
//!
//! Layer functions are `noinline` (and internal), so LLVM optimizes each on its own:
//! compile time grows linearly with the depth of the model, where one function
//! holding every layer made LLVM's loop passes quadratic in it. Layers that lower to
//! the same code (same ops, shapes and attributes; only locations differ — the
//! layers of a uniform decoder stack) share one function, the first one's, so LLVM
//! compiles each distinct layer once.
//!
//! Each node the outputs depend on becomes a few tensor-level ops (`linalg.generic`, `linalg.fill`,
//! `tensor.empty`, slices and reshapes, `arith`, `math`), named `%vN` and located at
//! `loc("<layer>:%<node> <op>")`. Families live in their own modules.

mod elementwise;
mod emit;
mod kernel_call;
mod layout;
mod reduce;
mod select;

use crate::kernels::KernelSet;
use crate::{BackendError, Result};
use attnc_ir::{BinaryOp, DType, Graph, NodeId, Op};
use emit::{memref_type, tensor_type, Elem, Emitter, Generic, Map, Val};
use std::collections::HashMap;
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

impl Signature {
    /// The sizes of every argument of `@forward`, in order (flags are scalars).
    pub fn argument_sizes(&self) -> Vec<Vec<usize>> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .map(|b| b.sizes.clone())
            .chain(self.checks.iter().map(|_| Vec::new()))
            .collect()
    }
}

/// The MLIR source of a graph and the signature of its `@forward`.
pub(crate) struct Lowered {
    pub text: String,
    pub signature: Signature,
}

/// The name of the lowered function (its C interface is `_mlir_ciface_forward`).
pub(crate) const ENTRY: &str = "forward";

/// Lower `graph` to MLIR text (not yet parsed or verified). Dynamic sparse attention
/// (`moba_attention`, `lsh_attention`, `routing_attention`) runs as its expansion
/// ([`attnc_ir::expand`]): the ops computing its block list and the block-sparse
/// kernel over that list. So does `linear_attention`, as plain ops (matmuls, scans)
/// except in its recurrent kernel form ([`attnc_ir::expand::is_kernel_form`]), which
/// runs as a hand-written loop over time (`crate::kernels::linear`).
pub(crate) fn lower(graph: &Graph) -> Result<Lowered> {
    if attnc_ir::expand::needs_expansion(graph) {
        let expanded = attnc_ir::expand::expand(graph).map_err(|e| BackendError::InvalidGraph {
            message: format!("expanding dynamic sparse and linear attention: {e}"),
        })?;
        return lower_expanded(&expanded);
    }
    lower_expanded(graph)
}

fn lower_expanded(graph: &Graph) -> Result<Lowered> {
    let live = live_nodes(graph);
    let plan = Plan::new(graph, &live);
    let mut l = Lowering {
        graph,
        absorbed: absorbed_layouts(graph, &plan),
        em: Emitter::new(),
        values: vec![None; graph.len()],
        outer: vec![None; graph.len()],
        signature: Signature::default(),
        flags: Vec::new(),
        functions: String::new(),
        distinct: HashMap::new(),
        buffers: 0,
        kernels: KernelSet::default(),
    };
    l.declare_sources();
    l.declare_outputs();
    for (index, segment) in plan.segments.iter().enumerate() {
        l.lower_segment(&plan, index, segment)?;
    }
    l.store_source_outputs(&plan)?;
    Ok(l.finish())
}

fn is_source(op: &Op) -> bool {
    matches!(op, Op::Input { .. } | Op::Param { .. })
}

/// A run of consecutive live nodes of one IR layer (inputs and params aside, they
/// belong to `@forward`): the body of one layer function.
struct Segment {
    layer: Option<String>,
    nodes: Vec<NodeId>,
    /// The nodes made outside it that it reads (its arguments), in order of first use.
    inputs: Vec<NodeId>,
}

/// How the live nodes split into layer functions.
struct Plan {
    segments: Vec<Segment>,
    /// The segment of each node, by node index; `None` for inputs, params and dead nodes.
    segment_of: Vec<Option<usize>>,
    /// Whether a later segment reads the node (it is a result of its function).
    exported: Vec<bool>,
}

impl Plan {
    fn new(graph: &Graph, live: &[bool]) -> Plan {
        let mut segments: Vec<Segment> = Vec::new();
        let mut segment_of = vec![None; graph.len()];
        for id in graph.node_ids().filter(|id| live[id.index()]) {
            let node = graph.node(id);
            if is_source(&node.op) {
                continue;
            }
            if segments.last().is_none_or(|s| s.layer != node.layer) {
                segments.push(Segment {
                    layer: node.layer.clone(),
                    nodes: Vec::new(),
                    inputs: Vec::new(),
                });
            }
            let index = segments.len() - 1;
            segment_of[id.index()] = Some(index);
            segments[index].nodes.push(id);
        }
        let mut exported = vec![false; graph.len()];
        for (index, segment) in segments.iter_mut().enumerate() {
            for &id in &segment.nodes {
                for o in graph.operands(id) {
                    let from = segment_of.get(o.index()).copied().flatten();
                    if from != Some(index) && !segment.inputs.contains(&o) {
                        segment.inputs.push(o);
                        if from.is_some() {
                            exported[o.index()] = true;
                        }
                    }
                }
            }
        }
        Plan {
            segments,
            segment_of,
            exported,
        }
    }
}

/// `forward.3.layers.1.attn`: the symbol of layer function `index` (unique by the
/// index; the layer name, restricted to what MLIR and LLVM take unquoted, is for
/// readers of the IR and of profiles).
fn function_name(index: usize, layer: Option<&str>) -> String {
    let mut name = format!("{ENTRY}.{index}");
    if let Some(layer) = layer {
        name.push('.');
        name.extend(layer.chars().map(|c| {
            if c.is_ascii_alphanumeric() || "_.$-".contains(c) {
                c
            } else {
                '_'
            }
        }));
    }
    name
}

/// Attributes of `@forward`: a C interface (`_mlir_ciface_forward`, one descriptor
/// pointer per argument). The function itself is internal and inlined into that
/// wrapper: a call passing every memref argument expanded (pointers, offset, sizes,
/// strides — thousands of scalars for a deep model) costs LLVM's instruction
/// selection time quadratic in their number, and the JIT would emit two such calls
/// (the C wrapper and its own packed wrapper of every external function).
const ENTRY_ATTRIBUTES: &str = "llvm.emit_c_interface, \
llvm.linkage = #llvm.linkage<internal>, passthrough = [\"alwaysinline\"]";

/// `text` without the ` loc("...")` that ends each statement.
fn without_locations(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for line in text.lines() {
        let code = match line.rfind(" loc(\"") {
            Some(at) if line.ends_with("\")") => &line[..at],
            _ => line,
        };
        s.push_str(code);
        s.push('\n');
    }
    s
}

/// Attributes of a layer function: LLVM must not inline it back into `@forward` (that
/// would bring back one huge function), and nothing outside the module calls it.
const LAYER_ATTRIBUTES: &str =
    "passthrough = [\"noinline\"], llvm.linkage = #llvm.linkage<internal>";

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

/// Layout ops whose result is never written out, because every op reading it takes
/// it in another form: transposes of the last two axes (`[.., m, k]` to `[.., k, m]`)
/// that only float matmuls read — the GEMM kernel packs the operand transposed
/// (`Aᵀ·B`, `A·Bᵀ`) — and slices that only elementwise ops, concats and float
/// matmuls read, which take the slice as a strided view (a `linalg.generic` input,
/// a kernel operand). Not for a graph output or a tensor a later layer function
/// reads (those are written out as they are); a view never reaches a copy (which
/// would need `memrefCopy`).
fn absorbed_layouts(graph: &Graph, plan: &Plan) -> Vec<bool> {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        None,
        Transpose,
        Slice,
    }
    let n = graph.len();
    let mut kind = vec![Kind::None; n];
    for id in graph.node_ids() {
        let i = id.index();
        if plan.segment_of[i].is_none() || plan.exported[i] {
            continue;
        }
        let node = graph.node(id);
        kind[i] = match &node.op {
            Op::Transpose { perm } if node.ty.dtype.is_float() => {
                let r = perm.len();
                let swaps_last_two = r >= 2
                    && perm[..r - 2].iter().enumerate().all(|(i, &p)| p == i)
                    && perm[r - 2] == r - 1
                    && perm[r - 1] == r - 2;
                if swaps_last_two {
                    Kind::Transpose
                } else {
                    Kind::None
                }
            }
            Op::Slice { .. } => Kind::Slice,
            _ => Kind::None,
        };
    }
    for (_, id) in graph.outputs() {
        kind[id.index()] = Kind::None;
    }
    let mut used = vec![false; n];
    for id in graph.node_ids() {
        let Some(segment) = plan.segment_of[id.index()] else {
            continue;
        };
        let node = graph.node(id);
        let float_matmul = matches!(node.op, Op::MatMul) && node.ty.dtype.is_float();
        // Ops whose result is a fresh tensor whatever their operands (a cast to the
        // same type or a concat of one operand would pass the view on).
        let reads_views = float_matmul
            || matches!(
                node.op,
                Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select
            )
            || matches!(node.op, Op::Concat { .. }) && graph.operands(id).len() > 1;
        for o in graph.operands(id) {
            let o = o.index();
            used[o] = true;
            let absorbs = match kind[o] {
                Kind::Transpose => float_matmul,
                Kind::Slice => reads_views,
                Kind::None => false,
            };
            if !absorbs || plan.segment_of[o] != Some(segment) {
                kind[o] = Kind::None;
            }
        }
    }
    // Only what something reads (a dead node is not lowered anyway).
    kind.iter()
        .zip(&used)
        .map(|(&k, &u)| k != Kind::None && u)
        .collect()
}

/// `layers.0.attn:%12 matmul`: what a diagnostic prints as the place of an op.
pub(crate) fn location(graph: &Graph, id: NodeId) -> String {
    let node = graph.node(id);
    match &node.layer {
        Some(layer) => format!("{layer}:%{} {}", id.index(), node.op.name()),
        None => format!("%{} {}", id.index(), node.op.name()),
    }
}

/// A memref of `@forward` holding a node's value: an argument (input or param,
/// `source` is its dtype: it is entered as [`enter`] does) or a buffer written by a
/// layer function.
#[derive(Clone, Debug)]
struct Buffer {
    name: String,
    sizes: Vec<usize>,
    elem: Elem,
    source: Option<DType>,
}

impl Buffer {
    fn ty(&self) -> String {
        memref_type(&self.sizes, self.elem)
    }
}

struct Lowering<'g> {
    graph: &'g Graph,
    /// By node index: a transpose or slice that is never materialized, the ops
    /// reading it taking its operand transposed or a view (see [`absorbed_layouts`]).
    absorbed: Vec<bool>,
    em: Emitter,
    /// The tensor of each node in the layer function being written, by node index.
    values: Vec<Option<Val>>,
    /// The memref of each node in `@forward`: inputs, params, layer results.
    outer: Vec<Option<Buffer>>,
    signature: Signature,
    /// Status flags (rank-0 i8 tensors) of the run-time checks of the layer function
    /// being written: the last `flags.len()` entries of `signature.checks`.
    flags: Vec<Val>,
    /// The text of the layer functions written so far.
    functions: String,
    /// The name of each layer function written so far, by its code without locations.
    distinct: HashMap<String, String>,
    /// How many buffers (`%bN`) `@forward` allocates so far.
    buffers: usize,
    /// The hand-scheduled kernels (GEMM, attention) the layer functions call.
    kernels: KernelSet,
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
            let dtype = graph.node(id).ty.dtype;
            self.outer[id.index()] = Some(Buffer {
                name: format!("%arg{i}"),
                sizes: graph.sizes(id),
                elem: Elem::at_boundary(dtype),
                source: Some(dtype),
            });
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
        let unlowerable = |message: String| BackendError::Unlowerable {
            op: node.op.name().to_string(),
            layer: node.layer.clone(),
            node: id.index(),
            message,
        };
        match &node.op {
            Op::Mask { expr } => {
                crate::kernels::check_mask(expr, &graph.dims).map_err(unlowerable)?
            }
            Op::Attention(a) => {
                crate::kernels::attention::check(a, &graph.dims).map_err(unlowerable)?
            }
            _ => {}
        }
        // Matmuls and attention are hand-scheduled kernels (`crate::kernels`).
        let kernels = &mut self.kernels;
        Ok(match &node.op {
            // Arguments of `@forward`, entered where they are read (`lower_segment`).
            Op::Input { .. } | Op::Param { .. } => {
                return Err(BackendError::InvalidGraph {
                    message: format!("internal: %{} is an argument, not an op", id.index()),
                })
            }
            Op::Moba(_) | Op::Lsh(_) | Op::Routing(_) => {
                return Err(BackendError::InvalidGraph {
                    message: format!("internal: %{} is expanded before lowering", id.index()),
                })
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
            Op::Mask { expr } => {
                crate::kernels::declare_random_tables(kernels, expr, &graph.dims);
                elementwise::mask(em, expr, &sizes, &graph.dims)
            }
            Op::Reduce {
                kind,
                axes,
                keep_dims,
            } => reduce::reduce(em, &ops[0], *kind, axes, *keep_dims),
            Op::Softmax { axis } => reduce::softmax(em, &ops[0], *axis),
            Op::LayerNorm { eps } => reduce::layer_norm(em, &ops[0], &ops[1], &ops[2], *eps),
            Op::RmsNorm { eps } => reduce::rms_norm(em, &ops[0], &ops[1], *eps),
            Op::MatMul if elem.is_float() => {
                let operands = graph.operands(id);
                let transposed = |o: NodeId| {
                    self.absorbed[o.index()] && matches!(graph.node(o).op, Op::Transpose { .. })
                };
                let a = (&ops[0], transposed(operands[0]));
                let b = (&ops[1], transposed(operands[1]));
                kernel_call::matmul(em, kernels, a, b, &sizes)
            }
            Op::MatMul => reduce::matmul(em, &ops[0], &ops[1], &sizes),
            Op::Reshape { .. } => layout::reshape(em, &ops[0], &sizes),
            // Read in its own layout by the matmuls using it (see `absorbed_layouts`).
            Op::Transpose { .. } if self.absorbed[id.index()] => ops[0].clone(),
            Op::Transpose { perm } => layout::transpose(em, &ops[0], perm),
            Op::Broadcast { .. } => layout::broadcast(em, &ops[0], &sizes),
            Op::Concat { axis } => layout::concat(em, &ops, *axis, &sizes),
            Op::Slice { axis, start, .. } => {
                // The verifier resolved `start`; the result sizes give the length.
                let start = graph.dims.resolve_dim(start).unwrap_or(0) as usize;
                let view = layout::slice_view(em, &ops[0], *axis, start, &sizes);
                if self.absorbed[id.index()] {
                    view
                } else {
                    layout::copy(em, &view)
                }
            }
            Op::Gather { axis } => self.checked_gather(id, &ops[0], &ops[1], *axis, &sizes),
            Op::Embedding => self.checked_gather(id, &ops[0], &ops[1], 0, &sizes),
            Op::Rope { theta, scaling } => layout::rope(em, &ops[0], *theta, scaling),
            // Always float (the verifier requires it).
            Op::Attention(a) => {
                let (q, k, v) = (&ops[0], &ops[1], &ops[2]);
                let bias = a.bias.then(|| &ops[3]);
                let segments = a.segments.then(|| &ops[3 + a.bias as usize]);
                let list = a.listed.then(|| &ops[ops.len() - 1]);
                let extra = kernel_call::Extra {
                    bias,
                    segments,
                    list,
                };
                kernel_call::attention(em, kernels, a, [q, k, v], extra, &graph.dims)
            }
            Op::ScatterAdd { axis } => {
                self.checked_scatter_add(id, &ops[0], &ops[1], &ops[2], *axis)
            }
            Op::TopK { k, output } => select::topk(em, &ops[0], *k as usize, *output),
            Op::CumSum { axis } => select::cumsum(em, &ops[0], *axis),
            Op::Scan { axis } => select::scan(em, &ops[0], &ops[1], *axis),
            Op::RandomFeatures { seed } => {
                let values = attnc_ir::orthogonal_features(sizes[0], sizes[1], *seed);
                elementwise::dense(em, &values, &sizes, elem).ok_or_else(|| {
                    unlowerable(format!("random features of type {}", node.ty.dtype))
                })?
            }
            Op::LinearAttention(l) if !attnc_ir::expand::is_kernel_form(l) => {
                return Err(BackendError::InvalidGraph {
                    message: format!("internal: %{} is expanded before lowering", id.index()),
                })
            }
            // The recurrent loop, unnormalized, with no decay or one per step or channel.
            Op::LinearAttention(l) => {
                let (q, k, v) = (&ops[0], &ops[1], &ops[2]);
                kernel_call::linear(em, kernels, l.decay, [q, k, v], ops.get(3))
            }
            // Float operands (the verifier requires it); the gate's bound is checked.
            Op::MoeDispatch(m) => self.checked_moe(id, m, &ops),
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

    /// `scatter_add`: add at clamped indices and check that none needed clamping.
    fn checked_scatter_add(
        &mut self,
        id: NodeId,
        data: &Val,
        indices: &Val,
        updates: &Val,
        axis: usize,
    ) -> Val {
        let flag = layout::index_out_of_range(&mut self.em, indices, data.sizes[axis]);
        self.check(id, flag, "an index is out of range");
        select::scatter_add(&mut self.em, data, indices, updates, axis)
    }

    /// `moe_dispatch` through its kernel, whose flag says whether the gate kept to its
    /// bound (the pairs past it are skipped).
    fn checked_moe(&mut self, id: NodeId, m: &attnc_ir::MoeDispatch, ops: &[Val]) -> Val {
        let (out, flag) = kernel_call::moe(&mut self.em, &mut self.kernels, m, ops);
        let message = match m.choice {
            attnc_ir::MoeChoice::Token => {
                "a gate row has more non-zeros than the k experts a token may choose"
            }
            attnc_ir::MoeChoice::Expert => {
                "a gate column has more non-zeros than the k tokens an expert may choose"
            }
        };
        self.check(id, flag, message);
        out
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

    /// Every output's out-param, in order (sizes as the graph infers them).
    fn declare_outputs(&mut self) {
        let graph = self.graph;
        for (name, id) in graph.outputs() {
            self.signature.outputs.push(Boundary {
                name: name.clone(),
                kind: "output",
                dtype: graph.node(*id).ty.dtype,
                sizes: graph.sizes(*id),
            });
        }
    }

    /// Write `segment` as layer function `index` (or find the identical one written
    /// before) and call it from `@forward`.
    fn lower_segment(&mut self, plan: &Plan, index: usize, segment: &Segment) -> Result<()> {
        let graph = self.graph;
        // A fresh emitter for the function (names restart at `%v1`, so identical
        // layers are written identically); `@forward`'s is put back below.
        let forward = std::mem::replace(&mut self.em, Emitter::new());
        // Parameters of the function (`%pN: memref`) and what `@forward` passes.
        let mut params: Vec<String> = Vec::new();
        let mut call_args: Vec<Buffer> = Vec::new();
        // The buffer each entered parameter came from, by the tensor's name.
        let mut entered: HashMap<String, Buffer> = HashMap::new();
        // Inputs bound to one buffer share one parameter (`restrict`: one `to_tensor`
        // per buffer).
        let mut by_buffer: HashMap<String, Val> = HashMap::new();
        for &o in &segment.inputs {
            let buffer = self.outer_buffer(o)?;
            let val = match by_buffer.get(&buffer.name) {
                Some(val) => val.clone(),
                None => {
                    let param = format!("%p{}", params.len());
                    params.push(format!("{param}: {}", buffer.ty()));
                    self.em.set_loc(&location(graph, o));
                    let val = match buffer.source {
                        Some(dtype) => enter(&mut self.em, &param, &buffer.sizes, dtype),
                        None => {
                            let (memref, ty) =
                                (buffer.ty(), tensor_type(&buffer.sizes, buffer.elem));
                            self.em.tensor_op(
                                format_args!(
                                    "bufferization.to_tensor {param} restrict : {memref} to {ty}"
                                ),
                                &buffer.sizes,
                                buffer.elem,
                            )
                        }
                    };
                    entered.insert(val.name.clone(), buffer.clone());
                    by_buffer.insert(buffer.name.clone(), val.clone());
                    call_args.push(buffer);
                    val
                }
            };
            self.values[o.index()] = Some(val);
        }
        for &id in &segment.nodes {
            self.em.set_loc(&location(graph, id));
            let val = self.lower_node(id)?;
            self.values[id.index()] = Some(val);
        }

        // Outputs and status flags computed here are written here, into `@forward`'s
        // out-params.
        let first_output = self.signature.inputs.len();
        for (i, (name, id)) in graph.outputs().iter().enumerate() {
            if plan.segment_of[id.index()] != Some(index) {
                continue;
            }
            self.em.set_loc(&format!("output `{name}`"));
            let val = self.operand(*id)?;
            let val = leave(&mut self.em, &val, graph.node(*id).ty.dtype);
            let dest = Buffer {
                name: format!("%arg{}", first_output + i),
                sizes: val.sizes.clone(),
                elem: val.elem,
                source: None,
            };
            self.write(&mut params, &mut call_args, &val, dest);
        }
        let first_flag = first_output + graph.outputs().len();
        let first_check = self.signature.checks.len() - self.flags.len();
        for (k, flag) in std::mem::take(&mut self.flags).iter().enumerate() {
            let c = first_check + k;
            let check = &self.signature.checks[c];
            self.em
                .set_loc(&format!("%{} {} check", check.node, check.op));
            let dest = Buffer {
                name: format!("%arg{}", first_flag + c),
                sizes: flag.sizes.clone(),
                elem: flag.elem,
                source: None,
            };
            self.write(&mut params, &mut call_args, flag, dest);
        }

        // What later layers read: one new buffer per distinct tensor. A tensor the
        // layer passes on unchanged (a no-op reshape of an argument) is not copied:
        // later layers read the buffer it came from.
        let mut results: Vec<(String, Buffer)> = Vec::new();
        for &id in &segment.nodes {
            if !plan.exported[id.index()] {
                continue;
            }
            let local = self.operand(id)?;
            if let Some(buffer) = entered.get(&local.name) {
                self.outer[id.index()] = Some(buffer.clone());
                continue;
            }
            if let Some((_, buffer)) = results.iter().find(|(name, _)| *name == local.name) {
                self.outer[id.index()] = Some(buffer.clone());
                continue;
            }
            self.em.set_loc(&location(graph, id));
            let buffer = Buffer {
                name: format!("%b{}", self.buffers),
                sizes: local.sizes.clone(),
                elem: local.elem,
                source: None,
            };
            self.buffers += 1;
            self.write(&mut params, &mut call_args, &local, buffer.clone());
            self.outer[id.index()] = Some(buffer.clone());
            results.push((local.name, buffer));
        }
        let layer = segment.layer.as_deref();
        self.em.set_loc(layer.unwrap_or(ENTRY));
        self.em.stmt("return");
        let body = std::mem::replace(&mut self.em, forward).finish();

        // Layers that lower to the same code (up to locations) share the function of
        // the first: LLVM compiles each distinct layer once, however deep the model.
        let signature = format!("({})", params.join(", "));
        let key = format!("{signature}\n{}", without_locations(&body));
        let function = match self.distinct.get(&key) {
            Some(name) => name.clone(),
            None => {
                let name = function_name(index, layer);
                let _ = writeln!(
                    self.functions,
                    "func.func private @{name}{signature} attributes {{{LAYER_ATTRIBUTES}}} {{"
                );
                self.functions.push_str(&body);
                let _ = writeln!(self.functions, "}}");
                self.distinct.insert(key, name.clone());
                name
            }
        };

        // In `@forward`: the buffers of the results, then the call.
        self.em.set_loc(layer.unwrap_or(ENTRY));
        for (_, buffer) in &results {
            self.em.stmt(format_args!(
                "{} = memref.alloc() {{alignment = 64 : i64}} : {}",
                buffer.name,
                buffer.ty()
            ));
        }
        let names: Vec<&str> = call_args.iter().map(|b| b.name.as_str()).collect();
        let types: Vec<String> = call_args.iter().map(Buffer::ty).collect();
        self.em.stmt(format_args!(
            "func.call @{function}({}) : ({}) -> ()",
            names.join(", "),
            types.join(", ")
        ));
        for &id in segment.inputs.iter().chain(&segment.nodes) {
            self.values[id.index()] = None;
        }
        Ok(())
    }

    /// Write `val` into `dest` through a new memref parameter of the layer function.
    fn write(
        &mut self,
        params: &mut Vec<String>,
        call_args: &mut Vec<Buffer>,
        val: &Val,
        dest: Buffer,
    ) {
        let param = format!("%p{}", params.len());
        params.push(format!("{param}: {}", dest.ty()));
        materialize(&mut self.em, val, &param);
        call_args.push(dest);
    }

    /// The memref of `id` in `@forward`.
    fn outer_buffer(&self, id: NodeId) -> Result<Buffer> {
        self.outer
            .get(id.index())
            .cloned()
            .flatten()
            .ok_or_else(|| BackendError::InvalidGraph {
                message: format!("%{} is used before it is defined", id.index()),
            })
    }

    /// Copy the outputs that are inputs or params themselves (no layer function
    /// computes them) into their out-params.
    fn store_source_outputs(&mut self, plan: &Plan) -> Result<()> {
        let graph = self.graph;
        let first = self.signature.inputs.len();
        for (i, (name, id)) in graph.outputs().iter().enumerate() {
            if plan.segment_of[id.index()].is_some() {
                continue;
            }
            self.em.set_loc(&format!("output `{name}`"));
            let source = self.outer_buffer(*id)?;
            let ty = source.ty();
            self.em.stmt(format_args!(
                "memref.copy {}, %arg{} : {ty} to {ty}",
                source.name,
                first + i
            ));
        }
        Ok(())
    }

    /// The whole module: the layer functions, then `@forward` (signature, body, return).
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
        text.push_str(self.kernels.text());
        text.push_str(&self.functions);
        let _ = writeln!(
            text,
            "func.func @{ENTRY}({}) attributes {{{ENTRY_ATTRIBUTES}}} {{",
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
