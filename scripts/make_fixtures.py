#!/usr/bin/env python3
"""Write the small ONNX fixtures that tests/errors.rs uses (committed to the repo).

  tests/fixtures/unknown_ops.onnx   x -> FancyOp (ai.onnx) -> Relu -> Mystery (com.example) -> y:
                                    two ops Kiln does not know, which must be reported together.
  tests/fixtures/symbolic.onnx      Relu over an input of shape [N, 4] (N symbolic): compiling it
                                    without --input-shape must name the input, the dim and the option.
  tests/fixtures/odd_names.onnx     two outputs whose names need sanitizing for file names
                                    ("probs/out:0" and "mask out"), one f32 and one bool.

Run with the project's venv: .venv/bin/python scripts/make_fixtures.py
"""
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def unknown_ops() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = [
        helper.make_node("FancyOp", ["x"], ["a"], name="fancy_1"),
        helper.make_node("Relu", ["a"], ["b"], name="relu_1"),
        helper.make_node("Mystery", ["b"], ["y"], name="mystery_7", domain="com.example"),
    ]
    g = helper.make_graph(nodes, "unknown_ops", [x], [y])
    return helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)], ir_version=8
    )


def symbolic() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "symbolic", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def odd_names() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("in put", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("probs/out:0", TensorProto.FLOAT, [2, 3])
    m = helper.make_tensor_value_info("mask out", TensorProto.BOOL, [2, 3])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [
        helper.make_node("Softmax", ["in put"], ["probs/out:0"], name="softmax", axis=-1),
        helper.make_node("Greater", ["in put", "zero"], ["mask out"], name="positive"),
    ]
    g = helper.make_graph(nodes, "odd_names", [x], [y, m], initializer=[zero])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, m in [("unknown_ops", unknown_ops()), ("symbolic", symbolic()), ("odd_names", odd_names())]:
        p = OUT / f"{name}.onnx"
        p.write_bytes(m.SerializeToString(deterministic=True))
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
