"""Batched (vmap) fine-tuning vs the same recipe one model at a time, on 2 cores.

    .venv/bin/python benchmarks/bench_zoo.py [--models 128] [--steps 150] [--workers 2] [--repeats 5]
        [--notebook01] [--out results/bench_zoo.json]
    .venv/bin/python benchmarks/bench_zoo.py --retire [--models 64] [--out results/bench_retire.json]
    .venv/bin/python benchmarks/bench_zoo.py --forward [--models 64] [--steps 40] [--out results/bench_forward.json]
    .venv/bin/python benchmarks/bench_zoo.py --eval [--models 64] [--out results/bench_eval.json]

Both sides fine-tune the same models (same parent, classes, learning rates, schedules, seeds and batches)
from a briefly pre-trained root, split over `workers` processes of one thread each, as the zoo builder
does. "batched" is weightspace.nets.vit_training.finetune (all of a worker's models in one vmapped step);
"one at a time" is a plain nn.Module + torch.optim.AdamW loop per model. Both then measure each model's
accuracy on the test images of its own classes, as the builder does. The script also checks that
the two give the same weights after one step (up to float rounding, which Adam's normalised steps
amplify over a run), then prints (and writes) the speed ratio.

A third run, "one process", is what a user without the zoo builder writes: the same per-model loop in
a single process, torch using both cores (2 threads) for each model's small matrix products.

Why the ratio moved between runs (1.54x-1.99x): it was a ratio of two wall times measured one after
the other on cores that other jobs share, so whichever side ran while the machine was busier lost. Now
each of `--repeats` rounds runs both sides back to back (alternating which goes first) and the ratio is
also taken of CPU time (time.process_time of each one-thread worker, summed), which other processes'
load inflates far less; min / median / max over the rounds are reported for both, and for the two parts
of the CPU time, training and the evaluation each model ends with. `--notebook01` fine-tunes rows of
notebook 01's own plan (its classes per model, learning rates, 100-300 steps, schedules and seeds) instead
of the synthetic ones (20 classes, a fixed number of steps).

`--retire`: one fine-tuning chunk of notebook 01 (its first 64 models by steps, with their rows: classes,
learning rates, 100-148 steps, schedules, seeds) in one process of one thread, with finished models leaving
the stack (`finetune_stacked(retire=True)`, what the builders run) and with every model run to the longest
at learning rate 0 (`retire=False`, as before): CPU-time ratio, and whether the weights are bit-identical.

`--forward`: the stacked ViT's forward and backward as batched products (nets.vit.stacked_forward, what
Stacked runs for a plain timm ViT) vs vmap of the timm module (Stacked with its `vit` config removed), on
the same stacked weights and batches: a fine-tuning step (loss, gradients of every weight) and the
builders' evaluation as it ran before `--eval`'s change (the stack, 128 images per model at a time), CPU time of
one thread, and the largest output and gradient differences.

`--eval`: the accuracy each fine-tune's row records, computed by running the stack (stacked_forward, 128
own-class test images per model at a time, as the builders did) vs by running each model alone
(vit_training.evaluate, what they run now), on notebook 01's rows fine-tuned for a few steps: CPU time of one
thread, and whether the accuracies are the same.

What to expect: at batch 32 one tiny-ViT model step is mostly arithmetic (~2.7 MFLOP per image, forward
and backward), so batching M models removes only the per-model Python/dispatch overhead; both sides end
by evaluating each model alone (vit_training.evaluate, 256 images at a time, vs all at once), so the
evaluation's ratio is near 1; against the naive loop the rest comes from running one model per core instead
of splitting each model's small products over two threads. Measured on an idle machine (64 of notebook 01's
rows, 5 rounds, results/bench_zoo_notebook01.json): CPU-time ratio 1.45 / 1.49 / 1.51x (min / median /
max); one process with 2 threads 2.77x slower than batched.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from weightspace.plotting import save_results

# the workers send back every model's state dict; torch's default passes each tensor's storage as a file
# descriptor, and 32 models' tensors per worker run out of them ("received 0 items of ancdata")
torch.multiprocessing.set_sharing_strategy("file_system")


def plan(n: int, steps: int):
    from weightspace.runtime import np_rng

    rng = np_rng("bench-zoo")
    return [dict(classes=sorted(rng.choice(40, 20, replace=False).tolist()),
                 lr=float(10 ** rng.uniform(-3, -2)), steps=steps,
                 schedule=["constant", "cosine", "linear"][i % 3], seed=1000 + i) for i in range(n)]


def batched(parent, rows, threads=1):
    from weightspace.data import styled_digits
    from weightspace.nets import vit_training

    torch.set_num_threads(threads)
    styled_digits()
    evaluate, spent = vit_training.evaluate, [0.0]

    def timed_evaluate(*args, **kwargs):                 # the CPU time of the evaluation finetune ends with
        c = time.process_time()
        out = evaluate(*args, **kwargs)
        spent[0] += time.process_time() - c
        return out

    vit_training.evaluate = timed_evaluate
    t, c = time.perf_counter(), time.process_time()
    sds, metrics = vit_training.finetune([parent] * len(rows), [r["classes"] for r in rows], [r["lr"] for r in rows],
                                         [r["steps"] for r in rows], [r["schedule"] for r in rows],
                                         [r["seed"] for r in rows])
    vit_training.evaluate = evaluate
    return (time.perf_counter() - t, time.process_time() - c, spent[0]), sds, [m["test_acc"] for m in metrics]


def one_at_a_time(parent, rows, threads=1):
    """The same recipe as vit_training.finetune, written for one nn.Module at a time."""
    from weightspace.data import styled_digits
    from weightspace.nets import make_vit
    from weightspace.nets.batched import SCHEDULES
    from weightspace.runtime import generator
    from weightspace.nets.vit_training import fresh_head

    torch.set_num_threads(threads)
    ds = styled_digits()
    tr = ds.train
    out, accs, spent = [], [], 0.0
    t, c = time.perf_counter(), time.process_time()
    for r in rows:
        model = make_vit(ds.n_classes)
        model.load_state_dict(fresh_head(parent, ds.n_classes, r["seed"]))
        decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim >= 2]
        rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.ndim >= 2)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                lr=r["lr"])
        pool = torch.nonzero(torch.isin(tr.y, torch.as_tensor(r["classes"]))).flatten()
        g = generator("finetune-data", r["seed"])
        kind = SCHEDULES.index(r["schedule"])
        for step in range(r["steps"]):
            frac = min(step / r["steps"], 1.0)
            factor = [1.0, 0.5 * (1 + math.cos(math.pi * frac)), 1 - frac][kind]
            for group in opt.param_groups:
                group["lr"] = r["lr"] * factor
            idx = pool[(torch.rand(32, generator=g) * len(pool)).long()]
            loss = F.cross_entropy(model(tr.x[idx]), tr.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        e = time.process_time()
        model.eval()                        # the builder records each model's test accuracy: so do we
        with torch.no_grad():
            mine = torch.isin(ds.test.y, torch.as_tensor(r["classes"]))
            accs.append(float((model(ds.test.x[mine]).argmax(-1) == ds.test.y[mine]).float().mean()))
        spent += time.process_time() - e
        out.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return (time.perf_counter() - t, time.process_time() - c, spent), out, accs


def run(fn, parent, rows, workers, threads=1):
    """`workers` spawned processes of `threads` torch threads each, models dealt round-robin. Returns
    (wall, cpu, eval cpu, state dicts, accuracies): the slower worker's time (imports and start-up
    excluded), the workers' CPU times summed, and the part of it spent evaluating."""
    parts = [rows[w::workers] for w in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        results = list(ex.map(fn, [parent] * workers, parts, [threads] * workers))
    wall, cpu, cpu_eval = (f(r[0][j] for r in results) for j, f in ((0, max), (1, sum), (2, sum)))
    sds, accs = [None] * len(rows), [None] * len(rows)
    for w, (_, part, part_accs) in enumerate(results):
        for j, (sd, acc) in enumerate(zip(part, part_accs)):
            sds[w + j * workers], accs[w + j * workers] = sd, acc
    return wall, cpu, cpu_eval, sds, accs


def bench_retire(parent, n: int = 64, repeats: int = 2) -> dict:
    from weightspace.nets.vit_training import finetune_stacked
    from weightspace.zoo.model_trees import plan_jobs

    rows = next(j for j in plan_jobs({}) if "fine-tunes" in j.name).spec["rows"]
    rows = rows[:: max(1, len(rows) // n)][:n]
    args = ([parent] * len(rows), [r["classes"] for r in rows], [r["seed"] for r in rows])
    kw = dict(lr=[r["lr"] for r in rows], steps=[r["steps"] for r in rows], schedule=[r["schedule"] for r in rows])
    cpu, out = {True: [], False: []}, {}
    for r in range(repeats):
        for retire in ((True, False) if r % 2 == 0 else (False, True)):
            c = time.process_time()
            out[retire] = finetune_stacked(*args, retire=retire, **kw)
            cpu[retire].append(time.process_time() - c)
    same = all(torch.equal(a[k], b[k]) for a, b in zip(out[True][0], out[False][0]) for k in a)
    steps = kw["steps"]
    return dict(models=len(rows), steps=f"{min(steps)}-{max(steps)}", model_steps=sum(steps),
                model_steps_run_to_longest=max(steps) * len(steps),
                cpu_s_retire=[round(x, 2) for x in cpu[True]], cpu_s_run_to_longest=[round(x, 2) for x in cpu[False]],
                speedup_cpu=round(min(cpu[False]) / min(cpu[True]), 3), bit_identical=same,
                metrics_identical=out[True][2] == out[False][2],
                load_average=" ".join(f"{x:.2f}" for x in os.getloadavg()))


@torch.no_grad()
def stacked_evaluate(net, classes, split, chunk: int = 128) -> list[float]:
    """Each model's accuracy on its own classes' images, the stack run as one (`chunk` images per model
    at a time, padded): how the builders evaluated before they ran each model alone."""
    from weightspace.nets.vit_training import own_class_pools

    table, lens = own_class_pools(split, classes)
    correct = torch.zeros(net.M)
    for lo in range(0, table.shape[1], chunk):
        ib = table[:, lo:lo + chunk]
        pred = net(split.x[ib]).argmax(-1)                                           # [M, b]
        valid = torch.arange(lo, lo + ib.shape[1])[None, :] < lens[:, None]
        correct += ((pred == split.y[ib]) & valid).sum(1)
    return (correct / lens.clamp(min=1)).tolist()


def bench_eval(parent, n: int = 64, steps: int = 20, repeats: int = 3) -> dict:
    from weightspace.data import styled_digits
    from weightspace.nets import Stacked, make_vit
    from weightspace.nets.vit_training import evaluate, finetune
    from weightspace.zoo.model_trees import plan_jobs

    ds = styled_digits()
    rows = next(j for j in plan_jobs({}) if "fine-tunes" in j.name).spec["rows"]
    rows = rows[:: max(1, len(rows) // n)][:n]
    classes = [r["classes"] for r in rows]
    sds, _ = finetune([parent] * len(rows), classes, [r["lr"] for r in rows], [steps] * len(rows),
                      [r["schedule"] for r in rows], [r["seed"] for r in rows])
    net = Stacked(lambda: make_vit(ds.n_classes), sds)
    cpu, accs = {"stack": [], "alone": []}, {}
    sides = {"stack": lambda: stacked_evaluate(net, classes, ds.test), "alone": lambda: evaluate(net, classes, ds.test)}
    for r in range(repeats + 1):                         # round 0: torch's first-call warm-up, not timed
        for side in (("stack", "alone") if r % 2 == 0 else ("alone", "stack")):
            c = time.process_time()
            accs[side] = sides[side]()
            if r:
                cpu[side].append(time.process_time() - c)
    diff = [abs(a - b) for a, b in zip(accs["stack"], accs["alone"])]
    return dict(models=len(rows), finetune_steps=steps, images=sum(int(torch.isin(ds.test.y, torch.tensor(c)).sum())
                                                               for c in classes),
                cpu_s_stack=[round(x, 3) for x in cpu["stack"]], cpu_s_alone=[round(x, 3) for x in cpu["alone"]],
                speedup_cpu=round(min(cpu["stack"]) / min(cpu["alone"]), 3),
                models_with_the_same_accuracy=sum(d == 0 for d in diff), max_accuracy_difference=max(diff),
                mean_test_acc=sum(accs["alone"]) / len(rows),
                load_average=" ".join(f"{x:.2f}" for x in os.getloadavg()))


def bench_forward(parent, n: int = 64, steps: int = 40, repeats: int = 2) -> dict:
    from weightspace.data import styled_digits
    from weightspace.nets import Stacked, make_vit
    from weightspace.nets.vit_training import fresh_head

    ds = styled_digits()
    rows = plan(n, steps)
    starts = [fresh_head(parent, ds.n_classes, r["seed"], std=0.02) for r in rows]
    net = Stacked(lambda: make_vit(ds.n_classes), starts)
    fast = net.vit
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(ds.train.y), (n, 32), generator=g) for _ in range(steps)]

    def train_steps():
        for idx in batches:
            out = net(ds.train.x[idx])
            loss = F.cross_entropy(out.flatten(0, 1), ds.train.y[idx].flatten())
            grads = torch.autograd.grad(loss, list(net.params.values()))
        return out.detach(), grads

    cpu = {"stacked": {"train": [], "eval": []}, "vmap": {"train": [], "eval": []}}
    out = {}
    for r in range(repeats):
        for side in (("stacked", "vmap") if r % 2 == 0 else ("vmap", "stacked")):
            net.vit = fast if side == "stacked" else None
            c = time.process_time()
            out[side] = train_steps()
            cpu[side]["train"].append(time.process_time() - c)
            c = time.process_time()
            accs = stacked_evaluate(net, [r["classes"] for r in rows], ds.test)
            cpu[side]["eval"].append(time.process_time() - c)
            out[side + "_acc"] = accs
    net.vit = fast
    grad_diff = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
                    for a, b in zip(out["stacked"][1], out["vmap"][1]))
    return dict(models=n, steps=steps, cpu_s=cpu,
                speedup_train_cpu=round(min(cpu["vmap"]["train"]) / min(cpu["stacked"]["train"]), 3),
                speedup_eval_cpu=round(min(cpu["vmap"]["eval"]) / min(cpu["stacked"]["eval"]), 3),
                max_abs_logit_difference=float((out["stacked"][0] - out["vmap"][0]).abs().max()),
                max_relative_gradient_difference=grad_diff,
                same_accuracies=out["stacked_acc"] == out["vmap_acc"],
                load_average=" ".join(f"{x:.2f}" for x in os.getloadavg()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=128)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="rounds of both sides, back to back")
    ap.add_argument("--retire", action="store_true", help="only: finished models leaving the stack vs not")
    ap.add_argument("--forward", action="store_true", help="only: the stacked ViT forward vs vmap of the module")
    ap.add_argument("--eval", action="store_true",
                    help="only: the builders' evaluation, the stack run as one vs each model alone")
    ap.add_argument("--notebook01", action="store_true",
                    help="fine-tune notebook 01's own rows (classes, lr, steps, schedule, seed; --models of them)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from weightspace.nets.vit_training import pretrain

    torch.set_num_threads(1)
    parent, _ = pretrain("supervised", 0, 200)
    if args.retire or args.forward or args.eval:
        n = min(args.models, 64)
        res = (bench_retire(parent, n) if args.retire else bench_eval(parent, n) if args.eval
               else bench_forward(parent, n, min(args.steps, 40)))
        print(json.dumps(res, indent=2))
        if args.out:
            save_results(args.out.parent, args.out.stem, res)
        return
    if args.notebook01:
        from weightspace.zoo.model_trees import plan_jobs

        nb = next(j for j in plan_jobs({}) if "fine-tunes" in j.name).spec["rows"]
        rows = nb[:: max(1, len(nb) // args.models)][:args.models]
    else:
        rows = plan(args.models, args.steps)
    model_steps = sum(r["steps"] for r in rows)
    rounds = []
    for r in range(args.repeats):
        sides = [("batched", batched), ("one_at_a_time", one_at_a_time)]
        out = {name: run(fn, parent, rows, args.workers) for name, fn in (sides if r % 2 == 0 else sides[::-1])}
        rounds.append(out)
        b, o = out["batched"], out["one_at_a_time"]
        print(f"round {r}: wall {o[0] / b[0]:.2f}x, cpu {o[1] / b[1]:.2f}x (training {(o[1] - o[2]) / (b[1] - b[2]):.2f}x, "
              f"evaluation {o[2] / b[2]:.2f}x)", flush=True)
    (t_b, c_b, _, sd_b, acc_b), (t_s, c_s, _, sd_s, acc_s) = rounds[-1]["batched"], rounds[-1]["one_at_a_time"]
    # what a user without the zoo builder runs: one process, torch using all the cores for each model
    t_n, *_ = run(one_at_a_time, parent, rows, 1, threads=args.workers)
    diff = max(float((sd_b[m][k] - sd_s[m][k]).abs().max()) for m in range(len(rows)) for k in sd_b[m])
    # same recipe: after one step the two agree to float rounding; over many steps Adam's normalised
    # updates of the (initially near-zero) hidden-layer gradients amplify rounding differences
    one = plan(4, 1)
    (_, a, _), (_, b, _) = batched(parent, one), one_at_a_time(parent, one)
    diff_one_step = max(float((a[m][k] - b[m][k]).abs().max()) for m in range(4) for k in a[m])
    part = {"wall": lambda o: o[0], "cpu": lambda o: o[1], "cpu_train": lambda o: o[1] - o[2], "cpu_eval": lambda o: o[2]}
    ratios = {kind: sorted(f(o["one_at_a_time"]) / f(o["batched"]) for o in rounds) for kind, f in part.items()}
    spread = {f"speedup_{kind}_{stat}": round(f(v), 2) for kind, v in ratios.items()
              for stat, f in (("min", min), ("median", statistics.median), ("max", max))}
    evals = {f"eval_share_of_cpu_{side}": round(statistics.median(o[side][2] / o[side][1] for o in rounds), 3)
             for side in ("batched", "one_at_a_time")}
    res = dict(rows="notebook 01's fine-tunes" if args.notebook01 else "synthetic", models=len(rows),
               steps=f"{min(r['steps'] for r in rows)}-{max(r['steps'] for r in rows)}",
               classes_per_model=statistics.median(len(r["classes"]) for r in rows),
               workers=args.workers, repeats=args.repeats, **evals,
               batched_s=round(t_b, 2), one_at_a_time_s=round(t_s, 2), speedup=round(t_s / t_b, 2),
               batched_cpu_s=round(c_b, 2), one_at_a_time_cpu_s=round(c_s, 2), **spread,
               load_average=" ".join(f"{x:.2f}" for x in os.getloadavg()),
               one_process_all_threads_s=round(t_n, 2), speedup_vs_one_process=round(t_n / t_b, 2),
               ms_per_model_step_batched=round(1000 * c_b / model_steps, 2),
               ms_per_model_step_one_at_a_time=round(1000 * c_s / model_steps, 2),
               max_abs_weight_difference_after_one_step=diff_one_step,
               max_abs_weight_difference_after_all_steps=diff,
               mean_test_acc_batched=sum(acc_b) / len(acc_b), mean_test_acc_one_at_a_time=sum(acc_s) / len(acc_s))
    print(json.dumps(res, indent=2))
    if args.out:
        save_results(args.out.parent, args.out.stem, res)


if __name__ == "__main__":
    main()
