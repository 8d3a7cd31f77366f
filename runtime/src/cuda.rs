//! GPU partitions through the CUDA driver (feature `cuda`).
//!
//! The driver library is loaded when the first GPU partition is: a build with this feature
//! runs on machines without CUDA, and loading a GPU artifact there is an error that says
//! so. A partition's PTX is JIT-compiled by the driver (its log becomes the error when that
//! fails), its weights are uploaded once, and each run copies the partition's inputs from
//! host memory, launches its table in order on one stream, and copies its outputs back.

use std::sync::{Arc, Mutex};

use cudarc::driver::{result::DriverError, sys, CudaContext, CudaSlice, CudaStream, DevicePtr};
use kiln_abi::manifest::{BufferRef, Launch, Partition};

use crate::RuntimeError;

fn driver(what: &str, e: DriverError) -> RuntimeError {
    RuntimeError::Load(format!("CUDA: {what}: {e:?}"))
}

/// One GPU and a stream on it.
pub(crate) struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

impl Gpu {
    /// The first GPU, or a clear error when there is no driver or no GPU.
    pub(crate) fn open() -> Result<Gpu, RuntimeError> {
        // SAFETY: only probes whether the driver library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err(RuntimeError::Load(
                "the artifact has GPU partitions, and this machine has no CUDA driver (libcuda)".into(),
            ));
        }
        let ctx = CudaContext::new(0).map_err(|e| driver("no usable GPU (device 0)", e))?;
        let stream = ctx.new_stream().map_err(|e| driver("creating a stream", e))?;
        Ok(Gpu { ctx, stream })
    }
}

/// A GPU partition, loaded: its module, kernels, launch table and weights on the device.
pub(crate) struct GpuPart {
    gpu: Arc<Gpu>,
    module: sys::CUmodule,
    /// The function of each kernel launch (None for copies and checks).
    functions: Vec<Option<sys::CUfunction>>,
    launches: Vec<Launch>,
    weights: CudaSlice<u8>,
    arena_bytes: usize,
    /// One run at a time: the partition's device buffers are set up per run on one stream.
    lock: Mutex<()>,
}

// SAFETY: the module and function handles are immutable driver objects, usable from any
// thread with the context bound; runs are serialized by `lock`.
unsafe impl Send for GpuPart {}
unsafe impl Sync for GpuPart {}

impl Drop for GpuPart {
    fn drop(&mut self) {
        let _ = self.gpu.ctx.bind_to_thread();
        // SAFETY: the module was loaded by `load` and nothing uses it after this.
        unsafe {
            let _ = sys::cuModuleUnload(self.module);
        }
    }
}

impl GpuPart {
    /// Loads partition `p` (`index` in the manifest) with its weights.
    pub(crate) fn load(gpu: &Arc<Gpu>, index: usize, p: &Partition, weights: &[u8]) -> Result<GpuPart, RuntimeError> {
        gpu.ctx.bind_to_thread().map_err(|e| driver("binding the context", e))?;
        let module = load_ptx(&p.ptx).map_err(|log| {
            RuntimeError::Load(format!("partition {index}: the driver cannot load its PTX ({}): {log}", p.ptx_arch))
        })?;
        let mut functions = Vec::with_capacity(p.launches.len());
        for l in &p.launches {
            functions.push(if l.kind == Launch::KERNEL {
                let name = std::ffi::CString::new(l.kernel.as_str())
                    .map_err(|_| RuntimeError::Manifest(format!("kernel name `{}`", l.kernel)))?;
                let mut f = std::ptr::null_mut();
                // SAFETY: the module is loaded; the name is NUL-terminated.
                unsafe { sys::cuModuleGetFunction(&mut f, module, name.as_ptr()) }
                    .result()
                    .map_err(|e| driver(&format!("partition {index}: kernel `{}`", l.kernel), e))?;
                Some(f)
            } else {
                None
            });
        }
        let weights = if weights.is_empty() { gpu.stream.alloc_zeros::<u8>(1) } else { gpu.stream.clone_htod(weights) }
            .map_err(|e| driver(&format!("partition {index}: uploading {} bytes of weights", weights.len()), e))?;
        Ok(GpuPart {
            gpu: gpu.clone(),
            module,
            functions,
            launches: p.launches.clone(),
            weights,
            arena_bytes: p.arena_bytes as usize,
            lock: Mutex::new(()),
        })
    }

    /// Runs the partition: `inputs` and `outputs` are its tensors in host memory.
    pub(crate) fn run(
        &self,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
        checks: &[String],
    ) -> Result<(), RuntimeError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &self.gpu.stream;
        let err = |what: &str, e: DriverError| RuntimeError::Load(format!("CUDA: {what}: {e:?}"));
        self.gpu.ctx.bind_to_thread().map_err(|e| err("binding the context", e))?;
        let dev_in: Vec<CudaSlice<u8>> = inputs
            .iter()
            .map(|h| if h.is_empty() { s.alloc_zeros::<u8>(1) } else { s.clone_htod(*h) })
            .collect::<Result<_, _>>()
            .map_err(|e| err("copying inputs to the GPU", e))?;
        let dev_out: Vec<CudaSlice<u8>> = outputs
            .iter()
            .map(|h| s.alloc_zeros::<u8>(h.len().max(1)))
            .collect::<Result<_, _>>()
            .map_err(|e| err("allocating outputs", e))?;
        let arena = s.alloc_zeros::<u8>(self.arena_bytes.max(1)).map_err(|e| err("allocating the arena", e))?;
        let base = |slice: &CudaSlice<u8>| -> u64 {
            let (p, _sync) = slice.device_ptr(s);
            p
        };
        let in_base: Vec<u64> = dev_in.iter().map(base).collect();
        let out_base: Vec<u64> = dev_out.iter().map(base).collect();
        let (arena_base, weights_base) = (base(&arena), base(&self.weights));
        let address = |r: &BufferRef| -> Result<u64, RuntimeError> {
            let b = match r.space {
                BufferRef::INPUT => in_base.get(r.index as usize).copied(),
                BufferRef::OUTPUT => out_base.get(r.index as usize).copied(),
                BufferRef::ARENA => Some(arena_base),
                BufferRef::WEIGHTS => Some(weights_base),
                _ => None,
            };
            b.map(|b| b + r.offset).ok_or_else(|| RuntimeError::Manifest(format!("buffer reference {r:?}")))
        };
        // `KILN_GPU_PROFILE=1`: time each kernel with events and print it (and its bandwidth).
        let profile = std::env::var_os("KILN_GPU_PROFILE").is_some_and(|v| v != "0");
        let mut timed = Vec::new();
        for (l, f) in self.launches.iter().zip(&self.functions) {
            let args: Vec<u64> = l.args.iter().map(address).collect::<Result<_, _>>()?;
            match (l.kind, f) {
                (Launch::KERNEL, Some(f)) => {
                    let event = || s.record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT));
                    let start = if profile { Some(event().map_err(|e| err("recording an event", e))?) } else { None };
                    let mut params: Vec<*mut std::ffi::c_void> =
                        args.iter().map(|a| a as *const u64 as *mut std::ffi::c_void).collect();
                    // SAFETY: the kernel takes one pointer per argument, as the compiler
                    // generated it, and the pointers are device buffers of the planned sizes.
                    unsafe {
                        sys::cuLaunchKernel(
                            *f,
                            l.grid,
                            1,
                            1,
                            l.block,
                            1,
                            1,
                            0,
                            s.cu_stream(),
                            params.as_mut_ptr(),
                            std::ptr::null_mut(),
                        )
                    }
                    .result()
                    .map_err(|e| err(&format!("launching `{}`", l.kernel), e))?;
                    if let Some(start) = start {
                        timed.push((l, start, event().map_err(|e| err("recording an event", e))?));
                    }
                }
                (Launch::COPY, _) if args.len() == 2 => {
                    // SAFETY: both ranges lie in device buffers (planned by the compiler).
                    unsafe {
                        cudarc::driver::result::memcpy_dtod_async(args[0], args[1], l.bytes as usize, s.cu_stream())
                    }
                    .map_err(|e| err("copying on the GPU", e))?;
                }
                (Launch::CHECK, _) if args.len() == 1 => {
                    let mut count = [0i64; 1];
                    // SAFETY: the check's buffer holds an i64 count.
                    unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut count, args[0], s.cu_stream()) }
                        .map_err(|e| err("reading a check", e))?;
                    s.synchronize().map_err(|e| err("running the partition", e))?;
                    if count[0] != 0 {
                        let message =
                            checks.get(l.check as usize).cloned().unwrap_or_else(|| "a data check failed".into());
                        return Err(RuntimeError::Check(message));
                    }
                }
                _ => return Err(RuntimeError::Manifest(format!("launch of kind {} is malformed", l.kind))),
            }
        }
        for (h, d) in outputs.iter_mut().zip(&dev_out) {
            if !h.is_empty() {
                s.memcpy_dtoh(&d.slice(..h.len()), *h).map_err(|e| err("copying outputs from the GPU", e))?;
            }
        }
        s.synchronize().map_err(|e| err("running the partition", e))?;
        for (l, start, end) in timed {
            let ms = start.elapsed_ms(&end).map_err(|e| err("reading an event", e))? as f64;
            let gbps = l.bytes as f64 / (ms.max(1e-6) * 1e-3) / 1e9;
            eprintln!(
                "gpu_kernel kernel={} grid={} block={} bytes={} ms={ms:.4} gbps={gbps:.1}",
                l.kernel, l.grid, l.block, l.bytes
            );
        }
        Ok(())
    }
}

/// Loads PTX text with the driver's JIT, returning its error log on failure.
fn load_ptx(ptx: &str) -> Result<sys::CUmodule, String> {
    let src = std::ffi::CString::new(ptx).map_err(|_| "the PTX text holds a NUL byte".to_string())?;
    let mut log = vec![0u8; 16 << 10];
    let mut options =
        [sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER, sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
    let mut values = [log.as_mut_ptr() as *mut std::ffi::c_void, log.len() as *mut std::ffi::c_void];
    let mut module = std::ptr::null_mut();
    // SAFETY: the options point at a live buffer of the given size; the source is
    // NUL-terminated.
    let r = unsafe {
        sys::cuModuleLoadDataEx(
            &mut module,
            src.as_ptr() as *const _,
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    match r.result() {
        Ok(()) => Ok(module),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(format!("{e:?}: {}", String::from_utf8_lossy(&log[..end]).trim()))
        }
    }
}
