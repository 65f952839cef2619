"""Fault injection: the zoo format's integrity claims, tried systematically on tiny zoos.

1. Kill at every write point (tests/faults.py): a tiny build fails at the k-th write point (raised in-process
   for every k, a real SIGKILL of a child process for a sample); the re-run must complete, verify, equal a
   clean build byte for byte, retrain no finished model and leave nothing else behind.
2. Damage every file kind (model files, an asset, zoo.json, models.jsonl, the layer cache) in every way
   (truncate, flip bytes in the header / the data, delete, replace by a directory, by a symlink out of the
   zoo): every read path must raise a clear error naming the file, or repair -- never return wrong numbers,
   and a command line never shows a raw traceback.
3. Fuzz the table and the manifest with seeded random edits: Zoo.open and the `zoo` command line only ever
   fail with ZooError (exit 1 and a message), and never read, move or touch a file outside the zoo.

4. Faults while repairing: a damaged root or leaf, the builder's repair stopped at each of its write points.
5. Builder parameters: clearly bad values are refused by name before anything is written.

Cases that fail on today's main are strict xfails naming the defect, so they turn red when it is fixed.
The sweeps (1, 4) are marked `slow`. The number of cases tried is printed:
    pytest tests/test_faults.py -s | grep -F '[faults]'
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import faults
from faults import InjectedFault, model_writes, snapshot, write_points

from weightspace.zoo import Zoo, ZooError
from weightspace.zoo.format import CACHE_DIR, MANIFEST, TABLE

# 2 trees x (1 root + 3 fine-tunes), 2 fine-tunes per job: 6 jobs, 8 models, ~1 s a build
FAULT_TREES = {"n_trees": 2, "n_per_tree": 3, "root_steps": 4, "steps": [2, 3], "chunk": 2, "split": [0.34, 0.33, 0.33]}
N_KILLS = 6            # write points also tried with a real SIGKILL of a child process
COUNTS: dict[str, int] = {}


def _report(name, n):
    COUNTS[name] = n
    print(f"\n[faults] {name}: {n}")


def _chain(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean tiny build: its folder, the snapshot of every file, and the write points it passes."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("clean") / "zoo"
    with write_points() as points:
        faults.build(path, FAULT_TREES)
    return {"path": path, "files": snapshot(path), "points": list(points.seen)}


# ================================================================================== 1. kill at every write

def _resume_and_check(path, clean) -> dict[str, str]:
    """Re-run the build after a fault at `path`; {check: problem} for each check that failed."""
    problems = {}
    before = snapshot(path)
    finished = {rel for rel, sha in before.items()
                if rel.startswith("models/") and rel.endswith(".safetensors") and clean["files"].get(rel) == sha}
    try:
        with model_writes() as written:
            faults.build(path, FAULT_TREES)
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        problems["resume"] = f"the re-run raised {type(e).__name__}: {e}"
        return problems
    try:
        Zoo.open(path).verify()
    except ZooError as e:
        problems["resume"] = f"the resumed zoo does not open or verify: {e}"
    after = snapshot(path)
    wanted = {k: v for k, v in clean["files"].items() if k.startswith("models/") or k == TABLE}
    wrong = sorted(k for k, v in wanted.items() if after.get(k) != v)
    if wrong:
        problems["identical"] = f"files differ from the clean build: {wrong}"
    retrained = sorted(m for m in written if f"models/{m}.safetensors" in finished)
    if retrained:
        problems["retrain"] = f"finished models written again: {retrained}"
    extra = sorted(set(after) - set(clean["files"]))
    if extra:
        problems["leftover"] = f"files a clean build does not have: {extra}"
    return problems


def _fault_in_process(k, path) -> None:
    with write_points(at=k):
        try:
            faults.build(path, FAULT_TREES)
        except Exception as e:
            if not any(isinstance(x, InjectedFault) for x in _chain(e)):
                raise
            return
    raise AssertionError(f"write point {k} was never reached")


def _fault_by_sigkill(k, path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(Path(faults.__file__)), str(path), str(k), json.dumps(FAULT_TREES)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -9, f"write point {k}: the child exited {proc.returncode}: {proc.stderr[-2000:]}"


@pytest.fixture(scope="module")
def kill_sweep(clean, tmp_path_factory):
    """{mode: [(k, point, file, problems)]}: every write point raised in-process, a sample SIGKILLed."""
    points = clean["points"]
    sample = sorted({round(i * (len(points) - 1) / (N_KILLS - 1)) for i in range(N_KILLS)})
    out = {"raise": [], "kill": []}
    for mode, ks, fault in (("raise", range(len(points)), _fault_in_process), ("kill", sample, _fault_by_sigkill)):
        for k in ks:
            path = tmp_path_factory.mktemp(f"{mode}{k}") / "zoo"
            fault(k, path)
            out[mode].append((k, *points[k], _resume_and_check(path, clean)))
            shutil.rmtree(path.parent)
    _report("write points of a tiny build", len(points))
    _report("kill points tried in-process (exception)", len(out["raise"]))
    _report("kill points tried with SIGKILL", len(out["kill"]))
    return out


def _create_points(clean) -> int:
    """How many write points Zoo.create passes (the manifest's and the empty table's writes)."""
    return 1 + next(i for i, p in enumerate(clean["points"]) if p == ("replace", TABLE))


def _failures(sweep, mode, check, points):
    return [f"point {k} ({kind} of {name}): {p[check]}" for k, kind, name, p in sweep[mode]
            if check in p and k in points]


def test_the_build_passes_every_kind_of_write_point(clean):
    kinds = {kind for kind, _ in clean["points"]}
    names = {name for _, name in clean["points"]}
    assert kinds == set(faults.POINTS)
    assert {MANIFEST, TABLE, "t0-root.safetensors", "t1-0002.safetensors"} <= names
    assert len(clean["points"]) == 3 * (2 + 8 + 6 + 1)      # create (manifest, table), 8 models, 6 records, layers
    assert _create_points(clean) == 6


CREATE_DEFECT = ("a build stopped inside Zoo.create cannot be resumed: models/ is made before zoo.json is written "
                 "(the re-run refuses the 'non-empty folder without zoo.json'), and a zoo.json without models.jsonl "
                 "is refused ('the models table is missing')")
TEMP_DEFECT = "the temporary file of a killed writer (.<name>.<pid>.tmp) is left in the zoo after the resume"


def _mode(mode, xfail=None):
    marks = [pytest.mark.slow] + ([pytest.mark.xfail(strict=True, reason=xfail)] if xfail else [])
    return pytest.param(mode, marks=marks)


def _check_sweep(kill_sweep, clean, mode, check, phase):
    n = _create_points(clean)
    points = range(n) if phase == "create" else range(n, len(clean["points"]))
    bad = _failures(kill_sweep, mode, check, points)
    tried = sum(k in points for k, *_ in kill_sweep[mode])
    assert tried and not bad, f"{len(bad)} of {tried} write points:\n" + "\n".join(bad)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [_mode("raise", CREATE_DEFECT), _mode("kill", CREATE_DEFECT)])
def test_a_build_stopped_while_creating_the_zoo_resumes(kill_sweep, clean, mode):
    _check_sweep(kill_sweep, clean, mode, "resume", "create")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", _mode("kill")])
def test_a_resumed_build_completes_and_verifies(kill_sweep, clean, mode):
    _check_sweep(kill_sweep, clean, mode, "resume", "build")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", _mode("kill")])
def test_a_resumed_build_equals_a_clean_one_byte_for_byte(kill_sweep, clean, mode):
    _check_sweep(kill_sweep, clean, mode, "identical", "build")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", _mode("kill")])
def test_a_resume_retrains_no_finished_model(kill_sweep, clean, mode):
    _check_sweep(kill_sweep, clean, mode, "retrain", "build")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", _mode("kill", TEMP_DEFECT)])
def test_a_resume_leaves_no_temporary_file_behind(kill_sweep, clean, mode):
    _check_sweep(kill_sweep, clean, mode, "leftover", "build")


# ============================================================================== 2. damage every file kind

LEAF, ROOT, LAYER, ASSET = "t0-0001", "t1-root", "blocks.0.attn.proj.weight", "base"
KINDS = ["model-leaf", "model-root", "asset", "manifest", "table", "cache"]
DAMAGES = ["truncate", "flip-header", "flip-data", "delete", "directory", "symlink-out"]


@pytest.fixture(scope="module")
def damage_ref(clean, tmp_path_factory):
    """The clean build plus an asset and a layer cache, and every value a read path returns from it."""
    path = tmp_path_factory.mktemp("damage-ref") / "zoo"
    shutil.copytree(clean["path"], path)
    zoo = Zoo.open(path)
    zoo.add_asset(ASSET, {"w": torch.arange(12.0).reshape(3, 4)})
    zoo.layer(LAYER)
    ids = zoo.ids
    _report("damage cases (file kinds x damages)", len(KINDS) * len(DAMAGES))
    _report("read paths tried on each damaged zoo", 2 * len(ids) + 2 + 6 + 1)
    return {"path": path, "files": snapshot(path), "ids": ids, "load": {i: zoo.load(i) for i in ids},
            "layer": zoo.layer(LAYER, cache=False), "asset": zoo.load_asset(ASSET),
            "model": {i: zoo.model(i).state_dict() for i in (LEAF, ROOT)}}


def _target(path: Path, kind: str) -> Path:
    if kind == "cache":
        return next((path / CACHE_DIR).rglob("*.safetensors"))
    return path / {"model-leaf": f"models/{LEAF}.safetensors", "model-root": f"models/{ROOT}.safetensors",
                   "asset": f"assets/{ASSET}.safetensors", "manifest": MANIFEST, "table": TABLE}[kind]


def _damage(p: Path, damage: str, outside: Path, ref) -> None:
    """Damage one file; a symlink out of the zoo points at a valid file of the same kind with other values
    (a sibling model, another asset or stack), or at a copy (the manifest and table)."""
    data = bytearray(p.read_bytes())
    binary = p.suffix == ".safetensors"
    if damage == "truncate":
        p.write_bytes(data[: len(data) // 2])
    elif damage.startswith("flip"):
        at = (8 + 2 if binary else 2) if damage == "flip-header" else (len(data) - 5 if binary else len(data) // 2)
        data[at] ^= 0xFF
        p.write_bytes(bytes(data))
    elif damage == "delete":
        p.unlink()
    elif damage == "directory":
        p.unlink()
        p.mkdir()
    elif damage == "symlink-out":
        outside.mkdir(exist_ok=True)
        other = outside / p.name
        if p.parent.name == "models":
            sibling = {f"{LEAF}.safetensors": "t0-0002", f"{ROOT}.safetensors": "t0-root"}[p.name]
            shutil.copy(ref["path"] / "models" / f"{sibling}.safetensors", other)
        elif binary:
            from weightspace.zoo.format import read_safetensors, write_safetensors

            write_safetensors(other, {k: v + 1 for k, v in read_safetensors(p).items()})
        else:
            other.write_bytes(bytes(data))
        p.unlink()
        p.symlink_to(other)


def _where(e: BaseException) -> str:
    """'Type: message (in file:line function)' at the innermost frame of the package."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/weightspace/" in f.filename] or \
        traceback.extract_tb(e.__traceback__)
    f = frames[-1]
    return f"{type(e).__name__}: {str(e)[:200]} (in {Path(f.filename).name}:{f.lineno} {f.name})"


def _call(fn):
    from weightspace.mother.layers import MotherError

    try:
        return "value", fn()
    except (ZooError, MotherError) as e:
        return "error", str(e)
    except Exception as e:  # noqa: BLE001 - a finding
        return "crash", _where(e)


def _cli(argv):
    """Run `python -m weightspace ARGV` in this process: ("exit", code, stderr) or ("crash", traceback)."""
    from weightspace.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as e:
        code = e.code
    except Exception as e:  # noqa: BLE001 - a raw traceback on the user's terminal
        return "crash", 0, _where(e)
    return "exit", code, err.getvalue()


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    return isinstance(b, dict) and set(a) == set(b) and all(_same(a[k], b[k]) for k in a)


def _damage_problems(path: Path, kind: str, name: str, ref) -> list[str]:
    """Every read path on the damaged zoo, judged: a clear error naming the damaged file `name`, the clean zoo's
    values, or a repair; the same problem of several paths is reported once."""
    model_kind = kind.startswith("model")
    damaged_id = {"model-leaf": LEAF, "model-root": ROOT}.get(kind)
    whole = kind in ("manifest", "table")          # everything reads these
    problems = []

    def judge(what, outcome, expected, depends):
        status, value = outcome
        if status == "crash":
            problems.append(f"{what}: raised {value}")
        elif status == "error":
            if name not in value:
                problems.append(f"{what}: the error does not name {name}: {value[:300]}")
        elif expected is not None and not _same(expected, value):
            problems.append(f"{what}: WRONG NUMBERS (differ from the clean zoo's)")
        elif depends:
            problems.append(f"{what}: returned without noticing the damaged {name}")

    opened = _call(lambda: Zoo.open(path))
    judge("Zoo.open", (opened[0], None) if opened[0] == "value" else opened, None, whole)
    for i in ref["ids"]:
        judge(f"zoo.load({i!r})", _call(lambda i=i: Zoo.open(path).load(i)), ref["load"][i], whole or i == damaged_id)
        judge(f"zoo.lazy({i!r})", _call(lambda i=i: dict(Zoo.open(path).lazy(i))), ref["load"][i],
              whole or i == damaged_id)
    for i in (LEAF, ROOT):
        judge(f"zoo.model({i!r})", _call(lambda i=i: Zoo.open(path).model(i).state_dict()), ref["model"][i],
              whole or i == damaged_id)
    judge("zoo.layer (cached)", _call(lambda: Zoo.open(path).layer(LAYER)), ref["layer"], whole or model_kind)
    judge("zoo.load_asset", _call(lambda: Zoo.open(path).load_asset(ASSET)), ref["asset"], whole or kind == "asset")
    verified = _call(lambda: Zoo.open(path).verify())
    judge("zoo.verify()", (verified[0], None) if verified[0] == "value" else verified, None,
          whole or model_kind or kind == "asset")
    for argv, depends in ((["zoo", "verify", str(path)], whole or model_kind or kind == "asset"),
                          (["zoo", "info", str(path)], whole),
                          (["mother", str(path), "--n-trees", "2"], whole or model_kind)):
        status, code, err = _cli(argv)
        what = "python -m weightspace " + " ".join(argv[:2])
        if status == "crash":
            problems.append(f"{what}: a raw traceback, {err}")
        elif "Traceback" in err:
            problems.append(f"{what}: printed a traceback\n{err[-1200:]}")
        elif code != 0 and name not in err:
            problems.append(f"{what}: exit {code} without naming {name}: {err[-300:]}")
        elif code == 0 and depends:
            problems.append(f"{what}: exit 0 on a zoo whose {name} is damaged")
    rebuilt = _call(lambda: faults.build(path, FAULT_TREES))
    if rebuilt[0] == "crash" or (rebuilt[0] == "error" and name not in rebuilt[1]):
        judge("re-running the builder", rebuilt, None, False)
    elif rebuilt[0] == "value":
        after = snapshot(path)
        wrong = sorted(k for k, v in ref["files"].items() if (k.startswith("models/") or k == TABLE)
                       and after.get(k) != v)
        fine = _call(lambda: Zoo.open(path).verify())
        if wrong or fine[0] != "value":
            problems.append(f"re-running the builder: did not repair the zoo (differs: {wrong}; "
                            f"verify: {fine[1] if fine[0] != 'value' else 'ok'})")
    grouped: dict[str, list[str]] = {}
    for p in problems:
        what, _, problem = p.partition(": ")
        grouped.setdefault(problem.replace(str(path), "<zoo>"), []).append(what.replace(str(path), "<zoo>"))
    return [f"{', '.join(whats)}: {problem}" for problem, whats in grouped.items()]


# (kind, damage) -> the defect that makes the case fail on today's main
STALE = "Zoo.layer serves the cached stack without checking the model files (stale cache served after damage)"
UNVERIFIED = ("Zoo.lazy (and so the MoTHer CLI) and Zoo.layer read model files without checking their sha256: "
              "wrong numbers, exit 0")
MODEL_DIR = ("a directory in place of a model file: sha256_file raises IsADirectoryError in Zoo.load / model / "
             "verify, `zoo verify` and the builder's resume (is_done); and the stale cache is served")
ASSET_VERIFY = "Zoo.verify and `zoo verify` do not check the assets' sha256 (recorded in the manifest)"
FOLLOWED = ("a zoo.json / models.jsonl that is a symlink out of the zoo is followed (model and asset paths are "
            "refused by `inside`, the manifest and table are not checked)")
TABLE_BYTES = "Zoo._read_table lets UnicodeDecodeError escape (not valid UTF-8): a raw traceback from every CLI"
TABLE_DIR = "a directory in place of models.jsonl: _read_table lets IsADirectoryError escape"
DAMAGE_XFAIL: dict[tuple[str, str], str] = {
    **{(k, d): STALE for k in ("model-leaf", "model-root") for d in ("truncate", "flip-header", "delete")},
    **{(k, "flip-data"): UNVERIFIED for k in ("model-leaf", "model-root")},
    **{(k, "directory"): MODEL_DIR for k in ("model-leaf", "model-root")},
    **{("asset", d): ASSET_VERIFY for d in ("truncate", "flip-header", "flip-data", "delete")},
    ("asset", "directory"): ASSET_VERIFY + "; and load_asset raises IsADirectoryError",
    ("manifest", "symlink-out"): FOLLOWED,
    ("table", "symlink-out"): FOLLOWED,
    ("table", "flip-header"): TABLE_BYTES,
    ("table", "flip-data"): TABLE_BYTES,
    ("table", "directory"): TABLE_DIR,
    ("cache", "flip-data"): "the layer cache is read without a checksum: a flipped byte gives wrong numbers",
    ("cache", "directory"): "a directory in place of a cache file: rebuilding it raises IsADirectoryError (os.replace)",
    ("cache", "symlink-out"): "a cache file that is a symlink out of the zoo is followed: wrong numbers",
}

DAMAGE_CASES = [pytest.param(k, d, marks=[pytest.mark.xfail(strict=True, reason=DAMAGE_XFAIL[k, d])]
                             if (k, d) in DAMAGE_XFAIL else []) for k in KINDS for d in DAMAGES]


@pytest.mark.parametrize("kind, damage", DAMAGE_CASES)
def test_damage_gives_a_clear_error_or_a_repair(damage_ref, tmp_path, kind, damage):
    path = tmp_path / "zoo"
    shutil.copytree(damage_ref["path"], path, symlinks=True)
    target = _target(path, kind)
    _damage(target, damage, tmp_path / "outside", damage_ref)
    problems = _damage_problems(path, kind, target.name, damage_ref)
    assert not problems, f"{kind} / {damage}:\n" + "\n".join(problems)


@pytest.mark.parametrize("kind, damage", [("model-leaf", "truncate"), ("manifest", "flip-data"),
                                          pytest.param("table", "flip-header",
                                                       marks=pytest.mark.xfail(strict=True, reason=TABLE_BYTES))])
def test_the_real_command_line_on_a_damaged_zoo(damage_ref, tmp_path, kind, damage):
    """`python -m weightspace zoo verify` in a child process: exit 1, a message naming the file, no traceback."""
    path = tmp_path / "zoo"
    shutil.copytree(damage_ref["path"], path, symlinks=True)
    target = _target(path, kind)
    _damage(target, damage, tmp_path / "outside", damage_ref)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "weightspace", "zoo", "verify", str(path)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and target.name in proc.stderr, proc.stderr[-2000:]


# ============================================================================ 3. fuzz the table and manifest

N_FUZZ = 400
_GUARD: dict = {"root": None, "fence": None, "hits": []}


def _guard_hook(event, args):
    """Audit hook: while a fuzz case runs, refuse (and record) any open / rename / removal of a file outside
    the zoo but inside the fenced folder, or of a device / system file."""
    root = _GUARD["root"]
    if root is None or event not in ("open", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.move",
                                     "shutil.rmtree", "os.utime", "os.chmod", "os.truncate", "shutil.copyfile"):
        return
    for a in args[:2]:
        if not isinstance(a, (str, bytes, os.PathLike)):
            continue
        p = os.path.realpath(os.fsdecode(a))
        if p == root or p.startswith(root + os.sep):
            continue
        if p.startswith((_GUARD["fence"] + os.sep, "/dev/", "/etc/", "/proc/", "/sys/")):
            _GUARD["hits"].append(f"{event} {p}")
            raise PermissionError(f"fault-injection guard: {event} of {p} outside the zoo")


@contextlib.contextmanager
def _fenced(root: Path, fence: Path):
    """Run a block with the guard on for the zoo `root` inside `fence`; safetensors' own (Rust) file opens are
    checked through format.safe_open."""
    from weightspace.zoo import format as fmt

    if not getattr(sys, "_weightspace_fault_guard", False):
        sys.addaudithook(_guard_hook)
        sys._weightspace_fault_guard = True
    real = fmt.safe_open

    def guarded_safe_open(path, *args, **kwargs):
        _guard_hook("open", (path,))
        return real(path, *args, **kwargs)

    _GUARD.update(root=os.path.realpath(root), fence=os.path.realpath(fence), hits=[])
    fmt.safe_open = guarded_safe_open
    try:
        yield _GUARD["hits"]
    finally:
        _GUARD["root"] = None
        fmt.safe_open = real


def _fuzz_values(victim: Path) -> list:
    deep = []
    for _ in range(60):
        deep = [deep]
    return [None, True, False, 0, -1, 1, 2 ** 63, 10 ** 40, -(10 ** 400), 1e308, math.nan, math.inf, -math.inf, 0.5,
            "", "x", "t0-root", "../../victim.txt", "../victim.txt", "models/../../victim.txt", str(victim),
            "/dev/zero", "/etc/passwd", "models/link.safetensors", "models", ".", "models/", "models/a.safetensors",
            "assets/base.safetensors", "zoo.json", "a\x00b", "a\nb", "é" * 3, "x" * 5000, "0" * 64, "f" * 64,
            [], [0], [1, 2], [39, 40], [-1], ["a"], [True], [[0]], {}, {"a": {"b": {"c": [1, None]}}}, deep]


def _mutate(rng: random.Random, rows: list, manifest: dict, values: list) -> tuple[list, object, list[str]]:
    """1-3 seeded random edits of the table rows and the manifest; returns (rows, manifest, what was done)."""
    rows = [dict(r) if isinstance(r, dict) else r for r in rows]
    manifest = json.loads(json.dumps(manifest))
    done = []
    keys = ["model_id", "parent_id", "tree_id", "depth", "split", "file", "sha256", "classes", "variant", "n"]
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["set", "set", "set", "delete", "extra", "shuffle", "duplicate", "not-an-object",
                         "drop", "m-set", "m-set", "m-delete", "m-extra", "m-nested", "m-nested", "m-whole"])
        v = rng.choice(values)
        dicts = [r for r in rows if isinstance(r, dict)]
        if op in ("set", "delete", "extra") and dicts:
            r, k = rng.choice(dicts), rng.choice(keys)
            if op == "set":
                r[k] = v
            elif op == "delete":
                r.pop(k, None)
            else:
                k = rng.choice(["x", "", "model_id ", "__proto__", "FILE", "a\x00b"])
                r[k] = v
            op = f"{op} {r.get('model_id')!r:.20}.{k}"
        elif op == "shuffle":
            rng.shuffle(rows)
        elif op == "duplicate" and rows:
            rows.insert(rng.randrange(len(rows) + 1), json.loads(json.dumps(rng.choice(rows))))
        elif op == "not-an-object" and rows:
            rows[rng.randrange(len(rows))] = rng.choice([x for x in values if not isinstance(x, dict)])
        elif op == "drop" and rows:
            rows.pop(rng.randrange(len(rows)))
        elif op in ("m-set", "m-delete", "m-extra") and isinstance(manifest, dict):
            k = rng.choice(sorted(manifest) + ["format", "version", "kind", "params"])
            if op == "m-extra":
                k = rng.choice(["x", "", "__class__", "Kind"])
            if op == "m-delete":
                manifest.pop(k, None)
            else:
                manifest[k] = v
            op = f"{op} {k}"
        elif op == "m-nested" and isinstance(manifest, dict):
            where = rng.choice([("labels", "column"), ("labels", "class_names"), ("labels", "per_model"),
                                ("architecture", "library"), ("architecture", "model_name"),
                                ("architecture", "kwargs"), ("architecture", "num_classes_column"),
                                ("architecture", "extra_prefixes"), ("assets", "base"), ("assets", "evil"),
                                ("assets", "base", "file"), ("assets", "base", "sha256"), ("layers", "w"),
                                ("lora", "up"), ("lora", "down"), ("params", "n")])
            node = manifest
            for key in where[:-1]:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
            node[where[-1]] = v
            op = "m-nested " + ".".join(where)
        elif op == "m-whole":
            manifest = v
        else:
            continue
        done.append(op if op.split()[0] in ("shuffle", "drop", "m-delete", "delete") else f"{op} = {str(v)[:40]!r}")
    return rows, manifest, done


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory):
    """{check: [failing case, ...]} over N_FUZZ seeded cases on a small zoo (no training)."""
    from conftest import toy_state_dict

    from weightspace.zoo.format import LORA_LAYOUT

    fence = tmp_path_factory.mktemp("fuzz")
    victim = fence / "victim.txt"
    victim.write_bytes(b"precious\n")
    os.utime(victim, ns=(10 ** 18, 10 ** 18))
    path = fence / "zoo"
    zoo = Zoo.create(path, kind="toy", builder="tests", params={"n": 4}, layers={"w": [6, 6]}, lora=LORA_LAYOUT,
                     labels={"column": "classes", "class_names": [f"c{i}" for i in range(40)]},
                     architecture={"library": "timm", "model_name": "vit_tiny_patch16_224", "kwargs": {}})
    zoo.add("t0-root", toy_state_dict(0), depth=0, split=None)
    zoo.add("a", toy_state_dict(1), parent_id="t0-root", depth=1, classes=[0, 2])
    zoo.add("b", toy_state_dict(2), parent_id="t0-root", depth=1, split="test", classes=[1])
    zoo.add("a1", toy_state_dict(3), parent_id="a", depth=2, split="val", classes=[3])
    zoo.add_asset("base", {"w": torch.zeros(3)})
    (path / "models" / "link.safetensors").symlink_to(victim)
    good_table, good_manifest = (path / TABLE).read_bytes(), (path / MANIFEST).read_bytes()
    rows = [json.loads(line) for line in good_table.decode().splitlines()]
    manifest = json.loads(good_manifest)
    around = sorted(p.name for p in fence.iterdir())
    stamp = victim.stat().st_mtime_ns
    values = _fuzz_values(victim)
    out = {"open": [], "verify": [], "cli": [], "outside": []}
    n_opened = 0
    for seed in range(N_FUZZ):
        new_rows, new_manifest, done = _mutate(random.Random(seed), rows, manifest, values)
        case = f"seed {seed}: {'; '.join(done)}"
        (path / TABLE).write_text("".join(json.dumps(r) + "\n" for r in new_rows))
        (path / MANIFEST).write_text(json.dumps(new_manifest))
        with _fenced(path, fence) as hits:
            opened = _call(lambda: Zoo.open(path))
            if opened[0] == "crash":
                out["open"].append(f"{case}: Zoo.open raised {opened[1]}")
            elif opened[0] == "value":
                n_opened += 1
                verified = _call(lambda z=opened[1]: z.verify(raise_errors=False))
                if verified[0] == "crash":
                    out["verify"].append(f"{case}: Zoo.verify raised {verified[1]}")
            for action in ("info", "verify"):
                status, code, err = _cli(["zoo", action, str(path)])
                if status == "crash":
                    out["cli"].append(f"{case}: zoo {action}: a raw traceback, {err}")
                elif code not in (0, 1) or (code == 1 and not err.startswith("error: ")):
                    out["cli"].append(f"{case}: zoo {action}: exit {code}, {err[:200]!r}")
        if hits:
            out["outside"].append(f"{case}: touched {hits}")
        if victim.read_bytes() != b"precious\n" or victim.stat().st_mtime_ns != stamp or \
                sorted(p.name for p in fence.iterdir()) != around:
            out["outside"].append(f"{case}: the canary or the zoo's surroundings changed")
            victim.write_bytes(b"precious\n")
            os.utime(victim, ns=(10 ** 18, 10 ** 18))
    (path / TABLE).write_bytes(good_table)
    (path / MANIFEST).write_bytes(good_manifest)
    Zoo.open(path).verify()
    _report("fuzz cases", N_FUZZ)
    _report("fuzz cases that still opened", n_opened)
    return out


def test_the_guard_catches_a_read_outside_the_zoo(tmp_path):
    """The fuzz's guard itself: a read of the canary beside the zoo, by Python or by safetensors, is caught."""
    from weightspace.zoo.format import read_safetensors, write_safetensors

    (tmp_path / "zoo").mkdir()
    write_safetensors(tmp_path / "victim.safetensors", {"w": torch.zeros(1)})
    with _fenced(tmp_path / "zoo", tmp_path) as hits:
        with pytest.raises(PermissionError):
            (tmp_path / "victim.safetensors").read_bytes()
        with pytest.raises(ZooError):
            read_safetensors(tmp_path / "victim.safetensors")
    assert len(hits) == 2 and all("victim.safetensors" in h for h in hits)


FUZZ_CHECKS = {
    "open": "Zoo.open raises only ZooError",
    "verify": "Zoo.verify of a zoo that opened raises only ZooError",
    "cli": "zoo info / zoo verify exit 0 or 1 with a message, never a traceback",
    "outside": "nothing outside the zoo is read, moved or touched",
}
NUL = "a path with a NUL byte (table `file` or an asset's file) raises ValueError in format.inside (Path.resolve)"
FUZZ_XFAIL: dict[str, str] = {"open": NUL, "cli": NUL}


@pytest.mark.parametrize("check", [pytest.param(c, marks=[pytest.mark.xfail(strict=True, reason=FUZZ_XFAIL[c])]
                                                if c in FUZZ_XFAIL else []) for c in FUZZ_CHECKS])
def test_fuzzed_table_and_manifest(fuzz_results, check):
    bad = fuzz_results[check]
    assert not bad, f"{FUZZ_CHECKS[check]}: {len(bad)} of {N_FUZZ} cases fail, e.g.\n" + "\n".join(bad[:8])


# ======================================================================= 4. faults while repairing a damaged zoo

PARENT_DEFECT = ("the resume quarantines a damaged parent and writes a table whose children name a parent that is "
                 "no longer in it: stopped before the parent is retrained, the zoo cannot be reopened")

ORDER_DEFECT = ("a repair stopped after the redone model is recorded leaves it at the end of the table; the next re-run "
                "has nothing to do and returns before `reorder`, so models.jsonl differs from a clean build's")


def _repair_sweep(clean, tmp_path, damaged: str) -> tuple[int, list[str]]:
    """Truncate `damaged` and stop the builder's repair at each of its write points; each time the zoo must
    reopen and a further re-run must give the clean build. Returns (points tried, problems)."""
    first = tmp_path / "first"
    shutil.copytree(clean["path"], first)
    f = first / "models" / f"{damaged}.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    probe = tmp_path / "probe"
    shutil.copytree(first, probe)
    with write_points() as points:
        faults.build(probe, FAULT_TREES)
    problems = []
    for k in range(len(points.seen)):
        path = tmp_path / f"k{k}"
        shutil.copytree(first, path)
        _fault_in_process(k, path)
        opened = _call(lambda p=path: Zoo.open(p))
        if opened[0] != "value":
            problems.append(f"point {k} ({points.seen[k][0]} of {points.seen[k][1]}): the zoo does not reopen: "
                            f"{str(opened[1]).replace(str(path), '<zoo>')[:300]}")
            continue
        more = _resume_and_check(path, clean)
        more.pop("leftover", None)          # in-process, the same writer's temporary file is reused
        problems += [f"point {k}: {v}" for v in more.values()]
    return len(points.seen), problems


@pytest.mark.slow
@pytest.mark.parametrize("damaged", [pytest.param(ROOT, marks=pytest.mark.xfail(strict=True, reason=PARENT_DEFECT)),
                                     pytest.param(LEAF, marks=pytest.mark.xfail(strict=True, reason=ORDER_DEFECT))])
def test_a_repair_stopped_at_any_write_point_leaves_a_zoo_that_reopens(clean, tmp_path, damaged):
    n, problems = _repair_sweep(clean, tmp_path, damaged)
    _report(f"write points of the repair of a damaged {damaged}", n)
    assert n >= 6 and not problems, f"{len(problems)} of {n} points:\n" + "\n".join(problems)


@pytest.mark.xfail(strict=True, reason="quarantine name collision: <name>.<int(time.time())> is reused within one "
                                      "second and shutil.move overwrites the earlier quarantined file")
def test_quarantine_never_overwrites_an_earlier_quarantined_file(clean, tmp_path, monkeypatch):
    """The same model damaged twice in one second: both damaged files are kept aside (quarantine never deletes)."""
    import time
    import types

    from weightspace.zoo import format as fmt

    monkeypatch.setattr(fmt, "time", types.SimpleNamespace(time=lambda: 1.7e9, strftime=time.strftime))
    path = tmp_path / "zoo"
    shutil.copytree(clean["path"], path)
    f = path / "models" / f"{LEAF}.safetensors"
    kept = []
    for cut in (1000, 2000):
        f.write_bytes(f.read_bytes()[:cut])
        kept.append(faults.sha256(f))
        faults.build(path, FAULT_TREES)
    assert faults.sha256(f) == clean["files"][f"models/{LEAF}.safetensors"]
    q = sorted(faults.sha256(p) for p in (path / ".quarantine").iterdir())
    assert q == sorted(kept), "a quarantined file was overwritten by a later one of the same name"


# ============================================================================ 5. builder parameters, fuzzed

BAD_PARAMS = [("n_trees", 0), ("n_trees", -1), ("n_trees", 1.5), ("n_trees", "2"), ("n_trees", None),
              ("n_per_tree", 0), ("n_per_tree", -3), ("n_per_tree", 2.5), ("root_steps", -1), ("root_steps", "4"),
              ("steps", [3, 2]), ("steps", [-1, 2]), ("steps", 5), ("steps", [1]), ("lr", [0.0, 1e-3]),
              ("lr", [-1e-3, 1e-2]), ("lr", [1e-2, 1e-3]), ("lr", [math.nan, 1e-3]), ("chunk", 0), ("chunk", -1),
              ("split", [0.5, 0.5, 0.5]), ("split", [1.0]), ("split", [-0.1, 0.6, 0.5]), ("batch_size", 0),
              ("schedules", ["nope"]), ("schedules", []), ("recipes", ["nope"]), ("recipes", []),
              ("seed", "x"), ("seed", 1.5), ("head_init_std", -1.0), ("styles", ["nope"]), ("vit", {"depth": -1})]


class _Accepted(Exception):
    pass


UNVALIDATED = ("builder parameters not validated: the bad value fails deep inside the plan or a job (IndexError, "
               "math domain error, ...) or is accepted and trained, not refused by name up front")


@pytest.mark.parametrize("name, value", [
    pytest.param(n, v, marks=[] if n == "styles" else [pytest.mark.xfail(strict=True, reason=UNVALIDATED)])
    for n, v in BAD_PARAMS])
def test_a_bad_builder_parameter_is_refused_by_name_before_anything_is_written(tmp_path, monkeypatch, name, value):
    from weightspace.zoo import jobs

    def accepted(*args, **kwargs):
        raise _Accepted(f"{name}={value!r} was accepted: a model is being written")

    monkeypatch.setattr(jobs, "write_model", accepted)
    outcome = _call(lambda: faults.build(tmp_path / "z", {**FAULT_TREES, name: value}))
    error = outcome[1] if outcome[0] == "crash" else ""
    assert error.startswith(("ValueError", "TypeError")) and name.rstrip("s") in error, \
        f"{name}={value!r}: {outcome[0]} {str(outcome[1])[:300]}"
    assert not (tmp_path / "z").exists(), f"{name}={value!r}: the zoo folder was created before the check"
