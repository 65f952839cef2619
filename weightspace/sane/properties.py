"""Property prediction from weights (SANE, Sec. 4.1, Table 1): a linear ridge probe on model embeddings.

Targets per checkpoint: test accuracy (Acc), epoch (Ep) and generalisation gap (Ggap = train_acc - test_acc).
The probe is closed-form ridge regression with a bias column in double precision, b = (X^T X + lambda I)^-1 X^T y,
lambda chosen among LAMBDAS by validation R^2, and the test R^2 at that lambda reported (R^2 = 1 - MSE / Var(y)).
Baselines (Sec. 4.1): W, the flattened (padded) token tensor; s(W), per layer the mean, variance and the
percentiles 1 / 25 / 50 / 75 / 99 over the layer's tokens, padding zeros included (the released code's version).
"""
from __future__ import annotations

import numpy as np
import torch

LAMBDAS = (1e3, 3e2, 1e2, 3e1, 10, 3, 1, 0.3, 0.1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
PERCENTILES = (0.01, 0.25, 0.5, 0.75, 0.99)


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    var = y.var()
    return float(1 - ((y - pred) ** 2).mean() / var) if var > 0 else float("nan")


def ridge_fit(X: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """b = (X^T X + lambda I)^-1 X^T y with a bias column (the bias is penalised too, as in the code)."""
    X = np.hstack([np.asarray(X, np.float64), np.ones((len(X), 1))])
    return np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ np.asarray(y, np.float64))


def ridge_predict(X: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.hstack([np.asarray(X, np.float64), np.ones((len(X), 1))]) @ b


def probe(train: tuple, val: tuple, test: tuple, lambdas=LAMBDAS) -> dict:
    """Ridge on (X, y) pairs: lambda by validation R^2; {lam, val_r2, test_r2, val_curve}."""
    (Xtr, ytr), (Xva, yva), (Xte, yte) = train, val, test
    curve = []
    for lam in lambdas:
        b = ridge_fit(Xtr, ytr, lam)
        curve.append(r2(yva, ridge_predict(Xva, b)))
    best = int(np.nanargmax(curve))
    b = ridge_fit(Xtr, ytr, lambdas[best])
    return {"lam": float(lambdas[best]), "val_r2": curve[best], "test_r2": r2(yte, ridge_predict(Xte, b)),
            "val_curve": dict(zip(map(float, lambdas), curve))}


def raw_weights(tokens: torch.Tensor) -> np.ndarray:
    """W: [M, N * d_t] the flattened token tensor (padding included, as the code flattens it)."""
    return tokens.reshape(tokens.shape[0], -1).double().numpy()


def weight_stats(tokens: torch.Tensor, positions: torch.Tensor) -> np.ndarray:
    """s(W): [M, 7 L] per layer mean, variance and the 1/25/50/75/99 percentiles of its tokens (with padding)."""
    feats = []
    for l in positions[:, 1].unique(sorted=True):
        v = tokens[:, positions[:, 1] == l].reshape(tokens.shape[0], -1).double()
        q = torch.quantile(v, torch.tensor(PERCENTILES, dtype=torch.float64), dim=1).T
        feats.append(torch.cat([v.mean(1, keepdim=True), v.var(1, unbiased=False, keepdim=True), q], 1))
    return torch.cat(feats, 1).numpy()


def property_table(features: dict[str, dict[str, np.ndarray]], targets: dict[str, dict[str, np.ndarray]],
                   lambdas=LAMBDAS) -> dict:
    """{feature: {target: probe result}}: features[name][split] = X, targets[target][split] = y, splits
    train / val / test."""
    out = {}
    for name, X in features.items():
        out[name] = {t: probe(*((X[s], y[s]) for s in ("train", "val", "test")), lambdas=lambdas)
                     for t, y in targets.items()}
    return out
