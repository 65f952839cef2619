"""The paper path for zero-shot ProbeX: Model-J's Stable Diffusion LoRA subsets (SD_200, SD_1k) on disk.

Layout (what the official code reads):

    <root>/<split>/**/pytorch_lora_weights.safetensors      split: train, val, test, val_holdout, test_holdout

Each file is a diffusers LoRA of an SD 1.x UNet: keys `unet.<module>.lora.down.weight` (A, [r, d_in]) and
`.lora.up.weight` (B, [d_out, r]); its header metadata `imagenet_class_id` holds the class, a WordNet id whose
text is the ImageNet class name with "_" replaced by a space (timm's offline synset table gives the names).
Layers are indexed as the official code does: the `.lora.down.weight` keys in sorted order (128 on SD 1.x;
index 46 = down_blocks.2.attentions.1...attn2.to_q, 1280x1280). X = B @ A, no alpha (Sec. 5).

The same reader takes any folder in that layout — our own LoRA files too, with `class_key` naming the header
field that holds the class and `class_names` mapping its values to text. Every file is served verified against
the lock file covering the folder (weightspace.downloads.Verifier); `python -m weightspace lock DIR` records
one's own files, `verify="none"` reads them unchecked.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from weightspace.downloads import Verifier, record_file
from weightspace.zoo.format import ZooError, read_metadata, read_safetensors, write_safetensors

from .model import stack_layer
from .zeroshot import SPLITS, Labels

LORA_FILE = "pytorch_lora_weights.safetensors"
CLASS_KEY = "imagenet_class_id"
DOWN, UP = ".lora.down.weight", ".lora.up.weight"
PAPER_LAYER = 46   # the README's best SD layer: unet.down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_q


def imagenet_class_names() -> dict[str, str]:
    """WordNet id -> ImageNet class name (the first lemma of timm's bundled synset table, offline)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return {w: info.label_name_to_description(w).split(",")[0].strip() for w in info.label_names()}


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:   # safetensors raises its own error types for a damaged header
        raise ZooError(f"{path}: not a readable safetensors file ({e})") from None


class SDLoraFolder:
    """Every LoRA of a Model-J-style SD folder: `labels` (classes, splits, files), `layers` (module stems in
    the official index order) and `X(layer)` [N, d_out, d_in] (a stem or an index), read once per layer.

    Every file is checked on opening against the first one (from the headers alone): the same LoRA keys with
    the same shapes, and a class in its header. `rank`: "first" (Model-J: every LoRA has the first one's rank,
    16), an int (every LoRA has that rank), or None (ranks may differ, as in our zoo; X = B·A has the layer's
    shape whatever the rank).

    verify="lock" (default): every file must be in the lock file at `root` or a folder above, and match it
    (size and header, then its sha256 before its header is read; once per process). Record LoRAs of your own
    with `python -m weightspace lock ROOT` (or `weightspace.downloads.record_folder(root)`). verify="none":
    read files you made and trust without any check (warns once)."""

    def __init__(self, root: str | os.PathLike, *, class_key: str = CLASS_KEY,
                 class_names: Mapping[str, str] | None = None, splits=SPLITS, rank: int | str | None = "first",
                 verify: str = "lock"):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ZooError(f"{self.root}: no such folder (a Model-J SD subset has split folders "
                           f"{', '.join(SPLITS)})")
        self.files: list[Path] = []
        split_of = []
        for s in splits:
            found = sorted((self.root / s).rglob(LORA_FILE)) if (self.root / s).is_dir() else []
            self.files += found
            split_of += [s] * len(found)
        if not self.files:
            raise ZooError(f"{self.root}: no {LORA_FILE} under any split folder ({', '.join(splits)})")
        self.verifier = Verifier(self.root, verify, reader="SDLoraFolder")
        for path in self.files:
            self.verifier.check(path)
        self.shapes = _shapes(self.verifier.verified(self.files[0]))
        self.layers = [k[:-len(DOWN)] for k in sorted(self.shapes) if k.endswith(DOWN)]
        if not self.layers:
            raise ZooError(f"{self.files[0]}: no '*{DOWN}' keys: not a diffusers LoRA file")
        for stem in self.layers:
            if stem + UP not in self.shapes:
                raise ZooError(f"{self.files[0]}: {stem + DOWN!r} has no {stem + UP!r} beside it")
        if rank not in ("first", None) and not (isinstance(rank, int) and rank >= 1):
            raise ValueError(f"rank={rank!r}: choose 'first', None or a whole number >= 1")
        self.rank = rank
        if isinstance(rank, int):
            first = self._ranks(self.shapes)
            bad = next((k for k, r in first.items() if r != rank), None)
            if bad:
                raise ZooError(f"{self.files[0]}: {bad!r} has LoRA rank {first[bad]}, not {rank}")
        ids = []
        for path in self.files:
            self._check_like_first(self.verifier.verified(path))
            meta = read_metadata(path)
            if class_key not in meta:
                raise ZooError(f"{path}: no {class_key!r} in the header metadata (has {sorted(meta)}); "
                               "cannot tell which class this LoRA was trained on")
            ids.append(meta[class_key])
        self.class_ids = sorted(set(ids))
        if class_names is None and all(i[:1] == "n" and i[1:].isdigit() for i in self.class_ids):
            class_names = imagenet_class_names()
        names = []
        for cid in self.class_ids:
            if class_names is not None and cid not in class_names:
                who = self.files[ids.index(cid)]
                raise ZooError(f"{who}: class {cid!r} has no name in the class-name table")
            names.append((class_names[cid] if class_names is not None else cid).replace("_", " "))
        index = {c: i for i, c in enumerate(self.class_ids)}
        self.labels = Labels(names, [index[c] for c in ids], split_of, [str(p) for p in self.files],
                             where=str(self.root))
        self._cache: dict[str, torch.Tensor] = {}

    @staticmethod
    def _ranks(shapes) -> dict[str, int]:
        return {k: (s[0] if k.endswith(DOWN) else s[-1]) for k, s in shapes.items() if k.endswith((DOWN, UP))}

    @staticmethod
    def _rankless(shapes) -> dict:
        return {k: ((None, s[1]) if k.endswith(DOWN) else (s[0], None)) if k.endswith((DOWN, UP)) and len(s) == 2
                else s for k, s in shapes.items()}

    def _check_like_first(self, path: Path) -> None:
        shapes = _shapes(path)
        if shapes == self.shapes or (self.rank is None and self._rankless(shapes) == self._rankless(self.shapes)):
            return
        missing = sorted(set(self.shapes) - set(shapes))
        if missing:
            raise ZooError(f"{path}: missing LoRA key {missing[0]!r} ({len(missing)} missing, against "
                           f"{self.files[0].name} in {self.files[0].parent})")
        extra = sorted(set(shapes) - set(self.shapes))
        if extra:
            raise ZooError(f"{path}: unexpected key {extra[0]!r} ({len(extra)} keys not in {self.files[0]})")
        a, b = (self._rankless(x) if self.rank is None else x for x in (shapes, self.shapes))
        k = next(k for k in sorted(shapes) if a[k] != b[k])
        r, r0 = self._ranks(shapes).get(k), self._ranks(self.shapes).get(k)
        raise ZooError(f"{path}: {k!r} is {list(shapes[k])} but {list(self.shapes[k])} in {self.files[0]}"
                       + (f" (LoRA rank {r}, not {r0})" if self.rank is not None and r != r0 else ""))

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {len(self.labels.index(s))}" for s in SPLITS)
        return f"SDLoraFolder({str(self.root)!r}: {counts}; {len(self.layers)} layers, " \
               f"{len(self.class_ids)} classes)"

    def layer_name(self, layer: int | str) -> str:
        if isinstance(layer, int) and not isinstance(layer, bool):
            if not 0 <= layer < len(self.layers):
                raise ZooError(f"{self.root}: layer index {layer} out of range (0..{len(self.layers) - 1})")
            return self.layers[layer]
        if layer not in self.layers:
            raise ZooError(f"{self.root}: no LoRA layer {layer!r} (e.g. {self.layers[0]!r})")
        return layer

    def X(self, layer: int | str) -> torch.Tensor:
        """float32 [N, d_out, d_in]: up @ down of `layer` in every file."""
        stem = self.layer_name(layer)
        if stem not in self._cache:
            mats = []
            for path in self.files:
                t = read_safetensors(self.verifier.verified(path), [stem + UP, stem + DOWN])
                mats.append(t[stem + UP].float() @ t[stem + DOWN].float())
            self._cache[stem] = stack_layer(mats, name=f"{self.root}: {stem}")
        return self._cache[stem]

    def extract(self, layer: int | str, out: str | os.PathLike) -> Path:
        """Pre-extract one layer (X, each LoRA's class index and split) into one safetensors file, recorded in
        the nearest lock at its folder or above (else a new one beside it), so `Extracted` serves it verified."""
        stem = self.layer_name(layer)
        split_codes = torch.tensor([SPLITS.index(s) for s in self.labels.split])
        write_safetensors(out, {"X": self.X(stem), "classes": torch.as_tensor(self.labels.classes),
                                "split": split_codes},
                          {"layer": stem, "class_names": "\n".join(self.labels.class_names),
                           "files": "\n".join(str(p.relative_to(self.root)) for p in self.files)})
        record_file(out, f"extract:{self.root}:{stem}")
        return Path(out)


class Extracted:
    """A layer written by `SDLoraFolder.extract`: `labels`, `layers` (the one layer) and `X(layer)`; read
    verified against the lock `extract` recorded it in (verify="none": a file one trusts, unchecked)."""

    def __init__(self, path: str | os.PathLike, verify: str = "lock"):
        self.path = Path(path)
        t, meta = Verifier(self.path.parent, verify, reader="Extracted", download="SDLoraFolder.extract").read(path)
        self.layers = [meta["layer"]]
        self._X = t["X"]
        self.labels = Labels(meta["class_names"].split("\n"), t["classes"].numpy(),
                             [SPLITS[int(i)] for i in t["split"]], meta["files"].split("\n"), where=str(path))

    def X(self, layer: int | str = 0) -> torch.Tensor:
        if layer not in (0, self.layers[0]):
            raise ZooError(f"{self.path}: holds only layer {self.layers[0]!r}, not {layer!r}")
        return self._X


# --------------------------------------------------------------------------- the layout, for tests and docs

def sd15_lora_shapes(rank: int = 16, text_dim: int = 768) -> dict[str, tuple[int, int]]:
    """Key names and shapes of a diffusers rank-`rank` LoRA on SD 1.x's UNet (to_q/k/v/out.0 of attn1 and
    attn2 in its 16 transformer blocks: 128 (down, up) pairs), in sorted key order."""
    blocks = [(f"down_blocks.{b}.attentions.{a}", w) for b, w in enumerate((320, 640, 1280)) for a in range(2)]
    blocks += [("mid_block.attentions.0", 1280)]
    blocks += [(f"up_blocks.{b}.attentions.{a}", w) for b, w in ((1, 1280), (2, 640), (3, 320)) for a in range(3)]
    out = {}
    for name, w in blocks:
        for attn in ("attn1", "attn2"):
            for m in ("to_q", "to_k", "to_v", "to_out.0"):
                d_in = text_dim if attn == "attn2" and m in ("to_k", "to_v") else w
                stem = f"unet.{name}.transformer_blocks.0.{attn}.{m}"
                out[stem + DOWN] = (rank, d_in)
                out[stem + UP] = (w, rank)
    return dict(sorted(out.items()))
