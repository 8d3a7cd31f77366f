//! Pooling: MaxPool (with its indices), AveragePool, the global pools (reductions) and
//! LpPool (a depthwise Conv with a ones kernel). (MaxUnpool, a scatter, is in
//! [`super::index`].)

use super::builders::{bin, konst_as, reshape, scalar, tmp, un};
use super::conv::same_pads;
use super::conv::{spatial_dims, window, window_parts, windowed};
use super::{invalid, unsupported, NodeCx, OpResult};
use kiln_ir::{BinaryOp as B, DType, Op, ReduceOp, UnaryOp as U, ValueId, Window};

/// A per-axis window attribute list (`n` values, default `default`).
fn list(cx: &NodeCx, name: &str, n: usize, default: usize) -> OpResult<Vec<usize>> {
    match cx.attrs.ints(name)? {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n && v.iter().all(|&d| (0..=1 << 31).contains(&d)) => {
            Ok(v.iter().map(|&d| d as usize).collect())
        }
        Some(v) => invalid(format!("attribute `{name}` = {v:?} must be {n} non-negative values")),
    }
}

/// LpPool: `(Σ_window |x|^p)^(1/p)`, the window sum a depthwise Conv with a ones kernel
/// (zero padding adds nothing; ceil_mode becomes extra end padding).
pub(super) fn lp_pool(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    if cx.ty(x).dtype != DType::F32 {
        return unsupported(format!("LpPool on {} (only float32)", cx.ty(x).dtype));
    }
    let n = match s.len() {
        3 => 1,
        4 => 2,
        5 => 3,
        r => return unsupported(format!("{}-D LpPool (1-D to 3-D only)", r.saturating_sub(2))),
    };
    let kernel = list(cx, "kernel_shape", n, 0)?;
    if cx.attrs.ints("kernel_shape")?.is_none() || kernel.contains(&0) {
        return invalid("attribute `kernel_shape` is missing or has a zero");
    }
    let strides = list(cx, "strides", n, 1)?;
    let dilations = list(cx, "dilations", n, 1)?;
    if strides.contains(&0) || dilations.contains(&0) {
        return invalid("strides and dilations must be positive");
    }
    let spatial = &s[2..];
    let mut pads = vec![0usize; 2 * n];
    match cx.attrs.string("auto_pad")?.unwrap_or_default().as_str() {
        "" | "NOTSET" => pads = list(cx, "pads", 2 * n, 0)?,
        "VALID" => {}
        m @ ("SAME_UPPER" | "SAME_LOWER") => {
            for a in 0..n {
                let (b, e) = same_pads(spatial[a], kernel[a], strides[a], dilations[a], m == "SAME_UPPER");
                pads[a] = b;
                pads[a + n] = e;
            }
        }
        other => return invalid(format!("attribute `auto_pad` = {other:?} is not known")),
    }
    if cx.attrs.int_or("ceil_mode", 0)? != 0 {
        for a in 0..n {
            let eff = dilations[a] * (kernel[a] - 1) + 1;
            let padded = spatial[a] + pads[a] + pads[a + n];
            if padded >= eff {
                let span = padded - eff;
                let mut out = span.div_ceil(strides[a]) + 1;
                if (out - 1) * strides[a] >= spatial[a] + pads[a] {
                    out -= 1;
                }
                pads[a + n] += ((out - 1) * strides[a] + eff).saturating_sub(padded);
            }
        }
    }
    let p = cx.attrs.int_or("p", 2)?;
    if p < 1 {
        return invalid(format!("attribute `p` = {p} must be positive"));
    }
    let a = un(cx, U::Abs, x)?;
    let pf = scalar(cx, DType::F32, p as f64);
    let ap = if p == 1 { a } else { bin(cx, B::Pow, a, pf)? };
    let c = s[1];
    // Window sums: a depthwise Conv with a ones kernel over `[N, C', H, W]`.
    let window_sum = |cx: &mut NodeCx, v: ValueId, window: Window| -> OpResult<ValueId> {
        let ch = cx.shape(v)[1];
        let [kh, kw] = window.kernel;
        let ones = konst_as(cx, DType::F32, vec![ch, 1, kh, kw], &vec![1.0; ch * kh * kw]);
        tmp(cx, Op::Conv { window, group: ch }, &[v, ones], "window_sum")
    };
    let axis_window = |a: usize| Window {
        kernel: [1, kernel[a]],
        strides: [1, strides[a]],
        pads: [0, pads[a], 0, pads[a + n]],
        dilations: [1, dilations[a]],
    };
    let (sum, out) = match n {
        1 => {
            let v = reshape(cx, ap, vec![s[0], c, 1, s[2]])?;
            let y = window_sum(cx, v, axis_window(0))?;
            let ys = cx.shape(y);
            (y, vec![ys[0], ys[1], ys[3]])
        }
        2 => {
            let w = Window {
                kernel: [kernel[0], kernel[1]],
                strides: [strides[0], strides[1]],
                pads: [pads[0], pads[1], pads[2], pads[3]],
                dilations: [dilations[0], dilations[1]],
            };
            let y = window_sum(cx, ap, w)?;
            let ys = cx.shape(y);
            (y, ys)
        }
        _ => {
            // Separable: (H, W) over [N, C·D, H, W], then D over [N, C, D, H'·W'].
            let v = reshape(cx, ap, vec![s[0], c * s[2], s[3], s[4]])?;
            let w = Window {
                kernel: [kernel[1], kernel[2]],
                strides: [strides[1], strides[2]],
                pads: [pads[1], pads[2], pads[4], pads[5]],
                dilations: [dilations[1], dilations[2]],
            };
            let y1 = window_sum(cx, v, w)?;
            let s1 = cx.shape(y1);
            let v2 = reshape(cx, y1, vec![s[0], c, s[2], s1[2] * s1[3]])?;
            let d = Window {
                kernel: [kernel[0], 1],
                strides: [strides[0], 1],
                pads: [pads[0], 0, pads[3], 0],
                dilations: [dilations[0], 1],
            };
            let y2 = window_sum(cx, v2, d)?;
            let s2 = cx.shape(y2);
            (y2, vec![s[0], c, s2[2], s1[2], s1[3]])
        }
    };
    let root = if p == 1 {
        sum
    } else {
        let inv = scalar(cx, DType::F32, 1.0 / p as f64);
        bin(cx, B::Pow, sum, inv)?
    };
    Ok(vec![cx.emit_out(Op::Reshape { shape: out }, &[root], 0)?])
}

fn ceil_mode(cx: &NodeCx) -> OpResult<bool> {
    Ok(cx.attrs.int_or("ceil_mode", 0)? != 0)
}

/// A 3-D pool as two 2-D pools, which is exact because max and average pooling are
/// separable per axis (an average's divisor is the product of the per-axis counts):
/// `[N, C, D, H, W]` → pool (H, W) over `[N, C·D, H, W]` → pool (D, 1) over
/// `[N, C, D, H'·W']` → `[N, C, D', H', W']`.
fn pool_3d(cx: &mut NodeCx, x: ValueId, make: &dyn Fn(Window) -> Op) -> OpResult<ValueId> {
    let s = cx.shape(x);
    let (k, st, dl, p) = window_parts(cx, &s[2..], None)?;
    let reshape = |cx: &mut NodeCx, v: ValueId, shape: Vec<usize>| -> OpResult<ValueId> {
        let name = cx.tmp_name("3d");
        cx.emit(Op::Reshape { shape }, &[v], name)
    };
    let hw = Window {
        kernel: [k[1], k[2]],
        strides: [st[1], st[2]],
        pads: [p[1], p[2], p[4], p[5]],
        dilations: [dl[1], dl[2]],
    };
    let x1 = reshape(cx, x, vec![s[0], s[1] * s[2], s[3], s[4]])?;
    let name = cx.tmp_name("pool_hw");
    let y1 = cx.emit(make(hw), &[x1], name)?;
    let s1 = cx.shape(y1);
    let y1 = reshape(cx, y1, vec![s[0], s[1], s[2], s1[2] * s1[3]])?;
    let d = Window { kernel: [k[0], 1], strides: [st[0], 1], pads: [p[0], 0, p[3], 0], dilations: [dl[0], 1] };
    let name = cx.tmp_name("pool_d");
    let y2 = cx.emit(make(d), &[y1], name)?;
    let s2 = cx.shape(y2);
    cx.emit_out(Op::Reshape { shape: vec![s[0], s[1], s2[2], s1[2], s1[3]] }, &[y2], 0)
}

pub(super) fn max_pool(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let x = cx.input(0)?;
    let ceil_mode = ceil_mode(cx)?;
    if cx.has_output(1) {
        // Indices: for 2-D windows only (the flat index depends on the input's layout).
        cx.outputs_at_most(2, "")?;
        if cx.rank(x) != 4 {
            return unsupported(format!("output 1 (Indices) of a {}-D pool", cx.rank(x).saturating_sub(2)));
        }
        let window = window(cx, &spatial_dims(&cx.shape(x))?, None)?;
        let column_major = cx.attrs.int_or("storage_order", 0)? != 0;
        let y = cx.emit_out(Op::MaxPool { window: window.clone(), ceil_mode }, &[x], 0)?;
        let i = cx.emit_out(Op::MaxPoolIndices { window, ceil_mode, column_major }, &[x], 1)?;
        return Ok(vec![y, i]);
    }
    cx.outputs_at_most(1, "Indices")?;
    if cx.rank(x) == 5 {
        return Ok(vec![pool_3d(cx, x, &|window| Op::MaxPool { window, ceil_mode })?]);
    }
    let window = window(cx, &spatial_dims(&cx.shape(x))?, None)?;
    Ok(vec![windowed(cx, Op::MaxPool { window, ceil_mode }, x, &[])?])
}

pub(super) fn average_pool(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let ceil_mode = ceil_mode(cx)?;
    let count_include_pad = cx.attrs.int_or("count_include_pad", 0)? != 0;
    if cx.rank(x) == 5 {
        let make = |window| Op::AveragePool { window, ceil_mode, count_include_pad };
        return Ok(vec![pool_3d(cx, x, &make)?]);
    }
    let window = window(cx, &spatial_dims(&cx.shape(x))?, None)?;
    Ok(vec![windowed(cx, Op::AveragePool { window, ceil_mode, count_include_pad }, x, &[])?])
}

/// GlobalAveragePool / GlobalMaxPool: a keepdims reduction over every spatial axis.
pub(super) fn global_pool(cx: &mut NodeCx, op: ReduceOp) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let rank = cx.rank(x);
    if rank < 3 {
        return invalid(format!("input must have rank >= 3 (N, C, spatial…), got {:?}", cx.shape(x)));
    }
    let axes = (2..rank).collect();
    Ok(vec![cx.emit_out(Op::Reduce { op, axes, keepdims: true }, &[x], 0)?])
}
