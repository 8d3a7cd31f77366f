#!/usr/bin/env python3
"""Exports Kiln's real-exporter model suite into tests/models/<name>/.

Small models with the op patterns of well-known architectures (ResNet-50, MobileNetV2,
BERT, GPT-2, a YOLO-style detector, an LSTM speech model), written in PyTorch the way
torchvision / Hugging Face write them and exported by torch.onnx.export, plus models
built with a second and third producer (spox, onnxscript). Weights are random with fixed
seeds. For each model the folder holds:

  model.onnx        the exported model (weights inside, no external data)
  input_<i>.npy     the inputs fed to onnxruntime
  output_<i>.npy    onnxruntime's outputs (graph optimizations off: the reference)
  meta.json         producer, exporter, inputs/outputs (name, file, shape, dtype), whether
                    the batch dim was exported as dynamic, and torch-vs-onnxruntime errors

Run by hand, with the PyTorch venv (CI does not need torch; the outputs are committed),
installed from its lock:

  python3 -m venv /work/torchenv && /work/torchenv/bin/pip install --no-deps --require-hashes -r scripts/python/torch.lock
  /work/torchenv/bin/python scripts/export_models.py [--only NAME ...]

tests/exporters.rs compiles each committed model with Kiln and compares with output_<i>.npy.

Models whose shapes are decided at run time go to tests/dynamic_models/<name>/ instead, with
several input sets (set_<k>/input_<i>.npy and onnxruntime's set_<k>/output_<i>.npy): one
artifact must match onnxruntime on every set (tests/run_time.rs).
"""

import argparse
import io
import json
import math
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "models"
OPSET = 18


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], optimize: bool = False) -> list[np.ndarray]:
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def write_case(name: str, model: onnx.ModelProto, feeds: dict[str, np.ndarray], info: dict,
               reference: list[np.ndarray] | None = None, out: Path | None = None,
               ort_optimize: bool = False) -> dict:
    """Checks the model, runs onnxruntime, writes the folder (under `out`, default
    tests/models/); returns the meta entry. `ort_optimize` keeps onnxruntime's default graph
    optimizations for the reference outputs (the test suite's reference turns them off)."""
    onnx.checker.check_model(model)
    outs = ort_run(model, feeds, optimize=ort_optimize)
    graph_inputs = [i.name for i in model.graph.input
                    if i.name not in {t.name for t in model.graph.initializer}]
    assert sorted(graph_inputs) == sorted(feeds), (graph_inputs, list(feeds))
    dst = (out or OUT) / name
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    data = model.SerializeToString()
    (dst / "model.onnx").write_bytes(data)

    def dims(vi):
        return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
                for d in vi.type.tensor_type.shape.dim]

    ins = []
    for i, vi in enumerate(i for i in model.graph.input if i.name in feeds):
        a = feeds[vi.name]
        np.save(dst / f"input_{i}.npy", a)
        ins.append({"name": vi.name, "file": f"input_{i}.npy", "shape": list(a.shape),
                    "dtype": str(a.dtype), "declared_shape": dims(vi)})
    outs_meta = []
    for i, (vi, o) in enumerate(zip(model.graph.output, outs)):
        np.save(dst / f"output_{i}.npy", o)
        outs_meta.append({"name": vi.name, "file": f"output_{i}.npy", "shape": list(o.shape),
                          "dtype": str(o.dtype), "declared_shape": dims(vi),
                          "max_abs": float(np.abs(o).max()), "std": float(o.astype(np.float64).std())})
    meta = {
        "name": name,
        "producer": model.producer_name,
        "producer_version": model.producer_version,
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        **info,
        "inputs": ins,
        "outputs": outs_meta,
        "onnxruntime": ort.__version__,
        "ops": sorted({n.op_type for n in model.graph.node}),
        "bytes": len(data),
    }
    if reference is not None:
        errs = [float(np.abs(o.astype(np.float64) - r.astype(np.float64)).max()) for o, r in zip(outs, reference)]
        meta["max_abs_err_vs_source"] = errs
    (dst / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"{name}: {meta['producer']} {meta.get('exporter', '')}, {len(data) / 1e6:.2f} MB, "
        f"{len(model.graph.node)} nodes, ops {meta['ops']}; "
        f"outputs {[o['shape'] for o in outs_meta]}; vs source {meta.get('max_abs_err_vs_source')}")
    return meta


# ======================================================================================
# PyTorch models
# ======================================================================================

def torch_models():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def randomize_bn(m: nn.Module, gen: torch.Generator) -> None:
        """Gives every BatchNorm non-trivial running statistics and affine parameters."""
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                c = mod.num_features
                with torch.no_grad():
                    mod.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                    mod.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                    mod.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                    mod.bias.copy_(torch.randn(c, generator=gen) * 0.1)

    # ---------------- ResNet-50 (torchvision's Bottleneck / ResNet) ----------------
    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self, layers=(3, 4, 6, 3), width=8, num_classes=100):
            super().__init__()
            self.inplanes = width
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(width, layers[0])
            self.layer2 = self._make_layer(width * 2, layers[1], 2)
            self.layer3 = self._make_layer(width * 4, layers[2], 2)
            self.layer4 = self._make_layer(width * 8, layers[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(width * 8 * 4, num_classes)

        def _make_layer(self, planes, blocks, stride=1):
            down = None
            if stride != 1 or self.inplanes != planes * 4:
                down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                     nn.BatchNorm2d(planes * 4))
            layers = [Bottleneck(self.inplanes, planes, stride, down)]
            self.inplanes = planes * 4
            layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    # ---------------- MobileNetV2 (torchvision's InvertedResidual) ----------------
    def _make_divisible(v, divisor=8):
        new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
        return new_v + divisor if new_v < 0.9 * v else new_v

    class ConvBNReLU6(nn.Sequential):
        def __init__(self, cin, cout, k=3, stride=1, groups=1):
            super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride, expand_ratio):
            super().__init__()
            hidden = int(round(inp * expand_ratio))
            self.use_res_connect = stride == 1 and inp == oup
            layers = []
            if expand_ratio != 1:
                layers.append(ConvBNReLU6(inp, hidden, k=1))
            layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, width_mult=0.35, num_classes=100):
            super().__init__()
            setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                       [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
            inp = _make_divisible(32 * width_mult)
            self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
            feats = [ConvBNReLU6(3, inp, stride=2)]
            for t, c, n, s in setting:
                oup = _make_divisible(c * width_mult)
                for i in range(n):
                    feats.append(InvertedResidual(inp, oup, s if i == 0 else 1, t))
                    inp = oup
            feats.append(ConvBNReLU6(inp, self.last_channel, k=1))
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))

        def forward(self, x):
            x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    # ---------------- BERT (Hugging Face BertModel layout) ----------------
    class BertSelfAttention(nn.Module):
        def __init__(self, hidden, heads):
            super().__init__()
            self.h, self.d = heads, hidden // heads
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)

        def split(self, x):
            b, t, _ = x.shape
            return x.view(b, t, self.h, self.d).permute(0, 2, 1, 3)

        def forward(self, x, ext_mask):
            q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d) + ext_mask
            probs = F.softmax(scores, dim=-1)
            ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
            return ctx.view(ctx.shape[0], ctx.shape[1], -1)

    class BertLayer(nn.Module):
        def __init__(self, hidden, heads, inter):
            super().__init__()
            self.attn = BertSelfAttention(hidden, heads)
            self.attn_out = nn.Linear(hidden, hidden)
            self.attn_ln = nn.LayerNorm(hidden, eps=1e-12)
            self.inter = nn.Linear(hidden, inter)
            self.act = nn.GELU()
            self.out = nn.Linear(inter, hidden)
            self.out_ln = nn.LayerNorm(hidden, eps=1e-12)

        def forward(self, x, ext_mask):
            x = self.attn_ln(x + self.attn_out(self.attn(x, ext_mask)))
            return self.out_ln(x + self.out(self.act(self.inter(x))))

    class Bert(nn.Module):
        def __init__(self, vocab=1000, hidden=64, layers=2, heads=4, inter=256, max_pos=64, types=2):
            super().__init__()
            self.word = nn.Embedding(vocab, hidden)
            self.pos = nn.Embedding(max_pos, hidden)
            self.tok_type = nn.Embedding(types, hidden)
            self.emb_ln = nn.LayerNorm(hidden, eps=1e-12)
            self.layers = nn.ModuleList(BertLayer(hidden, heads, inter) for _ in range(layers))
            self.pool = nn.Linear(hidden, hidden)
            self.register_buffer("position_ids", torch.arange(max_pos).unsqueeze(0), persistent=False)

        def forward(self, input_ids, attention_mask, token_type_ids):
            t = input_ids.shape[1]
            x = self.word(input_ids) + self.tok_type(token_type_ids) + self.pos(self.position_ids[:, :t])
            x = self.emb_ln(x)
            ext = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            for layer in self.layers:
                x = layer(x, ext)
            pooled = torch.tanh(self.pool(x[:, 0]))
            return x, pooled

    # ---------------- GPT-2 (Hugging Face GPT2LMHeadModel layout) ----------------
    class Conv1D(nn.Module):
        """GPT-2's transposed linear layer (weight nx × nf)."""

        def __init__(self, nf, nx):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
            self.bias = nn.Parameter(torch.randn(nf) * 0.02)

        def forward(self, x):
            shape = x.shape[:-1] + (self.weight.shape[1],)
            return torch.addmm(self.bias, x.view(-1, x.shape[-1]), self.weight).view(shape)

    class GPT2Block(nn.Module):
        def __init__(self, n_embd, n_head, n_ctx):
            super().__init__()
            self.h, self.d = n_head, n_embd // n_head
            self.ln_1 = nn.LayerNorm(n_embd, eps=1e-5)
            self.c_attn = Conv1D(3 * n_embd, n_embd)
            self.c_proj = Conv1D(n_embd, n_embd)
            self.ln_2 = nn.LayerNorm(n_embd, eps=1e-5)
            self.c_fc = Conv1D(4 * n_embd, n_embd)
            self.mlp_proj = Conv1D(n_embd, 4 * n_embd)
            self.register_buffer("bias", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool))
                                 .view(1, 1, n_ctx, n_ctx), persistent=False)

        def heads(self, x):
            b, t, _ = x.shape
            return x.view(b, t, self.h, self.d).permute(0, 2, 1, 3)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
            q, k, v = self.heads(q), self.heads(k), self.heads(v)
            w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d)
            causal = self.bias[:, :, :t, :t]
            w = torch.where(causal, w, torch.tensor(torch.finfo(w.dtype).min, dtype=w.dtype))
            a = torch.matmul(F.softmax(w, dim=-1), v).permute(0, 2, 1, 3).reshape(b, t, c)
            x = x + self.c_proj(a)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT2(nn.Module):
        def __init__(self, vocab=512, n_embd=64, n_layer=2, n_head=4, n_ctx=64):
            super().__init__()
            self.wte = nn.Embedding(vocab, n_embd)
            self.wpe = nn.Embedding(n_ctx, n_embd)
            self.blocks = nn.ModuleList(GPT2Block(n_embd, n_head, n_ctx) for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(n_embd, eps=1e-5)
            self.lm_head = nn.Linear(n_embd, vocab, bias=False)
            self.lm_head.weight = self.wte.weight  # tied embeddings
            with torch.no_grad():
                self.wte.weight.normal_(0, 0.02)
                self.wpe.weight.normal_(0, 0.01)

        def forward(self, input_ids):
            t = input_ids.shape[1]
            pos = torch.arange(t, dtype=torch.long, device=input_ids.device).unsqueeze(0)
            x = self.wte(input_ids) + self.wpe(pos)
            for blk in self.blocks:
                x = blk(x)
            return self.lm_head(self.ln_f(x))

    # ---------------- YOLO-style detector (YOLOv5/v8 patterns) ----------------
    class ConvBNSiLU(nn.Module):
        def __init__(self, cin, cout, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=1e-3)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class C2f(nn.Module):
        """YOLOv8's CSP block: 1x1 conv, chunk in two, bottlenecks, concat, 1x1 conv."""

        def __init__(self, cin, cout, n=1):
            super().__init__()
            self.c = cout // 2
            self.cv1 = ConvBNSiLU(cin, 2 * self.c, 1)
            self.cv2 = ConvBNSiLU((2 + n) * self.c, cout, 1)
            self.m = nn.ModuleList(nn.Sequential(ConvBNSiLU(self.c, self.c, 3), ConvBNSiLU(self.c, self.c, 3))
                                   for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            for m in self.m:
                y.append(y[-1] + m(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.cv1 = ConvBNSiLU(cin, cin // 2, 1)
            self.cv2 = ConvBNSiLU(cin // 2 * 4, cout, 1)
            self.m = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            x = self.cv1(x)
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))

    class Yolo(nn.Module):
        def __init__(self, nc=8, na=3, w=16, img=64):
            super().__init__()
            self.nc, self.na, self.no = nc, na, nc + 5
            self.stem = nn.Sequential(ConvBNSiLU(3, w, 3, 2), ConvBNSiLU(w, 2 * w, 3, 2), C2f(2 * w, 2 * w))
            self.p3 = nn.Sequential(ConvBNSiLU(2 * w, 4 * w, 3, 2), C2f(4 * w, 4 * w))          # /8
            self.p4 = nn.Sequential(ConvBNSiLU(4 * w, 8 * w, 3, 2), C2f(8 * w, 8 * w), SPPF(8 * w, 8 * w))  # /16
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.fuse = C2f(12 * w, 4 * w)
            self.down = ConvBNSiLU(4 * w, 4 * w, 3, 2)
            self.fuse2 = C2f(12 * w, 8 * w)
            self.heads = nn.ModuleList([nn.Conv2d(4 * w, na * self.no, 1), nn.Conv2d(8 * w, na * self.no, 1)])
            self.strides = (8, 16)
            anchors = torch.tensor([[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]]],
                                   dtype=torch.float32)
            self.register_buffer("anchors", anchors, persistent=False)

        def forward(self, x):
            p3 = self.p3(self.stem(x))
            p4 = self.p4(p3)
            n3 = self.fuse(torch.cat([self.up(p4), p3], 1))
            n4 = self.fuse2(torch.cat([self.down(n3), p4], 1))
            outs = []
            for i, f in enumerate((n3, n4)):
                y = self.heads[i](f)
                b, _, h, w = y.shape
                y = y.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).sigmoid()
                gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                                        torch.arange(w, dtype=torch.float32), indexing="ij")
                grid = torch.stack((gx, gy), 2).view(1, 1, h, w, 2)
                xy, wh, conf = y.split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 - 0.5 + grid) * self.strides[i]
                wh = (wh * 2) ** 2 * self.anchors[i].view(1, self.na, 1, 1, 2)
                outs.append(torch.cat((xy, wh, conf), 4).view(b, -1, self.no))
            return torch.cat(outs, 1)

    # ---------------- LSTM speech model ----------------
    class SpeechLSTM(nn.Module):
        def __init__(self, n_mels=40, hidden=64, layers=2, classes=30):
            super().__init__()
            self.norm = nn.LayerNorm(n_mels)
            self.lstm = nn.LSTM(n_mels, hidden, num_layers=layers, bidirectional=True, batch_first=True)
            self.fc = nn.Linear(2 * hidden, classes)

        def forward(self, feats):
            y, _ = self.lstm(self.norm(feats))
            return F.log_softmax(self.fc(y), dim=-1)

    return {
        "ResNet": ResNet, "MobileNetV2": MobileNetV2, "Bert": Bert, "GPT2": GPT2, "Yolo": Yolo,
        "SpeechLSTM": SpeechLSTM, "randomize_bn": randomize_bn,
    }


def export_torch(name: str, module, feeds: dict[str, np.ndarray], output_names: list[str],
                 dynamic_batch: bool, force_legacy: bool = False, optimize: bool = True,
                 dynamic_axes: dict | None = None, out: Path | None = None, ort_optimize: bool = False) -> dict:
    """Exports with the default (dynamo) exporter, falling back to dynamo=False when it fails."""
    import torch

    module.eval()
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    names = list(feeds)
    with torch.no_grad():
        ref = module(*args)
    ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
    info = {"exporter": None, "torch": torch.__version__, "dynamic_batch": dynamic_batch}
    if not force_legacy:
        info["optimize"] = optimize
    model = None
    if not force_legacy:
        try:
            kw = {}
            if dynamic_batch:
                batch = torch.export.Dim("batch", min=1, max=64)
                kw["dynamic_shapes"] = {n: {0: batch} for n in
                                        __import__("inspect").signature(module.forward).parameters}
            prog = torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=output_names,
                                     opset_version=OPSET, external_data=False, optimize=optimize, **kw)
            model = prog.model_proto
            info["exporter"] = "torch.onnx.export(dynamo=True)"
        except Exception as e:  # noqa: BLE001 - any failure: record and fall back
            info["dynamo_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            log(f"{name}: dynamo exporter failed: {info['dynamo_error']}")
    if model is None:
        f = io.BytesIO()
        kw = {}
        if dynamic_axes is not None:
            kw["dynamic_axes"] = dynamic_axes
            info["dynamic_axes"] = dynamic_axes
        elif dynamic_batch:
            kw["dynamic_axes"] = {n: {0: "batch"} for n in names + output_names}
        torch.onnx.export(module, args, f, dynamo=False, input_names=names, output_names=output_names,
                          opset_version=OPSET, **kw)
        model = onnx.load_from_string(f.getvalue())
        info["exporter"] = "torch.onnx.export(dynamo=False)"
    return write_case(name, model, feeds, info, ref, out=out, ort_optimize=ort_optimize)


def gen_torch(only: set[str] | None) -> list[dict]:
    import torch

    M = torch_models()
    metas = []

    def want(n):
        return only is None or n in only

    if want("resnet50_torch"):
        torch.manual_seed(50)
        m = M["ResNet"](width=8)
        M["randomize_bn"](m, torch.Generator().manual_seed(51))
        x = np.random.default_rng(52).standard_normal((2, 3, 64, 64)).astype(np.float32)
        metas.append(export_torch("resnet50_torch", m, {"image": x}, ["logits"], dynamic_batch=True))

    if want("mobilenetv2_torch"):
        torch.manual_seed(60)
        m = M["MobileNetV2"](width_mult=0.35)
        M["randomize_bn"](m, torch.Generator().manual_seed(61))
        x = np.random.default_rng(62).standard_normal((1, 3, 64, 64)).astype(np.float32)
        metas.append(export_torch("mobilenetv2_torch", m, {"image": x}, ["logits"], dynamic_batch=False,
                                  optimize=False))  # unoptimized: keeps BatchNormalization nodes

    if want("bert_torch"):
        torch.manual_seed(70)
        m = M["Bert"]()
        rng = np.random.default_rng(71)
        b, t = 2, 24
        ids = rng.integers(0, 1000, (b, t)).astype(np.int64)
        mask = np.ones((b, t), np.int64)
        mask[1, 17:] = 0  # second sequence is padded
        types = np.zeros((b, t), np.int64)
        types[:, 12:] = 1
        metas.append(export_torch("bert_torch", m,
                                  {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
                                  ["last_hidden_state", "pooler_output"], dynamic_batch=True))

    if want("gpt2_torch"):
        torch.manual_seed(80)
        m = M["GPT2"]()
        ids = np.random.default_rng(81).integers(0, 512, (1, 20)).astype(np.int64)
        metas.append(export_torch("gpt2_torch", m, {"input_ids": ids}, ["logits"], dynamic_batch=False))

    if want("yolo_torch"):
        torch.manual_seed(90)
        m = M["Yolo"]()
        M["randomize_bn"](m, torch.Generator().manual_seed(91))
        x = np.random.default_rng(92).uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)
        metas.append(export_torch("yolo_torch", m, {"images": x}, ["detections"], dynamic_batch=False))

    if want("lstm_speech_torch"):
        torch.manual_seed(100)
        m = M["SpeechLSTM"]()
        x = (np.random.default_rng(101).standard_normal((2, 50, 40)) * 2 - 4).astype(np.float32)
        metas.append(export_torch("lstm_speech_torch", m, {"features": x}, ["log_probs"], dynamic_batch=True))

    # The same architectures through the TorchScript exporter (dynamo=False), which much of
    # the ONNX in the wild comes from: its graphs keep Shape/Gather/Concat chains for dynamic
    # dims, Constant nodes, BatchNormalization, and (here) a dynamic sequence dim as well.
    seq_axes = {0: "batch", 1: "seq"}
    if want("bert_torch_legacy"):
        torch.manual_seed(70)
        m = M["Bert"]()
        rng = np.random.default_rng(72)
        b, t = 3, 16
        ids = rng.integers(0, 1000, (b, t)).astype(np.int64)
        mask = np.ones((b, t), np.int64)
        mask[0, 10:] = 0
        mask[2, 5:] = 0
        types = np.zeros((b, t), np.int64)
        types[:, 8:] = 1
        names = ["input_ids", "attention_mask", "token_type_ids"]
        metas.append(export_torch("bert_torch_legacy", m,
                                  {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
                                  ["last_hidden_state", "pooler_output"], dynamic_batch=True, force_legacy=True,
                                  dynamic_axes={**{n: seq_axes for n in names}, "last_hidden_state": seq_axes,
                                                "pooler_output": {0: "batch"}}))

    if want("gpt2_torch_legacy"):
        torch.manual_seed(80)
        m = M["GPT2"]()
        ids = np.random.default_rng(82).integers(0, 512, (2, 28)).astype(np.int64)
        metas.append(export_torch("gpt2_torch_legacy", m, {"input_ids": ids}, ["logits"], dynamic_batch=True,
                                  force_legacy=True, dynamic_axes={"input_ids": seq_axes, "logits": seq_axes}))

    if want("lstm_speech_torch_legacy"):
        torch.manual_seed(100)
        m = M["SpeechLSTM"]()
        x = (np.random.default_rng(102).standard_normal((1, 30, 40)) * 2 - 4).astype(np.float32)
        metas.append(export_torch("lstm_speech_torch_legacy", m, {"features": x}, ["log_probs"],
                                  dynamic_batch=True, force_legacy=True,
                                  dynamic_axes={"features": {0: "batch", 1: "frames"},
                                                "log_probs": {0: "batch", 1: "frames"}}))

    if want("yolo_torch_legacy"):
        torch.manual_seed(90)
        m = M["Yolo"]()
        M["randomize_bn"](m, torch.Generator().manual_seed(91))
        x = np.random.default_rng(93).uniform(0, 1, (2, 3, 64, 64)).astype(np.float32)
        metas.append(export_torch("yolo_torch_legacy", m, {"images": x}, ["detections"], dynamic_batch=True,
                                  force_legacy=True))
    return metas


# ======================================================================================
# Second producer: spox
# ======================================================================================

def gen_spox(only: set[str] | None) -> list[dict]:
    import spox
    import spox.opset.ai.onnx.v18 as op
    from spox import Tensor, argument, build, inline  # noqa: F401

    metas = []

    if only is None or "convattn_spox" in only:
        # A small conv stem followed by one self-attention block over the spatial tokens and a
        # classifier: Conv/InstanceNormalization/Relu/MaxPool, Reshape/Transpose, MatMul/Softmax,
        # LayerNormalization, Gemm.
        rng = np.random.default_rng(200)

        def const(a):
            return op.constant(value=np.asarray(a))

        def randn(*s, scale=1.0):
            return (rng.standard_normal(s) * scale).astype(np.float32)

        x = argument(Tensor(np.float32, ("N", 3, 32, 32)))
        h = x
        cin = 3
        for cout in (16, 32):
            h = op.conv(h, const(randn(cout, cin, 3, 3, scale=1 / math.sqrt(cin * 9))), const(randn(cout, scale=0.1)),
                        kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            h = op.instance_normalization(h, const(rng.uniform(0.5, 1.5, cout).astype(np.float32)),
                                          const(randn(cout, scale=0.1)), epsilon=1e-5)
            h, _ = op.max_pool(op.relu(h), kernel_shape=[2, 2], strides=[2, 2])  # (Y, Indices)
            cin = cout
        # h: N x 32 x 8 x 8 -> tokens N x 64 x 32
        c = 32
        tok = op.transpose(op.reshape(h, const(np.array([0, c, -1], np.int64))), perm=[0, 2, 1])
        ln, _, _ = op.layer_normalization(tok, const(rng.uniform(0.5, 1.5, c).astype(np.float32)),
                                    const(randn(c, scale=0.1)), axis=-1, epsilon=1e-5)
        heads, d = 4, c // 4

        def proj(t):
            y = op.add(op.matmul(t, const(randn(c, c, scale=1 / math.sqrt(c)))), const(randn(c, scale=0.1)))
            return op.transpose(op.reshape(y, const(np.array([0, 0, heads, d], np.int64))), perm=[0, 2, 1, 3])

        q, k, v = proj(ln), proj(ln), proj(ln)
        s = op.div(op.matmul(q, op.transpose(k, perm=[0, 1, 3, 2])), const(np.float32(math.sqrt(d))))
        a = op.matmul(op.softmax(s, axis=-1), v)
        a = op.reshape(op.transpose(a, perm=[0, 2, 1, 3]), const(np.array([0, 0, c], np.int64)))
        tok = op.add(tok, op.matmul(a, const(randn(c, c, scale=1 / math.sqrt(c)))))
        pooled = op.reduce_mean(tok, const(np.array([1], np.int64)), keepdims=0)
        logits = op.gemm(pooled, const(randn(10, c, scale=1 / math.sqrt(c))), const(randn(10, scale=0.1)), transB=1)
        probs = op.softmax(logits, axis=-1)
        model = build({"image": x}, {"logits": logits, "probs": probs})
        model.producer_name = "spox"
        model.producer_version = spox.__version__
        feeds = {"image": np.random.default_rng(201).standard_normal((3, 3, 32, 32)).astype(np.float32)}
        metas.append(write_case("convattn_spox", model, feeds, {"exporter": "spox.build", "dynamic_batch": True}))

    if only is None or "gru_tagger_spox" in only:
        # Embedding (Gather) + a GRU + Linear tagger: op.gru with linear_before_reset=1 (what
        # PyTorch's GRU corresponds to), Gather, ArgMax.
        rng = np.random.default_rng(210)
        vocab, e, hid, tags, t = 200, 24, 32, 9, 12

        def randn(*s, scale=1.0):
            return (rng.standard_normal(s) * scale).astype(np.float32)

        ids = argument(Tensor(np.int64, (1, t)))
        emb = op.gather(op.constant(value=randn(vocab, e, scale=0.5)), ids)  # 1 x T x E
        seq = op.transpose(emb, perm=[1, 0, 2])  # T x 1 x E
        sc = 1 / math.sqrt(hid)
        y, _yh = op.gru(seq, op.constant(value=randn(2, 3 * hid, e, scale=sc)),
                        op.constant(value=randn(2, 3 * hid, hid, scale=sc)),
                        op.constant(value=randn(2, 6 * hid, scale=sc)),
                        hidden_size=hid, direction="bidirectional", linear_before_reset=1)
        # y: T x 2 x 1 x H -> T x 1 x 2H
        y = op.reshape(op.transpose(y, perm=[0, 2, 1, 3]), op.constant(value=np.array([t, 1, 2 * hid], np.int64)))
        logits = op.add(op.matmul(y, op.constant(value=randn(2 * hid, tags, scale=1 / math.sqrt(2 * hid)))),
                        op.constant(value=randn(tags, scale=0.1)))
        logits = op.transpose(logits, perm=[1, 0, 2])  # 1 x T x tags
        best = op.arg_max(logits, axis=-1, keepdims=0)
        model = build({"token_ids": ids}, {"tag_logits": logits, "tags": best})
        model.producer_name = "spox"
        model.producer_version = spox.__version__
        feeds = {"token_ids": np.random.default_rng(211).integers(0, vocab, (1, t)).astype(np.int64)}
        metas.append(write_case("gru_tagger_spox", model, feeds, {"exporter": "spox.build", "dynamic_batch": False}))
    return metas


# ======================================================================================
# Models whose shapes are decided at run time
# ======================================================================================

DYN_OUT = ROOT / "tests" / "dynamic_models"


def write_sets(name: str, model: onnx.ModelProto, sets: list[dict[str, np.ndarray]], info: dict) -> dict:
    """One model and several input sets, each run by onnxruntime (optimizations off)."""
    onnx.checker.check_model(model)
    dst = DYN_OUT / name
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    data = model.SerializeToString()
    (dst / "model.onnx").write_bytes(data)
    metas = []
    for k, feeds in enumerate(sets):
        outs = ort_run(model, feeds)
        sd = dst / f"set_{k}"
        sd.mkdir()
        ins, outm = [], []
        for i, vi in enumerate(i for i in model.graph.input if i.name in feeds):
            np.save(sd / f"input_{i}.npy", feeds[vi.name])
            ins.append({"name": vi.name, "file": f"set_{k}/input_{i}.npy", "shape": list(feeds[vi.name].shape)})
        for i, (vi, o) in enumerate(zip(model.graph.output, outs)):
            np.save(sd / f"output_{i}.npy", o)
            outm.append({"name": vi.name, "file": f"set_{k}/output_{i}.npy", "shape": list(o.shape),
                         "dtype": str(o.dtype)})
        metas.append({"inputs": ins, "outputs": outm})
    meta = {"name": name, **info, "sets": metas, "onnxruntime": ort.__version__,
            "ops": sorted({n.op_type for n in model.graph.node}), "bytes": len(data)}
    (dst / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"{name}: {len(model.graph.node)} nodes, ops {meta['ops']}; "
        f"outputs per set {[[o['shape'] for o in m['outputs']] for m in metas]}")
    return meta


def detector_nms() -> dict:
    """A small detector: a convolutional backbone (exported by torch.onnx.export) giving a box
    and a score per cell of an 8x8 grid, then NonMaxSuppression with a score threshold, and
    the kept boxes and scores gathered by the selected indices. The score is
    sigmoid(8 (mean of the cell's pixels - 0.5)), so a dark image keeps no box."""
    import torch
    from torch import nn
    from onnx import TensorProto, helper

    torch.manual_seed(19)

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.head = nn.Conv2d(8, 4, 1)
            self.score = nn.Conv2d(3, 1, 2, stride=2)
            with torch.no_grad():
                self.score.weight.fill_(8.0 / 12.0)
                self.score.bias.fill_(-4.0)
            g = torch.arange(8, dtype=torch.float32) * 2 + 1
            self.register_buffer("cy", g.repeat_interleave(8))
            self.register_buffer("cx", g.repeat(8))

        def forward(self, image):
            d = self.head(torch.relu(self.conv(image))).flatten(2).transpose(1, 2)
            cy = self.cy + torch.tanh(d[..., 0])
            cx = self.cx + torch.tanh(d[..., 1])
            h = torch.exp(torch.clamp(d[..., 2], -1.0, 1.0)) * 3
            w = torch.exp(torch.clamp(d[..., 3], -1.0, 1.0)) * 3
            boxes = torch.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)
            scores = torch.sigmoid(self.score(image)).flatten(2)
            return boxes, scores

    m = Backbone().eval()
    image = torch.zeros(1, 3, 16, 16)
    f = io.BytesIO()
    torch.onnx.export(m, (image,), f, dynamo=False, input_names=["image"], output_names=["boxes", "scores"],
                      opset_version=OPSET)
    model = onnx.load_from_string(f.getvalue())
    g = model.graph
    g.initializer.extend([
        helper.make_tensor("max_boxes", TensorProto.INT64, [1], [40]),
        helper.make_tensor("iou", TensorProto.FLOAT, [1], [0.4]),
        helper.make_tensor("min_score", TensorProto.FLOAT, [1], [0.5]),
        helper.make_tensor("box_column", TensorProto.INT64, [], [2]),
        helper.make_tensor("boxes_2d", TensorProto.INT64, [2], [64, 4]),
        helper.make_tensor("scores_1d", TensorProto.INT64, [1], [64]),
    ])
    g.node.extend([
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_boxes", "iou", "min_score"], ["selected"],
                         name="nms"),
        helper.make_node("Gather", ["selected", "box_column"], ["keep"], name="keep", axis=1),
        helper.make_node("Reshape", ["boxes", "boxes_2d"], ["boxes_flat"], name="boxes_flat"),
        helper.make_node("Gather", ["boxes_flat", "keep"], ["kept_boxes"], name="kept_boxes", axis=0),
        helper.make_node("Reshape", ["scores", "scores_1d"], ["scores_flat"], name="scores_flat"),
        helper.make_node("Gather", ["scores_flat", "keep"], ["kept_scores"], name="kept_scores", axis=0),
    ])
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info("kept_boxes", TensorProto.FLOAT, ["k", 4]),
        helper.make_tensor_value_info("kept_scores", TensorProto.FLOAT, ["k"]),
        helper.make_tensor_value_info("selected", TensorProto.INT64, ["k", 3]),
    ])
    rng = np.random.default_rng(19)
    ramp = np.linspace(0.55, 0.95, 16 * 16, dtype=np.float32).reshape(1, 1, 16, 16)
    sets = [
        {"image": rng.random((1, 3, 16, 16), dtype=np.float32)},  # some cells bright: some boxes
        {"image": np.repeat(ramp, 3, axis=1)},                      # every cell above: the most boxes
        {"image": np.full((1, 3, 16, 16), 0.2, dtype=np.float32)},  # every cell dark: no box
    ]
    info = {"exporter": "torch.onnx.export(dynamo=False) + NonMaxSuppression and gathers by onnx.helper",
            "torch": torch.__version__}
    return write_sets("detector_nms", model, sets, info)


def loop_decay() -> dict:
    """A loop whose trip count is an input (TorchScript's `for i in range(int(n))`, exported
    as an ONNX Loop): two carried values, one a running decay of x, one summing its tanh."""
    import torch
    from torch import nn

    class Decay(nn.Module):
        def forward(self, x, n):
            y = torch.zeros_like(x)
            s = torch.zeros_like(x)
            for i in range(int(n)):
                y = y * 0.5 + x * float(i)
                s = s + torch.tanh(y)
            return y, s

    m = torch.jit.script(Decay())
    f = io.BytesIO()
    torch.onnx.export(m, (torch.zeros(8), torch.tensor(3)), f, dynamo=False, input_names=["x", "n"],
                      output_names=["y", "s"], opset_version=OPSET)
    model = onnx.load_from_string(f.getvalue())
    x = np.random.default_rng(20).standard_normal(8).astype(np.float32)
    sets = [{"x": x, "n": np.array(n, dtype=np.int64)} for n in (0, 3, 17)]
    info = {"exporter": "torch.onnx.export(dynamo=False) of torch.jit.script", "torch": torch.__version__}
    return write_sets("loop_decay", model, sets, info)


def export_batched(model, args: tuple, names: list[str], outputs: list[str]) -> onnx.ModelProto:
    """torch.onnx.export (TorchScript) with the leading axis of every input and output a
    dynamic `batch`."""
    import torch

    f = io.BytesIO()
    axes = {n: {0: "batch"} for n in names + outputs}
    torch.onnx.export(model, args, f, dynamo=False, input_names=names, output_names=outputs,
                      dynamic_axes=axes, opset_version=OPSET)
    return onnx.load_from_string(f.getvalue())


def cnn_batch() -> dict:
    """A small classifier (conv, batch norm, ReLU, max pool twice, then `x.view(x.size(0),
    -1)`, a linear layer and softmax) exported with a dynamic batch: run at batch 1, 3 and 8
    from one artifact compiled with `--dim batch=1..8`."""
    import torch
    from torch import nn

    torch.manual_seed(21)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
            self.fc = nn.Linear(32 * 8 * 8, 10)

        def forward(self, x):
            y = self.f(x)
            return torch.softmax(self.fc(y.view(y.size(0), -1)), dim=-1)

    m = Net().eval()
    with torch.no_grad():
        for bn in (m.f[1], m.f[5]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    model = export_batched(m, (torch.zeros(2, 3, 32, 32),), ["x"], ["probs"])
    rng = np.random.default_rng(22)
    sets = [{"x": rng.standard_normal((b, 3, 32, 32)).astype(np.float32)} for b in (1, 3, 8)]
    info = {"exporter": "torch.onnx.export(dynamo=False), dynamic_axes batch", "torch": torch.__version__,
            "dims": {"batch": [1, 8]}}
    return write_sets("cnn_batch", model, sets, info)


def bert_encoder(vocab: int, max_seq: int, hid: int, heads: int, ffn: int, layers: int):
    """A BERT-style encoder written as Hugging Face's BERT is (token and position embeddings,
    an attention mask made from the input's, heads split with `view(b, s, h, d)`, erf GELU,
    post-norm layers, a tanh pooler over the first token): `forward(ids, mask)` gives the
    hidden states and the pooled output."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(hid), nn.LayerNorm(hid)
            self.q, self.k, self.v, self.o = (nn.Linear(hid, hid) for _ in range(4))
            self.f1, self.f2 = nn.Linear(hid, ffn), nn.Linear(ffn, hid)

        def forward(self, x, bias):
            b, s, _ = x.shape

            def split(t):
                return t.view(b, s, heads, hid // heads).permute(0, 2, 1, 3)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            att = torch.softmax(q @ k.transpose(-1, -2) / (hid // heads) ** 0.5 + bias, dim=-1)
            ctx = (att @ v).permute(0, 2, 1, 3).reshape(b, s, hid)
            x = self.ln1(x + self.o(ctx))
            return self.ln2(x + self.f2(nn.functional.gelu(self.f1(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, hid), nn.Embedding(max_seq, hid)
            self.ln0 = nn.LayerNorm(hid)
            self.layers = nn.ModuleList([Layer() for _ in range(layers)])
            self.pool = nn.Linear(hid, hid)

        def forward(self, ids, mask):
            s = ids.shape[1]
            pos = torch.arange(s, device=ids.device).unsqueeze(0)
            x = self.ln0(self.tok(ids) + self.pos(pos))
            bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * -10000.0
            for layer in self.layers:
                x = layer(x, bias)
            return x, torch.tanh(self.pool(x[:, 0]))

    return Encoder().eval()


def encoder_batch() -> dict:
    """A one-layer `bert_encoder` exported with a dynamic batch of 32-token sequences: run at
    batch 1, 4 and 8 from one artifact compiled with `--dim batch=1..8`."""
    import torch

    torch.manual_seed(23)
    vocab, seq = 100, 32
    m = bert_encoder(vocab, seq, hid=64, heads=4, ffn=128, layers=1)
    ids0, mask0 = torch.zeros(2, seq, dtype=torch.int64), torch.ones(2, seq, dtype=torch.int64)
    model = export_batched(m, (ids0, mask0), ["ids", "mask"], ["hidden", "pooled"])
    rng = np.random.default_rng(24)
    sets = []
    for b in (1, 4, 8):
        mask = np.ones((b, seq), np.int64)
        for r in range(b):
            mask[r, seq - 3 * r:] = 0
        sets.append({"ids": rng.integers(0, vocab, (b, seq)).astype(np.int64), "mask": mask})
    info = {"exporter": "torch.onnx.export(dynamo=False), dynamic_axes batch", "torch": torch.__version__,
            "dims": {"batch": [1, 8]}}
    return write_sets("encoder_batch", model, sets, info)


def encoder_seq() -> dict:
    """A two-layer `bert_encoder` (positions up to 512) exported with a dynamic batch and a
    dynamic sequence length: run at (1, 7), (1, 128), (4, 384) and (8, 512) from one artifact
    compiled with `--dim batch=1..8 --dim seq=1..512`."""
    import torch

    torch.manual_seed(25)
    vocab = 100
    m = bert_encoder(vocab, 512, hid=64, heads=4, ffn=256, layers=2)
    ids0, mask0 = torch.zeros(2, 16, dtype=torch.int64), torch.ones(2, 16, dtype=torch.int64)
    f = io.BytesIO()
    axes = {"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}, "hidden": {0: "batch", 1: "seq"},
            "pooled": {0: "batch"}}
    torch.onnx.export(m, (ids0, mask0), f, dynamo=False, input_names=["ids", "mask"],
                      output_names=["hidden", "pooled"], dynamic_axes=axes, opset_version=OPSET)
    model = onnx.load_from_string(f.getvalue())
    rng = np.random.default_rng(26)
    sets = []
    for b, s in ((1, 7), (1, 128), (4, 384), (8, 512)):
        mask = np.ones((b, s), np.int64)
        for r in range(1, b):
            mask[r, s - min(37 * r, s - 1):] = 0
        sets.append({"ids": rng.integers(0, vocab, (b, s)).astype(np.int64), "mask": mask})
    info = {"exporter": "torch.onnx.export(dynamo=False), dynamic_axes batch and seq", "torch": torch.__version__,
            "dims": {"batch": [1, 8], "seq": [1, 512]}}
    return write_sets("encoder_seq", model, sets, info)


def gpt_decoder(vocab: int, n_embd: int, n_layer: int, n_head: int, n_ctx: int, scale: float, tied: bool):
    """A GPT-2-style decoder (Hugging Face's layout: Conv1D projections, tanh GELU, the
    embeddings tied to the LM head where `tied`) that takes one token per step with a
    key/value cache: `forward(input_ids, position_ids, past_key_0, past_value_0, ...)` gives
    the logits and each layer's `present_*` (`torch.cat` of the past and the new key/value,
    one longer). One query token sees every cached key, so the step needs no causal mask; a
    prompt goes in token by token. Weights are normal with std `scale` (projections) and 0.5
    (embeddings, an untied head)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    hd = n_embd // n_head

    class Conv1D(nn.Module):
        def __init__(self, nf, nx):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(nx, nf) * scale)
            self.bias = nn.Parameter(torch.randn(nf) * 0.02)

        def forward(self, x):
            shape = x.shape[:-1] + (self.weight.shape[1],)
            return torch.addmm(self.bias, x.view(-1, x.shape[-1]), self.weight).view(shape)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
            self.c_attn, self.c_proj = Conv1D(3 * n_embd, n_embd), Conv1D(n_embd, n_embd)
            self.c_fc, self.mlp_proj = Conv1D(4 * n_embd, n_embd), Conv1D(n_embd, 4 * n_embd)

        def forward(self, x, past_k, past_v):
            b, t, c = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
            q, k, v = (z.view(b, t, n_head, hd).permute(0, 2, 1, 3) for z in (q, k, v))
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
            w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)
            a = torch.matmul(F.softmax(w, dim=-1), v).permute(0, 2, 1, 3).reshape(b, t, c)
            x = x + self.c_proj(a)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")), k, v

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(n_ctx, n_embd)
            self.blocks = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(n_embd)
            self.lm_head = nn.Linear(n_embd, vocab, bias=False)
            with torch.no_grad():
                self.wte.weight.normal_(0, 0.5)
                self.wpe.weight.normal_(0, 0.5)
                self.lm_head.weight.normal_(0, 0.5)
            if tied:
                self.lm_head.weight = self.wte.weight

        def forward(self, input_ids, position_ids, *past):
            x = self.wte(input_ids) + self.wpe(position_ids)
            presents = []
            for i, blk in enumerate(self.blocks):
                x, k, v = blk(x, past[2 * i], past[2 * i + 1])
                presents += [k, v]
            return (self.lm_head(self.ln_f(x)), *presents)

    return Decoder().eval()


def export_decoder(m, n_layer: int, n_head: int, hd: int) -> tuple[onnx.ModelProto, list[str]]:
    """A `gpt_decoder` exported by torch.onnx.export(dynamo=False) with the past axis of
    every cache input dynamic (`past`) and the present's (`past_plus_1`): the model and the
    cache inputs' names."""
    import torch

    cache = [f"past_{kv}_{i}" for i in range(n_layer) for kv in ("key", "value")]
    present = [n.replace("past", "present") for n in cache]
    names = ["input_ids", "position_ids"] + cache
    axes = {n: {2: "past"} for n in cache} | {n: {2: "past_plus_1"} for n in present}
    args = (torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, 1, dtype=torch.int64),
            *(torch.zeros(1, n_head, 3, hd) for _ in cache))
    f = io.BytesIO()
    torch.onnx.export(m, args, f, dynamo=False, input_names=names, output_names=["logits"] + present,
                      dynamic_axes=axes, opset_version=OPSET)
    return onnx.load_from_string(f.getvalue()), cache


def ort_greedy(model: onnx.ModelProto, cache: list[str], shape: tuple, prompt: list[int], n: int,
               threads: int = 0) -> list[int]:
    """onnxruntime's greedy generation with an `export_decoder` model: the prompt token by
    token, then `n` tokens, each step's present fed back as the next past."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    kv = {c: np.zeros(shape, np.float32) for c in cache}
    tokens: list[int] = []
    for pos in range(len(prompt) + n - 1):
        tok = prompt[pos] if pos < len(prompt) else tokens[-1]
        outs = sess.run(None, {"input_ids": np.array([[tok]], np.int64),
                               "position_ids": np.array([[pos]], np.int64), **kv})
        kv = dict(zip(cache, outs[1:]))
        if pos >= len(prompt) - 1:
            tokens.append(int(np.argmax(outs[0][0, -1])))
    return tokens


def gpt_decode() -> dict:
    """A small `gpt_decoder` (untied head) exported with its cache's past length dynamic.
    Input sets at past 0, 9 and 63, and the 32 tokens onnxruntime generates greedily from a
    5-token prompt, are committed."""
    import torch

    torch.manual_seed(27)
    vocab, n_embd, n_layer, n_head, n_ctx = 256, 64, 2, 4, 64
    hd = n_embd // n_head
    m = gpt_decoder(vocab, n_embd, n_layer, n_head, n_ctx, scale=0.08, tied=False)
    model, cache = export_decoder(m, n_layer, n_head, hd)
    rng = np.random.default_rng(28)
    sets = []
    for past in (0, 9, 63):
        feeds = {"input_ids": rng.integers(0, vocab, (1, 1)).astype(np.int64),
                 "position_ids": np.array([[past]], np.int64)}
        for n in cache:
            feeds[n] = rng.standard_normal((1, n_head, past, hd)).astype(np.float32)
        sets.append(feeds)
    prompt = [17, 101, 3, 250, 42]
    tokens = ort_greedy(model, cache, (1, n_head, 0, hd), prompt, 32)
    info = {"exporter": "torch.onnx.export(dynamo=False), dynamic_axes past", "torch": torch.__version__,
            "dims": {"past": [0, n_ctx - 1]},
            "greedy": {"prompt": prompt, "tokens": tokens, "cache": cache}}
    return write_sets("gpt_decode", model, sets, info)


def gen_dynamic(only: set[str] | None) -> list[dict]:
    gens = {"detector_nms": detector_nms, "loop_decay": loop_decay, "cnn_batch": cnn_batch,
            "encoder_batch": encoder_batch, "encoder_seq": encoder_seq, "gpt_decode": gpt_decode}
    return [g() for n, g in gens.items() if only is None or n in only]


# ======================================================================================
# Third producer: onnxscript
# ======================================================================================

def gen_onnxscript(only: set[str] | None) -> list[dict]:
    if not (only is None or "lstm_speech_onnxscript" in only):
        return []
    import onnxscript
    from onnxscript import FLOAT, script
    from onnxscript import opset18 as op

    globals()["FLOAT"] = FLOAT  # onnxscript resolves annotations in the module's globals
    rng = np.random.default_rng(300)
    n_mels, hid, classes, t = 40, 48, 20, 40

    def randn(*s, scale=1.0):
        return (rng.standard_normal(s) * scale).astype(np.float32)

    sc = 1 / math.sqrt(hid)
    W1, R1, B1 = randn(2, 4 * hid, n_mels, scale=sc), randn(2, 4 * hid, hid, scale=sc), randn(2, 8 * hid, scale=sc)
    W2, R2, B2 = randn(1, 4 * hid, 2 * hid, scale=sc), randn(1, 4 * hid, hid, scale=sc), randn(1, 8 * hid, scale=sc)
    FC = randn(hid, classes, scale=1 / math.sqrt(hid))
    FB = randn(classes, scale=0.1)
    DELTA = np.array([-1.0, 0.0, 1.0], np.float32).reshape(1, 1, 3)

    @script()
    def lstm_speech(feats: FLOAT[1, 40, 40]) -> FLOAT[1, 20]:
        # feats: batch x time x mel. Normalize per utterance over time, stack first-order
        # deltas, run a bidirectional LSTM then a forward LSTM, mean-pool, classify.
        mean = op.ReduceMean(feats, [1], keepdims=1)
        var = op.ReduceMean(op.Mul(feats - mean, feats - mean), [1], keepdims=1)
        x = (feats - mean) / op.Sqrt(var + op.Constant(value_float=1e-5))
        seq = op.Transpose(x, perm=[1, 0, 2])  # T x B x M
        y1, h1, c1 = op.LSTM(seq, op.Constant(value=W1), op.Constant(value=R1), op.Constant(value=B1),
                             hidden_size=48, direction="bidirectional")
        y1 = op.Reshape(op.Transpose(y1, perm=[0, 2, 1, 3]), op.Constant(value_ints=[40, 1, 96]))
        y2, h2, c2 = op.LSTM(y1, op.Constant(value=W2), op.Constant(value=R2), op.Constant(value=B2),
                             hidden_size=48)
        pooled = op.ReduceMean(op.Squeeze(y2, [1]), [0], keepdims=0)  # B x H
        logits = op.MatMul(pooled, op.Constant(value=FC)) + op.Constant(value=FB)
        return op.LogSoftmax(logits, axis=-1)

    model = lstm_speech.to_model_proto()
    model.producer_name = model.producer_name or "onnxscript"
    if not model.producer_version:
        model.producer_version = onnxscript.__version__
    feeds = {"feats": (np.random.default_rng(301).standard_normal((1, t, n_mels)) - 3).astype(np.float32)}
    return [write_case("lstm_speech_onnxscript", model, feeds,
                       {"exporter": "onnxscript.script().to_model_proto", "dynamic_batch": False})]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="export only these models")
    args = ap.parse_args()
    only = set(args.only) if args.only else None
    metas, failed = [], []
    for gen in (gen_torch, gen_spox, gen_onnxscript, gen_dynamic):
        try:
            metas += gen(only)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            failed.append(gen.__name__)
    total = sum(m["bytes"] for m in metas)
    log(f"{len(metas)} models, {total / 1e6:.1f} MB of model files; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
