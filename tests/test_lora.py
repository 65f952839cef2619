"""Stacked LoRA adapters against hand-computed matrices, lone peft adapters and diffusers' loader."""
import json

import pytest
import torch
from torch import nn

from weightspace.nets.lora import (WEIGHT_NAME, StackedLoRA, cumulative, delta, diffusers_metadata,
                                   init_factors, merge, rank_mask, save_diffusers_lora)

TINY_UNET = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                 block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                 attention_head_dim=8, norm_num_groups=8)
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class MLP(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def tiny_unet(seed=0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET).eval()


def randomise_B(lora, seed=1):
    """Nonzero B (masked to each adapter's rank), so the adapters change the forward from step 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.params.items():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 * lora.mask[:, None, :])


# ------------------------------------------------------------------------------------- functional pieces

def test_delta_merge_cumulative_by_hand():
    A = torch.tensor([[1., 2., 0.], [0., 1., -1.]])            # [r=2, d_in=3]
    B = torch.tensor([[1., 0.], [2., 1.]])                      # [d_out=2, r=2]
    full = torch.tensor([[1., 2., 0.], [2., 5., -1.]])          # B @ A by hand
    assert torch.equal(delta(A, B), full)
    assert torch.equal(delta(A, B, scale=0.5), full / 2)
    first = torch.tensor([[1., 2., 0.], [2., 4., 0.]])          # rank 1: B[:, :1] @ A[:1]
    assert torch.equal(delta(A, B, mask=torch.tensor([1., 0.])), first)
    W = torch.eye(2, 3)
    assert torch.equal(merge(W, A, B, scale=2.0), W + 2 * full)
    stacked = delta(torch.stack([A, A]), torch.stack([B, B]), rank_mask([2, 1]), torch.tensor([1., 3.]))
    assert torch.equal(stacked, torch.stack([full, 3 * first]))
    vm = torch.func.vmap(delta)(torch.stack([A, A]), torch.stack([B, B]), rank_mask([2, 1]),
                                torch.tensor([1., 3.]))
    assert torch.equal(vm, stacked)
    # the ViT forests' merge inside vmap: W_parent + (B * mask) @ A, to float rounding (a batched matmul may
    # sum in another order than one matmul per model, depending on the inputs)
    g = torch.Generator().manual_seed(0)
    W3, A3, B3 = (torch.randn(3, 5, 4, generator=g), torch.randn(3, 2, 4, generator=g),
                  torch.randn(3, 5, 2, generator=g))
    m3 = rank_mask([2, 1, 2])
    torch.testing.assert_close(torch.func.vmap(merge)(W3, A3, B3, m3),
                               torch.stack([W3[i] + (B3[i] * m3[i]) @ A3[i] for i in range(3)]),
                               rtol=0, atol=1e-6)
    # root -> child (U1 V1) -> grandchild (U2 V2): W = W_root + U1 V1 + U2 V2
    U1, V1 = torch.tensor([[1.], [0.]]), torch.tensor([[0., 1., 0.]])
    U, V = cumulative(None, None, U1, V1)
    assert U is U1 and V is V1
    U, V = cumulative(U1, V1, B, A)
    assert U.shape == (2, 3) and V.shape == (3, 3)
    assert torch.equal(U @ V, torch.tensor([[1., 3., 0.], [2., 5., -1.]]))
    with pytest.raises(ValueError, match="do not match"):
        cumulative(U1, V1, torch.ones(3, 1), torch.ones(1, 3))


def test_init_reproducible_per_seed_and_matches_recipe():
    A, B, mask = init_factors(10, 7, [2, 4, 3], seeds=[5, 6, 7])
    assert A.shape == (3, 4, 10) and B.shape == (3, 7, 4) and torch.equal(B, torch.zeros_like(B))
    assert torch.equal(mask, torch.tensor([[1., 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]))
    # the recipe the ViT forests use: (rand * 2 - 1) / sqrt(d_in) from a generator seeded with the seed
    ref = (torch.rand(4, 10, generator=torch.Generator().manual_seed(6)) * 2 - 1) / 10 ** 0.5
    assert torch.equal(A[1], ref)
    assert torch.equal(A[0, :2], ((torch.rand(4, 10, generator=torch.Generator().manual_seed(5)) * 2 - 1)
                                  / 10 ** 0.5)[:2])
    assert torch.equal(A[0, 2:], torch.zeros(2, 10)) and A.abs().max() <= 10 ** -0.5
    # adapter k's factors depend on its own seed alone, not on the other adapters
    A2, _, _ = init_factors(10, 7, [4, 1], seeds=[6, 9])
    assert torch.equal(A2[0], A[1])
    assert not torch.equal(init_factors(10, 7, [4], seeds=[8])[0], A[1:2])
    # seeds + key: derive_seed(seed, *key), as forests seed per (seed, layer, block)
    from weightspace.runtime import derive_seed
    Ak, _, _ = init_factors(10, 7, [4], seeds=[3], key=("blocks.0.attn.qkv.weight", "q"))
    Ad, _, _ = init_factors(10, 7, [4], seeds=[derive_seed(3, "blocks.0.attn.qkv.weight", "q")])
    assert torch.equal(Ak, Ad)
    Ag, _, _ = init_factors(100, 7, [4], generators=[torch.Generator().manual_seed(0)], init="gaussian")
    assert abs(float(Ag.std()) - 1 / 4) < 0.03          # peft's "gaussian": std 1/r


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="rank 0 is out of range"):
        init_factors(4, 3, [0], seeds=[0])
    with pytest.raises(ValueError, match=r"rank 4 is out of range.*1\.\.3"):
        init_factors(4, 3, [4], seeds=[0])
    with pytest.raises(ValueError, match="2 seeds/generators for 3 adapters"):
        init_factors(4, 3, [1, 1, 1], seeds=[0, 1])
    with pytest.raises(ValueError, match="unknown LoRA init"):
        init_factors(4, 3, [1], seeds=[0], init="orthogonal")
    with pytest.raises(ValueError, match=r"\['to_q'\] match no nn.Linear of MLP"):
        StackedLoRA(MLP(), ["fc1", "to_q"], [2])
    with pytest.raises(ValueError, match=r"fc2: adapter 1: rank 6 is out of range.*1\.\.5"):
        StackedLoRA(MLP(), ["fc1", "fc2"], [2, 6])
    model = MLP()
    with StackedLoRA(model, ["fc1"], [2, 2, 2]) as lora:
        model(torch.randn(6, 6))
        with pytest.raises(ValueError, match="fc1: got a batch of 4 inputs, not a multiple of K=3"):
            model(torch.randn(4, 6))
    model(torch.randn(4, 6))                    # hooks removed on leaving the block
    with pytest.raises(IndexError, match="adapter index 3"):
        lora.peft_state_dict(3)


# ------------------------------------------------------------------------------------------ training

def test_gradients_never_leak_between_adapters():
    model = MLP()
    lora = StackedLoRA(model, ["fc1", "fc2"], [3, 2, 3, 1], alpha=[6, 2, 1, 4], seeds=[0, 1, 2, 3])
    randomise_B(lora)
    x = torch.randn(4 * 5, 6)
    out = model(x).view(4, 5, 3)
    out[2].pow(2).mean().backward()                 # adapter 2's group only
    for name, p in lora.params.items():
        assert torch.equal(p.grad[[0, 1, 3]], torch.zeros_like(p.grad[[0, 1, 3]])), name
        assert p.grad[2].abs().max() > 0, name
    assert all(q.grad is None for q in model.parameters())   # the base is frozen
    lora.remove()
    assert torch.equal(model(x), MLP()(x))          # hooks gone: the base model again


def _train_stacked(model, lora, xs, ys, steps, lr=1e-2):
    opt = torch.optim.AdamW(lora.params.values(), lr=lr, weight_decay=0.01)
    K = lora.K
    for t in range(steps):
        out = model(xs[t].flatten(0, 1)).view(K, -1, 3)
        loss = ((out - ys[t]) ** 2).mean((1, 2)).sum()        # mean within a group, summed over groups
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_stacked_adamw_equals_lone_peft_adapters():
    from peft import LoraConfig, inject_adapter_in_model

    K, b, steps = 3, 4, 3
    ranks, alphas = [2, 4, 3], [4.0, 2.0, 3.0]
    model = MLP()
    lora = StackedLoRA(model, ["fc1", "fc2"], ranks, alpha=alphas, seeds=[10, 11, 12])
    randomise_B(lora)
    init = [lora.peft_state_dict(k) for k in range(K)]
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(steps, K, b, 6, generator=g), torch.randn(steps, K, b, 3, generator=g)
    _train_stacked(model, lora, xs, ys, steps)
    moved = 0.0
    for k in range(K):
        lone = MLP()
        lone.requires_grad_(False)
        cfg = LoraConfig(r=ranks[k], lora_alpha=alphas[k], target_modules=["fc1", "fc2"])
        lone = inject_adapter_in_model(cfg, lone)
        with torch.no_grad():
            for name, mod in lone.named_modules():
                if name in ("fc1", "fc2"):
                    mod.lora_A["default"].weight.copy_(init[k][f"{name}.lora_A.weight"])
                    mod.lora_B["default"].weight.copy_(init[k][f"{name}.lora_B.weight"])
        params = [p for n, p in lone.named_parameters() if "lora_" in n]
        assert len(params) == 4 and all(p.requires_grad for p in params)
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
        for t in range(steps):
            loss = ((lone(xs[t, k]) - ys[t, k]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        mine = lora.peft_state_dict(k)
        for name, mod in lone.named_modules():
            if name in ("fc1", "fc2"):
                for key, ref in (("lora_A", mod.lora_A["default"].weight),
                                 ("lora_B", mod.lora_B["default"].weight)):
                    got = mine[f"{name}.{key}.weight"]
                    assert got.shape == ref.shape
                    assert torch.allclose(got, ref, atol=1e-5), (k, name, key, float((got - ref).abs().max()))
                    moved = max(moved, float((got - init[k][f"{name}.{key}.weight"]).abs().max()))
    assert moved > 1e-3                              # the adapters did train


def test_single_adapter_forward_equals_peft():
    from peft import LoraConfig, inject_adapter_in_model

    model = MLP()
    x = torch.randn(5, 6)
    with StackedLoRA(model, ["fc2"], 3, K=1, alpha=6.0, seeds=[4]) as lora:
        randomise_B(lora)
        hooked = model(x)
        sd = lora.peft_state_dict(0)
    ref = inject_adapter_in_model(LoraConfig(r=3, lora_alpha=6.0, target_modules=["fc2"]), MLP())
    with torch.no_grad():
        ref.fc2.lora_A["default"].weight.copy_(sd["fc2.lora_A.weight"])
        ref.fc2.lora_B["default"].weight.copy_(sd["fc2.lora_B.weight"])
        assert torch.allclose(hooked, ref(x), atol=1e-6)
        assert float((hooked - MLP()(x)).abs().max()) > 1e-3
    from peft.utils import get_peft_model_state_dict
    theirs = get_peft_model_state_dict(ref)
    assert set(theirs) == set(sd) and all(torch.equal(theirs[k], sd[k]) for k in sd)


def test_batched_adamw_gives_each_adapter_its_own_learning_rate():
    """One BatchedAdamW over K=2 stacked adapters (lr 1e-2 and 3e-3) equals two K=1 runs with torch AdamW."""
    from weightspace.nets import BatchedAdamW

    g = torch.Generator().manual_seed(5)
    xs, ys = torch.randn(3, 2, 4, 6, generator=g), torch.randn(3, 2, 4, 3, generator=g)
    lrs = [1e-2, 3e-3]
    model = MLP()
    lora = StackedLoRA(model, ["fc1", "fc2"], [2, 3], seeds=[7, 8])
    opt = BatchedAdamW(lora.params, weight_decay=0.01)
    for t in range(3):
        loss = ((model(xs[t].flatten(0, 1)).view(2, 4, 3) - ys[t]) ** 2).mean((1, 2)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step(torch.tensor(lrs))
    for k in range(2):
        alone_model = MLP()
        alone = StackedLoRA(alone_model, ["fc1", "fc2"], [[2, 3][k]], seeds=[[7, 8][k]])  # same seed
        _train_stacked(alone_model, alone, xs[:, k:k + 1], ys[:, k:k + 1], 3, lr=lrs[k])
        ref, got = alone.peft_state_dict(0), lora.peft_state_dict(k)
        assert all(torch.allclose(got[n], ref[n], atol=1e-6) for n in ref)


def test_per_adapter_ranks_train_only_their_rows():
    model = MLP()
    ranks = [1, 2, 4]
    lora = StackedLoRA(model, ["fc1", "fc2"], ranks, seeds=[0, 1, 2])
    g = torch.Generator().manual_seed(3)
    xs, ys = torch.randn(4, 3, 6, 6, generator=g), torch.randn(4, 3, 6, 3, generator=g)
    _train_stacked(model, lora, xs, ys, 4)
    for name in ("fc1", "fc2"):
        A, B = lora.params[f"{name}.lora_A"], lora.params[f"{name}.lora_B"]
        D = lora.deltas(name)
        for k, r in enumerate(ranks):
            assert torch.equal(A[k, r:], torch.zeros_like(A[k, r:]))
            assert torch.equal(B[k, :, r:], torch.zeros_like(B[k, :, r:]))
            assert torch.equal(A.grad[k, r:], torch.zeros_like(A.grad[k, r:]))
            assert torch.equal(B.grad[k, :, r:], torch.zeros_like(B.grad[k, :, r:]))
            assert int(torch.linalg.matrix_rank(D[k].detach())) == r
            Ak, Bk = lora.factors(k, name)
            assert Ak.shape == (r, A.shape[-1]) and Bk.shape == (B.shape[1], r)
            assert torch.allclose(D[k], lora.scale[k] * Bk @ Ak, atol=1e-7)


# ------------------------------------------------------------------------------------ diffusers export

def test_diffusers_export_reloads_into_a_tiny_unet(tmp_path):
    from safetensors import safe_open

    torch.manual_seed(0)
    unet = tiny_unet()
    K, b = 2, 2
    ranks, alphas = [4, 2], [8.0, 3.0]
    x = torch.randn(K * b, 1, 8, 8)
    t = torch.tensor([10, 500] * K)
    enc = torch.randn(K * b, 4, 32)
    with StackedLoRA(unet, UNET_TARGETS, ranks, alpha=alphas, seeds=[0, 1]) as lora:
        assert len(lora.modules) == 32
        randomise_B(lora)
        with torch.no_grad():
            hooked = unet(x, t, enc).sample.view(K, b, 1, 8, 8)
        k = 0
        sd = lora.diffusers_state_dict(k)
        peft_sd = lora.peft_state_dict(k)
        cfg = lora.lora_config(k)
        with torch.no_grad():          # what the file would load to without metadata: alpha = r (scale 1)
            lora.scale[k] = 1.0
            scale_one = unet(x, t, enc).sample.view(K, b, 1, 8, 8)
    with torch.no_grad():
        base = unet(x, t, enc).sample.view(K, b, 1, 8, 8)
    assert len(sd) == 64 and all(k_.startswith("unet.") and ".lora." in k_ for k_ in sd)
    first = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert sd[f"{first}.lora.down.weight"].shape == (4, 32) and sd[f"{first}.lora.up.weight"].shape == (32, 4)
    path = save_diffusers_lora(tmp_path / "a0", sd, cfg, extra_metadata={"style": "mirror"})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["style"] == "mirror"
    assert json.loads(meta["lora_adapter_metadata"])["unet.lora_alpha"] == 8.0

    unet.load_lora_adapter(str(tmp_path / "a0"), weight_name=WEIGHT_NAME, prefix="unet", adapter_name="a0")
    with torch.no_grad():
        loaded = unet(x[:b], t[:b], enc[:b]).sample
    assert float((hooked[0] - base[0]).abs().max()) > 1e-2          # the adapter changes the output
    assert torch.allclose(loaded, hooked[0], atol=1e-5), float((loaded - hooked[0]).abs().max())
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    assert unet.peft_config["a0"].lora_alpha == 8.0 and unet.peft_config["a0"].r == 4
    theirs = get_peft_model_state_dict(unet, adapter_name="a0")
    assert set(theirs) == set(peft_sd) and all(torch.equal(theirs[k_], peft_sd[k_]) for k_ in peft_sd)
    assert {f"unet.{k_}" for k_ in convert_state_dict_to_diffusers(theirs)} == set(sd)

    # without the metadata diffusers infers the config from the shapes and sets alpha = r: wrong scale
    from weightspace.zoo.format import write_safetensors
    (tmp_path / "bare").mkdir()
    write_safetensors(tmp_path / "bare" / WEIGHT_NAME, sd, {"format": "pt"})
    bare = tiny_unet()
    bare.load_lora_adapter(str(tmp_path / "bare"), weight_name=WEIGHT_NAME, prefix="unet")
    with torch.no_grad():
        wrong = bare(x[:b], t[:b], enc[:b]).sample
    assert float((wrong - hooked[0]).abs().max()) > 1e-2
    assert torch.allclose(wrong, scale_one[0], atol=1e-5)


def test_metadata_is_prefixed_and_protected():
    meta = diffusers_metadata({"r": 4, "lora_alpha": 8, "target_modules": ("to_q",)})
    assert json.loads(meta["lora_adapter_metadata"]) == {"unet.r": 4, "unet.lora_alpha": 8,
                                                         "unet.target_modules": ["to_q"]}
    with pytest.raises(ValueError, match="'format' would overwrite"):
        diffusers_metadata({"r": 4}, extra_metadata={"format": "np"})
