//! The FFI edge: LLVM's MCJIT through inkwell, the one place that calls compiled code.
//!
//! The engine JIT-compiles the same optimized module `--emit obj` writes, and calls
//! its `attnc_forward_packed` entry point (one pointer per argument of `@forward`).
//! The OpenMP runtime its parallel loops call is loaded into the process once.

use crate::llvm::{host_module, llvm_error, PACKED_ENTRY, SET_THREADS};
use crate::lower::Signature;
use crate::{BackendError, Result};
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::OptimizationLevel;
use melior::ir::Module;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// LLVM's target registry is global and filled lazily on first use; creating engines
/// and target machines from several threads at once races on it.
pub(crate) fn llvm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Load [`crate::OPENMP_RUNTIME`] into the process (once), so the JIT resolves the
/// `__kmpc_*` calls of parallel loops.
fn load_openmp() -> Result<()> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let ok = *LOADED.get_or_init(|| {
        inkwell::support::load_library_permanently(std::path::Path::new(crate::OPENMP_RUNTIME))
            .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(BackendError::Jit {
            message: format!(
                "LLVM's OpenMP runtime `{}` could not be loaded (Debian: apt-get install libomp-22-dev)",
                crate::OPENMP_RUNTIME
            ),
        })
    }
}

type PackedEntry = unsafe extern "C" fn(*mut *mut c_void);
type SetThreads = unsafe extern "C" fn(i32);

/// A JIT-compiled model.
pub(crate) struct Engine {
    // The engine owns the module, which lives in `context`: it is dropped first (see
    // Drop), the boxed context after it.
    engine: ManuallyDrop<ExecutionEngine<'static>>,
    _context: Box<Context>,
    entry: PackedEntry,
    set_threads: SetThreads,
}

impl Engine {
    /// Translate `module` (in the LLVM dialect), optimize it for the host and compile
    /// it; resolve the entry points right away, so a missing runtime symbol is a
    /// compile error, not a run error.
    pub fn new(module: &Module, signature: &Signature) -> Result<Engine> {
        load_openmp()?;
        let context = Box::new(Context::create());
        // SAFETY: the context is boxed (it never moves) and outlives the engine and
        // module made from it: both are dropped in `Drop` before the box is.
        let ctx: &'static Context = unsafe { &*(context.as_ref() as *const Context) };
        let llvm = host_module(ctx, module, signature)?;
        let engine = {
            let _guard = llvm_lock();
            llvm.create_jit_execution_engine(OptimizationLevel::Aggressive)
                .map_err(|e| BackendError::Jit {
                    message: e.to_string(),
                })?
        };
        let address = |name: &str| {
            engine
                .get_function_address(name)
                .map_err(|e| BackendError::Jit {
                    message: format!("`{name}` could not be linked: {e}"),
                })
        };
        let (entry, threads) = (address(PACKED_ENTRY)?, address(SET_THREADS)?);
        if entry == 0 || threads == 0 {
            return Err(llvm_error("an entry point has a null address"));
        }
        // SAFETY: both addresses are of functions this module defines with exactly
        // these C signatures (`llvm::add_entry_points`).
        let (entry, set_threads) = unsafe {
            (
                std::mem::transmute::<usize, PackedEntry>(entry),
                std::mem::transmute::<usize, SetThreads>(threads),
            )
        };
        Ok(Engine {
            engine: ManuallyDrop::new(engine),
            _context: context,
            entry,
            set_threads,
        })
    }

    /// Use `n` OpenMP threads in the calls that follow from this thread.
    pub fn set_threads(&self, n: usize) {
        // SAFETY: `attnc_set_num_threads` takes any int (libomp ignores n < 1).
        unsafe { (self.set_threads)(n.min(i32::MAX as usize) as i32) }
    }

    /// Call the model.
    ///
    /// # Safety
    ///
    /// `args` must hold exactly one pointer per argument of `@forward`, in order
    /// (inputs and params, outputs, status flags), each to a live, dense, row-major
    /// buffer of that argument's element type and size, not aliased by another
    /// argument and not otherwise accessed until the call returns.
    pub unsafe fn invoke(&self, args: &mut [*mut c_void]) {
        // SAFETY: upheld by the caller, see above.
        unsafe { (self.entry)(args.as_mut_ptr()) }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: dropped exactly once, here, before `_context`.
        unsafe { ManuallyDrop::drop(&mut self.engine) }
    }
}
