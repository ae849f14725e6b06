//! From the LLVM dialect to optimized LLVM IR with inkwell. mlir-sys and inkwell
//! (feature `llvm22-1-no-llvm-linking`) share the one statically linked LLVM, so the
//! module MLIR translates goes straight into an inkwell context.
//!
//! One path for every output: translate, add the plain C entry points, tag every
//! function with the host CPU, verify, `default<O3>`; then print it (`--emit llvm`),
//! write an object (`--emit obj`) or JIT it. What the tests run is what users link.
//!
//! Entry points (C ABI):
//! - `void attnc_forward(void *arg0, ..., void *argN)`: one bare pointer per argument
//!   of `@forward` (inputs and params, outputs, status flags), each to a dense
//!   row-major buffer; it builds the memref descriptors (sizes and strides are
//!   constants of the model) and calls MLIR's `_mlir_ciface_forward`.
//! - `void attnc_forward_packed(void **args)`: the same with the pointers in an array
//!   (what the JIT calls from Rust).
//! - `void attnc_set_num_threads(int n)`: the OpenMP thread count of later calls.

use crate::engine::llvm_lock;
use crate::lower::Signature;
use crate::{BackendError, Result};
use inkwell::attributes::AttributeLoc;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module as LlvmModule};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine,
};
use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicMetadataValueEnum, BasicValue};
use inkwell::{AddressSpace, OptimizationLevel};
use melior::ir::Module;

pub(crate) fn llvm_error(message: impl Into<String>) -> BackendError {
    BackendError::Llvm {
        message: message.into(),
    }
}

/// The C entry point taking one bare pointer per argument.
pub(crate) const C_ENTRY: &str = "attnc_forward";
/// The entry point taking an array of pointers.
pub(crate) const PACKED_ENTRY: &str = "attnc_forward_packed";
/// Sets the OpenMP thread count.
pub(crate) const SET_THREADS: &str = "attnc_set_num_threads";

/// `module` (in the LLVM dialect) as optimized LLVM IR for this host, with the
/// entry points of `signature`.
pub(crate) fn optimized_ir(module: &Module, signature: &Signature) -> Result<String> {
    let context = Context::create();
    let llvm = host_module(&context, module, signature)?;
    Ok(llvm.print_to_string().to_string())
}

/// `module` compiled to a relocatable object file for this host.
pub(crate) fn object(module: &Module, signature: &Signature) -> Result<Vec<u8>> {
    let context = Context::create();
    let llvm = host_module(&context, module, signature)?;
    let tm = host_target_machine()?;
    let buffer = tm
        .write_to_memory_buffer(&llvm, FileType::Object)
        .map_err(|e| llvm_error(e.to_string()))?;
    Ok(buffer.as_slice().to_vec())
}

/// Translate, add the entry points, optimize for the host: the module every output
/// is made from.
pub(crate) fn host_module<'ctx>(
    context: &'ctx Context,
    module: &Module,
    signature: &Signature,
) -> Result<LlvmModule<'ctx>> {
    let llvm = translate(context, module)?;
    add_entry_points(&llvm, &signature.argument_sizes())?;
    let tm = host_target_machine()?;
    optimize_for_host(&llvm, &tm)?;
    Ok(llvm)
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
pub(crate) fn host_target_machine() -> Result<TargetMachine> {
    let _guard = llvm_lock();
    Target::initialize_native(&InitializationConfig::default()).map_err(llvm_error)?;
    let triple = TargetMachine::get_default_triple();
    let target = Target::from_triple(&triple).map_err(|e| llvm_error(e.to_string()))?;
    let cpu = TargetMachine::get_host_cpu_name().to_string();
    let features = host_features();
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

/// `attnc_forward`, `attnc_forward_packed` and `attnc_set_num_threads` (see the
/// module docs), over `_mlir_ciface_forward`, whose arguments have `sizes`.
fn add_entry_points(m: &LlvmModule, sizes: &[Vec<usize>]) -> Result<()> {
    let ctx = m.get_context();
    let ptr = ctx.ptr_type(AddressSpace::default());
    let i64t = ctx.i64_type();
    let i32t = ctx.i32_type();
    let void = ctx.void_type();
    let ciface = m
        .get_function(&format!("_mlir_ciface_{}", crate::lower::ENTRY))
        .ok_or_else(|| llvm_error("the module has no `_mlir_ciface_forward`"))?;
    let err = |e: inkwell::builder::BuilderError| llvm_error(e.to_string());
    let b = ctx.create_builder();

    let params: Vec<_> = sizes.iter().map(|_| ptr.into()).collect();
    let f = m.add_function(
        C_ENTRY,
        void.fn_type(&params, false),
        Some(Linkage::External),
    );
    b.position_at_end(ctx.append_basic_block(f, "entry"));
    let mut descriptors: Vec<BasicMetadataValueEnum> = Vec::new();
    for (i, dims) in sizes.iter().enumerate() {
        let rank = dims.len() as u32;
        let mut fields: Vec<BasicTypeEnum> = vec![ptr.into(), ptr.into(), i64t.into()];
        if rank > 0 {
            fields.push(i64t.array_type(rank).into());
            fields.push(i64t.array_type(rank).into());
        }
        let st = ctx.struct_type(&fields, false);
        let d = b.build_alloca(st, "desc").map_err(err)?;
        let data = f
            .get_nth_param(i as u32)
            .ok_or_else(|| llvm_error("entry parameter missing"))?;
        for field in 0..2 {
            let at = b.build_struct_gep(st, d, field, "").map_err(err)?;
            b.build_store(at, data).map_err(err)?;
        }
        let at = b.build_struct_gep(st, d, 2, "").map_err(err)?;
        b.build_store(at, i64t.const_zero()).map_err(err)?;
        if rank > 0 {
            let strides = attnc_ir::strides(dims);
            for (field, values) in [(3, dims), (4, &strides)] {
                let consts: Vec<_> = values
                    .iter()
                    .map(|&n| i64t.const_int(n as u64, false))
                    .collect();
                let at = b.build_struct_gep(st, d, field, "").map_err(err)?;
                b.build_store(at, i64t.const_array(&consts)).map_err(err)?;
            }
        }
        descriptors.push(d.as_basic_value_enum().into());
    }
    b.build_call(ciface, &descriptors, "").map_err(err)?;
    b.build_return(None).map_err(err)?;

    let packed = m.add_function(
        PACKED_ENTRY,
        void.fn_type(&[ptr.into()], false),
        Some(Linkage::External),
    );
    b.position_at_end(ctx.append_basic_block(packed, "entry"));
    let argv = packed
        .get_nth_param(0)
        .ok_or_else(|| llvm_error("entry parameter missing"))?
        .into_pointer_value();
    let mut args: Vec<BasicMetadataValueEnum> = Vec::new();
    for i in 0..sizes.len() {
        let index = i64t.const_int(i as u64, false);
        // SAFETY (of the generated code): `argv` has one pointer per argument.
        let at = unsafe { b.build_in_bounds_gep(ptr, argv, &[index], "") }.map_err(err)?;
        args.push(b.build_load(ptr, at, "").map_err(err)?.into());
    }
    b.build_call(f, &args, "").map_err(err)?;
    b.build_return(None).map_err(err)?;

    let omp = m.add_function(
        "omp_set_num_threads",
        void.fn_type(&[i32t.into()], false),
        Some(Linkage::External),
    );
    let set = m.add_function(
        SET_THREADS,
        void.fn_type(&[i32t.into()], false),
        Some(Linkage::External),
    );
    b.position_at_end(ctx.append_basic_block(set, "entry"));
    let n = set
        .get_nth_param(0)
        .ok_or_else(|| llvm_error("entry parameter missing"))?;
    b.build_call(omp, &[n.into()], "").map_err(err)?;
    b.build_return(None).map_err(err)?;
    Ok(())
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
