//! Ops whose result shape depends on data: Compress, NonZero, Unique, NonMaxSuppression.
//!
//! Kiln compiles static shapes, so the data that decides the shape must be known at compile
//! time. Compress needs only its condition constant (the data may be a run-time value: the
//! selection becomes a Gather). NonZero, Unique and NonMaxSuppression are evaluated while
//! importing and need every input constant; otherwise they fail with the `NeedsConstant`
//! error, which names the graph inputs the value comes from (`--freeze-input` binds them).

use kiln_ir::{numel, strides_of, Data, Op, Tensor, ValueId};

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

/// NonZero: the indices of the non-zero elements, one row per dimension (row-major order).
pub(super) fn non_zero(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = const_input(cx, 0, "data")?;
    let shape = x.shape().to_vec();
    let strides = strides_of(&shape);
    let nz: Vec<usize> = x.to_f64_vec().iter().enumerate().filter(|(_, &v)| v != 0.0).map(|(i, _)| i).collect();
    let mut out = Vec::with_capacity(nz.len() * shape.len());
    for (d, &s) in strides.iter().enumerate() {
        out.extend(nz.iter().map(|&i| ((i / s) % shape[d]) as i64));
    }
    let name = cx.out_name(0);
    Ok(vec![cx.konst(name, Tensor::i64(vec![shape.len(), nz.len()], out))])
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

/// The corners `(y_min, x_min, y_max, x_max)` of a box.
fn corners(b: &[f64], center: bool) -> (f64, f64, f64, f64) {
    if center {
        let (hw, hh) = (b[2] / 2.0, b[3] / 2.0);
        (b[1] - hh, b[0] - hw, b[1] + hh, b[0] + hw)
    } else {
        (b[0].min(b[2]), b[1].min(b[3]), b[0].max(b[2]), b[1].max(b[3]))
    }
}

/// Whether two boxes overlap by more than `threshold` (intersection over union).
fn suppresses(a: &[f64], b: &[f64], center: bool, threshold: f64) -> bool {
    let (ay0, ax0, ay1, ax1) = corners(a, center);
    let (by0, bx0, by1, bx1) = corners(b, center);
    let (ix0, ix1) = (ax0.max(bx0), ax1.min(bx1));
    let (iy0, iy1) = (ay0.max(by0), ay1.min(by1));
    if ix1 <= ix0 || iy1 <= iy0 {
        return false;
    }
    let inter = (ix1 - ix0) * (iy1 - iy0);
    let (area_a, area_b) = ((ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0));
    let union = area_a + area_b - inter;
    if inter <= 0.0 || area_a <= 0.0 || area_b <= 0.0 || union <= 0.0 {
        return false;
    }
    inter / union > threshold
}

/// NonMaxSuppression: per batch and class, greedily keep the highest-scoring boxes that do
/// not overlap a kept one by more than the IoU threshold; `[selected, 3]` rows of
/// (batch, class, box).
pub(super) fn non_max_suppression(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let boxes = const_input(cx, 0, "boxes")?;
    let scores = const_input(cx, 1, "scores")?;
    let scalar = |cx: &NodeCx, i: usize, role: &str| -> OpResult<Option<f64>> {
        Ok(cx.opt_const_input(i, role)?.and_then(|t| t.to_f64_vec().first().copied()))
    };
    let max_out = scalar(cx, 2, "max_output_boxes_per_class")?.unwrap_or(0.0).max(0.0) as usize;
    let iou = scalar(cx, 3, "iou_threshold")?.unwrap_or(0.0);
    let score_threshold = scalar(cx, 4, "score_threshold")?;
    let center = cx.attrs.int_or("center_point_box", 0)? != 0;
    let (bs, ss) = (boxes.shape().to_vec(), scores.shape().to_vec());
    if bs.len() != 3 || bs[2] != 4 || ss.len() != 3 || ss[0] != bs[0] || ss[2] != bs[1] {
        return invalid(format!("boxes {:?} and scores {:?} do not match ([B, N, 4] and [B, C, N])", bs, ss));
    }
    let (nb, nc, n) = (ss[0], ss[1], ss[2]);
    let (bv, sv) = (boxes.to_f64_vec(), scores.to_f64_vec());
    let mut out: Vec<i64> = Vec::new();
    for b in 0..nb {
        let bx = |i: usize| &bv[(b * n + i) * 4..(b * n + i) * 4 + 4];
        for c in 0..nc {
            let sc = |i: usize| sv[(b * nc + c) * n + i];
            let mut cand: Vec<usize> = (0..n).filter(|&i| score_threshold.is_none_or(|t| sc(i) > t)).collect();
            // Highest score first; ties by lower box index (a stable sort keeps that order).
            cand.sort_by(|&p, &q| sc(q).partial_cmp(&sc(p)).unwrap_or(std::cmp::Ordering::Equal));
            let mut kept: Vec<usize> = Vec::new();
            for i in cand {
                if kept.len() >= max_out {
                    break;
                }
                if kept.iter().all(|&k| !suppresses(bx(i), bx(k), center, iou)) {
                    kept.push(i);
                    out.extend([b as i64, c as i64, i as i64]);
                }
            }
        }
    }
    let rows = out.len() / 3;
    let name = cx.out_name(0);
    Ok(vec![cx.konst(name, Tensor::from_data(vec![rows, 3], Data::I64(out)))])
}
