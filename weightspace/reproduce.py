"""Run the numbered notebooks in order with papermill, for one preset.

    python -m weightspace reproduce --preset default            # what `make reproduce` runs
    python -m weightspace reproduce --preset tiny --only 00 01  # a few notebooks, small
    python -m weightspace reproduce --preset tiny --out /tmp/ws # everything under one folder

Executed copies go to runs/<preset>/ (git-ignored); zoos to zoos/<preset>/. The default preset writes
figures/ and results/ (the committed ones); other presets write runs/<preset>/figures and .../results,
so a quick run never overwrites the gallery.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import presets


class NotebookFailed(RuntimeError):
    pass


def repo_root(start: Path | None = None) -> Path:
    """The folder holding notebooks/: the working directory if it has one, else the package's parent."""
    for cand in ([start] if start else []) + [Path.cwd(), Path(__file__).resolve().parents[1]]:
        if cand and (cand / "notebooks").is_dir():
            return cand.resolve()
    raise FileNotFoundError("cannot find the notebooks/ folder; run from the repository root or pass --root")


def numbered_notebooks(notebooks_dir: Path) -> list[Path]:
    return sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))


def select(notebooks: list[Path], only: list[str] | None) -> list[Path]:
    """The notebooks named by `only`: each name is a notebook's name or a prefix of exactly one (e.g. "03")."""
    if only is None:
        return notebooks
    if not only:
        raise ValueError("--only needs at least one notebook name or number")
    chosen = []
    have = [p.stem for p in notebooks]
    for name in only:
        name = str(name).strip()
        if not name:
            raise ValueError(f"--only got an empty name; have {have}")
        exact = [p for p in notebooks if p.stem == name]
        hits = exact or [p for p in notebooks if p.stem.startswith(name)]
        if not hits:
            raise ValueError(f"--only {name!r} matches no notebook; have {have}")
        if len(hits) > 1:
            raise ValueError(f"--only {name!r} is ambiguous: it matches {[p.stem for p in hits]}; "
                             "give the two-digit number or the whole name")
        chosen += [h for h in hits if h not in chosen]
    return [p for p in notebooks if p in chosen]


def output_dirs(root: Path, preset: str, out: Path | None) -> dict[str, Path]:
    if out is not None:
        out = out.resolve()
        return dict(zoo_root=out / "zoos", figures_dir=out / "figures", results_dir=out / "results",
                    executed=out / "notebooks")
    gallery = preset == "default"
    return dict(zoo_root=root / "zoos" / preset,
                figures_dir=root / "figures" if gallery else root / "runs" / preset / "figures",
                results_dir=root / "results" if gallery else root / "runs" / preset / "results",
                executed=root / "runs" / preset)


def seed_dirs(dirs: dict[str, Path], seed: int | None) -> dict[str, Path]:
    """Where a run with `seed` writes: seed 0 (or no seed) where the preset writes, any other seed in a
    `seed-<n>` folder beside it (zoos under the zoo root, the rest under the executed notebooks' folder)."""
    if not seed:
        return dict(dirs)
    base = dirs["executed"] / f"seed-{seed}"
    return dict(zoo_root=dirs["zoo_root"] / f"seed-{seed}", figures_dir=base / "figures",
                results_dir=base / "results", executed=base)


def _label(stem: str, seed: int | None) -> str:
    return stem if seed is None else f"{stem}@seed{seed}"


def notebook_parameters(path: Path) -> dict:
    import papermill

    return papermill.inspect_notebook(str(path))


def _declared_value(spec: dict):
    import ast

    try:
        return ast.literal_eval(spec.get("default", "None"))
    except (ValueError, SyntaxError):
        return None


def _compatible(value, default) -> bool:
    """Does `value` fit a parameter whose default is `default` (None, i.e. unknown: anything fits)?"""
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return False
        kinds = {type(d) for d in default}
        return len(kinds) != 1 or all(_compatible(v, default[0]) for v in value)
    return isinstance(value, type(default))


def coerce_parameter(name: str, value, spec: dict, notebook: str, raw: bool = False):
    """A command-line `-p NAME VALUE` (raw=True: a string) or a Python value, checked against the type of the
    notebook's own default: strings stay strings, everything else must be a Python literal of that type."""
    import ast

    default = _declared_value(spec)
    shown = value
    if raw and not isinstance(default, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"-p {name} {value!r}: not a Python literal, but {notebook} expects "
                             f"{type(default).__name__} (its default: {spec.get('default')})") from None
    if not _compatible(value, default):
        raise ValueError(f"-p {name} {shown!r}: {notebook} expects {type(default).__name__} like its default "
                         f"{spec.get('default')}, got {type(value).__name__}")
    return value


TIMINGS = "timings.json"   # beside the executed notebooks: each notebook's last run time, for the estimates


def _last_timings(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
        return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


def _atomic_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ what each notebook reads

def declared_io(path: Path) -> tuple[list[str], list[str]]:
    """(reads, writes) a notebook declares in its metadata, `weightspace: {reads: [...], writes: [...]}`:
    "zoo/<name>" is a folder under zoo_root, "results/<notebook>" another notebook's results file. Every
    notebook also writes "results/<its own name>"."""
    import nbformat

    meta = nbformat.read(str(path), as_version=4).metadata.get("weightspace", {}) or {}
    reads, writes = list(meta.get("reads", [])), list(meta.get("writes", []))
    for item in reads + writes:
        if not isinstance(item, str) or item.split("/", 1)[0] not in ("zoo", "results") or "/" not in item:
            raise ValueError(f"{path}: metadata weightspace.reads/writes entry {item!r} is not 'zoo/<name>' "
                             "or 'results/<notebook>'")
    return reads, writes + [f"results/{path.stem}"]


def _makers(all_notebooks: list[Path]) -> tuple[dict[str, tuple[list[str], list[str]]], dict[str, str]]:
    """Every notebook's (reads, writes), and {item: the notebook that writes it} (one writer per item)."""
    io = {nb.stem: declared_io(nb) for nb in all_notebooks}
    maker: dict[str, str] = {}
    for stem, (_, writes) in io.items():
        for item in writes:
            if item in maker and maker[item] != stem:
                raise ValueError(f"{item!r} is written by both {maker[item]} and {stem}")
            maker[item] = stem
    return io, maker


def dependencies(all_notebooks: list[Path], chosen: list[Path]) -> dict[str, set[str]]:
    """{notebook: the chosen notebooks it must wait for}: those that write what it reads. What a notebook
    reads from one that is not chosen must already be there (checked by `missing_inputs`)."""
    io, maker = _makers(all_notebooks)
    names = {nb.stem for nb in chosen}
    deps = {}
    for nb in chosen:
        reads, _ = io[nb.stem]
        unknown = [r for r in reads if r not in maker]
        if unknown:
            raise ValueError(f"{nb.name} reads {unknown}, which no notebook writes")
        deps[nb.stem] = {maker[r] for r in reads if maker[r] in names and maker[r] != nb.stem}
    return deps


def missing_inputs(all_notebooks: list[Path], chosen: list[Path], dirs: dict[str, Path]) -> list[str]:
    """What a chosen notebook reads from a notebook that is not chosen and has not made it yet."""
    io, maker = _makers(all_notebooks)
    names = {nb.stem for nb in chosen}
    out = []
    for nb in chosen:
        for item in io[nb.stem][0]:
            kind, name = item.split("/", 1)
            if maker[item] in names:
                continue
            where = dirs["zoo_root"] / name if kind == "zoo" else dirs["results_dir"] / f"{name}.json"
            if not where.exists():
                out.append(f"{nb.name} reads {where}, made by {maker[item]}: add it to --only, or run it first")
    return out


def _critical_path(deps: dict[str, set[str]], seconds: dict[str, float]) -> dict[str, float]:
    """Each notebook's own time plus the longest chain of notebooks waiting on it (unknown times: 60 s)."""
    after = {s: [t for t, d in deps.items() if s in d] for s in deps}
    memo: dict[str, float] = {}

    def length(s):
        if s not in memo:
            memo[s] = seconds.get(s, 60.0) + max((length(t) for t in after[s]), default=0.0)
        return memo[s]

    return {s: length(s) for s in deps}


# ------------------------------------------------------------------------------------------- execution

NICE = 10   # niceness of a notebook started off the longest remaining chain (CFS gives it ~1/10 of a busy core)


def execute_notebook(nb: str, executed: str, params: dict, progress: bool = False, nice: int = 0) -> dict:
    """Run one notebook with papermill (what every executor runs); returns its wall and CPU seconds (of the
    kernel and the processes it waited for) and, when a cell failed, the error instead of raising it, so
    the message crosses any executor intact. `nice` > 0 runs its kernel at that lower CPU priority
    ($WEIGHTSPACE_NICE, applied when the kernel imports weightspace)."""
    import resource

    import papermill
    from papermill.exceptions import PapermillExecutionError

    for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                 ("MPLBACKEND", "module://matplotlib_inline.backend_inline")):
        os.environ.setdefault(k, v)
    if nice > 0:
        os.environ["WEIGHTSPACE_NICE"] = str(int(nice))
    else:
        os.environ.pop("WEIGHTSPACE_NICE", None)
    t0, c0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    error = None
    try:
        papermill.execute_notebook(nb, executed, parameters=params, cwd=str(Path(nb).parent),
                                   progress_bar=progress, kernel_name="python3", language="python")
    except PapermillExecutionError as e:
        error = (f"{Path(nb).name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
                 f"{e.ename}: {e.evalue}\nexecuted copy with the traceback: {executed}")
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return dict(seconds=time.time() - t0, cpu_seconds=(c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime),
                error=error)


def run(preset: str = "default", only: list[str] | None = None, out: Path | None = None,
        root: Path | None = None, overrides: dict | None = None, progress: bool = True,
        log=print, raw_overrides: bool = False, parallel: int = 1, executor: str | None = None,
        seeds: list[int] | None = None, **executor_options) -> list[tuple[str, float]]:
    """Execute the notebooks; returns [(notebook, seconds)] in the order they finished. Raises NotebookFailed
    naming notebook and cell (with `parallel`, after the notebooks that do not depend on it have run).

    `overrides` set parameters of every selected notebook that declares them (an override no selected
    notebook declares is an error), checked against the type of each notebook's default; `raw_overrides`:
    the values are command-line strings (parsed as Python literals unless the parameter is a string).
    Nothing is created or run before every parameter of every notebook has been checked.

    `parallel`: run up to this many notebooks at once, each as soon as the notebooks that write what it
    reads (`declared_io`) are done, longest chain first, through `executor` ("local" process pool, "dask",
    "slurm": the zoo builders' executors, weightspace.zoo.jobs.make_executor; `executor_options` go to it).
    Each notebook keeps its own `workers` and one thread per process, so the OS shares the cores.

    `seeds`: run every notebook once per seed (its `seed` parameter; each seed but 0 gets its own zoos,
    figures and results under `seed_dirs`), then write `seeds.json` (weightspace.seeds: mean ± sd of every
    number, how many seeds each claim holds in) beside seed 0's results, which the gallery shows."""
    if preset not in presets.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {presets.names()}")
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise ValueError(f"parallel={parallel!r}: give a whole number of notebooks >= 1")
    if seeds is not None:
        if not seeds or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds) \
                or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds={seeds!r}: give distinct whole numbers >= 0")
        if "seed" in (overrides or {}):
            raise ValueError("give the seeds with --seeds, not with -p seed")
    root = repo_root(root)
    every = numbered_notebooks(root / "notebooks")
    chosen = select(every, only)
    dirs = output_dirs(root, preset, out)
    runs = list(seeds) if seeds is not None else [None]
    dirs_of = {r: seed_dirs(dirs, r) for r in runs}

    # check every parameter before running anything, so a typo fails in a second, not after an hour
    plans, used = {}, set()
    overrides = dict(overrides or {})
    for nb in chosen:
        declared = notebook_parameters(nb)
        if seeds is not None and "seed" not in declared:
            raise ValueError(f"--seeds: {nb.name} has no `seed` parameter, so its runs would all be the same")
        for r in runs:
            d = dirs_of[r]
            params = {"preset": preset, **{k: str(d[k]) for k in ("zoo_root", "figures_dir", "results_dir")},
                      **presets.parameters(preset, nb.stem)}
            unknown = sorted(set(params) - set(declared))
            if unknown:
                raise ValueError(f"{nb}: preset {preset!r} sets parameter(s) {unknown} that the notebook's "
                                 f"`parameters` cell does not declare (it has {sorted(declared)})")
            for name, value in overrides.items():
                if name in declared:
                    params[name] = coerce_parameter(name, value, declared[name], nb.name, raw=raw_overrides)
                    used.add(name)
            if r is not None:
                params["seed"] = r
            plans[_label(nb.stem, r)] = (nb, params, d)
    unused = sorted(set(overrides) - used)
    if unused:
        raise ValueError(f"-p {', '.join(unused)}: no selected notebook declares "
                         f"{'this parameter' if len(unused) == 1 else 'these parameters'} "
                         f"(notebooks: {[nb.stem for nb in chosen]})")
    by_stem = dependencies(every, chosen)
    deps = {_label(nb.stem, r): {_label(d, r) for d in by_stem[nb.stem]} for nb in chosen for r in runs}
    missing = [m for r in runs for m in missing_inputs(every, chosen, dirs_of[r])]
    if missing:
        raise ValueError("; ".join(missing))
    for d in (x for r in runs for x in dirs_of[r].values()):
        d.mkdir(parents=True, exist_ok=True)

    record = dirs["executed"] / TIMINGS
    # this machine's last run, else the times the committed results were made in (results/timings.json),
    # so a clean clone still starts the longest chain first
    shipped = dirs["results_dir"] / TIMINGS
    last = {**_last_timings(shipped), **_last_timings(record)}
    order = list(plans)
    chain = _critical_path(deps, {k: last[plans[k][0].stem] for k in plans if plans[k][0].stem in last})
    if parallel > 1:
        order.sort(key=lambda s: -chain[s])
    log(f"weightspace reproduce: preset {preset!r}, {len(plans)} notebook(s)"
        + (f", up to {parallel} at once" if parallel > 1 else "") + (f" through the {executor or 'local'} executor"
                                                                     if parallel > 1 or executor else ""))
    start = time.time()
    timings, failed, skipped, running, nices = [], {}, [], {}, {}

    stem_of = lambda label: plans[label][0].stem

    def priority(stem) -> int:
        """0 for a notebook on the longest chain still to run (the run's length), NICE for the others,
        which then fill the cores it leaves idle instead of slowing it down. A running notebook's chain
        counts what is left of it (its estimate less the time it has run)."""
        now = time.time()
        rest = [chain[s] - (now - running[s] if s in running else 0.0)
                for s in order if s not in dict(timings) and s not in failed and s not in skipped and s != stem]
        return 0 if chain[stem] >= max(rest, default=0.0) else NICE

    def started(stem, nice=0):
        prev = lambda s: last.get(stem_of(s))
        left = [prev(s) for s in order if s not in running and s not in dict(timings) and s not in skipped
                and s not in failed and prev(s) is not None]
        unknown = sum(1 for s in order if prev(s) is None and s not in dict(timings))
        eta = (f"; last run {prev(stem) / 60:.1f} min" if prev(stem) is not None else "") + (
            f", about {(sum(left) + sum(prev(s) or 0 for s in running)) / 60 / parallel:.0f} min left"
            if not unknown else "")
        n = len(timings) + len(failed) + len(skipped) + len(running)
        low = "; low priority: off the longest chain" if nice else ""
        log(f"▶ [{n}/{len(plans)}] {stem}.ipynb (elapsed {(time.time() - start) / 60:.1f} min{eta}{low})")

    def finished(stem, res):
        if res["error"]:
            failed[stem] = res["error"]
            log(f"✘ {stem}.ipynb failed after {res['seconds'] / 60:.1f} min")
            return
        timings.append((stem, res["seconds"]))
        # the estimate of a notebook's own time: its wall time, or, if it ran at low priority (and so took
        # the cores only when the chain left them), its CPU time, whichever is less
        last[stem_of(stem)] = min(res["seconds"], res["cpu_seconds"]) if nices.get(stem) else res["seconds"]
        _atomic_json(record, last)
        if not seeds or not plans[stem][1].get("seed"):
            _atomic_json(shipped, {**_last_timings(shipped), stem_of(stem): round(last[stem_of(stem)], 1)})
        cores = res["cpu_seconds"] / res["seconds"] if res["seconds"] > 0 else 0.0
        log(f"✔ {stem}.ipynb in {res['seconds'] / 60:.1f} min (CPU {res['cpu_seconds'] / 60:.1f} min, "
            f"{cores:.1f} cores) — executed copy: {plans[stem][2]['executed'] / (stem_of(stem) + '.ipynb')}")

    args = lambda s: (str(plans[s][0]), str(plans[s][2]["executed"] / plans[s][0].name), plans[s][1])
    if parallel == 1 and executor is None:
        for stem in order:
            if deps[stem] & (set(failed) | set(skipped)):
                skipped.append(stem)
                continue
            running[stem] = time.time()
            started(stem)
            res = execute_notebook(*args(stem), progress=progress)
            del running[stem]
            finished(stem, res)
            if res["error"]:
                break
    else:
        from weightspace.zoo.jobs import make_executor, wait_any

        pending: dict = {}
        with make_executor(executor or "local", parallel, **executor_options) as ex:
            todo = list(order)
            while todo or pending:
                for stem in [s for s in todo if deps[s] & (set(failed) | set(skipped))]:
                    todo.remove(stem)
                    skipped.append(stem)
                for stem in [s for s in todo if deps[s] <= {t for t, _ in timings}]:
                    if len(pending) >= parallel:
                        break
                    todo.remove(stem)
                    nice = nices[stem] = priority(stem)
                    running[stem] = time.time()
                    started(stem, nice)
                    pending[ex.submit(execute_notebook, *args(stem), nice=nice)] = stem
                if not pending:
                    break
                for fut in wait_any(pending):
                    stem = pending.pop(fut)
                    del running[stem]
                    try:
                        res = fut.result()
                    except Exception as e:  # a worker that died, a cluster that went away
                        res = dict(seconds=0.0, cpu_seconds=0.0,
                                   error=f"{stem}.ipynb: the executor failed: {type(e).__name__}: {e}")
                    finished(stem, res)
    from .gallery import write_gallery

    if seeds is not None and len(seeds) > 1 and not failed:
        from .seeds import write_seed_summary

        summary = write_seed_summary(dirs_of[runs[0]]["results_dir"], {r: dirs_of[r]["results_dir"] for r in runs})
        log(f"over seeds {runs}: {summary}")
    for r in runs[1:]:
        write_gallery(dirs_of[r]["figures_dir"], dirs_of[r]["results_dir"], preset)
    gallery = write_gallery(dirs_of[runs[0]]["figures_dir"], dirs_of[runs[0]]["results_dir"], preset)
    log(f"gallery: {gallery}")
    if failed:
        not_run = [s for s in order if s not in dict(timings) and s not in failed]
        raise NotebookFailed("\n".join(failed.values())
                             + (f"\nnot run, waiting on a failed notebook: {', '.join(not_run)}" if not_run else ""))
    log(f"done in {(time.time() - start) / 60:.1f} min (notebook time {sum(t for _, t in timings) / 60:.1f} min). "
        f"figures: {dirs_of[runs[0]]['figures_dir']}  results: {dirs_of[runs[0]]['results_dir']}")
    return timings


def main(argv=None) -> int:
    from weightspace.__main__ import prog

    ap = argparse.ArgumentParser(prog=prog("reproduce"), description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default", help=f"one of {presets.names()} (default: default)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks (name or number prefix)")
    ap.add_argument("--out", type=Path, help="put zoos, figures, results and executed notebooks under this folder")
    ap.add_argument("--root", type=Path, help="repository root (default: the one holding notebooks/)")
    ap.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                    help="set one parameter of every selected notebook that has it (a Python literal of the "
                         "notebook's type; strings as they are)")
    ap.add_argument("--parallel", type=int, default=1, metavar="N",
                    help="run up to N notebooks at once, in dependency order (default 1: one after another)")
    ap.add_argument("--executor", choices=["local", "dask", "slurm"], default=None,
                    help="where parallel notebooks run: a local process pool (default), a Dask cluster "
                         "(--address, or a local one), SLURM through submitit")
    ap.add_argument("--address", help="with --executor dask: the scheduler's address (default: a local cluster)")
    ap.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                    help="run every notebook once per seed; mean ± sd of every number in results/seeds.json "
                         "and the gallery (seed 0 writes where a plain run does)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    overrides = dict(args.param)
    options = {"address": args.address} if args.address else {}
    try:
        run(args.preset, args.only, args.out, args.root, overrides, progress=not args.no_progress,
            raw_overrides=True, parallel=args.parallel, executor=args.executor, seeds=args.seeds, **options)
    except (NotebookFailed, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
