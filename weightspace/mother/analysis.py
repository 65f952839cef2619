"""The paper's analyses on a collection with known ground truth (notebooks 04 and 05).

    edge_hops            number of tree edges between two models (Property 1: distance tracks it)
    falls_fraction       on how many true edges the direction score drops from parent to child
    falls_by             the same, per group of edges (LoRA rank, tree, depth)
    falls_by_matrices    the same, per choice of direction matrices (NaN: matrices fine-tuning never changes)
    choose_direction     the matrices with the most falling edges (to pick on one forest, score on another)
    tree_inputs          per true tree: names, D and kurtosis (recovery without clustering)
    method_accuracies    MoTHer and the baselines on those trees (lambda = 0 over several tie-breaks)
    clustering_curve     Ward clustering accuracy on random subsets of the models
    plot_lambda_sweep    accuracy / roots found / placement against lambda, every line visible
    draw_tree            truth vs recovered, wrong edges marked
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import networkx as nx
import numpy as np

from weightspace import plotting

from .recover import (clustering_accuracy, direction_scores, distance_matrix, edge_accuracy, kurtosis_only,
                      mst_from_top, solve, ward_clusters)


def edge_hops(parents: Mapping[str, str | None], names: Sequence[str]) -> np.ndarray:
    """[N, N] number of edges between two models in the true forest (-1: different trees)."""
    G = nx.Graph()
    G.add_nodes_from(names)
    G.add_edges_from((p, c) for c, p in parents.items() if p is not None and c in G and p in G)
    hops = dict(nx.all_pairs_shortest_path_length(G))
    return np.array([[hops[a].get(b, -1) for b in names] for a in names])


def falls_fraction(k: Mapping[str, float], parents: Mapping[str, str | None]) -> float:
    """Fraction of the true edges parent -> child with kurt(child) < kurt(parent)."""
    edges = [(p, c) for c, p in parents.items() if p is not None]
    return float(np.mean([k[c] < k[p] for p, c in edges]))


def falls_by(k: Mapping[str, float], parents: Mapping[str, str | None], group: Mapping[str, object]
             ) -> dict[object, tuple[float, int]]:
    """{group value: (fraction of true edges whose child's kurtosis is below its parent's, edges)}, edges
    grouped by a property of the child (its LoRA rank, its tree ...)."""
    out: dict[object, list[bool]] = {}
    for c, p in parents.items():
        if p is not None:
            out.setdefault(group[c], []).append(k[c] < k[p])
    return {g: (float(np.mean(v)), len(v)) for g, v in sorted(out.items())}


# the choices of direction matrices compared in notebook 04, the paper's first (a tie keeps the paper's)
DIRECTION_GROUPS = {"attention output (FT paper)": "timm-vit:output", "value (LoRA paper)": "timm-vit:value",
                    "all attention (q, k, v, o)": "timm-vit:attention", "MLP": "timm-vit:mlp"}


def falls_by_matrices(models: Mapping[str, Mapping], parents: Mapping[str, str | None],
                      groups: Mapping[str, object], distance: str) -> dict[str, float]:
    """{group: fraction of true edges where the group's summed kurtosis falls parent -> child}; NaN for a
    group whose kurtosis is the parent's on every edge (matrices the fine-tuning never changes, e.g. the MLP
    under LoRA), which carries no direction at all (paper, Sec. 4.2: Property 2)."""
    names = list(models)
    edges = [(p, c) for c, p in parents.items() if p is not None]
    out = {}
    for name, spec in groups.items():
        k = dict(zip(names, map(float, direction_scores(models, spec, distance))))
        unchanged = all(np.isclose(k[c], k[p], rtol=1e-6, atol=1e-9) for p, c in edges)
        out[name] = float("nan") if unchanged else falls_fraction(k, parents)
    return out


def choose_direction(falls: Mapping[str, float]) -> str:
    """The group with the highest fraction of falling edges (NaN skipped); a tie goes to the first listed."""
    valid = {g: f for g, f in falls.items() if f == f}
    if not valid:
        raise ValueError(f"no group of matrices changes along any edge: {dict(falls)}")
    best = max(valid.values())
    return next(g for g, f in valid.items() if f == best)


def tree_inputs(models: Mapping[str, Mapping], tree_of: Mapping[str, int], *, layers, distance: str,
                direction_layers, device=None) -> list[dict]:
    """Per true tree: {"tree", "names", "D", "k"} — MoTHer's inputs when the trees are known."""
    out = []
    for t in sorted(set(tree_of.values())):
        names = [n for n in models if tree_of[n] == t]
        sub = {n: models[n] for n in names}
        out.append(dict(tree=t, names=names, D=distance_matrix(sub, layers, distance, device=device),
                        k=direction_scores(sub, direction_layers, distance)))
    return out


def method_accuracies(trees: Sequence[dict], parents: Mapping[str, str | None], lam: float = 0.3,
                      stage: str = "finetune", tie_seeds: int = 10) -> dict[str, dict]:
    """Directed-edge accuracy per tree of MoTHer and the baselines, the accuracy ignoring direction
    ("placed"), the fraction of trees whose root is found and of trees recovered perfectly ("perfect", the
    paper's measure). lambda = 0 breaks ties by the node order, so
    it is averaged over `tie_seeds` random orders."""
    truth = {(p, c) for c, p in parents.items() if p is not None}
    methods = {
        f"MoTHer (lambda={lam:g})": lambda t, s: solve(t["D"], t["k"], t["names"], lam, stage, seed=s),
        "lambda = 0 (distance only)": lambda t, s: solve(t["D"], t["k"], t["names"], 0.0, stage, seed=s),
        "MST from highest kurtosis": lambda t, s: mst_from_top(t["D"], t["k"], t["names"], stage),
        "kurtosis only": lambda t, s: kurtosis_only(t["k"], t["names"], stage),
    }
    out = {}
    for name, fn in methods.items():
        seeds = range(tie_seeds) if name.startswith("lambda = 0") else [0]
        acc, placed, root = [], [], []
        for t in trees:
            tt = {e for e in truth if e[1] in t["names"]}
            true_root = [n for n in t["names"] if parents[n] is None or parents[n] not in t["names"]]
            a, u, r = [], [], []
            for s in seeds:
                edges = fn(t, s)
                a.append(edge_accuracy(edges, tt))
                u.append(len({frozenset(e) for e in edges} & {frozenset(e) for e in tt}) / len(tt))
                children = {c for _, c in edges}
                r.append(float([n for n in t["names"] if n not in children] == true_root))
            acc.append(float(np.mean(a)))
            placed.append(float(np.mean(u)))
            root.append(float(np.mean(r)))
        out[name] = {"per_tree": acc, "mean": float(np.mean(acc)), "placed": float(np.mean(placed)),
                     "root_found": float(np.mean(root)), "perfect": float(np.mean([a == 1.0 for a in acc]))}
    return out


def lambda_sweep(trees: Sequence[dict], parents: Mapping[str, str | None], lams: Sequence[float],
                 stage: str = "finetune", tie_seeds: int = 10) -> dict[str, list[float]]:
    """For each lambda: mean directed-edge accuracy over the trees, the fraction of roots found and the
    fraction of edges placed right ignoring direction ("placed"; lambda = 0 averaged over tie-breaks)."""
    truth = {(p, c) for c, p in parents.items() if p is not None}
    acc, root, placed = [], [], []
    for lam in lams:
        seeds = range(tie_seeds) if lam == 0 else [0]
        a, r, u = [], [], []
        for t in trees:
            true_root = {n for n in t["names"] if parents[n] not in t["names"]}
            tt = {e for e in truth if e[1] in t["names"]}
            for s in seeds:
                edges = solve(t["D"], t["k"], t["names"], lam, stage, seed=s)
                a.append(edge_accuracy(edges, tt))
                r.append(float(set(t["names"]) - {c for _, c in edges} == true_root))
                u.append(len({frozenset(e) for e in edges} & {frozenset(e) for e in tt}) / len(tt))
        acc.append(float(np.mean(a)))
        root.append(float(np.mean(r)))
        placed.append(float(np.mean(u)))
    return {"accuracy": acc, "root_found": root, "placed": placed}


MARKERS, LINESTYLES = "osD^vP*X", ["-", "--", ":", "-."]


def plot_lambda_sweep(axes, sweep: Mapping[str, Mapping[str, Sequence[float]]], lams: Sequence[float],
                      lam: float | None = None, keys=("accuracy", "placed", "root_found")) -> None:
    """One panel per key (accuracy, placement, roots found) against lambda, one line per entry of `sweep`.
    Each line has its own marker and line style and a small horizontal offset, so lines on the same values
    stay visible; each panel's y-range fits its data."""
    n = len(sweep)
    offsets = (np.arange(n) - (n - 1) / 2) * (0.4 / max(n - 1, 1))
    x = np.arange(len(lams), dtype=float)
    colors = plotting.colors(n)
    for ax, key in zip(axes, keys):
        vals = [v for res in sweep.values() for v in res[key]]
        for i, (label, res) in enumerate(sweep.items()):
            ax.plot(x + offsets[i], res[key], marker=MARKERS[i % len(MARKERS)], ms=5, lw=1.3,
                    ls=LINESTYLES[i % len(LINESTYLES)], color=colors[i], label=label, alpha=0.9)
        lo, hi = min(vals), max(vals)
        pad = max(0.02, 0.08 * (hi - lo))
        ax.set_ylim(lo - pad, min(hi, 1.0) + pad)
        ax.set_xticks(x, [f"{v:g}" for v in lams])
        if lam is not None and lam in lams:
            ax.axvline(list(lams).index(lam), color="0.7", ls=":", lw=1)
        ax.set_xlabel("λ")



def clustering_curve(D: np.ndarray, labels: Sequence, fractions: Sequence[float], n_draws: int,
                     n_trees: int, seed: int = 0) -> dict[float, tuple[float, float]]:
    """{fraction: (mean, std)} of Ward clustering accuracy on random subsets of the models (K known)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    out = {}
    for f in fractions:
        n = max(2, int(round(f * len(labels))))
        accs = []
        for _ in range(n_draws):
            idx = np.sort(rng.choice(len(labels), n, replace=False))
            pred = ward_clusters(D[np.ix_(idx, idx)], min(n_trees, n))
            accs.append(clustering_accuracy(pred, labels[idx]))
        out[float(f)] = (float(np.mean(accs)), float(np.std(accs)))
    return out


def _layered_positions(parents: Mapping[str, str | None], names: Sequence[str]
                       ) -> dict[str, tuple[float, float]]:
    """Root on top, each generation a row below, children under their parent (leaves evenly spaced)."""
    kids: dict[str, list[str]] = {n: [] for n in names}
    roots = []
    for n in names:
        p = parents.get(n)
        (kids[p].append(n) if p in kids else roots.append(n))
    pos, x = {}, [0.0]

    def place(n, depth):
        if not kids[n]:
            pos[n] = (x[0], -depth)
            x[0] += 1
        else:
            for c in sorted(kids[n]):
                place(c, depth + 1)
            pos[n] = (float(np.mean([pos[c][0] for c in kids[n]])), -depth)

    for r in sorted(roots):
        place(r, 0)
        x[0] += 0.5
    return pos


def draw_tree(ax, parents: Mapping[str, str | None], pred_edges, names: Sequence[str], title: str = "",
              labels: Mapping[str, str] | None = None) -> int:
    """Draw the true tree's layout with the recovered edges: right ones solid, wrong ones red dashed,
    missed true edges light grey. Returns the number of wrong edges."""
    pos = _layered_positions(parents, names)
    truth = {(p, c) for c, p in parents.items() if p is not None and c in pos and p in pos}
    pred = {(p, c) for p, c in pred_edges if p in pos and c in pos}
    right, wrong = pred & truth, pred - truth
    for (p, c) in sorted(truth - pred):          # sorted: set order varies with the hash seed
        ax.annotate("", xy=pos[c], xytext=pos[p], arrowprops=dict(arrowstyle="-", color="0.85", lw=2))
    for (p, c) in sorted(right):
        ax.annotate("", xy=pos[c], xytext=pos[p],
                    arrowprops=dict(arrowstyle="-|>", color="0.25", lw=1.2, shrinkA=6, shrinkB=6))
    for (p, c) in sorted(wrong):
        ax.annotate("", xy=pos[c], xytext=pos[p],
                    arrowprops=dict(arrowstyle="-|>", color="#d55e00", lw=1.6, ls="--", shrinkA=6, shrinkB=6,
                                    connectionstyle="arc3,rad=0.25"))
    xs, ys = zip(*pos.values())
    ax.scatter(xs, ys, s=60, color="#0072b2", zorder=3)
    leaves = {n for n in pos if not any(parents.get(c) == n for c in pos)}
    for n, (x, y) in pos.items():
        if n in leaves:
            ax.text(x, y - 0.15, (labels or {}).get(n, n), ha="center", va="top", fontsize=6, rotation=90)
        else:
            ax.text(x + 0.25, y + 0.08, (labels or {}).get(n, n), ha="left", va="bottom", fontsize=7,
                    zorder=4, bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=0.6))
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylim(min(ys) - 0.8, 0.4)
    for s in ax.spines.values():
        s.set_visible(False)
    return len(wrong)
