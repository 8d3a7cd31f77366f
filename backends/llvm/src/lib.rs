//! The LLVM code generation that Kiln's CPU and CUDA backends share: LLVM handles and
//! element access by dtype ([`CodeGen`]), a kernel's scalar body at one point of its domain
//! ([`expr::Env::gen`]), reductions' combine steps and constants ([`expr::combine`],
//! [`expr::scalar`]), the math functions both write out (`exp`, `tanh`, `erf`, `sigmoid`:
//! [`math`]), the small float formats' conversions ([`minifloat`]), and the LLVM pass
//! pipeline ([`optimize_with`]). What differs per device (the CPU's vector paths, GEMM
//! schedule, entry module and linking; the GPU's grid-stride loops and PTX) stays in each
//! backend.

mod codegen;
pub mod expr;
pub mod math;
pub mod minifloat;

pub use codegen::{increment, llvm_err, normalized, reduce_loops, reduce_loops_to, slots, BackendResult, CodeGen};

use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::TargetMachine;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("LLVM: {0}")]
    Llvm(String),
    #[error("target `{triple}` (cpu `{cpu}`): {message}")]
    Target { triple: String, cpu: String, message: String },
    #[error("linking the shared library failed: {0}")]
    Link(String),
    #[error("kernel `{kernel}`: {message}")]
    Kernel { kernel: String, message: String },
    #[error("buffer `{buffer}` has no {what} yet: LLVM IR and assembly are emitted from the memory-planned program (`--after pack-weights` or later)")]
    Unplanned { buffer: String, what: &'static str },
}

/// Runs the LLVM pass pipeline `pipeline` (e.g. `default<O1>`) on a verified module.
pub fn optimize_with(module: &Module, tm: &TargetMachine, pipeline: &str) -> Result<(), BackendError> {
    module.set_triple(&tm.get_triple());
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    module.verify().map_err(|e| BackendError::Llvm(format!("generated module is invalid: {e}")))?;
    let opts = PassBuilderOptions::create();
    opts.set_loop_vectorization(true);
    opts.set_loop_slp_vectorization(true);
    opts.set_loop_unrolling(true);
    module.run_passes(pipeline, tm, opts).map_err(|e| BackendError::Llvm(e.to_string()))
}
