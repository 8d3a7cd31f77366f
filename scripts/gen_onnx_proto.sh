#!/usr/bin/env bash
# Regenerates crates/onnx/src/generated/onnx.rs (prost message types) from the onnx.proto
# shipped in the onnx Python package, without protoc (the generator uses protox).
#
#   KILN_VENV=/path/to/venv bash scripts/gen_onnx_proto.sh    # default venv: $REPO/.venv
#
# The venv must have onnx==1.23.2 installed (scripts/setup.sh makes $REPO/.venv). The
# generator is a standalone cargo project, crates/codegen, outside the main workspace;
# it builds into $REPO/target/proto-codegen.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KILN_VENV:-$repo/.venv}"
want_version="1.23.2"

python="$venv/bin/python"
if [ ! -x "$python" ]; then
    echo "gen_onnx_proto: no python at $python (set KILN_VENV to a venv with onnx==$want_version)" >&2
    exit 1
fi

read -r onnx_dir onnx_version < <("$python" -c 'import onnx, os; print(os.path.dirname(onnx.__file__), onnx.__version__)')
if [ "$onnx_version" != "$want_version" ]; then
    echo "gen_onnx_proto: $venv has onnx $onnx_version, expected $want_version" >&2
    exit 1
fi
proto="$onnx_dir/onnx.proto"
if [ ! -f "$proto" ]; then
    echo "gen_onnx_proto: $proto not found" >&2
    exit 1
fi

out="$repo/crates/onnx/src/generated/onnx.rs"
CARGO_TARGET_DIR="$repo/target/proto-codegen" \
    cargo run --quiet --release --manifest-path "$repo/crates/codegen/Cargo.toml" -- onnx "$proto" "$out"
echo "gen_onnx_proto: regenerated $out from $proto (onnx $onnx_version)"
