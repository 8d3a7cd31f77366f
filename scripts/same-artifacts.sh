#!/usr/bin/env bash
# Does this tree compile every test model to the same artifact as BASE (a git revision)?
#
#   bash scripts/same-artifacts.sh BASE
#
# Builds the `artifact-digests` binary of BASE (in a worktree under target/, with a target
# directory of its own) and of this tree, runs both (every exporter, light and generated
# model, and BERT split across two capped CPUs; kernel cache off; artifacts without a source
# key) and compares their lines. Prints the count of identical artifacts and each difference;
# exits 1 if any differs. For restructurings that must not change what Kiln computes. BASE
# must have the binary (tests/digests.rs) and honour KILN_FIXED_CODEGEN_FINGERPRINT
# (backends/cpu/build.rs): kernel bodies are named after a hash that includes the code
# generator's own sources, so both trees are built with that hash fixed, and an edit that
# generates the same code gives the same bytes.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
base="${1:?usage: same-artifacts.sh BASE}"
export LLVM_SYS_221_PREFIX=/usr/lib/llvm-22
export KILN_FIXED_CODEGEN_FINGERPRINT=same-artifacts
work="$repo/target/same-artifacts"
mkdir -p "$work"
rm -rf "$work/base"
git worktree prune
git worktree add --detach "$work/base" "$base" >/dev/null
trap 'git worktree remove --force "$work/base" >/dev/null 2>&1 || true' EXIT
echo "[same-artifacts] BASE $(git rev-parse --short "$base"): building and compiling every model"
(cd "$work/base" && KILN_TESTDATA="$repo/target/kiln-testdata/onnx-1.23.2" CARGO_TARGET_DIR="$work/target" \
    cargo run --locked --release -q -p kiln-tests --bin artifact-digests) >"$work/base.txt"
echo "[same-artifacts] this tree: building and compiling every model"
cargo run --locked --release -q -p kiln-tests --bin artifact-digests >"$work/head.txt"
same="$(comm -12 <(sort "$work/base.txt") <(sort "$work/head.txt") | wc -l)"
total="$(wc -l <"$work/head.txt")"
echo "[same-artifacts] $same of $total artifacts identical to BASE's"
if ! diff <(sort "$work/base.txt") <(sort "$work/head.txt"); then
    exit 1
fi
