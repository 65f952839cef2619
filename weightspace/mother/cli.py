"""weightspace mother DIR — recover the Model Tree(s) of a folder of checkpoints.

DIR may hold
  *.safetensors files                    one model each, named by the file stem
  sub-folders with model.safetensors     Hugging Face checkpoints (also sharded, with
                                         model.safetensors.index.json),
                                         named by the folder (e.g. a downloaded VTHR split)
  a weightspace zoo (zoo.json)           all its models; `--variant` picks one forest of a zoo of several
                                         (e.g. ft / lora-v / lora-f). Its parent_id column is the ground
                                         truth: accuracy is printed.

A folder under a download lock (weightspace-downloads.lock.json there or above, as the download scripts
write, or `python -m weightspace lock DIR`) is read only once each file matches it (size, header, sha256);
loose checkpoints without a lock have no recorded hash to check against.

Weights are memory-mapped and read one layer block at a time. The architecture (the preset of layer
names) is detected from the tensor names unless --layers / --direction-layers say otherwise.

  python -m weightspace mother zoos/default/mother_forests --variant lora-v --distance lora
  python -m weightspace mother my_checkpoints/ --n-trees 2 --json tree.json
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path

from weightspace.downloads import DownloadError, Verifier, find_lock
from weightspace.zoo.format import LazyStateDict, ZooError

from .distances import _device
from .layers import MotherError, detect_preset
from .recover import edge_accuracy, format_tree, recover, truth_graph


INDEX = "model.safetensors.index.json"
log = logging.getLogger("weightspace.mother")


def read_shard_index(index_path: Path) -> dict[str, str]:
    """{tensor name: shard file} of a Hugging Face shard index, checked (shards must lie beside it)."""
    index_path = Path(index_path)
    try:
        index = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MotherError(f"{index_path}: not a readable shard index ({type(e).__name__}: {e})") from None
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(isinstance(k, str) and isinstance(v, str)
                                                          for k, v in wmap.items()):
        raise MotherError(f"{index_path}: a shard index needs a non-empty \"weight_map\" of tensor name -> "
                          "shard file")
    for file in set(wmap.values()):
        shard = (index_path.parent / file).resolve()
        if shard.parent != index_path.parent.resolve() or not shard.name.endswith(".safetensors"):
            raise MotherError(f"{index_path}: shard {file!r} is not a .safetensors file beside the index")
    return wmap


class ShardedStateDict(Mapping):
    """A sharded HF checkpoint (model.safetensors.index.json) as one lazy state dict."""

    def __init__(self, index_path: Path, open_file=LazyStateDict):
        wmap = read_shard_index(index_path)
        self.path = None
        self._shards: dict[str, LazyStateDict] = {}
        self._where: dict[str, LazyStateDict] = {}
        for key, file in wmap.items():
            if file not in self._shards:
                self._shards[file] = open_file(Path(index_path).parent / file)
            if key not in self._shards[file]:
                raise MotherError(f"{index_path}: the index puts {key!r} in {file}, which has no such tensor")
            self._where[key] = self._shards[file]

    def __getitem__(self, key):
        return self._where[key][key]

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)

    def shape(self, key):
        return self._where[key].shape(key)

    def read_rows(self, key, a, b):
        from .layers import Layer, read_block

        shard = self._where[key]
        return read_block(shard, Layer(key, None, key, tuple(shard.shape(key))), a, b)


def load_folder(path, variant: str | None = None,
                verify: bool = True) -> tuple[dict[str, Mapping], dict | None]:
    """({name: lazy state dict}, ground-truth parents or None) for a folder (see the module docstring).

    A zoo's files are checked against its table's sha256, and loose checkpoints under a download lock against
    the lock (verify=True: one read of each file on open); loose checkpoints without a lock have no recorded
    hash to check against."""
    path = Path(path)
    if not path.is_dir():
        raise MotherError(f"{path}: not a folder")
    if (path / "zoo.json").exists():
        from weightspace.zoo import Zoo

        zoo = Zoo.open(path)
        ids = zoo.ids
        if zoo.variants:
            if variant is None:
                raise MotherError(f"{path} holds one forest per variant ({', '.join(zoo.variants)}) sharing "
                                  "their roots; pick one with --variant")
            ids = zoo.variant(variant)
        elif variant is not None:
            raise MotherError(f"{path}: --variant {variant!r}, but this zoo has no variants (one collection)")
        return zoo.state_dicts(ids, verify=verify), zoo.parents(ids)
    if variant is not None:
        raise MotherError(f"{path}: --variant {variant!r} picks one forest of a weightspace zoo, but this folder is "
                          "not a zoo (it has no zoo.json), so it has no variants")
    models: dict[str, Mapping] = {}
    sources: dict[str, Path] = {}
    lazy = Verifier(path).lazy if verify and find_lock(path) is not None else LazyStateDict

    def add(name, sd, src):
        if name in models:
            raise MotherError(f"duplicate model name {name!r}: {sources[name]} and {src}")
        models[name], sources[name] = sd, src

    if (path / INDEX).exists():      # the folder is itself ONE sharded checkpoint, not a folder of models
        shards = set(read_shard_index(path / INDEX).values())
        add(path.name, ShardedStateDict(path / INDEX, lazy), path)
    else:
        shards = set()
    for f in sorted(path.glob("*.safetensors")):
        if f.name not in shards:
            add(f.stem, lazy(f), f)
    for d in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (d / "model.safetensors").exists():
            add(d.name, lazy(d / "model.safetensors"), d)
        elif (d / INDEX).exists():
            add(d.name, ShardedStateDict(d / INDEX, lazy), d)
        elif any(d.glob("*.bin")) or any(d.glob("*.pt")) or any(d.glob("*.pth")):
            log.warning("skipped %s: it holds only pickled weights (%s), which we never load (unpickling runs "
                        "code); convert them to safetensors", d, ", ".join(sorted(p.name for p in d.glob("*.[bp]*"))))
    if not models:
        raise MotherError(f"{path}: no *.safetensors files, checkpoint sub-folders or zoo.json found")
    return models, None


def main(argv=None) -> int:
    from weightspace.__main__ import prog

    head, _, rest = __doc__.partition("\n")
    ap = argparse.ArgumentParser(prog=prog("mother"), description=head.split(" — ")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=rest.strip() + "\n\nexit codes: 0 recovered, 1 a problem with the "
                                 "checkpoints or zoo (named on stderr), 2 a usage error")
    ap.add_argument("dir", help="folder of checkpoints or a weightspace zoo")
    ap.add_argument("--distance", choices=["ft", "lora"], default="ft",
                    help="ft: mean RMS of weight differences; lora: sum of ranks of value differences")
    ap.add_argument("--layers", default=None,
                    help="preset (timm-vit, hf-vit, bert, llama, sd-unet[:group]) or regex")
    ap.add_argument("--direction-layers", default=None, help="layers whose kurtosis gives the direction")
    ap.add_argument("--lam", type=float, default=0.3, help="weight of the kurtosis prior (default 0.3)")
    ap.add_argument("--stage", choices=["finetune", "pretrain"], default="finetune")
    ap.add_argument("--n-trees", type=int, default=None,
                    help="number of Model Trees (default: from the dendrogram)")
    ap.add_argument("--variant", default=None, help="for a zoo of several forests: which one (e.g. ft, lora-v)")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip checking files against a zoo's table or a download lock (saves a read of each)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="also write the edges and trees to this JSON file")
    args = ap.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    problem = None
    if not math.isfinite(args.lam) or args.lam < 0:
        problem = f"--lam {args.lam}: the weight of the kurtosis prior must be a finite number >= 0"
    elif args.n_trees is not None and args.n_trees < 1:
        problem = f"--n-trees {args.n_trees}: must be at least 1"
    elif args.json and not Path(args.json).resolve().parent.is_dir():
        problem = f"--json {args.json}: the folder {Path(args.json).resolve().parent} does not exist"
    if problem is None and args.device is not None:
        try:
            _device(args.device)
        except MotherError as e:
            problem = f"--device: {e}"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        models, parents = load_folder(args.dir, args.variant, verify=not args.no_verify)
        preset = None
        if args.layers is None or args.direction_layers is None:
            preset = detect_preset(list(next(iter(models.values()))))
        layers = args.layers or preset
        direction = args.direction_layers or preset
        g = recover(models, layers=layers, distance=args.distance, direction_layers=direction, lam=args.lam,
                    stage=args.stage, n_trees=args.n_trees, device=args.device)
    except (MotherError, ZooError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if ": --" in str(e) or str(e).startswith("--") else 1   # an option that does not fit: usage
    n_trees = len(g.graph["trees"])
    print(f"{len(models)} models, {n_trees} tree(s); distance {args.distance} over {len(g.graph['layers'])} "
          f"matrices, direction from {len(g.graph['direction_layers'])} ({layers} / {direction}), "
          f"lambda {args.lam}, stage {args.stage}\n")
    wrong = set()
    if parents is not None:
        truth = truth_graph(parents)
        wrong = set(g.edges()) - set(truth.edges())
    print(format_tree(g, wrong))
    if parents is not None:
        print(f"\ndirected-edge accuracy vs the zoo's parent_id: {edge_accuracy(g, truth):.3f} "
              f"({len(wrong)} wrong edge(s), marked (x))")
    if args.json:
        out = {"edges": sorted(g.edges()), "trees": [t["names"] for t in g.graph["trees"]],
               "kurtosis": {n: g.nodes[n]["kurtosis"] for n in g.nodes}}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
