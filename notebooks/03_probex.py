# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   weightspace:
#     reads:
#     - zoo/vit_model_trees
#     writes:
#     - zoo/vit_large_tree
#     - zoo/vit_width64_tree
#     - zoo/vit_gentle_tree
#     - zoo/vit_lora_tree
# ---

# %% [markdown]
# # 03 · ProbeX: learning from one layer with probes, one expert per tree
#
# *ProbeX: [paper](https://arxiv.org/abs/2410.13569), [official code](https://github.com/eliahuhorwitz/ProbeX).
# weightspace is an independent reimplementation, not the authors' code; to cite, see [Citing](../README.md#citing-and-where-the-originals-are).*
#
# **What you will learn**
# - ProbeX itself: learned **probes** U pushed through the layer's weights X, a **shared projection** V,
#   a ReLU, per-probe **encoders** M_l summed into a model representation e, and a linear head T:
#   `e = Σ_l M_l ReLU(Vᵀ X u_l) + b`,  `y = T e + c`  (`weightspace/probex/model.py`);
# - how it compares with the dense linear expert it factorises (Dense), with weight statistics (StatNN)
#   and with chance, per Model Tree, and how many parameters each needs;
# - which layer to read (a sweep over every weight matrix, picked on validation), how the probe /
#   projection / representation sizes matter, and what the learned representation separates;
# - the Mixture of tree Experts with a router that finds a model's tree from its weights.
#
# **Mirrors:** ProbeX paper (Horwitz et al., CVPR 2025): the discriminative results on Model-J (one expert
# per subset, against the dense expert and StatNN), the layer sweep with the layer chosen on validation,
# the ablation of the sizes, the downstream kNN on the frozen representation e, and (section 6) where
# ProbeX matches the dense expert: learning curves, equal tuning, ranks that scale with the layer, LoRA.
# Chance is 0.5
# (element-wise accuracy). The experiments are functions of `weightspace/probex/experiments.py`.
#
# **Figures:** `probex_03_layer_sweep.png`, `probex_03_results.png`, `probex_03_ablation.png`,
# `probex_03_embedding.png`, `probex_03_learning_curves.png`, `probex_03_width.png`,
# `probex_03_gentle.png`. **Results:** `results/03_probex.json`.

# %% tags=["parameters"]
preset: str = "default"
zoo_root: str = "../zoos/default"
figures_dir: str = "../figures"
results_dir: str = "../results"
n_probes: int = 16                # r_U  (the paper: 128 on 768-wide layers; ours are 32-128 wide)
proj_dim: int = 16                # r_V
rep_dim: int = 32                 # r_T
epochs: int = 200                 # Adam lr 1e-3, weight decay 1e-5, as the paper; validation every 5 epochs
batch_size: int = 32              # ~150 training models: 5 steps an epoch, ~1000 steps
ablation_n_probes: list[int] = [4, 8, 16, 32]
ablation_proj_dim: list[int] = [4, 8, 16, 32]
ablation_rep_dim: list[int] = [8, 16, 32, 64]
router_layers: list[str] = ["blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight"]
threads: int = 1
workers: int = 2                  # section 6: processes for its builds and fits (one thread each)
scaling_models: int = 800         # section 6a: fine-tunes of one large tree (0: skip sections 6a and 6c) ...
scaling_split: list[float] = [0.75, 0.1, 0.15]   # ... split into train / val / test (600 / 80 / 120)
curve_sizes: list[int] = [75, 150, 300, 600]   # nested subsets of its training models
curve_seeds: list[int] = [0, 1, 2]      # one subset draw and initialisation each
curve_layers: list[str] = ["blocks.1.attn.proj.weight", "blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.weight"]
tune_lr: list[float] = [1e-3, 3e-3]       # the validation grid of both experts: learning rate ...
tune_weight_decay: list[float] = [1e-5, 1e-3]   # ... x weight decay,
tune_steps: int = 3000            # ... ~this many optimiser steps per fit at every size (the paper: ~3000)
tune_evals: int = 50              # ... validated this many times (the checkpoint is kept on validation)
tune_all_sizes: bool = False       # tune at every size, or at the largest only (smaller sizes reuse its choice)
long_steps: int = 9000            # ProbeX again at the largest size with this many steps (0: skip)
rank_fraction: float = 0.1667       # ProbeX r_U, r_V: this fraction of the layer's sides (the paper: 128/768)
width_models: int = 128           # the same fine-tunes on a wider ViT (0: skip) ...
width_embed_dim: int = 64         # ... of this width,
width_split: list[float] = [0.6, 0.15, 0.25]   # ... split like notebook 01's trees (both widths use this split)
width_layers: list[str] = ["blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.weight"]
width_seeds: list[int] = [0]            # expert seeds per cell (width and LoRA)
lora_models: int = 128            # section 6c: LoRA fine-tunes of notebook 01's supervised root (0: skip) ...
lora_ranks: list[int] = [4, 16]         # ... with ranks drawn from these,
lora_layers: list[str] = ["lora:blocks.0.attn.qkv", "lora:blocks.1.attn.qkv"]   # ... read as X: B @ A
gentle_models: int = 256          # section 6b: notebook 01's first tree again (0: skip) ...
gentle_lr: list[float] = [1e-5, 1e-4]     # ... fine-tuned with a 100x smaller learning rate
gentle_layers: list[str] = ["blocks.1.mlp.fc2.weight", "blocks.1.attn.proj.weight"]
gentle_seeds: list[int] = [0, 1]        # expert seeds averaged per cell of that figure
modelj_root: str = ""             # paper preset: the downloaded Model-J (data_scripts/download_modelj.py) ...
modelj_subsets: list[str] = []          # ... and its subsets, e.g. ["SupViT", "DINO", "MAE", "ResNet"]
modelj_ranks: list[int] = [128, 128, 128]   # (r_U, r_V, r_T) of the paper's Slurm example
seed: int = 0                     # expert initialisation; shifts curve, width and gentle seeds by 100 x seed

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown

from weightspace import plotting
from weightspace.data import styled_digits
from weightspace.probex import LayerData, Router, fit, route_and_evaluate
from weightspace.probex import experiments as ex
from weightspace.probex.experiments import short_name
from weightspace.zoo import Zoo

plotting.style()
torch.set_num_threads(threads)
t_start = time.time()
curve_fit_seeds = [s + 100 * seed for s in curve_seeds]     # seed 0: the seed lists as given
width_fit_seeds = [s + 100 * seed for s in width_seeds]
gentle_fit_seeds = [s + 100 * seed for s in gentle_seeds]
zoo = Zoo.open(f"{zoo_root}/vit_model_trees", kind="vit-model-trees")   # made by notebook 01
data = LayerData(zoo)
trees = data.trees
names = [data.tree_names[t] for t in trees]
cols = plotting.colors(len(trees))
cfg = dict(n_probes=n_probes, proj_dim=proj_dim, rep_dim=rep_dim, epochs=epochs, batch_size=batch_size)
layers = data.layers()
{name: tuple(data.X(name).shape[1:]) for name in layers}

# %% [markdown]
# ## 1 · Layer sweep
# For every tree and every weight matrix (X as the paper's code reads it: linear weights as stored,
# [out, in]; the patch-embedding conv reshaped to [C_in·k·k, C_out]), train a ProbeX and a Dense expert on
# the tree's training fine-tunes, keep the checkpoint with the best validation accuracy, and note test
# accuracy (`ex.layer_sweep`). The layer of the final results is chosen on **validation** (`ex.best_layers`).

# %%
sweep, fits = ex.layer_sweep(data, layers, seed=seed, **cfg)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, kind in zip(axes, ex.KINDS):
    for t, name, c in zip(trees, names, cols):
        s = sweep[(sweep.tree_id == t) & (sweep.kind == kind)].set_index("layer").loc[layers]
        ax.plot(range(len(layers)), s.val_acc, "-o", color=c, label=f"{name} (val)", ms=4)
        ax.plot(range(len(layers)), s.test_acc, ":", color=c, alpha=0.7)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(layers)), [short_name(l) for l in layers], rotation=35, ha="right", fontsize=8)
    ax.set_title(f"{ex.LABEL[kind]}: accuracy per layer (solid val, dotted test)")
axes[0].set_ylabel("element-wise accuracy"); axes[0].legend(fontsize=8)
plotting.savefig(fig, figures_dir, "probex_03_layer_sweep")

# %% [markdown]
# ## 2 · Results per tree
# ProbeX on its best layer; Dense on **its own** best layer, and Dense on **ProbeX's** layer (same input:
# the like-for-like comparison, and the parameter counts the paper compares); StatNN on weight statistics
# (mean, variance and 5 quantiles of every tensor, head excluded) with a one-hidden-layer MLP; and the
# best constant guess ("chance": every class's majority in the training labels). All layers are chosen on
# validation. StatNN is also fitted on the statistics of the weight matrices alone (>= 1024 entries, like
# every tensor of a ViT-B): in our tiny ViT many tensors are vectors of 32-128 numbers (biases, norm
# scales), whose 7 statistics say a lot about those numbers themselves.

# %%
statnn_table, statnn_fits = ex.statnn_comparison(zoo, data, min_numel=1024, epochs=epochs, seed=seed)
res = ex.results_table(data, sweep, fits, statnn_fits["all tensors"])
methods = list(ex.METHODS)
table = res.pivot(index="method", columns="tree", values="test_acc").loc[methods, names]
table["mean"] = table[names].mean(1)
params = res.pivot(index="method", columns="tree", values="n_params").loc[methods[:-1], names]
layer_of = res.pivot(index="method", columns="tree", values="layer").loc[methods, names]
train_acc = res.pivot(index="method", columns="tree", values="train_acc").loc[methods[:-1], names]
statnn_acc = statnn_table.pivot(index="tensors", columns="tree", values="test_acc")[names]
statnn_acc["mean"] = statnn_acc[names].mean(1)
ratio = ex.param_ratios(sweep)
print("test accuracy (element-wise, chance 0.5):"); display(table.round(3))
print("layer read:"); display(layer_of.map(short_name))
print("training accuracy of the checkpoint kept:"); display(train_acc.round(3))
print("parameters:"); display(params)
print("StatNN, test accuracy on the statistics of:"); display(statnn_acc.round(3))

# %%
pm, dm, dpm = (float(table.loc[m, "mean"]) for m in ("ProbeX", "Dense", "Dense (ProbeX's layer)"))
order = table.loc["ProbeX", names].sort_values(ascending=False)
wide_layers = [l for l in ratio.index if any(k in l for k in ("fc1", "fc2", "qkv"))]
small_layers = [l for l in ratio.index if "pos_embed" in l or "patch_embed" in l]
tr_p, tr_d = train_acc.loc["ProbeX", names], train_acc.loc["Dense", names]
Markdown(f"""
**Reading the table (this run).** ProbeX's test accuracy per tree:
{", ".join(f"{n} {v:.3f}" for n, v in order.items())} (chance {float(table.loc['chance', 'mean']):.3f}).
Mean over trees: ProbeX {pm:.3f}, Dense on its own best layers {dm:.3f} (ProbeX − Dense {pm - dm:+.3f}),
Dense on ProbeX's layers {dpm:.3f} (ProbeX − Dense {pm - dpm:+.3f}). Dense has
{ratio[wide_layers].min():.0f}-{ratio[wide_layers].max():.0f}x ProbeX's parameters on the wide layers
({", ".join(sorted({l.split(".")[-2] for l in wide_layers}))})
and {ratio[small_layers].min():.1f}-{ratio[small_layers].max():.1f}x on `pos_embed` / `patch_embed`.

The checkpoints kept fit their own training models to {tr_p.min():.3f}-{tr_p.max():.3f} (ProbeX) and
{tr_d.min():.3f}-{tr_d.max():.3f} (Dense) element-wise accuracy.

StatNN reaches {float(statnn_acc.loc['all tensors', 'mean']):.3f} on all tensors' statistics and
{float(statnn_acc.loc['weight matrices only', 'mean']):.3f} on the weight matrices' alone (mean over trees;
the paper: ~0.55 on Model-J).
""")

# %%
fig, ax = plt.subplots(figsize=(10, 4.4))
xs = np.arange(len(names))
w = 0.8 / len(methods)
for i, m in enumerate(methods):
    bars = ax.bar(xs + (i - (len(methods) - 1) / 2) * w, table.loc[m, names], w, label=m)
    for b, n in zip(bars, names):
        tag = {"StatNN": "stats", "chance": "majority"}.get(m, short_name(layer_of.loc[m, n]))
        ax.text(b.get_x() + b.get_width() / 2, 0.41, tag, rotation=90, ha="center", va="bottom", fontsize=6.5)
ticks = [f"{n}\nparams on ProbeX's layer:\n{params.loc['ProbeX', n] / 1e3:.1f}k ProbeX vs "
         f"{params.loc[methods[2], n] / 1e3:.0f}k Dense" for n in names]
ax.set_xticks(xs, ticks, fontsize=8); ax.set_ylim(0.4, 1.0); ax.set_ylabel("test accuracy")
ax.set_title("Which 20 of 40 classes? One expert per tree (in each bar: the layer it reads, chosen on val)",
             fontsize=10)
ax.legend(fontsize=8, ncol=len(methods), loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
plotting.savefig(fig, figures_dir, "probex_03_results")

# %% [markdown]
# ## 3 · Ablation: probes r_U, projection r_V, representation r_T
# On each tree's best layer, change one size at a time around the default (r_U, r_V, r_T) =
# (`n_probes`, `proj_dim`, `rep_dim`) (`ex.ablation`); test accuracy averaged over the trees, against the
# parameter count.

# %%
best_layer = ex.best_layers(sweep, "probex")
grid = {"n_probes": ablation_n_probes, "proj_dim": ablation_proj_dim, "rep_dim": ablation_rep_dim}
abl_trees = ex.ablation(data, best_layer, grid, fits=fits, seed=seed, **cfg)
abl = abl_trees.groupby(["size", "value"], sort=False)[["test_acc", "n_params"]].mean().reset_index()
fig, axes = plt.subplots(1, 3, figsize=(11, 3.3), sharey=True)
sizes = (("n_probes", "probes r_U"), ("proj_dim", "projection r_V"), ("rep_dim", "representation r_T"))
for ax, (what, label) in zip(axes, sizes):
    s = abl[abl["size"] == what]
    ax.plot(s.value, s.test_acc, "-o")
    for _, r in s.iterrows():
        ax.annotate(f"{r.n_params / 1e3:.1f}k", (r.value, r.test_acc), fontsize=7, xytext=(2, -10),
                    textcoords="offset points")
    ax.axhline(dm, color="gray", ls=":", label="Dense, own best layers (mean)")
    ax.axhline(dpm, color="gray", ls="--", lw=0.8, label="Dense, ProbeX's layers (mean)")
    ax.set_xscale("log", base=2); ax.set_xlabel(label)
axes[0].set_ylabel("test accuracy (mean of trees)"); axes[0].legend(fontsize=7)
fig.suptitle("ProbeX sizes, one at a time (labels: parameters)")
plotting.savefig(fig, figures_dir, "probex_03_ablation")
abl

# %% [markdown]
# ## 4 · Tree experts with a router
# On Model-J the tree of every model is known (the official code routes by subset: oracle routing). In
# the wild it has to be found. Our router is learned from weights alone: the centroid of each tree's
# training fine-tunes in a few layers (`router_layers`); an unseen model goes to the nearest centroid.
# Then the chosen tree's expert (ProbeX on that tree's best layer, chosen on validation) predicts the classes.

# %%
experts = {t: (best_layer[t], fits[(t, best_layer[t], "probex")]) for t in trees}
router = Router(router_layers).fit(data, "train")
routing = route_and_evaluate(experts, router, data, "test")
print(f"routing accuracy {routing['routing_acc']:.3f}; expert accuracy with oracle routing "
      f"{routing['oracle_acc']:.3f}, with the learned router {routing['routed_acc']:.3f}")
pd.DataFrame(routing["per_tree"]).T.rename(index=dict(zip(trees, names)))

# %% [markdown]
# ## 5 · What ProbeX's representation e separates
# The encoder output e (r_T numbers per model) of the first tree's expert. A model saw 20 of the 40
# classes, so any one class is only one of many factors in e. We measure, per class, how well "was this
# model trained on class c?" can be decoded from e by a k-nearest-neighbour vote (k = 5 training models,
# the paper's downstream kNN on the frozen representation), against the same vote on the raw layer X,
# and against the expert's own head (`ex.class_decodability`). The figure shows the first two principal
# components of e (an exact, deterministic PCA; t-SNE gave a different picture from run to run), coloured
# by the class best decoded from e on the **validation** models, next to the same for the raw layer.

# %%
t0 = trees[0]
layer0, f0 = experts[t0]
dec = ex.class_decodability(f0, data, layer0, t0, k=5)
E, Y0, split0 = ex.representations(f0, data, layer0, t0)
Xraw = data.X(layer0)[torch.from_numpy(np.flatnonzero(data.mask(t0)))].flatten(1).double().numpy()
knn_acc = ex.knn_accuracy(f0, data, layer0, t0, k=5)
shown = int(dec.val_e.to_numpy().argmax())                    # the class e decodes best, on validation
cls_names = styled_digits().class_names
on = Y0[:, shown] > 0.5
fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.6), gridspec_kw={"wspace": 0.32})
for ax, (F_, what) in zip(axes[:2], ((E, "ProbeX representation e"),
                                     (Xraw, f"raw layer X ({short_name(layer0)})"))):
    xy, frac = ex.pca_2d(F_)
    for m, marker in (("train", "o"), ("val", "s"), ("test", "^")):
        sel = split0 == m
        ax.scatter(*xy[sel & ~on].T, s=9, marker=marker, color="lightgray")
        ax.scatter(*xy[sel & on].T, s=9, marker=marker, color=cols[1])
    ax.set_title(f"PCA of {what}\n({frac[0]:.0%} + {frac[1]:.0%} of variance)", fontsize=9)
    ax.set_xticks([]); ax.set_yticks([])
axes[0].scatter([], [], color=cols[1], s=9, label=f"trained on “{cls_names[shown]}”")
axes[0].scatter([], [], color="lightgray", s=9, label="not trained on it")
axes[0].legend(fontsize=7, loc="lower left")
ax = axes[2]
ax.scatter(dec.test_X, dec.test_e, s=12, color=cols[0])
ax.scatter(dec.test_X[shown], dec.test_e[shown], s=30, color=cols[1], label=f"“{cls_names[shown]}”")
ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls=":")
ax.axhline(0.5, color="gray", lw=0.6); ax.axvline(0.5, color="gray", lw=0.6)
ax.set_xlim(-0.02, 1.02); ax.set_ylim(-0.02, 1.02)
ax.set_xlabel("kNN accuracy from raw X (test)"); ax.set_ylabel("kNN accuracy from e (test)")
ax.set_title(f"per class: mean {dec.test_e.mean():.2f} from e vs {dec.test_X.mean():.2f} from X", fontsize=9)
ax.legend(fontsize=7, loc="lower right")
fig.suptitle(f"What ProbeX's e separates ({names[0]} tree, {short_name(layer0)}; o train, □ val, △ test)",
             y=1.04)
plotting.savefig(fig, figures_dir, "probex_03_embedding")
dec.assign(name=cls_names).sort_values("val_e", ascending=False).head(8).round(3)

# %%
Markdown(f"""
**What e separates (this run).** A kNN vote (k = 5) in e predicts the test models' classes with
element-wise accuracy {knn_acc:.3f}; the same vote on the raw layer X gives {float(dec.test_X.mean()):.3f}
and the expert's own head {float(dec.test_head.mean()):.3f} (chance 0.5). The class shown,
“{cls_names[shown]}”, is decoded from e with {float(dec.val_e[shown]):.2f} on validation and
{float(dec.test_e[shown]):.2f} on test ({float(dec.test_X[shown]):.2f} from X). Classes decoded from e better
than from X on test: {int((dec.test_e > dec.test_X).sum())} of {len(dec)}; worse:
{int((dec.test_e < dec.test_X).sum())}. The two principal components of e hold
{float(ex.pca_2d(E)[1].sum()):.0%} of its variance. So e separates the classes
{"better than" if dec.test_e.mean() > dec.test_X.mean() else "no better than"} the raw layer does, by this
measure (mean per-class kNN accuracy {float(dec.test_e.mean()):.3f} vs {float(dec.test_X.mean()):.3f}).
""")

# %% [markdown]
# ## 6 · When does ProbeX catch up with Dense?
# Section 2 compares ProbeX with Dense on the same layers. The paper reports that ProbeX at least matches
# the dense linear expert it factorises, with far fewer parameters; its regime differs from ours in many
# ways, any of which could decide the ranking: ~700 training models per tree (ours: printed below), 768-wide
# layers where a linear expert has ~840 input entries per training model (768² / ~700; ours far fewer, so
# Dense is far better determined here), ranks that are a fraction of the layer (128 of 768) with r_T above
# the number of classes (our section-2 r_T is `rep_dim`, the classes 40), ~3000 optimiser steps, and LoRA
# fine-tunes in its generative setting.
#
# ### 6a · More training models, equal tuning, ranks that scale with the layer
# One **large tree**: notebook 01's supervised root with `scaling_models` fine-tunes of notebook 01's
# recipe (`build_like`: fine-tune i keeps its classes, learning rate, steps and seed, so the first ones
# are notebook 01's own and are copied from its zoo, verified; only the rest are trained), split
# `scaling_split`. Both experts read the same layer, chosen on the
# validation accuracy of both at the largest size among `curve_layers`, and are trained on nested random
# subsets of `curve_sizes` training models, one subset draw and initialisation per seed (`curve_seeds`);
# validation and test are the tree's full splits. Every fit gets the **same validation grid** (learning
# rate `tune_lr` × weight decay `tune_weight_decay`, ~`tune_steps` optimiser steps whatever the size, the
# checkpoint kept on validation), and ProbeX has **ranks that scale with the layer**: r_U and r_V =
# `rank_fraction` of the layer's input and output sides (the paper's 128 of 768; at least 4), r_T = the
# number of classes (`probex.scaling`). The grid is searched at the largest size (at every size with
# `tune_all_sizes`); smaller sizes reuse each expert's most chosen grid point. At the largest size ProbeX
# with section 2's fixed sizes is fitted too, and ProbeX with `long_steps` steps (at its chosen grid point).

# %%
scaling = {}
if scaling_models:
    from weightspace.probex import scaling as sc
    from weightspace.zoo.model_trees import build_like

    t_build = time.time()
    lzoo = build_like(f"{zoo_root}/vit_large_tree", zoo, n_trees=1, n_per_tree=scaling_models,
                      split=scaling_split, workers=workers, progress=False)
    large_build_seconds = time.time() - t_build
    ldata = LayerData(lzoo)
    n_classes = int(ldata.Y.shape[1])
    entries = lambda d, layer: int(d.X(layer).shape[1:].numel())
    n01, nlarge = int(data.mask(trees[0], "train").sum()), int(ldata.mask(0, "train").sum())
    print(f"training models per tree: {n01} in notebook 01's zoo, {nlarge} in the large tree; input entries "
          "per training model: " + ", ".join(f"{short_name(l)} {entries(ldata, l) / n01:.0f} -> "
                                            f"{entries(ldata, l) / nlarge:.0f}" for l in curve_layers))
    ranks_of = lambda shape, n: sc.scaled_ranks(shape, n, fraction=rank_fraction)
    grid = {"lr": tune_lr, "weight_decay": tune_weight_decay}
    t_fit = time.time()
    curve_layer, layer_choice = sc.choose_layer(ldata, 0, curve_layers, steps=tune_steps, ranks=ranks_of,
                                                workers=workers, batch_size=batch_size)
    curve_all, curve = sc.learning_curves(ldata, 0, curve_layer, curve_sizes, curve_fit_seeds, grid,
                                          tune_all_sizes=tune_all_sizes, steps=tune_steps, n_evals=tune_evals,
                                          ranks=ranks_of, workers=workers, batch_size=batch_size)
    largest = sc.learning_curve_cells(ldata, 0, curve_layer, curve_sizes[-1:], curve_fit_seeds)
    fixed_all, fixed = sc.tuned_comparison(largest, grid, steps=tune_steps, n_evals=tune_evals,
                                           kinds=("probex",), workers=workers, batch_size=batch_size,
                                           n_probes=n_probes, proj_dim=proj_dim, rep_dim=rep_dim)
    long = pd.DataFrame()
    if long_steps:
        _, long_point = sc.most_chosen(curve[curve["size"] == curve_sizes[-1]], "probex", grid)
        _, long = sc.tuned_comparison(largest, long_point, steps=long_steps, n_evals=tune_evals,
                                      kinds=("probex",), ranks=ranks_of, workers=workers,
                                      batch_size=batch_size)
    curve_seconds = time.time() - t_fit
    summ = sc.summarize(curve)
    shape = tuple(ldata.X(curve_layer).shape[1:])
    p_scaled, p_dense = (int(curve[curve.kind == k].n_params.iloc[0]) for k in sc.KINDS)
    p_fixed = int(fixed.n_params.iloc[0])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    for kind, c, label in (("probex", cols[0], f"ProbeX, scaled ranks ({p_scaled / 1e3:.1f}k params)"),
                           ("dense", cols[1], f"Dense ({p_dense / 1e3:.0f}k params)")):
        ax.errorbar(summ.index, summ[f"mean_{kind}"], yerr=summ[f"std_{kind}"], fmt="-o", color=c, capsize=3,
                    label=label)
    ax.errorbar([curve_sizes[-1] * 1.04], [fixed.test_acc.mean()], yerr=[fixed.test_acc.std()], fmt="s",
                color=cols[2], capsize=3, label=f"ProbeX, section 2's sizes ({p_fixed / 1e3:.1f}k params)")
    if len(long):
        ax.errorbar([curve_sizes[-1] * 0.96], [long.test_acc.mean()], yerr=[long.test_acc.std()], fmt="D",
                    color=cols[3], capsize=3, label=f"ProbeX, scaled ranks, {long_steps} steps")
    ax.set_xscale("log"); ax.minorticks_off(); ax.set_xticks(curve_sizes, [str(s) for s in curve_sizes])
    ax.set_xlabel("training models"); ax.set_ylabel("test accuracy (mean ± sd over seeds)")
    ax.set_title(f"Learning curves on {short_name(curve_layer)} {shape}", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[1]
    paired = curve.pivot_table(index=["size", "seed"], columns="kind", values="test_acc")
    gaps = (paired.probex - paired.dense).reset_index(name="gap")
    ax.scatter(gaps["size"], gaps.gap, color="gray", s=14, label="one seed")
    ax.plot(summ.index, summ.gap, "-o", color=cols[0], label="mean")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log"); ax.minorticks_off(); ax.set_xticks(curve_sizes, [str(s) for s in curve_sizes])
    ax.set_xlabel("training models"); ax.set_ylabel("ProbeX − Dense test accuracy")
    ax.set_title("The gap, paired by seed (same subset)", fontsize=10); ax.legend(fontsize=7)
    fig.suptitle(f"One large tree ({lzoo.params['n_per_tree']} fine-tunes of notebook 01's {names[0]} root); "
                 "both tuned on the same validation grid", y=1.02)
    plotting.savefig(fig, figures_dir, "probex_03_learning_curves")
    display(summ.round(3))
    display(curve[["size", "seed", "kind", "lr", "weight_decay", "val_acc", "test_acc", "train_acc",
                   "best_step", "n_params"]].round(4))

# %% [markdown]
# **The same task on a wider ViT.** `build_like` again, now with `embed_dim = width_embed_dim` (the
# same 40 classes, the same recipe; the supervised root is pre-trained anew at that width): its fine-tune
# i has the same classes, learning rate, steps and seed as fine-tune i of the large tree, and the same
# split is used on both, so the two trees differ in width alone. Both experts, tuned on the same grid,
# with ranks scaled to each layer, on `width_layers` of both widths.

# %%
width = pd.DataFrame()
if scaling_models and width_models:
    t_build = time.time()
    wzoo = build_like(f"{zoo_root}/vit_width{width_embed_dim}_tree", zoo, n_trees=1, n_per_tree=width_models,
                      split=width_split, vit={**zoo.params["vit"], "embed_dim": width_embed_dim},
                      workers=workers, progress=False)
    width_build_seconds = time.time() - t_build
    wdata = LayerData(wzoo)
    pair = {"narrow": sc.same_models(ldata, wdata), "wide": wdata}
    embed = {k: int(d.X("blocks.0.attn.proj.weight").shape[-1]) for k, d in pair.items()}
    t_fit = time.time()
    _, width = sc.tuned_comparison(sc.layer_cells(pair, width_layers, seeds=width_fit_seeds), grid,
                                   steps=tune_steps, n_evals=tune_evals, ranks=ranks_of, workers=workers,
                                   batch_size=batch_size)
    width_seconds = time.time() - t_fit
    wsum = sc.summarize(width, by=("data", "layer"))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = np.arange(len(width_layers))
    for j, (label, c) in enumerate(zip(pair, cols)):
        g = wsum.loc[label].loc[width_layers]
        ax.bar(xs + (j - 0.5) * 0.4, g.gap, 0.4, yerr=g.gap_std, color=c, capsize=3,
               label=f"width {embed[label]} ({int(pair[label].mask(0, 'train').sum())} training models)")
        for x, (layer, r) in zip(xs + (j - 0.5) * 0.4, g.iterrows()):
            ax.text(x, 0, f"{r.n_params_dense / r.n_params_probex:.0f}x", ha="center",
                    va="bottom" if r.gap < 0 else "top", fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(xs, [short_name(l) for l in width_layers]); ax.set_ylabel("ProbeX − Dense test accuracy")
    ax.set_title("Same task, same fine-tunes, two widths (labels: Dense / ProbeX parameters)", fontsize=10)
    ax.legend(fontsize=8)
    plotting.savefig(fig, figures_dir, "probex_03_width")
    display(wsum.round(3))

# %% [markdown]
# ### 6b · Fine-tunes that stay near their root
# Model-J's fine-tunes start from a ViT-B with learning rates of 3e-5 to 5e-4; ours use 1e-3 to 1e-2.
# So: notebook 01's first tree again (the same root, copied from its zoo, and the same plan of
# classes, steps and seeds: `build_like` copies the zoo's parameters), fine-tuned with a 100x smaller
# learning rate (`gentle_lr`). Both experts read three inputs on two layers (`ex.gentle_comparison`):
#
# - **X**, the raw layer (the paper's input);
# - **ΔX** = X − X_root, the fine-tuning delta (inside a tree the root is known);
# - **ΔX/σ**, the delta divided by the standard deviation of the training models' deltas (`probex.delta_inputs`).
#
# A linear expert cannot see the constant X_root, but it does see the scale: Adam moves each Dense weight
# by about the learning rate per step, whatever the size of the inputs. ProbeX's ReLU sees the root's own
# probe responses as offsets.

# %%
gentle = pd.DataFrame()
if gentle_models:
    from weightspace.probex.train import INPUTS
    from weightspace.zoo.model_trees import build_like

    gzoo = build_like(f"{zoo_root}/vit_gentle_tree", zoo, n_trees=1, n_per_tree=gentle_models, lr=gentle_lr,
                      workers=2, progress=False)
    print("same root as notebook 01's first tree:",
          gzoo.row("t0-root")["sha256"] == zoo.row("t0-root")["sha256"])
    tree_label = {f"lr {zoo.params['lr'][0]:g}–{zoo.params['lr'][1]:g} (notebook 01)": data,
                  f"lr {gentle_lr[0]:g}–{gentle_lr[1]:g} (gentle)": LayerData(gzoo)}
    gentle = ex.gentle_comparison(tree_label, gentle_layers, tree=0, seeds=gentle_fit_seeds, **cfg)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, label in zip(axes, tree_label):
        g = gentle[gentle.tree == label]
        groups = [(layer, inp) for layer in gentle_layers for inp in INPUTS]
        xs = np.arange(len(groups))
        for j, (kind, c) in enumerate((("probex", cols[0]), ("dense", cols[1]))):
            acc = [float(g[(g.layer == l) & (g.input == i) & (g.kind == kind)].test_acc.iloc[0])
                   for l, i in groups]
            ax.bar(xs + (j - 0.5) * 0.4, acc, 0.4, color=c, label=ex.LABEL[kind])
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
        ax.set_xticks(xs, [f"{i}\n{l.split('.')[-2]}" for l, i in groups], fontsize=8)
        ax.set_title(f"{label}: weights moved {g.moved.mean():.0%} of the root", fontsize=9)
        ax.set_ylim(0.4, 1.0)
    axes[0].set_ylabel("test accuracy"); axes[0].legend(fontsize=8)
    fig.suptitle("Raw layer X vs the fine-tuning delta ΔX (and ΔX/σ) as input, same root and plan")
    plotting.savefig(fig, figures_dir, "probex_03_gentle")
    for what in ("test_acc", "train_acc"):
        print(what.replace("_acc", " accuracy") + ":")
        display(gentle.pivot_table(index=["tree", "layer"], columns=["input", "kind"], values=what).round(3))

# %%
gentle_gap = {}
if len(gentle):
    acc = gentle.pivot_table(index=["tree", "input", "layer"], columns="kind",
                             values=["test_acc", "train_acc"])
    gl, nl = [k for k in tree_label if "gentle" in k][0], [k for k in tree_label if "gentle" not in k][0]
    gentle_gap = {inp: float((acc.loc[(gl, inp), ("test_acc", "probex")]
                              - acc.loc[(gl, inp), ("test_acc", "dense")]).mean()) for inp in INPUTS}
    moved = gentle.groupby("tree").moved.mean()

    def per_layer(tree, inp, what="test_acc"):
        a = acc.loc[(tree, inp)]
        return "; ".join(f"`{layer.split('.')[-2]}` ProbeX {a.loc[layer, (what, 'probex')]:.3f} "
                         f"vs Dense {a.loc[layer, (what, 'dense')]:.3f}" for layer in gentle_layers)

    def span(tree, inp, kind, what="train_acc"):
        v = acc.loc[(tree, inp)][(what, kind)]
        return f"{v.min():.2f}-{v.max():.2f}"

    gain = {k: (acc.loc[nl][("test_acc", k)].unstack(0)[["ΔX", "ΔX/σ"]].max(1)
                - acc.loc[(nl, "X")][("test_acc", k)]) for k in ex.KINDS}
    gentle_text = f"""**This run.** The gentle fine-tunes moved their layers by {moved[gl]:.1%} of the root's
norm (notebook 01's tree: {moved[nl]:.0%}). On the gentle tree's **raw** weights: {per_layer(gl, 'X')}
(ProbeX − Dense, mean over the layers: {gentle_gap['X']:+.3f}). Dense fits {span(gl, 'X', 'dense')} of its
*training* labels there, against {span(nl, 'X', 'dense')} on notebook 01's tree. With the delta from the
root: {per_layer(gl, 'ΔX')} ({gentle_gap['ΔX']:+.3f}); with the standardised delta:
{per_layer(gl, 'ΔX/σ')} ({gentle_gap['ΔX/σ']:+.3f}). On notebook 01's tree the best delta input changes
Dense by {gain['dense'].min():+.3f} to {gain['dense'].max():+.3f} and ProbeX by {gain['probex'].min():+.3f}
to {gain['probex'].max():+.3f} over the raw layer.

A Dense expert that cannot fit its own training labels on raw weights, but can on their standardised
delta, is limited by conditioning (the root dominates every input), not by capacity. Model-J's fine-tunes
(small learning rates on a large root) may be in that regime, one possible explanation for the paper's
ranking; only the `paper` preset can check it."""
else:
    gentle_text = "The gentle tree was skipped (`gentle_models = 0`)."
Markdown(gentle_text)

# %% [markdown]
# ### 6c · A LoRA tree: ProbeX's own regime
# In its generative setting the paper reads LoRA fine-tunes, X = B·A (rank ≤ 16, no alpha scale), where it
# reports its clearest advantage over the dense expert. Here: LoRA fine-tunes of notebook 01's supervised
# root on the same 40-class task (notebook 01's recipe otherwise; the root frozen, a rank drawn from
# `lora_ranks` per fine-tune, adapters on the q and v blocks of every fused qkv, and the new head), both
# experts tuned on the same grid, with scaled ranks, on the adapted layers' B·A (`lora_layers`).

# %%
lora = pd.DataFrame()
if scaling_models and lora_models:
    t_build = time.time()
    rzoo = build_like(f"{zoo_root}/vit_lora_tree", zoo, n_trees=1, n_per_tree=lora_models,
                      split=scaling_split, finetune_mode="lora", lora_ranks=lora_ranks, workers=workers,
                      progress=False)
    lora_build_seconds = time.time() - t_build
    rdata = LayerData(rzoo)
    t_fit = time.time()
    _, lora = sc.tuned_comparison(sc.layer_cells({"LoRA": rdata}, lora_layers, seeds=width_fit_seeds), grid,
                                  steps=tune_steps, n_evals=tune_evals, ranks=ranks_of, workers=workers,
                                  batch_size=batch_size)
    lora_seconds = time.time() - t_fit
    lsum = sc.summarize(lora, by=("layer",))
    print("B·A shapes:", {short_name(l): tuple(rdata.X(l).shape[1:]) for l in lora_layers},
          "LoRA ranks of the fine-tunes:", sorted(set(rzoo.table["rank"].dropna().astype(int))))
    display(lsum.round(3))


# %% [markdown]
# ### What holds in section 6a-c (computed from this run)

# %%
def _mean_gap(s):
    return dict(probex=float(s.mean_probex.mean()), dense=float(s.mean_dense.mean()), gap=float(s.gap.mean()))


if scaling_models:
    big, small = summ.loc[curve_sizes[-1]], summ.loc[curve_sizes[0]]
    scaling = dict(
        layer=curve_layer, shape=list(shape), n_classes=n_classes, sizes=list(curve_sizes),
        seeds=list(curve_fit_seeds),
        n_train_available=int(ldata.mask(0, "train").sum()), same_root=bool(
            lzoo.row("t0-root")["sha256"] == zoo.row("t0-root")["sha256"]),
        ranks=ranks_of(shape, n_classes), n_params=dict(probex=p_scaled, probex_fixed=p_fixed, dense=p_dense),
        curve=summ.reset_index().to_dict("records"),
        largest=dict(probex=float(big.mean_probex), dense=float(big.mean_dense),
                     probex_fixed=float(fixed.test_acc.mean()), gap=float(big.gap),
                     **({"probex_long": float(long.test_acc.mean())} if len(long) else {})),
        smallest=dict(probex=float(small.mean_probex), dense=float(small.mean_dense), gap=float(small.gap)),
        gap_smallest=float(small.gap), gap_largest=float(big.gap),
        fits=curve[["size", "seed", "kind", "lr", "weight_decay", "val_acc", "test_acc", "train_acc",
                    "best_epoch", "best_step", "n_params"]].to_dict("records"),
        fixed_fits=fixed[["seed", "lr", "weight_decay", "val_acc", "test_acc",
                          "best_step"]].to_dict("records"),
        layer_choice=layer_choice[["layer", "kind", "val_acc", "test_acc"]].to_dict("records"),
        seconds=dict(large_build=round(large_build_seconds, 1), curve_fits=round(curve_seconds, 1)))
    if len(width):
        scaling["width"] = {k: {**_mean_gap(wsum.loc[k]), "embed_dim": embed[k],
                                "layers": wsum.loc[k].reset_index().to_dict("records")} for k in pair}
        scaling["seconds"].update(width_build=round(width_build_seconds, 1),
                                  width_fits=round(width_seconds, 1))
    if len(lora):
        scaling["lora"] = {**_mean_gap(lsum), "ranks": list(lora_ranks),
                           "layers": lsum.reset_index().to_dict("records")}
        scaling["seconds"].update(lora_build=round(lora_build_seconds, 1), lora_fits=round(lora_seconds, 1))
    where = [f"{s} training models ({r.mean_probex:.3f} vs {r.mean_dense:.3f}, ProbeX {p_scaled:,} "
             f"parameters vs Dense {p_dense:,})" for s, r in summ.iterrows() if r.gap >= -0.005]
    for k, s in ((f"width {embed[k]}", wsum.loc[k]) for k in (pair if len(width) else ())):
        where += [f"{k}, `{short_name(l)}` ({r.mean_probex:.3f} vs {r.mean_dense:.3f}, Dense "
                  f"{r.n_params_dense / r.n_params_probex:.0f}x ProbeX's parameters)" for l, r in s.iterrows()
                  if r.gap >= -0.005]
    if len(lora):
        where += [f"LoRA B·A `{short_name(l)}` ({r.mean_probex:.3f} vs {r.mean_dense:.3f}, Dense "
                  f"{r.n_params_dense / r.n_params_probex:.0f}x ProbeX's parameters)"
                  for l, r in lsum.iterrows() if r.gap >= -0.005]
    curve_txt = "; ".join(f"{s}: {r.mean_probex:.3f} ± {r.std_probex:.3f} vs {r.mean_dense:.3f} ± "
                          f"{r.std_dense:.3f} (gap {r.gap:+.3f})" for s, r in summ.iterrows())
    best_steps = {k: curve[curve.kind == k].best_step for k in sc.KINDS}
    long_txt = (f"; with scaled ranks and {long_steps} steps, {long.test_acc.mean():.3f} (best checkpoints "
                f"after {int(long.best_step.min())}-{int(long.best_step.max())} steps)" if len(long) else "")
    gains = "ProbeX gains on Dense" if big.gap > small.gap else "ProbeX does not gain on Dense"
    steps_txt = {k: f"{int(v.min())}-{int(v.max())}" for k, v in best_steps.items()}
    lines = [f"""**Learning curves** (`{short_name(curve_layer)}` {shape}, chosen on validation; ProbeX with
(r_U, r_V, r_T) = {tuple(ranks_of(shape, n_classes).values())}, {p_scaled:,} parameters, against Dense's
{p_dense:,}). Test accuracy, ProbeX vs Dense, mean ± sd over {len(curve_seeds)} seeds, per training size:
{curve_txt}. The gap goes from {small.gap:+.3f} at {curve_sizes[0]} to {big.gap:+.3f} at {curve_sizes[-1]}
training models ({gains}). With section 2's sizes ({n_probes}, {proj_dim}, {rep_dim}; {p_fixed:,} parameters)
ProbeX reaches {fixed.test_acc.mean():.3f} at the largest size{long_txt}. The checkpoints kept were reached
after {steps_txt['probex']} (ProbeX) and {steps_txt['dense']} (Dense) optimiser steps of the {tune_steps}
allowed."""]
    if len(width):
        w = scaling["width"]
        lines.append(f"""**Width** (same task and fine-tunes, {len(pair['wide'].split(width_layers[0], 0)[0])}
training models): ProbeX − Dense, mean over {", ".join(f"`{short_name(l)}`" for l in width_layers)}:
{w['narrow']['gap']:+.3f} at width {embed['narrow']}, {w['wide']['gap']:+.3f} at width {embed['wide']}.""")
    if len(lora):
        lines.append(f"""**LoRA tree** (ranks {lora_ranks}): ProbeX {scaling['lora']['probex']:.3f} vs Dense
{scaling['lora']['dense']:.3f} on B·A, mean over {len(lora_layers)} adapted layers.""")
    lines.append("**Where ProbeX matches or beats Dense** (mean over seeds, within 0.005): "
                 + ("; ".join(where) if where else
                    "nowhere in this section: Dense is ahead at every training size, width and input tried."))
    scaling_text = "\n\n".join(lines)
else:
    scaling_text = "The large tree was skipped (`scaling_models = 0`)."
Markdown(scaling_text)

# %% [markdown]
# ## 7 · Paper scale: Model-J (only with the `paper` preset)
# The same code on the real Model-J subsets: each subset is one tree; read the paper's best layer (its index
# in the lexicographic layer list of the official code) of every model once into a tensor, then train ProbeX with
# the paper's recipe. Needs the ~350 GB download per subset and a GPU; skipped when `modelj_root` is empty.

# %%
modelj = {}
if modelj_root:
    import os

    from weightspace.probex.modelj import SUBSETS, ModelJSubset, load_extracted

    r_U, r_V, r_T = modelj_ranks
    for subset in modelj_subsets:
        sub = ModelJSubset(os.path.expanduser(modelj_root), subset)
        cache = f"{zoo_root}/modelj_{subset}_layer{SUBSETS[subset]['best_layer']}.safetensors"
        if not os.path.exists(cache):
            sub.extract(SUBSETS[subset]["best_layer"], cache)
        d = load_extracted(cache)
        f = fit("probex", d["train"], d["val"], d["test"], n_probes=r_U, proj_dim=r_V, rep_dim=r_T,
                epochs=epochs, batch_size=128, eval_every=25, seed=seed)
        modelj[subset] = dict(layer=sub.layer_name(SUBSETS[subset]["best_layer"]), test_acc=f.test_acc,
                              val_acc=f.val_acc, n_params=f.n_params)
modelj


# %% [markdown]
# ## What holds at this scale (computed from this run)
# The results file holds the numbers and the paper's claims as data: each claim names the numbers it
# compares, and its verdict is computed from them when the file is written.

# %%
def trees_acc(m, src=table):
    return {**{n: float(src.loc[m, n]) for n in names}, "mean": float(src.loc[m, names].mean()),
            "worst": float(src.loc[m, names].min())}


same_layer_ratio = {n: float(params.loc[methods[2], n] / params.loc["ProbeX", n]) for n in names}
results = dict(
    preset=preset, paper="ProbeX", seed=seed, epochs=epochs,
    ranks=dict(n_probes=n_probes, proj_dim=proj_dim, rep_dim=rep_dim),
    test_acc={m: trees_acc(m) for m in methods},
    train_acc={m: trees_acc(m, train_acc) for m in methods[:-1]},
    n_params={m: {n: int(params.loc[m, n]) for n in names} for m in params.index},
    layer={m: {n: layer_of.loc[m, n] for n in names} for m in methods[:3]},
    probex_minus_dense=dict(own_layers=pm - dm, probex_layers=pm - dpm),
    param_ratio_dense_over_probex_same_layer={**same_layer_ratio, "min": min(same_layer_ratio.values())},
    param_ratio_by_layer={l: float(v) for l, v in ratio.items()},
    statnn={k: {n: float(statnn_acc.loc[k, n]) for n in names + ["mean"]} for k in statnn_acc.index},
    routing={k: routing[k] for k in ("routing_acc", "oracle_acc", "routed_acc")},
    ablation=abl.to_dict("records"),
    embedding=dict(tree=names[0], layer=layer0, knn_e=knn_acc, knn_X=float(dec.test_X.mean()),
                   head=float(dec.test_head.mean()), shown_class=cls_names[shown],
                   shown_val_e=float(dec.val_e[shown]), shown_test_e=float(dec.test_e[shown]),
                   shown_test_X=float(dec.test_X[shown]),
                   pca_variance=float(ex.pca_2d(E)[1].sum()), per_class=dec.reset_index().to_dict("records")),
    scaling=scaling,
    gentle_tree=gentle.to_dict("records"),
    # "/" separates key paths: "ΔX/σ" is stored as "ΔX over σ"
    gentle_probex_minus_dense={k.replace("/", " over "): v for k, v in gentle_gap.items()},
    modelj=modelj,
    sweep=sweep[["tree", "layer", "kind", "train_acc", "val_acc", "test_acc", "n_params"]].to_dict("records"),
    seconds=round(time.time() - t_start, 1))
how = "test split, element-wise accuracy, one expert per tree, layers chosen on validation"
beats_dense = "ProbeX outperforms the dense linear expert it factorises"
results["claims"] = [
    dict(claim="ProbeX at least matches Dense, each on its own best layer (mean over trees)",
         paper=beats_dense, lhs="test_acc/ProbeX/mean", op=">=", rhs="test_acc/Dense/mean", tol=0.005,
         how=how),
    dict(claim="ProbeX at least matches Dense on the same layer (ProbeX's best; mean over trees)",
         paper=beats_dense, lhs="test_acc/ProbeX/mean", op=">=", rhs="test_acc/Dense (ProbeX's layer)/mean",
         tol=0.005, how=how + "; Dense reads ProbeX's layer"),
    dict(claim="ProbeX needs >= 10x fewer parameters than Dense on the same layer (every tree)",
         paper="13-84x fewer parameters than a dense expert on the same layer",
         lhs="param_ratio_dense_over_probex_same_layer/min", op=">=", rhs=10,
         how="Dense / ProbeX parameter count on ProbeX's best layer, smallest over trees"),
    dict(claim="ProbeX clearly above chance on every tree (worst tree > 0.55)",
         paper="ProbeX learns which classes a model was trained on", lhs="test_acc/ProbeX/worst", op=">",
         rhs=0.55, how=how),
    dict(claim="StatNN near chance on all tensors' statistics (mean over trees < 0.6)",
         paper="StatNN ~0.55 on Model-J", lhs="statnn/all tensors/mean", op="<", rhs=0.6,
         how="test split; 7 statistics of every tensor but the head"),
    dict(claim="StatNN near chance on the weight matrices' statistics (mean over trees < 0.6)",
         paper="StatNN ~0.55 on Model-J", lhs="statnn/weight matrices only/mean", op="<", rhs=0.6,
         how="test split; 7 statistics of every tensor with >= 1024 entries"),
    dict(claim="The router finds every test model's tree", paper="oracle routing (the tree is known)",
         lhs="routing/routing_acc", op=">=", rhs=1.0, how="nearest tree centroid of the training fine-tunes"),
    dict(claim="Learned routing loses nothing against oracle routing",
         paper="oracle routing (the tree is known)", lhs="routing/routed_acc", op=">=",
         rhs="routing/oracle_acc", how="test split, ProbeX experts"),
]
if gentle_gap:
    results["claims"] += [
        dict(claim="ProbeX at least matches Dense on the gentle tree's raw weights (mean over its layers)",
             paper="ProbeX outperforms the dense linear expert (Model-J: small learning rates)",
             lhs="gentle_probex_minus_dense/X", op=">=", rhs=0, tol=0.005,
             how="test split, mean over gentle_layers and seeds"),
        dict(claim="... and with the standardised delta from the root as input",
             paper="n/a (not the paper's input)", lhs="gentle_probex_minus_dense/ΔX over σ", op=">=", rhs=0,
             tol=0.005, how="test split, mean over gentle_layers and seeds"),
    ]
if scaling:
    tuned = "test split; both tuned on the same validation grid (lr x weight decay, checkpoint on validation)"
    results["claims"] += [
        dict(claim="ProbeX matches Dense at the largest training size (ranks scaled with the layer)",
             paper=beats_dense + " (Model-J: ~700 training models per tree)", lhs="scaling/largest/probex",
             op=">=", rhs="scaling/largest/dense", tol=0.005,
             how=tuned + "; one large tree, mean over seeds, the layer chosen on both experts' validation"),
        dict(claim="... and with section 2's fixed sizes (r_U, r_V, r_T)", paper=beats_dense,
             lhs="scaling/largest/probex_fixed", op=">=", rhs="scaling/largest/dense", tol=0.005,
             how=tuned + "; the same subsets and layer"),
        *([dict(claim=f"... and with scaled ranks and {long_steps} optimiser steps", paper=beats_dense,
                lhs="scaling/largest/probex_long", op=">=", rhs="scaling/largest/dense", tol=0.005,
                how=tuned + f"; ProbeX trained {long_steps} steps, Dense {tune_steps}")]
          if "probex_long" in scaling["largest"] else []),
        dict(claim="ProbeX − Dense grows with more training models (the gap narrows or ProbeX pulls ahead)",
             paper="n/a (the paper trains at one size; it would explain the ranking by Model-J's size)",
             lhs="scaling/gap_largest", op=">", rhs="scaling/gap_smallest",
             how=tuned + "; the gap paired by seed, largest vs smallest training size"),
    ]
    if "width" in scaling:
        results["claims"] += [
            dict(claim="ProbeX matches Dense on the wider tree (same task, ranks scaled with the layer)",
                 paper=beats_dense + " (Model-J: 768-wide layers)", lhs="scaling/width/wide/probex", op=">=",
                 rhs="scaling/width/wide/dense", tol=0.005, how=tuned + "; mean over width_layers and seeds"),
            dict(claim="The ProbeX − Dense gap narrows from the narrow to the wide tree (same fine-tunes)",
                 paper="n/a (one width in the paper)", lhs="scaling/width/wide/gap", op=">",
                 rhs="scaling/width/narrow/gap", how=tuned + "; mean over width_layers and seeds"),
        ]
    if "lora" in scaling:
        results["claims"].append(
            dict(claim="ProbeX matches Dense on the LoRA tree's B·A",
                 paper="ProbeX well above Dense on LoRA weights (SD_200: 0.973 vs 0.801)",
                 lhs="scaling/lora/probex", op=">=", rhs="scaling/lora/dense", tol=0.005,
                 how=tuned + "; mean over lora_layers and seeds"))
results["figures"] = {
    "probex_03_results": "Test accuracy per tree: ProbeX, Dense on its own best layer and on ProbeX's, "
                         "StatNN, chance; each bar names the layer it reads, parameter counts under each "
                         "tree.",
    "probex_03_layer_sweep": "Every weight matrix of the ViT, ProbeX and Dense, validation (solid) and test "
                             "(dotted).",
    "probex_03_ablation": "Probes r_U, projection r_V and representation r_T, one at a time.",
    "probex_03_embedding": "PCA of ProbeX's representation e and of the raw layer, coloured by the class e "
                           "decodes best on validation; per-class kNN accuracy from e vs from the raw layer.",
    "probex_03_learning_curves": "ProbeX and Dense on one large tree, against the number of training models, "
                                 "both tuned on the same validation grid; the gap paired by seed.",
    "probex_03_width": "ProbeX − Dense on the same task and fine-tunes at two widths, ranks scaled with "
                       "the layer.",
    "probex_03_gentle": "Fine-tunes that stay near their root; raw X vs the delta from the root as input.",
}
paper_rerun = {"supervised": "SupViT 0.881", "masked": "MAE 0.771", "contrastive": "DINO 0.725"}
lay = lambda m, n: short_name(layer_of.loc[m, n])
results["headline"] = [
    [f"{n} tree: ProbeX ({lay('ProbeX', n)}) / Dense ({lay('Dense', n)}) / "
     f"Dense (ProbeX's {lay('ProbeX', n)})",
     " / ".join(f"{float(table.loc[m, n]):.3f}" for m in methods[:3]), f"ProbeX {paper_rerun.get(n, 'n/a')}"]
    for n in names] + [
    ["ProbeX (own best layers) / Dense (own best layers) / Dense (ProbeX's layers), mean over trees",
     f"{pm:.3f} / {dm:.3f} / {dpm:.3f}", "ProbeX >= Dense"],
    ["StatNN, all tensors / weight matrices only, mean over trees",
     " / ".join(f"{float(statnn_acc.loc[k, 'mean']):.3f}" for k in ("all tensors", "weight matrices only")),
     "StatNN ~0.55"],
    ["Dense / ProbeX parameters on the same layer (min over trees)", min(same_layer_ratio.values()),
     "13-84x"],
    *([["ProbeX - Dense on the gentle tree, mean over its layers: X / ΔX / ΔX/σ",
        " / ".join(f"{v:+.3f}" for v in gentle_gap.values()), "n/a"]] if gentle_gap else []),
    *([[f"large tree ({short_name(scaling['layer'])}): ProbeX (scaled ranks) / Dense at "
         f"{curve_sizes[0]} and {curve_sizes[-1]} training models",
         f"{scaling['smallest']['probex']:.3f} / {scaling['smallest']['dense']:.3f}; "
         f"{scaling['largest']['probex']:.3f} / {scaling['largest']['dense']:.3f}",
         "ProbeX >= Dense (~700 models)"],
        ["large tree: ProbeX / Dense parameters (scaled ranks)",
         f"{scaling['n_params']['probex']:,} / {scaling['n_params']['dense']:,}", "2.3M / 59M (ViT-B)"]]
      if scaling else []),
    *([f"ProbeX - Dense, width {w['narrow']['embed_dim']} / {w['wide']['embed_dim']} (same task)",
       f"{w['narrow']['gap']:+.3f} / {w['wide']['gap']:+.3f}", "n/a"] for w in [scaling.get("width")] if w),
    *([["ProbeX / Dense on the LoRA tree's B·A",
        f"{scaling['lora']['probex']:.3f} / {scaling['lora']['dense']:.3f}", "SD_200: 0.973 / 0.801"]]
      if scaling and "lora" in scaling else []),
    ["routing accuracy; expert accuracy oracle / routed",
     f"{routing['routing_acc']:.2f}; {routing['oracle_acc']:.3f} / {routing['routed_acc']:.3f}",
     "oracle only"],
]
path = plotting.save_results(results_dir, "03_probex", results)
pd.DataFrame(json.loads(path.read_text())["claims"])
