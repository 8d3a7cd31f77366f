//! Decisions made at run time: an op input that must be a constant (reduction axes, a
//! cumulative sum's axis) but is computed from data, and an `If` on data.
//!
//! Where the input can take only a few values (one axis of a rank-r tensor, or `l` distinct
//! axes of one), the node is imported once per value, each copy **guarded** by a case of a
//! key computed from the input at run time ([`kiln_ir::Guard`]): lowering puts each copy in
//! a `Case` block, so only the one the data selects runs. Each output is then the `Merge` of
//! the cases' outputs. The cases may give outputs of different shapes (a reduction with
//! `keepdims=0` over one axis or another): such a value carries its run-time shape (an i64
//! value, merged like the data) and may only be a graph output, whose shape the compiled code
//! reports ([`kiln_ir::RuntimeShape`]). A key that selects no case (an axis out of range, axes
//! repeated) fails the run with a message naming the node and its input.

use kiln_ir::{BinaryOp, CmpOp, DType, Guard, Op, ReduceOp, Tensor, ValueId};

use super::{Importer, Slot};
use crate::ops::{self, invalid, NodeCx, NodeImport, OpDef, OpError, OpResult};
use crate::proto::NodeProto;
use crate::ImportError;

/// A value whose shape is decided at run time: the merge of `cases` (each computed under
/// `key == j`), with its shape `dims` (an i64 value, one element per dim).
#[derive(Clone, Debug)]
pub(super) struct Dyn {
    pub(super) dims: ValueId,
    pub(super) key: ValueId,
    pub(super) cases: Vec<ValueId>,
}

/// Most cases one run-time input may select between.
const MAX_CASES: usize = 64;

/// The values an integer input may take, when they are few.
#[derive(Clone, Copy, Debug)]
enum Domain {
    /// One axis of a rank-`r` tensor (a one-element input).
    Axis { r: usize },
    /// `l` distinct axes of a rank-`r` tensor in any order (a 1-D input of `l` elements);
    /// the op must not depend on their order.
    Axes { r: usize, l: usize },
}

fn binomial(n: usize, k: usize) -> usize {
    (0..k).fold(1usize, |acc, i| acc.saturating_mul(n - i) / (i + 1))
}

/// The subsets of `0..r` with `l` elements, in lexicographic order.
fn subsets(r: usize, l: usize) -> Vec<Vec<usize>> {
    fn walk(start: usize, r: usize, l: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == l {
            out.push(cur.clone());
            return;
        }
        for a in start..r {
            cur.push(a);
            walk(a + 1, r, l, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    walk(0, r, l, &mut Vec::new(), &mut out);
    out
}

impl Importer {
    /// The domain of input `index` of a node, when its role says it is an axis or a set of
    /// axes, it is an integer tensor, and it selects between at most [`MAX_CASES`] values.
    fn domain_of(&self, op_type: &str, role: &str, inputs: &[Option<ValueId>], v: ValueId) -> Option<Domain> {
        let t = self.g.ty(v);
        let x = inputs.first().copied().flatten()?;
        let rank = self.g.ty(x).rank();
        if !t.dtype.is_int() || t.rank() > 1 {
            return None;
        }
        let d = match role {
            "axis" if t.numel() == 1 => Domain::Axis { r: rank },
            "axes" => {
                let l = t.numel();
                let r = if op_type == "Unsqueeze" { rank + l } else { rank };
                if l > r {
                    return None;
                }
                Domain::Axes { r, l }
            }
            _ => return None,
        };
        let n = match d {
            Domain::Axis { r } => r,
            Domain::Axes { r, l } => binomial(r, l),
        };
        (n <= MAX_CASES).then_some(d)
    }

    /// Adds `op` on `ins` through the ordinary emit path (inference, folding).
    fn emit_named(
        &mut self,
        node: &NodeProto,
        name: &str,
        op: Op,
        ins: &[ValueId],
        vname: String,
    ) -> OpResult<ValueId> {
        let mut cx = NodeCx::new(&mut self.g, &mut self.ext, node, name, 0, Vec::new());
        cx.emit(op, ins, vname)
    }

    /// The key of input `v` in `domain` (one i64: the index of the value it holds among the
    /// domain's values, or a number that selects none), and those values as constants of
    /// `v`'s type.
    fn case_key(
        &mut self,
        node: &NodeProto,
        name: &str,
        v: ValueId,
        domain: Domain,
    ) -> OpResult<(ValueId, Vec<Tensor>)> {
        let ty = self.g.ty(v).clone();
        let tmp = |tag: &str| format!("{name}/key/{tag}");
        let e = |imp: &mut Self, op: Op, ins: &[ValueId], tag: &str| imp.emit_named(node, name, op, ins, tmp(tag));
        let a = e(self, Op::cast(DType::I64), &[v], "i64")?;
        let (r, flat) = match domain {
            Domain::Axis { r } => (r, e(self, Op::Reshape { shape: vec![] }, &[a], "scalar")?),
            Domain::Axes { r, l } => (r, e(self, Op::Reshape { shape: vec![l] }, &[a], "flat")?),
        };
        let zero = self.g.add_const(tmp("zero"), Tensor::i64(vec![], vec![0]));
        let rank = self.g.add_const(tmp("rank"), Tensor::i64(vec![], vec![r as i64]));
        let neg = e(self, Op::Compare(CmpOp::Less), &[flat, zero], "negative")?;
        let wrapped = e(self, Op::Binary(BinaryOp::Add), &[flat, rank], "wrapped")?;
        let axis = e(self, Op::Where, &[neg, wrapped, flat], "axis")?;
        let values = |axes: &[usize]| {
            let vals: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
            Tensor::from_data(ty.shape.clone(), kiln_ir::Data::from_i64s(ty.dtype, &vals))
        };
        match domain {
            // An axis out of range selects no case.
            Domain::Axis { r } => Ok((axis, (0..r).map(|a| values(&[a])).collect())),
            Domain::Axes { r, l } => {
                // The set of axes as a bit mask (an axis out of range sets a bit above every
                // mask of `r` axes; a repeated one carries into another bit, so the mask
                // has fewer than `l` bits and selects no case).
                let sets = subsets(r, l);
                let one = self.g.add_const(tmp("one"), Tensor::i64(vec![], vec![1]));
                let big = self.g.add_const(tmp("out_of_range"), Tensor::i64(vec![], vec![1 << 40]));
                let ge = e(self, Op::Compare(CmpOp::GreaterOrEqual), &[axis, zero], "ge0")?;
                let lt = e(self, Op::Compare(CmpOp::Less), &[axis, rank], "lt_rank")?;
                let inside = e(self, Op::Binary(BinaryOp::And), &[ge, lt], "inside")?;
                let bit = e(self, Op::Binary(BinaryOp::Shl), &[one, axis], "bit")?;
                let bit = e(self, Op::Where, &[inside, bit, big], "bits")?;
                let mask = e(self, Op::Reduce { op: ReduceOp::Sum, axes: vec![0], keepdims: false }, &[bit], "mask")?;
                let masks: Vec<i64> = sets.iter().map(|s| s.iter().map(|&a| 1i64 << a).sum()).collect();
                let n = masks.len();
                let masks = self.g.add_const(tmp("masks"), Tensor::i64(vec![n], masks));
                let index = self.g.add_const(tmp("index"), Tensor::i64(vec![n], (0..n as i64).collect()));
                let none = self.g.add_const(tmp("none"), Tensor::i64(vec![], vec![-1]));
                let eq = e(self, Op::Compare(CmpOp::Equal), &[mask, masks], "matches")?;
                let which = e(self, Op::Where, &[eq, index, none], "which")?;
                let key = e(self, Op::Reduce { op: ReduceOp::Max, axes: vec![0], keepdims: false }, &[which], "key")?;
                Ok((key, sets.iter().map(|s| values(s)).collect()))
            }
        }
    }

    /// Imports a default-domain node, specializing it per value of an input that must be
    /// constant but is computed at run time, when that input selects between few values
    /// (see the module docs); otherwise as `ops::import` does.
    pub(super) fn node_in_cases(
        &mut self,
        node: &NodeProto,
        name: &str,
        opset: i64,
        def: &OpDef,
        f: NodeImport,
        inputs: Vec<Option<ValueId>>,
    ) -> OpResult<Vec<ValueId>> {
        let r = {
            let mut cx = NodeCx::new(&mut self.g, &mut self.ext, node, name, opset, inputs.clone());
            ops::import(&mut cx, def, f)
        };
        let need = match r {
            Err(OpError::Import(ImportError::NeedsConstant(c))) => c,
            r => return r,
        };
        let v = inputs.get(need.index).copied().flatten();
        let domain = v.and_then(|v| self.domain_of(node.op_type(), &need.role, &inputs, v));
        let (Some(v), Some(domain)) = (v, domain) else {
            return Err(OpError::Import(ImportError::NeedsConstant(need)));
        };
        let (key, values) = self.case_key(node, name, v, domain)?;
        let outer = self.g.guard.clone();
        let mut cases: Vec<Option<Vec<ValueId>>> = Vec::with_capacity(values.len());
        let mut first_err = None;
        for (j, value) in values.into_iter().enumerate() {
            let c = self.g.add_const(format!("{name}/case{j}/{}", need.role), value);
            let mut ins = inputs.clone();
            ins[need.index] = Some(c);
            self.g.guard = outer.iter().copied().chain([Guard { key, value: j as i64 }]).collect();
            let r = self.node_in_cases(node, name, opset, def, f, ins);
            self.g.guard = outer.clone();
            match r {
                Ok(outs) => {
                    for &o in &outs {
                        let n = format!("{}/case{j}", self.g.value(o).name);
                        self.g.value_mut(o).name = n;
                    }
                    cases.push(Some(outs));
                }
                // A value the op is not defined for (or not supported at): no case; the run
                // fails if it is given.
                Err(e @ (OpError::Invalid(_) | OpError::Unsupported(_))) => {
                    first_err.get_or_insert(e);
                    cases.push(None);
                }
                Err(e) => return Err(e),
            }
        }
        let message = format!(
            "node `{name}` ({}): input {} (`{}`, {}) holds a value the op is not defined for",
            node.op_type(),
            need.index,
            need.value,
            need.role
        );
        let outs = (0..node.output.len()).map(|k| node.output.get(k).cloned().unwrap_or_default()).collect();
        if let (None, Some(e)) = (cases.iter().flatten().next(), first_err) {
            return Err(e);
        }
        self.merge_cases(node, name, key, cases, outs, message)
    }

    /// Imports a node that reads values whose shape is decided at run time: once per case of
    /// the first such input's key, reading each such value of that key as the case's value
    /// (under the case's guard), then the outputs merged. `None`: not such a node.
    pub(super) fn node_over_cases(
        &mut self,
        idx: usize,
        node: &NodeProto,
        name: &str,
    ) -> Option<Result<(), ImportError>> {
        let dynamic: Vec<(usize, Dyn)> = node
            .input
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match self.env.get(n) {
                Some(Slot::Value(v)) => self.dynamic.get(v).map(|d| (i, d.clone())),
                _ => None,
            })
            .collect();
        let key = dynamic.first()?.1.key;
        Some(self.node_cases_of(idx, node, name, key, &dynamic))
    }

    fn node_cases_of(
        &mut self,
        idx: usize,
        node: &NodeProto,
        name: &str,
        key: ValueId,
        dynamic: &[(usize, Dyn)],
    ) -> Result<(), ImportError> {
        let n = dynamic[0].1.cases.len();
        let saved: Vec<(String, Option<Slot>)> = node
            .input
            .iter()
            .chain(&node.output)
            .filter(|s| !s.is_empty())
            .map(|s| (s.clone(), self.env.get(s).cloned()))
            .collect();
        let outer = self.g.guard.clone();
        let mut cases = Vec::with_capacity(n);
        let mut first_err = None;
        for j in 0..n {
            for (i, d) in dynamic.iter().filter(|(_, d)| d.key == key) {
                self.env.insert(node.input[*i].clone(), Slot::Value(d.cases[j]));
            }
            self.g.guard = outer.iter().copied().chain([Guard { key, value: j as i64 }]).collect();
            let r = self.node(idx, node);
            self.g.guard = outer.clone();
            let outs: Result<Vec<ValueId>, ImportError> = node
                .output
                .iter()
                .filter(|o| !o.is_empty())
                .map(|o| match self.env.get(o) {
                    Some(Slot::Value(v)) => Ok(*v),
                    _ => Err(ImportError::Node {
                        node: name.to_string(),
                        op_type: node.op_type().to_string(),
                        opset: 0,
                        message: format!("output `{o}` of a node reading a value of run-time shape is not a tensor"),
                    }),
                })
                .collect();
            for (s, slot) in &saved {
                match slot {
                    Some(v) => self.env.insert(s.clone(), v.clone()),
                    None => self.env.remove(s),
                };
            }
            match r.and(outs) {
                Ok(outs) => cases.push(Some(outs)),
                Err(e @ ImportError::Node { .. }) => {
                    first_err.get_or_insert(e.to_string());
                    cases.push(None);
                }
                Err(e) => return Err(e),
            }
        }
        let message = first_err.unwrap_or_default();
        let names: Vec<String> = node.output.iter().filter(|o| !o.is_empty()).cloned().collect();
        let outs = self.merge_cases(node, name, key, cases, names.clone(), message.clone()).map_err(|e| {
            let message = match e {
                OpError::Invalid(m) => m,
                OpError::Import(e) => return e,
                _ => message.clone(),
            };
            ImportError::Node { node: name.to_string(), op_type: node.op_type().to_string(), opset: 0, message }
        })?;
        for (o, v) in names.into_iter().zip(outs) {
            self.env.insert(o, Slot::Value(v));
        }
        Ok(())
    }

    /// The outputs of run-time cases (`None`: a case that cannot run, whose key fails the
    /// run with `message`), each merged by `key`, named `names[k]`. Outputs whose shape
    /// differs from case to case get a run-time shape (and may only be graph outputs).
    pub(super) fn merge_cases(
        &mut self,
        node: &NodeProto,
        name: &str,
        key: ValueId,
        cases: Vec<Option<Vec<ValueId>>>,
        names: Vec<String>,
        message: String,
    ) -> OpResult<Vec<ValueId>> {
        let Some(model) = cases.iter().flatten().next().cloned() else {
            return invalid(message);
        };
        let tmp = |tag: String| format!("{name}/{tag}");
        let live: Vec<i64> = (0..cases.len() as i64).filter(|&j| cases[j as usize].is_some()).collect();
        let raw_key = key;
        // The key, checked: it must select a case that can run.
        let key = if live.len() == cases.len() && cases.len() > 1 && self.key_is_total(key, cases.len()) {
            key
        } else {
            let n = live.len();
            let live_c = self.g.add_const(tmp("key/cases".into()), Tensor::i64(vec![n], live));
            let eq = self.emit_named(node, name, Op::Compare(CmpOp::Equal), &[key, live_c], tmp("key/is".into()))?;
            let eq = self.emit_named(node, name, Op::cast(DType::I64), &[eq], tmp("key/is_i64".into()))?;
            let any = Op::Reduce { op: ReduceOp::Max, axes: vec![0], keepdims: false };
            let any = self.emit_named(node, name, any, &[eq], tmp("key/found".into()))?;
            let one = self.g.add_const(tmp("key/one".into()), Tensor::i64(vec![], vec![1]));
            let ok = self.emit_named(node, name, Op::Compare(CmpOp::Equal), &[any, one], tmp("key/ok".into()))?;
            self.emit_named(node, name, Op::Assert { message }, &[key, ok], tmp("key/checked".into()))?
        };
        let mut outs = Vec::with_capacity(model.len());
        for (k, &m) in model.iter().enumerate() {
            let vals: Vec<ValueId> = cases.iter().map(|c| c.as_ref().map_or(m, |c| c[k])).collect();
            let vname = names.get(k).filter(|n| !n.is_empty()).cloned().unwrap_or_else(|| tmp(format!("merged{k}")));
            let merged = self.emit_named(node, name, Op::Merge, &[&[key][..], &vals].concat(), vname.clone())?;
            let shape = &self.g.ty(merged).shape;
            let dynamic = vals.iter().any(|v| self.dynamic.contains_key(v) || self.g.ty(*v).shape != *shape);
            if dynamic {
                let mut dims = Vec::with_capacity(vals.len());
                for &v in &vals {
                    let d = match self.dynamic.get(&v) {
                        Some(d) => d.dims,
                        None => {
                            let s: Vec<i64> = self.g.ty(v).shape.iter().map(|&d| d as i64).collect();
                            self.g.add_const(tmp(format!("shape{k}")), Tensor::i64(vec![s.len()], s))
                        }
                    };
                    dims.push(d);
                }
                let dims =
                    self.emit_named(node, name, Op::Merge, &[&[key][..], &dims].concat(), format!("{vname}/shape"))?;
                self.dynamic.insert(merged, Dyn { dims, key: raw_key, cases: vals });
            }
            outs.push(merged);
        }
        Ok(outs)
    }

    /// Whether `key` is always in `0..n` by construction (a bool condition cast to i64,
    /// `n` = 2), so that it needs no check.
    fn key_is_total(&self, key: ValueId, n: usize) -> bool {
        let kiln_ir::ValueDef::Node(p, _) = self.g.value(key).def else { return false };
        let p = self.g.node(p);
        n == 2 && matches!(p.op, Op::Cast { to: DType::I64, .. }) && self.g.ty(p.inputs[0]).dtype == DType::Bool
    }
}
