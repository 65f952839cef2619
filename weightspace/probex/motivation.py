"""The four motivating experiments of ProbeX (paper §3, "Motivation"), on one layer of a zoo of trees.

  (a) within vs across:  a linear classifier on one layer, trained on tree A, tested on tree B
                         (and one trained on a mix of all trees, as many models as one tree has)
  (b) positive transfer: test accuracy as the number of same-tree training models grows
  (c) negative transfer: a fixed set of same-tree models plus more and more models of other trees
  (d) experts vs shared: one expert per tree against one model trained on all trees (same data)

"Linear classifier" in (a)-(c) is ridge regression on the flattened layer (closed form, penalty picked
on the target tree's validation models), so the curves average several seeds in seconds. (d) trains
ProbeX (or Dense) with the full recipe of train.py. Accuracy is element-wise (chance 0.5).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from weightspace.runtime import np_rng

from .baselines import fit_ridge
from .train import LayerData, elementwise_accuracy, fit

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _subset(X, Y, n, rng):
    if n > len(X):
        raise ValueError(f"asked for {n} models but only {len(X)} are available")
    idx = torch.from_numpy(np.sort(rng.choice(len(X), n, replace=False)))
    return X[idx], Y[idx]


def within_vs_across(data: LayerData, layer: str, seed: int = 0) -> dict:
    """(a) acc[A][B] = ridge trained on tree A (penalty chosen on A's val) tested on tree B's test;
    `mixed[B]`: trained on as many models as one tree has, drawn evenly from all trees."""
    trees = data.trees
    acc = np.zeros((len(trees), len(trees)))
    for i, a in enumerate(trees):
        ridge, _ = fit_ridge(data.split(layer, a, "train"), data.split(layer, a, "val"), ALPHAS)
        for j, b in enumerate(trees):
            acc[i, j] = ridge.score(*data.split(layer, b, "test"))
    n = min(int(data.mask(t, "train").sum()) for t in trees)
    rng = np_rng(seed, "mixed", layer)
    parts = [_subset(*data.split(layer, t, "train"), n // len(trees), rng) for t in trees]
    mixed_train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    ridge, _ = fit_ridge(mixed_train, data.split(layer, None, "val"), ALPHAS)
    mixed = np.array([ridge.score(*data.split(layer, t, "test")) for t in trees])
    off = ~np.eye(len(trees), dtype=bool)
    return {"trees": trees, "acc": acc, "mixed": mixed, "within": float(acc.diagonal().mean()),
            "across": float(acc[off].mean()), "mixed_mean": float(mixed.mean()), "n_mixed_train": n}


def learning_curve(data: LayerData, layer: str, sizes: Sequence[int], seeds: Sequence[int] = (0, 1, 2)) -> pd.DataFrame:
    """(b) Rows (tree, n_train, seed, test_acc): ridge on n same-tree training models."""
    rows = []
    for t in data.trees:
        Xtr, Ytr = data.split(layer, t, "train")
        val, test = data.split(layer, t, "val"), data.split(layer, t, "test")
        for n in sizes:
            if n > len(Xtr):
                continue
            for s in seeds:
                ridge, _ = fit_ridge(_subset(Xtr, Ytr, n, np_rng(s, "curve", t, n)), val, ALPHAS)
                rows.append(dict(tree=t, n_train=n, seed=s, test_acc=ridge.score(*test)))
    return pd.DataFrame(rows)


def other_tree_transfer(data: LayerData, layer: str, n_same: int, n_other: Sequence[int],
                        seeds: Sequence[int] = (0, 1, 2)) -> pd.DataFrame:
    """(c) Rows (tree, n_other, seed, test_acc): n_same models of the tree plus n_other models drawn
    from the other trees' training splits; penalty chosen and accuracy measured on the tree itself."""
    rows = []
    for t in data.trees:
        Xs, Ys = data.split(layer, t, "train")
        others = [u for u in data.trees if u != t]
        Xo, Yo = data.split(layer, others, "train")
        val, test = data.split(layer, t, "val"), data.split(layer, t, "test")
        for s in seeds:
            same = _subset(Xs, Ys, min(n_same, len(Xs)), np_rng(s, "same", t))
            for k in n_other:
                if k > len(Xo):
                    continue
                extra = _subset(Xo, Yo, k, np_rng(s, "other", t, k)) if k else (Xo[:0], Yo[:0])
                tr = (torch.cat([same[0], extra[0]]), torch.cat([same[1], extra[1]]))
                ridge, _ = fit_ridge(tr, val, ALPHAS)
                rows.append(dict(tree=t, n_other=k, seed=s, test_acc=ridge.score(*test)))
    return pd.DataFrame(rows)


def experts_vs_shared(data: LayerData, layer: str, kind: str = "probex", seed: int = 0, **config) -> pd.DataFrame:
    """(d) Rows (tree, model, test_acc, n_params): per-tree experts vs ONE model trained on the union of
    all trees' training models (selected on the union of their validation models)."""
    rows = []
    shared = fit(kind, data.split(layer, None, "train"), data.split(layer, None, "val"), seed=seed, **config)
    for t in data.trees:
        test = data.split(layer, t, "test")
        expert = fit(kind, data.split(layer, t, "train"), data.split(layer, t, "val"), test, seed=seed, **config)
        rows.append(dict(tree=t, model="expert", test_acc=expert.test_acc, n_params=expert.n_params))
        rows.append(dict(tree=t, model="shared", test_acc=elementwise_accuracy(shared.predict(test[0]), test[1]),
                         n_params=shared.n_params))
    return pd.DataFrame(rows)


def ridge_probe(X: torch.Tensor, Y: torch.Tensor, seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> float:
    """Test accuracy of a ridge probe on a random train / val / test split of the given models (used
    for quick comparisons of whole zoos, e.g. zero vs random fine-tuning heads in notebook 01)."""
    n = len(X)
    order = torch.from_numpy(np_rng(seed, "ridge-probe", n).permutation(n))
    a, b = int(round(fractions[0] * n)), int(round((fractions[0] + fractions[1]) * n))
    tr, va, te = order[:a], order[a:b], order[b:]
    ridge, _ = fit_ridge((X[tr], Y[tr]), (X[va], Y[va]), ALPHAS)
    return ridge.score(X[te], Y[te])
