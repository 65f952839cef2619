"""MoTHer, end to end: weights -> Model Graph (who was fine-tuned from whom).

    1. cluster the models into trees      Ward linkage on D, cut at n_trees (given, or counted: models
                                           closer than half the distance of unrelated ones share a tree)
    2. per tree, the distance matrix D     l_FT or l_LoRA (distances.py), diag 0
    3. the direction matrix K              K[p, c] = 1 if kurt(c) > kurt(p)   (stage "finetune":
                                           fine-tuning lowers kurtosis; "pretrain" flips the test)
    4. the merged prior                    M = D + lambda * mean(D) * K,  M[u, u] = inf
    5. minimum spanning arborescence       Chu-Liu/Edmonds on M (networkx); its root has no parent

mean(D) is over all N^2 entries (the zero diagonal included) and makes lambda scale-free; lambda = 0.3
in every experiment of the paper. With lambda = 0 and a symmetric D every root costs the same: the
undirected tree can be right, but which node is the root (and so the direction of the edges on the
path to it) is arbitrary.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import networkx as nx
import numpy as np

from .distances import CHUNK_BYTES, kurtosis_scores, rank_distances, rms_distances, weight_pass
from .layers import MotherError, as_models, check_models, select_layers

STAGES = ("finetune", "pretrain")
DISTANCES = ("ft", "lora")


# ------------------------------------------------------------------------------- the pieces, on arrays

def direction_matrix(k: np.ndarray, stage: str = "finetune") -> np.ndarray:
    """K[p, c] = 1 when the edge p -> c goes against the stage's kurtosis trend, else 0."""
    k = np.asarray(k, dtype=float)
    if stage == "finetune":
        return (k[None, :] > k[:, None]).astype(float)    # child more heavy-tailed than parent
    if stage == "pretrain":
        return (k[None, :] < k[:, None]).astype(float)
    raise MotherError(f"unknown stage {stage!r}; choose one of {STAGES}")


def merged_prior(D: np.ndarray, K: np.ndarray, lam: float = 0.3) -> np.ndarray:
    """M = D + lambda * mean(D) * K, with an infinite diagonal (no self-loops)."""
    M = np.asarray(D, dtype=float) + lam * float(np.mean(D)) * np.asarray(K, dtype=float)
    np.fill_diagonal(M, np.inf)
    return M


def arborescence(M: np.ndarray, names: Sequence[str], seed: int = 0) -> list[tuple[str, str]]:
    """Edges (parent, child) of the minimum spanning arborescence of the complete digraph with costs M.

    Nodes are inserted in a seeded random order: ties (exact at lambda = 0, common with integer rank
    distances) are then broken without regard to how the models happen to be named or listed.
    """
    n = len(names)
    if n == 1:
        return []
    order = np.random.default_rng(seed).permutation(n)
    G = nx.DiGraph()
    G.add_nodes_from(names[i] for i in order)
    G.add_weighted_edges_from((names[p], names[c], float(M[p, c])) for p in order for c in order if p != c)
    T = nx.minimum_spanning_arborescence(G, attr="weight", preserve_attrs=False)
    return sorted(T.edges())


def solve(D: np.ndarray, k: np.ndarray, names: Sequence[str], lam: float = 0.3, stage: str = "finetune",
          seed: int = 0) -> list[tuple[str, str]]:
    """One tree: D and kurtosis -> directed edges (steps 3-5)."""
    return arborescence(merged_prior(D, direction_matrix(k, stage), lam), list(names), seed)


def ward_clusters(D: np.ndarray, n_trees: int) -> np.ndarray:
    """Tree labels 0..T-1: Ward linkage on D, the dendrogram cut into `n_trees` clusters (fcluster
    maxclust), as the paper."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    N = len(D)
    if n_trees < 1 or n_trees > N:
        raise MotherError(f"n_trees={n_trees} must be between 1 and the number of models ({N})")
    if N < 2 or n_trees == 1:
        return np.zeros(N, dtype=int)
    D = np.asarray(D, dtype=float)
    Z = linkage(squareform((D + D.T) / 2, checks=False), method="ward")
    labels = fcluster(Z, n_trees, criterion="maxclust") - 1
    remap = {}   # number clusters by first appearance so labels are stable
    for lab in labels:
        remap.setdefault(lab, len(remap))
    return np.array([remap[lab] for lab in labels])


def relative_distance(D: np.ndarray, distance: str, *, norms: np.ndarray | None = None,
                      full_rank: int | None = None) -> np.ndarray:
    """D relative to what two UNRELATED models would show: ~1 across trees, well below 1 within one.

    ft    l_FT(u, v) / sqrt(n_u^2 + n_v^2), n = mean RMS of a model's matrices: two independently trained
          weight sets are uncorrelated, so their RMS difference is the root of their summed squares.
    lora  l_LoRA(u, v) / full_rank, the summed rank of a difference with nothing in common.
    """
    D = np.asarray(D, dtype=float)
    if distance == "ft":
        n = np.asarray(norms, dtype=float)
        return D / np.sqrt(n[:, None] ** 2 + n[None, :] ** 2)
    return D / float(full_rank)


def count_trees(R: np.ndarray, threshold: float = 0.5) -> int:
    """The number of Model Trees read off the single-linkage dendrogram of a relative distance R: models
    are in one tree when a chain of pairs links them that are each closer than `threshold` (unrelated
    models sit near 1)."""
    from scipy.sparse.csgraph import connected_components

    return int(connected_components(np.asarray(R) < threshold, directed=False)[0])


# ---------------------------------------------------------------------------------- baselines

def mst_from_top(D: np.ndarray, k: np.ndarray, names: Sequence[str], stage: str = "finetune"
                 ) -> list[tuple[str, str]]:
    """Baseline: the undirected minimum spanning tree on D, oriented away from the node of highest
    kurtosis (lowest for stage "pretrain")."""
    G = nx.Graph()
    G.add_nodes_from(names)
    G.add_weighted_edges_from((names[i], names[j], float(D[i, j]))
                              for i in range(len(names)) for j in range(i + 1, len(names)))
    T = nx.minimum_spanning_tree(G)
    root = names[int(np.argmax(k) if stage == "finetune" else np.argmin(k))]
    return sorted(nx.bfs_edges(T, root))


def kurtosis_only(k: np.ndarray, names: Sequence[str], stage: str = "finetune") -> list[tuple[str, str]]:
    """Baseline without distances: each model's parent is the model of next-higher kurtosis (the next
    lower for "pretrain"), i.e. a chain ordered by kurtosis."""
    order = np.argsort(-np.asarray(k) if stage == "finetune" else np.asarray(k), kind="stable")
    return sorted((names[a], names[b]) for a, b in zip(order[:-1], order[1:]))


# ------------------------------------------------------------------------------------------- metrics

def _edges(g) -> set[tuple[str, str]]:
    return set(g.edges()) if hasattr(g, "edges") else {tuple(e) for e in g}


def edge_accuracy(pred, truth) -> float:
    """Fraction of the true directed edges (parent, child) that `pred` has, placement and direction
    both right. Accepts DiGraphs or iterables of edges."""
    t = _edges(truth)
    if not t:
        raise MotherError("the ground truth has no edges")
    return len(_edges(pred) & t) / len(t)


def clustering_accuracy(pred_labels: Sequence, true_labels: Sequence) -> float:
    """Fraction of models in the right tree under the best matching of predicted to true labels
    (the best of all label permutations, found by the Hungarian algorithm)."""
    from scipy.optimize import linear_sum_assignment

    p, inv_p = np.unique(np.asarray(pred_labels), return_inverse=True)
    t, inv_t = np.unique(np.asarray(true_labels), return_inverse=True)
    C = np.zeros((len(p), len(t)))
    np.add.at(C, (inv_p, inv_t), 1)
    r, c = linear_sum_assignment(-C)
    return float(C[r, c].sum() / len(inv_p))


def truth_graph(parents: Mapping[str, str | None]) -> nx.DiGraph:
    """A ground-truth Model Graph from {model: parent or None}."""
    G = nx.DiGraph()
    G.add_nodes_from(parents)
    G.add_edges_from((p, c) for c, p in parents.items() if p is not None)
    return G


# -------------------------------------------------------------------------------------- the public API

def distance_matrix(models, layers, distance: str = "ft", *, device=None, chunk_bytes: int = CHUNK_BYTES,
                    tol: float = 1e-6, stats: dict | None = None) -> np.ndarray:
    """D for a {name: state dict} mapping (layers: a list of Layer, a preset name or a regex).

    `tol`: relative accuracy the float32 l_FT must reach (pairs at risk are recomputed directly)."""
    models = as_models(models)
    if isinstance(layers, str):
        layers = select_layers(next(iter(models.values())), layers, distance, "distance")
    if distance == "ft":
        return rms_distances(models, layers, device=device, chunk_bytes=chunk_bytes, tol=tol, stats=stats)
    if distance == "lora":
        return rank_distances(models, layers, device=device, stats=stats).astype(float)
    raise MotherError(f"unknown distance {distance!r}; choose one of {DISTANCES}")


def direction_scores(models, direction_layers, distance: str = "ft", *, chunk_bytes: int = CHUNK_BYTES
                     ) -> np.ndarray:
    """Summed excess kurtosis of each model's direction layers, [N]."""
    models = as_models(models)
    if isinstance(direction_layers, str):
        direction_layers = select_layers(next(iter(models.values())), direction_layers, distance, "direction")
    return kurtosis_scores(models, direction_layers, chunk_bytes=chunk_bytes)


def recover(models, *, layers, distance: str, direction_layers, lam: float = 0.3, stage: str = "finetune",
            n_trees: int | None = None, device=None, chunk_bytes: int = CHUNK_BYTES, seed: int = 0
            ) -> nx.DiGraph:
    """Recover the Model Graph of `models` from their weights alone.

    models            {name: state dict} (tensors or LazyStateDicts), [(name, state dict), ...], or a Zoo
    layers            matrices for D: a preset ("timm-vit", "hf-vit", "bert", "llama", "sd-unet", optionally
                      ":group") or a regex on the tensor names
    distance          "ft" (mean RMS of differences) or "lora" (sum of ranks of differences)
    direction_layers  matrices whose summed kurtosis orders parent and child (preset or regex)
    lam               weight of the direction prior (0.3 in the paper)
    stage             "finetune" (kurtosis falls parent -> child) or "pretrain" (it rises)
    n_trees           how many Model Trees; None: read off the dendrogram (`count_trees`); 1: no clustering

    Returns a networkx.DiGraph with edges parent -> child (attribute `distance`), node attributes
    `tree` and `kurtosis`, and graph attributes with the per-tree matrices (`trees`: list of
    {"names", "D"}) so other lambdas can be tried without re-reading weights (see `solve`).
    """
    if distance not in DISTANCES:
        raise MotherError(f"unknown distance {distance!r}; choose one of {DISTANCES}")
    if stage not in STAGES:
        raise MotherError(f"unknown stage {stage!r}; choose one of {STAGES}")
    if not (isinstance(lam, (int, float)) and np.isfinite(lam) and lam >= 0):
        raise MotherError(f"lam={lam!r}: the weight of the kurtosis prior must be a finite number >= 0")
    models = as_models(models)
    if len(models) < 2:
        raise MotherError(f"MoTHer needs at least 2 models to relate, got {len(models)}")
    first = next(iter(models.values()))
    d_layers = select_layers(first, layers, distance, "distance")
    k_layers = select_layers(first, direction_layers, distance, "direction")
    check_models(models, list(d_layers) + list(k_layers))
    names = list(models)
    norms = None
    if distance == "ft":
        # one pass over the weights: D exact to float32 for every pair (the pairs of a tight tree refined
        # inside the Gram trick), so each tree's D is a slice of it; the norms and kurtosis from the same reads
        D_all, norms, k = weight_pass(models, d_layers, k_layers, device=device, chunk_bytes=chunk_bytes)
    else:
        k = kurtosis_scores(models, k_layers, chunk_bytes=chunk_bytes)
        D_all = None if n_trees == 1 else distance_matrix(models, d_layers, distance, device=device)

    if n_trees == 1:
        labels = np.zeros(len(names), dtype=int)
    else:
        if n_trees is None:
            R = relative_distance(D_all, distance, full_rank=sum(min(x.shape) for x in d_layers), norms=norms)
            n_trees = count_trees(R)
        labels = ward_clusters(D_all, n_trees)

    G = nx.DiGraph(distance=distance, lam=lam, stage=stage, layers=[x.name for x in d_layers],
                   direction_layers=[x.name for x in k_layers], trees=[])
    for i, n in enumerate(names):
        G.add_node(n, tree=int(labels[i]), kurtosis=float(k[i]))
    for t in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == t)
        sub = [names[i] for i in idx]
        if len(sub) == 1:
            D = np.zeros((1, 1))
        elif D_all is None:
            D = distance_matrix({n: models[n] for n in sub}, d_layers, distance, device=device)
        else:
            D = D_all[np.ix_(idx, idx)]
        G.graph["trees"].append({"names": sub, "D": D})
        for p, c in solve(D, k[idx], sub, lam, stage, seed):
            G.add_edge(p, c, distance=float(D[sub.index(p), sub.index(c)]))
    return G


def roots(g: nx.DiGraph) -> list[str]:
    return sorted(n for n in g.nodes if g.in_degree(n) == 0)


def format_tree(g: nx.DiGraph, wrong: Iterable[tuple[str, str]] = ()) -> str:
    """The graph as indented text, one tree per root; edges in `wrong` are marked with (x)."""
    wrong = set(wrong)
    lines = []

    def walk(n, prefix, last, is_root):
        mark = ""
        if not is_root:
            p = next(iter(g.predecessors(n)))
            mark = "  (x)" if (p, n) in wrong else ""
        lines.append(("" if is_root else prefix + ("└── " if last else "├── ")) + str(n) + mark)
        kids = sorted(g.successors(n))
        for i, c in enumerate(kids):
            walk(c, "" if is_root else prefix + ("    " if last else "│   "), i == len(kids) - 1, False)

    for r in roots(g):
        walk(r, "", True, True)
    return "\n".join(lines)
