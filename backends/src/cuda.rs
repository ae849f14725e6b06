//! The GPU runner: a [`GpuProgram`]'s PTX loaded and its launch plan executed through
//! the CUDA driver API. `libcuda.so.1` is opened at run time (`libloading`), so attnc
//! builds and tests on machines without CUDA; there, [`GpuModel::new`] fails with an
//! error that says so. Only the dozen driver calls the plan needs are bound.

use crate::gpu::{Arg, BufferRole, GpuProgram};
use crate::{BackendError, Result};
use attnc_ir::Tensor;
use libloading::{Library, Symbol};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;
type CuModule = *mut c_void;
type CuFunction = *mut c_void;
type CuEvent = *mut c_void;
type CuDevicePtr = u64;

const CUDA_SUCCESS: CuResult = 0;

fn no_gpu(message: impl Into<String>) -> BackendError {
    BackendError::Gpu {
        message: message.into(),
    }
}

/// The driver library and a context on device 0.
struct Driver {
    lib: Library,
    device: CuDevice,
    context: CuContext,
    device_name: String,
}

impl Driver {
    fn open() -> Result<Driver> {
        // SAFETY: loading the NVIDIA driver library runs its initializers, which have
        // no preconditions.
        let lib = unsafe { Library::new("libcuda.so.1").or_else(|_| Library::new("libcuda.so")) }
            .map_err(|e| {
            no_gpu(format!(
                "no CUDA driver on this machine (libcuda.so.1 could not be loaded: {e}); \
                     `--target gpu` runs need an NVIDIA GPU and its driver"
            ))
        })?;
        let mut d = Driver {
            lib,
            device: 0,
            context: std::ptr::null_mut(),
            device_name: String::new(),
        };
        d.call(
            "cuInit",
            |f: Symbol<unsafe extern "C" fn(c_uint) -> CuResult>| unsafe { f(0) },
        )?;
        let mut count: c_int = 0;
        d.call(
            "cuDeviceGetCount",
            |f: Symbol<unsafe extern "C" fn(*mut c_int) -> CuResult>| unsafe { f(&mut count) },
        )?;
        if count == 0 {
            return Err(no_gpu("the CUDA driver found no GPU on this machine"));
        }
        let mut device: CuDevice = 0;
        d.call(
            "cuDeviceGet",
            |f: Symbol<unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult>| unsafe {
                f(&mut device, 0)
            },
        )?;
        let mut name = [0 as c_char; 256];
        d.call(
            "cuDeviceGetName",
            |f: Symbol<unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult>| unsafe {
                f(name.as_mut_ptr(), name.len() as c_int, device)
            },
        )?;
        // SAFETY: the driver wrote a NUL-terminated name into the buffer.
        d.device_name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut context: CuContext = std::ptr::null_mut();
        d.call(
            "cuDevicePrimaryCtxRetain",
            |f: Symbol<unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult>| unsafe {
                f(&mut context, device)
            },
        )?;
        d.context = context;
        d.device = device;
        d.call(
            "cuCtxSetCurrent",
            |f: Symbol<unsafe extern "C" fn(CuContext) -> CuResult>| unsafe { f(context) },
        )?;
        Ok(d)
    }

    /// Look `name` up and call it through `f`; a non-zero result becomes an error
    /// with the driver's own description.
    fn call<F: Copy>(&self, name: &str, f: impl FnOnce(Symbol<F>) -> CuResult) -> Result<()> {
        let c = CString::new(name).expect("a driver symbol name");
        // SAFETY: every call site names the symbol's documented C signature.
        let sym: Symbol<F> = unsafe { self.lib.get(c.as_bytes_with_nul()) }
            .map_err(|e| no_gpu(format!("the CUDA driver has no `{name}`: {e}")))?;
        let code = f(sym);
        if code == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(no_gpu(format!("{name} failed: {}", self.describe(code))))
        }
    }

    fn describe(&self, code: CuResult) -> String {
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString takes an error code and a pointer to fill.
        let found = unsafe {
            self.lib
                .get::<unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult>(
                    b"cuGetErrorString\0",
                )
                .ok()
                .map(|f| f(code, &mut text))
        };
        if found == Some(CUDA_SUCCESS) && !text.is_null() {
            // SAFETY: the driver returns a static NUL-terminated string.
            let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
            format!("{s} (CUDA error {code})")
        } else {
            format!("CUDA error {code}")
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.context.is_null() {
            return;
        }
        let device = self.device;
        let _ = self.call(
            "cuDevicePrimaryCtxRelease_v2",
            |f: Symbol<unsafe extern "C" fn(CuDevice) -> CuResult>| unsafe { f(device) },
        );
    }
}

/// A program loaded on the GPU, its weights resident, ready to run.
pub struct GpuModel {
    driver: Driver,
    program: GpuProgram,
    module: CuModule,
    functions: Vec<CuFunction>,
    /// One allocation per buffer of the plan.
    buffers: Vec<CuDevicePtr>,
    /// The graph's output names, in order.
    outputs: Vec<String>,
}

impl GpuModel {
    /// Load `program` on device 0. `outputs` are the graph's output names in order.
    pub fn new(program: GpuProgram, outputs: Vec<String>) -> Result<GpuModel> {
        let driver = Driver::open()?;
        let ptx =
            CString::new(program.ptx.clone()).map_err(|_| no_gpu("the PTX holds a NUL byte"))?;
        let mut module: CuModule = std::ptr::null_mut();
        driver.call(
            "cuModuleLoadData",
            |f: Symbol<unsafe extern "C" fn(*mut CuModule, *const c_void) -> CuResult>| unsafe {
                f(&mut module, ptx.as_ptr() as *const c_void)
            },
        )?;
        let mut functions = Vec::new();
        for k in &program.kernels {
            let name =
                CString::new(k.name.clone()).map_err(|_| no_gpu("a kernel name holds NUL"))?;
            let mut func: CuFunction = std::ptr::null_mut();
            driver.call(
                "cuModuleGetFunction",
                |f: Symbol<
                    unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> CuResult,
                >| unsafe { f(&mut func, module, name.as_ptr()) },
            )?;
            if k.shared_bytes > 48 * 1024 {
                // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
                driver.call(
                    "cuFuncSetAttribute",
                    |f: Symbol<unsafe extern "C" fn(CuFunction, c_int, c_int) -> CuResult>| unsafe {
                        f(func, 8, k.shared_bytes as c_int)
                    },
                )?;
            }
            functions.push(func);
        }
        let mut buffers = Vec::new();
        for b in &program.buffers {
            let mut ptr: CuDevicePtr = 0;
            let bytes = b.bytes().max(1) as usize;
            driver.call(
                "cuMemAlloc_v2",
                |f: Symbol<unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult>| unsafe {
                    f(&mut ptr, bytes)
                },
            )?;
            buffers.push(ptr);
        }
        Ok(GpuModel {
            driver,
            program,
            module,
            functions,
            buffers,
            outputs,
        })
    }

    /// The GPU's name (`NVIDIA H200`).
    pub fn device(&self) -> &str {
        &self.driver.device_name
    }

    fn upload(&self, index: usize, t: &Tensor) -> Result<()> {
        let b = &self.program.buffers[index];
        if t.dtype != b.dtype || t.shape != b.sizes {
            let (kind, name) = match &b.role {
                BufferRole::Input(n) => ("input", n.as_str()),
                BufferRole::Param(n) => ("param", n.as_str()),
                _ => ("buffer", ""),
            };
            return Err(BackendError::BindingMismatch {
                kind,
                name: name.to_string(),
                expected: format!("{:?} {}", b.sizes, b.dtype),
                got: format!("{:?} {}", t.shape, t.dtype),
            });
        }
        let bytes = crate::tensor_to_bytes(t);
        let dst = self.buffers[index];
        self.driver.call(
            "cuMemcpyHtoD_v2",
            |f: Symbol<unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult>| unsafe {
                f(dst, bytes.as_ptr() as *const c_void, bytes.len())
            },
        )
    }

    /// Run the plan on `bindings` (every input and param by name): outputs in the
    /// graph's order, and the GPU time of the launches in milliseconds.
    pub fn run(&self, bindings: &HashMap<String, Tensor>) -> Result<(Vec<Tensor>, f64)> {
        self.bind(bindings)?;
        let ms = self.execute()?;
        Ok((self.outputs()?, ms))
    }

    /// Copy every input and param of `bindings` (by name) to the device; they stay
    /// bound for later [`execute`](GpuModel::execute) calls.
    pub fn bind(&self, bindings: &HashMap<String, Tensor>) -> Result<()> {
        for (i, b) in self.program.buffers.iter().enumerate() {
            let (kind, name) = match &b.role {
                BufferRole::Input(n) => ("input", n),
                BufferRole::Param(n) => ("param", n),
                _ => continue,
            };
            let t = bindings
                .get(name)
                .ok_or_else(|| BackendError::MissingBinding {
                    kind,
                    name: name.clone(),
                })?;
            self.upload(i, t)?;
        }
        Ok(())
    }

    /// Run the launch plan once on the bound inputs: the GPU time of the launches in
    /// milliseconds, or the error of the first run-time check that failed.
    pub fn execute(&self) -> Result<f64> {
        // Status flags start at 0 each run.
        for c in &self.program.checks {
            let zero = [0u8; 4];
            let dst = self.buffers[c.buffer];
            self.driver.call(
                "cuMemcpyHtoD_v2",
                |f: Symbol<unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult>| unsafe {
                    f(dst, zero.as_ptr() as *const c_void, zero.len())
                },
            )?;
        }
        let event = |d: &Driver| -> Result<CuEvent> {
            let mut e: CuEvent = std::ptr::null_mut();
            d.call(
                "cuEventCreate",
                |f: Symbol<unsafe extern "C" fn(*mut CuEvent, c_uint) -> CuResult>| unsafe {
                    f(&mut e, 0)
                },
            )?;
            Ok(e)
        };
        let record = |d: &Driver, e: CuEvent| {
            d.call(
                "cuEventRecord",
                |f: Symbol<unsafe extern "C" fn(CuEvent, *mut c_void) -> CuResult>| unsafe {
                    f(e, std::ptr::null_mut())
                },
            )
        };
        let (start, stop) = (event(&self.driver)?, event(&self.driver)?);
        record(&self.driver, start)?;
        for launch in &self.program.launches {
            let kernel = &self.program.kernels[launch.kernel];
            // Each argument's value lives in `values`; the driver takes their addresses.
            let mut values: Vec<u64> = launch
                .args
                .iter()
                .map(|a| match *a {
                    Arg::Buffer(i) => self.buffers[i],
                    Arg::I64(v) => v as u64,
                })
                .collect();
            let mut params: Vec<*mut c_void> = values
                .iter_mut()
                .map(|v| v as *mut u64 as *mut c_void)
                .collect();
            let (g, b) = (launch.grid, kernel.block);
            let func = self.functions[launch.kernel];
            type Launch = unsafe extern "C" fn(
                CuFunction,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                c_uint,
                *mut c_void,
                *mut *mut c_void,
                *mut *mut c_void,
            ) -> CuResult;
            self.driver
                .call("cuLaunchKernel", |f: Symbol<Launch>| unsafe {
                    f(
                        func,
                        g[0],
                        g[1],
                        g[2],
                        b[0],
                        b[1],
                        b[2],
                        kernel.shared_bytes,
                        std::ptr::null_mut(),
                        params.as_mut_ptr(),
                        std::ptr::null_mut(),
                    )
                })
                .map_err(|e| {
                    no_gpu(format!(
                        "{}launch of `{}` (%{}): {e}",
                        launch
                            .layer
                            .as_ref()
                            .map(|l| format!("layer `{l}`: "))
                            .unwrap_or_default(),
                        kernel.name,
                        launch.node
                    ))
                })?;
        }
        record(&self.driver, stop)?;
        self.driver.call(
            "cuEventSynchronize",
            |f: Symbol<unsafe extern "C" fn(CuEvent) -> CuResult>| unsafe { f(stop) },
        )?;
        let mut ms: f32 = 0.0;
        self.driver.call(
            "cuEventElapsedTime",
            |f: Symbol<unsafe extern "C" fn(*mut f32, CuEvent, CuEvent) -> CuResult>| unsafe {
                f(&mut ms, start, stop)
            },
        )?;
        for e in [start, stop] {
            self.driver.call(
                "cuEventDestroy_v2",
                |f: Symbol<unsafe extern "C" fn(CuEvent) -> CuResult>| unsafe { f(e) },
            )?;
        }
        for c in &self.program.checks {
            let mut flag = [0u8; 4];
            let src = self.buffers[c.buffer];
            self.driver.call(
                "cuMemcpyDtoH_v2",
                |f: Symbol<unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult>| unsafe {
                    f(flag.as_mut_ptr() as *mut c_void, src, flag.len())
                },
            )?;
            if flag != [0; 4] {
                return Err(BackendError::Runtime {
                    op: c.op.clone(),
                    layer: c.layer.clone(),
                    node: c.node,
                    message: c.message.to_string(),
                });
            }
        }
        Ok(ms as f64)
    }

    /// The outputs of the last [`execute`](GpuModel::execute), in the graph's order.
    pub fn outputs(&self) -> Result<Vec<Tensor>> {
        let mut outputs = Vec::new();
        for name in &self.outputs {
            let i = self
                .program
                .buffers
                .iter()
                .position(|b| b.role == BufferRole::Output(name.clone()))
                .ok_or_else(|| no_gpu(format!("the launch plan has no output `{name}`")))?;
            let b = &self.program.buffers[i];
            let mut bytes = vec![0u8; b.bytes() as usize];
            let src = self.buffers[i];
            self.driver.call(
                "cuMemcpyDtoH_v2",
                |f: Symbol<unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult>| unsafe {
                    f(bytes.as_mut_ptr() as *mut c_void, src, bytes.len())
                },
            )?;
            let t = crate::tensor_from_bytes(b.dtype, b.sizes.clone(), &bytes)
                .ok_or_else(|| no_gpu(format!("output `{name}`: wrong byte count")))?;
            outputs.push(t);
        }
        Ok(outputs)
    }
}

impl Drop for GpuModel {
    fn drop(&mut self) {
        for &p in &self.buffers {
            let _ = self.driver.call(
                "cuMemFree_v2",
                |f: Symbol<unsafe extern "C" fn(CuDevicePtr) -> CuResult>| unsafe { f(p) },
            );
        }
        let module = self.module;
        let _ = self.driver.call(
            "cuModuleUnload",
            |f: Symbol<unsafe extern "C" fn(CuModule) -> CuResult>| unsafe { f(module) },
        );
    }
}
