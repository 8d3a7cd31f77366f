//! Data-movement ONNX ops as compositions of existing HIR ops: Tile, DepthToSpace,
//! SpaceToDepth, Trilu, OneHot, EyeLike, Pad, CenterCropPad, CumSum, CumProd and
//! TensorScatter. Every shape-like input is a constant;
//! index patterns become constant Gather indices and constant masks. (The shape ops that are
//! one HIR op each, Reshape, Transpose, Concat, Slice…, are in [`super::tensor`].)

use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, ReduceOp, ValueId};

use super::builders::{bin, cmp, konst_as, reshape, scalar, tensor_as, tmp};
use super::{invalid, norm_axes, norm_axis, unsupported, NodeCx, OpError, OpResult};
use crate::data::{checked_numel, dtype_of};

/// A required constant integer input.
fn ints_in(cx: &NodeCx, i: usize, role: &str) -> OpResult<Vec<i64>> {
    cx.opt_ints_input(i, role)?.ok_or_else(|| OpError::Invalid(format!("input {i} ({role}) is missing")))
}

/// A constant scalar (or one-element) integer input.
fn int_scalar_in(cx: &NodeCx, i: usize, role: &str) -> OpResult<Option<i64>> {
    match cx.opt_ints_input(i, role)? {
        None => Ok(None),
        Some(v) if v.len() == 1 => Ok(Some(v[0])),
        Some(v) => invalid(format!("input {i} ({role}) must be a scalar, got {v:?}")),
    }
}

fn checked(shape: Vec<usize>) -> OpResult<Vec<usize>> {
    if checked_numel(&shape).is_none() {
        return invalid(format!("result shape {shape:?} is too large"));
    }
    Ok(shape)
}

/// Tile: `[d0, d1, …]` → reshape `[1, d0, 1, d1, …]` → expand `[r0, d0, r1, d1, …]` → merge.
pub(super) fn tile(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let reps = if cx.opset < 6 {
        // Tile-1: `tiles` copies along `axis` (both scalar inputs).
        let tiles =
            int_scalar_in(cx, 1, "tiles")?.ok_or_else(|| OpError::Invalid("input 1 (tiles) is missing".into()))?;
        let axis = int_scalar_in(cx, 2, "axis")?.ok_or_else(|| OpError::Invalid("input 2 (axis) is missing".into()))?;
        let axis = norm_axis(axis, s.len(), "axis")?;
        let mut r = vec![1i64; s.len()];
        r[axis] = tiles;
        r
    } else {
        ints_in(cx, 1, "repeats")?
    };
    if reps.len() != s.len() || reps.iter().any(|&r| r < 0) {
        return invalid(format!("repeats {reps:?} do not fit input of shape {s:?}"));
    }
    let reps: Vec<usize> = reps.iter().map(|&r| r as usize).collect();
    let out = checked(s.iter().zip(&reps).map(|(&d, &r)| d.saturating_mul(r)).collect())?;
    if reps.iter().all(|&r| r == 1) {
        return Ok(vec![x]);
    }
    let inter: Vec<usize> = s.iter().flat_map(|&d| [1, d]).collect();
    let big: Vec<usize> = s.iter().zip(&reps).flat_map(|(&d, &r)| [r, d]).collect();
    let x1 = reshape(cx, x, inter)?;
    let e = tmp(cx, Op::Expand { shape: big }, &[x1], "tile")?;
    Ok(vec![cx.emit_out(Op::Reshape { shape: out }, &[e], 0)?])
}

fn blocksize(cx: &NodeCx) -> OpResult<usize> {
    match cx.attrs.int("blocksize")? {
        Some(b) if (1..=1 << 20).contains(&b) => Ok(b as usize),
        Some(b) => invalid(format!("attribute `blocksize` = {b} must be positive")),
        None => invalid("attribute `blocksize` is missing"),
    }
}

/// DepthToSpace, DCR (default) or CRD mode: reshape to 6-D, transpose, reshape.
pub(super) fn depth_to_space(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let b = blocksize(cx)?;
    if s.len() != 4 || !s[1].is_multiple_of(b * b) {
        return invalid(format!("input {s:?} must be 4-D with channels divisible by {}", b * b));
    }
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let mode = cx.attrs.string("mode")?.unwrap_or_else(|| "DCR".into());
    let (six, perm) = match mode.as_str() {
        "DCR" => (vec![n, b, b, c / (b * b), h, w], vec![0, 3, 4, 1, 5, 2]),
        "CRD" => (vec![n, c / (b * b), b, b, h, w], vec![0, 1, 4, 2, 5, 3]),
        other => return invalid(format!("attribute `mode` = {other:?} is not DCR or CRD")),
    };
    let x6 = reshape(cx, x, six)?;
    let t = tmp(cx, Op::Transpose { perm }, &[x6], "d2s")?;
    Ok(vec![cx.emit_out(Op::Reshape { shape: vec![n, c / (b * b), h * b, w * b] }, &[t], 0)?])
}

pub(super) fn space_to_depth(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let b = blocksize(cx)?;
    if s.len() != 4 || !s[2].is_multiple_of(b) || !s[3].is_multiple_of(b) {
        return invalid(format!("input {s:?} must be 4-D with H and W divisible by {b}"));
    }
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    // DCR: out channel (bh·b + bw)·C + c; CRD: c·b² + bh·b + bw.
    let perm = match cx.attrs.string("mode")?.unwrap_or_else(|| "DCR".into()).as_str() {
        "DCR" => vec![0, 3, 5, 1, 2, 4],
        "CRD" => vec![0, 1, 3, 5, 2, 4],
        other => return invalid(format!("attribute `mode` = {other:?} is not DCR or CRD")),
    };
    let x6 = reshape(cx, x, vec![n, c, h / b, b, w / b, b])?;
    let t = tmp(cx, Op::Transpose { perm }, &[x6], "s2d")?;
    Ok(vec![cx.emit_out(Op::Reshape { shape: vec![n, c * b * b, h / b, w / b] }, &[t], 0)?])
}

/// Trilu: `Where(mask, x, 0)` with a constant mask over the last two axes.
pub(super) fn trilu(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    if s.len() < 2 {
        return invalid(format!("input {s:?} must have rank >= 2"));
    }
    let upper = cx.attrs.int_or("upper", 1)? != 0;
    let k = int_scalar_in(cx, 1, "k")?.unwrap_or(0);
    let (n, m) = (s[s.len() - 2], s[s.len() - 1]);
    let mut mask = Vec::with_capacity(n * m);
    for i in 0..n as i64 {
        for j in 0..m as i64 {
            let keep = if upper { j - i >= k } else { j - i <= k };
            mask.push(if keep { 1.0 } else { 0.0 });
        }
    }
    let mask = konst_as(cx, DType::Bool, vec![n, m], &mask);
    let zero = scalar(cx, cx.ty(x).dtype, 0.0);
    Ok(vec![cx.emit_out(Op::Where, &[mask, x, zero], 0)?])
}

/// OneHot: `Where(indices == range(depth), on, off)`, with the range along `axis`.
/// Negative indices count from the end; out-of-range ones give an all-off row.
pub(super) fn one_hot(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (idx, values) = (cx.input(0)?, cx.input(2)?);
    let depth = cx.opt_const_input(1, "depth")?.ok_or_else(|| OpError::Invalid("input 1 (depth) is missing".into()))?;
    if depth.numel() != 1 {
        return invalid(format!("depth must be a scalar, got {}", depth.ty));
    }
    let depth = depth.to_f64_vec()[0];
    if !(1.0..=(1u64 << 31) as f64).contains(&depth) {
        return invalid(format!("depth {depth} must be positive"));
    }
    let depth = depth as usize;
    if cx.ty(values).numel() != 2 || cx.rank(values) != 1 {
        return invalid(format!("values must be [off, on], got {}", cx.ty(values)));
    }
    let s = cx.shape(idx);
    let axis = cx.attrs.int_or("axis", -1)?;
    let axis = norm_axis(axis, s.len() + 1, "axis")?;
    let mut idx = if cx.ty(idx).dtype == DType::I64 { idx } else { tmp(cx, Op::cast(DType::I64), &[idx], "idx")? };
    let zero = scalar(cx, DType::I64, 0.0);
    let neg = cmp(cx, CmpOp::Less, idx, zero)?;
    let dk = scalar(cx, DType::I64, depth as f64);
    let wrapped = bin(cx, B::Add, idx, dk)?;
    idx = tmp(cx, Op::Where, &[neg, wrapped, idx], "idx")?;
    let mut is = s.clone();
    is.insert(axis, 1);
    idx = reshape(cx, idx, is)?;
    let mut rs = vec![1; s.len() + 1];
    rs[axis] = depth;
    let range: Vec<f64> = (0..depth).map(|i| i as f64).collect();
    let range = konst_as(cx, DType::I64, rs, &range);
    let eq = cmp(cx, CmpOp::Equal, idx, range)?;
    let pick = |cx: &mut NodeCx, i: i64| -> OpResult<ValueId> {
        let v = tmp(cx, Op::Slice { starts: vec![i], steps: vec![1], out_shape: vec![1] }, &[values], "value")?;
        reshape(cx, v, Vec::new())
    };
    let off = pick(cx, 0)?;
    let on = pick(cx, 1)?;
    Ok(vec![cx.emit_out(Op::Where, &[eq, on, off], 0)?])
}

/// EyeLike: a constant with ones on diagonal `k`.
pub(super) fn eye_like(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    if s.len() != 2 {
        return invalid(format!("input {s:?} must be 2-D"));
    }
    let dtype = match cx.attrs.int("dtype")? {
        None => cx.ty(x).dtype,
        Some(code) => match dtype_of(code as i32) {
            Ok(d) => d,
            Err(name) => return unsupported(format!("dtype {name}")),
        },
    };
    let k = cx.attrs.int_or("k", 0)?;
    checked(s.clone())?;
    let v: Vec<f64> =
        (0..s[0] as i64).flat_map(|i| (0..s[1] as i64).map(move |j| if j - i == k { 1.0 } else { 0.0 })).collect();
    let name = cx.out_name(0);
    Ok(vec![cx.konst(name, tensor_as(dtype, s, &v))])
}

/// Source index of output position `o` of a padded axis of extent `d` with `begin` pad,
/// or `None` for the constant mode's fill.
pub(crate) fn pad_source(mode: &str, d: i64, begin: i64, o: i64) -> Option<i64> {
    let i = o - begin;
    if (0..d).contains(&i) {
        return Some(i);
    }
    match mode {
        "edge" => Some(i.clamp(0, d - 1)),
        "reflect" if d == 1 => Some(0),
        "reflect" => {
            let p = 2 * (d - 1);
            let m = i.rem_euclid(p);
            Some(if m >= d { p - m } else { m })
        }
        "wrap" => Some(i.rem_euclid(d)),
        _ => None,
    }
}

/// Pad (constant, edge, reflect, wrap): per padded axis, a Gather with constant indices,
/// and in the constant mode a Where against a constant mask. Negative pads crop.
pub(super) fn pad(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let rank = s.len();
    let dtype = cx.ty(x).dtype;
    let mode = cx.attrs.string("mode")?.unwrap_or_else(|| "constant".into());
    if !matches!(mode.as_str(), "constant" | "edge" | "reflect" | "wrap") {
        return invalid(format!("attribute `mode` = {mode:?} is not constant, edge, reflect or wrap"));
    }
    let (pads, value, axes) = if cx.opset < 11 {
        let name = if cx.opset < 2 { "paddings" } else { "pads" };
        let pads = cx.attrs.ints(name)?.ok_or_else(|| OpError::Invalid(format!("attribute `{name}` is missing")))?;
        let v = f64::from(cx.attrs.float_or("value", 0.0)?);
        (pads.to_vec(), scalar(cx, dtype, v), (0..rank).collect::<Vec<_>>())
    } else {
        let pads = ints_in(cx, 1, "pads")?;
        let value = match cx.opt_input(2) {
            Some(v) => {
                if cx.ty(v).numel() != 1 {
                    return invalid(format!("constant_value must be a scalar, got {}", cx.ty(v)));
                }
                if cx.ty(v).dtype != dtype {
                    return invalid(format!("constant_value's dtype {} differs from the input's {dtype}", cx.ty(v)));
                }
                reshape(cx, v, Vec::new())?
            }
            None => scalar(cx, dtype, 0.0),
        };
        let axes = match cx.opt_ints_input(3, "axes")? {
            Some(a) => {
                norm_axes(&a, rank, "axis")?; // range and duplicates
                                              // Keep the given order (pads follow it).
                a.iter().map(|&a| norm_axis(a, rank, "axis")).collect::<OpResult<Vec<_>>>()?
            }
            None => (0..rank).collect(),
        };
        (pads, value, axes)
    };
    let n = axes.len();
    if pads.len() != 2 * n {
        return invalid(format!("pads {pads:?} must have {} values", 2 * n));
    }
    let mut per_axis = vec![(0i64, 0i64); rank];
    for (k, &a) in axes.iter().enumerate() {
        per_axis[a] = (pads[k], pads[k + n]);
    }
    let mut out_shape = Vec::with_capacity(rank);
    for (a, &(b, e)) in per_axis.iter().enumerate() {
        let len = (s[a] as i128) + i128::from(b) + i128::from(e);
        if !(0..=(1i128 << 40)).contains(&len) {
            return invalid(format!("pads {pads:?} do not fit input of shape {s:?}"));
        }
        out_shape.push(len as usize);
    }
    checked(out_shape.clone())?;
    let begins: Vec<i64> = per_axis.iter().map(|&(b, _)| b).collect();
    Ok(vec![pad_axes(cx, x, &mode, &begins, &out_shape, value)?])
}

/// Pads (or crops) every axis `a` of `x` to `out[a]` elements, output position `o` reading
/// input `o - begins[a]` (mapped by `mode` outside the input, `value` in the constant
/// mode): per changed axis a Gather with constant indices, and a Where against a constant
/// mask where the constant mode fills. The last op is named after output 0.
pub(super) fn pad_axes(
    cx: &mut NodeCx,
    x: ValueId,
    mode: &str,
    begins: &[i64],
    out: &[usize],
    value: ValueId,
) -> OpResult<ValueId> {
    let s = cx.shape(x);
    let rank = s.len();
    let mut y = x;
    let todo: Vec<usize> = (0..rank).filter(|&a| begins[a] != 0 || out[a] != s[a]).collect();
    if todo.is_empty() {
        return cx.emit_out(Op::Identity, &[x], 0);
    }
    for (t, &a) in todo.iter().enumerate() {
        let (b, d, len) = (begins[a], s[a] as i64, out[a]);
        let src: Vec<Option<i64>> = (0..len as i64).map(|o| pad_source(mode, d, b, o)).collect();
        let any_fill = src.iter().any(Option::is_none);
        if d == 0 && len > 0 {
            if mode != "constant" {
                return invalid(format!("cannot {mode}-pad an empty axis {a}"));
            }
            return unsupported("constant padding of an empty axis");
        }
        let idx: Vec<f64> = src.iter().map(|v| v.unwrap_or(0) as f64).collect();
        let idx = konst_as(cx, DType::I64, vec![len], &idx);
        let last = t + 1 == todo.len();
        y = if last && !any_fill {
            cx.emit_out(Op::Gather { axis: a }, &[y, idx], 0)?
        } else {
            tmp(cx, Op::Gather { axis: a }, &[y, idx], "pad")?
        };
        if any_fill {
            let mut ms = vec![1; rank];
            ms[a] = len;
            let m: Vec<f64> = src.iter().map(|v| if v.is_some() { 1.0 } else { 0.0 }).collect();
            let mask = konst_as(cx, DType::Bool, ms, &m);
            y = if last {
                cx.emit_out(Op::Where, &[mask, y, value], 0)?
            } else {
                tmp(cx, Op::Where, &[mask, y, value], "pad")?
            };
        }
    }
    Ok(y)
}

/// CenterCropPad: per listed axis, a centered crop (start `(d - n) / 2`) or zero pad (begin
/// `(n - d) / 2`) to the target extent.
pub(super) fn center_crop_pad(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let target = ints_in(cx, 1, "shape")?;
    let axes = match cx.attrs.ints("axes")? {
        Some(a) => {
            norm_axes(a, s.len(), "axis")?;
            a.iter().map(|&v| norm_axis(v, s.len(), "axis")).collect::<OpResult<Vec<_>>>()?
        }
        None => (0..s.len()).collect(),
    };
    if target.len() != axes.len() || target.iter().any(|&n| n < 0) {
        return invalid(format!("shape {target:?} does not fit axes {axes:?}"));
    }
    let mut out = s.clone();
    let mut begins = vec![0i64; s.len()];
    for (&a, &n) in axes.iter().zip(&target) {
        let d = s[a] as i64;
        begins[a] = if n >= d { (n - d) / 2 } else { -((d - n) / 2) };
        out[a] = n as usize;
    }
    checked(out.clone())?;
    let zero = scalar(cx, cx.ty(x).dtype, 0.0);
    Ok(vec![pad_axes(cx, x, "constant", &begins, &out, zero)?])
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

/// TensorScatter: cache position `m` of batch `b` takes update step `m - write_indices[b]`
/// (mod the cache length in circular mode) when that step exists, else keeps the past
/// value. The per-batch pick is a one-hot `[B, 1, M, S]` MatMul over the update with the
/// axis moved next-to-last, then a Where.
pub(super) fn tensor_scatter(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (past, update) = (cx.input(0)?, cx.input(1)?);
    let (ps, us) = (cx.shape(past), cx.shape(update));
    let dtype = cx.ty(past).dtype;
    if dtype != DType::F32 || cx.ty(update).dtype != dtype {
        return unsupported(format!("TensorScatter on {} (only float32)", cx.ty(past)));
    }
    let r = ps.len();
    let a = norm_axis(cx.attrs.int_or("axis", -2)?, r, "axis")?;
    if r < 2 || a == 0 || us.len() != r || (0..r).any(|i| if i == a { us[i] > ps[i] } else { us[i] != ps[i] }) {
        return invalid(format!("update {us:?} does not fit cache {ps:?} along axis {a}"));
    }
    let mode = cx.attrs.string("mode")?.unwrap_or_else(|| "linear".into());
    if !matches!(mode.as_str(), "linear" | "circular") {
        return invalid(format!("attribute `mode` = {mode:?} is not linear or circular"));
    }
    let (b, m, s) = (ps[0], ps[a], us[a]);
    let w = match cx.opt_input(2) {
        Some(w) => {
            let w = if cx.ty(w).dtype == DType::I64 { w } else { tmp(cx, Op::cast(DType::I64), &[w], "idx")? };
            reshape(cx, w, vec![b, 1, 1])?
        }
        None => konst_as(cx, DType::I64, vec![b, 1, 1], &vec![0.0; b]),
    };
    let pos: Vec<f64> = (0..m).map(|i| i as f64).collect();
    let pos = konst_as(cx, DType::I64, vec![1, m, 1], &pos);
    let mut rel = bin(cx, B::Sub, pos, w)?; // [B, M, 1]
    if mode == "circular" {
        let mk = scalar(cx, DType::I64, m as f64);
        rel = bin(cx, B::Mod { fmod: false }, rel, mk)?;
    }
    let steps: Vec<f64> = (0..s).map(|i| i as f64).collect();
    let steps = konst_as(cx, DType::I64, vec![1, 1, s], &steps);
    let hot = cmp(cx, CmpOp::Equal, rel, steps)?; // [B, M, S]
    let hot = tmp(cx, Op::cast(dtype), &[hot], "onehot")?;
    let zero = scalar(cx, DType::I64, 0.0);
    let sk = scalar(cx, DType::I64, s as f64);
    let ge = cmp(cx, CmpOp::GreaterOrEqual, rel, zero)?;
    let lt = cmp(cx, CmpOp::Less, rel, sk)?;
    let valid = bin(cx, B::And, ge, lt)?; // [B, M, 1]
                                          // Move the axis next-to-last: [B, rest…, S, last] (rank >= 3) or [B, S, 1] (rank 2).
    let (u3, perm) = if r == 2 {
        (reshape(cx, update, vec![b, s, 1])?, None)
    } else {
        let mut perm: Vec<usize> = (0..r).filter(|&i| i != a && i != r - 1).collect();
        perm.push(a);
        perm.push(if a == r - 1 { r - 2 } else { r - 1 });
        let trivial = perm.iter().enumerate().all(|(i, &p)| i == p);
        let u = if trivial { update } else { tmp(cx, Op::Transpose { perm: perm.clone() }, &[update], "axis")? };
        (u, (!trivial).then_some(perm))
    };
    let ur = cx.rank(u3);
    let mut hs = vec![b];
    hs.extend(std::iter::repeat_n(1, ur - 3));
    hs.extend([m, s]);
    let hot = reshape(cx, hot, hs)?;
    let picked = tmp(cx, Op::MatMul, &[hot, u3], "picked")?;
    let mut vs = vec![b];
    vs.extend(std::iter::repeat_n(1, ur - 3));
    vs.extend([m, 1]);
    let valid = reshape(cx, valid, vs)?;
    let picked = if r == 2 {
        let v2 = reshape(cx, valid, vec![b, m])?;
        let p2 = reshape(cx, picked, vec![b, m])?;
        return Ok(vec![cx.emit_out(Op::Where, &[v2, p2, past], 0)?]);
    } else {
        picked
    };
    let Some(perm) = perm else {
        return Ok(vec![cx.emit_out(Op::Where, &[valid, picked, past], 0)?]);
    };
    let mut inv = vec![0; r];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    let past_t = tmp(cx, Op::Transpose { perm: perm.clone() }, &[past], "axis")?;
    let y = tmp(cx, Op::Where, &[valid, picked, past_t], "scattered")?;
    Ok(vec![cx.emit_out(Op::Transpose { perm: inv }, &[y], 0)?])
}
