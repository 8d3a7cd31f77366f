//! The optimizer ops of the `ai.onnx.preview.training` domain (Adagrad, Momentum, Adam) as
//! compositions of elementwise ops: one update step of every tensor they are given.

use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, UnaryOp as U, ValueId};

use super::compose::{bin, cmp, scalar, tmp, un};
use super::{invalid, unsupported, NodeCx, OpResult};

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
