"""Presets: named sets of notebook parameters.

`default` is the notebooks as written — their `parameters` cells ARE the default preset, so the numbers
live in one place. `tiny` shrinks everything so the whole pipeline runs in minutes (what the tests run).
`paper` points the notebooks at the real public zoos and paper-sized settings (needs a GPU and the
downloads of data_scripts/; it cannot run on the project's CPU machines).

Every notebook also receives the runner's common parameters: preset, zoo_root, figures_dir, results_dir.
"""
from __future__ import annotations

COMMON = ("preset", "zoo_root", "figures_dir", "results_dir")

PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {
        "00_quickstart": dict(n_per_tree=8, root_steps=150),
    },
    "default": {},
    "paper": {},
}


def names() -> list[str]:
    return list(PRESETS)


def parameters(preset: str, notebook: str) -> dict:
    """The parameters a preset sets for one notebook (beyond the common ones)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {names()}")
    return dict(PRESETS[preset].get(notebook, {}))
