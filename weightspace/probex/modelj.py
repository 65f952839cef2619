"""The paper path: read Model-J ("Model Jungle", HF organisation ProbeX) as its download lays it out.

Discriminative subsets (SupViT, DINO, MAE, ResNet; ~1000 fine-tunes each, 50 of the 100 CIFAR-100
classes per model) are stored the way `huggingface_hub.snapshot_download(repo_id, cache_dir=...)` leaves
them, one cache folder per split (data_scripts/download_modelj.py makes exactly this):

    <root>/<subset>/<split>/models--<org>--<name>/refs/main           the revision hash (one line)
    <root>/<subset>/<split>/models--<org>--<name>/snapshots/<hash>/model.safetensors
    <root>/weightspace-downloads.lock.json                            commit + sha256 of every file

Each model.safetensors carries its label in the metadata: `dataset_chosen_targets`, a Python-literal
list of CIFAR-100 class names (or ids). The official loader `eval`s it; we parse it with
`ast.literal_eval`, which cannot run code. Layers are addressed by index into the lexicographically
sorted layer names, as the official code's layer tables (ViT index 59 =
`vit.encoder.layer.7.attention.output.dense.weight`, not the 59th layer by depth),
or by name. The chosen layer of every model is read once (memory-mapped, one tensor per file) into an
[N, d_H, d_W] tensor, then ProbeX trains from that tensor like on our own zoos.

Every file is served verified against the lock the download script wrote (weightspace.downloads.Verifier):
listed, of the locked size and with a whole header when the subset is opened, its sha256 before its labels
or tensors are first read (once per process).
"""
from __future__ import annotations

import ast
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from weightspace.downloads import Verifier, record_file
from weightspace.zoo.format import ZooError, missing_key_message, read_safetensors

from .model import stack_layer

CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television",
    "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm")  # sorted, so a name's position is also its CIFAR-100 fine label id
assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES) and len(CIFAR100_CLASSES) == 100

# subset -> root model (model cards), architecture family, the best layer index of the official code's README
SUBSETS = {
    "SupViT": dict(root="google/vit-base-patch16-224", family="vit", best_layer=59),
    "DINO": dict(root="facebook/dino-vitb16", family="vit", best_layer=59),
    "MAE": dict(root="facebook/vit-mae-base", family="vit", best_layer=64),
    "ResNet": dict(root="microsoft/resnet-101", family="resnet", best_layer=59),
}
SPLITS = ("train", "val", "test")
TARGETS_KEY = "dataset_chosen_targets"
WEIGHTS_FILE = "model.safetensors"


def default_root() -> Path:
    """Where the official download script puts the models: HF's assets cache for ("ProbeX", "ModelJ")."""
    base = os.environ.get("HF_ASSETS_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "assets")
    return Path(base) / "ProbeX" / "ModelJ" / "default" / "models"


# ------------------------------------------------------------------------------------- layout and labels

def repo_folder(repo_id: str) -> str:
    """HF cache folder name of a model repo: 'ProbeX/x' -> 'models--ProbeX--x'."""
    return "models--" + repo_id.replace("/", "--")


def snapshot_file(repo_dir: str | os.PathLike) -> Path | None:
    """The model.safetensors that `refs/main` points at, or None when the download is incomplete."""
    repo_dir = Path(repo_dir)
    ref = repo_dir / "refs" / "main"
    if not ref.is_file():
        return None
    path = repo_dir / "snapshots" / ref.read_text().strip() / WEIGHTS_FILE
    return path if path.is_file() else None


def parse_targets(text: str, where: str = "metadata", classes: Sequence[str] = CIFAR100_CLASSES) -> list[int]:
    """`dataset_chosen_targets` -> sorted class ids. Accepts a literal list of names or of ids; never evals."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ZooError(f"{where}: {TARGETS_KEY} is not a Python literal list ({e}): {text[:80]!r}") from None
    if not isinstance(value, (list, tuple, set)) or not value:
        raise ZooError(f"{where}: {TARGETS_KEY} should be a non-empty list, got {type(value).__name__}")
    ids = []
    for v in value:
        if isinstance(v, str):
            if v not in classes:
                raise ZooError(f"{where}: unknown class name {v!r} in {TARGETS_KEY}")
            ids.append(classes.index(v))
        elif isinstance(v, int) and 0 <= v < len(classes):
            ids.append(v)
        else:
            raise ZooError(f"{where}: bad class {v!r} in {TARGETS_KEY} (expected a name or an id < {len(classes)})")
    return sorted(set(ids))


def layer_names(shapes: Mapping[str, Sequence[int]], family: str = "vit") -> list[str]:
    """The paper code's layer list, in lexicographic name order (index = position).

    vit:    every tensor that is a matrix once size-1 dims are squeezed (74 for ViT-B/16: the classifier,
            the position embeddings, then 6 per block; the 4-D patch conv and 1-D tensors are not in it);
    resnet: every conv / linear weight with >= 2 dims (105 for ResNet-101; batch-norm vectors are not).
    """
    if family == "vit":
        keep = [k for k, s in shapes.items() if sum(d != 1 for d in s) == 2]
    elif family == "resnet":
        keep = [k for k, s in shapes.items() if k.endswith("weight") and len(s) >= 2]
    else:
        raise ValueError(f"unknown architecture family {family!r}; choose 'vit' or 'resnet'")
    return sorted(keep)


@dataclass(frozen=True)
class Entry:
    repo_id: str
    split: str
    path: Path


class ModelJSubset:
    """One discriminative subset (one Model Tree) of Model-J on disk.

    verify="lock" (default): every model file must be in the lock file at `root` (or a folder above) that
    data_scripts/download_modelj.py writes, and match it (size and header on opening, sha256 before its
    labels or tensors are served); `python -m weightspace lock ROOT` records files laid out this way by other
    means. verify="none": read files you made and trust without any check (warns once).
    """

    def __init__(self, root: str | os.PathLike, subset: str, family: str | None = None, *, verify: str = "lock"):
        self.dir = Path(root) / subset
        self.subset = subset
        self.family = family or SUBSETS.get(subset, {}).get("family")
        if self.family is None:
            raise ValueError(f"unknown subset {subset!r}: pass family='vit' or 'resnet' (known: {sorted(SUBSETS)})")
        if not self.dir.is_dir():
            raise ZooError(f"{self.dir}: no such Model-J subset folder; download it with "
                           f"`python data_scripts/download_modelj.py --subset {subset} --root {root}`")
        self.entries: dict[str, list[Entry]] = {}
        self.incomplete: list[Path] = []
        for split in SPLITS:
            found = []
            sdir = self.dir / split
            for repo_dir in sorted(sdir.glob("models--*")) if sdir.is_dir() else []:
                f = snapshot_file(repo_dir)
                if f is None:
                    self.incomplete.append(repo_dir)
                    continue
                found.append(Entry(repo_dir.name[len("models--"):].replace("--", "/", 1), split, f))
            self.entries[split] = found
        first = next((e for es in self.entries.values() for e in es), None)
        if first is None:
            raise ZooError(f"{self.dir}: no downloaded models in {', '.join(SPLITS)} "
                           f"(expected <split>/models--*/refs/main and snapshots/<ref>/{WEIGHTS_FILE})")
        self.verifier = Verifier(
            root, verify, reader="ModelJSubset",
            download=f"`python data_scripts/download_modelj.py --subset {subset} --root {root}`")
        for e in (e for es in self.entries.values() for e in es):
            self.verifier.check(e.path)
        from safetensors import safe_open

        with safe_open(str(self.verifier.verified(first.path)), framework="pt") as f:
            self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        self.layers = layer_names(self.shapes, self.family)

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {len(v)}" for s, v in self.entries.items())
        return f"ModelJSubset({self.subset!r}, {counts}; {len(self.layers)} layers)"

    def layer_name(self, layer: int | str) -> str:
        if isinstance(layer, int):
            if not 0 <= layer < len(self.layers):
                raise ZooError(f"{self.dir}: layer index {layer} out of range (0..{len(self.layers) - 1})")
            return self.layers[layer]
        if layer not in self.shapes:
            raise ZooError(missing_key_message(self.dir, layer, list(self.shapes)))
        return layer

    def labels(self, split: str) -> torch.Tensor:
        """Multi-hot [N, 100] from each file's `dataset_chosen_targets`."""
        from safetensors import safe_open

        Y = torch.zeros(len(self._split(split)), len(CIFAR100_CLASSES))
        for i, e in enumerate(self._split(split)):
            with safe_open(str(self.verifier.verified(e.path)), framework="pt") as f:
                meta = f.metadata() or {}
            if TARGETS_KEY not in meta:
                raise ZooError(f"{e.path}: no {TARGETS_KEY!r} in the safetensors metadata (has {sorted(meta)})")
            Y[i, parse_targets(meta[TARGETS_KEY], str(e.path))] = 1.0
        return Y

    def _split(self, split: str) -> list[Entry]:
        if split not in self.entries:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        if not self.entries[split]:
            raise ValueError(f"{self.dir / split}: the {split} split is empty (no downloaded models)")
        return self.entries[split]

    def layer(self, layer: int | str, split: str) -> torch.Tensor:
        """[N, d_H, d_W] of one layer for every model of a split (conv reshaped as in the paper's code)."""
        name = self.layer_name(layer)
        mats = [read_safetensors(self.verifier.verified(e.path), [name])[name] for e in self._split(split)]
        return stack_layer(mats, conv_reshape=self.family == "resnet", name=f"{self.dir / split}: {name}")

    def split(self, layer: int | str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer(layer, split), self.labels(split)

    def extract(self, layer: int | str, out: str | os.PathLike) -> Path:
        """Pre-extract one layer of every split (X_<split>, Y_<split>) into one safetensors file, recorded in
        the nearest download lock at its folder or above (else a new one beside it), so `load_extracted`
        serves it verified."""
        from weightspace.zoo import write_safetensors

        name = self.layer_name(layer)
        tensors = {}
        for s in SPLITS:
            if self.entries[s]:
                tensors[f"X_{s}"], tensors[f"Y_{s}"] = self.split(name, s)
        write_safetensors(out, tensors, {"subset": self.subset, "layer": name, "family": self.family})
        record_file(out, f"extract:{self.dir}:{name}")
        return Path(out)


def load_extracted(path: str | os.PathLike, verify: str = "lock") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (X, Y)} from a file written by ModelJSubset.extract, verified against the lock it recorded
    itself in (verify="none": a file one trusts, unchecked)."""
    t, _ = Verifier(Path(path).parent, verify, reader="load_extracted", download="ModelJSubset.extract").read(path)
    return {s: (t[f"X_{s}"], t[f"Y_{s}"]) for s in SPLITS if f"X_{s}" in t}


# --------------------------------------------------------------------- the layout, for tests and docs

def hf_vit_shapes(hidden: int = 768, layers: int = 12, mlp: int = 3072, patch: int = 16, image: int = 224,
                  channels: int = 3, num_labels: int = 100) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a `ViTForImageClassification` checkpoint as Model-J stores it
    (transformers 4.x names: vit.encoder.layer.{i}.attention.attention.query.weight ...)."""
    n = (image // patch) ** 2 + 1
    s = {"vit.embeddings.cls_token": (1, 1, hidden), "vit.embeddings.position_embeddings": (1, n, hidden),
         "vit.embeddings.patch_embeddings.projection.weight": (hidden, channels, patch, patch),
         "vit.embeddings.patch_embeddings.projection.bias": (hidden,),
         "vit.layernorm.weight": (hidden,), "vit.layernorm.bias": (hidden,),
         "classifier.weight": (num_labels, hidden), "classifier.bias": (num_labels,)}
    for i in range(layers):
        p = f"vit.encoder.layer.{i}."
        for m in ("query", "key", "value"):
            s[p + f"attention.attention.{m}.weight"] = (hidden, hidden)
            s[p + f"attention.attention.{m}.bias"] = (hidden,)
        s[p + "attention.output.dense.weight"] = (hidden, hidden)
        s[p + "attention.output.dense.bias"] = (hidden,)
        s[p + "intermediate.dense.weight"] = (mlp, hidden)
        s[p + "intermediate.dense.bias"] = (mlp,)
        s[p + "output.dense.weight"] = (hidden, mlp)
        s[p + "output.dense.bias"] = (hidden,)
        for ln in ("layernorm_before", "layernorm_after"):
            s[p + f"{ln}.weight"] = (hidden,)
            s[p + f"{ln}.bias"] = (hidden,)
    return s
