//! ONNX sequences and optionals, which exist only in the importer: a sequence is a list of
//! tensor values whose length is known at compile time ([`Slot::Sequence`]), an optional is
//! present or absent at compile time ([`Slot::Optional`]). Their ops rearrange those lists
//! (positions must fold to constants) or build ordinary HIR values from them (Slices for
//! `SplitToSequence`, a Concat for `ConcatFromSequence`); none becomes a HIR op of its own.
//! `SequenceMap` is in `control` (it instantiates a subgraph); `If` and `Loop` carry
//! sequences and optionals like any other value.

use kiln_ir::{DType, Op, Tensor, ValueId};

use super::{Importer, Slot};
use crate::data::dtype_of;
use crate::ops::{invalid, norm_axis, NodeCx, OpError, OpResult};
use crate::proto::NodeProto;

/// Input `i`, which must be a sequence.
fn seq_input(slots: &[Option<Slot>], i: usize) -> OpResult<(Vec<ValueId>, DType)> {
    match slots.get(i) {
        Some(Some(Slot::Sequence(e, d))) => Ok((e.clone(), *d)),
        Some(Some(s)) => invalid(format!("input {i} is {}, expected a sequence", s.kind())),
        _ => invalid(format!("required input {i} (a sequence) is missing")),
    }
}

/// Input `i` as a constant position into a sequence of `len` elements (`None` when absent).
/// `insert`: a position may also be `len` (after the last element).
fn position(cx: &NodeCx, i: usize, len: usize, insert: bool) -> OpResult<Option<usize>> {
    let Some(v) = cx.opt_ints_input(i, "position")? else {
        return Ok(None);
    };
    let [p] = v[..] else {
        return invalid(format!("the position must be a single integer, got {} values", v.len()));
    };
    let n = len as i64;
    let hi = if insert { n } else { n - 1 };
    if p < -n || p > hi {
        return invalid(format!("position {p} is out of range [{}, {hi}] for a sequence of {len} elements", -n));
    }
    Ok(Some(if p < 0 { (p + n) as usize } else { p as usize }))
}

impl Importer {
    /// Imports a sequence or optional op, or an `Identity` of a sequence or optional.
    pub(super) fn sequence_op(
        &mut self,
        node: &NodeProto,
        name: &str,
        opset: i64,
        slots: &[Option<Slot>],
    ) -> OpResult<Vec<Slot>> {
        let inputs: Vec<Option<ValueId>> =
            slots.iter().map(|s| if let Some(Slot::Value(v)) = s { Some(*v) } else { None }).collect();
        let mut cx = NodeCx::new(&mut self.g, &mut self.ext, node, name, opset, inputs);
        let first = slots.first().cloned().flatten();
        let out = match node.op_type() {
            "Identity" => first.ok_or_else(|| OpError::Invalid("required input 0 is missing".into()))?,
            "SequenceEmpty" => {
                let code = cx.attrs.int("dtype")?.unwrap_or(1);
                let dtype = i32::try_from(code)
                    .ok()
                    .and_then(|c| dtype_of(c).ok())
                    .ok_or_else(|| OpError::Unsupported(format!("dtype {code} is not supported")))?;
                Slot::Sequence(Vec::new(), dtype)
            }
            "SequenceConstruct" => {
                let mut elems = Vec::with_capacity(slots.len());
                for i in 0..slots.len() {
                    elems.push(tensor_input(slots, &cx, i)?);
                }
                let Some(&e0) = elems.first() else {
                    return invalid("SequenceConstruct needs at least one input");
                };
                let dtype = cx.g.ty(e0).dtype;
                for (i, &e) in elems.iter().enumerate() {
                    let d = cx.g.ty(e).dtype;
                    if d != dtype {
                        return invalid(format!("input {i} is {d}, input 0 is {dtype}: a sequence has one dtype"));
                    }
                }
                Slot::Sequence(elems, dtype)
            }
            "SequenceInsert" => {
                let (mut elems, dtype) = seq_input(slots, 0)?;
                let t = tensor_input(slots, &cx, 1)?;
                let d = cx.g.ty(t).dtype;
                if d != dtype {
                    return invalid(format!("the tensor is {d}, the sequence's elements are {dtype}"));
                }
                let at = position(&cx, 2, elems.len(), true)?.unwrap_or(elems.len());
                elems.insert(at, t);
                Slot::Sequence(elems, dtype)
            }
            "SequenceAt" => {
                let (elems, _) = seq_input(slots, 0)?;
                if slots.get(1).cloned().flatten().is_none() {
                    return invalid("required input 1 (position) is missing");
                }
                let at = position(&cx, 1, elems.len(), false)?.unwrap_or(0);
                Slot::Value(elems[at])
            }
            "SequenceErase" => {
                let (mut elems, dtype) = seq_input(slots, 0)?;
                if elems.is_empty() {
                    return invalid("cannot erase from an empty sequence");
                }
                let at = position(&cx, 1, elems.len(), false)?.unwrap_or(elems.len() - 1);
                elems.remove(at);
                Slot::Sequence(elems, dtype)
            }
            "SequenceLength" => {
                let (elems, _) = seq_input(slots, 0)?;
                let out = cx.out_name(0);
                Slot::Value(cx.konst(out, Tensor::i64(Vec::new(), vec![elems.len() as i64])))
            }
            "SplitToSequence" => split_to_sequence(&mut cx, slots)?,
            "ConcatFromSequence" => concat_from_sequence(&mut cx, slots)?,
            "Optional" => Slot::Optional(first.map(Box::new)),
            "OptionalHasElement" => {
                let has = match &first {
                    None => false,
                    Some(Slot::Optional(o)) => o.is_some(),
                    Some(_) => true,
                };
                let out = cx.out_name(0);
                Slot::Value(cx.konst(out, Tensor::bool(Vec::new(), vec![has])))
            }
            "OptionalGetElement" => match first {
                Some(Slot::Optional(Some(x))) => *x,
                Some(Slot::Optional(None)) => {
                    return invalid("the optional is empty (as known at compile time): it has no element to get")
                }
                Some(s) => s,
                None => return invalid("required input 0 is missing"),
            },
            other => return Err(OpError::Invalid(format!("`{other}` is not a sequence op"))),
        };
        Ok(vec![out])
    }
}

/// Input `i`, which must be a tensor.
fn tensor_input(slots: &[Option<Slot>], cx: &NodeCx, i: usize) -> OpResult<ValueId> {
    match slots.get(i) {
        Some(Some(Slot::Value(v))) => Ok(*v),
        Some(Some(s)) => invalid(format!("input {i} is {}, expected a tensor", s.kind())),
        _ => cx.input(i),
    }
}

/// `SplitToSequence`: Slices along `axis`, of sizes `split` (a list), of `split` each (a
/// scalar; the last one may be shorter) or of 1 each (no `split`; the axis is removed unless
/// `keepdims`).
fn split_to_sequence(cx: &mut NodeCx, slots: &[Option<Slot>]) -> OpResult<Slot> {
    let x = tensor_input(slots, cx, 0)?;
    let ty = cx.ty(x);
    let shape = ty.shape.clone();
    let axis = norm_axis(cx.attrs.int("axis")?.unwrap_or(0), shape.len(), "axis")?;
    let keepdims = cx.attrs.int("keepdims")?.unwrap_or(1) != 0;
    let dim = shape[axis];
    let (sizes, squeeze) = match cx.opt_const_input(1, "split")? {
        None => (vec![1; dim], !keepdims),
        Some(t) => {
            if !t.dtype().is_int() {
                return invalid(format!("split must be an integer tensor, got {}", t.ty));
            }
            let v = t.to_i64_vec();
            if t.ty.rank() == 0 {
                let s = v[0];
                if s <= 0 {
                    return invalid(format!("split {s} must be positive"));
                }
                let s = s as usize;
                let mut sizes = vec![s; dim / s];
                if !dim.is_multiple_of(s) {
                    sizes.push(dim % s);
                }
                (sizes, false)
            } else {
                if t.ty.rank() != 1 || v.iter().any(|&s| s < 0) || v.iter().sum::<i64>() != dim as i64 {
                    return invalid(format!(
                        "split {v:?} must be non-negative sizes that add up to dim {axis} ({dim}) of the input"
                    ));
                }
                (v.iter().map(|&s| s as usize).collect(), false)
            }
        }
    };
    let mut elems = Vec::with_capacity(sizes.len());
    let mut start = 0usize;
    for (i, &s) in sizes.iter().enumerate() {
        let mut starts = vec![0i64; shape.len()];
        starts[axis] = start as i64;
        let mut out_shape = shape.clone();
        out_shape[axis] = s;
        let steps = vec![1i64; shape.len()];
        let name = format!("{}[{i}]", cx.out_name(0));
        let mut v =
            cx.emit(Op::Slice { starts, steps, out_shape: out_shape.clone() }, &[x], format!("{name}/slice"))?;
        if squeeze {
            out_shape.remove(axis);
            v = cx.emit(Op::Reshape { shape: out_shape }, &[v], name)?;
        }
        elems.push(v);
        start += s;
    }
    Ok(Slot::Sequence(elems, ty.dtype))
}

/// `ConcatFromSequence`: a Concat of the elements along `axis`, or along a new axis
/// (`new_axis`), as a stack.
fn concat_from_sequence(cx: &mut NodeCx, slots: &[Option<Slot>]) -> OpResult<Slot> {
    let (elems, _) = seq_input(slots, 0)?;
    let axis = cx.attrs.int("axis")?.ok_or_else(|| OpError::Invalid("attribute `axis` is missing".into()))?;
    let new_axis = cx.attrs.int("new_axis")?.unwrap_or(0) != 0;
    let Some(&e0) = elems.first() else {
        return invalid("cannot concatenate an empty sequence (the result's shape is unknown)");
    };
    let rank = cx.rank(e0);
    let out = cx.out_name(0);
    let (axis, parts) = if new_axis {
        let axis = norm_axis(axis, rank + 1, "axis")?;
        let mut parts = Vec::with_capacity(elems.len());
        for (i, &e) in elems.iter().enumerate() {
            let mut shape = cx.shape(e);
            if shape.len() != rank {
                return invalid(format!("element {i} has rank {}, element 0 has {rank}", shape.len()));
            }
            shape.insert(axis, 1);
            parts.push(cx.emit(Op::Reshape { shape }, &[e], format!("{out}/part{i}"))?);
        }
        (axis, parts)
    } else {
        (norm_axis(axis, rank, "axis")?, elems)
    };
    if parts.len() == 1 {
        return Ok(Slot::Value(parts[0]));
    }
    Ok(Slot::Value(cx.emit(Op::Concat { axis }, &parts, out)?))
}
