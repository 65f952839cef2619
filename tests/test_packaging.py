"""environment.yml mirrors pyproject.toml; the package imports without its optional extras."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_mirrors_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    text = (ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]
    listed = re.findall(r"^\s+- (\S+)\s*$", pip_section, flags=re.M)
    assert sorted(listed) == sorted(deps)
    assert "conda-forge" in text and re.search(r"^\s+- defaults\s*$", text, flags=re.M) is None


def test_cli_help_and_unknown_command():
    ok = subprocess.run([sys.executable, "-m", "weightspace", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "reproduce" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "weightspace", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr


def test_zoo_cli(toy_zoo):
    run = lambda *a: subprocess.run([sys.executable, "-m", "weightspace", "zoo", *a], capture_output=True, text=True)
    info = run("info", str(toy_zoo.path))
    assert info.returncode == 0 and "5 models" in info.stdout
    assert run("verify", str(toy_zoo.path)).returncode == 0
    (toy_zoo.path / toy_zoo.row("b")["file"]).write_bytes(b"junk")
    bad = run("verify", str(toy_zoo.path))
    assert bad.returncode == 1 and "b.safetensors: sha256 mismatch" in bad.stderr
