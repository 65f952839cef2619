"""weightspace: learn and reproduce weight-space learning — ProbeX, MoTHer and SANE — on a laptop CPU."""
import os as _os

__version__ = "0.1.0"

# `reproduce --parallel` starts the notebooks off the longest remaining chain with $WEIGHTSPACE_NICE set, so
# their kernels (and the build workers they start, which inherit it) take the cores only when the chain's
# notebook leaves them idle. Applied as an absolute niceness, so re-importing in a child adds nothing.
if _os.environ.get("WEIGHTSPACE_NICE", "").isdigit() and hasattr(_os, "setpriority"):
    _os.setpriority(_os.PRIO_PROCESS, 0, max(_os.getpriority(_os.PRIO_PROCESS, 0),
                                             min(int(_os.environ["WEIGHTSPACE_NICE"]), 19)))
