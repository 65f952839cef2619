"""The paper path: import a zoo in the Model Zoos layout (Schürholt et al., NeurIPS 2022 Datasets & Benchmarks; the
zoos SANE trains on) into the weightspace zoo format.

    <root>/<model dir>/params.json                  the run's training config (JSON)
    <root>/<model dir>/result.json                  one JSON object per line and epoch: train_acc, test_acc,
                                                    (val_acc), losses, training_iteration
    <root>/<model dir>/checkpoint_<e>/checkpoints   a torch state dict (also checkpoint_<e:06d>)

Checkpoint files are read with torch.load(weights_only=True) only: nothing in them is unpickled but tensors and
plain containers. A checkpoint's metrics come from the result line whose training_iteration equals its epoch
(the matching SANE's loader settles on: the first Ray Tune step only evaluates the untrained model); lines
without training_iteration are taken in order. Runs are shuffled with `seed` and split 70/15/15 by model, as
SANE does (its seed 42). A checkpoint with NaN or inf weights is imported as it is, with `diverged` true; a
method filters it (and says how many it dropped).
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .format import Zoo, ZooError, write_model

log = logging.getLogger(__name__)

KIND = "model-zoos"
_CKPT = re.compile(r"checkpoint_(\d+)")
# params.json keys of the Model Zoos CNN configs, mapped to our zoo's column names
CONFIG_COLUMNS = {"model::nlin": "activation", "model::init_type": "init", "optim::lr": "lr",
                  "optim::wd": "weight_decay", "optim::optimizer": "optimizer", "seed": "seed",
                  "model::dropout": "dropout", "training::batchsize": "batch_size"}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ZooError(f"{path}: missing (every model folder of a Model Zoos zoo has params.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"{path}: not valid JSON ({e})") from e


def read_results(path: Path) -> list[dict]:
    """result.json: one JSON object per line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ZooError(f"{path}: missing (every model folder of a Model Zoos zoo has result.json)") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise ZooError(f"{path}, line {i}: not valid JSON ({e})") from e
        if not isinstance(value, dict):
            raise ZooError(f"{path}, line {i}: expected a JSON object per epoch, got {type(value).__name__}")
        out.append(value)
    return out


def checkpoints(model_dir: Path) -> dict[int, Path]:
    """{epoch: checkpoint file} of one model folder (checkpoint_<e>/checkpoints, in epoch order)."""
    out = {}
    for d in sorted(Path(model_dir).iterdir()):
        m = _CKPT.fullmatch(d.name)
        if m and d.is_dir():
            f = d / "checkpoints"
            if not f.is_file():
                raise ZooError(f"{f}: missing (a Model Zoos checkpoint folder holds one file named 'checkpoints')")
            e = int(m.group(1))
            if e in out:
                raise ZooError(f"{model_dir}: two folders for epoch {e} ({out[e].parent.name}, {d.name})")
            out[e] = f
    return dict(sorted(out.items()))


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A Model Zoos checkpoint as a state dict: torch.load(weights_only=True), which refuses anything but
    tensors and plain containers; it must be a {name: tensor} mapping."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for what it refuses
        raise ZooError(f"{path}: not a loadable weights-only torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                         for k, v in sd.items()):
        raise ZooError(f"{path}: expected a state dict {{name: tensor}}, got {type(sd).__name__}"
                       + (f" with keys {list(sd)[:5]}" if isinstance(sd, Mapping) else ""))
    return {k: v.contiguous() for k, v in sd.items()}


def _metrics(results: list[dict], epoch: int, where: Path) -> dict:
    """The result line of checkpoint `epoch`: its *_acc, *_loss and training_iteration (every key any line
    has; null where this line has none)."""
    keys = {k: None for r in results for k in r if k.endswith(("_acc", "_loss")) or k == "training_iteration"}
    by_it = {int(r["training_iteration"]): r for r in results if isinstance(r.get("training_iteration"), (int, float))}
    if by_it:
        r = by_it.get(epoch)
    else:
        r = results[epoch] if epoch < len(results) else None
    if r is None:
        log.info("%s: no result line for epoch %d; its metrics are null", where, epoch)
        return keys
    return {k: (float(r[k]) if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) else None)
            for k in keys}


def model_dirs(root) -> list[Path]:
    """The model folders of a Model Zoos zoo (those with a params.json), sorted by name."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ZooError(f"{root}: not a folder (expected a Model Zoos zoo: one folder per model)")
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and (d / "params.json").exists())
    if not dirs:
        raise ZooError(f"{root}: no model folders with a params.json (is this a Model Zoos zoo?)")
    return dirs


def import_model_zoo(src, dst, *, epochs: Iterable[int] | None = None, max_models: int | None = None,
                     split: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 42, architecture: Mapping | None = None,
                     progress: bool = True) -> Zoo:
    """Import the Model Zoos zoo at `src` into a weightspace zoo at `dst` (resumable: checkpoints already
    imported are kept). One row per (model, epoch): model id `m<index>-e<epoch>`, run_id, source (the model
    folder's name), epoch, the result line's *_acc / *_loss, loss (train_loss), ggap = train_acc - test_acc,
    diverged, the params.json values named in CONFIG_COLUMNS and the whole config (`config`).
    `epochs`: keep only these epochs; `max_models`: the first models after the shuffle (SANE's max_samples)."""
    if len(split) != 3 or abs(sum(split) - 1) > 1e-6 or min(split) < 0:
        raise ValueError(f"split={split!r}: expected three fractions >= 0 summing to 1")
    dirs = model_dirs(src)
    order = np.random.default_rng(seed).permutation(len(dirs))
    dirs = [dirs[i] for i in order][:max_models]
    n = len(dirs)
    n_train, n_val = int(split[0] * n), int(split[1] * n)
    split_of = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    keep = None if epochs is None else {int(e) for e in epochs}
    params = dict(source=str(Path(src).expanduser().resolve()), epochs=None if keep is None else sorted(keep),
                  max_models=max_models, split=list(split), seed=seed)
    zoo = Zoo.create(dst, kind=KIND, builder="weightspace.zoo.modelzoos.import_model_zoo", params=params,
                     command=f"import_model_zoo({str(src)!r}, {str(dst)!r})", architecture=architecture)
    from tqdm.auto import tqdm

    for i, d in enumerate(tqdm(dirs, desc=f"importing {Path(src).name}", unit="model", disable=not progress)):
        config = _read_json(d / "params.json")
        if not isinstance(config, dict):
            raise ZooError(f"{d / 'params.json'}: expected a JSON object, got {type(config).__name__}")
        results = read_results(d / "result.json")
        ckpts = {e: f for e, f in checkpoints(d).items() if keep is None or e in keep}
        if not ckpts:
            log.warning("%s: no checkpoints%s; skipped", d, "" if keep is None else f" at epochs {sorted(keep)}")
            continue
        run = dict(run_id=f"m{i:04d}", source=d.name, split=split_of[i],
                   **{col: config[k] for k, col in CONFIG_COLUMNS.items() if k in config},
                   config={k: v for k, v in config.items() if isinstance(v, (str, int, float, bool)) or v is None})
        rows = []
        for e, f in ckpts.items():
            mid = f"{run['run_id']}-e{e:02d}"
            if mid in zoo:
                continue
            sd = load_checkpoint(f)
            m = _metrics(results, e, d / "result.json")
            diverged = not all(bool(torch.isfinite(v).all()) for v in sd.values() if v.is_floating_point())
            tr, te = m.get("train_acc"), m.get("test_acc")
            rows.append(write_model(zoo.path, mid, sd, dict(
                parent_id=None, tree_id=None, depth=0, **run, epoch=e, **m, loss=m.get("train_loss"),
                ggap=None if tr is None or te is None else tr - te, diverged=diverged)))
        zoo.record(rows)
    if len(zoo) and not zoo.manifest.get("layers"):
        first = zoo.lazy(zoo.ids[0])
        zoo.set_layers({k: first.shape(k) for k in first})
    return zoo
