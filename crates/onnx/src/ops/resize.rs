//! Resize and Upsample as, per resized axis, a Gather with constant tap indices and a
//! weighted sum with constant weights (a plain Gather when every output takes one input
//! element). Taps and weights follow the ONNX reference implementation (`op_resize.py`)
//! exactly, coordinate transformation and all, so the result is static and exact up to the
//! order of the float additions. Also AffineGrid: a constant base grid times θᵀ.

use super::builders::{bin, konst_as, scalar, tmp};
use super::{invalid, norm_axes, unsupported, NodeCx, OpError, OpResult};
use crate::data::checked_numel;
use kiln_ir::{BinaryOp as B, DType, Op, ReduceOp, ValueId};

/// How sample coordinates are computed and weighted along one axis.
#[derive(Clone, Debug)]
pub(crate) struct Interp {
    /// `nearest`, `linear` or `cubic`.
    pub mode: String,
    pub coord: String,
    pub nearest_mode: String,
    pub cubic_a: f64,
    pub exclude_outside: bool,
    pub antialias: bool,
}

/// One output position: the input indices it reads (clamped into range) and their weights;
/// `None` when it is the extrapolation value (tf_crop_and_resize outside the input).
pub(crate) type Taps = Option<Vec<(usize, f64)>>;

impl Interp {
    fn coeffs(&self, ratio: f64, scale: f64) -> Vec<f64> {
        let a = self.cubic_a;
        match self.mode.as_str() {
            "nearest" => {
                if ratio == ratio.trunc() {
                    return vec![0.0, 1.0];
                }
                let up = match self.nearest_mode.as_str() {
                    "round_prefer_ceil" => ratio >= 0.5,
                    "floor" => false,
                    "ceil" => true,
                    _ => ratio > 0.5, // round_prefer_floor
                };
                if up {
                    vec![0.0, 1.0]
                } else {
                    vec![1.0, 0.0]
                }
            }
            "linear" if self.antialias => {
                let scale = scale.min(1.0);
                let start = ((-1.0 / scale).floor() + 1.0) as i64;
                let footprint = 2 - 2 * start;
                let c: Vec<f64> = (start..start + footprint)
                    .map(|i| (1.0 - ((i as f64 - ratio) * scale).abs()).clamp(0.0, 1.0))
                    .collect();
                let s: f64 = c.iter().sum();
                c.iter().map(|v| v / s).collect()
            }
            "linear" => vec![1.0 - ratio, ratio],
            _ if self.antialias => {
                let scale = scale.min(1.0);
                let f = |x: f64| {
                    let x = x.abs();
                    let (x2, x3) = (x * x, x * x * x);
                    if x <= 1.0 {
                        (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                    } else if x < 2.0 {
                        a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                    } else {
                        0.0
                    }
                };
                let i_start = ((-2.0 / scale).floor() + 1.0) as i64;
                let i_end = 2 - i_start;
                let c: Vec<f64> = (i_start..i_end).map(|i| f(scale * (i as f64 - ratio))).collect();
                let s: f64 = c.iter().sum();
                c.iter().map(|v| v / s).collect()
            }
            _ => {
                let r1 = 1.0 - ratio;
                vec![
                    ((a * (ratio + 1.0) - 5.0 * a) * (ratio + 1.0) + 8.0 * a) * (ratio + 1.0) - 4.0 * a,
                    ((a + 2.0) * ratio - (a + 3.0)) * ratio * ratio + 1.0,
                    ((a + 2.0) * r1 - (a + 3.0)) * r1 * r1 + 1.0,
                    ((a * (r1 + 1.0) - 5.0 * a) * (r1 + 1.0) + 8.0 * a) * (r1 + 1.0) - 4.0 * a,
                ]
            }
        }
    }

    /// The taps of every output position of an axis of `input` elements resized by `scale`
    /// to `output` elements; `roi` is the axis' `(start, end)` for tf_crop_and_resize.
    pub fn taps(&self, input: usize, output: usize, scale: f64, roi: (f64, f64)) -> Result<Vec<Taps>, String> {
        let (inw, outw) = (input as f64, scale * input as f64);
        let mut all = Vec::with_capacity(output);
        for x in 0..output {
            let xf = x as f64;
            let x_ori = match self.coord.as_str() {
                "align_corners" => {
                    if outw == 1.0 {
                        0.0
                    } else {
                        xf * (inw - 1.0) / (outw - 1.0)
                    }
                }
                "asymmetric" => xf / scale,
                "tf_crop_and_resize" => {
                    let v = if outw == 1.0 {
                        (roi.1 - roi.0) * (inw - 1.0) / 2.0
                    } else {
                        xf * (roi.1 - roi.0) * (inw - 1.0) / (outw - 1.0)
                    } + roi.0 * (inw - 1.0);
                    if v < 0.0 || v > inw - 1.0 {
                        all.push(None);
                        continue;
                    }
                    v
                }
                "pytorch_half_pixel" => {
                    if outw == 1.0 {
                        -0.5
                    } else {
                        (xf + 0.5) / scale - 0.5
                    }
                }
                "half_pixel" => (xf + 0.5) / scale - 0.5,
                "half_pixel_symmetric" => {
                    let adjustment = output as f64 / outw;
                    let offset = inw / 2.0 * (1.0 - adjustment);
                    offset + (xf + 0.5) / scale - 0.5
                }
                other => return Err(format!("coordinate_transformation_mode {other:?} is not known")),
            };
            if !x_ori.is_finite() {
                return Err(format!("sample coordinate {x_ori} is not finite"));
            }
            let ratio = if x_ori == x_ori.trunc() { 1.0 } else { x_ori - x_ori.floor() };
            let mut c = self.coeffs(ratio, scale);
            let n = c.len() as i64;
            // The n indices nearest x_ori (ties to the smaller) in the input padded by
            // ceil(n/2) on each side, as `_get_neighbor` picks them.
            let pw = (n + 1) / 2;
            let limit = input as i64 + 2 * pw;
            let xp = x_ori + pw as f64;
            let fl = xp.floor() as i64;
            let mut cand: Vec<i64> = ((fl - n - 1).max(0)..(fl + n + 2).min(limit)).collect();
            cand.sort_by(|&a, &b| ((xp - a as f64).abs(), a).partial_cmp(&((xp - b as f64).abs(), b)).unwrap());
            cand.truncate(n as usize);
            cand.sort_unstable();
            if cand.len() != c.len() {
                return Err(format!("an axis of {input} elements is too short for {n} taps"));
            }
            let idx: Vec<i64> = cand.iter().map(|&i| i - pw).collect();
            if self.exclude_outside {
                for (k, &i) in idx.iter().enumerate() {
                    if i < 0 || i >= input as i64 {
                        c[k] = 0.0;
                    }
                }
                let s: f64 = c.iter().sum();
                c.iter_mut().for_each(|v| *v /= s);
            }
            let last = input as i64 - 1;
            all.push(Some(idx.iter().zip(&c).map(|(&i, &w)| (i.clamp(0, last) as usize, w)).collect()));
        }
        Ok(all)
    }
}

/// Resizes `x` (f32 unless nearest) to `out` with `scales` per axis.
fn resize_axes(
    cx: &mut NodeCx,
    x: ValueId,
    interp: &Interp,
    scales: &[f64],
    out: &[usize],
    roi: &[(f64, f64)],
    extrapolation: f64,
) -> OpResult<ValueId> {
    let s = cx.shape(x);
    let rank = s.len();
    let dtype = cx.ty(x).dtype;
    let todo: Vec<usize> =
        (0..rank).filter(|&a| !(out[a] == s[a] && scales[a] == 1.0 && roi[a] == (0.0, 1.0))).collect();
    if todo.is_empty() {
        return cx.emit_out(Op::Identity, &[x], 0);
    }
    let mut y = x;
    for (t, &a) in todo.iter().enumerate() {
        let last = t + 1 == todo.len();
        let taps = interp.taps(s[a], out[a], scales[a], roi[a]).map_err(OpError::Invalid)?;
        let any_extra = taps.iter().any(Option::is_none);
        // Drop zero weights; a single unit weight everywhere is a plain Gather.
        let rows: Vec<Vec<(usize, f64)>> = taps
            .iter()
            .map(|t| t.clone().unwrap_or_default().into_iter().filter(|&(_, w)| w != 0.0).collect())
            .collect();
        let single = rows.iter().all(|r| r.len() <= 1 && r.iter().all(|&(_, w)| w == 1.0));
        let finish = |cx: &mut NodeCx, op: Op, ins: &[ValueId], final_: bool| {
            if final_ {
                cx.emit_out(op, ins, 0)
            } else {
                tmp(cx, op, ins, "resize")
            }
        };
        if single {
            let idx: Vec<f64> = rows.iter().map(|r| r.first().map_or(0.0, |&(i, _)| i as f64)).collect();
            let idx = konst_as(cx, DType::I64, vec![out[a]], &idx);
            y = finish(cx, Op::Gather { axis: a }, &[y, idx], last && !any_extra)?;
        } else {
            if dtype != DType::F32 {
                return unsupported(format!("{} interpolation of {dtype}", interp.mode));
            }
            let n = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
            let mut idx = Vec::with_capacity(out[a] * n);
            let mut w = Vec::with_capacity(out[a] * n);
            for r in &rows {
                for k in 0..n {
                    let (i, wk) = r.get(k).copied().unwrap_or((0, 0.0));
                    idx.push(i as f64);
                    w.push(wk);
                }
            }
            let mut gs = cx.shape(y);
            gs.splice(a..=a, [out[a], n]);
            if checked_numel(&gs).is_none() {
                return invalid(format!("resize intermediate {gs:?} is too large"));
            }
            let idx = konst_as(cx, DType::I64, vec![out[a], n], &idx);
            let g = tmp(cx, Op::Gather { axis: a }, &[y, idx], "taps")?;
            let mut ws = vec![out[a], n];
            ws.extend(std::iter::repeat_n(1, rank - a - 1));
            let wv = konst_as(cx, DType::F32, ws, &w);
            let p = bin(cx, B::Mul, g, wv)?;
            y = finish(
                cx,
                Op::Reduce { op: ReduceOp::Sum, axes: vec![a + 1], keepdims: false },
                &[p],
                last && !any_extra,
            )?;
        }
        if any_extra {
            let mut ms = vec![1; rank];
            ms[a] = out[a];
            let m: Vec<f64> = taps.iter().map(|t| if t.is_some() { 1.0 } else { 0.0 }).collect();
            let mask = konst_as(cx, DType::Bool, ms, &m);
            let e = scalar(cx, dtype, extrapolation);
            y = finish(cx, Op::Where, &[mask, y, e], last)?;
        }
    }
    Ok(y)
}

/// A float list input, absent when omitted or empty.
fn floats_in(cx: &NodeCx, i: usize, role: &str) -> OpResult<Option<Vec<f64>>> {
    Ok(cx.opt_const_input(i, role)?.filter(|t| t.numel() > 0).map(|t| t.to_f64_vec()))
}

/// `floor(scale · d)` computed as the reference does (f32 scale, f64 product).
fn scaled(d: usize, scale: f64) -> OpResult<usize> {
    let v = (scale * d as f64).floor();
    if !(0.0..=(1u64 << 40) as f64).contains(&v) {
        return invalid(format!("scale {scale} gives an invalid extent for an axis of {d}"));
    }
    Ok(v as usize)
}

pub(super) fn resize(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let rank = s.len();
    let mut mode = cx.attrs.string("mode")?.unwrap_or_else(|| "nearest".into());
    if mode == "bilinear" {
        mode = "linear".into();
    }
    if !matches!(mode.as_str(), "nearest" | "linear" | "cubic") {
        return invalid(format!("attribute `mode` = {mode:?} is not nearest, linear or cubic"));
    }
    let legacy = cx.opset < 11; // Resize-10: X, scales; asymmetric, nearest floors
    let interp = Interp {
        mode: mode.clone(),
        coord: if legacy {
            "asymmetric".into()
        } else {
            cx.attrs.string("coordinate_transformation_mode")?.unwrap_or_else(|| "half_pixel".into())
        },
        nearest_mode: if legacy {
            "floor".into()
        } else {
            cx.attrs.string("nearest_mode")?.unwrap_or_else(|| "round_prefer_floor".into())
        },
        cubic_a: f64::from(cx.attrs.float_or("cubic_coeff_a", -0.75)?),
        exclude_outside: cx.attrs.int_or("exclude_outside", 0)? != 0,
        antialias: mode != "nearest" && cx.attrs.int_or("antialias", 0)? != 0,
    };
    let extrapolation = f64::from(cx.attrs.float_or("extrapolation_value", 0.0)?);
    let (roi, scales, sizes) = if legacy {
        (None, floats_in(cx, 1, "scales")?, None)
    } else {
        (
            floats_in(cx, 1, "roi")?,
            floats_in(cx, 2, "scales")?,
            cx.opt_ints_input(3, "sizes")?.filter(|v| !v.is_empty()),
        )
    };
    let axes: Vec<usize> = match cx.attrs.ints("axes")? {
        Some(a) if cx.opset >= 18 => {
            norm_axes(a, rank, "axis")?;
            a.iter().map(|&v| super::norm_axis(v, rank, "axis")).collect::<OpResult<_>>()?
        }
        _ => (0..rank).collect(),
    };
    let k = axes.len();
    let mut full_roi = vec![(0.0, 1.0); rank];
    if let Some(r) = roi {
        if interp.coord == "tf_crop_and_resize" {
            if r.len() != 2 * k {
                return invalid(format!("roi {r:?} must have {} values", 2 * k));
            }
            for (j, &a) in axes.iter().enumerate() {
                full_roi[a] = (r[j], r[j + k]);
            }
        }
    }
    let mut full_scales = vec![1.0; rank];
    let mut out = s.clone();
    match (scales, sizes) {
        (Some(sc), None) => {
            if sc.len() != k || sc.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
                return invalid(format!("scales {sc:?} must be {k} positive values"));
            }
            for (j, &a) in axes.iter().enumerate() {
                full_scales[a] = sc[j];
                out[a] = scaled(s[a], sc[j])?;
            }
        }
        (None, Some(sz)) => {
            if sz.len() != k || sz.iter().any(|&v| v < 0) {
                return invalid(format!("sizes {sz:?} must be {k} non-negative values"));
            }
            let policy = cx.attrs.string("keep_aspect_ratio_policy")?.unwrap_or_else(|| "stretch".into());
            let ratios: Vec<f64> = axes.iter().zip(&sz).map(|(&a, &n)| n as f64 / s[a] as f64).collect();
            let common = match policy.as_str() {
                "stretch" => None,
                "not_larger" => Some(ratios.iter().copied().fold(f64::INFINITY, f64::min)),
                "not_smaller" => Some(ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
                other => return invalid(format!("keep_aspect_ratio_policy {other:?} is not known")),
            };
            for (j, &a) in axes.iter().enumerate() {
                match common {
                    None => {
                        full_scales[a] = ratios[j];
                        out[a] = sz[j] as usize;
                    }
                    Some(c) => {
                        full_scales[a] = c;
                        out[a] = (c * s[a] as f64 + 0.5).floor() as usize;
                    }
                }
            }
        }
        (Some(_), Some(_)) => return invalid("only one of scales and sizes may be given"),
        (None, None) => return invalid("one of scales and sizes is required"),
    }
    if checked_numel(&out).is_none() {
        return invalid(format!("result shape {out:?} is too large"));
    }
    if out.iter().zip(&s).any(|(&o, &i)| o > 0 && i == 0) {
        return invalid(format!("cannot resize an empty axis of {s:?} to {out:?}"));
    }
    Ok(vec![resize_axes(cx, x, &interp, &full_scales, &out, &full_roi, extrapolation)?])
}

/// Upsample (opsets 7–9; Resize-10's semantics): asymmetric coordinates, nearest floors.
pub(super) fn upsample(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    let mut mode = cx.attrs.string("mode")?.unwrap_or_else(|| "nearest".into());
    if mode == "bilinear" {
        mode = "linear".into();
    }
    if !matches!(mode.as_str(), "nearest" | "linear") {
        return invalid(format!("attribute `mode` = {mode:?} is not nearest or linear"));
    }
    let scales: Vec<f64> = if cx.opset >= 9 {
        floats_in(cx, 1, "scales")?.ok_or_else(|| OpError::Invalid("input 1 (scales) is missing".into()))?
    } else if let Some(sc) = cx.attrs.floats("scales")? {
        sc.iter().map(|&v| f64::from(v)).collect()
    } else {
        // Upsample-1: height_scale and width_scale of an NCHW input.
        let h = f64::from(cx.attrs.float_or("height_scale", 1.0)?);
        let w = f64::from(cx.attrs.float_or("width_scale", 1.0)?);
        vec![1.0, 1.0, h, w]
    };
    if scales.len() != s.len() || scales.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
        return invalid(format!("scales {scales:?} do not fit input of shape {s:?}"));
    }
    let out = s.iter().zip(&scales).map(|(&d, &sc)| scaled(d, sc)).collect::<OpResult<Vec<_>>>()?;
    if checked_numel(&out).is_none() {
        return invalid(format!("result shape {out:?} is too large"));
    }
    let interp = Interp {
        mode,
        coord: "asymmetric".into(),
        nearest_mode: "floor".into(),
        cubic_a: -0.75,
        exclude_outside: false,
        antialias: false,
    };
    let roi = vec![(0.0, 1.0); s.len()];
    Ok(vec![resize_axes(cx, x, &interp, &scales, &out, &roi, 0.0)?])
}

/// AffineGrid: a constant base grid of normalized coordinates `(x, y[, z], 1)` times θᵀ.
pub(super) fn affine_grid(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let theta = cx.input(0)?;
    if cx.ty(theta).dtype != DType::F32 {
        return unsupported(format!("AffineGrid on {} (only float32)", cx.ty(theta).dtype));
    }
    let size = cx.opt_ints_input(1, "size")?.ok_or_else(|| OpError::Invalid("input 1 (size) is missing".into()))?;
    let align = cx.attrs.int_or("align_corners", 0)? != 0;
    let ts = cx.shape(theta);
    let spatial: Vec<usize> = match size.len() {
        4 | 5 if size.iter().all(|&d| (0..=1 << 24).contains(&d)) => size[2..].iter().map(|&d| d as usize).collect(),
        _ => return invalid(format!("size {size:?} must be [N, C, H, W] or [N, C, D, H, W]")),
    };
    let nd = spatial.len();
    if ts != [size[0] as usize, nd, nd + 1] {
        return invalid(format!("theta {ts:?} does not fit size {size:?}"));
    }
    let coords = |n: usize| -> Vec<f64> {
        (0..n)
            .map(|i| {
                let i = i as f64;
                let n = n as f64;
                if align {
                    if n > 1.0 {
                        -1.0 + 2.0 * i / (n - 1.0)
                    } else {
                        0.0
                    }
                } else {
                    (2.0 * i + 1.0) / n - 1.0
                }
            })
            .collect()
    };
    // Base grid rows in row-major spatial order; columns x (last axis), y, [z], 1.
    let per_axis: Vec<Vec<f64>> = spatial.iter().map(|&n| coords(n)).collect();
    let total: usize = spatial.iter().product();
    if total > 1 << 26 {
        return invalid(format!("grid of {spatial:?} is too large"));
    }
    let mut base = Vec::with_capacity(total * (nd + 1));
    for flat in 0..total {
        let mut idx = vec![0; nd];
        let mut r = flat;
        for a in (0..nd).rev() {
            idx[a] = r % spatial[a];
            r /= spatial[a];
        }
        for a in (0..nd).rev() {
            base.push(per_axis[a][idx[a]]);
        }
        base.push(1.0);
    }
    let base = konst_as(cx, DType::F32, vec![1, total, nd + 1], &base);
    let tt = tmp(cx, Op::Transpose { perm: vec![0, 2, 1] }, &[theta], "theta_t")?;
    let g = tmp(cx, Op::MatMul, &[base, tt], "grid")?;
    let mut out = vec![ts[0]];
    out.extend(&spatial);
    out.push(nd);
    Ok(vec![cx.emit_out(Op::Reshape { shape: out }, &[g], 0)?])
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

#[cfg(test)]
mod tests {
    use super::*;

    fn interp(mode: &str, coord: &str) -> Interp {
        Interp {
            mode: mode.into(),
            coord: coord.into(),
            nearest_mode: "round_prefer_floor".into(),
            cubic_a: -0.75,
            exclude_outside: false,
            antialias: false,
        }
    }

    /// Non-zero taps of every output.
    fn taps(i: &Interp, input: usize, output: usize, scale: f64) -> Vec<Vec<(usize, f64)>> {
        i.taps(input, output, scale, (0.0, 1.0))
            .unwrap()
            .into_iter()
            .map(|t| t.unwrap().into_iter().filter(|&(_, w)| w != 0.0).collect())
            .collect()
    }

    #[test]
    fn nearest_indices() {
        // asymmetric, floor (Upsample): x / 2.
        let mut i = interp("nearest", "asymmetric");
        i.nearest_mode = "floor".into();
        assert_eq!(taps(&i, 2, 4, 2.0), vec![vec![(0, 1.0)], vec![(0, 1.0)], vec![(1, 1.0)], vec![(1, 1.0)]]);
        // asymmetric x / 2 hits .5 ties: round_prefer_floor keeps the lower, ceil the upper.
        let i = interp("nearest", "asymmetric");
        assert_eq!(taps(&i, 2, 4, 2.0), vec![vec![(0, 1.0)], vec![(0, 1.0)], vec![(1, 1.0)], vec![(1, 1.0)]]);
        let mut i = interp("nearest", "asymmetric");
        i.nearest_mode = "round_prefer_ceil".into();
        assert_eq!(taps(&i, 2, 4, 2.0), vec![vec![(0, 1.0)], vec![(1, 1.0)], vec![(1, 1.0)], vec![(1, 1.0)]]);
    }

    #[test]
    fn linear_half_pixel_weights() {
        // x_ori = (o + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25; edges clamp.
        let t = taps(&interp("linear", "half_pixel"), 2, 4, 2.0);
        assert_eq!(t[0], vec![(0, 0.25), (0, 0.75)]);
        assert_eq!(t[1], vec![(0, 0.75), (1, 0.25)]);
        assert_eq!(t[2], vec![(0, 0.25), (1, 0.75)]);
        assert_eq!(t[3], vec![(1, 0.75), (1, 0.25)]);
        // align_corners: x_ori = o · 2 / 4; whole coordinates take one tap.
        let t = taps(&interp("linear", "align_corners"), 3, 5, 5.0 / 3.0);
        assert_eq!(t[0], vec![(0, 1.0)]);
        assert_eq!(t[1], vec![(0, 0.5), (1, 0.5)]);
        assert_eq!(t[4], vec![(2, 1.0)]);
    }

    #[test]
    fn cubic_coefficients() {
        // Keys' kernel with A = -0.75 at ratio 0.5: [-0.09375, 0.59375, 0.59375, -0.09375].
        let c = interp("cubic", "asymmetric").coeffs(0.5, 2.0);
        assert_eq!(c, vec![-0.09375, 0.59375, 0.59375, -0.09375]);
        // exclude_outside drops taps outside the input and renormalizes.
        let mut i = interp("cubic", "asymmetric");
        i.exclude_outside = true;
        let t = taps(&i, 4, 8, 2.0);
        let w: f64 = t[1].iter().map(|&(_, w)| w).sum();
        assert!((w - 1.0).abs() < 1e-12, "{t:?}");
        assert!(t[1].iter().all(|&(i, _)| i <= 2), "{t:?}");
    }

    #[test]
    fn crop_and_resize_extrapolates() {
        // roi (0.4, 0.6) of 3 elements to 4: x_ori = 0.8 + o · 0.4 / 3 stays inside; roi
        // (-1, 2) reaches outside at both ends.
        let i = interp("linear", "tf_crop_and_resize");
        assert!(i.taps(3, 4, 4.0 / 3.0, (0.4, 0.6)).unwrap().iter().all(Option::is_some));
        let t = i.taps(3, 4, 4.0 / 3.0, (-1.0, 2.0)).unwrap();
        assert!(t[0].is_none() && t[3].is_none() && t[1].is_some());
    }
}
