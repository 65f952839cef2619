# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A4 · Language-aligned ProbeX: zero-shot scoring
#
# *ProbeX: [paper](https://arxiv.org/abs/2410.13569), [official code](https://github.com/eliahuhorwitz/ProbeX).
# weightspace is an independent reimplementation, not the authors' code; to cite, see the README's section "Citing".*
#
# **What you will learn**
# - how ProbeX (Horwitz et al., CVPR 2025, Sec. 5) puts model weights and text in one space: the weight
#   encoder gives $e \in \mathbb{R}^{r_T}$, a learned projection $P$ maps a prompt's text feature $t$ to
#   $P t + p \in \mathbb{R}^{r_T}$, and a model's score for a class is the cosine between the two — both
#   L2-normalised, no temperature;
# - zero-shot classification: a LoRA is labelled with the candidate prompt of highest score, so classes the
#   encoder never saw in training can be named, as long as there is text for them;
# - top-1 accuracy, with ties going to the lower index (as `argmax`).
#
# **Time:** about 30 minutes of work; every cell runs in a second on a laptop CPU (random embeddings,
# no zoo, no text encoder).
#
# **How it is graded:** `python -m weightspace grade A4 YOUR_NOTEBOOK.ipynb` checks the three functions
# below (3 + 2 + 2 points) against `weightspace.probex.zeroshot` on fresh random inputs. Only your imports
# and function definitions are graded. Do not import `weightspace` in your answers.

# %%
import torch

torch.manual_seed(0)


# %% [markdown]
# ## 1 · Cosine logits
# For weight embeddings $e_i$ and projected prompts $q_c$: $s_{ic} = \dfrac{e_i^\top q_c}{\lVert e_i\rVert\,
# \lVert q_c \rVert}$. A zero vector has no direction: its scores are 0 (normalise with a small floor,
# as `torch.nn.functional.normalize` does).

# %%
# EXERCISE: cosine_logits (3)
def cosine_logits(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[B, C] cosine similarities between the rows of e [B, r] and of q [C, r] (each L2-normalised)."""
    return torch.nn.functional.normalize(e, dim=-1) @ torch.nn.functional.normalize(q, dim=-1).T
# END EXERCISE


# %% [markdown]
# ## 2 · The text side

# %%
# EXERCISE: text_embeddings (2)
def text_embeddings(text: torch.Tensor, P_weight: torch.Tensor, P_bias: torch.Tensor) -> torch.Tensor:
    """[C, r_T] L2-normalised projections P t + p of the prompts' text features text [C, d]
    (P_weight [r_T, d], P_bias [r_T], as a torch Linear stores them)."""
    return torch.nn.functional.normalize(text @ P_weight.T + P_bias, dim=-1)
# END EXERCISE


# %% [markdown]
# ## 3 · Top-1 accuracy

# %%
# EXERCISE: top1_accuracy (2)
def top1_accuracy(scores: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of rows of scores [n, C] whose highest score is at the true class y [n] (ties: the
    lower index wins)."""
    return float((scores.argmax(1) == y).float().mean())
# END EXERCISE


# %% [markdown]
# ## 4 · Zero-shot on made-up embeddings
# Ten classes, of which the last three are "unseen": each weight embedding is its class's direction plus
# noise. Only the prompts of the candidates are scored (here: the unseen classes).

# %%
d, r_T, n_classes = 12, 6, 10
P_weight, P_bias = torch.randn(r_T, d), torch.zeros(r_T)
text = torch.randn(n_classes, d)
q = text_embeddings(text, P_weight, P_bias)
y = torch.randint(7, 10, (50,))
e = q[y] + 0.3 * torch.randn(50, r_T)
candidates = [7, 8, 9]
scores = cosine_logits(e, q[candidates])
print(f"zero-shot top-1 among {len(candidates)} unseen classes:",
      top1_accuracy(scores, y - 7), f"(chance {1 / len(candidates):.2f})")
