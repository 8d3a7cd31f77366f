//! Data-dependent indexing and tests: GatherElements, GatherND, ScatterElements (and the
//! deprecated Scatter), ScatterND, ArgMax/ArgMin, IsNaN/IsInf, TopK, and the compositions
//! built on them: MaxUnpool, ReverseSequence.

use kiln_ir::{BinaryOp, CmpOp, DType, Data, Op, ScatterReduction, Tensor, ValueId};

use super::{invalid, norm_axis, NodeCx, OpResult};

pub(super) fn is_nan(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    Ok(vec![cx.emit_out(Op::IsNaN, &[x], 0)?])
}

pub(super) fn is_inf(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let negative = cx.attrs.int_or("detect_negative", 1)? != 0;
    let positive = cx.attrs.int_or("detect_positive", 1)? != 0;
    Ok(vec![cx.emit_out(Op::IsInf { negative, positive }, &[x], 0)?])
}

/// ArgMax (`max`) / ArgMin.
pub(super) fn arg_reduce(cx: &mut NodeCx, max: bool) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let axis = norm_axis(cx.attrs.int_or("axis", 0)?, cx.rank(x), "axis")?;
    let keepdims = cx.attrs.int_or("keepdims", 1)? != 0;
    let select_last = cx.attrs.int_or("select_last_index", 0)? != 0;
    Ok(vec![cx.emit_out(Op::ArgReduce { max, axis, keepdims, select_last }, &[x], 0)?])
}

pub(super) fn gather_elements(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, idx) = (cx.input(0)?, cx.input(1)?);
    let axis = norm_axis(cx.attrs.int_or("axis", 0)?, cx.rank(x), "axis")?;
    Ok(vec![cx.emit_out(Op::GatherElements { axis }, &[x, idx], 0)?])
}

pub(super) fn gather_nd(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, idx) = (cx.input(0)?, cx.input(1)?);
    let b = cx.attrs.int_or("batch_dims", 0)?;
    if b < 0 {
        return invalid(format!("batch_dims {b} is negative"));
    }
    Ok(vec![cx.emit_out(Op::GatherNd { batch_dims: b as usize }, &[x, idx], 0)?])
}

fn reduction(cx: &NodeCx) -> OpResult<ScatterReduction> {
    let r = cx.attrs.string("reduction")?.unwrap_or_else(|| "none".into());
    match ScatterReduction::from_name(&r) {
        Some(r) => Ok(r),
        None => invalid(format!("unknown reduction `{r}`")),
    }
}

/// ScatterElements, and Scatter (its deprecated name, opset 9-10).
pub(super) fn scatter_elements(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, idx, upd) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let axis = norm_axis(cx.attrs.int_or("axis", 0)?, cx.rank(x), "axis")?;
    let reduction = reduction(cx)?;
    Ok(vec![cx.emit_out(Op::ScatterElements { axis, reduction }, &[x, idx, upd], 0)?])
}

pub(super) fn scatter_nd(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, idx, upd) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let reduction = reduction(cx)?;
    Ok(vec![cx.emit_out(Op::ScatterNd { reduction }, &[x, idx, upd], 0)?])
}

/// TopK: the indices (a HIR op of their own), and the values as a GatherElements of them.
/// The result is always sorted, which `sorted = 0` allows.
pub(super) fn top_k(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(2, "")?;
    let x = cx.input(0)?;
    let k = if cx.opset >= 10 {
        match cx.opt_ints_input(1, "k")?.as_deref() {
            Some(&[k]) => k,
            Some(v) => return invalid(format!("input 1 (k) must hold one value, got {v:?}")),
            None => return invalid("input 1 (k) is missing"),
        }
    } else {
        cx.attrs.int_or("k", -1)?
    };
    let axis = norm_axis(cx.attrs.int_or("axis", -1)?, cx.rank(x), "axis")?;
    let largest = cx.attrs.int_or("largest", 1)? != 0;
    let n = cx.shape(x)[axis];
    if k < 0 || k as u64 > n as u64 {
        return invalid(format!("k = {k} is outside [0, {n}] for axis {axis}"));
    }
    let name = cx.out_name(1);
    let idx = cx.emit(Op::TopKIndices { axis, k: k as usize, largest }, &[x], name)?;
    let values = cx.emit_out(Op::GatherElements { axis }, &[x, idx], 0)?;
    Ok(vec![values, idx])
}

/// `[0, 1, …, n-1]` (i64) laid along `axis` of a rank-`rank` tensor (ones elsewhere).
fn iota(cx: &mut NodeCx, n: usize, axis: usize, rank: usize) -> ValueId {
    let mut shape = vec![1; rank];
    shape[axis] = n;
    let name = cx.tmp_name("iota");
    cx.konst(name, Tensor::i64(shape, (0..n as i64).collect()))
}

/// MaxUnpool: the values scattered (ScatterND over the flattened result) to their flat
/// indices in the inferred output shape, then zero-padded at the end of each axis up to
/// `output_shape` (as ONNX's reference does).
pub(super) fn max_unpool(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, idx) = (cx.input(0)?, cx.input(1)?);
    let (xs, dtype) = (cx.shape(x), cx.ty(x).dtype);
    if xs.len() < 3 {
        return invalid(format!("input of shape {xs:?} has no spatial axes"));
    }
    let n = xs.len() - 2;
    let attr = |cx: &NodeCx, name: &str, len: usize, default: i64| -> OpResult<Vec<i64>> {
        match cx.attrs.ints(name)? {
            None => Ok(vec![default; len]),
            Some(v) if v.len() == len && v.iter().all(|&d| (0..=1 << 31).contains(&d)) => Ok(v.to_vec()),
            Some(v) => invalid(format!("attribute `{name}` = {v:?} must have {len} values in range")),
        }
    };
    let Some(kernel) = cx.attrs.ints("kernel_shape")?.map(<[i64]>::to_vec) else {
        return invalid("attribute `kernel_shape` is missing");
    };
    if kernel.len() != n || kernel.iter().any(|&k| !(1..=1 << 31).contains(&k)) {
        return invalid(format!("attribute `kernel_shape` = {kernel:?} must have {n} positive values"));
    }
    let strides = attr(cx, "strides", n, 1)?;
    let pads = attr(cx, "pads", 2 * n, 0)?;
    let mut inferred = xs[..2].to_vec();
    for d in 0..n {
        let e = (xs[2 + d] as i128 - 1) * i128::from(strides[d]) - i128::from(pads[d] + pads[n + d])
            + i128::from(kernel[d]);
        if e < 1 || e > crate::data::MAX_ELEMS as i128 {
            return invalid(format!("inferred output extent {e} on spatial axis {d}"));
        }
        inferred.push(e as usize);
    }
    if crate::data::checked_numel(&inferred).is_none() {
        return invalid(format!("inferred output shape {inferred:?} is too large"));
    }
    let out_shape = match cx.opt_ints_input(2, "output_shape")? {
        None => inferred.clone(),
        Some(s)
            if s.len() == xs.len()
                && s.iter().zip(&inferred).all(|(&o, &i)| o >= i as i64)
                && crate::data::checked_numel(&s.iter().map(|&d| d as usize).collect::<Vec<_>>()).is_some() =>
        {
            s.iter().map(|&d| d as usize).collect()
        }
        Some(s) => return invalid(format!("output_shape {s:?} is smaller than the inferred shape {inferred:?}")),
    };
    let total: usize = inferred.iter().product();
    if total > crate::data::MAX_ELEMS || xs.iter().product::<usize>() != cx.shape(idx).iter().product::<usize>() {
        return invalid(format!("indices of shape {:?} do not match input {xs:?}", cx.shape(idx)));
    }
    let zero = |cx: &mut NodeCx, shape: Vec<usize>| {
        let name = cx.tmp_name("zeros");
        let z = cx.konst(name, Tensor::from_data(Vec::<usize>::new(), zero_data(dtype)));
        let name = cx.tmp_name("zeros");
        cx.emit(Op::Expand { shape }, &[z], name)
    };
    let data = zero(cx, vec![total])?;
    let name = cx.tmp_name("idx");
    let cnt = cx.shape(idx).iter().product::<usize>();
    let flat_idx = cx.emit(Op::Reshape { shape: vec![cnt, 1] }, &[idx], name)?;
    let name = cx.tmp_name("upd");
    let upd = cx.emit(Op::Reshape { shape: vec![cnt] }, &[x], name)?;
    let name = cx.tmp_name("scatter");
    let y = cx.emit(Op::ScatterNd { reduction: ScatterReduction::None }, &[data, flat_idx, upd], name)?;
    if out_shape == inferred {
        return Ok(vec![cx.emit_out(Op::Reshape { shape: inferred }, &[y], 0)?]);
    }
    let name = cx.tmp_name("unflat");
    let mut y = cx.emit(Op::Reshape { shape: inferred.clone() }, &[y], name)?;
    let mut cur = inferred;
    for d in 0..cur.len() {
        if out_shape[d] == cur[d] {
            continue;
        }
        let mut pad_shape = cur.clone();
        pad_shape[d] = out_shape[d] - cur[d];
        let z = zero(cx, pad_shape)?;
        cur[d] = out_shape[d];
        let name = cx.tmp_name("pad");
        y = cx.emit(Op::Concat { axis: d }, &[y, z], name)?;
    }
    Ok(vec![cx.emit_out(Op::Identity, &[y], 0)?])
}

fn zero_data(dtype: DType) -> Data {
    Data::from_f64s(dtype, &[0.0])
}

/// ReverseSequence: a GatherElements along the time axis with index
/// `t < len[b] ? len[b] - 1 - t : t`.
pub(super) fn reverse_sequence(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, lens) = (cx.input(0)?, cx.input(1)?);
    let xs = cx.shape(x);
    let r = xs.len();
    let ta = norm_axis(cx.attrs.int_or("time_axis", 0)?, r, "time_axis")?;
    let ba = norm_axis(cx.attrs.int_or("batch_axis", 1)?, r, "batch_axis")?;
    if r < 2 || ta == ba || cx.shape(lens) != [xs[ba]] || !cx.ty(lens).dtype.is_int() {
        return invalid(format!(
            "sequence_lens of shape {:?} do not fit input {xs:?} (batch_axis {ba}, time_axis {ta})",
            cx.shape(lens)
        ));
    }
    let t = iota(cx, xs[ta], ta, r);
    let mut ls = vec![1; r];
    ls[ba] = xs[ba];
    let name = cx.tmp_name("lens");
    let l = cx.emit(Op::cast(DType::I64), &[lens], name)?;
    let name = cx.tmp_name("lens");
    let l = cx.emit(Op::Reshape { shape: ls }, &[l], name)?;
    let name = cx.tmp_name("one");
    let one = cx.konst(name, Tensor::i64(Vec::<usize>::new(), vec![1]));
    let name = cx.tmp_name("last");
    let last = cx.emit(Op::Binary(BinaryOp::Sub), &[l, one], name)?;
    let name = cx.tmp_name("rev");
    let rev = cx.emit(Op::Binary(BinaryOp::Sub), &[last, t], name)?;
    let name = cx.tmp_name("in_seq");
    let inside = cx.emit(Op::Compare(CmpOp::Less), &[t, l], name)?;
    let name = cx.tmp_name("idx");
    let idx = cx.emit(Op::Where, &[inside, rev, t], name)?;
    let name = cx.tmp_name("idx");
    let idx = cx.emit(Op::Expand { shape: xs }, &[idx], name)?;
    Ok(vec![cx.emit_out(Op::GatherElements { axis: ta }, &[x, idx], 0)?])
}

/// GridSample (2-D and 3-D): modes bilinear/linear, nearest, bicubic/cubic (the names of opsets 16
/// and 20); padding zeros, border or reflection.
pub(super) fn grid_sample(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    use kiln_ir::{GridMode, GridPadding};
    cx.outputs_at_most(1, "")?;
    let (x, grid) = (cx.input(0)?, cx.input(1)?);
    if !(4..=5).contains(&cx.rank(x)) {
        return super::unsupported(format!("GridSample of a {}-D input: only 2-D and 3-D images", cx.rank(x)));
    }
    let mode = match cx.attrs.string("mode")?.as_deref().unwrap_or("linear") {
        "linear" | "bilinear" => GridMode::Linear,
        "nearest" => GridMode::Nearest,
        "cubic" | "bicubic" => GridMode::Cubic,
        m => return invalid(format!("unknown mode `{m}`")),
    };
    let p = cx.attrs.string("padding_mode")?.unwrap_or_else(|| "zeros".into());
    let Some(padding) = GridPadding::from_name(&p) else {
        return invalid(format!("unknown padding_mode `{p}`"));
    };
    let align_corners = cx.attrs.int_or("align_corners", 0)? != 0;
    Ok(vec![cx.emit_out(Op::GridSample { mode, padding, align_corners }, &[x, grid], 0)?])
}

/// RoiAlign with a fixed sampling ratio (0, the adaptive grid whose size depends on each
/// roi, is not supported).
pub(super) fn roi_align(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, rois, bi) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let default_ctm = if cx.opset >= 16 { "half_pixel" } else { "output_half_pixel" };
    let half_pixel = match cx.attrs.string("coordinate_transformation_mode")?.as_deref().unwrap_or(default_ctm) {
        "half_pixel" => true,
        "output_half_pixel" => false,
        m => return invalid(format!("unknown coordinate_transformation_mode `{m}`")),
    };
    let max = match cx.attrs.string("mode")?.as_deref().unwrap_or("avg") {
        "avg" => false,
        "max" => true,
        m => return invalid(format!("unknown mode `{m}`")),
    };
    let limit = 1 << 20;
    let dim = |cx: &NodeCx, k: &str| -> OpResult<usize> {
        match cx.attrs.int_or(k, 1)? {
            v @ 1..=1048576 => Ok(v as usize),
            v => invalid(format!("attribute `{k}` = {v} is out of range")),
        }
    };
    let out_hw = [dim(cx, "output_height")?, dim(cx, "output_width")?];
    let sampling_ratio = match cx.attrs.int_or("sampling_ratio", 0)? {
        0 => return super::unsupported("RoiAlign with sampling_ratio 0 (adaptive)"),
        v if v > 0 && v <= limit => v as usize,
        v => return invalid(format!("attribute `sampling_ratio` = {v} is out of range")),
    };
    let spatial_scale = cx.attrs.float_or("spatial_scale", 1.0)?;
    let op = Op::RoiAlign { out_hw, sampling_ratio, spatial_scale, max, half_pixel };
    Ok(vec![cx.emit_out(op, &[x, rois, bi], 0)?])
}
