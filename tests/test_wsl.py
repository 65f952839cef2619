"""wsl/: the scripts pass shellcheck, their dry runs print the plan and do nothing, and the checks they call
(`weightspace doctor`) flag a repo on the Windows filesystem."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "wsl" / "setup.sh", ROOT / "wsl" / "doctor.sh"]


def test_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck; .ci/run installs it)")
    out = subprocess.run(["shellcheck", "--severity=style", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_setup_dry_run_prints_the_plan_and_changes_nothing(tmp_path):
    before = sorted(p.name for p in ROOT.iterdir())
    out = subprocess.run(["bash", str(SCRIPTS[0]), "--dry-run"], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": "python3"})
    assert out.returncode == 0, out.stderr
    plan = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert any("apt-get install" in line for line in plan)
    assert any("pip install -c constraints.txt -e .[dev]" in line for line in plan)
    assert any("ipykernel install --user --name weightspace" in line for line in plan)
    assert plan[-1] == "+ bash wsl/doctor.sh"
    assert sorted(p.name for p in ROOT.iterdir()) == before


def test_doctor_dry_run_and_bad_options():
    out = subprocess.run(["bash", str(SCRIPTS[1]), "--dry-run"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("-m weightspace doctor")
    for script in SCRIPTS:
        bad = subprocess.run(["bash", str(script), "--frobnicate"], capture_output=True, text=True)
        assert bad.returncode == 2 and "unknown option '--frobnicate'" in bad.stderr


def test_doctor_flags_a_repo_on_the_windows_filesystem(monkeypatch, tmp_path):
    from weightspace import doctor

    monkeypatch.setattr(doctor, "_wsl", lambda: True)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100 * doctor.GIB, 0, 100 * doctor.GIB))
    checks = {name: (good, hint) for name, _, good, hint in doctor.machine_checks(Path("/mnt/c/Users/me/ws"))}
    assert checks["repo location"][0] is False and "Windows filesystem" in checks["repo location"][1]
    assert checks["free disk"][0] is True
    checks = {name: good for name, _, good, _ in doctor.machine_checks(tmp_path)}
    assert checks["repo location"] is True
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100 * doctor.GIB, 0, doctor.GIB))
    checks = {name: good for name, _, good, _ in doctor.machine_checks(tmp_path)}
    assert checks["free disk"] is False
