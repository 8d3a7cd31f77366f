"""Shared pieces of `kiln serve`'s tests: a model repository compiled from the exporter models
committed under tests/models/ (with `target/release/kiln`), a running `kiln-serve` on loopback
ports, and onnxruntime as the oracle. The clients are Triton's (`tritonclient` from PyPI)."""

import json
import os
import pathlib
import select
import signal
import socket
import subprocess
import tempfile
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
MODELS = REPO / "tests" / "models"
KILN = REPO / "target" / "release" / "kiln"
SERVE = pathlib.Path(os.environ.get("KILN_SERVE_BIN", REPO / "target" / "release" / "kiln-serve"))
# The exporter suites' tolerance (tests/lib.rs: EXPORTED_RTOL, EXPORTED_ATOL).
RTOL, ATOL = 1e-3, 1e-4
# Models with a run-time batch dim are compiled for batches up to this.
MAX_BATCH = 8


def load_case(name):
    d = MODELS / name
    meta = json.loads((d / "meta.json").read_text())
    feed = {i["name"]: np.load(d / i["file"]) for i in meta["inputs"]}
    return d / "model.onnx", feed, meta


def exporter_models():
    return sorted(p.name for p in MODELS.iterdir() if (p / "meta.json").exists())


def batch_symbol(meta):
    """The symbol of dim 0 when it is the only symbolic dim of every input, else None."""
    shapes = [i["declared_shape"] for i in meta["inputs"]]
    first = shapes[0][0]
    if not isinstance(first, str):
        return None
    ok = all(s[0] == first and all(isinstance(d, int) for d in s[1:]) for s in shapes)
    return first if ok else None


def pinned_shapes(meta):
    args = []
    for i in meta["inputs"]:
        args += ["--input-shape", f"{i['name']}={'x'.join(map(str, i['shape']))}"]
    return args


def onnxruntime_outputs(model, feed):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def build_repository(root, names):
    """Compiles each exporter model into root/NAME/1/model.kiln."""
    if not KILN.exists():
        pytest.skip(f"{KILN} is not built (scripts/test.sh builds it: cargo build --release -p kiln-cli)")
    for name in names:
        model, _, meta = load_case(name)
        out = root / name / "1" / "model.kiln"
        out.parent.mkdir(parents=True, exist_ok=True)
        run = lambda args: subprocess.run([str(KILN), "compile", str(model), "-o", str(out), *args], capture_output=True)
        # A run-time batch dim where the model has one and Kiln compiles it so (not yet
        # through an LSTM's attributes), else the test inputs' shapes.
        sym = batch_symbol(meta)
        if sym is None or run(["--dim", f"{sym}=1..{MAX_BATCH}"]).returncode != 0:
            r = run(pinned_shapes(meta))
            assert r.returncode == 0, r.stderr
    return root


class Server:
    """A `kiln-serve` process on loopback ports picked by the OS."""

    def __init__(self, repository, *args, env=None):
        if not SERVE.exists():
            pytest.skip(f"{SERVE} is not built (scripts/test.sh builds it: cargo build --release -p kiln-serve)")
        # The log goes to a file: a pipe nobody reads would fill and stall the server.
        self.log = tempfile.NamedTemporaryFile("w+", prefix="kiln-serve-", suffix=".log")
        start = time.monotonic()
        self.proc = subprocess.Popen(
            [str(SERVE), "--model-repository", str(repository), "--http-port", "0", "--grpc-port", "0", *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        self.startup_s = time.monotonic() - start
        if not line.startswith("kiln serve: ready"):
            self.proc.kill()
            raise RuntimeError(f"kiln-serve did not start: {line!r} {self.log_text()}")
        # `kiln serve: ready, HTTP on 127.0.0.1:P, gRPC on 127.0.0.1:Q, N models`
        parts = line.split(", ")
        self.http = parts[1].split(" on ")[1]
        self.grpc = parts[2].split(" on ")[1]

    def rss_kib(self):
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def log_text(self):
        self.log.flush()
        return pathlib.Path(self.log.name).read_text()

    def stop(self):
        """SIGTERM, then the exit status (the server finishes what is in flight first)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc.stdout.close()


@pytest.fixture(scope="session")
def repository(tmp_path_factory):
    return build_repository(tmp_path_factory.mktemp("repository"), exporter_models())


@pytest.fixture(scope="session")
def server(repository):
    s = Server(repository, "--threads", "1")
    yield s
    assert s.stop() == 0, s.log_text()


def trickle_headers(address, limit_s, between=None):
    """Sends a request head a line at a time to `address` (`host:port`), calling `between()`
    after each line, until the server closes the connection or `limit_s` pass; whether it
    closed it."""
    host, port = address.rsplit(":", 1)
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.settimeout(0.25)
        s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n")
        while time.monotonic() - start < limit_s:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                if s.recv(4096) == b"":
                    return True
            except socket.timeout:
                pass
            except OSError:
                return True
            if between:
                between()
    return False
