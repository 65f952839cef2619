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


def run(preset: str = "default", only: list[str] | None = None, out: Path | None = None,
        root: Path | None = None, overrides: dict | None = None, progress: bool = True,
        log=print, raw_overrides: bool = False) -> list[tuple[str, float]]:
    """Execute the notebooks; returns [(notebook, seconds)]. Raises NotebookFailed naming notebook and cell.

    `overrides` set parameters of every selected notebook that declares them (an override no selected
    notebook declares is an error), checked against the type of each notebook's default; `raw_overrides`:
    the values are command-line strings (parsed as Python literals unless the parameter is a string).
    Nothing is created or run before every parameter of every notebook has been checked."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if preset not in presets.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {presets.names()}")
    root = repo_root(root)
    chosen = select(numbered_notebooks(root / "notebooks"), only)
    dirs = output_dirs(root, preset, out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    # check every parameter before running anything, so a typo fails in a second, not after an hour
    plans, used = [], set()
    overrides = dict(overrides or {})
    for nb in chosen:
        declared = notebook_parameters(nb)
        params = {"preset": preset, **{k: str(dirs[k]) for k in ("zoo_root", "figures_dir", "results_dir")},
                  **presets.parameters(preset, nb.stem)}
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise ValueError(f"{nb}: preset {preset!r} sets parameter(s) {unknown} that the notebook's "
                             f"`parameters` cell does not declare (it has {sorted(declared)})")
        for name, value in overrides.items():
            if name in declared:
                params[name] = coerce_parameter(name, value, declared[name], nb.name, raw=raw_overrides)
                used.add(name)
        plans.append((nb, params))
    unused = sorted(set(overrides) - used)
    if unused:
        raise ValueError(f"-p {', '.join(unused)}: no selected notebook declares "
                         f"{'this parameter' if len(unused) == 1 else 'these parameters'} "
                         f"(notebooks: {[nb.stem for nb in chosen]})")
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)

    timings = []
    record = dirs["executed"] / TIMINGS
    last = _last_timings(record)
    log(f"weightspace reproduce: preset {preset!r}, {len(plans)} notebook(s)")
    start = time.time()
    for i, (nb, params) in enumerate(plans, 1):
        executed = dirs["executed"] / nb.name
        known = [last[p.stem] for p, _ in plans[i - 1:] if p.stem in last]
        eta = (f"; last run {last[nb.stem] / 60:.1f} min" if nb.stem in last else "") + (
            f", about {sum(known) / 60:.0f} min left" if len(known) == len(plans) - i + 1 else "")
        log(f"▶ [{i}/{len(plans)}] {nb.name} (elapsed {(time.time() - start) / 60:.1f} min{eta})")
        t0 = time.time()
        try:
            papermill.execute_notebook(str(nb), str(executed), parameters=params, cwd=str(nb.parent),
                                       progress_bar=progress, kernel_name="python3", language="python")
        except PapermillExecutionError as e:
            raise NotebookFailed(f"{nb.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
                                 f"{e.ename}: {e.evalue}\nexecuted copy with the traceback: {executed}") from None
        dt = time.time() - t0
        timings.append((nb.stem, dt))
        last[nb.stem] = dt
        _atomic_json(record, last)
        log(f"✔ {nb.name} in {dt / 60:.1f} min — executed copy: {executed}")
    from .gallery import write_gallery

    gallery = write_gallery(dirs["figures_dir"], dirs["results_dir"], preset)
    total = sum(t for _, t in timings)
    log(f"gallery: {gallery}")
    log(f"done in {total / 60:.1f} min. figures: {dirs['figures_dir']}  results: {dirs['results_dir']}")
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
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    overrides = dict(args.param)
    try:
        run(args.preset, args.only, args.out, args.root, overrides, progress=not args.no_progress,
            raw_overrides=True)
    except (NotebookFailed, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
