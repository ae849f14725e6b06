//! The GPU backend's code generation: an optimized graph as one PTX module holding
//! every kernel, plus the host-side launch plan that runs it ([`GpuProgram`]). The
//! runner (CUDA driver API) and the CLI are elsewhere; nothing here needs a GPU.
//!
//! Design:
//! - **Kernels as MLIR text.** One `gpu.module @attnc_kernels` of `gpu.func ...
//!   kernel` functions written directly with `gpu.thread_id` / `gpu.block_id`,
//!   `gpu.barrier`, `gpu.shuffle`, dynamic shared memory (`gpu.dynamic_shared_memory`
//!   viewed as typed memrefs), `scf`, `arith` and `memref`. Every shape is static and
//!   baked into the kernel; each kernel is identified by its text, so identical
//!   kernels (the layers of a uniform stack) are written and compiled once. Buffer
//!   parameters are 1-D static memrefs passed as bare pointers: one device pointer
//!   per buffer ([`Param::Pointer`]).
//! - **No libdevice.** `convert-gpu-to-nvvm` maps `math.exp`, `math.tanh`, ... (and
//!   `llvm.intr.sqrt`) to `__nv_*` calls that would stay unresolved in the PTX, so
//!   the kernels use no `math` op: `ex2.approx`, `lg2.approx`, `sin/cos.approx`
//!   (after an f64 range reduction) and `sqrt.rn` through `llvm.call_intrinsic`, with
//!   `tanh`, `erf`, `sigmoid`, `pow` built from them (`math.rs`). The PTX has no
//!   `.extern .func`, which [`compile_gpu`] checks.
//! - **Pipeline** (`compile.rs`): parse + verify, `convert-scf-to-cf`,
//!   `expand-strided-metadata`, `lower-affine`,
//!   `convert-gpu-to-nvvm{use-bare-ptr-memref-call-conv=true}`, `canonicalize`, `cse`,
//!   `reconcile-unrealized-casts` inside the `gpu.module`; the `gpu.module` translated
//!   to LLVM IR, `default<O3>`, and PTX from LLVM's NVPTX target machine (through
//!   inkwell) for the [`Arch`] (`sm_80` + PTX 7.0, `sm_90` + PTX 8.0).
//! - **The plan** (`plan.rs`): inputs and params are buffers bound by name, outputs
//!   are written in place (or copied when an output is an input, an alias or named
//!   twice), reshapes alias, chains of elementwise ops are fused (`ew.rs`: a node
//!   read once by elementwise ops is computed inside its reader, indices through
//!   broadcasts, transposes, slices, concats, gathers and rope from static strides),
//!   every other node is one launch (or a few), and dead temporaries are reused.
//!   Launch geometry is static. Dynamic sparse attention (`moba`, `lsh`, `routing`)
//!   and the non-kernel forms of `linear_attention` run as their
//!   [`attnc_ir::expand`]ed graphs, as on the CPU.
//!
//! Kernels (all f32 arithmetic; f16 / bf16 storage widened on load and rounded on
//! store; i32 / i64 / bool where the IR allows):
//! - `elementwise` — fused unary / binary / compare / select / cast / iota / mask /
//!   const / broadcast / transpose / slice / concat / reshape / gather / embedding /
//!   rope / random features, one thread per output element in a grid-stride loop;
//! - `softmax`, `layer_norm`, `rms_norm`, `reduce_*` (`rows.rs`) — a warp per row
//!   (rows of up to 2048), a block per longer row, `gpu.shuffle` and shared memory;
//!   reductions that keep the last axis, one thread per result;
//! - `matmul` (`gemm.rs`) — a shared-memory tiled SIMT GEMM, 128 × 128 × 32 (64 ×
//!   64 for small sides) with 8 × 8 (4 × 4) register tiles per thread; batch dims
//!   broadcast; integer matmuls one thread per result;
//! - `matmul_mma` (`mma.rs`, only with [`GpuOptions::tensor_cores`]) — f16 / bf16
//!   matmuls on tensor cores, `mma.sync m16n8k16` with f32 accumulation, 128 × 128 ×
//!   32 tiles over 8 warps; written to the PTX ISA's fragment layouts and checked in
//!   the emulator, not yet on a GPU, hence off by default;
//! - `attention` / `block_sparse_attention` (`attention.rs`) — FlashAttention-2:
//!   online softmax in base 2, GQA, scale, softcap, bias, mask expressions inline,
//!   document masks, the compile-time block layout as a constant CSR list or a
//!   run-time block list;
//! - `topk_*`, `cumsum`, `linear_scan`, `scatter_add`, `copy` (`misc.rs`) — one thread
//!   per row or line;
//! - `linear_attention` (`linear.rs`) — the recurrent kernel form, a thread per value
//!   column holding its state column;
//! - `moe_route`, `moe_offsets`, `moe_up`, `moe_down`, `moe_activation`,
//!   `moe_combine` (`moe.rs`) — `moe_dispatch` as grouping, grouped expert GEMMs over
//!   gathered rows and a combine in expert order.
//!
//! Validation without a GPU: every module passes the MLIR verifier and the pipeline,
//! `ptxas` (when found, [`ptxas()`]) assembles the PTX, and the unit tests run the
//! kernels' MLIR in a CPU emulator (`emulate.rs`: every thread of a block, barriers,
//! shuffles, ballots, `mma.sync`, bounds-checked memory) over the plan's launches
//! and compare the outputs with the reference interpreter — op families one by one
//! and the tiny versions of the example models end to end.
//!
//! Run-time errors (an index out of range — gathers clamp it, scatter_add skips it;
//! an integer division by zero — 0; a `moe_dispatch` gate over its bound — pairs
//! past the bound are dropped) set a status flag per check ([`StatusCheck`]), which
//! the runner reports as the interpreter's error naming the node and layer, as the
//! CPU backend does.

mod attention;
mod code;
mod compile;
#[cfg(test)]
mod emulate;
mod ew;
mod gemm;
mod linear;
mod mask;
mod math;
mod misc;
mod mma;
mod module;
mod moe;
mod plan;
pub mod program;
pub mod ptxas;
mod rows;

pub use compile::PIPELINE as GPU_PIPELINE;
pub use plan::check_plan;
pub use program::{Arch, Arg, Buffer, BufferRole, GpuProgram, Kernel, Launch, Param, StatusCheck};
pub use ptxas::{find_ptxas, ptxas, KernelReport, PtxasReport};

use crate::Result;
use attnc_ir::Graph;

/// Choices of the code generator beyond the architecture.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// Matmuls of f16 / bf16 operands on tensor cores (`mma.sync m16n8k16`, f32
    /// accumulation) instead of the SIMT GEMM. Off by default: the kernel is written
    /// to the PTX ISA's fragment layouts and checked in the CPU emulator, but has not
    /// run on a GPU yet.
    pub tensor_cores: bool,
}

/// The PTX and launch plan of `graph` for `arch` (default [`GpuOptions`]).
pub fn compile_gpu(graph: &Graph, arch: Arch) -> Result<GpuProgram> {
    compile_gpu_with(graph, arch, &GpuOptions::default())
}

/// [`compile_gpu`] with `options`.
pub fn compile_gpu_with(graph: &Graph, arch: Arch, options: &GpuOptions) -> Result<GpuProgram> {
    let planned = plan::plan(graph, arch, options)?;
    let mut program = planned.program;
    program.ptx = compile::ptx(&planned.module, arch, planned.index32)?;
    Ok(program)
}

/// The launch plan of `graph` for `arch` without its PTX (`ptx` empty): kernels,
/// buffers, launches and checks, as [`compile_gpu`] plans them, in a fraction of
/// the time (nothing is lowered).
pub fn plan_gpu(graph: &Graph, arch: Arch) -> Result<GpuProgram> {
    Ok(plan::plan(graph, arch, &GpuOptions::default())?.program)
}

/// The `gpu.module` of `graph` before lowering (verified): what `--emit mlir
/// --target gpu` prints.
pub fn emit_gpu_mlir(graph: &Graph, arch: Arch) -> Result<String> {
    emit_gpu_mlir_with(graph, arch, &GpuOptions::default())
}

/// [`emit_gpu_mlir`] with `options`.
pub fn emit_gpu_mlir_with(graph: &Graph, arch: Arch, options: &GpuOptions) -> Result<String> {
    let planned = plan::plan(graph, arch, options)?;
    compile::verify(&planned.module)?;
    Ok(planned.module)
}
