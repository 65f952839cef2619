"""weightspace zoo {info,verify,repair} DIR — look at (or repair) a zoo folder from the shell."""
from __future__ import annotations

import argparse
import sys

from .format import Zoo, ZooError


def main(argv=None) -> int:
    from weightspace.__main__ import prog

    ap = argparse.ArgumentParser(prog=prog("zoo"), description=__doc__.split("\n")[0].split(" — ")[1],
                                 epilog="exit codes: 0 ok, 1 the zoo has a problem (named on stderr), 2 usage")
    ap.add_argument("action", choices=["info", "verify", "repair"],
                    help="info: what the zoo holds; verify: re-hash every model file against the table; "
                         "repair: set aside rows whose parent is missing, so a builder re-run redoes them")
    ap.add_argument("path", metavar="DIR", help="the zoo folder (the one holding zoo.json)")
    args = ap.parse_args(argv)
    try:
        if args.action == "repair":
            kept = Zoo.repair(args.path)
            Zoo.open(args.path)
            done = (f"{len(kept)} row(s) whose parent is missing set aside; re-run the builder to "
                    "rebuild the parents and re-adopt them") if kept else "nothing to repair"
            print(f"{args.path}: {done}")
            return 0
        zoo = Zoo.open(args.path)
        if args.action == "info":
            m = zoo.manifest
            env = m.get("environment") if isinstance(m.get("environment"), dict) else {}
            pk = env.get("packages") if isinstance(env.get("packages"), dict) else {}
            made = ", ".join(f"{k} {pk[k]}" for k in ("torch", "timm", "diffusers") if pk.get(k))
            print(f"{zoo.path}: kind {m.get('kind')!r}, {len(zoo)} models, built by {m.get('builder')} "
                  f"(weightspace {m.get('package_version', '?')}, preset {m.get('preset')}"
                  + (f"; {made} on {env.get('device')}" if made else "") + ")")
            table = zoo.table
            for col in ("tree_id", "split", "depth"):
                if col in table:
                    print(f"  {col}: " + ", ".join(f"{k}={v}" for k, v in table[col].value_counts(dropna=False).sort_index().items()))
        else:
            zoo.verify()
            print(f"{zoo.path}: all {len(zoo)} model files match their sha256")
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
