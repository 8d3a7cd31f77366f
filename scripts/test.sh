#!/usr/bin/env bash
# Kiln: run every test suite, from a fresh clone on a fresh Debian/Ubuntu machine.
#
#   bash scripts/test.sh
#
# 1. scripts/setup.sh --check walks the whole install decision path as if nothing were
#    installed (apt look-ups, the Python lock resolved by pip) and fails on any error; then
#    scripts/setup.sh installs what is missing: LLVM 22, the aarch64 cross compiler and qemu
#    (apt), and the venv from scripts/python/requirements.lock (idempotent).
# 2. scripts/gen_testdata.py regenerates ONNX's node conformance suite, the light models and
#    the random-weight models (expected outputs from onnxruntime) into target/kiln-testdata/
#    (skipped when already there).
# 3. `cargo test`: the unit tests and differential tests of every crate (debug build).
# 4. The heavy suites in release mode (tests/): conformance through the library and through
#    `kiln run`, whole models, error handling, architecture checks. Tests that cannot run on
#    this machine (the GPU runs, without a GPU) are reported as ignored, with the reason.
# 5. The Python package (scripts/python-package.sh builds and installs it into .venv) and
#    its pytest suite: the exporter models against onnxruntime, threads, errors.
# 6. `kiln serve` (the runtime-only kiln-serve binary) driven by Triton's clients
#    (tritonclient, HTTP and gRPC): every exporter model against onnxruntime, batching,
#    repository calls, errors, shutdown; then the load and fault test (64 clients for
#    KILN_LOAD_SECONDS, default 150 s); then the Ray Serve example with two replicas
#    (examples/ray-serve).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
say() { printf '\n==> %s\n' "$*"; }

say "checking the install path as on a bare machine (scripts/setup.sh --check)"
bash scripts/setup.sh --check

say "installing build and test dependencies (scripts/setup.sh)"
bash scripts/setup.sh
export LLVM_SYS_221_PREFIX=/usr/lib/llvm-22

say "generating test data (scripts/gen_testdata.py)"
.venv/bin/python scripts/gen_testdata.py

say "unit and differential tests (cargo test, debug)"
cargo test --locked

say "building the release CLI, the runtime-only runner (kiln-run, with CUDA support) and server (kiln-serve) for the heavy suites"
cargo build --locked --release -p kiln-cli
cargo build --locked --release -p kiln-runner
cargo build --locked --release -p kiln-serve

say "heavy suites: conformance (library, CLI), models, errors, tidy (release)"
cargo test --locked --release -p kiln-tests

say "the Python package: build it, install it into .venv, run its tests (crates/python/tests)"
bash scripts/python-package.sh
.venv/bin/python -m pytest -q crates/python/tests

say "kiln serve with Triton's clients, then 64 clients with faults for ${KILN_LOAD_SECONDS:-150} s (crates/serve/tests)"
.venv/bin/python -m pytest -q -rs crates/serve/tests/test_serve.py
.venv/bin/python -m pytest -q -rs -s crates/serve/tests/test_load.py

say "the Ray Serve example: a local Ray instance, two replicas, 200 concurrent requests (examples/ray-serve)"
.venv/bin/python -m pytest -q -rs -s examples/ray-serve/test_ray_serve.py

c="tests/conformance"
count() { grep -cv '^#' "$1"; }
say "ONNX node conformance: $(( $(count $c/manifest.txt) - $(count $c/no_inputs.txt) )) of $(count $c/node_tests.txt) pass with every input fed at run time; $(count $c/no_inputs.txt) more have no inputs (constant outputs); $(count $c/frozen.txt) more only with inputs compiled in"
