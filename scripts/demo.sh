#!/usr/bin/env bash
# Kiln's main job, end to end: install LLVM 22 if needed, build the `kiln` compiler, compile
# the bundled example model (examples/mlp) into an artifact, run it, and print the result.
#
#   bash scripts/demo.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
say() { printf '\n==> %s\n' "$*"; }

say "installing dependencies (scripts/setup.sh; idempotent)"
bash scripts/setup.sh
export LLVM_SYS_221_PREFIX=/usr/lib/llvm-22

say "building kiln (cargo build --release -p kiln-cli)"
cargo build --locked --release -p kiln-cli
kiln="$repo/target/release/kiln"

say "compiling examples/mlp/model.onnx -> target/demo/mlp.kiln"
mkdir -p target/demo
"$kiln" compile examples/mlp/model.onnx -o target/demo/mlp.kiln

say "running target/demo/mlp.kiln on examples/mlp/input.npy"
"$kiln" run target/demo/mlp.kiln --input x=examples/mlp/input.npy --output-dir target/demo/out

say "onnxruntime's output for the same input (examples/mlp/expected.npy):"
.venv/bin/python -c "import numpy as np; print(np.load('examples/mlp/expected.npy'))"
