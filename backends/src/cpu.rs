//! The CPU backend: lower, verify, run the pass pipeline down to the LLVM dialect,
//! then JIT (MLIR's ExecutionEngine) or print LLVM IR (inkwell).

use crate::engine::Engine;
use crate::host::{check_binding, HostBuffer};
use crate::lower::{lower, Signature};
use crate::mlir::Session;
use crate::{BackendError, Result};
use attnc_ir::{Graph, Tensor};
use melior::ir::Module;
use std::collections::HashMap;
use std::ffi::c_void;

/// The pass pipeline from the tensor-level module to the LLVM dialect. Matmuls and
/// attention are hand-scheduled kernels (`crate::kernels`); the other ops are
/// `linalg.generic`s whose parallel dimensions become `scf.parallel` loops, which
/// LLVM vectorizes inside.
///
/// - bufferize (every function's arguments are memrefs already: no tensor crosses a
///   call), then the ownership-based deallocation pipeline, so temporaries are freed
///   and repeated runs do not leak: a layer function frees its temporaries before it
///   returns, `@forward` the buffers passed between layers when it returns;
/// - linalg to parallel loops; vector transfers to masked loads and stores;
///   `scf.parallel` to OpenMP (`omp.parallel` + `omp.wsloop`, outlined by the
///   translation into `..omp_par` functions that `__kmpc_fork_call` runs); memref
///   lowering before `scf` to `cf` (OpenMP wraps loop bodies in `alloca_scope`, which
///   must keep one block); strided metadata and affine to arith;
/// - `arith-expand{include-bf16}` turns bf16 conversions into integer ops (no
///   runtime library needed);
/// - math to LLVM intrinsics, the rest (`erf`) to libm calls resolved in-process;
/// - everything else to the LLVM dialect.
pub const CPU_PIPELINE: &str = "builtin.module(\
one-shot-bufferize, \
buffer-deallocation-pipeline, \
func.func(convert-linalg-to-parallel-loops), \
convert-vector-to-scf, \
convert-scf-to-openmp, \
expand-strided-metadata, \
lower-affine, \
func.func(arith-expand{include-bf16=true}), \
finalize-memref-to-llvm, \
convert-scf-to-cf, \
convert-vector-to-llvm{enable-x86vector=true}, \
convert-openmp-to-llvm, \
convert-math-to-llvm, \
convert-math-to-libm, \
convert-arith-to-llvm, \
convert-index-to-llvm, \
convert-func-to-llvm, \
convert-cf-to-llvm, \
convert-ub-to-llvm, \
reconcile-unrealized-casts)";

/// The tensor-level MLIR module of `graph`, as MLIR prints it after verification.
pub fn emit_mlir(graph: &Graph) -> Result<String> {
    let lowered = lower(graph)?;
    let session = Session::new();
    let module = session.parse(&lowered.text)?;
    Ok(module.as_operation().to_string())
}

/// The LLVM IR of `graph` for this host: the module after [`CPU_PIPELINE`],
/// translated to LLVM IR with its C entry points, tagged with the host CPU and
/// optimized with `default<O3>`.
pub fn emit_llvm_ir(graph: &Graph) -> Result<String> {
    let lowered = lower(graph)?;
    let session = Session::new();
    let mut module = session.parse(&lowered.text)?;
    to_llvm_dialect(&session, &mut module)?;
    crate::llvm::optimized_ir(&module, &lowered.signature)
}

/// `graph` compiled ahead of time for this host: a relocatable object file and the
/// C header that declares its entry points and the layout of every argument (see
/// [`crate::aot`]). Link it with `-lomp -lm` (LLVM's OpenMP runtime).
pub fn emit_object(graph: &Graph) -> Result<(Vec<u8>, String)> {
    let lowered = lower(graph)?;
    let session = Session::new();
    let mut module = session.parse(&lowered.text)?;
    to_llvm_dialect(&session, &mut module)?;
    let object = crate::llvm::object(&module, &lowered.signature)?;
    Ok((object, crate::aot::header(graph, &lowered.signature)))
}

/// Run [`CPU_PIPELINE`] and check that nothing needs MLIR's runtime library.
fn to_llvm_dialect(session: &Session, module: &mut Module) -> Result<()> {
    session.run_pipeline(module, CPU_PIPELINE, "lowering to the LLVM dialect")?;
    // A strided memref.copy lowers to a call of `memrefCopy` from libmlir_c_runner_utils,
    // which is not linked in: the lowering must never produce one.
    let text = module.as_operation().to_string();
    if text.contains("@memrefCopy") {
        return Err(BackendError::Mlir {
            stage: "lowering to the LLVM dialect",
            message: "internal: a strided copy needs `memrefCopy` from MLIR's runtime library"
                .into(),
        });
    }
    Ok(())
}

/// Host buffers for one call of a [`CompiledModel`]: inputs and params converted to
/// their element types, outputs, status flags.
pub struct Prepared {
    buffers: Vec<HostBuffer>,
}

/// `OMP_NUM_THREADS` when it is set to a positive number, else every core.
fn default_threads() -> usize {
    std::env::var("OMP_NUM_THREADS")
        .ok()
        .and_then(|v| v.split(',').next()?.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A graph compiled for this CPU: call [`CompiledModel::run`] any number of times.
pub struct CompiledModel {
    engine: Engine,
    signature: Signature,
    threads: usize,
}

impl CompiledModel {
    /// Lower, verify, lower to LLVM and JIT-compile `graph`. It runs on all cores, or
    /// `OMP_NUM_THREADS` threads if that is set (see [`CompiledModel::set_threads`]).
    pub fn new(graph: &Graph) -> Result<CompiledModel> {
        let lowered = lower(graph)?;
        let session = Session::new();
        let mut module = session.parse(&lowered.text)?;
        to_llvm_dialect(&session, &mut module)?;
        let engine = Engine::new(&module, &lowered.signature)?;
        Ok(CompiledModel {
            engine,
            signature: lowered.signature,
            threads: default_threads(),
        })
    }

    /// Run the parallel loops on `n` threads (at least 1).
    pub fn set_threads(&mut self, n: usize) {
        self.threads = n.max(1);
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Names of the outputs, in the order [`CompiledModel::run`] returns them.
    pub fn output_names(&self) -> Vec<&str> {
        self.signature
            .outputs
            .iter()
            .map(|b| b.name.as_str())
            .collect()
    }

    /// Run on `bindings` (one tensor per input and param, by name; others are ignored)
    /// and return one tensor per graph output, in order. Every binding is checked
    /// against the graph before compiled code runs.
    pub fn run(&self, bindings: &HashMap<String, Tensor>) -> Result<Vec<Tensor>> {
        let mut prepared = self.prepare(bindings)?;
        self.run_prepared(&mut prepared)?;
        Ok(self.outputs(&prepared))
    }

    /// Check `bindings` and convert them to the buffers compiled code reads, with
    /// fresh output buffers: what [`CompiledModel::run_prepared`] runs on, any number
    /// of times (benchmarks time only the compiled code this way).
    pub fn prepare(&self, bindings: &HashMap<String, Tensor>) -> Result<Prepared> {
        let sig = &self.signature;
        let mut buffers = Vec::new();
        for b in &sig.inputs {
            let t = bindings
                .get(&b.name)
                .ok_or_else(|| BackendError::MissingBinding {
                    kind: b.kind,
                    name: b.name.clone(),
                })?;
            check_binding(b, t)?;
            buffers.push(HostBuffer::from_tensor(t));
        }
        for b in &sig.outputs {
            buffers.push(HostBuffer::zeroed(b.dtype, b.sizes.iter().product()));
        }
        for _ in &sig.checks {
            buffers.push(HostBuffer::Bytes(vec![0]));
        }
        Ok(Prepared { buffers })
    }

    /// Replace input (or param) `name` of `prepared` with `t` (checked like a
    /// binding): how a loop that feeds the model its own outputs (a diffusion
    /// sampler) changes the tokens without converting the weights again.
    pub fn set_input(&self, prepared: &mut Prepared, name: &str, t: &Tensor) -> Result<()> {
        let (i, b) = (self.signature.inputs.iter().enumerate())
            .find(|(_, b)| b.name == name)
            .ok_or_else(|| BackendError::MissingBinding {
                kind: "input",
                name: name.to_string(),
            })?;
        check_binding(b, t)?;
        prepared.buffers[i] = HostBuffer::from_tensor(t);
        Ok(())
    }

    /// Like [`CompiledModel::prepare`] on `attnc_ir::random_bindings(graph, seed)`, but
    /// converting one tensor at a time (the f64 tensors of a large model's weights
    /// never exist all at once).
    pub fn prepare_random(&self, graph: &Graph, seed: u64) -> Result<Prepared> {
        let ids: HashMap<String, attnc_ir::NodeId> = graph
            .inputs()
            .into_iter()
            .chain(graph.params())
            .map(|(n, id)| (n.to_string(), id))
            .collect();
        self.prepare_from(|name| {
            let id = *ids.get(name)?;
            attnc_ir::random_binding(graph, id, seed).map(|(_, t)| t)
        })
    }

    /// Like [`CompiledModel::prepare`], asking `bind` for each input and param by
    /// name, one at a time, and converting each before asking for the next: weights
    /// read from a file never exist all at once as f64 tensors. `None` is a missing
    /// binding.
    pub fn prepare_from(&self, mut bind: impl FnMut(&str) -> Option<Tensor>) -> Result<Prepared> {
        let sig = &self.signature;
        let mut buffers = Vec::new();
        for b in &sig.inputs {
            let t = bind(&b.name).ok_or_else(|| BackendError::MissingBinding {
                kind: b.kind,
                name: b.name.clone(),
            })?;
            check_binding(b, &t)?;
            buffers.push(HostBuffer::from_tensor(&t));
        }
        for b in &sig.outputs {
            buffers.push(HostBuffer::zeroed(b.dtype, b.sizes.iter().product()));
        }
        for _ in &sig.checks {
            buffers.push(HostBuffer::Bytes(vec![0]));
        }
        Ok(Prepared { buffers })
    }

    /// Run the compiled code on buffers made by [`CompiledModel::prepare`]; the
    /// outputs are overwritten, a failed run-time check is an error.
    pub fn run_prepared(&self, prepared: &mut Prepared) -> Result<()> {
        let sig = &self.signature;
        let sizes: Vec<&[usize]> = sig
            .inputs
            .iter()
            .chain(&sig.outputs)
            .map(|b| b.sizes.as_slice())
            .chain(sig.checks.iter().map(|_| &[][..]))
            .collect();
        let buffers = &mut prepared.buffers;
        if buffers.len() != sizes.len() {
            return Err(BackendError::InvalidGraph {
                message: "internal: buffers prepared for another model".into(),
            });
        }
        let first_flag = sig.inputs.len() + sig.outputs.len();
        for flag in &mut buffers[first_flag..] {
            *flag = HostBuffer::Bytes(vec![0]);
        }
        self.call(buffers, &sizes)?;
        for (check, flag) in sig.checks.iter().zip(&buffers[first_flag..]) {
            if flag.first_byte() != 0 {
                return Err(BackendError::Runtime {
                    op: check.op.clone(),
                    layer: check.layer.clone(),
                    node: check.node,
                    message: check.message.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The outputs of the last run on `prepared`, in order, as tensors.
    pub fn outputs(&self, prepared: &Prepared) -> Vec<Tensor> {
        let sig = &self.signature;
        let first = sig.inputs.len();
        sig.outputs
            .iter()
            .zip(&prepared.buffers[first..])
            .map(|(b, buf)| buf.to_tensor(b.dtype, b.sizes.clone()))
            .collect()
    }

    /// Call the model with one pointer per buffer.
    fn call(&self, buffers: &mut [HostBuffer], sizes: &[&[usize]]) -> Result<()> {
        for (buf, s) in buffers.iter().zip(sizes) {
            if buf.len() != s.iter().product::<usize>() {
                return Err(BackendError::InvalidGraph {
                    message: "internal: a buffer does not match its argument".into(),
                });
            }
        }
        let mut args: Vec<*mut c_void> =
            buffers.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        self.engine.set_threads(self.threads);
        // SAFETY: `args` has one entry per argument of `@forward` (the signature the
        // module was lowered with: inputs and params, outputs, flags), each pointing at
        // a dense buffer of that argument's element type and size: binding dtypes and
        // shapes were checked, outputs and flags allocated from the signature, and the
        // lengths checked above. The buffers are distinct allocations that outlive the
        // call and are not touched during it.
        unsafe { self.engine.invoke(&mut args) };
        Ok(())
    }
}
