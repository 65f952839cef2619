"""Baselines for predicting a model's training classes from its weights.

- chance:   element-wise accuracy 0.5 (half the classes are positive); `majority` is the best constant
            guess learned from the training labels (also ~0.5 when the classes are drawn at random).
- Dense:    the linear expert y = W vec(X) + b on one layer (weightspace.probex.model.Dense, trained
            by train.fit("dense", ...)); `ridge` is its closed-form least-squares cousin, used by the
            motivating experiments because it needs no training loop.
- StatNN:   Unterthiner et al. (2020): per-tensor weight statistics (mean, variance and the 0/25/50/75/
            100% quantiles of every hidden tensor) fed to a small MLP. It ignores which weight sits where,
            so it should be near chance on "which classes" (paper: ~55% on Model-J).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .train import _check_split, elementwise_accuracy, train

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


# ---------------------------------------------------------------------------------------------- chance

def majority(Y_train: torch.Tensor, Y_test: torch.Tensor) -> float:
    """Predict, for every class, whatever most training models had; element-wise test accuracy."""
    guess = (Y_train.float().mean(0) > 0.5).float()
    return float((guess[None] == (Y_test > 0.5).float()).float().mean())


# ------------------------------------------------------------------------------------- ridge (closed form)

class Ridge:
    """Multi-output ridge regression on flattened weights, targets 0/1, predicted positive above 0.5.

    Solved in the dual (N models << D weights): W = X_cᵀ (X_c X_cᵀ + α I)⁻¹ (Y - ȳ). `alpha` is relative to
    the mean squared norm of a centred input, so one grid suits every layer.
    """

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, X: torch.Tensor, Y: torch.Tensor) -> Ridge:
        _check_split("train", X, Y)
        X = X.flatten(1).double()
        self.mu, self.ybar = X.mean(0), Y.double().mean(0)
        Xc = X - self.mu
        K = Xc @ Xc.T
        lam = self.alpha * float(K.diagonal().mean().clamp(min=1e-12))
        A = torch.linalg.solve(K + lam * torch.eye(len(K), dtype=K.dtype), Y.double() - self.ybar)
        self.W = Xc.T @ A
        return self

    def decision(self, X: torch.Tensor) -> torch.Tensor:
        """Scores shifted so that > 0 means "trained on this class" (like a logit)."""
        return ((X.flatten(1).double() - self.mu) @ self.W + self.ybar - 0.5).float()

    def score(self, X: torch.Tensor, Y: torch.Tensor) -> float:
        return elementwise_accuracy(self.decision(X), Y)


def fit_ridge(train_split, val_split, alphas: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)) -> tuple[Ridge, float]:
    """Pick alpha on validation; returns (the ridge refit on train with that alpha, its val accuracy)."""
    _check_split("validation", *val_split)
    best = None
    for a in alphas:
        r = Ridge(a).fit(*train_split)
        acc = r.score(*val_split)
        if best is None or acc > best[1]:
            best = (r, acc)
    return best


# ---------------------------------------------------------------------------------------------- StatNN

def weight_statistics(state_dict: Mapping[str, torch.Tensor], keys: Sequence[str]) -> torch.Tensor:
    """[7 * len(keys)] features: mean, variance, quantiles 0/25/50/75/100% of each named tensor."""
    feats = []
    for k in keys:
        w = state_dict[k].detach().flatten().double()
        q = torch.quantile(w, torch.tensor(QUANTILES, dtype=torch.double)) if w.numel() > 1 else w.repeat(5)
        feats.append(torch.cat([w.mean()[None], w.var(unbiased=False)[None], q]))
    return torch.cat(feats).float()


def tensor_keys(zoo, ids: Sequence[str], min_numel: int = 0, exclude: Sequence[str] = ("head",)) -> list[str]:
    """Names of the tensors of the zoo's models (read from the first of `ids`) with at least `min_numel`
    entries, in stored order, those starting with a prefix in `exclude` (the classification head) left out."""
    if not len(ids):
        raise ValueError(f"{zoo.path}: no model ids given")
    first = zoo.lazy(ids[0])
    return [k for k in first if not k.startswith(tuple(exclude)) and math.prod(first.shape(k)) >= min_numel]


def statnn_features(zoo, ids: Sequence[str], keys: Sequence[str] | None = None) -> torch.Tensor:
    """StatNN features [N, 7 * len(keys)] of zoo models: 7 statistics of each tensor in `keys`, in that
    order (default: every tensor but the classification head, `tensor_keys`)."""
    keys = list(keys) if keys is not None else tensor_keys(zoo, ids)
    if not keys:
        raise ValueError(f"{zoo.path}: no tensors to compute StatNN statistics of (keys is empty)")
    first = zoo.lazy(ids[0])
    unknown = [k for k in keys if k not in first]
    if unknown:
        raise KeyError(f"{zoo.path}: model {ids[0]!r} has no tensor(s) {unknown}")
    feats = torch.stack([weight_statistics(zoo.load(i, verify=False), keys) for i in ids])
    if not torch.isfinite(feats).all():
        bad = [ids[i] for i in torch.nonzero(~torch.isfinite(feats).all(1)).flatten()[:5].tolist()]
        raise ValueError(f"{zoo.path}: NaN or inf weights in model(s) {bad}")
    return feats


class StatNN(nn.Module):
    """Standardise the statistics (with training-set moments), then a one-hidden-layer MLP."""

    def __init__(self, X_train: torch.Tensor, out_dim: int, hidden: int = 64):
        super().__init__()
        self.register_buffer("mu", X_train.mean(0))
        self.register_buffer("sd", X_train.std(0).clamp(min=1e-8))
        self.net = nn.Sequential(nn.Linear(X_train.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x):
        return self.net((x - self.mu) / self.sd)


def fit_statnn(train_split, val_split, test_split=None, *, hidden: int = 64, seed: int = 0, **recipe):
    """Train StatNN with the same recipe and validation checkpointing as ProbeX."""
    _check_split("train", *train_split)
    torch.manual_seed(seed)
    model = StatNN(train_split[0], train_split[1].shape[1], hidden)
    cfg = dict(lr=1e-3, weight_decay=1e-5, batch_size=32, epochs=200, eval_every=5) | recipe
    return train(model, train_split, val_split, test_split, seed=seed, device="cpu", **cfg)


