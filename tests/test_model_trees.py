"""The ViT Model Trees plan: labels, nuisance hyperparameters and splits; the batched evaluation."""
import math

import pytest
import torch
from conftest import TINY_TREES

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
                            vit={"global_pool": "avg"}, split=[0.5, 0.5, 0.0], executor="inline",
                            progress=False)
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
    with pytest.raises(ValueError, match="2 class lists for 3 stacked models"):
        evaluate(Stacked(lambda: make_vit(ds.n_classes), sds), classes[:2], ds.test)


def test_lora_plan_adds_a_rank_after_the_ft_draws():
    ft = finetune_plan(PARAMS)
    lora = finetune_plan({**PARAMS, "finetune_mode": "lora", "lora_ranks": [2, 5]})
    assert [{k: v for k, v in r.items() if k != "rank"} for r in lora] == ft      # the same plan, plus a rank
    assert all("rank" not in r for r in ft)
    assert {r["rank"] for r in lora} == {2, 3, 4, 5}                              # uniform over 2..5, inclusive
    assert finetune_plan({**PARAMS, "finetune_mode": "lora"})[0]["rank"] in range(4, 17)   # default [4, 16]


@pytest.mark.parametrize("bad, match", [
    (dict(finetune_mode="adapter"), r"finetune_mode='adapter': choose one of \('ft', 'lora'\)"),
    (dict(finetune_mode="lora", lora_ranks=[0, 4]), r"lora_ranks=\[0, 4\]"),
    (dict(finetune_mode="lora", lora_ranks=[5, 2]), r"lora_ranks=\[5, 2\]"),
    (dict(finetune_mode="lora", lora_ranks=[1, 33]), r"lora_ranks=\[1, 33\].*embed_dim = 32"),
    (dict(finetune_mode="lora", lora_ranks=[4]), r"lora_ranks=\[4\]"),
    (dict(finetune_mode="lora", lora_ranks=[1.5, 3]), r"lora_ranks=\[1.5, 3\]"),
    (dict(finetune_mode="lora", lora_targets=["q", "o"]), r"lora_targets=\['q', 'o'\]"),
    (dict(finetune_mode="lora", lora_targets=[]), r"lora_targets=\[\]"),
    (dict(finetune_mode="lora", head_lr_mult=0), r"head_lr_mult=0"),
    (dict(lora_ranks=[1, 2]), r"\['lora_ranks'\] only apply with finetune_mode='lora'"),
])
def test_lora_parameters_are_checked(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        build_model_trees(tmp_path / "z", **bad)
    assert not (tmp_path / "z").exists()


def test_ft_manifest_keeps_todays_parameters(tmp_path):
    """A full fine-tuning zoo stores DEFAULTS's parameters alone, so zoos built before LoRA trees resume."""
    from weightspace.zoo.model_trees import resolve_params

    assert resolve_params({"finetune_mode": "ft", "n_trees": 1}) == {**DEFAULTS, "n_trees": 1}


def test_lora_tree_is_merged_with_its_factors(tiny_lora_trees):
    from weightspace.nets.vit import split_qkv
    from weightspace.zoo import Zoo

    zoo = Zoo.open(tiny_lora_trees.path)
    assert zoo.manifest["lora"] == {"up": "lora_factors.{}.U", "down": "lora_factors.{}.V"}
    assert zoo.params["finetune_mode"] == "lora" and zoo.params["lora_targets"] == ["q", "v"]
    assert not any(k.startswith("lora_factors.") for k in zoo.manifest["layers"])
    assert zoo.lora_modules() == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    fts = zoo.select(depth=1)
    assert len(fts) == 12 and {zoo.row(i)["rank"] for i in fts} <= {1, 2, 3, 4}
    assert len({zoo.row(i)["rank"] for i in fts}) > 1
    for mid in fts:
        row, sd = zoo.row(mid), zoo.load(mid)
        root = zoo.load(row["parent_id"])
        r = row["rank"]
        for b in range(2):
            key = f"blocks.{b}.attn.qkv"
            U, V = sd[f"lora_factors.{key}.U"], sd[f"lora_factors.{key}.V"]
            assert U.shape == (96, 2 * r) and V.shape == (2 * r, 32)                   # q and v adapters
            assert torch.allclose(sd[f"{key}.weight"], root[f"{key}.weight"] + U @ V, atol=1e-6)
            q, k, v = (a.double() - b_.double() for a, b_ in zip(split_qkv(sd[f"{key}.weight"]),
                                                                  split_qkv(root[f"{key}.weight"])))
            assert torch.linalg.matrix_rank(v, rtol=1e-4) == r == torch.linalg.matrix_rank(q, rtol=1e-4)
            assert torch.equal(k, torch.zeros_like(k))                                  # the key block is frozen
            assert torch.equal(sd[f"blocks.{b}.mlp.fc1.weight"], root[f"blocks.{b}.mlp.fc1.weight"])
            assert torch.equal(sd[f"blocks.{b}.attn.proj.weight"], root[f"blocks.{b}.attn.proj.weight"])
        assert sd["head.weight"].abs().sum() > 0                                        # the zero-init head trained
        m = zoo.model(mid)                                                              # strict, factors left out
        assert torch.equal(m.state_dict()["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("bad, match", [
    (dict(n_per_tree="abc"), r"n_per_tree='abc': expected an integer >= 1"),
    (dict(n_per_tree=-3), r"n_per_tree=-3: expected an integer >= 1"),
    (dict(n_per_tree=2.5), r"n_per_tree=2.5: expected an integer >= 1"),
    (dict(n_trees=0), r"n_trees=0: expected an integer >= 1"),
    (dict(n_trees=True), r"n_trees=True"),
    (dict(chunk=0), r"chunk=0: expected an integer >= 1"),
    (dict(root_steps=-1), r"root_steps=-1"),
    (dict(batch_size="32"), r"batch_size='32'"),
    (dict(steps=[6, 3]), r"steps=\[6, 3\]: expected \[low, high\] with integers >= 1 and low <= high"),
    (dict(steps=[0, 3]), r"steps=\[0, 3\]"),
    (dict(steps=5), r"steps=5: expected \[low, high\]"),
    (dict(lr=[1e-2, 1e-3]), r"lr=\[0.01, 0.001\]: expected \[low, high\] with positive numbers"),
    (dict(lr=[0, 1e-3]), r"lr=\[0, 0.001\]"),
    (dict(schedules=["cosine", "step"]), r"schedules=\['cosine', 'step'\]: expected a non-empty list"),
    (dict(schedules=[]), r"schedules=\[\]"),
    (dict(head_init_std=-0.1), r"head_init_std=-0.1: expected a number >= 0"),
    (dict(split=[0.9, 0.9, 0.9]), r"split=\[0.9, 0.9, 0.9\]: expected \[train, val, test\]: three fractions"),
    (dict(split=[0.5, 0.5]), r"split=\[0.5, 0.5\]"),
    (dict(split=[1.2, -0.1, -0.1]), r"split=\[1.2, -0.1, -0.1\]"),
    (dict(n_per_tree=4, split=[0.95, 0.05, 0.0]),
     r"split=\[0.95, 0.05, 0.0\]: expected .*non-empty train and val split of each tree's 4 fine-tunes "
     r"\(these give 4 train, 0 val"),
    (dict(styles=["plain", "wavy"]), r"styles=\['plain', 'wavy'\]"),
    (dict(styles=["plain", "plain"]), r"styles=\['plain', 'plain'\]: expected a non-empty list of distinct"),
    (dict(recipes=["supervised", "magic"]), r"recipes=\['supervised', 'magic'\]"),
    (dict(vit=[("embed_dim", 32)]), r"vit=\[\('embed_dim', 32\)\]: expected a dict"),
    (dict(vit={"embed_dim": 30, "num_heads": 4}), r"vit\['embed_dim'\]=30: expected a multiple of num_heads"),
    (dict(vit={"depth": 0}), r"vit\['depth'\]=0: expected a positive integer"),
    (dict(seed=-1), r"seed=-1: expected an integer >= 0"),
    (dict(seed="0"), r"seed='0'"),
])
def test_parameters_are_checked_before_anything_is_written(tmp_path, bad, match):
    """A bad value once failed later with an unrelated error, or gave empty splits, after zoo.json was written
    (so the corrected run was refused: "started with other parameters")."""
    with pytest.raises(ValueError, match=match):
        build_model_trees(tmp_path / "z", executor="inline", progress=False, **{**TINY_TREES, **bad})
    assert not (tmp_path / "z").exists()


def test_build_like_copies_the_fine_tunes_it_shares(tmp_path, monkeypatch):
    """A larger tree like `zoo` takes its first fine-tunes from `zoo` (verified, metrics kept, split its own)
    and trains only the new ones; the copies are the bytes that training them again in this tree gives."""
    from weightspace.zoo import model_trees

    p = {**TINY_TREES, "n_trees": 1, "n_per_tree": 4, "chunk": 2}
    zoo = build_model_trees(tmp_path / "a", executor="inline", progress=False, **p)
    fresh = build_model_trees(tmp_path / "b", executor="inline", progress=False, **{**p, "n_per_tree": 8})
    trained = []
    real = model_trees.finetune
    monkeypatch.setattr(model_trees, "finetune", lambda *a, **k: trained.extend(a[3]) or real(*a, **k))
    big = model_trees.build_like(tmp_path / "c", zoo, executor="inline", progress=False, n_per_tree=8,
                                 split=[0.5, 0.25, 0.25])
    shared = zoo.select(depth=1)
    assert len(trained) == 4                                       # steps of the 4 new fine-tunes only
    assert sorted(big.select(depth=1)) == sorted(fresh.select(depth=1))
    for i in fresh.select(depth=1):
        a, b = big.load(i), fresh.load(i)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), i
    for i in shared:
        assert big.row(i)["test_acc"] == zoo.row(i)["test_acc"]
        assert big.row(i)["split"] == fresh.row(i)["split"]
    assert big.verify() == []
    # another learning rate is another fine-tune: nothing is copied
    trained.clear()
    model_trees.build_like(tmp_path / "d", zoo, executor="inline", progress=False, lr=[1e-5, 1e-4])
    assert len(trained) == 4


def test_build_like_copies_the_roots_it_shares(tmp_path, monkeypatch):
    """build_like takes a root that `like` made with the same spec from `like` (verified), the same bytes as
    pre-training it again; a root with another spec (here: width) is pre-trained."""
    from weightspace.zoo import model_trees

    p = {**TINY_TREES, "n_trees": 1, "n_per_tree": 4}
    zoo = build_model_trees(tmp_path / "a", executor="inline", progress=False, **p)
    fresh = build_model_trees(tmp_path / "b", executor="inline", progress=False, **{**p, "lr": [1e-5, 1e-4]})
    calls = []
    real = model_trees.pretrain
    monkeypatch.setattr(model_trees, "pretrain", lambda *a, **k: calls.append(a) or real(*a, **k))
    like = model_trees.build_like(tmp_path / "c", zoo, executor="inline", progress=False, lr=[1e-5, 1e-4])
    assert calls == []
    assert like.row("t0-root")["sha256"] == zoo.row("t0-root")["sha256"] == fresh.row("t0-root")["sha256"]
    assert like.row("t0-root")["pretrain_loss"] == zoo.row("t0-root")["pretrain_loss"]
    assert [like.row(i)["sha256"] for i in like.select(depth=1)] == [fresh.row(i)["sha256"] for i in fresh.select(depth=1)]
    wide = model_trees.build_like(tmp_path / "d", zoo, executor="inline", progress=False,
                                  vit={**zoo.params["vit"], "embed_dim": 16})
    assert len(calls) == 1 and wide.row("t0-root")["sha256"] != zoo.row("t0-root")["sha256"]


@pytest.mark.parametrize("mode", ["ft", "lora"])
def test_models_that_finish_early_leave_the_stack_without_changing_anyone(mode):
    """finetune_stacked drops a model from its stacks once it has done its steps: every model's weights (and
    LoRA factors, metrics, and the weights the callback sees) equal those of a stack where all models run
    that model's number of steps, so nobody retires before the end."""
    from weightspace.nets.vit_training import finetune_stacked, pretrain

    parent, _ = pretrain("supervised", 0, 3)
    classes = [[0, 1, 2], list(range(0, 40, 2)), [39], list(range(20))]
    kw = dict(lr=[3e-3, 1e-2, 2e-3, 1e-3], schedule=["constant", "cosine", "linear", "cosine"], mode=mode,
              **(dict(ranks=[1, 2, 3, 2], head_lr_mult=10.0) if mode == "lora" else {}))
    steps = [3, 7, 5, 9]                       # 9: alone for its last 2 steps, so model 1 stays with it
    log = {}
    sds, factors, metrics = finetune_stacked([parent] * 4, classes, [0, 1, 2, 3], steps=steps,
                                             callback=lambda t, p: log.setdefault(t, {k: v.clone() for k, v in p.items()}),
                                             callback_every=2, **kw)
    assert sorted(log) == [0, 2, 4, 6, 8, 9]
    for m, s in enumerate(steps):
        ref, ref_f, ref_metrics = finetune_stacked([parent] * 4, classes, [0, 1, 2, 3], steps=[s] * 4, **kw)
        assert all(torch.equal(sds[m][k], ref[m][k]) for k in ref[m]), f"model {m} ({s} steps)"
        assert metrics[m] == ref_metrics[m]
        if mode == "lora":
            assert all(torch.equal(a, b) for k in ref_f[m] for a, b in zip(factors[m][k], ref_f[m][k]))
        for t in [t for t in log if t >= s]:                        # after its last step, its final weights
            assert all(torch.equal(log[t][k][m], sds[m][k]) for k in log[t] if not k.startswith("head."))
