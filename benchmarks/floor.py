"""The floor table: every expensive stage of notebooks 01-05 against this machine's peak, in one process.

    .venv/bin/python benchmarks/floor.py [--out results/profile.json] [--readme README.md]     (make profile)

First the peak of one core (the notebooks train with one thread per process): a 1024x1024 float32 matmul
(GFLOP/s) and a 256 MB copy (GB/s, bytes read + written). Then a small representative slice of each stage
(same shapes and recipes as the default preset, fewer steps or models), timed, with the work it does
computed from its shapes and step counts. Root pre-training is timed as the difference of a 40- and an
80-step run, so that what a root does once (its net, its data, torch's first-step warm-up, its final test
evaluation) is not charged to its steps; fine-tuning less its final evaluation, timed on its own:

    ViT training     FLOPs = 3 x forward (backward ~2 x forward); forward = 2 x multiply-adds of the patch
                     embedding, qkv / proj / fc1 / fc2, attention (QK^T and AV) and the head, per image.
                     Bytes: a floor: every parameter touched by forward, backward and AdamW (11 x 4 bytes),
                     every stored activation written once, read once and its gradient written (3 x 4 bytes).
    evaluation       forward FLOPs per image; bytes: the activations written once.
    ProbeX / Dense   3 x 2 x multiply-adds of the expert per training model and epoch, plus the forward on
                     validation; bytes: the layer tensors read each epoch.
    MoTHer D         the Gram products: N^2 x P multiply-add pairs (2 N^2 P FLOPs, half with syrk); bytes:
                     every weight read once.
    kurtosis         ~8 FLOPs per weight (square, cube, fourth power, four sums); bytes: every weight read once.
    extraction       bytes: the model files read (hash-verified, whole) plus the stacked layer written.

Then one fine-tuning step part by part (`step_parts`: 64 stacked ViTs, batch 32, as a builder's chunk runs
them): forward and backward under torch's profiler, each operator's own time put in a part (the linear
layers' batched products, the fused attention, GELU, LayerNorm, the rest), and the AdamW step and the whole
step timed without it. FLOPs of the products are the profiler's (from their shapes); attention's are
4 N^2 d per image and block forward (QK^T and AV), 3x that with its backward; GELU and LayerNorm move
(4 + 4) bytes per element forward and (4 + 4 + 4) backward. The profiler adds a few microseconds per
operator, so parts made of many small operators read slower than they run. Beside it, the attention of
that step fused (what stacked_forward runs) against written out as softmax(QK^T / sqrt(d)) V in batched
products, forward and backward on the step's own q, k, v: the ratio of their times.

The rate (work / time) is set against the peak: `flop_ratio` = GFLOP/s / peak GFLOP/s, `byte_ratio` =
GB/s / peak GB/s; a stage's floor is whichever ratio is higher (what bounds it). Other developers share the
cores: absolute times carry the load average printed beside them; the ratios are what to read.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

import torch

from weightspace.plotting import save_results


def timed(fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def peak() -> dict:
    """One core: float32 matmul GFLOP/s (1024^3, best of 5) and copy GB/s (256 MB, read + written)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    t, _ = timed(lambda: a @ b, repeat=5)
    x = torch.randn(64 << 20)
    y = torch.empty_like(x)
    y.copy_(x)
    tc, _ = timed(lambda: y.copy_(x), repeat=5)
    return dict(gflops=2 * 1024 ** 3 / t / 1e9, gbs=2 * x.numel() * 4 / tc / 1e9)


# ------------------------------------------------------------------------------------------- the work

def vit_work(cfg: dict, n_out: int) -> dict:
    """Per image: forward FLOPs (all, and the attention's QK^T and AV alone), parameters, stored activations,
    and the elements GELU and LayerNorm pass over, of make_vit(n_out, **cfg)."""
    from weightspace.nets.vit import VIT_TINY

    c = {**VIT_TINY, **cfg}
    p, d, L = c["patch_size"], c["embed_dim"], c["depth"]
    h, heads = int(c["mlp_ratio"] * d), c["num_heads"]
    n = (c["img_size"] // p) ** 2
    T = n + 1
    macs = n * p * p * c["in_chans"] * d + L * T * (4 * d * d + 2 * d * h + 2 * T * d) + d * n_out
    params = p * p * c["in_chans"] * d + L * (4 * d * d + 2 * d * h) + d * n_out
    acts = L * (T * (8 * d + 2 * h) + heads * T * T) + T * d
    return dict(flops=2 * macs, attention_flops=2 * L * 2 * T * T * d, params=params, acts=acts,
                gelu_elements=L * T * h, layernorm_elements=(2 * L + 1) * T * d)


def expert_macs(kind: str, shape, n_classes: int, ranks: dict) -> int:
    d_H, d_W = shape
    if kind == "dense":
        return d_H * d_W * n_classes
    r_U, r_V, r_T = min(ranks["n_probes"], d_W), min(ranks["proj_dim"], d_H), ranks["rep_dim"]
    return d_H * d_W * r_U + r_U * d_H * r_V + r_U * r_V * r_T + r_T * n_classes


# ----------------------------------------------------------------------------------------- the stages

def stages(tmp: str) -> list[dict]:
    from weightspace.data import styled_digits
    from weightspace.mother import select_layers
    from weightspace.mother.distances import kurtosis_scores, rms_distances, weight_pass
    from weightspace.nets.batched import Stacked
    from weightspace.nets.vit import make_vit
    from weightspace.nets.vit_training import evaluate, finetune_stacked, own_class_pools, pretrain
    from weightspace.probex import LayerData
    from weightspace.probex.train import DEFAULTS, fit, fit_many
    from weightspace.zoo.model_trees import build_model_trees

    ds = styled_digits()
    vit = {"global_pool": "avg"}
    out = []

    def add(stage, notebooks, seconds, flops, nbytes, slice_):
        out.append(dict(stage=stage, notebooks=notebooks, slice=slice_, seconds=seconds, gflop=flops / 1e9,
                        gbytes=nbytes / 1e9))

    # root pre-training (01, 03 section 6, 04): batch 128. The time of `steps` more steps (2 x steps less steps):
    # building the net and the data, torch's first-step warm-up (~seconds) and the final test evaluation cancel
    steps = 40
    w = vit_work(vit, ds.n_classes)
    pretrain("supervised", 0, 2, vit=vit)
    t_short, _ = timed(lambda: pretrain("supervised", 0, steps, vit=vit))
    t_long, (root, _) = timed(lambda: pretrain("supervised", 0, 2 * steps, vit=vit))
    t = t_long - t_short
    add("root pre-training", "01 03 04", t, 3 * w["flops"] * 128 * steps,
        4 * steps * (11 * w["params"] + 3 * w["acts"] * 128), f"1 root x {steps} steps x batch 128")

    # fine-tuning (01, 03 section 6, 04): 16 models at once, batch 32, then their evaluation
    M, steps = 16, 30
    rng = torch.Generator().manual_seed(0)
    classes = [sorted(torch.randperm(ds.n_classes, generator=rng)[:ds.n_classes // 2].tolist()) for _ in range(M)]
    t, (sds, _, _) = timed(lambda: finetune_stacked([root] * M, classes, list(range(M)), lr=3e-3, steps=steps,
                                                    vit=vit))
    net = Stacked(lambda: make_vit(ds.n_classes, **vit), sds)
    t_eval, _ = timed(lambda: evaluate(net, classes, ds.test))
    images = int(own_class_pools(ds.test, classes)[1].sum())
    add("fine-tuning (vmap, 16 models)", "01 03 04", t - t_eval, 3 * w["flops"] * 32 * steps * M,
        4 * steps * M * (11 * w["params"] + 3 * w["acts"] * 32), f"{M} models x {steps} steps x batch 32")
    add("evaluation (own-class test images)", "01 03 04", t_eval, w["flops"] * images, 4 * w["acts"] * images,
        f"{M} models, {images} images")

    # layer extraction (02, 03): a small zoo of the default ViT, every layer of every model read once
    zoo = build_model_trees(f"{tmp}/trees", n_trees=1, n_per_tree=64, root_steps=5, steps=[1, 1], chunk=64,
                            executor="inline", progress=False)
    data = LayerData(zoo)
    layers = data.layers()
    t, X = timed(lambda: [data.X(lay) for lay in layers])
    files = sum(os.path.getsize(zoo.path / zoo.row(i)["file"]) for i in data.ids)
    add("layer extraction (all layers)", "02 03", t, 0, files + sum(x.numel() * 4 for x in X),
        f"{len(data.ids)} models x {len(layers)} layers")

    # ProbeX / Dense fits (02, 03): notebook 03's sweep on this zoo's tree, one at a time and many at once
    epochs = 10
    cfg = dict(n_probes=16, proj_dim=16, rep_dim=32, batch_size=32, epochs=epochs, eval_every=5)
    tasks = [(kind, [data.split(lay, 0, s) for s in ("train", "val", "test")], 0, cfg)
             for lay in layers for kind in ("probex", "dense")]
    flops = nbytes = 0
    for kind, sp, _, _ in tasks:
        (Xtr, Ytr), (Xva, _) = sp[0], sp[1]
        macs = expert_macs(kind, Xtr.shape[1:], Ytr.shape[1], {**DEFAULTS, **cfg})
        flops += 2 * macs * (3 * len(Xtr) * epochs + len(Xva) * (epochs // cfg["eval_every"] + 1))
        nbytes += Xtr.numel() * 4 * epochs
    t, _ = timed(lambda: [fit(k, *sp, seed=s, device="cpu", **c) for k, sp, s, c in tasks])
    add("ProbeX / Dense fits, one at a time", "02 03", t, flops, nbytes, f"{len(tasks)} fits x {epochs} epochs")
    t, _ = timed(lambda: fit_many(tasks, device="cpu"))
    add("ProbeX / Dense fits, fit_many", "03", t, flops, nbytes, f"{len(tasks)} fits x {epochs} epochs")

    # MoTHer (04, 05): ViT-B-sized attention matrices, l_FT and kurtosis
    g = torch.Generator().manual_seed(0)
    N, n_mat, d = 21, 8, 768
    base = {f"encoder.layer.{b}.attention.attention.{nm}.weight": 0.03 * torch.randn(d, d, generator=g)
            for b in range(n_mat // 4) for nm in ("query", "key", "value")}
    base |= {f"encoder.layer.{b}.attention.output.dense.weight": 0.03 * torch.randn(d, d, generator=g)
             for b in range(n_mat // 4)}
    models = {f"m{i}": {k: v + 3e-4 * torch.randn(v.shape, generator=g) for k, v in base.items()} for i in range(N)}
    dl = select_layers(base, "hf-vit", "ft")
    kl = select_layers(base, "hf-vit", "ft", "direction")
    P, Pk = sum(x.numel for x in dl), sum(x.numel for x in kl)
    t, _ = timed(lambda: rms_distances(models, dl, device="cpu"), repeat=2)
    add("MoTHer l_FT (Gram)", "04 05", t, 2 * N * N * P, 4 * N * P, f"{N} models x {len(dl)} matrices 768x768")
    t, _ = timed(lambda: kurtosis_scores(models, kl), repeat=2)
    add("kurtosis (float64)", "04 05", t, 8 * N * Pk, 4 * N * Pk, f"{N} models x {len(kl)} matrices")
    t, _ = timed(lambda: weight_pass(models, dl, kl, device="cpu"), repeat=2)
    add("MoTHer one pass (D + norms + kurtosis)", "04 05", t, 2 * N * N * P + 8 * N * P, 4 * N * P,
        f"{N} models x {len(dl)} matrices")
    return out


# a fine-tuning step's operators by part (substrings of the profiler's names), in the order a reader scans them
PARTS = (("linear layers (batched products)", ("aten::bmm", "aten::baddbmm", "aten::addmm", "aten::mm")),
         ("attention (fused)", ("scaled_dot_product",)),
         ("GELU", ("aten::gelu",)),
         ("LayerNorm", ("layer_norm",)))


def step_parts(M: int = 64, batch: int = 32, steps: int = 8) -> dict:
    """One fine-tuning step of M stacked ViTs (the default preset's net, notebook 01's chunk of 64) by part."""
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from weightspace.data import styled_digits
    from weightspace.nets.batched import BatchedAdamW, Stacked
    from weightspace.nets.vit import make_vit

    ds = styled_digits()
    vit = {"global_pool": "avg"}
    w = vit_work(vit, ds.n_classes)
    torch.manual_seed(0)
    net = Stacked(lambda: make_vit(ds.n_classes, **vit),
                  [make_vit(ds.n_classes, **vit).state_dict() for _ in range(M)])
    opt = BatchedAdamW(net.trainable(), weight_decay=0.01)
    lr = torch.full((M,), 1e-3)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(len(ds.train.y), (M, batch), generator=g) for _ in range(steps + 2)]

    def forward_backward(idx):
        loss = F.cross_entropy(net(ds.train.x[idx]).flatten(0, 1), ds.train.y[idx].flatten())
        opt.zero_grad()
        loss.backward()

    for idx in batches[:2]:                                     # warm-up: torch's first-step costs
        forward_backward(idx)
        opt.step(lr)
    t_fb = t_opt = 0.0
    for idx in batches[2:]:
        t = time.perf_counter()
        forward_backward(idx)
        t_fb += time.perf_counter() - t
        t = time.perf_counter()
        opt.step(lr)
        t_opt += time.perf_counter() - t
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for idx in batches[2:]:
            forward_backward(idx)
    per_part = {name: [0.0, 0.0] for name, _ in PARTS}          # self seconds, profiler FLOPs
    other = 0.0
    for e in prof.key_averages():
        part = next((name for name, keys in PARTS if any(k in e.key for k in keys)), None)
        if part is None:
            other += e.self_cpu_time_total / 1e6
        else:
            per_part[part][0] += e.self_cpu_time_total / 1e6
            per_part[part][1] += e.flops or 0
    images = M * batch * steps
    work = {"attention (fused)": (3 * w["attention_flops"] * images, 0),      # (FLOPs, bytes); products: the profiler's
            "GELU": (0, 20 * w["gelu_elements"] * images), "LayerNorm": (0, 20 * w["layernorm_elements"] * images)}
    rows = [dict(part=name, seconds=sec / steps, gflop=(work.get(name, (fl, 0))[0]) / steps / 1e9,
                 gbytes=work.get(name, (0, 0))[1] / steps / 1e9) for name, (sec, fl) in per_part.items()]
    rows.append(dict(part="the rest (copies, additions, sums, indexing, autograd)", seconds=other / steps,
                     gflop=0.0, gbytes=0.0))
    profiled = sum(r["seconds"] for r in rows)
    for r in rows:
        r["share"] = r["seconds"] / profiled
    return dict(models=M, batch=batch, steps=steps, forward_backward_s=t_fb / steps, adamw_s=t_opt / steps,
                profiled_s=profiled, parts=rows,
                attention=attention_variants(net, ds, M, batch))


def attention_variants(net, ds, M: int, batch: int, repeats: int = 5) -> dict:
    """Time of the attention written out (batched products and a softmax) over fused
    (scaled_dot_product_attention), forward and backward, on the q, k, v the first block of a real batch
    hands to it (caught on their way into the fused call)."""
    from unittest.mock import patch

    import torch.nn.functional as F

    fused_call, caught = F.scaled_dot_product_attention, []

    def catch(q, k, v, *args, **kwargs):
        caught.append((q, k, v))
        return fused_call(q, k, v, *args, **kwargs)

    with torch.no_grad(), patch.object(F, "scaled_dot_product_attention", catch):
        net(ds.train.x[torch.arange(M * batch).view(M, batch) % len(ds.train.y)])
    q, k, v = (t.detach().requires_grad_(True) for t in caught[0])

    def written_out_forward():
        return torch.matmul(torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2)).softmax(-1), v)

    def fused():
        fused_call(q, k, v).sum().backward()

    def written_out():
        written_out_forward().sum().backward()

    with torch.no_grad():                                            # the same function, or the ratio means nothing
        gap = (written_out_forward() - fused_call(q, k, v)).abs().max().item()
    if gap > 1e-4:
        raise AssertionError(f"the written-out attention is {gap:.2e} away from the fused one")

    times = {}
    for fn in (fused, written_out, fused, written_out):             # a warm round, then the one that counts
        times[fn.__name__] = timed(fn, repeat=repeats)[0]
    return {"written_out_over_fused": times["written_out"] / times["fused"], "max_abs_difference": gap}


def add_rates(rows: list[dict], pk: dict) -> None:
    """Each row's rates (GFLOP/s, GB/s) and their ratios to the peak, from its work and time."""
    for r in rows:
        r["gflops"], r["gbs"] = r["gflop"] / r["seconds"], r["gbytes"] / r["seconds"]
        r["flop_ratio"], r["byte_ratio"] = r["gflops"] / pk["gflops"], r["gbs"] / pk["gbs"]


def table(res: dict) -> str:
    pk = res["peak"]
    lines = [f"Peak of one core (same process): matmul {pk['gflops']:.1f} GFLOP/s, copy {pk['gbs']:.1f} GB/s; "
             f"load average {res['load_before']} before, {res['load_after']} after.", "",
             "| stage | notebooks | slice | time (s) | GFLOP | GB | GFLOP/s | GB/s | of peak FLOP/s | of peak GB/s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in res["stages"]:
        lines.append(f"| {s['stage']} | {s['notebooks']} | {s['slice']} | {s['seconds']:.2f} | {s['gflop']:.2f} | "
                     f"{s['gbytes']:.3f} | {s['gflops']:.2f} | {s['gbs']:.2f} | {s['flop_ratio']:.1%} | "
                     f"{s['byte_ratio']:.1%} |")
    sp = res.get("step")
    if sp:
        dash = lambda v, fmt: fmt.format(v) if v else "—"
        lines += ["", f"One fine-tuning step of {sp['models']} stacked ViTs (batch {sp['batch']}, mean of "
                  f"{sp['steps']}): forward and backward {sp['forward_backward_s'] * 1e3:.0f} ms "
                  f"({sp['profiled_s'] * 1e3:.0f} ms under the profiler), AdamW {sp['adamw_s'] * 1e3:.1f} ms; "
                  f"its attention written out as softmax(QKᵀ/√d)V takes "
                  f"{sp['attention']['written_out_over_fused']:.2f}x the fused kernel's time.", "",
                  "| part of forward + backward | ms | share | GFLOP | GFLOP/s | of peak FLOP/s | GB/s "
                  "| of peak GB/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sp["parts"]:
            cells = [r["part"], f"{r['seconds'] * 1e3:.1f}", f"{r['share']:.0%}", dash(r["gflop"], "{:.2f}"),
                     dash(r["gflops"], "{:.1f}"), dash(r["flop_ratio"], "{:.0%}"), dash(r["gbs"], "{:.2f}"),
                     dash(r["byte_ratio"], "{:.0%}")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--readme", type=Path, help="replace the table between <!-- profile --> markers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load = lambda: " ".join(f"{x:.2f}" for x in os.getloadavg())
    res = dict(threads=1, load_before=load(), peak=peak())
    with tempfile.TemporaryDirectory() as tmp:
        res["stages"] = stages(tmp)
    res["step"] = step_parts()
    res["load_after"] = load()
    add_rates(res["stages"] + res["step"]["parts"], res["peak"])
    text = table(res)
    print(text)
    if args.out:
        save_results(args.out.parent, args.out.stem, res)
    if args.readme:
        readme = args.readme.read_text()
        block = f"<!-- profile -->\n{text}\n<!-- /profile -->"
        if "<!-- profile -->" not in readme:
            raise SystemExit(f"{args.readme}: no <!-- profile --> ... <!-- /profile --> markers to fill")
        args.readme.write_text(re.sub(r"<!-- profile -->.*?<!-- /profile -->", lambda m: block, readme, flags=re.S))


if __name__ == "__main__":
    main()
