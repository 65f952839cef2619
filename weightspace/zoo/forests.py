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

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from weightspace.data import STYLES, styled_digits
from weightspace.nets.batched import BatchedAdamW, Stacked, lr_schedule
from weightspace.nets.vit import group_matrices, make_vit, split_qkv, timm_architecture
from weightspace.nets.vit_training import evaluate, fresh_head, own_class_pools, pretrain
from weightspace.runtime import derive_seed, np_rng
from weightspace.stats import excess_kurtosis

from .format import LORA_FACTORS as FACTORS
from .format import MODELS_DIR, Zoo, read_safetensors
from .jobs import Job, run_jobs
from .model_trees import root_id

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


# --------------------------------------------------------------------------------- batched training

def attention_kurtosis(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Summed excess kurtosis of the attention output projections ('proj') and of the value blocks ('value')
    of stacked [M, ...] ViT weights -> two [M] tensors (the two direction scores MoTHer uses)."""
    return {"proj": sum(excess_kurtosis(W) for W in group_matrices(params, "output")),
            "value": sum(excess_kurtosis(W) for W in group_matrices(params, "value"))}


def train_nodes(parents: Sequence[Mapping[str, torch.Tensor]], classes: Sequence[Sequence[int]],
                seeds: Sequence[int], *, mode: str = "ft", ranks: Sequence[int] | None = None,
                lr: float | Sequence[float] = 1e-3, steps: int | Sequence[int] = 300, styles=ALL_STYLES,
                vit: Mapping | None = None, batch_size: int = 32, weight_decay: float = 0.01,
                targets: Sequence[str] = ("q", "v"), head_lr_mult: float = 1.0,
                callback: Callable | None = None,
                callback_every: int = 0, device="cpu"):
    """Fine-tune M models at once (vmap), model m from parents[m] on the images of classes[m].

    mode "ft": every weight trains (dense AdamW). mode "lora": the parent's weights are frozen and each
    model trains rank-ranks[m] adapters B A on the `targets` blocks of every fused qkv, plus its head;
    W = W_parent + B A (alpha = r, scale 1). Ranks differ per model: adapters are allocated at the
    largest rank and masked. `callback(step, merged_params)` sees the stacked effective weights.

    Returns (state_dicts (LoRA: merged in fp32), deltas (LoRA: {qkv key: (U [3d, r], V [r, d])} per
    model, else None), metrics (test_acc on own classes, train_loss)).
    """
    M = len(parents)
    vit = dict(vit or {})
    ds = styled_digits(tuple(styles))
    n_out = ds.n_classes
    lr = torch.as_tensor([lr] * M if np.isscalar(lr) else list(lr), dtype=torch.float32)
    steps_t = torch.as_tensor([steps] * M if np.isscalar(steps) else list(steps))
    starts = [fresh_head(p, n_out, s) for p, s in zip(parents, seeds)]
    trainable = (lambda k: True) if mode == "ft" else (lambda k: k.startswith("head."))
    net = Stacked(lambda: make_vit(n_out, **vit), starts, device=device, trainable=trainable)
    qkv_keys = [k for k in net.keys if k.endswith("attn.qkv.weight")]
    lora, mask = {}, None
    if mode == "lora":
        ranks = torch.as_tensor(list(ranks))
        r_max = int(ranks.max())
        d = net.params[qkv_keys[0]].shape[-1]
        mask = (torch.arange(r_max)[None, :] < ranks[:, None]).float().to(device)        # [M, r_max]
        for k in qkv_keys:
            for blk in targets:
                # PEFT's init: A kaiming-uniform (bound 1/sqrt(d)), B zero, so training starts at W_parent
                A = torch.stack([(torch.rand(r_max, d, generator=torch.Generator().manual_seed(
                    derive_seed(s, k, blk))) * 2 - 1) / d ** 0.5 for s in seeds]).to(device)
                lora[f"{k}|{blk}|A"] = (A * mask[:, :, None]).requires_grad_(True)
                lora[f"{k}|{blk}|B"] = torch.zeros(M, d, r_max, device=device, requires_grad=True)
    elif mode != "ft":
        raise ValueError(f"unknown fine-tuning mode {mode!r}; choose 'ft' or 'lora'")

    def merged(params, lora_m, mask_m):
        """Effective weights of one model: W_parent + B A on the adapted blocks of each qkv."""
        if not lora_m:
            return params
        out = dict(params)
        for k in qkv_keys:
            blocks = list(split_qkv(params[k]))
            for bi, blk in enumerate("qkv"):
                if f"{k}|{blk}|A" in lora_m:
                    blocks[bi] = blocks[bi] + (lora_m[f"{k}|{blk}|B"] * mask_m) @ lora_m[f"{k}|{blk}|A"]
            out[k] = torch.cat(blocks, 0)
        return out

    def forward(params, lora_m, mask_m, x):
        return functional_call(net.skeleton, merged(params, lora_m, mask_m), (x,))

    in_dims = (0, 0, 0 if mask is not None else None, 0)
    batched = vmap(forward, in_dims=in_dims)
    body = {k: v for k, v in {**net.trainable(), **lora}.items() if not k.startswith("head.")}
    head = {k: v for k, v in net.trainable().items() if k.startswith("head.")}
    decay = lambda n, p: "|" in n or (n.endswith("weight") and p.ndim >= 3)  # noqa: E731
    opt = BatchedAdamW(body, weight_decay=weight_decay, decay=decay)
    opt_head = BatchedAdamW(head, weight_decay=weight_decay, decay=decay)   # the new head learns faster

    tr = ds.train
    table, lens = own_class_pools(tr, classes)
    gens = [torch.Generator().manual_seed(derive_seed("forest-data", s)) for s in seeds]
    sched = torch.zeros(M, dtype=torch.long) + 1                                            # cosine
    x_all, y_all = tr.x.to(device), tr.y.to(device)
    last_loss = torch.zeros(M)

    def effective():
        with torch.no_grad():
            return vmap(merged, in_dims=(0, 0, 0 if mask is not None else None))(net.params, lora, mask)

    for t in range(int(steps_t.max())):
        if callback and callback_every and t % callback_every == 0:
            callback(t, effective())
        u = torch.stack([torch.rand(batch_size, generator=g) for g in gens])
        idx = table.gather(1, (u * lens[:, None]).long())
        logits = batched(net.params, lora, mask, x_all[idx])
        per_model = F.cross_entropy(logits.flatten(0, 1), y_all[idx].flatten(), reduction="none")
        per_model = per_model.view(M, batch_size).mean(1)
        opt.zero_grad()
        opt_head.zero_grad()
        per_model.sum().backward()
        lr_t = lr_schedule(lr, steps_t, sched, t)
        opt.step(lr_t)
        opt_head.step(lr_t * head_lr_mult)
        last_loss = torch.where(t < steps_t, per_model.detach().cpu(), last_loss)
    final = effective()
    if callback:
        callback(int(steps_t.max()), final)
    deltas = None
    if mode == "lora":
        deltas = []
        for m in range(M):
            r = int(ranks[m])
            per = {}
            for k in qkv_keys:
                d = net.params[k].shape[-1]
                U = torch.zeros(3 * d, r * len(targets))
                V = torch.zeros(r * len(targets), d)
                for ti, blk in enumerate(targets):
                    bi = "qkv".index(blk)
                    B = lora[f"{k}|{blk}|B"][m, :, :r].detach().cpu()
                    U[bi * d:(bi + 1) * d, ti * r:(ti + 1) * r] = B
                    V[ti * r:(ti + 1) * r] = lora[f"{k}|{blk}|A"][m, :r].detach().cpu()
                per[k] = (U, V)
            deltas.append(per)
    with torch.no_grad():
        for k, v in final.items():
            net.params[k] = v.detach()
    accs = evaluate(net, classes, ds.test, device, chunk=256)
    metrics = [{"test_acc": a, "train_loss": float(lo)} for a, lo in zip(accs, last_loss)]
    return net.state_dicts(), deltas, metrics


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
    sds, deltas, metrics = train_nodes(
        [_weights_only(parents[r["parent_id"]]) for r in rows], [r["classes"] for r in rows],
        [r["seed"] for r in rows], mode="ft" if variant == "ft" else "lora", ranks=[r["rank"] for r in rows],
        lr=[r["lr"] for r in rows], steps=[r["steps"] for r in rows], vit=spec["vit"],
        batch_size=spec["batch_size"], weight_decay=spec["weight_decay"], targets=spec["lora_targets"],
        head_lr_mult=spec["head_lr_mult"], callback=_kurtosis_logger(log), callback_every=spec["log_every"])
    for m, (r, sd, met) in enumerate(zip(rows, sds, metrics)):
        tensors = dict(sd)
        if deltas is not None:
            parent = parents[r["parent_id"]]
            for k, (U, V) in deltas[m].items():
                stem = FACTORS + k[: -len(".weight")]
                pu, pv = parent.get(f"{stem}.U"), parent.get(f"{stem}.V")
                if pu is not None:   # cumulative from the root: W = W_root + [U_parent, U] [V_parent; V]
                    U, V = torch.cat([pu, U], 1), torch.cat([pv, V], 0)
                tensors[f"{stem}.U"], tensors[f"{stem}.V"] = U.contiguous(), V.contiguous()
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
        jobs.append(Job(_root_job, spec, (root_id(t),), name=f"root {t}"))
    common = {k: p[k] for k in ("vit", "batch_size", "weight_decay", "lora_targets", "log_every", "head_lr_mult")}
    for variant in p["variants"]:
        rows = forest_plan(p, variant)
        for depth in (1, 2):
            mine = [r for r in rows if r["depth"] == depth]
            for lo in range(0, len(mine), p["chunk"]):
                chunk = mine[lo:lo + p["chunk"]]
                jobs.append(Job(_finetune_job, dict(rows=chunk, **common), tuple(r["model_id"] for r in chunk),
                                parents=tuple(sorted({r["parent_id"] for r in chunk})),
                                name=f"{variant} depth {depth} models {lo}-{lo + len(chunk) - 1}"))
    return jobs


def build_forests(path, *, executor="local", workers: int | None = 2, progress: bool = True,
                  preset: str | None = None, **params) -> Zoo:
    """Build (or resume, or open when complete) the forests zoo at `path`: the roots and one forest of
    n_trees x (1 + n_children + n_children^2) models per variant, all sharing the roots. One forest is
    `zoo.variant(name)`; its ground truth `zoo.parents(ids)`."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"build_forests got unknown parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    bad = sorted(set(p["variants"]) - set(VARIANTS))
    if bad:
        raise ValueError(f"unknown variant(s) {bad}; choose from {VARIANTS}")
    classes = styled_digits(ALL_STYLES).class_names
    zoo = Zoo.create(path, kind=KIND, builder="weightspace.zoo.forests.build_forests", params=p, preset=preset,
                     command=f"build_forests({str(path)!r}, **params)",
                     labels=dict(column="classes", class_names=classes, per_model="many",
                                 description="the StyledDigits classes of the task a model was fine-tuned on "
                                             "(its task: the ten digits in one style); roots have none"),
                     architecture={**timm_architecture(**p["vit"]), "num_classes_column": "num_classes",
                                   "extra_prefixes": [FACTORS]})
    run_jobs(zoo, plan_jobs(p), executor=executor, workers=workers, progress=progress,
             desc=f"ViT forests ({len(p['variants'])} x {p['n_trees']} trees)")
    return zoo


# how the notebooks and the MoTHer CLI call each variant, and which MoTHer distance it needs (paper, Sec. 4.1)
VARIANT_NAMES = {"ft": "FT", "lora-v": "LoRA-V", "lora-f": "LoRA-F"}
VARIANT_DISTANCE = {"ft": "ft", "lora-v": "lora", "lora-f": "lora"}
