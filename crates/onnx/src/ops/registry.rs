//! Every ONNX op Kiln imports, in one table: its domain and name, how it is imported, and
//! what it does with the narrow element types. The known-op list, the storage ops, the
//! index outputs and the u64 rules are all read from it; an op is unknown exactly when
//! [`lookup`] does not find it.
//!
//! Ops of the default domain are grouped by family; each entry's import function lives in
//! the module its path names. Opset differences are handled inside each import function
//! (by [`NodeCx::opset`]), which refuses versions it does not implement.

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
}

const fn op(name: &'static str, import: NodeImport) -> OpDef {
    OpDef { domain: "", name, route: Route::Node(import), dtypes: Dtypes::Compute, index_outputs: &[] }
}

const fn routed(domain: &'static str, name: &'static str, route: Route) -> OpDef {
    OpDef { domain, name, route, dtypes: Dtypes::AsIs, index_outputs: &[] }
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
    op("Add", |cx| binary(cx, BinaryOp::Add)).u64_as_i64(),
    op("Sub", |cx| binary(cx, BinaryOp::Sub)).u64_as_i64(),
    op("Mul", |cx| binary(cx, BinaryOp::Mul)).u64_as_i64(),
    op("Div", |cx| binary(cx, BinaryOp::Div)),
    op("Pow", pow),
    op("Mod", |cx| {
        let fmod = cx.attrs.int_or("fmod", 0)? != 0;
        binary(cx, BinaryOp::Mod { fmod })
    }),
    op("Sum", |cx| variadic(cx, BinaryOp::Add, false)).u64_as_i64(),
    op("Mean", |cx| variadic(cx, BinaryOp::Add, true)),
    op("Max", |cx| variadic(cx, BinaryOp::Max, false)).u64_order(),
    op("Min", |cx| variadic(cx, BinaryOp::Min, false)).u64_order(),
    op("Sqrt", |cx| unary(cx, UnaryOp::Sqrt)),
    op("Reciprocal", |cx| unary(cx, UnaryOp::Reciprocal)),
    op("Exp", |cx| unary(cx, UnaryOp::Exp)),
    op("Log", |cx| unary(cx, UnaryOp::Log)),
    op("Neg", |cx| unary(cx, UnaryOp::Neg)).u64_as_i64(),
    op("Abs", |cx| unary(cx, UnaryOp::Abs)),
    op("Floor", |cx| unary(cx, UnaryOp::Floor)),
    op("Ceil", |cx| unary(cx, UnaryOp::Ceil)),
    op("Round", round),
    op("Sign", |cx| unary(cx, UnaryOp::Sign)),
    op("Sin", |cx| unary(cx, UnaryOp::Sin)),
    op("Cos", |cx| unary(cx, UnaryOp::Cos)),
    op("Tan", |cx| unary(cx, UnaryOp::Tan)),
    op("Asin", |cx| unary(cx, UnaryOp::Asin)),
    op("Acos", |cx| unary(cx, UnaryOp::Acos)),
    op("Atan", |cx| unary(cx, UnaryOp::Atan)),
    op("Sinh", hyperbolic),
    op("Cosh", hyperbolic),
    op("Asinh", hyperbolic),
    op("Acosh", hyperbolic),
    op("Atanh", hyperbolic),
    op("Erf", |cx| unary(cx, UnaryOp::Erf)),
    op("Clip", clip),
    op("CumSum", shape::cumsum),
    op("CumProd", shape::cumsum),
    op("BitShift", bit_shift),
    op("BitwiseAnd", |cx| binary(cx, BinaryOp::And)).u64_as_i64(),
    op("BitwiseOr", |cx| binary(cx, BinaryOp::Or)).u64_as_i64(),
    op("BitwiseXor", |cx| binary(cx, BinaryOp::Xor)).u64_as_i64(),
    op("BitwiseNot", |cx| unary(cx, UnaryOp::Not)).u64_as_i64(),
    // Logic, comparison and tests.
    op("And", |cx| binary(cx, BinaryOp::And)),
    op("Or", |cx| binary(cx, BinaryOp::Or)),
    op("Xor", |cx| binary(cx, BinaryOp::Xor)),
    op("Not", |cx| unary(cx, UnaryOp::Not)),
    op("Equal", |cx| compare(cx, CmpOp::Equal)).u64_as_i64(),
    op("Less", |cx| compare(cx, CmpOp::Less)).u64_order(),
    op("LessOrEqual", |cx| compare(cx, CmpOp::LessOrEqual)).u64_order(),
    op("Greater", |cx| compare(cx, CmpOp::Greater)).u64_order(),
    op("GreaterOrEqual", |cx| compare(cx, CmpOp::GreaterOrEqual)).u64_order(),
    op("Where", where_).storage(),
    op("IsNaN", index::is_nan),
    op("IsInf", index::is_inf),
    // Linear algebra.
    op("MatMul", matmul),
    op("Gemm", gemm),
    op("Einsum", linalg::einsum),
    op("Det", linalg::det),
    // Convolution.
    op("Conv", nn::conv),
    op("ConvTranspose", conv::conv_transpose),
    op("Col2Im", conv::col2im),
    op("DeformConv", conv::deform_conv),
    op("CausalConvWithState", conv::causal_conv_with_state),
    // Pooling.
    op("MaxPool", nn::max_pool).indices(&[1]),
    op("AveragePool", nn::average_pool),
    op("GlobalAveragePool", |cx| nn::global_pool(cx, kiln_ir::ReduceOp::Mean)),
    op("GlobalMaxPool", |cx| nn::global_pool(cx, kiln_ir::ReduceOp::Max)),
    op("LpPool", pool::lp_pool),
    op("MaxUnpool", index::max_unpool),
    // Normalization.
    op("BatchNormalization", nn::batch_norm),
    op("LRN", nn::lrn),
    op("LayerNormalization", norm::layer_norm),
    op("InstanceNormalization", norm::instance_norm),
    op("GroupNormalization", norm::group_norm),
    op("MeanVarianceNormalization", norm::mvn),
    op("LpNormalization", norm::lp_norm),
    op("RMSNormalization", norm::rms_norm),
    // Activations.
    op("Relu", |cx| unary(cx, UnaryOp::Relu)),
    op("LeakyRelu", |cx| {
        let alpha = cx.attrs.float_or("alpha", 0.01)?;
        unary(cx, UnaryOp::LeakyRelu { alpha })
    }),
    op("Sigmoid", |cx| unary(cx, UnaryOp::Sigmoid)),
    op("HardSigmoid", |cx| {
        let alpha = cx.attrs.float_or("alpha", 0.2)?;
        let beta = cx.attrs.float_or("beta", 0.5)?;
        unary(cx, UnaryOp::HardSigmoid { alpha, beta })
    }),
    op("Tanh", |cx| unary(cx, UnaryOp::Tanh)),
    op("Softmax", |cx| nn::softmax(cx, false)),
    op("LogSoftmax", |cx| nn::softmax(cx, true)),
    op("Hardmax", activation::hardmax),
    op("Elu", activation::activation),
    op("Selu", activation::activation),
    op("Celu", activation::activation),
    op("Softplus", activation::activation),
    op("Softsign", activation::activation),
    op("ThresholdedRelu", activation::activation),
    op("HardSwish", activation::activation),
    op("Mish", activation::activation),
    op("Gelu", activation::activation),
    op("Swish", activation::activation),
    op("PRelu", activation::prelu),
    op("Shrink", activation::shrink),
    op("SwiGLU", activation::swiglu),
    // Recurrent layers (unrolled).
    op("RNN", rnn::recurrent),
    op("GRU", rnn::recurrent),
    op("LSTM", rnn::recurrent),
    // Attention.
    op("Attention", attention::attention),
    op("RotaryEmbedding", attention::rotary_embedding),
    op("LinearAttention", attention::linear_attention),
    // Quantization.
    op("DequantizeLinear", quant::dequantize_linear).storage(),
    op("QuantizeLinear", quant::quantize_linear).storage(),
    op("DynamicQuantizeLinear", quant::dynamic_quantize_linear).storage(),
    op("MatMulInteger", quant::matmul_integer).storage(),
    op("ConvInteger", quant::conv_integer).storage(),
    op("QLinearMatMul", quant::qlinear_matmul).storage(),
    op("QLinearConv", quant::qlinear_conv).storage(),
    // Resampling.
    op("Resize", resize::resize),
    op("Upsample", resize::upsample),
    op("GridSample", index::grid_sample),
    op("AffineGrid", resize::affine_grid),
    op("RoiAlign", index::roi_align),
    op("CenterCropPad", shape::center_crop_pad),
    // Shape and data movement.
    op("Reshape", tensor::reshape).storage(),
    op("Flatten", tensor::flatten).storage(),
    op("Squeeze", tensor::squeeze).storage(),
    op("Unsqueeze", tensor::unsqueeze).storage(),
    op("Transpose", tensor::transpose).storage(),
    op("Concat", tensor::concat).storage(),
    op("Split", tensor::split).storage(),
    op("Slice", tensor::slice).storage(),
    op("Expand", tensor::expand).storage(),
    op("Shape", tensor::shape).storage().indices(&[0]),
    op("Size", tensor::size).storage().indices(&[0]),
    op("ConstantOfShape", tensor::constant_of_shape).storage(),
    op("Constant", tensor::constant).storage(),
    op("Identity", tensor::identity).storage(),
    op("Range", tensor::range).storage(),
    op("Cast", cast).storage(),
    op("CastLike", cast_like).storage(),
    op("BitCast", bit_cast).storage(),
    op("Tile", shape::tile).storage(),
    op("DepthToSpace", shape::depth_to_space).storage(),
    op("SpaceToDepth", shape::space_to_depth).storage(),
    op("Pad", shape::pad).u64_as_i64(),
    op("EyeLike", shape::eye_like),
    op("Trilu", shape::trilu),
    op("OneHot", shape::one_hot),
    op("Dropout", nn::dropout).storage(),
    // Indexing.
    op("Gather", tensor::gather).storage(),
    op("GatherElements", index::gather_elements).storage(),
    op("GatherND", index::gather_nd).storage(),
    op("Scatter", index::scatter_elements),
    op("ScatterElements", index::scatter_elements),
    op("ScatterND", index::scatter_nd),
    op("TensorScatter", shape::tensor_scatter),
    op("TopK", index::top_k).u64_order().indices(&[1]),
    op("ArgMax", |cx| index::arg_reduce(cx, true)).u64_order().indices(&[0]),
    op("ArgMin", |cx| index::arg_reduce(cx, false)).u64_order().indices(&[0]),
    op("ReverseSequence", index::reverse_sequence),
    op("Compress", data_dependent::compress).storage(),
    op("NonZero", data_dependent::non_zero).storage().indices(&[0]),
    op("Unique", data_dependent::unique).storage(),
    op("NonMaxSuppression", data_dependent::non_max_suppression),
    // Reductions.
    op("ReduceMean", reduce::reduce),
    op("ReduceSum", reduce::reduce),
    op("ReduceMax", reduce::reduce).u64_order(),
    op("ReduceMin", reduce::reduce).u64_order(),
    op("ReduceProd", reduce::reduce),
    op("ReduceSumSquare", reduce::reduce),
    op("ReduceL1", reduce::reduce),
    op("ReduceL2", reduce::reduce),
    op("ReduceLogSum", reduce::reduce),
    op("ReduceLogSumExp", reduce::reduce),
    // Signal processing.
    op("DFT", signal::dft),
    op("STFT", signal::stft),
    op("HannWindow", signal::window),
    op("HammingWindow", signal::window),
    op("BlackmanWindow", signal::window),
    op("MelWeightMatrix", signal::mel_weight_matrix),
    // ai.onnx.ml ops in the default domain.
    op("TfIdfVectorizer", ml::tfidf_vectorizer),
    // Losses.
    op("NegativeLogLikelihoodLoss", training::nll_loss),
    op("SoftmaxCrossEntropyLoss", training::softmax_cross_entropy),
    // Ops with subgraphs, sequences and optionals, graph attributes.
    routed("", "If", Route::Control),
    routed("", "Loop", Route::Control),
    routed("", "Scan", Route::Control),
    routed("", "SequenceMap", Route::Control),
    routed("", "SequenceConstruct", Route::Sequence),
    routed("", "SequenceEmpty", Route::Sequence),
    routed("", "SequenceInsert", Route::Sequence),
    routed("", "SequenceAt", Route::Sequence),
    routed("", "SequenceErase", Route::Sequence),
    routed("", "SequenceLength", Route::Sequence),
    routed("", "SplitToSequence", Route::Sequence),
    routed("", "ConcatFromSequence", Route::Sequence),
    routed("", "Optional", Route::Sequence),
    routed("", "OptionalHasElement", Route::Sequence),
    routed("", "OptionalGetElement", Route::Sequence),
    routed("ai.onnx.preview", "FlexAttention", Route::Flex),
    // Other domains.
    op("Binarizer", ml::binarizer).in_domain("ai.onnx.ml"),
    op("ArrayFeatureExtractor", ml::array_feature_extractor).in_domain("ai.onnx.ml"),
    op("TreeEnsemble", ml::tree_ensemble).in_domain("ai.onnx.ml"),
    op("Adagrad", training::import).in_domain("ai.onnx.preview.training"),
    op("Momentum", training::import).in_domain("ai.onnx.preview.training"),
    op("Adam", training::import).in_domain("ai.onnx.preview.training"),
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
