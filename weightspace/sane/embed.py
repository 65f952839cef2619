"""Whole-sequence inference with a SANE trained on windows (SANE, Sec. 3.4, Algorithm 2; Fig. 6).

A sequence longer than the training window is cut into consecutive content blocks of ws_c = window - 2h tokens,
each wrapped in a halo of h context tokens on either side (shifted inward at the ends, so every chunk has the
training window's length); the halo outputs are discarded and the content parts stitched together. The model
embedding is the centre of gravity of the token latents, z_bar = (1/N) sum_n z_n.
"""
from __future__ import annotations

import torch

from .model import SANE, masked_mse


def chunks(n: int, window: int, halo: int = 0) -> list[tuple[int, int, int, int]]:
    """(start, end, content_start, content_end) of each chunk: chunk [start, end) is encoded, tokens
    [content_start, content_end) are kept. One chunk when the window covers the whole sequence."""
    if n <= window:
        return [(0, n, 0, n)]
    step = window - 2 * halo
    if step <= 0:
        raise ValueError(f"halo {halo} leaves no content in a window of {window} tokens")
    out = []
    for c0 in range(0, n, step):
        c1 = min(c0 + step, n)
        s = min(max(c0 - halo, 0), n - window)
        out.append((s, s + window, c0, c1))
    return out


def _run(fn, x: torch.Tensor, positions: torch.Tensor, window: int, halo: int, batch: int) -> torch.Tensor:
    n = x.shape[1]
    dev = next(iter(fn.__self__.parameters())).device
    outs = []
    for m0 in range(0, x.shape[0], batch):
        xb = x[m0:m0 + batch].to(dev)
        parts = []
        for s, e, c0, c1 in chunks(n, window, halo):
            pos = positions[s:e].to(dev).expand(xb.shape[0], -1, -1)
            parts.append(fn(xb[:, s:e].float(), pos)[:, c0 - s:c1 - s])
        outs.append(torch.cat(parts, 1).cpu())
    return torch.cat(outs)


@torch.no_grad()
def encode_sequence(model: SANE, tokens: torch.Tensor, positions: torch.Tensor, window: int | None = None,
                    halo: int = 0, batch: int = 256) -> torch.Tensor:
    """Token latents z [M, N, d_z] of tokens [M, N, d_t] from halo-padded chunks of the training window."""
    model.eval()
    return _run(model.encode, tokens, positions, window or model.cfg.window, halo, batch)


@torch.no_grad()
def decode_sequence(model: SANE, z: torch.Tensor, positions: torch.Tensor, window: int | None = None,
                    halo: int = 0, batch: int = 256) -> torch.Tensor:
    """Tokens T_hat [M, N, d_t] decoded from latents [M, N, d_z], chunked as encode_sequence."""
    model.eval()
    return _run(model.decode, z, positions, window or model.cfg.window, halo, batch)


def embed(model: SANE, tokens: torch.Tensor, positions: torch.Tensor, window: int | None = None, halo: int = 0,
          batch: int = 256) -> torch.Tensor:
    """Model embeddings z_bar [M, d_z]: the mean over all N token latents (Algorithm 2)."""
    return encode_sequence(model, tokens, positions, window, halo, batch).mean(1)


def reconstruction_loss(model: SANE, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                        window: int | None = None, halo: int = 0, batch: int = 256) -> float:
    """Masked MSE of encode -> decode over whole sequences (real entries only)."""
    z = encode_sequence(model, tokens, positions, window, halo, batch)
    rec = decode_sequence(model, z, positions, window, halo, batch)
    return float(masked_mse(rec, tokens, mask.expand_as(tokens)))
