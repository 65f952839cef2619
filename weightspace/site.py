"""weightspace site — a static, browsable copy of an executed run: every notebook with its outputs, and the gallery.

The repo stores notebooks without outputs, so a code host shows no figure. After a run, this renders the
executed copies papermill wrote (runs/<preset>/NN_*.ipynb) to HTML with nbconvert, with each notebook's
run time, next to the figure gallery (figures/README.md, rendered with its images), in one folder you can
open from disk or serve (`python -m http.server -d runs/default/site`).
"""
from __future__ import annotations

import argparse
import html
import json
import shutil
import sys
from pathlib import Path

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;line-height:1.45}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}}
img{{max-width:100%}}</style></head><body>
{body}
</body></html>
"""


def _title(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def _duration(nb) -> float | None:
    return (nb.metadata.get("papermill") or {}).get("duration")


def build_site(executed_dir: str | Path, out: str | Path, figures_dir: str | Path | None = None) -> Path:
    """Render every executed NN_*.ipynb in `executed_dir` (and the gallery in `figures_dir`) into `out`;
    returns out/index.html. A notebook that papermill left with an error is rendered and marked failed."""
    import mistune
    import nbformat
    from nbconvert import HTMLExporter

    executed_dir, out = Path(executed_dir), Path(out)
    notebooks = sorted(executed_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"{executed_dir}: no executed notebooks (NN_name.ipynb) to render; "
                                "run `make reproduce` (or `make tiny`) first")
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    rows = []
    for path in notebooks:
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as e:  # noqa: BLE001 - nbformat raises several kinds for a damaged file
            raise ValueError(f"{path}: not a readable notebook ({e})") from None
        body, _ = exporter.from_notebook_node(nb)
        (out / f"{path.stem}.html").write_text(body)
        failed = any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
        executed = any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
        dt = _duration(nb)
        state = "failed" if failed else ("ran" if executed else "not executed")
        rows.append(f"<tr><td><a href=\"{html.escape(path.stem)}.html\">{html.escape(path.stem)}</a></td>"
                    f"<td>{html.escape(_title(nb))}</td><td>{state}</td>"
                    f"<td>{'' if dt is None else f'{dt / 60:.1f} min'}</td></tr>")
    gallery = ""
    readme = Path(figures_dir) / "README.md" if figures_dir else None
    if readme and readme.is_file():
        (out / "figures").mkdir(exist_ok=True)
        for png in Path(figures_dir).glob("*.png"):
            shutil.copy2(png, out / "figures" / png.name)
        text = readme.read_text().replace("](", "](figures/")
        (out / "gallery.html").write_text(PAGE.format(title="Figure gallery", body=mistune.html(text)))
        gallery = '<p><a href="gallery.html">The figure gallery</a>: every figure, and the papers\' claims checked.</p>'
    body = ("<h1>weightspace: an executed run</h1>"
            f"<p>Rendered from <code>{html.escape(str(executed_dir))}</code>.</p>{gallery}"
            "<table><tr><th>notebook</th><th>title</th><th>state</th><th>run time</th></tr>"
            + "".join(rows) + "</table>")
    index = out / "index.html"
    index.write_text(PAGE.format(title="weightspace run", body=body))
    (out / "site.json").write_text(json.dumps({"notebooks": [p.stem for p in notebooks]}, indent=1) + "\n")
    return index


def main(argv=None) -> int:
    from weightspace.__main__ import prog
    from weightspace.reproduce import output_dirs, repo_root

    ap = argparse.ArgumentParser(prog=prog("site"), description=__doc__.split("\n")[0].split(" — ")[1],
                                 epilog="exit codes: 0 written, 1 nothing to render or a bad notebook, 2 usage")
    ap.add_argument("--preset", default="default", help="the run to render: runs/<preset> (default: default)")
    ap.add_argument("--out", type=Path, help="the folder to write (default: runs/<preset>/site)")
    args = ap.parse_args(argv)
    dirs = output_dirs(repo_root(), args.preset, None)
    try:
        index = build_site(dirs["executed"], args.out or dirs["executed"] / "site", dirs["figures_dir"])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {index}")
    return 0
