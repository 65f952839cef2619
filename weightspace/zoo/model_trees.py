"""ViT Model Trees (ProbeX's zoo): a few roots pre-trained with different recipes and seeds, and in each
tree many fine-tunes on a random half of the StyledDigits classes.

The label of a fine-tune is the multi-hot set of classes it saw (20 of 40 by default: chance is 50%,
as with Model-J's 50 of 100 CIFAR-100 classes). The nuisance variation is the learning rate, number of
steps, schedule and seed. Train / val / test is a split by model, inside each tree.

The new classification head of each fine-tune starts at zero (`head_init_std=0`, timm's "jax" head
init). With a random head the class signal in the hidden layers is buried under the head's random
rotation (a linear probe on one layer drops from ~0.85 to ~0.65 element-wise accuracy); see
notebook 01. All trees pool the patch tokens (timm's `global_pool="avg"`): the masked-reconstruction
root never trains its CLS token, and its fine-tunes reached ~24% accuracy through it, vs ~60% pooled.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from weightspace.data import styled_digits
from weightspace.nets.batched import SCHEDULES
from weightspace.nets.vit import timm_architecture
from weightspace.nets.vit_training import RECIPES, finetune, pretrain
from weightspace.runtime import derive_seed, np_rng

from .format import MODELS_DIR, Zoo, read_safetensors
from .jobs import Job, run_jobs

KIND = "vit-model-trees"

DEFAULTS = dict(
    n_trees=4,                 # one per recipe below (recipes repeat, with new seeds, beyond 4)
    n_per_tree=256,            # fine-tunes per tree
    recipes=list(RECIPES),
    root_steps=3000,           # pre-training steps of each root (batch 128)
    steps=[100, 300],          # fine-tuning steps, uniform
    lr=[1e-3, 1e-2],           # fine-tuning learning rate, log-uniform
    schedules=list(SCHEDULES),
    batch_size=32,
    head_init_std=0.0,
    split=[0.6, 0.15, 0.25],   # train / val / test fractions of each tree's fine-tunes
    chunk=64,                  # models trained together in one job
    styles=list(styled_digits().styles),
    vit={"global_pool": "avg"},  # overrides of nets.vit.VIT_TINY: pool the patch tokens (see below)
    seed=0,
)


def root_id(tree: int) -> str:
    """The id of tree `tree`'s root in every zoo of ViT trees (model trees and MoTHer forests)."""
    return f"t{tree}-root"


def finetune_plan(params: Mapping) -> list[dict]:
    """Every fine-tune's row before training: id, parent, tree, split, classes, hyperparameters."""
    p = {**DEFAULTS, **params}
    n_classes = 10 * len(p["styles"])
    rows = []
    for t in range(p["n_trees"]):
        recipe = p["recipes"][t % len(p["recipes"])]
        n = p["n_per_tree"]
        n_train = int(round(p["split"][0] * n))
        n_val = int(round(p["split"][1] * n))
        order = np_rng(p["seed"], "split", t).permutation(n)
        split_of = np.empty(n, dtype=object)
        split_of[order[:n_train]] = "train"
        split_of[order[n_train:n_train + n_val]] = "val"
        split_of[order[n_train + n_val:]] = "test"
        for i in range(n):
            rng = np_rng(p["seed"], "finetune", t, i)
            classes = sorted(rng.choice(n_classes, n_classes // 2, replace=False).tolist())
            lo, hi = p["lr"]
            rows.append(dict(
                model_id=f"t{t}-{i:04d}", parent_id=root_id(t), tree_id=t, tree_name=recipe, depth=1,
                split=str(split_of[i]), classes=classes,
                lr=float(10 ** rng.uniform(math.log10(lo), math.log10(hi))),
                steps=int(rng.integers(p["steps"][0], p["steps"][1] + 1)),
                schedule=str(p["schedules"][int(rng.integers(len(p["schedules"])))]),
                seed=derive_seed(p["seed"], "finetune", t, i), batch_size=p["batch_size"],
            ))
    return rows


def plan_jobs(params: Mapping) -> list[Job]:
    p = {**DEFAULTS, **params}
    jobs = []
    for t in range(p["n_trees"]):
        recipe = p["recipes"][t % len(p["recipes"])]
        spec = dict(recipe=recipe, seed=derive_seed(p["seed"], "root", t), steps=p["root_steps"],
                    vit=p["vit"], styles=p["styles"], tree=t)
        jobs.append(Job(_root_job, spec, (root_id(t),), name=f"root {t} ({recipe})"))
    rows = finetune_plan(p)
    for t in range(p["n_trees"]):
        mine = sorted((r for r in rows if r["tree_id"] == t), key=lambda r: (r["steps"], r["model_id"]))
        for lo in range(0, len(mine), p["chunk"]):
            chunk = mine[lo:lo + p["chunk"]]
            spec = dict(rows=chunk, vit=p["vit"], styles=p["styles"], batch_size=p["batch_size"],
                        head_init_std=p["head_init_std"])
            jobs.append(Job(_finetune_job, spec, tuple(r["model_id"] for r in chunk), parents=(root_id(t),),
                            name=f"tree {t} fine-tunes {lo}-{lo + len(chunk) - 1}"))
    return jobs


def _root_job(spec, writer) -> None:
    sd, metrics = pretrain(spec["recipe"], spec["seed"], spec["steps"], vit=spec["vit"], styles=spec["styles"])
    t = spec["tree"]
    writer.write(root_id(t), sd, dict(parent_id=None, tree_id=t, tree_name=spec["recipe"], depth=0,
                                      split=None, seed=spec["seed"], steps=spec["steps"],
                                      num_classes=int(sd["head.weight"].shape[0]), **metrics))


def _finetune_job(spec, writer) -> None:
    rows = spec["rows"]
    parent = read_safetensors(f"{writer.zoo_path}/{MODELS_DIR}/{rows[0]['parent_id']}.safetensors")
    sds, metrics = finetune([parent] * len(rows), [r["classes"] for r in rows], [r["lr"] for r in rows],
                            [r["steps"] for r in rows], [r["schedule"] for r in rows],
                            [r["seed"] for r in rows], vit=spec["vit"], styles=spec["styles"],
                            batch_size=spec["batch_size"], head_init_std=spec["head_init_std"])
    for r, sd, m in zip(rows, sds, metrics):
        writer.write(r["model_id"], sd, {k: v for k, v in r.items() if k != "model_id"}
                     | {"num_classes": int(sd["head.weight"].shape[0])} | m)


def build_model_trees(path, *, executor="local", workers: int | None = 2, progress: bool = True,
                      preset: str | None = None, **params) -> Zoo:
    """Build (or resume, or just open when complete) a ViT Model Trees zoo at `path`."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"build_model_trees got unknown parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    zoo = Zoo.create(path, kind=KIND, builder="weightspace.zoo.model_trees.build_model_trees", params=p,
                     preset=preset, command=f"build_model_trees({str(path)!r}, **params)",
                     labels=dict(column="classes", class_names=styled_digits(tuple(p["styles"])).class_names,
                                 per_model="many",
                                 description="the StyledDigits classes a fine-tune was trained on (half of them); "
                                             "roots have none"),
                     architecture={**timm_architecture(**p["vit"]), "num_classes_column": "num_classes"})
    run_jobs(zoo, plan_jobs(p), executor=executor, workers=workers, progress=progress,
             desc=f"ViT model trees ({p['n_trees']} x {p['n_per_tree']})")
    if not zoo.manifest.get("layers"):
        first = zoo.lazy(zoo.select(depth=1)[0])
        zoo.set_layers({k: first.shape(k) for k in first})
    return zoo


def build_like(path, like: Zoo, *, executor="local", workers: int | None = 2, progress: bool = True,
               **overrides) -> Zoo:
    """A model-trees zoo at `path` with the same parameters as the zoo `like`, except `overrides`.

    Same seed and plan: a tree kept in common has the same root (bit for bit) and the same fine-tunes' classes,
    steps and seeds, so e.g. `build_like(path, zoo, n_trees=1, lr=[1e-5, 1e-4])` re-trains tree 0's fine-tunes
    with another learning rate and nothing else changed."""
    if like.kind != KIND:
        raise ValueError(f"{like.path}: build_like needs a {KIND!r} zoo, this one is {like.kind!r}")
    params = {k: v for k, v in like.params.items() if k in DEFAULTS}
    return build_model_trees(path, executor=executor, workers=workers, progress=progress,
                             **{**params, **overrides})
