"""Download the paper's VTHR benchmark (HF organisation "MoTHer-VTHR") into the layout weightspace reads.

    python data_scripts/download_vthr.py --splits ft                 # 105 ViT-B/16, ~35 GB per split
    python data_scripts/download_vthr.py --splits lora-v lora-f --root /data/vthr --limit 21

For every repository MoTHer-VTHR/VTHR-{FT|LoRA-V|LoRA-F}-ModelTree_t-Depth_d-Node_uuid8 it fetches
model.safetensors and config.json into <root>/<split>/<repository name>/, and the ground-truth graph
(dataset/*_model_graph.pkl of the official code, github.com/eliahuhorwitz/MoTHer) into
<root>/<split>/, converted once to model_graph.json by a reader that refuses any object but the graph's
own three classes. Then: notebook 05 with `vthr_root=<root>` (preset `paper`), or
`python -m weightspace mother <root>/ft --layers hf-vit --n-trees 5`.

Resumable: a model whose model.safetensors is complete (its header parses and the file is as long as
the header says) is skipped without a network call; an interrupted download is completed by
huggingface_hub. Needs network access to the Hugging Face hub and GitHub (not available on the
project's CI machines).
"""
from __future__ import annotations

import argparse
import time
import urllib.request
from pathlib import Path

from weightspace.mother import vthr

FILES = ("model.safetensors", "config.json")


def list_models(split: str) -> list[str]:
    """Repository names of one split, from the Hub's listing of the organisation."""
    from huggingface_hub import HfApi

    prefix = f"VTHR-{vthr.SPLITS[split]}-ModelTree_"
    names = []
    for m in HfApi().list_models(author=vthr.HUB_ORG, search=prefix):
        name = m.id.split("/", 1)[1]
        if name.startswith(prefix):
            vthr.parse_repo_name(name)   # refuses anything not shaped like a VTHR model
            names.append(name)
    return sorted(names)


def fetch_graph(split: str, folder: Path) -> Path:
    """The official ground-truth pickle -> model_graph.json (skipped when the JSON exists)."""
    out = folder / vthr.GRAPH_JSON
    if out.exists():
        return out
    pkl = folder / vthr.GRAPH_FILES[split]
    if not pkl.exists():
        url = vthr.GRAPH_URL.format(file=vthr.GRAPH_FILES[split])
        tmp = pkl.with_suffix(".part")
        urllib.request.urlretrieve(url, tmp)
        tmp.replace(pkl)
    vthr.write_graph_json(vthr.read_graph_pkl(pkl), out)
    return out


def download(split: str, root: Path, limit: int | None = None, retries: int = 3) -> dict:
    from huggingface_hub import hf_hub_download

    folder = Path(root).expanduser() / split
    folder.mkdir(parents=True, exist_ok=True)
    fetch_graph(split, folder)
    counts = {"present": 0, "downloaded": 0, "failed": []}
    for name in list_models(split)[:limit]:
        target = folder / name
        if vthr.safetensors_complete(target / "model.safetensors") and (target / "config.json").exists():
            counts["present"] += 1
            continue
        for attempt in range(retries):
            try:
                for f in FILES:
                    hf_hub_download(f"{vthr.HUB_ORG}/{name}", f, local_dir=target)
                counts["downloaded"] += 1
                break
            except Exception as e:  # network hiccups: retry, then report and go on
                if attempt == retries - 1:
                    counts["failed"].append(f"{name}: {type(e).__name__}: {e}")
                time.sleep(2 ** attempt)
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--splits", nargs="+", default=list(vthr.SPLITS), choices=list(vthr.SPLITS))
    ap.add_argument("--root", default="~/.cache/weightspace/vthr")
    ap.add_argument("--limit", type=int, default=None, help="at most this many models per split")
    args = ap.parse_args(argv)
    failed = 0
    for split in args.splits:
        c = download(split, Path(args.root), args.limit)
        print(f"{split}: {c['present']} present, {c['downloaded']} downloaded, {len(c['failed'])} failed")
        for f in c["failed"]:
            print("  ", f)
        failed += len(c["failed"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
