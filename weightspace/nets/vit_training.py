"""How the ViTs in our zoos are trained on StyledDigits: root pre-training recipes and batched fine-tuning.

Roots differ the way SupViT / DINO / MAE roots differ — in seed AND in pre-training objective:
  supervised   cross-entropy on all (digit, style) classes                      (like SupViT)
  digits       cross-entropy on digit identity only, whatever the style         (another supervised root)
  masked       reconstruct the pixels of masked patches from the rest (SimMIM)  (like MAE)
  contrastive  SimCLR: two shifted, noisy views of an image agree (NT-Xent)     (like DINO, self-supervised)
Each root keeps its pre-training head as `head.*` (shapes differ); fine-tunes replace it.

Fine-tuning trains many children at once (nets.batched, `finetune_stacked`): each child starts from its
parent's weights with a fresh classification head and trains on its own class subset, learning rate,
number of steps, schedule and seed, either every weight ("ft") or LoRA adapters on the attention ("lora").
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from weightspace.data import styled_digits
from weightspace.nets.batched import SCHEDULES, BatchedAdamW, Stacked, lr_schedule
from weightspace.nets.lora import init_factors, merge
from weightspace.nets.vit import make_vit, split_qkv, stacked_forward
from weightspace.runtime import generator

RECIPES = ("supervised", "digits", "masked", "contrastive")


def _head_size(recipe: str, n_classes: int, cfg: Mapping) -> int:
    d = cfg.get("embed_dim", 32)
    p, c = cfg.get("patch_size", 2), cfg.get("in_chans", 1)
    return {"supervised": n_classes, "digits": 10, "masked": p * p * c, "contrastive": d}[recipe]


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, n_patches, p*p*C] in the patch embedding's row-major patch order."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random shift of up to one pixel (background fill) plus a little noise."""
    B = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (B,), generator=g)
    dx = torch.randint(0, 3, (B,), generator=g)
    H, W = x.shape[-2:]
    rows = (dy[:, None] + torch.arange(H)[None])[:, None, :, None].expand(B, x.shape[1], H, W + 2)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(W)[None])[:, None, None, :].expand(B, x.shape[1], H, W)
    out = out.gather(3, cols)
    return out + 0.1 * torch.randn(out.shape, generator=g)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy over a batch of positive pairs."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / tau
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


def pretrain_loss(model, recipe: str, x: torch.Tensor, y: torch.Tensor, digit: torch.Tensor,
                  g: torch.Generator, mask_ratio: float = 0.5) -> torch.Tensor:
    if recipe == "supervised":
        return F.cross_entropy(model(x), y)
    if recipe == "digits":
        return F.cross_entropy(model(x), digit)
    if recipe == "masked":
        p = model.patch_embed.patch_size[0]
        patches = _patchify(x, p)                                      # [B, n, p*p*C]
        hidden = torch.rand(patches.shape[:2], generator=g) < mask_ratio
        keep = (~hidden).float()[:, :, None]
        masked_x = (_unpatchify_mask(keep, x.shape, p) * (x + 1.0)) - 1.0  # hidden patches -> background
        tokens = model.forward_features(masked_x)[:, model.num_prefix_tokens:]
        recon = model.head(tokens)
        err = ((recon - patches) ** 2).mean(-1)
        return (err * hidden).sum() / hidden.sum().clamp(min=1)
    if recipe == "contrastive":
        z1 = model.head(model.forward_head(model.forward_features(_augment(x, g)), pre_logits=True))
        z2 = model.head(model.forward_head(model.forward_features(_augment(x, g)), pre_logits=True))
        return nt_xent(z1, z2)
    raise ValueError(f"unknown pre-training recipe {recipe!r}; choose one of {RECIPES}")


def _unpatchify_mask(keep: torch.Tensor, shape, p: int) -> torch.Tensor:
    """Per-patch keep flags [B, n, 1] -> a pixel mask [B, C, H, W]."""
    B, C, H, W = shape
    m = keep.reshape(B, H // p, W // p, 1, 1).expand(B, H // p, W // p, p, p)
    return m.permute(0, 1, 3, 2, 4).reshape(B, 1, H, W).expand(B, C, H, W)


def pretrain(recipe: str, seed: int, steps: int, *, vit: Mapping | None = None, styles=None,
             lr: float = 3e-3, weight_decay: float = 0.05, batch_size: int = 128, warmup: int = 100,
             callback: Callable[[int, torch.nn.Module], None] | None = None,
             callback_every: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """Pre-train one root from scratch; returns its state dict and a few metrics.

    `callback(step, model)` runs every `callback_every` steps (and at the end), e.g. to log kurtosis.
    """
    vit = dict(vit or {})
    ds = styled_digits(tuple(styles) if styles else styled_digits().styles)
    torch.manual_seed(seed)  # timm initialises with the global generator
    model = make_vit(_head_size(recipe, ds.n_classes, vit), **vit)
    g = generator("pretrain-data", recipe, seed)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.ndim >= 2)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * min(t / steps, 1.0))))
    tr = ds.train
    for t in range(steps):
        if callback and callback_every and t % callback_every == 0:
            callback(t, model)
        idx = torch.randint(0, len(tr), (batch_size,), generator=g)
        loss = pretrain_loss(model, recipe, tr.x[idx], tr.y[idx], tr.digit[idx], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    if callback:
        callback(steps, model)
    metrics = {"pretrain_loss": float(loss.detach())}
    if recipe in ("supervised", "digits"):
        with torch.no_grad():
            pred = model(ds.test.x).argmax(1)
        target = ds.test.y if recipe == "supervised" else ds.test.digit
        metrics["pretrain_test_acc"] = float((pred == target).float().mean())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, metrics


def fresh_head(state_dict: Mapping[str, torch.Tensor], n_out: int, seed: int,
               std: float = 0.0) -> dict[str, torch.Tensor]:
    """The state dict with a new classification head: weights normal(0, std) (seeded), zero bias."""
    sd = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    d = state_dict["cls_token"].shape[-1]
    g = generator("head", seed)
    sd["head.weight"] = torch.randn(n_out, d, generator=g) * std
    sd["head.bias"] = torch.zeros(n_out)
    return sd


MODES = ("ft", "lora")


def _per_model(value, M: int, name: str) -> list:
    """One value per model: a list of M, or a single value (str or number) repeated."""
    if isinstance(value, str) or not hasattr(value, "__len__") or getattr(value, "ndim", 1) == 0:
        return [value.item() if hasattr(value, "item") else value] * M
    value = value.tolist() if hasattr(value, "tolist") else list(value)
    if len(value) != M:
        raise ValueError(f"{name}: got {len(value)} values for {M} models (give one per model, or one for all)")
    return value


def finetune(parents: Sequence[Mapping[str, torch.Tensor]], classes: Sequence[Sequence[int]],
             lr: Sequence[float], steps: Sequence[int], schedule: Sequence[str], seeds: Sequence[int], *,
             vit: Mapping | None = None, styles=None, batch_size: int = 32, weight_decay: float = 0.01,
             head_init_std: float = 0.0, device="cpu", new_head: bool = True) -> tuple[list[dict[str, torch.Tensor]], list[dict]]:
    """Fully fine-tune M models at once: `finetune_stacked` in mode "ft", returning (state dicts, metrics)."""
    sds, _, metrics = finetune_stacked(parents, classes, seeds, lr=lr, steps=steps, schedule=schedule, vit=vit,
                                       styles=styles, batch_size=batch_size, weight_decay=weight_decay,
                                       head_init_std=head_init_std, device=device, new_head=new_head)
    return sds, metrics


def finetune_stacked(parents: Sequence[Mapping[str, torch.Tensor]], classes: Sequence[Sequence[int]],
                     seeds: Sequence[int], *, lr: float | Sequence[float] = 1e-3, steps: int | Sequence[int] = 300,
                     schedule: str | Sequence[str] = "cosine", mode: str = "ft", ranks: Sequence[int] | None = None,
                     targets: Sequence[str] = ("q", "v"), head_lr_mult: float = 1.0, head_init_std: float = 0.0,
                     new_head: bool = True, vit: Mapping | None = None, styles=None, batch_size: int = 32,
                     weight_decay: float = 0.01, data_key: str = "finetune-data",
                     callback: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
                     callback_every: int = 0, eval_chunk: int = 256, retire: bool = True, device="cpu"):
    """Fine-tune M ViTs at once (torch.func.vmap), model m from parents[m] on the images of classes[m].

    Each model has its own learning rate, number of steps, schedule ("constant", "cosine", "linear") and
    seed (head init, data order from generator(data_key, seed), LoRA init); each a list of M or one value
    for all. The new head starts at normal(0, head_init_std) (0: zero init) and trains at `head_lr_mult`
    times the learning rate.

    mode "ft": every weight trains (dense AdamW). mode "lora" (LoRA, Hu et al. 2021, eq. (3) with
    alpha = r): the parent's weights are frozen and model m trains rank-ranks[m] adapters B A on the
    `targets` blocks ("q", "k", "v") of every fused qkv, plus its head; W = W_parent + B A. Adapters are
    allocated at the largest rank and masked (nets.lora.init_factors, nets.lora.merge), A initialised as
    peft does from derive_seed(seed, qkv key, block). `callback(step, params)` sees the stacked effective
    weights every `callback_every` steps and at the end. A model that has done its steps leaves the stacks
    (`retire=False`: every model runs to the longest at learning rate 0, the same weights more slowly).

    Returns (state_dicts (LoRA: merged, fp32), factors, metrics): factors is None for "ft", and for "lora"
    one {qkv key: (U [3d, r T], V [r T, d])} per model with W = W_parent + U V (T = len(targets); U holds
    B in the rows of its block, V stacks the A's); metrics are the accuracy on the test images of the
    model's own classes and the final training loss.
    """
    M = len(parents)
    if mode not in MODES:
        raise ValueError(f"unknown fine-tuning mode {mode!r}; choose one of {MODES}")
    targets = list(targets)
    if mode == "lora":
        if ranks is None:
            raise ValueError("mode 'lora' needs ranks (one LoRA rank per model)")
        ranks = [int(r) for r in _per_model(ranks, M, "ranks")]
        if not targets or len(set(targets)) != len(targets) or not set(targets) <= set("qkv"):
            raise ValueError(f"LoRA targets {targets!r}: give distinct blocks of the fused qkv, from 'q', 'k', 'v'")
    vit = dict(vit or {})
    ds = styled_digits(tuple(styles) if styles else styled_digits().styles)
    n_out = ds.n_classes
    base_lr = torch.tensor(_per_model(lr, M, "lr"), dtype=torch.float32)
    n_steps = torch.tensor(_per_model(steps, M, "steps"))
    schedules = _per_model(schedule, M, "schedule")
    bad = sorted({s for s in schedules if s not in SCHEDULES})
    if bad:
        raise ValueError(f"unknown schedule(s) {bad}; choose from {SCHEDULES}")
    sched = torch.tensor([SCHEDULES.index(s) for s in schedules])
    starts = [fresh_head(p, n_out, s, head_init_std) if new_head else dict(p) for p, s in zip(parents, seeds)]
    trainable = (lambda k: True) if mode == "ft" else (lambda k: k.startswith("head."))
    net = Stacked(lambda: make_vit(n_out, **vit), starts, device=device, trainable=trainable)
    qkv_keys = [k for k in net.keys if k.endswith("attn.qkv.weight")]
    lora, mask = {}, None
    if mode == "lora":
        if not qkv_keys:
            raise ValueError("mode 'lora': the parents have no fused attention weights (*.attn.qkv.weight)")
        d = net.params[qkv_keys[0]].shape[-1]
        for k in qkv_keys:
            for blk in targets:
                A, B, mask = init_factors(d, d, ranks, seeds=seeds, key=(k, blk), device=device)
                lora[f"{k}|{blk}|A"] = A.requires_grad_(True)
                lora[f"{k}|{blk}|B"] = B.requires_grad_(True)

    def merged(params, lora_m, mask_m):
        """Effective weights of one model: W_parent + B A on the adapted blocks of each qkv."""
        out = dict(params)
        for k in qkv_keys:
            blocks = list(split_qkv(params[k]))
            for bi, blk in enumerate("qkv"):
                if f"{k}|{blk}|A" in lora_m:
                    blocks[bi] = merge(blocks[bi], lora_m[f"{k}|{blk}|A"], lora_m[f"{k}|{blk}|B"], mask_m)
            out[k] = torch.cat(blocks, 0)
        return out

    def forward(params, lora_m, mask_m, x):
        return functional_call(net.skeleton, merged(params, lora_m, mask_m) if lora_m else params, (x,))

    if net.vit is not None:
        def batched(params, lora_m, mask_m, x):
            if lora_m:
                params = vmap(merged, in_dims=(0, 0, 0))(params, lora_m, mask_m)
            return stacked_forward(params, x, net.vit)
    else:
        batched = vmap(forward, in_dims=(0, 0, 0 if mask is not None else None, 0))
    body = {k: v for k, v in {**net.trainable(), **lora}.items() if not k.startswith("head.")}
    head = {k: v for k, v in net.trainable().items() if k.startswith("head.")}
    decay = lambda n, p: "|" in n or (n.endswith("weight") and p.ndim >= 3)
    opt = BatchedAdamW(body, weight_decay=weight_decay, decay=decay)
    opt_head = BatchedAdamW(head, weight_decay=weight_decay, decay=decay)

    # A model that has done its steps leaves the stacks (its weights and factors kept in `store`), so the
    # step works on the models still training only. A model's arithmetic does not depend on how many are
    # stacked with it, as long as they are at least two (one alone takes other kernels), so at least two
    # stay: the result is the same, bit for bit, as training all M to the longest (a finished model's
    # learning rate is 0).
    store = {k: v.detach().clone() for k, v in {**net.params, **lora}.items()}
    live = torch.arange(M)
    params, lora_live, mask_live = net.params, lora, mask

    def effective():
        with torch.no_grad():
            now = {**params, **lora_live}
            full = {k: v.index_copy(0, live, now[k].detach()) for k, v in store.items()}
            if not lora:
                return full
            return vmap(merged, in_dims=(0, 0, 0))({k: full[k] for k in net.params}, {k: full[k] for k in lora},
                                                  mask)

    tr = ds.train
    table, lens = own_class_pools(tr, classes)
    gens = [generator(data_key, s) for s in seeds]
    x_all, y_all = tr.x.to(device), tr.y.to(device)
    last_loss = torch.zeros(M)
    for t in range(int(n_steps.max())):
        if callback and callback_every and t % callback_every == 0:
            callback(t, effective())
        keep = n_steps[live] > t
        if retire and not keep.all() and int(keep.sum()) >= 2:
            gone = live[~keep]
            for k, v in {**params, **lora_live}.items():
                store[k][gone] = v.detach()[~keep]
            live = live[keep]
            params = {k: v.detach()[keep].requires_grad_(v.requires_grad) for k, v in params.items()}
            lora_live = {k: v.detach()[keep].requires_grad_(True) for k, v in lora_live.items()}
            mask_live = None if mask_live is None else mask_live[keep]
            trained = {**params, **lora_live}
            opt.select(keep, {k: trained[k] for k in opt.params})
            opt_head.select(keep, {k: trained[k] for k in opt_head.params})
            table, lens, gens = table[keep], lens[keep], [g for g, k in zip(gens, keep.tolist()) if k]
        u = torch.stack([torch.rand(batch_size, generator=g) for g in gens])    # [live, B]
        idx = table.gather(1, (u * lens[:, None]).long())
        logits = batched(params, lora_live, mask_live, x_all[idx])               # [live, B, n_out]
        per_model = F.cross_entropy(logits.flatten(0, 1), y_all[idx].flatten(), reduction="none")
        per_model = per_model.view(len(live), batch_size).mean(1)
        opt.zero_grad()
        opt_head.zero_grad()
        per_model.sum().backward()
        lr_t = lr_schedule(base_lr[live], n_steps[live], sched[live], t)
        opt.step(lr_t)
        opt_head.step(lr_t * head_lr_mult)
        last_loss[live] = torch.where(t < n_steps[live], per_model.detach().cpu(), last_loss[live])
    for k, v in {**params, **lora_live}.items():
        store[k][live] = v.detach()
    net.params = {k: store[k] for k in net.params}
    lora = {k: store[k] for k in lora}
    final = effective()
    if callback:
        callback(int(n_steps.max()), final)
    factors = None
    if mode == "lora":
        factors = [_qkv_factors(lora, qkv_keys, targets, m, ranks[m]) for m in range(M)]
        with torch.no_grad():
            for k, v in final.items():
                net.params[k] = v.detach()
    accs = evaluate(net, classes, ds.test, device, chunk=eval_chunk)
    metrics = [{"test_acc": a, "train_loss": float(lo)} for a, lo in zip(accs, last_loss)]
    return net.state_dicts(), factors, metrics


def _qkv_factors(lora: Mapping[str, torch.Tensor], qkv_keys: Sequence[str], targets: Sequence[str], m: int,
                 r: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Model m's adapters on each fused qkv as one product U V: U [3d, r T] holds each block's B in that
    block's rows (zeros elsewhere), V [r T, d] stacks the A's, so U V = the change of the fused weight."""
    out = {}
    for k in qkv_keys:
        d = lora[f"{k}|{targets[0]}|A"].shape[-1]
        U = torch.zeros(3 * d, r * len(targets))
        V = torch.zeros(r * len(targets), d)
        for ti, blk in enumerate(targets):
            bi = "qkv".index(blk)
            U[bi * d:(bi + 1) * d, ti * r:(ti + 1) * r] = lora[f"{k}|{blk}|B"][m, :, :r].detach().cpu()
            V[ti * r:(ti + 1) * r] = lora[f"{k}|{blk}|A"][m, :r].detach().cpu()
        out[k] = (U, V)
    return out


def own_class_pools(split, classes: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each model's image indices of its own classes in `split`, padded with zeros to one [M, L] table,
    and their lengths [M] (what batched sampling and evaluation index with)."""
    pools = [torch.nonzero(torch.isin(split.y, torch.as_tensor(list(c)))).flatten() for c in classes]
    lens = torch.tensor([len(p) for p in pools])
    table = torch.zeros(len(pools), max(int(lens.max()), 1), dtype=torch.long)
    for m, p in enumerate(pools):
        table[m, : len(p)] = p
    return table, lens


@torch.no_grad()
def evaluate(net: Stacked, classes: Sequence[Sequence[int]], split, device="cpu", chunk: int = 256) -> list[float]:
    """Accuracy of each stacked model on the images of its own classes, each model run alone (the module
    in eval mode, `chunk` images at a time): what a user who loads the saved weights computes, and on CPU
    ~1.5x quicker than running the stack, whose batched products and per-model LayerNorm scale and shift
    pay for batching only in training (benchmarks/bench_zoo.py --eval)."""
    if len(classes) != net.M:
        raise ValueError(f"evaluate: {len(classes)} class lists for {net.M} stacked models (one per model)")
    table, lens = own_class_pools(split, classes)
    x = split.x.to(device)
    module, was_training = net.skeleton, net.skeleton.training
    module.eval()
    correct = []
    try:
        for m in range(net.M):
            weights = {k: v[m].detach() for k, v in net.params.items()}
            idx = table[m, : int(lens[m])]
            hits = 0
            for lo in range(0, len(idx), chunk):
                ib = idx[lo:lo + chunk]
                pred = functional_call(module, weights, (x[ib.to(device)],)).argmax(-1).cpu()
                hits += int((pred == split.y[ib]).sum())
            correct.append(hits)
    finally:
        module.train(was_training)
    return (torch.tensor(correct, dtype=torch.float32) / lens.clamp(min=1)).tolist()
