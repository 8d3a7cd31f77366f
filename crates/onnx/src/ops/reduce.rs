//! Reductions: ReduceSum/Mean/Max/Min/Prod, SumSquare/L1/L2/LogSum/LogSumExp as
//! compositions of them, and the cumulative CumSum and CumProd (a masked sum over a
//! triangular constant).

use super::builders::{bin, konst_as, reshape, scalar, tmp};
use super::shape::{checked, int_scalar_in};
use super::{invalid, norm_axes, norm_axis, NodeCx, OpError, OpResult};
use kiln_ir::{BinaryOp, BinaryOp as B, DType, Op, ReduceOp, UnaryOp, ValueId};

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

/// CumSum (and CumProd) along a constant axis: `x` with a new unit axis, times a constant 0/1 matrix
/// `[d (out), d (in), 1…]`, summed over the input axis.
pub(super) fn cumsum(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let dtype = cx.ty(x).dtype;
    if dtype == DType::Bool {
        return invalid("CumSum on bool");
    }
    let axis = int_scalar_in(cx, 1, "axis")?.ok_or_else(|| OpError::Invalid("input 1 (axis) is missing".into()))?;
    let a = norm_axis(axis, s.len(), "axis")?;
    let exclusive = cx.attrs.int_or("exclusive", 0)? != 0;
    let reverse = cx.attrs.int_or("reverse", 0)? != 0;
    let d = s[a];
    let mut xs = s.clone();
    xs.insert(a, 1);
    let mut big = s.clone();
    big.insert(a, d);
    checked(big)?;
    let x1 = reshape(cx, x, xs)?;
    let mut ms = vec![d, d];
    ms.extend(std::iter::repeat_n(1, s.len() - a - 1));
    let mut m = Vec::with_capacity(d * d);
    for i in 0..d {
        for j in 0..d {
            let on = match (reverse, exclusive) {
                (false, false) => j <= i,
                (false, true) => j < i,
                (true, false) => j >= i,
                (true, true) => j > i,
            };
            m.push(if on { 1.0 } else { 0.0 });
        }
    }
    if cx.op_type() == "CumProd" {
        // Excluded terms become 1, then a product over the input axis.
        let mask = konst_as(cx, DType::Bool, ms, &m);
        let one = scalar(cx, dtype, 1.0);
        let p = tmp(cx, Op::Where, &[mask, x1, one], "terms")?;
        return Ok(vec![cx.emit_out(
            Op::Reduce { op: ReduceOp::Prod, axes: vec![a + 1], keepdims: false },
            &[p],
            0,
        )?]);
    }
    let mask = konst_as(cx, dtype, ms, &m);
    let p = bin(cx, B::Mul, x1, mask)?;
    Ok(vec![cx.emit_out(Op::Reduce { op: ReduceOp::Sum, axes: vec![a + 1], keepdims: false }, &[p], 0)?])
}
