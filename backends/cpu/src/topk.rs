//! TopK as a routine ([`Instr::TopK`]): per row, a heap of the `k` best positions seen so
//! far, kept in the output row with the worst at its root, so that most elements cost one
//! comparison with the root; then the heap is sorted in place, best first. O(n log k) per
//! row, against the O(n²) or O(n·k) that compute definitions can express. Rows are the
//! tasks of the routine, run in parallel like a kernel's.
//!
//! The order: `a` beats `b` when its value is larger (smaller for `largest = false`), or
//! equal and at a lower position, which is the reference evaluation's stable order.

use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};

use kiln_ir::lir::{Instr, Program, View};
use kiln_ir::DType;
use kiln_llvm_codegen::{llvm_err, BackendResult, CodeGen};

/// The lanes of the screening vector ([`gen_top_k`]).
const SCREEN: i64 = 16; // the mask is read as an i16

/// The rows of a TopK: every position of the input but along its axis.
pub(crate) fn rows(input: &View, axis: usize) -> usize {
    input.extents.iter().enumerate().filter(|&(d, _)| d != axis).map(|(_, &e)| e).product()
}

/// One row's data: where its elements and its output slots are.
struct Row<'a, 'ctx> {
    g: &'a CodeGen<'ctx>,
    dtype: DType,
    largest: bool,
    x: PointerValue<'ctx>,
    x_at: IntValue<'ctx>,
    x_step: i64,
    out: PointerValue<'ctx>,
    out_at: IntValue<'ctx>,
    out_step: i64,
}

impl<'ctx> Row<'_, 'ctx> {
    fn mul_add(&self, at: IntValue<'ctx>, i: IntValue<'ctx>, step: i64) -> BackendResult<IntValue<'ctx>> {
        let b = &self.g.builder;
        let m = b.build_int_mul(i, self.g.i64(step), "m").map_err(llvm_err)?;
        b.build_int_add(at, m, "at").map_err(llvm_err)
    }

    fn value(&self, pos: IntValue<'ctx>) -> BackendResult<BasicValueEnum<'ctx>> {
        let at = self.mul_add(self.x_at, pos, self.x_step)?;
        self.g.load_elem(self.x, self.dtype, at)
    }

    /// The position held in heap slot `j`.
    fn slot(&self, j: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
        let at = self.mul_add(self.out_at, j, self.out_step)?;
        Ok(self.g.load_elem(self.out, DType::I64, at)?.into_int_value())
    }

    fn set_slot(&self, j: IntValue<'ctx>, pos: IntValue<'ctx>) -> BackendResult<()> {
        let at = self.mul_add(self.out_at, j, self.out_step)?;
        self.g.store_elem(self.out, DType::I64, at, pos.into())
    }

    /// Whether position `a` beats position `b` (an `i1`).
    fn beats(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
        let (va, vb) = (self.value(a)?, self.value(b)?);
        let bld = &self.g.builder;
        let (better, equal) = match (va, vb) {
            (BasicValueEnum::FloatValue(x), BasicValueEnum::FloatValue(y)) => {
                let p = if self.largest { FloatPredicate::OGT } else { FloatPredicate::OLT };
                (
                    bld.build_float_compare(p, x, y, "better").map_err(llvm_err)?,
                    bld.build_float_compare(FloatPredicate::OEQ, x, y, "equal").map_err(llvm_err)?,
                )
            }
            (BasicValueEnum::IntValue(x), BasicValueEnum::IntValue(y)) => {
                let p = if self.largest { IntPredicate::SGT } else { IntPredicate::SLT };
                (
                    bld.build_int_compare(p, x, y, "better").map_err(llvm_err)?,
                    bld.build_int_compare(IntPredicate::EQ, x, y, "equal").map_err(llvm_err)?,
                )
            }
            _ => return Err(llvm_err(format!("TopK over {} is not supported", self.dtype))),
        };
        let earlier = bld.build_int_compare(IntPredicate::SLT, a, b, "earlier").map_err(llvm_err)?;
        let tie = bld.build_and(equal, earlier, "tie").map_err(llvm_err)?;
        bld.build_or(better, tie, "beats").map_err(llvm_err)
    }

    /// Restores the heap (the worst at the root: no slot beats its children) below slot
    /// `start` of the first `size` slots.
    fn sift_down(&self, f: FunctionValue<'ctx>, start: IntValue<'ctx>, size: IntValue<'ctx>) -> BackendResult<()> {
        let g = self.g;
        let b = &g.builder;
        let pos_var = crate::vector::entry_alloca(g, f, g.context.i64_type())?;
        b.build_store(pos_var, start).map_err(llvm_err)?;
        let head = g.context.append_basic_block(f, "sift");
        let step = g.context.append_basic_block(f, "sift_step");
        let swap = g.context.append_basic_block(f, "sift_swap");
        let done = g.context.append_basic_block(f, "sift_done");
        b.build_unconditional_branch(head).map_err(llvm_err)?;
        b.position_at_end(head);
        let pos = b.build_load(g.context.i64_type(), pos_var, "p").map_err(llvm_err)?.into_int_value();
        let two_p = b.build_int_mul(pos, g.i64(2), "2p").map_err(llvm_err)?;
        let left = b.build_int_add(two_p, g.i64(1), "l").map_err(llvm_err)?;
        let has_child = b.build_int_compare(IntPredicate::SLT, left, size, "has").map_err(llvm_err)?;
        b.build_conditional_branch(has_child, step, done).map_err(llvm_err)?;
        b.position_at_end(step);
        // The worse child: the right one when the left beats it.
        let right = b.build_int_add(left, g.i64(1), "r").map_err(llvm_err)?;
        let has_right = b.build_int_compare(IntPredicate::SLT, right, size, "hasr").map_err(llvm_err)?;
        let right = b.build_select(has_right, right, left, "r").map_err(llvm_err)?.into_int_value();
        let (pl, pr) = (self.slot(left)?, self.slot(right)?);
        let left_beats = self.beats(pl, pr)?;
        let take_right = b.build_and(has_right, left_beats, "tr").map_err(llvm_err)?;
        let child = b.build_select(take_right, right, left, "c").map_err(llvm_err)?.into_int_value();
        let pc = b.build_select(take_right, pr, pl, "pc").map_err(llvm_err)?.into_int_value();
        let pp = self.slot(pos)?;
        let out_of_order = self.beats(pp, pc)?;
        b.build_conditional_branch(out_of_order, swap, done).map_err(llvm_err)?;
        b.position_at_end(swap);
        self.set_slot(pos, pc)?;
        self.set_slot(child, pp)?;
        b.build_store(pos_var, child).map_err(llvm_err)?;
        b.build_unconditional_branch(head).map_err(llvm_err)?;
        b.position_at_end(done);
        Ok(())
    }
}

/// The routine of TopK instruction `i`: `void name(const Context*, i64 start, i64 end)` over
/// rows `start..end`, like a kernel's wrapper.
pub(crate) fn gen_top_k<'ctx>(
    g: &CodeGen<'ctx>,
    prog: &Program,
    i: usize,
    f: FunctionValue<'ctx>,
) -> BackendResult<()> {
    let Instr::TopK { input, output, axis, k, largest } = &prog.instrs[i] else {
        return Err(llvm_err(format!("instruction {i} is not a TopK")));
    };
    let (axis, k) = (*axis, *k as i64);
    let entry = g.context.append_basic_block(f, "entry");
    g.builder.position_at_end(entry);
    let ctx = f.get_nth_param(0).expect("context").into_pointer_value();
    let (start, end) =
        (f.get_nth_param(1).expect("start").into_int_value(), f.get_nth_param(2).expect("end").into_int_value());
    if k == 0 {
        // No slots to fill (and none to keep a heap in).
        g.builder.build_return(None).map_err(llvm_err)?;
        return Ok(());
    }
    let x = g.buffer_ptr(ctx, prog.buffer(input.buffer))?;
    let out = g.buffer_ptr(ctx, prog.buffer(output.buffer))?;
    let n = input.extents[axis] as i64;
    let kept: Vec<usize> = (0..input.extents.len()).filter(|&d| d != axis).collect();
    g.for_range(f, start, end, &mut |r| {
        let b = &g.builder;
        // The row's first element and first slot: its index unravelled over the kept dims.
        let (mut x_at, mut out_at, mut rest) = (g.i64(input.offset), g.i64(output.offset), r);
        for &d in kept.iter().rev() {
            let e = g.i64(input.extents[d] as i64);
            let idx = b.build_int_signed_rem(rest, e, "idx").map_err(llvm_err)?;
            rest = b.build_int_signed_div(rest, e, "rest").map_err(llvm_err)?;
            let xs = b.build_int_mul(idx, g.i64(input.strides[d]), "xs").map_err(llvm_err)?;
            x_at = b.build_int_add(x_at, xs, "xa").map_err(llvm_err)?;
            let os = b.build_int_mul(idx, g.i64(output.strides[d]), "os").map_err(llvm_err)?;
            out_at = b.build_int_add(out_at, os, "oa").map_err(llvm_err)?;
        }
        let row = Row {
            g,
            dtype: input.dtype,
            largest: *largest,
            x,
            x_at,
            x_step: input.strides[axis],
            out,
            out_at,
            out_step: output.strides[axis],
        };
        // The first k positions, made a heap.
        g.for_range(f, g.i64(0), g.i64(k), &mut |j| row.set_slot(j, j))?;
        g.for_range(f, g.i64(0), g.i64(k / 2), &mut |t| {
            let j = g.builder.build_int_sub(g.i64(k / 2 - 1), t, "j").map_err(llvm_err)?;
            row.sift_down(f, j, g.i64(k))
        })?;
        // Every later position that beats the worst kept one replaces it.
        let mut consider = |l: IntValue<'ctx>| -> BackendResult<()> {
            let root = row.slot(g.i64(0))?;
            let better = row.beats(l, root)?;
            let take = g.context.append_basic_block(f, "take");
            let next = g.context.append_basic_block(f, "next");
            g.builder.build_conditional_branch(better, take, next).map_err(llvm_err)?;
            g.builder.position_at_end(take);
            row.set_slot(g.i64(0), l)?;
            row.sift_down(f, g.i64(0), g.i64(k))?;
            g.builder.build_unconditional_branch(next).map_err(llvm_err)?;
            g.builder.position_at_end(next);
            Ok(())
        };
        // A contiguous f32 row is screened a vector at a time against the worst kept value:
        // the positions considered are all later than every kept one, so only a strictly
        // better value can beat the root (as in `beats`, NaN never does), and a block with
        // no such lane is passed over; after the first few blocks nearly all are.
        let blocks = if input.dtype == DType::F32 && row.x_step == 1 { (n - k) / SCREEN } else { 0 };
        if blocks > 0 {
            let vt = g.context.f32_type().vec_type(SCREEN as u32);
            g.for_range(f, g.i64(0), g.i64(blocks), &mut |blk| {
                let b = &g.builder;
                let l0 = b
                    .build_int_add(g.i64(k), b.build_int_mul(blk, g.i64(SCREEN), "o").map_err(llvm_err)?, "l0")
                    .map_err(llvm_err)?;
                let worst = row.value(row.slot(g.i64(0))?)?;
                let at = b.build_int_add(row.x_at, l0, "at").map_err(llvm_err)?;
                let v = crate::vector::vload(g, vt, g.elem_ptr(x, DType::F32, at)?)?;
                let thr = crate::vector::splat(g, vt, worst)?;
                let p = if row.largest { FloatPredicate::OGT } else { FloatPredicate::OLT };
                let m = b.build_float_compare(p, v, thr, "m").map_err(llvm_err)?;
                let bits = b.build_bit_cast(m, g.context.i16_type(), "bits").map_err(llvm_err)?.into_int_value();
                let any = b
                    .build_int_compare(IntPredicate::NE, bits, bits.get_type().const_zero(), "any")
                    .map_err(llvm_err)?;
                let scan = g.context.append_basic_block(f, "scan");
                let skip = g.context.append_basic_block(f, "skip");
                b.build_conditional_branch(any, scan, skip).map_err(llvm_err)?;
                g.builder.position_at_end(scan);
                let l1 = g.builder.build_int_add(l0, g.i64(SCREEN), "l1").map_err(llvm_err)?;
                g.for_range(f, l0, l1, &mut consider)?;
                g.builder.build_unconditional_branch(skip).map_err(llvm_err)?;
                g.builder.position_at_end(skip);
                Ok(())
            })?;
        }
        g.for_range(f, g.i64(k + blocks * SCREEN), g.i64(n), &mut consider)?;
        // Sorted in place: the worst goes to the end, repeatedly; the best is left first.
        g.for_range(f, g.i64(0), g.i64((k - 1).max(0)), &mut |t| {
            let last = g.builder.build_int_sub(g.i64(k - 1), t, "last").map_err(llvm_err)?;
            let (worst, other) = (row.slot(g.i64(0))?, row.slot(last)?);
            row.set_slot(g.i64(0), other)?;
            row.set_slot(last, worst)?;
            row.sift_down(f, g.i64(0), last)
        })
    })?;
    g.builder.build_return(None).map_err(llvm_err)?;
    Ok(())
}
