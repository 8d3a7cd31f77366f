//! MatMul and Gemm. Dot products accumulate in f64 for f32 tensors (one rounding at the
//! end), in wrapping i64 for integers.

use super::broadcast_map;
use crate::infer::broadcast_shapes;
use crate::text::{float, AttrList, Attrs};
use crate::{numel, Data, Op, Tensor, TensorType};

/// A batch of `nb` matrix products of shape `m×n` with inner extent `k`, row-major over
/// `(batch, i, j)`. `ia(p, i, l)` and `ib(p, l, j)` give flat element indices into `x`, `y`;
/// `step` accumulates one product, `fin(acc, flat_out_index)` produces the element.
#[allow(clippy::too_many_arguments)]
fn contract<T: Copy, A: Copy>(
    (nb, m, n, k): (usize, usize, usize, usize),
    x: &[T],
    y: &[T],
    ia: impl Fn(usize, usize, usize) -> usize,
    ib: impl Fn(usize, usize, usize) -> usize,
    zero: A,
    step: impl Fn(A, T, T) -> A,
    fin: impl Fn(A, usize) -> T,
) -> Vec<T> {
    let mut out = Vec::with_capacity(nb * m * n);
    for p in 0..nb {
        for i in 0..m {
            for j in 0..n {
                let mut acc = zero;
                for l in 0..k {
                    acc = step(acc, x[ia(p, i, l)], y[ib(p, l, j)]);
                }
                out.push(fin(acc, out.len()));
            }
        }
    }
    out
}

fn f64_step(acc: f64, a: f32, b: f32) -> f64 {
    acc + f64::from(a) * f64::from(b)
}

/// Numpy `matmul`: a 1-D left operand is a row vector and a 1-D right operand a column
/// vector (the promoted dimension is dropped from the result); leading dimensions broadcast.
pub(super) fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let (sa, sb) = (a.shape(), b.shape());
    let a2: Vec<usize> = if sa.len() == 1 { vec![1, sa[0]] } else { sa.to_vec() };
    let b2: Vec<usize> = if sb.len() == 1 { vec![sb[0], 1] } else { sb.to_vec() };
    let (ra, rb) = (a2.len(), b2.len());
    let (m, k, n) = (a2[ra - 2], a2[ra - 1], b2[rb - 1]);
    let batch = broadcast_shapes(&[&a2[..ra - 2], &b2[..rb - 2]])?;
    // For each batch element, which matrix of `a` / `b` it uses.
    let (ba, bb) = (broadcast_map(&batch, &a2[..ra - 2]), broadcast_map(&batch, &b2[..rb - 2]));
    let ia = |p: usize, i: usize, l: usize| ba[p] * m * k + i * k + l;
    let ib = |p: usize, l: usize, j: usize| bb[p] * k * n + l * n + j;
    let dims = (numel(&batch), m, n, k);
    let data = match (a.data(), b.data()) {
        (Data::F32(x), Data::F32(y)) => Data::F32(contract(dims, &x, &y, ia, ib, 0.0, f64_step, |s, _| s as f32)),
        (Data::F64(x), Data::F64(y)) => Data::F64(contract(dims, &x, &y, ia, ib, 0.0, |s, p, q| s + p * q, |s, _| s)),
        (Data::I32(x), Data::I32(y)) => Data::I32(contract(
            dims,
            &x,
            &y,
            ia,
            ib,
            0i64,
            |s, p, q| s.wrapping_add(i64::from(p) * i64::from(q)),
            |s, _| s as i32,
        )),
        (Data::I64(x), Data::I64(y)) => {
            Data::I64(contract(dims, &x, &y, ia, ib, 0i64, |s, p, q| s.wrapping_add(p.wrapping_mul(q)), |s, _| s))
        }
        // numpy: logical OR of ANDs.
        (Data::Bool(x), Data::Bool(y)) => {
            Data::Bool(contract(dims, &x, &y, ia, ib, false, |s, p, q| s | (p & q), |s, _| s))
        }
        (x, y) => return Err(format!("matmul operand dtypes differ: {} and {}", x.dtype(), y.dtype())),
    };
    let mut shape = batch;
    if sa.len() > 1 {
        shape.push(m);
    }
    if sb.len() > 1 {
        shape.push(n);
    }
    Ok(Tensor::from_data(shape, data))
}

/// `alpha * op(A) @ op(B) + beta * C`, C broadcast to `[M, N]`; C is ignored when `beta == 0`
/// (as in ONNX's reference). f32: the whole expression is computed in f64 and rounded once.
/// Integers: exact wrapping arithmetic when alpha and beta are integral, otherwise computed in
/// f64 and truncated toward zero (ONNX's reference: float product, then `astype`).
pub(super) fn gemm(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
) -> Result<Tensor, String> {
    let (sa, sb) = (a.shape(), b.shape());
    let (m, k) = if trans_a { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
    let n = if trans_b { sb[0] } else { sb[1] };
    let ia = |_: usize, i: usize, l: usize| {
        if trans_a {
            l * sa[1] + i
        } else {
            i * sa[1] + l
        }
    };
    let ib = |_: usize, l: usize, j: usize| {
        if trans_b {
            j * sb[1] + l
        } else {
            l * sb[1] + j
        }
    };
    let dims = (1, m, n, k);
    let c = c.filter(|_| beta != 0.0);
    let cmap = c.map(|c| broadcast_map(&[m, n], c.shape()));
    let (cf, ci) = c.map(|c| (c.to_f64_vec(), c.to_i64_vec())).unwrap_or_default();
    let (alpha, beta) = (f64::from(alpha), f64::from(beta));
    // `beta * C` at flat output index `o`, in f64 and in wrapping i64.
    let c_f64 = |o: usize| cmap.as_ref().map_or(0.0, |cm| beta * cf[cm[o]]);
    let c_i64 = |o: usize| cmap.as_ref().map_or(0, |cm| (beta as i64).wrapping_mul(ci[cm[o]]));
    let integral = alpha.fract() == 0.0 && beta.fract() == 0.0 && alpha.abs() < 9e18 && beta.abs() < 9e18;
    let i64_step = |s: i64, p: i64, q: i64| s.wrapping_add(p.wrapping_mul(q));
    let data = match (a.data(), b.data()) {
        (Data::F32(x), Data::F32(y)) => {
            Data::F32(contract(dims, &x, &y, ia, ib, 0.0, f64_step, |s, o| (alpha * s + c_f64(o)) as f32))
        }
        (Data::I32(x), Data::I32(y)) => {
            let step = |s, p: i32, q: i32| i64_step(s, p.into(), q.into());
            Data::I32(contract(dims, &x, &y, ia, ib, 0i64, step, |s, o| {
                let dot = i64::from(s as i32); // numpy's int32 dot wraps in int32
                if integral {
                    (alpha as i64).wrapping_mul(dot).wrapping_add(c_i64(o)) as i32
                } else {
                    (alpha * dot as f64 + c_f64(o)) as i32
                }
            }))
        }
        (Data::I64(x), Data::I64(y)) => Data::I64(contract(dims, &x, &y, ia, ib, 0i64, i64_step, |s, o| {
            if integral {
                (alpha as i64).wrapping_mul(s).wrapping_add(c_i64(o))
            } else {
                (alpha * s as f64 + c_f64(o)) as i64
            }
        })),
        (x, _) => return Err(format!("gemm is not defined on {} tensors", x.dtype())),
    };
    Ok(Tensor::from_data(vec![m, n], data))
}

/// The type rule of the product ops: their output types from their input types and
/// attributes (see [`crate::infer::infer`]).
pub(crate) fn infer(op: &crate::Op, inputs: &[&crate::TensorType]) -> crate::infer::InferResult {
    use crate::infer::{arity, broadcast_shapes, same_dtype};
    use crate::Op::*;
    use crate::TensorType;
    use crate::{DType, Shape};
    let one = |t: TensorType| Ok(vec![t]);
    match op {
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
        _ => unreachable!("{} is not a product op", op.name()),
    }
}

// ---------------------------------------------------------------------------------------
// Dispatch: the reference evaluation and text form of MatMul and Gemm.

/// Evaluates MatMul or Gemm (its inputs already checked by [`infer`]).
pub(super) fn eval(op: &Op, inputs: &[&Tensor], _want: &TensorType) -> Result<Tensor, String> {
    match op {
        Op::MatMul => matmul(inputs[0], inputs[1]),
        Op::Gemm { alpha, beta, trans_a, trans_b } => {
            gemm(inputs[0], inputs[1], inputs.get(2).copied(), *alpha, *beta, *trans_a, *trans_b)
        }
        _ => Err(super::not_in_family(op)),
    }
}

/// The attributes of MatMul or Gemm, in print order.
pub(super) fn attrs(op: &Op) -> AttrList {
    match op {
        Op::Gemm { alpha, beta, trans_a, trans_b } => vec![
            ("alpha", float(*alpha)),
            ("beta", float(*beta)),
            ("trans_a", trans_a.to_string()),
            ("trans_b", trans_b.to_string()),
        ],
        _ => vec![],
    }
}

/// Builds `matmul` or `gemm` (`None`: another op).
pub(super) fn parse(name: &str, a: &mut Attrs) -> Result<Option<Op>, String> {
    Ok(Some(match name {
        "matmul" => Op::MatMul,
        "gemm" => Op::Gemm {
            alpha: a.word("alpha")?,
            beta: a.word("beta")?,
            trans_a: a.word("trans_a")?,
            trans_b: a.word("trans_b")?,
        },
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_f32, run};
    use crate::{Data, Op, Tensor};

    fn a23() -> Tensor {
        Tensor::f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.])
    }
    fn b32() -> Tensor {
        Tensor::f32(vec![3, 2], vec![7., 8., 9., 10., 11., 12.])
    }
    // a23 @ b32 = [[1*7+2*9+3*11, 1*8+2*10+3*12], [4*7+5*9+6*11, 4*8+5*10+6*12]]
    const AB: [f32; 4] = [58., 64., 139., 154.];

    #[test]
    fn matmul_2d_and_1d_promotion() {
        assert_f32(&run(Op::MatMul, &[&a23(), &b32()]), &[2, 2], &AB, 0.0);
        let v = Tensor::f32(vec![3], vec![1., 2., 3.]);
        assert_f32(&run(Op::MatMul, &[&v, &b32()]), &[2], &[58., 64.], 0.0);
        let ones = Tensor::f32(vec![3], vec![1., 1., 1.]);
        assert_f32(&run(Op::MatMul, &[&a23(), &ones]), &[2], &[6., 15.], 0.0);
        assert_f32(&run(Op::MatMul, &[&v, &v]), &[], &[14.], 0.0);
    }

    #[test]
    fn matmul_broadcasts_batch_dims() {
        // a: batch [2,1] of 1x2 matrices [1,2] and [3,4]; b: batch [3] of 2x1 columns.
        let a = Tensor::f32(vec![2, 1, 1, 2], vec![1., 2., 3., 4.]);
        let b = Tensor::f32(vec![3, 2, 1], vec![1., 0., 0., 1., 1., 1.]);
        assert_f32(&run(Op::MatMul, &[&a, &b]), &[2, 3, 1, 1], &[1., 2., 3., 3., 4., 7.], 0.0);
        // A 2-D right operand is shared by every batch element.
        let a3 = Tensor::f32(vec![2, 1, 3], vec![1., 2., 3., 0., 0., 1.]);
        assert_f32(&run(Op::MatMul, &[&a3, &b32()]), &[2, 1, 2], &[58., 64., 11., 12.], 0.0);
    }

    #[test]
    fn matmul_integer_wraps_and_bool_is_logical() {
        let x = Tensor::i32(vec![1], vec![65536]);
        assert_eq!(run(Op::MatMul, &[&x, &x]).data(), Data::I32(vec![0])); // 2^32 wraps
        let a = Tensor::i64(vec![1, 2], vec![3, -4]);
        let b = Tensor::i64(vec![2, 1], vec![5, 6]);
        assert_eq!(run(Op::MatMul, &[&a, &b]).data(), Data::I64(vec![-9]));
        let p = Tensor::bool(vec![2], vec![true, false]);
        let q = Tensor::bool(vec![2, 2], vec![false, true, true, true]);
        assert_eq!(run(Op::MatMul, &[&p, &q]).data(), Data::Bool(vec![false, true]));
    }

    #[test]
    fn gemm_transposes_scales_and_broadcasts_c() {
        let bt = Tensor::f32(vec![2, 3], vec![7., 9., 11., 8., 10., 12.]); // b32 transposed
        let c = Tensor::f32(vec![2], vec![1., -1.]);
        let op = Op::Gemm { alpha: 0.5, beta: 2.0, trans_a: false, trans_b: true };
        // 0.5 * AB + 2 * [[1, -1], [1, -1]]
        assert_f32(&run(op, &[&a23(), &bt, &c]), &[2, 2], &[31., 30., 71.5, 75.], 0.0);
        let at = Tensor::f32(vec![3, 2], vec![1., 4., 2., 5., 3., 6.]);
        let op = Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: true, trans_b: false };
        assert_f32(&run(op.clone(), &[&at, &b32()]), &[2, 2], &AB, 0.0);
        let c_col = Tensor::f32(vec![2, 1], vec![100., 200.]);
        assert_f32(&run(op, &[&at, &b32(), &c_col]), &[2, 2], &[158., 164., 339., 354.], 0.0);
        // beta = 0 ignores C entirely, even NaN.
        let nan = Tensor::f32(vec![], vec![f32::NAN]);
        let op = Op::Gemm { alpha: 1.0, beta: 0.0, trans_a: false, trans_b: false };
        assert_f32(&run(op, &[&a23(), &b32(), &nan]), &[2, 2], &AB, 0.0);
    }

    #[test]
    fn gemm_on_integers() {
        let a = Tensor::i64(vec![1, 2], vec![1, 2]);
        let b = Tensor::i64(vec![2, 1], vec![3, 4]);
        let c = Tensor::i64(vec![], vec![3]);
        let op = Op::Gemm { alpha: 2.0, beta: 1.0, trans_a: false, trans_b: false };
        assert_eq!(run(op, &[&a, &b, &c]).data(), Data::I64(vec![25])); // 2 * 11 + 3
                                                                        // Non-integral alpha: computed as float, truncated toward zero.
        let three = Tensor::i32(vec![1, 1], vec![3]);
        let c = Tensor::i32(vec![1], vec![-10]);
        let op = Op::Gemm { alpha: 0.5, beta: 1.0, trans_a: false, trans_b: false };
        assert_eq!(run(op.clone(), &[&three, &three]).data(), Data::I32(vec![4])); // 4.5
        assert_eq!(run(op, &[&three, &three, &c]).data(), Data::I32(vec![-5])); // -5.5
        let t = Tensor::bool(vec![1, 1], vec![true]);
        let op = Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: false };
        assert!(crate::ops::eval(&op, &[&t, &t]).is_err());
    }
}
