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

A LoRA Model Tree (`finetune_mode="lora"`, like ProbeX's Stable-Diffusion LoRA trees, Sec. 5): each
fine-tune keeps its root frozen and trains rank-r LoRA adapters (r drawn per fine-tune from `lora_ranks`) on
the `lora_targets` blocks of every fused qkv, plus its zero-init head at `head_lr_mult` times its learning
rate. It is stored merged (fp32) with its factors beside the weights (`lora_factors.<stem>.U` [3d, R] and
`.V` [R, d], R = r x number of targets, W = W_root + U V) and the manifest's `lora` entry, so
`Zoo.lora_layer("blocks.0.attn.qkv")` is each fine-tune's U V, the matrix ProbeX reads for a LoRA.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from weightspace.data import STYLES, styled_digits
from weightspace.nets.batched import SCHEDULES
from weightspace.nets.lora import cumulative
from weightspace.nets.vit import VIT_TINY, timm_architecture
from weightspace.nets.vit_training import RECIPES, finetune, finetune_stacked, pretrain
from weightspace.runtime import derive_seed, np_rng

from . import checks
from .format import LORA_FACTORS, LORA_LAYOUT, MODELS_DIR, Zoo, read_safetensors
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
# The LoRA Model Tree's parameters; stored in the manifest only in LoRA mode, so a full fine-tuning zoo's
# parameters (and its resume check) are those of DEFAULTS alone.
LORA_DEFAULTS = dict(
    finetune_mode="ft",        # "ft": every weight trains; "lora": rank-r adapters on the attention plus the head
    lora_ranks=[4, 16],        # LoRA rank of each fine-tune, uniform over these integers (inclusive)
    lora_targets=["q", "v"],   # blocks of every fused qkv that get adapters (peft's default for a ViT)
    head_lr_mult=10.0,         # the zero-init head, the only dense part that trains, at 10x the learning rate
)
FINETUNE_MODES = ("ft", "lora")


def _check(p: Mapping) -> None:
    """Every parameter's type and range (see weightspace.zoo.checks), before anything is written."""
    for name in ("n_trees", "n_per_tree", "root_steps", "batch_size", "chunk"):
        checks.integer(p, name)
    checks.interval(p, "steps", integers=True, lo=1)
    checks.interval(p, "lr", integers=False, lo=0)
    checks.choices(p, "schedules", SCHEDULES)
    checks.number(p, "head_init_std", positive=False)
    checks.split(p, p["n_per_tree"])
    checks.choices(p, "styles", STYLES)
    checks.choices(p, "recipes", RECIPES, distinct=False)
    checks.vit(p)
    checks.seed(p)


def resolve_params(params: Mapping) -> dict:
    """The build's full parameters: DEFAULTS, plus LORA_DEFAULTS in LoRA mode, overridden by `params`,
    checked (unknown names, every value's type and range, the fine-tuning mode, the LoRA ranks, targets)."""
    unknown = sorted(set(params) - set(DEFAULTS) - set(LORA_DEFAULTS))
    if unknown:
        raise TypeError(f"build_model_trees got unknown parameter(s) {unknown}; known: "
                        f"{sorted(DEFAULTS) + sorted(LORA_DEFAULTS)}")
    mode = params.get("finetune_mode", "ft")
    if mode not in FINETUNE_MODES:
        raise ValueError(f"finetune_mode={mode!r}: choose one of {FINETUNE_MODES}")
    if mode == "ft":
        extra = sorted(k for k in params if k in LORA_DEFAULTS and k != "finetune_mode")
        if extra:
            raise ValueError(f"{extra} only apply with finetune_mode='lora' (this build fully fine-tunes)")
        p = {**DEFAULTS, **{k: v for k, v in params.items() if k != "finetune_mode"}}
        _check(p)
        return p
    p = {**DEFAULTS, **LORA_DEFAULTS, **params}
    _check(p)
    d = {**VIT_TINY, **p["vit"]}["embed_dim"]
    ranks = p["lora_ranks"]
    if (not isinstance(ranks, (list, tuple)) or len(ranks) != 2
            or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks)
            or not 1 <= ranks[0] <= ranks[1] <= d):
        raise ValueError(f"lora_ranks={ranks!r}: give [lowest, highest] integer ranks with 1 <= lowest <= highest "
                         f"<= embed_dim = {d} (a LoRA rank is at most the width of the [{d}, {d}] block it adapts)")
    targets = p["lora_targets"]
    if (not isinstance(targets, (list, tuple)) or not targets or len(set(targets)) != len(targets)
            or not set(targets) <= set("qkv")):
        raise ValueError(f"lora_targets={targets!r}: give distinct blocks of the fused qkv, from 'q', 'k', 'v'")
    if not isinstance(p["head_lr_mult"], (int, float)) or not p["head_lr_mult"] > 0:
        raise ValueError(f"head_lr_mult={p['head_lr_mult']!r}: give a positive number")
    return {**p, "lora_ranks": list(ranks), "lora_targets": list(targets)}


def lora_tensors(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                 parent: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA fine-tune's factors as stored: `lora_factors.<key minus ".weight">.U` / `.V`, cumulative from
    the root (nets.lora.cumulative: W = W_root + [U_parent, U] [V_parent; V]; a root parent stores none)."""
    out = {}
    for k, (U, V) in factors.items():
        stem = LORA_FACTORS + k[: -len(".weight")]
        U, V = cumulative(parent.get(f"{stem}.U"), parent.get(f"{stem}.V"), U, V)
        out[f"{stem}.U"], out[f"{stem}.V"] = U.contiguous(), V.contiguous()
    return out


def root_id(tree: int) -> str:
    """The id of tree `tree`'s root in every zoo of ViT trees (model trees and MoTHer forests)."""
    return f"t{tree}-root"


def finetune_plan(params: Mapping) -> list[dict]:
    """Every fine-tune's row before training: id, parent, tree, split, classes, hyperparameters (and in LoRA
    mode its `rank`, drawn last from the fine-tune's own generator, so the other draws are those of "ft")."""
    p = resolve_params(params)
    lora = p.get("finetune_mode") == "lora"
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
            row = dict(
                model_id=f"t{t}-{i:04d}", parent_id=root_id(t), tree_id=t, tree_name=recipe, depth=1,
                split=str(split_of[i]), classes=classes,
                lr=float(10 ** rng.uniform(math.log10(lo), math.log10(hi))),
                steps=int(rng.integers(p["steps"][0], p["steps"][1] + 1)),
                schedule=str(p["schedules"][int(rng.integers(len(p["schedules"])))]),
                seed=derive_seed(p["seed"], "finetune", t, i), batch_size=p["batch_size"],
            )
            if lora:
                row["rank"] = int(rng.integers(p["lora_ranks"][0], p["lora_ranks"][1] + 1))
            rows.append(row)
    return rows


def _root_spec(p: Mapping, t: int) -> dict:
    return dict(recipe=p["recipes"][t % len(p["recipes"])], seed=derive_seed(p["seed"], "root", t),
                steps=p["root_steps"], vit=p["vit"], styles=p["styles"], tree=t)


# What a fine-tune's weights depend on besides its row: two builds that agree on these and on the root train
# the same model for the same row (finetune_plan's id, classes, learning rate, steps, schedule, seed).
_FINETUNE_SPEC = ("vit", "styles", "batch_size", "head_init_std", "finetune_mode", "lora_targets", "head_lr_mult")
_ROW_SPEC = ("parent_id", "tree_id", "classes", "lr", "steps", "schedule", "seed", "batch_size", "rank")


def _same_finetune(row: Mapping, donor_row: Mapping) -> bool:
    return all(row.get(k) == donor_row.get(k) for k in _ROW_SPEC)


def plan_jobs(params: Mapping, copy_from: Zoo | None = None) -> list[Job]:
    """The build's jobs: one per root, then the fine-tunes in chunks. What the zoo `copy_from` already made
    with the same spec is copied from it, verified, instead of trained again: a root with the same recipe,
    seed, steps, ViT and styles (pre-training is deterministic), and, under a copied root, a fine-tune with
    the same row and fine-tuning settings (so the large tree of notebook 03 reuses notebook 01's first tree)."""
    p = resolve_params(params)
    jobs = []
    donor_p = resolve_params(copy_from.params) if copy_from is not None and copy_from.kind == KIND else None
    shared_roots = set()
    for t in range(p["n_trees"]):
        spec = _root_spec(p, t)
        if (donor_p is not None and t < donor_p["n_trees"] and _root_spec(donor_p, t) == spec
                and root_id(t) in copy_from):
            spec["donor"] = str(copy_from.path)
            shared_roots.add(t)
        jobs.append(Job(_root_job, spec, (root_id(t),), name=f"root {t} ({spec['recipe']})",
                        cost=1 if spec.get("donor") else spec["steps"]))
    rows = finetune_plan(p)
    same_recipe = donor_p is not None and all(p.get(k) == donor_p.get(k) for k in _FINETUNE_SPEC)
    copied = {r["model_id"] for r in rows
              if same_recipe and r["tree_id"] in shared_roots and r["model_id"] in copy_from
              and _same_finetune(r, copy_from.row(r["model_id"]))}
    for t in range(p["n_trees"]):
        mine = [r for r in rows if r["tree_id"] == t and r["model_id"] not in copied]
        mine.sort(key=lambda r: (r["steps"], r["model_id"]))
        reused = [r for r in rows if r["tree_id"] == t and r["model_id"] in copied]
        if reused:
            jobs.append(Job(_copy_job, dict(rows=reused, donor=str(copy_from.path)),
                            tuple(r["model_id"] for r in reused), parents=(root_id(t),),
                            name=f"tree {t}: {len(reused)} fine-tunes copied", cost=len(reused)))
        for lo in range(0, len(mine), p["chunk"]):
            chunk = mine[lo:lo + p["chunk"]]
            spec = dict(rows=chunk, vit=p["vit"], styles=p["styles"], batch_size=p["batch_size"],
                        head_init_std=p["head_init_std"])
            if p.get("finetune_mode") == "lora":
                spec.update({k: p[k] for k in ("finetune_mode", "lora_targets", "head_lr_mult")})
            jobs.append(Job(_finetune_job, spec, tuple(r["model_id"] for r in chunk), parents=(root_id(t),),
                            name=f"tree {t} fine-tunes {lo}-{lo + len(chunk) - 1}",
                            cost=sum(r["steps"] for r in chunk)))
    return jobs


def _copy_job(spec, writer) -> None:
    """Fine-tunes taken from the donor zoo: each file verified against its recorded sha256 on loading, its
    metrics kept, its row (e.g. the split, which depends on the tree's size) this build's."""
    donor = Zoo.open(spec["donor"], kind=KIND)
    for r in spec["rows"]:
        kept = {k: v for k, v in donor.row(r["model_id"]).items()
                if k not in ("model_id", "file", "sha256", "parent_sha256")}
        writer.write(r["model_id"], donor.load(r["model_id"]), kept | {k: v for k, v in r.items() if k != "model_id"})


def _root_job(spec, writer) -> None:
    t = spec["tree"]
    if spec.get("donor"):
        donor = Zoo.open(spec["donor"], kind=KIND)
        sd = donor.load(root_id(t))                                 # verified against its recorded sha256
        metrics = {k: donor.row(root_id(t))[k] for k in ("pretrain_loss", "pretrain_test_acc")
                   if donor.row(root_id(t)).get(k) is not None}
    else:
        sd, metrics = pretrain(spec["recipe"], spec["seed"], spec["steps"], vit=spec["vit"], styles=spec["styles"])
    writer.write(root_id(t), sd, dict(parent_id=None, tree_id=t, tree_name=spec["recipe"], depth=0,
                                      split=None, seed=spec["seed"], steps=spec["steps"],
                                      num_classes=int(sd["head.weight"].shape[0]), **metrics))


def _finetune_job(spec, writer) -> None:
    rows = spec["rows"]
    parent = read_safetensors(f"{writer.zoo_path}/{MODELS_DIR}/{rows[0]['parent_id']}.safetensors")
    if spec.get("finetune_mode") == "lora":
        sds, factors, metrics = finetune_stacked(
            [parent] * len(rows), [r["classes"] for r in rows], [r["seed"] for r in rows], mode="lora",
            ranks=[r["rank"] for r in rows], targets=spec["lora_targets"], head_lr_mult=spec["head_lr_mult"],
            lr=[r["lr"] for r in rows], steps=[r["steps"] for r in rows], schedule=[r["schedule"] for r in rows],
            vit=spec["vit"], styles=spec["styles"], batch_size=spec["batch_size"],
            head_init_std=spec["head_init_std"])
        sds = [{**sd, **lora_tensors(f, parent)} for sd, f in zip(sds, factors)]
    else:
        sds, metrics = finetune([parent] * len(rows), [r["classes"] for r in rows], [r["lr"] for r in rows],
                                [r["steps"] for r in rows], [r["schedule"] for r in rows],
                                [r["seed"] for r in rows], vit=spec["vit"], styles=spec["styles"],
                                batch_size=spec["batch_size"], head_init_std=spec["head_init_std"])
    for r, sd, m in zip(rows, sds, metrics):
        writer.write(r["model_id"], sd, {k: v for k, v in r.items() if k != "model_id"}
                     | {"num_classes": int(sd["head.weight"].shape[0])} | m)


def build_model_trees(path, *, executor="local", workers: int | None = 2, progress: bool = True,
                      repair: bool = False, copy_from: Zoo | None = None,
                      preset: str | None = None, **params) -> Zoo:
    """Build (or resume, or just open when complete) a ViT Model Trees zoo at `path`: DEFAULTS's parameters,
    and LORA_DEFAULTS's for a LoRA Model Tree (`finetune_mode="lora"`). Roots and fine-tunes that the zoo
    `copy_from` already has with the same spec are copied from it (`plan_jobs`)."""
    p = resolve_params(params)
    lora = p.get("finetune_mode") == "lora"
    arch = {**timm_architecture(**p["vit"]), "num_classes_column": "num_classes"}
    zoo = Zoo.create(path, kind=KIND, repair=repair,
                     builder="weightspace.zoo.model_trees.build_model_trees", params=p,
                     preset=preset, command=f"build_model_trees({str(path)!r}, **params)",
                     labels=dict(column="classes", class_names=styled_digits(tuple(p["styles"])).class_names,
                                 per_model="many",
                                 description="the StyledDigits classes a fine-tune was trained on (half of them); "
                                             "roots have none"),
                     architecture={**arch, "extra_prefixes": [LORA_FACTORS]} if lora else arch,
                     lora=LORA_LAYOUT if lora else None)
    run_jobs(zoo, plan_jobs(p, copy_from), executor=executor, workers=workers, progress=progress,
             desc=f"ViT model trees ({p['n_trees']} x {p['n_per_tree']})")
    if not zoo.manifest.get("layers"):
        first = zoo.lazy(zoo.select(depth=1)[0])
        zoo.set_layers({k: first.shape(k) for k in first if not k.startswith(LORA_FACTORS)})
    return zoo


def build_like(path, like: Zoo, *, executor="local", workers: int | None = 2, progress: bool = True,
               **overrides) -> Zoo:
    """A model-trees zoo at `path` with the same parameters as the zoo `like`, except `overrides`.

    Same seed and plan: a tree kept in common has the same root (bit for bit) and the same fine-tunes' classes,
    steps and seeds, so e.g. `build_like(path, zoo, n_trees=1, lr=[1e-5, 1e-4])` re-trains tree 0's fine-tunes
    with another learning rate and nothing else changed. The roots kept in common are copied from `like`
    (verified), not pre-trained again."""
    if like.kind != KIND:
        raise ValueError(f"{like.path}: build_like needs a {KIND!r} zoo, this one is {like.kind!r}")
    params = {k: v for k, v in like.params.items() if k in DEFAULTS or k in LORA_DEFAULTS}
    if overrides.get("finetune_mode", params.get("finetune_mode", "ft")) == "ft":
        params = {k: v for k, v in params.items() if k not in LORA_DEFAULTS}
    return build_model_trees(path, executor=executor, workers=workers, progress=progress, copy_from=like,
                             **{**params, **overrides})
