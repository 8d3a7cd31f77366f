#!/usr/bin/env python3
"""Write the small ONNX fixtures that tests/errors.rs uses (committed to the repo).

  tests/fixtures/unknown_ops.onnx   x -> FancyOp (ai.onnx) -> Relu -> Mystery (com.example) -> y:
                                    two ops Kiln does not know, which must be reported together.
  tests/fixtures/symbolic.onnx      Relu over an input of shape [N, 4] (N symbolic): compiling it
                                    without --input-shape must name the input, the dim and the option.
  tests/fixtures/odd_names.onnx     two outputs whose names need sanitizing for file names
                                    ("probs/out:0" and "mask out"), one f32 and one bool.
  tests/fixtures/reduce_axes.onnx   ReduceSum of x [2, 3] over axes given at run time, keepdims=0:
                                    the output's shape depends on the axes.
  tests/fixtures/if_shapes.onnx     If on a run-time condition whose branches give different shapes:
                                    then ReduceSum(x, axis 1) [2], else Reshape(x) [6].
  tests/fixtures/range.onnx         Range(start, limit, delta), all three given at run time: its length
                                    comes from data (compiled with --max-elements).
  tests/fixtures/if_out_of_range.onnx  If on a run-time condition whose then branch is out of range
                                    for x [2, 3] (Gather of row 5, [3]; else the flattened x, [6]): only
                                    taking it may fail.
  tests/fixtures/batch_pair.onnx    a [N, 3] + b [N, 3] -> y: two inputs sharing the symbolic N; a
                                    run that gives them different sizes must be refused.
  tests/fixtures/batch_mixing.onnx  ReduceSum of x [N, 3] over axis 0: with a run-time N, the sum
                                    runs over the rows a run gives.
  tests/fixtures/batch_as_data.onnx y = x * N, with N read by Shape and Gather: the dim used as a
                                    value is refused at compile time.

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


def reduce_axes() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum", keepdims=0)
    g = helper.make_graph([node], "reduce_axes", [x, axes], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def if_model(name: str, then_nodes, then_out: str, inits=()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    then_g = helper.make_graph(
        then_nodes, "then", [], [helper.make_tensor_value_info(then_out, TensorProto.FLOAT, None)], initializer=list(inits)
    )
    shape = helper.make_tensor("flat", TensorProto.INT64, [1], [6])
    else_g = helper.make_graph(
        [helper.make_node("Reshape", ["x", "flat"], ["e_out"], name="flatten")],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)],
        initializer=[shape],
    )
    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)
    g = helper.make_graph([node], name, [x, cond], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def if_shapes() -> onnx.ModelProto:
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("ReduceSum", ["x", "one"], ["t_out"], name="row_sums", keepdims=0)]
    return if_model("if_shapes", nodes, "t_out", [one])


def if_out_of_range() -> onnx.ModelProto:
    row = helper.make_tensor("row", TensorProto.INT64, [], [5])
    nodes = [helper.make_node("Gather", ["x", "row"], ["t_out"], name="row_5", axis=0)]
    return if_model("if_out_of_range", nodes, "t_out", [row])


def range_model() -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in ("start", "limit", "delta")]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Range", ["start", "limit", "delta"], ["y"], name="range")
    g = helper.make_graph([node], "range", ins, [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def batch_pair() -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a", "b")]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"], name="add")], "batch_pair", ins, [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def batch_mixing() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum_over_batch", keepdims=1)
    g = helper.make_graph([node], "batch_mixing", [x], [y], [axes])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def batch_as_data() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    zero = helper.make_tensor("zero", TensorProto.INT64, [], [0])
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="size", axis=0),
        helper.make_node("Cast", ["n"], ["nf"], name="as_float", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "nf"], ["y"], name="scale_by_batch"),
    ]
    g = helper.make_graph(nodes, "batch_as_data", [x], [y], [zero])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    models = [
        ("unknown_ops", unknown_ops()),
        ("symbolic", symbolic()),
        ("odd_names", odd_names()),
        ("reduce_axes", reduce_axes()),
        ("if_shapes", if_shapes()),
        ("if_out_of_range", if_out_of_range()),
        ("range", range_model()),
        ("batch_pair", batch_pair()),
        ("batch_mixing", batch_mixing()),
        ("batch_as_data", batch_as_data()),
    ]
    for name, m in models:
        p = OUT / f"{name}.onnx"
        p.write_bytes(m.SerializeToString(deterministic=True))
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
