//! Logic and tests: the comparisons (Equal, Less, LessOrEqual, Greater, GreaterOrEqual),
//! Where, IsNaN and IsInf. (And, Or, Xor and Not are the elementwise helpers on HIR's bool
//! ops.)

use super::elementwise::operands;
use super::{NodeCx, OpResult};
use kiln_ir::{CmpOp, Op, ValueId};

pub(super) fn compare(cx: &mut NodeCx, op: CmpOp) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (a, b) = operands(cx)?;
    Ok(vec![cx.emit_out(Op::Compare(op), &[a, b], 0)?])
}

pub(super) fn where_(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (c, a, b) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    Ok(vec![cx.emit_out(Op::Where, &[c, a, b], 0)?])
}

pub(super) fn is_nan(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    Ok(vec![cx.emit_out(Op::IsNaN, &[x], 0)?])
}

pub(super) fn is_inf(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let negative = cx.attrs.int_or("detect_negative", 1)? != 0;
    let positive = cx.attrs.int_or("detect_positive", 1)? != 0;
    Ok(vec![cx.emit_out(Op::IsInf { negative, positive }, &[x], 0)?])
}
