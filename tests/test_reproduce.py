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
    (out / "notebooks" / reproduce.TIMINGS).write_text("[not a dict")           # a damaged record: no estimate
    lines.clear()
    reproduce.run("tiny", only=["00"], out=out, root=repo, progress=False, log=lines.append)
    assert "last run" not in lines[1]


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
