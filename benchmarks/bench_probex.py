"""ProbeX training from the pre-extracted [N, d_H, d_W] layer tensor vs a loader that re-reads every
model's checkpoint file each epoch (what the official code does), for one full training run.

    .venv/bin/python benchmarks/bench_probex.py [--zoo zoos/default/vit_model_trees] [--tree 0]
        [--layer blocks.1.attn.proj.weight] [--epochs 150] [--out results/bench_probex.json]

Both runs train the same ProbeX (same seed, same batches) with the same recipe and must reach the same
validation accuracy; the first includes the one-time extraction (zoo.layer, uncached) in its time.
Without --zoo a small zoo is built first in a temporary folder.

Second, notebook 03's layer sweep (ProbeX and Dense on every weight matrix of every tree, its recipe,
`--sweep-epochs` epochs): one `fit` after another vs `fit_many` (experts of one shape trained together),
in one run on the same pre-extracted layers; and `fit_many` with vmap of each expert's forward instead of
its `forward_stacked` (how it batched before). Reported: the times, the ratios, and how many fits agree
(same checkpoint epoch and accuracies) and the largest test-accuracy difference (float rounding only).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import torch
from torch.utils.data import DataLoader, Dataset

from weightspace.plotting import save_results


class CheckpointFiles(Dataset):
    """One item = open the model's safetensors file and read the layer (no caching)."""

    def __init__(self, zoo, ids, layer, Y):
        self.paths = [zoo.path / zoo.row(i)["file"] for i in ids]
        self.layer, self.Y = layer, Y

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from safetensors import safe_open

        with safe_open(str(self.paths[i]), framework="pt") as f:
            return f.get_tensor(self.layer).float(), self.Y[i]


def train_from_files(zoo, ids_tr, ids_va, layer, Ytr, Yva, cfg, seed):
    """The same loop as weightspace.probex.train.train, fed by DataLoaders over checkpoint files."""
    import torch.nn.functional as F

    from weightspace.probex.model import ProbeX
    from weightspace.probex.train import adam, elementwise_accuracy
    from weightspace.runtime import generator

    torch.manual_seed(seed)
    d_H, d_W = zoo.lazy(ids_tr[0]).shape(layer)
    model = ProbeX(d_H, d_W, cfg["n_probes"], cfg["proj_dim"], cfg["rep_dim"], Ytr.shape[1])
    opt = adam(model.parameters(), cfg["lr"], cfg["weight_decay"])
    g = generator("probex-train", seed)
    train_set, val_set = CheckpointFiles(zoo, ids_tr, layer, Ytr), CheckpointFiles(zoo, ids_va, layer, Yva)
    best = -1.0
    for epoch in range(cfg["epochs"]):
        model.train()
        order = torch.randperm(len(train_set), generator=g)
        loader = DataLoader(torch.utils.data.Subset(train_set, order.tolist()), batch_size=cfg["batch_size"])
        for X, Y in loader:
            loss = F.binary_cross_entropy_with_logits(model(X), Y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch % cfg["eval_every"] == 0 or epoch == cfg["epochs"] - 1:
            model.eval()
            with torch.no_grad():
                logits, ys = zip(*[(model(X), Y) for X, Y in DataLoader(val_set, batch_size=1024)])
            best = max(best, elementwise_accuracy(torch.cat(logits), torch.cat(ys)))
    return best


def bench_sweep(zoo, epochs):
    """Notebook 03's layer sweep, fit after fit vs fit_many, on the same LayerData."""
    from weightspace.probex import LayerData
    from weightspace.probex.model import Dense, ProbeX
    from weightspace.probex.train import fit, fit_many

    data = LayerData(zoo)
    layers = data.layers()
    cfg = dict(n_probes=16, proj_dim=16, rep_dim=32, batch_size=32, epochs=epochs)   # notebook 03's
    tasks = [(kind, [data.split(l, t, s) for s in ("train", "val", "test")], 0, cfg)
             for t in data.trees for l in layers for kind in ("probex", "dense")]
    t = time.perf_counter()
    one = [fit(k, *sp, seed=s, device="cpu", **c) for k, sp, s, c in tasks]
    t_one = time.perf_counter() - t
    t = time.perf_counter()
    many = fit_many(tasks, device="cpu")
    t_many = time.perf_counter() - t
    # fit_many as it was before the experts' own batched forward: vmap of each expert's forward
    with patch.object(ProbeX, "forward_stacked", None), patch.object(Dense, "forward_stacked", None):
        t = time.perf_counter()
        vmapped = fit_many(tasks, device="cpu")
        t_vmap = time.perf_counter() - t
    same = sum((a.best_epoch, a.val_acc, a.test_acc) == (b.best_epoch, b.val_acc, b.test_acc)
               for a, b in zip(one, many))
    same_vmap = sum((a.best_epoch, a.val_acc, a.test_acc) == (b.best_epoch, b.val_acc, b.test_acc)
                    for a, b in zip(vmapped, many))
    return dict(fits=len(tasks), trees=len(data.trees), layers=len(layers), epochs=epochs,
                one_at_a_time_s=round(t_one, 2), fit_many_s=round(t_many, 2), speedup=t_one / t_many,
                fit_many_vmap_s=round(t_vmap, 2), speedup_vmap=t_one / t_vmap,
                forward_stacked_over_vmap=t_vmap / t_many, identical_to_vmap=same_vmap,
                identical_fits=same, max_test_acc_difference=max(abs(a.test_acc - b.test_acc)
                                                                 for a, b in zip(one, many)),
                mean_test_acc=[sum(f.test_acc for f in fs) / len(fs) for fs in (one, many)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path)
    ap.add_argument("--tree", type=int, default=0)
    ap.add_argument("--layer", default="blocks.1.attn.proj.weight")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--sweep-epochs", type=int, default=40, help="epochs of the layer-sweep section (0: skip)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from weightspace.probex.model import stack_layer
    from weightspace.probex.train import DEFAULTS, train
    from weightspace.probex.model import ProbeX
    from weightspace.zoo import Zoo
    from weightspace.zoo.model_trees import build_model_trees

    torch.set_num_threads(1)
    if args.zoo is None:
        tmp = tempfile.mkdtemp()
        zoo = build_model_trees(f"{tmp}/zoo", n_trees=1, n_per_tree=96, root_steps=300, steps=[50, 100],
                                executor="inline", progress=False)
    else:
        zoo = Zoo.open(args.zoo)
    ids_tr = zoo.select(tree_id=args.tree, split="train")
    ids_va = zoo.select(tree_id=args.tree, split="val")
    Ytr, Yva = zoo.multi_hot(ids_tr), zoo.multi_hot(ids_va)
    cfg = {**DEFAULTS, "epochs": args.epochs}

    # warm-up outside the clock: torch's first optimiser step imports and initialises machinery (~3 s), which
    # would otherwise be charged to whichever side runs first
    warm = ProbeX(4, 4, 2, 2, 2, 2)
    train(warm, (torch.zeros(2, 4, 4), torch.zeros(2, 2)), (torch.zeros(2, 4, 4), torch.zeros(2, 2)),
          epochs=1, eval_every=1, device="cpu")

    t = time.perf_counter()
    Xtr = stack_layer(zoo.layer(args.layer, ids_tr, cache=False))
    Xva = stack_layer(zoo.layer(args.layer, ids_va, cache=False))
    torch.manual_seed(0)
    model = ProbeX(*Xtr.shape[1:], cfg["n_probes"], cfg["proj_dim"], cfg["rep_dim"], Ytr.shape[1])
    fit = train(model, (Xtr, Ytr), (Xva, Yva), seed=0, device="cpu",
                **{k: cfg[k] for k in ("lr", "weight_decay", "batch_size", "epochs", "eval_every")})
    t_tensor = time.perf_counter() - t

    t = time.perf_counter()
    val_files = train_from_files(zoo, ids_tr, ids_va, args.layer, Ytr, Yva, cfg, seed=0)
    t_files = time.perf_counter() - t
    res = dict(zoo=str(zoo.path), layer=args.layer, n_train=len(ids_tr), n_val=len(ids_va), epochs=args.epochs,
               pre_extracted_s=round(t_tensor, 2), reread_files_s=round(t_files, 2),
               speedup=t_files / t_tensor, best_val_acc_pre_extracted=fit.val_acc,
               best_val_acc_reread=val_files)
    if args.sweep_epochs:
        res["sweep"] = bench_sweep(zoo, args.sweep_epochs)
    print(json.dumps(res, indent=2))
    if args.out:
        save_results(args.out.parent, args.out.stem, res)


if __name__ == "__main__":
    main()
