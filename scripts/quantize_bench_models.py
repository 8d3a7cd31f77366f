#!/usr/bin/env python3
"""Quantized versions of the bench models, made by onnxruntime's own quantization tool.

  resnet50_qdq    target/bench-models/resnet50 quantized statically: QDQ format, u8
                  activations, s8 weights per output channel, calibrated (min/max) on 8
                  seeded random images plus the model's own input
  bert_base_dynq  target/bench-models/bert_base quantized dynamically: MatMulInteger with
                  DynamicQuantizeLinear activations (u8) and s8 weights
  bert_base_qdq   target/bench-models/bert_base quantized statically: QDQ around its MatMuls,
                  u8 activations, s8 weights per output column, calibrated on its own input
                  and 4 seeded random token sequences

Each goes to target/bench-models/NAME/ with the source model's inputs (input_<i>.npy),
meta.json, and onnxruntime's outputs of the quantized model on them (output_<i>.npy): the
int8 reference that Kiln's int8 results are held to. Run with the peers venv (onnxruntime and
onnx from scripts/python/peers.lock), after scripts/export_bench_models.py wrote the sources:

    target/peers-venv/bin/python scripts/quantize_bench_models.py [--only NAME ...]
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "target" / "bench-models"


def inputs_of(folder: Path) -> dict[str, np.ndarray]:
    meta = json.loads((folder / "meta.json").read_text())
    return {i["name"]: np.load(folder / i["file"]) for i in meta["inputs"]}


def finish(src: Path, dst: Path, model: Path) -> None:
    """Copies the source's inputs and meta.json next to the quantized model and writes
    onnxruntime's outputs of it."""
    for f in src.glob("input_*.npy"):
        shutil.copy(f, dst / f.name)
    shutil.copy(src / "meta.json", dst / "meta.json")
    for f in dst.glob("output_*.npy"):
        f.unlink()
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for i, out in enumerate(sess.run(None, inputs_of(src))):
        np.save(dst / f"output_{i}.npy", out)


class Images(CalibrationDataReader):
    def __init__(self, name: str, first: np.ndarray):
        rng = np.random.default_rng(2020)
        self.feeds = iter([{name: first}] + [{name: rng.standard_normal(first.shape).astype(np.float32)}
                                              for _ in range(8)])

    def get_next(self):
        return next(self.feeds, None)


def resnet50_qdq() -> None:
    src, dst = MODELS / "resnet50", MODELS / "resnet50_qdq"
    dst.mkdir(exist_ok=True)
    (name, x), = inputs_of(src).items()
    quantize_static(str(src / "model.onnx"), str(dst / "model.onnx"), Images(name, x),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    finish(src, dst, dst / "model.onnx")


class Tokens(CalibrationDataReader):
    def __init__(self, feeds: dict[str, np.ndarray]):
        rng = np.random.default_rng(2021)
        batches = [feeds]
        for _ in range(4):
            f = dict(feeds)
            f["input_ids"] = rng.integers(0, 1000, feeds["input_ids"].shape).astype(feeds["input_ids"].dtype)
            batches.append(f)
        self.feeds = iter(batches)

    def get_next(self):
        return next(self.feeds, None)


def bert_base_qdq() -> None:
    src, dst = MODELS / "bert_base", MODELS / "bert_base_qdq"
    dst.mkdir(exist_ok=True)
    quantize_static(str(src / "model.onnx"), str(dst / "model.onnx"), Tokens(inputs_of(src)),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])
    finish(src, dst, dst / "model.onnx")


def bert_base_dynq() -> None:
    src, dst = MODELS / "bert_base", MODELS / "bert_base_dynq"
    dst.mkdir(exist_ok=True)
    quantize_dynamic(str(src / "model.onnx"), str(dst / "model.onnx"), weight_type=QuantType.QInt8)
    finish(src, dst, dst / "model.onnx")


JOBS = {"resnet50_qdq": resnet50_qdq, "bert_base_dynq": bert_base_dynq, "bert_base_qdq": bert_base_qdq}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(JOBS))
    a = ap.parse_args()
    for name in a.only or JOBS:
        source = MODELS / name.rsplit("_", 1)[0] / "model.onnx"
        if not source.exists():
            print(f"{name}: {source} is missing: run scripts/export_bench_models.py first", file=sys.stderr)
            return 1
        JOBS[name]()
        print(f"{name}: {MODELS / name / 'model.onnx'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
