//! Inline f32 approximations of `exp`, `tanh`, `erf` and the logistic sigmoid, written once
//! for a scalar `float` and for a vector `<N x float>`: the scalar path
//! ([`crate::expr`]) calls them per element (LLVM's loop vectorizer widens the loops), and
//! the explicit vector paths ([`crate::vector::vgen`]: the epilogue of a matrix product,
//! vector rows) call them on whole vectors, so that a GELU or a tanh fused into a GEMM runs
//! on the accumulator registers.
//!
//! The operations dispatch on the value's kind ([`BasicValueEnum::FloatValue`] or
//! [`BasicValueEnum::VectorValue`]); constants are splatted to the vector's width.

use inkwell::intrinsics::Intrinsic;
use inkwell::types::{BasicTypeEnum, VectorType};
use inkwell::values::{BasicMetadataValueEnum, BasicValueEnum as V, FastMathFlags};
use inkwell::FloatPredicate;

use crate::codegen::{llvm_err, BackendResult, CodeGen};

/// A binary builder method on two floats or two float vectors.
macro_rules! fbin {
    ($s:expr, $m:ident, $a:expr, $b:expr) => {
        match ($a, $b) {
            (V::FloatValue(x), V::FloatValue(y)) => $s.g.builder.$m(x, y, "m").map(V::from).map_err(llvm_err),
            (V::VectorValue(x), V::VectorValue(y)) => $s.g.builder.$m(x, y, "m").map(V::from).map_err(llvm_err),
            _ => Err(llvm_err("math: mismatched operands")),
        }
    };
}

/// A binary builder method on two integers or two integer vectors.
macro_rules! ibin {
    ($s:expr, $m:ident, $a:expr, $b:expr) => {
        match ($a, $b) {
            (V::IntValue(x), V::IntValue(y)) => $s.g.builder.$m(x, y, "i").map(V::from).map_err(llvm_err),
            (V::VectorValue(x), V::VectorValue(y)) => $s.g.builder.$m(x, y, "i").map(V::from).map_err(llvm_err),
            _ => Err(llvm_err("math: mismatched operands")),
        }
    };
}

/// Builds f32 arithmetic on values of one shape: a scalar, or vectors of `lanes`.
struct F<'a, 'ctx> {
    g: &'a CodeGen<'ctx>,
    lanes: Option<u32>,
}

impl<'a, 'ctx> F<'a, 'ctx> {
    fn of(g: &'a CodeGen<'ctx>, x: V<'ctx>) -> F<'a, 'ctx> {
        let lanes = match x {
            V::VectorValue(v) => Some(v.get_type().get_size()),
            _ => None,
        };
        F { g, lanes }
    }

    fn splat(&self, s: V<'ctx>) -> V<'ctx> {
        match self.lanes {
            Some(n) => VectorType::const_vector(&vec![s; n as usize]).into(),
            None => s,
        }
    }

    /// An f32 constant.
    fn c(&self, x: f64) -> V<'ctx> {
        self.splat(self.g.context.f32_type().const_float(x).into())
    }

    /// An i32 constant.
    fn ci(&self, x: i64) -> V<'ctx> {
        self.splat(self.g.context.i32_type().const_int(x as u64, true).into())
    }

    fn i32_type(&self) -> BasicTypeEnum<'ctx> {
        let t = self.g.context.i32_type();
        match self.lanes {
            Some(n) => t.vec_type(n).into(),
            None => t.into(),
        }
    }

    fn f32_type(&self) -> BasicTypeEnum<'ctx> {
        let t = self.g.context.f32_type();
        match self.lanes {
            Some(n) => t.vec_type(n).into(),
            None => t.into(),
        }
    }

    fn mul(&self, a: V<'ctx>, b: V<'ctx>) -> BackendResult<V<'ctx>> {
        fbin!(self, build_float_mul, a, b)
    }

    fn add(&self, a: V<'ctx>, b: V<'ctx>) -> BackendResult<V<'ctx>> {
        fbin!(self, build_float_add, a, b)
    }

    fn sub(&self, a: V<'ctx>, b: V<'ctx>) -> BackendResult<V<'ctx>> {
        fbin!(self, build_float_sub, a, b)
    }

    fn div(&self, a: V<'ctx>, b: V<'ctx>) -> BackendResult<V<'ctx>> {
        fbin!(self, build_float_div, a, b)
    }

    /// `a / b` that may be computed as `a · (1/b)` with the reciprocal estimated (`arcp`):
    /// on x86 vectors a reciprocal estimate and one Newton step (`vrcp14ps`, about 1 ulp)
    /// instead of `vdivps`, which issues once per 10 cycles for 16 lanes and was most of a
    /// SiLU's cost. Scalars are divided exactly (LLVM leaves them alone). For the divisions
    /// inside the functions here, whose own error is larger; not for a model's Div. LLVM
    /// estimates only where no operand is infinite (`ninf`): callers keep both finite.
    ///
    /// Only with AVX-512's 14-bit estimate (the targets with [`CodeGen::native_ldexp`]): AVX2's
    /// `vrcpps` is 12 bits, one Newton step leaving up to 2 ulp, and a GRU's sigmoid gates then
    /// moved its near-zero outputs past ONNX's tolerance (`test_gru_seq_length` on Zen 3).
    fn div_approx(&self, a: V<'ctx>, b: V<'ctx>) -> BackendResult<V<'ctx>> {
        let q = self.div(a, b)?;
        if !self.g.native_ldexp {
            return Ok(q);
        }
        let i = match q {
            V::VectorValue(v) => v.as_instruction(),
            V::FloatValue(v) => v.as_instruction(),
            _ => None,
        };
        if let Some(i) = i {
            let _ = i.set_fast_math_flags(FastMathFlags::AllowReciprocal | FastMathFlags::NoInfs);
        }
        Ok(q)
    }

    fn neg(&self, a: V<'ctx>) -> BackendResult<V<'ctx>> {
        match a {
            V::FloatValue(x) => self.g.builder.build_float_neg(x, "n").map(V::from),
            V::VectorValue(x) => self.g.builder.build_float_neg(x, "n").map(V::from),
            _ => return Err(llvm_err("math: not a float")),
        }
        .map_err(llvm_err)
    }

    /// An overloaded intrinsic (`llvm.fabs`, `llvm.fmuladd`…) on the type of `args[0]`.
    fn call(&self, name: &str, args: &[V<'ctx>]) -> BackendResult<V<'ctx>> {
        let f = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(&self.g.module, &[args[0].get_type()]))
            .ok_or_else(|| llvm_err(format!("cannot declare {name}")))?;
        let args: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
        let c = self.g.builder.build_call(f, &args, "call").map_err(llvm_err)?;
        c.try_as_basic_value().basic().ok_or_else(|| llvm_err("call returned void"))
    }

    fn fma(&self, a: V<'ctx>, b: V<'ctx>, c: V<'ctx>) -> BackendResult<V<'ctx>> {
        self.call("llvm.fmuladd", &[a, b, c])
    }

    /// A comparison: an `i1`, or a vector of them.
    fn cmp(&self, p: FloatPredicate, a: V<'ctx>, b: V<'ctx>) -> BackendResult<V<'ctx>> {
        match (a, b) {
            (V::FloatValue(x), V::FloatValue(y)) => self.g.builder.build_float_compare(p, x, y, "c").map(V::from),
            (V::VectorValue(x), V::VectorValue(y)) => self.g.builder.build_float_compare(p, x, y, "c").map(V::from),
            _ => return Err(llvm_err("math: mismatched operands")),
        }
        .map_err(llvm_err)
    }

    fn and(&self, a: V<'ctx>, b: V<'ctx>) -> BackendResult<V<'ctx>> {
        ibin!(self, build_and, a, b)
    }

    fn sel(&self, c: V<'ctx>, a: V<'ctx>, b: V<'ctx>) -> BackendResult<V<'ctx>> {
        match c {
            V::IntValue(c) => self.g.builder.build_select(c, a, b, "s"),
            V::VectorValue(c) => self.g.builder.build_select(c, a, b, "s"),
            _ => return Err(llvm_err("math: a select needs a bool")),
        }
        .map_err(llvm_err)
    }

    fn to_i32(&self, a: V<'ctx>) -> BackendResult<V<'ctx>> {
        match (a, self.i32_type()) {
            (V::FloatValue(x), BasicTypeEnum::IntType(t)) => {
                self.g.builder.build_float_to_signed_int(x, t, "n").map(V::from)
            }
            (V::VectorValue(x), BasicTypeEnum::VectorType(t)) => {
                self.g.builder.build_float_to_signed_int(x, t, "n").map(V::from)
            }
            _ => return Err(llvm_err("math: mismatched operands")),
        }
        .map_err(llvm_err)
    }

    fn bits_to_f32(&self, a: V<'ctx>) -> BackendResult<V<'ctx>> {
        self.g.builder.build_bit_cast(a, self.f32_type(), "f").map_err(llvm_err)
    }

    /// `Σ c[i]·t^i` by Horner's rule with fused multiply-adds.
    fn horner(&self, t: V<'ctx>, c: &[f64]) -> BackendResult<V<'ctx>> {
        let mut r = self.c(c[c.len() - 1]);
        for &a in c[..c.len() - 1].iter().rev() {
            r = self.fma(r, t, self.c(a))?;
        }
        Ok(r)
    }
}

/// f32 `exp`, inline and vectorizable (LLVM's `llvm.exp` becomes a scalar libm call per
/// element): `x = n·ln2 + r` with `|r| ≤ ln2/2` (Cody–Waite), `e^r` by its Taylor polynomial
/// to degree 6 (error below 1e-7 relative), times `2^n` built in the exponent bits (in two
/// factors, so that results down to the subnormals are right), or where the target has it
/// ([`CodeGen::native_ldexp`]) by one `llvm.ldexp`. Within 2 ulp of the correctly rounded
/// result; overflow gives +inf, underflow 0, NaN stays NaN.
pub fn exp<'ctx>(g: &CodeGen<'ctx>, x: V<'ctx>) -> BackendResult<V<'ctx>> {
    let f = F::of(g, x);
    let nan = f.cmp(FloatPredicate::UNO, x, x)?;
    let (hi, lo) = (f.c(88.72283), f.c(-103.97208));
    // Far below the subnormals (a masked attention score: -3.4e38, or -10000), computed on
    // 0 and answered 0 at the end: a `vscalef` whose result is subnormal takes a microcode
    // assist on Intel cores, and a causal softmax has half its scores masked (GPT-2's
    // softmax exponentials took 14× as long as BERT's unmasked ones).
    let below = f.cmp(FloatPredicate::OLT, x, f.c(-104.0))?;
    let xc = if g.native_ldexp {
        // `2^n` by `llvm.ldexp` below (one `vscalef`, which rounds subnormals and overflows
        // to +inf itself), on x clamped to where n stays small: past 89, `e^r·2^128` is +inf;
        // below -104, `·2^-150` is 0.
        let clamped = f.call("llvm.minnum", &[f.call("llvm.maxnum", &[x, f.c(-104.0)])?, f.c(89.0)])?;
        f.sel(below, f.c(0.0), clamped)?
    } else {
        // Out of range (or NaN), the result is chosen below; compute on 0 meanwhile, so that
        // a masked score (-3.4e38 in attention) never runs subnormal arithmetic, which x86
        // does in slow microcode.
        let inside = f.and(f.cmp(FloatPredicate::OLE, x, hi)?, f.cmp(FloatPredicate::OGE, x, lo)?)?;
        f.sel(inside, x, f.c(0.0))?
    };
    let y = exp_core(g, xc)?;
    if g.native_ldexp {
        return f.sel(nan, x, f.sel(below, f.c(0.0), y)?);
    }
    let y = f.sel(f.cmp(FloatPredicate::OGT, x, hi)?, f.c(f64::INFINITY), y)?;
    let y = f.sel(f.cmp(FloatPredicate::OLT, x, lo)?, f.c(0.0), y)?;
    f.sel(nan, x, y)
}

/// `e^x` for x in [-105, 89] (not NaN): the reduction, the polynomial and the scaling of
/// [`exp`], without its handling of the range. With `2^n` built in the exponent bits (no
/// `llvm.ldexp`), in two factors, so that subnormal results are right.
fn exp_core<'ctx>(g: &CodeGen<'ctx>, xc: V<'ctx>) -> BackendResult<V<'ctx>> {
    let f = F::of(g, xc);
    let n = f.call("llvm.rint", &[f.mul(xc, f.c(std::f64::consts::LOG2_E))?])?;
    // ln 2 split so that n·LN2_HI is exact in f32.
    let r = f.fma(n, f.c(-0.693_145_751_953_125), xc)?;
    let r = f.fma(n, f.c(-1.428_606_765_330_187e-6), r)?;
    let p = f.horner(r, &[1.0, 1.0, 1.0 / 2.0, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0])?;
    let ni = f.to_i32(n)?;
    if g.native_ldexp {
        let ldexp = Intrinsic::find("llvm.ldexp")
            .and_then(|i| i.get_declaration(&g.module, &[p.get_type(), ni.get_type()]))
            .ok_or_else(|| llvm_err("cannot declare llvm.ldexp"))?;
        let y = g.builder.build_call(ldexp, &[p.into(), ni.into()], "ldexp").map_err(llvm_err)?;
        return y.try_as_basic_value().basic().ok_or_else(|| llvm_err("ldexp returned void"));
    }
    let n1 = match (ni, f.ci(1)) {
        (V::IntValue(a), V::IntValue(b)) => g.builder.build_right_shift(a, b, true, "h").map(V::from),
        (V::VectorValue(a), V::VectorValue(b)) => g.builder.build_right_shift(a, b, true, "h").map(V::from),
        _ => return Err(llvm_err("math: mismatched operands")),
    }
    .map_err(llvm_err)?;
    let n2 = ibin!(f, build_int_sub, ni, n1)?;
    let pow2 = |e: V<'ctx>| -> BackendResult<V<'ctx>> {
        let biased = ibin!(f, build_int_add, e, f.ci(127))?;
        f.bits_to_f32(ibin!(f, build_left_shift, biased, f.ci(23))?)
    };
    let y = f.mul(p, pow2(n1)?)?;
    f.mul(y, pow2(n2)?)
}

/// f32 `tanh`, inline: an odd polynomial (least-squares fit of `tanh(x)/x` in `x²`, 1e-7
/// relative) below 0.625, `1 − 2/(e^{2|x|} + 1)` with the sign of x above, where nothing
/// cancels.
pub fn tanh<'ctx>(g: &CodeGen<'ctx>, x: V<'ctx>) -> BackendResult<V<'ctx>> {
    let f = F::of(g, x);
    let a = f.call("llvm.fabs", &[x])?;
    let x2 = f.mul(x, x)?;
    let small = f.horner(
        x2,
        &[
            0.999_999_999_941_626_4,
            -0.333_333_306_389_727_14,
            0.133_332_059_789_532_4,
            -0.053_946_966_058_910_86,
            0.021_702_225_025_349_294,
            -0.008_181_560_007_203_778,
            0.002_146_900_041_017_805_7,
        ],
    )?;
    let small = f.mul(x, small)?;
    // |x| ≥ 10 rounds to ±1 in f32: clamped there (NaN kept), e^{2|x|} stays finite for the
    // division.
    let a10 = f.sel(f.cmp(FloatPredicate::OGT, a, f.c(10.0))?, f.c(10.0), a)?;
    let e = exp(g, f.add(a10, a10)?)?;
    let one = f.c(1.0);
    let q = f.div_approx(f.c(2.0), f.add(e, one)?)?;
    let big = f.call("llvm.copysign", &[f.sub(one, q)?, x])?;
    f.sel(f.cmp(FloatPredicate::OLT, a, f.c(0.625))?, small, big)
}

/// f32 `erf`, inline: `x·P(x²)` below 2 (least-squares fit, 4e-7 relative), `1 − e^{−x²}·Q(|x|
/// − 3)` with the sign of x on [2, 4) (Q fits `erfc(x)·e^{x²}`, 4e-8 absolute), ±1 beyond
/// (where erf rounds to ±1 in f32). On a vector, the second form is computed only when some
/// lane needs it (|x| ≥ 2 or NaN): in a GELU, `erf(x/√2)` of a network's activations, few
/// vectors do, and the polynomial below 2 is a third of the work.
pub fn erf<'ctx>(g: &CodeGen<'ctx>, x: V<'ctx>) -> BackendResult<V<'ctx>> {
    let f = F::of(g, x);
    let a = f.call("llvm.fabs", &[x])?;
    let x2 = f.mul(x, x)?;
    let small = f.horner(
        x2,
        &[
            1.128_379_164_950_351_2,
            -0.376_126_185_200_716_9,
            0.112_835_940_950_728_9,
            -0.026_859_192_175_559_394,
            0.005_211_677_717_309_892,
            -0.000_842_384_070_356_663_9,
            0.000_112_781_485_045_084_68,
            -1.182_602_976_567_059_4e-5,
            8.467_448_558_736_547e-7,
            -3.004_387_923_028_468e-8,
        ],
    )?;
    let small = f.mul(x, small)?;
    let wide = || -> BackendResult<V<'ctx>> {
        let q = f.horner(
            f.sub(a, f.c(3.0))?,
            &[
                0.179_001_105_449_567_32,
                -0.054_372_210_429_678_74,
                0.015_885_822_920_551_903,
                -0.004_480_086_585_021_812,
                0.001_215_875_865_262_393_8,
                -0.000_321_797_792_725_467_1,
                9.471_577_168_117_042e-5,
                -2.400_886_971_622_375_4e-5,
            ],
        )?;
        let e = exp(g, f.neg(x2)?)?;
        let one = f.c(1.0);
        let mid = f.sub(one, f.mul(e, q)?)?;
        let big = f.sel(f.cmp(FloatPredicate::OLT, a, f.c(4.0))?, mid, one)?;
        let big = f.call("llvm.copysign", &[big, x])?;
        let y = f.sel(f.cmp(FloatPredicate::OLT, a, f.c(2.0))?, small, big)?;
        f.sel(f.cmp(FloatPredicate::UNO, x, x)?, x, y)
    };
    let V::VectorValue(_) = x else { return wide() };
    let b = &g.builder;
    let some = f.call("llvm.vector.reduce.or", &[f.cmp(FloatPredicate::UGE, a, f.c(2.0))?])?.into_int_value();
    let here = b.get_insert_block().ok_or_else(|| llvm_err("erf: the builder is not positioned"))?;
    let func = here.get_parent().ok_or_else(|| llvm_err("erf: a block outside a function"))?;
    let (wide_b, done) = (g.context.append_basic_block(func, "erf_wide"), g.context.append_basic_block(func, "erf"));
    b.build_conditional_branch(some, wide_b, done).map_err(llvm_err)?;
    b.position_at_end(wide_b);
    let y = wide()?;
    let wide_end = b.get_insert_block().ok_or_else(|| llvm_err("erf: the builder is not positioned"))?;
    b.build_unconditional_branch(done).map_err(llvm_err)?;
    b.position_at_end(done);
    let phi = b.build_phi(small.get_type(), "erf").map_err(llvm_err)?;
    phi.add_incoming(&[(&small, here), (&y, wide_end)]);
    Ok(phi.as_basic_value())
}

/// f32 logistic sigmoid: with `e = e^{-|x|} ≤ 1`, `1/(1+e)` for x ≥ 0 and `e/(1+e)` below
/// (no overflow, and the tiny results of very negative x keep their precision). `-|x|` is
/// clamped at -105, where `e` rounds to 0, so [`exp_core`] needs none of [`exp`]'s range
/// handling, and the divisor, in [1, 2], may have its reciprocal estimated
/// ([`F::div_approx`]): about 26 instructions a vector against 35, and a SiLU's sigmoid was
/// most of an EfficientNet expansion's time. NaN stays NaN.
pub fn sigmoid<'ctx>(g: &CodeGen<'ctx>, x: V<'ctx>) -> BackendResult<V<'ctx>> {
    let f = F::of(g, x);
    let z = f.call("llvm.maxnum", &[f.neg(f.call("llvm.fabs", &[x])?)?, f.c(-105.0)])?;
    let e = exp_core(g, z)?;
    let one = f.c(1.0);
    let r = f.div_approx(one, f.add(one, e)?)?;
    let y = f.sel(f.cmp(FloatPredicate::OLT, x, f.c(0.0))?, f.mul(e, r)?, r)?;
    f.sel(f.cmp(FloatPredicate::UNO, x, x)?, x, y)
}
