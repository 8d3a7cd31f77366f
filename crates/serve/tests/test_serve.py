"""`kiln serve` driven by Triton's own clients (`tritonclient.http`, `tritonclient.grpc`):
metadata, health, every exporter model's outputs against onnxruntime's over both protocols,
JSON and binary tensors, dynamic batching, the model repository calls, metrics, errors, and
shutting down with requests in flight."""

import concurrent.futures
import http.client
import json
import re
import socket
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from conftest import (RTOL, ATOL, MAX_BATCH, Server, batch_symbol, exporter_models, load_case, onnxruntime_outputs,
                      trickle_headers)

PROTOCOLS = ["http", "grpc"]


def client(server, kind):
    if kind == "http":
        return httpclient.InferenceServerClient(server.http, network_timeout=120.0)
    return grpcclient.InferenceServerClient(server.grpc)


def infer(c, kind, model, feed, binary=True, outputs=None, version=""):
    mod = httpclient if kind == "http" else grpcclient
    inputs = []
    for name, arr in feed.items():
        i = mod.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        if kind == "http":
            i.set_data_from_numpy(arr, binary_data=binary)
        else:
            i.set_data_from_numpy(arr)
        inputs.append(i)
    requested = None
    if outputs is not None:
        requested = [mod.InferRequestedOutput(o, binary_data=binary) if kind == "http" else mod.InferRequestedOutput(o)
                     for o in outputs]
    return c.infer(model, inputs, outputs=requested, model_version=version)


def assert_matches(result, want):
    for name, w in want.items():
        got = result.as_numpy(name)
        assert got is not None, name
        assert got.dtype == w.dtype and got.shape == w.shape, (name, got.dtype, got.shape, w.dtype, w.shape)
        np.testing.assert_allclose(got, w, rtol=RTOL, atol=ATOL, err_msg=name)


def test_starts_quickly_and_is_live_and_ready(server):
    # Startup time of the whole repository (13 models) is printed for the record; the bound
    # only catches a hang.
    print(f"kiln-serve ready after {server.startup_s * 1000:.0f} ms with {len(exporter_models())} models")
    assert server.startup_s < 30
    h, g = client(server, "http"), client(server, "grpc")
    assert h.is_server_live() and h.is_server_ready()
    assert g.is_server_live() and g.is_server_ready()
    for meta in (h.get_server_metadata(), g.get_server_metadata(as_json=True)):
        assert meta["name"] == "kiln"
        assert "binary_tensor_data" in meta["extensions"] and "model_repository" in meta["extensions"]


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_model_metadata(server, kind):
    c = client(server, kind)
    meta = c.get_model_metadata("resnet50_torch") if kind == "http" else c.get_model_metadata("resnet50_torch", as_json=True)
    assert meta["name"] == "resnet50_torch" and meta["versions"] == ["1"] and meta["platform"] == "kiln"
    shape = lambda t: [int(d) for d in t["shape"]]  # gRPC's JSON gives int64 as strings
    assert [(t["name"], t["datatype"], shape(t)) for t in meta["inputs"]] == [("image", "FP32", [-1, 3, 64, 64])]
    assert [(t["name"], t["datatype"], shape(t)) for t in meta["outputs"]] == [("logits", "FP32", [-1, 100])]
    bert = c.get_model_metadata("bert_torch") if kind == "http" else c.get_model_metadata("bert_torch", as_json=True)
    assert [(t["name"], t["datatype"]) for t in bert["inputs"]] == [
        ("input_ids", "INT64"), ("attention_mask", "INT64"), ("token_type_ids", "INT64")]
    assert c.is_model_ready("resnet50_torch") and c.is_model_ready("resnet50_torch", "1")
    assert not c.is_model_ready("resnet50_torch", "2")
    assert not c.is_model_ready("no_such_model")


@pytest.mark.parametrize("kind", PROTOCOLS)
@pytest.mark.parametrize("name", exporter_models())
def test_outputs_match_onnxruntime(server, kind, name):
    model, feed, _ = load_case(name)
    want = onnxruntime_outputs(model, feed)
    assert_matches(infer(client(server, kind), kind, name, feed), want)


def test_json_tensors(server):
    """Inputs and outputs as JSON arrays (the protocol's base form), not binary."""
    model, feed, _ = load_case("bert_torch")
    want = onnxruntime_outputs(model, feed)
    r = infer(client(server, "http"), "http", "bert_torch", feed, binary=False, outputs=list(want))
    body = r.get_response()
    assert all("data" in o and "parameters" not in o for o in body["outputs"])
    assert_matches(r, want)


def test_binary_and_json_mixed_in_one_request(server):
    model, feed, _ = load_case("bert_torch")
    want = onnxruntime_outputs(model, feed)
    inputs = []
    for k, (name, arr) in enumerate(feed.items()):
        i = httpclient.InferInput(name, list(arr.shape), "INT64")
        i.set_data_from_numpy(arr, binary_data=k % 2 == 0)
        inputs.append(i)
    outputs = [httpclient.InferRequestedOutput("last_hidden_state", binary_data=True),
               httpclient.InferRequestedOutput("pooler_output", binary_data=False)]
    r = client(server, "http").infer("bert_torch", inputs, outputs=outputs)
    kinds = {o["name"]: ("data" in o, "parameters" in o) for o in r.get_response()["outputs"]}
    assert kinds == {"last_hidden_state": (False, True), "pooler_output": (True, False)}
    assert_matches(r, want)


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_asked_outputs_come_in_the_order_asked(server, kind):
    model, feed, _ = load_case("bert_torch")
    want = onnxruntime_outputs(model, feed)
    r = infer(client(server, kind), kind, "bert_torch", feed, outputs=["pooler_output"])
    got = r.get_response()["outputs"] if kind == "http" else r.get_response(as_json=True)["outputs"]
    assert [o["name"] for o in got] == ["pooler_output"]
    np.testing.assert_allclose(r.as_numpy("pooler_output"), want["pooler_output"], rtol=RTOL, atol=ATOL)


def metric(server, name, **labels):
    """The sum of a Prometheus sample's values over the series whose labels include these."""
    conn = http.client.HTTPConnection(server.http)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server):
    """Concurrent single-image requests to a model with a run-time batch dim run as batches,
    and every client gets exactly its image's logits."""
    model, feed, _ = load_case("resnet50_torch")
    rng = np.random.default_rng(7)
    images = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(24)]
    want = [onnxruntime_outputs(model, {"image": x})["logits"] for x in images]
    runs_before = metric(server, "kiln_batch_size_count", model="resnet50_torch")
    rows_before = metric(server, "kiln_batch_size_sum", model="resnet50_torch")

    def one(k):
        kind = PROTOCOLS[k % 2]
        return infer(client(server, kind), kind, "resnet50_torch", {"image": images[k % len(images)]}).as_numpy("logits")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(96)))
    for k, g in enumerate(got):
        np.testing.assert_allclose(g, want[k % len(images)], rtol=RTOL, atol=ATOL)
    runs = metric(server, "kiln_batch_size_count", model="resnet50_torch") - runs_before
    rows = metric(server, "kiln_batch_size_sum", model="resnet50_torch") - rows_before
    assert rows == 96
    assert runs < 96, f"{runs} runs for 96 concurrent requests: none were batched"


def test_requests_of_different_batch_sizes_share_runs(server):
    model, _, _ = load_case("resnet50_torch")
    rng = np.random.default_rng(11)
    sizes = [1, 2, 3, 1, 2]
    images = [rng.standard_normal((n, 3, 64, 64)).astype(np.float32) for n in sizes]
    want = [onnxruntime_outputs(model, {"image": x})["logits"] for x in images]
    with concurrent.futures.ThreadPoolExecutor(len(sizes)) as pool:
        got = list(pool.map(lambda k: infer(client(server, "grpc"), "grpc", "resnet50_torch", {"image": images[k]}).as_numpy("logits"),
                            range(len(sizes))))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


def test_metrics_count_requests_and_failures(server):
    _, feed, _ = load_case("mobilenetv2_torch")
    before = metric(server, "kiln_requests_total", model="mobilenetv2_torch", protocol="http")
    failed = metric(server, "kiln_request_failures_total", model="mobilenetv2_torch", reason="bad_request")
    c = client(server, "http")
    infer(c, "http", "mobilenetv2_torch", feed)
    with pytest.raises(InferenceServerException):
        infer(c, "http", "mobilenetv2_torch", {"image": feed["image"][:, :2]})
    assert metric(server, "kiln_requests_total", model="mobilenetv2_torch", protocol="http") == before + 2
    assert metric(server, "kiln_request_failures_total", model="mobilenetv2_torch", reason="bad_request") == failed + 1
    for name in ["kiln_queue_duration_seconds_count", "kiln_compute_duration_seconds_count",
                 "kiln_request_duration_seconds_count"]:
        assert metric(server, name, model="mobilenetv2_torch") >= 1, name
    # A name a client makes up is counted, not kept as a label of its own.
    unknown = metric(server, "kiln_request_failures_total", model="(unknown)")
    with pytest.raises(InferenceServerException):
        infer(c, "http", "made_up_model_7f3a", feed)
    assert metric(server, "kiln_request_failures_total", model="(unknown)") == unknown + 1
    _, text = raw_http(server, "GET", "/metrics")
    assert b"made_up_model_7f3a" not in text


def expect_error(fn, status, *words):
    with pytest.raises(InferenceServerException) as e:
        fn()
    text = str(e.value)
    assert status in (e.value.status() or "") or status in text, (status, text, e.value.status())
    for w in words:
        assert w in text, (w, text)


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_bad_requests_get_the_protocols_errors(server, kind):
    c = client(server, kind)
    _, feed, _ = load_case("bert_torch")
    bad = "400" if kind == "http" else "INVALID_ARGUMENT"
    missing = "404" if kind == "http" else "NOT_FOUND"
    expect_error(lambda: infer(c, kind, "no_such_model", feed), missing, "unknown model `no_such_model`")
    expect_error(lambda: infer(c, kind, "bert_torch", feed, version="7"), missing, "has no version `7`")
    wrong_dtype = dict(feed, input_ids=feed["input_ids"].astype(np.int32))
    expect_error(lambda: infer(c, kind, "bert_torch", wrong_dtype), bad, "input `input_ids` is INT64, not INT32")
    wrong_shape = dict(feed, attention_mask=feed["attention_mask"][:, :5])
    expect_error(lambda: infer(c, kind, "bert_torch", wrong_shape), bad, "attention_mask", "shape")
    too_many = {k: np.repeat(v, 5, axis=0) for k, v in feed.items()}  # batch 10 > 8
    expect_error(lambda: infer(c, kind, "bert_torch", too_many), bad, "outside its bounds")
    missing_input = {k: v for k, v in feed.items() if k != "token_type_ids"}
    expect_error(lambda: infer(c, kind, "bert_torch", missing_input), bad, "missing input `token_type_ids`")
    unknown = dict(feed, extra=feed["input_ids"])
    expect_error(lambda: infer(c, kind, "bert_torch", unknown), bad, "no input `extra`")
    expect_error(lambda: infer(c, kind, "bert_torch", feed, outputs=["nope"]), bad, "no output `nope`")
    # The server answers the next request as before.
    model, feed, _ = load_case("bert_torch")
    assert_matches(infer(c, kind, "bert_torch", feed), onnxruntime_outputs(model, feed))


def raw_http(server, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection(server.http, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, (json.loads(data) if data and r.getheader("content-type", "").startswith("application/json") else data)


def test_malformed_http_bodies_are_refused_with_a_message(server):
    path = "/v2/models/resnet50_torch/infer"
    status, body = raw_http(server, "POST", path, b"{not json")
    assert status == 400 and "malformed request JSON" in body["error"]
    status, body = raw_http(server, "POST", path, json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": [1.0, 2.0]}]}).encode())
    assert status == 400 and "2 elements in `data`, the shape has 12288" in body["error"]
    status, body = raw_http(server, "POST", path, json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 64, 64], "datatype": "FP32", "parameters": {"binary_data_size": 100}}]}).encode(),
                            {"Inference-Header-Content-Length": "1000000"})
    assert status == 400 and "Inference-Header-Content-Length" in body["error"]
    status, body = raw_http(server, "POST", path, json.dumps({"inputs": [{"name": "image", "shape": [100000, 100000, 3], "datatype": "FP32", "data": []}]}).encode())
    assert status == 400 and "--max-tensor-elements" in body["error"]
    status, body = raw_http(server, "POST", path, json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 64, 64], "datatype": "BYTES", "data": []}]}).encode())
    assert status == 400 and "BYTES" in body["error"]
    status, body = raw_http(server, "GET", "/v2/no/such/endpoint")
    assert status == 404 and "error" in body
    status, _ = raw_http(server, "GET", "/v2/health/ready")
    assert status == 200


def test_repository_unload_and_load(server):
    for kind in PROTOCOLS:
        c = client(server, kind)
        index = c.get_model_repository_index() if kind == "http" else c.get_model_repository_index(as_json=True)["models"]
        names = {m["name"] for m in index}
        assert set(exporter_models()) <= names
        assert all(m.get("state") == "READY" for m in index)

        c.unload_model("yolo_torch")
        assert not c.is_model_ready("yolo_torch")
        _, feed, _ = load_case("yolo_torch")
        expect_error(lambda: infer(c, kind, "yolo_torch", feed), "404" if kind == "http" else "NOT_FOUND", "not available (unloaded)")
        index = c.get_model_repository_index() if kind == "http" else c.get_model_repository_index(as_json=True)["models"]
        assert [m["state"] for m in index if m["name"] == "yolo_torch"] == ["UNAVAILABLE"]
        # Unloading a model does not make the server unready.
        assert c.is_server_ready()

        c.load_model("yolo_torch")
        assert c.is_model_ready("yolo_torch")
        model, feed, _ = load_case("yolo_torch")
        assert_matches(infer(c, kind, "yolo_torch", feed), onnxruntime_outputs(model, feed))
        expect_error(lambda: c.load_model("no_such_model"), "404" if kind == "http" else "NOT_FOUND", "no_such_model")
        expect_error(lambda: c.load_model("..etc"), "400" if kind == "http" else "INVALID_ARGUMENT", "not a model name")


def test_a_new_version_is_served_after_a_reload(repository, tmp_path):
    """A second server on a copy of one model: version 2 added on disk is served after
    load_model, and requests naming no version get it."""
    import shutil
    repo = tmp_path / "repo"
    shutil.copytree(repository / "mobilenetv2_torch", repo / "mobilenetv2_torch")
    s = Server(repo, "--threads", "1")
    try:
        c = client(s, "http")
        assert c.get_model_metadata("mobilenetv2_torch")["versions"] == ["1"]
        shutil.copytree(repo / "mobilenetv2_torch" / "1", repo / "mobilenetv2_torch" / "2")
        c.load_model("mobilenetv2_torch")
        assert c.get_model_metadata("mobilenetv2_torch")["versions"] == ["1", "2"]
        model, feed, _ = load_case("mobilenetv2_torch")
        r = infer(c, "http", "mobilenetv2_torch", feed)
        assert r.get_response()["model_version"] == "2"
        assert_matches(r, onnxruntime_outputs(model, feed))
        assert infer(c, "http", "mobilenetv2_torch", feed, version="1").get_response()["model_version"] == "1"
    finally:
        assert s.stop() == 0


def test_a_damaged_artifact_leaves_the_others_served(repository, tmp_path):
    import shutil
    repo = tmp_path / "repo"
    shutil.copytree(repository / "mobilenetv2_torch", repo / "good")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.kiln").write_bytes(b"KILN but not really" * 10)
    s = Server(repo, "--threads", "1")
    try:
        c = client(s, "http")
        assert not c.is_server_ready()  # a model failed to load
        assert c.is_model_ready("good") and not c.is_model_ready("broken")
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert index["broken"]["state"] == "UNAVAILABLE" and "broken" in index["broken"]["reason"]
        _, feed, _ = load_case("mobilenetv2_torch")
        infer(c, "http", "good", feed)
    finally:
        assert s.stop() == 0


def test_shutdown_finishes_the_requests_in_flight(repository):
    """SIGTERM while requests wait out a long batching delay: each still gets its answer, then
    the server exits 0 and stops listening."""
    s = Server(repository, "--threads", "1", "--batch-delay-us", "1500000")
    model, feed, _ = load_case("resnet50_torch")
    want = onnxruntime_outputs(model, feed)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(lambda k=k: infer(client(s, PROTOCOLS[k % 2]), PROTOCOLS[k % 2], "resnet50_torch", feed))
                   for k in range(3)]
        time.sleep(0.5)
        assert not any(f.done() for f in futures)
        code = s.stop()
        results = [f.result() for f in futures]
    assert code == 0, s.log_text()
    for r in results:
        assert_matches(r, want)
    assert "shutting down" in s.log_text()
    host, port = s.http.rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2)


def test_logs_can_be_json(repository, tmp_path):
    import shutil
    repo = tmp_path / "repo"
    shutil.copytree(repository / "mobilenetv2_torch", repo / "m")
    s = Server(repo, "--log-format", "json")
    try:
        _, feed, _ = load_case("mobilenetv2_torch")
        with pytest.raises(InferenceServerException):
            infer(client(s, "http"), "http", "m", {"image": feed["image"][:, :1]})
    finally:
        assert s.stop() == 0
    events = [json.loads(line) for line in s.log_text().splitlines() if line.strip()]
    assert any(e["fields"].get("message") == "ready" for e in events)
    failed = [e for e in events if e["fields"].get("message") == "request failed"]
    assert failed and failed[0]["level"] == "WARN" and "image" in failed[0]["fields"]["error"]


def test_batch_symbol_detection_matches_the_models():
    """The repository's batched models are the exporter models whose inputs vary only in dim 0."""
    batched = {n for n in exporter_models() if batch_symbol(load_case(n)[2])}
    assert {"resnet50_torch", "bert_torch", "yolo_torch_legacy"} <= batched
    assert "gpt2_torch" not in batched and "bert_torch_legacy" not in batched
    assert MAX_BATCH >= 2


def test_a_killed_server_leaves_no_files_behind(repository, tmp_path):
    """The runtime removes each model's code file once it has loaded it: a server killed with
    SIGKILL (as a container's replica may be) leaves nothing in its temporary directory."""
    import os
    import shutil
    repo = tmp_path / "repo"
    shutil.copytree(repository / "mobilenetv2_torch", repo / "m")
    shutil.copytree(repository / "bert_torch", repo / "b")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    s = Server(repo, env=dict(os.environ, TMPDIR=str(tmp)))
    try:
        _, feed, _ = load_case("mobilenetv2_torch")
        infer(client(s, "http"), "http", "m", feed)
        assert list(tmp.iterdir()) == []
    finally:
        s.proc.kill()
        s.stop()
    assert list(tmp.iterdir()) == []


def test_a_models_config_overrides_the_servers_batching(repository, tmp_path):
    """`NAME/config.json`: batching off for one copy of a model, at most 2 rows for another;
    a config with an unknown key leaves its model unavailable, naming the key."""
    import shutil
    repo = tmp_path / "repo"
    for name, config in [("off", {"dynamic_batching": False}), ("two", {"dynamic_batching": {"max_batch": 2}}),
                         ("bad", {"dynamic_batching": True, "max_batchsize": 4})]:
        shutil.copytree(repository / "resnet50_torch", repo / name)
        (repo / name / "config.json").write_text(json.dumps(config))
    s = Server(repo, "--threads", "1", "--batch-delay-us", "20000")
    try:
        c = client(s, "http")
        assert not c.is_model_ready("bad")
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert "max_batchsize" in index["bad"]["reason"]
        model, _, _ = load_case("resnet50_torch")
        rng = np.random.default_rng(3)
        x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
        want = onnxruntime_outputs(model, {"image": x})["logits"]
        for name in ("off", "two"):
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                got = list(pool.map(lambda _: infer(client(s, "grpc"), "grpc", name, {"image": x}).as_numpy("logits"), range(16)))
            for g in got:
                np.testing.assert_allclose(g, want, rtol=RTOL, atol=ATOL)
            runs = metric(s, "kiln_batch_size_count", model=name)
            assert metric(s, "kiln_batch_size_sum", model=name) == 16
            if name == "off":
                assert runs == 16
            else:
                assert metric(s, "kiln_batch_size_bucket", model=name, le="2") == runs and runs < 16
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_bodies_both_ways(server, algorithm):
    model, feed, _ = load_case("bert_torch")
    want = onnxruntime_outputs(model, feed)
    inputs = []
    for name, arr in feed.items():
        i = httpclient.InferInput(name, list(arr.shape), "INT64")
        i.set_data_from_numpy(arr)
        inputs.append(i)
    r = client(server, "http").infer("bert_torch", inputs, request_compression_algorithm=algorithm,
                                     response_compression_algorithm=algorithm)
    assert_matches(r, want)
    # A body that is not what its Content-Encoding says is refused with a message.
    status, body = raw_http(server, "POST", "/v2/models/bert_torch/infer", b"not compressed at all",
                            {"Content-Encoding": algorithm})
    assert status == 400 and "cannot read the request body" in body["error"]


def test_a_client_trickling_its_headers_is_disconnected(repository, tmp_path):
    """Slow headers (a slowloris client): the connection is closed once the request timeout
    passes without a whole request head, and the server answers others meanwhile."""
    import shutil
    repo = tmp_path / "repo"
    shutil.copytree(repository / "mobilenetv2_torch", repo / "m")
    s = Server(repo, "--request-timeout-ms", "2000")
    try:
        _, feed, _ = load_case("mobilenetv2_torch")
        answered = []
        start = time.monotonic()
        assert trickle_headers(s.http, 20, lambda: answered.append(infer(client(s, "http"), "http", "m", feed)))
        assert time.monotonic() - start < 10 and answered
    finally:
        assert s.stop() == 0
