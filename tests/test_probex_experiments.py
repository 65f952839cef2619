"""Notebook 03's experiments (weightspace.probex.experiments) on a tiny zoo: layouts, validation-based
choices, records equal to fits done by hand, and clear errors."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_TREES

from weightspace.probex import (
    LayerData,
    compare_inputs,
    fit,
    fit_statnn,
    majority,
    statnn_features,
    tensor_keys,
)
from weightspace.probex import experiments as ex
from weightspace.probex.train import Fit
from weightspace.runtime import torch_threads
from weightspace.zoo.model_trees import build_model_trees

L1, L2 = "blocks.1.attn.proj.weight", "blocks.0.mlp.fc2.weight"
CFG = dict(n_probes=4, proj_dim=4, rep_dim=8, epochs=3, eval_every=1, device="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("probex_ex") / "trees"
    return build_model_trees(path, executor="inline", progress=False,
                             **{**TINY_TREES, "n_per_tree": 8, "split": [0.5, 0.25, 0.25]})


@pytest.fixture(scope="module")
def data(tiny_zoo):
    return LayerData(tiny_zoo)


@pytest.fixture(scope="module")
def swept(data):
    with torch_threads(1):
        return ex.layer_sweep(data, [L1, L2], **CFG)


def test_sweep_layout_and_a_record_by_hand(data, swept):
    sweep, fits = swept
    assert len(sweep) == 2 * 2 * 2
    assert set(fits) == {(t, l, k) for t in (0, 1) for l in (L1, L2) for k in ex.KINDS}
    assert list(sweep.columns) == ["tree", "tree_id", "layer", "kind", "train_acc", "val_acc", "test_acc",
                                   "n_params", "shape", "best_epoch"]
    row = sweep[(sweep.tree_id == 1) & (sweep.layer == L2) & (sweep.kind == "probex")].iloc[0]
    by_hand = fit("probex", *(data.split(L2, 1, s) for s in ("train", "val", "test")), **CFG)
    assert (row.val_acc, row.test_acc, row.train_acc, row.n_params) == \
        (by_hand.val_acc, by_hand.test_acc, by_hand.train_acc, by_hand.n_params)
    assert row["shape"] == (32, 128) and row.tree == data.tree_names[1]
    assert fits[(1, L2, "probex")].test_acc == row.test_acc
    ratio = ex.param_ratios(sweep)
    assert list(ratio.index) == [L1, L2]
    assert ratio[L2] == pytest.approx(by_hand_dense_params(data, L2) / by_hand.n_params)


def by_hand_dense_params(data, layer):
    d_H, d_W = data.X(layer).shape[1:]
    return d_H * d_W * data.Y.shape[1] + data.Y.shape[1]


def _fake_fit(val, test, train=1.0, n=10):
    return Fit(model=None, train_acc=train, val_acc=val, test_acc=test, best_epoch=0, n_params=n, seconds=0.0)


def test_choices_are_made_on_validation_not_test(data):
    """Layer A is best on validation, layer B on test: A must win, for ProbeX and for Dense."""
    A, B = L1, L2
    acc = {(0, A, "probex"): (0.9, 0.5), (0, B, "probex"): (0.6, 0.95),
           (0, A, "dense"): (0.5, 0.99), (0, B, "dense"): (0.8, 0.6)}
    fits = {k: _fake_fit(v, t, n=100 if k[2] == "dense" else 10) for k, (v, t) in acc.items()}
    sweep = pd.DataFrame([dict(tree="x", tree_id=t, layer=l, kind=k, val_acc=v, test_acc=te, n_params=1)
                          for (t, l, k), (v, te) in acc.items()])
    assert ex.best_layers(sweep, "probex") == {0: A} and ex.best_layers(sweep, "dense") == {0: B}
    table = ex.results_table(data, sweep, fits, {0: _fake_fit(0.7, 0.65)}).set_index("method")
    assert list(table.index) == list(ex.METHODS)
    assert (table.loc["ProbeX", "layer"], table.loc["ProbeX", "test_acc"]) == (A, 0.5)
    assert (table.loc["Dense", "layer"], table.loc["Dense", "test_acc"]) == (B, 0.6)
    same = table.loc["Dense (ProbeX's layer)"]
    assert (same.layer, same.test_acc) == (A, 0.99)
    assert table.loc["StatNN", "test_acc"] == 0.65
    Ytr, Yte = (data.Y[torch.from_numpy(data.mask(0, s))] for s in ("train", "test"))
    assert table.loc["chance", "test_acc"] == majority(Ytr, Yte)
    with pytest.raises(ValueError, match="no 'dense' fits"):
        ex.best_layers(sweep[sweep.kind == "probex"], "dense")
    with pytest.raises(KeyError, match="no StatNN fit for tree 0"):
        ex.results_table(data, sweep, fits, {})


def test_results_table_on_the_tiny_sweep(data, swept):
    sweep, fits = swept
    stat = {t: _fake_fit(0.5, 0.5) for t in data.trees}
    table = ex.results_table(data, sweep, fits, stat)
    assert len(table) == 2 * len(ex.METHODS)
    for t in data.trees:
        s = sweep[(sweep.tree_id == t) & (sweep.kind == "probex")]
        best = s.layer.iloc[int(np.argmax(s.val_acc.to_numpy()))]                # first maximum wins ties
        row = table[(table.tree_id == t) & (table.method == "Dense (ProbeX's layer)")].iloc[0]
        assert row.layer == best and row.test_acc == fits[(t, best, "dense")].test_acc


def test_bad_inputs_are_clear(data):
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['blocks.9.attn.proj.weight'\]"):
        ex.layer_sweep(data, ["blocks.9.attn.proj.weight"], **CFG)
    with pytest.raises(ValueError, match="empty tree list"):
        ex.layer_sweep(data, [L1], trees=[], **CFG)
    with pytest.raises(ValueError, match=r"unknown tree\(s\) \[7\]"):
        ex.layer_sweep(data, [L1], trees=[7], **CFG)
    with pytest.raises(ValueError, match="empty layer list"):
        ex.layer_sweep(data, [], **CFG)
    with pytest.raises(ValueError, match=r"unknown expert kind\(s\) \['ridge'\]"):
        ex.layer_sweep(data, [L1], kinds=["ridge"], **CFG)
    with pytest.raises(ValueError, match=r"unknown ProbeX size\(s\) \['width'\]"):
        ex.ablation(data, {0: L1}, {"width": [2]}, **CFG)
    with pytest.raises(ValueError, match="k = 9"):
        ex.knn_predict(np.zeros((4, 2)), np.zeros((4, 3)), np.zeros((1, 2)), k=9)


def test_statnn_on_matrices_is_the_old_column_subset(tiny_zoo, data):
    """tensor_keys(min_numel) picks the tensors by size; their statistics are the columns 7i..7i+6 of the
    full features (what the notebook used to index by hand)."""
    sd = tiny_zoo.load(data.ids[0])
    all_keys = [k for k in sd if not k.startswith("head")]
    big = [k for k in all_keys if sd[k].numel() >= 1024]
    assert tensor_keys(tiny_zoo, data.ids) == all_keys
    assert tensor_keys(tiny_zoo, data.ids, min_numel=1024) == big
    assert 0 < len(big) < len(all_keys)
    full, sub = statnn_features(tiny_zoo, data.ids), statnn_features(tiny_zoo, data.ids, keys=big)
    cols = [7 * all_keys.index(k) + j for k in big for j in range(7)]
    assert torch.equal(sub, full[:, cols])
    with pytest.raises(KeyError, match="no tensor"):
        statnn_features(tiny_zoo, data.ids, keys=["blocks.0.nope"])
    rec = dict(epochs=3, eval_every=1)
    table, fits = ex.statnn_comparison(tiny_zoo, data, **rec)
    assert list(table.tensors) == ["all tensors"] * 2 + ["weight matrices only"] * 2
    assert list(table.n_tensors) == [len(all_keys)] * 2 + [len(big)] * 2
    m = [torch.from_numpy(data.mask(1, s)) for s in ("train", "val", "test")]
    by_hand = fit_statnn(*[(sub[i], data.Y[i]) for i in m], **rec)
    assert fits["weight matrices only"][1].test_acc == by_hand.test_acc
    assert table.test_acc.iloc[3] == by_hand.test_acc


def test_ablation_reuses_base_fits_and_matches_fits_by_hand(data, swept):
    sweep, fits = swept
    layers = {0: L1, 1: L2}
    abl = ex.ablation(data, layers, {"n_probes": [2, 4]}, fits=fits, **CFG)
    order = list(abl[["value", "tree_id"]].itertuples(index=False, name=None))
    assert order == [(2, 0), (2, 1), (4, 0), (4, 1)]
    base = abl[(abl.value == 4) & (abl.tree_id == 1)].iloc[0]
    assert base.test_acc == fits[(1, L2, "probex")].test_acc
    by_hand = fit("probex", *(data.split(L1, 0, s) for s in ("train", "val", "test")),
                  **{**CFG, "n_probes": 2})
    row = abl[(abl.value == 2) & (abl.tree_id == 0)].iloc[0]
    assert (row.test_acc, row.n_params) == (by_hand.test_acc, by_hand.n_params)


def test_knn_predict_brute_force():
    rng = np.random.default_rng(0)
    F, Y, Q = rng.normal(size=(7, 3)), (rng.random((7, 4)) > 0.5).astype(float), rng.normal(size=(3, 3))
    out = ex.knn_predict(F, Y, Q, k=3)
    for i in range(3):
        near = sorted(range(7), key=lambda j: float(((Q[i] - F[j]) ** 2).sum()))[:3]
        assert np.array_equal(out[i], (Y[near].sum(0) >= 2).astype(float))


def test_representation_knn_and_decodability(data, swept):
    _, fits = swept
    f = fits[(0, L1, "probex")]
    E, Y, split_of = ex.representations(f, data, L1, 0)
    idx = torch.from_numpy(np.flatnonzero(data.mask(0)))
    with torch.no_grad():
        assert np.allclose(E, f.model.encode(data.X(L1)[idx]).double().numpy())
    assert sorted(split_of.tolist()) == ["test"] * 2 + ["train"] * 4 + ["val"] * 2
    tr, te = split_of == "train", split_of == "test"
    pred = ex.knn_predict(E[tr], Y[tr], E[te], 3)
    assert ex.knn_accuracy(f, data, L1, 0, k=3) == pytest.approx(float((pred == Y[te]).mean()))
    dec = ex.class_decodability(f, data, L1, 0, k=3)
    assert dec.shape == (40, 7) and list(dec.columns[:3]) == ["val_e", "val_X", "val_head"]
    Xte, Yte = data.split(L1, 0, "test")
    assert np.allclose(dec.test_head, ((f.predict(Xte) > 0) == (Yte > 0.5)).float().mean(0).numpy())
    assert np.allclose(dec.test_e, (pred == Y[te]).mean(0))
    with pytest.raises(TypeError, match="Dense has no representation"):
        ex.representations(fits[(0, L1, "dense")], data, L1, 0)


def test_pca_2d_is_the_top_principal_plane_with_fixed_signs():
    rng = np.random.default_rng(1)
    E = rng.normal(size=(30, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    xy, frac = ex.pca_2d(E)
    xy2, _ = ex.pca_2d(-E)                      # the sign rule fixes the axes: flipped data, flipped scores
    C = np.cov(E - E.mean(0), rowvar=False, bias=True)
    evals = np.linalg.eigvalsh(C)[::-1]
    assert np.allclose(xy.var(0), evals[:2]) and np.allclose(frac, evals[:2] / evals.sum())
    assert np.allclose(np.abs(xy), np.abs(xy2)) and np.allclose(xy, -xy2)
    assert np.array_equal(xy, ex.pca_2d(E.copy())[0])


def test_wide_and_gentle_comparisons(data, swept):
    sweep, _ = swept
    wide = ex.wide_comparison(data, sweep, tree=1, layers=[L2], **CFG)
    by_hand = fit("dense", *(data.split(L2, 1, s) for s in ("train", "val", "test")), **CFG)
    assert wide.loc[L2, "dense"] == by_hand.test_acc and wide.loc[L2, "dense_params"] == by_hand.n_params
    narrow = sweep[(sweep.layer == L2) & (sweep.kind == "probex")].test_acc.mean()
    assert wide.loc[L2, "narrow_probex"] == pytest.approx(narrow)
    assert math.isnan(ex.wide_comparison(data, None, tree=1, layers=[L2], **CFG).loc[L2, "narrow_dense"])
    g = ex.gentle_comparison({"a": data}, [L1], tree=1, **CFG)
    assert g.drop(columns="tree").to_dict("records") == compare_inputs(data, 1, [L1], **CFG)
    with pytest.raises(ValueError, match="no trees given"):
        ex.gentle_comparison({}, [L1])
