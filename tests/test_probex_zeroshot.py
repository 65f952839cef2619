"""Language-aligned ProbeX (zero-shot), its downstream metrics and the Model-J SD path.

Formulas against hand computations; a planted-signal LoRA zoo (class = (digit, style), text = a_digit +
b_style, B = reshape(W t_class)) where zero-shot must beat chance, and the same LoRAs with permuted labels,
where it must not; Model-J look-alike files with SD 1.x key names (a 1280x1280 layer) end to end."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weightspace.downloads import LOCK_NAME, DownloadError, record_folder
from weightspace.probex.model import ProbeX, n_params
from weightspace.probex.modelj_sd import PAPER_LAYER, Extracted, SDLoraFolder, sd15_lora_shapes
from weightspace.probex.retrieval import (average_precision, knn_classify, model_to_model, nearest,
                                          one_class_auc, one_class_scores, recall_at_k, roc_auc, text_to_model)
from weightspace.probex.zeroshot import (PAPER, Labels, ZooLoras, choose_layer, class_prompts, fit_zeroshot,
                                         layer_sweep, make_aligned, module_type, side, summarize)
from weightspace.zoo import ZooError
from weightspace.zoo.format import DIFFUSERS_LORA_LAYOUT, Zoo, write_safetensors

DIGITS = ["zero", "one", "two", "three"]
STYLES = ["plain", "mirrored", "thick"]
HOLDOUT = [(0, 0), (1, 1), (2, 2)]          # every digit and style of these is seen in other classes
SIGNAL = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"
NOISE = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
FAST = dict(n_probes=8, proj_dim=8, rep_dim=16, epochs=60, eval_every=5)


def _classes():
    return [(d, s) for d in range(len(DIGITS)) for s in range(len(STYLES))]


def planted_text(dim=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(len(DIGITS), dim, generator=g), torch.randn(len(STYLES), dim, generator=g)
    return F.normalize(torch.stack([a[d] + b[s] for d, s in _classes()]), dim=1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """150 diffusers-layout LoRA files: B of SIGNAL is linear in the class text, NOISE is noise."""
    d, r = 16, 4
    text = planted_text()
    g = torch.Generator().manual_seed(1)
    W = torch.randn(d * r, text.shape[1], generator=g)
    A = torch.randn(r, d, generator=g)
    names = [f"a {STYLES[s]} {DIGITS[dd]}" for dd, s in _classes()]
    zoo = Zoo.create(tmp_path_factory.mktemp("planted") / "zoo", kind="sd-lora", builder="tests", params={},
                     labels={"column": "classes", "class_names": names, "per_model": "one"},
                     lora=DIFFUSERS_LORA_LAYOUT)
    n = 0
    for c, dc in enumerate(_classes()):
        plan = ([("val_holdout", 6), ("test_holdout", 14)] if dc in HOLDOUT
                else [("train", 6), ("val", 2), ("test", 2)])
        for split, k in plan:
            for _ in range(k):
                B = (W @ text[c]).reshape(d, r) + 0.5 * torch.randn(d, r, generator=g)
                t = {f"unet.{SIGNAL}.lora.up.weight": B,
                     f"unet.{SIGNAL}.lora.down.weight": A + 0.05 * torch.randn(r, d, generator=g),
                     f"unet.{NOISE}.lora.up.weight": torch.randn(d, r, generator=g),
                     f"unet.{NOISE}.lora.down.weight": torch.randn(r, d, generator=g)}
                zoo.add(f"lora{n:03d}", t, split=split, classes=[c])
                n += 1
    return ZooLoras(Zoo.open(zoo.path)), text


# ------------------------------------------------------------------------------------------- formulas

def test_cosine_logits_and_cross_entropy_by_hand():
    torch.manual_seed(0)
    m = make_aligned("probex", 6, 5, 7, n_probes=3, proj_dim=4, rep_dim=8).requires_grad_(False)
    X, T = torch.randn(4, 6, 5), torch.randn(3, 7)
    enc = m.encoder
    assert isinstance(enc, ProbeX)                       # the encoder of model.py, its head removed
    e = torch.stack([sum(enc.M(l) @ torch.relu(enc.V.T @ X[b] @ enc.U[:, l]) for l in range(3))
                     + enc.encoders.bias for b in range(4)])
    p = T @ m.text_proj.weight.T + m.text_proj.bias
    cos = torch.tensor([[float(e[i] @ p[j] / (e[i].norm() * p[j].norm())) for j in range(3)] for i in range(4)])
    torch.testing.assert_close(m(X, T), cos, atol=1e-5, rtol=1e-5)
    y = torch.tensor([0, 2, 1, 1])
    ce = -np.mean([float(cos[i, y[i]] - torch.logsumexp(cos[i], 0)) for i in range(4)])
    assert abs(float(F.cross_entropy(m(X, T), y)) - ce) < 1e-5
    m.temperature = 0.1
    torch.testing.assert_close(m(X, T), cos / 0.1, atol=1e-4, rtol=1e-4)
    # parameter counts: d_W r_U + d_H r_V + (r_U r_V + 1) r_T, and the text side (d + 1) r_T
    assert m.n_weight_params == 5 * 3 + 6 * 4 + (3 * 4 + 1) * 8 and m.n_text_params == (7 + 1) * 8


def test_dense_baseline_by_hand():
    torch.manual_seed(0)
    m = make_aligned("dense", 6, 5, 7, rep_dim=8)
    X, T = torch.randn(4, 6, 5), torch.randn(3, 7)
    W, b = m.encoder.linear.weight, m.encoder.linear.bias
    e = X.reshape(4, 30) @ W.T + b
    p = T @ m.text_proj.weight.T + m.text_proj.bias
    torch.testing.assert_close(m(X, T), F.normalize(e, dim=1) @ F.normalize(p, dim=1).T)
    assert m.n_weight_params == 30 * 8 + 8 == n_params(m.encoder)


def test_module_types_and_sides():
    assert module_type(SIGNAL) == "attn2.to_q" and side(SIGNAL) == "image"
    assert side("up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k") == "text"
    assert module_type("x.attn1.to_out.0") == "attn1.to_out.0" and side("x.attn1.to_out.0") == "image"


def test_prompts():
    assert class_prompts(["a mirrored seven", "an inverted two", "tench", "great_white_shark"]) == [
        "a photo of a mirrored seven", "a photo of an inverted two", "a photo of a tench",
        "a photo of a great white shark"]
    with pytest.raises(ValueError, match="empty class list"):
        class_prompts([])
    with pytest.raises(ValueError, match="duplicated prompt 'a photo of a seven'.*'a seven' and 'seven'"):
        class_prompts(["a seven", "seven"])
    with pytest.raises(ValueError, match="class 1 has an empty name"):
        class_prompts(["seven", " "])


# --------------------------------------------------------------------------- planted signal and its control

def test_zero_shot_beats_chance_on_planted_signal_and_layer_chosen_on_val(planted):
    data, text = planted
    lab = data.labels
    assert lab.train_classes == [c for c, dc in enumerate(_classes()) if dc not in HOLDOUT]
    assert lab.holdout_classes == [c for c, dc in enumerate(_classes()) if dc in HOLDOUT]
    assert lab.chance("test") == 1 / 9 and lab.chance("test_holdout") == 1 / 3
    sweep = layer_sweep(data, text, kinds=("probex",), seeds=(0, 1, 2), progress=False, **FAST)
    assert choose_layer(sweep, "probex", "val") == SIGNAL
    assert choose_layer(sweep, "probex", "val_holdout") == SIGNAL
    s = summarize(sweep, SIGNAL, "probex")
    assert s["seeds"] == 3
    assert s["test"] >= 0.8 and s["test_holdout"] >= 0.8          # chance 0.11 and 0.33
    noise = summarize(sweep, NOISE, "probex")
    assert noise["test"] < 0.4 and noise["test_holdout"] < 0.65
    with pytest.raises(ValueError, match="not 'test'"):
        choose_layer(sweep, "probex", "test")


def test_permuted_labels_fall_to_chance(planted):
    """With training labels shuffled nothing transfers. (The zero-shot checkpoint is then the in-distribution
    one: choosing it on val_holdout, whose classes are test_holdout's, would lift even this control.)"""
    data, text = planted
    from weightspace.probex.zeroshot import permuted

    lab = data.labels
    shuffled = permuted(lab, 0)
    for split in ("train", "val", "test"):        # shuffled within each split: the same classes, other LoRAs
        i = lab.index(split)
        assert sorted(shuffled.classes[i]) == sorted(lab.classes[i]) and (shuffled.classes[i] != lab.classes[i]).any()
    real, ctrl = ([fit_zeroshot("probex", data.X(SIGNAL), labels, text, seed=s, zeroshot_checkpoint="val",
                                **FAST).acc for s in range(3)] for labels in (lab, shuffled))
    zs_real, zs_ctrl = (np.mean([a["test_holdout"] for a in accs]) for accs in (real, ctrl))
    id_ctrl = np.mean([a["test"] for a in ctrl])
    assert id_ctrl < 1 / 9 + 0.2
    assert zs_ctrl < 1 / 3 + 0.25 and zs_real > zs_ctrl + 0.3


def test_seeds_reproduce_and_differ(planted):
    data, text = planted
    a, b, c = (fit_zeroshot("probex", data.X(SIGNAL), data.labels, text, seed=s, **dict(FAST, epochs=6))
               for s in (0, 0, 1))
    assert a.acc == b.acc and a.history == b.history
    assert not torch.equal(a.model.encoder.U, c.model.encoder.U)
    assert a.zeroshot_model().state_dict().keys() == a.model.state_dict().keys()


def test_temperature_option_and_dense_train(planted):
    data, text = planted
    f = fit_zeroshot("probex", data.X(SIGNAL), data.labels, text, temperature=0.1, **FAST)
    assert f.model.temperature == 0.1 and f.acc["test_holdout"] > 1 / 3
    d = fit_zeroshot("dense", data.X(SIGNAL), data.labels, text, **FAST)
    assert d.n_weight_params == 16 * 16 * 16 + 16


# ------------------------------------------------------------------------------------------- bad inputs

def test_bad_inputs(planted):
    data, text = planted
    lab = data.labels
    cls = lab.classes.copy()
    i = int(lab.index("test_holdout")[0])
    j = int(lab.index("train")[0])
    cls[j] = cls[i]                                  # a holdout class with a training LoRA
    with pytest.raises(ValueError, match=f"holdout class {lab.class_names[cls[i]]!r} also appears in training"):
        Labels(lab.class_names, cls, lab.split, lab.names)
    X = data.X(SIGNAL)
    with pytest.raises(ValueError, match="12 classes"):
        fit_zeroshot("probex", X, lab, text[:5], **FAST)
    dup = text.clone()
    dup[3] = dup[1]
    with pytest.raises(ValueError, match=f"{lab.class_names[1]!r} and {lab.class_names[3]!r} have the same"):
        fit_zeroshot("probex", X, lab, dup, **FAST)
    with pytest.raises(TypeError, match="unknown zero-shot setting"):
        fit_zeroshot("probex", X, lab, text, weight_decay=1e-5)
    with pytest.raises(ValueError, match="unknown model kind"):
        fit_zeroshot("mlp", X, lab, text)
    with pytest.raises(ValueError, match="split 'holdout'"):
        Labels(lab.class_names, lab.classes, np.where(lab.split == "val_holdout", "holdout", lab.split), lab.names)
    with pytest.raises(ValueError, match="unknown LoRA layer"):
        layer_sweep(data, text, ["nope"], progress=False)
    bad = X.clone()
    bad[5, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_zeroshot("probex", bad, lab, text, **FAST)


# ---------------------------------------------------------------------------------------- retrieval

def _ap_sklearn(s, r):
    from sklearn.metrics import average_precision_score

    return average_precision_score(r, s)


def test_ranking_metrics_against_references():
    rng = np.random.default_rng(0)
    S = rng.normal(size=(6, 20))
    R = rng.random((6, 20)) < 0.3
    R[:, 0] = True
    for k in (1, 3, 20):
        brute = np.mean([len(set(np.argsort(-S[q])[:k]) & set(np.flatnonzero(R[q]))) / R[q].sum() for q in range(6)])
        assert abs(recall_at_k(S, R, k) - brute) < 1e-12
    ap = average_precision(S, R)
    np.testing.assert_allclose(ap, [_ap_sklearn(S[q], R[q]) for q in range(6)], rtol=1e-12)
    # a hand case: relevant at ranks 1 and 3 of 4 -> AP = (1/1 + 2/3) / 2
    assert abs(average_precision([[4.0, 3.0, 2.0, 1.0]], [[1, 0, 1, 0]])[0] - (1 + 2 / 3) / 2) < 1e-12
    with pytest.raises(ValueError, match="query 0 has no relevant item"):
        recall_at_k([[1.0, 2.0]], [[False, False]], 1)


def test_roc_auc_against_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 40).astype(float)
    y = rng.random(40) < 0.4
    assert abs(roc_auc(s, y) - roc_auc_score(y, s)) < 1e-12
    with pytest.raises(ValueError, match="both positives and negatives"):
        roc_auc([1.0, 2.0], [True, True])


def test_knn_and_retrieval_against_brute_force():
    rng = np.random.default_rng(2)
    E = rng.normal(size=(30, 5))
    y = rng.integers(0, 4, 30)
    tr, te = np.arange(20), np.arange(20, 30)
    for k in (1, 3, 4):
        pred = knn_classify(E[tr], y[tr], E[te], k)
        for q, p in zip(te, pred):
            d = np.linalg.norm(E[tr] - E[q], axis=1)
            nn = np.argsort(d)[:k]
            votes = {c: (y[tr][nn] == c).sum() for c in set(y[tr][nn])}
            top = max(votes.values())
            tied = [c for c, v in votes.items() if v == top]
            expect = min(tied, key=lambda c: d[nn][y[tr][nn] == c].min())
            assert p == expect
    assert list(nearest(E, 3, 2)) == list(np.argsort(np.where(np.arange(30) == 3, np.inf,
                                                              np.linalg.norm(E - E[3], axis=1)))[:2])
    m2m = model_to_model(E, y, ks=(1, 5))
    aps, r5 = [], []
    for i in range(30):
        others = [j for j in range(30) if j != i]
        d = np.array([np.linalg.norm(E[i] - E[j]) for j in others])
        rel = y[others] == y[i]
        aps.append(_ap_sklearn(-d, rel))
        r5.append(rel[np.argsort(d)[:5]].sum() / rel.sum())
    assert abs(m2m["mAP"] - np.mean(aps)) < 1e-12 and abs(m2m["recall@5"] - np.mean(r5)) < 1e-12
    Q = rng.normal(size=(4, 5))
    t2m = text_to_model(Q, E, np.arange(4), y, ks=(5,))
    cos = (Q / np.linalg.norm(Q, axis=1, keepdims=True)) @ (E / np.linalg.norm(E, axis=1, keepdims=True)).T
    assert abs(t2m["mAP"] - np.mean([_ap_sklearn(cos[q], y == q) for q in range(4)])) < 1e-12
    assert abs(t2m["precision@5"] - np.mean([(y[np.argsort(-cos[q])[:5]] == q).mean() for q in range(4)])) < 1e-12


def test_one_class_auc_by_hand():
    from sklearn.covariance import LedoitWolf
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    Ftr, ytr = rng.normal(size=(24, 4)), np.repeat([0, 1, 2], 8)
    Ftr[ytr == 1] += 8
    Fte, yte = rng.normal(size=(12, 4)), np.repeat([0, 1, 2], 4)
    Fte[yte == 1] += 8
    out = one_class_auc(Ftr, ytr, Fte, yte, k=2)
    for c in range(3):
        d = np.linalg.norm(Fte[:, None] - Ftr[ytr == c][None], axis=2)
        score = np.sort(d, axis=1)[:, :2].mean(1)
        assert abs(out["per_class"][c] - roc_auc_score(yte == c, -score)) < 1e-12
    assert out["per_class"][1] == 1.0 and abs(out["mean"] - np.mean(list(out["per_class"].values()))) < 1e-12
    lw = LedoitWolf().fit(Ftr[ytr == 0])
    np.testing.assert_allclose(one_class_scores(Ftr[ytr == 0], Fte, method="lw"),
                               np.sqrt(lw.mahalanobis(Fte)), rtol=1e-12)
    with pytest.raises(ValueError, match="k = 9, but the class has 8"):
        one_class_scores(Ftr[ytr == 0], Fte, k=9)


# ------------------------------------------------------------------------------- Model-J SD path

def _write_lora(path, shapes, cls, seed, dtype=torch.float16, drop=()):
    g = torch.Generator().manual_seed(seed)
    t = {k: (0.01 * torch.randn(s, generator=g)).to(dtype) for k, s in shapes.items() if k not in drop}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, t, {"format": "pt", "imagenet_class_id": cls})


WNIDS = {"train": ["n01440764", "n01443537"], "val": ["n01440764"], "test": ["n01443537"],
         "val_holdout": ["n01484850"], "test_holdout": ["n01484850", "n01491361"]}


def _sd_folder(root, rank=16):
    shapes = sd15_lora_shapes(rank)
    n = 0
    for split, classes in WNIDS.items():
        for c in classes:
            _write_lora(root / split / f"model_idx_{n:04d}" / "pytorch_lora_weights.safetensors", shapes, c, n)
            n += 1
    record_folder(root)
    return shapes


def test_sd_folder_extraction_and_one_step_at_full_size(tmp_path):
    shapes = _sd_folder(tmp_path / "SD_200")
    assert len(shapes) == 256
    f = SDLoraFolder(tmp_path / "SD_200")
    assert len(f) == 7 and len(f.layers) == 128
    assert f.layers[PAPER_LAYER] == "unet.down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_q"
    assert f.labels.class_names == ["tench", "goldfish", "great white shark", "tiger shark"]
    assert f.labels.train_classes == [0, 1] and f.labels.holdout_classes == [2, 3]
    X = f.X(PAPER_LAYER)
    assert X.shape == (7, 1280, 1280)
    p = tmp_path / "SD_200" / "val" / "model_idx_0002" / "pytorch_lora_weights.safetensors"
    from safetensors.torch import load_file

    t = load_file(str(p))
    stem = f.layers[PAPER_LAYER]
    torch.testing.assert_close(X[2], t[stem + ".lora.up.weight"].float() @ t[stem + ".lora.down.weight"].float())
    ex = Extracted(f.extract(PAPER_LAYER, tmp_path / "layer46.safetensors"))
    assert torch.equal(ex.X(), X) and ex.labels.class_names == f.labels.class_names
    assert list(ex.labels.split) == list(f.labels.split)
    # one forward/backward of the paper-sized model on CPU (r_U = r_V = r_T = 128, text 768)
    torch.manual_seed(0)
    m = make_aligned("probex", 1280, 1280, 768, **{k: PAPER[k] for k in ("n_probes", "proj_dim", "rep_dim")})
    text = torch.randn(4, 768)
    idx = torch.from_numpy(f.labels.index("train"))
    loss = F.cross_entropy(m(X[idx], text[f.labels.train_classes]), f.labels.targets("train"))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in m.parameters())
    assert 2.4e6 < m.n_weight_params + m.n_text_params < 2.6e6      # the poster's 2.5m


def test_sd_folder_bad_inputs(tmp_path):
    shapes = sd15_lora_shapes(2)
    good = lambda root: [_write_lora(root / s / f"m{i}" / "pytorch_lora_weights.safetensors", shapes, c, i)
                         for i, (s, c) in enumerate([("train", "n01440764"), ("val_holdout", "n01484850"),
                                                     ("test_holdout", "n01484850")])]
    good(tmp_path / "rank")
    odd = tmp_path / "rank" / "train" / "m9" / "pytorch_lora_weights.safetensors"
    _write_lora(odd, sd15_lora_shapes(4), "n01440764", 9)
    record_folder(tmp_path / "rank")
    with pytest.raises(ZooError, match=r"m9/pytorch_lora_weights.safetensors.*LoRA rank 4, not 2"):
        SDLoraFolder(tmp_path / "rank")
    good(tmp_path / "keys")
    gone = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora.up.weight"
    _write_lora(tmp_path / "keys" / "train" / "m9" / "pytorch_lora_weights.safetensors", shapes, "n01440764", 9,
                drop=(gone,))
    record_folder(tmp_path / "keys")
    with pytest.raises(ZooError, match=f"m9/pytorch_lora_weights.safetensors: missing LoRA key '{gone}'"):
        SDLoraFolder(tmp_path / "keys")
    good(tmp_path / "leak")
    _write_lora(tmp_path / "leak" / "train" / "m9" / "pytorch_lora_weights.safetensors", shapes, "n01484850", 9)
    record_folder(tmp_path / "leak")
    with pytest.raises(ValueError, match="holdout class 'great white shark' also appears in training"):
        SDLoraFolder(tmp_path / "leak")
    good(tmp_path / "nolabel")
    p = tmp_path / "nolabel" / "train" / "m9" / "pytorch_lora_weights.safetensors"
    write_safetensors(p, {k: torch.zeros(s) for k, s in shapes.items()}, {"format": "pt"})
    record_folder(tmp_path / "nolabel")
    with pytest.raises(ZooError, match="m9/pytorch_lora_weights.safetensors: no 'imagenet_class_id'"):
        SDLoraFolder(tmp_path / "nolabel")
    with pytest.raises(ZooError, match="no pytorch_lora_weights.safetensors under any split"):
        SDLoraFolder(tmp_path / "nolabel" / "train")


def test_run_zeroshot_controls_and_downstream(planted):
    from weightspace.probex.retrieval import downstream
    from weightspace.probex.zeroshot import controls, run_zeroshot

    data, text = planted
    cfg = dict(FAST, epochs=30)
    out = run_zeroshot(data, text, seeds=(0, 1), progress=False, **cfg)
    t = out["table"]
    assert set(t.side) == {"any", "image"}                     # the planted zoo has no cross-attention k/v
    row = t[(t.kind == "probex") & (t.side == "any") & (t.goal == "zero_shot")].iloc[0]
    assert row.layer == SIGNAL and row.seeds == 2 and abs(row.chance - 1 / 3) < 1e-12
    assert len(out["sweep"]) == 2 * 2 + 2 * 1                  # every layer x kind once, the chosen re-fit once
    c = controls(data, text, SIGNAL, seeds=(0,), **cfg).set_index("protocol")
    assert c.loc["permuted strict", "zero_shot"] < c.loc["paper", "zero_shot"]
    f = fit_zeroshot("probex", data.X(SIGNAL), data.labels, text, **cfg)
    d = downstream(f.model, data.X(SIGNAL), data.labels, text, ks=(1, 5))
    assert d["text_to_model_holdout"]["mAP"] > 0.6 and d["knn"]["e"] > 0.5
    assert set(d["one_class"]) == {"knn", "lw"}


def test_sd_folder_rank_options(tmp_path):
    shapes2, shapes4 = sd15_lora_shapes(2), sd15_lora_shapes(4)
    for i, (s, c, sh) in enumerate([("train", "n01440764", shapes2), ("train", "n01440764", shapes4),
                                    ("test_holdout", "n01484850", shapes2)]):
        _write_lora(tmp_path / s / f"m{i}" / "pytorch_lora_weights.safetensors", sh, c, i)
    record_folder(tmp_path)
    f = SDLoraFolder(tmp_path, rank=None)          # ranks may differ (our zoo): B A has the layer's shape
    assert f.X(PAPER_LAYER).shape == (3, 1280, 1280)
    with pytest.raises(ZooError, match="rank 2, not 4"):
        SDLoraFolder(tmp_path, rank=4)
    with pytest.raises(ZooError, match="LoRA rank 4, not 2"):
        SDLoraFolder(tmp_path)
    wide = dict(shapes2)
    wide["unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight"] = (2, 640)
    _write_lora(tmp_path / "train" / "m7" / "pytorch_lora_weights.safetensors", wide, "n01440764", 7)
    record_folder(tmp_path)
    with pytest.raises(ZooError, match=r"m7/pytorch_lora_weights.safetensors: 'unet.mid_block.*to_q.lora.down"
                                       r".weight' is \[2, 640\] but \[2, 1280\]"):
        SDLoraFolder(tmp_path, rank=None)


def test_random_ranking_map_matches_its_expectation():
    from weightspace.probex.retrieval import random_ranking_map

    rel = np.zeros((1, 10), bool)
    rel[0, 3] = True                                   # one relevant item: E[AP] = E[1 / rank] = H_10 / 10
    assert abs(random_ranking_map(rel, n=4000) - sum(1 / r for r in range(1, 11)) / 10) < 0.01


def test_fit_many_equals_lone_fits(planted):
    from weightspace.probex.zeroshot import fit_many

    data, text = planted
    cfg = dict(FAST, epochs=12)
    X = [data.X(SIGNAL), data.X(NOISE), data.X(SIGNAL)]
    many = fit_many("probex", X, [data.labels] * 3, text, [0, 0, 1], **cfg)
    for f, x, seed in zip(many, X, [0, 0, 1]):
        lone = fit_zeroshot("probex", x, data.labels, text, seed=seed, **cfg)
        assert f.best_epoch == lone.best_epoch and f.best_epoch_zs == lone.best_epoch_zs
        for a, b in zip(f.history, lone.history):
            assert a[0] == b[0] and abs(a[1] - b[1]) < 1e-4 and a[2:] == b[2:]
        for (name, p), q in zip(f.model.state_dict().items(), lone.model.state_dict().values()):
            torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=name)
        assert f.acc == lone.acc
    with pytest.raises(ValueError, match="the same for every member"):
        fit_many("probex", [data.X(SIGNAL), data.X(SIGNAL)[:, :8]], [data.labels] * 2, text, [0, 1])


def test_sd_folder_reads_our_zoo_layout(tmp_path):
    """Our LoRA zoo keeps Model-J's layout: models/<split>/<id>/pytorch_lora_weights.safetensors, the class in
    the header (`class_name`), ranks that differ per LoRA; the folder reader and the zoo reader agree."""
    from weightspace.zoo.format import write_model

    names = ["a plain one", "a bold one", "a plain two", "a bold two"]
    zoo = Zoo.create(tmp_path / "zoo", kind="sd-lora", builder="tests", params={},
                     labels={"column": "classes", "class_names": names, "per_model": "one"},
                     lora=DIFFUSERS_LORA_LAYOUT)
    g = torch.Generator().manual_seed(0)
    rows = []
    for i, (split, c, r) in enumerate([("train", 0, 2), ("train", 1, 4), ("val", 0, 2), ("test", 1, 4),
                                       ("val_holdout", 2, 2), ("test_holdout", 3, 4)]):
        t = {f"unet.{SIGNAL}.lora.up.weight": torch.randn(16, r, generator=g),
             f"unet.{SIGNAL}.lora.down.weight": torch.randn(r, 16, generator=g)}
        rows.append(write_model(zoo.path, f"lora{i}", t, dict(split=split, classes=[c], tree_id=0, depth=1),
                                folder=split, file_name="pytorch_lora_weights.safetensors",
                                metadata={"class_name": names[c]}))
    zoo.record(rows)
    ours = ZooLoras(Zoo.open(zoo.path))
    with pytest.warns(UserWarning, match="verify='none'"):        # the zoo checks its files by its own table
        folder = SDLoraFolder(zoo.path / "models", class_key="class_name", rank=None, verify="none")
    assert folder.layers == ["unet." + s for s in ours.layers]
    order = [int(Path(p).parent.name[4:]) for p in folder.labels.names]
    torch.testing.assert_close(folder.X(0), ours.X(SIGNAL)[order])
    assert [folder.labels.class_names[c] for c in folder.labels.classes] == [names[ours.labels.classes[i]]
                                                                              for i in order]
    assert list(folder.labels.split) == [ours.labels.split[i] for i in order]


def test_sd_folder_serves_only_locked_files(tmp_path, monkeypatch):
    """A LoRA folder of one's own: refused without a lock, read once `record_folder` has locked it, each file
    hashed once (its header, then a layer); a changed or an unlocked file is refused, naming it."""
    import warnings

    import weightspace.downloads as dl

    shapes = sd15_lora_shapes(2)
    files = [tmp_path / s / f"m{i}" / "pytorch_lora_weights.safetensors"
             for i, s in enumerate(["train", "train", "val_holdout", "test_holdout"])]
    for i, (p, c) in enumerate(zip(files, ["n01440764", "n01443537", "n01484850", "n01484850"])):
        _write_lora(p, shapes, c, i)
    with pytest.raises(DownloadError, match=rf"{tmp_path}: no {LOCK_NAME}.*python -m weightspace lock "
                                            rf"{tmp_path}.*verify='none'"):
        SDLoraFolder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unverified = SDLoraFolder(tmp_path, verify="none").X(PAPER_LAYER)
    assert len(caught) == 1 and "verify='none'" in str(caught[0].message)
    assert record_folder(tmp_path) == {"new": 4, "updated": 0, "unchanged": 0, "kept": 0}
    hashed = []
    real = dl.sha256_file
    monkeypatch.setattr(dl, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    f = SDLoraFolder(tmp_path)
    assert torch.equal(f.X(PAPER_LAYER), unverified) and f.X(3).shape == (4, 320, 320)
    assert sorted(hashed) == sorted(files)
    data = bytearray(files[1].read_bytes())
    data[-1] ^= 0x01
    files[1].write_bytes(bytes(data))
    with pytest.raises(DownloadError, match=rf"{files[1]}: sha256 [0-9a-f]{{64}}, the lock says"):
        SDLoraFolder(tmp_path)
    files[1].write_bytes(bytes(data[:-1]))
    with pytest.raises(DownloadError, match=rf"{files[1]}: size"):
        SDLoraFolder(tmp_path)
    data[-1] ^= 0x01
    files[1].write_bytes(bytes(data))                                   # the locked bytes again: read
    assert len(SDLoraFolder(tmp_path)) == 4
    extra = tmp_path / "test_holdout" / "m9" / "pytorch_lora_weights.safetensors"
    _write_lora(extra, shapes, "n01484850", 9)
    with pytest.raises(DownloadError, match=rf"{extra}: not in the lock file"):
        SDLoraFolder(tmp_path)


def test_readme_lock_example_runs(tmp_path):
    """The README's own-LoRAs example, on a small folder in its place."""
    import re
    import shlex
    import warnings

    from weightspace.__main__ import main

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    part = readme.split("`weightspace.probex.modelj_sd.SDLoraFolder` reads", 1)[1].split("### Zoo format", 1)[0]
    bash, python = re.findall(r"```(?:bash|python)\n(.*?)```", part, flags=re.DOTALL)
    folder = tmp_path / "SD_200"
    for i, (s, c) in enumerate([("train", "n01440764"), ("val_holdout", "n01484850"), ("test_holdout", "n01484850")]):
        _write_lora(folder / s / f"m{i}" / "pytorch_lora_weights.safetensors", sd15_lora_shapes(2), c, i)
    with pytest.raises(DownloadError, match="no weightspace-downloads.lock.json"):
        exec(python.replace("~/loras/SD_200", str(folder)), {})
    for line in bash.strip().splitlines():
        argv = shlex.split(line.split("#")[0].replace("~/loras/SD_200", str(folder)))
        assert argv[:3] == ["python", "-m", "weightspace"] and main(argv[3:]) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scope = {}
        exec(python.replace("~/loras/SD_200", str(folder)), scope)
    assert len(scope["data"]) == 3 and len(caught) == 1 and "verify='none'" in str(caught[0].message)
