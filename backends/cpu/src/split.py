import os
O = "/tmp/orig_ops"
D = "/work/main/crates/onnx/src/ops"
def lines(f):
    return open(os.path.join(O, f)).read().split("\n")
C = lines("compose.rs"); M = lines("compose_more.rs"); N = lines("compose_nn.rs"); X = lines("compose_misc.rs")
def seg(L, a, b):  # 1-based inclusive
    return "\n".join(L[a-1:b]) + "\n"
def sub(s, old, new, count):
    assert s.count(old) == count, (old, s.count(old))
    return s.replace(old, new)

def write(name, text):
    open(os.path.join(D, name), "w").write(text)

# builders.rs
write("builders.rs",
"""//! The small builders the op modules share: intermediate values of the node being imported
//! (`tmp`, `bin`, `un`, `cmp`, `reshape`, `last_axis`), scalar and tensor constants of a given
//! dtype (`scalar`, `tensor_as`, `konst_as`), and the float32-only input check `float_x`.

use kiln_ir::{BinaryOp as B, CmpOp, DType, Data, Op, Tensor, UnaryOp as U, ValueId};

use super::{unsupported, NodeCx, OpResult};

""" + seg(C, 12, 64) + "\n" + seg(X, 10, 21))

# activation.rs
write("activation.rs",
"""//! Activations imported as compositions of existing HIR ops: Elu, Selu, Celu, Softplus,
//! Softsign, ThresholdedRelu, HardSwish, Mish, Gelu, Swish, SwiGLU, PRelu, Shrink and Hardmax.
//! (Relu, LeakyRelu, Sigmoid, HardSigmoid and Tanh are HIR unary ops; Softmax and LogSoftmax
//! are in [`super::nn`].)

use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, ReduceOp, UnaryOp as U, ValueId};

use super::builders::{bin, cmp, float_x, konst_as, reshape, scalar, tmp, un};
use super::{invalid, norm_axis, unsupported, NodeCx, OpResult};

""" + seg(C, 66, 246) + "\n" + seg(N, 10, 48))

# norm.rs
write("norm.rs",
"""//! Normalizations imported as compositions of existing HIR ops: LayerNormalization,
//! InstanceNormalization, GroupNormalization, MeanVarianceNormalization, LpNormalization and
//! RMSNormalization. (BatchNormalization and LRN are in [`super::nn`].)

use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, ReduceOp, UnaryOp as U, ValueId};

use super::builders::{bin, cmp, float_x, reshape, scalar, tmp, un};
use super::{invalid, norm_axes, norm_axis, unsupported, NodeCx, OpResult};

""" + seg(C, 248, 402) + "\n" + seg(M, 12, 30))

# signal.rs
sig = seg(M, 96, 126) + "\n" + seg(M, 223, 459)
sig = sub(sig, "use super::compose::{konst_as, reshape};", "use super::builders::{konst_as, reshape};", 2)
write("signal.rs",
"""//! Signal processing: the window generators (HannWindow, HammingWindow, BlackmanWindow) and
//! MelWeightMatrix, which are constants, and DFT and STFT as MatMuls with constant cosine and
//! sine matrices.

use kiln_ir::{BinaryOp as B, DType, Op, UnaryOp as U, ValueId};

use super::builders::{bin, tensor_as, tmp, un};
use super::{invalid, norm_axis, unsupported, NodeCx, OpError, OpResult};
use crate::data::dtype_of;

""" + sig)

# training.rs: append losses
tr = open(os.path.join(O, "training.rs")).read()
tr = sub(tr, """//! The optimizer ops of the `ai.onnx.preview.training` domain (Adagrad, Momentum, Adam) as
//! compositions of elementwise ops: one update step of every tensor they are given.
""", """//! The optimizer ops of the `ai.onnx.preview.training` domain (Adagrad, Momentum, Adam) as
//! compositions of elementwise ops: one update step of every tensor they are given. Also the
//! losses NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (default domain), as a one-hot
//! Where, sums and LogSoftmax.
""", 1)
tr = sub(tr, "use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, UnaryOp as U, ValueId};",
             "use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, ReduceOp, UnaryOp as U, ValueId};", 1)
tr = sub(tr, "use super::compose::{bin, cmp, scalar, tmp, un};", "use super::builders::{bin, cmp, float_x, scalar, tmp, un};", 1)
loss = seg(M, 128, 221)
loss = sub(loss, "super::compose::", "super::builders::", 3)
write("training.rs", tr + "\n" + loss)

# elementwise.rs: add hyperbolic and round after clip
el = open(os.path.join(O, "math.rs")).read()
el = sub(el, "//! Elementwise arithmetic, comparisons, logic, Cast, Where, Clip, MatMul and Gemm.\n",
"""//! Elementwise arithmetic, comparisons, logic, Cast, Where, Clip, MatMul and Gemm, and the
//! compositions of elementwise ops: the hyperbolic functions (Sinh, Cosh, Asinh, Acosh, Atanh)
//! and Round (half to even).
""", 1)
el = sub(el, "use kiln_ir::{BinaryOp, CmpOp, DType, Op, Tensor, UnaryOp, ValueId};\n",
"use kiln_ir::{BinaryOp, BinaryOp as B, CmpOp, DType, Op, Tensor, UnaryOp, UnaryOp as U, ValueId};\n", 1)
el = sub(el, "use super::{invalid, norm_axis, unsupported, NodeCx, OpResult};\n",
"use super::builders::{bin, cmp, float_x, scalar, un};\nuse super::{invalid, norm_axis, unsupported, NodeCx, OpResult};\n", 1)
anchor = "pub(super) fn where_("
i = el.index(anchor)
# back up to the start of where_'s doc comment
pre = el[:i]
j = pre.rstrip("\n").rfind("\n\n") + 2
el = el[:j] + seg(M, 32, 94) + "\n" + el[j:]
write("elementwise.rs", el)

# linalg.rs
write("linalg.rs",
"""//! Linear algebra beyond MatMul and Gemm (in [`super::elementwise`]), as compositions of
//! existing HIR ops: Einsum (a batched MatMul when it has that form, broadcasting otherwise)
//! and Det (the Leibniz formula for small matrices).

use kiln_ir::{BinaryOp as B, DType, Op, ReduceOp, ValueId};

use super::builders::{bin, konst_as, last_axis, reshape, scalar, tmp};
use super::{invalid, unsupported, NodeCx, OpError, OpResult};

""" + seg(N, 247, 398) + "\n" + seg(N, 446, 504) + "\n" + seg(X, 141, 201))

# conv.rs
cv = open(os.path.join(O, "conv_transpose.rs")).read()
cv = sub(cv, """//! ConvTranspose (1-D and 2-D): pads, output_padding, output_shape and auto_pad are resolved
//! here into the HIR op's begin pads and output extents, as ONNX's reference does. Col2Im
//! (2-D) is a grouped ConvTranspose.

use kiln_ir::{Op, ValueId};

use super::{invalid, unsupported, NodeCx, OpResult};
""", """//! Convolutions other than Conv (in [`super::nn`]). ConvTranspose (1-D and 2-D): pads,
//! output_padding, output_shape and auto_pad are resolved here into the HIR op's begin pads
//! and output extents, as ONNX's reference does. Col2Im (2-D) is a grouped ConvTranspose.
//! DeformConv (2-D) is GridSample taps and a MatMul; CausalConvWithState is a depthwise Conv
//! over the input left-padded with the past state.

use kiln_ir::{BinaryOp as B, DType, Op, UnaryOp as U, ValueId, Window};

use super::builders::{bin, konst_as, reshape, scalar, tmp, un};
use super::{invalid, unsupported, NodeCx, OpResult};
""", 1)
write("conv.rs", cv + "\n" + seg(X, 226, 320) + "\n" + seg(N, 400, 444))

# pool.rs
write("pool.rs",
"""//! Pooling composed of existing HIR ops: LpPool, as a depthwise Conv with a ones kernel.
//! (MaxPool, AveragePool and the global pools are in [`super::nn`], MaxUnpool in
//! [`super::index`].)

use kiln_ir::{BinaryOp as B, DType, Op, UnaryOp as U, ValueId, Window};

use super::builders::{bin, konst_as, reshape, scalar, tmp, un};
use super::nn::same_pads;
use super::{invalid, unsupported, NodeCx, OpResult};

""" + seg(N, 50, 182))

# resize.rs: add affine_grid before tests
rs = open(os.path.join(O, "resize.rs")).read()
rs = sub(rs, """//! order of the float additions.
""", """//! order of the float additions. Also AffineGrid: a constant base grid times θᵀ.
""", 1)
rs = sub(rs, "use super::compose::{bin, konst_as, scalar, tmp};", "use super::builders::{bin, konst_as, scalar, tmp};", 1)
rs = sub(rs, "\n#[cfg(test)]\nmod tests {", "\n" + seg(N, 184, 245) + "\n#[cfg(test)]\nmod tests {", 1)
write("resize.rs", rs)

# ml.rs
write("ml.rs",
"""//! The `ai.onnx.ml` ops Binarizer, ArrayFeatureExtractor and TreeEnsemble (every tree
//! unrolled into branch conditions), and TfIdfVectorizer (n-gram counts over integer tokens;
//! in the default domain), as compositions of existing HIR ops.

use kiln_ir::{BinaryOp as B, CmpOp, DType, Op, ReduceOp, ValueId};

use super::builders::{bin, cmp, konst_as, last_axis, reshape, scalar, tmp, un};
use super::{invalid, unsupported, NodeCx, OpResult};

""" + seg(X, 23, 139) + "\n" + seg(X, 203, 224) + "\n" + seg(X, 322, 523))
