//! From the `gpu.module` text to PTX: parse and verify, lower inside the
//! `gpu.module` to the LLVM and NVVM dialects, translate the `gpu.module` to LLVM IR,
//! optimize it (`default<O3>`) and emit PTX with LLVM's NVPTX backend through
//! inkwell — the same LLVM the CPU backend uses, so no CUDA toolkit is needed.
//!
//! [`PIPELINE`]: `convert-scf-to-cf` (structured loops to branches before the GPU
//! conversion, which otherwise leaves casts behind), `expand-strided-metadata` and
//! `lower-affine` (the shared-memory views), `convert-gpu-to-nvvm` with
//! `use-bare-ptr-memref-call-conv` (every memref parameter is one device pointer:
//! shapes are static and baked in; `index-bitwidth=32` when every buffer of the plan
//! has at most 2^30 elements), then `canonicalize`, `cse` and
//! `reconcile-unrealized-casts`.
//!
//! Dynamic shared memory comes out of `convert-gpu-to-nvvm` as an *internal*
//! zero-sized `addrspace(3)` global, which PTX prints as a one-byte `.shared` array
//! (and `ptxas` then warns of out-of-bounds accesses); it is replaced by an external
//! declaration, `.extern .shared .align 16 .b8 attnc_dynamic_smem[]`, the form CUDA
//! gives dynamic shared memory.

use super::program::Arch;
use crate::llvm::llvm_error;
use crate::mlir::Session;
use crate::{BackendError, Result};
use inkwell::context::Context;
use inkwell::module::{Linkage, Module as LlvmModule};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetTriple,
};
use inkwell::{AddressSpace, OptimizationLevel};
use melior::ir::operation::OperationLike;
use melior::ir::BlockLike;

/// The lowering inside the `gpu.module` (`index` as i64; `pipeline(true)` gives 32-bit
/// indices where every buffer is small enough).
pub const PIPELINE: &str = "builtin.module(gpu.module(convert-scf-to-cf, expand-strided-metadata, lower-affine, convert-gpu-to-nvvm{use-bare-ptr-memref-call-conv=true}, canonicalize, cse, reconcile-unrealized-casts))";

/// [`PIPELINE`], with `index` lowered to i32 when `index32`.
pub fn pipeline(index32: bool) -> String {
    if index32 {
        PIPELINE.replace(
            "use-bare-ptr-memref-call-conv=true}",
            "use-bare-ptr-memref-call-conv=true index-bitwidth=32}",
        )
    } else {
        PIPELINE.to_string()
    }
}

/// The name dynamic shared memory has in the PTX.
const DYNAMIC_SMEM: &str = "attnc_dynamic_smem";

/// Parse and verify the module text (what `--emit mlir --target gpu` prints).
pub(crate) fn verify(text: &str) -> Result<()> {
    let session = Session::new();
    session.parse(text).map(|_| ())
}

/// PTX for `arch` of the module text (`index` lowered to i32 when `index32`).
pub(crate) fn ptx(text: &str, arch: Arch, index32: bool) -> Result<String> {
    let session = Session::new();
    let mut module = session.parse(text)?;
    session.run_pipeline(&mut module, &pipeline(index32), "GPU lowering")?;
    let mut gpu = None;
    let mut op = module.body().first_operation();
    while let Some(o) = op {
        if o.name().as_string_ref().as_str() == Ok("gpu.module") {
            gpu = Some(o.to_raw());
        }
        op = o.next_in_block();
    }
    let gpu = gpu.ok_or_else(|| llvm_error("the lowered module has no gpu.module"))?;
    let context = Context::create();
    // SAFETY: `gpu` is a live operation of `module` in the LLVM and NVVM dialects and
    // `context` a live LLVM context of the same LLVM; the returned module (or null)
    // belongs to the caller, and inkwell's Module takes that ownership.
    let llvm = unsafe {
        let raw = mlir_sys::mlirTranslateModuleToLLVMIR(gpu, context.raw().cast());
        if raw.is_null() {
            return Err(llvm_error(
                "translation of the gpu.module to LLVM IR failed",
            ));
        }
        LlvmModule::new(raw.cast())
    };
    extern_dynamic_shared(&context, &llvm);
    emit(&llvm, arch)
}

/// Every `__dynamic_shmem__N` definition replaced by one external declaration.
fn extern_dynamic_shared<'ctx>(context: &'ctx Context, m: &LlvmModule<'ctx>) {
    let olds: Vec<_> = m
        .get_globals()
        .filter(|g| g.get_name().to_bytes().starts_with(b"__dynamic_shmem__"))
        .collect();
    if olds.is_empty() {
        return;
    }
    let ty = context.i8_type().array_type(0);
    let new = m.add_global(ty, Some(AddressSpace::from(3u16)), DYNAMIC_SMEM);
    new.set_linkage(Linkage::External);
    new.set_alignment(16);
    for g in olds {
        g.as_pointer_value()
            .replace_all_uses_with(new.as_pointer_value());
        // SAFETY: nothing refers to the old global any more.
        unsafe { g.delete() };
    }
}

fn emit(m: &LlvmModule, arch: Arch) -> Result<String> {
    let tm = {
        let _guard = crate::engine::llvm_lock();
        Target::initialize_nvptx(&InitializationConfig::default());
        let triple = TargetTriple::create("nvptx64-nvidia-cuda");
        let target = Target::from_triple(&triple).map_err(|e| llvm_error(e.to_string()))?;
        target
            .create_target_machine(
                &triple,
                arch.name(),
                arch.ptx_features(),
                OptimizationLevel::Aggressive,
                RelocMode::Default,
                CodeModel::Default,
            )
            .ok_or_else(|| llvm_error(format!("no NVPTX target machine for {}", arch.name())))?
    };
    m.set_triple(&tm.get_triple());
    m.set_data_layout(&tm.get_target_data().get_data_layout());
    m.verify().map_err(|e| llvm_error(e.to_string()))?;
    m.run_passes("default<O3>", &tm, PassBuilderOptions::create())
        .map_err(|e| llvm_error(e.to_string()))?;
    let buffer = tm
        .write_to_memory_buffer(m, FileType::Assembly)
        .map_err(|e| llvm_error(e.to_string()))?;
    let ptx = String::from_utf8_lossy(buffer.as_slice()).into_owned();
    if let Some(line) = ptx.lines().find(|l| l.contains(".extern .func")) {
        return Err(BackendError::Llvm {
            message: format!(
                "the PTX calls a function it does not define: {}",
                line.trim()
            ),
        });
    }
    Ok(ptx)
}
