"""Throughput and latency of `kiln-serve` with and without dynamic batching: N concurrent
Triton gRPC clients, each sending one image at a time, for a fixed time per configuration;
configurations interleaved round by round (the machine is noisy), each round a fresh server.

    .venv/bin/python benches/serve_batching.py [--model M.onnx] [--clients 16] [--seconds 20]
        [--threads 1 2] [--rounds 2] [--max-batch 16]

The default model is the full ResNet-50 of target/bench-models/resnet50 (scripts/
export_bench_models.py), exported with batch 1 fixed: the script makes its dim 0 symbolic
(and its one Reshape's target -1 rows) and compiles it with `--dim batch=1..MAX_BATCH`.
Prints, per thread count, requests/s and p50/p99 latency for both, and their ratio."""

import argparse
import concurrent.futures
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import onnx
from onnx import numpy_helper
import tritonclient.grpc as grpcclient

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "crates" / "serve" / "tests"))
from conftest import KILN, Server  # noqa: E402


def batch_dynamic(src, dst):
    """The model with dim 0 of its inputs and outputs named `batch`, and a Reshape whose
    target fixes 1 row made to take any number (-1)."""
    m = onnx.load(src)
    g = m.graph
    for t in list(g.input) + list(g.output):
        d = t.type.tensor_type.shape.dim[0]
        d.ClearField("dim_value")
        d.dim_param = "batch"
    del g.value_info[:]
    inits = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "Reshape" and n.input[1] in inits:
            a = numpy_helper.to_array(inits[n.input[1]]).copy()
            if a.size and a[0] == 1:
                a[0] = -1
                inits[n.input[1]].CopyFrom(numpy_helper.from_array(a, n.input[1]))
    onnx.save(m, dst)


def drive(server, name, input_name, shape, clients, seconds):
    """`clients` threads sending single requests back to back for `seconds`; latencies in s."""
    stop = threading.Event()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)

    def one(_):
        c = grpcclient.InferenceServerClient(server.grpc)
        i = grpcclient.InferInput(input_name, list(shape), "FP32")
        i.set_data_from_numpy(x)
        lat = []
        while not stop.is_set():
            t = time.perf_counter()
            c.infer(name, [i])
            lat.append(time.perf_counter() - t)
        c.close()
        return lat

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one, k) for k in range(clients)]
        time.sleep(seconds)
        stop.set()
        return [t for f in futures for t in f.result()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "target" / "bench-models" / "resnet50" / "model.onnx"))
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--warmup", type=float, default=3)
    a = ap.parse_args()

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-serve-bench-"))
    src = tmp / "model.onnx"
    batch_dynamic(a.model, src)
    g = onnx.load(src, load_external_data=False).graph
    input_name = g.input[0].name
    shape = [1] + [d.dim_value for d in g.input[0].type.tensor_type.shape.dim[1:]]
    repo = tmp / "repo"
    (repo / "model" / "1").mkdir(parents=True)
    subprocess.run([str(KILN), "compile", str(src), "--dim", f"batch=1..{a.max_batch}", "-o",
                    str(repo / "model" / "1" / "model.kiln")], check=True)

    results = {}
    for r in range(a.rounds):
        for threads in a.threads:
            for mode in ("batching", "no batching"):
                extra = ["--no-batching"] if mode == "no batching" else []
                s = Server(repo, "--threads", str(threads), "--max-batch", str(a.max_batch), *extra)
                try:
                    drive(s, "model", input_name, shape, a.clients, a.warmup)
                    lat = drive(s, "model", input_name, shape, a.clients, a.seconds)
                finally:
                    s.stop()
                results.setdefault((threads, mode), []).append((len(lat) / a.seconds, lat))
                print(f"round {r + 1}, {threads} thread(s), {mode}: {len(lat) / a.seconds:.2f} requests/s", flush=True)

    print(f"\n{pathlib.Path(a.model).parent.name}: {a.clients} concurrent clients, one image per request, "
          f"{a.rounds} round(s) of {a.seconds:.0f} s per configuration")
    print(f"{'threads':>7} {'mode':>12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for threads in a.threads:
        rates = {}
        for mode in ("batching", "no batching"):
            runs = results[(threads, mode)]
            rate = float(np.median([x for x, _ in runs]))
            lat = np.concatenate([np.array(l) for _, l in runs]) * 1e3
            rates[mode] = rate
            print(f"{threads:>7} {mode:>12} {rate:8.2f} {np.percentile(lat, 50):8.1f} {np.percentile(lat, 99):8.1f}")
        print(f"{threads:>7} {'ratio':>12} {rates['batching'] / rates['no batching']:8.2f}  (batching / no batching)")


if __name__ == "__main__":
    main()
