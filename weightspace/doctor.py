"""weightspace doctor — check that this machine can run the notebooks, and say what to fix.

Useful first on a new laptop or under WSL: it tries each import that has bitten people (a torchvision
built for another torch breaks timm, diffusers, transformers and peft), the device, and the Jupyter kernel.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys


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
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().find_kernel_specs()
        yield "jupyter kernel python3", specs.get("python3", "missing"), "python3" in specs, \
            "pip install ipykernel in this environment"
    except Exception as e:  # noqa: BLE001
        yield "jupyter kernel python3", "unknown", False, str(e)[:120]


def main(argv=None) -> int:
    from weightspace.__main__ import prog

    argparse.ArgumentParser(prog=prog("doctor"), description=__doc__.split("\n")[0].split(" — ")[1],
                            epilog="exit codes: 0 all good, 1 a check failed (marked BAD), 2 usage"
                            ).parse_args(argv)
    ok = True
    for name, value, good, hint in checks():
        ok &= bool(good)
        print(f"{'ok ' if good else 'BAD'}  {name:24s} {value}" + ("" if good else f"   -> {hint}"))
    print("all good: try `make tiny` or open notebooks/00_quickstart.ipynb" if ok else "fix the lines marked BAD")
    return 0 if ok else 1
