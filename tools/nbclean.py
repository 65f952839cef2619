"""Store notebooks clean: no outputs or execution counts, a python3 kernelspec, no editor metadata (the
`weightspace` entry, what the notebook reads and writes for `reproduce --parallel`, is kept).

    python tools/nbclean.py notebooks/*.ipynb        (make nbclean)
    python tools/nbclean.py --check notebooks/*.ipynb   exits 1 if any file would change
"""
import json
import sys
from pathlib import Path

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
LANGUAGE = {"name": "python", "pygments_lexer": "ipython3"}


def clean(nb: dict) -> dict:
    kept = {"weightspace": nb["metadata"]["weightspace"]} if "weightspace" in nb.get("metadata", {}) else {}
    nb["metadata"] = {"kernelspec": KERNELSPEC, "language_info": LANGUAGE, **kept}
    for cell in nb["cells"]:
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k == "tags"}
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.pop("id", None)
    nb["nbformat"], nb["nbformat_minor"] = 4, 4
    return nb


def main(argv):
    check = "--check" in argv
    changed = []
    for name in [a for a in argv if a != "--check"]:
        path = Path(name)
        text = path.read_text()
        new = json.dumps(clean(json.loads(text)), indent=1, ensure_ascii=False) + "\n"
        if new != text:
            changed.append(name)
            if not check:
                path.write_text(new)
    if check and changed:
        print("not clean:", *changed)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
