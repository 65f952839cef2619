"""Which weight matrices MoTHer looks at, for any collection of state dicts, read one block at a time.

A *layer* is one matrix: a tensor of the state dict, or a row block of one (timm fuses query, key and
value into `attn.qkv.weight` [3d, d]; MoTHer needs them apart: rows 0..d-1 are the query, d..2d-1 the
key, 2d..3d-1 the value). Layers are chosen by a preset name or by a regular expression on the keys:

    preset                       groups (what MoTHer uses by default)
    timm-vit     blocks.{i}.attn.qkv / attn.proj          attention (D for FT), value (D for LoRA and
    hf-vit       encoder.layer.{i}.attention.*             direction for LoRA), output (direction for FT),
    bert         encoder.layer.{i}.attention.self.*        mlp, hidden (every hidden 2-D matrix)
    llama        model.layers.{i}.self_attn.{q,k,v,o}_proj
    sd-unet      *.attn1/attn2.to_{q,k,v,out.0}            square: all square 2-D weights (SD's direction)

`"timm-vit"` alone picks the group MoTHer's distance or direction needs (see `resolve`); `"timm-vit:mlp"`
names a group; anything else is a regex searched in each key (2-D tensors only, used whole).

Models may be plain dicts of tensors or `LazyStateDict`s (memory-mapped safetensors): `read_block`
reads only the rows asked for, so a forest larger than RAM streams through in bounded memory.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from weightspace.nets.vit import LAYER_GROUPS, QKV_KEY


class MotherError(ValueError):
    """Input MoTHer cannot work with; the message names the model, the layer and the problem."""


@dataclass(frozen=True)
class Layer:
    """One matrix: `key` of the state dict, optionally only its rows [r0, r1) (a block of a fused qkv)."""

    key: str
    rows: tuple[int, int] | None = None
    name: str = ""
    shape: tuple[int, int] = (0, 0)

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


# A rule is (regex on the key, blocks): blocks None = the whole tensor, else a subset of "qkv" for a
# fused [3d, d] tensor. `square=True` groups keep only square matrices.
_QKV = QKV_KEY
PRESETS: dict[str, dict[str, list[tuple[str, str | None]]]] = {
    "timm-vit": LAYER_GROUPS,   # owned by the architecture (weightspace.nets.vit)
    # checkpoint files (VTHR's) use encoder.layer.{i}.attention.attention.query; transformers >= 5 names
    # the same weights layers.{i}.attention.q_proj in memory: both are accepted
    "hf-vit": {
        "attention": [(r"encoder\.layer\.\d+\.attention\.(attention\.(query|key|value)|output\.dense)\.weight$",
                       None),
                      (r"(^|\.)layers\.\d+\.attention\.[qkvo]_proj\.weight$", None)],
        "value": [(r"encoder\.layer\.\d+\.attention\.attention\.value\.weight$", None),
                  (r"(^|\.)layers\.\d+\.attention\.v_proj\.weight$", None)],
        "output": [(r"encoder\.layer\.\d+\.attention\.output\.dense\.weight$", None),
                   (r"(^|\.)layers\.\d+\.attention\.o_proj\.weight$", None)],
        "mlp": [(r"encoder\.layer\.\d+\.(intermediate|output)\.dense\.weight$", None),
                (r"(^|\.)layers\.\d+\.mlp\.fc[12]\.weight$", None)],
        "hidden": [(r"encoder\.layer\.\d+\..*\.weight$", None), (r"(^|\.)layers\.\d+\..*\.weight$", None)],
    },
    "bert": {
        "attention": [(r"encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)\.weight$",
                       None)],
        "value": [(r"encoder\.layer\.\d+\.attention\.self\.value\.weight$", None)],
        "output": [(r"encoder\.layer\.\d+\.attention\.output\.dense\.weight$", None)],
        "mlp": [(r"encoder\.layer\.\d+\.(intermediate|output)\.dense\.weight$", None)],
        "hidden": [(r"encoder\.layer\.\d+\..*\.weight$", None)],
    },
    "llama": {
        "attention": [(r"layers\.\d+\.self_attn\.[qkvo]_proj\.weight$", None)],
        "value": [(r"layers\.\d+\.self_attn\.v_proj\.weight$", None)],
        "output": [(r"layers\.\d+\.self_attn\.o_proj\.weight$", None)],
        "mlp": [(r"layers\.\d+\.mlp\.(gate|up|down)_proj\.weight$", None)],
        "hidden": [(r"layers\.\d+\..*_proj\.weight$", None)],
    },
    "sd-unet": {
        "attention": [(r"attn[12]\.to_(q|k|v|out\.0)\.weight$", None)],
        "value": [(r"attn1\.to_v\.weight$", None)],
        "output": [(r"attn[12]\.to_out\.0\.weight$", None)],
        "mlp": [(r"\.ff\.net\.(0\.proj|2)\.weight$", None)],
        "hidden": [(r"\.weight$", None)],
        "square": [(r"\.weight$", None)],
    },
}
# SD's cross-attention to_k / to_v map the text width to the channels: square only when they match
SQUARE_ONLY = {("sd-unet", "attention"), ("sd-unet", "value"), ("sd-unet", "output"), ("sd-unet", "square")}

# what `layers="<preset>"` and `direction_layers="<preset>"` mean for each distance (paper, section 3)
DEFAULT_GROUPS = {"ft": {"distance": "attention", "direction": "output"},
                  "lora": {"distance": "value", "direction": "value"}}
DEFAULT_GROUPS_SD = {"ft": {"distance": "attention", "direction": "square"},
                     "lora": {"distance": "value", "direction": "square"}}

# one key that identifies each preset's layout (for the CLI's auto-detection)
_SIGNATURES = [("timm-vit", _QKV), ("hf-vit", r"encoder\.layer\.\d+\.attention\.attention\.value\.weight$"),
               ("hf-vit", r"(^|\.)layers\.\d+\.attention\.v_proj\.weight$"),
               ("bert", r"encoder\.layer\.\d+\.attention\.self\.value\.weight$"),
               ("llama", r"layers\.\d+\.self_attn\.o_proj\.weight$"), ("sd-unet", r"attn1\.to_v\.weight$")]


def detect_preset(keys: Sequence[str]) -> str:
    """The preset whose layout these keys follow (raises MotherError when none does)."""
    for name, sig in _SIGNATURES:
        if any(re.search(sig, k) for k in keys):
            return name
    raise MotherError(f"cannot tell the architecture from the tensor names (e.g. {list(keys)[:4]}); "
                      f"pass layers= and direction_layers= as a preset ({sorted(PRESETS)}) or a regex")


def resolve(spec: str, distance: str, role: str) -> tuple[str | None, str | None, str]:
    """A layers spec -> (preset, group, regex): "timm-vit", "timm-vit:mlp" or a regex.

    role is "distance" or "direction": a bare preset name picks the paper's group for that role.
    """
    if not isinstance(spec, str) or not spec:
        raise MotherError(f"layers must be a preset name ({sorted(PRESETS)}) or a regex, got {spec!r}")
    name, _, group = spec.partition(":")
    if name in PRESETS:
        if not group:
            defaults = DEFAULT_GROUPS_SD if name == "sd-unet" else DEFAULT_GROUPS
            if distance not in defaults:
                raise MotherError(f"unknown distance {distance!r}; choose 'ft' or 'lora'")
            group = defaults[distance][role]
        if group not in PRESETS[name]:
            raise MotherError(f"preset {name!r} has no layer group {group!r}; "
                              f"groups: {sorted(PRESETS[name])}")
        return name, group, ""
    try:
        re.compile(spec)
    except re.error as e:
        raise MotherError(f"layers {spec!r} is neither a preset ({sorted(PRESETS)}) nor a valid regex: {e}")
    return None, None, spec


def _shape(sd: Mapping, key: str) -> tuple[int, ...]:
    shape = getattr(sd, "shape", None)
    return tuple(shape(key)) if callable(shape) else tuple(sd[key].shape)


def select_layers(sd: Mapping, spec: str, distance: str = "ft", role: str = "distance") -> list[Layer]:
    """The layers of one model (the first one: all models must have the same) that `spec` selects."""
    preset, group, regex = resolve(spec, distance, role)
    keys = list(sd)
    rules = PRESETS[preset][group] if preset else [(regex, None)]
    square = (preset, group) in SQUARE_ONLY
    out = []
    for k in keys:
        for pattern, blocks in rules:
            if not re.search(pattern, k):
                continue
            shape = _shape(sd, k)
            if len(shape) != 2:
                break  # biases, norms, convolutions: only matrices count
            if blocks is None:
                if not square or shape[0] == shape[1]:
                    out.append(Layer(k, None, k, shape))
            else:
                if shape[0] != 3 * shape[1]:
                    raise MotherError(f"{k}: a fused qkv weight should be [3d, d], got {list(shape)}")
                d = shape[1]
                for b in blocks:
                    i = "qkv".index(b)
                    out.append(Layer(k, (i * d, (i + 1) * d), f"{k}[{b}]", (d, d)))
            break
    if not out:
        what = f"preset {preset}:{group}" if preset else f"regex {regex!r}"
        raise MotherError(f"{what} matches no 2-D weight; the models have e.g. {keys[:6]}")
    return out


def check_models(models: Mapping[str, Mapping], layers: Sequence[Layer]) -> None:
    """Every model must have every layer, with the same shape (the error names model and layer)."""
    names = list(models)
    if len(names) < 2:
        raise MotherError(f"MoTHer needs at least 2 models to relate, got {len(names)}")
    first = names[0]
    for n in names[1:]:
        sd = models[n]
        for layer in {lay.key: lay for lay in layers}.values():
            if layer.key not in sd:
                raise MotherError(f"model {n!r} has no layer {layer.key!r} (model {first!r} has it); "
                                  "the models have different layer sets")
            s0, s1 = _shape(models[first], layer.key), _shape(sd, layer.key)
            if s0 != s1:
                raise MotherError(f"layer {layer.key!r} has shape {list(s1)} in model {n!r} but {list(s0)} "
                                  "in "
                                  f"model {first!r}; MoTHer compares models of one architecture")


def read_block(sd: Mapping, layer: Layer, r0: int = 0, r1: int | None = None) -> torch.Tensor:
    """Rows [r0, r1) of a layer as float32 (reading only those rows from a memory-mapped file)."""
    lo = layer.rows[0] if layer.rows else 0
    r1 = layer.shape[0] if r1 is None else r1
    a, b = lo + r0, lo + r1
    path = getattr(sd, "path", None)
    if callable(getattr(sd, "read_rows", None)):  # e.g. a sharded checkpoint
        t = sd.read_rows(layer.key, a, b)
    elif path is not None and hasattr(sd, "shape"):  # a LazyStateDict: slice the file, not the tensor
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            t = f.get_slice(layer.key)[a:b]
    else:
        t = sd[layer.key][a:b]
    return t.to(torch.float32)


def as_models(models) -> dict[str, Mapping]:
    """{name: state dict} from a mapping, a sequence of (name, state dict) pairs, or a Zoo."""
    if hasattr(models, "state_dicts") and hasattr(models, "ids"):
        return dict(models.state_dicts(lazy=True))
    if isinstance(models, Mapping):
        return dict(models)
    pairs = list(models)
    seen: dict[str, int] = {}
    for n, _ in pairs:
        seen[n] = seen.get(n, 0) + 1
    dup = sorted(n for n, c in seen.items() if c > 1)
    if dup:
        raise MotherError(f"duplicate model names {dup}: every model needs its own name")
    return dict(pairs)
