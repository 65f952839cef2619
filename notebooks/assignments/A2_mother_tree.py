# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A2 · MoTHer: who was fine-tuned from whom
#
# *MoTHer: [paper](https://arxiv.org/abs/2405.18432), [official code](https://github.com/eliahuhorwitz/MoTHer).
# weightspace is an independent reimplementation, not the authors' code; to cite, see the README's section "Citing".*
#
# **What you will learn**
# - the direction signal of MoTHer (Horwitz et al., *Unsupervised Model Tree Heritage
#   Recovery*, ICLR 2025, Sec. 4): the excess kurtosis $m_4 / m_2^2 - 3$ of a model's weights, which
#   fine-tuning lowers;
# - the binary direction matrix $K[p, c] = 1$ when $\mathrm{kurt}(c) > \mathrm{kurt}(p)$ (an edge $p \to c$
#   that goes against the trend), the merged prior $M = D + \lambda\,\mathrm{mean}(D)\,K$ with an infinite
#   diagonal, and the minimum spanning arborescence (Chu-Liu/Edmonds) whose edges are the Model Tree;
# - why the distance alone finds the undirected tree but not which way its edges point.
#
# **Time:** about 40 minutes of work; every cell runs in a second on a laptop CPU (a synthetic tree of
# random matrices, no zoo).
#
# **How it is graded:** `python -m weightspace grade A2 YOUR_NOTEBOOK.ipynb` checks the four functions below
# (2 + 2 + 2 + 3 points) against the `weightspace` package on fresh random inputs. Only your imports and
# function definitions are graded. You may use `networkx` (installed) for the arborescence; do not import
# `weightspace` in your answers.

# %%
import networkx as nx
import numpy as np

rng = np.random.default_rng(0)


# %% [markdown]
# ## 1 · Excess kurtosis
# Over all $n$ entries of a matrix, with population moments about the mean:
# $m_k = \frac1n \sum_{ij} (W_{ij} - \bar W)^k$ and $\mathrm{kurt}(W) = m_4 / m_2^2 - 3$ — 0 for Gaussian
# entries, large when a few weights are much bigger than the rest.

# %%
# EXERCISE: excess_kurtosis (2 points)
def excess_kurtosis(W: np.ndarray) -> float:
    """Excess kurtosis (Fisher, population moments) of all entries of the matrix W, as a float."""
    raise NotImplementedError("Exercise excess_kurtosis (2 points): write this function")


# %%
print("Gaussian  ", round(excess_kurtosis(rng.standard_normal((64, 64))), 3))
print("Student t3", round(excess_kurtosis(rng.standard_t(3, (64, 64))), 3))


# %% [markdown]
# ## 2 · The direction matrix and the merged prior

# %%
# EXERCISE: direction_matrix (2 points)
def direction_matrix(k: np.ndarray) -> np.ndarray:
    """K [n, n] float: K[p, c] = 1.0 when kurtosis k[c] > k[p] (the edge p -> c goes against fine-tuning's
    fall in kurtosis), else 0.0. Equal kurtosis is no penalty. Hint: broadcasting, k[None, :] vs k[:, None]."""
    raise NotImplementedError("Exercise direction_matrix (2 points): write this function")


# %%
# EXERCISE: merged_prior (2 points)
def merged_prior(D: np.ndarray, K: np.ndarray, lam: float) -> np.ndarray:
    """M = D + lam * mean(D) * K with M[u, u] = inf (no self-loops). mean(D) is over all n^2 entries, the zero
    diagonal included: it makes lam scale-free."""
    raise NotImplementedError("Exercise merged_prior (2 points): write this function")


# %% [markdown]
# ## 3 · The arborescence
# The minimum-cost spanning arborescence of the complete directed graph with edge costs $M[p, c]$: every
# node but the root has exactly one parent, and the total cost is minimal.

# %%
# EXERCISE: arborescence (3 points)
def arborescence(M: np.ndarray, names: list[str]) -> list[tuple[str, str]]:
    """The (parent, child) edges of the minimum spanning arborescence with costs M[p, c] (node i is
    names[i]); [] for one node. Hint: networkx.minimum_spanning_arborescence on a DiGraph whose edges carry
    a "weight"; leave out the infinite diagonal."""
    raise NotImplementedError("Exercise arborescence (3 points): write this function")


# %% [markdown]
# ## 4 · A synthetic Model Tree
# A heavy-tailed root; each child is its parent plus Gaussian noise (a stand-in for fine-tuning), which
# lowers the kurtosis. $D$ is the RMS distance between the weights.

# %%
parents = {"root": None, "a": "root", "b": "root", "a1": "a", "a2": "a", "b1": "b"}
weights = {}
for name, parent in parents.items():
    noise = 0.6 * rng.standard_normal((40, 40))
    weights[name] = rng.standard_t(3, (40, 40)) if parent is None else weights[parent] + noise
names = list(weights)
D = np.array([[np.sqrt(np.mean((weights[u] - weights[v]) ** 2)) for v in names] for u in names])
k = np.array([excess_kurtosis(weights[n]) for n in names])
truth = {(p, c) for c, p in parents.items() if p}
for lam in (0.0, 0.3):
    edges = arborescence(merged_prior(D, direction_matrix(k), lam), names)
    print(f"lambda {lam}: {len(truth & set(edges))}/{len(truth)} edges right", edges)
