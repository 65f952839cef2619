# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   weightspace:
#     reads:
#     - zoo/cnn_seed_zoo
#     writes:
#     - zoo/sane_cnn
# ---

# %% [markdown]
# # 10 · SANE I: weights as token sequences, and pre-training a sequential autoencoder
#
# *SANE: [paper](https://arxiv.org/abs/2406.09997), [official code](https://github.com/HSG-AIML/SANE).
# weightspace is an independent reimplementation, not the authors' code; to cite, see [Citing](../README.md#citing-and-where-the-originals-are).*
#
# **What you will learn**
# - how SANE turns a checkpoint into a sequence of fixed-width tokens: one row per output channel with its
#   bias, cut into chunks of the token size $d_t$ and zero-padded, a 0/1 mask, and three-part positions
#   $[n, l, k]$ (global index, layer, row);
# - what the preprocessing does: per-layer standardisation with training-split statistics, and weight-matching
#   alignment of every model to one reference (found on its last epoch, applied to all its epochs);
# - how the autoencoder trains on random windows with two views (aligned vs a random function-preserving
#   permutation, each with noise), what its loss curves look like, how the inference chunk length changes the
#   reconstruction error, and whether alignment lowers it.
#
# Mirrors SANE (Schürholt, Mahoney, Borth, ICML 2024), Sec. 3 (tokenization, Fig. 2), Appendix Table 6
# (alignment ablation) and Fig. 6 (window size vs reconstruction loss). Reads notebook 09's seed zoo (run it
# first) and saves the trained SANE into the zoo folder, where notebooks 11 and 12 read it.
#
# **Figures written:** `sane_02_tokens.png`, `sane_03_alignment.png`, `sane_04_training.png`,
# `sane_05_window.png`. **Results:** `results/10_sane_tokens_and_training.json` (with the claims tested).

# %% tags=["parameters"]
preset: str = "default"
zoo_root: str = "../zoos/default"
figures_dir: str = "../figures"
results_dir: str = "../results"
seed_zoo: str = "cnn_seed_zoo"      # notebook 09's seed zoo, a folder under zoo_root
sane_dir: str = "sane_cnn"          # where the trained SANE is saved, a folder under zoo_root
token_size: int = 0                 # d_t; 0 takes the longest row
window: int = 32                    # training window in tokens (the paper's CNN window)
halo: int = 8                       # halo tokens on each side of an inference chunk (chunk length is the window)
d_model: int = 64                   # transformer width
d_z: int = 16                       # latent size per token
n_layers: int = 2                   # transformer blocks in the encoder (the decoder mirrors it)
n_heads: int = 4                    # attention heads
steps: int = 1500                   # pre-training steps of the SANE the next notebooks use
batch_size: int = 32                # windows per step (also the NT-Xent batch)
lr: float = 0.001                     # OneCycle peak learning rate
ablation_steps: int = 400           # steps of each run of the alignment ablation (aligned vs not)
window_sweep: list[int] = [8, 16, 24, 32, 48]   # inference chunk lengths for the window-size figure
seed: int = 0                       # SANE initialisation and training randomness

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown

from weightspace import plotting
from weightspace.sane import preprocess
from weightspace.sane import train as T
from weightspace.sane.embed import reconstruction_loss
from weightspace.sane.experiments import prepare_zoo
from weightspace.sane.model import SANE
from weightspace.zoo import Zoo

plotting.style()
torch.set_num_threads(1)   # one thread: tiny nets, shared cores
zoo = Zoo.open(f"{zoo_root}/{seed_zoo}")
t0 = time.time()
raw, data, std, report = prepare_zoo(zoo, token_size or None, aligned=True, seed=seed)
prep_s = time.time() - t0
lay = data["train"].tokens.layout
n_runs = {s: len({r["run_id"] for r in d.rows}) for s, d in data.items()}
print(zoo)
print(f"checkpoints per split {({s: len(d) for s, d in data.items()})}, runs {n_runs}, filtered {report['filtered']}")
print(f"layout: {lay.describe()}; d_t = {lay.token_size}, N = {lay.n_tokens} tokens; prepared in {prep_s:.1f} s")

# %% [markdown]
# ## 1 · One model as tokens
# Each conv / linear layer gives one row per output channel: its incoming weights flattened, then its bias.
# Rows longer than $d_t$ would be split into several tokens; shorter ones are zero-padded, and the mask marks
# the real entries. The positions are the three numbers each token's learned embedding is built from,
# $[E_n(n) + E_l(l);\, E_k(k)]$.

# %%
t = data["train"].tokens
one = t.tokens[0]
padding = 1 - float(t.mask[0].mean())
fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), gridspec_kw={"width_ratios": [4, 4, 1.6]})
lim = float(one.abs().quantile(0.99))
axes[0].imshow(one, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
for ax in axes:
    ax.grid(False)
axes[0].set(title="tokens T (standardised)", xlabel="entry within the token", ylabel="token n")
axes[1].imshow(t.mask[0], cmap="Greys", aspect="auto", interpolation="nearest")
axes[1].set(title=f"mask M ({padding:.0%} padding)", xlabel="entry within the token")
axes[2].imshow(t.positions[:, 1:].numpy(), cmap="viridis", aspect="auto", interpolation="nearest")
axes[2].set(title="positions", xticks=[0, 1], xticklabels=["l", "k"])
for start in np.cumsum([x.n_tokens for x in lay.layers])[:-1]:
    for ax in axes:
        ax.axhline(start - 0.5, color="k", lw=0.8)
fig.suptitle(f"One checkpoint of the seed zoo as {lay.n_tokens} tokens of width {lay.token_size}", y=1.02)
plotting.savefig(fig, figures_dir, "sane_02_tokens")

# %% [markdown]
# ## 2 · What alignment does
# Hidden units can be permuted without changing a network's function, so two models can be far apart in weight
# space while computing alike. Weight matching permutes every model towards one reference (the first training
# run at its last epoch) — the function is unchanged (tested in `tests/test_sane.py`), the distance shrinks.

# %%
spec = data["train"].spec
ri = [i for i, r in enumerate(raw["train"][1]) if r["run_id"] == report["reference"]["run_id"]
      and r["epoch"] == report["reference"]["epoch"]][0]
ref = {k: v[ri] for k, v in raw["train"][0].items()}
last = max(r["epoch"] for r in data["test"].rows)
idx = torch.tensor([i for i, r in enumerate(raw["test"][1]) if r["epoch"] == last])
aligned_test = std.invert(data["test"].stacked)
d_before = preprocess.distance({k: v[idx] for k, v in raw["test"][0].items()}, ref, spec.weights).numpy()
d_after = preprocess.distance({k: v[idx] for k, v in aligned_test.items()}, ref, spec.weights).numpy()
fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), gridspec_kw={"width_ratios": [1.6, 1, 1, 1]})
axes[0].hist([d_before, d_after], bins=20, label=["as trained", "aligned"])
axes[0].set(title="distance to the reference", xlabel="||W - W_ref|| (test runs, last epoch)")
axes[0].legend()
key = spec.weights[0]
m = int(idx[0])
panels = [("reference", ref[key]), ("a test model", raw["test"][0][key][m]), ("aligned", aligned_test[key][m])]
lim = float(max(p.abs().max() for _, p in panels))
for ax, (name, w) in zip(axes[1:], panels):
    ax.imshow(w.reshape(w.shape[0], -1), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto",
              interpolation="nearest")
    ax.grid(False)
    ax.set(title=f"{key}: {name}", xlabel="input", ylabel="output channel")
plotting.savefig(fig, figures_dir, "sane_03_alignment")
print(f"mean distance to the reference: {d_before.mean():.2f} as trained, {d_after.mean():.2f} aligned")

# %% [markdown]
# ## 3 · Pre-training SANE
# Loss $= \gamma\,\text{NT-Xent} + (1-\gamma)\,\text{masked MSE}$ with $\gamma = 0.05$, on one random window per
# checkpoint and step; AdamW + OneCycle with gradient clipping. The validation curve reconstructs whole
# validation checkpoints through halo chunks of the training window's length.

# %%
cfg = T.config_for(data["train"], window=window, d_model=d_model, d_z=d_z, n_layers=n_layers, n_heads=n_heads)
torch.manual_seed(seed)
sane = SANE(cfg)
n_params = sum(p.numel() for p in sane.parameters())
ckpt_dir = Path(zoo_root) / sane_dir
ckpt_dir.mkdir(parents=True, exist_ok=True)
hist = T.train(sane, data["train"], steps, batch_size=batch_size, lr=lr, seed=seed, val=data["val"],
               eval_every=max(steps // 10, 1), halo=halo, checkpoint=ckpt_dir / "training.safetensors",
               checkpoint_every=max(steps // 4, 1), device="cpu")
rec = {s: reconstruction_loss(sane, d.tokens.tokens, d.tokens.mask[:1], d.tokens.positions, halo=halo)
       for s, d in data.items()}
T.save(ckpt_dir, sane, std, {"zoo": seed_zoo, "token_size": lay.token_size, "aligned": True, "halo": halo,
                             "seed": seed, "steps": steps, "reconstruction": rec})
print(f"SANE: {n_params:,} parameters, {steps} steps in {hist['seconds']:.0f} s "
      f"({hist['tokens_per_s']:,.0f} tokens/s); reconstruction (masked MSE) {rec}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
smooth = lambda x: np.convolve(x, np.ones(25) / 25, mode="valid")
axes[0].plot(smooth(hist["reconstruction"]), label="train windows (noisy views)")
axes[0].plot(hist["val_step"], hist["val_reconstruction"], "o-", label="validation checkpoints")
axes[0].set(title="reconstruction (masked MSE)", xlabel="step", yscale="log")
axes[0].legend()
axes[1].plot(smooth(hist["contrastive"]))
axes[1].set(title="NT-Xent (aligned vs permuted view)", xlabel="step")
plotting.savefig(fig, figures_dir, "sane_04_training")

# %% [markdown]
# ## 4 · Inference chunk length, and alignment on / off
# SANE's Fig. 6: the reconstruction error is lowest when the inference chunks have the training window's length.
# Table 6: with every model aligned to one reference, the reconstruction loss falls. We train two SANEs with the
# same budget (`ablation_steps`) on the same zoo, one aligned and one not (both with the permuted second view),
# and compare their test reconstruction.

# %%
sweep = {}
n_tok = lay.n_tokens
for w in window_sweep:
    h = min(halo, max((w - 1) // 4, 0))
    d = data["test"].tokens
    sweep[w] = reconstruction_loss(sane, d.tokens, d.mask[:1], d.positions, window=min(w, n_tok), halo=h)
ablation = {}
for name, al in [("aligned", True), ("not aligned", False)]:
    dat = T.prepare(raw, token_size or None, aligned=al, seed=seed)[0] if not al else data
    torch.manual_seed(seed)
    m = SANE(T.config_for(dat["train"], window=window, d_model=d_model, d_z=d_z, n_layers=n_layers,
                          n_heads=n_heads))
    T.train(m, dat["train"], ablation_steps, batch_size=batch_size, lr=lr, seed=seed, device="cpu",
            progress=False)
    ablation[name] = {s: reconstruction_loss(m, d.tokens.tokens, d.tokens.mask[:1], d.tokens.positions, halo=halo)
                      for s, d in dat.items() if s in ("train", "test")}
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
axes[0].plot(list(sweep), list(sweep.values()), "o-")
axes[0].axvline(cfg.window, color="k", ls=":", label=f"training window ({cfg.window})")
axes[0].set(title="inference chunk length vs reconstruction (test)", xlabel="chunk length (tokens)",
            ylabel="masked MSE")
axes[0].legend()
xs = np.arange(2)
for j, (name, r) in enumerate(ablation.items()):
    axes[1].bar(xs + 0.38 * j, [r["train"], r["test"]], 0.38, label=name)
axes[1].set(title=f"alignment ablation ({ablation_steps} steps each)", xticks=xs + 0.19,
            xticklabels=["train", "test"], ylabel="masked MSE")
axes[1].legend()
plotting.savefig(fig, figures_dir, "sane_05_window")
ablation

# %%
results = {
    "paper": "SANE", "preset": preset, "seed": seed,
    "zoo": {"checkpoints": {s: len(d) for s, d in data.items()}, "runs": n_runs, "filtered": report["filtered"]},
    "tokens": {"token_size": lay.token_size, "n_tokens": lay.n_tokens, "layers": len(lay.layers),
               "padding": padding},
    "alignment_distance": {"as_trained": float(d_before.mean()), "aligned": float(d_after.mean())},
    "sane": {"parameters": n_params, "window": cfg.window, "halo": halo, "steps": steps,
             "seconds": hist["seconds"], "tokens_per_s": hist["tokens_per_s"], "reconstruction": rec},
    "window_sweep": {str(k): v for k, v in sweep.items()},
    "ablation": ablation,
    "claims": [
        dict(claim="alignment lowers the test reconstruction loss", paper="Table 6: 0.167 -> 0.082 (test)",
             lhs="ablation/aligned/test", op="<", rhs="ablation/not aligned/test",
             how=f"two SANEs, {ablation_steps} steps each, same settings; masked MSE on whole test checkpoints"),
        dict(claim="alignment lowers the training reconstruction loss", paper="Table 6: 0.304 -> 0.148 (train)",
             lhs="ablation/aligned/train", op="<", rhs="ablation/not aligned/train",
             how="as above, on the training checkpoints"),
        dict(claim="weight matching brings models closer to the reference", paper="Sec. 3.2 (canonical form)",
             lhs="alignment_distance/aligned", op="<", rhs="alignment_distance/as_trained",
             how="mean distance of the test runs' last epochs to the reference, before vs after"),
    ],
}
results["figures"] = {
    "sane_02_tokens": "One CNN checkpoint as SANE tokens: tokens, mask and the three-part positions (SANE Sec. 3).",
    "sane_03_alignment": "What weight matching does: distances to the reference before and after alignment, and an aligned layer.",
    "sane_04_training": "SANE pre-training: masked reconstruction and NT-Xent losses over the steps.",
    "sane_05_window": "Inference chunk length vs reconstruction (the paper's Fig. 6), and alignment on / off.",
}
path = plotting.save_results(results_dir, "10_sane_tokens_and_training", results)
plotting.claims_table(path)

# %%
Markdown(f"""**Reading the run.** A checkpoint is {lay.n_tokens} tokens of width {lay.token_size}
({padding:.0%} padding). Alignment cut the mean distance to the reference from {d_before.mean():.2f} to
{d_after.mean():.2f}. The SANE ({n_params:,} parameters) reconstructs test checkpoints with a masked MSE of
{rec['test']:.3f} (train {rec['train']:.3f}) in standardised units. With the same budget, the aligned SANE reaches
{ablation['aligned']['test']:.3f} on test, the unaligned one {ablation['not aligned']['test']:.3f}.""")
