//! Run-time dims in the LIR: the axes of each buffer that a run sizes, and how each kernel
//! walks them.
//!
//! A buffer holding a value with run-time dims is laid out row-major at the value's bound
//! shape; a run uses, along each such axis ([`RowDim`]), only the indices below the run's
//! size. Marks start on the inputs (and, for leading axes, on every value lowering placed)
//! and are carried to what kernels write: a kernel reads a run-time axis through a view dim
//! that steps through it from index 0 (`per` view indices to one of the axis, where the view
//! merges it with inner axes), indexed by a domain variable of the same extent, or at a
//! fixed index every run has. That variable then runs, at run time, only to `dims[slot] ·
//! per`:
//!
//! * a parallel one writes an axis of the same size in the output (computing past it is
//!   harmless: nothing reads there), and the entry function cuts a kernel's tasks to the run
//!   when it is the domain's dim 0 ([`Clamp`]);
//! * a reduction one is masked: steps past the run add the reduction's identity.
//!
//! A parallel dim that writes a run-time axis of the output runs to its run-time extent too,
//! whatever it reads (nothing reads past it). A load of a run-time axis past its view's
//! extent is allowed where it is padded and guarded by a select on `index < dims[slot] ·
//! per` (a concatenation along a run-time axis: the past of a key/value cache, then the new
//! entry, [`concat_runs`]).
//!
//! Any other form (a window sliding along the axis, a computed index, a view that crosses
//! it) is an error naming the kernel.

use kiln_ir::lir::{BufferKind, Clamp, Expr, Instr, Kernel, Program, RowDim, Scalar, View};
use kiln_ir::{BinaryOp, CmpOp, DType};

use crate::PassError;

/// Per dim (of a view or a domain): `Some((slot, per))` when it steps through a run-time
/// axis from index 0, `per` of its indices to one of the axis; `None` when it stays within
/// one index of every such axis.
type Axes = Vec<Option<(u32, u64)>>;

/// The smallest size a run may give slot `slot` (0 for a slot that is not an input's).
fn lowest(p: &Program, slot: u32) -> u64 {
    p.symbols.get(slot as usize).map_or(0, |s| s.lo as u64)
}

/// How view `v` walks the run-time axes of its buffer ([`Axes`]), or why it cannot be cut to
/// a run's sizes.
fn view_axes(p: &Program, v: &View) -> Result<Axes, String> {
    let marks = &p.buffer(v.buffer).rows;
    let mut axes: Axes = vec![None; v.extents.len()];
    if marks.is_empty() {
        return Ok(axes);
    }
    let es = v.dtype.size().max(1) as i64;
    let off = v.offset * es;
    if off < 0 {
        return Err("starts before its buffer".into());
    }
    for m in marks {
        let (unit, bound) = (m.stride as i64, m.bound as i64);
        let block = unit * bound;
        if unit <= 0 || unit % es != 0 {
            return Err(format!("reads {es}-byte elements across a run-time axis of {unit}-byte steps"));
        }
        let (a0, r0) = ((off / unit) % bound, off % unit);
        let mut cover = None;
        let mut inner = 0;
        for (j, (&e, &s)) in v.extents.iter().zip(&v.strides).enumerate() {
            let sb = s * es;
            if e <= 1 || sb == 0 || sb % block == 0 {
                continue;
            }
            if sb > 0 && unit % sb == 0 && e as i64 * sb == block && cover.is_none() {
                cover = Some((j, (unit / sb) as u64));
            } else if sb > 0 && sb < unit {
                inner += (e as i64 - 1) * sb;
            } else {
                return Err(format!(
                    "steps through a run-time axis ({} of its bound {}) in steps of {s} elements over {e}, which a \
                     run's size cannot cut",
                    m.bound, m.bound
                ));
            }
        }
        match cover {
            Some((j, q)) => {
                if a0 != 0 || r0 + inner >= unit / q as i64 {
                    return Err(format!("starts at index {a0} of a run-time axis or crosses it"));
                }
                if axes[j].is_some() {
                    return Err("merges two run-time axes in one dim".into());
                }
                axes[j] = Some((m.slot, q));
            }
            None => {
                if r0 + inner >= unit {
                    return Err("crosses a run-time axis".into());
                }
                let lo = lowest(p, m.slot);
                if a0 as u64 >= lo {
                    return Err(format!(
                        "reads index {a0} of a run-time axis, past the smallest size a run may give ({lo})"
                    ));
                }
            }
        }
    }
    Ok(axes)
}

/// Every load of operand `j` in the kernel's body and finalizer.
fn loads_of(k: &Kernel, j: usize, f: &mut impl FnMut(&[Expr])) {
    let mut visit = |e: &Expr| {
        if let Expr::Load { operand, index, .. } = e {
            if *operand == j {
                f(index);
            }
        }
    };
    k.body.visit(&mut visit);
    if let Some(fin) = k.reduction.as_ref().and_then(|r| r.finalize.as_ref()) {
        fin.visit(&mut visit);
    }
}

/// A domain dim known to be below a run's extent: `(dim, slot, per)` from a select on
/// `Var(dim) < dims[slot] · per`.
type Guard = (usize, u32, u64);

/// `(dim, slot, per)` when `cond` is `Var(dim) < dims[slot] · per`, operands `dims` being
/// views of the dims array.
fn guard_of(cond: &Expr, dims: &[bool]) -> Option<Guard> {
    let Expr::Cmp(CmpOp::Less, a, b) = cond else { return None };
    let (Expr::Var(d), Expr::Binary(BinaryOp::Mul, l, per)) = (&**a, &**b) else { return None };
    let (Expr::Load { operand, index, .. }, Expr::Const(Scalar::I64(per))) = (&**l, &**per) else { return None };
    match index.as_slice() {
        [Expr::Const(Scalar::I64(slot))] if dims.get(*operand) == Some(&true) && *per > 0 => {
            Some((*d, *slot as u32, *per as u64))
        }
        _ => None,
    }
}

/// Every load of operand `j` in the kernel's body and finalizer, with whether it is padded
/// and the guards ([`guard_of`]) of the selects whose taken side holds it.
fn guarded_loads(p: &Program, k: &Kernel, j: usize, f: &mut impl FnMut(&[Expr], bool, &[Guard])) {
    fn go(e: &Expr, j: usize, dims: &[bool], guards: &mut Vec<Guard>, f: &mut impl FnMut(&[Expr], bool, &[Guard])) {
        match e {
            Expr::Load { operand, index, pad } => {
                if *operand == j {
                    f(index, pad.is_some(), guards);
                }
                index.iter().for_each(|x| go(x, j, dims, guards, f));
            }
            Expr::Select(c, a, b) => {
                go(c, j, dims, guards, f);
                let g = guard_of(c, dims);
                guards.extend(g);
                go(a, j, dims, guards, f);
                if g.is_some() {
                    guards.pop();
                }
                go(b, j, dims, guards, f);
            }
            Expr::Unary(_, a) | Expr::Cast(_, _, _, a) => go(a, j, dims, guards, f),
            Expr::Binary(_, a, b) | Expr::Cmp(_, a, b) => {
                go(a, j, dims, guards, f);
                go(b, j, dims, guards, f);
            }
            Expr::Var(_) | Expr::Const(_) | Expr::Acc => {}
        }
    }
    let dims: Vec<bool> = k.inputs.iter().map(|v| p.buffer(v.buffer).kind == BufferKind::Dims).collect();
    go(&k.body, j, &dims, &mut Vec::new(), f);
    if let Some(fin) = k.reduction.as_ref().and_then(|r| r.finalize.as_ref()) {
        go(fin, j, &dims, &mut Vec::new(), f);
    }
}

/// The run-time extent of each domain dim of `k` ([`Axes`]) from the views it reads.
fn domain_axes(p: &Program, k: &Kernel) -> Result<Axes, String> {
    let mut dom: Axes = vec![None; k.domain.len()];
    for (j, v) in k.inputs.iter().enumerate() {
        let name = &p.buffer(v.buffer).name;
        let axes = view_axes(p, v).map_err(|e| format!("reads `{name}` through a view that {e}"))?;
        if axes.iter().all(Option::is_none) {
            continue;
        }
        let mut bad = None;
        guarded_loads(p, k, j, &mut |index, padded, guards| {
            for (vd, ix) in index.iter().enumerate() {
                let Some((slot, q)) = axes.get(vd).copied().flatten() else { continue };
                match ix {
                    // A prefix of a longer dim, read only below the run's extent.
                    Expr::Var(d) if padded && k.domain[*d] > v.extents[vd] && guards.contains(&(*d, slot, q)) => {}
                    Expr::Var(d) if k.domain[*d] == v.extents[vd] => match dom[*d] {
                        Some(c) if c != (slot, q) => {
                            bad = Some(format!("meets two run-time sizes in its dim {d} (reading `{name}`)"))
                        }
                        _ => dom[*d] = Some((slot, q)),
                    },
                    Expr::Const(Scalar::I64(x)) if *x >= 0 && (*x as u64) < lowest(p, slot) * q => {}
                    _ => {
                        bad = Some(format!(
                            "indexes a run-time axis of `{name}` (its dim {vd}) with a computed or shifted index, \
                             which a run's size cannot cut"
                        ))
                    }
                }
            }
        });
        if let Some(b) = bad {
            return Err(b);
        }
    }
    Ok(dom)
}

/// Per domain dim of `k`: whether it walks a run-time axis of an operand or of its output
/// (every dim, when the kernel reads one in a form that cannot be cut).
pub(crate) fn run_time_dims(p: &Program, k: &Kernel) -> Vec<bool> {
    if p.symbols.is_empty() || !touches_rows(p, k) {
        return vec![false; k.domain.len()];
    }
    let Ok(dom) = domain_axes(p, k) else { return vec![true; k.domain.len()] };
    let mut out: Vec<bool> = dom.iter().map(Option::is_some).collect();
    if k.output.extents.len() == k.n_par {
        match view_axes(p, &k.output) {
            Ok(axes) => axes.iter().zip(&mut out).for_each(|(a, o)| *o |= a.is_some()),
            Err(_) => return vec![true; k.domain.len()],
        }
    }
    out
}

/// Whether a kernel reads or writes a buffer with run-time axes.
pub fn touches_rows(p: &Program, k: &Kernel) -> bool {
    k.inputs.iter().chain([&k.output]).any(|v| !p.buffer(v.buffer).rows.is_empty())
}

/// Marks the kernels that walk run-time axes ([`Program::clamps`]), masks reductions over
/// them, and carries the marks to the buffers kernels write; refuses a form that cannot be
/// cut to a run's sizes.
pub fn clamp(p: &mut Program) -> Result<(), PassError> {
    walk(p, true)
}

/// Carries the marks from the buffers lowering marked to those kernels write (a layout
/// change's, a fused chain's), so that the LIR steps see which kernels walk run-time axes.
pub fn mark(p: &mut Program) {
    // Only marks: a form that [`clamp`] refuses is refused there, after the LIR steps.
    let _ = walk(p, false);
}

fn walk(p: &mut Program, last: bool) -> Result<(), PassError> {
    if p.symbols.is_empty() {
        return Ok(());
    }
    let mut dims_buffer = None;
    for i in 0..p.instrs.len() {
        match &p.instrs[i] {
            Instr::Kernel(k) => {
                let k = k.clone();
                let k = &k;
                let name = k.name.clone();
                let err = |message: String| PassError::RunTimeDim { node: name.clone(), op: "kernel".into(), message };
                let dom = match domain_axes(p, k) {
                    Ok(d) => d,
                    Err(e) => match flat_reduction(p, k) {
                        Some(_) if last => {
                            mask_flat(p, i, &mut dims_buffer);
                            continue;
                        }
                        Some(_) => continue,
                        None if last => return Err(err(e)),
                        None => continue,
                    },
                };
                let np = k.n_par;
                if let Err(e) = write_axes(p, k, &dom) {
                    if last {
                        return Err(err(e));
                    }
                    continue;
                }
                if !last {
                    continue;
                }
                // A parallel dim writing a run-time axis runs to its extent, whatever it reads:
                // nothing reads the output past it.
                let mut dom = dom;
                if k.output.extents.len() == np {
                    if let Ok(out) = view_axes(p, &k.output) {
                        dom.iter_mut().zip(out).filter(|(d, _)| d.is_none()).for_each(|(d, o)| *d = o);
                    }
                }
                if dom.iter().any(Option::is_some) {
                    p.clamps.insert(i, dom.iter().map(|d| d.map(|(slot, per)| Clamp { slot, per })).collect());
                }
                // A kernel walking a run-time axis past its dim 0 reads the dims array: the
                // code may bound its loops with it (a matrix product's M, N and K), and a
                // reduction over such an axis (dim 0 included) is masked with it.
                let masked: Vec<(usize, u32, u64)> =
                    (np..dom.len()).filter_map(|dim| dom[dim].map(|(slot, q)| (dim, slot, q))).collect();
                if dom.iter().skip(1).any(Option::is_some) || !masked.is_empty() {
                    let dims = dims_view(p, &mut dims_buffer);
                    let Instr::Kernel(k) = &mut p.instrs[i] else { unreachable!() };
                    // (A kernel lowering gave the dims array already reads it as it is.)
                    let d = match k.inputs.iter().position(|v| v.buffer == dims.buffer) {
                        Some(d) => d,
                        None => {
                            k.inputs.push(dims);
                            k.inputs.len() - 1
                        }
                    };
                    if !masked.is_empty() {
                        let conds = masked
                            .iter()
                            .map(|&(dim, slot, q)| Expr::cmp(CmpOp::Less, Expr::Var(dim), run_extent(d, slot, q)));
                        mask_body(k, all(conds.collect()));
                        run_time_mean(k, run_count(k, &dom, d));
                    }
                }
            }
            Instr::Copy { dst, src, bytes, src_offset, dst_offset } => {
                let (sb, db) = (p.buffer(*src), p.buffer(*dst));
                let whole = *bytes == sb.bytes && db.bytes == *bytes && *src_offset == 0 && *dst_offset == 0;
                if whole && db.rows.is_empty() && !sb.rows.is_empty() {
                    let rows = sb.rows.clone();
                    p.buffers[dst.0 as usize].rows = rows;
                } else if last && !whole && !sb.rows.is_empty() && sb.leading_rows().is_none() {
                    return Err(PassError::RunTimeDim {
                        node: format!("instruction {i}"),
                        op: "copy".into(),
                        message: format!("copies part of `{}`, whose run-time axes it cannot cut", sb.name),
                    });
                }
            }
            ins if last => {
                let (r, _) = ins.reads_writes();
                if let Some(b) = r.into_iter().find(|&b| !p.buffer(b).rows.is_empty()) {
                    return Err(PassError::RunTimeDim {
                        node: format!("instruction {i}"),
                        op: "instruction".into(),
                        message: format!("reads the run-time axes of `{}`, which it cannot cut", p.buffer(b).name),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks the output of `k` against the run-time extents of its parallel dims, marking an
/// unmarked output buffer with the axes they write.
fn write_axes(p: &mut Program, k: &Kernel, dom: &Axes) -> Result<(), String> {
    let np = k.n_par;
    let out = &k.output;
    let ob = out.buffer;
    let name = p.buffer(ob).name.clone();
    if out.extents.len() != np {
        return if dom[..np].iter().all(Option::is_none) && p.buffer(ob).rows.is_empty() {
            Ok(())
        } else {
            Err(format!("writes `{name}` through a view not shaped like its parallel dims"))
        };
    }
    if p.buffer(ob).rows.is_empty() && dom[..np].iter().any(Option::is_some) {
        if matches!(p.buffer(ob).kind, BufferKind::Input(_) | BufferKind::Constant(_)) {
            return Err(format!("writes the run-time axes it reads into `{name}`, which it cannot mark"));
        }
        let marks = marks_of(out, &dom[..np])
            .map_err(|d| format!("writes the run-time axis of its dim {d} into `{name}` in steps it cannot mark"))?;
        p.buffers[ob.0 as usize].rows = marks;
    }
    let axes = view_axes(p, out).map_err(|e| format!("writes `{name}` through a view that {e}"))?;
    for d in 0..np {
        match (dom[d], axes[d]) {
            (Some(c), Some(o)) if c != o => {
                return Err(format!("writes a run-time axis of `{name}` (its dim {d}) of another size than it reads"))
            }
            (Some(_), None) => {
                return Err(format!("writes the run-time axis of its dim {d} into `{name}` across its other axes"))
            }
            // A run-time axis of the output computed from fixed operands: the bound's values,
            // of which a run uses the first.
            _ => {}
        }
    }
    Ok(())
}

/// The marks of a buffer written through `out` whose dims walk the run-time axes `axes`
/// (outermost first), or the dim that cannot be marked (a stride that is not positive, an
/// extent that is not a multiple of `per`).
fn marks_of(out: &View, axes: &[Option<(u32, u64)>]) -> Result<Vec<RowDim>, usize> {
    let es = out.dtype.size().max(1) as u64;
    let mut marks = Vec::new();
    for (d, c) in axes.iter().enumerate() {
        let Some((slot, q)) = *c else { continue };
        let s = out.strides[d];
        if s <= 0 || !(out.extents[d] as u64).is_multiple_of(q) {
            return Err(d);
        }
        marks.push(RowDim { slot, bound: out.extents[d] as u64 / q, stride: s as u64 * q * es });
    }
    marks.sort_by_key(|m| std::cmp::Reverse(m.stride));
    Ok(marks)
}

/// The view of the dims array (added to the program once).
fn dims_view(p: &mut Program, dims_buffer: &mut Option<kiln_ir::lir::BufferId>) -> View {
    let n = p.dim_slots;
    let b = *dims_buffer.get_or_insert_with(|| match p.buffers.iter().position(|b| b.kind == BufferKind::Dims) {
        Some(i) => kiln_ir::lir::BufferId(i as u32),
        None => p.add_buffer(BufferKind::Dims, n * 8, "dims"),
    });
    // (Lowering may have added it before the slots of run-time shapes were counted.)
    let buf = &mut p.buffers[b.0 as usize];
    buf.bytes = buf.bytes.max(n * 8);
    View::dense(b, DType::I64, &[n])
}

/// How a concatenation along `axis` of `ins` into `out` meets run-time axes, when its first
/// operand is run-time along the axis and the others fixed (a key/value cache's past, then
/// the new entries): the first operand's `(slot, per)` along it and the dims array's view.
/// The output's run-time extent along the axis is then `per · dims[slot]` plus the others'
/// lengths, a derived symbol's ([`kiln_ir::DimSymbol::from`]); an output buffer not yet
/// marked is marked with it. `None` when the concatenation is not of that form (it is then
/// lowered as copies, refused by [`clamp`] if it meets a run-time axis otherwise).
pub(crate) fn concat_runs(p: &mut Program, ins: &[View], out: &View, axis: usize) -> Option<((u32, u64), View)> {
    if p.symbols.is_empty() {
        return None;
    }
    mark(p);
    let axes: Vec<Axes> = ins.iter().map(|v| view_axes(p, v).ok()).collect::<Option<_>>()?;
    let (slot, per) = axes.first()?.get(axis).copied().flatten()?;
    if axes[1..].iter().any(|a| a[axis].is_some()) {
        return None;
    }
    let rest: usize = ins[1..].iter().map(|v| v.extents[axis]).sum();
    if !(rest as u64).is_multiple_of(per) {
        return None;
    }
    let c = (rest as u64 / per) as i64;
    let derived = p.symbols.iter().position(|s| s.from == Some((slot as usize, c)))?;
    let ob = out.buffer;
    if p.buffer(ob).rows.is_empty() {
        if !matches!(p.buffer(ob).kind, BufferKind::Activation | BufferKind::Output(_)) {
            return None;
        }
        let out_axes: Axes = (0..out.extents.len())
            .map(|d| if d == axis { Some((derived as u32, per)) } else { axes.iter().find_map(|a| a[d]) })
            .collect();
        p.buffers[ob.0 as usize].rows = marks_of(out, &out_axes).ok()?;
    }
    let dims = dims_view(p, &mut None);
    Some(((slot, per), dims))
}

/// `dims[slot] · per`, operand `d` being the dims array (the form [`guard_of`] reads).
pub(crate) fn run_extent(d: usize, slot: u32, per: u64) -> Expr {
    Expr::mul(Expr::load(d, vec![Expr::i64(slot as i64)]), Expr::i64(per as i64))
}

fn all(conds: Vec<Expr>) -> Expr {
    conds.into_iter().reduce(|a, b| Expr::bin(BinaryOp::And, a, b)).expect("at least one condition")
}

/// The elements a run reduces over per output element: each reduction dim's run-time extent
/// or its extent (operand `d` is the dims array).
fn run_count(k: &Kernel, dom: &Axes, d: usize) -> Expr {
    (k.n_par..k.domain.len())
        .map(|r| match dom[r] {
            Some((slot, per)) => run_extent(d, slot, per),
            None => Expr::i64(k.domain[r] as i64),
        })
        .reduce(Expr::mul)
        .unwrap_or_else(|| Expr::i64(1))
}

/// A mean (a finalizer dividing by the reduction's element count, as lowering writes it) over
/// run-time dims divides by `count`, the run's (an i64 expression), instead.
fn run_time_mean(k: &mut Kernel, count: Expr) {
    let total: usize = k.domain[k.n_par..].iter().product();
    let Some(Expr::Binary(BinaryOp::Div, a, c)) = k.reduction.as_mut().and_then(|r| r.finalize.as_mut()) else {
        return;
    };
    if let (Expr::Acc, Expr::Const(x)) = (&**a, &**c) {
        if *x == Scalar::of(x.dtype(), total as f64) {
            let dt = x.dtype();
            **c = Expr::cast(dt, count);
        }
    }
}

/// The body of a reduction that adds its identity where `cond` is false.
fn mask_body(k: &mut Kernel, cond: Expr) {
    let init = k.reduction.as_ref().expect("a masked kernel reduces").init;
    let body = std::mem::replace(&mut k.body, Expr::i64(0));
    k.body = Expr::select(cond, body, Expr::Const(init));
}

/// A reduction over every element of one flat view of a buffer with run-time axes (a check
/// kernel counting bad indices, its dims merged): `Some(operand)` when it can be masked by
/// each element's position ([`mask_flat`]).
fn flat_reduction(p: &Program, k: &Kernel) -> Option<usize> {
    let marked: Vec<usize> = (0..k.inputs.len()).filter(|&j| !p.buffer(k.inputs[j].buffer).rows.is_empty()).collect();
    let &[j] = marked.as_slice() else { return None };
    let v = &k.inputs[j];
    let mut ok = k.n_par == 0 && k.domain.len() == 1 && v.extents.len() == 1 && v.strides[0] > 0 && v.offset >= 0;
    loads_of(k, j, &mut |index| ok &= index == [Expr::Var(0)]);
    ok.then_some(j)
}

/// Masks kernel `i` (a [`flat_reduction`]) to the elements a run uses: those whose index
/// along each run-time axis of the buffer is below the run's size.
fn mask_flat(p: &mut Program, i: usize, dims_buffer: &mut Option<kiln_ir::lir::BufferId>) {
    let dims = dims_view(p, dims_buffer);
    let Instr::Kernel(k) = &p.instrs[i] else { unreachable!() };
    let j = flat_reduction(p, k).expect("checked");
    let v = &k.inputs[j];
    let es = v.dtype.size().max(1) as i64;
    let marks = p.buffer(v.buffer).rows.clone();
    let d = k.inputs.len();
    let byte =
        Expr::mul(Expr::add(Expr::i64(v.offset), Expr::mul(Expr::Var(0), Expr::i64(v.strides[0]))), Expr::i64(es));
    let conds = marks
        .iter()
        .map(|m| {
            let index = Expr::bin(
                BinaryOp::Mod { fmod: false },
                Expr::div(byte.clone(), Expr::i64(m.stride as i64)),
                Expr::i64(m.bound as i64),
            );
            Expr::cmp(CmpOp::Less, index, run_extent(d, m.slot, 1))
        })
        .collect();
    // The elements of the run: those of the bound, scaled by each axis's run over its bound.
    let bounds: u64 = marks.iter().map(|m| m.bound).product();
    let Instr::Kernel(k) = &mut p.instrs[i] else { unreachable!() };
    let total: usize = k.domain.iter().product();
    let count = marks
        .iter()
        .map(|m| run_extent(d, m.slot, 1))
        .fold(Expr::i64((total as u64 / bounds.max(1)) as i64), Expr::mul);
    k.inputs.push(dims);
    mask_body(k, all(conds));
    run_time_mean(k, count);
}
