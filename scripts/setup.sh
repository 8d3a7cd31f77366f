#!/usr/bin/env bash
# Kiln: install what the build and the tests need, on a fresh Debian 12 (bookworm).
#
#   bash scripts/setup.sh            # from any directory
#   bash scripts/setup.sh --check    # walk every decision as if nothing were installed; change nothing
#   source scripts/setup.sh          # as the first, and also exports LLVM_SYS_221_PREFIX / KILN_PYTHON
#
# Idempotent: every step checks first and does nothing when already satisfied.
#   1. apt: llvm-22-dev        (only if /usr/lib/llvm-22/bin/llvm-config is missing)
#           build-essential    (only if no `cc` on PATH)
#           gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user (only if missing: the
#                              static-library tests run an aarch64 build under qemu)
#           python3, python3-venv (only if python3 or its venv/ensurepip modules are missing)
#      `apt-get update` runs at most once, and only when something has to be installed.
#   2. Python venv at $REPO/.venv holding exactly scripts/python/requirements.lock: every
#      package (onnx, onnxruntime, numpy, nvidia-cuda-nvcc-cu12 for `ptxas`, and all they pull
#      in) at its pinned version, installed with --require-hashes. Nothing is done when the
#      venv already matches the lock (scripts/python/check_venv.py); a venv that differs is
#      made again from scratch.
#
# --check runs on every test run (scripts/test.sh calls it first), so the install path is
# exercised even on a machine that has everything: each probe runs and is reported, every
# package is looked up in apt as if it were missing (`apt-cache policy`, then a simulated
# `apt-get install -s` of the whole list), the lock is checked (every line pinned and
# hashed) and resolved by pip (`pip install --dry-run --require-hashes`, from pip's cache
# once downloaded). Any failure exits non-zero. Nothing is installed.
#
# Runs as root directly, or through sudo when not root.

# Everything runs in a subshell with strict mode, so that `source`-ing this file neither
# changes the caller's shell options nor exits the caller's shell on error.
_kiln_setup() (
    set -euo pipefail

    local check=0
    case "${1:-}" in
        --check) check=1 ;;
        "") ;;
        *) printf '[setup] unknown option %s (usage: setup.sh [--check])\n' "$1" >&2; exit 2 ;;
    esac

    # --- where the repo is: from this script's own location, not from $PWD ---------------
    local script_dir repo
    script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    repo="$(cd "$script_dir/.." && pwd)"

    local llvm_config="/usr/lib/llvm-22/bin/llvm-config"
    local lock="$repo/scripts/python/requirements.lock"
    local check_venv="$repo/scripts/python/check_venv.py"

    log() { printf '[setup] %s\n' "$*"; }
    fail() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
    if [ "$check" -eq 1 ]; then
        log "--check: every probe below runs; each package is looked up as if missing; nothing is installed"
    fi

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
    # need WHAT PRESENT_MESSAGE|"" PACKAGE...: a probe's result. An empty message means the
    # probe failed: the packages go on the list. With --check they always do.
    need() {
        local what="$1" present="$2"
        shift 2
        if [ -n "$present" ]; then
            log "$what: present ($present)"
            if [ "$check" -eq 0 ]; then
                return 0
            fi
        else
            log "$what: missing -> will install $*"
        fi
        pkgs+=("$@")
    }
    local found
    found=""
    if [ -x "$llvm_config" ]; then found="$("$llvm_config" --version)"; fi
    need "LLVM 22 ($llvm_config)" "$found" llvm-22-dev
    found=""
    if command -v cc >/dev/null 2>&1; then found="$(command -v cc)"; fi
    need "C compiler (cc)" "$found" build-essential
    found=""
    if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        found="$(python3 --version 2>&1), venv ok"
    fi
    need "Python 3 with venv" "$found" python3 python3-venv
    # The static-library tests link a C program for aarch64 and run it under qemu-user.
    found=""
    if command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && [ -e /usr/aarch64-linux-gnu/lib/libc.a ]; then
        found="$(command -v aarch64-linux-gnu-gcc)"
    fi
    need "aarch64 C cross compiler" "$found" gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    found=""
    if command -v qemu-aarch64 >/dev/null 2>&1; then found="$(command -v qemu-aarch64)"; fi
    need "qemu-user (qemu-aarch64)" "$found" qemu-user
    # The test of `kiln inspect --html` renders its page in headless Chromium.
    found=""
    if command -v chromium >/dev/null 2>&1; then found="$(command -v chromium)"; fi
    need "Chromium (headless, for the HTML report's test)" "$found" chromium

    # The version apt would install, or nothing. The output is read whole before it is
    # searched: a pipeline into `grep -q` would kill apt-cache with SIGPIPE at the first match
    # and, under pipefail, fail even when a candidate exists.
    candidate() {
        local policy
        policy="$(apt-cache policy "$1" 2>/dev/null || true)"
        sed -n 's/^ *Candidate: *//p' <<<"$policy" | grep -v '^(none)$' | head -n1 || true
    }
    local updated=0
    apt_update() {
        if [ "$updated" -eq 0 ]; then
            log "apt-get update"
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
            updated=1
        fi
    }
    # Every package of the list has an apt candidate; one `apt-get update` if some has none
    # (the lists may be old or absent on a fresh machine), then a fatal error naming them.
    look_up() {
        local -a lacking=()
        local p v
        for p in "$@"; do
            v="$(candidate "$p")"
            if [ -n "$v" ]; then
                log "apt: $p $v available"
            else
                lacking+=("$p")
            fi
        done
        if [ "${#lacking[@]}" -gt 0 ] && [ "$updated" -eq 0 ]; then
            log "apt: no candidate yet for ${lacking[*]}"
            apt_update
            look_up "${lacking[@]}"
            return
        fi
        if [ "${#lacking[@]}" -gt 0 ]; then
            log "ERROR: apt has no candidate for ${lacking[*]}." >&2
            if [[ " ${lacking[*]} " == *" llvm-22-dev "* ]]; then
                log "       llvm-22-dev comes from Debian's bookworm-security archive; elsewhere add the" >&2
                log "       LLVM apt repository (apt.llvm.org, 'llvm-toolchain-bookworm-22') or otherwise" >&2
                log "       provide $llvm_config, then rerun." >&2
            fi
            exit 1
        fi
    }

    if [ "${#pkgs[@]}" -gt 0 ]; then
        if [ "$check" -eq 1 ]; then
            look_up "${pkgs[@]}"
            log "apt-get install -s ${pkgs[*]} (simulated)"
            local sim
            sim="$(apt-get install -s -qq --no-install-recommends "${pkgs[@]}" 2>&1)" ||
                { printf '%s\n' "$sim" >&2; fail "apt could not resolve ${pkgs[*]}"; }
        else
            apt_update
            look_up "${pkgs[@]}"
            log "apt-get install ${pkgs[*]}"
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${pkgs[@]}" >/dev/null
            [ -x "$llvm_config" ] || fail "$llvm_config still missing after installing llvm-22-dev"
            log "LLVM 22: installed ($("$llvm_config" --version))"
        fi
    else
        log "apt: nothing to install"
    fi

    # Rust is not installed here (rustup's installer downloads a toolchain); only reported.
    if command -v cargo >/dev/null 2>&1; then
        log "Rust: cargo found at $(command -v cargo) ($(cargo --version))"
    else
        log "Rust: cargo not on PATH (install a Rust toolchain separately)"
    fi

    # --- 2. Python venv ------------------------------------------------------------------------
    local venv="$repo/.venv"
    local py="$venv/bin/python"
    [ -f "$lock" ] || fail "$lock missing"
    # Every requirement of every lock (the venv's, the peers', the exporters' PyTorch venv's,
    # pip-tools') is pinned to one version and carries a hash.
    local reqs hashed f
    for f in "$repo"/scripts/python/*.lock; do
        reqs="$(grep -cE '^[A-Za-z0-9]' "$f" || true)"
        hashed="$(grep -cE '^[A-Za-z0-9][A-Za-z0-9._-]*==[^ ]+ \\$' "$f" || true)"
        [ "$reqs" -gt 0 ] && [ "$reqs" = "$hashed" ] ||
            fail "$f: $reqs requirements, $hashed pinned with '==' and hashes; regenerate it (bash scripts/python/lock.sh)"
        log "lock: $reqs packages pinned with hashes ($(basename "$f"))"
    done

    if [ "$check" -eq 1 ]; then
        # pip resolves the whole lock for this machine's Python: every pin exists, every file
        # it would take matches a hash. Files come from pip's cache once downloaded.
        log "pip install --dry-run --require-hashes -r $(basename "$lock") (resolve only)"
        local dry
        dry="$(python3 -m pip install --dry-run --require-hashes --no-deps -r "$lock" \
            --ignore-installed --disable-pip-version-check -q 2>&1)" ||
            { printf '%s\n' "$dry" >&2; fail "pip cannot install $lock on this machine"; }
        if [ -x "$py" ]; then
            local state
            if state="$("$py" "$check_venv" "$lock" 2>&1)"; then
                log "venv: $state"
            else
                log "venv: differs from the lock; setup would make it again:"
                printf '%s\n' "$state" | sed 's/^/[setup]   /'
            fi
        else
            log "venv: $venv missing; setup would create it"
        fi
        log "check passed: every probe ran and every package resolves"
        exit 0
    fi

    if [ -x "$py" ] && "$py" "$check_venv" "$lock" >/dev/null 2>&1; then
        log "venv: up to date ($("$py" "$check_venv" "$lock"))"
    else
        if [ -e "$venv" ]; then
            log "venv: differs from the lock; making it again:"
            { "$py" "$check_venv" "$lock" 2>&1 || true; } | sed 's/^/[setup]   /'
            rm -rf "$venv"
        fi
        log "venv: creating $venv"
        python3 -m venv "$venv"
        log "venv: pip install --require-hashes -r $(basename "$lock") (quiet; a minute on first run)"
        "$py" -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r "$lock"
        "$py" "$check_venv" "$lock" >&2 || fail "the venv does not match the lock after installing it"
        "$py" -c 'import onnx, onnxruntime, numpy' >/dev/null 2>&1 || fail "venv imports failed after install"
        log "venv: ready ($("$py" "$check_venv" "$lock"))"
    fi

    log "done. Generate the conformance data with:"
    log "  $py $repo/scripts/gen_testdata.py"
)

if _kiln_setup "$@"; then
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
