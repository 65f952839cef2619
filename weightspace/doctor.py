"""weightspace doctor — check that this machine can run the notebooks, and say what to fix.

Useful first on a new laptop or under WSL: it tries each import that has bitten people (a torchvision
built for another torch breaks timm, diffusers, transformers and peft), the device, and the Jupyter kernel.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys
from pathlib import Path


def checks():
    yield "python", platform.python_version(), sys.version_info >= (3, 11), "needs Python >= 3.11 (the tests read TOML with tomllib)"
    for name in ("torch", "torchvision", "timm", "safetensors", "papermill", "networkx", "sklearn",
                 "diffusers", "transformers", "peft"):
        try:
            mod = importlib.import_module(name)
            yield name, getattr(mod, "__version__", "?"), True, ""
        except Exception as e:  # noqa: BLE001 - report whatever import failure there is
            hint = ("torchvision does not match torch: reinstall both together "
                    "(pip install --force-reinstall torch torchvision)") if "nms" in str(e) else str(e)[:120]
            yield name, "import failed", False, hint
    try:
        from weightspace.runtime import device

        yield "device", str(device()), True, ""
    except Exception as e:  # noqa: BLE001
        yield "device", "unknown", False, str(e)[:120]
    yield from machine_checks()
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().find_kernel_specs()
        yield "jupyter kernel python3", specs.get("python3", "missing"), "python3" in specs, \
            "pip install ipykernel in this environment"
    except Exception as e:  # noqa: BLE001
        yield "jupyter kernel python3", "unknown", False, str(e)[:120]


GIB = 2 ** 30
MIN_FREE_DISK_GIB = 5      # the default run's zoos, figures and executed notebooks, with room to spare
MIN_MEMORY_GIB = 4         # the largest default-run stage (notebook 03's 800-model tree) fits in this


def _wsl() -> bool:
    return "microsoft" in platform.release().lower()


def machine_checks(repo: Path | None = None):
    """GPU, free disk, memory and where the repo lives. None as `good` means a note, not a failure."""
    import shutil

    import torch

    if torch.cuda.is_available():
        yield "gpu", torch.cuda.get_device_name(0), True, ""
    else:
        yield "gpu", "none visible to torch (the CPU is used)", None, (
            "under WSL, install the NVIDIA driver on Windows only (never inside WSL) and check `nvidia-smi`"
            if _wsl() else "fine: every notebook runs on the CPU")
    repo = Path(repo or Path(__file__).resolve().parents[1])
    free = shutil.disk_usage(repo).free / GIB
    yield "free disk", f"{free:.1f} GiB at {repo}", free >= MIN_FREE_DISK_GIB, \
        f"the default run needs about {MIN_FREE_DISK_GIB} GiB"
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        avail = int(meminfo["MemAvailable"].split()[0]) * 1024 / GIB
        yield "memory available", f"{avail:.1f} GiB", avail >= MIN_MEMORY_GIB or None, (
            "raise WSL's memory in %UserProfile%\\.wslconfig ([wsl2] memory=8GB), then `wsl --shutdown`"
            if _wsl() else f"below {MIN_MEMORY_GIB} GiB: close other programs or use the tiny preset")
    except (OSError, KeyError, ValueError):
        yield "memory available", "unknown (no /proc/meminfo)", None, "check that you have 4 GiB free"
    on_windows_fs = str(repo).startswith("/mnt/") and _wsl()
    yield "repo location", str(repo), not on_windows_fs, \
        "the repo is on the Windows filesystem, which is very slow from WSL: clone it under ~ instead"


def main(argv=None) -> int:
    from weightspace.__main__ import prog

    argparse.ArgumentParser(prog=prog("doctor"), description=__doc__.split("\n")[0].split(" — ")[1],
                            epilog="exit codes: 0 all good, 1 a check failed (marked BAD), 2 usage"
                            ).parse_args(argv)
    ok = True
    for name, value, good, hint in checks():
        ok &= good is not False
        mark = "ok " if good else ("note" if good is None else "BAD")
        print(f"{mark:4s} {name:24s} {value}" + ("" if good else f"   -> {hint}"))
    print("all good: try `make tiny` or open notebooks/00_quickstart.ipynb" if ok else "fix the lines marked BAD")
    return 0 if ok else 1
