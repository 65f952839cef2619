"""How the ViTs in our zoos are trained on StyledDigits: root pre-training recipes and batched fine-tuning.

Roots differ the way SupViT / DINO / MAE roots differ — in seed AND in pre-training objective:
  supervised   cross-entropy on all (digit, style) classes                      (like SupViT)
  digits       cross-entropy on digit identity only, whatever the style         (another supervised root)
  masked       reconstruct the pixels of masked patches from the rest (SimMIM)  (like MAE)
  contrastive  SimCLR: two shifted, noisy views of an image agree (NT-Xent)     (like DINO, self-supervised)
Each root keeps its pre-training head as `head.*` (shapes differ); fine-tunes replace it.

Fine-tuning trains many children at once (nets.batched): each child starts from its parent's weights
with a fresh classification head and trains on its own class subset, learning rate, number of steps,
schedule and seed.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from weightspace.data import styled_digits
from weightspace.nets.batched import SCHEDULES, BatchedAdamW, Stacked, lr_schedule
from weightspace.nets.vit import make_vit
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


def finetune(parents: Sequence[Mapping[str, torch.Tensor]], classes: Sequence[Sequence[int]],
             lr: Sequence[float], steps: Sequence[int], schedule: Sequence[str], seeds: Sequence[int], *,
             vit: Mapping | None = None, styles=None, batch_size: int = 32, weight_decay: float = 0.01,
             head_init_std: float = 0.0, device="cpu", new_head: bool = True) -> tuple[list[dict[str, torch.Tensor]], list[dict]]:
    """Fine-tune M models at once, model m from parents[m] on the images of classes[m].

    Each model has its own learning rate, number of steps, schedule ("constant", "cosine", "linear")
    and seed (head init and data order). The new head starts at normal(0, head_init_std); 0 (zero init)
    keeps the class signal in the hidden layers consistent across fine-tunes (see model_trees). Returns the M state dicts and per-model metrics (accuracy
    on the test images of its own classes, final training loss).
    """
    M = len(parents)
    vit = dict(vit or {})
    ds = styled_digits(tuple(styles) if styles else styled_digits().styles)
    n_out = ds.n_classes
    starts = [fresh_head(p, n_out, s, head_init_std) if new_head else dict(p) for p, s in zip(parents, seeds)]
    net = Stacked(lambda: make_vit(n_out, **vit), starts, device=device)
    opt = BatchedAdamW(net.trainable(), weight_decay=weight_decay, decay=lambda n, p: n.endswith("weight") and p.ndim >= 3)

    tr = ds.train
    table, lens = own_class_pools(tr, classes)
    gens = [generator("finetune-data", s) for s in seeds]
    base_lr = torch.tensor(lr, dtype=torch.float32)
    n_steps = torch.tensor(steps)
    sched = torch.tensor([SCHEDULES.index(s) for s in schedule])
    x_all, y_all = tr.x.to(device), tr.y.to(device)
    last_loss = torch.zeros(M)
    for t in range(int(n_steps.max())):
        u = torch.stack([torch.rand(batch_size, generator=g) for g in gens])    # [M, B]
        idx = table.gather(1, (u * lens[:, None]).long())
        logits = net(x_all[idx])                                                 # [M, B, n_out]
        per_model = F.cross_entropy(logits.flatten(0, 1), y_all[idx].flatten(), reduction="none")
        per_model = per_model.view(M, batch_size).mean(1)
        opt.zero_grad()
        per_model.sum().backward()
        opt.step(lr_schedule(base_lr, n_steps, sched, t))
        active = t < n_steps
        last_loss = torch.where(active, per_model.detach().cpu(), last_loss)
    accs = evaluate(net, classes, ds.test, device)
    metrics = [{"test_acc": a, "train_loss": float(l)} for a, l in zip(accs, last_loss)]
    return net.state_dicts(), metrics


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
def evaluate(net: Stacked, classes: Sequence[Sequence[int]], split, device="cpu", chunk: int = 128) -> list[float]:
    """Accuracy of each stacked model on the images of its own classes (only those are run, in chunks
    of `chunk` images per model; the padding of `own_class_pools` is not counted)."""
    table, lens = own_class_pools(split, classes)
    x = split.x.to(device)
    correct = torch.zeros(net.M)
    for lo in range(0, table.shape[1], chunk):
        ib = table[:, lo:lo + chunk]
        pred = net(x[ib.to(device)]).argmax(-1).cpu()                                  # [M, b]
        valid = torch.arange(lo, lo + ib.shape[1])[None, :] < lens[:, None]
        correct += ((pred == split.y[ib]) & valid).sum(1)
    return (correct / lens.clamp(min=1)).tolist()
