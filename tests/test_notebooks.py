"""Notebooks: stored clean, parameterised as the runner expects, and executed at the tiny preset."""
import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from weightspace import plotting, presets, reproduce

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import nbparams  # noqa: E402  (tools/ is not a package)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = reproduce.numbered_notebooks(ROOT / "notebooks")
ALL_NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _cells(path):
    return json.loads(path.read_text())["cells"]


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_quickstart.ipynb"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), \
        f"{path.name} is stored with outputs: run `make nbclean`"
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "nbclean.py"), "--check", str(path)])
    assert check.returncode == 0, f"{path.name} is not clean: run `make nbclean`"


def _papers():
    """{method: (paper URL, official code URL)} from pyproject's [project.urls]."""
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    return {name.split()[0]: (url, urls[name.replace(" paper", " official code")])
            for name, url in urls.items() if name.endswith(" paper")}


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_links_the_papers_it_mirrors_and_says_it_is_a_reimplementation(path):
    first = "".join(_cells(path)[0]["source"])
    text = " ".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "markdown")
    papers = _papers()
    assert set(papers) == {"ProbeX", "MoTHer", "SANE"}
    named = {m for m in papers if m in text}
    assert named, f"{path.name} names none of the papers"
    for method in named:
        paper, code = papers[method]
        assert f"({paper})" in first and f"({code})" in first, \
            f"{path.name} names {method} but its first cell does not link its paper {paper} and code {code}"
    assert "independent reimplementation" in first, f"{path.name}: the first cell does not say what this is"
    for link in re.findall(r"\]\((\.[^)#]*)", first):
        assert (path.parent / link).resolve().is_file(), f"{path.name}: the link {link} leads nowhere"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_of_literals(path):
    cells = _cells(path)
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    tree = ast.parse("".join(tagged[0]["source"]))
    names = []
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign) and node.value is not None, \
            f"{path.name}: the parameters cell holds typed assignments only (`n: int = 3`; tools/nbparams.py)"
        value = ast.literal_eval(node.value)       # literals only: derived values go in the next cell
        # the annotation says what the literal is (papermill --help-notebook and -p show and check it)
        ann = ast.unparse(node.annotation)
        if value is not None and not (isinstance(value, list) and not value):
            assert ann == nbparams.literal_type(value) or (ann == "list" and isinstance(value, list)), \
                f"{path.name}: {node.target.id}: {ann} does not describe its default {value!r}"
        names.append(node.target.id)
    missing = set(presets.COMMON) - set(names)
    assert not missing, f"{path.name}: parameters cell lacks {sorted(missing)}"
    # papermill must see every parameter (its line parser once hid one whose comment held an '='), or -p and
    # the presets could not set it
    seen = reproduce.notebook_parameters(path)
    hidden = set(names) - set(seen)
    assert not hidden, f"{path.name}: papermill cannot parse the parameter line(s) of {sorted(hidden)}"
    untyped = sorted(k for k, v in seen.items() if v.get("inferred_type_name") in (None, "None"))
    assert not untyped, f"{path.name}: papermill --help-notebook shows no type for {untyped}"


def test_presets_name_real_notebooks_and_declared_parameters():
    declared = {p.stem: set(reproduce.notebook_parameters(p)) for p in NOTEBOOKS}
    for preset, per_notebook in presets.PRESETS.items():
        for stem, params in per_notebook.items():
            assert stem in declared, f"preset {preset!r} names notebook {stem!r}, which does not exist"
            unknown = set(params) - declared[stem]
            assert not unknown, f"preset {preset!r} sets {sorted(unknown)} not declared by {stem}"


@pytest.mark.notebooks
def test_every_notebook_runs_at_the_tiny_preset(tmp_path_factory):
    """The whole pipeline as `make tiny` runs it: two notebooks at a time, each after what it reads."""
    out = tmp_path_factory.mktemp("tiny")
    timings = reproduce.run("tiny", out=out, root=ROOT, progress=False, parallel=2)
    finished = [n for n, _ in timings]
    assert sorted(finished) == [p.stem for p in NOTEBOOKS]
    deps = reproduce.dependencies(NOTEBOOKS, NOTEBOOKS)
    assert all(finished.index(d) < finished.index(n) for n in finished for d in deps[n])
    for p in NOTEBOOKS:
        results = out / "results" / f"{p.stem}.json"
        assert results.exists(), f"{p.name} wrote no results file"
        data = json.loads(results.read_text())
        assert data
        plotting.check_claims(data)                       # every stored verdict follows from its numbers
        number = int(p.stem[:2])
        if number <= 5:
            assert "paper" in data, f"{p.name}: results have no 'paper'"
            assert (data["paper"] == "") == (number == 0), f"{p.name}: paper {data['paper']!r}"
        if 1 <= number <= 5:
            assert data.get("claims"), f"{p.name} records none of its paper's claims"
    assert list((out / "figures").glob("*.png"))


@pytest.fixture(scope="module")
def nbsync():
    """tools/nbsync.py, imported rather than run: importing jupytext costs seconds per process."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import nbsync
        yield nbsync
    finally:
        sys.path.remove(str(ROOT / "tools"))


def test_every_notebook_is_paired_with_its_script(nbsync, capsys):
    assert nbsync.main(["--check"]) == 0, capsys.readouterr().out


def _sync(nbsync, capsys, *args):
    code = nbsync.main([*args])
    return code, capsys.readouterr().out


def test_sync_check_fails_on_an_edit_and_passes_once_resynced(nbsync, capsys, tmp_path):
    import shutil

    folder = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    first, second = NOTEBOOKS[0].stem, NOTEBOOKS[1].stem
    assert _sync(nbsync, capsys, "--check", str(folder))[0] == 0

    path = folder / f"{second}.ipynb"
    nb = json.loads(path.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code" and not c["metadata"].get("tags"))
    code["source"] = [*code["source"][:-1], code["source"][-1] + "\n", "edited_here = 1"]
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["noise\n"]}]
    code["execution_count"] = 3
    path.write_text(json.dumps(nb, indent=1))
    failed, out = _sync(nbsync, capsys, "--check", str(folder))
    assert failed == 1 and f"{second}.ipynb: cells differ" in out and first not in out and "make sync" in out

    assert _sync(nbsync, capsys, str(folder))[0] == 0
    assert _sync(nbsync, capsys, "--check", str(folder))[0] == 0
    assert "\nedited_here = 1\n" in (folder / f"{second}.py").read_text()
    stored = json.loads(path.read_text())
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in stored["cells"])
    assert "nothing" in _sync(nbsync, capsys, str(folder))[1]            # idempotent

    script = folder / f"{first}.py"
    text = script.read_text()
    assert '# %% tags=["parameters"]\n' in text
    script.write_text(text.replace('# %% tags=["parameters"]\n', "# %%\n"))
    failed, out = _sync(nbsync, capsys, "--check", str(folder))
    assert failed == 1 and f"{first}.ipynb: cells differ" in out and second not in out
    assert _sync(nbsync, capsys, "--from", "py", str(folder))[0] == 0
    assert not any("parameters" in c["metadata"].get("tags", []) for c in _cells(folder / f"{first}.ipynb"))
    assert _sync(nbsync, capsys, "--check", str(folder))[0] == 0

    script.unlink()
    failed, out = _sync(nbsync, capsys, "--check", str(folder))
    assert failed == 1 and f"{first}.ipynb: no paired .py" in out
    (folder / f"{second}.ipynb").unlink()
    assert f"{second}.py: no paired .ipynb" in _sync(nbsync, capsys, "--check", str(folder))[1]
    assert _sync(nbsync, capsys, str(folder))[0] == 0 and script.exists() and (folder / f"{second}.ipynb").exists()
    assert _sync(nbsync, capsys, "--check", str(folder))[0] == 0


def test_scripts_convert_back_to_the_stored_notebooks(nbsync, capsys, tmp_path):
    """From the .py alone: no outputs, the same cells, tags and metadata (kernelspec language python)."""
    (tmp_path / "jupytext.toml").write_text((ROOT / "notebooks" / "jupytext.toml").read_text())
    for path in ALL_NOTEBOOKS:
        target = tmp_path / path.relative_to(ROOT / "notebooks").with_suffix(".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.with_suffix(".py").read_text())
    assert _sync(nbsync, capsys, "--from", "py", str(tmp_path))[0] == 0
    for path in ALL_NOTEBOOKS:
        rebuilt = tmp_path / path.relative_to(ROOT / "notebooks")
        assert rebuilt.read_text() == path.read_text(), f"{path.name} does not come back from its .py"


def test_colab_badge_and_install_cell_follow_the_repository_url(nbsync, capsys, tmp_path, monkeypatch):
    import shutil
    import types

    folder = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    before = {p: p.read_text() for p in folder.rglob("*.*")}
    url = "https://github.com/someone/weightspace"
    monkeypatch.setattr(nbsync, "repository", lambda: url)
    failed, out = _sync(nbsync, capsys, "--check", str(folder))
    assert failed == 1 and out.count("Colab badge") == len(NOTEBOOKS) and url in out
    assert _sync(nbsync, capsys, str(folder))[0] == 0
    assert _sync(nbsync, capsys, "--check", str(folder))[0] == 0
    assert "nothing" in _sync(nbsync, capsys, str(folder))[1]

    for path in NOTEBOOKS:
        cells = _cells(folder / path.name)
        title = "".join(cells[0]["source"]).split("\n")
        assert title[0].startswith("# ") and title[1] == ""
        assert f"(https://colab.research.google.com/github/someone/weightspace/blob/main/notebooks/{path.name})" \
            in title[2]
        assert cells[1]["metadata"]["tags"] == ["colab"] and cells[2:] == _cells(path)[1:]
        assert 'tags=["colab"]' in (folder / path.name).with_suffix(".py").read_text()
    assert all(before[p] == p.read_text() for p in folder.glob("assignments/**/*.*"))   # numbered notebooks only

    source = "".join(_cells(folder / NOTEBOOKS[3].name)[1]["source"])
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr("os.chdir", lambda d: calls.append(["chdir", d]))
    monkeypatch.setattr("os.path.isdir", lambda d: False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(source, {})
    assert calls == []                                   # off Colab the cell does nothing
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(source, {})
    assert calls[0][:2] == ["git", "clone"] and url in calls[0]
    assert calls[1][1:4] == ["-m", "pip", "install"] and calls[1][-1] == "/content/weightspace"
    assert calls[2] == ["chdir", "/content/weightspace/notebooks"]

    monkeypatch.setattr(nbsync, "repository", lambda: None)       # no URL: no badge, the stored files again
    assert _sync(nbsync, capsys, str(folder))[0] == 0
    assert all(before[p] == p.read_text() for p in before)


def test_a_repository_url_colab_cannot_open_is_refused(nbsync, tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n[project.urls]\nRepository = "https://gitlab.com/a/b"\n')
    with pytest.raises(SystemExit, match="gitlab.com/a/b.*not https://github.com"):
        nbsync.repository(pyproject)
    pyproject.write_text('[project]\nname = "x"\n[project.urls]\nRepository = "https://github.com/a/b.git"\n')
    assert nbsync.repository(pyproject) == "https://github.com/a/b"
    pyproject.write_text('[project]\nname = "x"\n')
    assert nbsync.repository(pyproject) is None
