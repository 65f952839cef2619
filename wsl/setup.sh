#!/usr/bin/env bash
# weightspace on Windows, inside WSL2 (Ubuntu 24.04 or Debian 12): system packages, the .venv with torch
# (PyPI's Linux torch wheels carry CUDA: with the NVIDIA driver installed on Windows, the GPU just works),
# and a Jupyter kernel. Then it runs the checks (wsl/doctor.sh).
#
#   bash wsl/setup.sh            do it
#   bash wsl/setup.sh --dry-run  print every command, run none
#   PYTHON=python3.12 bash wsl/setup.sh   use another Python (>= 3.11)
set -euo pipefail

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

run() {
    echo "+ $*"
    if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

case "$(pwd -P)" in
    /mnt/[a-z]/*)
        echo "warning: this repo is on the Windows filesystem ($(pwd -P)); file access from WSL is many times" >&2
        echo "         slower there. Clone it under your Linux home instead: cd ~ && git clone ..." >&2 ;;
esac

SUDO=""
if [[ $(id -u) != 0 ]]; then SUDO="sudo"; fi
run $SUDO apt-get update
run $SUDO apt-get install -y "$PYTHON" python3-venv python3-dev build-essential git make

if [[ $DRY_RUN == 0 ]] && ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: weightspace needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)." >&2
    echo "       Ubuntu 24.04 has 3.12; on 22.04 install python3.11 and run PYTHON=python3.11 bash wsl/setup.sh" >&2
    exit 1
fi

run "$PYTHON" -m venv .venv
run .venv/bin/python -m pip install --upgrade pip
run .venv/bin/python -m pip install -c constraints.txt -e '.[dev]'
run .venv/bin/python -m ipykernel install --user --name weightspace --display-name "Python (weightspace)"
run bash wsl/doctor.sh
echo "done: open JupyterLab with 'make lab' and paste the printed http://localhost:8888/... URL into a Windows browser"
