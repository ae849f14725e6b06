//! A compiled GPU program: the PTX of one `gpu.module` holding every kernel, and the
//! host-side launch plan that runs the graph with it — which device buffers exist,
//! which kernel runs when, on what grid, with which arguments. The plan is plain data:
//! the runner executes it over the CUDA driver API, `inspect` and the snapshots print
//! it, and nothing about it needs a GPU to build.

use attnc_ir::DType;

/// An NVIDIA architecture the PTX targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Ampere (A100): `mma.sync` tensor cores, up to 164 KiB shared memory per block.
    Sm80,
    /// Hopper (H100, H200): the default.
    Sm90,
}

impl Arch {
    pub fn parse(name: &str) -> Option<Arch> {
        match name {
            "sm_80" => Some(Arch::Sm80),
            "sm_90" => Some(Arch::Sm90),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
        }
    }

    /// The most dynamic shared memory one block may opt in to.
    pub fn max_shared_bytes(self) -> u32 {
        match self {
            Arch::Sm80 => 163 * 1024,
            Arch::Sm90 => 227 * 1024,
        }
    }

    /// The PTX ISA version the module declares (`.version`).
    pub fn ptx_features(self) -> &'static str {
        match self {
            Arch::Sm80 => "+ptx70",
            Arch::Sm90 => "+ptx80",
        }
    }
}

/// What a device buffer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BufferRole {
    /// A graph input, bound by name before each run.
    Input(String),
    /// A weight, bound by name once.
    Param(String),
    /// A graph output, copied back after the run.
    Output(String),
    /// An intermediate the plan allocates.
    Temp,
}

/// One device buffer: dense, row-major, `sizes` elements of `dtype`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub role: BufferRole,
    pub dtype: DType,
    pub sizes: Vec<usize>,
    /// The IR node whose value it holds (reshapes alias their operand's buffer). A
    /// temporary is reused, once its value is dead, by later values of the same
    /// dtype and sizes (the layers of a uniform stack share theirs): `node` is its
    /// first. Scratch buffers of a multi-kernel op (`moe_dispatch`) name that op.
    pub node: usize,
}

impl Buffer {
    pub fn bytes(&self) -> u64 {
        self.sizes.iter().map(|&n| n as u64).product::<u64>() * self.dtype.size_bytes()
    }
}

/// A kernel parameter, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// A device pointer to elements of this dtype (bare-pointer convention: static
    /// shapes are compiled into the kernel).
    Pointer(DType),
    /// A 64-bit integer.
    I64,
}

/// One `gpu.func ... kernel` of the module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// The PTX entry name.
    pub name: String,
    pub params: Vec<Param>,
    /// Threads per block the kernel is written for (its `block` in every launch).
    pub block: [u32; 3],
    /// Dynamic shared memory per block, bytes: the `sharedMemBytes` of every launch.
    /// Past 48 KiB the kernel must first be allowed to use it
    /// (`cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
    /// shared_bytes)`); [`max_shared_bytes`](Arch::max_shared_bytes) bounds it.
    pub shared_bytes: u32,
    /// The IR op it computes (`attention`, `matmul`, `elementwise`, ...).
    pub op: String,
}

/// A kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// Index into [`GpuProgram::buffers`].
    Buffer(usize),
    I64(i64),
}

/// One kernel launch of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Index into [`GpuProgram::kernels`].
    pub kernel: usize,
    pub grid: [u32; 3],
    pub args: Vec<Arg>,
    /// The buffers (indices into [`GpuProgram::buffers`]) the launch writes, a
    /// subset of its `args`; the others it only reads.
    pub writes: Vec<usize>,
    /// The IR node (and its layer) the launch computes, for errors and reports.
    pub node: usize,
    pub layer: Option<String>,
}

/// PTX plus its launch plan.
///
/// Running it: load `ptx` (`cuModuleLoadData`; it calls no external function, so no
/// libdevice is linked); allocate every buffer (`Buffer::bytes`, dense row-major;
/// bools are one byte, 0 or 1); copy each `Input` / `Param` binding in by name
/// (every input and param of the graph has a buffer, used or not); run `launches`
/// in order on one stream — `cuLaunchKernel(kernel.name, grid, kernel.block,
/// kernel.shared_bytes, args as device pointers)`, after raising the kernel's
/// dynamic shared memory limit where `shared_bytes` passes 48 KiB; copy each
/// `Output` buffer back. No buffer needs initializing: every launch writes what it
/// (or a later one) reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuProgram {
    pub arch: Arch,
    /// The whole module's PTX text, ready for `cuModuleLoadData` or `ptxas`.
    pub ptx: String,
    pub kernels: Vec<Kernel>,
    pub buffers: Vec<Buffer>,
    /// In execution order; one stream, so each launch sees its predecessors' writes.
    pub launches: Vec<Launch>,
}
