"""Download Model-J's discriminative subsets (HF organisation "ProbeX") into the layout weightspace reads.

    python data_scripts/download_modelj.py --subset SupViT                # ~350 GB per subset
    python data_scripts/download_modelj.py --subset MAE --splits test --limit 20 --root /data/modelj

For every model listed in the dataset "ProbeX/Model-J" (config = subset; columns hf_model_id,
hf_model_url) it calls huggingface_hub.snapshot_download(repo_id, cache_dir=<root>/<subset>/<split>),
which leaves <split>/models--<org>--<name>/refs/main + snapshots/<rev>/model.safetensors, the layout
weightspace.probex.modelj.ModelJSubset reads (the official code's too). Resumable: a model whose
snapshot file is already there is skipped without a network call, and an interrupted download is
completed by huggingface_hub. Then pre-extract the layer you want (ModelJSubset.extract) and train on
that one small file. Needs network access to the Hugging Face hub (not available on the project's CI).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from weightspace.probex.modelj import SPLITS, SUBSETS, WEIGHTS_FILE, default_root, repo_folder, snapshot_file

DATASET = "ProbeX/Model-J"


def list_models(subset: str, split: str) -> list[str]:
    """Model repo ids of one subset split, from the Model-J dataset card's table."""
    try:
        from datasets import load_dataset
    except ImportError:
        sys.exit("this script needs the `datasets` package: pip install datasets")
    ds = load_dataset(DATASET, subset, split=split)
    return [row["hf_model_id"] for row in ds]


def download(subset: str, root: Path, splits=SPLITS, limit: int | None = None, retries: int = 3) -> dict:
    from huggingface_hub import snapshot_download

    counts = {"present": 0, "downloaded": 0, "failed": []}
    for split in splits:
        cache = root / subset / split
        cache.mkdir(parents=True, exist_ok=True)
        ids = list_models(subset, split)[:limit]
        for i, repo_id in enumerate(ids):
            if snapshot_file(cache / repo_folder(repo_id)) is not None:
                counts["present"] += 1
                continue
            for attempt in range(retries):
                try:
                    snapshot_download(repo_id=repo_id, cache_dir=str(cache),
                                      allow_patterns=[WEIGHTS_FILE, "*.json", "*.md"])
                    counts["downloaded"] += 1
                    break
                except Exception as e:  # network hiccups: retry, then record and go on
                    if attempt == retries - 1:
                        counts["failed"].append((repo_id, f"{type(e).__name__}: {e}"))
                    else:
                        time.sleep(2 ** attempt)
            print(f"[{subset}/{split}] {i + 1}/{len(ids)} {repo_id}", flush=True)
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subset", required=True, choices=sorted(SUBSETS))
    ap.add_argument("--root", type=Path, default=default_root(), help=f"default: {default_root()}")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    ap.add_argument("--limit", type=int, help="at most this many models per split (for a first look)")
    args = ap.parse_args(argv)
    counts = download(args.subset, args.root, args.splits, args.limit)
    print(f"{args.subset}: {counts['present']} already present, {counts['downloaded']} downloaded, "
          f"{len(counts['failed'])} failed")
    for repo_id, err in counts["failed"]:
        print(f"  failed: {repo_id}: {err}", file=sys.stderr)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
