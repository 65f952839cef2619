"""Where does ProbeX match the dense linear expert? ProbeX against Dense as the regime changes.

The ProbeX paper (Horwitz et al., CVPR 2025, discriminative results on Model-J) reports that ProbeX at
least matches the dense linear expert it factorises, with far fewer parameters. Its regime differs from a
small CPU jungle in several ways that could each decide the ranking: ~700 training models per tree, 768-wide
layers (the linear expert then has far more weights than models), ranks that are a fraction of the layer
(128 of 768), r_T above the number of classes, ~3000 optimiser steps, and LoRA fine-tunes (the paper's
generative setting reads X = B·A). These functions vary one of them at a time, with the SAME validation
grid for both experts:

- `learning_curves`: nested subsets of one tree's training models, several seeds (subset draw + init);
- `scaled_ranks`: r_U, r_V a fixed fraction of the layer's sides, r_T >= the number of classes;
- `tuned_comparison`: ProbeX and Dense on any (zoo, layer) cells, each tuned on validation.

Every choice (grid point, checkpoint, layer) is made on validation; test accuracy is only reported.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import itertools
import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from weightspace.runtime import np_rng

from .model import probex_params
from .train import DEFAULTS, LayerData, fit_many

KINDS = ("probex", "dense")
SPLITS = ("train", "val", "test")
# the paper's 128 probes / projections on 768-wide ViT-B layers
PAPER_FRACTION = 128 / 768


def scaled_ranks(shape: Sequence[int], n_classes: int, fraction: float = PAPER_FRACTION, min_rank: int = 4,
                 rep_dim: int | None = None) -> dict[str, int]:
    """ProbeX sizes that scale with the layer [d_H, d_W]: r_U = fraction·d_W probes (input side), r_V =
    fraction·d_H projections (output side), each at least `min_rank` and at most the side, and r_T =
    max(rep_dim, n_classes), so the representation e is not narrower than the outputs (the paper's
    r_T = 128 or 512 is above Model-J's 100 classes)."""
    d_H, d_W = (int(s) for s in shape[-2:])
    if not 0 < fraction <= 1:
        raise ValueError(f"scaled_ranks: fraction must be in (0, 1], got {fraction}")
    if n_classes < 1 or min_rank < 1:
        raise ValueError(f"scaled_ranks: need n_classes >= 1 and min_rank >= 1, got {n_classes}, {min_rank}")
    side = lambda d: min(d, max(min_rank, int(round(fraction * d))))
    return dict(n_probes=side(d_W), proj_dim=side(d_H), rep_dim=max(int(rep_dim or 0), int(n_classes)))


def dense_params(shape: Sequence[int], n_classes: int) -> int:
    """d_Y·d_H·d_W + d_Y: the dense linear expert's weights and biases."""
    d_H, d_W = shape[-2:]
    return int(n_classes * d_H * d_W + n_classes)


def nested_subsets(n: int, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Indices of nested random subsets of `n` training models, one per size (ascending): each subset
    contains every smaller one, so a learning curve adds models and never swaps them."""
    sizes = [int(s) for s in sizes]
    if not sizes or sorted(sizes) != sizes or len(set(sizes)) != len(sizes) or sizes[0] < 1:
        raise ValueError(f"nested_subsets: sizes must be positive and strictly increasing, got {sizes}")
    if sizes[-1] > n:
        raise ValueError(f"nested_subsets: the largest size {sizes[-1]} exceeds the {n} training models")
    order = np_rng("probex-scaling-subset", seed).permutation(n)
    return [np.sort(order[:s]) for s in sizes]


def schedule(n_train: int, batch_size: int, steps: int, n_evals: int = 50) -> dict[str, int]:
    """Epochs so that training takes ~`steps` optimiser steps whatever the training-set size (the paper's
    500 epochs of batch 128 on ~700 models are ~3000 steps), and validation about `n_evals` times."""
    if min(n_train, batch_size, steps, n_evals) < 1:
        raise ValueError(f"schedule: n_train, batch_size, steps, n_evals must be >= 1, "
                         f"got {n_train}, {batch_size}, {steps}, {n_evals}")
    per_epoch = math.ceil(n_train / batch_size)
    epochs = max(1, math.ceil(steps / per_epoch))
    return dict(epochs=epochs, eval_every=max(1, epochs // n_evals), steps_per_epoch=per_epoch)


def grid_points(grid: Mapping[str, Sequence]) -> list[dict]:
    """{"lr": [a, b], "weight_decay": [c]} -> [{"lr": a, "weight_decay": c}, {"lr": b, ...}]."""
    bad = sorted(set(grid) - {"lr", "weight_decay", "batch_size"})
    if bad:
        raise ValueError(f"unknown grid setting(s) {bad}; tune lr, weight_decay or batch_size")
    keys = list(grid)
    if any(len(grid[k]) == 0 for k in keys):
        raise ValueError(f"empty grid axis in {dict(grid)}")
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


# ---------------------------------------------------------------------------------- the fitting engine

def _fit_tasks(tasks: Sequence[tuple]) -> list[dict]:
    torch.set_num_threads(1)
    return [dict(train_acc=f.train_acc, val_acc=f.val_acc, test_acc=f.test_acc, best_epoch=f.best_epoch,
                 n_params=f.n_params, seconds=f.seconds) for f in fit_many(tasks, device="cpu")]


def run_fits(tasks: Sequence[tuple], workers: int = 1) -> list[dict]:
    """`fit(kind, *splits, seed=seed, **config)` for every task (kind, splits, seed, config), trained many
    at once (`train.fit_many`), in `workers` one-thread processes (1: here), each taking every
    `workers`-th task (tasks that batch together sit next to each other, so each process gets a share of
    every batch). Results come back in task order, equal whatever `workers` up to float rounding."""
    if workers <= 1 or len(tasks) <= 1:
        return _fit_tasks(tasks)
    parts = [list(range(w, len(tasks), workers)) for w in range(workers)]
    out = [None] * len(tasks)
    for part, res in zip(parts, _pool(workers).map(_fit_tasks, [[tasks[i] for i in p] for p in parts])):
        for i, r in zip(part, res):
            out[i] = r
    return out


_POOLS: dict[int, cf.ProcessPoolExecutor] = {}


def _fit_worker(parent_pid: int) -> None:
    """A fit worker ends with its kernel, and leaves Ctrl-C to it: Jupyter interrupts (and, shutting down,
    signals) the kernel's whole process group, and the kernel, not its workers, should take the
    KeyboardInterrupt (a worker finishes its fits; the pool stays usable)."""
    import signal

    from weightspace.zoo.jobs import exit_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent_pid)


def _pool(workers: int) -> cf.ProcessPoolExecutor:
    """One process pool per size, kept for the session: starting processes (each imports torch) costs
    seconds, the fits often less. Its workers end when this process does, even when it is killed."""
    if workers not in _POOLS:
        _POOLS[workers] = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_fit_worker, initargs=(os.getpid(),))
        atexit.register(_POOLS[workers].shutdown)
    return _POOLS[workers]


def tuned_comparison(cells: Sequence[Mapping], grid: Mapping[str, Sequence], *, steps: int = 3000,
                     n_evals: int = 50, kinds: Sequence[str] = KINDS, ranks=None, workers: int = 1,
                     **config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit ProbeX and Dense on every cell, at every point of the validation `grid`, each for ~`steps`
    optimiser steps (checkpoint kept on validation, as the paper's code), and keep per (cell, kind) the
    grid point with the best validation accuracy (the first on ties).

    A cell is a dict with `splits` ((X, Y) for train / val / test), `seed`, and any labels (kept as
    columns). `ranks` gives ProbeX's sizes: None (`config`'s), "scaled" (`scaled_ranks` of the layer,
    r_T >= the classes) or a function (shape, n_classes) -> dict. Returns (all fits, chosen fits).
    """
    bad = sorted(set(kinds) - set(KINDS))
    if bad or not kinds:
        raise ValueError(f"unknown expert kind(s) {bad or kinds}; choose from {KINDS}")
    if not cells:
        raise ValueError("tuned_comparison: no cells to fit")
    points = grid_points(grid)
    tasks, rows = [], []
    for c, cell in enumerate(cells):
        splits = cell["splits"]
        (X, Y) = splits[0]
        shape, n_classes = tuple(X.shape[1:]), int(Y.shape[1])
        labels = {k: v for k, v in cell.items() if k != "splits"}
        seed = int(labels.pop("seed", 0))
        for kind in kinds:
            size = {}
            if kind == "probex":
                size = (scaled_ranks(shape, n_classes) if ranks == "scaled" else ranks(shape, n_classes)
                        if callable(ranks) else {})
            for g, point in enumerate(points):
                cfg = {**DEFAULTS, **config, **size, **point}
                sched = schedule(len(X), cfg["batch_size"], steps, n_evals)
                cfg.update(epochs=sched["epochs"], eval_every=sched["eval_every"])
                tasks.append((kind, splits, seed, cfg))
                rows.append(dict(cell=c, **labels, seed=seed, kind=kind, n_train=len(X), shape=shape,
                                 grid=g, **point, **{k: cfg[k] for k in ("n_probes", "proj_dim", "rep_dim")
                                                     if kind == "probex"},
                                 epochs=sched["epochs"], steps_per_epoch=sched["steps_per_epoch"]))
    for row, out in zip(rows, run_fits(tasks, workers)):
        row.update(out)
        row["best_step"] = (row["best_epoch"] + 1) * row["steps_per_epoch"]
    every = pd.DataFrame(rows)
    chosen = every.loc[every.groupby(["cell", "kind"], sort=True).val_acc.idxmax()].reset_index(drop=True)
    return every, chosen


# -------------------------------------------------------------------------------------- learning curves

def learning_curve_cells(data: LayerData, tree: int, layer: str, sizes: Sequence[int],
                         seeds: Sequence[int]) -> list[dict]:
    """One cell per (seed, size): nested training subsets drawn by the seed (`nested_subsets`), the tree's
    full validation and test splits."""
    Xtr, Ytr = data.split(layer, tree, "train")
    val, test = data.split(layer, tree, "val"), data.split(layer, tree, "test")
    cells = []
    for seed in seeds:
        for size, idx in zip(sizes, nested_subsets(len(Xtr), sizes, seed)):
            idx = torch.from_numpy(idx)
            cells.append(dict(splits=((Xtr[idx], Ytr[idx]), val, test), seed=int(seed), size=int(size),
                              layer=layer))
    return cells


def learning_curves(data: LayerData, tree: int, layer: str, sizes: Sequence[int], seeds: Sequence[int],
                    grid: Mapping[str, Sequence], *, tune_all_sizes: bool = True,
                    kinds: Sequence[str] = KINDS, **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ProbeX and Dense on nested training subsets of one tree (`learning_curve_cells`), each tuned on the
    validation `grid` (`tuned_comparison`, which takes `options`: steps, n_evals, ranks, workers, ...).

    With `tune_all_sizes=False` only the largest size is tuned; each smaller size reuses, per expert, the
    grid point chosen most often over the seeds at the largest size (ties: the earlier grid point), which
    costs one fit per cell instead of one per grid point. Returns (all fits, chosen fits)."""
    cells = learning_curve_cells(data, tree, layer, sizes, seeds)
    if tune_all_sizes:
        return tuned_comparison(cells, grid, kinds=kinds, **options)
    big = [c for c in cells if c["size"] == max(sizes)]
    rest = [c for c in cells if c["size"] != max(sizes)]
    every, chosen = tuned_comparison(big, grid, kinds=kinds, **options)
    for kind in kinds:
        g, point = most_chosen(chosen, kind, grid)
        if rest:
            e, c = tuned_comparison(rest, point, kinds=(kind,), **options)
            e["grid"] = c["grid"] = g
            every, chosen = pd.concat([every, e]), pd.concat([chosen, c])
    order = ["size", "seed", "kind"]
    return (every.sort_values(order + ["grid"]).reset_index(drop=True),
            chosen.sort_values(order).reset_index(drop=True))


def most_chosen(chosen: pd.DataFrame, kind: str, grid: Mapping[str, Sequence]) -> tuple[int, dict]:
    """(index, one-point grid) of the grid point that `kind`'s chosen fits picked most often (ties: the
    earlier point), e.g. to train further fits with the recipe chosen on validation."""
    counts = chosen[chosen.kind == kind].grid.value_counts()
    if counts.empty:
        raise ValueError(f"no chosen {kind!r} fits to take a grid point from")
    g = int(min(counts.index[counts == counts.max()]))
    return g, {k: [v] for k, v in grid_points(grid)[g].items()}


def choose_layer(data: LayerData, tree: int, layers: Sequence[str], *, steps: int = 1000,
                 kinds: Sequence[str] = KINDS, ranks=None, workers: int = 1,
                 **config) -> tuple[str, pd.DataFrame]:
    """The layer both experts read best: the highest mean VALIDATION accuracy of ProbeX and Dense, each
    trained once on all of the tree's training models (the paper picks its layer on validation)."""
    if not layers:
        raise ValueError("choose_layer: no candidate layers")
    cells = [dict(splits=tuple(data.split(l, tree, s) for s in SPLITS), layer=l, seed=0) for l in layers]
    grid = {k: [config.pop(k, DEFAULTS[k])] for k in ("lr", "weight_decay")}
    _, chosen = tuned_comparison(cells, grid, steps=steps, kinds=kinds, ranks=ranks, workers=workers,
                                 **config)
    by_layer = chosen.pivot(index="layer", columns="kind", values="val_acc").loc[list(layers)]
    by_layer["mean"] = by_layer[list(kinds)].mean(axis=1)
    return str(by_layer["mean"].idxmax()), chosen


def summarize(chosen: pd.DataFrame, by: Sequence[str] = ("size",)) -> pd.DataFrame:
    """Mean, standard deviation (over seeds) and count of the chosen fits' test accuracy per (by, kind),
    and ProbeX − Dense per seed, averaged (`gap`, `gap_std`): the seed pairs the two experts on one subset."""
    by = list(by)
    s = chosen.groupby(by + ["kind"]).agg(mean=("test_acc", "mean"), std=("test_acc", "std"),
                                          n=("test_acc", "size"), val=("val_acc", "mean"),
                                          n_params=("n_params", "first"), best_step=("best_step", "mean"))
    wide = s.unstack("kind")
    paired = chosen.pivot_table(index=by + ["seed"], columns="kind", values="test_acc")
    gap = (paired["probex"] - paired["dense"]).groupby(level=by)
    out = pd.DataFrame({f"{m}_{k}": wide[(m, k)] for m in ("mean", "std", "n", "val", "n_params", "best_step")
                        for k in KINDS if (m, k) in wide})
    out["gap"], out["gap_std"] = gap.mean(), gap.std()
    return out.fillna({"std_probex": 0.0, "std_dense": 0.0, "gap_std": 0.0})


def probex_param_count(shape: Sequence[int], n_classes: int, ranks: Mapping[str, int]) -> int:
    """ProbeX's parameter count on a layer [d_H, d_W] with these sizes (clipped to the sides, as in `fit`)."""
    d_H, d_W = shape[-2:]
    return probex_params(d_H, d_W, min(ranks["n_probes"], d_W), min(ranks["proj_dim"], d_H), ranks["rep_dim"],
                         n_classes)


def same_models(data: LayerData, like: LayerData) -> LayerData:
    """`data`'s zoo restricted to `like`'s model ids, with `like`'s train / val / test split: the same
    fine-tunes (same plan: classes, learning rate, steps, seed) of another zoo, e.g. a wider ViT fine-tuned
    exactly like a narrower one, so the two differ in the architecture alone."""
    missing = [i for i in like.ids if i not in set(data.ids)]
    if missing:
        raise ValueError(f"{data.zoo.path} lacks {len(missing)} of the models of {like.zoo.path} "
                         f"(e.g. {missing[:3]}): build it with at least as many fine-tunes per tree")
    out = LayerData(data.zoo, ids=like.ids, conv_reshape=data.conv_reshape)
    if not torch.equal(out.Y, like.Y):
        raise ValueError(f"{data.zoo.path} and {like.zoo.path}: the same model ids were trained on different "
                         "classes, so they are not the same plan (build one with build_like of the other)")
    out.split_of = like.split_of.copy()
    out.tree = like.tree.copy()
    return out


def layer_cells(datas: Mapping[str, LayerData], layers: Sequence[str], tree: int = 0,
                seeds: Sequence[int] = (0,)) -> list[dict]:
    """One cell per (zoo label, layer, seed) on a tree's own train / val / test split."""
    return [dict(splits=tuple(d.split(layer, tree, s) for s in SPLITS), data=label, layer=layer,
                 seed=int(seed))
            for label, d in datas.items() for layer in layers for seed in seeds]
