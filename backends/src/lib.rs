//! `attnc-backends`: code generation for attnc graphs through MLIR and LLVM.
//!
//! Invariant: every result this backend returns was produced by code generated from a
//! module that passed the MLIR verifier and the whole pass pipeline; every binding is
//! checked (name, dtype, shape) before compiled code touches it; an op it cannot lower
//! is a [`BackendError::Unsupported`] naming the layer and node — never a panic and
//! never a guess.
//!
//! Code map:
//! - `lower`: [`attnc_ir::Graph`] → MLIR text at the tensor level (`linalg.generic`,
//!   `tensor`, `arith`, `math`), one module per graph: `func.func @forward` calling
//!   one `noinline` function per IR layer (identical layers share one), so LLVM's
//!   time grows linearly with depth; one small module per op family, locations
//!   named after IR nodes.
//! - `mlir`: the MLIR context, diagnostics captured into errors, parse + verify, pass
//!   pipelines.
//! - `cpu`: [`CPU_PIPELINE`] to the LLVM dialect, [`CompiledModel`] (JIT), and the
//!   text emitters [`emit_mlir`] / [`emit_llvm_ir`].
//! - `llvm`: LLVM dialect → LLVM IR → inkwell, host CPU attributes, `default<O3>`.
//! - `engine`: the FFI edge, MLIR's ExecutionEngine (the only `unsafe` calls of
//!   compiled code); `host`: typed host buffers and memref descriptors.
//!
//! ```no_run
//! use attnc_ir::{DType, Dims, GraphBuilder, Op, Shape, UnaryOp};
//! let mut b = GraphBuilder::new("tiny", Dims::new());
//! let x = b.input("x", Shape::new([3u64, 5]), DType::F32).unwrap();
//! let y = b.op(Op::Unary(UnaryOp::Gelu), &[x]).unwrap();
//! b.output("y", y).unwrap();
//! let graph = b.finish().unwrap();
//! let model = attnc_backends::CompiledModel::new(&graph).unwrap();
//! let outputs = model.run(&attnc_ir::random_bindings(&graph, 1)).unwrap();
//! assert_eq!(outputs[0].shape, vec![3, 5]);
//! ```

mod aot;
mod cpu;
mod cuda;
mod engine;
mod error;
pub mod gpu;
mod host;
mod kernels;
mod llvm;
mod lower;
mod mlir;

/// LLVM's OpenMP runtime, which the parallel loops of compiled code call
/// (`libomp-22-dev`).
pub const OPENMP_RUNTIME: &str = "/usr/lib/llvm-22/lib/libomp.so";

pub use cpu::{emit_llvm_ir, emit_mlir, emit_object, CompiledModel, Prepared, CPU_PIPELINE};
pub use cuda::GpuModel;
pub use error::{BackendError, Result};
pub use gpu::{compile_gpu, emit_gpu_mlir, plan_gpu, Arch, GpuProgram};
pub use host::{tensor_from_bytes, tensor_to_bytes};
