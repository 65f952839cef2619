"""Device choice, seeding and thread control shared by every method.

Code never calls `.cuda()`: it asks `device()` and moves tensors there, so the same notebook runs on
CUDA, Apple MPS or a laptop CPU.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random

import numpy as np
import torch


def device(prefer: str | None = None) -> torch.device:
    """CUDA, then MPS, then CPU; `prefer` or $WEIGHTSPACE_DEVICE overrides ("cpu", "cuda:1", ...)."""
    prefer = prefer or os.environ.get("WEIGHTSPACE_DEVICE")
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(dev: torch.device | str):
    """bf16 autocast on CUDA (where it is fast and safe for these small nets); a no-op elsewhere."""
    dev = torch.device(dev)
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*keys) -> int:
    """A stable 63-bit seed from any printable keys, e.g. derive_seed(base_seed, "tree", 3).

    Unlike hash(), it is the same in every process, so a job gets the same randomness whichever
    executor runs it.
    """
    digest = hashlib.sha256("/".join(map(str, keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*keys) -> torch.Generator:
    """A torch CPU generator seeded with derive_seed(*keys)."""
    return torch.Generator().manual_seed(derive_seed(*keys))


def np_rng(*keys) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*keys))


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with n intra-op threads (restored afterwards).

    Jobs train with one thread each: results are then bit-identical across executors, and two
    one-thread processes beat one two-thread process on these small nets (measured: a vmapped fine-tune
    step of 16 tiny ViTs), and two threads in processes that share the cores were ~20x slower.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


RECORDED_PACKAGES = ("torch", "torchvision", "timm", "diffusers", "transformers", "peft", "safetensors", "numpy",
                     "scipy", "scikit-learn", "networkx", "papermill")


def _git_state(where) -> dict:
    """{commit, dirty} of the git checkout holding `where`, or {} when it is not one (e.g. a wheel install)."""
    import subprocess

    try:
        run = lambda *a: subprocess.run(["git", "-C", str(where), *a], capture_output=True, text=True,
                                        timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return {}
        status = run("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def cpu_model() -> str | None:
    """The processor's name as the OS reports it (Linux: /proc/cpuinfo; elsewhere platform.processor())."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment(dev: torch.device | str | None = None) -> dict:
    """What made a zoo or a results file: package versions, Python, platform, device, threads, the processor
    and the vector instructions torch's CPU kernels use, and the git commit of this checkout — recorded in
    every manifest and results file so a number can be traced back to the code and libraries that produced
    it (`make constraints` pins the same versions). The same versions and seeds give the same numbers bit
    for bit on the same kind of CPU; another instruction set (AVX2 vs AVX-512) rounds differently."""
    import platform
    from importlib import metadata
    from pathlib import Path

    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    from weightspace import __version__

    return {"weightspace": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "packages": versions, "device": str(torch.device(dev) if dev is not None else device()),
            "torch_threads": torch.get_num_threads(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "git": _git_state(Path(__file__).resolve().parent)}
