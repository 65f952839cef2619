"""The assignments' exercises and their checks, each against this package's implementation (the reference).

A check makes fresh inputs from a seeded numpy Generator, computes the reference's answer in the grader's
process and compares the student's (computed in the sandboxed worker) within the tolerance it states.

    A1_probex_forward   ProbeX (Horwitz et al., CVPR 2025, Sec. 3): X from a stored tensor; the forward pass
                        y = T (Σ_l M_l ReLU(Vᵀ X u_l) + b) + c; its parameter count
    A2_mother_tree      MoTHer (Horwitz et al., ICLR 2025, Sec. 4): excess kurtosis, the direction matrix K,
                        the merged prior M = D + λ·mean(D)·K, the minimum spanning arborescence
    A3_sane_tokenizer   SANE (Schürholt et al., ICML 2024, Sec. 3.1): neuron rows with the bias, chunks of
                        d_t with a mask, positions [n, l, k]
    A4_probex_zeroshot  language-aligned ProbeX (CVPR 2025, Sec. 5): cosine logits between L2-normalised
                        weight and text embeddings, the text projection, top-1 accuracy
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

TORCH = ["numpy", "safetensors.numpy", "torch"]


@dataclass
class Check:
    name: str
    tol: str                                   # the tolerance, stated in the report
    make: Callable                             # rng -> the arguments (a tuple)
    reference: Callable                        # *arguments -> the expected answer
    compare: Callable | None = None            # (got, expected) -> None if right, else what is wrong
    raises: str | None = None                  # the check passes iff the function raises this exception


@dataclass
class Exercise:
    name: str
    points: int
    checks: list[Check]
    func: str = ""                             # the function the student writes (default: the name)

    def __post_init__(self):
        self.func = self.func or self.name


@dataclass
class Assignment:
    name: str
    title: str
    exercises: list[Exercise]
    preload: list[str] = field(default_factory=lambda: list(TORCH))


# ------------------------------------------------------------------------------------------- comparers

def _np(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def close(rtol: float, atol: float) -> Callable:
    def compare(got, want):
        g, w = _np(got), _np(want)
        if g.dtype == object:
            return f"returned a {type(got).__name__}, expected an array of shape {list(w.shape)}"
        if g.shape != w.shape:
            return f"shape {list(g.shape)}, expected {list(w.shape)}"
        g, w = g.astype(np.float64), w.astype(np.float64)
        if np.isnan(g).any() and not np.isnan(w).any():
            return f"{int(np.isnan(g).sum())} NaN value(s)"
        bad = ~np.isclose(g, w, rtol=rtol, atol=atol)
        if bad.any():
            i = tuple(int(a[0]) for a in np.nonzero(bad))
            return (f"{int(bad.sum())} of {bad.size} values off; at index {list(i)}: {g[i]:.6g}, expected "
                    f"{w[i]:.6g}")
        return None
    return compare


EXACT = close(0.0, 0.0)


def each(*comparers) -> Callable:
    """Compare a tuple result element by element."""
    def compare(got, want):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"returned a {type(got).__name__}, expected a tuple of {len(want)}"
        for i, (c, g, w) in enumerate(zip(comparers, got, want)):
            problem = c(g, w)
            if problem:
                return f"element {i}: {problem}"
        return None
    return compare


def number(rtol: float, atol: float) -> Callable:
    def compare(got, want):
        if isinstance(got, bool) or not isinstance(got, (int, float)) and _np(got).shape != ():
            return f"returned a {type(got).__name__}, expected a number"
        g = float(_np(got))
        return None if np.isclose(g, float(want), rtol=rtol, atol=atol) else f"{g:.10g}, expected {float(want):.10g}"
    return compare


def _tensor(rng, *shape):
    import torch

    return torch.from_numpy(rng.standard_normal(shape))


# ------------------------------------------------------------------------------------------ A1: ProbeX

def _probex_reference(X, U, V, M, b, T, c):
    """The package's ProbeX with these parameters, applied to X."""
    import torch

    from weightspace.probex.model import ProbeX

    (d_W, r_U), (d_H, r_V), r_T, d_Y = U.shape, V.shape, M.shape[1], T.shape[0]
    m = ProbeX(d_H, d_W, r_U, r_V, r_T, d_Y).double()
    with torch.no_grad():
        m.probes.weight.copy_(U)
        m.proj.weight.copy_(V.T)
        m.encoders.weight.copy_(M.permute(1, 0, 2).reshape(r_T, r_U * r_V))   # [M_1 … M_{r_U}], probe-major
        m.encoders.bias.copy_(b)
        m.head.weight.copy_(T)
        m.head.bias.copy_(c)
        return m(X)


def _probex_inputs(B, d_H, d_W, r_U, r_V, r_T, d_Y, signs=None):
    def make(rng):
        args = [_tensor(rng, B, d_H, d_W), _tensor(rng, d_W, r_U), _tensor(rng, d_H, r_V), _tensor(rng, r_U, r_T, r_V),
                _tensor(rng, r_T), _tensor(rng, d_Y, r_T), _tensor(rng, d_Y)]
        if signs:                                 # X, U >= 0 and V <= 0: every Vᵀ X u_l <= 0
            args[0], args[1], args[2] = args[0].abs(), args[1].abs(), -args[2].abs()
        return tuple(args)
    return make


def _random_probex(rng):
    d_H, d_W = (int(v) for v in rng.choice(np.arange(2, 20), 2, replace=False))
    r_U, r_V, r_T, d_Y, B = (int(v) for v in rng.integers(1, 8, 5))
    return _probex_inputs(B, d_H, d_W, r_U, r_V, r_T, d_Y)(rng)


def _layer_matrix(w):
    from weightspace.probex.model import layer_matrix

    return layer_matrix(w)


def _probex_params(d_H, d_W, r_U, r_V, r_T, d_Y):
    from weightspace.probex.model import ProbeX, n_params

    return n_params(ProbeX(d_H, d_W, r_U, r_V, r_T, d_Y))


FWD_TOL = "rtol 1e-6, atol 1e-8 (float64)"
A1 = Assignment("A1_probex_forward", "ProbeX: the forward pass from the paper's formula", [
    Exercise("layer_matrix", 2, [
        Check("linear [out, in] is X itself", "exact", lambda r: (_tensor(r, 5, 7),), _layer_matrix, EXACT),
        Check("1x1 conv [6, 4, 1, 1] -> [6, 4]", "exact", lambda r: (_tensor(r, 6, 4, 1, 1),), _layer_matrix, EXACT),
        Check("3x3 conv [5, 3, 3, 3] re-read as [27, 5]", "exact", lambda r: (_tensor(r, 5, 3, 3, 3),),
              _layer_matrix, EXACT),
        Check("patch embedding [8, 1, 2, 2] -> [4, 8]", "exact", lambda r: (_tensor(r, 8, 1, 2, 2),),
              _layer_matrix, EXACT),
        Check("1-D [9] -> [9, 1]", "exact", lambda r: (_tensor(r, 9),), _layer_matrix, EXACT),
        Check("position embedding [1, 5, 3] -> [5, 3]", "exact", lambda r: (_tensor(r, 1, 5, 3),),
              _layer_matrix, EXACT),
        Check("[2, 3, 4] is no matrix: ValueError", "raises ValueError", lambda r: (_tensor(r, 2, 3, 4),),
              lambda w: None, raises="ValueError"),
    ]),
    Exercise("probex_forward", 5, [
        Check("non-square layer 7x5, 3 probes, r_V 4, r_T 6, 2 outputs, batch 4", FWD_TOL,
              _probex_inputs(4, 7, 5, 3, 4, 6, 2), _probex_reference, close(1e-6, 1e-8)),
        Check("square layer 6x6 (a transposed X fits the shapes)", FWD_TOL,
              _probex_inputs(3, 6, 6, 4, 3, 5, 3), _probex_reference, close(1e-6, 1e-8)),
        Check("batch 1, one probe, r_V 1", FWD_TOL, _probex_inputs(1, 4, 9, 1, 1, 3, 2), _probex_reference,
              close(1e-6, 1e-8)),
        Check("random sizes (d_H != d_W)", FWD_TOL, _random_probex, _probex_reference, close(1e-6, 1e-8)),
        Check("every Vᵀ X u_l <= 0: the ReLU leaves y = T b + c", FWD_TOL,
              _probex_inputs(2, 5, 4, 3, 2, 4, 3, signs=True), _probex_reference, close(1e-6, 1e-8)),
    ]),
    Exercise("probex_n_params", 1, [
        Check("a small layer 7x5, r_U 3, r_V 4, r_T 6, d_Y 2", "exact", lambda r: (7, 5, 3, 4, 6, 2),
              _probex_params, number(0, 0)),
        Check("the paper's ViT layer 768x768, ranks 128, 100 classes", "exact",
              lambda r: (768, 768, 128, 128, 128, 100), _probex_params, number(0, 0)),
        Check("random sizes", "exact", lambda r: tuple(int(v) for v in r.integers(1, 300, 6)), _probex_params,
              number(0, 0)),
    ]),
])


# ------------------------------------------------------------------------------------------ A2: MoTHer

def _kurt(W):
    import torch

    from weightspace.stats import excess_kurtosis

    return float(excess_kurtosis(torch.from_numpy(W)))


def _direction(k):
    from weightspace.mother.recover import direction_matrix

    return direction_matrix(k, "finetune")


def _merged(D, K, lam):
    from weightspace.mother.recover import merged_prior

    return merged_prior(D, K, lam)


def _arb(M, names):
    from weightspace.mother.recover import arborescence

    return arborescence(M, names)


def _dist(rng, n):
    P = rng.standard_normal((n, 3))
    D = np.sqrt(((P[:, None] - P[None]) ** 2).sum(-1))
    return D


def _prior_inputs(n, lam):
    def make(rng):
        k = rng.standard_normal(n)
        return _dist(rng, n), (k[None, :] > k[:, None]).astype(float), lam
    return make


def _costs(n):
    def make(rng):
        M = rng.uniform(0.1, 2.0, (n, n))
        np.fill_diagonal(M, np.inf)
        return M, [f"model_{i}" for i in rng.permutation(n)]
    return make


def _tree_costs(rng):
    """The merged prior of a random tree: children drift from their parents and have lower kurtosis."""
    n = 9
    parent = [None] + [int(rng.integers(0, i)) for i in range(1, n)]
    P, k = np.zeros((n, 8)), np.zeros(n)
    for i in range(1, n):
        P[i] = P[parent[i]] + rng.standard_normal(8)
        k[i] = k[parent[i]] - rng.uniform(0.1, 1.0)
    D = np.sqrt(((P[:, None] - P[None]) ** 2).sum(-1))
    M = D + 0.3 * D.mean() * (k[None, :] > k[:, None])
    np.fill_diagonal(M, np.inf)
    return M, [f"m{i}" for i in range(n)]


def _arborescence_compare(got, want, M, names):
    if not isinstance(got, (list, tuple)):
        return f"returned a {type(got).__name__}, expected a list of (parent, child) pairs"
    try:
        edges = [(str(p), str(c)) for p, c in got]
    except (TypeError, ValueError):
        return "expected a list of (parent, child) pairs"
    idx = {n: i for i, n in enumerate(names)}
    if any(p not in idx or c not in idx for p, c in edges):
        return "an edge names a model that is not in `names`"
    if len(edges) != len(names) - 1:
        return f"{len(edges)} edges, an arborescence of {len(names)} nodes has {len(names) - 1}"
    children = [c for _, c in edges]
    if len(set(children)) != len(children):
        return "a node has two parents"
    root = set(names) - set(children)
    seen, frontier = set(root), list(root)
    while frontier:
        u = frontier.pop()
        for p, c in edges:
            if p == u and c not in seen:
                seen.add(c)
                frontier.append(c)
    if len(seen) != len(names):
        return "the edges hold a cycle (not every node is reachable from the root)"
    cost = sum(M[idx[p], idx[c]] for p, c in edges)
    best = sum(M[idx[p], idx[c]] for p, c in want)
    if not np.isclose(cost, best, rtol=1e-9, atol=1e-12):
        return f"total cost {cost:.6g}, the minimum is {best:.6g}"
    return None


def _arb_check(name, make):
    holder = {}

    def make_and_keep(rng):
        args = make(rng)
        holder["args"] = args
        return args

    return Check(name, "a valid arborescence of minimum total cost (rtol 1e-9)", make_and_keep, _arb,
                 lambda got, want: _arborescence_compare(got, want, *holder["args"]))


KTOL = "rtol 1e-8, atol 1e-10"
A2 = Assignment("A2_mother_tree", "MoTHer: kurtosis, the direction matrix and the arborescence", [
    Exercise("excess_kurtosis", 2, [
        Check("Gaussian 30x20", KTOL, lambda r: (r.standard_normal((30, 20)),), _kurt, number(1e-8, 1e-10)),
        Check("heavy-tailed (Student t, 3 dof) 25x40", KTOL, lambda r: (r.standard_t(3, (25, 40)),), _kurt,
              number(1e-8, 1e-10)),
        Check("mean 3, std 0.01 (moments about the mean)", KTOL,
              lambda r: (3 + 0.01 * r.laplace(size=(16, 16)),), _kurt, number(1e-8, 1e-10)),
        Check("one row [1, 50]", KTOL, lambda r: (r.uniform(size=(1, 50)),), _kurt, number(1e-8, 1e-10)),
    ], ),
    Exercise("direction_matrix", 2, [
        Check("6 models", "exact", lambda r: (r.standard_normal(6),), _direction, EXACT),
        Check("ties in kurtosis (no penalty between equals)", "exact",
              lambda r: (r.choice([0.0, 1.5, 3.0], 7),), _direction, EXACT),
        Check("one model", "exact", lambda r: (r.standard_normal(1),), _direction, EXACT),
        Check("3 to 20 models", "exact", lambda r: (r.standard_normal(int(r.integers(3, 21))),), _direction, EXACT),
    ]),
    Exercise("merged_prior", 2, [
        Check("5 models, lambda 0.3", "rtol 1e-12", _prior_inputs(5, 0.3), _merged, close(1e-12, 0)),
        Check("lambda 0: D with an infinite diagonal", "rtol 1e-12", _prior_inputs(4, 0.0), _merged,
              close(1e-12, 0)),
        Check("8 models, lambda 2.5", "rtol 1e-12", _prior_inputs(8, 2.5), _merged, close(1e-12, 0)),
    ]),
    Exercise("arborescence", 3, [
        _arb_check("6 models, random costs", _costs(6)),
        _arb_check("2 models", _costs(2)),
        _arb_check("1 model: no edges", _costs(1)),
        _arb_check("a 9-model tree's merged prior", _tree_costs),
        _arb_check("3 to 12 models, random costs", lambda r: _costs(int(r.integers(3, 13)))(r)),
    ]),
], preload=["numpy", "safetensors.numpy"])


# ------------------------------------------------------------------------------------------- A3: SANE

def _tok(sd, token_size=None):
    from weightspace.sane.tokenize import tokenize

    return tokenize(sd, token_size)


def _rows_ref(weight, bias):
    sd = {"layer.weight": weight} if bias is None else {"layer.weight": weight, "layer.bias": bias}
    return _tok(sd).tokens          # token size = the row length: one token per row, no padding


def _rows_inputs(shape, bias=True):
    def make(rng):
        w = _tensor(rng, *shape).float()
        return w, (_tensor(rng, shape[0]).float() if bias else None)
    return make


def _chunk_ref(rows, token_size):
    t = _tok({"layer.weight": rows}, token_size)
    return t.tokens, t.mask


def _positions_ref(rows, chunks):
    import torch

    sd = {f"l{i}.weight": torch.zeros(r, 2 * c) for i, (r, c) in enumerate(zip(rows, chunks))}
    return _tok(sd, 2).positions


TTOL = "atol 1e-6 (float32 copies)"
A3 = Assignment("A3_sane_tokenizer", "SANE: a checkpoint as a sequence of tokens", [
    Exercise("layer_rows", 2, [
        Check("linear [4, 3] with its bias", TTOL, _rows_inputs((4, 3)), _rows_ref, close(0, 1e-6)),
        Check("conv [5, 2, 3, 3] with its bias", TTOL, _rows_inputs((5, 2, 3, 3)), _rows_ref, close(0, 1e-6)),
        Check("no bias [3, 6]", TTOL, _rows_inputs((3, 6), bias=False), _rows_ref, close(0, 1e-6)),
        Check("one output row [1, 4]", TTOL, _rows_inputs((1, 4)), _rows_ref, close(0, 1e-6)),
    ]),
    Exercise("chunk_rows", 3, [
        Check("rows of 6 in tokens of 3", TTOL, lambda r: (_tensor(r, 4, 6).float(), 3), _chunk_ref,
              each(close(0, 1e-6), EXACT)),
        Check("rows of 7 in tokens of 3 (padded)", TTOL, lambda r: (_tensor(r, 3, 7).float(), 3), _chunk_ref,
              each(close(0, 1e-6), EXACT)),
        Check("token longer than the row", TTOL, lambda r: (_tensor(r, 2, 4).float(), 10), _chunk_ref,
              each(close(0, 1e-6), EXACT)),
        Check("tokens of 1", TTOL, lambda r: (_tensor(r, 2, 5).float(), 1), _chunk_ref,
              each(close(0, 1e-6), EXACT)),
        Check("random rows and token size", TTOL,
              lambda r: (_tensor(r, *(int(v) for v in r.integers(1, 12, 2))).float(), int(r.integers(1, 9))),
              _chunk_ref, each(close(0, 1e-6), EXACT)),
    ]),
    Exercise("token_positions", 2, [
        Check("two layers: 3 rows of 2 chunks, 2 rows of 1", "exact", lambda r: ([3, 2], [2, 1]), _positions_ref,
              EXACT),
        Check("one row, one chunk", "exact", lambda r: ([1], [1]), _positions_ref, EXACT),
        Check("4 random layers", "exact",
              lambda r: ([int(v) for v in r.integers(1, 6, 4)], [int(v) for v in r.integers(1, 4, 4)]),
              _positions_ref, EXACT),
    ]),
])


# ------------------------------------------------------------------------------------ A4: zero-shot ProbeX

def _cos_ref(e, t):
    import torch

    from weightspace.probex.zeroshot import Aligned

    m = Aligned(torch.nn.Identity(), t.shape[1], t.shape[1]).double()
    with torch.no_grad():
        m.text_proj.weight.copy_(torch.eye(t.shape[1], dtype=t.dtype))
        m.text_proj.bias.zero_()
        return m(e, t)


def _text_ref(text, P_weight, P_bias):
    import torch

    from weightspace.probex.zeroshot import Aligned

    m = Aligned(torch.nn.Identity(), P_weight.shape[1], P_weight.shape[0]).double()
    with torch.no_grad():
        m.text_proj.weight.copy_(P_weight)
        m.text_proj.bias.copy_(P_bias)
        return m.embed_text(text)


def _top1_ref(scores, y):
    from weightspace.probex.zeroshot import top1

    return top1(scores, y)


def _random_cos(rng):
    B, C, r = (int(v) for v in rng.integers(1, 16, 3))
    return _tensor(rng, B, r), _tensor(rng, C, r)


def _zero_row(rng):
    e, t = _tensor(rng, 3, 4), _tensor(rng, 5, 4)
    e[1] = 0
    return e, t


def _ties(rng):
    import torch

    return (torch.from_numpy(rng.integers(0, 2, (12, 4)).astype(float)),
            torch.from_numpy(rng.integers(0, 4, 12)))


COS = "atol 1e-9 (float64)"
A4 = Assignment("A4_probex_zeroshot", "Language-aligned ProbeX: zero-shot scoring", [
    Exercise("cosine_logits", 3, [
        Check("5 weights, 7 prompts, r_T 4", COS, lambda r: (_tensor(r, 5, 4), _tensor(r, 7, 4)), _cos_ref,
              close(0, 1e-9)),
        Check("scale invariance (x1000 and x0.001)", COS, lambda r: (1e3 * _tensor(r, 4, 6), 1e-3 * _tensor(r, 3, 6)),
              _cos_ref, close(0, 1e-9)),
        Check("random sizes", COS, _random_cos, _cos_ref, close(0, 1e-9)),
        Check("one weight, one prompt", COS, lambda r: (_tensor(r, 1, 3), _tensor(r, 1, 3)), _cos_ref,
              close(0, 1e-9)),
        Check("an all-zero weight embedding scores 0, not NaN", COS, _zero_row, _cos_ref, close(0, 1e-9)),
    ]),
    Exercise("text_embeddings", 2, [
        Check("6 prompts, text dim 10, r_T 4", COS,
              lambda r: (_tensor(r, 6, 10), _tensor(r, 4, 10), _tensor(r, 4)), _text_ref, close(0, 1e-9)),
        Check("one prompt", COS, lambda r: (_tensor(r, 1, 5), _tensor(r, 3, 5), _tensor(r, 3)), _text_ref,
              close(0, 1e-9)),
    ]),
    Exercise("top1_accuracy", 2, [
        Check("20 weights, 5 candidates", "atol 1e-12",
              lambda r: (_tensor(r, 20, 5), __import__("torch").from_numpy(r.integers(0, 5, 20))), _top1_ref,
              number(0, 1e-12)),
        Check("ties go to the lower index", "atol 1e-12", _ties, _top1_ref, number(0, 1e-12)),
        Check("one weight", "atol 1e-12", lambda r: (_tensor(r, 1, 3), __import__("torch").tensor([2])), _top1_ref,
              number(0, 1e-12)),
    ]),
])


ASSIGNMENTS = {a.name: a for a in (A1, A2, A3, A4)}


def resolve(name: str) -> Assignment:
    """An assignment by its name, or by a prefix of exactly one name (e.g. "A1")."""
    if name in ASSIGNMENTS:
        return ASSIGNMENTS[name]
    hits = [a for n, a in ASSIGNMENTS.items() if n.lower().startswith(str(name).lower())]
    if len(hits) == 1:
        return hits[0]
    raise KeyError(f"unknown assignment {name!r}; choose one of {sorted(ASSIGNMENTS)}")
