#!/usr/bin/env bash
# Regenerates scripts/python/requirements.lock from requirements.in (and peers.lock, the
# benchmark peers' venv, from peers.in; torch.lock, the exporters' PyTorch venv, from torch.in;
# tools.lock, pip-tools' own, from tools.in): every package, direct or pulled in, pinned to an
# exact version with the sha256 of each of its files on PyPI.
# core.in holds what requirements.in, peers.in and torch.in share; requirements.in adds the
# serving tests' clients (tritonclient, ray), which the other venvs do not need.
# Run it by hand after editing an .in file (network access to PyPI needed); commit both.
#
#   bash scripts/python/lock.sh
#
# pip-tools itself runs from a throwaway venv installed from tools.lock (pip-tools and all it
# pulls in, hashed), which this script regenerates too.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tool="$(mktemp -d)"
trap 'rm -rf "$tool"' EXIT
echo "[lock] pip-tools in a throwaway venv, from tools.lock"
python3 -m venv "$tool/venv"
"$tool/venv/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps -r "$here/tools.lock"
echo "[lock] resolving requirements.in, peers.in, torch.in, tools.in (Python $(python3 -c 'import sys; print(sys.version.split()[0])'))"
cd "$here"
for name in requirements peers torch tools; do
    "$tool/venv/bin/pip-compile" -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
        --no-emit-find-links --output-file "$name.lock" "$name.in"
    echo "[lock] $(grep -c '^[A-Za-z0-9].*==' "$name.lock") packages pinned in $here/$name.lock"
done
