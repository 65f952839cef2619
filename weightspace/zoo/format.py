"""The zoo format: one folder per model zoo.

    <zoo>/zoo.json              manifest: format, version, kind, builder, parameters, preset, command, layers,
                                labels (what the label column means), architecture (how to rebuild a model)
    <zoo>/models.jsonl          the models table, one JSON object per line (pandas.read_json(lines=True))
    <zoo>/models/<id>.safetensors   one file per model (or per checkpoint), with string metadata
    <zoo>/assets/<name>.safetensors shared weights, e.g. the base UNet a LoRA zoo adapts
    <zoo>/.cache/                   stacked layers (each with a .sha256 sidecar), rebuilt when the models they
                                    came from change

Each row has at least `model_id, parent_id, tree_id, depth, split, file, sha256`; builders add labels,
hyperparameters and metrics as further flat columns. `parent_id` mirrors Hugging Face's `base_model`.
Several checkpoints of one training run are several rows (with e.g. `run_id` and `epoch` columns).

One meaning per column:
  split     the data split a model belongs to for a method that learns from the zoo: train / val / test, and
            val_holdout / test_holdout for zero-shot; null for models in no split (roots, a MoTHer forest).
  variant   a zoo holding several collections that share their roots (MoTHer's FT / LoRA-V / LoRA-F forests):
            which one a model belongs to; null = shared by every variant (`Zoo.variant`).
The label contract: the manifest's `labels` entry names the column that holds each model's classes (a list of
class indices: many for a ViT fine-tune, one for a LoRA), the class names, and what they mean; `Zoo.multi_hot`,
`Zoo.class_index` and `Zoo.parents` turn the table into what a method needs, so no method has to know which
builder made a zoo.

Model files are plain safetensors with `"format": "pt"` in their header (what Hugging Face tools expect); the
zoo's own tag is the key `weightspace_zoo`, and each file carries its own row (`row`) so a re-run can adopt it.
The manifest's `architecture` entry rebuilds a model (`Zoo.model`); tensors under its `extra_prefixes` (e.g.
a forest's LoRA factors beside the merged weights) are not part of the module's state dict.
The optional `lora` entry, {"up": pattern, "down": pattern} with "{}" for a module's stem, says where each file
keeps LoRA factors: `lora_factors.{}.U` / `.V` beside merged weights (W = W_base + U V), or diffusers'
`unet.{}.lora.up.weight` / `.lora.down.weight` (a LoRA file alone). `Zoo.lora_modules` lists the stems and
`Zoo.lora_layer` stacks every model's up @ down, whichever layout the zoo uses.

Writes are atomic (temporary file `.NAME.PID@HOST.tmp`, then rename; the table last), so a killed build leaves
only whole files behind (and temporary files, removed when the zoo is next opened for writing:
`Zoo.clean_temp_files`), and every model file carries its own row in its metadata so a re-run can adopt it.
Reads check what they read against the table's sha256 (`verify=True`, the default): each file is hashed once
per `Zoo` object while its size, mtime and inode stay the same, and stacked layers are cached under a key of the
verified hashes, each cache file checked against its own sha256 (a `.sha256` sidecar) before it is served.
Nothing here ever unpickles: weights are safetensors, everything else JSON.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import os
import re
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as _load_safetensors_bytes

FORMAT_NAME = "weightspace-zoo"
FORMAT_VERSION = 2
MANIFEST = "zoo.json"
TABLE = "models.jsonl"
MODELS_DIR = "models"
ASSETS_DIR = "assets"
CACHE_DIR = ".cache"
QUARANTINE_DIR = ".quarantine"
SET_ASIDE = ".set_aside.jsonl"   # rows taken out of the table while a parent they start from is redone
REQUIRED_COLUMNS = ("model_id", "parent_id", "tree_id", "depth", "split", "file", "sha256")
SPLITS = ("train", "val", "test", "val_holdout", "test_holdout")   # the values `split` may take (or null)
ZOO_TAG = "weightspace_zoo"   # the safetensors header key that marks a zoo model file
# LoRA factors stored beside merged weights: <prefix><key minus ".weight">.U [d_out, R] and .V [R, d_in], with
# W = W_base + U V (R: the ranks summed along the path from the base); not part of the module's state dict
LORA_FACTORS = "lora_factors."
# The manifest's optional `lora` entry: where each model file keeps the two factors of a LoRA'd module, as key
# patterns with "{}" for the module's stem; the module's weight change (LoRA's B A, no alpha/r) is up @ down.
LORA_LAYOUT = {"up": LORA_FACTORS + "{}.U", "down": LORA_FACTORS + "{}.V"}               # our forests and trees
DIFFUSERS_LORA_LAYOUT = {"up": "unet.{}.lora.up.weight", "down": "unet.{}.lora.down.weight"}   # diffusers files
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")      # a model id or asset name: always used with fullmatch
_SHA256 = re.compile(r"[0-9a-f]{64}")
# temporary files of _atomic_write_bytes: ".NAME.PID@HOST.tmp" (".NAME.PID.tmp" before the host was named)
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)(?:@(?P<host>[A-Za-z0-9_-]+))?\.tmp")
log = logging.getLogger(__name__)


class ZooError(RuntimeError):
    """A zoo on disk is missing, damaged or not what was asked for. The message names the file."""


# ---------------------------------------------------------------------------------------------- files

def sha256_file(path: str | os.PathLike) -> str:
    if not Path(path).is_file():
        raise ZooError(f"{path}: not a regular file (missing, or a directory stands in its place)")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}@{_host()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise to the safetensors format with a canonical header (sorted names and metadata keys).

    The safetensors library writes metadata in hash-map order, which changes from process to process;
    this writer gives the same bytes for the same weights, so a zoo's sha256s do not depend on which
    process wrote it. Read back with safetensors itself.
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"cannot store tensor {name!r} of dtype {t.dtype} in safetensors")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(chunks)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> str:
    """Write tensors atomically as safetensors; returns the file's sha256."""
    data = safetensors_bytes(tensors, metadata)
    _atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def _open(path: Path):
    if not path.exists():
        raise ZooError(f"{path}: model file is missing")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors raises its own error types for truncated or garbled headers
        raise ZooError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); "
                       "it is truncated or corrupted — delete it and re-run the builder to redo it") from e


def read_safetensors(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Read tensors (all, or `keys`) with a clear error for a missing, truncated or corrupted file."""
    path = Path(path)
    with _open(path) as f:
        names = list(f.keys()) if keys is None else list(keys)
        missing = [k for k in names if k not in f.keys()]
        if missing:
            raise ZooError(missing_key_message(path, missing[0], list(f.keys())))
        try:
            return {k: f.get_tensor(k) for k in names}
        except Exception as e:
            raise ZooError(f"{path}: tensor data is truncated or corrupted ({e})") from e


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


def _file_key(path: Path) -> tuple[int, int, int]:
    try:
        return _stat_key(os.stat(path))
    except FileNotFoundError:
        raise ZooError(f"{path}: model file is missing") from None


def _hash_mismatch(path: Path, expected: str, actual: str) -> ZooError:
    return ZooError(f"{path}: sha256 mismatch (table says {expected[:12]}…, file is {actual[:12]}…); "
                    "the file was changed or damaged after it was written")


def _read_bytes(path: Path) -> tuple[bytearray, tuple[int, int, int]]:
    """The whole file and the (size, mtime_ns, inode) of what was read (from the open descriptor, so a file
    replaced meanwhile cannot pair one file's bytes with another's identity)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = bytearray(st.st_size)
            n = f.readinto(data)
            return (data if n == st.st_size else data[:n]), _stat_key(st)
    except FileNotFoundError:
        raise ZooError(f"{path}: model file is missing") from None
    except IsADirectoryError:
        raise ZooError(f"{path}: not a regular file (a directory stands in its place)") from None


_FROM_NAME = {v: k for k, v in _DTYPES.items()}
_NAMES = set(_FROM_NAME)


def _parse_bytes(path: Path, data: bytearray, keys: Iterable[str] | None = None
                 ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(tensors, every tensor name) of a safetensors file held in memory: all tensors, or those of `keys` the
    file has, each a copy of its own; only the tensors asked for are built (the header says where)."""
    def bad(why) -> ZooError:
        return ZooError(f"{path}: not a readable safetensors file ({why}); it is truncated or corrupted — "
                        "delete it and re-run the builder to redo it")

    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(bytes(data[8:8 + n])) if 8 + n <= len(data) else None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(f"header: {e}") from e
    if not isinstance(header, dict):
        raise bad("no header")
    header.pop("__metadata__", None)
    if sys.byteorder != "little" or any(not isinstance(v, dict) or v.get("dtype") not in _NAMES
                                        for v in header.values()):
        try:                                      # a dtype or byte order we do not map: safetensors does it
            tensors = _load_safetensors_bytes(bytes(data))
        except Exception as e:  # safetensors raises its own error types for truncated or garbled data
            raise bad(f"{type(e).__name__}: {e}") from e
        return (tensors if keys is None else {k: tensors[k] for k in keys if k in tensors}), list(tensors)
    out = {}
    for k in (header if keys is None else [k for k in keys if k in header]):
        info = header[k]
        dtype, shape = _FROM_NAME[info["dtype"]], info.get("shape")
        try:
            start, end = (8 + n + int(o) for o in info["data_offsets"])
            numel = math.prod(int(d) for d in shape)
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"tensor {k!r} has a malformed entry {info}") from e
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if not 8 + n <= start <= end <= len(data) or end - start != numel * itemsize:
            raise bad(f"tensor {k!r} lies outside the data or does not fit its shape {shape}")
        if numel == 0:
            out[k] = torch.empty(shape, dtype=dtype)
        else:
            out[k] = torch.frombuffer(data, dtype=dtype, count=numel, offset=start).reshape(shape).clone()
    return out, list(header)


def _read_keys(path: Path, keys: Iterable[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(those of `keys` the file has, every tensor name), in one open of the file."""
    with _open(path) as f:
        names = list(f.keys())
        try:
            return {k: f.get_tensor(k) for k in keys if k in set(names)}, names
        except Exception as e:
            raise ZooError(f"{path}: tensor data is truncated or corrupted ({e})") from e


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":     # on Windows os.kill would end the process: keep its files
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # someone else's live process
        return True
    except OverflowError:
        return False
    return True


def clean_temp_files(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writers which died left in a zoo folder; returns what was removed.

    Only files named like our own temporaries (`.NAME.PID@HOST.tmp`, or `.NAME.PID.tmp` from older versions,
    taken to be from this host) are considered, and only those whose PID is not a live process on this host;
    a temporary of another host (a shared file system) is never touched. The quarantine is not searched.
    Each removal is logged.
    """
    root = Path(root)
    host, removed = _host(), []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d != QUARANTINE_DIR]
        for fname in filenames:
            m = _TEMP.fullmatch(fname)
            if not m or (m["host"] is not None and m["host"] != host) or _pid_alive(int(m["pid"])):
                continue
            f = Path(dirpath) / fname
            if f.is_symlink() or not f.is_file():
                continue
            try:
                f.unlink()
            except FileNotFoundError:
                continue
            removed.append(f)
            log.info("%s: removed the temporary file of a dead writer (pid %s)", f, m["pid"])
    return removed


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    with _open(Path(path)) as f:
        return dict(f.metadata() or {})


def missing_key_message(path, key, available) -> str:
    """'<path>: no tensor named <key>' with the closest names it does have."""
    close = difflib.get_close_matches(key, available, n=5, cutoff=0.5)
    hint = f"; close names: {close}" if close else f"; it has {len(available)} tensors, e.g. {available[:5]}"
    return f"{path}: no tensor named {key!r}{hint}"


class LazyStateDict(Mapping):
    """A read-only state dict whose tensors are read from a safetensors file only when asked for.

    Lets code that wants `{name: tensor}` (MoTHer's distances, say) stream one layer at a time from
    memory-mapped files instead of holding whole models in RAM.

    sha256   when given, the whole file is hashed on open and checked against it (one sequential read of
             the file: about a second per GB; MoTHer's ViT-B files are ~350 MB each); the file's size, mtime
             and inode are then checked on every read, so a file changed or replaced since is refused
             rather than read unverified.
    """

    def __init__(self, path: str | os.PathLike, sha256: str | None = None, *,
                 _verified: tuple[int, int, int] | None = None):
        self.path = Path(path)
        self._verified = _verified
        if sha256 is not None:
            key = _file_key(self.path)
            actual = sha256_file(self.path)
            if actual != sha256:
                raise _hash_mismatch(self.path, sha256, actual)
            self._verified = key
        with _open(self.path) as f:
            self._keys = list(f.keys())
            self.metadata = dict(f.metadata() or {})
            self._shapes = {k: tuple(f.get_slice(k).get_shape()) for k in self._keys}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._shapes:
            raise KeyError(missing_key_message(self.path, key, self._keys))
        if self._verified is not None and _file_key(self.path) != self._verified:
            raise ZooError(f"{self.path}: the file changed after its sha256 was verified; open it again")
        return read_safetensors(self.path, [key])[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"LazyStateDict({str(self.path)!r}, {len(self)} tensors)"


# ------------------------------------------------------------------------------------------------ zoo

def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ZooError(f"{path}: not a regular file")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ZooError(f"{path}: should hold a JSON object, not a {type(value).__name__}")
    return value


def inside(root: Path, rel, where, under: str | None = None) -> Path:
    """`root / rel` for a path taken from a table or manifest, refused unless it is relative and stays inside
    `root` (or `root/under`) once resolved: a table never makes us read, move or delete anything else."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ZooError(f"{where}: path {rel!r} is not a relative path inside the zoo")
    base = (root / under if under else root).resolve()
    full = (root / rel).resolve()
    if full != base and base not in full.parents:
        raise ZooError(f"{where}: path {rel!r} leads outside {base} (a symlink or '..'); refusing to use it")
    return root / rel


def weightspace_architectures() -> dict:
    """The fixed registry behind an `architecture` of library "weightspace": model_name -> constructor(**kwargs).
    A manifest only names an entry; it never supplies an import path."""
    from weightspace.nets.cnn import make_cnn

    return {"cnn": make_cnn}


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()  # numpy scalars
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class Zoo:
    """A model zoo folder: open or create it, add models, read weights and stacked layers.

    >>> zoo = Zoo.open("zoos/vit-trees")
    >>> zoo.table.head()                      # one row per model
    >>> X = zoo.layer("blocks.1.attn.proj.weight")   # [N, 32, 32], cached
    """

    def __init__(self, path: Path, manifest: dict, rows: list[dict]):
        self.path = Path(path)
        self.manifest = manifest
        self._rows: dict[str, dict] = {r["model_id"]: r for r in rows}
        # path -> ((size, mtime_ns, inode), sha256) of each file this object has hashed
        self._hashed: dict[str, tuple[tuple[int, int, int], str]] = {}

    # -- creating and opening ---------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, kind: str, builder: str, params: Mapping, preset: str | None = None,
               command: str | None = None, layers: Mapping | None = None, labels: Mapping | None = None,
               architecture: Mapping | None = None, lora: Mapping[str, str] | None = None,
               repair: bool = False) -> "Zoo":
        """Create a zoo folder, or reopen it to resume when it was started with the same parameters.

        labels        {"column": "classes", "class_names": [...], "per_model": "many" | "one",
                       "description": "..."}: the label contract (see the module docstring)
        architecture  {"library": "timm", "model_name": ..., "kwargs": {...}, "num_classes_column": ...,
                       "extra_prefixes": [...]}: what `Zoo.model` rebuilds each model with; library
                       "weightspace" names one of `weightspace_architectures()` (e.g. "cnn") instead;
                       "kwargs_columns" {argument: column} takes arguments from each model's row
        lora          {"up": "lora_factors.{}.U", "down": "lora_factors.{}.V"} (e.g. LORA_LAYOUT): where the
                       files keep LoRA factors (see the module docstring); added to a resumed zoo that lacks it
        repair        first set aside the rows whose parent is missing (see `Zoo.repair`)
        """
        path = Path(path)
        params = _jsonable(dict(params))
        labels = _check_labels(_jsonable(dict(labels)), path / MANIFEST) if labels else None
        lora = _check_lora(dict(lora), path / MANIFEST) if lora else None
        if (path / MANIFEST).exists():
            if not (path / TABLE).exists() and not any((path / MODELS_DIR).glob("*.safetensors")):
                Zoo(path, {}, [])._write_table()     # created up to its manifest, nothing built: resume it
            if repair:
                cls.repair(path)
            zoo = cls.open(path, kind=kind)
            zoo.clean_temp_files()
            if zoo.manifest.get("params") != params:
                old = zoo.manifest.get("params", {})
                diff = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
                raise ZooError(f"{path / MANIFEST}: this zoo was started with other parameters "
                               f"(differ: {diff}); use another folder or delete this one")
            if lora and zoo.manifest.get("lora") != lora:
                if zoo.manifest.get("lora"):
                    raise ZooError(f"{path / MANIFEST}: this zoo's LoRA layout is {zoo.manifest['lora']}, "
                                   f"not {lora}")
                zoo.manifest["lora"] = lora      # a zoo made before the entry existed: same files, now described
                zoo._write_manifest()
            return zoo
        if path.exists() and any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise ZooError(f"{path}: folder exists, is not empty and has no {MANIFEST}; "
                           "it is not a weightspace zoo (refusing to write into it)")
        from weightspace import __version__
        from weightspace.runtime import environment

        manifest = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": kind, "builder": builder,
            "params": params, "preset": preset, "package_version": __version__, "environment": environment(),
            "command": command, "layers": _jsonable(dict(layers or {})),
            "labels": labels, "architecture": _jsonable(dict(architecture)) if architecture else None,
            **({"lora": lora} if lora else {}), "assets": {}, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        # the manifest (what marks a zoo) first, then the table and the models folder: a build killed in here
        # leaves a folder with only hidden temp files (started afresh) or a manifest that reopens (above)
        path.mkdir(parents=True, exist_ok=True)
        zoo = cls(path, manifest, [])
        zoo._write_manifest()
        zoo._write_table()
        (path / MODELS_DIR).mkdir(exist_ok=True)
        return zoo

    @classmethod
    def open(cls, path, kind: str | None = None) -> "Zoo":
        """Open an existing zoo, checking its format, version, kind and table."""
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.exists():
            hint = " (the folder does not exist)" if not path.exists() else ""
            raise ZooError(f"{mpath}: no zoo manifest{hint}; is {path} a weightspace zoo? "
                           "Build it first (see the notebook that makes it)")
        _own_file(mpath)
        manifest = _read_json(mpath)
        if manifest.get("format") != FORMAT_NAME:
            raise ZooError(f"{mpath}: format is {manifest.get('format')!r}, not {FORMAT_NAME!r}")
        if manifest.get("version") != FORMAT_VERSION:
            how = f" It was made by: {manifest['command']}." if manifest.get("command") else ""
            raise ZooError(f"{mpath}: zoo format version {manifest.get('version')!r}, but this weightspace "
                           f"reads version {FORMAT_VERSION} (version 2 gave `split` one meaning, added the label "
                           f"contract and Hugging Face-readable file headers). Rebuild it: delete {path} and "
                           f"re-run the notebook or builder that made it.{how}")
        for key, types in (("kind", str), ("builder", str), ("params", dict)):
            if not isinstance(manifest.get(key), types):
                raise ZooError(f"{mpath}: the manifest's {key!r} is missing or not a {types.__name__}")
        for key in ("labels", "architecture", "assets", "layers"):
            if manifest.get(key) is not None and not isinstance(manifest[key], dict):
                raise ZooError(f"{mpath}: the manifest's {key!r} should be an object")
        if manifest.get("labels"):
            _check_labels(manifest["labels"], mpath)
        for name, asset in (manifest.get("assets") or {}).items():
            if not isinstance(asset, dict) or not _ID.fullmatch(str(name)) or \
                    not _SHA256.fullmatch(str(asset.get("sha256"))):
                raise ZooError(f"{mpath}: asset {name!r} needs a plain name, a file and a sha256")
            inside(path, asset.get("file"), f"{mpath}: asset {name!r}", under=ASSETS_DIR)
        if kind is not None and manifest.get("kind") != kind:
            raise ZooError(f"{mpath}: this zoo is of kind {manifest.get('kind')!r}, expected {kind!r}")
        rows = cls._read_table(path / TABLE)
        zoo = cls(path, manifest, [])
        zoo._check_rows(rows, known={}, opening=True)
        zoo._rows = {r["model_id"]: r for r in rows}
        return zoo

    @classmethod
    def repair(cls, path) -> list[str]:
        """Set aside the rows that start (through any ancestor) from a model missing from the table, so the
        zoo opens again; returns their ids. A builder re-run rebuilds the missing parents and re-adopts
        these rows (see `readopt`) instead of retraining them."""
        path = Path(path)
        rows = cls._read_table(path / TABLE)
        stranded = set(_stranded(rows))
        if not stranded:
            return []
        keep = [r for r in rows if not (isinstance(r, dict) and r.get("model_id") in stranded)]
        out = [r for r in rows if isinstance(r, dict) and r.get("model_id") in stranded]
        zoo = cls(path, {}, [])
        aside = zoo._read_set_aside()
        for r in out:   # the parent's hash is the one the child's writer recorded, else unknown (None)
            aside[r["model_id"]] = {"row": r, "parent_sha256": r.get("parent_sha256")}
        zoo._write_set_aside(aside)
        zoo._rows = {r["model_id"]: r for r in keep}
        zoo._write_table()
        return [r["model_id"] for r in out]

    @staticmethod
    def _read_table(tpath: Path) -> list[dict]:
        if not tpath.exists():
            raise ZooError(f"{tpath}: the models table is missing")
        _own_file(tpath)
        try:
            text = tpath.read_text()
        except UnicodeDecodeError as e:
            raise ZooError(f"{tpath}: not a text file ({e}); the models table is damaged") from None
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ZooError(f"{tpath}, line {i}: not valid JSON ({e})") from e
        return rows

    # -- reading the table --------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def params(self) -> dict:
        return self.manifest["params"]

    @property
    def rows(self) -> list[dict]:
        return list(self._rows.values())

    @property
    def ids(self) -> list[str]:
        return list(self._rows)

    @property
    def table(self):
        """The models table as a pandas DataFrame, in insertion order."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=None if self._rows else list(REQUIRED_COLUMNS))

    def row(self, model_id: str) -> dict:
        try:
            return self._rows[model_id]
        except KeyError:
            raise ZooError(f"{self.path / TABLE}: no model {model_id!r}") from None

    def select(self, **where) -> list[str]:
        """Ids of the models whose columns equal the given values, e.g. select(tree_id=0, split='train')."""
        return [i for i, r in self._rows.items() if all(r.get(k) == v for k, v in where.items())]

    # -- the label contract ---------------------------------------------------------------------------
    @property
    def label_spec(self) -> dict:
        spec = self.manifest.get("labels")
        if not spec:
            raise ZooError(f"{self.path / MANIFEST}: this zoo records no labels (no `labels` entry); "
                           "it has nothing to predict")
        return spec

    @property
    def class_names(self) -> list[str]:
        """Index -> natural-language class name, e.g. 'a mirrored seven'."""
        return list(self.label_spec["class_names"])

    def labelled(self, ids: Iterable[str] | None = None) -> list[str]:
        """The ids (of `ids`, default all) whose row has classes: the models a label method can use."""
        col = self.label_spec["column"]
        return [i for i in (self.ids if ids is None else ids) if self.row(i).get(col) is not None]

    def labels(self, ids: Iterable[str] | None = None) -> list[list[int]]:
        """Each model's class indices (default: every labelled model)."""
        col = self.label_spec["column"]
        ids = self.labelled() if ids is None else list(ids)
        out = []
        for i in ids:
            value = self.row(i).get(col)
            if value is None:
                raise ZooError(f"{self.path / TABLE}: model {i!r} has no {col!r}: it is not labelled "
                               "(Zoo.labelled() lists the models that are)")
            out.append(list(value))
        return out

    def multi_hot(self, ids: Iterable[str] | None = None) -> torch.Tensor:
        """Labels as a float32 [N, n_classes] 0/1 matrix (default: every labelled model)."""
        labels = self.labels(ids)
        Y = torch.zeros(len(labels), len(self.class_names))
        for n, classes in enumerate(labels):
            Y[n, classes] = 1.0
        return Y

    def class_index(self, ids: Iterable[str] | None = None) -> torch.Tensor:
        """The one class of each model as int64 [N] (zoos whose models have exactly one class each)."""
        ids = self.labelled() if ids is None else list(ids)
        labels = self.labels(ids)
        bad = [(i, len(c)) for i, c in zip(ids, labels) if len(c) != 1]
        if bad:
            raise ZooError(f"{self.path}: model {bad[0][0]!r} has {bad[0][1]} classes, not one "
                           f"({len(bad)} such models); use Zoo.multi_hot for multi-label zoos")
        return torch.tensor([c[0] for c in labels], dtype=torch.long)

    def parents(self, ids: Iterable[str] | None = None) -> dict[str, str | None]:
        """{model: parent model or None} for `ids` (default all): the zoo's ground-truth Model Graph."""
        return {i: self.row(i)["parent_id"] for i in (self.ids if ids is None else ids)}

    @property
    def variants(self) -> list[str]:
        """The values of the `variant` column (empty for a zoo of one collection)."""
        return sorted({r["variant"] for r in self._rows.values() if r.get("variant") is not None})

    def variant(self, name: str) -> list[str]:
        """One collection of a multi-variant zoo: its own models and the shared ones (variant null)."""
        if name not in self.variants:
            raise ZooError(f"{self.path}: no variant {name!r}; this zoo has {self.variants or 'no variants'}")
        return [i for i, r in self._rows.items() if r.get("variant") in (name, None)]

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, model_id) -> bool:
        return model_id in self._rows

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)

    def __repr__(self) -> str:
        return f"Zoo({str(self.path)!r}, kind={self.kind!r}, {len(self)} models)"

    # -- writing ------------------------------------------------------------------------------------
    def model_path(self, model_id: str) -> Path:
        return self.path / MODELS_DIR / f"{model_id}.safetensors"

    def add(self, model_id: str, tensors: Mapping[str, torch.Tensor], *, parent_id=None, tree_id=0,
            depth=0, split="train", replace: bool = False, **columns) -> dict:
        """Write one model and record its row (convenient for small builds; jobs use write_model)."""
        row = write_model(self.path, model_id, tensors, dict(parent_id=parent_id, tree_id=tree_id,
                                                             depth=depth, split=split, **columns))
        self.record([row], replace=replace)
        return row

    def record(self, rows: Iterable[dict], replace: bool = False) -> None:
        """Add rows (whose files are written) to the table, checking ids, parents and files."""
        rows = [_jsonable(dict(r)) for r in rows]
        if not rows:
            return
        known = {k: v for k, v in self._rows.items()}
        if replace:
            for r in rows:
                known.pop(r.get("model_id"), None)
        self._check_rows(rows, known=known)
        for r in rows:
            f = self.path / r["file"]
            if not f.exists():
                raise ZooError(f"{f}: model file is missing (cannot record {r['model_id']!r})")
            self._rows[r["model_id"]] = r
        self._write_table()

    def reorder(self, ids: list[str]) -> None:
        """Store the table in the given order (which must list every model once)."""
        if sorted(ids) != sorted(self._rows):
            raise ZooError(f"{self.path / TABLE}: reorder needs every model id exactly once")
        if ids != self.ids:
            self._rows = {i: self._rows[i] for i in ids}
            self._write_table()

    def _check_rows(self, rows: list[dict], known: Mapping[str, dict], opening: bool = False) -> None:
        where = self.path / TABLE
        seen = dict(known)
        labels = self.manifest.get("labels")
        n_classes = len(labels["class_names"]) if labels else 0
        for r in rows:
            if not isinstance(r, dict):
                raise ZooError(f"{where}: a row is a {type(r).__name__}, not a JSON object: {str(r)[:80]}")
            missing = [c for c in REQUIRED_COLUMNS if c not in r]
            if missing:
                raise ZooError(f"{where}: row {str(r.get('model_id', r))[:80]!r} lacks columns {missing}")
            mid = r["model_id"]
            if not isinstance(mid, str) or not _ID.fullmatch(mid):
                raise ZooError(f"{where}: model id {mid!r} is not a plain file name "
                               "(letters, digits, '.', '_', '-')")
            inside(self.path, r["file"], f"{where}: model {mid!r}", under=MODELS_DIR)
            if not isinstance(r["sha256"], str) or not _SHA256.fullmatch(r["sha256"]):
                raise ZooError(f"{where}: model {mid!r} has sha256 {r['sha256']!r}, not 64 hex digits")
            for col, types in (("depth", int), ("tree_id", (int, str))):
                if r[col] is not None and (not isinstance(r[col], types) or isinstance(r[col], bool)):
                    raise ZooError(f"{where}: model {mid!r} has {col} {r[col]!r} of the wrong type")
            if r["parent_id"] is not None and not isinstance(r["parent_id"], str):
                raise ZooError(f"{where}: model {mid!r} has parent_id {r['parent_id']!r}, not a model id or null")
            if mid in seen:
                raise ZooError(f"{where}: duplicate model id {mid!r}")
            if r["split"] is not None and r["split"] not in SPLITS:
                raise ZooError(f"{where}: model {mid!r} has split {r['split']!r}; a split is one of {SPLITS} "
                               "or null (other groupings get their own column, e.g. `variant`)")
            if labels:
                value = r.get(labels["column"])
                if value is not None and (not isinstance(value, list) or not all(
                        isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n_classes for c in value)):
                    raise ZooError(f"{where}: model {mid!r} has {labels['column']} = {value!r}; expected a list of "
                                   f"class indices in 0..{n_classes - 1}")
            pid = r["parent_id"]
            if pid is not None:
                parent = seen.get(pid)
                if parent is None and opening and pid not in {x.get("model_id") for x in rows}:
                    n = len(_stranded(rows))
                    raise ZooError(
                        f"{where}: model {mid!r} names parent {pid!r}, which is not in the zoo ({n} row(s) "
                        f"start from a missing model, e.g. after a resume cut short by an older "
                        f"weightspace). "
                        f"Repair without retraining: `python -m weightspace zoo repair {self.path}` (or "
                        f"Zoo.repair(path), or the builder with repair=True) sets those rows aside; "
                        f"re-running "
                        f"the builder then rebuilds the missing models and re-adopts every row whose file is "
                        f"intact")
                if parent is None:
                    raise ZooError(f"{where}: model {mid!r} names parent {pid!r}, which is not in the zoo "
                                   "(parents must be recorded before their children)")
                if parent["tree_id"] != r["tree_id"]:
                    raise ZooError(f"{where}: model {mid!r} is in tree {r['tree_id']!r} but its parent "
                                   f"{pid!r} is in tree {parent['tree_id']!r}")
            seen[mid] = r

    def clean_temp_files(self) -> list[Path]:
        """Remove the temporary files of writers that died (see `clean_temp_files`); done on resuming."""
        return clean_temp_files(self.path)

    def _write_manifest(self) -> None:
        _atomic_write_bytes(self.path / MANIFEST, (json.dumps(self.manifest, indent=2) + "\n").encode())

    def _write_table(self) -> None:
        text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in self._rows.values())
        _atomic_write_bytes(self.path / TABLE, text.encode())

    def set_layers(self, layers: Mapping[str, Iterable[int]]) -> None:
        """Record the layer layout (name -> shape) in the manifest."""
        self.manifest["layers"] = {k: list(v) for k, v in layers.items()}
        self._write_manifest()

    # -- assets (weights shared by all models, e.g. a cached base model) -----------------------------
    def add_asset(self, name: str, tensors: Mapping[str, torch.Tensor], metadata=None) -> None:
        if not _ID.fullmatch(name):
            raise ZooError(f"{self.path}: asset name {name!r} is not a plain file name")
        rel = f"{ASSETS_DIR}/{name}.safetensors"
        sha = write_safetensors(self.path / rel, tensors, metadata)
        self.manifest.setdefault("assets", {})[name] = {"file": rel, "sha256": sha}
        self._write_manifest()

    def load_asset(self, name: str, verify: bool = True) -> dict[str, torch.Tensor]:
        assets = self.manifest.get("assets", {})
        if name not in assets:
            raise ZooError(f"{self.path / MANIFEST}: no asset {name!r} (has {sorted(assets)})")
        path = self.path / assets[name]["file"]
        if not path.is_file():
            raise ZooError(f"{path}: asset {name!r} is missing or not a regular file")
        return self._read(path, assets[name]["sha256"]) if verify else read_safetensors(path)

    def asset_metadata(self, name: str) -> dict[str, str]:
        """The string metadata of an asset's header, read once its file matches the manifest's sha256."""
        assets = self.manifest.get("assets", {})
        if name not in assets:
            raise ZooError(f"{self.path / MANIFEST}: no asset {name!r} (has {sorted(assets)})")
        path = self.path / assets[name]["file"]
        if not path.is_file():
            raise ZooError(f"{path}: asset {name!r} is missing or not a regular file")
        self._check_file(path, assets[name]["sha256"])
        return read_metadata(path)

    # -- reading weights ------------------------------------------------------------------------------
    def _memo_ok(self, path: Path, expected: str) -> tuple[int, int, int] | None:
        """The file's (size, mtime_ns, inode) if this Zoo already hashed it unchanged and it matched."""
        memo = self._hashed.get(str(path))
        if memo is None or memo[1] != expected:
            return None
        key = _file_key(path)
        return key if memo[0] == key else None

    def _check_file(self, path: Path, expected: str) -> tuple[int, int, int]:
        """Check a file's sha256 against `expected`, hashing it only if this Zoo has not yet seen this version
        of it (same size, mtime and inode); returns that identity."""
        key = self._memo_ok(path, expected)
        if key is None:
            key = _file_key(path)
            actual = sha256_file(path)
            if actual != expected:
                raise _hash_mismatch(path, expected, actual)
            if _file_key(path) == key:
                self._hashed[str(path)] = (key, actual)
        return key

    def _read(self, path: Path, expected: str, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Tensors (all, or `keys`) of a file checked against `expected`: read once, hashed from memory and
        parsed from the same bytes; a file this Zoo already verified unchanged is read without hashing."""
        tensors, names = self._read_some(path, expected, keys)
        missing = [k for k in keys or () if k not in tensors]
        if missing:
            raise ZooError(missing_key_message(path, missing[0], names))
        return tensors

    def _read_some(self, path: Path, expected: str | None, keys: Iterable[str] | None
                   ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """(those of `keys` (default all) the file has, every tensor name); checked against `expected` unless
        it is None, reading the whole file once only when this Zoo has not verified this version of it."""
        if expected is None or self._memo_ok(path, expected) is not None:
            if keys is None:
                tensors = read_safetensors(path)
                return tensors, list(tensors)
            return _read_keys(path, keys)
        data, key = _read_bytes(path)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise _hash_mismatch(path, expected, actual)
        self._hashed[str(path)] = (key, actual)
        return _parse_bytes(path, data, keys)

    def load(self, model_id: str, verify: bool = True) -> dict[str, torch.Tensor]:
        """The state dict of one model (sha256 checked unless verify=False; the file is read once)."""
        row = self.row(model_id)
        path = self.path / row["file"]
        return self._read(path, row["sha256"]) if verify else read_safetensors(path)

    def lazy(self, model_id: str, verify: bool = True) -> LazyStateDict:
        """The model as a LazyStateDict: tensors are read from disk only when indexed.

        verify=True hashes the whole file on open (one sequential read, about a second per GB; done once per
        Zoo object while the file's size, mtime and inode stay the same) and refuses a file changed after
        that; verify=False reads only the header now, with no check of the weights.
        """
        row = self.row(model_id)
        path = self.path / row["file"]
        if not verify:
            return LazyStateDict(path)
        return LazyStateDict(path, _verified=self._check_file(path, row["sha256"]))

    def model(self, model_id: str, verify: bool = True):
        """The model as an `nn.Module` built from the manifest's `architecture`, its weights loaded with
        `strict=True` (sha256 checked unless verify=False). Tensors under the architecture's
        `extra_prefixes` (e.g. LoRA factors kept beside merged weights) are not part of the module."""
        arch = self.manifest.get("architecture")
        if not arch:
            raise ZooError(f"{self.path / MANIFEST}: this zoo records no architecture, so its models cannot be "
                           "rebuilt as modules; use Zoo.load for the state dict")
        row = self.row(model_id)
        kwargs = dict(arch.get("kwargs", {}))
        if arch.get("num_classes_column") and row.get(arch["num_classes_column"]) is not None:
            kwargs["num_classes"] = row[arch["num_classes_column"]]
        for name, column in (arch.get("kwargs_columns") or {}).items():   # e.g. each CNN's own activation
            if row.get(column) is not None:
                kwargs[name] = row[column]
        if arch.get("library") == "weightspace":
            known = weightspace_architectures()
            if arch.get("model_name") not in known:
                raise ZooError(f"{self.path / MANIFEST}: unknown weightspace architecture {arch.get('model_name')!r}; "
                               f"known: {sorted(known)}")
            try:
                module = known[arch["model_name"]](**kwargs)
            except (TypeError, ValueError) as e:
                raise ZooError(f"{self.path / MANIFEST}: the architecture {arch['model_name']!r} cannot be built from "
                               f"{kwargs}: {e}") from e
        elif arch.get("library") != "timm":
            raise ZooError(f"{self.path / MANIFEST}: unknown architecture library {arch.get('library')!r}")
        else:
            import timm

            module = timm.create_model(arch["model_name"], pretrained=False, **kwargs)
        skip = tuple(arch.get("extra_prefixes", ()))
        sd = {k: v for k, v in self.load(model_id, verify=verify).items() if not (skip and k.startswith(skip))}
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ZooError(f"{self.path / row['file']}: does not load into {arch['model_name']}(**{kwargs}): "
                           f"{e}") from e
        return module.eval()

    def state_dicts(self, ids: Iterable[str] | None = None, lazy: bool = True,
                    verify: bool = True) -> dict[str, Mapping]:
        """{model_id: state dict} for `ids` (default: all), lazy by default; every file's sha256 is checked
        unless verify=False (for lazy ones: a hash of each whole file, see `Zoo.lazy`)."""
        ids = self.ids if ids is None else list(ids)
        return {i: (self.lazy(i, verify) if lazy else self.load(i, verify)) for i in ids}

    def layer_names(self) -> list[str]:
        if self.manifest.get("layers"):
            return list(self.manifest["layers"])
        if not self._rows:
            return []
        return list(self.lazy(next(iter(self._rows)), verify=False))   # names only: no weights are read

    def layer(self, name: str, ids: Iterable[str] | None = None, cache: bool = True,
              progress: bool = False, verify: bool = True) -> torch.Tensor:
        """One tensor of every model stacked as [N, ...] (in `ids` order), cached under .cache/.

        Each file is checked against the table's sha256 as it is read (verify=True), and the cache is keyed
        on those verified hashes and checked itself before it is served; verify=False skips the files' check
        and never writes a cache (a cache built from verified files is still used).
        """
        return self._stack("layers", name, ids, cache, progress, (name,), lambda path, t: t[name], verify)

    @property
    def lora_spec(self) -> dict:
        """The manifest's `lora` entry: {"up": pattern, "down": pattern} ("{}" = the module's stem)."""
        spec = self.manifest.get("lora")
        if not spec:
            raise ZooError(f"{self.path / MANIFEST}: this zoo records no LoRA layout (no `lora` entry), so it has "
                           "no LoRA layers; its weights are read with Zoo.layer")
        return spec

    def lora_modules(self) -> list[str]:
        """The stems of the LoRA'd modules present in the models' files (any model), in sorted key order
        (ProbeX's layer indexing of a LoRA zoo); [] for a zoo without a `lora` entry."""
        if not self.manifest.get("lora"):
            return []
        up, down = (_pattern_regex(self.lora_spec[s]) for s in ("up", "down"))
        keys = set()
        for r in self._rows.values():
            keys.update(LazyStateDict(self.path / r["file"]))   # names from the header; no weights read
        stems = {}
        for k in sorted(keys):
            m = up.match(k) or down.match(k)
            if m:
                stems.setdefault(m.group(1), None)
        return list(stems)

    def lora_layer(self, stem: str, ids: Iterable[str] | None = None, cache: bool = True,
                   progress: bool = False, verify: bool = True) -> torch.Tensor:
        """float32 [N, d_out, d_in]: each model's LoRA weight change up @ down on module `stem` (LoRA's B A,
        with no alpha/r scaling, as ProbeX reads a LoRA), stacked in `ids` order, verified and cached like
        `layer`."""
        spec = self.lora_spec
        keys = (spec["up"].format(stem), spec["down"].format(stem))

        def read(path: Path, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
            U, V = tensors[keys[0]].float(), tensors[keys[1]].float()
            if U.ndim != 2 or V.ndim != 2 or U.shape[1] != V.shape[0]:
                raise ZooError(f"{path}: LoRA factors of {stem!r} do not chain: up {keys[0]!r} is {tuple(U.shape)}, "
                               f"down {keys[1]!r} is {tuple(V.shape)} (need [d_out, r] and [r, d_in])")
            return U @ V

        def what(path: Path, missing: str) -> str:
            return f" (the LoRA factor {'up' if missing == keys[0] else 'down'} of module {stem!r})"

        return self._stack("lora", stem, ids, cache, progress, keys, read, verify, what)

    def _cached_stack(self, cpath: Path, n: int) -> torch.Tensor | None:
        """The stack in a cache file if the file matches the sha256 in its sidecar and holds `n` models;
        None (after saying why) otherwise, so the caller rebuilds it."""
        side = cpath.with_name(cpath.name + ".sha256")
        if not cpath.exists():
            return None
        try:
            expected = side.read_text().strip()
            data, _ = _read_bytes(cpath)
        except (OSError, ZooError, UnicodeDecodeError):
            log.info("%s: cache file has no readable checksum; rebuilding it", cpath)
            return None
        if hashlib.sha256(data).hexdigest() != expected:
            log.warning("%s: cache file does not match its checksum (damaged); rebuilding it", cpath)
            return None
        try:
            stack = _parse_bytes(cpath, data, ["stack"])[0].get("stack")
        except ZooError:
            stack = None
        if stack is None or stack.ndim == 0 or stack.shape[0] != n:
            log.warning("%s: cache file does not hold a stack of %d models; rebuilding it", cpath, n)
            return None
        return stack

    def _stack(self, what: str, name: str, ids, cache: bool, progress: bool, keys: tuple[str, ...], make,
               verify: bool = True, describe=None) -> torch.Tensor:
        """Stack make(file, {key: tensor}) over the models `ids` (default all), reading `keys` of each file
        (checked against the table's sha256 unless verify=False). Cached under .cache/<what>/ with a key of
        the ids and their verified sha256, the cache file itself checked against a `.sha256` sidecar before
        it is served; only verified reads are cached."""
        ids = self.ids if ids is None else list(ids)
        if not ids:
            raise ZooError(f"{self.path}: no models to stack layer {name!r} from")
        rows = [self.row(i) for i in ids]
        digest = hashlib.sha256("\n".join(f"{r['model_id']}:{r['sha256']}" for r in rows).encode()).hexdigest()
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        cpath = self.path / CACHE_DIR / what / f"{safe}--{digest[:16]}.safetensors"
        if cache:
            stack = self._cached_stack(cpath, len(rows))
            if stack is not None:
                if verify:   # never served for a model file that fails now (hashed once per Zoo while unchanged)
                    for r in rows:
                        self._check_file(self.path / r["file"], r["sha256"])
                return stack
        it = rows
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(rows, desc=f"reading {name}", unit="model")
        first_shape, out = None, []
        for r in it:
            path = self.path / r["file"]
            tensors, have = self._read_some(path, r["sha256"] if verify else None, keys)
            missing = [k for k in keys if k not in tensors]
            if missing:
                raise ZooError(missing_key_message(path, missing[0], sorted(have))
                               + (describe(path, missing[0]) if describe else ""))
            t = make(path, tensors)
            if first_shape is None:
                first_shape = tuple(t.shape)
            elif tuple(t.shape) != first_shape:
                raise ZooError(f"{path}: layer {name!r} has shape {tuple(t.shape)}, but the first model "
                               f"({rows[0]['file']}) has {first_shape}; the zoo mixes architectures")
            out.append(t)
        stack = torch.stack(out)
        if cache and verify:
            try:
                sha = write_safetensors(cpath, {"stack": stack}, {"layer": name, "digest": digest})
                _atomic_write_bytes(cpath.with_name(cpath.name + ".sha256"), (sha + "\n").encode())
            except OSError as e:     # e.g. a directory where the cache file goes: serve, but do not cache
                log.warning("%s: cannot write the layer cache (%s); the stack is not cached", cpath, e)
        return stack

    # -- integrity ------------------------------------------------------------------------------------
    def verify(self, ids: Iterable[str] | None = None, raise_errors: bool = True) -> list[str]:
        """Recompute the sha256 of every model file (of `ids`) and, when all are asked for, of every asset;
        returns (or raises with) the list of problems."""
        problems = []
        for i in (self.ids if ids is None else ids):
            r = self.row(i)
            try:
                _check_hash(self.path / r["file"], r["sha256"])
            except ZooError as e:
                problems.append(str(e))
        for name, asset in (self.manifest.get("assets") or {}).items() if ids is None else ():
            try:
                _check_hash(self.path / asset["file"], asset["sha256"])
            except ZooError as e:
                problems.append(f"asset {name!r}: {e}")
        if problems and raise_errors:
            more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise ZooError(f"{self.path}: {len(problems)} model file(s) failed verification:\n"
                           + "\n".join(problems[:10]) + more)
        return problems

    def is_done(self, model_id: str) -> bool:
        """Recorded, present and matching its sha256."""
        r = self._rows.get(model_id)
        if r is None:
            return False
        path = self.path / r["file"]
        return path.exists() and sha256_file(path) == r["sha256"]

    def quarantine(self, model_id: str) -> Path | None:
        """Move a damaged file aside (never delete) and forget its row, so a builder redoes it.

        Its recorded descendants are set aside in the same table write (see `set_aside`), so the table never
        names a parent it lacks, however the run ends."""
        self.set_aside([model_id])
        return self._move_aside(self.model_path(model_id) if model_id not in self._rows
                                else self.path / self._rows[model_id]["file"], forget=model_id)

    def _move_aside(self, path: Path, forget: str | None = None) -> Path | None:
        r = self._rows.pop(forget, None) if forget is not None else None
        if r is not None:
            self._write_table()
        if not path.exists():
            return None
        qdir = self.path / QUARANTINE_DIR
        qdir.mkdir(exist_ok=True)
        stamp = int(time.time() * 1e6)
        while True:   # a fresh name: never overwrite an earlier quarantined copy
            moved = qdir / f"{path.name}.{stamp}"
            try:
                fd = os.open(moved, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                stamp += 1
                continue
            os.close(fd)
            break
        os.replace(path, moved)
        return moved

    def set_aside(self, ids: Iterable[str]) -> list[str]:
        """Take the recorded descendants of `ids` out of the table into the zoo's side list, each with the
        sha256 of the parent it was trained from; returns their ids. `readopt` puts them back once that parent
        is recorded again with the same bytes."""
        ids = set(ids)
        children: dict[str, list[str]] = {}
        for mid, r in self._rows.items():
            children.setdefault(r["parent_id"], []).append(mid)
        out, todo = [], list(ids)
        while todo:
            for c in children.get(todo.pop(), []):
                if c not in ids and c not in out:
                    out.append(c)
                    todo.append(c)
        if not out:
            return []
        aside = self._read_set_aside()
        for mid in [m for m in self._rows if m in set(out)]:
            r = self._rows[mid]
            parent = self._rows.get(r["parent_id"]) or {}
            aside[mid] = {"row": r, "parent_sha256": r.get("parent_sha256") or parent.get("sha256")}
        self._write_set_aside(aside)        # the side list first: a kill before the table write loses nothing
        for mid in out:
            del self._rows[mid]
        self._write_table()
        return [m for m in aside if m in set(out)]

    def add_set_aside(self, rows: Iterable[dict]) -> None:
        """Put rows of files not in the table (each with the `parent_sha256` it was trained from) on the side
        list, for `readopt` to record once their parent is."""
        aside = self._read_set_aside()
        for r in rows:
            aside[r["model_id"]] = {"row": _jsonable(dict(r)), "parent_sha256": r.get("parent_sha256")}
        self._write_set_aside(aside)

    @property
    def set_aside_ids(self) -> list[str]:
        """Models taken out of the table until their parent is rebuilt (see `set_aside`)."""
        return list(self._read_set_aside())

    def readopt(self) -> tuple[list[str], list[str]]:
        """Record again each set-aside row whose parent is in the table with the sha256 it was trained from
        and whose own file is intact; move aside (to .quarantine) the files of those whose parent came back
        different or whose file is damaged, so a builder retrains them. Returns (re-adopted ids,
        moved-aside ids).
        A row set aside without a known parent hash (`Zoo.repair` of a table from an older weightspace) is
        re-adopted on the builders' determinism: a rebuilt parent has the same bytes."""
        aside = self._read_set_aside()
        if not aside:
            return [], []
        adopted, stale = [], []
        changed = True
        while changed:
            changed = False
            for mid, e in list(aside.items()):
                r = e["row"]
                if mid in self._rows:          # redone meanwhile: the side copy is obsolete
                    del aside[mid]
                    changed = True
                    continue
                parent = self._rows.get(r["parent_id"])
                if parent is None:
                    continue
                f = self.path / r["file"]
                ok = (e.get("parent_sha256") in (None, parent["sha256"]) and f.exists()
                      and sha256_file(f) == r["sha256"])
                del aside[mid]
                changed = True
                if ok:
                    self._check_rows([r], known=self._rows)
                    self._rows[mid] = r
                    adopted.append(mid)
                else:
                    self._move_aside(f)
                    stale.append(mid)
        if adopted:
            self._write_table()
        self._write_set_aside(aside)
        return adopted, stale

    def _read_set_aside(self) -> dict[str, dict]:
        f = self.path / SET_ASIDE
        if not f.exists():
            return {}
        out = {}
        for line in f.read_text().splitlines():
            try:
                e = json.loads(line)
                out[e["row"]["model_id"]] = e
            except (json.JSONDecodeError, KeyError, TypeError):
                continue      # a damaged entry: that model is simply retrained
        return out

    def _write_set_aside(self, aside: Mapping[str, dict]) -> None:
        f = self.path / SET_ASIDE
        if not aside:
            f.unlink(missing_ok=True)
            return
        _atomic_write_bytes(f, "".join(json.dumps(e) + "\n" for e in aside.values()).encode())

    def orphans(self) -> list[dict]:
        """Rows of model files present on disk but not in the table (a build killed before recording).

        Every file written by write_model carries its row, so it can be adopted without retraining.
        Files that do not parse are skipped here (a builder overwrites them).
        """
        out = []
        mdir = self.path / MODELS_DIR
        if not mdir.exists():
            return out
        aside = self._read_set_aside()
        for f in sorted(mdir.rglob("*.safetensors")):
            # models/<id>.safetensors, or a folder per model: models/[<folder>/]<id>/<file name>
            flat = f.parent == mdir
            mid = f.name[: -len(".safetensors")] if flat else f.parent.name
            if mid in self._rows or mid in aside or f.is_symlink() or (not flat and len(f.relative_to(mdir).parts) > 3):
                continue
            try:
                meta = read_metadata(f)
                row = json.loads(meta["row"])
            except (ZooError, KeyError, json.JSONDecodeError):
                continue
            if row.get("model_id") != mid or meta.get("model_id") != mid:
                continue
            row["file"] = f.relative_to(self.path).as_posix()
            row["sha256"] = sha256_file(f)
            out.append(row)
        return out


def _stranded(rows: list) -> list[str]:
    """Ids of the rows that start, through some ancestor, from a model id that is not in `rows`."""
    by_id = {r["model_id"]: r for r in rows if isinstance(r, dict) and isinstance(r.get("model_id"), str)}
    bad: dict = {}

    def stranded(mid, seen=()):
        if mid not in bad:
            pid = by_id[mid].get("parent_id")
            bad[mid] = pid is not None and isinstance(pid, str) and mid not in seen and (
                pid not in by_id or stranded(pid, seen + (mid,)))
        return bad[mid]

    return [m for m in by_id if stranded(m)]


def _check_lora(spec: dict, where) -> dict:
    """The manifest's `lora` entry, checked: exactly "up" and "down", each a key pattern with one "{}"."""
    if set(spec) != {"up", "down"} or not all(isinstance(v, str) and v.count("{}") == 1 for v in spec.values()):
        raise ZooError(f"{where}: a LoRA layout is {{'up': pattern, 'down': pattern}}, each pattern a tensor name "
                       f"with one '{{}}' for the module (e.g. {LORA_LAYOUT}); got {spec}")
    if spec["up"] == spec["down"]:
        raise ZooError(f"{where}: the LoRA layout's up and down patterns are the same ({spec['up']!r})")
    return {"up": spec["up"], "down": spec["down"]}


def _pattern_regex(pattern: str) -> re.Pattern:
    head, tail = pattern.split("{}")
    return re.compile(re.escape(head) + "(.+)" + re.escape(tail) + "$")


def _check_labels(spec: dict, where) -> dict:
    """The manifest's `labels` entry, checked: a column name, a list of class names, "many" or "one"."""
    names = spec.get("class_names")
    if not isinstance(spec.get("column"), str) or not isinstance(names, list) or not names \
            or not all(isinstance(n, str) for n in names):
        raise ZooError(f"{where}: labels need a `column` (str) and non-empty `class_names` (list of str), got {spec}")
    if len(set(names)) != len(names):
        raise ZooError(f"{where}: class names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    if spec.setdefault("per_model", "many") not in ("many", "one"):
        raise ZooError(f"{where}: labels.per_model is {spec['per_model']!r}; choose 'many' or 'one'")
    spec.setdefault("description", "")
    return spec


def _own_file(path: Path) -> None:
    """A zoo's own file must be a regular file inside its folder: not a directory, not a link out of the zoo."""
    if not path.is_file():
        raise ZooError(f"{path}: not a regular file (a directory or something else stands in its place)")
    if path.is_symlink() and path.resolve().parent != path.parent.resolve():
        raise ZooError(f"{path}: a symlink to {path.resolve()}, outside the zoo; refusing to use it")


def _check_hash(path: Path, expected: str) -> None:
    if not path.exists():
        raise ZooError(f"{path}: model file is missing")
    if not path.is_file():
        raise ZooError(f"{path}: not a regular file (a directory stands in its place)")
    actual = sha256_file(path)
    if actual != expected:
        raise _hash_mismatch(path, expected, actual)


def write_model(zoo_path, model_id: str, tensors: Mapping[str, torch.Tensor], row: Mapping, *,
                folder: str | None = None, file_name: str | None = None,
                metadata: Mapping[str, str] | None = None) -> dict:
    """Write one model file into a zoo folder and return its complete row (with file and sha256).

    The file is models/<model_id>.safetensors, or models/<folder>/<model_id>/<file_name> when `file_name` is
    given (one folder per model, as Hugging Face and Model-J keep a LoRA's pytorch_lora_weights.safetensors;
    `folder`, e.g. the split, is optional). `metadata` adds header keys (e.g. a LoRA's config); the zoo's own
    keys cannot be overwritten. Safe to call from worker processes on other machines (shared file system): it
    only writes the model's own file, atomically; the driver records the returned row in the table.
    """
    if not isinstance(model_id, str) or not _ID.fullmatch(model_id):
        raise ZooError(f"model id {model_id!r} is not a plain file name (letters, digits, '.', '_', '-')")
    row = _jsonable({"model_id": model_id, **dict(row)})
    for c in ("parent_id", "tree_id", "depth", "split"):
        row.setdefault(c, None)
    if file_name is None:
        if folder is not None:
            raise ZooError(f"model {model_id!r}: a folder needs a file_name (models/<folder>/<id>/<file_name>)")
        rel = f"{MODELS_DIR}/{model_id}.safetensors"
    else:
        for part in ([folder] if folder is not None else []) + [file_name]:
            if not isinstance(part, str) or not _ID.fullmatch(part):
                raise ZooError(f"model {model_id!r}: {part!r} is not a plain file or folder name")
        if not file_name.endswith(".safetensors"):
            raise ZooError(f"model {model_id!r}: file_name {file_name!r} must end in .safetensors")
        rel = "/".join([MODELS_DIR] + ([folder] if folder else []) + [model_id, file_name])
    inside(Path(zoo_path), rel, f"model {model_id!r}", under=MODELS_DIR)
    meta = {"format": "pt", ZOO_TAG: f"{FORMAT_NAME}/{FORMAT_VERSION}", "model_id": model_id,
            "parent_id": str(row.get("parent_id")), "row": json.dumps(row)}
    clash = sorted(set(metadata or {}) & set(meta) - {"format"})
    if clash:
        raise ZooError(f"model {model_id!r}: metadata key(s) {clash} would overwrite the zoo's own header keys")
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    sha = write_safetensors(Path(zoo_path) / rel, tensors, meta)
    return {**row, "file": rel, "sha256": sha}
