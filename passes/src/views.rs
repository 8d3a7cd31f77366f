//! Copies that only move data, read in place by their readers.
//!
//! A Transpose, a Slice or a Gather at one constant index lowers to a kernel whose body is a
//! single load at the output's own indices (or at a constant): a strided view of its input,
//! copied. Where every reader of the copy (through Reshapes, which are views of the same
//! bytes) is a kernel that can read a strided operand, the copy is not made: each reader
//! reads the copy's source through the composed view. A multi-head attention's split of the
//! fused Q/K/V projection (`view → transpose → select ×3 → view → transpose`) is eight copies
//! per layer in ViT; with them gone the products read the projection where it lies.
//!
//! * [`mark`] (HIR): marks such values fused.
//! * [`forward_copies`] (LIR, after `fuse-lir`): rewrites the readers' views of such a
//!   copy's output into views of its source (or makes its source's producer write the
//!   output), or leaves the copy (always correct).

use kiln_ir::lir::{BufferId, BufferKind, Expr, Instr, Kernel, Program, Scalar, View};
use kiln_ir::strides_of;

use crate::fuse::{permuted_index, substitute, touching};
use kiln_ir::{Graph, NodeId, Op, ValueDef, ValueId};

/// Whether `n` lowers to a plain copy through a view: a Transpose, a Slice, or a Gather whose
/// index is one constant.
fn view_copy(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    match node.op {
        Op::Transpose { .. } | Op::Slice { .. } => true,
        Op::Gather { .. } => g.const_of(node.inputs[1]).is_some() && g.ty(node.inputs[1]).numel() == 1,
        _ => false,
    }
}

/// Whether a reader of a strided view may take it in place of a dense copy: a data-moving op,
/// an elementwise op, a reduction, a matrix product or a Concat.
fn reads_views(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    view_copy(g, n)
        || node.op.is_elementwise()
        || matches!(node.op, Op::Reduce { .. } | Op::Gemm { .. } | Op::Concat { .. })
        || (matches!(node.op, Op::MatMul) && node.inputs.iter().all(|&v| g.ty(v).rank() >= 2))
}

/// The nodes that read `v`, through Reshapes (views of the same bytes); `None` when a graph
/// output is among the values on the way.
fn readers(
    g: &Graph,
    users: &std::collections::HashMap<ValueId, Vec<(NodeId, usize)>>,
    v: ValueId,
) -> Option<Vec<NodeId>> {
    if g.outputs.contains(&v) {
        return None;
    }
    let mut out = Vec::new();
    for &(n, _) in users.get(&v).map(|u| &u[..]).unwrap_or(&[]) {
        if matches!(g.node(n).op, Op::Reshape { .. }) {
            out.extend(readers(g, users, g.node(n).outputs[0])?);
        } else {
            out.push(n);
        }
    }
    Some(out)
}

/// Whether `n` is a Gather by constant indices along an axis other than the last: a copy
/// that looks up one index per row, not per element.
fn row_gather(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    matches!(node.op, Op::Gather { axis } if axis + 1 < g.ty(node.inputs[0]).rank())
        && g.const_of(node.inputs[1]).is_some()
}

/// Marks the output of every view copy whose readers all read views (see the module doc),
/// and of every row gather (a reflect pad's rows) whose readers are all slices: each slice
/// then looks the rows up itself (one pass for the pad, not two). Returns whether any value
/// was marked.
pub fn mark(g: &mut Graph) -> bool {
    let users = g.users();
    let mut changed = false;
    for n in g.order().to_vec() {
        let v = g.node(n).outputs[0];
        if g.is_fused(v) || !matches!(g.value(v).def, ValueDef::Node(..)) {
            continue;
        }
        let Some(rs) = readers(g, &users, v) else { continue };
        let slices = || rs.iter().all(|&r| matches!(g.node(r).op, Op::Slice { .. }));
        let ok = if view_copy(g, n) { rs.iter().all(|&r| reads_views(g, r)) } else { row_gather(g, n) && slices() };
        if !rs.is_empty() && ok {
            g.set_fused(v, true);
            changed = true;
        }
    }
    changed
}

/// The view a copy kernel reads and, per index of it, the copy's variable or a constant:
/// `None` unless the body is one load at variables and constants and the copy writes its
/// whole output buffer once, in some order of its dims.
fn plain_copy(k: &Kernel, bytes: usize) -> Option<(&View, Vec<Result<usize, i64>>)> {
    let Expr::Load { operand: 0, index, pad: None } = &k.body else { return None };
    if k.reduction.is_some() || k.n_par != k.domain.len() || k.output.offset != 0 {
        return None;
    }
    if k.output.extents != k.domain || k.output.numel() * k.output.dtype.size() != bytes {
        return None;
    }
    // The output's strides are the dense strides of its dims in some order.
    let mut dims: Vec<usize> = (0..k.domain.len()).filter(|&d| k.domain[d] > 1).collect();
    dims.sort_by_key(|&d| std::cmp::Reverse(k.output.strides[d]));
    let mut s = 1i64;
    for &d in dims.iter().rev() {
        if k.output.strides[d] != s {
            return None;
        }
        s *= k.domain[d] as i64;
    }
    let at = index
        .iter()
        .map(|ix| match ix {
            Expr::Var(d) => Some(Ok(*d)),
            Expr::Const(Scalar::I64(c)) => Some(Err(*c)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((&k.inputs[0], at))
}

/// Whether `k` copies one load of its first operand at any indices (a gather by looked-up
/// indices) to the whole of a dense output of `bytes` bytes.
pub fn is_gather_copy(k: &Kernel, bytes: usize) -> bool {
    matches!(k.body, Expr::Load { operand: 0, pad: None, .. })
        && k.reduction.is_none()
        && k.n_par == k.domain.len()
        && k.output.is_dense()
        && k.output.extents == k.domain
        && k.output.numel() * k.output.dtype.size() == bytes
}

/// Whether `k` is a plain copy (see [`plain_copy`]) of a buffer of `bytes` bytes.
pub fn is_plain_copy(k: &Kernel, bytes: usize) -> bool {
    plain_copy(k, bytes).is_some()
}

/// A copy's index map: per variable, its extent and its strides in the buffer it writes and
/// in the buffer it reads, and the offset in the latter of the constant indices.
struct IndexMap {
    extents: Vec<usize>,
    out: Vec<i64>,
    src: Vec<i64>,
    src_offset: i64,
}

impl IndexMap {
    fn of(copy: &Kernel, src: &View, at: &[Result<usize, i64>]) -> IndexMap {
        let mut m = IndexMap {
            extents: copy.domain.clone(),
            out: copy.output.strides.clone(),
            src: vec![0; copy.domain.len()],
            src_offset: src.offset,
        };
        for (e, a) in at.iter().enumerate() {
            match a {
                Ok(d) => m.src[*d] += src.strides[e],
                Err(c) => m.src_offset += c * src.strides[e],
            }
        }
        m
    }

    /// The same map read the other way, when the copy reads every element of its source once
    /// (a permutation of a dense layout, no constant index).
    fn inverse(&self, numel: usize) -> Option<IndexMap> {
        let mut vars: Vec<usize> = (0..self.extents.len()).filter(|&d| self.extents[d] > 1).collect();
        vars.sort_by_key(|&d| std::cmp::Reverse(self.src[d]));
        let mut s = 1i64;
        for &d in vars.iter().rev() {
            if self.src[d] != s {
                return None;
            }
            s *= self.extents[d] as i64;
        }
        (self.src_offset == 0 && s as usize == numel).then(|| IndexMap {
            extents: self.extents.clone(),
            out: self.src.clone(),
            src: self.out.clone(),
            src_offset: 0,
        })
    }

    /// `view` (of the buffer the copy writes) as a view of `src`'s buffer, or `None` when
    /// some dim of it does not stay within one of the copy's variables.
    fn compose(&self, src: &View, view: &View) -> Option<View> {
        // The view's offset as a position in the copy's output: one digit per variable.
        let mut order: Vec<usize> = (0..self.extents.len()).filter(|&d| self.extents[d] > 1).collect();
        order.sort_by_key(|&d| std::cmp::Reverse(self.out[d]));
        let mut digit = vec![0i64; self.extents.len()];
        let mut rest = view.offset;
        for &d in &order {
            digit[d] = rest / self.out[d];
            rest %= self.out[d];
        }
        if rest != 0 || view.offset < 0 {
            return None;
        }
        let offset = self.src_offset + (0..self.extents.len()).map(|d| digit[d] * self.src[d]).sum::<i64>();
        // Each dim of the view steps along the outermost variable whose output stride
        // divides its own; the view's furthest position along each variable must stay inside
        // it (several dims of a reshaped reader may share one).
        let mut reach = digit;
        let mut strides = Vec::with_capacity(view.extents.len());
        for (&s, &e) in view.strides.iter().zip(&view.extents) {
            if s == 0 || e == 1 {
                strides.push(0);
                continue;
            }
            let d = order.iter().copied().find(|&d| s > 0 && s % self.out[d] == 0)?;
            let step = s / self.out[d];
            reach[d] += step * (e as i64 - 1);
            strides.push(step * self.src[d]);
        }
        if (0..self.extents.len()).any(|d| reach[d] >= self.extents[d] as i64) {
            return None;
        }
        Some(View { buffer: src.buffer, dtype: src.dtype, offset, extents: view.extents.clone(), strides })
    }
}

/// `prod`, which writes the whole of the source of `copy` and is its only other user, writing
/// straight into the copy's output (the product of attention's heads, written in the
/// `(token, head, dim)` order that the output projection reads), or `None` when the copy
/// does not read its source once through or the result would not keep the producer's
/// innermost stores contiguous.
pub fn backward(copy: &Kernel, bytes: usize, prod: &Kernel) -> Option<Kernel> {
    let (src, at) = plain_copy(copy, bytes)?;
    let inv = IndexMap::of(copy, src, &at).inverse(copy.output.numel())?;
    let out = inv.compose(&copy.output, &prod.output)?;
    let inner = |v: &View| v.strides.iter().zip(&v.extents).rev().find(|(_, &e)| e > 1).map(|(&s, _)| s);
    if inner(&prod.output) == Some(1) && inner(&out) != Some(1) {
        return None;
    }
    let mut k = prod.clone();
    k.output = out;
    k.name_as_fused(prod, copy);
    Some(k)
}

/// `cons` reading the source of `copy` (which writes buffer `b` of `bytes` bytes) in place of
/// `b`, or `None` when one of its views of `b` does not compose or is read with padding.
pub fn forward(copy: &Kernel, bytes: usize, cons: &Kernel, b: BufferId) -> Option<Kernel> {
    let (src, at) = plain_copy(copy, bytes)?;
    let mut padded = false;
    let mut check = |e: &Expr| {
        if let Expr::Load { operand, pad: Some(_), .. } = e {
            padded |= cons.inputs[*operand].buffer == b;
        }
    };
    cons.body.visit(&mut check);
    if let Some(f) = cons.reduction.as_ref().and_then(|r| r.finalize.as_ref()) {
        f.visit(&mut check);
    }
    if padded {
        return None;
    }
    let map = IndexMap::of(copy, src, &at);
    let mut k = cons.clone();
    for v in &mut k.inputs {
        if v.buffer == b {
            *v = map.compose(src, v)?;
        }
    }
    k.name_as_fused(copy, cons);
    Some(k)
}

/// Lets the readers of each copy marked fused that only moves data (see the module doc)
/// read its source in place, where they all can and the most bytes live at once does not
/// grow. Runs after [`crate::fuse::fuse_lir`], on the program whose liveness is nearly the final one.
/// Returns the number of copies removed.
pub fn forward_copies(p: &mut Program) -> usize {
    let mut removed = 0;
    let mut i = 0;
    while i < p.instrs.len() {
        let Instr::Kernel(copy) = &p.instrs[i] else {
            i += 1;
            continue;
        };
        let b = copy.output.buffer;
        let (fused, bytes) = (p.buffer(b).fused, p.buffer(b).bytes);
        let reads_self = copy.inputs.iter().any(|v| v.buffer == b);
        let plain = is_plain_copy(copy, bytes);
        if !fused || reads_self || !(plain || is_gather_copy(copy, bytes)) {
            i += 1;
            continue;
        }
        let touching = touching(p, i, b);
        let readers = if plain { forward_copy(p, i, &touching) } else { gather_into(p, i, &touching) };
        if let Some(readers) = readers {
            for (j, k) in readers {
                p.instrs[j] = Instr::Kernel(k);
            }
        } else if let Some((j, k)) = backward_copy(p, i) {
            p.instrs[j] = Instr::Kernel(k);
        } else {
            i += 1;
            continue;
        }
        p.instrs.remove(i);
        removed += 1;
    }
    removed
}

/// The readers of gather `i` (the instructions `touching` its output), each looking the
/// indices up itself; `None` unless every reader comes after it, is a kernel that only reads
/// the gather's output, at indices that permute the gather's (see [`permuted_index`]), and
/// nothing writes the gather's operands meanwhile.
fn gather_into(p: &Program, i: usize, touching: &[usize]) -> Option<Vec<(usize, Kernel)>> {
    let Instr::Kernel(gather) = &p.instrs[i] else { return None };
    let b = gather.output.buffer;
    let last = *touching.iter().max()?;
    if touching[0] < i || p.buffer(b).kind != BufferKind::Activation {
        return None;
    }
    let sources: Vec<BufferId> = gather.inputs.iter().map(|v| v.buffer).collect();
    if (i + 1..=last).any(|j| p.instrs[j].reads_writes().1.iter().any(|w| sources.contains(w))) {
        return None;
    }
    let dense: Vec<i64> = strides_of(&gather.domain).into_iter().map(|s| s as i64).collect();
    touching
        .iter()
        .map(|&j| match &p.instrs[j] {
            Instr::Kernel(cons) if cons.output.buffer != b => {
                let mut permuted = true;
                cons.body.visit(&mut |e| {
                    if let Expr::Load { operand, index, .. } = e {
                        let v = &cons.inputs[*operand];
                        permuted &= v.buffer != b || permuted_index(v, index, &gather.domain, &dense).is_some();
                    }
                });
                permuted.then(|| substitute(gather, cons, b)).flatten().map(|k| (j, k))
            }
            _ => None,
        })
        .collect()
}

/// The one kernel writing the source of copy `i`, made to write the copy's output instead;
/// `None` unless the source is an activation that only that kernel (before the copy, not
/// reading it) and the copy touch, and nothing touches the copy's output in between.
fn backward_copy(p: &Program, i: usize) -> Option<(usize, Kernel)> {
    let Instr::Kernel(copy) = &p.instrs[i] else { return None };
    let (b, src) = (copy.output.buffer, copy.inputs[0].buffer);
    if p.buffer(src).kind != BufferKind::Activation {
        return None;
    }
    let touches = |j: usize, x: BufferId| {
        let (r, w) = p.instrs[j].reads_writes();
        r.contains(&x) || w.contains(&x)
    };
    let writers: Vec<usize> = (0..p.instrs.len()).filter(|&j| j != i && touches(j, src)).collect();
    let [j] = writers[..] else { return None };
    let Instr::Kernel(prod) = &p.instrs[j] else { return None };
    if j > i || prod.output.buffer != src || prod.inputs.iter().any(|v| v.buffer == src || v.buffer == b) {
        return None;
    }
    if (j + 1..i).any(|m| touches(m, b)) {
        return None;
    }
    backward(copy, p.buffer(b).bytes, prod).map(|k| (j, k))
}

/// The readers of copy `i` (the instructions `touching` its output), each reading the copy's
/// source in place; `None` unless every reader comes after it, is a kernel that only reads
/// the copy's output, and takes the composed view, and nothing writes the source meanwhile.
fn forward_copy(p: &Program, i: usize, touching: &[usize]) -> Option<Vec<(usize, Kernel)>> {
    let Instr::Kernel(copy) = &p.instrs[i] else { return None };
    let (b, src) = (copy.output.buffer, copy.inputs[0].buffer);
    let last = *touching.iter().max()?;
    if touching[0] < i || p.buffer(b).kind != BufferKind::Activation {
        return None;
    }
    if (i + 1..=last).any(|j| p.instrs[j].reads_writes().1.contains(&src)) || raises_peak(p, src, b, last) {
        return None;
    }
    touching
        .iter()
        .map(|&j| match &p.instrs[j] {
            Instr::Kernel(cons) if cons.output.buffer != b => forward(copy, p.buffer(b).bytes, cons, b).map(|k| (j, k)),
            _ => None,
        })
        .collect()
}

/// Whether reading activation `src` in place of its copy `b` up to instruction `last` (which
/// keeps `src` live that long) would raise the most bytes live at once. ViT's Q/K/V
/// projection (three times the size of V) kept for V's product would have raised its arena by
/// 13%; its copy of V stays.
fn raises_peak(p: &Program, src: BufferId, b: BufferId, last: usize) -> bool {
    if p.buffer(src).kind != BufferKind::Activation {
        return false;
    }
    let live = crate::memory::intervals(p);
    let src_end = live[&src].1;
    if src_end >= last {
        return false;
    }
    let mut bytes = vec![0i64; p.instrs.len() + 1];
    for (&buf, &(s, e)) in &live {
        if p.buffer(buf).kind == BufferKind::Activation {
            bytes[s] += p.buffer(buf).bytes as i64;
            bytes[e + 1] -= p.buffer(buf).bytes as i64;
        }
    }
    let mut at = 0;
    let profile: Vec<i64> = bytes
        .iter()
        .map(|d| {
            at += d;
            at
        })
        .collect();
    let peak = *profile.iter().max().unwrap_or(&0);
    let change = p.buffer(src).bytes as i64 - p.buffer(b).bytes as i64;
    profile[src_end + 1..=last].iter().any(|&x| x + change > peak)
}
