"""MoTHer's math against brute force: distances vs a float64 pair loop, kurtosis vs scipy, ranks vs SVD,
the arborescence vs enumerating every tree, and end-to-end recovery of synthetic trees."""
import itertools

import networkx as nx
import numpy as np
import pytest
import scipy.stats
import torch

from weightspace.mother import (Layer, MotherError, arborescence, clustering_accuracy, count_trees, direction_matrix,
                                edge_accuracy, kurtosis_only, kurtosis_scores, merged_prior, mst_from_top,
                                rank_distances, recover, relative_distance, rms_distances, rms_distances_pairloop,
                                select_layers, solve, truth_graph, ward_clusters)
from weightspace.mother.distances import gram_sq_distances, matrix_rank


def _vit_like(g, d=16, depth=2, scale=1.0, heavy=False):
    """A timm-ViT-shaped state dict (fused qkv) with random weights."""
    def rnd(*shape):
        x = torch.randn(*shape, generator=g)
        if heavy:  # student-t-like tails: kurtosis well above 0
            x = x / torch.rand(*shape, generator=g).clamp_min(0.05).sqrt()
        return x * scale
    sd = {}
    for b in range(depth):
        sd[f"blocks.{b}.attn.qkv.weight"] = rnd(3 * d, d)
        sd[f"blocks.{b}.attn.qkv.bias"] = rnd(3 * d)
        sd[f"blocks.{b}.attn.proj.weight"] = rnd(d, d)
        sd[f"blocks.{b}.mlp.fc1.weight"] = rnd(4 * d, d)
        sd[f"blocks.{b}.mlp.fc2.weight"] = rnd(d, 4 * d)
    sd["head.weight"] = rnd(10, d)
    return sd


def _perturb(sd, g, rel):
    return {k: v + rel * v.std() * torch.randn(v.shape, generator=g) for k, v in sd.items()}


def _tree(g, n_children=3, rel=0.01, heavy=True, d=16):
    """root -> children -> grandchildren, each a small dense perturbation of its parent."""
    models = {"r": _vit_like(g, d, heavy=heavy)}
    parents = {"r": None}
    for i in range(n_children):
        models[f"c{i}"] = _perturb(models["r"], g, rel)
        parents[f"c{i}"] = "r"
        for j in range(n_children):
            models[f"c{i}g{j}"] = _perturb(models[f"c{i}"], g, rel)
            parents[f"c{i}g{j}"] = f"c{i}"
    return models, parents


# ------------------------------------------------------------------------------------------ distances

def test_rms_distances_match_float64_pair_loop_with_chunks_and_qkv_split():
    g = torch.Generator().manual_seed(0)
    models = {f"m{i}": _vit_like(g) for i in range(6)}
    layers = select_layers(models["m0"], "timm-vit", "ft")
    assert [x.name for x in layers[:4]] == ["blocks.0.attn.qkv.weight[q]", "blocks.0.attn.qkv.weight[k]",
                                           "blocks.0.attn.qkv.weight[v]", "blocks.0.attn.proj.weight"]
    ref = rms_distances_pairloop(models, layers)
    for chunk_bytes in (1 << 30, 6 * 16 * 4 * 3):   # whole layers, and 3 rows at a time
        D = rms_distances(models, layers, chunk_bytes=chunk_bytes, device="cpu")
        assert np.allclose(D, ref, rtol=1e-6, atol=0)
    # by hand for one pair: mean over the 8 matrices of RMS of the difference
    a, b = models["m1"], models["m4"]
    d = 16
    mats = lambda sd: [sd[f"blocks.{i}.attn.qkv.weight"][r * d:(r + 1) * d] for i in range(2) for r in range(3)] + \
        [sd[f"blocks.{i}.attn.proj.weight"] for i in range(2)]
    by_hand = np.mean([float(((x.double() - y.double()) ** 2).mean().sqrt()) for x, y in zip(mats(a), mats(b))])
    assert D[1, 4] == pytest.approx(by_hand, rel=1e-6)


def test_centring_keeps_float32_exact_on_near_identical_models():
    """Models 1% apart: the plain float32 Gram trick loses ~3 digits; centred it stays within 1e-6."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 256 * 256, generator=g)
    X = base + 0.01 * torch.randn(12, 256 * 256, generator=g)
    exact = torch.cdist(X.double(), X.double()) ** 2
    off = ~torch.eye(12, dtype=torch.bool)

    def rel_err(sq):
        return float(((sq.sqrt() - exact.sqrt()).abs() / exact.sqrt())[off].max())

    plain = rel_err(gram_sq_distances(X, centre=False))
    stats = {}
    centred = rel_err(gram_sq_distances(X, stats=stats))
    assert plain > 1e-5          # measured ~1e-4: fails the bound by far
    assert centred < 1e-6
    assert stats["recomputed_pairs"] == 0   # centring alone suffices in one tree


def test_two_tight_trees_far_apart_are_refined_to_exact():
    """Centring on one reference cannot serve two distant tight clusters; the risky pairs are redone."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(1, 50_000, generator=g), torch.randn(1, 50_000, generator=g)
    X = torch.cat([a + 1e-3 * torch.randn(5, 50_000, generator=g), b + 1e-3 * torch.randn(5, 50_000, generator=g)])
    exact = (torch.cdist(X.double(), X.double()) ** 2)
    off = ~torch.eye(10, dtype=torch.bool)
    stats = {}
    sq = gram_sq_distances(X, stats=stats)
    err = float(((sq.sqrt() - exact.sqrt()).abs() / exact.sqrt())[off].max())
    assert err < 1e-6
    # centred on the first model, its own cluster is exact already; the other cluster's 10 pairs are redone
    assert stats["recomputed_pairs"] == 10
    unrefined = gram_sq_distances(X, tol=0)
    assert float(((unrefined.sqrt() - exact.sqrt()).abs() / exact.sqrt())[off].max()) > 1e-6


# ------------------------------------------------------------------------------------------- kurtosis

def test_kurtosis_scores_match_scipy_summed_over_layers():
    g = torch.Generator().manual_seed(3)
    models = {"a": _vit_like(g, heavy=True), "b": _vit_like(g)}
    layers = select_layers(models["a"], "timm-vit:attention", "ft")
    for chunk_bytes in (1 << 30, 16 * 4 * 5):
        k = kurtosis_scores(models, layers, chunk_bytes=chunk_bytes)
        for i, sd in enumerate(models.values()):
            ref = 0.0
            for lay in layers:
                w = sd[lay.key] if lay.rows is None else sd[lay.key][lay.rows[0]:lay.rows[1]]
                ref += scipy.stats.kurtosis(w.double().flatten().numpy())   # Fisher, bias=True by default
            assert k[i] == pytest.approx(ref, rel=1e-9, abs=1e-9)
    assert k[0] > k[1]


def test_weight_pass_equals_the_separate_passes():
    """One read of the weights gives rms_distances' D (exact pairs of two tight trees far apart included),
    rms_norms' norms and kurtosis_scores' scores (float32 products: within 1e-5), in any row blocks."""
    from weightspace.mother.distances import rms_norms, weight_pass

    g = torch.Generator().manual_seed(5)
    models = {**_tree(g, 2, rel=1e-3)[0], **{f"o{k}": v for k, v in _tree(g, 2, rel=1e-3)[0].items()}}
    layers = select_layers(models["r"], "timm-vit", "ft")
    k_layers = select_layers(models["r"], "timm-vit", "ft", "direction")
    ref = rms_distances_pairloop(models, layers)
    for chunk_bytes in (1 << 30, 16 * 4 * 7 * len(models)):
        D, n, k = weight_pass(models, layers, k_layers, chunk_bytes=chunk_bytes, device="cpu")
        off = ~np.eye(len(models), dtype=bool)
        assert float((np.abs(D - ref)[off] / ref[off]).max()) < 1e-6
        assert np.allclose(n, rms_norms(models, layers), rtol=1e-6, atol=0)
        assert np.abs(k - kurtosis_scores(models, k_layers)).max() < 1e-5
    # a direction layer that is not a distance layer is read for its kurtosis alone
    mlp = select_layers(models["r"], "timm-vit:mlp", "ft")
    _, _, k = weight_pass(models, layers, mlp, device="cpu")
    assert np.abs(k - kurtosis_scores(models, mlp)).max() < 1e-5
    bad = {**models, "nan": {**models["r"], "blocks.0.attn.proj.weight": torch.full((16, 16), float("nan"))}}
    with pytest.raises(MotherError, match="nan"):
        weight_pass(bad, layers, k_layers, device="cpu")


# ----------------------------------------------------------------------------------------- LoRA ranks

def _lora_forest(g, d=24, n_layers=2, ranks=(1, 2, 3, 4)):
    """Two roots; root -> 2 children -> 2 grandchildren, each child = parent + B A (rank r), merged in
    fp32, with cumulative factors stored as lora_factors.<key>.U / .V like zoo.forests."""
    models, parents, rank_of = {}, {}, {}
    it = itertools.cycle(ranks)
    for t in range(2):
        root = {f"blocks.{i}.attn.qkv.weight": torch.randn(3 * d, d, generator=g) for i in range(n_layers)}
        models[f"t{t}"] = root
        parents[f"t{t}"] = None
        frontier = [f"t{t}"]
        for _ in range(2):
            nxt = []
            for p in frontier:
                for c in range(2):
                    r = next(it)
                    name = f"{p}.{c}"
                    sd = {}
                    for i in range(n_layers):
                        key = f"blocks.{i}.attn.qkv"
                        B = torch.zeros(3 * d, r)
                        B[2 * d:] = torch.randn(d, r, generator=g)        # the value block only
                        A = torch.randn(r, d, generator=g)
                        sd[f"{key}.weight"] = models[p][f"{key}.weight"] + B @ A
                        pu = models[p].get(f"lora_factors.{key}.U", torch.zeros(3 * d, 0))
                        pv = models[p].get(f"lora_factors.{key}.V", torch.zeros(0, d))
                        sd[f"lora_factors.{key}.U"], sd[f"lora_factors.{key}.V"] = torch.cat([pu, B], 1), torch.cat([pv, A], 0)
                    models[name], parents[name], rank_of[name] = sd, p, r
                    nxt.append(name)
            frontier = nxt
    return models, parents, rank_of


def test_rank_distance_additivity_and_factors_equal_svd():
    g = torch.Generator().manual_seed(4)
    models, parents, r = _lora_forest(g)
    layers = select_layers(models["t0"], "timm-vit", "lora")
    st_f, st_s = {}, {}
    Df = rank_distances(models, layers, stats=st_f, device="cpu")
    Ds = rank_distances(models, layers, use_factors=False, stats=st_s, device="cpu")
    assert (Df == Ds).all()
    assert st_f["factor_pairs"] > 0 and st_s["factor_pairs"] == 0
    names = list(models)
    ix = {n: i for i, n in enumerate(names)}
    L = len(layers)
    assert Df[ix["t0"], ix["t0.0"]] == L * r["t0.0"]                                  # parent-child: r
    assert Df[ix["t0.0"], ix["t0.1"]] == L * (r["t0.0"] + r["t0.1"])                  # siblings: r1 + r2
    assert Df[ix["t0"], ix["t0.0.1"]] == L * (r["t0.0"] + r["t0.0.1"])                # grandparent: r1 + r2
    assert Df[ix["t0"], ix["t1"]] == L * 24                                           # other tree: full rank
    # and numpy's matrix_rank on the fp32 merged difference agrees, pair by pair
    lay = layers[1]
    for a, b in [("t0", "t0.0.1"), ("t0.0", "t0.1.0"), ("t1.1", "t1.1.0")]:
        diff = (models[a][lay.key] - models[b][lay.key])[lay.rows[0]:lay.rows[1]]
        assert int(matrix_rank(diff)) == np.linalg.matrix_rank(diff.numpy())


def test_factors_from_another_base_are_not_trusted():
    """Factors claiming the same U V over different bases must not give a low rank."""
    g = torch.Generator().manual_seed(5)
    d = 12
    U, V = torch.randn(3 * d, 2, generator=g), torch.randn(2, d, generator=g)
    a = {"blocks.0.attn.qkv.weight": torch.randn(3 * d, d, generator=g) + U @ V,
         "lora_factors.blocks.0.attn.qkv.U": U, "lora_factors.blocks.0.attn.qkv.V": V}
    b = {"blocks.0.attn.qkv.weight": torch.randn(3 * d, d, generator=g) + U @ V,
         "lora_factors.blocks.0.attn.qkv.U": U, "lora_factors.blocks.0.attn.qkv.V": V}
    D = rank_distances({"a": a, "b": b}, select_layers(a, "timm-vit", "lora"))
    assert D[0, 1] == d


# ------------------------------------------------------------------------------ direction and solver

def test_direction_matrix_sign_convention():
    k = np.array([3.0, 1.0, 2.0])    # node 0 most heavy-tailed
    K = direction_matrix(k, "finetune")
    assert K[0, 1] == 0 and K[1, 0] == 1      # 0 -> 1 fine (kurtosis falls); 1 -> 0 penalised
    assert K[2, 0] == 1 and K[0, 2] == 0
    assert (direction_matrix(k, "pretrain") == K.T).all()
    with pytest.raises(MotherError, match="stage"):
        direction_matrix(k, "sideways")


def test_merged_prior_uses_mean_over_all_entries():
    D = np.array([[0, 2, 4], [2, 0, 6], [4, 6, 0.0]])
    K = direction_matrix(np.array([3.0, 1.0, 2.0]))
    M = merged_prior(D, K, lam=0.5)
    assert np.isinf(np.diag(M)).all()
    assert M[1, 0] == pytest.approx(2 + 0.5 * (24 / 9))
    assert M[0, 1] == 2


def _brute_force_min_arborescence(M):
    n = len(M)
    best, best_edges = np.inf, None
    for parent in itertools.product(range(-1, n), repeat=n):
        if sum(p == -1 for p in parent) != 1 or any(p == i for i, p in enumerate(parent)):
            continue
        ok = True
        for i in range(n):   # following parents from any node must reach the root without a cycle
            seen, j = set(), i
            while parent[j] != -1:
                if j in seen:
                    ok = False
                    break
                seen.add(j)
                j = parent[j]
            if not ok:
                break
        if ok:
            cost = sum(M[p, c] for c, p in enumerate(parent) if p != -1)
            if cost < best - 1e-12:
                best, best_edges = cost, {(p, c) for c, p in enumerate(parent) if p != -1}
    return best, best_edges


@pytest.mark.parametrize("seed", range(6))
def test_arborescence_is_the_minimum_over_all_spanning_trees(seed):
    rng = np.random.default_rng(seed)
    n = 5
    M = rng.random((n, n))
    np.fill_diagonal(M, np.inf)
    names = [str(i) for i in range(n)]
    edges = arborescence(M, names, seed=seed)
    cost = sum(M[int(p), int(c)] for p, c in edges)
    best, best_edges = _brute_force_min_arborescence(M)
    assert cost == pytest.approx(best)
    assert {(int(p), int(c)) for p, c in edges} == best_edges    # random costs: the optimum is unique


def test_solve_on_a_hand_made_tree():
    # a chain a - b - c in distance; kurtosis a > b > c: the direction must be a -> b -> c
    D = np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0.0]])
    edges = solve(D, np.array([5.0, 3.0, 1.0]), ["a", "b", "c"])
    assert edges == [("a", "b"), ("b", "c")]
    edges = solve(D, np.array([1.0, 3.0, 5.0]), ["a", "b", "c"])
    assert edges == [("b", "a"), ("c", "b")]
    # lambda = 0 keeps the undirected tree but the root is arbitrary: every root costs the same
    roots = set()
    for seed in range(12):
        e = solve(D, np.array([5.0, 3.0, 1.0]), ["a", "b", "c"], lam=0.0, seed=seed)
        assert {frozenset(x) for x in e} == {frozenset("ab"), frozenset("bc")}
        roots |= {"abc"[i] for i in range(3) if all(c != "abc"[i] for _, c in e)}
    assert len(roots) > 1


def test_metrics_by_hand():
    truth = [("r", "a"), ("r", "b"), ("a", "c")]
    assert edge_accuracy([("r", "a"), ("b", "r"), ("a", "c")], truth) == pytest.approx(2 / 3)
    assert edge_accuracy(nx.DiGraph(truth), truth) == 1.0
    assert clustering_accuracy([1, 1, 0, 0, 2], [0, 0, 1, 1, 1]) == pytest.approx(4 / 5)
    assert clustering_accuracy([5, 5, 7, 7], ["x", "x", "y", "y"]) == 1.0


def test_baselines():
    D = np.array([[0, 1, 2, 2], [1, 0, 1, 3], [2, 1, 0, 3], [2, 3, 3, 0.0]])
    names = ["a", "b", "c", "d"]
    k = np.array([1.0, 5.0, 0.5, 3.0])
    # undirected MST: a-b, b-c, a-d; oriented away from b (highest kurtosis)
    assert set(mst_from_top(D, k, names)) == {("b", "a"), ("b", "c"), ("a", "d")}
    assert set(kurtosis_only(k, names)) == {("b", "d"), ("d", "a"), ("a", "c")}


def test_ward_clusters_and_counting_trees():
    g = np.random.default_rng(0)
    pts = np.concatenate([c + 0.05 * g.standard_normal((7, 3)) for c in np.eye(3) * 10])
    D = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    truth = np.repeat([0, 1, 2], 7)
    assert clustering_accuracy(ward_clusters(D, 3), truth) == 1.0
    with pytest.raises(MotherError, match="n_trees"):
        ward_clusters(D, 50)
    # relative distances: independent weight sets sit at ~1, a tree's fine-tunes well below
    gen = torch.Generator().manual_seed(11)
    roots_ = [torch.randn(2000, generator=gen) for _ in range(3)]
    W = torch.stack([r + 0.2 * torch.randn(2000, generator=gen) for r in roots_ for _ in range(4)])
    Dw = (torch.cdist(W[None], W[None])[0] / 2000 ** 0.5).numpy()
    norms = (W.pow(2).mean(1).sqrt()).numpy()
    R = relative_distance(Dw, "ft", norms=norms)
    assert np.allclose(R[0, 4:], 1.0, atol=0.1) and R[0, 1:4].max() < 0.4
    assert count_trees(R) == 3 and count_trees(R[:4, :4]) == 1
    assert count_trees(relative_distance(np.array([[0, 8], [8, 0.0]]), "lora", full_rank=64)) == 1


# ------------------------------------------------------------------------------------ recover, end to end

def test_recover_dense_trees_with_clustering():
    """Two synthetic 13-node trees: heavy-tailed roots, each child its parent plus dense Gaussian noise
    (which dilutes the tails, so kurtosis falls): recovered exactly, trees found from the dendrogram."""
    g = torch.Generator().manual_seed(6)
    m1, p1 = _tree(g, rel=0.3)
    m2, p2 = _tree(g, rel=0.3)
    models = {**{f"x-{k}": v for k, v in m1.items()}, **{f"y-{k}": v for k, v in m2.items()}}
    parents = {**{f"x-{k}": (f"x-{v}" if v else None) for k, v in p1.items()},
               **{f"y-{k}": (f"y-{v}" if v else None) for k, v in p2.items()}}
    g_pred = recover(models, layers="timm-vit", distance="ft", direction_layers="timm-vit:hidden")
    assert edge_accuracy(g_pred, truth_graph(parents)) == 1.0
    assert len(g_pred.graph["trees"]) == 2
    assert {g_pred.nodes[n]["tree"] for n in models if n.startswith("x")} != \
           {g_pred.nodes[n]["tree"] for n in models if n.startswith("y")}


def test_recover_lora_forest_by_rank():
    g = torch.Generator().manual_seed(7)
    models, parents, _ = _lora_forest(g, d=24)
    truth = truth_graph(parents)
    # lambda = 0: distances alone; rank sums place every edge exactly (the direction is another matter:
    # these Gaussian roots have no heavy tails for kurtosis to dilute)
    pred = recover(models, layers="timm-vit", distance="lora", direction_layers="timm-vit", n_trees=None, lam=0)
    assert {frozenset(e) for e in pred.edges()} == {frozenset(e) for e in truth.edges()}
    assert len(pred.graph["trees"]) == 2


def test_recover_accepts_pairs_and_a_zoo(tmp_path):
    from weightspace.zoo import Zoo

    g = torch.Generator().manual_seed(8)
    models, parents = _tree(g, n_children=2, rel=0.3)
    zoo = Zoo.create(tmp_path / "z", kind="toy", builder="test", params={})
    for n in ["r", "c0", "c1", "c0g0", "c0g1", "c1g0", "c1g1"]:
        zoo.add(n, models[n], parent_id=parents[n], depth=n.count("g") + (n != "r"))
    kw = dict(layers="timm-vit", distance="ft", direction_layers="timm-vit:hidden", n_trees=1)
    a = recover(zoo, **kw)
    b = recover(list(models.items()), **kw)
    assert sorted(a.edges()) == sorted(b.edges())
    assert edge_accuracy(a, truth_graph(parents)) == 1.0


# ---------------------------------------------------------------------------------------- bad input

def test_bad_inputs_have_clear_errors():
    g = torch.Generator().manual_seed(9)
    a, b = _vit_like(g), _vit_like(g)
    kw = dict(layers="timm-vit", distance="ft", direction_layers="timm-vit")
    with pytest.raises(MotherError, match="at least 2 models"):
        recover({"a": a}, **kw)
    with pytest.raises(MotherError, match="duplicate model names \\['a'\\]"):
        recover([("a", a), ("a", b)], **kw)
    missing = {k: v for k, v in b.items() if k != "blocks.1.attn.proj.weight"}
    with pytest.raises(MotherError, match="model 'b' has no layer 'blocks.1.attn.proj.weight'"):
        recover({"a": a, "b": missing}, **kw)
    other = dict(b, **{"blocks.0.attn.proj.weight": torch.zeros(8, 8)})
    with pytest.raises(MotherError, match="shape \\[8, 8\\] in model 'b' but \\[16, 16\\] in model 'a'"):
        recover({"a": a, "b": other}, **kw)
    nan = dict(b)
    nan["blocks.1.attn.proj.weight"] = b["blocks.1.attn.proj.weight"].clone()
    nan["blocks.1.attn.proj.weight"][3, 3] = float("nan")
    with pytest.raises(MotherError, match="NaN or inf weights in model.*'b'"):
        recover({"a": a, "b": nan}, **kw)
    with pytest.raises(MotherError, match="regex 'nothing_here' matches no 2-D weight"):
        recover({"a": a, "b": b}, layers="nothing_here", distance="ft", direction_layers="timm-vit")
    with pytest.raises(MotherError, match="unknown distance"):
        recover({"a": a, "b": b}, layers="timm-vit", distance="l2", direction_layers="timm-vit")
    with pytest.raises(MotherError, match="no layer group 'mlpp'"):
        recover({"a": a, "b": b}, layers="timm-vit:mlpp", distance="ft", direction_layers="timm-vit")


def test_regex_layers_are_used_whole_and_2d_only():
    g = torch.Generator().manual_seed(10)
    sd = _vit_like(g)
    layers = select_layers(sd, r"attn\.qkv")       # matches the weight and the bias; the bias is 1-D
    assert [x.key for x in layers] == ["blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight"]
    assert layers[0].rows is None and layers[0].shape == (48, 16)
    assert isinstance(layers[0], Layer)


# ------------------------------------------------------------------------------------------ analyses

def test_analysis_helpers_by_hand():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from weightspace.mother.analysis import (clustering_curve, draw_tree, edge_hops, falls_fraction,
                                             lambda_sweep, method_accuracies)

    par = {"r": None, "a": "r", "b": "r", "a1": "a", "s": None}
    names = ["r", "a", "b", "a1", "s"]
    H = edge_hops(par, names)
    assert H[0, 3] == 2 and H[2, 3] == 3 and H[1, 2] == 2 and H[0, 4] == -1
    assert falls_fraction({"r": 3, "a": 2, "b": 4, "a1": 1, "s": 0}, par) == pytest.approx(2 / 3)
    # one 4-node tree placed exactly by D, kurtosis falling along every edge
    D = np.array([[0, 1, 1, 2], [1, 0, 2, 1], [1, 2, 0, 3], [2, 1, 3, 0.0]])
    tree = [{"tree": 0, "names": ["r", "a", "b", "a1"], "D": D, "k": np.array([4.0, 3.0, 2.0, 1.0])}]
    acc = method_accuracies(tree, par, tie_seeds=6)
    mother = next(v for k, v in acc.items() if k.startswith("MoTHer"))
    assert mother["mean"] == 1.0 and mother["root_found"] == 1.0 and mother["placed"] == 1.0
    assert acc["lambda = 0 (distance only)"]["placed"] == 1.0
    assert acc["MST from highest kurtosis"]["mean"] == 1.0
    sweep = lambda_sweep(tree, par, [0.0, 0.3], tie_seeds=6)
    assert sweep["accuracy"][1] == 1.0 and sweep["root_found"][1] == 1.0
    pts = np.concatenate([np.zeros((6, 2)), np.full((6, 2), 10.0)]) + np.random.default_rng(0).normal(size=(12, 2)) * 0.1
    Dc = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    curve = clustering_curve(Dc, [0] * 6 + [1] * 6, [1.0, 0.5], n_draws=5, n_trees=2)
    assert curve[1.0] == (1.0, 0.0)
    fig, ax = plt.subplots()
    assert draw_tree(ax, {k: par[k] for k in ["r", "a", "b", "a1"]}, [("r", "a"), ("a", "b"), ("a", "a1")],
                     ["r", "a", "b", "a1"]) == 1
    plt.close(fig)


def test_direction_choice_and_lambda_sweep_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from weightspace.mother.analysis import (choose_direction, falls_by_matrices, lambda_sweep,
                                             plot_lambda_sweep)

    g = torch.Generator().manual_seed(3)
    root = _vit_like(g, heavy=True)
    # child: the value blocks moved toward a Gaussian (kurtosis falls), the output projections made heavier
    # (it rises), the MLP untouched
    child = {k: v.clone() for k, v in root.items()}
    for b in range(2):
        w = child[f"blocks.{b}.attn.qkv.weight"]
        w[32:] = 0.2 * w[32:] + torch.randn(w[32:].shape, generator=g) * w[32:].std()
        o = child[f"blocks.{b}.attn.proj.weight"]
        o *= 1 + 5 * (torch.rand(o.shape, generator=g) > 0.97)
    models, par = {"r": root, "c": child}, {"r": None, "c": "r"}
    groups = {"out": "timm-vit:output", "v": "timm-vit:value", "mlp": "timm-vit:mlp"}
    kurt = lambda n, pick: sum(scipy.stats.kurtosis(pick(models[n], b).numpy().ravel()) for b in range(2))
    val = lambda sd, b: sd[f"blocks.{b}.attn.qkv.weight"][32:]
    out = lambda sd, b: sd[f"blocks.{b}.attn.proj.weight"]
    assert kurt("c", val) < kurt("r", val) and kurt("c", out) > kurt("r", out)   # the construction works
    falls = falls_by_matrices(models, par, groups, "ft")
    assert falls["out"] == 0.0 and falls["v"] == 1.0 and np.isnan(falls["mlp"])
    assert choose_direction(falls) == "v"
    assert choose_direction({"paper": 0.9, "other": 0.9, "none": float("nan")}) == "paper"   # tie: first
    assert choose_direction({"none": float("nan"), "b": 0.5, "c": 0.7}) == "c"
    with pytest.raises(ValueError, match="no group"):
        choose_direction({"mlp": float("nan")})

    # the sweep's placement, on a 4-node tree whose D places every edge
    pnames = {"r": None, "a": "r", "b": "r", "a1": "a"}
    D = np.array([[0, 1, 1, 2], [1, 0, 2, 1], [1, 2, 0, 3], [2, 1, 3, 0.0]])
    tree = [{"tree": 0, "names": ["r", "a", "b", "a1"], "D": D, "k": np.array([4.0, 3.0, 2.0, 1.0])}]
    sweep = lambda_sweep(tree, pnames, [0.0, 0.3, 10.0], tie_seeds=4)
    assert sweep["placed"] == [1.0, 1.0, 1.0] and sweep["accuracy"][1:] == [1.0, 1.0]
    # kurtosis rising along every edge: by hand, mean(D) = 1.25, so a penalised edge costs 1.375 and the
    # cheapest arborescence is a1 -> a -> r -> b (3.375): placed right, only r -> b pointing the right way
    bad = [{**tree[0], "k": np.array([1.0, 2.0, 3.0, 4.0])}]
    s_bad = lambda_sweep(bad, pnames, [0.3], tie_seeds=1)
    assert s_bad == {"accuracy": [pytest.approx(1 / 3)], "root_found": [0.0], "placed": [1.0]}
    fig, axes = plt.subplots(1, 3)
    plot_lambda_sweep(axes, {"one": sweep, "two": sweep}, [0.0, 0.3, 10.0], lam=0.3)
    lines = [ln for ln in axes[0].get_lines() if ln.get_label() in ("one", "two")]
    assert len(lines) == 2 and lines[0].get_marker() != lines[1].get_marker()
    assert lines[0].get_linestyle() != lines[1].get_linestyle()
    assert not np.allclose(lines[0].get_xdata(), lines[1].get_xdata())   # offset: same values stay visible
    lo, hi = axes[1].get_ylim()
    assert lo < 1.0 < hi and hi - lo < 0.2                                 # y-range fitted to the data
    plt.close(fig)
