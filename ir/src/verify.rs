//! The HIR verifier. Invariants checked:
//!
//! 1. every operand of a scheduled node is a graph input, a constant, or a result of a node
//!    scheduled earlier (SSA, topological schedule);
//! 2. every node's result types equal what its typing rule infers from its operands;
//! 3. no scheduled node is a placeholder (`Op::Unsupported`);
//! 4. every graph output is defined (input, constant, or scheduled result);
//! 5. a node is scheduled at most once;
//! 6. a guarded node's keys are defined one-element i64 values, and a node reads a result of
//!    a guarded node only under the same guards (or more, in any order), except a `Merge`,
//!    which reads each case's result from outside it; a graph output and an output's run-time shape are
//!    results of unguarded nodes (or inputs, constants);
//! 7. an input's run-time dims name declared symbols, one per axis of the input, each axis
//!    sized at its symbol's bound `hi`, with `lo <= hi`.

use std::collections::HashSet;

use crate::infer::infer;
use crate::{Graph, Op, ValueDef, ValueId};

pub fn verify(g: &Graph) -> Result<(), String> {
    for s in &g.symbols {
        if s.lo > s.hi {
            return Err(format!("symbol `{}` has bounds {}..{}", s.name, s.lo, s.hi));
        }
    }
    for (&i, axes) in &g.input_syms {
        let Some(&v) = g.inputs.get(i) else {
            return Err(format!("run-time dims are given for input {i}, which does not exist"));
        };
        let shape = &g.ty(v).shape;
        if axes.len() != shape.len() {
            return Err(format!(
                "input `{}` has rank {}, its run-time dims {}",
                g.value(v).name,
                shape.len(),
                axes.len()
            ));
        }
        for (a, s) in axes.iter().enumerate() {
            if let Some(s) = *s {
                match g.symbols.get(s) {
                    Some(sym) if sym.hi == shape[a] => {}
                    Some(sym) => {
                        return Err(format!(
                            "input `{}` axis {a} is {}, not the bound {} of `{}`",
                            g.value(v).name,
                            shape[a],
                            sym.hi,
                            sym.name
                        ))
                    }
                    None => {
                        return Err(format!(
                            "input `{}` axis {a} names symbol {s}, which is not declared",
                            g.value(v).name
                        ))
                    }
                }
            }
        }
    }
    for (&i, axes) in &g.output_syms {
        let Some(&v) = g.outputs.get(i) else {
            return Err(format!("run-time dims are given for output {i}, which does not exist"));
        };
        let shape = &g.ty(v).shape;
        if axes.len() != shape.len() {
            return Err(format!("output {i} has rank {}, its run-time dims {}", shape.len(), axes.len()));
        }
        for (a, s) in axes.iter().enumerate() {
            if let Some(s) = *s {
                if g.symbols.get(s).is_none_or(|sym| sym.hi != shape[a]) {
                    return Err(format!("output {i} axis {a} is {}, not the bound of symbol {s}", shape[a]));
                }
            }
        }
    }
    let mut defined: HashSet<ValueId> = g.inputs.iter().copied().collect();
    let mut scheduled = HashSet::new();
    let is_avail = |defined: &HashSet<ValueId>, v: ValueId| defined.contains(&v) || g.const_of(v).is_some();
    for &n in g.order() {
        let node = g.node(n);
        if !scheduled.insert(n) {
            return Err(format!("node `{}` is scheduled twice", node.name));
        }
        if let Op::Unsupported { op_type, .. } = &node.op {
            return Err(format!("node `{}` is an unsupported op {op_type}", node.name));
        }
        for &v in &node.inputs {
            if !is_avail(&defined, v) {
                return Err(format!("node `{}` uses {v} (`{}`) before it is defined", node.name, g.value(v).name));
            }
        }
        for c in &node.guard {
            let t = g.ty(c.key);
            if !is_avail(&defined, c.key) || t.dtype != crate::DType::I64 || t.numel() != 1 {
                return Err(format!("node `{}` is guarded by {} ({t}), not a defined i64 scalar", node.name, c.key));
            }
        }
        // A merge reads each case's result, a loop's end each iteration's.
        let merge = matches!(node.op, Op::Merge | Op::LoopEnd { .. });
        for (i, &v) in node.inputs.iter().enumerate() {
            let inner = guard_of(g, v);
            let within = |outer: &[crate::Guard], inner: &[crate::Guard]| outer.iter().all(|c| inner.contains(c));
            let ok = within(inner, &node.guard) || (merge && i > 0 && within(&node.guard, inner));
            if !ok {
                return Err(format!(
                    "node `{}` reads {v} (`{}`), computed in another run-time case",
                    node.name,
                    g.value(v).name
                ));
            }
        }
        let tys: Vec<_> = node.inputs.iter().map(|&v| g.ty(v)).collect();
        let want = infer(&node.op, &tys).map_err(|e| format!("node `{}` ({}): {e}", node.name, node.op.name()))?;
        let have: Vec<_> = node.outputs.iter().map(|&v| g.ty(v).clone()).collect();
        if want != have {
            return Err(format!(
                "node `{}` ({}): result types {have:?} differ from inferred {want:?}",
                node.name,
                node.op.name()
            ));
        }
        for (k, &v) in node.outputs.iter().enumerate() {
            if g.value(v).def != ValueDef::Node(n, k) {
                return Err(format!("node `{}` result {k} has a wrong definition", node.name));
            }
            defined.insert(v);
        }
    }
    for v in g.outputs.iter().copied().chain(g.shape_values()) {
        if !is_avail(&defined, v) {
            return Err(format!("graph output `{}` is not defined", g.value(v).name));
        }
        if !guard_of(g, v).is_empty() {
            return Err(format!("graph output `{}` is computed in a run-time case", g.value(v).name));
        }
    }
    Ok(())
}

/// The guard of the node that computes `v` (none for inputs and constants).
fn guard_of(g: &Graph, v: ValueId) -> &[crate::Guard] {
    match g.value(v).def {
        ValueDef::Node(n, _) => &g.node(n).guard,
        _ => &[],
    }
}

/// The LIR verifier, run after lowering and after every LIR step of the pipeline in debug
/// builds and tests. Invariants checked:
///
/// 1. every buffer an instruction names exists;
/// 2. a kernel's output view has one extent per parallel dimension, equal to the domain's;
/// 3. every load names an operand of its kernel and indexes each of its dimensions;
/// 4. iteration variables index the domain (the finalizer sees only the parallel ones), and
///    `Acc` appears only in a reduction's finalizer;
/// 5. every view of a kernel stays inside its buffer (for all index values in its extents);
/// 6. copies stay inside both buffers;
/// 7. once memory is planned, every placed activation that an instruction uses lies inside
///    the arena.
pub fn verify_lir(p: &crate::lir::Program) -> Result<(), String> {
    use crate::lir::{BufferId, BufferKind, Expr, Instr, View};
    let buffer = |b: BufferId, at: &str| {
        p.buffers
            .get(b.0 as usize)
            .ok_or_else(|| format!("{at}: buffer {b} does not exist ({} buffers)", p.buffers.len()))
    };
    let in_bounds = |v: &View, at: &str| -> Result<(), String> {
        let buf = buffer(v.buffer, at)?;
        if v.extents.len() != v.strides.len() {
            return Err(format!(
                "{at}: view of {} has {} extents, {} strides",
                v.buffer,
                v.extents.len(),
                v.strides.len()
            ));
        }
        if v.extents.contains(&0) {
            return Ok(());
        }
        let (mut lo, mut hi) = (v.offset, v.offset);
        for (&e, &s) in v.extents.iter().zip(&v.strides) {
            let span = (e as i64 - 1) * s;
            if span < 0 {
                lo += span;
            } else {
                hi += span;
            }
        }
        let elems = (buf.bytes / v.dtype.size().max(1)) as i64;
        if lo < 0 || hi >= elems {
            return Err(format!(
                "{at}: view of {} (`{}`) reaches elements {lo}..={hi}, the buffer holds {elems}",
                v.buffer, buf.name
            ));
        }
        Ok(())
    };
    // The open blocks, innermost last: true for a loop, false for a case.
    let mut open: Vec<bool> = Vec::new();
    for (i, ins) in p.instrs.iter().enumerate() {
        match ins {
            Instr::Case { key, .. } => {
                let at = format!("instruction {i} (case)");
                if key.dtype != crate::DType::I64 || key.numel() != 1 {
                    return Err(format!("{at}: the key is {} with {} elements, not one i64", key.dtype, key.numel()));
                }
                in_bounds(key, &at)?;
                open.push(false);
            }
            Instr::EndCase => {
                if open.pop() != Some(false) {
                    return Err(format!("instruction {i} (end_case) closes no case"));
                }
            }
            Instr::Loop { counter, trip, cond } => {
                let at = format!("instruction {i} (loop)");
                let one = |v: &View| v.numel() == 1;
                if counter.dtype != crate::DType::I64 || !trip.dtype.is_int() || cond.dtype != crate::DType::Bool {
                    return Err(format!("{at}: counter {}, trip {}, cond {}", counter.dtype, trip.dtype, cond.dtype));
                }
                if !one(counter) || !one(trip) || !one(cond) {
                    return Err(format!("{at}: counter, trip and cond must be one element each"));
                }
                for v in [counter, trip, cond] {
                    in_bounds(v, &at)?;
                }
                open.push(true);
            }
            Instr::EndLoop => {
                if open.pop() != Some(true) {
                    return Err(format!("instruction {i} (end_loop) closes no loop"));
                }
            }
            Instr::CopyRow { dst, dst_offset, src, src_offset, bytes, row, rows } => {
                let at = format!("instruction {i} (copy_row)");
                if row.dtype != crate::DType::I64 || row.numel() != 1 {
                    return Err(format!("{at}: the row is {}, not one i64", row.dtype));
                }
                in_bounds(row, &at)?;
                let (d, s) = (buffer(*dst, &at)?, buffer(*src, &at)?);
                if dst_offset + bytes * rows > d.bytes || src_offset + bytes > s.bytes {
                    return Err(format!("{at}: {rows} rows of {bytes} bytes do not fit"));
                }
            }
            Instr::SetDims { slots, src } => {
                let at = format!("instruction {i} (set_dims)");
                if src.dtype != crate::DType::I64 || src.extents != [slots.len()] {
                    return Err(format!(
                        "{at}: {} slots from a {} view of extents {:?}",
                        slots.len(),
                        src.dtype,
                        src.extents
                    ));
                }
                if let Some(s) = slots.iter().find(|&&s| s >= p.dim_slots) {
                    return Err(format!("{at}: slot {s} of {}", p.dim_slots));
                }
                in_bounds(src, &at)?;
            }
            Instr::NonZero { input, output } => {
                let at = format!("instruction {i} (non_zero)");
                let want = 1 + input.extents.len() * input.numel();
                if output.dtype != crate::DType::I64 || output.extents != [want] {
                    return Err(format!("{at}: output {} {:?}, expected i64 [{want}]", output.dtype, output.extents));
                }
                in_bounds(input, &at)?;
                in_bounds(output, &at)?;
            }
            Instr::NonMaxSuppression { boxes, scores, params, output, scratch, .. } => {
                let at = format!("instruction {i} (non_max_suppression)");
                let (bs, ss) = (&boxes.extents, &scores.extents);
                let shapes_ok = bs.len() == 3 && bs[2] == 4 && ss.len() == 3 && ss[0] == bs[0] && ss[2] == bs[1];
                let want = 1 + ss.iter().product::<usize>() * 3;
                if !shapes_ok || output.extents != [want] || scratch.extents != [2 * bs.get(1).copied().unwrap_or(0)] {
                    return Err(format!(
                        "{at}: boxes {bs:?}, scores {ss:?}, output {:?}, scratch {:?}",
                        output.extents, scratch.extents
                    ));
                }
                for v in [boxes, scores, output, scratch].into_iter().chain(params) {
                    in_bounds(v, &at)?;
                }
            }
            Instr::Kernel(k) => {
                let at = format!("instruction {i} (kernel `{}`)", k.name);
                if k.n_par > k.domain.len() || k.output.extents[..] != k.domain[..k.n_par.min(k.domain.len())] {
                    return Err(format!(
                        "{at}: output extents {:?}, parallel domain {:?}",
                        k.output.extents,
                        &k.domain[..k.n_par.min(k.domain.len())]
                    ));
                }
                for v in k.inputs.iter().chain([&k.output]) {
                    in_bounds(v, &at)?;
                }
                let mut bad = None;
                let mut check = |e: &Expr, vars: usize, acc: bool| {
                    e.visit(&mut |x| match x {
                        Expr::Var(d) if *d >= vars => bad = Some(format!("variable i{d} outside {vars} dims")),
                        Expr::Acc if !acc => bad = Some("`Acc` outside a finalizer".to_string()),
                        Expr::Load { operand, index, .. } => match k.inputs.get(*operand) {
                            None => bad = Some(format!("load of operand {operand} of {}", k.inputs.len())),
                            Some(v) if v.extents.len() != index.len() => {
                                bad = Some(format!(
                                    "load of in{operand} with {} indices for {} dims",
                                    index.len(),
                                    v.extents.len()
                                ))
                            }
                            _ => {}
                        },
                        _ => {}
                    });
                };
                check(&k.body, k.domain.len(), false);
                if let Some(f) = k.reduction.as_ref().and_then(|r| r.finalize.as_ref()) {
                    check(f, k.n_par, true);
                }
                if let Some(msg) = bad {
                    return Err(format!("{at}: {msg}"));
                }
            }
            Instr::Copy { dst, dst_offset, src, src_offset, bytes } => {
                let at = format!("instruction {i} (copy)");
                for (b, off) in [(dst, dst_offset), (src, src_offset)] {
                    let buf = buffer(*b, &at)?;
                    if off + bytes > buf.bytes {
                        return Err(format!("{at}: {bytes} bytes at {off} of {b}, which holds {}", buf.bytes));
                    }
                }
            }
            Instr::Assert { buffer: b, .. } => {
                buffer(*b, &format!("instruction {i} (assert)"))?;
            }
            Instr::TopK { input, output, axis, k, .. } => {
                let at = format!("instruction {i} (top_k)");
                let mut want = input.extents.clone();
                if *axis >= want.len() || *k > want[*axis] {
                    return Err(format!("{at}: k {k} on axis {axis} of extents {want:?}"));
                }
                want[*axis] = *k;
                if output.extents != want || output.dtype != crate::DType::I64 {
                    return Err(format!("{at}: output {} for input extents {:?}", output.dtype, input.extents));
                }
                in_bounds(input, &at)?;
                in_bounds(output, &at)?;
            }
        }
    }
    if !open.is_empty() {
        return Err(format!("{} blocks (cases or loops) are not closed", open.len()));
    }
    let used: HashSet<u32> = p
        .instrs
        .iter()
        .flat_map(|ins| {
            let (r, w) = ins.reads_writes();
            r.into_iter().chain(w)
        })
        .map(|b| b.0)
        .collect();
    for (i, b) in p.buffers.iter().enumerate() {
        if !used.contains(&(i as u32)) {
            continue;
        }
        if let (BufferKind::Activation, Some(off)) = (&b.kind, b.offset) {
            if off + b.bytes as u64 > p.arena_bytes {
                return Err(format!(
                    "buffer @{i} (`{}`) at {off} + {} bytes is outside the arena of {}",
                    b.name, b.bytes, p.arena_bytes
                ));
            }
        }
    }
    Ok(())
}
