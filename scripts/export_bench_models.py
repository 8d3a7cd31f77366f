#!/usr/bin/env python3
"""Exports full-size benchmark models into target/bench-models/<name>/ (issue 4).

The architectures are the PyTorch modules of scripts/export_models.py (torchvision /
Hugging Face layouts), built at their real sizes instead of the small test sizes:

  resnet50      ResNet-50, widths 64..2048, 1000 classes     image           1x3x224x224 f32
  mobilenetv2   MobileNetV2, width_mult 1.0, 1000 classes    image           1x3x224x224 f32
  bert_base     BERT-base encoder: hidden 768, 12 layers,    input_ids,      1x128 i64 each
                12 heads, FFN 3072, vocab 30522, 512 pos.    attention_mask,
                                                             token_type_ids
  gpt2_small    GPT-2 small LM: n_embd 768, 12 layers,       input_ids       1x128 i64
                12 heads, vocab 50257, n_ctx 1024

and the models of issue 18, off the path the first four were tuned on (torchvision's own
modules where it has them, so the graphs are what its users export):

  convnext_tiny ConvNeXt-T (torchvision), 1000 classes       image           1x3x224x224 f32
  resnext50     ResNeXt-50 32x4d (torchvision)               image           1x3x224x224 f32
  efficientnet_b0 EfficientNet-B0 (torchvision)              image           1x3x224x224 f32
  unet          U-Net (Ronneberger et al.): widths 32..512,  image           1x3x256x256 f32
                max-pool down, ConvTranspose k2 s2 up, 2 classes
  vit_b16       ViT-B/16 (torchvision), 1000 classes         image           1x3x224x224 f32
  r3d_18        3-D ResNet-18 (torchvision.models.video)     clip            1x3x16x112x112 f32
  yolo_detect   YOLO-style detector (export_models.Yolo at   images          1x3x640x640 f32
                width 32, 80 classes) whose graph ends in its post-processing: best class
                score per box, TopK 100 of the 24,000 boxes, gathered boxes and classes

and, for issue 19, models with run-time dims (dynamic axes):

  bert_seq      BERT-base's layers (two), dynamic batch and sequence length
  gpt2_decode   GPT-2 small as one decode step with a key/value cache (past length
                dynamic, 0..1023); meta.json holds onnxruntime's 32 greedy tokens

All batch 1 with static shapes (no dynamic axes), fp32, opset 18, random weights with fixed
seeds (BatchNorm statistics randomized as in export_models.py), weights inside model.onnx
(every model is well under 2 GB). They are exported the same way as the small models
(torch.onnx.export(dynamo=True), falling back to dynamo=False if it fails). Each folder holds

  model.onnx        the exported model
  input_<i>.npy     the inputs (token ids < vocab, attention mask of ones, token types 0)
  output_<i>.npy    onnxruntime's outputs on them (default graph optimizations, 1 thread)
  meta.json         as in tests/models/ (exporter, shapes, torch-vs-onnxruntime error)

target/ is git-ignored and about 1.1 GB is written; CI does not need these models. Run by
hand with the PyTorch venv, then benchmark with benches/peers/run.py --bench-models:

  /work/torchenv/bin/python scripts/export_bench_models.py [--only NAME ...]

The PyTorch venv (torch 2.15.0 and torchvision 0.29.2 from PyPI, with the test venv's onnx,
onnxruntime and numpy, plus onnxscript and pillow): scripts/python/torch.lock.
"""

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_models as em  # noqa: E402

OUT = em.ROOT / "target" / "bench-models"
NAMES = ("resnet50", "mobilenetv2", "bert_base", "gpt2_small", "convnext_tiny", "resnext50", "efficientnet_b0",
         "unet", "vit_b16", "r3d_18", "yolo_detect", "bert_seq", "gpt2_decode")
SEQ = 128


def export(name: str, module, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict:
    return em.export_torch(name, module, feeds, output_names, dynamic_batch=False, out=OUT, ort_optimize=True)


def bench_modules() -> dict:
    """The two architectures torchvision lacks: a U-Net and a detector with its post-processing."""
    import torch
    import torch.nn as nn

    class DoubleConv(nn.Sequential):
        def __init__(self, cin, cout):
            super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        """Ronneberger et al.'s U-Net with same-padding: four max-pool downs, four ConvTranspose k2 s2 ups."""

        def __init__(self, cin=3, classes=2, widths=(32, 64, 128, 256, 512)):
            super().__init__()
            self.downs = nn.ModuleList([DoubleConv(cin, widths[0])] +
                                       [DoubleConv(a, b) for a, b in zip(widths, widths[1:])])
            self.pool = nn.MaxPool2d(2)
            rev = widths[::-1]
            self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 2, stride=2) for a, b in zip(rev, rev[1:]))
            self.convs = nn.ModuleList(DoubleConv(2 * b, b) for b in rev[1:])
            self.head = nn.Conv2d(widths[0], classes, 1)

        def forward(self, x):
            skips = []
            for i, down in enumerate(self.downs):
                x = down(x if i == 0 else self.pool(x))
                skips.append(x)
            skips.pop()
            for up, conv in zip(self.ups, self.convs):
                x = conv(torch.cat([skips.pop(), up(x)], 1))
            return self.head(x)

    class YoloDetect(nn.Module):
        """A detector and its post-processing in one graph: each box's best class score
        (objectness times class probability), the k best boxes by TopK, their boxes and classes."""

        def __init__(self, yolo, k):
            super().__init__()
            self.yolo, self.k = yolo, k

        def forward(self, x):
            det = self.yolo(x)  # 1 x boxes x (4 + 1 + classes)
            cls_scores = det[..., 5:] * det[..., 4:5]
            best, cls = cls_scores.max(-1)
            scores, idx = best.topk(self.k, dim=1)
            boxes = det[0, :, :4].index_select(0, idx[0]).unsqueeze(0)
            return boxes, scores, cls[0].index_select(0, idx[0]).unsqueeze(0)

    return {"UNet": UNet, "YoloDetect": YoloDetect}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=NAMES, help="export only these models")
    args = ap.parse_args()
    only = set(args.only or NAMES)

    import torch

    M = em.torch_models()

    def image(seed: int, *shape: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)

    def vision(name: str, seed: int, build, x: np.ndarray, input_name: str = "image"):
        torch.manual_seed(seed)
        m = build()
        M["randomize_bn"](m, torch.Generator().manual_seed(seed + 1))
        return export(name, m, {input_name: x}, ["logits"])

    def resnet50():
        return vision("resnet50", 1050, lambda: M["ResNet"](layers=(3, 4, 6, 3), width=64, num_classes=1000),
                      image(1052, 1, 3, 224, 224))

    def mobilenetv2():
        return vision("mobilenetv2", 1060, lambda: M["MobileNetV2"](width_mult=1.0, num_classes=1000),
                      image(1062, 1, 3, 224, 224))

    def bert_base():
        torch.manual_seed(1070)
        vocab = 30522
        m = M["Bert"](vocab=vocab, hidden=768, layers=12, heads=12, inter=3072, max_pos=512, types=2)
        ids = np.random.default_rng(1071).integers(0, vocab, (1, SEQ)).astype(np.int64)
        mask = np.ones((1, SEQ), np.int64)
        types = np.zeros((1, SEQ), np.int64)
        return export("bert_base", m, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
                      ["last_hidden_state", "pooler_output"])

    def bert_seq():
        # Issue 19: BERT-base's layers (two of them) exported with a dynamic batch and sequence
        # length, compiled once with `--dim batch=1..8 --dim seq=1..512` and timed against
        # artifacts pinned to each shape.
        torch.manual_seed(1075)
        vocab = 30522
        m = M["Bert"](vocab=vocab, hidden=768, layers=2, heads=12, inter=3072, max_pos=512, types=2)
        ids = np.random.default_rng(1076).integers(0, vocab, (1, SEQ)).astype(np.int64)
        mask = np.ones((1, SEQ), np.int64)
        types = np.zeros((1, SEQ), np.int64)
        axes = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")}
        axes["pooler_output"] = {0: "batch"}
        return em.export_torch("bert_seq", m, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
                               ["last_hidden_state", "pooler_output"], dynamic_batch=False, force_legacy=True,
                               dynamic_axes=axes, out=OUT, ort_optimize=True)

    def gpt2_small():
        torch.manual_seed(1080)
        vocab = 50257
        m = M["GPT2"](vocab=vocab, n_embd=768, n_layer=12, n_head=12, n_ctx=1024)
        ids = np.random.default_rng(1081).integers(0, vocab, (1, SEQ)).astype(np.int64)
        return export("gpt2_small", m, {"input_ids": ids}, ["logits"])

    def gpt2_decode():
        # Issue 19: GPT-2 small as a one-token step with a key/value cache whose past length
        # is dynamic (export_models.gpt_decoder, embeddings tied to the head as GPT-2's are),
        # compiled once with `--dim past=0..1023` and timed generating 32 tokens against
        # onnxruntime (benches/peers/run.py --decode).
        import json

        torch.manual_seed(1085)
        n_layer, n_head, hd = 12, 12, 64
        m = em.gpt_decoder(50257, 768, n_layer, n_head, 1024, scale=0.02, tied=True)
        model, cache = em.export_decoder(m, n_layer, n_head, hd)
        dst = OUT / "gpt2_decode"
        dst.mkdir(parents=True, exist_ok=True)
        data = model.SerializeToString()
        (dst / "model.onnx").write_bytes(data)
        prompt = [464, 2068, 7586, 21831, 18045]
        tokens = em.ort_greedy(model, cache, (1, n_head, 0, hd), prompt, 32, threads=1)
        meta = {"name": "gpt2_decode", "exporter": "torch.onnx.export(dynamo=False), dynamic_axes past",
                "torch": torch.__version__, "dims": {"past": [0, 1023]}, "bytes": len(data),
                "greedy": {"prompt": prompt, "tokens": tokens, "cache": cache}}
        (dst / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        em.log(f"gpt2_decode: {len(model.graph.node)} nodes, greedy tokens {tokens}")
        return meta

    def convnext_tiny():
        return vision("convnext_tiny", 1090, lambda: tvm.convnext_tiny(weights=None), image(1092, 1, 3, 224, 224))

    def resnext50():
        return vision("resnext50", 1100, lambda: tvm.resnext50_32x4d(weights=None), image(1102, 1, 3, 224, 224))

    def efficientnet_b0():
        return vision("efficientnet_b0", 1110, lambda: tvm.efficientnet_b0(weights=None),
                      image(1112, 1, 3, 224, 224))

    def unet():
        return vision("unet", 1120, lambda: extra["UNet"](), image(1122, 1, 3, 256, 256))

    def vit_b16():
        return vision("vit_b16", 1130, lambda: tvm.vit_b_16(weights=None), image(1132, 1, 3, 224, 224))

    def r3d_18():
        return vision("r3d_18", 1140, lambda: tvm.video.r3d_18(weights=None), image(1142, 1, 3, 16, 112, 112),
                      input_name="clip")

    def yolo_detect():
        torch.manual_seed(1150)
        m = extra["YoloDetect"](M["Yolo"](nc=80, na=3, w=32, img=640), k=100)
        M["randomize_bn"](m, torch.Generator().manual_seed(1151))
        # PyTorch's default initialization shrinks the signal layer by layer, which leaves every box
        # nearly the same score and TopK choosing among ties; He initialization keeps them apart.
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(mod.weight)
        with torch.no_grad():  # and heads scaled down so that the sigmoids do not saturate to ties at 1
            for head in m.yolo.heads:
                head.weight.mul_(0.1)
        return export("yolo_detect", m, {"images": image(1152, 1, 3, 640, 640)}, ["boxes", "scores", "classes"])

    import torchvision.models as tvm

    extra = bench_modules()
    jobs = {"resnet50": resnet50, "mobilenetv2": mobilenetv2, "bert_base": bert_base, "gpt2_small": gpt2_small,
            "convnext_tiny": convnext_tiny, "resnext50": resnext50, "efficientnet_b0": efficientnet_b0,
            "unet": unet, "vit_b16": vit_b16, "r3d_18": r3d_18, "yolo_detect": yolo_detect, "bert_seq": bert_seq,
            "gpt2_decode": gpt2_decode}
    OUT.mkdir(parents=True, exist_ok=True)
    metas, failed = [], []
    for name in NAMES:
        if name not in only:
            continue
        try:
            metas.append(jobs[name]())
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            failed.append(name)
    total = sum(m["bytes"] for m in metas)
    em.log(f"{len(metas)} models in {OUT}, {total / 1e6:.1f} MB of model files; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
