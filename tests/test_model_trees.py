"""The ViT Model Trees plan: labels, nuisance hyperparameters and splits; the batched evaluation."""
import math

import pytest
import torch

from weightspace.zoo.model_trees import DEFAULTS, build_model_trees, finetune_plan

PARAMS = dict(n_trees=4, n_per_tree=40, lr=[1e-3, 1e-2], steps=[100, 300])


def test_plan_labels_and_nuisance():
    rows = finetune_plan(PARAMS)
    assert len(rows) == 160 and rows == finetune_plan(PARAMS)            # deterministic
    assert [r["tree_name"] for r in rows[::40]] == list(DEFAULTS["recipes"])
    for r in rows:
        assert len(r["classes"]) == 20 == len(set(r["classes"])) and r["classes"] == sorted(r["classes"])
        assert 0 <= min(r["classes"]) and max(r["classes"]) < 40
        assert 1e-3 <= r["lr"] <= 1e-2 and 100 <= r["steps"] <= 300
        assert r["parent_id"] == f"t{r['tree_id']}-root"
    # the label sets and learning rates really vary
    assert len({tuple(r["classes"]) for r in rows}) == 160
    lrs = [math.log10(r["lr"]) for r in rows]
    assert max(lrs) - min(lrs) > 0.8
    assert {r["schedule"] for r in rows} == {"constant", "cosine", "linear"}


def test_plan_splits_by_model_inside_each_tree():
    rows = finetune_plan(PARAMS)
    for t in range(4):
        splits = [r["split"] for r in rows if r["tree_id"] == t]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (24, 6, 10)


def test_unknown_parameter_is_refused(tmp_path):
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['n_per_tre'\]"):
        build_model_trees(tmp_path / "z", n_per_tre=3)


def test_avg_pool_trees_load_into_timm(tmp_path):
    """The notebooks build trees with global_pool='avg' (timm's fc_norm instead of norm): still timm's names."""
    from weightspace.nets import make_vit

    zoo = build_model_trees(tmp_path / "z", n_trees=1, n_per_tree=2, root_steps=2, steps=[2, 3],
                            vit={"global_pool": "avg"}, executor="inline", progress=False)
    sd = zoo.load("t0-0001")
    assert "fc_norm.weight" in sd and "norm.weight" not in sd
    make_vit(40, global_pool="avg").load_state_dict(sd, strict=True)


def test_evaluate_counts_each_models_own_classes():
    """The batched evaluation (own-class images only, padded) equals one nn.Module per model."""
    from weightspace.data import styled_digits
    from weightspace.nets.batched import Stacked
    from weightspace.nets.vit import make_vit
    from weightspace.nets.vit_training import evaluate, finetune, pretrain

    ds = styled_digits()
    parent, _ = pretrain("supervised", 0, 5)
    classes = [[0, 1, 2], list(range(0, 40, 2)), [39]]
    sds, _ = finetune([parent] * 3, classes, [3e-3] * 3, [3, 5, 4], ["constant"] * 3, [0, 1, 2])
    got = evaluate(Stacked(lambda: make_vit(ds.n_classes), sds), classes, ds.test, chunk=16)
    for sd, c, acc in zip(sds, classes, got):
        m = make_vit(ds.n_classes)
        m.load_state_dict(sd)
        mine = torch.isin(ds.test.y, torch.tensor(c))
        with torch.no_grad():
            assert acc == float((m(ds.test.x[mine]).argmax(-1) == ds.test.y[mine]).float().mean())
