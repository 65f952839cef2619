"""Notebooks: stored clean, parameterised as the runner expects, and executed at the tiny preset."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from weightspace import plotting, presets, reproduce

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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_of_literals(path):
    cells = _cells(path)
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    tree = ast.parse("".join(tagged[0]["source"]))
    names = []
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, \
            f"{path.name}: the parameters cell holds plain assignments only"
        ast.literal_eval(node.value)       # literals only: derived values go in the next cell
        names.append(node.targets[0].id)
    missing = set(presets.COMMON) - set(names)
    assert not missing, f"{path.name}: parameters cell lacks {sorted(missing)}"


def test_presets_name_real_notebooks_and_declared_parameters():
    declared = {p.stem: set(reproduce.notebook_parameters(p)) for p in NOTEBOOKS}
    for preset, per_notebook in presets.PRESETS.items():
        for stem, params in per_notebook.items():
            assert stem in declared, f"preset {preset!r} names notebook {stem!r}, which does not exist"
            unknown = set(params) - declared[stem]
            assert not unknown, f"preset {preset!r} sets {sorted(unknown)} not declared by {stem}"


@pytest.mark.notebooks
def test_every_notebook_runs_at_the_tiny_preset(tmp_path_factory):
    """The whole pipeline, in order, as `python -m weightspace reproduce --preset tiny` runs it."""
    out = tmp_path_factory.mktemp("tiny")
    timings = reproduce.run("tiny", out=out, root=ROOT, progress=False)
    assert [n for n, _ in timings] == [p.stem for p in NOTEBOOKS]
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
