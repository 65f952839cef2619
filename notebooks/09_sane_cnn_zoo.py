# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   weightspace:
#     reads: []
#     writes:
#     - zoo/cnn_seed_zoo
#     - zoo/cnn_grid_zoo
#     - zoo/cnn_transfer_zoo
# ---

# %% [markdown]
# # 09 · SANE I: model zoos of small CNNs, with a checkpoint every epoch
#
# *SANE: [paper](https://arxiv.org/abs/2406.09997), [official code](https://github.com/HSG-AIML/SANE).
# weightspace is an independent reimplementation, not the authors' code; to cite, see [Citing](../README.md#citing-and-where-the-originals-are).*
#
# **What you will learn**
# - what SANE learns from: a *population* of small CNNs trained on one task, each kept at every epoch of its
#   training (epoch 0 being its random initialisation), with its accuracy, loss and generalisation gap;
# - how hundreds of such CNNs train at once on a CPU (one grouped convolution for all of them, each model with its
#   own seed, initialisation, batch order and learning rate) and land in the zoo format as one row per
#   (model, epoch);
# - the three zoos the SANE notebooks use: a **seed zoo** (one recipe, many seeds: the paper's MNIST zoo), a
#   **grid zoo** (activation x initialisation x learning rate, as the Model Zoos "hyperparameter" zoos), and a
#   **transfer zoo** on a new task (inverted digits: the paper's SVHN -> MNIST transfer);
# - why the split into train / val / test is by model, never by checkpoint.
#
# Mirrors SANE (Schürholt, Mahoney, Borth, ICML 2024), Sec. 4 (the CNN zoos and their properties: accuracy,
# epoch, generalisation gap) and the Model Zoos recipe (Schürholt et al., NeurIPS 2022 Datasets and
# Benchmarks), adapted to 8x8 digits. Notebooks 10-12 train SANE on these zoos.
#
# **Figures written:** `sane_01_population_curves.png`, `sane_01b_grid_hyperparameters.png`,
# `sane_01c_final_accuracy_and_ggap.png`. **Results:** `results/09_sane_cnn_zoo.json` (with the claims tested).

# %% tags=["parameters"]
preset: str = "default"
zoo_root: str = "../zoos/default"
figures_dir: str = "../figures"
results_dir: str = "../results"
seed_models: int = 300      # runs of the seed zoo (one recipe, one seed each)
epochs: int = 20            # training epochs of every run; checkpoints at epochs 0 to epochs
activation: str = "tanh"    # the seed and transfer zoos' recipe (the paper's MNIST zoo: tanh)
init: str = "xavier_uniform"  # their weight initialisation (biases 0.01)
lr: float = 0.001             # their Adam learning rate
batch_size: int = 32
grid_activations: list[str] = ["tanh", "relu", "gelu", "sigmoid"]  # the grid zoo's axes
grid_inits: list[str] = ["xavier_uniform", "kaiming_normal", "normal"]
grid_lrs: list[float] = [0.001, 0.003]
grid_seeds: int = 4         # runs per grid combination
transfer_styles: list[str] = ["inverted"]  # the transfer zoo's task: the digits in these styles
transfer_models: int = 100  # runs of the transfer zoo
chunk: int = 50             # runs trained together in one job
executor: str = "local"     # "local" process pool, "inline", "dask" or "slurm"
workers: int = 2
seed: int = 0               # the seed zoo's seed; the grid and transfer zoos use 1 and 2 + 1000 x seed

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown

from weightspace import plotting
from weightspace.nets.cnn import make_cnn
from weightspace.zoo.cnn_zoo import build_cnn_zoo, population_curves

plotting.style()


def cpu_seconds() -> float:
    """CPU time of this kernel and of its finished worker processes (a machine's idle wall time is about this
    divided by the workers that ran in parallel)."""
    import resource

    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


recipe = dict(activations=[activation], inits=[init], lrs=[lr], epochs=epochs, batch_size=batch_size, chunk=chunk)
run = dict(executor=executor, workers=workers, preset=preset)
n_params = sum(p.numel() for p in make_cnn().parameters())

# %% [markdown]
# ## 1 · The network and the three zoos
# The paper's CNN-s (MNIST at 28x28) shrunk to 8x8 digits: Conv(1→8, 3x3) → max-pool → act → Conv(8→6, 3x3) →
# max-pool → act → Linear(24→20) → act → Linear(20→10). Each run starts from its own seed (initialisation *and*
# batch order), trains with Adam for the given epochs, and is saved — with train / val / test accuracy and loss
# — at every epoch. Building resumes: a killed build picks up its finished checkpoints, a finished zoo opens at
# once.

# %%
specs = {
    "seed zoo": dict(path="cnn_seed_zoo", n_seeds=seed_models, seed=seed, **recipe),
    "grid zoo": dict(path="cnn_grid_zoo", n_seeds=grid_seeds, activations=grid_activations, inits=grid_inits,
                     lrs=grid_lrs, epochs=epochs, batch_size=batch_size, chunk=chunk, seed=1 + 1000 * seed),
    "transfer zoo": dict(path="cnn_transfer_zoo", n_seeds=transfer_models, styles=transfer_styles, seed=2 + 1000 * seed,
                         **recipe),
}
zoos, seconds, cpu = {}, {}, {}
for name, spec in specs.items():
    t0, c0 = time.time(), cpu_seconds()
    zoos[name] = build_cnn_zoo(f"{zoo_root}/{spec.pop('path')}", **spec, **run)
    seconds[name], cpu[name] = time.time() - t0, cpu_seconds() - c0
tables = {name: z.table for name, z in zoos.items()}
Markdown(f"{n_params:,} parameters per CNN. " + "; ".join(
    f"**{name}**: {t.run_id.nunique()} runs x {t.epoch.nunique()} checkpoints = {len(t):,} rows in "
    f"{seconds[name]:.0f} s ({cpu[name]:.0f} CPU s)" for name, t in tables.items()) + ".")

# %% [markdown]
# ## 2 · Splits by model
# All checkpoints of one run share its split, so no model is seen in training at one epoch and tested at another
# (SANE Sec. 4: 70 / 15 / 15 by model).

# %%
split_runs = {name: t.groupby("run_id").split.first().value_counts().reindex(["train", "val", "test"]).to_dict()
              for name, t in tables.items()}
split_by_run_only = {name: bool((t.groupby("run_id").split.nunique() == 1).all()) for name, t in tables.items()}
pd.DataFrame(split_runs).T.assign(**{"checkpoints per run": [t.epoch.nunique() for t in tables.values()]})

# %% [markdown]
# ## 3 · The population's accuracy curves
# Every run's test accuracy at every checkpoint (thin lines), with the population's mean ± one standard
# deviation and its 10-90% range.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
for ax, (name, t), color in zip(axes, tables.items(), plotting.colors(3)):
    wide = t.pivot(index="epoch", columns="run_id", values="test_acc")
    ax.plot(wide.index, wide.values, color="0.45", lw=0.4, alpha=0.3)
    c = population_curves(t)
    ax.fill_between(c.epoch, c["mean"] - c["std"], c["mean"] + c["std"], color=color, alpha=0.3, label="mean ± std")
    ax.plot(c.epoch, c["mean"], color=color, lw=2.5, label="mean")
    ax.plot(c.epoch, c.q10, color=color, lw=1, ls="--", label="10% / 90%")
    ax.plot(c.epoch, c.q90, color=color, lw=1, ls="--")
    ax.axhline(0.1, color="k", lw=0.8, ls=":")
    ax.set(title=f"{name} ({t.run_id.nunique()} runs)", xlabel="epoch")
axes[0].set_ylabel("test accuracy")
axes[0].legend(loc="lower right")
fig.tight_layout()
plotting.savefig(fig, figures_dir, "sane_01_population_curves")

# %% [markdown]
# ## 4 · What the hyperparameters do (grid zoo)
# The grid zoo crosses activations, initialisations and learning rates; each panel averages over the other two
# axes. The spread between values is what makes the grid zoo a harder, more varied population than the seed zoo.

# %%
grid = tables["grid zoo"]
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
for ax, col in zip(axes, ["activation", "init", "lr"]):
    c = population_curves(grid, by=col)
    for (g, cg), color in zip(c.groupby("group", sort=True), plotting.colors(c.group.nunique())):
        ax.fill_between(cg.epoch, cg["mean"] - cg["std"], cg["mean"] + cg["std"], color=color, alpha=0.2)
        ax.plot(cg.epoch, cg["mean"], color=color, lw=2, label=str(g))
    ax.set(title=f"by {col}", xlabel="epoch")
    ax.legend(loc="lower right", fontsize=9)
axes[0].set_ylabel("test accuracy (mean ± std)")
fig.tight_layout()
plotting.savefig(fig, figures_dir, "sane_01b_grid_hyperparameters")

by_hparam = {col: {str(g): float(v) for g, v in grid[grid.epoch == epochs].groupby(col).test_acc.mean().items()}
             for col in ["activation", "init", "lr"]}
pd.DataFrame({col: pd.Series(v) for col, v in by_hparam.items()})

# %% [markdown]
# ## 5 · The properties SANE predicts: accuracy, epoch and generalisation gap
# Left: the final test accuracy of every run, per zoo. Right: the generalisation gap (train minus test accuracy)
# along training.

# %%
fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
final = {name: t[t.epoch == epochs].test_acc.dropna().to_numpy() for name, t in tables.items()}
a1.violinplot(list(final.values()), showmedians=True)
a1.set_xticks(range(1, 4), list(final))
a1.set(ylabel=f"test accuracy at epoch {epochs}", title="final accuracy per run")
for (name, t), color in zip(tables.items(), plotting.colors(3)):
    c = population_curves(t, metric="ggap")
    a2.fill_between(c.epoch, c["mean"] - c["std"], c["mean"] + c["std"], color=color, alpha=0.2)
    a2.plot(c.epoch, c["mean"], color=color, lw=2, label=name)
a2.axhline(0, color="k", lw=0.8, ls=":")
a2.set(xlabel="epoch", ylabel="train acc − test acc", title="generalisation gap (mean ± std)")
a2.legend()
fig.tight_layout()
plotting.savefig(fig, figures_dir, "sane_01c_final_accuracy_and_ggap")


# %%
def summary(t: pd.DataFrame) -> dict:
    at = lambda e, col="test_acc": t[t.epoch == e][col].dropna()
    curve = population_curves(t)
    return {
        "runs": int(t.run_id.nunique()), "checkpoints": len(t), "epochs": int(t.epoch.max()),
        "split_runs": t.groupby("run_id").split.first().value_counts().to_dict(),
        "diverged_checkpoints": int(t.diverged.sum()),
        "test_acc_epoch0_mean": float(at(0).mean()), "test_acc_epoch1_mean": float(at(1).mean()),
        "test_acc_final_mean": float(at(epochs).mean()), "test_acc_final_std": float(at(epochs).std(ddof=0)),
        "test_acc_final_min": float(at(epochs).min()), "test_acc_final_max": float(at(epochs).max()),
        "ggap_final_mean": float(at(epochs, "ggap").mean()),
        "mean_test_acc_by_epoch": [float(v) for v in curve["mean"]],
    }


stats = {name.replace(" ", "_"): summary(t) for name, t in tables.items()}
results = {
    "paper": "SANE", "seed": seed,
    "params_per_cnn": n_params,
    "zoos": stats,
    "build_seconds": {name.replace(" ", "_"): s for name, s in seconds.items()},
    "build_cpu_seconds": {name.replace(" ", "_"): s for name, s in cpu.items()},
    "split_by_run_only": split_by_run_only,
    "grid_final_test_acc_by": by_hparam,
    "recipe": dict(activation=activation, init=init, lr=lr, epochs=epochs, batch_size=batch_size),
}
results["claims"] = [
    dict(claim="epoch-0 checkpoints (the initialisations) are at chance, about 10% on ten classes",
         paper="scratch, epoch 0: ~10% (Table 3, MNIST)", lhs="zoos/seed_zoo/test_acc_epoch0_mean", op="<=",
         rhs=0.15, how="mean test accuracy of the seed zoo's epoch-0 checkpoints; chance is 0.1"),
    dict(claim="the seed zoo's runs train to high accuracy",
         paper="scratch, epoch 50: 91.1 ± 2.6% (Table 3, MNIST seed zoo)", lhs="zoos/seed_zoo/test_acc_final_mean",
         op=">=", rhs=0.85, how=f"mean test accuracy at the last epoch ({epochs}); 'high' read as >= 85%"),
    dict(claim="varying the hyperparameters spreads the final accuracies more than varying the seed alone",
         paper="zoos with varied hyperparameters are more diverse than seed zoos (Model Zoos; qualitative)",
         lhs="zoos/grid_zoo/test_acc_final_std", op=">", rhs="zoos/seed_zoo/test_acc_final_std",
         how="standard deviation over runs of the last epoch's test accuracy"),
    dict(claim="the transfer task is learnt as well", paper="SVHN zoo: scratch, epoch 50: 70.7% (Table 3)",
         lhs="zoos/transfer_zoo/test_acc_final_mean", op=">=", rhs=0.8,
         how=f"mean test accuracy at epoch {epochs} on {'+'.join(transfer_styles)} digits; 'learnt' read as >= 80%"),
]
results["figures"] = {
    "sane_01_population_curves": "Per-epoch test accuracy of every CNN in the seed, transfer and grid zoos, "
                                 "with mean ± std and the 10-90% range.",
    "sane_01b_grid_hyperparameters": "The grid zoo's accuracy curves by activation, initialisation and learning "
                                     "rate.",
    "sane_01c_final_accuracy_and_ggap": "Final test accuracy per run, and the generalisation gap along training.",
}
paper_zoo = {"seed_zoo": ("1000 x 51 (MNIST seed zoo)", "91.1 ± 2.6% (MNIST seed zoo, epoch 50)"),
             "grid_zoo": ("2,560 runs (MNIST hyperparameter zoo)", "not in SANE's tables"),
             "transfer_zoo": ("1000 x 51 (SVHN seed zoo)", "70.7 ± 8.8% (SVHN seed zoo, epoch 50)")}
results["headline"] = [
    [f"{name}: runs x checkpoints", f"{s['runs']} x {s['epochs'] + 1}", paper_zoo[name][0]]
    for name, s in stats.items()] + [
    [f"{name}: final test accuracy", f"{s['test_acc_final_mean']:.3f} ± {s['test_acc_final_std']:.3f}",
     paper_zoo[name][1]] for name, s in stats.items()]
path = plotting.save_results(results_dir, "09_sane_cnn_zoo", results)
plotting.claims_table(path)

# %% [markdown]
# ## What to take away

# %%
s, g, tr = stats["seed_zoo"], stats["grid_zoo"], stats["transfer_zoo"]
Markdown(
    f"- The seed zoo's {s['runs']} CNNs start at chance ({s['test_acc_epoch0_mean']:.1%} at epoch 0), reach "
    f"{s['test_acc_epoch1_mean']:.1%} after one epoch and {s['test_acc_final_mean']:.1%} ± "
    f"{s['test_acc_final_std']:.1%} after {epochs} (the paper's MNIST seed zoo: 91.1% ± 2.6% after 50): the "
    f"checkpoints cover the whole trajectory, which is what lets SANE predict the epoch.\n"
    f"- Varying the hyperparameters spreads the final accuracy to ± {g['test_acc_final_std']:.1%} "
    f"(from {g['test_acc_final_min']:.1%} to {g['test_acc_final_max']:.1%}), against ± "
    f"{s['test_acc_final_std']:.1%} over seeds alone.\n"
    f"- The transfer zoo learns the new task ({'+'.join(transfer_styles)} digits) to "
    f"{tr['test_acc_final_mean']:.1%}.\n"
    f"- {sum(z['diverged_checkpoints'] for z in stats.values())} checkpoints diverged (non-finite weights); they "
    f"are recorded with `diverged` true and null metrics, for the SANE notebooks to filter and count.")
