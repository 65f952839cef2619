"""Sampling new models from SANE (SANE, Sec. 4.2, Algorithm 3).

1. Embed E prompt models per token: z^e in R^{E x N x d_z} (standardised, aligned, tokenized, halo chunks).
2. Draw latents from a per-token Gaussian KDE over the prompts (bandwidth 0.2), in one of two modes:
   - "token": every token of every sample picks its own prompt and its own noise (fresh randomness per token and
     per sample; what Algorithm 3 describes);
   - "prompt": every token of sample k copies ONE prompt i_k and gets ONE shared noise vector 0.2 eps_k — what the
     released code does (its sampler is re-seeded with the same seed for every token), here with fresh
     randomness per sample, so two calls give different samples.
3. Decode, de-tokenize into a reference checkpoint, de-normalise (w sigma_l + mu_l).
4. SANE_SUB keeps the top m of many candidates by a score on a reference split (validation accuracy);
   SANE_BOOT re-embeds the best samples as new prompts and samples again.

The S_KDE30-style baseline (Schuerholt et al. 2022) draws from a KDE over whole models of the top 30% by
accuracy; `weight_kde` does so over their standardised tokens (an identity encoder), in the same modes.
Each sample's distance to its nearest prompt (`nearest_distance`) tells a new model from a near-copy.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .embed import decode_sequence, encode_sequence
from .model import SANE
from .preprocess import Standardizer
from .tokenize import detokenize, tokenize

MODES = ("token", "prompt")


def kde(prompts: torch.Tensor, n: int, bandwidth: float = 0.2, mode: str = "token",
        generator: torch.Generator | None = None, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws [n, N, D] from the per-token Gaussian KDE over prompts [E, N, D], and which prompt each token
    came from ([n, N]). mode "token": a prompt and noise per token; "prompt": one prompt and one noise vector
    [D] per sample, shared by all its tokens (the reference code's behaviour). `mask` zeroes padding."""
    if mode not in MODES:
        raise ValueError(f"unknown KDE mode {mode!r}; choose one of {MODES}")
    e, N, D = prompts.shape
    if mode == "token":
        src = torch.randint(0, e, (n, N), generator=generator)
        eps = torch.randn(n, N, D, generator=generator)
    else:
        src = torch.randint(0, e, (n,), generator=generator)[:, None].expand(n, N)
        eps = torch.randn(n, 1, D, generator=generator).expand(n, N, D)
    out = prompts[src, torch.arange(N)] + bandwidth * eps
    return (out * mask if mask is not None else out), src


def embed_tokens(model: SANE, stacked_std: Mapping[str, torch.Tensor], layout, halo: int = 0) -> torch.Tensor:
    """Token latents [M, N, d_z] of standardised (and aligned) stacked state dicts."""
    t = tokenize(stacked_std, like=layout, lead=1)
    return encode_sequence(model, t.tokens, t.positions, halo=halo)


def decode_models(model: SANE, z: torch.Tensor, positions: torch.Tensor, reference: Mapping[str, torch.Tensor],
                  standardizer: Standardizer, halo: int = 0) -> dict[str, torch.Tensor]:
    """Latents [n, N, d_z] -> de-normalised stacked state dicts (padding dropped by detokenize)."""
    tokens = decode_sequence(model, z, positions, halo=halo)
    return standardizer.invert(detokenize(tokens, reference, standardizer.layout.ignore_bn))


def sample(model: SANE, prompt_z: torch.Tensor, positions: torch.Tensor, reference, standardizer: Standardizer,
           n: int, mode: str = "token", bandwidth: float = 0.2, generator=None, halo: int = 0
           ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """n sampled models (stacked, de-normalised) and their token sources [n, N] (prompt indices)."""
    z, src = kde(prompt_z, n, bandwidth, mode, generator)
    return decode_models(model, z, positions, reference, standardizer, halo), src


def weight_kde(prompts_std: Mapping[str, torch.Tensor], layout, reference, standardizer: Standardizer, n: int,
               mode: str = "prompt", bandwidth: float = 0.2, generator=None) -> dict[str, torch.Tensor]:
    """The S_KDE30-style baseline: a KDE over whole prompt models in (standardised) weight space, decoded by
    the identity: mode "prompt" = a prompt plus isotropic noise, "token" = every token from its own prompt."""
    t = tokenize(prompts_std, like=layout, lead=1)
    draws, _ = kde(t.tokens, n, bandwidth, mode, generator, mask=t.mask[0])
    return standardizer.invert(detokenize(draws, reference, layout.ignore_bn))


def subsample(stacked: Mapping[str, torch.Tensor], scores: Sequence[float], keep: int
              ) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """SANE_SUB: the `keep` candidates with the highest scores (e.g. validation accuracy), best first."""
    scores = np.asarray(scores, float)
    top = np.argsort(-scores, kind="stable")[:keep]
    idx = torch.as_tensor(top.copy())
    return {k: v[idx] for k, v in stacked.items()}, scores[top]


def bootstrap(model: SANE, best: Mapping[str, torch.Tensor], positions, reference, standardizer: Standardizer,
              score: Callable[[Mapping[str, torch.Tensor]], Sequence[float]], n: int, keep: int,
              rounds: int = 1, mode: str = "token", bandwidth: float = 0.2, generator=None, halo: int = 0
              ) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """SANE_BOOT: the best samples' embeddings become the prompts of the next round (de-normalised stacked
    state dicts in, the top `keep` of the last round out)."""
    scores = np.asarray(score(best), float)
    for _ in range(rounds):
        z = embed_tokens(model, standardizer.apply(best), standardizer.layout, halo)
        cand, _ = sample(model, z, positions, reference, standardizer, n, mode, bandwidth, generator, halo)
        best, scores = subsample(cand, score(cand), keep)
    return best, scores


def nearest_distance(samples: Mapping[str, torch.Tensor], prompts: Mapping[str, torch.Tensor],
                     keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index) of each sample's nearest prompt, Euclidean over `keys` (Gram trick, float64)."""
    flat = lambda sd: torch.cat([sd[k].reshape(sd[k].shape[0], -1).double() for k in keys], 1)
    a, b = flat(samples), flat(prompts)
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.T
    d, i = d2.clamp_min(0).sqrt().min(1)
    return d.numpy(), i.numpy()
