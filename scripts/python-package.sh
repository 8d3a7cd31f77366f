#!/usr/bin/env bash
# Kiln for Python: build the `kiln` package (crates/python: PyO3, abi3, one wheel for every
# CPython >= 3.9 on this platform) and install it into a venv.
#
#   bash scripts/python-package.sh [VENV]      # VENV: default .venv (scripts/setup.sh makes it)
#
# 1. scripts/setup.sh installs what is missing (LLVM 22, and the venv with the pinned maturin
#    and numpy from scripts/python/requirements.lock); idempotent.
# 2. maturin (the pinned one) builds the wheel into target/wheels/ (cargo's release build:
#    incremental, seconds when nothing changed). The extension links the system's libLLVM 22
#    dynamically, as the `kiln` binary does, so the wheel is tagged `linux_x86_64` rather than
#    manylinux: it runs where LLVM 22 is installed.
# 3. pip installs it into VENV (a VENV without numpy first gets scripts/python/requirements.lock),
#    named with its hash and without dependencies, and imports it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${1:-$repo/.venv}"
say() { printf '[python-package] %s\n' "$*"; }

say "installing what is missing (scripts/setup.sh)"
bash scripts/setup.sh >/dev/null
export LLVM_SYS_221_PREFIX=/usr/lib/llvm-22

say "building the wheel with maturin $(.venv/bin/maturin --version | cut -d' ' -f2) (release)"
rm -f target/wheels/kiln-*.whl target/wheels/kiln.lock
.venv/bin/maturin build --locked --release --quiet -m crates/python/Cargo.toml -o target/wheels \
    --compatibility linux --auditwheel skip
wheel="$(ls target/wheels/kiln-*.whl)"

if [ ! -x "$venv/bin/python" ]; then
    say "no venv at $venv: making one"
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import numpy' 2>/dev/null; then
    say "$venv has no numpy: installing scripts/python/requirements.lock into it (pinned, hashed)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r scripts/python/requirements.lock
fi
# The wheel is installed through a requirements file naming it with its sha256 (pip then
# refuses any other file), without dependencies: numpy, its one, comes from the lock above.
printf 'kiln @ file://%s --hash=sha256:%s\n' "$repo/$wheel" "$(sha256sum "$wheel" | cut -d' ' -f1)" > target/wheels/kiln.lock
say "installing $(basename "$wheel") into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --require-hashes --force-reinstall -r target/wheels/kiln.lock
"$venv/bin/python" -c 'import kiln; print(f"[python-package] import kiln: version {kiln.__version__}, from {kiln.__file__}")'
