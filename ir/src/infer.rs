//! Typing rules: the output types of every op from its input types and attributes.
//! Run when a node is built, so shape errors surface at import with the node's name.

use crate::op::{BinaryOp, Op, UnaryOp};
use crate::{numel, DType, Shape, TensorType};

pub type InferResult = Result<Vec<TensorType>, String>;

/// Numpy broadcasting of several shapes.
pub fn broadcast_shapes(shapes: &[&[usize]]) -> Result<Shape, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(format!(
                    "shapes {} cannot be broadcast together",
                    shapes.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" and ")
                ));
            }
        }
    }
    Ok(out)
}

fn arity(op: &Op, inputs: &[&TensorType], min: usize, max: usize) -> Result<(), String> {
    if inputs.len() < min || inputs.len() > max {
        return Err(format!("{} takes {min}..={max} inputs, got {}", op.name(), inputs.len()));
    }
    Ok(())
}

fn same_dtype(inputs: &[&TensorType]) -> Result<DType, String> {
    let d = inputs[0].dtype;
    if let Some(t) = inputs.iter().find(|t| t.dtype != d) {
        return Err(format!("operand dtypes differ: {} and {}", d, t.dtype));
    }
    Ok(d)
}

fn want_float(op: &Op, t: &TensorType) -> Result<(), String> {
    if !t.dtype.is_float() {
        return Err(format!("{} needs a float input, got {}", op.name(), t.dtype));
    }
    Ok(())
}

fn pool_shape(x: &TensorType, window: &crate::op::Window, ceil_mode: bool, out_c: usize) -> Result<Shape, String> {
    if x.rank() != 4 {
        return Err(format!("expects a 4-D NCHW input, got shape {:?}", x.shape));
    }
    let oh = window.out_dim(0, x.shape[2], ceil_mode);
    let ow = window.out_dim(1, x.shape[3], ceil_mode);
    match (oh, ow) {
        (Some(oh), Some(ow)) => Ok(vec![x.shape[0], out_c, oh, ow]),
        _ => Err(format!("window {window:?} does not fit input shape {:?}", x.shape)),
    }
}

/// GatherElements / ScatterElements: integer indices of the data's rank, no larger than the
/// data outside `axis`.
fn elements_shapes(op: &Op, x: &TensorType, idx: &TensorType, axis: usize) -> Result<(), String> {
    if !idx.dtype.is_int() {
        return Err(format!("{} indices must be integers, got {}", op.name(), idx.dtype));
    }
    if axis >= x.rank() || idx.rank() != x.rank() {
        return Err(format!(
            "{} needs indices of the data's rank and axis < rank: data {:?}, indices {:?}, axis {axis}",
            op.name(),
            x.shape,
            idx.shape
        ));
    }
    if (0..x.rank()).any(|d| d != axis && idx.shape[d] > x.shape[d]) {
        return Err(format!("indices shape {:?} exceeds data shape {:?} outside axis {axis}", idx.shape, x.shape));
    }
    Ok(())
}

/// GatherND / ScatterND: `(batch_dims, m)` where m is the indices' last dimension.
fn nd_shapes(op: &Op, x: &TensorType, idx: &TensorType, b: usize) -> Result<(usize, usize), String> {
    if !idx.dtype.is_int() {
        return Err(format!("{} indices must be integers, got {}", op.name(), idx.dtype));
    }
    let q = idx.rank();
    if q == 0 || b >= q || b > x.rank() {
        return Err(format!("{} indices of shape {:?} invalid (batch_dims {b})", op.name(), idx.shape));
    }
    let m = idx.shape[q - 1];
    if m == 0 || b + m > x.rank() || idx.shape[..b] != x.shape[..b] {
        return Err(format!(
            "{} indices of shape {:?} do not fit data of shape {:?} (batch_dims {b})",
            op.name(),
            idx.shape,
            x.shape
        ));
    }
    Ok((b, m))
}

fn scatter_dtype(
    op: &Op,
    x: &TensorType,
    upd: &TensorType,
    reduction: crate::op::ScatterReduction,
) -> Result<(), String> {
    if upd.dtype != x.dtype {
        return Err(format!("updates dtype {} differs from data dtype {}", upd.dtype, x.dtype));
    }
    use crate::op::ScatterReduction as S;
    if x.dtype == DType::Bool && matches!(reduction, S::Add | S::Mul) {
        return Err(format!("{} with reduction {} is not defined on bool", op.name(), reduction.name()));
    }
    Ok(())
}

/// Output types of `op` applied to inputs of types `inputs`.
/// Checks that `op` computes in its inputs' dtypes: ops that only move elements take every
/// dtype; elementwise ops, reductions and MatMul compute in f32, f64, i32, i64 and bool; the
/// rest in all of those but f64. Storage types ([`DType::compute`]) are widened by the
/// importer before they reach a computing op.
fn check_compute_dtypes(op: &Op, inputs: &[&TensorType]) -> Result<(), String> {
    use Op::*;
    let moves = matches!(
        op,
        Cast { .. }
            | BitCast { .. }
            | Reshape { .. }
            | Transpose { .. }
            | Concat { .. }
            | Slice { .. }
            | Gather { .. }
            | Expand { .. }
            | Identity
            | GatherElements { .. }
            | GatherNd { .. }
            | Where
    );
    if moves {
        return Ok(());
    }
    let f64_ok =
        matches!(op, Binary(_) | Compare(_) | Unary(_) | Reduce { .. } | MatMul | Softmax { .. } | LogSoftmax { .. });
    for t in inputs {
        let d = t.dtype;
        if !d.is_compute() {
            return Err(format!("{} does not compute in {d} (Kiln computes {d} values in {})", op.name(), d.compute()));
        }
        if d == DType::F64 && !f64_ok {
            return Err(format!("{} does not compute in f64 yet", op.name()));
        }
    }
    Ok(())
}

/// Output types of `op` applied to inputs of types `inputs`.
pub fn infer(op: &Op, inputs: &[&TensorType]) -> InferResult {
    check_compute_dtypes(op, inputs)?;
    infer_types(op, inputs)
}

fn infer_types(op: &Op, inputs: &[&TensorType]) -> InferResult {
    use Op::*;
    let one = |t: TensorType| Ok(vec![t]);
    match op {
        Binary(b) => {
            arity(op, inputs, 2, 2)?;
            let d = same_dtype(inputs)?;
            let ok = match b {
                BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => !d.is_float(),
                BinaryOp::Shl | BinaryOp::Shr => d.is_int(),
                BinaryOp::Max | BinaryOp::Min => true,
                _ => d != DType::Bool,
            };
            if !ok {
                return Err(format!("{} is not defined on {d}", op.name()));
            }
            one(TensorType::new(d, broadcast_shapes(&[&inputs[0].shape, &inputs[1].shape])?))
        }
        Compare(_) => {
            arity(op, inputs, 2, 2)?;
            same_dtype(inputs)?;
            one(TensorType::new(DType::Bool, broadcast_shapes(&[&inputs[0].shape, &inputs[1].shape])?))
        }
        Unary(u) => {
            arity(op, inputs, 1, 1)?;
            let t = inputs[0];
            match u {
                UnaryOp::Not if t.dtype.is_float() => return Err("not needs a bool or integer input".into()),
                UnaryOp::Neg if t.dtype == DType::Bool => return Err("neg is not defined on bool".into()),
                UnaryOp::Sqrt
                | UnaryOp::Reciprocal
                | UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Sigmoid
                | UnaryOp::Tanh
                | UnaryOp::Erf
                | UnaryOp::Sin
                | UnaryOp::Cos
                | UnaryOp::Tan
                | UnaryOp::Asin
                | UnaryOp::Acos
                | UnaryOp::Atan
                | UnaryOp::HardSigmoid { .. }
                | UnaryOp::LeakyRelu { .. } => want_float(op, t)?,
                _ => {}
            }
            one(t.clone())
        }
        Where => {
            arity(op, inputs, 3, 3)?;
            if inputs[0].dtype != DType::Bool {
                return Err(format!("where's condition must be bool, got {}", inputs[0].dtype));
            }
            same_dtype(&inputs[1..])?;
            let s = broadcast_shapes(&[&inputs[0].shape, &inputs[1].shape, &inputs[2].shape])?;
            one(TensorType::new(inputs[1].dtype, s))
        }
        Cast { to, .. } => {
            arity(op, inputs, 1, 1)?;
            one(TensorType::new(*to, inputs[0].shape.clone()))
        }
        BitCast { to } => {
            arity(op, inputs, 1, 1)?;
            let from = inputs[0].dtype;
            if from.size() != to.size() {
                return Err(format!("bitcast from {from} to {to}: the sizes differ"));
            }
            if *to == DType::Bool && from != DType::Bool {
                return Err(format!("bitcast from {from} to bool: not every byte is a bool"));
            }
            one(TensorType::new(*to, inputs[0].shape.clone()))
        }
        Identity => {
            arity(op, inputs, 1, 1)?;
            one(inputs[0].clone())
        }
        MatMul => {
            arity(op, inputs, 2, 2)?;
            let d = same_dtype(inputs)?;
            let (a, b) = (&inputs[0].shape, &inputs[1].shape);
            if a.is_empty() || b.is_empty() {
                return Err("matmul operands must have rank >= 1".into());
            }
            let a2: Shape = if a.len() == 1 { vec![1, a[0]] } else { a.clone() };
            let b2: Shape = if b.len() == 1 { vec![b[0], 1] } else { b.clone() };
            let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
            let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
            if k != k2 {
                return Err(format!("matmul inner dimensions differ: {a:?} @ {b:?}"));
            }
            let mut out = broadcast_shapes(&[&a2[..a2.len() - 2], &b2[..b2.len() - 2]])?;
            if a.len() > 1 {
                out.push(m);
            }
            if b.len() > 1 {
                out.push(n);
            }
            one(TensorType::new(d, out))
        }
        Gemm { trans_a, trans_b, .. } => {
            arity(op, inputs, 2, 3)?;
            let d = same_dtype(inputs)?;
            if d == DType::Bool {
                return Err("gemm is not defined on bool".into());
            }
            let (a, b) = (&inputs[0].shape, &inputs[1].shape);
            if a.len() != 2 || b.len() != 2 {
                return Err(format!("gemm needs 2-D A and B, got {a:?} and {b:?}"));
            }
            let (m, k) = if *trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
            let (k2, n) = if *trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
            if k != k2 {
                return Err(format!(
                    "gemm inner dimensions differ: A {a:?} (trans {trans_a}), B {b:?} (trans {trans_b})"
                ));
            }
            if let Some(c) = inputs.get(2) {
                let s = broadcast_shapes(&[&c.shape, &[m, n]])?;
                if s != [m, n] {
                    return Err(format!("gemm C of shape {:?} does not broadcast to {:?}", c.shape, [m, n]));
                }
            }
            one(TensorType::new(d, vec![m, n]))
        }
        Conv { window, group } => {
            arity(op, inputs, 2, 3)?;
            let (x, w) = (inputs[0], inputs[1]);
            want_float(op, x)?;
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
            one(TensorType::new(x.dtype, pool_shape(x, window, false, w.shape[0])?))
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
        Softmax { axis } | LogSoftmax { axis } => {
            arity(op, inputs, 1, 1)?;
            want_float(op, inputs[0])?;
            if *axis >= inputs[0].rank() {
                return Err(format!("axis {axis} out of range for rank {}", inputs[0].rank()));
            }
            one(inputs[0].clone())
        }
        Reduce { op: r, axes, keepdims } => {
            arity(op, inputs, 1, 1)?;
            let x = inputs[0];
            if matches!(r, crate::op::ReduceOp::Mean) {
                want_float(op, x)?;
            }
            if x.dtype == DType::Bool && matches!(r, crate::op::ReduceOp::Sum | crate::op::ReduceOp::Prod) {
                return Err(format!("{} is not defined on bool", op.name()));
            }
            if axes.iter().any(|&a| a >= x.rank()) || axes.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("reduce axes {axes:?} invalid for rank {}", x.rank()));
            }
            let mut s = Vec::new();
            for (i, &d) in x.shape.iter().enumerate() {
                if !axes.contains(&i) {
                    s.push(d);
                } else if *keepdims {
                    s.push(1);
                }
            }
            one(TensorType::new(x.dtype, s))
        }
        Reshape { shape } => {
            arity(op, inputs, 1, 1)?;
            if numel(shape) != inputs[0].numel() {
                return Err(format!(
                    "cannot reshape {:?} ({} elements) to {:?}",
                    inputs[0].shape,
                    inputs[0].numel(),
                    shape
                ));
            }
            one(TensorType::new(inputs[0].dtype, shape.clone()))
        }
        Transpose { perm } => {
            arity(op, inputs, 1, 1)?;
            let x = inputs[0];
            let mut seen = vec![false; x.rank()];
            if perm.len() != x.rank() || perm.iter().any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true)) {
                return Err(format!("perm {perm:?} is not a permutation of rank {}", x.rank()));
            }
            one(TensorType::new(x.dtype, perm.iter().map(|&p| x.shape[p]).collect::<Shape>()))
        }
        Concat { axis } => {
            if inputs.is_empty() {
                return Err("concat needs at least one input".into());
            }
            let d = same_dtype(inputs)?;
            let r = inputs[0].rank();
            if *axis >= r {
                return Err(format!("concat axis {axis} out of range for rank {r}"));
            }
            let mut s = inputs[0].shape.clone();
            s[*axis] = 0;
            for t in inputs {
                if t.rank() != r || t.shape.iter().enumerate().any(|(i, &d)| i != *axis && d != inputs[0].shape[i]) {
                    return Err(format!(
                        "concat inputs {:?} and {:?} differ outside axis {axis}",
                        inputs[0].shape, t.shape
                    ));
                }
                s[*axis] += t.shape[*axis];
            }
            one(TensorType::new(d, s))
        }
        Slice { starts, steps, out_shape } => {
            arity(op, inputs, 1, 1)?;
            let x = inputs[0];
            if starts.len() != x.rank() || steps.len() != x.rank() || out_shape.len() != x.rank() {
                return Err("slice parameters must cover every axis".into());
            }
            for a in 0..x.rank() {
                if out_shape[a] == 0 {
                    continue;
                }
                let last = steps[a]
                    .checked_mul(out_shape[a] as i64 - 1)
                    .and_then(|x| x.checked_add(starts[a]))
                    .ok_or_else(|| format!("slice axis {a} overflows"))?;
                if steps[a] == 0
                    || starts[a] < 0
                    || last < 0
                    || starts[a] >= x.shape[a] as i64
                    || last >= x.shape[a] as i64
                {
                    return Err(format!("slice axis {a} out of range for shape {:?}", x.shape));
                }
            }
            one(TensorType::new(x.dtype, out_shape.clone()))
        }
        Gather { axis } => {
            arity(op, inputs, 2, 2)?;
            let (x, idx) = (inputs[0], inputs[1]);
            if !idx.dtype.is_int() {
                return Err(format!("gather indices must be integers, got {}", idx.dtype));
            }
            if *axis >= x.rank() {
                return Err(format!("gather axis {axis} out of range for rank {}", x.rank()));
            }
            let mut s: Shape = x.shape[..*axis].to_vec();
            s.extend_from_slice(&idx.shape);
            s.extend_from_slice(&x.shape[axis + 1..]);
            one(TensorType::new(x.dtype, s))
        }
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
        Expand { shape } => {
            arity(op, inputs, 1, 1)?;
            let s = broadcast_shapes(&[&inputs[0].shape, shape])?;
            one(TensorType::new(inputs[0].dtype, s))
        }
        Unsupported { op_type, .. } => Err(format!("op {op_type} is not supported")),
    }
}
