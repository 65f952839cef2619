"""ProbeX (Horwitz et al., CVPR 2025): learn from ONE hidden layer of a model by probing it.

Notation of the paper (beside the code below). A layer's weight X ∈ R^{d_H×d_W} ([out, in]) is probed
by r_U learned input vectors u_l (the columns of U ∈ R^{d_W×r_U}); every response X u_l is projected
by one shared V ∈ R^{d_H×r_V}, passed through a ReLU, and encoded by its own M_l ∈ R^{r_T×r_V}:

    e = Σ_l M_l · ReLU(Vᵀ X u_l) + b          (the model's representation, r_T numbers)
    y = T e + c                                (logits over d_Y training classes)

Without the ReLU this is a Tucker factorisation of the dense linear expert y_k = Σ_ij W_kij X_ij
(W = G ×₁ T ×₂ V ×₃ U, with core slices G[:,:,l] = M_l), so it needs d_W·r_U + d_H·r_V + r_U·r_V·r_T +
r_T·d_Y parameters instead of d_Y·d_H·d_W. No norms, no dropout; PyTorch's default initialisation.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

# ------------------------------------------------------------------ layer -> matrix X (the paper's code)

def layer_matrix(weight: torch.Tensor, *, conv_reshape: bool = True) -> torch.Tensor:
    """The matrix X that ProbeX reads from one stored tensor (batched: a leading [N] axis is allowed
    only through `stack_layer`).

    - linear [out, in]: X is the weight itself (no transpose);
    - conv [C_out, C_in, 1, 1]: squeezed to [C_out, C_in];
    - conv [C_out, C_in, k, k] (k > 1): memory re-read (reshaped, not permuted) as [C_in·k·k, C_out],
      as the official code does for ResNets (the probes then act on the output-channel side); also
      when C_in = 1 (timm's patch embedding [32, 1, 2, 2] -> [4, 32]), which the official squeeze-first
      code would leave 3-D;
    - 1-D [d]: [d, 1]; anything else with size-1 dims (e.g. timm's pos_embed [1, n, d]) is squeezed.
    """
    if weight.ndim == 4 and weight.shape[-2:] != (1, 1) and conv_reshape:
        return weight.reshape(-1, weight.shape[0])
    w = weight.squeeze()
    if w.ndim == 1:
        return w[:, None]
    if w.ndim != 2:
        raise ValueError(f"cannot read a tensor of shape {tuple(weight.shape)} as a matrix "
                         "(expected a linear, conv or 1-D weight)")
    return w


def lora_matrix(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """X = B @ A for a LoRA with down A [r, d_in] and up B [d_out, r] (batched over leading dims).

    The alpha/r scale is NOT applied and A, B are not concatenated (as in the paper's code).
    """
    if A.shape[-2] != B.shape[-1]:
        raise ValueError(f"LoRA factors do not chain: B {tuple(B.shape)} @ A {tuple(A.shape)} "
                         f"(B's rank {B.shape[-1]} != A's rank {A.shape[-2]})")
    return B @ A


def stack_layer(weights, *, conv_reshape: bool = True, name: str = "layer") -> torch.Tensor:
    """[N, ...] stored tensors (or a list of them) -> float32 [N, d_H, d_W], checked for NaN/inf."""
    mats = [layer_matrix(w, conv_reshape=conv_reshape) for w in weights]
    shapes = {tuple(m.shape) for m in mats}
    if len(shapes) > 1:
        raise ValueError(f"{name}: models have different shapes {sorted(shapes)}; a ProbeX expert reads "
                         "one layer of one architecture")
    X = torch.stack(mats).float()
    check_finite(X, name)
    return X


def check_finite(X: torch.Tensor, name: str = "layer") -> None:
    bad = ~torch.isfinite(X.reshape(len(X), -1)).all(1)
    if bad.any():
        idx = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(f"{name}: {int(bad.sum())} model(s) have NaN or inf weights (rows {idx}); "
                         "drop or repair them before training")


# ------------------------------------------------------------------------------------------- the model

class ProbeX(nn.Module):
    """ProbeX for a layer of shape [d_H, d_W]: input [B, d_H, d_W] -> logits [B, out_dim]."""

    def __init__(self, d_H: int, d_W: int, n_probes: int = 128, proj_dim: int = 128, rep_dim: int = 128,
                 out_dim: int = 100):
        super().__init__()
        self.d_H, self.d_W = d_H, d_W
        self.probes = nn.Linear(n_probes, d_W, bias=False)            # weight = U [d_W, r_U]
        self.proj = nn.Linear(d_H, proj_dim, bias=False)              # weight = Vᵀ [r_V, d_H]
        self.encoders = nn.Linear(n_probes * proj_dim, rep_dim)       # [M_1 … M_{r_U}] and b
        self.head = nn.Linear(rep_dim, out_dim)                       # T and c

    @property
    def U(self) -> torch.Tensor:
        return self.probes.weight

    @property
    def V(self) -> torch.Tensor:
        return self.proj.weight.T

    def M(self, l: int) -> torch.Tensor:
        """The l-th probe encoder M_l [r_T, r_V] (a slice of the one encoder Linear)."""
        r_V = self.proj.out_features
        return self.encoders.weight[:, l * r_V:(l + 1) * r_V]

    def encode(self, X: torch.Tensor) -> torch.Tensor:
        """X [B, d_H, d_W] -> e [B, r_T]."""
        if X.ndim != 3 or X.shape[1:] != (self.d_H, self.d_W):
            raise ValueError(f"ProbeX expects [B, {self.d_H}, {self.d_W}], got {tuple(X.shape)}")
        R = X @ self.U                                                # [B, d_H, r_U]: column l = X u_l
        Z = torch.relu(self.proj(R.transpose(1, 2)))                  # [B, r_U, r_V]: ReLU(Vᵀ X u_l)
        return self.encoders(Z.flatten(1))                            # Σ_l M_l z_l + b (probe-major)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(X))

    @staticmethod
    def forward_stacked(params: Mapping[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
        """`forward` of M experts at once: params stacked [M, ...] (nets.batched.Stacked), X [M, B, d_H, d_W]
        -> logits [M, B, d_Y]. Batched products instead of vmap's per-op dispatch (fit_many's hot loop)."""
        U, Vt = params["probes.weight"], params["proj.weight"]                  # [M, d_W, r_U], [M, r_V, d_H]
        if X.ndim != 4 or X.shape[2:] != (Vt.shape[2], U.shape[1]):
            raise ValueError(f"ProbeX expects [M, B, {Vt.shape[2]}, {U.shape[1]}], got {tuple(X.shape)}")
        M, B, d_H, _ = X.shape
        R = torch.bmm(X.reshape(M, B * d_H, -1), U).view(M, B, d_H, -1)         # [M, B, d_H, r_U]: X u_l
        Rt = R.transpose(2, 3).reshape(M, -1, d_H)                               # [M, B r_U, d_H]
        Z = torch.relu(torch.bmm(Rt, Vt.transpose(1, 2))).view(M, B, -1)         # [M, B, r_U r_V]: ReLU(Vᵀ X u_l)
        e = torch.baddbmm(params["encoders.bias"][:, None], Z, params["encoders.weight"].transpose(1, 2))
        return torch.baddbmm(params["head.bias"][:, None], e, params["head.weight"].transpose(1, 2))


class Dense(nn.Module):
    """The dense linear expert y = W vec(X) + b: d_Y·d_H·d_W parameters (what ProbeX factorises)."""

    def __init__(self, d_H: int, d_W: int, out_dim: int = 100):
        super().__init__()
        self.d_H, self.d_W = d_H, d_W
        self.linear = nn.Linear(d_H * d_W, out_dim)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.linear(X.flatten(1))

    @staticmethod
    def forward_stacked(params: Mapping[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
        """`forward` of M experts at once (see ProbeX.forward_stacked): X [M, B, d_H, d_W] -> [M, B, d_Y]."""
        W = params["linear.weight"]                                             # [M, d_Y, d_H d_W]
        if X.ndim != 4 or X.shape[2] * X.shape[3] != W.shape[2]:
            raise ValueError(f"Dense expects [M, B, d_H, d_W] with d_H d_W = {W.shape[2]}, got {tuple(X.shape)}")
        # y^T = W vec(X)^T + b: W's gradient then comes out in W's own layout, no copy of d_Y d_H d_W per expert
        return torch.baddbmm(params["linear.bias"][:, :, None], W, X.flatten(2).transpose(1, 2)).transpose(1, 2)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def probex_params(d_H: int, d_W: int, n_probes: int, proj_dim: int, rep_dim: int, out_dim: int) -> int:
    """d_W·r_U + d_H·r_V + (r_U·r_V + 1)·r_T + (r_T + 1)·d_Y."""
    return d_W * n_probes + d_H * proj_dim + (n_probes * proj_dim + 1) * rep_dim + (rep_dim + 1) * out_dim


def make_model(kind: str, d_H: int, d_W: int, out_dim: int, **ranks) -> nn.Module:
    """"probex" (ranks n_probes, proj_dim, rep_dim) or "dense"."""
    if kind == "probex":
        return ProbeX(d_H, d_W, out_dim=out_dim, **ranks)
    if kind == "dense":
        return Dense(d_H, d_W, out_dim)
    raise ValueError(f"unknown model kind {kind!r}; choose 'probex' or 'dense'")


def ranks_for(shape, ranks: Mapping[str, int]) -> dict[str, int]:
    """Clip probe / projection ranks to the layer's sides (r_U <= d_W, r_V <= d_H): more probes than input
    dimensions (or projections than output dimensions) add parameters but no rank."""
    d_H, d_W = shape[-2:]
    out = dict(ranks)
    out["n_probes"] = min(out.get("n_probes", 128), d_W)
    out["proj_dim"] = min(out.get("proj_dim", 128), d_H)
    return out
