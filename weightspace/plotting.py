"""One figure style for every notebook, deterministic saving, and the results files.

Figures are named `figures/<paper>_<id>_<slug>.png`; PNGs carry no timestamp or version metadata so
re-running a notebook with the same numbers does not churn the committed files.

A results dict may carry `"paper"` (the paper the notebook reproduces, "" for none) and `"claims"`, a list
of the paper's statements checked against this run's numbers:

    dict(claim="...", paper="what the paper states", lhs="a/b/0", op=">=", rhs=0.5, tol=0.0, how="...")

`lhs` and `rhs` are numbers or "/"-separated key paths into the same results ("/" because layer names
contain dots; list indices are integers). `save_results` stores each claim resolved,
`{"claim", "paper", "how", "ours": {"lhs", "lhs_key", "op", "rhs", "rhs_key", "tol"}, "holds"}`, with
`holds` computed, never typed; `check_claims` recomputes every verdict from the file's numbers.
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


OPS = {">=": lambda a, b, tol: a >= b - tol, ">": lambda a, b, tol: a > b - tol,
       "<=": lambda a, b, tol: a <= b + tol, "<": lambda a, b, tol: a < b + tol}
_CLAIM_FIELDS = {"claim", "paper", "lhs", "op", "rhs", "how"}


class ClaimError(ValueError):
    """A claim that cannot be resolved, or whose stored verdict disagrees with its numbers."""


def lookup(results: Mapping, key: str):
    """The value at a "/"-separated key path ("table/3/mean": list items by integer index)."""
    node = results
    for i, part in enumerate(key.split("/")):
        where = "/".join(key.split("/")[:i]) or "the results"
        if isinstance(node, Mapping):
            if part not in node:
                raise KeyError(f"no key {part!r} in {where} (has {sorted(map(str, node))[:12]})")
            node = node[part]
        elif isinstance(node, (list, tuple)):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise KeyError(f"{part!r} is not an index of {where} (a list of {len(node)})") from None
        else:
            raise KeyError(f"{where} is a {type(node).__name__}, not a dict or list, so has no {part!r}")
    return node


def _side(results: Mapping, value, name: str, claim: str):
    key = value if isinstance(value, str) else None
    if key is not None:
        try:
            value = lookup(results, key)
        except KeyError as e:
            raise ClaimError(f"claim {claim!r}: {name} key {key!r}: {e.args[0]}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        what = f"key {key!r}" if key is not None else "value"
        shown = "None (NaN is stored as None)" if value is None else repr(value)
        raise ClaimError(f"claim {claim!r}: {name} {what} is {shown}, not a finite number")
    return float(value), key


def _spec(c: Mapping) -> dict:
    """The claim as written by a notebook; an already resolved record is turned back into one."""
    if "ours" in c:
        o = c["ours"]
        return dict(claim=c.get("claim"), paper=c.get("paper"), how=c.get("how"), op=o.get("op"),
                    tol=o.get("tol", 0.0), lhs=o["lhs"] if o.get("lhs_key") is None else o["lhs_key"],
                    rhs=o["rhs"] if o.get("rhs_key") is None else o["rhs_key"])
    return dict(c)


def resolve_claim(results: Mapping, c: Mapping) -> dict:
    """One claim resolved against `results`: its numbers looked up and its verdict computed."""
    if not isinstance(c, Mapping):
        raise ClaimError(f"a claim must be a dict, got {type(c).__name__}: {c!r}")
    c = _spec(c)
    name = c.get("claim") or "<unnamed>"
    missing = _CLAIM_FIELDS - set(c)
    unknown = set(c) - _CLAIM_FIELDS - {"tol"}
    if missing or unknown:
        raise ClaimError(f"claim {name!r}: missing fields {sorted(missing)}, "
                         f"unknown fields {sorted(unknown)}")
    for field in ("claim", "paper", "how"):
        if not isinstance(c[field], str):
            raise ClaimError(f"claim {name!r}: {field!r} must be text, got {c[field]!r}")
    if c["op"] not in OPS:
        raise ClaimError(f"claim {name!r}: unknown op {c['op']!r} (one of {list(OPS)})")
    tol = c.get("tol", 0.0)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ClaimError(f"claim {name!r}: tol must be a finite number >= 0, got {tol!r}")
    lhs, lhs_key = _side(results, c["lhs"], "lhs", name)
    rhs, rhs_key = _side(results, c["rhs"], "rhs", name)
    return {"claim": c["claim"], "paper": c["paper"], "how": c["how"],
            "ours": {"lhs": lhs, "lhs_key": lhs_key, "op": c["op"], "rhs": rhs, "rhs_key": rhs_key,
                     "tol": float(tol)},
            "holds": bool(OPS[c["op"]](lhs, rhs, float(tol)))}


def resolve_claims(results: Mapping) -> dict:
    """`results` (cleaned as save_results writes it) with every claim resolved."""
    out = _clean(results)
    if "claims" in out:
        if not isinstance(out["claims"], list):
            raise ClaimError("results['claims'] must be a list of claims, "
                             f"got {type(out['claims']).__name__}")
        out["claims"] = [resolve_claim(out, c) for c in out["claims"]]
    return out


def check_claims(results: Mapping) -> list[dict]:
    """Recompute every stored claim from the numbers in the same results; raise naming the claim whose
    stored numbers or verdict disagree. Returns the recomputed records."""
    checked = []
    for c in results.get("claims", []):
        if not isinstance(c, Mapping) or "ours" not in c or "holds" not in c:
            raise ClaimError(f"stored claim {c!r} is not resolved (no 'ours' / 'holds'): "
                             "save it with save_results")
        fresh = resolve_claim(results, c)
        stored = c["ours"]
        for side in ("lhs", "rhs"):
            same = isinstance(stored.get(side), (int, float)) and math.isclose(
                stored[side], fresh["ours"][side], rel_tol=1e-9, abs_tol=1e-12)
            if not same:
                raise ClaimError(f"claim {c['claim']!r}: stored {side} {stored[side]!r} but "
                                 f"{fresh['ours'][side + '_key']!r} is {fresh['ours'][side]!r}")
        if c["holds"] is not fresh["holds"]:
            o = fresh["ours"]
            raise ClaimError(f"claim {c['claim']!r}: stored holds={c['holds']!r}, but {o['lhs']} {o['op']} "
                             f"{o['rhs']} (tol {o['tol']}) is {fresh['holds']}")
        checked.append(fresh)
    return checked


def claims_table(results: Mapping | str | Path):
    """The resolved claims of a results dict or file as a DataFrame: claim, paper, ours, holds, how."""
    import pandas as pd

    if not isinstance(results, Mapping):
        results = json.loads(Path(results).read_text())
    rows = [dict(claim=r["claim"], paper=r["paper"], ours=format_ours(r["ours"]), holds=r["holds"],
                 how=r["how"])
            for r in resolve_claims(results).get("claims", [])]
    return pd.DataFrame(rows, columns=["claim", "paper", "ours", "holds", "how"])


def format_ours(o: Mapping) -> str:
    """"lhs_key 0.812 > rhs_key 0.55 (tol 0.01)": the two numbers compared and where they come from."""
    side = lambda v, k: f"{k} {v:.4g}" if k else f"{v:.4g}"
    tol = f" (tol {o['tol']:.4g})" if o.get("tol") else ""
    return f"{side(o['lhs'], o.get('lhs_key'))} {o['op']} {side(o['rhs'], o.get('rhs_key'))}{tol}"


def save_results(results_dir: str | Path, notebook: str, results: Mapping) -> Path:
    """Write headline numbers to <results_dir>/<notebook>.json (keys sorted, 6 significant digits), with
    every claim resolved against the numbers written (a bad claim raises before anything is written), and
    the environment that made them (`runtime.environment`: package versions, device, git commit)."""
    from weightspace.runtime import environment

    data = resolve_claims({**results, "environment": results.get("environment") or environment()})
    path = Path(results_dir) / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
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
