"""A tiny text-to-image diffusion model of our own: a diffusers UNet2DConditionModel on 8x8 StyledDigits.

Stable Diffusion (Rombach et al. 2022) denoises in a VAE's latent space with a UNet that cross-attends to a
frozen text encoder's token states. Here the "latent" is the 8x8 image itself (pixel space, values in
[-1, 1]), the UNet is small (0.9M parameters with MiniLM's 384-d tokens) and the text tower is
`weightspace.nets.text.TextEncoder`. Training is DDPM's epsilon-prediction loss (Ho et al. 2020, Alg. 1):

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,      L = || eps - eps_theta(x_t, t, c) ||^2

and sampling is DDIM (Song et al. 2021, eq. 12, eta = 0): x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t),
x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps. The schedulers are diffusers'; the loops are here.

`make_pipeline` wraps the same parts (with a small VAE) in a diffusers StableDiffusionPipeline, whose
`output_type="latent"` output equals `ddim_sample`; `load_lora` is a checked front end to diffusers'
`load_lora_adapter`, which silently loads nothing when the key prefix is wrong.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .lora import WEIGHT_NAME, StackedLoRA

log = logging.getLogger(__name__)

# the UNet of SD's design, shrunk to 8x8 one-channel images (two resolutions, cross-attention at both)
UNET = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=[32, 64],
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=384, attention_head_dim=8,
            norm_num_groups=8)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]   # self- (attn1) and cross-attention (attn2), as Model-J
TRAIN_TIMESTEPS = 1000


def unet_config(cross_attention_dim: int = 384, **overrides) -> dict:
    """UNet2DConditionModel arguments: UNET with the text width and any overrides (JSON-able)."""
    return {**UNET, "cross_attention_dim": int(cross_attention_dim), **overrides}


def make_unet(config: Mapping | None = None, seed: int = 0):
    """A UNet2DConditionModel from `config` (default unet_config()), initialised from `seed`."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return UNet2DConditionModel(**dict(config or unet_config()))


def ddpm_scheduler():
    """The training noise schedule: 1000 steps, cosine (squaredcos_cap_v2), epsilon prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2")


def ddim_scheduler():
    """DDIM over the same schedule (what sampling and the pipeline use)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(ddpm_scheduler().config)


def denoising_loss(unet, scheduler, x0, cond, noise, t, groups: int = 1) -> torch.Tensor:
    """DDPM's epsilon-prediction MSE, averaged within each of `groups` contiguous groups of the batch -> [groups].

    Summing the result gives every group (a LoRA adapter's examples) exactly its own gradient."""
    noisy = scheduler.add_noise(x0, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=cond).sample
    return F.mse_loss(pred, noise, reduction="none").reshape(groups, -1).mean(1)


def train_base(unet, images: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor, *, steps: int,
               batch_size: int = 64, lr: float = 2e-3, seed: int = 0, generic: torch.Tensor | None = None,
               p_generic: float = 0.1, progress: bool = False) -> list[float]:
    """Pre-train `unet` in place (AdamW, warm-up then cosine decay, gradient clipping at 1) on images
    [N, 1, H, W] with class labels [N] indexing `tokens` [C, L, d] (each class's prompt token states). With
    `generic` [L, d], a fraction p_generic of examples is conditioned on that one shared prompt instead, so the
    base also answers it (with any class): what the generic-prompt LoRAs start from. Returns the loss per step."""
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
    dev = next(unet.parameters()).device
    g = torch.Generator().manual_seed(seed)
    sched = ddpm_scheduler()
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 20)
    lr_at = lambda s: lr * min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    from tqdm.auto import tqdm

    losses = []
    for s in tqdm(range(steps), desc="pre-training the base UNet", disable=not progress, unit="step"):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        cond = tokens[labels[idx]]
        if generic is not None and p_generic > 0:
            use = torch.rand(batch_size, generator=g) < p_generic
            cond = torch.where(use[:, None, None], generic.expand_as(cond), cond)
        noise = torch.randn(images[idx].shape, generator=g)
        t = torch.randint(TRAIN_TIMESTEPS, (batch_size,), generator=g)
        for group in opt.param_groups:
            group["lr"] = lr_at(s)
        loss = denoising_loss(unet, sched, images[idx].to(dev), cond.to(dev), noise.to(dev), t.to(dev)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    unet.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def ddim_sample(unet, cond: torch.Tensor, *, steps: int = 20, generator: torch.Generator | None = None,
                seed: int = 0, noise: torch.Tensor | None = None, chunk: int = 0) -> torch.Tensor:
    """DDIM samples (eta = 0) for token states cond [N, L, d] -> images [N, C, H, W] clamped to [-1, 1].

    Starting noise is `noise`, or torch.randn from `generator` (else one seeded with `seed`), drawn as
    diffusers' pipeline draws its latents, so the pipeline with the same generator gives the same images.
    `chunk` > 0 denoises that many samples at a time (memory); with a StackedLoRA on the UNet, lay `cond` out
    as the adapters' groups (and leave chunk at 0)."""
    cfg = unet.config
    dev = next(unet.parameters()).device
    shape = (len(cond), cfg.in_channels, cfg.sample_size, cfg.sample_size)
    if noise is None:
        noise = torch.randn(shape, generator=generator or torch.Generator().manual_seed(seed))
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
    sched = ddim_scheduler()
    sched.set_timesteps(steps)
    was_training = unet.training
    unet.eval()
    x, cond = noise.to(dev) * sched.init_noise_sigma, cond.to(dev)
    parts = range(0, len(x), chunk) if chunk else [0]
    for t in sched.timesteps:
        eps = torch.cat([unet(x[i:i + (chunk or len(x))], t, encoder_hidden_states=cond[i:i + (chunk or len(x))]).sample
                         for i in parts])
        x = sched.step(eps, t, x).prev_sample
    unet.train(was_training)
    return x.clamp(-1, 1).cpu()


# ------------------------------------------------------------------------------- the diffusers pipeline

def small_vae(channels: int = 1, seed: int = 0):
    """A one-level AutoencoderKL (no down-sampling, 1 latent channel): the slot SD's VAE fills. It is not
    trained: our UNet works in pixel space, so the pipeline's `output_type="latent"` output is the image."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoencoderKL(in_channels=channels, out_channels=channels, latent_channels=channels,
                             block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                             up_block_types=("UpDecoderBlock2D",), layers_per_block=1, norm_num_groups=8,
                             sample_size=8)


def make_pipeline(unet, text):
    """A diffusers StableDiffusionPipeline from our parts: `unet`, the TextEncoder `text` (its model and
    tokenizer, padding to text.max_length), DDIM, and `small_vae`; no safety checker. save_pretrained /
    from_pretrained round-trip it, and load_lora_weights loads our LoRA files into it."""
    from diffusers import StableDiffusionPipeline

    if text.model is None or text.tokenizer is None:
        raise ValueError("make_pipeline needs a TextEncoder with its model and tokenizer (not a cache-only one)")
    return StableDiffusionPipeline(vae=small_vae(unet.config.in_channels), text_encoder=text.model,
                                   tokenizer=text.tokenizer, unet=unet, scheduler=ddim_scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


# ------------------------------------------------------------------------------------- LoRA files

class LoRAFileError(ValueError):
    """A LoRA file that does not fit: wrong prefix, rank, keys or shapes. The message names the file."""


def read_lora(path, prefix: str | None = "unet", rank: int | None = None) -> tuple[dict, dict, dict]:
    """A diffusers LoRA file -> ({module: (down [r, d_in], up [d_out, r])}, LoraConfig dict, header).

    Checks what diffusers does not: the keys carry `prefix` (diffusers loads nothing otherwise, silently), the
    header has `lora_adapter_metadata` (without it alpha is lost), every module has both factors, and their
    rank is the header's (and `rank`, when given)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHT_NAME
    if not path.is_file():
        raise LoRAFileError(f"{path}: no LoRA file there (expected {WEIGHT_NAME})")
    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return parse_lora(tensors, header, path, prefix, rank)


def parse_lora(tensors: Mapping[str, torch.Tensor], header: Mapping[str, str], path, prefix: str | None = "unet",
               rank: int | None = None) -> tuple[dict, dict, dict]:
    """`read_lora` on tensors and header already read (e.g. verified by a Zoo); `path` names them in errors."""
    header = dict(header)
    head = f"{prefix}." if prefix else ""
    firsts = {k.split(".", 1)[0] for k in tensors}
    if not head and len(firsts) == 1 and next(iter(firsts)) in ("unet", "text_encoder", "transformer"):
        first = next(iter(firsts))
        raise LoRAFileError(f"{path}: every key starts with {first + '.'!r} (e.g. {sorted(tensors)[0]!r}); load it with "
                            f"prefix={first!r} (diffusers' load_lora_adapter without it silently loads nothing)")
    if head and not any(k.startswith(head) for k in tensors):
        first = sorted(tensors)[:2]
        raise LoRAFileError(f"{path}: no key starts with the prefix {head!r} (keys look like {first}); "
                            "pass the prefix the file uses")
    if "lora_adapter_metadata" not in header:
        raise LoRAFileError(f"{path}: the header has no 'lora_adapter_metadata', so the adapter's alpha would be "
                            "lost on load (diffusers would set lora_alpha = r)")
    packed = json.loads(header["lora_adapter_metadata"])
    config = {k[len(head):]: v for k, v in packed.items() if k.startswith(head)} if head else packed
    if "r" not in config:
        raise LoRAFileError(f"{path}: lora_adapter_metadata has no {head}r (it has {sorted(packed)[:6]})")
    modules: dict[str, list] = {}
    for k, v in tensors.items():
        if not k.startswith(head):
            continue
        for part, slot in ((".lora.down.weight", 0), (".lora.up.weight", 1)):
            if k.endswith(part):
                modules.setdefault(k[len(head):-len(part)], [None, None])[slot] = v
    if not modules:
        raise LoRAFileError(f"{path}: no '.lora.down.weight' / '.lora.up.weight' keys under {head!r}")
    half = [m for m, (d, u) in modules.items() if d is None or u is None]
    if half:
        raise LoRAFileError(f"{path}: module {half[0]!r} lacks its {'down' if modules[half[0]][0] is None else 'up'} "
                            f"factor (missing keys in {len(half)} module(s))")
    want = int(config["r"]) if rank is None else int(rank)
    for m, (d, u) in modules.items():
        if d.ndim != 2 or u.ndim != 2 or d.shape[0] != u.shape[1]:
            raise LoRAFileError(f"{path}: {m}: down {tuple(d.shape)} and up {tuple(u.shape)} do not chain")
        if d.shape[0] != want or d.shape[0] != int(config["r"]):
            raise LoRAFileError(f"{path}: {m} has rank {d.shape[0]}, but the header says r={config['r']}"
                                + (f" and rank {rank} was asked for" if rank is not None else ""))
    return {m: (d, u) for m, (d, u) in modules.items()}, config, header


def check_lora_fits(unet, modules: Mapping[str, tuple], config: Mapping, where) -> None:
    """Raise LoRAFileError unless every adapted module is a Linear of `unet` with matching shapes, and every
    Linear the config targets has factors (no missing keys)."""
    from torch import nn

    linears = {n: m for n, m in unet.named_modules() if isinstance(m, nn.Linear)}
    for name, (d, u) in modules.items():
        lin = linears.get(name)
        if lin is None:
            hint = "; the file's keys carry a prefix: pass it" if any(n.endswith(name.split(".", 1)[-1])
                                                                       for n in linears) else ""
            raise LoRAFileError(f"{where}: module {name!r} is not a Linear of this {type(unet).__name__}{hint}")
        if d.shape[1] != lin.in_features or u.shape[0] != lin.out_features:
            raise LoRAFileError(f"{where}: base/adapter mismatch at {name}: the adapter is [{u.shape[0]} x "
                                f"{d.shape[1]}] but the base Linear is [{lin.out_features} x {lin.in_features}]")
    targets = config.get("target_modules") or []
    want = [n for n in linears if any(n == t or n.endswith("." + t) for t in targets)]
    missing = [n for n in want if n not in modules]
    if missing:
        raise LoRAFileError(f"{where}: missing keys: {len(missing)} targeted module(s) have no factors, e.g. "
                            f"{missing[:3]}")


def load_lora(unet, path, *, adapter_name: str = "default", prefix: str | None = "unet",
              rank: int | None = None) -> str:
    """Load a diffusers LoRA file into `unet` with diffusers' own `load_lora_adapter`, after checking that
    it fits (`read_lora`, `check_lora_fits`) and then that diffusers really loaded every module (it loads
    nothing, silently, when the prefix is wrong). Returns the adapter name."""
    path = Path(path)
    folder, weight = (path.parent, path.name) if path.suffix == ".safetensors" else (path, WEIGHT_NAME)
    modules, config, _ = read_lora(folder / weight, prefix=prefix, rank=rank)
    check_lora_fits(unet, modules, config, folder / weight)
    unet.load_lora_adapter(str(folder), weight_name=weight, prefix=prefix, adapter_name=adapter_name)
    loaded = {n for n, m in unet.named_modules() if adapter_name in getattr(m, "lora_A", {})}
    if loaded != set(modules):
        raise LoRAFileError(f"{folder / weight}: diffusers loaded {len(loaded)} of the file's {len(modules)} "
                            "LoRA modules")
    return adapter_name


def stack_loras(unet, loras: Sequence[tuple[Mapping, Mapping]], where: Sequence | None = None) -> StackedLoRA:
    """A StackedLoRA on `unet` holding the given adapters ((modules, config) pairs, as from read_lora), so
    all of them run in one batched forward (K groups of the batch, group k through adapter k)."""
    if not loras:
        raise ValueError("stack_loras needs at least one LoRA")
    where = list(where) if where is not None else [f"LoRA {k}" for k in range(len(loras))]
    targets = sorted({t for _, c in loras for t in c.get("target_modules") or []})
    for (mods, cfg), w in zip(loras, where):
        check_lora_fits(unet, mods, cfg, w)
    stacked = StackedLoRA(unet, targets, [int(c["r"]) for _, c in loras],
                          alpha=[float(c.get("lora_alpha", c["r"])) for _, c in loras])
    names = set(stacked.modules)
    with torch.no_grad():
        for k, ((mods, _), w) in enumerate(zip(loras, where)):
            if set(mods) != names:
                stacked.remove()
                raise LoRAFileError(f"{w}: adapts {len(mods)} modules, the others adapt {len(names)}; "
                                    "stacked LoRAs must share their modules")
            for n, (d, u) in mods.items():
                r = d.shape[0]
                stacked.params[f"{n}.lora_A"][k, :r] = d.float()
                stacked.params[f"{n}.lora_B"][k, :, :r] = u.float()
    for p in stacked.params.values():
        p.requires_grad_(False)
    return stacked
