# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Why one expert per Model Tree: the four motivating experiments
#
# **What you will learn**
# - that a *linear* classifier on ONE layer already predicts which classes a model was fine-tuned on,
#   as long as it is trained and tested inside one Model Tree - and fails across trees;
# - that more models of the same tree help (positive transfer), models of other trees do not (no or
#   negative transfer), and so one expert per tree beats one shared model.
#
# **Mirrors:** ProbeX paper §3 "Motivation" (experiments (a)-(d); the paper's exact settings are not
# public, spec §5). Here on the ViT Model Trees of notebook 01. Accuracy is element-wise over the 40
# classes (chance 0.5).
#
# **Figures:** `probex_02a_within_vs_across.png`, `probex_02b_same_tree_models.png`,
# `probex_02c_other_tree_models.png`, `probex_02d_experts_vs_shared.png`.
# **Results:** `results/02_probex_motivation.json`.

# %% tags=["parameters"]
preset = "default"
zoo_root = "../zoos/default"
figures_dir = "../figures"
results_dir = "../results"
curve_sizes = [10, 20, 40, 80, 154]         # (b) same-tree training models
n_same = 40                                 # (c) fixed same-tree training models ...
n_other = [0, 40, 80, 160, 320, 462]        # ... plus this many from the other trees
seeds = [0, 1, 2]                           # (b), (c): random subsets per point
expert_kinds = ["probex", "dense"]          # (d): the experts / shared models compared
epochs = 200                                # (d): training epochs (batch 32, Adam lr 1e-3)
threads = 1                                 # torch threads (tiny nets: one is fastest)

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from weightspace import plotting
from weightspace.probex import LayerData, motivation
from weightspace.zoo import Zoo

plotting.style()
torch.set_num_threads(threads)
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
# tree A, test it on the test fine-tunes of tree B. The diagonal is "within a tree". The last column
# trains on as many models, drawn evenly from all four trees ("a mixed jungle").

# %%
a = motivation.within_vs_across(data, layer)
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
b = motivation.learning_curve(data, layer, curve_sizes, seeds)
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
c_ = motivation.other_tree_transfer(data, layer, n_same, n_other, seeds)
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

# %% [markdown]
# Why do other trees hurt rather than just not help? The linear classifier has one weight per entry of
# the layer and one intercept. Models of another tree sit around another root, far away in weight space
# (notebook 01, section 3), so the penalty and the fit are spent on explaining *their* labels from
# *their* coordinates; with few same-tree models, what is left for the target tree is a worse classifier.
#
# ## (d) Tree experts vs one shared model
# The same training data either trains one expert per tree (each selected on its tree's validation
# models) or one shared model on the union. Both are ProbeX (notebook 03 explains it) on the same layer.

# %%
d = pd.concat([motivation.experts_vs_shared(data, layer, kind=k, epochs=epochs).assign(kind=k) for k in expert_kinds])
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
    preset=preset, layer=layer, val_acc_by_layer=val_by_layer,
    a_within=a["within"], a_across=a["across"], a_mixed=a["mixed_mean"], a_matrix=a["acc"].tolist(), trees=names,
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
plotting.save_results(results_dir, "02_probex_motivation", results)
{k: v for k, v in results.items() if k not in ("a_matrix", "val_acc_by_layer")}

# %%
checks = {
    "(a) within a tree clearly above across trees": a["within"] - a["across"] > 0.1,
    "(a) the mixed jungle is worse than within a tree": a["mixed_mean"] < a["within"],
    "(b) more same-tree models help": results["b_gain"] > 0.05,
    "(c) other trees do not help (no gain)": results["c_change"] <= 0.0,
    **{f"(d) {k}: experts beat one shared model": v["experts"] > v["shared"] for k, v in results["d"].items()},
}
for claim, ok in checks.items():
    print(("holds  " if ok else "FAILS  ") + claim)
