#!/usr/bin/env bash
# Kiln: run every test suite, from a fresh clone on a fresh Debian/Ubuntu machine.
#
#   bash scripts/test.sh
#
# 1. scripts/setup.sh installs LLVM 22 (apt) and a Python venv with onnx==1.23.2 (idempotent).
# 2. scripts/gen_testdata.py regenerates ONNX's node conformance suite, the light models and
#    the random-weight models (expected outputs from onnxruntime) into target/kiln-testdata/
#    (skipped when already there).
# 3. `cargo test`: the unit tests and differential tests of every crate (debug build).
# 4. The heavy suites in release mode (tests/): conformance through the library and through
#    `kiln run`, whole models, error handling, architecture checks.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
say() { printf '\n==> %s\n' "$*"; }

say "installing build and test dependencies (scripts/setup.sh)"
bash scripts/setup.sh
export LLVM_SYS_221_PREFIX=/usr/lib/llvm-22

say "generating test data (scripts/gen_testdata.py)"
.venv/bin/python scripts/gen_testdata.py

say "unit and differential tests (cargo test, debug)"
cargo test --locked

say "building the release CLI and the runtime-only runner (kiln-run, with CUDA support) for the heavy suites"
cargo build --locked --release -p kiln-cli
cargo build --locked --release -p kiln-runner

say "heavy suites: conformance (library, CLI), models, errors, tidy (release)"
cargo test --locked --release -p kiln-tests

say "GPU runs (kiln-run with CUDA): on a machine without a GPU they say so here and skip"
cargo test --locked --release -p kiln-tests --test gpu -- --nocapture 2>&1 | grep -E 'SKIPPED|^test |test result|on (cuda|cpu)'
