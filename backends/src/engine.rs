//! The FFI edge: MLIR's ExecutionEngine through the C API, the one place that calls
//! compiled code. (melior's wrapper does not report a failed creation, so this owns
//! the raw engine itself.)

use crate::{BackendError, Result};
use melior::ir::Module;
use mlir_sys::{
    mlirExecutionEngineCreate, mlirExecutionEngineDestroy, mlirExecutionEngineInvokePacked,
    mlirExecutionEngineLookupPacked, MlirExecutionEngine, MlirStringRef,
};
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard};

/// LLVM's target registry is global and filled lazily on first use; creating engines
/// and target machines from several threads at once races on it.
pub(crate) fn llvm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn string_ref(s: &str) -> MlirStringRef {
    MlirStringRef {
        data: s.as_ptr().cast(),
        length: s.len(),
    }
}

/// A JIT-compiled module with one entry point `name`, called through the packed
/// wrapper the engine generates for its C interface (`_mlir__mlir_ciface_<name>`:
/// one `void*` per argument, each pointing at that argument).
pub(crate) struct Engine {
    raw: MlirExecutionEngine,
    name: String,
}

impl Engine {
    /// Compile `module` (already in the LLVM dialect) at LLVM `opt_level`, and resolve
    /// `name` right away so a missing symbol is a compile error, not a run error.
    pub fn new(module: &Module, opt_level: i32, name: &str) -> Result<Engine> {
        let _guard = llvm_lock();
        // The engine hands the path to `dlopen` as a C string: it must end in NUL.
        let path = format!("{}\0", crate::OPENMP_RUNTIME);
        let libs = [string_ref(&path[..path.len() - 1])];
        // SAFETY: the module is a valid, verified module in the LLVM dialect; the engine
        // copies what it needs (the module may be dropped afterwards). The one shared
        // library is passed as a string reference with its length.
        let raw = unsafe {
            mlirExecutionEngineCreate(
                module.to_raw(),
                opt_level,
                libs.len() as i32,
                libs.as_ptr(),
                false,
                false,
            )
        };
        if raw.ptr.is_null() {
            return Err(BackendError::Jit {
                message: "MLIR's execution engine could not translate or compile the module".into(),
            });
        }
        let engine = Engine {
            raw,
            name: name.to_string(),
        };
        // Unlike invoke, lookup does not add the C-interface prefix itself.
        let ciface = format!("_mlir_ciface_{name}");
        // SAFETY: `raw` is a live engine; the name is passed with its length.
        let entry = unsafe { mlirExecutionEngineLookupPacked(raw, string_ref(&ciface)) };
        if entry.is_null() {
            return Err(BackendError::Jit {
                message: format!("`{name}` could not be linked (a runtime symbol is missing)"),
            });
        }
        Ok(engine)
    }

    /// Call the entry point with one pointer per argument of its C interface (the C
    /// API adds the `_mlir_ciface_` prefix to the name).
    ///
    /// # Safety
    ///
    /// `args` must hold exactly one entry per argument of `_mlir_ciface_<name>`, each
    /// a pointer to a `*mut` ranked memref descriptor (allocated pointer, aligned
    /// pointer, offset, sizes, strides — all 8-byte words) of that argument's rank, and
    /// every descriptor must describe a live buffer of that argument's element type,
    /// large enough for its sizes and strides, not aliased by any other argument, and
    /// not otherwise accessed until the call returns.
    pub unsafe fn invoke(&self, args: &mut [*mut c_void]) -> Result<()> {
        // SAFETY: upheld by the caller, see above.
        let result = unsafe {
            mlirExecutionEngineInvokePacked(self.raw, string_ref(&self.name), args.as_mut_ptr())
        };
        if result.value == 0 {
            return Err(BackendError::Jit {
                message: format!("calling `{}` failed", self.name),
            });
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: `raw` is a live engine owned by this value, destroyed exactly once.
        unsafe { mlirExecutionEngineDestroy(self.raw) }
    }
}
