"""SANE's CNN zoos (Schürholt et al., ICML 2024, Sec. 4; the Model Zoos recipe, NeurIPS 2022): small CNNs on 8x8
digits with a checkpoint of every model at every epoch, epoch 0 being the initialisation.

One row per (model, epoch): model id `<run_id>-e<epoch>`, with columns run_id, epoch, train/val/test accuracy
and loss, `loss` (the training split's loss at that checkpoint), ggap = train_acc - test_acc, `diverged`
(the weights are no longer finite: its metrics are null), and the run's hyperparameters (activation, init,
lr, seed, ...). Runs are split 70/15/15 into train / val / test BY MODEL: every checkpoint of a run has its
run's split.

- A seed zoo (the paper's MNIST / SVHN zoos): one hyperparameter combination, many seeds (`n_seeds`); the seed
  sets the initialisation and the batch order.
- A grid zoo (the Model Zoos "hyperparameter" zoos): `activations` x `inits` x `lrs`, `n_seeds` each, so
  accuracy varies with the hyperparameters as well.
- A new task for the transfer experiment (the paper's SVHN -> MNIST): `styles`, e.g. ["inverted"] digits.

Every job trains a chunk of runs of one activation at once (nets.cnn.train_cnns) and writes each epoch's
checkpoints as they come (in a background thread: a file's fsync waits on the disk, not the CPU), so a killed
build leaves whole checkpoint files that a re-run adopts (zoo.jobs).
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from weightspace.data import STYLES, styled_digits
from weightspace.nets.cnn import ACTIVATIONS, CNN_S, INITS, architecture, init_params, param_shapes, resolve_cfg, \
    train_cnns
from weightspace.runtime import derive_seed, np_rng

from . import checks
from .format import Zoo
from .jobs import Job, run_jobs

KIND = "cnn-epochs"

DEFAULTS = dict(
    n_seeds=300,                 # runs per hyperparameter combination
    activations=["tanh"],        # grid axis 1 (nets.cnn.ACTIVATIONS)
    inits=["xavier_uniform"],    # grid axis 2 (nets.cnn.INITS); biases start at 0.01
    lrs=[1e-3],                  # grid axis 3: Adam's constant learning rate
    epochs=20,                   # training epochs; checkpoints at 0..epochs
    batch_size=32,
    weight_decay=0.0,
    styles=["plain"],            # the task: StyledDigits in these styles (10 classes per style)
    cnn={},                      # overrides of nets.cnn.CNN_S (activation and num_classes are set here)
    split=[0.7, 0.15, 0.15],     # train / val / test fractions of the runs
    chunk=128,                   # runs trained together in one job
    data_seed=0,                 # the digits' train / val / test split
    seed=0,
)
# the hyperparameter grid of the grid zoo (the notebook's default): 3 x 3 x 2 combinations
GRID = dict(activations=["tanh", "relu", "gelu"], inits=["xavier_uniform", "kaiming_normal", "normal"],
            lrs=[1e-3, 3e-3])


def resolve_params(params: Mapping) -> dict:
    """DEFAULTS overridden by `params`, checked before anything is written."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"build_cnn_zoo got unknown parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    for name in ("n_seeds", "batch_size", "chunk"):
        checks.integer(p, name)
    checks.integer(p, "epochs", lo=0)
    checks.choices(p, "activations", ACTIVATIONS)
    checks.choices(p, "inits", INITS)
    checks.choices(p, "styles", STYLES)
    lrs = p["lrs"]
    if not isinstance(lrs, (list, tuple)) or not lrs or len(set(lrs)) != len(lrs) \
            or not all(checks._is_number(v) and v > 0 for v in lrs):
        raise ValueError(f"lrs={lrs!r}: expected a non-empty list of distinct positive learning rates")
    checks.number(p, "weight_decay", positive=False)
    checks.seed(p)
    checks.seed(p, "data_seed")
    if not isinstance(p["cnn"], Mapping) or {"activation", "num_classes"} & set(p["cnn"]):
        raise ValueError(f"cnn={p['cnn']!r}: expected a dict of nets.cnn.CNN_S overrides other than activation and "
                         "num_classes (set by `activations` and `styles`)")
    resolve_cfg(p["cnn"])
    v = p["split"]
    if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(checks._is_number(x) and x >= 0 for x in v) \
            or abs(sum(v) - 1) > 1e-6:
        raise ValueError(f"split={v!r}: expected [train, val, test], three fractions >= 0 summing to 1")
    n = n_runs(p)
    if round(v[0] * n) < 1 or round(v[1] * n) < 1:
        raise ValueError(f"split={v!r}: {n} runs give an empty train or val split; build more runs")
    return {**p, "lrs": [float(x) for x in lrs], "split": [float(x) for x in v]}


def n_runs(p: Mapping) -> int:
    return p["n_seeds"] * len(p["activations"]) * len(p["inits"]) * len(p["lrs"])


def cnn_config(p: Mapping, activation: str) -> dict:
    return resolve_cfg(p["cnn"], activation=activation, num_classes=10 * len(p["styles"]))


def model_id(run_id: str, epoch: int) -> str:
    return f"{run_id}-e{epoch:02d}"


def run_plan(params: Mapping) -> list[dict]:
    """Every run before training: run_id, split, hyperparameters and seed (the grid in activation, init, lr
    order, then the seeds); the split is a seeded shuffle of the runs cut 70/15/15."""
    p = resolve_params(params)
    n = n_runs(p)
    order = np_rng(p["seed"], "cnn-split").permutation(n)
    n_train, n_val = round(p["split"][0] * n), round(p["split"][1] * n)
    split_of = np.empty(n, dtype=object)
    split_of[order[:n_train]], split_of[order[n_train:n_train + n_val]] = "train", "val"
    split_of[order[n_train + n_val:]] = "test"
    task = "+".join(p["styles"])
    runs = []
    for r, (act, init, lr, s) in enumerate(itertools.product(p["activations"], p["inits"], p["lrs"],
                                                             range(p["n_seeds"]))):
        runs.append(dict(run_id=f"r{r:04d}", split=str(split_of[r]), activation=act, init=init, lr=lr,
                         seed=derive_seed(p["seed"], "cnn-run", r), seed_index=s, task=task,
                         epochs=p["epochs"], batch_size=p["batch_size"], weight_decay=p["weight_decay"]))
    return runs


def plan_jobs(params: Mapping) -> list[Job]:
    p = resolve_params(params)
    runs = run_plan(p)
    jobs = []
    for act in p["activations"]:
        mine = [r for r in runs if r["activation"] == act]
        for lo in range(0, len(mine), p["chunk"]):
            chunk = mine[lo:lo + p["chunk"]]
            spec = dict(runs=chunk, cfg=cnn_config(p, act), styles=p["styles"], data_seed=p["data_seed"])
            ids = tuple(model_id(r["run_id"], e) for r in chunk for e in range(p["epochs"] + 1))
            jobs.append(Job(_train_job, spec, ids, name=f"{act} runs {chunk[0]['run_id']}-{chunk[-1]['run_id']}",
                            cost=len(chunk) * p["epochs"]))
    return jobs


def checkpoint_row(run: Mapping, metrics: Mapping) -> dict:
    """A checkpoint's row: the run's columns, its metrics, loss (= train_loss) and ggap."""
    m = {k: v for k, v in metrics.items()}
    ggap = None if m.get("train_acc") is None or m.get("test_acc") is None else m["train_acc"] - m["test_acc"]
    return dict(parent_id=None, tree_id=None, depth=0, **{k: v for k, v in run.items()}, **m,
                loss=m.get("train_loss"), ggap=ggap)


def _train_job(spec, writer) -> None:
    runs, cfg = spec["runs"], spec["cfg"]
    data = styled_digits(tuple(spec["styles"]), spec["data_seed"])
    seeds = [r["seed"] for r in runs]
    with ThreadPoolExecutor(2) as pool:
        pending = []

        def on_epoch(epoch, sds, metrics):
            done = [f for f in pending if f.done()]
            for f in done:
                f.result()
                pending.remove(f)
            for r, sd, m in zip(runs, sds, metrics):
                pending.append(pool.submit(writer.write, model_id(r["run_id"], epoch), sd, checkpoint_row(r, m)))

        train_cnns(init_params(cfg, seeds, [r["init"] for r in runs]), data, epochs=runs[0]["epochs"],
                   lr=[r["lr"] for r in runs], seeds=seeds, cfg=cfg, batch_size=runs[0]["batch_size"],
                   weight_decay=runs[0]["weight_decay"], on_epoch=on_epoch, device="cpu")
        for f in pending:
            f.result()


def build_cnn_zoo(path, *, executor="local", workers: int | None = 2, progress: bool = True,
                  preset: str | None = None, **params) -> Zoo:
    """Build (or resume, or just open when complete) a CNN zoo at `path` with DEFAULTS's parameters overridden
    by `params`: a seed zoo by default, a grid zoo with e.g. **GRID, a new task with e.g. styles=["inverted"]."""
    p = resolve_params(params)
    cfg = cnn_config(p, p["activations"][0])
    arch = {**architecture(**cfg), "kwargs_columns": {"activation": "activation"}}
    zoo = Zoo.create(path, kind=KIND, builder="weightspace.zoo.cnn_zoo.build_cnn_zoo", params=p, preset=preset,
                     command=f"build_cnn_zoo({str(path)!r}, **params)", architecture=arch)
    n = n_runs(p)
    run_jobs(zoo, plan_jobs(p), executor=executor, workers=workers, progress=progress,
             desc=f"CNN zoo ({n} runs x {p['epochs'] + 1} checkpoints)")
    if not zoo.manifest.get("layers"):
        zoo.set_layers(param_shapes(cfg))
    return zoo


def population_curves(table, metric: str = "test_acc", by: str | None = None):
    """Per-epoch statistics of `metric` over a CNN zoo's runs (for each value of the column `by`, or all):
    a DataFrame with group, epoch, mean, std, q10, median, q90, n (finite checkpoints) and n_diverged."""
    import pandas as pd

    groups = [("all", table)] if by is None else list(table.groupby(by, sort=True))
    rows = []
    for g, df in groups:
        for e, de in df.groupby("epoch", sort=True):
            v = pd.to_numeric(de[metric], errors="coerce").dropna()
            rows.append(dict(group=g, epoch=int(e), mean=v.mean(), std=v.std(ddof=0), q10=v.quantile(0.1),
                             median=v.median(), q90=v.quantile(0.9), n=len(v),
                             n_diverged=int(de["diverged"].fillna(False).astype(bool).sum())))
    return pd.DataFrame(rows)
