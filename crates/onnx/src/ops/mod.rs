//! Per-op import: each ONNX op type maps to one or more HIR nodes (or constants).
//!
//! Handlers get a [`NodeCx`] (the node, its resolved inputs and opset, the graph) and return
//! one HIR value per ONNX output. Values are built through [`NodeCx::emit`], which infers
//! types and folds nodes whose inputs are all constants.

mod activation;
mod attention;
mod builders;
mod conv;
mod data_dependent;
mod elementwise;
mod generate;
mod index;
mod linalg;
mod logic;
mod ml;
mod norm;
mod pool;
mod quant;
mod reduce;
pub(crate) mod registry;
mod resize;
mod rnn;
mod shape;
mod signal;
mod training;

pub(crate) use registry::{lookup, Dtypes, NodeImport, OpDef, Route};

use kiln_ir::{BinaryOp, DType, Graph, Op, Tensor, TensorType, ValueId};

use crate::attrs::Attrs;
use crate::data::{checked_numel, ExternalStore};
use crate::proto::NodeProto;
use crate::ImportError;

/// Constants larger than this are not produced by folding (the node is kept instead).
pub(crate) const FOLD_LIMIT_BYTES: usize = 64 << 20;
/// Folding is skipped for nodes whose reference evaluation would take more multiply-adds.
const FOLD_LIMIT_WORK: usize = 1 << 27;

/// Why a node could not be imported.
#[derive(Debug)]
pub(crate) enum OpError {
    /// An op type Kiln does not know.
    Unknown,
    /// A known op with an attribute value or form Kiln does not support: listed with every
    /// other unsupported op.
    Unsupported(String),
    /// The node is invalid (or needs a value that is not static): an import error.
    Invalid(String),
    /// An error that already has its own form (a tensor's unsupported dtype…).
    Import(ImportError),
}

impl From<String> for OpError {
    fn from(s: String) -> Self {
        OpError::Invalid(s)
    }
}
impl From<ImportError> for OpError {
    fn from(e: ImportError) -> Self {
        OpError::Import(e)
    }
}

pub(crate) type OpResult<T> = Result<T, OpError>;

pub(crate) fn unsupported<T>(msg: impl Into<String>) -> OpResult<T> {
    Err(OpError::Unsupported(msg.into()))
}
pub(crate) fn invalid<T>(msg: impl Into<String>) -> OpResult<T> {
    Err(OpError::Invalid(msg.into()))
}

/// One ONNX node being imported.
pub(crate) struct NodeCx<'a> {
    pub g: &'a mut Graph,
    pub ext: &'a mut ExternalStore,
    pub node: &'a NodeProto,
    /// The node's name (or a generated one), for HIR node names and messages.
    pub name: &'a str,
    /// The default-domain opset the model imports.
    pub opset: i64,
    pub attrs: Attrs<'a>,
    /// Resolved inputs; `None` for an omitted optional input (empty name).
    pub inputs: Vec<Option<ValueId>>,
    tmp: usize,
}

impl<'a> NodeCx<'a> {
    pub fn new(
        g: &'a mut Graph,
        ext: &'a mut ExternalStore,
        node: &'a NodeProto,
        name: &'a str,
        opset: i64,
        inputs: Vec<Option<ValueId>>,
    ) -> Self {
        NodeCx { g, ext, node, name, opset, attrs: Attrs::new(&node.attribute), inputs, tmp: 0 }
    }

    pub fn op_type(&self) -> &'a str {
        self.node.op_type()
    }

    /// Required input `i`.
    pub fn input(&self, i: usize) -> OpResult<ValueId> {
        self.opt_input(i).ok_or_else(|| OpError::Invalid(format!("required input {i} is missing")))
    }

    /// Optional input `i` (absent past the end or when its name is empty).
    pub fn opt_input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }

    /// All inputs, each required.
    pub fn all_inputs(&self) -> OpResult<Vec<ValueId>> {
        (0..self.inputs.len()).map(|i| self.input(i)).collect()
    }

    pub fn ty(&self, v: ValueId) -> TensorType {
        self.g.ty(v).clone()
    }
    pub fn shape(&self, v: ValueId) -> Vec<usize> {
        self.g.ty(v).shape.clone()
    }
    pub fn rank(&self, v: ValueId) -> usize {
        self.g.ty(v).rank()
    }

    /// Optional input `i` as a constant; an error naming the input if it is computed at run
    /// time. `role` says what the input is (`shape`, `axes`…).
    pub fn opt_const_input(&self, i: usize, role: &str) -> OpResult<Option<Tensor>> {
        let Some(v) = self.opt_input(i) else {
            return Ok(None);
        };
        match self.g.const_of(v) {
            Some(t) => Ok(Some(t.clone())),
            None => Err(OpError::Import(ImportError::NeedsConstant(Box::new(crate::error::ConstantNeeded {
                node: self.node.name.clone().unwrap_or_default(),
                op_type: self.node.op_type.clone().unwrap_or_default(),
                opset: self.opset,
                index: i,
                value: self.node.input[i].clone(),
                role: role.to_string(),
                graph_inputs: graph_inputs_behind(self.g, v),
            })))),
        }
    }

    /// Optional integer input `i` as a list of i64 (a constant of any rank).
    pub fn opt_ints_input(&self, i: usize, role: &str) -> OpResult<Option<Vec<i64>>> {
        let Some(t) = self.opt_const_input(i, role)? else {
            return Ok(None);
        };
        if !t.dtype().is_int() {
            return invalid(format!("input {i} ({role}) must be an integer tensor, got {}", t.ty));
        }
        Ok(Some(t.to_i64_vec()))
    }

    /// The ONNX name of output `k` (or a generated one).
    pub fn out_name(&self, k: usize) -> String {
        match self.node.output.get(k) {
            Some(n) if !n.is_empty() => n.clone(),
            _ => format!("{}:{k}", self.name),
        }
    }

    /// Whether output `k` is requested (present with a non-empty name).
    pub fn has_output(&self, k: usize) -> bool {
        self.node.output.get(k).is_some_and(|n| !n.is_empty())
    }

    /// Fails (as unsupported) if any output at index `>= n` is requested.
    pub fn outputs_at_most(&self, n: usize, what: &str) -> OpResult<()> {
        if let Some(k) = (n..self.node.output.len()).find(|&k| self.has_output(k)) {
            return unsupported(format!("output {k} ({what}) is not supported"));
        }
        Ok(())
    }

    /// A name for an intermediate value of this node.
    pub fn tmp_name(&mut self, tag: &str) -> String {
        self.tmp += 1;
        format!("{}/{tag}_{}", self.name, self.tmp)
    }

    pub fn konst(&mut self, name: String, t: Tensor) -> ValueId {
        self.g.add_const(name, t)
    }

    /// Adds `op` applied to `inputs` (a single-result op), named `name`: as a constant when
    /// every input is a constant and the op folds, as a node otherwise.
    pub fn emit(&mut self, op: Op, inputs: &[ValueId], name: String) -> OpResult<ValueId> {
        let tys: Vec<&TensorType> = inputs.iter().map(|&v| self.g.ty(v)).collect();
        let out_tys = kiln_ir::infer::infer(&op, &tys).map_err(OpError::Invalid)?;
        let [out_ty] = out_tys.as_slice() else {
            return invalid(format!("{} has {} results, expected 1", op.name(), out_tys.len()));
        };
        if checked_numel(&out_ty.shape).is_none() {
            return invalid(format!("result shape {:?} of {} is too large", out_ty.shape, op.name()));
        }
        let consts: Option<Vec<&Tensor>> = inputs.iter().map(|&v| self.g.const_of(v)).collect();
        if let Some(consts) = consts {
            if let Some(t) = fold(&op, &consts, out_ty) {
                return Ok(self.g.add_const(name, t));
            }
        }
        let outs = self.g.add_node(op, inputs, self.name, &[name]).map_err(|e| OpError::Invalid(e.message))?;
        Ok(outs[0])
    }

    /// [`emit`](Self::emit) named after ONNX output `k`.
    pub fn emit_out(&mut self, op: Op, inputs: &[ValueId], k: usize) -> OpResult<ValueId> {
        let name = self.out_name(k);
        self.emit(op, inputs, name)
    }
}

/// Names of the graph inputs a value is computed from (sorted).
pub(crate) fn graph_inputs_behind(g: &Graph, v: ValueId) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![v];
    let mut names = Vec::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        match &g.value(v).def {
            kiln_ir::ValueDef::Input(_) => names.push(g.value(v).name.clone()),
            kiln_ir::ValueDef::Node(n, _) => stack.extend(g.node(*n).inputs.iter().copied()),
            kiln_ir::ValueDef::Const(_) => {}
        }
    }
    names.sort();
    names
}

/// Evaluates `op` on constant inputs, if that is cheap enough and the evaluator can.
fn fold(op: &Op, inputs: &[&Tensor], out_ty: &TensorType) -> Option<Tensor> {
    match op {
        // No evaluation needed: same bytes, new shape.
        Op::Reshape { .. } => return Some(inputs[0].reshaped(out_ty.shape.clone())),
        Op::Identity => return Some(inputs[0].clone()),
        _ => {}
    }
    if out_ty.bytes() > FOLD_LIMIT_BYTES || inputs.iter().any(|t| t.data.len() > FOLD_LIMIT_BYTES) {
        return None;
    }
    if fold_work(op, inputs, out_ty) > FOLD_LIMIT_WORK {
        return None;
    }
    let mut out = kiln_ir::ops::eval(op, inputs).ok()?;
    (out.len() == 1 && out[0].ty == *out_ty).then(|| out.remove(0))
}

/// Rough multiply-add count of evaluating `op` (the output size for cheap ops).
fn fold_work(op: &Op, inputs: &[&Tensor], out_ty: &TensorType) -> usize {
    let n = out_ty.numel();
    let k = match op {
        Op::MatMul => inputs[0].shape().last().copied().unwrap_or(1),
        Op::Gemm { trans_a, .. } => {
            let a = inputs[0].shape();
            if a.len() == 2 {
                if *trans_a {
                    a[0]
                } else {
                    a[1]
                }
            } else {
                1
            }
        }
        Op::Conv { window, .. } => inputs[1]
            .shape()
            .get(1)
            .copied()
            .unwrap_or(1)
            .saturating_mul(window.kernel[0])
            .saturating_mul(window.kernel[1]),
        Op::MaxPool { window, .. } | Op::AveragePool { window, .. } => {
            window.kernel[0].saturating_mul(window.kernel[1])
        }
        Op::Lrn { size, .. } => *size,
        Op::ConvTranspose { kernel, group, .. } => {
            (inputs[0].shape()[1] / group.max(&1)).saturating_mul(kernel[0]).saturating_mul(kernel[1])
        }
        _ => 1,
    };
    n.saturating_mul(k.max(1)).max(inputs.iter().map(|t| t.numel()).sum())
}

/// Normalizes a possibly negative axis for `rank`.
pub(crate) fn norm_axis(axis: i64, rank: usize, what: &str) -> OpResult<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return invalid(format!("{what} {axis} is out of range for rank {rank}"));
    }
    Ok((if axis < 0 { axis + r } else { axis }) as usize)
}

/// Normalizes, sorts and checks a list of axes for `rank` (duplicates are an error).
pub(crate) fn norm_axes(axes: &[i64], rank: usize, what: &str) -> OpResult<Vec<usize>> {
    let mut out = axes.iter().map(|&a| norm_axis(a, rank, what)).collect::<OpResult<Vec<_>>>()?;
    out.sort_unstable();
    if out.windows(2).any(|w| w[0] == w[1]) {
        return invalid(format!("{what}s {axes:?} repeat an axis"));
    }
    Ok(out)
}

/// Imports one default-domain node with `import_op`, its registry entry's function. Inputs of
/// a storage type ([`DType::compute`]: f16, bf16,
/// 8/16-bit integers, u32, u64) are widened to their compute type for ops that compute, and
/// the results of that compute type are narrowed back, so each op rounds (or wraps) its
/// result to the storage type once, as it would computing in that type.
pub(crate) fn import(cx: &mut NodeCx, def: &OpDef, import_op: NodeImport) -> OpResult<Vec<ValueId>> {
    let op_type = cx.op_type();
    let narrow: Vec<(usize, DType)> = (0..cx.inputs.len())
        .filter_map(|i| cx.opt_input(i).map(|v| (i, cx.g.ty(v).dtype)))
        .filter(|(_, d)| !d.is_compute())
        .collect();
    if narrow.is_empty() || def.dtypes == Dtypes::AsIs {
        return import_op(cx);
    }
    // For each compute type, the storage type widened to it (`None`: several).
    let mut back: Vec<(DType, Option<DType>)> = Vec::new();
    let flip_u64 = def.dtypes == Dtypes::U64Order;
    let same_bits = def.dtypes == Dtypes::U64AsI64
        || (op_type == "BitShift" && cx.attrs.string("direction")?.as_deref() == Some("LEFT"));
    for &(i, d) in &narrow {
        if d == DType::U64 && !same_bits && !flip_u64 {
            return unsupported(format!("{op_type} on uint64 (Kiln computes u64 values on their i64 bits)"));
        }
        match back.iter_mut().find(|(c, _)| *c == d.compute()) {
            Some((_, n)) if *n != Some(d) => *n = None,
            Some(_) => {}
            None => back.push((d.compute(), Some(d))),
        }
        let v = cx.input(i)?;
        let name = cx.tmp_name("widen");
        let mut w = cx.emit(Op::cast(d.compute()), &[v], name)?;
        if d == DType::U64 && flip_u64 {
            w = flip_sign_bit(cx, w)?;
        }
        cx.inputs[i] = Some(w);
    }
    let mut outs = import_op(cx)?;
    for (k, v) in outs.iter_mut().enumerate() {
        let d = cx.g.ty(*v).dtype;
        if def.index_outputs.contains(&k) {
            continue;
        }
        match back.iter().find(|(c, _)| *c == d) {
            Some((_, Some(n))) => {
                let wide = if *n == DType::U64 && flip_u64 { flip_sign_bit(cx, *v)? } else { *v };
                let name = cx.out_name(k);
                cx.g.value_mut(wide).name = format!("{name}/wide");
                *v = cx.emit(Op::cast(*n), &[wide], name)?;
            }
            Some((_, None)) => return unsupported(format!("{op_type} with inputs of several storage types")),
            None => {}
        }
    }
    Ok(outs)
}

/// `x ^ i64::MIN` for an i64 value.
fn flip_sign_bit(cx: &mut NodeCx, x: ValueId) -> OpResult<ValueId> {
    let name = cx.tmp_name("signbit");
    let k = cx.konst(name, Tensor::i64(vec![], vec![i64::MIN]));
    let name = cx.tmp_name("flip");
    cx.emit(Op::Binary(BinaryOp::Xor), &[x, k], name)
}
