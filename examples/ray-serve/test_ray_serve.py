"""The Ray Serve example end to end: ResNet-50 (tests/models/resnet50_torch) compiled by
target/release/kiln, served by two replicas of serve_kiln.KilnModel on a local Ray instance,
200 concurrent HTTP requests, every answer checked against onnxruntime's output for the same
input, and both replicas seen answering.

    .venv/bin/python -m pytest -q examples/ray-serve

Skipped when target/release/kiln has not been built (cargo build --release -p kiln-cli).
"""

import concurrent.futures
import json
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
KILN = REPO / "target" / "release" / "kiln"
MODEL = REPO / "tests" / "models" / "resnet50_torch"
# The exporter suites' tolerance (tests/lib.rs, crates/python/tests/conftest.py).
RTOL, ATOL = 1e-3, 1e-4
REQUESTS, CLIENT_THREADS, REPLICAS = 200, 32, 2


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    if not KILN.is_file():
        pytest.skip(f"{KILN} is missing: build it with `cargo build --release -p kiln-cli`")
    out = tmp_path_factory.mktemp("ray-serve") / "resnet50.kiln"
    got = subprocess.run(
        [str(KILN), "compile", str(MODEL / "model.onnx"), "-o", str(out), "--dim", "batch=1..4"],
        capture_output=True, text=True,
    )
    assert got.returncode == 0, f"kiln compile failed:\n{got.stderr}"
    return out


def cases():
    """Distinct inputs, batch 1 and 2: each row of input_0.npy and both, at a few scales."""
    x = np.load(MODEL / "input_0.npy")
    assert x.shape == (2, 3, 64, 64) and x.dtype == np.float32
    out = []
    for scale in (1.0, 0.5, -0.75, 2.0):
        y = (x * np.float32(scale)).astype(np.float32)
        out += [y[:1], y[1:], y]
    return out


def onnxruntime_logits(inputs):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(MODEL / "model.onnx"), so, providers=["CPUExecutionProvider"])
    return [sess.run(None, {"image": x})[0] for x in inputs]


def post(url, body, timeout=120):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def wait_ready(url, deadline_s=60):
    """GET the route until the proxy knows it (serve.run returns once the replicas are up;
    the proxy may learn the route a moment later)."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError) as e:
            if time.monotonic() > end:
                raise AssertionError(f"{url} not ready after {deadline_s} s: {e}")
            time.sleep(0.5)


def test_two_replicas_answer_200_concurrent_requests(artifact, monkeypatch):
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    monkeypatch.syspath_prepend(str(HERE))
    import serve_kiln

    inputs = cases()
    want = onnxruntime_logits(inputs)
    bodies = [json.dumps({"inputs": {"image": x.tolist()}}).encode() for x in inputs]

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # Token authentication, which Ray turns on for a new local instance (setting
    # $RAY_AUTH_MODE=token in this process: the delenv takes it away afterwards), with a token
    # of this test's own: otherwise Ray would generate one into ~/.ray/auth_token.
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    # A short path: Ray's Unix sockets live under it and their paths have a length limit.
    tmp = tempfile.mkdtemp(prefix="kiln-ray-", dir="/tmp")
    # The replicas' temporary files (the runtime loads an artifact's code from one) go
    # under it too, so that none outlives the test, whatever happens.
    replica_tmp = pathlib.Path(tmp) / "replicas"
    replica_tmp.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/kiln"
    serve_running = True
    try:
        t0 = time.monotonic()
        ray.init(
            address="local",  # a new instance even when $RAY_ADDRESS or a running one is about
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=100 * 1024 * 1024,
            _temp_dir=tmp,
            # The replicas import serve_kiln (the deployment class is pickled by reference).
            runtime_env={"env_vars": {"PYTHONPATH": str(HERE), "TMPDIR": str(replica_tmp)}},
        )
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(serve_kiln.app(artifact, num_replicas=REPLICAS, num_cpus=0.5, threads=1),
                  name="kiln", route_prefix="/kiln")
        meta = wait_ready(url)
        t_up = time.monotonic() - t0
        assert [i["name"] for i in meta["inputs"]] == ["image"]
        assert [o["name"] for o in meta["outputs"]] == ["logits"]

        def one(i):
            k = i % len(inputs)
            return k, post(url, bodies[k])

        t1 = time.monotonic()
        results, failures = [], []
        with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
            for f in concurrent.futures.as_completed([pool.submit(one, i) for i in range(REQUESTS)]):
                try:
                    results.append(f.result())
                except Exception as e:  # noqa: BLE001 -- counted and reported below
                    failures.append(repr(e))
        t_req = time.monotonic() - t1

        assert not failures, f"{len(failures)} of {REQUESTS} requests failed, e.g. {failures[:3]}"
        assert len(results) == REQUESTS
        replicas = Counter()
        for k, (status, got) in results:
            assert status == 200, got
            assert got["dtypes"] == {"logits": "float32"}
            logits = np.asarray(got["outputs"]["logits"], dtype=np.float32)
            assert logits.shape == want[k].shape == tuple(got["shapes"]["logits"])
            np.testing.assert_allclose(logits, want[k], rtol=RTOL, atol=ATOL)
            replicas[(got["replica"], got["pid"])] += 1
        assert len(replicas) == REPLICAS, f"expected {REPLICAS} replicas to answer, got {dict(replicas)}"
        assert len({pid for _, pid in replicas}) == REPLICAS, f"replicas share a process: {dict(replicas)}"

        # A bad request answers 400 with the reason.
        with pytest.raises(urllib.error.HTTPError) as bad:
            post(url, json.dumps({"inputs": {"img": [1.0]}}).encode())
        assert bad.value.code == 400 and "unknown input" in json.loads(bad.value.read())["error"]

        # No replica leaves a copy of the artifact's code behind (the runtime removes the
        # file it loads the code from as soon as it is loaded).
        serve.shutdown()
        serve_running = False
        leaked = sorted(p.name for p in replica_tmp.glob("kiln-*.so"))
        assert not leaked, f"replicas stopped by serve.shutdown() left {leaked} behind (the runtime removes its code file once loaded)"

        print(f"\nray + serve up in {t_up:.1f} s; {REQUESTS} requests ({CLIENT_THREADS} client threads) "
              f"in {t_req:.1f} s; per replica: {sorted(replicas.values())}", file=sys.stderr)
    finally:
        try:
            if serve_running and ray.is_initialized():  # otherwise serve.shutdown() could start Ray itself
                serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
