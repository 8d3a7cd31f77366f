//! Kernels run as vector rows: the row schedules over [`crate::vector`]'s expressions.
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
//! parallel dim and whose body and finalizer [`crate::vector::vexpr_ok`] accepts. Padded
//! loads whose windows lie inside over a whole block skip their checks there. Where the
//! reduction's loads are shared between neighbouring rows (a weight, overlapping windows), a
//! task runs several rows side by side ([`row_plan`]). A copy between layouts runs
//! [transposed](gen_transposed), and a reduction along a contiguous last dim in vectors of
//! its own ([`reduce_along_last`]).

use inkwell::types::VectorType;
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

use kiln_ir::lir::{Expr, Kernel, Scalar};
use kiln_ir::DType;

use crate::gemm::{affine_expr, affine_range};
use crate::vector::{
    entry_alloca, group_lanes, lane_mask, load_step, splat, vcombine, vexpr_ok, vgen_masked, vsel, vstore,
    vstore_masked,
};
use kiln_llvm_codegen::{llvm_err, BackendResult, CodeGen};

/// Vectors per block of a row: their accumulators (and loads) are independent, which hides
/// the latency of the reduction's adds.
const BLOCK: usize = 4;

/// Whether a kernel runs as vector rows ([`gen_row`]). Elementwise kernels with `exp`,
/// `tanh`, `erf` or the sigmoid do too: the blocks of [`BLOCK`] vectors keep several of their
/// long dependent chains in flight, and on a vector `erf` computes its form for |x| ≥ 2 only
/// when some lane needs it, where LLVM's loop vectorizer, on the scalar loop, computed both
/// forms for every element (a standalone GELU over 128×3072 took 0.256 ms that way and 0.099
/// as vector rows; a sigmoid 7% less; `exp` and `tanh` the same). With a reduction the scalar
/// loop is the alternative, not a vectorized one: a channels-last depthwise convolution with
/// a SiLU epilogue (EfficientNet) ran 4–5× slower that way.
pub(crate) fn row_ok(k: &Kernel, lanes: usize) -> bool {
    let d = k.n_par - 1;
    if k.n_par == 0 || k.output.dtype != DType::F32 || k.output.strides[d] != 1 || k.domain[d] < lanes / 2 {
        return false;
    }
    let mut has_acc = false;
    k.body.visit(&mut |e| has_acc |= *e == Expr::Acc);
    if has_acc || !vexpr_ok(k, &k.body) {
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

/// How a vector-row kernel's tasks run, decided once per kernel ([`row_plan`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowPlan {
    /// Consecutive rows of the dim next to the innermost (an output row of a row-major
    /// depthwise convolution, an output pixel of a channels-last one) run together, their
    /// accumulators side by side ([`gen_rows`]).
    pub tile: usize,
    /// Vectors of the row a block holds.
    block: usize,
    /// Whether a tile's interior runs its taps in line.
    inline: bool,
}

/// The plan of a kernel that passes [`row_ok`]. The tile is 1 unless the reduction's loads
/// are shared between neighbouring rows, a weight that does not move with them or a window
/// that overlaps its neighbour's ([`window_overlaps`]); it is as many rows as half the vector
/// registers hold with the row's vectors, the fewest loads for the dim's extent (a tile's are
/// `tile + 1` rows' worth of a load shared, a lone row's 2). Overlapping windows take blocks
/// of 2 vectors by at most 3 rows and, with at most [`INLINE_TAPS`] taps, every tap in line,
/// so that the rows share each loaded vector (a 7×7 depthwise convolution on row-major rows
/// took 0.29 ms with 4 vectors by 4 rows, 0.22 with 2 by 3 and every tap in line; a 3×3 s2
/// max pool 0.11 and 0.08).
pub(crate) fn row_plan(k: &Kernel, lanes: usize) -> RowPlan {
    let np = k.n_par;
    let taps: usize = k.domain[np..].iter().product();
    let overlap = np >= 2 && window_overlaps(k, np - 2);
    let block = if overlap { 2 } else { BLOCK };
    if k.reduction.is_none() || np < 2 || taps < 2 || !(overlap || weight_shared(k, np - 2)) {
        return RowPlan { tile: 1, block, inline: false };
    }
    let registers = if lanes >= 16 { 32 } else { 16 };
    let vectors = k.domain[np - 1].div_ceil(lanes).min(block);
    let most = (registers / 2 / vectors).min(if overlap { 3 } else { 8 });
    let rows = k.domain[np - 2];
    let loads = |t: usize| (rows / t) * (t + 1) + (rows % t) * 2;
    let tile = (1..=most.min(rows)).rev().min_by_key(|&t| loads(t)).unwrap_or(1);
    RowPlan { tile, block, inline: tile > 1 && overlap && taps <= INLINE_TAPS }
}

/// Whether some load of `k`'s body does not move along dim `d2` but does along the row (a
/// channels-last weight): each row of `d2` reads what the previous one read.
fn weight_shared(k: &Kernel, d2: usize) -> bool {
    let d = k.n_par - 1;
    let mut shared = false;
    k.body.visit(&mut |e| {
        if let Expr::Load { operand, index, .. } = e {
            shared |= load_step(k, *operand, index, d2) == Some(0)
                && load_step(k, *operand, index, d).is_some_and(|s| s != 0);
        }
    });
    shared
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

/// The most reduction steps a tile of rows with overlapping windows runs in line (its rows
/// then share each loaded vector of the window, LLVM finding the same address in one block).
const INLINE_TAPS: usize = 64;

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
///
/// `ends`: per domain dim, where a run-time reduction dim ends (at most its extent).
pub(crate) fn reduce_along_last<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    k: &Kernel,
    bases: &[PointerValue<'ctx>],
    vars: &[IntValue<'ctx>],
    lanes: usize,
    ends: &[Option<IntValue<'ctx>>],
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
    let step =
        |rvars: &[IntValue<'ctx>], q: usize, at: IntValue<'ctx>, valid: Option<IntValue<'ctx>>| -> BackendResult<()> {
            let mut vs = rvars.to_vec();
            vs[last] = at;
            let mask = valid.map(|n| lane_mask(g, lanes as u32, n)).transpose()?;
            let mut x = vgen_masked(g, &along, bases, &k.body, &vs, None, vt, mask)?;
            if let Some(m) = mask {
                x = vsel(g, m, x, identity)?;
            }
            let a = b.build_load(vt, slots[q], "ra").map_err(llvm_err)?.into_vector_value();
            b.build_store(slots[q], vcombine(g, red.combine, a, x)?).map_err(llvm_err)?;
            Ok(())
        };
    let (full, rest) = (extent / span, extent % span);
    let run_end = ends.get(last).copied().flatten();
    // Whole spans: all of them, or as many as the run's extent holds.
    let full_n = match run_end {
        Some(e) => b.build_int_unsigned_div(e, g.i64(span as i64), "full").map_err(llvm_err)?,
        None => g.i64(full as i64),
    };
    let mut rv = vars.to_vec();
    kiln_llvm_codegen::reduce_loops_to(g, f, &k.domain[..last], ends, k.n_par, &mut rv, &mut |rvars| {
        g.for_range(f, g.i64(0), full_n, &mut |blk| {
            let base = b.build_int_nsw_mul(blk, g.i64(span as i64), "rb").map_err(llvm_err)?;
            for q in 0..n_acc {
                step(rvars, q, b.build_int_nsw_add(base, g.i64((q * lanes) as i64), "rq").map_err(llvm_err)?, None)?;
            }
            Ok(())
        })?;
        match run_end {
            None => {
                for q in 0..rest.div_ceil(lanes) {
                    let left = rest - q * lanes;
                    step(
                        rvars,
                        q,
                        g.i64((full * span + q * lanes) as i64),
                        (left < lanes).then(|| g.i64(left as i64)),
                    )?;
                }
            }
            Some(e) => {
                // The rest of the run's extent, up to a span: a masked vector per
                // accumulator that has lanes left.
                let tail = b.build_int_nsw_mul(full_n, g.i64(span as i64), "tail").map_err(llvm_err)?;
                for q in 0..n_acc {
                    let at = b.build_int_nsw_add(tail, g.i64((q * lanes) as i64), "at").map_err(llvm_err)?;
                    let left = b.build_int_sub(e, at, "left").map_err(llvm_err)?;
                    let some = b.build_int_compare(IntPredicate::SGT, left, g.i64(0), "some").map_err(llvm_err)?;
                    crate::vector::when(g, f, some, &mut || {
                        let lt = b
                            .build_int_compare(IntPredicate::SLT, left, g.i64(lanes as i64), "lt")
                            .map_err(llvm_err)?;
                        let n = b.build_select(lt, left, g.i64(lanes as i64), "n").map_err(llvm_err)?.into_int_value();
                        step(rvars, q, at, Some(n))
                    })?;
                }
            }
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

/// Emits a task of a kernel that passes [`row_ok`]: `plan.tile` rows from `row.vars` along
/// the dim next to the innermost run together where that many are left, else one by one.
pub(crate) fn gen_rows<'ctx>(
    row: &Row<'_, 'ctx>,
    range: (IntValue<'ctx>, IntValue<'ctx>),
    lanes: usize,
    plan: RowPlan,
) -> BackendResult<()> {
    let single_row = RowPlan { tile: 1, inline: false, ..plan };
    if plan.tile == 1 {
        return gen_row(row, range, lanes, single_row);
    }
    let tile = plan.tile;
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
    gen_row(row, range, lanes, plan)?;
    b.build_unconditional_branch(done).map_err(llvm_err)?;
    b.position_at_end(single);
    g.for_range(f, row.vars[d2], extent, &mut |r| {
        let mut vars = row.vars.to_vec();
        vars[d2] = r;
        gen_row(&Row { vars: &vars, ..*row }, range, lanes, single_row)
    })?;
    b.build_unconditional_branch(done).map_err(llvm_err)?;
    b.position_at_end(done);
    Ok(())
}

/// Emits `plan.tile` rows of a kernel that passes [`row_ok`]: the lanes `jlo..jhi` of the
/// innermost parallel dim, in blocks of `plan.block` vectors of `lanes`, then one block of
/// fewer vectors for the rest, its last vector masked.
fn gen_row<'ctx>(
    row: &Row<'_, 'ctx>,
    (jlo, jhi): (IntValue<'ctx>, IntValue<'ctx>),
    lanes: usize,
    plan: RowPlan,
) -> BackendResult<()> {
    let (g, f) = (row.g, row.f);
    let b = &g.builder;
    let i64t = g.context.i64_type();
    // The next lane to do, threaded through the block loops.
    let jslot = entry_alloca(g, f, i64t)?;
    b.build_store(jslot, jlo).map_err(llvm_err)?;
    // Full blocks of `plan.block` vectors.
    let block = plan.block;
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
    gen_block(row, j, block, plan, g.context.f32_type().vec_type(lanes as u32), None)?;
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
        gen_block(row, j, n, plan, g.context.f32_type().vec_type(lanes as u32), Some(mask))?;
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

/// `n` vectors `vt` from lane `j0` of `plan.tile` rows from `row.vars` (along the dim next to the
/// innermost): the reduction (if any) accumulates in registers, then the finalizer, then one
/// store per vector. With `last_mask`, the last vector of each row reads and writes only those
/// lanes (the end of the row).
fn gen_block<'ctx>(
    row: &Row<'_, 'ctx>,
    j0: IntValue<'ctx>,
    n: usize,
    plan: RowPlan,
    vt: VectorType<'ctx>,
    last_mask: Option<VectorValue<'ctx>>,
) -> BackendResult<()> {
    let Row { g, f, k, bases, out_base, vars } = *row;
    let tile = plan.tile;
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
            reduce(&unpadded, plan.inline)?;
            b.build_unconditional_branch(done).map_err(llvm_err)?;
            b.position_at_end(slow);
            reduce(&k.body, false)?;
            b.build_unconditional_branch(done).map_err(llvm_err)?;
            b.position_at_end(done);
        }
        None => reduce(&k.body, plan.inline)?,
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
