//! Expressions evaluated a vector at a time along the innermost parallel dimension, and the
//! kernels run that way ("vector rows").
//!
//! The generic loop nest leaves vectorization to LLVM, which does well on long contiguous
//! rows. It does badly on the short rows of channels-last tensors: a depthwise convolution
//! over 32 channels with 9 taps per output runs its vectorized inner loop 9 times per pixel,
//! each time behind runtime alias checks and with a scalar remainder, and accumulates in
//! memory. Here a row is cut into blocks of up to 4 vectors whose accumulators stay in
//! registers through the reduction loops; what is left of the row is one block of fewer
//! vectors, the last masked.
//!
//! What qualifies ([`row_ok`]): an f32 kernel whose output is contiguous along the innermost
//! parallel dim, whose body and finalizer are float arithmetic, ReLU-like ops and loads that
//! step by 0 (a broadcast), 1 or 2 (a window of stride 2 on a row-major image: two loads and
//! a shuffle) along that dim ([`vexpr_ok`]), padded loads included: where the padding does
//! not depend on that dim it is decided once per vector, where it does (a window's edge taps
//! along a row-major row) lane by lane, by the mask of a masked load, except in blocks whose
//! taps all lie inside. Where the reduction's loads are shared between neighbouring rows
//! (a weight, overlapping windows), a task runs several rows side by side ([`row_tile`]).
//! The same expressions are the GEMM's in-register epilogue.

use inkwell::intrinsics::Intrinsic;
use inkwell::types::{BasicType, VectorType};
use inkwell::values::{BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::{FloatPredicate, IntPredicate};

use kiln_ir::lir::{Combine, Expr, Kernel, Scalar};
use kiln_ir::{BinaryOp as B, DType, UnaryOp as U};

use crate::gemm::{affine_expr, affine_range};
use kiln_llvm_codegen::expr::Env;
use kiln_llvm_codegen::{llvm_err, BackendResult, CodeGen};

/// Vectors per block of a row: their accumulators (and loads) are independent, which hides
/// the latency of the reduction's adds.
const BLOCK: usize = 4;

fn mentions(e: &Expr, d: usize) -> bool {
    let mut m = false;
    e.visit(&mut |x| m |= *x == Expr::Var(d));
    m
}

/// The step of a load along domain dim `d`, if every index that moves with `d` is affine in
/// it (the others may be anything: `y / 2`, a select).
fn load_step(k: &Kernel, operand: usize, index: &[Expr], d: usize) -> Option<i64> {
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
    let d = k.n_par - 1;
    let mut moving = index.iter().enumerate().filter(|(_, ix)| mentions(ix, d));
    let (at, ix) = moving.next()?;
    let contiguous = k.inputs[operand].strides[at] == 1;
    (moving.next().is_none() && contiguous && affine_expr(ix, k.domain.len()).is_some()).then_some(at)
}

/// For a load whose one index that moves along the row is `(lane / q)·q + r` (a grouped
/// convolution's input channel: its group's first plus a constant, `r < q`, `q` dividing 8)
/// on a contiguous dim: its position, `q` and `r`. Each vector then reads the groups of its
/// own lanes: one load from its first lane's group and a shuffle.
fn group_lanes(k: &Kernel, operand: usize, index: &[Expr]) -> Option<(usize, i64, i64)> {
    use kiln_ir::lir::Scalar::I64;
    let d = k.n_par - 1;
    let mut moving = index.iter().enumerate().filter(|(_, ix)| mentions(ix, d));
    let (at, ix) = moving.next()?;
    if moving.next().is_some() || k.inputs[operand].strides[at] != 1 {
        return None;
    }
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
            | U::Sigmoid,
            a,
        ) => vexpr_ok(k, a),
        Expr::Binary(B::Add | B::Sub | B::Mul | B::Div | B::Max | B::Min, a, b) => vexpr_ok(k, a) && vexpr_ok(k, b),
        _ => false,
    }
}

/// Whether a kernel runs as vector rows ([`gen_row`]). Not an elementwise kernel with `exp`,
/// `tanh`, `erf` or the sigmoid: their long dependent chains want several vectors in flight,
/// which LLVM's loop vectorizer interleaves on the scalar loop (a standalone GELU measured 8%
/// slower as vector rows); the tiles of a matrix product have that parallelism of their own,
/// and so does a reduction's block of accumulators. With a reduction the scalar loop is the
/// alternative, not a vectorized one: a channels-last depthwise convolution with a SiLU
/// epilogue (EfficientNet) ran 4–5× slower that way.
pub(crate) fn row_ok(k: &Kernel, lanes: usize) -> bool {
    let d = k.n_par - 1;
    if k.n_par == 0 || k.output.dtype != DType::F32 || k.output.strides[d] != 1 || k.domain[d] < lanes / 2 {
        return false;
    }
    let long = |e: &Expr| {
        let mut found = false;
        e.visit(&mut |x| found |= matches!(x, Expr::Unary(U::Exp | U::Tanh | U::Erf | U::Sigmoid, _)));
        found
    };
    let mut has_acc = false;
    k.body.visit(&mut |e| has_acc |= *e == Expr::Acc);
    if has_acc || (k.reduction.is_none() && long(&k.body)) || !vexpr_ok(k, &k.body) {
        return false;
    }
    // A vector reads whole groups ([`group_lanes`]).
    let mut whole_groups = true;
    k.body.visit(&mut |e| {
        if let Expr::Load { operand, index, pad: None } = e {
            whole_groups &= group_lanes(k, *operand, index).is_none_or(|(_, q, _)| lanes as i64 % q == 0);
        }
    });
    if !whole_groups {
        return false;
    }
    match &k.reduction {
        None => true,
        Some(r) => matches!(r.init, Scalar::F32(_)) && r.finalize.as_ref().is_none_or(|f| vexpr_ok(k, f)),
    }
}

/// How many consecutive rows of the dim next to the innermost (an output row of a row-major
/// depthwise convolution, an output pixel of a channels-last one) a vector-row kernel runs
/// together, their accumulators side by side ([`gen_rows`]): 1 unless the reduction's loads
/// are shared between those rows, a weight that does not move with them or a window that
/// overlaps its neighbour's; as many as half the vector registers hold with the row's
/// vectors, the fewest loads for the dim's extent (a tile's are `tile + 1` rows' worth of
/// a load shared, a lone row's 2).
pub(crate) fn row_tile(k: &Kernel, lanes: usize) -> usize {
    let np = k.n_par;
    if k.reduction.is_none() || np < 2 || k.domain[np..].iter().product::<usize>() < 2 || !shared_across(k, np - 2) {
        return 1;
    }
    let registers = if lanes >= 16 { 32 } else { 16 };
    let vectors = k.domain[np - 1].div_ceil(lanes).min(row_block(k));
    // Overlapping windows: 3 rows of 2 vectors, whose window loads stay in registers.
    let most = if window_overlaps(k, np - 2) { 3 } else { 8 };
    let most = (registers / 2 / vectors).min(most);
    let rows = k.domain[np - 2];
    let loads = |t: usize| (rows / t) * (t + 1) + (rows % t) * 2;
    (1..=most.min(rows)).rev().min_by_key(|&t| loads(t)).unwrap_or(1)
}

/// Whether some load of `k`'s body reads, at the next value of dim `d2`, what it read at this
/// one: it does not move along `d2` but does along the row (a channels-last weight), or its
/// window overlaps ([`window_overlaps`]).
fn shared_across(k: &Kernel, d2: usize) -> bool {
    let d = k.n_par - 1;
    let mut weight = false;
    k.body.visit(&mut |e| {
        if let Expr::Load { operand, index, .. } = e {
            weight |= load_step(k, *operand, index, d2) == Some(0)
                && load_step(k, *operand, index, d).is_some_and(|s| s != 0);
        }
    });
    weight || window_overlaps(k, d2)
}

/// Whether some load's step along dim `d2` is a step of a reduction variable within that
/// variable's extent: a window of stride 1 or 2 with more taps than that, whose neighbouring
/// rows along `d2` read the same elements.
fn window_overlaps(k: &Kernel, d2: usize) -> bool {
    let nd = k.domain.len();
    let mut overlap = false;
    k.body.visit(&mut |e| {
        let Expr::Load { operand, index, .. } = e else { return };
        let step = |dim: usize| load_step(k, *operand, index, dim);
        if let Some(s2) = step(d2).filter(|&s| s != 0) {
            overlap |= (k.n_par..nd).any(|r| {
                step(r).is_some_and(|sr| sr != 0 && s2 % sr == 0 && (1..k.domain[r] as i64).contains(&(s2 / sr)))
            });
        }
    });
    overlap
}

/// Vectors of the row a block holds: [`BLOCK`], or 2 where the tiled rows share their
/// windows' loads (more rows of fewer vectors: a 7×7 depthwise convolution on row-major rows
/// took 0.29 ms with 4 vectors by 4 rows, 0.22 with 2 by 3 and every tap in line; a 3×3 s2
/// max pool 0.11 and 0.08).
fn row_block(k: &Kernel) -> usize {
    if k.n_par >= 2 && window_overlaps(k, k.n_par - 2) {
        2
    } else {
        BLOCK
    }
}

/// The most reduction steps a tile of rows with overlapping windows runs in line (its rows
/// then share each loaded vector of the window, LLVM finding the same address in one block).
const INLINE_TAPS: usize = 64;

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

fn vsel<'ctx>(
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

/// The kernel as [`vexpr_ok`] and [`vgen_masked`] see it to evaluate its body along its last
/// reduction dim: every dim taken for a parallel one, no reduction.
fn along_last(k: &Kernel) -> Kernel {
    Kernel { n_par: k.domain.len(), reduction: None, ..k.clone() }
}

/// Whether an f32 reduction's body can be evaluated on vectors along its last reduction dim
/// (at least a vector long): [`reduce_along_last`].
pub(crate) fn reduce_along_last_ok(k: &Kernel, lanes: usize) -> bool {
    let Some(red) = &k.reduction else { return false };
    let nd = k.domain.len();
    let ops: Vec<DType> = k.inputs.iter().map(|v| v.dtype).collect();
    let mut has_acc = false;
    k.body.visit(&mut |e| has_acc |= *e == Expr::Acc);
    nd > k.n_par
        && k.domain[nd - 1] >= lanes
        && matches!(red.init, Scalar::F32(_))
        && !has_acc
        && k.body.dtype(&ops, None) == DType::F32
        && vexpr_ok(&along_last(k), &k.body)
}

/// The reduction of one output element (the parallel point `vars`) with its last reduction
/// dim in vectors: up to [`BLOCK`] vector accumulators through every reduction step, the
/// end of that dim masked (its other lanes the reduction's identity), then the accumulators
/// combined and their lanes by halves. Returns the scalar accumulator.
pub(crate) fn reduce_along_last<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    k: &Kernel,
    bases: &[PointerValue<'ctx>],
    vars: &[IntValue<'ctx>],
    lanes: usize,
) -> BackendResult<BasicValueEnum<'ctx>> {
    let red = k.reduction.as_ref().ok_or_else(|| llvm_err("a reduction"))?;
    let Scalar::F32(init) = red.init else { return Err(llvm_err("vector reductions are f32")) };
    let b = &g.builder;
    let along = along_last(k);
    let nd = k.domain.len();
    let last = nd - 1;
    let extent = k.domain[last];
    let vt = g.context.f32_type().vec_type(lanes as u32);
    let identity = splat(g, vt, g.context.f32_type().const_float(init as f64).into())?;
    let n_acc = (extent / lanes).clamp(1, BLOCK);
    let span = n_acc * lanes;
    let slots = (0..n_acc).map(|_| entry_alloca(g, f, vt)).collect::<BackendResult<Vec<_>>>()?;
    for &s in &slots {
        b.build_store(s, identity).map_err(llvm_err)?;
    }
    // Adds the vector of the last dim from `at` (masked to its first `valid` lanes) into
    // accumulator `q`.
    let step = |rvars: &[IntValue<'ctx>], q: usize, at: IntValue<'ctx>, valid: Option<usize>| -> BackendResult<()> {
        let mut vs = rvars.to_vec();
        vs[last] = at;
        let mask = valid.map(|n| lane_mask(g, lanes as u32, g.i64(n as i64))).transpose()?;
        let mut x = vgen_masked(g, &along, bases, &k.body, &vs, None, vt, mask)?;
        if let Some(m) = mask {
            x = vsel(g, m, x, identity)?;
        }
        let a = b.build_load(vt, slots[q], "ra").map_err(llvm_err)?.into_vector_value();
        b.build_store(slots[q], vcombine(g, red.combine, a, x)?).map_err(llvm_err)?;
        Ok(())
    };
    let (full, rest) = (extent / span, extent % span);
    let mut rv = vars.to_vec();
    kiln_llvm_codegen::reduce_loops(g, f, &k.domain[..last], k.n_par, &mut rv, &mut |rvars| {
        g.for_range(f, g.i64(0), g.i64(full as i64), &mut |blk| {
            let base = b.build_int_nsw_mul(blk, g.i64(span as i64), "rb").map_err(llvm_err)?;
            for q in 0..n_acc {
                step(rvars, q, b.build_int_nsw_add(base, g.i64((q * lanes) as i64), "rq").map_err(llvm_err)?, None)?;
            }
            Ok(())
        })?;
        for q in 0..rest.div_ceil(lanes) {
            let left = rest - q * lanes;
            step(rvars, q, g.i64((full * span + q * lanes) as i64), (left < lanes).then_some(left))?;
        }
        Ok(())
    })?;
    let mut acc = b.build_load(vt, slots[0], "ra").map_err(llvm_err)?.into_vector_value();
    for &s in &slots[1..] {
        let a = b.build_load(vt, s, "ra").map_err(llvm_err)?.into_vector_value();
        acc = vcombine(g, red.combine, acc, a)?;
    }
    let i32t = g.context.i32_type();
    let mut half = lanes / 2;
    while half > 0 {
        let at: Vec<_> = (0..lanes as u64).map(|i| i32t.const_int((i + half as u64) % lanes as u64, false)).collect();
        let moved =
            b.build_shuffle_vector(acc, vt.get_poison(), VectorType::const_vector(&at), "hr").map_err(llvm_err)?;
        acc = vcombine(g, red.combine, acc, moved)?;
        half /= 2;
    }
    b.build_extract_element(acc, g.i64(0), "r").map_err(llvm_err)
}

/// The kernel with its innermost parallel dim and the one next to it swapped: what
/// [`vexpr_ok`] and [`vgen_masked`] see to evaluate the body along that next dim.
fn swapped_inner(k: &Kernel) -> Kernel {
    let (d, d2) = (k.n_par - 1, k.n_par - 2);
    let swap = |e: Expr| {
        e.map(&mut |e| match e {
            Expr::Var(v) if v == d => Expr::Var(d2),
            Expr::Var(v) if v == d2 => Expr::Var(d),
            e => e,
        })
    };
    let mut sw = k.clone();
    sw.domain.swap(d, d2);
    sw.output.extents.swap(d, d2);
    sw.output.strides.swap(d, d2);
    sw.body = swap(k.body.clone());
    sw
}

/// Whether a kernel without a reduction whose output is contiguous along its innermost
/// dim but whose loads are not (a copy between row-major and channels-last layouts: a
/// padded copy, `to_row_major`) runs as vectors along the dim next to the innermost, where
/// its loads are contiguous, transposed in registers for the stores ([`gen_transposed`]).
pub(crate) fn transposed_ok(k: &Kernel, lanes: usize) -> bool {
    let np = k.n_par;
    if k.reduction.is_some() || np < 2 || k.output.dtype != DType::F32 || k.output.strides[np - 1] != 1 {
        return false;
    }
    let (d, d2) = (np - 1, np - 2);
    if k.domain[d] < lanes / 2 || k.domain[d2] < lanes / 2 {
        return false;
    }
    // Every load that moves with the innermost dim steps by 1 along the next one.
    let mut along = true;
    k.body.visit(&mut |e| {
        if let Expr::Load { operand, index, .. } = e {
            if load_step(k, *operand, index, d) != Some(0) {
                along &= load_step(k, *operand, index, d2) == Some(1);
            }
        }
    });
    let sw = swapped_inner(k);
    along
        && sw.body.dtype(&k.inputs.iter().map(|v| v.dtype).collect::<Vec<_>>(), None) == DType::F32
        && vexpr_ok(&sw, &sw.body)
}

/// `vectors[i][t]` into `out[t][i]`: a square of `lanes` vectors transposed by pairs of
/// shuffles, exchanging blocks of 1, 2, 4, … lanes.
fn transpose_square<'ctx>(g: &CodeGen<'ctx>, mut v: Vec<VectorValue<'ctx>>) -> BackendResult<Vec<VectorValue<'ctx>>> {
    let n = v.len();
    let i32t = g.context.i32_type();
    let mut h = 1;
    while h < n {
        for i in (0..n).filter(|i| i & h == 0) {
            let (a, c) = (v[i], v[i + h]);
            let lo: Vec<_> = (0..n).map(|j| if j & h == 0 { j } else { n + j - h }).collect();
            let hi: Vec<_> = (0..n).map(|j| if j & h == 0 { j + h } else { n + j }).collect();
            let mask = |m: Vec<usize>| {
                VectorType::const_vector(&m.iter().map(|&x| i32t.const_int(x as u64, false)).collect::<Vec<_>>())
            };
            v[i] = g.builder.build_shuffle_vector(a, c, mask(lo), "tlo").map_err(llvm_err)?;
            v[i + h] = g.builder.build_shuffle_vector(a, c, mask(hi), "thi").map_err(llvm_err)?;
        }
        h *= 2;
    }
    Ok(v)
}

/// Emits a task of a kernel that passes [`transposed_ok`]: `lanes` rows from `row.vars` along
/// the dim next to the innermost (fewer at its end), the lanes `jlo..jhi` of the innermost in
/// squares of `lanes`: one vector per innermost position along those rows, the square
/// transposed, one (masked) store per row.
pub(crate) fn gen_transposed<'ctx>(
    row: &Row<'_, 'ctx>,
    (jlo, jhi): (IntValue<'ctx>, IntValue<'ctx>),
    lanes: usize,
) -> BackendResult<()> {
    let Row { g, f, k, bases, out_base, vars } = *row;
    let b = &g.builder;
    let (np, d, d2) = (k.n_par, k.n_par - 1, k.n_par - 2);
    let sw = swapped_inner(k);
    let vt = g.context.f32_type().vec_type(lanes as u32);
    let w = lanes as i64;
    // Rows of this tile: up to `lanes`.
    let left = b.build_int_nsw_sub(g.i64(k.domain[d2] as i64), vars[d2], "rows").map_err(llvm_err)?;
    let short = b.build_int_compare(IntPredicate::SLT, left, g.i64(w), "short").map_err(llvm_err)?;
    let rows = b.build_select(short, left, g.i64(w), "nrows").map_err(llvm_err)?.into_int_value();
    let row_mask = lane_mask(g, lanes as u32, rows)?;
    g.for_range(f, g.i64(0), g.i64(k.domain[d].div_ceil(lanes) as i64), &mut |blk| {
        let j0 = b
            .build_int_nsw_add(jlo, b.build_int_nsw_mul(blk, g.i64(w), "jb").map_err(llvm_err)?, "j0")
            .map_err(llvm_err)?;
        let in_range = b.build_int_compare(IntPredicate::SLT, j0, jhi, "inr").map_err(llvm_err)?;
        let (go, skip) = (g.context.append_basic_block(f, "tsq"), g.context.append_basic_block(f, "tsq.end"));
        b.build_conditional_branch(in_range, go, skip).map_err(llvm_err)?;
        b.position_at_end(go);
        let cols = b.build_int_nsw_sub(jhi, j0, "cols").map_err(llvm_err)?;
        let col_mask = lane_mask(g, lanes as u32, cols)?;
        // One vector along the rows per column; a column past the end reads the last one
        // again, its lanes never stored (the stores are masked to the columns).
        let last_col = b.build_int_nsw_sub(jhi, g.i64(1), "lastc").map_err(llvm_err)?;
        let mut v = Vec::with_capacity(lanes);
        for i in 0..lanes {
            let col = b.build_int_nsw_add(j0, g.i64(i as i64), "col").map_err(llvm_err)?;
            let past = b.build_int_compare(IntPredicate::SGT, col, last_col, "past").map_err(llvm_err)?;
            let col = b.build_select(past, last_col, col, "colc").map_err(llvm_err)?.into_int_value();
            // In the swapped kernel, dim d is the rows' and d2 the column's.
            let mut vs = vars.to_vec();
            vs[d] = vars[d2];
            vs[d2] = col;
            v.push(vgen_masked(g, &sw, bases, &sw.body, &vs, None, vt, Some(row_mask))?);
        }
        let t = transpose_square(g, v)?;
        for (r, y) in t.into_iter().enumerate() {
            let ok = b.build_int_compare(IntPredicate::SLT, g.i64(r as i64), rows, "rok").map_err(llvm_err)?;
            let (yes, next) = (g.context.append_basic_block(f, "trow"), g.context.append_basic_block(f, "trow.end"));
            b.build_conditional_branch(ok, yes, next).map_err(llvm_err)?;
            b.position_at_end(yes);
            let mut vs = vars.to_vec();
            vs[d2] = b.build_int_nsw_add(vars[d2], g.i64(r as i64), "tr").map_err(llvm_err)?;
            vs[d] = j0;
            let p = g.elem_ptr(out_base, DType::F32, g.linear(&k.output, &vs[..np])?)?;
            vstore_masked(g, p, y, col_mask)?;
            b.build_unconditional_branch(next).map_err(llvm_err)?;
            b.position_at_end(next);
        }
        b.build_unconditional_branch(skip).map_err(llvm_err)?;
        b.position_at_end(skip);
        Ok(())
    })
}

/// `a ⊕ x` on vectors, as [`kiln_llvm_codegen::expr::combine`] does on scalars.
fn vcombine<'ctx>(
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

/// One row of a kernel body being emitted: the kernel, its function, its operands' base
/// pointers and its output's, and the outer point `vars` of the row.
pub(crate) struct Row<'a, 'ctx> {
    pub g: &'a CodeGen<'ctx>,
    pub f: FunctionValue<'ctx>,
    pub k: &'a Kernel,
    pub bases: &'a [PointerValue<'ctx>],
    pub out_base: PointerValue<'ctx>,
    pub vars: &'a [IntValue<'ctx>],
}

/// Emits a task of a kernel that passes [`row_ok`]: `tile` rows from `row.vars` along the dim
/// next to the innermost ([`row_tile`]) run together where that many are left, else one by
/// one.
pub(crate) fn gen_rows<'ctx>(
    row: &Row<'_, 'ctx>,
    range: (IntValue<'ctx>, IntValue<'ctx>),
    lanes: usize,
    tile: usize,
) -> BackendResult<()> {
    if tile == 1 {
        return gen_row(row, range, lanes, 1);
    }
    let (g, f) = (row.g, row.f);
    let b = &g.builder;
    let d2 = row.k.n_par - 2;
    let extent = g.i64(row.k.domain[d2] as i64);
    let end = b.build_int_nsw_add(row.vars[d2], g.i64(tile as i64), "tend").map_err(llvm_err)?;
    let whole = b.build_int_compare(IntPredicate::SLE, end, extent, "whole").map_err(llvm_err)?;
    let (tiled, single, done) = (
        g.context.append_basic_block(f, "tile"),
        g.context.append_basic_block(f, "tile.rest"),
        g.context.append_basic_block(f, "tile.done"),
    );
    b.build_conditional_branch(whole, tiled, single).map_err(llvm_err)?;
    b.position_at_end(tiled);
    gen_row(row, range, lanes, tile)?;
    b.build_unconditional_branch(done).map_err(llvm_err)?;
    b.position_at_end(single);
    g.for_range(f, row.vars[d2], extent, &mut |r| {
        let mut vars = row.vars.to_vec();
        vars[d2] = r;
        gen_row(&Row { vars: &vars, ..*row }, range, lanes, 1)
    })?;
    b.build_unconditional_branch(done).map_err(llvm_err)?;
    b.position_at_end(done);
    Ok(())
}

/// Emits `tile` rows of a kernel that passes [`row_ok`]: the lanes `jlo..jhi` of the innermost
/// parallel dim, in blocks of [`BLOCK`] vectors of `lanes`, then one block of fewer vectors
/// for the rest, its last vector masked.
fn gen_row<'ctx>(
    row: &Row<'_, 'ctx>,
    (jlo, jhi): (IntValue<'ctx>, IntValue<'ctx>),
    lanes: usize,
    tile: usize,
) -> BackendResult<()> {
    let (g, f) = (row.g, row.f);
    let b = &g.builder;
    let i64t = g.context.i64_type();
    // The next lane to do, threaded through the block loops.
    let jslot = entry_alloca(g, f, i64t)?;
    b.build_store(jslot, jlo).map_err(llvm_err)?;
    // Full blocks of `row_block` vectors.
    let block = row_block(row.k);
    let span = g.i64((block * lanes) as i64);
    let header = g.context.append_basic_block(f, "vrow");
    let body = g.context.append_basic_block(f, "vblock");
    let exit = g.context.append_basic_block(f, "vrow.end");
    b.build_unconditional_branch(header).map_err(llvm_err)?;
    b.position_at_end(header);
    let j = b.build_load(i64t, jslot, "j").map_err(llvm_err)?.into_int_value();
    let end = b.build_int_nsw_add(j, span, "jend").map_err(llvm_err)?;
    let fits = b.build_int_compare(IntPredicate::SLE, end, jhi, "fits").map_err(llvm_err)?;
    b.build_conditional_branch(fits, body, exit).map_err(llvm_err)?;
    b.position_at_end(body);
    gen_block(row, j, (block, tile), g.context.f32_type().vec_type(lanes as u32), None)?;
    b.build_store(jslot, end).map_err(llvm_err)?;
    b.build_unconditional_branch(header).map_err(llvm_err)?;
    b.position_at_end(exit);
    // The rest of the row (fewer than BLOCK vectors) as one block of 1 to BLOCK vectors,
    // the last masked: independent accumulators however short the row (a 56-pixel image row
    // is 4 vectors of 16, not 2 + 1 + a half and a scalar tail, each a chain of dependent
    // adds through the reduction).
    let j = b.build_load(i64t, jslot, "j").map_err(llvm_err)?.into_int_value();
    let rest = b.build_int_nsw_sub(jhi, j, "rest").map_err(llvm_err)?;
    let done = g.context.append_basic_block(f, "vrow.done");
    let w = lanes as i64;
    let vectors = b.build_int_add(rest, g.i64(w - 1), "rv").map_err(llvm_err)?;
    let vectors = b.build_int_signed_div(vectors, g.i64(w), "nv").map_err(llvm_err)?;
    let blocks: Vec<_> = (1..=block).map(|_| g.context.append_basic_block(f, "vrow.rest")).collect();
    let cases: Vec<_> = blocks.iter().enumerate().map(|(i, &bb)| (g.i64(i as i64 + 1), bb)).collect();
    b.build_switch(vectors, done, &cases).map_err(llvm_err)?;
    for (i, &bb) in blocks.iter().enumerate() {
        b.position_at_end(bb);
        let n = i + 1;
        let last = b.build_int_nsw_sub(rest, g.i64((n as i64 - 1) * w), "last").map_err(llvm_err)?;
        let mask = lane_mask(g, lanes as u32, last)?;
        gen_block(row, j, (n, tile), g.context.f32_type().vec_type(lanes as u32), Some(mask))?;
        b.build_unconditional_branch(done).map_err(llvm_err)?;
    }
    b.position_at_end(done);
    Ok(())
}

/// For a reduction body with padded loads whose indices are affine: whether, at the parallel
/// point `vars` and for the lanes `j0 .. j0 + span` of the row, every such index stays inside
/// its extent over the whole reduction domain (an `i1`), and the body with those loads
/// unpadded. `None` when there is nothing to check or an index is not affine.
fn interior_check<'ctx>(
    g: &CodeGen<'ctx>,
    k: &Kernel,
    vars: &[IntValue<'ctx>],
    (j0, span): (IntValue<'ctx>, i64),
) -> BackendResult<Option<(IntValue<'ctx>, Expr)>> {
    let (np, nd) = (k.n_par, k.domain.len());
    // The affine forms of the padded loads' indices, or None if one is not affine.
    let mut forms: Option<Vec<(i64, Vec<i64>, usize)>> = Some(Vec::new());
    k.body.visit(&mut |e| {
        if let Expr::Load { operand, index, pad: Some(_) } = e {
            for (ix, &ext) in index.iter().zip(&k.inputs[*operand].extents) {
                match (affine_expr(ix, nd), forms.as_mut()) {
                    (Some((c, coef)), Some(v)) => v.push((c, coef, ext)),
                    _ => forms = None,
                }
            }
        }
    });
    let Some(forms) = forms.filter(|v| !v.is_empty()) else { return Ok(None) };
    let b = &g.builder;
    let mut inside = g.context.bool_type().const_int(1, false);
    for (c, coef, ext) in forms {
        // An index that moves with the lanes but stays inside over the whole domain needs
        // no check.
        let lane = coef[np - 1];
        let (all_lo, all_hi) = affine_range(c, &coef, &k.domain);
        if lane != 0 && all_lo >= 0 && all_hi < ext as i64 {
            continue;
        }
        // The range over the reduction variables and the block's lanes, offset by the outer
        // parallel ones and the block's first lane.
        let mut red: Vec<i64> = (0..nd).map(|d| if d >= np { coef[d] } else { 0 }).collect();
        let mut dims = k.domain.clone();
        red[np - 1] = lane;
        dims[np - 1] = span.max(1) as usize;
        let (lo, hi) = affine_range(c, &red, &dims);
        let mut base = g.i64(0);
        for (d, &v) in vars.iter().enumerate().take(np) {
            let v = if d == np - 1 { j0 } else { v };
            if coef[d] != 0 {
                let t = b.build_int_nsw_mul(v, g.i64(coef[d]), "ic").map_err(llvm_err)?;
                base = b.build_int_nsw_add(base, t, "ib").map_err(llvm_err)?;
            }
        }
        let lo = b.build_int_nsw_add(base, g.i64(lo), "ilo").map_err(llvm_err)?;
        let hi = b.build_int_nsw_add(base, g.i64(hi), "ihi").map_err(llvm_err)?;
        let ok_lo = b.build_int_compare(IntPredicate::SGE, lo, g.i64(0), "ok").map_err(llvm_err)?;
        let ok_hi = b.build_int_compare(IntPredicate::SLT, hi, g.i64(ext as i64), "ok").map_err(llvm_err)?;
        inside = b.build_and(inside, ok_lo, "in").map_err(llvm_err)?;
        inside = b.build_and(inside, ok_hi, "in").map_err(llvm_err)?;
    }
    let unpadded = k.body.clone().map(&mut |e| match e {
        Expr::Load { operand, index, pad: Some(_) } => Expr::Load { operand, index, pad: None },
        e => e,
    });
    Ok(Some((inside, unpadded)))
}

/// `n` vectors `vt` from lane `j0` of `tile` rows from `row.vars` (along the dim next to the
/// innermost): the reduction (if any) accumulates in registers, then the finalizer, then one
/// store per vector. With `last_mask`, the last vector of each row reads and writes only those
/// lanes (the end of the row).
fn gen_block<'ctx>(
    row: &Row<'_, 'ctx>,
    j0: IntValue<'ctx>,
    (n, tile): (usize, usize),
    vt: VectorType<'ctx>,
    last_mask: Option<VectorValue<'ctx>>,
) -> BackendResult<()> {
    let Row { g, f, k, bases, out_base, vars } = *row;
    let b = &g.builder;
    let (np, d) = (k.n_par, k.n_par - 1);
    let w = vt.get_size() as i64;
    // The point of vector `i` of row `r` (0..tile).
    let at = |vars: &[IntValue<'ctx>], r: usize, i: usize| -> BackendResult<Vec<IntValue<'ctx>>> {
        let mut vs = vars.to_vec();
        vs[d] = b.build_int_nsw_add(j0, g.i64(i as i64 * w), "jv").map_err(llvm_err)?;
        if r > 0 {
            vs[d - 1] = b.build_int_nsw_add(vars[d - 1], g.i64(r as i64), "rv").map_err(llvm_err)?;
        }
        Ok(vs)
    };
    let mask_of = |i: usize| if i + 1 == n { last_mask } else { None };
    let store = |i: usize, vs: &[IntValue<'ctx>], v: VectorValue<'ctx>| -> BackendResult<()> {
        let p = g.elem_ptr(out_base, DType::F32, g.linear(&k.output, &vs[..np])?)?;
        match mask_of(i) {
            Some(m) => vstore_masked(g, p, v, m),
            None => vstore(g, p, v),
        }
    };
    let vectors = || (0..tile).flat_map(|r| (0..n).map(move |i| (r, i)));
    let Some(red) = &k.reduction else {
        for (r, i) in vectors() {
            let vs = at(vars, r, i)?;
            store(i, &vs, vgen_masked(g, k, bases, &k.body, &vs, None, vt, mask_of(i))?)?;
        }
        return Ok(());
    };
    let Scalar::F32(init) = red.init else { return Err(llvm_err("vector rows reduce f32")) };
    let init = splat(g, vt, g.context.f32_type().const_float(init as f64).into())?;
    let slots = vectors().map(|_| entry_alloca(g, f, vt)).collect::<BackendResult<Vec<_>>>()?;
    for &s in &slots {
        b.build_store(s, init).map_err(llvm_err)?;
    }
    let leaf = |rvars: &[IntValue<'ctx>], body: &Expr| -> BackendResult<()> {
        for ((r, i), &s) in vectors().zip(&slots) {
            let x = vgen_masked(g, k, bases, body, &at(rvars, r, i)?, None, vt, mask_of(i))?;
            let a = b.build_load(vt, s, "va").map_err(llvm_err)?.into_vector_value();
            b.build_store(s, vcombine(g, red.combine, a, x)?).map_err(llvm_err)?;
        }
        Ok(())
    };
    let taps: usize = k.domain[np..].iter().product();
    let inline = tile > 1 && taps <= INLINE_TAPS && window_overlaps(k, np - 2);
    let reduce = |body: &Expr, inline: bool| -> BackendResult<()> {
        let mut rv = vars.to_vec();
        if !inline {
            return kiln_llvm_codegen::reduce_loops(g, f, &k.domain, np, &mut rv, &mut |rvars| leaf(rvars, body));
        }
        for t in 0..taps {
            let mut rest = t;
            for dim in (np..k.domain.len()).rev() {
                rv[dim] = g.i64((rest % k.domain[dim]) as i64);
                rest /= k.domain[dim];
            }
            leaf(&rv, body)?;
        }
        Ok(())
    };
    // Where every padded load stays inside its view over the whole reduction (an interior
    // pixel of a depthwise convolution or a pool), the reduction runs without the padding's
    // per-step bounds checks; the checked form is kept for the border. The indices are
    // affine: inside for the first and the last row of the tile is inside for all of them.
    let lanes_of_block = (j0, n as i64 * w);
    let first = interior_check(g, k, vars, lanes_of_block)?;
    let interior = match (first, tile) {
        (Some(c), 1) => Some(c),
        (Some((inside, unpadded)), _) => {
            let last = at(vars, tile - 1, 0)?;
            let (inside_last, _) = interior_check(g, k, &last, lanes_of_block)?.expect("the same loads");
            Some((b.build_and(inside, inside_last, "in").map_err(llvm_err)?, unpadded))
        }
        (None, _) => None,
    };
    match interior {
        Some((inside, unpadded)) => {
            let fast = g.context.append_basic_block(f, "interior");
            let slow = g.context.append_basic_block(f, "border");
            let done = g.context.append_basic_block(f, "reduced");
            b.build_conditional_branch(inside, fast, slow).map_err(llvm_err)?;
            b.position_at_end(fast);
            reduce(&unpadded, inline)?;
            b.build_unconditional_branch(done).map_err(llvm_err)?;
            b.position_at_end(slow);
            reduce(&k.body, false)?;
            b.build_unconditional_branch(done).map_err(llvm_err)?;
            b.position_at_end(done);
        }
        None => reduce(&k.body, inline)?,
    }
    for ((r, i), &s) in vectors().zip(&slots) {
        let vs = at(vars, r, i)?;
        let a = b.build_load(vt, s, "va").map_err(llvm_err)?.into_vector_value();
        let y = match &red.finalize {
            Some(fin) => vgen_masked(g, k, bases, fin, &vs, Some(a), vt, mask_of(i))?,
            None => a,
        };
        store(i, &vs, y)?;
    }
    Ok(())
}
