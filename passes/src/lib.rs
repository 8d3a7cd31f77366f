//! Kiln's compiler passes.
//!
//! * HIR passes (`fn(&mut Graph) -> Result<bool, PassError>`, run by [`PassManager`], which
//!   verifies the graph after each in debug builds and tests): [`simplify`] (constant
//!   folding, DCE, CSE, Identity removal, BatchNorm folding) and [`fuse`].
//! * [`lower`]: HIR → LIR.
//! * [`partition`]: splitting a graph across devices (before fusion).
//! * [`memory`]: LIR memory planning (liveness, in-place reuse, arena offsets).

pub mod fuse;
pub mod lower;
pub mod memory;
pub mod partition;
pub mod simplify;

use kiln_ir::Graph;

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("node `{node}`: {what} is not supported")]
    Unsupported { node: String, what: String },
    #[error("lowering node `{node}` ({op}): {message}")]
    Lowering { node: String, op: String, message: String },
    #[error("internal compiler error: the graph is invalid after pass `{pass}`: {message}")]
    Verify { pass: String, message: String },
    #[error("pass `{pass}`: {message}")]
    Failed { pass: String, message: String },
}

/// A HIR pass: returns whether it changed the graph.
pub type PassFn = fn(&mut Graph) -> Result<bool, PassError>;

/// The default HIR pipeline, in order.
pub const PIPELINE: &[(&str, PassFn)] = &[
    ("fold-constants", simplify::fold_constants),
    ("remove-identity", simplify::remove_identity),
    ("fold-batchnorm", simplify::fold_batchnorm),
    ("cse", simplify::cse),
    ("sink-reshapes", simplify::sink_reshapes),
    ("fold-constants-2", simplify::fold_constants),
    ("dce", simplify::dce),
    ("fuse", fuse::fuse),
];

/// Names of the passes in the default pipeline (for `--after`).
pub fn pass_names() -> Vec<&'static str> {
    PIPELINE.iter().map(|(n, _)| *n).collect()
}

#[derive(Default)]
pub struct PassManager {
    /// Verify after every pass (always on in debug builds).
    pub verify: bool,
}

impl PassManager {
    /// Runs the pipeline; stops after pass `stop_after` if given (for `kiln inspect --after`).
    pub fn run(&self, g: &mut Graph, stop_after: Option<&str>) -> Result<(), PassError> {
        let check = self.verify || cfg!(debug_assertions);
        if check {
            kiln_ir::verify::verify(g).map_err(|message| PassError::Verify { pass: "import".into(), message })?;
        }
        for (name, pass) in PIPELINE {
            pass(g)?;
            if check {
                kiln_ir::verify::verify(g).map_err(|message| PassError::Verify { pass: name.to_string(), message })?;
            }
            if stop_after == Some(*name) {
                break;
            }
        }
        Ok(())
    }
}
