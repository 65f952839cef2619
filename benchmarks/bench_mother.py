"""MoTHer's fast paths against the straightforward ones, each pair measured in one run on the same input.

    .venv/bin/python benchmarks/bench_mother.py [--zoo zoos/default/mother_forests] [--vitb-models 21]
        [--skip-vitb] [--out results/bench_mother.json]

1. forest   all-pairs l_FT on a 105-model forest: centred Gram trick (weightspace.mother.rms_distances)
            vs the pair-by-pair loop over layers (the official code's way, float32). Ratio, and max error
            against the same loop in float64.
            Also a synthetic forest of 25 trees (525 models), to show how the ratio grows with N.
2. exact    near-identical models (1% apart): max relative error of the plain float32 Gram trick and
            of ours (centred) against a float64 pair loop.
3. vitb     21 ViT-B/16-sized models (48 attention matrices of 768x768, ~2.4 GB, made in memory):
            the distance matrix with ours vs a plain float32 pair loop. Goal: <= 0.5 s. And recover()
            end to end (one pass over the weights for D, norms and kurtosis) vs the four separate passes it
            replaced, in the same run. Goal: <= 1.0 s.
4. rank     l_LoRA from the stored low-rank factors vs an SVD of every merged difference (same ranks):
            on the LoRA-V forest, and on ViT-B-sized value matrices (d = 768, ranks 8..64).

Without --zoo the forest sections use a synthetic 105-model forest of the same shapes. Other developers
share the 2 cores: absolute times are inflated, the ratios are what to read.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from weightspace.plotting import save_results


def timed(fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def max_rel(a, b):
    off = ~np.eye(len(a), dtype=bool)
    return float((np.abs(a - b)[off] / np.abs(b)[off]).max())


def synthetic_forest(n_trees=5, d=64, depth=2, rel=0.05, seed=0):
    """5 roots x (1 + 4 + 16) timm-ViT-shaped models, each child its parent plus rel-sized noise."""
    g = torch.Generator().manual_seed(seed)
    models = {}
    for t in range(n_trees):
        root = {}
        for b in range(depth):
            root[f"blocks.{b}.attn.qkv.weight"] = 0.1 * torch.randn(3 * d, d, generator=g)
            root[f"blocks.{b}.attn.proj.weight"] = 0.1 * torch.randn(d, d, generator=g)
        models[f"t{t}"] = root
        for i in range(4):
            c = {k: v + rel * 0.1 * torch.randn(v.shape, generator=g) for k, v in root.items()}
            models[f"t{t}-c{i}"] = c
            for j in range(4):
                models[f"t{t}-c{i}-g{j}"] = {k: v + rel * 0.1 * torch.randn(v.shape, generator=g) for k, v in c.items()}
    return models


def bench_forest(models):
    from weightspace.mother import rms_distances, rms_distances_pairloop, select_layers

    layers = select_layers(next(iter(models.values())), "timm-vit", "ft")
    ref = rms_distances_pairloop(models, layers)                                     # float64, for accuracy
    t_loop, _ = timed(lambda: rms_distances_pairloop(models, layers, dtype=torch.float32))
    t_gram, D = timed(lambda: rms_distances(models, layers, device="cpu"), repeat=3)
    return dict(models=len(models), layers=len(layers), pair_loop_float32_s=t_loop, gram_s=t_gram,
                speedup=t_loop / t_gram, max_rel_err_vs_float64=max_rel(D, ref))


def bench_exact(n=21, P=768 * 768, rel=0.01, seed=1):
    from weightspace.mother.distances import gram_sq_distances

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(1, P, generator=g) + rel * torch.randn(n, P, generator=g)
    exact = torch.cdist(X.double(), X.double()).numpy()
    plain = gram_sq_distances(X, centre=False).sqrt().numpy()
    ours = gram_sq_distances(X).sqrt().numpy()
    return dict(models=n, weights=P, relative_difference=rel, plain_float32_max_rel_err=max_rel(plain, exact),
                centred_float32_max_rel_err=max_rel(ours, exact))


def vitb_models(n=21, d=768, blocks=12, rel=0.01, seed=2):
    """n ViT-B-sized models (HF names: 4 square attention matrices per block), base + rel-sized deltas."""
    g = torch.Generator().manual_seed(seed)
    names = ["query", "key", "value"]
    base = {}
    for b in range(blocks):
        for nm in names:
            base[f"encoder.layer.{b}.attention.attention.{nm}.weight"] = 0.03 * torch.randn(d, d, generator=g)
        base[f"encoder.layer.{b}.attention.output.dense.weight"] = 0.03 * torch.randn(d, d, generator=g)
    return {f"m{i}": {k: v + rel * 0.03 * torch.randn(v.shape, generator=g) for k, v in base.items()}
            for i in range(n)}


def plain_pair_loop_float32(models, layers):
    names = list(models)
    N = len(names)
    D = np.zeros((N, N))
    for i in range(N):
        for j in range(i + 1, N):
            s = 0.0
            for lay in layers:
                s += float(((models[names[i]][lay.key] - models[names[j]][lay.key]) ** 2).mean().sqrt())
            D[i, j] = D[j, i] = s / len(layers)
    return D


def bench_vitb(n):
    from weightspace.mother import rms_distances, select_layers

    models = vitb_models(n)
    layers = select_layers(next(iter(models.values())), "hf-vit", "ft")
    gb = n * sum(lay.numel for lay in layers) * 4 / 1e9
    t_loop, ref = timed(lambda: plain_pair_loop_float32(models, layers))
    # the floor: reading every weight once (a sum over all the matrices), measured in the same run
    t_read, _ = timed(lambda: sum(float(m[lay.key].sum()) for m in models.values() for lay in layers), repeat=3)
    out = dict(models=n, matrices=len(layers), gigabytes=gb, pair_loop_float32_s=t_loop, read_once_s=t_read)
    for cb in (4 << 20, 16 << 20, 64 << 20):
        t, D = timed(lambda cb=cb: rms_distances(models, layers, device="cpu", chunk_bytes=cb), repeat=3)
        out[f"gram_s_chunk_{cb >> 20}MB"] = t
        out[f"max_rel_err_chunk_{cb >> 20}MB"] = max_rel(D, ref)
    best = min(v for k, v in out.items() if k.startswith("gram_s"))
    out.update(gram_s=best, speedup=t_loop / best, gram_over_read_once=best / t_read, goal_s=0.5)
    out["recover"] = bench_recover(models, t_loop)
    return out


def separate_passes(models):
    """recover()'s reads before the one-pass version: kurtosis, a coarse D to cluster, the norms to count
    trees, then D again per tree (four passes over the weights)."""
    from weightspace.mother import select_layers
    from weightspace.mother.distances import kurtosis_scores, rms_distances, rms_norms
    from weightspace.mother.recover import count_trees, relative_distance, ward_clusters

    first = next(iter(models.values()))
    d_layers = select_layers(first, "hf-vit", "ft", "distance")
    k_layers = select_layers(first, "hf-vit", "ft", "direction")
    k = kurtosis_scores(models, k_layers)
    D_all = rms_distances(models, d_layers, device="cpu", tol=1e-3)
    labels = ward_clusters(D_all, count_trees(relative_distance(D_all, "ft", norms=rms_norms(models, d_layers))))
    names = list(models)
    Ds = [rms_distances({names[i]: models[names[i]] for i in np.flatnonzero(labels == t)}, d_layers, device="cpu")
          for t in range(labels.max() + 1)]
    return k, Ds


def bench_recover(models, t_loop):
    """recover() end to end (one pass: D, norms and kurtosis from the same reads) vs the four separate
    passes it replaced, beside the plain pair loop of the same run. Goal: <= 1.0 s."""
    from weightspace.mother import recover
    from weightspace.mother.distances import kurtosis_scores

    t_one, G = timed(lambda: recover(models, layers="hf-vit", distance="ft", direction_layers="hf-vit",
                                     device="cpu"), repeat=3)
    t_sep, (k, Ds) = timed(lambda: separate_passes(models), repeat=1)
    k_one = np.array([G.nodes[n]["kurtosis"] for n in models])
    D_one = G.graph["trees"][0]["D"] if len(Ds) == 1 else None
    return dict(recover_s=t_one, separate_passes_s=t_sep, speedup_vs_separate=t_sep / t_one,
                pair_loop_float32_s=t_loop, trees=len(G.graph["trees"]), goal_s=1.0,
                max_abs_kurtosis_difference=float(np.abs(k_one - k).max()),
                max_rel_D_difference=None if D_one is None else max_rel(D_one, Ds[0]))


def lora_models(n=11, d=768, layers=2, ranks=(8, 16, 32, 64), seed=3):
    """One LoRA tree: root, children of the root, grandchildren; merged fp32 plus cumulative factors."""
    g = torch.Generator().manual_seed(seed)
    root = {f"encoder.layer.{b}.attention.attention.value.weight": 0.03 * torch.randn(d, d, generator=g)
            for b in range(layers)}
    models = {"root": root}
    names = ["root"]
    for i in range(1, n):
        parent = models[names[(i - 1) // 3]]
        r = ranks[i % len(ranks)]
        sd = {}
        for k, w in parent.items():
            if k.endswith(".weight"):
                stem = k[:-7]
                B, A = 0.01 * torch.randn(d, r, generator=g), 0.03 * torch.randn(r, d, generator=g)
                sd[k] = w + B @ A
                pu, pv = parent.get(f"lora_factors.{stem}.U", torch.zeros(d, 0)), parent.get(f"lora_factors.{stem}.V", torch.zeros(0, d))
                sd[f"lora_factors.{stem}.U"], sd[f"lora_factors.{stem}.V"] = torch.cat([pu, B], 1), torch.cat([pv, A], 0)
        models[f"m{i}"] = sd
        names.append(f"m{i}")
    return models


def bench_rank(models, preset):
    from weightspace.mother import rank_distances, select_layers

    layers = select_layers(next(iter(models.values())), preset, "lora")
    st = {}
    t_f, Df = timed(lambda: rank_distances(models, layers, stats=st, device="cpu"))
    t_s, Ds = timed(lambda: rank_distances(models, layers, use_factors=False, device="cpu"))
    return dict(models=len(models), layers=len(layers), shape=list(layers[0].shape), factors_s=t_f, svd_s=t_s,
                speedup=t_s / t_f, identical=bool((Df == Ds).all()), factor_pairs=st["factor_pairs"] // len(layers),
                svd_pairs=st["svd_pairs"] // len(layers))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", default=None, help="a forests zoo (notebook 04); default: synthetic forest")
    ap.add_argument("--vitb-models", type=int, default=21)
    ap.add_argument("--skip-vitb", action="store_true", help="skip the 2.4 GB ViT-B section")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    res = {"threads": torch.get_num_threads()}
    if args.zoo:
        from weightspace.zoo import Zoo
        zoo = Zoo.open(args.zoo)
        ft = {i: zoo.load(i, verify=False) for i in zoo.variant("ft")}
        lora = {i: zoo.load(i, verify=False) for i in zoo.variant("lora-v")}
    else:
        ft = synthetic_forest()
        lora = None
    res["forest"] = bench_forest(ft)
    print("forest   ", json.dumps(res["forest"]), flush=True)
    # the same with 25 trees (525 models): the pair loop grows with N^2, our per-model costs with N
    res["forest_525"] = bench_forest(synthetic_forest(n_trees=25))
    print("forest525", json.dumps(res["forest_525"]), flush=True)
    res["exact"] = bench_exact()
    print("exact    ", json.dumps(res["exact"]), flush=True)
    if not args.skip_vitb:
        res["vitb"] = bench_vitb(args.vitb_models)
        print("vitb     ", json.dumps(res["vitb"]), flush=True)
    if lora is not None:
        res["rank_forest"] = bench_rank(lora, "timm-vit")
        print("rank     ", json.dumps(res["rank_forest"]), flush=True)
    res["rank_vitb"] = bench_rank(lora_models(), "hf-vit")
    print("rank vitb", json.dumps(res["rank_vitb"]), flush=True)
    if args.out:
        save_results(Path(args.out).parent, Path(args.out).stem, res)
    return res


if __name__ == "__main__":
    main()
