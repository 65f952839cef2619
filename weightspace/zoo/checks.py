"""Checks of a builder's parameters, run before anything is written, so a bad call leaves no folder behind
(a folder started with bad parameters would refuse the corrected run). Each error names the parameter, the
value given and what is expected."""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from weightspace.nets.vit import VIT_TINY


def _fail(name: str, value, expected: str):
    raise ValueError(f"{name}={value!r}: expected {expected}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(p: Mapping, name: str, lo: int = 1, hi: int | None = None) -> None:
    v = p[name]
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        _fail(name, v, f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""))


def number(p: Mapping, name: str, positive: bool = True) -> None:
    v = p[name]
    if not _is_number(v) or (v <= 0 if positive else v < 0):
        _fail(name, v, "a positive number" if positive else "a number >= 0")


def interval(p: Mapping, name: str, integers: bool, lo: float) -> None:
    """[low, high] with lo <= low <= high (integers, or positive numbers)."""
    v = p[name]
    ok = _is_int if integers else _is_number
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(ok(x) for x in v) \
            or not lo <= v[0] <= v[1] or (not integers and v[0] <= 0):
        _fail(name, v, f"[low, high] with {'integers' if integers else 'positive numbers'} "
                       f"{'>= ' + str(lo) + ' and ' if integers else ''}low <= high")


def choices(p: Mapping, name: str, allowed: Collection, distinct: bool = True) -> None:
    """A non-empty list of values from `allowed` (each at most once when `distinct`)."""
    v = p[name]
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, str) and x in allowed for x in v) \
            or (distinct and len(set(v)) != len(v)):
        _fail(name, v, f"a non-empty list of {'distinct ' if distinct else ''}values from {sorted(allowed)}")


def vit(p: Mapping, name: str = "vit") -> int:
    """Overrides of nets.vit.VIT_TINY (other VisionTransformer arguments pass through); returns the width."""
    v = p[name]
    if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
        _fail(name, v, "a dict of VisionTransformer arguments (overrides of nets.vit.VIT_TINY)")
    cfg = {**VIT_TINY, **v}
    for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
        if not _is_int(cfg[k]) or cfg[k] < 1:
            _fail(f"{name}[{k!r}]", cfg[k], "a positive integer")
    if not _is_number(cfg["mlp_ratio"]) or cfg["mlp_ratio"] <= 0:
        _fail(f"{name}['mlp_ratio']", cfg["mlp_ratio"], "a positive number")
    if cfg["embed_dim"] % cfg["num_heads"]:
        _fail(f"{name}['embed_dim']", cfg["embed_dim"], f"a multiple of num_heads = {cfg['num_heads']}")
    if cfg["img_size"] % cfg["patch_size"]:
        _fail(f"{name}['patch_size']", cfg["patch_size"], f"a divisor of img_size = {cfg['img_size']}")
    return cfg["embed_dim"]


def seed(p: Mapping, name: str = "seed") -> None:
    integer(p, name, lo=0)


def split(p: Mapping, n: int, name: str = "split") -> None:
    """Three fractions >= 0 summing to 1 giving each tree's `n` fine-tunes a non-empty train and val split."""
    v = p[name]
    if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_is_number(x) and x >= 0 for x in v) \
            or abs(sum(v) - 1) > 1e-6:
        _fail(name, v, "[train, val, test]: three fractions >= 0 summing to 1")
    n_train, n_val = round(v[0] * n), round(v[1] * n)
    if n_train < 1 or n_val < 1 or n_train + n_val > n:
        _fail(name, v, f"fractions giving a non-empty train and val split of each tree's {n} fine-tunes "
                       f"(these give {n_train} train, {n_val} val)")
