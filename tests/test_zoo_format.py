import json
import pickle
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import toy_state_dict

from weightspace.zoo import LazyStateDict, Zoo, ZooError, read_safetensors
from weightspace.zoo.format import MANIFEST, TABLE, sha256_file, write_safetensors


def test_round_trip(toy_zoo):
    zoo = Zoo.open(toy_zoo.path, kind="toy")
    assert zoo.ids == ["root", "a", "b", "a1", "b1"]
    table = pd.read_json(zoo.path / TABLE, lines=True)          # readable by plain pandas
    assert list(table.model_id) == zoo.ids
    for col in ("model_id", "parent_id", "tree_id", "depth", "split", "file", "sha256"):
        assert col in table
    assert zoo.row("a1")["classes"] == [0] and zoo.row("a1")["parent_id"] == "a"
    sd = zoo.load("b")
    ref = toy_state_dict(2)
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert zoo.select(depth=1) == ["a", "b"]
    assert zoo.manifest["format"] == "weightspace-zoo" and zoo.manifest["kind"] == "toy"
    lazy = zoo.lazy("a")
    assert isinstance(lazy, LazyStateDict) and torch.equal(lazy["blocks.0.mlp.fc1.weight"], toy_state_dict(1)["blocks.0.mlp.fc1.weight"])
    meta = json.loads(lazy.metadata["row"])                      # each file carries its own row
    assert meta["model_id"] == "a" and meta["parent_id"] == "root"


def test_layer_stack_and_cache(toy_zoo):
    name = "blocks.0.attn.proj.weight"
    X = toy_zoo.layer(name)
    assert X.shape == (5, 6, 6)
    for i, mid in enumerate(toy_zoo.ids):
        assert torch.equal(X[i], toy_state_dict(i)[name])
    cached = list((toy_zoo.path / ".cache" / "layers").glob("*.safetensors"))
    assert len(cached) == 1
    assert torch.equal(toy_zoo.layer(name), X)
    sub = toy_zoo.layer(name, ids=["b1", "a"])
    assert torch.equal(sub, X[[4, 1]])
    # a changed model changes the cache key: the stale stack is never returned
    toy_zoo.add("a", toy_state_dict(9), parent_id="root", depth=1, replace=True)
    assert torch.equal(toy_zoo.layer(name)[1], toy_state_dict(9)[name])


def test_verify_and_sha_mismatch(toy_zoo):
    assert toy_zoo.verify() == []
    path = toy_zoo.path / toy_zoo.row("a")["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF                                             # flip bits in the last weight
    path.write_bytes(bytes(data))
    with pytest.raises(ZooError, match=r"a\.safetensors: sha256 mismatch"):
        toy_zoo.verify()
    with pytest.raises(ZooError, match="sha256 mismatch"):
        toy_zoo.load("a")
    assert toy_zoo.verify(raise_errors=False)[0].startswith(str(path))
    assert toy_zoo.load("b")                                     # the rest is untouched


def test_truncated_and_garbage_files(toy_zoo):
    path = toy_zoo.path / toy_zoo.row("b")["file"]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ZooError, match=r"b\.safetensors: .*truncated or corrupted"):
        toy_zoo.load("b", verify=False)
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(ZooError, match=r"b\.safetensors"):
        read_safetensors(path)
    with pytest.raises(ZooError, match=r"b\.safetensors"):
        toy_zoo.layer("blocks.0.attn.proj.weight", cache=False)


def test_missing_file(toy_zoo):
    (toy_zoo.path / toy_zoo.row("a1")["file"]).unlink()
    with pytest.raises(ZooError, match=r"a1\.safetensors: model file is missing"):
        toy_zoo.load("a1")
    with pytest.raises(ZooError, match="missing"):
        toy_zoo.verify()


def test_never_unpickles(toy_zoo, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = toy_zoo.path / toy_zoo.row("a")["file"]
    path.write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(ZooError):
        toy_zoo.load("a", verify=False)
    assert not marker.exists()


def test_wrong_kind_version_and_not_a_zoo(toy_zoo, tmp_path):
    with pytest.raises(ZooError, match="of kind 'toy', expected 'vit-model-trees'"):
        Zoo.open(toy_zoo.path, kind="vit-model-trees")
    m = json.loads((toy_zoo.path / MANIFEST).read_text())
    m["version"] = 99
    (toy_zoo.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ZooError, match="format version 99"):
        Zoo.open(toy_zoo.path)
    m["format"] = "something-else"
    (toy_zoo.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ZooError, match="format is 'something-else'"):
        Zoo.open(toy_zoo.path)
    (toy_zoo.path / MANIFEST).write_text("{not json")
    with pytest.raises(ZooError, match="zoo.json: not valid JSON"):
        Zoo.open(toy_zoo.path)
    with pytest.raises(ZooError, match="no zoo manifest"):
        Zoo.open(tmp_path / "nowhere")
    other = tmp_path / "my-photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ZooError, match="not a weightspace zoo"):
        Zoo.create(other, kind="toy", builder="t", params={})
    assert (other / "cat.jpg").read_bytes() == b"meow"


def test_resume_with_other_parameters_is_refused(toy_zoo):
    assert len(Zoo.create(toy_zoo.path, kind="toy", builder="tests", params={"n": 5})) == 5
    with pytest.raises(ZooError, match=r"other parameters \(differ: \['n'\]\)"):
        Zoo.create(toy_zoo.path, kind="toy", builder="tests", params={"n": 6})


def test_duplicate_ids_and_missing_parent(toy_zoo):
    with pytest.raises(ZooError, match="duplicate model id 'a'"):
        toy_zoo.add("a", toy_state_dict(7), parent_id="root", depth=1)
    with pytest.raises(ZooError, match="names parent 'ghost', which is not in the zoo"):
        toy_zoo.add("c", toy_state_dict(7), parent_id="ghost", depth=1)
    with pytest.raises(ZooError, match="not a plain file name"):
        toy_zoo.add("../evil", toy_state_dict(7))
    assert "c" not in Zoo.open(toy_zoo.path)
    # a table edited by hand into a bad state is caught on open, naming the table
    lines = (toy_zoo.path / TABLE).read_text().splitlines()
    (toy_zoo.path / TABLE).write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(ZooError, match=r"models.jsonl: duplicate model id 'a'"):
        Zoo.open(toy_zoo.path)
    (toy_zoo.path / TABLE).write_text("\n".join(lines[:1] + lines[3:]) + "\n")   # drop a and b
    with pytest.raises(ZooError, match="model 'a1' names parent 'a'"):
        Zoo.open(toy_zoo.path)
    (toy_zoo.path / TABLE).write_text(lines[0] + "\n{oops\n")
    with pytest.raises(ZooError, match="models.jsonl, line 2: not valid JSON"):
        Zoo.open(toy_zoo.path)


def test_layer_errors_name_the_problem(toy_zoo):
    with pytest.raises(ZooError, match=r"no tensor named 'blocks.0.attn.prj.weight'; close names: \['blocks.0.attn.proj.weight'"):
        toy_zoo.layer("blocks.0.attn.prj.weight")
    toy_zoo.add("odd", {**toy_state_dict(5), "blocks.0.attn.proj.weight": torch.zeros(4, 4)}, parent_id="root")
    with pytest.raises(ZooError, match=r"odd\.safetensors: layer 'blocks.0.attn.proj.weight' has shape \(4, 4\)"):
        toy_zoo.layer("blocks.0.attn.proj.weight")


def test_assets(toy_zoo):
    toy_zoo.add_asset("base", {"w": torch.ones(3)})
    again = Zoo.open(toy_zoo.path)
    assert torch.equal(again.load_asset("base")["w"], torch.ones(3))
    with pytest.raises(ZooError, match="no asset 'unet'"):
        again.load_asset("unet")


def test_quarantine_moves_never_deletes(toy_zoo):
    data = (toy_zoo.path / toy_zoo.row("b1")["file"]).read_bytes()
    moved = toy_zoo.quarantine("b1")
    assert moved.read_bytes() == data and "b1" not in Zoo.open(toy_zoo.path)


def test_safetensors_writer_round_trips_every_dtype_and_is_canonical(tmp_path):
    from safetensors.torch import load_file

    from weightspace.zoo.format import safetensors_bytes, write_safetensors

    tensors = {"b": torch.randn(3, 2), "a": torch.arange(5), "h": torch.randn(4).half(),
               "bf": torch.randn(2, 2).bfloat16(), "m": torch.tensor([True, False]), "s": torch.tensor(2.5),
               "e": torch.zeros(0, 3), "i8": torch.tensor([-1, 2], dtype=torch.int8)}
    write_safetensors(tmp_path / "t.safetensors", tensors, {"z": "1", "a": "2"})
    back = load_file(tmp_path / "t.safetensors")                 # read by the safetensors library
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    assert safetensors_bytes(tensors, {"a": "2", "z": "1"}) == safetensors_bytes(dict(reversed(tensors.items())), {"z": "1", "a": "2"})


def test_format_holds_lora_adapters_over_a_base_and_per_epoch_checkpoints(tmp_path):
    """What the SD-LoRA zoo and SANE's CNN zoo need: a shared base asset, and several checkpoints per run."""
    zoo = Zoo.create(tmp_path / "lora", kind="toy-lora", builder="tests", params={})
    zoo.add_asset("base_unet", {"down.attn1.to_q.weight": torch.randn(8, 8)})
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
    zoo.add("lora-0", {key: torch.randn(2, 8), key.replace("lora_A", "lora_B"): torch.zeros(8, 2)},
            depth=1, split="train", base="base_unet", rank=2, label="a mirrored seven")
    again = Zoo.open(tmp_path / "lora")
    assert again.load_asset("base_unet")["down.attn1.to_q.weight"].shape == (8, 8)
    assert again.row("lora-0")["base"] == "base_unet" and key in again.load("lora-0")

    runs = Zoo.create(tmp_path / "cnn", kind="toy-epochs", builder="tests", params={})
    for run in range(2):
        for epoch in range(3):
            runs.add(f"run{run}-ep{epoch:02d}", toy_state_dict(10 * run + epoch), tree_id=run, depth=epoch,
                     parent_id=f"run{run}-ep{epoch - 1:02d}" if epoch else None, run_id=run, epoch=epoch)
    table = Zoo.open(tmp_path / "cnn").table
    assert table.groupby("run_id").epoch.max().tolist() == [2, 2]
    assert runs.layer("blocks.0.attn.proj.weight", ids=runs.select(epoch=2)).shape == (2, 6, 6)


def test_a_zoo_of_the_old_format_says_how_to_rebuild(toy_zoo):
    m = json.loads((toy_zoo.path / MANIFEST).read_text())
    m.update(version=1, command="build_model_trees('zoos/x', **params)")
    (toy_zoo.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ZooError, match=r"version 1, but this weightspace reads version 2.*Rebuild it: delete .*"
                                       r"It was made by: build_model_trees"):
        Zoo.open(toy_zoo.path)


def test_model_files_are_plain_hugging_face_safetensors(toy_zoo):
    """The header says "format": "pt" (what huggingface_hub and transformers check); the zoo tag has its own key."""
    from huggingface_hub import load_state_dict_from_file

    from weightspace.zoo.format import ZOO_TAG, read_metadata

    path = toy_zoo.path / toy_zoo.row("a1")["file"]
    meta = read_metadata(path)
    assert meta["format"] == "pt" and meta[ZOO_TAG] == "weightspace-zoo/2"
    assert json.loads(meta["row"])["parent_id"] == "a"
    sd = load_state_dict_from_file(str(path))
    assert torch.equal(sd["blocks.0.attn.proj.weight"], toy_zoo.load("a1")["blocks.0.attn.proj.weight"])


def test_split_means_the_data_split_only(toy_zoo):
    with pytest.raises(ZooError, match="has split 'lora-v'; a split is one of"):
        toy_zoo.add("c", toy_state_dict(9), parent_id="root", depth=1, split="lora-v")
    toy_zoo.add("c", toy_state_dict(9), parent_id="root", depth=1, split=None, variant="lora-v")
    toy_zoo.add("d", toy_state_dict(10), parent_id="root", depth=1, split=None, variant="ft")
    assert toy_zoo.variants == ["ft", "lora-v"]
    assert toy_zoo.variant("lora-v") == ["root", "a", "b", "a1", "b1", "c"]     # its own + the shared (null)
    with pytest.raises(ZooError, match="no variant 'lora-f'"):
        toy_zoo.variant("lora-f")


def test_the_label_contract(tmp_path):
    names = ["a plain zero", "a plain one", "a mirrored zero"]
    zoo = Zoo.create(tmp_path / "z", kind="toy", builder="tests", params={},
                     labels={"column": "classes", "class_names": names, "per_model": "one"})
    zoo.add("r", toy_state_dict(0), split=None)
    zoo.add("x", toy_state_dict(1), parent_id="r", depth=1, classes=[2])
    zoo.add("y", toy_state_dict(2), parent_id="r", depth=1, classes=[0], split="val")
    again = Zoo.open(zoo.path)
    assert again.class_names == names and again.labelled() == ["x", "y"]
    assert again.multi_hot().tolist() == [[0, 0, 1], [1, 0, 0]]
    assert again.class_index().tolist() == [2, 0]
    assert again.parents() == {"r": None, "x": "r", "y": "r"}
    with pytest.raises(ZooError, match="model 'r' has no 'classes': it is not labelled"):
        again.multi_hot(["r"])
    for bad in ([3], [0.5], "0", [True]):
        with pytest.raises(ZooError, match="expected a list of class indices in 0..2"):
            zoo.add("bad", toy_state_dict(3), parent_id="r", depth=1, classes=bad)
    zoo.add("two", toy_state_dict(4), parent_id="r", depth=1, classes=[0, 1])
    with pytest.raises(ZooError, match="model 'two' has 2 classes, not one"):
        zoo.class_index()
    with pytest.raises(ZooError, match="class names repeat"):
        Zoo.create(tmp_path / "w", kind="toy", builder="t", params={}, labels={"column": "c", "class_names": ["a", "a"]})
    with pytest.raises(ZooError, match="records no labels"):
        Zoo.create(tmp_path / "v", kind="toy", builder="t", params={}).class_names
    with pytest.raises(ZooError, match="records no architecture"):
        zoo.model("x")


def test_table_and_manifest_values_are_checked_on_open(toy_zoo, tmp_path):
    """Bad values found by hand once gave tracebacks or were used as given (paths out of the zoo)."""
    from weightspace.zoo.format import TABLE

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    good = (toy_zoo.path / TABLE).read_text()

    def with_row(**change):
        rows = [json.loads(line) for line in good.splitlines()]
        rows[1].update(change)
        (toy_zoo.path / TABLE).write_text("".join(json.dumps(r) + "\n" for r in rows))

    for change, message in [
        (dict(file="../../victim.txt"), "is not a relative path inside the zoo"),
        (dict(file=str(victim)), "is not a relative path inside the zoo"),
        (dict(file="models/../../victim.txt"), "is not a relative path inside the zoo"),
        (dict(sha256=None), "not 64 hex digits"),
        (dict(model_id="a\n"), "is not a plain file name"),
        (dict(depth="1"), "depth '1' of the wrong type"),
        (dict(parent_id=3), "parent_id 3, not a model id"),
    ]:
        with_row(**change)
        with pytest.raises(ZooError, match=message):
            Zoo.open(toy_zoo.path)
    (toy_zoo.path / "models" / "link.safetensors").symlink_to(victim)
    with_row(file="models/link.safetensors")
    with pytest.raises(ZooError, match="leads outside"):
        Zoo.open(toy_zoo.path)
    assert victim.read_text() == "precious"
    (toy_zoo.path / TABLE).write_text(good)
    m = json.loads((toy_zoo.path / MANIFEST).read_text())
    for bad, message in [([1, 2], "should hold a JSON object"), ({**m, "kind": None}, "'kind' is missing"),
                         ({k: v for k, v in m.items() if k != "params"}, "'params' is missing"),
                         ({**m, "assets": {"base": {"file": "/etc/passwd", "sha256": "0" * 64}}}, "not a relative path")]:
        (toy_zoo.path / MANIFEST).write_text(json.dumps(bad))
        with pytest.raises(ZooError, match=message):
            Zoo.open(toy_zoo.path)
    with pytest.raises(ZooError, match="is not a plain file name"):
        from weightspace.zoo import write_model

        write_model(toy_zoo.path, "x\n", {"w": torch.zeros(1)}, {})


# ------------------------------------------------------------------------------------- LoRA layers

def _lora_zoo(path, layout, factors_of):
    zoo = Zoo.create(path, kind="toy-lora", builder="tests", params={}, lora=layout)
    zoo.add("base", {"w": torch.zeros(2)}, split=None)
    for i, mid in enumerate(["a", "b", "c"]):
        zoo.add(mid, factors_of(i), parent_id="base", depth=1)
    return zoo


def _factors(i, up="lora_factors.{}.U", down="lora_factors.{}.V", dtype=torch.float32):
    g = torch.Generator().manual_seed(i)
    out = {}
    for stem, (d_out, r, d_in) in {"blocks.1.attn.qkv": (6, 2, 3), "blocks.0.attn.qkv": (6, 1 + i, 3),
                                   "blocks.0.mlp.fc1": (5, 2, 4)}.items():
        out[up.format(stem)] = torch.randn(d_out, r, generator=g).to(dtype)
        out[down.format(stem)] = torch.randn(r, d_in, generator=g).to(dtype)
    return out


def test_lora_layer_is_up_times_down_by_hand(tmp_path):
    from weightspace.zoo.format import LORA_LAYOUT

    zoo = _lora_zoo(tmp_path / "z", LORA_LAYOUT, _factors)
    assert Zoo.open(zoo.path).manifest["lora"] == {"up": "lora_factors.{}.U", "down": "lora_factors.{}.V"}
    assert zoo.lora_modules() == ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv"]
    X = zoo.lora_layer("blocks.0.attn.qkv", ["a", "b", "c"])
    assert X.dtype == torch.float32 and X.shape == (3, 6, 3)
    for n in range(3):
        f = _factors(n)
        U, V = f["lora_factors.blocks.0.attn.qkv.U"], f["lora_factors.blocks.0.attn.qkv.V"]   # rank 1 + n
        by_hand = torch.tensor([[sum(float(U[i, k]) * float(V[k, j]) for k in range(U.shape[1]))
                                 for j in range(3)] for i in range(6)])
        assert torch.allclose(X[n], by_hand, atol=1e-6)
        assert torch.linalg.matrix_rank(X[n]) == 1 + n
    assert len(list((zoo.path / ".cache" / "lora").glob("*.safetensors"))) == 1          # cached like Zoo.layer
    assert torch.equal(zoo.lora_layer("blocks.0.attn.qkv", ["a", "b", "c"]), X)
    assert torch.equal(zoo.lora_layer("blocks.0.attn.qkv", ["c", "a"]), X[[2, 0]])
    zoo.add("a", _factors(7), parent_id="base", depth=1, replace=True)                # a changed model: rebuilt
    f = _factors(7)
    assert torch.allclose(zoo.lora_layer("blocks.0.attn.qkv", ["a", "b", "c"])[0],
                          f["lora_factors.blocks.0.attn.qkv.U"] @ f["lora_factors.blocks.0.attn.qkv.V"])


def test_lora_layer_reads_diffusers_files(tmp_path):
    from weightspace.zoo.format import DIFFUSERS_LORA_LAYOUT

    stem = "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_q"
    layout = {"up": "unet.{}.lora.up.weight", "down": "unet.{}.lora.down.weight"}
    assert DIFFUSERS_LORA_LAYOUT == layout

    def files(i):
        g = torch.Generator().manual_seed(i)
        return {f"unet.{stem}.lora.up.weight": torch.randn(8, 4, generator=g).half(),
                f"unet.{stem}.lora.down.weight": torch.randn(4, 5, generator=g).half()}

    zoo = _lora_zoo(tmp_path / "sd", layout, files)
    assert zoo.lora_modules() == [stem]
    X = zoo.lora_layer(stem, ["b"], cache=False)
    f = files(1)
    up, down = f[f"unet.{stem}.lora.up.weight"].float(), f[f"unet.{stem}.lora.down.weight"].float()
    assert X.dtype == torch.float32 and torch.equal(X[0], up @ down)


def test_lora_layer_errors_name_the_file(tmp_path):
    from weightspace.zoo.format import LORA_LAYOUT

    zoo = _lora_zoo(tmp_path / "z", LORA_LAYOUT, _factors)
    with pytest.raises(ZooError, match=r"base\.safetensors: no tensor named 'lora_factors\.blocks\.0\.mlp\.fc1\.U'.*up"):
        zoo.lora_layer("blocks.0.mlp.fc1")                                   # the base has no adapter
    bad = _factors(1)
    del bad["lora_factors.blocks.0.mlp.fc1.V"]
    bad["lora_factors.blocks.1.attn.qkv.V"] = torch.randn(3, 3)            # rank 2 up, rank 3 down
    zoo.add("d", bad, parent_id="base", depth=1)
    with pytest.raises(ZooError, match=r"d\.safetensors: no tensor named 'lora_factors\.blocks\.0\.mlp\.fc1\.V'.*down"):
        zoo.lora_layer("blocks.0.mlp.fc1", ["a", "d"])
    with pytest.raises(ZooError, match=r"d\.safetensors: LoRA factors of 'blocks\.1\.attn\.qkv' do not chain: "
                                       r"up .* is \(6, 2\), down .* is \(3, 3\)"):
        zoo.lora_layer("blocks.1.attn.qkv", ["a", "d"])
    odd = _factors(2)
    odd["lora_factors.blocks.0.mlp.fc1.U"] = torch.randn(7, 2)
    zoo.add("e", odd, parent_id="base", depth=1)
    with pytest.raises(ZooError, match=r"e\.safetensors: layer 'blocks\.0\.mlp\.fc1' has shape \(7, 4\)"):
        zoo.lora_layer("blocks.0.mlp.fc1", ["a", "e"])


def test_lora_layout_entry_is_checked_and_added_on_resume(tmp_path):
    from weightspace.zoo.format import LORA_LAYOUT

    for bad in ({"up": "x.{}.U"}, {"up": "x.U", "down": "x.{}.V"}, {"up": "x.{}", "down": "x.{}"}):
        with pytest.raises(ZooError, match="LoRA layout"):
            Zoo.create(tmp_path / "bad", kind="t", builder="t", params={}, lora=bad)
    plain = Zoo.create(tmp_path / "old", kind="t", builder="t", params={"n": 1})
    assert "lora" not in plain.manifest and plain.lora_modules() == []
    with pytest.raises(ZooError, match="records no LoRA layout"):
        plain.lora_layer("blocks.0.attn.qkv")
    again = Zoo.create(tmp_path / "old", kind="t", builder="t", params={"n": 1}, lora=LORA_LAYOUT)   # same zoo
    assert Zoo.open(again.path).manifest["lora"] == LORA_LAYOUT
    with pytest.raises(ZooError, match="LoRA layout is"):
        Zoo.create(tmp_path / "old", kind="t", builder="t", params={"n": 1},
                   lora={"up": "unet.{}.lora.up.weight", "down": "unet.{}.lora.down.weight"})


def test_quarantine_never_overwrites_an_earlier_copy(toy_zoo, monkeypatch):
    """Two copies moved aside in the same clock tick keep both (a name from the time alone collided)."""
    import weightspace.zoo.format as fmt

    monkeypatch.setattr(fmt.time, "time", lambda: 1.0)
    monkeypatch.setattr(fmt.time, "time_ns", lambda: 1_000_000_000)
    path = toy_zoo.model_path("b1")
    copies = []
    for k in range(3):
        path.write_bytes(f"copy {k}".encode())
        copies.append(toy_zoo.quarantine("b1"))
    assert len(set(copies)) == 3
    assert [c.read_bytes() for c in copies] == [b"copy 0", b"copy 1", b"copy 2"]


def test_quarantined_parent_sets_its_descendants_aside(toy_zoo):
    """The table never names a missing parent: the descendants leave it with their parent, and come back
    when it is recorded again with the same bytes."""
    table = (toy_zoo.path / TABLE).read_text()
    a_bytes = (toy_zoo.path / toy_zoo.row("a")["file"]).read_bytes()
    a_row = toy_zoo.row("a")
    toy_zoo.quarantine("a")
    again = Zoo.open(toy_zoo.path)
    assert again.ids == ["root", "b", "b1"] and again.set_aside_ids == ["a1"]
    assert again.orphans() == []                            # a1 waits on the side list, not as an orphan
    assert again.readopt() == ([], [])                            # its parent is still missing
    again.model_path("a").write_bytes(a_bytes)                    # rebuilt, bit for bit
    again.record([a_row])
    assert again.readopt() == (["a1"], []) and again.set_aside_ids == []
    again.reorder(["root", "a", "b", "a1", "b1"])
    assert (toy_zoo.path / TABLE).read_text() == table


def test_set_aside_child_of_a_different_parent_is_moved_aside(toy_zoo):
    a1 = (toy_zoo.path / toy_zoo.row("a1")["file"]).read_bytes()
    toy_zoo.quarantine("a")
    toy_zoo.add("a", toy_state_dict(99), parent_id="root", depth=1, classes=[0, 2])   # other bytes
    assert toy_zoo.readopt() == ([], ["a1"])
    assert "a1" not in toy_zoo and not toy_zoo.model_path("a1").exists()
    assert [f.read_bytes() for f in (toy_zoo.path / ".quarantine").glob("a1.*")] == [a1]


def test_a_table_naming_a_missing_parent_says_how_to_repair(toy_zoo, capsys):
    from weightspace.zoo.cli import main

    rows = [json.loads(line) for line in (toy_zoo.path / TABLE).read_text().splitlines()]
    (toy_zoo.path / TABLE).write_text("".join(json.dumps(r) + "\n" for r in rows if r["model_id"] != "a"))
    with pytest.raises(ZooError, match=r"names parent 'a', which is not in the zoo \(1 row\(s\).*zoo repair"):
        Zoo.open(toy_zoo.path)
    assert main(["repair", str(toy_zoo.path)]) == 0
    assert "1 row(s) whose parent is missing set aside" in capsys.readouterr().out
    zoo = Zoo.open(toy_zoo.path)
    assert zoo.ids == ["root", "b", "b1"] and zoo.set_aside_ids == ["a1"]

# ------------------------------------------------------------------------- no silent wrong weights

def _flip16(path, tensor):
    """Flip 16 bytes inside `tensor`'s data in a safetensors file (the header stays valid)."""
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    start = 8 + n + json.loads(data[8:8 + n])[tensor]["data_offsets"][0]
    good = bytes(data)
    for i in range(start, start + 16):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return good


def test_layer_refuses_a_damaged_file_and_never_caches_it(toy_zoo):
    name = "blocks.0.attn.proj.weight"
    path = toy_zoo.path / toy_zoo.row("a")["file"]
    good = _flip16(path, name)
    with pytest.raises(ZooError, match=r"a\.safetensors: sha256 mismatch"):
        toy_zoo.layer(name)
    assert not list((toy_zoo.path / ".cache").rglob("*.safetensors"))        # nothing cached from bad bytes
    assert torch.isfinite(toy_zoo.layer(name, verify=False)).all()           # the opt-out still reads
    path.write_bytes(good)                                                   # the builder redoes the file
    reopened = Zoo.open(toy_zoo.path)
    assert reopened.verify() == []
    X = reopened.layer(name)
    assert torch.equal(X[1], toy_state_dict(1)[name])


def test_a_damaged_or_unchecked_cache_is_rebuilt_not_served(toy_zoo):
    name = "blocks.0.attn.proj.weight"
    X = toy_zoo.layer(name)
    (cpath,) = (toy_zoo.path / ".cache" / "layers").glob("*.safetensors")
    assert (cpath.parent / (cpath.name + ".sha256")).read_text().strip() == sha256_file(cpath)
    _flip16(cpath, "stack")
    assert torch.equal(Zoo.open(toy_zoo.path).layer(name), X)               # rebuilt from the model files
    assert sha256_file(cpath) == (cpath.parent / (cpath.name + ".sha256")).read_text().strip()
    # a cache file with no checksum (e.g. written before checksums existed) is not trusted either
    write_safetensors(cpath, {"stack": torch.full_like(X, 452.4)})
    (cpath.parent / (cpath.name + ".sha256")).unlink()
    assert torch.equal(Zoo.open(toy_zoo.path).layer(name), X)


def test_lora_layer_load_lazy_and_state_dicts_verify(tmp_path):
    from weightspace.zoo.format import LORA_LAYOUT

    zoo = _lora_zoo(tmp_path / "z", LORA_LAYOUT, _factors)
    stem = "blocks.0.attn.qkv"
    path = zoo.path / zoo.row("b")["file"]
    _flip16(path, f"lora_factors.{stem}.U")
    zoo = Zoo.open(zoo.path)
    for read in (lambda: zoo.lora_layer(stem, ["a", "b"]), lambda: zoo.load("b"), lambda: zoo.lazy("b"),
                 lambda: zoo.state_dicts(), lambda: zoo.state_dicts(lazy=False)):
        with pytest.raises(ZooError, match=r"b\.safetensors: sha256 mismatch"):
            read()
    assert not (zoo.path / ".cache").exists() or not list((zoo.path / ".cache").rglob("*.safetensors"))
    assert zoo.lazy("b", verify=False).shape(f"lora_factors.{stem}.U") == (6, 2)
    assert set(zoo.state_dicts(verify=False)) == {"base", "a", "b", "c"}


def test_a_file_is_hashed_once_unless_it_changes(toy_zoo, monkeypatch):
    import weightspace.zoo.format as fmt

    zoo = Zoo.open(toy_zoo.path)
    reads = []
    real_read, real_hash = fmt._read_bytes, fmt.sha256_file
    monkeypatch.setattr(fmt, "_read_bytes", lambda p: (reads.append(p.name), real_read(p))[1])
    monkeypatch.setattr(fmt, "sha256_file", lambda p: (reads.append(p.name), real_hash(p))[1])
    zoo.layer("blocks.0.attn.proj.weight", cache=False)
    assert sorted(reads) == sorted(f"{i}.safetensors" for i in zoo.ids)     # each file read (and hashed) once
    reads.clear()
    zoo.layer("blocks.0.mlp.fc1.weight", cache=False)
    zoo.load("a"), zoo.lazy("b"), zoo.state_dicts()
    assert reads == []                                                      # unchanged files: no second hash
    lazy = zoo.lazy("a")
    path = zoo.path / zoo.row("a")["file"]
    _flip16(path, "blocks.0.attn.proj.bias")                                # damaged after it was verified
    with pytest.raises(ZooError, match="changed after its sha256 was verified"):
        lazy["blocks.0.attn.proj.bias"]
    with pytest.raises(ZooError, match="sha256 mismatch"):
        zoo.layer("blocks.0.attn.proj.bias", cache=False)
    assert "a.safetensors" in reads                                         # re-hashed once it changed
    assert LazyStateDict(zoo.path / zoo.row("b")["file"], sha256=zoo.row("b")["sha256"]).shape(
        "blocks.0.attn.proj.bias") == (6,)
    with pytest.raises(ZooError, match="sha256 mismatch"):
        LazyStateDict(path, sha256=zoo.row("a")["sha256"])


def test_mother_reads_a_zoo_verified(toy_zoo):
    from weightspace.mother.cli import load_folder

    _flip16(toy_zoo.path / toy_zoo.row("b1")["file"], "blocks.0.mlp.fc1.weight")
    with pytest.raises(ZooError, match=r"b1\.safetensors: sha256 mismatch"):
        load_folder(toy_zoo.path)
    models, parents = load_folder(toy_zoo.path, verify=False)
    assert set(models) == set(toy_zoo.ids) and parents["b1"] == "b"


# ------------------------------------------------------------------- leftovers of dead writers

def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_files_of_dead_writers_are_removed_on_resume(toy_zoo, caplog):
    import logging
    import os

    from weightspace.zoo.format import _host

    dead, host = _dead_pid(), _host()
    leftovers = [toy_zoo.path / "models" / f".x.safetensors.{dead}@{host}.tmp",
                 toy_zoo.path / f".models.jsonl.{dead}.tmp",                       # the old naming
                 toy_zoo.path / ".cache" / "layers" / f".s.safetensors.{dead}@{host}.tmp"]
    kept = [toy_zoo.path / "models" / f".y.safetensors.{os.getpid()}@{host}.tmp",  # a live writer (us)
            toy_zoo.path / "models" / f".z.safetensors.{os.getppid()}.tmp",
            toy_zoo.path / "models" / f".w.safetensors.{dead}@another-host.tmp",    # can't tell: keep
            toy_zoo.path / "models" / f"v.{dead}.tmp",                              # not our naming
            toy_zoo.path / "notes.tmp"]
    for f in leftovers + kept:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"partial")
    with caplog.at_level(logging.INFO, logger="weightspace.zoo.format"):
        Zoo.create(toy_zoo.path, kind="toy", builder="tests", params={"n": 5})        # resuming
    assert not any(f.exists() for f in leftovers)
    assert all(f.exists() for f in kept)
    assert all(str(f) in caplog.text for f in leftovers) and "dead writer" in caplog.text
    assert Zoo.open(toy_zoo.path).verify() == []


def test_writes_name_their_pid_and_host(tmp_path, monkeypatch):
    import os

    import weightspace.zoo.format as fmt

    seen = []
    real = os.replace
    monkeypatch.setattr(fmt.os, "replace", lambda a, b: (seen.append(Path(a).name), real(a, b))[1])
    write_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(2)})
    assert seen == [f".m.safetensors.{os.getpid()}@{fmt._host()}.tmp"]


def test_verified_reads_parse_every_dtype_like_safetensors(tmp_path):
    from safetensors.torch import load_file

    from weightspace.zoo.format import _parse_bytes

    tensors = {"f64": torch.randn(2, 3, dtype=torch.float64), "f16": torch.randn(4).half(),
               "bf16": torch.randn(3, 1).bfloat16(), "i64": torch.arange(5),
               "i8": torch.tensor([-3, 4], dtype=torch.int8),
               "u8": torch.tensor([[1, 255]], dtype=torch.uint8), "b": torch.tensor([True, False]),
               "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5)}
    zoo = Zoo.create(tmp_path / "z", kind="t", builder="t", params={})
    zoo.add("m", tensors, split=None)
    ref = load_file(str(zoo.path / zoo.row("m")["file"]))
    got = Zoo.open(zoo.path).load("m")
    assert got.keys() == ref.keys()
    assert all(got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]) for k in ref)
    for bad in (b"\x08" + b"\x00" * 7 + b"not json", b"\xff" * 8 + b"{}",
                (20).to_bytes(8, "little") + b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'[:20]):
        with pytest.raises(ZooError, match="not a readable safetensors file"):
            _parse_bytes(Path("x.safetensors"), bytearray(bad))
    head = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    with pytest.raises(ZooError, match="lies outside the data"):
        _parse_bytes(Path("x.safetensors"), bytearray(len(head).to_bytes(8, "little") + head + b"\x00" * 8))


def test_asset_metadata_is_read_only_from_a_verified_file(toy_zoo):
    toy_zoo.add_asset("base", {"w": torch.ones(3)}, {"config": '{"width": 3}'})
    assert toy_zoo.asset_metadata("base")["config"] == '{"width": 3}'
    f = toy_zoo.path / toy_zoo.manifest["assets"]["base"]["file"]
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    with pytest.raises(ZooError, match="sha256"):
        Zoo.open(toy_zoo.path).asset_metadata("base")
    with pytest.raises(ZooError, match="no asset 'other'"):
        toy_zoo.asset_metadata("other")
