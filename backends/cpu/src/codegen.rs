//! LIR → LLVM IR: one function per kernel, one entry function calling them in order.

use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::values::{FunctionValue, IntValue, PointerValue};

use kiln_abi::context_offsets as off;
use kiln_ir::lir::{BufferKind, Expr, Instr, Kernel, Program, View};
use kiln_ir::DType;

use crate::tasks::{dims_extent, remapped, run_counts, run_rows, umin, Radix};
use kiln_llvm_codegen::expr::Env;
use kiln_llvm_codegen::{
    increment, llvm_err, normalized, reduce_loops_to, slots, BackendError, BackendResult, CodeGen,
};

/// Kernels with less scalar work than this run inline instead of through `parallel_for`.
const PARALLEL_MIN_WORK: usize = 1 << 15;

/// How the outer parallel loop is cut into tasks.
struct Split {
    /// How the kernel runs as vector rows, if it does ([`crate::rows::row_ok`]).
    rows: Option<crate::rows::RowPlan>,
    /// Whether it runs as vector rows along the dim next to the innermost, transposed in
    /// registers ([`crate::rows::transposed_ok`]): tiles of `tile` (the vector's lanes).
    transposed: bool,
    /// Rows of the dim next to the innermost that a task runs together (the row plan's, or
    /// the lanes of a transposed kernel).
    tile: usize,
    /// The outer parallel dims as tasks count them: the kernel's, with the one next to the
    /// innermost counted in tiles.
    dims: Vec<usize>,
    n_outer: usize,
    inner: usize,
    chunk: usize,
    n_chunks: usize,
}

impl Split {
    fn of(k: &Kernel, lanes: usize) -> Split {
        let np = k.n_par;
        let rows = crate::rows::row_ok(k, lanes).then(|| crate::rows::row_plan(k, lanes));
        let transposed = rows.is_none() && crate::rows::transposed_ok(k, lanes);
        let tile = match rows {
            Some(plan) => plan.tile,
            None if transposed => lanes,
            None => 1,
        };
        let mut dims = k.domain[..np - 1].to_vec();
        if tile > 1 {
            dims[np - 2] = dims[np - 2].div_ceil(tile);
        }
        let n_outer: usize = dims.iter().product();
        let inner = k.domain[np - 1];
        // Elements of the reduction behind each output element (1 without one): a row of
        // 96 channel means over 56×56 pixels is 300k adds, worth sharing, a row of 96 sums
        // of a few elements is not.
        let red: usize = k.domain[np..].iter().product();
        let heavy = red >= 64;
        let (chunk, n_chunks) = if n_outer >= 16 || inner < if heavy { 32 } else { 256 } {
            (inner.max(1), 1)
        } else {
            let want = (16 / n_outer.max(1)).clamp(1, inner / if heavy { 16 } else { 64 });
            let chunk = inner.div_ceil(want).div_ceil(16) * 16;
            (chunk, inner.div_ceil(chunk))
        };
        Split { rows, transposed, tile, dims, n_outer, inner, chunk, n_chunks }
    }
    fn tasks(&self) -> usize {
        self.n_outer * self.n_chunks
    }
}

/// Whether a reduction accumulates in the output row (reduction loops outside the innermost
/// parallel loop, which then vectorizes) instead of in a register per output element.
fn accumulate_in_output(k: &Kernel) -> bool {
    let Some(r) = &k.reduction else { return false };
    let inner = k.n_par - 1;
    if k.domain[inner] < 4 || k.output.strides[inner] != 1 {
        return false;
    }
    let ops: Vec<DType> = k.inputs.iter().map(|v| v.dtype).collect();
    let acc_ty = k.body.dtype(&ops, None);
    if acc_ty != k.output.dtype || r.finalize.as_ref().is_some_and(|f| f.dtype(&ops, Some(acc_ty)) != acc_ty) {
        return false;
    }
    // Loads whose innermost index steps with the innermost parallel variable (the parallel
    // loop then vectorizes), and loads whose innermost index steps with a reduction variable
    // alone (a row reduction: softmax's sum of `exp(x − max)`, which also reads the max along
    // the parallel dim; the reduction loop then vectorizes, its adds being reassociable).
    // A load stepping far along the parallel variable (a flattened row index, `i0·n + i1`:
    // a split reduction's parts) does not vectorize across it: a row reduction then.
    let (mut along_par, mut along_red) = (false, false);
    k.body.visit(&mut |e| {
        if let Expr::Load { index, operand, .. } = e {
            if let Some(last) = index.last() {
                let (mut par, mut red) = (false, false);
                last.visit(&mut |x| match x {
                    Expr::Var(d) if *d == inner => par = true,
                    Expr::Var(d) if *d >= k.n_par => red = true,
                    _ => {}
                });
                par &= crate::vector::load_step(k, *operand, index, inner).is_none_or(|s| s.abs() <= 2);
                along_par |= par;
                along_red |= red && !par;
            }
        }
    });
    along_par && !along_red
}

/// The type of a kernel body: one base pointer per distinct buffer ([`slots`]), then the
/// task range `start, end`.
fn body_type<'ctx>(g: &CodeGen<'ctx>, k: &Kernel) -> inkwell::types::FunctionType<'ctx> {
    let mut params: Vec<inkwell::types::BasicMetadataTypeEnum> = vec![g.ptr_ty().into(); slots(k).0.len()];
    let i64t: inkwell::types::BasicMetadataTypeEnum = g.context.i64_type().into();
    params.extend([i64t, i64t]);
    g.context.void_type().fn_type(&params, false)
}

/// A kernel instance: `void name(const Context*, i64 start, i64 end)` finds its buffers in the
/// context and calls the kernel's body, which knows nothing of where its buffers live (so
/// that kernels differing only in their buffers share one compiled body).
///
/// Where a run needs only some tasks of a level past the first ([`remapped`]), the wrapper
/// takes the run's task numbers and calls the body with the bound's
/// ([`crate::tasks::call_remapped`]).
fn gen_wrapper<'ctx>(
    g: &CodeGen<'ctx>,
    prog: &Program,
    k: &Kernel,
    plan: &KernelPlan,
    name: &str,
    body: FunctionValue<'ctx>,
) -> BackendResult<FunctionValue<'ctx>> {
    let f = g.module.add_function(name, function_type(g), Some(Linkage::Internal));
    let entry = g.context.append_basic_block(f, "entry");
    g.builder.position_at_end(entry);
    let ctx = f.get_nth_param(0).unwrap().into_pointer_value();
    let mut args: Vec<inkwell::values::BasicMetadataValueEnum> = Vec::new();
    for (b, off) in slots(k).0.into_iter().zip(slot_offsets(k)) {
        let base = g.buffer_ptr(ctx, prog.buffer(b))?;
        // SAFETY (of the address): `off` is the start of an operand's view in this buffer.
        let p = unsafe { g.builder.build_gep(g.context.i8_type(), base, &[g.i64(off)], "slot") }.map_err(llvm_err)?;
        args.push(p.into());
    }
    let (start, end) = (f.get_nth_param(1).unwrap().into_int_value(), f.get_nth_param(2).unwrap().into_int_value());
    if !remapped(&plan.radices) {
        args.push(start.into());
        args.push(end.into());
        g.builder.build_call(body, &args, "").map_err(llvm_err)?;
        g.builder.build_return(None).map_err(llvm_err)?;
        return Ok(f);
    }
    crate::tasks::call_remapped(g, f, ctx, &plan.radices, body, &args, (start, end))?;
    g.builder.build_return(None).map_err(llvm_err)?;
    Ok(f)
}

/// Emits a kernel's body (see [`body_type`]).
fn gen_body<'ctx>(
    g: &CodeGen<'ctx>,
    k: &Kernel,
    name: &str,
    plan: &KernelPlan,
    linkage: Linkage,
) -> BackendResult<FunctionValue<'ctx>> {
    let (gemm, vector_bits) = (plan.gemm.as_ref(), plan.vector_bits);
    let k = normalized(k);
    let f = declare_body(g, &k, name, vector_bits, linkage);
    // One pointer per distinct buffer: an in-place kernel reads and writes through the same
    // pointer, which LLVM sees is the same element (no runtime overlap check that fails and
    // sends the loop to its scalar version). Parameters are not marked `noalias`: with it,
    // LLVM 22 vectorized a padded max-pool reduction kept in registers into wrong results.
    let (bufs, slot) = slots(&k);
    let n = bufs.len();
    let param = |i: usize| f.get_nth_param(i as u32).unwrap().into_pointer_value();
    let in_bases: Vec<PointerValue> = slot[..k.inputs.len()].iter().map(|&i| param(i)).collect();
    let out_base = param(slot[k.inputs.len()]);
    let start = f.get_nth_param(n as u32).unwrap().into_int_value();
    let end = f.get_nth_param(n as u32 + 1).unwrap().into_int_value();
    if let Some(p) = gemm {
        crate::gemm::gen_gemm(g, &k, p, f, &in_bases, out_base, (start, end))?;
        g.builder.build_return(None).map_err(llvm_err)?;
        return Ok(f);
    }
    let ops: Vec<DType> = k.inputs.iter().map(|v| v.dtype).collect();
    let acc_ty = k.body.dtype(&ops, None);
    let acc_slot = g.builder.build_alloca(g.reg_ty(acc_ty), "acc").map_err(llvm_err)?;
    let lanes = vector_bits / 32;
    let split = Split::of(&k, lanes);
    let np = k.n_par;
    let outer_in_output = accumulate_in_output(&k);
    // A reduction along a contiguous innermost dim in vectors of its own, when the rows
    // of the output do not vectorize (a row maximum: LLVM's loop vectorizer ends each one
    // in sixteen dependent NaN-checked steps, and a sum over an image in one horizontal sum per
    // image row).
    let vector_reduction =
        split.rows.is_none() && !split.transposed && !outer_in_output && crate::rows::reduce_along_last_ok(&k, lanes);
    let env = Env { k: &k, bases: &in_bases };

    // With whole rows per task, the outer variables are decomposed from `start` once and then
    // stepped with carries from task to task, instead of two divisions per dim per task (which
    // dominated kernels with a short innermost dim: a padded copy of a 3-channel image).
    let stepped = split.n_chunks == 1 && np >= 2;
    // Where run-time reduction dims end (see `KernelPlan::red_runs`).
    let mut ends: Vec<Option<IntValue>> = vec![None; k.domain.len()];
    for &(d, op, slot, per) in &plan.red_runs {
        // (A kernel without parallel dims runs with one added in front: `normalized`.)
        let d = if plan.body.n_par == 0 { d + 1 } else { d };
        ends[d] = Some(dims_extent(g, in_bases[op], (slot, per), k.domain[d])?);
    }
    // Where a run-time innermost dim ends (its tasks' rows stop there).
    let inner_end = match plan.inner_run {
        Some((op, slot, per)) => Some(dims_extent(g, in_bases[op], (slot, per), split.inner)?),
        None => None,
    };
    let var_slots: Vec<PointerValue> = if stepped {
        (0..np - 1).map(|_| crate::vector::entry_alloca(g, f, g.context.i64_type())).collect::<BackendResult<_>>()?
    } else {
        Vec::new()
    };
    if stepped {
        outer_vars(g, &split.dims, start, &mut |d, v| {
            g.builder.build_store(var_slots[d], v).map(drop).map_err(llvm_err)
        })?;
    }
    g.for_range(f, start, end, &mut |t| {
        let b = &g.builder;
        let (jlo, jhi, vars) = task_range(g, &k, &split, &var_slots, t)?;
        let jhi = match inner_end {
            Some(e) => umin(g, jhi, e)?,
            None => jhi,
        };
        let task = || -> BackendResult<()> {
            let out_index = |vars: &[IntValue<'ctx>]| g.linear(&k.output, &vars[..np]);
            // One output element per lane `j` of `lo..hi`, its reduction (if any) in a register.
            let scalar = |lo: IntValue<'ctx>, hi: IntValue<'ctx>| -> BackendResult<()> {
                g.for_range(f, lo, hi, &mut |j| {
                    let mut vs = vars.clone();
                    vs[np - 1] = j;
                    let Some(red) = &k.reduction else {
                        let v = env.gen(g, &k.body, &vs, None)?;
                        return g.store_elem(out_base, k.output.dtype, out_index(&vs)?, v);
                    };
                    let acc = if vector_reduction {
                        crate::rows::reduce_along_last(g, f, &k, &in_bases, &vs, lanes, &ends)?
                    } else {
                        let init = kiln_llvm_codegen::expr::scalar(g, red.init, acc_ty)?;
                        g.builder.build_store(acc_slot, init).map_err(llvm_err)?;
                        reduce_loops_to(g, f, &k.domain, &ends, np, &mut vs.clone(), &mut |rvars| {
                            let x = env.gen(g, &k.body, rvars, None)?;
                            let cur = g.builder.build_load(g.reg_ty(acc_ty), acc_slot, "a").map_err(llvm_err)?;
                            let nv = kiln_llvm_codegen::expr::combine(g, red.combine, cur, x)?;
                            g.builder.build_store(acc_slot, nv).map_err(llvm_err)?;
                            Ok(())
                        })?;
                        g.builder.build_load(g.reg_ty(acc_ty), acc_slot, "a").map_err(llvm_err)?
                    };
                    let v = match &red.finalize {
                        Some(fin) => env.gen(g, fin, &vs, Some(acc))?,
                        None => acc,
                    };
                    g.store_elem(out_base, k.output.dtype, out_index(&vs)?, v)
                })
            };
            if let Some(plan) = split.rows {
                let row = crate::rows::Row { g, f, k: &k, bases: &in_bases, out_base, vars: &vars };
                return crate::rows::gen_rows(&row, (jlo, jhi), lanes, plan);
            }
            if split.transposed {
                let row = crate::rows::Row { g, f, k: &k, bases: &in_bases, out_base, vars: &vars };
                return crate::rows::gen_transposed(&row, (jlo, jhi), lanes);
            }
            let Some(red) = &k.reduction else { return scalar(jlo, jhi) };
            if outer_in_output {
                // out[j] = init; for r: for j: out[j] = out[j] ⊕ body; for j: out[j] = finalize(out[j])
                let init = kiln_llvm_codegen::expr::scalar(g, red.init, acc_ty)?;
                g.for_range(f, jlo, jhi, &mut |j| {
                    let mut vs = vars.clone();
                    vs[np - 1] = j;
                    g.store_elem(out_base, k.output.dtype, out_index(&vs)?, init)
                })?;
                let mut rv = vars.clone();
                reduce_loops_to(g, f, &k.domain, &ends, np, &mut rv, &mut |rvars| {
                    g.for_range(f, jlo, jhi, &mut |j| {
                        let mut vs = rvars.to_vec();
                        vs[np - 1] = j;
                        let x = env.gen(g, &k.body, &vs, None)?;
                        let at = out_index(&vs)?;
                        let cur = g.load_elem(out_base, k.output.dtype, at)?;
                        let nv = kiln_llvm_codegen::expr::combine(g, red.combine, cur, x)?;
                        g.store_elem(out_base, k.output.dtype, at, nv)
                    })
                })?;
                if let Some(fin) = &red.finalize {
                    g.for_range(f, jlo, jhi, &mut |j| {
                        let mut vs = vars.clone();
                        vs[np - 1] = j;
                        let at = out_index(&vs)?;
                        let cur = g.load_elem(out_base, k.output.dtype, at)?;
                        let v = env.gen(g, fin, &vs, Some(cur))?;
                        g.store_elem(out_base, k.output.dtype, at, v)
                    })?;
                }
                return Ok(());
            }
            scalar(jlo, jhi)
        };
        task()?;
        if stepped {
            // The next task's variables: the innermost outer one plus one, carried outwards.
            let i64t = g.context.i64_type();
            let cur = var_slots
                .iter()
                .map(|&s| Ok(b.build_load(i64t, s, "v").map_err(llvm_err)?.into_int_value()))
                .collect::<BackendResult<Vec<_>>>()?;
            let next = increment(g, &cur, &split.dims)?;
            for (slot, v) in var_slots.iter().zip(next) {
                b.build_store(*slot, v).map_err(llvm_err)?;
            }
        }
        Ok(())
    })?;
    g.builder.build_return(None).map_err(llvm_err)?;
    Ok(f)
}

/// Declares a kernel body `name` (see [`body_type`]) with its attributes, and positions the
/// builder at its entry block.
fn declare_body<'ctx>(
    g: &CodeGen<'ctx>,
    k: &Kernel,
    name: &str,
    vector_bits: usize,
    linkage: Linkage,
) -> FunctionValue<'ctx> {
    let cx = g.context;
    let f = g.module.add_function(name, body_type(g, k), Some(linkage));
    if linkage != Linkage::Internal {
        // Shared between the objects of one library, never exported from it.
        f.as_global_value().set_visibility(inkwell::GlobalVisibility::Hidden);
    }
    // Kernels stay functions of their own: inlining thousands of small kernels (an unrolled
    // recurrent layer) into the entry function makes one huge function that LLVM optimizes
    // in superlinear time, for no gain (each kernel is a loop nest behind one call).
    let noinline = cx.create_enum_attribute(inkwell::attributes::Attribute::get_named_enum_kind_id("noinline"), 0);
    f.add_attribute(inkwell::attributes::AttributeLoc::Function, noinline);
    // LLVM's tuning for several AVX-512 CPUs prefers 256-bit vectors in loops it vectorizes;
    // kernels are long, hot loops that gain from the full width (depthwise convolutions and
    // elementwise chains measured about 1.3x faster at 512 bits).
    let width = cx.create_string_attribute("prefer-vector-width", &vector_bits.to_string());
    f.add_attribute(inkwell::attributes::AttributeLoc::Function, width);
    let entry = cx.append_basic_block(f, "entry");
    g.builder.position_at_end(entry);
    f
}

/// The outer parallel variables (all but the innermost) of outer linear index `l`, by
/// remainder and division from the innermost outwards; `each(d, v)` is called as soon as
/// variable `d` is computed (to store it, or not).
fn outer_vars<'ctx>(
    g: &CodeGen<'ctx>,
    dims: &[usize],
    l: IntValue<'ctx>,
    each: &mut dyn FnMut(usize, IntValue<'ctx>) -> BackendResult<()>,
) -> BackendResult<Vec<IntValue<'ctx>>> {
    let mut vars = vec![g.i64(0); dims.len()];
    let mut rest = l;
    for d in (0..dims.len()).rev() {
        if d == 0 {
            vars[d] = rest;
        } else {
            let e = g.i64(dims[d] as i64);
            vars[d] = g.builder.build_int_signed_rem(rest, e, "p").map_err(llvm_err)?;
            rest = g.builder.build_int_signed_div(rest, e, "q").map_err(llvm_err)?;
        }
        each(d, vars[d])?;
    }
    Ok(vars)
}

/// For task `t`: the range `jlo..jhi` of the innermost parallel variable, and the domain's
/// variables with the outer parallel ones set (from `var_slots` when the tasks step them,
/// else decomposed from the task's outer index).
fn task_range<'ctx>(
    g: &CodeGen<'ctx>,
    k: &Kernel,
    split: &Split,
    var_slots: &[PointerValue<'ctx>],
    t: IntValue<'ctx>,
) -> BackendResult<(IntValue<'ctx>, IntValue<'ctx>, Vec<IntValue<'ctx>>)> {
    let b = &g.builder;
    let np = k.n_par;
    let nc = g.i64(split.n_chunks as i64);
    let (l, c) = if split.n_chunks == 1 {
        (t, g.i64(0))
    } else {
        (b.build_int_signed_div(t, nc, "L").map_err(llvm_err)?, b.build_int_signed_rem(t, nc, "C").map_err(llvm_err)?)
    };
    let jlo = b.build_int_nsw_mul(c, g.i64(split.chunk as i64), "jlo").map_err(llvm_err)?;
    let jhi0 = b.build_int_nsw_add(jlo, g.i64(split.chunk as i64), "jhi0").map_err(llvm_err)?;
    let inner = g.i64(split.inner as i64);
    let lt = b.build_int_compare(inkwell::IntPredicate::SLT, jhi0, inner, "lt").map_err(llvm_err)?;
    let jhi = b.build_select(lt, jhi0, inner, "jhi").map_err(llvm_err)?.into_int_value();
    // The leading parallel variables of the outer linear index.
    let mut vars: Vec<IntValue> = vec![g.i64(0); k.domain.len()];
    if !var_slots.is_empty() {
        for d in 0..np - 1 {
            vars[d] = b.build_load(g.context.i64_type(), var_slots[d], "v").map_err(llvm_err)?.into_int_value();
        }
    } else {
        vars[..np - 1].copy_from_slice(&outer_vars(g, &split.dims, l, &mut |_, _| Ok(()))?);
    }
    if split.tile > 1 {
        vars[np - 2] = b.build_int_nsw_mul(vars[np - 2], g.i64(split.tile as i64), "tile").map_err(llvm_err)?;
    }
    Ok((jlo, jhi, vars))
}

/// What the entry function needs to know of a kernel, decided before any LLVM work.
#[derive(Debug)]
pub(crate) struct KernelPlan {
    /// Index of the kernel's instruction in the program.
    pub instr: usize,
    /// The kernel as its body is generated ([`body_of`]), made once for the schedule, the
    /// cache key and the code.
    pub body: Kernel,
    pub gemm: Option<crate::gemm::Gemm>,
    /// Tasks of its parallel loop.
    pub tasks: usize,
    pub work: usize,
    /// The target's widest vector, in bits: loops vectorize at this width.
    pub vector_bits: usize,
    /// How its tasks are numbered when some follow run-time dims ([`Radix`], outermost
    /// first; empty when none do).
    pub radices: Vec<Radix>,
    /// For a kernel of the generic schedule whose innermost parallel dim is a run-time one:
    /// the dims array's operand, the slot and the multiple (`dims[slot] · per` is where its
    /// tasks' rows end).
    pub inner_run: Option<(usize, u32, u64)>,
    /// For a kernel of the generic schedule whose reduction was masked to run-time extents
    /// (`kiln_passes::rows`): the body without the mask, and per masked dim `(dim, dims
    /// operand, slot, per)`; its loops end there instead.
    pub red_runs: Vec<(usize, usize, u32, u64)>,
}

/// The task levels of a generic kernel (run by [`Split`]) with run-time extents `cs` per
/// domain dim: its outer parallel dims (the one next to the innermost in tiles), then the
/// chunks of the innermost.
fn split_radices(k: &Kernel, cs: &[Option<kiln_ir::lir::Clamp>], lanes: usize) -> Vec<Radix> {
    let np = k.n_par;
    if np == 0 {
        return Vec::new();
    }
    let split = Split::of(k, lanes);
    let c = |d: usize| cs.get(d).copied().flatten();
    let mut r: Vec<Radix> =
        (0..np - 1).map(|d| Radix::of(split.dims[d], c(d), if d + 2 == np { split.tile } else { 1 })).collect();
    r.push(Radix::of(split.n_chunks, c(np - 1), split.chunk));
    r
}

impl KernelPlan {
    /// The kernel instance's symbol (unique in the library).
    pub fn symbol(&self) -> String {
        format!("kiln_k{}", self.instr)
    }
}

/// The kernel with its name erased and its operands' buffers replaced by their slots
/// ([`slots`]): what its body's code depends on (which operands share a buffer included).
///
/// The offsets of f32 slots are taken out of their views too ([`slot_offsets`]: the wrapper
/// adds them to the pointers), so that kernels that differ only in where their operands
/// start share a body: a grouped convolution's per-group products (ResNeXt-50 compiled
/// about 500 of them, one per group and layer, 11 s of its 13).
pub(crate) fn body_of(k: &Kernel) -> Kernel {
    let offsets = slot_offsets(k);
    let mut k = k.clone();
    k.name.clear();
    k.origin.clear();
    let (_, slot) = slots(&k);
    for (v, &s) in k.inputs.iter_mut().chain([&mut k.output]).zip(&slot) {
        v.buffer = kiln_ir::lir::BufferId(s as u32);
        v.offset -= offsets[s] / 4;
    }
    k
}

/// Per slot of [`slots`], the byte offset [`body_of`] takes out of its views and the wrapper
/// adds to its pointer: the least element offset of the slot's views where they are all
/// f32 (0 otherwise).
pub(crate) fn slot_offsets(k: &Kernel) -> Vec<i64> {
    let (bufs, slot) = slots(k);
    let views: Vec<&View> = k.inputs.iter().chain([&k.output]).collect();
    (0..bufs.len())
        .map(|s| {
            let of_slot = views.iter().zip(&slot).filter(|&(_, &t)| t == s).map(|(v, _)| *v);
            if of_slot.clone().all(|v| v.dtype == DType::F32) {
                of_slot.map(|v| v.offset).min().unwrap_or(0) * 4
            } else {
                0
            }
        })
        .collect()
}

/// The plan of every kernel of the program, in order.
pub(crate) fn plan_kernels(prog: &Program, target: &crate::CpuTarget) -> Vec<KernelPlan> {
    let blocking = crate::gemm::Blocking::for_target(target);
    prog.instrs
        .iter()
        .enumerate()
        .filter_map(|(i, ins)| {
            let Instr::Kernel(k) = ins else { return None };
            // Matched on the body's kernel (offsets taken out), as the body is generated.
            let mut body = body_of(k);
            let cs: &[Option<kiln_ir::lir::Clamp>] = prog.clamps.get(&i).map_or(&[], Vec::as_slice);
            let mut gemm = crate::gemm::match_gemm(&body, blocking);
            let dims_op = k.inputs.iter().position(|v| matches!(prog.buffer(v.buffer).kind, BufferKind::Dims));
            if !cs.is_empty() {
                gemm = gemm.and_then(|mut p| p.set_runs(cs, dims_op).then_some(p));
                // A product whose only reduction dim is masked to a run-time extent runs
                // as one with that extent read at run time.
                if gemm.is_none() {
                    if let Some((unmasked, masked)) = crate::gemm::unmask(&body, dims_op) {
                        gemm = crate::gemm::match_gemm(&unmasked, blocking)
                            .and_then(|mut p| (p.set_runs(cs, dims_op) && p.runs_k(&masked)).then_some(p));
                        if gemm.is_some() {
                            body = unmasked;
                        }
                    }
                }
            }
            let inner_run = match (&gemm, dims_op, k.n_par.checked_sub(1).and_then(|d| cs.get(d).copied().flatten())) {
                (None, Some(op), Some(c)) => Some((op, c.slot, c.per)),
                _ => None,
            };
            // A generic reduction masked to run-time extents loops only to them, where it runs
            // one output element at a time or a row reduction in vectors (the schedules that
            // take the loops' ends).
            let mut red_runs = Vec::new();
            if gemm.is_none() && !cs.is_empty() {
                if let Some((unmasked, masked)) = crate::gemm::unmask(&body, dims_op) {
                    let split = Split::of(&normalized(&unmasked), blocking.w);
                    if split.rows.is_none() && !split.transposed {
                        red_runs =
                            masked.iter().map(|&(d, slot, per)| (d, dims_op.expect("masked"), slot, per)).collect();
                        body = unmasked;
                    }
                }
            }
            let (tasks, radices) = match &gemm {
                Some(p) => (p.tasks(), if cs.is_empty() { Vec::new() } else { p.radices(cs) }),
                None => {
                    let n = normalized(k);
                    let r = if cs.is_empty() { Vec::new() } else { split_radices(&n, cs, blocking.w) };
                    (Split::of(&n, blocking.w).tasks(), r)
                }
            };
            Some(KernelPlan {
                instr: i,
                body,
                gemm,
                tasks,
                work: k.work(),
                vector_bits: blocking.w * 32,
                radices,
                inner_run,
                red_runs,
            })
        })
        .collect()
}

fn function_type<'ctx>(g: &CodeGen<'ctx>) -> inkwell::types::FunctionType<'ctx> {
    g.context.void_type().fn_type(&[g.ptr_ty().into(), g.context.i64_type().into(), g.context.i64_type().into()], false)
}

/// A module defining one kernel body, external and hidden, named `symbol`, to be linked
/// with the entry module of [`build_entry_module`].
pub(crate) fn build_body_module<'ctx>(
    cx: &'ctx Context,
    k: &Kernel,
    plan: &KernelPlan,
    symbol: &str,
) -> BackendResult<Module<'ctx>> {
    let g = CodeGen {
        context: cx,
        module: cx.create_module("kiln_kernel"),
        builder: cx.create_builder(),
        native_ldexp: plan.vector_bits >= 512,
    };
    // Weak: a body is named by the hash of what its code depends on, so two models linked
    // into one program (static libraries) may both define it, identically.
    gen_body(&g, &plan.body, symbol, plan, Linkage::WeakODR)
        .map_err(|e| BackendError::Kernel { kernel: k.name.clone(), message: e.to_string() })?;
    Ok(g.module)
}

/// The names of a module's exported symbols: `<prefix>_entry` and `<prefix>_abi_version`
/// (`kiln_entry`, `kiln_abi_version` in a `.kiln` artifact; a static library takes the
/// model's name, so that several models link into one program).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryNames {
    pub entry: String,
    pub abi_version: String,
}

impl EntryNames {
    pub fn with_prefix(prefix: &str) -> EntryNames {
        EntryNames { entry: format!("{prefix}_entry"), abi_version: format!("{prefix}_abi_version") }
    }
}

impl Default for EntryNames {
    fn default() -> Self {
        EntryNames { entry: kiln_abi::ENTRY_SYMBOL.into(), abi_version: kiln_abi::ABI_VERSION_SYMBOL.into() }
    }
}

/// The module with the ABI version, one wrapper per kernel instance (calling its body,
/// declared here as `bodies[i]` and defined in another module) and the entry point.
pub(crate) fn build_entry_module<'ctx>(
    cx: &'ctx Context,
    prog: &Program,
    plans: &[KernelPlan],
    bodies: &[String],
    names: &EntryNames,
) -> BackendResult<Module<'ctx>> {
    let g =
        CodeGen { context: cx, module: cx.create_module("kiln"), builder: cx.create_builder(), native_ldexp: false };
    let mut fns = Vec::new();
    for (p, sym) in plans.iter().zip(bodies) {
        let Instr::Kernel(k) = &prog.instrs[p.instr] else { unreachable!("plans are of kernels") };
        let body = match g.module.get_function(sym) {
            Some(f) => f,
            None => g.module.add_function(sym, body_type(&g, &normalized(k)), Some(Linkage::External)),
        };
        fns.push(gen_wrapper(&g, prog, k, p, &p.symbol(), body)?);
    }
    gen_entry(&g, prog, plans, &fns, names)?;
    Ok(g.module)
}

/// Builds one LLVM module for a memory-planned program: every kernel and the entry (what
/// `--emit llvm|asm` shows).
///
/// `target` chooses the vector width of the register-blocked matrix products.
pub fn build_module<'ctx>(cx: &'ctx Context, prog: &Program, target: &crate::CpuTarget) -> BackendResult<Module<'ctx>> {
    let plans = plan_kernels(prog, target);
    let native_ldexp = crate::gemm::Blocking::for_target(target).w >= 16;
    let g = CodeGen { context: cx, module: cx.create_module("kiln"), builder: cx.create_builder(), native_ldexp };
    let mut fns = Vec::new();
    for p in &plans {
        let Instr::Kernel(k) = &prog.instrs[p.instr] else { unreachable!("plans are of kernels") };
        let body = gen_body(&g, &p.body, &format!("k{}.body", p.instr), p, Linkage::Internal)
            .map_err(|e| BackendError::Kernel { kernel: k.name.clone(), message: e.to_string() })?;
        fns.push(gen_wrapper(&g, prog, k, p, &format!("k{}", p.instr), body)?);
    }
    gen_entry(&g, prog, &plans, &fns, &EntryNames::default())?;
    Ok(g.module)
}

/// Calls `f(ctx, 0, tasks)`, through the runtime's `parallel_for` when there are tasks to
/// share and enough work.
fn call_tasks<'ctx>(
    g: &CodeGen<'ctx>,
    ctx: PointerValue<'ctx>,
    f: FunctionValue<'ctx>,
    tasks: usize,
    work: usize,
    pf_ty: inkwell::types::FunctionType<'ctx>,
) -> BackendResult<()> {
    if tasks == 0 {
        return Ok(());
    }
    call_tasks_n(g, ctx, f, g.i64(tasks as i64), tasks, work, pf_ty)
}

/// [`call_tasks`] for `n` of a kernel's `tasks` (decided at run time), through
/// `parallel_for` when its whole would go there.
fn call_tasks_n<'ctx>(
    g: &CodeGen<'ctx>,
    ctx: PointerValue<'ctx>,
    f: FunctionValue<'ctx>,
    n: IntValue<'ctx>,
    tasks: usize,
    work: usize,
    pf_ty: inkwell::types::FunctionType<'ctx>,
) -> BackendResult<()> {
    if tasks >= 2 && work >= PARALLEL_MIN_WORK {
        let rt = g.ctx_field(ctx, off::RUNTIME, "rt")?;
        let pf = g.ctx_field(ctx, off::PARALLEL_FOR, "pf")?;
        let fp = f.as_global_value().as_pointer_value();
        g.builder
            .build_indirect_call(pf_ty, pf, &[rt.into(), fp.into(), ctx.into(), n.into()], "")
            .map_err(llvm_err)?;
    } else {
        g.builder.build_call(f, &[ctx.into(), g.i64(0).into(), n.into()], "").map_err(llvm_err)?;
    }
    Ok(())
}

/// A routine's generator: `(codegen, program, instruction, function)`.
type RoutineGen = for<'a, 'ctx> fn(&'a CodeGen<'ctx>, &'a Program, usize, FunctionValue<'ctx>) -> BackendResult<()>;

/// The ABI version global and `kiln_entry`: the instructions in order, each kernel (and each
/// TopK routine) through `parallel_for` when it is big enough.
fn gen_entry<'ctx>(
    g: &CodeGen<'ctx>,
    prog: &Program,
    plans: &[KernelPlan],
    fns: &[FunctionValue<'ctx>],
    names: &EntryNames,
) -> BackendResult<()> {
    let cx = g.context;
    let ver = g.module.add_global(cx.i32_type(), None, &names.abi_version);
    ver.set_initializer(&cx.i32_type().const_int(kiln_abi::ABI_MAJOR as u64, false));
    ver.set_constant(true);
    let kernels: Vec<(&KernelPlan, FunctionValue)> = plans.iter().zip(fns.iter().copied()).collect();

    let entry_ty = cx.i32_type().fn_type(&[g.ptr_ty().into()], false);
    let entry = g.module.add_function(&names.entry, entry_ty, None);
    let bb = cx.append_basic_block(entry, "entry");
    g.builder.position_at_end(bb);
    let ctx = entry.get_nth_param(0).unwrap().into_pointer_value();
    let pf_ty =
        cx.void_type().fn_type(&[g.ptr_ty().into(), g.ptr_ty().into(), g.ptr_ty().into(), cx.i64_type().into()], false);
    let mut kit = kernels.into_iter().peekable();
    let mut asserts = 0;
    // The blocks after the open `Case` instructions, innermost last, and the open loops'
    // headers, exits and counters.
    let mut after_case = Vec::new();
    let mut loops: Vec<(inkwell::basic_block::BasicBlock, inkwell::basic_block::BasicBlock, &View)> = Vec::new();
    let hook_ty = cx.void_type().fn_type(&[g.ptr_ty().into(), cx.i32_type().into(), cx.i32_type().into()], false);
    let mut event = 0u32;
    for (i, ins) in prog.instrs.iter().enumerate() {
        let profiled = ins.does_work();
        if profiled {
            profile_event(g, entry, ctx, hook_ty, event, 0)?;
        }
        match ins {
            Instr::Case { key, value } => {
                let p = g.buffer_ptr(ctx, prog.buffer(key.buffer))?;
                // SAFETY (of the address): the key's element lies in its buffer (verified).
                let p =
                    unsafe { g.builder.build_gep(cx.i64_type(), p, &[g.i64(key.offset)], "key") }.map_err(llvm_err)?;
                let v = g.builder.build_load(cx.i64_type(), p, "key").map_err(llvm_err)?.into_int_value();
                let taken = g
                    .builder
                    .build_int_compare(inkwell::IntPredicate::EQ, v, g.i64(*value), "taken")
                    .map_err(llvm_err)?;
                let then = cx.append_basic_block(entry, "case");
                let after = cx.append_basic_block(entry, "end_case");
                g.builder.build_conditional_branch(taken, then, after).map_err(llvm_err)?;
                g.builder.position_at_end(then);
                after_case.push(after);
            }
            Instr::EndCase => {
                let after = after_case.pop().expect("verified: every end_case closes a case");
                g.builder.build_unconditional_branch(after).map_err(llvm_err)?;
                g.builder.position_at_end(after);
            }
            Instr::Loop { counter, trip, cond } => {
                // header: run the body while counter < trip and the condition holds.
                let header = cx.append_basic_block(entry, "loop");
                let body = cx.append_basic_block(entry, "loop_body");
                let exit = cx.append_basic_block(entry, "loop_exit");
                g.builder.build_unconditional_branch(header).map_err(llvm_err)?;
                g.builder.position_at_end(header);
                let load = |v: &View, d: DType| -> BackendResult<inkwell::values::BasicValueEnum<'ctx>> {
                    let p = g.buffer_ptr(ctx, prog.buffer(v.buffer))?;
                    g.load_elem(p, d, g.i64(v.offset))
                };
                let c = load(counter, DType::I64)?.into_int_value();
                let t = load(trip, trip.dtype)?.into_int_value();
                let t = g.builder.build_int_s_extend_or_bit_cast(t, cx.i64_type(), "trip").map_err(llvm_err)?;
                let k = load(cond, DType::Bool)?.into_int_value();
                let below = g.builder.build_int_compare(inkwell::IntPredicate::SLT, c, t, "below").map_err(llvm_err)?;
                let go = g.builder.build_and(below, k, "go").map_err(llvm_err)?;
                g.builder.build_conditional_branch(go, body, exit).map_err(llvm_err)?;
                g.builder.position_at_end(body);
                loops.push((header, exit, counter));
            }
            Instr::EndLoop => {
                let (header, exit, counter) = loops.pop().expect("verified: every end_loop closes a loop");
                let p = g.buffer_ptr(ctx, prog.buffer(counter.buffer))?;
                let c = g.load_elem(p, DType::I64, g.i64(counter.offset))?.into_int_value();
                let next = g.builder.build_int_add(c, g.i64(1), "next").map_err(llvm_err)?;
                g.store_elem(p, DType::I64, g.i64(counter.offset), next.into())?;
                g.builder.build_unconditional_branch(header).map_err(llvm_err)?;
                g.builder.position_at_end(exit);
            }
            Instr::CopyRow { dst, dst_offset, src, src_offset, bytes, row, rows } => {
                let p = g.buffer_ptr(ctx, prog.buffer(row.buffer))?;
                let r = g.load_elem(p, DType::I64, g.i64(row.offset))?.into_int_value();
                // Unsigned: a negative row is out of range too.
                let inside = g
                    .builder
                    .build_int_compare(inkwell::IntPredicate::ULT, r, g.i64(*rows as i64), "inside")
                    .map_err(llvm_err)?;
                let copy = cx.append_basic_block(entry, "copy_row");
                let done = cx.append_basic_block(entry, "copy_row_done");
                g.builder.build_conditional_branch(inside, copy, done).map_err(llvm_err)?;
                g.builder.position_at_end(copy);
                let at = g.builder.build_int_mul(r, g.i64(*bytes as i64), "at").map_err(llvm_err)?;
                let at = g.builder.build_int_add(at, g.i64(*dst_offset as i64), "at").map_err(llvm_err)?;
                let d = g.buffer_ptr(ctx, prog.buffer(*dst))?;
                let s = g.buffer_ptr(ctx, prog.buffer(*src))?;
                // SAFETY (of the addresses): the row is below `rows`, which fit the buffer (verified).
                let d = unsafe { g.builder.build_gep(cx.i8_type(), d, &[at], "d") }.map_err(llvm_err)?;
                let s = unsafe { g.builder.build_gep(cx.i8_type(), s, &[g.i64(*src_offset as i64)], "s") }
                    .map_err(llvm_err)?;
                g.builder.build_memmove(d, 1, s, 1, g.i64(*bytes as i64)).map_err(llvm_err)?;
                g.builder.build_unconditional_branch(done).map_err(llvm_err)?;
                g.builder.position_at_end(done);
            }
            Instr::SetDims { slots, src } => {
                let dims = g.ctx_field(ctx, off::DIMS, "dims")?;
                let base = g.buffer_ptr(ctx, prog.buffer(src.buffer))?;
                for (j, &slot) in slots.iter().enumerate() {
                    let at = src.offset + j as i64 * src.strides[0];
                    // SAFETY (of the addresses): the view lies in its buffer and the slots in
                    // the context's dims array (verified against the manifest's count).
                    let p =
                        unsafe { g.builder.build_gep(cx.i64_type(), base, &[g.i64(at)], "dim") }.map_err(llvm_err)?;
                    let v = g.builder.build_load(cx.i64_type(), p, "dim").map_err(llvm_err)?;
                    let q = unsafe { g.builder.build_gep(cx.i64_type(), dims, &[g.i64(slot as i64)], "slot") }
                        .map_err(llvm_err)?;
                    g.builder.build_store(q, v).map_err(llvm_err)?;
                }
            }
            Instr::Assert { buffer, .. } => {
                asserts += 1;
                let p = g.buffer_ptr(ctx, prog.buffer(*buffer))?;
                let v = g.builder.build_load(cx.i64_type(), p, "bad").map_err(llvm_err)?.into_int_value();
                let failed =
                    g.builder.build_int_compare(inkwell::IntPredicate::NE, v, g.i64(0), "failed").map_err(llvm_err)?;
                let fail = cx.append_basic_block(entry, "assert_failed");
                let next = cx.append_basic_block(entry, "assert_ok");
                g.builder.build_conditional_branch(failed, fail, next).map_err(llvm_err)?;
                g.builder.position_at_end(fail);
                g.builder.build_return(Some(&cx.i32_type().const_int(asserts, false))).map_err(llvm_err)?;
                g.builder.position_at_end(next);
            }
            Instr::Kernel(_) => {
                let (plan, f) = kit.next().expect("one function per kernel");
                if plan.radices.iter().any(|r| r.run.is_some()) && plan.tasks > 0 {
                    let counts = run_counts(g, ctx, &plan.radices)?;
                    let mut n = g.i64(1);
                    for c in counts {
                        n = g.builder.build_int_mul(n, c, "n").map_err(llvm_err)?;
                    }
                    call_tasks_n(g, ctx, f, n, plan.tasks, plan.work, pf_ty)?;
                } else {
                    call_tasks(g, ctx, f, plan.tasks, plan.work, pf_ty)?;
                }
            }
            Instr::TopK { input, axis, k, .. } => {
                let f = g.module.add_function(&format!("k{i}.top_k"), function_type(g), Some(Linkage::Internal));
                let here = g.builder.get_insert_block().expect("positioned");
                crate::topk::gen_top_k(g, prog, i, f).map_err(|e| BackendError::Kernel {
                    kernel: format!("instruction {i} (top_k)"),
                    message: e.to_string(),
                })?;
                g.builder.position_at_end(here);
                let rows = crate::topk::rows(input, *axis);
                let work = rows * input.extents[*axis] * (1 + (*k).max(2).ilog2() as usize);
                call_tasks(g, ctx, f, rows, work, pf_ty)?;
            }
            Instr::NonZero { .. } | Instr::NonMaxSuppression { .. } => {
                let (what, gen): (&str, RoutineGen) = match ins {
                    Instr::NonZero { .. } => ("non_zero", crate::scan::gen_non_zero),
                    _ => ("non_max_suppression", crate::scan::gen_non_max_suppression),
                };
                let f = g.module.add_function(&format!("k{i}.{what}"), function_type(g), Some(Linkage::Internal));
                let here = g.builder.get_insert_block().expect("positioned");
                gen(g, prog, i, f).map_err(|e| BackendError::Kernel {
                    kernel: format!("instruction {i} ({what})"),
                    message: e.to_string(),
                })?;
                g.builder.position_at_end(here);
                // A sequential scan: one task, on the calling thread.
                call_tasks(g, ctx, f, 1, 0, pf_ty)?;
            }
            Instr::Copy { dst, dst_offset, src, src_offset, bytes } => {
                let _ = i;
                let d = g.buffer_ptr(ctx, prog.buffer(*dst))?;
                let s = g.buffer_ptr(ctx, prog.buffer(*src))?;
                let d = unsafe { g.builder.build_gep(cx.i8_type(), d, &[g.i64(*dst_offset as i64)], "d") }
                    .map_err(llvm_err)?;
                let s = unsafe { g.builder.build_gep(cx.i8_type(), s, &[g.i64(*src_offset as i64)], "s") }
                    .map_err(llvm_err)?;
                // A whole buffer of run-time rows: only the rows of the run.
                let (sb, db) = (prog.buffer(*src), prog.buffer(*dst));
                let n = match (sb.leading_rows(), db.leading_rows()) {
                    (Some(r), Some(q)) if r == q && *src_offset == 0 && *dst_offset == 0 && *bytes == sb.bytes => {
                        let v = run_rows(g, ctx, r.slot, r.bound)?;
                        let row_bytes = g.i64((*bytes as u64 / r.bound.max(1)) as i64);
                        g.builder.build_int_mul(v, row_bytes, "n").map_err(llvm_err)?
                    }
                    _ => g.i64(*bytes as i64),
                };
                g.builder.build_memmove(d, 1, s, 1, n).map_err(llvm_err)?;
            }
        }
        if profiled {
            profile_event(g, entry, ctx, hook_ty, event, 1)?;
            event += 1;
        }
    }
    g.builder.build_return(Some(&cx.i32_type().const_zero())).map_err(llvm_err)?;
    Ok(())
}

/// Calls the context's profiling hook, when it is set, with `(profile_data, event, end)`.
fn profile_event<'ctx>(
    g: &CodeGen<'ctx>,
    entry: FunctionValue<'ctx>,
    ctx: PointerValue<'ctx>,
    hook_ty: inkwell::types::FunctionType<'ctx>,
    event: u32,
    end: u32,
) -> BackendResult<()> {
    let cx = g.context;
    let hook = g.ctx_field(ctx, off::PROFILE, "hook")?;
    let set = g.builder.build_is_not_null(hook, "profiling").map_err(llvm_err)?;
    let call = cx.append_basic_block(entry, "profile");
    let next = cx.append_basic_block(entry, "profiled");
    g.builder.build_conditional_branch(set, call, next).map_err(llvm_err)?;
    g.builder.position_at_end(call);
    let data = g.ctx_field(ctx, off::PROFILE_DATA, "profile_data")?;
    let i32t = cx.i32_type();
    let args = [data.into(), i32t.const_int(event as u64, false).into(), i32t.const_int(end as u64, false).into()];
    g.builder.build_indirect_call(hook_ty, hook, &args, "").map_err(llvm_err)?;
    g.builder.build_unconditional_branch(next).map_err(llvm_err)?;
    g.builder.position_at_end(next);
    Ok(())
}
