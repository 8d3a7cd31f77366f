"""Every exporter model through the package, against onnxruntime run in the same process, and
a model compiled with kiln.compile and loaded as a .kiln artifact."""

import numpy as np
import pytest

import kiln
from conftest import assert_close, exporter_models, load_case, onnxruntime_outputs


@pytest.mark.parametrize("name", exporter_models())
def test_exporter_model_matches_onnxruntime(name):
    model, feed, meta = load_case(name)
    sess = kiln.InferenceSession(model)
    assert [i.name for i in sess.get_inputs()] == [i["name"] for i in meta["inputs"]]
    assert [o.name for o in sess.get_outputs()] == [o["name"] for o in meta["outputs"]]
    got = sess.run(None, feed)
    assert_close(got, onnxruntime_outputs(model, feed))
    # A second run of the same session, and the outputs named in another order.
    names = [o.name for o in sess.get_outputs()][::-1]
    again = sess.run(names, feed)
    assert_close(again[::-1], got)


def test_node_args_spell_types_and_symbolic_dims_as_onnxruntime_does():
    ort = pytest.importorskip("onnxruntime")
    model, _, _ = load_case("bert_torch")
    ours = kiln.InferenceSession(model)
    theirs = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for a, b in zip(ours.get_inputs() + ours.get_outputs(), theirs.get_inputs() + theirs.get_outputs()):
        assert (a.name, a.type, a.shape) == (b.name, b.type, b.shape)


def test_compiled_artifact_runs_like_the_model(tmp_path):
    model, feed, _ = load_case("mobilenetv2_torch")
    out = tmp_path / "m.kiln"
    size = kiln.compile(model, out)
    assert out.stat().st_size == size
    assert kiln.compile(model, out) == size  # up to date: left as it is
    art = kiln.InferenceSession(out)
    assert art.get_inputs()[0].shape == [1, 3, 64, 64]
    assert_close(art.run(None, feed), kiln.InferenceSession(model).run(None, feed))


def test_bounded_dims_take_every_size_within_them(tmp_path):
    model, feed, _ = load_case("bert_torch")
    out = tmp_path / "bert.kiln"
    kiln.compile(model, out, dims={"batch": (1, 4)})
    sess = kiln.InferenceSession(out)
    assert sess.get_inputs()[0].shape == ["batch", 24]
    for batch in (1, 2):
        part = {k: np.ascontiguousarray(v[:batch]) for k, v in feed.items()}
        assert_close(sess.run(None, part), onnxruntime_outputs(model, part))


def test_profile_is_a_chrome_trace_of_the_models_nodes(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    model, feed, _ = load_case("mobilenetv2_torch")
    so = kiln.SessionOptions()
    so.enable_profiling = True
    sess = kiln.InferenceSession(model, so)
    for _ in range(3):
        sess.run(None, feed)
    path = sess.end_profiling()
    trace = json.loads(open(path).read())
    runs = [e for e in trace["traceEvents"] if e.get("cat") == "run"]
    kernels = [e for e in trace["traceEvents"] if "kind" in e.get("args", {})]
    assert len(runs) == 3
    assert any("Conv" in e["args"]["ops"] for e in kernels)
    assert "op type" in sess.last_profile_table
    assert kiln.InferenceSession(model).end_profiling() is None
