"""What the paper-scale download scripts share: a full safetensors header check, sha256 checks against
published hashes, and a lock file that pins every downloaded file to its source, revision and hash.

The lock lives beside the data, `<root>/weightspace-downloads.lock.json`:

    {"ft/VTHR-FT-ModelTree_0-Depth_0-Node_2Fch5Myt/model.safetensors":
        {"sha256": "...", "size": 343214864, "source": "hf:MoTHer-VTHR/VTHR-...", "revision": "<commit>"}, ...}

A file counts as present only when the lock has it, its size matches and (for safetensors) its header
checks out; `Lock.verify(rel, rehash=True)` also re-hashes it. Nothing here touches the network.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
from pathlib import Path

from weightspace.zoo.format import sha256_file

__all__ = ["LOCK_NAME", "DownloadError", "Lock", "check_safetensors", "expect_hash", "git_blob_sha1",
           "published_hashes", "sha256_file", "verify_root"]

LOCK_NAME = "weightspace-downloads.lock.json"

# bytes per element of every dtype the safetensors format defines
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "U16": 2, "I16": 2,
            "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


class DownloadError(RuntimeError):
    """A downloaded file is not what its source published (wrong hash, broken file)."""


def check_safetensors(path) -> str | None:
    """None when `path` is a whole, well-formed safetensors file, else what is wrong with it.

    Checks the 8-byte header length, that the JSON header is an object, that every tensor's dtype is
    known and its byte size (prod(shape) * itemsize) equals its data_offsets span, that the spans tile
    the data region with no gap or overlap, and that the file is exactly 8 + header + data bytes long.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head8 = f.read(8)
            if len(head8) < 8:
                return f"{path}: {size} bytes, shorter than the 8-byte header length"
            n = struct.unpack("<Q", head8)[0]
            if n > size - 8:
                return f"{path}: header length {n} runs past the end of the file ({size} bytes; truncated?)"
            raw = f.read(n)
    except OSError as e:
        return f"{path}: cannot read ({e})"
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return f"{path}: the header is not valid JSON ({e})"
    if not isinstance(header, dict):
        return f"{path}: the header is a JSON {type(header).__name__}, not an object"
    spans = []
    for name, v in header.items():
        if name == "__metadata__":
            if not isinstance(v, dict):
                return f"{path}: __metadata__ is not an object"
            continue
        if not isinstance(v, dict) or not {"dtype", "shape", "data_offsets"} <= set(v):
            return f"{path}: tensor {name!r} needs dtype, shape and data_offsets, got {v!r:.80}"
        dtype, shape, offs = v["dtype"], v["shape"], v["data_offsets"]
        if dtype not in ITEMSIZE:
            return f"{path}: tensor {name!r} has unknown dtype {dtype!r}"
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            return f"{path}: tensor {name!r} has a bad shape {shape!r}"
        if (not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)
                or not 0 <= offs[0] <= offs[1]):
            return f"{path}: tensor {name!r} has bad data_offsets {offs!r}"
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        if offs[1] - offs[0] != nbytes:
            return (f"{path}: tensor {name!r} is {dtype} {shape} = {nbytes} bytes but its data_offsets "
                    f"{offs} span {offs[1] - offs[0]}")
        spans.append((offs[0], offs[1], name))
    pos, prev = 0, None
    for b, e, name in sorted(spans):
        if b < pos:
            return f"{path}: tensors {prev!r} and {name!r} overlap (bytes {b}..{pos})"
        if b > pos:
            return f"{path}: a gap of {b - pos} bytes before tensor {name!r} (bytes {pos}..{b})"
        pos, prev = e, name
    data = size - 8 - n
    if data != pos:
        return (f"{path}: the file is {size} bytes but 8 + header {n} + tensor data {pos} = {8 + n + pos}"
                + (" (truncated)" if data < pos else " (trailing bytes)"))
    return None


def git_blob_sha1(path) -> str:
    """Git's object id of a file (the Hub's `blob_id` of a file not stored with LFS)."""
    h = hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _field(obj, key):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def published_hashes(info) -> dict[str, tuple[str, str]]:
    """{file: ("sha256", hex) for LFS files, ("git-sha1", hex) otherwise} from a Hub repo info
    fetched with `files_metadata=True`."""
    out = {}
    for s in _field(info, "siblings") or []:
        lfs = _field(s, "lfs")
        if lfs is not None and _field(lfs, "sha256"):
            out[_field(s, "rfilename")] = ("sha256", _field(lfs, "sha256"))
        elif _field(s, "blob_id"):
            out[_field(s, "rfilename")] = ("git-sha1", _field(s, "blob_id"))
    return out


def expect_hash(path, expected: tuple[str, str], what: str) -> str:
    """The file's sha256 once it matches the published hash; on a mismatch delete it and raise."""
    path = Path(path)
    kind, want = expected
    got = sha256_file(path) if kind == "sha256" else git_blob_sha1(path)
    if got != want:
        target = path.resolve()
        path.unlink(missing_ok=True)
        if target != path:
            target.unlink(missing_ok=True)
        raise DownloadError(f"{what}: the downloaded file's {kind} is {got}, but {want} was published; "
                            f"deleted {path}, nothing recorded")
    return got if kind == "sha256" else sha256_file(path)


class Lock:
    """The lock file of one download root: {path relative to the root: {sha256, size, source, revision}}."""

    def __init__(self, root):
        self.root = Path(root).expanduser()
        self.path = self.root / LOCK_NAME
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}
        except ValueError as e:
            raise DownloadError(f"{self.path}: not a JSON lock file ({e}); move it away to start afresh") from e

    def get(self, rel: str) -> dict | None:
        return self.entries.get(rel)

    def find(self, prefix: str) -> dict[str, dict]:
        return {k: v for k, v in self.entries.items() if k.startswith(prefix)}

    def record(self, rel: str, source: str, revision: str | None, sha256: str | None = None) -> dict:
        """Lock one file (written at once, atomically, so an interrupted run keeps what it finished);
        `sha256` is the already-checked digest (measured here when not given)."""
        path = self.root / rel
        entry = {"sha256": sha256 or sha256_file(path), "size": path.stat().st_size, "source": source,
                 "revision": revision}
        if self.entries.get(rel) != entry:
            self.entries[rel] = entry
            self._write()
        return entry

    def forget(self, rel: str) -> None:
        if self.entries.pop(rel, None) is not None:
            self._write()

    def verify(self, rel: str, rehash: bool = False) -> str | None:
        """None when the file is present as locked (size, safetensors header, and with `rehash` its
        sha256), else the problem."""
        entry, path = self.entries.get(rel), self.root / rel
        if entry is None:
            return f"{rel}: not in {self.path.name}"
        if not path.is_file():
            return f"{rel}: missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{rel}: {size} bytes, the lock says {entry['size']}"
        if path.suffix == ".safetensors" and (problem := check_safetensors(path)) is not None:
            return problem
        if rehash and (got := sha256_file(path)) != entry["sha256"]:
            return f"{rel}: sha256 {got}, the lock says {entry['sha256']} (changed on disk)"
        return None

    def present(self, rel: str, rehash: bool = False) -> bool:
        return self.verify(rel, rehash) is None

    def verify_all(self) -> dict[str, str]:
        """{relative path: problem} for every locked file that is not as locked (re-hashes them all)."""
        return {rel: p for rel in sorted(self.entries) if (p := self.verify(rel, rehash=True)) is not None}

    def _write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def verify_root(root) -> int:
    """The scripts' `--verify`: re-hash every locked file under `root`, print the problems; exit code 0/1."""
    lock = Lock(root)
    if not lock.entries:
        print(f"{lock.path}: no lock file or an empty one; nothing to verify", file=sys.stderr)
        return 1
    problems = lock.verify_all()
    for p in problems.values():
        print("  ", p, file=sys.stderr)
    print(f"{len(lock.entries) - len(problems)} of {len(lock.entries)} locked files are as locked")
    return 1 if problems else 0
