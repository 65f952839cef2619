"""SANE: tokenizer, preprocessing, model and losses, training, embeddings, probes and sampling."""
import copy
import logging

import numpy as np
import pytest
import torch
from torch import nn

from weightspace.sane import preprocess as P
from weightspace.sane import properties, sample
from weightspace.sane import train as T
from weightspace.sane.embed import chunks, embed, encode_sequence
from weightspace.sane.model import SANE, SANEConfig, masked_mse, nt_xent
from weightspace.sane.tokenize import (TokenizeError, check_positions, detokenize, tokenize, tokenize_rowloop)


def cnn(bn: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), *( [nn.BatchNorm2d(8)] if bn else []), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(24, 20), nn.ReLU(), nn.Linear(20, 10))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return net.eval()


def same(a, b) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def zoo(n_runs=12, epochs=3, seed=0):
    """A stacked look-alike zoo: runs of one CNN drifting over epochs, with properties."""
    sds, rows = [], []
    for r in range(n_runs):
        base = cnn(seed=seed + r).state_dict()
        for e in range(epochs):
            sds.append({k: v + 0.05 * e * torch.randn_like(v) for k, v in base.items()})
            rows.append(dict(run_id=r, epoch=e, test_acc=0.1 * e + 0.01 * r))
    return T.stack(sds), rows


# ------------------------------------------------------------------------------------------------ tokenize

@pytest.mark.parametrize("ignore_bn", [True, False])
def test_round_trip_cnn_with_bn_and_rowloop(ignore_bn):
    sd = cnn(bn=True).state_dict()
    for d_t in (None, 7, 73, 500):
        t = tokenize(sd, d_t, ignore_bn=ignore_bn)
        assert torch.equal(t.tokens, tokenize_rowloop(sd, d_t, ignore_bn))
        assert same(detokenize(t, sd), sd)
        assert torch.equal(t.mask.sum(), torch.tensor(float(sum(x.rows * x.row_len for x in t.layout.layers))))
    keys = [x.key for x in tokenize(sd, ignore_bn=ignore_bn).layout.layers]
    assert ("1.weight" in keys) == (not ignore_bn) and ("1.running_var" in keys) == (not ignore_bn)


def test_round_trip_resnet18_and_vit():
    import timm

    from weightspace.nets.vit import make_vit

    sd = timm.create_model("resnet18", pretrained=False, num_classes=10).state_dict()
    for ignore_bn in (True, False):
        t = tokenize(sd, 288, ignore_bn=ignore_bn)
        assert t.tokens.shape[1] == 288 and same(detokenize(t, sd), sd)
    # 21 conv/linear layers without BN; fc 512 + 1 -> 2 tokens per row (the paper's counts, Sec. 3.1)
    lay = tokenize(sd, 288).layout
    assert len(lay.layers) == 21 and lay.layers[-1].chunks == 2
    assert lay.n_tokens == sum(x.rows * -(-(int(np.prod(x.shape[1:])) + (x.bias is not None)) // 288)
                               for x in lay.layers)
    v = make_vit(10).state_dict()
    t = tokenize(v, 33)
    assert same(detokenize(t, v), v) and "pos_embed" in t.layout.skipped
    stacked = T.stack([v, make_vit(10).state_dict()])
    ts = tokenize(stacked, 33, lead=1)
    assert torch.equal(ts.tokens[0], t.tokens) and same({k: x[0] for k, x in detokenize(ts.tokens, v).items()}, v)


def test_positions_by_hand():
    sd = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "b.weight": torch.zeros(3, 2, 2)}
    t = tokenize(sd, 3)   # a: rows of 4 -> 2 chunks each; b: rows of 4 (no bias) -> 2 chunks
    assert t.positions.tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 1], [3, 0, 1],
                                    [4, 1, 0], [5, 1, 0], [6, 1, 1], [7, 1, 1], [8, 1, 2], [9, 1, 2]]
    assert t.mask[:2].tolist() == [[1, 1, 1], [1, 0, 0]]
    sd["a.weight"] = torch.arange(6.).reshape(2, 3)
    sd["a.bias"] = torch.tensor([10., 11.])
    assert tokenize(sd, 3).tokens[:4].tolist() == [[0, 1, 2], [10, 0, 0], [3, 4, 5], [11, 0, 0]]


def test_bad_inputs_name_the_layer():
    sd = cnn().state_dict()
    lay = tokenize(sd).layout
    with pytest.raises(TokenizeError, match="'7.weight' has 20 rows.*holds 16"):
        check_positions(lay, [1000, 10, 16])
    with pytest.raises(TokenizeError, match="layer 3.*holds 3 layers"):
        check_positions(lay, [1000, 3, 100])
    wide = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(24, 30), nn.ReLU(), nn.Linear(30, 10)).state_dict()
    with pytest.raises(TokenizeError, match="7.weight"):
        tokenize(wide, like=lay)
    with pytest.raises(TokenizeError, match="another architecture"):
        detokenize(tokenize(sd).tokens, wide)
    with pytest.raises(TokenizeError, match="another architecture"):
        detokenize(tokenize(sd).tokens[:, :50], sd)   # a token size that does not fit the reference's layout
    m = SANE(SANEConfig(token_size=73, max_positions=[100, 10, 40], window=8, d_model=8, d_z=2, n_layers=1,
                        n_heads=2))
    t50 = tokenize(sd, 50)
    with pytest.raises(ValueError, match="width 50.*73"):
        m.encode(t50.tokens[None, :8], t50.positions[None, :8])
    for bad in (-1, 2.5, True):
        with pytest.raises(TokenizeError, match="token_size"):
            tokenize(sd, bad)
    with pytest.raises(TokenizeError, match="'x.weight': bias 'x.bias'"):
        tokenize({"x.weight": torch.zeros(3, 2), "x.bias": torch.zeros(4)})
    with pytest.raises(TokenizeError, match="chain.*'4.weight'|'4.weight'.*chain"):
        P.chain_spec({"0.weight": torch.zeros(8, 1, 3, 3), "4.weight": torch.zeros(6, 5, 3, 3),
                      "8.weight": torch.zeros(10, 6)})


def test_nan_checkpoints_filtered_with_count(caplog):
    st, rows = zoo(4, 2)
    st["0.weight"][1, 0, 0, 0, 0] = float("nan")
    st["7.weight"][5, 0, 0] = 1e4
    with caplog.at_level(logging.WARNING):
        data, _, report = T.prepare({"train": (st, rows)}, aligned=False)
    assert report["filtered"]["train"] == 2 and len(data["train"]) == 6
    assert "2 of 8 checkpoints filtered" in caplog.text


# ---------------------------------------------------------------------------------------------- preprocess

def test_standardisation_from_train_only_and_inverse():
    st, rows = zoo(6, 2)
    tr = {k: v[:8] for k, v in st.items()}
    te = {k: v[8:] * 3 + 1 for k, v in st.items()}
    lay = tokenize({k: v[0] for k, v in tr.items()}).layout
    std = P.Standardizer.fit(tr, lay)
    v = torch.cat([tr["3.weight"].reshape(8, -1), tr["3.bias"]], 1).double()
    assert std.stats["3.weight"][0] == pytest.approx(float(v.mean()))   # equal-size checkpoints: mean of means
    assert std.stats["3.weight"][1] == pytest.approx(float(np.sqrt(np.mean([x.var(unbiased=False) for x in v]))))
    s = std.apply(te)   # the test split standardised with the TRAINING statistics, not its own
    assert float(s["3.weight"].std()) > 2
    back = std.invert(s)
    assert all(torch.allclose(back[k], te[k], atol=1e-5) for k in te)
    data, std2, _ = T.prepare({"train": (tr, rows[:8]), "test": (te, rows[8:])}, aligned=False)
    assert std2.stats == std.stats


def test_alignment_is_function_preserving_and_finds_a_permutation():
    net = cnn(bn=True)
    sd = net.state_dict()
    spec = P.chain_spec(sd)
    assert spec.blocks == (1, 1, 4, 1) and spec.sizes == (8, 6, 20)
    one = {k: v[None] for k, v in sd.items()}
    g = torch.Generator().manual_seed(1)
    perms = P.random_permutations(spec, 1, g)
    moved = {k: v[0] for k, v in P.permute(one, perms, spec).items()}
    x = torch.randn(7, 1, 8, 8)
    net2 = copy.deepcopy(net)
    net2.load_state_dict(moved)
    assert not same(moved, sd)
    assert torch.allclose(net(x), net2(x), atol=1e-5)
    found = P.weight_matching(sd, moved, spec)
    back = {k: v[0] for k, v in P.permute({k: v[None] for k, v in moved.items()}, [f[None] for f in found],
                                           spec).items()}
    assert all(torch.allclose(back[k], sd[k]) for k in sd)
    # align: a run's permutation comes from its last epoch and applies to all its epochs
    st, rows = zoo(3, 3)
    spec = P.chain_spec({k: v[0] for k, v in st.items()})
    ref = {k: v[0] for k, v in st.items()}
    al = P.align(st, [r["run_id"] for r in rows], [r["epoch"] for r in rows], ref)
    for i in range(len(rows)):
        a = cnn()
        a.load_state_dict({k: v[i] for k, v in st.items()})
        b = cnn()
        b.load_state_dict({k: v[i] for k, v in al.items()})
        assert torch.allclose(a(x), b(x), atol=1e-5)
    d_before = P.distance(st, ref, spec.weights)
    d_after = P.distance(al, ref, spec.weights)
    assert (d_after <= d_before + 1e-6).all() and d_after[3:].mean() < d_before[3:].mean()
    runs = np.array([r["run_id"] for r in rows])
    for r in range(3):   # one permutation per run: the epoch-to-epoch differences keep their norms
        i, j = np.flatnonzero(runs == r)[:2]
        diff = lambda s: torch.cat([(s[k][j] - s[k][i]).flatten() for k in spec.weights]).norm()
        assert diff(al) == pytest.approx(float(diff(st)), rel=1e-5)


# ------------------------------------------------------------------------------------------ model and loss

def test_nt_xent_against_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b, tau = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), 0.1
    x = torch.cat([a, b])
    n = len(a)
    total = 0.0
    for i in range(2 * n):
        sims = [float(torch.cosine_similarity(x[i], x[j], 0)) / tau for j in range(2 * n) if j != i]
        others = [j for j in range(2 * n) if j != i]
        pos = others.index((i + n) % (2 * n))
        total += -sims[pos] + np.log(np.sum(np.exp(sims)))
    assert float(nt_xent(a, b, tau)) == pytest.approx(total / (2 * n), rel=1e-5)


def test_masked_loss_ignores_padding():
    g = torch.Generator().manual_seed(0)
    target, pred = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    mask = (torch.rand(3, 4, 5, generator=g) > 0.5).float()
    base = masked_mse(pred, target * mask, mask)
    assert float(masked_mse(pred + 100 * (1 - mask), target * mask, mask)) == pytest.approx(float(base))
    assert float(base) == pytest.approx(float(((pred - target) ** 2)[mask.bool()].mean()), rel=1e-5)


def test_position_embedding_layout_and_shared():
    cfg = SANEConfig(token_size=7, max_positions=[20, 4, 9], window=4, d_model=8, d_z=3, n_layers=1, n_heads=2)
    m = SANE(cfg)
    pos = torch.tensor([[[0, 1, 2], [3, 1, 2]]])
    e = m.pe(pos)
    assert torch.allclose(e[0, 0, :4], m.pe.n.weight[0] + m.pe.l.weight[1])
    assert torch.allclose(e[0, :, 4:], m.pe.k.weight[2].expand(2, 4))
    with pytest.raises(IndexError, match="exceeds"):
        m.pe(torch.tensor([[[0, 4, 0]]]))


def test_chunks_cover_every_token_once_and_halo_equals_full():
    for n, w, h in [(44, 32, 8), (100, 16, 4), (17, 16, 0), (10, 32, 8)]:
        got = [i for s, e, c0, c1 in chunks(n, w, h) for i in range(c0, c1)]
        assert got == list(range(n))
        assert all(e - s == min(w, n) and s <= c0 <= c1 <= e for s, e, c0, c1 in chunks(n, w, h))
    st, rows = zoo(4, 2)
    data, _, _ = T.prepare({"train": (st, rows)}, aligned=False)
    t = data["train"].tokens
    n = t.tokens.shape[1]
    m = SANE(SANEConfig(token_size=t.tokens.shape[-1], max_positions=[n, 8, 32], window=n, d_model=16, d_z=4,
                        n_layers=1, n_heads=2))
    full = m.eval().encode(t.tokens, t.positions.expand(len(st["0.weight"]), -1, -1))
    assert torch.allclose(encode_sequence(m, t.tokens, t.positions, window=n, halo=8), full, atol=1e-6)
    assert torch.allclose(embed(m, t.tokens, t.positions, window=n + 5, halo=3), full.mean(1), atol=1e-6)
    part = encode_sequence(m, t.tokens, t.positions, window=16, halo=4)
    assert part.shape == full.shape and not torch.allclose(part, full)


def test_training_views_and_resume(tmp_path):
    st, rows = zoo(8, 2)
    data, _, _ = T.prepare({"train": (st, rows)}, aligned=True)
    d = data["train"]
    vi, vj, pos, mask = T.views(d, torch.arange(4), 16, torch.Generator().manual_seed(0), noise=0.0)
    assert vi.shape == (4, 16, d.tokens.tokens.shape[-1]) and not torch.allclose(vi, vj)
    assert torch.equal(vi * mask, vi) and torch.equal(vj * mask, vj)   # padding stays zero in both views
    cfg = T.config_for(d, window=16, d_model=16, d_z=4, n_layers=1, n_heads=2)
    run = lambda: SANE(copy.deepcopy(cfg))
    torch.manual_seed(0)
    a = run()
    ha = T.train(a, d, 6, batch_size=8, seed=3, progress=False, device="cpu")
    torch.manual_seed(0)
    b = run()
    ck = tmp_path / "ck.safetensors"
    T.train(b, d, 6, batch_size=8, seed=3, progress=False, device="cpu", checkpoint=ck, checkpoint_every=3)
    b2 = run()
    hb = T.train(b2, d, 6, batch_size=8, seed=3, progress=False, device="cpu", checkpoint=ck)
    assert hb["loss"] == pytest.approx(ha["loss"], rel=1e-5)   # resumed at the end: the same history
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a.state_dict().values(), b2.state_dict().values()))


def test_resume_midway_equals_uninterrupted(tmp_path):
    st, rows = zoo(8, 2)
    d = T.prepare({"train": (st, rows)}, aligned=False)[0]["train"]
    cfg = T.config_for(d, window=16, d_model=16, d_z=4, n_layers=1, n_heads=2)
    torch.manual_seed(0)
    a = SANE(copy.deepcopy(cfg))
    init = copy.deepcopy(a.state_dict())
    ha = T.train(a, d, 6, batch_size=8, seed=3, progress=False, device="cpu")
    ck = tmp_path / "ck.safetensors"
    b = SANE(copy.deepcopy(cfg))
    b.load_state_dict(init)

    class Stop(Exception):
        pass

    import weightspace.sane.train as mod
    orig = mod._save_checkpoint

    def save_then_stop(path, model, opt, step, history):
        orig(path, model, opt, step, history)
        if step == 3:
            raise Stop
    mod._save_checkpoint = save_then_stop
    try:
        with pytest.raises(Stop):
            T.train(b, d, 6, batch_size=8, seed=3, progress=False, device="cpu", checkpoint=ck, checkpoint_every=3)
    finally:
        mod._save_checkpoint = orig
    c = SANE(copy.deepcopy(cfg))
    hc = T.train(c, d, 6, batch_size=8, seed=3, progress=False, device="cpu", checkpoint=ck)
    assert hc["step"] == list(range(6)) and hc["loss"] == pytest.approx(ha["loss"], rel=1e-4)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_save_load_round_trip(tmp_path):
    st, rows = zoo(4, 2)
    data, std, _ = T.prepare({"train": (st, rows)}, aligned=False)
    d = data["train"]
    m = SANE(T.config_for(d, window=16, d_model=16, d_z=4, n_layers=1, n_heads=2))
    T.save(tmp_path / "sane", m, std, {"note": 1})
    m2, std2, info = T.load(tmp_path / "sane", d.tokens.layout)
    assert info == {"note": 1} and std2.stats == std.stats
    assert all(torch.equal(x, y) for x, y in zip(m.state_dict().values(), m2.state_dict().values()))
    # weights that are not the ones recorded are never served
    f = tmp_path / "sane" / "model.safetensors"
    data_ = bytearray(f.read_bytes())
    data_[-1] ^= 1
    f.write_bytes(bytes(data_))
    with pytest.raises(ValueError, match="model.safetensors: missing, or not the weights"):
        T.load(tmp_path / "sane", d.tokens.layout)


def test_a_checkpoint_that_fails_its_record_restarts_training(tmp_path, caplog):
    st, rows = zoo(8, 2)
    data, _, _ = T.prepare({"train": (st, rows)}, aligned=True)
    d = data["train"]
    cfg = T.config_for(d, window=16, d_model=16, d_z=4, n_layers=1, n_heads=2)
    torch.manual_seed(0)
    fresh = T.train(SANE(copy.deepcopy(cfg)), d, 4, batch_size=8, seed=3, progress=False, device="cpu")
    ck = tmp_path / "ck.safetensors"
    torch.manual_seed(0)
    T.train(SANE(copy.deepcopy(cfg)), d, 4, batch_size=8, seed=3, progress=False, device="cpu", checkpoint=ck,
            checkpoint_every=2)
    raw = bytearray(ck.read_bytes())
    raw[-1] ^= 1
    ck.write_bytes(bytes(raw))
    torch.manual_seed(0)
    with caplog.at_level("WARNING", logger="weightspace.sane.train"):
        again = T.train(SANE(copy.deepcopy(cfg)), d, 4, batch_size=8, seed=3, progress=False, device="cpu",
                        checkpoint=ck)
    assert "does not match its record" in caplog.text
    assert again["loss"] == pytest.approx(fresh["loss"], rel=1e-5)        # trained from step 0 again


# --------------------------------------------------------------------------------------------- properties

def test_ridge_against_closed_form_and_lambda_on_val():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = X @ rng.normal(size=5) + 0.3 * rng.normal(size=60)
    b = properties.ridge_fit(X, y, 0.5)
    Xb = np.hstack([X, np.ones((60, 1))])
    assert np.allclose(b, np.linalg.inv(Xb.T @ Xb + 0.5 * np.eye(6)) @ Xb.T @ y)
    # val data that punishes the signal direction: a large lambda must win on validation
    tr, va, te = (X[:20], y[:20]), (X[20:40], -y[20:40]), (X[40:], y[40:])
    res = properties.probe(tr, va, te)
    brute = {lam: properties.r2(va[1], properties.ridge_predict(va[0], properties.ridge_fit(*tr, lam)))
             for lam in properties.LAMBDAS}
    assert res["lam"] == max(brute, key=brute.get) == 1e3
    assert res["test_r2"] == pytest.approx(properties.r2(te[1], properties.ridge_predict(
        te[0], properties.ridge_fit(*tr, 1e3))))
    assert properties.probe(tr, (X[20:40], y[20:40]), te)["lam"] <= 1.0
    assert properties.r2([1, 2, 3], [1, 2, 3]) == 1.0


def test_weight_stats_by_hand():
    tokens = torch.tensor([[[1., 2.], [3., 0.], [5., 7.]]])
    pos = torch.tensor([[0, 0, 0], [1, 0, 1], [2, 1, 0]])
    s = properties.weight_stats(tokens, pos)
    v0 = np.array([1, 2, 3, 0.])
    assert s.shape == (1, 14)
    assert np.allclose(s[0, :7], [v0.mean(), v0.var(), *np.quantile(v0, [0.01, 0.25, 0.5, 0.75, 0.99])])
    assert properties.raw_weights(tokens).shape == (1, 6)


# ------------------------------------------------------------------------------------------------ sampling

def test_kde_modes_and_fresh_randomness():
    g = torch.Generator().manual_seed(0)
    prompts = torch.randn(4, 10, 3, generator=g)
    a, src_a = sample.kde(prompts, 5, 0.2, "token", g)
    b, _ = sample.kde(prompts, 5, 0.2, "token", g)
    assert not torch.allclose(a, b) and not torch.allclose(a[0], a[1])
    assert (src_a != src_a[:, :1]).any()        # tokens of one sample come from different prompts
    p, src_p = sample.kde(prompts, 6, 0.2, "prompt", g)
    assert (src_p == src_p[:, :1]).all()        # one prompt per sample
    noise = p - prompts[src_p[:, 0]]
    assert torch.allclose(noise, noise[:, :1].expand_as(noise), atol=1e-6)   # one shared noise vector
    assert not torch.allclose(p[0] - prompts[src_p[0, 0]], p[1] - prompts[src_p[1, 0]])
    z, _ = sample.kde(prompts, 2000, 0.2, "token", g)
    assert float((z - prompts[_, torch.arange(10)]).std()) == pytest.approx(0.2, rel=0.05)
    with pytest.raises(ValueError, match="mode"):
        sample.kde(prompts, 1, mode="joint")


def test_sampling_pipeline_shapes_subsample_and_distance():
    st, rows = zoo(6, 2)
    data, std, _ = T.prepare({"train": (st, rows)}, aligned=True)
    d = data["train"]
    m = SANE(T.config_for(d, window=16, d_model=16, d_z=4, n_layers=1, n_heads=2))
    ref = {k: v[0] for k, v in st.items()}
    z = sample.embed_tokens(m, d.stacked, d.tokens.layout, halo=4)
    out, src = sample.sample(m, z, d.tokens.positions, ref, std, 7, "prompt", 0.2, torch.Generator(), halo=4)
    assert out["0.weight"].shape == (7, 8, 1, 3, 3) and src.shape == (7, z.shape[1])
    scores = np.array([3, 1, 4, 1, 5, 9, 2])
    best, s = sample.subsample(out, scores, 3)
    assert list(s) == [9, 5, 4] and torch.equal(best["0.weight"][0], out["0.weight"][5])
    dist, idx = sample.nearest_distance(best, st, ["0.weight", "7.weight"])
    brute = [min(float(torch.cat([(best[k][i] - st[k][j]).flatten() for k in ["0.weight", "7.weight"]]).norm())
                 for j in range(len(rows))) for i in range(3)]
    assert np.allclose(dist, brute, rtol=1e-6)
    w = sample.weight_kde(d.stacked, d.tokens.layout, ref, std, 4, "prompt", 0.0, torch.Generator())
    dw, _ = sample.nearest_distance(w, std.invert(d.stacked), list(w))
    assert np.allclose(dw, 0, atol=1e-4)   # zero bandwidth: the baseline copies a prompt, and the distance says so


# ---------------------------------------------------------------------------------------------- benchmark

def test_bench_sane_smoke(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_sane", Path(__file__).parents[1] / "benchmarks" / "bench_sane.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--steps", "2", "--batch", "4", "--d-model", "16", "--skip-rowloop",
                    "--out", str(tmp_path / "b.json")])
    assert res["resnet18_tokens"] == 39124 and res["train_tokens_per_s"] > 0
