"""Pair every notebook with a jupytext py:percent script of the same name, so that diffs read as code.

    python tools/nbsync.py [DIR]              (make sync) write each NN_name.py from its .ipynb, stored clean
    python tools/nbsync.py --from py [DIR]    (make sync FROM=py) write each .ipynb from its .py instead
    python tools/nbsync.py --check [DIR]      exit 1 naming every notebook whose pair is missing or differs

DIR (default notebooks/) is searched recursively and every .py in it is a notebook's pair. A file without
its pair is paired whichever side is the source, so to remove a notebook delete both files. The check
compares cell types, sources, tags and the `weightspace` metadata as jupytext reads them, not bytes. The format and the scripts' header
come from DIR/jupytext.toml, which JupyterLab's jupytext reads too.

When pyproject.toml names the public repository (`[project.urls] Repository = "https://github.com/o/r"`), each
numbered notebook of DIR also gets an "Open in Colab" badge under its title and, after its first cell, a cell
tagged `colab` that on Colab only clones and installs weightspace and works in its notebooks/ folder; elsewhere
it does nothing, so the default paths stay offline. Without that URL there is no badge (a badge to a
placeholder would not open), and --check reports notebooks that carry one.
"""
import argparse
import json
import os
import re
import sys
import tomllib
from pathlib import Path

import jupytext
import nbformat
from jupytext.config import load_jupytext_configuration_file, short_form_multiple_formats
from nbclean import clean

ROOT = Path(__file__).resolve().parents[1]
FORMAT = "py:percent"
SKIP = {".ipynb_checkpoints", "__pycache__"}
NUMBERED = re.compile(r"\d\d_\w+\.ipynb")
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB_TAG = "colab"
CHECKOUT = "/content/weightspace"


def repository(pyproject: Path = ROOT / "pyproject.toml") -> str | None:
    """The public GitHub repository pyproject.toml names as `Repository`, or None while there is none."""
    url = tomllib.loads(pyproject.read_text())["project"].get("urls", {}).get("Repository")
    if url is None:
        return None
    url = url.rstrip("/").removesuffix(".git")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        sys.exit(f"nbsync: {pyproject}: [project.urls] Repository = {url!r} is not https://github.com/<owner>/<repo>,"
                 " the only kind of repository Colab opens notebooks from")
    return url


def colab_source(url: str, where: str) -> str:
    """The guarded install cell of the notebook at `where` (its path in the repository)."""
    folder = str(Path(where).parent)
    return (f"# On Google Colab only (elsewhere this cell does nothing): fetch weightspace, install it, and work in\n"
            f"# its {folder}/ folder as the notebook does in a clone. Colab's own torch is kept.\n"
            f"import sys\n"
            f"\n"
            f"if \"google.colab\" in sys.modules:\n"
            f"    import os\n"
            f"    import subprocess\n"
            f"\n"
            f"    if not os.path.isdir(\"{CHECKOUT}\"):\n"
            f"        subprocess.run([\"git\", \"clone\", \"--depth\", \"1\", \"{url}\", \"{CHECKOUT}\"], check=True)\n"
            f"    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"--quiet\", \"{CHECKOUT}\"], check=True)\n"
            f"    os.chdir(\"{CHECKOUT}/{folder}\")")


def with_colab(nb: dict, where: str, url: str | None) -> dict:
    """The notebook with its badge and install cell for `url`, or with neither when `url` is None."""
    cells = [c for c in nb["cells"] if COLAB_TAG not in c.get("metadata", {}).get("tags", [])]
    title, *rest = "".join(cells[0]["source"]).split("\n")
    if len(rest) > 1 and rest[0] == "" and BADGE in rest[1]:
        rest = rest[2:]
    if url is not None:
        owner_repo = url.removeprefix("https://github.com/")
        link = f"https://colab.research.google.com/github/{owner_repo}/blob/main/{where}"
        rest = ["", f"[![Open in Colab]({BADGE})]({link})"] + rest
        code = {"cell_type": "code", "execution_count": None, "metadata": {"tags": [COLAB_TAG]}, "outputs": [],
                "source": colab_source(url, where).splitlines(keepends=True)}
        cells = cells[:1] + [code] + cells[1:]
    cells[0] = {**cells[0], "source": "\n".join([title, *rest]).splitlines(keepends=True)}
    return {**nb, "cells": cells}


def stored(nb: dict) -> str:
    """The notebook's text as the repo stores it (tools/nbclean.py)."""
    return json.dumps(clean(nb), indent=1, ensure_ascii=False) + "\n"


def cells(nb) -> list:
    """What a pair must agree on: every cell's type, source and tags, and the notebook's `weightspace`
    metadata (what it reads and writes)."""
    return [nb.metadata.get("weightspace")] + [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]


def files(folder: Path, suffix: str) -> dict:
    return {str(p)[: -len(suffix)]: p for p in sorted(folder.rglob("*" + suffix))
            if not SKIP & set(p.relative_to(folder).parts)}


def shown(path: Path) -> str:
    return os.path.relpath(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--from", dest="source", choices=["ipynb", "py"], default="ipynb",
                        help="which file of a pair holds the edits to keep (default: the .ipynb)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any pair is out of sync")
    args = parser.parse_args(argv)
    config_file = args.folder / "jupytext.toml"
    if not config_file.is_file():
        sys.exit(f"nbsync: {config_file} is missing; it sets how the notebooks are paired")
    config = load_jupytext_configuration_file(str(config_file))
    formats = short_form_multiple_formats(config.formats)
    if FORMAT not in formats.split(","):
        sys.exit(f"nbsync: {config_file} must pair notebooks with {FORMAT}, it says formats = {formats!r}")
    notebooks, scripts = files(args.folder, ".ipynb"), files(args.folder, ".py")
    url = repository()

    def colab(stem: str, nb: dict) -> dict:
        """Badge and install cell as pyproject says, on the numbered notebooks of the folder itself."""
        path = Path(stem + ".ipynb")
        if path.parent != args.folder or not NUMBERED.fullmatch(path.name):
            return nb
        return with_colab(nb, f"notebooks/{path.name}", url)

    if args.check:
        bad = []
        for stem in sorted(notebooks | scripts):
            if stem not in scripts:
                bad.append(f"{shown(notebooks[stem])}: no paired .py")
            elif stem not in notebooks:
                bad.append(f"{shown(scripts[stem])}: no paired .ipynb")
            else:
                via_script = jupytext.reads(jupytext.writes(jupytext.read(notebooks[stem]), FORMAT, config=config),
                                            FORMAT)
                if cells(via_script) != cells(jupytext.read(scripts[stem], fmt=FORMAT)):
                    bad.append(f"{shown(notebooks[stem])}: cells differ from {scripts[stem].name}")
                nb = json.loads(notebooks[stem].read_text())
                if cells(nbformat.from_dict(colab(stem, nb))) != cells(nbformat.from_dict(nb)):
                    bad.append(f"{shown(notebooks[stem])}: its Colab badge and install cell are not what"
                               f" pyproject's Repository URL ({url or 'none'}) makes")
        if bad:
            print("notebooks out of sync with their py:percent pairs: run `make sync`, or `make sync FROM=py`"
                  " to keep edits made in the .py", *bad, sep="\n  ")
        return 1 if bad else 0

    rewritten = []
    for stem in sorted(notebooks | scripts):
        if stem in scripts and (args.source == "py" or stem not in notebooks):
            text = stored(json.loads(nbformat.writes(jupytext.read(scripts[stem], fmt=FORMAT))))
        else:
            text = stored(json.loads(notebooks[stem].read_text()))
        text = stored(colab(stem, json.loads(text)))
        script = jupytext.writes(jupytext.reads(text, "ipynb"), FORMAT, config=config)
        for path, new in ((Path(stem + ".ipynb"), text), (Path(stem + ".py"), script)):
            if not path.exists() or path.read_text() != new:
                path.write_text(new)
                rewritten.append(shown(path))
    print(f"nbsync: {len(notebooks | scripts)} notebooks paired from .{args.source}, rewrote",
          ", ".join(rewritten) or "nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
