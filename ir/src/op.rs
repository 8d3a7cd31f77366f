//! The HIR op set. Attributes are typed and fully resolved: anything that ONNX passes as a
//! shape-like input (Reshape's shape, Slice's starts, …) is folded to an attribute by the
//! importer, so every op's output type follows from its input types and attributes alone.

use crate::minifloat::E8M0Round;
use crate::DType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    /// Integer remainder with the sign of the divisor (numpy `mod`); float: C `fmod` when
    /// `fmod` is set.
    Mod {
        fmod: bool,
    },
    /// Logical on bools, bitwise on integers.
    And,
    Or,
    Xor,
    /// Integer shifts (ONNX BitShift): a shift by a negative amount or by at least the
    /// width of the compute type gives 0 (left) or the sign fill (right, arithmetic).
    Shl,
    Shr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Abs,
    Sqrt,
    Reciprocal,
    Exp,
    Log,
    Relu,
    Sigmoid,
    Tanh,
    Erf,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Floor,
    Ceil,
    /// The nearest integer, ties to even (ONNX Round, `np.rint`).
    Round,
    Not,
    Sign,
    /// `x if x >= 0 else alpha * x`
    LeakyRelu {
        alpha: f32,
    },
    /// `max(0, min(1, alpha * x + beta))`
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `min(max(x, lo), hi)`; bounds are in the element type (converted for integers).
    Clip {
        lo: f64,
        hi: f64,
    },
}

/// How ScatterElements / ScatterND combine an update with the element it lands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScatterReduction {
    /// Replace (with duplicate indices, the last update in row-major order wins).
    None,
    Add,
    Mul,
    Max,
    Min,
}

impl ScatterReduction {
    pub fn name(self) -> &'static str {
        match self {
            ScatterReduction::None => "none",
            ScatterReduction::Add => "add",
            ScatterReduction::Mul => "mul",
            ScatterReduction::Max => "max",
            ScatterReduction::Min => "min",
        }
    }
    pub fn from_name(s: &str) -> Option<ScatterReduction> {
        Some(match s {
            "none" => ScatterReduction::None,
            "add" => ScatterReduction::Add,
            "mul" => ScatterReduction::Mul,
            "max" => ScatterReduction::Max,
            "min" => ScatterReduction::Min,
            _ => return None,
        })
    }
}

/// GridSample's interpolation and padding modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GridMode {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GridPadding {
    Zeros,
    Border,
    Reflection,
}

impl GridMode {
    pub fn name(self) -> &'static str {
        match self {
            GridMode::Nearest => "nearest",
            GridMode::Linear => "linear",
            GridMode::Cubic => "cubic",
        }
    }
    pub fn from_name(s: &str) -> Option<GridMode> {
        [GridMode::Nearest, GridMode::Linear, GridMode::Cubic].into_iter().find(|m| m.name() == s)
    }
}

impl GridPadding {
    pub fn name(self) -> &'static str {
        match self {
            GridPadding::Zeros => "zeros",
            GridPadding::Border => "border",
            GridPadding::Reflection => "reflection",
        }
    }
    pub fn from_name(s: &str) -> Option<GridPadding> {
        [GridPadding::Zeros, GridPadding::Border, GridPadding::Reflection].into_iter().find(|m| m.name() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
}

/// 2-D window geometry shared by Conv and the pools. Pads are explicit (auto_pad is resolved
/// by the importer): `pads = [top, left, bottom, right]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub pads: [usize; 4],
    pub dilations: [usize; 2],
}

impl Window {
    /// Output extent along spatial axis `a` (0 = H, 1 = W) for input extent `n`.
    pub fn out_dim(&self, a: usize, n: usize, ceil_mode: bool) -> Option<usize> {
        if self.kernel[a] == 0 || self.dilations[a] == 0 {
            return None;
        }
        let eff = self.dilations[a].checked_mul(self.kernel[a] - 1)?.checked_add(1)?;
        let padded = n.checked_add(self.pads[a])?.checked_add(self.pads[a + 2])?;
        if padded < eff || self.strides[a] == 0 {
            return None;
        }
        let span = padded - eff;
        let mut out = if ceil_mode { span.div_ceil(self.strides[a]) } else { span / self.strides[a] } + 1;
        // ONNX/PyTorch rule: the last window must start inside the input or the left padding.
        if ceil_mode && (out - 1) * self.strides[a] >= n + self.pads[a] {
            out -= 1;
        }
        Some(out)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Elementwise with numpy broadcasting; both inputs have the same dtype.
    Binary(BinaryOp),
    /// Elementwise comparison with broadcasting; bool result.
    Compare(CmpOp),
    /// Elementwise.
    Unary(UnaryOp),
    /// `cond ? x : y`, broadcasting all three.
    Where,
    /// Conversion to `to` with ONNX Cast semantics (see `ops::elementwise::cast`).
    /// `saturate` only matters for float8 and E8M0 targets: out-of-range values clamp to the
    /// largest finite value instead of becoming inf/NaN (ONNX's `saturate` attribute);
    /// `round` only for E8M0 targets (`round_mode`).
    Cast {
        to: DType,
        saturate: bool,
        round: E8M0Round,
    },
    /// The same bytes read as another type of the same size (ONNX BitCast); a view, like
    /// Reshape.
    BitCast {
        to: DType,
    },
    /// Numpy `matmul` semantics (1-D operands promoted, batch dims broadcast).
    MatMul,
    /// `alpha * op(A) @ op(B) + beta * C`; inputs A, B and optionally C (unidirectionally
    /// broadcast to the result).
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    /// 2-D convolution, NCHW input, OIHW weights, optional bias `[O]`.
    Conv {
        window: Window,
        group: usize,
    },
    /// 2-D transposed convolution: NCHW input `[N, C, H, W]`, weights `[C, M/group, kH, kW]`,
    /// optional bias `[M]`. Along each spatial axis, input position `i` reaches output
    /// position `o = i·stride + t·dilation − pad` through tap `t`; `pads` are the begin pads
    /// (negative when the output is extended at the start) and `out_hw` the output extents
    /// (both resolved by the importer from pads, output_padding, output_shape and auto_pad).
    ConvTranspose {
        kernel: [usize; 2],
        strides: [usize; 2],
        dilations: [usize; 2],
        pads: [i64; 2],
        out_hw: [usize; 2],
        group: usize,
    },
    MaxPool {
        window: Window,
        ceil_mode: bool,
    },
    /// MaxPool's `Indices` output: for each window, the flat index into the input of its
    /// first maximum (scan order), row-major or, with `column_major`, `h + w·H` within a plane.
    MaxPoolIndices {
        window: Window,
        ceil_mode: bool,
        column_major: bool,
    },
    AveragePool {
        window: Window,
        ceil_mode: bool,
        count_include_pad: bool,
    },
    /// Inference-mode batch normalization over axis 1: inputs x, scale, bias, mean, var.
    BatchNorm {
        epsilon: f32,
    },
    /// Local response normalization across channels (axis 1).
    Lrn {
        size: usize,
        alpha: f32,
        beta: f32,
        bias: f32,
    },
    /// Layer normalization over the axes `axis..`: `(x - mean) / sqrt(var + epsilon) · scale
    /// (+ bias)`, the mean and (biased) variance taken over those axes; inputs `x`, `scale`
    /// and an optional `bias`, which broadcast to `x`. Kept whole through the HIR passes and
    /// expanded into reductions and elementwise ops by the `decompose` step for a backend
    /// that does not lower it whole (`passes/src/decompose.rs`).
    LayerNorm {
        axis: usize,
        epsilon: f32,
    },
    /// RMS normalization over the axes `axis..`: `x / sqrt(mean(x²) + epsilon) · scale`;
    /// inputs `x` and `scale`, which broadcasts to `x`. Kept whole like [`Op::LayerNorm`].
    RmsNorm {
        axis: usize,
        epsilon: f32,
    },
    /// Softmax along one axis (opset-13 semantics; the importer rewrites older forms).
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },
    /// Reduction over `axes` (sorted, unique); an empty list reduces nothing (identity).
    Reduce {
        op: ReduceOp,
        axes: Vec<usize>,
        keepdims: bool,
    },
    /// Same elements, new shape (covers Flatten, Squeeze and Unsqueeze).
    Reshape {
        shape: Vec<usize>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    Concat {
        axis: usize,
    },
    /// Strided slice: for every axis, `(start, step)`; the output shape is the result type.
    /// Steps may be negative; `start` is already clamped into range.
    Slice {
        starts: Vec<i64>,
        steps: Vec<i64>,
        out_shape: Vec<usize>,
    },
    /// Gather along `axis` with an integer index tensor (negative indices wrap).
    Gather {
        axis: usize,
    },
    /// GatherElements: `out[i] = x[i with i[axis] := idx[i]]` (negative indices wrap); the
    /// result has the indices' shape.
    GatherElements {
        axis: usize,
    },
    /// GatherND: the last indices dimension (length m) indexes data dimensions
    /// `batch_dims..batch_dims + m`; the first `batch_dims` dimensions are shared.
    GatherNd {
        batch_dims: usize,
    },
    /// ScatterElements: inputs data, indices, updates (same shape as indices); the result is
    /// data with `out[u with u[axis] := idx[u]] (op)= updates[u]`.
    ScatterElements {
        axis: usize,
        reduction: ScatterReduction,
    },
    /// ScatterND: inputs data, indices `[.., k]`, updates `indices.shape[..-1] ++ data.shape[k..]`.
    ScatterNd {
        reduction: ScatterReduction,
    },
    /// GridSample (2-D or 3-D): input `[N, C, (D,) H, W]`, grid `[N, (Do,) Ho, Wo, 2 or 3]`
    /// of normalized (x, y(, z)) coordinates in [-1, 1]; ONNX reference semantics.
    GridSample {
        mode: GridMode,
        padding: GridPadding,
        align_corners: bool,
    },
    /// RoiAlign: input `[N, C, H, W]`, rois `[R, 4]` (x1, y1, x2, y2), batch indices `[R]`;
    /// result `[R, C, out_h, out_w]`, averaging (or, with `max`, taking the largest of) a fixed
    /// `sampling_ratio`² grid of bilinear samples per bin, as ONNX's reference does.
    RoiAlign {
        out_hw: [usize; 2],
        sampling_ratio: usize,
        spatial_scale: f32,
        max: bool,
        half_pixel: bool,
    },
    /// Elementwise NaN test (bool result).
    IsNaN,
    /// Elementwise infinity test (bool result): `-inf` counts when `negative`, `+inf` when
    /// `positive`.
    IsInf {
        negative: bool,
        positive: bool,
    },
    /// ArgMax (`max`) / ArgMin along `axis`: the i64 index of the first (`select_last`: last)
    /// extreme element.
    ArgReduce {
        max: bool,
        axis: usize,
        keepdims: bool,
        select_last: bool,
    },
    /// TopK's indices: along `axis`, the positions of the `k` largest (or smallest) elements,
    /// in order (ties: the lower position first). TopK's values are a GatherElements of them.
    TopKIndices {
        axis: usize,
        k: usize,
        largest: bool,
    },
    /// Broadcast to a shape.
    Expand {
        shape: Vec<usize>,
    },
    /// The coordinates of the non-zero elements of input 0 (row-major order), packed in one
    /// i64 vector of `1 + rank·numel` elements: their count `n`, then `rank` rows of `n`
    /// coordinates each (ONNX NonZero's `[rank, n]` output at the start), the rest unused
    /// (zero). Its size depends on data: the importer reads the count as the run-time shape.
    NonZero,
    /// ONNX NonMaxSuppression of boxes `[B, N, 4]` (input 0) and scores `[B, C, N]` (input 1)
    /// with the most boxes per class (input 2, i64), the IoU threshold (input 3) and the score
    /// threshold (input 4, f32; boxes must score above it): per batch and class, the highest
    /// scoring boxes (ties: the lower index first) that overlap no box kept before by more than
    /// the threshold. Packed like [`Op::NonZero`]: `1 + B·C·N·3` i64, the count `n` of kept
    /// boxes, then `n` rows of (batch, class, box), the rest zero.
    NonMaxSuppression {
        center_point_box: bool,
    },
    /// Copy (kept only where a graph output must be a distinct buffer).
    Identity,
    /// The value of the case taken at run time: input 0 is the key (one i64), and key `k`
    /// selects input `1 + k`, which is computed only in that case (its node is guarded by
    /// `key == k`, see [`crate::graph::Guard`]). The cases have one dtype and rank; the
    /// result's shape is each dim's largest size among them (the sizes of the case taken
    /// are known only at run time, so when they differ the result can only be a graph
    /// output, whose shape the code then reports).
    Merge,
    /// Starts a loop run at run time (ONNX Loop that is not unrolled): inputs are the most
    /// iterations (one integer), the condition (one bool) and the loop-carried values'
    /// initial values; results are the iteration number (i64 scalar) and the carried values
    /// as one iteration sees them. The body's nodes are guarded by the iteration number with
    /// [`crate::graph::Guard::LOOP`]; [`Op::LoopEnd`] closes it.
    LoopBegin,
    /// Ends the loop of the iteration number in input 0: input 1 is the condition for the next
    /// iteration, then the `states` carried values' next values, then the values each
    /// iteration appends to a scan output. Results: the carried values after the last
    /// iteration, each scan output stacked (at most `rows` iterations: `[rows, ...]`, the
    /// rows past the iterations run unused), then the number of iterations run (i64 scalar).
    LoopEnd {
        states: usize,
        rows: usize,
    },
    /// Input 0, passed through; the run stops with `message` when an element of input 1
    /// (bool) is false. A check on data the compiler cannot see (a shape given at run time).
    Assert {
        message: String,
    },
    /// An op Kiln does not (yet) support; kept so that every unsupported op is reported at once.
    Unsupported {
        op_type: String,
        domain: String,
        opset: i64,
    },
}

/// The family an op belongs to. Each family is one file in `ir/src/ops/` that holds the
/// type rule, the reference evaluation and the text form (attributes printed and parsed) of
/// its ops; the dispatchers in `ops/mod.rs` route by this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Arithmetic, comparison, unary math, `where`, casts.
    Elementwise,
    /// Ops that only move elements: reshape, transpose, concat, slice, gather, expand, bitcast.
    Shape,
    /// MatMul and Gemm.
    Linalg,
    /// Convolutions, pooling, normalizations, softmax.
    Nn,
    /// Reductions over axes.
    Reduce,
    /// Sampling at computed coordinates: RoiAlign, GridSample.
    Sample,
    /// Data-dependent indexing: gather/scatter by index, arg-reductions, top-k, NaN/Inf tests.
    Index,
}

impl Family {
    /// Every family, in the order the text parser tries them.
    pub const ALL: [Family; 7] =
        [Family::Elementwise, Family::Shape, Family::Linalg, Family::Nn, Family::Reduce, Family::Sample, Family::Index];
}

impl Op {
    /// The op's family (`None` for [`Op::Unsupported`], which has no rules).
    pub fn family(&self) -> Option<Family> {
        use Op::*;
        Some(match self {
            Binary(_) | Compare(_) | Unary(_) | Where | Cast { .. } => Family::Elementwise,
            BitCast { .. }
            | Identity
            | Reshape { .. }
            | Transpose { .. }
            | Concat { .. }
            | Slice { .. }
            | Gather { .. }
            | Merge
            | Assert { .. }
            | LoopBegin
            | LoopEnd { .. }
            | Expand { .. } => Family::Shape,
            MatMul | Gemm { .. } => Family::Linalg,
            Conv { .. }
            | ConvTranspose { .. }
            | MaxPoolIndices { .. }
            | MaxPool { .. }
            | AveragePool { .. }
            | BatchNorm { .. }
            | Lrn { .. }
            | LayerNorm { .. }
            | RmsNorm { .. }
            | Softmax { .. }
            | LogSoftmax { .. } => Family::Nn,
            Reduce { .. } => Family::Reduce,
            RoiAlign { .. } | GridSample { .. } => Family::Sample,
            IsNaN
            | IsInf { .. }
            | ArgReduce { .. }
            | TopKIndices { .. }
            | NonZero
            | NonMaxSuppression { .. }
            | GatherElements { .. }
            | ScatterElements { .. }
            | GatherNd { .. }
            | ScatterNd { .. } => Family::Index,
            Unsupported { .. } => return None,
        })
    }

    /// A saturating `Cast` (ONNX's default).
    pub fn cast(to: DType) -> Op {
        Op::Cast { to, saturate: true, round: E8M0Round::Up }
    }

    /// The op's name as printed in the text form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Binary(b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Pow => "pow",
                BinaryOp::Max => "max",
                BinaryOp::Min => "min",
                BinaryOp::Mod { .. } => "mod",
                BinaryOp::And => "and",
                BinaryOp::Or => "or",
                BinaryOp::Xor => "xor",
                BinaryOp::Shl => "shl",
                BinaryOp::Shr => "shr",
            },
            Op::Compare(c) => match c {
                CmpOp::Equal => "equal",
                CmpOp::Less => "less",
                CmpOp::LessOrEqual => "less_or_equal",
                CmpOp::Greater => "greater",
                CmpOp::GreaterOrEqual => "greater_or_equal",
            },
            Op::Unary(u) => match u {
                UnaryOp::Neg => "neg",
                UnaryOp::Abs => "abs",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Reciprocal => "reciprocal",
                UnaryOp::Exp => "exp",
                UnaryOp::Log => "log",
                UnaryOp::Relu => "relu",
                UnaryOp::Sigmoid => "sigmoid",
                UnaryOp::Tanh => "tanh",
                UnaryOp::Erf => "erf",
                UnaryOp::Sin => "sin",
                UnaryOp::Cos => "cos",
                UnaryOp::Tan => "tan",
                UnaryOp::Asin => "asin",
                UnaryOp::Acos => "acos",
                UnaryOp::Atan => "atan",
                UnaryOp::Floor => "floor",
                UnaryOp::Ceil => "ceil",
                UnaryOp::Round => "round",
                UnaryOp::Not => "not",
                UnaryOp::Sign => "sign",
                UnaryOp::LeakyRelu { .. } => "leaky_relu",
                UnaryOp::HardSigmoid { .. } => "hard_sigmoid",
                UnaryOp::Clip { .. } => "clip",
            },
            Op::Where => "where",
            Op::Cast { .. } => "cast",
            Op::BitCast { .. } => "bitcast",
            Op::MatMul => "matmul",
            Op::Gemm { .. } => "gemm",
            Op::Conv { .. } => "conv",
            Op::ConvTranspose { .. } => "conv_transpose",
            Op::MaxPool { .. } => "max_pool",
            Op::MaxPoolIndices { .. } => "max_pool_indices",
            Op::AveragePool { .. } => "average_pool",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Lrn { .. } => "lrn",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Softmax { .. } => "softmax",
            Op::LogSoftmax { .. } => "log_softmax",
            Op::Reduce { op, .. } => match op {
                ReduceOp::Sum => "reduce_sum",
                ReduceOp::Mean => "reduce_mean",
                ReduceOp::Max => "reduce_max",
                ReduceOp::Min => "reduce_min",
                ReduceOp::Prod => "reduce_prod",
            },
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Gather { .. } => "gather",
            Op::Expand { .. } => "expand",
            Op::GatherElements { .. } => "gather_elements",
            Op::GatherNd { .. } => "gather_nd",
            Op::ScatterElements { .. } => "scatter_elements",
            Op::ScatterNd { .. } => "scatter_nd",
            Op::IsNaN => "is_nan",
            Op::RoiAlign { .. } => "roi_align",
            Op::GridSample { .. } => "grid_sample",
            Op::TopKIndices { .. } => "top_k_indices",
            Op::NonZero => "non_zero",
            Op::NonMaxSuppression { .. } => "non_max_suppression",
            Op::IsInf { .. } => "is_inf",
            Op::ArgReduce { max: true, .. } => "arg_max",
            Op::ArgReduce { max: false, .. } => "arg_min",
            Op::Identity => "identity",
            Op::Merge => "merge",
            Op::LoopBegin => "loop_begin",
            Op::LoopEnd { .. } => "loop_end",
            Op::Assert { .. } => "assert",
            Op::Unsupported { .. } => "unsupported",
        }
    }

    /// Elementwise ops (one output element from the same-index elements of the broadcast inputs).
    pub fn is_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Binary(_) | Op::Compare(_) | Op::Unary(_) | Op::Where | Op::Cast { .. } | Op::IsNaN | Op::IsInf { .. }
        )
    }
}
