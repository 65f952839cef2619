"""SANE's small CNNs ("CNN-s", Schürholt et al. 2022/2024, Model Zoos Sec. 3) adapted to 8x8 digits, and their
batched training with a checkpoint of every model at every epoch.

CNN_S: Conv(1->8, k3, p1)-MaxPool2-act-Conv(8->6, k3, p1)-MaxPool2-act-Flatten(24)-Linear(24->20)-act-Linear(20->10),
1,228 parameters. The paper's CNN-s (28x28 MNIST) has k5 convolutions and a third conv layer; at 8x8 two
k3 blocks leave a 2x2 map. As there, each block pools before its activation (the same function for a monotone
activation, and a quarter of the activation's work). State-dict keys run in forward order (conv1, conv2, fc1, fc2: weight then bias),
which is the order SANE tokenizes in. Weights take a named initialisation, biases 0.01 (the zoo recipe).

Many models train at once: their parameters are stacked on a leading [M] axis, the convolutions run as one
grouped convolution (one group per model) and the linear layers as batched matmuls; nets.batched.BatchedAdamW
(elementwise, so exactly M independent Adams) steps them. Each model draws its own batches from its own seed,
so a batched run equals training the models one at a time (tests/test_cnn.py).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from weightspace.nets.batched import SCHEDULES, BatchedAdamW, lr_schedule
from weightspace.runtime import generator

log = logging.getLogger(__name__)

CNN_S = dict(in_chans=1, img_size=8, channels=[8, 6], kernel=3, hidden=20, num_classes=10, activation="tanh")
ACTIVATIONS: dict[str, tuple[type[nn.Module], Callable]] = {
    "tanh": (nn.Tanh, torch.tanh), "relu": (nn.ReLU, F.relu), "gelu": (nn.GELU, F.gelu),
    "sigmoid": (nn.Sigmoid, torch.sigmoid), "leaky_relu": (nn.LeakyReLU, F.leaky_relu),
}
# weight initialisations of the Model Zoos grid ("uniform" is U(0, 1) and "normal" N(0, 1), as torch.nn.init's
# defaults there), plus the Xavier ones and torch's own layer default ("default": kaiming_uniform(a=sqrt 5),
# bias U(+-1/sqrt(fan_in)))
INITS = ("uniform", "normal", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "default")
BIAS_INIT = 0.01
METRICS = ("train_acc", "train_loss", "val_acc", "val_loss", "test_acc", "test_loss")


def resolve_cfg(cfg: Mapping | None = None, **overrides) -> dict:
    """CNN_S overridden by `cfg` and `overrides`, checked (unknown keys, sizes, activation)."""
    c = {**CNN_S, **dict(cfg or {}), **overrides}
    unknown = sorted(set(c) - set(CNN_S))
    if unknown:
        raise ValueError(f"unknown CNN setting(s) {unknown}; known: {sorted(CNN_S)}")
    if c["activation"] not in ACTIVATIONS:
        raise ValueError(f"activation={c['activation']!r}: choose one of {sorted(ACTIVATIONS)}")
    for k in ("in_chans", "img_size", "kernel", "hidden", "num_classes"):
        if not isinstance(c[k], int) or isinstance(c[k], bool) or c[k] < 1:
            raise ValueError(f"{k}={c[k]!r}: expected a positive integer")
    ch = c["channels"]
    if not isinstance(ch, (list, tuple)) or not ch or not all(isinstance(x, int) and x >= 1 for x in ch):
        raise ValueError(f"channels={ch!r}: expected a non-empty list of positive integers")
    if c["kernel"] % 2 != 1:
        raise ValueError(f"kernel={c['kernel']}: expected an odd size (padding keeps the map size)")
    if c["img_size"] % (2 ** len(ch)):
        raise ValueError(f"img_size={c['img_size']} cannot be halved {len(ch)} times (one 2x2 max-pool per conv)")
    c["channels"] = list(ch)
    return c


def _flat(c: Mapping) -> int:
    return c["channels"][-1] * (c["img_size"] // 2 ** len(c["channels"])) ** 2


def make_cnn(**cfg) -> nn.Module:
    """The CNN as a plain nn.Sequential (keys conv1.weight, conv1.bias, ..., fc2.bias in forward order)."""
    c = resolve_cfg(cfg)
    act = ACTIVATIONS[c["activation"]][0]
    layers, c_in = OrderedDict(), c["in_chans"]
    for i, c_out in enumerate(c["channels"], 1):
        layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, c["kernel"], padding=c["kernel"] // 2)
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        layers[f"act{i}"] = act()
        c_in = c_out
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(_flat(c), c["hidden"])
    layers[f"act{len(c['channels']) + 1}"] = act()
    layers["fc2"] = nn.Linear(c["hidden"], c["num_classes"])
    return nn.Sequential(layers)


def param_shapes(cfg: Mapping | None = None) -> dict[str, tuple[int, ...]]:
    """{key: shape} of make_cnn's state dict, in forward order."""
    return {k: tuple(v.shape) for k, v in make_cnn(**resolve_cfg(cfg)).to("meta").state_dict().items()}


def _init_weight(w: torch.Tensor, init: str, g: torch.Generator) -> None:
    if init == "uniform":
        nn.init.uniform_(w, 0.0, 1.0, generator=g)
    elif init == "normal":
        nn.init.normal_(w, 0.0, 1.0, generator=g)
    elif init == "default":
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
    else:
        getattr(nn.init, init + "_")(w, generator=g)


def init_params(cfg: Mapping | None, seeds: Sequence[int], init: str | Sequence[str] = "kaiming_uniform"
                ) -> list[dict[str, torch.Tensor]]:
    """One freshly initialised state dict per seed (deterministic in the seed): weights by `init` (one name,
    or one per seed), biases 0.01 (torch's uniform bias for "default")."""
    c = resolve_cfg(cfg)
    inits = [init] * len(seeds) if isinstance(init, str) else list(init)
    if len(inits) != len(seeds):
        raise ValueError(f"init: {len(inits)} names for {len(seeds)} seeds")
    bad = sorted({i for i in inits if i not in INITS})
    if bad:
        raise ValueError(f"init {bad}: choose from {INITS}")
    shapes = param_shapes(c)
    out = []
    with torch.no_grad():
        for seed, name in zip(seeds, inits):
            g = generator("cnn-init", int(seed))
            sd = {}
            for k, shape in shapes.items():
                t = torch.empty(shape)
                if k.endswith(".weight"):
                    _init_weight(t, name, g)
                elif name == "default":
                    fan_in = math.prod(shapes[k[: -len("bias")] + "weight"][1:])
                    nn.init.uniform_(t, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=g)
                else:
                    t.fill_(BIAS_INIT)
                sd[k] = t
            out.append(sd)
    return out


def stack_params(params: Sequence[Mapping[str, torch.Tensor]], cfg: Mapping | None = None,
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """M state dicts -> {key: [M, ...]} float32, each checked against the architecture (a clear error names
    the model and the key)."""
    if not params:
        raise ValueError("no models given (params is empty)")
    shapes = param_shapes(cfg)
    for m, sd in enumerate(params):
        missing, extra = [k for k in shapes if k not in sd], [k for k in sd if k not in shapes]
        if missing or extra:
            raise ValueError(f"model {m}: state dict does not fit the CNN {resolve_cfg(cfg)}: missing {missing}, "
                             f"unexpected {extra}")
        for k, shape in shapes.items():
            if tuple(sd[k].shape) != shape:
                raise ValueError(f"model {m}: {k} has shape {tuple(sd[k].shape)}, the CNN expects {shape}")
    return {k: torch.stack([sd[k].detach().to(torch.float32) for sd in params]).to(device).contiguous()
            for k in shapes}


def unstack(stacked: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """{key: [M, ...]} -> M plain CPU state dicts (copies)."""
    s = {k: v.detach().to("cpu") for k, v in stacked.items()}
    M = next(iter(s.values())).shape[0]
    return [{k: v[m].clone() for k, v in s.items()} for m in range(M)]


def _pool(h: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool; without autograd as three elementwise maxima of strided views (faster here than
    max_pool2d, which also builds indices), the same values."""
    if torch.is_grad_enabled() and h.requires_grad:
        return F.max_pool2d(h, 2)
    return torch.maximum(torch.maximum(h[..., 0::2, 0::2], h[..., 0::2, 1::2]),
                         torch.maximum(h[..., 1::2, 0::2], h[..., 1::2, 1::2]))


def forward_stacked(P: Mapping[str, torch.Tensor], x: torch.Tensor, cfg: Mapping) -> torch.Tensor:
    """Logits [M, B, classes] of M stacked CNNs. x: [M, B, C, H, W] (model m sees x[m]) or [B, C, H, W] (all
    models see the same images: the first convolution is then one ordinary convolution over M*C_out maps)."""
    act = ACTIVATIONS[cfg["activation"]][1]
    n_conv = len(cfg["channels"])
    M = P["conv1.weight"].shape[0]
    if x.ndim == 4:
        B = x.shape[0]
        h = x
        first_groups = 1
    else:
        B = x.shape[1]
        h = x.transpose(0, 1).reshape(B, -1, *x.shape[-2:])
        first_groups = M
    pad = cfg["kernel"] // 2
    for i in range(1, n_conv + 1):
        w, b = P[f"conv{i}.weight"], P[f"conv{i}.bias"]
        h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), padding=pad,
                     groups=first_groups if i == 1 else M)
        h = act(_pool(h))
    h = h.reshape(B, M, -1).transpose(0, 1)                               # [M, B, flat], per-model (C, H, W) order
    h = act(torch.baddbmm(P["fc1.bias"].unsqueeze(1), h, P["fc1.weight"].transpose(1, 2)))
    return torch.baddbmm(P["fc2.bias"].unsqueeze(1), h, P["fc2.weight"].transpose(1, 2))


def _split_xy(data, split: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    s = data.split(split) if hasattr(data, "split") else data[split]
    x, y = (s.x, s.y) if hasattr(s, "x") else s
    return x.to(device, torch.float32), y.to(device, torch.long)


@torch.no_grad()
def _evaluate(P, x, y, cfg, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(accuracy [M], mean cross-entropy [M]) of every model on all of (x, y), in image chunks."""
    M = P["conv1.weight"].shape[0]
    correct = torch.zeros(M, device=x.device)
    loss = torch.zeros(M, device=x.device)
    for lo in range(0, len(y), chunk):
        logits = forward_stacked(P, x[lo:lo + chunk], cfg)
        yy = y[lo:lo + chunk]
        correct += (logits.argmax(-1) == yy).sum(1)
        loss += F.cross_entropy(logits.flatten(0, 1), yy.repeat(M), reduction="none").view(M, -1).sum(1)
    return correct / len(y), loss / len(y)


def _check_labels(y: torch.Tensor, cfg: Mapping, split: str) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= cfg["num_classes"]):
        raise ValueError(f"split {split!r} has labels {int(y.min())}..{int(y.max())}, but the CNN has "
                         f"num_classes={cfg['num_classes']}")


def evaluate_cnns(params: Sequence[Mapping[str, torch.Tensor]], split, cfg: Mapping | None = None, *,
                  data=None, device=None, chunk: int = 256, loss: bool = False):
    """Accuracy of every model (a float32 [M] tensor) on one split: `split` is a split name of `data`
    (default: the plain digits), or a (x, y) pair / a data.Split. loss=True returns (accuracy, loss)."""
    from weightspace.runtime import device as pick

    c = resolve_cfg(cfg)
    dev = pick(device) if device is None or isinstance(device, str) else device
    if isinstance(split, str):
        if data is None:
            from weightspace.data import digits
            data = digits()
        x, y = _split_xy(data, split, dev)
    else:
        x, y = (split.x, split.y) if hasattr(split, "x") else split
        x, y = x.to(dev, torch.float32), y.to(dev, torch.long)
    _check_labels(y, c, str(split) if isinstance(split, str) else "given")
    acc, ce = _evaluate(stack_params(params, c, dev), x, y, c, chunk)
    return (acc.cpu(), ce.cpu()) if loss else acc.cpu()


@dataclass
class CNNRun:
    """What train_cnns returns: final state dicts, metrics[epoch][model] (epoch 0 = the initialisation) and,
    with keep_checkpoints, checkpoints[epoch][model]."""

    params: list[dict[str, torch.Tensor]]
    metrics: list[list[dict[str, float]]]
    checkpoints: list[list[dict[str, torch.Tensor]]] | None = field(default=None)


def _per_model(value, M: int, name: str) -> list:
    scalar = isinstance(value, (int, float, str)) or (isinstance(value, torch.Tensor) and not value.ndim)
    vals = [value] * M if scalar else list(value)
    if len(vals) != M:
        raise ValueError(f"{name}: {len(vals)} values for {M} models")
    return vals


def train_cnns(params: Sequence[Mapping[str, torch.Tensor]], data=None, *, epochs: int,
               lr: float | Sequence[float], seeds: Sequence[int], cfg: Mapping | None = None,
               batch_size: int = 32, weight_decay: float | Sequence[float] = 0.0,
               schedule: str | Sequence[str] = "constant", betas=(0.9, 0.999),
               on_epoch: Callable[[int, list[dict], list[dict]], None] | None = None,
               keep_checkpoints: bool = False, eval_splits: Sequence[str] = ("train", "val", "test"),
               device=None, eval_chunk: int = 256, progress: bool = False) -> CNNRun:
    """Train M CNNs at once from the given state dicts (fresh ones from init_params, or sampled / pre-trained
    ones to fine-tune) with Adam(W) on `data` (a StyledDigits, default the plain digits; labels must be
    < num_classes), each model with its own learning rate, weight decay, schedule and seed (its batch order).

    Every model is evaluated on `eval_splits` at epoch 0 (the given weights) and after every epoch;
    on_epoch(epoch, state_dicts, metrics) is called each time with CPU copies, so a builder can write
    checkpoints as they come. A model whose weights are no longer finite gets metrics None and
    `diverged: True` (it keeps its slot: the others are unaffected, Adam being elementwise).
    """
    from weightspace.runtime import device as pick

    c = resolve_cfg(cfg)
    M = len(params)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs={epochs!r}: expected an integer >= 0")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    seeds = [int(s) for s in _per_model(seeds, M, "seeds")]
    lrs = [float(v) for v in _per_model(lr, M, "lr")]
    wds = [float(v) for v in _per_model(weight_decay, M, "weight_decay")]
    scheds = _per_model(schedule, M, "schedule")
    if any(s not in SCHEDULES for s in scheds):
        raise ValueError(f"schedule: choose from {SCHEDULES}, got {sorted(set(scheds) - set(SCHEDULES))}")
    if any(not (v >= 0 and math.isfinite(v)) for v in lrs + wds):
        raise ValueError("lr and weight_decay must be finite numbers >= 0")
    dev = pick(device) if device is None or isinstance(device, str) else device
    if data is None:
        from weightspace.data import digits
        data = digits()
    xtr, ytr = _split_xy(data, "train", dev)
    evals = {s: _split_xy(data, s, dev) for s in eval_splits}
    for s, (_, y) in {"train": (xtr, ytr), **evals}.items():
        _check_labels(y, c, s)
    P = {k: v.requires_grad_() for k, v in stack_params(params, c, dev).items()}
    opt = BatchedAdamW(P, betas=betas, weight_decay=torch.tensor(wds, device=dev))
    n = len(ytr)
    steps_per_epoch = math.ceil(n / batch_size)
    base = torch.tensor(lrs)
    total = torch.full((M,), steps_per_epoch * epochs)
    codes = torch.tensor([SCHEDULES.index(s) for s in scheds])
    order_g = [generator("cnn-order", s) for s in seeds]
    run = CNNRun(params=[], metrics=[], checkpoints=[] if keep_checkpoints else None)

    def report(epoch: int) -> None:
        with torch.no_grad():
            finite = torch.stack([torch.isfinite(v).flatten(1).all(1) for v in P.values()]).all(0).cpu()
        res = {}
        for s, (x, y) in evals.items():
            acc, ce = _evaluate({k: v.detach() for k, v in P.items()}, x, y, c, eval_chunk)
            res[f"{s}_acc"], res[f"{s}_loss"] = acc.cpu().tolist(), ce.cpu().tolist()
        metrics = []
        for m in range(M):
            ok = bool(finite[m])
            row = {k: (float(v[m]) if ok and math.isfinite(v[m]) else None) for k, v in res.items()}
            metrics.append({"epoch": epoch, **row, "diverged": not ok})
        sds = unstack(P)
        run.metrics.append(metrics)
        if keep_checkpoints:
            run.checkpoints.append(sds)
        if on_epoch is not None:
            on_epoch(epoch, sds, metrics)

    report(0)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs, desc=f"training {M} CNNs", unit="epoch")
    t = 0
    for epoch in range(1, epochs + 1):
        perm = torch.stack([torch.randperm(n, generator=g) for g in order_g]).to(dev)   # [M, n]
        for lo in range(0, n, batch_size):
            idx = perm[:, lo:lo + batch_size]
            logits = forward_stacked(P, xtr[idx], c)
            yb = ytr[idx]
            loss = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(M, -1).mean(1)
            opt.zero_grad()
            loss.sum().backward()
            opt.step(lr_schedule(base, total, codes, t))
            t += 1
        report(epoch)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    run.params = unstack(P)
    return run


def architecture(**cfg) -> dict:
    """The zoo manifest's `architecture` entry that rebuilds make_cnn(**cfg) (weightspace.zoo.format's
    registry of known constructors; never an import path)."""
    return {"library": "weightspace", "model_name": "cnn", "kwargs": resolve_cfg(cfg)}
