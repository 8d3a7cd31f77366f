//! Reductions over a sorted set of axes. Sums, means and f32 products accumulate in f64;
//! integer sums and products wrap. Max/Min propagate NaN (numpy `maximum.reduce`). An empty
//! reduction gives the identity of the combining operation (Max: lowest value; Mean: NaN).

use super::elementwise::{fmax, fmin};
use super::{istrides, strided_map};
use crate::op::ReduceOp;
use crate::text::{list, AttrList, Attrs};
use crate::{numel, Data, Op, Tensor, TensorType};

/// Folds `v` into `nout` accumulators: element `i` goes to accumulator `omap[i]`.
fn fold<T: Copy, A: Copy>(v: &[T], omap: &[usize], nout: usize, init: A, f: impl Fn(A, T) -> A) -> Vec<A> {
    let mut acc = vec![init; nout];
    for (&e, &o) in v.iter().zip(omap) {
        acc[o] = f(acc[o], e);
    }
    acc
}

/// Integer reductions in wrapping i64 (i32 results truncate, matching wrapping i32).
fn int_reduce(op: ReduceOp, v: impl Iterator<Item = i64>, omap: &[usize], nout: usize, lo: i64, hi: i64) -> Vec<i64> {
    let v: Vec<i64> = v.collect();
    match op {
        ReduceOp::Sum => fold(&v, omap, nout, 0, i64::wrapping_add),
        ReduceOp::Prod => fold(&v, omap, nout, 1, i64::wrapping_mul),
        ReduceOp::Max => fold(&v, omap, nout, lo, i64::max),
        ReduceOp::Min => fold(&v, omap, nout, hi, i64::min),
        ReduceOp::Mean => unreachable!("mean needs a float input (checked by infer)"),
    }
}

pub(super) fn reduce(op: ReduceOp, x: &Tensor, axes: &[usize], keepdims: bool) -> Result<Tensor, String> {
    if axes.is_empty() {
        return Ok(x.clone()); // an empty axis list reduces nothing
    }
    let shape = x.shape();
    let kept: Vec<usize> = shape.iter().enumerate().map(|(d, &n)| if axes.contains(&d) { 1 } else { n }).collect();
    let out_shape: Vec<usize> = if keepdims {
        kept.clone()
    } else {
        shape.iter().enumerate().filter(|(d, _)| !axes.contains(d)).map(|(_, &n)| n).collect()
    };
    // For every input element (row-major), the flat index of the output it reduces into.
    let mut ostr = istrides(&kept);
    for &a in axes {
        ostr[a] = 0;
    }
    let omap = strided_map(shape, &ostr, 0);
    let nout = numel(&kept);
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    let data = match x.data() {
        Data::F32(v) => Data::F32(match op {
            ReduceOp::Sum => {
                fold(&v, &omap, nout, 0.0f64, |a, e| a + f64::from(e)).into_iter().map(|a| a as f32).collect()
            }
            ReduceOp::Mean => fold(&v, &omap, nout, 0.0f64, |a, e| a + f64::from(e))
                .into_iter()
                .map(|a| (a / count as f64) as f32)
                .collect(),
            ReduceOp::Prod => {
                fold(&v, &omap, nout, 1.0f64, |a, e| a * f64::from(e)).into_iter().map(|a| a as f32).collect()
            }
            ReduceOp::Max => fold(&v, &omap, nout, f32::NEG_INFINITY, fmax),
            ReduceOp::Min => fold(&v, &omap, nout, f32::INFINITY, fmin),
        }),
        Data::I32(v) => {
            let r = int_reduce(op, v.into_iter().map(i64::from), &omap, nout, i32::MIN.into(), i32::MAX.into());
            Data::I32(r.into_iter().map(|a| a as i32).collect())
        }
        Data::I64(v) => Data::I64(int_reduce(op, v.into_iter(), &omap, nout, i64::MIN, i64::MAX)),
        Data::F64(v) => Data::F64(match op {
            ReduceOp::Sum => fold(&v, &omap, nout, 0.0f64, |a, e| a + e),
            ReduceOp::Mean => {
                fold(&v, &omap, nout, 0.0f64, |a, e| a + e).into_iter().map(|a| a / count as f64).collect()
            }
            ReduceOp::Prod => fold(&v, &omap, nout, 1.0f64, |a, e| a * e),
            ReduceOp::Max => fold(&v, &omap, nout, f64::NEG_INFINITY, fmax),
            ReduceOp::Min => fold(&v, &omap, nout, f64::INFINITY, fmin),
        }),
        Data::Bool(v) => Data::Bool(match op {
            ReduceOp::Max => fold(&v, &omap, nout, false, |a, e| a | e),
            ReduceOp::Min => fold(&v, &omap, nout, true, |a, e| a & e),
            _ => return Err(format!("reduce {op:?} is not defined on bool tensors")),
        }),
        d => return Err(super::elementwise::storage_only(Op::Reduce { op, axes: axes.to_vec(), keepdims }, d.dtype())),
    };
    Ok(Tensor::from_data(out_shape, data))
}

/// The type rule of the reduction ops: their output types from their input types and
/// attributes (see [`crate::infer::infer`]).
pub(crate) fn infer(op: &crate::Op, inputs: &[&crate::TensorType]) -> crate::infer::InferResult {
    use crate::infer::{arity, want_float};
    use crate::DType;
    use crate::Op::*;
    use crate::TensorType;
    let one = |t: TensorType| Ok(vec![t]);
    match op {
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
        _ => unreachable!("{} is not a reduction op", op.name()),
    }
}

// ---------------------------------------------------------------------------------------
// Dispatch: the reference evaluation and text form of the reductions.

/// Evaluates a reduction (its inputs already checked by [`infer`]).
pub(super) fn eval(op: &Op, inputs: &[&Tensor], _want: &TensorType) -> Result<Tensor, String> {
    match op {
        Op::Reduce { op: r, axes, keepdims } => reduce(*r, inputs[0], axes, *keepdims),
        _ => Err(super::not_in_family(op)),
    }
}

/// The attributes of a reduction, in print order.
pub(super) fn attrs(op: &Op) -> AttrList {
    match op {
        Op::Reduce { axes, keepdims, .. } => vec![("axes", list(axes)), ("keepdims", keepdims.to_string())],
        _ => vec![],
    }
}

/// Builds the reduction printed as `name` (`None`: not a reduction).
pub(super) fn parse(name: &str, a: &mut Attrs) -> Result<Option<Op>, String> {
    let op = match name {
        "reduce_sum" => ReduceOp::Sum,
        "reduce_mean" => ReduceOp::Mean,
        "reduce_max" => ReduceOp::Max,
        "reduce_min" => ReduceOp::Min,
        "reduce_prod" => ReduceOp::Prod,
        _ => return Ok(None),
    };
    Ok(Some(Op::Reduce { op, axes: a.list("axes")?, keepdims: a.word("keepdims")? }))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_f32, run};
    use crate::op::ReduceOp;
    use crate::{Data, Op, Tensor};

    fn red(op: ReduceOp, axes: &[usize], keepdims: bool, x: &Tensor) -> Tensor {
        run(Op::Reduce { op, axes: axes.to_vec(), keepdims }, &[x])
    }

    #[test]
    fn reductions_over_axes_with_and_without_keepdims() {
        let x = Tensor::f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        assert_f32(&red(ReduceOp::Sum, &[1], true, &x), &[2, 1], &[6., 15.], 0.0);
        assert_f32(&red(ReduceOp::Sum, &[0], false, &x), &[3], &[5., 7., 9.], 0.0);
        assert_f32(&red(ReduceOp::Sum, &[0, 1], false, &x), &[], &[21.], 0.0);
        assert_f32(&red(ReduceOp::Sum, &[0, 1], true, &x), &[1, 1], &[21.], 0.0);
        assert_f32(&red(ReduceOp::Mean, &[1], false, &x), &[2], &[2., 5.], 0.0);
        assert_f32(&red(ReduceOp::Max, &[0], false, &x), &[3], &[4., 5., 6.], 0.0);
        assert_f32(&red(ReduceOp::Min, &[1], false, &x), &[2], &[1., 4.], 0.0);
        assert_f32(&red(ReduceOp::Prod, &[1], false, &x), &[2], &[6., 120.], 0.0);
        // Non-adjacent axes of a [2,2,2] tensor holding 0..8: j=0 -> 0+1+4+5, j=1 -> 2+3+6+7.
        let y = Tensor::f32(vec![2, 2, 2], (0..8).map(|v| v as f32).collect());
        assert_f32(&red(ReduceOp::Sum, &[0, 2], false, &y), &[2], &[10., 18.], 0.0);
    }

    #[test]
    fn empty_axes_is_identity() {
        let b = Tensor::bool(vec![2], vec![true, false]);
        assert_eq!(red(ReduceOp::Max, &[], false, &b), b);
        let x = Tensor::f32(vec![2], vec![1.5, f32::NAN]);
        assert_f32(&red(ReduceOp::Mean, &[], true, &x), &[2], &[1.5, f32::NAN], 0.0);
    }

    #[test]
    fn integer_bool_nan_and_empty_reductions() {
        let x = Tensor::i32(vec![2], vec![i32::MAX, 1]);
        assert_eq!(red(ReduceOp::Sum, &[0], false, &x).data(), Data::I32(vec![i32::MIN]));
        let y = Tensor::i64(vec![2, 2], vec![-3, 7, 2, -8]);
        assert_eq!(red(ReduceOp::Max, &[1], false, &y).data(), Data::I64(vec![7, 2]));
        assert_eq!(red(ReduceOp::Prod, &[0], true, &y).data(), Data::I64(vec![-6, -56]));
        let b = Tensor::bool(vec![2, 2], vec![true, false, true, true]);
        assert_eq!(red(ReduceOp::Max, &[1], false, &b).data(), Data::Bool(vec![true, true]));
        assert_eq!(red(ReduceOp::Min, &[1], false, &b).data(), Data::Bool(vec![false, true]));
        assert!(crate::ops::eval(&Op::Reduce { op: ReduceOp::Sum, axes: vec![0], keepdims: false }, &[&b]).is_err());
        let n = Tensor::f32(vec![3], vec![1., f32::NAN, 2.]);
        assert_f32(&red(ReduceOp::Max, &[0], false, &n), &[], &[f32::NAN], 0.0);
        let e = Tensor::f32(vec![0, 2], vec![]);
        assert_f32(&red(ReduceOp::Sum, &[0], false, &e), &[2], &[0., 0.], 0.0);
        assert_f32(&red(ReduceOp::Max, &[0], false, &e), &[2], &[f32::NEG_INFINITY; 2], 0.0);
    }
}
