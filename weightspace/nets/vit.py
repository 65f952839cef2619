"""Small Vision Transformers: timm's own VisionTransformer, so parameter names are exactly timm's and
paper-scale timm checkpoints load into the same code.

Per block the weight matrices are `blocks.{i}.attn.qkv.weight` [3d, d] (query, key and value stacked by
rows), `attn.proj.weight` [d, d] (the attention output projection), `mlp.fc1.weight` [4d, d] and
`mlp.fc2.weight` [d, 4d].
"""
from __future__ import annotations

import torch
from torch import nn

# 8x8 digits, patch 2 -> 16 patches + CLS; 26.5k parameters with a 10-way head (environment.md, section 4)
VIT_TINY = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0)


def make_vit(num_classes: int, **config) -> nn.Module:
    """timm VisionTransformer with VIT_TINY defaults; fused attention off (it has no vmap rule on CPU)."""
    from timm.models.vision_transformer import VisionTransformer

    cfg = {**VIT_TINY, **config}
    model = VisionTransformer(num_classes=num_classes, **cfg)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


def weight_matrices(state_dict) -> list[str]:
    """Names of the 2-D weight matrices of a ViT state dict (hidden layers; the head excluded)."""
    return [k for k, v in state_dict.items() if k.endswith(".weight") and v.ndim == 2 and not k.startswith("head")]


def split_qkv(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm's fused qkv weight [..., 3d, d] -> (query, key, value), each [..., d, d]."""
    d = qkv.shape[-2] // 3
    return qkv[..., :d, :], qkv[..., d:2 * d, :], qkv[..., 2 * d:, :]


class MethodCall(nn.Module):
    """Wrap a module so that functional_call can run one of its methods (e.g. forward_features)."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.m = module
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.m, self.method)(*args, **kwargs)
