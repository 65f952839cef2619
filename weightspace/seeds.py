"""One notebook run over several seeds, summarised: how much of a result is the seed's.

Every numbered notebook has a `seed` parameter (0: the committed run). Running the notebooks once per seed,
each seed with its own zoos and results directory, gives one results file per notebook and seed;
`aggregate` summarises one notebook's files and `write_seed_summary` writes `seeds.json` for all of them:

    {"seeds": [0, 1, 2],
     "headline": [[what, {"mean", "sd", "min", "max", "values", "text"}, paper], ...],
     "claims": [{"claim", "paper", "how", "ours": {"mean", "sd", "min", "max", "values", "lhs_key", "op",
                 "rhs", "rhs_key", "tol"}, "holds": {"count": k, "of": n}}, ...],
     "numbers": {"a/b/0": {"mean", "sd", "min", "max", "values"}, ...}}

`sd` is the sample standard deviation (ddof 1; None for one seed). A headline's number is the notebook's
`ours`: a number, or text holding numbers ("0.81 / 0.66"); text is summarised number by number when every
seed writes the same text around its numbers (then mean, sd, min and max are lists, one entry per number),
otherwise only its values are kept. Claims are matched by their text; each seed's verdict is recomputed from
that seed's numbers (`plotting.check_claims`), `ours` summarises the claim's left-hand side and `rhs` its
right-hand side. `numbers` holds every numeric leaf (as a "/"-separated key path, as claims use) that every
seed has.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Mapping
from pathlib import Path

from weightspace.plotting import ClaimError, check_claims

SUMMARY = "seeds.json"
_SKIP = ("claims", "claims_not_measurable", "headline", "figures", "environment", "seed")
# a number as the notebooks print them: 0.812, -3, +0.012, 2,304 (thousands), 1e-05
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")


def stats(values) -> dict:
    """Mean, sample standard deviation (ddof 1; None for one value), min and max of finite numbers."""
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"stats needs one or more finite numbers, got {values}")
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "values": values}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _leaves(node, prefix=""):
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}/")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}{i}/")
    elif _is_number(node):
        yield prefix[:-1], float(node)


def _numbers(by_seed: dict[int, Mapping]) -> dict:
    flat = {s: dict(_leaves({k: v for k, v in r.items() if k not in _SKIP})) for s, r in by_seed.items()}
    first = flat[min(flat)]
    return {k: stats([flat[s][k] for s in flat]) for k in first if all(k in f for f in flat.values())}


def _split_text(text: str) -> tuple[str, list[float], list[int]]:
    """Text as its skeleton (numbers replaced by {}), its numbers and each number's decimals."""
    parts, nums, decimals = [], [], []
    last = 0
    for m in _NUMBER.finditer(text):
        parts.append(text[last:m.start()].replace("{", "{{").replace("}", "}}"))
        token = m.group()
        nums.append(float(token.replace(",", "")))
        mantissa = re.split("[eE]", token)[0]
        decimals.append(len(mantissa.split(".")[1]) if "." in mantissa else 0)
        last = m.end()
    parts.append(text[last:].replace("{", "{{").replace("}", "}}"))
    return "{}".join(parts), nums, decimals


def _pm(s: dict, decimals: int) -> str:
    sd = "n/a" if s["sd"] is None else f"{s['sd']:.{decimals}f}"
    return f"{s['mean']:.{decimals}f} ± {sd}"


def _headline_value(values: list) -> dict:
    """One headline number (or text of numbers) over the seeds, with `text`: it as mean ± sd."""
    if all(_is_number(v) for v in values):
        s = stats(values)
        return {**s, "values": list(values), "text": _pm(s, 3)}
    if all(isinstance(v, str) for v in values):
        split = [_split_text(v) for v in values]
        skeletons = {sk for sk, _, _ in split}
        if len(skeletons) == 1 and split[0][1]:
            per = [stats([nums[i] for _, nums, _ in split]) for i in range(len(split[0][1]))]
            shown = [_pm(s, max(d[i] for _, _, d in split) + 1) for i, s in enumerate(per)]
            return {**{k: [s[k] for s in per] for k in ("mean", "sd", "min", "max")}, "values": list(values),
                    "text": skeletons.pop().format(*shown)}
    return {"mean": None, "sd": None, "min": None, "max": None, "values": list(values), "text": None}


def _headline(by_seed: dict[int, Mapping]) -> list:
    rows = {s: r.get("headline") or [] for s, r in by_seed.items()}
    lengths = {s: len(h) for s, h in rows.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the seeds' results have different numbers of headline rows {lengths}: "
                         "a headline must not depend on the seed")
    out = []
    for i in range(next(iter(lengths.values()))):
        whats = [rows[s][i][0] for s in rows]
        entry = [whats[0], _headline_value([rows[s][i][1] for s in rows]), rows[min(rows)][i][2]]
        if len(set(whats)) > 1:
            entry[1]["what_by_seed"] = dict(zip(map(str, rows), whats))
        out.append(entry)
    return out


def _claims(by_seed: dict[int, Mapping]) -> list:
    per_seed = {}
    for s, r in by_seed.items():
        try:
            checked = check_claims(r)
        except ClaimError as e:
            raise ClaimError(f"seed {s}: {e}") from None
        seen: dict[str, int] = {}
        per_seed[s] = {}
        for c in checked:                     # the same text twice: matched by occurrence
            key = (c["claim"], seen.get(c["claim"], 0))
            seen[c["claim"]] = key[1] + 1
            per_seed[s][key] = c
    order = list(dict.fromkeys(k for s in sorted(per_seed) for k in per_seed[s]))
    out = []
    for key in order:
        have = [s for s in sorted(per_seed) if key in per_seed[s]]
        recs = [per_seed[s][key] for s in have]
        o = recs[0]["ours"]
        entry = {"claim": key[0], "paper": recs[0]["paper"], "how": recs[0]["how"],
                 "ours": {**stats([r["ours"]["lhs"] for r in recs]), "lhs_key": o["lhs_key"], "op": o["op"],
                          "rhs": stats([r["ours"]["rhs"] for r in recs]), "rhs_key": o["rhs_key"],
                          "tol": o["tol"]},
                 "holds": {"count": sum(r["holds"] for r in recs), "of": len(recs)}}
        if len(have) < len(per_seed):
            entry["missing_seeds"] = [s for s in sorted(per_seed) if s not in have]
        out.append(entry)
    return out


def aggregate(results_by_seed: Mapping[int, Mapping]) -> dict:
    """One notebook's results, one dict per seed ({seed: results}), summarised over the seeds."""
    if not results_by_seed:
        raise ValueError("aggregate: no results (expected {seed: results dict})")
    by_seed = {}
    for s, r in results_by_seed.items():
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"aggregate: seeds must be integers, got {s!r}")
        if not isinstance(r, Mapping):
            raise TypeError(f"aggregate: the results of seed {s} are a {type(r).__name__}, not a dict")
        if "seed" in r and r["seed"] != s:
            raise ValueError(f"aggregate: the results given for seed {s} record seed {r['seed']!r}")
        by_seed[s] = r
    by_seed = dict(sorted(by_seed.items()))
    presets = {s: r["preset"] for s, r in by_seed.items() if "preset" in r}
    if len(set(presets.values())) > 1:
        raise ValueError(f"aggregate: the seeds ran different presets {presets}")
    return {"seeds": list(by_seed), "headline": _headline(by_seed), "claims": _claims(by_seed),
            "numbers": _numbers(by_seed)}


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable results file: {e}") from None
    if not isinstance(data, dict):
        raise TypeError(f"{path}: a results file holds a JSON object, this one a {type(data).__name__}")
    return data


def write_seed_summary(out_dir: str | Path, results_dirs: Mapping[int, str | Path]) -> Path:
    """<out_dir>/seeds.json: `aggregate` of every notebook whose results file is in every seed's results
    directory ({seed: directory}), keyed by the notebook's stem."""
    dirs = {s: Path(d) for s, d in results_dirs.items()}
    if not dirs:
        raise ValueError("write_seed_summary: no results directories (expected {seed: directory})")
    missing = [str(d) for d in dirs.values() if not d.is_dir()]
    if missing:
        raise FileNotFoundError(f"write_seed_summary: no results directory {', '.join(missing)}")
    stems = {s: {p.stem for p in d.glob("[0-9][0-9]_*.json")} for s, d in dirs.items()}
    common = sorted(set.intersection(*stems.values()))
    if not common:
        raise ValueError(f"write_seed_summary: no notebook has results under every seed: {stems}")
    summary = {}
    for stem in common:
        try:
            summary[stem] = aggregate({s: _read(d / f"{stem}.json") for s, d in dirs.items()})
        except ValueError as e:
            files = ", ".join(str(d / f"{stem}.json") for d in dirs.values())
            raise type(e)(f"{stem} ({files}): {e}") from None
    out = Path(out_dir) / SUMMARY
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return out


def read_seed_summary(results_dir: str | Path) -> dict | None:
    """The seeds.json in a results directory ({notebook stem: aggregate}), or None when there is none."""
    path = Path(results_dir) / SUMMARY
    if not path.exists():
        return None
    data = _read(path)
    bad = [k for k, v in data.items() if not isinstance(v, dict) or not {"seeds", "headline", "claims"} <= set(v)]
    if bad:
        raise ValueError(f"{path}: not a seed summary (entries {bad} lack seeds / headline / claims)")
    return data


def headline_over_seeds(summary: Mapping, i: int, what: str) -> str | None:
    """The i-th headline row of one notebook's summary as "mean ± sd (n seeds)", if it is that row."""
    rows = summary.get("headline") or []
    if i >= len(rows):
        return None
    row_what, value = rows[i][0], rows[i][1]
    if what != row_what and what not in (value.get("what_by_seed") or {}).values():
        return None
    n = len(value["values"])
    return f"{value['text']} ({n} seeds)" if value.get("text") else f"varies: {value['values']} ({n} seeds)"


def claim_over_seeds(summary: Mapping, claim: str, occurrence: int = 0) -> str | None:
    """"holds in k of n seeds" for a claim (its text; the occurrence-th of that text) of one summary."""
    found = [c for c in summary.get("claims") or [] if c["claim"] == claim]
    if occurrence >= len(found):
        return None
    h = found[occurrence]["holds"]
    return f"holds in {h['count']} of {h['of']} seeds"
