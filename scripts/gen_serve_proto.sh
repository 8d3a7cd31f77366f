#!/usr/bin/env bash
# Regenerates crates/serve/src/generated/inference.rs (prost message types and tonic's server
# trait for the Open Inference Protocol's gRPC service) from crates/serve/proto/inference.proto,
# without protoc (the generator uses protox). Run it by hand after editing the proto; commit both.
#
#   bash scripts/gen_serve_proto.sh
#
# The generator is a standalone cargo project, crates/codegen, outside the main
# workspace; it builds into $REPO/target/proto-codegen.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
proto="$repo/crates/serve/proto/inference.proto"
out="$repo/crates/serve/src/generated/inference.rs"
CARGO_TARGET_DIR="$repo/target/proto-codegen" \
    cargo run --quiet --release --manifest-path "$repo/crates/codegen/Cargo.toml" -- serve "$proto" "$out"
echo "gen_serve_proto: regenerated $out from $proto"
