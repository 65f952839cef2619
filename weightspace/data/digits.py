"""Offline image data: scikit-learn's 1,797 handwritten 8x8 digits, and StyledDigits.

StyledDigits crosses the ten digits with deterministic named styles ("a mirrored seven", "an inverted
two"), so a model zoo can be fine-tuned on many classes with natural-language names, and zero-shot
experiments can hold out unseen (digit, style) pairs. Nothing is downloaded: the digits ship with
scikit-learn.

Class id = style_index * 10 + digit. Pixels are mapped from 0..16 to [-1, 1]. Every base image falls in
the same split (train / val / test) in every style, so no styled copy of a test image is ever trained on.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _bold(x: np.ndarray) -> np.ndarray:
    """Thicken strokes: max over each pixel's 2x2 neighbourhood (down and to the right)."""
    p = np.pad(x, ((0, 0), (1, 0), (1, 0)))
    return np.maximum.reduce([p[:, 1:, 1:], p[:, :-1, 1:], p[:, 1:, :-1], p[:, :-1, :-1]])


def _shifted(x: np.ndarray) -> np.ndarray:
    """Move the digit one pixel right and one down, filling with background."""
    out = np.zeros_like(x)
    out[:, 1:, 1:] = x[:, :-1, :-1]
    return out


# Each style maps base images [N, 8, 8] with values in 0..16 to styled images, deterministically.
STYLES = {
    "plain": lambda x: x,
    "mirrored": lambda x: x[:, :, ::-1],
    "inverted": lambda x: 16.0 - x,
    "bold": _bold,
    "upside-down": lambda x: x[:, ::-1, :],
    "transposed": lambda x: x.transpose(0, 2, 1),
    "shifted": _shifted,
    "faint": lambda x: 0.4 * x,
}
DEFAULT_STYLES = ("plain", "mirrored", "inverted", "bold")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


def class_name(style: str, digit: int) -> str:
    """'a mirrored seven', 'an inverted two'."""
    article = "an" if style[0] in "aeiou" else "a"
    return f"{article} {style} {DIGIT_WORDS[digit]}"


@dataclass(frozen=True)
class Split:
    """One split as tensors: x [N, 1, 8, 8] float32 in [-1, 1]; y, digit, style [N] int64."""

    x: torch.Tensor
    y: torch.Tensor
    digit: torch.Tensor
    style: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def of_classes(self, classes) -> "Split":
        """The images whose class is in `classes`."""
        keep = torch.isin(self.y, torch.as_tensor(list(classes), dtype=torch.long))
        return Split(self.x[keep], self.y[keep], self.digit[keep], self.style[keep])


@dataclass(frozen=True)
class StyledDigits:
    styles: tuple[str, ...]
    seed: int
    train: Split
    val: Split
    test: Split

    @property
    def n_classes(self) -> int:
        return 10 * len(self.styles)

    @property
    def class_names(self) -> list[str]:
        return [class_name(s, d) for s in self.styles for d in range(10)]

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
        return getattr(self, name)

    def class_of(self, style: str, digit: int) -> int:
        return self.styles.index(style) * 10 + digit


@functools.lru_cache(maxsize=1)
def _base_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float64), d.target.astype(np.int64)


def base_split_indices(seed: int = 0) -> dict[str, np.ndarray]:
    """Stratified 60/20/20 split of the 1,797 base images (indices), the same for every style."""
    _, target = _base_digits()
    rng = np.random.default_rng(seed)
    parts = {s: [] for s in SPLITS}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(target == digit))
        n_train = int(round(SPLIT_FRACTIONS[0] * len(idx)))
        n_val = int(round(SPLIT_FRACTIONS[1] * len(idx)))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train:n_train + n_val])
        parts["test"].append(idx[n_train + n_val:])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


@functools.lru_cache(maxsize=8)
def styled_digits(styles: tuple[str, ...] = DEFAULT_STYLES, seed: int = 0) -> StyledDigits:
    """The digits crossed with `styles`: len(styles) * 10 classes with names like 'a bold seven'.

    Same styles and seed give the same tensors, bit for bit.
    """
    styles = tuple(styles)
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise ValueError(f"unknown style(s) {unknown}; available: {sorted(STYLES)}")
    if len(set(styles)) != len(styles):
        raise ValueError(f"styles repeat: {styles}")
    images, target = _base_digits()
    splits = {}
    for name, idx in base_split_indices(seed).items():
        xs, ys, ds, ss = [], [], [], []
        for s_i, style in enumerate(styles):
            img = np.ascontiguousarray(STYLES[style](images[idx]))
            xs.append(img / 8.0 - 1.0)
            ys.append(s_i * 10 + target[idx])
            ds.append(target[idx])
            ss.append(np.full(len(idx), s_i))
        splits[name] = Split(
            x=torch.from_numpy(np.concatenate(xs)).float().unsqueeze(1).contiguous(),
            y=torch.from_numpy(np.concatenate(ys)).long(),
            digit=torch.from_numpy(np.concatenate(ds)).long(),
            style=torch.from_numpy(np.concatenate(ss)).long(),
        )
    return StyledDigits(styles=styles, seed=seed, **splits)


def digits(seed: int = 0) -> StyledDigits:
    """The plain digits alone: 10 classes."""
    return styled_digits(("plain",), seed)
