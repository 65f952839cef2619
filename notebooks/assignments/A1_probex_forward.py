# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A1 · ProbeX: the forward pass from the paper's formula
#
# *ProbeX: [paper](https://arxiv.org/abs/2410.13569), [official code](https://github.com/eliahuhorwitz/ProbeX).
# weightspace is an independent reimplementation, not the authors' code; to cite, see the README's section "Citing".*
#
# **What you will learn**
# - how ProbeX (Horwitz et al., *Learning on Model Weights using Tree Experts*, CVPR 2025, Sec. 3) reads ONE
#   hidden layer of a model as a matrix $X \in \mathbb{R}^{d_H \times d_W}$ — linear, convolutional and 1-D
#   weights alike;
# - its forward pass: probes $u_l$ (the columns of $U \in \mathbb{R}^{d_W \times r_U}$) multiply $X$ **from
#   the right**, one shared projection $V \in \mathbb{R}^{d_H \times r_V}$, a ReLU, one encoder $M_l$ per
#   probe and a linear head:
#   $$e = \sum_{l=1}^{r_U} M_l\,\mathrm{ReLU}(V^\top X u_l) + b, \qquad y = T e + c;$$
# - why that costs $d_W r_U + d_H r_V + (r_U r_V + 1) r_T + (r_T + 1) d_Y$ parameters instead of the
#   $d_Y d_H d_W$ of a dense linear expert (without the ReLU it is a Tucker factorisation of one).
#
# **Time:** about 45 minutes of work; every cell runs in a second on a laptop CPU (random inputs, no zoo).
#
# **How it is graded:** `python -m weightspace grade A1 YOUR_NOTEBOOK.ipynb` checks the three functions
# below (2 + 5 + 1 points) against the `weightspace` package on fresh random inputs, edge cases included.
# Only your imports and function definitions are graded; the other cells are for you. Do not import
# `weightspace` in your answers: the grader does not allow it.

# %%
import torch

torch.manual_seed(0)


# %% [markdown]
# ## 1 · From a stored tensor to the matrix $X$
# A linear layer stores its weight as `[out, in]` = $[d_H, d_W]$: that is $X$, untransposed. A 1×1 convolution
# `[C_out, C_in, 1, 1]` is the same matrix with two extra axes. A $k \times k$ convolution is **re-read** in
# memory order (a reshape, not a permute) as $[C_{in} k^2, C_{out}]$, as the paper's code does for ResNets;
# a 1-D tensor (a bias, a norm) becomes a column; other size-1 axes are dropped.

# %%
# EXERCISE: layer_matrix (2 points)
def layer_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The matrix X ProbeX reads from one stored tensor.

    - 4-D [C_out, C_in, k, k] with k > 1: weight.reshape(-1, C_out)  (C_in = 1 included);
    - otherwise drop the size-1 axes (torch.squeeze); a 1-D result becomes a column [d, 1];
    - anything that is still not 2-D: raise ValueError saying the shape.
    """
    raise NotImplementedError("Exercise layer_matrix (2 points): write this function")


# %%
for shape in [(5, 7), (6, 4, 1, 1), (5, 3, 3, 3), (9,)]:
    print(shape, "->", tuple(layer_matrix(torch.randn(shape)).shape))


# %% [markdown]
# ## 2 · The forward pass
# With a batch $X \in \mathbb{R}^{B \times d_H \times d_W}$: the responses $R = X U$ ($[B, d_H, r_U]$, column
# $l$ is $X u_l$), the features $z_l = \mathrm{ReLU}(V^\top X u_l) \in \mathbb{R}^{r_V}$, the representation
# $e = \sum_l M_l z_l + b \in \mathbb{R}^{r_T}$ and the logits $y = T e + c \in \mathbb{R}^{d_Y}$.
# Here the encoders come stacked as one tensor `M` of shape $[r_U, r_T, r_V]$ (`M[l]` is $M_l$).

# %%
# EXERCISE: probex_forward (5 points)
def probex_forward(X, U, V, M, b, T, c):
    """ProbeX logits y [B, d_Y] for layers X [B, d_H, d_W].

    U [d_W, r_U] probes, V [d_H, r_V] shared projection, M [r_U, r_T, r_V] per-probe encoders, b [r_T],
    T [d_Y, r_T] and c [d_Y] the head. Hints: the probes act on the input side (X @ U); apply V to every
    probe response, then the ReLU; torch.einsum is handy for the sum over probes.
    """
    raise NotImplementedError("Exercise probex_forward (5 points): write this function")


# %%
d_H, d_W, r_U, r_V, r_T, d_Y = 12, 8, 4, 3, 5, 2
params = [torch.randn(d_W, r_U), torch.randn(d_H, r_V), torch.randn(r_U, r_T, r_V), torch.randn(r_T),
          torch.randn(d_Y, r_T), torch.randn(d_Y)]
X = torch.randn(6, d_H, d_W)
y = probex_forward(X, *params)
print("logits", tuple(y.shape))
# a probe on the input side: doubling one input column of X only changes what the probes see there
X2 = X.clone()
X2[:, :, 0] *= 2
print("changed:", not torch.allclose(probex_forward(X2, *params), y))


# %% [markdown]
# ## 3 · Why it is small
# Count the parameters: $U$, $V$, the $r_U$ encoders $M_l$ with one bias $b$, and the head $T, c$.

# %%
# EXERCISE: probex_n_params (1 point)
def probex_n_params(d_H: int, d_W: int, r_U: int, r_V: int, r_T: int, d_Y: int) -> int:
    """The number of ProbeX parameters for a [d_H, d_W] layer (probes and projection have no bias)."""
    raise NotImplementedError("Exercise probex_n_params (1 point): write this function")


# %%
probex = probex_n_params(768, 768, 128, 128, 128, 100)
dense = 100 * 768 * 768 + 100
print(f"ViT layer 768x768, 100 classes: ProbeX {probex:,} parameters, a dense linear expert {dense:,} "
      f"({dense / probex:.0f}x more)")
