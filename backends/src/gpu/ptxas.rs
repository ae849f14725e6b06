//! `ptxas`, NVIDIA's PTX assembler, as a checker of the generated PTX (no GPU
//! needed): it rejects what a driver's `cuModuleLoadData` would, and `-v` reports
//! each kernel's registers, spills and static shared memory.
//!
//! Found as `$ATTNC_PTXAS`, else `ptxas` on `PATH`, else in the PyPI wheel
//! `nvidia-cuda-nvcc-cu12` of the `python3` on `PATH` (`pip install
//! nvidia-cuda-nvcc-cu12` brings CUDA 12's `ptxas`, ~40 MB).

use super::program::Arch;
use crate::{BackendError, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// What `ptxas -v` says about one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelReport {
    pub name: String,
    pub registers: u32,
    /// Static shared memory (the kernels use dynamic shared memory, sized at launch:
    /// [`super::Kernel::shared_bytes`]).
    pub shared_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub stack_bytes: u32,
}

impl KernelReport {
    /// Bytes spilled (stores plus loads).
    pub fn spill_bytes(&self) -> u32 {
        self.spill_stores + self.spill_loads
    }
}

/// The assembler's verdict on a module it accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtxasReport {
    /// Per kernel, in the assembler's order (only with `verbose`).
    pub kernels: Vec<KernelReport>,
    /// Everything it printed.
    pub log: String,
}

/// The `ptxas` executable, if one is found.
pub fn find_ptxas() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND.get_or_init(locate).clone()
}

fn locate() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ATTNC_PTXAS") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("ptxas");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import nvidia.cuda_nvcc as m; print(list(m.__path__)[0])",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let p = Path::new(&dir).join("bin").join("ptxas");
    p.is_file().then_some(p)
}

/// Assemble `ptx` for `arch` with `ptxas` (`-v` when `verbose`): `None` when there
/// is no `ptxas`, an error when it rejects the PTX (its messages), else its report.
pub fn ptxas(ptx: &str, arch: Arch, verbose: bool) -> Option<Result<PtxasReport>> {
    let exe = find_ptxas()?;
    Some(run(&exe, ptx, arch, verbose))
}

fn run(exe: &Path, ptx: &str, arch: Arch, verbose: bool) -> Result<PtxasReport> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let fail = |message: String| BackendError::Llvm {
        message: format!("ptxas: {message}"),
    };
    let k = COUNTER.fetch_add(1, Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("attnc-ptxas-{}-{k}", std::process::id()));
    let input = base.with_extension("ptx");
    let output = base.with_extension("cubin");
    std::fs::write(&input, ptx)
        .map_err(|e| fail(format!("cannot write {}: {e}", input.display())))?;
    let mut cmd = Command::new(exe);
    cmd.arg(format!("-arch={}", arch.name()));
    if verbose {
        cmd.arg("-v");
    }
    cmd.arg(&input).arg("-o").arg(&output);
    let result = cmd.output();
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    let out = result.map_err(|e| fail(format!("cannot run {}: {e}", exe.display())))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(fail(log.trim().to_string()));
    }
    Ok(PtxasReport {
        kernels: parse(&log),
        log,
    })
}

/// The per-kernel numbers of `ptxas -v` output.
pub fn parse(log: &str) -> Vec<KernelReport> {
    let mut out: Vec<KernelReport> = Vec::new();
    for line in log.lines() {
        let line = line.trim();
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            out.push(KernelReport {
                name: rest.trim().to_string(),
                ..KernelReport::default()
            });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            k.stack_bytes = number_before(line, "bytes stack frame");
            k.spill_stores = number_before(line, "bytes spill stores");
            k.spill_loads = number_before(line, "bytes spill loads");
        } else if line.contains("Used ") && line.contains("registers") {
            k.registers = number_before(line, "registers");
            k.shared_bytes = number_before(line, "bytes smem");
        }
    }
    out
}

/// The integer just before `unit` in `line` (0 if there is none).
fn number_before(line: &str, unit: &str) -> u32 {
    let Some(at) = line.find(unit) else { return 0 };
    line[..at]
        .split(|c: char| !c.is_ascii_digit())
        .rfind(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_output_is_parsed_per_kernel() {
        let log = "ptxas info    : 16 bytes gmem\n\
ptxas info    : Compiling entry function 'gemm_0' for 'sm_90'\n\
ptxas info    : Function properties for gemm_0\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 128 registers, used 1 barriers, 4224 bytes smem, 384 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'copy_1' for 'sm_90'\n\
ptxas info    : Function properties for copy_1\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 10 registers, used 0 barriers, 384 bytes cmem[0]\n";
        let r = parse(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelReport {
                name: "gemm_0".into(),
                registers: 128,
                shared_bytes: 4224,
                spill_stores: 4,
                spill_loads: 12,
                stack_bytes: 8,
            }
        );
        assert_eq!(r[0].spill_bytes(), 16);
        assert_eq!(r[1].registers, 10);
        assert_eq!(r[1].shared_bytes, 0);
    }
}
