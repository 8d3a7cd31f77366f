"""Shared helpers of the Python package's tests: the exporter models committed under
tests/models/ (inputs in meta.json's order) and onnxruntime as the oracle."""

import json
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
MODELS = REPO / "tests" / "models"
# The exporter suites' tolerance (tests/lib.rs: EXPORTED_RTOL, EXPORTED_ATOL).
RTOL, ATOL = 1e-3, 1e-4


def exporter_models():
    return sorted(p.name for p in MODELS.iterdir() if (p / "meta.json").exists())


def load_case(name):
    d = MODELS / name
    meta = json.loads((d / "meta.json").read_text())
    feed = {i["name"]: np.load(d / i["file"]) for i in meta["inputs"]}
    return d / "model.onnx", feed, meta


def onnxruntime_outputs(model, feed):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def assert_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        assert g.shape == w.shape, (g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
