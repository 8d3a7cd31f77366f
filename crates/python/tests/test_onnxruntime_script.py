"""A program written for onnxruntime's InferenceSession runs on Kiln by changing only the
import and the constructor: the same script is run both ways and prints the same values."""

import pathlib
import subprocess
import sys

import pytest

from conftest import MODELS

# A typical onnxruntime program: options, providers, get_inputs/get_outputs, run by name.
SCRIPT = '''
import json, sys
import numpy as np
import onnxruntime as ort

so = ort.SessionOptions()
so.intra_op_num_threads = 1
sess = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
inputs = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
meta = json.load(open(sys.argv[2]))
feed = {i["name"]: np.load(sys.argv[3] + "/" + i["file"]) for i in meta["inputs"]}
outs = sess.run([o.name for o in sess.get_outputs()], feed)
print(json.dumps({
    "inputs": inputs,
    "outputs": [[o.name, o.type] for o in sess.get_outputs()],
    "values": [np.round(o.astype(np.float64), 3).ravel()[:16].tolist() for o in outs],
    "shapes": [list(o.shape) for o in outs],
    "dtypes": [str(o.dtype) for o in outs],
}))
'''


def run_script(text, tmp_path, name):
    p = tmp_path / f"{name}.py"
    p.write_text(text)
    d = MODELS / "bert_torch"
    args = [sys.executable, str(p), str(d / "model.onnx"), str(d / "meta.json"), str(d)]
    out = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_onnxruntime_script_runs_with_the_import_and_constructor_changed(tmp_path):
    pytest.importorskip("onnxruntime")
    ported = SCRIPT.replace("import onnxruntime as ort", "import kiln")
    ported = ported.replace("ort.SessionOptions()", "kiln.SessionOptions()")
    ported = ported.replace("ort.InferenceSession(", "kiln.InferenceSession(")
    assert ported.count("kiln.") == 2 and "ort." not in ported and "onnxruntime" not in ported
    assert run_script(ported, tmp_path, "ported") == run_script(SCRIPT, tmp_path, "original")
