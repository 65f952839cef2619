"""SANE speed: tokenizing a ResNet-18-sized state dict vectorised vs one row at a time, and SANE training
throughput in tokens per second, in one run.

    .venv/bin/python benchmarks/bench_sane.py [--steps 30] [--d-model 64] [--out results/bench_sane.json]

tokenize       `sane.tokenize` of timm's resnet18 (11.2M parameters, d_t 288, BN ignored: 39k tokens); one Python
               loop over layers, none over rows
rowloop        `tokenize_rowloop`: the same tokens built row by row and chunk by chunk (checked equal)
throughput     SANE pre-training steps (two views of batch x window tokens each) on a look-alike zoo of small
               CNN state dicts (random, 44 tokens of 73), one thread, after 3 warm-up steps
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(24, 20), nn.ReLU(), nn.Linear(20, 10))


def main(argv=None):
    import timm

    from weightspace.sane import train as T
    from weightspace.sane.model import SANE
    from weightspace.sane.tokenize import tokenize, tokenize_rowloop

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--skip-rowloop", action="store_true", help="time the vectorised tokenizer only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sd = timm.create_model("resnet18", pretrained=False, num_classes=10).state_dict()
    t0 = time.perf_counter()
    tok = tokenize(sd, 288)
    t_vec = time.perf_counter() - t0
    result = {"resnet18_params": sum(v.numel() for k, v in sd.items() if "num_batches" not in k),
              "resnet18_tokens": tok.tokens.shape[0], "tokenize_s": round(t_vec, 4)}
    if not args.skip_rowloop:
        t0 = time.perf_counter()
        slow = tokenize_rowloop(sd, 288)
        t_loop = time.perf_counter() - t0
        assert torch.equal(slow, tok.tokens)
        result.update(rowloop_s=round(t_loop, 3), rowloop_over_tokenize=round(t_loop / t_vec, 1))

    torch.manual_seed(0)
    sds = [small_cnn().state_dict() for _ in range(2 * args.batch)]
    rows = [dict(run_id=i, epoch=0) for i in range(len(sds))]
    data, _, _ = T.prepare({"train": (T.stack(sds), rows)})
    model = SANE(T.config_for(data["train"], window=args.window, d_model=args.d_model, d_z=16))
    T.train(model, data["train"], 3, batch_size=args.batch, progress=False, device="cpu")
    h = T.train(model, data["train"], args.steps, batch_size=args.batch, progress=False, device="cpu")
    result.update(sane_params=sum(p.numel() for p in model.parameters()), d_model=args.d_model,
                  window=model.cfg.window, batch=args.batch, steps=args.steps,
                  train_tokens_per_s=round(h["tokens_per_s"]), steps_per_s=round(args.steps / h["seconds"], 2))
    for k, v in result.items():
        print(f"{k:>24}: {v}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
