"""What the paper-scale download scripts share: a full safetensors header check, sha256 checks against
published hashes, and a lock file that pins every downloaded file to its source, revision and hash.

The lock lives beside the data, `<root>/weightspace-downloads.lock.json`:

    {"ft/VTHR-FT-ModelTree_0-Depth_0-Node_2Fch5Myt/model.safetensors":
        {"sha256": "...", "size": 343214864, "source": "hf:MoTHer-VTHR/VTHR-...", "revision": "<commit>"}, ...}

A file counts as present only when the lock has it, its size matches and (for safetensors) its header
checks out; `Lock.verify(rel, rehash=True)` also re-hashes it. Nothing here touches the network.

Readers of downloaded data (Model-J, its SD LoRA folders, VTHR) serve a file only through `Verifier`: the
nearest lock at the reader's folder or above must have it, with its size and header at opening and its
sha256 (re-hashed once per process and file state) before its tensors or metadata are served. Files of
one's own are recorded with `record_folder` (`python -m weightspace lock DIR`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
import warnings
from pathlib import Path

from weightspace.zoo.format import sha256_file

__all__ = ["LOCK_NAME", "VERIFY", "DownloadError", "Lock", "Verifier", "check_safetensors", "expect_hash",
           "find_lock", "git_blob_sha1", "published_hashes", "record_file", "record_folder", "sha256_file", "verify_root"]

LOCK_NAME = "weightspace-downloads.lock.json"
VERIFY = ("lock", "none")

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
        if (problem := _as_locked(path, entry, rel)) is not None:
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


# ------------------------------------------------------------------------------ readers: verified files

# (resolved path, size, mtime_ns, inode) -> sha256 of the files re-hashed by this process
_HASHED: dict[tuple[str, int, int, int], str] = {}


def find_lock(path) -> Lock | None:
    """The lock of the nearest folder at `path` or above that holds a lock file, else None."""
    p = Path(path).expanduser().absolute()
    for d in (p, *p.parents):
        if (d / LOCK_NAME).is_file():
            return Lock(d)
    return None


def _state(path: Path) -> tuple[str, int, int, int]:
    st = os.stat(path)
    return str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino


class Verifier:
    """How a reader gets its files: `check(path)` (cheap, when opening: locked, its size, its safetensors
    header) and `verified(path)` (also its sha256, before any tensor or metadata of it is served), each
    returning the path or raising `DownloadError` naming the file and the problem.

    verify="lock": the lock covering `root` (the nearest lock file at `root` or above) must list every file.
    verify="none": files the user made and trusts are read unchecked, with one warning per reader.
    `reader` names the reader in messages; `download` says how its data is downloaded (with a lock).
    """

    def __init__(self, root, verify: str = "lock", *, reader: str = "reader", download: str = ""):
        if verify not in VERIFY:
            raise ValueError(f"verify={verify!r}: choose 'lock' (files must match the download lock file) or "
                             "'none' (files you made and trust, read unverified)")
        self.root, self.verify, self.lock = Path(root).expanduser(), verify, None
        if verify == "none":
            warnings.warn(f"{reader} {self.root}: verify='none', so its files are read without checking them "
                          f"against a lock file (sizes and sha256 not verified)", stacklevel=3)
            return
        self.lock = find_lock(self.root)
        if self.lock is None:
            how = f"download it with {download}, which writes the lock; or " if download else ""
            raise DownloadError(
                f"{self.root}: no {LOCK_NAME} here or in a folder above, so its files cannot be verified. "
                f"Either {how}record its files (your own, or downloaded by other means) with "
                f"`python -m weightspace lock {self.root}`; "
                f"or pass verify='none' to read them unverified")

    def _entry(self, path: Path) -> dict:
        try:
            rel = path.expanduser().absolute().relative_to(self.lock.root.absolute()).as_posix()
        except ValueError:
            raise DownloadError(f"{path}: outside {self.lock.root}, the folder of its lock file") from None
        entry = self.lock.get(rel)
        if entry is None:
            raise DownloadError(f"{path}: not in the lock file {self.lock.path}; record it with "
                                f"`python -m weightspace lock {self.lock.root}` if you trust it")
        return entry

    def _changed(self, path, got: str, entry: dict) -> DownloadError:
        return DownloadError(f"{path}: sha256 {got}, the lock says {entry['sha256']} ({self.lock.path}; "
                             "changed on disk since it was recorded)")

    def check(self, path) -> Path:
        """`path` once the lock has it, with the locked size and (for safetensors) a whole header."""
        path = Path(path)
        if self.lock is None:
            return path
        if (problem := _as_locked(path, self._entry(path), str(path))) is not None:
            raise DownloadError(f"{problem} (lock file {self.lock.path})")
        return path

    def verified(self, path) -> Path:
        """`path` once its sha256 is the locked one (hashed once per process while the file is unchanged)."""
        path = Path(path)
        if self.lock is None:
            return path
        entry = self._entry(path)
        state = _state(path) if path.is_file() else None
        if state is not None and _HASHED.get(state) == entry["sha256"]:
            return path
        self.check(path)
        state = _state(path)
        got = _HASHED.get(state) or sha256_file(path)
        _HASHED[state] = got
        if got != entry["sha256"]:
            raise self._changed(path, got, entry)
        return path

    def read(self, path) -> tuple[dict, dict[str, str]]:
        """(tensors, metadata) of a whole safetensors file, from one read of its bytes whose sha256 is the
        locked one (so no other version of the file can be served; verify="none": unchecked)."""
        import hashlib

        from weightspace.zoo.format import _parse_bytes, _read_bytes

        path = Path(path)
        if self.lock is not None:
            self.check(path)
            entry = self._entry(path)
        try:
            data, _ = _read_bytes(path)
        except Exception as e:  # ZooError: missing, or a folder in its place
            raise DownloadError(str(e)) from None
        if self.lock is not None and (got := hashlib.sha256(data).hexdigest()) != entry["sha256"]:
            raise self._changed(path, got, entry)
        tensors, _ = _parse_bytes(path, data)
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(bytes(data[8:8 + n])).get("__metadata__") or {}
        return tensors, dict(meta)

    def lazy(self, path):
        """A LazyStateDict of `path` once verified, that refuses to serve a tensor if the file changes after
        (verify="none": a plain one)."""
        from weightspace.zoo.format import LazyStateDict, _file_key

        path = Path(path)
        if self.lock is None:
            return LazyStateDict(path)
        before = _file_key(path)
        self.verified(path)
        if _file_key(path) != before:
            raise DownloadError(f"{path}: changed while it was being verified; open it again")
        return LazyStateDict(path, _verified=before)


def _as_locked(path: Path, entry: dict, name: str) -> str | None:
    """None when `path` has its lock `entry`'s size and (safetensors) a whole header, else the problem,
    named `name`."""
    if not path.is_file():
        return f"{name}: missing"
    size = path.stat().st_size
    if size != entry["size"]:
        return f"{name}: size {size} bytes, the lock says {entry['size']} (changed or truncated since download)"
    if path.suffix == ".safetensors":
        return check_safetensors(path)
    return None


def record_file(path, source: str) -> Lock:
    """Lock one file this code just wrote (e.g. a layer extracted from a download) in the nearest lock at its
    folder or above, else in a new lock in its folder, so that `Verifier` serves it verified later."""
    path = Path(path).expanduser().absolute()
    lock = find_lock(path.parent) or Lock(path.parent)
    lock.record(path.relative_to(lock.root.absolute()).as_posix(), source, None)
    return lock


def record_folder(root) -> dict[str, int]:
    """Lock every `*.safetensors` under `root` into `root`'s lock file (source "local:<relative path>",
    revision None), so the readers serve files of one's own verified: counts of files "new", "updated",
    "unchanged" and "kept" (locked by a download script: its entry stays as downloaded, never re-recorded).

    A file whose header is broken is refused, and so is a downloaded file whose size or header no longer
    matches its lock (download it again rather than record it); nothing is recorded then.
    """
    lock = Lock(root)
    if not lock.root.is_dir():
        raise DownloadError(f"{lock.root}: no such folder")
    files = sorted(p for p in lock.root.rglob("*.safetensors") if p.is_file())
    if not files:
        raise DownloadError(f"{lock.root}: no *.safetensors files under it; nothing to record")
    counts, entries = {"new": 0, "updated": 0, "unchanged": 0, "kept": 0}, {}
    for path in files:
        rel = path.relative_to(lock.root).as_posix()
        old = lock.get(rel)
        if old is not None and not old["source"].startswith("local:"):
            if (problem := lock.verify(rel)) is not None:
                raise DownloadError(f"{problem}: it was downloaded from {old['source']}; download it again "
                                    "(the download scripts resume) rather than record it; nothing recorded")
            counts["kept"] += 1
            continue
        if (problem := check_safetensors(path)) is not None:
            raise DownloadError(f"{problem}; nothing recorded")
        entry = {"sha256": sha256_file(path), "size": path.stat().st_size, "source": f"local:{rel}",
                 "revision": None}
        counts["new" if old is None else "unchanged" if old == entry else "updated"] += 1
        entries[rel] = entry
    lock.entries.update(entries)
    if counts["new"] or counts["updated"]:
        lock._write()
    return counts


def main(argv=None) -> int:
    """weightspace lock DIR [--verify]: record one's own safetensors files in DIR's lock file, or re-hash them."""
    import argparse

    from weightspace.__main__ import prog

    ap = argparse.ArgumentParser(
        prog=prog("lock"),
        description="record every *.safetensors under DIR in DIR/" + LOCK_NAME + " (so the readers of "
                    "downloaded data, Model-J, SD LoRA folders and VTHR, serve them verified), or "
                    "re-hash everything it locks",
        epilog="exit codes: 0 ok, 1 a file has a problem (named on stderr), 2 usage")
    ap.add_argument("path", metavar="DIR", help="the folder of safetensors files (the lock file goes here)")
    ap.add_argument("--verify", action="store_true",
                    help="re-hash every file the lock lists and report the ones that changed (records nothing)")
    args = ap.parse_args(argv)
    if args.verify:
        return verify_root(Path(args.path))
    try:
        c = record_folder(args.path)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{Path(args.path) / LOCK_NAME}: {c['new']} new, {c['updated']} updated, {c['unchanged']} unchanged"
          + (f", {c['kept']} locked by a download kept as they are (re-hash them with --verify)"
             if c["kept"] else ""))
    return 0
