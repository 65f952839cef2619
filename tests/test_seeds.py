"""Runs over seeds: the summary of one notebook's results per seed, the gallery showing it, and the notebooks'
`seed` parameter (declared with a type, used by the code, and changing the numbers)."""
import ast
import json
import math
import os
import re
from pathlib import Path

import pytest

from weightspace import plotting, presets, reproduce, seeds
from weightspace.gallery import write_gallery

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = reproduce.numbered_notebooks(ROOT / "notebooks")
ENV = {"weightspace": "test", "python": "3", "packages": {}, "device": "cpu"}


def _claim(claim, lhs, op, rhs):
    return dict(claim=claim, paper="p", lhs=lhs, op=op, rhs=rhs, how="h")


def _results(seed, acc, a, pair, extra=None):
    """A made-up results dict of one seed, its claims resolved as save_results stores them."""
    r = {"seed": seed, "preset": "tiny", "paper": "P", "acc": acc, "nested": {"a": a}, "label": "text",
         "flag": True, "missing": None, "build_seconds": 1.0 + seed,
         "headline": [["accuracy", acc, "0.9"], ["within / across", pair, "n/a"]],
         "claims": [_claim("accuracy above 0.75", "acc", ">", 0.75),
                    _claim("a rises", "nested/a/0", "<", "nested/a/1")]}
    if extra is not None:
        r["only01"] = extra
        r["claims"].append(_claim("only some seeds measure it", "only01", ">=", 5))
    return plotting.resolve_claims({**r, "environment": ENV})


# acc 0.8 / 0.7 / 0.9: accuracy above 0.75 holds in seeds 0 and 2, not 1 (2 of 3)
# nested/a = [1, 2], [2, 2.5], [4, 5]: "a rises" holds in all three
# only01 only in seeds 0 and 1 (5 and 4): not in "numbers"; its claim holds in 1 of the 2 seeds that have it
BY_SEED = {0: _results(0, 0.8, [1.0, 2.0], "0.10 / 0.50", extra=5.0),
           1: _results(1, 0.7, [2.0, 2.5], "0.20 / 0.40", extra=4.0),
           2: _results(2, 0.9, [4.0, 5.0], "0.30 / 0.60")}


def test_aggregate_against_hand_computed_means_and_sample_sds():
    agg = seeds.aggregate(BY_SEED)
    assert agg["seeds"] == [0, 1, 2]
    n = agg["numbers"]
    # acc: mean 0.8; deviations 0, -0.1, 0.1 -> sum of squares 0.02, / (3 - 1) -> sd 0.1
    assert n["acc"]["mean"] == pytest.approx(0.8) and n["acc"]["sd"] == pytest.approx(0.1)
    assert (n["acc"]["min"], n["acc"]["max"], n["acc"]["values"]) == (0.7, 0.9, [0.8, 0.7, 0.9])
    # nested/a/0: 1, 2, 4 -> mean 7/3; deviations -4/3, -1/3, 5/3 -> squares 42/9, / 2 -> sd sqrt(7/3)
    assert n["nested/a/0"]["mean"] == pytest.approx(7 / 3)
    assert n["nested/a/0"]["sd"] == pytest.approx(math.sqrt(7 / 3))
    # nested/a/1: 2, 2.5, 5 -> mean 19/6; deviations -7/6, -4/6, 11/6 -> squares 186/36, / 2 -> sd sqrt(93/36)
    assert n["nested/a/1"]["sd"] == pytest.approx(math.sqrt(93 / 36))
    assert n["build_seconds"]["mean"] == pytest.approx(2.0)
    # a key missing in one seed, text, booleans, None (NaN), the seed itself and the claims are not numbers
    assert not {"only01", "label", "flag", "missing", "seed"} & set(n)
    assert not [k for k in n if k.startswith(("claims", "headline", "environment"))]


def test_aggregate_headline_numbers_and_text_of_numbers():
    (w1, acc, p1), (w2, pair, p2) = seeds.aggregate(BY_SEED)["headline"]
    assert (w1, p1, w2, p2) == ("accuracy", "0.9", "within / across", "n/a")
    assert acc["mean"] == pytest.approx(0.8) and acc["sd"] == pytest.approx(0.1)
    assert acc["text"] == "0.800 ± 0.100"
    # "0.10 / 0.50", "0.20 / 0.40", "0.30 / 0.60": per number, means 0.2 and 0.5, sds 0.1 and 0.1
    assert pair["mean"] == pytest.approx([0.2, 0.5]) and pair["sd"] == pytest.approx([0.1, 0.1])
    assert pair["min"] == pytest.approx([0.1, 0.4]) and pair["max"] == pytest.approx([0.3, 0.6])
    assert pair["values"] == ["0.10 / 0.50", "0.20 / 0.40", "0.30 / 0.60"]
    assert pair["text"] == "0.200 ± 0.100 / 0.500 ± 0.100"


def test_headline_text_that_differs_around_its_numbers_keeps_only_values():
    by = {s: {**r, "headline": [["n", t, "x"]]} for (s, r), t in zip(BY_SEED.items(), ["1 of 2", "3 / 4", "5"])}
    (_, v, _), = seeds.aggregate(by)["headline"]
    assert v["mean"] is None and v["text"] is None and v["values"] == ["1 of 2", "3 / 4", "5"]
    # thousands separators and signs are numbers too
    by = {s: {**r, "headline": [["n", t, "x"]]} for (s, r), t in zip(BY_SEED.items(), ["2,304; +0.5", "2,306; -0.5", "2,308; +0.0"])}
    (_, v, _), = seeds.aggregate(by)["headline"]
    assert v["mean"] == pytest.approx([2306.0, 0.0]) and v["sd"] == pytest.approx([2.0, 0.5])


def test_aggregate_claims_held_in_k_of_n_seeds():
    claims = {c["claim"]: c for c in seeds.aggregate(BY_SEED)["claims"]}
    acc = claims["accuracy above 0.75"]
    assert acc["holds"] == {"count": 2, "of": 3} and "missing_seeds" not in acc
    assert acc["ours"]["mean"] == pytest.approx(0.8) and acc["ours"]["sd"] == pytest.approx(0.1)
    assert acc["ours"]["values"] == [0.8, 0.7, 0.9]
    assert (acc["ours"]["lhs_key"], acc["ours"]["op"], acc["ours"]["rhs"]["values"]) == ("acc", ">", [0.75] * 3)
    assert claims["a rises"]["holds"] == {"count": 3, "of": 3}
    assert claims["a rises"]["ours"]["rhs_key"] == "nested/a/1"
    some = claims["only some seeds measure it"]
    assert some["holds"] == {"count": 1, "of": 2} and some["missing_seeds"] == [2]
    assert some["ours"]["mean"] == pytest.approx(4.5) and some["ours"]["sd"] == pytest.approx(math.sqrt(0.5))


def test_one_seed_has_no_sd():
    agg = seeds.aggregate({3: {**BY_SEED[0], "seed": 3}})
    assert agg["numbers"]["acc"] == {"mean": 0.8, "sd": None, "min": 0.8, "max": 0.8, "values": [0.8]}
    assert agg["headline"][0][1]["text"] == "0.800 ± n/a"


def test_aggregate_refuses_bad_input():
    with pytest.raises(ValueError, match="no results"):
        seeds.aggregate({})
    with pytest.raises(ValueError, match="given for seed 1 record seed 0"):
        seeds.aggregate({0: BY_SEED[0], 1: BY_SEED[0]})
    with pytest.raises(ValueError, match="different presets"):
        seeds.aggregate({0: BY_SEED[0], 1: {**BY_SEED[1], "preset": "default"}})
    with pytest.raises(TypeError, match="integers"):
        seeds.aggregate({"0": BY_SEED[0]})
    with pytest.raises(ValueError, match="different numbers of headline rows"):
        seeds.aggregate({0: BY_SEED[0], 1: {**BY_SEED[1], "headline": []}})
    tampered = json.loads(json.dumps(BY_SEED[1]))
    tampered["claims"][0]["holds"] = True                      # 0.7 > 0.75 is stored as holding
    with pytest.raises(plotting.ClaimError, match="seed 1: claim 'accuracy above 0.75'"):
        seeds.aggregate({0: BY_SEED[0], 1: tampered})
    with pytest.raises(ValueError, match="stats needs"):
        seeds.stats([])


def _write_runs(tmp_path, by_seed=BY_SEED):
    dirs = {}
    for s, r in by_seed.items():
        dirs[s] = tmp_path / f"seed{s}" / "results"
        plotting.save_results(dirs[s], "01_made_up", r)
    return dirs


def test_write_seed_summary_and_errors_naming_the_file(tmp_path):
    dirs = _write_runs(tmp_path)
    plotting.save_results(dirs[0], "02_only_seed_0", {"x": 1.0, "environment": ENV})
    path = seeds.write_seed_summary(dirs[0], dirs)
    assert path == dirs[0] / "seeds.json"
    summary = json.loads(path.read_text())
    assert list(summary) == ["01_made_up"]                      # 02 has no results under seeds 1 and 2
    assert summary["01_made_up"]["numbers"]["acc"]["sd"] == pytest.approx(0.1)
    assert seeds.read_seed_summary(dirs[0]) == summary
    assert seeds.read_seed_summary(dirs[1]) is None
    with pytest.raises(FileNotFoundError, match="nowhere"):
        seeds.write_seed_summary(tmp_path, {**dirs, 3: tmp_path / "nowhere"})
    (dirs[2] / "01_made_up.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(dirs[2] / "01_made_up.json"))):
        seeds.write_seed_summary(tmp_path, dirs)
    with pytest.raises(ValueError, match="no notebook has results under every seed"):
        seeds.write_seed_summary(tmp_path, {0: dirs[0], 5: tmp_path})
    (dirs[0] / "seeds.json").write_text('{"01_made_up": {"seeds": [0]}}')
    with pytest.raises(ValueError, match="not a seed summary"):
        seeds.read_seed_summary(dirs[0])


def test_gallery_shows_mean_sd_and_k_of_n_seeds(tmp_path):
    dirs = _write_runs(tmp_path)
    figures = tmp_path / "figures"
    figures.mkdir()
    plain = write_gallery(figures, dirs[0], "tiny").read_text()
    assert "over seeds" not in plain and "seeds" not in plain.split("## P")[0]
    seeds.write_seed_summary(dirs[0], dirs)
    text = write_gallery(figures, dirs[0], "tiny").read_text()
    assert "seeds [0, 1, 2]" in text
    assert "| accuracy | 0.800 | 0.800 ± 0.100 (3 seeds) | 0.9 |" in text
    assert "| within / across | 0.10 / 0.50 | 0.200 ± 0.100 / 0.500 ± 0.100 (3 seeds) | n/a |" in text
    row = next(line for line in text.splitlines() if line.startswith("| accuracy above 0.75 |"))
    assert "| holds | holds in 2 of 3 seeds |" in row
    row = next(line for line in text.splitlines() if line.startswith("| only some seeds measure it |"))
    assert "holds in 1 of 2 seeds" in row
    # without seeds.json the tables are as before; with it, the run's own numbers (seed 0) stay beside the means
    assert "| accuracy above 0.75 | p | acc 0.8 > 0.75 | holds | h (`01_made_up`) |" in plain
    assert "| accuracy | 0.800 | 0.9 |" in plain


# --- the notebooks' `seed` parameter -----------------------------------------------------------------------

def _code_cells(path):
    cells = json.loads(path.read_text())["cells"]
    return [("parameters" in c["metadata"].get("tags", []), "".join(c["source"]))
            for c in cells if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_declares_a_typed_seed_and_uses_it(path):
    declared = reproduce.notebook_parameters(path)
    assert "seed" in declared, f"{path.name}: no `seed` parameter"
    assert declared["seed"]["inferred_type_name"] == "int" and declared["seed"]["default"] == "0", declared["seed"]
    code = "\n".join(src for is_params, src in _code_cells(path) if not is_params)
    tree = ast.parse(code)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "seed" in names, f"{path.name}: the code never reads `seed`"
    # every zoo build and every seed handed to a call or put in a dict comes from `seed` (build_like copies
    # its zoo's seed); a builder's keywords include those of `**name` where `name = dict(...)` in the code
    assigned = {t.id: _keys(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name) and _keys(n.value) is not None}
    for node in ast.walk(tree):
        pairs = (list(zip(node.keys, node.values)) if isinstance(node, ast.Dict) else
                 [(ast.Constant(k.arg), k.value) for k in node.keywords if k.arg] if isinstance(node, ast.Call)
                 else [])
        for k, v in pairs:
            if isinstance(k, ast.Constant) and k.value in ("seed", "seeds", "sweep_seeds") \
                    and isinstance(v, (ast.Constant, ast.List)):
                pytest.fail(f"{path.name}, line {node.lineno} of its code cells: {k.value}={ast.unparse(v)} is a literal seed")
        if not isinstance(node, ast.Call):
            continue
        fn = ast.unparse(node.func)
        if fn.endswith(("manual_seed", "default_rng")) and node.args and isinstance(node.args[0], ast.Constant):
            pytest.fail(f"{path.name}, line {node.lineno} of its code cells: {fn}({node.args[0].value!r}) is a literal seed")
        if fn.startswith("build_") and fn != "build_like":
            keys = {k.arg for k in node.keywords if k.arg}
            spread = [k.value for k in node.keywords if k.arg is None]
            if all(isinstance(v, ast.Name) and v.id in assigned for v in spread):   # else: not resolvable
                keys |= {key for v in spread for key in assigned[v.id]}
                assert "seed" in keys, f"{path.name}, line {node.lineno} of its code cells: {fn}(...) without seed="
    results = [n for n in ast.walk(tree) if isinstance(n, (ast.Dict, ast.Call)) and _records_seed(n)]
    assert results, f"{path.name}: its results do not record `seed`"


def _keys(node) -> set | None:
    """The keys of a `dict(...)` call or a dict literal of string keys, else None."""
    if isinstance(node, ast.Call) and ast.unparse(node.func) == "dict":
        return {k.arg for k in node.keywords if k.arg}
    if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.keys):
        return {k.value for k in node.keys}
    return None


def _records_seed(node) -> bool:
    if isinstance(node, ast.Dict):
        return any(isinstance(k, ast.Constant) and k.value == "seed" and isinstance(v, ast.Name) and v.id == "seed"
                   for k, v in zip(node.keys, node.values))
    return (ast.unparse(node.func) == "dict"
            and any(k.arg == "seed" and isinstance(k.value, ast.Name) and k.value.id == "seed" for k in node.keywords))


def test_the_static_check_catches_a_literal_builder_seed(tmp_path):
    """The check above, on a notebook whose builder seed is still a literal."""
    nb = json.loads(NOTEBOOKS[0].read_text())
    for c in nb["cells"]:
        src = "".join(c["source"])
        if "build_model_trees(" in src and c["cell_type"] == "code":
            c["source"] = src.replace("seed=seed", "seed=0")
    bad = tmp_path / NOTEBOOKS[0].name
    bad.write_text(json.dumps(nb))
    with pytest.raises(pytest.fail.Exception, match="literal seed"):
        test_every_notebook_declares_a_typed_seed_and_uses_it(bad)


# --- run at the tiny preset: a seed changes the numbers, the same seed repeats them -----------------------

def _run(stem, seed, out):
    import papermill

    nb = ROOT / "notebooks" / f"{stem}.ipynb"
    params = {"preset": "tiny", "zoo_root": str(out / "zoos"), "figures_dir": str(out / "figures"),
              "results_dir": str(out / "results"), "seed": seed, **presets.parameters("tiny", stem)}
    out.mkdir(parents=True)
    papermill.execute_notebook(str(nb), str(out / nb.name), parameters=params, cwd=str(nb.parent),
                               progress_bar=False, kernel_name="python3", language="python")
    return json.loads((out / "results" / f"{stem}.json").read_text())


def _measured(results) -> dict:
    """Every number of a results file but timings (seconds differ from run to run)."""
    agg = seeds.aggregate({results["seed"]: results})["numbers"]
    return {k: v["mean"] for k, v in agg.items() if "seconds" not in k}


@pytest.mark.notebooks
def test_quickstart_seed_changes_its_numbers_and_repeats_them(tmp_path, monkeypatch):
    # the kernels import this checkout's weightspace, whatever the venv has installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    first, again, other = (_run("00_quickstart", s, tmp_path / name) for s, name in ((0, "a"), (0, "b"), (1, "c")))
    assert (first["seed"], again["seed"], other["seed"]) == (0, 0, 1)
    assert _measured(first) == _measured(again)
    differ = [k for k in _measured(first) if _measured(first)[k] != _measured(other).get(k)]
    assert {"mean_distance_within_tree", "mean_distance_across_trees", "mean_finetune_test_acc"} <= set(differ)
