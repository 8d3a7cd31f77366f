//! Shape and data movement: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Split,
//! Slice, Expand, Shape, Size, Identity (one HIR op each, or a constant), and the movements
//! composed of them: Tile, DepthToSpace, SpaceToDepth, Pad and CenterCropPad. Every
//! shape-like input is a constant; index patterns become constant Gather indices.

use super::builders::{self, konst_as, scalar, tmp};
use super::{invalid, norm_axes, norm_axis, unsupported, NodeCx, OpError, OpResult};
use crate::data::{checked_numel, MAX_ELEMS};
use kiln_ir::{DType, Op, Tensor, ValueId};

pub(super) fn product(dims: &[usize]) -> usize {
    dims.iter().product() // dims of a checked shape: no overflow
}

/// Converts requested dims (from an attribute or a constant) to a checked shape.
pub(super) fn to_shape(dims: &[i64], what: &str) -> OpResult<Vec<usize>> {
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| OpError::Invalid(format!("{what} {dims:?} has a negative dim"))))
        .collect::<OpResult<Vec<_>>>()?;
    if checked_numel(&shape).is_none() {
        return invalid(format!("{what} {dims:?} has more than 2^40 elements"));
    }
    Ok(shape)
}

/// Reshape's target: `0` copies the input dim (unless `allowzero`), `-1` is inferred.
pub(crate) fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            -1 if infer_at.is_some() => return Err(format!("shape {spec:?} has more than one -1")),
            -1 => {
                infer_at = Some(i);
                out.push(1);
            }
            0 if !allowzero => match input.get(i) {
                Some(&d) => out.push(d),
                None => return Err(format!("shape {spec:?}: 0 at index {i} copies a dim the input {input:?} lacks")),
            },
            s if s < 0 => return Err(format!("shape {spec:?} has an invalid dim {s}")),
            s => out.push(
                usize::try_from(s)
                    .ok()
                    .filter(|&d| d <= MAX_ELEMS)
                    .ok_or_else(|| format!("shape {spec:?} is too large"))?,
            ),
        }
    }
    let total = product(input);
    if let Some(i) = infer_at {
        let known = checked_numel(&out).ok_or_else(|| format!("shape {spec:?} is too large"))?;
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {input:?} ({total} elements) to {spec:?}"));
        }
        out[i] = total / known;
    }
    match checked_numel(&out) {
        Some(n) if n == total => Ok(out),
        _ => Err(format!("cannot reshape {input:?} ({total} elements) to {spec:?}")),
    }
}

pub(super) fn reshape(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let spec = if cx.opset < 5 {
        cx.attrs.ints("shape")?.ok_or_else(|| OpError::Invalid("attribute `shape` is missing".into()))?.to_vec()
    } else {
        cx.opt_ints_input(1, "shape")?.ok_or_else(|| OpError::Invalid("input 1 (shape) is missing".into()))?
    };
    let allowzero = cx.opset >= 14 && cx.attrs.int_or("allowzero", 0)? != 0;
    let shape = reshape_target(&cx.shape(x), &spec, allowzero)?;
    Ok(vec![cx.emit_out(Op::Reshape { shape }, &[x], 0)?])
}

pub(super) fn flatten(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let r = s.len() as i64;
    let axis = cx.attrs.int_or("axis", 1)?;
    if axis < -r || axis > r {
        return invalid(format!("axis {axis} is out of range for rank {r}"));
    }
    let axis = (if axis < 0 { axis + r } else { axis }) as usize;
    let shape = vec![product(&s[..axis]), product(&s[axis..])];
    Ok(vec![cx.emit_out(Op::Reshape { shape }, &[x], 0)?])
}

/// Axes from the `axes` attribute (before `input_from`) or from input 1.
fn axes_arg(cx: &NodeCx, input_from: i64) -> OpResult<Option<Vec<i64>>> {
    if cx.opset < input_from {
        Ok(cx.attrs.ints("axes")?.map(<[i64]>::to_vec))
    } else {
        cx.opt_ints_input(1, "axes")
    }
}

pub(super) fn squeeze(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let axes = match axes_arg(cx, 13)? {
        None => (0..s.len()).filter(|&a| s[a] == 1).collect(),
        Some(a) => norm_axes(&a, s.len(), "axis")?,
    };
    if let Some(&a) = axes.iter().find(|&&a| s[a] != 1) {
        return invalid(format!("cannot squeeze axis {a} of shape {s:?}: its size is not 1"));
    }
    let shape = s.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect();
    Ok(vec![cx.emit_out(Op::Reshape { shape }, &[x], 0)?])
}

pub(super) fn unsqueeze(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let Some(axes) = axes_arg(cx, 13)? else {
        return invalid("axes are missing");
    };
    let out_rank = s.len() + axes.len();
    let axes = norm_axes(&axes, out_rank, "axis")?;
    let mut dims = s.iter();
    let shape = (0..out_rank).map(|i| if axes.contains(&i) { 1 } else { *dims.next().unwrap_or(&1) }).collect();
    Ok(vec![cx.emit_out(Op::Reshape { shape }, &[x], 0)?])
}

pub(super) fn transpose(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let r = cx.rank(x);
    let perm = match cx.attrs.ints("perm")? {
        None => (0..r).rev().collect(),
        Some(p) => p
            .iter()
            .map(|&a| usize::try_from(a).map_err(|_| OpError::Invalid(format!("perm {p:?} has a negative axis"))))
            .collect::<OpResult<Vec<_>>>()?,
    };
    Ok(vec![cx.emit_out(Op::Transpose { perm }, &[x], 0)?])
}

pub(super) fn concat(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let xs = cx.all_inputs()?;
    let Some(&first) = xs.first() else {
        return invalid("Concat needs at least one input");
    };
    // Concat-1 defaulted to axis 1.
    let axis = match cx.attrs.int("axis")? {
        Some(a) => a,
        None if cx.opset < 4 => 1,
        None => return invalid("attribute `axis` is missing"),
    };
    let axis = norm_axis(axis, cx.rank(first), "axis")?;
    let total = xs.iter().try_fold(0usize, |n, &x| n.checked_add(cx.shape(x).get(axis).copied().unwrap_or(0)));
    if total.is_none_or(|n| n > MAX_ELEMS) {
        return invalid("the concatenated axis is too long");
    }
    Ok(vec![cx.emit_out(Op::Concat { axis }, &xs, 0)?])
}

/// Sizes of Split's outputs along an axis of extent `dim`.
fn split_sizes(cx: &NodeCx, dim: usize, n: usize) -> OpResult<Vec<usize>> {
    // Split-13+: input 1; before, the `split` attribute (Split-1 also took it as input 1).
    let attr = if cx.opset < 13 { cx.attrs.ints("split")?.map(<[i64]>::to_vec) } else { None };
    let given = match attr {
        Some(a) => Some(a),
        None if cx.opset >= 13 || cx.opset < 2 => cx.opt_ints_input(1, "split")?,
        None => None,
    };
    let given = given.filter(|s| !s.is_empty());
    if let Some(split) = given {
        let sizes = to_shape(&split, "split")?;
        if sizes.len() != n || product_sum(&sizes) != Some(dim) {
            return invalid(format!("split {split:?} does not divide an axis of {dim} into {n} outputs"));
        }
        return Ok(sizes);
    }
    if cx.opset >= 18 {
        if let Some(k) = cx.attrs.int("num_outputs")? {
            if k != n as i64 || k < 1 {
                return invalid(format!("num_outputs = {k} but the node has {n} outputs"));
            }
            let chunk = dim.div_ceil(n);
            let rest = chunk.checked_mul(n - 1).and_then(|used| dim.checked_sub(used)).ok_or_else(|| {
                OpError::Invalid(format!("an axis of {dim} cannot be split into {n} chunks of {chunk}"))
            })?;
            let mut sizes = vec![chunk; n - 1];
            sizes.push(rest);
            return Ok(sizes);
        }
    }
    if n == 0 || !dim.is_multiple_of(n) {
        return invalid(format!("an axis of {dim} cannot be split evenly into {n} outputs"));
    }
    Ok(vec![dim / n; n])
}

fn product_sum(v: &[usize]) -> Option<usize> {
    v.iter().try_fold(0usize, |a, &b| a.checked_add(b))
}

/// Split: one Slice per output.
pub(super) fn split(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let axis = norm_axis(cx.attrs.int_or("axis", 0)?, s.len(), "axis")?;
    let n = cx.node.output.len();
    let sizes = split_sizes(cx, s[axis], n)?;
    let mut outs = Vec::with_capacity(n);
    let mut offset = 0usize;
    for (k, &size) in sizes.iter().enumerate() {
        if cx.has_output(k) {
            let mut starts = vec![0i64; s.len()];
            starts[axis] = if size == 0 { 0 } else { offset as i64 };
            let mut out_shape = s.clone();
            out_shape[axis] = size;
            let op = Op::Slice { starts, steps: vec![1; s.len()], out_shape };
            outs.push(cx.emit_out(op, &[x], k)?);
        } else {
            outs.push(x); // never bound
        }
        offset += size;
    }
    Ok(outs)
}

/// Numpy's slice of one axis of extent `dim`: the clamped start and the element count.
pub(crate) fn slice_axis(dim: usize, start: i64, end: i64, step: i64) -> Result<(i64, usize), String> {
    if step == 0 {
        return Err("slice step is 0".into());
    }
    let (d, step) = (dim as i128, i128::from(step));
    let adjust = |v: i64| -> i128 {
        let v = i128::from(v);
        if v < 0 {
            let v = v + d;
            if v < 0 {
                if step < 0 {
                    -1
                } else {
                    0
                }
            } else {
                v
            }
        } else if v >= d {
            if step < 0 {
                d - 1
            } else {
                d
            }
        } else {
            v
        }
    };
    let (s, e) = (adjust(start), adjust(end));
    let len = if step < 0 {
        if e < s {
            (s - e - 1) / (-step) + 1
        } else {
            0
        }
    } else if s < e {
        (e - s - 1) / step + 1
    } else {
        0
    };
    // len <= dim and, when len > 0, 0 <= s < dim: both fit.
    Ok(if len == 0 { (0, 0) } else { (s as i64, len as usize) })
}

pub(super) fn slice(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let attr =
        |cx: &NodeCx, name: &str| -> OpResult<Option<Vec<i64>>> { Ok(cx.attrs.ints(name)?.map(<[i64]>::to_vec)) };
    let (starts, ends, axes, steps) = if cx.opset < 10 {
        (attr(cx, "starts")?, attr(cx, "ends")?, attr(cx, "axes")?, None)
    } else {
        (
            cx.opt_ints_input(1, "starts")?,
            cx.opt_ints_input(2, "ends")?,
            cx.opt_ints_input(3, "axes")?,
            cx.opt_ints_input(4, "steps")?,
        )
    };
    let (Some(starts), Some(ends)) = (starts, ends) else {
        return invalid("starts and ends are required");
    };
    let n = starts.len();
    let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return invalid(format!(
            "starts ({n}), ends ({}), axes ({}) and steps ({}) differ in length",
            ends.len(),
            axes.len(),
            steps.len()
        ));
    }
    let _ = norm_axes(&axes, s.len(), "axis")?; // range and duplicates
    let mut full_starts = vec![0i64; s.len()];
    let mut full_steps = vec![1i64; s.len()];
    let mut out_shape = s.clone();
    for i in 0..n {
        let a = norm_axis(axes[i], s.len(), "axis")?;
        let (start, len) = slice_axis(s[a], starts[i], ends[i], steps[i])?;
        full_starts[a] = start;
        full_steps[a] = steps[i];
        out_shape[a] = len;
    }
    let op = Op::Slice { starts: full_starts, steps: full_steps, out_shape };
    Ok(vec![cx.emit_out(op, &[x], 0)?])
}

pub(super) fn expand(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let Some(spec) = cx.opt_ints_input(1, "shape")? else {
        return invalid("input 1 (shape) is missing");
    };
    let shape = to_shape(&spec, "shape")?;
    Ok(vec![cx.emit_out(Op::Expand { shape }, &[x], 0)?])
}

/// Shape (with opset-15 `start`/`end`): a constant, since shapes are static.
pub(super) fn shape(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let s = cx.shape(cx.input(0)?);
    let r = s.len() as i64;
    let clamp = |v: i64| (if v < 0 { v.saturating_add(r) } else { v }).clamp(0, r) as usize;
    let (start, end) = if cx.opset >= 15 {
        (clamp(cx.attrs.int_or("start", 0)?), clamp(cx.attrs.int_or("end", r)?))
    } else {
        (0, s.len())
    };
    let dims: Vec<i64> = if start < end { s[start..end].iter().map(|&d| d as i64).collect() } else { Vec::new() };
    let name = cx.out_name(0);
    Ok(vec![cx.konst(name, Tensor::i64(vec![dims.len()], dims))])
}

pub(super) fn size(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let n = cx.ty(cx.input(0)?).numel() as i64;
    let name = cx.out_name(0);
    Ok(vec![cx.konst(name, Tensor::i64(Vec::new(), vec![n]))])
}

/// Identity (and any op that forwards its input): the input value itself.
pub(super) fn identity(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    Ok(vec![cx.input(0)?])
}

/// A required constant integer input.
fn ints_in(cx: &NodeCx, i: usize, role: &str) -> OpResult<Vec<i64>> {
    cx.opt_ints_input(i, role)?.ok_or_else(|| OpError::Invalid(format!("input {i} ({role}) is missing")))
}

/// A constant scalar (or one-element) integer input.
pub(super) fn int_scalar_in(cx: &NodeCx, i: usize, role: &str) -> OpResult<Option<i64>> {
    match cx.opt_ints_input(i, role)? {
        None => Ok(None),
        Some(v) if v.len() == 1 => Ok(Some(v[0])),
        Some(v) => invalid(format!("input {i} ({role}) must be a scalar, got {v:?}")),
    }
}

pub(super) fn checked(shape: Vec<usize>) -> OpResult<Vec<usize>> {
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
    let x1 = builders::reshape(cx, x, inter)?;
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
    let x6 = builders::reshape(cx, x, six)?;
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
    let x6 = builders::reshape(cx, x, vec![n, c, h / b, b, w / b, b])?;
    let t = tmp(cx, Op::Transpose { perm }, &[x6], "s2d")?;
    Ok(vec![cx.emit_out(Op::Reshape { shape: vec![n, c * b * b, h / b, w / b] }, &[t], 0)?])
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
                builders::reshape(cx, v, Vec::new())?
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
        let last = t + 1 == todo.len();
        // Along the innermost axis, a few runs of consecutive (or reversed) sources are
        // strided Slices joined by a Concat: the middle one a contiguous copy, where the
        // Gather's looked-up index per element kept the row from vectorizing (a reflect pad
        // of 3 on a 56-wide image took 1.5× onnxruntime's time).
        let runs = source_runs(&src);
        if a == rank - 1 && !any_fill && (2..=MAX_PAD_RUNS).contains(&runs.len()) {
            let mut pieces = Vec::with_capacity(runs.len());
            for (start, step, n) in runs {
                let (mut starts, mut steps, mut shape) = (vec![0; rank], vec![1; rank], cx.shape(y));
                (starts[a], steps[a], shape[a]) = (start, step, n);
                pieces.push(tmp(cx, Op::Slice { starts, steps, out_shape: shape }, &[y], "pad")?);
            }
            y = if last {
                cx.emit_out(Op::Concat { axis: a }, &pieces, 0)?
            } else {
                tmp(cx, Op::Concat { axis: a }, &pieces, "pad")?
            };
            continue;
        }
        let idx: Vec<f64> = src.iter().map(|v| v.unwrap_or(0) as f64).collect();
        let idx = konst_as(cx, DType::I64, vec![len], &idx);
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

/// The most pieces a padded innermost axis is cut into ([`pad_axes`]).
const MAX_PAD_RUNS: usize = 5;

/// `sources` (every one present) as maximal runs `(first, step, length)` of step 1 or -1.
fn source_runs(sources: &[Option<i64>]) -> Vec<(i64, i64, usize)> {
    let mut runs: Vec<(i64, i64, usize)> = Vec::new();
    for &v in sources {
        let v = v.unwrap_or(0);
        match runs.last_mut() {
            Some((first, step, n)) if *n == 1 && (v - *first).abs() == 1 => (*step, *n) = (v - *first, 2),
            Some((first, step, n)) if *n > 1 && v == *first + *step * *n as i64 => *n += 1,
            _ => runs.push((v, 1, 1)),
        }
    }
    runs
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

#[cfg(test)]
mod tests {
    use super::*;

    fn np(dim: usize, start: i64, end: i64, step: i64) -> Vec<i64> {
        // Indices numpy's x[start:end:step] picks, by simulation.
        let (s, len) = slice_axis(dim, start, end, step).unwrap();
        (0..len as i64).map(|i| s + i * step).collect()
    }

    #[test]
    fn slice_axis_matches_numpy() {
        assert_eq!(np(5, 1, 3, 1), vec![1, 2]);
        assert_eq!(np(5, -1, i64::MIN, -1), vec![4, 3, 2, 1, 0]); // x[::-1]
        assert_eq!(np(5, i64::MAX, i64::MIN, -2), vec![4, 2, 0]);
        assert_eq!(np(5, 0, i64::MAX, 2), vec![0, 2, 4]);
        assert_eq!(np(5, -10, 10, 1), vec![0, 1, 2, 3, 4]);
        assert_eq!(np(5, -10, -20, -1), Vec::<i64>::new()); // start -> -1: empty
        assert_eq!(np(5, 3, 1, 1), Vec::<i64>::new());
        assert_eq!(np(5, 3, -4, -1), vec![3, 2]);
        assert_eq!(np(0, 0, 10, 1), Vec::<i64>::new());
        assert_eq!(np(4, 1, 10, i64::MIN), Vec::<i64>::new());
        assert_eq!(np(4, 3, 0, i64::MIN), vec![3]);
        assert!(slice_axis(4, 0, 1, 0).is_err());
    }

    #[test]
    fn reshape_targets() {
        assert_eq!(reshape_target(&[2, 3, 4], &[0, -1], false).unwrap(), vec![2, 12]);
        assert_eq!(reshape_target(&[2, 3, 4], &[-1], false).unwrap(), vec![24]);
        assert_eq!(reshape_target(&[0, 3], &[3, 0], true).unwrap(), vec![3, 0]);
        assert!(reshape_target(&[2, 3], &[-1, -1], false).is_err());
        assert!(reshape_target(&[2, 3], &[4, -1], false).is_err());
        assert!(reshape_target(&[2, 3], &[7], false).is_err());
        assert!(reshape_target(&[2, 3], &[-2, 3], false).is_err());
        assert!(reshape_target(&[2, 3], &[i64::MAX, 3], false).is_err());
        assert!(reshape_target(&[0, 3], &[0, -1], true).is_err());
    }
}
