"""SANE's preprocessing (Sec. 3.2, Algorithm 1 (i)-(ii)): filtering, per-layer standardisation and alignment.

- **Filtering:** checkpoints with a NaN / inf or any |w| above a threshold are dropped, with a count.
- **Standardisation:** per tokenized layer l one zoo-wide mean mu_l and std sigma_l over its weights AND bias
  together (mu_l the mean of the per-checkpoint means, sigma_l = sqrt(mean of per-checkpoint variances)), fitted
  on the training split only and kept to de-normalise sampled models (w * sigma_l + mu_l).
- **Alignment:** every model is brought to the canonical form of one reference A by weight matching (Ainsworth
  et al. 2022, Git Re-Basin): coordinate descent over the permutation groups, each a linear assignment
  maximising sum_w <W_a, P W_b>. The permutation is found on a model's last epoch and applied to all its epochs.
- **Permuted views:** random function-preserving permutations of the same groups (the second view of Sec. 3.3).

Permutations act on "chains": conv / linear layers in state-dict order, each hidden layer's output channels
permuting the next layer's input (expanded block-wise over spatial positions at a flatten), with the norm layers
(batch norm, 1-D affine) of a hidden layer following its output. All functions take stacked state dicts
([M, *shape] per key) and per-model permutations [M, c].
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .tokenize import Layout, TokenizeError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- filtering

def finite_checkpoints(stacked: Mapping[str, torch.Tensor], threshold: float = 100.0) -> torch.Tensor:
    """[M] bool: checkpoints whose every tensor is finite and within |w| <= threshold (Sec. 3.1 filters);
    logs how many were dropped and because of which key."""
    keep = None
    for k, v in stacked.items():
        if not torch.is_floating_point(v):
            continue
        flat = v.reshape(v.shape[0], -1)
        ok = torch.isfinite(flat).all(1) & (flat.abs().nan_to_num(math.inf) <= threshold).all(1)
        if keep is not None and (~ok & keep).any():
            log.info("%d checkpoints dropped at %s (NaN/inf or |w| > %g)", int((~ok & keep).sum()), k, threshold)
        keep = ok if keep is None else keep & ok
    if keep is None:
        raise ValueError("no floating-point tensors to check")
    if (~keep).any():
        log.warning("%d of %d checkpoints filtered out (NaN/inf or |w| > %g)", int((~keep).sum()), len(keep),
                    threshold)
    return keep


# ------------------------------------------------------------------------------------------- standardisation

@dataclass
class Standardizer:
    """Per-layer (weight + bias) mu_l, sigma_l (Sec. 3.2), keyed by the layer's weight key."""
    stats: dict[str, tuple[float, float]]
    layout: Layout

    @classmethod
    def fit(cls, stacked: Mapping[str, torch.Tensor], lay: Layout) -> "Standardizer":
        """Fit on the TRAINING split's stacked state dict (never on val / test)."""
        stats = {}
        for x in lay.layers:
            v = _layer_values(stacked, x)
            mu = float(v.mean(1).mean())
            sigma = float(v.var(1, unbiased=False).mean().sqrt())
            stats[x.key] = (mu, sigma if sigma > 0 else 1.0)
        return cls(stats, lay)

    def apply(self, stacked: Mapping[str, torch.Tensor], invert: bool = False) -> dict[str, torch.Tensor]:
        out = dict(stacked)
        for x in self.layout.layers:
            mu, sigma = self.stats[x.key]
            for k in (x.key, x.bias):
                if k:
                    out[k] = stacked[k] * sigma + mu if invert else (stacked[k] - mu) / sigma
        return out

    def invert(self, stacked: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """De-normalise: w * sigma_l + mu_l."""
        return self.apply(stacked, invert=True)

    def to_json(self) -> str:
        return json.dumps({k: list(v) for k, v in self.stats.items()})

    @classmethod
    def from_json(cls, text: str, lay: Layout) -> "Standardizer":
        stats = {k: tuple(v) for k, v in json.loads(text).items()}
        missing = [x.key for x in lay.layers if x.key not in stats]
        if missing:
            raise TokenizeError(f"standardisation statistics have no entry for layer {missing[0]!r}")
        return cls(stats, lay)


def _layer_values(stacked, x) -> torch.Tensor:
    m = stacked[x.key].shape[0]
    parts = [stacked[x.key].reshape(m, -1)] + ([stacked[x.bias].reshape(m, -1)] if x.bias else [])
    return torch.cat(parts, 1).double()


# --------------------------------------------------------------------------------------------- permutations

@dataclass(frozen=True)
class ChainSpec:
    """Layers of a chain: weight keys, their bias and norm keys, and the block size of each input axis."""
    weights: tuple[str, ...]
    followers: tuple[tuple[str, ...], ...]   # per layer: bias + norm tensors permuted with its output
    blocks: tuple[int, ...]                  # per layer: input block size (1, or H*W after a flatten)
    sizes: tuple[int, ...]                   # per permutation group (= every hidden layer): its width


def chain_spec(state_dict: Mapping[str, torch.Tensor], lead: int = 0) -> ChainSpec:
    """The permutation groups of a chain of conv / linear layers (with norm layers between them). Raises naming
    the layer where the state dict is not such a chain (e.g. a residual network or a ViT)."""
    weights, followers = [], []
    for k, v in state_dict.items():
        shape = tuple(v.shape[lead:])
        if k.endswith("num_batches_tracked"):
            continue
        if k.endswith("weight") and len(shape) >= 2:
            weights.append((k, shape))
            followers.append([])
        elif not weights:
            raise TokenizeError(f"alignment: {k!r} comes before any conv / linear weight")
        elif len(shape) == 1 and shape[0] == weights[-1][1][0]:
            followers[-1].append(k)
        else:
            raise TokenizeError(f"alignment needs a chain of conv / linear layers; {k!r} of shape {list(shape)} "
                                f"does not follow {weights[-1][0]!r} (out {weights[-1][1][0]})")
    if len(weights) < 2:
        raise TokenizeError("alignment needs at least two conv / linear layers")
    blocks = [1]
    for (pk, ps), (k, s) in zip(weights, weights[1:]):
        if s[1] % ps[0]:
            raise TokenizeError(f"alignment: {k!r} has {s[1]} inputs, not a multiple of the {ps[0]} outputs of "
                                f"{pk!r}: not a chain")
        blocks.append(s[1] // ps[0])
    return ChainSpec(tuple(k for k, _ in weights), tuple(map(tuple, followers)), tuple(blocks),
                     tuple(s[0] for _, s in weights[:-1]))


def _take(v: torch.Tensor, perm: torch.Tensor, dim: int, block: int = 1) -> torch.Tensor:
    """v [M, ...] gathered along `dim` by per-model perm [M, c] (expanded to blocks: c*block entries)."""
    if block > 1:
        perm = (perm[:, :, None] * block + torch.arange(block)).reshape(perm.shape[0], -1)
    shape = [perm.shape[0]] + [1] * (v.dim() - 1)
    shape[dim] = perm.shape[1]
    return torch.take_along_dim(v, perm.reshape(shape), dim=dim)


def permute(stacked: Mapping[str, torch.Tensor], perms: Sequence[torch.Tensor], spec: ChainSpec
            ) -> dict[str, torch.Tensor]:
    """The stacked state dict with hidden group i permuted by perms[i] [M, c_i]: new row r = old row perm[r]
    of layer i (and its followers), and the matching input columns of layer i + 1. Function-preserving."""
    out = dict(stacked)
    for i, p in enumerate(perms):
        p = p.to(stacked[spec.weights[i]].device)
        for k in (spec.weights[i],) + spec.followers[i]:
            out[k] = _take(out[k], p, 1)
        nxt = spec.weights[i + 1]
        out[nxt] = _take(out[nxt], p, 2, spec.blocks[i + 1])
    return out


def random_permutations(spec: ChainSpec, m: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """One uniformly random permutation per hidden group and model: [M, c_i] each."""
    return [torch.rand(m, c, generator=generator).argsort(1) for c in spec.sizes]


def _front(w: torch.Tensor, axis: int, block: int = 1) -> torch.Tensor:
    """[c, -1]: w's `axis` (grouped into blocks of `block`) moved to the front."""
    if axis == 0:
        return w.reshape(w.shape[0], -1)
    w = w.reshape(w.shape[0], w.shape[1] // block, -1)
    return w.transpose(0, 1).reshape(w.shape[1], -1)


def weight_matching(reference: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor], spec: ChainSpec,
                    max_sweeps: int = 100, seed: int = 0) -> list[torch.Tensor]:
    """Permutations [c_i] that bring `model` close to `reference` (Ainsworth et al. 2022, weight matching):
    coordinate descent over the groups in random order, each solving argmax_P <A_p, P> with
    A_p = sum over the weights touching p of W_a (p's axis first) (W_b, other axes permuted)^T."""
    from scipy.optimize import linear_sum_assignment

    one = lambda sd: {k: v.double()[None] for k, v in sd.items() if k in _spec_keys(spec)}
    A, B = one(reference), one(model)
    perms = [torch.arange(c)[None] for c in spec.sizes]
    rng = np.random.default_rng(seed)
    for _ in range(max_sweeps):
        changed = False
        for g in rng.permutation(len(perms)):
            others = [p if j != g else torch.arange(spec.sizes[g])[None] for j, p in enumerate(perms)]
            Bp = permute(B, others, spec)
            wa, wb = spec.weights[g], spec.weights[g + 1]
            sim = sum(_front(A[k][0], 0) @ _front(Bp[k][0], 0).T for k in (wa,) + spec.followers[g])
            blk = spec.blocks[g + 1]
            sim = sim + _front(A[wb][0], 1, blk) @ _front(Bp[wb][0], 1, blk).T
            _, col = linear_sum_assignment(sim.numpy(), maximize=True)
            new = torch.as_tensor(col)[None]
            old_score = sim[torch.arange(len(col)), perms[g][0]].sum()
            if sim[torch.arange(len(col)), new[0]].sum() > old_score + 1e-12:
                perms[g], changed = new, True
        if not changed:
            break
    return [p[0] for p in perms]


def _spec_keys(spec: ChainSpec) -> set[str]:
    return set(spec.weights) | {k for f in spec.followers for k in f}


def align(stacked: Mapping[str, torch.Tensor], run_ids: Sequence, epochs: Sequence[int],
          reference: Mapping[str, torch.Tensor], spec: ChainSpec | None = None, seed: int = 0
          ) -> dict[str, torch.Tensor]:
    """Every checkpoint of the stacked zoo aligned to `reference` (Sec. 3.2): the permutation of a run is found
    on its last epoch and applied to all its epochs (one permutation per model, so its trajectory stays one)."""
    spec = spec or chain_spec(reference)
    run_ids, epochs = list(run_ids), np.asarray(epochs)
    perms = [torch.empty(len(run_ids), c, dtype=torch.long) for c in spec.sizes]
    by_run: dict = {}
    for i, r in enumerate(run_ids):
        by_run.setdefault(r, []).append(i)
    for r, rows in by_run.items():
        last = rows[int(np.argmax(epochs[rows]))]
        found = weight_matching(reference, {k: v[last] for k, v in stacked.items()}, spec, seed=seed)
        for g, p in enumerate(found):
            perms[g][rows] = p
    return permute(stacked, perms, spec)


def distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], keys: Sequence[str]) -> torch.Tensor:
    """[M] Euclidean distance between stacked state dicts over `keys` (b may be one unstacked model)."""
    sq = 0.0
    for k in keys:
        d = a[k].double() - (b[k].double() if b[k].dim() == a[k].dim() else b[k].double()[None])
        sq = sq + d.reshape(d.shape[0], -1).pow(2).sum(1)
    return sq.sqrt()
