import pathlib

import numpy as np
import torch

from weightspace import runtime


def test_device_and_autocast_on_cpu(monkeypatch):
    monkeypatch.delenv("WEIGHTSPACE_DEVICE", raising=False)
    dev = runtime.device()
    assert dev.type in ("cpu", "cuda", "mps")
    assert runtime.device("cpu") == torch.device("cpu")
    monkeypatch.setenv("WEIGHTSPACE_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu")
    with runtime.autocast("cpu"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32                      # autocast only on CUDA


def test_derived_seeds_are_stable_and_distinct():
    # sha256 of "0/tree/3", first 8 bytes little-endian, halved: the same in every process (unlike hash())
    assert runtime.derive_seed(0, "tree", 3) == 5325007989131993862
    assert runtime.derive_seed(0, "tree", 3) == runtime.derive_seed("0", "tree", "3")
    assert runtime.derive_seed(0, "tree", 3) != runtime.derive_seed(0, "tree", 4)
    assert 0 <= runtime.derive_seed("x") < 2**63
    a = torch.rand(3, generator=runtime.generator("k", 1))
    assert torch.equal(a, torch.rand(3, generator=runtime.generator("k", 1)))
    assert np.array_equal(runtime.np_rng("k").random(3), runtime.np_rng("k").random(3))


def test_torch_threads_restores():
    before = torch.get_num_threads()
    with runtime.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_seed_everything():
    runtime.seed_everything(5)
    a = torch.rand(2)
    runtime.seed_everything(5)
    assert torch.equal(a, torch.rand(2))


def test_environment_records_versions_device_and_commit(tmp_path):
    from importlib import metadata

    from weightspace.plotting import save_results
    from weightspace.runtime import environment
    from weightspace.zoo import Zoo

    env = environment("cpu")
    assert env["packages"]["torch"] == metadata.version("torch") and env["device"] == "cpu"
    assert env["packages"]["diffusers"] == metadata.version("diffusers")
    # the kind of CPU: another instruction set rounds differently, so numbers are bit for bit only on the same
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["cpu_capability"]
    if pathlib.Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        assert env["cpu"] == (names[0] if names else env["cpu"])
    git = env["git"]
    if git:                                             # a git checkout (not a wheel install)
        assert len(git["commit"]) == 40 and isinstance(git["dirty"], bool)
    zoo = Zoo.create(tmp_path / "z", kind="toy", builder="tests", params={})
    assert Zoo.open(zoo.path).manifest["environment"]["packages"] == env["packages"]
    import json

    data = json.loads(save_results(tmp_path, "07_x", {"a": 1.0}).read_text())
    assert data["environment"]["packages"] == env["packages"] and data["a"] == 1.0
