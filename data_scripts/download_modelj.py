"""Download Model-J's discriminative subsets (HF organisation "ProbeX") into the layout weightspace reads.

    python data_scripts/download_modelj.py --subset SupViT                # ~350 GB per subset
    python data_scripts/download_modelj.py --subset MAE --splits test --limit 20 --root /data/modelj
    python data_scripts/download_modelj.py --verify --root /data/modelj   # re-hash everything, no network

For every model listed in the dataset "ProbeX/Model-J" (config = subset; columns hf_model_id,
hf_model_url) it calls huggingface_hub.snapshot_download(repo_id, revision=<commit>,
cache_dir=<root>/<subset>/<split>), which leaves <split>/models--<org>--<name>/snapshots/<commit>/
model.safetensors; refs/main is set to that commit: the layout weightspace.probex.modelj.ModelJSubset
reads (the official code's too). Then pre-extract the layer you want (ModelJSubset.extract) and train on
that one small file.

Pinned and checked:
- the dataset listing is read at one commit of ProbeX/Model-J (resolved once with HfApi.dataset_info)
  and stored as <root>/<subset>/<split>/models.txt;
- each model repository's current commit is resolved once (HfApi.model_info), the model is downloaded
  at that commit and model.safetensors is checked against the Hub's published LFS sha256; later runs
  download at the locked commit and check against the locked sha256.
Every checked file is recorded in <root>/weightspace-downloads.lock.json (sha256, size, source,
revision). Resumable: a model counts as present (skipped without a network call) when the lock has its
model.safetensors, the size matches and its safetensors header checks out; `--verify` re-hashes every
locked file. Needs the `datasets` package and network access to the Hugging Face hub (not available on
the project's CI).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from weightspace.downloads import DownloadError, Lock, expect_hash, published_hashes, verify_root
from weightspace.probex.modelj import SPLITS, SUBSETS, WEIGHTS_FILE, default_root, repo_folder

DATASET = "ProbeX/Model-J"
LISTING = "models.txt"


def list_models(subset: str, split: str, revision: str) -> list[str]:
    """Model repo ids of one subset split, from the Model-J dataset at one commit."""
    try:
        from datasets import load_dataset
    except ImportError:
        sys.exit("listing Model-J needs the `datasets` package: pip install -e '.[paper]'")
    ds = load_dataset(DATASET, subset, split=split, revision=revision)
    return [row["hf_model_id"] for row in ds]


def dataset_revision(lock: Lock) -> str:
    """The Model-J dataset commit: the one already in the lock, else the current one (resolved once)."""
    for e in lock.entries.values():
        if e["source"].startswith(f"hf-dataset:{DATASET}") and e["revision"]:
            return e["revision"]
    from huggingface_hub import HfApi

    return HfApi().dataset_info(DATASET).sha


def locked_listing(subset: str, split: str, lock: Lock) -> list[str]:
    """The split's model ids: from the locked <subset>/<split>/models.txt, else listed once and locked."""
    rel = f"{subset}/{split}/{LISTING}"
    if not lock.present(rel, rehash=True):
        revision = dataset_revision(lock)
        ids = list_models(subset, split, revision)
        if not ids:
            raise DownloadError(f"{DATASET}@{revision} lists no models for {subset}/{split}")
        (lock.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (lock.root / rel).write_text("".join(i + "\n" for i in ids))
        lock.record(rel, source=f"hf-dataset:{DATASET}/{subset}/{split}", revision=revision)
    return (lock.root / rel).read_text().split()


def _set_ref(repo_dir: Path, commit: str) -> None:
    ref = repo_dir / "refs" / "main"
    if not ref.is_file() or ref.read_text().strip() != commit:
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)


def fetch_model(repo_id: str, cache: Path, lock: Lock) -> bool:
    """Download one model at its pinned commit unless it is present as locked; True when downloaded."""
    from huggingface_hub import HfApi, snapshot_download

    repo_dir = cache / repo_folder(repo_id)
    prefix = f"{repo_dir.relative_to(lock.root).as_posix()}/snapshots/"
    locked = {r: e for r, e in lock.find(prefix).items() if r.endswith("/" + WEIGHTS_FILE)}
    for rel, e in locked.items():
        if lock.present(rel):
            _set_ref(repo_dir, e["revision"])
            return False
    if locked:
        rel, e = next(iter(locked.items()))
        revision, expected = e["revision"], ("sha256", e["sha256"])
    else:
        info = HfApi().model_info(repo_id, files_metadata=True)
        revision, expected = info.sha, published_hashes(info).get(WEIGHTS_FILE)
        if expected is None:
            raise DownloadError(f"{repo_id}@{revision}: the Hub lists no {WEIGHTS_FILE} (or no hash for it)")
        rel = f"{prefix}{revision}/{WEIGHTS_FILE}"
    snapshot_download(repo_id=repo_id, revision=revision, cache_dir=str(cache),
                      allow_patterns=[WEIGHTS_FILE, "*.json", "*.md"], force_download=bool(locked))
    sha = expect_hash(lock.root / rel, expected, f"{repo_id}@{revision}/{WEIGHTS_FILE}")
    _set_ref(repo_dir, revision)
    lock.record(rel, source=f"hf:{repo_id}/{WEIGHTS_FILE}", revision=revision, sha256=sha)
    return True


def download(subset: str, root: Path, splits=SPLITS, limit: int | None = None, retries: int = 3) -> dict:
    lock = Lock(root)
    counts = {"present": 0, "downloaded": 0, "failed": []}
    for split in splits:
        cache = lock.root / subset / split
        cache.mkdir(parents=True, exist_ok=True)
        ids = locked_listing(subset, split, lock)[:limit]
        for i, repo_id in enumerate(ids):
            for attempt in range(retries):
                try:
                    counts["downloaded" if fetch_model(repo_id, cache, lock) else "present"] += 1
                    break
                except Exception as e:  # network hiccups or a corrupted transfer: retry, then record and go on
                    if attempt == retries - 1:
                        counts["failed"].append((repo_id, f"{type(e).__name__}: {e}"))
                    else:
                        time.sleep(2 ** attempt)
            print(f"[{subset}/{split}] {i + 1}/{len(ids)} {repo_id}", flush=True)
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subset", choices=sorted(SUBSETS), help="required unless --verify")
    ap.add_argument("--root", type=Path, default=default_root(), help=f"default: {default_root()}")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    ap.add_argument("--limit", type=int, help="at most this many models per split (for a first look)")
    ap.add_argument("--verify", action="store_true",
                    help="re-hash every file in the lock and report the ones that changed (no download)")
    args = ap.parse_args(argv)
    if args.verify:
        return verify_root(args.root)
    if args.subset is None:
        ap.error("--subset is required (unless --verify)")
    try:
        counts = download(args.subset, args.root, args.splits, args.limit)
    except DownloadError as e:
        print(f"{args.subset}: {e}", file=sys.stderr)
        return 1
    print(f"{args.subset}: {counts['present']} already present, {counts['downloaded']} downloaded, "
          f"{len(counts['failed'])} failed")
    for repo_id, err in counts["failed"]:
        print(f"  failed: {repo_id}: {err}", file=sys.stderr)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
