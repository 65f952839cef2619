"""Build a zoo as a DAG of jobs, level by level, on any concurrent.futures-shaped executor.

A job trains a group of models (usually many at once, with vmap) and writes their files into the zoo
folder; the driver records the rows they return. Roots come first, then their children, and so on.

Executors, all giving the same zoo bit for bit (jobs train with one thread, seeded from their spec):
  "local"   a process pool on this machine (default)
  "inline"  in this process, one job after another (debugging)
  "dask"    a Dask cluster (`distributed`): a LocalCluster, or `address="tcp://..."` of a running one
  "slurm"   SLURM through submitit (`cluster="local"` runs submitit's local executor, for tests)
or any object with `submit(fn, *args)` returning something with `.result()` and `.done()`.

Re-running resumes: models whose files are recorded and verified are skipped, files written by a
killed run are adopted from their own metadata, damaged files are moved aside and redone, and the temporary
files of dead writers are removed. Workers of the "local" pool exit when their driver dies (they watch its
pid), so a killed build leaves no process training into the zoo. A redone
model's descendants are set aside (never left in the table without their parent, so a run stopped at any
point leaves a zoo that opens) and re-adopted once it is rebuilt, if it has the bytes they were trained
from (`parent_sha256`, which every job-written row records).
"""
from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process  # noqa: F401  (BrokenProcessPool)
import contextlib
import logging
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from weightspace.runtime import torch_threads

from .format import MODELS_DIR, Zoo, ZooError, _check_hash, sha256_file, write_model

EXECUTORS = ("local", "inline", "dask", "slurm")


@dataclass(frozen=True)
class Job:
    """Train `model_ids` with `fn(spec, writer)`; `parents` are the model ids they start from.

    `fn` must be a module-level function (it is pickled to other processes) that calls
    `writer.write(model_id, tensors, row)` once per model. `cost` weights the progress bar: a root
    pre-trained for thousands of steps is not one model's worth of a fine-tune of a hundred.
    """

    fn: Callable
    spec: Mapping
    model_ids: tuple[str, ...]
    parents: tuple[str, ...] = ()
    name: str = ""
    cost: float | None = None      # its work, e.g. the training steps of its models: what the progress bar counts


@dataclass
class ModelWriter:
    """Handed to a job: writes model files into the zoo, skipping the ones already done."""

    zoo_path: str
    skip: frozenset = frozenset()
    rows: list = field(default_factory=list)
    _parent_sha: dict = field(default_factory=dict)

    def write(self, model_id: str, tensors: Mapping[str, torch.Tensor], row: Mapping, **file_options) -> None:
        """Write one model (file_options: write_model's folder, file_name, metadata), unless it is done."""
        if model_id in self.skip:
            return
        pid = row.get("parent_id")
        if pid is not None and "parent_sha256" not in row:
            if pid not in self._parent_sha:
                f = Path(self.zoo_path) / MODELS_DIR / f"{pid}.safetensors"
                self._parent_sha[pid] = sha256_file(f) if f.exists() else None
            if self._parent_sha[pid] is not None:
                row = {**row, "parent_sha256": self._parent_sha[pid]}
        self.rows.append(write_model(self.zoo_path, model_id, tensors, row, **file_options))


def _execute(fn, spec, zoo_path, skip, threads):
    """What runs on the worker: one job, with a fixed thread count so results do not depend on it."""
    writer = ModelWriter(zoo_path, frozenset(skip))
    with torch_threads(threads):
        fn(spec, writer)
    return writer.rows


# ------------------------------------------------------------------------------------------ executors

def exit_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Pool initializer: a daemon thread ends this worker (os._exit) as soon as its driver `parent_pid` is
    gone, so a killed build leaves no worker training and writing into the zoo, or idling with torch loaded.
    It polls os.getppid(), which changes when an orphan is re-parented (every POSIX system); on Windows, where
    it does not, the pool's own broken-pipe handling is all there is."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    if os.name != "nt":
        threading.Thread(target=watch, name="exit-with-driver", daemon=True).start()


class InlineExecutor(cf.Executor):
    """Runs each job at submit time in this process."""

    max_in_flight = 1  # so the runner records each job before starting the next

    def submit(self, fn, /, *args, **kwargs):
        fut = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(e)
        return fut


class _SubmititExecutor:
    def __init__(self, folder, cluster=None, **params):
        import submitit

        self._ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params.setdefault("timeout_min", 60)
        self._ex.update_parameters(**params)

    def submit(self, fn, *args, **kwargs):
        return self._ex.submit(fn, *args, **kwargs)

    def shutdown(self, wait=True):
        pass


@contextlib.contextmanager
def make_executor(kind="local", workers: int | None = None, **options):
    """Yield an executor of the given kind (see the module docstring); shut it down afterwards."""
    if not isinstance(kind, str):
        yield kind
        return
    workers = workers or 2
    if kind == "inline":
        yield InlineExecutor()
    elif kind == "local":
        ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads can hang
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=exit_with_parent,
                                    initargs=(os.getpid(),)) as ex:
            yield ex
    elif kind == "dask":
        try:
            from distributed import Client, LocalCluster
        except ImportError as e:
            raise ImportError("executor 'dask' needs the dask extra: pip install 'weightspace[dask]'") from e
        address = options.get("address")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if address:
                client, cluster = Client(address), None
            else:
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
                client = Client(cluster)
        try:
            yield client.get_executor()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    elif kind == "slurm":
        try:
            import submitit  # noqa: F401
        except ImportError as e:
            raise ImportError("executor 'slurm' needs the slurm extra: pip install 'weightspace[slurm]'") from e
        opts = dict(options)
        folder = opts.pop("folder", None) or Path(".submitit")
        yield _SubmititExecutor(folder, **opts)
    else:
        raise ValueError(f"unknown executor {kind!r}; choose one of {EXECUTORS} or pass an executor object")


def wait_any(pending: dict):
    """Return the futures among `pending` that are done (blocking until at least one is)."""
    futs = list(pending)
    if all(isinstance(f, cf.Future) for f in futs):
        done, _ = cf.wait(futs, return_when=cf.FIRST_COMPLETED)
        return list(done)
    while True:
        done = [f for f in futs if f.done()]
        if done:
            return done
        time.sleep(0.2)


# ----------------------------------------------------------------------------------------------- runner

def job_levels(zoo: Zoo, jobs: list[Job]) -> list[list[Job]]:
    """Group jobs into levels: a job comes after every job that makes one of its parents."""
    maker: dict[str, int] = {}
    for j, job in enumerate(jobs):
        for mid in job.model_ids:
            if mid in maker:
                raise ZooError(f"{zoo.path}: duplicate model id {mid!r} (made by jobs "
                               f"{jobs[maker[mid]].name or maker[mid]!r} and {job.name or j!r})")
            maker[mid] = j
    level: dict[int, int] = {}

    def depth(j, stack=()):
        if j in level:
            return level[j]
        if j in stack:
            raise ZooError(f"{zoo.path}: jobs depend on each other in a cycle")
        d = 0
        for p in jobs[j].parents:
            if p in maker:
                if maker[p] == j:
                    raise ZooError(f"{zoo.path}: job {jobs[j].name!r} makes its own parent {p!r}")
                d = max(d, depth(maker[p], stack + (j,)) + 1)
            elif p not in zoo:
                child = next(m for m in jobs[j].model_ids)
                raise ZooError(f"{zoo.path}: model {child!r} starts from parent {p!r}, which is neither in "
                               "the zoo nor made by any job")
        level[j] = d
        return d

    for j in range(len(jobs)):
        depth(j)
    out = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for j, job in enumerate(jobs):
        out[level[j]].append(job)
    return out


def _resume(zoo: Zoo, jobs: list[Job], log) -> None:
    """Adopt whole files a killed run left unrecorded; move damaged recorded files aside (setting their
    descendants aside until they are rebuilt)."""
    wanted = {m for job in jobs for m in job.model_ids}
    for name, asset in (zoo.manifest.get("assets") or {}).items():   # shared weights the jobs may read
        try:
            _check_hash(zoo.path / asset["file"], asset["sha256"])
        except ZooError as e:
            raise ZooError(f"{zoo.path}: asset {name!r} is damaged, so the models built on it cannot be trusted "
                           f"or resumed: {e}. Restore it or rebuild the zoo in a new folder") from None
    _readopt(zoo, log)
    for mid in [m for m in zoo.ids if m in wanted]:
        if mid in zoo and not zoo.is_done(mid):
            kept = zoo.set_aside([mid])
            moved = zoo.quarantine(mid)
            log(f"{zoo.path}: model {mid!r} failed verification; moved to {moved} and will be redone"
                + (f" ({len(kept)} model(s) trained from it are set aside until then)" if kept else ""))
    orphans = {r["model_id"]: r for r in zoo.orphans() if r["model_id"] in wanted}
    # parents first, so each adopted row finds its parent; a row whose parent has other bytes is redone
    while orphans:
        ready = [r for r in orphans.values() if r["parent_id"] is None or r["parent_id"] in zoo]
        if not ready:
            break
        zoo.record([r for r in ready if r["parent_id"] is None
                    or r.get("parent_sha256") in (None, zoo.row(r["parent_id"])["sha256"])])
        for r in ready:
            del orphans[r["model_id"]]
    _readopt(zoo, log)         # set-aside rows whose parent was just adopted
    waiting = [r for r in orphans.values() if r.get("parent_sha256")]
    if waiting:      # unrecorded files whose parent is still to be built: adopted once it is, if the same
        zoo.add_set_aside(waiting)
    if len(orphans) > len(waiting):
        log(f"{zoo.path}: {len(orphans) - len(waiting)} unrecorded file(s) wait for their parents and "
            "will be redone")


def _readopt(zoo: Zoo, log) -> list[str]:
    adopted, stale = zoo.readopt()
    if stale:
        log(f"{zoo.path}: {len(stale)} set-aside model(s) no longer match their rebuilt parent or are "
            "damaged; moved to .quarantine and redone")
    return adopted


def run_jobs(zoo: Zoo, jobs: Iterable[Job], executor="local", workers: int | None = None,
             threads: int = 1, progress: bool = True, desc: str | None = None, **executor_options) -> Zoo:
    """Run the jobs that still have work, level by level, recording each job's rows as it finishes."""
    jobs = list(jobs)
    log = logging.getLogger(__name__).warning      # quarantine, adoption, orphans: worth seeing, routable
    levels = job_levels(zoo, jobs)
    wanted = {m for job in jobs for m in job.model_ids}
    zoo.clean_temp_files()
    _resume(zoo, jobs, log)
    todo = [job for lvl in levels for job in lvl if any(m not in zoo for m in job.model_ids)]
    n_todo = sum(sum(m not in zoo for m in job.model_ids) for job in todo)
    # jobs finish in any order; the table is stored in job order so every executor gives the same file
    built = [m for lvl in levels for job in lvl for m in job.model_ids]
    if not todo:
        if set(built) <= set(zoo.ids):
            zoo.reorder([m for m in zoo.ids if m not in set(built)] + built)
        return zoo
    from tqdm.auto import tqdm

    # the bar counts work, not models: each job's cost (training steps) shared among its models still to do
    weighted = all(job.cost is not None for job in todo)
    per_model = {m: (job.cost / len(job.model_ids) if weighted else 1.0) for job in jobs for m in job.model_ids}
    total = sum(per_model[m] for job in todo for m in job.model_ids if m not in zoo)
    bar = tqdm(total=round(total), desc=desc or f"building {zoo.path.name}", unit=" steps" if weighted else " models",
               disable=not progress, unit_scale=weighted)

    def finish(fut, job):
        try:
            rows = fut.result()
        except cf.process.BrokenProcessPool as e:
            raise RuntimeError(
                f"job {job.name or job.model_ids[0]!r} failed: a worker process died ({e}). "
                "Workers are started with 'spawn': in a script, call the builder under "
                "`if __name__ == '__main__':`; or out of memory? Try executor='inline'.") from e
        except Exception as e:
            raise RuntimeError(f"job {job.name or job.model_ids[0]!r} failed: {type(e).__name__}: {e}") from e
        missing = set(job.model_ids) - {r["model_id"] for r in rows} - set(zoo.ids)
        if missing:
            raise ZooError(f"{zoo.path}: job {job.name!r} did not write {sorted(missing)[:5]}")
        zoo.record(sorted(rows, key=lambda r: job.model_ids.index(r["model_id"])), replace=True)
        done = [r["model_id"] for r in rows] + [m for m in _readopt(zoo, log) if m in wanted]
        bar.update(round(sum(per_model.get(m, 0.0) for m in done)))

    try:
        with make_executor(executor, workers, **executor_options) as ex:
            limit = getattr(ex, "max_in_flight", None) or len(jobs)
            for lvl in levels:
                pending = {}
                for job in lvl:
                    skip = [m for m in job.model_ids if m in zoo]
                    if len(skip) == len(job.model_ids):
                        continue
                    while len(pending) >= limit:
                        for fut in wait_any(pending):
                            finish(fut, pending.pop(fut))
                    pending[ex.submit(_execute, job.fn, dict(job.spec), str(zoo.path), skip, threads)] = job
                while pending:
                    for fut in wait_any(pending):
                        finish(fut, pending.pop(fut))
    finally:
        bar.close()
    zoo.reorder([m for m in zoo.ids if m not in set(built)] + built)
    return zoo
