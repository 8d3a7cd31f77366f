//! Per-op import: each ONNX op type maps to one or more HIR nodes (or constants).
//!
//! Handlers get a [`NodeCx`] (the node, its resolved inputs and opset, the graph) and return
//! one HIR value per ONNX output. Values are built through [`NodeCx::emit`], which infers
//! types and folds nodes whose inputs are all constants.

mod compose;
mod compose_attention;
mod compose_data;
mod compose_dyn;
mod compose_misc;
mod compose_more;
mod compose_nn;
mod compose_quant;
mod compose_resize;
mod compose_rnn;
mod compose_train;
mod conv_transpose;
mod index;
mod math;
mod nn;
mod reduce;
mod tensor;

use kiln_ir::{BinaryOp, CmpOp, DType, Graph, Op, Tensor, TensorType, UnaryOp, ValueId};

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
    let mut out = kiln_ir::eval::eval(op, inputs).ok()?;
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

/// Imports one default-domain node. Returns one value per ONNX output (values for omitted
/// outputs may be missing from the end).
/// Default-domain op types [`import`] handles (keep in step with its `match`). Used to report
/// unknown ops that sit downstream of another unsupported op, where nothing can be typed.
pub(crate) const KNOWN_OPS: &[&str] = &[
    "Abs",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
    "BitwiseNot",
    "BitShift",
    "BitCast",
    "Compress",
    "NonZero",
    "Unique",
    "NonMaxSuppression",
    "TfIdfVectorizer",
    "Det",
    "DeformConv",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Add",
    "And",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "CastLike",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Div",
    "Dropout",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "Identity",
    "LRN",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mod",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pow",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Sign",
    "Size",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Where",
    "Xor",
    // Indexing, tests and ConvTranspose (index.rs, conv_transpose.rs).
    "ArgMax",
    "ArgMin",
    "Col2Im",
    "ConvTranspose",
    "GatherElements",
    "GatherND",
    "GridSample",
    "IsInf",
    "IsNaN",
    "MaxUnpool",
    "ReverseSequence",
    "RoiAlign",
    "Scatter",
    "ScatterElements",
    "ScatterND",
    "TopK",
    // Compositions of existing HIR ops (compose*.rs).
    "AffineGrid",
    "Attention",
    "CenterCropPad",
    "Hardmax",
    "LinearAttention",
    "LpPool",
    "MelWeightMatrix",
    "NegativeLogLikelihoodLoss",
    "SoftmaxCrossEntropyLoss",
    "CausalConvWithState",
    "Celu",
    "CumProd",
    "CumSum",
    "DFT",
    "DepthToSpace",
    "Einsum",
    "Elu",
    "EyeLike",
    "Gelu",
    "GroupNormalization",
    "HardSwish",
    "InstanceNormalization",
    "LayerNormalization",
    "LpNormalization",
    "MeanVarianceNormalization",
    "Mish",
    "OneHot",
    "PRelu",
    "Pad",
    "Resize",
    "RotaryEmbedding",
    "Selu",
    "Shrink",
    "Softplus",
    "Softsign",
    "STFT",
    "SpaceToDepth",
    "SwiGLU",
    "TensorScatter",
    "Swish",
    "ThresholdedRelu",
    "Tile",
    "Trilu",
    "Upsample",
    "Acosh",
    "Asinh",
    "Atanh",
    "BlackmanWindow",
    "Cosh",
    "HammingWindow",
    "HannWindow",
    "RMSNormalization",
    "Round",
    "Sinh",
    // Recurrent layers, unrolled (compose_rnn.rs).
    "GRU",
    "LSTM",
    "RNN",
    // Quantization (compose_quant.rs).
    "ConvInteger",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QuantizeLinear",
];

/// Ops of other domains that [`import_extra`] handles, by (domain, op type).
pub(crate) const EXTRA_OPS: &[(&str, &str)] = &[
    ("ai.onnx.preview.training", "Adagrad"),
    ("ai.onnx.preview.training", "Momentum"),
    ("ai.onnx.preview.training", "Adam"),
    ("ai.onnx.ml", "Binarizer"),
    ("ai.onnx.ml", "ArrayFeatureExtractor"),
    ("ai.onnx.ml", "TreeEnsemble"),
];

/// Imports a node of one of [`EXTRA_OPS`].
pub(crate) fn import_extra(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    match (cx.node.domain(), cx.op_type()) {
        ("ai.onnx.ml", "Binarizer") => compose_misc::binarizer(cx),
        ("ai.onnx.ml", "ArrayFeatureExtractor") => compose_misc::array_feature_extractor(cx),
        ("ai.onnx.ml", "TreeEnsemble") => compose_misc::tree_ensemble(cx),
        ("ai.onnx.preview.training", _) => compose_train::import(cx),
        _ => Err(OpError::Unknown),
    }
}

/// ONNX ops that only move, select or convert elements: they run on every dtype as is.
const STORAGE_OPS: &[&str] = &[
    "BitCast",
    "Compress",
    "NonZero",
    "Unique",
    "Cast",
    "CastLike",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "DepthToSpace",
    "Dropout",
    "Expand",
    "Flatten",
    "Gather",
    "GatherElements",
    "GatherND",
    "Identity",
    "Range",
    "Reshape",
    "Shape",
    "Size",
    "Slice",
    "SpaceToDepth",
    "Split",
    "Squeeze",
    "Tile",
    "Transpose",
    "Unsqueeze",
    "Where",
    "DequantizeLinear",
    "QuantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
];

/// Outputs that hold indices or sizes (i64 whatever the input type), by op type and index.
const INDEX_OUTPUTS: &[(&str, usize)] =
    &[("ArgMax", 0), ("ArgMin", 0), ("TopK", 1), ("MaxPool", 1), ("NonZero", 0), ("Shape", 0), ("Size", 0)];

/// Ops that order their operands: on u64 values they run on i64 values with the sign bit
/// flipped (`x ^ i64::MIN`), which maps u64 order onto i64 order; their u64 results are
/// flipped back.
const U64_ORDER_OPS: &[&str] = &[
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "Max",
    "Min",
    "TopK",
    "ArgMax",
    "ArgMin",
    "ReduceMax",
    "ReduceMin",
];

/// Ops that give the same bits on u64 values as on their i64 reinterpretation: with
/// [`U64_ORDER_OPS`], the only ones run on u64 tensors (through i64).
const U64_AS_I64_OPS: &[&str] =
    &["Add", "Sub", "Mul", "Neg", "Sum", "Equal", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "Pad"];

/// Imports one default-domain node. Inputs of a storage type ([`DType::compute`]: f16, bf16,
/// 8/16-bit integers, u32, u64) are widened to their compute type for ops that compute, and
/// the results of that compute type are narrowed back, so each op rounds (or wraps) its
/// result to the storage type once, as it would computing in that type.
pub(crate) fn import(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    let op_type = cx.op_type();
    let narrow: Vec<(usize, DType)> = (0..cx.inputs.len())
        .filter_map(|i| cx.opt_input(i).map(|v| (i, cx.g.ty(v).dtype)))
        .filter(|(_, d)| !d.is_compute())
        .collect();
    if narrow.is_empty() || STORAGE_OPS.contains(&op_type) {
        return import_op(cx);
    }
    // For each compute type, the storage type widened to it (`None`: several).
    let mut back: Vec<(DType, Option<DType>)> = Vec::new();
    let flip_u64 = U64_ORDER_OPS.contains(&op_type);
    let same_bits = U64_AS_I64_OPS.contains(&op_type)
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
        if INDEX_OUTPUTS.contains(&(op_type, k)) {
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

fn import_op(cx: &mut NodeCx) -> OpResult<Vec<ValueId>> {
    use math::*;
    let op_type = cx.op_type();
    match op_type {
        "Add" => binary(cx, BinaryOp::Add),
        "Sub" => binary(cx, BinaryOp::Sub),
        "Mul" => binary(cx, BinaryOp::Mul),
        "Div" => binary(cx, BinaryOp::Div),
        "Pow" => pow(cx),
        "Mod" => {
            let fmod = cx.attrs.int_or("fmod", 0)? != 0;
            binary(cx, BinaryOp::Mod { fmod })
        }
        "And" => binary(cx, BinaryOp::And),
        "Or" => binary(cx, BinaryOp::Or),
        "Xor" => binary(cx, BinaryOp::Xor),
        "BitwiseAnd" => binary(cx, BinaryOp::And),
        "BitwiseOr" => binary(cx, BinaryOp::Or),
        "BitwiseXor" => binary(cx, BinaryOp::Xor),
        "BitwiseNot" => unary(cx, UnaryOp::Not),
        "BitShift" => bit_shift(cx),
        "BitCast" => bit_cast(cx),
        "Compress" => compose_dyn::compress(cx),
        "TfIdfVectorizer" => compose_misc::tfidf_vectorizer(cx),
        "Det" => compose_misc::det(cx),
        "DeformConv" => compose_misc::deform_conv(cx),
        "NonZero" => compose_dyn::non_zero(cx),
        "Unique" => compose_dyn::unique(cx),
        "NonMaxSuppression" => compose_dyn::non_max_suppression(cx),
        "Sin" => unary(cx, UnaryOp::Sin),
        "Cos" => unary(cx, UnaryOp::Cos),
        "Tan" => unary(cx, UnaryOp::Tan),
        "Asin" => unary(cx, UnaryOp::Asin),
        "Acos" => unary(cx, UnaryOp::Acos),
        "Atan" => unary(cx, UnaryOp::Atan),
        "Sum" => variadic(cx, BinaryOp::Add, false),
        "Mean" => variadic(cx, BinaryOp::Add, true),
        "Max" => variadic(cx, BinaryOp::Max, false),
        "Min" => variadic(cx, BinaryOp::Min, false),
        "Equal" => compare(cx, CmpOp::Equal),
        "Less" => compare(cx, CmpOp::Less),
        "LessOrEqual" => compare(cx, CmpOp::LessOrEqual),
        "Greater" => compare(cx, CmpOp::Greater),
        "GreaterOrEqual" => compare(cx, CmpOp::GreaterOrEqual),
        "Sqrt" => unary(cx, UnaryOp::Sqrt),
        "Reciprocal" => unary(cx, UnaryOp::Reciprocal),
        "Exp" => unary(cx, UnaryOp::Exp),
        "Log" => unary(cx, UnaryOp::Log),
        "Neg" => unary(cx, UnaryOp::Neg),
        "Abs" => unary(cx, UnaryOp::Abs),
        "Relu" => unary(cx, UnaryOp::Relu),
        "Sigmoid" => unary(cx, UnaryOp::Sigmoid),
        "Tanh" => unary(cx, UnaryOp::Tanh),
        "Erf" => unary(cx, UnaryOp::Erf),
        "Floor" => unary(cx, UnaryOp::Floor),
        "Ceil" => unary(cx, UnaryOp::Ceil),
        "Not" => unary(cx, UnaryOp::Not),
        "Sign" => unary(cx, UnaryOp::Sign),
        "LeakyRelu" => {
            let alpha = cx.attrs.float_or("alpha", 0.01)?;
            unary(cx, UnaryOp::LeakyRelu { alpha })
        }
        "HardSigmoid" => {
            let alpha = cx.attrs.float_or("alpha", 0.2)?;
            let beta = cx.attrs.float_or("beta", 0.5)?;
            unary(cx, UnaryOp::HardSigmoid { alpha, beta })
        }
        "Clip" => clip(cx),
        "Where" => where_(cx),
        "Cast" => cast(cx),
        "CastLike" => cast_like(cx),
        "MatMul" => matmul(cx),
        "Gemm" => gemm(cx),

        "Conv" => nn::conv(cx),
        "MaxPool" => nn::max_pool(cx),
        "AveragePool" => nn::average_pool(cx),
        "GlobalAveragePool" => nn::global_pool(cx, kiln_ir::ReduceOp::Mean),
        "GlobalMaxPool" => nn::global_pool(cx, kiln_ir::ReduceOp::Max),
        "BatchNormalization" => nn::batch_norm(cx),
        "LRN" => nn::lrn(cx),
        "Softmax" => nn::softmax(cx, false),
        "LogSoftmax" => nn::softmax(cx, true),
        "Dropout" => nn::dropout(cx),

        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceSumSquare" | "ReduceL1"
        | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" => reduce::reduce(cx),

        "Reshape" => tensor::reshape(cx),
        "Flatten" => tensor::flatten(cx),
        "Squeeze" => tensor::squeeze(cx),
        "Unsqueeze" => tensor::unsqueeze(cx),
        "Transpose" => tensor::transpose(cx),
        "Concat" => tensor::concat(cx),
        "Split" => tensor::split(cx),
        "Slice" => tensor::slice(cx),
        "Gather" => tensor::gather(cx),
        "Expand" => tensor::expand(cx),
        "Shape" => tensor::shape(cx),
        "Size" => tensor::size(cx),
        "ConstantOfShape" => tensor::constant_of_shape(cx),
        "Constant" => tensor::constant(cx),
        "Identity" => tensor::identity(cx),
        "Range" => tensor::range(cx),
        "IsNaN" => index::is_nan(cx),
        "IsInf" => index::is_inf(cx),
        "ArgMax" => index::arg_reduce(cx, true),
        "ArgMin" => index::arg_reduce(cx, false),
        "GatherElements" => index::gather_elements(cx),
        "GatherND" => index::gather_nd(cx),
        "Scatter" | "ScatterElements" => index::scatter_elements(cx),
        "ScatterND" => index::scatter_nd(cx),
        "TopK" => index::top_k(cx),
        "GridSample" => index::grid_sample(cx),
        "RoiAlign" => index::roi_align(cx),
        "MaxUnpool" => index::max_unpool(cx),
        "ReverseSequence" => index::reverse_sequence(cx),
        "ConvTranspose" => conv_transpose::conv_transpose(cx),
        "Col2Im" => conv_transpose::col2im(cx),
        "Elu" | "Selu" | "Celu" | "Softplus" | "Softsign" | "ThresholdedRelu" | "HardSwish" | "Mish" | "Gelu"
        | "Swish" => compose::activation(cx),
        "PRelu" => compose::prelu(cx),
        "Shrink" => compose::shrink(cx),
        "SwiGLU" => compose::swiglu(cx),
        "LayerNormalization" => compose::layer_norm(cx),
        "InstanceNormalization" => compose::instance_norm(cx),
        "GroupNormalization" => compose::group_norm(cx),
        "MeanVarianceNormalization" => compose::mvn(cx),
        "LpNormalization" => compose::lp_norm(cx),
        "Tile" => compose_data::tile(cx),
        "DepthToSpace" => compose_data::depth_to_space(cx),
        "SpaceToDepth" => compose_data::space_to_depth(cx),
        "Trilu" => compose_data::trilu(cx),
        "OneHot" => compose_data::one_hot(cx),
        "EyeLike" => compose_data::eye_like(cx),
        "Pad" => compose_data::pad(cx),
        "CumSum" | "CumProd" => compose_data::cumsum(cx),
        "Resize" => compose_resize::resize(cx),
        "Upsample" => compose_resize::upsample(cx),
        "RMSNormalization" => compose_more::rms_norm(cx),
        "Sinh" | "Cosh" | "Asinh" | "Acosh" | "Atanh" => compose_more::hyperbolic(cx),
        "Round" => compose_more::round(cx),
        "HannWindow" | "HammingWindow" | "BlackmanWindow" => compose_more::window(cx),
        "Attention" => compose_attention::attention(cx),
        "RotaryEmbedding" => compose_attention::rotary_embedding(cx),
        "LinearAttention" => compose_attention::linear_attention(cx),
        "Hardmax" => compose_nn::hardmax(cx),
        "LpPool" => compose_nn::lp_pool(cx),
        "AffineGrid" => compose_nn::affine_grid(cx),
        "Einsum" => compose_nn::einsum(cx),
        "CausalConvWithState" => compose_nn::causal_conv_with_state(cx),
        "DFT" => compose_more::dft(cx),
        "STFT" => compose_more::stft(cx),
        "MelWeightMatrix" => compose_more::mel_weight_matrix(cx),
        "CenterCropPad" => compose_data::center_crop_pad(cx),
        "TensorScatter" => compose_data::tensor_scatter(cx),
        "NegativeLogLikelihoodLoss" => compose_more::nll_loss(cx),
        "SoftmaxCrossEntropyLoss" => compose_more::softmax_cross_entropy(cx),
        "RNN" | "GRU" | "LSTM" => compose_rnn::recurrent(cx),
        "DequantizeLinear" => compose_quant::dequantize_linear(cx),
        "QuantizeLinear" => compose_quant::quantize_linear(cx),
        "DynamicQuantizeLinear" => compose_quant::dynamic_quantize_linear(cx),
        "MatMulInteger" => compose_quant::matmul_integer(cx),
        "ConvInteger" => compose_quant::conv_integer(cx),
        "QLinearMatMul" => compose_quant::qlinear_matmul(cx),
        "QLinearConv" => compose_quant::qlinear_conv(cx),
        _ => Err(OpError::Unknown),
    }
}
