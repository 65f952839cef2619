"""A small CNN that recognises StyledDigits classes: the judge of what a generator's samples show.

A generated image counts as class c when this classifier, trained on real images only, says c; a prompt's
(or a LoRA's) recognition rate is the fraction of its samples recognised as its class. Train it with light
Gaussian pixel noise so that the slight grain of diffusion samples does not throw it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Recognizer(nn.Module):
    """conv 3x3 (32) -> conv 3x3 stride 2 (64) -> linear: [N, 1, 8, 8] in [-1, 1] -> logits [N, n_classes]."""

    def __init__(self, n_classes: int, width: int = 32):
        super().__init__()
        self.n_classes = n_classes
        self.net = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(2 * width * 16, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_recognizer(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, steps: int = 600, batch_size: int = 128,
                     lr: float = 3e-3, noise: float = 0.1, seed: int = 0) -> Recognizer:
    """Train a Recognizer on images x [N, 1, 8, 8] with labels y [N] (Adam, cosine decay)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Recognizer(n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=g)
        xb = x[idx] + noise * torch.randn(x[idx].shape, generator=g)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def predict(model: Recognizer, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Predicted class [N] of images x [N, 1, 8, 8]."""
    return torch.cat([model(x[i:i + chunk]).argmax(1) for i in range(0, len(x), chunk)]) if len(x) else \
        torch.zeros(0, dtype=torch.long)


def recognition_rate(model: Recognizer, x: torch.Tensor, target: torch.Tensor | int) -> float:
    """Fraction of images x recognised as `target` (one class, or one per image)."""
    pred = predict(model, x)
    return float((pred == torch.as_tensor(target)).float().mean()) if len(pred) else float("nan")


def per_class_rates(model: Recognizer, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> list[float]:
    """Recognition rate of each class c among the images whose intended class y is c (nan if none)."""
    pred = predict(model, x)
    return [float((pred[y == c] == c).float().mean()) if (y == c).any() else float("nan") for c in range(n_classes)]
