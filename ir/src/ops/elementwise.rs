//! Elementwise ops: binary arithmetic, comparisons, unary functions, `Where` and `Cast`.
//!
//! Integer binary ops run in i64 with wrapping arithmetic; for i32 tensors the operands are
//! widened exactly and the result truncated, which yields the same bits as wrapping i32
//! arithmetic (including `i32::MIN / -1 == i32::MIN`).

use num_traits::Float;

use super::broadcast_map;
use crate::infer::broadcast_shapes;
use crate::minifloat::E8M0Round;
use crate::op::{BinaryOp, CmpOp, UnaryOp};
use crate::text::{float, AttrList, Attrs};
use crate::{DType, Data, Op, Tensor, TensorType};

/// Applies `f` to the broadcast pairs `(x[ma[i]], y[mb[i]])`.
fn zip_map<A: Copy, B: Copy, R>(
    ma: &[usize],
    mb: &[usize],
    x: &[A],
    y: &[B],
    f: impl Fn(A, B) -> Result<R, String>,
) -> Result<Vec<R>, String> {
    ma.iter().zip(mb).map(|(&i, &j)| f(x[i], y[j])).collect()
}

/// Whether `op` has a meaning on `dtype`; the error names the op and the dtype.
fn check_binary(op: BinaryOp, dtype: DType) -> Result<(), String> {
    let ok = match dtype {
        d if d.is_float() => {
            !matches!(op, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor | BinaryOp::Shl | BinaryOp::Shr)
        }
        DType::Bool => matches!(op, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor | BinaryOp::Max | BinaryOp::Min),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{} is not defined on {dtype} tensors", Op::Binary(op).name()))
    }
}

pub(super) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    check_binary(op, a.dtype())?;
    let shape = broadcast_shapes(&[a.shape(), b.shape()])?;
    let (ma, mb) = (broadcast_map(&shape, a.shape()), broadcast_map(&shape, b.shape()));
    let data = match (a.data(), b.data()) {
        (Data::F32(x), Data::F32(y)) => Data::F32(zip_map(&ma, &mb, &x, &y, |p, q| Ok(float_binary(op, p, q)))?),
        (Data::F64(x), Data::F64(y)) => Data::F64(zip_map(&ma, &mb, &x, &y, |p, q| Ok(float_binary(op, p, q)))?),
        (Data::I32(x), Data::I32(y)) => {
            Data::I32(zip_map(&ma, &mb, &x, &y, |p, q| int_binary(op, p.into(), q.into(), 32).map(|r| r as i32))?)
        }
        (Data::I64(x), Data::I64(y)) => Data::I64(zip_map(&ma, &mb, &x, &y, |p, q| int_binary(op, p, q, 64))?),
        (Data::Bool(x), Data::Bool(y)) => Data::Bool(zip_map(&ma, &mb, &x, &y, |p, q| Ok(bool_binary(op, p, q)))?),
        (x, y) if x.dtype() == y.dtype() => return Err(storage_only(Op::Binary(op), x.dtype())),
        (x, y) => return Err(format!("operand dtypes differ: {} and {}", x.dtype(), y.dtype())),
    };
    Ok(Tensor::from_data(shape, data))
}

/// The error for a compute op on a storage-only dtype (see [`DType::compute`]).
pub(super) fn storage_only(op: Op, d: DType) -> String {
    format!("{} is not evaluated on {d} tensors (Kiln computes {d} values in {})", op.name(), d.compute())
}

/// numpy `maximum`/`minimum`: NaN in either operand gives NaN.
pub(super) fn fmax<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::nan()
    } else if a >= b {
        a
    } else {
        b
    }
}
pub(super) fn fmin<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::nan()
    } else if a <= b {
        a
    } else {
        b
    }
}

fn float_binary<T: Float>(op: BinaryOp, a: T, b: T) -> T {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Max => fmax(a, b),
        BinaryOp::Min => fmin(a, b),
        // C fmod: the remainder has the sign of the dividend.
        BinaryOp::Mod { fmod: true } => a % b,
        // numpy `mod` (what ONNX's reference runs for fmod=0): the sign of the divisor.
        BinaryOp::Mod { fmod: false } => {
            let r = a % b;
            if b == T::zero() || r.is_nan() {
                r
            } else if r == T::zero() {
                T::zero().copysign(b)
            } else if (r < T::zero()) != (b < T::zero()) {
                r + b
            } else {
                r
            }
        }
        BinaryOp::And | BinaryOp::Or | BinaryOp::Xor | BinaryOp::Shl | BinaryOp::Shr => {
            unreachable!("rejected by check_binary")
        }
    }
}

/// Wrapping `base^exp` by repeated squaring (numpy's integer power).
fn ipow(mut base: i64, mut exp: u64) -> i64 {
    let mut acc: i64 = 1;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = acc.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        exp >>= 1;
    }
    acc
}

/// Integer ops on values of a `bits`-wide type (i32 or i64), computed in i64.
fn int_binary(op: BinaryOp, a: i64, b: i64, bits: i64) -> Result<i64, String> {
    let nonzero = |what: &str| {
        if b == 0 {
            Err(format!("integer {what} by zero"))
        } else {
            Ok(())
        }
    };
    Ok(match op {
        BinaryOp::Add => a.wrapping_add(b),
        BinaryOp::Sub => a.wrapping_sub(b),
        BinaryOp::Mul => a.wrapping_mul(b),
        // Truncates toward zero, like C and ONNX's reference.
        BinaryOp::Div => {
            nonzero("division")?;
            a.wrapping_div(b)
        }
        BinaryOp::Pow => {
            if b < 0 {
                return Err(format!("integer pow with a negative exponent ({a}^{b})"));
            }
            ipow(a, b as u64)
        }
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
        BinaryOp::Mod { fmod } => {
            nonzero("remainder")?;
            let r = a.wrapping_rem(b);
            if !fmod && r != 0 && ((r < 0) != (b < 0)) {
                r + b
            } else {
                r
            }
        }
        BinaryOp::And => a & b,
        BinaryOp::Or => a | b,
        BinaryOp::Xor => a ^ b,
        BinaryOp::Shl if !(0..bits).contains(&b) => 0,
        BinaryOp::Shl => a.wrapping_shl(b as u32),
        BinaryOp::Shr if !(0..bits).contains(&b) => {
            if a < 0 {
                -1
            } else {
                0
            }
        }
        BinaryOp::Shr => a >> b,
    })
}

fn bool_binary(op: BinaryOp, a: bool, b: bool) -> bool {
    match op {
        BinaryOp::And | BinaryOp::Min => a & b,
        BinaryOp::Or | BinaryOp::Max => a | b,
        BinaryOp::Xor => a ^ b,
        _ => unreachable!("rejected by check_binary"),
    }
}

fn cmp<T: PartialOrd>(op: CmpOp, a: T, b: T) -> bool {
    match op {
        CmpOp::Equal => a == b,
        CmpOp::Less => a < b,
        CmpOp::LessOrEqual => a <= b,
        CmpOp::Greater => a > b,
        CmpOp::GreaterOrEqual => a >= b,
    }
}

pub(super) fn compare(op: CmpOp, a: &Tensor, b: &Tensor) -> Tensor {
    let shape = broadcast_shapes(&[a.shape(), b.shape()]).expect("checked by infer");
    let (ma, mb) = (broadcast_map(&shape, a.shape()), broadcast_map(&shape, b.shape()));
    let out: Result<Vec<bool>, String> = match (a.data(), b.data()) {
        (Data::F32(x), Data::F32(y)) => zip_map(&ma, &mb, &x, &y, |p, q| Ok(cmp(op, p, q))),
        (Data::I32(x), Data::I32(y)) => zip_map(&ma, &mb, &x, &y, |p, q| Ok(cmp(op, p, q))),
        (Data::I64(x), Data::I64(y)) => zip_map(&ma, &mb, &x, &y, |p, q| Ok(cmp(op, p, q))),
        (Data::Bool(x), Data::Bool(y)) => zip_map(&ma, &mb, &x, &y, |p, q| Ok(cmp(op, p, q))),
        (Data::F64(x), Data::F64(y)) => zip_map(&ma, &mb, &x, &y, |p, q| Ok(cmp(op, p, q))),
        (x, y) => zip_map(&ma, &mb, &x.to_f64_vec(), &y.to_f64_vec(), |p, q| Ok(cmp(op, p, q))),
    };
    Tensor::from_data(shape, Data::Bool(out.expect("comparisons do not fail")))
}

/// Logistic function, without overflow for large |x|.
fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// The error function, from the everywhere-convergent series of Abramowitz & Stegun 7.1.6,
/// `erf(x) = 2/√π · e^(-x²) · Σ_{n≥0} 2ⁿ x^(2n+1) / (1·3·…·(2n+1))`, summed in f64. All terms
/// are positive, so there is no cancellation: the f64 result is accurate to ~1e-15 relative
/// and the f32 result is the correctly rounded value except in rare ties. For |x| ≥ 6,
/// `1 - erf(x) < 3e-17`, so the result is ±1.
pub(crate) fn erf64(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let a = x.abs();
    if a >= 6.0 {
        return 1.0f64.copysign(x);
    }
    let a2 = a * a;
    let (mut term, mut sum) = (a, a);
    let mut n = 0u32;
    // Terms grow while 2a² > 2n+1, then shrink geometrically; stop once negligible.
    while n < 2000 {
        n += 1;
        term *= 2.0 * a2 / f64::from(2 * n + 1);
        sum += term;
        if f64::from(n) > a2 && term <= sum * 1e-17 {
            break;
        }
    }
    let y = (std::f64::consts::FRAC_2_SQRT_PI * (-a2).exp() * sum).min(1.0);
    y.copysign(x)
}

fn float_unary<T: Float>(op: UnaryOp, x: T) -> T {
    let c = |v: f64| T::from(v).expect("float constants convert");
    let zero = T::zero();
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Reciprocal => T::one() / x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Relu => {
            if x < zero {
                zero
            } else {
                x
            }
        }
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Tanh => x.tanh(),
        // f32 rounds erf's f64 value once; f64 takes it as is.
        UnaryOp::Erf => c(erf64(x.to_f64().expect("floats convert to f64"))),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tan => x.tan(),
        UnaryOp::Asin => x.asin(),
        UnaryOp::Acos => x.acos(),
        UnaryOp::Atan => x.atan(),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Round => {
            // floor(x) plus one above the half, or at the half from an odd floor (each step
            // exact).
            let (f, half) = (x.floor(), c(0.5));
            let d = x - f;
            let odd = (f * half).floor() < f * half;
            if d > half || (d == half && odd) {
                f + T::one()
            } else {
                f
            }
        }
        UnaryOp::Sign => {
            if x > zero {
                T::one()
            } else if x < zero {
                -T::one()
            } else {
                x // ±0 and NaN
            }
        }
        UnaryOp::LeakyRelu { alpha } => {
            if x >= zero {
                x
            } else {
                c(alpha.into()) * x
            }
        }
        // Comparisons with NaN are false, so NaN passes through.
        UnaryOp::HardSigmoid { alpha, beta } => {
            let y = c(alpha.into()) * x + c(beta.into());
            if y < zero {
                zero
            } else if y > T::one() {
                T::one()
            } else {
                y
            }
        }
        UnaryOp::Clip { lo, hi } => {
            let (lo, hi) = (c(lo), c(hi));
            let y = if x < lo { lo } else { x };
            if y > hi {
                hi
            } else {
                y
            }
        }
        UnaryOp::Not => unreachable!("not needs bool (checked by infer)"),
    }
}

/// Whether `op` has a meaning on `dtype` (float-only ops are already rejected by infer).
fn check_unary(op: UnaryOp, dtype: DType) -> Result<(), String> {
    use UnaryOp::*;
    let ok = match dtype {
        d if d.is_float() => !matches!(op, Not),
        DType::Bool => matches!(op, Not | Abs | Relu | Floor | Ceil | Round | Sign | Clip { .. }),
        _ => matches!(op, Not | Neg | Abs | Relu | Floor | Ceil | Round | Sign | Clip { .. }),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{} is not defined on {dtype} tensors", Op::Unary(op).name()))
    }
}

/// Integer unary ops; `lo`/`hi` are Clip's bounds already converted to the element type.
fn int_unary(op: UnaryOp, x: i64, lo: i64, hi: i64) -> i64 {
    match op {
        UnaryOp::Not => !x,
        UnaryOp::Neg => x.wrapping_neg(),
        UnaryOp::Abs => x.wrapping_abs(),
        UnaryOp::Relu => x.max(0),
        UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round => x,
        UnaryOp::Sign => x.signum(),
        UnaryOp::Clip { .. } => x.max(lo).min(hi),
        _ => unreachable!("rejected by check_unary"),
    }
}

/// Bool unary ops (false < true, so Clip is a max then a min).
fn bool_unary(op: UnaryOp, x: bool) -> bool {
    match op {
        UnaryOp::Not => !x,
        UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round | UnaryOp::Sign => x,
        UnaryOp::Clip { lo, hi } => x.max(lo != 0.0).min(hi != 0.0),
        _ => unreachable!("rejected by check_unary"),
    }
}

pub(super) fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor, String> {
    check_unary(op, x.dtype())?;
    // Clip's bounds in the element type: Rust `as` truncates toward zero and saturates.
    let (lo, hi) = match op {
        UnaryOp::Clip { lo, hi } => (lo, hi),
        _ => (0.0, 0.0),
    };
    let data = match x.data() {
        Data::F32(v) => Data::F32(v.into_iter().map(|e| float_unary(op, e)).collect()),
        Data::F64(v) => Data::F64(v.into_iter().map(|e| float_unary(op, e)).collect()),
        Data::I32(v) => {
            let (lo, hi) = (i64::from(lo as i32), i64::from(hi as i32));
            Data::I32(v.into_iter().map(|e| int_unary(op, e.into(), lo, hi) as i32).collect())
        }
        Data::I64(v) => Data::I64(v.into_iter().map(|e| int_unary(op, e, lo as i64, hi as i64)).collect()),
        Data::Bool(v) => Data::Bool(v.into_iter().map(|e| bool_unary(op, e)).collect()),
        d => return Err(storage_only(Op::Unary(op), d.dtype())),
    };
    Ok(Tensor::from_data(x.shape().to_vec(), data))
}

/// `cond ? x : y` with broadcasting; byte-level, so any dtype.
pub(super) fn select(cond: &Tensor, x: &Tensor, y: &Tensor) -> Tensor {
    let shape = broadcast_shapes(&[cond.shape(), x.shape(), y.shape()]).expect("checked by infer");
    let (mc, mx, my) =
        (broadcast_map(&shape, cond.shape()), broadcast_map(&shape, x.shape()), broadcast_map(&shape, y.shape()));
    let Data::Bool(c) = cond.data() else { unreachable!("where's condition is bool (checked by infer)") };
    let es = x.dtype().size();
    let mut bytes = Vec::with_capacity(mc.len() * es);
    for i in 0..mc.len() {
        let (src, j) = if c[mc[i]] { (x, mx[i]) } else { (y, my[i]) };
        bytes.extend_from_slice(&src.data[j * es..(j + 1) * es]);
    }
    Tensor::from_bytes(TensorType::new(x.dtype(), shape), bytes.into()).expect("length matches shape")
}

/// Conversion between dtypes: float→float rounds to nearest even; float→int truncates toward
/// zero (saturating to i64, NaN → 0) and wraps to the target width, except float→i32, which
/// saturates; int→int wraps (two's complement truncation; u64 by its bits); int→float rounds
/// to nearest; anything→bool is `!= 0` (NaN is true); bool→number is 0/1.
///
/// The small types: a value of one is first decoded exactly to its compute type (f32, i32);
/// a small float result is encoded from the value rounded to f32 once
/// ([`crate::minifloat`]; `saturate` as ONNX's attribute); a 4- or 2-bit integer result wraps
/// like the other narrow integers.
pub(super) fn cast(x: &Tensor, to: DType, saturate: bool, round: E8M0Round) -> Tensor {
    let from = x.dtype();
    if from.is_small() && to != from && to != from.compute() {
        return cast(&cast(x, from.compute(), true, round), to, saturate, round);
    }
    let d = x.data();
    let out = if from == to {
        d
    } else if let Some(f) = to.minifloat() {
        let v: Vec<f32> = match d {
            Data::I64(v) => v.into_iter().map(|e| e as f32).collect(),
            Data::U64(v) => v.into_iter().map(|e| e as f32).collect(),
            d => d.to_f64_vec().into_iter().map(|e| e as f32).collect(),
        };
        Data::Small(to, v.into_iter().map(|e| f.encode_rounding(e, saturate, round)).collect())
    } else if to == DType::Bool {
        Data::Bool(match d {
            Data::U64(v) => v.into_iter().map(|e| e != 0).collect(),
            Data::I64(v) => v.into_iter().map(|e| e != 0).collect(),
            d => d.to_f64_vec().into_iter().map(|e| e != 0.0).collect(),
        })
    } else if from.is_float() || to.is_float() {
        match d {
            // Round once, not through f64.
            Data::I64(v) if to == DType::F32 => Data::F32(v.into_iter().map(|e| e as f32).collect()),
            Data::U64(v) if to == DType::F32 => Data::F32(v.into_iter().map(|e| e as f32).collect()),
            d => Data::from_f64s(to, &d.to_f64_vec()),
        }
    } else {
        Data::from_i64s(to, &d.to_i64_vec())
    };
    Tensor::from_data(x.shape().to_vec(), out)
}

/// The type rule of the elementwise ops: their output types from their input types and
/// attributes (see [`crate::infer::infer`]).
pub(crate) fn infer(op: &crate::Op, inputs: &[&crate::TensorType]) -> crate::infer::InferResult {
    use crate::infer::{arity, broadcast_shapes, same_dtype, want_float};
    use crate::op::{BinaryOp, UnaryOp};
    use crate::DType;
    use crate::Op::*;
    use crate::TensorType;
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
        _ => unreachable!("{} is not an elementwise op", op.name()),
    }
}

// ---------------------------------------------------------------------------------------
// Dispatch: the reference evaluation and text form of the elementwise ops.

/// Evaluates an elementwise op (its inputs already checked by [`infer`]).
pub(super) fn eval(op: &Op, inputs: &[&Tensor], _want: &TensorType) -> Result<Tensor, String> {
    Ok(match op {
        Op::Binary(b) => binary(*b, inputs[0], inputs[1])?,
        Op::Compare(c) => compare(*c, inputs[0], inputs[1]),
        Op::Unary(u) => unary(*u, inputs[0])?,
        Op::Where => select(inputs[0], inputs[1], inputs[2]),
        Op::Cast { to, saturate, round } => cast(inputs[0], *to, *saturate, *round),
        _ => return Err(super::not_in_family(op)),
    })
}

/// The attributes of an elementwise op, in print order.
pub(super) fn attrs(op: &Op) -> AttrList {
    match op {
        Op::Binary(BinaryOp::Mod { fmod }) => vec![("fmod", fmod.to_string())],
        Op::Unary(UnaryOp::LeakyRelu { alpha }) => vec![("alpha", float(*alpha))],
        Op::Unary(UnaryOp::HardSigmoid { alpha, beta }) => vec![("alpha", float(*alpha)), ("beta", float(*beta))],
        Op::Unary(UnaryOp::Clip { lo, hi }) => vec![("lo", format!("{lo:?}")), ("hi", format!("{hi:?}"))],
        // The defaults (saturate, round up) are not printed.
        Op::Cast { to, saturate, round } => {
            let mut v = vec![("to", to.name().to_string())];
            if !saturate {
                v.push(("saturate", "false".to_string()));
            }
            if *round != E8M0Round::Up {
                v.push(("round", round.name().to_string()));
            }
            v
        }
        _ => vec![],
    }
}

/// Builds the elementwise op printed as `name` (`None`: not an elementwise op).
pub(super) fn parse(name: &str, a: &mut Attrs) -> Result<Option<Op>, String> {
    use BinaryOp as B;
    use UnaryOp as U;
    Ok(Some(match name {
        "add" => Op::Binary(B::Add),
        "sub" => Op::Binary(B::Sub),
        "mul" => Op::Binary(B::Mul),
        "div" => Op::Binary(B::Div),
        "pow" => Op::Binary(B::Pow),
        "max" => Op::Binary(B::Max),
        "min" => Op::Binary(B::Min),
        "mod" => Op::Binary(B::Mod { fmod: a.word("fmod")? }),
        "and" => Op::Binary(B::And),
        "or" => Op::Binary(B::Or),
        "xor" => Op::Binary(B::Xor),
        "shl" => Op::Binary(B::Shl),
        "shr" => Op::Binary(B::Shr),
        "equal" => Op::Compare(CmpOp::Equal),
        "less" => Op::Compare(CmpOp::Less),
        "less_or_equal" => Op::Compare(CmpOp::LessOrEqual),
        "greater" => Op::Compare(CmpOp::Greater),
        "greater_or_equal" => Op::Compare(CmpOp::GreaterOrEqual),
        "neg" => Op::Unary(U::Neg),
        "abs" => Op::Unary(U::Abs),
        "sqrt" => Op::Unary(U::Sqrt),
        "reciprocal" => Op::Unary(U::Reciprocal),
        "exp" => Op::Unary(U::Exp),
        "log" => Op::Unary(U::Log),
        "relu" => Op::Unary(U::Relu),
        "sigmoid" => Op::Unary(U::Sigmoid),
        "tanh" => Op::Unary(U::Tanh),
        "erf" => Op::Unary(U::Erf),
        "sin" => Op::Unary(U::Sin),
        "cos" => Op::Unary(U::Cos),
        "tan" => Op::Unary(U::Tan),
        "asin" => Op::Unary(U::Asin),
        "acos" => Op::Unary(U::Acos),
        "atan" => Op::Unary(U::Atan),
        "floor" => Op::Unary(U::Floor),
        "ceil" => Op::Unary(U::Ceil),
        "round" => Op::Unary(U::Round),
        "not" => Op::Unary(U::Not),
        "sign" => Op::Unary(U::Sign),
        "leaky_relu" => Op::Unary(U::LeakyRelu { alpha: a.word("alpha")? }),
        "hard_sigmoid" => Op::Unary(U::HardSigmoid { alpha: a.word("alpha")?, beta: a.word("beta")? }),
        "clip" => Op::Unary(U::Clip { lo: a.word("lo")?, hi: a.word("hi")? }),
        "where" => Op::Where,
        "cast" => {
            let to = a.dtype("to")?;
            let round = match a.opt_word::<String>("round")? {
                None => E8M0Round::Up,
                Some(r) => E8M0Round::from_name(&r).ok_or_else(|| format!("unknown rounding `{r}`"))?,
            };
            Op::Cast { to, saturate: a.opt_word("saturate")?.unwrap_or(true), round }
        }
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_f32, run};
    use super::*;
    use crate::ops::eval;

    fn bin(op: BinaryOp, a: &Tensor, b: &Tensor) -> Tensor {
        run(Op::Binary(op), &[a, b])
    }
    fn un(op: UnaryOp, a: &Tensor) -> Tensor {
        run(Op::Unary(op), &[a])
    }

    #[test]
    fn add_broadcasts_like_numpy() {
        let a = Tensor::f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let row = Tensor::f32(vec![3], vec![10., 20., 30.]);
        assert_f32(&bin(BinaryOp::Add, &a, &row), &[2, 3], &[11., 22., 33., 14., 25., 36.], 0.0);
        let col = Tensor::f32(vec![2, 1], vec![100., 200.]);
        assert_f32(&bin(BinaryOp::Sub, &a, &col), &[2, 3], &[-99., -98., -97., -196., -195., -194.], 0.0);
        // [2,1] op [1,3] -> [2,3]
        let p = Tensor::f32(vec![2, 1], vec![1., 2.]);
        let q = Tensor::f32(vec![1, 3], vec![10., 20., 30.]);
        assert_f32(&bin(BinaryOp::Mul, &p, &q), &[2, 3], &[10., 20., 30., 20., 40., 60.], 0.0);
        let s = Tensor::scalar_f32(2.0);
        assert_f32(&bin(BinaryOp::Div, &s, &p), &[2, 1], &[2., 1.], 0.0);
    }

    #[test]
    fn integer_div_mod_pow_follow_onnx_reference() {
        let a = Tensor::i32(vec![4], vec![7, -7, 7, -7]);
        let b = Tensor::i32(vec![4], vec![2, 2, -2, -2]);
        assert_eq!(bin(BinaryOp::Div, &a, &b).data(), Data::I32(vec![3, -3, -3, 3]));
        let b3 = Tensor::i32(vec![4], vec![3, 3, -3, -3]);
        assert_eq!(bin(BinaryOp::Mod { fmod: false }, &a, &b3).data(), Data::I32(vec![1, 2, -2, -1]));
        assert_eq!(bin(BinaryOp::Mod { fmod: true }, &a, &b3).data(), Data::I32(vec![1, -1, 1, -1]));
        let min = Tensor::i32(vec![1], vec![i32::MIN]);
        assert_eq!(bin(BinaryOp::Div, &min, &Tensor::i32(vec![1], vec![-1])).data(), Data::I32(vec![i32::MIN]));
        let zero = Tensor::i32(vec![1], vec![0]);
        assert!(eval(&Op::Binary(BinaryOp::Div), &[&min, &zero]).is_err());
        assert!(eval(&Op::Binary(BinaryOp::Mod { fmod: false }), &[&min, &zero]).is_err());

        let base = Tensor::i64(vec![4], vec![3, -2, 2, 0]);
        let exp = Tensor::i64(vec![4], vec![4, 3, 0, 0]);
        assert_eq!(bin(BinaryOp::Pow, &base, &exp).data(), Data::I64(vec![81, -8, 1, 1]));
        // Wrapping: 2^31 and 3^21 = 10460353203 = 2 * 2^32 + 1870418611 in i32.
        let b32 = Tensor::i32(vec![2], vec![2, 3]);
        let e32 = Tensor::i32(vec![2], vec![31, 21]);
        assert_eq!(bin(BinaryOp::Pow, &b32, &e32).data(), Data::I32(vec![i32::MIN, 1870418611]));
        let neg = Tensor::i64(vec![1], vec![-1]);
        assert!(eval(&Op::Binary(BinaryOp::Pow), &[&Tensor::i64(vec![1], vec![2]), &neg]).is_err());
        let max = Tensor::i32(vec![1], vec![i32::MAX]);
        assert_eq!(bin(BinaryOp::Add, &max, &Tensor::i32(vec![1], vec![1])).data(), Data::I32(vec![i32::MIN]));
    }

    #[test]
    fn float_mod_pow_max_min() {
        let a = Tensor::f32(vec![2], vec![5.5, -5.5]);
        let b = Tensor::f32(vec![2], vec![-2.0, 2.0]);
        // numpy mod: sign of the divisor; fmod: sign of the dividend.
        assert_f32(&bin(BinaryOp::Mod { fmod: false }, &a, &b), &[2], &[-0.5, 0.5], 0.0);
        assert_f32(&bin(BinaryOp::Mod { fmod: true }, &a, &b), &[2], &[1.5, -1.5], 0.0);
        let two = Tensor::f32(vec![1], vec![2.0]);
        assert_f32(&bin(BinaryOp::Pow, &two, &Tensor::f32(vec![1], vec![0.5])), &[1], &[std::f32::consts::SQRT_2], 0.0);
        let n = Tensor::f32(vec![3], vec![f32::NAN, 1.0, -3.0]);
        let m = Tensor::f32(vec![3], vec![1.0, f32::NAN, 2.0]);
        assert_f32(&bin(BinaryOp::Max, &n, &m), &[3], &[f32::NAN, f32::NAN, 2.0], 0.0);
        assert_f32(&bin(BinaryOp::Min, &n, &m), &[3], &[f32::NAN, f32::NAN, -3.0], 0.0);
    }

    #[test]
    fn logical_ops_and_dtype_errors() {
        let a = Tensor::bool(vec![4], vec![false, false, true, true]);
        let b = Tensor::bool(vec![4], vec![false, true, false, true]);
        assert_eq!(bin(BinaryOp::And, &a, &b).data(), Data::Bool(vec![false, false, false, true]));
        assert_eq!(bin(BinaryOp::Or, &a, &b).data(), Data::Bool(vec![false, true, true, true]));
        assert_eq!(bin(BinaryOp::Xor, &a, &b).data(), Data::Bool(vec![false, true, true, false]));
        assert_eq!(un(UnaryOp::Not, &a).data(), Data::Bool(vec![true, true, false, false]));
        let i = Tensor::i32(vec![2], vec![0b1100, -1]);
        let j = Tensor::i32(vec![2], vec![0b1010, 5]);
        // On integers the logical ops are bitwise (ONNX's BitwiseAnd/Or/Xor/Not).
        assert_eq!(bin(BinaryOp::Xor, &i, &j).data(), Data::I32(vec![0b0110, -6]));
        assert_eq!(un(UnaryOp::Not, &j).data(), Data::I32(vec![!0b1010, -6]));
        // Shifts: out-of-range amounts give 0, or the sign fill for right shifts.
        let s = Tensor::i32(vec![4], vec![3, 31, 32, -1]);
        let v = Tensor::i32(vec![4], vec![-5, 1, 7, -8]);
        assert_eq!(bin(BinaryOp::Shl, &v, &s).data(), Data::I32(vec![-40, i32::MIN, 0, 0]));
        assert_eq!(bin(BinaryOp::Shr, &v, &s).data(), Data::I32(vec![-1, 0, 0, -1]));
        assert!(eval(&Op::Binary(BinaryOp::Add), &[&a, &b]).is_err());
        let f = Tensor::f32(vec![1], vec![1.0]);
        assert!(eval(&Op::Binary(BinaryOp::And), &[&f, &f]).is_err());
        assert!(eval(&Op::Unary(UnaryOp::Neg), &[&a]).is_err());
    }

    #[test]
    fn comparisons() {
        let a = Tensor::f32(vec![4], vec![1., 2., 3., f32::NAN]);
        let b = Tensor::f32(vec![1], vec![2.]);
        let cmp = |op, a: &Tensor, b: &Tensor| run(Op::Compare(op), &[a, b]).data();
        assert_eq!(cmp(CmpOp::Less, &a, &b), Data::Bool(vec![true, false, false, false]));
        assert_eq!(cmp(CmpOp::LessOrEqual, &a, &b), Data::Bool(vec![true, true, false, false]));
        assert_eq!(cmp(CmpOp::Equal, &a, &b), Data::Bool(vec![false, true, false, false]));
        assert_eq!(cmp(CmpOp::Greater, &a, &b), Data::Bool(vec![false, false, true, false]));
        let i = Tensor::i64(vec![2, 1], vec![5, -5]);
        let j = Tensor::i64(vec![2], vec![5, 6]);
        assert_eq!(cmp(CmpOp::GreaterOrEqual, &i, &j), Data::Bool(vec![true, false, false, false]));
    }

    #[test]
    fn float_unary_functions() {
        let x = Tensor::f32(vec![4], vec![-2.0, -0.5, 0.0, 3.0]);
        assert_f32(&un(UnaryOp::Relu, &x), &[4], &[0., 0., 0., 3.], 0.0);
        assert_f32(&un(UnaryOp::LeakyRelu { alpha: 0.1 }, &x), &[4], &[-0.2, -0.05, 0., 3.], 1e-7);
        assert_f32(&un(UnaryOp::HardSigmoid { alpha: 0.2, beta: 0.5 }, &x), &[4], &[0.1, 0.4, 0.5, 1.0], 1e-7);
        assert_f32(&un(UnaryOp::Sign, &x), &[4], &[-1., -1., 0., 1.], 0.0);
        assert_f32(&un(UnaryOp::Floor, &x), &[4], &[-2., -1., 0., 3.], 0.0);
        // Ties to even; the largest f32 below one half rounds down (floor(x + 0.5) would not).
        let h = Tensor::f32(vec![8], vec![-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997, -0.7]);
        assert_f32(&un(UnaryOp::Round, &h), &[8], &[-2., -2., -0., 0., 2., 2., 0., -1.], 0.0);
        assert_f32(&un(UnaryOp::Ceil, &x), &[4], &[-2., 0., 0., 3.], 0.0);
        assert_f32(&un(UnaryOp::Abs, &x), &[4], &[2., 0.5, 0., 3.], 0.0);
        assert_f32(&un(UnaryOp::Neg, &x), &[4], &[2., 0.5, 0., -3.], 0.0);
        assert_f32(&un(UnaryOp::Reciprocal, &x), &[4], &[-0.5, -2., f32::INFINITY, 1. / 3.], 0.0);
        let c = Tensor::f32(vec![4], vec![-2.0, 0.5, f32::NAN, 7.0]);
        assert_f32(&un(UnaryOp::Clip { lo: -1.0, hi: 1.0 }, &c), &[4], &[-1.0, 0.5, f32::NAN, 1.0], 0.0);
        let e = Tensor::f32(vec![3], vec![0.0, 1.0, 4.0]);
        assert_f32(&un(UnaryOp::Exp, &e), &[3], &[1.0, std::f32::consts::E, 54.59815], 1e-7);
        assert_f32(&un(UnaryOp::Log, &e), &[3], &[f32::NEG_INFINITY, 0.0, std::f32::consts::LN_2 * 2.0], 1e-7);
        assert_f32(&un(UnaryOp::Sqrt, &e), &[3], &[0.0, 1.0, 2.0], 0.0);
        assert_f32(&un(UnaryOp::Tanh, &e), &[3], &[0.0, 0.7615942, 0.9993293], 1e-7);
    }

    #[test]
    fn sigmoid_is_stable_for_large_magnitudes() {
        let x = Tensor::f32(vec![5], vec![-200.0, -100.0, 0.0, 2.0, 200.0]);
        let Data::F32(y) = un(UnaryOp::Sigmoid, &x).data() else { unreachable!() };
        assert_eq!(y[0], 0.0);
        // e^-100 ≈ 3.7200760e-44 is an f32 subnormal.
        assert!(y[1] > 0.0 && (y[1] - 3.72e-44).abs() < 3e-45, "{}", y[1]);
        assert_eq!(y[2], 0.5);
        assert!((y[3] - 0.880797).abs() < 1e-6); // 1 / (1 + e^-2)
        assert_eq!(y[4], 1.0);
    }

    #[test]
    fn erf_matches_tabulated_values() {
        // Reference values: erf tables (Abramowitz & Stegun Table 7.1) / Python's math.erf.
        let cases: [(f32, f64); 10] = [
            (0.0, 0.0),
            (1e-3, 0.0011283787909692363),
            (-0.1, -0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (-1.5, -0.9661051464753108),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
            (4.5, 0.9999999998033839),
            (10.0, 1.0),
        ];
        let erf = |x: f32| float_unary(UnaryOp::Erf, x);
        for (x, want) in cases {
            let got = erf(x);
            assert_eq!(got, want as f32, "erf({x}) = {got}, want {want}");
        }
        assert!(erf(f32::NAN).is_nan());
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert!(erf(-0.0).is_sign_negative());
    }

    #[test]
    fn integer_and_bool_unary() {
        let x = Tensor::i32(vec![5], vec![i32::MIN, -5, 0, 5, i32::MAX]);
        assert_eq!(un(UnaryOp::Neg, &x).data(), Data::I32(vec![i32::MIN, 5, 0, -5, -i32::MAX]));
        assert_eq!(un(UnaryOp::Abs, &x).data(), Data::I32(vec![i32::MIN, 5, 0, 5, i32::MAX]));
        assert_eq!(un(UnaryOp::Relu, &x).data(), Data::I32(vec![0, 0, 0, 5, i32::MAX]));
        assert_eq!(un(UnaryOp::Sign, &x).data(), Data::I32(vec![-1, -1, 0, 1, 1]));
        // Bounds convert toward zero: [-1.5, 3.7] -> [-1, 3]; infinite bounds saturate.
        assert_eq!(un(UnaryOp::Clip { lo: -1.5, hi: 3.7 }, &x).data(), Data::I32(vec![-1, -1, 0, 3, 3]));
        let open = UnaryOp::Clip { lo: f64::NEG_INFINITY, hi: f64::INFINITY };
        assert_eq!(un(open, &x).data(), x.data());
        let y = Tensor::i64(vec![2], vec![i64::MIN, 9]);
        assert_eq!(un(UnaryOp::Clip { lo: 0.0, hi: 8.0 }, &y).data(), Data::I64(vec![0, 8]));
        let b = Tensor::bool(vec![2], vec![false, true]);
        assert_eq!(un(UnaryOp::Clip { lo: 1.0, hi: 1.0 }, &b).data(), Data::Bool(vec![true, true]));
        assert_eq!(un(UnaryOp::Abs, &b).data(), b.data());
    }

    #[test]
    fn where_broadcasts_all_three() {
        let c = Tensor::bool(vec![2, 1], vec![true, false]);
        let x = Tensor::i64(vec![3], vec![1, 2, 3]);
        let y = Tensor::i64(vec![], vec![9]);
        assert_eq!(run(Op::Where, &[&c, &x, &y]).data(), Data::I64(vec![1, 2, 3, 9, 9, 9]));
        let c2 = Tensor::bool(vec![3], vec![false, true, false]);
        let xf = Tensor::f32(vec![2, 1], vec![1.0, 2.0]);
        let yf = Tensor::f32(vec![1], vec![0.0]);
        assert_f32(&run(Op::Where, &[&c2, &xf, &yf]), &[2, 3], &[0., 1., 0., 0., 2., 0.], 0.0);
    }

    #[test]
    fn cast_truncates_wraps_and_tests_nonzero() {
        let cast = |x: &Tensor, to| run(Op::cast(to), &[x]).data();
        let f = Tensor::f32(vec![5], vec![-1.7, 1.7, f32::NAN, 3e10, -0.0]);
        assert_eq!(cast(&f, DType::I32), Data::I32(vec![-1, 1, 0, i32::MAX, 0]));
        // 3e10 as f32 is 30000001024.
        assert_eq!(cast(&f, DType::I64), Data::I64(vec![-1, 1, 0, 30_000_001_024, 0]));
        assert_eq!(cast(&f, DType::Bool), Data::Bool(vec![true, true, true, true, false]));
        let l = Tensor::i64(vec![3], vec![(1 << 32) + 5, -1, 16_777_217]);
        assert_eq!(cast(&l, DType::I32), Data::I32(vec![5, -1, 16_777_217]));
        assert_eq!(cast(&l, DType::F32), Data::F32(vec![4_294_967_300.0, -1.0, 16_777_216.0]));
        let b = Tensor::bool(vec![2], vec![true, false]);
        assert_eq!(cast(&b, DType::F32), Data::F32(vec![1.0, 0.0]));
        assert_eq!(cast(&b, DType::I64), Data::I64(vec![1, 0]));
        let i = Tensor::i32(vec![2], vec![0, -3]);
        assert_eq!(cast(&i, DType::Bool), Data::Bool(vec![false, true]));
        assert_eq!(cast(&i, DType::I64), Data::I64(vec![0, -3]));
    }
}
