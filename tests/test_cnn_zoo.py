"""SANE's CNN zoos (weightspace.zoo.cnn_zoo), Zoo.model for weightspace architectures, and the Model Zoos importer."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weightspace.nets.cnn import evaluate_cnns, init_params, make_cnn
from weightspace.runtime import torch_threads
from weightspace.zoo import Zoo, ZooError
from weightspace.zoo.cnn_zoo import GRID, build_cnn_zoo, checkpoint_row, run_plan
from weightspace.zoo.modelzoos import import_model_zoo

TINY = dict(n_seeds=3, activations=["tanh", "relu"], lrs=[1e-3, 3e-3], epochs=2, chunk=4, batch_size=64)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    with torch_threads(1):
        return build_cnn_zoo(tmp_path_factory.mktemp("cnn") / "zoo", executor="inline", progress=False, **TINY)


def test_one_row_per_run_and_epoch_split_by_run(tiny_zoo):
    df = tiny_zoo.table
    assert len(df) == 12 * 3 and df.run_id.nunique() == 12
    assert sorted(df.epoch.unique()) == [0, 1, 2]
    assert (df.groupby("run_id").split.nunique() == 1).all()          # never split by checkpoint
    runs = df.groupby("run_id").split.first().value_counts()
    assert (runs["train"], runs["val"], runs["test"]) == (8, 2, 2)    # round(0.7 * 12), round(0.15 * 12), rest
    assert set(df.groupby(["activation", "lr"]).run_id.nunique()) == {3}
    assert ((df.ggap - (df.train_acc - df.test_acc)).abs() < 1e-12).all()
    assert (df.loss == df.train_loss).all() and not df.diverged.any()
    last = df[df.epoch == 2]
    assert last.test_acc.mean() > df[df.epoch == 0].test_acc.mean() + 0.2
    first = df[df.epoch == 0].iloc[0]
    sd = init_params(dict(activation=first.activation), [first.seed], first.init)[0]
    assert all(torch.equal(v, tiny_zoo.load(first.model_id)[k]) for k, v in sd.items())   # epoch 0 = the init


def test_zoo_model_rebuilds_each_cnn_and_its_metrics(tiny_zoo):
    df = tiny_zoo.table
    for act in ("tanh", "relu"):
        r = df[(df.activation == act) & (df.epoch == 2)].iloc[0]
        model = tiny_zoo.model(r.model_id)
        assert type(model.act1).__name__ == {"tanh": "Tanh", "relu": "ReLU"}[act]
        acc = evaluate_cnns([tiny_zoo.load(r.model_id)], "test", dict(activation=act), device="cpu")
        assert float(acc[0]) == pytest.approx(r.test_acc, abs=1e-6)
        from weightspace.data import digits

        x, y = digits().test.x, digits().test.y
        with torch.no_grad():
            assert (model(x).argmax(1) == y).float().mean().item() == pytest.approx(r.test_acc, abs=1e-6)
    assert list(tiny_zoo.manifest["layers"]) == list(make_cnn().state_dict())


def test_resumed_build_adopts_and_completes(tiny_zoo):
    """A re-run of a complete build writes nothing; the plan is deterministic."""
    again = build_cnn_zoo(tiny_zoo.path, executor="inline", progress=False, **TINY)
    assert again.ids == tiny_zoo.ids
    assert run_plan(TINY) == run_plan(dict(TINY))


def test_build_killed_mid_way_reopens_and_resumes_to_the_same_zoo(tiny_zoo, tmp_path):
    """SIGKILL the build at a write point in the middle of the checkpoints (tests/faults.py), then reopen it
    and resume: the table and every file equal the clean build's."""
    path = tmp_path / "killed"
    child = ("import sys, json, torch; sys.path.insert(0, sys.argv[1]); torch.set_num_threads(1)\n"
             "from faults import write_points\nfrom weightspace.zoo.cnn_zoo import build_cnn_zoo\n"
             "with write_points(int(sys.argv[3]), action='kill'):\n"
             "    build_cnn_zoo(sys.argv[2], executor='inline', progress=False, **json.loads(sys.argv[4]))\n"
             "sys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    at = 3 * 20 + 2          # the replace point of the 21st checkpoint file: half-way through the first job's writes
    res = subprocess.run([sys.executable, "-c", child, str(Path(__file__).parent), str(path), str(at),
                          json.dumps(TINY)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stderr[-2000:]
    opened = Zoo.open(path)                              # a killed build leaves a zoo that opens
    assert len(opened) < len(tiny_zoo)
    assert len(list((path / "models").glob("*.safetensors"))) >= 10      # whole checkpoints, not in the table yet
    zoo = build_cnn_zoo(path, executor="inline", progress=False, **TINY)
    assert zoo.ids == tiny_zoo.ids
    assert [r["sha256"] for r in zoo.rows] == [r["sha256"] for r in tiny_zoo.rows]
    assert not list(path.rglob(".*.tmp")) and zoo.verify() == []


def test_seed_zoo_and_grid_params():
    seed = run_plan(dict(n_seeds=20, epochs=1))
    assert len(seed) == 20 and {r["activation"] for r in seed} == {"tanh"} and len({r["seed"] for r in seed}) == 20
    grid = run_plan(dict(n_seeds=2, epochs=1, **GRID))
    assert len(grid) == 2 * 3 * 3 * 2
    assert {(r["activation"], r["init"], r["lr"]) for r in grid} == {
        (a, i, lr) for a in GRID["activations"] for i in GRID["inits"] for lr in GRID["lrs"]}
    other = run_plan(dict(n_seeds=20, epochs=1, styles=["inverted"], seed=1))
    assert other[0]["task"] == "inverted" and not {r["seed"] for r in seed} & {r["seed"] for r in other}


def test_diverged_checkpoint_row_is_honest():
    row = checkpoint_row({"run_id": "r0000", "split": "train"},
                         {"epoch": 3, "train_acc": None, "test_acc": None, "train_loss": None, "diverged": True})
    assert row["diverged"] and row["ggap"] is None and row["loss"] is None


@pytest.mark.parametrize("bad, match", [
    (dict(n_seeds=0), "n_seeds"), (dict(lrs=[]), "lrs"), (dict(lrs=[1e-3, -1.0]), "lrs"),
    (dict(activations=["swish"]), "activations"), (dict(inits=["ones"]), "inits"),
    (dict(split=[0.5, 0.5, 0.5]), "split"), (dict(n_seeds=2, activations=["tanh"], lrs=[1e-3]), "empty train or val"),
    (dict(cnn={"activation": "relu"}), "cnn="), (dict(cnn={"channels": []}), "channels"),
    (dict(styles=["blurry"]), "styles")])
def test_bad_params_fail_before_writing(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        build_cnn_zoo(tmp_path / "z", executor="inline", progress=False, **{**TINY, **bad})
    assert not (tmp_path / "z").exists()
    with pytest.raises(TypeError, match="unknown parameter"):
        build_cnn_zoo(tmp_path / "z", n_sedes=3)


def test_zoo_model_uses_a_fixed_registry_never_an_import_path(tmp_path):
    sd = init_params(None, [0])[0]
    for name, match in (("os.system", "unknown weightspace architecture"),
                        ("weightspace.nets.cnn.make_cnn", "unknown weightspace architecture")):
        zoo = Zoo.create(tmp_path / name, kind="t", builder="tests", params={},
                         architecture={"library": "weightspace", "model_name": name, "kwargs": {}})
        zoo.add("a", sd)
        with pytest.raises(ZooError, match=match):
            zoo.model("a")
    zoo = Zoo.create(tmp_path / "badkw", kind="t", builder="tests", params={},
                     architecture={"library": "weightspace", "model_name": "cnn", "kwargs": {"activation": "swish"}})
    zoo.add("a", sd)
    with pytest.raises(ZooError, match="cannot be built"):
        zoo.model("a")
    zoo = Zoo.create(tmp_path / "lib", kind="t", builder="tests", params={},
                     architecture={"library": "importlib", "model_name": "cnn"})
    zoo.add("a", sd)
    with pytest.raises(ZooError, match="unknown architecture library"):
        zoo.model("a")


def test_zoo_model_timm_path_unchanged(tmp_path):
    from weightspace.nets.vit import make_vit, timm_architecture

    vit = make_vit(4, embed_dim=8, depth=1, num_heads=2)
    zoo = Zoo.create(tmp_path / "vit", kind="t", builder="tests", params={},
                     architecture={**timm_architecture(embed_dim=8, depth=1, num_heads=2),
                                   "num_classes_column": "num_classes"})
    zoo.add("v", vit.state_dict(), num_classes=4)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(zoo.model("v")(x), vit.eval()(x), atol=1e-5)


# ------------------------------------------------------------------------------------------ Model Zoos importer

def _write_model_zoos(root: Path, n_models=5, epochs=3, nan_at=None):
    """Look-alike Model Zoos files: per-model folders with params.json, result.json (training_iteration 1..: the
    first Ray Tune step reports the untrained model) and checkpoint_<e:06d>/checkpoints state dicts."""
    sds = {}
    for m in range(n_models):
        d = root / f"NN_tune_trainable_{m:05d}_{m}_seed={m + 1}"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"model::type": "CNN", "model::nlin": "tanh", "seed": m + 1,
                                                   "model::init_type": "uniform", "optim::lr": 3e-4,
                                                   "training::epochs_train": epochs, "nested": {"x": 1}}))
        lines = []
        for e in range(epochs + 1):
            sd = {f"module_list.{i}.{w}": torch.randn(3, 2, generator=torch.Generator().manual_seed(100 * m + e))
                  for i in (0, 3) for w in ("weight",)} | {"module_list.0.bias": torch.full((3,), float(e))}
            if nan_at == (m, e):
                sd["module_list.3.weight"][0, 0] = float("nan")
            name = f"checkpoint_{e:06d}" if m % 2 else f"checkpoint_{e}"
            (d / name).mkdir()
            torch.save(sd, d / name / "checkpoints")
            sds[(m, e)] = sd
            lines.append(json.dumps({"train_acc": 0.1 + 0.2 * e, "test_acc": 0.1 + 0.15 * e, "val_acc": 0.1 + 0.1 * e,
                                     "train_loss": 2.3 - 0.5 * e, "training_iteration": e + 1}))
        # result lines by training_iteration: checkpoint e is the line with training_iteration e
        (d / "result.json").write_text("\n".join(lines) + "\n")
    return sds


def test_import_model_zoos_layout(tmp_path):
    sds = _write_model_zoos(tmp_path / "src", n_models=8, epochs=3, nan_at=(2, 3))
    zoo = import_model_zoo(tmp_path / "src", tmp_path / "dst", progress=False)
    df = zoo.table
    assert len(df) == 8 * 4 and df.run_id.nunique() == 8
    assert (df.groupby("run_id").split.nunique() == 1).all()
    assert df.groupby("run_id").split.first().value_counts().to_dict() == {"train": 5, "val": 1, "test": 2}   # as SANE: int(0.7 * 8), int(0.15 * 8), rest
    for r in zoo.rows:
        m = int(r["source"].split("_")[3])
        assert all(torch.allclose(v, sds[(m, r["epoch"])][k], rtol=0, atol=0, equal_nan=True)
                   for k, v in zoo.load(r["model_id"]).items())
        e = r["epoch"]
        if e >= 1:     # the line with training_iteration == e
            assert r["train_acc"] == pytest.approx(0.1 + 0.2 * (e - 1)) and r["training_iteration"] == e
            assert r["ggap"] == pytest.approx(r["train_acc"] - r["test_acc"])
        else:
            assert r["train_acc"] is None and r["ggap"] is None
        assert r["activation"] == "tanh" and r["seed"] == m + 1 and "nested" not in r["config"]
        assert r["diverged"] == ((m, e) == (2, 3))
    again = import_model_zoo(tmp_path / "src", tmp_path / "dst", progress=False)      # resumable: nothing redone
    assert again.ids == zoo.ids
    some = import_model_zoo(tmp_path / "src", tmp_path / "some", epochs=[1, 3], max_models=3, progress=False)
    assert len(some) == 6 and set(some.table.epoch) == {1, 3}


def test_import_refuses_pickles_and_bad_layouts(tmp_path):
    _write_model_zoos(tmp_path / "src", n_models=2, epochs=1)
    bad = next((tmp_path / "src").iterdir()) / "checkpoint_1" / "checkpoints"
    if not bad.exists():
        bad = next((tmp_path / "src").iterdir()) / "checkpoint_000001" / "checkpoints"
    torch.save({"w": torch.zeros(2), "f": math.sqrt}, bad)          # a function: only unpickled by a full load
    with pytest.raises(ZooError, match="weights-only"):
        import_model_zoo(tmp_path / "src", tmp_path / "dst", progress=False)
    torch.save([torch.zeros(2)], bad)
    with pytest.raises(ZooError, match="expected a state dict"):
        import_model_zoo(tmp_path / "src", tmp_path / "dst2", progress=False)
    bad.unlink()
    with pytest.raises(ZooError, match="'checkpoints'"):
        import_model_zoo(tmp_path / "src", tmp_path / "dst3", progress=False)
    with pytest.raises(ZooError, match="no model folders"):
        import_model_zoo(tmp_path / "src" / next((tmp_path / "src").iterdir()).name, tmp_path / "dst4")
    d = tmp_path / "src2" / "m0"
    d.mkdir(parents=True)
    (d / "params.json").write_text("{}")
    with pytest.raises(ZooError, match="result.json: missing"):
        import_model_zoo(tmp_path / "src2", tmp_path / "dst5", progress=False)
    (d / "result.json").write_text("{not json\n")
    with pytest.raises(ZooError, match=r"result.json, line 1"):
        import_model_zoo(tmp_path / "src2", tmp_path / "dst6", progress=False)
    with pytest.raises(ZooError, match="not a folder"):
        import_model_zoo(tmp_path / "nowhere", tmp_path / "dst7")
