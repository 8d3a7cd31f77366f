//! Normalizations: BatchNormalization (inference and training forms), LRN, and, as
//! compositions of existing HIR ops, LayerNormalization, InstanceNormalization,
//! GroupNormalization, MeanVarianceNormalization, LpNormalization and RMSNormalization.

use super::builders::{bin, cmp, float_x, reshape, scalar, tmp, un};
use super::conv::MAX_WINDOW_ATTR;
use super::{invalid, norm_axes, norm_axis, unsupported, NodeCx, OpResult};
use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, ReduceOp, Tensor, UnaryOp as U, ValueId};

/// `(x - mean, 1 / sqrt(var + eps), mean)` over `axes` (kept as unit dims).
fn standardize(cx: &mut NodeCx, x: ValueId, axes: Vec<usize>, eps: f32) -> OpResult<(ValueId, ValueId, ValueId)> {
    let mean = tmp(cx, Op::Reduce { op: ReduceOp::Mean, axes: axes.clone(), keepdims: true }, &[x], "mean")?;
    let d = bin(cx, B::Sub, x, mean)?;
    let d2 = bin(cx, B::Mul, d, d)?;
    let var = tmp(cx, Op::Reduce { op: ReduceOp::Mean, axes, keepdims: true }, &[d2], "var")?;
    let e = scalar(cx, DType::F32, f64::from(eps));
    let ve = bin(cx, B::Add, var, e)?;
    let sd = un(cx, U::Sqrt, ve)?;
    let inv = un(cx, U::Reciprocal, sd)?;
    Ok((d, inv, mean))
}

fn float_in(cx: &NodeCx, x: ValueId) -> OpResult<()> {
    let d = cx.ty(x).dtype;
    if d != DType::F32 {
        return unsupported(format!("{} on {d} (only float32)", cx.op_type()));
    }
    Ok(())
}

/// LayerNormalization over axes `axis..`: the HIR op when only Y is asked for, else composed
/// of the reductions and elementwise ops that also give the Mean and InvStdDev outputs.
pub(super) fn layer_norm(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(3, "")?;
    let (x, scale) = (cx.input(0)?, cx.input(1)?);
    float_in(cx, x)?;
    let rank = cx.rank(x);
    let axis = norm_axis(cx.attrs.int_or("axis", -1)?, rank, "axis")?;
    let eps = cx.attrs.float_or("epsilon", 1e-5)?;
    if !cx.has_output(1) && !cx.has_output(2) {
        // One HIR op, kept whole until the `decompose` step (the usual case: Y alone).
        let mut ins = vec![x, scale];
        ins.extend(cx.opt_input(2));
        let y = cx.emit_out(Op::LayerNorm { axis, epsilon: eps }, &ins, 0)?;
        return Ok(vec![y]);
    }
    let (d, inv, mean) = standardize(cx, x, (axis..rank).collect(), eps)?;
    let n = bin(cx, B::Mul, d, inv)?;
    let y = match cx.opt_input(2) {
        Some(b) => {
            let s = bin(cx, B::Mul, n, scale)?;
            cx.emit_out(Op::Binary(B::Add), &[s, b], 0)?
        }
        None => cx.emit_out(Op::Binary(B::Mul), &[n, scale], 0)?,
    };
    if cx.shape(y) != cx.shape(x) {
        return invalid(format!("scale/bias do not broadcast to X of shape {:?}", cx.shape(x)));
    }
    Ok(vec![y, mean, inv])
}

/// `[C]` → `[C, 1, …]` (rank `rank - 1`) for a per-channel parameter of an NC… tensor.
fn per_channel(cx: &mut NodeCx, p: ValueId, rank: usize) -> OpResult<ValueId> {
    let n = cx.ty(p).numel();
    let mut shape = vec![n];
    shape.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
    reshape(cx, p, shape)
}

pub(super) fn instance_norm(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, scale, bias) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    float_in(cx, x)?;
    let s = cx.shape(x);
    if s.len() < 3 || cx.ty(scale).numel() != s[1] || cx.ty(bias).numel() != s[1] {
        return invalid(format!("X {s:?} needs rank >= 3 and per-channel scale and bias"));
    }
    let eps = cx.attrs.float_or("epsilon", 1e-5)?;
    let (d, inv, _) = standardize(cx, x, (2..s.len()).collect(), eps)?;
    let n = bin(cx, B::Mul, d, inv)?;
    let sc = per_channel(cx, scale, s.len())?;
    let bi = per_channel(cx, bias, s.len())?;
    let m = bin(cx, B::Mul, n, sc)?;
    Ok(vec![cx.emit_out(Op::Binary(B::Add), &[m, bi], 0)?])
}

/// GroupNormalization: statistics over each group of C / G channels (and every spatial
/// position); scale and bias are per group (opset 18) or per channel (opset 21), told
/// apart by their length.
pub(super) fn group_norm(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, scale, bias) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    float_in(cx, x)?;
    let s = cx.shape(x);
    let Some(g) = cx.attrs.int("num_groups")? else {
        return invalid("attribute `num_groups` is missing");
    };
    if s.len() < 2 || g < 1 || !s[1].is_multiple_of(g as usize) {
        return invalid(format!("X {s:?} cannot be split into {g} groups"));
    }
    let g = g as usize;
    let (n, c) = (s[0], s[1]);
    let sp: usize = s[2..].iter().product();
    let eps = cx.attrs.float_or("epsilon", 1e-5)?;
    let x4 = reshape(cx, x, vec![n, g, c / g, sp])?;
    let (d, inv, _) = standardize(cx, x4, vec![2, 3], eps)?;
    let y4 = bin(cx, B::Mul, d, inv)?;
    let (ns, nb) = (cx.ty(scale).numel(), cx.ty(bias).numel());
    let y = if ns == c && nb == c {
        let y3 = reshape(cx, y4, vec![n, c, sp])?;
        let sc = reshape(cx, scale, vec![c, 1])?;
        let bi = reshape(cx, bias, vec![c, 1])?;
        let m = bin(cx, B::Mul, y3, sc)?;
        bin(cx, B::Add, m, bi)?
    } else if ns == g && nb == g {
        let sc = reshape(cx, scale, vec![g, 1, 1])?;
        let bi = reshape(cx, bias, vec![g, 1, 1])?;
        let m = bin(cx, B::Mul, y4, sc)?;
        bin(cx, B::Add, m, bi)?
    } else {
        return invalid(format!("scale ({ns}) and bias ({nb}) must have C = {c} or num_groups = {g} elements"));
    };
    Ok(vec![cx.emit_out(Op::Reshape { shape: s }, &[y], 0)?])
}

/// MeanVarianceNormalization, as its function body: `(x - E[x]) / (sqrt(E[x²] - E[x]²) + 1e-9)`.
pub(super) fn mvn(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let x = float_x(cx)?;
    let rank = cx.rank(x);
    let axes = match cx.attrs.ints("axes")? {
        Some(a) => norm_axes(a, rank, "axis")?,
        None => norm_axes(&[0, 2, 3], rank, "axis")?,
    };
    let red = |cx: &mut NodeCx, v: ValueId, axes: &[usize]| {
        tmp(cx, Op::Reduce { op: ReduceOp::Mean, axes: axes.to_vec(), keepdims: true }, &[v], "mean")
    };
    let m = red(cx, x, &axes)?;
    let m2 = bin(cx, B::Mul, m, m)?;
    let x2 = bin(cx, B::Mul, x, x)?;
    let ex2 = red(cx, x2, &axes)?;
    let var = bin(cx, B::Sub, ex2, m2)?;
    let sd = un(cx, U::Sqrt, var)?;
    let e = scalar(cx, DType::F32, 1e-9);
    let sde = bin(cx, B::Add, sd, e)?;
    let d = bin(cx, B::Sub, x, m)?;
    Ok(vec![cx.emit_out(Op::Binary(B::Div), &[d, sde], 0)?])
}

/// LpNormalization: `x / ||x||_p` along `axis` (p = 1 or 2).
pub(super) fn lp_norm(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let x = float_x(cx)?;
    let axis = norm_axis(cx.attrs.int_or("axis", -1)?, cx.rank(x), "axis")?;
    let p = cx.attrs.int_or("p", 2)?;
    let sum = Op::Reduce { op: ReduceOp::Sum, axes: vec![axis], keepdims: true };
    let norm = match p {
        1 => {
            let a = un(cx, U::Abs, x)?;
            tmp(cx, sum, &[a], "norm")?
        }
        2 => {
            let x2 = bin(cx, B::Mul, x, x)?;
            let s = tmp(cx, sum, &[x2], "sumsq")?;
            un(cx, U::Sqrt, s)?
        }
        p => return invalid(format!("attribute `p` = {p} is not 1 or 2")),
    };
    // A zero norm (an all-zero slice) normalizes to zeros, as in ONNX's reference.
    let q = bin(cx, B::Div, x, norm)?;
    let zero = scalar(cx, DType::F32, 0.0);
    let is_zero = cmp(cx, CmpOp::Equal, norm, zero)?;
    Ok(vec![cx.emit_out(Op::Where, &[is_zero, zero, q], 0)?])
}

/// RMSNormalization: `x / sqrt(mean(x², axes axis..) + epsilon) * scale`, as the HIR op.
pub(super) fn rms_norm(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let x = float_x(cx)?;
    let scale = cx.input(1)?;
    let rank = cx.rank(x);
    let axis = norm_axis(cx.attrs.int_or("axis", -1)?, rank, "axis")?;
    let epsilon = cx.attrs.float_or("epsilon", 1e-5)?;
    // One HIR op, kept whole until the `decompose` step.
    Ok(vec![cx.emit_out(Op::RmsNorm { axis, epsilon }, &[x, scale], 0)?])
}

pub(super) fn batch_norm(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    if cx.opset >= 14 && cx.attrs.int_or("training_mode", 0)? != 0 {
        return batch_norm_training(cx);
    }
    if cx.opset < 9 && cx.attrs.int_or("spatial", 1)? == 0 {
        return unsupported("spatial=0 (per-activation statistics)");
    }
    cx.outputs_at_most(1, "training statistics")?;
    let epsilon = cx.attrs.float_or("epsilon", 1e-5)?;
    let ins = (0..5).map(|i| cx.input(i)).collect::<OpResult<Vec<_>>>()?;
    Ok(vec![cx.emit_out(Op::BatchNorm { epsilon }, &ins, 0)?])
}

/// BatchNormalization with `training_mode=1`: normalizes with the batch's own mean and
/// (population) variance over every axis but 1, and outputs the updated running statistics
/// `running * momentum + batch * (1 - momentum)`. Deterministic, so it compiles like any op.
fn batch_norm_training(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(3, "")?;
    let epsilon = cx.attrs.float_or("epsilon", 1e-5)?;
    let momentum = cx.attrs.float_or("momentum", 0.9)?;
    let ins = (0..5).map(|i| cx.input(i)).collect::<OpResult<Vec<_>>>()?;
    let x = ins[0];
    let shape = cx.shape(x);
    if shape.len() < 2 || cx.ty(x).dtype != DType::F32 {
        return invalid(format!("input must be f32 of rank >= 2, got {}", cx.ty(x)));
    }
    let axes: Vec<usize> = (0..shape.len()).filter(|&a| a != 1).collect();
    let mut bshape = vec![1; shape.len()];
    bshape[1] = shape[1];
    let tmp = |cx: &mut NodeCx, op: Op, ins: &[ValueId], tag: &str| -> OpResult<ValueId> {
        let name = cx.tmp_name(tag);
        cx.emit(op, ins, name)
    };
    let reduce = Op::Reduce { op: ReduceOp::Mean, axes, keepdims: false };
    let mean = tmp(cx, reduce.clone(), &[x], "batch_mean")?;
    let mean_b = tmp(cx, Op::Reshape { shape: bshape }, &[mean], "batch_mean_b")?;
    let d = tmp(cx, Op::Binary(kiln_ir::BinaryOp::Sub), &[x, mean_b], "centered")?;
    let d2 = tmp(cx, Op::Binary(kiln_ir::BinaryOp::Mul), &[d, d], "squared")?;
    let var = tmp(cx, reduce, &[d2], "batch_var")?;
    let y = cx.emit_out(Op::BatchNorm { epsilon }, &[x, ins[1], ins[2], mean, var], 0)?;
    let mut outs = vec![y];
    for (k, (running, batch)) in [(ins[3], mean), (ins[4], var)].into_iter().enumerate() {
        if !cx.has_output(k + 1) {
            outs.push(batch);
            continue;
        }
        let name = cx.tmp_name("momentum");
        let m = cx.konst(name, Tensor::scalar_f32(momentum));
        let name = cx.tmp_name("one_minus_momentum");
        let m1 = cx.konst(name, Tensor::scalar_f32(1.0 - momentum));
        let a = tmp(cx, Op::Binary(kiln_ir::BinaryOp::Mul), &[running, m], "keep")?;
        let b = tmp(cx, Op::Binary(kiln_ir::BinaryOp::Mul), &[batch, m1], "update")?;
        outs.push(cx.emit_out(Op::Binary(kiln_ir::BinaryOp::Add), &[a, b], k + 1)?);
    }
    Ok(outs)
}

pub(super) fn lrn(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let Some(size) = cx.attrs.int("size")? else {
        return invalid("attribute `size` is missing");
    };
    if !(1..=MAX_WINDOW_ATTR).contains(&size) {
        return invalid(format!("attribute `size` = {size} must be positive"));
    }
    let alpha = cx.attrs.float_or("alpha", 1e-4)?;
    let beta = cx.attrs.float_or("beta", 0.75)?;
    let bias = cx.attrs.float_or("bias", 1.0)?;
    Ok(vec![cx.emit_out(Op::Lrn { size: size as usize, alpha, beta, bias }, &[x], 0)?])
}
