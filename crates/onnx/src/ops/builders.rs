//! The small builders the op modules share: intermediate values of the node being imported
//! (`tmp`, `bin`, `un`, `cmp`, `reshape`, `last_axis`), scalar and tensor constants of a given
//! dtype (`scalar`, `tensor_as`, `konst_as`), and the float32-only input check `float_x`.

use kiln_ir::{BinaryOp as B, CmpOp, DType, Data, Op, Tensor, UnaryOp as U, ValueId};

use super::{unsupported, NodeCx, OpResult};

/// Emits an intermediate value of this node.
pub(super) fn tmp(cx: &mut NodeCx, op: Op, ins: &[ValueId], tag: &str) -> OpResult<ValueId> {
    let name = cx.tmp_name(tag);
    cx.emit(op, ins, name)
}

pub(super) fn bin(cx: &mut NodeCx, op: B, a: ValueId, b: ValueId) -> OpResult<ValueId> {
    tmp(cx, Op::Binary(op), &[a, b], "t")
}

pub(super) fn un(cx: &mut NodeCx, op: U, a: ValueId) -> OpResult<ValueId> {
    tmp(cx, Op::Unary(op), &[a], "t")
}

pub(super) fn cmp(cx: &mut NodeCx, op: CmpOp, a: ValueId, b: ValueId) -> OpResult<ValueId> {
    tmp(cx, Op::Compare(op), &[a, b], "c")
}

pub(super) fn reshape(cx: &mut NodeCx, x: ValueId, shape: Vec<usize>) -> OpResult<ValueId> {
    if cx.shape(x) == shape {
        return Ok(x);
    }
    tmp(cx, Op::Reshape { shape }, &[x], "r")
}

/// A scalar constant of `dtype`.
pub(super) fn scalar(cx: &mut NodeCx, dtype: DType, v: f64) -> ValueId {
    let data = Data::from_f64s(dtype, &[v]);
    let name = cx.tmp_name("k");
    cx.konst(name, Tensor::from_data(Vec::<usize>::new(), data))
}

/// A tensor of `dtype` from f64 values.
pub(super) fn tensor_as(dtype: DType, shape: Vec<usize>, v: &[f64]) -> Tensor {
    Tensor::from_data(shape, Data::from_f64s(dtype, v))
}

/// A constant tensor of `dtype` from f64 values.
pub(super) fn konst_as(cx: &mut NodeCx, dtype: DType, shape: Vec<usize>, v: &[f64]) -> ValueId {
    let name = cx.tmp_name("k");
    cx.konst(name, tensor_as(dtype, shape, v))
}

/// Input 0, which must be f32, of a single-output node.
pub(super) fn float_x(cx: &NodeCx) -> OpResult<ValueId> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let d = cx.ty(x).dtype;
    if d != DType::F32 {
        return unsupported(format!("{} on {d} (only float32)", cx.op_type()));
    }
    Ok(x)
}

/// `x[..., start + k·step]` for `k < len` along the last axis.
pub(super) fn last_axis(cx: &mut NodeCx, x: ValueId, start: usize, step: usize, len: usize) -> OpResult<ValueId> {
    let s = cx.shape(x);
    let r = s.len();
    let mut starts = vec![0i64; r];
    starts[r - 1] = start as i64;
    let mut steps = vec![1i64; r];
    steps[r - 1] = step as i64;
    let mut out_shape = s;
    out_shape[r - 1] = len;
    tmp(cx, Op::Slice { starts, steps, out_shape }, &[x], "part")
}

/// `x[.., start..start + len, ..]` along `axis` (`x` itself when that is all of it).
pub(super) fn slice_axis(cx: &mut NodeCx, x: ValueId, axis: usize, start: usize, len: usize) -> OpResult<ValueId> {
    let s = cx.shape(x);
    if start == 0 && len == s[axis] {
        return Ok(x);
    }
    let r = s.len();
    let mut starts = vec![0i64; r];
    starts[axis] = start as i64;
    let mut out_shape = s;
    out_shape[axis] = len;
    tmp(cx, Op::Slice { starts, steps: vec![1; r], out_shape }, &[x], "s")
}
