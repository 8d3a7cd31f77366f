"""Load and faults, bounded in time, on loopback: 64 concurrent Triton clients (half HTTP, half
gRPC) against ResNet-50 and a BERT encoder (the exporter models) while other connections
misbehave — clients killed mid-request, garbage on both ports, bodies past the size limit,
bodies and request heads sent too slowly, gRPC calls cancelled by their deadline. Every
answer the clients get is checked against onnxruntime's output for its input: none may fail or differ, the server
must stay up and answer, and its memory after the load must be within 10% of its memory
after the warm-up.

KILN_LOAD_SECONDS sets the load's length (default 150)."""

import concurrent.futures
import http.client
import json
import os
import random
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import RTOL, ATOL, Server, load_case, onnxruntime_outputs, trickle_headers
from test_serve import client, infer

CLIENTS = 64
SECONDS = float(os.environ.get("KILN_LOAD_SECONDS", "150"))
WARMUP = min(20.0, SECONDS / 5)
MAX_BODY = 4 << 20
TIMEOUT_MS = 3000


def cases(name, count, rng):
    """`count` inputs for model `name` (each a batch of 1) with onnxruntime's outputs."""
    model, feed, _ = load_case(name)
    out = []
    for k in range(count):
        if name == "resnet50_torch":
            x = {"image": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)}
        else:
            row = k % next(iter(feed.values())).shape[0]
            x = {n: v[row:row + 1].copy() for n, v in feed.items()}
            x["input_ids"] = rng.integers(0, 100, x["input_ids"].shape).astype(np.int64)
        out.append((x, onnxruntime_outputs(model, x)))
    return out


def infer_body(feed):
    """A JSON inference request body for raw sockets."""
    inputs = [{"name": n, "shape": list(v.shape), "datatype": "FP32", "data": v.ravel().tolist()} for n, v in feed.items()]
    return json.dumps({"inputs": inputs}).encode()


class Faults:
    """Misbehaving connections, in a loop until stopped; each checks what the server answers."""

    def __init__(self, server, body):
        self.host, port = server.http.rsplit(":", 1)
        self.http_port = int(port)
        self.grpc_port = int(server.grpc.rsplit(":", 1)[1])
        self.server = server
        self.body = body
        self.counts = {}
        self.errors = []

    def note(self, what):
        self.counts[what] = self.counts.get(what, 0) + 1

    def connect(self, port=None):
        return socket.create_connection((self.host, port or self.http_port), timeout=30)

    def request_head(self, length, extra=""):
        return (f"POST /v2/models/resnet50_torch/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {length}\r\n{extra}\r\n").encode()

    def killed_mid_body(self):
        with self.connect() as s:
            s.sendall(self.request_head(len(self.body)) + self.body[: len(self.body) // 3])
        self.note("client killed mid-body")

    def killed_before_answer(self):
        with self.connect() as s:
            s.sendall(self.request_head(len(self.body)) + self.body)
        self.note("client gone before the answer")

    def garbage(self):
        for port in (self.http_port, self.grpc_port):
            with self.connect(port) as s:
                s.sendall(bytes(random.getrandbits(8) for _ in range(4096)))
                s.settimeout(5)
                try:
                    s.recv(1024)
                except OSError:
                    pass
        self.note("garbage on both ports")

    def status_of(self, s):
        s.settimeout(30)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else None

    def oversized(self):
        with self.connect() as s:
            s.sendall(self.request_head(MAX_BODY + 1))
            status = self.status_of(s)
        if status != 413:
            self.errors.append(f"oversized body (declared): status {status}")
        # Chunked, no declared length: refused once past the limit.
        with self.connect() as s:
            s.sendall(b"POST /v2/models/resnet50_torch/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * (1 << 20)
            try:
                for _ in range(MAX_BODY // len(chunk) + 2):
                    s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:
                pass  # the server may close as soon as it has answered
            status = self.status_of(s)
        if status != 413:
            self.errors.append(f"oversized body (chunked): status {status}")
        self.note("oversized bodies")

    def slow_body(self):
        start = time.monotonic()
        with self.connect() as s:
            s.sendall(self.request_head(len(self.body)))
            status = None
            try:
                for b in self.body[:40]:
                    s.sendall(bytes([b]))
                    time.sleep(0.25)
                    if time.monotonic() - start > TIMEOUT_MS / 1000 + 1:
                        break
                status = self.status_of(s)
            except OSError:
                status = "closed"
        if status not in (408, "closed"):
            self.errors.append(f"slow body: status {status}")
        self.note("slow bodies")

    def slow_headers(self):
        """A request head trickled a line at a time: disconnected after the request timeout."""
        if not trickle_headers(self.server.http, TIMEOUT_MS / 1000 + 5):
            self.errors.append("slow headers: the connection was still open after the request timeout")
        self.note("slow headers")

    def cancelled_grpc(self, feed):
        c = grpcclient.InferenceServerClient(f"{self.host}:{self.grpc_port}")
        i = grpcclient.InferInput("image", list(feed["image"].shape), "FP32")
        i.set_data_from_numpy(feed["image"])
        try:
            c.infer("resnet50_torch", [i], client_timeout=0.0005)
        except InferenceServerException:
            pass
        c.close()
        self.note("gRPC calls cancelled by their deadline")

    def run(self, stop, feed):
        steps = [self.killed_mid_body, self.killed_before_answer, self.garbage, self.oversized,
                 lambda: self.cancelled_grpc(feed)]
        k = 0
        while not stop.is_set():
            try:
                steps[k % len(steps)]()
            except Exception as e:  # a fault that the server should have answered
                self.errors.append(f"{steps[k % len(steps)]}: {e!r}")
            k += 1
            time.sleep(0.05)

    def run_slow(self, stop):
        while not stop.is_set():
            self.slow_body()
            self.slow_headers()


def test_64_clients_with_faults_lose_nothing_and_memory_stays_flat(repository, tmp_path):
    repo = tmp_path / "repo"
    for name in ("resnet50_torch", "bert_torch"):
        shutil.copytree(repository / name, repo / name)
    server = Server(repo, "--threads", "2", "--max-request-bytes", str(MAX_BODY),
                    "--request-timeout-ms", str(TIMEOUT_MS))
    rng = np.random.default_rng(0)
    work = {"resnet50_torch": cases("resnet50_torch", 8, rng), "bert_torch": cases("bert_torch", 8, rng)}
    stop = threading.Event()
    ok = [0] * CLIENTS
    failures = []

    def one_client(k):
        name = ("resnet50_torch", "bert_torch")[k % 2]
        kind = ("http", "grpc")[(k // 2) % 2]
        c = client(server, kind)
        j = k
        while not stop.is_set():
            x, want = work[name][j % 8]
            j += 1
            try:
                r = infer(c, kind, name, x)
                for n, w in want.items():
                    np.testing.assert_allclose(r.as_numpy(n), w, rtol=RTOL, atol=ATOL)
                ok[k] += 1
            except Exception as e:
                failures.append(f"client {k} ({kind}, {name}): {e!r}"[:500])

    faults = Faults(server, infer_body(work["resnet50_torch"][0][0]))
    start = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(CLIENTS + 3) as pool:
            running = [pool.submit(one_client, k) for k in range(CLIENTS)]
            running.append(pool.submit(faults.run, stop, work["resnet50_torch"][0][0]))
            running += [pool.submit(faults.run_slow, stop) for _ in range(2)]
            time.sleep(WARMUP)
            warm_rss, warm_ok = server.rss_kib(), sum(ok)
            samples = []  # RSS every 10 s, for the record
            while time.monotonic() - start < SECONDS:
                time.sleep(min(10.0, max(0.0, SECONDS - (time.monotonic() - start))))
                samples.append(server.rss_kib() / 1024)
            stop.set()
            for f in running:
                f.result()
        end_rss = server.rss_kib()
        total = sum(ok)
        print(f"\n{total} requests answered by {CLIENTS} clients in {SECONDS:.0f} s "
              f"({(total - warm_ok) / (SECONDS - WARMUP):.1f}/s after warm-up), {len(failures)} failed; "
              f"faults: {faults.counts}; RSS after warm-up {warm_rss / 1024:.1f} MiB, after the load {end_rss / 1024:.1f} MiB "
              f"({end_rss / warm_rss:.3f}x); RSS every 10 s: {', '.join(f'{m:.1f}' for m in samples)} MiB")
        assert not failures, failures[:5]
        assert not faults.errors, faults.errors[:5]
        assert all(n > 0 for n in ok), "a client got no answer"
        assert min(faults.counts.values()) > 0 and len(faults.counts) == 7, faults.counts
        assert server.proc.poll() is None, "the server died"
        assert end_rss <= warm_rss * 1.10, (warm_rss, end_rss)
        # Still answering, and correct.
        x, want = work["bert_torch"][3]
        r = infer(client(server, "http"), "http", "bert_torch", x)
        for n, w in want.items():
            np.testing.assert_allclose(r.as_numpy(n), w, rtol=RTOL, atol=ATOL)
    finally:
        stop.set()
        code = server.stop()
    assert code == 0, server.log_text()[-3000:]
