//! Import errors.

use std::fmt;
use std::path::PathBuf;

/// One op the importer could not map into HIR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedOp {
    pub op_type: String,
    /// The node's domain as written in messages: `ai.onnx` for the default domain.
    pub domain: String,
    /// The opset version imported for the domain (`None` where the model imports none).
    pub opset: Option<i64>,
    pub node: String,
    /// Why a known op could not be mapped (an unsupported attribute value, a 3-D form…);
    /// `None` for an op Kiln does not know at all.
    pub reason: Option<String>,
}

impl fmt::Display for UnsupportedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (domain {}, opset ", self.op_type, self.domain)?;
        match self.opset {
            Some(v) => write!(f, "{v}")?,
            None => f.write_str("?")?,
        }
        write!(f, ") at node {:?}", self.node)?;
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        Ok(())
    }
}

/// The ops whose sizes from data a bound (`--max-elements`) lets run at run time
/// (`import/sized.rs`).
pub(crate) const SIZED_FROM_DATA: &[&str] = &[
    "Range",
    "ConstantOfShape",
    "Expand",
    "Tile",
    "Pad",
    "OneHot",
    "CenterCropPad",
    "Slice",
    "HannWindow",
    "HammingWindow",
    "BlackmanWindow",
];

fn freeze_hint(inputs: &[String], op_type: &str) -> String {
    if inputs.is_empty() {
        return String::new();
    }
    let list: Vec<String> = inputs.iter().map(|i| format!("`{i}`")).collect();
    let bound = if SIZED_FROM_DATA.contains(&op_type) || op_type == "Loop" {
        ", or bound the size it sets with --max-elements N to take it at run time"
    } else {
        ""
    };
    format!(
        "; it is computed from graph input {}: give its value at compile time with --freeze-input NAME=FILE{bound}",
        list.join(", ")
    )
}

fn fmt_unsupported(ops: &[UnsupportedOp]) -> String {
    let list: Vec<String> = ops.iter().map(|o| o.to_string()).collect();
    let noun = if ops.len() == 1 { "op" } else { "ops" };
    format!("model uses {} unsupported {noun}: {}", ops.len(), list.join("; "))
}

/// A node operand that must be a compile-time constant but is computed at run time.
/// `graph_inputs` are the inputs it is computed from: binding them to values
/// ([`crate::import_path_with_constants`], `--freeze-input`) makes it static.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node `{node}` ({op_type}, opset {opset}): input {index} (`{value}`, {role}) is computed at run time, \
     but Kiln needs it as a constant (static shapes){}",
    freeze_hint(graph_inputs, op_type)
)]
pub struct ConstantNeeded {
    pub node: String,
    pub op_type: String,
    pub opset: i64,
    pub index: usize,
    pub value: String,
    pub role: String,
    pub graph_inputs: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The bytes are not a valid `ModelProto` (truncated, corrupt, not ONNX).
    #[error("cannot decode ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),

    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unsupported ONNX IR version {version} (supported: {min}..={max})")]
    UnsupportedIrVersion { version: i64, min: i64, max: i64 },

    #[error("unsupported opset {version} for domain ai.onnx (supported: {min}..={max})")]
    UnsupportedOpset { version: i64, min: i64, max: i64 },

    /// A `--dim` spec that cannot be parsed, or names no symbolic dim of any input.
    #[error("bad --dim `{spec}`: {reason}")]
    DimSpec { spec: String, reason: String },

    /// A graph input has a symbolic or unknown dim (or an unknown rank) that
    /// [`crate::ImportOptions::input_shapes`] does not pin.
    #[error(
        "input `{input}` has {dim} at dim {index} of shape [{shape}]; pin it with `--input-shape \
         {suggestion}` (ImportOptions::input_shapes), or bound a symbolic dim with `--dim NAME=LO..HI`"
    )]
    UnpinnedDim {
        input: String,
        /// The dim's index in the input's shape (0 when the whole rank is unknown).
        index: usize,
        /// `symbolic dim `batch`` / `an unknown dim` / `an unknown rank`.
        dim: String,
        /// The input's shape as declared, symbolic dims by name and unknown ones as `?`.
        shape: String,
        /// A spec with every unpinned dim replaced by 1, e.g. `images=1x3x224x224`.
        suggestion: String,
    },

    /// A `--input-shape` spec that cannot be parsed, names no graph input, or contradicts
    /// the model's static dims.
    #[error("bad input shape `{spec}`: {reason}")]
    ShapeSpec { spec: String, reason: String },

    /// A value given for a graph input (see [`crate::import_path_with_constants`]) that does
    /// not fit it.
    #[error("constant for input `{input}`: {reason}")]
    ConstantInput { input: String, reason: String },

    /// A sequence or optional input's [`crate::ValueSpec`] that does not fit the input (see
    /// [`crate::ImportOptions::value_inputs`]).
    #[error("value given for input `{input}`: {reason}")]
    ValueInput { input: String, reason: String },

    /// Every op of the model that could not be imported, in model order.
    #[error("{}", fmt_unsupported(.0))]
    UnsupportedOps(Vec<UnsupportedOp>),

    /// A node could not be built (invalid attributes, shape mismatch, a shape-like input that
    /// is not a constant, …).
    #[error("node `{node}` ({op_type}, opset {opset}): {message}")]
    Node { node: String, op_type: String, opset: i64, message: String },

    /// A shape-like operand (Reshape's shape, reduce axes, …) that does not fold to a
    /// constant; see [`ConstantNeeded`].
    #[error("{0}")]
    NeedsConstant(Box<ConstantNeeded>),

    #[error("tensor `{tensor}`: dtype {dtype} is not supported (supported: {})", crate::data::SUPPORTED_DTYPES)]
    UnsupportedDtype { tensor: String, dtype: String },

    /// A tensor (initializer, Constant, graph input) whose data or dims are invalid.
    #[error("tensor `{tensor}`: {message}")]
    Tensor { tensor: String, message: String },

    #[error("tensor `{tensor}`: external data: {message}")]
    ExternalData { tensor: String, message: String },

    /// A model feature Kiln does not support (sparse initializers, non-tensor inputs, …).
    #[error("unsupported model feature: {0}")]
    Unsupported(String),

    /// The graph's structure is invalid (a value used before it is defined, a missing
    /// output, …).
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
}
