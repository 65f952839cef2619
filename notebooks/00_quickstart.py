# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   weightspace:
#     reads: []
#     writes:
#     - zoo/quickstart
# ---

# %% [markdown]
# # 00 · Quickstart: a model zoo, opened and looked at
#
# *ProbeX: [paper](https://arxiv.org/abs/2410.13569), [official code](https://github.com/eliahuhorwitz/ProbeX) · MoTHer: [paper](https://arxiv.org/abs/2405.18432), [official code](https://github.com/eliahuhorwitz/MoTHer) · SANE: [paper](https://arxiv.org/abs/2406.09997), [official code](https://github.com/HSG-AIML/SANE).
# weightspace is an independent reimplementation, not the authors' code; to cite, see [Citing](../README.md#citing-and-where-the-originals-are).*
#
# **What you will learn**
# - what *weight-space learning* takes as data: a **model zoo**, many trained networks stored as files, with
#   a table saying who was fine-tuned from whom (a *Model Tree*) and on what;
# - how to build a small zoo of Vision Transformers on **StyledDigits** (handwritten digits in named
#   styles: "a mirrored seven"), open it, read its table and look at its weights;
# - why *Model Trees* matter: models fine-tuned from the same root stay close in weight space, models from
#   different roots are far apart. ProbeX (notebooks 01-03) and MoTHer (04-05) build on exactly this.
#
# **Figures written:** `quickstart_01_styled_digits.png`, `quickstart_02_weights.png`,
# `quickstart_03_distances.png`. **Results:** `results/00_quickstart.json`.

# %% tags=["parameters"]
preset: str = "default"
zoo_root: str = "../zoos/default"
figures_dir: str = "../figures"
results_dir: str = "../results"
n_trees: int = 2          # Model Trees: one pre-trained root each
n_per_tree: int = 24      # fine-tunes per root
root_steps: int = 600     # pre-training steps of each root
executor: str = "local"   # "local" process pool, "inline", "dask" or "slurm"
workers: int = 2
seed: int = 0             # the zoo's seed: roots and fine-tune plans (0: the committed run)

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from weightspace import plotting
from weightspace.data import styled_digits
from weightspace.zoo import Zoo
from weightspace.zoo.model_trees import build_model_trees

plotting.style()
zoo_path = f"{zoo_root}/quickstart"

# %% [markdown]
# ## 1 · The data: StyledDigits
# scikit-learn ships 1,797 real 8x8 handwritten digits. Crossing them with a few deterministic styles gives
# 40 classes with natural-language names. Nothing is downloaded.

# %%
ds = styled_digits()
print(f"{ds.n_classes} classes; train / val / test images: {len(ds.train)} / {len(ds.val)} / {len(ds.test)}")
fig, axes = plt.subplots(len(ds.styles), 10, figsize=(10, 1.1 * len(ds.styles)))
for s, style in enumerate(ds.styles):
    for d in range(10):
        i = int(torch.nonzero(ds.train.y == ds.class_of(style, d))[0])
        axes[s, d].imshow(ds.train.x[i, 0], cmap="gray_r", vmin=-1, vmax=1)
        axes[s, d].set_xticks([]); axes[s, d].set_yticks([])
        axes[s, d].set_title(ds.class_names[ds.class_of(style, d)].split(" ", 1)[1], fontsize=7)
fig.suptitle("StyledDigits: one training image per class")
plotting.savefig(fig, figures_dir, "quickstart_01_styled_digits")

# %% [markdown]
# ## 2 · Build a zoo
# Each tree has a root ViT (timm's `VisionTransformer`, 8x8 input, patch 2, width 32, 2 blocks) pre-trained
# with its own recipe and seed, then `n_per_tree` fine-tunes, each on a random half of the 40 classes with
# its own learning rate, number of steps and schedule. Fine-tunes train many at once (`torch.func.vmap`) in
# jobs spread over worker processes. Re-running this cell resumes: finished models are skipped.

# %%
t0 = time.time()
zoo = build_model_trees(zoo_path, n_trees=n_trees, n_per_tree=n_per_tree, root_steps=root_steps,
                        executor=executor, workers=workers, preset=preset, seed=seed)
build_seconds = time.time() - t0
zoo

# %% [markdown]
# ## 3 · Open it and read the table
# A zoo is a folder: `zoo.json` (what built it), `models.jsonl` (one row per model) and one safetensors
# file per model. Anyone can reopen it later, from Python or with `python -m weightspace zoo info DIR`.

# %%
zoo = Zoo.open(zoo_path)
table = zoo.table
table[["model_id", "parent_id", "tree_id", "tree_name", "split", "lr", "steps", "schedule", "test_acc"]].head(8)

# %%
finetunes = table[table.depth == 1]
finetunes.groupby(["tree_name", "split"]).size().unstack()

# %% [markdown]
# ## 4 · Look at the weights
# Below: one hidden layer (the attention output projection of the last block, 32x32) of the first root,
# three of its fine-tunes, and what fine-tuning changed (fine-tune minus root, on its own colour scale).

# %%
layer = "blocks.1.attn.proj.weight"
root_w = zoo.load("t0-root")[layer]
kids = zoo.select(tree_id=0, depth=1)[:3]
kid_w = [zoo.load(k)[layer] for k in kids]
fig = plotting.weight_grid([root_w] + kid_w + [w - root_w for w in kid_w], ncols=4,
                           titles=["root"] + kids + [f"{k} − root" for k in kids],
                           suptitle=f"{layer}: weights (top) and fine-tuning changes (bottom)")
plotting.savefig(fig, figures_dir, "quickstart_02_weights")

# %% [markdown]
# ## 5 · Model Trees in weight space
# `zoo.layer(name)` stacks one layer of every model into one `[N, ...]` tensor (cached on disk), the input
# format every method here starts from. The pairwise distances between those layers show the trees:
# small inside a tree, large across trees.

# %%
X = zoo.layer(layer).flatten(1)
order = list(table.sort_values(["tree_id", "depth"]).index)
D = torch.cdist(X[order], X[order]).numpy()
trees = table.tree_id.to_numpy()[order]
fig, ax = plt.subplots(figsize=(5, 4.3))
im = ax.imshow(D, cmap="viridis")
ax.grid(False)
ax.set_title(f"distance between {layer}\nof every pair of models (sorted by tree)")
ax.set_xlabel("model"); ax.set_ylabel("model")
fig.colorbar(im, ax=ax, label="L2 distance")
plotting.savefig(fig, figures_dir, "quickstart_03_distances")
same = trees[:, None] == trees[None, :]
off = ~np.eye(len(D), dtype=bool)
within, across = D[same & off].mean(), D[~same].mean()
print(f"mean distance within a tree: {within:.2f}; across trees: {across:.2f}")

# %%
results = dict(
    preset=preset, paper="", seed=seed, n_models=len(zoo), n_trees=n_trees, build_seconds=round(build_seconds, 1),
    mean_finetune_test_acc=float(finetunes.test_acc.mean()),
    mean_distance_within_tree=float(within), mean_distance_across_trees=float(across),
    figures={
        "quickstart_01_styled_digits": "StyledDigits: the 10 digits in each style, one training image per class.",
        "quickstart_02_weights": f"One hidden layer ({layer}) of a root and three fine-tunes, and what fine-tuning changed.",
        "quickstart_03_distances": "Pairwise distances of that layer across all models: Model Trees are blocks.",
    },
    headline=[["mean distance within a tree / across trees", f"{within:.2f} / {across:.2f}", "n/a"]],
)
results["claims"] = [dict(
    claim="models of one tree are closer than models of different trees",
    paper="n/a (the premise of ProbeX and MoTHer: fine-tunes stay near their root)",
    lhs="mean_distance_within_tree", op="<", rhs="mean_distance_across_trees",
    how=f"mean L2 distance of {layer} over all pairs of distinct models, same tree vs different trees")]
path = plotting.save_results(results_dir, "00_quickstart", results)
print(f"{len(zoo)} models built in {build_seconds:.0f} s; results written to {path}")
plotting.claims_table(path)
