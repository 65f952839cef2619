"""Give every parameter of every notebook's parameters cell a type papermill can read.

    python tools/nbparams.py [DIR]            annotate the py:percent scripts in place (`n: int = 3`),
                                              then `make sync FROM=py` writes the notebooks
    python tools/nbparams.py --check [DIR]    exit 1 naming every parameter without a type

The type comes from the literal default (int, float, str, bool, list[...] of one element type, dict);
an empty list or a None default needs a hand-written annotation, which is kept as it is.
"""
import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSIGN = re.compile(r"^(?P<name>[A-Za-z_]\w*)(?P<ann>\s*:\s*[^=]+?)?\s*=\s*(?P<rest>.*)$")


def literal_type(value) -> str | None:
    """The annotation papermill will show for a literal default, or None if it cannot be told."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, str)):
        return type(value).__name__
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, (list, tuple)) and value:
        kinds = {literal_type(v) for v in value}
        if kinds <= {"int", "float"} and "float" in kinds:
            kinds = {"float"}
        inner = kinds.pop() if len(kinds) == 1 else None
        return f"list[{inner}]" if inner and "[" not in inner else "list"
    return None


def _value_text(rest: str) -> str:
    """The default's source text: `rest` without a trailing comment (a '#' outside a string)."""
    for cut in [m.start() for m in re.finditer("#", rest)] + [len(rest)]:
        try:
            ast.literal_eval(rest[:cut].strip())
            return rest[:cut].strip()
        except (ValueError, SyntaxError):
            continue
    raise ValueError(f"not a literal: {rest!r}")


def parameter_lines(text: str):
    """(line index, match) of each assignment in the script's cell tagged parameters."""
    lines = text.split("\n")
    inside = False
    for i, line in enumerate(lines):
        if line.startswith("# %%"):
            inside = 'tags=["parameters"]' in line
            continue
        m = ASSIGN.match(line) if inside else None
        if m:
            yield i, m


def annotate(text: str, where: str) -> tuple[str, list[str]]:
    """The script with each unannotated parameter typed from its default, and the names left untyped."""
    lines = text.split("\n")
    untyped = []
    for i, m in parameter_lines(text):
        if m["ann"]:
            continue
        kind = literal_type(ast.literal_eval(_value_text(m["rest"])))
        if kind is None:
            untyped.append(f"{where}: {m['name']}")
            continue
        lines[i] = f"{m['name']}: {kind} = {m['rest']}"
    return "\n".join(lines), untyped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", nargs="?", type=Path, default=ROOT / "notebooks")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    problems = []
    for script in sorted(args.dir.rglob("[0-9][0-9]_*.py")):
        text = script.read_text()
        new, untyped = annotate(text, script.name)
        problems += untyped
        if args.check:
            problems += [f"{script.name}: {m['name']}" for _, m in parameter_lines(text) if not m["ann"]
                         and f"{script.name}: {m['name']}" not in untyped]
        elif new != text:
            script.write_text(new)
    for p in problems:
        print(f"no type: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
