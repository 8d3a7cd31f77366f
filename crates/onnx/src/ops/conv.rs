//! Convolutions: Conv (with the window attributes every windowed op shares: kernel, strides,
//! pads, dilations, auto_pad), ConvTranspose (1-D and 2-D: pads, output_padding,
//! output_shape and auto_pad resolved into the HIR op's begin pads and output extents, as
//! ONNX's reference does), Col2Im (2-D, a grouped ConvTranspose), DeformConv (2-D, GridSample
//! taps and a MatMul) and CausalConvWithState (a depthwise Conv over the input left-padded
//! with the past state).

use super::builders::{bin, konst_as, reshape, scalar, tmp, un};
use super::{invalid, unsupported, NodeCx, OpResult};
use crate::data::MAX_ELEMS;
use kiln_ir::{BinaryOp as B, DType, Op, UnaryOp as U, ValueId, Window};

/// The largest kernel, stride, dilation or pad accepted (keeps the arithmetic in range).
const MAX_ATTR: i64 = 1 << 31;

fn ints(cx: &NodeCx, name: &str, n: usize, default: i64, min: i64) -> OpResult<Vec<i64>> {
    match cx.attrs.ints(name)? {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n && v.iter().all(|&d| (min..=MAX_ATTR).contains(&d)) => Ok(v.to_vec()),
        Some(v) => invalid(format!("attribute `{name}` = {v:?} must have {n} values in [{min}, {MAX_ATTR}]")),
    }
}

pub(super) fn conv_transpose(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let (xs, ws) = (cx.shape(x), cx.shape(w));
    let n = match xs.len() {
        3..=5 => xs.len() - 2,
        r => return unsupported(format!("{}-D ConvTranspose: only 1-D to 3-D are supported", r.saturating_sub(2))),
    };
    if ws.len() != xs.len() {
        return invalid(format!("weights of shape {ws:?} do not match input of shape {xs:?}"));
    }
    let kernel = match cx.attrs.ints("kernel_shape")? {
        Some(_) => ints(cx, "kernel_shape", n, 1, 1)?,
        None => ws[2..].iter().map(|&d| d as i64).collect(),
    };
    let strides = ints(cx, "strides", n, 1, 1)?;
    let dilations = ints(cx, "dilations", n, 1, 1)?;
    let output_padding = ints(cx, "output_padding", n, 0, 0)?;
    let group = cx.attrs.int_or("group", 1)?;
    if !(1..=MAX_ATTR).contains(&group) {
        return invalid(format!("attribute `group` = {group} must be positive"));
    }
    let output_shape = match cx.attrs.ints("output_shape")? {
        None => None,
        // Some exporters include the batch and channel dimensions.
        Some(v) if v.len() == n || v.len() == n + 2 => {
            let v = &v[v.len() - n..];
            if v.iter().any(|&d| d < 1 || d > MAX_ELEMS as i64) {
                return invalid(format!("attribute `output_shape` = {v:?} is out of range"));
            }
            Some(v.to_vec())
        }
        Some(v) => return invalid(format!("attribute `output_shape` = {v:?} must have {n} values")),
    };
    let auto_pad = cx.attrs.string("auto_pad")?.unwrap_or_default();
    let same = match auto_pad.as_str() {
        "" | "NOTSET" | "VALID" => None,
        "SAME_UPPER" => Some(true),
        "SAME_LOWER" => Some(false),
        other => {
            return invalid(format!("attribute `auto_pad` = {other:?} is not NOTSET, VALID, SAME_UPPER or SAME_LOWER"))
        }
    };
    let pads_attr = if auto_pad == "VALID" { None } else { cx.attrs.ints("pads")? };
    let pads_attr = match pads_attr {
        Some(p) if p.len() == 2 * n && p.iter().all(|&d| (0..=MAX_ATTR).contains(&d)) => Some(p.to_vec()),
        Some(p) => return invalid(format!("attribute `pads` = {p:?} must have {} values in [0, {MAX_ATTR}]", 2 * n)),
        None => None,
    };
    let mut begin = vec![0i64; n];
    let mut out = vec![0usize; n];
    for a in 0..n {
        let inp = xs[2 + a] as i128;
        let full = i128::from(strides[a]) * (inp - 1)
            + i128::from(output_padding[a])
            + i128::from(kernel[a] - 1) * i128::from(dilations[a])
            + 1;
        let (b, o) = match (same, &pads_attr) {
            (Some(upper), None) => {
                let o = output_shape.as_ref().map_or(inp * i128::from(strides[a]), |s| i128::from(s[a]));
                let total = full - o;
                let small = total.div_euclid(2);
                (if upper { small } else { total - small }, o)
            }
            (_, p) => {
                let (pb, pe) = p.as_ref().map_or((0, 0), |p| (i128::from(p[a]), i128::from(p[a + n])));
                (pb, output_shape.as_ref().map_or(full - pb - pe, |s| i128::from(s[a])))
            }
        };
        if o < 1 || o > MAX_ELEMS as i128 || b.abs() > i128::from(MAX_ATTR) {
            return invalid(format!("ConvTranspose output extent {o} (pad {b}) on spatial axis {a} is invalid"));
        }
        begin[a] = b as i64;
        out[a] = o as usize;
    }
    let to_usize = |v: &[i64]| v.iter().map(|&d| d as usize).collect::<Vec<_>>();
    let (k, s, d) = (to_usize(&kernel), to_usize(&strides), to_usize(&dilations));
    if n == 3 {
        // 3-D only: in 2-D the sub-pixel lowering of the HIR op is faster (its convolution
        // writes channels-last, its interleave reads it in order).
        let blocks = k == s && d.iter().all(|&d| d == 1) && begin.iter().all(|&b| b == 0);
        if group == 1 && blocks && (0..n).all(|a| out[a] == xs[2 + a] * s[a]) {
            return conv_transpose_blocks(cx, x, w, &k);
        }
        return conv_transpose_3d(cx, x, w, (k, s, d), (begin, out), group);
    }
    let lift = n == 1;
    let two = |v: &[i64], unit: i64| if lift { [unit, v[0]] } else { [v[0], v[1]] };
    let to_usize = |a: [i64; 2]| [a[0] as usize, a[1] as usize];
    let op = Op::ConvTranspose {
        kernel: to_usize(two(&kernel, 1)),
        strides: to_usize(two(&strides, 1)),
        dilations: to_usize(two(&dilations, 1)),
        pads: two(&begin, 0),
        out_hw: if lift { [1, out[0]] } else { [out[0], out[1]] },
        group: group as usize,
    };
    let mut ins = vec![x, w];
    ins.extend(cx.opt_input(2));
    if !lift {
        return Ok(vec![cx.emit_out(op, &ins, 0)?]);
    }
    for v in ins.iter_mut().take(2) {
        let s = cx.shape(*v);
        let name = cx.tmp_name("2d");
        *v = cx.emit(Op::Reshape { shape: vec![s[0], s[1], 1, s[2]] }, &[*v], name)?;
    }
    let name = cx.tmp_name("2d");
    let y = cx.emit(op, &ins, name)?;
    let ys = cx.shape(y);
    Ok(vec![cx.emit_out(Op::Reshape { shape: vec![ys[0], ys[1], ys[3]] }, &[y], 0)?])
}

/// Col2Im (2-D): a grouped ConvTranspose of the columns, one group per image channel, whose
/// weights pick tap `t` from column channel `t`: input `[N, C·kH·kW, L]` becomes
/// `[N, C·kH·kW, blocks_h, blocks_w]` and each column value lands on the image position its
/// block and tap cover.
pub(super) fn col2im(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let xs = cx.shape(x);
    let (Some(image), Some(block)) = (cx.opt_ints_input(1, "image_shape")?, cx.opt_ints_input(2, "block_shape")?)
    else {
        return invalid("inputs 1 (image_shape) and 2 (block_shape) are required");
    };
    if image.len() != 2 || block.len() != 2 {
        return unsupported(format!("{}-D Col2Im: only 2-D images are supported", image.len()));
    }
    let bad = |v: &[i64]| v.iter().any(|&d| !(1..=MAX_ATTR).contains(&d));
    if xs.len() != 3 || bad(&image) || bad(&block) {
        return invalid(format!("Col2Im of input {xs:?}, image_shape {image:?}, block_shape {block:?}"));
    }
    let strides = ints(cx, "strides", 2, 1, 1)?;
    let dilations = ints(cx, "dilations", 2, 1, 1)?;
    let pads = ints(cx, "pads", 4, 0, 0)?;
    let (kh, kw) = (block[0] as usize, block[1] as usize);
    let kk = kh * kw;
    if !xs[1].is_multiple_of(kk) {
        return invalid(format!("input channels {} are not a multiple of the block size {kk}", xs[1]));
    }
    let c = xs[1] / kk;
    let mut blocks = [0usize; 2];
    for a in 0..2 {
        let span = image[a] + pads[a] + pads[a + 2] - dilations[a] * (block[a] - 1) - 1;
        if span < 0 {
            return invalid(format!("block {block:?} does not fit image {image:?} with pads {pads:?}"));
        }
        blocks[a] = (span / strides[a] + 1) as usize;
    }
    if blocks[0].checked_mul(blocks[1]) != Some(xs[2]) || c == 0 {
        return invalid(format!("input {xs:?} does not hold {}x{} blocks of {kk} per channel", blocks[0], blocks[1]));
    }
    // The tap-picking weights have C·(kH·kW)² elements.
    if kk.checked_mul(xs[1]).is_none_or(|n| n > 1 << 24) {
        return unsupported(format!("Col2Im with {c} channels of {kk}-element blocks (weights too large)"));
    }
    let name = cx.tmp_name("blocks");
    let x4 = cx.emit(Op::Reshape { shape: vec![xs[0], xs[1], blocks[0], blocks[1]] }, &[x], name)?;
    let mut w = vec![0f32; c * kk * kk];
    for ch in 0..c {
        for t in 0..kk {
            w[(ch * kk + t) * kk + t] = 1.0;
        }
    }
    let name = cx.tmp_name("pick");
    let w = cx.konst(name, kiln_ir::Tensor::f32(vec![c * kk, 1, kh, kw], w));
    let op = Op::ConvTranspose {
        kernel: [kh, kw],
        strides: [strides[0] as usize, strides[1] as usize],
        dilations: [dilations[0] as usize, dilations[1] as usize],
        pads: [pads[0], pads[1]],
        out_hw: [image[0] as usize, image[1] as usize],
        group: c,
    };
    Ok(vec![cx.emit_out(op, &[x4, w], 0)?])
}

/// DeformConv (2-D), as ONNX's reference computes it: every kernel tap of every output
/// position samples the input bilinearly (zero outside) at its grid position plus a learned
/// offset, scaled by the optional mask; a grouped matrix product with the weights follows.
/// The sampling is one `GridSample` (align_corners) per offset group and tap.
pub(super) fn deform_conv(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    use kiln_ir::op::{GridMode, GridPadding};
    cx.outputs_at_most(1, "")?;
    let (x, w, off) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let (bias, mask) = (cx.opt_input(3), cx.opt_input(4));
    let (xs, ws, os) = (cx.shape(x), cx.shape(w), cx.shape(off));
    if cx.ty(x).dtype != DType::F32 {
        return unsupported(format!("DeformConv on {} (only float32)", cx.ty(x).dtype));
    }
    if xs.len() != 4 || ws.len() != 4 || os.len() != 4 {
        return unsupported("DeformConv other than 2-D");
    }
    let (n, c, ih, iw) = (xs[0], xs[1], xs[2], xs[3]);
    let (oc, kh, kw) = (ws[0], ws[2], ws[3]);
    let group = cx.attrs.int_or("group", 1)?.max(1) as usize;
    let og = cx.attrs.int_or("offset_group", 1)?.max(1) as usize;
    let two = |name: &str, d: i64| -> OpResult<[i64; 2]> {
        match cx.attrs.ints(name)? {
            Some([a, b]) => Ok([*a, *b]),
            Some(v) => invalid(format!("attribute `{name}` has {} values, expected 2", v.len())),
            None => Ok([d, d]),
        }
    };
    let (st, dl) = (two("strides", 1)?, two("dilations", 1)?);
    let pads: Vec<i64> = cx.attrs.ints("pads")?.map_or(vec![0; 4], <[i64]>::to_vec);
    if pads.len() != 4 || c % group != 0 || c % og != 0 || oc % group != 0 || ws[1] * group != c {
        return invalid(format!("inconsistent DeformConv shapes: X {xs:?}, W {ws:?}, group {group}, pads {pads:?}"));
    }
    let (oh, ow) = (os[2], os[3]);
    let k = kh * kw;
    if os[0] != n || os[1] != og * 2 * k {
        return invalid(format!("offset {os:?} does not match offset_group {og} and a {kh}×{kw} kernel"));
    }
    let (cg, cog) = (c / og, c / group);
    // Offsets as [n, og, k, 2, oh, ow]; mask as [n, og, k, oh, ow].
    let off6 = reshape(cx, off, vec![n, og, k, 2, oh, ow])?;
    let mask5 = match mask {
        Some(m) => Some(reshape(cx, m, vec![n, og, k, oh, ow])?),
        None => None,
    };
    let pick = |cx: &mut NodeCx, v: ValueId, starts: Vec<i64>, out_shape: Vec<usize>| -> OpResult<ValueId> {
        let steps = vec![1i64; starts.len()];
        tmp(cx, Op::Slice { starts, steps, out_shape }, &[v], "pick")
    };
    let mut groups = Vec::with_capacity(og);
    for g in 0..og {
        let xg = pick(cx, x, vec![0, (g * cg) as i64, 0, 0], vec![n, cg, ih, iw])?;
        let mut taps = Vec::with_capacity(k);
        for t in 0..k {
            let (a, b) = (t / kw, t % kw);
            // Positions on the input grid, normalized to [-1, 1] for an align_corners sample.
            let mut coords = Vec::with_capacity(2);
            for (axis, (size, len)) in [(ih, oh), (iw, ow)].into_iter().enumerate() {
                let d = pick(cx, off6, vec![0, g as i64, t as i64, axis as i64, 0, 0], vec![n, 1, 1, 1, oh, ow])?;
                let d = reshape(cx, d, vec![n, oh, ow])?;
                let tap = if axis == 0 { a as i64 * dl[0] } else { b as i64 * dl[1] };
                let base: Vec<f64> = (0..len).map(|i| (i as i64 * st[axis] - pads[axis] + tap) as f64).collect();
                let shape = if axis == 0 { vec![oh, 1] } else { vec![1, ow] };
                let base = konst_as(cx, DType::F32, shape, &base);
                let pos = bin(cx, B::Add, d, base)?;
                let scale = scalar(cx, DType::F32, 2.0 / (size as f64 - 1.0));
                let m1 = scalar(cx, DType::F32, -1.0);
                let p = bin(cx, B::Mul, pos, scale)?;
                let p = bin(cx, B::Add, p, m1)?;
                coords.push(reshape(cx, p, vec![n, oh, ow, 1])?);
            }
            // GridSample takes (x, y).
            let grid = tmp(cx, Op::Concat { axis: 3 }, &[coords[1], coords[0]], "grid")?;
            let op = Op::GridSample { mode: GridMode::Linear, padding: GridPadding::Zeros, align_corners: true };
            let mut s = tmp(cx, op, &[xg, grid], "sample")?;
            if let Some(m) = mask5 {
                let mt = pick(cx, m, vec![0, g as i64, t as i64, 0, 0], vec![n, 1, 1, oh, ow])?;
                let mt = reshape(cx, mt, vec![n, 1, oh, ow])?;
                s = bin(cx, B::Mul, s, mt)?;
            }
            taps.push(reshape(cx, s, vec![n, cg, 1, oh, ow])?);
        }
        groups.push(if taps.len() == 1 { taps[0] } else { tmp(cx, Op::Concat { axis: 2 }, &taps, "taps")? });
    }
    // [n, c, k, oh, ow] → per conv group [n, group, cog·k, oh·ow].
    let cols = if groups.len() == 1 { groups[0] } else { tmp(cx, Op::Concat { axis: 1 }, &groups, "cols")? };
    let cols = reshape(cx, cols, vec![n, group, cog * k, oh * ow])?;
    let wm = reshape(cx, w, vec![1, group, oc / group, cog * k])?;
    let y = tmp(cx, Op::MatMul, &[wm, cols], "y")?;
    let mut y = reshape(cx, y, vec![n, oc, oh, ow])?;
    if let Some(b) = bias {
        let b = reshape(cx, b, vec![oc, 1, 1])?;
        y = bin(cx, B::Add, y, b)?;
    }
    Ok(vec![cx.emit_out(Op::Identity, &[y], 0)?])
}

/// CausalConvWithState: a depthwise causal Conv1d over the input left-padded with the past
/// state (zeros without one), optionally followed by SiLU; output 1 is the last `k - 1`
/// positions of the padded input.
pub(super) fn causal_conv_with_state(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(2, "")?;
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let (xs, ws) = (cx.shape(x), cx.shape(w));
    if cx.ty(x).dtype != DType::F32 {
        return unsupported(format!("CausalConvWithState on {} (only float32)", cx.ty(x).dtype));
    }
    if xs.len() != 3 || ws.len() != 3 || ws[0] != xs[1] || ws[1] != 1 || ws[2] == 0 {
        return invalid(format!("input {xs:?} and weight {ws:?} must be [B, C, L] and [C, 1, k]"));
    }
    let (b, c, l, k) = (xs[0], xs[1], xs[2], ws[2]);
    let activation = cx.attrs.string("activation")?.unwrap_or_else(|| "none".into());
    if !matches!(activation.as_str(), "none" | "silu" | "swish") {
        return invalid(format!("attribute `activation` = {activation:?} is not none, silu or swish"));
    }
    let past = match cx.opt_input(3) {
        Some(p) => {
            if cx.shape(p) != [b, c, k - 1] {
                return invalid(format!("past_state {:?} must be {:?}", cx.shape(p), [b, c, k - 1]));
            }
            p
        }
        None => konst_as(cx, DType::F32, vec![b, c, k - 1], &vec![0.0; b * c * (k - 1)]),
    };
    let padded = if k == 1 { x } else { tmp(cx, Op::Concat { axis: 2 }, &[past, x], "padded")? };
    let p4 = reshape(cx, padded, vec![b, c, 1, l + k - 1])?;
    let w4 = reshape(cx, w, vec![c, 1, 1, k])?;
    let window = Window { kernel: [1, k], strides: [1, 1], pads: [0, 0, 0, 0], dilations: [1, 1] };
    let mut ins = vec![p4, w4];
    ins.extend(cx.opt_input(2));
    let conv = tmp(cx, Op::Conv { window, group: c }, &ins, "conv")?;
    let y = if activation == "none" {
        cx.emit_out(Op::Reshape { shape: vec![b, c, l] }, &[conv], 0)?
    } else {
        let s = un(cx, U::Sigmoid, conv)?;
        let m = bin(cx, B::Mul, conv, s)?;
        cx.emit_out(Op::Reshape { shape: vec![b, c, l] }, &[m], 0)?
    };
    let op = Op::Slice { starts: vec![0, 0, l as i64], steps: vec![1, 1, 1], out_shape: vec![b, c, k - 1] };
    let present = if k == 1 { past } else { cx.emit_out(op, &[padded], 1)? };
    Ok(vec![y, present])
}

/// The largest kernel, stride, dilation or pad accepted (keeps window arithmetic in range).
pub(super) const MAX_WINDOW_ATTR: i64 = 1 << 31;

/// An attribute list of `n` values (one per spatial axis), each in `min..=MAX_WINDOW_ATTR`.
fn list(cx: &NodeCx, name: &str, n: usize, default: usize, min: i64) -> OpResult<Vec<usize>> {
    match cx.attrs.ints(name)? {
        None => Ok(vec![default; n]),
        Some(v) => {
            if v.len() != n {
                return invalid(format!("attribute `{name}` = {v:?} must have {n} values"));
            }
            if v.iter().any(|&d| d < min || d > MAX_WINDOW_ATTR) {
                return invalid(format!("attribute `{name}` = {v:?} is out of range"));
            }
            Ok(v.iter().map(|&d| d as usize).collect())
        }
    }
}

/// Resolves kernel, strides, dilations and pads (auto_pad included) of a window over the
/// spatial extents `spatial` (1 or 2 axes). `kernel` is the kernel shape when the op's
/// weights give it. A 1-D window becomes a 2-D one with a unit leading axis.
pub(super) fn window(cx: &NodeCx, spatial: &[usize], kernel: Option<Vec<usize>>) -> OpResult<Window> {
    let (kernel, strides, dilations, pads) = window_parts(cx, spatial, kernel)?;
    let n = spatial.len();
    Ok(if n == 1 {
        Window {
            kernel: [1, kernel[0]],
            strides: [1, strides[0]],
            pads: [0, pads[0], 0, pads[1]],
            dilations: [1, dilations[0]],
        }
    } else {
        Window {
            kernel: [kernel[0], kernel[1]],
            strides: [strides[0], strides[1]],
            pads: [pads[0], pads[1], pads[2], pads[3]],
            dilations: [dilations[0], dilations[1]],
        }
    })
}

/// Per-axis window attributes: (kernel, strides, dilations, pads as `[begin…, end…]`).
type WindowParts = (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>);

pub(super) fn window_parts(cx: &NodeCx, spatial: &[usize], kernel: Option<Vec<usize>>) -> OpResult<WindowParts> {
    let n = spatial.len();
    let kernel = if cx.attrs.has("kernel_shape") {
        list(cx, "kernel_shape", n, 1, 1)?
    } else {
        match kernel {
            Some(k) if k.len() == n && k.iter().all(|&d| (1..=MAX_WINDOW_ATTR as usize).contains(&d)) => k,
            Some(k) => return invalid(format!("weights' kernel {k:?} does not fit a {n}-D window")),
            None => return invalid("attribute `kernel_shape` is missing"),
        }
    };
    let strides = list(cx, "strides", n, 1, 1)?;
    let dilations = list(cx, "dilations", n, 1, 1)?;
    let auto_pad = cx.attrs.string("auto_pad")?.unwrap_or_default();
    let mut pads = vec![0; 2 * n];
    match auto_pad.as_str() {
        "" | "NOTSET" => {
            if let Some(p) = cx.attrs.ints("pads")? {
                if p.len() != 2 * n {
                    return invalid(format!("attribute `pads` = {p:?} must have {} values", 2 * n));
                }
                if p.iter().any(|&d| d < 0) {
                    return unsupported(format!("negative pads {p:?}"));
                }
                if p.iter().any(|&d| d > MAX_WINDOW_ATTR) {
                    return invalid(format!("attribute `pads` = {p:?} is out of range"));
                }
                pads = p.iter().map(|&d| d as usize).collect();
            }
        }
        "VALID" => {}
        "SAME_UPPER" | "SAME_LOWER" => {
            for a in 0..n {
                let (begin, end) = same_pads(spatial[a], kernel[a], strides[a], dilations[a], auto_pad == "SAME_UPPER");
                pads[a] = begin;
                pads[a + n] = end;
            }
        }
        other => {
            return invalid(format!("attribute `auto_pad` = {other:?} is not NOTSET, VALID, SAME_UPPER or SAME_LOWER"))
        }
    }
    Ok((kernel, strides, dilations, pads))
}

/// The spatial extents of an `N, C, spatial…` input, for 1-D and 2-D windows.
pub(super) fn spatial_dims(x: &[usize]) -> OpResult<Vec<usize>> {
    match x.len() {
        3 | 4 => Ok(x[2..].to_vec()),
        r => unsupported(format!(
            "{}-D input of shape {x:?}: only 1-D and 2-D windows are supported",
            r.saturating_sub(2)
        )),
    }
}

/// Applies a 2-D window op to `x` (and `rest`: weights, bias), lifting a 1-D input
/// `[N, C, L]` to `[N, C, 1, L]` (and 1-D weights `[O, I, K]` to `[O, I, 1, K]`) and the result
/// back.
pub(super) fn windowed(cx: &mut NodeCx, op: Op, x: ValueId, rest: &[ValueId]) -> OpResult<ValueId> {
    let xs = cx.shape(x);
    if xs.len() == 4 {
        let mut ins = vec![x];
        ins.extend_from_slice(rest);
        return cx.emit_out(op, &ins, 0);
    }
    let lift = |cx: &mut NodeCx, v: ValueId| -> OpResult<ValueId> {
        let s = cx.shape(v);
        let name = cx.tmp_name("2d");
        cx.emit(Op::Reshape { shape: vec![s[0], s[1], 1, s[2]] }, &[v], name)
    };
    let mut ins = vec![lift(cx, x)?];
    if let Some(&w) = rest.first() {
        if cx.rank(w) != 3 {
            return invalid(format!("1-D weights must have rank 3, got {:?}", cx.shape(w)));
        }
        ins.push(lift(cx, w)?);
    }
    ins.extend_from_slice(rest.get(1..).unwrap_or(&[]));
    let name = cx.tmp_name("2d");
    let y = cx.emit(op, &ins, name)?;
    let ys = cx.shape(y);
    cx.emit_out(Op::Reshape { shape: vec![ys[0], ys[1], ys[3]] }, &[y], 0)
}

/// `(begin, end)` pads of one axis for auto_pad SAME_UPPER (extra pad at the end) or
/// SAME_LOWER (extra pad at the beginning): the output extent is `ceil(n / stride)`.
pub(crate) fn same_pads(n: usize, kernel: usize, stride: usize, dilation: usize, upper: bool) -> (usize, usize) {
    let out = n.div_ceil(stride);
    let eff = dilation * (kernel - 1) + 1;
    let total = (out.saturating_sub(1) * stride + eff).saturating_sub(n);
    let small = total / 2;
    if upper {
        (small, total - small)
    } else {
        (total - small, small)
    }
}

pub(super) fn conv(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    if cx.rank(x) == 5 {
        return conv_3d(cx, x, w);
    }
    let spatial = spatial_dims(&cx.shape(x))?;
    let ws = cx.shape(w);
    let kernel = (ws.len() == spatial.len() + 2).then(|| ws[2..].to_vec());
    let window = window(cx, &spatial, kernel)?;
    let group = cx.attrs.int_or("group", 1)?;
    if !(1..=MAX_WINDOW_ATTR).contains(&group) {
        return invalid(format!("attribute `group` = {group} must be positive"));
    }
    if ws.get(1).and_then(|&c| c.checked_mul(group as usize)).is_none_or(|c| c > MAX_ELEMS) {
        return invalid(format!("group {group} does not fit weights of shape {ws:?}"));
    }
    let mut rest = vec![w];
    rest.extend(cx.opt_input(2));
    Ok(vec![windowed(cx, Op::Conv { window, group: group as usize }, x, &rest)?])
}

/// A 3-D convolution as a sum over the depth taps of 2-D convolutions: for tap `t`, the
/// input depths `od·stride + t·dilation − pad` that exist (a strided slice) are folded into
/// the batch, convolved over H and W with the weights' slice `[:, :, t]`, and placed at
/// their output depths (zeros elsewhere); the taps' results are summed, the bias added, and
/// the depth moved back behind the channels. As many multiply-adds as the 3-D form, and the
/// 2-D convolutions reach the GEMM or Winograd schedule.
fn conv_3d(cx: &mut NodeCx, x: ValueId, w: ValueId) -> OpResult<Vec<ValueId>> {
    let xs = cx.shape(x);
    let ws = cx.shape(w);
    if ws.len() != 5 {
        return invalid(format!("3-D weights must have rank 5, got {ws:?}"));
    }
    let parts = window_parts(cx, &xs[2..], Some(ws[2..].to_vec()))?;
    let group = cx.attrs.int_or("group", 1)?;
    if !(1..=MAX_WINDOW_ATTR).contains(&group)
        || xs[1] != ws[1] * group as usize
        || !ws[0].is_multiple_of(group as usize)
    {
        return invalid(format!("group {group} does not fit input {xs:?} and weights {ws:?}"));
    }
    let bias = cx.opt_input(2);
    let y = conv_3d_sum(cx, x, w, bias, parts, group as usize)?;
    Ok(vec![cx.emit_out(Op::Transpose { perm: vec![0, 2, 1, 3, 4] }, &[y], 0)?])
}

/// [`conv_3d`] with its window: the result depth-major, `[N, D, C, H, W]`.
fn conv_3d_sum(
    cx: &mut NodeCx,
    x: ValueId,
    w: ValueId,
    bias: Option<ValueId>,
    (k, st, dl, p): WindowParts,
    group: usize,
) -> OpResult<ValueId> {
    let (xs, ws) = (cx.shape(x), cx.shape(w));
    let (n, c, d) = (xs[0], xs[1], xs[2]);
    let co = ws[0];
    let span = dl[0] * (k[0] - 1) + 1;
    if d + p[0] + p[3] < span {
        return invalid(format!("window of depth {span} does not fit input depth {} (pads {}, {})", d, p[0], p[3]));
    }
    let od = (d + p[0] + p[3] - span) / st[0] + 1;
    let hw = Window {
        kernel: [k[1], k[2]],
        strides: [st[1], st[2]],
        pads: [p[1], p[2], p[4], p[5]],
        dilations: [dl[1], dl[2]],
    };
    // Depth-major once: each tap's input is then a strided slice of whole [C, H, W] images.
    let xd = tmp(cx, Op::Transpose { perm: vec![0, 2, 1, 3, 4] }, &[x], "depth_major")?;
    let tap_weights = |cx: &mut NodeCx, t: usize| -> OpResult<ValueId> {
        let wslice = Op::Slice {
            starts: vec![0, 0, t as i64, 0, 0],
            steps: vec![1; 5],
            out_shape: vec![co, ws[1], 1, ws[3], ws[4]],
        };
        let wt = tmp(cx, wslice, &[w], "depth_tap_weights")?;
        reshape(cx, wt, vec![co, ws[1], ws[3], ws[4]])
    };
    // Stride 1 along the depth, one group: every input depth is convolved once by all the
    // taps' weights stacked as output channels (`[K·CO, C, kh, kw]`), and tap `t`'s result
    // for output depth `o` is the slice of channels `t·CO..` at input depth `o + t·dl − pad`:
    // the input's transforms and pads are made once, not once per tap (a 3×3×3 convolution
    // repeated them three times, a fifth of a 3-D ResNet-18's time).
    // (Where most depths use every tap: it computes every tap at every depth, and at a
    // depth of 2 a third of that is never read.)
    let reached: usize = (0..k[0])
        .map(|t| (0..od).filter(|&o| (0..d as i64).contains(&((o + t * dl[0]) as i64 - p[0] as i64))).count())
        .sum();
    let shared = if group == 1 && st[0] == 1 && k[0] > 1 && reached * 10 >= k[0] * d * 9 {
        let x2 = reshape(cx, xd, vec![n * d, c, xs[3], xs[4]])?;
        let taps = (0..k[0]).map(|t| tap_weights(cx, t)).collect::<OpResult<Vec<_>>>()?;
        let wcat = tmp(cx, Op::Concat { axis: 0 }, &taps, "depth_taps_weights")?;
        let y = tmp(cx, Op::Conv { window: hw.clone(), group: 1 }, &[x2, wcat], "depth_taps")?;
        let ys = cx.shape(y);
        // Batch 1: the taps are sliced, placed and summed as `[D, CO, H, W]` images, and
        // only the sum is reshaped (a reshape copies a convolution's channels-last result
        // to row-major: once, not once per tap over three times the channels).
        Some(if n == 1 { y } else { reshape(cx, y, vec![n, d, k[0] * co, ys[2], ys[3]])? })
    } else {
        None
    };
    let flat = n == 1 && shared.is_some();
    let mut sum: Option<ValueId> = None;
    for t in 0..k[0] {
        // Output depths whose input depth od·s + t·dl − pad lies inside the input.
        let at = |o: usize| (o * st[0] + t * dl[0]) as i64 - p[0] as i64;
        let valid: Vec<usize> = (0..od).filter(|&o| (0..d as i64).contains(&at(o))).collect();
        let (Some(&lo), Some(&hi)) = (valid.first(), valid.last()) else { continue };
        let cnt = hi - lo + 1;
        let y = if let Some(ys) = shared {
            let s = cx.shape(ys);
            let slice = if flat {
                Op::Slice {
                    starts: vec![at(lo), (t * co) as i64, 0, 0],
                    steps: vec![1; 4],
                    out_shape: vec![cnt, co, s[2], s[3]],
                }
            } else {
                Op::Slice {
                    starts: vec![0, at(lo), (t * co) as i64, 0, 0],
                    steps: vec![1; 5],
                    out_shape: vec![n, cnt, co, s[3], s[4]],
                }
            };
            tmp(cx, slice, &[ys], "depth_tap")?
        } else {
            let slice = Op::Slice {
                starts: vec![0, at(lo), 0, 0, 0],
                steps: vec![1, st[0] as i64, 1, 1, 1],
                out_shape: vec![n, cnt, c, xs[3], xs[4]],
            };
            let xt = tmp(cx, slice, &[xd], "depth_taps")?;
            let xt = reshape(cx, xt, vec![n * cnt, c, xs[3], xs[4]])?;
            let wt = tap_weights(cx, t)?;
            let y = tmp(cx, Op::Conv { window: hw.clone(), group }, &[xt, wt], "depth_tap")?;
            let ys = cx.shape(y);
            reshape(cx, y, vec![n, cnt, co, ys[2], ys[3]])?
        };
        let s = cx.shape(y);
        let (oh, ow) = (s[s.len() - 2], s[s.len() - 1]);
        // Zeros at the output depths this tap does not reach.
        let mut ins = Vec::new();
        let zeros = |cx: &mut NodeCx, len: usize| {
            let shape = if flat { vec![len, co, oh, ow] } else { vec![n, len, co, oh, ow] };
            konst_as(cx, DType::F32, shape, &vec![0.0; n * len * co * oh * ow])
        };
        if lo > 0 {
            ins.push(zeros(cx, lo));
        }
        ins.push(y);
        if hi + 1 < od {
            ins.push(zeros(cx, od - 1 - hi));
        }
        let axis = if flat { 0 } else { 1 };
        let y = if ins.len() == 1 { y } else { tmp(cx, Op::Concat { axis }, &ins, "depth_placed")? };
        sum = Some(match sum {
            None => y,
            Some(acc) => bin(cx, B::Add, acc, y)?,
        });
    }
    let Some(mut y) = sum else { return invalid("no depth tap reaches the input") };
    if let Some(b) = bias {
        let b = reshape(cx, b, if flat { vec![1, co, 1, 1] } else { vec![1, 1, co, 1, 1] })?;
        y = bin(cx, B::Add, y, b)?;
    }
    if flat {
        let s = cx.shape(y);
        y = reshape(cx, y, vec![1, s[0], s[1], s[2], s[3]])?;
    }
    Ok(y)
}

/// ConvTranspose (group 1) with kernel = stride, no dilation and no pads (a 3-D U-Net's
/// k2 s2): the output blocks do not overlap, so each input position's block is one matrix
/// product over the channels, then moved into place. Written for any rank; used for 3-D.
fn conv_transpose_blocks(cx: &mut NodeCx, x: ValueId, w: ValueId, k: &[usize]) -> OpResult<Vec<ValueId>> {
    let (xs, ws) = (cx.shape(x), cx.shape(w));
    let nd = k.len();
    let (n, ci, co) = (xs[0], xs[1], ws[1]);
    let positions: usize = xs[2..].iter().product();
    let taps: usize = k.iter().product();
    let xf = reshape(cx, x, vec![n, ci, positions])?;
    let xt = tmp(cx, Op::Transpose { perm: vec![0, 2, 1] }, &[xf], "positions")?;
    // The product's columns as (taps…, Co): the output channel contiguous, so that the copy
    // into place reads channels in order while it writes the interleaved rows.
    let mut wperm = vec![0];
    wperm.extend(2..2 + nd);
    wperm.push(1);
    let wt = tmp(cx, Op::Transpose { perm: wperm }, &[w], "taps_first")?;
    let wf = reshape(cx, wt, vec![ci, taps * co])?;
    let y = tmp(cx, Op::MatMul, &[xt, wf], "blocks")?;
    // [N, spatial…, taps…, Co] -> [N, Co, (spatial_a, tap_a)…].
    let mut shape = vec![n];
    shape.extend_from_slice(&xs[2..]);
    shape.extend_from_slice(k);
    shape.push(co);
    let y = reshape(cx, y, shape)?;
    let mut perm = vec![0, 1 + 2 * nd];
    for a in 0..nd {
        perm.extend([1 + a, 1 + nd + a]);
    }
    let y = tmp(cx, Op::Transpose { perm }, &[y], "placed")?;
    let mut out = vec![n, co];
    out.extend((0..nd).map(|a| xs[2 + a] * k[a]));
    let mut y = reshape(cx, y, out)?;
    if let Some(b) = cx.opt_input(2) {
        let mut bshape = vec![1, co];
        bshape.extend(std::iter::repeat_n(1, nd));
        let b = reshape(cx, b, bshape)?;
        y = bin(cx, B::Add, y, b)?;
    }
    Ok(vec![cx.emit_out(Op::Identity, &[y], 0)?])
}

/// A 3-D ConvTranspose (group 1) as the convolution it is the adjoint of: the input with
/// `stride − 1` zeros inserted between its elements along each axis, padded by
/// `(k − 1)·dilation − pad` (and the output padding), convolved at stride 1 with the kernel
/// flipped in every spatial axis and its channel axes swapped. It multiplies by the zeros
/// too (stride³ more multiply-adds than needed): a correct form for a rare op, not a fast one.
fn conv_transpose_3d(
    cx: &mut NodeCx,
    x: ValueId,
    w: ValueId,
    (k, st, dl): (Vec<usize>, Vec<usize>, Vec<usize>),
    (begin, out): (Vec<i64>, Vec<usize>),
    group: i64,
) -> OpResult<Vec<ValueId>> {
    if group != 1 {
        return unsupported(format!("3-D ConvTranspose with group {group} (only group 1)"));
    }
    let ws = cx.shape(w);

    // Zero insertion, one axis at a time: [.., D, ..] -> [.., D, s, ..] -> [.., D·s, ..], cut to (D−1)·s+1.
    let mut xu = x;
    for (a, &s) in st.iter().enumerate() {
        if s == 1 {
            continue;
        }
        let shape = cx.shape(xu);
        let ax = 2 + a;
        let mut split = shape.clone();
        split.insert(ax + 1, 1);
        let col = reshape(cx, xu, split.clone())?;
        let mut zshape = split.clone();
        zshape[ax + 1] = s - 1;
        let zeros = konst_as(cx, DType::F32, zshape.clone(), &vec![0.0; zshape.iter().product()]);
        let both = tmp(cx, Op::Concat { axis: ax + 1 }, &[col, zeros], "zero_inserted")?;
        let mut merged = shape.clone();
        merged[ax] *= s;
        let flat = reshape(cx, both, merged.clone())?;
        let mut cut = merged;
        cut[ax] = (shape[ax] - 1) * s + 1;
        xu = tmp(cx, Op::Slice { starts: vec![0; 5], steps: vec![1; 5], out_shape: cut }, &[flat], "zero_inserted")?;
    }
    // Pads of the equivalent convolution; a negative one crops instead.
    let us = cx.shape(xu);
    let mut pads = vec![0usize; 6];
    let mut starts = vec![0i64; 5];
    let mut crop = us.clone();
    for a in 0..3 {
        let lead = ((k[a] - 1) * dl[a]) as i64 - begin[a];
        let eff = ((k[a] - 1) * dl[a]) as i64;
        // The padded extent must give `out[a]` outputs: padded = out + eff.
        let padded = out[a] as i64 + eff;
        let trail = padded - lead - us[2 + a] as i64;
        if lead >= 0 {
            pads[a] = lead as usize;
        } else {
            starts[2 + a] = -lead;
            crop[2 + a] -= (-lead) as usize;
        }
        if trail >= 0 {
            pads[a + 3] = trail as usize;
        } else {
            crop[2 + a] = (crop[2 + a] as i64 + trail).max(0) as usize;
        }
    }
    if crop != us {
        xu = tmp(cx, Op::Slice { starts, steps: vec![1; 5], out_shape: crop }, &[xu], "cropped")?;
    }
    // [Ci, Co, kd, kh, kw] -> [Co, Ci, kd, kh, kw], each spatial axis reversed.
    let wt = tmp(cx, Op::Transpose { perm: vec![1, 0, 2, 3, 4] }, &[w], "swapped")?;
    let wshape = vec![ws[1], ws[0], ws[2], ws[3], ws[4]];
    let starts = vec![0, 0, ws[2] as i64 - 1, ws[3] as i64 - 1, ws[4] as i64 - 1];
    let wf = tmp(cx, Op::Slice { starts, steps: vec![1, 1, -1, -1, -1], out_shape: wshape }, &[wt], "flipped")?;
    let bias = cx.opt_input(2);
    let y = conv_3d_sum(cx, xu, wf, bias, (k, vec![1; 3], dl, pads), 1)?;
    Ok(vec![cx.emit_out(Op::Transpose { perm: vec![0, 2, 1, 3, 4] }, &[y], 0)?])
}

#[cfg(test)]
mod tests {
    use super::same_pads;

    #[test]
    fn same_pads_match_onnx() {
        // n=5, k=3, s=2: out 3, total pad (3-1)*2+3-5 = 2.
        assert_eq!(same_pads(5, 3, 2, 1, true), (1, 1));
        // n=6, k=3, s=2: out 3, total 1: SAME_UPPER puts it at the end, SAME_LOWER at the start.
        assert_eq!(same_pads(6, 3, 2, 1, true), (0, 1));
        assert_eq!(same_pads(6, 3, 2, 1, false), (1, 0));
        // Dilated: eff 5, n=7, s=1: total 4.
        assert_eq!(same_pads(7, 3, 1, 2, true), (2, 2));
        // Kernel smaller than stride: no pad.
        assert_eq!(same_pads(4, 1, 2, 1, true), (0, 0));
    }
}
