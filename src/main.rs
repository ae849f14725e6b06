//! The `attnc` command line.

use attnc::{Emit, OptimizeOptions, RunOptions};
use attnc_ir::spec::SpecSource;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "attnc",
    version,
    about = "An optimizing compiler for efficient attention architectures"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a model and write the chosen representation.
    Compile {
        #[command(flatten)]
        model: ModelArgs,
        /// What to write.
        #[arg(long, value_enum, default_value = "ir")]
        emit: EmitArg,
        #[command(flatten)]
        opt: OptArgs,
        /// Output file (default: standard output). `--emit obj` needs one, and writes
        /// the C header beside it (`model.o` → `model.h`).
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: Option<PathBuf>,
        /// Translation validation before writing anything: run the original and the
        /// optimized graph (and, for the CPU target, the compiled code) on seeded
        /// random inputs at a reduced size (a spec is verified `--tiny`) and fail,
        /// naming the first diverging layer, if they disagree.
        #[arg(long)]
        verify: bool,
        /// Seed of --verify's random inputs and weights.
        #[arg(long, default_value_t = 0, requires = "verify")]
        seed: u64,
        /// Largest error --verify accepts, relative to each value's magnitude (default:
        /// 1e-4 for f32 models, 1e-2 for f16, 5e-2 for bf16).
        #[arg(long, requires = "verify")]
        tol: Option<f64>,
    },
    /// Write a Hugging Face `config.json` as an attnc spec (TOML). `compile`, `run`
    /// and the other commands also take a config.json directly.
    Import {
        /// The config.json.
        config: PathBuf,
        /// Output file (default: standard output).
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: Option<PathBuf>,
    },
    /// Per layer: the form before -> after, rules fired, FLOPs and bytes before/after.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        opt: OptArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// List the rules (name, family, identity) and exit.
        #[arg(long)]
        list_rules: bool,
    },
    /// The chain of rewrites that turns one layer's plain form into its optimized form.
    Explain {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        opt: OptArgs,
        /// The layer: a number N (the attention of layer N, `layers.N.attn`) or a
        /// layer name such as `layers.3.ffn`.
        #[arg(long, default_value = "0")]
        layer: String,
    },
    /// Compile for the CPU and run on seeded random inputs and weights.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// Compare with the reference interpreter and report the max abs error.
        #[arg(long)]
        check: bool,
        /// Largest max abs error `--check` accepts (default: 1e-4 for f32 models,
        /// 1e-2 for f16, 5e-2 for bf16).
        #[arg(long)]
        tol: Option<f64>,
        /// Seed of the random inputs and weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        opt: OptArgs,
        /// Threads of the compiled code (default: all cores).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
        threads: Option<u32>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// A masked-diffusion model (`[diffusion]` in the spec): run its sampler for
        /// this many denoising steps (a multiple of its blocks), the network compiled
        /// once; with --check, against the interpreter at every step.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        diffusion_steps: Option<u64>,
        /// The prompt's token ids for --diffusion-steps, comma-separated (default:
        /// seeded random ids); its length is `seq - gen_length`.
        #[arg(long, value_delimiter = ',', requires = "diffusion_steps")]
        prompt: Option<Vec<i64>>,
        /// Bind the weights of a checkpoint: a `.safetensors` file or a sharded
        /// `model.safetensors.index.json`, named as Hugging Face or attnc names them.
        #[arg(long, value_name = "CHECKPOINT")]
        weights: Option<PathBuf>,
        /// The token ids: comma-separated (`--tokens 1,2,3`: batch 1), or a file
        /// (`.npy` of shape [batch, seq] or [seq]; text: one row of ids per line).
        /// Sets `batch` and `seq` from its shape unless --set gives them.
        #[arg(long, value_name = "IDS|FILE")]
        tokens: Option<String>,
        /// Another input from a `.npy` file: `--input pixels=image.npy` (sets `batch`
        /// from its first axis unless --set gives it).
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        /// Write the outputs: `.npy` (one output: logits or hidden states) or
        /// `.safetensors` (every output, by name).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Time the compiled optimized graph against the compiled original graph, per
    /// layer kind and for the whole model, on seeded random inputs and weights.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        opt: OptArgs,
        /// Threads of the compiled code (default: all cores).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
        threads: Option<u32>,
        /// Timed runs of each case (the median is reported), after one warm-up run.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
        runs: u32,
        /// Only the whole model.
        #[arg(long)]
        model_only: bool,
        /// Seed of the random inputs and weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// Model spec (.toml, .json) or IR text (.air).
    spec: PathBuf,
    /// Override a spec field: `--set seq=128`, `--set attention.heads=8`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Shrink to a structurally identical small model.
    #[arg(long)]
    tiny: bool,
}

/// How the optimizer runs.
#[derive(Args)]
struct OptArgs {
    /// Target whose cost model picks the optimized form: cpu, gpu (= h200), h100,
    /// h200, or a target description .toml.
    #[arg(long, default_value = "cpu")]
    target: String,
    /// Enable or disable rule families or rules: `--rules=-fusion`,
    /// `--rules=-merge-projections`, `--rules fusion` (only that family), `none`.
    #[arg(long, value_name = "LIST")]
    rules: Option<String>,
    /// Approximate the model (changes its function; the error is measured and
    /// reported): `performer:256` (FAVOR+ random features, `,seed:S`),
    /// `window:4096,sinks:4` (sliding window with attention sinks),
    /// `scatterbrain:256,window:64` (exact band + FAVOR+ elsewhere). Repeatable.
    #[arg(long = "convert", value_name = "APPROX")]
    convert: Vec<String>,
    /// NVIDIA architecture of GPU code (`--target gpu`): sm_80 or sm_90.
    #[arg(long, default_value = "sm_90")]
    arch: String,
    /// Stop saturating once the e-graph holds this many e-nodes; the cheapest program
    /// found by then is used (it is always correct).
    #[arg(long, default_value_t = attnc::passes::NODE_LIMIT as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    node_limit: u64,
    /// Stop saturating after this many seconds (fractions allowed), keeping the
    /// cheapest program found by then.
    #[arg(long, value_name = "SECONDS", default_value_t = attnc::passes::TIME_LIMIT.as_secs_f64())]
    time_limit: f64,
}

impl OptArgs {
    fn options(&self) -> attnc::Result<OptimizeOptions> {
        Ok(OptimizeOptions {
            target: attnc::target(&self.target)?,
            rules: match &self.rules {
                Some(r) => attnc::rules(r)?,
                None => attnc::passes::RuleSelection::all(),
            },
            approximations: self
                .convert
                .iter()
                .map(|c| attnc::approximation(c))
                .collect::<attnc::Result<_>>()?,
            gpu_arch: attnc::backends::Arch::parse(&self.arch).ok_or_else(|| {
                attnc::Error(format!("--arch {}: expected sm_80 or sm_90", self.arch))
            })?,
            node_limit: self.node_limit as usize,
            time_limit: std::time::Duration::try_from_secs_f64(self.time_limit)
                .ok()
                .filter(|t| *t <= std::time::Duration::from_secs(86_400))
                .ok_or_else(|| {
                    attnc::Error(format!(
                        "--time-limit {}: expected seconds between 0 and 86400",
                        self.time_limit
                    ))
                })?,
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum EmitArg {
    /// attnc IR text (`.air`), as written.
    Ir,
    /// attnc IR text after the optimizer.
    OptIr,
    /// MLIR (linalg on tensors), before lowering.
    Mlir,
    /// LLVM IR, optimized for this CPU.
    Llvm,
    /// A relocatable object for this CPU and its C header (needs `-o`).
    Obj,
    /// Graphviz DOT of the IR graph.
    Dot,
    /// PTX for NVIDIA GPUs (`--target gpu`, `--arch sm_80|sm_90`).
    Ptx,
}

/// One line per `--convert` approximation: what it replaced, its measured error and
/// speedup.
fn approximations_text(reports: &[attnc::ApproximationReport]) -> String {
    let mut s = String::new();
    for r in reports {
        s += &format!(
            "approximation {} on {} layer{}: max_abs_err {:.3e}, rel_err {:.3e}, speedup {:.2}x ({:.3} ms -> {:.3} ms; {} alone, {:?}, seeded inputs)\n",
            r.name,
            r.layers.len(),
            if r.layers.len() == 1 { "" } else { "s" },
            r.max_abs_err,
            r.rel_err,
            r.speedup,
            r.baseline_ms,
            r.ms,
            r.measured_on,
            r.shape
        );
    }
    s
}

/// The compiled code allocates its intermediates afresh on every call; glibc's
/// defaults serve buffers over 32 MiB with `mmap` and return freed memory to the OS,
/// so each call page-faults them in again (measured: half the time of recurrent
/// linear attention at N = 4096). The command line keeps them mapped instead: served
/// from the heap up to 1 GiB and not trimmed below that. A library user decides this
/// for their own process.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory_mapped() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: `mallopt` only changes glibc's allocation thresholds; called before
    // any thread starts.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 30);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory_mapped() {}

fn main() -> ExitCode {
    keep_freed_memory_mapped();
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(model: &ModelArgs) -> attnc::Result<attnc_ir::Graph> {
    attnc::load(&model.spec, &model.source())
}

impl ModelArgs {
    fn source(&self) -> SpecSource {
        SpecSource {
            sets: self.sets.clone(),
            tiny: self.tiny,
        }
    }

    /// Whether `--set` gives dimension `name` (`seq` or `dims.seq`).
    fn sets_dim(&self, name: &str) -> bool {
        self.sets.iter().any(|s| {
            let key = s.split('=').next().unwrap_or("").trim();
            key == name || key == format!("dims.{name}")
        })
    }
}

/// `run`'s `--tokens` and `--input`s read, and the spec's `batch` / `seq` set from
/// their shapes (unless --set gives them).
fn user_inputs(
    mut model: ModelArgs,
    tokens: Option<&str>,
    inputs: &[String],
) -> attnc::Result<(ModelArgs, HashMap<String, attnc_ir::Tensor>)> {
    let is_ir = model.spec.extension().and_then(|e| e.to_str()) == Some("air");
    let mut out = HashMap::new();
    let mut sized: Vec<(&str, usize)> = Vec::new();
    if let Some(tokens) = tokens {
        let a = read_tokens(tokens)?;
        let (batch, seq) = match a.shape[..] {
            [n] => (1, n),
            [b, n] => (b, n),
            _ => {
                return Err(attnc::Error(format!(
                    "--tokens: expected ids of shape [batch, seq] or [seq], got {:?}",
                    a.shape
                )))
            }
        };
        if seq == 0 || batch == 0 {
            return Err(attnc::Error("--tokens: no ids".into()));
        }
        sized.extend([("batch", batch), ("seq", seq)]);
        let t = attnc_ir::Tensor::new(attnc_ir::DType::I64, vec![batch, seq], a.data);
        out.insert("tokens".to_string(), t);
    }
    for spec in inputs {
        let (name, file) = spec
            .split_once('=')
            .ok_or_else(|| attnc::Error(format!("--input {spec}: expected NAME=FILE.npy")))?;
        let a = attnc::npy::read(std::path::Path::new(file))?;
        if let Some(&b) = a.shape.first() {
            sized.push(("batch", b));
        }
        // Converted to the input's own type when bound.
        let dtype = if a.integer {
            attnc_ir::DType::I64
        } else {
            attnc_ir::DType::F32
        };
        if out
            .insert(
                name.to_string(),
                attnc_ir::Tensor::new(dtype, a.shape, a.data),
            )
            .is_some()
        {
            return Err(attnc::Error(format!("input `{name}` is given twice")));
        }
    }
    if !is_ir {
        for (dim, n) in sized {
            if !model.sets_dim(dim) && !model.sets.iter().any(|s| s == &format!("{dim}={n}")) {
                model.sets.push(format!("{dim}={n}"));
            }
        }
    }
    Ok((model, out))
}

/// `--tokens`: comma-separated ids, or a `.npy` / text file of them.
fn read_tokens(arg: &str) -> attnc::Result<attnc::npy::Array> {
    let path = std::path::Path::new(arg);
    if path.extension().and_then(|e| e.to_str()) == Some("npy") {
        let a = attnc::npy::read(path)?;
        if !a.integer {
            return Err(attnc::Error(format!(
                "{arg}: token ids are integers; this array holds floats"
            )));
        }
        return Ok(a);
    }
    let (text, shown) = if path.is_file() {
        let text = attnc_ir::read_source(path).map_err(attnc::Error)?;
        (text, arg.to_string())
    } else {
        (arg.to_string(), "--tokens".to_string())
    };
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let ids: Vec<&str> = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .collect();
        if ids.is_empty() {
            continue;
        }
        let row = ids
            .iter()
            .map(|t| {
                t.parse::<i64>().map(|v| v as f64).map_err(|_| {
                    attnc::Error(format!("{shown}:{}: `{t}` is not a token id", line_no + 1))
                })
            })
            .collect::<attnc::Result<Vec<f64>>>()?;
        if let Some(first) = rows.first() {
            if first.len() != row.len() {
                return Err(attnc::Error(format!(
                    "{shown}:{}: {} ids, but the first row has {} (every row of a batch has the same length)",
                    line_no + 1,
                    row.len(),
                    first.len()
                )));
            }
        }
        rows.push(row);
    }
    let (batch, seq) = (rows.len(), rows.first().map_or(0, Vec::len));
    Ok(attnc::npy::Array {
        shape: vec![batch, seq],
        data: rows.concat(),
        integer: true,
    })
}

/// `run --out`: `.npy` for one output, `.safetensors` for any number.
fn write_outputs(path: &std::path::Path, report: &attnc::RunReport) -> attnc::Result<()> {
    // attnc computes in at most f32: f32 files lose nothing.
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => {
            let [t] = &report.values[..] else {
                return Err(attnc::Error(format!(
                    "{}: the model has {} outputs; a .npy file holds one (write .safetensors)",
                    path.display(),
                    report.values.len()
                )));
            };
            attnc::npy::write(path, &t.shape, &t.data, false)
        }
        Some("safetensors") => {
            let tensors: Vec<(String, Vec<usize>, &[f64])> = report
                .outputs
                .iter()
                .zip(&report.values)
                .map(|(o, t)| (o.name.clone(), t.shape.clone(), &t.data[..]))
                .collect();
            attnc::safetensors::write(path, &tensors, false)
        }
        _ => Err(attnc::Error(format!(
            "{}: --out writes .npy or .safetensors",
            path.display()
        ))),
    }
}

/// Errors after loading (backend, run time) name the model file too.
fn in_file(model: &ModelArgs, e: attnc::Error) -> attnc::Error {
    attnc::Error(format!("{}: {e}", model.spec.display()))
}

fn cpu_only(options: &OptimizeOptions) -> attnc::Result<()> {
    match options.target.kind {
        attnc::passes::TargetKind::Cpu => Ok(()),
        attnc::passes::TargetKind::Gpu => Err(attnc::Error(format!(
            "--target {} is a gpu target: `bench` times CPU code only for now (GPU code: \
             `compile --emit ptx`, `run --target gpu`; GPU timings: scripts/gpu-check)",
            options.target.name
        ))),
    }
}

fn check_tolerance(tol: Option<f64>) -> attnc::Result<()> {
    match tol {
        Some(t) if t.is_nan() || t < 0.0 => Err(attnc::Error(format!(
            "--tol must be a non-negative number, got {t}"
        ))),
        _ => Ok(()),
    }
}

/// `compile --verify`: translation validation at a reduced size, before any output is
/// written. Prints a summary on standard error; a divergence is an error.
fn verify_compile(
    model: &ModelArgs,
    graph: &attnc_ir::Graph,
    options: &OptimizeOptions,
    seed: u64,
    tol: Option<f64>,
) -> attnc::Result<()> {
    let is_spec = model.spec.extension().and_then(|e| e.to_str()) != Some("air");
    let reduced = if is_spec && !model.tiny {
        let mut source = model.source();
        source.tiny = true;
        attnc::load(&model.spec, &source)?
    } else {
        graph.clone()
    };
    let optimized = attnc::optimize_exact(&reduced, options).map_err(|e| in_file(model, e))?;
    let compiled = options.target.kind == attnc::passes::TargetKind::Cpu;
    let verify_options = attnc::VerifyOptions {
        seed,
        tol,
        compiled,
        threads: None,
    };
    let report =
        attnc::verify(&reduced, &optimized, &verify_options).map_err(|e| in_file(model, e))?;
    let dims: Vec<String> = report
        .dims
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut text = format!(
        "verify: {} layers at {}{} (seed {}): optimized graph max_abs_err {:.2e}",
        report.layers.len(),
        if reduced.dims.is_empty() {
            "its sizes".to_string()
        } else {
            dims.join(" ")
        },
        if is_spec && !model.tiny {
            " (--tiny)"
        } else {
            ""
        },
        report.seed,
        report.optimized_max_abs_err
    );
    match report.compiled_max_abs_err {
        Some(e) => text += &format!(", compiled code {e:.2e}"),
        None => {
            text += &format!(
                ", compiled code not run (target `{}` is not this CPU)",
                options.target.name
            )
        }
    }
    text += &format!(" (tol {:.0e} relative)", report.tol);
    // Rules that only fire at full size are not covered by the check.
    if is_spec && !model.tiny {
        let full = attnc::optimize_exact(graph, options).map_err(|e| in_file(model, e))?;
        let missed: Vec<&str> = full
            .report
            .fired
            .iter()
            .filter(|(r, _)| !optimized.report.fired.iter().any(|(v, _)| v == r))
            .map(|(r, _)| r.as_str())
            .collect();
        if !missed.is_empty() {
            text += &format!(
                "\nverify: warning: fired at full size but not at the verified size, so not checked: {}",
                missed.join(", ")
            );
        }
    }
    eprintln!("{text}");
    match &report.divergence {
        None => Ok(()),
        Some(d) => Err(attnc::Error(format!(
            "{}: verify failed: layer `{}` diverges first: %{} = {} of the original differs from the {} by {:.3e} (allowed {:.1e}; seed {})",
            model.spec.display(),
            d.layer,
            d.node,
            d.op,
            if d.stage == "compiled" { "compiled code" } else { "optimized graph" },
            d.max_abs_err,
            d.bound,
            report.seed
        ))),
    }
}

fn real_main(cli: Cli) -> attnc::Result<()> {
    match cli.command {
        Command::Compile {
            model,
            emit,
            opt,
            output,
            verify,
            seed,
            tol,
        } => {
            let options = opt.options()?;
            if matches!(emit, EmitArg::Obj) && output.is_none() {
                return Err(attnc::Error(
                    "--emit obj writes a binary object and its C header: give the object's path with -o (e.g. -o model.o)".into(),
                ));
            }
            let graph = load(&model)?;
            if verify {
                check_tolerance(tol)?;
                verify_compile(&model, &graph, &options, seed, tol)?;
            }
            let emit = match emit {
                EmitArg::Ir => Emit::Ir,
                EmitArg::OptIr => Emit::OptIr,
                EmitArg::Mlir => Emit::Mlir,
                EmitArg::Llvm => Emit::Llvm,
                EmitArg::Dot => Emit::Dot,
                EmitArg::Ptx => Emit::Ptx,
                EmitArg::Obj => {
                    let (object, header) =
                        attnc::compile_object(&graph, &options).map_err(|e| in_file(&model, e))?;
                    let path = output.unwrap_or_default();
                    std::fs::write(&path, object).map_err(|e| {
                        attnc::Error(format!("{}: cannot write: {e}", path.display()))
                    })?;
                    return write_out(Some(&path.with_extension("h")), &header);
                }
            };
            let text = attnc::compile(&graph, emit, &options).map_err(|e| in_file(&model, e))?;
            let reports = attnc::approximation_reports(&graph, &options, 0)
                .map_err(|e| in_file(&model, e))?;
            eprint!("{}", approximations_text(&reports));
            write_out(output.as_ref(), &text)
        }
        Command::Import { config, output } => {
            let text = attnc::import_hf(&config)?;
            write_out(output.as_ref(), &text)
        }
        Command::Inspect {
            model,
            opt,
            json,
            list_rules,
        } => {
            if list_rules {
                let mut s = String::new();
                for r in attnc::passes::rules::all_rules() {
                    s += &format!("{:<20} {:<8} {}\n", r.name, r.family, r.identity);
                }
                return write_out(None, &s);
            }
            let options = opt.options()?;
            let graph = load(&model)?;
            let report = attnc::inspect(&graph, &options).map_err(|e| in_file(&model, e))?;
            if json {
                return print_json(&report);
            }
            write_out(None, &inspect_text(&report))
        }
        Command::Explain { model, opt, layer } => {
            let options = opt.options()?;
            let graph = load(&model)?;
            let e = attnc::explain(&graph, &layer, &options).map_err(|e| in_file(&model, e))?;
            write_out(None, &explain_text(&e))
        }
        Command::Run {
            model,
            check,
            tol,
            seed,
            opt,
            threads,
            json,
            diffusion_steps,
            prompt,
            weights,
            tokens,
            inputs,
            out,
        } => {
            let optimize = opt.options()?;
            let (model, inputs) = user_inputs(model, tokens.as_deref(), &inputs)?;
            let graph = load(&model)?;
            let weights = match &weights {
                None => None,
                Some(path) => {
                    let spec = attnc::load_spec(&model.spec, &model.source())?;
                    let w = attnc::weights::Weights::open(path, &graph, spec.as_ref())
                        .map_err(|e| in_file(&model, e))?;
                    Some(std::sync::Arc::new(w))
                }
            };
            if diffusion_steps.is_some()
                && (weights.is_some() || !inputs.is_empty() || out.is_some())
            {
                return Err(attnc::Error(
                    "--diffusion-steps draws its weights and takes its prompt by --prompt; --weights, --tokens, --input and --out are for plain runs".into(),
                ));
            }
            check_tolerance(tol)?;
            let tol = tol.unwrap_or_else(|| attnc::default_tolerance(&graph));
            if let Some(steps) = diffusion_steps {
                let source = SpecSource {
                    sets: model.sets.clone(),
                    tiny: model.tiny,
                };
                let sampler = attnc::load_diffusion(&model.spec, &source)?.ok_or_else(|| {
                    attnc::Error(format!(
                        "{}: --diffusion-steps needs a masked-diffusion model: a spec with a `[diffusion]` section",
                        model.spec.display()
                    ))
                })?;
                if optimize.target.kind != attnc::passes::TargetKind::Cpu {
                    return Err(attnc::Error(
                        "--diffusion-steps runs the sampler on the CPU backend for now; drop --target"
                            .into(),
                    ));
                }
                let options = attnc::DiffusionOptions {
                    sampler: attnc::ir::spec::Diffusion { steps, ..sampler },
                    prompt,
                    seed,
                    check,
                    optimize,
                    threads: threads.map(|n| n as usize),
                };
                let report =
                    attnc::run_diffusion(&graph, &options).map_err(|e| in_file(&model, e))?;
                if json {
                    print_json(&report)?;
                } else {
                    write_out(None, &diffusion_text(&report))?;
                }
                return match (report.max_abs_err, report.tokens_agree) {
                    (Some(e), _) if e.is_nan() || e > tol => Err(in_file(
                        &model,
                        attnc::Error(format!(
                            "check failed: the logits' max_abs_err {e:.3e} exceeds the tolerance {tol:.1e}"
                        )),
                    )),
                    (_, Some(false)) => Err(in_file(
                        &model,
                        attnc::Error(
                            "check failed: a step unmasked other tokens than the interpreter's logits choose".into(),
                        ),
                    )),
                    _ => Ok(()),
                };
            }
            let options = RunOptions {
                seed,
                check,
                optimize,
                threads: threads.map(|n| n as usize),
                inputs,
                weights,
            };
            let report = attnc::run(&graph, &options).map_err(|e| in_file(&model, e))?;
            if let Some(path) = &out {
                write_outputs(path, &report)?;
            }
            if json {
                print_json(&report)?;
            } else {
                let mut s = format!(
                    "{}: compiled in {:.0} ms, ran in {:.2} ms",
                    report.model, report.compile_ms, report.ms
                );
                if let Some(ims) = report.interp_ms {
                    s += &format!(" (interpreter {ims:.0} ms)");
                }
                s.push('\n');
                for o in &report.outputs {
                    s += &format!("  {} {:?} {}", o.name, o.shape, o.dtype);
                    if let Some(e) = o.max_abs_err {
                        s += &format!("  max_abs_err {e:.3e}");
                    }
                    s.push('\n');
                }
                if let Some(e) = report.opt_max_abs_err {
                    s += &format!("  optimized vs original graph (interpreter): {e:.3e}\n");
                }
                s += &approximations_text(&report.approximations);
                write_out(None, &s)?;
            }
            match report.max_abs_err {
                // NaN fails the check too.
                Some(e) if e.is_nan() || e > tol => Err(in_file(
                    &model,
                    attnc::Error(format!(
                        "check failed: max_abs_err {e:.3e} exceeds the tolerance {tol:.1e}"
                    )),
                )),
                _ => Ok(()),
            }
        }
        Command::Bench {
            model,
            opt,
            threads,
            runs,
            model_only,
            seed,
            json,
        } => {
            let optimize = opt.options()?;
            cpu_only(&optimize)?;
            let graph = load(&model)?;
            let options = attnc::BenchOptions {
                optimize,
                threads: threads.map(|n| n as usize),
                runs: runs as usize,
                seed,
                model_only,
            };
            let report = attnc::bench(&graph, &options).map_err(|e| in_file(&model, e))?;
            if json {
                return print_json(&report);
            }
            write_out(None, &bench_text(&report))
        }
    }
}

fn bench_text(report: &attnc::BenchReport) -> String {
    let mut s = format!(
        "{}: compiled optimized vs compiled original graph, {} threads, median of {} runs\n  {:<40} {:>12} {:>12} {:>8} {:>10}\n",
        report.model, report.threads, report.runs, "case", "optimized", "original", "speedup", "GFLOP/s"
    );
    for c in &report.cases {
        s += &format!(
            "  {:<40} {:>9.3} ms {:>9.3} ms {:>7.2}x {:>10.1}\n",
            c.name, c.ms, c.baseline_ms, c.speedup, c.gflops
        );
        if let (Some(useful), Some(tokens)) = (c.useful_gflops, c.tokens_per_s) {
            s += &format!(
                "  {:<40} vs the dense-gated mixture: {useful:.1} useful GFLOP/s (router + selected experts), {tokens:.0} tokens/s\n",
                ""
            );
        }
        if let Some(d) = c.density {
            s += &format!(
                "  {:<40} vs the same attention dense: density {d:.3}, ideal {:.2}x, reached {:.0}% of it\n",
                "",
                1.0 / d,
                100.0 * c.speedup * d
            );
        }
    }
    s
}

fn inspect_text(report: &attnc::InspectReport) -> String {
    let ns = |v: f64| attnc::passes::Cost(v).to_string();
    let (m, r) = (report, &report.optimizer);
    let mut s = format!(
        "{}: {} nodes, {} params ({} weights); target {}\n  FLOPs {} -> {}, bytes {} -> {}, estimated {} -> {}\n  e-graph: {} nodes in {} classes after {} iterations ({}), saturation {:.1} ms, extraction {:.1} ms\n",
        m.model,
        m.nodes,
        m.params,
        human(m.param_elements as f64),
        r.target,
        human(m.flops as f64),
        human(m.flops_after as f64),
        human(m.bytes as f64),
        human(m.bytes_after as f64),
        ns(r.cost_before),
        ns(r.cost_after),
        r.egraph_nodes,
        r.egraph_classes,
        r.iterations,
        r.stop_reason,
        r.saturation_ms,
        r.extraction_ms,
    );
    s += &approximations_text(&m.approximations);
    for l in &r.layers {
        s += &format!(
            "{}\n  before: {}\n  after:  {}\n  FLOPs {} -> {}, bytes {} -> {}, estimated {} -> {}\n",
            l.name,
            summarize_ops(&l.before),
            summarize_ops(&l.after),
            human(l.flops_before as f64),
            human(l.flops_after as f64),
            human(l.bytes_before as f64),
            human(l.bytes_after as f64),
            ns(l.cost_before),
            ns(l.cost_after),
        );
        if let (Some([bq, bk]), Some(d), Some(saved)) = (l.block, l.block_density, l.flops_saved) {
            s += &format!(
                "  blocks: {bq}x{bk}, density {:.3} ({:.1}% of blocks computed), {} FLOPs saved vs dense attention\n",
                d,
                100.0 * d,
                human(saved as f64)
            );
        }
        if !l.rules.is_empty() {
            s += &format!("  rules:  {}\n", l.rules.join(", "));
        }
    }
    if let Some(g) = &m.gpu {
        s += &gpu_text(g);
    }
    s
}

fn gpu_text(g: &attnc::GpuReport) -> String {
    let mut s = format!(
        "gpu {}: {} kernels, {} launches, {} buffers ({}B device memory), {} run-time checks, {}B of PTX\n  ptxas: {}\n",
        g.arch,
        g.kernels.len(),
        g.launches,
        g.buffers,
        human(g.device_bytes as f64),
        g.checks,
        human(g.ptx_bytes as f64),
        g.ptxas
    );
    s += &format!(
        "  {:<24} {:<22} {:>11} {:>7} {:>5} {:>6} {:>8}  layers\n",
        "kernel", "op", "block", "smem", "regs", "spill", "launches"
    );
    let opt = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    for k in &g.kernels {
        let [x, y, z] = k.block;
        let layers = match k.layers.as_slice() {
            [] => String::new(),
            [one] => one.clone(),
            [first, .., last] => format!("{first} .. {last} ({})", k.layers.len()),
        };
        s += &format!(
            "  {:<24} {:<22} {:>11} {:>7} {:>5} {:>6} {:>8}  {layers}\n",
            k.name,
            k.op,
            format!("{x}x{y}x{z}"),
            k.shared_bytes,
            opt(k.registers),
            opt(k.spill_bytes),
            k.launches,
        );
    }
    s
}

fn diffusion_text(r: &attnc::DiffusionReport) -> String {
    let mut s = format!(
        "{}: {} denoising steps over {} positions in blocks of {} (prompt {}, mask token {}), compiled in {:.0} ms\n",
        r.model, r.steps, r.gen_length, r.block_length, r.prompt_length, r.mask_token, r.compile_ms
    );
    for st in &r.per_step {
        s += &format!(
            "  step {:>3} block {:>2}: unmasked {:>3}, masked left {:>4}, {:.2} ms",
            st.step, st.block, st.unmasked, st.masked, st.ms
        );
        if let (Some(e), Some(i)) = (st.max_abs_err, st.interp_ms) {
            s += &format!("  max_abs_err {e:.3e} (interpreter {i:.2} ms)");
        }
        if st.tokens_agree == Some(false) {
            s += "  tokens differ";
        }
        s.push('\n');
    }
    s += &format!("  {:.1} steps/s", r.steps_per_s);
    if let (Some(i), Some(x)) = (r.interp_steps_per_s, r.speedup) {
        s += &format!(" (interpreter {i:.2} steps/s: {x:.0}x)");
    }
    s.push('\n');
    for (i, row) in r.tokens.iter().enumerate() {
        let generated: Vec<String> = row[r.prompt_length as usize..]
            .iter()
            .map(i64::to_string)
            .collect();
        s += &format!("  row {i} generated: {}\n", generated.join(" "));
    }
    s
}

fn explain_text(e: &attnc::passes::Explanation) -> String {
    let mut s = format!("layer {}\n", e.layer);
    for (i, (before, after)) in e.outputs.iter().enumerate() {
        s += &format!("output {i}\n  plain:     {before}\n  optimized: {after}\n");
    }
    if e.steps.is_empty() {
        s += "no rewrite changed this layer\n";
    }
    for (i, step) in e.steps.iter().enumerate() {
        let dir = if step.backward {
            " (right to left)"
        } else {
            ""
        };
        s += &format!(
            "{}. {}{dir}: {}\n     {}\n  => {}\n",
            i + 1,
            step.rule,
            step.identity,
            step.before,
            step.after
        );
    }
    s
}

/// `matmul×4 add×3 ...` in order of first appearance.
fn summarize_ops(ops: &[String]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for op in ops {
        match counts.iter_mut().find(|(n, _)| n == op) {
            Some((_, c)) => *c += 1,
            None => counts.push((op, 1)),
        }
    }
    counts
        .iter()
        .map(|(n, c)| {
            if *c == 1 {
                n.to_string()
            } else {
                format!("{n}×{c}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn human(v: f64) -> String {
    for (scale, suffix) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")] {
        if v >= scale {
            return format!("{:.2}{suffix}", v / scale);
        }
    }
    format!("{v}")
}

fn print_json(value: &impl serde::Serialize) -> attnc::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| attnc::Error(e.to_string()))?;
    write_out(None, &(text + "\n"))
}

fn write_out(path: Option<&PathBuf>, text: &str) -> attnc::Result<()> {
    match path {
        Some(p) => std::fs::write(p, text)
            .map_err(|e| attnc::Error(format!("{}: cannot write: {e}", p.display()))),
        None => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`attnc ... | head`) is not an error worth reporting.
            match out.write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(attnc::Error(format!(
                    "cannot write to standard output: {e}"
                ))),
                _ => Ok(()),
            }
        }
    }
}
