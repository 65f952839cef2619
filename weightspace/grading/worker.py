"""The process that runs a student's code for the grader, with no more trust than it needs.

Started by weightspace.grading (which imports only the codec below) as `python -I worker.py CONFIG.json`, or
forked from a `python -I worker.py --zygote MODULES...` process that has imported the heavy libraries once.
It works in the fresh temporary directory holding CONFIG.json, with only the environment the config gives, and

  1. lowers its own limits (address space, CPU seconds, file size, no core dumps; `resource`, where it exists),
  2. installs an audit hook (PEP 578): no writes, deletes or renames outside the temporary directory; reads
     only there and in Python's and the system's library folders (so not other students' files), never the
     solutions or the weightspace package (the reference); no importing weightspace, no subprocesses,
     forks, sockets or ctypes,
  3. runs the student's definitions, then answers one call per line of the grader's Unix socket:
     {"id", "func"} with the arguments in req_<id>.json / .safetensors -> the result in res_<id>.json /
     .safetensors and a line {"id", "ok", ...}.

The student's own prints go to a log file, never to the protocol's socket. An audit hook is a guard against
accidents and casual cheating, not a security boundary (C extensions can bypass it): the time limit is
enforced from outside, by the grader, which kills the process; run untrusted code in a container as well.

Stdlib only at import time (numpy / torch / safetensors are imported when a value needs them).
"""
from __future__ import annotations

import json
import os
import sys
import traceback

# ------------------------------------------------------------------------ codec (shared with the grader)


def encode(value, arrays: dict, path: str = "r"):
    """A JSON tree for `value`; tensors and arrays go to `arrays` (name -> numpy array)."""
    mod = type(value).__module__.split(".")[0]
    if mod == "torch" and type(value).__name__ in ("Tensor", "Parameter"):
        arrays[path] = value.detach().cpu().contiguous().numpy()
        return {"t": "torch", "k": path}
    if mod == "numpy" and type(value).__name__ == "ndarray":
        import numpy as np

        arrays[path] = np.ascontiguousarray(value)
        return {"t": "numpy", "k": path}
    if mod == "numpy":                                   # numpy scalars
        return {"t": "val", "v": value.item()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"t": "val", "v": value}
    if isinstance(value, (list, tuple)):
        return {"t": type(value).__name__, "v": [encode(v, arrays, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a returned dict must have string keys")
        return {"t": "dict", "v": [[k, encode(v, arrays, f"{path}.{i}")] for i, (k, v) in enumerate(value.items())]}
    raise TypeError(f"returned a {type(value).__module__}.{type(value).__name__}, which the grader cannot "
                    "read; return what the docstring asks for (tensors, arrays, numbers, lists, tuples, dicts)")


def decode(tree, arrays: dict):
    t = tree["t"]
    if t == "val":
        return tree["v"]
    if t == "numpy":
        return arrays[tree["k"]]
    if t == "torch":
        import torch

        return torch.from_numpy(arrays[tree["k"]].copy())
    if t == "list":
        return [decode(v, arrays) for v in tree["v"]]
    if t == "tuple":
        return tuple(decode(v, arrays) for v in tree["v"])
    if t == "dict":
        return {k: decode(v, arrays) for k, v in tree["v"]}
    raise ValueError(f"unknown encoded type {t!r}")


def save(stem: str, value) -> None:
    """stem.json (the tree) and stem.safetensors (the arrays, if any)."""
    arrays: dict = {}
    tree = encode(value, arrays)
    if arrays:
        from safetensors.numpy import save_file

        save_file(arrays, stem + ".safetensors")
    with open(stem + ".json", "w") as f:
        json.dump(tree, f, allow_nan=True)


def load(stem: str):
    with open(stem + ".json") as f:
        tree = json.load(f)
    arrays = {}
    if os.path.exists(stem + ".safetensors"):
        from safetensors.numpy import load_file

        arrays = load_file(stem + ".safetensors")
    return decode(tree, arrays)


# ------------------------------------------------------------------------------------------ the sandbox

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.remove": (0,), "os.rename": (0, 1), "os.replace": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,),
               "os.chmod": (0,), "os.chown": (0,), "os.link": (0, 1), "os.symlink": (0, 1),
               "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,),
               "shutil.move": (1,), "os.listdir": ()}
BANNED = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
          "socket.connect", "socket.bind", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.kill",
          "os.killpg", "pty.spawn", "webbrowser.open", "sys.remote_exec")


def limit_resources(cfg: dict) -> None:
    try:
        import resource
    except ImportError:              # not on Windows: the grader's time limit still holds
        return
    for name, value in (("RLIMIT_AS", cfg.get("memory_bytes")), ("RLIMIT_CPU", cfg.get("cpu_seconds")),
                        ("RLIMIT_FSIZE", cfg.get("file_bytes")), ("RLIMIT_CORE", 0)):
        if value is None or not hasattr(resource, name):
            continue
        lim = getattr(resource, name)
        hard = resource.getrlimit(lim)[1]
        value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        try:
            resource.setrlimit(lim, (value, hard))
        except (ValueError, OSError):
            pass


SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/etc", "/proc", "/sys", "/dev", "/opt")


def install_guard(home: str, forbidden: list[str]) -> None:
    """Reads only in the temporary directory, Python's installation and the system's library folders (not in
    `forbidden`); writes only in the temporary directory."""
    home = os.path.realpath(home) + os.sep
    forbidden = [os.path.realpath(p) + os.sep for p in forbidden]
    readable = [home] + [os.path.realpath(p) + os.sep for p in
                         {sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path, *SYSTEM_DIRS} if p]

    def may_read(p: str) -> bool:
        return any(inside(p, d) for d in readable) and not any(inside(p, d) for d in forbidden)

    def real(p) -> str | None:
        if isinstance(p, int) or p is None:
            return None
        try:
            return os.path.realpath(os.fsdecode(p))
        except (TypeError, ValueError):
            return None

    def inside(p: str, d: str) -> bool:
        return (p + os.sep).startswith(d)

    def hook(event, args):
        if event == "open":
            p = real(args[0])
            if p is None:
                return
            mode, flags = args[1] or "", args[2] or 0
            writes = any(c in mode for c in "wax+") or bool(flags & WRITE_FLAGS)
            if writes and not inside(p, home):
                raise PermissionError(f"the grader does not let student code write {p} (only its own temporary "
                                      "directory)")
            if not may_read(p):
                raise PermissionError(f"the grader does not let student code read {p}")
        elif event in PATH_EVENTS:
            for i in PATH_EVENTS[event] or range(len(args)):
                p = real(args[i]) if i < len(args) else None
                if p is None:
                    continue
                if event == "os.listdir":
                    if not may_read(p):
                        raise PermissionError(f"the grader does not let student code list {p}")
                elif not inside(p, home):
                    raise PermissionError(f"the grader does not let student code change {p} (only its own "
                                          "temporary directory)")
        elif event == "import":
            name = args[0] or ""
            if name == "weightspace" or name.startswith("weightspace."):
                raise ImportError("the grader does not let student code import weightspace (the reference): "
                                  "write the exercise yourself")
        elif event.startswith(BANNED):
            raise PermissionError(f"the grader does not let student code use {event}")

    sys.addaudithook(hook)


def short_error(exc: BaseException) -> str:
    """'Type: message' with the line of the student's file it came from, if any."""
    where = ""
    for fr in reversed(traceback.extract_tb(exc.__traceback__)):
        if fr.filename.endswith("student.py"):
            where = f" (line {fr.lineno})"
            break
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}{where}"[:500]


def serve(config_path: str) -> None:
    """Run the student's definitions and answer the grader's calls over the socket named in the config."""
    import socket

    with open(config_path) as f:
        cfg = json.load(f)
    home = os.path.dirname(os.path.abspath(config_path))
    os.chdir(home)
    os.environ.clear()
    os.environ.update(cfg.get("env", {}))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(cfg["socket"])
    chan = sock.makefile("rw", buffering=1)
    log = os.open(os.path.join(home, "student.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for mod in cfg.get("preload", []):
        __import__(mod)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    import importlib.util

    spec = importlib.util.find_spec("weightspace")
    forbidden = list(cfg.get("forbidden", []))
    if spec and spec.submodule_search_locations:
        forbidden += list(spec.submodule_search_locations)
    limit_resources(cfg)
    install_guard(home, forbidden)

    def say(msg: dict) -> None:
        chan.write(json.dumps(msg) + "\n")
        chan.flush()

    namespace = {"__name__": "student", "__file__": os.path.join(home, "student.py")}
    try:
        with open(os.path.join(home, "student.py")) as f:
            code = compile(f.read(), os.path.join(home, "student.py"), "exec")
        exec(code, namespace)
    except BaseException as exc:      # noqa: BLE001 - any failure of the student's definitions is reported
        say({"ready": False, "error": short_error(exc)})
        return
    say({"ready": True})
    for line in chan:
        req = json.loads(line)
        rid = req["id"]
        try:
            fn = namespace.get(req["func"])
            if not callable(fn):
                raise NameError(f"the file defines no function {req['func']!r}")
            args = load(os.path.join(home, f"req_{rid}"))
            save(os.path.join(home, f"res_{rid}"), fn(*args))
            say({"id": rid, "ok": True})
        except BaseException as exc:  # noqa: BLE001
            say({"id": rid, "ok": False, "error": short_error(exc),
                 "raised": [c.__name__ for c in type(exc).__mro__]})


def zygote(preload: list[str]) -> None:
    """Import the heavy libraries once, then fork one fresh worker per config path read from stdin (its pid
    is written back): a worker starts in milliseconds instead of re-importing torch."""
    import signal

    for mod in preload:
        __import__(mod)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)          # children are reaped by the kernel
    out = os.fdopen(os.dup(1), "w", buffering=1)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                sys.stdin.close()
                out.close()
                serve(line.strip())
            finally:
                os._exit(0)
        out.write(f"{pid}\n")
        out.flush()


if __name__ == "__main__":
    if sys.argv[1] == "--zygote":
        zygote(sys.argv[2:])
    else:
        serve(sys.argv[1])
