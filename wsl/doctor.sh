#!/usr/bin/env bash
# Is this WSL2 machine ready for weightspace? Python, the GPU as torch sees it, free disk and memory, where
# the repo lives. The checks themselves are `python -m weightspace doctor` (one place, also used off WSL).
#
#   bash wsl/doctor.sh            run the checks (exit 1 if one fails)
#   bash wsl/doctor.sh --dry-run  print the command, run nothing
set -euo pipefail

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "doctor.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [[ ! -x $PY ]]; then PY=${PYTHON:-python3}; fi
echo "+ $PY -m weightspace doctor"
if [[ $DRY_RUN == 0 ]]; then exec "$PY" -m weightspace doctor; fi
