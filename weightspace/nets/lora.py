"""Many LoRA adapters trained at once over one frozen base model.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. (3)) adapts a frozen
weight W0 [d_out, d_in] by a product of two small factors: h = W0 x + (alpha / r) B A x, with
A [r, d_in] and B [d_out, r]; B starts at zero so training starts at W0.

Here K adapters share one base and are stored stacked: A [K, r_max, d_in], B [K, d_out, r_max]. An
adapter of rank r_k < r_max uses only its first r_k rows of A and columns of B (a rank mask); the other
entries stay exactly zero. Two ways to use them:

- functional (`delta`, `merge`, `cumulative`): the weight change as a matrix, for code that already
  batches whole models with torch.func.vmap (the ViT forests);
- `StackedLoRA`: forward hooks on the frozen nn.Linear modules of any model (e.g. a diffusers UNet). The
  batch is K contiguous groups of b examples, group k is adapter k's data, and each hooked Linear adds
  (alpha_k / r_k) (x_k A_kᵀ) B_kᵀ with two batched matmuls. With the loss summed over groups, each
  adapter gets exactly its own gradient, and one (elementwise) AdamW over the stacked tensors equals K
  independent AdamWs.

Exports use peft's key layout (`<module>.lora_A.weight`, `.lora_B.weight`) or diffusers' LoRA file
layout (`unet.<module>.lora.down.weight`, `.lora.up.weight`, header `lora_adapter_metadata`).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

INITS = ("kaiming", "gaussian")


def _ranks(ranks: int | Sequence[int], K: int | None = None) -> list[int]:
    if isinstance(ranks, int):
        if K is None:
            raise ValueError("give one rank per adapter, or K with a single rank")
        ranks = [ranks] * K
    ranks = [int(r) for r in ranks]
    if not ranks:
        raise ValueError("need at least one adapter (got an empty list of ranks)")
    return ranks


def rank_mask(ranks: Sequence[int], r_max: int | None = None) -> torch.Tensor:
    """[K, r_max] float mask: 1 on the first ranks[k] factor slots of adapter k, 0 after."""
    ranks_t = torch.as_tensor(list(ranks))
    r_max = int(ranks_t.max()) if r_max is None else int(r_max)
    return (torch.arange(r_max)[None, :] < ranks_t[:, None]).float()


def lora_scale(ranks: Sequence[int], alpha: float | Sequence[float] | None = None) -> torch.Tensor:
    """[K] scales alpha_k / r_k of LoRA eq. (3); alpha None means alpha = r (scale 1)."""
    ranks_t = torch.as_tensor(list(ranks), dtype=torch.float32)
    if alpha is None:
        return torch.ones_like(ranks_t)
    alpha_t = torch.as_tensor(alpha, dtype=torch.float32).expand_as(ranks_t)
    return alpha_t / ranks_t


def _check_ranks(ranks: Sequence[int], d_in: int, d_out: int, where: str = "") -> None:
    limit = min(d_in, d_out)
    for k, r in enumerate(ranks):
        if r < 1 or r > limit:
            raise ValueError(f"{where}adapter {k}: rank {r} is out of range; a LoRA rank must be in "
                             f"1..min(d_in, d_out) = 1..{limit} for a [{d_out}, {d_in}] weight")


def _generators(K: int, seeds, generators, key: Sequence = ()) -> list[torch.Generator]:
    from weightspace.runtime import derive_seed

    if (seeds is None) == (generators is None):
        raise ValueError("give exactly one of seeds (one int per adapter) or generators (one per adapter)")
    if generators is not None:
        gens = list(generators)
    else:
        gens = [torch.Generator().manual_seed(derive_seed(s, *key) if key else int(s)) for s in seeds]
    if len(gens) != K:
        raise ValueError(f"got {len(gens)} seeds/generators for {K} adapters")
    return gens


def init_factors(d_in: int, d_out: int, ranks: Sequence[int], *, seeds: Sequence[int] | None = None,
                 generators: Sequence[torch.Generator] | None = None, key: Sequence = (),
                 init: str = "kaiming", r_max: int | None = None, dtype=torch.float32, device="cpu"):
    """Stacked LoRA factors for K = len(ranks) adapters of one [d_out, d_in] weight.

    Returns (A [K, r_max, d_in], B [K, d_out, r_max], mask [K, r_max]). B is zero, so every adapter
    starts at the base weight (LoRA, Sec. 4.1). A follows peft's two initialisations:
    "kaiming" (peft's default, init_lora_weights=True: kaiming-uniform with a=sqrt(5), i.e. uniform in
    ±1/sqrt(d_in)), drawn as (rand(r_max, d_in) * 2 - 1) / sqrt(d_in); "gaussian" (peft's "gaussian":
    normal with std 1/r_k). Adapter k draws from its own generator: generators[k], or one seeded with
    seeds[k] (or derive_seed(seeds[k], *key) when a key such as (layer name, block) is given), so the
    same seed gives the same factors whatever the other adapters are. Rows of A beyond r_k are zero.
    """
    ranks = _ranks(ranks)
    K = len(ranks)
    _check_ranks(ranks, d_in, d_out)
    if init not in INITS:
        raise ValueError(f"unknown LoRA init {init!r}; choose one of {INITS}")
    r_max = max(ranks) if r_max is None else int(r_max)
    if r_max < max(ranks):
        raise ValueError(f"r_max={r_max} is below the largest rank {max(ranks)}")
    gens = _generators(K, seeds, generators, key)
    mask = rank_mask(ranks, r_max)
    rows = []
    for g, r in zip(gens, ranks):
        if init == "kaiming":
            rows.append((torch.rand(r_max, d_in, generator=g) * 2 - 1) / d_in ** 0.5)
        else:
            rows.append(torch.randn(r_max, d_in, generator=g) / r)
    A = (torch.stack(rows) * mask[:, :, None]).to(device=device, dtype=dtype)
    B = torch.zeros(K, d_out, r_max, device=device, dtype=dtype)
    return A, B, mask.to(device)


def delta(A: torch.Tensor, B: torch.Tensor, mask: torch.Tensor | None = None,
          scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """The weight change (alpha/r) B A: A [..., r, d_in], B [..., d_out, r] -> [..., d_out, d_in].

    As in LoRA eq. (3). `mask` [..., r] keeps an adapter to its own rank; `scale` [...] (or a number) is
    alpha/r. Leading dims broadcast, so it works stacked ([K, ...]) and inside torch.func.vmap (one
    adapter at a time).
    """
    if mask is not None:
        B = B * mask.unsqueeze(-2)
    out = B @ A
    if scale is not None:
        s = torch.as_tensor(scale, dtype=out.dtype, device=out.device)
        out = out * s[..., None, None]
    return out


def merge(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, mask: torch.Tensor | None = None,
          scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """W + (alpha/r) B A: the adapted weight that LoRA deploys with no extra inference cost (Sec. 4.1)."""
    return W + delta(A, B, mask, scale)


def cumulative(U_parent: torch.Tensor | None, V_parent: torch.Tensor | None, U: torch.Tensor,
               V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of a LoRA stacked on an already-adapted parent: W = W_root + U_p V_p + U V = W_root + U' V'.

    U [..., d_out, r], V [..., r, d_in] (put alpha/r into U); returns (U' = [U_p, U], V' = [V_p; V]) of
    rank r_p + r, so a path root -> ... -> node is one low-rank product. A parent of None is the root.
    """
    if U_parent is None or V_parent is None:
        if U_parent is not None or V_parent is not None:
            raise ValueError("give both U_parent and V_parent, or neither (the root)")
        return U, V
    if U_parent.shape[-2] != U.shape[-2] or V_parent.shape[-1] != V.shape[-1]:
        raise ValueError(f"parent factors {tuple(U_parent.shape)} x {tuple(V_parent.shape)} do not match "
                         f"{tuple(U.shape)} x {tuple(V.shape)}")
    return torch.cat([U_parent, U], -1), torch.cat([V_parent, V], -2)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


class StackedLoRA:
    """K LoRA adapters on the chosen nn.Linear modules of one frozen model, trained in one batch.

    `targets` are module-name suffixes as in peft's LoraConfig.target_modules (e.g. ["to_q", "to_k",
    "to_v", "to_out.0"]): a Linear named n is adapted when n == t or n ends with "." + t. The model's
    input batch must be K contiguous groups of b examples (group k for adapter k); every hooked Linear
    adds (alpha_k / r_k) (x_k A_kᵀ) B_kᵀ to its output (LoRA eq. (3)), with no loop over adapters.

    `params` is a dict of leaf tensors ("<module>.lora_A" [K, r_max, d_in], "<module>.lora_B"
    [K, d_out, r_max]) for one optimiser; `scale` [K] is alpha/r, `mask` [K, r_max] the rank mask.
    Seeds: adapter k's factors of module n come from derive_seed(seeds[k], n) (seeds default to
    0..K-1). `alpha` (one, or one per adapter) defaults to the rank (scale 1). `freeze` sets the base
    model's requires_grad to False. Use as a context manager, or call remove(), to detach the hooks.
    """

    def __init__(self, model: nn.Module, targets: Sequence[str], ranks: int | Sequence[int], *,
                 alpha: float | Sequence[float] | None = None, seeds: Sequence[int] | None = None,
                 K: int | None = None, init: str = "kaiming", freeze: bool = True):
        if isinstance(targets, str):
            targets = [targets]
        self.targets = list(targets)
        self.ranks = _ranks(ranks, K)
        self.K = len(self.ranks)
        self.r_max = max(self.ranks)
        self.init = init
        if alpha is None:
            self.alpha = [float(r) for r in self.ranks]
        else:
            a = torch.as_tensor(alpha, dtype=torch.float32).expand(self.K)
            self.alpha = [float(x) for x in a]
        seeds = list(range(self.K)) if seeds is None else list(seeds)
        linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        self.modules = {n: m for n, m in linears.items() if any(_matches(n, t) for t in self.targets)}
        unused = [t for t in self.targets if not any(_matches(n, t) for n in linears)]
        if unused:
            others = [n for n, m in model.named_modules() if any(_matches(n, t) for t in unused)]
            hint = f" (modules of that name that are not nn.Linear: {others[:4]})" if others else ""
            raise ValueError(f"LoRA target(s) {unused} match no nn.Linear of {type(model).__name__}{hint}; "
                             f"some Linear names: {list(linears)[:6]}")
        if freeze:
            model.requires_grad_(False)
        p = next(iter(self.modules.values())).weight
        self.mask = rank_mask(self.ranks).to(p.device)
        self.scale = lora_scale(self.ranks, self.alpha).to(p.device)
        self.params: dict[str, torch.Tensor] = {}
        for n, m in self.modules.items():
            _check_ranks(self.ranks, m.in_features, m.out_features, where=f"{n}: ")
            A, B, _ = init_factors(m.in_features, m.out_features, self.ranks, seeds=seeds, key=(n,),
                                   init=init, dtype=torch.float32, device=p.device)
            self.params[f"{n}.lora_A"] = A.requires_grad_(True)
            self.params[f"{n}.lora_B"] = B.requires_grad_(True)
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]

    def _hook(self, name: str):
        A, B = self.params[f"{name}.lora_A"], self.params[f"{name}.lora_B"]

        def hook(module, inputs, output):
            x = inputs[0]
            if x.shape[0] % self.K:
                raise ValueError(f"{name}: got a batch of {x.shape[0]} inputs, not a multiple of "
                                 f"K={self.K}; lay the batch out as K contiguous groups of b examples, "
                                 "group k for adapter k")
            h = x.reshape(self.K, -1, x.shape[-1]).to(A.dtype)
            t = torch.bmm(h, A.transpose(1, 2)) * (self.mask * self.scale[:, None])[:, None, :]
            y = output.reshape(self.K, -1, output.shape[-1]).to(A.dtype)
            return torch.baddbmm(y, t, B.transpose(1, 2)).reshape(output.shape).to(output.dtype)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> StackedLoRA:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def factors(self, k: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapter k's own (A [r_k, d_in], B [d_out, r_k]) on module `name` (detached CPU copies)."""
        self._check_k(k)
        r = self.ranks[k]
        A = self.params[f"{name}.lora_A"][k, :r].detach().to("cpu").clone().contiguous()
        B = self.params[f"{name}.lora_B"][k, :, :r].detach().to("cpu").clone().contiguous()
        return A, B

    def deltas(self, name: str) -> torch.Tensor:
        """[K, d_out, d_in]: every adapter's (alpha/r) B A on module `name`."""
        return delta(self.params[f"{name}.lora_A"], self.params[f"{name}.lora_B"], self.mask, self.scale)

    def _check_k(self, k: int) -> None:
        if not 0 <= k < self.K:
            raise IndexError(f"adapter index {k} out of range for K={self.K} adapters")

    def _named_factors(self, k: int, name_A, name_B) -> dict[str, torch.Tensor]:
        out = {}
        for n in self.modules:
            A, B = self.factors(k, n)
            out[name_A(n)], out[name_B(n)] = A, B
        return out

    def peft_state_dict(self, k: int, prefix: str = "") -> dict[str, torch.Tensor]:
        """Adapter k as peft.utils.get_peft_model_state_dict lays it out: `<module>.lora_A.weight` [r, d_in]
        and `<module>.lora_B.weight` [d_out, r] (module names relative to the hooked model, plus `prefix`)."""
        return self._named_factors(k, lambda n: f"{prefix}{n}.lora_A.weight", lambda n: f"{prefix}{n}.lora_B.weight")

    def diffusers_state_dict(self, k: int, prefix: str = "unet") -> dict[str, torch.Tensor]:
        """Adapter k in diffusers' LoRA file layout: `<prefix>.<module>.lora.down.weight` (A) and
        `.lora.up.weight` (B), as StableDiffusionPipeline.save_lora_weights writes them."""
        return self._named_factors(k, lambda n: f"{prefix}.{n}.lora.down.weight",
                                   lambda n: f"{prefix}.{n}.lora.up.weight")

    def lora_config(self, k: int) -> dict:
        """Keyword arguments of peft.LoraConfig describing adapter k (r, lora_alpha, target_modules, init)."""
        self._check_k(k)
        return {"r": self.ranks[k], "lora_alpha": self.alpha[k], "target_modules": list(self.targets),
                "init_lora_weights": True if self.init == "kaiming" else "gaussian"}


def diffusers_metadata(config: Mapping, prefix: str = "unet",
                       extra_metadata: Mapping[str, str] | None = None) -> dict[str, str]:
    """The safetensors header of a diffusers LoRA file: {"format": "pt", "lora_adapter_metadata": JSON}.

    The JSON holds the LoraConfig with each key prefixed by the component ("unet.r", "unet.lora_alpha",
    ...), as diffusers' save_lora_weights packs it and load_lora_adapter(prefix="unet") unpacks it. It must
    be written: without it diffusers rebuilds the config from the tensor shapes alone and sets
    lora_alpha = r, so an adapter trained with alpha != r reloads with the wrong scale alpha/r.
    """
    packed = {f"{prefix}.{k}": (list(v) if isinstance(v, (set, tuple)) else v) for k, v in config.items()}
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps(packed, sort_keys=True)}
    for k, v in (extra_metadata or {}).items():
        if k in meta:
            raise ValueError(f"extra metadata key {k!r} would overwrite the LoRA file's own header key")
        meta[str(k)] = str(v)
    return meta


WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def save_diffusers_lora(path: str | Path, tensors: Mapping[str, torch.Tensor], config: Mapping, *,
                        prefix: str = "unet", extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write one adapter as a diffusers LoRA file (canonical safetensors bytes); returns the file's path.

    `path` is a directory (the file is <path>/pytorch_lora_weights.safetensors, the name
    load_lora_adapter(dir, weight_name=...) expects) or a file path ending in .safetensors. `tensors` is
    StackedLoRA.diffusers_state_dict(k), `config` StackedLoRA.lora_config(k); `extra_metadata` (e.g. the
    class) goes into the header as strings, which the diffusers loaders ignore.
    """
    from weightspace.zoo.format import write_safetensors

    path = Path(path)
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        path = path / WEIGHT_NAME
    write_safetensors(path, tensors, diffusers_metadata(config, prefix, extra_metadata))
    return path
