//! Routines whose output size depends on data ([`Instr::NonZero`],
//! [`Instr::NonMaxSuppression`]): sequential scans, one task each, writing a count and then
//! the rows found, the rest of the output zero (see `kiln_ir::Op::NonZero`).

use inkwell::values::{BasicValueEnum, FloatValue, FunctionValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};

use kiln_ir::lir::{Instr, Program, View};
use kiln_ir::DType;
use kiln_llvm_codegen::{llvm_err, BackendResult, CodeGen};

use crate::vector::when;

/// The routine's `ctx` parameter, with the builder at its entry block.
fn enter<'ctx>(g: &CodeGen<'ctx>, f: FunctionValue<'ctx>) -> PointerValue<'ctx> {
    let entry = g.context.append_basic_block(f, "entry");
    g.builder.position_at_end(entry);
    f.get_nth_param(0).expect("context").into_pointer_value()
}

/// Element index of `v` at the coordinates `idx` (constants times its strides).
fn at<'ctx>(g: &CodeGen<'ctx>, v: &View, idx: &[IntValue<'ctx>]) -> BackendResult<IntValue<'ctx>> {
    g.linear(v, idx)
}

/// An i64 counter on the stack, set to `init`.
fn counter<'ctx>(g: &CodeGen<'ctx>, f: FunctionValue<'ctx>, init: IntValue<'ctx>) -> BackendResult<PointerValue<'ctx>> {
    let p = crate::vector::entry_alloca(g, f, g.context.i64_type())?;
    g.builder.build_store(p, init).map_err(llvm_err)?;
    Ok(p)
}

fn get<'ctx>(g: &CodeGen<'ctx>, p: PointerValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
    Ok(g.builder.build_load(g.context.i64_type(), p, "n").map_err(llvm_err)?.into_int_value())
}

fn bump<'ctx>(g: &CodeGen<'ctx>, p: PointerValue<'ctx>) -> BackendResult<()> {
    let n = get(g, p)?;
    let n1 = g.builder.build_int_add(n, g.i64(1), "n1").map_err(llvm_err)?;
    g.builder.build_store(p, n1).map_err(llvm_err)?;
    Ok(())
}

/// Writes 0 to elements `0..n` of the rank-1 i64 view `out`.
fn zero_fill<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    base: PointerValue<'ctx>,
    out: &View,
) -> BackendResult<()> {
    g.for_range(f, g.i64(0), g.i64(out.extents[0] as i64), &mut |j| {
        let a = at(g, out, &[j])?;
        g.store_elem(base, DType::I64, a, g.i64(0).into())
    })
}

/// Whether a loaded element is non-zero (NaN is).
fn non_zero<'ctx>(g: &CodeGen<'ctx>, v: BasicValueEnum<'ctx>) -> BackendResult<IntValue<'ctx>> {
    let b = &g.builder;
    match v {
        BasicValueEnum::FloatValue(x) => {
            b.build_float_compare(FloatPredicate::UNE, x, x.get_type().const_zero(), "nz").map_err(llvm_err)
        }
        BasicValueEnum::IntValue(x) => {
            b.build_int_compare(IntPredicate::NE, x, x.get_type().const_zero(), "nz").map_err(llvm_err)
        }
        _ => Err(llvm_err("NonZero of a vector value")),
    }
}

/// The routine of [`Instr::NonZero`] instruction `i`: `void name(const Context*, i64, i64)`,
/// run as one task. Two passes over the input: the count, then the coordinates, row `d` at
/// `1 + d·count`.
pub(crate) fn gen_non_zero<'ctx>(
    g: &CodeGen<'ctx>,
    prog: &Program,
    i: usize,
    f: FunctionValue<'ctx>,
) -> BackendResult<()> {
    let Instr::NonZero { input, output } = &prog.instrs[i] else {
        return Err(llvm_err(format!("instruction {i} is not a NonZero")));
    };
    let ctx = enter(g, f);
    let x = g.buffer_ptr(ctx, prog.buffer(input.buffer))?;
    let out = g.buffer_ptr(ctx, prog.buffer(output.buffer))?;
    zero_fill(g, f, out, output)?;
    let shape = &input.extents;
    let n = input.numel() as i64;
    // Coordinates of flat position `l`, innermost first by remainder and division.
    let coords = |l: IntValue<'ctx>| -> BackendResult<Vec<IntValue<'ctx>>> {
        let mut idx = vec![g.i64(0); shape.len()];
        let mut rest = l;
        for d in (0..shape.len()).rev() {
            let e = g.i64(shape[d] as i64);
            idx[d] = g.builder.build_int_unsigned_rem(rest, e, "c").map_err(llvm_err)?;
            rest = g.builder.build_int_unsigned_div(rest, e, "r").map_err(llvm_err)?;
        }
        Ok(idx)
    };
    let count = counter(g, f, g.i64(0))?;
    g.for_range(f, g.i64(0), g.i64(n), &mut |l| {
        let idx = coords(l)?;
        let v = g.load_elem(x, input.dtype, at(g, input, &idx)?)?;
        let nz = non_zero(g, v)?;
        when(g, f, nz, &mut || bump(g, count))
    })?;
    let total = get(g, count)?;
    g.store_elem(out, DType::I64, at(g, output, &[g.i64(0)])?, total.into())?;
    let j = counter(g, f, g.i64(0))?;
    g.for_range(f, g.i64(0), g.i64(n), &mut |l| {
        let idx = coords(l)?;
        let v = g.load_elem(x, input.dtype, at(g, input, &idx)?)?;
        let nz = non_zero(g, v)?;
        when(g, f, nz, &mut || {
            let jv = get(g, j)?;
            let total = get(g, count)?;
            for (d, &c) in idx.iter().enumerate() {
                let row = g.builder.build_int_mul(g.i64(d as i64), total, "row").map_err(llvm_err)?;
                let k = g.builder.build_int_add(row, jv, "k").map_err(llvm_err)?;
                let k = g.builder.build_int_add(k, g.i64(1), "k1").map_err(llvm_err)?;
                g.store_elem(out, DType::I64, at(g, output, &[k])?, c.into())?;
            }
            bump(g, j)
        })
    })?;
    g.builder.build_return(None).map_err(llvm_err)?;
    Ok(())
}

/// Float helpers on the builder.
struct F<'a, 'ctx> {
    g: &'a CodeGen<'ctx>,
}

impl<'ctx> F<'_, 'ctx> {
    fn c(&self, x: f32) -> FloatValue<'ctx> {
        self.g.context.f32_type().const_float(x as f64)
    }
    fn sub(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
        self.g.builder.build_float_sub(a, b, "s").map_err(llvm_err)
    }
    fn add(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
        self.g.builder.build_float_add(a, b, "a").map_err(llvm_err)
    }
    fn mul(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
        self.g.builder.build_float_mul(a, b, "m").map_err(llvm_err)
    }
    fn gt(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
        self.g.builder.build_float_compare(FloatPredicate::OGT, a, b, "gt").map_err(llvm_err)
    }
    /// `a < b ? a : b` and `a > b ? a : b`, as the reference's `f32::min`/`max` on numbers.
    fn pick(&self, pred: FloatPredicate, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
        let c = self.g.builder.build_float_compare(pred, a, b, "c").map_err(llvm_err)?;
        Ok(self.g.builder.build_select(c, a, b, "p").map_err(llvm_err)?.into_float_value())
    }
    fn min(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
        self.pick(FloatPredicate::OLT, a, b)
    }
    fn max(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> BackendResult<FloatValue<'ctx>> {
        self.pick(FloatPredicate::OGT, a, b)
    }
    fn and(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
        self.g.builder.build_and(a, b, "and").map_err(llvm_err)
    }

    /// A box's corners `(y0, x0, y1, x1)` from its four numbers (`center`: `[x, y, w, h]`).
    fn corners(&self, b: [FloatValue<'ctx>; 4], center: bool) -> BackendResult<[FloatValue<'ctx>; 4]> {
        if center {
            let (hw, hh) = (self.mul(b[2], self.c(0.5))?, self.mul(b[3], self.c(0.5))?);
            Ok([self.sub(b[1], hh)?, self.sub(b[0], hw)?, self.add(b[1], hh)?, self.add(b[0], hw)?])
        } else {
            Ok([self.min(b[0], b[2])?, self.min(b[1], b[3])?, self.max(b[0], b[2])?, self.max(b[1], b[3])?])
        }
    }

    /// Whether boxes `a` and `b` (corners) overlap by more than `threshold` (IoU), as the
    /// reference evaluation decides it.
    fn suppresses(
        &self,
        a: [FloatValue<'ctx>; 4],
        b: [FloatValue<'ctx>; 4],
        threshold: FloatValue<'ctx>,
    ) -> BackendResult<IntValue<'ctx>> {
        let (iy0, ix0) = (self.max(a[0], b[0])?, self.max(a[1], b[1])?);
        let (iy1, ix1) = (self.min(a[2], b[2])?, self.min(a[3], b[3])?);
        let overlap = self.and(self.gt(ix1, ix0)?, self.gt(iy1, iy0)?)?;
        let inter = self.mul(self.sub(ix1, ix0)?, self.sub(iy1, iy0)?)?;
        let area_a = self.mul(self.sub(a[3], a[1])?, self.sub(a[2], a[0])?)?;
        let area_b = self.mul(self.sub(b[3], b[1])?, self.sub(b[2], b[0])?)?;
        let union = self.sub(self.add(area_a, area_b)?, inter)?;
        let zero = self.c(0.0);
        let positive = self.and(
            self.and(self.gt(inter, zero)?, self.gt(area_a, zero)?)?,
            self.and(self.gt(area_b, zero)?, self.gt(union, zero)?)?,
        )?;
        let iou = self.g.builder.build_float_div(inter, union, "iou").map_err(llvm_err)?;
        self.and(self.and(overlap, positive)?, self.gt(iou, threshold)?)
    }
}

/// The routine of [`Instr::NonMaxSuppression`] instruction `i`, run as one task: per batch
/// and class, the boxes scoring above the threshold are listed (in `scratch[0..]`, by index),
/// sorted by score, highest first, by insertion (stable: ties keep the lower index first),
/// then kept in that order unless they overlap a box kept before (`scratch[N..]`), up to the
/// most boxes per class.
pub(crate) fn gen_non_max_suppression<'ctx>(
    g: &CodeGen<'ctx>,
    prog: &Program,
    i: usize,
    f: FunctionValue<'ctx>,
) -> BackendResult<()> {
    let Instr::NonMaxSuppression { boxes, scores, params, output, scratch, center_point_box } = &prog.instrs[i] else {
        return Err(llvm_err(format!("instruction {i} is not a NonMaxSuppression")));
    };
    let ctx = enter(g, f);
    let ptr = |v: &View| g.buffer_ptr(ctx, prog.buffer(v.buffer));
    let (bx, sc, out, tmp) = (ptr(boxes)?, ptr(scores)?, ptr(output)?, ptr(scratch)?);
    let b = &g.builder;
    let fl = F { g };
    let load_param = |k: usize, d: DType| -> BackendResult<BasicValueEnum<'ctx>> {
        let p = ptr(&params[k])?;
        g.load_elem(p, d, g.i64(params[k].offset))
    };
    let max_out = load_param(0, DType::I64)?.into_int_value();
    let iou = load_param(1, DType::F32)?.into_float_value();
    let threshold = load_param(2, DType::F32)?.into_float_value();
    zero_fill(g, f, out, output)?;
    let [nb, nc, n] = [scores.extents[0], scores.extents[1], scores.extents[2]].map(|x| x as i64);
    let rows = counter(g, f, g.i64(0))?;
    let slot = |k: IntValue<'ctx>| at(g, scratch, &[k]);
    let read_slot = |k: IntValue<'ctx>| -> BackendResult<IntValue<'ctx>> {
        Ok(g.load_elem(tmp, DType::I64, slot(k)?)?.into_int_value())
    };
    let write_slot = |k: IntValue<'ctx>, v: IntValue<'ctx>| g.store_elem(tmp, DType::I64, slot(k)?, v.into());
    g.for_range(f, g.i64(0), g.i64(nb), &mut |bi| {
        let the_box = |j: IntValue<'ctx>| -> BackendResult<[FloatValue<'ctx>; 4]> {
            let mut v = [fl.c(0.0); 4];
            for (k, e) in v.iter_mut().enumerate() {
                let a = at(g, boxes, &[bi, j, g.i64(k as i64)])?;
                *e = g.load_elem(bx, DType::F32, a)?.into_float_value();
            }
            fl.corners(v, *center_point_box)
        };
        g.for_range(f, g.i64(0), g.i64(nc), &mut |ci| {
            let score = |j: IntValue<'ctx>| -> BackendResult<FloatValue<'ctx>> {
                Ok(g.load_elem(sc, DType::F32, at(g, scores, &[bi, ci, j])?)?.into_float_value())
            };
            // The candidates, by index.
            let cands = counter(g, f, g.i64(0))?;
            g.for_range(f, g.i64(0), g.i64(n), &mut |j| {
                let above = fl.gt(score(j)?, threshold)?;
                when(g, f, above, &mut || {
                    write_slot(get(g, cands)?, j)?;
                    bump(g, cands)
                })
            })?;
            let m = get(g, cands)?;
            // Insertion sort by score, highest first: a candidate moves before those that
            // score strictly less.
            g.for_range(f, g.i64(1), m, &mut |p| {
                let key = read_slot(p)?;
                let key_score = score(key)?;
                let q = counter(g, f, p)?;
                let head = g.context.append_basic_block(f, "shift");
                let body = g.context.append_basic_block(f, "shift_body");
                let done = g.context.append_basic_block(f, "shift_done");
                b.build_unconditional_branch(head).map_err(llvm_err)?;
                b.position_at_end(head);
                let qv = get(g, q)?;
                let more = b.build_int_compare(IntPredicate::SGT, qv, g.i64(0), "more").map_err(llvm_err)?;
                let cont = g.context.append_basic_block(f, "shift_test");
                b.build_conditional_branch(more, cont, done).map_err(llvm_err)?;
                b.position_at_end(cont);
                let prev = b.build_int_sub(qv, g.i64(1), "prev").map_err(llvm_err)?;
                let pv = read_slot(prev)?;
                let lower = fl.gt(key_score, score(pv)?)?;
                b.build_conditional_branch(lower, body, done).map_err(llvm_err)?;
                b.position_at_end(body);
                write_slot(qv, pv)?;
                b.build_store(q, prev).map_err(llvm_err)?;
                b.build_unconditional_branch(head).map_err(llvm_err)?;
                b.position_at_end(done);
                write_slot(get(g, q)?, key)
            })?;
            // Greedy selection.
            let kept = counter(g, f, g.i64(0))?;
            g.for_range(f, g.i64(0), m, &mut |p| {
                let room = b.build_int_compare(IntPredicate::SLT, get(g, kept)?, max_out, "room").map_err(llvm_err)?;
                when(g, f, room, &mut || {
                    let j = read_slot(p)?;
                    let bj = the_box(j)?;
                    let free = crate::vector::entry_alloca(g, f, g.context.bool_type())?;
                    b.build_store(free, g.context.bool_type().const_int(1, false)).map_err(llvm_err)?;
                    g.for_range(f, g.i64(0), get(g, kept)?, &mut |q| {
                        let at_q = b.build_int_add(g.i64(n), q, "kq").map_err(llvm_err)?;
                        let k = read_slot(at_q)?;
                        let hit = fl.suppresses(bj, the_box(k)?, iou)?;
                        when(g, f, hit, &mut || {
                            b.build_store(free, g.context.bool_type().const_zero()).map_err(llvm_err)?;
                            Ok(())
                        })
                    })?;
                    let keep = b.build_load(g.context.bool_type(), free, "keep").map_err(llvm_err)?.into_int_value();
                    when(g, f, keep, &mut || {
                        let kv = get(g, kept)?;
                        write_slot(b.build_int_add(g.i64(n), kv, "kn").map_err(llvm_err)?, j)?;
                        bump(g, kept)?;
                        let r = get(g, rows)?;
                        let base = b.build_int_mul(r, g.i64(3), "r3").map_err(llvm_err)?;
                        for (t, v) in [bi, ci, j].into_iter().enumerate() {
                            let k = b.build_int_add(base, g.i64(1 + t as i64), "k").map_err(llvm_err)?;
                            g.store_elem(out, DType::I64, at(g, output, &[k])?, v.into())?;
                        }
                        bump(g, rows)
                    })
                })
            })
        })
    })?;
    let total = get(g, rows)?;
    g.store_elem(out, DType::I64, at(g, output, &[g.i64(0)])?, total.into())?;
    g.builder.build_return(None).map_err(llvm_err)?;
    Ok(())
}
