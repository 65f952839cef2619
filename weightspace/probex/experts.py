"""A Mixture of tree Experts: one ProbeX per Model Tree, and a router that sends a model to its tree.

The premise of the paper: inside one Model Tree a simple model on one layer works, across trees it does
not; so train one expert per tree and route every new model to the expert of its tree. The paper's code
routes by the known subset (oracle routing). Here the router learns from weights alone: it keeps the mean
("centroid") of the training models of every tree in a few layers and sends an unseen model to the
nearest centroid. Fine-tunes stay close to their root, so this is easy - and we measure how easy.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .train import Fit, LayerData, elementwise_accuracy, fit_many


def fit_experts(data: LayerData, layer: str | Mapping[int, str], kind: str = "probex", seed: int = 0,
                trees: Sequence[int] | None = None, **config) -> dict[int, tuple[str, Fit]]:
    """{tree: (layer, Fit)}: one expert per tree on that tree's train split, selected on its val split."""
    trees = list(trees if trees is not None else data.trees)
    names = [layer if isinstance(layer, str) else layer[t] for t in trees]
    fits = fit_many([(kind, [data.split(name, t, s) for s in ("train", "val", "test")], seed, config)
                     for t, name in zip(trees, names)])
    return {t: (name, f) for t, name, f in zip(trees, names, fits)}


class Router:
    """Nearest tree centroid in weight space (flattened, concatenated routing layers)."""

    def __init__(self, layers: Sequence[str]):
        self.layers = list(layers)

    def features(self, data: LayerData, mask: np.ndarray) -> torch.Tensor:
        idx = torch.from_numpy(np.flatnonzero(mask))
        return torch.cat([data.X(name)[idx].flatten(1) for name in self.layers], 1)

    def fit(self, data: LayerData, split: str = "train") -> Router:
        m = data.mask(split=split)
        if not m.any():
            raise ValueError(f"{data.zoo.path}: no models in split {split!r} to place the tree centroids "
                             f"(splits: {sorted(set(data.split_of))})")
        F_ = self.features(data, m)
        trees = data.tree[m]
        self.trees = sorted(set(trees.tolist()))
        self.centroids = torch.stack([F_[torch.from_numpy(trees == t)].mean(0) for t in self.trees])
        return self

    def predict(self, data: LayerData, mask: np.ndarray) -> np.ndarray:
        d = torch.cdist(self.features(data, mask), self.centroids)
        return np.asarray(self.trees)[d.argmin(1).numpy()]


def route_and_evaluate(experts: Mapping[int, tuple[str, Fit]], router: Router, data: LayerData,
                       split: str = "test") -> dict:
    """Routing accuracy, and expert accuracy with oracle routing vs the router's choice (per tree and all)."""
    m = data.mask(tree=list(experts), split=split)
    idx = np.flatnonzero(m)
    if not len(idx):
        raise ValueError(f"{data.zoo.path}: no models of trees {sorted(experts)} in split {split!r} to route "
                         f"(splits: {sorted(set(data.split_of))})")
    true_tree = data.tree[idx]
    routed = router.predict(data, m)
    Y = data.Y[torch.from_numpy(idx)]
    logits_oracle = torch.zeros_like(Y)
    logits_routed = torch.zeros_like(Y)
    for t, (layer, f) in experts.items():
        X = data.X(layer)
        for logits, sel in ((logits_oracle, true_tree == t), (logits_routed, routed == t)):
            if sel.any():
                logits[torch.from_numpy(sel)] = f.predict(X[torch.from_numpy(idx[sel])])
    out = {"routing_acc": float((routed == true_tree).mean()),
           "oracle_acc": elementwise_accuracy(logits_oracle, Y),
           "routed_acc": elementwise_accuracy(logits_routed, Y), "per_tree": {}}
    for t in experts:
        s = torch.from_numpy(true_tree == t)
        out["per_tree"][int(t)] = {"routing_acc": float((routed[s.numpy()] == t).mean()),
                                   "oracle_acc": elementwise_accuracy(logits_oracle[s], Y[s]),
                                   "routed_acc": elementwise_accuracy(logits_routed[s], Y[s])}
    return out
