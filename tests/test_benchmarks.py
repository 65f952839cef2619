"""Smoke tests of the benchmark scripts (the real entry points, tiny budgets): they run, write their
results file, and their two implementations agree."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import TINY_TREES

from weightspace.zoo.model_trees import build_model_trees

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, out):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True, text=True)
    return json.loads(out.read_text())


def test_bench_zoo(tmp_path):
    res = run("bench_zoo.py", "--models", "4", "--steps", "2", "--repeats", "2", out=tmp_path / "zoo.json")
    assert res["models"] == 4 and res["speedup"] > 0 and res["speedup_vs_one_process"] > 0
    assert res["max_abs_weight_difference_after_one_step"] < 1e-5  # same recipe on both sides
    assert res["repeats"] == 2 and res["speedup_cpu_min"] <= res["speedup_cpu_median"] <= res["speedup_cpu_max"]
    assert res["speedup_cpu_train_min"] > 0 and res["speedup_cpu_eval_min"] > 0    # the CPU time in its two parts
    assert 0 < res["eval_share_of_cpu_batched"] < 1 and 0 < res["eval_share_of_cpu_one_at_a_time"] < 1


def test_bench_zoo_on_notebook_01s_rows(tmp_path):
    from weightspace.zoo.model_trees import plan_jobs

    res = run("bench_zoo.py", "--models", "2", "--repeats", "1", "--notebook01", out=tmp_path / "zoo.json")
    rows = next(j for j in plan_jobs({}) if "fine-tunes" in j.name).spec["rows"]
    assert res["rows"] == "notebook 01's fine-tunes" and res["models"] == 2
    picked = rows[:: len(rows) // 2][:2]                             # the notebook's own rows, its steps among them
    assert res["steps"] == f"{min(r['steps'] for r in picked)}-{max(r['steps'] for r in picked)}"
    assert res["classes_per_model"] == len(picked[0]["classes"])
    assert res["max_abs_weight_difference_after_one_step"] < 1e-5


def test_bench_zoo_retire(tmp_path):
    res = run("bench_zoo.py", "--retire", "--models", "3", out=tmp_path / "retire.json")
    assert res["models"] == 3 and res["bit_identical"] and res["metrics_identical"]
    assert res["model_steps"] < res["model_steps_run_to_longest"] and res["speedup_cpu"] > 0


def test_bench_zoo_forward(tmp_path):
    res = run("bench_zoo.py", "--forward", "--models", "3", "--steps", "2", out=tmp_path / "forward.json")
    assert res["models"] == 3 and res["same_accuracies"] and res["speedup_train_cpu"] > 0
    assert res["max_abs_logit_difference"] < 1e-4 and res["max_relative_gradient_difference"] < 1e-4


def test_bench_zoo_eval(tmp_path):
    res = run("bench_zoo.py", "--eval", "--models", "3", out=tmp_path / "eval.json")
    assert res["models"] == 3 and len(res["cpu_s_stack"]) == len(res["cpu_s_alone"]) == 3
    assert res["models_with_the_same_accuracy"] == 3 and res["max_accuracy_difference"] == 0 and res["speedup_cpu"] > 0


def test_bench_probex(tmp_path):
    zoo = build_model_trees(tmp_path / "trees", executor="inline", progress=False,
                            **{**TINY_TREES, "n_per_tree": 8, "split": [0.5, 0.25, 0.25]})
    res = run("bench_probex.py", "--zoo", str(zoo.path), "--epochs", "3", out=tmp_path / "probex.json")
    assert res["n_train"] == 4 and res["speedup"] > 0
    assert res["best_val_acc_pre_extracted"] == res["best_val_acc_reread"]  # same model, same batches
    sweep = res["sweep"]                   # fit after fit, fit_many, and fit_many by vmap: the same experts
    assert sweep["fits"] == 2 * sweep["trees"] * sweep["layers"] and sweep["forward_stacked_over_vmap"] > 0
    assert sweep["max_test_acc_difference"] < 0.05 and sweep["identical_to_vmap"] >= sweep["fits"] // 2


def test_bench_lora(tmp_path):
    res = run("bench_lora.py", "--k", "2", "--steps", "2", "--batch", "4", out=tmp_path / "lora.json")
    assert res["k"] == 2 and res["speedup"] > 0 and res["max_abs_factor_change"] > 1e-4
    assert res["max_abs_factor_difference"] < 1e-5  # stacked and lone peft adapters train the same factors


def test_floor_step_parts_count_the_products_of_a_step(monkeypatch):
    """The profiler's FLOPs of a fine-tuning step's batched products equal the ViT's linear layers counted by
    hand: forward, and backward for the gradients of weights and inputs (no input gradient for the images)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import floor

    from weightspace.data import styled_digits
    from weightspace.nets.vit import VIT_TINY

    M, batch = 3, 8
    res = floor.step_parts(M=M, batch=batch, steps=1)
    parts = {r["part"]: r for r in res["parts"]}
    assert list(parts)[:4] == [name for name, _ in floor.PARTS] and len(parts) == 5
    c = {**VIT_TINY, "global_pool": "avg"}
    d, L, h, p = c["embed_dim"], c["depth"], int(c["mlp_ratio"] * c["embed_dim"]), c["patch_size"]
    n = (c["img_size"] // p) ** 2
    embed, blocks, head = n * p * p * d, L * (n + 1) * (4 * d * d + 2 * d * h), d * styled_digits().n_classes
    assert parts["linear layers (batched products)"]["gflop"] * 1e9 == 2 * M * batch * (2 * embed + 3 * (blocks + head))
    assert abs(sum(r["share"] for r in res["parts"]) - 1) < 1e-9 and res["forward_backward_s"] > 0
    assert res["attention"]["max_abs_difference"] < 1e-4          # the two attentions timed compute the same
    peak = {"gflops": 1.0, "gbs": 1.0}
    floor.add_rates(res["parts"], peak)
    text = floor.table({"peak": peak, "load_before": "0", "load_after": "0", "stages": [], "step": res})
    assert "| attention (fused) |" in text and f"of {M} stacked ViTs" in text
