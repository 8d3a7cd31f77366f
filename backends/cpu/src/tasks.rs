//! A kernel's tasks at run time: the levels its task numbers are made of ([`Radix`]), how
//! many of each a run needs, and the wrapper's loop that maps a run's task numbers to the
//! bound's where a level past the first is cut ([`call_remapped`]); and the run-time
//! extents a body reads from the dims array ([`dims_extent`]).

use inkwell::values::{BasicMetadataValueEnum, FunctionValue, IntValue, PointerValue};

use kiln_abi::context_offsets as off;
use kiln_ir::DType;
use kiln_llvm_codegen::{llvm_err, BackendResult, CodeGen};

/// One level of a kernel's task numbering (outermost first): `count` at the bound and, for
/// one that follows a run-time dim, how many of them a run needs: `ceil(dims[slot] · per /
/// unit)`, at most `count`. The tasks a run needs are those whose level numbers are all
/// below that; past a first such level, the kernel's wrapper maps the run's task numbers to
/// the bound's ([`call_remapped`]). A task's block may run past the run's size, over
/// elements no one reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Radix {
    pub count: u64,
    pub run: Option<(u32, u64, u64)>,
}

impl Radix {
    pub(crate) fn of(count: usize, clamp: Option<kiln_ir::lir::Clamp>, unit: usize) -> Radix {
        Radix { count: count as u64, run: clamp.map(|c| (c.slot, c.per, unit.max(1) as u64)) }
    }
}

/// Whether the wrapper maps a run's task numbers to the bound's: some level past the
/// first follows a run-time dim.
pub(crate) fn remapped(radices: &[Radix]) -> bool {
    radices.iter().skip(1).any(|r| r.run.is_some())
}

/// The unsigned minimum of two i64s (a negative value counts as huge).
pub(crate) fn umin<'ctx>(g: &CodeGen<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> BackendResult<IntValue<'ctx>> {
    let lt = g.builder.build_int_compare(inkwell::IntPredicate::ULT, a, b, "lt").map_err(llvm_err)?;
    Ok(g.builder.build_select(lt, a, b, "min").map_err(llvm_err)?.into_int_value())
}

/// The rows of a run: the size in run-time dim slot `slot`, at most `bound` (the runtime has
/// checked it against its bounds; the minimum keeps a bad one from reaching past a buffer).
pub(crate) fn run_rows<'ctx>(
    g: &CodeGen<'ctx>,
    ctx: PointerValue<'ctx>,
    slot: u32,
    bound: u64,
) -> BackendResult<IntValue<'ctx>> {
    let dims = g.ctx_field(ctx, off::DIMS, "dims")?;
    // SAFETY (of the address): the slot is one of the manifest's symbols, below its count.
    let at =
        unsafe { g.builder.build_gep(g.context.i64_type(), dims, &[g.i64(slot as i64)], "rows") }.map_err(llvm_err)?;
    let v = g.builder.build_load(g.context.i64_type(), at, "rows").map_err(llvm_err)?.into_int_value();
    umin(g, v, g.i64(bound as i64))
}

/// How many of each task level a run needs ([`Radix`]).
pub(crate) fn run_counts<'ctx>(
    g: &CodeGen<'ctx>,
    ctx: PointerValue<'ctx>,
    radices: &[Radix],
) -> BackendResult<Vec<IntValue<'ctx>>> {
    let b = &g.builder;
    radices
        .iter()
        .map(|r| {
            let Some((slot, per, unit)) = r.run else { return Ok(g.i64(r.count as i64)) };
            let v = run_rows(g, ctx, slot, r.count * unit)?;
            let n = b.build_int_mul(v, g.i64(per as i64), "n").map_err(llvm_err)?;
            let n = b.build_int_add(n, g.i64(unit as i64 - 1), "n").map_err(llvm_err)?;
            let n = b.build_int_unsigned_div(n, g.i64(unit as i64), "n").map_err(llvm_err)?;
            umin(g, n, g.i64(r.count as i64))
        })
        .collect()
}

/// `dims[slot] · per`, at most `bound`, read by a body from the dims array at `dims` (an
/// operand of its kernel).
pub(crate) fn dims_extent<'ctx>(
    g: &CodeGen<'ctx>,
    dims: PointerValue<'ctx>,
    (slot, per): (u32, u64),
    bound: usize,
) -> BackendResult<IntValue<'ctx>> {
    let v = g.load_elem(dims, DType::I64, g.i64(slot as i64))?.into_int_value();
    let v = g.builder.build_int_mul(v, g.i64(per as i64), "run").map_err(llvm_err)?;
    umin(g, v, g.i64(bound as i64))
}

/// The wrapper's loop over run task numbers `start..end` of a kernel whose levels
/// ([`remapped`]) are cut past the first: each range of them that the bound's numbering keeps
/// together (the levels after the last run-time one are whole, so the run's tasks from one
/// number of that level to its run's end are consecutive at the bound too) goes to `body` as
/// one, after `args`.
pub(crate) fn call_remapped<'ctx>(
    g: &CodeGen<'ctx>,
    f: FunctionValue<'ctx>,
    ctx: PointerValue<'ctx>,
    radices: &[Radix],
    body: FunctionValue<'ctx>,
    args: &[BasicMetadataValueEnum<'ctx>],
    (start, end): (IntValue<'ctx>, IntValue<'ctx>),
) -> BackendResult<()> {
    let counts = run_counts(g, ctx, radices)?;
    let last = radices.iter().rposition(|r| r.run.is_some()).expect("a run-time level");
    let inner: u64 = radices[last + 1..].iter().map(|r| r.count).product();
    let b = &g.builder;
    let pre = b.get_insert_block().expect("positioned");
    let (header, step, exit) = (
        g.context.append_basic_block(f, "task"),
        g.context.append_basic_block(f, "range"),
        g.context.append_basic_block(f, "done"),
    );
    b.build_unconditional_branch(header).map_err(llvm_err)?;
    b.position_at_end(header);
    let phi = b.build_phi(g.context.i64_type(), "t").map_err(llvm_err)?;
    phi.add_incoming(&[(&start, pre)]);
    let t = phi.as_basic_value().into_int_value();
    let more = b.build_int_compare(inkwell::IntPredicate::SLT, t, end, "more").map_err(llvm_err)?;
    b.build_conditional_branch(more, step, exit).map_err(llvm_err)?;
    b.position_at_end(step);
    let ui = |x: u64| g.i64(x as i64);
    let q = b.build_int_unsigned_div(t, ui(inner), "q").map_err(llvm_err)?;
    let rem = b.build_int_unsigned_rem(t, ui(inner), "rem").map_err(llvm_err)?;
    let d_last = b.build_int_unsigned_rem(q, counts[last], "dl").map_err(llvm_err)?;
    let mut rest = b.build_int_unsigned_div(q, counts[last], "hi").map_err(llvm_err)?;
    // The bound's number: the outer levels' digits (by the run's counts) at the bound's
    // strides, then the last run-time level's digit and the rest.
    let mut task = b.build_int_mul(d_last, ui(inner), "at").map_err(llvm_err)?;
    task = b.build_int_add(task, rem, "task").map_err(llvm_err)?;
    let mut stride = inner * radices[last].count;
    for (r, &c) in radices[..last].iter().zip(&counts[..last]).rev() {
        let digit = b.build_int_unsigned_rem(rest, c, "digit").map_err(llvm_err)?;
        rest = b.build_int_unsigned_div(rest, c, "rest").map_err(llvm_err)?;
        let at = b.build_int_mul(digit, ui(stride), "at").map_err(llvm_err)?;
        task = b.build_int_add(task, at, "task").map_err(llvm_err)?;
        stride *= r.count;
    }
    // As far as the last run-time level's run goes, and the range.
    let left = b.build_int_sub(counts[last], d_last, "left").map_err(llvm_err)?;
    let left = b.build_int_mul(left, ui(inner), "left").map_err(llvm_err)?;
    let left = b.build_int_sub(left, rem, "left").map_err(llvm_err)?;
    let span = b.build_int_sub(end, t, "span").map_err(llvm_err)?;
    let len = umin(g, left, span)?;
    let next = b.build_int_add(task, len, "next").map_err(llvm_err)?;
    let mut a = args.to_vec();
    a.push(task.into());
    a.push(next.into());
    b.build_call(body, &a, "").map_err(llvm_err)?;
    let t2 = b.build_int_add(t, len, "t2").map_err(llvm_err)?;
    phi.add_incoming(&[(&t2, b.get_insert_block().expect("positioned"))]);
    b.build_unconditional_branch(header).map_err(llvm_err)?;
    b.position_at_end(exit);
    Ok(())
}
