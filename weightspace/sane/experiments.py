"""The notebooks' SANE experiments as functions: reading a checkpoint zoo, property tables, sampled-model
evaluation. Zoos are read through weightspace.zoo.format alone (verified reads); CNN training and evaluation
come from weightspace.nets.cnn.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from . import properties
from .embed import embed
from .train import SplitData, stack

log = logging.getLogger(__name__)
TARGETS = {"test accuracy": "test_acc", "epoch": "epoch", "generalisation gap": "ggap"}


def read_zoo(zoo, splits: Sequence[str] = ("train", "val", "test"), epochs: Sequence[int] | None = None,
             max_runs: int | None = None, run_key: str = "run_id", epoch_key: str = "epoch", progress: bool = True
             ) -> dict[str, tuple[dict[str, torch.Tensor], list[dict]]]:
    """{split: (stacked state dict, rows)} of a zoo's checkpoints (optionally some epochs; at most `max_runs`
    runs per split, the first by run id), every file verified against the table."""
    from tqdm.auto import tqdm

    out = {}
    for s in splits:
        rows = [r for r in zoo.rows if r["split"] == s and (epochs is None or r.get(epoch_key) in epochs)]
        if not rows:
            raise ValueError(f"{zoo.path}: no checkpoints in split {s!r}"
                             + (f" at epochs {list(epochs)}" if epochs is not None else ""))
        if max_runs is not None:
            if run_key in rows[0]:
                keep = set(sorted({r[run_key] for r in rows})[:max_runs])
                rows = [r for r in rows if r[run_key] in keep]
            else:   # one checkpoint per model: an evenly spaced subset of the table
                rows = [rows[int(i)] for i in np.unique(np.linspace(0, len(rows) - 1, max_runs).round())]
        sds = [zoo.load(r["model_id"]) for r in tqdm(rows, desc=f"reading {s}", disable=not progress)]
        out[s] = (stack(sds), rows)
    return out


def feature_sets(model, data: Mapping[str, SplitData], halo: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """{"SANE": z_bar, "W": flattened tokens, "s(W)": weight statistics} per split (Sec. 4.1)."""
    feats: dict[str, dict[str, np.ndarray]] = {"SANE": {}, "W": {}, "s(W)": {}}
    for s, d in data.items():
        t = d.tokens
        feats["SANE"][s] = embed(model, t.tokens, t.positions, halo=halo).double().numpy()
        feats["W"][s] = properties.raw_weights(t.tokens)
        feats["s(W)"][s] = properties.weight_stats(t.tokens, t.positions)
    return feats


def property_results(features: Mapping[str, Mapping[str, np.ndarray]], data: Mapping[str, SplitData],
                     targets: Mapping[str, str] = TARGETS, select=None) -> dict:
    """{feature: {target: probe}}: ridge test R^2 with lambda on validation, on the checkpoints `select(rows)`
    keeps (default all)."""
    keep = {s: (np.ones(len(d), bool) if select is None else np.asarray(select(d.rows), bool))
            for s, d in data.items()}
    X = {f: {s: x[keep[s]] for s, x in per.items()} for f, per in features.items()}
    Y = {name: {s: d.column(col)[keep[s]] for s, d in data.items()} for name, col in targets.items()}
    return properties.property_table(X, Y)


def cnn_accuracy(stacked: Mapping[str, torch.Tensor], split: str, data=None, cfg=None) -> np.ndarray:
    """Accuracy of each stacked CNN on a data split (nets.cnn.evaluate_cnns); NaN weights give chance-free 0."""
    from weightspace.nets.cnn import evaluate_cnns

    sds = _unstack(stacked)
    ok = [all(torch.isfinite(v).all() for v in sd.values()) for sd in sds]
    acc = np.zeros(len(sds))
    good = [i for i, o in enumerate(ok) if o]
    if good:
        acc[good] = evaluate_cnns([sds[i] for i in good], split, cfg, data=data, device="cpu").numpy()
    return acc


def finetune_curve(stacked: Mapping[str, torch.Tensor], epochs: int, lr: float, seeds: Sequence[int], data=None,
                   cfg=None, split: str = "test") -> np.ndarray:
    """[M, epochs + 1] accuracy on `split` at epoch 0 (as given) and after each fine-tuning epoch
    (nets.cnn.train_cnns from the given state dicts, the zoo's recipe)."""
    from weightspace.nets.cnn import train_cnns

    run = train_cnns(_unstack(stacked), data, epochs=epochs, lr=lr, seeds=list(seeds), cfg=cfg,
                     eval_splits=(split,), device="cpu")
    key = f"{split}_acc"
    return np.array([[np.nan if m[key] is None else m[key] for m in per_epoch] for per_epoch in run.metrics]).T


def _unstack(stacked: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    m = next(iter(stacked.values())).shape[0]
    return [{k: v[i].detach().float().contiguous() for k, v in stacked.items()} for i in range(m)]


def summary(acc: np.ndarray) -> dict:
    """mean and std over models (per column for a curve)."""
    acc = np.asarray(acc, float)
    return {"mean": np.nanmean(acc, 0).tolist(), "std": np.nanstd(acc, 0).tolist()}


def prepare_zoo(zoo, token_size: int | None = None, aligned: bool = True, permute_view: bool = True,
                epochs: Sequence[int] | None = None, max_runs: int | None = None, seed: int = 0,
                progress: bool = True):
    """(raw splits, prepared splits, standardiser, report) of a checkpoint zoo: read_zoo then train.prepare
    (filter, align to the first training run's last epoch, standardise with training statistics, tokenize)."""
    from .train import prepare

    raw = read_zoo(zoo, epochs=epochs, max_runs=max_runs, progress=progress)
    data, std, report = prepare(raw, token_size, aligned=aligned, permute_view=permute_view, seed=seed)
    return raw, data, std, report


def zoo_task(zoo) -> tuple[object, dict]:
    """(the task's data, the CNN config) of a checkpoint zoo, from its manifest: the StyledDigits styles and data
    seed its models trained on, and the architecture's arguments."""
    from weightspace.data import styled_digits

    p = zoo.params
    data = styled_digits(tuple(p.get("styles", ["plain"])), p.get("data_seed", 0))
    cfg = dict(zoo.manifest.get("architecture", {}).get("kwargs", {}))
    acts = {r.get("activation") for r in zoo.rows} - {None}
    if len(acts) > 1:
        raise ValueError(f"{zoo.path}: models of several activations {sorted(acts)}: pick one zoo per architecture")
    if acts:
        cfg["activation"] = acts.pop()
    return data, cfg


def concat(parts: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], dict[str, slice]]:
    """One stacked state dict of several (name -> stacked), and where each name's models sit."""
    where, start = {}, 0
    for name, sd in parts.items():
        n = next(iter(sd.values())).shape[0]
        where[name], start = slice(start, start + n), start + n
    keys = list(next(iter(parts.values())))
    return {k: torch.cat([sd[k].float() for sd in parts.values()]) for k in keys}, where
