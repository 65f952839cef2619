# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A3 · SANE: a checkpoint as a sequence of tokens
#
# *SANE: [paper](https://arxiv.org/abs/2406.09997), [official code](https://github.com/HSG-AIML/SANE).
# weightspace is an independent reimplementation, not the authors' code; to cite, see the README's section "Citing".*
#
# **What you will learn**
# - how SANE (Schürholt et al., *Towards Scalable and Versatile Weight Space Learning*, ICML 2024, Sec. 3.1)
#   turns any state dict into tokens a transformer can read: one **row per output neuron** holding all its
#   incoming weights and, as one last column, its bias;
# - how rows of different lengths become tokens of one width $d_t$: each row is cut into
#   $\lceil (c_r + 1) / d_t \rceil$ chunks, the last one zero-padded, with a 0/1 mask marking the real entries;
# - the three-part positions $[n, l, k]$: the global token index, the layer index and the row within the
#   layer (all chunks of one row share $l$ and $k$).
#
# **Time:** about 40 minutes of work; every cell runs in a second on a laptop CPU (a random two-layer CNN,
# no zoo).
#
# **How it is graded:** `python -m weightspace grade A3 YOUR_NOTEBOOK.ipynb` checks the three functions
# below (2 + 3 + 2 points) against `weightspace.sane.tokenize` on fresh random inputs. Only your imports and
# function definitions are graded; `tokenize` at the end puts them together for you. Do not import
# `weightspace` in your answers.

# %%
import torch

torch.manual_seed(0)


# %% [markdown]
# ## 1 · Neuron rows
# A weight $W \in \mathbb{R}^{c_{out} \times c_1 \times \dots}$ (linear `[out, in]`, conv `[out, in, k, k]`)
# becomes $[c_{out}, c_r]$ with $c_r = c_1 \cdots$ (row $i$ holds everything neuron $i$ reads), and the bias,
# if there is one, is appended as the last column.

# %%
# EXERCISE: layer_rows (2)
def layer_rows(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[c_out, c_r + 1] float32 rows (the bias last), or [c_out, c_r] when bias is None."""
    rows = weight.reshape(weight.shape[0], -1).float()
    if bias is not None:
        rows = torch.cat([rows, bias.reshape(-1, 1).float()], dim=1)
    return rows
# END EXERCISE


# %% [markdown]
# ## 2 · Chunks of one width

# %%
# EXERCISE: chunk_rows (3)
def chunk_rows(rows: torch.Tensor, token_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, mask), each [rows * chunks, token_size] float32, chunks = ceil(row length / token_size):
    row r's chunks are tokens r * chunks ... r * chunks + chunks - 1, the last one zero-padded; the mask is
    1.0 on real entries, 0.0 on padding. Hint: pad every row once, then reshape."""
    n, length = rows.shape
    chunks = -(-length // token_size)
    pad = chunks * token_size - length
    tokens = torch.nn.functional.pad(rows.float(), (0, pad)).reshape(n * chunks, token_size)
    mask = torch.nn.functional.pad(torch.ones(n, length), (0, pad)).reshape(n * chunks, token_size)
    return tokens, mask
# END EXERCISE


# %% [markdown]
# ## 3 · Positions

# %%
# EXERCISE: token_positions (2)
def token_positions(rows: list[int], chunks: list[int]) -> torch.Tensor:
    """[N, 3] int64 positions [n, l, k] of the tokens of layers l = 0, 1, ... with rows[l] rows of
    chunks[l] chunks each (N = sum of rows * chunks): n counts all tokens, k the row within layer l."""
    ls = torch.cat([torch.full((r * c,), i, dtype=torch.long) for i, (r, c) in enumerate(zip(rows, chunks))])
    ks = torch.cat([torch.arange(r).repeat_interleave(c) for r, c in zip(rows, chunks)])
    return torch.stack([torch.arange(len(ls)), ls, ks], dim=1)
# END EXERCISE


# %% [markdown]
# ## 4 · The tokenizer
# Your three functions together (given): the weights of a state dict in their order, each with its bias;
# with `token_size=None` the width is the longest row.

# %%
def tokenize(state_dict: dict, token_size: int | None = None):
    layers = [(k, k[: -len("weight")] + "bias") for k in state_dict if k.endswith("weight")]
    all_rows = [layer_rows(state_dict[w], state_dict.get(b)) for w, b in layers]
    d_t = token_size or max(r.shape[1] for r in all_rows)
    pieces = [chunk_rows(r, d_t) for r in all_rows]
    chunks = [len(t) // len(r) for t, r in zip((p[0] for p in pieces), all_rows)]
    return (torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces]),
            token_positions([len(r) for r in all_rows], chunks))


# %%
net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4, 3))
tokens, mask, positions = tokenize(net.state_dict(), token_size=4)
print("tokens", tuple(tokens.shape), "real entries", int(mask.sum()),
      "parameters", sum(p.numel() for p in net.parameters()))
print(positions[:6].tolist())
