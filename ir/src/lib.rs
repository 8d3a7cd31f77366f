//! Kiln's intermediate representations.
//!
//! * [`Graph`] (HIR): a typed SSA dataflow graph of tensor [`Op`]s with static shapes.
//!   Every op belongs to a [`Family`]; its family's file in [`ops`] holds its typing rule,
//!   reference evaluation ([`ops::eval`]) and text form ([`text`]).
//! * [`lir`] (LIR): an address-only program over buffers, whose kernels carry compute
//!   definitions ([`lir::Kernel`]) that backends turn into loops.
//!
//! This crate knows nothing of ONNX, of LLVM, or of the runtime.

pub mod dtype;
pub mod graph;
pub mod infer;
pub mod lir;
pub mod minifloat;
pub mod op;
pub mod ops;
pub mod tensor;
pub mod text;
pub mod types;
pub mod verify;

pub use dtype::DType;
pub use graph::{BuildError, DimSymbol, Graph, Guard, Node, NodeId, RuntimeShape, ValueData, ValueDef, ValueId};
pub use op::{BinaryOp, CmpOp, Family, GridMode, GridPadding, Op, ReduceOp, ScatterReduction, UnaryOp, Window};
pub use tensor::{Data, Tensor};
pub use types::{fmt_shape, numel, strides_of, Shape, TensorType};
