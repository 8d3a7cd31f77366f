#!/usr/bin/env python3
"""Kiln against its peers on the same models, in one run, same thread count.

For each model: onnxruntime (CPU provider), tract (if its Python package is installed) and
Kiln (`kiln bench`, whose last line is `median_ms=<x>`) are timed in turn, interleaved for
several rounds, and the median latencies are printed with Kiln's ratio to each peer
(below 1.0: Kiln is faster).

    .venv/bin/python benches/peers/run.py [--threads N] [--rounds R] [--iters I] MODEL.onnx...

With no model given it uses the generated test models (scripts/gen_testdata.py).
Inputs are random with a fixed seed; every model input must have a static shape.
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "target" / "kiln-testdata" / "onnx-1.23.2"
KILN = REPO / "target" / "release" / "kiln"
NP_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


def inputs_of(path: Path) -> dict:
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {}
    for i in m.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        dtype = NP_TYPES[t.elem_type]
        feeds[i.name] = (rng.standard_normal(shape) if dtype == np.float32 else rng.integers(0, 8, shape)).astype(dtype)
    return feeds


def time_ort(path: Path, feeds: dict, threads: int, iters: int) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        s.run(None, feeds)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        s.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def time_tract(path: Path, feeds: dict, iters: int) -> float | None:
    try:
        import tract  # noqa: PLC0415
    except ImportError:
        return None
    try:
        m = tract.onnx().model_for_path(str(path))
        for k, (name, v) in enumerate(feeds.items()):
            m.set_input_fact(k, f"{','.join(map(str, v.shape))},{'f32' if v.dtype == np.float32 else 'i64'}")
        r = m.into_optimized().into_runnable()
        args = list(feeds.values())
        r.run(args)
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            r.run(args)
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)
    except Exception as e:  # noqa: BLE001
        print(f"  tract failed on {path.name}: {e}", file=sys.stderr)
        return None


def time_kiln(path: Path, feeds: dict, threads: int, iters: int, tmp: Path) -> float:
    args = [str(KILN), "bench", str(path), "--threads", str(threads), "--iters", str(iters)]
    for name, v in feeds.items():
        f = tmp / f"{abs(hash(name))}.npy"
        np.save(f, v)
        args += ["--input", f"{name}={f}"]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1].split("=", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    models = a.models or [DATA / "models" / m / "model.onnx" for m in ("mlp", "resnet_cnn", "transformer_encoder")] + [
        DATA / "light" / "resnet50" / "model.onnx"
    ]
    if not KILN.exists():
        sys.exit(f"{KILN} missing: cargo build --release -p kiln-cli")
    tmp = REPO / "target" / "peers"
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"threads={a.threads} rounds={a.rounds} iters={a.iters}")
    print(f"{'model':24} {'kiln ms':>9} {'ort ms':>9} {'tract ms':>9} {'kiln/ort':>9} {'kiln/tract':>10}")
    for path in models:
        feeds = inputs_of(path)
        k, o, t = [], [], []
        for _ in range(a.rounds):
            k.append(time_kiln(path, feeds, a.threads, a.iters, tmp))
            o.append(time_ort(path, feeds, a.threads, a.iters))
            tt = time_tract(path, feeds, a.iters)
            if tt is not None:
                t.append(tt)
        km, om = statistics.median(k), statistics.median(o)
        tm = statistics.median(t) if t else float("nan")
        name = path.parent.name
        print(f"{name:24} {km:9.3f} {om:9.3f} {tm:9.3f} {km / om:9.2f} {km / tm:10.2f}")


if __name__ == "__main__":
    main()
