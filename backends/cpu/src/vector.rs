//! Expressions evaluated a vector at a time along the innermost parallel dimension: what the
//! row schedules of [`crate::rows`] ("vector rows") and the GEMM's in-register epilogue run.
//!
//! What qualifies ([`vexpr_ok`]): float arithmetic, ReLU-like ops, the long functions (exp,
//! tanh, erf, the sigmoid) and loads that step by 0 (a broadcast), 1 or 2 (a window of
//! stride 2 on a row-major image: two loads and a shuffle) along that dim, or that read
//! `(lane / q)·q + r` there (a grouped convolution's input channel: one load and a shuffle),
//! padded loads included: where the padding does not depend on that dim it is decided once
//! per vector, where it does (a window's edge taps along a row-major row) lane by lane, by
//! the mask of a masked load.

use inkwell::intrinsics::Intrinsic;
use inkwell::types::{BasicType, VectorType};
use inkwell::values::{BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::{FloatPredicate, IntPredicate};

use kiln_ir::lir::{Combine, Expr, Kernel, Scalar};
use kiln_ir::{BinaryOp as B, DType, UnaryOp as U};

use crate::gemm::{affine_expr, affine_range};
use kiln_llvm_codegen::expr::Env;
use kiln_llvm_codegen::{llvm_err, BackendResult, CodeGen};

fn mentions(e: &Expr, d: usize) -> bool {
    let mut m = false;
    e.visit(&mut |x| m |= *x == Expr::Var(d));
    m
}

/// The step of a load along domain dim `d`, if every index that moves with `d` is affine in
/// it (the others may be anything: `y / 2`, a select).
pub(crate) fn load_step(k: &Kernel, operand: usize, index: &[Expr], d: usize) -> Option<i64> {
    let v = &k.inputs[operand];
    let nd = k.domain.len();
    let mut step = 0;
    for (ix, &s) in index.iter().zip(&v.strides) {
        if mentions(ix, d) {
            step += s * affine_expr(ix, nd)?.1[d];
        }
    }
    Some(step)
}

/// Whether every index of a padded load that moves along dim `d` stays inside its extent over
/// the whole domain (so that the padding is decided per vector, not per lane).
fn pad_uniform_along(k: &Kernel, operand: usize, index: &[Expr], d: usize) -> bool {
    let v = &k.inputs[operand];
    let nd = k.domain.len();
    index.iter().zip(&v.extents).all(|(ix, &ext)| {
        if !mentions(ix, d) {
            return true;
        }
        let Some((c, f)) = affine_expr(ix, nd) else { return false };
        if f[d] == 0 {
            return true;
        }
        let (lo, hi) = affine_range(c, &f, &k.domain);
        lo >= 0 && hi < ext as i64
    })
}

/// The position of the one index of a load that moves along the row (the innermost parallel
/// dim), if only one does and it is affine: a padded load whose index crosses its extent
/// there (a window's edge taps on a row-major image) is checked lane by lane
/// ([`edge_mask`]).
fn edge_index(k: &Kernel, operand: usize, index: &[Expr]) -> Option<usize> {
    let (at, ix) = lane_index(k, operand, index)?;
    affine_expr(ix, k.domain.len()).is_some().then_some(at)
}

/// The position and expression of a load's one index that moves along the row, when only one
/// does and its dim is contiguous.
fn lane_index<'e>(k: &Kernel, operand: usize, index: &'e [Expr]) -> Option<(usize, &'e Expr)> {
    let mut moving = index.iter().enumerate().filter(|(_, ix)| mentions(ix, k.n_par - 1));
    let (at, ix) = moving.next()?;
    (moving.next().is_none() && k.inputs[operand].strides[at] == 1).then_some((at, ix))
}

/// For a load whose one index that moves along the row is `(lane / q)·q + r` (a grouped
/// convolution's input channel: its group's first plus a constant, `r < q`, `q` dividing 8)
/// on a contiguous dim: its position, `q` and `r`. Each vector then reads the groups of its
/// own lanes: one load from its first lane's group and a shuffle.
pub(crate) fn group_lanes(k: &Kernel, operand: usize, index: &[Expr]) -> Option<(usize, i64, i64)> {
    use kiln_ir::lir::Scalar::I64;
    let d = k.n_par - 1;
    let (at, ix) = lane_index(k, operand, index)?;
    let Expr::Binary(B::Add, first, r) = ix else { return None };
    let (Expr::Binary(B::Mul, div, q), Expr::Const(I64(r))) = (&**first, &**r) else { return None };
    let (Expr::Binary(B::Div, var, q2), Expr::Const(I64(q))) = (&**div, &**q) else { return None };
    let ok = **var == Expr::Var(d) && **q2 == Expr::Const(I64(*q)) && (1..=8).contains(q) && 8 % q == 0;
    (ok && (0..*q).contains(r)).then_some((at, *q, *r))
}

/// Which of `n` consecutive elements from index `first` lie in `0..extent` (as `<n x i1>`).
fn edge_mask<'ctx>(
    g: &CodeGen<'ctx>,
    n: u32,
    first: IntValue<'ctx>,
    extent: usize,
) -> BackendResult<VectorValue<'ctx>> {
    let b = &g.builder;
    let i32t = g.context.i32_type();
    let first = b.build_int_truncate(first, i32t, "e32").map_err(llvm_err)?;
    let iota = VectorType::const_vector(&(0..n as u64).map(|i| i32t.const_int(i, false)).collect::<Vec<_>>());
    let at = b.build_int_add(splat(g, i32t.vec_type(n), first.into())?, iota, "eix").map_err(llvm_err)?;
    let ext = splat(g, i32t.vec_type(n), i32t.const_int(extent as u64, false).into())?;
    // Unsigned: a negative index is past the extent too.
    b.build_int_compare(IntPredicate::ULT, at, ext, "inside").map_err(llvm_err)
}

fn and_masks<'ctx>(
    g: &CodeGen<'ctx>,
    a: Option<VectorValue<'ctx>>,
    b: Option<VectorValue<'ctx>>,
) -> BackendResult<Option<VectorValue<'ctx>>> {
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some(g.builder.build_and(a, b, "m").map_err(llvm_err)?),
        (a, b) => a.or(b),
    })
}

/// Whether `e` is the same in every lane: it reads neither the innermost parallel variable
/// nor the accumulator (the scalar path computes it once and it is splat).
fn uniform(k: &Kernel, e: &Expr) -> bool {
    let mut acc = false;
    e.visit(&mut |x| acc |= *x == Expr::Acc);
    !acc && !mentions(e, k.n_par - 1)
}

/// Whether `e` can be evaluated on vectors along the innermost parallel dim by [`vgen_masked`].
pub(crate) fn vexpr_ok(k: &Kernel, e: &Expr) -> bool {
    let d = k.n_par - 1;
    let ops: Vec<DType> = k.inputs.iter().map(|v| v.dtype).collect();
    if uniform(k, e) && e.dtype(&ops, Some(DType::F32)) == DType::F32 {
        return true;
    }
    match e {
        Expr::Acc | Expr::Const(Scalar::F32(_)) => true,
        Expr::Load { operand, index, pad } => {
            if k.inputs[*operand].dtype != DType::F32 || !matches!(pad, None | Some(Scalar::F32(_))) {
                return false;
            }
            if pad.is_none() && group_lanes(k, *operand, index).is_some() {
                return true;
            }
            match load_step(k, *operand, index, d) {
                Some(0) => true,
                Some(1 | 2) => {
                    pad.is_none()
                        || pad_uniform_along(k, *operand, index, d)
                        || edge_index(k, *operand, index).is_some()
                }
                _ => false,
            }
        }
        Expr::Unary(
            U::Relu
            | U::Neg
            | U::Abs
            | U::Sqrt
            | U::Reciprocal
            | U::Clip { .. }
            | U::LeakyRelu { .. }
            | U::HardSigmoid { .. }
            | U::Exp
            | U::Tanh
            | U::Erf
            | U::Sigmoid
            | U::Floor
            | U::Ceil
            | U::Round,
            a,
        ) => vexpr_ok(k, a),
        Expr::Binary(B::Add | B::Sub | B::Mul | B::Div | B::Max | B::Min, a, b) => vexpr_ok(k, a) && vexpr_ok(k, b),
        _ => false,
    }
}

/// `x` in every lane of a `vt`.
pub(crate) fn splat<'ctx>(
    g: &CodeGen<'ctx>,
    vt: VectorType<'ctx>,
    x: BasicValueEnum<'ctx>,
) -> BackendResult<VectorValue<'ctx>> {
    let v = g.builder.build_insert_element(vt.get_poison(), x, g.i64(0), "ins").map_err(llvm_err)?;
    let mask = g.context.i32_type().vec_type(vt.get_size()).const_zero();
    g.builder.build_shuffle_vector(v, vt.get_poison(), mask, "splat").map_err(llvm_err)
}

pub(crate) fn vload<'ctx>(
    g: &CodeGen<'ctx>,
    vt: VectorType<'ctx>,
    p: PointerValue<'ctx>,
) -> BackendResult<VectorValue<'ctx>> {
    let v = g.builder.build_load(vt, p, "bv").map_err(llvm_err)?;
    v.as_instruction_value().expect("a load").set_alignment(4).map_err(llvm_err)?;
    Ok(v.into_vector_value())
}

pub(crate) fn vstore<'ctx>(g: &CodeGen<'ctx>, p: PointerValue<'ctx>, v: VectorValue<'ctx>) -> BackendResult<()> {
    g.builder.build_store(p, v).map_err(llvm_err)?.set_alignment(4).map_err(llvm_err)?;
    Ok(())
}

/// `lanes[i] < n` for `i` in `0..lanes` (as `<lanes x i1>`): the lanes of a vector at the
/// edge of a row of `n` elements left.
pub(crate) fn lane_mask<'ctx>(g: &CodeGen<'ctx>, lanes: u32, n: IntValue<'ctx>) -> BackendResult<VectorValue<'ctx>> {
    let i64t = g.context.i64_type();
    let iota = VectorType::const_vector(&(0..lanes as u64).map(|i| i64t.const_int(i, false)).collect::<Vec<_>>());
    let nv = splat(g, i64t.vec_type(lanes), n.into())?;
    g.builder.build_int_compare(IntPredicate::SLT, iota, nv, "lanes").map_err(llvm_err)
}

/// A load of the lanes of `mask` only (the others read as zero, and their memory is not
/// touched); a plain load without a mask.
pub(crate) fn vload_masked<'ctx>(
    g: &CodeGen<'ctx>,
    vt: VectorType<'ctx>,
    p: PointerValue<'ctx>,
    mask: Option<VectorValue<'ctx>>,
) -> BackendResult<VectorValue<'ctx>> {
    vload_masked_or(g, vt, p, mask, vt.const_zero())
}

/// A load of the lanes of `mask` only, the others `pass`.
fn vload_masked_or<'ctx>(
    g: &CodeGen<'ctx>,
    vt: VectorType<'ctx>,
    p: PointerValue<'ctx>,
    mask: Option<VectorValue<'ctx>>,
    pass: VectorValue<'ctx>,
) -> BackendResult<VectorValue<'ctx>> {
    let Some(mask) = mask else { return vload(g, vt, p) };
    let f = Intrinsic::find("llvm.masked.load")
        .and_then(|i| i.get_declaration(&g.module, &[vt.into(), p.get_type().into()]))
        .ok_or_else(|| llvm_err("llvm.masked.load"))?;
    // LLVM ≥ 21: (pointer, mask, pass-through); the alignment is the pointer's attribute
    // (none here: element alignment).
    Ok(g.builder
        .build_call(f, &[p.into(), mask.into(), pass.into()], "mload")
        .map_err(llvm_err)?
        .try_as_basic_value()
        .basic()
        .ok_or_else(|| llvm_err("masked load returned void"))?
        .into_vector_value())
}

/// The elements `p[0], p[2], …` in the lanes of a `vt` (a window of stride 2 along the row):
/// two contiguous loads and the shuffle that keeps their even elements. With a mask of the
/// first `n` lanes, the loads read the elements up to `p[2n − 2]` only; with an `edge`
/// (the index of `p[0]` and the extent), only the elements inside it, the others `pass`.
fn strided_pair_load<'ctx>(
    g: &CodeGen<'ctx>,
    vt: VectorType<'ctx>,
    p: PointerValue<'ctx>,
    mask: Option<VectorValue<'ctx>>,
    edge: Option<(IntValue<'ctx>, usize)>,
    pass: VectorValue<'ctx>,
) -> BackendResult<VectorValue<'ctx>> {
    let lanes = vt.get_size();
    let b = &g.builder;
    let second = g.elem_ptr(p, DType::F32, g.i64(lanes as i64))?;
    // Element `e` is read with lane `⌈e / 2⌉`: the even ones for their lane, an odd one only
    // where the next is read too (so never past the last element wanted).
    let i32t = g.context.i32_type();
    let half = |from: u64| -> BackendResult<Option<VectorValue<'ctx>>> {
        let row = match mask {
            None => None,
            Some(m) => {
                let at: Vec<_> = (from..from + lanes as u64).map(|e| i32t.const_int(e.div_ceil(2), false)).collect();
                let none = m.get_type().const_zero();
                Some(b.build_shuffle_vector(m, none, VectorType::const_vector(&at), "m2").map_err(llvm_err)?)
            }
        };
        let inside = match edge {
            None => None,
            Some((first, extent)) => {
                let first = b.build_int_nsw_add(first, g.i64(from as i64), "e2").map_err(llvm_err)?;
                Some(edge_mask(g, lanes, first, extent)?)
            }
        };
        and_masks(g, row, inside)
    };
    let (m0, m1) = (half(0)?, half(lanes as u64)?);
    let (x, y) = (vload_masked_or(g, vt, p, m0, pass)?, vload_masked_or(g, vt, second, m1, pass)?);
    let even: Vec<_> = (0..lanes as u64).map(|i| i32t.const_int(2 * i, false)).collect();
    b.build_shuffle_vector(x, y, VectorType::const_vector(&even), "even").map_err(llvm_err)
}

/// A store of the lanes of `mask` only.
pub(crate) fn vstore_masked<'ctx>(
    g: &CodeGen<'ctx>,
    p: PointerValue<'ctx>,
    v: VectorValue<'ctx>,
    mask: VectorValue<'ctx>,
) -> BackendResult<()> {
    let f = Intrinsic::find("llvm.masked.store")
        .and_then(|i| i.get_declaration(&g.module, &[v.get_type().into(), p.get_type().into()]))
        .ok_or_else(|| llvm_err("llvm.masked.store"))?;
    g.builder.build_call(f, &[v.into(), p.into(), mask.into()], "").map_err(llvm_err)?;
    Ok(())
}

fn vcall<'ctx>(g: &CodeGen<'ctx>, name: &str, args: &[VectorValue<'ctx>]) -> BackendResult<VectorValue<'ctx>> {
    let vt = args[0].get_type();
    let f =
        Intrinsic::find(name).and_then(|i| i.get_declaration(&g.module, &[vt.into()])).ok_or_else(|| llvm_err(name))?;
    let args: Vec<inkwell::values::BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
    Ok(g.builder
        .build_call(f, &args, "vcall")
        .map_err(llvm_err)?
        .try_as_basic_value()
        .basic()
        .ok_or_else(|| llvm_err("intrinsic returned void"))?
        .into_vector_value())
}

pub(crate) fn vsel<'ctx>(
    g: &CodeGen<'ctx>,
    c: VectorValue<'ctx>,
    x: VectorValue<'ctx>,
    y: VectorValue<'ctx>,
) -> BackendResult<VectorValue<'ctx>> {
    Ok(g.builder.build_select(c, x, y, "vsel").map_err(llvm_err)?.into_vector_value())
}

fn vcmp<'ctx>(
    g: &CodeGen<'ctx>,
    p: FloatPredicate,
    x: VectorValue<'ctx>,
    y: VectorValue<'ctx>,
) -> BackendResult<VectorValue<'ctx>> {
    g.builder.build_float_compare(p, x, y, "vc").map_err(llvm_err)
}

/// Lets LLVM fuse a multiply and an add into an FMA, as the scalar path does.
fn contract(v: VectorValue) -> VectorValue {
    if let Some(i) = v.as_instruction() {
        let _ = i.set_fast_math_flags(inkwell::values::FastMathFlags::AllowContract);
    }
    v
}

/// `e` on the lanes `vars[n_par-1] .. + lanes` of the domain point `vars` (`acc`: the
/// accumulator vector in a finalizer), the same arithmetic as the scalar path, lane by lane;
/// with a `mask`, on those lanes only: loads along the vector read those lanes alone (at the
/// end of a row, the memory past it is not touched); the other lanes are unspecified.
#[allow(clippy::too_many_arguments)]
pub(crate) fn vgen_masked<'ctx>(
    g: &CodeGen<'ctx>,
    k: &Kernel,
    bases: &[PointerValue<'ctx>],
    e: &Expr,
    vars: &[IntValue<'ctx>],
    acc: Option<VectorValue<'ctx>>,
    vt: VectorType<'ctx>,
    mask: Option<VectorValue<'ctx>>,
) -> BackendResult<VectorValue<'ctx>> {
    let b = &g.builder;
    let f32t = g.context.f32_type();
    let sp = |x: f64| splat(g, vt, f32t.const_float(x).into());
    let go = |e: &Expr| vgen_masked(g, k, bases, e, vars, acc, vt, mask);
    let env = Env { k, bases };
    if uniform(k, e) {
        return splat(g, vt, env.gen(g, e, vars, None)?);
    }
    Ok(match e {
        Expr::Acc => acc.ok_or_else(|| llvm_err("accumulator used outside a finalizer"))?,
        Expr::Const(Scalar::F32(x)) => sp(*x as f64)?,
        Expr::Load { operand, index, pad } => {
            let d = k.n_par - 1;
            if load_step(k, *operand, index, d) == Some(0) {
                // The same element in every lane (padding included): the scalar path's load.
                return splat(g, vt, env.gen(g, e, vars, None)?);
            }
            let v = &k.inputs[*operand];
            let mut idx = index
                .iter()
                .map(|ix| Ok(env.gen(g, ix, vars, None)?.into_int_value()))
                .collect::<BackendResult<Vec<_>>>()?;
            if let (None, Some((at, q, r))) = (pad, group_lanes(k, *operand, index)) {
                // Lane l reads its group's channel r: element (l / q)·q + r of the vector from
                // the first lane's group (a row starts on a group: q divides the lanes).
                idx[at] = b.build_int_nsw_sub(idx[at], g.i64(r), "g0").map_err(llvm_err)?;
                let x = vload_masked(g, vt, g.elem_ptr(bases[*operand], DType::F32, g.linear(v, &idx)?)?, mask)?;
                let i32t = g.context.i32_type();
                let pick: Vec<_> =
                    (0..vt.get_size() as i64).map(|l| i32t.const_int(((l / q) * q + r) as u64, false)).collect();
                return b
                    .build_shuffle_vector(x, vt.get_poison(), VectorType::const_vector(&pick), "grp")
                    .map_err(llvm_err);
            }
            let step = load_step(k, *operand, index, d);
            let load = |idx: &[IntValue<'ctx>], edge: Option<(IntValue<'ctx>, usize)>, pass: VectorValue<'ctx>| {
                let p = g.elem_ptr(bases[*operand], DType::F32, g.linear(v, idx)?)?;
                if step == Some(2) {
                    return strided_pair_load(g, vt, p, mask, edge, pass);
                }
                let inside = match edge {
                    Some((first, extent)) => Some(edge_mask(g, vt.get_size(), first, extent)?),
                    None => None,
                };
                vload_masked_or(g, vt, p, and_masks(g, mask, inside)?, pass)
            };
            let Some(Scalar::F32(p)) = pad else { return load(&idx, None, vt.const_zero()) };
            let pad_v = sp(*p as f64)?;
            // An index that crosses its extent along the row is checked lane by lane (and not
            // clamped: the lanes outside are not read); the others once for the vector, each
            // clamped into its extent so that the address is valid either way.
            let edge = if pad_uniform_along(k, *operand, index, d) { None } else { edge_index(k, *operand, index) };
            let mut inb = g.context.bool_type().const_int(1, false);
            let mut clamped = Vec::with_capacity(idx.len());
            for (at, (&ix, &ext)) in idx.iter().zip(&v.extents).enumerate() {
                if edge == Some(at) {
                    clamped.push(ix);
                    continue;
                }
                let ok = b.build_int_compare(IntPredicate::ULT, ix, g.i64(ext as i64), "ok").map_err(llvm_err)?;
                inb = b.build_and(inb, ok, "inb").map_err(llvm_err)?;
                let neg = b.build_int_compare(IntPredicate::SLT, ix, g.i64(0), "neg").map_err(llvm_err)?;
                let lo = b.build_select(neg, g.i64(0), ix, "lo").map_err(llvm_err)?.into_int_value();
                let hi = g.i64(ext.max(1) as i64 - 1);
                let over = b.build_int_compare(IntPredicate::SGT, lo, hi, "over").map_err(llvm_err)?;
                clamped.push(b.build_select(over, hi, lo, "cl").map_err(llvm_err)?.into_int_value());
            }
            let x = load(&clamped, edge.map(|at| (idx[at], v.extents[at])), pad_v)?;
            b.build_select(inb, x, pad_v, "pad").map_err(llvm_err)?.into_vector_value()
        }
        Expr::Unary(op, a) => {
            let x = go(a)?;
            let (zero, one) = (vt.const_zero(), sp(1.0)?);
            match op {
                U::Relu => vsel(g, vcmp(g, FloatPredicate::OLT, x, zero)?, zero, x)?,
                U::Neg => b.build_float_neg(x, "vneg").map_err(llvm_err)?,
                U::Abs => vcall(g, "llvm.fabs", &[x])?,
                U::Floor => vcall(g, "llvm.floor", &[x])?,
                U::Ceil => vcall(g, "llvm.ceil", &[x])?,
                U::Round => vcall(g, "llvm.roundeven", &[x])?,
                U::Sqrt => vcall(g, "llvm.sqrt", &[x])?,
                U::Reciprocal => b.build_float_div(one, x, "vrcp").map_err(llvm_err)?,
                U::Clip { lo, hi } => {
                    let (lo, hi) = (sp(*lo as f32 as f64)?, sp(*hi as f32 as f64)?);
                    let y = vsel(g, vcmp(g, FloatPredicate::OLT, x, lo)?, lo, x)?;
                    vsel(g, vcmp(g, FloatPredicate::OGT, y, hi)?, hi, y)?
                }
                U::LeakyRelu { alpha } => {
                    let ax = b.build_float_mul(sp(*alpha as f64)?, x, "ax").map_err(llvm_err)?;
                    vsel(g, vcmp(g, FloatPredicate::OLT, x, zero)?, ax, x)?
                }
                U::HardSigmoid { alpha, beta } => {
                    let y = b.build_float_mul(sp(*alpha as f64)?, x, "ax").map_err(llvm_err)?;
                    let y = b.build_float_add(y, sp(*beta as f64)?, "axb").map_err(llvm_err)?;
                    let y = vcall(g, "llvm.minnum", &[y, one])?;
                    vcall(g, "llvm.maxnum", &[y, zero])?
                }
                U::Exp => kiln_llvm_codegen::math::exp(g, x.into())?.into_vector_value(),
                U::Tanh => kiln_llvm_codegen::math::tanh(g, x.into())?.into_vector_value(),
                U::Erf => kiln_llvm_codegen::math::erf(g, x.into())?.into_vector_value(),
                U::Sigmoid => kiln_llvm_codegen::math::sigmoid(g, x.into())?.into_vector_value(),
                _ => return Err(llvm_err("vector expression: unsupported unary op")),
            }
        }
        Expr::Binary(op, a, c) => {
            let (x, y) = (go(a)?, go(c)?);
            match op {
                B::Add => contract(b.build_float_add(x, y, "va").map_err(llvm_err)?),
                B::Sub => contract(b.build_float_sub(x, y, "vs").map_err(llvm_err)?),
                B::Mul => contract(b.build_float_mul(x, y, "vm").map_err(llvm_err)?),
                B::Div => b.build_float_div(x, y, "vd").map_err(llvm_err)?,
                B::Max => vcall(g, "llvm.maximum", &[x, y])?,
                B::Min => vcall(g, "llvm.minimum", &[x, y])?,
                _ => return Err(llvm_err("vector expression: unsupported binary op")),
            }
        }
        _ => return Err(llvm_err("vector expression: unsupported expression")),
    })
}

/// `a ⊕ x` on vectors, as [`kiln_llvm_codegen::expr::combine`] does on scalars.
pub(crate) fn vcombine<'ctx>(
    g: &CodeGen<'ctx>,
    c: Combine,
    a: VectorValue<'ctx>,
    x: VectorValue<'ctx>,
) -> BackendResult<VectorValue<'ctx>> {
    use inkwell::values::FastMathFlags as F;
    let v = match c {
        Combine::Add => g.builder.build_float_add(a, x, "vsum").map_err(llvm_err)?,
        Combine::Mul => g.builder.build_float_mul(a, x, "vprod").map_err(llvm_err)?,
        Combine::Max => vcall(g, "llvm.maxnum", &[a, x])?,
        Combine::Min => vcall(g, "llvm.minnum", &[a, x])?,
    };
    if let Some(i) = v.as_instruction() {
        let _ = i.set_fast_math_flags(F::AllowReassoc | F::AllowContract);
    }
    Ok(v)
}

/// `if cond { then() }`, leaving the builder after it.
pub(crate) fn when<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    cond: IntValue<'ctx>,
    then: &mut dyn FnMut() -> BackendResult<()>,
) -> BackendResult<()> {
    let yes = g.context.append_basic_block(f, "then");
    let done = g.context.append_basic_block(f, "endif");
    g.builder.build_conditional_branch(cond, yes, done).map_err(llvm_err)?;
    g.builder.position_at_end(yes);
    then()?;
    g.builder.build_unconditional_branch(done).map_err(llvm_err)?;
    g.builder.position_at_end(done);
    Ok(())
}

/// An alloca in the function's entry block (where LLVM promotes it to registers).
pub(crate) fn entry_alloca<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    ty: impl BasicType<'ctx>,
) -> BackendResult<PointerValue<'ctx>> {
    let eb = g.context.create_builder();
    let entry = f.get_first_basic_block().expect("a function with a body");
    match entry.get_first_instruction() {
        Some(i) => eb.position_before(&i),
        None => eb.position_at_end(entry),
    }
    eb.build_alloca(ty, "slot").map_err(llvm_err)
}
