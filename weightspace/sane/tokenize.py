"""SANE's tokenizer: a checkpoint as a sequence of fixed-width "neuron-row" tokens (SANE, Sec. 3.1).

Each tokenized layer's weight W_raw in R^{c_out x c_1 x ...} becomes W in R^{c_out x c_r}, one row per output
neuron / channel holding all its incoming weights, with the layer's bias appended as one last column. Each row
is cut into ceil((c_r + 1) / d_t) chunks of the token size d_t, the last chunk zero-padded; a 0/1 mask marks the
real entries. Concatenating the layers in state-dict order gives tokens T in R^{N x d_t}, mask M in {0,1}^{N x d_t}
and three-part positions P in N^{N x 3}: [n the global token index, l the layer index, k the row within the
layer]; all chunks of one row share (l, k).

Everything works on stacked state dicts too (every tensor with the same leading model axes [..., *shape]), so a
whole zoo tokenizes in one call per layer: the only Python loop is over layers, never over rows.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

BN_NAMES = ("bn", "downsample.1", "batchnorm")   # name parts that mark batch-norm keys (the paper's zoos)


class TokenizeError(ValueError):
    """A state dict that cannot be tokenized as asked, or tokens that do not fit a reference. Names the layer."""


@dataclass(frozen=True)
class Layer:
    """One tokenized key: its weight (and bias) shapes, rows c_out, row length c_r + 1 and chunks per row."""
    key: str
    bias: str | None
    shape: tuple[int, ...]
    bias_shape: tuple[int, ...] | None
    rows: int
    row_len: int
    chunks: int

    @property
    def n_tokens(self) -> int:
        return self.rows * self.chunks


@dataclass(frozen=True)
class Layout:
    """Which keys are tokenized and how: the shape of the token sequence a state dict gives."""
    layers: tuple[Layer, ...]
    token_size: int
    ignore_bn: bool
    skipped: tuple[str, ...] = field(default=())

    @property
    def n_tokens(self) -> int:
        return sum(layer.n_tokens for layer in self.layers)

    @property
    def layer_index(self) -> torch.Tensor:
        """[N] the layer index l of every token."""
        return positions(self)[:, 1]

    def describe(self) -> str:
        return ", ".join(f"{lay.key} {lay.rows}x{lay.row_len}" for lay in self.layers)


@dataclass
class Tokens:
    """T [..., N, d_t], M [..., N, d_t] (float 0/1) and P [N, 3] (int64), with the layout that made them."""
    tokens: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    layout: Layout


def _is_bn(key: str, state_dict: Mapping) -> bool:
    stem = key.rsplit(".", 1)[0]
    return any(b in key for b in BN_NAMES) or f"{stem}.running_mean" in state_dict


def _shape(v, lead: int) -> tuple[int, ...]:
    return tuple(v.shape[lead:])


def layout(state_dict: Mapping[str, torch.Tensor], token_size: int | None = None, ignore_bn: bool = True,
           lead: int = 0) -> Layout:
    """The token layout of a state dict (Sec. 3.1): keys containing "weight", "running_mean" or "running_var"
    in their natural order, each consuming its bias (weight -> bias); batch-norm keys (named bn/batchnorm/
    downsample.1, or any module with running statistics) skipped when `ignore_bn`; num_batches_tracked always.
    `token_size` None or 0 = the longest row. `lead` = number of leading model axes (stacked state dicts)."""
    if token_size is not None and (isinstance(token_size, bool) or not isinstance(token_size, int)
                                   or token_size < 0):
        raise TokenizeError(f"token_size must be a positive integer (or None / 0 for the longest row), "
                            f"got {token_size!r}")
    picked, skipped = [], []
    for key, v in state_dict.items():
        kind = key.rsplit(".", 1)[-1]
        tokenizable = ("weight" in kind or kind in ("running_mean", "running_var"))
        if not tokenizable or (ignore_bn and _is_bn(key, state_dict)):
            skipped.append(key)
            continue
        shape = _shape(v, lead)
        if len(shape) == 0:
            raise TokenizeError(f"layer {key!r}: a scalar weight cannot be tokenized into rows")
        bias = key[: -len(kind)] + kind.replace("weight", "bias") if "weight" in kind else None
        bias = bias if bias in state_dict else None
        bias_shape = _shape(state_dict[bias], lead) if bias else None
        if bias_shape is not None and bias_shape != shape[:1]:
            raise TokenizeError(f"layer {key!r}: bias {bias!r} has shape {list(bias_shape)}, "
                                f"expected [{shape[0]}] (one per output row)")
        picked.append((key, bias, shape, bias_shape))
    if not picked:
        raise TokenizeError(f"no tokenizable layer among the keys {list(state_dict)[:8]}")
    skipped = [k for k in skipped if k not in {p[1] for p in picked}]
    row_lens = [math.prod(s[1:]) + (b is not None) for _, b, s, _ in picked]
    d_t = token_size or max(row_lens)
    layers = tuple(Layer(k, b, s, bs, s[0], r, -(-r // d_t))
                   for (k, b, s, bs), r in zip(picked, row_lens))
    return Layout(layers, d_t, ignore_bn, tuple(skipped))


def positions(lay: Layout) -> torch.Tensor:
    """P [N, 3] = [n, l, k] (Sec. 3.1): global index, layer index, row index within the layer."""
    ls = torch.cat([torch.full((x.n_tokens,), i, dtype=torch.long) for i, x in enumerate(lay.layers)])
    ks = torch.cat([torch.arange(x.rows).repeat_interleave(x.chunks) for x in lay.layers])
    return torch.stack([torch.arange(len(ls)), ls, ks], dim=1)


def check_positions(lay: Layout, max_positions: Sequence[int]) -> None:
    """Raise naming the first layer that does not fit the position tables [max n, max l, max k]."""
    n_max, l_max, k_max = max_positions
    end = 0
    for i, x in enumerate(lay.layers):
        end += x.n_tokens
        if i >= l_max:
            raise TokenizeError(f"layer {x.key!r} is layer {i}, but the position table holds {l_max} layers "
                                f"(max_positions[1])")
        if x.rows > k_max:
            raise TokenizeError(f"layer {x.key!r} has {x.rows} rows, but the position table holds {k_max} "
                                f"(max_positions[2])")
        if end > n_max:
            raise TokenizeError(f"layer {x.key!r} ends at token {end}, but the position table holds {n_max} "
                                f"tokens (max_positions[0])")


def tokenize(state_dict: Mapping[str, torch.Tensor], token_size: int | None = None, ignore_bn: bool = True,
             lead: int | None = None, like: Layout | None = None) -> Tokens:
    """Tokens, mask and positions of one state dict, or of a stacked one ([M, *shape] tensors: lead=1,
    inferred from `like`). `like` = a layout to match (e.g. the one a SANE was trained on); a state dict that
    does not fit it raises naming the layer."""
    lead = 0 if lead is None else lead
    if like is not None:
        token_size, ignore_bn = like.token_size, like.ignore_bn
    lay = layout(state_dict, token_size, ignore_bn, lead)
    if like is not None:
        _same_layout(lay, like, "state dict")
    d_t = lay.token_size
    toks, masks = [], []
    for x in lay.layers:
        w = state_dict[x.key]
        batch = tuple(w.shape[:lead])
        rows = w.reshape(*batch, x.rows, -1).float()
        if x.bias:
            rows = torch.cat([rows, state_dict[x.bias].reshape(*batch, x.rows, 1).float()], dim=-1)
        pad = x.chunks * d_t - x.row_len
        m = torch.ones(x.row_len)
        toks.append(torch.nn.functional.pad(rows, (0, pad)).reshape(*batch, x.n_tokens, d_t))
        masks.append(torch.nn.functional.pad(m, (0, pad)).expand(x.rows, -1).reshape(x.n_tokens, d_t))
    tokens = torch.cat(toks, dim=-2)
    mask = torch.cat(masks, dim=0).expand_as(tokens)
    return Tokens(tokens, mask, positions(lay), lay)


def _same_layout(got: Layout, want: Layout, what: str) -> None:
    names = [x.key for x in want.layers]
    if [x.key for x in got.layers] != names:
        extra = sorted({x.key for x in got.layers} ^ set(names))[:4]
        raise TokenizeError(f"{what} has other tokenized layers than the reference (differing: {extra})")
    for a, b in zip(got.layers, want.layers):
        if (a.shape, a.bias_shape) != (b.shape, b.bias_shape):
            raise TokenizeError(f"layer {a.key!r}: shape {list(a.shape)} (bias {a.bias_shape}) in the {what}, "
                                f"{list(b.shape)} (bias {b.bias_shape}) in the reference")


def detokenize(tokens: torch.Tensor | Tokens, reference_state_dict: Mapping[str, torch.Tensor],
               ignore_bn: bool | None = None) -> dict[str, torch.Tensor]:
    """The state dict of tokens [..., N, d_t] in the shapes of `reference_state_dict` (Sec. 3.1 inverse): each
    layer's tokens viewed as (c_out, chunks * d_t), the first prod(shape)/c_out columns the weight, the next
    the bias. Keys that are not tokenized (BN when ignored, non-weight tensors) are copied from the reference
    (broadcast over the leading axes). `ignore_bn` defaults to the tokens' own layout (else True)."""
    if isinstance(tokens, Tokens):
        ignore_bn = tokens.layout.ignore_bn if ignore_bn is None else ignore_bn
        tokens = tokens.tokens
    ignore_bn = True if ignore_bn is None else ignore_bn
    d_t = tokens.shape[-1]
    lay = layout(reference_state_dict, d_t, ignore_bn)
    if tokens.shape[-2] != lay.n_tokens:
        raise TokenizeError(f"{tokens.shape[-2]} tokens of width {d_t}, but the reference gives {lay.n_tokens} "
                            f"({lay.describe()}): a reference of another architecture?")
    batch = tuple(tokens.shape[:-2])
    out, start = {}, 0
    for x in lay.layers:
        t = tokens[..., start:start + x.n_tokens, :].reshape(*batch, x.rows, x.chunks * d_t)
        start += x.n_tokens
        ref = reference_state_dict[x.key]
        out[x.key] = t[..., : x.row_len - (x.bias is not None)].reshape(*batch, *x.shape).to(ref.dtype)
        if x.bias:
            out[x.bias] = t[..., x.row_len - 1].to(reference_state_dict[x.bias].dtype)
    for k, v in reference_state_dict.items():
        if k not in out:
            out[k] = v.expand(*batch, *v.shape).clone() if batch else v.clone()
    return {k: out[k] for k in reference_state_dict}


def tokenize_rowloop(state_dict: Mapping[str, torch.Tensor], token_size: int | None = None,
                     ignore_bn: bool = True) -> torch.Tensor:
    """The same tokens built one row and one chunk at a time: the straightforward reference the benchmark
    and the tests compare `tokenize` against."""
    lay = layout(state_dict, token_size, ignore_bn)
    d_t, out = lay.token_size, []
    for x in lay.layers:
        w = state_dict[x.key].reshape(x.rows, -1)
        for r in range(x.rows):
            row = w[r].tolist() + ([float(state_dict[x.bias][r])] if x.bias else [])
            for c in range(x.chunks):
                chunk = row[c * d_t:(c + 1) * d_t]
                out.append(chunk + [0.0] * (d_t - len(chunk)))
    return torch.tensor(out)
