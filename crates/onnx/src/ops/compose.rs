//! ONNX ops imported as compositions of existing HIR ops: activations (Elu, Selu, Gelu,
//! SwiGLU…) and normalizations (LayerNormalization, InstanceNormalization…), plus the small
//! builders the other `compose_*` modules share. The rest: data movement in
//! [`super::compose_data`], Resize in [`super::resize`], attention in
//! [`super::attention`], pooling/Einsum in [`super::compose_nn`], RNN/GRU/LSTM in
//! [`super::rnn`], and the remainder (losses, DFT, windows…) in [`super::compose_more`].

use kiln_ir::{BinaryOp as B, CmpOp, DType, Data, Op, ReduceOp, Tensor, UnaryOp as U, ValueId};

use super::{invalid, norm_axes, norm_axis, unsupported, NodeCx, OpResult};

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

/// `log(1 + exp(x))`, computed as `relu(x) + log(1 + exp(-|x|))` (no overflow).
fn softplus_of(cx: &mut NodeCx, x: ValueId) -> OpResult<ValueId> {
    let r = un(cx, U::Relu, x)?;
    let a = un(cx, U::Abs, x)?;
    let na = un(cx, U::Neg, a)?;
    let e = un(cx, U::Exp, na)?;
    let one = scalar(cx, DType::F32, 1.0);
    let e1 = bin(cx, B::Add, e, one)?;
    let l = un(cx, U::Log, e1)?;
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
            let r = un(cx, U::Relu, x)?;
            let a = un(cx, U::Abs, x)?;
            let na = un(cx, U::Neg, a)?;
            let e = un(cx, U::Exp, na)?;
            let one = f(cx, 1.0);
            let e1 = bin(cx, B::Add, e, one)?;
            let l = un(cx, U::Log, e1)?;
            cx.emit_out(Op::Binary(B::Add), &[r, l], 0)?
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

/// LayerNormalization over axes `axis..`, with optional Mean and InvStdDev outputs.
pub(super) fn layer_norm(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(3, "")?;
    let (x, scale) = (cx.input(0)?, cx.input(1)?);
    float_in(cx, x)?;
    let rank = cx.rank(x);
    let axis = norm_axis(cx.attrs.int_or("axis", -1)?, rank, "axis")?;
    let eps = cx.attrs.float_or("epsilon", 1e-5)?;
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
