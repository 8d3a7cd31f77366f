//! Neural-network ops: Conv, pools, BatchNormalization, LRN, Softmax, Dropout.

use kiln_ir::{DType, Data, Op, ReduceOp, Tensor, ValueId, Window};

use super::{invalid, norm_axis, unsupported, NodeCx, OpError, OpResult, FOLD_LIMIT_BYTES};
use crate::data::{checked_numel, MAX_ELEMS};

/// The largest kernel, stride, dilation or pad accepted (keeps window arithmetic in range).
const MAX_WINDOW_ATTR: i64 = 1 << 31;

/// An attribute list of `n` values (one per spatial axis), each in `min..=MAX_WINDOW_ATTR`.
fn list(cx: &NodeCx, name: &str, n: usize, default: usize, min: i64) -> OpResult<Vec<usize>> {
    match cx.attrs.ints(name)? {
        None => Ok(vec![default; n]),
        Some(v) => {
            if v.len() != n {
                return invalid(format!("attribute `{name}` = {v:?} must have {n} values"));
            }
            if v.iter().any(|&d| d < min || d > MAX_WINDOW_ATTR) {
                return invalid(format!("attribute `{name}` = {v:?} is out of range"));
            }
            Ok(v.iter().map(|&d| d as usize).collect())
        }
    }
}

/// Resolves kernel, strides, dilations and pads (auto_pad included) of a window over the
/// spatial extents `spatial` (1 or 2 axes). `kernel` is the kernel shape when the op's
/// weights give it. A 1-D window becomes a 2-D one with a unit leading axis.
fn window(cx: &NodeCx, spatial: &[usize], kernel: Option<Vec<usize>>) -> OpResult<Window> {
    let (kernel, strides, dilations, pads) = window_parts(cx, spatial, kernel)?;
    let n = spatial.len();
    Ok(if n == 1 {
        Window {
            kernel: [1, kernel[0]],
            strides: [1, strides[0]],
            pads: [0, pads[0], 0, pads[1]],
            dilations: [1, dilations[0]],
        }
    } else {
        Window {
            kernel: [kernel[0], kernel[1]],
            strides: [strides[0], strides[1]],
            pads: [pads[0], pads[1], pads[2], pads[3]],
            dilations: [dilations[0], dilations[1]],
        }
    })
}

/// Per-axis window attributes: (kernel, strides, dilations, pads as `[begin…, end…]`).
type WindowParts = (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>);

fn window_parts(cx: &NodeCx, spatial: &[usize], kernel: Option<Vec<usize>>) -> OpResult<WindowParts> {
    let n = spatial.len();
    let kernel = if cx.attrs.has("kernel_shape") {
        list(cx, "kernel_shape", n, 1, 1)?
    } else {
        match kernel {
            Some(k) if k.len() == n && k.iter().all(|&d| (1..=MAX_WINDOW_ATTR as usize).contains(&d)) => k,
            Some(k) => return invalid(format!("weights' kernel {k:?} does not fit a {n}-D window")),
            None => return invalid("attribute `kernel_shape` is missing"),
        }
    };
    let strides = list(cx, "strides", n, 1, 1)?;
    let dilations = list(cx, "dilations", n, 1, 1)?;
    let auto_pad = cx.attrs.string("auto_pad")?.unwrap_or_default();
    let mut pads = vec![0; 2 * n];
    match auto_pad.as_str() {
        "" | "NOTSET" => {
            if let Some(p) = cx.attrs.ints("pads")? {
                if p.len() != 2 * n {
                    return invalid(format!("attribute `pads` = {p:?} must have {} values", 2 * n));
                }
                if p.iter().any(|&d| d < 0) {
                    return unsupported(format!("negative pads {p:?}"));
                }
                if p.iter().any(|&d| d > MAX_WINDOW_ATTR) {
                    return invalid(format!("attribute `pads` = {p:?} is out of range"));
                }
                pads = p.iter().map(|&d| d as usize).collect();
            }
        }
        "VALID" => {}
        "SAME_UPPER" | "SAME_LOWER" => {
            for a in 0..n {
                let (begin, end) = same_pads(spatial[a], kernel[a], strides[a], dilations[a], auto_pad == "SAME_UPPER");
                pads[a] = begin;
                pads[a + n] = end;
            }
        }
        other => {
            return invalid(format!("attribute `auto_pad` = {other:?} is not NOTSET, VALID, SAME_UPPER or SAME_LOWER"))
        }
    }
    Ok((kernel, strides, dilations, pads))
}

/// The spatial extents of an `N, C, spatial…` input, for 1-D and 2-D windows.
fn spatial_dims(x: &[usize]) -> OpResult<Vec<usize>> {
    match x.len() {
        3 | 4 => Ok(x[2..].to_vec()),
        r => unsupported(format!(
            "{}-D input of shape {x:?}: only 1-D and 2-D windows are supported",
            r.saturating_sub(2)
        )),
    }
}

/// Applies a 2-D window op to `x` (and `rest`: weights, bias), lifting a 1-D input
/// `[N, C, L]` to `[N, C, 1, L]` (and 1-D weights `[O, I, K]` to `[O, I, 1, K]`) and the result
/// back.
fn windowed(cx: &mut NodeCx, op: Op, x: ValueId, rest: &[ValueId]) -> OpResult<ValueId> {
    let xs = cx.shape(x);
    if xs.len() == 4 {
        let mut ins = vec![x];
        ins.extend_from_slice(rest);
        return cx.emit_out(op, &ins, 0);
    }
    let lift = |cx: &mut NodeCx, v: ValueId| -> OpResult<ValueId> {
        let s = cx.shape(v);
        let name = cx.tmp_name("2d");
        cx.emit(Op::Reshape { shape: vec![s[0], s[1], 1, s[2]] }, &[v], name)
    };
    let mut ins = vec![lift(cx, x)?];
    if let Some(&w) = rest.first() {
        if cx.rank(w) != 3 {
            return invalid(format!("1-D weights must have rank 3, got {:?}", cx.shape(w)));
        }
        ins.push(lift(cx, w)?);
    }
    ins.extend_from_slice(rest.get(1..).unwrap_or(&[]));
    let name = cx.tmp_name("2d");
    let y = cx.emit(op, &ins, name)?;
    let ys = cx.shape(y);
    cx.emit_out(Op::Reshape { shape: vec![ys[0], ys[1], ys[3]] }, &[y], 0)
}

/// `(begin, end)` pads of one axis for auto_pad SAME_UPPER (extra pad at the end) or
/// SAME_LOWER (extra pad at the beginning): the output extent is `ceil(n / stride)`.
pub(crate) fn same_pads(n: usize, kernel: usize, stride: usize, dilation: usize, upper: bool) -> (usize, usize) {
    let out = n.div_ceil(stride);
    let eff = dilation * (kernel - 1) + 1;
    let total = (out.saturating_sub(1) * stride + eff).saturating_sub(n);
    let small = total / 2;
    if upper {
        (small, total - small)
    } else {
        (total - small, small)
    }
}

pub(super) fn conv(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let spatial = spatial_dims(&cx.shape(x))?;
    let ws = cx.shape(w);
    let kernel = (ws.len() == spatial.len() + 2).then(|| ws[2..].to_vec());
    let window = window(cx, &spatial, kernel)?;
    let group = cx.attrs.int_or("group", 1)?;
    if !(1..=MAX_WINDOW_ATTR).contains(&group) {
        return invalid(format!("attribute `group` = {group} must be positive"));
    }
    if ws.get(1).and_then(|&c| c.checked_mul(group as usize)).is_none_or(|c| c > MAX_ELEMS) {
        return invalid(format!("group {group} does not fit weights of shape {ws:?}"));
    }
    let mut rest = vec![w];
    rest.extend(cx.opt_input(2));
    Ok(vec![windowed(cx, Op::Conv { window, group: group as usize }, x, &rest)?])
}

fn ceil_mode(cx: &NodeCx) -> OpResult<bool> {
    Ok(cx.attrs.int_or("ceil_mode", 0)? != 0)
}

/// A 3-D pool as two 2-D pools, which is exact because max and average pooling are
/// separable per axis (an average's divisor is the product of the per-axis counts):
/// `[N, C, D, H, W]` → pool (H, W) over `[N, C·D, H, W]` → pool (D, 1) over
/// `[N, C, D, H'·W']` → `[N, C, D', H', W']`.
fn pool_3d(cx: &mut NodeCx, x: ValueId, make: &dyn Fn(Window) -> Op) -> OpResult<ValueId> {
    let s = cx.shape(x);
    let (k, st, dl, p) = window_parts(cx, &s[2..], None)?;
    let reshape = |cx: &mut NodeCx, v: ValueId, shape: Vec<usize>| -> OpResult<ValueId> {
        let name = cx.tmp_name("3d");
        cx.emit(Op::Reshape { shape }, &[v], name)
    };
    let hw = Window {
        kernel: [k[1], k[2]],
        strides: [st[1], st[2]],
        pads: [p[1], p[2], p[4], p[5]],
        dilations: [dl[1], dl[2]],
    };
    let x1 = reshape(cx, x, vec![s[0], s[1] * s[2], s[3], s[4]])?;
    let name = cx.tmp_name("pool_hw");
    let y1 = cx.emit(make(hw), &[x1], name)?;
    let s1 = cx.shape(y1);
    let y1 = reshape(cx, y1, vec![s[0], s[1], s[2], s1[2] * s1[3]])?;
    let d = Window { kernel: [k[0], 1], strides: [st[0], 1], pads: [p[0], 0, p[3], 0], dilations: [dl[0], 1] };
    let name = cx.tmp_name("pool_d");
    let y2 = cx.emit(make(d), &[y1], name)?;
    let s2 = cx.shape(y2);
    cx.emit_out(Op::Reshape { shape: vec![s[0], s[1], s2[2], s1[2], s1[3]] }, &[y2], 0)
}

pub(super) fn max_pool(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let x = cx.input(0)?;
    let ceil_mode = ceil_mode(cx)?;
    if cx.has_output(1) {
        // Indices: for 2-D windows only (the flat index depends on the input's layout).
        cx.outputs_at_most(2, "")?;
        if cx.rank(x) != 4 {
            return unsupported(format!("output 1 (Indices) of a {}-D pool", cx.rank(x).saturating_sub(2)));
        }
        let window = window(cx, &spatial_dims(&cx.shape(x))?, None)?;
        let column_major = cx.attrs.int_or("storage_order", 0)? != 0;
        let y = cx.emit_out(Op::MaxPool { window: window.clone(), ceil_mode }, &[x], 0)?;
        let i = cx.emit_out(Op::MaxPoolIndices { window, ceil_mode, column_major }, &[x], 1)?;
        return Ok(vec![y, i]);
    }
    cx.outputs_at_most(1, "Indices")?;
    if cx.rank(x) == 5 {
        return Ok(vec![pool_3d(cx, x, &|window| Op::MaxPool { window, ceil_mode })?]);
    }
    let window = window(cx, &spatial_dims(&cx.shape(x))?, None)?;
    Ok(vec![windowed(cx, Op::MaxPool { window, ceil_mode }, x, &[])?])
}

pub(super) fn average_pool(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let ceil_mode = ceil_mode(cx)?;
    let count_include_pad = cx.attrs.int_or("count_include_pad", 0)? != 0;
    if cx.rank(x) == 5 {
        let make = |window| Op::AveragePool { window, ceil_mode, count_include_pad };
        return Ok(vec![pool_3d(cx, x, &make)?]);
    }
    let window = window(cx, &spatial_dims(&cx.shape(x))?, None)?;
    Ok(vec![windowed(cx, Op::AveragePool { window, ceil_mode, count_include_pad }, x, &[])?])
}

/// GlobalAveragePool / GlobalMaxPool: a keepdims reduction over every spatial axis.
pub(super) fn global_pool(cx: &mut NodeCx, op: ReduceOp) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let rank = cx.rank(x);
    if rank < 3 {
        return invalid(format!("input must have rank >= 3 (N, C, spatial…), got {:?}", cx.shape(x)));
    }
    let axes = (2..rank).collect();
    Ok(vec![cx.emit_out(Op::Reduce { op, axes, keepdims: true }, &[x], 0)?])
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

/// Inference-mode Dropout: the input itself; the optional mask is all ones (all true).
pub(super) fn dropout(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(2, "")?;
    let x = cx.input(0)?;
    if cx.opset >= 12 {
        if let Some(t) = cx.opt_const_input(2, "training_mode")? {
            if t.to_i64_vec().iter().any(|&v| v != 0) {
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

#[cfg(test)]
mod tests {
    use super::same_pads;

    #[test]
    fn same_pads_match_onnx() {
        // n=5, k=3, s=2: out 3, total pad (3-1)*2+3-5 = 2.
        assert_eq!(same_pads(5, 3, 2, 1, true), (1, 1));
        // n=6, k=3, s=2: out 3, total 1: SAME_UPPER puts it at the end, SAME_LOWER at the start.
        assert_eq!(same_pads(6, 3, 2, 1, true), (0, 1));
        assert_eq!(same_pads(6, 3, 2, 1, false), (1, 0));
        // Dilated: eff 5, n=7, s=1: total 4.
        assert_eq!(same_pads(7, 3, 1, 2, true), (2, 2));
        // Kernel smaller than stride: no pad.
        assert_eq!(same_pads(4, 1, 2, 1, true), (0, 0));
    }
}
