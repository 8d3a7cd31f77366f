"""Peers on the GPU machine, for scripts/gpu/run.sh: the copy bandwidth PyTorch measures
(the reference for the generated kernels' GB/s), PyTorch's own elementwise chain and row sum
on the same shapes, and onnxruntime's latency on the test models where it has a CUDA
provider. Prints one line per figure."""

import json
import os
import time


def torch_figures():
    import torch

    if not torch.cuda.is_available():
        print("torch: no CUDA device")
        return
    dev = torch.device("cuda")

    def best_ms(f, reps=20):
        f()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            f()
            e.record()
            torch.cuda.synchronize()
            best = min(best, s.elapsed_time(e))
        return best

    n = 1 << 25
    x = torch.rand(n, device=dev)
    y = torch.empty_like(x)
    ms = best_ms(lambda: y.copy_(x))
    print(f"torch copy: {2 * 4 * n / ms / 1e6:.1f} GB/s (device-to-device, 128 MiB each way)")
    ms = best_ms(lambda: torch.mul(torch.add(torch.mul(x, 2.0), 1.0), x, out=y))
    print(f"torch elementwise (x*2+1)*x: {ms:.4f} ms")
    m = torch.rand(8192, 4096, device=dev)
    ms = best_ms(lambda: m.sum(dim=1, keepdim=True))
    print(f"torch row sum 8192x4096: {ms:.4f} ms, {4 * 8192 * 4096 / ms / 1e6:.1f} GB/s")


def ort_figures():
    import numpy as np
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        print(f"onnxruntime: no CUDA provider ({', '.join(providers)})")
        return
    for name in sorted(os.listdir("models")):
        d = os.path.join("models", name)
        meta = json.load(open(os.path.join(d, "meta.json")))
        s = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CUDAExecutionProvider"])
        feeds = {i["name"]: np.load(os.path.join(d, i["file"])) for i in meta["inputs"]}
        s.run(None, feeds)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            s.run(None, feeds)
            times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        print(f"onnxruntime cuda {name}: median_ms={times[len(times) // 2]:.4f}")


for f in (torch_figures, ort_figures):
    try:
        f()
    except Exception as e:  # a peer missing on that machine is reported, not fatal
        print(f"{f.__name__}: unavailable ({type(e).__name__}: {e})")
