//! Data movement: Transpose, Concat, Slice, Gather, Expand. Each builds an index map (for
//! every output element, the flat index of the input element it copies) and copies bytes,
//! so every dtype is handled by the same code.

use super::{broadcast_map, istrides, strided_map, take};
use crate::text::{list, AttrList, Attrs};
use crate::{numel, Op, Tensor, TensorType};

/// `out.shape[d] = x.shape[perm[d]]`.
pub(super) fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    let st = istrides(x.shape());
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let strides: Vec<i64> = perm.iter().map(|&p| st[p]).collect();
    take(x, &strided_map(&shape, &strides, 0), shape)
}

/// Joins along `axis`: for every index of the axes before `axis`, each input contributes its
/// contiguous block of `numel(shape[axis..])` elements in turn.
pub(super) fn concat(inputs: &[&Tensor], axis: usize) -> Tensor {
    let first = inputs[0].shape();
    let outer = numel(&first[..axis]);
    let es = inputs[0].dtype().size();
    let mut shape = first.to_vec();
    shape[axis] = inputs.iter().map(|t| t.shape()[axis]).sum();
    let mut bytes = Vec::with_capacity(numel(&shape) * es);
    for o in 0..outer {
        for t in inputs {
            let block = numel(&t.shape()[axis..]) * es;
            bytes.extend_from_slice(&t.data[o * block..(o + 1) * block]);
        }
    }
    Tensor::from_bytes(TensorType::new(inputs[0].dtype(), shape), bytes.into()).expect("length matches shape")
}

/// Output element `idx` is input element `starts + idx * steps` (per axis).
pub(super) fn slice(x: &Tensor, starts: &[i64], steps: &[i64], out_shape: &[usize]) -> Tensor {
    let st = istrides(x.shape());
    let strides: Vec<i64> = st.iter().zip(steps).map(|(s, k)| s * k).collect();
    let base: i64 = st.iter().zip(starts).map(|(s, b)| s * b).sum();
    take(x, &strided_map(out_shape, &strides, base), out_shape.to_vec())
}

/// `out[a.., j.., b..] = x[a.., idx[j..], b..]`; negative indices count from the end; an index
/// outside `[-n, n)` is an error.
pub(super) fn gather(x: &Tensor, indices: &Tensor, axis: usize) -> Result<Tensor, String> {
    let s = x.shape();
    let n = s[axis];
    let (outer, inner) = (numel(&s[..axis]), numel(&s[axis + 1..]));
    let idx: Vec<usize> = indices
        .to_i64_vec()
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + n as i64 } else { i };
            if j < 0 || j >= n as i64 {
                Err(format!("gather index {i} out of range for axis {axis} of extent {n}"))
            } else {
                Ok(j as usize)
            }
        })
        .collect::<Result<_, _>>()?;
    let mut map = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for &j in &idx {
            map.extend((0..inner).map(|i| (o * n + j) * inner + i));
        }
    }
    let mut shape = s[..axis].to_vec();
    shape.extend_from_slice(indices.shape());
    shape.extend_from_slice(&s[axis + 1..]);
    Ok(take(x, &map, shape))
}

/// Numpy broadcast of `x` to `shape` (the inferred result shape).
pub(super) fn expand(x: &Tensor, shape: &[usize]) -> Tensor {
    take(x, &broadcast_map(shape, x.shape()), shape.to_vec())
}

/// The type rule of the data movement ops: their output types from their input types and
/// attributes (see [`crate::infer::infer`]).
pub(crate) fn infer(op: &crate::Op, inputs: &[&crate::TensorType]) -> crate::infer::InferResult {
    use crate::infer::{arity, broadcast_shapes, same_dtype};
    use crate::Op::*;
    use crate::TensorType;
    use crate::{numel, DType, Shape};
    let one = |t: TensorType| Ok(vec![t]);
    match op {
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
        Merge => {
            arity(op, inputs, 2, usize::MAX)?;
            let key = inputs[0];
            if key.dtype != DType::I64 || key.numel() != 1 {
                return Err(format!("the merge key must be one i64, got {key}"));
            }
            let cases = &inputs[1..];
            let d = same_dtype(cases)?;
            let r = cases[0].rank();
            if let Some(t) = cases.iter().find(|t| t.rank() != r) {
                return Err(format!("merged cases of ranks {r} and {}", t.rank()));
            }
            let shape = (0..r).map(|a| cases.iter().map(|t| t.shape[a]).max().unwrap_or(0)).collect::<Shape>();
            one(TensorType::new(d, shape))
        }
        LoopBegin => {
            arity(op, inputs, 2, usize::MAX)?;
            let (trip, cond) = (inputs[0], inputs[1]);
            if !trip.dtype.is_int() || trip.numel() != 1 || cond.dtype != DType::Bool || cond.numel() != 1 {
                return Err(format!("a loop takes one integer and one bool, got {trip} and {cond}"));
            }
            let mut out = vec![TensorType::new(DType::I64, vec![])];
            out.extend(inputs[2..].iter().map(|t| (*t).clone()));
            Ok(out)
        }
        LoopEnd { states, rows } => {
            arity(op, inputs, 2 + states, usize::MAX)?;
            let (counter, cond) = (inputs[0], inputs[1]);
            if counter.dtype != DType::I64 || counter.numel() != 1 || cond.dtype != DType::Bool || cond.numel() != 1 {
                return Err(format!("a loop's end takes its iteration number and one bool, got {counter} and {cond}"));
            }
            let mut out: Vec<TensorType> = inputs[2..2 + states].iter().map(|t| (*t).clone()).collect();
            for t in &inputs[2 + states..] {
                let mut s: Shape = vec![*rows];
                s.extend_from_slice(&t.shape);
                out.push(TensorType::new(t.dtype, s));
            }
            out.push(TensorType::new(DType::I64, vec![]));
            Ok(out)
        }
        Assert { .. } => {
            arity(op, inputs, 2, 2)?;
            if inputs[1].dtype != DType::Bool {
                return Err(format!("an assert's condition must be bool, got {}", inputs[1]));
            }
            one(inputs[0].clone())
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
        Expand { shape } => {
            arity(op, inputs, 1, 1)?;
            let s = broadcast_shapes(&[&inputs[0].shape, shape])?;
            one(TensorType::new(inputs[0].dtype, s))
        }
        _ => unreachable!("{} is not a data movement op", op.name()),
    }
}

// ---------------------------------------------------------------------------------------
// Dispatch: the reference evaluation and text form of the shape ops.

/// Evaluates a shape op (its inputs already checked by [`infer`], whose result is `want`).
pub(super) fn eval(op: &Op, inputs: &[&Tensor], want: &TensorType) -> Result<Tensor, String> {
    Ok(match op {
        Op::Reshape { .. } => inputs[0].reshaped(want.shape.clone()),
        Op::BitCast { .. } => Tensor { ty: want.clone(), data: inputs[0].data.clone() },
        Op::Transpose { perm } => transpose(inputs[0], perm),
        Op::Concat { axis } => concat(inputs, *axis),
        Op::Slice { starts, steps, out_shape } => slice(inputs[0], starts, steps, out_shape),
        Op::Gather { axis } => gather(inputs[0], inputs[1], *axis)?,
        Op::Expand { .. } => expand(inputs[0], &want.shape),
        Op::Identity => inputs[0].clone(),
        Op::Merge => {
            let k = match inputs[0].data() {
                crate::Data::I64(v) => v[0],
                _ => return Err("the merge key must be one i64".into()),
            };
            let case = usize::try_from(k).ok().and_then(|k| inputs.get(1 + k));
            let Some(&t) = case else { return Err(format!("merge key {k}: no such case")) };
            if t.ty != *want {
                return Err(format!("merge: the case taken is {}, the merged value {want}", t.ty));
            }
            t.clone()
        }
        Op::LoopBegin | Op::LoopEnd { .. } => return Err("a loop is evaluated whole, not node by node".into()),
        Op::Assert { message } => match inputs[1].data() {
            crate::Data::Bool(v) if v.iter().all(|&b| b) => inputs[0].clone(),
            _ => return Err(message.clone()),
        },
        _ => return Err(super::not_in_family(op)),
    })
}

/// The attributes of a shape op, in print order.
pub(super) fn attrs(op: &Op) -> AttrList {
    match op {
        Op::BitCast { to } => vec![("to", to.name().to_string())],
        Op::Concat { axis } | Op::Gather { axis } => vec![("axis", axis.to_string())],
        Op::Reshape { shape } | Op::Expand { shape } => vec![("shape", list(shape))],
        Op::Transpose { perm } => vec![("perm", list(perm))],
        Op::Assert { message } => vec![("message", crate::text::quote(message))],
        Op::LoopEnd { states, rows } => vec![("states", states.to_string()), ("rows", rows.to_string())],
        Op::Slice { starts, steps, out_shape } => {
            vec![("starts", list(starts)), ("steps", list(steps)), ("out_shape", list(out_shape))]
        }
        _ => vec![],
    }
}

/// Builds the shape op printed as `name` (`None`: not a shape op).
pub(super) fn parse(name: &str, a: &mut Attrs) -> Result<Option<Op>, String> {
    Ok(Some(match name {
        "bitcast" => Op::BitCast { to: a.dtype("to")? },
        "reshape" => Op::Reshape { shape: a.list("shape")? },
        "transpose" => Op::Transpose { perm: a.list("perm")? },
        "concat" => Op::Concat { axis: a.word("axis")? },
        "slice" => Op::Slice { starts: a.list("starts")?, steps: a.list("steps")?, out_shape: a.list("out_shape")? },
        "gather" => Op::Gather { axis: a.word("axis")? },
        "expand" => Op::Expand { shape: a.list("shape")? },
        "identity" => Op::Identity,
        "merge" => Op::Merge,
        "loop_begin" => Op::LoopBegin,
        "loop_end" => Op::LoopEnd { states: a.word("states")?, rows: a.word("rows")? },
        "assert" => Op::Assert { message: a.string("message")? },
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::run;
    use crate::{Data, Op, Tensor};

    fn iota(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::i64(shape.to_vec(), (0..n as i64).collect())
    }

    #[test]
    fn transpose_permutes_axes() {
        let x = Tensor::f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let y = run(Op::Transpose { perm: vec![1, 0] }, &[&x]);
        assert_eq!((y.shape(), y.data()), (&[3, 2][..], Data::F32(vec![1., 4., 2., 5., 3., 6.])));
        // out[k][i][j] = x[i][j][k] = 12i + 4j + k
        let y = run(Op::Transpose { perm: vec![2, 0, 1] }, &[&iota(&[2, 3, 4])]);
        assert_eq!(y.shape(), &[4, 2, 3]);
        let Data::I64(v) = y.data() else { unreachable!() };
        assert_eq!(&v[..12], &[0, 4, 8, 12, 16, 20, 1, 5, 9, 13, 17, 21]);
        assert_eq!(&v[18..], &[3, 7, 11, 15, 19, 23]);
        let b = Tensor::bool(vec![1, 2], vec![true, false]);
        assert_eq!(run(Op::Transpose { perm: vec![1, 0] }, &[&b]).data(), Data::Bool(vec![true, false]));
    }

    #[test]
    fn concat_along_inner_and_outer_axes() {
        let a = Tensor::f32(vec![2, 1], vec![1., 2.]);
        let b = Tensor::f32(vec![2, 2], vec![3., 4., 5., 6.]);
        let y = run(Op::Concat { axis: 1 }, &[&a, &b]);
        assert_eq!((y.shape(), y.data()), (&[2, 3][..], Data::F32(vec![1., 3., 4., 2., 5., 6.])));
        let y = run(Op::Concat { axis: 0 }, &[&iota(&[1, 2]), &iota(&[2, 2])]);
        assert_eq!((y.shape(), y.data()), (&[3, 2][..], Data::I64(vec![0, 1, 0, 1, 2, 3])));
    }

    #[test]
    fn slice_with_positive_and_negative_steps() {
        let x = iota(&[2, 4]); // [[0,1,2,3],[4,5,6,7]]
        let op = |starts: Vec<i64>, steps: Vec<i64>, out_shape: Vec<usize>| Op::Slice { starts, steps, out_shape };
        let y = run(op(vec![1, 3], vec![-1, -2], vec![2, 2]), &[&x]);
        assert_eq!(y.data(), Data::I64(vec![7, 5, 3, 1]));
        let y = run(op(vec![0, 1], vec![1, 2], vec![2, 2]), &[&x]);
        assert_eq!(y.data(), Data::I64(vec![1, 3, 5, 7]));
        let y = run(op(vec![1, 0], vec![1, 1], vec![1, 0]), &[&x]);
        assert_eq!((y.shape(), y.numel()), (&[1, 0][..], 0));
    }

    #[test]
    fn gather_wraps_negative_indices_and_rejects_out_of_range() {
        let x = Tensor::f32(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]);
        let idx = Tensor::i64(vec![2], vec![-1, 0]);
        let y = run(Op::Gather { axis: 0 }, &[&x, &idx]);
        assert_eq!((y.shape(), y.data()), (&[2, 2][..], Data::F32(vec![5., 6., 1., 2.])));
        let idx = Tensor::i32(vec![2, 2], vec![0, -1, 1, 0]);
        let y = run(Op::Gather { axis: 1 }, &[&x, &idx]);
        assert_eq!(y.shape(), &[3, 2, 2]);
        assert_eq!(y.data(), Data::F32(vec![1., 2., 2., 1., 3., 4., 4., 3., 5., 6., 6., 5.]));
        let scalar = Tensor::i64(vec![], vec![1]);
        let y = run(Op::Gather { axis: 0 }, &[&x, &scalar]);
        assert_eq!((y.shape(), y.data()), (&[2][..], Data::F32(vec![3., 4.])));
        for bad in [3, -4] {
            let idx = Tensor::i64(vec![1], vec![bad]);
            assert!(crate::ops::eval(&Op::Gather { axis: 0 }, &[&x, &idx]).is_err());
        }
    }

    #[test]
    fn expand_reshape_identity() {
        let x = Tensor::i32(vec![3, 1], vec![1, 2, 3]);
        let y = run(Op::Expand { shape: vec![2, 1, 2] }, &[&x]);
        assert_eq!(y.shape(), &[2, 3, 2]);
        assert_eq!(y.data(), Data::I32(vec![1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3]));
        let y = run(Op::Reshape { shape: vec![1, 3] }, &[&x]);
        assert_eq!((y.shape(), y.data()), (&[1, 3][..], x.data()));
        assert_eq!(run(Op::Identity, &[&x]), x);
    }
}
