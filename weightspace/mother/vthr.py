"""The paper's benchmark, VTHR (ViT Tree Heritage Recovery): three splits of 105 ViT-B/16 models each.

On the Hugging Face Hub (organisation `MoTHer-VTHR`), one repository per model:

    MoTHer-VTHR/VTHR-{FT|LoRA-V|LoRA-F}-ModelTree_{t}-Depth_{d}-Node_{uuid8}

each a `ViTForImageClassification` checkpoint (fp32 `model.safetensors`, ~343 MB; LoRA models merged),
with HF key names (`vit.encoder.layer.{i}.attention.attention.value.weight` ...): use the "hf-vit"
preset. The ground truth (who is whose parent) is not in the names: it ships with the official code as
pickles of its own `model_graph` classes (`dataset/{full_ft,lora_v,lora_f}_model_graph.pkl`; the LoRA
splits use their `model_graph_lora.LoRA*` subclasses), pinned here to one commit and sha256. We never
unpickle arbitrary objects: `read_graph_pkl` allows only those classes, rebuilt as plain records,
and `data_scripts/download_vthr.py` converts them once to `model_graph.json`.

Layout written by the download script and read here:

    <root>/<split>/model_graph.json                      [{uuid, parent, tree, depth, dataset, ...}]
    <root>/<split>/VTHR-FT-ModelTree_0-Depth_1-Node_ab12cd34/model.safetensors (+ config.json)
    <root>/weightspace-downloads.lock.json               commit, sha256 and size of every file
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

from weightspace.zoo.format import LazyStateDict

from .layers import MotherError

HUB_ORG = "MoTHer-VTHR"
SPLITS = {"ft": "FT", "lora-v": "LoRA-V", "lora-f": "LoRA-F"}
GRAPH_FILES = {"ft": "full_ft_model_graph.pkl", "lora-v": "lora_v_model_graph.pkl",
               "lora-f": "lora_f_model_graph.pkl"}
# the official repository's last commit that changed dataset/, and the sha256 of each pickle at it
GRAPH_COMMIT = "9ac0d5d6a7ac82777334d853db7c48e4728bb08e"
GRAPH_URL = "https://raw.githubusercontent.com/eliahuhorwitz/MoTHer/{commit}/dataset/{file}"
GRAPH_SHA256 = {"ft": "cfe56238ffff147513c9b0c5252f083fb53eada9ffe5633347eade357784fb60",
                "lora-f": "f886609a144d9d4297b07e27f69edff25a66a542d2df21dd35d3f0818e05cf2f",
                "lora-v": "93e2542f5b4ffd13eb6ac9c9365f8eae77d36a6cfd63bee0573eb4ea6b685241"}
GRAPH_JSON = "model_graph.json"
_NAME = re.compile(r"^(?:MoTHer-VTHR/)?VTHR-(FT|LoRA-V|LoRA-F)-ModelTree_(\d+)-Depth_(\d+)"
                   r"-Node_([A-Za-z0-9]{8})$")


def repo_name(split: str, tree: int, depth: int, uuid: str) -> str:
    """The Hub repository name of one VTHR model (without the organisation)."""
    if split not in SPLITS:
        raise MotherError(f"unknown VTHR split {split!r}; choose one of {sorted(SPLITS)}")
    return f"VTHR-{SPLITS[split]}-ModelTree_{tree}-Depth_{depth}-Node_{uuid}"


def parse_repo_name(name: str) -> dict:
    """'MoTHer-VTHR/VTHR-LoRA-V-ModelTree_3-Depth_2-Node_ab12cd34' -> {split, tree, depth, uuid}."""
    m = _NAME.match(name)
    if not m:
        raise MotherError(f"{name!r} is not a VTHR model name "
                          "(VTHR-{FT|LoRA-V|LoRA-F}-ModelTree_t-Depth_d-Node_uuid8)")
    split = {v: k for k, v in SPLITS.items()}[m.group(1)]
    return dict(split=split, tree=int(m.group(2)), depth=int(m.group(3)), uuid=m.group(4))


# ------------------------------------------------------------------------- the ground-truth pickles

class _Record:
    """A stand-in for the official ModelGraph* classes: just their attributes."""

    def __setstate__(self, state):
        self.__dict__.update(state)


class _Graph(_Record): ...
class _Node(_Record): ...
class _Meta(_Record): ...


_ALLOWED = {"ModelGraph": _Graph, "ModelGraphNode": _Node, "ModelGraphNodeMetadata": _Meta}
_MODULES = {"model_graph": "", "__main__": "", "model_graph_lora": "LoRA"}   # the LoRA splits' subclasses


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        prefix = _MODULES.get(module)
        if prefix is not None and name.startswith(prefix) and name[len(prefix):] in _ALLOWED:
            return _ALLOWED[name[len(prefix):]]
        if (module, name) == ("copyreg", "_reconstructor"):
            import copyreg
            return copyreg._reconstructor
        if (module, name) == ("builtins", "object"):
            return object
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the VTHR graph files hold only "
                                     "model_graph.ModelGraph* / model_graph_lora.LoRAModelGraph* objects")


def read_graph_pkl(path) -> list[dict]:
    """The official ground-truth pickle -> one row per node: uuid, parent (uuid or None), tree, depth,
    dataset, num_classes, seed. Only the three model_graph classes (or, in the LoRA splits, their
    model_graph_lora.LoRA* subclasses) are allowed in the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            graph = _Unpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError) as e:
        raise MotherError(f"{path}: not a VTHR model-graph pickle ({e})") from e
    rows = []

    def visit(node):
        md = node.metadata
        parent = node.parent.metadata.uuid if getattr(node, "parent", None) is not None else None
        rows.append(dict(uuid=md.uuid, parent=parent, tree=int(md.component_id), depth=int(md.depth),
                         dataset=getattr(md, "dataset_name", None),
                         num_classes=getattr(md, "num_classes", None),
                         seed=getattr(md, "seed", None)))
        for c in getattr(node, "children", []):
            visit(c)

    for r in getattr(graph, "roots", []):
        visit(r)
    if not rows:
        raise MotherError(f"{path}: the model graph has no nodes")
    return rows


def write_graph_json(rows: list[dict], path) -> None:
    Path(path).write_text(json.dumps(rows, indent=1) + "\n")


# -------------------------------------------------------------------------------- a downloaded split

def safetensors_complete(path) -> bool:
    """Whether a safetensors file is whole and well-formed (weightspace.downloads.check_safetensors)."""
    from weightspace.downloads import check_safetensors

    return check_safetensors(path) is None


def load_split(root, split: str, *, verify: str = "lock") -> tuple[dict[str, LazyStateDict], dict[str, str | None]]:
    """({repo name: LazyStateDict}, {repo name: parent repo name or None}) for one downloaded split.

    verify="lock" (default): every model file and the ground-truth pickle must match the lock file the
    download script wrote at `root` (size, header, sha256; each file hashed once per process, and a model
    file changed after that is refused when read), and the parents come from the verified pickle.
    verify="none": files you made and trust, read unchecked (warns once), the parents from model_graph.json.
    """
    from weightspace.downloads import Verifier

    if split not in SPLITS:
        raise MotherError(f"unknown VTHR split {split!r}; choose one of {sorted(SPLITS)}")
    folder = Path(root) / split
    verifier = Verifier(root, verify, reader="VTHR split",
                        download=f"`python data_scripts/download_vthr.py --splits {split} --root {root}`")
    gpath = folder / (GRAPH_FILES[split] if verify == "lock" else GRAPH_JSON)
    if not gpath.exists():
        raise MotherError(f"{gpath}: missing; run data_scripts/download_vthr.py --splits {split} first")
    rows = read_graph_pkl(verifier.verified(gpath)) if verify == "lock" else json.loads(gpath.read_text())
    by_uuid = {r["uuid"]: r for r in rows}
    models, parents = {}, {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            info = parse_repo_name(d.name)
        except MotherError:
            continue
        if info["split"] != split:
            raise MotherError(f"{d}: a {info['split']} model inside the {split} folder")
        f = d / "model.safetensors"
        if not f.exists():
            raise MotherError(f"{f}: missing (interrupted download? re-run download_vthr.py, it resumes)")
        models[d.name] = verifier.lazy(f)
        if info["uuid"] not in by_uuid:
            raise MotherError(f"{d.name}: node {info['uuid']} is not in {gpath}")
    names = {parse_repo_name(n)["uuid"]: n for n in models}
    for n in models:
        r = by_uuid[parse_repo_name(n)["uuid"]]
        parents[n] = names.get(r["parent"]) if r["parent"] else None
        if r["parent"] and r["parent"] not in names:
            raise MotherError(f"{n}: its parent node {r['parent']} was not downloaded")
    if not models:
        raise MotherError(f"{folder}: no VTHR model folders (VTHR-...-Node_xxxxxxxx/model.safetensors)")
    return models, parents
