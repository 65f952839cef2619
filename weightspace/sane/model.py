"""SANE's sequential autoencoder and its loss (SANE, Sec. 3.2-3.3).

Encoder g_theta: Linear(d_t -> d_model) per token, plus the learned position embedding
    PE(n, l, k) = [E_n(n) + E_l(l) ; E_k(k)]      (each part d_model / 2 wide, concatenated)
-> pre-LN non-causal transformer -> Linear(d_model -> d_z): one latent z_n per token.
Decoder h_psi mirrors it (Linear(d_z -> d_model) + the SAME position embedding -> transformer -> d_t).
Projection head p_phi: the window's latents flattened -> a small MLP, for the contrastive loss only.

Loss (Sec. 3.3): L = gamma * NT-Xent(p(z_i), p(z_j); tau) + (1 - gamma) * L_rec, with L_rec the masked MSE
||M * (T - T_hat)||^2 averaged over the real (mask = 1) entries only, each view reconstructing its own input.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SANEConfig:
    """Sizes of one SANE. max_positions = [max n, max l, max k], the position tables (Sec. 3.1)."""
    token_size: int
    max_positions: list[int]
    window: int = 32
    d_model: int = 64
    d_z: int = 16
    n_layers: int = 2
    n_heads: int = 4
    proj_dim: int = 30
    dropout: float = 0.0
    gamma: float = 0.05
    tau: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class PositionEmbedding(nn.Module):
    """[E_n(n) + E_l(l) ; E_k(k)] (Sec. 3.1): shared by encoder and decoder."""

    def __init__(self, d_model: int, max_positions):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"d_model must be even (two halves), got {d_model}")
        n, l, k = max_positions
        self.n, self.l, self.k = (nn.Embedding(m, d_model // 2) for m in (n, l, k))
        self.max_positions = list(max_positions)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        too_big = (pos >= torch.as_tensor(self.max_positions, device=pos.device)).reshape(-1, 3).any(0)
        if too_big.any():
            i = int(too_big.nonzero()[0, 0])
            raise IndexError(f"a position {'nlk'[i]} = {int(pos[..., i].max())} exceeds its table of "
                             f"{self.max_positions[i]} (max_positions {self.max_positions})")
        return torch.cat([self.n(pos[..., 0]) + self.l(pos[..., 1]), self.k(pos[..., 2])], dim=-1)


class Block(nn.Module):
    """Pre-LN transformer block without biases: x + Attn(LN(x)), then x + MLP(LN(x)); non-causal."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.out = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)
        self.heads, self.dropout = heads, dropout

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class SANE(nn.Module):
    def __init__(self, cfg: SANEConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.pe = PositionEmbedding(d, cfg.max_positions)
        self.enc_in, self.enc_out = nn.Linear(cfg.token_size, d), nn.Linear(d, cfg.d_z)
        self.dec_in, self.dec_out = nn.Linear(cfg.d_z, d), nn.Linear(d, cfg.token_size)
        self.encoder = nn.Sequential(*[Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers)])
        self.decoder = nn.Sequential(*[Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers)])
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Sequential(nn.Linear(cfg.window * cfg.d_z, cfg.proj_dim, bias=False),
                                  nn.LayerNorm(cfg.proj_dim), nn.ReLU(),
                                  nn.Linear(cfg.proj_dim, cfg.proj_dim, bias=False),
                                  nn.LayerNorm(cfg.proj_dim), nn.ReLU())
        self.apply(self._init)
        for name, p in self.named_parameters():   # residual projections: N(0, 0.02 / sqrt(2 L))
            if name.endswith(("proj.weight", "out.weight")) and "head" not in name:
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def encode(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """T [B, w, d_t], P [B, w, 3] -> z [B, w, d_z]."""
        if tokens.shape[-1] != self.cfg.token_size:
            raise ValueError(f"tokens of width {tokens.shape[-1]}, but this SANE takes tokens of "
                             f"{self.cfg.token_size}: tokenize with the token size it was trained on")
        return self.enc_out(self.encoder(self.drop(self.enc_in(tokens) + self.pe(pos))))

    def decode(self, z: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """z [B, w, d_z], P [B, w, 3] -> T_hat [B, w, d_t]."""
        return self.dec_out(self.decoder(self.drop(self.dec_in(z) + self.pe(pos))))

    def project(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[1] != self.cfg.window:
            raise ValueError(f"the projection head takes windows of {self.cfg.window} tokens, got {z.shape[1]}")
        return self.head(z.flatten(1))

    def forward(self, tokens, pos):
        z = self.encode(tokens, pos)
        return z, self.decode(z, pos)


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """NT-Xent (SimCLR) of B positive pairs (a_i, b_i): cosine similarities of all 2B vectors / tau, each
    vector's positive its partner, the other 2B - 2 negatives; cross-entropy summed over 2B and divided by 2B."""
    x = F.normalize(torch.cat([a, b]).float(), dim=1)
    n = a.shape[0]
    sim = (x @ x.T / tau).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=x.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(x.device)
    return F.cross_entropy(sim, target)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real entries (mask 1) only: padding neither counts nor dilutes."""
    m = mask.to(pred.dtype)
    return ((pred.float() - target.float()) ** 2 * m).sum() / m.sum().clamp_min(1)


def sane_loss(model: SANE, view_i, view_j, pos, mask) -> dict[str, torch.Tensor]:
    """gamma * NT-Xent(p(z_i), p(z_j)) + (1 - gamma) * (L_rec(i) + L_rec(j)) / 2 (Sec. 3.3)."""
    both = torch.cat([view_i, view_j])
    pos2, mask2 = torch.cat([pos, pos]), torch.cat([mask, mask])
    z, rec = model(both, pos2)
    h = model.project(z)
    n = view_i.shape[0]
    con = nt_xent(h[:n], h[n:], model.cfg.tau)
    mse = masked_mse(rec, both, mask2)
    g = model.cfg.gamma
    return {"loss": g * con + (1 - g) * mse, "contrastive": con.detach(), "reconstruction": mse.detach()}
