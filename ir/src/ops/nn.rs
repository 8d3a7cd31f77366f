//! Convolution, pooling, normalization and softmax (f32 NCHW, OIHW weights).
//!
//! Window geometry (ONNX / PyTorch): output position `o` along a spatial axis reads input
//! positions `o * stride - pad_begin + t * dilation` for `t < kernel`. Positions outside the
//! input are padding; positions at or beyond `n + pad_end` (the overhang that `ceil_mode`
//! can add) are neither input nor padding.

use super::f32s;
use crate::op::Window;
use crate::text::{float, list, AttrList, Attrs};
use crate::{numel, Data, Op, Tensor, TensorType};

/// Output extent of the window along spatial axis `a` (validated by infer).
fn out_dim(win: &Window, a: usize, n: usize, ceil_mode: bool) -> Result<usize, String> {
    win.out_dim(a, n, ceil_mode).ok_or_else(|| format!("window {win:?} does not fit extent {n}"))
}

/// The input positions of window `o` along spatial axis `a` (of input extent `n`) that lie
/// inside the input, and how many window positions lie inside the padded extent
/// `[-pad_begin, n + pad_end)` (the divisor of an average that counts padding).
fn taps(win: &Window, a: usize, o: usize, n: usize) -> (Vec<usize>, usize) {
    let (k, s, d) = (win.kernel[a], win.strides[a], win.dilations[a]);
    let (pb, pe) = (win.pads[a] as i64, win.pads[a + 2] as i64);
    let mut inside = Vec::new();
    let mut padded = 0;
    for t in 0..k {
        let p = (o * s + t * d) as i64 - pb;
        if p < n as i64 + pe {
            padded += 1;
        }
        if p >= 0 && p < n as i64 {
            inside.push(p as usize);
        }
    }
    (inside, padded)
}

/// 2-D convolution with groups: input channels `[g*C/G, (g+1)*C/G)` feed output channels
/// `[g*O/G, (g+1)*O/G)`. The bias is added to the f64 sum before the single rounding.
pub(super) fn conv(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    win: &Window,
    group: usize,
) -> Result<Tensor, String> {
    let (xs, ws) = (x.shape(), w.shape());
    let (nb, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (oc_n, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    debug_assert_eq!(c, cg * group);
    let og = oc_n / group;
    let (oh, ow) = (out_dim(win, 0, h, false)?, out_dim(win, 1, wd, false)?);
    // Integer operands (8/16-bit: an integer convolution) sum exactly in f64 into i32.
    let int = x.dtype().is_int();
    let (xv, wv) = if int { (x.to_f64_vec(), w.to_f64_vec()) } else { (widen(&f32s(x)?), widen(&f32s(w)?)) };
    let bv = bias.map(f32s).transpose()?;
    let mut out = Vec::with_capacity(nb * oc_n * oh * ow);
    for b in 0..nb {
        for oc in 0..oc_n {
            let g = oc / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bv.as_ref().map_or(0.0, |bv| f64::from(bv[oc]));
                    for ci in 0..cg {
                        let ic = g * cg + ci;
                        for ky in 0..kh {
                            let iy = (oy * win.strides[0] + ky * win.dilations[0]) as i64 - win.pads[0] as i64;
                            if iy < 0 || iy >= h as i64 {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * win.strides[1] + kx * win.dilations[1]) as i64 - win.pads[1] as i64;
                                if ix < 0 || ix >= wd as i64 {
                                    continue;
                                }
                                let xi = ((b * c + ic) * h + iy as usize) * wd + ix as usize;
                                let wi = ((oc * cg + ci) * kh + ky) * kw + kx;
                                acc += xv[xi] * wv[wi];
                            }
                        }
                    }
                    out.push(acc);
                }
            }
        }
    }
    let shape = vec![nb, oc_n, oh, ow];
    if int {
        return Ok(Tensor::from_data(shape, crate::Data::I32(out.iter().map(|&a| a as i64 as i32).collect())));
    }
    Ok(Tensor::f32(shape, out.iter().map(|&a| a as f32).collect()))
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// 2-D transposed convolution, in scatter form: input `(ic, iy, ix)` through tap `(ky, kx)`
/// adds `x · w[ic, oc % M/G, ky, kx]` to output `(oc, iy·s + ky·d − pad, …)` for the output
/// channels `oc` of the input channel's group. Sums in f64 (bias first), one rounding.
pub(super) fn conv_transpose(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    [kernel, strides, dilations]: [[usize; 2]; 3],
    pads: [i64; 2],
    [oh, ow]: [usize; 2],
    group: usize,
) -> Result<Tensor, String> {
    let (xs, ws) = (x.shape(), w.shape());
    let (nb, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (mg, kh, kw) = (ws[1], kernel[0], kernel[1]);
    let (cg, m) = (c / group, mg * group);
    let (xv, wv) = (f32s(x)?, f32s(w)?);
    let bv = bias.map(f32s).transpose()?;
    let mut acc = vec![0f64; nb * m * oh * ow];
    for b in 0..nb {
        for oc in 0..m {
            let init = bv.as_ref().map_or(0.0, |bv| f64::from(bv[oc]));
            acc[(b * m + oc) * oh * ow..(b * m + oc + 1) * oh * ow].fill(init);
        }
        for ic in 0..c {
            let g = ic / cg;
            for iy in 0..h {
                for ix in 0..wd {
                    let xe = f64::from(xv[((b * c + ic) * h + iy) * wd + ix]);
                    for j in 0..mg {
                        let oc = g * mg + j;
                        for ky in 0..kh {
                            let oy = (iy * strides[0] + ky * dilations[0]) as i64 - pads[0];
                            if oy < 0 || oy >= oh as i64 {
                                continue;
                            }
                            for kx in 0..kw {
                                let ox = (ix * strides[1] + kx * dilations[1]) as i64 - pads[1];
                                if ox < 0 || ox >= ow as i64 {
                                    continue;
                                }
                                let we = f64::from(wv[((ic * mg + j) * kh + ky) * kw + kx]);
                                acc[((b * m + oc) * oh + oy as usize) * ow + ox as usize] += xe * we;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(Tensor::f32(vec![nb, m, oh, ow], acc.into_iter().map(|v| v as f32).collect()))
}

/// Calls `f(plane, oy, ox, taps_y, taps_x)` for every output element in row-major order,
/// where `plane` is the flat index of the `(n, c)` input plane.
fn for_each_window(
    shape: &[usize],
    win: &Window,
    ceil_mode: bool,
    mut f: impl FnMut(usize, &(Vec<usize>, usize), &(Vec<usize>, usize)),
) -> Result<Vec<usize>, String> {
    let (h, w) = (shape[2], shape[3]);
    let (oh, ow) = (out_dim(win, 0, h, ceil_mode)?, out_dim(win, 1, w, ceil_mode)?);
    let ty: Vec<_> = (0..oh).map(|o| taps(win, 0, o, h)).collect();
    let tx: Vec<_> = (0..ow).map(|o| taps(win, 1, o, w)).collect();
    for plane in 0..shape[0] * shape[1] {
        for y in &ty {
            for x in &tx {
                f(plane, y, x);
            }
        }
    }
    Ok(vec![shape[0], shape[1], oh, ow])
}

/// Max over the in-bounds elements of each window (padding never wins). NaN inputs are
/// skipped (as by ONNX's reference and onnxruntime); a window with no input element gives the
/// dtype's lowest value.
pub(super) fn max_pool(x: &Tensor, win: &Window, ceil_mode: bool) -> Result<Tensor, String> {
    fn run<T: Copy + PartialOrd>(
        v: &[T],
        lowest: T,
        shape: &[usize],
        win: &Window,
        ceil: bool,
    ) -> Result<(Vec<T>, Vec<usize>), String> {
        let (h, w) = (shape[2], shape[3]);
        let mut out = Vec::new();
        let s = for_each_window(shape, win, ceil, |plane, (ys, _), (xs, _)| {
            let mut m = lowest;
            for &iy in ys {
                for &ix in xs {
                    let e = v[(plane * h + iy) * w + ix];
                    if e > m {
                        m = e;
                    }
                }
            }
            out.push(m);
        })?;
        Ok((out, s))
    }
    let shape = x.shape();
    let (data, s) = match x.data() {
        Data::F32(v) => run(&v, f32::NEG_INFINITY, shape, win, ceil_mode).map(|(o, s)| (Data::F32(o), s))?,
        Data::I32(v) => run(&v, i32::MIN, shape, win, ceil_mode).map(|(o, s)| (Data::I32(o), s))?,
        Data::I64(v) => run(&v, i64::MIN, shape, win, ceil_mode).map(|(o, s)| (Data::I64(o), s))?,
        Data::Bool(v) => run(&v, false, shape, win, ceil_mode).map(|(o, s)| (Data::Bool(o), s))?,
        d => return Err(format!("max pool is not evaluated on {} tensors", d.dtype())),
    };
    Ok(Tensor::from_data(s, data))
}

/// The flat input index of each window's first maximum (scan order, strict `>`), as the
/// ONNX reference computes MaxPool's `Indices`.
pub(super) fn max_pool_indices(
    x: &Tensor,
    win: &Window,
    ceil_mode: bool,
    column_major: bool,
) -> Result<Tensor, String> {
    let shape = x.shape();
    let (h, w) = (shape[2], shape[3]);
    let v = x.to_f64_vec();
    let mut out = Vec::new();
    let s = for_each_window(shape, win, ceil_mode, |plane, (ys, _), (xs, _)| {
        let mut best: Option<(f64, usize, usize)> = None;
        for &iy in ys {
            for &ix in xs {
                let e = v[(plane * h + iy) * w + ix];
                if best.is_none_or(|(m, _, _)| e > m) {
                    best = Some((e, iy, ix));
                }
            }
        }
        let (_, iy, ix) = best.unwrap_or((0.0, 0, 0));
        let within = if column_major { iy + ix * h } else { iy * w + ix };
        out.push((plane * h * w + within) as i64);
    })?;
    Ok(Tensor::i64(s, out))
}

/// Mean over each window. `count_include_pad`: divide by the number of window positions
/// inside the padded extent (the ceil_mode overhang is not counted); otherwise by the number
/// of in-bounds elements. Sums in f64.
pub(super) fn average_pool(
    x: &Tensor,
    win: &Window,
    ceil_mode: bool,
    count_include_pad: bool,
) -> Result<Tensor, String> {
    let v = f32s(x)?;
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let mut out = Vec::new();
    let shape = for_each_window(x.shape(), win, ceil_mode, |plane, (ys, py), (xs, px)| {
        let mut sum = 0.0f64;
        for &iy in ys {
            for &ix in xs {
                sum += f64::from(v[(plane * h + iy) * w + ix]);
            }
        }
        let count = if count_include_pad { py * px } else { ys.len() * xs.len() };
        out.push((sum / count as f64) as f32);
    })?;
    Ok(Tensor::f32(shape, out))
}

/// Inference batch normalization over axis 1, in f32:
/// `(x - mean) / sqrt(var + epsilon) * scale + bias`.
pub(super) fn batch_norm(inputs: &[&Tensor], epsilon: f32) -> Result<Tensor, String> {
    let x = inputs[0];
    let v = f32s(x)?;
    let p: Vec<Vec<f32>> = inputs[1..].iter().map(|t| f32s(t)).collect::<Result<_, _>>()?;
    let (scale, bias, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
    let c = x.shape()[1];
    let inner = numel(&x.shape()[2..]);
    let out = v
        .iter()
        .enumerate()
        .map(|(i, &e)| {
            let ch = (i / inner) % c;
            (e - mean[ch]) / (var[ch] + epsilon).sqrt() * scale[ch] + bias[ch]
        })
        .collect();
    Ok(Tensor::f32(x.shape().to_vec(), out))
}

/// Local response normalization across channels (ONNX):
/// `y = x / (bias + alpha / size * Σ x[c']²)^beta` over
/// `c' ∈ [c - ⌊(size-1)/2⌋, c + ⌈(size-1)/2⌉] ∩ [0, C)`; computed in f64.
pub(super) fn lrn(x: &Tensor, size: usize, alpha: f32, beta: f32, bias: f32) -> Result<Tensor, String> {
    let v = f32s(x)?;
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let inner = numel(&x.shape()[2..]);
    let (before, after) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let mut out = Vec::with_capacity(v.len());
    for b in 0..n {
        for ch in 0..c {
            let (lo, hi) = (ch.saturating_sub(before), (ch + after).min(c - 1));
            for r in 0..inner {
                let at = |k: usize| f64::from(v[(b * c + k) * inner + r]);
                let sq: f64 = (lo..=hi).map(|k| at(k) * at(k)).sum();
                let den = (f64::from(bias) + f64::from(alpha) / size as f64 * sq).powf(f64::from(beta));
                out.push((at(ch) / den) as f32);
            }
        }
    }
    Ok(Tensor::f32(x.shape().to_vec(), out))
}

/// LayerNorm over the axes `axis..`, evaluated as the ops it decomposes into (mean and
/// variance as f64-accumulated means rounded to f32, then f32 elementwise arithmetic), so
/// constant folding and the decomposed kernels agree.
fn layer_norm(inputs: &[&Tensor], axis: usize, epsilon: f32) -> Result<Tensor, String> {
    use super::elementwise::{binary, unary};
    use crate::op::{BinaryOp as B, ReduceOp, UnaryOp as U};
    let x = inputs[0];
    let axes: Vec<usize> = (axis..x.ty.rank()).collect();
    let mean = super::reduce::reduce(ReduceOp::Mean, x, &axes, true)?;
    let d = binary(B::Sub, x, &mean)?;
    let var = super::reduce::reduce(ReduceOp::Mean, &binary(B::Mul, &d, &d)?, &axes, true)?;
    let eps = Tensor::f32(vec![], vec![epsilon]);
    let inv = unary(U::Reciprocal, &unary(U::Sqrt, &binary(B::Add, &var, &eps)?)?)?;
    let y = binary(B::Mul, &binary(B::Mul, &d, &inv)?, inputs[1])?;
    match inputs.get(2) {
        Some(bias) => binary(B::Add, &y, bias),
        None => Ok(y),
    }
}

/// RmsNorm over the axes `axis..`, evaluated as the ops it decomposes into.
fn rms_norm(x: &Tensor, scale: &Tensor, axis: usize, epsilon: f32) -> Result<Tensor, String> {
    use super::elementwise::{binary, unary};
    use crate::op::{BinaryOp as B, ReduceOp, UnaryOp as U};
    let axes: Vec<usize> = (axis..x.ty.rank()).collect();
    let ms = super::reduce::reduce(ReduceOp::Mean, &binary(B::Mul, x, x)?, &axes, true)?;
    let eps = Tensor::f32(vec![], vec![epsilon]);
    let rms = unary(U::Sqrt, &binary(B::Add, &ms, &eps)?)?;
    binary(B::Mul, &binary(B::Div, x, &rms)?, scale)
}

/// Softmax (or log-softmax) along `axis`, max-subtracted, in f64:
/// `exp(x - m) / Σ exp(x - m)`, or `(x - m) - ln Σ exp(x - m)`.
pub(super) fn softmax(x: &Tensor, axis: usize, log: bool) -> Result<Tensor, String> {
    if let crate::Data::F64(v) = x.data() {
        // In f64 throughout.
        let s = x.shape();
        let (outer, len, inner) = (numel(&s[..axis]), s[axis], numel(&s[axis + 1..]));
        let mut out = vec![0.0f64; v.len()];
        for o in 0..outer {
            for i in 0..inner {
                let idx = |j: usize| (o * len + j) * inner + i;
                let m = (0..len).map(|j| v[idx(j)]).fold(f64::NEG_INFINITY, |m, e| if e > m { e } else { m });
                let sum: f64 = (0..len).map(|j| (v[idx(j)] - m).exp()).sum();
                for j in 0..len {
                    let d = v[idx(j)] - m;
                    out[idx(j)] = if log { d - sum.ln() } else { d.exp() / sum };
                }
            }
        }
        return Ok(Tensor::from_data(s.to_vec(), crate::Data::F64(out)));
    }
    let v = f32s(x)?;
    let s = x.shape();
    let (outer, len, inner) = (numel(&s[..axis]), s[axis], numel(&s[axis + 1..]));
    let mut out = vec![0.0f32; v.len()];
    for o in 0..outer {
        for i in 0..inner {
            let idx = |j: usize| (o * len + j) * inner + i;
            let m = (0..len).map(|j| v[idx(j)]).fold(f32::NEG_INFINITY, |m, e| if e > m { e } else { m });
            let d = |j: usize| f64::from(v[idx(j)]) - f64::from(m);
            let sum: f64 = (0..len).map(|j| d(j).exp()).sum();
            for j in 0..len {
                out[idx(j)] = if log { (d(j) - sum.ln()) as f32 } else { (d(j).exp() / sum) as f32 };
            }
        }
    }
    Ok(Tensor::f32(s.to_vec(), out))
}

/// The type rule of the convolution, pooling, normalization or softmax ops: their output types from their input types and
/// attributes (see [`crate::infer::infer`]).
pub(crate) fn infer(op: &crate::Op, inputs: &[&crate::TensorType]) -> crate::infer::InferResult {
    use crate::infer::{arity, pool_shape, same_dtype, want_float};
    use crate::DType;
    use crate::Op::*;
    use crate::TensorType;
    let one = |t: TensorType| Ok(vec![t]);
    match op {
        Conv { window, group } => {
            arity(op, inputs, 2, 3)?;
            let (x, w) = (inputs[0], inputs[1]);
            // An integer convolution (8/16-bit operands, exact i32 sums, no bias): what
            // `kiln_passes::quant` makes of a quantized model's convolutions.
            let int = matches!(x.dtype, DType::I8 | DType::U8 | DType::I16);
            if int && inputs.len() == 3 {
                return Err("an integer conv takes no bias".into());
            }
            if !int {
                want_float(op, x)?;
            }
            same_dtype(inputs)?;
            if w.rank() != 4 || x.rank() != 4 {
                return Err(format!("conv needs 4-D input and weights, got {:?} and {:?}", x.shape, w.shape));
            }
            if *group == 0 || x.shape[1] != w.shape[1] * group || w.shape[0] % group != 0 {
                return Err(format!(
                    "conv channels do not match: input {:?}, weights {:?}, group {group}",
                    x.shape, w.shape
                ));
            }
            if [w.shape[2], w.shape[3]] != window.kernel {
                return Err(format!("conv kernel_shape {:?} differs from weights {:?}", window.kernel, w.shape));
            }
            if let Some(b) = inputs.get(2) {
                if b.shape != [w.shape[0]] {
                    return Err(format!("conv bias must have shape [{}], got {:?}", w.shape[0], b.shape));
                }
            }
            let out = if int { DType::I32 } else { x.dtype };
            one(TensorType::new(out, pool_shape(x, window, false, w.shape[0])?))
        }
        ConvTranspose { kernel, strides, dilations, out_hw, group, .. } => {
            arity(op, inputs, 2, 3)?;
            let (x, w) = (inputs[0], inputs[1]);
            want_float(op, x)?;
            same_dtype(inputs)?;
            if w.rank() != 4 || x.rank() != 4 {
                return Err(format!("conv_transpose needs 4-D input and weights, got {:?} and {:?}", x.shape, w.shape));
            }
            if *group == 0 || x.shape[1] != w.shape[0] || w.shape[0] % group != 0 {
                return Err(format!(
                    "conv_transpose channels do not match: input {:?}, weights {:?}, group {group}",
                    x.shape, w.shape
                ));
            }
            if [w.shape[2], w.shape[3]] != *kernel || strides.contains(&0) || dilations.contains(&0) {
                return Err(format!(
                    "conv_transpose kernel {kernel:?} (weights {:?}), strides {strides:?}, dilations {dilations:?} invalid",
                    w.shape
                ));
            }
            let m = w.shape[1].checked_mul(*group).ok_or("conv_transpose output channels overflow")?;
            if let Some(b) = inputs.get(2) {
                if b.shape != [m] {
                    return Err(format!("conv_transpose bias must have shape [{m}], got {:?}", b.shape));
                }
            }
            one(TensorType::new(x.dtype, vec![x.shape[0], m, out_hw[0], out_hw[1]]))
        }
        MaxPoolIndices { window, ceil_mode, .. } => {
            arity(op, inputs, 1, 1)?;
            let x = inputs[0];
            one(TensorType::new(DType::I64, pool_shape(x, window, *ceil_mode, x.shape.get(1).copied().unwrap_or(0))?))
        }
        MaxPool { window, ceil_mode } | AveragePool { window, ceil_mode, .. } => {
            arity(op, inputs, 1, 1)?;
            let x = inputs[0];
            if matches!(op, AveragePool { .. }) {
                want_float(op, x)?;
            }
            one(TensorType::new(x.dtype, pool_shape(x, window, *ceil_mode, x.shape.get(1).copied().unwrap_or(0))?))
        }
        BatchNorm { .. } => {
            arity(op, inputs, 5, 5)?;
            let x = inputs[0];
            want_float(op, x)?;
            same_dtype(inputs)?;
            if x.rank() < 2 {
                return Err(format!("batch_norm input must have rank >= 2, got {:?}", x.shape));
            }
            for (i, t) in inputs[1..].iter().enumerate() {
                if t.shape != [x.shape[1]] {
                    return Err(format!(
                        "batch_norm parameter {} must have shape [{}], got {:?}",
                        i + 1,
                        x.shape[1],
                        t.shape
                    ));
                }
            }
            one(x.clone())
        }
        Lrn { size, .. } => {
            arity(op, inputs, 1, 1)?;
            want_float(op, inputs[0])?;
            if inputs[0].rank() < 3 || *size == 0 {
                return Err(format!("lrn needs rank >= 3 and size >= 1, got {:?}, size {size}", inputs[0].shape));
            }
            one(inputs[0].clone())
        }
        LayerNorm { axis, .. } | RmsNorm { axis, .. } => {
            let max = if matches!(op, RmsNorm { .. }) { 2 } else { 3 };
            arity(op, inputs, 2, max)?;
            want_float(op, inputs[0])?;
            let x = inputs[0];
            if *axis >= x.rank() {
                return Err(format!("axis {axis} out of range for rank {}", x.rank()));
            }
            if let Some(t) = inputs[1..].iter().find(|t| t.dtype != x.dtype) {
                return Err(format!("scale and bias must be {} like the input, got {}", x.dtype, t.dtype));
            }
            let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape.as_slice()).collect();
            if crate::infer::broadcast_shapes(&shapes)? != x.shape {
                return Err(format!("scale and bias do not broadcast to the input's shape {:?}", x.shape));
            }
            one(x.clone())
        }
        Softmax { axis } | LogSoftmax { axis } => {
            arity(op, inputs, 1, 1)?;
            want_float(op, inputs[0])?;
            if *axis >= inputs[0].rank() {
                return Err(format!("axis {axis} out of range for rank {}", inputs[0].rank()));
            }
            one(inputs[0].clone())
        }
        _ => unreachable!("{} is not a convolution, pooling, normalization or softmax op", op.name()),
    }
}

// ---------------------------------------------------------------------------------------
// Dispatch: the reference evaluation and text form of the neural-network ops.

/// Evaluates a neural-network op (its inputs already checked by [`infer`]).
pub(super) fn eval(op: &Op, inputs: &[&Tensor], _want: &TensorType) -> Result<Tensor, String> {
    match op {
        Op::Conv { window, group } => conv(inputs[0], inputs[1], inputs.get(2).copied(), window, *group),
        Op::ConvTranspose { kernel, strides, dilations, pads, out_hw, group } => conv_transpose(
            inputs[0],
            inputs[1],
            inputs.get(2).copied(),
            [*kernel, *strides, *dilations],
            *pads,
            *out_hw,
            *group,
        ),
        Op::MaxPool { window, ceil_mode } => max_pool(inputs[0], window, *ceil_mode),
        Op::MaxPoolIndices { window, ceil_mode, column_major } => {
            max_pool_indices(inputs[0], window, *ceil_mode, *column_major)
        }
        Op::AveragePool { window, ceil_mode, count_include_pad } => {
            average_pool(inputs[0], window, *ceil_mode, *count_include_pad)
        }
        Op::BatchNorm { epsilon } => batch_norm(inputs, *epsilon),
        Op::Lrn { size, alpha, beta, bias } => lrn(inputs[0], *size, *alpha, *beta, *bias),
        Op::LayerNorm { axis, epsilon } => layer_norm(inputs, *axis, *epsilon),
        Op::RmsNorm { axis, epsilon } => rms_norm(inputs[0], inputs[1], *axis, *epsilon),
        Op::Softmax { axis } => softmax(inputs[0], *axis, false),
        Op::LogSoftmax { axis } => softmax(inputs[0], *axis, true),
        _ => Err(super::not_in_family(op)),
    }
}

fn window_attrs(w: &Window) -> AttrList {
    vec![
        ("kernel", list(&w.kernel)),
        ("strides", list(&w.strides)),
        ("pads", list(&w.pads)),
        ("dilations", list(&w.dilations)),
    ]
}

/// The attributes of a neural-network op, in print order.
pub(super) fn attrs(op: &Op) -> AttrList {
    let with = |w: &Window, extra: &[(&'static str, bool)]| {
        let mut a = window_attrs(w);
        a.extend(extra.iter().map(|&(k, v)| (k, v.to_string())));
        a
    };
    match op {
        Op::Conv { window, group } => {
            let mut a = window_attrs(window);
            a.push(("group", group.to_string()));
            a
        }
        Op::ConvTranspose { kernel, strides, dilations, pads, out_hw, group } => vec![
            ("kernel", list(kernel)),
            ("strides", list(strides)),
            ("dilations", list(dilations)),
            ("pads", list(pads)),
            ("out_hw", list(out_hw)),
            ("group", group.to_string()),
        ],
        Op::MaxPool { window, ceil_mode } => with(window, &[("ceil_mode", *ceil_mode)]),
        Op::MaxPoolIndices { window, ceil_mode, column_major } => {
            with(window, &[("ceil_mode", *ceil_mode), ("column_major", *column_major)])
        }
        Op::AveragePool { window, ceil_mode, count_include_pad } => {
            with(window, &[("ceil_mode", *ceil_mode), ("count_include_pad", *count_include_pad)])
        }
        Op::BatchNorm { epsilon } => vec![("epsilon", float(*epsilon))],
        Op::Lrn { size, alpha, beta, bias } => {
            vec![("size", size.to_string()), ("alpha", float(*alpha)), ("beta", float(*beta)), ("bias", float(*bias))]
        }
        Op::LayerNorm { axis, epsilon } | Op::RmsNorm { axis, epsilon } => {
            vec![("axis", axis.to_string()), ("epsilon", float(*epsilon))]
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => vec![("axis", axis.to_string())],
        _ => vec![],
    }
}

fn parse_window(a: &mut Attrs) -> Result<Window, String> {
    Ok(Window {
        kernel: a.array("kernel")?,
        strides: a.array("strides")?,
        pads: a.array("pads")?,
        dilations: a.array("dilations")?,
    })
}

/// Builds the neural-network op printed as `name` (`None`: not one).
pub(super) fn parse(name: &str, a: &mut Attrs) -> Result<Option<Op>, String> {
    Ok(Some(match name {
        "conv" => Op::Conv { window: parse_window(a)?, group: a.word("group")? },
        "conv_transpose" => {
            let pads: Vec<i64> = a.list("pads")?;
            Op::ConvTranspose {
                kernel: a.array("kernel")?,
                strides: a.array("strides")?,
                dilations: a.array("dilations")?,
                pads: pads.try_into().map_err(|_| "attribute `pads` needs 2 values".to_string())?,
                out_hw: a.array("out_hw")?,
                group: a.word("group")?,
            }
        }
        "max_pool" => Op::MaxPool { window: parse_window(a)?, ceil_mode: a.word("ceil_mode")? },
        "max_pool_indices" => Op::MaxPoolIndices {
            window: parse_window(a)?,
            ceil_mode: a.word("ceil_mode")?,
            column_major: a.word("column_major")?,
        },
        "average_pool" => Op::AveragePool {
            window: parse_window(a)?,
            ceil_mode: a.word("ceil_mode")?,
            count_include_pad: a.word("count_include_pad")?,
        },
        "batch_norm" => Op::BatchNorm { epsilon: a.word("epsilon")? },
        "lrn" => {
            Op::Lrn { size: a.word("size")?, alpha: a.word("alpha")?, beta: a.word("beta")?, bias: a.word("bias")? }
        }
        "layer_norm" => Op::LayerNorm { axis: a.word("axis")?, epsilon: a.word("epsilon")? },
        "rms_norm" => Op::RmsNorm { axis: a.word("axis")?, epsilon: a.word("epsilon")? },
        "softmax" => Op::Softmax { axis: a.word("axis")? },
        "log_softmax" => Op::LogSoftmax { axis: a.word("axis")? },
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_f32, run};
    use crate::op::Window;
    use crate::{Data, Op, Tensor};

    fn win(kernel: [usize; 2], strides: [usize; 2], pads: [usize; 4], dilations: [usize; 2]) -> Window {
        Window { kernel, strides, pads, dilations }
    }

    #[test]
    fn depthwise_conv_with_stride_padding_and_bias() {
        // Channel 0 = [[1,2,3],[4,5,6],[7,8,9]], channel 1 = [[10,11,12],[13,14,15],[16,17,18]].
        let x = Tensor::f32(vec![1, 2, 3, 3], (1..=18).map(|v| v as f32).collect());
        // Output channel 0 sees only input channel 0 through [[1,2],[3,4]]; channel 1 sees
        // only input channel 1 through [[1,0],[0,-1]].
        let w = Tensor::f32(vec![2, 1, 2, 2], vec![1., 2., 3., 4., 1., 0., 0., -1.]);
        let b = Tensor::f32(vec![2], vec![0.5, -1.0]);
        let op = Op::Conv { window: win([2, 2], [2, 2], [1, 1, 1, 1], [1, 1]), group: 2 };
        // Output (oy, ox) reads rows 2*oy-1.., cols 2*ox-1..; out-of-range taps are zero:
        // ch0: (0,0): 4*1; (0,1): 3*2+4*3; (1,0): 2*4+4*7; (1,1): 5+2*6+3*8+4*9.
        // ch1: (0,0): -10; (0,1): -12; (1,0): -16; (1,1): 14-18.
        let want = [4.5, 18.5, 36.5, 77.5, -11., -13., -17., -5.];
        assert_f32(&run(op, &[&x, &w, &b]), &[1, 2, 2, 2], &want, 0.0);
    }

    #[test]
    fn grouped_conv_maps_channels_per_group() {
        // 4 input channels, 2 groups: out0 = 1*x0 + 10*x1, out1 = 100*x2 + 1000*x3.
        let x = Tensor::f32(vec![1, 4, 1, 1], vec![1., 2., 3., 4.]);
        let w = Tensor::f32(vec![2, 2, 1, 1], vec![1., 10., 100., 1000.]);
        let op = Op::Conv { window: win([1, 1], [1, 1], [0; 4], [1, 1]), group: 2 };
        assert_f32(&run(op, &[&x, &w]), &[1, 2, 1, 1], &[21., 4300.], 0.0);
    }

    #[test]
    fn conv_transpose_scatters_with_stride_and_bias() {
        // One input channel [[1,2],[3,4]], kernel [[1,10]] (1x2), stride 2 along W, bias 0.5.
        let x = Tensor::f32(vec![1, 1, 2, 2], vec![1., 2., 3., 4.]);
        let w = Tensor::f32(vec![1, 1, 1, 2], vec![1., 10.]);
        let b = Tensor::f32(vec![1], vec![0.5]);
        let op = Op::ConvTranspose {
            kernel: [1, 2],
            strides: [1, 2],
            dilations: [1, 1],
            pads: [0, 0],
            out_hw: [2, 5],
            group: 1,
        };
        // Row 0: 1→(0,1), 2→(2,3); column 4 only gets the bias (an output_shape overhang).
        let want = [1.5, 10.5, 2.5, 20.5, 0.5, 3.5, 30.5, 4.5, 40.5, 0.5];
        assert_f32(&run(op, &[&x, &w, &b]), &[1, 1, 2, 5], &want, 0.0);
    }

    #[test]
    fn dilated_conv_sums_channels() {
        let x = Tensor::f32(vec![1, 2, 3, 3], (1..=18).map(|v| v as f32).collect());
        // Dilation 2 on a 2x2 kernel reads the four corners of each 3x3 channel.
        let w = Tensor::f32(vec![1, 2, 2, 2], vec![1., 1., 1., 1., 1., 0., 0., 0.]);
        let op = Op::Conv { window: win([2, 2], [1, 1], [0; 4], [2, 2]), group: 1 };
        // (1+3+7+9) + 10
        assert_f32(&run(op, &[&x, &w]), &[1, 1, 1, 1], &[30.], 0.0);
    }

    #[test]
    fn max_pool_never_takes_padding() {
        let x = Tensor::f32(vec![1, 1, 3, 3], (1..=9).map(|v| -(v as f32)).collect());
        let op = Op::MaxPool { window: win([2, 2], [2, 2], [1, 1, 0, 0], [1, 1]), ceil_mode: false };
        // Windows: {x00}, {x01,x02}, {x10,x20}, {x11,x12,x21,x22}.
        assert_f32(&run(op, &[&x]), &[1, 1, 2, 2], &[-1., -2., -4., -5.], 0.0);
        let xi = Tensor::i32(vec![1, 1, 1, 2], vec![-5, -3]);
        let op = Op::MaxPool { window: win([1, 2], [1, 1], [0, 1, 0, 1], [1, 1]), ceil_mode: false };
        assert_eq!(run(op, &[&xi]).data(), Data::I32(vec![-5, -3, -3]));
    }

    #[test]
    fn pools_with_ceil_mode() {
        // Width 4, kernel 3, stride 3, ceil: windows {0,1,2} and {3, overhang, overhang}.
        let x = Tensor::f32(vec![1, 1, 1, 4], vec![1., 2., 3., 4.]);
        let w0 = win([1, 3], [1, 3], [0; 4], [1, 1]);
        let w1 = win([1, 3], [1, 3], [0, 1, 0, 1], [1, 1]); // pad 1 left and right
        let max = |w: &Window| run(Op::MaxPool { window: w.clone(), ceil_mode: true }, &[&x]);
        let avg = |w: &Window, cip| {
            run(Op::AveragePool { window: w.clone(), ceil_mode: true, count_include_pad: cip }, &[&x])
        };
        assert_f32(&max(&w0), &[1, 1, 1, 2], &[3., 4.], 0.0);
        assert_f32(&max(&w1), &[1, 1, 1, 2], &[2., 4.], 0.0);
        assert_f32(&avg(&w0, false), &[1, 1, 1, 2], &[2., 4.], 0.0);
        assert_f32(&avg(&w0, true), &[1, 1, 1, 2], &[2., 4.], 0.0); // overhang is not counted
                                                                    // With pads: windows {pad,1,2} and {3,4,pad}.
        assert_f32(&avg(&w1, false), &[1, 1, 1, 2], &[1.5, 3.5], 0.0);
        assert_f32(&avg(&w1, true), &[1, 1, 1, 2], &[1., 7. / 3.], 1e-7);
        // Width 5, kernel 2, stride 2, ceil: the last window {4, overhang} divides by 1.
        let x5 = Tensor::f32(vec![1, 1, 1, 5], vec![1., 2., 3., 4., 5.]);
        let op =
            Op::AveragePool { window: win([1, 2], [1, 2], [0; 4], [1, 1]), ceil_mode: true, count_include_pad: true };
        assert_f32(&run(op, &[&x5]), &[1, 1, 1, 3], &[1.5, 3.5, 5.], 0.0);
    }

    #[test]
    fn average_pool_2d_with_padding() {
        // [[1,2],[3,4]], 2x2 kernel, stride 1, pad 1 on all sides -> 3x3 output.
        let x = Tensor::f32(vec![1, 1, 2, 2], vec![1., 2., 3., 4.]);
        let w = win([2, 2], [1, 1], [1, 1, 1, 1], [1, 1]);
        let op = |cip| Op::AveragePool { window: w.clone(), ceil_mode: false, count_include_pad: cip };
        let excl = [1., 1.5, 2., 2., 2.5, 3., 3., 3.5, 4.];
        assert_f32(&run(op(false), &[&x]), &[1, 1, 3, 3], &excl, 0.0);
        let incl = [0.25, 0.75, 0.5, 1., 2.5, 1.5, 0.75, 1.75, 1.];
        assert_f32(&run(op(true), &[&x]), &[1, 1, 3, 3], &incl, 0.0);
    }

    #[test]
    fn batch_norm_per_channel() {
        let x = Tensor::f32(vec![1, 2, 1, 2], vec![1., 2., 3., 4.]);
        let p = |a: f32, b: f32| Tensor::f32(vec![2], vec![a, b]);
        let (scale, bias, mean, var) = (p(1., 2.), p(0., 1.), p(1., 3.), p(3.75, 0.));
        // sqrt(var + 0.25) = [2, 0.5]: ch0 (x-1)/2, ch1 (x-3)/0.5*2+1.
        let y = run(Op::BatchNorm { epsilon: 0.25 }, &[&x, &scale, &bias, &mean, &var]);
        assert_f32(&y, &[1, 2, 1, 2], &[0., 0.5, 1., 5.], 0.0);
    }

    #[test]
    fn lrn_uses_onnx_channel_window() {
        let x = Tensor::f32(vec![1, 3, 1, 1], vec![1., 2., 3.]);
        // size 2: channels [c, c+1]; alpha/size = 1, bias 1, beta 1.
        let y = run(Op::Lrn { size: 2, alpha: 2.0, beta: 1.0, bias: 1.0 }, &[&x]);
        assert_f32(&y, &[1, 3, 1, 1], &[1. / 6., 2. / 14., 3. / 10.], 1e-7);
        // size 3: channels [c-1, c+1]; alpha/size = 1, bias 2, beta 0.5.
        let y = run(Op::Lrn { size: 3, alpha: 3.0, beta: 0.5, bias: 2.0 }, &[&x]);
        assert_f32(&y, &[1, 3, 1, 1], &[1. / 7f32.sqrt(), 0.5, 3. / 15f32.sqrt()], 1e-7);
    }

    /// Hand-derived: rows [1, 3] and [2, 4] each have variance 1 about their means 2 and 3,
    /// so they normalize to [-1, 1] (with epsilon 3, to [-0.5, 0.5]).
    #[test]
    fn layer_norm_over_the_last_axes() {
        let x = Tensor::f32(vec![2, 2], vec![1., 3., 2., 4.]);
        let scale = Tensor::f32(vec![2], vec![2., 1.]);
        let bias = Tensor::f32(vec![2], vec![0.5, -0.5]);
        let y = run(Op::LayerNorm { axis: 1, epsilon: 0.0 }, &[&x, &scale, &bias]);
        assert_f32(&y, &[2, 2], &[-1.5, 0.5, -1.5, 0.5], 1e-7);
        let y = run(Op::LayerNorm { axis: 1, epsilon: 3.0 }, &[&x, &scale]);
        assert_f32(&y, &[2, 2], &[-1., 0.5, -1., 0.5], 1e-7);
        // Over both axes: mean 2.5, deviations ±0.5 and ±1.5, variance 1.25.
        let y = run(Op::LayerNorm { axis: 0, epsilon: 0.0 }, &[&x, &Tensor::f32(vec![], vec![1.])]);
        let r = 1. / 1.25f32.sqrt();
        assert_f32(&y, &[2, 2], &[-1.5 * r, 0.5 * r, -0.5 * r, 1.5 * r], 1e-6);
        let bad = Tensor::f32(vec![3], vec![1., 1., 1.]);
        assert!(crate::ops::eval(&Op::LayerNorm { axis: 1, epsilon: 0.0 }, &[&x, &bad]).is_err());
    }

    /// Hand-derived: rows [3, 4] and [0, 2] have mean squares 12.5 and 2.
    #[test]
    fn rms_norm_over_the_last_axis() {
        let x = Tensor::f32(vec![2, 2], vec![3., 4., 0., 2.]);
        let scale = Tensor::f32(vec![2], vec![1., 2.]);
        let y = run(Op::RmsNorm { axis: 1, epsilon: 0.0 }, &[&x, &scale]);
        let (a, b) = (12.5f32.sqrt(), 2f32.sqrt());
        assert_f32(&y, &[2, 2], &[3. / a, 8. / a, 0., 4. / b], 1e-7);
        // epsilon 2: the second row's mean square becomes 4.
        let y = run(Op::RmsNorm { axis: 1, epsilon: 2.0 }, &[&x, &scale]);
        assert_f32(&y, &[2, 2][..], &[3. / 14.5f32.sqrt(), 8. / 14.5f32.sqrt(), 0., 2.], 1e-7);
    }

    #[test]
    fn softmax_and_log_softmax() {
        use std::f32::consts::LN_2;
        let x = Tensor::f32(vec![3], vec![1., 2., 3.]);
        assert_f32(&run(Op::Softmax { axis: 0 }, &[&x]), &[3], &[0.09003057, 0.24472847, 0.66524096], 1e-7);
        assert_f32(&run(Op::LogSoftmax { axis: 0 }, &[&x]), &[3], &[-2.407_606, -1.407_606, -0.407_606], 1e-7);
        // Along axis 0 of a [2,3] tensor; large values do not overflow.
        let x = Tensor::f32(vec![2, 3], vec![1., 0., 5., 1., 1000., 5.]);
        assert_f32(&run(Op::Softmax { axis: 0 }, &[&x]), &[2, 3], &[0.5, 0., 0.5, 0.5, 1., 0.5], 0.0);
        assert_f32(&run(Op::LogSoftmax { axis: 0 }, &[&x]), &[2, 3], &[-LN_2, -1000., -LN_2, -LN_2, 0., -LN_2], 1e-7);
    }
}
