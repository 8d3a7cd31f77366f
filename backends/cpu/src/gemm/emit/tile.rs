//! One `MR×NR` register tile of a matched product: A's rows for a K slice, the accumulators
//! (loaded, multiplied through the K loop, stored with the epilogue), f32 or integer pairs.

use super::*;

/// A's element type: f32, or i16 (an integer product).
fn a_dtype(p: &Gemm) -> DType {
    if p.int.is_some() {
        DType::I16
    } else {
        DType::F32
    }
}

/// Element `ak` of a row of A broadcast as the micro-kernel multiplies it: an f32, or an
/// integer product's pair of i16 (`ak` counts pairs) as one 32-bit lane; `half`: only the
/// pair's first element is in A (an odd K's last), the other lane zero.
fn a_elem<'ctx>(
    g: &CodeGen<'ctx>,
    p: &Gemm,
    ap: PointerValue<'ctx>,
    ak: IntValue<'ctx>,
    half: bool,
) -> BackendResult<BasicValueEnum<'ctx>> {
    if p.int.is_none() {
        return g.load_elem(ap, DType::F32, ak);
    }
    let (i16t, i32t) = (g.context.i16_type(), g.context.i32_type());
    let at = g.elem_ptr(ap, DType::I32, ak)?;
    let v = g.builder.build_load(if half { i16t } else { i32t }, at, "pair").map_err(llvm_err)?;
    v.as_instruction_value().expect("a load").set_alignment(2).map_err(llvm_err)?;
    if !half {
        return Ok(v);
    }
    Ok(g.builder.build_int_z_extend(v.into_int_value(), i32t, "half").map_err(llvm_err)?.into())
}

/// Each row's A pointer and step along the inner K dim for tap `tap_lo + tt` of the slice
/// (a row outside the padded input reads the zero row).
fn a_row_ptrs<'ctx>(
    g: &CodeGen<'ctx>,
    p: &Gemm,
    t: &ARows<'_, 'ctx>,
    mvs: &[Vec<IntValue<'ctx>>],
    a_rows: &[IntValue<'ctx>],
    tt: IntValue<'ctx>,
) -> BackendResult<Vec<(PointerValue<'ctx>, IntValue<'ctx>)>> {
    let nkd = p.k_dims.len();
    let tv = unravel(g, add(g, t.tap_lo, tt)?, &p.k_dims[..nkd - 1])?;
    let a_tap = add(g, dot(g, &tv, &p.a_k[..nkd - 1])?, mul(g, t.kc0, t.a_kin)?)?;
    let mut rows = Vec::with_capacity(a_rows.len());
    for (i, &a_row) in a_rows.iter().enumerate() {
        let ptr = g.elem_ptr(t.a_base, a_dtype(p), add(g, a_row, a_tap)?)?;
        if p.a_checks.is_empty() {
            rows.push((ptr, g.i64(t.a_kin)));
            continue;
        }
        let mut all = g.context.bool_type().const_all_ones();
        for c in &p.a_checks {
            let nb = t.bvars.len();
            let ms = nb + p.m_dims.len();
            let mut v = g.i64(c.c);
            v = add(g, v, dot(g, t.bvars, &c.coef[..nb])?)?;
            v = add(g, v, dot(g, &mvs[i], &c.coef[nb..ms])?)?;
            let ko = ms + 1;
            v = add(g, v, dot(g, &tv, &c.coef[ko..ko + nkd - 1])?)?;
            let ok = g.builder.build_int_compare(IntPredicate::ULT, v, g.i64(c.ext), "inb").map_err(llvm_err)?;
            all = g.builder.build_and(all, ok, "valid").map_err(llvm_err)?;
        }
        let ptr = g.builder.build_select(all, ptr, t.zslot, "arow").map_err(llvm_err)?.into_pointer_value();
        let step = if p.zero_row() > 0 {
            g.i64(t.a_kin)
        } else {
            g.builder.build_select(all, g.i64(t.a_kin), g.i64(0), "astep").map_err(llvm_err)?.into_int_value()
        };
        rows.push((ptr, step));
    }
    Ok(rows)
}

/// One `r×NR` tile: C[i0.., j0..] (+)= A[i0.., slice] · panel.
pub(super) fn micro_tile<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    p: &Gemm,
    r: usize,
    t: &Tile<'_, 'ctx>,
    splat: &dyn Fn(BasicValueEnum<'ctx>) -> BackendResult<VectorValue<'ctx>>,
) -> BackendResult<()> {
    // The M variables of each row, and where the row starts in A and C.
    let mvs = step_rows(g, t.i0, r, &p.m_dims)?;
    let c_rows: Vec<IntValue> = mvs.iter().map(|mv| add(g, t.c0, dot(g, mv, &p.c_m)?)).collect::<BackendResult<_>>()?;
    let a_rows: Vec<IntValue> = mvs.iter().map(|mv| add(g, t.a0, dot(g, mv, &p.a_m)?)).collect::<BackendResult<_>>()?;
    let masks = load_accumulators(g, f, p, r, t, &c_rows)?;
    multiply_slice(g, f, p, r, t, &mvs, &a_rows, splat)?;
    store_tile(g, f, p, t, &mvs, &c_rows, masks.as_deref())
}

/// The tile's accumulators before a K slice: zero on the first slice, else the partial sums
/// in C (through masked loads, or the stack tile, at the N edge). Returns the lane masks of
/// an edge tile of a C contiguous along N.
fn load_accumulators<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    p: &Gemm,
    r: usize,
    t: &Tile<'_, 'ctx>,
    c_rows: &[IntValue<'ctx>],
) -> BackendResult<Option<Vec<VectorValue<'ctx>>>> {
    let (w, nr) = (p.bl.w, p.bl.nr);
    let nq = nr / w;
    let acc = |i: usize, q: usize| t.accs[i * nq + q];
    // Initial accumulators: zero on the first K slice, else the partial sums in C.
    for i in 0..r {
        for q in 0..nq {
            g.builder.build_store(acc(i, q), t.zero).map_err(llvm_err)?;
        }
    }
    let not_first = g.builder.build_not(t.first, "nf").map_err(llvm_err)?;
    let full_reload = g.builder.build_and(not_first, t.c_full, "fr").map_err(llvm_err)?;
    when(g, f, full_reload, &mut || {
        for (i, &ci) in c_rows.iter().enumerate() {
            for q in 0..nq {
                let pc = f32_ptr(g, t.out_base, add(g, ci, g.i64((q * w) as i64))?)?;
                g.builder.build_store(acc(i, q), vload(g, t.vt, pc)?).map_err(llvm_err)?;
            }
        }
        Ok(())
    })?;
    let not_full = g.builder.build_not(t.c_full, "nfull").map_err(llvm_err)?;
    let edge_reload = g.builder.build_and(not_first, not_full, "er").map_err(llvm_err)?;
    // A tile past the last full panel of a C contiguous along N reads and writes the columns
    // it has with masked vector loads and stores (lane `l` of vector `q`: column
    // `j0 + q·W + l < j0 + jn`); elsewhere (C strided along N) through the stack tile.
    let masks = if p.c_n == 1 { Some(lane_masks(g, p, t.jn)?) } else { None };
    when(g, f, edge_reload, &mut || {
        if let Some(masks) = &masks {
            for (i, &ci) in c_rows.iter().enumerate() {
                for (q, &m) in masks.iter().enumerate() {
                    let pc = f32_ptr(g, t.out_base, add(g, ci, g.i64((q * w) as i64))?)?;
                    g.builder.build_store(acc(i, q), vload_masked(g, t.vt, pc, Some(m))?).map_err(llvm_err)?;
                }
            }
            return Ok(());
        }
        for (i, &ci) in c_rows.iter().enumerate() {
            for q in 0..nq {
                vstore(g, f32_ptr(g, t.ctile, g.i64((i * nr + q * w) as i64))?, t.zero)?;
            }
            g.for_range(f, g.i64(0), t.jn, &mut |j| {
                let v = g.load_elem(t.out_base, DType::F32, add(g, ci, mul(g, j, p.c_n)?)?)?;
                g.store_elem(t.ctile, DType::F32, add(g, g.i64((i * nr) as i64), j)?, v)
            })?;
            for q in 0..nq {
                let v = vload(g, t.vt, f32_ptr(g, t.ctile, g.i64((i * nr + q * w) as i64))?)?;
                g.builder.build_store(acc(i, q), v).map_err(llvm_err)?;
            }
        }
        Ok(())
    })?;
    Ok(masks)
}

/// The products of one K slice into the accumulators: for each tap, the K loop over the
/// panel rows (unrolled, or over interleaved accumulator sets for short tiles), then the sets
/// summed into the first.
#[allow(clippy::too_many_arguments)]
fn multiply_slice<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    p: &Gemm,
    r: usize,
    t: &Tile<'_, 'ctx>,
    mvs: &[Vec<IntValue<'ctx>>],
    a_rows: &[IntValue<'ctx>],
    splat: &dyn Fn(BasicValueEnum<'ctx>) -> BackendResult<VectorValue<'ctx>>,
) -> BackendResult<()> {
    let (w, nr) = (p.bl.w, p.bl.nr);
    let nq = nr / w;
    let acc = |i: usize, q: usize| t.accs[i * nq + q];
    // Short tiles (few rows: M = 1, edges) keep `sets` independent accumulator sets, over
    // interleaved k, so that the FMA latency is hidden without MR rows of work.
    let sets = (p.bl.mr / r).min(4);
    let acc_s = |s: usize, i: usize, q: usize| t.accs[(s * r + i) * nq + q];
    for s in 1..sets {
        for i in 0..r {
            for q in 0..nq {
                g.builder.build_store(acc_s(s, i, q), t.zero).map_err(llvm_err)?;
            }
        }
    }
    // An odd K's last pair of an integer product has one element of A: a step of its own.
    let odd = p.int.is_some_and(|i| i.k_odd);
    // The K loop over `len` steps from panel row `row0`, A's rows given as (pointer, step).
    let k_loop = |rows: &[(PointerValue<'ctx>, IntValue<'ctx>)],
                  row0: IntValue<'ctx>,
                  len: IntValue<'ctx>|
     -> BackendResult<()> {
        let (len, tail) = if odd {
            let last = sub(g, len, g.i64(1))?;
            (last, Some(last))
        } else {
            (len, None)
        };
        let step = |kk: IntValue<'ctx>, s: usize, half: bool| -> BackendResult<()> {
            let boff = g.builder.build_int_nsw_mul(add(g, row0, kk)?, t.bstride, "bo").map_err(llvm_err)?;
            let bv: Vec<VectorValue> = (0..nq)
                .map(|q| b_load(g, p, t.vt, b_ptr(g, p, t.bptr, add(g, boff, g.i64((q * w) as i64))?)?))
                .collect::<BackendResult<_>>()?;
            for (i, &(ap, astep)) in rows.iter().enumerate() {
                let ak = g.builder.build_int_nsw_mul(kk, astep, "ak").map_err(llvm_err)?;
                let av = splat(a_elem(g, p, ap, ak, half)?)?;
                for (q, &bq) in bv.iter().enumerate() {
                    let cur = g.builder.build_load(t.vt, acc_s(s, i, q), "a").map_err(llvm_err)?;
                    let nv = multiply_add(g, p, t, av, bq, cur.into_vector_value())?;
                    g.builder.build_store(acc_s(s, i, q), nv).map_err(llvm_err)?;
                }
            }
            Ok(())
        };
        // Prefetch of the panel rows `t.prefetch` steps ahead of `row0 + k0`, for the `n` steps
        // of one trip of an unrolled loop, a cache line at a time.
        let prefetch_b = |row0: IntValue<'ctx>, k0: IntValue<'ctx>, n: usize| -> BackendResult<()> {
            let Some(ahead) = t.prefetch else { return Ok(()) };
            let row = add(g, add(g, row0, k0)?, g.i64(ahead as i64))?;
            let off = g.builder.build_int_nsw_mul(row, t.bstride, "pfo").map_err(llvm_err)?;
            let i32t = g.context.i32_type();
            // (address, write = 0, locality = 3: keep in all levels, data cache = 1)
            let (rw, loc, data) = (i32t.const_zero(), i32t.const_int(3, false), i32t.const_int(1, false));
            let per_line = p.b_per_line();
            for l in 0..(n * nr).div_ceil(per_line) {
                let at = b_ptr(g, p, t.bptr, add(g, off, g.i64((l * per_line) as i64))?)?;
                g.builder
                    .build_call(t.prefetch_fn, &[at.into(), rw.into(), loc.into(), data.into()], "")
                    .map_err(llvm_err)?;
            }
            // This tile's share of the next panel, into L2 (locality 2), spread over its K
            // loop: `lines` lines per tile, `per_trip` per trip of `n` steps.
            if let Some((it, lines)) = t.next_panel {
                let per_trip = (lines * n).div_ceil(p.k);
                let trip =
                    g.builder.build_int_unsigned_div(add(g, row0, k0)?, g.i64(n as i64), "trip").map_err(llvm_err)?;
                let line0 = add(g, mul(g, it, lines as i64)?, mul(g, trip, per_trip as i64)?)?;
                // Lines are 16 floats (32 bf16); the next panel starts K·NR elements on.
                let base = add(g, mul(g, line0, per_line as i64)?, g.i64((p.k * nr) as i64))?;
                let l2 = i32t.const_int(2, false);
                for l in 0..per_trip {
                    let at = b_ptr(g, p, t.bptr, add(g, base, g.i64((l * per_line) as i64))?)?;
                    g.builder
                        .build_call(t.prefetch_fn, &[at.into(), rw.into(), l2.into(), data.into()], "")
                        .map_err(llvm_err)?;
                }
            }
            Ok(())
        };
        // Full-height tiles: the loop unrolled by `UNROLL` (fewer loop instructions between the
        // FMAs); short tiles interleave accumulator sets instead.
        if sets == 1 {
            let u = if p.int.is_some() { 1 } else { UNROLL };
            let whole = g.builder.build_int_signed_div(len, g.i64(u as i64), "ku").map_err(llvm_err)?;
            g.for_range(f, g.i64(0), whole, &mut |kq| {
                let k0 = mul(g, kq, u as i64)?;
                prefetch_b(row0, k0, u)?;
                for s in 0..u {
                    step(add(g, k0, g.i64(s as i64))?, 0, false)?;
                }
                Ok(())
            })?;
            g.for_range(f, mul(g, whole, u as i64)?, len, &mut |kk| step(kk, 0, false))?;
            return tail.map_or(Ok(()), |last| step(last, 0, true));
        }
        let whole = g.builder.build_int_signed_div(len, g.i64(sets as i64), "kq").map_err(llvm_err)?;
        g.for_range(f, g.i64(0), whole, &mut |kq| {
            let k0 = mul(g, kq, sets as i64)?;
            prefetch_b(row0, k0, sets)?;
            for s in 0..sets {
                step(add(g, k0, g.i64(s as i64))?, s, false)?;
            }
            Ok(())
        })?;
        g.for_range(f, mul(g, whole, sets as i64)?, len, &mut |kk| step(kk, 0, false))?;
        tail.map_or(Ok(()), |last| step(last, 0, true))
    };

    g.for_range(f, g.i64(0), t.ntap, &mut |tt| {
        let rows = a_row_ptrs(g, p, &t.ar, mvs, a_rows, tt)?;
        let row0 = g.builder.build_int_nsw_mul(tt, t.kcn, "prow").map_err(llvm_err)?;
        k_loop(&rows, row0, t.kcn)
    })?;
    for s in 1..sets {
        for i in 0..r {
            for q in 0..nq {
                let x = g.builder.build_load(t.vt, acc(i, q), "a").map_err(llvm_err)?.into_vector_value();
                let y = g.builder.build_load(t.vt, acc_s(s, i, q), "b").map_err(llvm_err)?.into_vector_value();
                let sum = if p.int.is_some() {
                    g.builder.build_int_add(x, y, "sum").map_err(llvm_err)?
                } else {
                    g.builder.build_float_add(x, y, "sum").map_err(llvm_err)?
                };
                g.builder.build_store(acc(i, q), sum).map_err(llvm_err)?;
            }
        }
    }
    Ok(())
}

/// `cur + a·b` on vectors: an FMA, or (an integer product) `cur + vpmaddwd(a, b)`, the lanes
/// of `a` and `b` read as pairs of i16.
fn multiply_add<'ctx>(
    g: &CodeGen<'ctx>,
    p: &Gemm,
    t: &Tile<'_, 'ctx>,
    a: VectorValue<'ctx>,
    b: VectorValue<'ctx>,
    cur: VectorValue<'ctx>,
) -> BackendResult<VectorValue<'ctx>> {
    let call = |args: &[BasicValueEnum<'ctx>]| -> BackendResult<VectorValue<'ctx>> {
        let args: Vec<_> = args.iter().map(|&v| v.into()).collect();
        Ok(g.builder
            .build_call(t.fmuladd, &args, "mac")
            .map_err(llvm_err)?
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| llvm_err("multiply-add returned void"))?
            .into_vector_value())
    };
    if p.int.is_none() {
        return call(&[a.into(), b.into(), cur.into()]);
    }
    let pairs = g.context.i16_type().vec_type(2 * p.bl.w as u32);
    let x = g.builder.build_bit_cast(a, pairs, "ap").map_err(llvm_err)?;
    let y = g.builder.build_bit_cast(b, pairs, "bp").map_err(llvm_err)?;
    let prod = call(&[x, y])?;
    g.builder.build_int_add(cur, prod, "acc").map_err(llvm_err)
}

/// Stores the accumulators: straight into C for a full tile, through masked stores or the
/// stack tile at the N edge; the epilogue on the last slice.
fn store_tile<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    p: &Gemm,
    t: &Tile<'_, 'ctx>,
    mvs: &[Vec<IntValue<'ctx>>],
    c_rows: &[IntValue<'ctx>],
    masks: Option<&[VectorValue<'ctx>]>,
) -> BackendResult<()> {
    let (w, nr) = (p.bl.w, p.bl.nr);
    let nq = nr / w;
    let acc = |i: usize, q: usize| t.accs[i * nq + q];
    // The epilogue of accumulator vector `q` of row `i`, in f32 (on the lanes of `m` only).
    let fin_value = |i: usize, q: usize, m: Option<VectorValue<'ctx>>| {
        let vf = t.vfin.ok_or_else(|| llvm_err("an epilogue in registers"))?;
        let mut vars = t.ar.bvars.to_vec();
        vars.extend(mvs[i].iter().copied());
        vars.push(add(g, vf.j0, g.i64((q * w) as i64))?);
        vars.extend(std::iter::repeat_n(g.i64(0), p.n_kvars));
        let a = g.builder.build_load(t.vt, acc(i, q), "a").map_err(llvm_err)?.into_vector_value();
        // An integer product's sum, converted to f32 (the finalizer's `Cast(f32, Acc)`).
        let f32v = g.context.f32_type().vec_type(w as u32);
        let a =
            if p.int.is_some() { g.builder.build_signed_int_to_float(a, f32v, "af").map_err(llvm_err)? } else { a };
        crate::vector::vgen_masked(g, vf.k, vf.bases, vf.fin, &vars, Some(a), f32v, m)
    };
    if let Some(vf) = t.vfin.filter(|vf| vf.k.output.dtype.size() < 4) {
        return store_narrow(g, f, p, t, vf.k.output.dtype, c_rows, masks, &fin_value);
    }
    // Store: straight into C for a full tile, through the stack tile at the N edge.
    // The epilogue in registers, on the last slice (on the lanes of `masks` only, at an edge);
    // the result is kept as the accumulator's bits, which the stores move to C.
    let vector_fin = |masks: Option<&[VectorValue<'ctx>]>| -> BackendResult<()> {
        let Some(vf) = t.vfin else { return Ok(()) };
        when(g, f, vf.last, &mut || {
            for i in 0..mvs.len() {
                for q in 0..nq {
                    let y = fin_value(i, q, masks.map(|m| m[q]))?;
                    let y = g.builder.build_bit_cast(y, t.vt, "bits").map_err(llvm_err)?;
                    g.builder.build_store(acc(i, q), y).map_err(llvm_err)?;
                }
            }
            Ok(())
        })
    };
    let full = cx_blocks(g, f, t.c_full)?;
    g.builder.position_at_end(full.0);
    vector_fin(None)?;
    for (i, &ci) in c_rows.iter().enumerate() {
        for q in 0..nq {
            let v = g.builder.build_load(t.vt, acc(i, q), "a").map_err(llvm_err)?.into_vector_value();
            vstore(g, f32_ptr(g, t.out_base, add(g, ci, g.i64((q * w) as i64))?)?, v)?;
        }
    }
    g.builder.build_unconditional_branch(full.2).map_err(llvm_err)?;
    g.builder.position_at_end(full.1);
    if let Some(masks) = &masks {
        vector_fin(Some(masks))?;
        for (i, &ci) in c_rows.iter().enumerate() {
            for (q, &m) in masks.iter().enumerate() {
                let v = g.builder.build_load(t.vt, acc(i, q), "a").map_err(llvm_err)?.into_vector_value();
                vstore_masked(g, f32_ptr(g, t.out_base, add(g, ci, g.i64((q * w) as i64))?)?, v, m)?;
            }
        }
        g.builder.build_unconditional_branch(full.2).map_err(llvm_err)?;
        g.builder.position_at_end(full.2);
        return Ok(());
    }
    for (i, &ci) in c_rows.iter().enumerate() {
        for q in 0..nq {
            let v = g.builder.build_load(t.vt, acc(i, q), "a").map_err(llvm_err)?.into_vector_value();
            vstore(g, f32_ptr(g, t.ctile, g.i64((i * nr + q * w) as i64))?, v)?;
        }
        g.for_range(f, g.i64(0), t.jn, &mut |j| {
            let v = g.load_elem(t.ctile, DType::F32, add(g, g.i64((i * nr) as i64), j)?)?;
            g.store_elem(t.out_base, DType::F32, add(g, ci, mul(g, j, p.c_n)?)?, v)
        })?;
    }
    g.builder.build_unconditional_branch(full.2).map_err(llvm_err)?;
    g.builder.position_at_end(full.2);
    Ok(())
}

/// A tile's epilogue of accumulator vector `q` of row `i` in f32, on the lanes of a mask.
type FinValue<'f, 'ctx> = dyn Fn(usize, usize, Option<VectorValue<'ctx>>) -> BackendResult<VectorValue<'ctx>> + 'f;

/// Stores a tile into a narrow integer C (the only K slice, [`super::vector_part`]): each
/// vector's epilogue in f32, converted through i32 (NaN as 0, as the scalar conversion)
/// and wrapped to C's width `to`; masked stores at the N edge.
#[allow(clippy::too_many_arguments)]
fn store_narrow<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    p: &Gemm,
    t: &Tile<'_, 'ctx>,
    to: DType,
    c_rows: &[IntValue<'ctx>],
    masks: Option<&[VectorValue<'ctx>]>,
    fin_value: &FinValue<'_, 'ctx>,
) -> BackendResult<()> {
    let (w, nq) = (p.bl.w, p.bl.nr / p.bl.w);
    let i32v = g.context.i32_type().vec_type(w as u32);
    let nv = g
        .context
        .custom_width_int_type(std::num::NonZeroU32::new(to.bits()).expect("8 or 16 bits"))
        .map_err(llvm_err)?
        .vec_type(w as u32);
    // (An integer product's C is contiguous along N: its edges are masked.)
    let masks = masks.ok_or_else(|| llvm_err("a narrow C strided along N"))?;
    let (full, edge, done) = cx_blocks(g, f, t.c_full)?;
    for (block, masks) in [(full, None), (edge, Some(masks))] {
        g.builder.position_at_end(block);
        for (i, &ci) in c_rows.iter().enumerate() {
            for q in 0..nq {
                let m = masks.map(|m| m[q]);
                let y = fin_value(i, q, m)?;
                let yi = g.builder.build_float_to_signed_int(y, i32v, "fi").map_err(llvm_err)?;
                let nan = g.builder.build_float_compare(inkwell::FloatPredicate::UNO, y, y, "nan").map_err(llvm_err)?;
                let yi =
                    g.builder.build_select(nan, i32v.const_zero(), yi, "fi").map_err(llvm_err)?.into_vector_value();
                let yn = g.builder.build_int_truncate(yi, nv, "n").map_err(llvm_err)?;
                let pc = g.elem_ptr(t.out_base, to, add(g, ci, g.i64((q * w) as i64))?)?;
                match m {
                    Some(m) => vstore_masked(g, pc, yn, m)?,
                    None => {
                        let st = g.builder.build_store(pc, yn).map_err(llvm_err)?;
                        st.set_alignment(to.size() as u32).map_err(llvm_err)?;
                    }
                }
            }
        }
        g.builder.build_unconditional_branch(done).map_err(llvm_err)?;
    }
    g.builder.position_at_end(done);
    Ok(())
}

/// The lane masks of the `NR/W` vectors of a tile row `jn` columns wide.
fn lane_masks<'ctx>(g: &CodeGen<'ctx>, p: &Gemm, jn: IntValue<'ctx>) -> BackendResult<Vec<VectorValue<'ctx>>> {
    let w = p.bl.w;
    (0..p.bl.nr / w).map(|q| crate::vector::lane_mask(g, w as u32, sub(g, jn, g.i64((q * w) as i64))?)).collect()
}

/// `if cond {A} else {B}`: the (then, else, join) blocks, after branching on `cond`.
fn cx_blocks<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    cond: IntValue<'ctx>,
) -> BackendResult<(
    inkwell::basic_block::BasicBlock<'ctx>,
    inkwell::basic_block::BasicBlock<'ctx>,
    inkwell::basic_block::BasicBlock<'ctx>,
)> {
    let a = g.context.append_basic_block(f, "full");
    let b = g.context.append_basic_block(f, "edge");
    let j = g.context.append_basic_block(f, "stored");
    g.builder.build_conditional_branch(cond, a, b).map_err(llvm_err)?;
    Ok((a, b, j))
}
