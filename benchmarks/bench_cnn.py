"""Batched CNN zoo training (nets.cnn.train_cnns: all models in one grouped-convolution step) vs the same recipe
one model at a time (a plain nn.Module and torch.optim.AdamW per model), in one process of one thread.

    .venv/bin/python benchmarks/bench_cnn.py [--models 64] [--epochs 2] [--out results/bench_cnn.json]

Both sides train the same models (same initialisations, learning rates and per-seed batch orders) on the plain
digits and, as the zoo builder does, evaluate every model on train / val / test at epoch 0 and after every
epoch. The script checks that the two give the same weights (up to float rounding) and prints (and writes) the
speed ratio and the time per model-epoch. Run it on an idle machine; the load average is recorded beside it.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from weightspace.plotting import save_results


def one_at_a_time(sds, data, lrs, seeds, epochs, batch_size):
    from weightspace.nets.cnn import make_cnn
    from weightspace.runtime import generator

    x, y = data.train.x, data.train.y
    out, accs = [], []
    for sd, lr, seed in zip(sds, lrs, seeds):
        model = make_cnn()
        model.load_state_dict(sd)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        g = generator("cnn-order", seed)

        def evaluate():
            with torch.no_grad():
                return {s: float((model(data.split(s).x).argmax(1) == data.split(s).y).float().mean())
                        for s in ("train", "val", "test")}

        evaluate()
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=g)
            for lo in range(0, len(y), batch_size):
                idx = perm[lo:lo + batch_size]
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            accs.append(evaluate()["test"])
        out.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return out, accs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from weightspace.data import digits
    from weightspace.nets.cnn import init_params, train_cnns

    torch.set_num_threads(1)
    data = digits()
    seeds = list(range(args.models))
    lrs = [1e-3 * (1 + m % 3) for m in seeds]
    sds = init_params(None, seeds, "xavier_uniform")
    load = os.getloadavg()[0]
    t = time.perf_counter()
    run = train_cnns(sds, data, epochs=args.epochs, lr=lrs, seeds=seeds, batch_size=args.batch_size, device="cpu")
    t_b = time.perf_counter() - t
    t = time.perf_counter()
    ref, _ = one_at_a_time(sds, data, lrs, seeds, args.epochs, args.batch_size)
    t_s = time.perf_counter() - t
    diff = max(float((run.params[m][k] - ref[m][k]).abs().max()) for m in range(args.models) for k in ref[m])
    per = args.models * args.epochs
    res = dict(models=args.models, epochs=args.epochs, batch_size=args.batch_size, batched_s=round(t_b, 2),
               one_at_a_time_s=round(t_s, 2), speedup=round(t_s / t_b, 2),
               ms_per_model_epoch_batched=round(1000 * t_b / per, 2),
               ms_per_model_epoch_one_at_a_time=round(1000 * t_s / per, 2),
               max_abs_weight_difference=diff, load_average_at_start=round(load, 2),
               load_average_at_end=round(os.getloadavg()[0], 2))
    print(res)
    if args.out:
        save_results(args.out.parent, args.out.stem, res)


if __name__ == "__main__":
    main()
