//! Elementwise arithmetic and math: the binary and unary HIR ops, Pow, the variadic Sum,
//! Mean, Max and Min, Clip, BitShift, Cast, CastLike and BitCast, and the compositions of
//! elementwise ops: the hyperbolic functions (Sinh, Cosh, Asinh, Acosh, Atanh) and Round
//! (half to even).

use super::builders::{bin, float_x, scalar, un};
use super::{invalid, norm_axis, unsupported, NodeCx, OpResult};
use crate::data::dtype_of;
use crate::proto::tensor_proto::DataType;
use kiln_ir::minifloat::{E8M0Round, MiniFloat};
use kiln_ir::{BinaryOp, BinaryOp as B, DType, Op, Tensor, UnaryOp, UnaryOp as U, ValueId};

/// The two operands of a binary op. Before opset 7, `broadcast=1` with an `axis` aligns B's
/// dims with A's starting at `axis`: B gets trailing unit dims so numpy broadcasting agrees.
pub(super) fn operands(cx: &mut NodeCx) -> OpResult<(ValueId, ValueId)> {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    if cx.opset >= 7 || cx.attrs.int_or("broadcast", 0)? == 0 {
        return Ok((a, b));
    }
    let Some(axis) = cx.attrs.int("axis")? else {
        return Ok((a, b));
    };
    let (ra, mut bs) = (cx.rank(a), cx.shape(b));
    let axis = norm_axis(axis, ra.max(1), "axis")?;
    let Some(trailing) = ra.checked_sub(axis + bs.len()) else {
        return invalid(format!("B of shape {bs:?} does not fit A of rank {ra} at axis {axis}"));
    };
    if trailing == 0 {
        return Ok((a, b));
    }
    bs.extend(std::iter::repeat_n(1, trailing));
    let name = cx.tmp_name("broadcast");
    Ok((a, cx.emit(Op::Reshape { shape: bs }, &[b], name)?))
}

pub(super) fn binary(cx: &mut NodeCx, op: BinaryOp) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (a, b) = operands(cx)?;
    Ok(vec![cx.emit_out(Op::Binary(op), &[a, b], 0)?])
}

/// BitShift: `direction` LEFT or RIGHT (the element type is unsigned in ONNX, so an
/// arithmetic right shift of the widened value is the logical one).
pub(super) fn bit_shift(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let op = match cx.attrs.string("direction")?.as_deref() {
        Some("LEFT") => BinaryOp::Shl,
        Some("RIGHT") => BinaryOp::Shr,
        other => return invalid(format!("attribute `direction` must be LEFT or RIGHT, got {other:?}")),
    };
    binary(cx, op)
}

pub(super) fn unary(cx: &mut NodeCx, op: UnaryOp) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    Ok(vec![cx.emit_out(Op::Unary(op), &[x], 0)?])
}

/// Pow allows an exponent of another dtype (opset 12+): a float base takes any exponent,
/// converted to the base's type; an integer base with a float exponent is computed in float
/// and converted back (the result has the base's type, truncated like the ONNX reference).
pub(super) fn pow(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (a, mut b) = operands(cx)?;
    let (da, db) = (cx.ty(a).dtype, cx.ty(b).dtype);
    if da != db {
        if !da.is_float() && db.is_float() {
            let name = cx.tmp_name("base");
            let af = cx.emit(Op::cast(db), &[a], name)?;
            let name = cx.tmp_name("power");
            let p = cx.emit(Op::Binary(BinaryOp::Pow), &[af, b], name)?;
            return Ok(vec![cx.emit_out(Op::cast(da), &[p], 0)?]);
        }
        let name = cx.tmp_name("exponent");
        b = cx.emit(Op::cast(da), &[b], name)?;
    }
    Ok(vec![cx.emit_out(Op::Binary(BinaryOp::Pow), &[a, b], 0)?])
}

/// Sum, Max, Min (a chain of binary ops) and Mean (Sum, then division by the count).
pub(super) fn variadic(cx: &mut NodeCx, op: BinaryOp, mean: bool) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let xs = cx.all_inputs()?;
    let Some((&first, rest)) = xs.split_first() else {
        return invalid(format!("{} needs at least one input", cx.op_type()));
    };
    let mut acc = first;
    for (i, &x) in rest.iter().enumerate() {
        let last = i + 1 == rest.len() && !mean;
        let name = if last { cx.out_name(0) } else { cx.tmp_name("acc") };
        acc = cx.emit(Op::Binary(op), &[acc, x], name)?;
    }
    if mean {
        let dtype = cx.ty(acc).dtype;
        if dtype != DType::F32 {
            return invalid(format!("Mean needs float inputs, got {dtype}"));
        }
        let name = cx.tmp_name("count");
        let n = cx.konst(name, Tensor::scalar_f32(xs.len() as f32));
        acc = cx.emit_out(Op::Binary(BinaryOp::Div), &[acc, n], 0)?;
    }
    Ok(vec![acc])
}

/// Sinh, Cosh, Asinh, Acosh, Atanh from Exp, Log and Sqrt.
pub(super) fn hyperbolic(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let x = float_x(cx)?;
    let f = |cx: &mut NodeCx, v: f64| scalar(cx, DType::F32, v);
    let y = match cx.op_type() {
        "Sinh" | "Cosh" => {
            let ep = un(cx, U::Exp, x)?;
            let nx = un(cx, U::Neg, x)?;
            let en = un(cx, U::Exp, nx)?;
            let s = bin(cx, if cx.op_type() == "Sinh" { B::Sub } else { B::Add }, ep, en)?;
            let half = f(cx, 0.5);
            cx.emit_out(Op::Binary(B::Mul), &[s, half], 0)?
        }
        "Asinh" => {
            // sign(x) · log(|x| + sqrt(x² + 1)), accurate for negative x.
            let a = un(cx, U::Abs, x)?;
            let x2 = bin(cx, B::Mul, x, x)?;
            let one = f(cx, 1.0);
            let p = bin(cx, B::Add, x2, one)?;
            let r = un(cx, U::Sqrt, p)?;
            let s = bin(cx, B::Add, a, r)?;
            let l = un(cx, U::Log, s)?;
            let sg = un(cx, U::Sign, x)?;
            cx.emit_out(Op::Binary(B::Mul), &[sg, l], 0)?
        }
        "Acosh" => {
            let x2 = bin(cx, B::Mul, x, x)?;
            let one = f(cx, 1.0);
            let m = bin(cx, B::Sub, x2, one)?;
            let r = un(cx, U::Sqrt, m)?;
            let s = bin(cx, B::Add, x, r)?;
            cx.emit_out(Op::Unary(U::Log), &[s], 0)?
        }
        "Atanh" => {
            let one = f(cx, 1.0);
            let p = bin(cx, B::Add, one, x)?;
            let m = bin(cx, B::Sub, one, x)?;
            let q = bin(cx, B::Div, p, m)?;
            let l = un(cx, U::Log, q)?;
            let half = f(cx, 0.5);
            cx.emit_out(Op::Binary(B::Mul), &[l, half], 0)?
        }
        other => return invalid(format!("{other} is not a hyperbolic function")),
    };
    Ok(vec![y])
}

/// Round: to the nearest integer, ties to even.
pub(super) fn round(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let x = float_x(cx)?;
    Ok(vec![cx.emit_out(Op::Unary(U::Round), &[x], 0)?])
}

/// Clip-6: `min`/`max` attributes (defaulting to the f32 range); Clip-11+: optional scalar
/// inputs 1 and 2. Constant bounds give one Clip; bounds computed at run time become
/// `Min(Max(x, min), max)`.
pub(super) fn clip(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    if cx.opset < 11 {
        let lo = f64::from(cx.attrs.float_or("min", f32::MIN)?);
        let hi = f64::from(cx.attrs.float_or("max", f32::MAX)?);
        return Ok(vec![cx.emit_out(Op::Unary(UnaryOp::Clip { lo, hi }), &[x], 0)?]);
    }
    let (lo, hi) = (cx.opt_input(1), cx.opt_input(2));
    let scalar = |cx: &NodeCx, v: Option<ValueId>, role: &str, default: f64| -> OpResult<Option<f64>> {
        let Some(v) = v else { return Ok(Some(default)) };
        let Some(t) = cx.g.const_of(v) else {
            return Ok(None);
        };
        if t.numel() != 1 {
            return invalid(format!("{role} must be a scalar, got {}", t.ty));
        }
        Ok(Some(t.to_f64_vec()[0]))
    };
    match (scalar(cx, lo, "min", f64::NEG_INFINITY)?, scalar(cx, hi, "max", f64::INFINITY)?) {
        (Some(lo), Some(hi)) => Ok(vec![cx.emit_out(Op::Unary(UnaryOp::Clip { lo, hi }), &[x], 0)?]),
        _ => {
            let mut y = x;
            if let Some(lo) = lo {
                let name = if hi.is_some() { cx.tmp_name("max") } else { cx.out_name(0) };
                y = cx.emit(Op::Binary(BinaryOp::Max), &[y, lo], name)?;
            }
            if let Some(hi) = hi {
                y = cx.emit_out(Op::Binary(BinaryOp::Min), &[y, hi], 0)?;
            }
            Ok(vec![y])
        }
    }
}

pub(super) fn cast(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let to = if cx.opset < 6 {
        // Cast-1: the type's name.
        let Some(name) = cx.attrs.string("to")? else {
            return invalid("attribute `to` is missing");
        };
        DataType::from_str_name(&name).ok_or_else(|| format!("attribute `to` = {name:?} is not a data type"))? as i32
    } else {
        let Some(to) = cx.attrs.int("to")? else {
            return invalid("attribute `to` is missing");
        };
        i32::try_from(to).map_err(|_| format!("attribute `to` = {to} is not a data type"))?
    };
    cast_to(cx, x, to)
}

/// CastLike: Cast to the dtype of input 1.
pub(super) fn cast_like(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, like) = (cx.input(0)?, cx.input(1)?);
    let to = cx.ty(like).dtype;
    emit_cast(cx, x, to)
}

/// BitCast (opset 26): the same bytes as another type of the same size.
pub(super) fn bit_cast(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let Some(to) = cx.attrs.int("to")? else {
        return invalid("attribute `to` is missing");
    };
    let to = match dtype_of(i32::try_from(to).map_err(|_| format!("attribute `to` = {to} is not a data type"))?) {
        Ok(d) => d,
        Err(name) => return unsupported(format!("bitcast to {name} (supported: {})", crate::data::SUPPORTED_DTYPES)),
    };
    Ok(vec![cx.emit_out(Op::BitCast { to }, &[x], 0)?])
}

fn cast_to(cx: &mut NodeCx, x: ValueId, to: i32) -> OpResult<Vec<ValueId>> {
    let to = match dtype_of(to) {
        Ok(d) => d,
        Err(name) => return unsupported(format!("cast to {name} (supported: {})", crate::data::SUPPORTED_DTYPES)),
    };
    emit_cast(cx, x, to)
}

/// The Cast, with the `saturate` (Cast-19+, CastLike-19+; default 1) and `round_mode`
/// (Cast-24+, for E8M0 targets; default "up") attributes.
fn emit_cast(cx: &mut NodeCx, x: ValueId, to: DType) -> OpResult<Vec<ValueId>> {
    let saturate = cx.attrs.int("saturate")?.unwrap_or(1) != 0;
    let round = match cx.attrs.string("round_mode")? {
        None => E8M0Round::Up,
        Some(m) => E8M0Round::from_name(&m)
            .ok_or_else(|| format!("attribute `round_mode` = {m:?} is not \"up\", \"down\" or \"nearest\""))?,
    };
    // Keep the flags canonical where they change nothing: only float8/E8M0 targets have a
    // non-saturating form, only E8M0 ones a rounding mode.
    let saturate = saturate || !to.minifloat().is_some_and(|f| f != MiniFloat::E2M1);
    let round = if to == DType::F8E8M0 { round } else { E8M0Round::Up };
    Ok(vec![cx.emit_out(Op::Cast { to, saturate, round }, &[x], 0)?])
}
