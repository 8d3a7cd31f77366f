//! Scalar expression codegen: the body of a kernel at one point of its domain.

use inkwell::intrinsics::Intrinsic;
use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicMetadataValueEnum, BasicValueEnum, FloatValue, FunctionValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};

use kiln_ir::lir::{Combine, Expr, Kernel, Scalar};
use kiln_ir::minifloat::E8M0Round;
use kiln_ir::op::{BinaryOp, CmpOp, UnaryOp};
use kiln_ir::DType;

use crate::codegen::{llvm_err, BackendResult, CodeGen};

pub struct Env<'a, 'ctx> {
    pub k: &'a Kernel,
    pub bases: &'a [PointerValue<'ctx>],
}

/// A constant of `ty`'s register type (the scalar is converted if its own type differs).
pub fn scalar<'ctx>(g: &CodeGen<'ctx>, s: Scalar, ty: DType) -> BackendResult<BasicValueEnum<'ctx>> {
    let ty = ty.compute();
    if let (Scalar::I64(x), DType::I64) = (s, ty) {
        return Ok(g.i64(x).into());
    }
    let x = match s {
        Scalar::F32(x) => x as f64,
        Scalar::F64(x) => x,
        Scalar::I32(x) => x as f64,
        Scalar::I64(x) => x as f64,
        Scalar::Bool(b) => b as u8 as f64,
    };
    Ok(match (s, ty) {
        (Scalar::F32(x), DType::F32) => g.context.f32_type().const_float(x as f64).into(),
        (_, DType::F32) => g.context.f32_type().const_float(x).into(),
        (_, DType::F64) => g.context.f64_type().const_float(x).into(),
        (Scalar::I32(x), DType::I32) => g.context.i32_type().const_int(x as i64 as u64, true).into(),
        (_, DType::I32) => g.context.i32_type().const_int(x as i64 as u64, true).into(),
        (_, DType::I64) => g.i64(x as i64).into(),
        (_, DType::Bool) => g.context.bool_type().const_int((x != 0.0) as u64, false).into(),
        (_, other) => return Err(llvm_err(format!("a constant of storage type {other}"))),
    })
}

fn intrinsic<'ctx>(g: &CodeGen<'ctx>, name: &str, tys: &[BasicTypeEnum<'ctx>]) -> BackendResult<FunctionValue<'ctx>> {
    let i = Intrinsic::find(name).ok_or_else(|| llvm_err(format!("no intrinsic {name}")))?;
    i.get_declaration(&g.module, tys).ok_or_else(|| llvm_err(format!("cannot declare {name}")))
}

fn call<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    args: &[BasicValueEnum<'ctx>],
) -> BackendResult<BasicValueEnum<'ctx>> {
    let args: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
    let c = g.builder.build_call(f, &args, "call").map_err(llvm_err)?;
    c.try_as_basic_value().basic().ok_or_else(|| llvm_err("call returned void"))
}

/// An overloaded float intrinsic, declared for the type of the first argument.
fn fcall<'ctx>(g: &CodeGen<'ctx>, name: &str, args: &[FloatValue<'ctx>]) -> BackendResult<FloatValue<'ctx>> {
    let ft: BasicTypeEnum = args[0].get_type().into();
    let f = intrinsic(g, name, &[ft])?;
    Ok(call(g, f, &args.iter().map(|&a| a.into()).collect::<Vec<_>>())?.into_float_value())
}

/// A libm function `double name(double)`, or its `float namef(float)` form for f32 (declared
/// on first use).
fn libm<'ctx>(g: &CodeGen<'ctx>, name: &str, x: FloatValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
    let t = x.get_type();
    let name = if t == g.context.f32_type() { format!("{name}f") } else { name.to_string() };
    let f = g
        .module
        .get_function(&name)
        .unwrap_or_else(|| g.module.add_function(&name, t.fn_type(&[t.into()], false), None));
    Ok(call(g, f, &[x.into()])?.into_float_value())
}

/// Whether the module is GPU code (its triple was set before generation).
fn is_ptx(g: &CodeGen) -> bool {
    g.module.get_triple().as_str().to_bytes().starts_with(b"nvptx")
}

fn is_f32(g: &CodeGen, x: FloatValue) -> bool {
    x.get_type() == g.context.f32_type()
}

/// f32 `exp` on a scalar: [`crate::math::exp`].
fn exp_f32<'ctx>(g: &CodeGen<'ctx>, x: FloatValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
    Ok(crate::math::exp(g, x.into())?.into_float_value())
}

/// `x^c` for a constant small nonzero integer `c`: multiplications, which vectorize, instead
/// of a `pow` call per element.
fn pow_const<'ctx>(g: &CodeGen<'ctx>, x: FloatValue<'ctx>, c: f64) -> BackendResult<Option<FloatValue<'ctx>>> {
    let b = &g.builder;
    if c.fract() != 0.0 || c.abs() > 4.0 || c == 0.0 {
        return Ok(None);
    }
    let mut y = x;
    for _ in 1..c.abs() as usize {
        y = b.build_float_mul(y, x, "pw").map_err(llvm_err)?;
    }
    if c < 0.0 {
        y = b.build_float_div(fconst(x, 1.0), y, "rp").map_err(llvm_err)?;
    }
    Ok(Some(y))
}

/// f32 `pow` on PTX, which has no `pow`: `e^{y·ln|x|}`, the logarithm from PTX's base-2
/// instruction (`lg2.approx`, 2^-22 relative), the exponential from [`exp_f32`]; the sign
/// for a negative base and an odd integer exponent, NaN for a negative base and a
/// fractional one, and IEEE's values for a zero base and a zero exponent. The relative
/// error grows with `|y·ln x|` (about 1e-6 for results near 1e±10).
fn pow_ptx<'ctx>(g: &CodeGen<'ctx>, x: FloatValue<'ctx>, y: FloatValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
    let b = &g.builder;
    let t = g.context.f32_type();
    let lg2 = g
        .module
        .get_function("llvm.nvvm.lg2.approx.f")
        .unwrap_or_else(|| g.module.add_function("llvm.nvvm.lg2.approx.f", t.fn_type(&[t.into()], false), None));
    let ax = fcall(g, "llvm.fabs", &[x])?;
    let l2 = call(g, lg2, &[ax.into()])?.into_float_value();
    let ln = b.build_float_mul(l2, fconst(x, std::f64::consts::LN_2), "ln").map_err(llvm_err)?;
    let r = exp_f32(g, b.build_float_mul(y, ln, "yln").map_err(llvm_err)?)?;
    let yi = fcall(g, "llvm.trunc", &[y])?;
    let integral = fcmp(g, FloatPredicate::OEQ, yi, y)?;
    let half = b.build_float_mul(y, fconst(y, 0.5), "h").map_err(llvm_err)?;
    let odd = b
        .build_and(integral, fcmp(g, FloatPredicate::UNE, fcall(g, "llvm.trunc", &[half])?, half)?, "odd")
        .map_err(llvm_err)?;
    let neg = fcmp(g, FloatPredicate::OLT, x, fconst(x, 0.0))?;
    let flip = b.build_and(neg, odd, "flip").map_err(llvm_err)?;
    let r = fsel(g, flip, b.build_float_neg(r, "nr").map_err(llvm_err)?, r)?;
    let not_integral = b.build_not(integral, "ni").map_err(llvm_err)?;
    let r = fsel(g, b.build_and(neg, not_integral, "nan").map_err(llvm_err)?, fconst(x, f64::NAN), r)?;
    let at_zero = fsel(g, fcmp(g, FloatPredicate::OLT, y, fconst(y, 0.0))?, fconst(x, f64::INFINITY), fconst(x, 0.0))?;
    let r = fsel(g, fcmp(g, FloatPredicate::OEQ, x, fconst(x, 0.0))?, at_zero, r)?;
    fsel(g, fcmp(g, FloatPredicate::OEQ, y, fconst(y, 0.0))?, fconst(x, 1.0), r)
}

/// A constant of the float type of `like`.
fn fconst<'ctx>(like: FloatValue<'ctx>, x: f64) -> FloatValue<'ctx> {
    like.get_type().const_float(x)
}

fn fsel<'ctx>(
    g: &CodeGen<'ctx>,
    c: IntValue<'ctx>,
    a: FloatValue<'ctx>,
    b: FloatValue<'ctx>,
) -> BackendResult<FloatValue<'ctx>> {
    Ok(g.builder.build_select(c, a, b, "sel").map_err(llvm_err)?.into_float_value())
}

fn isel<'ctx>(
    g: &CodeGen<'ctx>,
    c: IntValue<'ctx>,
    a: IntValue<'ctx>,
    b: IntValue<'ctx>,
) -> BackendResult<IntValue<'ctx>> {
    Ok(g.builder.build_select(c, a, b, "sel").map_err(llvm_err)?.into_int_value())
}

fn fcmp<'ctx>(
    g: &CodeGen<'ctx>,
    p: FloatPredicate,
    a: FloatValue<'ctx>,
    b: FloatValue<'ctx>,
) -> BackendResult<IntValue<'ctx>> {
    g.builder.build_float_compare(p, a, b, "fc").map_err(llvm_err)
}

fn icmp<'ctx>(
    g: &CodeGen<'ctx>,
    p: IntPredicate,
    a: IntValue<'ctx>,
    b: IntValue<'ctx>,
) -> BackendResult<IntValue<'ctx>> {
    g.builder.build_int_compare(p, a, b, "ic").map_err(llvm_err)
}

/// Ordering predicates: signed for integers, unsigned for bool (`i1`, where true is -1 signed).
fn gt_pred(t: inkwell::types::IntType) -> IntPredicate {
    if t.get_bit_width() == 1 {
        IntPredicate::UGT
    } else {
        IntPredicate::SGT
    }
}

fn lt_pred(t: inkwell::types::IntType) -> IntPredicate {
    if t.get_bit_width() == 1 {
        IntPredicate::ULT
    } else {
        IntPredicate::SLT
    }
}

fn unary_f<'ctx>(g: &CodeGen<'ctx>, op: UnaryOp, x: FloatValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
    let b = &g.builder;
    let zero = fconst(x, 0.0);
    let one = fconst(x, 1.0);
    Ok(match op {
        UnaryOp::Neg => b.build_float_neg(x, "neg").map_err(llvm_err)?,
        UnaryOp::Abs => fcall(g, "llvm.fabs", &[x])?,
        UnaryOp::Sqrt => fcall(g, "llvm.sqrt", &[x])?,
        UnaryOp::Reciprocal => b.build_float_div(one, x, "rcp").map_err(llvm_err)?,
        UnaryOp::Exp if is_f32(g, x) => exp_f32(g, x)?,
        UnaryOp::Exp => fcall(g, "llvm.exp", &[x])?,
        // PTX has no `log`: its base-2 logarithm instruction (lg2.approx, relative error
        // 2^-22), scaled.
        UnaryOp::Log if is_f32(g, x) && is_ptx(g) => {
            let f = g.module.get_function("llvm.nvvm.lg2.approx.f").unwrap_or_else(|| {
                let t = g.context.f32_type();
                g.module.add_function("llvm.nvvm.lg2.approx.f", t.fn_type(&[t.into()], false), None)
            });
            let l2 = call(g, f, &[x.into()])?.into_float_value();
            b.build_float_mul(l2, fconst(x, std::f64::consts::LN_2), "ln").map_err(llvm_err)?
        }
        UnaryOp::Log => fcall(g, "llvm.log", &[x])?,
        UnaryOp::Floor => fcall(g, "llvm.floor", &[x])?,
        UnaryOp::Ceil => fcall(g, "llvm.ceil", &[x])?,
        UnaryOp::Round => fcall(g, "llvm.roundeven", &[x])?,
        UnaryOp::Relu => fsel(g, fcmp(g, FloatPredicate::OLT, x, zero)?, zero, x)?,
        UnaryOp::Sigmoid if is_f32(g, x) => crate::math::sigmoid(g, x.into())?.into_float_value(),
        UnaryOp::Sigmoid => {
            // e = e^{-|x|} ≤ 1: 1/(1+e) for x ≥ 0, e/(1+e) below (no overflow, and the tiny
            // results of very negative x keep their precision).
            let na = b.build_float_neg(fcall(g, "llvm.fabs", &[x])?, "na").map_err(llvm_err)?;
            let e = fcall(g, "llvm.exp", &[na])?;
            let num = fsel(g, fcmp(g, FloatPredicate::OLT, x, zero)?, e, one)?;
            b.build_float_div(num, b.build_float_add(one, e, "d").map_err(llvm_err)?, "sig").map_err(llvm_err)?
        }
        UnaryOp::Tanh if is_f32(g, x) => crate::math::tanh(g, x.into())?.into_float_value(),
        UnaryOp::Tanh => libm(g, "tanh", x)?,
        UnaryOp::Erf if is_f32(g, x) => crate::math::erf(g, x.into())?.into_float_value(),
        UnaryOp::Erf => libm(g, "erf", x)?,
        UnaryOp::Sin => libm(g, "sin", x)?,
        UnaryOp::Cos => libm(g, "cos", x)?,
        UnaryOp::Tan => libm(g, "tan", x)?,
        UnaryOp::Asin => libm(g, "asin", x)?,
        UnaryOp::Acos => libm(g, "acos", x)?,
        UnaryOp::Atan => libm(g, "atan", x)?,
        UnaryOp::Sign => {
            let pos = fsel(g, fcmp(g, FloatPredicate::OGT, x, zero)?, one, x)?;
            fsel(
                g,
                fcmp(g, FloatPredicate::OLT, x, zero)?,
                fconst(x, -1.0),
                fsel(g, fcmp(g, FloatPredicate::OEQ, x, zero)?, zero, pos)?,
            )?
        }
        UnaryOp::LeakyRelu { alpha } => {
            let ax = b.build_float_mul(fconst(x, alpha as f64), x, "ax").map_err(llvm_err)?;
            fsel(g, fcmp(g, FloatPredicate::OLT, x, zero)?, ax, x)?
        }
        UnaryOp::HardSigmoid { alpha, beta } => {
            let y = b.build_float_mul(fconst(x, alpha as f64), x, "ax").map_err(llvm_err)?;
            let y = b.build_float_add(y, fconst(x, beta as f64), "axb").map_err(llvm_err)?;
            let y = fcall(g, "llvm.minnum", &[y, one])?;
            fcall(g, "llvm.maxnum", &[y, zero])?
        }
        UnaryOp::Clip { lo, hi } => {
            // The bounds in the element type (f32 bounds rounded as the reference does).
            let round = |v: f64| if x.get_type() == g.context.f32_type() { v as f32 as f64 } else { v };
            let (lo, hi) = (fconst(x, round(lo)), fconst(x, round(hi)));
            let y = fsel(g, fcmp(g, FloatPredicate::OLT, x, lo)?, lo, x)?;
            fsel(g, fcmp(g, FloatPredicate::OGT, y, hi)?, hi, y)?
        }
        UnaryOp::Not => return Err(llvm_err("not on a float")),
    })
}

fn unary_i<'ctx>(g: &CodeGen<'ctx>, op: UnaryOp, x: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
    let t = x.get_type();
    let zero = t.const_zero();
    let b = &g.builder;
    Ok(match op {
        UnaryOp::Not => b.build_not(x, "not").map_err(llvm_err)?,
        UnaryOp::Neg => b.build_int_neg(x, "neg").map_err(llvm_err)?,
        UnaryOp::Abs => isel(g, icmp(g, IntPredicate::SLT, x, zero)?, b.build_int_neg(x, "n").map_err(llvm_err)?, x)?,
        UnaryOp::Relu => isel(g, icmp(g, IntPredicate::SLT, x, zero)?, zero, x)?,
        UnaryOp::Sign => {
            let one = t.const_int(1, true);
            let m1 = t.const_all_ones();
            isel(
                g,
                icmp(g, IntPredicate::SGT, x, zero)?,
                one,
                isel(g, icmp(g, IntPredicate::SLT, x, zero)?, m1, zero)?,
            )?
        }
        UnaryOp::Clip { lo, hi } => {
            // Bounds saturate to the register's range (±inf for absent bounds).
            let w = t.get_bit_width();
            let (tmin, tmax) = if w >= 64 { (i64::MIN, i64::MAX) } else { (-(1i64 << (w - 1)), (1i64 << (w - 1)) - 1) };
            let bound = |v: f64| (v.max(tmin as f64).min(tmax as f64) as i64).clamp(tmin, tmax) as u64;
            let (lo, hi) = (t.const_int(bound(lo), true), t.const_int(bound(hi), true));
            let y = isel(g, icmp(g, IntPredicate::SLT, x, lo)?, lo, x)?;
            isel(g, icmp(g, IntPredicate::SGT, y, hi)?, hi, y)?
        }
        UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round => x,
        other => return Err(llvm_err(format!("{other:?} on an integer"))),
    })
}

/// Lets LLVM fuse a multiply and an add into one FMA (more accurate, not less).
fn contract(v: FloatValue) -> FloatValue {
    if let Some(i) = v.as_instruction() {
        let _ = i.set_fast_math_flags(inkwell::values::FastMathFlags::AllowContract);
    }
    v
}

fn binary_f<'ctx>(
    g: &CodeGen<'ctx>,
    op: BinaryOp,
    a: FloatValue<'ctx>,
    c: FloatValue<'ctx>,
) -> BackendResult<FloatValue<'ctx>> {
    let b = &g.builder;
    Ok(match op {
        BinaryOp::Add => contract(b.build_float_add(a, c, "add").map_err(llvm_err)?),
        BinaryOp::Sub => contract(b.build_float_sub(a, c, "sub").map_err(llvm_err)?),
        BinaryOp::Mul => contract(b.build_float_mul(a, c, "mul").map_err(llvm_err)?),
        BinaryOp::Div => b.build_float_div(a, c, "div").map_err(llvm_err)?,
        BinaryOp::Pow => match c.get_constant().map(|(v, _)| v).map(|k| pow_const(g, a, k)).transpose()?.flatten() {
            Some(y) => y,
            None if is_f32(g, a) && is_ptx(g) => pow_ptx(g, a, c)?,
            None => fcall(g, "llvm.pow", &[a, c])?,
        },
        BinaryOp::Max => fcall(g, "llvm.maximum", &[a, c])?,
        BinaryOp::Min => fcall(g, "llvm.minimum", &[a, c])?,
        BinaryOp::Mod { fmod: true } => b.build_float_rem(a, c, "rem").map_err(llvm_err)?,
        // numpy `mod`: the remainder takes the divisor's sign (a zero one too).
        BinaryOp::Mod { fmod: false } => {
            let zero = fconst(a, 0.0);
            let r = b.build_float_rem(a, c, "rem").map_err(llvm_err)?;
            let differ = b
                .build_xor(fcmp(g, FloatPredicate::OLT, r, zero)?, fcmp(g, FloatPredicate::OLT, c, zero)?, "d")
                .map_err(llvm_err)?;
            let nz = fcmp(g, FloatPredicate::ONE, r, zero)?;
            let fixed = fsel(
                g,
                b.build_and(nz, differ, "fix").map_err(llvm_err)?,
                b.build_float_add(r, c, "rc").map_err(llvm_err)?,
                r,
            )?;
            let signed_zero = fcall(g, "llvm.copysign", &[zero, c])?;
            fsel(g, fcmp(g, FloatPredicate::OEQ, r, zero)?, signed_zero, fixed)?
        }
        BinaryOp::And | BinaryOp::Or | BinaryOp::Xor | BinaryOp::Shl | BinaryOp::Shr => {
            return Err(llvm_err("bitwise op on floats"))
        }
    })
}

fn binary_i<'ctx>(
    g: &CodeGen<'ctx>,
    op: BinaryOp,
    a: IntValue<'ctx>,
    c: IntValue<'ctx>,
) -> BackendResult<IntValue<'ctx>> {
    let b = &g.builder;
    let t = a.get_type();
    let zero = t.const_zero();
    let one = t.const_int(1, false);
    let m1 = t.const_all_ones();
    // Division by zero or MIN / -1 must not trap: use a safe divisor and patch the result.
    let safe = |c: IntValue<'ctx>| -> BackendResult<IntValue<'ctx>> {
        let bad = b
            .build_or(icmp(g, IntPredicate::EQ, c, zero)?, icmp(g, IntPredicate::EQ, c, m1)?, "bad")
            .map_err(llvm_err)?;
        isel(g, bad, one, c)
    };
    Ok(match op {
        BinaryOp::Add => b.build_int_add(a, c, "add").map_err(llvm_err)?,
        BinaryOp::Sub => b.build_int_sub(a, c, "sub").map_err(llvm_err)?,
        BinaryOp::Mul => b.build_int_mul(a, c, "mul").map_err(llvm_err)?,
        BinaryOp::And => b.build_and(a, c, "and").map_err(llvm_err)?,
        BinaryOp::Or => b.build_or(a, c, "or").map_err(llvm_err)?,
        BinaryOp::Xor => b.build_xor(a, c, "xor").map_err(llvm_err)?,
        // Out-of-range amounts (negative or >= the width) give 0 / the sign fill, as in the
        // reference; the shift itself gets a clamped amount so that it is defined.
        BinaryOp::Shl | BinaryOp::Shr => {
            let width = t.const_int(t.get_bit_width() as u64, false);
            let inr = icmp(g, IntPredicate::ULT, c, width)?;
            let amt = isel(g, inr, c, zero)?;
            if op == BinaryOp::Shl {
                isel(g, inr, b.build_left_shift(a, amt, "shl").map_err(llvm_err)?, zero)?
            } else {
                let fill = isel(g, icmp(g, IntPredicate::SLT, a, zero)?, m1, zero)?;
                isel(g, inr, b.build_right_shift(a, amt, true, "shr").map_err(llvm_err)?, fill)?
            }
        }
        BinaryOp::Max => isel(g, icmp(g, gt_pred(t), a, c)?, a, c)?,
        BinaryOp::Min => isel(g, icmp(g, lt_pred(t), a, c)?, a, c)?,
        BinaryOp::Div => {
            let q = b.build_int_signed_div(a, safe(c)?, "q").map_err(llvm_err)?;
            let neg = b.build_int_neg(a, "na").map_err(llvm_err)?;
            let q = isel(g, icmp(g, IntPredicate::EQ, c, m1)?, neg, q)?;
            isel(g, icmp(g, IntPredicate::EQ, c, zero)?, zero, q)?
        }
        BinaryOp::Mod { fmod } => {
            let r = b.build_int_signed_rem(a, safe(c)?, "r").map_err(llvm_err)?;
            let r = isel(g, icmp(g, IntPredicate::EQ, c, m1)?, zero, r)?;
            let r = isel(g, icmp(g, IntPredicate::EQ, c, zero)?, zero, r)?;
            if fmod {
                r
            } else {
                // numpy: the remainder takes the divisor's sign.
                let rz = icmp(g, IntPredicate::NE, r, zero)?;
                let sr = icmp(g, IntPredicate::SLT, r, zero)?;
                let sc = icmp(g, IntPredicate::SLT, c, zero)?;
                let differ = b.build_xor(sr, sc, "d").map_err(llvm_err)?;
                let fix = b.build_and(rz, differ, "fix").map_err(llvm_err)?;
                isel(g, fix, b.build_int_add(r, c, "rc").map_err(llvm_err)?, r)?
            }
        }
        BinaryOp::Pow => {
            let f64t = g.context.f64_type();
            let af = b.build_signed_int_to_float(a, f64t, "af").map_err(llvm_err)?;
            let cf = b.build_signed_int_to_float(c, f64t, "cf").map_err(llvm_err)?;
            let pw = intrinsic(g, "llvm.pow", &[f64t.into()])?;
            let p = call(g, pw, &[af.into(), cf.into()])?.into_float_value();
            b.build_float_to_signed_int(p, t, "pi").map_err(llvm_err)?
        }
    })
}

/// Rounds an f32 to the nearest bf16 (ties to even; NaN stays a quiet NaN), kept in f32.
fn round_bf16<'ctx>(g: &CodeGen<'ctx>, x: FloatValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
    let b = &g.builder;
    let i32t = g.context.i32_type();
    let k = |v: u64| i32t.const_int(v, false);
    let bits = b.build_bit_cast(x, i32t, "bits").map_err(llvm_err)?.into_int_value();
    let lsb =
        b.build_and(b.build_right_shift(bits, k(16), false, "hi").map_err(llvm_err)?, k(1), "lsb").map_err(llvm_err)?;
    let bias = b.build_int_add(lsb, k(0x7fff), "bias").map_err(llvm_err)?;
    let rounded = b.build_int_add(bits, bias, "r").map_err(llvm_err)?;
    let quiet = b.build_or(bits, k(0x0040_0000), "q").map_err(llvm_err)?;
    let nan = fcmp(g, FloatPredicate::UNO, x, x)?;
    let r = isel(g, nan, quiet, rounded)?;
    let r = b.build_and(r, k(0xffff_0000), "m").map_err(llvm_err)?;
    Ok(b.build_bit_cast(r, g.context.f32_type(), "bf").map_err(llvm_err)?.into_float_value())
}

/// Converts between dtypes with ONNX Cast semantics, matching the reference evaluation:
/// float→int truncates toward zero, saturating to i32 for i32 and to i64 otherwise (then
/// wrapping to narrower integers); int→int wraps; floats round to nearest even; bf16 results
/// are rounded from f32. Registers of storage types hold their compute type (see
/// [`CodeGen::reg_ty`]), so a u8 result is wrapped to 8 bits and zero-extended. A small float
/// result is rounded through its code (`crate::minifloat`, with `saturate`) and held as f32;
/// a small source is already its compute type in the register.
/// Whether a float expression's value always lies well within i32's range unless it is NaN:
/// a `Clip` to bounds within ±2^30 (whatever f32 rounds them to), maybe rounded after (Round,
/// Floor, Ceil keep it within the same bounds).
pub fn within_i32(e: &Expr) -> bool {
    const LIMIT: f64 = (1u32 << 30) as f64;
    match e {
        Expr::Unary(UnaryOp::Clip { lo, hi }, _) => *lo >= -LIMIT && *hi <= LIMIT,
        Expr::Unary(UnaryOp::Round | UnaryOp::Floor | UnaryOp::Ceil, a) => within_i32(a),
        _ => false,
    }
}

fn cast<'ctx>(
    g: &CodeGen<'ctx>,
    v: BasicValueEnum<'ctx>,
    from: DType,
    to: DType,
    saturate: bool,
    round: E8M0Round,
) -> BackendResult<BasicValueEnum<'ctx>> {
    let b = &g.builder;
    if from == to {
        return Ok(v);
    }
    let from = if from.is_small() { from.compute() } else { from };
    if from == to {
        return Ok(v);
    }
    let to_reg = g.reg_ty(to);
    let unsigned_src = from == DType::Bool || (from.is_int() && !from.is_signed());
    if to == DType::Bool {
        return Ok(if v.is_float_value() {
            let x = v.into_float_value();
            fcmp(g, FloatPredicate::UNE, x, fconst(x, 0.0))?.into()
        } else {
            let x = v.into_int_value();
            icmp(g, IntPredicate::NE, x, x.get_type().const_zero())?.into()
        });
    }
    if to.is_float() {
        // Into the float type that `to` is rounded from: f64 for f64 and f16 (one rounding
        // to f16), f32 otherwise.
        let wide = if to == DType::F16 && from == DType::F64 { g.context.f64_type() } else { to_reg.into_float_type() };
        let wide = if to == DType::F64 { g.context.f64_type() } else { wide };
        let x = if v.is_float_value() {
            b.build_float_cast(v.into_float_value(), wide, "fc").map_err(llvm_err)?
        } else if unsigned_src {
            b.build_unsigned_int_to_float(v.into_int_value(), wide, "uf").map_err(llvm_err)?
        } else {
            b.build_signed_int_to_float(v.into_int_value(), wide, "sf").map_err(llvm_err)?
        };
        return Ok(match to {
            DType::F16 => {
                let h = b.build_float_trunc(x, g.context.f16_type(), "h").map_err(llvm_err)?;
                b.build_float_ext(h, to_reg.into_float_type(), "hx").map_err(llvm_err)?.into()
            }
            DType::BF16 => round_bf16(g, x)?.into(),
            d => match d.minifloat() {
                Some(f) => {
                    let c = crate::minifloat::encode(g, f, x, saturate, round)?;
                    crate::minifloat::decode(g, f, c)?.into()
                }
                None => x.into(),
            },
        });
    }
    let i64t = g.context.i64_type();
    // The value as i64 (for u64: its bits).
    let wide: IntValue = if v.is_float_value() {
        let x = v.into_float_value();
        let sat = |name: &str, t: inkwell::types::IntType<'ctx>| -> BackendResult<IntValue<'ctx>> {
            let f = intrinsic(g, name, &[t.into(), x.get_type().into()])?;
            Ok(call(g, f, &[x.into()])?.into_int_value())
        };
        match to {
            DType::I32 => return Ok(sat("llvm.fptosi.sat", g.context.i32_type())?.into()),
            DType::U64 => {
                let nonneg = fcmp(g, FloatPredicate::OGE, x, fconst(x, 0.0))?;
                isel(g, nonneg, sat("llvm.fptoui.sat", i64t)?, sat("llvm.fptosi.sat", i64t)?)?
            }
            _ => sat("llvm.fptosi.sat", i64t)?,
        }
    } else {
        let x = v.into_int_value();
        if x.get_type().get_bit_width() == 64 {
            x
        } else if unsigned_src {
            b.build_int_z_extend(x, i64t, "z").map_err(llvm_err)?
        } else {
            b.build_int_s_extend(x, i64t, "s").map_err(llvm_err)?
        }
    };
    let reg = to_reg.into_int_type();
    if to.bits() == reg.get_bit_width() {
        return Ok(if reg.get_bit_width() == 64 {
            wide.into()
        } else {
            b.build_int_truncate(wide, reg, "t").map_err(llvm_err)?.into()
        });
    }
    // A narrow integer: wrap to its width, then extend to the register.
    let width = std::num::NonZeroU32::new(to.bits()).ok_or_else(|| llvm_err("a zero-width integer"))?;
    let nt = g.context.custom_width_int_type(width).map_err(llvm_err)?;
    let narrow = b.build_int_truncate(wide, nt, "n").map_err(llvm_err)?;
    Ok(if to.is_signed() {
        b.build_int_s_extend(narrow, reg, "sx").map_err(llvm_err)?.into()
    } else {
        b.build_int_z_extend(narrow, reg, "zx").map_err(llvm_err)?.into()
    })
}

/// `a ⊕ b` for a reduction. Float sums may be reassociated so that reductions vectorize.
pub fn combine<'ctx>(
    g: &CodeGen<'ctx>,
    c: Combine,
    a: BasicValueEnum<'ctx>,
    x: BasicValueEnum<'ctx>,
) -> BackendResult<BasicValueEnum<'ctx>> {
    use inkwell::values::FastMathFlags as F;
    if a.is_float_value() {
        let (a, x) = (a.into_float_value(), x.into_float_value());
        let v = match c {
            Combine::Add => g.builder.build_float_add(a, x, "sum").map_err(llvm_err)?,
            Combine::Mul => g.builder.build_float_mul(a, x, "prod").map_err(llvm_err)?,
            Combine::Max => fcall(g, "llvm.maxnum", &[a, x])?,
            Combine::Min => fcall(g, "llvm.minnum", &[a, x])?,
        };
        if let Some(i) = v.as_instruction() {
            let _ = i.set_fast_math_flags(F::AllowReassoc | F::AllowContract);
        }
        return Ok(v.into());
    }
    let (a, x) = (a.into_int_value(), x.into_int_value());
    Ok(match c {
        Combine::Add => g.builder.build_int_add(a, x, "sum").map_err(llvm_err)?,
        Combine::Mul => g.builder.build_int_mul(a, x, "prod").map_err(llvm_err)?,
        Combine::Max => isel(g, icmp(g, gt_pred(a.get_type()), a, x)?, a, x)?,
        Combine::Min => isel(g, icmp(g, lt_pred(a.get_type()), a, x)?, a, x)?,
    }
    .into())
}

impl<'a, 'ctx> Env<'a, 'ctx> {
    fn dtypes(&self) -> Vec<DType> {
        self.k.inputs.iter().map(|v| v.dtype).collect()
    }

    /// Generates `e` at the point `vars` of the domain (`acc`: the accumulator in a finalizer).
    pub fn gen(
        &self,
        g: &CodeGen<'ctx>,
        e: &Expr,
        vars: &[IntValue<'ctx>],
        acc: Option<BasicValueEnum<'ctx>>,
    ) -> BackendResult<BasicValueEnum<'ctx>> {
        let ops = self.dtypes();
        let acc_ty = acc.map(|_| self.k.body.dtype(&ops, None));
        let b = &g.builder;
        Ok(match e {
            Expr::Var(d) => vars[*d].into(),
            Expr::Const(s) => scalar(g, *s, s.dtype())?,
            Expr::Acc => acc.ok_or_else(|| llvm_err("accumulator used outside a finalizer"))?,
            Expr::Load { operand, index, pad } => {
                let view = &self.k.inputs[*operand];
                let idx = index
                    .iter()
                    .map(|ix| Ok(self.gen(g, ix, vars, acc)?.into_int_value()))
                    .collect::<BackendResult<Vec<_>>>()?;
                match pad {
                    None => g.load_elem(self.bases[*operand], view.dtype, g.linear(view, &idx)?)?,
                    Some(p) => {
                        let mut inb = g.context.bool_type().const_int(1, false);
                        for (ix, &ext) in idx.iter().zip(&view.extents) {
                            let ok = icmp(g, IntPredicate::ULT, *ix, g.i64(ext as i64))?;
                            inb = b.build_and(inb, ok, "inb").map_err(llvm_err)?;
                        }
                        // Each index clamped into its extent, so that the address stays affine
                        // in the indices that cannot leave it (a padded convolution tap read
                        // along contiguous channels is a vector load, not a gather).
                        let clamped = idx
                            .iter()
                            .zip(&view.extents)
                            .map(|(&ix, &ext)| {
                                let hi = g.i64(ext.max(1) as i64 - 1);
                                let lo = isel(g, icmp(g, IntPredicate::SLT, ix, g.i64(0))?, g.i64(0), ix)?;
                                isel(g, icmp(g, IntPredicate::SGT, lo, hi)?, hi, lo)
                            })
                            .collect::<BackendResult<Vec<_>>>()?;
                        let v = g.load_elem(self.bases[*operand], view.dtype, g.linear(view, &clamped)?)?;
                        let pv = scalar(g, *p, view.dtype)?;
                        b.build_select(inb, v, pv, "pad").map_err(llvm_err)?
                    }
                }
            }
            Expr::Unary(op, a) => {
                let x = self.gen(g, a, vars, acc)?;
                if x.is_float_value() {
                    unary_f(g, *op, x.into_float_value())?.into()
                } else {
                    unary_i(g, *op, x.into_int_value())?.into()
                }
            }
            Expr::Binary(op, a, c) => {
                let (x, y) = (self.gen(g, a, vars, acc)?, self.gen(g, c, vars, acc)?);
                if x.is_float_value() {
                    binary_f(g, *op, x.into_float_value(), y.into_float_value())?.into()
                } else {
                    binary_i(g, *op, x.into_int_value(), y.into_int_value())?.into()
                }
            }
            Expr::Cmp(op, a, c) => {
                let (x, y) = (self.gen(g, a, vars, acc)?, self.gen(g, c, vars, acc)?);
                if x.is_float_value() {
                    let p = match op {
                        CmpOp::Equal => FloatPredicate::OEQ,
                        CmpOp::Less => FloatPredicate::OLT,
                        CmpOp::LessOrEqual => FloatPredicate::OLE,
                        CmpOp::Greater => FloatPredicate::OGT,
                        CmpOp::GreaterOrEqual => FloatPredicate::OGE,
                    };
                    fcmp(g, p, x.into_float_value(), y.into_float_value())?.into()
                } else {
                    let unsigned = a.dtype(&ops, acc_ty) == DType::Bool;
                    let p = match (op, unsigned) {
                        (CmpOp::Equal, _) => IntPredicate::EQ,
                        (CmpOp::Less, false) => IntPredicate::SLT,
                        (CmpOp::LessOrEqual, false) => IntPredicate::SLE,
                        (CmpOp::Greater, false) => IntPredicate::SGT,
                        (CmpOp::GreaterOrEqual, false) => IntPredicate::SGE,
                        (CmpOp::Less, true) => IntPredicate::ULT,
                        (CmpOp::LessOrEqual, true) => IntPredicate::ULE,
                        (CmpOp::Greater, true) => IntPredicate::UGT,
                        (CmpOp::GreaterOrEqual, true) => IntPredicate::UGE,
                    };
                    icmp(g, p, x.into_int_value(), y.into_int_value())?.into()
                }
            }
            Expr::Select(c, a, d) => {
                let cv = self.gen(g, c, vars, acc)?.into_int_value();
                let (x, y) = (self.gen(g, a, vars, acc)?, self.gen(g, d, vars, acc)?);
                b.build_select(cv, x, y, "sel").map_err(llvm_err)?
            }
            Expr::Cast(to, saturate, round, a) => {
                let from = a.dtype(&ops, acc_ty);
                let x = self.gen(g, a, vars, acc)?;
                if from.is_float() && to.is_int() && to.bits() <= 32 && within_i32(a) {
                    // A float known to lie within i32 unless NaN (a clipped value, rounded or
                    // not: every quantize step) converts through i32 with a plain `fptosi`,
                    // which vectorizes (`cvttps2dq`), NaN selected to 0 as the saturating
                    // conversion gives it, rather than through i64, which AVX2 converts one
                    // lane at a time (and `fptosi.sat` to i32, which x86 also scalarizes).
                    let xf = x.into_float_value();
                    let i32t = g.context.i32_type();
                    let v = b.build_float_to_signed_int(xf, i32t, "fi").map_err(llvm_err)?;
                    let nan = fcmp(g, FloatPredicate::UNO, xf, xf)?;
                    let v = isel(g, nan, i32t.const_zero(), v)?;
                    cast(g, v.into(), DType::I32, *to, *saturate, *round)?
                } else {
                    cast(g, x, from, *to, *saturate, *round)?
                }
            }
        })
    }
}
