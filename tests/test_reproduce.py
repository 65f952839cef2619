"""The reproduce runner: presets, parameter checks, and its failure path."""
import subprocess
import sys

import nbformat
import pytest

from weightspace import presets, reproduce

COMMON = 'preset = "default"\nzoo_root = "z"\nfigures_dir = "f"\nresults_dir = "r"\n'


def _notebook(path, body: str, params: str = COMMON + "x = 1\n"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.fixture
def repo(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "00_ok.ipynb",
              "import pathlib\npathlib.Path(results_dir).mkdir(parents=True, exist_ok=True)\n"
              "pathlib.Path(results_dir, 'ok.txt').write_text(f'{preset} {x}')")
    _notebook(nbs / "01_fail.ipynb", "y = 2\nraise ValueError('boom')")
    return tmp_path


def test_runs_notebooks_with_preset_and_common_parameters(repo):
    out = repo / "out"
    timings = reproduce.run("tiny", only=["00"], out=out, root=repo, overrides={"x": 7}, progress=False,
                            log=lambda *a: None)
    assert [name for name, _ in timings] == ["00_ok"]
    assert (out / "results" / "ok.txt").read_text() == "tiny 7"
    executed = nbformat.read(out / "notebooks" / "00_ok.ipynb", as_version=4)
    assert executed.metadata.papermill.parameters["preset"] == "tiny"


def test_progress_lines_estimate_from_the_last_run(repo):
    out, lines = repo / "out", []
    reproduce.run("tiny", only=["00"], out=out, root=repo, progress=False, log=lines.append)
    assert lines[1].startswith("▶ [1/1] 00_ok.ipynb (elapsed 0.0 min)")       # no earlier run: no estimate
    last = reproduce._last_timings(out / "notebooks" / reproduce.TIMINGS)
    assert set(last) == {"00_ok"} and last["00_ok"] > 0
    (out / "notebooks" / reproduce.TIMINGS).write_text('{"00_ok": 600.0}')
    lines.clear()
    reproduce.run("tiny", only=["00"], out=out, root=repo, progress=False, log=lines.append)
    assert "last run 10.0 min, about 10 min left" in lines[1]
    (out / "notebooks" / reproduce.TIMINGS).write_text("[not a dict")   # a damaged record: the shipped times
    (out / "results" / reproduce.TIMINGS).write_text('{"00_ok": 120.0}')
    lines.clear()
    reproduce.run("tiny", only=["00"], out=out, root=repo, progress=False, log=lines.append)
    assert "last run 2.0 min" in lines[1]
    (out / "notebooks" / reproduce.TIMINGS).write_text("[not a dict")           # neither: no estimate
    (out / "results" / reproduce.TIMINGS).unlink()
    lines.clear()
    reproduce.run("tiny", only=["00"], out=out, root=repo, progress=False, log=lines.append)
    assert "last run" not in lines[1]
    assert reproduce._last_timings(out / "results" / reproduce.TIMINGS)["00_ok"] > 0   # this run's, shipped


def test_failure_names_notebook_and_cell(repo):
    with pytest.raises(reproduce.NotebookFailed, match=r"01_fail.ipynb failed in cell \d+ .*ValueError: boom"):
        reproduce.run("tiny", out=repo / "out", root=repo, progress=False, log=lambda *a: None)
    # the notebook before it ran and left its work
    assert (repo / "out" / "results" / "ok.txt").exists()


def test_cli_exit_status(repo):
    cmd = [sys.executable, "-m", "weightspace", "reproduce", "--root", str(repo), "--out", str(repo / "o"),
           "--no-progress", "--preset", "tiny"]
    failed = subprocess.run(cmd + ["--only", "01"], capture_output=True, text=True)
    assert failed.returncode == 1
    assert "01_fail.ipynb failed in cell" in failed.stderr and "ValueError: boom" in failed.stderr
    ok = subprocess.run(cmd + ["--only", "00_ok", "-p", "x", "5"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (repo / "o" / "results" / "ok.txt").read_text() == "tiny 5"
    bad = subprocess.run(cmd[:-1] + ["huge"], capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown preset 'huge'" in bad.stderr


def test_unknown_preset_parameter_or_notebook(repo):
    quiet = dict(root=repo, progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        reproduce.run("fast", **quiet)
    with pytest.raises(ValueError, match=r"-p n_modelz: no selected notebook declares"):
        reproduce.run("tiny", only=["00"], overrides={"n_modelz": 3}, **quiet)
    with pytest.raises(ValueError, match="--only '07' matches no notebook"):
        reproduce.run("tiny", only=["07"], **quiet)


def test_default_preset_is_the_notebooks_as_written():
    assert presets.PRESETS["default"] == {}
    with pytest.raises(ValueError, match="unknown preset"):
        presets.parameters("medium", "00_quickstart")


def test_output_folders_keep_the_gallery_for_default_only(tmp_path):
    d = reproduce.output_dirs(tmp_path, "default", None)
    assert d["figures_dir"] == tmp_path / "figures" and d["results_dir"] == tmp_path / "results"
    t = reproduce.output_dirs(tmp_path, "tiny", None)
    assert t["figures_dir"] == tmp_path / "runs" / "tiny" / "figures"
    assert t["zoo_root"] == tmp_path / "zoos" / "tiny"


def test_parameters_are_typed_against_each_notebooks_defaults(repo):
    """-p values are Python literals of the notebook's type (strings as they are); checked before anything runs."""
    quiet = dict(root=repo, progress=False, log=lambda *a: None, raw_overrides=True)
    out = repo / "typed"
    with pytest.raises(ValueError, match=r"-p x 'abc': not a Python literal, but 00_ok.ipynb expects int"):
        reproduce.run("tiny", only=["00"], out=out, overrides={"x": "abc"}, **quiet)
    with pytest.raises(ValueError, match=r"-p x '\[1\]': 00_ok.ipynb expects int like its default 1, got list"):
        reproduce.run("tiny", only=["00"], out=out, overrides={"x": "[1]"}, **quiet)
    with pytest.raises(ValueError, match="expects int"):
        reproduce.run("tiny", only=["00"], out=out, overrides={"x": "True"}, **quiet)
    assert not out.exists()                                   # nothing created before the checks pass
    reproduce.run("tiny", only=["00"], out=out, overrides={"x": "12", "zoo_root": "my zoos"}, **quiet)
    executed = nbformat.read(out / "notebooks" / "00_ok.ipynb", as_version=4)
    assert executed.metadata.papermill.parameters["x"] == 12
    assert executed.metadata.papermill.parameters["zoo_root"] == "my zoos"


def test_an_override_goes_to_the_notebooks_that_declare_it(repo):
    _notebook(repo / "notebooks" / "02_other.ipynb", "pass", params=COMMON + "workers = 2\n")
    quiet = dict(root=repo, out=repo / "o", progress=False, log=lambda *a: None)
    timings = reproduce.run("tiny", only=["00", "02"], overrides={"workers": 4, "x": 3}, **quiet)
    assert [n for n, _ in timings] == ["00_ok", "02_other"]
    assert nbformat.read(repo / "o" / "notebooks" / "02_other.ipynb", as_version=4).metadata.papermill.parameters["workers"] == 4
    with pytest.raises(ValueError, match=r"-p n_modelz: no selected notebook declares this parameter"):
        reproduce.run("tiny", only=["00", "02"], overrides={"n_modelz": 4}, **quiet)


def test_only_names_one_notebook_each(repo):
    quiet = dict(root=repo, progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match=r"--only '0' is ambiguous: it matches \['00_ok', '01_fail'\]"):
        reproduce.run("tiny", only=["0"], **quiet)
    with pytest.raises(ValueError, match="--only got an empty name"):
        reproduce.run("tiny", only=[""], **quiet)
    with pytest.raises(ValueError, match="--only needs at least one"):
        reproduce.run("tiny", only=[], **quiet)
    cmd = [sys.executable, "-m", "weightspace", "reproduce", "--root", str(repo), "--out", str(repo / "c"),
           "--no-progress", "--preset", "tiny", "--only", "00", "-p", "x", "seven"]
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 1 and "not a Python literal" in bad.stderr and "preset" not in bad.stderr


# ---------------------------------------------------------------- dependency order and parallel runs

STAMP = ("import pathlib, time, json\n"
         "d = pathlib.Path(results_dir); d.mkdir(parents=True, exist_ok=True)\n"
         "t0 = time.time()\n"
         "{body}\n"
         "(d / '{name}.json').write_text(json.dumps([t0, time.time()]))\n")


def _declared(path, body, reads=(), writes=()):
    _notebook(path, body)
    nb = nbformat.read(path, as_version=4)
    nb.metadata["weightspace"] = {"reads": list(reads), "writes": list(writes)}
    nbformat.write(nb, path)


@pytest.fixture
def graph(tmp_path):
    """a makes zoo x; b reads it; c stands alone (and is slow enough to overlap a)."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    mk = "pathlib.Path(zoo_root, 'x').mkdir(parents=True, exist_ok=True); time.sleep(3)"
    _declared(nbs / "00_a.ipynb", STAMP.format(body=mk, name="a"), writes=["zoo/x"])
    _declared(nbs / "01_b.ipynb", STAMP.format(body="assert pathlib.Path(zoo_root, 'x').is_dir()", name="b"),
              reads=["zoo/x"])
    _declared(nbs / "02_c.ipynb", STAMP.format(body="time.sleep(3)", name="c"))
    return tmp_path


def _spans(out):
    import json

    return {n: json.loads((out / "results" / f"{n}.json").read_text()) for n in "abc"}


def test_dependencies_come_from_what_notebooks_declare(graph):
    every = reproduce.numbered_notebooks(graph / "notebooks")
    assert reproduce.dependencies(every, every) == {"00_a": set(), "01_b": {"00_a"}, "02_c": set()}
    assert reproduce.dependencies(every, every[1:]) == {"01_b": set(), "02_c": set()}
    assert reproduce.declared_io(every[1]) == (["zoo/x"], ["results/01_b"])
    quiet = dict(root=graph, out=graph / "o", progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match=r"01_b.ipynb reads .*/o/zoos/x, made by 00_a: add it to --only"):
        reproduce.run("tiny", only=["01"], **quiet)
    _declared(graph / "notebooks" / "03_d.ipynb", "pass", reads=["zoo/nobody"])
    with pytest.raises(ValueError, match=r"03_d.ipynb reads \['zoo/nobody'\], which no notebook writes"):
        reproduce.run("tiny", **quiet)
    _declared(graph / "notebooks" / "03_d.ipynb", "pass", reads=["x"])
    with pytest.raises(ValueError, match=r"entry 'x' is not 'zoo/<name>'"):
        reproduce.run("tiny", **quiet)


@pytest.mark.parametrize("executor", ["local", "dask", "slurm"])
def test_parallel_runs_follow_the_dependencies(graph, executor, tmp_path):
    """Two at a time through each executor: b starts only after a has finished; c runs beside a."""
    out = graph / "o"
    options = {"folder": tmp_path / "submitit", "cluster": "local"} if executor == "slurm" else {}
    lines = []
    timings = reproduce.run("tiny", root=graph, out=out, progress=False, log=lines.append, parallel=2,
                            executor=executor, **options)
    assert sorted(n for n, _ in timings) == ["00_a", "01_b", "02_c"]
    s = _spans(out)
    assert s["b"][0] >= s["a"][1]
    assert s["c"][0] < s["a"][1] and s["a"][0] < s["c"][1]              # a and c overlapped
    assert any("up to 2 at once" in line for line in lines) and any("cores)" in line for line in lines)


def test_a_failed_notebook_stops_only_what_depends_on_it(graph):
    nbs = graph / "notebooks"
    _declared(nbs / "00_a.ipynb", "raise ValueError('boom')", writes=["zoo/x"])
    with pytest.raises(reproduce.NotebookFailed, match=r"(?s)00_a.ipynb failed in cell .*boom.*not run, waiting "
                                                        r"on a failed notebook: 01_b"):
        reproduce.run("tiny", root=graph, out=graph / "o", progress=False, log=lambda *a: None, parallel=2)
    assert (graph / "o" / "results" / "c.json").exists() and not (graph / "o" / "results" / "b.json").exists()
    with pytest.raises(ValueError, match="parallel=0"):
        reproduce.run("tiny", root=graph, out=graph / "o", progress=False, log=lambda *a: None, parallel=0)


def test_the_notebooks_declare_the_zoos_they_use():
    """Every zoo a numbered notebook names under zoo_root (in code or as a parameter's default) is declared,
    and everything declared is named; the graph is the one the notebooks' text describes."""
    import re

    root = reproduce.repo_root()
    every = reproduce.numbered_notebooks(root / "notebooks")
    for nb in every:
        reads, writes = reproduce.declared_io(nb)
        zoos = {i.split("/", 1)[1] for i in reads + writes if i.startswith("zoo/")}
        code = nb.with_suffix(".py").read_text()
        named = set(re.findall(r"\{zoo_root\}/([a-z0-9_]+)(?![a-z0-9_{])", code))
        named |= set(re.findall(r'^\w+_(?:zoo|dir): str = "([a-z0-9_]+)"', code, flags=re.M))
        named |= set(re.findall(r'\bpath="([a-z0-9_]+)"', code))          # notebook 09's table of zoos
        assert named <= zoos, f"{nb.name} uses {sorted(named - zoos)} without declaring them"
        patterns = [re.sub(r"\\\{[^}]*\\\}", "[a-z0-9_]+", re.escape(m))
                    for m in re.findall(r"\{zoo_root\}/([a-z0-9_{}]+)", code)]
        for z in zoos - named:
            assert any(re.fullmatch(p, z) for p in patterns), f"{nb.name} declares {z!r} but never names it"
        for item in reads:
            if item.startswith("results/"):
                assert item.split("/", 1)[1] + ".json" in code, f"{nb.name} declares {item} but never reads it"
    deps = reproduce.dependencies(every, every)
    short = {k[:2]: {d[:2] for d in v} for k, v in deps.items()}
    assert short["05"] == {"04"} and short["03"] == {"01"} and short["08"] == {"06", "07"}
    assert short["12"] == {"09", "10", "11"} and short["11"] == {"01", "09", "10"}
    assert not short["00"] and not short["01"] and not short["06"] and not short["09"]


def test_seeds_run_each_notebook_per_seed_and_summarise(tmp_path):
    """--seeds 0 1 2: seed 0 writes where a plain run does, the others beside it; seeds.json holds the mean
    and sd of every number (here the seed itself: mean 1, sd 1), and the gallery shows them."""
    import json

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    body = ("import pathlib, json\nd = pathlib.Path(results_dir); d.mkdir(parents=True, exist_ok=True)\n"
            "pathlib.Path(zoo_root, 'z').mkdir(parents=True, exist_ok=True)\n"
            "(d / '00_s.json').write_text(json.dumps({'preset': preset, 'seed': seed, 'value': float(seed),"
            " 'headline': [['the value', float(seed), 'n/a']]}))")
    _notebook(nbs / "00_s.ipynb", body, params=COMMON + "seed = 0\n")
    out = tmp_path / "o"
    timings = reproduce.run("tiny", root=tmp_path, out=out, progress=False, log=lambda *a: None, parallel=2,
                            seeds=[0, 1, 2])
    assert sorted(n for n, _ in timings) == ["00_s@seed0", "00_s@seed1", "00_s@seed2"]
    assert json.loads((out / "results" / "00_s.json").read_text())["seed"] == 0
    assert json.loads((out / "notebooks" / "seed-2" / "results" / "00_s.json").read_text())["seed"] == 2
    assert (out / "zoos" / "seed-1" / "z").is_dir() and (out / "zoos" / "z").is_dir()
    summary = json.loads((out / "results" / "seeds.json").read_text())["00_s"]
    assert summary["numbers"]["value"]["mean"] == 1.0 and summary["numbers"]["value"]["sd"] == 1.0
    assert "1.000 ± 1.000 (3 seeds)" in (out / "figures" / "README.md").read_text()
    quiet = dict(root=tmp_path, out=out, progress=False, log=lambda *a: None)
    _notebook(nbs / "01_noseed.ipynb", "pass")
    with pytest.raises(ValueError, match="--seeds: 01_noseed.ipynb has no `seed` parameter"):
        reproduce.run("tiny", seeds=[0, 1], **quiet)
    for bad in ([], [1, 1], [-1]):
        with pytest.raises(ValueError, match="distinct whole numbers"):
            reproduce.run("tiny", only=["00"], seeds=bad, **quiet)


def test_notebooks_off_the_longest_chain_run_at_low_priority(graph):
    """a -> b is the longest chain, so a (and then b) run at the runner's own priority; c, beside it, is started
    with $WEIGHTSPACE_NICE, which importing weightspace applies to its kernel."""
    import json
    import os

    nice = ("import os, weightspace\n"
            "(d / '{name}.nice').write_text(str(os.getpriority(os.PRIO_PROCESS, 0)))\n"
            "g = pathlib.Path('/proc/self/autogroup')\n"
            "(d / '{name}.group').write_text(g.read_text().split()[-1] if g.exists() else '')\n")
    nbs = graph / "notebooks"
    for nb, name, extra in (("00_a.ipynb", "a", ["zoo/x"]), ("02_c.ipynb", "c", [])):
        body = ("pathlib.Path(zoo_root, 'x').mkdir(parents=True, exist_ok=True); " if name == "a" else "") + "time.sleep(2)"
        _declared(nbs / nb, STAMP.format(body=body, name=name).replace("t0 = time.time()\n", "t0 = time.time()\n" + nice.format(name=name)),
                  writes=extra)
    lines = []
    walls = dict(reproduce.run("tiny", root=graph, out=graph / "o", progress=False, log=lines.append, parallel=2))
    got = {n: int((graph / "o" / "results" / f"{n}.nice").read_text()) for n in "ac"}
    # the estimate kept for the next run: the wall time at full priority; at low priority (which stretches
    # the wall time by whatever ran beside it) the CPU time when less (c mostly sleeps)
    kept = json.loads((graph / "o" / "notebooks" / reproduce.TIMINGS).read_text())
    assert kept["00_a"] == walls["00_a"] and kept["02_c"] < walls["02_c"]
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert got == {"a": base, "c": min(19, max(base, reproduce.NICE))}
    group = {n: (graph / "o" / "results" / f"{n}.group").read_text() for n in "ac"}
    if group["c"]:                               # Linux with autogroup: the kernel's session shares by it
        assert group == {"a": "0", "c": str(reproduce.NICE)}
    assert any("02_c.ipynb" in line and "low priority" in line for line in lines)
    assert not any("00_a.ipynb" in line and "low priority" in line for line in lines)
    assert json.loads((graph / "o" / "results" / "b.json").read_text())
