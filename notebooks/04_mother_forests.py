# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · MoTHer I: forests of fine-tuned ViTs, and the two weight properties MoTHer relies on
#
# **What you will learn**
# - what a *Model Graph* is: models linked by "was fine-tuned from", a forest of *Model Trees*;
# - how we build one the way the paper's VTHR benchmark is built — 5 independently pre-trained roots,
#   each → 4 children → 4 grandchildren (21 models, 20 edges per tree), every child fine-tuned on a new task —
#   three times: full fine-tuning (**FT**), LoRA with varying ranks (**LoRA-V**) and one fixed rank (**LoRA-F**);
# - **Property 1**: the weight distance between two models grows with the number of tree edges between them;
# - **Property 2**: weight *kurtosis* (how heavy-tailed a matrix is) rises while a root is pre-trained and
#   falls with every fine-tuning step after it — so it tells parent from child.
#
# Mirrors MoTHer (Horwitz, Shul, Hoshen, ICLR 2025), Sections 3-4: the VTHR dataset, the distance/tree
# correlation and the kurtosis-over-training figure. Notebook 05 recovers the trees.
#
# **Figures written:** `mother_01_kurtosis_training.png`, `mother_02_distance_vs_edges.png`,
# `mother_02b_direction_layers.png`. **Results:** `results/04_mother_forests.json`.

# %% tags=["parameters"]
preset = "default"
zoo_root = "../zoos/default"
figures_dir = "../figures"
results_dir = "../results"
n_trees = 5            # Model Trees (one pre-trained root each)
n_children = 4         # children per root and grandchildren per child (VTHR: 4)
root_steps = 1000      # masked-patch pre-training steps of each root
steps = 200            # fine-tuning steps of every other model
embed_dim = 64         # ViT width (8x8 digits, patch 2, 2 blocks)
num_heads = 4
ranks_v = [1, 2, 4, 8] # LoRA-V ranks (VTHR: 8, 16, 32, 64 at width 768)
rank_f = 4             # LoRA-F rank (VTHR: 16)
executor = "local"     # "local" process pool, "inline", "dask" or "slurm"
workers = 2

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from weightspace import plotting
from weightspace.mother import direction_scores, distance_matrix
from weightspace.mother.analysis import edge_hops, falls_fraction
from weightspace.zoo.forests import TASKS, VARIANT_DISTANCE, VARIANT_NAMES, VARIANTS, build_forests

plotting.style()
zoo_path = f"{zoo_root}/mother_forests"
DISTANCE = {"ft": "ft", "lora-v": "lora", "lora-f": "lora"}

# %% [markdown]
# ## 1 · Build the forests
# Roots: the same small ViT, each pre-trained from its own random seed by masked-patch reconstruction
# (like MAE) on four styles of the digits. Children: fine-tuned from their parent's weights with a fresh
# classification head on one **task** — the ten digits in one of eight styles — never their parent's or a
# sibling's task. FT trains every weight; LoRA freezes the parent and trains rank-r adapters on the
# attention query and value matrices, then **merges** them in fp32 (as the VTHR models on the Hub are),
# keeping the factors beside the merged weights. The three forests share the five roots.
# Re-running resumes; a finished zoo opens at once.

# %%
t0 = time.time()
zoo = build_forests(zoo_path, n_trees=n_trees, n_children=n_children, root_steps=root_steps, steps=steps,
                    ranks_v=ranks_v, rank_f=rank_f, vit=dict(embed_dim=embed_dim, num_heads=num_heads),
                    executor=executor, workers=workers, preset=preset)
build_seconds = time.time() - t0
table = zoo.table
print(f"{len(zoo)} models in {build_seconds:.0f} s; tasks: {list(TASKS)}")
table[["model_id", "parent_id", "tree_id", "depth", "variant", "task", "rank", "test_acc"]].head(8)

# %%
fine = table[table.depth > 0]
summary = fine.groupby("variant").agg(models=("model_id", "size"), mean_test_acc=("test_acc", "mean"),
                                    ranks=("rank", lambda r: sorted(set(r))))
summary

# %% [markdown]
# Each fine-tune is scored on the test images of its own task (ten classes; chance 10%). These are small
# models trained for a few hundred steps; what matters for MoTHer is that each edge is a real fine-tune
# on a real, different task.
#
# ## 2 · Property 2: kurtosis along training
# Excess kurtosis of a weight matrix, $\kappa(W) = m_4 / m_2^2 - 3$ over its entries, is 0 for a Gaussian and
# large when a few weights are much bigger than the rest. MoTHer sums it over chosen matrices: the attention
# output projections for FT, the value matrices for LoRA. The builder logged both along every run.
# Below: (a) while each root is pre-trained; (b, c) along the fine-tuning of one root's children and then
# of their children, which start where their parent ended.

# %%
roots = sorted(zoo.select(depth=0))
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
col = plotting.colors(len(roots))
for i, r in enumerate(roots):
    log = zoo.row(r)["kurtosis_log"]
    axes[0].plot(log["step"], log["proj"], color=col[i], label=r)
    axes[0].plot(log["step"], log["value"], color=col[i], ls="--")
axes[0].plot([], [], color="0.3", label="attention output")
axes[0].plot([], [], color="0.3", ls="--", label="value")
axes[0].set(title="(a) pre-training a root (generalisation stage)", xlabel="pre-training step",
            ylabel="summed excess kurtosis")
axes[0].legend(fontsize=7, ncol=2, loc="upper left")


def generations(ax, variant, key, title):
    """The root's children from step 0, their children from where they ended."""
    root = "t0-root"
    end = zoo.row(root)["kurtosis_log"][key][-1]
    ax.axhline(end, color="0.6", lw=1, ls=":", label="root")
    kids = sorted(i for i in zoo.select(variant=variant, depth=1) if zoo.row(i)["parent_id"] == root)
    for j, c in enumerate(kids):
        log = zoo.row(c)["kurtosis_log"]
        ax.plot(log["step"], log[key], color=col[j], lw=2, label=f"child {c.split('-')[-1]}")
        for g in sorted(i for i in zoo.select(variant=variant, depth=2) if zoo.row(i)["parent_id"] == c):
            lg = zoo.row(g)["kurtosis_log"]
            ax.plot(np.array(lg["step"]) + log["step"][-1], lg[key], color=col[j], lw=0.8, alpha=0.8)
    ax.axvline(steps, color="0.8", lw=1)
    ax.set(title=title, xlabel="fine-tuning step (children, then grandchildren)", ylabel="summed excess kurtosis")
    ax.legend(fontsize=7)


generations(axes[1], "ft", "proj", "(b) full fine-tuning: attention output")
generations(axes[2], "lora-v", "value", "(c) LoRA-V: value matrices")
fig.tight_layout()
plotting.savefig(fig, figures_dir, "mother_01_kurtosis_training")

# %% [markdown]
# Pre-training grows the tails; fine-tuning — dense or low-rank — erodes them, a bit more with each
# generation. This is the paper's explanation of the direction signal: a child is a parent plus an update
# that is not itself heavy-tailed, and adding it dilutes the parent's outliers.
#
# **Is it monotone edge by edge?** MoTHer only needs $\kappa(\text{child}) < \kappa(\text{parent})$ on each
# edge. Below: the fraction of the 100 true edges of each forest where the summed kurtosis falls, for
# several choices of matrices (FT moves every matrix; LoRA only the adapted query and value ones).

# %%
GROUPS = {"attention output (FT paper)": "timm-vit:output", "value (LoRA paper)": "timm-vit:value",
          "all attention (q, k, v, o)": "timm-vit:attention", "MLP": "timm-vit:mlp"}
rows, kurt = [], {}
for variant in VARIANTS:
    ids = zoo.variant(variant)
    models, par = zoo.state_dicts(ids), zoo.parents(ids)
    for gname, spec in GROUPS.items():
        k = dict(zip(ids, direction_scores(models, spec, VARIANT_DISTANCE[variant])))
        kurt[(variant, gname)] = k
        moved = not (variant != "ft" and gname in ("attention output (FT paper)", "MLP"))
        rows.append(dict(variant=VARIANT_NAMES[variant], matrices=gname,
                         falls=falls_fraction(k, par) if moved else np.nan))
falls = pd.DataFrame(rows).pivot(index="matrices", columns="variant", values="falls")[list(VARIANT_NAMES.values())]
falls

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
falls.plot.barh(ax=ax, color=plotting.colors(3), width=0.8)
ax.legend(title="forest", bbox_to_anchor=(1.01, 1), loc="upper left")
ax.axvline(0.5, color="0.5", ls=":", lw=1)
ax.set(xlim=(0, 1.05), xlabel="fraction of true edges where kurtosis falls parent → child", ylabel="")
ax.set_title("Which matrices carry the direction? (LoRA never changes the output projection or MLP)")
plotting.savefig(fig, figures_dir, "mother_02b_direction_layers")

# %% [markdown]
# (No bar: LoRA leaves those matrices untouched, so their kurtosis is the root's on every node.) The
# trend is a sum over matrices, and a sum over more (or larger) matrices is steadier: that is why the FT
# row "all attention" and, for LoRA, adding the adapted query matrices to the value ones do better than a
# single kind of matrix. Width matters for the same reason — try `embed_dim=32`: each attention matrix
# then has 1,024 entries instead of 4,096 and the edge-by-edge trend gets visibly noisier; the ViT-B
# matrices of the paper have 590,000.
#
# ## 3 · Property 1: weight distance tracks tree distance
# For every pair of models in a forest: the number of tree edges between them (1 = parent/child,
# 2 = siblings or grandparent/grandchild, 3, 4 = cousins; "other tree" = different roots) against MoTHer's
# distance — the mean over the 8 attention matrices of the RMS difference for FT, the summed rank of the
# value-matrix differences for LoRA.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
spearman = {}
for ax, variant in zip(axes, VARIANTS):
    ids = zoo.variant(variant)
    D = distance_matrix(zoo.state_dicts(ids), "timm-vit", VARIANT_DISTANCE[variant])
    hops = edge_hops(zoo.parents(ids), ids)
    iu = np.triu_indices(len(ids), 1)
    h, d = hops[iu], D[iu]
    cats = sorted(set(h[h > 0])) + [-1]
    data = [d[h == c] for c in cats]
    ax.boxplot(data, showfliers=False)
    for x, v in enumerate(data, 1):
        ax.scatter(x + np.random.default_rng(x).uniform(-0.2, 0.2, len(v)), v, s=3, alpha=0.3, color="0.3")
    ax.set_xticks(range(1, len(cats) + 1), [str(c) for c in cats[:-1]] + ["other\ntree"])
    ax.set(title=VARIANT_NAMES[variant], xlabel="edges between the two models",
           ylabel="mean RMS difference" if VARIANT_DISTANCE[variant] == "ft" else "summed rank of difference")
    within = h > 0
    spearman[variant] = float(spearmanr(h[within], d[within]).statistic)
    ax.text(0.02, 0.95, f"Spearman ρ within trees = {spearman[variant]:.2f}", transform=ax.transAxes, va="top")
fig.tight_layout()
plotting.savefig(fig, figures_dir, "mother_02_distance_vs_edges")

# %% [markdown]
# Parents and children are the closest pairs; models of different roots are far apart (which is what lets
# notebook 05 cluster a forest into its trees). For LoRA the rank distance is exact arithmetic: a merged
# rank-r child differs from its parent by a rank-r matrix, siblings by $r_1 + r_2$, and models of different
# roots by a full-rank one.

# %%
results = {
    "models": len(zoo), "build_seconds": build_seconds,
    "mean_test_acc": {VARIANT_NAMES[s]: float(fine[fine.variant == s].test_acc.mean()) for s in VARIANTS},
    "root_kurtosis_final": {r: {"proj": zoo.row(r)["kurtosis_log"]["proj"][-1],
                                "value": zoo.row(r)["kurtosis_log"]["value"][-1]} for r in roots},
    "root_kurtosis_rises": bool(all(zoo.row(r)["kurtosis_log"]["proj"][-1] > zoo.row(r)["kurtosis_log"]["proj"][0]
                                    for r in roots)),
    "edges_where_kurtosis_falls": {f"{c} / {m}": v for m, row in falls.iterrows() for c, v in row.items()
                                   if not np.isnan(v)},
    "spearman_distance_vs_edges": {VARIANT_NAMES[s]: v for s, v in spearman.items()},
}
results["figures"] = {
    "mother_01_kurtosis_training": "Kurtosis of the attention weights rises along pre-training and falls along "
                                   "fine-tuning (the direction signal).",
    "mother_02b_direction_layers": "Fraction of true edges where the summed kurtosis falls, by the matrices summed.",
    "mother_02_distance_vs_edges": "Weight distance against the number of tree edges between two models.",
}
results["headline"] = [
    ["roots whose kurtosis rose in pre-training", f"{sum(zoo.row(r)['kurtosis_log']['proj'][-1] > zoo.row(r)['kurtosis_log']['proj'][0] for r in roots)} / {len(roots)}", "rises"],
] + [[f"Spearman rho, distance vs edges ({k})", v, "strong correlation"]
     for k, v in results["spearman_distance_vs_edges"].items()]
plotting.save_results(results_dir, "04_mother_forests", results)
results
