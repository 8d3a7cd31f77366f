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
    /// Each dim's largest size.
    pub(super) bounds: Vec<usize>,
    /// The key and the values of the cases; `None` for a value whose shape comes from data
    /// (a Reshape to a shape given at run time, NonZero), which can only be a graph output,
    /// or whose rows come from data (below).
    pub(super) cases: Option<(ValueId, Vec<ValueId>)>,
    /// Only the first dim is decided at run time (NonMaxSuppression's rows): the value is its
    /// bound's rows, dense, the ones past the run-time count unused (zeros or their image).
    /// Ops that work row by row run on it at the bound (`node_on_rows`).
    pub(super) rows: bool,
}

/// Most cases one run-time input may select between.
const MAX_CASES: usize = 64;

/// The values an integer input may take, when they are few.
#[derive(Clone, Debug)]
enum Domain {
    /// One axis of a rank-`r` tensor (a one-element input).
    Axis { r: usize },
    /// `l` distinct axes of a rank-`r` tensor in any order (a 1-D input of `l` elements);
    /// the op must not depend on their order.
    Axes { r: usize, l: usize },
    /// One of `values`, tuples of the input's elements, each in `lo..=hi` (TopK's `k`, the
    /// sizes of Split's parts, a bool flag).
    /// With `wrap`, a negative element counts from `hi + 1` (an axis).
    Tuples { values: Vec<Vec<i64>>, lo: i64, hi: i64, wrap: bool },
}

/// Whether Squeeze/Unsqueeze take their axes as input 1 (opset 13+) rather than an attribute:
/// a node with a second input does.
pub(super) fn axes_from_input(node: &NodeProto) -> bool {
    node.input.get(1).is_some_and(|n| !n.is_empty())
}

/// Every ordering of `items`.
fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for (i, &first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first);
            out.push(p);
        }
    }
    out
}

/// The ways to write `total` as `parts` sizes (zeros allowed), in lexicographic order.
fn compositions(total: usize, parts: usize) -> Vec<Vec<i64>> {
    fn walk(left: usize, parts: usize, cur: &mut Vec<i64>, out: &mut Vec<Vec<i64>>) {
        if parts == 1 {
            cur.push(left as i64);
            out.push(cur.clone());
            cur.pop();
            return;
        }
        for a in 0..=left {
            cur.push(a as i64);
            walk(left - a, parts - 1, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    if parts > 0 {
        walk(total, parts, &mut Vec::new(), &mut out);
    }
    out
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
    fn domain_of(&self, node: &NodeProto, role: &str, inputs: &[Option<ValueId>], v: ValueId) -> Option<Domain> {
        let op_type = node.op_type();
        let t = self.g.ty(v);
        let x = inputs.first().copied().flatten()?;
        let xs = &self.g.ty(x).shape;
        let rank = xs.len();
        let attrs = crate::attrs::Attrs::new(&node.attribute);
        let dim_at = |axis: i64| {
            usize::try_from(if axis < 0 { axis + rank as i64 } else { axis }).ok().and_then(|a| xs.get(a).copied())
        };
        if role == "training_mode" && t.dtype == DType::Bool && t.numel() == 1 {
            return Some(Domain::Tuples { values: vec![vec![0], vec![1]], lo: 0, hi: 1, wrap: false });
        }
        if !t.dtype.is_int() || t.rank() > 1 {
            return None;
        }
        let d = match (op_type, role) {
            ("TopK", "k") if t.numel() == 1 => {
                let d = dim_at(attrs.int_or("axis", -1).ok()?)?;
                Domain::Tuples { values: (0..=d as i64).map(|k| vec![k]).collect(), lo: 0, hi: d as i64, wrap: false }
            }
            // Slice's axes pair with its starts and ends: every ordered tuple of distinct axes.
            ("Slice", "axes") => {
                let l = t.numel();
                if l > rank || (rank - l + 1..=rank).product::<usize>() > MAX_CASES {
                    return None;
                }
                let values: Vec<Vec<i64>> = subsets(rank, l)
                    .into_iter()
                    .flat_map(|set| permutations(&set))
                    .map(|p| p.into_iter().map(|a| a as i64).collect())
                    .collect();
                Domain::Tuples { values, lo: 0, hi: rank as i64 - 1, wrap: true }
            }
            ("Split", "split") => {
                let d = dim_at(attrs.int_or("axis", 0).ok()?)?;
                let m = t.numel();
                if m == 0 || binomial(d + m - 1, m - 1) > MAX_CASES {
                    return None;
                }
                Domain::Tuples { values: compositions(d, m), lo: 0, hi: d as i64, wrap: false }
            }
            _ => match role {
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
            },
        };
        let n = match &d {
            Domain::Axis { r } => *r,
            Domain::Axes { r, l } => binomial(*r, *l),
            Domain::Tuples { values, .. } => values.len(),
        };
        (n <= MAX_CASES).then_some(d)
    }

    /// Adds `op` on `ins` through the ordinary emit path (inference, folding).
    pub(super) fn emit_named(
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
        let values = |axes: &[i64]| Tensor::from_data(ty.shape.clone(), kiln_ir::Data::from_i64s(ty.dtype, axes));
        let (r, flat) = match &domain {
            Domain::Axis { r } => (*r, e(self, Op::Reshape { shape: vec![] }, &[a], "scalar")?),
            Domain::Axes { r, l } => (*r, e(self, Op::Reshape { shape: vec![*l] }, &[a], "flat")?),
            Domain::Tuples { values: tuples, lo, hi, wrap } => {
                // The tuple as a number in base `hi - lo + 1` (an element out of range adds
                // more than any tuple's code), matched against each tuple's.
                let n = ty.numel();
                let base = hi - lo + 1;
                let flat = e(self, Op::Reshape { shape: vec![n] }, &[a], "flat")?;
                let flat = if *wrap {
                    let zero = self.g.add_const(tmp("zero"), Tensor::i64(vec![], vec![0]));
                    let r = self.g.add_const(tmp("rank"), Tensor::i64(vec![], vec![hi + 1]));
                    let neg = e(self, Op::Compare(CmpOp::Less), &[flat, zero], "negative")?;
                    let up = e(self, Op::Binary(BinaryOp::Add), &[flat, r], "wrapped")?;
                    e(self, Op::Where, &[neg, up, flat], "axes")?
                } else {
                    flat
                };
                let lo_c = self.g.add_const(tmp("lo"), Tensor::i64(vec![], vec![*lo]));
                let hi_c = self.g.add_const(tmp("hi"), Tensor::i64(vec![], vec![*hi]));
                let digit = e(self, Op::Binary(BinaryOp::Sub), &[flat, lo_c], "digit")?;
                let ge = e(self, Op::Compare(CmpOp::GreaterOrEqual), &[flat, lo_c], "ge_lo")?;
                let le = e(self, Op::Compare(CmpOp::LessOrEqual), &[flat, hi_c], "le_hi")?;
                let inside = e(self, Op::Binary(BinaryOp::And), &[ge, le], "inside")?;
                let weights: Vec<i64> = (0..n as u32).map(|i| base.pow(i)).collect();
                let big = base.pow(n as u32);
                let w = self.g.add_const(tmp("weights"), Tensor::i64(vec![n], weights.clone()));
                let big_c = self.g.add_const(tmp("out_of_range"), Tensor::i64(vec![], vec![big]));
                let term = e(self, Op::Binary(BinaryOp::Mul), &[digit, w], "term")?;
                let term = e(self, Op::Where, &[inside, term, big_c], "terms")?;
                let code = e(self, Op::Reduce { op: ReduceOp::Sum, axes: vec![0], keepdims: false }, &[term], "code")?;
                let codes: Vec<i64> =
                    tuples.iter().map(|t| t.iter().zip(&weights).map(|(x, w)| (x - lo) * w).sum()).collect();
                let key = self.match_code(code, codes, &tmp, node, name)?;
                return Ok((key, tuples.iter().map(|t| values(t)).collect()));
            }
        };
        let zero = self.g.add_const(tmp("zero"), Tensor::i64(vec![], vec![0]));
        let rank = self.g.add_const(tmp("rank"), Tensor::i64(vec![], vec![r as i64]));
        let neg = e(self, Op::Compare(CmpOp::Less), &[flat, zero], "negative")?;
        let wrapped = e(self, Op::Binary(BinaryOp::Add), &[flat, rank], "wrapped")?;
        let axis = e(self, Op::Where, &[neg, wrapped, flat], "axis")?;
        match domain {
            // An axis out of range selects no case.
            Domain::Axis { r } => Ok((axis, (0..r as i64).map(|a| values(&[a])).collect())),
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
                let key = self.match_code(mask, masks, &tmp, node, name)?;
                let sets: Vec<Vec<i64>> = sets.iter().map(|s| s.iter().map(|&a| a as i64).collect()).collect();
                Ok((key, sets.iter().map(|s| values(s)).collect()))
            }
            Domain::Tuples { .. } => unreachable!("returned above"),
        }
    }

    /// The index of `code` (one i64) among `codes`, or -1.
    fn match_code(
        &mut self,
        code: ValueId,
        codes: Vec<i64>,
        tmp: &dyn Fn(&str) -> String,
        node: &NodeProto,
        name: &str,
    ) -> OpResult<ValueId> {
        let n = codes.len();
        let codes = self.g.add_const(tmp("codes"), Tensor::i64(vec![n], codes));
        let index = self.g.add_const(tmp("index"), Tensor::i64(vec![n], (0..n as i64).collect()));
        let none = self.g.add_const(tmp("none"), Tensor::i64(vec![], vec![-1]));
        let eq = self.emit_named(node, name, Op::Compare(CmpOp::Equal), &[code, codes], tmp("matches"))?;
        let which = self.emit_named(node, name, Op::Where, &[eq, index, none], tmp("which"))?;
        let max = Op::Reduce { op: ReduceOp::Max, axes: vec![0], keepdims: false };
        self.emit_named(node, name, max, &[which], tmp("key"))
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
        let mut need = match r {
            Err(OpError::Import(ImportError::NeedsConstant(c))) => c,
            r => return r,
        };
        // A size from data: imported whole, or needing another input decided first.
        match self.sized_from_data(node, name, opset, &inputs) {
            Some(Err(OpError::Import(ImportError::NeedsConstant(c)))) => need = c,
            Some(r) => return r,
            None => {}
        }
        let v = inputs.get(need.index).copied().flatten();
        if let (Some(v), Some(x), "Reshape", "shape") =
            (v, inputs.first().copied().flatten(), node.op_type(), need.role.as_str())
        {
            let allowzero = opset >= 14 && crate::attrs::Attrs::new(&node.attribute).int_or("allowzero", 0)? != 0;
            return self.reshape_from_data(node, name, x, v, allowzero).map(|o| vec![o]);
        }
        match node.op_type() {
            "NonZero" => return self.non_zero_at_run_time(node, name, &inputs).map(|o| vec![o]),
            "NonMaxSuppression" => return self.nms_at_run_time(node, name, &inputs).map(|o| vec![o]),
            "Compress" if need.index == 1 => return self.compress_at_run_time(node, name, &inputs).map(|o| vec![o]),
            _ => {}
        }
        let domain = v.and_then(|v| self.domain_of(node, &need.role, &inputs, v));
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
            let first = self.g.num_values();
            let r = self.node_in_cases(node, name, opset, def, f, ins);
            self.g.guard = outer.clone();
            match r {
                Ok(outs) => {
                    // The case's own results (not a value it passes through) are named after it.
                    for &o in outs.iter().filter(|o| o.0 as usize >= first) {
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
        let found: Vec<(usize, ValueId, Dyn)> = node
            .input
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match self.env.get(n) {
                Some(Slot::Value(v)) => self.dynamic.get(v).map(|d| (i, *v, d.clone())),
                _ => None,
            })
            .collect();
        if node.op_type() == "Shape" {
            if let Some((_, _, d)) = found.first() {
                return Some(self.shape_of_dynamic(node, name, d.dims));
            }
        }
        if !found.is_empty() && found.iter().all(|(_, _, d)| d.rows && d.cases.is_none()) {
            return Some(self.node_on_rows(idx, node, name, &found));
        }
        let dynamic: Result<Vec<(usize, ValueId, Vec<ValueId>)>, ImportError> = found
            .into_iter()
            .map(|(i, _, d)| (i, d.cases))
            .map(|(i, cases)| match cases {
                Some((key, vals)) => Ok((i, key, vals)),
                None => Err(i),
            })
            .collect::<Result<_, _>>()
            .map_err(|i| ImportError::Node {
                node: name.to_string(),
                op_type: node.op_type().to_string(),
                opset: 0,
                message: format!(
                    "input {i} `{}` has a shape computed from data at run time, which Kiln can only give as a graph \
                     output yet",
                    node.input[i]
                ),
            });
        let dynamic = match dynamic {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        let key = dynamic.first()?.1;
        Some(self.node_cases_of(idx, node, name, key, &dynamic))
    }

    fn node_cases_of(
        &mut self,
        idx: usize,
        node: &NodeProto,
        name: &str,
        key: ValueId,
        dynamic: &[(usize, ValueId, Vec<ValueId>)],
    ) -> Result<(), ImportError> {
        let n = dynamic[0].2.len();
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
            for (i, _, vals) in dynamic.iter().filter(|(_, k, _)| *k == key) {
                self.env.insert(node.input[*i].clone(), Slot::Value(vals[j]));
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
                // Each dim's bound: the largest among the cases' (a case's own shape, or its
                // run-time shape's bounds).
                let case_bounds: Vec<Vec<usize>> = vals
                    .iter()
                    .map(|v| self.dynamic.get(v).map_or_else(|| self.g.ty(*v).shape.clone(), |d| d.bounds.clone()))
                    .collect();
                let rank = case_bounds[0].len();
                if case_bounds.iter().any(|b| b.len() != rank) {
                    return invalid(format!("the cases of output {k} have different ranks"));
                }
                let bounds: Vec<usize> =
                    (0..rank).map(|a| case_bounds.iter().map(|b| b[a]).max().unwrap_or(0)).collect();
                self.dynamic.insert(merged, Dyn { dims, bounds, cases: Some((raw_key, vals)), rows: false });
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
