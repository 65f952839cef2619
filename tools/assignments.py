"""Write the students' copies of the course assignments from their solutions (make assignments).

    python tools/assignments.py            notebooks/assignments/solutions/A*.py -> notebooks/assignments/A*.py + .ipynb
                                           (and each solution's own .ipynb pair)
    python tools/assignments.py --check    write nothing; exit 1 if a copy is missing or differs

In a solution (a jupytext py:percent notebook) each exercise is one function between the lines

    # EXERCISE: name (points)
    def name(...):
        \"\"\"What to write, with hints.\"\"\"
        ...the solution...
    # END EXERCISE

In the student's copy the body after the docstring becomes `raise NotImplementedError(...)`; everything else
(the text, the given code) is copied. The exercises and points must be those the grader checks
(weightspace.grading.assignments), so a copy can never ask for what is not graded. The .ipynb is written from
the copy as tools/nbsync.py pairs notebooks (stored without outputs).
"""
import argparse
import ast
import json
import re
import sys
from pathlib import Path

import jupytext
import nbformat
from jupytext.config import load_jupytext_configuration_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nbsync import FORMAT, stored

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "notebooks" / "assignments"
START = re.compile(r"^# EXERCISE: (\w+) \((\d+)\)\s*$")
END = "# END EXERCISE"


class MarkupError(ValueError):
    """A solution whose exercise markers cannot be read; names the file and line."""


def exercises(text: str, where: str) -> list[tuple[str, int, int, int]]:
    """[(name, points, first line, end line)] of the EXERCISE blocks (0-based, end exclusive)."""
    lines, out, open_at = text.splitlines(), [], None
    for i, line in enumerate(lines):
        m = START.match(line)
        if m:
            if open_at is not None:
                raise MarkupError(f"{where}:{i + 1}: an EXERCISE starts before the one at line {open_at + 1} ends")
            open_at, name, points = i, m.group(1), int(m.group(2))
        elif line.strip() == END:
            if open_at is None:
                raise MarkupError(f"{where}:{i + 1}: END EXERCISE without an EXERCISE")
            out.append((name, points, open_at, i))
            open_at = None
        elif line.lstrip().startswith("# EXERCISE"):
            raise MarkupError(f"{where}:{i + 1}: write exercise markers as '# EXERCISE: name (points)'")
    if open_at is not None:
        raise MarkupError(f"{where}:{open_at + 1}: EXERCISE without END EXERCISE")
    return out


def stub(block: list[str], name: str, points: int, where: str) -> list[str]:
    """The exercise's def line(s) and docstring, then a NotImplementedError naming the exercise."""
    src = "\n".join(block)
    try:
        tree = ast.parse(src)
    except SyntaxError as exc:
        raise MarkupError(f"{where}: exercise {name!r} is not valid Python ({exc.msg}, line {exc.lineno})") from exc
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if len(tree.body) != 1 or len(funcs) != 1 or funcs[0].name != name:
        raise MarkupError(f"{where}: exercise {name!r} must hold exactly one function named {name!r}")
    f = funcs[0]
    body = f.body
    if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        raise MarkupError(f"{where}: exercise {name!r} needs a docstring (what to write, with hints)")
    keep = block[: body[0].end_lineno]
    indent = re.match(r"\s*", block[body[0].lineno - 1]).group(0)
    pts = f"{points} point" + ("s" if points != 1 else "")
    return keep + [f'{indent}raise NotImplementedError("Exercise {name} ({pts}): write this function")']


def student_copy(text: str, where: str) -> tuple[str, list[tuple[str, int]]]:
    lines = text.splitlines()
    blocks = exercises(text, where)
    out, pos = [], 0
    for name, points, a, b in blocks:
        out += lines[pos:a]
        out.append(f"# EXERCISE: {name} ({points} point{'s' if points != 1 else ''})")
        out += stub(lines[a + 1:b], name, points, where)
        pos = b + 1
    out += lines[pos:]
    return "\n".join(out) + "\n", [(n, p) for n, p, _, _ in blocks]


def check_graded(stem: str, found: list[tuple[str, int]], where: str) -> None:
    from weightspace.grading.assignments import ASSIGNMENTS

    if stem not in ASSIGNMENTS:
        raise MarkupError(f"{where}: the grader has no assignment {stem!r} (weightspace.grading.assignments)")
    graded = [(e.name, e.points) for e in ASSIGNMENTS[stem].exercises]
    if found != graded:
        raise MarkupError(f"{where}: exercises {found}, but the grader checks {graded}")


def pair(script: str, config) -> tuple[str, str]:
    """(.py, .ipynb) texts exactly as tools/nbsync.py pairs them from a py:percent script."""
    nb = stored(json.loads(nbformat.writes(jupytext.reads(script, fmt=FORMAT))))
    return jupytext.writes(jupytext.reads(nb, "ipynb"), FORMAT, config=config), nb


def build(folder: Path = FOLDER) -> dict[Path, str]:
    """{path: text} of every student copy (.py and .ipynb) and of each solution's .ipynb."""
    config = load_jupytext_configuration_file(str(ROOT / "notebooks" / "jupytext.toml"))
    out = {}
    for sol in sorted((folder / "solutions").glob("A*.py")):
        where = str(sol.relative_to(ROOT) if sol.is_relative_to(ROOT) else sol)
        text, found = student_copy(sol.read_text(), where)
        check_graded(sol.stem, found, where)
        out[folder / sol.name], out[(folder / sol.name).with_suffix(".ipynb")] = pair(text, config)
        out[sol.with_suffix(".ipynb")] = pair(sol.read_text(), config)[1]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a copy is missing or differs")
    ap.add_argument("folder", nargs="?", type=Path, default=FOLDER)
    args = ap.parse_args(argv)
    try:
        copies = build(args.folder)
    except MarkupError as exc:
        print(f"assignments: {exc}", file=sys.stderr)
        return 1
    stale = [p for p, text in copies.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"assignments: {p} is missing or out of date: run `make assignments`", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(copies[p])
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
