//! The facade's error type.

use kiln_onnx::ImportError;
use kiln_passes::PassError;
use kiln_runtime::RuntimeError;

use crate::native;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Backend(#[from] kiln_backend_cpu::BackendError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("unknown pass `{0}`; passes are: {1}")]
    UnknownPass(String, String),
    #[error("`--after {0}` stops in {1}: print it with --emit {2}")]
    AfterInOtherIr(String, &'static str, &'static str),
    #[error(
        "unknown target `{0}`; supported: cpu (this machine) or an LLVM target triple, e.g. aarch64-unknown-linux-gnu"
    )]
    UnknownTarget(String),
    #[error("writing `{path}`: {source}")]
    Write { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Native(#[from] native::NativeError),
    #[error("target `{target}`: {message}")]
    Devices { target: String, message: String },
    #[error("{0}")]
    Options(String),
}

impl Error {
    /// Graph inputs that must be frozen to constants for the model to compile (empty when
    /// the error is something else).
    pub fn inputs_to_freeze(&self) -> &[String] {
        match self {
            Error::Import(ImportError::NeedsConstant(c)) => &c.graph_inputs,
            _ => &[],
        }
    }
}
