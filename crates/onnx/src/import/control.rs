//! ONNX control flow (`If`, `Loop`, `Scan`), imported by inlining subgraphs into the main
//! HIR graph: shapes are static, so a condition that folds picks one branch, and a loop
//! whose trip count and termination fold is unrolled.
//!
//! * A subgraph (a `GraphProto` attribute) is imported with [`Importer::instantiate`]: its
//!   formal inputs are bound to values, its initializers become constants, and its nodes go
//!   through the ordinary node walk, so they may capture values of the enclosing scopes by
//!   name and may hold control flow themselves. Nodes and values of an instance are named
//!   under `<node>/<tag>/` (`Loop_0/it3/Add_1`), so every instance has names of its own.
//! * `If`: a constant condition imports the chosen branch only. Otherwise both branches are
//!   imported and each output is `Where(cond, then, else)`, which needs both branches to give
//!   one type (both are computed at run time).
//! * `Loop`: unrolled while the trip count and the condition (the input, then the body's
//!   condition output after each iteration) are constants, at most [`MAX_UNROLL`]
//!   iterations. Scan outputs are stacked along a new axis 0.
//! * `Scan`: unrolled over the (static) sequence length, with per-input axes and directions
//!   and per-output axes and directions (opset 9+); opset 8's batch axis is unrolled too.
//! * `SequenceMap`: the body is instantiated once per element of the input sequences.
//! * Subgraph inputs and outputs, loop-carried values and `If` results may be sequences and
//!   optionals (see `sequence`); a run-time `If` selects them element by element when both
//!   branches give the same structure (sequence lengths, optional presence).
//!
//! A trip count or condition computed at run time is a `NeedsConstant` error naming the graph
//! inputs it comes from (freezing them makes the loop static).

use std::collections::HashSet;

use kiln_ir::{DType, Guard, Op, Tensor, ValueId};

use super::{Importer, Slot};
use crate::data::{decode_tensor, dtype_of};
use crate::error::ConstantNeeded;
use crate::ops::{invalid, unsupported, NodeCx, OpError, OpResult};
use crate::proto::type_proto::Value as TypeValue;
use crate::proto::{GraphProto, NodeProto};
use crate::ImportError;

/// Most iterations a `Loop` or `Scan` is unrolled to (and most batch entries of an opset-8
/// `Scan`).
pub(crate) const MAX_UNROLL: usize = 4096;

/// The control-flow node being imported.
#[derive(Clone, Copy)]
pub(super) struct At<'n> {
    pub(super) node: &'n NodeProto,
    /// The node's HIR name (with its enclosing scopes).
    pub(super) name: &'n str,
    pub(super) opset: i64,
}

/// The subgraph attribute `name` of a node.
fn graph_attr<'n>(node: &'n NodeProto, name: &str) -> OpResult<&'n GraphProto> {
    match node.attribute.iter().rev().find(|a| a.name() == name) {
        Some(a) => match &a.g {
            Some(g) => Ok(g),
            None => invalid(format!("attribute `{name}` holds no graph")),
        },
        None => invalid(format!("attribute `{name}` (a graph) is missing")),
    }
}

/// Each input, required.
fn required(inputs: &[Option<Slot>], from: usize) -> OpResult<Vec<Slot>> {
    (from..inputs.len())
        .map(|i| inputs[i].clone().ok_or_else(|| OpError::Invalid(format!("required input {i} is missing"))))
        .collect()
}

/// Each input, required, each a tensor.
fn required_tensors(inputs: &[Option<Slot>], from: usize) -> OpResult<Vec<ValueId>> {
    (from..inputs.len())
        .map(|i| tensor_input(inputs, i)?.ok_or_else(|| OpError::Invalid(format!("required input {i} is missing"))))
        .collect()
}

/// Input `i` if present, which must be a tensor.
fn tensor_input(inputs: &[Option<Slot>], i: usize) -> OpResult<Option<ValueId>> {
    match inputs.get(i) {
        None | Some(None) => Ok(None),
        Some(Some(Slot::Value(v))) => Ok(Some(*v)),
        Some(Some(s)) => invalid(format!("input {i} is {}, expected a tensor", s.kind())),
    }
}

/// Slots that must all be tensors (outputs of a subgraph).
fn tensors_of(slots: &[Slot], what: &str) -> OpResult<Vec<ValueId>> {
    slots
        .iter()
        .enumerate()
        .map(|(k, s)| match s {
            Slot::Value(v) => Ok(*v),
            s => invalid(format!("{what} {k} is {}, expected a tensor", s.kind())),
        })
        .collect()
}

/// The value of a constant single-element bool tensor.
fn const_bool(t: &Tensor, what: &str) -> OpResult<bool> {
    if t.dtype() != DType::Bool || t.numel() != 1 {
        return invalid(format!("{what} must be a single bool, got {}", t.ty));
    }
    Ok(t.to_i64_vec()[0] != 0)
}

impl Importer {
    /// Imports an `If`, `Loop` or `Scan` node. `None`: an output is downstream of an
    /// unsupported op (already reported), so the node's outputs are poisoned.
    pub(super) fn control(
        &mut self,
        node: &NodeProto,
        name: &str,
        opset: i64,
        inputs: &[Option<Slot>],
    ) -> OpResult<Option<Vec<Slot>>> {
        let at = At { node, name, opset };
        let values =
            |r: OpResult<Option<Vec<ValueId>>>| r.map(|o| o.map(|vs| vs.into_iter().map(Slot::Value).collect()));
        match node.op_type() {
            "If" => self.import_if(at, inputs),
            "Loop" => self.import_loop(at, inputs),
            "Scan" if opset < 9 => values(self.import_scan8(at, inputs)),
            "Scan" => values(self.import_scan(at, inputs)),
            "SequenceMap" => self.import_sequence_map(at, inputs),
            _ => Err(OpError::Unknown),
        }
    }

    /// Adds `op` (single result) through the ordinary emit path (inference, folding).
    pub(super) fn emit_at(&mut self, at: At, op: Op, ins: &[ValueId], vname: String) -> OpResult<ValueId> {
        let mut cx = NodeCx::new(&mut self.g, &mut self.ext, at.node, at.name, at.opset, Vec::new());
        cx.emit(op, ins, vname)
    }

    /// `x` with `shape` (a view), or `x` itself when it has it already.
    fn reshape_at(&mut self, at: At, x: ValueId, shape: Vec<usize>, vname: String) -> OpResult<ValueId> {
        if self.g.ty(x).shape == shape {
            return Ok(x);
        }
        self.emit_at(at, Op::Reshape { shape }, &[x], vname)
    }

    /// Entry `idx` of `x` along `axis`, with that axis removed.
    fn take(&mut self, at: At, x: ValueId, axis: usize, idx: usize, vname: String) -> OpResult<ValueId> {
        let shape = self.g.ty(x).shape.clone();
        let mut starts = vec![0i64; shape.len()];
        starts[axis] = idx as i64;
        let mut out_shape = shape.clone();
        out_shape[axis] = 1;
        let steps = vec![1i64; shape.len()];
        let s = self.emit_at(at, Op::Slice { starts, steps, out_shape }, &[x], format!("{vname}/slice"))?;
        let mut squeezed = shape;
        squeezed.remove(axis);
        self.reshape_at(at, s, squeezed, vname)
    }

    /// `vals` (one type) stacked along a new axis `axis`.
    fn stack(&mut self, at: At, vals: &[ValueId], axis: usize, vname: String) -> OpResult<ValueId> {
        let mut parts = Vec::with_capacity(vals.len());
        for (i, &v) in vals.iter().enumerate() {
            let mut shape = self.g.ty(v).shape.clone();
            if axis > shape.len() {
                return invalid(format!("axis {axis} is out of range for stacking values of rank {}", shape.len()));
            }
            shape.insert(axis, 1);
            parts.push(self.reshape_at(at, v, shape, format!("{vname}/part{i}"))?);
        }
        if parts.len() == 1 {
            return Ok(parts[0]);
        }
        self.emit_at(at, Op::Concat { axis }, &parts, vname)
    }

    /// The ONNX name of output `k` of the node (or a generated one).
    fn out_name(at: At, k: usize) -> String {
        match at.node.output.get(k) {
            Some(n) if !n.is_empty() => n.clone(),
            _ => format!("{}:{k}", at.name),
        }
    }

    /// A `NeedsConstant` error for value `v` (input `index` of the node, or what stands for
    /// it), naming the graph inputs it is computed from.
    fn needs_constant(&self, at: At, index: usize, v: ValueId, role: String) -> OpError {
        let names = crate::ops::graph_inputs_behind(&self.g, v);
        OpError::Import(ImportError::NeedsConstant(Box::new(ConstantNeeded {
            node: at.name.to_string(),
            op_type: at.node.op_type().to_string(),
            opset: at.opset,
            index,
            value: self.g.value(v).name.clone(),
            role,
            graph_inputs: names,
        })))
    }

    /// Imports one instance of subgraph `body` with its formal inputs bound to `args`; its
    /// nodes and values are named under `<node>/<tag>/`. Returns the subgraph's outputs, or
    /// `None` when an op inside is unsupported (it is reported) or an output is poisoned.
    pub(super) fn instantiate(
        &mut self,
        body: &GraphProto,
        at: At,
        tag: &str,
        args: &[Slot],
    ) -> OpResult<Option<Vec<Slot>>> {
        let gname = body.name();
        if body.input.len() != args.len() {
            return invalid(format!(
                "subgraph `{gname}` declares {} inputs, the node gives it {}",
                body.input.len(),
                args.len()
            ));
        }
        if let Some(s) = body.sparse_initializer.first() {
            let name = s.values.as_ref().map(|v| v.name()).unwrap_or("");
            return unsupported(format!("sparse initializer `{name}` in subgraph `{gname}`"));
        }
        let scope = format!("{}/{tag}/", at.name);
        // The names the subgraph defines, and what they refer to outside it (restored after).
        let mut seen = HashSet::new();
        let mut saved = Vec::new();
        let defined = body
            .input
            .iter()
            .map(|v| v.name())
            .chain(body.initializer.iter().map(|t| t.name()))
            .chain(body.node.iter().flat_map(|n| n.output.iter().map(String::as_str)));
        for n in defined {
            if !n.is_empty() && seen.insert(n) {
                saved.push((n.to_string(), self.env.get(n).cloned()));
            }
        }
        let outer_scope = std::mem::replace(&mut self.scope, scope.clone());
        let first_value = self.g.num_values();
        let reported = self.unsupported.len();

        let result = self.instantiate_inner(body, args);

        self.scope = outer_scope;
        for (n, slot) in saved {
            match slot {
                Some(s) => self.env.insert(n, s),
                None => self.env.remove(&n),
            };
        }
        for i in first_value..self.g.num_values() {
            let v = ValueId(i as u32);
            if !self.g.value(v).name.starts_with(&scope) {
                let name = format!("{scope}{}", self.g.value(v).name);
                self.g.value_mut(v).name = name;
            }
        }
        let outs = result?;
        if self.unsupported.len() > reported {
            return Ok(None);
        }
        Ok(outs)
    }

    fn instantiate_inner(&mut self, body: &GraphProto, args: &[Slot]) -> OpResult<Option<Vec<Slot>>> {
        let gname = body.name();
        for (vi, a) in body.input.iter().zip(args) {
            let declared = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(TypeValue::TensorType(t)) if t.elem_type() != 0 => dtype_of(t.elem_type()).ok(),
                _ => None,
            };
            if let Slot::Value(v) = a {
                let have = self.g.ty(*v).dtype;
                if declared.is_some_and(|d| d != have) {
                    return invalid(format!(
                        "subgraph `{gname}` input `{}` is declared {}, the node gives it {have}",
                        vi.name(),
                        declared.unwrap_or(have)
                    ));
                }
            }
            self.env.insert(vi.name().to_string(), a.clone());
        }
        for t in &body.initializer {
            let c = decode_tensor(t, t.name(), &mut self.ext)?;
            let v = self.g.add_const(t.name(), c);
            self.env.insert(t.name().to_string(), Slot::Value(v));
        }
        for (idx, n) in body.node.iter().enumerate() {
            self.node(idx, n)?;
        }
        let mut outs = Vec::with_capacity(body.output.len());
        for vi in &body.output {
            match self.env.get(vi.name()) {
                Some(Slot::Poisoned) => return Ok(None),
                Some(s) => outs.push(s.clone()),
                None => {
                    return invalid(format!(
                        "subgraph `{gname}` output `{}` is not produced by any of its nodes, initializers or \
                         inputs, nor an outer value",
                        vi.name()
                    ))
                }
            }
        }
        Ok(Some(outs))
    }

    /// A Scan's counts: `m` scan inputs (`num_scan_inputs`), `n` states (the other `inputs`
    /// operands) and `k` scan outputs, checked against the body and the node.
    fn scan_counts(
        at: At,
        body: &GraphProto,
        attrs: &crate::attrs::Attrs,
        inputs: usize,
    ) -> OpResult<(usize, usize, usize)> {
        let m = attrs.int("num_scan_inputs")?.ok_or_else(|| OpError::Invalid("num_scan_inputs is missing".into()))?;
        if m < 1 || m as usize > inputs {
            return invalid(format!("num_scan_inputs {m} is out of range for {inputs} inputs"));
        }
        let m = m as usize;
        let n = inputs - m;
        if body.input.len() != n + m {
            return invalid(format!(
                "the body declares {} inputs, expected {n} states + {m} scan inputs",
                body.input.len()
            ));
        }
        if body.output.len() < n {
            return invalid(format!("the body gives {} outputs, expected at least {n} states", body.output.len()));
        }
        let k = body.output.len() - n;
        Self::check_outputs(at, "body", n + k)?;
        Ok((m, n, k))
    }

    /// Checks that a subgraph gives at least as many outputs as the node has.
    fn check_outputs(at: At, what: &str, have: usize) -> OpResult<()> {
        if at.node.output.len() > have {
            return invalid(format!("the node has {} outputs, its {what} gives {have}", at.node.output.len()));
        }
        Ok(())
    }

    fn import_if(&mut self, at: At, inputs: &[Option<Slot>]) -> OpResult<Option<Vec<Slot>>> {
        let cond = tensor_input(inputs, 0)?.ok_or_else(|| OpError::Invalid("the condition is missing".into()))?;
        let then_g = graph_attr(at.node, "then_branch")?;
        let else_g = graph_attr(at.node, "else_branch")?;
        let cty = self.g.ty(cond).clone();
        if cty.dtype != DType::Bool || cty.numel() != 1 {
            return invalid(format!("the condition must be a single bool, got {cty}"));
        }
        if let Some(t) = self.g.const_of(cond) {
            let (g, tag) = if const_bool(t, "the condition")? { (then_g, "then") } else { (else_g, "else") };
            let Some(outs) = self.instantiate(g, at, tag, &[])? else {
                return Ok(None);
            };
            Self::check_outputs(at, &format!("{tag} branch"), outs.len())?;
            return Ok(Some(outs));
        }
        // A condition known only at run time: each branch in a case of its own (key 1: then,
        // 0: else), so that only the one taken runs, then a merge per output. A branch that
        // fails to import (ill-typed for these inputs) fails the run only if it is taken.
        let c = self.reshape_at(at, cond, Vec::new(), format!("{}/cond", at.name))?;
        let key = self.emit_at(at, Op::cast(DType::I64), &[c], format!("{}/key", at.name))?;
        let outer = self.g.guard.clone();
        let branch = |imp: &mut Self, g: &GraphProto, tag: &str, value: i64| {
            imp.g.guard = outer.iter().copied().chain([Guard { key, value }]).collect();
            let r = imp.instantiate(g, at, tag, &[]);
            imp.g.guard = outer.clone();
            r
        };
        let a = branch(self, then_g, "then", 1);
        let b = branch(self, else_g, "else", 0);
        let mut why = String::new();
        let mut fails = |e: OpError, tag: &str| {
            why = match &e {
                OpError::Invalid(m) => format!("the {tag} branch, taken, cannot run: {m}"),
                OpError::Import(e) => format!("the {tag} branch, taken, cannot run: {e}"),
                _ => String::new(),
            };
            Self::failing_branch(e)
        };
        let (a, b) = match (a, b) {
            (Ok(Some(a)), Ok(Some(b))) => (Some(a), Some(b)),
            (Ok(None), _) | (_, Ok(None)) => return Ok(None),
            (Err(e), Err(_)) => return Err(e),
            (Ok(Some(a)), Err(e)) => (Some(a), fails(e, "else")?),
            (Err(e), Ok(Some(b))) => (fails(e, "then")?, Some(b)),
        };
        let n = a.as_ref().or(b.as_ref()).map_or(0, Vec::len);
        if let (Some(a), Some(b)) = (&a, &b) {
            if a.len() != b.len() {
                return invalid(format!("the then branch gives {} outputs, the else branch {}", a.len(), b.len()));
            }
        }
        Self::check_outputs(at, "then branch", n)?;
        let message = format!("node `{}` (If): {why}", at.name);
        let mut outs = Vec::with_capacity(n);
        for k in 0..n {
            let pick = |s: &Option<Vec<Slot>>| s.as_ref().map(|s| s[k].clone());
            let (x, y) = (pick(&a), pick(&b));
            outs.push(self.select(at, cond, key, x.as_ref(), y.as_ref(), k, Self::out_name(at, k), &message)?);
        }
        Ok(Some(outs))
    }

    /// A branch of a run-time `If` that does not import: `Ok(None)` when the run can report
    /// the error instead (an ill-typed or out-of-range branch), else the error.
    fn failing_branch(e: OpError) -> OpResult<Option<Vec<Slot>>> {
        match e {
            OpError::Invalid(_) | OpError::Import(ImportError::Node { .. }) => Ok(None),
            e => Err(e),
        }
    }

    /// The value of output `k` of a run-time `If`: `x` (then) where `key` is 1, `y` (else)
    /// where it is 0, as a `Merge` per tensor, through sequences (of one length) and optionals
    /// (both present or both absent). A branch that cannot run (`None`) fails the run with
    /// `message` when taken.
    #[allow(clippy::too_many_arguments)]
    fn select(
        &mut self,
        at: At,
        cond: ValueId,
        key: ValueId,
        x: Option<&Slot>,
        y: Option<&Slot>,
        k: usize,
        vname: String,
        message: &str,
    ) -> OpResult<Slot> {
        let differ = |imp: &Self, what: String| {
            Err(imp.needs_constant(
                at,
                0,
                cond,
                format!("the condition: its branches give output {k} {what}, so it cannot be selected at run time"),
            ))
        };
        let Some(model) = x.or(y) else { return invalid(message.to_string()) };
        // The other branch's slot where it cannot run: its structure, never its data.
        let (xs, ys) = (x.unwrap_or(model), y.unwrap_or(model));
        match (xs, ys) {
            (Slot::Value(xv), Slot::Value(yv)) => {
                if xv == yv && x.is_some() && y.is_some() {
                    return Ok(Slot::Value(*xv));
                }
                let (tx, ty) = (self.g.ty(*xv).clone(), self.g.ty(*yv).clone());
                if tx.dtype != ty.dtype || tx.rank() != ty.rank() {
                    return differ(self, format!("different types (then {tx}, else {ty})"));
                }
                let cases = vec![y.map(|_| vec![*yv]), x.map(|_| vec![*xv])];
                let outs = self.merge_cases(at.node, at.name, key, cases, vec![vname], message.to_string())?;
                Ok(Slot::Value(outs[0]))
            }
            (Slot::Sequence(xe, dx), Slot::Sequence(ye, dy)) => {
                if xe.len() != ye.len() || dx != dy {
                    return differ(
                        self,
                        format!(
                            "sequences of different lengths or dtypes (then {} × {dx}, else {} × {dy})",
                            xe.len(),
                            ye.len()
                        ),
                    );
                }
                let mut elems = Vec::with_capacity(xe.len());
                for (i, (&ex, &ey)) in xe.iter().zip(ye).enumerate() {
                    let (ex, ey) = (Slot::Value(ex), Slot::Value(ey));
                    let (ex, ey) = (x.map(|_| &ex), y.map(|_| &ey));
                    match self.select(at, cond, key, ex, ey, k, format!("{vname}[{i}]"), message)? {
                        Slot::Value(v) => elems.push(v),
                        _ => unreachable!("a select of tensors is a tensor"),
                    }
                }
                Ok(Slot::Sequence(elems, *dx))
            }
            (Slot::Optional(None), Slot::Optional(None)) => Ok(Slot::Optional(None)),
            (Slot::Optional(Some(xi)), Slot::Optional(Some(yi))) => {
                let (xi, yi) = (x.map(|_| &**xi), y.map(|_| &**yi));
                let v = self.select(at, cond, key, xi, yi, k, vname, message)?;
                Ok(Slot::Optional(Some(Box::new(v))))
            }
            (xs, ys) => {
                let what = |s: &Slot| match s {
                    Slot::Optional(None) => "an absent optional",
                    Slot::Optional(Some(_)) => "a present optional",
                    s => s.kind(),
                };
                differ(self, format!("different kinds of value (then {}, else {})", what(xs), what(ys)))
            }
        }
    }

    fn import_loop(&mut self, at: At, inputs: &[Option<Slot>]) -> OpResult<Option<Vec<Slot>>> {
        let body = graph_attr(at.node, "body")?;
        let m = tensor_input(inputs, 0)?;
        let cond = tensor_input(inputs, 1)?;
        let carried = required(inputs, 2.min(inputs.len()))?;
        let n = carried.len();
        if body.input.len() != 2 + n {
            return invalid(format!(
                "the body declares {} inputs, expected 2 + {n} (iteration number, condition, loop-carried values)",
                body.input.len()
            ));
        }
        if body.output.len() < 1 + n {
            return invalid(format!(
                "the body gives {} outputs, expected at least 1 + {n} (condition, loop-carried values)",
                body.output.len()
            ));
        }
        let k = body.output.len() - 1 - n;
        Self::check_outputs(at, "body", n + k)?;

        let trip = match m {
            None => None,
            Some(v) => {
                let Some(t) = self.g.const_of(v) else {
                    return self.structured_loop(at, body, m, cond, carried, k);
                };
                if !t.dtype().is_int() || t.numel() != 1 {
                    return invalid(format!("the trip count must be a single integer, got {}", t.ty));
                }
                // A huge trip count may still end early on the condition (`for i in range(BIG)`
                // with a break): the cap applies to the iterations actually unrolled.
                Some(usize::try_from(t.to_i64_vec()[0].max(0)).unwrap_or(usize::MAX))
            }
        };
        let mut go = match cond {
            None => true,
            Some(v) => match self.g.const_of(v) {
                Some(t) => const_bool(t, "the loop condition")?,
                None => return self.structured_loop(at, body, m, cond, carried, k),
            },
        };

        let mut state = carried.clone();
        let mut scans: Vec<Vec<ValueId>> = vec![Vec::new(); k];
        let mut i = 0usize;
        while go && trip.is_none_or(|t| i < t) {
            if i >= MAX_UNROLL {
                // Still running after as many iterations as are unrolled: a loop at run time
                // (the iterations unrolled so far are left to dead-code elimination).
                return self.structured_loop(at, body, m, cond, carried, k);
            }
            let iv = self.g.add_const(format!("{}/it{i}/iteration", at.name), Tensor::i64(Vec::new(), vec![i as i64]));
            let cv = self.g.add_const(format!("{}/it{i}/condition", at.name), Tensor::bool(Vec::new(), vec![true]));
            let mut args = vec![Slot::Value(iv), Slot::Value(cv)];
            args.extend(state.iter().cloned());
            let Some(outs) = self.instantiate(body, at, &format!("it{i}"), &args)? else {
                return Ok(None);
            };
            let Slot::Value(c_out) = &outs[0] else {
                return invalid(format!("the body's condition output is {}, expected a tensor", outs[0].kind()));
            };
            let c_out = *c_out;
            go = match self.g.const_of(c_out) {
                Some(t) => const_bool(t, "the body's condition output")?,
                // Its termination depends on data: a loop at run time.
                None => return self.structured_loop(at, body, m, cond, carried, k),
            };
            state = outs[1..1 + n].to_vec();
            let scanned = tensors_of(&outs[1 + n..], "scan output")?;
            for (s, v) in scans.iter_mut().zip(scanned) {
                s.push(v);
            }
            i += 1;
        }
        let mut results = state;
        for (j, s) in scans.iter().enumerate() {
            if s.is_empty() {
                return unsupported(format!(
                    "scan output {j} of a loop that runs no iteration (an empty tensor) is not supported"
                ));
            }
            results.push(Slot::Value(self.stack(at, s, 0, Self::out_name(at, n + j))?));
        }
        Ok(Some(results))
    }

    /// A `Loop` run at run time (its trip count or condition known only then, or more
    /// iterations than are unrolled): `LoopBegin` (the iteration number and the carried
    /// values as an iteration sees them), the body once, its nodes guarded as the loop's
    /// (`Guard::of_loop`), and `LoopEnd` (the carried values after the last iteration, the
    /// scan outputs stacked, the number of iterations). Carried values must keep their type
    /// from iteration to iteration; scan outputs need a constant trip count, their bound,
    /// and have a run-time number of rows.
    fn structured_loop(
        &mut self,
        at: At,
        body: &GraphProto,
        m: Option<ValueId>,
        cond: Option<ValueId>,
        carried: Vec<Slot>,
        k: usize,
    ) -> OpResult<Option<Vec<Slot>>> {
        let states = match tensors_of(&carried, "loop-carried value") {
            Ok(s) => s,
            // Sequences and optionals are compile-time lists: such a loop needs its trip count
            // and condition constant, to be unrolled.
            Err(e) => {
                let runtime = [(0, m), (1, cond)]
                    .into_iter()
                    .find_map(|(i, v)| v.filter(|&v| self.g.const_of(v).is_none()).map(|v| (i, v)));
                return match runtime {
                    Some((i, v)) => Err(self.needs_constant(
                        at,
                        i,
                        v,
                        format!("{}: a loop run at run time carries tensors only", ["trip count", "loop condition"][i]),
                    )),
                    None => Err(e),
                };
            }
        };
        let n = states.len();
        let rows = match (m.map(|v| (v, self.g.const_of(v))), k) {
            (_, 0) => 0,
            (Some((_, Some(t))), _) => usize::try_from(t.to_i64_vec()[0].max(0)).unwrap_or(usize::MAX),
            // A bound on sizes from data bounds the rows too.
            (Some((_, None)), _) if self.max_elements.is_some() => self.max_elements.unwrap_or(0),
            (Some((v, None)), _) => {
                return Err(self.needs_constant(
                    at,
                    0,
                    v,
                    "trip count: the loop's scan outputs need a bound on its iterations".into(),
                ))
            }
            (None, _) => return unsupported("scan outputs of a loop without a trip count (no bound on their rows)"),
        };
        let name = at.name;
        let trip = match m {
            Some(v) => self.reshape_at(at, v, Vec::new(), format!("{name}/trip"))?,
            None => self.g.add_const(format!("{name}/no_trip_count"), Tensor::i64(Vec::new(), vec![i64::MAX])),
        };
        let go = match cond {
            Some(v) => self.reshape_at(at, v, Vec::new(), format!("{name}/condition"))?,
            None => self.g.add_const(format!("{name}/always"), Tensor::bool(Vec::new(), vec![true])),
        };
        let names: Vec<String> =
            std::iter::once(format!("{name}/iteration")).chain((0..n).map(|j| format!("{name}/carried{j}"))).collect();
        let ins: Vec<ValueId> = [trip, go].into_iter().chain(states.iter().copied()).collect();
        let begin = self.g.add_node(Op::LoopBegin, &ins, name, &names).map_err(|e| OpError::Invalid(e.message))?;
        let counter = begin[0];
        let outer = self.g.guard.clone();
        self.g.guard = outer.iter().copied().chain([Guard::of_loop(counter)]).collect();
        let running = self.g.add_const(format!("{name}/running"), Tensor::bool(Vec::new(), vec![true]));
        let mut args = vec![Slot::Value(counter), Slot::Value(running)];
        args.extend(begin[1..].iter().map(|&v| Slot::Value(v)));
        let outs = self.instantiate(body, at, "body", &args);
        self.g.guard = outer;
        let Some(outs) = outs? else { return Ok(None) };
        let outs = tensors_of(&outs, "body output")?;
        let c_out = self.reshape_at(at, outs[0], Vec::new(), format!("{name}/next_condition"))?;
        for j in 0..n {
            let (was, now) = (self.g.ty(states[j]).clone(), self.g.ty(outs[1 + j]).clone());
            if was != now {
                return unsupported(format!(
                    "loop-carried value {j} changes type from {was} to {now} (a loop at run time keeps each one's type)"
                ));
            }
        }
        let end_ins: Vec<ValueId> = [counter, c_out].into_iter().chain(outs[1..].iter().copied()).collect();
        let end_names: Vec<String> =
            (0..n + k).map(|j| Self::out_name(at, j)).chain(std::iter::once(format!("{name}/iterations"))).collect();
        let end = self
            .g
            .add_node(Op::LoopEnd { states: n, rows }, &end_ins, name, &end_names)
            .map_err(|e| OpError::Invalid(e.message))?;
        let count = end[n + k];
        let mut results: Vec<Slot> = end[..n].iter().map(|&v| Slot::Value(v)).collect();
        for j in 0..k {
            let stacked = end[n + j];
            // Its rows are the iterations run.
            let shape = self.g.ty(stacked).shape.clone();
            let c = self.reshape_at(at, count, vec![1], format!("{name}/rows{j}"))?;
            let rest: Vec<i64> = shape[1..].iter().map(|&d| d as i64).collect();
            let rest = self.g.add_const(format!("{name}/row_shape{j}"), Tensor::i64(vec![rest.len()], rest));
            let dims = self.emit_at(at, Op::Concat { axis: 0 }, &[c, rest], format!("{name}/shape{j}"))?;
            self.dynamic.insert(stacked, super::cases::Dyn { dims, bounds: shape, cases: None, rows: true });
            results.push(Slot::Value(stacked));
        }
        Ok(Some(results))
    }

    /// `SequenceMap`: the body instantiated once per position of the input sequences (each
    /// sequence input gives its element there, each tensor input is passed whole); each body
    /// output collects into an output sequence.
    fn import_sequence_map(&mut self, at: At, inputs: &[Option<Slot>]) -> OpResult<Option<Vec<Slot>>> {
        let body = graph_attr(at.node, "body")?;
        let all = required(inputs, 0)?;
        let len = match all.first() {
            Some(Slot::Sequence(e, _)) => e.len(),
            Some(s) => return invalid(format!("input 0 is {}, expected a sequence", s.kind())),
            None => return invalid("input 0 (a sequence) is missing"),
        };
        for (i, s) in all.iter().enumerate() {
            match s {
                Slot::Sequence(e, _) if e.len() != len => {
                    return invalid(format!("input {i} is a sequence of {} elements, input 0 has {len}", e.len()))
                }
                Slot::Sequence(..) | Slot::Value(_) => {}
                s => return invalid(format!("input {i} is {}, expected a sequence or a tensor", s.kind())),
            }
        }
        if body.input.len() != all.len() {
            return invalid(format!("the body declares {} inputs, the node gives {}", body.input.len(), all.len()));
        }
        if len > MAX_UNROLL {
            return unsupported(format!("a sequence of {len} elements: SequenceMap is unrolled, at most {MAX_UNROLL}"));
        }
        let k = body.output.len();
        Self::check_outputs(at, "body", k)?;
        let mut outs: Vec<Vec<ValueId>> = vec![Vec::new(); k];
        for t in 0..len {
            let args: Vec<Slot> = all
                .iter()
                .map(|s| match s {
                    Slot::Sequence(e, _) => Slot::Value(e[t]),
                    s => s.clone(),
                })
                .collect();
            let Some(o) = self.instantiate(body, at, &format!("it{t}"), &args)? else {
                return Ok(None);
            };
            for (acc, v) in outs.iter_mut().zip(tensors_of(&o, "body output")?) {
                acc.push(v);
            }
        }
        let mut results = Vec::with_capacity(k);
        for (elems, vi) in outs.into_iter().zip(&body.output) {
            let dtype = match elems.first() {
                Some(&v) => self.g.ty(v).dtype,
                None => vi.r#type.as_ref().and_then(crate::value::declared_elem_dtype).unwrap_or(DType::F32),
            };
            results.push(Slot::Sequence(elems, dtype));
        }
        Ok(Some(results))
    }

    fn import_scan(&mut self, at: At, inputs: &[Option<Slot>]) -> OpResult<Option<Vec<ValueId>>> {
        let body = graph_attr(at.node, "body")?;
        let all = required_tensors(inputs, 0)?;
        let attrs = crate::attrs::Attrs::new(&at.node.attribute);
        let (m, n, k) = Self::scan_counts(at, body, &attrs, all.len())?;
        let list = |name: &str, len: usize, what: &str| -> OpResult<Vec<i64>> {
            match attrs.ints(name)? {
                None => Ok(vec![0; len]),
                Some(v) if v.len() == len => Ok(v.to_vec()),
                Some(v) => invalid(format!("{name} has {} entries, expected one per {what} ({len})", v.len())),
            }
        };
        let in_axes = list("scan_input_axes", m, "scan input")?;
        let in_dirs = list("scan_input_directions", m, "scan input")?;
        let out_axes = list("scan_output_axes", k, "scan output")?;
        let out_dirs = list("scan_output_directions", k, "scan output")?;
        let mut axes = Vec::with_capacity(m);
        for (i, &a) in in_axes.iter().enumerate() {
            let r = self.g.ty(all[n + i]).rank();
            axes.push(crate::ops::norm_axis(a, r, "scan_input_axes entry")?);
        }
        let spec = ScanSpec { in_axes: axes, in_dirs, out_axes, out_dirs };
        let Some((mut finals, outs)) = self.scan_core(at, body, &all[..n], &all[n..], &spec, "")? else {
            return Ok(None);
        };
        let mut results = Vec::with_capacity(n + k);
        results.append(&mut finals);
        for (j, elems) in outs.iter().enumerate() {
            results.push(self.stack_scan_output(at, elems, &spec, j, Self::out_name(at, n + j))?);
        }
        Ok(Some(results))
    }

    /// Stacks the per-iteration values of scan output `j` along its axis, in its direction.
    fn stack_scan_output(
        &mut self,
        at: At,
        elems: &[ValueId],
        spec: &ScanSpec,
        j: usize,
        vname: String,
    ) -> OpResult<ValueId> {
        let Some(&first) = elems.first() else {
            return unsupported(format!("scan output {j} of a scan over an empty sequence is not supported"));
        };
        let r = self.g.ty(first).rank() + 1;
        let axis = crate::ops::norm_axis(spec.out_axes[j], r, "scan_output_axes entry")?;
        let mut elems = elems.to_vec();
        match spec.out_dirs[j] {
            0 => {}
            1 => elems.reverse(),
            d => return invalid(format!("scan_output_directions entry {d} is not 0 or 1")),
        }
        self.stack(at, &elems, axis, vname)
    }

    /// Runs a scan, unrolled: the states thread through the body, each iteration gets a slice
    /// of every scan input. Returns the final states and each scan output's per-iteration
    /// values (in iteration order).
    fn scan_core(
        &mut self,
        at: At,
        body: &GraphProto,
        states: &[ValueId],
        xs: &[ValueId],
        spec: &ScanSpec,
        tag: &str,
    ) -> OpResult<Option<ScanResult>> {
        let n = states.len();
        let mut len = None;
        for (i, &x) in xs.iter().enumerate() {
            let l = self.g.ty(x).shape[spec.in_axes[i]];
            match len {
                Some(have) if have != l => {
                    return invalid(format!(
                        "scan inputs have different sequence lengths ({have} and {l}, scan input {i})"
                    ))
                }
                _ => len = Some(l),
            }
        }
        let len = len.unwrap_or(0);
        if len > MAX_UNROLL {
            return unsupported(format!(
                "sequence length {len}: scans are unrolled, and at most {MAX_UNROLL} iterations are"
            ));
        }
        let mut state = states.to_vec();
        let mut outs: Vec<Vec<ValueId>> = vec![Vec::new(); body.output.len() - n];
        for t in 0..len {
            let mut args: Vec<Slot> = state.iter().map(|&v| Slot::Value(v)).collect();
            for (i, &x) in xs.iter().enumerate() {
                let idx = match spec.in_dirs[i] {
                    0 => t,
                    1 => len - 1 - t,
                    d => return invalid(format!("scan_input_directions entry {d} is not 0 or 1")),
                };
                args.push(Slot::Value(self.take(
                    at,
                    x,
                    spec.in_axes[i],
                    idx,
                    format!("{}/{tag}it{t}/in{i}", at.name),
                )?));
            }
            let Some(o) = self.instantiate(body, at, &format!("{tag}it{t}"), &args)? else {
                return Ok(None);
            };
            let o = tensors_of(&o, "body output")?;
            state = o[..n].to_vec();
            for (j, s) in outs.iter_mut().enumerate() {
                s.push(o[n + j]);
            }
        }
        Ok(Some((state, outs)))
    }

    /// Scan-8: inputs `sequence_lens` (optional), states, scan inputs, all with a batch axis 0
    /// and the sequence on axis 1. Unrolled over the batch, then over the sequence.
    fn import_scan8(&mut self, at: At, inputs: &[Option<Slot>]) -> OpResult<Option<Vec<ValueId>>> {
        let body = graph_attr(at.node, "body")?;
        let attrs = crate::attrs::Attrs::new(&at.node.attribute);
        let all = required_tensors(inputs, 1.min(inputs.len()))?;
        let (m, n, k) = Self::scan_counts(at, body, &attrs, all.len())?;
        let in_dirs = match attrs.ints("directions")? {
            None => vec![0; m],
            Some(v) if v.len() == m => v.to_vec(),
            Some(v) => return invalid(format!("directions has {} entries, expected {m}", v.len())),
        };
        let mut batch = None;
        for (i, &v) in all.iter().enumerate() {
            let shape = &self.g.ty(v).shape;
            let min_rank = if i < n { 1 } else { 2 };
            if shape.len() < min_rank {
                return invalid(format!("input {} has rank {}, expected at least {min_rank}", i + 1, shape.len()));
            }
            match batch {
                Some(b) if b != shape[0] => {
                    return invalid(format!("inputs have different batch sizes ({b} and {})", shape[0]))
                }
                _ => batch = Some(shape[0]),
            }
        }
        let batch = batch.unwrap_or(0);
        let seq = self.g.ty(all[n]).shape[1];
        if let Some(lens) = tensor_input(inputs, 0)? {
            let Some(t) = self.g.const_of(lens) else {
                return Err(self.needs_constant(at, 0, lens, "sequence lengths".into()));
            };
            if t.to_i64_vec().iter().any(|&l| l != seq as i64) {
                return unsupported(format!(
                    "sequence_lens shorter than the sequence ({seq}): only full-length sequences are supported"
                ));
            }
        }
        if batch == 0 || batch > MAX_UNROLL {
            return unsupported(format!("batch size {batch}: opset-8 scans are unrolled over 1..={MAX_UNROLL}"));
        }
        let spec = ScanSpec { in_axes: vec![0; m], in_dirs, out_axes: vec![0; k], out_dirs: vec![0; k] };
        let mut finals: Vec<Vec<ValueId>> = vec![Vec::new(); n];
        let mut scans: Vec<Vec<ValueId>> = vec![Vec::new(); k];
        for b in 0..batch {
            let mut per = Vec::with_capacity(all.len());
            for (i, &v) in all.iter().enumerate() {
                per.push(self.take(at, v, 0, b, format!("{}/b{b}/in{i}", at.name))?);
            }
            let Some((f, outs)) = self.scan_core(at, body, &per[..n], &per[n..], &spec, &format!("b{b}/"))? else {
                return Ok(None);
            };
            for (acc, v) in finals.iter_mut().zip(f) {
                acc.push(v);
            }
            for (j, elems) in outs.iter().enumerate() {
                let s = self.stack_scan_output(at, elems, &spec, j, format!("{}/b{b}/out{j}", at.name))?;
                scans[j].push(s);
            }
        }
        let mut results = Vec::with_capacity(n + k);
        for (i, f) in finals.iter().enumerate() {
            results.push(self.stack(at, f, 0, Self::out_name(at, i))?);
        }
        for (j, s) in scans.iter().enumerate() {
            results.push(self.stack(at, s, 0, Self::out_name(at, n + j))?);
        }
        Ok(Some(results))
    }
}

/// Final states and the per-iteration values of each scan output.
type ScanResult = (Vec<ValueId>, Vec<Vec<ValueId>>);

/// Axes and directions of a scan (input axes normalized; output axes as given).
struct ScanSpec {
    in_axes: Vec<usize>,
    in_dirs: Vec<i64>,
    out_axes: Vec<i64>,
    out_dirs: Vec<i64>,
}
