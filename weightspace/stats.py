"""Statistics of weight tensors that zoo builders and methods share (one definition each).

Excess kurtosis of a matrix W over its n entries, with population moments (MoTHer, Horwitz et al. ICLR 2025,
Sec. 4.2 — the direction signal):

    kurt(W) = m4 / m2^2 - 3,    m_k = 1/n sum_ij (W_ij - mean(W))^k

0 for Gaussian entries, large when a few weights are much bigger than the rest. It is computed from power
sums about a shift c (any fixed number: the central moments do not depend on it), so a matrix too large to
hold at once can be summed block by block (`power_sums` per block, added up) with the shift taken from its
first block; in float64 that is exact enough for weights, whose |mean| << std.
"""
from __future__ import annotations

import torch


def power_sums(x: torch.Tensor, shift: torch.Tensor | float = 0.0) -> torch.Tensor:
    """[..., 5] float64: (n, sum y, sum y^2, sum y^3, sum y^4) of y = x - shift over the last axis."""
    y = x.double() - (shift.double() if torch.is_tensor(shift) else shift)
    n = torch.full(y.shape[:-1], float(y.shape[-1]), dtype=torch.float64, device=y.device)
    return torch.stack([n, y.sum(-1), (y ** 2).sum(-1), (y ** 3).sum(-1), (y ** 4).sum(-1)], -1)


def kurtosis_from_power_sums(s: torch.Tensor) -> torch.Tensor:
    """Excess kurtosis m4 / m2^2 - 3 from `power_sums` ([..., 5], summed over blocks if need be).
    A constant matrix (m2 = 0) gives NaN: its kurtosis is undefined."""
    cnt, s1, s2, s3, s4 = s.unbind(-1)
    mu = s1 / cnt
    m2 = s2 / cnt - mu ** 2
    m4 = s4 / cnt - 4 * mu * s3 / cnt + 6 * mu ** 2 * s2 / cnt - 3 * mu ** 4
    return torch.where(m2 > 0, m4 / m2.clamp_min(torch.finfo(torch.float64).tiny) ** 2 - 3.0,
                       torch.full_like(m2, float("nan")))


def excess_kurtosis(W: torch.Tensor) -> torch.Tensor:
    """Excess kurtosis of each matrix of a [..., rows, cols] stack, over its entries, float64 [...]."""
    x = W.flatten(-2).double()
    return kurtosis_from_power_sums(power_sums(x, x.mean(-1, keepdim=True)))
