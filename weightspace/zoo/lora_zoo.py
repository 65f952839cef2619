"""A Stable-Diffusion-style LoRA zoo (ProbeX's SD_200 / SD_1k subsets of Model-J, in miniature).

One base text-to-image model — the tiny UNet of `weightspace.nets.unet`, conditioned on MiniLM token states
(`weightspace.nets.text`) and pre-trained on every StyledDigits class — is stored once as zoo assets, with
the digits classifier that judges its samples and the samples themselves. Then hundreds of LoRAs (Hu et al.
2021) on to_q, to_k, to_v and to_out.0 of every self- and cross-attention, each fine-tuned on a handful of
images of ONE class with its prompt ("a photo of a mirrored seven"). The nuisance varies per LoRA: seed, steps,
learning rate, number of images, rank. As in Model-J (ProbeX, Sec. 5):

  - holdout classes: some (digit, style) classes have no training LoRA, while their digit and their style
    both appear in training classes; their LoRAs form the splits val_holdout / test_holdout (half each, per
    class), the training classes' LoRAs train / val / test (per class, by `split`). The base saw every class,
    as SD's base knows ImageNet's: "zero-shot" means no LoRA of the class was seen by the method.
  - every LoRA is a real diffusers LoRA file: models/<split>/<model_id>/pytorch_lora_weights.safetensors, keys
    `unet.<module>.lora.down.weight` / `.lora.up.weight`, the LoraConfig in the header
    (`lora_adapter_metadata`) and the class too (`class_name`, `class_index`, `prompt`), so
    `unet.load_lora_adapter(folder, weight_name=WEIGHT_NAME, prefix="unet")` and
    `StableDiffusionPipeline.load_lora_weights` load it.

`prompt_mode="generic"` trains every LoRA with ONE shared prompt ("a photo of a digit") instead of its class's:
the control for ProbeX's zero-shot claim. Cross-attention to_k / to_v read the prompt tokens, so with class
prompts their B A can record the prompt rather than the images; with the generic prompt any class signal in
the weights must come from the images.

Many LoRAs train at once (`StackedLoRA`: one batched forward over the frozen base, each group of the batch
through its own adapter, one BatchedAdamW); each adapter draws its data from its own seed, so a LoRA's weights
do not depend on which others share its job. Jobs are chunks of LoRAs (resumable); each LoRA's samples are
scored right after training (`recognition`: the fraction of its samples the classifier assigns to its class;
`base_recognition`: the same for the base with the same prompt).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import torch

from weightspace.data import STYLES, styled_digits
from weightspace.data.digits import DIGIT_WORDS, class_name
from weightspace.nets.batched import BatchedAdamW
from weightspace.nets.lora import WEIGHT_NAME, StackedLoRA, diffusers_metadata
from weightspace.nets.recognizer import Recognizer, per_class_rates, predict, train_recognizer
from weightspace.nets.text import MINILM, TextEncoder, check_prompts
from weightspace.nets.unet import (LORA_TARGETS, ddim_sample, ddpm_scheduler, denoising_loss, make_unet,
                                   train_base, unet_config)
from weightspace.runtime import derive_seed, generator, np_rng

from . import checks
from .format import DIFFUSERS_LORA_LAYOUT, Zoo, ZooError
from .jobs import Job, run_jobs

KIND = "sd-lora-zoo"
PROMPT_MODES = ("class", "generic")
GENERIC_PROMPT = "a photo of a digit"
BASE_ASSETS = ("text", "recognizer", "base_unet", "base_eval")


def prompt_of(name: str) -> str:
    """The prompt of a class: 'a photo of a mirrored seven' (ProbeX's "a photo of a {class}")."""
    return f"a photo of {name}"


DEFAULTS = dict(
    styles=["plain", "mirrored", "inverted", "bold"],
    holdout=None,             # class names with no training LoRA; None: `n_holdout` drawn from `seed`
    n_holdout=8,
    classes=None,             # training classes (names); None: every other class
    per_class=8,              # LoRAs per class (training and holdout classes alike)
    split=[0.5, 0.25, 0.25],  # train / val / test of each training class's LoRAs
    prompt_mode="class",      # "class": its class's prompt; "generic": GENERIC_PROMPT for every LoRA
    ranks=[4, 8, 16],         # rank drawn per LoRA (Model-J: 16)
    alpha=8.0,                # lora_alpha of every LoRA (scale alpha / r)
    steps=[30, 60],           # fine-tuning steps, uniform
    lr=[2e-3, 8e-3],          # learning rate, log-uniform
    n_images=[4, 12],         # training images of its class per LoRA, uniform
    batch_size=4,             # images per LoRA per step (drawn from its n_images)
    weight_decay=1e-2,
    chunk=160,                # LoRAs trained together in one job
    eval_samples=4,           # samples per LoRA scored by the classifier after training
    sample_steps=20,          # DDIM steps of every sample
    max_length=12,            # prompt tokens (MiniLM, padded)
    base_steps=800,           # base pre-training steps (batch base_batch)
    base_batch=64,
    base_lr=3e-3,
    p_generic=0.1,            # fraction of base examples conditioned on GENERIC_PROMPT
    base_samples=10,          # base samples per prompt for its recognition rates and the grid
    recognizer_steps=400,
    seed=0,
)
# what the base assets depend on: a zoo with the same values can share its base (build_lora_zoo(base_from=...))
BASE_KEYS = ("styles", "max_length", "base_steps", "base_batch", "base_lr", "p_generic", "base_samples",
             "sample_steps", "recognizer_steps", "seed")


# ------------------------------------------------------------------------------------------------- the plan

def class_names(styles: Sequence[str]) -> list[str]:
    return [class_name(s, d) for s in styles for d in range(10)]


def _by_name(p: Mapping, names, what: str) -> list[int]:
    all_names = class_names(p["styles"])
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"{what}={names!r}: expected a non-empty list of class names such as {all_names[1]!r}")
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise ValueError(f"{what}: unknown class {unknown[0]!r}; classes are names like {all_names[:3]} over the "
                         f"styles {list(p['styles'])}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: class {[n for n in names if names.count(n) > 1][0]!r} is listed twice")
    return [all_names.index(n) for n in names]


def choose_holdout(styles: Sequence[str], n: int, seed: int) -> list[int]:
    """`n` holdout classes (indices), each of a different digit and at most ceil(n / styles) per style, so every
    held-out digit and style still appears in training classes."""
    S = len(styles)
    if S < 2 or not 1 <= n <= 10:
        raise ValueError(f"n_holdout={n}: need 1..10 holdout classes and at least 2 styles (got {S})")
    cap = math.ceil(n / S)
    rng = np_rng(seed, "holdout")
    out, digits, per_style = [], set(), [0] * S
    for c in rng.permutation(10 * S):
        s, d = divmod(int(c), 10)
        if d not in digits and per_style[s] < cap:
            out.append(int(c))
            digits.add(d)
            per_style[s] += 1
        if len(out) == n:
            break
    return sorted(out)


def class_split(p: Mapping) -> tuple[list[int], list[int]]:
    """(training classes, holdout classes) as class indices, checked: disjoint, and every holdout class's digit
    and style appear in some training class (what makes zero-shot to it compositional)."""
    S = len(p["styles"])
    holdout = (_by_name(p, p["holdout"], "holdout") if p["holdout"] is not None
               else choose_holdout(p["styles"], p["n_holdout"], p["seed"]))
    train = (_by_name(p, p["classes"], "classes") if p["classes"] is not None
             else [c for c in range(10 * S) if c not in holdout])
    names = class_names(p["styles"])
    both = [c for c in holdout if c in train]
    if both:
        raise ValueError(f"holdout class {names[both[0]]!r} also appears in the training classes; a holdout class "
                         "must have no training LoRA")
    for c in holdout:
        s, d = divmod(c, 10)
        if not any(t % 10 == d for t in train):
            raise ValueError(f"holdout class {names[c]!r}: no training class has the digit {DIGIT_WORDS[d]}")
        if not any(t // 10 == s for t in train):
            raise ValueError(f"holdout class {names[c]!r}: no training class has the style {p['styles'][s]!r}")
    return sorted(train), sorted(holdout)


def lora_plan(p: Mapping) -> list[dict]:
    """Every LoRA's row before training. A LoRA's nuisance (seed, steps, lr, images, rank) depends only on the
    zoo seed, its class and its index in the class, not on prompt_mode: a generic-prompt control zoo holds the
    same LoRAs' twins."""
    train, holdout = class_split(p)
    names = class_names(p["styles"])
    d = styled_digits(tuple(p["styles"]))
    rows = []
    for c in sorted(train + holdout):
        s, digit = divmod(c, 10)
        pool = torch.nonzero(d.train.y == c).flatten()
        order = np_rng(p["seed"], "split", c).permutation(p["per_class"])
        if c in holdout:
            n_val = p["per_class"] // 2
            split_of = {int(j): ("val_holdout" if r < n_val else "test_holdout") for r, j in enumerate(order)}
        else:
            n_tr, n_val = round(p["split"][0] * p["per_class"]), round(p["split"][1] * p["per_class"])
            split_of = {int(j): ("train" if r < n_tr else "val" if r < n_tr + n_val else "test")
                        for r, j in enumerate(order)}
        for j in range(p["per_class"]):
            rng = np_rng(p["seed"], "lora", c, j)
            n_img = int(rng.integers(p["n_images"][0], p["n_images"][1] + 1))
            lo, hi = math.log(p["lr"][0]), math.log(p["lr"][1])
            prompt = prompt_of(names[c]) if p["prompt_mode"] == "class" else GENERIC_PROMPT
            rows.append(dict(
                model_id=f"{p['styles'][s]}-{digit}-{j:02d}", parent_id=None, tree_id=0, depth=1,
                split=split_of[j], classes=[c], class_name=names[c], digit=digit, style=p["styles"][s],
                holdout=c in holdout, prompt=prompt, prompt_mode=p["prompt_mode"],
                rank=int(rng.choice(p["ranks"])), alpha=float(p["alpha"]),
                steps=int(rng.integers(p["steps"][0], p["steps"][1] + 1)), lr=float(math.exp(rng.uniform(lo, hi))),
                n_images=n_img, images=sorted(int(i) for i in rng.choice(pool.numpy(), n_img, replace=False)),
                seed=derive_seed(p["seed"], "lora", c, j), base="base_unet"))
    return rows


# ------------------------------------------------------------------------------------------------- the base

def text_encoder(zoo: Zoo) -> TextEncoder:
    """A cache-only TextEncoder with the zoo's prompts (every class prompt and the generic one)."""
    return TextEncoder.from_tensors(zoo.load_asset("text"), zoo.asset_metadata("text"))


def load_base(zoo: Zoo, device="cpu"):
    """The zoo's base UNet (verified), frozen, in eval mode."""
    weights = zoo.load_asset("base_unet")
    unet = make_unet(json.loads(zoo.asset_metadata("base_unet")["config"]))
    missing, unexpected = unet.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ZooError(f"{zoo.path}: asset base_unet does not fit its own config (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]})")
    return unet.to(device).eval().requires_grad_(False)


def load_recognizer(zoo: Zoo) -> Recognizer:
    sd = zoo.load_asset("recognizer")
    model = Recognizer(int(sd["net.5.weight"].shape[0]))
    model.load_state_dict(sd)
    return model.eval().requires_grad_(False)


def base_eval(zoo: Zoo) -> dict:
    """The base's recognition rates: {"per_class" (samples of each class prompt), "real" (real test images),
    "generic_histogram" (classes of the generic prompt's samples), ...} and its samples as tensors."""
    t = zoo.load_asset("base_eval")
    info = json.loads(zoo.asset_metadata("base_eval")["eval"])
    return {**info, "samples": t["samples"], "generic_samples": t["generic_samples"]}


def _build_base(zoo: Zoo, p: Mapping, progress: bool, device) -> None:
    """Text cache, recognizer, base UNet and its evaluation, each an asset (kept when already there)."""
    have = zoo.manifest.get("assets") or {}
    d = styled_digits(tuple(p["styles"]))
    names = class_names(p["styles"])
    prompts = [prompt_of(n) for n in names] + [GENERIC_PROMPT]
    if "text" not in have:
        enc = TextEncoder.minilm(max_length=p["max_length"])
        tensors, meta = enc.to_tensors(prompts)
        zoo.add_asset("text", tensors, meta)
    text = text_encoder(zoo)
    tokens = text.tokens(prompts)
    if "recognizer" not in have:
        rec = train_recognizer(d.train.x, d.train.y, len(names), steps=p["recognizer_steps"],
                               seed=derive_seed(p["seed"], "recognizer"))
        acc = float((predict(rec, d.val.x) == d.val.y).float().mean())
        zoo.add_asset("recognizer", rec.state_dict(), {"val_accuracy": f"{acc:.6f}"})
    if "base_unet" not in have:
        cfg = unet_config(tokens.shape[-1])
        unet = make_unet(cfg, seed=derive_seed(p["seed"], "base-init")).to(device)
        losses = train_base(unet, d.train.x, d.train.y, tokens[:-1], steps=p["base_steps"],
                            batch_size=p["base_batch"], lr=p["base_lr"], seed=derive_seed(p["seed"], "base"),
                            generic=tokens[-1], p_generic=p["p_generic"], progress=progress)
        zoo.add_asset("base_unet", unet.state_dict(), {"config": json.dumps(cfg),
                                                        "final_loss": f"{sum(losses[-50:]) / len(losses[-50:]):.6f}"})
    if "base_eval" not in have:
        unet, rec = load_base(zoo, device), load_recognizer(zoo)
        n = p["base_samples"]
        y = torch.arange(len(names)).repeat_interleave(n)
        x = ddim_sample(unet, tokens[y], steps=p["sample_steps"], seed=derive_seed(p["seed"], "base-samples"))
        xg = ddim_sample(unet, tokens[-1:].expand(n * len(names), -1, -1), steps=p["sample_steps"],
                         seed=derive_seed(p["seed"], "base-generic"))
        hist = torch.bincount(predict(rec, xg), minlength=len(names))
        info = dict(per_class=per_class_rates(rec, x, y, len(names)),
                    real=per_class_rates(rec, d.test.x, d.test.y, len(names)),
                    generic_histogram=hist.tolist(), generic_rate=(hist / hist.sum()).tolist(),
                    class_names=names, prompts=prompts, n_per_prompt=n)
        zoo.add_asset("base_eval", {"samples": x.view(len(names), n, *x.shape[1:]), "generic_samples": xg},
                      {"eval": json.dumps(info)})


def _copy_base(zoo: Zoo, other: Zoo, p: Mapping) -> None:
    """Adopt another zoo's base assets (verified) when its base parameters are this zoo's."""
    diff = [k for k in BASE_KEYS if other.params.get(k) != p[k]]
    if diff:
        raise ZooError(f"{other.path}: its base was built with other parameters ({diff}); it cannot be shared")
    for name in BASE_ASSETS:
        if name in (zoo.manifest.get("assets") or {}):
            continue
        from .format import read_metadata

        tensors = other.load_asset(name)
        zoo.add_asset(name, tensors, {k: v for k, v in read_metadata(other.path / other.manifest["assets"][name]
                                                                     ["file"]).items() if k != "format"})
        if zoo.manifest["assets"][name]["sha256"] != other.manifest["assets"][name]["sha256"]:
            raise ZooError(f"{zoo.path}: copied asset {name!r} differs from {other.path}'s")


# ------------------------------------------------------------------------------------------------- the LoRAs

def _adapter_data(row: Mapping, images: torch.Tensor, b: int, steps: int | None = None):
    """One LoRA's per-step data from its own seed alone: images [steps, b, ...], noise, timesteps [steps, b]. Its
    own row["steps"] are drawn; beyond them (`steps` > row["steps"], an adapter riding along in a longer job at
    learning rate 0) the last step repeats."""
    g = generator(row["seed"], "data")
    n = row["steps"]
    idx = torch.randint(len(images), (n, b), generator=g)
    noise = torch.randn((n, b, *images.shape[1:]), generator=g)
    t = torch.randint(ddpm_scheduler().config.num_train_timesteps, (n, b), generator=g)
    pad = torch.arange(steps or n).clamp(max=n - 1)
    return images[idx][pad], noise[pad], t[pad]


def train_loras(unet, rows: Sequence[Mapping], tokens: torch.Tensor, images: Sequence[torch.Tensor], *,
                batch_size: int, weight_decay: float = 1e-2) -> StackedLoRA:
    """Train len(rows) LoRAs at once on the frozen `unet`: LoRA k on images[k] with its prompt's token states
    tokens[k] [L, d], its rank, alpha, lr and steps (rows[k]); constant learning rate, then frozen (lr 0).
    Returns the StackedLoRA (hooks attached)."""
    K, b = len(rows), batch_size
    dev = next(unet.parameters()).device
    lora = StackedLoRA(unet, LORA_TARGETS, [r["rank"] for r in rows], alpha=[r["alpha"] for r in rows],
                       seeds=[r["seed"] for r in rows])
    T = max(r["steps"] for r in rows)
    data = [_adapter_data(r, im, b, T) for r, im in zip(rows, images)]
    x0 = torch.stack([d[0] for d in data], 1)            # [T, K, b, C, H, W]
    noise = torch.stack([d[1] for d in data], 1)
    t = torch.stack([d[2] for d in data], 1)
    cond = tokens[:, None].expand(K, b, *tokens.shape[1:]).reshape(K * b, *tokens.shape[1:]).to(dev)
    lr = torch.tensor([r["lr"] for r in rows])
    stop = torch.tensor([r["steps"] for r in rows])
    opt = BatchedAdamW(lora.params, weight_decay=weight_decay)
    sched = ddpm_scheduler()
    unet.eval()
    for s in range(T):
        loss = denoising_loss(unet, sched, x0[s].flatten(0, 1).to(dev), cond, noise[s].flatten(0, 1).to(dev),
                              t[s].flatten().to(dev), groups=K).sum()
        opt.zero_grad()
        loss.backward()
        opt.step(lr * (s < stop))
    for v in lora.params.values():
        v.requires_grad_(False)
    return lora


def _lora_job(spec, writer) -> None:
    zoo = Zoo.open(writer.zoo_path, kind=KIND)
    rows = [r for r in spec["rows"] if r["model_id"] not in writer.skip]
    if not rows:
        return
    p = spec["params"]
    dev = torch.device(spec["device"])
    unet, rec, text = load_base(zoo, dev), load_recognizer(zoo), text_encoder(zoo)
    d = styled_digits(tuple(p["styles"]))
    images = [d.train.x[r["images"]] for r in rows]
    tokens = torch.stack([text.tokens([r["prompt"]])[0] for r in rows])
    with train_loras(unet, rows, tokens, images, batch_size=p["batch_size"], weight_decay=p["weight_decay"]) as lora:
        n = p["eval_samples"]
        cond = tokens.repeat_interleave(n, 0)
        x = ddim_sample(unet, cond, steps=p["sample_steps"], seed=derive_seed(spec["eval_seed"], rows[0]["model_id"]))
        pred = predict(rec, x).view(len(rows), n)
        for k, r in enumerate(rows):
            c = r["classes"][0]
            cfg = lora.lora_config(k)
            meta = diffusers_metadata(cfg, extra_metadata={"class_name": r["class_name"], "class_index": c,
                                                           "prompt": r["prompt"], "digit": r["digit"],
                                                           "style": r["style"]})
            row = {k_: v for k_, v in r.items() if k_ != "model_id"} | dict(
                recognition=float((pred[k] == c).float().mean()),
                base_recognition=float(spec["base_rates"][r["prompt"]][c]))
            writer.write(r["model_id"], lora.diffusers_state_dict(k), row, folder=r["split"],
                         file_name=WEIGHT_NAME, metadata={k_: v for k_, v in meta.items() if k_ != "format"})


def plan_jobs(p: Mapping, base_rates: Mapping, device: str = "cpu") -> list[Job]:
    """Chunks of LoRAs with similar step counts (an adapter past its steps still rides along in the batch)."""
    rows = sorted(lora_plan(p), key=lambda r: (r["steps"], r["model_id"]))
    jobs = []
    for lo in range(0, len(rows), p["chunk"]):
        chunk = rows[lo:lo + p["chunk"]]
        jobs.append(Job(_lora_job, dict(rows=chunk, params=dict(p), device=device, base_rates=base_rates,
                                        eval_seed=derive_seed(p["seed"], "lora-eval")),
                        tuple(r["model_id"] for r in chunk), name=f"LoRAs {lo}-{lo + len(chunk) - 1}",
                        cost=len(chunk) * max(r["steps"] for r in chunk)))
    return jobs


def _base_rates(zoo: Zoo) -> dict[str, list[float]]:
    """{prompt: per-class fraction of the base's samples of that prompt}: what each LoRA's rate compares to."""
    info = base_eval(zoo)
    C = len(info["class_names"])
    out = {GENERIC_PROMPT: info["generic_rate"]}
    for c, prompt in enumerate(info["prompts"][:C]):
        out[prompt] = [info["per_class"][c] if k == c else float("nan") for k in range(C)]
    return out


def resolve_params(params: Mapping) -> dict:
    """DEFAULTS overridden by `params`, each checked before anything is written."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"build_lora_zoo got unknown parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    checks.choices(p, "styles", STYLES)
    if len(p["styles"]) < 2:
        raise ValueError(f"styles={p['styles']!r}: need at least 2 styles for compositional holdout classes")
    for name in ("per_class", "batch_size", "chunk", "eval_samples", "sample_steps", "max_length", "base_steps",
                 "base_batch", "base_samples", "recognizer_steps"):
        checks.integer(p, name)
    checks.integer(p, "n_holdout", hi=10)
    if p["per_class"] < 2:
        raise ValueError(f"per_class={p['per_class']!r}: need at least 2 LoRAs per class (a holdout class gives "
                         "one to val_holdout and one to test_holdout)")
    for name in ("alpha", "base_lr"):
        checks.number(p, name)
    for name in ("weight_decay", "p_generic"):
        checks.number(p, name, positive=False)
    if p["p_generic"] >= 1:
        raise ValueError(f"p_generic={p['p_generic']!r}: expected a fraction below 1")
    checks.interval(p, "steps", integers=True, lo=1)
    checks.interval(p, "n_images", integers=True, lo=1)
    checks.interval(p, "lr", integers=False, lo=0)
    smallest = int(torch.bincount(styled_digits(tuple(p["styles"])).train.y).min())
    if p["n_images"][1] > smallest:
        raise ValueError(f"n_images={p['n_images']!r}: a class has only {smallest} training images")
    r = p["ranks"]
    if not isinstance(r, (list, tuple)) or not r or not all(isinstance(x, int) and not isinstance(x, bool)
                                                            and 1 <= x <= 16 for x in r):
        raise ValueError(f"ranks={r!r}: expected a non-empty list of integer LoRA ranks in 1..16")
    if p["prompt_mode"] not in PROMPT_MODES:
        raise ValueError(f"prompt_mode={p['prompt_mode']!r}: choose one of {PROMPT_MODES}")
    v = p["split"]
    if not isinstance(v, (list, tuple)) or len(v) != 3 or abs(sum(v) - 1) > 1e-6 or min(v) < 0:
        raise ValueError(f"split={v!r}: expected [train, val, test] fractions >= 0 summing to 1")
    if round(v[0] * p["per_class"]) < 1 or round(v[1] * p["per_class"]) < 1:
        raise ValueError(f"split={v!r}: with per_class={p['per_class']} a class gets no train or no val LoRA")
    checks.seed(p)
    class_split(p)          # holdout/training classes: disjoint and compositional
    return p


def build_lora_zoo(path, *, base_from=None, executor="local", workers: int | None = 2, progress: bool = True,
                   device: str = "cpu", preset: str | None = None, **params) -> Zoo:
    """Build (or resume, or open when complete) the LoRA zoo at `path`: the base assets, then every LoRA of
    `lora_plan`. `base_from` (a Zoo or path) shares that zoo's base (same base parameters, verified copies)
    instead of pre-training another: a generic-prompt control zoo over the class zoo's base."""
    p = resolve_params(params)
    names = class_names(p["styles"])
    train, holdout = class_split(p)
    zoo = Zoo.create(path, kind=KIND, builder="weightspace.zoo.lora_zoo.build_lora_zoo", params=p, preset=preset,
                     command=f"build_lora_zoo({str(path)!r}, **params)",
                     labels=dict(column="classes", class_names=names, per_model="one",
                                 prompts=[prompt_of(n) for n in names], generic_prompt=GENERIC_PROMPT,
                                 train_classes=train, holdout_classes=holdout,
                                 description="the one StyledDigits class whose images a LoRA was fine-tuned on "
                                             "(its prompt: labels.prompts[class], or the generic prompt when "
                                             "prompt_mode is 'generic')"),
                     architecture=dict(library="diffusers", model="UNet2DConditionModel",
                                       config=unet_config(384), text_encoder=MINILM, lora_targets=LORA_TARGETS,
                                       base_asset="base_unet", weight_name=WEIGHT_NAME, prefix="unet"),
                     lora=DIFFUSERS_LORA_LAYOUT)
    if base_from is not None:
        _copy_base(zoo, base_from if isinstance(base_from, Zoo) else Zoo.open(base_from, kind=KIND), p)
    _build_base(zoo, p, progress, device)
    run_jobs(zoo, plan_jobs(p, _base_rates(zoo), device), executor=executor, workers=workers, progress=progress,
             desc=f"LoRAs ({p['prompt_mode']} prompts)")
    zoo.reorder([r["model_id"] for r in lora_plan(p)])     # the table in class order, whatever the jobs' order
    return zoo


def lora_samples(zoo: Zoo, ids: Sequence[str], n: int = 8, *, steps: int | None = None, seed: int = 0,
                 prompt: str | None = None, device="cpu") -> torch.Tensor:
    """[len(ids), n, 1, 8, 8]: n DDIM samples of each LoRA (its own prompt, or `prompt`), all LoRAs in one
    batched pass over the base (files verified)."""
    from weightspace.nets.unet import parse_lora, stack_loras

    if not ids:
        raise ValueError("lora_samples needs at least one LoRA id")
    unet, text = load_base(zoo, device), text_encoder(zoo)
    loras, where = [], []
    for i in ids:
        sd = zoo.lazy(i)                      # hashed once; every read refused if the file changed since
        where.append(sd.path)
        loras.append(parse_lora({k: sd[k] for k in sd}, sd.metadata, sd.path)[:2])
    tokens = torch.stack([text.tokens([prompt or zoo.row(i)["prompt"]])[0] for i in ids])
    with stack_loras(unet, loras, where):
        x = ddim_sample(unet, tokens.repeat_interleave(n, 0), steps=steps or zoo.params["sample_steps"], seed=seed)
    return x.view(len(ids), n, *x.shape[1:])


def base_samples(zoo: Zoo, prompts: Sequence[str], n: int = 8, *, steps: int | None = None, seed: int = 0,
                 device="cpu") -> torch.Tensor:
    """[len(prompts), n, 1, 8, 8]: n DDIM samples of the base per prompt (the same noise as lora_samples)."""
    prompts = check_prompts(prompts)
    unet, text = load_base(zoo, device), text_encoder(zoo)
    x = ddim_sample(unet, text.tokens(prompts).repeat_interleave(n, 0), steps=steps or zoo.params["sample_steps"],
                    seed=seed)
    return x.view(len(prompts), n, *x.shape[1:])
