import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# a few-second model-trees build for executor, resume and builder tests
TINY_TREES = dict(n_trees=2, n_per_tree=6, root_steps=12, steps=[3, 6], chunk=4, split=[0.5, 0.25, 0.25])
# the same as a LoRA Model Tree (rank-1..4 adapters on q and v, plus the head)
TINY_LORA_TREES = dict(TINY_TREES, finetune_mode="lora", lora_ranks=[1, 4])


def assert_stacked_is_each_model(net, models, x, y, loss, atol: float = 1e-5) -> torch.Tensor:
    """A nets.batched.Stacked `net` of `models`: its outputs on x [M, B, ...] and every weight's gradient of
    the loss summed over models equal each lone module's. Returns the stacked outputs."""
    out = net(x)
    sum(loss(out[m], y[m]) for m in range(len(models))).backward()
    for m, model in enumerate(models):
        ref = model(x[m])
        assert torch.allclose(out[m], ref, atol=atol)
        loss(ref, y[m]).backward()
        for k, p in model.named_parameters():
            assert torch.allclose(net.params[k].grad[m], p.grad, atol=atol, rtol=1e-4), k
    return out


def toy_state_dict(seed: int, d: int = 6) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"blocks.0.attn.proj.weight": torch.randn(d, d, generator=g),
            "blocks.0.attn.proj.bias": torch.randn(d, generator=g),
            "blocks.0.mlp.fc1.weight": torch.randn(2 * d, d, generator=g)}


@pytest.fixture
def toy_zoo(tmp_path):
    """A zoo of five toy models: a root, two children, two grandchildren (no training)."""
    from weightspace.zoo import Zoo

    zoo = Zoo.create(tmp_path / "zoo", kind="toy", builder="tests", params={"n": 5})
    zoo.add("root", toy_state_dict(0), depth=0, split=None)
    zoo.add("a", toy_state_dict(1), parent_id="root", depth=1, classes=[0, 2])
    zoo.add("b", toy_state_dict(2), parent_id="root", depth=1, classes=[1, 2])
    zoo.add("a1", toy_state_dict(3), parent_id="a", depth=2, split="test", classes=[0])
    zoo.add("b1", toy_state_dict(4), parent_id="b", depth=2, split="val", classes=[1])
    return zoo


@pytest.fixture(scope="session")
def tiny_lora_trees(tmp_path_factory):
    """A few-second LoRA Model Tree: 2 roots x 6 LoRA fine-tunes."""
    from weightspace.zoo.model_trees import build_model_trees

    return build_model_trees(tmp_path_factory.mktemp("lora-trees") / "z", executor="inline", progress=False,
                             **TINY_LORA_TREES)
