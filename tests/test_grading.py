"""The course assignments and their autograder (weightspace.grading, tools/assignments.py)."""
import ast
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weightspace.grading import GradingError, definitions, grade, main, student_source
from weightspace.grading import worker as codec
from weightspace.grading.assignments import ASSIGNMENTS

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "notebooks" / "assignments"
SOLUTIONS = {name: FOLDER / "solutions" / f"{name}.py" for name in ASSIGNMENTS}


def full(name):
    return {e.name: e.points for e in ASSIGNMENTS[name].exercises}


def variant(tmp_path, name, old, new, fname="student.py"):
    """The solution of `name` with one exact piece replaced (asserting it is there)."""
    text = SOLUTIONS[name].read_text()
    assert old in text, f"{old!r} is not in the solution of {name}"
    path = tmp_path / fname
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("name", sorted(ASSIGNMENTS))
def test_solution_scores_full_marks(name):
    report = grade(name, SOLUTIONS[name])
    assert report.error is None
    assert report.scores() == full(name), report.format()
    assert report.total == report.possible > 0


@pytest.mark.parametrize("name", sorted(ASSIGNMENTS))
def test_untouched_student_copy_scores_zero(name):
    report = grade(name, FOLDER / f"{name}.ipynb")      # the notebook itself, as a student hands it in
    assert report.error is None
    assert set(report.scores().values()) == {0}
    for e in report.exercises:
        assert all("NotImplementedError" in c.message and e.name in c.message for c in e.checks), report.format()


def _exercise_lines(solution: Path) -> list[str]:
    """The solution's code lines inside EXERCISE blocks, after each function's docstring."""
    lines, out, inside = solution.read_text().splitlines(), [], None
    for i, line in enumerate(lines):
        if line.startswith("# EXERCISE:"):
            inside = i + 1
        elif line.strip() == "# END EXERCISE":
            block = "\n".join(lines[inside:i])
            f = ast.parse(block).body[0]
            out += [s.strip() for s in lines[inside:i][f.body[0].end_lineno:] if s.strip()]
            inside = None
    return out


@pytest.mark.parametrize("name", sorted(ASSIGNMENTS))
def test_no_solution_line_reaches_the_student_copy(name):
    lines = _exercise_lines(SOLUTIONS[name])
    assert len(lines) >= len(ASSIGNMENTS[name].exercises)
    copy_py = (FOLDER / f"{name}.py").read_text()
    copy_nb = "\n".join("".join(c["source"]) for c in json.loads((FOLDER / f"{name}.ipynb").read_text())["cells"])
    for text in (copy_py, copy_nb):
        leaked = [s for s in lines if s in {t.strip() for t in text.splitlines()}]
        assert not leaked, f"{name}: solution lines in the student copy: {leaked}"
        assert text.count("raise NotImplementedError(\"Exercise ") == len(ASSIGNMENTS[name].exercises)
    assert "**Time:**" in copy_py.split("# %%")[1] and "What you will learn" in copy_py.split("# %%")[1]


def _tool(name):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_student_copies_are_up_to_date_and_paired(capsys):
    assert _tool("assignments").main(["--check"]) == 0, capsys.readouterr().err
    assert _tool("nbsync").main(["--check", str(ROOT / "notebooks")]) == 0, capsys.readouterr().out


def test_generator_rejects_bad_markers(tmp_path):
    gen = _tool("assignments")
    ok = "# EXERCISE: f (2)\ndef f(x):\n    \"\"\"Double x.\"\"\"\n    return 2 * x\n# END EXERCISE\nprint(1)\n"
    text, found = gen.student_copy(ok, "t.py")
    assert found == [("f", 2)] and "return 2 * x" not in text and "Double x." in text and "print(1)" in text
    for bad, what in [(ok.replace("# END EXERCISE\n", ""), "without END"),
                      (ok.replace('    """Double x."""\n', ""), "docstring"),
                      (ok.replace("def f", "def g"), "exactly one function named 'f'"),
                      ("# EXERCISE f\n", "write exercise markers")]:
        with pytest.raises(gen.MarkupError, match=what):
            gen.student_copy(bad, "t.py")
    with pytest.raises(gen.MarkupError, match="the grader checks"):
        gen.check_graded("A1_probex_forward", [("layer_matrix", 2)], "t.py")


# ------------------------------------------------------------------------- a wrong answer loses its points

WRONG = [
    # probes on the output side: X^T u instead of X u (the shapes still fit a square layer)
    ("A1_probex_forward", "probex_forward", "    R = X @ U\n", "    R = X.transpose(1, 2) @ U[: X.shape[1]]\n"),
    # kurtosis direction flipped: penalise the child that is LESS heavy-tailed
    ("A2_mother_tree", "direction_matrix", "return (k[None, :] > k[:, None]).astype(float)",
     "return (k[None, :] < k[:, None]).astype(float)"),
    # a tokenizer that drops the bias
    ("A3_sane_tokenizer", "layer_rows", "    if bias is not None:\n", "    if False:\n"),
]


@pytest.mark.parametrize("name,exercise,old,new", WRONG, ids=[w[1] for w in WRONG])
def test_a_wrong_answer_loses_exactly_its_points(tmp_path, name, exercise, old, new):
    report = grade(name, variant(tmp_path, name, old, new))
    want = full(name)
    want[exercise] = 0
    assert report.scores() == want, report.format()
    assert report.total == report.possible - full(name)[exercise]


def test_an_endless_loop_is_stopped_and_scores_zero(tmp_path):
    path = variant(tmp_path, "A2_mother_tree", "    k = np.asarray(k, dtype=float)\n    return (k[None",
                   "    while True:\n        pass\n    return (k[None")
    path.write_text(path.read_text() + "\nwhile True:\n    pass\n")      # a demo cell that never ends: not run
    t0 = time.monotonic()
    report = grade("A2", path, time_limit=1.0)
    took = time.monotonic() - t0
    want = full("A2_mother_tree")
    want["direction_matrix"] = 0
    assert report.scores() == want, report.format()
    dm = next(e for e in report.exercises if e.name == "direction_matrix")
    assert "time limit of 1 s exceeded" in dm.checks[0].message
    assert all("not run" in c.message for c in dm.checks[1:])
    assert took < 30


def test_a_hostile_file_cannot_touch_the_solutions_the_reference_or_other_files(tmp_path):
    other = tmp_path / "other_student.py"
    other.write_text(SOLUTIONS["A2_mother_tree"].read_text())
    outside = tmp_path / "outside.txt"
    sol = SOLUTIONS["A2_mother_tree"]
    hostile = variant(tmp_path, "A2_mother_tree", "import numpy as np\n", f"""import numpy as np
import os


def _peek():
    return open({str(sol)!r}).read()
""", fname="hostile.py")
    text = hostile.read_text()
    text = text.replace("    x = np.asarray(W, dtype=float).ravel()\n",
                        "    _peek()\n    x = np.asarray(W, dtype=float).ravel()\n")          # read the solutions
    text = text.replace("    k = np.asarray(k, dtype=float)\n    return",
                        f"    open({str(outside)!r}, 'w').write('x')\n    k = np.asarray(k, dtype=float)\n    return")
    text = text.replace("    M = np.asarray(D, dtype=float) + lam",
                        f"    open({str(other)!r}).read()\n    M = np.asarray(D, dtype=float) + lam")  # copy a friend
    text = text.replace("    G = nx.DiGraph()\n",
                        f"    os.remove({str(other)!r})\n    G = nx.DiGraph()\n", 1)
    hostile.write_text(text)
    report = grade("A2", hostile)
    assert report.scores() == {e: 0 for e in full("A2_mother_tree")}, report.format()
    messages = {e.name: e.checks[0].message for e in report.exercises}
    assert "PermissionError" in messages["excess_kurtosis"] and "read" in messages["excess_kurtosis"]
    assert "PermissionError" in messages["direction_matrix"] and "write" in messages["direction_matrix"]
    assert "PermissionError" in messages["merged_prior"] and "read" in messages["merged_prior"]
    assert "PermissionError" in messages["arborescence"]
    assert not outside.exists() and other.exists()
    assert grade("A2", other).scores() == full("A2_mother_tree")


REFUSED = [
    ("import subprocess\n    subprocess.run(['true'])", "subprocess.Popen"),
    ("import weightspace.probex.zeroshot as z\n    return z.top1(scores, y)", "import weightspace"),
    (f"open({str(ROOT / 'weightspace' / 'probex' / 'zeroshot.py')!r}).read()", "read"),
    ("import os\n    os.system('true')", "os.system"),
    ("import ctypes\n    ctypes.CDLL(None)", "ctypes"),
]


@pytest.mark.parametrize("code,message", REFUSED, ids=["subprocess", "reference", "source", "system", "ctypes"])
def test_refused(tmp_path, code, message):
    path = variant(tmp_path, "A4_probex_zeroshot", "    return float((scores.argmax(1) == y).float().mean())",
                   f"    {code}\n    return float((scores.argmax(1) == y).float().mean())")
    report = grade("A4", path, only=["top1_accuracy"])
    assert report.scores() == {"top1_accuracy": 0}
    assert message in report.exercises[0].checks[0].message, report.format()


def test_memory_is_limited(tmp_path):
    """np.empty touches no page: only the address-space limit makes a 16 GiB request fail."""
    pytest.importorskip("resource")
    path = variant(tmp_path, "A2_mother_tree", "    k = np.asarray(k, dtype=float)\n    return (k[None",
                   "    np.empty(2 ** 31)\n    k = np.asarray(k, dtype=float)\n    return (k[None")
    report = grade("A2", path, only=["direction_matrix"])
    assert report.scores() == {"direction_matrix": 0}
    assert "MemoryError" in report.exercises[0].checks[0].message, report.format()


# ------------------------------------------------------------------------------------------- bad input

def test_cli_bad_input_still_lists_every_exercise(tmp_path, capsys):
    names = [e.name for e in ASSIGNMENTS["A1_probex_forward"].exercises]
    assert main(["A1", str(tmp_path / "missing.ipynb")]) == 1
    out = capsys.readouterr().out
    assert "no such file" in out and all(n in out for n in names) and "0/8" in out
    broken = tmp_path / "broken.py"
    broken.write_text("def probex_forward(X:\n    pass\n")
    assert main(["A1", str(broken), "-q"]) == 1
    out = capsys.readouterr().out
    assert "syntax error at line 1" in out and all(n in out for n in names)
    failing = tmp_path / "failing.py"
    failing.write_text("import no_such_module_anywhere\n")
    assert main(["A1", str(failing), "-q"]) == 1
    assert "ModuleNotFoundError" in capsys.readouterr().out
    assert main(["A9", str(broken)]) == 2
    assert "unknown assignment" in capsys.readouterr().err
    assert main(["A1", str(broken), "--only", "nope"]) == 2
    assert "has no exercise" in capsys.readouterr().err
    assert main(["A1"]) == 2
    assert main(["--list"]) == 0
    assert "probex_forward (5)" in capsys.readouterr().out


def test_cli_grades_and_writes_json(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["A4", str(SOLUTIONS["A4_probex_zeroshot"]), "--seed", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "inputs seed 3" in text and "total                    7/7" in text and "ok   one weight" in text
    [rep] = json.loads(out.read_text())
    assert rep["total"] == rep["possible"] == 7 and rep["seed"] == 3
    copy = FOLDER / "A4_probex_zeroshot.py"
    assert main(["A4", str(SOLUTIONS["A4_probex_zeroshot"]), str(copy), "-q", "--json", str(out)]) == 0
    assert [r["total"] for r in json.loads(out.read_text())] == [7, 0]
    run = subprocess.run([sys.executable, "-m", "weightspace", "grade", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "STUDENT_FILE" in run.stdout


def test_a_missing_function_fails_only_its_exercise(tmp_path):
    path = variant(tmp_path, "A3_sane_tokenizer", "def token_positions(", "def token_position(")
    report = grade("A3", path)
    assert report.scores() == {**full("A3_sane_tokenizer"), "token_positions": 0}
    assert "defines no function 'token_positions'" in report.exercises[-1].checks[0].message


def test_only_definitions_are_run():
    src = "import math\nX = 3\nY = math.pi\nprint('demo')\ndef f():\n    return X\nclass C:\n    pass\nf()\n"
    kept = definitions(src, "t.py")
    assert kept.splitlines() == ["import math", "X = 3", "", "", "def f():", "    return X", "class C:",
                                 "    pass", ""]
    with pytest.raises(GradingError, match="syntax error"):
        definitions("def (", "t.py")


def test_notebook_source_drops_magics(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("%matplotlib inline\nimport os\n!ls"),
                                         nbformat.v4.new_code_cell("%%time\nx = 1"),
                                         nbformat.v4.new_markdown_cell("# hi")])
    path = tmp_path / "s.ipynb"
    nbformat.write(nb, path)
    (tmp_path / "bad.ipynb").write_text("{not json")
    with pytest.raises(GradingError, match="not a readable notebook"):
        student_source(tmp_path / "bad.ipynb")
    assert student_source(path).split() == ["import", "os"]
    (tmp_path / "s.txt").write_text("x")
    with pytest.raises(GradingError, match=r"\.py or an \.ipynb"):
        student_source(tmp_path / "s.txt")


def test_codec_round_trip(tmp_path):
    import numpy as np
    import torch

    value = ({"a": torch.arange(6.0).reshape(2, 3), "b": [np.eye(2), 3, "x", None]}, (1.5, True),
             torch.tensor([float("inf")]))
    codec.save(str(tmp_path / "v"), value)
    back = codec.load(str(tmp_path / "v"))
    assert torch.equal(back[0]["a"], value[0]["a"]) and np.array_equal(back[0]["b"][0], np.eye(2))
    assert back[0]["b"][1:] == [3, "x", None] and back[1] == (1.5, True) and torch.isinf(back[2]).all()
    with pytest.raises(TypeError, match="cannot read"):
        codec.save(str(tmp_path / "w"), object())


def test_every_assignment_opens_with_what_and_how_long():
    for name, sol in SOLUTIONS.items():
        first = sol.read_text().split("# %%")[1]
        assert "What you will learn" in first and re.search(r"\*\*Time:\*\* about \d+ minutes", first), name


def test_solution_notebooks_run_top_to_bottom_in_seconds():
    """Every cell of every solution (the demonstrations included) runs, on CPU, well under a minute."""
    code = ("import runpy, sys, time\n"
            "for p in sys.argv[1:]:\n"
            "    t = time.monotonic(); runpy.run_path(p, run_name='__main__')\n"
            "    print('TIME', p, time.monotonic() - t)\n")
    run = subprocess.run([sys.executable, "-c", code, *map(str, SOLUTIONS.values())], capture_output=True,
                         text=True, cwd=FOLDER / "solutions", timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    times = [float(line.split()[-1]) for line in run.stdout.splitlines() if line.startswith("TIME")]
    assert len(times) == len(SOLUTIONS) and max(times) < 30, run.stdout
    assert "lambda 0.3: 5/5 edges right" in run.stdout        # A2's synthetic tree is recovered
