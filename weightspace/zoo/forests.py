"""VTHR-shaped forests of small ViTs (MoTHer's zoo): 5 roots -> 4 children -> 4 grandchildren each.

    tree t:   t{t}-root                       pre-trained from scratch (own seed), depth 0
              t{t}-c{i}        i = 0..3        fine-tuned from the root, depth 1
              t{t}-c{i}-g{j}   j = 0..3        fine-tuned from child i, depth 2

21 models per tree, 105 per forest, 20 edges per tree. Every fine-tune trains on its own *task*, a set
of StyledDigits classes (TASKS below), never its parent's nor a sibling's task. The same roots start
three forests, like the paper's three VTHR splits (here the `variant` column; `split`, the data split, is
null for every model: MoTHer learns nothing from a training split):

    ft      full fine-tuning: every weight moves (dense AdamW)
    lora-v  LoRA on the attention query and value blocks, rank drawn per model from `ranks_v`
    lora-f  the same with one fixed rank `rank_f`

LoRA fine-tunes are stored MERGED in fp32 (W = W_parent + B A), as on the Hub, and keep their unmerged
factors as extra tensors of the same file, under their own key prefix (so the weights alone load strictly
into timm, see `Zoo.model`), cumulative from the root, so that

    W_model = W_root + U @ V          (per adapted matrix, U [d_out, R], V [R, d_in])

    lora_factors.<key minus ".weight">.U   e.g. lora_factors.blocks.0.attn.qkv.U  [3d, R]  (zero rows: key block)
    lora_factors.<key minus ".weight">.V        lora_factors.blocks.0.attn.qkv.V  [R, d]

with R the sum of the ranks along the path from the root (0 for a root, which stores no factors).
`weightspace.mother` reads these to get rank(W_u - W_v) from small matrices instead of an SVD; it
checks that two models' factors really share a base before trusting them.

The classification head is replaced per task (zero init) and never used by MoTHer. The zoo table is the
ground truth: `parent_id`, `tree_id`, `depth`, `variant`, plus `task`, `classes`, `rank`, `lr`, `steps`,
`test_acc`.
Kurtosis is logged along each root's pre-training and along one fine-tuning run (zoo assets
`kurtosis_pretrain` and `kurtosis_finetune`) for notebook 04.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from weightspace.data import STYLES, styled_digits
from weightspace.nets.vit import group_matrices, timm_architecture
from weightspace.nets.vit_training import RECIPES, finetune_stacked, pretrain
from weightspace.runtime import derive_seed, np_rng
from weightspace.stats import excess_kurtosis

from . import checks
from .format import LORA_FACTORS as FACTORS
from .format import LORA_LAYOUT, MODELS_DIR, Zoo, read_safetensors
from .jobs import Job, run_jobs
from .model_trees import lora_tensors, root_id

KIND = "vit-forest"
VARIANTS = ("ft", "lora-v", "lora-f")

# A task is a set of StyledDigits classes (class = style_index * 10 + digit, over ALL_STYLES).
ALL_STYLES = tuple(STYLES)


def _style_task(style: str) -> list[int]:
    s = ALL_STYLES.index(style)
    return [s * 10 + d for d in range(10)]


TASKS: dict[str, list[int]] = {f"{s} digits": _style_task(s) for s in ALL_STYLES}

# The default preset (notebook 04's parameters repeat these). Width 64: at width 32 the 32x32 attention
# matrices are too small for a reliable kurtosis trend (see notebook 04, "why width matters").
DEFAULTS = dict(
    n_trees=5,
    n_children=4,               # per root, and per child (VTHR: 4 and 4)
    variants=list(VARIANTS),
    root_recipes=["masked"],    # vit_training recipes, cycled over the trees; every root its own seed
    root_steps=1000,            # masked-patch pre-training: attention kurtosis rises, then plateaus
    root_lr=3e-3,
    root_weight_decay=0.05,
    root_styles=["plain", "mirrored", "inverted", "bold"],
    steps=200,                  # fine-tuning steps of every node (comparable budgets)
    lr_ft=1e-3,
    lr_lora=3e-3,
    ranks_v=[1, 2, 4, 8],       # LoRA-V ranks (VTHR: 8..64 at d=768; about the same fractions of d=64)
    rank_f=4,                   # LoRA-F rank (VTHR: 16)
    lora_targets=["q", "v"],    # blocks of the fused qkv that get adapters (PEFT's default for ViT)
    batch_size=32,
    weight_decay=0.01,
    head_lr_mult=10.0,          # the new (zero-init) head trains at 10x the learning rate
    chunk=40,                   # models trained together in one job
    log_every=25,               # kurtosis logging interval (steps)
    vit=dict(embed_dim=64, num_heads=4),   # overrides of nets.vit.VIT_TINY (patch 2, depth 2, 8x8 digits)
    seed=0,
)


def child_id(tree: int, i: int, j: int | None = None) -> str:
    return f"t{tree}-c{i}" if j is None else f"t{tree}-c{i}-g{j}"


# ------------------------------------------------------------------------------------------ the plan

def forest_plan(params: Mapping, variant: str) -> list[dict]:
    """Every fine-tune's row before training: id, parent, tree, depth, task, rank, lr, steps, seed."""
    p = {**DEFAULTS, **params}
    names = list(TASKS)
    if len(names) < p["n_children"] + 1:
        raise ValueError(f"need at least {p['n_children'] + 1} tasks for {p['n_children']} children")
    rows = []
    for t in range(p["n_trees"]):
        rng = np_rng(p["seed"], "forest", variant, t)
        kids = rng.choice(len(names), p["n_children"], replace=False)
        for i, ki in enumerate(kids):
            rows.append(_row(p, variant, t, child_id(t, i), root_id(t), 1, names[ki], rng))
            others = [n for n in range(len(names)) if n != ki]            # never the parent's task
            grand = rng.choice(others, p["n_children"], replace=False)    # siblings differ
            for j, gj in enumerate(grand):
                rows.append(_row(p, variant, t, child_id(t, i, j), child_id(t, i), 2, names[gj], rng))
    return rows


def _row(p, variant, tree, name, parent, depth, task, rng) -> dict:
    rank = {"ft": 0, "lora-v": int(rng.choice(p["ranks_v"])), "lora-f": int(p["rank_f"])}[variant]
    tag = VARIANT_TAG[variant]
    return dict(model_id=f"{tag}-{name}", parent_id=parent if depth == 1 else f"{tag}-{parent}", tree_id=tree,
                depth=depth, split=None, variant=variant, task=task, classes=TASKS[task], rank=rank,
                lr=p["lr_ft"] if variant == "ft" else p["lr_lora"], steps=p["steps"],
                seed=derive_seed(p["seed"], "forest", variant, name))


# ---------------------------------------------------------------------------------- kurtosis logs

def attention_kurtosis(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Summed excess kurtosis of the attention output projections ('proj') and of the value blocks ('value')
    of stacked [M, ...] ViT weights -> two [M] tensors (the two direction scores MoTHer uses)."""
    return {"proj": sum(excess_kurtosis(W) for W in group_matrices(params, "output")),
            "value": sum(excess_kurtosis(W) for W in group_matrices(params, "value"))}


# ------------------------------------------------------------------------------------------- the jobs

VARIANT_TAG = {"ft": "ft", "lora-v": "lorav", "lora-f": "loraf"}


def model_id(variant: str, tree: int, i: int, j: int | None = None) -> str:
    return f"{VARIANT_TAG[variant]}-{child_id(tree, i, j)}"


def _weights_only(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith(FACTORS)}


def _kurtosis_logger(log: dict) -> Callable:
    def callback(step, params):
        k = attention_kurtosis(params)
        log["step"].append(int(step))
        log["proj"].append(k["proj"].tolist())
        log["value"].append(k["value"].tolist())
    return callback


def _root_job(spec, writer) -> None:
    log = {"step": [], "proj": [], "value": []}
    cb = _kurtosis_logger(log)
    sd, metrics = pretrain(spec["recipe"], spec["seed"], spec["steps"], vit=spec["vit"],
                           styles=spec["styles"],
                           lr=spec["lr"], weight_decay=spec["weight_decay"],
                           callback=lambda t, m: cb(t, {k: v[None] for k, v in m.state_dict().items()}),
                           callback_every=spec["log_every"])
    per_model = {"step": log["step"], "proj": [v[0] for v in log["proj"]], "value": [v[0] for v in log["value"]]}
    t = spec["tree"]
    writer.write(root_id(t), sd, dict(parent_id=None, tree_id=t, depth=0, split=None, variant=None,
                                      task="pre-training", recipe=spec["recipe"], seed=spec["seed"],
                                      steps=spec["steps"], lr=spec["lr"], rank=-1,
                                      num_classes=int(sd["head.weight"].shape[0]), kurtosis_log=per_model,
                                      **metrics))


def _finetune_job(spec, writer) -> None:
    rows = spec["rows"]
    variant = rows[0]["variant"]
    parents = {}
    for pid in sorted({r["parent_id"] for r in rows}):
        parents[pid] = read_safetensors(f"{writer.zoo_path}/{MODELS_DIR}/{pid}.safetensors")
    log = {"step": [], "proj": [], "value": []}
    sds, deltas, metrics = finetune_stacked(
        [_weights_only(parents[r["parent_id"]]) for r in rows], [r["classes"] for r in rows],
        [r["seed"] for r in rows], mode="ft" if variant == "ft" else "lora", ranks=[r["rank"] for r in rows],
        lr=[r["lr"] for r in rows], steps=[r["steps"] for r in rows], schedule="cosine", styles=ALL_STYLES,
        vit=spec["vit"], batch_size=spec["batch_size"], weight_decay=spec["weight_decay"],
        targets=spec["lora_targets"], head_lr_mult=spec["head_lr_mult"], data_key="forest-data",
        callback=_kurtosis_logger(log), callback_every=spec["log_every"], eval_chunk=256)
    for m, (r, sd, met) in enumerate(zip(rows, sds, metrics)):
        tensors = dict(sd)
        if deltas is not None:
            tensors.update(lora_tensors(deltas[m], parents[r["parent_id"]]))
        klog = {"step": log["step"], "proj": [v[m] for v in log["proj"]], "value": [v[m] for v in log["value"]]}
        writer.write(r["model_id"], tensors, {k: v for k, v in r.items() if k != "model_id"} | met
                     | {"num_classes": int(sd["head.weight"].shape[0]), "kurtosis_log": klog})


def plan_jobs(params: Mapping) -> list[Job]:
    p = {**DEFAULTS, **params}
    jobs = []
    recipes = p["root_recipes"]
    for t in range(p["n_trees"]):
        spec = dict(recipe=recipes[t % len(recipes)], seed=derive_seed(p["seed"], "forest-root", t),
                    steps=p["root_steps"], lr=p["root_lr"], weight_decay=p["root_weight_decay"],
                    vit=p["vit"], styles=p["root_styles"], tree=t, log_every=p["log_every"])
        jobs.append(Job(_root_job, spec, (root_id(t),), name=f"root {t}", cost=spec["steps"]))
    common = {k: p[k] for k in ("vit", "batch_size", "weight_decay", "lora_targets", "log_every", "head_lr_mult")}
    for variant in p["variants"]:
        rows = forest_plan(p, variant)
        for depth in (1, 2):
            mine = [r for r in rows if r["depth"] == depth]
            for lo in range(0, len(mine), p["chunk"]):
                chunk = mine[lo:lo + p["chunk"]]
                jobs.append(Job(_finetune_job, dict(rows=chunk, **common), tuple(r["model_id"] for r in chunk),
                                parents=tuple(sorted({r["parent_id"] for r in chunk})),
                                name=f"{variant} depth {depth} models {lo}-{lo + len(chunk) - 1}",
                                cost=sum(r["steps"] for r in chunk)))
    return jobs


def resolve_params(params: Mapping) -> dict:
    """DEFAULTS overridden by `params`, each checked for type and range before anything is written."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"build_forests got unknown parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    for name in ("n_trees", "root_steps", "steps", "batch_size", "chunk", "log_every"):
        checks.integer(p, name)
    checks.integer(p, "n_children", hi=len(TASKS) - 1)     # a task other than its parent's and siblings'
    checks.choices(p, "variants", VARIANTS)
    checks.choices(p, "root_recipes", RECIPES, distinct=False)
    checks.choices(p, "root_styles", STYLES)
    for name in ("root_lr", "lr_ft", "lr_lora", "head_lr_mult"):
        checks.number(p, name)
    for name in ("root_weight_decay", "weight_decay"):
        checks.number(p, name, positive=False)
    d = checks.vit(p)
    v = p["ranks_v"]
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(r, int) and not isinstance(r, bool)
                                                            and 1 <= r <= d for r in v):
        raise ValueError(f"ranks_v={v!r}: expected a non-empty list of integer LoRA ranks in "
                         f"1..embed_dim = {d}")
    checks.integer(p, "rank_f", hi=d)
    checks.choices(p, "lora_targets", ("q", "k", "v"))
    checks.seed(p)
    return p


def build_forests(path, *, executor="local", workers: int | None = 2, progress: bool = True,
                      repair: bool = False,
                  preset: str | None = None, **params) -> Zoo:
    """Build (or resume, or open when complete) the forests zoo at `path`: the roots and one forest of
    n_trees x (1 + n_children + n_children^2) models per variant, all sharing the roots. One forest is
    `zoo.variant(name)`; its ground truth `zoo.parents(ids)`."""
    p = resolve_params(params)
    classes = styled_digits(ALL_STYLES).class_names
    zoo = Zoo.create(path, kind=KIND, repair=repair,
                     builder="weightspace.zoo.forests.build_forests", params=p, preset=preset,
                     command=f"build_forests({str(path)!r}, **params)",
                     labels=dict(column="classes", class_names=classes, per_model="many",
                                 description="the StyledDigits classes of the task a model was fine-tuned on "
                                             "(its task: the ten digits in one style); roots have none"),
                     architecture={**timm_architecture(**p["vit"]), "num_classes_column": "num_classes",
                                   "extra_prefixes": [FACTORS]}, lora=LORA_LAYOUT)
    run_jobs(zoo, plan_jobs(p), executor=executor, workers=workers, progress=progress,
             desc=f"ViT forests ({len(p['variants'])} x {p['n_trees']} trees)")
    return zoo


# how the notebooks and the MoTHer CLI call each variant, and which MoTHer distance it needs (paper, Sec. 4.1)
VARIANT_NAMES = {"ft": "FT", "lora-v": "LoRA-V", "lora-f": "LoRA-F"}
VARIANT_DISTANCE = {"ft": "ft", "lora-v": "lora", "lora-f": "lora"}
