//! Fusion.
//!
//! * [`fuse`] (HIR): decides which values are not materialized. An elementwise producer used
//!   once fuses into its elementwise or reduction consumer; a Conv/MatMul/Gemm fuses its
//!   elementwise epilogue (bias, activation, residual add, clip), also when several of the
//!   epilogue's ops read the product (a GELU); a Transpose fuses into the
//!   matrix product, elementwise op or reduction that reads it; a Slice into a Concat; a
//!   Gather by constant indices fuses into an elementwise consumer of its size. Marked values print as
//!   `fused` in the text form.
//! * [`fuse_lir`] (LIR): merges the kernels of marked values into their consumers, by
//!   composing compute definitions: a plain producer's body is substituted into the
//!   consumer's loads; a reduction producer takes the consumer's body as its finalizer.
//!   A pair that does not compose is left materialized, which is always correct.

use kiln_ir::lir::{BufferId, Expr, Instr, Kernel, Program, View};
use kiln_ir::{strides_of, DType, Graph, Op, ValueDef};

use crate::PassError;

fn elementwise_class(op: &Op) -> bool {
    op.is_elementwise() || matches!(op, Op::BatchNorm { .. })
}

/// A Gather whose indices are a constant.
fn const_gather(g: &Graph, n: &kiln_ir::Node) -> bool {
    matches!(n.op, Op::Gather { .. }) && g.const_of(n.inputs[1]).is_some()
}

fn complex(g: &Graph, op: &Op, inputs: &[kiln_ir::ValueId]) -> bool {
    match op {
        Op::Conv { .. } | Op::Gemm { .. } => true,
        Op::MatMul => inputs.iter().all(|&v| g.ty(v).rank() >= 2),
        _ => false,
    }
}

/// Marks values to fuse (see the module doc).
pub fn fuse(g: &mut Graph) -> Result<bool, PassError> {
    let uses = g.use_counts();
    let mut changed = false;
    for nid in g.order().to_vec() {
        let c = g.node(nid).clone();
        let c_out_shape = g.ty(c.outputs[0]).shape.clone();
        let mut took_complex = false;
        for (i, &v) in c.inputs.iter().enumerate() {
            if c.inputs[..i].contains(&v) || g.outputs.contains(&v) || uses.get(&v) != Some(&1) || g.is_fused(v) {
                continue;
            }
            let ValueDef::Node(pid, _) = g.value(v).def else {
                continue;
            };
            let p = g.node(pid).clone();
            if p.outputs.len() != 1 {
                continue;
            }
            let same_size = g.ty(v).numel() == kiln_ir::numel(&c_out_shape);
            let ok = if crate::quant::widened_i16(g, v) && crate::quant::int_product(g, &c) {
                // An integer product reads its i16 operand widened as it loads it.
                true
            } else if elementwise_class(&p.op) {
                // (Not into the widening of an i16 operand: the i16 value is what an integer
                // product reads.)
                let widening = c.outputs.iter().any(|&o| crate::quant::widened_i16(g, o));
                let typed = product_of(g, v).is_none_or(|p| epilogue_type_ok(g, p, &c));
                !widening && typed && ((elementwise_class(&c.op) && same_size) || matches!(c.op, Op::Reduce { .. }))
            } else if complex(g, &p.op, &p.inputs) {
                elementwise_class(&c.op)
                    && g.ty(v).shape == c_out_shape
                    && !took_complex
                    && epilogue_type_ok(g, pid, &c)
            } else if const_gather(g, &p) {
                // A gather by constant indices (Resize's taps) is a load at a looked-up
                // position: an elementwise consumer of its size reads it in place instead of
                // a copy. (Not another gather: two index lookups per element measured slower
                // than two passes, 2.5 against 1.3 ms on a nearest ×2 resize.)
                elementwise_class(&c.op) && same_size
            } else if matches!(p.op, Op::Slice { .. }) {
                // A slice is a strided read: a Concat's piece copies from it in place (the
                // pieces of a reflect pad).
                matches!(c.op, Op::Concat { .. })
            } else if matches!(p.op, Op::Transpose { .. }) {
                // A transpose is a strided read: a matrix product takes its operand through
                // it (a transposed weight is then packed at compile time), an elementwise op
                // or reduction reads it in place.
                matches!(c.op, Op::MatMul | Op::Gemm { .. } | Op::Reduce { .. }) || elementwise_class(&c.op)
            } else {
                false
            };
            if ok {
                took_complex |= !elementwise_class(&p.op);
                g.set_fused(v, true);
                changed = true;
            }
        }
    }
    changed |= fuse_shared_epilogues(g);
    changed |= fuse_recomputed(g);
    changed |= crate::views::mark(g);
    Ok(changed)
}

/// Whether `v` is a matrix product's result, possibly through elementwise ops fused into it
/// (its bias): a value computed in a product's epilogue.
fn from_product(g: &Graph, v: kiln_ir::ValueId) -> bool {
    product_of(g, v).is_some()
}

/// The matrix product whose epilogue computes `v` ([`from_product`]).
fn product_of(g: &Graph, v: kiln_ir::ValueId) -> Option<kiln_ir::NodeId> {
    let ValueDef::Node(pid, _) = g.value(v).def else { return None };
    let p = g.node(pid);
    if complex(g, &p.op, &p.inputs) {
        return Some(pid);
    }
    if !elementwise_class(&p.op) {
        return None;
    }
    p.inputs.iter().find_map(|&u| if g.is_fused(u) { product_of(g, u) } else { None })
}

/// Whether an epilogue of product `pid` may end in node `last`: an f32 or i32 product's
/// epilogue (which the CPU backend runs on the sums in registers) ends in f32. It may end in
/// the conversion of a clipped f32 value to a narrow integer ([`narrowing`]: converted as it
/// is stored, the i16 operand of the next integer convolution written by the one before
/// instead of an f32 tensor and a conversion pass) after an integer product, or after a
/// convolution that the Winograd schedule takes (whose epilogue is in its output transform,
/// not in a product). Otherwise the epilogue of a quantize step of an f32 product is a kernel
/// of its own.
fn epilogue_type_ok(g: &Graph, pid: kiln_ir::NodeId, last: &kiln_ir::Node) -> bool {
    let p = g.node(pid);
    let (product, out) = (g.ty(p.outputs[0]).dtype, g.ty(last.outputs[0]).dtype);
    out == DType::F32
        || (narrowing(g, last) && (product == DType::I32 || crate::lower::winograd::takes(g, p)))
        || (!matches!(product, DType::F32 | DType::I32) && out == product)
}

/// `Cast(i16 | i8 | u8, x)` of an f32 `x` clipped within ±2^30 (maybe rounded after): the
/// conversion that the CPU backend's product epilogue stores (`within_i32` there).
fn narrowing(g: &Graph, n: &kiln_ir::Node) -> bool {
    use kiln_ir::UnaryOp;
    const LIMIT: f64 = (1u32 << 30) as f64;
    fn clipped(g: &Graph, v: kiln_ir::ValueId) -> bool {
        let ValueDef::Node(p, _) = g.value(v).def else { return false };
        let p = g.node(p);
        match p.op {
            Op::Unary(UnaryOp::Clip { lo, hi }) => lo >= -LIMIT && hi <= LIMIT,
            Op::Unary(UnaryOp::Round | UnaryOp::Floor | UnaryOp::Ceil) => clipped(g, p.inputs[0]),
            _ => false,
        }
    }
    matches!(n.op, Op::Cast { to: DType::I16 | DType::I8 | DType::U8, .. })
        && g.ty(n.inputs[0]).dtype == DType::F32
        && clipped(g, n.inputs[0])
}

/// A product's result that several elementwise ops read, all of them fused into one kernel
/// (a GELU, `x·½·(1 + erf(x/√2))`, reads x twice), fuses into that kernel's epilogue too: the
/// kernel's loads of it all become the accumulator, so nothing is computed twice. Not when
/// the kernel already takes another product's epilogue. Returns whether any value was marked.
fn fuse_shared_epilogues(g: &mut Graph) -> bool {
    let uses = g.use_counts();
    let mut readers: std::collections::HashMap<kiln_ir::ValueId, Vec<kiln_ir::NodeId>> = Default::default();
    for &n in g.order() {
        for &v in &g.node(n).inputs {
            readers.entry(v).or_default().push(n);
        }
    }
    // The node whose kernel a node's computation ends up in: its output's single reader, as
    // long as that output is fused.
    let root = |g: &Graph, mut n: kiln_ir::NodeId| loop {
        let out = g.node(n).outputs[0];
        match (g.is_fused(out), readers.get(&out).map(Vec::as_slice)) {
            (true, Some(&[r])) => n = r,
            _ => return n,
        }
    };
    let mut changed = false;
    for nid in g.order().to_vec() {
        let node = g.node(nid);
        if node.outputs.len() != 1 {
            continue;
        }
        let v = node.outputs[0];
        if g.outputs.contains(&v) || g.is_fused(v) || uses.get(&v).is_none_or(|&n| n < 2) || !from_product(g, v) {
            continue;
        }
        let shape = &g.ty(v).shape;
        let rs = &readers[&v];
        let same = |n: kiln_ir::NodeId| {
            let c = g.node(n);
            elementwise_class(&c.op) && c.outputs.len() == 1 && g.ty(c.outputs[0]).shape == *shape
        };
        if !rs.iter().all(|&n| same(n)) {
            continue;
        }
        let r = root(g, rs[0]);
        if rs.iter().any(|&n| root(g, n) != r) {
            continue;
        }
        // The epilogue must end in a type the product's kernel computes (a quantize step's
        // integer tail after a GELU is a kernel of its own).
        let product = product_of(g, v).expect("from a product");
        if !epilogue_type_ok(g, product, g.node(r)) {
            continue;
        }
        // The kernel of `r` must not take another product's epilogue already.
        let group: Vec<kiln_ir::NodeId> = g.order().iter().copied().filter(|&n| root(g, n) == r).collect();
        let other = group.iter().any(|&n| {
            g.node(n)
                .inputs
                .iter()
                .any(|&u| u != v && g.is_fused(u) && !group_member(g, u, &group) && from_product(g, u))
        });
        if !other {
            g.set_fused(v, true);
            changed = true;
        }
    }
    changed
}

/// Readers at most a value is recomputed for ([`fuse_recomputed`]).
const MAX_RECOMPUTE: usize = 3;

/// One arithmetic op of stored values, read by several elementwise ops or reductions of its
/// size (at most [`MAX_RECOMPUTE`]), is recomputed in each of their kernels instead of being
/// stored and read back: a normalization's `x − mean` feeds both the variance and the
/// output (InstanceNormalization 96×56×56 stored and reread 1.2 MB for it). Its operands
/// are stored values (none of them fused), so nothing longer than one op is ever repeated.
/// Returns whether any value was marked.
fn fuse_recomputed(g: &mut Graph) -> bool {
    use kiln_ir::{BinaryOp as B, UnaryOp as U};
    let uses = g.use_counts();
    let mut readers: std::collections::HashMap<kiln_ir::ValueId, Vec<kiln_ir::NodeId>> = Default::default();
    for &n in g.order() {
        for &v in &g.node(n).inputs {
            let r = readers.entry(v).or_default();
            if !r.contains(&n) {
                r.push(n);
            }
        }
    }
    let mut changed = false;
    for nid in g.order().to_vec() {
        let node = g.node(nid);
        let cheap = matches!(
            node.op,
            Op::Binary(B::Add | B::Sub | B::Mul | B::Div | B::Max | B::Min) | Op::Unary(U::Neg | U::Abs | U::Relu)
        );
        if !cheap || node.outputs.len() != 1 || node.inputs.iter().any(|&u| g.is_fused(u)) {
            continue;
        }
        let v = node.outputs[0];
        let n_uses = uses.get(&v).copied().unwrap_or(0);
        if g.outputs.contains(&v) || g.is_fused(v) || !(2..=MAX_RECOMPUTE).contains(&n_uses) {
            continue;
        }
        let n = g.ty(v).numel();
        let fits = |&r: &kiln_ir::NodeId| {
            let c = g.node(r);
            c.outputs.len() == 1
                && ((elementwise_class(&c.op) && g.ty(c.outputs[0]).numel() == n) || matches!(c.op, Op::Reduce { .. }))
        };
        if readers.get(&v).is_some_and(|rs| rs.iter().all(fits)) {
            g.set_fused(v, true);
            changed = true;
        }
    }
    changed
}

/// Whether `u` is computed by one of `group`'s nodes.
fn group_member(g: &Graph, u: kiln_ir::ValueId, group: &[kiln_ir::NodeId]) -> bool {
    matches!(g.value(u).def, ValueDef::Node(p, _) if group.contains(&p))
}

/// Operand indices referenced by loads in a kernel's body and finalizer.
fn used_operands(k: &Kernel) -> Vec<bool> {
    let mut used = vec![false; k.inputs.len()];
    let mut mark = |e: &Expr| {
        if let Expr::Load { operand, .. } = e {
            used[*operand] = true;
        }
    };
    k.body.visit(&mut mark);
    if let Some(f) = k.reduction.as_ref().and_then(|r| r.finalize.as_ref()) {
        f.visit(&mut mark);
    }
    used
}

/// Drops unused operands and merges duplicates, renumbering loads.
pub(crate) fn compact(k: &mut Kernel) {
    let used = used_operands(k);
    let mut remap = vec![usize::MAX; k.inputs.len()];
    let mut inputs: Vec<View> = Vec::new();
    for (i, v) in k.inputs.iter().enumerate() {
        if !used[i] {
            continue;
        }
        remap[i] = match inputs.iter().position(|w| w == v) {
            Some(j) => j,
            None => {
                inputs.push(v.clone());
                inputs.len() - 1
            }
        };
    }
    let mut f = |e: Expr| match e {
        Expr::Load { operand, index, pad } => Expr::Load { operand: remap[operand], index, pad },
        e => e,
    };
    k.body = std::mem::replace(&mut k.body, Expr::Acc).map(&mut f);
    if let Some(r) = &mut k.reduction {
        r.finalize = r.finalize.take().map(|e| e.map(&mut f));
    }
    k.inputs = inputs;
}

/// `e` with every load's operand index raised by `by` (operands put in front of its own).
pub(crate) fn shift_operands(e: Expr, by: usize) -> Expr {
    e.map(&mut |e| match e {
        Expr::Load { operand, index, pad } => Expr::Load { operand: operand + by, index, pad },
        e => e,
    })
}

/// The producer's parallel indices for a consumer load `index` through `view` of the
/// producer's dense output of extents `ext`.
fn producer_index(view: &View, index: &[Expr], ext: &[usize]) -> Vec<Expr> {
    let dense: Vec<i64> = strides_of(ext).into_iter().map(|s| s as i64).collect();
    let r = ext.len();
    if let Some(j) = permuted_index(view, index, ext, &dense) {
        return j;
    }
    // General case: linearize through the view, then unravel in the producer's layout.
    let mut lin = Expr::i64(view.offset);
    for (ix, &s) in index.iter().zip(&view.strides) {
        if s != 0 {
            lin = Expr::add(lin, Expr::mul(ix.clone(), Expr::i64(s)));
        }
    }
    (0..r)
        .map(|d| {
            let q = if dense[d] == 1 { lin.clone() } else { Expr::div(lin.clone(), Expr::i64(dense[d])) };
            if d == 0 {
                q
            } else {
                Expr::bin(kiln_ir::BinaryOp::Mod { fmod: true }, q, Expr::i64(ext[d] as i64))
            }
        })
        .collect()
}

/// Where the view reads each of the producer's dims (of more than one element) along one of
/// its own dims, at the producer's dense stride or its negative (a broadcast, the logical
/// order of a value the producer writes channels-last, a slice of it, reversed or not), the
/// producer's indices are the consumer's, permuted and offset: no division.
pub(crate) fn permuted_index(view: &View, index: &[Expr], ext: &[usize], dense: &[i64]) -> Option<Vec<Expr>> {
    // The view's offset as a position in the producer's output: one digit per dim.
    let mut digit = vec![0i64; ext.len()];
    let mut rest = view.offset;
    for p in 0..ext.len() {
        digit[p] = rest / dense[p];
        rest %= dense[p];
    }
    let beyond = ext.first().is_some_and(|&e| digit[0] >= e as i64) || (ext.is_empty() && rest != 0);
    if view.offset < 0 || beyond {
        return None;
    }
    let mut j: Vec<Option<Expr>> = vec![None; ext.len()];
    for (d, (&s, &e)) in view.strides.iter().zip(&view.extents).enumerate() {
        if s == 0 || e == 1 {
            continue;
        }
        let last = e as i64 - 1;
        let fits = |p: usize| {
            j[p].is_none()
                && dense[p] == s.abs()
                && ext[p] > 1
                && if s > 0 { digit[p] + last < ext[p] as i64 } else { digit[p] >= last }
        };
        let p = (0..ext.len()).find(|&p| fits(p))?;
        j[p] = Some(match (s > 0, digit[p]) {
            (true, 0) => index[d].clone(),
            (true, c) => Expr::add(index[d].clone(), Expr::i64(c)),
            (false, c) => Expr::sub(Expr::i64(c), index[d].clone()),
        });
    }
    Some(j.into_iter().zip(digit).map(|(i, c)| i.unwrap_or_else(|| Expr::i64(c))).collect())
}

/// Substitutes a plain producer (no reduction) into the consumer's loads of buffer `b`.
pub(crate) fn substitute(prod: &Kernel, cons: &Kernel, b: BufferId) -> Option<Kernel> {
    let mut ok = true;
    let check = |e: &Expr, ok: &mut bool| {
        if let Expr::Load { operand, pad, .. } = e {
            if cons.inputs[*operand].buffer == b && pad.is_some() {
                *ok = false;
            }
        }
    };
    cons.body.visit(&mut |e| check(e, &mut ok));
    if let Some(f) = cons.reduction.as_ref().and_then(|r| r.finalize.as_ref()) {
        f.visit(&mut |e| check(e, &mut ok));
    }
    if !ok {
        return None;
    }
    let base = cons.inputs.len();
    let ext = prod.domain.clone();
    let body = shift_operands(prod.body.clone(), base);
    let mut rewrite = |e: Expr| match e {
        Expr::Load { operand, index, pad: None } if cons.inputs[operand].buffer == b => {
            let j = producer_index(&cons.inputs[operand], &index, &ext);
            body.clone().map(&mut |x| {
                if let Expr::Var(d) = x {
                    j[d].clone()
                } else {
                    x
                }
            })
        }
        e => e,
    };
    let mut k = cons.clone();
    k.body = std::mem::replace(&mut k.body, Expr::Acc).map(&mut rewrite);
    if let Some(r) = &mut k.reduction {
        r.finalize = r.finalize.take().map(|e| e.map(&mut rewrite));
    }
    k.inputs.extend(prod.inputs.iter().cloned());
    k.name_as_fused(prod, cons);
    compact(&mut k);
    Some(k)
}

/// Makes an elementwise consumer the finalizer of a reduction producer.
fn epilogue(prod: &Kernel, cons: &Kernel, b: BufferId) -> Option<Kernel> {
    if cons.reduction.is_some() {
        return None;
    }
    // A producer whose loops were ordered by its (channels-last) output: the elementwise
    // consumer takes the same loop order, found from its load of the producer's value.
    let mut reordered;
    let mut cons = cons;
    // A producer over merged dims (a row-major 1×1 convolution's `[n, c, h·w]`): the
    // consumer's dims merged the same way.
    if cons.domain[..] != prod.domain[..prod.n_par] {
        if let Some(m) = crate::coalesce::coalesce_to(cons, &prod.domain[..prod.n_par]) {
            reordered = m;
            cons = &reordered;
        }
    }
    if cons.domain[..] != prod.domain[..prod.n_par] {
        let mut perm = None;
        cons.body.visit(&mut |e| {
            if let Expr::Load { operand, index, .. } = e {
                let v = &cons.inputs[*operand];
                if v.buffer == b && index.iter().enumerate().all(|(d, ix)| *ix == Expr::Var(d)) {
                    perm = crate::lower::stride_order(&v.strides);
                }
            }
        });
        reordered = cons.clone();
        crate::lower::permute_parallel(&mut reordered, &perm?);
        cons = &reordered;
        if cons.domain[..] != prod.domain[..prod.n_par] {
            return None;
        }
    }
    let mut ok = true;
    cons.body.visit(&mut |e| {
        if let Expr::Load { operand, index, pad } = e {
            let v = &cons.inputs[*operand];
            if v.buffer == b {
                // Index `d` is variable `d`, or 0 along an extent of 1 (what composing
                // elementwise kernels writes there).
                let identity = index
                    .iter()
                    .enumerate()
                    .all(|(d, ix)| *ix == Expr::Var(d) || (cons.domain.get(d) == Some(&1) && *ix == Expr::i64(0)));
                ok &= identity
                    && pad.is_none()
                    && v.extents == prod.output.extents
                    && v.strides == prod.output.strides
                    && v.offset == prod.output.offset;
            }
        }
    });
    if !ok {
        return None;
    }
    let red = prod.reduction.as_ref()?;
    let acc = red.finalize.clone().unwrap_or(Expr::Acc);
    let base = prod.inputs.len();
    let fin = cons.body.clone().map(&mut |e| match e {
        Expr::Load { operand, .. } if cons.inputs[operand].buffer == b => acc.clone(),
        Expr::Load { operand, index, pad } => Expr::Load { operand: operand + base, index, pad },
        e => e,
    });
    let mut k = prod.clone();
    k.inputs.extend(cons.inputs.iter().cloned());
    k.reduction.as_mut().expect("reduction").finalize = Some(fin);
    k.output = cons.output.clone();
    k.name_as_fused(prod, cons);
    compact(&mut k);
    Some(k)
}

/// Merges kernels whose output buffer is marked fused into their single consumer, until
/// none is left (a product read by several ops merges once those have merged into one
/// kernel). Returns the number of merges.
pub fn fuse_lir(p: &mut Program) -> usize {
    let mut merged = 0;
    loop {
        let n = fuse_lir_pass(p);
        merged += n;
        if n == 0 {
            return merged;
        }
    }
}

/// The instructions other than `i` that read or write buffer `b`, in order.
pub(crate) fn touching(p: &Program, i: usize, b: BufferId) -> Vec<usize> {
    (0..p.instrs.len())
        .filter(|&j| {
            let (r, w) = p.instrs[j].reads_writes();
            j != i && (r.contains(&b) || w.contains(&b))
        })
        .collect()
}

/// One pass of [`fuse_lir`] over the program.
fn fuse_lir_pass(p: &mut Program) -> usize {
    let mut merged = 0;
    let mut i = 0;
    while i < p.instrs.len() {
        let Instr::Kernel(prod) = &p.instrs[i] else {
            i += 1;
            continue;
        };
        let b = prod.output.buffer;
        let buf = p.buffer(b);
        let whole = prod.output.is_dense() && prod.output.numel() * prod.output.dtype.size() == buf.bytes;
        let touching = touching(p, i, b);
        let reads_self = prod.inputs.iter().any(|v| v.buffer == b);
        if buf.fused && crate::views::is_plain_copy(prod, buf.bytes) {
            // Left to `forward_copies`, which runs on the fused program.
            i += 1;
            continue;
        }
        // Its readers, all after it: one, or several for a plain producer recomputed in each
        // (`fuse_recomputed`), every one composed or none.
        let targets = match touching[..] {
            [j] if buf.fused && whole && !reads_self && j > i => vec![j],
            [_, _, ..] if buf.fused && whole && !reads_self && prod.reduction.is_none() && touching[0] > i => {
                touching.clone()
            }
            _ => Vec::new(),
        };
        let new: Option<Vec<Kernel>> = (!targets.is_empty())
            .then(|| {
                targets
                    .iter()
                    .map(|&j| match &p.instrs[j] {
                        Instr::Kernel(cons) if cons.output.buffer != b => {
                            if prod.reduction.is_none() {
                                substitute(prod, cons, b)
                            } else {
                                epilogue(prod, cons, b)
                            }
                        }
                        _ => None,
                    })
                    .collect()
            })
            .flatten();
        match new {
            Some(ks) => {
                for (&j, k) in targets.iter().zip(ks) {
                    p.instrs[j] = Instr::Kernel(k);
                }
                p.instrs.remove(i);
                merged += 1;
            }
            None => i += 1,
        }
    }
    merged
}

/// Replaces loads of a one-element constant (a scalar broadcast: every stride 0) by the
/// constant itself, so that code generation sees the value (`x^3`, a division by a known
/// scale) and the kernel has one operand less. Returns the number of loads replaced.
pub fn inline_scalar_constants(p: &mut Program) -> usize {
    let mut replaced = 0;
    for i in 0..p.instrs.len() {
        let Instr::Kernel(k) = &p.instrs[i] else { continue };
        let mut values: Vec<Option<kiln_ir::lir::Scalar>> = vec![None; k.inputs.len()];
        for (o, v) in k.inputs.iter().enumerate() {
            let kiln_ir::lir::BufferKind::Constant(t) = &p.buffer(v.buffer).kind else { continue };
            if v.strides.iter().any(|&s| s != 0) || !v.dtype.is_compute() || v.dtype != t.dtype() {
                continue;
            }
            let at = v.offset as usize;
            if at >= t.numel() || t.numel() > 16 {
                continue;
            }
            use kiln_ir::lir::Scalar;
            values[o] = Some(match t.dtype() {
                kiln_ir::DType::I64 => Scalar::I64(t.to_i64_vec()[at]),
                kiln_ir::DType::I32 => Scalar::I32(t.to_i64_vec()[at] as i32),
                kiln_ir::DType::Bool => Scalar::Bool(t.to_i64_vec()[at] != 0),
                kiln_ir::DType::F64 => Scalar::F64(t.to_f64_vec()[at]),
                kiln_ir::DType::F32 => Scalar::F32(t.to_f64_vec()[at] as f32),
                _ => continue,
            });
        }
        if values.iter().all(Option::is_none) {
            continue;
        }
        let Instr::Kernel(k) = &mut p.instrs[i] else { unreachable!() };
        let mut count = 0;
        let mut inline = |e: Expr| match e {
            Expr::Load { operand, pad: None, .. } if values[operand].is_some() => {
                count += 1;
                Expr::Const(values[operand].expect("checked"))
            }
            e => e,
        };
        k.body = std::mem::replace(&mut k.body, Expr::Acc).map(&mut inline);
        if let Some(r) = &mut k.reduction {
            r.finalize = r.finalize.take().map(|e| e.map(&mut inline));
        }
        if count > 0 {
            compact(k);
            replaced += count;
        }
    }
    replaced
}

/// Stores a constant operand so that the kernel's innermost loop reads it contiguously,
/// when that loop walks one of its dims with a stride other than 1: a depthwise
/// convolution's weights `[C, 1, kh, kw]` read along C in a channels-last loop become
/// `[kh, kw, 1, C]`. Only operands read whole, through plain variable indices, by one kernel
/// (or copied for it) are moved. Returns the number of operands moved.
pub fn relayout_constants(p: &mut Program) -> usize {
    let mut moved = 0;
    for i in 0..p.instrs.len() {
        let Instr::Kernel(k) = &p.instrs[i] else { continue };
        if k.n_par == 0 {
            continue;
        }
        let inner = k.n_par - 1;
        for o in 0..k.inputs.len() {
            let Instr::Kernel(k) = &p.instrs[i] else { unreachable!() };
            let v = &k.inputs[o];
            let kiln_ir::lir::BufferKind::Constant(t) = &p.buffer(v.buffer).kind else { continue };
            // Every load of the operand: the same list of plain variables, no padding.
            let mut index: Option<Option<Vec<Expr>>> = None;
            let mut note = |e: &Expr| {
                if let Expr::Load { operand, index: ix, pad } = e {
                    if *operand == o {
                        let plain = pad.is_none() && ix.iter().all(|x| matches!(x, Expr::Var(_)));
                        let this = plain.then(|| ix.clone());
                        index = Some(match index.take() {
                            None => this,
                            Some(prev) if prev == this => prev,
                            Some(_) => None,
                        });
                    }
                }
            };
            k.body.visit(&mut note);
            if let Some(f) = k.reduction.as_ref().and_then(|r| r.finalize.as_ref()) {
                f.visit(&mut note);
            }
            let Some(Some(index)) = index else { continue };
            let Some(pos) = index.iter().position(|x| *x == Expr::Var(inner)) else { continue };
            if v.strides[pos] == 1 || v.extents[pos] == 1 || v.offset != 0 || v.dtype != t.dtype() {
                continue;
            }
            // The view must be the whole tensor in some dim order: dims by decreasing stride
            // (extent-1 dims aside) have dense strides.
            let numel: usize = v.extents.iter().product();
            if numel != t.numel() {
                continue;
            }
            let mut order: Vec<usize> = (0..v.extents.len()).filter(|&d| v.extents[d] > 1).collect();
            order.sort_by_key(|&d| std::cmp::Reverse(v.strides[d]));
            let mut expect = 1i64;
            let dense = order.iter().rev().all(|&d| {
                let ok = v.strides[d] == expect;
                expect *= v.extents[d] as i64;
                ok
            });
            if !dense {
                continue;
            }
            // New physical order: the others as they were, the inner loop's dim last.
            order.retain(|&d| d != pos);
            order.push(pos);
            let mut strides = vec![0i64; v.extents.len()];
            let mut s = 1i64;
            for &d in order.iter().rev() {
                strides[d] = s;
                s *= v.extents[d] as i64;
            }
            let size = v.dtype.size();
            let mut data = vec![0u8; t.data.len()];
            let mut idx = vec![0usize; v.extents.len()];
            for _ in 0..numel {
                let (mut from, mut to) = (0i64, 0i64);
                for d in 0..idx.len() {
                    from += idx[d] as i64 * v.strides[d];
                    to += idx[d] as i64 * strides[d];
                }
                let (from, to) = (from as usize * size, to as usize * size);
                data[to..to + size].copy_from_slice(&t.data[from..from + size]);
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < v.extents[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            let tensor = kiln_ir::Tensor::from_bytes(t.ty.clone(), data.into()).expect("same size");
            let bid = v.buffer;
            let uses = p.instrs.iter().filter(|ins| ins.reads_writes().0.contains(&bid)).count();
            let shared = k.inputs.iter().filter(|w| w.buffer == bid).count() > 1;
            let name = format!("{}.inner_last", p.buffer(bid).name);
            let bytes = p.buffer(bid).bytes;
            let new_id = if uses == 1 && !shared {
                let buf = &mut p.buffers[bid.0 as usize];
                buf.kind = kiln_ir::lir::BufferKind::Constant(tensor);
                buf.name = name;
                bid
            } else {
                p.add_buffer(kiln_ir::lir::BufferKind::Constant(tensor), bytes, name)
            };
            let Instr::Kernel(k) = &mut p.instrs[i] else { unreachable!() };
            k.inputs[o].buffer = new_id;
            k.inputs[o].strides = strides;
            moved += 1;
        }
    }
    moved
}
