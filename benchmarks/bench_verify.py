"""What checking sha256 on read costs: `Zoo.layer` on a zoo of small models, verified vs unverified.

    .venv/bin/python benchmarks/bench_verify.py [--models 100] [--repeats 7] [--out results/bench_verify.json]

The zoo holds `models` random tiny-ViT state dicts (the size of the Model Trees zoo's models). Each repeat
opens the zoo afresh and times, on files already in the OS page cache (so this is the CPU cost of hashing,
not disk speed):
  unverified   the read before verification existed: each file opened for one tensor, stacked
  cold         Zoo.layer(cache=False) on a fresh Zoo: every file read whole once, hashed, parsed from memory
  warm         Zoo.layer(cache=False) of another layer on the same Zoo: files verified before (memo), no hash
  cache hit    Zoo.layer of a cached stack: the cache file is hashed against its sidecar before it is served
and prints the medians and the ratio cold / unverified.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from weightspace.nets import make_vit
from weightspace.zoo import Zoo
from weightspace.zoo.format import read_safetensors


def build(path: Path, n: int) -> Zoo:
    shapes = {k: v.shape for k, v in make_vit(10).state_dict().items()}
    zoo = Zoo.create(path, kind="bench", builder="benchmarks/bench_verify.py", params={"n": n})
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        zoo.add(f"m{i:03d}", {k: torch.randn(s, generator=g) for k, s in shapes.items()}, depth=0, split=None)
    return zoo


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        zoo = build(Path(tmp) / "zoo", args.models)
        names = [k for k in zoo.lazy(zoo.ids[0]) if k.endswith("attn.qkv.weight")]
        a, b = names[0], names[-1]
        size = sum(p.stat().st_size for p in (zoo.path / "models").glob("*.safetensors"))
        zoo.layer(a, cache=False)                                 # bring every file into the page cache
        t = {"unverified": [], "cold": [], "warm": [], "cache_hit": []}
        for _ in range(args.repeats):
            z = Zoo.open(zoo.path)
            t["unverified"].append(timed(lambda: torch.stack(
                [read_safetensors(z.path / r["file"], [a])[a] for r in z.rows])))
            z = Zoo.open(zoo.path)
            t["cold"].append(timed(lambda: z.layer(a, cache=False)))
            t["warm"].append(timed(lambda: z.layer(b, cache=False)))
            z.layer(a)
            t["cache_hit"].append(timed(lambda: Zoo.open(zoo.path).layer(a)))
        med = {k: statistics.median(v) for k, v in t.items()}
        ref = torch.stack([read_safetensors(zoo.path / r["file"], [a])[a] for r in zoo.rows])
        assert torch.equal(Zoo.open(zoo.path).layer(a, cache=False), ref)
    result = {"models": args.models, "zoo_mb": round(size / 2**20, 2), "layer": a, "repeats": args.repeats,
              **{f"{k}_s": round(v, 4) for k, v in med.items()},
              "cold_over_unverified": round(med["cold"] / med["unverified"], 2),
              "warm_over_unverified": round(med["warm"] / med["unverified"], 2)}
    for k, v in result.items():
        print(f"{k:>22}: {v}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
