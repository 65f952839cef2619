"""The job runner: levels, executor parity, resume after a kill, damaged files redone."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_TREES, toy_state_dict

from weightspace.zoo import Job, Zoo, ZooError, run_jobs
from weightspace.zoo.format import TABLE
from weightspace.zoo.jobs import job_levels
from weightspace.zoo.model_trees import build_model_trees


def _table(zoo_path) -> str:
    return (Path(zoo_path) / TABLE).read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny trees built in this process, one job after another."""
    path = tmp_path_factory.mktemp("ref") / "zoo"
    build_model_trees(path, executor="inline", progress=False, **TINY_TREES)
    return path


def test_builder_output(reference):
    zoo = Zoo.open(reference, kind="vit-model-trees")
    n = TINY_TREES["n_trees"] * (TINY_TREES["n_per_tree"] + 1)
    assert len(zoo) == n
    assert zoo.select(depth=0) == ["t0-root", "t1-root"]
    ft = zoo.row("t1-0003")
    assert ft["parent_id"] == "t1-root" and ft["tree_id"] == 1 and ft["tree_name"] == "digits"
    assert len(ft["classes"]) == 20 and ft["split"] in ("train", "val", "test")
    assert ft["schedule"] in ("constant", "cosine", "linear")
    assert "blocks.1.attn.proj.weight" in zoo.manifest["layers"]
    zoo.verify()
    # the label contract: the manifest says what `classes` means; multi-hot rows match the table
    assert zoo.class_names[ft["classes"][0]].startswith(("a ", "an ")) and len(zoo.class_names) == 40
    assert zoo.labelled() == zoo.select(depth=1) and zoo.multi_hot(["t1-0003"])[0].nonzero().flatten().tolist() == ft["classes"]
    assert zoo.parents(["t1-0003", "t1-root"]) == {"t1-0003": "t1-root", "t1-root": None}
    # a plain timm.create_model with the recorded arguments loads every file strictly, and so does Zoo.model;
    # the stored test accuracy is that module's on the test images of its own classes
    import timm
    from safetensors.torch import load_file

    from weightspace.data import styled_digits

    arch = zoo.manifest["architecture"]
    m = timm.create_model(arch["model_name"], pretrained=False, num_classes=ft["num_classes"], **arch["kwargs"])
    m.load_state_dict(load_file(zoo.path / ft["file"]), strict=True)
    own = styled_digits().test.of_classes(ft["classes"])
    with torch.no_grad():
        acc = float((m.eval()(own.x).argmax(1) == own.y).float().mean())
    assert ft["test_acc"] == pytest.approx(acc, abs=1e-5)
    assert torch.equal(zoo.model("t1-0003").state_dict()["head.weight"], m.state_dict()["head.weight"])
    assert zoo.model("t1-root").head.out_features == 10                  # the digits root's head


def test_levels_order_and_bad_dags(tmp_path):
    zoo = Zoo.create(tmp_path / "z", kind="toy", builder="t", params={})
    jobs = [Job(_toy_job, {"ids": ["c"], "parent": "b"}, ("c",), parents=("b",), name="grandchild"),
            Job(_toy_job, {"ids": ["a"], "parent": None}, ("a",), name="root"),
            Job(_toy_job, {"ids": ["b"], "parent": "a"}, ("b",), parents=("a",), name="child")]
    assert [[j.name for j in lvl] for lvl in job_levels(zoo, jobs)] == [["root"], ["child"], ["grandchild"]]
    run_jobs(zoo, jobs, executor="inline", progress=False)
    assert Zoo.open(zoo.path).ids == ["a", "b", "c"]
    with pytest.raises(ZooError, match="duplicate model id 'x'"):
        job_levels(zoo, [Job(_toy_job, {}, ("x",)), Job(_toy_job, {}, ("x",))])
    with pytest.raises(ZooError, match="starts from parent 'nobody', which is neither in the zoo nor made"):
        job_levels(zoo, [Job(_toy_job, {}, ("y",), parents=("nobody",))])


def _toy_job(spec, writer):
    for i in spec["ids"]:
        writer.write(i, toy_state_dict(len(i)), dict(parent_id=spec["parent"], tree_id=0, depth=0, split="train"))


def _failing_job(spec, writer):
    raise ValueError("boom")


def test_failing_job_names_itself_and_keeps_finished_work(tmp_path):
    zoo = Zoo.create(tmp_path / "z", kind="toy", builder="t", params={})
    jobs = [Job(_toy_job, {"ids": ["a"], "parent": None}, ("a",), name="fine"),
            Job(_failing_job, {}, ("b",), parents=("a",), name="the bad one")]
    with pytest.raises(RuntimeError, match="job 'the bad one' failed: ValueError: boom"):
        run_jobs(zoo, jobs, executor="inline", progress=False)
    assert Zoo.open(zoo.path).ids == ["a"]


@pytest.mark.parametrize("executor,options", [
    ("local", {}),
    ("dask", {}),
    ("slurm", {"cluster": "local"}),
])
def test_executor_parity(reference, tmp_path, executor, options):
    """A process pool, a Dask LocalCluster and submitit's local executor give the inline zoo, bit for bit."""
    if executor == "slurm":
        options = {**options, "folder": tmp_path / "submitit"}
    path = tmp_path / "zoo"
    build_model_trees(path, executor=executor, workers=2, progress=False, **TINY_TREES, **options) \
        if executor != "slurm" else _build_submitit(path, options)
    assert _table(path) == _table(reference)


def _build_submitit(path, options):
    from weightspace.zoo.model_trees import DEFAULTS, KIND, plan_jobs

    p = {**DEFAULTS, **TINY_TREES}
    zoo = Zoo.create(path, kind=KIND, builder="weightspace.zoo.model_trees.build_model_trees", params=p)
    run_jobs(zoo, plan_jobs(p), executor="slurm", progress=False, **options)


BUILD = """
import sys
from weightspace.zoo.model_trees import build_model_trees
build_model_trees(sys.argv[1], executor="inline", progress=False, **{params})
"""


def test_resume_after_kill(tmp_path):
    """Kill a build mid-way; the re-run finishes, redoes nothing already written, and equals the reference."""
    params = {**TINY_TREES, "steps": [60, 80]}                     # slow enough to be killed mid-way
    build_model_trees(tmp_path / "reference", executor="inline", progress=False, **params)
    path = tmp_path / "zoo"
    script = BUILD.format(params=repr(params))
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)])
    deadline = time.time() + 120
    while time.time() < deadline:
        if (path / TABLE).exists() and len(_table(path).splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows_before = len(_table(path).splitlines())
    assert 3 <= rows_before < 14, "the kill should land mid-build"
    written = {f.name: (f.stat().st_mtime_ns, f.stat().st_ino) for f in (path / "models").glob("*.safetensors")}
    leftovers = list((path / "models").glob(".*.tmp"))           # a write cut short: never a model file
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    assert _table(path) == _table(tmp_path / "reference")
    for name, stamp in written.items():
        f = path / "models" / name
        assert (f.stat().st_mtime_ns, f.stat().st_ino) == stamp, f"{name} was rewritten"
    assert all(not f.name.endswith(".safetensors") for f in leftovers)
    assert not list(path.rglob(".*.tmp")), "the re-run removes the temporary files of the killed writer"


def test_orphan_files_are_adopted_and_damaged_files_redone(reference, tmp_path):
    import shutil

    path = tmp_path / "zoo"
    shutil.copytree(reference, path)
    lines = _table(path).splitlines()
    orphan = json.loads(lines[-1])["model_id"]                     # as if killed before recording it
    (path / TABLE).write_text("\n".join(lines[:-1]) + "\n")
    stamp = (path / "models" / f"{orphan}.safetensors").stat().st_mtime_ns
    damaged = path / "models" / "t0-0001.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    build_model_trees(path, executor="inline", progress=False, **TINY_TREES)
    assert (path / "models" / f"{orphan}.safetensors").stat().st_mtime_ns == stamp
    assert _table(path) == _table(reference)
    assert len(list((path / ".quarantine").iterdir())) == 1        # the damaged file was kept aside
    Zoo.open(path).verify()


def test_unknown_builder_parameter(tmp_path):
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['n_per_trees'\]"):
        build_model_trees(tmp_path / "z", n_per_trees=3)


def test_unknown_executor(tmp_path):
    zoo = Zoo.create(tmp_path / "z", kind="toy", builder="t", params={})
    with pytest.raises(ValueError, match="unknown executor 'gpu-farm'"):
        run_jobs(zoo, [Job(_toy_job, {"ids": ["a"], "parent": None}, ("a",))], executor="gpu-farm",
                 progress=False)
    assert torch.get_num_threads() >= 1


def _salted_job(spec, writer):
    for i in spec["ids"]:
        writer.write(i, toy_state_dict(len(i) + spec.get("salt", 0)),
                     dict(parent_id=spec["parent"], tree_id=0, depth=0, split="train"))


def _chain(salt=0, fail_root=False):
    """a -> b -> c, one job each."""
    root = _failing_job if fail_root else _salted_job
    return [Job(root, {"ids": ["a"], "parent": None, "salt": salt}, ("a",), name="root"),
            Job(_salted_job, {"ids": ["b"], "parent": "a"}, ("b",), parents=("a",), name="child"),
            Job(_salted_job, {"ids": ["c"], "parent": "b"}, ("c",), parents=("b",), name="grandchild")]


def _stamps(path, ids):
    return {i: (path / "models" / f"{i}.safetensors").stat().st_ino for i in ids}


def test_resume_that_dies_before_a_damaged_parent_is_rebuilt_leaves_a_zoo_that_opens(tmp_path):
    """A damaged parent is redone; if the run dies first the zoo still opens, and the next run rebuilds the
    parent (same bytes) and re-adopts its intact descendants instead of retraining them."""
    zoo = Zoo.create(tmp_path / "z", kind="toy", builder="t", params={})
    zoo = run_jobs(zoo, _chain(), executor="inline", progress=False)
    table = _table(zoo.path)
    assert zoo.row("b")["parent_sha256"] == zoo.row("a")["sha256"]         # recorded by the writer
    kept = _stamps(zoo.path, ["b", "c"])
    damaged = zoo.model_path("a")
    damaged.write_bytes(damaged.read_bytes()[:50])
    with pytest.raises(RuntimeError, match="job 'root' failed"):
        run_jobs(Zoo.open(zoo.path), _chain(fail_root=True), executor="inline", progress=False)
    half = Zoo.open(zoo.path)                                  # opens: no row names a missing parent
    assert half.ids == [] and half.set_aside_ids == ["b", "c"]
    run_jobs(half, _chain(), executor="inline", progress=False)
    assert _table(zoo.path) == table and _stamps(zoo.path, ["b", "c"]) == kept
    assert Zoo.open(zoo.path).set_aside_ids == [] and not Zoo.open(zoo.path).verify(raise_errors=False)


def test_descendants_of_a_parent_rebuilt_with_other_bytes_are_retrained(tmp_path):
    zoo = Zoo.create(tmp_path / "z", kind="toy", builder="t", params={})
    zoo = run_jobs(zoo, _chain(), executor="inline", progress=False)
    old = {i: zoo.row(i)["sha256"] for i in "abc"}
    damaged = zoo.model_path("a")
    damaged.write_bytes(damaged.read_bytes()[:50])
    zoo = run_jobs(Zoo.open(zoo.path), _chain(salt=7), executor="inline", progress=False)
    assert zoo.ids == ["a", "b", "c"] and all(zoo.row(i)["sha256"] != old[i] for i in "abc")
    assert zoo.row("c")["parent_sha256"] == zoo.row("b")["sha256"]
    assert len(list((zoo.path / ".quarantine").iterdir())) == 3      # damaged a, stale b and c, kept aside
    zoo.verify()


def test_builder_repairs_a_table_left_by_an_interrupted_resume(reference, tmp_path):
    """The table an older weightspace left (a root's row gone, its fine-tunes' rows kept) refuses to open;
    the builder with repair=True rebuilds the root and re-adopts every fine-tune without retraining."""
    import shutil

    path = tmp_path / "zoo"
    shutil.copytree(reference, path)
    rows = [json.loads(line) for line in _table(path).splitlines()]
    (path / TABLE).write_text("".join(json.dumps(r) + "\n" for r in rows if r["model_id"] != "t1-root"))
    (path / "models" / "t1-root.safetensors").unlink()
    kept = _stamps(path, [r["model_id"] for r in rows if r["parent_id"] == "t1-root"])
    with pytest.raises(ZooError, match="names parent 't1-root', which is not in the zoo.*repair=True"):
        build_model_trees(path, executor="inline", progress=False, **TINY_TREES)
    build_model_trees(path, executor="inline", progress=False, repair=True, **TINY_TREES)
    assert _table(path) == _table(reference) and _stamps(path, list(kept)) == kept

SLOW_JOB = """
import os, time
import torch

def slow_job(spec, writer):
    with open(spec["pid_file"], "w") as f:
        f.write(str(os.getpid()))
    deadline = time.time() + spec["seconds"]
    while time.time() < deadline:
        time.sleep(0.05)
    writer.write("a", {"w": torch.ones(3)}, {"depth": 0})
"""

DRIVER = """
import sys
sys.path.insert(0, sys.argv[2])
from slowjob import slow_job
from weightspace.zoo import Job, Zoo, run_jobs

if __name__ == "__main__":
    zoo = Zoo.create(sys.argv[1], kind="toy", builder="t", params={})
    run_jobs(zoo, [Job(slow_job, {"pid_file": sys.argv[3], "seconds": 120}, ("a",))], executor="local",
             workers=1, progress=False)
"""


def _gone(pid: int) -> bool:
    try:
        import psutil
    except ImportError:
        stat = Path(f"/proc/{pid}/stat")
        return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


def kill_and_expect_gone(proc, worker: int, what: str, seconds: float = 5) -> None:
    """SIGKILL the driver `proc`; its `worker` process must be gone within `seconds` (killed here either way)."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + seconds
    while time.time() < deadline and not _gone(worker):
        time.sleep(0.1)
    alive = not _gone(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)                              # do not leave it running either way
    assert not alive, f"{what} outlived its killed driver"


def test_workers_exit_when_their_driver_is_killed(tmp_path):
    """SIGKILL the driver while a job runs: its pool workers exit within seconds and the zoo reopens."""
    (tmp_path / "slowjob.py").write_text(SLOW_JOB)
    (tmp_path / "driver.py").write_text(DRIVER)
    path, pid_file = tmp_path / "zoo", tmp_path / "worker.pid"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(path), str(tmp_path),
                             str(pid_file)])
    deadline = time.time() + 120
    while time.time() < deadline and not (pid_file.exists() and pid_file.read_text()):
        assert proc.poll() is None, "the driver ended before its job started"
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    assert not _gone(worker)
    kill_and_expect_gone(proc, worker, "a pool worker")
    assert not (path / "models" / "a.safetensors").exists()         # it wrote nothing after the driver died
    zoo = Zoo.open(path)
    assert len(zoo) == 0 and zoo.verify() == []
    run_jobs(Zoo.create(path, kind="toy", builder="t", params={}),
             [Job(_slow_job_inline, {"pid_file": str(pid_file), "seconds": 0}, ("a",))], executor="inline",
             progress=False)
    assert Zoo.open(path).ids == ["a"]


def _slow_job_inline(spec, writer):
    writer.write("a", {"w": torch.ones(3)}, {"depth": 0})


def test_progress_counts_training_steps_not_models(tmp_path, capsys):
    """The build bar weighs a root's pre-training steps against its fine-tunes' steps (a root is not one model's
    worth of a short fine-tune), so its first estimate is not off by the ratio of the two."""
    from conftest import TINY_TREES

    from weightspace.zoo.model_trees import build_model_trees, finetune_plan, resolve_params

    p = resolve_params(TINY_TREES)
    expected = p["n_trees"] * p["root_steps"] + sum(r["steps"] for r in finetune_plan(p))
    build_model_trees(tmp_path / "z", executor="inline", progress=True, **TINY_TREES)
    err = capsys.readouterr().err
    import re

    assert re.search(rf"\b{expected}(\.0)?/{expected}(\.0)? ", err) and "steps" in err, err[-300:]
