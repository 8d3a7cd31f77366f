#!/usr/bin/env python3
"""Kiln against its peers on the same models, in one run, same thread count.

For each model, Kiln (`kiln bench --serve`), onnxruntime (CPU provider), OpenVINO (CPU
plugin, f32) and tract (each of the last two if its Python package is installed: the venv
of scripts/python/peers.lock, see README "Speed"; tract has no threads of its own, so it is timed only with
--threads 1) are each loaded once, in a process of their own, and then timed in rounds of
--iters runs, every runtime in turn, for --rounds rounds (the order rotating), so that
they all see the same machine. Printed: the median of all of each runtime's runs and
Kiln's ratio to each peer (below 1.0: Kiln is faster), and the ratio of the best round
medians ("best k/o": on a shared machine interference only adds time, so it is the
steadier figure when rounds disagree). Before timing, Kiln's outputs are compared with
onnxruntime's on the same inputs (`kiln run`; rtol 1e-3, atol 1e-4) and the last column
says whether they match.

    target/peers-venv/bin/python benches/peers/run.py [--threads N] [--rounds R] [--iters I] MODEL.onnx|DIR...
    target/peers-venv/bin/python benches/peers/run.py --bench-models [--threads N] ...
    target/peers-venv/bin/python benches/peers/run.py MODEL --dim batch=1..8 --dim seq=1..512 [--shapes 1x7,4x384]
    target/peers-venv/bin/python benches/peers/run.py --decode DIR [--threads N]

--decode times greedy generation with a decoder whose key/value cache has a run-time past
length (scripts/export_bench_models.py's gpt2_decode; DIR/meta.json gives the dims, the
prompt and onnxruntime's tokens): the model is compiled once with those dims, the tokens
Kiln generates (target/release/kiln-decode) are checked against onnxruntime's, and then
both generate the same tokens, interleaved; the figure is each generation's time per step
(milliseconds per token: the prompt token by token, then the new tokens). onnxruntime is
driven from Python (`InferenceSession.run` with numpy arrays, as its users drive it).

With no model given it uses the generated test models (scripts/gen_testdata.py).
--bench-models uses the full-size models of issue 4 in target/bench-models/*/model.onnx
(ResNet-50, MobileNetV2, BERT-base and GPT-2 small at sequence 128; written by
scripts/export_bench_models.py), and their quantized versions where
scripts/quantize_bench_models.py made them (resnet50_qdq, bert_base_dynq: onnxruntime then
runs its int8 kernels, the int8 peer), and compiles each once with `kiln compile`, so the
rounds don't repeat a long compile; --precompile does that for any model.
A model may be given as its folder (DIR/model.onnx). Where the model's folder holds
input_<i>.npy files (the exporters' inputs: valid token ids and masks), those are fed, in the
order of meta.json's inputs or else of the graph's inputs; otherwise inputs are random with a
fixed seed (integer inputs in [0, 8), except ones for an input named *mask* and zeros for
*token_type*), and every model input must have a static shape.
"""
import argparse
import os
import json
import shutil
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
BENCH_MODELS = REPO / "target" / "bench-models"
BENCH_ORDER = ("resnet50", "resnet50_qdq", "mobilenetv2", "bert_base", "bert_base_dynq", "bert_base_qdq", "gpt2_small")
# Ops that make a model a quantized one (its outputs are compared with the int8 tolerance).
QUANT_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"}
KILN = REPO / "target" / "release" / "kiln"
KILN_DECODE = REPO / "target" / "release" / "kiln-decode"
# The pause before each runtime's turn, for the others' worker threads to go to sleep:
# onnxruntime's spinning workers still took a core from the next runtime 100 ms after its
# turn (a 0.37 ms grouped convolution of Kiln's timed at 0.76 ms at 2 threads; 0.39 ms
# after 0.5 s, or with onnxruntime's spinning off).
PAUSE_S = float(os.environ.get("PEERS_PAUSE_S", "0.5"))
NP_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
            onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.UINT8: np.uint8}


def saved_inputs(path: Path, names: list[str]) -> dict | None:
    """The input_<i>.npy files next to the model, if there is one per input."""
    d = path.parent
    meta = d / "meta.json"
    if meta.exists():
        ins = json.loads(meta.read_text()).get("inputs", [])
        files = {i["name"]: d / i["file"] for i in ins}
    else:
        files = {n: d / f"input_{k}.npy" for k, n in enumerate(names)}
    if sorted(files) != sorted(names) or not all(f.exists() for f in files.values()):
        return None
    return {n: np.load(files[n]) for n in names}


def inputs_of(path: Path) -> dict:
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    graph_inputs = [i for i in m.graph.input if i.name not in inits]
    del m
    saved = saved_inputs(path, [i.name for i in graph_inputs])
    if saved is not None:
        return saved
    rng = np.random.default_rng(0)
    feeds = {}
    for i in graph_inputs:
        t = i.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        dtype = NP_TYPES[t.elem_type]
        if dtype != np.float32 and "mask" in i.name.lower():
            feeds[i.name] = np.ones(shape, dtype)
        elif dtype != np.float32 and "token_type" in i.name.lower():
            feeds[i.name] = np.zeros(shape, dtype)
        else:
            feeds[i.name] = (rng.standard_normal(shape) if dtype == np.float32 else rng.integers(0, 8, shape)).astype(dtype)
    return feeds


def shape_args(model: Path, feeds: dict) -> list[str]:
    """`--input-shape NAME=DIMS` for every input, from the values fed, when compiling from an
    ONNX file (an exported model's batch dim is symbolic); none for a compiled artifact."""
    if model.suffix != ".onnx":
        return []
    args = []
    for name, v in feeds.items():
        args += ["--input-shape", f"{name}={'x'.join(map(str, v.shape))}"]
    return args


def compile_kiln(path: Path, feeds: dict, tmp: Path) -> tuple[Path, float]:
    """Compiles the model once into a .kiln artifact; returns it and the compile seconds."""
    out = tmp / f"{path.parent.name}.kiln"
    t = time.perf_counter()
    args = [str(KILN), "compile", str(path), "-o", str(out)] + shape_args(path, feeds) + KILN_ARGS
    subprocess.run(args, check=True, capture_output=True, text=True)
    return out, time.perf_counter() - t


def save_feeds(feeds: dict, tmp: Path) -> list[str]:
    """Writes the inputs to .npy files; returns `NAME=FILE` arguments."""
    args = []
    for name, v in feeds.items():
        f = tmp / f"{abs(hash(name))}.npy"
        np.save(f, v)
        args.append(f"{name}={f}")
    return args


def ort_runner(path: Path, feeds: dict, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if os.environ.get("ORT_NO_SPIN"):
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda: s.run(None, feeds)


def ort_decoder(path: Path, threads: int, prompt: list[int], n: int):
    """onnxruntime's greedy generation with a key/value-cache decoder (inputs `input_ids`,
    `position_ids`, `past_*`; outputs the logits, then `present_*`): a function giving the
    tokens and the steps run, the prompt fed token by token, then its own picks."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    cache = [(i.name, [d if isinstance(d, int) else 0 for d in i.shape]) for i in s.get_inputs()
             if i.name.startswith("past")]

    def generate() -> tuple[list[int], int]:
        kv = {name: np.zeros(shape, np.float32) for name, shape in cache}
        tokens: list[int] = []
        steps = len(prompt) + n - 1
        for pos in range(steps):
            tok = prompt[pos] if pos < len(prompt) else tokens[-1]
            outs = s.run(None, {"input_ids": np.array([[tok]], np.int64),
                                "position_ids": np.array([[pos]], np.int64), **kv})
            kv = {name: o for (name, _), o in zip(cache, outs[1:])}
            if pos >= len(prompt) - 1:
                tokens.append(int(np.argmax(outs[0][0, -1])))
        return tokens, steps

    return generate


def tract_runner(path: Path, feeds: dict, threads: int):
    import tract  # noqa: PLC0415

    onnx_ = tract.onnx()
    # tract ≥ 0.22: `load` and `into_model` (which optimizes); before: `model_for_path`
    # and `into_optimized`.
    m = onnx_.load(str(path)) if hasattr(onnx_, "load") else onnx_.model_for_path(str(path))
    for k, (name, v) in enumerate(feeds.items()):
        m.set_input_fact(k, f"{','.join(map(str, v.shape))},{'f32' if v.dtype == np.float32 else 'i64'}")
    r = (m.into_model() if hasattr(m, "into_model") else m.into_optimized()).into_runnable()
    args = list(feeds.values())
    return lambda: r.run(args)


def openvino_runner(path: Path, feeds: dict, threads: int, precision: str | None = "f32"):
    """OpenVINO's CPU plugin at f32 (on CPUs with AMX or AVX-512 BF16 its default precision
    would be bf16; `precision=None` keeps the default), the latency hint, one stream,
    `threads` threads."""
    import openvino as ov  # noqa: PLC0415

    core = ov.Core()
    m = core.read_model(str(path))
    m.reshape({name: list(v.shape) for name, v in feeds.items()})
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads)}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    c = core.compile_model(m, "CPU", config)
    req = c.create_infer_request()
    return lambda: req.infer(feeds)


def openvino_default_runner(path: Path, feeds: dict, threads: int):
    """OpenVINO at its default precision for this CPU (bf16 where it has AMX or AVX-512 BF16,
    else f32): the peer of `--precision bf16`."""
    return openvino_runner(path, feeds, threads, None)


# Peers by name: a function that loads the model and returns one that runs it once; the
# Python package each needs.
PEERS = {"ort": (ort_runner, "onnxruntime"), "openvino": (openvino_runner, "openvino"), "tract": (tract_runner, "tract"),
         "ov-default": (openvino_default_runner, "openvino")}
# Arguments every `kiln compile` (and `kiln bench` of an .onnx) of this run gets (`--precision`).
KILN_ARGS: list[str] = []


class Server:
    """A runtime loaded once in a process of its own that runs the model on request: a line
    with a count in, a line `times_ms=<t1>,<t2>,…` out (`kiln bench --serve`, or this
    script's `--worker`). Rounds of every runtime interleave run by run, so that they all
    see the same machine, and no runtime's threads (OpenVINO's stay alive after its model
    is gone) compete with the one being timed."""

    def __init__(self, name: str, args: list[str]):
        self.name = name
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def times(self, n: int) -> list[float] | None:
        """`n` runs' times in ms; None if the runtime failed (it said why on stderr)."""
        if self.p.poll() is not None:
            return None
        try:
            self.p.stdin.write(f"{n}\n")
            self.p.stdin.flush()
            line = self.p.stdout.readline()
        except BrokenPipeError:
            return None
        if not line.startswith("times_ms="):
            return None
        v = line.strip().split("=", 1)[1]
        return [float(t) for t in v.split(",")] if v else []

    def close(self) -> None:
        try:
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        self.p.wait()


def kiln_server(path: Path, feeds: dict, feed_args: list[str], threads: int, kiln: Path = KILN,
                name: str = "kiln") -> Server:
    args = [str(kiln), "bench", str(path), "--threads", str(threads), "--serve"] + shape_args(path, feeds)
    if path.suffix == ".onnx" and kiln == KILN:
        args += KILN_ARGS
    for f in feed_args:
        args += ["--input", f]
    return Server(name, args)


def peer_server(peer: str, path: Path, feed_args: list[str], threads: int) -> Server:
    args = [sys.executable, __file__, "--worker", peer, "--threads", str(threads), str(path)]
    for f in feed_args:
        args += ["--feed", f]
    return Server(peer, args)


def worker(a: argparse.Namespace) -> None:
    """`--worker PEER`: load one model into one peer, then serve counts from stdin like
    `kiln bench --serve`. Exits quietly if the peer is not installed."""
    make, package = PEERS[a.worker]
    try:
        __import__(package)
    except ImportError:
        return
    if a.decode:
        generate = ort_decoder(a.models[0], a.threads, [int(t) for t in a.prompt.split(",")], a.tokens)
        generate()
        for line in sys.stdin:
            times = []
            for _ in range(int(line)):
                t = time.perf_counter()
                _, steps = generate()
                times.append(f"{(time.perf_counter() - t) * 1e3 / steps:.4f}")
            print(f"times_ms={','.join(times)}", flush=True)
        return
    feeds = {}
    for f in a.feed:
        name, file = f.split("=", 1)
        feeds[name] = np.load(file)
    try:
        run = make(a.models[0], feeds, a.threads)
        for _ in range(3):
            run()
    except Exception as e:  # noqa: BLE001
        print(f"  {a.worker} failed on {a.models[0]}: {e}", file=sys.stderr)
        return
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            t = time.perf_counter()
            run()
            times.append(f"{(time.perf_counter() - t) * 1e3:.4f}")
        print(f"times_ms={','.join(times)}", flush=True)


def outputs_match(path: Path, kiln_model: Path, feeds: dict, tmp: Path) -> str:
    """Runs Kiln (`kiln run`) and onnxruntime once on the same inputs and compares every output
    (rtol 1e-3, atol 1e-4; with `--precision bf16`, within 1% of the largest output): "yes",
    or what differs. A quantized model's outputs are reported as their largest difference
    relative to the largest output and whether the top class (last axis) agrees."""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
    out = tmp / "outputs"
    shutil.rmtree(out, ignore_errors=True)
    args = [str(KILN), "run", str(kiln_model), "--output-dir", str(out)] + shape_args(kiln_model, feeds)
    if kiln_model.suffix == ".onnx":
        args += KILN_ARGS
    for f in save_feeds(feeds, tmp):
        args += ["--input", f]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        return "KILN FAILED: " + (r.stderr.strip().splitlines() or ["?"])[-1][:200]
    bf16 = "bf16" in KILN_ARGS
    quantized = "int8" in KILN_ARGS or any(
        n.op_type in QUANT_OPS for n in onnx.load(str(path), load_external_data=False).graph.node)
    notes = []
    for name, w in want.items():
        got = np.load(out / f"{name}.npy")
        if got.shape != w.shape:
            return f"NO ({name}: shape {got.shape}, onnxruntime's {w.shape})"
        diff = np.abs(got.astype(np.float64) - w)
        if quantized:
            # Integer results differ from onnxruntime's by rounding ties and, on CPUs without
            # VNNI, by its u8·s8 kernels' i16 saturation: reported, with the top class.
            top = "same top-1" if w.ndim == 0 or np.array_equal(got.argmax(-1), w.argmax(-1)) else "top-1 DIFFERS"
            notes.append(f"{name}: {100 * diff.max() / max(np.abs(w).max(), 1e-30):.2g}% of max, {top}")
            continue
        ok = diff.max() <= 0.01 * np.abs(w).max() if bf16 else np.allclose(got, w, rtol=1e-3, atol=1e-4)
        if not ok:
            return f"NO ({name}: max abs diff {diff.max():.3g})"
    return f"int8 ({'; '.join(notes)})" if quantized else "yes"


def timed(live: list[Server], rounds: int, iters: int, path: Path) -> tuple[dict, dict]:
    """Rounds of `iters` runs each, every runtime in turn, the order rotating from round to
    round; then closes the servers. Returns each runtime's round medians and all its times."""
    per_round = {srv.name: [] for srv in live}
    runs = {srv.name: [] for srv in live}
    for r in range(rounds):
        for srv in live[r % len(live):] + live[:r % len(live)]:
            # A pause first: runtimes' worker threads spin for a while after a run
            # (onnxruntime's by default), and must be asleep before the next one is timed.
            time.sleep(PAUSE_S)
            ts = srv.times(iters)
            if ts is None:
                sys.exit(f"{srv.name} failed on {path}")
            per_round[srv.name].append(statistics.median(ts))
            runs[srv.name] += ts
    for srv in live:
        srv.close()
    return per_round, runs


def run_time_dims(a: argparse.Namespace, path: Path) -> None:
    """`--dim NAME=LO..HI`... `--shapes B1xS1,...`: the model compiled once with those run-time
    dims, timed at each shape (the leading axes of every input) against an artifact pinned to
    that shape and onnxruntime, interleaved; the dynamic artifact's outputs are compared with
    onnxruntime's. Inputs: token ids below 100, masks of ones, token types of zeros, floats
    from a normal distribution."""
    base = inputs_of(path)
    tmp = REPO / "target" / "peers" / "dims"
    tmp.mkdir(parents=True, exist_ok=True)
    dyn = tmp / f"{path.parent.name}.dyn.kiln"
    args = [str(KILN), "compile", str(path), "-o", str(dyn)]
    for d in a.dim:
        args += ["--dim", d]
    subprocess.run(args, check=True, capture_output=True, text=True)
    print(f"threads={a.threads} rounds={a.rounds} iters={a.iters} dims={' '.join(a.dim)}")
    print(f"{'shape':12} {'dynamic ms':>11} {'pinned ms':>10} {'ort ms':>9} {'dyn/pinned':>11} {'best d/p':>9}"
          f" {'dyn/ort':>8}  outputs match ort")
    for shape in a.shapes.split(","):
        lead = [int(x) for x in shape.split("x")]
        rng = np.random.default_rng(1)
        feeds = {}
        for name, v in base.items():
            shp = lead + list(v.shape[len(lead):])
            if v.dtype == np.float32:
                feeds[name] = rng.standard_normal(shp).astype(np.float32)
            elif "mask" in name.lower():
                feeds[name] = np.ones(shp, v.dtype)
            elif "type" in name.lower():
                feeds[name] = np.zeros(shp, v.dtype)
            else:
                feeds[name] = rng.integers(0, 100, shp).astype(v.dtype)
        sub = tmp / shape
        sub.mkdir(exist_ok=True)
        pinned, _ = compile_kiln(path, feeds, sub)
        match = outputs_match(path, dyn, feeds, sub)
        feed_args = save_feeds(feeds, sub)
        servers = []
        for name, art in (("dynamic", dyn), ("pinned", pinned)):
            srv_args = [str(KILN), "bench", str(art), "--threads", str(a.threads), "--serve"]
            for f in feed_args:
                srv_args += ["--input", f]
            servers.append(Server(name, srv_args))
        servers.append(peer_server("ort", path, feed_args, a.threads))
        for srv in servers:
            if srv.times(0) is None:
                sys.exit(f"{srv.name} failed to load {path} at {shape}")
        per_round, runs = timed(servers, a.rounds, a.iters, path)
        med = {n: statistics.median(v) for n, v in runs.items()}
        dm, pm, om = med["dynamic"], med["pinned"], med["ort"]
        best = min(per_round["dynamic"]) / min(per_round["pinned"])
        print(f"{shape:12} {dm:11.3f} {pm:10.3f} {om:9.3f} {dm / pm:11.3f} {best:9.3f} {dm / om:8.2f}  {match}",
              flush=True)


def decode(a: argparse.Namespace, folder: Path) -> None:
    """`--decode DIR`: greedy generation with a key/value-cache decoder, Kiln against
    onnxruntime (see the module's doc)."""
    meta = json.loads((folder / "meta.json").read_text())
    path = folder / "model.onnx"
    prompt, want = meta["greedy"]["prompt"], meta["greedy"]["tokens"]
    n = len(want)
    tmp = REPO / "target" / "peers" / "decode"
    tmp.mkdir(parents=True, exist_ok=True)
    precision = KILN_ARGS[KILN_ARGS.index("--precision") + 1] if "--precision" in KILN_ARGS else "f32"
    art = tmp / f"{folder.name}{'' if precision == 'f32' else '.' + precision}.kiln"
    args = [str(KILN), "compile", str(path), "-o", str(art)] + KILN_ARGS
    for name, (lo, hi) in meta["dims"].items():
        args += ["--dim", f"{name}={lo}..{hi}"]
    t = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, text=True)
    print(f"  ({folder.name}: kiln compile {time.perf_counter() - t:.1f} s)", file=sys.stderr, flush=True)
    p_arg = ",".join(map(str, prompt))
    out = subprocess.run([str(KILN_DECODE), str(art), "--prompt", p_arg, "--tokens", str(n)], check=True,
                         capture_output=True, text=True).stdout
    got = [int(x) for x in out.strip().split("=", 1)[1].split(",")]
    match = "yes" if got == want else f"NO (kiln {got}, onnxruntime {want})"
    kiln = Server("kiln", [str(KILN_DECODE), str(art), "--prompt", p_arg, "--tokens", str(n), "--threads",
                           str(a.threads), "--serve"])
    ort_ = Server("ort", [sys.executable, __file__, "--worker", "ort", "--decode", "--prompt", p_arg, "--tokens",
                          str(n), "--threads", str(a.threads), str(path)])
    for srv in (kiln, ort_):
        if srv.times(0) is None:
            sys.exit(f"{srv.name} failed to load {path}")
    per_round, runs = timed([kiln, ort_], a.rounds, a.iters, path)
    km, om = statistics.median(runs["kiln"]), statistics.median(runs["ort"])
    best = min(per_round["kiln"]) / min(per_round["ort"])
    print(f"threads={a.threads} rounds={a.rounds} iters={a.iters} dims={meta['dims']} "
          f"steps per generation={len(prompt) + n - 1}")
    print(f"{'model':14} {'kiln ms/token':>14} {'ort ms/token':>13} {'kiln/ort':>9} {'best k/o':>9}  tokens match ort")
    print(f"{folder.name:14} {km:14.3f} {om:13.3f} {km / om:9.2f} {best:9.2f}  {match}", flush=True)
    line = " | ".join(f"{name} {' '.join(f'{x:.2f}' for x in per_round[name])}" for name in ("kiln", "ort"))
    print(f"  round medians: {line}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=sorted(PEERS), help=argparse.SUPPRESS)
    ap.add_argument("--feed", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--bench-models", action="store_true",
                    help="benchmark target/bench-models/*/model.onnx (scripts/export_bench_models.py)")
    ap.add_argument("--peers", default="ort,openvino,tract",
                    help="the peers to time besides onnxruntime (always timed): a comma-separated list")
    ap.add_argument("--ops", action="store_true",
                    help="the op-level suite (benches/peers/ops.py): one model per op family and shape")
    ap.add_argument("--ops-filter", help="with --ops: only cases whose name contains this, or of this family")
    ap.add_argument("--precompile", action="store_true",
                    help="compile each model once with `kiln compile` and bench the .kiln (implied by --bench-models)")
    ap.add_argument("--dim", action="append", default=[], metavar="NAME=LO..HI",
                    help="compile the model once with these run-time dims and time it at --shapes against artifacts "
                         "pinned to each shape (and onnxruntime)")
    ap.add_argument("--shapes", default="1x7,1x128,4x384,8x512",
                    help="with --dim: the leading axes of every input, e.g. 1x7,4x384")
    ap.add_argument("--decode", action="store_true",
                    help="greedy generation with a key/value-cache decoder (a folder with meta.json), per token")
    ap.add_argument("--baseline", type=Path, metavar="KILN",
                    help="another `kiln` binary (an earlier build), timed as one more runtime on the same models: "
                         "the kiln/base column (the model compiled by each binary)")
    ap.add_argument("--prompt", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--precision", choices=["f32", "bf16", "int8"],
                    help="compile Kiln's side with this precision (`kiln compile --precision`); time OpenVINO at its "
                         "default precision too with --peers ...,ov-default")
    a = ap.parse_args()
    if a.precision:
        KILN_ARGS.extend(["--precision", a.precision])
    if a.worker:
        worker(a)
        return
    if a.decode:
        if not KILN_DECODE.exists():
            sys.exit(f"{KILN_DECODE} missing: cargo build --release -p kiln-benches --bin kiln-decode")
        for m in a.models:
            decode(a, m if m.is_dir() else m.parent)
        return
    if a.dim:
        for m in a.models:
            run_time_dims(a, m / "model.onnx" if m.is_dir() else m)
        return
    if a.bench_models:
        # (A decoder stepped with its cache is timed by --decode.)
        found = sorted((p for p in BENCH_MODELS.glob("*/model.onnx")
                        if not (p.parent / "meta.json").exists() or "greedy" not in (p.parent / "meta.json").read_text()),
                       key=lambda p: (BENCH_ORDER.index(p.parent.name) if p.parent.name in BENCH_ORDER
                                      else len(BENCH_ORDER), p.parent.name))
        if not found:
            sys.exit(f"no models in {BENCH_MODELS}: /work/torchenv/bin/python scripts/export_bench_models.py")
        a.models = a.models + found
        a.precompile = True
    if a.ops:
        sys.path.insert(0, str(Path(__file__).parent))
        import ops  # noqa: PLC0415

        a.models = a.models + ops.write(REPO / "target" / "peers" / "ops", a.ops_filter)
    a.models = [m / "model.onnx" if m.is_dir() else m for m in a.models]
    models = a.models or [DATA / "models" / m / "model.onnx" for m in ("mlp", "resnet_cnn", "transformer_encoder")] + [
        DATA / "light" / "resnet50" / "model.onnx"
    ]
    if not KILN.exists():
        sys.exit(f"{KILN} missing: cargo build --release -p kiln-cli")
    tmp = REPO / "target" / "peers"
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"threads={a.threads} rounds={a.rounds} iters={a.iters}")
    print(f"{'model':24} {'kiln ms':>9} {'ort ms':>9} {'ov ms':>9} {'tract ms':>9} {'kiln/ort':>9} {'best k/o':>9}"
          f" {'kiln/ov':>9} {'kiln/tract':>10}  outputs match ort")
    table = []
    for path in models:
        feeds = inputs_of(path)
        kiln_model = path
        if a.precompile:
            kiln_model, secs = compile_kiln(path, feeds, tmp)
            print(f"  ({path.parent.name}: kiln compile {secs:.1f} s)", file=sys.stderr, flush=True)
        match = outputs_match(path, kiln_model, feeds, tmp)
        if match.startswith("KILN FAILED"):
            print(f"{path.parent.name:24} {match}", flush=True)
            table.append((path.parent.name, float("nan"), float("nan"), float("nan"), float("nan"), match))
            continue
        feed_args = save_feeds(feeds, tmp)
        servers = [kiln_server(kiln_model, feeds, feed_args, a.threads), peer_server("ort", path, feed_args, a.threads)]
        if a.baseline:
            servers.append(kiln_server(path, feeds, feed_args, a.threads, a.baseline, "base"))
        if "openvino" in a.peers.split(","):
            servers.append(peer_server("openvino", path, feed_args, a.threads))
        if a.threads == 1 and "tract" in a.peers.split(","):
            servers.append(peer_server("tract", path, feed_args, a.threads))
        if "ov-default" in a.peers.split(","):
            servers.append(peer_server("ov-default", path, feed_args, a.threads))
        # Every runtime loads (in parallel) and warms up before any is timed.
        live = []
        for srv in servers:
            if srv.times(0) is not None:
                live.append(srv)
            else:
                srv.close()
        names = [srv.name for srv in live]
        if names[:2] != ["kiln", "ort"]:
            if not a.ops:
                sys.exit(f"kiln or onnxruntime failed on {path}")
            print(f"{path.parent.name:24} kiln or onnxruntime failed to load", flush=True)
            for srv in live:
                srv.close()
            continue
        per_round, runs = timed(live, a.rounds, a.iters, path)
        med = {n: statistics.median(v) for n, v in runs.items()}
        km, om = med["kiln"], med["ort"]
        vm, tm = med.get("openvino", float("nan")), med.get("tract", float("nan"))
        name = path.parent.name
        # On a shared machine interference only adds time: the ratio of the best rounds is the
        # steadier figure when rounds disagree.
        best = min(per_round["kiln"]) / min(per_round["ort"])
        base = ""
        if "ov-default" in med:
            best_d = min(per_round["kiln"]) / min(per_round["ov-default"])
            base += f"  kiln/ov-default {km / med['ov-default']:.2f} (best {best_d:.2f})"
        if "base" in med:
            base += f"  kiln/base {km / med['base']:.2f} (best {min(per_round['kiln']) / min(per_round['base']):.2f})"
        print(f"{name:24} {km:9.3f} {om:9.3f} {vm:9.3f} {tm:9.3f} {km / om:9.2f} {best:9.2f} {km / vm:9.2f}"
              f" {km / tm:10.2f}  {match}{base}", flush=True)
        table.append((name, km, om, vm, best, match))
        if a.rounds > 1:
            line = " | ".join(f"{n} {' '.join(f'{x:.2f}' for x in per_round[n])}" for n in names)
            print(f"  round medians: {line}", file=sys.stderr, flush=True)

    if a.ops:
        # The suite's table: worst ratio first.
        print(f"\n| case (source) | kiln ms | ort ms | kiln/ort | best k/o | kiln/ov | outputs |  threads={a.threads}")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, km, om, vm, best, match in sorted(table, key=lambda r: -(r[1] / r[2]) if r[2] == r[2] else -1e9):
            print(f"| {name} ({ops.source_of(name)}) | {km:.3f} | {om:.3f} | {km / om:.2f} | {best:.2f} | {km / vm:.2f} | {match} |")


if __name__ == "__main__":
    main()
