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
//! * [`forward`] (LIR): rewrites one reader's views of the copy's output into views of its
//!   source, or refuses (the copy then stays: always correct).

use kiln_ir::lir::{BufferId, Expr, Kernel, Scalar, View};
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
    k.name = format!("{}+{}", prod.name, copy.name);
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
    k.name = format!("{}+{}", copy.name, cons.name);
    Some(k)
}
