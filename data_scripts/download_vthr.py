"""Download the paper's VTHR benchmark (HF organisation "MoTHer-VTHR") into the layout weightspace reads.

    python data_scripts/download_vthr.py --splits ft                 # 105 ViT-B/16, ~35 GB per split
    python data_scripts/download_vthr.py --splits lora-v lora-f --root /data/vthr --limit 21
    python data_scripts/download_vthr.py --verify --root /data/vthr  # re-hash everything, no network

For every repository MoTHer-VTHR/VTHR-{FT|LoRA-V|LoRA-F}-ModelTree_t-Depth_d-Node_uuid8 it fetches
model.safetensors and config.json into <root>/<split>/<repository name>/, and the ground-truth graph
(dataset/*_model_graph.pkl of the official code, github.com/eliahuhorwitz/MoTHer) into
<root>/<split>/, converted to model_graph.json by a reader that refuses any object but the graph's
own classes. Then: notebook 05 with `vthr_root=<root>` (preset `paper`), or
`python -m weightspace mother <root>/ft --layers hf-vit --n-trees 5`.

Pinned and checked:
- the ground-truth pickles come from the official repository at commit vthr.GRAPH_COMMIT (not a
  branch) and must have the sha256 in vthr.GRAPH_SHA256; a mismatch deletes the file and stops;
- each model repository's current commit is resolved once (HfApi.model_info), its files are downloaded
  at that commit and checked against the Hub's published hashes (LFS sha256, git blob id otherwise);
  later runs download at the locked commit and check against the locked sha256;
- the split's model listing is stored once as <root>/<split>/models.txt.
Every checked file is recorded in <root>/weightspace-downloads.lock.json (sha256, size, source,
revision). Resumable: a file counts as present (skipped without a network call) when the lock has it,
its size matches and its safetensors header checks out; `--verify` re-hashes every locked file.
Needs network access to the Hugging Face hub and GitHub (not available on the project's CI machines).
"""
from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from pathlib import Path

from weightspace.downloads import DownloadError, Lock, expect_hash, published_hashes, verify_root
from weightspace.mother import vthr

FILES = ("model.safetensors", "config.json")
LISTING = "models.txt"


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


def locked_listing(split: str, lock: Lock) -> list[str]:
    """The split's repository names: from the locked <split>/models.txt, else listed once and locked."""
    rel = f"{split}/{LISTING}"
    if not lock.present(rel, rehash=True):
        names = list_models(split)
        if not names:
            raise DownloadError(f"the Hub lists no {vthr.HUB_ORG}/VTHR-{vthr.SPLITS[split]}-* repositories")
        (lock.root / rel).write_text("".join(n + "\n" for n in names))
        lock.record(rel, source=f"hf-listing:{vthr.HUB_ORG}", revision=None)
    names = (lock.root / rel).read_text().split()
    for n in names:
        vthr.parse_repo_name(n)
    return names


def fetch_graph(split: str, lock: Lock) -> Path:
    """The official ground-truth pickle at the pinned commit (sha256 checked) -> model_graph.json."""
    folder = lock.root / split
    folder.mkdir(parents=True, exist_ok=True)
    file, want = vthr.GRAPH_FILES[split], vthr.GRAPH_SHA256[split]
    rel, pkl = f"{split}/{file}", folder / file
    url = vthr.GRAPH_URL.format(commit=vthr.GRAPH_COMMIT, file=file)
    if not lock.present(rel, rehash=True) or lock.get(rel)["sha256"] != want:
        tmp = pkl.with_suffix(".part")
        urllib.request.urlretrieve(url, tmp)
        try:
            expect_hash(tmp, ("sha256", want), url)
        except DownloadError as e:
            lock.forget(rel)
            raise DownloadError(f"{e}. The official ground truth changed or the download was corrupted: "
                                "refusing to use it") from None
        tmp.replace(pkl)
        lock.record(rel, source=url, revision=vthr.GRAPH_COMMIT, sha256=want)
    out = folder / vthr.GRAPH_JSON
    vthr.write_graph_json(vthr.read_graph_pkl(pkl), out)
    return out


def fetch_model(name: str, lock: Lock, split: str, info_cache: dict | None = None) -> bool:
    """Download the missing or broken files of one model at its pinned commit; False when all present."""
    from huggingface_hub import HfApi, hf_hub_download

    repo_id = f"{vthr.HUB_ORG}/{name}"
    rels = {f: f"{split}/{name}/{f}" for f in FILES}
    todo = [f for f in FILES if not lock.present(rels[f])]
    if not todo:
        return False
    locked = {f: lock.get(rels[f]) for f in FILES if lock.get(rels[f])}
    revision = next((e["revision"] for e in locked.values()), None)
    expected = {f: ("sha256", e["sha256"]) for f, e in locked.items() if e["revision"] == revision}
    if revision is None or any(f not in expected for f in todo):
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
        revision = info.sha
        expected = {**published_hashes(info), **expected}
    for f in todo:
        if f not in expected:
            raise DownloadError(f"{repo_id}@{revision}: the Hub publishes no hash for {f}")
        (lock.root / rels[f]).unlink(missing_ok=True)
        path = hf_hub_download(repo_id, f, revision=revision, local_dir=lock.root / split / name,
                               force_download=True)
        sha = expect_hash(path, expected[f], f"{repo_id}@{revision}/{f}")
        lock.record(rels[f], source=f"hf:{repo_id}/{f}", revision=revision, sha256=sha)
    return True


def download(split: str, root: Path, limit: int | None = None, retries: int = 3) -> dict:
    lock = Lock(root)
    fetch_graph(split, lock)
    counts = {"present": 0, "downloaded": 0, "failed": []}
    for name in locked_listing(split, lock)[:limit]:
        for attempt in range(retries):
            try:
                counts["downloaded" if fetch_model(name, lock, split) else "present"] += 1
                break
            except Exception as e:  # network hiccups or a corrupted transfer: retry, then report and go on
                if attempt == retries - 1:
                    counts["failed"].append(f"{name}: {type(e).__name__}: {e}")
                else:
                    time.sleep(2 ** attempt)
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--splits", nargs="+", default=list(vthr.SPLITS), choices=list(vthr.SPLITS))
    ap.add_argument("--root", default="~/.cache/weightspace/vthr")
    ap.add_argument("--limit", type=int, default=None, help="at most this many models per split")
    ap.add_argument("--verify", action="store_true",
                    help="re-hash every file in the lock and report the ones that changed (no download)")
    args = ap.parse_args(argv)
    if args.verify:
        return verify_root(Path(args.root))
    failed = 0
    for split in args.splits:
        try:
            c = download(split, Path(args.root), args.limit)
        except DownloadError as e:
            print(f"{split}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{split}: {c['present']} present, {c['downloaded']} downloaded, {len(c['failed'])} failed")
        for f in c["failed"]:
            print("  ", f)
        failed += len(c["failed"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
