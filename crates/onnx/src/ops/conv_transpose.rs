//! ConvTranspose (1-D and 2-D): pads, output_padding, output_shape and auto_pad are resolved
//! here into the HIR op's begin pads and output extents, as ONNX's reference does. Col2Im
//! (2-D) is a grouped ConvTranspose.

use kiln_ir::{Op, ValueId};

use super::{invalid, unsupported, NodeCx, OpResult};
use crate::data::MAX_ELEMS;

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
        3 | 4 => xs.len() - 2,
        r => return unsupported(format!("{}-D ConvTranspose: only 1-D and 2-D are supported", r.saturating_sub(2))),
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
