//! Hardmax, LpPool, AffineGrid, Einsum and CausalConvWithState as compositions of existing
//! HIR ops.

use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, ReduceOp, UnaryOp as U, ValueId, Window};

use super::compose::{bin, cmp, konst_as, reshape, scalar, tmp, un};
use super::nn::same_pads;
use super::{invalid, norm_axis, unsupported, NodeCx, OpError, OpResult};

/// Hardmax: one-hot of the first maximum along `axis` (opset 13+), or along the flattened
/// trailing axes `axis..` before (default axis 1).
pub(super) fn hardmax(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    if cx.ty(x).dtype != DType::F32 {
        return unsupported(format!("Hardmax on {} (only float32)", cx.ty(x).dtype));
    }
    let shape = cx.shape(x);
    if shape.is_empty() {
        return invalid("input must have rank >= 1");
    }
    let modern = cx.opset >= 13;
    let axis = norm_axis(cx.attrs.int_or("axis", if modern { -1 } else { 1 })?, shape.len(), "axis")?;
    let (v, a) = if modern {
        (x, axis)
    } else {
        let n = shape[..axis].iter().product::<usize>();
        let d = shape[axis..].iter().product::<usize>();
        (reshape(cx, x, vec![n, d])?, 1)
    };
    let vs = cx.shape(v);
    let d = vs[a];
    let max = tmp(cx, Op::Reduce { op: ReduceOp::Max, axes: vec![a], keepdims: true }, &[v], "max")?;
    let is_max = cmp(cx, CmpOp::Equal, v, max)?;
    let mut rs = vec![1; vs.len()];
    rs[a] = d;
    let r: Vec<f64> = (0..d).map(|i| i as f64).collect();
    let range = konst_as(cx, DType::I64, rs, &r);
    let big = scalar(cx, DType::I64, d as f64);
    let cand = tmp(cx, Op::Where, &[is_max, range, big], "candidates")?;
    let first = tmp(cx, Op::Reduce { op: ReduceOp::Min, axes: vec![a], keepdims: true }, &[cand], "argmax")?;
    let hot = cmp(cx, CmpOp::Equal, range, first)?;
    if modern {
        return Ok(vec![cx.emit_out(Op::cast(DType::F32), &[hot], 0)?]);
    }
    let f = tmp(cx, Op::cast(DType::F32), &[hot], "hardmax")?;
    Ok(vec![cx.emit_out(Op::Reshape { shape }, &[f], 0)?])
}

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

/// Parses one Einsum term into labels: letters as their code, the dims an ellipsis covers
/// as `ELLIPSIS + k` (right-aligned over `ell` ellipsis dims, for broadcasting).
const ELLIPSIS: u32 = 1 << 16;

fn einsum_term(term: &str, rank: Option<usize>, ell: usize) -> Result<Vec<u32>, String> {
    let letters = term.replace("...", "");
    if letters.chars().any(|c| !c.is_ascii_alphabetic()) {
        return Err(format!("term {term:?} has a character that is not a letter"));
    }
    let has_ell = term.contains("...");
    let n_ell = match (has_ell, rank) {
        (false, _) => 0,
        (true, Some(r)) => r.checked_sub(letters.len()).ok_or_else(|| format!("term {term:?} exceeds rank {r}"))?,
        (true, None) => ell,
    };
    let mut out = Vec::new();
    let (before, after) = term.split_once("...").unwrap_or((term, ""));
    out.extend(before.chars().map(|c| c as u32));
    if has_ell {
        out.extend((ell - n_ell..ell).map(|k| ELLIPSIS + k as u32));
    }
    out.extend(after.chars().map(|c| c as u32));
    if let Some(r) = rank {
        if out.len() != r {
            return Err(format!("term {term:?} does not match an operand of rank {r}"));
        }
    }
    Ok(out)
}

/// Einsum by broadcasting: each operand's repeated labels reduced to their diagonal (a mask
/// and a sum), its axes put in one global label order with unit dims for labels it lacks,
/// the operands multiplied, the labels missing from the output summed, and the result
/// transposed to the output's order.
pub(super) fn einsum(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let xs = cx.all_inputs()?;
    let Some(eq) = cx.attrs.string("equation")? else {
        return invalid("attribute `equation` is missing");
    };
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != xs.len() || xs.is_empty() {
        return invalid(format!("equation {eq:?} has {} terms for {} inputs", terms.len(), xs.len()));
    }
    let dtype = cx.ty(xs[0]).dtype;
    if dtype == DType::Bool || xs.iter().any(|&x| cx.ty(x).dtype != dtype) {
        return invalid("Einsum needs numeric inputs of one dtype");
    }
    let ell = terms
        .iter()
        .zip(&xs)
        .filter(|(t, _)| t.contains("..."))
        .map(|(t, &x)| cx.rank(x).saturating_sub(t.replace("...", "").len()))
        .max()
        .unwrap_or(0);
    let mut labels = Vec::new();
    let mut sizes: std::collections::BTreeMap<u32, usize> = std::collections::BTreeMap::new();
    for (t, &x) in terms.iter().zip(&xs) {
        let l = einsum_term(t, Some(cx.rank(x)), ell).map_err(OpError::Invalid)?;
        for (&c, &d) in l.iter().zip(&cx.shape(x)) {
            let e = sizes.entry(c).or_insert(d);
            if *e == 1 {
                *e = d;
            } else if d != 1 && *e != d {
                return invalid(format!("label sizes differ in {eq:?}: {e} and {d}"));
            }
        }
        labels.push(l);
    }
    let out_labels: Vec<u32> = match &rhs {
        Some(r) => einsum_term(r, None, ell).map_err(OpError::Invalid)?,
        None => {
            let mut o: Vec<u32> = (0..ell as u32).map(|k| ELLIPSIS + k).collect();
            let mut once: Vec<u32> = sizes
                .keys()
                .copied()
                .filter(|&c| c < ELLIPSIS && labels.iter().flatten().filter(|&&l| l == c).count() == 1)
                .collect();
            once.sort_unstable();
            o.extend(once);
            o
        }
    };
    if out_labels.iter().any(|c| !sizes.contains_key(c)) {
        return invalid(format!("output of {eq:?} has a label no input has"));
    }
    if let Some(y) = einsum_matmul(cx, &xs, &labels, &out_labels, &sizes)? {
        return Ok(vec![y]);
    }
    // Global order: output labels first, then the summed ones.
    let mut order = out_labels.clone();
    order.extend(sizes.keys().copied().filter(|c| !out_labels.contains(c)));
    let full: Vec<usize> = order.iter().map(|c| sizes[c]).collect();
    if crate::data::checked_numel(&full).is_none_or(|n| n > 1 << 28) {
        return unsupported(format!("Einsum {eq:?} over {full:?} is too large to broadcast"));
    }
    let mut prod: Option<ValueId> = None;
    for (mut l, &x0) in labels.into_iter().zip(&xs) {
        let mut x = x0;
        // Diagonals of repeated labels.
        while let Some((p, q)) = (0..l.len()).find_map(|p| (p + 1..l.len()).find(|&q| l[q] == l[p]).map(|q| (p, q))) {
            let s = cx.shape(x);
            let n = s[p];
            let mut ms = vec![1; s.len()];
            ms[p] = n;
            ms[q] = n;
            let eye: Vec<f64> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
            // The mask's unit dims between p and q need the mask laid out in full rank.
            let eye = konst_as(cx, dtype, vec![n, n], &eye);
            let eye = reshape(cx, eye, ms)?;
            let m = bin(cx, B::Mul, x, eye)?;
            x = tmp(cx, Op::Reduce { op: ReduceOp::Sum, axes: vec![q], keepdims: false }, &[m], "diag")?;
            l.remove(q);
        }
        // Transpose to the global order, then unit dims for missing labels.
        let mut perm: Vec<usize> = (0..l.len()).collect();
        perm.sort_by_key(|&i| order.iter().position(|&c| c == l[i]));
        if perm.iter().enumerate().any(|(i, &p)| i != p) {
            x = tmp(cx, Op::Transpose { perm: perm.clone() }, &[x], "align")?;
        }
        let s = cx.shape(x);
        let shape: Vec<usize> =
            order.iter().map(|c| perm.iter().position(|&i| l[i] == *c).map_or(1, |k| s[k])).collect();
        x = reshape(cx, x, shape)?;
        prod = Some(match prod {
            None => x,
            Some(p) => bin(cx, B::Mul, p, x)?,
        });
    }
    let p = prod.ok_or_else(|| OpError::Invalid("no operands".into()))?;
    let summed: Vec<usize> = (out_labels.len()..order.len()).collect();
    let expand = |cx: &mut NodeCx, v: ValueId| -> OpResult<ValueId> {
        let target: Vec<usize> = full[..out_labels.len()].to_vec();
        if cx.shape(v) == target {
            Ok(v)
        } else {
            tmp(cx, Op::Expand { shape: target }, &[v], "broadcast")
        }
    };
    let r = if summed.is_empty() {
        p
    } else {
        tmp(cx, Op::Reduce { op: ReduceOp::Sum, axes: summed, keepdims: false }, &[p], "contract")?
    };
    let r = expand(cx, r)?;
    Ok(vec![cx.emit_out(Op::Identity, &[r], 0)?])
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

/// Two operands without repeated or one-sided summed labels, and with equal dims for the
/// shared ones: a batched MatMul `[batch, free_a, k] @ [batch, k, free_b]` between
/// transposes and reshapes (no broadcast intermediate). `None` when the equation does not
/// have that form.
fn einsum_matmul(
    cx: &mut NodeCx,
    xs: &[ValueId],
    labels: &[Vec<u32>],
    out: &[u32],
    sizes: &std::collections::BTreeMap<u32, usize>,
) -> OpResult<Option<ValueId>> {
    let ([a, b], [la, lb]) = (xs, labels) else {
        return Ok(None);
    };
    let distinct = |l: &[u32]| l.iter().enumerate().all(|(i, c)| !l[..i].contains(c));
    if !distinct(la) || !distinct(lb) || !distinct(out) {
        return Ok(None);
    }
    // Every label's dims must agree exactly (no size-1 broadcasting here).
    let dim = |l: &[u32], x: &[usize], c: u32| l.iter().position(|&d| d == c).map(|i| x[i]);
    let (sa, sb) = (cx.shape(*a), cx.shape(*b));
    for &c in la.iter().chain(lb) {
        if dim(la, &sa, c).unwrap_or(sizes[&c]) != sizes[&c] || dim(lb, &sb, c).unwrap_or(sizes[&c]) != sizes[&c] {
            return Ok(None);
        }
    }
    let (in_a, in_b, in_o) = (|c: &u32| la.contains(c), |c: &u32| lb.contains(c), |c: &u32| out.contains(c));
    if la.iter().chain(lb).any(|c| !(in_o(c) || (in_a(c) && in_b(c)))) {
        return Ok(None); // a label summed within one operand
    }
    let batch: Vec<u32> = out.iter().copied().filter(|c| in_a(c) && in_b(c)).collect();
    let free_a: Vec<u32> = la.iter().copied().filter(|c| in_o(c) && !in_b(c)).collect();
    let free_b: Vec<u32> = lb.iter().copied().filter(|c| in_o(c) && !in_a(c)).collect();
    let contr: Vec<u32> = la.iter().copied().filter(|c| !in_o(c)).collect();
    let prod = |ls: &[u32]| ls.iter().map(|c| sizes[c]).product::<usize>();
    let arrange = |cx: &mut NodeCx, x: ValueId, l: &[u32], order: &[u32], shape: Vec<usize>| {
        let perm: Vec<usize> = order.iter().map(|c| l.iter().position(|d| d == c).unwrap_or(0)).collect();
        let t = if perm.iter().enumerate().all(|(i, &p)| i == p) {
            x
        } else {
            tmp(cx, Op::Transpose { perm }, &[x], "einsum")?
        };
        reshape(cx, t, shape)
    };
    let (nb, nfa, nfb, nk) = (prod(&batch), prod(&free_a), prod(&free_b), prod(&contr));
    let oa: Vec<u32> = batch.iter().chain(&free_a).chain(&contr).copied().collect();
    let ob: Vec<u32> = batch.iter().chain(&contr).chain(&free_b).copied().collect();
    let a3 = arrange(cx, *a, la, &oa, vec![nb, nfa, nk])?;
    let b3 = arrange(cx, *b, lb, &ob, vec![nb, nk, nfb])?;
    let m = tmp(cx, Op::MatMul, &[a3, b3], "einsum")?;
    let mid: Vec<u32> = batch.iter().chain(&free_a).chain(&free_b).copied().collect();
    let ms: Vec<usize> = mid.iter().map(|c| sizes[c]).collect();
    let m = reshape(cx, m, ms)?;
    let perm: Vec<usize> = out.iter().map(|c| mid.iter().position(|d| d == c).unwrap_or(0)).collect();
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return Ok(Some(cx.emit_out(Op::Identity, &[m], 0)?));
    }
    Ok(Some(cx.emit_out(Op::Transpose { perm }, &[m], 0)?))
}
