"""Small architectures and the machinery to train many of them at once."""
from .batched import BatchedAdamW, Stacked
from .vit import VIT_TINY, make_vit, split_qkv

__all__ = ["BatchedAdamW", "Stacked", "VIT_TINY", "make_vit", "split_qkv"]
from .lora import (StackedLoRA, cumulative, delta, diffusers_metadata, init_factors, lora_scale, merge,
                   rank_mask, save_diffusers_lora)

__all__ += ["StackedLoRA", "cumulative", "delta", "diffusers_metadata", "init_factors", "lora_scale", "merge",
            "rank_mask", "save_diffusers_lora"]
