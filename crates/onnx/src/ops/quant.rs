//! Quantized inference ops as compositions of HIR ops: DequantizeLinear, QuantizeLinear,
//! DynamicQuantizeLinear, MatMulInteger, ConvInteger, QLinearMatMul and QLinearConv.
//!
//! These ops receive their 8/16-bit inputs unwidened (they are listed in `STORAGE_OPS`), and
//! widen them here: integer arithmetic runs in i32 (MatMul included, which is exact), and the
//! float arithmetic follows the precision numpy uses in the ONNX reference implementation, so
//! results match it bit for bit: an f16 multiply is an f32 multiply rounded to f16, and where
//! the reference mixes int32 with float arrays (QLinearMatMul, QLinearConv), numpy computes in
//! f64, and so do these compositions. Rounding to integers is half to even (`np.rint`).
//!
//! Convolutions only run in f32 in Kiln: ConvInteger and QLinearConv convolve the
//! zero-point-shifted integers as f32, which is exact while every partial sum stays below
//! 2^24. A bound on the terms sets how many input channels one f32 Conv may reduce over; a
//! longer reduction is split into such chunks, summed in i32. Only when one input channel's
//! window could already pass 2^24 is the node reported as unsupported.
//!
//! Float8 and int4/int2 quantized types are not Kiln dtypes: models using them fail on the
//! tensor's dtype, and `output_dtype` attributes naming them are unsupported here.

use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, ReduceOp, UnaryOp as U, ValueId};

use super::builders::{bin, cmp, konst_as, reshape, scalar, slice_axis, tmp, un};
use super::{invalid, norm_axis, unsupported, NodeCx, OpResult};
use crate::data::dtype_of;

/// Largest magnitude of every partial sum for which an f32 convolution of integers is exact.
const F32_EXACT: u128 = 1 << 24;

/// `v` cast to `to` (no node when it already has that dtype).
fn cast(cx: &mut NodeCx, v: ValueId, to: DType) -> OpResult<ValueId> {
    if cx.ty(v).dtype == to {
        return Ok(v);
    }
    tmp(cx, Op::cast(to), &[v], "cast")
}

/// `v` (computed in `to.compute()`) rounded to the storage float type `to` and widened back:
/// the result of an op computed in `to`. A no-op for compute types.
fn round_to(cx: &mut NodeCx, v: ValueId, to: DType) -> OpResult<ValueId> {
    if to.is_compute() {
        return Ok(v);
    }
    let n = cast(cx, v, to)?;
    cast(cx, n, to.compute())
}

/// Rounds a float tensor to the nearest integer, ties to even (`np.rint`, ONNX Round).
fn round_even(cx: &mut NodeCx, x: ValueId) -> OpResult<ValueId> {
    un(cx, U::Round, x)
}

/// The range of an integer quantized type.
fn int_range(d: DType) -> Option<(i64, i64)> {
    Some(match d {
        DType::I8 => (-128, 127),
        DType::U8 => (0, 255),
        DType::I16 => (-32768, 32767),
        DType::U16 => (0, 65535),
        DType::I4 => (-8, 7),
        DType::U4 => (0, 15),
        DType::I2 => (-2, 1),
        DType::U2 => (0, 3),
        DType::I32 => (i32::MIN.into(), i32::MAX.into()),
        _ => return None,
    })
}

/// The dtype an attribute names (`None` when absent or 0); unsupported for types Kiln lacks.
fn dtype_attr(cx: &NodeCx, name: &str) -> OpResult<Option<DType>> {
    match cx.attrs.int(name)? {
        None | Some(0) => Ok(None),
        Some(code) => {
            let code = i32::try_from(code).map_err(|_| format!("attribute `{name}` = {code} is not a data type"))?;
            match dtype_of(code) {
                Ok(d) => Ok(Some(d)),
                Err(n) => unsupported(format!("{} with {name} {n}", cx.op_type())),
            }
        }
    }
}

/// A scale or zero point made broadcastable to `shape` (the ONNX reference's `reshape_input`):
/// a scalar or one-element tensor as a scalar; without `block_size`, a 1-D tensor along
/// `axis`; with it, a tensor of `shape`'s rank whose `axis` holds one entry per block,
/// repeated to `shape`.
fn quant_param(cx: &mut NodeCx, p: ValueId, shape: &[usize], axis: i64, block: usize) -> OpResult<ValueId> {
    let ps = cx.shape(p);
    let n: usize = ps.iter().product();
    if ps.is_empty() {
        return Ok(p);
    }
    if n == 1 {
        return reshape(cx, p, vec![]);
    }
    let axis = norm_axis(axis, shape.len(), "axis")?;
    if block == 0 {
        if ps.len() != 1 || ps[0] != shape[axis] {
            return invalid(format!(
                "per-axis parameter of shape {ps:?} does not match axis {axis} of input shape {shape:?}"
            ));
        }
        let mut s = vec![1; shape.len()];
        s[axis] = n;
        return reshape(cx, p, s);
    }
    let mut want = shape.to_vec();
    want[axis] = shape[axis].div_ceil(block);
    if ps != want {
        return invalid(format!(
            "blocked parameter of shape {ps:?} does not fit input shape {shape:?} with block_size {block} on axis {axis}"
        ));
    }
    let idx: Vec<f64> = (0..shape[axis]).map(|i| (i / block) as f64).collect();
    let k = konst_as(cx, DType::I64, vec![shape[axis]], &idx);
    tmp(cx, Op::Gather { axis }, &[p, k], "block")
}

/// `axis` (not yet normalized: it only matters for per-axis and blocked parameters) and
/// `block_size` of a (de)quantization node.
fn axis_block(cx: &NodeCx) -> OpResult<(i64, usize)> {
    let block = cx.attrs.int_or("block_size", 0)?;
    if block < 0 {
        return invalid(format!("attribute `block_size` = {block} is negative"));
    }
    Ok((cx.attrs.int_or("axis", 1)?, block as usize))
}

/// The float type numpy computes `a op b` in, for float (or int32) operands.
fn float_promote(a: DType, b: DType) -> DType {
    match (a, b) {
        _ if a == b && a.is_float() => a,
        (DType::F64, _) | (_, DType::F64) => DType::F64,
        _ if a.is_float() && b.is_float() => DType::F32,
        // int32 with a float32 or float16: float64.
        _ => DType::F64,
    }
}

/// DequantizeLinear: `(x - zero_point) * scale`, in the scale's type (or `output_dtype`).
pub(super) fn dequantize_linear(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, scale) = (cx.input(0)?, cx.input(1)?);
    let zp = cx.opt_input(2);
    let (xd, sd) = (cx.ty(x).dtype, cx.ty(scale).dtype);
    // Small floats: `x * scale` (a float8 zero point must be zero and is not used; float4's is
    // ignored, as in ONNX's reference).
    let small_float = xd.is_float() && xd.compute() == DType::F32 && !matches!(xd, DType::F16 | DType::BF16);
    if !small_float && int_range(xd).is_none() {
        return unsupported(format!("DequantizeLinear of {xd}"));
    }
    let zp = if small_float {
        if let Some(z) = zp.and_then(|z| cx.g.const_of(z)) {
            if xd != DType::F4E2M1 && z.to_f64_vec().iter().any(|&v| v != 0.0) {
                return invalid("a float8 x_zero_point must be zero");
            }
        }
        None
    } else {
        zp
    };
    if !matches!(sd, DType::F32 | DType::F16 | DType::BF16) {
        return invalid(format!("x_scale must be float32, float16 or bfloat16, got {sd}"));
    }
    let out = dtype_attr(cx, "output_dtype")?.unwrap_or(sd);
    if !matches!(out, DType::F32 | DType::F16 | DType::BF16) {
        return unsupported(format!("DequantizeLinear to {out}"));
    }
    let shape = cx.shape(x);
    let (axis, block) = axis_block(cx)?;
    let s = quant_param(cx, scale, &shape, axis, block)?;
    let y = match zp {
        Some(zp) => {
            let zd = cx.ty(zp).dtype;
            if zd != xd {
                return invalid(format!("x_zero_point is {zd}, x is {xd}"));
            }
            let z = quant_param(cx, zp, &shape, axis, block)?;
            if xd == DType::I32 {
                // numpy: x.astype(float32) - int32 array is float64, and so is the product.
                let xf = cast(cx, x, DType::F32)?;
                let xf = cast(cx, xf, DType::F64)?;
                let zf = cast(cx, z, DType::F64)?;
                let d = bin(cx, B::Sub, xf, zf)?;
                let sf = cast(cx, s, DType::F64)?;
                bin(cx, B::Mul, d, sf)?
            } else if let Some(q) = requantized(cx, x).filter(|_| sd == DType::F32) {
                // A QuantizeLinear's result dequantized (a QDQ pair): the same values from its
                // rounded quotient in f32, `(clip(r + zp_q, qmin, qmax) - zp) · scale`, each
                // step exact (integers below 2^21), so that the pair is float arithmetic that
                // fuses with the ops around it (into a convolution's epilogue) instead of
                // integer steps in kernels of their own.
                let mut v = q.rounded;
                if let Some(zq) = q.zero_point {
                    let zf = cast(cx, zq, DType::F32)?;
                    v = bin(cx, B::Add, v, zf)?;
                }
                let c = un(cx, U::Clip { lo: q.lo, hi: q.hi }, v)?;
                let zf = cast(cx, z, DType::F32)?;
                let d = bin(cx, B::Sub, c, zf)?;
                bin(cx, B::Mul, d, s)?
            } else {
                // The difference of 8/16-bit values is exact in i32 and in f32.
                let xi = cast(cx, x, DType::I32)?;
                let zi = cast(cx, z, DType::I32)?;
                let d = bin(cx, B::Sub, xi, zi)?;
                let df = cast(cx, d, DType::F32)?;
                let sf = cast(cx, s, DType::F32)?;
                bin(cx, B::Mul, df, sf)?
            }
        }
        None => {
            let xf = cast(cx, x, DType::F32)?;
            let sf = cast(cx, s, DType::F32)?;
            bin(cx, B::Mul, xf, sf)?
        }
    };
    // (A cast to the type it already has is an Identity, which the simplifier removes.)
    let last = if cx.ty(y).dtype == out { Op::Identity } else { Op::cast(out) };
    Ok(vec![cx.emit_out(last, &[y], 0)?])
}

/// A value [`quantize_linear`] computed from f32: its rounded, bounded quotient
/// `clip(rint(x / scale), ±2^20)` (f32), the i32 zero point added to it if any, and the
/// type's range it is clipped to.
struct Requantized {
    rounded: ValueId,
    zero_point: Option<ValueId>,
    lo: f64,
    hi: f64,
}

/// Whether `v` is the result of [`quantize_linear`]'s integer steps
/// `cast(clip(cast(r, i32) [+ zp], lo, hi))` on an f32 `r` (the graph as that function builds it).
fn requantized(cx: &NodeCx, v: ValueId) -> Option<Requantized> {
    let producer = |v: ValueId| match cx.g.value(v).def {
        kiln_ir::ValueDef::Node(n, _) => Some(cx.g.node(n)),
        _ => None,
    };
    let out = producer(v)?;
    let Op::Cast { .. } = out.op else { return None };
    let clip = producer(out.inputs[0])?;
    let Op::Unary(U::Clip { lo, hi }) = clip.op else { return None };
    let mut at = producer(clip.inputs[0])?;
    let mut zero_point = None;
    if let Op::Binary(B::Add) = at.op {
        cx.g.const_of(at.inputs[1])?;
        zero_point = Some(at.inputs[1]);
        at = producer(at.inputs[0])?;
    }
    let (Op::Cast { to: DType::I32, .. }, r) = (&at.op, at.inputs[0]) else { return None };
    let bounded = producer(r)?;
    let is_round = |v: ValueId| producer(v).is_some_and(|n| n.op == Op::Unary(U::Round));
    let ok = cx.ty(r).dtype == DType::F32
        && bounded.op == Op::Unary(U::Clip { lo: -1_048_576.0, hi: 1_048_576.0 })
        && is_round(bounded.inputs[0]);
    ok.then_some(Requantized { rounded: r, zero_point, lo, hi })
}

/// QuantizeLinear: `saturate(rint(x / scale) + zero_point)` in the zero point's type
/// (`output_dtype`, else uint8).
pub(super) fn quantize_linear(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, scale) = (cx.input(0)?, cx.input(1)?);
    let zp = cx.opt_input(2);
    let (xd, sd) = (cx.ty(x).dtype, cx.ty(scale).dtype);
    if !(xd.is_float() || xd == DType::I32) {
        return invalid(format!("x must be a float or int32 tensor, got {xd}"));
    }
    if !sd.is_float() && sd != DType::I32 {
        return invalid(format!("y_scale must be a float tensor, got {sd}"));
    }
    let attr_out = dtype_attr(cx, "output_dtype")?;
    let out = match (zp, attr_out) {
        (Some(z), a) => {
            let zd = cx.ty(z).dtype;
            if a.is_some_and(|a| a != zd) {
                return invalid(format!("output_dtype {} does not match the zero point's type {zd}", a.unwrap()));
            }
            zd
        }
        (None, Some(a)) => a,
        (None, None) => DType::U8,
    };
    let small_float = out.is_float() && !matches!(out, DType::F32 | DType::F64 | DType::F16 | DType::BF16);
    let range = int_range(out).filter(|_| out != DType::I32);
    if range.is_none() && !small_float {
        return unsupported(format!("QuantizeLinear to {out}"));
    }
    // The type the division is computed in (the reference's `precision`, else numpy's).
    let q = match dtype_attr(cx, "precision")? {
        Some(p) if p.is_float() => p,
        Some(p) => return invalid(format!("precision {p} is not a float type")),
        None => float_promote(xd, sd),
    };
    let qc = q.compute();
    let shape = cx.shape(x);
    let (axis, block) = axis_block(cx)?;
    let s = quant_param(cx, scale, &shape, axis, block)?;
    let xq = cast(cx, x, q)?;
    let xq = cast(cx, xq, qc)?;
    let sq = cast(cx, s, q)?;
    let sq = cast(cx, sq, qc)?;
    let quot = bin(cx, B::Div, xq, sq)?;
    let quot = round_to(cx, quot, q)?;
    if small_float {
        // Float8 and float4: a (saturating) cast; float4 adds its zero point first.
        let saturate = cx.attrs.int_or("saturate", 1)? != 0;
        let mut v = cast(cx, quot, DType::F32)?;
        if let (DType::F4E2M1, Some(zp)) = (out, zp) {
            let z = quant_param(cx, zp, &shape, axis, block)?;
            let zf = cast(cx, z, DType::F32)?;
            v = bin(cx, B::Add, v, zf)?;
        }
        let op = Op::Cast { to: out, saturate, round: kiln_ir::minifloat::E8M0Round::Up };
        return Ok(vec![cx.emit_out(op, &[v], 0)?]);
    }
    let (qmin, qmax) = range.expect("checked above");
    let r = round_even(cx, quot)?;
    // Beyond ±2^20 the result saturates whatever the zero point; bounding first keeps the
    // conversion to i32 in range.
    let r = un(cx, U::Clip { lo: -1_048_576.0, hi: 1_048_576.0 }, r)?;
    let mut ri = cast(cx, r, DType::I32)?;
    if let Some(zp) = zp {
        let z = quant_param(cx, zp, &shape, axis, block)?;
        let zi = cast(cx, z, DType::I32)?;
        ri = bin(cx, B::Add, ri, zi)?;
    }
    let c = un(cx, U::Clip { lo: qmin as f64, hi: qmax as f64 }, ri)?;
    Ok(vec![cx.emit_out(Op::cast(out), &[c], 0)?])
}

/// DynamicQuantizeLinear: uint8 quantization with a scale and zero point from the data's
/// range (extended to include 0); outputs y, y_scale, y_zero_point.
pub(super) fn dynamic_quantize_linear(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(3, "")?;
    let x = cx.input(0)?;
    let xd = cx.ty(x).dtype;
    if xd != DType::F32 {
        return unsupported(format!("DynamicQuantizeLinear on {xd} (only float32)"));
    }
    let axes: Vec<usize> = (0..cx.rank(x)).collect();
    let mx = tmp(cx, Op::Reduce { op: ReduceOp::Max, axes: axes.clone(), keepdims: false }, &[x], "max")?;
    let mn = tmp(cx, Op::Reduce { op: ReduceOp::Min, axes, keepdims: false }, &[x], "min")?;
    let zero = scalar(cx, DType::F32, 0.0);
    let hi = bin(cx, B::Max, mx, zero)?;
    let lo = bin(cx, B::Min, mn, zero)?;
    let diff = bin(cx, B::Sub, hi, lo)?;
    let same = cmp(cx, CmpOp::Equal, hi, lo)?;
    let one = scalar(cx, DType::F32, 1.0);
    let range = tmp(cx, Op::Where, &[same, one, diff], "range")?;
    let qr = scalar(cx, DType::F32, 255.0);
    let scale_name = cx.out_name(1);
    let y_scale = cx.emit(Op::Binary(B::Div), &[range, qr], scale_name)?;
    let ls = bin(cx, B::Div, lo, y_scale)?;
    let izp = bin(cx, B::Sub, zero, ls)?;
    let zp = un(cx, U::Clip { lo: 0.0, hi: 255.0 }, izp)?;
    let zpi = round_even(cx, zp)?;
    let xs = bin(cx, B::Div, x, y_scale)?;
    let xr = round_even(cx, xs)?;
    let xz = bin(cx, B::Add, xr, zpi)?;
    let c = un(cx, U::Clip { lo: 0.0, hi: 255.0 }, xz)?;
    let y = cx.emit_out(Op::cast(DType::U8), &[c], 0)?;
    let z = cx.emit_out(Op::cast(DType::U8), &[zpi], 2)?;
    Ok(vec![y, y_scale, z])
}

/// An 8/16-bit integer operand of the integer ops, checked.
fn int_operand(cx: &NodeCx, v: ValueId, what: &str) -> OpResult<DType> {
    let d = cx.ty(v).dtype;
    if !matches!(d, DType::I8 | DType::U8 | DType::I16 | DType::U16) {
        return unsupported(format!(
            "{} with {what} of type {d} (supported: int8, uint8, int16, uint16)",
            cx.op_type()
        ));
    }
    Ok(d)
}

/// `v - zp` in i32, a 1-D zero point of more than one element shaped by `shape_1d`.
fn shifted(
    cx: &mut NodeCx,
    v: ValueId,
    zp: Option<ValueId>,
    shape_1d: impl Fn(usize) -> Vec<usize>,
) -> OpResult<ValueId> {
    let vi = cast(cx, v, DType::I32)?;
    let Some(zp) = zp else {
        return Ok(vi);
    };
    let zs = cx.shape(zp);
    let n: usize = zs.iter().product();
    let z = if n == 1 {
        reshape(cx, zp, vec![])?
    } else if zs.len() == 1 {
        reshape(cx, zp, shape_1d(n))?
    } else {
        zp
    };
    let zi = cast(cx, z, DType::I32)?;
    let d = bin(cx, B::Sub, vi, zi)?;
    if cx.shape(d) != cx.shape(vi) {
        return invalid(format!("zero point of shape {zs:?} does not broadcast to {:?}", cx.shape(vi)));
    }
    Ok(d)
}

/// `A - a_zero_point` and `B - b_zero_point` for a matrix product (a 1-D zero point is per
/// row of A, per column of B).
fn matmul_operands(
    cx: &mut NodeCx,
    a: ValueId,
    azp: Option<ValueId>,
    b: ValueId,
    bzp: Option<ValueId>,
) -> OpResult<(ValueId, ValueId)> {
    let ar = cx.rank(a);
    let ai = shifted(cx, a, azp, |n| if ar >= 2 { vec![n, 1] } else { vec![n] })?;
    let bi = shifted(cx, b, bzp, |n| vec![n])?;
    Ok((ai, bi))
}

/// MatMulInteger: `(A - a_zero_point) @ (B - b_zero_point)` in int32.
pub(super) fn matmul_integer(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    int_operand(cx, a, "A")?;
    int_operand(cx, b, "B")?;
    let (azp, bzp) = (cx.opt_input(2), cx.opt_input(3));
    let (ai, bi) = matmul_operands(cx, a, azp, b, bzp)?;
    Ok(vec![cx.emit_out(Op::MatMul, &[ai, bi], 0)?])
}

/// The largest `|v - zp|` for `v` of type `d` (`v` itself when it is a constant).
fn max_abs_shifted(cx: &NodeCx, shifted: ValueId, d: DType, zp: Option<ValueId>) -> u128 {
    if let Some(t) = cx.g.const_of(shifted) {
        return t.to_i64_vec().iter().map(|v| v.unsigned_abs() as u128).max().unwrap_or(0);
    }
    let (lo, hi) = int_range(d).unwrap_or((i32::MIN.into(), i32::MAX.into()));
    let zps: Vec<i64> = match zp.and_then(|z| cx.g.const_of(z)) {
        Some(t) => t.to_i64_vec(),
        // An unknown zero point of the same type: anywhere in the range.
        None if zp.is_some() => vec![lo, hi],
        None => vec![0],
    };
    zps.iter().map(|&z| (hi - z).unsigned_abs().max((z - lo).unsigned_abs()) as u128).max().unwrap_or(0)
}

/// The convolution of `x - x_zero_point` with `w - w_zero_point` (per output channel when
/// 1-D) in i32, from f32 Convs (with the node's attributes) of the integers.
///
/// An f32 sum of integers is exact while every partial sum stays below 2^24; each term of
/// the reduction is at most `max|x'| · max|w'|`. When the whole reduction (C/group input
/// channels times the kernel window) could pass that, the input channels of every group are
/// split into chunks that cannot, each chunk is convolved on its own and converted to i32,
/// and the chunks are summed in i32.
fn conv_shifted(
    cx: &mut NodeCx,
    x: ValueId,
    xzp: Option<ValueId>,
    w: ValueId,
    wzp: Option<ValueId>,
) -> OpResult<ValueId> {
    let xd = int_operand(cx, x, "x")?;
    let wd = int_operand(cx, w, "w")?;
    let (xs, ws) = (cx.shape(x), cx.shape(w));
    if ws.len() < 3 || xs.len() != ws.len() {
        return invalid(format!("X of shape {xs:?} and W of shape {ws:?} need the same rank, at least 3"));
    }
    let wr = ws.len();
    let xi = shifted(cx, x, xzp, |n| vec![n])?;
    let wi = shifted(cx, w, wzp, |n| {
        let mut s = vec![n];
        s.extend(std::iter::repeat_n(1, wr - 1));
        s
    })?;
    let cg = ws[1];
    let window: u128 = ws[2..].iter().map(|&d| d as u128).product();
    let (mx, mw) = (max_abs_shifted(cx, xi, xd, xzp), max_abs_shifted(cx, wi, wd, wzp));
    let per_channel = window.saturating_mul(mx).saturating_mul(mw);
    if per_channel >= F32_EXACT {
        return unsupported(format!(
            "{}: Kiln convolves in f32, which is exact only while partial sums stay below 2^24; here \
             one input channel's {window} products of up to {mx}·{mw} may reach {per_channel}",
            cx.op_type()
        ));
    }
    // Input channels per chunk (every group's channels are split the same way).
    let chunk = ((F32_EXACT - 1) / per_channel.max(1)).min(cg as u128).max(1) as usize;
    let group = cx.attrs.int_or("group", 1)?;
    let g = usize::try_from(group).ok().filter(|&g| g >= 1 && xs[1] == g * cg);
    let Some(g) = g else {
        return invalid(format!("X of shape {xs:?} does not have group {group} times the {cg} channels of W"));
    };
    let xf = cast(cx, xi, DType::F32)?;
    let wf = cast(cx, wi, DType::F32)?;
    // X as [N, G, C/G, …] to slice every group's channels at once.
    let mut xg_shape = vec![xs[0], g, cg];
    xg_shape.extend_from_slice(&xs[2..]);
    let xg = if chunk < cg { reshape(cx, xf, xg_shape)? } else { xf };
    let out = cx.out_name(0);
    let mut acc: Option<ValueId> = None;
    for (j, start) in (0..cg).step_by(chunk).enumerate() {
        let len = chunk.min(cg - start);
        let (xc, wc) = if chunk < cg {
            let xs3 = slice_axis(cx, xg, 2, start, len)?;
            let mut shape = vec![xs[0], g * len];
            shape.extend_from_slice(&xs[2..]);
            let xc = reshape(cx, xs3, shape)?;
            (xc, slice_axis(cx, wf, 1, start, len)?)
        } else {
            (xf, wf)
        };
        let saved = std::mem::replace(&mut cx.inputs, vec![Some(xc), Some(wc)]);
        let conv = super::conv::conv(cx);
        cx.inputs = saved;
        let yf = conv?[0];
        cx.g.value_mut(yf).name = format!("{out}/f32_{j}");
        let yi = cast(cx, yf, DType::I32)?;
        acc = Some(match acc {
            Some(a) => bin(cx, B::Add, a, yi)?,
            None => yi,
        });
    }
    acc.ok_or_else(|| super::OpError::Invalid(format!("W of shape {ws:?} has no input channels")))
}

/// ConvInteger: the convolution of `x - x_zero_point` with `w - w_zero_point`, in int32.
pub(super) fn conv_integer(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let (xzp, wzp) = (cx.opt_input(2), cx.opt_input(3));
    let y = conv_shifted(cx, x, xzp, w, wzp)?;
    // A fresh value (a Cast or an Add): it takes the output's name.
    cx.g.value_mut(y).name = cx.out_name(0);
    Ok(vec![y])
}

/// `rint(v · scale + zero_point)` saturated to `out` (computed in f64, as numpy does for an
/// int32 tensor times a float one).
fn requantize(cx: &mut NodeCx, v: ValueId, scale: ValueId, zp: Option<ValueId>, out: DType) -> OpResult<ValueId> {
    let Some((qmin, qmax)) = int_range(out).filter(|_| out != DType::I32) else {
        return unsupported(format!("{} to {out}", cx.op_type()));
    };
    let vf = cast(cx, v, DType::F64)?;
    let sf = cast(cx, scale, DType::F64)?;
    let mut d = bin(cx, B::Mul, vf, sf)?;
    if let Some(z) = zp {
        let zf = cast(cx, z, DType::F64)?;
        d = bin(cx, B::Add, d, zf)?;
    }
    let r = round_even(cx, d)?;
    let c = un(cx, U::Clip { lo: qmin as f64, hi: qmax as f64 }, r)?;
    cx.emit_out(Op::cast(out), &[c], 0)
}

/// A float scale operand: its dtype.
fn scale_type(cx: &NodeCx, v: ValueId, what: &str) -> OpResult<DType> {
    let d = cx.ty(v).dtype;
    if !matches!(d, DType::F32 | DType::F16 | DType::BF16) {
        return invalid(format!("{what} must be float32, float16 or bfloat16, got {d}"));
    }
    Ok(d)
}

/// `a op b` computed in the (common) scale type `d`, rounding like numpy does.
fn scale_op(cx: &mut NodeCx, op: B, a: ValueId, b: ValueId, d: DType) -> OpResult<ValueId> {
    let (a, b) = (cast(cx, a, d.compute())?, cast(cx, b, d.compute())?);
    let r = bin(cx, op, a, b)?;
    round_to(cx, r, d)
}

/// A per-row (1-D, more than one element) parameter of a matrix operand of rank `rank` as a
/// column `[n, 1]`; others unchanged.
fn per_row(cx: &mut NodeCx, p: ValueId, rank: usize) -> OpResult<ValueId> {
    let s = cx.shape(p);
    if s.len() == 1 && s[0] > 1 && rank >= 2 {
        return reshape(cx, p, vec![s[0], 1]);
    }
    Ok(p)
}

/// QLinearMatMul: `rint((A - a_zp) @ (B - b_zp) · a_scale · b_scale / y_scale + y_zp)`,
/// saturated to y_zero_point's type.
pub(super) fn qlinear_matmul(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (a, a_scale, b, b_scale, y_scale) = (cx.input(0)?, cx.input(1)?, cx.input(3)?, cx.input(4)?, cx.input(6)?);
    let (azp, bzp, yzp) = (cx.opt_input(2), cx.opt_input(5), cx.opt_input(7));
    let ad = int_operand(cx, a, "a")?;
    int_operand(cx, b, "b")?;
    let sd = scale_type(cx, a_scale, "a_scale")?;
    for (v, what) in [(b_scale, "b_scale"), (y_scale, "y_scale")] {
        if scale_type(cx, v, what)? != sd {
            return invalid(format!("{what} has another type than a_scale ({sd})"));
        }
    }
    let (ai, bi) = matmul_operands(cx, a, azp, b, bzp)?;
    let c = tmp(cx, Op::MatMul, &[ai, bi], "mm")?;
    let ar = cx.rank(a);
    let a_s = per_row(cx, a_scale, ar)?;
    let ab = scale_op(cx, B::Mul, a_s, b_scale, sd)?;
    let m = scale_op(cx, B::Div, ab, y_scale, sd)?;
    let out = match yzp {
        Some(z) => cx.ty(z).dtype,
        None => ad,
    };
    Ok(vec![requantize(cx, c, m, yzp, out)?])
}

/// QLinearConv: the integer convolution of the shifted operands plus the int32 bias,
/// requantized with `x_scale · w_scale / y_scale` (w_scale per output channel when 1-D).
pub(super) fn qlinear_conv(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, x_scale, w, w_scale, y_scale) = (cx.input(0)?, cx.input(1)?, cx.input(3)?, cx.input(4)?, cx.input(6)?);
    let (xzp, wzp, yzp, bias) = (cx.opt_input(2), cx.opt_input(5), cx.opt_input(7), cx.opt_input(8));
    let xd = cx.ty(x).dtype;
    let sd = scale_type(cx, x_scale, "x_scale")?;
    for (v, what) in [(w_scale, "w_scale"), (y_scale, "y_scale")] {
        if scale_type(cx, v, what)? != sd {
            return invalid(format!("{what} has another type than x_scale ({sd})"));
        }
    }
    let mut y = conv_shifted(cx, x, xzp, w, wzp)?;
    let rank = cx.rank(y);
    // A per-channel parameter `[M]` as `[M, 1, …]` against the `[N, M, …]` result.
    let channel = |cx: &mut NodeCx, p: ValueId| -> OpResult<ValueId> {
        let s = cx.shape(p);
        if s.len() == 1 && s[0] > 1 {
            let mut t = vec![s[0]];
            t.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
            return reshape(cx, p, t);
        }
        Ok(p)
    };
    if let Some(b) = bias {
        if cx.ty(b).dtype != DType::I32 {
            return invalid(format!("B must be int32, got {}", cx.ty(b).dtype));
        }
        let bc = channel(cx, b)?;
        y = bin(cx, B::Add, y, bc)?;
    }
    let ws = channel(cx, w_scale)?;
    let xw = scale_op(cx, B::Mul, x_scale, ws, sd)?;
    let m = scale_op(cx, B::Div, xw, y_scale, sd)?;
    let out = match yzp {
        Some(z) => cx.ty(z).dtype,
        None => xd,
    };
    // The reference saturates to int8 or else uint8.
    let out_range = if out == DType::I8 { DType::I8 } else { DType::U8 };
    if out != out_range {
        return unsupported(format!("QLinearConv to {out} (supported: int8, uint8)"));
    }
    Ok(vec![requantize(cx, y, m, yzp, out)?])
}
