#!/usr/bin/env bash
# Runs on the GPU machine (see scripts/gpu-check.sh, which writes this folder): every test
# model on the GPU against onnxruntime's outputs, GPU and CPU times, the generated kernels'
# bandwidth, and the peers present there. Needs the CUDA driver; no LLVM, no Rust.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
run="$here/bin/kiln-run"
say() { printf '\n==> %s\n' "$*"; }

say "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"

say "models: GPU outputs against onnxruntime's (rtol 1e-3, atol 1e-4), median of 20 runs"
pass=0 failed=0
printf '%-26s %-8s %12s %12s\n' model result gpu_ms cpu_ms
while IFS='|' read -r name args; do
    # shellcheck disable=SC2086  # args is a list of words
    out="$("$run" "models/$name/gpu.kiln" $args --iters 20 2>&1)"
    rc=$?
    # shellcheck disable=SC2086
    cpu="$("$run" "models/$name/cpu.kiln" $args --iters 20 2>&1 | sed -n 's/^median_ms=//p')"
    gpu="$(sed -n 's/^median_ms=//p' <<<"$out")"
    if [ $rc -eq 0 ]; then verdict=ok; pass=$((pass + 1)); else verdict=FAIL; failed=$((failed + 1)); fi
    printf '%-26s %-8s %12s %12s\n' "$name" "$verdict" "${gpu:--}" "${cpu:--}"
    if [ $rc -ne 0 ]; then sed 's/^/    /' <<<"$out"; fi
    grep '^output' <<<"$out" | sed 's/^/    /'
done <models.txt
echo "models: $pass ok, $failed failed"

say "generated kernels' bandwidth (KILN_GPU_PROFILE; best of 10 runs)"
for b in elementwise reduce_rows; do
    KILN_GPU_PROFILE=1 "$run" "bench/$b.kiln" --random --iters 10 2>&1 |
        awk -v b="$b" '/^gpu_kernel/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
                        if (best == "" || f["ms"] + 0 < best + 0) { best = f["ms"]; bw = f["gbps"]; by = f["bytes"] } }
                       END { printf "%-12s bytes=%s best_ms=%s GB/s=%s\n", b, by, best, bw }'
done

say "peers on this machine (scripts/gpu/peer.py)"
python3 peer.py || echo "peer.py could not run (no PyTorch or onnxruntime here)"
[ "$failed" -eq 0 ]
