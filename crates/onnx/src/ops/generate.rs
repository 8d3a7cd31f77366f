//! Ops that make tensors from attributes and shapes: Constant, ConstantOfShape, Range,
//! EyeLike, OneHot and Trilu (a constant mask).

use super::builders::{bin, cmp, konst_as, reshape, scalar, tensor_as, tmp};
use super::shape::{checked, int_scalar_in, product, to_shape};
use super::{invalid, norm_axis, unsupported, NodeCx, OpError, OpResult, FOLD_LIMIT_BYTES};
use crate::data::{decode_tensor, dtype_of};
use crate::ImportError;
use kiln_ir::{BinaryOp as B, CmpOp, DType, Data, Op, Tensor, TensorType, ValueId};

/// ConstantOfShape: a constant filled with `value` (default f32 0); above the folding limit,
/// an Expand of the scalar instead of a huge constant.
pub(super) fn constant_of_shape(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let Some(spec) = cx.opt_ints_input(0, "shape")? else {
        return invalid("input 0 (shape) is missing");
    };
    let shape = to_shape(&spec, "shape")?;
    let value = match cx.attrs.tensor("value")? {
        None => Tensor::scalar_f32(0.0),
        Some(t) => {
            let name = format!("{}/value", cx.name);
            let v = decode_tensor(t, &name, cx.ext)?;
            if v.numel() != 1 {
                return invalid(format!("attribute `value` must hold one element, got {}", v.ty));
            }
            v.reshaped(Vec::new())
        }
    };
    let numel = product(&shape);
    let bytes = numel * value.dtype().size();
    if bytes <= FOLD_LIMIT_BYTES {
        let ty = TensorType::new(value.dtype(), shape);
        let data = value.data.repeat(numel);
        let t = Tensor::from_bytes(ty, data.into()).map_err(OpError::Invalid)?;
        let name = cx.out_name(0);
        return Ok(vec![cx.konst(name, t)]);
    }
    let name = cx.tmp_name("value");
    let v = cx.konst(name, value);
    Ok(vec![cx.emit_out(Op::Expand { shape }, &[v], 0)?])
}

pub(super) fn constant(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let name = cx.out_name(0);
    let attr_names: Vec<&str> = cx.attrs.names().collect();
    let t = if let Some(t) = cx.attrs.tensor("value")? {
        decode_tensor(t, &name, cx.ext)?
    } else if let Some(v) = cx.attrs.float("value_float")? {
        Tensor::scalar_f32(v)
    } else if let Some(v) = cx.attrs.floats("value_floats")? {
        Tensor::f32(vec![v.len()], v.to_vec())
    } else if let Some(v) = cx.attrs.int("value_int")? {
        Tensor::i64(Vec::new(), vec![v])
    } else if let Some(v) = cx.attrs.ints("value_ints")? {
        Tensor::i64(vec![v.len()], v.to_vec())
    } else if cx.attrs.has("sparse_value") {
        return unsupported("sparse_value (sparse constants)");
    } else if cx.attrs.has("value_string") || cx.attrs.has("value_strings") {
        return Err(OpError::Import(ImportError::UnsupportedDtype { tensor: name, dtype: "STRING".into() }));
    } else {
        return invalid(format!("no value attribute (has {attr_names:?})"));
    };
    Ok(vec![cx.konst(name, t)])
}

/// Range with constant start, limit and delta (its length depends on their values).
pub(super) fn range(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let mut vals = Vec::with_capacity(3);
    for (i, role) in ["start", "limit", "delta"].into_iter().enumerate() {
        let t =
            cx.opt_const_input(i, role)?.ok_or_else(|| OpError::Invalid(format!("input {i} ({role}) is missing")))?;
        if t.numel() != 1 {
            return invalid(format!("{role} must be a scalar, got {}", t.ty));
        }
        vals.push(t);
    }
    let dtype = vals[0].dtype();
    if vals.iter().any(|t| t.dtype() != dtype) {
        return invalid("start, limit and delta have different dtypes");
    }
    let too_long = |n: f64| OpError::Invalid(format!("Range of {n} elements is too long to fold"));
    let limit_elems = (FOLD_LIMIT_BYTES / 8) as f64;
    let data = match dtype {
        DType::F64 => {
            let [s, l, d] = [0, 1, 2].map(|i| vals[i].to_f64_vec()[0]);
            let n = ((l - s) / d).ceil().max(0.0);
            if n.is_nan() || n > limit_elems {
                return Err(too_long(n));
            }
            Data::F64((0..n as usize).map(|i| s + i as f64 * d).collect())
        }
        // f16 and bf16 are computed in f32 and rounded, like their other ops.
        d if d.is_float() => {
            let [s, l, d] = [0, 1, 2].map(|i| vals[i].to_f64_vec()[0] as f32);
            let n = f64::from(((l - s) / d).ceil().max(0.0));
            if n.is_nan() || n > limit_elems {
                return Err(too_long(n));
            }
            let v: Vec<f64> = (0..n as usize).map(|i| f64::from(s + i as f32 * d)).collect();
            Data::from_f64s(dtype, &v)
        }
        DType::Bool => return invalid("Range of bools"),
        _ => {
            let [s, l, d] = [0, 1, 2].map(|i| i128::from(vals[i].to_i64_vec()[0]));
            if d == 0 {
                return invalid("delta is 0");
            }
            let span = l - s;
            let n = if (span > 0) == (d > 0) && span != 0 { (span + d - d.signum()) / d } else { 0 };
            if n as f64 > limit_elems {
                return Err(too_long(n as f64));
            }
            let v: Vec<i64> = (0..n).map(move |i| (s + i * d) as i64).collect();
            Data::from_i64s(dtype, &v)
        }
    };
    let name = cx.out_name(0);
    Ok(vec![cx.konst(name, Tensor::from_data(vec![data.len()], data))])
}

/// Trilu: `Where(mask, x, 0)` with a constant mask over the last two axes.
pub(super) fn trilu(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    if s.len() < 2 {
        return invalid(format!("input {s:?} must have rank >= 2"));
    }
    let upper = cx.attrs.int_or("upper", 1)? != 0;
    let (n, m) = (s[s.len() - 2], s[s.len() - 1]);
    if let Some(kv) = cx.opt_input(1).filter(|&v| cx.g.const_of(v).is_none()) {
        // A diagonal given at run time: the mask compares the constant `j - i` with it.
        if !cx.ty(kv).dtype.is_int() || cx.ty(kv).numel() != 1 {
            return invalid(format!("k must be one integer, got {}", cx.ty(kv)));
        }
        let diag: Vec<f64> = (0..n as i64).flat_map(|i| (0..m as i64).map(move |j| (j - i) as f64)).collect();
        let diag = konst_as(cx, DType::I64, vec![n, m], &diag);
        let k = tmp(cx, Op::cast(DType::I64), &[kv], "k")?;
        let k = tmp(cx, Op::Reshape { shape: vec![] }, &[k], "k_scalar")?;
        let keep = if upper { CmpOp::GreaterOrEqual } else { CmpOp::LessOrEqual };
        let mask = tmp(cx, Op::Compare(keep), &[diag, k], "mask")?;
        let zero = scalar(cx, cx.ty(x).dtype, 0.0);
        return Ok(vec![cx.emit_out(Op::Where, &[mask, x, zero], 0)?]);
    }
    let k = int_scalar_in(cx, 1, "k")?.unwrap_or(0);
    let mut mask = Vec::with_capacity(n * m);
    for i in 0..n as i64 {
        for j in 0..m as i64 {
            let keep = if upper { j - i >= k } else { j - i <= k };
            mask.push(if keep { 1.0 } else { 0.0 });
        }
    }
    let mask = konst_as(cx, DType::Bool, vec![n, m], &mask);
    let zero = scalar(cx, cx.ty(x).dtype, 0.0);
    Ok(vec![cx.emit_out(Op::Where, &[mask, x, zero], 0)?])
}

/// OneHot: `Where(indices == range(depth), on, off)`, with the range along `axis`.
/// Negative indices count from the end; out-of-range ones give an all-off row.
pub(super) fn one_hot(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let (idx, values) = (cx.input(0)?, cx.input(2)?);
    let depth = cx.opt_const_input(1, "depth")?.ok_or_else(|| OpError::Invalid("input 1 (depth) is missing".into()))?;
    if depth.numel() != 1 {
        return invalid(format!("depth must be a scalar, got {}", depth.ty));
    }
    let depth = depth.to_f64_vec()[0];
    if !(1.0..=(1u64 << 31) as f64).contains(&depth) {
        return invalid(format!("depth {depth} must be positive"));
    }
    let depth = depth as usize;
    if cx.ty(values).numel() != 2 || cx.rank(values) != 1 {
        return invalid(format!("values must be [off, on], got {}", cx.ty(values)));
    }
    let s = cx.shape(idx);
    let axis = cx.attrs.int_or("axis", -1)?;
    let axis = norm_axis(axis, s.len() + 1, "axis")?;
    let mut idx = if cx.ty(idx).dtype == DType::I64 { idx } else { tmp(cx, Op::cast(DType::I64), &[idx], "idx")? };
    let zero = scalar(cx, DType::I64, 0.0);
    let neg = cmp(cx, CmpOp::Less, idx, zero)?;
    let dk = scalar(cx, DType::I64, depth as f64);
    let wrapped = bin(cx, B::Add, idx, dk)?;
    idx = tmp(cx, Op::Where, &[neg, wrapped, idx], "idx")?;
    let mut is = s.clone();
    is.insert(axis, 1);
    idx = reshape(cx, idx, is)?;
    let mut rs = vec![1; s.len() + 1];
    rs[axis] = depth;
    let range: Vec<f64> = (0..depth).map(|i| i as f64).collect();
    let range = konst_as(cx, DType::I64, rs, &range);
    let eq = cmp(cx, CmpOp::Equal, idx, range)?;
    let pick = |cx: &mut NodeCx, i: i64| -> OpResult<ValueId> {
        let v = tmp(cx, Op::Slice { starts: vec![i], steps: vec![1], out_shape: vec![1] }, &[values], "value")?;
        reshape(cx, v, Vec::new())
    };
    let off = pick(cx, 0)?;
    let on = pick(cx, 1)?;
    Ok(vec![cx.emit_out(Op::Where, &[eq, on, off], 0)?])
}

/// EyeLike: a constant with ones on diagonal `k`.
pub(super) fn eye_like(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    cx.outputs_at_most(1, "")?;
    let x = cx.input(0)?;
    let s = cx.shape(x);
    if s.len() != 2 {
        return invalid(format!("input {s:?} must be 2-D"));
    }
    let dtype = match cx.attrs.int("dtype")? {
        None => cx.ty(x).dtype,
        Some(code) => match dtype_of(code as i32) {
            Ok(d) => d,
            Err(name) => return unsupported(format!("dtype {name}")),
        },
    };
    let k = cx.attrs.int_or("k", 0)?;
    checked(s.clone())?;
    let v: Vec<f64> =
        (0..s[0] as i64).flat_map(|i| (0..s[1] as i64).map(move |j| if j - i == k { 1.0 } else { 0.0 })).collect();
    let name = cx.out_name(0);
    Ok(vec![cx.konst(name, tensor_as(dtype, s, &v))])
}
