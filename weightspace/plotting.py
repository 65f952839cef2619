"""One figure style for every notebook, deterministic saving, and the results files.

Figures are named `figures/<paper>_<id>_<slug>.png`; PNGs carry no timestamp or version metadata so
re-running a notebook with the same numbers does not churn the committed files.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt

PALETTE = "colorblind"


def style() -> None:
    """seaborn paper context, colorblind palette, readable sizes."""
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.2)
    mpl.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "axes.titleweight": "bold", "figure.autolayout": False,
                         "svg.hashsalt": "weightspace"})


def colors(n: int) -> list:
    import seaborn as sns

    return sns.color_palette(PALETTE, n)


def savefig(fig, figures_dir: str | Path, name: str) -> Path:
    """Save `fig` as <figures_dir>/<name>.png with fixed metadata; returns the path."""
    path = Path(figures_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    return path


def _clean(value):
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.6g}")  # 6 significant digits: 2e-8 stays
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _clean(value.item())
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    return value


def save_results(results_dir: str | Path, notebook: str, results: Mapping) -> Path:
    """Write headline numbers to <results_dir>/<notebook>.json (keys sorted, 6 significant digits)."""
    path = Path(results_dir) / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(results), indent=2, sort_keys=True) + "\n")
    return path


def annotate_cells(ax, M, fontsize: float = 8, dark_below: float | None = None) -> None:
    """Write each finite value of the matrix M (as drawn by imshow) in its cell, to two decimals; with
    `dark_below`, in white on cells below that value (dark colours) and black elsewhere."""
    import numpy as np

    M = np.asarray(M, dtype=float)
    for (i, j), v in np.ndenumerate(M):
        if np.isfinite(v):
            color = None if dark_below is None else ("w" if v < dark_below else "k")
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color=color, fontsize=fontsize)


def weight_grid(mats, titles=None, cmap="RdBu_r", ncols: int | None = None, size: float = 2.0,
                suptitle: str | None = None):
    """Heat maps of a few weight matrices side by side, each on a symmetric colour scale."""
    import numpy as np

    mats = [np.asarray(m, dtype=float) for m in mats]
    ncols = ncols or len(mats)
    nrows = math.ceil(len(mats) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 1.05), squeeze=False)
    for ax in axes.flat[len(mats):]:
        ax.axis("off")
    for i, (ax, m) in enumerate(zip(axes.flat, mats)):
        lim = float(np.abs(m).max()) or 1.0
        ax.imshow(m, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
        ax.grid(False)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles:
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    return fig
