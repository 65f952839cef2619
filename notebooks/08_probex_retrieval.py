# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   weightspace:
#     reads:
#     - zoo/sd_lora_zoo
#     - zoo/sd_lora_zoo_generic
#     - results/07_probex_zeroshot
#     writes: []
# ---

# %% [markdown]
# # 08 · Model search with language: free-text queries retrieve LoRAs
#
# *ProbeX: [paper](https://arxiv.org/abs/2410.13569), [official code](https://github.com/eliahuhorwitz/ProbeX).
# weightspace is an independent reimplementation, not the authors' code; to cite, see [Citing](../README.md#citing-and-where-the-originals-are).*
#
# **What you will learn**
# - how the weight-language space of notebook 07 turns into a **search engine over models**: embed a free-text
#   query with the frozen text encoder and ProbeX's text map P, rank every LoRA by the cosine to its aligned
#   embedding, and look at what the top LoRAs generate (sampled through the base UNet with each LoRA);
# - what the space looks like: a 2-D map of the LoRAs' embeddings, coloured by digit and by style, with the
#   holdout classes (never seen by ProbeX) marked;
# - the paper's downstream tasks on the frozen representation e: model-to-model retrieval, kNN classification
#   and one-class classification (ROC-AUC), with text-to-model recall@k / mAP against random rankings.
#
# **Mirrors:** ProbeX (Horwitz et al., CVPR 2025), Sec. 4.3 (text-based model search, the qualitative retrieval
# figure) and its downstream evaluation (kNN, one-class ROC-AUC). Reads the LoRA zoos of notebook 06 and the
# layer chosen in notebook 07 (run both first).
#
# **Figures:** `probex_zs_retrieval.png`, `probex_zs_embedding_map.png`. **Results:** `results/08_probex_retrieval.json`.

# %% tags=["parameters"]
preset: str = "default"
zoo_root: str = "../zoos/default"
figures_dir: str = "../figures"
results_dir: str = "../results"
class_zoo: str = "sd_lora_zoo"             # notebook 06's zoo (class prompts)
generic_zoo: str = "sd_lora_zoo_generic"   # its generic-prompt control
queries: list[str] = []                          # free-text queries; [] uses each holdout class's name, e.g. "a mirrored seven"
n_queries: int = 4                         # with queries [], this many holdout classes (and one paraphrase)
top_k: int = 5                             # LoRAs shown per query
n_samples: int = 4                         # images sampled from each shown LoRA
ks: list[int] = [1, 5, 10]                       # recall@k
knn_k: int = 5                             # kNN classification
occ_k: int = 2                             # one-class kNN (the official default)
seed: int = 0
threads: int = 1

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown

from weightspace import plotting
from weightspace.nets.text import TextEncoder
from weightspace.probex.retrieval import cosine_scores, downstream, embeddings
from weightspace.probex.zeroshot import ZooLoras, class_prompts, fit_zeroshot
from weightspace.zoo import Zoo
from weightspace.zoo.lora_zoo import lora_samples, text_encoder

t_start = time.time()
torch.set_num_threads(threads)
plotting.style()
nb07 = Path(results_dir) / "07_probex_zeroshot.json"
if not nb07.is_file():
    raise FileNotFoundError(f"{nb07} is missing: run notebook 07 first (it chooses the layer)")
r07 = json.loads(nb07.read_text())
ZOOS = {"class": class_zoo, "generic": generic_zoo}
zoos, data, text, fits, layer = {}, {}, {}, {}, {}
for key, name in ZOOS.items():
    path = Path(zoo_root) / name
    if not (path / "zoo.json").is_file():
        raise FileNotFoundError(f"{path} is missing: run notebook 06 first (it builds the LoRA zoos)")
    zoos[key] = Zoo.open(path)
    data[key] = ZooLoras(zoos[key])
    text[key] = text_encoder(zoos[key]).sentence(class_prompts(zoos[key].class_names))
    layer[key] = r07["zoos"][key]["any"]["probex"]["zero_shot"]["layer"]     # chosen on val_holdout in 07
    f = fit_zeroshot("probex", data[key].X(layer[key]), data[key].labels, text[key], seed=seed, **r07["config"])
    fits[key] = f.zeroshot_model()
    print(f"{key}: ProbeX on {layer[key]}: zero-shot {f.acc['test_holdout']:.3f}, in-distribution {f.acc['test']:.3f}")
zoo, lab, model = zoos["class"], data["class"].labels, fits["class"]

# %% [markdown]
# ## 1 · Free-text queries -> the top LoRAs, and what they generate
# The queries are new text (not the training template "a photo of a ..."). The pool is every test and
# test_holdout LoRA (none was trained on); each shown LoRA is sampled through the base UNet with its own prompt.

# %%
holdout_names = [lab.class_names[c] for c in lab.holdout_classes]
if not queries:   # the holdout classes' names ("a mirrored seven") and one paraphrase of the first
    _, style0, digit0 = holdout_names[0].split()
    queries = holdout_names[:n_queries] + [f"a picture of the number {digit0}, {style0}"]
minilm = TextEncoder.minilm()
q_text = minilm.sentence(queries)
emb = embeddings(model, data["class"].X(layer["class"]), text["class"])
with torch.no_grad():
    q_emb = model.embed_text(q_text).double().numpy()
pool = np.flatnonzero(np.isin(lab.split, ["test", "test_holdout"]))
S = cosine_scores(q_emb, emb["z"][pool])
top = pool[np.argsort(-S, axis=1, kind="stable")[:, :top_k]]
shown = [data["class"].ids[i] for i in top.flatten()]
imgs = lora_samples(zoo, shown, n=n_samples, seed=seed).view(len(queries), top_k, n_samples, 8, 8)
retrieved = [[dict(model_id=data["class"].ids[i], class_name=lab.class_names[lab.classes[i]],
                   holdout=bool(lab.split[i] == "test_holdout"), score=float(S[q, list(pool).index(i)]))
              for i in top[q]] for q in range(len(queries))]
pd.DataFrame([{"query": queries[q], **{f"#{j + 1}": r["class_name"] + (" (holdout)" if r["holdout"] else "")
                                         for j, r in enumerate(rs)}} for q, rs in enumerate(retrieved)])


# %%
def mosaic(x):
    """[n, 8, 8] -> one 2-row tile of the samples, in [0, 1]."""
    n = len(x)
    cols = int(np.ceil(n / 2))
    tile = np.ones((2 * 9 - 1, cols * 9 - 1))
    for k in range(n):
        r, c = divmod(k, cols)
        tile[r * 9:r * 9 + 8, c * 9:c * 9 + 8] = (x[k].numpy() + 1) / 2
    return tile


fig, axes = plt.subplots(len(queries), top_k, figsize=(2.1 * top_k, 2.3 * len(queries)), squeeze=False)
for q in range(len(queries)):
    for j in range(top_k):
        ax = axes[q, j]
        r = retrieved[q][j]
        ax.imshow(mosaic(imgs[q, j]), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title(f"{r['class_name']}{' (holdout)' if r['holdout'] else ''}\ncos {r['score']:.2f}", fontsize=8,
                     color="C3" if r["holdout"] else "k")
    axes[q, 0].set_ylabel(f"“{queries[q]}”", fontsize=9, rotation=0, ha="right", va="center")
fig.suptitle(f"Text -> model retrieval: the top {top_k} test LoRAs per free-text query, {n_samples} samples each "
             "(red: holdout classes)")
fig.tight_layout()
plotting.savefig(fig, figures_dir, "probex_zs_retrieval")

# %% [markdown]
# ## 2 · The map of the weight-language space
# The aligned embeddings of every LoRA (train, val, test and holdout), projected on their first two principal
# components, with the projected class prompts of the holdout classes as stars.

# %%
rows = [zoo.row(i) for i in data["class"].ids]
digit = np.array([r["digit"] for r in rows])
style = np.array([r["style"] for r in rows])
hold = np.isin(lab.split, ["val_holdout", "test_holdout"])
Z = emb["z"]
mu = Z.mean(0)
_, _, Vt = np.linalg.svd(Z - mu, full_matrices=False)
P2 = (Z - mu) @ Vt[:2].T
T2 = (emb["t"] - mu) @ Vt[:2].T
fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
for ax, (name, values) in zip(axes, (("digit", digit), ("style", style))):
    cats = sorted(set(values.tolist()))
    col = dict(zip(cats, plotting.colors(len(cats))))
    for c in cats:
        m = values == c
        ax.scatter(P2[m & ~hold, 0], P2[m & ~hold, 1], color=col[c], s=14, alpha=0.7, label=str(c))
        ax.scatter(P2[m & hold, 0], P2[m & hold, 1], color=col[c], s=46, marker="X", edgecolor="k", lw=0.6)
    for cidx in lab.holdout_classes:
        ax.scatter(*T2[cidx], marker="*", s=260, color="w", edgecolor="k", lw=1.2, zorder=5)
        ax.annotate(lab.class_names[cidx], T2[cidx], fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_title(f"coloured by {name} (X: holdout LoRAs, ★: holdout prompts)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7, ncol=2, title=name)
fig.suptitle(f"ProbeX embeddings of {len(Z)} LoRAs ({layer['class']})")
fig.tight_layout()
plotting.savefig(fig, figures_dir, "probex_zs_embedding_map")

# %% [markdown]
# ## 3 · Retrieval and downstream metrics
# Text -> model: each class prompt is a query over the test LoRAs (relevant = the class's LoRAs), for all classes
# and for the holdout classes alone; model -> model: each test LoRA queries the others (L2 in e); kNN
# classification and one-class ROC-AUC on the training classes (train -> test). Random rankings give the chance mAP.

# %%
down = {key: downstream(fits[key], data[key].X(layer[key]), data[key].labels, text[key], ks=ks, k_nn=knn_k,
                        k_occ=occ_k) for key in ZOOS}
flat = {}
for key, dd in down.items():
    for task, vals in dd.items():
        for m, v in vals.items():
            if m != "k":
                flat[(task, m)] = {**flat.get((task, m), {}), key: v}
metrics = pd.DataFrame(flat).T.rename_axis(["task", "metric"])
metrics

# %%
results = dict(preset=preset, paper="ProbeX", layer=layer, queries=queries, retrieved=retrieved, seed=seed,
               downstream=down, chance=dict(knn=lab.chance("test")))
how = f"test / test_holdout LoRAs of the class-prompt zoo; ProbeX on notebook 07's zero-shot layer, seed {seed}"
results["claims"] = [
    dict(claim="text -> model retrieval of holdout classes beats random rankings (mAP >= 2x)",
         paper="text-based model search retrieves LoRAs of unseen classes", lhs="downstream/class/text_to_model_holdout/mAP",
         op=">=", rhs=2 * down["class"]["text_to_model_holdout"]["mAP_chance"], how=how),
    dict(claim="kNN classification in e well above chance (>= 3x)", paper="kNN classification on the representation",
         lhs="downstream/class/knn/e", op=">=", rhs=3 * lab.chance("test"), how=how + f"; k = {knn_k}"),
    dict(claim="one-class classification ROC-AUC >= 0.7 (kNN)", paper="one-class classification (mean ROC-AUC)",
         lhs="downstream/class/one_class/knn", op=">=", rhs=0.7, how=how + f"; k = {occ_k}"),
]
def measurable(c):
    try:
        plotting.resolve_claim(results, c)
        return True
    except plotting.ClaimError:   # e.g. a tiny zoo with one training LoRA per class: no one-class AUC
        return False


results["claims_not_measurable"] = [c["claim"] for c in results["claims"] if not measurable(c)]
results["claims"] = [c for c in results["claims"] if measurable(c)]
results["seconds"] = round(time.time() - t_start, 1)
results["figures"] = {
    "probex_zs_retrieval": "Text-to-model retrieval: the top test LoRAs for free-text queries, each shown with images sampled from the base UNet with that LoRA (the paper's retrieval figure).",
    "probex_zs_embedding_map": "ProbeX embeddings of the LoRAs, coloured by digit and by style, holdout LoRAs and prompts marked.",
}
path = plotting.save_results(results_dir, "08_probex_retrieval", results)
saved = json.loads(path.read_text())
pd.DataFrame([{k: c[k] for k in ("claim", "holds")} | {"ours": plotting.format_ours(c["ours"])}
              for c in saved["claims"]])

# %%
dc, dg = results["downstream"]["class"], results["downstream"]["generic"]
na = {"e": float("nan"), "knn": float("nan")}
dg = {"knn": na, "one_class": na, **dg}   # a tiny control zoo may have no test LoRAs
hits = sum(r["class_name"] == q for q, rs in zip(queries, retrieved) for r in rs[:1])
Markdown(f"""
**Reading the numbers of this run.** Text -> model mAP over the holdout classes is
{dc['text_to_model_holdout']['mAP']:.2f} (random rankings {dc['text_to_model_holdout']['mAP_chance']:.2f}); over all
classes {dc['text_to_model_all']['mAP']:.2f} (random {dc['text_to_model_all']['mAP_chance']:.2f}). The top LoRA matches a
query that names a class exactly for {hits} of {len(queries)} queries. Model -> model mAP {dc['model_to_model']['mAP']:.2f}
(random {dc['model_to_model']['mAP_chance']:.2f}); kNN in e {dc['knn']['e']:.2f} against {dc['knn']['X']:.2f} on the raw
layer (chance {lab.chance('test'):.3f}); one-class ROC-AUC {dc['one_class']['knn']:.2f} (kNN), {dc['one_class']['lw']:.2f}
(Ledoit-Wolf). On the generic-prompt control: holdout text -> model mAP {dg['text_to_model_holdout']['mAP']:.2f},
kNN {dg['knn']['e']:.2f}, one-class {dg['one_class']['knn']:.2f}.
""")
