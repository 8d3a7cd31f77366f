#!/usr/bin/env python3
"""Write the small bundled example model examples/mlp/ (committed to the repo).

    .venv/bin/python scripts/make_example.py

Writes, deterministically (fixed seed; rerunning gives byte-identical files):
  examples/mlp/model.onnx    2-layer MLP, opset 17, IR 8:
                             x[1,8] -> MatMul(8x16)+Add -> Relu -> MatMul(16x4)+Add -> y[1,4]
  examples/mlp/input.npy     x, float32 [1, 8]
  examples/mlp/expected.npy  y from onnxruntime (CPU, 1 thread), float32 [1, 4]
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "examples" / "mlp"


def build() -> tuple[onnx.ModelProto, np.ndarray]:
    rng = np.random.default_rng(42)
    w1 = (rng.standard_normal((8, 16)) / np.sqrt(8)).astype(np.float32)
    b1 = (rng.standard_normal(16) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((16, 4)) / np.sqrt(16)).astype(np.float32)
    b2 = (rng.standard_normal(4) * 0.1).astype(np.float32)
    x = rng.standard_normal((1, 8)).astype(np.float32)

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="fc2"),
        helper.make_node("Add", ["h3", "b2"], ["y"], name="fc2_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(a, n) for n, a in
         [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8, producer_name="kiln-make_example")
    onnx.checker.check_model(model, full_check=True)
    return model, x


def main() -> None:
    model, x = build()
    data = model.SerializeToString()

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    y = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "model.onnx").write_bytes(data)
    np.save(OUT / "input.npy", x)
    np.save(OUT / "expected.npy", y)
    for f in ("model.onnx", "input.npy", "expected.npy"):
        print(f"[make_example] wrote {(OUT / f).relative_to(REPO)} ({(OUT / f).stat().st_size} bytes)")
    print(f"[make_example] y = {np.array2string(y, precision=6)}")


if __name__ == "__main__":
    main()
