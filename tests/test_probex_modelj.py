"""The Model-J path on small files written here in the real layout (HF cache folders, HF key names,
`dataset_chosen_targets` metadata), including one randomly initialised full-size ViT-B/16."""
import os

import pytest
import torch
from safetensors.torch import save_file

from weightspace.downloads import LOCK_NAME, DownloadError, Lock, record_folder
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
    record_folder(tmp_path)
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
    record_folder(tmp_path)
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
    assert Lock(tmp_path).get(out.name)["source"].startswith("extract:")      # extract locked what it wrote
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
    record_folder(tmp_path)
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
    with pytest.warns(UserWarning, match="verify='none'"):   # the lock is tested on small files below
        sub = ModelJSubset(tmp_path, "SupViT", verify="none")
    X, Y = sub.split(59, "train")
    assert X.shape == (2, 768, 768) and Y.shape == (2, 100)
    torch.manual_seed(0)
    net = ProbeX(768, 768, 128, 128, 128, 100)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(X), Y)
    loss.backward()
    assert torch.isfinite(loss) and net.probes.weight.grad.abs().sum() > 0


def _modelj_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("download_modelj", os.path.join(
        os.path.dirname(__file__), "..", "data_scripts", "download_modelj.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_download_script_pins_checks_and_resumes(tmp_path, monkeypatch, capsys):
    """The download script writes the layout ModelJSubset reads, at pinned commits with checked hashes,
    and skips models already present without any network call."""
    import hashlib
    from pathlib import Path
    from types import SimpleNamespace

    import huggingface_hub

    from weightspace.downloads import Lock
    from weightspace.zoo.format import safetensors_bytes

    mod = _modelj_script()
    monkeypatch.setattr(mod.time, "sleep", lambda s: None)
    shapes = hf_vit_shapes(hidden=8, mlp=16, patch=16, image=32)
    ids = {split: [f"ProbeX/{split}_{i}" for i in range(2)] for split in ("train", "val", "test")}
    files = {r: safetensors_bytes(_random(shapes, k), {"dataset_chosen_targets": "['apple']"})
             for k, r in enumerate(r for split_ids in ids.values() for r in split_ids)}
    commit = {r: f"{k + 1:040x}" for k, r in enumerate(files)}
    calls, corrupt = [], set()

    class Api:
        def dataset_info(self, repo_id):
            calls.append(("dataset_info", repo_id))
            return SimpleNamespace(sha="d" * 40)

        def model_info(self, repo_id, files_metadata=False):
            calls.append(("model_info", repo_id))
            return SimpleNamespace(sha=commit[repo_id], siblings=[SimpleNamespace(
                rfilename="model.safetensors", blob_id="x", lfs={"sha256": hashlib.sha256(files[repo_id]).hexdigest()})])

    def list_models(subset, split, revision):
        calls.append(("list", split, revision))
        return ids[split]

    def snapshot_download(repo_id, revision, cache_dir, force_download=False, **kw):
        calls.append(("snapshot", repo_id, revision, force_download))
        snap = Path(cache_dir) / repo_folder(repo_id) / "snapshots" / revision
        snap.mkdir(parents=True, exist_ok=True)          # no refs/main: the revision is a commit
        data = files[repo_id] if repo_id not in corrupt else files[repo_id][:-1] + b"\x01"
        (snap / "model.safetensors").write_bytes(data)
        return str(snap)

    monkeypatch.setattr(mod, "list_models", list_models)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    corrupt.add("ProbeX/val_1")
    first = mod.download("SupViT", tmp_path)
    assert first["downloaded"] == 5 and first["present"] == 0
    assert first["failed"][0][0] == "ProbeX/val_1" and "was published" in first["failed"][0][1]
    assert [c for c in calls if c[0] == "list"] == [("list", s, "d" * 40) for s in ("train", "val", "test")]
    assert [c for c in calls if c[0] == "dataset_info"] == [("dataset_info", "ProbeX/Model-J")]
    assert {c[2] for c in calls if c[0] == "snapshot" and c[1] == "ProbeX/test_0"} == {commit["ProbeX/test_0"]}
    lock = Lock(tmp_path)
    assert not lock.find("SupViT/val/models--ProbeX--val_1/")
    rel = f"SupViT/train/models--ProbeX--train_0/snapshots/{commit['ProbeX/train_0']}/model.safetensors"
    assert lock.get(rel)["sha256"] == hashlib.sha256(files["ProbeX/train_0"]).hexdigest()
    assert lock.get("SupViT/val/models.txt")["revision"] == "d" * 40

    corrupt.clear()
    calls.clear()
    again = mod.download("SupViT", tmp_path)
    assert again["downloaded"] == 1 and again["present"] == 5 and again["failed"] == []
    assert {c[0] for c in calls} == {"model_info", "snapshot"} and {c[1] for c in calls} == {"ProbeX/val_1"}
    calls.clear()
    third = mod.download("SupViT", tmp_path)
    assert third["present"] == 6 and calls == []                    # no listing, no metadata, no download
    sub = ModelJSubset(tmp_path, "SupViT")
    assert len(sub) == 6 and not sub.incomplete

    f = tmp_path / rel
    f.write_bytes(f.read_bytes()[:-4])                              # changed on disk: re-downloaded
    fourth = mod.download("SupViT", tmp_path)
    assert fourth["downloaded"] == 1 and calls == [("snapshot", "ProbeX/train_0", commit["ProbeX/train_0"], True)]
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01                                                # same size: reported by --verify
    f.write_bytes(bytes(data))
    assert mod.main(["--root", str(tmp_path), "--verify"]) == 1
    assert f"{rel}: sha256" in capsys.readouterr().err


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_only_locked_files_are_served_each_hashed_once(small_vit_subset, monkeypatch):
    """Every file must be in the lock and match it; each is hashed once across labels and layer reads."""
    import weightspace.downloads as dl

    root = small_vit_subset
    hashed = []
    real = dl.sha256_file
    monkeypatch.setattr(dl, "sha256_file", lambda p: hashed.append(os.path.basename(os.path.dirname(
        os.path.dirname(os.path.dirname(p))))) or real(p))
    sub = ModelJSubset(root, "SupViT")
    assert hashed == ["models--ProbeX--Model-J__SupViT__train_0"]        # the header the layer list comes from
    X, Y = sub.split(59, "train")
    assert X.shape == (4, 16, 16) and Y.shape == (4, 100)
    sub.labels("train")
    sub.layer(2, "train")
    assert sorted(hashed) == [f"models--ProbeX--Model-J__SupViT__train_{i}" for i in range(4)]
    sub.labels("val")
    assert len(hashed) == 6

    snap = next((root / "SupViT" / "test").glob("models--*/snapshots/*/model.safetensors"))
    _flip_last_byte(snap)                                                # same size: only the hash sees it
    with pytest.raises(DownloadError, match=rf"{snap}: sha256 [0-9a-f]{{64}}, the lock says [0-9a-f]{{64}}"):
        sub.labels("test")
    with pytest.raises(DownloadError, match=rf"{snap}: sha256"):
        ModelJSubset(root, "SupViT").layer(59, "test")

    first = next((root / "SupViT" / "train").glob("models--*/snapshots/*/model.safetensors"))
    st = first.stat()
    _flip_last_byte(first)                                               # changed after it was hashed
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DownloadError, match=rf"{first}: sha256"):
        sub.layer(59, "train")
    first.write_bytes(first.read_bytes() + b"\0")
    with pytest.raises(DownloadError, match=rf"{first}: size {st.st_size + 1} bytes, the lock says {st.st_size}"):
        ModelJSubset(root, "SupViT")


def test_unlocked_files_are_refused_unless_verify_none(small_vit_subset):
    import warnings

    root = small_vit_subset
    shapes = hf_vit_shapes(hidden=16, mlp=32, patch=16, image=32)
    extra = _write_model(root / "SupViT" / "val", "ProbeX/extra", _random(shapes, 7), ["apple"])
    with pytest.raises(DownloadError, match=rf"{extra}: not in the lock file {root / LOCK_NAME}"):
        ModelJSubset(root, "SupViT")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sub = ModelJSubset(root, "SupViT", verify="none")
        assert sub.labels("val").shape == (3, 100) and sub.layer(59, "val").shape == (3, 16, 16)
    assert len(caught) == 1 and "verify='none'" in str(caught[0].message)
    assert "not verified" in str(caught[0].message) and str(root) in str(caught[0].message)
    (root / LOCK_NAME).unlink()
    with pytest.raises(DownloadError) as e:
        ModelJSubset(root, "SupViT")
    msg = str(e.value)
    assert msg.startswith(f"{root}: no {LOCK_NAME}") and "download_modelj.py --subset SupViT" in msg
    assert f"python -m weightspace lock {root}" in msg and "verify='none'" in msg
    with pytest.raises(ValueError, match="verify='sha'"):
        ModelJSubset(root, "SupViT", verify="sha")


def test_hf_cache_symlinks_are_locked_by_their_snapshot_path(tmp_path):
    """huggingface_hub keeps the bytes in blobs/ and links snapshots/<rev>/model.safetensors to them; the
    download script locks the snapshot path, and that is what the reader checks."""
    shapes = hf_vit_shapes(hidden=8, mlp=16, patch=16, image=32)
    snap = _write_model(tmp_path / "MAE" / "train", "ProbeX/m", _random(shapes, 3), ["worm"])
    blob = snap.parents[2] / "blobs" / "abc123"
    blob.parent.mkdir()
    snap.rename(blob)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    rel = snap.relative_to(tmp_path).as_posix()
    Lock(tmp_path).record(rel, source="hf:ProbeX/m/model.safetensors", revision="0123abcd")
    sub = ModelJSubset(tmp_path, "MAE")
    assert sub.labels("train")[0, 99] == 1 and sub.layer(64, "train").shape == (1, 8, 8)
    _flip_last_byte(blob)
    with pytest.raises(DownloadError, match=rf"{snap}: sha256"):
        ModelJSubset(tmp_path, "MAE")


def test_an_extracted_layer_is_served_only_as_it_was_written(small_vit_subset, tmp_path):
    sub = ModelJSubset(small_vit_subset, "SupViT")
    out = sub.extract(59, tmp_path / "cache" / "supvit_59.safetensors")
    assert set(load_extracted(out)) == {"train", "val", "test"}
    data = bytearray(out.read_bytes())
    data[-3] ^= 0xFF                                      # one weight changed, size and header intact
    out.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="sha256"):
        load_extracted(out)
    with pytest.warns(UserWarning, match="verify='none'"):
        assert set(load_extracted(out, verify="none")) == {"train", "val", "test"}
    stray = tmp_path / "elsewhere" / "x.safetensors"
    stray.parent.mkdir()
    stray.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="not in the lock file"):
        load_extracted(stray)
