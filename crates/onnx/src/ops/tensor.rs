//! Shape and data-movement ops: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat,
//! Split, Slice, Gather, Expand, Shape, Size, ConstantOfShape, Constant, Identity.

use kiln_ir::{DType, Data, Op, Tensor, TensorType, ValueId};

use super::{invalid, norm_axes, norm_axis, unsupported, NodeCx, OpError, OpResult, FOLD_LIMIT_BYTES};
use crate::data::{checked_numel, decode_tensor, MAX_ELEMS};
use crate::ImportError;

fn product(dims: &[usize]) -> usize {
    dims.iter().product() // dims of a checked shape: no overflow
}

/// Converts requested dims (from an attribute or a constant) to a checked shape.
fn to_shape(dims: &[i64], what: &str) -> OpResult<Vec<usize>> {
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

pub(super) fn gather(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, idx) = (cx.input(0)?, cx.input(1)?);
    let axis = norm_axis(cx.attrs.int_or("axis", 0)?, cx.rank(x), "axis")?;
    Ok(vec![cx.emit_out(Op::Gather { axis }, &[x, idx], 0)?])
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

/// ConstantOfShape: a constant filled with `value` (default f32 0); above the folding limit,
/// an Expand of the scalar instead of a huge constant.
pub(super) fn constant_of_shape(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let Some(spec) = cx.opt_ints_input(0, "shape")? else {
        return invalid("input 0 (shape) is missing");
    };
    let shape = to_shape(&spec, "shape")?;
    let value = match cx.attrs.tensor("value")? {
        None => Tensor::scalar_f32(0.0),
        Some(t) => {
            let name = format!("{}/value", cx.name);
            let v = decode_tensor(t, &name, cx.ext)?;
            if v.numel() != 1 {
                return invalid(format!("attribute `value` must hold one element, got {}", v.ty));
            }
            v.reshaped(Vec::new())
        }
    };
    let numel = product(&shape);
    let bytes = numel * value.dtype().size();
    if bytes <= FOLD_LIMIT_BYTES {
        let ty = TensorType::new(value.dtype(), shape);
        let data = value.data.repeat(numel);
        let t = Tensor::from_bytes(ty, data.into()).map_err(OpError::Invalid)?;
        let name = cx.out_name(0);
        return Ok(vec![cx.konst(name, t)]);
    }
    let name = cx.tmp_name("value");
    let v = cx.konst(name, value);
    Ok(vec![cx.emit_out(Op::Expand { shape }, &[v], 0)?])
}

pub(super) fn constant(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let name = cx.out_name(0);
    let attr_names: Vec<&str> = cx.attrs.names().collect();
    let t = if let Some(t) = cx.attrs.tensor("value")? {
        decode_tensor(t, &name, cx.ext)?
    } else if let Some(v) = cx.attrs.float("value_float")? {
        Tensor::scalar_f32(v)
    } else if let Some(v) = cx.attrs.floats("value_floats")? {
        Tensor::f32(vec![v.len()], v.to_vec())
    } else if let Some(v) = cx.attrs.int("value_int")? {
        Tensor::i64(Vec::new(), vec![v])
    } else if let Some(v) = cx.attrs.ints("value_ints")? {
        Tensor::i64(vec![v.len()], v.to_vec())
    } else if cx.attrs.has("sparse_value") {
        return unsupported("sparse_value (sparse constants)");
    } else if cx.attrs.has("value_string") || cx.attrs.has("value_strings") {
        return Err(OpError::Import(ImportError::UnsupportedDtype { tensor: name, dtype: "STRING".into() }));
    } else {
        return invalid(format!("no value attribute (has {attr_names:?})"));
    };
    Ok(vec![cx.konst(name, t)])
}

/// Range with constant start, limit and delta (its length depends on their values).
pub(super) fn range(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let mut vals = Vec::with_capacity(3);
    for (i, role) in ["start", "limit", "delta"].into_iter().enumerate() {
        let t =
            cx.opt_const_input(i, role)?.ok_or_else(|| OpError::Invalid(format!("input {i} ({role}) is missing")))?;
        if t.numel() != 1 {
            return invalid(format!("{role} must be a scalar, got {}", t.ty));
        }
        vals.push(t);
    }
    let dtype = vals[0].dtype();
    if vals.iter().any(|t| t.dtype() != dtype) {
        return invalid("start, limit and delta have different dtypes");
    }
    let too_long = |n: f64| OpError::Invalid(format!("Range of {n} elements is too long to fold"));
    let limit_elems = (FOLD_LIMIT_BYTES / 8) as f64;
    let data = match dtype {
        DType::F64 => {
            let [s, l, d] = [0, 1, 2].map(|i| vals[i].to_f64_vec()[0]);
            let n = ((l - s) / d).ceil().max(0.0);
            if n.is_nan() || n > limit_elems {
                return Err(too_long(n));
            }
            Data::F64((0..n as usize).map(|i| s + i as f64 * d).collect())
        }
        // f16 and bf16 are computed in f32 and rounded, like their other ops.
        d if d.is_float() => {
            let [s, l, d] = [0, 1, 2].map(|i| vals[i].to_f64_vec()[0] as f32);
            let n = f64::from(((l - s) / d).ceil().max(0.0));
            if n.is_nan() || n > limit_elems {
                return Err(too_long(n));
            }
            let v: Vec<f64> = (0..n as usize).map(|i| f64::from(s + i as f32 * d)).collect();
            Data::from_f64s(dtype, &v)
        }
        DType::Bool => return invalid("Range of bools"),
        _ => {
            let [s, l, d] = [0, 1, 2].map(|i| i128::from(vals[i].to_i64_vec()[0]));
            if d == 0 {
                return invalid("delta is 0");
            }
            let span = l - s;
            let n = if (span > 0) == (d > 0) && span != 0 { (span + d - d.signum()) / d } else { 0 };
            if n as f64 > limit_elems {
                return Err(too_long(n as f64));
            }
            let v: Vec<i64> = (0..n).map(move |i| (s + i * d) as i64).collect();
            Data::from_i64s(dtype, &v)
        }
    };
    let name = cx.out_name(0);
    Ok(vec![cx.konst(name, Tensor::from_data(vec![data.len()], data))])
}

/// Identity (and any op that forwards its input): the input value itself.
pub(super) fn identity(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    Ok(vec![cx.input(0)?])
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
