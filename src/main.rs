//! The `attnc` command line.

use attnc::{Emit, RunOptions};
use attnc_ir::spec::SpecSource;
use clap::{Args, Parser, Subcommand, ValueEnum};
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
        /// Target machine.
        #[arg(long, value_enum, default_value = "cpu")]
        target: Target,
        /// Output file (default: standard output).
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: Option<PathBuf>,
    },
    /// Show per-layer ops, FLOPs and bytes.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
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
        #[arg(long, value_enum, default_value = "cpu")]
        target: Target,
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

#[derive(Clone, Copy, ValueEnum)]
enum EmitArg {
    /// attnc IR text (`.air`).
    Ir,
    /// MLIR (linalg on tensors), before lowering.
    Mlir,
    /// LLVM IR, optimized for this CPU.
    Llvm,
    /// Graphviz DOT of the IR graph.
    Dot,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Cpu,
    Gpu,
}

fn main() -> ExitCode {
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(model: &ModelArgs) -> attnc::Result<attnc_ir::Graph> {
    let source = SpecSource {
        sets: model.sets.clone(),
        tiny: model.tiny,
    };
    attnc::load(&model.spec, &source)
}

/// Errors after loading (backend, run time) name the model file too.
fn in_file(model: &ModelArgs, e: attnc::Error) -> attnc::Error {
    attnc::Error(format!("{}: {e}", model.spec.display()))
}

fn cpu_only(target: Target) -> attnc::Result<()> {
    match target {
        Target::Cpu => Ok(()),
        Target::Gpu => Err(attnc::Error(
            "--target gpu is not available yet: this build has the CPU backend only".into(),
        )),
    }
}

fn real_main(cli: Cli) -> attnc::Result<()> {
    match cli.command {
        Command::Compile {
            model,
            emit,
            target,
            output,
        } => {
            cpu_only(target)?;
            let graph = load(&model)?;
            let emit = match emit {
                EmitArg::Ir => Emit::Ir,
                EmitArg::Mlir => Emit::Mlir,
                EmitArg::Llvm => Emit::Llvm,
                EmitArg::Dot => Emit::Dot,
            };
            let text = attnc::compile(&graph, emit).map_err(|e| in_file(&model, e))?;
            write_out(output.as_ref(), &text)
        }
        Command::Inspect { model, json } => {
            let graph = load(&model)?;
            let report = attnc::inspect(&graph);
            if json {
                return print_json(&report);
            }
            let mut s = format!(
                "{}: {} nodes, {} params ({} weights), {} FLOPs, {} bytes\n",
                report.model,
                report.nodes,
                report.params,
                human(report.param_elements as f64),
                human(report.flops as f64),
                human(report.bytes as f64)
            );
            s += &format!("{:<22} {:>10} {:>10}  ops\n", "layer", "FLOPs", "bytes");
            for l in &report.layers {
                s += &format!(
                    "{:<22} {:>10} {:>10}  {}\n",
                    l.name,
                    human(l.flops as f64),
                    human(l.bytes as f64),
                    summarize_ops(&l.ops)
                );
            }
            write_out(None, &s)
        }
        Command::Run {
            model,
            check,
            tol,
            seed,
            target,
            json,
        } => {
            cpu_only(target)?;
            let graph = load(&model)?;
            let tol = match tol {
                Some(t) if t.is_nan() || t < 0.0 => {
                    return Err(attnc::Error(format!(
                        "--tol must be a non-negative number, got {t}"
                    )))
                }
                Some(t) => t,
                None => attnc::default_tolerance(&graph),
            };
            let report =
                attnc::run(&graph, &RunOptions { seed, check }).map_err(|e| in_file(&model, e))?;
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
    }
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
