"""Language-aligned ProbeX: zero-shot model classification of LoRAs (Horwitz et al., CVPR 2025, Sec. 4.2).

Each LoRA was fine-tuned on images of ONE class. ProbeX reads X = B·A of one of its LoRA layers (no alpha
scaling) and maps it to a representation e ∈ R^{r_T} (the encoder of `model.ProbeX`, reused here without its
head). The classes are described in language: t_c is the frozen sentence embedding of "a photo of a {class}"
(CLIP ViT-L/14 in the paper; the caller computes it with any frozen encoder and passes a [C, d] tensor) and a
learned P = Linear(d → r_T) maps it into the same space. Both sides are L2-normalised and the logits are
cosine similarities, with no temperature (an option here):

    logit(X, c) = ⟨ e(X) / ‖e(X)‖ , P t_c / ‖P t_c‖ ⟩ / τ        (τ = 1 in the paper)

trained with cross-entropy over the training classes (Adam lr 2e-3, batch 128, no weight decay; the paper's
generative recipe). Two checkpoints are kept, as in the official code: the best validation accuracy (reported
in-distribution on `test`, among the training prompts) and the best `val_holdout` accuracy (reported zero-shot
on `test_holdout`, among the holdout prompts — classes whose LoRAs and prompts training never saw).

Dense, the paper's baseline, is a linear map from the flattened layer to the same r_T-d space, scored the
same way (d_H·d_W·r_T weights instead of ProbeX's d_W·r_U + d_H·r_V + r_U·r_V·r_T).
"""
from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from weightspace.runtime import device as default_device
from weightspace.runtime import generator

from .model import Dense, ProbeX, check_finite, n_params, ranks_for, stack_layer

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "val_holdout", "test_holdout")
IN_DIST = ("train", "val", "test")
HOLDOUT = ("val_holdout", "test_holdout")
TEMPLATE = "a photo of a {}"
# the paper's generative recipe (ranks of the official code), and the scaled-down one for our tiny UNet's layers
PAPER = dict(n_probes=128, proj_dim=128, rep_dim=128, lr=2e-3, batch_size=128, epochs=200, eval_every=10)
DEFAULTS = dict(n_probes=16, proj_dim=16, rep_dim=32, lr=2e-3, batch_size=128, epochs=100, eval_every=5)
RANKS = ("n_probes", "proj_dim", "rep_dim")


# ----------------------------------------------------------------------------------------------- prompts

def class_prompts(class_names: Sequence[str], template: str = TEMPLATE) -> list[str]:
    """"a photo of a {class}" for every class; a name with its own article keeps it ("an inverted two" ->
    "a photo of an inverted two"); ImageNet-style "_" become spaces."""
    names = list(class_names)
    if not names:
        raise ValueError("empty class list: no prompts to make (zero-shot needs one prompt per class)")
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{}}' for the class name")
    out = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class {i} has an empty name ({name!r}); every class needs text")
        clean = name.replace("_", " ").strip()
        own_article = re.match(r"(a|an|the)\s", clean, flags=re.I) and "a {}" in template
        out.append((template.replace("a {}", "{}") if own_article else template).format(clean))
    check_prompts(out, names)
    return out


def check_prompts(prompts: Sequence[str], class_names: Sequence[str] | None = None) -> None:
    """A prompt list must be non-empty and without duplicates (two classes with one text cannot be told
    apart by a text-side classifier)."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("empty prompt list: zero-shot needs one prompt per class")
    seen: dict[str, int] = {}
    for i, p in enumerate(prompts):
        if p in seen:
            who = (f"classes {class_names[seen[p]]!r} and {class_names[i]!r}" if class_names is not None
                   else f"entries {seen[p]} and {i}")
            raise ValueError(f"duplicated prompt {p!r}: {who} have the same text")
        seen[p] = i


def check_text(text: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
    """The [C, d] text embeddings of the classes: one finite row per class, no two rows equal."""
    if not isinstance(text, torch.Tensor) or text.ndim != 2:
        raise ValueError(f"text embeddings must be a [classes, dim] tensor, got "
                         f"{tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__}")
    if len(text) != len(class_names):
        raise ValueError(f"{len(text)} text embeddings for {len(class_names)} classes (one per class, in "
                         "class-index order)")
    text = text.detach().float().cpu()
    if not torch.isfinite(text).all():
        bad = torch.nonzero(~torch.isfinite(text).all(1)).flatten().tolist()
        raise ValueError(f"text embeddings of classes {[class_names[i] for i in bad[:5]]} are not finite")
    same = torch.cdist(text, text) <= 1e-7 * (1 + text.norm(dim=1).max())
    same.fill_diagonal_(False)
    if same.any():
        i, j = (int(v) for v in torch.nonzero(same)[0])
        raise ValueError(f"classes {class_names[i]!r} and {class_names[j]!r} have the same text embedding "
                         "(duplicated prompts?)")
    return text


# ------------------------------------------------------------------------------------------------ labels

@dataclass
class Labels:
    """Each LoRA's class (an index into `class_names`) and split; derives the training classes (those of
    train / val / test) and the holdout classes (those of val_holdout ∪ test_holdout, the zero-shot label
    space of the official code) and checks that the two are disjoint."""

    class_names: list[str]
    classes: np.ndarray          # [N] int: class index of each LoRA
    split: np.ndarray            # [N] str
    names: list[str]             # [N] a model id or file, for messages
    where: str = "zoo"

    def __post_init__(self):
        self.classes = np.asarray(self.classes, dtype=np.int64)
        self.split = np.asarray(self.split, dtype=object)
        n = len(self.classes)
        if not (len(self.split) == len(self.names) == n):
            raise ValueError(f"{self.where}: {n} classes, {len(self.split)} splits, {len(self.names)} names")
        for i in range(n):
            if self.split[i] not in SPLITS:
                raise ValueError(f"{self.where}: {self.names[i]} is in split {self.split[i]!r}; "
                                 f"zero-shot needs one of {SPLITS}")
            if not 0 <= self.classes[i] < len(self.class_names):
                raise ValueError(f"{self.where}: {self.names[i]} has class {self.classes[i]}, but there are "
                                 f"{len(self.class_names)} class names")
        if not (self.split == "train").any():
            raise ValueError(f"{self.where}: no LoRAs in the train split")
        first = {}
        for i in range(n):
            first.setdefault((int(self.classes[i]), self.split[i] in HOLDOUT), i)
        self.train_classes = sorted({int(c) for c, s in zip(self.classes, self.split) if s == "train"})
        seen = sorted({int(c) for c, s in zip(self.classes, self.split) if s in IN_DIST})
        self.holdout_classes = sorted({int(c) for c, s in zip(self.classes, self.split) if s in HOLDOUT})
        both = sorted(set(seen) & set(self.holdout_classes))
        if both:
            c = both[0]
            raise ValueError(f"{self.where}: holdout class {self.class_names[c]!r} also appears in training "
                             f"({self.names[first[(c, False)]]} in {self.split[first[(c, False)]]}, "
                             f"{self.names[first[(c, True)]]} in {self.split[first[(c, True)]]}); "
                             f"{len(both)} such classes — zero-shot classes must have no training LoRAs")
        unseen = sorted(set(seen) - set(self.train_classes))
        if unseen:
            c = unseen[0]
            raise ValueError(f"{self.where}: class {self.class_names[c]!r} has val/test LoRAs "
                             f"({self.names[first[(c, False)]]}) but no train LoRAs; in-distribution classes "
                             "are the training classes (put its LoRAs in a holdout split instead)")
        self._local = {c: i for i, c in enumerate(self.train_classes)}
        self._local.update({c: i for i, c in enumerate(self.holdout_classes)})

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        return np.flatnonzero(self.split == split)

    def candidates(self, split: str) -> list[int]:
        """The classes a LoRA of `split` is classified among: the training classes, or the holdout classes."""
        return self.holdout_classes if split in HOLDOUT else self.train_classes

    def targets(self, split: str) -> torch.Tensor:
        """int64 [n]: each LoRA's position in `candidates(split)`."""
        return torch.tensor([self._local[int(c)] for c in self.classes[self.index(split)]], dtype=torch.long)

    @property
    def has_holdout(self) -> bool:
        return all(len(self.index(s)) for s in HOLDOUT)

    def chance(self, split: str) -> float:
        return 1.0 / len(self.candidates(split))


# ------------------------------------------------------------------------------------- LoRA layers of a zoo

def module_type(stem: str) -> str:
    """"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q" -> "attn2.to_q"."""
    m = re.search(r"(attn\d)\.(to_[qkv]|to_out\.0)$", stem)
    return f"{m.group(1)}.{m.group(2)}" if m else stem.rsplit(".", 1)[-1]


def side(stem: str) -> str:
    """"text" for the cross-attention key / value (their input is the prompt's token states), else "image"."""
    return "text" if module_type(stem) in ("attn2.to_k", "attn2.to_v") else "image"


class ZooLoras:
    """The labelled LoRAs of a zoo (read through the zoo format): `labels`, the LoRA layers `layers` (module
    stems in sorted key order, the paper's layer indexing) and `X(stem)` [N, d_out, d_in] = B·A, read once."""

    def __init__(self, zoo, ids: Sequence[str] | None = None):
        self.zoo = zoo
        if ids is None:
            ids = [i for i in zoo.labelled() if zoo.row(i)["split"] in SPLITS]
        self.ids = list(ids)
        if not self.ids:
            raise ValueError(f"{zoo.path}: no labelled LoRAs in a data split")
        self.labels = Labels(zoo.class_names, zoo.class_index(self.ids).numpy(),
                             [zoo.row(i)["split"] for i in self.ids], self.ids, where=str(zoo.path))
        self.layers = zoo.lora_modules()
        if not self.layers:
            raise ValueError(f"{zoo.path}: the zoo's files hold no LoRA factors (no `lora` layout or no keys)")
        self._cache: dict[str, torch.Tensor] = {}

    def X(self, stem: str) -> torch.Tensor:
        if stem not in self.layers:
            raise ValueError(f"{self.zoo.path}: no LoRA layer {stem!r}; have {self.layers[:4]}... "
                             f"({len(self.layers)} layers)")
        if stem not in self._cache:
            self._cache[stem] = stack_layer(self.zoo.lora_layer(stem, self.ids),
                                            name=f"{self.zoo.path}: LoRA layer {stem!r}")
        return self._cache[stem]


# -------------------------------------------------------------------------------------------------- model

class Aligned(nn.Module):
    """A weight encoder and a text projection P in one r_T-d space; logits = cosines (/ τ if given)."""

    def __init__(self, encoder: nn.Module, text_dim: int, rep_dim: int, temperature: float | None = None):
        super().__init__()
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be > 0 (or None for the paper's plain cosines), got {temperature}")
        self.encoder = encoder
        self.text_proj = nn.Linear(text_dim, rep_dim)
        self.temperature = temperature

    def represent(self, X: torch.Tensor) -> torch.Tensor:
        """The unnormalised representation e [B, r_T] (the paper's frozen feature for downstream tasks)."""
        return self.encoder(X)

    def embed(self, X: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(X), dim=-1)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text), dim=-1)

    def forward(self, X: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        logits = self.embed(X) @ self.embed_text(text).T
        return logits / self.temperature if self.temperature else logits

    @property
    def n_weight_params(self) -> int:
        return n_params(self.encoder)

    @property
    def n_text_params(self) -> int:
        return n_params(self.text_proj)


def make_aligned(kind: str, d_H: int, d_W: int, text_dim: int, *, n_probes: int = 16, proj_dim: int = 16,
                 rep_dim: int = 32, temperature: float | None = None) -> Aligned:
    """"probex": ProbeX's encoder e = Σ_l M_l ReLU(Vᵀ X u_l) + b (ranks clipped to the layer's sides, its
    head removed); "dense": e = W vec(X) + b."""
    if kind == "probex":
        r = ranks_for((d_H, d_W), dict(n_probes=n_probes, proj_dim=proj_dim))
        enc = ProbeX(d_H, d_W, rep_dim=rep_dim, out_dim=1, **r)
        enc.head = nn.Identity()
    elif kind == "dense":
        enc = Dense(d_H, d_W, out_dim=rep_dim)
    else:
        raise ValueError(f"unknown model kind {kind!r}; choose 'probex' or 'dense'")
    return Aligned(enc, text_dim, rep_dim, temperature)


# ----------------------------------------------------------------------------------------------- training

@dataclass
class ZeroShotFit:
    """A trained aligned expert: the in-distribution checkpoint (best val) and the zero-shot one (best
    val_holdout), with the numbers of each."""

    model: Aligned                       # holds the in-distribution checkpoint
    zs_state: dict | None                # state dict of the zero-shot checkpoint
    acc: dict                            # split -> top-1 (val/test: in-dist ckpt; holdout splits: zero-shot ckpt)
    best_epoch: int
    best_epoch_zs: int | None
    n_weight_params: int
    n_text_params: int
    seconds: float
    history: list = field(default_factory=list)   # [(epoch, train_loss, val_acc, val_holdout_acc)]

    @property
    def n_params(self) -> int:
        return self.n_weight_params + self.n_text_params

    def zeroshot_model(self) -> Aligned:
        if self.zs_state is None:
            raise ValueError("this fit had no holdout LoRAs, so it has no zero-shot checkpoint")
        m = copy.deepcopy(self.model)
        m.load_state_dict(self.zs_state)
        return m


@torch.no_grad()
def _scores(model: Aligned, X: torch.Tensor, text: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    model.eval()
    dev = next(model.parameters()).device
    T = text.to(dev)
    return torch.cat([model(X[i:i + chunk].to(dev), T).float().cpu() for i in range(0, len(X), chunk)])


def top1(scores: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of [n, C] scores against int targets (ties go to the lower index, as argmax)."""
    return float((scores.argmax(1) == y).float().mean())


def _check_cfg(cfg: Mapping) -> dict:
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown zero-shot setting(s) {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **cfg}
    for k in ("n_probes", "proj_dim", "rep_dim", "batch_size", "epochs", "eval_every"):
        if not isinstance(cfg[k], int) or isinstance(cfg[k], bool) or cfg[k] < 1:
            raise ValueError(f"{k}={cfg[k]!r}: must be a whole number >= 1")
    if not (isinstance(cfg["lr"], (int, float)) and np.isfinite(cfg["lr"]) and cfg["lr"] > 0):
        raise ValueError(f"lr={cfg['lr']!r}: must be a finite number > 0")
    return cfg


def fit_zeroshot(kind: str, X: torch.Tensor, labels: Labels, text: torch.Tensor, *, seed: int = 0,
                 temperature: float | None = None, zeroshot_checkpoint: str = "val_holdout", device=None,
                 **config) -> ZeroShotFit:
    """Train a "probex" or "dense" aligned expert on the LoRA layer X [N, d_H, d_W] (rows as in `labels`)
    with the class texts `text` [C, d] (rows as in `labels.class_names`); config: DEFAULTS's keys.

    zeroshot_checkpoint  "val_holdout": the paper's, the checkpoint with the best val_holdout accuracy;
                         "val": the in-distribution checkpoint serves zero-shot too, so no holdout LoRA
                         influences any choice. val_holdout and test_holdout share their classes, so with few
                         holdout classes the paper's choice alone lifts even a model that learned nothing
                         above chance (picking, among the checkpoints' chance assignments of holdout clusters
                         to prompts, the one that fits val_holdout).
    """
    return fit_many(kind, [X], [labels], text, [seed], temperature=temperature,
                    zeroshot_checkpoint=zeroshot_checkpoint, device=device, **config)[0]


def fit_many(kind: str, Xs: Sequence[torch.Tensor], labels: Sequence[Labels], text: torch.Tensor,
             seeds: Sequence[int], *, temperature: float | None = None, zeroshot_checkpoint: str = "val_holdout",
             device=None, **config) -> list[ZeroShotFit]:
    """Several independent `fit_zeroshot`s in one batched training loop (torch.func.vmap over stacked
    parameters): member k reads layer Xs[k] with labels[k] and seed seeds[k]. Members share the layer shape, the
    splits and the class sets; each has its own initialisation, data order, loss, Adam moments (Adam is
    element-wise, so one Adam over the stacked tensors is K Adams) and checkpoints, so each equals its lone fit."""
    from torch.func import functional_call, stack_module_state, vmap

    cfg = _check_cfg(config)
    if zeroshot_checkpoint not in ("val_holdout", "val"):
        raise ValueError(f"zeroshot_checkpoint={zeroshot_checkpoint!r}: choose 'val_holdout' (the paper's) or 'val'")
    K = len(Xs)
    if not K or len(labels) != K or len(seeds) != K:
        raise ValueError(f"fit_many: {K} layers, {len(labels)} label sets and {len(seeds)} seeds (one of each per "
                         "member, at least one)")
    lab0 = labels[0]
    for lab in labels[1:]:
        if (lab.train_classes, lab.holdout_classes) != (lab0.train_classes, lab0.holdout_classes) \
                or not np.array_equal(lab.split, lab0.split):
            raise ValueError(f"fit_many: {lab.where} has other splits or class sets than {lab0.where}")
    for X, lab in zip(Xs, labels):
        if X.ndim != 3 or len(X) != len(lab) or X.shape != Xs[0].shape:
            raise ValueError(f"X must be [N={len(lab)}, d_H, d_W] (one layer of every LoRA), the same for every "
                             f"member; got {tuple(X.shape)} (first {tuple(Xs[0].shape)})")
        check_finite(X, f"{lab.where}: LoRA layer")
    text = check_text(text, lab0.class_names)
    dev = torch.device(device) if device is not None else default_device()
    models = []
    for seed in seeds:
        torch.manual_seed(seed)   # PyTorch's default init draws from the global generator
        models.append(make_aligned(kind, Xs[0].shape[1], Xs[0].shape[2], text.shape[1], temperature=temperature,
                                   **{k: cfg[k] for k in RANKS}).to(dev))
    params, buffers = stack_module_state(models)
    shell = copy.deepcopy(models[0]).to("meta")
    fwd = vmap(lambda p, b, X, T: functional_call(shell, (p, b), (X, T)), in_dims=(0, 0, 0, None))
    idx = {s: torch.from_numpy(lab0.index(s)) for s in SPLITS}
    split_X = {s: torch.stack([X[idx[s]] for X in Xs]).float() for s in SPLITS}           # [K, n_s, d_H, d_W]
    split_y = {s: torch.stack([lab.targets(s) for lab in labels]) for s in SPLITS}        # [K, n_s]
    split_T = {s: text[lab0.candidates(s)].to(dev) for s in SPLITS}
    Xtr, ytr = split_X["train"].to(dev), split_y["train"].to(dev)
    holdout = lab0.has_holdout
    opt = torch.optim.Adam(params.values(), lr=cfg["lr"])
    gens = [generator("probex-zeroshot", s) for s in seeds]
    members = torch.arange(K, device=dev)[:, None]

    @torch.no_grad()
    def accs(split, chunk=256):
        if not split_X[split].shape[1]:
            return np.full(K, np.nan)
        preds = [fwd(params, buffers, split_X[split][:, i:i + chunk].to(dev), split_T[split]).argmax(-1).cpu()
                 for i in range(0, split_X[split].shape[1], chunk)]
        return (torch.cat(preds, 1) == split_y[split]).float().mean(1).numpy()

    def snapshot(k):
        return {name: t[k].detach().clone() for name, t in params.items()}

    best = [(-1.0, -1, None)] * K
    best_zs = [(-1.0, None, None)] * K
    history = [[] for _ in range(K)]
    t0 = time.time()
    n, bs = Xtr.shape[1], cfg["batch_size"]
    for epoch in range(cfg["epochs"]):
        order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(dev)     # [K, n]
        total = torch.zeros(K)
        for lo in range(0, n, bs):
            b = order[:, lo:lo + bs]
            logits = fwd(params, buffers, Xtr[members, b], split_T["train"])            # [K, b, C]
            losses = F.cross_entropy(logits.flatten(0, 1), ytr.gather(1, b).flatten(),
                                     reduction="none").view(K, -1).mean(1)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            total += losses.detach().cpu() * b.shape[1]
        if epoch % cfg["eval_every"] == 0 or epoch == cfg["epochs"] - 1:
            val = accs("val") if split_X["val"].shape[1] else accs("train")   # no val LoRAs: the train fit
            val_zs = accs("val_holdout") if holdout else np.full(K, np.nan)
            for k in range(K):
                history[k].append((epoch, float(total[k]) / n, float(val[k]), float(val_zs[k])))
                if val[k] > best[k][0]:
                    best[k] = (float(val[k]), epoch, snapshot(k))
                if holdout and val_zs[k] > best_zs[k][0]:
                    best_zs[k] = (float(val_zs[k]), epoch, snapshot(k))
    seconds = (time.time() - t0) / K
    fits = []
    for k, model in enumerate(models):
        zs = best[k] if zeroshot_checkpoint == "val" else best_zs[k]
        acc = {s: float("nan") for s in HOLDOUT}
        sx = {s: split_X[s][k] for s in SPLITS}
        if holdout:
            model.load_state_dict(zs[2])
            acc = {s: top1(_scores(model, sx[s], split_T[s]), split_y[s][k]) for s in HOLDOUT}
        model.load_state_dict(best[k][2])
        acc.update({s: top1(_scores(model, sx[s], split_T[s]), split_y[s][k]) if sx[s].shape[0] else float("nan")
                    for s in IN_DIST})
        fits.append(ZeroShotFit(model=model, zs_state=zs[2] if holdout else None, acc=acc, best_epoch=best[k][1],
                                best_epoch_zs=zs[1] if holdout else None, n_weight_params=model.n_weight_params,
                                n_text_params=model.n_text_params, seconds=seconds, history=history[k]))
    return fits


# ------------------------------------------------------------------------------------------ the layer sweep

def layer_sweep(data, text: torch.Tensor, layers: Sequence[str] | None = None, *,
                kinds: Sequence[str] = ("probex", "dense"), seeds: Sequence[int] = (0,),
                temperature: float | None = None, zeroshot_checkpoint: str = "val_holdout", progress: bool = True,
                **config) -> pd.DataFrame:
    """One row per (layer, kind, seed): accuracies of every split (val/test in-distribution; val_holdout /
    test_holdout zero-shot), parameter counts, the layer's shape, module type and side. `data` is any object
    with `labels`, `layers` and `X(stem)` (`ZooLoras`, `SDLoraFolder`). Fits of one kind and layer shape train
    together (`fit_many`)."""
    layers = list(data.layers if layers is None else layers)
    if not layers:
        raise ValueError("no layers to sweep (an empty layer list)")
    unknown = [l for l in layers if l not in data.layers]
    if unknown:
        raise ValueError(f"unknown LoRA layer(s) {unknown[:3]}; the LoRAs have {len(data.layers)} layers, "
                         f"e.g. {data.layers[:2]}")
    return fit_jobs(data, text, [(l, k, s) for l in layers for k in kinds for s in seeds], temperature=temperature,
                    zeroshot_checkpoint=zeroshot_checkpoint, progress=progress, **config)


def fit_jobs(data, text: torch.Tensor, jobs: Sequence[tuple[str, str, int]], *, labels=None,
             max_bytes: float = 2.5e8, progress: bool = True, **options) -> pd.DataFrame:
    """Fit every (layer, kind, seed) of `jobs` (with `labels`, default data.labels; a callable seed -> Labels
    gives each seed its own), batched by kind and layer shape in groups of at most `max_bytes` of stacked
    layers; one row per job, in job order."""
    label_of = labels if callable(labels) else (lambda seed: labels or data.labels)
    groups: dict = {}
    for j, (layer, kind, seed) in enumerate(jobs):
        groups.setdefault((kind, tuple(data.X(layer).shape)), []).append(j)
    batches = []
    for (kind, shape), js in groups.items():
        per = max(1, int(max_bytes // (4 * np.prod(shape))))
        batches += [(kind, js[i:i + per]) for i in range(0, len(js), per)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="zero-shot fits", unit="fit")
    rows = {}
    for kind, js in batches:
        fits = fit_many(kind, [data.X(jobs[j][0]) for j in js], [label_of(jobs[j][2]) for j in js], text,
                        [jobs[j][2] for j in js], **options)
        for j, f in zip(js, fits):
            layer, _, seed = jobs[j]
            X = data.X(layer)
            rows[j] = dict(layer=layer, index=data.layers.index(layer), module=module_type(layer), side=side(layer),
                           shape=f"{X.shape[1]}x{X.shape[2]}", kind=kind, seed=seed, **f.acc,
                           n_weight_params=f.n_weight_params, n_text_params=f.n_text_params, n_params=f.n_params,
                           seconds=f.seconds)
        if bar is not None:
            bar.update(len(js))
    if bar is not None:
        bar.close()
    return pd.DataFrame([rows[j] for j in range(len(jobs))])


def choose_layer(sweep: pd.DataFrame, kind: str, on: str = "val", among: Sequence[str] | None = None) -> str:
    """The layer with the best seed-mean accuracy on a validation split ("val" for in-distribution,
    "val_holdout" for zero-shot), never on a test split; `among` restricts the candidates (e.g. one side)."""
    if on not in ("val", "val_holdout"):
        raise ValueError(f"choose a layer on 'val' or 'val_holdout', not {on!r} (test splits are for reporting)")
    s = sweep[sweep.kind == kind]
    if among is not None:
        s = s[s.layer.isin(list(among))]
    if s.empty:
        raise ValueError(f"no sweep rows for kind {kind!r}" + (f" among {list(among)[:3]}" if among else ""))
    means = s.groupby("layer", sort=False)[on].mean()
    if means.isna().all():
        raise ValueError(f"no {on!r} accuracies in the sweep (no such LoRAs)")
    return str(means.idxmax())


def summarize(sweep: pd.DataFrame, layer: str, kind: str) -> dict:
    """Seed mean and std of every accuracy of one (layer, kind), with its parameter counts."""
    s = sweep[(sweep.layer == layer) & (sweep.kind == kind)]
    if s.empty:
        raise ValueError(f"no sweep rows for layer {layer!r}, kind {kind!r}")
    out = {"layer": layer, "kind": kind, "seeds": int(len(s)), "n_params": int(s.n_params.iloc[0]),
           "n_weight_params": int(s.n_weight_params.iloc[0]), "n_text_params": int(s.n_text_params.iloc[0])}
    for split in SPLITS:
        out[split] = float(s[split].mean())
        out[split + "_std"] = float(s[split].std(ddof=0))
    return out


# ------------------------------------------------------------------- the experiment of the paper's Table

GOALS = {"in_dist": ("val", "test"), "zero_shot": ("val_holdout", "test_holdout")}   # choose on, report on


def permuted(labels: Labels, seed: int = 0) -> Labels:
    """The same LoRAs with the classes of the train, val and test LoRAs each shuffled within their split
    (holdout labels kept; every split keeps its classes): a control in which weights carry no information
    about the training labels."""
    rng = np.random.default_rng(seed)
    classes = labels.classes.copy()
    for split in IN_DIST:
        ind = labels.index(split)
        classes[ind] = rng.permutation(classes[ind])
    return Labels(labels.class_names, classes, labels.split, labels.names, where=f"{labels.where} (permuted)")


def run_zeroshot(data, text: torch.Tensor, *, kinds: Sequence[str] = ("probex", "dense"),
                 sides: Sequence[str] = ("any", "image", "text"), seeds: Sequence[int] = (0, 1, 2),
                 sweep_seeds: Sequence[int] = (0,), progress: bool = True, **config) -> dict:
    """The layer sweep (every LoRA layer, `sweep_seeds`), then for each kind, side ("any", or only the
    image-side / text-side layers) and goal (in-distribution / zero-shot) the layer chosen on validation
    (val / val_holdout) re-fit with every seed. Returns {"sweep": all fits, "chosen": {(kind, side, goal):
    layer}, "table": one record per (side, kind) with seed means and stds, parameters and chance}."""
    sweep = layer_sweep(data, text, kinds=kinds, seeds=sweep_seeds, progress=progress, **config)
    chosen = {}
    for kind in kinds:
        for sd in sides:
            among = [l for l in data.layers if sd == "any" or side(l) == sd]
            if not among:
                continue
            for goal, (on, _) in GOALS.items():
                chosen[(kind, sd, goal)] = choose_layer(sweep, kind, on, among=among)
    extra = [s for s in seeds if s not in sweep_seeds]
    todo = sorted({(layer, kind) for (kind, _, _), layer in chosen.items()})
    if extra:
        more = fit_jobs(data, text, [(layer, kind, s) for layer, kind in todo for s in extra], progress=False,
                        **config)
        sweep = pd.concat([sweep, more], ignore_index=True)
    seeded = sweep[sweep.seed.isin(list(seeds))]
    table = []
    for (kind, sd, goal), layer in chosen.items():
        on, report = GOALS[goal]
        s = summarize(seeded, layer, kind)
        table.append(dict(side=sd, kind=kind, goal=goal, layer=layer, module=module_type(layer),
                          shape=seeded[seeded.layer == layer]["shape"].iloc[0], acc=s[report], std=s[report + "_std"],
                          val=s[on], seeds=s["seeds"], n_params=s["n_params"], n_weight_params=s["n_weight_params"],
                          chance=data.labels.chance(report)))
    return {"sweep": sweep, "chosen": chosen, "table": pd.DataFrame(table)}


def controls(data, text: torch.Tensor, layer: str, *, seeds: Sequence[int] = (0, 1, 2),
             temperature: float = 0.1, **config) -> pd.DataFrame:
    """ProbeX on one layer under variations of the protocol, seed means of in-distribution (test) and
    zero-shot (test_holdout) top-1:
      paper          the zero-shot checkpoint chosen on val_holdout (the official code);
      strict         the in-distribution checkpoint serves zero-shot too (no holdout LoRA chooses anything);
      temperature    cosines / τ (not the paper's);
      permuted       training labels shuffled, paper's protocol: the floor its checkpoint choice alone reaches;
      permuted strict  the same under the strict protocol: chance."""
    runs = {"paper": dict(), "strict": dict(zeroshot_checkpoint="val"), f"temperature {temperature:g}":
            dict(temperature=temperature), "permuted": dict(labels=True),
            "permuted strict": dict(labels=True, zeroshot_checkpoint="val")}
    rows = []
    for name, opts in runs.items():
        opts = dict(opts)
        labels = (lambda s: permuted(data.labels, s)) if opts.pop("labels", False) else None
        fits = fit_jobs(data, text, [(layer, "probex", s) for s in seeds], labels=labels, progress=False,
                        **opts, **config)
        rows.append(dict(protocol=name, in_dist=float(fits.test.mean()), in_dist_std=float(fits.test.std(ddof=0)),
                         zero_shot=float(fits.test_holdout.mean()),
                         zero_shot_std=float(fits.test_holdout.std(ddof=0))))
    return pd.DataFrame(rows)
