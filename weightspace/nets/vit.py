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


# --------------------------------------------------------------------- M ViTs as one batched computation

def stacked_config(model: nn.Module) -> dict | None:
    """What `stacked_forward` needs to run `model`'s architecture for stacked weights, or None when it is not
    a plain timm ViT of the kind our zoos train (class token, no register tokens, qkv bias, no q/k norm or
    layer scale, exact GELU, an avg- or token-pooled linear head; dropouts are no-ops at p = 0)."""
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import Block, VisionTransformer

    if type(model) is not VisionTransformer:
        return None
    blocks = list(model.blocks)
    zero_drop = all(getattr(m, "p", 0.0) == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    plain = (
        model.has_class_token and model.num_reg_tokens == 0 and not model.no_embed_class
        and model.global_pool in ("avg", "token") and isinstance(model.head, nn.Linear) and zero_drop
        and type(model.patch_embed) is PatchEmbed and isinstance(model.patch_embed.norm, nn.Identity)
        and model.patch_embed.proj.kernel_size == model.patch_embed.proj.stride and model.patch_embed.flatten
        and not getattr(model.patch_embed, "dynamic_img_size", False) and not getattr(model, "dynamic_img_size", False)
        and isinstance(model.norm_pre, nn.Identity) and isinstance(model.patch_drop, nn.Identity)
        and all(type(b) is Block and isinstance(b.ls1, nn.Identity) and isinstance(b.ls2, nn.Identity)
                and isinstance(b.drop_path1, nn.Identity) and isinstance(b.drop_path2, nn.Identity)
                and isinstance(b.attn.q_norm, nn.Identity) and isinstance(b.attn.k_norm, nn.Identity)
                and isinstance(getattr(b.attn, "norm", nn.Identity()), nn.Identity)
                and b.attn.qkv.bias is not None and type(b.mlp.act) is nn.GELU and b.mlp.act.approximate == "none"
                and isinstance(b.mlp.norm, nn.Identity) for b in blocks)
        and all(isinstance(n, (nn.LayerNorm, nn.Identity)) for n in (model.norm, model.fc_norm))
        and all(isinstance(n, nn.LayerNorm) for b in blocks for n in (b.norm1, b.norm2)))
    if not plain:
        return None
    return dict(depth=len(blocks), num_heads=blocks[0].attn.num_heads, patch=model.patch_embed.proj.kernel_size[0],
                pool=model.global_pool, norm=isinstance(model.norm, nn.LayerNorm),
                fc_norm=isinstance(model.fc_norm, nn.LayerNorm), eps=blocks[0].norm1.eps)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x [M, T, in] @ w[m]ᵀ + b[m] for each of M models: one batched product with the bias fused in."""
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    return torch.nn.functional.layer_norm(x, x.shape[-1:], None, None, eps) * w.view(shape) + b.view(shape)


def stacked_forward(params: dict[str, torch.Tensor], x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """timm's VisionTransformer.forward for M stacked weight sets (params[k] [M, ...]) on x [M, B, C, H, W]
    -> logits [M, B, classes]: the same function (to float rounding; tested against timm) as vmapping the
    module over the models, with each linear layer one batched product and attention fused
    (scaled_dot_product_attention), which vmap cannot use on CPU."""
    F = torch.nn.functional
    M, B, C, H, W = x.shape
    p, eps, heads = cfg["patch"], cfg["eps"], cfg["num_heads"]
    w = params["patch_embed.proj.weight"]                                   # [M, d, C, p, p]
    d = w.shape[1]
    n = (H // p) * (W // p)
    patches = x.reshape(M, B, C, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(M, B * n, C * p * p)
    t = _linear(patches, w.reshape(M, d, C * p * p), params["patch_embed.proj.bias"]).view(M, B, n, d)
    cls = params["cls_token"].reshape(M, 1, 1, d).expand(M, B, 1, d)
    t = torch.cat([cls, t], 2) + params["pos_embed"].reshape(M, 1, n + 1, d)
    N, hd = n + 1, d // heads
    t = t.reshape(M, B * N, d)
    for i in range(cfg["depth"]):
        k = f"blocks.{i}."
        h = _layer_norm(t, params[k + "norm1.weight"], params[k + "norm1.bias"], eps)
        q, kk, v = _linear(h, params[k + "attn.qkv.weight"], params[k + "attn.qkv.bias"]).view(
            M * B, N, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)          # each [M B, heads, N, hd]
        o = F.scaled_dot_product_attention(q, kk, v).transpose(1, 2).reshape(M, B * N, d)
        t = t + _linear(o, params[k + "attn.proj.weight"], params[k + "attn.proj.bias"])
        h = _layer_norm(t, params[k + "norm2.weight"], params[k + "norm2.bias"], eps)
        h = F.gelu(_linear(h, params[k + "mlp.fc1.weight"], params[k + "mlp.fc1.bias"]))
        t = t + _linear(h, params[k + "mlp.fc2.weight"], params[k + "mlp.fc2.bias"])
    t = t.view(M, B, N, d)
    if cfg["norm"]:
        t = _layer_norm(t, params["norm.weight"], params["norm.bias"], eps)
    t = t[:, :, 1:].mean(2) if cfg["pool"] == "avg" else t[:, :, 0]
    if cfg["fc_norm"]:
        t = _layer_norm(t, params["fc_norm.weight"], params["fc_norm.bias"], eps)
    return _linear(t, params["head.weight"], params["head.bias"])
