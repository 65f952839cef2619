"""weightspace: learn and reproduce weight-space learning — ProbeX, MoTHer and SANE — on a laptop CPU."""
import os as _os

__version__ = "0.1.0"


def _lower_priority(nice: int) -> None:
    """`reproduce --parallel` starts the notebooks off the longest remaining chain with $WEIGHTSPACE_NICE, so
    their kernels (and the build workers they start, which inherit it) take the cores only when the chain's
    notebook leaves them idle. A Jupyter kernel leads its own session, and with Linux's autogroup scheduling
    a session shares the CPU with other sessions by its group's nice value alone: so a kernel that leads its
    session sets that too. Absolute values, so re-importing in a child adds nothing."""
    nice = min(max(nice, 0), 19)
    if hasattr(_os, "setpriority"):
        _os.setpriority(_os.PRIO_PROCESS, 0, max(_os.getpriority(_os.PRIO_PROCESS, 0), nice))
    if hasattr(_os, "getsid") and _os.getsid(0) == _os.getpid():
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(nice))
        except OSError:
            pass


if _os.environ.get("WEIGHTSPACE_NICE", "").isdigit():
    _lower_priority(int(_os.environ["WEIGHTSPACE_NICE"]))
