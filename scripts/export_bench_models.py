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
"""

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_models as em  # noqa: E402

OUT = em.ROOT / "target" / "bench-models"
NAMES = ("resnet50", "mobilenetv2", "bert_base", "gpt2_small")
SEQ = 128


def export(name: str, module, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict:
    return em.export_torch(name, module, feeds, output_names, dynamic_batch=False, out=OUT, ort_optimize=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=NAMES, help="export only these models")
    args = ap.parse_args()
    only = set(args.only or NAMES)

    import torch

    M = em.torch_models()

    def resnet50():
        torch.manual_seed(1050)
        m = M["ResNet"](layers=(3, 4, 6, 3), width=64, num_classes=1000)
        M["randomize_bn"](m, torch.Generator().manual_seed(1051))
        x = np.random.default_rng(1052).standard_normal((1, 3, 224, 224)).astype(np.float32)
        return export("resnet50", m, {"image": x}, ["logits"])

    def mobilenetv2():
        torch.manual_seed(1060)
        m = M["MobileNetV2"](width_mult=1.0, num_classes=1000)
        M["randomize_bn"](m, torch.Generator().manual_seed(1061))
        x = np.random.default_rng(1062).standard_normal((1, 3, 224, 224)).astype(np.float32)
        return export("mobilenetv2", m, {"image": x}, ["logits"])

    def bert_base():
        torch.manual_seed(1070)
        vocab = 30522
        m = M["Bert"](vocab=vocab, hidden=768, layers=12, heads=12, inter=3072, max_pos=512, types=2)
        ids = np.random.default_rng(1071).integers(0, vocab, (1, SEQ)).astype(np.int64)
        mask = np.ones((1, SEQ), np.int64)
        types = np.zeros((1, SEQ), np.int64)
        return export("bert_base", m, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
                      ["last_hidden_state", "pooler_output"])

    def gpt2_small():
        torch.manual_seed(1080)
        vocab = 50257
        m = M["GPT2"](vocab=vocab, n_embd=768, n_layer=12, n_head=12, n_ctx=1024)
        ids = np.random.default_rng(1081).integers(0, vocab, (1, SEQ)).astype(np.int64)
        return export("gpt2_small", m, {"input_ids": ids}, ["logits"])

    jobs = {"resnet50": resnet50, "mobilenetv2": mobilenetv2, "bert_base": bert_base, "gpt2_small": gpt2_small}
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
