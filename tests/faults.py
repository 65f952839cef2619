"""Fault injection for zoo builds, shared by tests/test_faults.py (and runnable as a child process).

Every write of the zoo format goes through `format._atomic_write_bytes` (model files, assets, the layer cache,
the table, the manifest): it opens a temporary file, writes it, and renames it over the target. The harness
wraps `open` and `os.replace` as the format module sees them, so each such write passes three write points:

  open     just before the temporary file is created (nothing of this write is on disk)
  write    half of the bytes are in the temporary file (a torn write)
  replace  the temporary file is whole, just before `os.replace` puts it in place

At point number `at` (0-based, counted over the whole run) the harness raises `InjectedFault` (in-process) or
sends SIGKILL to its own process. The library's own code runs unchanged: only the two calls are wrapped.

    python tests/faults.py ZOO_DIR AT PARAMS_JSON     # build with SIGKILL at write point AT
"""
from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

POINTS = ("open", "write", "replace")


class InjectedFault(Exception):
    """Raised by the harness at the chosen write point."""


@dataclass
class Points:
    """The write points passed so far: (kind, file name) in order."""

    at: int | None = None
    action: str = "raise"
    seen: list = field(default_factory=list)

    def hit(self, kind: str, target) -> None:
        self.seen.append((kind, Path(str(target)).name))
        if self.at is not None and len(self.seen) - 1 == self.at:
            if self.action == "kill":
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(f"write point {self.at}: {kind} of {target}")


class _TornFile:
    """A binary file whose first write stops half-way at the `write` point, then finishes."""

    def __init__(self, f, points: Points, target):
        self._f, self._points, self._target, self._first = f, points, target, True

    def write(self, data):
        if self._first:
            self._first = False
            half = len(data) // 2
            self._f.write(data[:half])
            self._f.flush()
            self._points.hit("write", self._target)
            return half + self._f.write(data[half:])
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._f, name)


class _OsProxy:
    """`os` as the format module sees it, with `replace` passing the `replace` point first."""

    def __init__(self, points: Points):
        self._points = points

    def replace(self, src, dst, *args, **kwargs):
        self._points.hit("replace", dst)
        return os.replace(src, dst, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(os, name)


@contextlib.contextmanager
def write_points(at: int | None = None, action: str = "raise"):
    """Count (and at point `at`, fail) the writes of weightspace.zoo.format; yields the Points record."""
    from weightspace.zoo import format as fmt

    points = Points(at, action)

    def hooked_open(file, mode="r", *args, **kwargs):
        if "w" in mode and "b" in mode:
            points.hit("open", file)
            return _TornFile(builtins.open(file, mode, *args, **kwargs), points, file)
        return builtins.open(file, mode, *args, **kwargs)

    fmt.open = hooked_open          # shadows the builtin for the format module only
    real_os, fmt.os = fmt.os, _OsProxy(points)
    try:
        yield points
    finally:
        del fmt.open
        fmt.os = real_os


@contextlib.contextmanager
def model_writes():
    """Record the model ids that jobs write (i.e. trained and stored) while the block runs."""
    from weightspace.zoo import jobs

    written: list[str] = []
    real = jobs.write_model

    def counting(zoo_path, model_id, tensors, row, **file_options):
        written.append(model_id)
        return real(zoo_path, model_id, tensors, row, **file_options)

    jobs.write_model = counting
    try:
        yield written
    finally:
        jobs.write_model = real


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(root) -> dict[str, str]:
    """{relative path: sha256 (or "<dir>" / "<link>")} of everything under a zoo folder."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<link>" if p.is_symlink() else "<dir>" if p.is_dir() else sha256(p)
    return out


def build(path, params: dict):
    from weightspace.zoo.model_trees import build_model_trees

    return build_model_trees(path, executor="inline", progress=False, **params)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    zoo_dir, at, params = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    with write_points(at, action="kill"):
        build(zoo_dir, params)
    sys.exit(3)          # the kill point was never reached
