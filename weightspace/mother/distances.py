"""MoTHer's two weight statistics for all models at once: the distance D and the direction score.

    l_FT(u, v)   = 1/L  sum_l  RMS(W_u,l - W_v,l)             (mean over the L chosen matrices)
    l_LoRA(u, v) = sum_l  rank(W_u,l - W_v,l)                  (over the value matrices)
    kurt(u)      = sum_l  m4(W_u,l) / m2(W_u,l)^2 - 3          (excess kurtosis, population moments)

All pairs at once (the Gram trick). Stack one layer of the N models as rows of X [N, P]; then

    ||x_u - x_v||^2 = G_uu + G_vv - 2 G_uv,   G = X X^T

one matrix product instead of N^2 / 2 differences. Models of one tree differ by ~1% of their norm, so
in float32 the three terms cancel and about three digits are lost. Centring fixes this: subtracting any
fixed row c from every row changes no distance, and with c = one of the models (subtracted while the
rows are stacked, in the same pass) the rows of X - c are as small as the spread of the models, so G is
as accurate as the differences themselves: float32, within 1e-6 of a float64 pair loop. The products
are summed over blocks of 4096 columns in float64, so that bound does not degrade with the layer size.
Pairs that are still far closer together than their centred norms (a tight tree inside a forest of
distant ones) are detected from G itself and redone with each group centred on its own mean.

Memory stays bounded: layers are read one block of rows at a time from every model (memory-mapped
safetensors when models are `LazyStateDict`s), so at most `chunk_bytes` of weights are held at once.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from weightspace.stats import kurtosis_from_power_sums, power_sums
from weightspace.zoo.format import LORA_FACTORS

from .layers import Layer, MotherError, check_models, read_block

EPS32 = float(torch.finfo(torch.float32).eps)
ONE_THREAD_BELOW = 1 << 20   # below this many numbers per operation, one thread: the small batched ops gain nothing
                  # from a second one, and under CPU contention OpenMP barriers make them many times slower


def _threads(numel: int):
    from weightspace.runtime import torch_threads

    return torch_threads(1) if numel < ONE_THREAD_BELOW else contextlib.nullcontext()


CHUNK_BYTES = 16 << 20   # weights held at once per layer block (measured best on ViT-B-sized layers)


def _device(device) -> torch.device:
    from weightspace.runtime import device as default_device

    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, TypeError, AssertionError) as e:
        raise MotherError(f"device {device!r} cannot be used here ({type(e).__name__}: {str(e)[:120]}); "
                          "try 'cpu'") from None
    return dev


def _row_chunks(layer: Layer, n_models: int, chunk_bytes: int):
    rows, cols = layer.shape
    step = max(1, chunk_bytes // max(1, n_models * cols * 4))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def _stack(models: Mapping[str, Mapping], layer: Layer, r0: int, r1: int, dev, minus_first: bool = False
           ) -> torch.Tensor:
    """Rows [r0, r1) of `layer` from every model -> [N, (r1-r0)*cols] float32 on `dev`, optionally minus
    the first model's, written straight into one buffer (a single pass over the weights)."""
    it = iter(models.values())
    first = read_block(next(it), layer, r0, r1).reshape(-1).to(dev)
    X = torch.empty(len(models), first.numel(), device=dev)
    if minus_first:
        X[0].zero_()
        for i, sd in enumerate(it, 1):
            torch.sub(read_block(sd, layer, r0, r1).reshape(-1).to(dev), first, out=X[i])
    else:
        X[0] = first
        for i, sd in enumerate(it, 1):
            X[i] = read_block(sd, layer, r0, r1).reshape(-1)
    return X


def _check_finite(X: torch.Tensor, models: Mapping, layer: Layer) -> None:
    bad = ~torch.isfinite(X).all(1)
    if bad.any():
        who = [n for n, b in zip(models, bad.tolist()) if b]
        raise MotherError(f"layer {layer.name!r} has NaN or inf weights in model(s) {who[:5]}")


GRAM_BLOCK = 4096   # columns per float32 product; the products are summed in float64


def _gram(X: torch.Tensor) -> torch.Tensor:
    """X X^T as float64 on the CPU: float32 products over blocks of 4096 columns (one batched matmul),
    summed in float64, so the rounding stays ~2 eps whatever the number of columns (a single float32
    dot product of 2^18 terms is ~10x worse)."""
    N, P = X.shape
    nb = P // GRAM_BLOCK
    G = torch.zeros(N, N, dtype=torch.float64)
    if nb:
        V = X.as_strided((nb, N, GRAM_BLOCK), (GRAM_BLOCK, X.stride(0), 1))
        G += torch.bmm(V, V.transpose(1, 2)).double().sum(0).cpu()
    if nb * GRAM_BLOCK < P:
        T = X[:, nb * GRAM_BLOCK:]
        G += (T @ T.T).double().cpu()
    return G


def _sq_dists(Xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances and squared norms of rows already centred on a reference (float64, CPU)."""
    G = _gram(Xc)
    n = G.diagonal().clone()
    return (n[:, None] + n[None, :] - 2 * G).clamp_min_(0), n


def gram_sq_distances(X: torch.Tensor, tol: float = 1e-6, centre: bool = True, stats: dict | None = None,
                      raw=None) -> torch.Tensor:
    """||x_u - x_v||^2 for all rows of X [N, P] (float64 [N, N] on the CPU) by one matrix product.

    Centring: the rows minus the first row (a reference model; any fixed row leaves every distance
    unchanged). `raw`: X is then already centred and raw(idx) returns the original rows idx.

    The float32 rounding of G_uv is ~2 eps * (n_u + n_v), n = squared norms of the centred rows, so a
    pair is at risk when its distance is small next to those norms: models of one tight tree inside a
    forest of distant trees. Such pairs are grouped (connected components) and each group gets its own
    Gram matrix, centred on the group's mean; whatever is still at risk after two levels is computed
    from the differences. `centre=False` is the plain Gram trick (kept to show what centring buys).
    """
    if not centre:   # the naive way: one float32 product of the raw rows
        G = (X @ X.T).double().cpu()
        n = G.diagonal()
        return (n[:, None] + n[None, :] - 2 * G).clamp_min_(0).fill_diagonal_(0)
    from scipy.sparse.csgraph import connected_components

    if raw is None:
        raw = X.__getitem__
        X = X - X[:1]
    sq, n = _sq_dists(X)
    scale = n[:, None] + n[None, :]             # what the rounding of each entry is proportional to
    redone = 0
    for level in range(3):
        # relative error of the distance is half that of its square
        risky = (4 * EPS32 * scale > 2 * tol * sq) if tol else torch.zeros_like(sq, dtype=torch.bool)
        risky.fill_diagonal_(False)
        if not risky.any():
            break
        if level < 2:
            # every group centred on its own mean, all groups in one Gram matrix (pairs of one group are
            # exact in it; pairs across groups are not used)
            k, comp = connected_components(risky.numpy(), directed=False)
            sizes = np.bincount(comp, minlength=k)
            idx = torch.from_numpy(np.flatnonzero(sizes[comp] >= 2))
            lab = torch.from_numpy(comp[idx.numpy()]).to(X.device)
            R = raw(idx.to(X.device))
            means = torch.zeros(k, R.shape[1], device=R.device).index_add_(0, lab, R)
            means /= torch.from_numpy(np.maximum(sizes, 1)).to(R)[:, None]
            sq_c, n_c = _sq_dists(R - means[lab])
            lab = lab.cpu()
            block = risky[idx][:, idx] & (lab[:, None] == lab[None, :])
            sub = sq[idx][:, idx]
            sub[block] = sq_c[block]
            sq[idx[:, None], idx[None, :]] = sub
            sc = scale[idx][:, idx]
            sc[block] = (n_c[:, None] + n_c[None, :])[block]
            scale[idx[:, None], idx[None, :]] = sc
            redone += int(block.sum()) // 2
        else:   # the last resort: differences, pair by pair (in batches)
            iu, iv = torch.nonzero(torch.triu(risky, 1), as_tuple=True)
            step = max(1, (64 << 20) // (4 * X.shape[1]))
            for lo in range(0, len(iu), step):
                a, b = iu[lo:lo + step].to(X.device), iv[lo:lo + step].to(X.device)
                diff = (raw(a) - raw(b)).double()
                exact = (diff * diff).sum(1).cpu()
                sq[a.cpu(), b.cpu()], sq[b.cpu(), a.cpu()] = exact, exact
            redone += len(iu)
    if stats is not None:
        stats["recomputed_pairs"] = stats.get("recomputed_pairs", 0) + redone
    return sq.fill_diagonal_(0)


def rms_distances(models: Mapping[str, Mapping], layers: Sequence[Layer], *, device=None,
                  chunk_bytes: int = CHUNK_BYTES, tol: float = 1e-6, centre: bool = True,
                  stats: dict | None = None) -> np.ndarray:
    """D[u, v] = l_FT(u, v) = mean over layers of RMS(W_u,l - W_v,l), as float64 [N, N].

    Streams each layer in row blocks of at most `chunk_bytes` (all models at once), on `device`.
    """
    check_models(models, layers)
    dev = _device(device)
    N = len(models)
    D = torch.zeros(N, N, dtype=torch.float64)
    for layer in layers:
        sq = torch.zeros(N, N, dtype=torch.float64)
        for r0, r1 in _row_chunks(layer, N, chunk_bytes):
            # one pass: every model's block minus the first model's, the original rows re-read on demand
            X = _stack(models, layer, r0, r1, dev, minus_first=centre)
            names = list(models)

            def raw(idx, r0=r0, r1=r1):
                return _stack({names[i]: models[names[i]] for i in idx.tolist()}, layer, r0, r1, dev)

            with _threads(X.numel()):
                block = gram_sq_distances(X, tol=tol, centre=centre, stats=stats, raw=raw if centre else None)
            if not torch.isfinite(block).all():     # NaN/inf weights poison G: find whose
                _check_finite(_stack(models, layer, r0, r1, dev), models, layer)
                # finite weights whose squares overflow float32: redo this block in float64
                X = _stack(models, layer, r0, r1, dev).double()
                X -= X[:1].clone()
                block = _sq_dists(X)[0].fill_diagonal_(0)
                if not torch.isfinite(block).all():
                    raise MotherError(f"layer {layer.name!r}: weight differences too large to square even in "
                                      "float64 (|w| ~ 1e150 or more); these are not trained weights")
            sq += block
        D += (sq / layer.numel).sqrt()
    return (D / len(layers)).numpy()


def rms_distances_pairloop(models: Mapping[str, Mapping], layers: Sequence[Layer],
                           dtype=torch.float64) -> np.ndarray:
    """l_FT the straightforward way: for every pair, for every layer, the RMS of the difference, averaged
    over layers (MoTHer's ICLR version, Sec. 4.1). O(N^2) work per layer; the reference the Gram trick is
    tested against. (The earlier arXiv version's l_FT was another distance, a max over layers of min-max-
    normalised signed differences; we follow the published one.)"""
    check_models(models, layers)
    names = list(models)
    N = len(names)
    mats = {n: [read_block(models[n], lay).to(dtype) for lay in layers] for n in names}
    D = np.zeros((N, N))
    for i in range(N):
        for j in range(i + 1, N):
            d = sum(float(((a - b) ** 2).mean().sqrt()) for a, b in zip(mats[names[i]], mats[names[j]]))
            D[i, j] = D[j, i] = d / len(layers)
    return D


# ------------------------------------------------------------------------------------------ LoRA ranks

def _factor_keys(layer: Layer) -> tuple[str, str]:
    stem = LORA_FACTORS + (layer.key[: -len(".weight")] if layer.key.endswith(".weight") else layer.key)
    return f"{stem}.U", f"{stem}.V"


def _factors(sd: Mapping, layer: Layer, d_in: int):
    """(U [rows, R], V [R, cols]) with W = base + U V for this layer's rows, or None without factors."""
    ku, kv = _factor_keys(layer)
    if ku not in sd or kv not in sd:
        return None
    U, V = sd[ku].to(torch.float32), sd[kv].to(torch.float32)
    if layer.rows:
        U = U[layer.rows[0]:layer.rows[1]]
    if U.shape[0] != layer.shape[0] or V.shape != (U.shape[1], d_in):
        raise MotherError(f"LoRA factors {ku!r} {list(U.shape)} / {kv!r} {list(V.shape)} do not fit layer "
                          f"{layer.name!r} of shape {list(layer.shape)}")
    return U, V


def matrix_rank(diff: torch.Tensor) -> torch.Tensor:
    """numpy's default rank: singular values above s_max * max(m, n) * eps (the paper's choice)."""
    s = torch.linalg.svdvals(diff)
    eps = torch.finfo(diff.dtype).eps
    tol = s[..., :1] * max(diff.shape[-2:]) * eps
    return (s > tol).sum(-1)


def _factor_rank(L: torch.Tensor, Rt: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """rank(L Rt^T) for stacked pairs, L [P, m, k] = [U_a, -U_b], Rt [P, n, k] = [V_a; V_b]^T, without
    forming the [m, n] difference U_a V_a - U_b V_b.

    Its squared singular values are the eigenvalues of A^(1/2) B A^(1/2) with the k x k Gram matrices
    A = L^T L and B = Rt^T Rt (k <= the two ranks summed): O(m k^2) instead of the O(m n^2) SVD. In
    float64 the squaring costs nothing at numpy's float32 tolerance (s > s_max * max(m, n) * eps32).
    """
    if L.shape[-1] == 0:
        return torch.zeros(L.shape[0], dtype=torch.long)
    L, Rt = L.double(), Rt.double()
    A = L.transpose(-1, -2) @ L
    B = Rt.transpose(-1, -2) @ Rt
    lam, Q = torch.linalg.eigh(A)
    half = Q * lam.clamp_min(0).sqrt()[..., None, :] @ Q.transpose(-1, -2)
    s2 = torch.linalg.eigvalsh(half @ B @ half).clamp_min(0)
    s = s2.sqrt()
    tol = s.amax(-1, keepdim=True) * max(m, n) * EPS32
    return (s > tol).sum(-1)


def rank_distances(models: Mapping[str, Mapping], layers: Sequence[Layer], *, use_factors: bool = True,
                   device=None, pair_chunk: int = 64, stats: dict | None = None) -> np.ndarray:
    """D[u, v] = l_LoRA(u, v) = sum over layers of rank(W_u,l - W_v,l), as an int64 [N, N] array.

    With LoRA factors stored beside the merged weights (`lora_factors.<key>.U` and `.V`, W = base + U V,
    see zoo.forests), pairs whose models verifiably share a base (W - U V equal) get their rank from the
    factors; every other pair from an SVD of the merged difference. Both give the same number.
    """
    check_models(models, layers)
    dev = _device(device)
    names = list(models)
    N = len(names)
    D = torch.zeros(N, N, dtype=torch.long)
    iu, iv = torch.triu_indices(N, N, 1)
    for layer in layers:
        with _threads(pair_chunk * layer.numel):
            W = torch.stack([read_block(models[n], layer) for n in names])              # [N, m, n]
            if not torch.isfinite(W).all():
                who = [n for n, ok in zip(names, torch.isfinite(W).flatten(1).all(1).tolist()) if not ok]
                raise MotherError(f"layer {layer.name!r} has NaN or inf weights in model(s) {who[:5]}")
            m, n = layer.shape
            use = torch.zeros(len(iu), dtype=torch.bool)
            if use_factors:
                facs = [_factors(models[x], layer, n) for x in names]
                # models without factors are their own base (U V = 0)
                facs = [f if f is not None else (torch.zeros(m, 0), torch.zeros(0, n)) for f in facs]
                base = torch.stack([W[i] - facs[i][0] @ facs[i][1] for i in range(N)])
                scale = float(W.abs().max()) or 1.0
                group = torch.full((N,), -1, dtype=torch.long)
                reps: list[int] = []
                for i in range(N):
                    for g, r in enumerate(reps):
                        if float((base[i] - base[r]).abs().max()) <= 1e-5 * scale:
                            group[i] = g
                            break
                    else:
                        group[i] = len(reps)
                        reps.append(i)
                # (when the two ranks add up to the full width, the SVD is no dearer: use it)
                width = torch.tensor([facs[a][0].shape[1] + facs[b][0].shape[1] for a, b in zip(iu.tolist(), iv.tolist())])
                use = (group[iu] == group[iv]) & (width < min(m, n))
                pairs = torch.nonzero(use).flatten().tolist()
                width = {p: facs[iu[p]][0].shape[1] + facs[iv[p]][0].shape[1] for p in pairs}
                pairs.sort(key=width.get)                          # similar widths share a batch: little padding
                for lo in range(0, len(pairs), pair_chunk):
                    chunk = pairs[lo:lo + pair_chunk]
                    k = max(width[p] for p in chunk)
                    L = torch.zeros(len(chunk), m, k)
                    Rt = torch.zeros(len(chunk), n, k)
                    for i, p in enumerate(chunk):
                        (Ua, Va), (Ub, Vb) = facs[iu[p]], facs[iv[p]]
                        ra, rb = Ua.shape[1], Ub.shape[1]
                        L[i, :, :ra], L[i, :, ra:ra + rb] = Ua, -Ub
                        Rt[i, :, :ra], Rt[i, :, ra:ra + rb] = Va.T, Vb.T
                    D[iu[chunk], iv[chunk]] += _factor_rank(L.to(dev), Rt.to(dev), m, n).cpu()
            rest = torch.nonzero(~use).flatten()
            Wd = W.to(dev)
            for lo in range(0, len(rest), pair_chunk):
                p = rest[lo:lo + pair_chunk]
                D[iu[p], iv[p]] += matrix_rank(Wd[iu[p].to(dev)] - Wd[iv[p].to(dev)]).cpu()
            if stats is not None:
                stats["factor_pairs"] = stats.get("factor_pairs", 0) + int(use.sum())
                stats["svd_pairs"] = stats.get("svd_pairs", 0) + len(rest)
    D = D + D.T
    return D.numpy()


def rms_norms(models: Mapping[str, Mapping], layers: Sequence[Layer], *, chunk_bytes: int = CHUNK_BYTES
              ) -> np.ndarray:
    """n(u) = mean over layers of RMS(W_u,l), [N] — the scale l_FT is compared with (recover.relative_distance)."""
    out = np.zeros(len(models))
    with _threads(max(lay.numel for lay in layers)):
        for i, sd in enumerate(models.values()):
            for layer in layers:
                s = sum(float((read_block(sd, layer, r0, r1).double() ** 2).sum())
                        for r0, r1 in _row_chunks(layer, 1, chunk_bytes))
                out[i] += (s / layer.numel) ** 0.5
    return out / len(layers)


# -------------------------------------------------------------------------- everything in one pass

def _row_power_sums(X: torch.Tensor, squares_only: bool = False) -> torch.Tensor:
    """[N, 5] float64 (n, sum x, sum x^2, sum x^3, sum x^4) of each row of X about 0: float32 products,
    one row at a time (cache-sized) with BLAS dots; relative error ~1e-6 (weights have |mean| << std, so
    power sums about 0 lose nothing to cancellation). `squares_only`: sum x^2 alone (the rest 0)."""
    out = torch.zeros(len(X), 5, dtype=torch.float64)
    if squares_only:
        for i, x in enumerate(X):
            out[i, 2] = float(torch.dot(x, x))
        return out
    sq = torch.empty_like(X[0])
    for i, x in enumerate(X):
        torch.mul(x, x, out=sq)
        out[i] = torch.stack([torch.tensor(float(x.numel())), x.sum(), sq.sum(), torch.dot(sq, x),
                              torch.dot(sq, sq)]).double()
    return out


def weight_pass(models: Mapping[str, Mapping], layers: Sequence[Layer], direction_layers: Sequence[Layer], *,
                device=None, chunk_bytes: int = CHUNK_BYTES, tol: float = 1e-6, stats: dict | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(l_FT matrix [N, N], RMS norms n [N], kurtosis scores [N]) reading every weight once: each row block
    of a layer is stacked for all models once, and serves the Gram distance (`rms_distances`, with the same
    refinement of pairs at risk, so D is exact to `tol`), the norm (`rms_norms`) and, for the
    `direction_layers`, the kurtosis power sums (`kurtosis_scores`, here from float32 products: ~1e-6 of
    each matrix's kurtosis off its float64 sums; 3e-5 on 12 ViT-B matrices summed, bench_mother.py)."""
    check_models(models, list(layers) + list(direction_layers))
    dev = _device(device)
    names = list(models)
    N = len(names)
    D = torch.zeros(N, N, dtype=torch.float64)
    norms = np.zeros(N)
    kurt = np.zeros(N)
    dist = {x.name for x in layers}
    every = list(layers) + [x for x in direction_layers if x.name not in dist]
    for layer in every:
        sq = torch.zeros(N, N, dtype=torch.float64)
        ps = torch.zeros(N, 5, dtype=torch.float64)
        want_k = any(x.name == layer.name for x in direction_layers)
        for r0, r1 in _row_chunks(layer, N, chunk_bytes):
            X = _stack(models, layer, r0, r1, dev)
            with _threads(X.numel()):
                if want_k or layer.name in dist:
                    with _threads(0):
                        ps += _row_power_sums(X if X.device.type == "cpu" else X.cpu(), squares_only=not want_k)
                if layer.name not in dist:
                    continue
                X[1:] -= X[:1]
                X[0].zero_()

                def raw(idx, r0=r0, r1=r1):
                    return _stack({names[i]: models[names[i]] for i in idx.tolist()}, layer, r0, r1, dev)

                sq += gram_sq_distances(X, tol=tol, stats=stats, raw=raw)
        if not (torch.isfinite(ps).all() and torch.isfinite(sq).all()):
            # NaN/inf weights, or squares beyond float32: the separate float64 paths (and their messages)
            if layer.name in dist:
                d = rms_distances(models, [layer], device=device, chunk_bytes=chunk_bytes, tol=tol)
                sq = torch.from_numpy(d ** 2 * layer.numel)
                norms += rms_norms(models, [layer], chunk_bytes=chunk_bytes)
            if want_k:
                kurt += kurtosis_scores(models, [layer], chunk_bytes=chunk_bytes)
        else:
            if want_k:
                k = kurtosis_from_power_sums(ps).numpy()
                if np.isnan(k).any():
                    raise MotherError(f"layer {layer.name!r} of model {names[int(np.flatnonzero(np.isnan(k))[0])]!r} "
                                      "is constant: kurtosis undefined")
                kurt += k
            if layer.name in dist:
                norms += np.sqrt(ps[:, 2].numpy() / layer.numel)
        if layer.name in dist:
            D += (sq / layer.numel).sqrt()
    return (D / len(layers)).numpy(), norms / len(layers), kurt


# ----------------------------------------------------------------------------------------- direction

def kurtosis_scores(models: Mapping[str, Mapping], layers: Sequence[Layer], *,
                    chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """kurt(u) = sum over layers of the excess kurtosis (Fisher, population moments) of W_u,l, [N].

    Streams each layer of each model in row blocks: power sums about the block mean of the first
    block, in float64, give the central moments exactly enough (weights have |mean| << std).
    """
    check_models(models, layers)
    out = np.zeros(len(models))
    with _threads(max(lay.numel for lay in layers)):
        for i, (name, sd) in enumerate(models.items()):
            for layer in layers:
                out[i] += _kurtosis(sd, layer, name, chunk_bytes)
    return out


def _kurtosis(sd: Mapping, layer: Layer, name: str, chunk_bytes: int) -> float:
    """Excess kurtosis of one matrix (weightspace.stats), summed block by block about the first block's mean."""
    s = torch.zeros(5, dtype=torch.float64)
    shift = None
    for r0, r1 in _row_chunks(layer, 1, chunk_bytes):
        x = read_block(sd, layer, r0, r1).double().reshape(-1)
        if not torch.isfinite(x).all():
            raise MotherError(f"layer {layer.name!r} has NaN or inf weights in model {name!r}")
        shift = x.mean() if shift is None else shift
        s += power_sums(x, shift)
    k = float(kurtosis_from_power_sums(s))
    if k != k:
        raise MotherError(f"layer {layer.name!r} of model {name!r} is constant: kurtosis undefined")
    return k
