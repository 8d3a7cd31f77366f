//! Code generation for the matched products: blocks, K slices, B panels, `MR×NR`
//! register tiles and the epilogue (see the parent module's doc).

use super::*;
use crate::vector::when;

mod tile;

use tile::micro_tile;

fn min<'ctx>(g: &CodeGen<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
    let lt = g.builder.build_int_compare(IntPredicate::SLT, a, b, "lt").map_err(llvm_err)?;
    Ok(g.builder.build_select(lt, a, b, "min").map_err(llvm_err)?.into_int_value())
}

/// `max(a, 0)`.
fn max0<'ctx>(g: &CodeGen<'ctx>, a: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
    let neg = g.builder.build_int_compare(IntPredicate::SLT, a, g.i64(0), "neg").map_err(llvm_err)?;
    Ok(g.builder.build_select(neg, g.i64(0), a, "max0").map_err(llvm_err)?.into_int_value())
}

fn add<'ctx>(g: &CodeGen<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
    g.builder.build_int_nsw_add(a, b, "add").map_err(llvm_err)
}

fn mul<'ctx>(g: &CodeGen<'ctx>, a: IntValue<'ctx>, c: i64) -> BackendResult<IntValue<'ctx>> {
    match c {
        0 => Ok(g.i64(0)),
        1 => Ok(a),
        c => g.builder.build_int_nsw_mul(a, g.i64(c), "mul").map_err(llvm_err),
    }
}

fn sub<'ctx>(g: &CodeGen<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
    g.builder.build_int_nsw_sub(a, b, "sub").map_err(llvm_err)
}

fn f32_ptr<'ctx>(g: &CodeGen<'ctx>, base: PointerValue<'ctx>, at: IntValue<'ctx>) -> BackendResult<PointerValue<'ctx>> {
    g.elem_ptr(base, DType::F32, at)
}

/// Element `at` of a prepacked B ([`Gemm::b_dtype`]).
fn b_ptr<'ctx>(
    g: &CodeGen<'ctx>,
    p: &Gemm,
    base: PointerValue<'ctx>,
    at: IntValue<'ctx>,
) -> BackendResult<PointerValue<'ctx>> {
    g.elem_ptr(base, p.b_dtype(), at)
}

/// A vector of B from the panel at `at`: W floats, or W bf16 widened to f32 (the bits shifted
/// into the high half: exact).
fn b_load<'ctx>(
    g: &CodeGen<'ctx>,
    p: &Gemm,
    vt: VectorType<'ctx>,
    at: PointerValue<'ctx>,
) -> BackendResult<VectorValue<'ctx>> {
    if !p.b_bf16 {
        return vload(g, vt, at);
    }
    let w = vt.get_size();
    let (i16v, i32v) = (g.context.i16_type().vec_type(w), g.context.i32_type().vec_type(w));
    let half = g.builder.build_load(i16v, at, "bh").map_err(llvm_err)?;
    half.as_instruction_value().expect("a load").set_alignment(2).map_err(llvm_err)?;
    let wide = g.builder.build_int_z_extend(half.into_vector_value(), i32v, "bw").map_err(llvm_err)?;
    let shift = VectorType::const_vector(&vec![g.context.i32_type().const_int(16, false); w as usize]);
    let bits = g.builder.build_left_shift(wide, shift, "bs").map_err(llvm_err)?;
    Ok(g.builder.build_bit_cast(bits, vt, "bf").map_err(llvm_err)?.into_vector_value())
}

/// `x` unravelled over `dims` (mixed radix, innermost last).
fn unravel<'ctx>(g: &CodeGen<'ctx>, x: IntValue<'ctx>, dims: &[usize]) -> BackendResult<Vec<IntValue<'ctx>>> {
    let mut out = vec![g.i64(0); dims.len()];
    let mut rest = x;
    for d in (0..dims.len()).rev() {
        if d == 0 {
            out[d] = rest;
        } else {
            let e = g.i64(dims[d] as i64);
            out[d] = g.builder.build_int_signed_rem(rest, e, "ur").map_err(llvm_err)?;
            rest = g.builder.build_int_signed_div(rest, e, "uq").map_err(llvm_err)?;
        }
    }
    Ok(out)
}

/// The M variables of rows `i0 .. i0 + r`: the first unravelled, each next one the previous
/// plus one with carries (a few selects instead of a division per M dim per row).
fn step_rows<'ctx>(
    g: &CodeGen<'ctx>,
    i0: IntValue<'ctx>,
    r: usize,
    dims: &[usize],
) -> BackendResult<Vec<Vec<IntValue<'ctx>>>> {
    let mut rows = Vec::with_capacity(r);
    let mut cur = unravel(g, i0, dims)?;
    for i in 0..r {
        if i > 0 {
            cur = kiln_llvm_codegen::increment(g, &cur, dims)?;
        }
        rows.push(cur.clone());
    }
    Ok(rows)
}

/// `Σ coef[i]·vars[i]`.
fn dot<'ctx>(g: &CodeGen<'ctx>, vars: &[IntValue<'ctx>], coef: &[i64]) -> BackendResult<IntValue<'ctx>> {
    let mut s = g.i64(0);
    for (&v, &c) in vars.iter().zip(coef) {
        if c != 0 {
            s = add(g, s, mul(g, v, c)?)?;
        }
    }
    Ok(s)
}

/// One NR-wide panel of B for column tile `jt` of the block `j_lo..j_hi` (whose batch
/// element starts at `b0`), over the K slice `kc0..kc0+kcn` of taps `tap_lo..+ntap`: where
/// the micro-kernel reads it (packing it into `panel` first if needed), and which columns of
/// C it covers.
fn b_panel<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    p: &Gemm,
    (b_base, panel): (PointerValue<'ctx>, PointerValue<'ctx>),
    (j_lo, j_hi, b0): (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
    (tap_lo, ntap, kc0, kcn): (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
    jt: IntValue<'ctx>,
) -> BackendResult<Panel<'ctx>> {
    let (nr, k_in) = (p.bl.nr, p.k_in());
    let j0 = add(g, j_lo, mul(g, jt, nr as i64)?)?;
    let jn = min(g, g.i64(nr as i64), sub(g, j_hi, j0)?)?;
    let jfull = g.builder.build_int_compare(IntPredicate::EQ, jn, g.i64(nr as i64), "jfull").map_err(llvm_err)?;
    // &B[0, j0] of this batch element.
    let b_at = add(g, b0, mul(g, j0, p.b_n)?)?;
    let src = PanelSource { b_base, b_at, tap_lo, ntap, kc0, kcn, jn };
    let pack = |g: &CodeGen<'ctx>| pack_panel(g, f, p, &src, panel);
    let (bptr, bstride) = if p.bsrc == BSource::Prepacked {
        // Flat K row tap_lo·K_in + kc0 of panel j0/NR.
        let row = add(g, mul(g, tap_lo, k_in as i64)?, kc0)?;
        (b_ptr(g, p, b_base, add(g, b_at, mul(g, row, nr as i64)?)?)?, g.i64(nr as i64))
    } else if p.bsrc == BSource::InPlace {
        // One K dim. Full-width panels are read in place; the last, narrower one is packed.
        let narrow = g.builder.build_not(jfull, "narrow").map_err(llvm_err)?;
        when(g, f, narrow, &mut || pack(g))?;
        let direct_ptr = f32_ptr(g, b_base, add(g, b_at, mul(g, kc0, p.b_k[0])?)?)?;
        let bp = g.builder.build_select(jfull, direct_ptr, panel, "bp").map_err(llvm_err)?.into_pointer_value();
        let bs =
            g.builder.build_select(jfull, g.i64(p.b_k[0]), g.i64(nr as i64), "bs").map_err(llvm_err)?.into_int_value();
        (bp, bs)
    } else {
        pack(g)?;
        (panel, g.i64(nr as i64))
    };
    let c_full = if p.c_n == 1 { jfull } else { g.context.bool_type().const_zero() };
    Ok(Panel { j0, jn, bptr, bstride, c_full })
}

/// Emits the body of kernel function `f`, running tasks `start..end` of the blocked product.
pub(crate) fn gen_gemm<'ctx>(
    g: &CodeGen<'ctx>,
    k: &Kernel,
    p: &Gemm,
    f: FunctionValue<'ctx>,
    in_bases: &[PointerValue<'ctx>],
    out_base: PointerValue<'ctx>,
    (start, end): (IntValue<'ctx>, IntValue<'ctx>),
) -> BackendResult<()> {
    let cx = g.context;
    let bl = p.bl;
    let (w, mr, nr) = (bl.w, bl.mr, bl.nr);
    let Frame { vt, panel, ctile, zslot, accs, fmuladd, prefetch_fn } = frame(g, p)?;
    let (a_base, b_base) = (in_bases[p.a], in_bases[p.b]);
    let env = Env { k, bases: in_bases };
    let zero = vt.const_zero();
    let splat = |x: BasicValueEnum<'ctx>| -> BackendResult<VectorValue<'ctx>> {
        let v = g.builder.build_insert_element(vt.get_poison(), x, g.i64(0), "ins").map_err(llvm_err)?;
        let mask = cx.i32_type().vec_type(w as u32).const_zero();
        g.builder.build_shuffle_vector(v, vt.get_poison(), mask, "splat").map_err(llvm_err)
    };

    let (mb, nb) = (p.m_blocks() as i64, p.n_blocks() as i64);
    let (mc, nc) = (p.mc() as i64, p.nc() as i64);
    let (tps, kcl, kblocks) = p.slicing();
    let (taps, k_in) = (p.taps(), p.k_in());
    let n_slices = (taps.div_ceil(tps) * kblocks) as i64;
    let nkd = p.k_dims.len();
    let a_kin = p.a_k[nkd - 1];
    let has_fin = k.reduction.as_ref().and_then(|r| r.finalize.as_ref());
    // An integer product's finalizer computes on the sum converted to f32 (matched to run in
    // registers, never after the store).
    let int_fin = if p.int.is_some() { has_fin.and_then(super::float_acc) } else { None };
    let has_fin = if p.int.is_some() { int_fin.as_ref() } else { has_fin };
    let vector_fin = has_fin
        .and_then(|fin| super::vector_part(fin, k.output.dtype))
        .filter(|fin| p.c_n == 1 && crate::vector::vexpr_ok(k, fin));

    // Extents read at run time (see `Gemm::set_runs`), at most the bound's.
    let run = |r: Option<(u32, u64)>, bound: usize| -> BackendResult<IntValue<'ctx>> {
        match (r, p.dims_op) {
            (Some(c), Some(d)) => crate::tasks::dims_extent(g, in_bases[d], c, bound),
            _ => Ok(g.i64(bound as i64)),
        }
    };
    let (m_run, n_run, k_run) = (run(p.run_m, p.m)?, run(p.run_n, p.n)?, run(p.run_k, k_in)?);
    // With a run-time K (one K dim, no taps), only its slices; at least one, so that C is
    // written.
    let n_slices_run = if p.run_k.is_some() {
        let s = g
            .builder
            .build_int_signed_div(add(g, k_run, g.i64(kcl as i64 - 1))?, g.i64(kcl as i64), "slices")
            .map_err(llvm_err)?;
        let zero = g.builder.build_int_compare(IntPredicate::EQ, s, g.i64(0), "none").map_err(llvm_err)?;
        g.builder.build_select(zero, g.i64(1), s, "slices").map_err(llvm_err)?.into_int_value()
    } else {
        g.i64(n_slices)
    };
    g.for_range(f, start, end, &mut |t| {
        let b = &g.builder;
        let nbk = b.build_int_signed_rem(t, g.i64(nb), "nbk").map_err(llvm_err)?;
        let rest = b.build_int_signed_div(t, g.i64(nb), "r").map_err(llvm_err)?;
        let mbk = b.build_int_signed_rem(rest, g.i64(mb), "mbk").map_err(llvm_err)?;
        let bl_ix = b.build_int_signed_div(rest, g.i64(mb), "bl").map_err(llvm_err)?;
        // Batch variables, innermost last.
        let bvars = if p.batch.is_empty() { vec![] } else { unravel(g, bl_ix, &p.batch)? };
        let a0 = add(g, g.i64(p.a_off), dot(g, &bvars, &p.a_batch)?)?;
        let b0 = add(g, g.i64(p.b_off), dot(g, &bvars, &p.b_batch)?)?;
        let c0 = add(g, g.i64(k.output.offset), dot(g, &bvars, &p.c_batch)?)?;
        let i_lo = mul(g, mbk, mc)?;
        let i_hi = min(g, add(g, i_lo, g.i64(mc))?, m_run)?;
        let j_lo = mul(g, nbk, nc)?;
        let j_hi = min(g, add(g, j_lo, g.i64(nc))?, n_run)?;
        let n_it = g
            .builder
            .build_int_signed_div(add(g, sub(g, i_hi, i_lo)?, g.i64(mr as i64 - 1))?, g.i64(mr as i64), "nit")
            .map_err(llvm_err)?;
        let n_jt = g
            .builder
            .build_int_signed_div(add(g, sub(g, j_hi, j_lo)?, g.i64(nr as i64 - 1))?, g.i64(nr as i64), "njt")
            .map_err(llvm_err)?;

        g.for_range(f, g.i64(0), n_slices_run, &mut |s| {
            let tg = g.builder.build_int_signed_div(s, g.i64(kblocks as i64), "tg").map_err(llvm_err)?;
            let kb = g.builder.build_int_signed_rem(s, g.i64(kblocks as i64), "kb").map_err(llvm_err)?;
            let tap_lo = mul(g, tg, tps as i64)?;
            let tap_hi = min(g, add(g, tap_lo, g.i64(tps as i64))?, g.i64(taps as i64))?;
            let ntap = sub(g, tap_hi, tap_lo)?;
            let kc0 = mul(g, kb, kcl as i64)?;
            let kcn = min(g, g.i64(kcl as i64), sub(g, k_run, kc0)?)?;
            let kcn = max0(g, kcn)?;
            let first = g.builder.build_int_compare(IntPredicate::EQ, s, g.i64(0), "first").map_err(llvm_err)?;
            let last_s = sub(g, n_slices_run, g.i64(1))?;
            let last = g.builder.build_int_compare(IntPredicate::EQ, s, last_s, "last").map_err(llvm_err)?;
            let ar = ARows { a_base, zslot, bvars: &bvars, tap_lo, kc0, a_kin };
            let panel_at =
                |jt: IntValue<'ctx>| b_panel(g, f, p, (b_base, panel), (j_lo, j_hi, b0), (tap_lo, ntap, kc0, kcn), jt);
            let tile_at = |it: IntValue<'ctx>, pn: &Panel<'ctx>| -> BackendResult<()> {
                let Panel { j0, jn, bptr, bstride, c_full } = *pn;
                let i0 = add(g, i_lo, mul(g, it, mr as i64)?)?;
                let rows = min(g, g.i64(mr as i64), sub(g, i_hi, i0)?)?;
                let merge = cx.append_basic_block(f, "tile_done");
                // Tiles are MR rows but the last of a block: only MR, MC % MR (blocks cut to
                // end on run-time rows need not be whole tiles) and the last block's remainder
                // occur, so only those micro-kernels are emitted.
                let last_block = p.m - (p.m_blocks() - 1) * p.mc();
                let mut heights: Vec<usize> = if p.run_m.is_some() {
                    // Any rows: the run decides where M ends.
                    (1..=mr.min(p.m)).collect()
                } else {
                    [mr, p.mc() % mr, last_block % mr].into_iter().filter(|&r| r != 0 && r <= p.m).collect()
                };
                heights.sort_unstable_by(|a, b| b.cmp(a));
                heights.dedup();
                let blocks: Vec<_> = heights.iter().map(|_| cx.append_basic_block(f, "tile")).collect();
                let cases: Vec<_> = heights.iter().zip(&blocks).map(|(&r, &bb)| (g.i64(r as i64), bb)).collect();
                g.builder.build_switch(rows, merge, &cases).map_err(llvm_err)?;
                for (&r, &bb) in heights.iter().zip(&blocks) {
                    g.builder.position_at_end(bb);
                    micro_tile(
                        g,
                        f,
                        p,
                        r,
                        &Tile {
                            ar,
                            vt,
                            zero,
                            accs: &accs,
                            ctile,
                            fmuladd,
                            prefetch_fn,
                            prefetch: prefetches(p).then_some(PREFETCH_BYTES / (nr * 4)),
                            next_panel: next_panel_lines(p).map(|lines| (it, lines)),
                            a0,
                            i0,
                            ntap,
                            kcn,
                            bptr,
                            bstride,
                            out_base,
                            c0: add(g, c0, mul(g, j0, p.c_n)?)?,
                            jn,
                            c_full,
                            first,
                            vfin: vector_fin.map(|fin| VFin { k, fin, bases: in_bases, last, j0 }),
                        },
                        &splat,
                    )?;
                    g.builder.build_unconditional_branch(merge).map_err(llvm_err)?;
                }
                g.builder.position_at_end(merge);
                if let Some(fin) = has_fin {
                    // Every tile took the finalizer in registers when it vectorizes (it needs
                    // C contiguous along N, which masks the edges).
                    let cond = match vector_fin {
                        Some(_) => g.context.bool_type().const_zero(),
                        None => last,
                    };
                    let at = TileAt { bvars: &bvars, c0, i0, rows, j0, jn, out_base };
                    when(g, f, cond, &mut || scalar_epilogue(g, f, p, &env, fin, &at))?;
                }
                Ok(())
            };
            // A panel of B (packed, or prepacked) is reused by every row tile of the block.
            // (Row tiles outermost, panels streaming past a tile of A held in L1, measured
            // the same or slower on this host.)
            g.for_range(f, g.i64(0), n_jt, &mut |jt| {
                let pn = panel_at(jt)?;
                g.for_range(f, g.i64(0), n_it, &mut |it| tile_at(it, &pn))
            })
        })
    })?;
    Ok(())
}

/// Whether the K loop prefetches a prepacked B ahead: not for a product of one row tile (a
/// GEMV: a decoder's step), which reads every panel once, in order, one sequential stream
/// that the hardware prefetcher follows best (on Zen 3 a GPT-2 step took 15% longer with the
/// prefetches: 31-35 ms against 25-28 ms).
fn prefetches(p: &Gemm) -> bool {
    p.bsrc == BSource::Prepacked && p.m > p.bl.mr
}

/// Cache lines of the next panel of a prepacked B that each row tile of a block prefetches
/// into L2 while it multiplies, so that the block's tiles together fetch the whole next panel
/// (weights stream from memory once per block; fetched by the first tile alone, at the rate
/// it consumes them, they stalled it). `None` when a block has too few tiles to spread it.
fn next_panel_lines(p: &Gemm) -> Option<usize> {
    let tiles = p.mc().div_ceil(p.bl.mr);
    (p.bsrc == BSource::Prepacked && tiles >= NEXT_PANEL_MIN_TILES)
        .then(|| (p.k * p.bl.nr / p.b_per_line()).div_ceil(tiles))
}

/// The stack buffers, accumulators and intrinsics of a GEMM body.
struct Frame<'ctx> {
    /// The accumulators' vector: W floats, or W i32 (an integer product).
    vt: VectorType<'ctx>,
    /// A packed panel of B (KC × NR).
    panel: PointerValue<'ctx>,
    /// An MR × NR tile of C, for the N edge of a C strided along N.
    ctile: PointerValue<'ctx>,
    /// What a row of A outside the padded input reads.
    zslot: PointerValue<'ctx>,
    /// MR × NR/W vector accumulators.
    accs: Vec<PointerValue<'ctx>>,
    /// `llvm.fmuladd`, or an integer product's pairwise multiply-add (`vpmaddwd`).
    fmuladd: FunctionValue<'ctx>,
    prefetch_fn: FunctionValue<'ctx>,
}

/// Allocates the body's stack buffers and accumulators (in the entry block, so that the
/// accumulators become registers) and declares the intrinsics it calls.
fn frame<'ctx>(g: &CodeGen<'ctx>, p: &Gemm) -> BackendResult<Frame<'ctx>> {
    let cx = g.context;
    let bl = p.bl;
    let (w, mr, nr) = (bl.w, bl.mr, bl.nr);
    let nq = nr / w;
    let f32t = cx.f32_type();
    // The accumulators: f32, or i32 for an integer product.
    let vt = if p.int.is_some() { cx.i32_type().vec_type(w as u32) } else { f32t.vec_type(w as u32) };
    let panel = g.builder.build_alloca(f32t.array_type((bl.kc * nr) as u32), "panel").map_err(llvm_err)?;
    panel.as_instruction_value().expect("alloca").set_alignment(64).map_err(llvm_err)?;
    let ctile = g.builder.build_alloca(f32t.array_type((mr * nr) as u32), "ctile").map_err(llvm_err)?;
    ctile.as_instruction_value().expect("alloca").set_alignment(64).map_err(llvm_err)?;
    // What a row of A outside the padded input reads: one zero, stride 0.
    // It reads a row of zeros as long as a K slice with A's own step when that row is short
    // (a channels-last input: step 1), so that every row of a tile shares one step; else
    // one zero with step 0.
    let zlen = p.zero_row();
    let zslot = g.builder.build_alloca(f32t.array_type(zlen.max(1) as u32), "zero").map_err(llvm_err)?;
    zslot.as_instruction_value().expect("alloca").set_alignment(64).map_err(llvm_err)?;
    g.builder.build_memset(zslot, 64, cx.i8_type().const_zero(), g.i64(zlen.max(1) as i64 * 4)).map_err(llvm_err)?;
    let accs: Vec<PointerValue> =
        (0..mr * nq).map(|_| g.builder.build_alloca(vt, "acc")).collect::<Result<_, _>>().map_err(llvm_err)?;
    let fmuladd = if p.int.is_some() {
        // Pairs of i16 multiplied and summed into i32 lanes (`vpmaddwd`).
        let name = if w == 16 { "llvm.x86.avx512.pmaddw.d.512" } else { "llvm.x86.avx2.pmadd.wd" };
        Intrinsic::find(name).and_then(|i| i.get_declaration(&g.module, &[])).ok_or_else(|| llvm_err(name))?
    } else {
        Intrinsic::find("llvm.fmuladd")
            .and_then(|i| i.get_declaration(&g.module, &[vt.into()]))
            .ok_or_else(|| llvm_err("llvm.fmuladd"))?
    };
    let prefetch_fn = Intrinsic::find("llvm.prefetch")
        .and_then(|i| i.get_declaration(&g.module, &[cx.ptr_type(inkwell::AddressSpace::default()).into()]))
        .ok_or_else(|| llvm_err("llvm.prefetch"))?;
    Ok(Frame { vt, panel, ctile, zslot, accs, fmuladd, prefetch_fn })
}

/// Where a panel of B comes from: its taps `tap_lo..tap_lo + ntap`, K rows
/// `kc0..kc0 + kcn` and `jn` columns at element `b_at` of `b_base`.
struct PanelSource<'ctx> {
    b_base: PointerValue<'ctx>,
    b_at: IntValue<'ctx>,
    tap_lo: IntValue<'ctx>,
    ntap: IntValue<'ctx>,
    kc0: IntValue<'ctx>,
    kcn: IntValue<'ctx>,
    jn: IntValue<'ctx>,
}

/// Packs a panel of B into `panel`, NR floats a row (rows `(tap − tap_lo)·kcn + kk`), the
/// columns past `jn` zero.
fn pack_panel<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    p: &Gemm,
    src: &PanelSource<'ctx>,
    panel: PointerValue<'ctx>,
) -> BackendResult<()> {
    let PanelSource { b_base, b_at, tap_lo, ntap, kc0, kcn, jn } = *src;
    let (nkd, nr) = (p.k_dims.len(), p.bl.nr);
    let f32t = g.context.f32_type();
    g.for_range(f, g.i64(0), ntap, &mut |tt| {
        let tv = unravel(g, add(g, tap_lo, tt)?, &p.k_dims[..nkd - 1])?;
        let b_tap = add(g, add(g, b_at, dot(g, &tv, &p.b_k[..nkd - 1])?)?, mul(g, kc0, p.b_k[nkd - 1])?)?;
        let row0 = g.builder.build_int_nsw_mul(tt, kcn, "row0").map_err(llvm_err)?;
        g.for_range(f, g.i64(0), kcn, &mut |kk| {
            let src = add(g, b_tap, mul(g, kk, p.b_k[nkd - 1])?)?;
            let dst = mul(g, add(g, row0, kk)?, nr as i64)?;
            if let st @ (1 | 2) = p.b_n {
                // A row of B contiguous along N, or every other element of one (a stride-2
                // convolution's input row): `NR/W` vectors, each from `st` loads masked to
                // the row's `st·jn − st + 1` elements (the lanes past N read as zero, their
                // memory untouched), of which every `st`-th lane is kept. Element by
                // element, LLVM made each contiguous row a `memcpy` call: a sixth of a
                // grouped convolution's time.
                let w = p.bl.w;
                let vt = f32t.vec_type(w as u32);
                let i32t = g.context.i32_type();
                let lanes = (0..w as u64).map(|l| i32t.const_int(st as u64 * l, false)).collect::<Vec<_>>();
                let every = VectorType::const_vector(&lanes);
                for q in 0..nr / w {
                    let cols = sub(g, jn, g.i64((q * w) as i64))?;
                    let left = sub(g, mul(g, cols, st)?, g.i64(st - 1))?;
                    let mut parts = Vec::with_capacity(st as usize);
                    for h in 0..st as usize {
                        let m = crate::vector::lane_mask(g, w as u32, sub(g, left, g.i64((h * w) as i64))?)?;
                        let at = f32_ptr(g, b_base, add(g, src, g.i64((st as usize * q * w + h * w) as i64))?)?;
                        parts.push(vload_masked(g, vt, at, Some(m))?);
                    }
                    let v = match parts[..] {
                        [v] => v,
                        [a, b] => g.builder.build_shuffle_vector(a, b, every, "even").map_err(llvm_err)?,
                        _ => unreachable!("strides 1 and 2"),
                    };
                    vstore(g, f32_ptr(g, panel, add(g, dst, g.i64((q * w) as i64))?)?, v)?;
                }
                return Ok(());
            }
            g.for_range(f, g.i64(0), jn, &mut |jj| {
                let v = g.load_elem(b_base, DType::F32, add(g, src, mul(g, jj, p.b_n)?)?)?;
                g.store_elem(panel, DType::F32, add(g, dst, jj)?, v)
            })?;
            g.for_range(f, jn, g.i64(nr as i64), &mut |jj| {
                g.store_elem(panel, DType::F32, add(g, dst, jj)?, f32t.const_zero().into())
            })
        })
    })
}

/// A tile's place in C: its batch variables, C's offset for them, rows `i0..i0 + rows` and
/// columns `j0..j0 + jn`.
struct TileAt<'a, 'ctx> {
    bvars: &'a [IntValue<'ctx>],
    c0: IntValue<'ctx>,
    i0: IntValue<'ctx>,
    rows: IntValue<'ctx>,
    j0: IntValue<'ctx>,
    jn: IntValue<'ctx>,
    out_base: PointerValue<'ctx>,
}

/// The kernel's finalizer on a stored tile, element by element (where it does not vectorize).
fn scalar_epilogue<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    p: &Gemm,
    env: &Env<'_, 'ctx>,
    fin: &Expr,
    t: &TileAt<'_, 'ctx>,
) -> BackendResult<()> {
    let TileAt { bvars, c0, i0, rows, j0, jn, out_base } = *t;
    g.for_range(f, g.i64(0), rows, &mut |i| {
        let mv = unravel(g, add(g, i0, i)?, &p.m_dims)?;
        let c_row = add(g, add(g, c0, dot(g, &mv, &p.c_m)?)?, mul(g, j0, p.c_n)?)?;
        g.for_range(f, g.i64(0), jn, &mut |j| {
            let col = add(g, j0, j)?;
            let mut vs = bvars.to_vec();
            vs.extend(mv.iter().copied());
            vs.push(col);
            vs.extend(std::iter::repeat_n(g.i64(0), p.n_kvars));
            let at = add(g, c_row, mul(g, j, p.c_n)?)?;
            let cur = g.load_elem(out_base, DType::F32, at)?;
            let v = env.gen(g, fin, &vs, Some(cur))?;
            g.store_elem(out_base, DType::F32, at, v)
        })
    })
}

#[derive(Clone, Copy)]
struct Panel<'ctx> {
    j0: IntValue<'ctx>,
    jn: IntValue<'ctx>,
    bptr: PointerValue<'ctx>,
    bstride: IntValue<'ctx>,
    c_full: IntValue<'ctx>,
}

/// Where the rows of A of a slice are read from.
#[derive(Clone, Copy)]
struct ARows<'a, 'ctx> {
    a_base: PointerValue<'ctx>,
    /// The zero row that rows outside a padded input read.
    zslot: PointerValue<'ctx>,
    bvars: &'a [IntValue<'ctx>],
    tap_lo: IntValue<'ctx>,
    kc0: IntValue<'ctx>,
    a_kin: i64,
}

struct Tile<'a, 'ctx> {
    ar: ARows<'a, 'ctx>,
    vt: VectorType<'ctx>,
    zero: VectorValue<'ctx>,
    accs: &'a [PointerValue<'ctx>],
    ctile: PointerValue<'ctx>,
    fmuladd: FunctionValue<'ctx>,
    /// `llvm.prefetch`, and how many K steps ahead the K loop prefetches B (a prepacked
    /// panel: weights, which come from L3 or memory), if it does.
    prefetch_fn: FunctionValue<'ctx>,
    prefetch: Option<usize>,
    /// The tile's index in its block and the cache lines of the next panel it prefetches
    /// into L2 ([`next_panel_lines`]), if it does.
    next_panel: Option<(IntValue<'ctx>, usize)>,
    /// Element index of A at this batch element (rows, taps and K are added here).
    a0: IntValue<'ctx>,
    i0: IntValue<'ctx>,
    ntap: IntValue<'ctx>,
    kcn: IntValue<'ctx>,
    bptr: PointerValue<'ctx>,
    bstride: IntValue<'ctx>,
    out_base: PointerValue<'ctx>,
    /// Element index of C at this batch element and column `j0` (rows are added here).
    c0: IntValue<'ctx>,
    jn: IntValue<'ctx>,
    /// The tile is NR wide in C and C is contiguous along N: vector loads/stores of C.
    c_full: IntValue<'ctx>,
    first: IntValue<'ctx>,
    /// The finalizer, applied to full tiles in registers after the last slice ([`crate::vector::vgen_masked`]).
    vfin: Option<VFin<'a, 'ctx>>,
}

#[derive(Clone, Copy)]
struct VFin<'a, 'ctx> {
    k: &'a Kernel,
    fin: &'a Expr,
    bases: &'a [PointerValue<'ctx>],
    last: IntValue<'ctx>,
    j0: IntValue<'ctx>,
}
