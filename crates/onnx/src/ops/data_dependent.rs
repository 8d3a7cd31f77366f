//! Ops whose result shape depends on data: Compress, NonZero, Unique, NonMaxSuppression.
//!
//! With constant inputs they are evaluated while importing (NonZero and NonMaxSuppression by
//! the reference evaluation of their HIR ops). Compress needs only its condition constant
//! (the data may be a run-time value: the selection becomes a Gather). Otherwise they fail
//! with the `NeedsConstant` error, which the importer turns into the run-time forms of
//! `import/cases.rs` (NonZero, NonMaxSuppression, Compress); Unique stays an error naming the
//! graph inputs its value comes from (`--freeze-input` binds them).

use kiln_ir::{numel, Op, Tensor, ValueId};

use super::{invalid, norm_axis, NodeCx, OpResult};

/// Input `i`, which must be a compile-time constant.
fn const_input(cx: &NodeCx, i: usize, role: &str) -> OpResult<Tensor> {
    match cx.opt_const_input(i, role)? {
        Some(t) => Ok(t),
        None => invalid(format!("input {i} ({role}) is missing")),
    }
}

/// The tensor whose element `k` is element `map[k]` of `t` (any dtype).
fn take(t: &Tensor, map: &[usize], shape: Vec<usize>) -> Tensor {
    let es = t.dtype().size();
    let mut bytes = Vec::with_capacity(map.len() * es);
    for &i in map {
        bytes.extend_from_slice(&t.data[i * es..(i + 1) * es]);
    }
    Tensor::from_bytes(kiln_ir::TensorType::new(t.dtype(), shape), bytes.into()).expect("length matches shape")
}

/// Compress: the slices along `axis` (or the elements of the flattened input) whose
/// condition is true; a Gather with constant indices.
pub(super) fn compress(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let mut x = cx.input(0)?;
    let cond = const_input(cx, 1, "condition")?;
    if cond.shape().len() != 1 {
        return invalid(format!("condition must be 1-D, got {}", cond.ty));
    }
    let axis = match cx.attrs.int("axis")? {
        Some(a) => norm_axis(a, cx.rank(x), "axis")?,
        None => {
            let n = numel(&cx.shape(x));
            let name = cx.tmp_name("flat");
            x = cx.emit(Op::Reshape { shape: vec![n] }, &[x], name)?;
            0
        }
    };
    let dim = cx.shape(x)[axis];
    let keep: Vec<i64> =
        cond.to_f64_vec().iter().take(dim).enumerate().filter(|(_, &c)| c != 0.0).map(|(i, _)| i as i64).collect();
    let name = cx.tmp_name("keep");
    let idx = cx.konst(name, Tensor::i64(vec![keep.len()], keep));
    Ok(vec![cx.emit_out(Op::Gather { axis }, &[x, idx], 0)?])
}

/// The rows a packed scan result holds (see `Op::NonZero`): its count, then `count · width`
/// elements, as a constant `shape(count)`.
fn unpack(packed: &Tensor, shape: impl Fn(usize) -> Vec<usize>) -> Tensor {
    let v = packed.to_i64_vec();
    let count = v[0] as usize;
    let shape = shape(count);
    let n: usize = shape.iter().product();
    Tensor::i64(shape, v[1..1 + n].to_vec())
}

/// NonZero: the indices of the non-zero elements, one row per dimension (row-major order).
pub(super) fn non_zero(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = const_input(cx, 0, "data")?;
    let rank = x.shape().len();
    let packed = kiln_ir::ops::eval(&Op::NonZero, &[&x]).map_err(super::OpError::Invalid)?;
    let name = cx.out_name(0);
    Ok(vec![cx.konst(name, unpack(&packed[0], |n| vec![rank, n]))])
}

/// A sort key for Unique: integers compare exactly, floats as f64.
#[derive(Clone, PartialEq, PartialOrd)]
enum Key {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// Unique (numpy `unique` semantics, as ONNX's reference): sorted unique values or slices
/// along `axis`, with first-occurrence indices, inverse indices and counts; `sorted=0` keeps
/// first-occurrence order.
pub(super) fn unique(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let x = const_input(cx, 0, "X")?;
    let sorted = cx.attrs.int_or("sorted", 1)? != 0;
    let (x, axis) = match cx.attrs.int("axis")? {
        Some(a) => {
            let axis = norm_axis(a, x.shape().len(), "axis")?;
            (x, axis)
        }
        None => {
            let n = x.numel();
            (x.reshaped(vec![n]), 0)
        }
    };
    let shape = x.shape().to_vec();
    let (outer, len, inner) = (numel(&shape[..axis]), shape[axis], numel(&shape[axis + 1..]));
    // The flat element indices of slice `j` along the axis.
    let slice = |j: usize| -> Vec<usize> {
        (0..outer).flat_map(|o| (0..inner).map(move |i| (o * len + j) * inner + i)).collect()
    };
    let is_float = x.dtype().is_float();
    let (fv, iv) = if is_float { (x.to_f64_vec(), Vec::new()) } else { (Vec::new(), x.to_i64_vec()) };
    let key = |j: usize| -> Key {
        let s = slice(j);
        if is_float {
            Key::Float(s.iter().map(|&k| fv[k]).collect())
        } else {
            Key::Int(s.iter().map(|&k| iv[k]).collect())
        }
    };
    let keys: Vec<Key> = (0..len).map(key).collect();
    // Distinct keys with their first occurrence, in first-occurrence order.
    let mut firsts: Vec<usize> = Vec::new();
    let mut inverse = vec![0usize; len];
    let mut counts: Vec<i64> = Vec::new();
    for j in 0..len {
        match firsts.iter().position(|&f| keys[f] == keys[j]) {
            Some(u) => {
                inverse[j] = u;
                counts[u] += 1;
            }
            None => {
                inverse[j] = firsts.len();
                firsts.push(j);
                counts.push(1);
            }
        }
    }
    let mut order: Vec<usize> = (0..firsts.len()).collect();
    if sorted {
        let mut bad = false;
        order.sort_by(|&a, &b| {
            keys[firsts[a]].partial_cmp(&keys[firsts[b]]).unwrap_or_else(|| {
                bad = true;
                std::cmp::Ordering::Equal
            })
        });
        if bad {
            return invalid("Unique of values that do not order (NaN)");
        }
    }
    let mut rank_of = vec![0usize; order.len()];
    for (r, &u) in order.iter().enumerate() {
        rank_of[u] = r;
    }
    // The unique slices along the axis, in output order.
    let mut y_map: Vec<usize> = Vec::with_capacity(outer * order.len() * inner);
    for o in 0..outer {
        for &u in &order {
            y_map.extend((0..inner).map(|i| (o * len + firsts[u]) * inner + i));
        }
    }
    let mut y_shape = shape.clone();
    y_shape[axis] = order.len();
    let y = take(&x, &y_map, y_shape);
    let indices: Vec<i64> = order.iter().map(|&u| firsts[u] as i64).collect();
    let inv: Vec<i64> = inverse.iter().map(|&u| rank_of[u] as i64).collect();
    let cnt: Vec<i64> = order.iter().map(|&u| counts[u]).collect();
    let n = order.len();
    let outs = [y, Tensor::i64(vec![n], indices), Tensor::i64(vec![len], inv), Tensor::i64(vec![n], cnt)];
    let mut vals = Vec::new();
    for (k, t) in outs.into_iter().enumerate() {
        let name = cx.out_name(k);
        vals.push(cx.konst(name, t));
    }
    Ok(vals)
}

/// NonMaxSuppression: per batch and class, greedily keep the highest-scoring boxes that do
/// not overlap a kept one by more than the IoU threshold; `[selected, 3]` rows of
/// (batch, class, box), by the reference evaluation of `Op::NonMaxSuppression`.
pub(super) fn non_max_suppression(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let boxes = const_input(cx, 0, "boxes")?;
    let scores = const_input(cx, 1, "scores")?;
    let scalar = |cx: &NodeCx, i: usize, role: &str| -> OpResult<Option<f64>> {
        Ok(cx.opt_const_input(i, role)?.and_then(|t| t.to_f64_vec().first().copied()))
    };
    let max_out = scalar(cx, 2, "max_output_boxes_per_class")?.unwrap_or(0.0).max(0.0) as i64;
    let iou = scalar(cx, 3, "iou_threshold")?.unwrap_or(0.0) as f32;
    let threshold = scalar(cx, 4, "score_threshold")?.map_or(f32::NEG_INFINITY, |t| t as f32);
    let center_point_box = cx.attrs.int_or("center_point_box", 0)? != 0;
    let f32s = |t: &Tensor| Tensor::f32(t.shape().to_vec(), t.to_f64_vec().into_iter().map(|v| v as f32).collect());
    let params =
        [Tensor::i64(vec![], vec![max_out]), Tensor::f32(vec![], vec![iou]), Tensor::f32(vec![], vec![threshold])];
    let ins = [&f32s(&boxes), &f32s(&scores), &params[0], &params[1], &params[2]];
    let packed =
        kiln_ir::ops::eval(&Op::NonMaxSuppression { center_point_box }, &ins).map_err(super::OpError::Invalid)?;
    let name = cx.out_name(0);
    Ok(vec![cx.konst(name, unpack(&packed[0], |n| vec![n, 3]))])
}
