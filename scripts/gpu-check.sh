#!/usr/bin/env bash
# The GPU check, in two halves.
#
#   bash scripts/gpu-check.sh [DIR]     here (LLVM, Rust, no GPU needed): build, compile, pack
#   bash DIR/run.sh                     on the GPU machine (CUDA driver; no LLVM, no Rust)
#
# Here it builds `kiln` and the runtime-only runner `kiln-run` (runtime with the `cuda`
# feature: it loads libcuda at run time), compiles every model under tests/models for
# `cuda,cpu` (and for `cpu` alone, for a CPU time on the same machine) with CPU code for
# x86-64-v3, builds the bandwidth benchmarks (an elementwise chain and a row reduction, for
# `cuda`), and packs it all with the inputs and onnxruntime's outputs into DIR (default
# target/gpu-check, a few tens of MB). There, run.sh runs each model on the GPU and compares
# its outputs with onnxruntime's, times GPU and CPU, prints the generated kernels' bandwidth
# (KILN_GPU_PROFILE) against a device-to-device copy measured by PyTorch, and times
# onnxruntime on the same models where it has a GPU provider (scripts/gpu/peer.py).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
dir="${1:-target/gpu-check}"
say() { printf '\n==> %s\n' "$*"; }

bash scripts/setup.sh
export LLVM_SYS_221_PREFIX=/usr/lib/llvm-22
py="$repo/.venv/bin/python"

say "building kiln and the runtime-only runner kiln-run (release)"
cargo build --locked --release -p kiln-cli
cargo build --locked --release -p kiln-runner
kiln="$repo/target/release/kiln"

rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/models" "$dir/bench"
cp target/release/kiln-run "$dir/bin/"
cp scripts/gpu/run.sh scripts/gpu/peer.py "$dir/"

say "compiling tests/models/* for cuda,cpu and cpu"
: >"$dir/models.txt"
for m in tests/models/*/; do
    name="$(basename "$m")"
    # Input shapes and files, expected outputs, from meta.json: NAME=DIMS lists and file names.
    read -r shapes inputs expects < <("$py" - "$m" <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + "/meta.json"))
shapes = ",".join(f"{i['name']}={'x'.join(map(str, i['shape']))}" for i in m["inputs"])
inputs = ",".join(f"{i['name']}={i['file']}" for i in m["inputs"])
expects = ",".join(o["file"] for o in m["outputs"])
print(shapes, inputs, expects)
PY
)
    args=()
    IFS=',' read -ra s <<<"$shapes"
    for x in "${s[@]}"; do args+=(--input-shape "$x"); done
    mkdir -p "$dir/models/$name"
    cp "$m"/*.npy "$m/model.onnx" "$m/meta.json" "$dir/models/$name/"
    "$kiln" compile "$m/model.onnx" "${args[@]}" --target cuda,cpu --cpu x86-64-v3 -o "$dir/models/$name/gpu.kiln" 2>&1 | tail -1
    "$kiln" compile "$m/model.onnx" "${args[@]}" --cpu x86-64-v3 -o "$dir/models/$name/cpu.kiln" 2>&1 | tail -1
    run_args=""
    IFS=',' read -ra s <<<"$inputs"
    for x in "${s[@]}"; do run_args+=" --input ${x%%=*}=models/$name/${x#*=}"; done
    IFS=',' read -ra s <<<"$expects"
    for x in "${s[@]}"; do run_args+=" --expect models/$name/$x"; done
    echo "$name|$run_args" >>"$dir/models.txt"
done

say "building the bandwidth benchmarks"
"$py" - "$dir/bench" <<'PY'
import sys
import onnx
from onnx import TensorProto, helper
out = sys.argv[1]
n = 1 << 25  # 32 Mi floats: 128 MiB per tensor
# y = (x * 2 + 1) * x: one kernel reading x, writing y.
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])
two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
g = helper.make_graph(
    [helper.make_node("Mul", ["x", "two"], ["a"]), helper.make_node("Add", ["a", "one"], ["b"]),
     helper.make_node("Mul", ["b", "x"], ["y"])],
    "elementwise", [x], [y], [two, one])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), f"{out}/elementwise.onnx")
# Row sums of an 8192 x 4096 matrix.
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8192, 4096])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8192, 1])
axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
g = helper.make_graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)], "reduce_rows", [x], [y], [axes])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), f"{out}/reduce_rows.onnx")
PY
for b in elementwise reduce_rows; do
    "$kiln" compile "$dir/bench/$b.onnx" --target cuda -o "$dir/bench/$b.kiln" 2>&1 | tail -1
done

say "packed $(du -sh "$dir" | cut -f1) into $dir; on the GPU machine run: bash $dir/run.sh"
