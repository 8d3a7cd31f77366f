//! Activations: Softmax and LogSoftmax (HIR ops), and as compositions of existing HIR ops
//! Elu, Selu, Celu, Softplus, Softsign, ThresholdedRelu, HardSwish, Mish, Gelu, Swish, SwiGLU,
//! PRelu, Shrink and Hardmax. (Relu, LeakyRelu, Sigmoid, HardSigmoid and Tanh are HIR unary
//! ops, registered with the elementwise helpers.)

use super::builders::{bin, cmp, float_x, konst_as, reshape, scalar, tmp, un};
use super::{invalid, norm_axis, unsupported, NodeCx, OpResult};
use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, ReduceOp, UnaryOp as U, ValueId};

/// `alpha * (exp(x) - 1)`.
fn exp_m1(cx: &mut NodeCx, x: ValueId, alpha: f32) -> OpResult<ValueId> {
    let e = un(cx, U::Exp, x)?;
    let one = scalar(cx, DType::F32, 1.0);
    let e1 = bin(cx, B::Sub, e, one)?;
    if alpha == 1.0 {
        return Ok(e1);
    }
    let a = scalar(cx, DType::F32, f64::from(alpha));
    bin(cx, B::Mul, e1, a)
}

/// `log(1 + exp(x))` as the two terms of `relu(x) + log(1 + exp(-|x|))` (no overflow), for
/// the caller to add (into the node's output, or a temporary: [`softplus_of`]).
fn softplus_terms(cx: &mut NodeCx, x: ValueId) -> OpResult<[ValueId; 2]> {
    let r = un(cx, U::Relu, x)?;
    let a = un(cx, U::Abs, x)?;
    let na = un(cx, U::Neg, a)?;
    let e = un(cx, U::Exp, na)?;
    let one = scalar(cx, DType::F32, 1.0);
    let e1 = bin(cx, B::Add, e, one)?;
    Ok([r, un(cx, U::Log, e1)?])
}

/// `log(1 + exp(x))` (Softplus, Mish's inner term, an RNN's `softplus` activation).
pub(super) fn softplus_of(cx: &mut NodeCx, x: ValueId) -> OpResult<ValueId> {
    let [r, l] = softplus_terms(cx, x)?;
    bin(cx, B::Add, r, l)
}

/// Elu, Selu, Celu, Softplus, Softsign, ThresholdedRelu, HardSwish, Mish, Gelu, Swish.
pub(super) fn activation(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let x = float_x(cx)?;
    let f = |cx: &mut NodeCx, v: f64| scalar(cx, DType::F32, v);
    let y = match cx.op_type() {
        "Elu" => {
            let alpha = cx.attrs.float_or("alpha", 1.0)?;
            let neg = exp_m1(cx, x, alpha)?;
            let zero = f(cx, 0.0);
            let c = cmp(cx, CmpOp::Less, x, zero)?;
            cx.emit_out(Op::Where, &[c, neg, x], 0)?
        }
        "Selu" => {
            let alpha = cx.attrs.float_or("alpha", 1.673_263_2)?;
            let gamma = cx.attrs.float_or("gamma", 1.050_701)?;
            let neg = exp_m1(cx, x, alpha)?;
            let zero = f(cx, 0.0);
            let c = cmp(cx, CmpOp::Greater, x, zero)?;
            let w = tmp(cx, Op::Where, &[c, x, neg], "w")?;
            let g = f(cx, f64::from(gamma));
            cx.emit_out(Op::Binary(B::Mul), &[w, g], 0)?
        }
        "Celu" => {
            let alpha = cx.attrs.float_or("alpha", 1.0)?;
            let a = f(cx, f64::from(alpha));
            let xa = bin(cx, B::Div, x, a)?;
            let neg = exp_m1(cx, xa, alpha)?;
            let zero = f(cx, 0.0);
            let lo = bin(cx, B::Min, neg, zero)?;
            let hi = un(cx, U::Relu, x)?;
            cx.emit_out(Op::Binary(B::Add), &[hi, lo], 0)?
        }
        "Softplus" => {
            let terms = softplus_terms(cx, x)?;
            cx.emit_out(Op::Binary(B::Add), &terms, 0)?
        }
        "Softsign" => {
            let a = un(cx, U::Abs, x)?;
            let one = f(cx, 1.0);
            let d = bin(cx, B::Add, a, one)?;
            cx.emit_out(Op::Binary(B::Div), &[x, d], 0)?
        }
        "ThresholdedRelu" => {
            let alpha = cx.attrs.float_or("alpha", 1.0)?;
            let a = f(cx, f64::from(alpha));
            let c = cmp(cx, CmpOp::Greater, x, a)?;
            let zero = f(cx, 0.0);
            cx.emit_out(Op::Where, &[c, x, zero], 0)?
        }
        "HardSwish" => {
            let h = un(cx, U::HardSigmoid { alpha: 1.0 / 6.0, beta: 0.5 }, x)?;
            cx.emit_out(Op::Binary(B::Mul), &[x, h], 0)?
        }
        "Mish" => {
            let sp = softplus_of(cx, x)?;
            let t = un(cx, U::Tanh, sp)?;
            cx.emit_out(Op::Binary(B::Mul), &[x, t], 0)?
        }
        "Gelu" => {
            let approx = cx.attrs.string("approximate")?.unwrap_or_else(|| "none".into());
            let inner = match approx.as_str() {
                "none" => {
                    let s = f(cx, std::f64::consts::FRAC_1_SQRT_2);
                    let xs = bin(cx, B::Mul, x, s)?;
                    un(cx, U::Erf, xs)?
                }
                "tanh" => {
                    let x2 = bin(cx, B::Mul, x, x)?;
                    let x3 = bin(cx, B::Mul, x2, x)?;
                    let c = f(cx, 0.044715);
                    let cx3 = bin(cx, B::Mul, x3, c)?;
                    let s = bin(cx, B::Add, x, cx3)?;
                    let k = f(cx, (2.0 / std::f64::consts::PI).sqrt());
                    let ks = bin(cx, B::Mul, s, k)?;
                    un(cx, U::Tanh, ks)?
                }
                other => return invalid(format!("attribute `approximate` = {other:?} is not none or tanh")),
            };
            let one = f(cx, 1.0);
            let p = bin(cx, B::Add, inner, one)?;
            let half = f(cx, 0.5);
            let hx = bin(cx, B::Mul, x, half)?;
            cx.emit_out(Op::Binary(B::Mul), &[hx, p], 0)?
        }
        "Swish" => {
            let alpha = cx.attrs.float_or("alpha", 1.0)?;
            let a = f(cx, f64::from(alpha));
            let ax = bin(cx, B::Mul, x, a)?;
            let s = un(cx, U::Sigmoid, ax)?;
            cx.emit_out(Op::Binary(B::Mul), &[x, s], 0)?
        }
        other => return invalid(format!("{other} is not an activation")),
    };
    Ok(vec![y])
}

/// SwiGLU: `a · sigmoid(alpha · a) · b`.
pub(super) fn swiglu(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let a = float_x(cx)?;
    let b = cx.input(1)?;
    let alpha = cx.attrs.float_or("alpha", 1.0)?;
    let k = scalar(cx, DType::F32, f64::from(alpha));
    let ak = bin(cx, B::Mul, a, k)?;
    let s = un(cx, U::Sigmoid, ak)?;
    let sw = bin(cx, B::Mul, a, s)?;
    Ok(vec![cx.emit_out(Op::Binary(B::Mul), &[sw, b], 0)?])
}

/// PRelu: `x < 0 ? slope * x : x`, the slope broadcast to x (unidirectionally). Before
/// opset 7, a 1-D slope of length C applies per channel (axis 1).
pub(super) fn prelu(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, mut slope) = (cx.input(0)?, cx.input(1)?);
    let (xs, ss) = (cx.shape(x), cx.shape(slope));
    if cx.opset < 7 && ss.len() == 1 && xs.len() > 2 && ss[0] == xs[1] && ss[0] != 1 {
        let mut shape = vec![ss[0]];
        shape.extend(std::iter::repeat_n(1, xs.len() - 2));
        slope = reshape(cx, slope, shape)?;
    }
    let d = cx.ty(x).dtype;
    if d == DType::Bool {
        return invalid("PRelu on bool");
    }
    let zero = scalar(cx, d, 0.0);
    let c = cmp(cx, CmpOp::Less, x, zero)?;
    let m = bin(cx, B::Mul, x, slope)?;
    let y = cx.emit_out(Op::Where, &[c, m, x], 0)?;
    if cx.shape(y) != xs {
        return invalid(format!("slope of shape {ss:?} does not broadcast to X of shape {xs:?}"));
    }
    Ok(vec![y])
}

/// Shrink: `x < -lambd ? x + bias : x > lambd ? x - bias : 0`.
pub(super) fn shrink(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let d = cx.ty(x).dtype;
    if d == DType::Bool {
        return invalid("Shrink on bool");
    }
    let bias = f64::from(cx.attrs.float_or("bias", 0.0)?);
    let lambd = f64::from(cx.attrs.float_or("lambd", 0.5)?);
    let (nl, l, b, zero) = (scalar(cx, d, -lambd), scalar(cx, d, lambd), scalar(cx, d, bias), scalar(cx, d, 0.0));
    let lo = cmp(cx, CmpOp::Less, x, nl)?;
    let hi = cmp(cx, CmpOp::Greater, x, l)?;
    let xp = bin(cx, B::Add, x, b)?;
    let xm = bin(cx, B::Sub, x, b)?;
    let w = tmp(cx, Op::Where, &[hi, xm, zero], "w")?;
    Ok(vec![cx.emit_out(Op::Where, &[lo, xp, w], 0)?])
}

/// Hardmax: one-hot of the first maximum along `axis` (opset 13+), or along the flattened
/// trailing axes `axis..` before (default axis 1).
pub(super) fn hardmax(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    if cx.ty(x).dtype != DType::F32 {
        return unsupported(format!("Hardmax on {} (only float32)", cx.ty(x).dtype));
    }
    let shape = cx.shape(x);
    if shape.is_empty() {
        return invalid("input must have rank >= 1");
    }
    let modern = cx.opset >= 13;
    let axis = norm_axis(cx.attrs.int_or("axis", if modern { -1 } else { 1 })?, shape.len(), "axis")?;
    let (v, a) = if modern {
        (x, axis)
    } else {
        let n = shape[..axis].iter().product::<usize>();
        let d = shape[axis..].iter().product::<usize>();
        (reshape(cx, x, vec![n, d])?, 1)
    };
    let vs = cx.shape(v);
    let d = vs[a];
    let max = tmp(cx, Op::Reduce { op: ReduceOp::Max, axes: vec![a], keepdims: true }, &[v], "max")?;
    let is_max = cmp(cx, CmpOp::Equal, v, max)?;
    let mut rs = vec![1; vs.len()];
    rs[a] = d;
    let r: Vec<f64> = (0..d).map(|i| i as f64).collect();
    let range = konst_as(cx, DType::I64, rs, &r);
    let big = scalar(cx, DType::I64, d as f64);
    let cand = tmp(cx, Op::Where, &[is_max, range, big], "candidates")?;
    let first = tmp(cx, Op::Reduce { op: ReduceOp::Min, axes: vec![a], keepdims: true }, &[cand], "argmax")?;
    let hot = cmp(cx, CmpOp::Equal, range, first)?;
    if modern {
        return Ok(vec![cx.emit_out(Op::cast(DType::F32), &[hot], 0)?]);
    }
    let f = tmp(cx, Op::cast(DType::F32), &[hot], "hardmax")?;
    Ok(vec![cx.emit_out(Op::Reshape { shape }, &[f], 0)?])
}

/// Softmax / LogSoftmax. Opset 13+: along one axis (default -1). Before 13 (default axis 1)
/// the input is coerced to 2-D `[prod(dims[..axis]), prod(dims[axis..])]`, normalized along
/// the second axis, and reshaped back.
pub(super) fn softmax(cx: &mut NodeCx, log: bool) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let shape = cx.shape(x);
    let rank = shape.len();
    if rank == 0 {
        return invalid("input must have rank >= 1");
    }
    let make = |axis| {
        if log {
            Op::LogSoftmax { axis }
        } else {
            Op::Softmax { axis }
        }
    };
    let modern = cx.opset >= 13;
    let axis = norm_axis(cx.attrs.int_or("axis", if modern { -1 } else { 1 })?, rank, "axis")?;
    if modern || shape[axis + 1..].iter().all(|&d| d == 1) {
        return Ok(vec![cx.emit_out(make(axis), &[x], 0)?]);
    }
    let n = shape[..axis].iter().product::<usize>();
    let d = shape[axis..].iter().product::<usize>();
    let name = cx.tmp_name("2d");
    let flat = cx.emit(Op::Reshape { shape: vec![n, d] }, &[x], name)?;
    let name = cx.tmp_name(if log { "log_softmax" } else { "softmax" });
    let y = cx.emit(make(1), &[flat], name)?;
    Ok(vec![cx.emit_out(Op::Reshape { shape }, &[y], 0)?])
}
