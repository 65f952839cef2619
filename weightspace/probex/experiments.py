"""Notebook 03's experiments: ProbeX against its baselines inside Model Trees, as functions of a LayerData.

Each mirrors a part of the ProbeX paper (Horwitz et al., "Learning on Model Weights using Tree Experts",
CVPR 2025): the layer sweep and the best layer chosen on validation, the per-tree results against Dense,
StatNN and chance, the ablation of the sizes r_U / r_V / r_T, and the downstream kNN in the learned
representation e. Every choice (layer, class to show) is made on the validation split and reported on test.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .baselines import fit_statnn, majority, statnn_features, tensor_keys
from .train import Fit, LayerData, compare_inputs, fit_many

KINDS = ("probex", "dense")
SPLITS = ("train", "val", "test")
METHODS = ("ProbeX", "Dense", "Dense (ProbeX's layer)", "StatNN", "chance")
LABEL = {"probex": "ProbeX", "dense": "Dense"}


def _trees(data: LayerData, trees) -> list[int]:
    trees = list(data.trees if trees is None else trees)
    if not trees:
        raise ValueError("no trees to run on (an empty tree list)")
    unknown = [t for t in trees if t not in data.trees]
    if unknown:
        raise ValueError(f"unknown tree(s) {unknown}; this zoo has trees {data.trees}")
    for t in trees:
        for s in SPLITS:
            if not data.mask(t, s).any():
                raise ValueError(f"tree {t} ({data.tree_names[t]!r}) has no {s!r} models")
    return trees


def _layers(data: LayerData, layers) -> list[str]:
    known = data.layers()
    layers = list(known if layers is None else layers)
    if not layers:
        raise ValueError("no layers to run on (an empty layer list)")
    unknown = [l for l in layers if l not in known]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; ProbeX reads these: {known}")
    return layers


def _splits(data: LayerData, layer: str, tree: int) -> list[tuple]:
    return [data.split(layer, tree, s) for s in SPLITS]


def short_name(layer: str) -> str:
    """"blocks.1.mlp.fc2.weight" -> "b1.mlp.fc2" (for ticks and legends)."""
    return layer.replace(".weight", "").replace("blocks.", "b")


# ------------------------------------------------------------------------------------ the layer sweep

def layer_sweep(data: LayerData, layers: Sequence[str] | None = None, trees: Sequence[int] | None = None,
                kinds: Sequence[str] = KINDS, seed: int = 0, **config) -> tuple[pd.DataFrame, dict]:
    """Train one expert per (tree, layer, kind) on the tree's training fine-tunes, as the paper trains
    one ProbeX per layer and sweeps all of them (Horwitz et al., CVPR 2025, layer selection).

    Returns (sweep, fits): one row per fit (tree, tree_id, layer, kind, train/val/test accuracy,
    n_params, shape, best_epoch), and {(tree_id, layer, kind): Fit}.
    """
    trees, layers = _trees(data, trees), _layers(data, layers)
    bad = sorted(set(kinds) - set(KINDS))
    if bad:
        raise ValueError(f"unknown expert kind(s) {bad}; choose from {KINDS}")
    cells = [(t, layer, kind) for t in trees for layer in layers for kind in kinds]
    done = fit_many([(kind, _splits(data, layer, t), seed, config) for t, layer, kind in cells])
    rows, fits = [], {}
    for (t, layer, kind), f in zip(cells, done):
        fits[(t, layer, kind)] = f
        rows.append(dict(tree=data.tree_names[t], tree_id=t, layer=layer, kind=kind,
                         train_acc=f.train_acc, val_acc=f.val_acc, test_acc=f.test_acc,
                         n_params=f.n_params, shape=tuple(data.X(layer).shape[1:]), best_epoch=f.best_epoch))
    return pd.DataFrame(rows), fits


def best_layers(sweep: pd.DataFrame, kind: str = "probex") -> dict[int, str]:
    """{tree_id: layer} with the best VALIDATION accuracy for `kind` (the paper picks the layer on
    validation; ties go to the earlier layer of the sweep). Test accuracy plays no part."""
    s = sweep[sweep.kind == kind]
    if s.empty:
        raise ValueError(f"the sweep has no {kind!r} fits (kinds: {sorted(set(sweep.kind))})")
    return {int(t): g.loc[g.val_acc.idxmax(), "layer"] for t, g in s.groupby("tree_id", sort=True)}


def param_ratios(sweep: pd.DataFrame) -> pd.Series:
    """Dense / ProbeX parameter count per layer (the same for every tree: it depends on the shape only)."""
    n = sweep.groupby(["layer", "kind"], sort=False).n_params.first().unstack()
    return (n["dense"] / n["probex"]).loc[list(dict.fromkeys(sweep.layer))]


# --------------------------------------------------------------------------------------------- StatNN

def statnn_experts(zoo, data: LayerData, keys: Sequence[str] | None = None,
                   trees: Sequence[int] | None = None, seed: int = 0, **recipe) -> dict[int, Fit]:
    """{tree_id: Fit}: StatNN (Unterthiner et al. 2020, the paper's weight-statistics baseline) per tree,
    on the statistics of the tensors `keys` (default: all but the head) of the models `data.ids`."""
    trees = _trees(data, trees)
    feats = statnn_features(zoo, data.ids, keys=keys)
    out = {}
    for t in trees:
        sp = [torch.from_numpy(data.mask(t, s)) for s in SPLITS]
        out[t] = fit_statnn(*[(feats[m], data.Y[m]) for m in sp], seed=seed, **recipe)
    return out


def statnn_comparison(zoo, data: LayerData, min_numel: int = 1024, trees: Sequence[int] | None = None,
                      seed: int = 0, **recipe) -> tuple[pd.DataFrame, dict[str, dict[int, Fit]]]:
    """StatNN on the statistics of all tensors vs of the weight matrices only (>= `min_numel` entries,
    as every tensor of a ViT-B is): in a small net the statistics of its short vectors (biases, norm
    scales) say much about them, which Model-J's StatNN (~55% in the paper) cannot exploit.

    Returns (one row per tree and key set: tensors, n_tensors, val/test/train accuracy), and
    {"all tensors" | "weight matrices only": {tree_id: Fit}}.
    """
    key_sets = {"all tensors": tensor_keys(zoo, data.ids),
                "weight matrices only": tensor_keys(zoo, data.ids, min_numel=min_numel)}
    if not key_sets["weight matrices only"]:
        raise ValueError(f"no tensor with >= {min_numel} entries in {getattr(zoo, 'path', zoo)}")
    fits = {name: statnn_experts(zoo, data, keys, trees=trees, seed=seed, **recipe)
            for name, keys in key_sets.items()}
    rows = [dict(tree=data.tree_names[t], tree_id=t, tensors=name, n_tensors=len(key_sets[name]),
                 train_acc=f.train_acc, val_acc=f.val_acc, test_acc=f.test_acc, n_params=f.n_params)
            for name, by_tree in fits.items() for t, f in by_tree.items()]
    return pd.DataFrame(rows), fits


# ------------------------------------------------------------------------------------ results per tree

def results_table(data: LayerData, sweep: pd.DataFrame, fits: Mapping,
                  statnn: Mapping[int, Fit]) -> pd.DataFrame:
    """Per tree (the paper's discriminative table, one expert per Model Tree): ProbeX on its best layer,
    Dense on ITS best layer, Dense on ProbeX's layer (like for like: same input, the parameter counts
    the paper compares), StatNN, and chance (every class's majority in the training labels).

    Layers are chosen on validation (`best_layers`). One row per (tree, method): layer, train/val/test
    accuracy, n_params.
    """
    best = {kind: best_layers(sweep, kind) for kind in KINDS}
    rows = []
    for t in sorted(best["probex"]):
        name = data.tree_names[t]
        for method, (layer, kind) in {"ProbeX": (best["probex"][t], "probex"),
                                      "Dense": (best["dense"][t], "dense"),
                                      "Dense (ProbeX's layer)": (best["probex"][t], "dense")}.items():
            if (t, layer, kind) not in fits:
                raise KeyError(f"no {kind} fit for tree {t}, layer {layer!r} in `fits`")
            f = fits[(t, layer, kind)]
            rows.append(dict(tree=name, tree_id=t, method=method, layer=layer, train_acc=f.train_acc,
                             val_acc=f.val_acc, test_acc=f.test_acc, n_params=f.n_params))
        if t not in statnn:
            raise KeyError(f"no StatNN fit for tree {t}")
        s = statnn[t]
        rows.append(dict(tree=name, tree_id=t, method="StatNN", layer="weight statistics",
                         train_acc=s.train_acc, val_acc=s.val_acc, test_acc=s.test_acc, n_params=s.n_params))
        Ytr, Yva, Yte = (data.Y[torch.from_numpy(data.mask(t, s))] for s in SPLITS)
        rows.append(dict(tree=name, tree_id=t, method="chance", layer="-", train_acc=majority(Ytr, Ytr),
                         val_acc=majority(Ytr, Yva), test_acc=majority(Ytr, Yte), n_params=0))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------- ablation

def ablation(data: LayerData, layers: Mapping[int, str], grid: Mapping[str, Sequence[int]], *,
             fits: Mapping | None = None, seed: int = 0, **config) -> pd.DataFrame:
    """Change one of ProbeX's sizes at a time around `config` (r_U = n_probes, r_V = proj_dim, r_T =
    rep_dim; the paper's ablation of the probe / projection / representation sizes), each tree on its
    layer `layers[tree]`. A fit of the base config is taken from `fits` when there.

    One row per (size, value, tree): test/val/train accuracy and n_params.
    """
    bad = sorted(set(grid) - {"n_probes", "proj_dim", "rep_dim"})
    if bad:
        raise ValueError(f"unknown ProbeX size(s) {bad}; choose from n_probes, proj_dim, rep_dim")
    trees = _trees(data, list(layers))
    _layers(data, set(layers.values()))
    cells = [(size, v, t, {**config, size: v}) for size, values in grid.items() for v in values for t in trees]
    found = [(fits or {}).get((t, layers[t], "probex")) if cfg == config else None for _, _, t, cfg in cells]
    todo = [i for i, f in enumerate(found) if f is None]
    for i, f in zip(todo, fit_many([("probex", _splits(data, layers[cells[i][2]], cells[i][2]), seed, cells[i][3])
                                    for i in todo])):
        found[i] = f
    return pd.DataFrame([dict(size=size, value=v, tree_id=t, layer=layers[t], test_acc=f.test_acc,
                              val_acc=f.val_acc, train_acc=f.train_acc, n_params=f.n_params)
                         for (size, v, t, _), f in zip(cells, found)])


# -------------------------------------------------------------------------- the representation e

@torch.no_grad()
def representations(f: Fit, data: LayerData, layer: str,
                    tree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E [n, r_T], Y [n, d_Y], split [n]) for every model of `tree`: ProbeX's representation e, the
    encoder output before the head (the paper's frozen representation for downstream tasks)."""
    if not hasattr(f.model, "encode"):
        raise TypeError(f"{type(f.model).__name__} has no representation e (only ProbeX has)")
    _layers(data, [layer])
    idx = np.flatnonzero(data.mask(tree))
    if not len(idx):
        raise ValueError(f"no models in tree {tree!r} (trees: {data.trees})")
    f.model.eval()
    dev = next(f.model.parameters()).device
    E = f.model.encode(data.X(layer)[torch.from_numpy(idx)].to(dev)).cpu().double().numpy()
    masks = {s: data.mask(tree, s) for s in SPLITS}
    split_of = np.array([next((s for s in SPLITS if masks[s][i]), "") for i in idx])
    return E, data.Y[torch.from_numpy(idx)].numpy(), split_of


def knn_predict(F_train: np.ndarray, Y_train: np.ndarray, F_query: np.ndarray, k: int = 5) -> np.ndarray:
    """Majority vote of the k nearest training models (L2) per class: 0/1 predictions [n_query, d_Y].
    Ties in distance go to the earlier training model; a tied vote (even k) counts as negative."""
    if not 1 <= k <= len(F_train):
        raise ValueError(f"k = {k}, but there are {len(F_train)} training models")
    d = ((F_query[:, None, :] - F_train[None, :, :]) ** 2).sum(-1)
    nn_idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return (Y_train[nn_idx].mean(1) > 0.5).astype(float)


def knn_accuracy(f: Fit, data: LayerData, layer: str, tree: int, k: int = 5) -> float:
    """Element-wise test accuracy of a kNN vote in e-space (the paper's downstream kNN classification on
    the frozen representation): each test model takes its k nearest training models' classes."""
    E, Y, split_of = representations(f, data, layer, tree)
    tr, te = split_of == "train", split_of == "test"
    return float((knn_predict(E[tr], Y[tr], E[te], k) == (Y[te] > 0.5)).mean())


def class_decodability(f: Fit, data: LayerData, layer: str, tree: int, k: int = 5) -> pd.DataFrame:
    """How well the membership of each class can be read from e, against from the raw layer X: per class,
    the kNN accuracy (k nearest training models) on validation and test models, in e and in flattened X,
    and the expert's own head. One row per class; a class shown in a figure is chosen on `val_e`."""
    E, Y, split_of = representations(f, data, layer, tree)
    idx = np.flatnonzero(data.mask(tree))
    Xraw = data.X(layer)[torch.from_numpy(idx)].flatten(1).double().numpy()
    tr = split_of == "train"
    out = {}
    for s in ("val", "test"):
        q = split_of == s
        truth = Y[q] > 0.5
        out[f"{s}_e"] = (knn_predict(E[tr], Y[tr], E[q], k) == truth).mean(0)
        out[f"{s}_X"] = (knn_predict(Xraw[tr], Y[tr], Xraw[q], k) == truth).mean(0)
        out[f"{s}_head"] = ((f.predict(data.X(layer)[torch.from_numpy(idx[q])]).numpy() > 0) == truth).mean(0)
    out["positives"] = (Y > 0.5).mean(0)
    return pd.DataFrame(out).rename_axis("class")


def pca_2d(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of E (deterministic: exact SVD, each axis's sign fixed so its
    largest loading is positive) and the fraction of variance each explains."""
    Ec = E - E.mean(0)
    U, S, Vt = np.linalg.svd(Ec, full_matrices=False)
    sign = np.sign(Vt[np.arange(len(Vt)), np.abs(Vt).argmax(1)])
    xy = Ec @ (Vt[:2] * sign[:2, None]).T
    return xy, (S[:2] ** 2) / max(float((S ** 2).sum()), 1e-300)


# ------------------------------------------------------------------ section 6: wide and gentle trees

def wide_comparison(wide: LayerData, sweep: pd.DataFrame | None = None, tree: int | None = None,
                    layers: Sequence[str] | None = None, seed: int = 0, **config) -> pd.DataFrame:
    """ProbeX and Dense on every block matrix of one wider tree with fewer classes, beside the mean over
    the narrow trees of `sweep` on the same layer names (the paper's Model-J layers are 768 wide).

    One row per layer: shape, probex / dense test accuracy (and train), parameters, and narrow_probex /
    narrow_dense (NaN without a sweep or where it lacks the layer).
    """
    tree = wide.trees[0] if tree is None else tree
    _trees(wide, [tree])
    layers = _layers(wide, [l for l in wide.layers() if l.startswith("blocks")] if layers is None else layers)
    rows = []
    done = iter(fit_many([(kind, _splits(wide, layer, tree), seed, config) for layer in layers for kind in KINDS]))
    for layer in layers:
        splits = _splits(wide, layer, tree)
        fp, fd = next(done), next(done)
        row = dict(layer=layer, shape=tuple(splits[0][0].shape[1:]), probex=fp.test_acc, dense=fd.test_acc,
                   probex_train=fp.train_acc, dense_train=fd.train_acc, probex_params=fp.n_params,
                   dense_params=fd.n_params, narrow_probex=np.nan, narrow_dense=np.nan)
        if sweep is not None:
            for kind in KINDS:
                s = sweep[(sweep.layer == layer) & (sweep.kind == kind)]
                if len(s):
                    row[f"narrow_{kind}"] = float(s.test_acc.mean())
        rows.append(row)
    return pd.DataFrame(rows).set_index("layer")


def gentle_comparison(trees: Mapping[str, LayerData], layers: Sequence[str], tree: int = 0,
                      seeds: Sequence[int] = (0,), **config) -> pd.DataFrame:
    """`compare_inputs` (raw X, ΔX, ΔX/σ) on one tree of each zoo in `trees` ({label: LayerData}), e.g.
    notebook 01's tree and the same tree fine-tuned with a smaller learning rate (Model-J's fine-tunes
    use small learning rates on a large root). One row per (tree label, layer, input, kind)."""
    if not trees:
        raise ValueError("gentle_comparison: no trees given")
    return pd.DataFrame([dict(tree=label, **r) for label, d in trees.items()
                         for r in compare_inputs(d, _trees(d, [tree])[0], _layers(d, layers), seeds=seeds,
                                                 **config)])
