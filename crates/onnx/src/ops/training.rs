//! Training ops: the optimizers of the `ai.onnx.preview.training` domain (Adagrad, Momentum,
//! Adam) as compositions of elementwise ops, one update step of every tensor they are given;
//! the losses NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (a one-hot Where, sums
//! and LogSoftmax); and Dropout (the identity in inference, with its all-true mask; training
//! mode with a nonzero ratio, whose output is random, is unsupported).

use super::builders::{bin, cmp, float_x, scalar, tmp, un};
use super::{invalid, unsupported, NodeCx, OpError, OpResult, FOLD_LIMIT_BYTES};
use crate::data::checked_numel;
use kiln_ir::{BinaryOp as B, CmpOp, DType, Data, Op, ReduceOp, Tensor, UnaryOp as U, ValueId};

/// `a * x + b * y` with scalar constants `a` and `b` (a term with a zero factor dropped).
fn axpby(cx: &mut NodeCx, a: f64, x: ValueId, b: f64, y: ValueId) -> OpResult<ValueId> {
    let term = |cx: &mut NodeCx, k: f64, v: ValueId| -> OpResult<ValueId> {
        if k == 1.0 {
            return Ok(v);
        }
        let k = scalar(cx, DType::F32, k);
        bin(cx, B::Mul, k, v)
    };
    match (a == 0.0, b == 0.0) {
        (true, _) => term(cx, b, y),
        (false, true) => term(cx, a, x),
        (false, false) => {
            let (p, q) = (term(cx, a, x)?, term(cx, b, y)?);
            bin(cx, B::Add, p, q)
        }
    }
}

/// `T > 0 ? a : b` for the iteration count `t` (an i64 scalar) and f32 values.
fn if_started(cx: &mut NodeCx, t: ValueId, a: ValueId, b: ValueId) -> OpResult<ValueId> {
    let zero = scalar(cx, DType::I64, 0.0);
    let started = cmp(cx, CmpOp::Greater, t, zero)?;
    tmp(cx, Op::Where, &[started, a, b], "started")
}

/// Imports one training-domain node.
pub(crate) fn import(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let op = cx.op_type();
    let per = match op {
        "Adam" => 4,
        "Adagrad" | "Momentum" => 3,
        _ => return unsupported(format!("{op} is not an optimizer Kiln knows")),
    };
    let (r, t) = (cx.input(0)?, cx.input(1)?);
    if cx.inputs.len() < 2 + per || !(cx.inputs.len() - 2).is_multiple_of(per) {
        return invalid(format!("{op} takes R, T and {per} tensors per optimized tensor"));
    }
    if cx.ty(t).dtype != DType::I64 || cx.ty(r).dtype != DType::F32 {
        return unsupported(format!(
            "{op} with R of {} and T of {} (float32 and int64)",
            cx.ty(r).dtype,
            cx.ty(t).dtype
        ));
    }
    let n = (cx.inputs.len() - 2) / per;
    let norm = f64::from(cx.attrs.float_or("norm_coefficient", 0.0)?);
    let mut outs: Vec<Vec<ValueId>> = vec![Vec::new(); per - 1];
    for i in 0..n {
        let (x, g) = (cx.input(2 + i)?, cx.input(2 + n + i)?);
        if cx.ty(x).dtype != DType::F32 {
            return unsupported(format!("{op} on {} tensors (only float32)", cx.ty(x).dtype));
        }
        let g_reg = axpby(cx, norm, x, 1.0, g)?;
        let step: Vec<ValueId> = match op {
            "Adagrad" => {
                let h = cx.input(2 + 2 * n + i)?;
                let decay = f64::from(cx.attrs.float_or("decay_factor", 0.0)?);
                let eps = scalar(cx, DType::F32, f64::from(cx.attrs.float_or("epsilon", 1e-6)?));
                // r / (1 + t * decay)
                let tf = tmp(cx, Op::cast(DType::F32), &[t], "t")?;
                let one = scalar(cx, DType::F32, 1.0);
                let denom = axpby(cx, decay, tf, 1.0, one)?;
                let rr = bin(cx, B::Div, r, denom)?;
                let g2 = bin(cx, B::Mul, g_reg, g_reg)?;
                let h_new = bin(cx, B::Add, h, g2)?;
                let hs = un(cx, U::Sqrt, h_new)?;
                let hs = bin(cx, B::Add, hs, eps)?;
                let upd = bin(cx, B::Mul, rr, g_reg)?;
                let upd = bin(cx, B::Div, upd, hs)?;
                vec![bin(cx, B::Sub, x, upd)?, h_new]
            }
            "Momentum" => {
                let v = cx.input(2 + 2 * n + i)?;
                let alpha = f64::from(cx.attrs.float_or("alpha", 0.0)?);
                let beta = f64::from(cx.attrs.float_or("beta", 0.0)?);
                let nesterov = match cx.attrs.string("mode")?.as_deref() {
                    Some("standard") | None => false,
                    Some("nesterov") => true,
                    Some(m) => return invalid(format!("attribute `mode` = {m:?} is not standard or nesterov")),
                };
                let (b, one) = (scalar(cx, DType::F32, beta), scalar(cx, DType::F32, 1.0));
                let b_adj = if_started(cx, t, b, one)?;
                let bg = bin(cx, B::Mul, b_adj, g_reg)?;
                let av = axpby(cx, alpha, v, 0.0, v)?;
                let v_new = bin(cx, B::Add, av, bg)?;
                let dir = if nesterov { axpby(cx, 1.0, g_reg, alpha, v_new)? } else { v_new };
                let upd = bin(cx, B::Mul, r, dir)?;
                vec![bin(cx, B::Sub, x, upd)?, v_new]
            }
            _ => {
                let (v, h) = (cx.input(2 + 2 * n + i)?, cx.input(2 + 3 * n + i)?);
                let alpha = f64::from(cx.attrs.float_or("alpha", 0.9)?);
                let beta = f64::from(cx.attrs.float_or("beta", 0.999)?);
                let eps = scalar(cx, DType::F32, f64::from(cx.attrs.float_or("epsilon", 1e-6)?));
                let post = f64::from(cx.attrs.float_or("norm_coefficient_post", 0.0)?);
                let v_new = axpby(cx, alpha, v, 1.0 - alpha, g_reg)?;
                let g2 = bin(cx, B::Mul, g_reg, g_reg)?;
                let h_new = axpby(cx, beta, h, 1.0 - beta, g2)?;
                let hs = un(cx, U::Sqrt, h_new)?;
                let hs = bin(cx, B::Add, hs, eps)?;
                // r * sqrt(1 - beta^t) / (1 - alpha^t) once started, r before.
                let tf = tmp(cx, Op::cast(DType::F32), &[t], "t")?;
                let one = scalar(cx, DType::F32, 1.0);
                let (a, b) = (scalar(cx, DType::F32, alpha), scalar(cx, DType::F32, beta));
                let at = bin(cx, B::Pow, a, tf)?;
                let bt = bin(cx, B::Pow, b, tf)?;
                let num = bin(cx, B::Sub, one, bt)?;
                let num = un(cx, U::Sqrt, num)?;
                let den = bin(cx, B::Sub, one, at)?;
                let ra = bin(cx, B::Mul, r, num)?;
                let ra = bin(cx, B::Div, ra, den)?;
                let r_adj = if_started(cx, t, ra, r)?;
                let q = bin(cx, B::Div, v_new, hs)?;
                let upd = bin(cx, B::Mul, r_adj, q)?;
                let x_new = bin(cx, B::Sub, x, upd)?;
                let x_final = axpby(cx, 1.0 - post, x_new, 0.0, x_new)?;
                vec![x_final, v_new, h_new]
            }
        };
        for (k, s) in step.into_iter().enumerate() {
            outs[k].push(s);
        }
    }
    // Outputs: every new X, then every new V (and H), each named after its ONNX output.
    let flat: Vec<ValueId> = outs.into_iter().flatten().collect();
    let mut named = Vec::with_capacity(flat.len());
    for (k, v) in flat.into_iter().enumerate() {
        named.push(cx.emit_out(Op::Identity, &[v], k)?);
    }
    Ok(named)
}

/// NegativeLogLikelihoodLoss on `input` (log-probabilities `[N, C, d…]`), as the ONNX
/// reference computes it: `-input[n, target[n, d…], d…]`, weighted by `weight[target]`, zero
/// where the target is `ignore_index`; reduced to the mean (over the weights when there are
/// any), the sum, or not at all. Picking the target's class is a one-hot Where and a sum
/// over the class axis.
fn nll(cx: &mut NodeCx, input: ValueId, target: ValueId, weight: Option<ValueId>) -> OpResult<ValueId> {
    let xs = cx.shape(input);
    let ts = cx.shape(target);
    let td = cx.ty(target).dtype;
    if xs.len() < 2 || ts.len() + 1 != xs.len() || ts[0] != xs[0] || ts[1..] != xs[2..] || !td.is_int() {
        return invalid(format!("input {xs:?} and integer target {ts:?} do not match ([N, C, d…] and [N, d…])"));
    }
    let c = xs[1];
    let reduction = cx.attrs.string("reduction")?.unwrap_or_else(|| "mean".into());
    if !matches!(reduction.as_str(), "none" | "sum" | "mean") {
        return invalid(format!("attribute `reduction` = {reduction:?} is not none, sum or mean"));
    }
    let ignore = cx.attrs.int("ignore_index")?;
    let mut cs = vec![1; xs.len()];
    cs[1] = c;
    let classes: Vec<f64> = (0..c).map(|i| i as f64).collect();
    let classes = super::builders::konst_as(cx, td, cs, &classes);
    let mut t1 = ts.clone();
    t1.insert(1, 1);
    let tr = super::builders::reshape(cx, target, t1)?;
    let onehot = cmp(cx, CmpOp::Equal, tr, classes)?;
    let zero = scalar(cx, DType::F32, 0.0);
    let sum_c = Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdims: false };
    let sel = tmp(cx, Op::Where, &[onehot, input, zero], "picked")?;
    let picked = tmp(cx, sum_c.clone(), &[sel], "picked")?;
    let mut loss = un(cx, U::Neg, picked)?;
    let mut gw = match weight {
        Some(w) => {
            if cx.shape(w) != [c] {
                return invalid(format!("weight must have shape [{c}], got {:?}", cx.shape(w)));
            }
            let mut wsh = vec![1; xs.len()];
            wsh[1] = c;
            let wr = super::builders::reshape(cx, w, wsh)?;
            let sw = tmp(cx, Op::Where, &[onehot, wr, zero], "weight")?;
            Some(tmp(cx, sum_c, &[sw], "weight")?)
        }
        None => None,
    };
    if let Some(ig) = ignore {
        let igv = scalar(cx, td, ig as f64);
        let is_ig = cmp(cx, CmpOp::Equal, target, igv)?;
        let base = match gw {
            Some(g) => g,
            None => scalar(cx, DType::F32, 1.0),
        };
        gw = Some(tmp(cx, Op::Where, &[is_ig, zero, base], "weight")?);
    }
    let all: Vec<usize> = (0..ts.len()).collect();
    let sum_all = Op::Reduce { op: ReduceOp::Sum, axes: all.clone(), keepdims: false };
    if let Some(g) = gw {
        loss = bin(cx, B::Mul, g, loss)?;
        if reduction == "mean" {
            let num = tmp(cx, sum_all.clone(), &[loss], "loss_sum")?;
            let den = tmp(cx, sum_all, &[g], "weight_sum")?;
            return cx.emit_out(Op::Binary(B::Div), &[num, den], 0);
        }
    }
    match reduction.as_str() {
        "mean" => cx.emit_out(Op::Reduce { op: ReduceOp::Mean, axes: all, keepdims: false }, &[loss], 0),
        "sum" => cx.emit_out(sum_all, &[loss], 0),
        _ => cx.emit_out(Op::Identity, &[loss], 0),
    }
}

pub(super) fn nll_loss(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let x = float_x(cx)?;
    let t = cx.input(1)?;
    let w = cx.opt_input(2);
    Ok(vec![nll(cx, x, t, w)?])
}

/// SoftmaxCrossEntropyLoss: NegativeLogLikelihoodLoss of LogSoftmax over the class axis;
/// output 1 is the log-probabilities.
pub(super) fn softmax_cross_entropy(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(2, "")?;
    let x = cx.input(0)?;
    if cx.ty(x).dtype != DType::F32 || cx.rank(x) < 2 {
        return unsupported(format!("SoftmaxCrossEntropyLoss on {} (only float32 of rank >= 2)", cx.ty(x)));
    }
    let t = cx.input(1)?;
    let w = cx.opt_input(2);
    let logp = if cx.has_output(1) {
        cx.emit_out(Op::LogSoftmax { axis: 1 }, &[x], 1)?
    } else {
        tmp(cx, Op::LogSoftmax { axis: 1 }, &[x], "log_prob")?
    };
    Ok(vec![nll(cx, logp, t, w)?, logp])
}

/// Inference-mode Dropout: the input itself; the optional mask is all ones (all true).
pub(super) fn dropout(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(2, "")?;
    let mut x = cx.input(0)?;
    if cx.opset >= 12 {
        if let Some(t) = cx.opt_const_input(2, "training_mode")? {
            let ratio_in = cx.opt_input(1).filter(|&r| cx.g.const_of(r).is_none());
            if let (true, Some(r)) = (t.to_i64_vec().iter().any(|&v| v != 0), ratio_in) {
                // A ratio given at run time: the identity when it is 0, else a run-time error.
                let zero = scalar(cx, cx.ty(r).dtype, 0.0);
                let ok = tmp(cx, Op::Compare(CmpOp::Equal), &[r, zero], "ratio_is_zero")?;
                let message = format!(
                    "node `{}` (Dropout): training_mode=true with a nonzero ratio (random output) is not supported",
                    cx.name
                );
                x = tmp(cx, Op::Assert { message }, &[x, ok], "checked")?;
            } else if t.to_i64_vec().iter().any(|&v| v != 0) {
                // Training drops at random unless the ratio is 0, when it is the identity.
                let ratio = cx.opt_const_input(1, "ratio")?.map(|r| r.to_f64_vec()).unwrap_or_else(|| vec![0.5]);
                if ratio.iter().any(|&r| r != 0.0) {
                    return unsupported(format!("training_mode=true with ratio {ratio:?} (random output)"));
                }
            }
        }
    }
    let mut outs = vec![x];
    if cx.has_output(1) {
        let ty = cx.ty(x);
        // Dropout-10+ has a bool mask; before, the mask had the input's type.
        let dtype = if cx.opset >= 10 { DType::Bool } else { ty.dtype };
        let one = |n: usize| Data::from_f64s(dtype, &vec![1.0; n]);
        let numel = checked_numel(&ty.shape).ok_or_else(|| OpError::Invalid("input is too large".into()))?;
        let mask = if numel * dtype.size() <= FOLD_LIMIT_BYTES {
            let name = cx.out_name(1);
            cx.konst(name, Tensor::from_data(ty.shape.clone(), one(numel)))
        } else {
            let name = cx.tmp_name("one");
            let one = cx.konst(name, Tensor::from_data(Vec::new(), one(1)));
            cx.emit_out(Op::Expand { shape: ty.shape.clone() }, &[one], 1)?
        };
        outs.push(mask);
    }
    Ok(outs)
}
