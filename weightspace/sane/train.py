"""Pre-training SANE on random windows of the token sequence (SANE, Sec. 3.3, Algorithm 1 (iv)-(v)).

Each step draws a batch of checkpoints and ONE random window per checkpoint (its own start: Sec. 3.3 "a single
window from each model"), and builds two views of it: view i the aligned (canonical) tokens, view j the tokens
of a fresh random function-preserving permutation of the same checkpoint, each with multiplicative noise
x (1 + 0.1 eps). AdamW (weight decay on matrices and embeddings only), OneCycle (pct 0.3, cosine), gradient-norm
clipping; fp32 on CPU, bf16 autocast on CUDA. Training resumes from its last checkpoint (a safetensors file of
the model and optimizer tensors plus a JSON sidecar), and every step's randomness comes from
runtime.generator(seed, step), so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from weightspace.runtime import autocast, device as pick_device, generator
from weightspace.zoo.format import sha256_file

from . import preprocess
from .model import SANE, SANEConfig, sane_loss
from .preprocess import ChainSpec, Standardizer
from .tokenize import Layout, Tokens, check_positions, tokenize

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    """One split ready for SANE: the aligned, standardised stacked state dict and its tokens, with the
    checkpoints' rows (properties) in the same order."""
    stacked: dict[str, torch.Tensor]
    tokens: Tokens
    rows: list[dict]
    spec: ChainSpec | None = None   # the permutation groups of the second view (None: noise-only views)

    def __len__(self) -> int:
        return self.tokens.tokens.shape[0]

    def column(self, name: str) -> np.ndarray:
        return np.array([r[name] for r in self.rows], dtype=float)


def prepare(splits: Mapping[str, tuple[Mapping[str, torch.Tensor], Sequence[dict]]], token_size: int | None = None,
            aligned: bool = True, reference: Mapping[str, torch.Tensor] | None = None, permute_view: bool = True,
            threshold: float = 100.0, ignore_bn: bool = True, run_key: str = "run_id", epoch_key: str = "epoch",
            seed: int = 0) -> tuple[dict[str, SplitData], Standardizer, dict]:
    """Filter -> align -> standardise (train statistics) -> tokenize every split (Sec. 3.2).

    `splits` maps a split name to (stacked state dict, rows); "train" must be one. The alignment reference is
    `reference`, else the train split's first run at its last epoch (the same for every split). Returns the
    prepared splits, the standardiser (for de-normalisation) and a report (filtered counts, reference id)."""
    if "train" not in splits:
        raise ValueError(f"prepare needs a 'train' split, got {list(splits)}")
    report: dict = {"filtered": {}}
    clean = {}
    for name, (stacked, rows) in splits.items():
        keep = preprocess.finite_checkpoints(stacked, threshold)
        report["filtered"][name] = int((~keep).sum())
        idx = keep.nonzero()[:, 0]
        clean[name] = ({k: v[idx] for k, v in stacked.items()}, [rows[i] for i in idx.tolist()])
    train_sd, train_rows = clean["train"]
    spec = preprocess.chain_spec({k: v[0] for k, v in train_sd.items()}) if (aligned or permute_view) else None
    if aligned and reference is None:
        first = train_rows[0][run_key]
        cand = [i for i, r in enumerate(train_rows) if r[run_key] == first]
        ref_i = max(cand, key=lambda i: train_rows[i][epoch_key])
        reference = {k: v[ref_i] for k, v in train_sd.items()}
        report["reference"] = {run_key: first, epoch_key: train_rows[ref_i][epoch_key]}
    lay = tokenize({k: v[0] for k, v in train_sd.items()}, token_size, ignore_bn).layout
    out = {}
    for name, (stacked, rows) in clean.items():
        if aligned:
            stacked = preprocess.align(stacked, [r[run_key] for r in rows], [r[epoch_key] for r in rows],
                                       reference, spec, seed)
        out[name] = (stacked, rows)
    std = Standardizer.fit(out["train"][0], lay)
    prepared = {}
    for name, (stacked, rows) in out.items():
        s = std.apply(stacked)
        prepared[name] = SplitData(s, tokenize(s, like=lay, lead=1), list(rows), spec if permute_view else None)
    return prepared, std, report


def views(data: SplitData, idx: torch.Tensor, window: int, gen: torch.Generator, noise: float = 0.1
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(view_i, view_j, positions, mask) [B, window, ...]: one random window per checkpoint; view i canonical,
    view j a random function-preserving permutation (when data.spec is set), both with noise x (1 + noise eps)."""
    t = data.tokens
    n = t.tokens.shape[1]
    starts = torch.randint(0, n - window + 1, (len(idx),), generator=gen)
    win = starts[:, None] + torch.arange(window)
    vi = t.tokens[idx]
    if data.spec is not None:
        perms = preprocess.random_permutations(data.spec, len(idx), gen)
        vj = tokenize(preprocess.permute({k: v[idx] for k, v in data.stacked.items()}, perms, data.spec),
                      like=t.layout, lead=1).tokens
    else:
        vj = vi
    take = lambda x: torch.take_along_dim(x, win[:, :, None], dim=1)
    vi, vj = take(vi), take(vj)
    vi = vi * (1 + noise * torch.randn(vi.shape, generator=gen))
    vj = vj * (1 + noise * torch.randn(vj.shape, generator=gen))
    return vi, vj, t.positions[win], t.mask[0][win]


def config_for(data: SplitData, window: int = 32, margin: float = 1.5, **sizes) -> SANEConfig:
    """A SANEConfig whose position tables cover this layout with room (x margin) for wider models."""
    lay, pos = data.tokens.layout, data.tokens.positions
    maxp = [math.ceil(int(pos[:, i].max() + 1) * margin) for i in range(3)]
    return SANEConfig(token_size=lay.token_size, max_positions=maxp, window=min(window, lay.n_tokens), **sizes)


def _optimizer(model: SANE, lr: float, weight_decay: float):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=lr)


def _save_checkpoint(path: Path, model, opt, step: int, history: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    meta = {"step": step, "history": history, "sha256": sha256_file(tmp)}
    tmp.replace(path)
    _atomic_text(path.with_suffix(".json"), json.dumps(meta))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _verified(path: Path, expected: str | None) -> dict[str, torch.Tensor] | None:
    """The tensors of `path` if its sha256 is the one recorded beside it, else None."""
    if not expected or not path.is_file() or sha256_file(path) != expected:
        return None
    return load_file(str(path))


def _load_checkpoint(path: Path, model, opt) -> tuple[int, dict] | None:
    """Resume from a training checkpoint whose bytes match its record; None (start over) if they do not —
    a run killed between writing the weights and their record leaves such a pair."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        meta = {}
    tensors = _verified(path, meta.get("sha256") if isinstance(meta, dict) else None)
    if tensors is None:
        log.warning("%s: does not match its record %s; training starts over", path, path.with_suffix(".json"))
        return None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    sd = opt.state_dict()
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)
    return meta["step"], meta["history"]


def train(model: SANE, data: SplitData, steps: int, batch_size: int = 32, lr: float = 1e-3,
          weight_decay: float = 3e-9, clip: float = 1.0, noise: float = 0.1, seed: int = 0,
          val: SplitData | None = None, eval_every: int = 0, halo: int = 0, checkpoint: str | Path | None = None,
          checkpoint_every: int = 500, device=None, progress: bool = True) -> dict:
    """Pre-train `model` for `steps` steps; returns the history {step, loss, contrastive, reconstruction,
    val_step, val_reconstruction, tokens_per_s}. With `checkpoint`, resumes from it and saves every
    `checkpoint_every` steps (and at the end)."""
    from tqdm.auto import tqdm

    from .embed import reconstruction_loss

    if batch_size > len(data):
        raise ValueError(f"batch_size {batch_size} > {len(data)} checkpoints in the training split")
    dev = torch.device(device) if device is not None else pick_device()
    model.to(dev)
    check_positions(data.tokens.layout, model.cfg.max_positions)
    opt = _optimizer(model, lr, weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.3,
                                                anneal_strategy="cos")
    history = {k: [] for k in ("step", "loss", "contrastive", "reconstruction", "val_step",
                               "val_reconstruction")}
    start = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.is_file():
        resumed = _load_checkpoint(ckpt, model, opt)
        if resumed is not None:
            start, history = resumed
        with warnings.catch_warnings():   # replaying the schedule without optimizer steps
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start):
                sched.step()
        log.info("resumed SANE training at step %d of %d", start, steps)
    window, t0, seen = model.cfg.window, time.perf_counter(), 0
    for step in tqdm(range(start, steps), desc="SANE", disable=not progress, initial=start, total=steps):
        model.train()
        gen = generator(seed, "sane-step", step)
        idx = torch.randperm(len(data), generator=gen)[:batch_size]
        vi, vj, pos, mask = (x.to(dev) for x in views(data, idx, window, gen, noise))
        with autocast(dev):
            out = sane_loss(model, vi, vj, pos, mask)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        seen += 2 * batch_size * window
        history["step"].append(step)
        for k in ("loss", "contrastive", "reconstruction"):
            history[k].append(float(out[k].detach()))
        last = step == steps - 1
        if val is not None and eval_every and ((step + 1) % eval_every == 0 or last):
            history["val_step"].append(step)
            history["val_reconstruction"].append(reconstruction_loss(
                model, val.tokens.tokens, val.tokens.mask[:1], val.tokens.positions, halo=halo))
        if ckpt is not None and ((step + 1) % checkpoint_every == 0 or last):
            _save_checkpoint(ckpt, model, opt, step + 1, history)
    elapsed = time.perf_counter() - t0
    history["tokens_per_s"] = seen / elapsed if seen else float("nan")
    history["seconds"] = elapsed
    return history


# ------------------------------------------------------------------------------------ a trained SANE on disk

def save(path: str | Path, model: SANE, standardizer: Standardizer, info: Mapping | None = None) -> Path:
    """A trained SANE as a folder: model.safetensors, sane.json (config, standardisation statistics, info)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(path / "model.safetensors"))
    _atomic_text(path / "sane.json", json.dumps({"config": model.cfg.to_dict(),
                                                 "standardizer": json.loads(standardizer.to_json()),
                                                 "info": dict(info or {}),
                                                 "sha256": sha256_file(path / "model.safetensors")}, indent=1))
    return path


def load(path: str | Path, lay: Layout) -> tuple[SANE, Standardizer, dict]:
    """(model, standardiser, info) of a folder written by `save`; `lay` is the zoo's token layout."""
    path = Path(path)
    meta = json.loads((path / "sane.json").read_text())
    model = SANE(SANEConfig(**meta["config"]))
    tensors = _verified(path / "model.safetensors", meta.get("sha256"))
    if tensors is None:
        raise ValueError(f"{path / 'model.safetensors'}: missing, or not the weights {path / 'sane.json'} records "
                         "(sha256 differs); train it again (notebook 10)")
    model.load_state_dict(tensors)
    if model.cfg.token_size != lay.token_size:
        raise ValueError(f"{path}: SANE trained on tokens of {model.cfg.token_size}, the zoo gives "
                         f"{lay.token_size}")
    return model.eval(), Standardizer.from_json(json.dumps(meta["standardizer"]), lay), meta["info"]


def stack(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """[M, *shape] per key from M state dicts of one architecture."""
    keys = list(state_dicts[0])
    return {k: torch.stack([sd[k] for sd in state_dicts]) for k in keys}


def load_zoo_split(zoo, ids: Sequence[str]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """(stacked state dict, rows) of zoo checkpoints `ids`, read through the format (verified)."""
    return stack([zoo.load(i) for i in ids]), [zoo.row(i) for i in ids]
