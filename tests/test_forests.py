"""The VTHR-shaped forest builder on a tiny forest: structure, tasks, LoRA merging and factors, logs."""
import numpy as np
import pytest
import torch

from weightspace.nets.vit import split_qkv
from weightspace.nets.vit_training import finetune_stacked
from weightspace.stats import excess_kurtosis
from weightspace.zoo import Zoo
from weightspace.zoo.forests import DEFAULTS, TASKS, VARIANTS, build_forests, forest_plan

TINY_FOREST = dict(n_trees=2, n_children=2, root_steps=12, steps=6, log_every=3, chunk=8,
                   vit=dict(embed_dim=16, num_heads=2))


@pytest.fixture(scope="module")
def tiny_forest(tmp_path_factory):
    return build_forests(tmp_path_factory.mktemp("forest") / "f", executor="inline", progress=False, **TINY_FOREST)


def test_plan_has_the_vthr_shape_and_task_rules():
    p = {**DEFAULTS, "n_trees": 5}
    for variant in VARIANTS:
        rows = forest_plan(p, variant)
        assert len(rows) == 5 * (4 + 16)                     # 21 per tree with the root
        by_id = {r["model_id"]: r for r in rows}
        for r in rows:
            kids = [c for c in rows if c["parent_id"] == r["model_id"]]
            assert len(kids) == (4 if r["depth"] == 1 else 0)
            assert len({c["task"] for c in kids}) == len(kids)              # siblings differ
            assert all(c["task"] != r["task"] for c in kids)                # never the parent's task
            if r["depth"] == 2:
                assert by_id[r["parent_id"]]["tree_id"] == r["tree_id"]
        ranks = {r["rank"] for r in rows}
        assert ranks == {0} if variant == "ft" else (ranks <= set(p["ranks_v"]) if variant == "lora-v"
                                                     else ranks == {p["rank_f"]})
        assert all(r["split"] is None and r["variant"] == variant for r in rows)   # split = the data split
    assert len({r["rank"] for r in forest_plan(p, "lora-v")}) > 1


def test_tiny_forest_rows_and_ground_truth(tiny_forest):
    zoo = tiny_forest
    assert len(zoo) == 2 + 3 * 2 * (2 + 4)
    assert zoo.variants == sorted(VARIANTS) and zoo.select(split="train") == []
    for variant in VARIANTS:
        ids = zoo.variant(variant)
        assert len(ids) == 2 * 7
        par = zoo.parents(ids)
        assert sum(p is None for p in par.values()) == 2
        assert all(p is None or p in ids for p in par.values())
    row = zoo.row("lorav-t1-c0-g1")
    assert row["parent_id"] == "lorav-t1-c0" and row["tree_id"] == 1 and row["depth"] == 2
    assert row["classes"] == TASKS[row["task"]]
    root = zoo.row("t0-root")
    assert root["kurtosis_log"]["step"] == [0, 3, 6, 9, 12]
    assert len(row["kurtosis_log"]["value"]) == len(row["kurtosis_log"]["step"]) == 3   # steps 0, 3, 6
    # the logged final kurtosis is the stored model's
    sd = zoo.load("ft-t0-c1")
    k = sum(float(excess_kurtosis(sd[f"blocks.{b}.attn.proj.weight"])) for b in range(2))
    assert zoo.row("ft-t0-c1")["kurtosis_log"]["proj"][-1] == pytest.approx(k, rel=1e-5)


def test_lora_models_are_merged_with_cumulative_factors(tiny_forest):
    zoo = tiny_forest
    root = zoo.load("t0-root")
    for mid in ["lorav-t0-c1", "lorav-t0-c1-g0", "loraf-t0-c0-g1"]:
        sd = zoo.load(mid)
        parent = zoo.load(zoo.row(mid)["parent_id"])
        path_ranks = zoo.row(mid)["rank"] + (zoo.row(zoo.row(mid)["parent_id"])["rank"] if zoo.row(mid)["depth"] == 2 else 0)
        for b in range(2):
            key = f"blocks.{b}.attn.qkv"
            U, V = sd[f"lora_factors.{key}.U"], sd[f"lora_factors.{key}.V"]
            assert U.shape[1] == 2 * path_ranks                          # q and v adapters along the path
            assert torch.allclose(sd[f"{key}.weight"], root[f"{key}.weight"] + U @ V, atol=1e-5)
            # the key block is never adapted; the value block changes by a rank-r update
            assert torch.equal(split_qkv(sd[f"{key}.weight"])[1], split_qkv(root[f"{key}.weight"])[1])
            dv = split_qkv(sd[f"{key}.weight"])[2] - split_qkv(parent[f"{key}.weight"])[2]
            assert np.linalg.matrix_rank(dv.numpy()) == zoo.row(mid)["rank"]
            # everything else is frozen
            assert torch.equal(sd[f"blocks.{b}.attn.proj.weight"], root[f"blocks.{b}.attn.proj.weight"])
            assert torch.equal(sd[f"blocks.{b}.mlp.fc1.weight"], root[f"blocks.{b}.mlp.fc1.weight"])
    ft = zoo.load("ft-t0-c0")
    assert not any(k.startswith("lora_factors.") for k in ft)
    assert not torch.equal(ft["blocks.0.mlp.fc1.weight"], root["blocks.0.mlp.fc1.weight"])


def test_forest_recovers_through_the_public_api(tiny_forest):
    from weightspace.mother import recover

    ids = tiny_forest.variant("lora-f")
    g = recover(tiny_forest.state_dicts(ids), layers="timm-vit", distance="lora", direction_layers="timm-vit",
                n_trees=2, lam=0)
    truth = {(p, c) for c, p in tiny_forest.parents(ids).items() if p}
    assert {frozenset(e) for e in g.edges()} == {frozenset(e) for e in truth}   # ranks place every edge


def test_rebuild_resumes_and_rejects_other_parameters(tiny_forest):
    again = build_forests(tiny_forest.path, executor="inline", progress=False, **TINY_FOREST)
    assert again.ids == Zoo.open(tiny_forest.path).ids
    from weightspace.zoo import ZooError

    with pytest.raises(ZooError, match="other parameters"):
        build_forests(tiny_forest.path, executor="inline", progress=False, **{**TINY_FOREST, "steps": 7})
    with pytest.raises(TypeError, match="unknown parameter"):
        build_forests(tiny_forest.path, n_roots=3)


def test_finetune_stacked_lora_ranks_are_exact_per_model():
    from weightspace.nets.vit import make_vit
    from weightspace.zoo.forests import ALL_STYLES

    torch.manual_seed(0)
    root = make_vit(10).state_dict()
    names = list(TASKS)
    sds, deltas, metrics = finetune_stacked([root] * 3, [TASKS[names[i]] for i in range(3)], [1, 2, 3],
                                            mode="lora", ranks=[1, 3, 2], steps=5, lr=1e-2, styles=ALL_STYLES)
    for sd, d, r in zip(sds, deltas, [1, 3, 2]):
        dv = split_qkv(sd["blocks.1.attn.qkv.weight"])[2] - split_qkv(root["blocks.1.attn.qkv.weight"])[2]
        assert np.linalg.matrix_rank(dv.numpy()) == r
        U, V = d["blocks.1.attn.qkv.weight"]
        assert torch.allclose(sd["blocks.1.attn.qkv.weight"], root["blocks.1.attn.qkv.weight"] + U @ V, atol=1e-6)
    # the reported accuracy is the stored model's, measured again one nn.Module at a time
    from weightspace.data import styled_digits

    test = styled_digits(ALL_STYLES).test
    for sd, m, i in zip(sds, metrics, range(3)):
        net = make_vit(len(ALL_STYLES) * 10)
        net.load_state_dict(sd)
        own = test.of_classes(TASKS[names[i]])
        with torch.no_grad():
            acc = float((net.eval()(own.x).argmax(1) == own.y).float().mean())
        assert m["test_acc"] == pytest.approx(acc, abs=1e-6)
    # only the q and v blocks move, and the head; the key block and the MLP stay the parent's
    for sd in sds:
        assert torch.equal(split_qkv(sd["blocks.0.attn.qkv.weight"])[1], split_qkv(root["blocks.0.attn.qkv.weight"])[1])
        assert torch.equal(sd["blocks.0.mlp.fc1.weight"], root["blocks.0.mlp.fc1.weight"])
    with pytest.raises(ValueError, match="fine-tuning mode"):
        finetune_stacked([root], [TASKS[names[0]]], [1], mode="adapter")
    with pytest.raises(ValueError, match="needs ranks"):
        finetune_stacked([root], [TASKS[names[0]]], [1], mode="lora")
    with pytest.raises(ValueError, match="LoRA targets"):
        finetune_stacked([root], [TASKS[names[0]]], [1], mode="lora", ranks=[1], targets=["q", "o"])
    with pytest.raises(ValueError, match="rank 40 is out of range"):
        finetune_stacked([root], [TASKS[names[0]]], [1], mode="lora", ranks=[40], steps=1)
    with pytest.raises(ValueError, match="lr: got 2 values for 1 models"):
        finetune_stacked([root], [TASKS[names[0]]], [1], lr=[1e-3, 1e-3])


def test_models_rebuild_as_timm_modules_without_their_lora_factors(tiny_forest):
    """Zoo.model: the manifest's architecture, weights loaded strictly; the stored factors stay out."""
    m = tiny_forest.model("lorav-t0-c1")
    sd = tiny_forest.load("lorav-t0-c1")
    assert type(m).__name__ == "VisionTransformer" and m.head.out_features == tiny_forest.row("lorav-t0-c1")["num_classes"]
    assert set(m.state_dict()) == {k for k in sd if not k.startswith("lora_factors.")}
    assert torch.equal(m.state_dict()["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
    assert tiny_forest.model("t1-root").head.out_features == 4           # the masked root's pixel head
    assert tiny_forest.class_names[TASKS["mirrored digits"][3]] == "a mirrored three"


def test_forest_declares_its_lora_layout(tiny_forest):
    """The manifest's `lora` entry makes the stored factors a zoo-level LoRA layer: U V of each model."""
    zoo = tiny_forest
    assert zoo.manifest["lora"] == {"up": "lora_factors.{}.U", "down": "lora_factors.{}.V"}
    assert zoo.lora_modules() == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    ids = ["loraf-t0-c0", "lorav-t1-c1-g0"]
    X = zoo.lora_layer("blocks.1.attn.qkv", ids)
    for x, mid in zip(X, ids):
        sd = zoo.load(mid)
        assert torch.equal(x, sd["lora_factors.blocks.1.attn.qkv.U"] @ sd["lora_factors.blocks.1.attn.qkv.V"])
    from weightspace.zoo import ZooError

    with pytest.raises(ZooError, match=r"ft-t0-c0\.safetensors: no tensor named 'lora_factors\.blocks\.1\.attn\.qkv\.U'"):
        zoo.lora_layer("blocks.1.attn.qkv", ["ft-t0-c0"])
