"""Train many small models at once: parameters stacked on a leading [M] axis, forward via torch.func.vmap.

One Python step then trains M models, which is where a zoo build gets its speed on a CPU (the per-step
overhead of a tiny net dominates its arithmetic). AdamW is elementwise, so one BatchedAdamW over the
stacked tensors is exactly M independent AdamWs; each model keeps its own learning rate, schedule and
number of steps. No global gradient clipping: it would couple the models.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from .vit import MethodCall, stacked_config, stacked_forward


class Stacked:
    """M copies of one architecture with their own weights, called as one batched function: vmap of the
    module; or, the same function in batched products, for a plain timm ViT (`vit`, from
    nets.vit.stacked_config) nets.vit.stacked_forward (its evaluation ~1.5x faster on CPU), and for a module
    whose class has a static `forward_stacked(params, x)` (the ProbeX experts) that."""

    def __init__(self, make_module: Callable[[], nn.Module], state_dicts: Sequence[Mapping[str, torch.Tensor]],
                 device: torch.device | str = "cpu", trainable: Callable[[str], bool] = lambda name: True):
        if not state_dicts:
            raise ValueError("Stacked needs at least one state dict")
        self.skeleton = make_module().to("meta")
        self.vit = stacked_config(self.skeleton) if type(self.skeleton).__module__.startswith("timm.") else None
        self.forward_stacked = getattr(type(self.skeleton), "forward_stacked", None)
        self.keys = list(state_dicts[0])
        self.params = {}
        for k in self.keys:
            t = torch.stack([sd[k].detach().to(torch.float32) for sd in state_dicts]).to(device).contiguous()
            self.params[k] = t.requires_grad_(trainable(k))
        self.M = len(state_dicts)

    def __call__(self, x: torch.Tensor, method: str = "forward") -> torch.Tensor:
        """x [M, B, ...] -> outputs [M, B, ...]; model m sees x[m]."""
        if method == "forward" and self.vit is not None:
            return stacked_forward(self.params, x, self.vit)
        if method == "forward" and self.forward_stacked is not None:
            return self.forward_stacked(self.params, x)
        module = self.skeleton if method == "forward" else MethodCall(self.skeleton, method)
        prefix = "" if method == "forward" else "m."

        def one(params, xi):
            return functional_call(module, {prefix + k: v for k, v in params.items()}, (xi,))

        return vmap(one)(self.params, x)

    def trainable(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.params.items() if v.requires_grad}

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Back to M plain state dicts (detached CPU copies)."""
        return [{k: v[m].detach().to("cpu").clone() for k, v in self.params.items()} for m in range(self.M)]


class BatchedAdamW:
    """AdamW over stacked [M, ...] tensors with a per-model learning rate (a [M] tensor each step).

    A model whose lr is 0 at a step is left unchanged by it (its moments still move, which does not
    matter: models only ever stop, never restart). Matches torch.optim.AdamW per model.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float | torch.Tensor = 0.0, decay: Callable[[str, torch.Tensor], bool] | None = None):
        self.params = dict(params)
        self.b1, self.b2 = betas
        self.eps = eps
        self.wd = weight_decay
        decay = decay or (lambda name, p: True)
        self.decays = {k: decay(k, p) for k, p in self.params.items()}
        self.m = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.v = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.t = 0

    def select(self, keep: torch.Tensor, params: Mapping[str, torch.Tensor]) -> None:
        """Go on with the models where `keep` [M] is True only: `params` are their stacked tensors (the same
        names), and their moments (and per-model weight decay) are kept."""
        self.params = dict(params)
        self.m = {k: v[keep] for k, v in self.m.items()}
        self.v = {k: v[keep] for k, v in self.v.items()}
        if isinstance(self.wd, torch.Tensor) and self.wd.ndim:
            self.wd = self.wd[keep]

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        self.t += 1
        bc1 = 1 - self.b1 ** self.t
        bc2 = 1 - self.b2 ** self.t
        for k, p in self.params.items():
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.ndim - 1)
            lr_k = lr.to(p.device, p.dtype).view(shape)
            g = p.grad
            self.m[k].mul_(self.b1).add_(g, alpha=1 - self.b1)
            self.v[k].mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            if self.decays[k]:
                wd = torch.as_tensor(self.wd, device=p.device, dtype=p.dtype)
                wd = wd.view(shape) if wd.ndim else wd
                p.mul_(1 - lr_k * wd)
            denom = (self.v[k] / bc2).sqrt_().add_(self.eps)
            p.addcdiv_(self.m[k] * (lr_k / bc1), denom, value=-1.0)


def lr_schedule(base_lr: torch.Tensor, steps: torch.Tensor, schedule: torch.Tensor, t: int,
                warmup: int = 0) -> torch.Tensor:
    """Per-model learning rate at step t (0-based): 0 once a model has done its steps.

    schedule codes: 0 constant, 1 cosine to 0, 2 linear to 0; `warmup` linear steps for all.
    """
    frac = torch.clamp(torch.as_tensor(t, dtype=torch.float32) / steps.float(), max=1.0)
    factor = torch.ones_like(base_lr)
    factor = torch.where(schedule == 1, 0.5 * (1 + torch.cos(torch.pi * frac)), factor)
    factor = torch.where(schedule == 2, 1 - frac, factor)
    if warmup:
        factor = factor * min(1.0, (t + 1) / warmup)
    return torch.where(t < steps, base_lr * factor, torch.zeros_like(base_lr))


SCHEDULES = ("constant", "cosine", "linear")
