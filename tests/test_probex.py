"""ProbeX: the formula against a brute-force reference, the layer rules, training, baselines, experts."""
import pytest
import torch
from conftest import TINY_TREES, assert_stacked_is_each_model

from weightspace.probex import (
    Dense,
    LayerData,
    ProbeX,
    Ridge,
    Router,
    compare_inputs,
    delta_inputs,
    elementwise_accuracy,
    fit,
    fit_experts,
    fit_ridge,
    fit_statnn,
    layer_matrix,
    lora_matrix,
    majority,
    n_params,
    probex_params,
    route_and_evaluate,
    stack_layer,
    statnn_features,
    weight_statistics,
)
from weightspace.probex.model import ranks_for
from weightspace.runtime import torch_threads
from weightspace.zoo import Zoo, ZooError
from weightspace.zoo.model_trees import build_model_trees


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets train fastest on one thread (and do not fight other processes for the cores)."""
    with torch_threads(1):
        yield


def test_probex_forward_is_the_paper_formula():
    """e = Σ_l M_l ReLU(Vᵀ X u_l) + b and y = T e + c, written out probe by probe."""
    torch.manual_seed(0)
    d_H, d_W, r_U, r_V, r_T, d_Y = 5, 7, 3, 4, 6, 2
    net = ProbeX(d_H, d_W, r_U, r_V, r_T, d_Y)
    X = torch.randn(2, d_H, d_W)
    U, V = net.U, net.V
    assert U.shape == (d_W, r_U) and V.shape == (d_H, r_V)
    for b in range(2):
        e = net.encoders.bias.clone()
        for l in range(r_U):
            e += net.M(l) @ torch.relu(V.T @ X[b] @ U[:, l])
        y = net.head.weight @ e + net.head.bias
        assert torch.allclose(net.encode(X)[b], e, atol=1e-5)
        assert torch.allclose(net(X)[b], y, atol=1e-5)


def test_parameter_counts():
    net = ProbeX(768, 768, 128, 128, 128, 100)
    assert n_params(net) == probex_params(768, 768, 128, 128, 128, 100)
    assert abs(n_params(net) - 2.31e6) < 0.01e6                      # spec §2.4
    assert n_params(Dense(768, 768, 100)) == 768 * 768 * 100 + 100
    assert probex_params(768, 768, 128, 128, 512, 100) == pytest.approx(8.64e6, rel=0.01)


def test_without_relu_probex_is_a_tucker_dense_expert():
    """Dropping the ReLU, ProbeX equals the dense expert with W = G ×1 T ×2 V ×3 U (spec §2.3)."""
    torch.manual_seed(1)
    net = ProbeX(4, 3, 2, 5, 6, 2)
    X = torch.randn(3, 4, 3)
    G = torch.stack([net.M(l) for l in range(2)], -1)                  # [r_T, r_V, r_U]
    W = torch.einsum("yt,tvl,hv,wl->yhw", net.head.weight, G, net.V, net.U)
    bias = net.head.weight @ net.encoders.bias + net.head.bias
    Z = (X @ net.U).transpose(1, 2) @ net.V                            # no ReLU
    linear = net.head(net.encoders(Z.flatten(1)))
    assert torch.allclose(linear, torch.einsum("yhw,bhw->by", W, X) + bias, atol=1e-5)


def test_layer_rules():
    lin = torch.randn(6, 4)
    assert torch.equal(layer_matrix(lin), lin)                          # [out, in], no transpose
    conv1 = torch.randn(8, 5, 1, 1)
    assert torch.equal(layer_matrix(conv1), conv1[:, :, 0, 0])
    conv3 = torch.randn(8, 5, 3, 3)
    X = layer_matrix(conv3)
    assert X.shape == (45, 8) and torch.equal(X.flatten(), conv3.flatten())   # reshaped, not permuted
    assert layer_matrix(torch.randn(7)).shape == (7, 1)
    assert layer_matrix(torch.randn(1, 17, 32)).shape == (17, 32)      # timm pos_embed
    A, B = torch.randn(4, 10), torch.randn(12, 4)
    assert torch.allclose(lora_matrix(A, B), B @ A)
    with pytest.raises(ValueError, match="do not chain"):
        lora_matrix(torch.randn(3, 10), B)
    with pytest.raises(ValueError, match="different shapes"):
        stack_layer([torch.randn(4, 4), torch.randn(4, 5)])
    bad = torch.randn(3, 4, 4)
    bad[1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"1 model\(s\) have NaN or inf weights \(rows \[1\]\)"):
        stack_layer(bad)
    assert ranks_for((96, 32), dict(n_probes=64, proj_dim=128, rep_dim=16)) == dict(n_probes=32, proj_dim=96, rep_dim=16)


def _planted(n, d=8, classes=6, seed=0):
    """Layers whose mean row encodes the training classes linearly, plus noise."""
    g = torch.Generator().manual_seed(seed)
    Y = (torch.rand(n, classes, generator=g) > 0.5).float()
    P = torch.randn(classes, d, d, generator=g)
    X = torch.einsum("nc,chw->nhw", Y - 0.5, P) + 0.3 * torch.randn(n, d, d, generator=g)
    return X, Y


def test_training_learns_and_checkpoints_on_validation():
    X, Y = _planted(300)
    tr, va, te = (X[:200], Y[:200]), (X[200:250], Y[200:250]), (X[250:], Y[250:])
    f = fit("probex", tr, va, te, n_probes=8, proj_dim=8, rep_dim=16, epochs=40, eval_every=5, device="cpu")
    assert f.test_acc > 0.9 and f.val_acc == max(h[2] for h in f.history)
    assert f.best_epoch in [h[0] for h in f.history]
    assert elementwise_accuracy(f.predict(te[0]), te[1]) == f.test_acc
    d = fit("dense", tr, va, te, epochs=40, device="cpu")
    assert d.test_acc > 0.9 and d.n_params == 8 * 8 * 6 + 6
    # same seed, same result
    again = fit("probex", tr, va, te, n_probes=8, proj_dim=8, rep_dim=16, epochs=40, eval_every=5, device="cpu")
    assert again.test_acc == f.test_acc
    ridge, _ = fit_ridge(tr, va)
    assert ridge.score(*te) > 0.9


def test_fit_many_equals_one_at_a_time():
    """Experts trained together (stacked, vmapped) give `fit`'s numbers: same init, shuffles, checkpoint
    and accuracies, weights equal to float rounding; mixed kinds, shapes and recipes come back in order."""
    from weightspace.probex.train import fit_many

    g = torch.Generator().manual_seed(3)

    def split(n, h, w):
        return torch.randn(n, h, w, generator=g), (torch.rand(n, 6, generator=g) > 0.5).float()

    tasks = []
    for i, (kind, (h, w)) in enumerate([("probex", (8, 12)), ("dense", (8, 12)), ("probex", (5, 7)),
                                         ("probex", (8, 12)), ("dense", (8, 12)), ("probex", (8, 12))]):
        cfg = dict(n_probes=4, proj_dim=4, rep_dim=8, epochs=6, eval_every=2, batch_size=8,
                   lr=1e-3 * (1 + i % 3), weight_decay=[1e-5, 1e-2][i % 2])
        tasks.append((kind, (split(20, h, w), split(9, h, w), split(11, h, w)), i % 2, cfg))
    tasks.append(("dense", (split(20, 8, 12), split(9, 8, 12)), 0, dict(epochs=3, eval_every=1, device="cpu")))
    many = fit_many(tasks, device="cpu")
    for (kind, splits, seed, cfg), b in zip(tasks, many):
        a = fit(kind, *splits, seed=seed, **{"device": "cpu", **cfg})
        assert type(a.model) is type(b.model) and a.n_params == b.n_params
        assert (a.val_acc, a.test_acc, a.train_acc, a.best_epoch) == (b.val_acc, b.test_acc, b.train_acc, b.best_epoch)
        assert [h[::2] for h in a.history] == [h[::2] for h in b.history]        # epochs and val accuracies
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert max(float((sa[k] - sb[k]).abs().max()) for k in sa) < 1e-5
    with pytest.raises(TypeError, match="unknown ProbeX setting"):
        fit_many([("probex", tasks[0][1], 0, dict(n_probe=3))])
    with pytest.raises(ValueError, match="labels have"):
        fit_many([("dense", (tasks[0][1][0], (tasks[0][1][1][0], tasks[0][1][1][1][:, :3])), 0, {})])


def test_stacked_experts_forward_is_each_experts_function_and_gradient():
    """ProbeX.forward_stacked / Dense.forward_stacked (what Stacked, so fit_many, calls) equal each expert's
    forward, outputs and every weight's gradient, and the vmap of it; a wrong shape is refused."""
    import torch.nn.functional as F

    from weightspace.nets.batched import Stacked
    from weightspace.probex.model import Dense, ProbeX

    for make in (lambda: ProbeX(6, 9, n_probes=3, proj_dim=4, rep_dim=5, out_dim=7), lambda: Dense(6, 9, 7)):
        models = []
        for m in range(3):
            torch.manual_seed(m)
            models.append(make())
        net = Stacked(make, [e.state_dict() for e in models])
        assert net.forward_stacked is type(models[0]).forward_stacked
        X, Y = torch.randn(3, 4, 6, 9), (torch.rand(3, 4, 7) > 0.5).float()
        out = assert_stacked_is_each_model(
            net, models, X, Y, lambda o, t: F.binary_cross_entropy_with_logits(o, t, reduction="sum"))
        vmapped = Stacked(make, [e.state_dict() for e in models])
        vmapped.forward_stacked = None
        assert torch.allclose(vmapped(X), out, atol=1e-6)
        with pytest.raises(ValueError, match="expects"):
            net(torch.randn(3, 4, 5, 9))


def test_ridge_matches_the_primal_solution():
    X, Y = _planted(40, d=3)
    r = Ridge(0.1).fit(X, Y)
    Xf = X.flatten(1).double()
    Xc = Xf - Xf.mean(0)
    lam = 0.1 * float((Xc * Xc).sum(1).mean())
    W = torch.linalg.solve(Xc.T @ Xc + lam * torch.eye(9, dtype=torch.double), Xc.T @ (Y.double() - Y.double().mean(0)))
    assert torch.allclose(r.W, W, atol=1e-8)


def test_bad_inputs_are_clear():
    X, Y = _planted(20)
    with pytest.raises(ValueError, match="the validation split is empty"):
        fit("probex", (X, Y), (X[:0], Y[:0]))
    with pytest.raises(ValueError, match="the train split is empty"):
        fit("dense", (X[:0], Y[:0]), (X, Y))
    Xn = X.clone()
    Xn[3, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="train split: 1 model"):
        fit("probex", (Xn, Y), (X, Y))
    with pytest.raises(TypeError, match="unknown ProbeX setting"):
        fit("probex", (X, Y), (X, Y), n_probe=3)
    with pytest.raises(ValueError, match="unknown model kind"):
        fit("mlp", (X, Y), (X, Y))
    with pytest.raises(ValueError, match=r"ProbeX expects \[B, 8, 8\]"):
        ProbeX(8, 8, 2, 2, 2, 6)(torch.randn(2, 8, 9))
    # labels: NaN, not 0/1, wrong width across splits; recipe values that once gave cryptic errors
    Yn = Y.clone()
    Yn[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"train split: labels must be 0 or 1 .* row 2, class 1 is nan"):
        fit("probex", (X, Yn), (X, Y))
    with pytest.raises(ValueError, match=r"validation split: labels must be 0 or 1 .* is 2.0"):
        fit("dense", (X, Y), (X, Y * 2))
    with pytest.raises(ValueError, match="validation split: labels have 5 classes, the expert predicts 6"):
        fit("probex", (X, Y), (X, Y[:, :5]))
    with pytest.raises(ValueError, match=r"labels must be a \[models, classes\] 0/1 matrix"):
        fit("probex", (X, Y[:, 0]), (X, Y))
    for bad in (dict(epochs=0), dict(eval_every=0), dict(batch_size=0), dict(batch_size=2.5), dict(lr=0.0),
                dict(lr=float("nan")), dict(weight_decay=-1.0)):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}=.*must be"):
            fit("probex", (X, Y), (X, Y), **bad)


def test_delta_inputs_by_hand():
    root = torch.tensor([[1.0, 2.0]])
    tr = (torch.tensor([[[1.0, 4.0]], [[3.0, 2.0]]]), torch.ones(2, 1))
    va = (torch.tensor([[[2.0, 2.0]]]), torch.zeros(1, 1))
    # training deltas 0, 2, 2, 0: mean 1, sample std sqrt(4/3); the validation split uses the same sigma
    (Xt, Yt), (Xv, Yv) = delta_inputs([tr, va], root)
    s = (4 / 3) ** 0.5
    assert torch.allclose(Xt, torch.tensor([[[0.0, 2 / s]], [[2 / s, 0.0]]])) and torch.equal(Yt, tr[1])
    assert torch.allclose(Xv, torch.tensor([[[1 / s, 0.0]]])) and torch.equal(Yv, va[1])
    (Xr, _), = delta_inputs([tr], root, standardize=False)
    assert torch.equal(Xr, tr[0] - root)
    with pytest.raises(ValueError, match=r"root is \(2, 1\) but the layer is \(1, 2\)"):
        delta_inputs([tr], root.T)
    with pytest.raises(ValueError, match="equal their root"):
        delta_inputs([(root[None].repeat(3, 1, 1), torch.ones(3, 1))], root)


def test_baselines():
    Y = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 1, 0.]])
    assert majority(Y, torch.tensor([[1, 0, 0.]])) == 1.0
    assert majority(Y, torch.tensor([[0, 1, 1.]])) == 0.0
    w = torch.arange(5.0)
    f = weight_statistics({"w": w}, ["w"])
    assert torch.allclose(f, torch.tensor([2.0, 2.0, 0, 1, 2, 3, 4]))


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("probex") / "trees"
    return build_model_trees(path, executor="inline", progress=False,
                             **{**TINY_TREES, "n_per_tree": 8, "split": [0.5, 0.25, 0.25]})


def test_on_a_tiny_zoo(tiny_zoo):
    data = LayerData(tiny_zoo)
    assert len(data.ids) == 16 and data.trees == [0, 1]
    layers = data.layers()
    assert "blocks.1.attn.proj.weight" in layers and "patch_embed.proj.weight" in layers
    assert data.X("patch_embed.proj.weight").shape == (16, 4, 32)        # conv [32,1,2,2] -> [C_in k k, C_out]
    X, Y = data.split("blocks.0.attn.qkv.weight", 1, "train")
    assert X.shape == (4, 96, 32) and Y.shape == (4, 40) and (Y.sum(1) == 20).all()
    experts = fit_experts(data, "blocks.1.attn.proj.weight", epochs=3, eval_every=1, device="cpu")
    router = Router(["blocks.0.attn.proj.weight"]).fit(data)
    res = route_and_evaluate(experts, router, data)
    assert res["routing_acc"] == 1.0 and res["routed_acc"] == res["oracle_acc"]
    with pytest.raises(ValueError, match="no models of trees .* in split 'val_holdout' to route"):
        route_and_evaluate(experts, router, data, "val_holdout")       # an empty split: not NaN accuracies
    with pytest.raises(ValueError, match="no models in split 'test_holdout' to place the tree centroids"):
        Router(["blocks.0.attn.proj.weight"]).fit(data, "test_holdout")
    feats = statnn_features(tiny_zoo, data.ids)
    assert feats.shape[0] == 16 and torch.isfinite(feats).all()
    m = torch.from_numpy(data.mask(split="train"))
    mv = torch.from_numpy(data.mask(split="val"))
    s = fit_statnn((feats[m], data.Y[m]), (feats[mv], data.Y[mv]), epochs=3)
    by_hand = ((s.predict(feats[mv]) > 0) == (data.Y[mv] > 0.5)).float().mean()    # the kept model, re-scored
    assert s.val_acc == pytest.approx(float(by_hand)) and s.val_acc == max(h[2] for h in s.history)
    with pytest.raises(ValueError, match="no models in tree 7"):
        data.split("blocks.1.attn.proj.weight", 7, "train")
    root = data.root("patch_embed.proj.weight", 1)                          # same X rules as the fine-tunes
    assert torch.equal(root, layer_matrix(tiny_zoo.load("t1-root")["patch_embed.proj.weight"]))
    with pytest.raises(ValueError, match="no models in tree 7"):
        data.root("blocks.1.attn.proj.weight", 7)
    with pytest.raises(ZooError, match="close names"):
        data.X("blocks.1.attn.prj.weight")


def test_compare_inputs_on_a_tiny_zoo(tiny_zoo):
    data = LayerData(tiny_zoo)
    layer = "blocks.1.attn.proj.weight"
    cfg = dict(n_probes=4, proj_dim=4, rep_dim=8, epochs=3, eval_every=1, device="cpu")
    recs = compare_inputs(data, 0, [layer], seeds=(0, 1), **cfg)
    assert [(r["input"], r["kind"]) for r in recs] == [(i, k) for i in ("X", "ΔX", "ΔX/σ") for k in ("probex", "dense")]
    splits = [data.split(layer, 0, s) for s in ("train", "val", "test")]
    by_hand = [fit("dense", *delta_inputs(splits, data.root(layer, 0)), seed=s, **cfg).test_acc for s in (0, 1)]
    assert recs[-1]["test_acc"] == pytest.approx(sum(by_hand) / 2)
    X, root = splits[0][0], data.root(layer, 0)
    moved = ((X - root).flatten(1).norm(dim=1) / root.norm()).mean()
    assert recs[0]["moved"] == pytest.approx(float(moved)) and recs[0]["moved"] > 0


def test_mismatched_shapes_across_a_zoo(tiny_zoo, tmp_path):
    zoo = Zoo.create(tmp_path / "mixed", kind="vit-model-trees", builder="t", params={},
                     labels={"column": "classes", "class_names": tiny_zoo.class_names})
    zoo.add("r", {"blocks.0.attn.proj.weight": torch.zeros(4, 4)}, split=None, tree_name="x")
    zoo.add("a", {"blocks.0.attn.proj.weight": torch.zeros(4, 4)}, parent_id="r", depth=1, classes=[0])
    zoo.add("b", {"blocks.0.attn.proj.weight": torch.zeros(4, 5)}, parent_id="r", depth=1, classes=[1])
    with pytest.raises(ZooError, match=r"b.safetensors: layer 'blocks.0.attn.proj.weight' has shape \(4, 5\)"):
        LayerData(zoo).X("blocks.0.attn.proj.weight")
    zoo.add("c", {"blocks.0.attn.proj.weight": torch.full((4, 4), float("nan"))}, parent_id="r", depth=1, classes=[1])
    with pytest.raises(ValueError, match="NaN or inf weights"):
        LayerData(zoo, ids=["a", "c"]).X("blocks.0.attn.proj.weight")


def test_layer_data_reads_lora_layers(tiny_lora_trees):
    """"lora:<stem>" is each model's B A (Zoo.lora_layer), what ProbeX reads for a LoRA (no alpha scaling)."""
    data = LayerData(tiny_lora_trees)
    layers = data.layers()
    assert layers[-2:] == ["lora:blocks.0.attn.qkv", "lora:blocks.1.attn.qkv"]
    assert not any(k.startswith("lora_factors.") for k in layers) and "blocks.0.attn.qkv.weight" in layers
    X = data.X("lora:blocks.0.attn.qkv")
    assert X.shape == (len(data.ids), 96, 32) and X.dtype == torch.float32
    for n, mid in enumerate(data.ids):
        sd = tiny_lora_trees.load(mid)
        U, V = sd["lora_factors.blocks.0.attn.qkv.U"], sd["lora_factors.blocks.0.attn.qkv.V"]
        by_hand = torch.einsum("ik,kj->ij", U.double(), V.double()).float()
        assert torch.allclose(X[n], by_hand, atol=1e-7)
        assert torch.linalg.matrix_rank(X[n].double(), rtol=1e-4) == 2 * tiny_lora_trees.row(mid)["rank"]
    assert torch.equal(data.root("lora:blocks.0.attn.qkv", 0), torch.zeros(96, 32))   # the base: no adapter
    Xtr, Ytr = data.split("lora:blocks.1.attn.qkv", 0, "train")
    assert Xtr.shape[1:] == (96, 32) and len(Xtr) == len(Ytr)
    with pytest.raises(ZooError, match="no tensor named 'lora_factors.blocks.7.attn.qkv.U'"):
        data.X("lora:blocks.7.attn.qkv")
    plain = LayerData(Zoo.open(tiny_lora_trees.path))                                    # reopened: same layers
    assert plain.layers() == layers
