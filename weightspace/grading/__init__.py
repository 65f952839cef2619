"""Autograder for the course assignments (notebooks/assignments/): `weightspace grade ASSIGNMENT STUDENT_FILE`.

Each exercise of an assignment is a function the student writes; it is checked against this package's own
implementation (the reference) on fresh random inputs (shapes, edge cases, a tolerance stated per check) and
earns its points when every one of its checks passes. Exercises are independent: a wrong answer loses
exactly the points of the exercise it is in.

The student's file (a .py or .ipynb) never runs in the grader's process. Only its imports, function and
class definitions and literal constants are kept (the notebook's demonstration cells are not run); they run
in a separate process (weightspace.grading.worker: forked from a `python -I` process that has imported torch
once, or a fresh `python -I`) in a clean temporary directory, with resource limits, an audit hook and a time
limit per check, and exchange inputs and results with the grader as JSON + safetensors. A check that raises, times out or returns the wrong thing fails with its message.

    python -m weightspace grade A1 alice.ipynb            per-exercise score and the total
    python -m weightspace grade A1 alice.py --seed 3      the same inputs again (the seed is printed)
    python -m weightspace grade A2 hand-ins/*.ipynb -q    a class: one report per file, --json for a table
    python -m weightspace grade --list                    the assignments and their exercises

Exit codes: 0 graded (whatever the score), 1 a file could not be graded (missing, not Python, a syntax error,
its definitions fail or time out: every exercise is still listed, at 0), 2 a usage error.
"""
from __future__ import annotations

import argparse
import ast
import atexit
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import worker as codec
from .assignments import ASSIGNMENTS, Assignment, Check, resolve

WORKER = Path(codec.__file__).resolve()
PACKAGE = Path(__file__).resolve().parents[1]
SOLUTIONS = PACKAGE.parent / "notebooks" / "assignments" / "solutions"
TIME_LIMIT = 10.0        # seconds per check
STARTUP_LIMIT = 120.0    # seconds for the worker to import the libraries and run the student's definitions
MEMORY_BYTES = 8 << 30   # address space of the worker (torch alone maps a few GB)


class GradingError(Exception):
    """The student's file cannot be graded at all (the report still lists every exercise)."""


@dataclass
class CheckResult:
    name: str
    tol: str
    passed: bool
    message: str = ""


@dataclass
class ExerciseResult:
    name: str
    points: int
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def earned(self) -> int:
        return self.points if self.checks and all(c.passed for c in self.checks) else 0


@dataclass
class Report:
    assignment: str
    student_file: str
    seed: int
    exercises: list[ExerciseResult]
    error: str | None = None      # why the file could not be graded

    @property
    def total(self) -> int:
        return sum(e.earned for e in self.exercises)

    @property
    def possible(self) -> int:
        return sum(e.points for e in self.exercises)

    def scores(self) -> dict[str, int]:
        return {e.name: e.earned for e in self.exercises}

    def format(self, verbose: bool = True) -> str:
        lines = [f"{self.assignment}: {self.student_file} (inputs seed {self.seed})"]
        if self.error:
            lines.append(f"  could not grade the file: {self.error}")
        for e in self.exercises:
            lines.append(f"  {e.name:<24} {e.earned}/{e.points}")
            for c in e.checks if verbose else []:
                mark = "ok  " if c.passed else "FAIL"
                lines.append(f"      {mark} {c.name} [{c.tol}]" + (f": {c.message}" if c.message else ""))
        lines.append(f"  {'total':<24} {self.total}/{self.possible}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"assignment": self.assignment, "student_file": self.student_file, "seed": self.seed,
                "error": self.error, "total": self.total, "possible": self.possible,
                "exercises": [{"name": e.name, "points": e.points, "earned": e.earned,
                               "checks": [vars(c) for c in e.checks]} for e in self.exercises]}


# ------------------------------------------------------------------------------- the student's source

def student_source(path: Path) -> str:
    """The code of a .py file or of an .ipynb's code cells (IPython magics and shell lines dropped)."""
    path = Path(path)
    if not path.is_file():
        raise GradingError(f"{path}: no such file")
    if path.suffix == ".ipynb":
        try:
            cells = json.loads(path.read_text())["cells"]
            sources = [("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
                       for c in cells if c.get("cell_type") == "code"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise GradingError(f"{path}: not a readable notebook ({type(exc).__name__}: {exc})") from exc
        chunks = [
            "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
            for src in sources if not src.lstrip().startswith("%%")]
        return "\n\n".join(chunks) + "\n"
    if path.suffix != ".py":
        raise GradingError(f"{path}: a student file must be a .py or an .ipynb")
    try:
        return path.read_text()
    except UnicodeDecodeError as exc:
        raise GradingError(f"{path}: not a text file ({exc})") from exc


def definitions(source: str, where: str) -> str:
    """Only the imports, function and class definitions and literal constants of `source` (the rest blanked)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise GradingError(f"{where}: syntax error at line {exc.lineno}: {exc.msg}") from exc

    def keep(node) -> bool:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            try:
                ast.literal_eval(node.value)
                return True
            except ValueError:
                return False
        return False

    lines = source.splitlines()
    for node in tree.body:
        if not keep(node):             # blanked, not removed: line numbers in error messages stay the file's
            for i in range(node.lineno - 1, node.end_lineno):
                lines[i] = ""
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- the worker process

_ZYGOTES: dict[tuple, subprocess.Popen] = {}


def _env(home: str) -> dict:
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT") if k in os.environ}
    env.update(HOME=home, TMPDIR=home, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    return env


def _zygote(preload: list[str]) -> subprocess.Popen:
    """The `python -I worker.py --zygote` process for these libraries (started once, shared by gradings)."""
    key = tuple(preload)
    z = _ZYGOTES.get(key)
    if z is None or z.poll() is not None:
        if z is not None:
            shutil.rmtree(z.home, ignore_errors=True)
        home = tempfile.mkdtemp(prefix="ws-grade-zygote-")
        z = subprocess.Popen([sys.executable, "-I", str(WORKER), "--zygote", *preload], cwd=home, env=_env(home),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             bufsize=1)
        z.home = home
        _ZYGOTES[key] = z
    return z


@atexit.register
def _stop_zygotes() -> None:
    for z in _ZYGOTES.values():
        if z.poll() is None:
            z.kill()
            z.wait()
        shutil.rmtree(z.home, ignore_errors=True)


class Worker:
    """One sandboxed process (forked from a `python -I` zygote where the OS can fork, else a fresh
    `python -I`) holding the student's definitions; `call` runs one function of them."""

    def __init__(self, source: str, preload: list[str], startup_limit: float):
        self.dir = Path(tempfile.mkdtemp(prefix="ws-grade-"))
        self.pid, self.proc, self.conn, self.broken = None, None, None, False
        (self.dir / "student.py").write_text(source)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.dir / "grader.sock"))
        listener.listen(1)
        listener.settimeout(startup_limit)
        cfg = {"preload": preload, "forbidden": [str(SOLUTIONS), str(PACKAGE)], "memory_bytes": MEMORY_BYTES,
               "cpu_seconds": 600, "file_bytes": 256 << 20, "socket": str(self.dir / "grader.sock"),
               "env": _env(str(self.dir))}
        config = self.dir / "config.json"
        config.write_text(json.dumps(cfg))
        try:
            if hasattr(os, "fork"):
                z = _zygote(preload)
                z.stdin.write(f"{config}\n")
                z.stdin.flush()
                sel = selectors.DefaultSelector()
                sel.register(z.stdout, selectors.EVENT_READ)
                line = z.stdout.readline() if sel.select(startup_limit) else ""
                sel.close()
                if not line.strip().isdigit():
                    raise GradingError(f"no fork from the zygote within {startup_limit:g} s")
                self.pid = int(line)
            else:
                self.proc = subprocess.Popen([sys.executable, "-I", str(WORKER), str(config)], cwd=self.dir,
                                             env=cfg["env"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
                self.pid = self.proc.pid
            self.conn, _ = listener.accept()
        except (OSError, GradingError) as exc:          # OSError: TimeoutError included
            self.close()
            raise GradingError(f"the grader's worker process did not start ({exc})") from exc
        finally:
            listener.close()
        self.chan = self.conn.makefile("rw", buffering=1)
        msg = self._read(startup_limit)
        if msg is None:
            self.close()
            raise GradingError(f"the file's definitions did not load within {startup_limit:g} s "
                               "(an endless loop or a slow import at top level?)")
        if not msg.get("ready"):
            self.close()
            raise GradingError(f"the file's definitions fail: {msg.get('error', 'the worker died')}")
        self.n = 0

    def _read(self, timeout: float) -> dict | None:
        """The worker's next message; None on a timeout; {"error": ...} when it died."""
        self.conn.settimeout(timeout)
        try:
            line = self.chan.readline()
        except TimeoutError:
            return None
        except OSError:
            line = ""
        if not line:
            return {"ok": False, "ready": False,
                    "error": "the student's process died (killed by a resource limit, or it exited)"}
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return {"ok": False, "ready": False, "error": "the student's process garbled the grader's channel"}

    def call(self, func: str, args: tuple, limit: float) -> tuple[bool, object]:
        """(True, result) or (False, (error message, exception class names)); raises TimeoutError."""
        self.n += 1
        codec.save(str(self.dir / f"req_{self.n}"), tuple(args))
        try:
            self.chan.write(json.dumps({"id": self.n, "func": func}) + "\n")
            self.chan.flush()
        except OSError:
            self.broken = True
            return False, ("the student's process has died", [])
        msg = self._read(limit)
        if msg is None or msg.get("id") != self.n:
            self.broken = True
        if msg is None:
            raise TimeoutError(f"time limit of {limit:g} s exceeded")
        if not msg.get("ok"):
            return False, (msg.get("error", "failed"), msg.get("raised", []))
        try:
            return True, codec.load(str(self.dir / f"res_{self.n}"))
        except Exception as exc:  # noqa: BLE001 - a result the student's code tampered with
            return False, (f"unreadable result ({type(exc).__name__}: {exc})", [])

    def close(self) -> None:
        if self.pid is not None:
            for kill in ((os.killpg,) if hasattr(os, "killpg") else ()) + (os.kill,):
                try:
                    kill(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if self.proc is not None:
            self.proc.wait()
        for f in (getattr(self, "chan", None), self.conn):
            try:
                f and f.close()
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------- grading

def run_check(worker: Worker, func: str, check: Check, rng_seed: int, limit: float) -> CheckResult:
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    args = check.make(rng)
    expected = check.reference(*args)       # never raises for a well-formed check, unless check.raises
    try:
        ok, got = worker.call(func, args, limit)
    except TimeoutError as exc:
        return CheckResult(check.name, check.tol, False, str(exc))
    if check.raises:
        if ok:
            return CheckResult(check.name, check.tol, False, f"returned instead of raising {check.raises}")
        return CheckResult(check.name, check.tol, check.raises in got[1],
                           "" if check.raises in got[1] else f"expected {check.raises}, got {got[0]}")
    if not ok:
        return CheckResult(check.name, check.tol, False, got[0])
    try:
        problem = check.compare(got, expected)
    except Exception as exc:  # noqa: BLE001 - a result of the wrong kind
        problem = f"cannot compare the result ({type(exc).__name__}: {exc})"
    return CheckResult(check.name, check.tol, problem is None, problem or "")


def grade(assignment: str, student_file, *, seed: int | None = None, time_limit: float = TIME_LIMIT,
          startup_limit: float = STARTUP_LIMIT, only: list[str] | None = None) -> Report:
    """Grade one student file; never raises for a bad student file (the Report says why, at 0 points)."""
    spec: Assignment = resolve(assignment)
    exercises = spec.exercises
    if only:
        unknown = sorted(set(only) - {e.name for e in exercises})
        if unknown:
            raise KeyError(f"{spec.name} has no exercise {unknown}; it has {[e.name for e in exercises]}")
        exercises = [e for e in exercises if e.name in only]
    seed = secrets.randbits(31) if seed is None else int(seed)
    results = [ExerciseResult(e.name, e.points) for e in exercises]
    report = Report(spec.name, str(student_file), seed, results)
    try:
        source = definitions(student_source(Path(student_file)), str(student_file))
        worker = Worker(source, spec.preload, startup_limit)
    except GradingError as exc:
        report.error = str(exc)
        for r, e in zip(results, exercises):
            r.checks = [CheckResult(c.name, c.tol, False, "not graded") for c in e.checks]
        return report
    try:
        for i, (r, e) in enumerate(zip(results, exercises)):
            for j, check in enumerate(e.checks):
                if worker.broken:          # timed out or died: the rest of this exercise earns nothing anyway
                    r.checks.append(CheckResult(check.name, check.tol, False, "not run (an earlier check of "
                                                "this exercise timed out or crashed)"))
                    continue
                r.checks.append(run_check(worker, e.func, check, seed + 1000 * i + j, time_limit))
            if worker.broken and i + 1 < len(exercises):
                worker.close()             # a fresh process for the next exercise
                try:
                    worker = Worker(source, spec.preload, startup_limit)
                except GradingError as exc:
                    report.error = str(exc)
                    for rr, ee in zip(results[i + 1:], exercises[i + 1:]):
                        rr.checks = [CheckResult(c.name, c.tol, False, "not graded") for c in ee.checks]
                    break
    finally:
        worker.close()
    return report


# ------------------------------------------------------------------------------------------------ CLI

def main(argv=None) -> int:
    from weightspace.__main__ import prog

    ap = argparse.ArgumentParser(prog=prog("grade"), description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__[__doc__.index("    python -m weightspace grade A1"):])
    ap.add_argument("assignment", nargs="?", help="an assignment's name or its prefix (A1, A2_mother, ...)")
    ap.add_argument("student_files", nargs="*", type=Path, metavar="STUDENT_FILE",
                    help="the students' .ipynb or .py files (several: one report each)")
    ap.add_argument("--seed", type=int, help="the inputs' seed (default: fresh; the report prints it)")
    ap.add_argument("--time-limit", type=float, default=TIME_LIMIT, help="seconds per check (default %(default)s)")
    ap.add_argument("--only", nargs="+", metavar="EXERCISE", help="grade only these exercises")
    ap.add_argument("--json", type=Path, help="also write the reports here (a JSON list)")
    ap.add_argument("-q", "--quiet", action="store_true", help="scores only, no per-check lines")
    ap.add_argument("--list", action="store_true", help="list the assignments and their exercises")
    args = ap.parse_args(argv)
    if args.list:
        for a in ASSIGNMENTS.values():
            print(f"{a.name}: " + ", ".join(f"{e.name} ({e.points})" for e in a.exercises))
        return 0
    if not args.assignment or not args.student_files:
        ap.print_usage(sys.stderr)
        print(f"{ap.prog}: error: give an ASSIGNMENT and a STUDENT_FILE (or --list)", file=sys.stderr)
        return 2
    if args.time_limit <= 0:
        print(f"{ap.prog}: error: --time-limit must be > 0", file=sys.stderr)
        return 2
    reports = []
    for path in args.student_files:
        try:
            report = grade(args.assignment, path, seed=args.seed, time_limit=args.time_limit, only=args.only)
        except KeyError as exc:
            print(f"{ap.prog}: error: {exc.args[0]}", file=sys.stderr)
            return 2
        print(report.format(verbose=not args.quiet))
        reports.append(report)
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in reports], indent=1) + "\n")
    return 1 if any(r.error for r in reports) else 0
