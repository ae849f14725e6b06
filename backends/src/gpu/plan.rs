//! The launch plan: which buffers exist and which kernel runs when, for a graph.
//!
//! Walking the live nodes in order (operands before users):
//! - inputs and params get buffers of their role, bound by name;
//! - a node whose every reader is elementwise, used once (or free to recompute:
//!   `const`, `iota`, `mask`, `random_features`) and not an output is *inlined*: its
//!   readers compute it (elementwise fusion, [`super::ew`]);
//! - a `reshape` of a node with a buffer aliases that buffer (no launch);
//! - every other node gets a buffer and one launch (or a few: `scatter_add` copies
//!   then adds, `moe_dispatch` routes, runs its experts and combines), reading its
//!   operands' buffers;
//! - an output whose node is computed by a launch is written in place into its
//!   output buffer; one that is an input, a param, an alias or named twice is copied.
//!
//! Then temporaries are reused: a temporary whose last reader has run takes the
//! value of a later node of the same dtype and sizes.

use super::attention::{self, AttentionOperands};
use super::ew::{self, fusible};
use super::gemm::{self, MatMul};
use super::linear::{self, LinearOperands};
use super::misc;
use super::mma;
use super::module::{KernelCode, Kernels};
use super::moe::{self, MoeOperands};
use super::program::{Arch, Arg, Buffer, BufferRole, GpuProgram, Launch, StatusCheck};
use super::rows::{self, Rows};
use super::GpuOptions;
use crate::{BackendError, Result};
use attnc_ir::{DType, Decay, Graph, NodeId, Op};
use std::collections::HashMap;

/// The plan of `graph` and the module text of its kernels.
pub(crate) struct Planned {
    pub module: String,
    pub program: GpuProgram,
    /// Whether every index the kernels compute fits in 32 bits (every buffer and value
    /// has at most 2^30 elements, so even a grid-stride loop's last step stays below
    /// 2^31):
    /// then `index` lowers to i32, which halves the integer work and the registers
    /// addresses take.
    pub index32: bool,
}

pub(crate) fn plan(graph: &Graph, arch: Arch, options: &GpuOptions) -> Result<Planned> {
    if attnc_ir::expand::needs_expansion(graph) {
        let expanded = attnc_ir::expand::expand(graph).map_err(|e| BackendError::InvalidGraph {
            message: format!("expanding dynamic sparse and linear attention: {e}"),
        })?;
        return plan_expanded(&expanded, arch, options);
    }
    plan_expanded(graph, arch, options)
}

fn plan_expanded(graph: &Graph, arch: Arch, options: &GpuOptions) -> Result<Planned> {
    let n = graph.len();
    let mut live = vec![false; n];
    for (_, id) in graph.outputs() {
        live[id.index()] = true;
    }
    for i in (0..n).rev() {
        if live[i] {
            for o in graph.operands(NodeId::new(i)) {
                live[o.index()] = true;
            }
        }
    }
    let mut is_output = vec![false; n];
    for (_, id) in graph.outputs() {
        is_output[id.index()] = true;
    }
    // Uses by operand slot, and whether every reader is elementwise.
    let mut uses = vec![0usize; n];
    let mut fusible_readers = vec![true; n];
    for id in graph.node_ids().filter(|id| live[id.index()]) {
        let reader = fusible(&graph.node(id).op);
        for o in graph.operands(id) {
            uses[o.index()] += 1;
            fusible_readers[o.index()] &= reader;
        }
    }
    let inline: Vec<bool> = (0..n)
        .map(|i| {
            let op = &graph.node(NodeId::new(i)).op;
            live[i]
                && fusible(op)
                && !is_output[i]
                && fusible_readers[i]
                && uses[i] > 0
                && (ew::free(op) || uses[i] == 1)
        })
        .collect();
    let mut p = Planner {
        graph,
        arch,
        options: options.clone(),
        kernels: Kernels::default(),
        buffers: Vec::new(),
        buf_of: vec![None; n],
        launches: Vec::new(),
        inline,
        output_names: HashMap::new(),
        checks: Vec::new(),
    };
    for (name, id) in graph.outputs() {
        p.output_names
            .entry(id.index())
            .or_insert_with(|| name.clone());
    }
    // Every input and param has its buffer (the runner binds them all), live or not.
    for id in graph.node_ids() {
        let source = matches!(graph.node(id).op, Op::Input { .. } | Op::Param { .. });
        if live[id.index()] || source {
            p.node(id)?;
        }
    }
    p.copy_outputs()?;
    let (buffers, launches, checks) = reuse_temporaries(p.buffers, p.launches, p.checks);
    let module = p.kernels.text();
    // Every buffer, and every value an expression computes positions in (a slice or
    // gather may read a larger inlined value than it yields).
    let small = |sizes: &[usize]| sizes.iter().map(|&n| n as u64).product::<u64>() <= 1 << 30;
    let index32 = buffers.iter().all(|b| small(&b.sizes))
        && graph
            .node_ids()
            .filter(|id| live[id.index()])
            .all(|id| small(&graph.sizes(id)));
    Ok(Planned {
        module,
        index32,
        program: GpuProgram {
            arch,
            ptx: String::new(),
            kernels: p.kernels.list,
            buffers,
            launches,
            checks,
        },
    })
}

struct Planner<'g> {
    graph: &'g Graph,
    arch: Arch,
    options: GpuOptions,
    kernels: Kernels,
    buffers: Vec<Buffer>,
    buf_of: Vec<Option<usize>>,
    launches: Vec<Launch>,
    inline: Vec<bool>,
    /// The first output naming each node.
    output_names: HashMap<usize, String>,
    checks: Vec<StatusCheck>,
}

/// `(buffer, dtype, sizes)` of a value a kernel reads.
type Src = (usize, DType, Vec<usize>);

impl Planner<'_> {
    fn error(&self, id: NodeId, message: impl Into<String>) -> BackendError {
        let node = self.graph.node(id);
        BackendError::Unlowerable {
            op: node.op.name().to_string(),
            layer: node.layer.clone(),
            node: id.index(),
            message: message.into(),
        }
    }

    fn new_buffer(
        &mut self,
        role: BufferRole,
        dtype: DType,
        sizes: Vec<usize>,
        node: usize,
    ) -> usize {
        self.buffers.push(Buffer {
            role,
            dtype,
            sizes,
            node,
        });
        self.buffers.len() - 1
    }

    /// The buffer a node computed by a launch writes: its output buffer when it is
    /// the first output naming it.
    fn result(&mut self, id: NodeId) -> usize {
        let node = self.graph.node(id);
        let role = match self.output_names.remove(&id.index()) {
            Some(name) => BufferRole::Output(name),
            None => BufferRole::Temp,
        };
        self.new_buffer(role, node.ty.dtype, self.graph.sizes(id), id.index())
    }

    fn src(&self, id: NodeId) -> Result<Src> {
        let buf = self.buf_of[id.index()].ok_or_else(|| BackendError::InvalidGraph {
            message: format!("internal: %{} has no buffer when it is read", id.index()),
        })?;
        Ok((buf, self.graph.node(id).ty.dtype, self.graph.sizes(id)))
    }

    fn launch(&mut self, id: NodeId, code: KernelCode, grid: [u32; 3]) -> Result<()> {
        if grid[1] > 65535 || grid[2] > 65535 || grid[0] > i32::MAX as u32 || grid.contains(&0) {
            return Err(self.error(
                id,
                format!("a launch grid of {grid:?} blocks is out of range"),
            ));
        }
        if code.shared_bytes > self.arch.max_shared_bytes() {
            return Err(self.error(
                id,
                format!(
                    "a kernel needs {} bytes of shared memory, more than {} has",
                    code.shared_bytes,
                    self.arch.name()
                ),
            ));
        }
        let kernel = self.kernels.add(&code);
        let mut args = code.args.clone();
        for &(param, node, message) in &code.args.flags {
            let buf = self.status_buffer(node.unwrap_or(id.index()), message);
            args.list[param].0 = buf;
            args.writes.push(buf);
        }
        let node = self.graph.node(id);
        self.launches.push(Launch {
            kernel,
            grid,
            args: args.buffers().into_iter().map(Arg::Buffer).collect(),
            writes: args.writes,
            node: id.index(),
            layer: node.layer.clone(),
        });
        Ok(())
    }

    /// The status buffer of the run-time check `message` of node `node` (one per node
    /// and message, however many kernels make it).
    fn status_buffer(&mut self, node: usize, message: &'static str) -> usize {
        if let Some(c) = self
            .checks
            .iter()
            .find(|c| c.node == node && c.message == message)
        {
            return c.buffer;
        }
        let buffer = self.new_buffer(BufferRole::Status, DType::I32, vec![1], node);
        let n = self.graph.node(NodeId::new(node));
        self.checks.push(StatusCheck {
            buffer,
            node,
            op: n.op.name().to_string(),
            layer: n.layer.clone(),
            message,
        });
        buffer
    }

    fn node(&mut self, id: NodeId) -> Result<()> {
        let graph = self.graph;
        let node = graph.node(id);
        let ops = graph.operands(id);
        if node.op.arity().is_some_and(|a| a != ops.len()) {
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
        let dtype = node.ty.dtype;
        match &node.op {
            Op::Input { name } => {
                let b = self.new_buffer(BufferRole::Input(name.clone()), dtype, sizes, id.index());
                self.buf_of[id.index()] = Some(b);
                return Ok(());
            }
            Op::Param { name } => {
                let b = self.new_buffer(BufferRole::Param(name.clone()), dtype, sizes, id.index());
                self.buf_of[id.index()] = Some(b);
                return Ok(());
            }
            _ if self.inline[id.index()] => return Ok(()),
            Op::Reshape { .. } if !self.inline[ops[0].index()] => {
                self.buf_of[id.index()] = self.buf_of[ops[0].index()];
                if self.buf_of[id.index()].is_none() {
                    return Err(BackendError::InvalidGraph {
                        message: format!(
                            "internal: %{} reshapes a value without a buffer",
                            id.index()
                        ),
                    });
                }
                return Ok(());
            }
            _ => {}
        }
        let out = self.result(id);
        match &node.op {
            op if fusible(op) => {
                let (body, args, count) = ew::kernel(
                    graph,
                    &self.inline,
                    &self.buf_of,
                    &mut self.kernels.globals,
                    id,
                    out,
                )?;
                let code = KernelCode {
                    op: "elementwise".into(),
                    args,
                    block: [ew::BLOCK as u32, 1, 1],
                    shared_bytes: 0,
                    body,
                };
                self.launch(id, code, ew::launch_grid(count))?;
            }
            Op::Softmax { axis } => {
                let x = self.src(ops[0])?;
                let (outer, len, inner) = misc::split(&x.2, *axis);
                let rows = Rows {
                    rows: outer * inner,
                    n: len,
                    inner,
                };
                let (code, grid) = rows::softmax((x.0, x.1), out, rows);
                self.launch(id, code, grid)?;
            }
            Op::LayerNorm { eps } | Op::RmsNorm { eps } => {
                let x = self.src(ops[0])?;
                let gamma = self.src(ops[1])?;
                let beta = match node.op {
                    Op::LayerNorm { .. } => Some(self.src(ops[2])?.0),
                    _ => None,
                };
                let d = *x.2.last().unwrap_or(&1);
                let count: usize = x.2.iter().product();
                let (code, grid) =
                    rows::norm((x.0, x.1), gamma.0, beta, out, count / d.max(1), d, *eps);
                self.launch(id, code, grid)?;
            }
            Op::Reduce { kind, axes, .. } => {
                let x = self.src(ops[0])?;
                let (code, grid) = rows::reduce_op((x.0, x.1), &x.2, axes, *kind, out);
                self.launch(id, code, grid)?;
            }
            Op::MatMul => {
                let mm = MatMul {
                    a: self.src(ops[0])?,
                    b: self.src(ops[1])?,
                    out: (out, dtype, sizes.clone()),
                };
                let (code, grid) = if self.options.tensor_cores && mma::applies(&mm) {
                    mma::matmul(&mm).map_err(|m| self.error(id, m))?
                } else if dtype.is_float() {
                    gemm::matmul(&mm).map_err(|m| self.error(id, m))?
                } else {
                    gemm::matmul_int(&mm)
                };
                self.launch(id, code, grid)?;
            }
            Op::Attention(a) => {
                let o = AttentionOperands {
                    q: self.src(ops[0])?,
                    k: self.src(ops[1])?,
                    v: self.src(ops[2])?,
                    bias: if a.bias {
                        Some(self.src(ops[3])?)
                    } else {
                        None
                    },
                    segments: if a.segments {
                        Some(self.src(ops[3 + a.bias as usize])?)
                    } else {
                        None
                    },
                    list: if a.listed {
                        Some(self.src(ops[ops.len() - 1])?)
                    } else {
                        None
                    },
                    out: (out, dtype, sizes.clone()),
                };
                attention::check(a, &o, &graph.dims, self.arch).map_err(|m| self.error(id, m))?;
                let (code, grid) =
                    attention::attention(a, &o, &graph.dims, &mut self.kernels.globals);
                self.launch(id, code, grid)?;
            }
            Op::LinearAttention(l) => {
                if !attnc_ir::expand::is_kernel_form(l) {
                    return Err(BackendError::InvalidGraph {
                        message: format!("internal: %{} is expanded before planning", id.index()),
                    });
                }
                if !l.causal {
                    return Err(
                        self.error(id, "the recurrent form needs a causal linear attention")
                    );
                }
                let q = self.src(ops[0])?;
                let k = self.src(ops[1])?.0;
                let v = self.src(ops[2])?;
                if q.2.contains(&0) || v.2.contains(&0) {
                    return Err(self.error(id, "a linear attention over an empty sequence or head"));
                }
                let log_decay = match l.decay {
                    Decay::None => None,
                    d => Some((self.src(ops[3])?.0, d)),
                };
                let lo = LinearOperands {
                    q,
                    k,
                    v: (v.0, v.2),
                    log_decay,
                    out,
                };
                let (code, grid) = linear::linear(&lo);
                self.launch(id, code, grid)?;
            }
            Op::MoeDispatch(m) => {
                let srcs: Vec<(usize, Vec<usize>)> = ops
                    .iter()
                    .map(|&o| self.src(o).map(|s| (s.0, s.2)))
                    .collect::<Result<_>>()?;
                let mo = MoeOperands {
                    ops: srcs,
                    out,
                    dtype,
                };
                let mut temps: Vec<(DType, Vec<usize>)> = Vec::new();
                let first = self.buffers.len();
                let steps = {
                    let mut temp = |dt: DType, s: Vec<usize>| {
                        temps.push((dt, s));
                        first + temps.len() - 1
                    };
                    moe::moe(m, &mo, &mut temp).map_err(|msg| self.error(id, msg))?
                };
                for (dt, s) in temps {
                    self.new_buffer(BufferRole::Temp, dt, s, id.index());
                }
                for (code, grid) in steps {
                    self.launch(id, code, grid)?;
                }
            }
            Op::TopK { k, output } => {
                let x = self.src(ops[0])?;
                let len = *x.2.last().unwrap_or(&1);
                let count: usize = x.2.iter().product();
                let (code, grid) = misc::topk(
                    (x.0, x.1),
                    count / len.max(1),
                    len,
                    *k as usize,
                    *output,
                    (out, dtype),
                );
                self.launch(id, code, grid)?;
            }
            Op::CumSum { axis } => {
                let x = self.src(ops[0])?;
                let split = misc::split(&x.2, *axis);
                let (code, grid) = misc::scan((x.0, x.1), None, out, split);
                self.launch(id, code, grid)?;
            }
            Op::Scan { axis } => {
                let x = self.src(ops[0])?;
                let a = self.src(ops[1])?;
                let split = misc::split(&x.2, *axis);
                let (code, grid) = misc::scan((x.0, x.1), Some(a.0), out, split);
                self.launch(id, code, grid)?;
            }
            Op::ScatterAdd { axis } => {
                let data = self.src(ops[0])?;
                let idx = self.src(ops[1])?;
                let upd = self.src(ops[2])?;
                let count: usize = data.2.iter().product();
                let (code, grid) = misc::copy(data.0, out, dtype, count);
                self.launch(id, code, grid)?;
                let split = misc::split(&data.2, *axis);
                let m: usize = idx.2.iter().product();
                let (code, grid) = misc::scatter_add((idx.0, idx.1, m), upd.0, (out, dtype), split);
                self.launch(id, code, grid)?;
            }
            Op::Moba(_) | Op::Lsh(_) | Op::Routing(_) => {
                return Err(BackendError::InvalidGraph {
                    message: format!("internal: %{} is expanded before planning", id.index()),
                })
            }
            _ => {
                return Err(self.error(id, "the GPU backend does not support this op yet"));
            }
        }
        self.buf_of[id.index()] = Some(out);
        Ok(())
    }

    /// Outputs not written in place: copied into their own output buffers.
    fn copy_outputs(&mut self) -> Result<()> {
        let graph = self.graph;
        for (name, id) in graph.outputs() {
            let (src, dtype, sizes) = self.src(*id)?;
            if self.buffers[src].role == BufferRole::Output(name.clone()) {
                continue;
            }
            let count: usize = sizes.iter().product();
            let out = self.new_buffer(BufferRole::Output(name.clone()), dtype, sizes, id.index());
            let (code, grid) = misc::copy(src, out, dtype, count);
            self.launch(*id, code, grid)?;
        }
        Ok(())
    }
}

/// A physical temporary: the last launch its current value is used by, its index.
type Slot = (usize, usize);

/// Temporaries reused by later values of the same dtype and sizes once their last
/// reader has run (a buffer is live from the first launch that touches it to the
/// last). Returns the buffers still in use, renumbered, and the launches and checks
/// with their buffers remapped.
fn reuse_temporaries(
    buffers: Vec<Buffer>,
    mut launches: Vec<Launch>,
    mut checks: Vec<StatusCheck>,
) -> (Vec<Buffer>, Vec<Launch>, Vec<StatusCheck>) {
    let n = buffers.len();
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0usize; n];
    for (i, l) in launches.iter().enumerate() {
        for a in &l.args {
            if let Arg::Buffer(b) = a {
                first[*b] = first[*b].min(i);
                last[*b] = last[*b].max(i);
            }
        }
    }
    // Physical buffer of each virtual one.
    let mut phys: Vec<Option<usize>> = vec![None; n];
    let mut kept: Vec<Buffer> = Vec::new();
    // Free physical temporaries by type: (free after launch, index).
    let mut free: HashMap<(DType, Vec<usize>), Vec<Slot>> = HashMap::new();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&b| (first[b], b));
    for b in order {
        let buf = &buffers[b];
        let unused = first[b] == usize::MAX;
        if buf.role != BufferRole::Temp {
            if unused && !matches!(buf.role, BufferRole::Input(_) | BufferRole::Param(_)) {
                continue;
            }
            phys[b] = Some(kept.len());
            kept.push(buf.clone());
            continue;
        }
        if unused {
            continue;
        }
        let key = (buf.dtype, buf.sizes.clone());
        let list = free.entry(key).or_default();
        let slot = list.iter().position(|&(after, _)| after < first[b]);
        let p = match slot {
            Some(s) => list.remove(s).1,
            None => {
                kept.push(buf.clone());
                kept.len() - 1
            }
        };
        list.push((last[b], p));
        phys[b] = Some(p);
    }
    for l in &mut launches {
        for a in &mut l.args {
            if let Arg::Buffer(b) = a {
                *b = phys[*b].unwrap_or(*b);
            }
        }
        for w in &mut l.writes {
            *w = phys[*w].unwrap_or(*w);
        }
    }
    for c in &mut checks {
        c.buffer = phys[c.buffer].unwrap_or(c.buffer);
    }
    (kept, launches, checks)
}

/// Consistency of a plan: every argument names a buffer; a launch reads only
/// buffers that are inputs, params or written by an earlier launch; every output is
/// written; nothing writes an input or a param; buffer dtypes match the kernel
/// parameters. Returns the first violation.
pub fn check_plan(p: &GpuProgram) -> std::result::Result<(), String> {
    let mut written = vec![false; p.buffers.len()];
    for (i, b) in p.buffers.iter().enumerate() {
        if matches!(b.role, BufferRole::Input(_) | BufferRole::Param(_)) {
            written[i] = true;
        }
    }
    for (li, l) in p.launches.iter().enumerate() {
        let kernel = p
            .kernels
            .get(l.kernel)
            .ok_or_else(|| format!("launch {li}: kernel {} does not exist", l.kernel))?;
        if kernel.params.len() != l.args.len() {
            return Err(format!(
                "launch {li}: {} arguments for the {} parameters of `{}`",
                l.args.len(),
                kernel.params.len(),
                kernel.name
            ));
        }
        for (a, param) in l.args.iter().zip(&kernel.params) {
            let Arg::Buffer(b) = a else { continue };
            let buf = p
                .buffers
                .get(*b)
                .ok_or_else(|| format!("launch {li}: buffer {b} does not exist"))?;
            if *param != super::program::Param::Pointer(buf.dtype) {
                return Err(format!(
                    "launch {li} (`{}`): buffer {b} of {} for a parameter {param:?}",
                    kernel.name, buf.dtype
                ));
            }
            if !l.writes.contains(b) && !written[*b] {
                return Err(format!(
                    "launch {li} (`{}`, node %{}) reads buffer {b} before anything writes it",
                    kernel.name, l.node
                ));
            }
        }
        for &w in &l.writes {
            if !l.args.contains(&Arg::Buffer(w)) {
                return Err(format!(
                    "launch {li} writes buffer {w}, not one of its arguments"
                ));
            }
            if matches!(
                p.buffers[w].role,
                BufferRole::Input(_) | BufferRole::Param(_)
            ) {
                return Err(format!("launch {li} writes the input / param buffer {w}"));
            }
            written[w] = true;
        }
    }
    for (i, b) in p.buffers.iter().enumerate() {
        if let BufferRole::Output(name) = &b.role {
            if !written[i] {
                return Err(format!("output `{name}` (buffer {i}) is never written"));
            }
        }
    }
    for c in &p.checks {
        if p.buffers.get(c.buffer).map(|b| &b.role) != Some(&BufferRole::Status) {
            return Err(format!(
                "the check of %{} ({}) has no status buffer",
                c.node, c.message
            ));
        }
    }
    Ok(())
}
