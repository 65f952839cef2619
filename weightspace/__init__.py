"""weightspace: learn and reproduce weight-space learning — ProbeX, MoTHer and SANE — on a laptop CPU."""
__version__ = "0.1.0"
