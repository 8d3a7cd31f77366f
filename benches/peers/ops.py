"""The op-level benchmark suite: one small ONNX model per case, each an op family the importer
supports at a shape taken from a real network (the source is named in each case), for
`run.py --ops`, which times Kiln against onnxruntime and OpenVINO on them like any model.

    target/peers-venv/bin/python benches/peers/run.py --ops [--ops-filter SUBSTRING] [--threads N]

Weights are constants (initializers) with a fixed seed, as exported models have them; the
activations are inputs. Models are written to target/peers/ops/<case>/model.onnx at opset 23.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 23
F = TensorProto.FLOAT
I64 = TensorProto.INT64


@dataclass
class Case:
    name: str
    family: str
    source: str
    build: Callable[[], onnx.ModelProto]


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def model(name: str, nodes, inputs: dict, outputs: dict, inits: dict | None = None) -> onnx.ModelProto:
    """`inputs`/`outputs`: name → shape (float32) or (elem type, shape); shape None: inferred."""
    def vi(n, spec):
        t, s = spec if isinstance(spec, tuple) else (F, spec)
        return helper.make_tensor_value_info(n, t, s)
    g = helper.make_graph(
        nodes if isinstance(nodes, list) else [nodes],
        name,
        [vi(n, s) for n, s in inputs.items()],
        [vi(n, s) for n, s in outputs.items()],
        [numpy_helper.from_array(v, n) for n, v in (inits or {}).items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kiln-ops-suite")
    m.ir_version = 10
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    onnx.checker.check_model(m)
    return m


def w(name: str, *shape: int, scale: float = 0.1) -> np.ndarray:
    return (_rng(name).standard_normal(shape) * scale).astype(np.float32)


def conv(name, x_shape, co, k, stride=1, pad=0, dilation=1, group=1, bias=True, transpose=False, out_pad=0):
    """Conv or ConvTranspose of N-D kernel size `k` (an int: square/cubic)."""
    nd = len(x_shape) - 2
    ci = x_shape[1]
    wshape = (ci, co // group, *([k] * nd)) if transpose else (co, ci // group, *([k] * nd))
    inits = {"w": w(name + "w", *wshape)}
    ins = ["x", "w"]
    if bias:
        inits["b"] = w(name + "b", co)
        ins.append("b")
    attrs = dict(kernel_shape=[k] * nd, strides=[stride] * nd, pads=[pad] * (2 * nd), dilations=[dilation] * nd, group=group)
    if transpose and out_pad:
        attrs["output_padding"] = [out_pad] * nd
    node = helper.make_node("ConvTranspose" if transpose else "Conv", ins, ["y"], **attrs)
    return lambda: model(name, node, {"x": list(x_shape)}, {"y": None}, inits)


def unary(name, op, shape, **attrs):
    return lambda: model(name, helper.make_node(op, ["x"], ["y"], **attrs), {"x": list(shape)}, {"y": None})


def binary(name, op, a, b, const_b=False):
    if const_b:
        return lambda: model(name, helper.make_node(op, ["a", "b"], ["y"]), {"a": list(a)}, {"y": None}, {"b": w(name, *b)})
    return lambda: model(name, helper.make_node(op, ["a", "b"], ["y"]), {"a": list(a), "b": list(b)}, {"y": None})


def norm(name, op, shape, pshape, **attrs):
    inits = {"s": w(name + "s", *pshape, scale=1.0), "b": w(name + "b", *pshape)}
    ins = ["x", "s"] if op == "RMSNormalization" else ["x", "s", "b"]
    return lambda: model(name, helper.make_node(op, ins, ["y"], **attrs), {"x": list(shape)}, {"y": list(shape)},
                         {k: inits[k] for k in ins[1:]})


def batch_norm(name, shape):
    c = shape[1]
    inits = {"s": w(name + "s", c, scale=1.0), "b": w(name + "b", c), "m": w(name + "m", c),
             "v": np.abs(w(name + "v", c, scale=1.0)) + 0.5}
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    return lambda: model(name, node, {"x": list(shape)}, {"y": None}, inits)


def matmul(name, a, b, const_b=True):
    return binary(name, "MatMul", a, b, const_b)


def gemm_fc(name, m, k, n):
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    return lambda: model(name, node, {"x": [m, k]}, {"y": None}, {"w": w(name + "w", n, k), "b": w(name + "b", n)})


def pool(name, op, shape, k, stride, pad=0):
    nd = len(shape) - 2
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[k] * nd, strides=[stride] * nd, pads=[pad] * (2 * nd))
    return lambda: model(name, node, {"x": list(shape)}, {"y": None})


def top_k(name, shape, k):
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1)
    inits = {"k": np.array([k], np.int64)}
    return lambda: model(name, node, {"x": list(shape)}, {"v": None, "i": (I64, None)}, inits)


def resize(name, shape, scale, mode):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode,
                            coordinate_transformation_mode="asymmetric" if mode == "nearest" else "half_pixel")
    inits = {"scales": np.array([1, 1, scale, scale], np.float32)}
    return lambda: model(name, node, {"x": list(shape)}, {"y": None}, inits)


def pad(name, shape, p, mode):
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)
    inits = {"pads": np.array([0, 0, p, p, 0, 0, p, p], np.int64)}
    return lambda: model(name, node, {"x": list(shape)}, {"y": None}, inits)


def gather_rows(name, rows, dim, ids):
    node = helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)
    return lambda: model(name, node, {"ids": (I64, list(ids))}, {"y": None}, {"table": w(name, rows, dim)})


def reduce(name, op, shape, axes, keepdims=1):
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)
    return lambda: model(name, node, {"x": list(shape)}, {"y": None}, {"axes": np.array(axes, np.int64)})


def transpose(name, shape, perm):
    return lambda: model(name, helper.make_node("Transpose", ["x"], ["y"], perm=perm), {"x": list(shape)}, {"y": None})


def concat(name, shapes, axis):
    ins = {f"x{i}": list(s) for i, s in enumerate(shapes)}
    return lambda: model(name, helper.make_node("Concat", list(ins), ["y"], axis=axis), ins, {"y": None})


def where_mask(name, shape):
    node = helper.make_node("Where", ["c", "x", "y0"], ["y"])
    return lambda: model(name, node, {"c": (TensorProto.BOOL, list(shape)), "x": list(shape)}, {"y": None},
                         {"y0": np.array(-1e4, np.float32)})


def rnn(name, op, seq, batch, inp, hidden):
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    inits = {"W": w(name + "W", 1, gates * hidden, inp), "R": w(name + "R", 1, gates * hidden, hidden),
             "B": w(name + "B", 1, 2 * gates * hidden)}
    node = helper.make_node(op, ["x", "W", "R", "B"], ["y"], hidden_size=hidden)
    return lambda: model(name, node, {"x": [seq, batch, inp]}, {"y": None}, inits)


def dequant(name, shape):
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=1)
    c = shape[1]
    inits = {"s": np.abs(w(name, c)) + 0.01, "z": np.zeros(c, np.uint8)}
    return lambda: model(name, node, {"x": (TensorProto.UINT8, list(shape))}, {"y": None}, inits)


def depth_to_space(name, shape, block):
    node = helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=block, mode="CRD")
    return lambda: model(name, node, {"x": list(shape)}, {"y": None})


def softmax(name, shape):
    return unary(name, "Softmax", shape, axis=-1)


CASES: list[Case] = [
    # Elementwise and activations.
    Case("add_residual", "elementwise", "ResNet-50 block residual 1x256x56x56",
         binary("add_residual", "Add", [1, 256, 56, 56], [1, 256, 56, 56])),
    Case("mul_se_scale", "elementwise", "EfficientNet-B0 squeeze-excite scale 1x96x56x56 by 1x96x1x1",
         binary("mul_se_scale", "Mul", [1, 96, 56, 56], [1, 96, 1, 1])),
    Case("sigmoid", "activation", "EfficientNet-B0 SiLU gate 1x96x112x112", unary("sigmoid", "Sigmoid", [1, 96, 112, 112])),
    Case("gelu", "activation", "BERT-base FFN 1x128x3072", unary("gelu", "Gelu", [1, 128, 3072])),
    Case("hardswish", "activation", "MobileNetV3 1x72x56x56", unary("hardswish", "HardSwish", [1, 72, 56, 56])),
    Case("softmax_attn", "activation", "BERT-base attention scores 12x128x128", softmax("softmax_attn", [12, 128, 128])),
    Case("where_mask", "logic", "GPT-2 causal mask 1x12x128x128", where_mask("where_mask", [1, 12, 128, 128])),
    # Linear algebra.
    Case("matmul_ffn", "linalg", "BERT-base FFN up 128x768 by 768x3072", matmul("matmul_ffn", [128, 768], [768, 3072])),
    Case("matmul_attn", "linalg", "BERT-base attention QK^T 12x128x64 by 12x64x128",
         matmul("matmul_attn", [12, 128, 64], [12, 64, 128], const_b=False)),
    Case("gemm_fc", "linalg", "ResNet-50 classifier 1x2048 by 1000x2048^T", gemm_fc("gemm_fc", 1, 2048, 1000)),
    # Convolutions.
    Case("conv3x3", "conv", "ResNet-50 layer1 3x3 64ch 56x56", conv("conv3x3", [1, 64, 56, 56], 64, 3, pad=1)),
    Case("conv1x1", "conv", "MobileNetV2 expansion 1x1 24->144 56x56", conv("conv1x1", [1, 24, 56, 56], 144, 1)),
    Case("conv_stem", "conv", "ResNet-50 stem 7x7 s2 3->64 224x224", conv("conv_stem", [1, 3, 224, 224], 64, 7, 2, 3)),
    Case("conv_grouped", "conv", "ResNeXt-50 32x4d 3x3 128ch group 32 56x56",
         conv("conv_grouped", [1, 128, 56, 56], 128, 3, pad=1, group=32)),
    Case("conv_grouped8", "conv", "RegNetY 3x3 128ch group 8 56x56",
         conv("conv_grouped8", [1, 128, 56, 56], 128, 3, pad=1, group=8)),
    Case("conv_dw3", "conv", "MobileNetV2 depthwise 3x3 144ch 56x56",
         conv("conv_dw3", [1, 144, 56, 56], 144, 3, pad=1, group=144)),
    Case("conv_dw7", "conv", "ConvNeXt-T depthwise 7x7 96ch 56x56", conv("conv_dw7", [1, 96, 56, 56], 96, 7, pad=3, group=96)),
    Case("conv_dw3_s2", "conv", "MobileNetV2 depthwise 3x3 s2 96ch 112x112",
         conv("conv_dw3_s2", [1, 96, 112, 112], 96, 3, stride=2, pad=1, group=96)),
    Case("conv_dilated", "conv", "DeepLabV3 3x3 dilation 2 64ch 56x56",
         conv("conv_dilated", [1, 64, 56, 56], 64, 3, pad=2, dilation=2)),
    Case("conv1d", "conv", "wav2vec2/Conformer 1-D k5 256ch length 1000", conv("conv1d", [1, 256, 1000], 256, 5, pad=2)),
    Case("conv3d", "conv", "3-D ResNet-18 3x3x3 16ch 16x32x32", conv("conv3d", [1, 16, 16, 32, 32], 16, 3, pad=1)),
    Case("convT_k4s2", "conv", "DCGAN / U-Net up-sampling ConvTranspose 64->32 k4 s2 p1 56x56",
         conv("convT_k4s2", [1, 64, 56, 56], 32, 4, stride=2, pad=1, transpose=True)),
    Case("convT_k2s2", "conv", "segmentation head ConvTranspose 24->24 k2 s2 160x160",
         conv("convT_k2s2", [1, 24, 160, 160], 24, 2, stride=2, transpose=True)),
    Case("convT_1d", "conv", "HiFi-GAN vocoder ConvTranspose1d 256->128 k16 s8 p4 length 200",
         conv("convT_1d", [1, 256, 200], 128, 16, stride=8, pad=4, transpose=True)),
    Case("convT3d", "conv", "3-D U-Net decoder ConvTranspose 3-D 32->16 k2 s2 8x16x16",
         conv("convT3d", [1, 32, 8, 16, 16], 16, 2, stride=2, transpose=True)),
    # Pooling.
    Case("maxpool_stem", "pool", "ResNet-50 stem MaxPool 3x3 s2 64x112x112",
         pool("maxpool_stem", "MaxPool", [1, 64, 112, 112], 3, 2, 1)),
    Case("avgpool_3x3", "pool", "Inception AveragePool 3x3 s1 96x56x56 (pad 1)",
         pool("avgpool_3x3", "AveragePool", [1, 96, 56, 56], 3, 1, 1)),
    Case("global_avgpool", "pool", "ResNet-50 head GlobalAveragePool 2048x7x7",
         unary("global_avgpool", "GlobalAveragePool", [1, 2048, 7, 7])),
    Case("maxpool3d", "pool", "3-D ResNet-18 stem MaxPool 3x3x3 s2 64x8x56x56",
         pool("maxpool3d", "MaxPool", [1, 64, 8, 56, 56], 3, 2, 1)),
    # Normalizations.
    Case("layernorm", "norm", "BERT-base 1x128x768", norm("layernorm", "LayerNormalization", [1, 128, 768], [768], axis=-1)),
    Case("rmsnorm", "norm", "Llama-style 1x128x2048", norm("rmsnorm", "RMSNormalization", [1, 128, 2048], [2048], axis=-1)),
    Case("instancenorm", "norm", "style transfer InstanceNormalization 96x56x56",
         norm("instancenorm", "InstanceNormalization", [1, 96, 56, 56], [96])),
    Case("groupnorm", "norm", "Stable Diffusion U-Net GroupNorm 32 groups 256x32x32",
         norm("groupnorm", "GroupNormalization", [1, 256, 32, 32], [256], num_groups=32)),
    Case("batchnorm", "norm", "unfused BatchNormalization 64x112x112", batch_norm("batchnorm", [1, 64, 112, 112])),
    # Recurrent layers.
    Case("lstm", "rnn", "speech LSTM hidden 256, 100 steps, input 80", rnn("lstm", "LSTM", 100, 1, 80, 256)),
    Case("gru", "rnn", "GRU tagger hidden 128, 50 steps, input 128", rnn("gru", "GRU", 50, 1, 128, 128)),
    # Quantization.
    Case("dequantize", "quant", "int8 ResNet activation DequantizeLinear 1x256x56x56", dequant("dequantize", [1, 256, 56, 56])),
    # Resampling.
    Case("resize_nearest", "resize", "YOLOv5 neck Resize nearest x2 96x80x80",
         resize("resize_nearest", [1, 96, 80, 80], 2.0, "nearest")),
    Case("resize_linear", "resize", "segmentation decoder Resize linear x2 64x64x64",
         resize("resize_linear", [1, 64, 64, 64], 2.0, "linear")),
    # Shape and data movement.
    Case("transpose_heads", "shape", "BERT-base heads 1x128x12x64 -> 1x12x128x64",
         transpose("transpose_heads", [1, 128, 12, 64], [0, 2, 1, 3])),
    Case("concat_neck", "shape", "YOLOv5 neck Concat 2x(1x128x40x40) on channels",
         concat("concat_neck", [[1, 128, 40, 40], [1, 128, 40, 40]], 1)),
    Case("pad_reflect", "shape", "style transfer Pad reflect 3, 96x56x56", pad("pad_reflect", [1, 96, 56, 56], 3, "reflect")),
    Case("depth_to_space", "shape", "ESPCN super-resolution DepthToSpace 4, 48x64x64",
         depth_to_space("depth_to_space", [1, 48, 64, 64], 4)),
    # Indexing.
    Case("gather_embed", "index", "BERT-base word embedding 30522x768, 128 ids",
         gather_rows("gather_embed", 30522, 768, [1, 128])),
    Case("topk_detect", "index", "YOLOv8 post-processing TopK k=100 over 1x8400", top_k("topk_detect", [1, 8400], 100)),
    Case("topk_vocab", "index", "GPT-2 sampling TopK k=50 over 1x50257", top_k("topk_vocab", [1, 50257], 50)),
    Case("argmax", "index", "ResNet-50 classifier ArgMax over 1x1000",
         lambda: model("argmax", helper.make_node("ArgMax", ["x"], ["y"], axis=1), {"x": [1, 1000]}, {"y": (I64, None)})),
    # Reductions.
    Case("reduce_mean_hw", "reduce", "SE block ReduceMean over HxW 1x256x56x56",
         reduce("reduce_mean_hw", "ReduceMean", [1, 256, 56, 56], [2, 3])),
    Case("reduce_sum_last", "reduce", "attention normalizer ReduceSum last axis 12x128x128",
         reduce("reduce_sum_last", "ReduceSum", [12, 128, 128], [-1])),
]


def write(out: Path, only: str | None = None) -> list[Path]:
    """Writes every case whose name contains `only`; returns the model paths."""
    paths = []
    for c in CASES:
        if only and only not in c.name and only != c.family:
            continue
        d = out / c.name
        d.mkdir(parents=True, exist_ok=True)
        p = d / "model.onnx"
        onnx.save(c.build(), p)
        paths.append(p)
    return paths


def source_of(name: str) -> str:
    return next((c.source for c in CASES if c.name == name), "")
