#!/usr/bin/env bash
# Kiln: install what the build and the tests need, on a fresh Debian 12 (bookworm).
#
#   bash scripts/setup.sh          # from any directory
#   source scripts/setup.sh        # same, and also exports LLVM_SYS_221_PREFIX / KILN_PYTHON
#
# Idempotent: every step checks first and does nothing when already satisfied.
#   1. apt: llvm-22-dev        (only if /usr/lib/llvm-22/bin/llvm-config is missing)
#           build-essential    (only if no `cc` on PATH)
#           gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user (only if missing: the
#                              static-library tests run an aarch64 build under qemu)
#           python3, python3-venv (only if python3 or its venv/ensurepip modules are missing)
#      `apt-get update` runs at most once, and only when something has to be installed.
#   2. Python venv at $REPO/.venv with pinned onnx / onnxruntime / numpy, used by
#      scripts/gen_testdata.py (conformance data) and scripts/make_example.py, and
#      nvidia-cuda-nvcc-cu12, whose `ptxas` the tests run on generated PTX (no GPU needed).
#      pip is skipped when the stamp file matches the pins and the venv reports them.
#
# Runs as root directly, or through sudo when not root.

# Everything runs in a subshell with strict mode, so that `source`-ing this file neither
# changes the caller's shell options nor exits the caller's shell on error.
_kiln_setup() (
    set -euo pipefail

    # --- where the repo is: from this script's own location, not from $PWD ---------------
    local script_dir repo
    script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    repo="$(cd "$script_dir/.." && pwd)"

    # --- pins (keep in sync with scripts/gen_testdata.py, which checks the onnx version) ---
    local onnx_ver="1.23.2" ort_ver="1.32.0" numpy_ver="2.4.6" nvcc_ver="12.9.86"
    local llvm_config="/usr/lib/llvm-22/bin/llvm-config"

    log() { printf '[setup] %s\n' "$*"; }

    # Root runs commands directly; otherwise through sudo.
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            log "not root and no sudo: cannot install system packages" >&2
        fi
    fi

    # --- 1. system packages ----------------------------------------------------------------
    local -a pkgs=()
    if [ -x "$llvm_config" ]; then
        log "LLVM 22: present ($("$llvm_config" --version))"
    else
        log "LLVM 22: $llvm_config missing -> will install llvm-22-dev"
        pkgs+=(llvm-22-dev)
    fi
    if command -v cc >/dev/null 2>&1; then
        log "C compiler: present ($(command -v cc))"
    else
        log "C compiler: cc missing -> will install build-essential"
        pkgs+=(build-essential)
    fi
    if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        log "Python: present ($(python3 --version 2>&1), venv ok)"
    else
        log "Python: python3 or its venv module missing -> will install python3 python3-venv"
        pkgs+=(python3 python3-venv)
    fi

    # The static-library tests link a C program for aarch64 and run it under qemu-user.
    if command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && [ -e /usr/aarch64-linux-gnu/lib/libc.a ]; then
        log "aarch64 C cross compiler: present"
    else
        log "aarch64 C cross compiler: missing -> will install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
        pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
    fi
    if command -v qemu-aarch64 >/dev/null 2>&1; then
        log "qemu-user: present"
    else
        log "qemu-user: qemu-aarch64 missing -> will install qemu-user"
        pkgs+=(qemu-user)
    fi

    if [ "${#pkgs[@]}" -gt 0 ]; then
        log "apt-get update"
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        # llvm-22-dev comes from Debian's own bookworm(-security) archive on these machines.
        if [[ " ${pkgs[*]} " == *" llvm-22-dev "* ]] &&
            ! apt-cache policy llvm-22-dev 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            log "ERROR: apt has no candidate for llvm-22-dev." >&2
            log "       Add the LLVM apt repository (apt.llvm.org, 'llvm-toolchain-bookworm-22')" >&2
            log "       or otherwise provide $llvm_config, then rerun." >&2
            exit 1
        fi
        log "apt-get install ${pkgs[*]}"
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${pkgs[@]}" >/dev/null
        [ -x "$llvm_config" ] && log "LLVM 22: installed ($("$llvm_config" --version))"
    else
        log "apt: nothing to install"
    fi

    # Rust is not installed here (rustup's installer downloads a toolchain); only reported.
    if command -v cargo >/dev/null 2>&1; then
        log "Rust: cargo found at $(command -v cargo)"
    else
        log "Rust: cargo not on PATH (install a Rust toolchain separately)"
    fi

    # --- 2. Python venv ------------------------------------------------------------------------
    local venv="$repo/.venv"
    local py="$venv/bin/python"
    local stamp="$venv/.kiln-setup-stamp"
    local want="onnx==$onnx_ver onnxruntime==$ort_ver numpy==$numpy_ver nvidia-cuda-nvcc-cu12==$nvcc_ver"

    if [ ! -x "$py" ]; then
        log "venv: creating $venv"
        python3 -m venv "$venv"
    fi

    # The venv is up to date when the stamp names exactly these pins AND the installed
    # distributions really have these versions (metadata only: no heavy imports).
    have_pins() {
        [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
            "$py" - "$onnx_ver" "$ort_ver" "$numpy_ver" "$nvcc_ver" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
want = dict(zip(["onnx", "onnxruntime", "numpy", "nvidia-cuda-nvcc-cu12"], sys.argv[1:]))
sys.exit(0 if all(version(k) == v for k, v in want.items()) else 1)
EOF
    }

    if have_pins; then
        log "venv: up to date ($want)"
    else
        log "venv: pip install $want (quiet; takes a minute on first run)"
        rm -f "$stamp"
        # shellcheck disable=SC2086  # $want is a list of requirement words
        "$py" -m pip install -q --disable-pip-version-check $want
        "$py" -c 'import onnx, onnxruntime, numpy' >/dev/null 2>&1 ||
            { log "ERROR: venv imports failed after install" >&2; exit 1; }
        printf '%s' "$want" >"$stamp"
        log "venv: ready ($want)"
    fi

    log "done. Generate the conformance data with:"
    log "  $py $repo/scripts/gen_testdata.py"
)

if _kiln_setup; then
    _kiln_rc=0
else
    _kiln_rc=$?
fi
unset -f _kiln_setup

# When sourced: export what later commands in this shell may want, and return (not exit).
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    if [ "$_kiln_rc" -eq 0 ]; then
        export LLVM_SYS_221_PREFIX="/usr/lib/llvm-22"
        KILN_PYTHON="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"
        export KILN_PYTHON
    fi
    return "$_kiln_rc"
fi
exit "$_kiln_rc"
