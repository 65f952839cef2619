"""The Model-J path on small files written here in the real layout (HF cache folders, HF key names,
`dataset_chosen_targets` metadata), including one randomly initialised full-size ViT-B/16."""
import os

import pytest
import torch
from safetensors.torch import save_file

from weightspace.probex import ProbeX
from weightspace.probex.modelj import (
    CIFAR100_CLASSES,
    SUBSETS,
    ModelJSubset,
    hf_vit_shapes,
    layer_names,
    load_extracted,
    parse_targets,
    repo_folder,
)
from weightspace.zoo import ZooError


def _write_model(split_dir, repo_id, tensors, targets, revision="0123abcd"):
    """One model as huggingface_hub's snapshot_download leaves it in a cache folder."""
    repo = split_dir / repo_folder(repo_id)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    meta = {"dataset_chosen_targets": str(targets)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(snap / "model.safetensors"), metadata=meta)
    return snap / "model.safetensors"


def _random(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: 0.02 * torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.fixture
def small_vit_subset(tmp_path):
    shapes = hf_vit_shapes(hidden=16, mlp=32, patch=16, image=32)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for i in range(n):
            classes = sorted(torch.randperm(100, generator=g)[:50].tolist())
            names = [CIFAR100_CLASSES[c] for c in classes]
            _write_model(tmp_path / "SupViT" / split, f"ProbeX/Model-J__SupViT__{split}_{i}",
                         _random(shapes, hash((split, i)) % 1000), names)
    # an interrupted download: a cache folder without refs/main
    (tmp_path / "SupViT" / "train" / repo_folder("ProbeX/half-done") / "blobs").mkdir(parents=True)
    return tmp_path


def test_layer_index_lists_match_the_paper_code():
    names = layer_names(hf_vit_shapes())
    assert len(names) == 74
    assert names[0] == "classifier.weight" and names[1] == "vit.embeddings.position_embeddings"
    assert names[59] == "vit.encoder.layer.7.attention.output.dense.weight"      # SupViT / DINO best
    assert names[64] == "vit.encoder.layer.8.attention.attention.value.weight"   # MAE best
    assert names[2:8] == [f"vit.encoder.layer.0.{k}.weight" for k in (
        "attention.attention.key", "attention.attention.query", "attention.attention.value",
        "attention.output.dense", "intermediate.dense", "output.dense")]
    assert SUBSETS["MAE"]["best_layer"] == 64


def test_resnet_layers_and_conv_orientation(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    net = ResNetForImageClassification(ResNetConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128],
                                                    embedding_size=8, layer_type="bottleneck", num_labels=100))
    sd = net.state_dict()
    names = layer_names({k: v.shape for k, v in sd.items()}, "resnet")
    assert names[0] == "classifier.1.weight" and names[1] == "resnet.embedder.embedder.convolution.weight"
    assert len(names) == 1 + 1 + 4 * 3 + 4            # classifier, stem, 3 convs per block, 4 shortcuts
    for split in ("train", "val"):
        _write_model(tmp_path / "ResNet" / split, f"ProbeX/r_{split}", sd, list(range(50)))
    sub = ModelJSubset(tmp_path, "ResNet")
    stem = sd["resnet.embedder.embedder.convolution.weight"]                      # [8, 3, 7, 7]
    X = sub.layer("resnet.embedder.embedder.convolution.weight", "train")
    assert X.shape == (1, 3 * 7 * 7, 8) and torch.equal(X[0].flatten(), stem.flatten())
    k1 = [n for n in names if "layer.0.convolution" in n][0]                    # a 1x1 conv keeps [C_out, C_in]
    assert sub.layer(k1, "train").shape[1:] == sd[k1].shape[:2]


def test_small_vit_subset_end_to_end(small_vit_subset, tmp_path):
    sub = ModelJSubset(small_vit_subset, "SupViT")
    assert len(sub) == 8 and len(sub.incomplete) == 1 and len(sub.layers) == 74
    X, Y = sub.split(59, "train")
    assert X.shape == (4, 16, 16) and Y.shape == (4, 100) and (Y.sum(1) == 50).all()
    out = sub.extract(59, tmp_path / "supvit_59.safetensors")
    data = load_extracted(out)
    assert torch.equal(data["train"][0], X) and data["test"][0].shape == (2, 16, 16)
    from weightspace.probex import fit

    f = fit("probex", data["train"], data["val"], data["test"], epochs=2, eval_every=1, device="cpu")
    X_test, Y_test = data["test"]
    by_hand = ((f.predict(X_test) > 0) == (Y_test > 0.5)).float().mean()          # the kept model, re-scored
    assert f.test_acc == pytest.approx(float(by_hand)) and f.val_acc == max(h[2] for h in f.history)
    with pytest.raises(ZooError, match="close names"):
        sub.layer("vit.encoder.layer.7.attention.output.dens.weight", "train")
    with pytest.raises(ZooError, match="out of range"):
        sub.layer(74, "train")
    with pytest.raises(ZooError, match="no such Model-J subset folder"):
        ModelJSubset(small_vit_subset, "MAE")


def test_labels_are_parsed_as_literals_never_evaluated(tmp_path):
    assert parse_targets("['apple', 'worm']") == [0, 99]
    assert parse_targets("[3, 1, 3]") == [1, 3]
    with pytest.raises(ZooError, match="not a Python literal"):
        parse_targets("__import__('os').system('touch /tmp/pwned')")
    with pytest.raises(ZooError, match="unknown class name 'dragon'"):
        parse_targets("['dragon']")
    shapes = hf_vit_shapes(hidden=8, mlp=16, patch=16, image=32)
    path = _write_model(tmp_path / "SupViT" / "train", "ProbeX/m", _random(shapes, 0), ["apple"])
    save_file(_random(shapes, 0), str(path), metadata={"other": "x"})          # label missing
    with pytest.raises(ZooError, match="no 'dataset_chosen_targets'"):
        ModelJSubset(tmp_path, "SupViT").labels("train")
    with pytest.raises(ValueError, match="the val split is empty"):
        ModelJSubset(tmp_path, "SupViT").labels("val")


def test_full_size_vit_b16_layer_extraction_and_probex_step(tmp_path):
    """A randomly initialised ViT-B/16 (86M parameters, Model-J's key names) on CPU: extract layer 59
    (768x768) and run one ProbeX forward/backward at the paper's sizes."""
    shapes = hf_vit_shapes()
    sd = _random(shapes, 0)
    assert sum(v.numel() for v in sd.values()) == pytest.approx(85.9e6, rel=0.01)
    split = tmp_path / "SupViT" / "train"
    first = _write_model(split, "ProbeX/vitb_0", sd, list(range(50)))
    del sd
    second = split / repo_folder("ProbeX/vitb_1")                  # a second model: same bytes, hard-linked
    (second / "refs").mkdir(parents=True)
    (second / "refs" / "main").write_text("0123abcd")
    (second / "snapshots" / "0123abcd").mkdir(parents=True)
    os.link(first, second / "snapshots" / "0123abcd" / "model.safetensors")
    sub = ModelJSubset(tmp_path, "SupViT")
    X, Y = sub.split(59, "train")
    assert X.shape == (2, 768, 768) and Y.shape == (2, 100)
    torch.manual_seed(0)
    net = ProbeX(768, 768, 128, 128, 128, 100)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(X), Y)
    loss.backward()
    assert torch.isfinite(loss) and net.probes.weight.grad.abs().sum() > 0


def test_download_script_resumes(tmp_path, monkeypatch):
    """The download script writes the layout ModelJSubset reads and skips models already present."""
    import importlib.util

    import huggingface_hub

    spec = importlib.util.spec_from_file_location("download_modelj", os.path.join(
        os.path.dirname(__file__), "..", "data_scripts", "download_modelj.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    shapes = hf_vit_shapes(hidden=8, mlp=16, patch=16, image=32)
    calls = []

    def fake_snapshot_download(repo_id, cache_dir, **kw):
        calls.append(repo_id)
        _write_model(__import__("pathlib").Path(cache_dir), repo_id, _random(shapes, len(calls)), ["apple"])

    monkeypatch.setattr(mod, "list_models", lambda subset, split: [f"ProbeX/{split}_{i}" for i in range(2)])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    first = mod.download("SupViT", tmp_path)
    assert first["downloaded"] == 6 and first["present"] == 0
    again = mod.download("SupViT", tmp_path)
    assert again["downloaded"] == 0 and again["present"] == 6 and len(calls) == 6
    assert len(ModelJSubset(tmp_path, "SupViT")) == 6
