"""The paper path: read a zoo in the Model Zoos layout (Schuerholt et al., NeurIPS 2022 D&B), which SANE trains on.

    <zoo>/<trial>/params.json                 the training configuration of one model
    <zoo>/<trial>/result.json                 one JSON object per line and epoch: train_acc, test_acc, val_acc, ...
    <zoo>/<trial>/checkpoint_<epoch>/checkpoints   the model's state dict at that epoch (torch.save)

The first result line evaluates the untrained model (Ray Tune's first step), so line i and checkpoint_<i> are
epoch i, with epoch 0 the initialisation (training_iteration - 1). Trials are shuffled with seed 42 and split 70 /
15 / 15 by model (Sec. 3.1). Checkpoints are read with torch's restricted loader (`weights_only=True`: tensors
and plain containers only, no code).
"""
from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_CKPT = re.compile(r"checkpoint_0*(\d+)")


class ModelZooError(ValueError):
    """A Model Zoos folder that is not what the layout says; names the file."""


def trials(root: str | Path) -> list[Path]:
    """Trial folders (those with a params.json), sorted by name."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ModelZooError(f"{root}: no such zoo folder")
    found = sorted(p.parent for p in root.glob("*/params.json"))
    if not found:
        raise ModelZooError(f"{root}: no trial folder with a params.json")
    return found


def splits(paths: Sequence[Path], fractions=(0.7, 0.15, 0.15), seed: int = 42) -> dict[str, list[Path]]:
    """Model-level train / val / test split of shuffled trials (seed 42, as the reference code)."""
    paths = list(paths)
    random.Random(seed).shuffle(paths)
    n_tr, n_va = int(len(paths) * fractions[0]), int(len(paths) * fractions[1])
    return {"train": paths[:n_tr], "val": paths[n_tr:n_tr + n_va], "test": paths[n_tr + n_va:]}


def _results(trial: Path) -> list[dict]:
    path = trial / "result.json"
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ModelZooError(f"{path}: line {i + 1} is not JSON ({e.msg})") from None
    return out


def checkpoints(trial: str | Path, epochs: Sequence[int] | None = None) -> Iterator[tuple[dict, dict]]:
    """(state dict, row) per checkpoint of one trial: row = run_id, epoch, train_acc, val_acc, test_acc, ggap
    and the trial's params (flattened as params.<key>)."""
    trial = Path(trial)
    params = json.loads((trial / "params.json").read_text())
    results = _results(trial)
    found = {int(m.group(1)): p for p in trial.iterdir() if (m := _CKPT.fullmatch(p.name))}
    for epoch in sorted(found) if epochs is None else epochs:
        if epoch not in found:
            raise ModelZooError(f"{trial}: no checkpoint_<{epoch}> folder (has epochs {sorted(found)})")
        if epoch >= len(results):
            raise ModelZooError(f"{trial / 'result.json'}: no line for epoch {epoch} ({len(results)} lines)")
        sd = torch.load(found[epoch] / "checkpoints", map_location="cpu", weights_only=True)
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ModelZooError(f"{found[epoch] / 'checkpoints'}: not a state dict of tensors")
        r = results[epoch]
        row = {"run_id": trial.name, "epoch": epoch,
               **{k: r.get(k) for k in ("train_acc", "val_acc", "test_acc")},
               "ggap": (r["train_acc"] - r["test_acc"]) if "train_acc" in r and "test_acc" in r else None,
               **{f"params.{k}": v for k, v in params.items() if isinstance(v, (int, float, str, bool))}}
        yield sd, row
