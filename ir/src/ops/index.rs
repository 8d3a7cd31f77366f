//! Data-dependent indexing: GatherElements, GatherND, ScatterElements, ScatterND, and the
//! ArgMax/ArgMin and IsNaN/IsInf tests.
//!
//! Gathers are index maps (see the module doc of `ops`); scatters copy the data, then apply
//! the updates one by one in row-major order of the updates, which is ONNX's reference
//! semantics (with duplicate indices and no reduction, the last update wins).

use super::{f32s, take};
use crate::op::ScatterReduction;
use crate::text::{AttrList, Attrs};
use crate::{numel, strides_of, Data, Op, Tensor, TensorType};

/// Index `i` (of any sign) into an axis of extent `dim`, wrapped; an error when outside
/// `[-dim, dim)`.
fn wrap(i: i64, dim: usize, what: &str) -> Result<usize, String> {
    let d = dim as i64;
    if i < -d || i >= d {
        return Err(format!("{what}: index {i} is outside [-{d}, {d})"));
    }
    Ok((if i < 0 { i + d } else { i }) as usize)
}

/// Calls `f(flat, multi_index)` for every element of `shape`, in row-major order.
fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize]) -> Result<(), String>) -> Result<(), String> {
    let mut idx = vec![0usize; shape.len()];
    for flat in 0..numel(shape) {
        f(flat, &idx)?;
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(())
}

/// For every element `p` of the indices: the flat data index of `p` with `p[axis] := idx[p]`.
fn elements_map(x: &Tensor, idx: &Tensor, axis: usize) -> Result<Vec<usize>, String> {
    let xs = strides_of(x.shape());
    let iv = idx.to_i64_vec();
    let mut map = Vec::with_capacity(iv.len());
    for_each_index(idx.shape(), |flat, p| {
        let j = wrap(iv[flat], x.shape()[axis], "gather/scatter elements")?;
        map.push(p.iter().enumerate().map(|(d, &i)| if d == axis { j } else { i } * xs[d]).sum());
        Ok(())
    })?;
    Ok(map)
}

pub(super) fn gather_elements(x: &Tensor, idx: &Tensor, axis: usize) -> Result<Tensor, String> {
    let map = elements_map(x, idx, axis)?;
    Ok(take(x, &map, idx.shape().to_vec()))
}

/// For every row of the indices (all dims but the last): the flat data index of the start of
/// the slice it selects, and the slice length.
fn nd_rows(x: &Tensor, idx: &Tensor, b: usize) -> Result<(Vec<usize>, usize), String> {
    let (xs, q) = (strides_of(x.shape()), idx.shape().len());
    let m = idx.shape()[q - 1];
    let iv = idx.to_i64_vec();
    let mut rows = Vec::new();
    for_each_index(&idx.shape()[..q - 1], |r, p| {
        let mut base: usize = p[..b].iter().zip(&xs).map(|(i, s)| i * s).sum();
        for t in 0..m {
            base += wrap(iv[r * m + t], x.shape()[b + t], "nd index")? * xs[b + t];
        }
        rows.push(base);
        Ok(())
    })?;
    Ok((rows, numel(&x.shape()[b + m..])))
}

pub(super) fn gather_nd(x: &Tensor, idx: &Tensor, b: usize, out_shape: Vec<usize>) -> Result<Tensor, String> {
    let (rows, slice) = nd_rows(x, idx, b)?;
    let map: Vec<usize> = rows.iter().flat_map(|&r| r..r + slice).collect();
    Ok(take(x, &map, out_shape))
}

/// `out = data; out[target[k]] (op)= updates[k]` for k in order.
fn scatter(x: &Tensor, upd: &Tensor, targets: &[usize], red: ScatterReduction) -> Result<Tensor, String> {
    fn run<T: Copy>(mut out: Vec<T>, upd: &[T], targets: &[usize], f: impl Fn(T, T) -> T) -> Vec<T> {
        for (k, &t) in targets.iter().enumerate() {
            out[t] = f(out[t], upd[k]);
        }
        out
    }
    use ScatterReduction as S;
    let data = match (x.data(), upd.data()) {
        (Data::F32(o), Data::F32(u)) => Data::F32(run(o, &u, targets, |a: f32, b: f32| match red {
            S::None => b,
            S::Add => a + b,
            S::Mul => a * b,
            S::Max => a.max(b),
            S::Min => a.min(b),
        })),
        (Data::I32(o), Data::I32(u)) => Data::I32(run(o, &u, targets, |a: i32, b: i32| match red {
            S::None => b,
            S::Add => a.wrapping_add(b),
            S::Mul => a.wrapping_mul(b),
            S::Max => a.max(b),
            S::Min => a.min(b),
        })),
        (Data::I64(o), Data::I64(u)) => Data::I64(run(o, &u, targets, |a: i64, b: i64| match red {
            S::None => b,
            S::Add => a.wrapping_add(b),
            S::Mul => a.wrapping_mul(b),
            S::Max => a.max(b),
            S::Min => a.min(b),
        })),
        (Data::Bool(o), Data::Bool(u)) => Data::Bool(run(o, &u, targets, |a: bool, b: bool| match red {
            S::Max => a | b,
            S::Min => a & b,
            _ => b,
        })),
        _ => return Err("scatter data and updates differ in dtype".into()),
    };
    Ok(Tensor::from_data(x.shape().to_vec(), data))
}

pub(super) fn scatter_elements(
    x: &Tensor,
    idx: &Tensor,
    upd: &Tensor,
    axis: usize,
    red: ScatterReduction,
) -> Result<Tensor, String> {
    let targets = elements_map(x, idx, axis)?;
    scatter(x, upd, &targets, red)
}

pub(super) fn scatter_nd(x: &Tensor, idx: &Tensor, upd: &Tensor, red: ScatterReduction) -> Result<Tensor, String> {
    let (rows, slice) = nd_rows(x, idx, 0)?;
    let targets: Vec<usize> = rows.iter().flat_map(|&r| r..r + slice).collect();
    scatter(x, upd, &targets, red)
}

/// The index of the first (or last) maximum (or minimum) along `axis`; NaN never wins (a
/// row of NaN gives 0).
pub(super) fn arg_reduce(
    x: &Tensor,
    max: bool,
    axis: usize,
    select_last: bool,
    out_shape: Vec<usize>,
) -> Result<Tensor, String> {
    let s = x.shape();
    let (outer, len, inner) = (numel(&s[..axis]), s[axis], numel(&s[axis + 1..]));
    let v = x.to_f64_vec();
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| v[(o * len + j) * inner + i];
            let mut best: Option<usize> = None;
            for j in (0..len).filter(|&j| !at(j).is_nan()) {
                let Some(b) = best.map(at) else {
                    best = Some(j);
                    continue;
                };
                let e = at(j);
                if (if max { e > b } else { e < b }) || (select_last && e == b) {
                    best = Some(j);
                }
            }
            // A row of NaN gives 0.
            out.push(best.unwrap_or(0) as i64);
        }
    }
    Ok(Tensor::i64(out_shape, out))
}

/// The positions of the `k` largest (smallest) elements along `axis`, in order; ties keep
/// the lower position first (a stable sort).
pub(super) fn top_k_indices(
    x: &Tensor,
    axis: usize,
    k: usize,
    largest: bool,
    out_shape: Vec<usize>,
) -> Result<Tensor, String> {
    let s = x.shape();
    let (outer, len, inner) = (numel(&s[..axis]), s[axis], numel(&s[axis + 1..]));
    let v = x.to_f64_vec();
    let mut out = vec![0i64; outer * k * inner];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| v[(o * len + j) * inner + i];
            let mut order: Vec<usize> = (0..len).collect();
            order.sort_by(|&a, &b| {
                let c = at(a).partial_cmp(&at(b)).unwrap_or(std::cmp::Ordering::Equal);
                if largest {
                    c.reverse()
                } else {
                    c
                }
            });
            for (j, &p) in order.iter().take(k).enumerate() {
                out[(o * k + j) * inner + i] = p as i64;
            }
        }
    }
    Ok(Tensor::i64(out_shape, out))
}

pub(super) fn is_nan_inf(x: &Tensor, nan: bool, negative: bool, positive: bool) -> Result<Tensor, String> {
    let v = f32s(x)?;
    let out =
        v.iter()
            .map(|&e| {
                if nan {
                    e.is_nan()
                } else {
                    (positive && e == f32::INFINITY) || (negative && e == f32::NEG_INFINITY)
                }
            })
            .collect();
    Ok(Tensor::bool(x.shape().to_vec(), out))
}

/// The type rule of the indexing ops: their output types from their input types and
/// attributes (see [`crate::infer::infer`]).
pub(crate) fn infer(op: &crate::Op, inputs: &[&crate::TensorType]) -> crate::infer::InferResult {
    use crate::infer::{arity, elements_shapes, nd_shapes, scatter_dtype, want_float};
    use crate::Op::*;
    use crate::TensorType;
    use crate::{DType, Shape};
    let one = |t: TensorType| Ok(vec![t]);
    match op {
        IsNaN | IsInf { .. } => {
            arity(op, inputs, 1, 1)?;
            want_float(op, inputs[0])?;
            one(TensorType::new(DType::Bool, inputs[0].shape.clone()))
        }
        ArgReduce { axis, keepdims, .. } => {
            arity(op, inputs, 1, 1)?;
            let x = inputs[0];
            if x.dtype == DType::Bool {
                return Err(format!("{} is not defined on bool", op.name()));
            }
            if *axis >= x.rank() {
                return Err(format!("axis {axis} out of range for rank {}", x.rank()));
            }
            if x.shape[*axis] == 0 {
                return Err(format!("{} over an empty axis", op.name()));
            }
            let mut s = x.shape.clone();
            if *keepdims {
                s[*axis] = 1;
            } else {
                s.remove(*axis);
            }
            one(TensorType::new(DType::I64, s))
        }
        TopKIndices { axis, k, .. } => {
            arity(op, inputs, 1, 1)?;
            let x = inputs[0];
            if x.dtype == DType::Bool {
                return Err(format!("{} is not defined on bool", op.name()));
            }
            if *axis >= x.rank() || *k > x.shape[*axis] {
                return Err(format!("top_k of {k} along axis {axis} does not fit shape {:?}", x.shape));
            }
            let mut s = x.shape.clone();
            s[*axis] = *k;
            one(TensorType::new(DType::I64, s))
        }
        NonZero => {
            arity(op, inputs, 1, 1)?;
            let x = inputs[0];
            one(TensorType::new(DType::I64, vec![1 + x.rank() * x.numel()]))
        }
        NonMaxSuppression { .. } => {
            arity(op, inputs, 5, 5)?;
            let (bx, sc) = (inputs[0], inputs[1]);
            let (bs, ss) = (&bx.shape, &sc.shape);
            if bx.dtype != DType::F32 || sc.dtype != DType::F32 {
                return Err(format!("boxes and scores must be f32, got {} and {}", bx.dtype, sc.dtype));
            }
            if bs.len() != 3 || bs[2] != 4 || ss.len() != 3 || ss[0] != bs[0] || ss[2] != bs[1] {
                return Err(format!("boxes {bs:?} and scores {ss:?} do not match ([B, N, 4] and [B, C, N])"));
            }
            let params = [(2, DType::I64), (3, DType::F32), (4, DType::F32)];
            if let Some((i, d)) = params.iter().find(|&&(i, d)| inputs[i].dtype != d || inputs[i].numel() != 1) {
                return Err(format!("input {i} must be one {d}, got {}", inputs[*i]));
            }
            one(TensorType::new(DType::I64, vec![1 + ss.iter().product::<usize>() * 3]))
        }
        GatherElements { axis } => {
            arity(op, inputs, 2, 2)?;
            let (x, idx) = (inputs[0], inputs[1]);
            elements_shapes(op, x, idx, *axis)?;
            one(TensorType::new(x.dtype, idx.shape.clone()))
        }
        ScatterElements { axis, reduction } => {
            arity(op, inputs, 3, 3)?;
            let (x, idx, upd) = (inputs[0], inputs[1], inputs[2]);
            elements_shapes(op, x, idx, *axis)?;
            scatter_dtype(op, x, upd, *reduction)?;
            if upd.shape != idx.shape {
                return Err(format!("updates shape {:?} differs from indices shape {:?}", upd.shape, idx.shape));
            }
            one(x.clone())
        }
        GatherNd { batch_dims } => {
            arity(op, inputs, 2, 2)?;
            let (x, idx) = (inputs[0], inputs[1]);
            let (b, m) = nd_shapes(op, x, idx, *batch_dims)?;
            let mut s: Shape = idx.shape[..idx.rank() - 1].to_vec();
            s.extend_from_slice(&x.shape[b + m..]);
            one(TensorType::new(x.dtype, s))
        }
        ScatterNd { reduction } => {
            arity(op, inputs, 3, 3)?;
            let (x, idx, upd) = (inputs[0], inputs[1], inputs[2]);
            let (_, k) = nd_shapes(op, x, idx, 0)?;
            scatter_dtype(op, x, upd, *reduction)?;
            let mut s: Shape = idx.shape[..idx.rank() - 1].to_vec();
            s.extend_from_slice(&x.shape[k..]);
            if upd.shape != s {
                return Err(format!("updates shape {:?} must be {s:?}", upd.shape));
            }
            one(x.clone())
        }
        _ => unreachable!("{} is not an indexing op", op.name()),
    }
}

/// [`Op::NonZero`]: the count, then the coordinates row by row, padded with zeros.
fn non_zero(x: &Tensor) -> Tensor {
    let shape = x.shape().to_vec();
    let strides = crate::strides_of(&shape);
    let nz: Vec<usize> = x.to_f64_vec().iter().enumerate().filter(|(_, &v)| v != 0.0).map(|(i, _)| i).collect();
    let mut out = vec![0i64; 1 + shape.len() * x.numel()];
    out[0] = nz.len() as i64;
    for (d, &s) in strides.iter().enumerate() {
        for (j, &i) in nz.iter().enumerate() {
            out[1 + d * nz.len() + j] = ((i / s) % shape[d]) as i64;
        }
    }
    Tensor::i64(vec![out.len()], out)
}

/// The corners `(y_min, x_min, y_max, x_max)` of a box (`center`: `[x, y, w, h]`).
fn box_corners(b: &[f32], center: bool) -> (f32, f32, f32, f32) {
    if center {
        let (hw, hh) = (b[2] / 2.0, b[3] / 2.0);
        (b[1] - hh, b[0] - hw, b[1] + hh, b[0] + hw)
    } else {
        (b[0].min(b[2]), b[1].min(b[3]), b[0].max(b[2]), b[1].max(b[3]))
    }
}

/// Whether box `a` overlaps box `b` by more than `threshold` (intersection over union).
pub(crate) fn box_suppresses(a: &[f32], b: &[f32], center: bool, threshold: f32) -> bool {
    let (ay0, ax0, ay1, ax1) = box_corners(a, center);
    let (by0, bx0, by1, bx1) = box_corners(b, center);
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

/// [`Op::NonMaxSuppression`]: the count, then (batch, class, box) rows, padded with zeros.
fn non_max_suppression(inputs: &[&Tensor], center: bool) -> Tensor {
    let (boxes, scores) = (inputs[0], inputs[1]);
    let ss = scores.shape().to_vec();
    let (nb, nc, n) = (ss[0], ss[1], ss[2]);
    let bv: Vec<f32> = boxes.to_f64_vec().into_iter().map(|v| v as f32).collect();
    let sv: Vec<f32> = scores.to_f64_vec().into_iter().map(|v| v as f32).collect();
    let max_out = inputs[2].to_i64_vec()[0].max(0) as usize;
    let iou = inputs[3].to_f64_vec()[0] as f32;
    let threshold = inputs[4].to_f64_vec()[0] as f32;
    let mut out = vec![0i64; 1 + nb * nc * n * 3];
    let mut rows = 0;
    for b in 0..nb {
        let bx = |i: usize| &bv[(b * n + i) * 4..(b * n + i) * 4 + 4];
        for c in 0..nc {
            let sc = |i: usize| sv[(b * nc + c) * n + i];
            let mut cand: Vec<usize> = (0..n).filter(|&i| sc(i) > threshold).collect();
            // Highest score first; ties by lower box index (a stable sort keeps that order).
            cand.sort_by(|&p, &q| sc(q).partial_cmp(&sc(p)).unwrap_or(std::cmp::Ordering::Equal));
            let mut kept: Vec<usize> = Vec::new();
            for i in cand {
                if kept.len() >= max_out {
                    break;
                }
                if kept.iter().all(|&k| !box_suppresses(bx(i), bx(k), center, iou)) {
                    kept.push(i);
                    out[1 + rows * 3..1 + rows * 3 + 3].copy_from_slice(&[b as i64, c as i64, i as i64]);
                    rows += 1;
                }
            }
        }
    }
    out[0] = rows as i64;
    Tensor::i64(vec![out.len()], out)
}

// ---------------------------------------------------------------------------------------
// Dispatch: the reference evaluation and text form of the indexing ops.

/// Evaluates an indexing op (its inputs already checked by [`infer`], whose result is `want`).
pub(super) fn eval(op: &Op, inputs: &[&Tensor], want: &TensorType) -> Result<Tensor, String> {
    match op {
        Op::GatherElements { axis } => gather_elements(inputs[0], inputs[1], *axis),
        Op::GatherNd { batch_dims } => gather_nd(inputs[0], inputs[1], *batch_dims, want.shape.clone()),
        Op::ScatterElements { axis, reduction } => scatter_elements(inputs[0], inputs[1], inputs[2], *axis, *reduction),
        Op::ScatterNd { reduction } => scatter_nd(inputs[0], inputs[1], inputs[2], *reduction),
        Op::TopKIndices { axis, k, largest } => top_k_indices(inputs[0], *axis, *k, *largest, want.shape.clone()),
        Op::IsNaN => is_nan_inf(inputs[0], true, false, false),
        Op::NonZero => Ok(non_zero(inputs[0])),
        Op::NonMaxSuppression { center_point_box } => Ok(non_max_suppression(inputs, *center_point_box)),
        Op::IsInf { negative, positive } => is_nan_inf(inputs[0], false, *negative, *positive),
        Op::ArgReduce { max, axis, select_last, .. } => {
            arg_reduce(inputs[0], *max, *axis, *select_last, want.shape.clone())
        }
        _ => Err(super::not_in_family(op)),
    }
}

/// The attributes of an indexing op, in print order.
pub(super) fn attrs(op: &Op) -> AttrList {
    match op {
        Op::GatherElements { axis } => vec![("axis", axis.to_string())],
        Op::TopKIndices { axis, k, largest } => {
            vec![("axis", axis.to_string()), ("k", k.to_string()), ("largest", largest.to_string())]
        }
        Op::GatherNd { batch_dims } => vec![("batch_dims", batch_dims.to_string())],
        Op::ScatterElements { axis, reduction } => {
            vec![("axis", axis.to_string()), ("reduction", reduction.name().to_string())]
        }
        Op::ScatterNd { reduction } => vec![("reduction", reduction.name().to_string())],
        Op::NonMaxSuppression { center_point_box } => vec![("center_point_box", center_point_box.to_string())],
        Op::IsInf { negative, positive } => {
            vec![("negative", negative.to_string()), ("positive", positive.to_string())]
        }
        Op::ArgReduce { axis, keepdims, select_last, .. } => vec![
            ("axis", axis.to_string()),
            ("keepdims", keepdims.to_string()),
            ("select_last", select_last.to_string()),
        ],
        _ => vec![],
    }
}

/// Builds the indexing op printed as `name` (`None`: not one).
pub(super) fn parse(name: &str, a: &mut Attrs) -> Result<Option<Op>, String> {
    let reduction = |a: &mut Attrs| -> Result<ScatterReduction, String> {
        let r: String = a.word("reduction")?;
        ScatterReduction::from_name(&r).ok_or_else(|| format!("unknown reduction `{r}`"))
    };
    Ok(Some(match name {
        "gather_elements" => Op::GatherElements { axis: a.word("axis")? },
        "gather_nd" => Op::GatherNd { batch_dims: a.word("batch_dims")? },
        "scatter_elements" => Op::ScatterElements { axis: a.word("axis")?, reduction: reduction(a)? },
        "scatter_nd" => Op::ScatterNd { reduction: reduction(a)? },
        "is_nan" => Op::IsNaN,
        "non_zero" => Op::NonZero,
        "non_max_suppression" => Op::NonMaxSuppression { center_point_box: a.word("center_point_box")? },
        "top_k_indices" => Op::TopKIndices { axis: a.word("axis")?, k: a.word("k")?, largest: a.word("largest")? },
        "is_inf" => Op::IsInf { negative: a.word("negative")?, positive: a.word("positive")? },
        "arg_max" | "arg_min" => Op::ArgReduce {
            max: name == "arg_max",
            axis: a.word("axis")?,
            keepdims: a.word("keepdims")?,
            select_last: a.word("select_last")?,
        },
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::run;
    use crate::op::ScatterReduction as S;
    use crate::{Data, Op, Tensor};

    #[test]
    fn gather_elements_and_nd() {
        let x = Tensor::f32(vec![2, 2], vec![1., 2., 3., 4.]);
        let idx = Tensor::i64(vec![2, 2], vec![0, 0, 1, 0]);
        assert_eq!(run(Op::GatherElements { axis: 1 }, &[&x, &idx]).data(), Data::F32(vec![1., 1., 4., 3.]));
        let idx = Tensor::i64(vec![2, 1], vec![1, -2]);
        assert_eq!(run(Op::GatherNd { batch_dims: 0 }, &[&x, &idx]).data(), Data::F32(vec![3., 4., 1., 2.]));
        let idx = Tensor::i64(vec![2, 1], vec![1, 0]);
        assert_eq!(run(Op::GatherNd { batch_dims: 1 }, &[&x, &idx]).data(), Data::F32(vec![2., 3.]));
    }

    #[test]
    fn scatters_apply_updates_in_order() {
        let x = Tensor::f32(vec![1, 5], vec![1., 2., 3., 4., 5.]);
        let idx = Tensor::i64(vec![1, 2], vec![1, 1]);
        let upd = Tensor::f32(vec![1, 2], vec![1.1, 2.1]);
        let op = |reduction| Op::ScatterElements { axis: 1, reduction };
        assert_eq!(run(op(S::None), &[&x, &idx, &upd]).data(), Data::F32(vec![1., 2.1, 3., 4., 5.]));
        assert_eq!(run(op(S::Add), &[&x, &idx, &upd]).data(), Data::F32(vec![1., 2. + 1.1 + 2.1, 3., 4., 5.]));
        let x = Tensor::i64(vec![4], vec![1, 2, 3, 4]);
        let idx = Tensor::i64(vec![2, 1], vec![3, -4]);
        let upd = Tensor::i64(vec![2], vec![10, 20]);
        let op = Op::ScatterNd { reduction: S::Mul };
        assert_eq!(run(op, &[&x, &idx, &upd]).data(), Data::I64(vec![20, 2, 3, 40]));
    }

    #[test]
    fn top_k_is_stable() {
        let x = Tensor::i64(vec![2, 3], vec![1, 3, 3, 2, 0, 2]);
        let op = |k, largest| Op::TopKIndices { axis: 1, k, largest };
        assert_eq!(run(op(2, true), &[&x]).data(), Data::I64(vec![1, 2, 0, 2]));
        assert_eq!(run(op(3, false), &[&x]).data(), Data::I64(vec![0, 1, 2, 1, 0, 2]));
    }

    #[test]
    fn arg_max_min_pick_first_or_last() {
        let x = Tensor::f32(vec![2, 3], vec![1., 3., 3., 2., 0., 0.]);
        let op = |max, select_last| Op::ArgReduce { max, axis: 1, keepdims: false, select_last };
        assert_eq!(run(op(true, false), &[&x]).data(), Data::I64(vec![1, 0]));
        assert_eq!(run(op(true, true), &[&x]).data(), Data::I64(vec![2, 0]));
        assert_eq!(run(op(false, true), &[&x]).data(), Data::I64(vec![0, 2]));
        let x = Tensor::f32(vec![4], vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0]);
        assert_eq!(run(Op::IsNaN, &[&x]).data(), Data::Bool(vec![true, false, false, false]));
        let op = Op::IsInf { negative: false, positive: true };
        assert_eq!(run(op, &[&x]).data(), Data::Bool(vec![false, true, false, false]));
    }
}
