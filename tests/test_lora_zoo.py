"""The SD-style LoRA zoo: layout (diffusers files in Model-J's folders), label contract, holdout classes, loading
through diffusers, resume after a kill, the generic-prompt control zoo, and bad parameters."""
import json

import pytest
import torch

from weightspace.nets.lora import WEIGHT_NAME
from weightspace.zoo.format import DIFFUSERS_LORA_LAYOUT, Zoo, read_metadata
from weightspace.zoo.lora_zoo import (GENERIC_PROMPT, build_lora_zoo, class_split, load_base, lora_plan,
                                      lora_samples, resolve_params, text_encoder)

# 6 training classes + 2 holdout classes (their digits and styles are in training classes), 3 LoRAs each
TINY = dict(styles=["plain", "mirrored"], holdout=["a plain two", "a mirrored one"],
            classes=["a plain one", "a plain three", "a plain four", "a mirrored two", "a mirrored three",
                     "a mirrored four"], per_class=3, split=[0.34, 0.33, 0.33], base_steps=12, base_batch=16,
            base_samples=2, steps=[2, 4], chunk=8, recognizer_steps=10, eval_samples=2, sample_steps=3,
            ranks=[2, 4], n_images=[2, 5])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tiny nets are overhead-bound, and processes share the cores."""
    from weightspace.runtime import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_lora_zoo(tmp_path_factory.mktemp("sd") / "zoo", executor="inline", progress=False, **TINY)


def test_layout_labels_and_splits(zoo):
    assert zoo.manifest["lora"] == DIFFUSERS_LORA_LAYOUT and zoo.label_spec["per_model"] == "one"
    assert len(zoo) == 8 * 3
    names = zoo.class_names
    assert names[:2] == ["a plain zero", "a plain one"] and len(names) == 20
    holdout = {names.index("a plain two"), names.index("a mirrored one")}
    for r in zoo.rows:
        f = zoo.path / r["file"]
        assert r["file"] == f"models/{r['split']}/{r['model_id']}/{WEIGHT_NAME}"
        meta = read_metadata(f)
        cfg = json.loads(meta["lora_adapter_metadata"])
        assert cfg["unet.r"] == r["rank"] and cfg["unet.lora_alpha"] == r["alpha"]
        assert meta["class_name"] == names[r["classes"][0]] == r["class_name"] and meta["prompt"] == r["prompt"]
        assert r["prompt"] == f"a photo of {r['class_name']}" and r["prompt_mode"] == "class"
        assert (r["classes"][0] in holdout) == (r["split"] in ("val_holdout", "test_holdout")) == r["holdout"]
        assert len(r["images"]) == r["n_images"] and TINY["steps"][0] <= r["steps"] <= TINY["steps"][1]
        for c in ("digit", "style", "rank", "steps", "lr", "n_images", "seed", "recognition", "base_recognition"):
            assert r[c] is not None, c
    assert sorted({r["split"] for r in zoo.rows}) == ["test", "test_holdout", "train", "val", "val_holdout"]
    assert zoo.class_index(zoo.select(split="val_holdout")).unique().tolist() == sorted(holdout)
    X = zoo.lora_layer(zoo.lora_modules()[6])                  # attn2.to_q: the paper's best layer type
    assert zoo.lora_modules()[6].endswith("attn2.to_q") and X.shape == (24, 32, 32)
    # no two LoRAs share their nuisance
    assert len({(r["seed"]) for r in zoo.rows}) == 24
    zoo.verify()


def test_files_load_through_diffusers_and_the_pipeline(zoo):
    from weightspace.nets.unet import ddim_sample, load_lora, make_pipeline

    ids = zoo.ids[:2]
    stacked = lora_samples(zoo, ids, n=2, steps=3, seed=4)
    for k, i in enumerate(ids):
        r = zoo.row(i)
        folder = (zoo.path / r["file"]).parent
        unet = load_base(zoo)
        unet.load_lora_adapter(str(folder), weight_name=WEIGHT_NAME, prefix="unet", adapter_name="x")
        cond = text_encoder(zoo).tokens([r["prompt"]])
        # the stacked sampler lays out LoRA k's samples after the other LoRAs': same noise by position
        noise = torch.randn(len(ids) * 2, 1, 8, 8, generator=torch.Generator().manual_seed(4))[2 * k:2 * k + 2]
        alone = ddim_sample(unet, cond.expand(2, -1, -1), steps=3, noise=noise)
        assert torch.allclose(alone, stacked[k], atol=1e-4)
        checked = load_base(zoo)
        load_lora(checked, folder)
        assert torch.allclose(ddim_sample(checked, cond.expand(2, -1, -1), steps=3, noise=noise), alone, atol=1e-6)
    from weightspace.nets.text import TextEncoder

    pipe = make_pipeline(load_base(zoo), TextEncoder.minilm(max_length=zoo.params["max_length"]))
    r = zoo.row(ids[0])
    folder = (zoo.path / r["file"]).parent
    pipe.load_lora_weights(str(folder), weight_name=WEIGHT_NAME, adapter_name="a")
    lat = pipe([r["prompt"]] * 2, num_inference_steps=3, guidance_scale=1.0, height=8, width=8,
               generator=torch.Generator().manual_seed(4), output_type="latent").images
    unet = load_base(zoo)
    load_lora(unet, folder)
    ref = ddim_sample(unet, text_encoder(zoo).tokens([r["prompt"]]).expand(2, -1, -1), steps=3,
                      generator=torch.Generator().manual_seed(4))
    assert torch.allclose(lat.clamp(-1, 1), ref, atol=1e-4)
    assert (ref - ddim_sample(load_base(zoo), text_encoder(zoo).tokens([r["prompt"]]).expand(2, -1, -1), steps=3,
                              generator=torch.Generator().manual_seed(4))).abs().max() > 0   # the LoRA acts


def test_a_killed_build_resumes_without_retraining(zoo, tmp_path, monkeypatch):
    from faults import model_writes

    from weightspace.zoo import jobs

    path, real, written = tmp_path / "killed", jobs.write_model, []

    def dies_after_ten(*args, **kwargs):      # the second job (LoRAs 8-15) dies after writing two files
        if len(written) == 10:
            raise KeyboardInterrupt("killed")
        written.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "write_model", dies_after_ten)
    with pytest.raises(KeyboardInterrupt):
        build_lora_zoo(path, executor="inline", progress=False, **TINY)
    monkeypatch.setattr(jobs, "write_model", real)
    assert len(Zoo.open(path)) == 8                           # the first job's rows; two files unrecorded
    with model_writes() as again:
        resumed = build_lora_zoo(path, executor="inline", progress=False, **TINY)
    assert not set(again) & set(written) and len(again) == 14     # nothing written before the kill is redone
    assert resumed.ids == zoo.ids
    resumed.verify()
    for i in zoo.ids:
        a, b = resumed.load(i), zoo.load(i)
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), i


def test_bad_parameters_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="holdout class 'a plain one' also appears in the training classes"):
        resolve_params({**TINY, "holdout": ["a plain one"]})
    with pytest.raises(ValueError, match="'a plain five': no training class has the digit five"):
        resolve_params({**TINY, "holdout": ["a plain five"]})
    with pytest.raises(ValueError, match="unknown class 'a purple one'"):
        resolve_params({**TINY, "holdout": ["a purple one"]})
    with pytest.raises(ValueError, match="'a plain one' is listed twice"):
        resolve_params({**TINY, "classes": ["a plain one", "a plain one"]})
    with pytest.raises(ValueError, match="prompt_mode"):
        resolve_params({**TINY, "prompt_mode": "clever"})
    with pytest.raises(ValueError, match="ranks"):
        resolve_params({**TINY, "ranks": [32]})
    with pytest.raises(TypeError, match="unknown parameter"):
        resolve_params({"n_lora": 3})
    with pytest.raises(ValueError, match="n_images"):
        resolve_params({**TINY, "n_images": [2, 500]})
    assert not (tmp_path / "z").exists()
    train, holdout = class_split(resolve_params({"n_holdout": 8}))
    assert len(holdout) == 8 and len({c % 10 for c in holdout}) == 8 and not set(train) & set(holdout)
    for c in holdout:
        assert any(t % 10 == c % 10 for t in train) and any(t // 10 == c // 10 for t in train)


def test_generic_control_zoo_shares_the_base_and_the_nuisance(zoo, tmp_path):
    ctrl = build_lora_zoo(tmp_path / "generic", base_from=zoo, executor="inline", progress=False,
                          **{**TINY, "prompt_mode": "generic", "per_class": 2, "split": [0.5, 0.5, 0.0]})
    assert ctrl.manifest["assets"]["base_unet"]["sha256"] == zoo.manifest["assets"]["base_unet"]["sha256"]
    assert {r["prompt"] for r in ctrl.rows} == {GENERIC_PROMPT}
    assert all(read_metadata(ctrl.path / r["file"])["prompt"] == GENERIC_PROMPT for r in ctrl.rows)
    twin = {r["model_id"]: r for r in zoo.rows}
    for r in ctrl.rows:      # the same LoRA's nuisance as its class-prompt twin
        t = twin[r["model_id"]]
        assert (r["seed"], r["rank"], r["steps"], r["lr"], r["images"]) == (t["seed"], t["rank"], t["steps"], t["lr"],
                                                                            t["images"])
    with pytest.raises(Exception, match="other parameters"):
        build_lora_zoo(tmp_path / "other", base_from=zoo, executor="inline", progress=False,
                       **{**TINY, "base_steps": 13})
    assert len(lora_plan(resolve_params(TINY))) == 24
