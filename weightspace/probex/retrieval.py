"""Downstream uses of the weight-language space (Horwitz et al., CVPR 2025, Sec. 4.3 and the official
downstream script): text-to-model search, model-to-model search, kNN classification and one-class
classification of LoRAs.

- text -> model: rank LoRAs by the cosine between their aligned embedding and a free-text query's (the
  zero-shot scoring run in reverse); scored with recall@k and mean average precision against "relevant" =
  LoRAs of the query's class.
- model -> model: each LoRA queries the others by L2 distance of the frozen, unnormalised representation e
  (as the official code's flat L2 index); relevant = same class; recall@k, mAP.
- kNN classification: each test LoRA takes the majority class of its k nearest training LoRAs (L2 in e).
- one-class classification: per class, the anomaly score of a test LoRA is its mean L2 distance to the k = 2
  nearest training LoRAs of that class (or the Mahalanobis distance under a Ledoit-Wolf covariance of
  them); ROC-AUC of the class's test LoRAs (normal) against all other test LoRAs, averaged over classes.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    a = np.asarray(a, dtype=float)
    if not np.isfinite(a).all():
        raise ValueError("features contain NaN or inf")
    return a


def _labels(y, n: int, what: str) -> np.ndarray:
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
    if y.shape != (n,):
        raise ValueError(f"{what}: {y.shape[0] if y.ndim else 0} labels for {n} items")
    return y


def cosine_scores(queries, items) -> np.ndarray:
    """[Q, N] cosine similarity of each query to each item."""
    q, x = (F.normalize(torch.as_tensor(_np(a)), dim=-1) for a in (queries, items))
    return (q @ x.T).numpy()


def sq_distances(A, B) -> np.ndarray:
    """[n, m] squared L2 distances (exact: computed from differences, no Gram-trick cancellation)."""
    A, B = _np(A), _np(B)
    return ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)


# ----------------------------------------------------------------------------------------- ranking metrics

def _ranking(scores: np.ndarray, relevant: np.ndarray):
    scores, relevant = np.asarray(scores, float), np.asarray(relevant, bool)
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and relevance {relevant.shape} must be the same [queries, items]")
    if not relevant.any(1).all():
        q = int(np.flatnonzero(~relevant.any(1))[0])
        raise ValueError(f"query {q} has no relevant item: recall and AP are undefined for it")
    order = np.argsort(-scores, axis=1, kind="stable")   # ties: the earlier item ranks first
    return np.take_along_axis(relevant, order, axis=1), order


def recall_at_k(scores, relevant, k: int) -> float:
    """Mean over queries of |relevant ∩ top-k| / |relevant| (higher score = retrieved earlier)."""
    hits, _ = _ranking(scores, relevant)
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k = {k} outside 1..{hits.shape[1]} items")
    return float((hits[:, :k].sum(1) / hits.sum(1)).mean())


def average_precision(scores, relevant) -> np.ndarray:
    """[Q] average precision of each query's ranking: the mean, over its relevant items, of the precision
    at that item's rank (sklearn's average_precision_score when scores have no ties)."""
    hits, _ = _ranking(scores, relevant)
    ranks = np.arange(1, hits.shape[1] + 1)
    precision = np.cumsum(hits, 1) / ranks
    return (precision * hits).sum(1) / hits.sum(1)


def mean_average_precision(scores, relevant) -> float:
    return float(average_precision(scores, relevant).mean())


def text_to_model(query_emb, model_emb, query_class, model_class, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Rank LoRAs (aligned embeddings [N, r]) for each text query ([Q, r], already through the text
    projection) by cosine; relevant = LoRAs of the query's class. {"mAP", "recall@k"...}, plus `scores`."""
    S = cosine_scores(query_emb, model_emb)
    qc = _labels(query_class, S.shape[0], "queries")
    mc = _labels(model_class, S.shape[1], "models")
    rel = qc[:, None] == mc[None, :]
    out = {"mAP": mean_average_precision(S, rel), "mAP_chance": random_ranking_map(rel)}
    out.update({f"recall@{k}": recall_at_k(S, rel, k) for k in ks if k <= S.shape[1]})
    out.update({f"precision@{k}": float(_ranking(S, rel)[0][:, :k].mean()) for k in ks if k <= S.shape[1]})
    return out


def model_to_model(features, classes, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Every LoRA queries all others by L2 distance in e (itself excluded); relevant = same class.
    Queries whose class has no other LoRA are skipped (counted in `n_queries`)."""
    E = _np(features)
    y = _labels(classes, len(E), "models")
    D = sq_distances(E, E)
    keep = np.array([(y == y[i]).sum() > 1 for i in range(len(y))])
    if not keep.any():
        raise ValueError("no class has two LoRAs: model-to-model retrieval needs pairs")
    rows = np.flatnonzero(keep)
    others = np.array([np.delete(np.arange(len(y)), i) for i in rows])
    S = -np.take_along_axis(D[rows], others, 1)
    rel = y[others] == y[rows][:, None]
    out = {"mAP": mean_average_precision(S, rel), "mAP_chance": random_ranking_map(rel), "n_queries": int(len(rows))}
    out.update({f"recall@{k}": recall_at_k(S, rel, k) for k in ks if k <= S.shape[1]})
    return out


def nearest(features, i: int, k: int) -> np.ndarray:
    """Indices of the k LoRAs nearest (L2) to LoRA i, itself excluded (ties: lower index first)."""
    E = _np(features)
    d = sq_distances(E[i:i + 1], E)[0]
    d[i] = np.inf
    return np.argsort(d, kind="stable")[:k]


# --------------------------------------------------------------------------------------- classification

def knn_classify(F_train, y_train, F_query, k: int = 5) -> np.ndarray:
    """Majority class among the k nearest training LoRAs (L2); a tied vote goes to the tied class whose
    nearest member is closest (so k = 1 is the nearest neighbour)."""
    Ftr, Fq = _np(F_train), _np(F_query)
    ytr = _labels(y_train, len(Ftr), "training LoRAs")
    if not 1 <= k <= len(Ftr):
        raise ValueError(f"k = {k}, but there are {len(Ftr)} training LoRAs")
    nn_idx = np.argsort(sq_distances(Fq, Ftr), axis=1, kind="stable")[:, :k]
    out = []
    for row in nn_idx:
        votes = {}
        for rank, j in enumerate(row):
            c = ytr[j]
            n, first = votes.get(c, (0, rank))
            votes[c] = (n + 1, first)
        out.append(max(votes.items(), key=lambda kv: (kv[1][0], -kv[1][1]))[0])
    return np.array(out)


def knn_accuracy(F_train, y_train, F_test, y_test, k: int = 5) -> float:
    y_test = _labels(y_test, len(_np(F_test)), "test LoRAs")
    return float((knn_classify(F_train, y_train, F_test, k) == y_test).mean())


def roc_auc(scores, positive) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting one half
    (the Mann-Whitney U statistic; equal to sklearn's roc_auc_score)."""
    s, p = np.asarray(scores, float), np.asarray(positive, bool)
    if p.all() or not p.any():
        raise ValueError("ROC-AUC needs both positives and negatives")
    pos, neg = s[p], s[~p]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def one_class_scores(F_normal, F_query, *, method: str = "knn", k: int = 2) -> np.ndarray:
    """Anomaly score of each query against one class's training LoRAs: the mean L2 distance to the k nearest
    ("knn", the official default k = 2) or the Mahalanobis distance under a Ledoit-Wolf covariance ("lw")."""
    Fn, Fq = _np(F_normal), _np(F_query)
    if method == "knn":
        if not 1 <= k <= len(Fn):
            raise ValueError(f"k = {k}, but the class has {len(Fn)} training LoRAs")
        d = np.sqrt(sq_distances(Fq, Fn))
        return np.sort(d, axis=1)[:, :k].mean(1)
    if method == "lw":
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf().fit(Fn)
        return np.sqrt(lw.mahalanobis(Fq))
    raise ValueError(f"unknown one-class method {method!r}; choose 'knn' or 'lw'")


def one_class_auc(F_train, y_train, F_test, y_test, *, method: str = "knn", k: int = 2) -> dict:
    """Per class: normal = that class's test LoRAs, anomalies = every other test LoRA, scored against the
    class's training LoRAs; ROC-AUC of "normal" (score negated: low distance = normal). Classes without
    training or test LoRAs (or with fewer training LoRAs than k) are skipped. {"mean", "per_class"}."""
    Ftr, Fte = _np(F_train), _np(F_test)
    ytr = _labels(y_train, len(Ftr), "training LoRAs")
    yte = _labels(y_test, len(Fte), "test LoRAs")
    per = {}
    for c in sorted(set(ytr.tolist()) & set(yte.tolist())):
        normal = ytr == c
        if normal.sum() < (k if method == "knn" else 2) or (yte == c).all():
            continue
        per[c] = roc_auc(-one_class_scores(Ftr[normal], Fte, method=method, k=k), yte == c)
    if not per:
        raise ValueError("no class has both training and test LoRAs (and other test LoRAs to be anomalies)")
    return {"mean": float(np.mean(list(per.values()))), "per_class": per}


# ------------------------------------------------------------------------------- all of it for one expert

@torch.no_grad()
def embeddings(model, X: torch.Tensor, text: torch.Tensor, chunk: int = 512) -> dict[str, np.ndarray]:
    """{"e": unnormalised representations [N, r_T], "z": their L2-normalised aligned embeddings, "t": the
    classes' projected, normalised text embeddings [C, r_T]} of an `Aligned` expert."""
    model.eval()
    dev = next(model.parameters()).device
    E = torch.cat([model.represent(X[i:i + chunk].to(dev)).cpu() for i in range(0, len(X), chunk)])
    T = model.embed_text(text.float().to(dev)).cpu()
    return {"e": E.double().numpy(), "z": F.normalize(E, dim=-1).double().numpy(), "t": T.double().numpy()}


def downstream(model, X: torch.Tensor, labels, text: torch.Tensor, *, ks: Sequence[int] = (1, 5, 10),
               k_nn: int = 5, k_occ: int = 2) -> dict:
    """The paper's downstream tasks for one trained expert (labels: `zeroshot.Labels`, rows of X):
    text -> model retrieval over the test LoRAs (test ∪ test_holdout), each class prompt a query, for all
    classes and for the holdout classes alone; model -> model retrieval among the same LoRAs (L2 in e);
    kNN classification (train -> test, in e and, as a reference, in the raw flattened layer); one-class
    ROC-AUC (kNN and Ledoit-Wolf)."""
    emb = embeddings(model, X, text)
    split, y = labels.split, labels.classes
    pool = np.flatnonzero(np.isin(split, ["test", "test_holdout"]))
    out = {}
    for name, which in (("all", pool), ("holdout", np.flatnonzero(split == "test_holdout"))):
        if len(which):
            q = sorted(set(y[which].tolist()))
            out[f"text_to_model_{name}"] = text_to_model(emb["t"][q], emb["z"][pool], q, y[pool], ks)
    out["model_to_model"] = model_to_model(emb["e"][pool], y[pool], ks)
    tr, te = split == "train", split == "test"
    if te.any():
        flat = X.flatten(1).double().numpy()
        out["knn"] = {"e": knn_accuracy(emb["e"][tr], y[tr], emb["e"][te], y[te], k_nn),
                      "X": knn_accuracy(flat[tr], y[tr], flat[te], y[te], k_nn), "k": k_nn}
        out["one_class"] = {m: one_class_auc(emb["e"][tr], y[tr], emb["e"][te], y[te], method=m, k=k_occ)["mean"]
                            for m in ("knn", "lw")}
    return out


def random_ranking_map(relevant, n: int = 200, seed: int = 0) -> float:
    """The mAP of random rankings of the same relevance matrix (mean over `n` draws): chance for mAP."""
    rel = np.asarray(relevant, bool)
    rng = np.random.default_rng(seed)
    return float(np.mean([mean_average_precision(rng.random(rel.shape), rel) for _ in range(n)]))
