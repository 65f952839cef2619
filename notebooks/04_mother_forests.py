# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   weightspace:
#     reads: []
#     writes:
#     - zoo/mother_forests
#     - zoo/mother_forests_select
# ---

# %% [markdown]
# # 04 · MoTHer I: forests of fine-tuned ViTs, and the two weight properties MoTHer relies on
#
# *MoTHer: [paper](https://arxiv.org/abs/2405.18432), [official code](https://github.com/eliahuhorwitz/MoTHer).
# weightspace is an independent reimplementation, not the authors' code; to cite, see [Citing](../README.md#citing-and-where-the-originals-are).*
#
# **What you will learn**
# - what a *Model Graph* is: models linked by "was fine-tuned from", a forest of *Model Trees*;
# - how we build one the way the paper's VTHR benchmark is built — 5 independently pre-trained roots,
#   each → 4 children → 4 grandchildren (21 models, 20 edges per tree), every child fine-tuned on a new task —
#   three times: full fine-tuning (**FT**), LoRA with varying ranks (**LoRA-V**) and one fixed rank (**LoRA-F**);
# - **Property 1**: the weight distance between two models grows with the number of tree edges between them;
# - **Property 2**: weight *kurtosis* (how heavy-tailed a matrix is) rises while a root is pre-trained and
#   falls with every fine-tuning step after it — so it tells parent from child;
# - which matrices to take the kurtosis of, chosen on a second, separate forest (so that notebook 05 can
#   score the choice on edges it was not chosen on).
#
# Mirrors MoTHer (Horwitz, Shul, Hoshen, ICLR 2025), Sections 3-4: the VTHR dataset, the distance/tree
# correlation and the kurtosis-over-training figure. Notebook 05 recovers the trees.
#
# **Figures written:** `mother_01_kurtosis_training.png`, `mother_02_distance_vs_edges.png`,
# `mother_02b_direction_layers.png`. **Results:** `results/04_mother_forests.json` (with the claims tested).

# %% tags=["parameters"]
preset: str = "default"
zoo_root: str = "../zoos/default"
figures_dir: str = "../figures"
results_dir: str = "../results"
n_trees: int = 5            # Model Trees (one pre-trained root each)
n_children: int = 4         # children per root and grandchildren per child (VTHR: 4)
root_steps: int = 1000      # masked-patch pre-training steps of each root
steps: int = 200            # fine-tuning steps of every other model
embed_dim: int = 64         # ViT width (8x8 digits, patch 2, 2 blocks)
num_heads: int = 4
ranks_v: list[int] = [1, 2, 4, 8] # LoRA-V ranks (VTHR: 8, 16, 32, 64 at width 768)
rank_f: int = 4             # LoRA-F rank (VTHR: 16)
select_trees: int = 2       # trees of the separate LoRA forests the direction matrices are chosen on
select_seed: int = 1        # their seed (the main forests use seed 0)
executor: str = "local"     # "local" process pool, "inline", "dask" or "slurm"
workers: int = 2
seed: int = 0               # the main forests' seed; the selection forests use select_seed + 1000 x seed

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown
from scipy.stats import spearmanr

from weightspace import plotting
from weightspace.mother import distance_matrix
from weightspace.mother.analysis import DIRECTION_GROUPS, choose_direction, edge_hops, falls_by_matrices
from weightspace.zoo.forests import TASKS, VARIANT_DISTANCE, VARIANT_NAMES, VARIANTS, build_forests

plotting.style()
zoo_path = f"{zoo_root}/mother_forests"
select_forest_seed = select_seed + 1000 * seed      # seed 0: select_seed as given

# %% [markdown]
# ## 1 · Build the forests
# Roots: the same small ViT, each pre-trained from its own random seed by masked-patch reconstruction
# (like MAE) on four styles of the digits. Children: fine-tuned from their parent's weights with a fresh
# classification head on one **task** — the ten digits in one of eight styles — never their parent's or a
# sibling's task. FT trains every weight; LoRA freezes the parent and trains rank-r adapters on the
# attention query and value matrices, then **merges** them in fp32 (as the VTHR models on the Hub are),
# keeping the factors beside the merged weights. The three forests share their roots.
# Re-running resumes; a finished zoo opens at once.

# %%
t0 = time.time()
common = dict(n_children=n_children, root_steps=root_steps, steps=steps, ranks_v=ranks_v, rank_f=rank_f,
              vit=dict(embed_dim=embed_dim, num_heads=num_heads), executor=executor, workers=workers,
              preset=preset)
zoo = build_forests(zoo_path, n_trees=n_trees, seed=seed, **common)
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
# models trained briefly; what matters for MoTHer is that each edge is a real fine-tune
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
# The paper's explanation of the direction signal: pre-training grows the tails, and a child is a parent plus
# an update that is not itself heavy-tailed, so adding it dilutes the parent's outliers. In this run:

# %%
rises = {key: sum(zoo.row(r)["kurtosis_log"][key][-1] > zoo.row(r)["kurtosis_log"][key][0] for r in roots)
         for key in ("proj", "value")}
first_gen = {}
for variant, key in (("ft", "proj"), ("lora-v", "value"), ("lora-f", "value")):
    kids = zoo.select(variant=variant, depth=1)
    first_gen[VARIANT_NAMES[variant]] = float(np.mean([zoo.row(c)["kurtosis_log"][key][-1]
                                                       < zoo.row(c)["kurtosis_log"][key][0] for c in kids]))
Markdown(f"- pre-training: the summed kurtosis rose on {rises['proj']} of {len(roots)} roots (attention output) "
         f"and on {rises['value']} of {len(roots)} (value);\n- fine-tuning a root's children: it fell along the "
         "run in " + ", ".join(f"{v:.0%} of the {f} children" for f, v in first_gen.items())
         + " (attention output for FT, value for LoRA).")

# %% [markdown]
# **Is it monotone edge by edge?** MoTHer only needs $\kappa(\text{child}) < \kappa(\text{parent})$ on each
# edge. Below: the fraction of the true edges of each forest where the summed kurtosis falls, for
# several choices of matrices (FT moves every matrix; LoRA only the adapted query and value ones).

# %%
falls_all = {VARIANT_NAMES[v]: falls_by_matrices(zoo.state_dicts(zoo.variant(v)), zoo.parents(zoo.variant(v)),
                                                 DIRECTION_GROUPS, VARIANT_DISTANCE[v]) for v in VARIANTS}
n_edges = sum(p is not None for p in zoo.parents(zoo.variant(VARIANTS[0])).values())
falls = pd.DataFrame(falls_all).loc[list(DIRECTION_GROUPS)]
print(f"{n_edges} true edges per forest")
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
# trend is a sum over matrices, and a sum over more (or larger) matrices may be steadier than a single kind
# of matrix. What this run shows:

# %%
paper_group = {"FT": "attention output (FT paper)", "LoRA-V": "value (LoRA paper)",
               "LoRA-F": "value (LoRA paper)"}
lines = []
for f, col in falls.items():
    best = choose_direction(col.to_dict())
    lines.append(f"- **{f}**: the paper's matrices ({paper_group[f]}) fall on {col[paper_group[f]]:.0%} "
                 f"of the edges; the best group here is *{best}* ({col[best]:.0%})"
                 + ("" if best != paper_group[f] else " — the paper's choice") + ".")
Markdown("\n".join(lines) + f"\n\nEach attention matrix here has {embed_dim ** 2:,} entries; a ViT-B one "
         f"{768 ** 2:,}. Try a smaller `embed_dim` to see how width changes the table.")

# %% [markdown]
# ## 2b · Choosing the direction matrices on a separate forest
# Picking the best row of that table and then scoring MoTHer with it on the same edges would grade the choice
# on the data it was chosen on. So the choice is made on a second pair of LoRA forests: new roots and new
# fine-tunes (another seed, fewer trees, the same settings otherwise), never used again. Per LoRA variant we
# take the group of matrices whose kurtosis falls on the most edges there (a tie keeps the paper's choice);
# notebook 05 scores that choice on the main forests.

# %%
t0 = time.time()
select_zoo = build_forests(f"{zoo_root}/mother_forests_select", n_trees=select_trees, seed=select_forest_seed,
                           variants=["lora-v", "lora-f"], **common)
select_seconds = time.time() - t0
falls_select = {}
for v in ("lora-v", "lora-f"):
    ids = select_zoo.variant(v)
    falls_select[VARIANT_NAMES[v]] = falls_by_matrices(select_zoo.state_dicts(ids), select_zoo.parents(ids),
                                                       DIRECTION_GROUPS, VARIANT_DISTANCE[v])
direction_choice = {f: choose_direction(fr) for f, fr in falls_select.items()}
print(f"{len(select_zoo)} models in {select_seconds:.0f} s; chosen: {direction_choice}")
pd.DataFrame(falls_select).loc[list(DIRECTION_GROUPS)]

# %% [markdown]
# ## 3 · Property 1: weight distance tracks tree distance
# For every pair of models in a forest: the number of tree edges between them (1 = parent/child,
# 2 = siblings or grandparent/grandchild, 3, 4 = cousins; "other tree" = different roots) against MoTHer's
# distance — the mean over the attention matrices of the RMS difference for FT, the summed rank of the
# value-matrix differences for LoRA.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
spearman, closest = {}, {}
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
    closest[VARIANT_NAMES[variant]] = dict(parent_child=float(d[h == 1].mean()),
                                           other_tree=float(d[h == -1].mean()),
                                           other_tree_min=float(d[h == -1].min()),
                                           within_max=float(d[within].max()))
    spearman[variant] = float(spearmanr(h[within], d[within]).statistic)
    ax.text(0.02, 0.95, f"Spearman ρ within trees = {spearman[variant]:.2f}", transform=ax.transAxes,
            va="top")
fig.tight_layout()
plotting.savefig(fig, figures_dir, "mother_02_distance_vs_edges")

# %% [markdown]
# For LoRA the rank distance is exact arithmetic: a merged rank-r child differs from its parent by a rank-r
# matrix, siblings by $r_1 + r_2$, and models of different roots by a full-rank one. In this run:

# %%
Markdown("\n".join(
    f"- **{f}**: parent/child pairs {c['parent_child']:.3g} on average, pairs from different trees "
    f"{c['other_tree']:.3g}; the closest pair of different trees is "
    + ("farther apart than every pair within a tree" if c["other_tree_min"] > c["within_max"]
       else "closer than some pairs within a tree")
    + f"; Spearman ρ within trees {spearman[v]:.2f}." for (f, c), v in zip(closest.items(), VARIANTS)))

# %%
results = {
    "paper": "MoTHer", "seed": seed,
    "models": len(zoo), "build_seconds": build_seconds, "n_roots": len(roots), "edges_per_forest": n_edges,
    "mean_test_acc": {VARIANT_NAMES[s]: float(fine[fine.variant == s].test_acc.mean()) for s in VARIANTS},
    "root_kurtosis_final": {r: {"proj": zoo.row(r)["kurtosis_log"]["proj"][-1],
                                "value": zoo.row(r)["kurtosis_log"]["value"][-1]} for r in roots},
    "roots_whose_kurtosis_rose": {"attention output": rises["proj"], "value": rises["value"]},
    "children_whose_kurtosis_fell_while_fine_tuned": first_gen,
    "kurtosis_falls": {f: {g: v for g, v in col.items() if v == v} for f, col in falls_all.items()},
    "spearman_distance_vs_edges": {VARIANT_NAMES[s]: v for s, v in spearman.items()},
    "distance_by_pair": closest,
    "direction_selection": {"forest": f"{zoo_root}/mother_forests_select", "seed": select_forest_seed,
                            "trees": select_trees, "models": len(select_zoo), "build_seconds": select_seconds,
                            "kurtosis_falls": {f: {g: v for g, v in fr.items() if v == v}
                                               for f, fr in falls_select.items()},
                            "chosen": direction_choice,
                            "chosen_layers": {f: DIRECTION_GROUPS[g] for f, g in direction_choice.items()}},
}
results["claims"] = [
    dict(claim=f"kurtosis of the {name} matrices rises during pre-training, on every root",
         paper="generalisation stage (pre-training): weight outliers, hence kurtosis, grow (qualitative)",
         lhs=f"roots_whose_kurtosis_rose/{name}", op=">=", rhs="n_roots",
         how=f"summed excess kurtosis of the {name} matrices, last logged step vs the first, per root")
    for name in ("attention output", "value")
] + [
    dict(claim=f"{f}: kurtosis falls from parent to child on most true edges (the paper's matrices)",
         paper="specialisation stage (fine-tuning): kurtosis decreases, monotone (qualitative)",
         lhs=f"kurtosis_falls/{f}/{paper_group[f]}", op=">", rhs=0.5,
         how=f"fraction of the {n_edges} true edges with kurt(child) < kurt(parent), summed over the "
             f"{paper_group[f].split(' (')[0]} matrices")
    for f in falls_all
] + [
    dict(claim=f"{f}: weight distance correlates strongly with the number of tree edges",
         paper="distance correlates strongly with tree distance (number not public)",
         lhs=f"spearman_distance_vs_edges/{f}", op=">", rhs=0.5,
         how="Spearman rho over all pairs within a tree; MoTHer's distance (FT: mean RMS of the attention "
             "differences, LoRA: summed rank of the value differences); 'strong' read as rho > 0.5")
    for f in falls_all
]
results["figures"] = {
    "mother_01_kurtosis_training": "Kurtosis of the attention weights rises along pre-training and falls along "
                                   "fine-tuning (the direction signal).",
    "mother_02b_direction_layers": "Fraction of true edges where the summed kurtosis falls, by the matrices "
                                   "summed.",
    "mother_02_distance_vs_edges": "Weight distance against the number of tree edges between two models.",
}
results["headline"] = [
    ["roots whose attention-output kurtosis rose in pre-training", f"{rises['proj']} / {len(roots)}",
     "rises"],
] + [[f"{f}: edges where kurtosis falls (paper's matrices)", falls_all[f][paper_group[f]], "falls (monotone)"]
     for f in falls_all] + [[f"Spearman rho, distance vs edges ({k})", v, "strong correlation"]
                            for k, v in results["spearman_distance_vs_edges"].items()] + [
    [f"{f}: direction matrices chosen on a separate forest", g, "value (the paper's)"]
    for f, g in direction_choice.items()]
path = plotting.save_results(results_dir, "04_mother_forests", results)
plotting.claims_table(path)
