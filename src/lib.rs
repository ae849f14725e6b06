//! `attnc`: the compiler driver. Loads a model (spec or IR text), and compiles,
//! inspects or runs it; the `attnc` binary is a thin command line over this facade.
//!
//! Invariant: every failure reaches the caller as an [`Error`] whose message names
//! the file and, where there is one, the layer — the driver never panics on input.

use attnc_ir::spec::{self, SpecSource};
use attnc_ir::{interp, Graph, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub use attnc_backends as backends;
pub use attnc_ir as ir;
pub use attnc_passes as passes;

use attnc_passes::{Approximation, Options, RuleSelection, Target};

mod approx;
mod diffusion;
pub mod npy;
pub mod safetensors;
mod verify;
pub mod weights;

pub use approx::ApproximationReport;
pub use diffusion::{run_diffusion, DiffusionOptions, DiffusionReport, StepReport};
pub use verify::{verify, Divergence, LayerCheck, VerifyOptions, VerifyReport};

/// A driver error: one line (or a few) for the user, already naming file and layer.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn err(message: impl Into<String>) -> Error {
    Error(message.into())
}

/// Load a model: `.air` is IR text, `.toml`/`.json` a spec lowered to IR.
pub fn load(path: &Path, source: &SpecSource) -> Result<Graph> {
    let shown = path.display();
    if path.extension().and_then(|e| e.to_str()) == Some("air") {
        if !source.sets.is_empty() || source.tiny {
            return Err(err(format!(
                "{shown}: --set and --tiny apply to model specs (.toml, .json), not to IR text"
            )));
        }
        let text = attnc_ir::read_source(path).map_err(err)?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        return attnc_ir::parse(text).map_err(|e| err(format!("{shown}:{e}")));
    }
    let spec = spec::load_spec(path, source).map_err(err)?;
    spec::lower(&spec).map_err(|e| err(format!("{shown}: {e}")))
}

/// The spec a model file holds (`None` for IR text): what Hugging Face weights are
/// mapped through.
pub fn load_spec(path: &Path, source: &SpecSource) -> Result<Option<spec::Spec>> {
    if path.extension().and_then(|e| e.to_str()) == Some("air") {
        return Ok(None);
    }
    spec::load_spec(path, source).map(Some).map_err(err)
}

/// `attnc import`: a Hugging Face `config.json` as a spec (TOML), with the ignored
/// keys and the choices made listed in its header comments.
pub fn import_hf(path: &Path) -> Result<String> {
    let shown = path.display();
    let text = attnc_ir::read_source(path).map_err(err)?;
    let name = spec::hf_model_name(path);
    let imported = spec::hf::import_hf(&text, &name).map_err(|e| err(format!("{shown}: {e}")))?;
    imported
        .to_toml(&shown.to_string())
        .map_err(|e| err(format!("{shown}: {e}")))
}

/// The `[diffusion]` sampler of a spec (`None` for IR text or a spec without one).
pub fn load_diffusion(path: &Path, source: &SpecSource) -> Result<Option<spec::Diffusion>> {
    if path.extension().and_then(|e| e.to_str()) == Some("air") {
        return Ok(None);
    }
    let shown = path.display();
    let spec = spec::load_spec(path, source).map_err(err)?;
    spec.diffusion().map_err(|e| err(format!("{shown}: {e}")))
}

/// What the optimizer does: the target whose cost model decides, and the rules.
#[derive(Clone, Debug)]
pub struct OptimizeOptions {
    pub target: Target,
    pub rules: RuleSelection,
    /// `--convert`: approximations applied after the exact optimization, in order.
    pub approximations: Vec<Approximation>,
    /// The NVIDIA architecture GPU code is generated for (`--arch`).
    pub gpu_arch: backends::Arch,
    /// E-graph limits (`--node-limit`, `--time-limit`): saturation stops at the first
    /// one reached and the cheapest program found so far is extracted (every e-graph
    /// state holds only programs equal to the original).
    pub node_limit: usize,
    pub time_limit: std::time::Duration,
}

impl Default for OptimizeOptions {
    fn default() -> OptimizeOptions {
        OptimizeOptions {
            target: Target::cpu(),
            rules: RuleSelection::all(),
            approximations: Vec::new(),
            gpu_arch: backends::Arch::Sm90,
            node_limit: passes::NODE_LIMIT,
            time_limit: passes::TIME_LIMIT,
        }
    }
}

/// `--convert` text (`performer:256`, `window:4096,sinks:4`) to an approximation.
pub fn approximation(text: &str) -> Result<Approximation> {
    Approximation::parse(text).map_err(|e| err(format!("--convert: {e}")))
}

impl OptimizeOptions {
    fn passes(&self) -> Options {
        let mut o = Options::new(self.target.clone());
        o.rules = self.rules.clone();
        o.node_limit = self.node_limit;
        o.time_limit = self.time_limit;
        o
    }
}

/// A target by name (`cpu`, `gpu` = `h200`, `h100`, `h200`) or a TOML description file.
pub fn target(name: &str) -> Result<Target> {
    if let Some(t) = Target::named(name) {
        return Ok(t);
    }
    if name.ends_with(".toml") {
        let text = attnc_ir::read_source(Path::new(name)).map_err(err)?;
        return Target::from_toml(&text).map_err(|e| err(format!("{name}: {e}")));
    }
    Err(err(format!(
        "unknown target `{name}`; expected one of {} (gpu means h200) or a target .toml file",
        Target::names().join(", ")
    )))
}

/// `--rules` text to a selection.
pub fn rules(text: &str) -> Result<RuleSelection> {
    RuleSelection::parse(text).map_err(|e| err(format!("--rules: {e}")))
}

/// Saturate, cost and extract: the optimized graph and what happened (with
/// `--convert`, the approximated graph optimized again).
pub fn optimize(graph: &Graph, options: &OptimizeOptions) -> Result<passes::Optimized> {
    let exact = optimize_exact(graph, options)?;
    if options.approximations.is_empty() {
        return Ok(exact);
    }
    Ok(approx::apply(&exact, &options.approximations, &options.passes())?.optimized)
}

/// The exact optimization alone (without `--convert`'s approximations): what
/// `--verify` checks.
pub fn optimize_exact(graph: &Graph, options: &OptimizeOptions) -> Result<passes::Optimized> {
    passes::optimize(graph, &options.passes()).map_err(|e| err(format!("optimizer: {e}")))
}

/// With `--convert`: each approximation's error and speedup, measured on seeded
/// inputs on the first converted attention alone (empty without `--convert`).
pub fn approximation_reports(
    graph: &Graph,
    options: &OptimizeOptions,
    seed: u64,
) -> Result<Vec<ApproximationReport>> {
    if options.approximations.is_empty() {
        return Ok(Vec::new());
    }
    cpu_only(options, "measuring a --convert approximation")?;
    let exact = optimize_exact(graph, options)?;
    let applied = approx::apply(&exact, &options.approximations, &options.passes())?;
    approx::measure(
        &exact.graph,
        &options.approximations,
        applied.layers,
        &options.passes(),
        seed,
    )
}

/// What `compile --emit` writes as text ([`compile_object`] writes objects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    Ir,
    OptIr,
    Mlir,
    Llvm,
    Dot,
    /// PTX of the optimized graph for a GPU target (`--arch`).
    Ptx,
}

/// The optimized graph compiled ahead of time for this CPU: an object file and the
/// C header declaring `attnc_forward` and the layout of its arguments.
pub fn compile_object(graph: &Graph, options: &OptimizeOptions) -> Result<(Vec<u8>, String)> {
    cpu_only(options, "--emit obj")?;
    let opt = optimize(graph, options)?;
    backends::emit_object(&opt.graph).map_err(|e| err(e.to_string()))
}

fn cpu_only(options: &OptimizeOptions, what: &str) -> Result<()> {
    if options.target.kind != passes::TargetKind::Cpu {
        return Err(err(format!(
            "{what} is a CPU output; target `{}` is a GPU, whose backend is not built yet",
            options.target.name
        )));
    }
    Ok(())
}

/// `ir` and `dot` show the graph as written; `opt-ir`, `mlir` and `llvm` the optimized one.
pub fn compile(graph: &Graph, emit: Emit, options: &OptimizeOptions) -> Result<String> {
    Ok(match emit {
        Emit::Ir => attnc_ir::print(graph),
        Emit::Dot => attnc_ir::to_dot(graph),
        Emit::OptIr => {
            let opt = optimize(graph, options)?;
            let r = &opt.report;
            let mut text = format!(
                "# optimized for {}: estimated {} -> {}\n",
                r.target,
                passes::Cost(r.cost_before),
                passes::Cost(r.cost_after)
            );
            let fired: Vec<String> = r.fired.iter().map(|(n, c)| format!("{n}×{c}")).collect();
            text += &format!(
                "# rules fired: {}\n",
                if fired.is_empty() {
                    "none".into()
                } else {
                    fired.join(", ")
                }
            );
            text + &attnc_ir::print(&opt.graph)
        }
        Emit::Ptx | Emit::Mlir if options.target.kind == passes::TargetKind::Gpu => {
            let opt = optimize(graph, options)?;
            let arch = options.gpu_arch;
            match emit {
                Emit::Ptx => backends::compile_gpu(&opt.graph, arch).map(|p| p.ptx),
                _ => backends::emit_gpu_mlir(&opt.graph, arch),
            }
            .map_err(|e| err(e.to_string()))?
        }
        Emit::Ptx => {
            return Err(err(format!(
                "--emit ptx is GPU code: give a GPU target (--target gpu, h100 or h200), not `{}`",
                options.target.name
            )))
        }
        Emit::Mlir | Emit::Llvm => {
            cpu_only(options, "--emit mlir/llvm")?;
            let opt = optimize(graph, options)?;
            match emit {
                Emit::Mlir => backends::emit_mlir(&opt.graph),
                _ => backends::emit_llvm_ir(&opt.graph),
            }
            .map_err(|e| err(e.to_string()))?
        }
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    pub model: String,
    pub nodes: usize,
    pub params: usize,
    pub param_elements: u64,
    pub flops: u64,
    pub bytes: u64,
    pub flops_after: u64,
    pub bytes_after: u64,
    /// The optimizer's report: per-layer forms, rules, costs, e-graph size, timings.
    #[serde(flatten)]
    pub optimizer: passes::Report,
    /// `--convert`: the error and speedup of each approximation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approximations: Vec<ApproximationReport>,
    /// `--target gpu`: the compiled kernels and their launch plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuReport>,
}

/// What the GPU backend made of the optimized graph: its kernels with `ptxas -v`'s
/// register and shared-memory use, and the size of its launch plan.
#[derive(Clone, Debug, Serialize)]
pub struct GpuReport {
    pub arch: String,
    pub launches: usize,
    pub buffers: usize,
    /// Device memory the plan allocates (inputs, params, outputs, temporaries).
    pub device_bytes: u64,
    /// Run-time checks (status flags) of the plan.
    pub checks: usize,
    /// PTX size, bytes.
    pub ptx_bytes: usize,
    /// The `ptxas` that assembled the PTX, or why there was none (then the kernels'
    /// `registers`, `spill_bytes` and `static_shared_bytes` are null).
    pub ptxas: String,
    pub kernels: Vec<GpuKernelReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GpuKernelReport {
    pub name: String,
    /// The IR op it computes.
    pub op: String,
    pub block: [u32; 3],
    /// Dynamic shared memory per block, bytes (what the launches request).
    pub shared_bytes: u32,
    pub launches: usize,
    /// The layers that launch it, in order.
    pub layers: Vec<String>,
    pub registers: Option<u32>,
    pub spill_bytes: Option<u32>,
    pub static_shared_bytes: Option<u32>,
}

/// Compile the optimized `graph` for the GPU and assemble it with `ptxas -v` when
/// one is found: the report `inspect --target gpu` prints.
pub fn gpu_report(graph: &Graph, arch: backends::Arch) -> Result<GpuReport> {
    let program = backends::compile_gpu(graph, arch).map_err(|e| err(e.to_string()))?;
    let (ptxas, assembled) = match backends::gpu::ptxas(&program.ptx, arch, true) {
        None => (
            "not found (set ATTNC_PTXAS, put ptxas on PATH or pip install \
             nvidia-cuda-nvcc-cu12)"
                .to_string(),
            Vec::new(),
        ),
        Some(r) => {
            let r = r.map_err(|e| err(format!("the PTX for {}: {e}", arch.name())))?;
            let exe = backends::gpu::find_ptxas().unwrap_or_default();
            (exe.display().to_string(), r.kernels)
        }
    };
    let kernels = (program.kernels.iter().enumerate())
        .map(|(i, k)| {
            let mut layers: Vec<String> = Vec::new();
            let mut launches = 0;
            for l in program.launches.iter().filter(|l| l.kernel == i) {
                launches += 1;
                let layer = l.layer.clone().unwrap_or_else(|| "-".into());
                if !layers.contains(&layer) {
                    layers.push(layer);
                }
            }
            let asm = assembled.iter().find(|r| r.name == k.name);
            GpuKernelReport {
                name: k.name.clone(),
                op: k.op.clone(),
                block: k.block,
                shared_bytes: k.shared_bytes,
                launches,
                layers,
                registers: asm.map(|r| r.registers),
                spill_bytes: asm.map(|r| r.spill_bytes()),
                static_shared_bytes: asm.map(|r| r.shared_bytes),
            }
        })
        .collect();
    Ok(GpuReport {
        arch: arch.name().into(),
        launches: program.launches.len(),
        buffers: program.buffers.len(),
        device_bytes: program.device_bytes(),
        checks: program.checks.len(),
        ptx_bytes: program.ptx.len(),
        ptxas,
        kernels,
    })
}

/// The GPU launch plan of the optimized `graph` as text (kernel signatures, buffers,
/// launches, checks; no PTX): what the GPU snapshot tests record.
pub fn gpu_plan(graph: &Graph, options: &OptimizeOptions) -> Result<String> {
    let opt = optimize(graph, options)?;
    let program =
        backends::plan_gpu(&opt.graph, options.gpu_arch).map_err(|e| err(e.to_string()))?;
    Ok(program.summary())
}

pub fn inspect(graph: &Graph, options: &OptimizeOptions) -> Result<InspectReport> {
    let optimized = optimize(graph, options)?;
    let gpu = match options.target.kind {
        passes::TargetKind::Gpu => Some(gpu_report(&optimized.graph, options.gpu_arch)?),
        _ => None,
    };
    let r = optimized.report;
    let params = graph.params();
    let sum =
        |f: fn(&passes::LayerReport) -> u64| r.layers.iter().map(f).fold(0, u64::saturating_add);
    Ok(InspectReport {
        model: graph.name.clone(),
        nodes: graph.len(),
        params: params.len(),
        param_elements: params
            .iter()
            .map(|(_, id)| graph.sizes(*id).iter().map(|&n| n as u64).product::<u64>())
            .fold(0, u64::saturating_add),
        flops: sum(|l| l.flops_before),
        bytes: sum(|l| l.bytes_before),
        flops_after: sum(|l| l.flops_after),
        bytes_after: sum(|l| l.bytes_after),
        optimizer: r,
        approximations: approximation_reports(graph, options, 0)?,
        gpu,
    })
}

/// The rewrite chain for one layer: `layer` is a layer name or a number `N`, meaning
/// `layers.N.attn`.
pub fn explain(
    graph: &Graph,
    layer: &str,
    options: &OptimizeOptions,
) -> Result<passes::Explanation> {
    let name = match layer.parse::<u64>() {
        Ok(n) => format!("layers.{n}.attn"),
        Err(_) => layer.to_string(),
    };
    passes::explain(graph, &name, &options.passes()).map_err(|e| err(e.to_string()))
}

#[derive(Clone, Debug, Serialize)]
pub struct OutputReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    /// Checked runs only: largest |compiled − interpreter| of this output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs_err: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub model: String,
    pub seed: u64,
    pub outputs: Vec<OutputReport>,
    /// Milliseconds of one run of the compiled code.
    pub ms: f64,
    /// Milliseconds spent compiling (MLIR pipeline and JIT).
    pub compile_ms: f64,
    /// Checked runs only: worst error over all outputs against the f64 interpreter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs_err: Option<f64>,
    /// Checked runs only: worst error of the optimized graph against the original,
    /// both in the f64 interpreter (what the rewrites alone changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_max_abs_err: Option<f64>,
    /// Rules the optimizer applied, `(rule, applications)`.
    pub fired: Vec<(String, usize)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interp_ms: Option<f64>,
    /// `--convert`: the error and speedup of each approximation (the check above is
    /// then against the approximated model).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approximations: Vec<ApproximationReport>,
    /// The outputs' values (written by `run --out`, not printed).
    #[serde(skip)]
    pub values: Vec<Tensor>,
}

/// Options of `run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    pub check: bool,
    pub optimize: OptimizeOptions,
    /// Threads of the compiled code (default: all cores).
    pub threads: Option<usize>,
    /// Inputs given by the user (token ids, pixels), by name; the others are drawn.
    pub inputs: HashMap<String, Tensor>,
    /// Weights read from a checkpoint; without one they are drawn from `seed`.
    pub weights: Option<std::sync::Arc<weights::Weights>>,
}

/// The tolerance `run --check` applies by default: f32 models must agree with the f64
/// interpreter to 1e-4; half-precision ones round every op to 11 (f16) or 8 (bf16)
/// significant bits, where one double rounding near a tie is already ~1e-3 (~1e-2).
pub fn default_tolerance(graph: &Graph) -> f64 {
    let dtypes = graph
        .outputs()
        .iter()
        .map(|(_, id)| graph.node(*id).ty.dtype);
    dtypes
        .map(|d| match d {
            attnc_ir::DType::F16 => 1e-2,
            attnc_ir::DType::BF16 => 5e-2,
            _ => 1e-4,
        })
        .fold(1e-4, f64::max)
}

/// Refuse a run whose tensors cannot fit in memory, before allocating any of them.
///
/// The estimate counts every input and weight twice (the interpreter's f64 copy and
/// the compiled code's typed one) and the largest intermediate four times (it and its
/// operands alive at once, in both the interpreter and the compiled code).
pub fn check_memory(graph: &Graph, available: u64) -> Result<()> {
    let f = Footprint::of(graph);
    let Some(largest) = f.largest else {
        return Ok(());
    };
    let sources = f
        .source_elems
        .saturating_mul(8)
        .saturating_add(f.source_bytes);
    let need = sources.saturating_add(f.largest_elems.saturating_mul(8 * 4));
    if need <= available {
        return Ok(());
    }
    let node = graph.node(largest);
    Err(err(format!(
        "running this model needs about {:.1} GiB (inputs and weights {:.1} GiB; the largest tensor, %{} = {} in layer `{}`, is {:.1} GiB), more than the {:.1} GiB of memory available; try --tiny or smaller sizes with --set",
        gib(need),
        gib(sources),
        largest.index(),
        node.op.name(),
        node.layer.as_deref().unwrap_or("(none)"),
        gib(f.largest_elems.saturating_mul(8)),
        gib(available)
    )))
}

/// Refuse a benchmark that cannot fit in memory. Unlike `run`, nothing is kept in
/// f64: the weights exist once in their own dtype (one compiled model at a time), plus
/// the f64 tensor of the largest of them while it is converted, plus the largest
/// intermediate four times in f32.
fn check_bench_memory(graph: &Graph, available: u64) -> Result<()> {
    let f = Footprint::of(graph);
    let need = f
        .source_bytes
        .saturating_add(f.largest_source_elems.saturating_mul(8))
        .saturating_add(f.largest_elems.saturating_mul(16));
    if need <= available {
        return Ok(());
    }
    Err(err(format!(
        "benchmarking this model needs about {:.1} GiB (weights and inputs {:.1} GiB), more than the {:.1} GiB of memory available; try smaller sizes with --set",
        gib(need),
        gib(f.source_bytes),
        gib(available)
    )))
}

/// Sizes the memory checks estimate from (saturating: sizes may be absurd).
struct Footprint {
    /// Elements and bytes (in their dtypes) of all inputs and params.
    source_elems: u64,
    source_bytes: u64,
    largest_source_elems: u64,
    /// The node with the most elements, and its count.
    largest: Option<attnc_ir::NodeId>,
    largest_elems: u64,
}

impl Footprint {
    fn of(graph: &Graph) -> Footprint {
        let elems =
            |id: attnc_ir::NodeId| graph.sizes(id).iter().map(|&n| n as u64).product::<u64>();
        let mut f = Footprint {
            source_elems: 0,
            source_bytes: 0,
            largest_source_elems: 0,
            largest: None,
            largest_elems: 0,
        };
        for id in graph.node_ids() {
            let n = elems(id);
            // `>=`: the last of equal sizes, as `max_by_key` picks.
            if f.largest.is_none() || n >= f.largest_elems {
                (f.largest, f.largest_elems) = (Some(id), n);
            }
            let node = graph.node(id);
            if matches!(
                node.op,
                attnc_ir::Op::Input { .. } | attnc_ir::Op::Param { .. }
            ) {
                f.source_elems = f.source_elems.saturating_add(n);
                let bytes = n.saturating_mul(node.ty.dtype.size_bytes());
                f.source_bytes = f.source_bytes.saturating_add(bytes);
                f.largest_source_elems = f.largest_source_elems.max(n);
            }
        }
        f
    }
}

pub(crate) fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Memory this process may use: `MemAvailable` from /proc/meminfo, or 8 GiB when it
/// cannot be read.
pub fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(8 << 30)
}

/// Compile for the CPU, run on seeded random inputs and weights and, with `check`,
/// compare every output with the reference interpreter (in f64).
pub fn run(graph: &Graph, options: &RunOptions) -> Result<RunReport> {
    if graph.outputs().is_empty() {
        return Err(err("nothing to run: the graph has no outputs"));
    }
    check_memory(graph, available_memory())?;
    let source = Bindings::new(graph, options)?;
    // The interpreter and the GPU take every tensor at once; the CPU path alone
    // streams the weights from the file one at a time.
    let streaming = options.weights.is_some()
        && !options.check
        && options.optimize.target.kind == passes::TargetKind::Cpu;
    let bindings: HashMap<String, Tensor> = if streaming {
        HashMap::new()
    } else {
        source.all()?
    };
    let t = Instant::now();
    // With `--convert`, the compiled code computes the approximated model: that is
    // what it is checked against; the approximation's own error is measured apart.
    let (optimized, reference, approximations) = if options.optimize.approximations.is_empty() {
        (
            optimize(graph, &options.optimize)?,
            graph.clone(),
            Vec::new(),
        )
    } else {
        let o = &options.optimize;
        let exact = optimize_exact(graph, o)?;
        let applied = approx::apply(&exact, &o.approximations, &o.passes())?;
        let reports = approx::measure(
            &exact.graph,
            &o.approximations,
            applied.layers,
            &o.passes(),
            options.seed,
        )?;
        (applied.optimized, applied.converted, reports)
    };
    let graph = &reference;
    let (outputs, compile_ms, ms) = match options.optimize.target.kind {
        passes::TargetKind::Cpu => {
            let mut model =
                backends::CompiledModel::new(&optimized.graph).map_err(|e| err(e.to_string()))?;
            if let Some(n) = options.threads {
                model.set_threads(n);
            }
            let compile_ms = ms_since(t);
            let mut failed = None;
            let prepared = if streaming {
                model.prepare_from(|name| match source.get(name) {
                    Ok(t) => t,
                    Err(e) => {
                        failed.get_or_insert(e);
                        None
                    }
                })
            } else {
                model.prepare(&bindings)
            };
            if let Some(e) = failed {
                return Err(e);
            }
            let mut prepared = prepared.map_err(|e| err(e.to_string()))?;
            let t = Instant::now();
            model
                .run_prepared(&mut prepared)
                .map_err(|e| err(e.to_string()))?;
            (model.outputs(&prepared), compile_ms, ms_since(t))
        }
        // The PTX and its launch plan, run through the CUDA driver; `ms` is GPU time.
        passes::TargetKind::Gpu => {
            let e = |x: backends::BackendError| err(x.to_string());
            let program =
                backends::compile_gpu(&optimized.graph, options.optimize.gpu_arch).map_err(e)?;
            let names = optimized
                .graph
                .outputs()
                .iter()
                .map(|(n, _)| n.clone())
                .collect();
            let model = backends::GpuModel::new(program, names).map_err(e)?;
            let compile_ms = ms_since(t);
            let (outputs, gpu_ms) = model.run(&bindings).map_err(e)?;
            (outputs, compile_ms, gpu_ms)
        }
    };
    let mut report = RunReport {
        model: graph.name.clone(),
        seed: options.seed,
        outputs: graph
            .outputs()
            .iter()
            .zip(&outputs)
            .map(|((name, id), t)| OutputReport {
                name: name.clone(),
                shape: t.shape.clone(),
                dtype: graph.node(*id).ty.dtype.to_string(),
                max_abs_err: None,
            })
            .collect(),
        ms,
        compile_ms,
        max_abs_err: None,
        opt_max_abs_err: None,
        fired: optimized.report.fired.clone(),
        interp_ms: None,
        approximations,
        values: Vec::new(),
    };
    if options.check {
        let t = Instant::now();
        let expected = interp::eval(graph, &bindings, interp::Precision::F64)
            .map_err(|e| err(format!("interpreter: {e}")))?;
        report.interp_ms = Some(ms_since(t));
        // A reference that is not finite checks nothing (NaN agrees with NaN).
        for ((name, _), want) in graph.outputs().iter().zip(&expected) {
            let bad = want.data.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                return Err(err(format!(
                    "output `{name}`: {bad} of {} values are not finite in the reference interpreter, so the check is meaningless (does a mask hide every key of some query, or is a constant out of range?)",
                    want.len()
                )));
            }
        }
        let mut worst: f64 = 0.0;
        for (out, (got, want)) in report.outputs.iter_mut().zip(outputs.iter().zip(&expected)) {
            let e = got.max_abs_diff(want);
            out.max_abs_err = Some(e);
            worst = worst.max(e);
        }
        report.max_abs_err = Some(worst);
        // The rewrites alone, without the backend: optimized vs original graph.
        let rewritten = interp::eval(&optimized.graph, &bindings, interp::Precision::F64)
            .map_err(|e| err(format!("interpreter (optimized graph): {e}")))?;
        let opt_err = rewritten
            .iter()
            .zip(&expected)
            .map(|(a, b)| a.max_abs_diff(b))
            .fold(0.0, f64::max);
        report.opt_max_abs_err = Some(opt_err);
        report.max_abs_err = Some(worst.max(opt_err));
    }
    report.values = outputs;
    Ok(report)
}

/// Where `run` gets each input and param: the user's inputs, the checkpoint's
/// weights, else seeded random tensors.
struct Bindings<'a> {
    graph: &'a Graph,
    options: &'a RunOptions,
    ids: HashMap<&'a str, attnc_ir::NodeId>,
}

impl<'a> Bindings<'a> {
    fn new(graph: &'a Graph, options: &'a RunOptions) -> Result<Bindings<'a>> {
        let ids: HashMap<&str, attnc_ir::NodeId> =
            graph.inputs().into_iter().chain(graph.params()).collect();
        for (name, t) in &options.inputs {
            let Some(&id) = graph
                .inputs()
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, id)| id)
            else {
                let names: Vec<&str> = graph.inputs().iter().map(|(n, _)| *n).collect();
                return Err(err(format!(
                    "the model has no input `{name}` (its inputs: {})",
                    names.join(", ")
                )));
            };
            let want = graph.sizes(id);
            if t.shape != want {
                return Err(err(format!(
                    "input `{name}` has shape {:?}; the model takes {want:?}",
                    t.shape
                )));
            }
            let dtype = graph.node(id).ty.dtype;
            if !dtype.is_float() {
                if let Some(bad) = t.data.iter().find(|v| v.fract() != 0.0 || !v.is_finite()) {
                    return Err(err(format!("input `{name}` is {dtype}, but holds {bad}")));
                }
            }
            // Token ids must index the table (the compiled code would stop at the
            // first bad one; this names it).
            if let (Some(vocab), true) = (graph.dims.get("vocab"), name == "tokens") {
                if let Some((at, v)) = t
                    .data
                    .iter()
                    .enumerate()
                    .find(|(_, &v)| v < 0.0 || v >= vocab as f64)
                {
                    return Err(err(format!(
                        "input `tokens`: id {v} at position {at} is outside the vocabulary [0, {vocab})"
                    )));
                }
            }
        }
        Ok(Bindings {
            graph,
            options,
            ids,
        })
    }

    /// Input or param `name` (`None` if the graph has no such node).
    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(&id) = self.ids.get(name) else {
            return Ok(None);
        };
        let dtype = self.graph.node(id).ty.dtype;
        if let Some(t) = self.options.inputs.get(name) {
            return Ok(Some(Tensor::new(dtype, t.shape.clone(), t.data.clone())));
        }
        if let (Some(w), attnc_ir::Op::Param { .. }) =
            (&self.options.weights, &self.graph.node(id).op)
        {
            return w.tensor(name, dtype).map(Some);
        }
        Ok(attnc_ir::random_binding(self.graph, id, self.options.seed).map(|(_, t)| t))
    }

    fn all(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for name in self.ids.keys() {
            if let Some(t) = self.get(name)? {
                out.insert(name.to_string(), t);
            }
        }
        Ok(out)
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Options of `bench`.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub optimize: OptimizeOptions,
    /// Threads of the compiled code (default: all cores).
    pub threads: Option<usize>,
    /// Timed runs of each case (after one warm-up run); the median is reported.
    pub runs: usize,
    pub seed: u64,
    /// Only the whole model, no per-layer cases.
    pub model_only: bool,
}

/// One timed case: a layer (the first of each kind: `layers.0.attn` stands for every
/// `layers.N.attn`) or the whole model, compiled twice.
#[derive(Clone, Debug, Serialize)]
pub struct BenchCase {
    pub name: String,
    /// Median ms of the optimized graph's compiled code.
    pub ms: f64,
    /// Median ms of the original (unoptimized) graph's compiled code.
    pub baseline_ms: f64,
    /// FLOPs of the original graph per second of the optimized code, in GFLOP/s.
    pub gflops: f64,
    /// `baseline_ms / ms`.
    pub speedup: f64,
    /// The forms before and after (op names), as `inspect` lists them.
    pub before: Vec<String>,
    pub after: Vec<String>,
    /// Block-sparse cases: the fraction of blocks computed. Their baseline is the same
    /// attention fused but dense (mask evaluated everywhere), so the speedup's ideal
    /// is `1 / density`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub density: Option<f64>,
    /// Linear-attention cases: the form the baseline runs in (the optimized code runs
    /// the chosen one); `gflops` then counts the useful `4·B·H·N·Dk·(Dv+1)` FLOPs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
    /// Mixture-of-experts layers: the useful FLOPs per second (router and the selected
    /// experts only, as the dispatch counts them), and tokens per second. `gflops`
    /// counts the original graph's, every expert on every token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub useful_gflops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub threads: usize,
    pub runs: usize,
    pub cases: Vec<BenchCase>,
}

/// Time the compiled code of the optimized graph against the compiled code of the
/// original graph, per layer kind and for the whole model, in one process.
pub fn bench(graph: &Graph, options: &BenchOptions) -> Result<BenchReport> {
    if graph.outputs().is_empty() {
        return Err(err("nothing to bench: the graph has no outputs"));
    }
    check_bench_memory(graph, available_memory())?;
    let optimized = optimize(graph, &options.optimize)?;
    let mut cases = Vec::new();
    let mut threads = 0;
    let mut layers: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    if !options.model_only {
        let mut kinds = std::collections::HashSet::new();
        for l in &optimized.report.layers {
            // `layers.12.ffn` and `layers.0.ffn` are one kind.
            let kind: String = l
                .name
                .split('.')
                .map(|p| {
                    if p.chars().all(|c| c.is_ascii_digit()) {
                        "N"
                    } else {
                        p
                    }
                })
                .collect::<Vec<_>>()
                .join(".");
            if kinds.insert(kind) {
                layers.push((l.name.clone(), l.before.clone(), l.after.clone()));
            }
        }
    }
    for (name, before, after) in layers {
        let plain = passes::layer_graph(graph, &name).map_err(|e| err(e.to_string()))?;
        let fast = passes::layer_graph(&optimized.graph, &name).map_err(|e| err(e.to_string()))?;
        let (baseline_ms, ms, n) = time_pair(&plain, &fast, options)?;
        threads = n;
        let mut c = case(name.clone(), &plain, baseline_ms, ms, before, after);
        if let Some(tokens) = dispatched_tokens(&fast) {
            let useful: f64 = attnc_ir::layer_stats(&fast)
                .iter()
                .map(|l| l.flops as f64)
                .sum();
            c.useful_gflops = Some(useful / (ms * 1e-3) / 1e9);
            c.tokens_per_s = Some(tokens as f64 / (ms * 1e-3));
        }
        cases.push(c);
        // Block-sparse attention alone against the same attention fused but dense.
        for (sparse, dense, density) in block_sparse_alone(&fast)? {
            let (baseline_ms, ms, _) = time_pair(&dense, &sparse, options)?;
            let mut c = case(
                format!("{name}.block_sparse_attention"),
                &sparse,
                baseline_ms,
                ms,
                vec!["attention".into()],
                vec!["block_sparse_attention".into()],
            );
            c.density = Some(density);
            cases.push(c);
        }
        // Linear attention alone in the chosen form against each other form.
        for (chosen, other, form, useful) in linear_alone(&fast)? {
            let (baseline_ms, ms, _) = time_pair(&other, &chosen, options)?;
            let mut c = case(
                format!("{name}.linear_attention.{form}"),
                &chosen,
                baseline_ms,
                ms,
                vec![format!("linear_attention {form}")],
                vec!["linear_attention".into()],
            );
            c.gflops = useful / (ms * 1e-3) / 1e9;
            c.form = Some(form);
            cases.push(c);
        }
    }
    let (baseline_ms, ms, n) = time_pair(graph, &optimized.graph, options)?;
    threads = threads.max(n);
    cases.push(case(
        "model".into(),
        graph,
        baseline_ms,
        ms,
        Vec::new(),
        Vec::new(),
    ));
    Ok(BenchReport {
        model: graph.name.clone(),
        threads,
        runs: options.runs,
        cases,
    })
}

/// Each block-sparse attention of `graph` as a graph of its own (its operands made
/// inputs), with the same attention dense, and the fraction of blocks it computes.
fn block_sparse_alone(graph: &Graph) -> Result<Vec<(Graph, Graph, f64)>> {
    let mut out = Vec::new();
    for id in graph.node_ids() {
        let attnc_ir::Op::Attention(a) = &graph.node(id).op else {
            continue;
        };
        let Some(block) = a.block else { continue };
        let ops = graph.operands(id);
        let alone = |attn: attnc_ir::Attention| -> attnc_ir::Result<Graph> {
            let mut b = attnc_ir::GraphBuilder::new(graph.name.clone(), graph.dims.clone());
            let names = ["q", "k", "v", "bias"];
            let mut inputs = Vec::new();
            for (i, &o) in ops.iter().enumerate() {
                let ty = &graph.node(o).ty;
                inputs.push(b.input(names[i], ty.shape.clone(), ty.dtype)?);
            }
            let y = b.op(attnc_ir::Op::Attention(attn), &inputs)?;
            b.output("out", y)?;
            b.finish()
        };
        let (q, k) = (graph.sizes(ops[0]), graph.sizes(ops[1]));
        let layout = attnc_ir::BlockLayout::of(
            a.mask.as_ref(),
            &graph.dims,
            [q[0], q[1], q[2], k[2]],
            block.map(|n| n as usize),
        )
        .map_err(err)?;
        let dense = attnc_ir::Attention {
            block: None,
            ..a.clone()
        };
        let e = |x: attnc_ir::IrError| err(x.to_string());
        out.push((
            alone(a.clone()).map_err(e)?,
            alone(dense).map_err(e)?,
            layout.density(),
        ));
    }
    Ok(out)
}

/// The first linear attention of `graph` alone (its operands made inputs) in its own
/// form, the same in each other form worth timing (parallel — for causal attention
/// the quadratic one —, recurrent, chunkwise 64), the other form's name, and the
/// useful FLOPs `4·B·H·N·Dk·(Dv + normalizer)`.
fn linear_alone(graph: &Graph) -> Result<Vec<(Graph, Graph, String, f64)>> {
    use attnc_ir::{LinearAttention, LinearForm, Op};
    let Some(id) = graph
        .node_ids()
        .find(|&id| matches!(graph.node(id).op, Op::LinearAttention(_)))
    else {
        return Ok(Vec::new());
    };
    let Op::LinearAttention(l) = graph.node(id).op else {
        return Ok(Vec::new());
    };
    let ops = graph.operands(id);
    let alone = |l: LinearAttention| -> attnc_ir::Result<Graph> {
        let mut b = attnc_ir::GraphBuilder::new(graph.name.clone(), graph.dims.clone());
        let names = ["q", "k", "v", "log_decay"];
        let mut inputs = Vec::new();
        for (i, &o) in ops.iter().enumerate() {
            let ty = &graph.node(o).ty;
            inputs.push(b.input(names[i], ty.shape.clone(), ty.dtype)?);
        }
        let y = b.op(Op::LinearAttention(l), &inputs)?;
        b.output("out", y)?;
        b.finish()
    };
    let (q, v) = (graph.sizes(ops[0]), graph.sizes(ops[2]));
    let useful = 4.0 * (q[0] * q[1] * q[2] * q[3]) as f64 * (v[3] + l.normalize as usize) as f64;
    let mut others = vec![LinearForm::Parallel];
    if l.causal {
        others.push(LinearForm::Recurrent);
        if q[2] % 64 == 0 && q[2] > 64 {
            others.push(LinearForm::Chunkwise { chunk: 64 });
        }
    }
    let e = |x: attnc_ir::IrError| err(x.to_string());
    let chosen = alone(l).map_err(e)?;
    let mut out = Vec::new();
    for form in others.into_iter().filter(|f| *f != l.form) {
        let name = match form {
            LinearForm::Parallel if l.causal => "quadratic".to_string(),
            LinearForm::Parallel => "parallel".to_string(),
            LinearForm::Chunkwise { chunk } => format!("chunkwise{chunk}"),
            LinearForm::Recurrent => "recurrent".to_string(),
        };
        let other = alone(LinearAttention { form, ..l }).map_err(e)?;
        out.push((chosen.clone(), other, name, useful));
    }
    Ok(out)
}

fn case(
    name: String,
    plain: &Graph,
    baseline_ms: f64,
    ms: f64,
    before: Vec<String>,
    after: Vec<String>,
) -> BenchCase {
    let flops = attnc_ir::layer_stats(plain)
        .iter()
        .map(|l| l.flops as f64)
        .sum::<f64>();
    BenchCase {
        name,
        ms,
        baseline_ms,
        gflops: flops / (ms * 1e-3) / 1e9,
        speedup: baseline_ms / ms,
        before,
        after,
        density: None,
        form: None,
        useful_gflops: None,
        tokens_per_s: None,
    }
}

/// The tokens a `moe_dispatch` of `graph` routes, if it has one.
fn dispatched_tokens(graph: &Graph) -> Option<usize> {
    graph
        .node_ids()
        .find(|&id| matches!(graph.node(id).op, attnc_ir::Op::MoeDispatch(_)))
        .map(|id| graph.sizes(graph.operands(id)[0])[0])
}

/// Median ms of `baseline` and of `optimized`, each compiled and run on the same
/// seeded inputs. When both models' buffers fit in memory at once, their runs
/// alternate (baseline, optimized, baseline, ...), so a shared machine's drifting
/// clock slows both alike; otherwise one model's buffers are freed before the other's
/// are made and each runs `runs` times in a row.
fn time_pair(
    baseline: &Graph,
    optimized: &Graph,
    options: &BenchOptions,
) -> Result<(f64, f64, usize)> {
    let e = |x: backends::BackendError| err(x.to_string());
    let compile = |g: &Graph| -> Result<backends::CompiledModel> {
        let mut model = backends::CompiledModel::new(g).map_err(e)?;
        if let Some(n) = options.threads {
            model.set_threads(n);
        }
        Ok(model)
    };
    let time = |model: &backends::CompiledModel, p: &mut backends::Prepared| -> Result<f64> {
        let t = Instant::now();
        model.run_prepared(p).map_err(e)?;
        Ok(ms_since(t))
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let runs = options.runs.max(1);
    let both_fit = check_bench_memory(baseline, available_memory() / 2).is_ok();
    if both_fit {
        let models = [compile(baseline)?, compile(optimized)?];
        let mut prepared = [
            models[0]
                .prepare_random(baseline, options.seed)
                .map_err(e)?,
            models[1]
                .prepare_random(optimized, options.seed)
                .map_err(e)?,
        ];
        let mut times = [Vec::new(), Vec::new()];
        for round in 0..=runs {
            for i in 0..2 {
                let t = time(&models[i], &mut prepared[i])?;
                // Round 0 warms up.
                if round > 0 {
                    times[i].push(t);
                }
            }
        }
        let [t0, t1] = times;
        return Ok((median(t0), median(t1), models[1].threads()));
    }
    let mut out = [0.0; 2];
    let mut threads = 1;
    for (slot, g) in [baseline, optimized].into_iter().enumerate() {
        let model = compile(g)?;
        threads = model.threads();
        let mut prepared = model.prepare_random(g, options.seed).map_err(e)?;
        time(&model, &mut prepared)?;
        let times = (0..runs)
            .map(|_| time(&model, &mut prepared))
            .collect::<Result<Vec<f64>>>()?;
        out[slot] = median(times);
    }
    Ok((out[0], out[1], threads))
}
