"""Train a ProbeX (or Dense, or any small net) on a pre-extracted layer tensor.

The recipe of the paper's official code: BCE-with-logits over the d_Y classes (d_Y independent binary
classifiers), Adam with weight decay 1e-5 and constant lr 1e-3, shuffled mini-batches; evaluate every
`eval_every` epochs and keep the checkpoint with the best validation element-wise accuracy (strictly
greater, so the earliest best wins); report that checkpoint on the test split. Chance is 50%.

The official loader re-reads one tensor from every checkpoint file each epoch; here the layer of every
model is read once into an [N, d_H, d_W] tensor (`LayerData`), which gives the same result far faster
(benchmarks/bench_probex.py measures by how much).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weightspace.runtime import device as default_device
from weightspace.runtime import generator

from .model import check_finite, make_model, n_params, ranks_for, stack_layer

# the official code's defaults, and the scaled-down ones for 32-wide ViTs on a CPU (what `fit` uses)
PAPER = dict(n_probes=128, proj_dim=128, rep_dim=512, lr=1e-3, weight_decay=1e-5, batch_size=128,
             epochs=500, eval_every=25)
DEFAULTS = dict(n_probes=16, proj_dim=16, rep_dim=32, lr=1e-3, weight_decay=1e-5, batch_size=32,
             epochs=200, eval_every=5)  # ~150 training models: batch 32 x 200 epochs ~ the paper's ~3000 steps
RANKS = ("n_probes", "proj_dim", "rep_dim")
RECIPE = ("lr", "weight_decay", "batch_size", "epochs", "eval_every")


def elementwise_accuracy(logits: torch.Tensor, Y: torch.Tensor) -> float:
    """Fraction of (model, class) pairs predicted right at threshold 0.5 (sigmoid > 0.5 <=> logit > 0)."""
    return float(((logits > 0) == (Y > 0.5)).float().mean())


@dataclass
class Fit:
    """A trained expert: the best-on-validation model and its numbers."""

    model: nn.Module
    train_acc: float
    val_acc: float
    test_acc: float | None
    best_epoch: int
    n_params: int
    seconds: float
    history: list = field(default_factory=list)   # [(epoch, train_loss, val_acc)]

    @torch.no_grad()
    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """Logits [N, d_Y] (evaluated in chunks on the model's device)."""
        return _logits(self.model, X)


def _check_split(name: str, X: torch.Tensor, Y: torch.Tensor, width: int | None = None) -> None:
    """Inputs and multi-hot labels of one split: non-empty, as many label rows as models, finite weights, labels
    exactly 0 or 1, and (given `width`) as many label columns as the expert has outputs."""
    if X is None or len(X) == 0:
        raise ValueError(f"the {name} split is empty: no models to {'train on' if name == 'train' else 'evaluate'}")
    if Y is None or Y.ndim != 2:
        raise ValueError(f"{name} split: labels must be a [models, classes] 0/1 matrix, got shape "
                         f"{None if Y is None else tuple(Y.shape)}")
    if len(X) != len(Y):
        raise ValueError(f"{name} split: {len(X)} inputs but {len(Y)} label rows")
    if width is not None and Y.shape[1] != width:
        raise ValueError(f"{name} split: labels have {Y.shape[1]} classes, the expert predicts {width}")
    bad = ~((Y == 0) | (Y == 1))
    if bad.any():
        row, col = (int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{name} split: labels must be 0 or 1 (multi-hot); model row {row}, class {col} is "
                         f"{float(Y[row, col])!r} ({int(bad.sum())} such entries)")
    check_finite(X, f"{name} split")


def _check_recipe(batch_size, epochs, eval_every, lr, weight_decay) -> None:
    for name, value in (("batch_size", batch_size), ("epochs", epochs), ("eval_every", eval_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r}: must be a whole number >= 1")
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value < 0 \
                or (name == "lr" and value == 0):
            raise ValueError(f"{name}={value!r}: must be a finite number {'> 0' if name == 'lr' else '>= 0'}")


def adam(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """torch.optim.Adam (L2 weight decay, as the paper's code), its fused kernel where the device has one:
    one pass over each tensor instead of ~10, which is most of a step for the Dense expert's many weights."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@torch.no_grad()
def _logits(model: nn.Module, X: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    model.eval()
    dev = next(model.parameters()).device
    return torch.cat([model(X[i:i + chunk].to(dev)).float().cpu() for i in range(0, len(X), chunk)])


def train(model: nn.Module, train: tuple, val: tuple, test: tuple | None = None, *, lr: float = 1e-3,
          weight_decay: float = 1e-5, batch_size: int = 128, epochs: int = 500, eval_every: int = 25,
          seed: int = 0, device=None) -> Fit:
    """Train `model` on (X, Y) tensors with BCE + Adam; select the checkpoint on validation accuracy."""
    (Xtr, Ytr), (Xva, Yva) = train, val
    _check_recipe(batch_size, epochs, eval_every, lr, weight_decay)
    _check_split("train", Xtr, Ytr)
    _check_split("validation", Xva, Yva, Ytr.shape[1])
    if test is not None:
        _check_split("test", *test, width=Ytr.shape[1])
    dev = torch.device(device) if device is not None else default_device()
    model = model.to(dev)
    Xtr_d, Ytr_d = Xtr.float().to(dev), Ytr.float().to(dev)
    opt = adam(model.parameters(), lr, weight_decay)
    g = generator("probex-train", seed)
    best = (-1.0, -1, None)
    history = []
    t0 = time.time()
    n = len(Xtr_d)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=g).to(dev)
        total = 0.0
        for lo in range(0, n, batch_size):
            idx = order[lo:lo + batch_size]
            loss = F.binary_cross_entropy_with_logits(model(Xtr_d[idx]), Ytr_d[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if epoch % eval_every == 0 or epoch == epochs - 1:
            val_acc = elementwise_accuracy(_logits(model, Xva), Yva)
            history.append((epoch, total / n, val_acc))
            if val_acc > best[0]:
                best = (val_acc, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    fit = Fit(model=model, train_acc=elementwise_accuracy(_logits(model, Xtr), Ytr), val_acc=best[0],
              test_acc=None, best_epoch=best[1], n_params=n_params(model), seconds=time.time() - t0,
              history=history)
    if test is not None:
        fit.test_acc = elementwise_accuracy(_logits(model, test[0]), test[1])
    return fit


def _expert(kind: str, train_split: tuple, seed: int, config: Mapping) -> tuple[nn.Module, dict]:
    """The untrained expert `fit` starts from (seeded as PyTorch's default init draws from the global
    generator) and the full config (DEFAULTS overridden by `config`)."""
    cfg = {**DEFAULTS, **config}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown ProbeX setting(s) {unknown}; known: {sorted(DEFAULTS)}")
    X, Y = train_split
    _check_split("train", X, Y)
    if X.ndim != 3:
        raise ValueError(f"expected layer tensors [N, d_H, d_W], got {tuple(X.shape)}")
    ranks = ranks_for(X.shape, {k: cfg[k] for k in RANKS}) if kind == "probex" else {}
    torch.manual_seed(seed)
    return make_model(kind, X.shape[1], X.shape[2], Y.shape[1], **ranks), cfg


def fit(kind: str, train_split: tuple, val_split: tuple, test_split: tuple | None = None, *, seed: int = 0,
        device=None, **config) -> Fit:
    """Build a "probex" or "dense" expert for the layer's shape and train it (config: DEFAULTS's keys)."""
    model, cfg = _expert(kind, train_split, seed, config)
    return train(model, train_split, val_split, test_split, seed=seed, device=device,
                 **{k: cfg[k] for k in RECIPE})


# -------------------------------------------------------------------- many experts at once (vmap)

MANY_BYTES = 256 << 20   # stacked training inputs held at once by one batch of experts


def fit_many(tasks: Sequence[tuple], *, device=None, max_bytes: int = MANY_BYTES) -> list[Fit]:
    """`fit(kind, *splits, seed=seed, **config)` for every task (kind, splits, seed, config), many at once.

    A layer sweep, an ablation or a validation grid is hundreds of tiny independent experts; one step of
    one of them is mostly Python and dispatch overhead. Tasks that agree in everything that shapes the
    training loop (kind, layer shape, ranks, split sizes, batch size, epochs, validation schedule) are
    trained together: parameters stacked on a leading axis, one vmapped forward and backward of the
    model's own `forward`, and one Adam (`adam`, elementwise, so M independent ones) over the stacked
    tensors; tasks must then also share lr and weight decay to batch. Each expert keeps its own initialisation
    (`fit`'s), its own shuffles (generator("probex-train", seed)) and its own best-on-validation checkpoint,
    so every Fit equals `fit`'s up to float rounding (a batched matrix product rounds differently, and
    over a long run Adam's normalised steps let that drift; tests/test_probex.py checks short runs).
    Results come back in task order; `seconds` is the batch's time shared equally by its experts.
    """
    out: list[Fit | None] = [None] * len(tasks)
    groups: dict[tuple, list[int]] = {}
    built = []
    for i, (kind, splits, seed, config) in enumerate(tasks):
        config = dict(config)
        task_dev = config.pop("device", device)
        (Xtr, Ytr), (Xva, Yva), test = splits[0], splits[1], (splits[2] if len(splits) > 2 else None)
        model, cfg = _expert(kind, (Xtr, Ytr), seed, config)
        _check_recipe(*(cfg[k] for k in ("batch_size", "epochs", "eval_every", "lr", "weight_decay")))
        _check_split("validation", Xva, Yva, Ytr.shape[1])
        if test is not None:
            _check_split("test", *test, width=Ytr.shape[1])
        built.append((model, cfg))
        shapes = tuple(tuple(p.shape) for p in model.parameters())
        key = (type(model).__name__, shapes, tuple(Xtr.shape), len(Xva), None if test is None else len(test[0]),
               cfg["batch_size"], cfg["epochs"], cfg["eval_every"], cfg["lr"], cfg["weight_decay"], str(task_dev))
        groups.setdefault(key, []).append(i)
    for key, members in groups.items():
        dev = torch.device(key[-1]) if key[-1] != "None" else default_device()
        per_model = 4 * tasks[members[0]][1][0][0].numel()
        step = max(1, max_bytes // max(per_model, 1))
        for lo in range(0, len(members), step):
            chunk = members[lo:lo + step]
            if len(chunk) == 1:                          # nothing to batch: the plain loop is quicker
                (i,) = chunk
                model, cfg = built[i]
                out[i] = train(model, *tasks[i][1][:3], seed=int(tasks[i][2]), device=dev,
                               **{k: cfg[k] for k in RECIPE})
                continue
            fits = _train_stacked([built[i][0] for i in chunk], [tasks[i][1] for i in chunk],
                                  [int(tasks[i][2]) for i in chunk], [built[i][1] for i in chunk], dev)
            for i, f in zip(chunk, fits):
                out[i] = f
    return out


def _stacked_logits(net, X: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(X[:, i:i + chunk]) for i in range(0, X.shape[1], chunk)], 1)


def _accuracies(logits: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """`elementwise_accuracy` of each expert, [M] (float32, as its mean)."""
    return ((logits > 0) == (Y > 0.5)).flatten(1).float().mean(1)


def _train_stacked(models: Sequence[nn.Module], splits: Sequence[tuple], seeds: Sequence[int],
                   cfgs: Sequence[dict], dev) -> list[Fit]:
    """`train` for M experts of one architecture and one training-loop shape, in one vmapped loop."""
    from weightspace.nets.batched import Stacked

    t0 = time.time()
    M = len(models)
    net = Stacked(lambda: copy.deepcopy(models[0]), [m.state_dict() for m in models], device=dev)
    params = net.trainable()
    Xtr = torch.stack([s[0][0].float() for s in splits]).to(dev)
    Ytr = torch.stack([s[0][1].float() for s in splits]).to(dev)
    Xva, Yva = (torch.stack([s[1][j].float() for s in splits]).to(dev) for j in (0, 1))
    batch_size, epochs, eval_every = (cfgs[0][k] for k in ("batch_size", "epochs", "eval_every"))
    opt = adam(params.values(), cfgs[0]["lr"], cfgs[0]["weight_decay"])   # elementwise: M independent Adams
    gens = [generator("probex-train", s) for s in seeds]
    best_acc = torch.full((M,), -1.0)
    best_epoch = torch.full((M,), -1, dtype=torch.long)
    best = {k: p.detach().clone() for k, p in params.items()}
    history = [[] for _ in range(M)]
    rows = torch.arange(M, device=dev)[:, None]
    n = Xtr.shape[1]
    for epoch in range(epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(dev)
        total = torch.zeros(M, dtype=torch.float64)
        for lo in range(0, n, batch_size):
            idx = order[:, lo:lo + batch_size]
            flat = (idx + rows * n).flatten()           # one contiguous gather (2-D fancy indexing is slow)
            b = idx.shape[1]
            logits = net(Xtr.flatten(0, 1).index_select(0, flat).view(M, b, *Xtr.shape[2:]))
            target = Ytr.flatten(0, 1).index_select(0, flat).view(M, b, -1)
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            total += loss.detach().double().cpu() * idx.shape[1]
        if epoch % eval_every == 0 or epoch == epochs - 1:
            acc = _accuracies(_stacked_logits(net, Xva).cpu(), Yva.cpu())
            for m in range(M):
                history[m].append((epoch, float(total[m]) / n, float(acc[m])))
            better = acc > best_acc
            if better.any():
                best_acc = torch.where(better, acc, best_acc)
                best_epoch[better] = epoch
                sel = better.to(dev)
                with torch.no_grad():
                    for k, p in params.items():
                        best[k][sel] = p[sel]
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(best[k])
    train_acc = _accuracies(_stacked_logits(net, Xtr).cpu(), Ytr.cpu())
    tests = [s[2] if len(s) > 2 else None for s in splits]
    test_acc = None
    if tests[0] is not None:
        Xte, Yte = (torch.stack([t[j].float() for t in tests]).to(dev) for j in (0, 1))
        test_acc = _accuracies(_stacked_logits(net, Xte).cpu(), Yte.cpu())
    seconds = (time.time() - t0) / M
    fits = []
    for m, (model, sd) in enumerate(zip(models, net.state_dicts())):
        model.load_state_dict(sd)
        model.to(dev)
        fits.append(Fit(model=model, train_acc=float(train_acc[m]), val_acc=float(best_acc[m]),
                        test_acc=None if test_acc is None else float(test_acc[m]), best_epoch=int(best_epoch[m]),
                        n_params=n_params(model), seconds=seconds, history=history[m]))
    return fits


# -------------------------------------------------------------------------- a zoo's layers, once in RAM

LORA = "lora:"   # LayerData's name of a LoRA layer: "lora:<module stem>"


class LayerData:
    """The labelled models of any zoo as tensors: `X(layer)` [N, d_H, d_W] read once and kept, labels Y
    [N, d_Y] (multi-hot, from the zoo's label contract), and each model's tree and data split, so any
    (tree, split) subset is a cheap index. By default: every labelled model that is in a data split.

    In a zoo with a LoRA layout (its manifest's `lora` entry), "lora:<stem>" is also a layer: each model's
    weight change B A on that module (`Zoo.lora_layer`), what ProbeX reads for a LoRA model (paper, Sec. 5:
    X = B A, no alpha scaling).
    """

    def __init__(self, zoo, ids: Sequence[str] | None = None, conv_reshape: bool = True):
        self.zoo = zoo
        if ids is None:
            ids = [i for i in zoo.labelled() if zoo.row(i)["split"] is not None]
        self.ids = list(ids)
        if not self.ids:
            raise ValueError(f"{zoo.path}: no labelled models in a data split (train / val / test) in this zoo")
        rows = [zoo.row(i) for i in self.ids]
        self.tree = np.array([r["tree_id"] for r in rows])
        self.split_of = np.array([r["split"] for r in rows])
        self.tree_names = {int(r["tree_id"]): r.get("tree_name", str(r["tree_id"])) for r in rows}
        self.class_names = zoo.class_names
        self.Y = zoo.multi_hot(self.ids)
        self.conv_reshape = conv_reshape
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def trees(self) -> list[int]:
        return sorted(self.tree_names)

    def layers(self) -> list[str]:
        """Every weight matrix of the ViT, head excluded: the 2-D weights, the position embeddings
        (a matrix once squeezed, as in the paper's layer list) and the patch-embedding conv."""
        shapes = self.zoo.manifest.get("layers") or {k: self.zoo.lazy(self.ids[0]).shape(k)
                                                     for k in self.zoo.lazy(self.ids[0])}
        extra = tuple((self.zoo.manifest.get("architecture") or {}).get("extra_prefixes", ()))
        weights = [k for k, s in shapes.items() if not k.startswith("head") and not (extra and k.startswith(extra))
                   and ((k.endswith("weight") and len(s) >= 2) or sum(d != 1 for d in s) == 2)]
        return weights + [LORA + stem for stem in self.zoo.lora_modules()]

    def X(self, layer: str) -> torch.Tensor:
        """[N, d_H, d_W] float32: the layer of every model (for "lora:<stem>", its LoRA product B A)."""
        if layer not in self._cache:
            stack = (self.zoo.lora_layer(layer[len(LORA):], self.ids) if layer.startswith(LORA)
                     else self.zoo.layer(layer, self.ids))
            self._cache[layer] = stack_layer(stack, conv_reshape=self.conv_reshape,
                                             name=f"{self.zoo.path}: layer {layer!r}")
        return self._cache[layer]

    def mask(self, tree=None, split=None) -> np.ndarray:
        m = np.ones(len(self.ids), dtype=bool)
        if tree is not None:
            m &= np.isin(self.tree, np.atleast_1d(tree))
        if split is not None:
            m &= np.isin(self.split_of, np.atleast_1d(split))
        return m

    def root(self, layer: str, tree: int) -> torch.Tensor:
        """The layer of `tree`'s root (the parent of its fine-tunes) as a [d_H, d_W] matrix; for a LoRA layer
        the root's own B A, zero when it is the base model (it carries no adapter)."""
        members = np.flatnonzero(self.mask(tree))
        if not len(members):
            raise ValueError(f"{self.zoo.path}: no models in tree {tree!r} (trees: {self.trees})")
        parent = self.zoo.row(self.ids[members[0]])["parent_id"]
        if layer.startswith(LORA):
            stem = layer[len(LORA):]
            if self.zoo.lora_spec["up"].format(stem) not in self.zoo.lazy(parent):   # the base: no change
                return torch.zeros(self.X(layer).shape[1:])
            stack = self.zoo.lora_layer(stem, [parent], cache=False)
        else:
            stack = [self.zoo.lazy(parent)[layer]]
        return stack_layer(stack, conv_reshape=self.conv_reshape, name=f"{self.zoo.path}: {parent} layer {layer!r}")[0]

    def split(self, layer: str, tree=None, split="train") -> tuple[torch.Tensor, torch.Tensor]:
        """(X, Y) of the models of `tree` (an id, a list, or None for all) in `split`."""
        m = self.mask(tree, split)
        if not m.any():
            raise ValueError(f"{self.zoo.path}: no models in tree {tree!r}, split {split!r} "
                             f"(trees: {self.trees}; splits: {sorted(set(self.split_of))})")
        idx = torch.from_numpy(np.flatnonzero(m))
        return self.X(layer)[idx], self.Y[idx]


def delta_inputs(splits: Sequence[tuple], root: torch.Tensor, *, standardize: bool = True) -> list[tuple]:
    """Feed an expert the fine-tuning delta ΔX = X - X_root instead of the raw layer X, optionally
    divided by σ, the standard deviation of the first (training) split's deltas.

    Not the paper's input (it reads raw weights): a variant for inside a Model Tree, where the root is
    known. A linear expert is blind to the constant X_root but not to the scale of ΔX (Adam moves its
    weights by ~lr per step whatever the input scale); ProbeX's ReLU sees the root's responses as
    offsets. Notebook 03 (section 6) measures what each gains.
    """
    if not splits:
        raise ValueError("delta_inputs: no splits given")
    if tuple(root.shape) != tuple(splits[0][0].shape[1:]):
        raise ValueError(f"delta_inputs: root is {tuple(root.shape)} but the layer is {tuple(splits[0][0].shape[1:])}")
    sigma = float((splits[0][0] - root).std()) if standardize else 1.0
    if not sigma > 0:
        raise ValueError("delta_inputs: the training models equal their root (ΔX = 0); nothing to read")
    return [((X - root) / sigma, Y) for X, Y in splits]


INPUTS = ("X", "ΔX", "ΔX/σ")


def compare_inputs(data: LayerData, tree: int, layers: Sequence[str], *, seeds: Sequence[int] = (0,),
                   kinds: Sequence[str] = ("probex", "dense"), **config) -> list[dict]:
    """ProbeX and Dense on three inputs of one tree's layers: the raw layer X (the paper's), the delta from
    the root ΔX, and ΔX/σ (`delta_inputs`). One record per (layer, input, kind): test and train accuracy
    averaged over `seeds`, and `moved`, how far the fine-tunes went (mean ‖X − X_root‖ / ‖X_root‖)."""
    cells, tasks = [], []
    for layer in layers:
        raw = [data.split(layer, tree, s) for s in ("train", "val", "test")]
        root = data.root(layer, tree)
        moved = float(((raw[0][0] - root).flatten(1).norm(dim=1) / root.norm()).mean())
        inputs = dict(zip(INPUTS, (raw, delta_inputs(raw, root, standardize=False), delta_inputs(raw, root))))
        for name, splits in inputs.items():
            for kind in kinds:
                cells.append(dict(layer=layer, moved=moved, input=name, kind=kind))
                tasks += [(kind, splits, s, config) for s in seeds]
    fits = fit_many(tasks)
    return [dict(cell, test_acc=float(np.mean([f.test_acc for f in fits[i * len(seeds):(i + 1) * len(seeds)]])),
                 train_acc=float(np.mean([f.train_acc for f in fits[i * len(seeds):(i + 1) * len(seeds)]])))
            for i, cell in enumerate(cells)]
