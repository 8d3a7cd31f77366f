//! Data movement: Transpose, Concat, Slice, Gather, Expand. Each builds an index map (for
//! every output element, the flat index of the input element it copies) and copies bytes,
//! so every dtype is handled by the same code.

use super::{broadcast_map, istrides, strided_map, take};
use crate::{numel, Tensor, TensorType};

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
            assert!(crate::eval::eval(&Op::Gather { axis: 0 }, &[&x, &idx]).is_err());
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
