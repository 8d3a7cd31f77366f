//! The HIR ops, one file per [`Family`]: each holds its ops' type rule (`infer`), reference
//! evaluation (`eval`) and text form (`attrs`, `parse`); this module dispatches to them.
//! Adding an op means adding its variant to [`Op`] and arms to its family's four functions.
//!
//! Reference evaluation: every op over whole tensors, in plain Rust.
//!
//! This is the oracle that generated kernels are tested against and what constant folding
//! runs, so it favours obvious correctness over speed, and it shares no code with kernel
//! generation or LIR. Semantics are ONNX's (opset 13+ forms) with numpy broadcasting:
//!
//! * f32 arithmetic is done in f32, except that sums, means, products and dot products
//!   accumulate in f64 and round to f32 once;
//! * integer arithmetic is wrapping (computed in i64, truncated for i32, which gives the same
//!   bits as wrapping i32 arithmetic); integer division truncates toward zero; integer
//!   division or remainder by zero is an error;
//! * an op or dtype combination without a defined meaning is an `Err`, never a panic.
//!
//! [`eval`] first runs the op's typing rule ([`crate::infer::infer`]) on the inputs, so arity,
//! dtypes and shapes are checked once, and it checks that each result has the inferred type.
//!
//! The shape ops are written as *index maps*: for every output element, the flat index of the
//! input element it copies. `strided_map` builds them from (possibly negative or zero)
//! strides, which covers broadcasting, transposes and strided slices.

pub(crate) mod elementwise;
pub(crate) mod index;
pub(crate) mod linalg;
pub(crate) mod nn;
pub(crate) mod reduce;
pub(crate) mod sample;
pub(crate) mod shape;

use crate::infer::infer;
use crate::text::{quote, AttrList, Attrs};
use crate::{numel, strides_of, Data, Family, Op, Tensor, TensorType};

/// Evaluates `op` on `inputs`, returning its results (one per output).
pub fn eval(op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>, String> {
    for (i, t) in inputs.iter().enumerate() {
        if t.data.len() != t.ty.bytes() {
            return Err(format!(
                "{} input {i} of type {} holds {} bytes, expected {}",
                op.name(),
                t.ty,
                t.data.len(),
                t.ty.bytes()
            ));
        }
    }
    let tys: Vec<&TensorType> = inputs.iter().map(|t| &t.ty).collect();
    // The typing rule refuses an op without a family (`Unsupported`) first.
    let want = infer(op, &tys)?;
    let Some(family) = op.family() else { return Err(format!("no reference evaluation for {}", op.name())) };
    let out = match family {
        Family::Elementwise => elementwise::eval(op, inputs, &want[0])?,
        Family::Shape => shape::eval(op, inputs, &want[0])?,
        Family::Linalg => linalg::eval(op, inputs, &want[0])?,
        Family::Nn => nn::eval(op, inputs, &want[0])?,
        Family::Reduce => reduce::eval(op, inputs, &want[0])?,
        Family::Sample => sample::eval(op, inputs, &want[0])?,
        Family::Index => index::eval(op, inputs, &want[0])?,
    };
    if out.ty != want[0] {
        return Err(format!(
            "internal error: {} evaluated to {} but its typing rule says {}",
            op.name(),
            out.ty,
            want[0]
        ));
    }
    Ok(vec![out])
}

/// The error a family's dispatcher returns for an op of another family (a routing bug).
fn not_in_family(op: &Op) -> String {
    format!("internal error: {} was routed to the wrong family", op.name())
}

/// The attributes of `op` as the text form prints them, in order (from its family's file).
pub(crate) fn attrs(op: &Op) -> AttrList {
    match op.family() {
        Some(Family::Elementwise) => elementwise::attrs(op),
        Some(Family::Shape) => shape::attrs(op),
        Some(Family::Linalg) => linalg::attrs(op),
        Some(Family::Nn) => nn::attrs(op),
        Some(Family::Reduce) => reduce::attrs(op),
        Some(Family::Sample) => sample::attrs(op),
        Some(Family::Index) => index::attrs(op),
        None => match op {
            Op::Unsupported { op_type, domain, opset } => {
                vec![("op_type", quote(op_type)), ("domain", quote(domain)), ("opset", opset.to_string())]
            }
            _ => vec![],
        },
    }
}

/// Builds the op printed as `name` from its attributes: the inverse of [`Op::name`] and
/// [`attrs`]. Each family's parser is asked in turn.
pub(crate) fn parse(name: &str, a: &mut Attrs) -> Result<Op, String> {
    for family in Family::ALL {
        let op = match family {
            Family::Elementwise => elementwise::parse(name, a)?,
            Family::Shape => shape::parse(name, a)?,
            Family::Linalg => linalg::parse(name, a)?,
            Family::Nn => nn::parse(name, a)?,
            Family::Reduce => reduce::parse(name, a)?,
            Family::Sample => sample::parse(name, a)?,
            Family::Index => index::parse(name, a)?,
        };
        if let Some(op) = op {
            return Ok(op);
        }
    }
    match name {
        "unsupported" => {
            Ok(Op::Unsupported { op_type: a.string("op_type")?, domain: a.string("domain")?, opset: a.word("opset")? })
        }
        _ => Err(format!("unknown op `{name}`")),
    }
}

/// Flat offsets `base + Σ idx[d] * strides[d]` for every multi-index `idx` of `shape`, in
/// row-major order. Strides may be zero (broadcast) or negative (reversed slices).
pub(crate) fn strided_map(shape: &[usize], strides: &[i64], base: i64) -> Vec<usize> {
    debug_assert_eq!(shape.len(), strides.len());
    let n = numel(shape);
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    let mut off = base;
    for _ in 0..n {
        out.push(usize::try_from(off).expect("index map offset is negative"));
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= strides[d] * shape[d] as i64;
            idx[d] = 0;
        }
    }
    out
}

/// Row-major strides of `shape` as i64.
pub(crate) fn istrides(shape: &[usize]) -> Vec<i64> {
    strides_of(shape).into_iter().map(|s| s as i64).collect()
}

/// For every element of the (numpy-broadcast) shape `out`, the flat index of the element of
/// a tensor of shape `inp` that broadcasts to it.
pub(crate) fn broadcast_map(out: &[usize], inp: &[usize]) -> Vec<usize> {
    assert!(inp.len() <= out.len(), "broadcast of rank {} to rank {}", inp.len(), out.len());
    let off = out.len() - inp.len();
    let istr = istrides(inp);
    let mut strides = vec![0i64; out.len()];
    for (d, &n) in inp.iter().enumerate() {
        assert!(n == out[off + d] || n == 1, "shape {inp:?} does not broadcast to {out:?}");
        if n != 1 {
            strides[off + d] = istr[d];
        }
    }
    strided_map(out, &strides, 0)
}

/// The tensor of shape `shape` whose element `i` is element `map[i]` of `t` (any dtype).
pub(crate) fn take(t: &Tensor, map: &[usize], shape: Vec<usize>) -> Tensor {
    let es = t.dtype().size();
    let mut bytes = Vec::with_capacity(map.len() * es);
    for &i in map {
        bytes.extend_from_slice(&t.data[i * es..(i + 1) * es]);
    }
    let ty = TensorType::new(t.dtype(), shape);
    Tensor::from_bytes(ty, bytes.into()).expect("index map length matches the output shape")
}

/// The elements of an f32 tensor (callers have checked the dtype through the typing rule).
pub(crate) fn f32s(t: &Tensor) -> Result<Vec<f32>, String> {
    match t.data() {
        Data::F32(v) => Ok(v),
        d => Err(format!("expected an f32 tensor, got {}", d.dtype())),
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use crate::{Data, Op, Tensor};

    /// Evaluates a single-result op.
    pub fn run(op: Op, inputs: &[&Tensor]) -> Tensor {
        let mut out = super::eval(&op, inputs).unwrap_or_else(|e| panic!("eval {op:?}: {e}"));
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    /// Asserts shape and values of an f32 result, within `tol` absolute + relative.
    pub fn assert_f32(t: &Tensor, shape: &[usize], want: &[f32], tol: f32) {
        assert_eq!(t.shape(), shape, "shape");
        let Data::F32(got) = t.data() else { panic!("not f32: {:?}", t.ty) };
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol * (1.0 + w.abs());
            assert!(ok, "element {i}: got {g}, want {w}\n got: {got:?}\nwant: {want:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_map_covers_broadcast_and_negative_strides() {
        assert_eq!(strided_map(&[2, 3], &[3, 1], 0), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(strided_map(&[2, 3], &[1, 2], 0), vec![0, 2, 4, 1, 3, 5]);
        assert_eq!(strided_map(&[3], &[-2], 4), vec![4, 2, 0]);
        assert_eq!(strided_map(&[], &[], 7), vec![7]);
        assert!(strided_map(&[2, 0], &[1, 1], 0).is_empty());
        assert_eq!(broadcast_map(&[2, 3], &[3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_map(&[2, 3], &[2, 1]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_map(&[2, 2], &[]), vec![0, 0, 0, 0]);
    }

    #[test]
    fn rejects_bad_inputs_without_panicking() {
        let a = Tensor::f32(vec![2], vec![1.0, 2.0]);
        let b = Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]);
        assert!(eval(&Op::Binary(crate::BinaryOp::Add), &[&a, &b]).is_err());
        assert!(eval(&Op::Binary(crate::BinaryOp::Add), &[&a]).is_err());
        let bad = Tensor { ty: TensorType::new(crate::DType::F32, vec![3]), data: a.data.clone() };
        assert!(eval(&Op::Identity, &[&bad]).is_err());
        let u = Op::Unsupported { op_type: "Foo".into(), domain: String::new(), opset: 13 };
        assert!(eval(&u, &[&a]).is_err());
    }
}
