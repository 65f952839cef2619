"""Model zoos: the on-disk format, the job runner that builds them, and the builders."""
from .format import LazyStateDict, Zoo, ZooError, read_safetensors, sha256_file, write_model, write_safetensors
from .jobs import Job, make_executor, run_jobs

__all__ = ["Job", "LazyStateDict", "Zoo", "ZooError", "make_executor", "read_safetensors", "run_jobs",
           "sha256_file", "write_model", "write_safetensors"]
