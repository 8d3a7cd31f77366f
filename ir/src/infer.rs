//! Typing rules: the output types of every op from its input types and attributes.
//! Run when a node is built, so shape errors surface at import with the node's name.

use crate::op::Op;
use crate::{DType, Shape, TensorType};

pub type InferResult = Result<Vec<TensorType>, String>;

/// Numpy broadcasting of several shapes.
pub fn broadcast_shapes(shapes: &[&[usize]]) -> Result<Shape, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(format!(
                    "shapes {} cannot be broadcast together",
                    shapes.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" and ")
                ));
            }
        }
    }
    Ok(out)
}

pub(crate) fn arity(op: &Op, inputs: &[&TensorType], min: usize, max: usize) -> Result<(), String> {
    if inputs.len() < min || inputs.len() > max {
        return Err(format!("{} takes {min}..={max} inputs, got {}", op.name(), inputs.len()));
    }
    Ok(())
}

pub(crate) fn same_dtype(inputs: &[&TensorType]) -> Result<DType, String> {
    let d = inputs[0].dtype;
    if let Some(t) = inputs.iter().find(|t| t.dtype != d) {
        return Err(format!("operand dtypes differ: {} and {}", d, t.dtype));
    }
    Ok(d)
}

pub(crate) fn want_float(op: &Op, t: &TensorType) -> Result<(), String> {
    if !t.dtype.is_float() {
        return Err(format!("{} needs a float input, got {}", op.name(), t.dtype));
    }
    Ok(())
}

pub(crate) fn pool_shape(
    x: &TensorType,
    window: &crate::op::Window,
    ceil_mode: bool,
    out_c: usize,
) -> Result<Shape, String> {
    if x.rank() != 4 {
        return Err(format!("expects a 4-D NCHW input, got shape {:?}", x.shape));
    }
    let oh = window.out_dim(0, x.shape[2], ceil_mode);
    let ow = window.out_dim(1, x.shape[3], ceil_mode);
    match (oh, ow) {
        (Some(oh), Some(ow)) => Ok(vec![x.shape[0], out_c, oh, ow]),
        _ => Err(format!("window {window:?} does not fit input shape {:?}", x.shape)),
    }
}

/// GatherElements / ScatterElements: integer indices of the data's rank, no larger than the
/// data outside `axis`.
pub(crate) fn elements_shapes(op: &Op, x: &TensorType, idx: &TensorType, axis: usize) -> Result<(), String> {
    if !idx.dtype.is_int() {
        return Err(format!("{} indices must be integers, got {}", op.name(), idx.dtype));
    }
    if axis >= x.rank() || idx.rank() != x.rank() {
        return Err(format!(
            "{} needs indices of the data's rank and axis < rank: data {:?}, indices {:?}, axis {axis}",
            op.name(),
            x.shape,
            idx.shape
        ));
    }
    if (0..x.rank()).any(|d| d != axis && idx.shape[d] > x.shape[d]) {
        return Err(format!("indices shape {:?} exceeds data shape {:?} outside axis {axis}", idx.shape, x.shape));
    }
    Ok(())
}

/// GatherND / ScatterND: `(batch_dims, m)` where m is the indices' last dimension.
pub(crate) fn nd_shapes(op: &Op, x: &TensorType, idx: &TensorType, b: usize) -> Result<(usize, usize), String> {
    if !idx.dtype.is_int() {
        return Err(format!("{} indices must be integers, got {}", op.name(), idx.dtype));
    }
    let q = idx.rank();
    if q == 0 || b >= q || b > x.rank() {
        return Err(format!("{} indices of shape {:?} invalid (batch_dims {b})", op.name(), idx.shape));
    }
    let m = idx.shape[q - 1];
    if m == 0 || b + m > x.rank() || idx.shape[..b] != x.shape[..b] {
        return Err(format!(
            "{} indices of shape {:?} do not fit data of shape {:?} (batch_dims {b})",
            op.name(),
            idx.shape,
            x.shape
        ));
    }
    Ok((b, m))
}

pub(crate) fn scatter_dtype(
    op: &Op,
    x: &TensorType,
    upd: &TensorType,
    reduction: crate::op::ScatterReduction,
) -> Result<(), String> {
    if upd.dtype != x.dtype {
        return Err(format!("updates dtype {} differs from data dtype {}", upd.dtype, x.dtype));
    }
    use crate::op::ScatterReduction as S;
    if x.dtype == DType::Bool && matches!(reduction, S::Add | S::Mul) {
        return Err(format!("{} with reduction {} is not defined on bool", op.name(), reduction.name()));
    }
    Ok(())
}

/// Output types of `op` applied to inputs of types `inputs`.
/// Checks that `op` computes in its inputs' dtypes: ops that only move elements take every
/// dtype; elementwise ops, reductions and MatMul compute in f32, f64, i32, i64 and bool; the
/// rest in all of those but f64. Storage types ([`DType::compute`]) are widened by the
/// importer before they reach a computing op.
fn check_compute_dtypes(op: &Op, inputs: &[&TensorType]) -> Result<(), String> {
    use Op::*;
    let moves = matches!(
        op,
        Cast { .. }
            | BitCast { .. }
            | Reshape { .. }
            | Transpose { .. }
            | Concat { .. }
            | Slice { .. }
            | Gather { .. }
            | Expand { .. }
            | Identity
            | Merge
            | Assert { .. }
            | LoopBegin
            | LoopEnd { .. }
            | NonZero
            | GatherElements { .. }
            | GatherNd { .. }
            | Where
    );
    // An integer convolution widens its 8/16-bit operands to i32 as it loads them.
    let int_conv =
        matches!(op, Conv { .. }) && inputs.iter().all(|t| matches!(t.dtype, DType::I8 | DType::U8 | DType::I16));
    if moves || int_conv {
        return Ok(());
    }
    let f64_ok =
        matches!(op, Binary(_) | Compare(_) | Unary(_) | Reduce { .. } | MatMul | Softmax { .. } | LogSoftmax { .. });
    for t in inputs {
        let d = t.dtype;
        if !d.is_compute() {
            return Err(format!("{} does not compute in {d} (Kiln computes {d} values in {})", op.name(), d.compute()));
        }
        if d == DType::F64 && !f64_ok {
            return Err(format!("{} does not compute in f64 yet", op.name()));
        }
    }
    Ok(())
}

/// Output types of `op` applied to inputs of types `inputs`.
pub fn infer(op: &Op, inputs: &[&TensorType]) -> InferResult {
    check_compute_dtypes(op, inputs)?;
    infer_types(op, inputs)
}

/// Dispatches to the type rule of the op's family, which lives with its reference evaluation
/// and text form in `ops/<family>.rs`.
fn infer_types(op: &Op, inputs: &[&TensorType]) -> InferResult {
    use crate::op::Family;
    use crate::ops;
    match op.family() {
        Some(Family::Elementwise) => ops::elementwise::infer(op, inputs),
        Some(Family::Shape) => ops::shape::infer(op, inputs),
        Some(Family::Linalg) => ops::linalg::infer(op, inputs),
        Some(Family::Nn) => ops::nn::infer(op, inputs),
        Some(Family::Reduce) => ops::reduce::infer(op, inputs),
        Some(Family::Sample) => ops::sample::infer(op, inputs),
        Some(Family::Index) => ops::index::infer(op, inputs),
        None => Err(match op {
            Op::Unsupported { op_type, .. } => format!("op {op_type} is not supported"),
            _ => format!("{} has no type rule", op.name()),
        }),
    }
}
