"""SANE's small CNN and its batched training, against plain one-model-at-a-time PyTorch."""
import math

import pytest
import torch
import torch.nn.functional as F

from weightspace.nets.cnn import (CNN_S, INITS, evaluate_cnns, forward_stacked, init_params, make_cnn,
                                  param_shapes, resolve_cfg, stack_params, train_cnns)
from weightspace.runtime import torch_threads


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def _data(n_train=96, n_eval=40, seed=0):
    """A small digits subset as {split: (x, y)}."""
    from weightspace.data import digits

    d = digits(seed)
    return {"train": (d.train.x[:n_train], d.train.y[:n_train]), "val": (d.val.x[:n_eval], d.val.y[:n_eval]),
            "test": (d.test.x[:n_eval], d.test.y[:n_eval])}


def test_architecture_keys_in_forward_order_and_size():
    model = make_cnn()
    assert list(model.state_dict()) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    # 8*9+8 + 6*72+6 + 20*24+20 + 10*20+10, by hand
    assert sum(p.numel() for p in model.parameters()) == 80 + 438 + 500 + 210 == 1228
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    wide = make_cnn(channels=[4, 4, 4], img_size=16, num_classes=3, activation="relu")
    assert wide(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    assert param_shapes(dict(channels=[4, 4, 4], img_size=16))["fc1.weight"] == (20, 4 * 2 * 2)


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "sigmoid"])
def test_stacked_forward_equals_each_module(activation):
    cfg = dict(activation=activation)
    sds = init_params(cfg, [1, 2, 3], "xavier_uniform")
    x = torch.randn(3, 7, 1, 8, 8)
    shared = torch.randn(7, 1, 8, 8)
    P = stack_params(sds, cfg)
    out, out_shared = forward_stacked(P, x, resolve_cfg(cfg)), forward_stacked(P, shared, resolve_cfg(cfg))
    for m, sd in enumerate(sds):
        model = make_cnn(**cfg)
        model.load_state_dict(sd)
        assert torch.allclose(out[m], model(x[m]), atol=1e-5)
        assert torch.allclose(out_shared[m], model(shared), atol=1e-5)


def test_init_is_deterministic_and_named():
    a, b = init_params(None, [5, 6], "kaiming_normal"), init_params(None, [5, 6], "kaiming_normal")
    assert all(torch.equal(a[i][k], b[i][k]) for i in range(2) for k in a[i])
    assert not torch.equal(a[0]["conv1.weight"], a[1]["conv1.weight"])
    assert torch.all(a[0]["fc1.bias"] == 0.01)
    u = init_params(None, [0], "uniform")[0]["conv2.weight"]
    assert 0 <= float(u.min()) and float(u.max()) <= 1 and 0.4 < float(u.mean()) < 0.6
    k = init_params(None, [0], "kaiming_uniform")[0]["fc1.weight"]       # bound sqrt(6 / fan_in), fan_in 24
    assert float(k.abs().max()) <= math.sqrt(6 / 24) and float(k.abs().max()) > 0.8 * math.sqrt(6 / 24)
    d = init_params(None, [0], "default")[0]["fc2.bias"]
    assert float(d.abs().max()) <= 1 / math.sqrt(20) and not torch.all(d == 0.01)
    mixed = init_params(None, [0, 1], ["normal", "xavier_normal"])
    assert float(mixed[0]["fc1.weight"].std()) > 3 * float(mixed[1]["fc1.weight"].std())
    assert set(INITS) >= {"uniform", "normal", "kaiming_uniform"}


def _reference(sd, data, cfg, epochs, lr, seed, batch_size, weight_decay=0.0):
    """One model trained the plain way: an nn.Module and torch.optim.AdamW, the batch order of its seed."""
    from weightspace.runtime import generator

    model = make_cnn(**cfg)
    model.load_state_dict(sd)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    x, y = data["train"]
    g = generator("cnn-order", seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for lo in range(0, len(y), batch_size):
            idx = perm[lo:lo + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def test_batched_training_equals_one_model_at_a_time():
    """Three models with their own seeds, learning rates and weight decays, trained together and one by one;
    batch 40 on 96 images leaves a short last batch."""
    data, cfg = _data(), dict(activation="gelu")
    seeds, lrs, wds = [3, 4, 5], [3e-3, 1e-3, 5e-3], [0.0, 0.1, 0.0]
    sds = init_params(cfg, seeds, "xavier_uniform")
    run = train_cnns(sds, data, epochs=3, lr=lrs, seeds=seeds, cfg=cfg, batch_size=40, weight_decay=wds,
                     device="cpu")
    solo = train_cnns(sds[1:2], data, epochs=3, lr=lrs[1], seeds=seeds[1:2], cfg=cfg, batch_size=40,
                      weight_decay=wds[1], device="cpu")
    for m in range(3):
        ref = _reference(sds[m], data, resolve_cfg(cfg), 3, lrs[m], seeds[m], 40, wds[m])
        for k, v in ref.state_dict().items():
            assert torch.allclose(run.params[m][k], v, atol=2e-5, rtol=1e-4), (m, k)
        assert not torch.allclose(run.params[m]["fc2.weight"], sds[m]["fc2.weight"])
        x, y = data["test"]
        acc = (ref(x).argmax(1) == y).float().mean().item()
        assert run.metrics[3][m]["test_acc"] == pytest.approx(acc, abs=1 / len(y) + 1e-6)
    for k in solo.params[0]:
        assert torch.allclose(solo.params[0][k], run.params[1][k], atol=1e-5)


def test_metrics_every_epoch_and_checkpoints():
    data = _data()
    sds = init_params(None, [0, 1], "xavier_uniform")
    seen = []
    run = train_cnns(sds, data, epochs=2, lr=3e-3, seeds=[0, 1], device="cpu", keep_checkpoints=True,
                     on_epoch=lambda e, s, m: seen.append((e, len(s), m[0]["epoch"])))
    assert seen == [(0, 2, 0), (1, 2, 1), (2, 2, 2)]
    assert len(run.metrics) == len(run.checkpoints) == 3
    for k in sds[0]:                                  # epoch 0 is the initialisation, the last the result
        assert torch.equal(run.checkpoints[0][1][k], sds[1][k])
        assert torch.equal(run.checkpoints[2][1][k], run.params[1][k])
    # the recorded accuracies and losses are those of evaluate_cnns and of the module itself
    for split in ("train", "val", "test"):
        acc, loss = evaluate_cnns(run.checkpoints[1], data[split], loss=True, device="cpu")
        for m in range(2):
            assert run.metrics[1][m][f"{split}_acc"] == pytest.approx(float(acc[m]), abs=1e-6)
            model = make_cnn()
            model.load_state_dict(run.checkpoints[1][m])
            x, y = data[split]
            assert float(loss[m]) == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-4)
    assert run.metrics[0][0]["diverged"] is False


def test_training_learns_digits():
    sds = init_params(None, range(4), "xavier_uniform")
    run = train_cnns(sds, None, epochs=4, lr=3e-3, seeds=range(4), device="cpu")
    accs = [m["test_acc"] for m in run.metrics[-1]]
    assert min(accs) > 0.7 and max(m["test_acc"] for m in run.metrics[0]) < 0.3


def test_diverged_model_is_recorded_and_does_not_touch_the_others():
    data = _data()
    sds = init_params(None, [0, 1], "xavier_uniform")
    bad = {k: v.clone() for k, v in sds[0].items()}
    bad["fc1.weight"][0, 0] = float("nan")
    run = train_cnns([bad, sds[1]], data, epochs=1, lr=1e-3, seeds=[0, 1], device="cpu")
    alone = train_cnns([sds[1]], data, epochs=1, lr=1e-3, seeds=[1], device="cpu")
    assert run.metrics[1][0]["diverged"] and run.metrics[1][0]["test_acc"] is None
    assert not run.metrics[1][1]["diverged"]
    assert run.metrics[1][1]["test_acc"] == pytest.approx(alone.metrics[1][0]["test_acc"])


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="activation"):
        make_cnn(activation="swish")
    with pytest.raises(ValueError, match="unknown CNN setting"):
        make_cnn(widht=3)
    with pytest.raises(ValueError, match="halved"):
        make_cnn(img_size=6)
    with pytest.raises(ValueError, match="init"):
        init_params(None, [0], "orthogonal")
    sd = init_params(None, [0])[0]
    wrong = dict(sd, **{"conv2.weight": torch.zeros(6, 8, 5, 5)})
    with pytest.raises(ValueError, match=r"model 1: conv2.weight has shape"):
        train_cnns([sd, wrong], _data(), epochs=1, lr=1e-3, seeds=[0, 1], device="cpu")
    with pytest.raises(ValueError, match="missing"):
        stack_params([{k: v for k, v in sd.items() if k != "fc2.bias"}])
    with pytest.raises(ValueError, match="seeds: 1 values for 2 models"):
        train_cnns([sd, sd], _data(), epochs=1, lr=1e-3, seeds=[0], device="cpu")
    with pytest.raises(ValueError, match="num_classes"):
        evaluate_cnns([sd], (torch.zeros(3, 1, 8, 8), torch.tensor([0, 1, 12])), device="cpu")
    assert CNN_S["activation"] == "tanh"


def test_bench_cnn_runs_and_both_sides_agree(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench_cnn.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "bench_cnn.py"), "--models", "3", "--epochs", "1",
                    "--out", str(out)], check=True, cwd=root, capture_output=True, text=True)
    res = json.loads(out.read_text())
    assert res["models"] == 3 and res["speedup"] > 0
    assert res["max_abs_weight_difference"] < 1e-4          # the same recipe on both sides
