//! Every ONNX op Kiln imports, in one table: its domain and name, how it is imported, what
//! it does with the narrow element types, and the opset versions ONNX defines it in. The known-op list, the storage ops, the
//! index outputs and the u64 rules are all read from it; an op is unknown exactly when
//! [`lookup`] does not find it.
//!
//! Ops of the default domain are grouped by family; each entry's import function lives in
//! the module its path names. A node is refused when its model imports an opset older than
//! the op's first; differences between forms are handled inside each import function (by
//! [`NodeCx::opset`]), which refuses versions it does not implement.

use kiln_ir::{BinaryOp, CmpOp, UnaryOp, ValueId};

use super::elementwise::*;
use super::*;

/// Imports one node of a simple op: one HIR value per ONNX output.
pub(crate) type NodeImport = fn(&mut NodeCx) -> OpResult<Vec<ValueId>>;

/// How an op is imported.
#[derive(Clone, Copy)]
pub(crate) enum Route {
    /// By its function, from the node and its tensor inputs.
    Node(NodeImport),
    /// With its subgraphs (`If`, `Loop`, `Scan`, `SequenceMap`: import/control.rs).
    Control,
    /// On sequence and optional values (import/sequence.rs).
    Sequence,
    /// With its graph attribute (FlexAttention: import/flex.rs).
    Flex,
}

/// What an op does with inputs of a storage type (f16, bf16, 8/16-bit integers, u32, u64;
/// see [`kiln_ir::DType::compute`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dtypes {
    /// Widened to their compute type, the results narrowed back; u64 is refused.
    Compute,
    /// As [`Dtypes::Compute`], and u64 runs on its i64 bits: the op gives the same bits
    /// either way (add, multiply, bitwise ops, …).
    U64AsI64,
    /// As [`Dtypes::Compute`], and u64 runs on i64 with the sign bit flipped (`x ^ i64::MIN`,
    /// which maps u64 order onto i64 order), its u64 results flipped back: ops that order
    /// their operands.
    U64Order,
    /// Run on every dtype as is: the op only moves, selects or converts elements, or its
    /// import handles the narrow types itself.
    AsIs,
}

/// One op.
#[derive(Clone, Copy)]
pub(crate) struct OpDef {
    /// `""` for the default domain (`ai.onnx`).
    pub domain: &'static str,
    pub name: &'static str,
    pub route: Route,
    pub dtypes: Dtypes,
    /// Outputs that hold indices or sizes (i64 whatever the input type), never narrowed.
    pub index_outputs: &'static [usize],
    /// The op's versions in its domain's opset, as ONNX defines them: the opset that
    /// introduced it (a node of a model importing an older opset is refused as invalid) and
    /// the opset of its newest form. Differences between forms are handled, or refused by
    /// name, inside the import function ([`NodeCx::opset`]). `tests/tidy.rs` checks both
    /// numbers against the pinned `onnx` package.
    pub opsets: Opsets,
}

/// The first and newest opset versions of an op (see [`OpDef::opsets`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Opsets {
    pub first: u16,
    pub newest: u16,
}

const fn op(name: &'static str, import: NodeImport) -> OpDef {
    OpDef {
        domain: "",
        name,
        route: Route::Node(import),
        dtypes: Dtypes::Compute,
        index_outputs: &[],
        opsets: Opsets { first: 0, newest: 0 },
    }
}

const fn routed(domain: &'static str, name: &'static str, route: Route) -> OpDef {
    OpDef { domain, name, route, dtypes: Dtypes::AsIs, index_outputs: &[], opsets: Opsets { first: 0, newest: 0 } }
}

impl OpDef {
    const fn storage(self) -> OpDef {
        OpDef { dtypes: Dtypes::AsIs, ..self }
    }

    const fn u64_order(self) -> OpDef {
        OpDef { dtypes: Dtypes::U64Order, ..self }
    }

    const fn u64_as_i64(self) -> OpDef {
        OpDef { dtypes: Dtypes::U64AsI64, ..self }
    }

    const fn opsets(self, first: u16, newest: u16) -> OpDef {
        OpDef { opsets: Opsets { first, newest }, ..self }
    }

    const fn indices(self, outputs: &'static [usize]) -> OpDef {
        OpDef { index_outputs: outputs, ..self }
    }

    /// An op of another domain, imported by its function with its inputs as given.
    const fn in_domain(self, domain: &'static str) -> OpDef {
        OpDef { domain, dtypes: Dtypes::AsIs, ..self }
    }
}

/// The registry.
pub(crate) static OPS: &[OpDef] = &[
    // Elementwise arithmetic and math.
    op("Add", |cx| binary(cx, BinaryOp::Add)).u64_as_i64().opsets(1, 14),
    op("Sub", |cx| binary(cx, BinaryOp::Sub)).u64_as_i64().opsets(1, 14),
    op("Mul", |cx| binary(cx, BinaryOp::Mul)).u64_as_i64().opsets(1, 14),
    op("Div", |cx| binary(cx, BinaryOp::Div)).opsets(1, 14),
    op("Pow", pow).opsets(1, 15),
    op("Mod", |cx| {
        let fmod = cx.attrs.int_or("fmod", 0)? != 0;
        binary(cx, BinaryOp::Mod { fmod })
    })
    .opsets(10, 28),
    op("Sum", |cx| variadic(cx, BinaryOp::Add, false)).u64_as_i64().opsets(1, 13),
    op("Mean", |cx| variadic(cx, BinaryOp::Add, true)).opsets(1, 13),
    op("Max", |cx| variadic(cx, BinaryOp::Max, false)).u64_order().opsets(1, 13),
    op("Min", |cx| variadic(cx, BinaryOp::Min, false)).u64_order().opsets(1, 13),
    op("Sqrt", |cx| unary(cx, UnaryOp::Sqrt)).opsets(1, 13),
    op("Reciprocal", |cx| unary(cx, UnaryOp::Reciprocal)).opsets(1, 13),
    op("Exp", |cx| unary(cx, UnaryOp::Exp)).opsets(1, 13),
    op("Log", |cx| unary(cx, UnaryOp::Log)).opsets(1, 13),
    op("Neg", |cx| unary(cx, UnaryOp::Neg)).u64_as_i64().opsets(1, 13),
    op("Abs", |cx| unary(cx, UnaryOp::Abs)).opsets(1, 13),
    op("Floor", |cx| unary(cx, UnaryOp::Floor)).opsets(1, 13),
    op("Ceil", |cx| unary(cx, UnaryOp::Ceil)).opsets(1, 13),
    op("Round", round).opsets(11, 22),
    op("Sign", |cx| unary(cx, UnaryOp::Sign)).opsets(9, 13),
    op("Sin", |cx| unary(cx, UnaryOp::Sin)).opsets(7, 22),
    op("Cos", |cx| unary(cx, UnaryOp::Cos)).opsets(7, 22),
    op("Tan", |cx| unary(cx, UnaryOp::Tan)).opsets(7, 22),
    op("Asin", |cx| unary(cx, UnaryOp::Asin)).opsets(7, 22),
    op("Acos", |cx| unary(cx, UnaryOp::Acos)).opsets(7, 22),
    op("Atan", |cx| unary(cx, UnaryOp::Atan)).opsets(7, 22),
    op("Sinh", hyperbolic).opsets(9, 22),
    op("Cosh", hyperbolic).opsets(9, 22),
    op("Asinh", hyperbolic).opsets(9, 22),
    op("Acosh", hyperbolic).opsets(9, 22),
    op("Atanh", hyperbolic).opsets(9, 22),
    op("Erf", |cx| unary(cx, UnaryOp::Erf)).opsets(9, 13),
    op("Clip", clip).opsets(1, 13),
    op("CumSum", reduce::cumsum).opsets(11, 14),
    op("CumProd", reduce::cumsum).opsets(26, 26),
    op("BitShift", bit_shift).opsets(11, 28),
    op("BitwiseAnd", |cx| binary(cx, BinaryOp::And)).u64_as_i64().opsets(18, 18),
    op("BitwiseOr", |cx| binary(cx, BinaryOp::Or)).u64_as_i64().opsets(18, 18),
    op("BitwiseXor", |cx| binary(cx, BinaryOp::Xor)).u64_as_i64().opsets(18, 18),
    op("BitwiseNot", |cx| unary(cx, UnaryOp::Not)).u64_as_i64().opsets(18, 18),
    // Logic, comparison and tests.
    op("And", |cx| binary(cx, BinaryOp::And)).opsets(1, 7),
    op("Or", |cx| binary(cx, BinaryOp::Or)).opsets(1, 7),
    op("Xor", |cx| binary(cx, BinaryOp::Xor)).opsets(1, 7),
    op("Not", |cx| unary(cx, UnaryOp::Not)).opsets(1, 1),
    op("Equal", |cx| logic::compare(cx, CmpOp::Equal)).u64_as_i64().opsets(1, 19),
    op("Less", |cx| logic::compare(cx, CmpOp::Less)).u64_order().opsets(1, 13),
    op("LessOrEqual", |cx| logic::compare(cx, CmpOp::LessOrEqual)).u64_order().opsets(12, 16),
    op("Greater", |cx| logic::compare(cx, CmpOp::Greater)).u64_order().opsets(1, 13),
    op("GreaterOrEqual", |cx| logic::compare(cx, CmpOp::GreaterOrEqual)).u64_order().opsets(12, 16),
    op("Where", logic::where_).storage().opsets(9, 16),
    op("IsNaN", logic::is_nan).opsets(9, 20),
    op("IsInf", logic::is_inf).opsets(10, 20),
    // Linear algebra.
    op("MatMul", linalg::matmul).opsets(1, 13),
    op("Gemm", linalg::gemm).opsets(1, 13),
    op("Einsum", linalg::einsum).opsets(12, 28),
    op("Det", linalg::det).opsets(11, 22),
    // Convolution.
    op("Conv", conv::conv).opsets(1, 22),
    op("ConvTranspose", conv::conv_transpose).opsets(1, 22),
    op("Col2Im", conv::col2im).opsets(18, 18),
    op("DeformConv", conv::deform_conv).opsets(19, 22),
    op("CausalConvWithState", conv::causal_conv_with_state).opsets(27, 27),
    // Pooling.
    op("MaxPool", pool::max_pool).indices(&[1]).opsets(1, 22),
    op("AveragePool", pool::average_pool).opsets(1, 22),
    op("GlobalAveragePool", |cx| pool::global_pool(cx, kiln_ir::ReduceOp::Mean)).opsets(1, 22),
    op("GlobalMaxPool", |cx| pool::global_pool(cx, kiln_ir::ReduceOp::Max)).opsets(1, 22),
    op("LpPool", pool::lp_pool).opsets(1, 22),
    op("MaxUnpool", index::max_unpool).opsets(9, 22),
    // Normalization.
    op("BatchNormalization", norm::batch_norm).opsets(1, 15),
    op("LRN", norm::lrn).opsets(1, 13),
    op("LayerNormalization", norm::layer_norm).opsets(17, 17),
    op("InstanceNormalization", norm::instance_norm).opsets(1, 22),
    op("GroupNormalization", norm::group_norm).opsets(18, 21),
    op("MeanVarianceNormalization", norm::mvn).opsets(9, 13),
    op("LpNormalization", norm::lp_norm).opsets(1, 22),
    op("RMSNormalization", norm::rms_norm).opsets(23, 23),
    // Activations.
    op("Relu", |cx| unary(cx, UnaryOp::Relu)).opsets(1, 14),
    op("LeakyRelu", |cx| {
        let alpha = cx.attrs.float_or("alpha", 0.01)?;
        unary(cx, UnaryOp::LeakyRelu { alpha })
    })
    .opsets(1, 16),
    op("Sigmoid", |cx| unary(cx, UnaryOp::Sigmoid)).opsets(1, 13),
    op("HardSigmoid", |cx| {
        let alpha = cx.attrs.float_or("alpha", 0.2)?;
        let beta = cx.attrs.float_or("beta", 0.5)?;
        unary(cx, UnaryOp::HardSigmoid { alpha, beta })
    })
    .opsets(1, 22),
    op("Tanh", |cx| unary(cx, UnaryOp::Tanh)).opsets(1, 13),
    op("Softmax", |cx| activation::softmax(cx, false)).opsets(1, 13),
    op("LogSoftmax", |cx| activation::softmax(cx, true)).opsets(1, 13),
    op("Hardmax", activation::hardmax).opsets(1, 13),
    op("Elu", activation::activation).opsets(1, 22),
    op("Selu", activation::activation).opsets(1, 22),
    op("Celu", activation::activation).opsets(12, 28),
    op("Softplus", activation::activation).opsets(1, 22),
    op("Softsign", activation::activation).opsets(1, 22),
    op("ThresholdedRelu", activation::activation).opsets(10, 22),
    op("HardSwish", activation::activation).opsets(14, 22),
    op("Mish", activation::activation).opsets(18, 22),
    op("Gelu", activation::activation).opsets(20, 20),
    op("Swish", activation::activation).opsets(24, 24),
    op("PRelu", activation::prelu).opsets(1, 16),
    op("Shrink", activation::shrink).opsets(9, 9),
    op("SwiGLU", activation::swiglu).opsets(28, 28),
    // Recurrent layers (unrolled).
    op("RNN", rnn::recurrent).opsets(1, 22),
    op("GRU", rnn::recurrent).opsets(1, 22),
    op("LSTM", rnn::recurrent).opsets(1, 22),
    // Attention.
    op("Attention", attention::attention).opsets(23, 25),
    op("RotaryEmbedding", attention::rotary_embedding).opsets(23, 23),
    op("LinearAttention", attention::linear_attention).opsets(27, 27),
    // Quantization.
    op("DequantizeLinear", quant::dequantize_linear).storage().opsets(10, 28),
    op("QuantizeLinear", quant::quantize_linear).storage().opsets(10, 28),
    op("DynamicQuantizeLinear", quant::dynamic_quantize_linear).storage().opsets(11, 11),
    op("MatMulInteger", quant::matmul_integer).storage().opsets(10, 10),
    op("ConvInteger", quant::conv_integer).storage().opsets(10, 10),
    op("QLinearMatMul", quant::qlinear_matmul).storage().opsets(10, 21),
    op("QLinearConv", quant::qlinear_conv).storage().opsets(10, 10),
    // Resampling.
    op("Resize", resize::resize).opsets(10, 19),
    op("Upsample", resize::upsample).opsets(1, 10),
    op("GridSample", resize::grid_sample).opsets(16, 22),
    op("AffineGrid", resize::affine_grid).opsets(20, 20),
    op("RoiAlign", resize::roi_align).opsets(10, 22),
    op("CenterCropPad", shape::center_crop_pad).opsets(18, 18),
    // Shape and data movement.
    op("Reshape", shape::reshape).storage().opsets(1, 25),
    op("Flatten", shape::flatten).storage().opsets(1, 25),
    op("Squeeze", shape::squeeze).storage().opsets(1, 25),
    op("Unsqueeze", shape::unsqueeze).storage().opsets(1, 25),
    op("Transpose", shape::transpose).storage().opsets(1, 25),
    op("Concat", shape::concat).storage().opsets(1, 13),
    op("Split", shape::split).storage().opsets(1, 18),
    op("Slice", shape::slice).storage().opsets(1, 13),
    op("Expand", shape::expand).storage().opsets(8, 13),
    op("Shape", shape::shape).storage().indices(&[0]).opsets(1, 25),
    op("Size", shape::size).storage().indices(&[0]).opsets(1, 25),
    op("ConstantOfShape", generate::constant_of_shape).storage().opsets(9, 25),
    op("Constant", generate::constant).storage().opsets(1, 25),
    op("Identity", shape::identity).storage().opsets(1, 25),
    op("Range", generate::range).storage().opsets(11, 27),
    op("Cast", cast).storage().opsets(1, 28),
    op("CastLike", cast_like).storage().opsets(15, 25),
    op("BitCast", bit_cast).storage().opsets(26, 26),
    op("Tile", shape::tile).storage().opsets(1, 13),
    op("DepthToSpace", shape::depth_to_space).storage().opsets(1, 28),
    op("SpaceToDepth", shape::space_to_depth).storage().opsets(1, 28),
    op("Pad", shape::pad).u64_as_i64().opsets(1, 25),
    op("EyeLike", generate::eye_like).opsets(9, 22),
    op("Trilu", generate::trilu).opsets(14, 14),
    op("OneHot", generate::one_hot).opsets(9, 28),
    op("Dropout", training::dropout).storage().opsets(1, 22),
    // Indexing.
    op("Gather", index::gather).storage().opsets(1, 13),
    op("GatherElements", index::gather_elements).storage().opsets(11, 13),
    op("GatherND", index::gather_nd).storage().opsets(11, 13),
    op("Scatter", index::scatter_elements).opsets(9, 11),
    op("ScatterElements", index::scatter_elements).opsets(11, 18),
    op("ScatterND", index::scatter_nd).opsets(11, 18),
    op("TensorScatter", index::tensor_scatter).opsets(24, 24),
    op("TopK", index::top_k).u64_order().indices(&[1]).opsets(1, 24),
    op("ArgMax", |cx| index::arg_reduce(cx, true)).u64_order().indices(&[0]).opsets(1, 13),
    op("ArgMin", |cx| index::arg_reduce(cx, false)).u64_order().indices(&[0]).opsets(1, 13),
    op("ReverseSequence", index::reverse_sequence).opsets(10, 28),
    op("Compress", data_dependent::compress).storage().opsets(9, 28),
    op("NonZero", data_dependent::non_zero).storage().indices(&[0]).opsets(9, 13),
    op("Unique", data_dependent::unique).storage().opsets(11, 28),
    op("NonMaxSuppression", data_dependent::non_max_suppression).opsets(10, 11),
    // Reductions.
    op("ReduceMean", reduce::reduce).opsets(1, 18),
    op("ReduceSum", reduce::reduce).opsets(1, 13),
    op("ReduceMax", reduce::reduce).u64_order().opsets(1, 20),
    op("ReduceMin", reduce::reduce).u64_order().opsets(1, 20),
    op("ReduceProd", reduce::reduce).opsets(1, 18),
    op("ReduceSumSquare", reduce::reduce).opsets(1, 18),
    op("ReduceL1", reduce::reduce).opsets(1, 18),
    op("ReduceL2", reduce::reduce).opsets(1, 18),
    op("ReduceLogSum", reduce::reduce).opsets(1, 28),
    op("ReduceLogSumExp", reduce::reduce).opsets(1, 28),
    // Signal processing.
    op("DFT", signal::dft).opsets(17, 20),
    op("STFT", signal::stft).opsets(17, 17),
    op("HannWindow", signal::window).opsets(17, 17),
    op("HammingWindow", signal::window).opsets(17, 17),
    op("BlackmanWindow", signal::window).opsets(17, 17),
    op("MelWeightMatrix", signal::mel_weight_matrix).opsets(17, 17),
    // ai.onnx.ml ops in the default domain.
    op("TfIdfVectorizer", ml::tfidf_vectorizer).opsets(9, 9),
    // Losses.
    op("NegativeLogLikelihoodLoss", training::nll_loss).opsets(12, 22),
    op("SoftmaxCrossEntropyLoss", training::softmax_cross_entropy).opsets(12, 13),
    // Ops with subgraphs, sequences and optionals, graph attributes.
    routed("", "If", Route::Control).opsets(1, 25),
    routed("", "Loop", Route::Control).opsets(1, 25),
    routed("", "Scan", Route::Control).opsets(8, 25),
    routed("", "SequenceMap", Route::Control).opsets(17, 17),
    routed("", "SequenceConstruct", Route::Sequence).opsets(11, 11),
    routed("", "SequenceEmpty", Route::Sequence).opsets(11, 11),
    routed("", "SequenceInsert", Route::Sequence).opsets(11, 11),
    routed("", "SequenceAt", Route::Sequence).opsets(11, 11),
    routed("", "SequenceErase", Route::Sequence).opsets(11, 11),
    routed("", "SequenceLength", Route::Sequence).opsets(11, 11),
    routed("", "SplitToSequence", Route::Sequence).opsets(11, 24),
    routed("", "ConcatFromSequence", Route::Sequence).opsets(11, 11),
    routed("", "Optional", Route::Sequence).opsets(15, 28),
    routed("", "OptionalHasElement", Route::Sequence).opsets(15, 28),
    routed("", "OptionalGetElement", Route::Sequence).opsets(15, 28),
    routed("ai.onnx.preview", "FlexAttention", Route::Flex).opsets(1, 1),
    // Other domains.
    op("Binarizer", ml::binarizer).in_domain("ai.onnx.ml").opsets(1, 1),
    op("ArrayFeatureExtractor", ml::array_feature_extractor).in_domain("ai.onnx.ml").opsets(1, 1),
    op("TreeEnsemble", ml::tree_ensemble).in_domain("ai.onnx.ml").opsets(5, 5),
    op("Adagrad", training::import).in_domain("ai.onnx.preview.training").opsets(1, 1),
    op("Momentum", training::import).in_domain("ai.onnx.preview.training").opsets(1, 1),
    op("Adam", training::import).in_domain("ai.onnx.preview.training").opsets(1, 1),
];

/// The op `name` of `domain` (`""` or `ai.onnx` for the default domain), if Kiln imports it.
pub(crate) fn lookup(domain: &str, name: &str) -> Option<&'static OpDef> {
    static INDEX: std::sync::OnceLock<std::collections::HashMap<(&'static str, &'static str), usize>> =
        std::sync::OnceLock::new();
    let index = INDEX.get_or_init(|| OPS.iter().enumerate().map(|(i, d)| ((d.domain, d.name), i)).collect());
    let domain = if domain == "ai.onnx" { "" } else { domain };
    index.get(&(domain, name)).map(|&i| &OPS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_is_registered_once() {
        let mut seen = std::collections::HashSet::new();
        for d in OPS {
            assert!(seen.insert((d.domain, d.name)), "{}.{} is registered twice", d.domain, d.name);
            assert!(std::ptr::eq(lookup(d.domain, d.name).unwrap(), d));
            let o = d.opsets;
            assert!(1 <= o.first && o.first <= o.newest, "{}.{}: opsets {o:?}", d.domain, d.name);
        }
        assert!(lookup("ai.onnx", "Conv").is_some() && lookup("", "Conv").is_some());
        assert!(lookup("", "FancyOp").is_none() && lookup("com.example", "Conv").is_none());
        assert!(lookup("", "FlexAttention").is_none(), "FlexAttention is in ai.onnx.preview");
    }

    #[test]
    fn the_u64_and_storage_rules_are_the_documented_ones() {
        let rule = |n: &str| lookup("", n).unwrap().dtypes;
        // Ordering ops flip u64's sign bit; add and bitwise ops use its i64 bits.
        for n in ["Less", "Max", "TopK", "ArgMin", "ReduceMax"] {
            assert_eq!(rule(n), Dtypes::U64Order, "{n}");
        }
        for n in ["Add", "Mul", "BitwiseXor", "Pad", "Equal"] {
            assert_eq!(rule(n), Dtypes::U64AsI64, "{n}");
        }
        for n in ["Reshape", "Gather", "Cast", "QuantizeLinear", "Where"] {
            assert_eq!(rule(n), Dtypes::AsIs, "{n}");
        }
        assert_eq!(rule("Div"), Dtypes::Compute);
        assert_eq!(lookup("", "TopK").unwrap().index_outputs, [1]);
        assert_eq!(lookup("", "Shape").unwrap().index_outputs, [0]);
    }
}
