//! Indexing by data: Gather, GatherElements, GatherND, ScatterElements (and the deprecated
//! Scatter), ScatterND, TensorScatter, ArgMax/ArgMin, TopK, and the compositions built on
//! them: MaxUnpool, ReverseSequence.

use super::builders::{bin, cmp, konst_as, reshape, scalar, tmp};
use super::{invalid, norm_axis, unsupported, NodeCx, OpResult};
use kiln_ir::{BinaryOp, BinaryOp as B, CmpOp, DType, Data, Op, ScatterReduction, Tensor, ValueId};

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

pub(super) fn gather(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, idx) = (cx.input(0)?, cx.input(1)?);
    let axis = norm_axis(cx.attrs.int_or("axis", 0)?, cx.rank(x), "axis")?;
    Ok(vec![cx.emit_out(Op::Gather { axis }, &[x, idx], 0)?])
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
