//! From the LLVM dialect to optimized LLVM IR with inkwell. mlir-sys and inkwell
//! (feature `llvm22-1-no-llvm-linking`) share the one statically linked LLVM, so the
//! module MLIR translates goes straight into an inkwell context.

use crate::engine::llvm_lock;
use crate::{BackendError, Result};
use inkwell::attributes::AttributeLoc;
use inkwell::context::Context;
use inkwell::module::Module as LlvmModule;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, InitializationConfig, RelocMode, Target, TargetMachine};
use inkwell::OptimizationLevel;
use melior::ir::Module;

fn llvm_error(message: impl Into<String>) -> BackendError {
    BackendError::Llvm {
        message: message.into(),
    }
}

/// `module` (in the LLVM dialect) as LLVM IR for this host, after `default<O3>`.
pub(crate) fn optimized_ir(module: &Module) -> Result<String> {
    let context = Context::create();
    let llvm = translate(&context, module)?;
    let tm = host_target_machine()?;
    optimize_for_host(&llvm, &tm)?;
    Ok(llvm.print_to_string().to_string())
}

fn translate<'ctx>(context: &'ctx Context, module: &Module) -> Result<LlvmModule<'ctx>> {
    // SAFETY: the operation is a live module in the LLVM dialect and `context` a live
    // LLVM context of the same LLVM; the returned module (or null) belongs to the
    // caller, and inkwell's Module takes that ownership.
    unsafe {
        let raw = mlir_sys::mlirTranslateModuleToLLVMIR(
            module.as_operation().to_raw(),
            context.raw().cast(),
        );
        if raw.is_null() {
            return Err(llvm_error(
                "translation of the LLVM dialect to LLVM IR failed",
            ));
        }
        Ok(LlvmModule::new(raw.cast()))
    }
}

/// The host CPU's features as LLVM names them (`+avx2,+avx512f,...`).
pub(crate) fn host_features() -> String {
    TargetMachine::get_host_cpu_features().to_string()
}

/// A target machine for the host CPU with all its features, at O3.
fn host_target_machine() -> Result<TargetMachine> {
    let _guard = llvm_lock();
    Target::initialize_native(&InitializationConfig::default()).map_err(llvm_error)?;
    let triple = TargetMachine::get_default_triple();
    let target = Target::from_triple(&triple).map_err(|e| llvm_error(e.to_string()))?;
    let cpu = TargetMachine::get_host_cpu_name().to_string();
    let features = TargetMachine::get_host_cpu_features().to_string();
    target
        .create_target_machine(
            &triple,
            &cpu,
            &features,
            OptimizationLevel::Aggressive,
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| llvm_error(format!("no target machine for {triple}")))
}

/// Set triple and data layout, tag every defined function with the host's
/// `target-cpu` / `target-features` (otherwise code is generated for a generic
/// x86-64), verify, and run `default<O3>`.
fn optimize_for_host(m: &LlvmModule, tm: &TargetMachine) -> Result<()> {
    m.set_triple(&tm.get_triple());
    m.set_data_layout(&tm.get_target_data().get_data_layout());
    let context = m.get_context();
    let cpu = tm.get_cpu().to_string();
    let features = tm.get_feature_string().to_string_lossy().into_owned();
    for f in m.get_functions().filter(|f| f.count_basic_blocks() > 0) {
        f.add_attribute(
            AttributeLoc::Function,
            context.create_string_attribute("target-cpu", &cpu),
        );
        f.add_attribute(
            AttributeLoc::Function,
            context.create_string_attribute("target-features", &features),
        );
    }
    m.verify().map_err(|e| llvm_error(e.to_string()))?;
    m.run_passes("default<O3>", tm, PassBuilderOptions::create())
        .map_err(|e| llvm_error(e.to_string()))
}
