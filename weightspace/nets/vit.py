"""Small Vision Transformers: timm's own VisionTransformer, so parameter names are exactly timm's and
paper-scale timm checkpoints load into the same code.

Per block the weight matrices are `blocks.{i}.attn.qkv.weight` [3d, d] (query, key and value stacked by
rows), `attn.proj.weight` [d, d] (the attention output projection), `mlp.fc1.weight` [4d, d] and
`mlp.fc2.weight` [d, 4d].
"""
from __future__ import annotations

import torch
from torch import nn

# 8x8 digits, patch 2 -> 16 patches + CLS; 26.5k parameters with a 10-way head
VIT_TINY = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0)
# a registered timm name whose arguments VIT_TINY overrides: timm.create_model(TIMM_NAME, **kwargs) rebuilds
# exactly make_vit's VisionTransformer (the zoo manifests record it, so plain timm loads our files)
TIMM_NAME = "vit_tiny_patch16_224"


def make_vit(num_classes: int, **config) -> nn.Module:
    """timm VisionTransformer with VIT_TINY defaults; fused attention off (it has no vmap rule on CPU)."""
    from timm.models.vision_transformer import VisionTransformer

    cfg = {**VIT_TINY, **config}
    model = VisionTransformer(num_classes=num_classes, **cfg)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


def timm_architecture(**config) -> dict:
    """What rebuilds make_vit(num_classes, **config) with plain timm: {"library", "model_name", "kwargs"}
    for `timm.create_model(model_name, pretrained=False, num_classes=..., **kwargs)`."""
    return {"library": "timm", "model_name": TIMM_NAME, "kwargs": {**VIT_TINY, **config}}


# The ViT's matrices by role, each group a list of (regex on the key, blocks): blocks None = the whole tensor,
# else a subset of "qkv" taken from the fused [3d, d] qkv weight. MoTHer's "timm-vit" layer preset is this table
# (mother.layers), and the forests log the kurtosis of the "output" and "value" groups while training.
QKV_KEY = r"blocks\.\d+\.attn\.qkv\.weight$"
LAYER_GROUPS: dict[str, list[tuple[str, str | None]]] = {
    "attention": [(QKV_KEY, "qkv"), (r"blocks\.\d+\.attn\.proj\.weight$", None)],
    "value": [(QKV_KEY, "v")],
    "output": [(r"blocks\.\d+\.attn\.proj\.weight$", None)],
    "mlp": [(r"blocks\.\d+\.mlp\.fc[12]\.weight$", None)],
    "hidden": [(QKV_KEY, "qkv"), (r"blocks\.\d+\.(attn\.proj|mlp\.fc[12])\.weight$", None)],
}


def group_matrices(params, group: str) -> list[torch.Tensor]:
    """The matrices of one LAYER_GROUPS group from a state dict (or a stacked [M, ...] one), in key order."""
    import re

    out = []
    for k, v in params.items():
        for pattern, blocks in LAYER_GROUPS[group]:
            if re.search(pattern, k):
                out += [v] if blocks is None else [split_qkv(v)["qkv".index(b)] for b in blocks]
                break
    return out


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
