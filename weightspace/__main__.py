"""Command line: weightspace <command> ... (or python -m weightspace <command> ...)

  reproduce   run the notebooks for a preset (see weightspace.reproduce)
  zoo         inspect a zoo folder: `zoo info DIR`, `zoo verify DIR`, `zoo repair DIR`
  lock        record your own safetensors files for the readers of downloaded data: `lock DIR`,
              re-hash them with `lock DIR --verify` (see weightspace.downloads)
  mother      recover the model tree of a folder of checkpoints (see weightspace.mother.cli)
  doctor      check that this machine can run the notebooks
  site        a static, browsable copy of an executed run (notebooks with outputs, the gallery)
  grade       grade a student's copy of a course assignment (notebooks/assignments/)

`weightspace --version` prints the version; `weightspace COMMAND --help` each command's options.
Exit codes: 0 success, 1 a data error (a bad file or zoo, a failed check), 2 a usage error.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

COMMANDS = {
    "reproduce": "weightspace.reproduce",
    "zoo": "weightspace.zoo.cli",
    "lock": "weightspace.downloads",
    "mother": "weightspace.mother.cli",
    "doctor": "weightspace.doctor",
    "site": "weightspace.site",
    "grade": "weightspace.grading",
}


def prog(command: str = "") -> str:
    """How the user called us, for usage lines: the console script or `python -m weightspace`."""
    base = "weightspace" if Path(sys.argv[0]).name == "weightspace" else "python -m weightspace"
    return f"{base} {command}".strip()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        from weightspace import __version__

        print(f"weightspace {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
