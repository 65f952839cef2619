"""weightspace.probex.scaling on a tiny zoo: ranks, subsets and schedules by hand, the validation-based
choice of grid point and layer, records equal to fits done by hand, and clear errors."""
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_TREES

from weightspace.probex import LayerData, fit
from weightspace.probex import scaling as sc
from weightspace.runtime import torch_threads
from weightspace.zoo.model_trees import build_model_trees

L1, L2 = "blocks.1.attn.proj.weight", "blocks.0.mlp.fc2.weight"


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("probex_scaling") / "trees"
    zoo = build_model_trees(path, executor="inline", progress=False,
                            **{**TINY_TREES, "n_trees": 1, "n_per_tree": 16, "split": [0.5, 0.25, 0.25]})
    return LayerData(zoo)


def test_scaled_ranks_by_hand():
    assert sc.scaled_ranks((768, 768), 100) == dict(n_probes=128, proj_dim=128, rep_dim=100)
    # fc2 of the width-32 ViT is [32 out, 128 in]: probes on the input side
    assert sc.scaled_ranks((32, 128), 40) == dict(n_probes=21, proj_dim=5, rep_dim=40)
    assert sc.scaled_ranks((4, 32), 40) == dict(n_probes=5, proj_dim=4, rep_dim=40)
    assert sc.scaled_ranks((2, 3), 10, min_rank=4) == dict(n_probes=3, proj_dim=2, rep_dim=10)
    assert sc.scaled_ranks((64, 64), 40, rep_dim=64)["rep_dim"] == 64
    with pytest.raises(ValueError, match="fraction"):
        sc.scaled_ranks((8, 8), 4, fraction=0)


def test_param_counts_equal_the_built_models(data):
    X, Y = data.split(L2, 0, "train")
    r = sc.scaled_ranks(X.shape, Y.shape[1])
    f = fit("probex", *(data.split(L2, 0, s) for s in sc.SPLITS), epochs=1, **r)
    d = fit("dense", *(data.split(L2, 0, s) for s in sc.SPLITS), epochs=1)
    assert f.n_params == sc.probex_param_count(X.shape, Y.shape[1], r)
    assert d.n_params == sc.dense_params(X.shape, Y.shape[1]) == 32 * 128 * 40 + 40


def test_nested_subsets():
    a = sc.nested_subsets(50, [5, 10, 30], seed=0)
    assert [len(s) for s in a] == [5, 10, 30]
    assert set(a[0]) <= set(a[1]) <= set(a[2]) and len(set(a[2])) == 30 and a[2].max() < 50
    b = sc.nested_subsets(50, [5, 10, 30], seed=1)
    assert not np.array_equal(a[2], b[2])
    assert all(np.array_equal(x, y) for x, y in zip(a, sc.nested_subsets(50, [5, 10, 30], seed=0)))
    with pytest.raises(ValueError, match="exceeds"):
        sc.nested_subsets(20, [5, 30], 0)
    with pytest.raises(ValueError, match="increasing"):
        sc.nested_subsets(20, [10, 5], 0)


def test_schedule_reaches_the_step_budget():
    s = sc.schedule(600, 32, 3000, n_evals=50)
    assert s == dict(epochs=158, eval_every=3, steps_per_epoch=19)     # ceil(600/32) = 19; 19 * 158 >= 3000
    s = sc.schedule(75, 32, 3000, n_evals=50)
    assert s["steps_per_epoch"] == 3 and s["epochs"] == 1000 and s["eval_every"] == 20
    assert sc.schedule(10, 32, 1, n_evals=50) == dict(epochs=1, eval_every=1, steps_per_epoch=1)


def test_grid_points():
    assert sc.grid_points({"lr": [1, 2], "weight_decay": [3]}) == [dict(lr=1, weight_decay=3),
                                                                   dict(lr=2, weight_decay=3)]
    with pytest.raises(ValueError, match="unknown grid"):
        sc.grid_points({"epochs": [1]})


def test_tuned_comparison_records_equal_fits_by_hand_and_choose_on_validation(data):
    splits = tuple(data.split(L2, 0, s) for s in sc.SPLITS)
    grid = {"lr": [1e-3, 1e-2], "weight_decay": [1e-5]}
    every, chosen = sc.tuned_comparison([dict(splits=splits, seed=3, name="x")], grid, steps=6, n_evals=2,
                                        ranks="scaled")
    assert len(every) == 4 and len(chosen) == 2
    row = every[(every.kind == "probex") & (every.lr == 1e-2)].iloc[0]
    sched = sc.schedule(len(splits[0][0]), 32, 6, 2)
    by_hand = fit("probex", *splits, seed=3, lr=1e-2, epochs=sched["epochs"], eval_every=sched["eval_every"],
                  **sc.scaled_ranks(splits[0][0].shape, 40))
    assert (row.val_acc, row.test_acc, row.train_acc, row.n_params, row.best_epoch) == \
        (by_hand.val_acc, by_hand.test_acc, by_hand.train_acc, by_hand.n_params, by_hand.best_epoch)
    assert row.best_step == (by_hand.best_epoch + 1) * sched["steps_per_epoch"]
    assert row["name"] == "x" and row.n_probes == 21 and row.rep_dim == 40
    for kind in sc.KINDS:
        e = every[every.kind == kind]
        c = chosen[chosen.kind == kind].iloc[0]
        assert c.val_acc == e.val_acc.max() and c.grid == e.loc[e.val_acc.idxmax(), "grid"]


def test_parallel_fits_equal_serial(data):
    splits = tuple(data.split(L1, 0, s) for s in sc.SPLITS)
    cfg = dict(epochs=2, eval_every=1, n_probes=4, proj_dim=4, rep_dim=8)
    tasks = [(k, splits, 0, cfg) for k in sc.KINDS]
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    serial = drop(sc.run_fits(tasks))
    assert drop(sc.run_fits(tasks, workers=2)) == serial and serial[0]["n_params"] != serial[1]["n_params"]


def test_learning_curve_cells_are_nested_and_keep_val_and_test(data):
    cells = sc.learning_curve_cells(data, 0, L1, [2, 4, 8], seeds=[0, 1])
    assert [(c["seed"], c["size"]) for c in cells] == [(0, 2), (0, 4), (0, 8), (1, 2), (1, 4), (1, 8)]
    Xtr = data.split(L1, 0, "train")[0]
    rows = lambda X: {tuple(x.flatten().tolist()[:6]) for x in X}
    assert rows(cells[0]["splits"][0][0]) <= rows(cells[1]["splits"][0][0]) <= rows(Xtr)
    assert torch.equal(cells[4]["splits"][2][0], data.split(L1, 0, "test")[0])


def test_choose_layer_and_summary(data):
    layer, chosen = sc.choose_layer(data, 0, [L1, L2], steps=4)
    means = chosen.groupby("layer").val_acc.mean()
    assert layer == means.idxmax()
    fake = pd.DataFrame([dict(size=s, seed=seed, kind=k, test_acc=acc, val_acc=0.5, n_params=1, best_step=1)
                         for s, seed, k, acc in [(10, 0, "probex", 0.6), (10, 0, "dense", 0.7),
                                                 (10, 1, "probex", 0.8), (10, 1, "dense", 0.7)]])
    s = sc.summarize(fake).loc[10]
    assert s.mean_probex == pytest.approx(0.7) and s.mean_dense == pytest.approx(0.7)
    assert s.gap == pytest.approx(0.0) and s.gap_std == pytest.approx(np.std([-0.1, 0.1], ddof=1))
    assert s.std_dense == 0.0 and s.n_probex == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="no cells"):
        sc.tuned_comparison([], {"lr": [1e-3]})
    with pytest.raises(ValueError, match="kind"):
        sc.tuned_comparison([dict(splits=None)], {"lr": [1e-3]}, kinds=("mlp",))


def test_same_models_pairs_the_fine_tunes_of_two_zoos(data, tmp_path):
    from weightspace.zoo.model_trees import build_like

    small = LayerData(build_like(tmp_path / "small", data.zoo, executor="inline", progress=False,
                                 n_per_tree=8, split=[0.25, 0.25, 0.5]))
    pair = sc.same_models(data, small)
    assert pair.ids == small.ids and torch.equal(pair.Y, small.Y)
    assert list(pair.split_of) == list(small.split_of) != list(LayerData(data.zoo, ids=small.ids).split_of)
    assert torch.equal(pair.X(L1), data.X(L1)[[data.ids.index(i) for i in small.ids]])
    other = LayerData(build_like(tmp_path / "other", data.zoo, executor="inline", progress=False,
                                 n_per_tree=8, seed=5))
    with pytest.raises(ValueError, match="different classes"):
        sc.same_models(data, other)
    with pytest.raises(ValueError, match="lacks"):
        sc.same_models(small, data)
    cells = sc.layer_cells({"a": data, "b": pair}, [L1], seeds=[0, 1])
    assert [(c["data"], c["seed"]) for c in cells] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert torch.equal(cells[2]["splits"][1][0], pair.split(L1, 0, "val")[0])


def test_learning_curves_tune_the_largest_size_and_reuse_its_choice(data):
    grid = {"lr": [1e-3, 3e-2], "weight_decay": [1e-5]}
    opts = dict(steps=6, n_evals=3, ranks="scaled")
    every, chosen = sc.learning_curves(data, 0, L1, [2, 8], [0, 1], grid, tune_all_sizes=False, **opts)
    big = chosen[chosen["size"] == 8]
    assert len(every[every["size"] == 8]) == 2 * 2 * 2 and len(every[every["size"] == 2]) == 2 * 2
    for kind in sc.KINDS:
        g = big[big.kind == kind].grid
        mode = int(min(g.value_counts().index[g.value_counts() == g.value_counts().max()]))
        small = chosen[(chosen["size"] == 2) & (chosen.kind == kind)]
        assert (small.grid == mode).all() and (small.lr == grid["lr"][mode]).all()
    full_every, full = sc.learning_curves(data, 0, L1, [2, 8], [0, 1], grid, **opts)
    assert len(full_every) == 2 * 2 * 2 * 2
    key = ["size", "seed", "kind", "lr"]
    a = full_every.set_index(key).test_acc
    b = every.set_index(key).test_acc
    assert all(a[k] == b[k] for k in b.index)          # the same fits, whichever protocol ran them


def test_most_chosen():
    grid = {"lr": [1, 2, 3]}
    chosen = pd.DataFrame(dict(kind=["probex"] * 4 + ["dense"], grid=[2, 1, 2, 1, 0]))
    assert sc.most_chosen(chosen, "probex", grid) == (1, {"lr": [2]})     # a tie: the earlier point
    assert sc.most_chosen(chosen, "dense", grid) == (0, {"lr": [1]})
    with pytest.raises(ValueError, match="no chosen"):
        sc.most_chosen(chosen[chosen.kind == "dense"], "probex", grid)


def test_fit_workers_exit_when_their_notebook_is_killed(tmp_path):
    """The process pool that runs the fits (kept for a session) does not outlive a killed kernel."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_jobs import _gone, kill_and_expect_gone

    driver = tmp_path / "driver.py"
    driver.write_text("import os, time\n"
                      "from weightspace.probex import scaling\n"
                      "if __name__ == '__main__':\n"
                      "    print(scaling._pool(2).submit(os.getpid).result(), flush=True)\n"
                      "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    os.kill(worker, signal.SIGINT)                               # Ctrl-C is the kernel's, not the worker's
    time.sleep(0.5)
    assert not _gone(worker)
    kill_and_expect_gone(proc, worker, "a fit worker")
