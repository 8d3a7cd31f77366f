"""What calling a model through the Python package costs over the `kiln` binary.

For each model it compiles one artifact, then times, in alternating rounds on the same
machine, `kiln bench ARTIFACT --serve` (the runtime called from Rust, output buffers reused)
and `kiln.InferenceSession(ARTIFACT).run(None, feed)` from this Python process (numpy inputs
read in place, new output arrays each run), and prints each one's median and 10th percentile
and their ratios (other tenants of a shared machine only slow runs down, so the lower
percentile shows the cost of the call itself best).

    .venv/bin/python benches/peers/python_overhead.py [--threads N] [--rounds R] [MODEL...]

MODEL: names under target/bench-models (default: resnet50 mobilenetv2 bert_base gpt2_small;
scripts/export_bench_models.py writes them). Needs the package installed
(scripts/python-package.sh) and a release `kiln` (cargo build --release -p kiln-cli).
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import tempfile
import time

import numpy as np

import kiln

REPO = pathlib.Path(__file__).resolve().parents[2]
MODELS = REPO / "target" / "bench-models"
KILN = REPO / "target" / "release" / "kiln"


def feeds(d):
    meta = json.loads((d / "meta.json").read_text())
    return [(i["name"], d / i["file"]) for i in meta["inputs"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["resnet50", "mobilenetv2", "bert_base", "gpt2_small"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"{'model':<14} {'kiln bench ms':>14} {'python run ms':>14} {'ratio':>7} {'p10 ratio':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            d = MODELS / name
            art = pathlib.Path(tmp) / f"{name}.kiln"
            files = feeds(d)
            shapes = {n: list(np.load(f).shape) for n, f in files}
            kiln.compile(d / "model.onnx", art, input_shapes=shapes)
            cmd = [str(KILN), "bench", str(art), "--threads", str(args.threads), "--serve"]
            for n, f in files:
                cmd += ["--input", f"{n}={f}"]
            server = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            sess = kiln.InferenceSession(art, intra_op_num_threads=args.threads)
            feed = {n: np.load(f) for n, f in files}
            # Runs per round: about half a second of each.
            t = time.perf_counter()
            sess.run(None, feed)
            per = max(3, int(0.5 / max(time.perf_counter() - t, 1e-4)))
            warm = time.perf_counter()
            while time.perf_counter() - warm < 0.3:
                sess.run(None, feed)
            ours, theirs = [], []
            for _ in range(args.rounds):
                server.stdin.write(f"{per}\n")
                server.stdin.flush()
                line = server.stdout.readline().strip()
                theirs += [float(x) for x in line.removeprefix("times_ms=").split(",")]
                time.sleep(0.05)
                for _ in range(per):
                    t = time.perf_counter()
                    sess.run(None, feed)
                    ours.append((time.perf_counter() - t) * 1e3)
                time.sleep(0.05)
            server.stdin.close()
            server.wait()
            a, b = statistics.median(theirs), statistics.median(ours)
            p10 = lambda t: statistics.quantiles(t, n=10)[0]
            print(f"{name:<14} {a:>14.3f} {b:>14.3f} {b / a:>7.3f} {p10(ours) / p10(theirs):>10.3f}", flush=True)


if __name__ == "__main__":
    main()
