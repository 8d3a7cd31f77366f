//! Reductions: ReduceSum/Mean/Max/Min/Prod, and SumSquare/L1/L2/LogSum/LogSumExp as
//! compositions of them.

use kiln_ir::{BinaryOp, Op, ReduceOp, UnaryOp, ValueId};

use super::{norm_axes, NodeCx, OpResult};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain(ReduceOp),
    SumSquare,
    L1,
    L2,
    LogSum,
    LogSumExp,
}

/// The reduced axes: the `axes` attribute (before opset 18; ReduceSum before 13) or input 1.
/// No axes (or an empty list) means every axis, unless `noop_with_empty_axes` is set, when it
/// means none (`Some(vec![])`).
fn axes(cx: &NodeCx, rank: usize) -> OpResult<Vec<usize>> {
    let from_input = if cx.op_type() == "ReduceSum" { cx.opset >= 13 } else { cx.opset >= 18 };
    let (axes, noop) = if from_input {
        (cx.opt_ints_input(1, "axes")?, cx.attrs.int_or("noop_with_empty_axes", 0)? != 0)
    } else {
        (cx.attrs.ints("axes")?.map(<[i64]>::to_vec), false)
    };
    match axes {
        Some(a) if !a.is_empty() => norm_axes(&a, rank, "axis"),
        _ if noop => Ok(Vec::new()),
        _ => Ok((0..rank).collect()),
    }
}

pub(super) fn reduce(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let kind = match cx.op_type() {
        "ReduceSum" => Kind::Plain(ReduceOp::Sum),
        "ReduceMean" => Kind::Plain(ReduceOp::Mean),
        "ReduceMax" => Kind::Plain(ReduceOp::Max),
        "ReduceMin" => Kind::Plain(ReduceOp::Min),
        "ReduceProd" => Kind::Plain(ReduceOp::Prod),
        "ReduceSumSquare" => Kind::SumSquare,
        "ReduceL1" => Kind::L1,
        "ReduceL2" => Kind::L2,
        "ReduceLogSum" => Kind::LogSum,
        _ => Kind::LogSumExp,
    };
    let x = cx.input(0)?;
    let rank = cx.rank(x);
    let axes = axes(cx, rank)?;
    let keepdims = cx.attrs.int_or("keepdims", 1)? != 0;

    // Reduction over `axes` (nothing to do for no axes: the reference implementation then
    // applies only the element-wise parts).
    let red = |cx: &mut NodeCx, op: ReduceOp, v: ValueId, keepdims: bool, last: bool| -> OpResult<ValueId> {
        if axes.is_empty() {
            return Ok(v);
        }
        let name = if last { cx.out_name(0) } else { cx.tmp_name("reduce") };
        cx.emit(Op::Reduce { op, axes: axes.clone(), keepdims }, &[v], name)
    };
    let step = |cx: &mut NodeCx, op: Op, ins: &[ValueId], last: bool| -> OpResult<ValueId> {
        let name = if last { cx.out_name(0) } else { cx.tmp_name("t") };
        cx.emit(op, ins, name)
    };
    let out = match kind {
        Kind::Plain(op) => red(cx, op, x, keepdims, true)?,
        Kind::SumSquare => {
            let sq = step(cx, Op::Binary(BinaryOp::Mul), &[x, x], axes.is_empty())?;
            red(cx, ReduceOp::Sum, sq, keepdims, true)?
        }
        Kind::L1 => {
            let a = step(cx, Op::Unary(UnaryOp::Abs), &[x], axes.is_empty())?;
            red(cx, ReduceOp::Sum, a, keepdims, true)?
        }
        Kind::L2 => {
            let sq = step(cx, Op::Binary(BinaryOp::Mul), &[x, x], false)?;
            let s = red(cx, ReduceOp::Sum, sq, keepdims, false)?;
            step(cx, Op::Unary(UnaryOp::Sqrt), &[s], true)?
        }
        Kind::LogSum => {
            let s = red(cx, ReduceOp::Sum, x, keepdims, false)?;
            step(cx, Op::Unary(UnaryOp::Log), &[s], true)?
        }
        Kind::LogSumExp if axes.is_empty() => x,
        Kind::LogSumExp => {
            // log(sum(exp(x - m))) + m with m = max(x), for range.
            let m = red(cx, ReduceOp::Max, x, true, false)?;
            let d = step(cx, Op::Binary(BinaryOp::Sub), &[x, m], false)?;
            let e = step(cx, Op::Unary(UnaryOp::Exp), &[d], false)?;
            let s = red(cx, ReduceOp::Sum, e, true, false)?;
            let l = step(cx, Op::Unary(UnaryOp::Log), &[s], false)?;
            let r = step(cx, Op::Binary(BinaryOp::Add), &[l, m], keepdims)?;
            if keepdims {
                r
            } else {
                let shape =
                    cx.shape(r).iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect();
                step(cx, Op::Reshape { shape }, &[r], true)?
            }
        }
    };
    Ok(vec![out])
}
