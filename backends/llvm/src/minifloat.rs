//! The small float formats as LLVM IR: encoding an f32 to its code and decoding a code to
//! f32, by integer manipulation of the f32 bits. The same computation, step for step, as the
//! reference in `kiln_ir::minifloat` (whose module doc gives the semantics); the differential
//! tests hold the two bit-exact.

use inkwell::values::{FloatValue, IntValue};
use inkwell::IntPredicate as P;

use kiln_ir::minifloat::{E8M0Round, MiniFloat, Specials};

use crate::codegen::{llvm_err, BackendResult, CodeGen};

const QNAN: u64 = 0x7FC0_0000;

struct B<'a, 'ctx> {
    g: &'a CodeGen<'ctx>,
}

impl<'ctx> B<'_, 'ctx> {
    fn k(&self, v: u64) -> IntValue<'ctx> {
        self.g.context.i32_type().const_int(v, false)
    }
    fn and(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
        self.g.builder.build_and(a, b, "and").map_err(llvm_err)
    }
    fn or(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
        self.g.builder.build_or(a, b, "or").map_err(llvm_err)
    }
    fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
        self.g.builder.build_int_add(a, b, "add").map_err(llvm_err)
    }
    fn sub(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
        self.g.builder.build_int_sub(a, b, "sub").map_err(llvm_err)
    }
    fn shr(&self, a: IntValue<'ctx>, n: u64) -> BackendResult<IntValue<'ctx>> {
        self.g.builder.build_right_shift(a, self.k(n), false, "shr").map_err(llvm_err)
    }
    fn shl(&self, a: IntValue<'ctx>, n: u64) -> BackendResult<IntValue<'ctx>> {
        self.g.builder.build_left_shift(a, self.k(n), "shl").map_err(llvm_err)
    }
    fn cmp(&self, p: P, a: IntValue<'ctx>, b: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
        self.g.builder.build_int_compare(p, a, b, "cmp").map_err(llvm_err)
    }
    fn sel(&self, c: IntValue<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
        Ok(self.g.builder.build_select(c, a, b, "sel").map_err(llvm_err)?.into_int_value())
    }
    fn bits_of(&self, x: FloatValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
        Ok(self.g.builder.build_bit_cast(x, self.g.context.i32_type(), "bits").map_err(llvm_err)?.into_int_value())
    }
    fn float_of(&self, x: IntValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
        Ok(self.g.builder.build_bit_cast(x, self.g.context.f32_type(), "f").map_err(llvm_err)?.into_float_value())
    }
    fn call(
        &self,
        name: &str,
        args: &[inkwell::values::BasicMetadataValueEnum<'ctx>],
        tys: &[inkwell::types::BasicTypeEnum<'ctx>],
    ) -> BackendResult<inkwell::values::BasicValueEnum<'ctx>> {
        let i = inkwell::intrinsics::Intrinsic::find(name).ok_or_else(|| llvm_err(format!("no intrinsic {name}")))?;
        let f = i.get_declaration(&self.g.module, tys).ok_or_else(|| llvm_err(format!("cannot declare {name}")))?;
        let c = self.g.builder.build_call(f, args, "call").map_err(llvm_err)?;
        c.try_as_basic_value().basic().ok_or_else(|| llvm_err("call returned void"))
    }
}

/// The code (in an i32) of the f32 `x` in format `f`.
pub fn encode<'ctx>(
    g: &CodeGen<'ctx>,
    f: MiniFloat,
    x: FloatValue<'ctx>,
    saturate: bool,
    round: E8M0Round,
) -> BackendResult<IntValue<'ctx>> {
    let b = B { g };
    let bits = b.bits_of(x)?;
    if f.specials == Specials::E8M0 {
        let e = b.and(b.shr(bits, 23)?, b.k(0xFF))?;
        let nonzero = |mask: u64| b.cmp(P::NE, b.and(bits, b.k(mask))?, b.k(0));
        let up = match round {
            E8M0Round::Up => nonzero(0x7F_FFFF)?,
            E8M0Round::Down => g.context.bool_type().const_zero(),
            E8M0Round::Nearest => {
                let rest =
                    g.builder.build_or(nonzero(0x3F_FFFF)?, b.cmp(P::NE, e, b.k(0))?, "rest").map_err(llvm_err)?;
                g.builder.build_and(nonzero(0x40_0000)?, rest, "near").map_err(llvm_err)?
            }
        };
        let up =
            if saturate { g.builder.build_and(up, b.cmp(P::NE, e, b.k(0xFE))?, "up").map_err(llvm_err)? } else { up };
        let upi = g.builder.build_int_z_extend(up, g.context.i32_type(), "upi").map_err(llvm_err)?;
        let r = b.add(e, upi)?;
        return b.sel(b.cmp(P::EQ, e, b.k(0xFF))?, b.k(0xFF), r);
    }
    let sign_bit = u64::from(f.sign_bit());
    let a = b.and(bits, b.k(0x7FFF_FFFF))?;
    let neg = b.cmp(P::SLT, bits, b.k(0))?;
    let sign = b.sel(neg, b.k(sign_bit), b.k(0))?;
    let m = u64::from(f.mbits);
    // Normal range: round the f32 significand to `m` bits, ties to even.
    let shift = 23 - m;
    let lsb = b.and(b.shr(a, shift)?, b.k(1))?;
    let r = b.shr(b.add(b.add(a, b.k((1 << (shift - 1)) - 1))?, lsb)?, shift)?;
    let normal = b.sub(r, b.k(((127 - f.bias) as u64) << m))?;
    // Subnormal range: scale to units of the smallest subnormal (exact), round to an integer.
    let f32t = g.context.f32_type();
    let scaled = g
        .builder
        .build_float_mul(b.float_of(a)?, f32t.const_float(2f64.powi(f.subnormal_scale_log2())), "scaled")
        .map_err(llvm_err)?;
    let rounded = b.call("llvm.roundeven", &[scaled.into()], &[f32t.into()])?;
    let sub =
        b.call("llvm.fptoui.sat", &[rounded.into()], &[g.context.i32_type().into(), f32t.into()])?.into_int_value();
    let is_normal = b.cmp(P::UGE, a, b.k(u64::from(f.min_normal_exp()) << 23))?;
    let code = b.sel(is_normal, normal, sub)?;
    let over = g
        .builder
        .build_or(b.cmp(P::UGE, a, b.k(0x7F80_0000))?, b.cmp(P::UGT, code, b.k(u64::from(f.max_code())))?, "over")
        .map_err(llvm_err)?;
    let over_code = if saturate || f.specials == Specials::None {
        b.or(b.k(u64::from(f.max_code())), sign)?
    } else {
        match f.inf_code() {
            Some(inf) => b.or(b.k(u64::from(inf)), sign)?,
            None if f.specials == Specials::Fnuz => b.k(u64::from(f.nan_code())),
            None => b.or(b.k(u64::from(f.nan_code())), sign)?,
        }
    };
    let signed = b.or(code, sign)?;
    let in_range =
        if f.specials == Specials::Fnuz { b.sel(b.cmp(P::EQ, code, b.k(0))?, b.k(0), signed)? } else { signed };
    let res = b.sel(over, over_code, in_range)?;
    let nan_code = match f.specials {
        Specials::Fnuz => b.k(u64::from(f.nan_code())),
        Specials::None => g.builder.build_xor(b.k(sign_bit), sign, "nan").map_err(llvm_err)?,
        _ => b.or(b.k(u64::from(f.nan_code())), sign)?,
    };
    b.sel(b.cmp(P::UGT, a, b.k(0x7F80_0000))?, nan_code, res)
}

/// The code of `x`, a value of the format (see `MiniFloat::encode_exact`).
pub fn encode_exact<'ctx>(g: &CodeGen<'ctx>, f: MiniFloat, x: FloatValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
    if f.specials == Specials::E8M0 {
        let b = B { g };
        return b.shr(b.bits_of(x)?, 23);
    }
    encode(g, f, x, false, E8M0Round::Up)
}

/// The exact f32 value of the code `c` (an i32 holding the code in its low bits).
pub fn decode<'ctx>(g: &CodeGen<'ctx>, f: MiniFloat, c: IntValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
    let b = B { g };
    if f.specials == Specials::E8M0 {
        let v = b.sel(b.cmp(P::EQ, c, b.k(0))?, b.k(0x0040_0000), b.shl(c, 23)?)?;
        return b.float_of(b.sel(b.cmp(P::EQ, c, b.k(0xFF))?, b.k(QNAN), v)?);
    }
    let sign_bit = u64::from(f.sign_bit());
    let sign = b.shl(b.and(c, b.k(sign_bit))?, u64::from(31 - f.ebits - f.mbits))?;
    let mag = b.and(c, b.k(sign_bit - 1))?;
    let m = u64::from(f.mbits);
    let e = b.shr(mag, m)?;
    let frac = b.and(mag, b.k((1 << m) - 1))?;
    let normal = b.or(b.shl(b.add(e, b.k((127 - f.bias) as u64))?, 23)?, b.shl(frac, 23 - m)?)?;
    let f32t = g.context.f32_type();
    let fl = g.builder.build_unsigned_int_to_float(frac, f32t, "fl").map_err(llvm_err)?;
    let sub = g
        .builder
        .build_float_mul(fl, f32t.const_float(2f64.powi(-f.subnormal_scale_log2())), "sub")
        .map_err(llvm_err)?;
    let mut mag_bits = b.sel(b.cmp(P::EQ, e, b.k(0))?, b.bits_of(sub)?, normal)?;
    if let Some(inf) = f.inf_code() {
        mag_bits = b.sel(b.cmp(P::EQ, mag, b.k(u64::from(inf)))?, b.k(0x7F80_0000), mag_bits)?;
    }
    let nan = match f.specials {
        Specials::Ieee => Some(b.cmp(P::UGT, mag, b.k(u64::from(f.inf_code().unwrap_or(0))))?),
        Specials::Fn => Some(b.cmp(P::EQ, mag, b.k(u64::from(f.nan_code())))?),
        Specials::Fnuz => Some(b.cmp(P::EQ, c, b.k(0x80))?),
        _ => None,
    };
    let mut r = b.or(mag_bits, sign)?;
    if let Some(nan) = nan {
        let nan_bits = if f.specials == Specials::Fnuz { b.k(QNAN) } else { b.or(b.k(QNAN), sign)? };
        r = b.sel(nan, nan_bits, r)?;
    }
    b.float_of(r)
}
