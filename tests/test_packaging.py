"""environment.yml mirrors pyproject.toml; the package imports without its optional extras; the README's two
commands are real."""
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


def test_doctor_reports_this_environment_healthy():
    out = subprocess.run([sys.executable, "-m", "weightspace", "doctor"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    assert "ok   torchvision" in out.stdout and "ok   timm" in out.stdout


def test_gallery_is_built_from_results_files(tmp_path):
    import json

    from weightspace.gallery import write_gallery

    (tmp_path / "f").mkdir()
    (tmp_path / "r").mkdir()
    (tmp_path / "f" / "x_01_a.png").write_bytes(b"png")
    (tmp_path / "f" / "x_02_b.png").write_bytes(b"png")
    (tmp_path / "r" / "03_x.json").write_text(json.dumps(
        {"figures": {"x_01_a": "first"}, "headline": [["acc", 0.91234, 0.88]], "n": 5, "sub": {"k": 1.5}}))
    text = write_gallery(tmp_path / "f", tmp_path / "r").read_text()
    assert "## 03_x" in text and "| acc | 0.912 | 0.880 |" in text and "**x_01_a** — first" in text
    assert "| sub.k | 1.500 |" in text and "## Other figures" in text and "x_02_b.png" in text


def test_readme_commands_are_make_targets_and_ci_calls_make_test():
    readme, makefile = (ROOT / "README.md").read_text(), (ROOT / "Makefile").read_text()
    commands = re.findall(r"^make (\w+)", readme.split("## The two commands", 1)[1].split("```")[1], flags=re.M)
    assert commands == ["reproduce", "test"]
    for target in commands:
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no target {target!r}"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
