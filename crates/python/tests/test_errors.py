"""Bad inputs and options through Python: each raises a clear exception, never a crash."""

import numpy as np
import pytest

import kiln
from conftest import assert_close, load_case


@pytest.fixture(scope="module")
def mobilenet():
    model, feed, _ = load_case("mobilenetv2_torch")
    return kiln.InferenceSession(model), feed


def test_wrong_dtype(mobilenet):
    sess, feed = mobilenet
    with pytest.raises(kiln.InvalidArgument, match=r"input `image`: expected dtype f32, got f64"):
        sess.run(None, {"image": feed["image"].astype(np.float64)})


def test_wrong_shape(mobilenet):
    sess, feed = mobilenet
    with pytest.raises(kiln.InvalidArgument, match=r"input `image`: expected shape \[1, 3, 64, 64\], got \[1, 3, 32, 64\]"):
        sess.run(None, {"image": np.ascontiguousarray(feed["image"][:, :, :32])})


def test_missing_input(mobilenet):
    sess, _ = mobilenet
    with pytest.raises(kiln.InvalidArgument, match=r"input `image` is missing from the feed"):
        sess.run(None, {})


def test_unknown_input(mobilenet):
    sess, feed = mobilenet
    with pytest.raises(kiln.InvalidArgument, match=r"the model has no input `imag` \(its inputs: `image`\)"):
        sess.run(None, {"imag": feed["image"]})


def test_unknown_output(mobilenet):
    sess, feed = mobilenet
    with pytest.raises(kiln.InvalidArgument, match=r"the model has no output `probs` \(its outputs: `logits`\)"):
        sess.run(["probs"], feed)


def test_not_an_array(mobilenet):
    sess, feed = mobilenet
    with pytest.raises(kiln.InvalidArgument, match=r"input `image`: expected a numpy array, got list"):
        sess.run(None, {"image": feed["image"].tolist()})
    with pytest.raises(kiln.InvalidArgument, match=r"expected a dict"):
        sess.run(None, [feed["image"]])


def test_unsupported_numpy_type(mobilenet):
    sess, feed = mobilenet
    with pytest.raises(kiln.InvalidArgument, match=r"input `image`: numpy type complex64 is not one Kiln takes"):
        sess.run(None, {"image": feed["image"].astype(np.complex64)})


def test_invalid_argument_is_a_value_error(mobilenet):
    sess, _ = mobilenet
    with pytest.raises(ValueError):
        sess.run(None, {})


def test_non_contiguous_arrays_give_the_same_results(mobilenet):
    sess, feed = mobilenet
    x = feed["image"]
    want = sess.run(None, {"image": x})
    # A transposed view, a strided view and a Fortran-ordered copy of the same values.
    t = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not t.flags["C_CONTIGUOUS"]
    wide = np.zeros((1, 3, 64, 128), np.float32)
    wide[..., ::2] = x
    strided = wide[..., ::2]
    assert not strided.flags["C_CONTIGUOUS"]
    fortran = np.asfortranarray(x)
    for v in (t, strided, fortran):
        assert_close(sess.run(None, {"image": v}), want)


def test_bad_paths_and_models(tmp_path):
    with pytest.raises(kiln.KilnError, match=r"nope\.onnx"):
        kiln.InferenceSession(tmp_path / "nope.onnx")
    with pytest.raises(kiln.KilnError, match=r"nope\.kiln"):
        kiln.InferenceSession(tmp_path / "nope.kiln")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is no protobuf \xff\xff\xff")
    with pytest.raises(kiln.KilnError):
        kiln.InferenceSession(bad)
    damaged = tmp_path / "damaged.kiln"
    model, _, _ = load_case("mobilenetv2_torch")
    kiln.compile(model, damaged)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(kiln.KilnError, match=r"checksum"):
        kiln.InferenceSession(damaged)
    with pytest.raises(kiln.InvalidArgument):
        kiln.InferenceSession(b"bytes are not a path")


def test_bad_options(tmp_path):
    model, _, _ = load_case("mobilenetv2_torch")
    with pytest.raises(kiln.InvalidArgument, match=r"unknown option `thread`"):
        kiln.InferenceSession(model, thread=2)
    with pytest.raises(kiln.InvalidArgument, match=r"f16"):
        kiln.InferenceSession(model, precision="f16")
    with pytest.raises(kiln.InvalidArgument, match=r"target"):
        kiln.InferenceSession(model, target="tpu")
    art = tmp_path / "m.kiln"
    kiln.compile(model, art)
    with pytest.raises(kiln.InvalidArgument, match=r"apply to \.onnx models"):
        kiln.InferenceSession(art, precision="bf16")
    with pytest.raises(kiln.InvalidArgument, match=r"emit"):
        kiln.compile(model, tmp_path / "x", emit="wasm")


def test_unsupported_op_names_it(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="example.com")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("example.com", 1)])
    path = tmp_path / "unsupported.onnx"
    onnx.save(m, str(path))
    with pytest.raises(kiln.KilnError, match=r"NoSuchOp"):
        kiln.InferenceSession(path)


def test_run_time_check_failure_is_an_invalid_argument():
    # bert_torch's embedding Gather checks its indices at run time.
    model, feed, _ = load_case("bert_torch")
    sess = kiln.InferenceSession(model)
    bad = dict(feed)
    bad["input_ids"] = np.full_like(feed["input_ids"], 10**6)
    with pytest.raises(kiln.InvalidArgument, match=r"Gather"):
        sess.run(None, bad)
