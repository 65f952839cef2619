"""The tiny text-to-image model: DDPM/DDIM against hand computations, the text encoders, the diffusers pipeline,
and LoRA files (stacked training = a lone peft adapter; our files load through diffusers; bad files refused)."""
import json

import pytest
import torch

from weightspace.nets.lora import WEIGHT_NAME, save_diffusers_lora
from weightspace.nets.text import TextEncoder, check_prompts, tiny_clip
from weightspace.nets.unet import (LORA_TARGETS, LoRAFileError, ddim_sample, ddim_scheduler, ddpm_scheduler,
                                   denoising_loss, load_lora, make_pipeline, make_unet, read_lora, stack_loras,
                                   train_base, unet_config)

WORDS = "a photo of plain mirrored inverted bold digit zero one two three four five six seven eight nine".split()
PROMPTS = ["a photo of a plain one", "a photo of a mirrored two", "a photo of a bold three"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tiny nets are overhead-bound, and processes share the cores."""
    from weightspace.runtime import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def clip_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "text"
    tiny_clip(WORDS, hidden_size=32, max_length=8, path=path)
    return TextEncoder.clip(path, max_length=8)


@pytest.fixture(scope="module")
def unet():
    return make_unet(unet_config(32), seed=0).eval().requires_grad_(False)


def randomise_B(lora, seed=1, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.params.items():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * scale * lora.mask[:, None, :])


# ----------------------------------------------------------------------------------------- DDPM / DDIM

def test_add_noise_is_ddpm_forward_process():
    sched = ddpm_scheduler()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 1, 8, 8, generator=g), torch.randn(5, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 900, 999])
    # squaredcos_cap_v2: abar(t) = f(t)/f(0), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2, s = 0.008, betas capped at 0.999
    f = lambda u: torch.cos((u / 1000 + 0.008) / 1.008 * torch.pi / 2) ** 2
    betas = torch.clamp(1 - f(torch.arange(1, 1001, dtype=torch.float64)) / f(torch.arange(1000, dtype=torch.float64)),
                        max=0.999)
    abar = torch.cumprod(1 - betas, 0).float()
    assert torch.allclose(sched.alphas_cumprod, abar, atol=1e-6)
    hand = abar[t].sqrt()[:, None, None, None] * x0 + (1 - abar[t]).sqrt()[:, None, None, None] * eps
    assert torch.allclose(sched.add_noise(x0, eps, t), hand, atol=1e-5)


def test_denoising_loss_is_each_groups_mse(unet):
    sched = ddpm_scheduler()
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 1, 8, 8, generator=g)
    cond, t = torch.randn(6, 4, 32, generator=g), torch.randint(1000, (6,), generator=g)
    per_group = denoising_loss(unet, sched, x0, cond, eps, t, groups=3)
    pred = unet(sched.add_noise(x0, eps, t), t, encoder_hidden_states=cond).sample
    hand = torch.stack([((pred[2 * k:2 * k + 2] - eps[2 * k:2 * k + 2]) ** 2).mean() for k in range(3)])
    assert torch.allclose(per_group, hand, atol=1e-6)


def test_ddim_sampler_is_the_ddim_update_by_hand(unet):
    steps, g = 4, torch.Generator().manual_seed(2)
    cond, noise = torch.randn(3, 4, 32, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    abar = ddpm_scheduler().alphas_cumprod
    x = noise.clone()
    ts = [751 - 250 * i for i in range(steps)]             # "leading" + steps_offset 1: 751, 501, 251, 1
    with torch.no_grad():
        for i, t in enumerate(ts):
            eps = unet(x, torch.tensor(t), encoder_hidden_states=cond).sample
            a = abar[t]
            a_prev = abar[t - 250] if t - 250 >= 0 else torch.tensor(1.0)   # set_alpha_to_one
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps                  # DDIM, eta = 0 (eq. 12)
    assert ddim_scheduler().config.timestep_spacing == "leading"
    out = ddim_sample(unet, cond, steps=steps, noise=noise)
    assert torch.allclose(out, x.clamp(-1, 1), atol=1e-5)
    assert torch.equal(ddim_sample(unet, cond, steps=steps, seed=3), ddim_sample(unet, cond, steps=steps, seed=3))
    with pytest.raises(ValueError, match="noise has shape"):
        ddim_sample(unet, cond, noise=noise[:2])


def test_base_training_lowers_the_denoising_loss():
    net = make_unet(unet_config(32), seed=0)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 1, 8, 8, generator=g) * 2 - 1
    labels, tokens = torch.arange(40) % 4, torch.randn(4, 5, 32, generator=g)
    sched = ddpm_scheduler()
    x0, eps, t = images[:16], torch.randn(16, 1, 8, 8, generator=g), torch.randint(1000, (16,), generator=g)

    def held_out_loss():
        with torch.no_grad():
            return float(denoising_loss(net, sched, x0, tokens[labels[:16]], eps, t).sum())

    before = held_out_loss()
    losses = train_base(net, images, labels, tokens, steps=40, batch_size=16, lr=3e-3, generic=tokens[0])
    assert len(losses) == 40 and not net.training
    assert held_out_loss() < 0.7 * before
    with pytest.raises(ValueError, match="do not match"):
        train_base(net, images, labels[:5], tokens, steps=1)


# ----------------------------------------------------------------------------------------- text encoders

def test_prompt_lists_are_checked(clip_text):
    for bad, msg in (([], "empty"), (["a photo of a digit", "a photo of a digit"], "repeat"), ([""], "non-empty"),
                     ("a photo", "one string")):
        with pytest.raises((ValueError, TypeError), match=msg):
            check_prompts(bad)
        with pytest.raises((ValueError, TypeError), match=msg):
            clip_text.tokens(bad)
    with pytest.raises(ValueError, match="longer than max_length"):
        clip_text.tokens(["a photo of a plain one two three four five"])


def test_clip_path_tokens_sentence_and_cache(clip_text):
    tok, sent = clip_text.tokens(PROMPTS), clip_text.sentence(PROMPTS)
    assert tok.shape == (3, 8, 32) and sent.shape == (3, 32) and clip_text.width == 32
    assert torch.allclose(sent.norm(dim=1), torch.ones(3))
    ids = clip_text.tokenizer(PROMPTS, padding="max_length", max_length=8, return_tensors="pt")
    with torch.no_grad():
        ref = clip_text.model(input_ids=ids["input_ids"]).last_hidden_state
        pooled = clip_text.model(**ids).pooler_output
    assert torch.allclose(tok, ref, atol=1e-6)
    assert torch.allclose(sent, torch.nn.functional.normalize(pooled, dim=-1), atol=1e-6)
    assert torch.equal(clip_text.tokens(PROMPTS[::-1]), tok.flip(0))          # served from the cache, in order
    cached = TextEncoder.from_tensors(*clip_text.to_tensors(PROMPTS))
    assert torch.equal(cached.tokens(PROMPTS), tok) and torch.equal(cached.sentence(PROMPTS[:1]), sent[:1])
    with pytest.raises(KeyError, match="cache-only"):
        cached.tokens(["a photo of a digit"])


# ------------------------------------------------------------------------------------ the diffusers pipeline

def test_pipeline_is_our_sampler_and_round_trips(unet, clip_text, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = make_pipeline(unet, clip_text)
    kw = dict(num_inference_steps=5, guidance_scale=1.0, height=8, width=8, output_type="latent")
    lat = pipe(PROMPTS, generator=torch.Generator().manual_seed(7), **kw).images
    ours = ddim_sample(unet, clip_text.tokens(PROMPTS), steps=5, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(lat.clamp(-1, 1), ours, atol=1e-5)
    pipe.save_pretrained(tmp_path / "pipe")
    again = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", safety_checker=None)
    lat2 = again(PROMPTS, generator=torch.Generator().manual_seed(7), **kw).images
    assert torch.allclose(lat, lat2, atol=1e-6)
    with pytest.raises(ValueError, match="cache-only"):
        make_pipeline(unet, TextEncoder.from_tensors(*clip_text.to_tensors(PROMPTS)))


# ---------------------------------------------------------------------------------------- LoRAs on the UNet

def _trained_file(unet, tmp_path, rank=4, alpha=8.0, name="lora"):
    from weightspace.nets import StackedLoRA

    with StackedLoRA(unet, LORA_TARGETS, [rank], alpha=alpha, seeds=[5]) as lora:
        randomise_B(lora)
        path = save_diffusers_lora(tmp_path / name, lora.diffusers_state_dict(0), lora.lora_config(0),
                                   extra_metadata={"class_name": "a plain one"})
        return path, lora.diffusers_state_dict(0), lora.lora_config(0)


def _out(unet, cond, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(len(cond), 1, 8, 8, generator=g), torch.tensor(400)
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=cond).sample


def test_stacked_unet_gradients_never_leak_and_match_a_lone_peft_adapter():
    from peft import LoraConfig

    from weightspace.zoo.lora_zoo import _adapter_data, train_loras

    net = make_unet(unet_config(32), seed=0).requires_grad_(False)
    rows = [dict(rank=r, alpha=a, seed=s, lr=lr, steps=st) for r, a, s, lr, st in
            ((2, 4.0, 11, 3e-3, 3), (4, 8.0, 12, 1e-2, 3), (3, 3.0, 13, 5e-3, 2))]
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(5, 1, 8, 8, generator=g) * 2 - 1 for _ in rows]
    tokens = torch.randn(3, 4, 32, generator=g)
    from weightspace.nets import StackedLoRA

    init = StackedLoRA(net, LORA_TARGETS, [r["rank"] for r in rows], alpha=[r["alpha"] for r in rows],
                       seeds=[r["seed"] for r in rows])
    init_sd = [init.peft_state_dict(k) for k in range(3)]
    # no leak: adapter 1's group loss moves only adapter 1's factors
    randomise_B(init)
    x0, noise, t = _adapter_data(rows[1], images[1], 2)
    cond = tokens.repeat_interleave(2, 0)
    loss = denoising_loss(net, ddpm_scheduler(), torch.cat([x0[0]] * 3), cond, torch.cat([noise[0]] * 3),
                          torch.cat([t[0]] * 3), groups=3)
    loss[1].backward()
    for name, p in init.params.items():
        assert torch.equal(p.grad[[0, 2]], torch.zeros_like(p.grad[[0, 2]])), name
        assert p.grad[1].abs().max() > 0, name
    init.remove()

    lora = train_loras(net, rows, tokens, images, batch_size=2, weight_decay=1e-2)
    trained = [lora.peft_state_dict(k) for k in range(3)]
    lora.remove()
    for k, r in enumerate(rows):
        lone = make_unet(unet_config(32), seed=0).requires_grad_(False)
        lone.add_adapter(LoraConfig(r=r["rank"], lora_alpha=r["alpha"], target_modules=LORA_TARGETS))
        params = {}
        with torch.no_grad():
            for key, value in init_sd[k].items():
                module, which, _ = key.rsplit(".", 2)
                layer = getattr(lone.get_submodule(module), which)["default"]
                layer.weight.copy_(value)
                params[key] = layer.weight
        opt = torch.optim.AdamW(params.values(), lr=r["lr"], weight_decay=1e-2)
        x0, noise, t = _adapter_data(r, images[k], 2)
        for s in range(r["steps"]):
            loss = denoising_loss(lone, ddpm_scheduler(), x0[s], tokens[k].expand(2, -1, -1), noise[s], t[s]).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        # float rounding only: batched and lone products round differently, and AdamW's normalised steps let that
        # grow (4.8e-5 after these steps on an AVX2 CPU, under 2e-5 on AVX-512), against changes of > 1e-3
        for key, ref in params.items():
            assert torch.allclose(trained[k][key], ref, atol=1e-4), (k, key, float((trained[k][key] - ref).abs().max()))
        assert max(float((trained[k][key] - init_sd[k][key]).abs().max()) for key in params) > 1e-3


def test_our_lora_file_loads_through_diffusers_and_the_pipeline(unet, clip_text, tmp_path):
    path, sd, cfg = _trained_file(unet, tmp_path, rank=4, alpha=8.0)
    assert path.name == WEIGHT_NAME
    cond = clip_text.tokens(PROMPTS)
    base = _out(unet, cond)
    with stack_loras(unet, [read_lora(path)[:2]]):
        ref = _out(unet, cond)
    assert (ref - base).abs().max() > 1e-3
    net = make_unet(unet_config(32), seed=0)
    assert load_lora(net, path.parent, adapter_name="one") == "one"
    assert torch.allclose(_out(net, cond), ref, atol=1e-5)
    net2 = make_unet(unet_config(32), seed=0)
    net2.load_lora_adapter(str(path.parent), weight_name=WEIGHT_NAME, prefix="unet", adapter_name="x")
    assert torch.allclose(_out(net2, cond), ref, atol=1e-5)
    pipe = make_pipeline(make_unet(unet_config(32), seed=0), clip_text)
    pipe.load_lora_weights(str(path.parent), weight_name=WEIGHT_NAME, adapter_name="one")
    assert pipe.get_list_adapters() == {"unet": ["one"]}
    assert torch.allclose(_out(pipe.unet, cond), ref, atol=1e-5)
    modules, config, header = read_lora(path)
    assert config["lora_alpha"] == 8.0 and config["r"] == 4 and header["class_name"] == "a plain one"
    assert len(modules) == 32


def test_bad_lora_files_give_clear_errors(unet, tmp_path):
    from safetensors.torch import save_file

    path, sd, cfg = _trained_file(unet, tmp_path)
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps({f"unet.{k}": v for k, v in cfg.items()})}
    net = make_unet(unet_config(32), seed=0)
    # without the prefix: diffusers would load nothing, silently; ours names the prefix
    with pytest.raises(LoRAFileError, match="prefix='unet'"):
        load_lora(net, path.parent, prefix=None)
    assert not any(hasattr(m, "lora_A") for m in net.modules())
    # another rank than asked for, or than the header says
    with pytest.raises(LoRAFileError, match="rank 4.*rank 8 was asked"):
        load_lora(net, path, rank=8)
    lying = dict(meta, lora_adapter_metadata=json.dumps({f"unet.{k}": (8 if k == "r" else v) for k, v in cfg.items()}))
    save_file(sd, str(tmp_path / "lying.safetensors"), metadata=lying)
    with pytest.raises(LoRAFileError, match="lying.safetensors.*rank 4, but the header says r=8"):
        read_lora(tmp_path / "lying.safetensors")
    # missing keys: half a module, and a whole module
    up = next(k for k in sd if k.endswith("lora.up.weight"))
    save_file({k: v for k, v in sd.items() if k != up}, str(tmp_path / "half.safetensors"), metadata=meta)
    with pytest.raises(LoRAFileError, match="half.safetensors.*lacks its up factor"):
        read_lora(tmp_path / "half.safetensors")
    stem = up[len("unet."):-len(".lora.up.weight")]
    save_file({k: v for k, v in sd.items() if stem not in k}, str(tmp_path / "gone.safetensors"), metadata=meta)
    with pytest.raises(LoRAFileError, match="gone.safetensors: missing keys"):
        load_lora(net, tmp_path / "gone.safetensors")
    # no adapter metadata: alpha would be lost
    save_file(sd, str(tmp_path / "bare.safetensors"), metadata={"format": "pt"})
    with pytest.raises(LoRAFileError, match="alpha would be lost"):
        read_lora(tmp_path / "bare.safetensors")
    # a base it was not trained for (other text width): named module and shapes
    other = make_unet(unet_config(48), seed=0)
    with pytest.raises(LoRAFileError, match=r"base/adapter mismatch at \S*attn2\.to_k: the adapter is \[32 x 32\] but the base Linear is \[32 x 48\]"):
        load_lora(other, path)
    with pytest.raises(LoRAFileError, match="no LoRA file"):
        read_lora(tmp_path / "nowhere")
