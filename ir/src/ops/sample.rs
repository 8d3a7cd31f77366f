//! GridSample (2-D and 3-D) and RoiAlign, following ONNX's reference implementations step by
//! step, in f32.

use super::f32s;
use crate::op::{GridMode, GridPadding};
use crate::text::{float, list, AttrList, Attrs};
use crate::{Op, Tensor, TensorType};

/// Reflects `x` by the nearer border until it lies within `[lo, hi]`.
pub(crate) fn reflect(x: f32, lo: f32, hi: f32) -> f32 {
    let rng = hi - lo;
    let (dx, from_lo) = if x < lo {
        (lo - x, true)
    } else if x > hi {
        (x - hi, false)
    } else {
        return x;
    };
    let n = (dx / rng).trunc();
    let r = dx - n * rng;
    let even = n % 2.0 == 0.0;
    if even == from_lo {
        lo + r
    } else {
        hi - r
    }
}

/// Keys cubic convolution weights (alpha = -0.75) of the four taps `x0-1..=x0+2` at
/// fractional offset `f`.
pub(crate) fn cubic_coeffs(f: f32) -> [f32; 4] {
    let a = -0.75f32;
    let x = f.abs();
    [
        ((a * (x + 1.0) - 5.0 * a) * (x + 1.0) + 8.0 * a) * (x + 1.0) - 4.0 * a,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
        ((a + 2.0) * (1.0 - x) - (a + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0,
        ((a * (2.0 - x) - 5.0 * a) * (2.0 - x) + 8.0 * a) * (2.0 - x) - 4.0 * a,
    ]
}

pub(super) fn grid_sample(
    x: &Tensor,
    grid: &Tensor,
    mode: GridMode,
    padding: GridPadding,
    align: bool,
) -> Result<Tensor, String> {
    let (xs, gs) = (x.shape(), grid.shape());
    let r = xs.len();
    let ns = r - 2;
    let (n, c) = (xs[0], xs[1]);
    let dims = &xs[2..];
    let out_sp = &gs[1..r - 1];
    let (xv, gv) = (f32s(x)?, f32s(grid)?);
    let plane_len: usize = dims.iter().product();
    let out_len: usize = out_sp.iter().product();
    let border = |a: usize| if align { (0.0, dims[a] as f32 - 1.0) } else { (-0.5, dims[a] as f32 - 0.5) };
    // The element index along axis `a` that tap index `i` reads, or None for a zero.
    let pixel = |a: usize, i: i64| -> Option<usize> {
        let d = dims[a] as i64;
        match padding {
            GridPadding::Zeros => (0..d).contains(&i).then_some(i as usize),
            GridPadding::Border => Some(i.clamp(0, d - 1) as usize),
            GridPadding::Reflection => {
                let (lo, hi) = border(a);
                Some(reflect(i as f32, lo, hi) as i64 as usize).filter(|&j| j < dims[a])
            }
        }
    };
    let mut out = Vec::with_capacity(n * c * out_len);
    for b in 0..n {
        for ch in 0..c {
            let plane = &xv[(b * c + ch) * plane_len..(b * c + ch + 1) * plane_len];
            let at = |idx: &[i64]| -> f32 {
                let mut flat = 0;
                for (a, &i) in idx.iter().enumerate() {
                    match pixel(a, i) {
                        Some(j) => flat = flat * dims[a] + j,
                        None => return 0.0,
                    }
                }
                plane[flat]
            };
            for o in 0..out_len {
                let g = b * out_len + o;
                // Spatial axis a takes grid component ns-1-a (the grid lists x first).
                let mut pos = vec![0f32; ns];
                for (a, p_out) in pos.iter_mut().enumerate() {
                    let v = gv[g * ns + (ns - 1 - a)];
                    let len = dims[a] as f32;
                    let mut p = if align { (v + 1.0) / 2.0 * (len - 1.0) } else { ((v + 1.0) * len - 1.0) / 2.0 };
                    if mode == GridMode::Nearest {
                        p = p.round_ties_even();
                    }
                    let (lo, hi) = border(a);
                    if p < lo || p > hi {
                        match padding {
                            GridPadding::Border => p = p.clamp(0.0, len - 1.0),
                            GridPadding::Reflection => p = reflect(p, lo, hi),
                            GridPadding::Zeros => {}
                        }
                    }
                    *p_out = p;
                }
                let v = match mode {
                    GridMode::Nearest => at(&pos.iter().map(|&p| p as i64).collect::<Vec<_>>()),
                    GridMode::Linear | GridMode::Cubic => {
                        let taps: Vec<(i64, Vec<f32>)> = pos
                            .iter()
                            .map(|&p| {
                                let x0 = p.floor();
                                let f = p - x0;
                                if mode == GridMode::Linear {
                                    (x0 as i64, vec![1.0 - f, f])
                                } else {
                                    (x0 as i64 - 1, cubic_coeffs(f).to_vec())
                                }
                            })
                            .collect();
                        interpolate(&taps, &mut Vec::with_capacity(ns), &at)
                    }
                };
                out.push(v);
            }
        }
    }
    let mut shape = xs[..2].to_vec();
    shape.extend_from_slice(out_sp);
    Ok(Tensor::f32(shape, out))
}

/// Separable interpolation, innermost axis first (as the reference nests it): the weighted
/// sum over the taps of axis `idx.len()`, given the tap indices of the outer axes in `idx`.
fn interpolate(taps: &[(i64, Vec<f32>)], idx: &mut Vec<i64>, at: &dyn Fn(&[i64]) -> f32) -> f32 {
    let a = idx.len();
    if a == taps.len() {
        return at(idx);
    }
    let (base, w) = &taps[a];
    let mut acc = 0f32;
    for (t, &wt) in w.iter().enumerate() {
        idx.push(base + t as i64);
        acc += wt * interpolate(taps, idx, at);
        idx.pop();
    }
    acc
}

/// The four bilinear taps `(flat position in an H×W plane, weight)` of one RoiAlign sample
/// at `(y, x)`: all zero outside `[-1, H] × [-1, W]` (ONNX reference).
pub(crate) fn roi_taps(y: f32, x: f32, h: usize, w: usize) -> [(usize, f32); 4] {
    if y < -1.0 || y > h as f32 || x < -1.0 || x > w as f32 {
        return [(0, 0.0); 4];
    }
    let axis = |v: f32, n: usize| -> (usize, usize, f32) {
        let v = v.max(0.0);
        let lo = v as usize;
        if lo + 1 >= n {
            (n - 1, n - 1, 0.0)
        } else {
            (lo, lo + 1, v - lo as f32)
        }
    };
    let (yl, yh, ly) = axis(y, h);
    let (xl, xh, lx) = axis(x, w);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    [(yl * w + xl, hy * hx), (yl * w + xh, hy * lx), (yh * w + xl, ly * hx), (yh * w + xh, ly * lx)]
}

pub(super) fn roi_align(
    inputs: &[&Tensor],
    [oh, ow]: [usize; 2],
    sr: usize,
    scale: f32,
    max: bool,
    half_pixel: bool,
) -> Result<Tensor, String> {
    let (x, rois, bi) = (inputs[0], inputs[1], inputs[2]);
    let xs = x.shape();
    let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let (xv, rv, bv) = (f32s(x)?, f32s(rois)?, bi.to_i64_vec());
    let mut out = Vec::with_capacity(bv.len() * c * oh * ow);
    for (r, &b) in bv.iter().enumerate() {
        if b < 0 || b >= n as i64 {
            return Err(format!("roi_align: batch index {b} is outside [0, {n})"));
        }
        let off = if half_pixel { 0.5 } else { 0.0 };
        let [sw, sh, ew, eh] = [0, 1, 2, 3].map(|k| rv[r * 4 + k] * scale - off);
        let (mut rw, mut rh) = (ew - sw, eh - sh);
        if !half_pixel {
            rw = rw.max(1.0);
            rh = rh.max(1.0);
        }
        let (bh, bw) = (rh / oh as f32, rw / ow as f32);
        for ch in 0..c {
            let plane = &xv[(b as usize * c + ch) * h * w..(b as usize * c + ch + 1) * h * w];
            for ph in 0..oh {
                for pw in 0..ow {
                    let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                    for iy in 0..sr {
                        let y = sh + ph as f32 * bh + (iy as f32 + 0.5) * bh / sr as f32;
                        for ix in 0..sr {
                            let xx = sw + pw as f32 * bw + (ix as f32 + 0.5) * bw / sr as f32;
                            let t = roi_taps(y, xx, h, w);
                            if max {
                                let v = t.iter().map(|&(p, wt)| wt * plane[p]).fold(f32::NEG_INFINITY, f32::max);
                                acc = acc.max(v);
                            } else {
                                acc += t.iter().map(|&(p, wt)| wt * plane[p]).sum::<f32>();
                            }
                        }
                    }
                    out.push(if max { acc } else { acc / (sr * sr) as f32 });
                }
            }
        }
    }
    Ok(Tensor::f32(vec![bv.len(), c, oh, ow], out))
}

/// The type rule of the sampling ops: their output types from their input types and
/// attributes (see [`crate::infer::infer`]).
pub(crate) fn infer(op: &crate::Op, inputs: &[&crate::TensorType]) -> crate::infer::InferResult {
    use crate::infer::{arity, same_dtype, want_float};
    use crate::Op::*;
    use crate::TensorType;
    let one = |t: TensorType| Ok(vec![t]);
    match op {
        RoiAlign { out_hw, sampling_ratio, .. } => {
            arity(op, inputs, 3, 3)?;
            let (x, rois, bi) = (inputs[0], inputs[1], inputs[2]);
            want_float(op, x)?;
            same_dtype(&inputs[..2])?;
            let r = bi.shape.first().copied().unwrap_or(0);
            if x.rank() != 4 || rois.shape != [r, 4] || bi.rank() != 1 || !bi.dtype.is_int() || *sampling_ratio == 0 {
                return Err(format!(
                    "roi_align needs input [N,C,H,W], rois [R,4], integer batch indices [R] and a positive sampling ratio, got {:?}, {:?}, {:?}",
                    x.shape, rois.shape, bi.shape
                ));
            }
            if x.shape[2] == 0 || x.shape[3] == 0 {
                return Err(format!("roi_align input {:?} has an empty plane", x.shape));
            }
            one(TensorType::new(x.dtype, vec![r, x.shape[1], out_hw[0], out_hw[1]]))
        }
        GridSample { .. } => {
            arity(op, inputs, 2, 2)?;
            let (x, grid) = (inputs[0], inputs[1]);
            want_float(op, x)?;
            same_dtype(inputs)?;
            let r = x.rank();
            if !(r == 4 || r == 5)
                || x.shape[2..].contains(&0)
                || grid.rank() != r
                || grid.shape[0] != x.shape[0]
                || grid.shape[r - 1] != r - 2
            {
                return Err(format!(
                    "grid_sample needs input [N,C,spatial..] (2 or 3 spatial axes) and grid [N,out..,{}], got {:?} and {:?}",
                    r.saturating_sub(2),
                    x.shape,
                    grid.shape
                ));
            }
            let mut s = x.shape[..2].to_vec();
            s.extend_from_slice(&grid.shape[1..r - 1]);
            one(TensorType::new(x.dtype, s))
        }
        _ => unreachable!("{} is not a sampling op", op.name()),
    }
}

// ---------------------------------------------------------------------------------------
// Dispatch: the reference evaluation and text form of RoiAlign and GridSample.

/// Evaluates RoiAlign or GridSample (its inputs already checked by [`infer`]).
pub(super) fn eval(op: &Op, inputs: &[&Tensor], _want: &TensorType) -> Result<Tensor, String> {
    match op {
        Op::GridSample { mode, padding, align_corners } => {
            grid_sample(inputs[0], inputs[1], *mode, *padding, *align_corners)
        }
        Op::RoiAlign { out_hw, sampling_ratio, spatial_scale, max, half_pixel } => {
            roi_align(inputs, *out_hw, *sampling_ratio, *spatial_scale, *max, *half_pixel)
        }
        _ => Err(super::not_in_family(op)),
    }
}

/// The attributes of RoiAlign or GridSample, in print order.
pub(super) fn attrs(op: &Op) -> AttrList {
    match op {
        Op::RoiAlign { out_hw, sampling_ratio, spatial_scale, max, half_pixel } => vec![
            ("out_hw", list(out_hw)),
            ("sampling_ratio", sampling_ratio.to_string()),
            ("spatial_scale", float(*spatial_scale)),
            ("max", max.to_string()),
            ("half_pixel", half_pixel.to_string()),
        ],
        Op::GridSample { mode, padding, align_corners } => vec![
            ("mode", mode.name().to_string()),
            ("padding", padding.name().to_string()),
            ("align_corners", align_corners.to_string()),
        ],
        _ => vec![],
    }
}

/// Builds `roi_align` or `grid_sample` (`None`: another op).
pub(super) fn parse(name: &str, a: &mut Attrs) -> Result<Option<Op>, String> {
    Ok(Some(match name {
        "roi_align" => Op::RoiAlign {
            out_hw: a.array("out_hw")?,
            sampling_ratio: a.word("sampling_ratio")?,
            spatial_scale: a.word("spatial_scale")?,
            max: a.word("max")?,
            half_pixel: a.word("half_pixel")?,
        },
        "grid_sample" => {
            let (m, p): (String, String) = (a.word("mode")?, a.word("padding")?);
            Op::GridSample {
                mode: GridMode::from_name(&m).ok_or_else(|| format!("unknown mode `{m}`"))?,
                padding: GridPadding::from_name(&p).ok_or_else(|| format!("unknown padding `{p}`"))?,
                align_corners: a.word("align_corners")?,
            }
        }
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_f32, run};
    use crate::op::{GridMode, GridPadding};
    use crate::{Op, Tensor};

    #[test]
    fn roi_align_averages_bilinear_samples() {
        let x = Tensor::f32(vec![1, 1, 2, 2], vec![1., 2., 3., 4.]);
        let rois = Tensor::f32(vec![1, 4], vec![0., 0., 1., 1.]);
        let bi = Tensor::i64(vec![1], vec![0]);
        let op = |max| Op::RoiAlign { out_hw: [1, 1], sampling_ratio: 1, spatial_scale: 1.0, max, half_pixel: false };
        // One sample at (0.5, 0.5): the average of the four pixels; max mode takes the
        // largest weighted tap (0.25 · 4).
        assert_f32(&run(op(false), &[&x, &rois, &bi]), &[1, 1, 1, 1], &[2.5], 1e-6);
        assert_f32(&run(op(true), &[&x, &rois, &bi]), &[1, 1, 1, 1], &[1.0], 1e-6);
    }

    #[test]
    fn grid_sample_corners_center_and_padding() {
        let x = Tensor::f32(vec![1, 1, 2, 2], vec![1., 2., 3., 4.]);
        // (x, y) pairs: top-left, bottom-right, center, far outside to the right.
        let grid = Tensor::f32(vec![1, 1, 4, 2], vec![-1., -1., 1., 1., 0., 0., 3., -1.]);
        let op = |mode, padding| Op::GridSample { mode, padding, align_corners: true };
        let y = run(op(GridMode::Linear, GridPadding::Zeros), &[&x, &grid]);
        assert_f32(&y, &[1, 1, 1, 4], &[1., 4., 2.5, 0.], 1e-6);
        let y = run(op(GridMode::Linear, GridPadding::Border), &[&x, &grid]);
        assert_f32(&y, &[1, 1, 1, 4], &[1., 4., 2.5, 2.], 1e-6);
        // The center (0.5, 0.5) rounds half to even: (0, 0). x = 3 maps to column 2,
        // reflected about column 1 back to column 0.
        let y = run(op(GridMode::Nearest, GridPadding::Reflection), &[&x, &grid]);
        assert_f32(&y, &[1, 1, 1, 4], &[1., 4., 1., 1.], 1e-6);
    }
}
