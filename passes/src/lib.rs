//! Kiln's compiler passes.
//!
//! * [`pipeline`]: the whole pipeline in order, HIR and LIR steps alike, and its driver.
//! * HIR passes: [`simplify`] (constant folding, DCE, CSE, Identity removal, BatchNorm
//!   folding), [`decompose`] (ops kept whole until then, for a backend that does not lower
//!   them), [`quant`] (integer products read narrow operands) and [`fuse`].
//! * [`lower`]: HIR → LIR.
//! * LIR passes: [`fuse`]'s LIR half (with [`views`]: copies that only move data, read or
//!   written in place), [`coalesce`] (adjacent dims walked as one run merged), [`split`] (long reductions of
//!   few outputs computed in parts) and [`memory`] (liveness, in-place reuse, arena offsets, the weight
//!   section).
//! * [`partition`]: splitting a graph across devices (before fusion).

pub mod coalesce;
pub mod decompose;
pub mod fuse;
pub mod lower;
pub mod memory;
pub mod partition;
pub mod pipeline;
pub mod quant;
pub mod rows;
pub mod simplify;
pub mod split;
pub mod views;

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("node `{node}`: {what} is not supported")]
    Unsupported { node: String, what: String },
    #[error("lowering node `{node}` ({op}): {message}")]
    Lowering { node: String, op: String, message: String },
    /// A run-time dim (`--dim`) reaches a node or kernel that cannot keep its rows apart.
    #[error("node `{node}` ({op}): {message}")]
    RunTimeDim { node: String, op: String, message: String },
    #[error("internal compiler error: the IR is invalid after pass `{pass}`: {message}")]
    Verify { pass: String, message: String },
    #[error("pass `{pass}`: {message}")]
    Failed { pass: String, message: String },
    /// A model split across devices does not fit them (the caller names the target list).
    #[error("{0}")]
    Devices(String),
}

pub use pipeline::{pass_names, PIPELINE};
