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
    /// The flag of a run-time check ([`GpuProgram::checks`]): one `i32`, zeroed
    /// before each run; a kernel whose check fails sets it to 1.
    Status,
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

/// A run-time check of the plan, the GPU's counterpart of the CPU backend's status
/// flags: the kernels keep going safely (indices clamped, divisors replaced, pairs
/// past a `moe_dispatch` bound dropped) and set the check's [`BufferRole::Status`]
/// buffer; the runner turns a set flag into the interpreter's error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusCheck {
    /// Index into [`GpuProgram::buffers`].
    pub buffer: usize,
    /// The IR node checked, its op and layer.
    pub node: usize,
    pub op: String,
    pub layer: Option<String>,
    /// What went wrong when the flag is set.
    pub message: &'static str,
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
/// `Output` buffer back. Only the `Status` buffers need initializing (to 0, before
/// each run; after it, a non-zero one is the error of its [`StatusCheck`]): every
/// launch writes what it (or a later one) reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuProgram {
    pub arch: Arch,
    /// The whole module's PTX text, ready for `cuModuleLoadData` or `ptxas`.
    pub ptx: String,
    pub kernels: Vec<Kernel>,
    pub buffers: Vec<Buffer>,
    /// In execution order; one stream, so each launch sees its predecessors' writes.
    pub launches: Vec<Launch>,
    /// The run-time checks, one `Status` buffer each.
    pub checks: Vec<StatusCheck>,
}

impl GpuProgram {
    /// Device memory the plan allocates, bytes.
    pub fn device_bytes(&self) -> u64 {
        self.buffers
            .iter()
            .map(Buffer::bytes)
            .fold(0, u64::saturating_add)
    }

    /// The plan as text, without the PTX: every kernel's signature (parameters,
    /// block, dynamic shared memory), every launch (grid, arguments — `>b3` is a
    /// buffer it writes —, node and layer) and the run-time checks. What the
    /// snapshot tests record.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = format!(
            "{}: {} kernels, {} launches, {} buffers ({} bytes), {} checks\n",
            self.arch.name(),
            self.kernels.len(),
            self.launches.len(),
            self.buffers.len(),
            self.device_bytes(),
            self.checks.len()
        );
        s += "kernels\n";
        for k in &self.kernels {
            let params: Vec<String> = k
                .params
                .iter()
                .map(|p| match p {
                    Param::Pointer(d) => format!("{d}*"),
                    Param::I64 => "i64".into(),
                })
                .collect();
            let [x, y, z] = k.block;
            let _ = writeln!(
                s,
                "  {}({}) block {x}x{y}x{z} smem {}",
                k.name,
                params.join(", "),
                k.shared_bytes
            );
        }
        s += "buffers\n";
        for (i, b) in self.buffers.iter().enumerate() {
            let role = match &b.role {
                BufferRole::Input(n) => format!("input {n}"),
                BufferRole::Param(n) => format!("param {n}"),
                BufferRole::Output(n) => format!("output {n}"),
                BufferRole::Temp => "temp".into(),
                BufferRole::Status => "status".into(),
            };
            let _ = writeln!(s, "  b{i} {role} {}{:?} %{}", b.dtype, b.sizes, b.node);
        }
        s += "launches\n";
        for l in &self.launches {
            let args: Vec<String> = l
                .args
                .iter()
                .map(|a| match a {
                    Arg::Buffer(b) if l.writes.contains(b) => format!(">b{b}"),
                    Arg::Buffer(b) => format!("b{b}"),
                    Arg::I64(v) => v.to_string(),
                })
                .collect();
            let [x, y, z] = l.grid;
            let _ = writeln!(
                s,
                "  {} grid {x}x{y}x{z} ({}) %{} {}",
                self.kernels[l.kernel].name,
                args.join(" "),
                l.node,
                l.layer.as_deref().unwrap_or("-")
            );
        }
        if !self.checks.is_empty() {
            s += "checks\n";
        }
        for c in &self.checks {
            let _ = writeln!(
                s,
                "  b{} %{} {} ({}): {}",
                c.buffer,
                c.node,
                c.op,
                c.layer.as_deref().unwrap_or("-"),
                c.message
            );
        }
        s
    }
}
