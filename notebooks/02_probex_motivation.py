# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   weightspace:
#     reads:
#     - zoo/vit_model_trees
#     writes: []
# ---

# %% [markdown]
# # 02 · Why one expert per Model Tree: the four motivating experiments
#
# *ProbeX: [paper](https://arxiv.org/abs/2410.13569), [official code](https://github.com/eliahuhorwitz/ProbeX).
# weightspace is an independent reimplementation, not the authors' code; to cite, see [Citing](../README.md#citing-and-where-the-originals-are).*
#
# **What you will learn**
# - that a *linear* classifier on ONE layer already predicts which classes a model was fine-tuned on,
#   as long as it is trained and tested inside one Model Tree - and fails across trees;
# - that more models of the same tree help (positive transfer), models of other trees do not (no or
#   negative transfer), and so one expert per tree beats one shared model.
#
# **Mirrors:** ProbeX paper §3 "Motivation" (experiments (a)-(d); the paper does not publish their exact
# settings or numbers). Here on the ViT Model Trees of notebook 01. Accuracy is element-wise over the 40
# classes (chance 0.5).
#
# **Figures:** `probex_02a_within_vs_across.png`, `probex_02b_same_tree_models.png`,
# `probex_02c_other_tree_models.png`, `probex_02d_experts_vs_shared.png`.
# **Results:** `results/02_probex_motivation.json`.

# %% tags=["parameters"]
preset: str = "default"
zoo_root: str = "../zoos/default"
figures_dir: str = "../figures"
results_dir: str = "../results"
curve_sizes: list[int] = [10, 20, 40, 80, 154]         # (b) same-tree training models
n_same: int = 40                                 # (c) fixed same-tree training models ...
n_other: list[int] = [0, 40, 80, 160, 320, 462]        # ... plus this many from the other trees
seeds: list[int] = [0, 1, 2]                           # (b), (c): random subsets per point
expert_kinds: list[str] = ["probex", "dense"]          # (d): the experts / shared models compared
epochs: int = 200                                # (d): training epochs (batch 32, Adam lr 1e-3)
threads: int = 1                                 # torch threads (tiny nets: one is fastest)
seed: int = 0                                    # (a) mixed draw, (d) expert init; shifts (b), (c) subsets by 100 x seed

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown

from weightspace import plotting
from weightspace.probex import LayerData, motivation
from weightspace.zoo import Zoo

plotting.style()
torch.set_num_threads(threads)
subset_seeds = [s + 100 * seed for s in seeds]      # seed 0: the seeds as given
zoo = Zoo.open(f"{zoo_root}/vit_model_trees", kind="vit-model-trees")   # made by notebook 01
data = LayerData(zoo)
names = [data.tree_names[t] for t in data.trees]
cols = plotting.colors(len(names))
print(zoo, "| fine-tunes per tree and split:",
      {n: {s: int(data.mask(t, s).sum()) for s in ("train", "val", "test")} for t, n in zip(data.trees, names)})

# %% [markdown]
# ## Which layer?
# All four experiments use one layer, chosen on **validation** accuracy of the within-tree linear
# classifier averaged over the trees (test models are never looked at). Every weight matrix of the ViT
# is a candidate (notebook 03 sweeps them with ProbeX too).

# %%
from weightspace.probex.baselines import fit_ridge

val_by_layer = {}
for name in data.layers():
    val_by_layer[name] = float(np.mean([fit_ridge(data.split(name, t, "train"), data.split(name, t, "val"),
                                                  motivation.ALPHAS)[1] for t in data.trees]))
layer = max(val_by_layer, key=val_by_layer.get)
print("validation accuracy per layer:", {k: round(v, 3) for k, v in val_by_layer.items()})
print("chosen layer:", layer)

# %% [markdown]
# ## (a) Within a tree vs across trees
# Train a linear classifier (ridge regression on the flattened layer) on the training fine-tunes of
# tree A, test it on the test fine-tunes of tree B. The diagonal is "within a tree". The last row
# trains on as many models as one tree has, drawn evenly from all trees ("a mixed jungle"), and is
# tested on each tree.

# %%
a = motivation.within_vs_across(data, layer, seed=seed)
M = np.concatenate([a["acc"], a["mixed"][None]], 0)
fig, ax = plt.subplots(figsize=(5.4, 4.4))
im = ax.imshow(M, cmap="viridis", vmin=0.45, vmax=max(0.9, M.max()))
plotting.annotate_cells(ax, M, fontsize=9, dark_below=0.7)
ax.set_xticks(range(len(names)), names, rotation=20)
ax.set_yticks(range(len(names) + 1), names + [f"mixed ({a['n_mixed_train']})"])
ax.set_xlabel("test tree"); ax.set_ylabel("training tree")
ax.grid(False)
fig.colorbar(im, ax=ax, label="element-wise accuracy")
ax.set_title(f"(a) linear classifier on {layer.replace('.weight', '')}\n"
             f"within {a['within']:.2f} · across {a['across']:.2f} · mixed {a['mixed_mean']:.2f} (chance 0.5)")
plotting.savefig(fig, figures_dir, "probex_02a_within_vs_across")

# %% [markdown]
# ## (b) More models of the same tree help
# Test accuracy of the within-tree linear classifier as the number of training models of that tree grows
# (mean and spread over random subsets).

# %%
b = motivation.learning_curve(data, layer, curve_sizes, subset_seeds)
fig, ax = plt.subplots(figsize=(5.4, 3.8))
for t, n, c in zip(data.trees, names, cols):
    g = b[b.tree == t].groupby("n_train").test_acc
    ax.errorbar(g.mean().index, g.mean(), yerr=g.std(), marker="o", color=c, label=n, capsize=2)
ax.axhline(0.5, color="k", lw=0.8, ls="--")
ax.set_xscale("log"); ax.set_xlabel("same-tree training models"); ax.set_ylabel("test accuracy")
ax.set_title("(b) positive transfer within a tree"); ax.legend(fontsize=8)
plotting.savefig(fig, figures_dir, "probex_02b_same_tree_models")

# %% [markdown]
# ## (c) Models of other trees do not help
# Keep `n_same` training models of the target tree and add more and more training models of the three
# other trees. The classifier is selected and tested on the target tree only.

# %%
c_ = motivation.other_tree_transfer(data, layer, n_same, n_other, subset_seeds)
fig, ax = plt.subplots(figsize=(5.4, 3.8))
for t, n, c in zip(data.trees, names, cols):
    g = c_[c_.tree == t].groupby("n_other").test_acc
    ax.errorbar(g.mean().index, g.mean(), yerr=g.std(), marker="o", color=c, label=n, capsize=2)
ax.axhline(0.5, color="k", lw=0.8, ls="--")
ax.set_xlabel(f"models of other trees added to {n_same} same-tree models"); ax.set_ylabel("test accuracy")
ax.set_title("(c) other trees: no positive transfer"); ax.legend(fontsize=8)
plotting.savefig(fig, figures_dir, "probex_02c_other_tree_models")
c_summary = c_.groupby(["tree", "n_other"]).test_acc.mean().unstack()
c_summary

# %%
c_end = c_.groupby("n_other").test_acc.mean()
Markdown(f"**This run:** adding {c_end.index[-1]} models of other trees to {n_same} same-tree models changes "
         f"the "
         f"test accuracy from {c_end.iloc[0]:.3f} to {c_end.iloc[-1]:.3f} (mean over trees and seeds): "
         + ("they hurt." if c_end.iloc[-1] < c_end.iloc[0] else "they do not hurt here."))

# %% [markdown]
# When other trees hurt rather than just not help, why? The linear classifier has one weight per entry of
# the layer and one intercept. Models of another tree sit around another root, far away in weight space
# (notebook 01, section 3), so the penalty and the fit are spent on explaining *their* labels from
# *their* coordinates; with few same-tree models, what is left for the target tree is a worse classifier.

# %% [markdown]
# ## (d) Tree experts vs one shared model
# The same training data either trains one expert per tree (each selected on its tree's validation
# models) or one shared model on the union, on the same layer. The comparison is made for each kind in
# `expert_kinds`: ProbeX (notebook 03 explains it) and Dense (one linear map from the flattened layer to
# the labels, trained like ProbeX).

# %%
d = pd.concat([motivation.experts_vs_shared(data, layer, kind=k, epochs=epochs, seed=seed).assign(kind=k) for k in expert_kinds])
piv = d.pivot_table(index=["kind", "tree"], columns="model", values="test_acc")
fig, axes = plt.subplots(1, len(expert_kinds), figsize=(5.2 * len(expert_kinds), 3.6), squeeze=False)
xs = np.arange(len(names))
for ax, k in zip(axes[0], expert_kinds):
    p = piv.loc[k]
    ax.bar(xs - 0.2, p["expert"], 0.4, label="one expert per tree")
    ax.bar(xs + 0.2, p["shared"], 0.4, label="one shared model")
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(xs, names); ax.set_ylim(0.4, 1.0); ax.set_ylabel("test accuracy")
    ax.set_title(f"(d) {'ProbeX' if k == 'probex' else 'Dense'}: experts {p['expert'].mean():.3f} vs shared {p['shared'].mean():.3f}")
    ax.legend(fontsize=8, loc="upper right")
plotting.savefig(fig, figures_dir, "probex_02d_experts_vs_shared")
piv

# %% [markdown]
# ## What the four experiments say (computed from this run)

# %%
curve = b.groupby("n_train").test_acc.mean()
other = c_.groupby("n_other").test_acc.mean()
results = dict(
    preset=preset, paper="ProbeX", seed=seed, layer=layer, val_acc_by_layer=val_by_layer,
    a_within=a["within"], a_across=a["across"], a_within_minus_across=a["within"] - a["across"],
    a_mixed=a["mixed_mean"], a_matrix=a["acc"].tolist(), trees=names,
    b_curve={int(k): float(v) for k, v in curve.items()},
    b_gain=float(curve.iloc[-1] - curve.iloc[0]),
    c_curve={int(k): float(v) for k, v in other.items()},
    c_change=float(other.iloc[-1] - other.iloc[0]),
    d={k: dict(experts=float(piv.loc[k]["expert"].mean()), shared=float(piv.loc[k]["shared"].mean()),
               per_tree={names[i]: dict(expert=float(piv.loc[(k, t), "expert"]), shared=float(piv.loc[(k, t), "shared"]))
                         for i, t in enumerate(data.trees)}) for k in expert_kinds})
results["figures"] = {
    "probex_02a_within_vs_across": "(a) A linear classifier on one layer, trained on one tree (rows) and tested on "
                                   "another (columns); the last row trains on a mix of all trees.",
    "probex_02b_same_tree_models": "(b) More training models of the same tree help.",
    "probex_02c_other_tree_models": "(c) Adding models of other trees to a fixed same-tree set does not help.",
    "probex_02d_experts_vs_shared": "(d) One expert per tree against one shared model on the same data.",
}
results["headline"] = [
    ["(a) within a tree / across trees / mixed", f"{a['within']:.2f} / {a['across']:.2f} / {a['mixed_mean']:.2f}",
     "within >> across (numbers not public)"],
    [f"(b) accuracy, {curve.index[0]} -> {curve.index[-1]} same-tree models",
     f"{curve.iloc[0]:.2f} -> {curve.iloc[-1]:.2f}", "rises"],
    [f"(c) accuracy, +0 -> +{other.index[-1]} other-tree models", f"{other.iloc[0]:.2f} -> {other.iloc[-1]:.2f}",
     "falls (negative transfer)"],
] + [[f"(d) {k}: experts / shared", f"{v['experts']:.2f} / {v['shared']:.2f}", "experts win"]
     for k, v in results["d"].items()]
n0, n1, o0, o1 = int(curve.index[0]), int(curve.index[-1]), int(other.index[0]), int(other.index[-1])
ridge = f"ridge classifier on {layer}, element-wise accuracy on test fine-tunes (chance 0.5)"
results["claims"] = [
    dict(claim="(a) a linear classifier works within a tree, clearly better (by 0.1) than across trees",
         paper="within >> across (numbers not public)", lhs="a_within_minus_across", op=">", rhs=0.1,
         how=f"{ridge}; mean of the diagonal of (a) minus mean off the diagonal"),
    dict(claim="(a) training on a mixed jungle is worse than within a tree",
         paper="within a tree > a mix of trees (numbers not public)", lhs="a_mixed", op="<", rhs="a_within",
         how=f"{ridge}; the mixed row of (a), same number of training models, mean over test trees"),
    dict(claim="(b) more same-tree models help",
         paper="accuracy rises with same-tree models (numbers not public)",
         lhs=f"b_curve/{n1}", op=">", rhs=f"b_curve/{n0}",
         how=f"{ridge}; {n1} vs {n0} training models, mean over trees and {len(seeds)} random subsets"),
    dict(claim="(c) models of other trees do not help",
         paper="adding other trees lowers accuracy: negative transfer (numbers not public)",
         lhs=f"c_curve/{o1}", op="<=", rhs=f"c_curve/{o0}",
         how=f"{ridge}; {n_same} same-tree models plus {o1} vs {o0} of other trees, "
             "mean over trees and seeds"),
] + [dict(claim=f"(d) {k}: one expert per tree beats one shared model",
          paper="per-tree experts beat one shared model (numbers not public)",
          lhs=f"d/{k}/experts", op=">", rhs=f"d/{k}/shared",
          how=f"{'ProbeX' if k == 'probex' else 'Dense'} on {layer}, {epochs} epochs, same training models; "
              "test accuracy, mean over trees")
     for k in expert_kinds]
path = plotting.save_results(results_dir, "02_probex_motivation", results)
plotting.claims_table(path)
