"""MoTHer on real layouts: preset layer names of HF ViT / BERT / Llama / SD UNet, memory-mapped streaming
in bounded memory, the CLI on folders and zoos, and the VTHR paper path on look-alike files."""
import json
import pickle
import subprocess
import sys
import textwrap
import types

import pytest
import torch

from weightspace.downloads import LOCK_NAME, DownloadError
from weightspace.mother import MotherError, detect_preset, edge_accuracy, recover, select_layers, truth_graph
from weightspace.mother import vthr
from weightspace.mother.cli import main as cli_main
from weightspace.zoo import ZooError, write_safetensors


def _heavy(g, *shape):
    return torch.randn(*shape, generator=g) / torch.rand(*shape, generator=g).clamp_min(0.05).sqrt()


def _family(g, root, n_children=2, rel=0.3):
    """root -> children -> grandchildren; each a dense Gaussian perturbation of its parent (tails dilute)."""
    out, parents = {"root": root}, {"root": None}
    for i in range(n_children):
        out[f"c{i}"] = {k: v + rel * v.std() * torch.randn(v.shape, generator=g) for k, v in root.items()}
        parents[f"c{i}"] = "root"
        for j in range(n_children):
            out[f"c{i}g{j}"] = {k: v + rel * v.std() * torch.randn(v.shape, generator=g)
                                for k, v in out[f"c{i}"].items()}
            parents[f"c{i}g{j}"] = f"c{i}"
    return out, parents


# ------------------------------------------------------------------------------------------- presets

def _hf_vit(n_labels=3):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                    image_size=8, patch_size=2, num_channels=1, num_labels=n_labels)
    return ViTForImageClassification(cfg)


def test_presets_pick_the_papers_matrices_in_real_architectures(tmp_path):
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    import safetensors.torch

    model = _hf_vit()
    model.save_pretrained(tmp_path, safe_serialization=True)
    on_disk = safetensors.torch.load_file(tmp_path / "model.safetensors")    # VTHR's (classic) names
    for vit in (on_disk, model.state_dict()):                               # and transformers 5's in memory
        assert detect_preset(list(vit)) == "hf-vit"
        att = select_layers(vit, "hf-vit", "ft")
        assert len(att) == 8 and all(x.shape == (16, 16) for x in att)
        assert len(select_layers(vit, "hf-vit", "ft", "direction")) == 2
        assert len(select_layers(vit, "hf-vit:mlp", "ft")) == 4
    assert [x.key for x in select_layers(on_disk, "hf-vit", "ft", "direction")] == \
        [f"vit.encoder.layer.{i}.attention.output.dense.weight" for i in range(2)]
    assert [x.key for x in select_layers(on_disk, "hf-vit", "lora", "direction")] == \
        [f"vit.encoder.layer.{i}.attention.attention.value.weight" for i in range(2)]

    bert = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                vocab_size=30)).state_dict()
    assert detect_preset(list(bert)) == "bert"
    assert len(select_layers(bert, "bert", "ft")) == 8
    assert len(select_layers(bert, "bert:mlp", "ft")) == 4

    llama = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=30)).state_dict()
    assert detect_preset(list(llama)) == "llama"
    assert [x.key for x in select_layers(llama, "llama", "ft", "direction")] == \
        [f"model.layers.{i}.self_attn.o_proj.weight" for i in range(2)]

    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=4, norm_num_groups=8).state_dict()
    assert detect_preset(list(unet)) == "sd-unet"
    att = select_layers(unet, "sd-unet", "ft")
    assert att and all(x.shape[0] == x.shape[1] for x in att)
    assert not any("attn2.to_k" in x.key for x in att)          # cross-attention k/v are 16x8: not square
    square = select_layers(unet, "sd-unet", "ft", "direction")   # SD: every square 2-D weight
    assert len(square) > len(att)


# ----------------------------------------------------------------------------------- bounded memory

_MEMORY_PROBE = textwrap.dedent("""
    import resource, sys, torch
    from weightspace.zoo import LazyStateDict
    from weightspace.mother import rms_distances, kurtosis_scores, select_layers
    folder, n = sys.argv[1], int(sys.argv[2])
    models = {f"m{i}": LazyStateDict(f"{folder}/m{i}.safetensors") for i in range(n)}
    layers = select_layers(models["m0"], r"layer\\d+\\.weight")
    warm = dict(list(models.items())[:2])
    rms_distances(warm, layers[:1], chunk_bytes=4 << 20, device="cpu"); kurtosis_scores(warm, layers[:1], chunk_bytes=4 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    D = rms_distances(models, layers, chunk_bytes=4 << 20, device="cpu")
    k = kurtosis_scores(models, layers, chunk_bytes=4 << 20)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024, float(D[0, 1]), float(k[0]))
""")


def test_distances_stream_a_forest_larger_than_the_memory_cap(tmp_path):
    """24 models x 8 layers of 512x512 float32 = 192 MB on disk; peak memory growth must stay under 64 MB."""
    n, cap = 24, 64 << 20
    g = torch.Generator().manual_seed(0)
    base = {f"layer{i}.weight": torch.randn(512, 512, generator=g) for i in range(8)}
    for m in range(n):
        write_safetensors(tmp_path / f"m{m}.safetensors",
                          {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()})
    total = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))
    assert total > 2.5 * cap
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path), str(n)], capture_output=True,
                         text=True, check=True).stdout.split()
    grew, d01 = int(out[0]), float(out[1])
    assert grew < cap, f"peak memory grew by {grew / 2**20:.0f} MB reading a {total / 2**20:.0f} MB forest"
    assert d01 > 0


# ------------------------------------------------------------------------------------------------ CLI

def _timm_like(g, d=16):
    sd = {}
    for b in range(2):
        sd[f"blocks.{b}.attn.qkv.weight"] = _heavy(g, 3 * d, d)
        sd[f"blocks.{b}.attn.proj.weight"] = _heavy(g, d, d)
        sd[f"blocks.{b}.mlp.fc1.weight"] = _heavy(g, 4 * d, d)
    return sd


def test_cli_on_a_folder_of_safetensors(tmp_path, capsys):
    g = torch.Generator().manual_seed(1)
    models, parents = _family(g, _timm_like(g))
    for name, sd in models.items():
        write_safetensors(tmp_path / f"{name}.safetensors", sd)
    out_json = tmp_path / "tree.json"
    code = cli_main([str(tmp_path), "--n-trees", "1", "--direction-layers", "timm-vit:hidden", "--json", str(out_json)])
    text = capsys.readouterr().out
    assert code == 0
    assert "7 models, 1 tree(s)" in text and "└── " in text
    edges = {tuple(e) for e in json.loads(out_json.read_text())["edges"]}
    assert edge_accuracy(edges, truth_graph(parents)) == 1.0


def test_cli_on_a_zoo_prints_accuracy_and_marks_wrong_edges(toy_zoo, capsys):
    code = cli_main([str(toy_zoo.path), "--n-trees", "1", "--layers", r"proj\.weight", "--direction-layers", r"fc1"])
    text = capsys.readouterr().out
    assert code == 0
    assert "directed-edge accuracy vs the zoo's parent_id" in text


def test_cli_errors(tmp_path, capsys):
    """Problems with the checkpoints are data errors: exit 1 (usage errors exit 2)."""
    assert cli_main([str(tmp_path)]) == 1
    assert "no *.safetensors files" in capsys.readouterr().err
    g = torch.Generator().manual_seed(2)
    write_safetensors(tmp_path / "a.safetensors", _timm_like(g))
    assert cli_main([str(tmp_path)]) == 1
    assert "at least 2 models" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    write_safetensors(tmp_path / "a" / "model.safetensors", _timm_like(g))
    assert cli_main([str(tmp_path)]) == 1
    assert "duplicate model name 'a'" in capsys.readouterr().err


def test_cli_reads_sharded_hf_checkpoints(tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    models, parents = _family(g, _timm_like(g), n_children=1)
    for name, sd in models.items():
        d = tmp_path / name
        d.mkdir()
        keys = sorted(sd)
        half = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for file, ks in half.items():
            write_safetensors(d / file, {k: sd[k] for k in ks})
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: f for f, ks in half.items() for k in ks}}))
    assert cli_main([str(tmp_path), "--n-trees", "1", "--direction-layers", "timm-vit:hidden"]) == 0
    assert "3 models" in capsys.readouterr().out


def test_cli_verifies_a_folder_under_a_download_lock(tmp_path, capsys, monkeypatch):
    """Checkpoints under a lock (a downloaded VTHR split, or files recorded with `weightspace lock`) are read
    only once each matches it, shards too; --no-verify skips the check."""
    import weightspace.downloads as dl
    from weightspace.downloads import record_folder

    g = torch.Generator().manual_seed(5)
    models, _ = _family(g, _timm_like(g), n_children=1)
    names = sorted(models)
    write_safetensors(tmp_path / f"{names[0]}.safetensors", models[names[0]])
    (tmp_path / names[1]).mkdir()
    write_safetensors(tmp_path / names[1] / "model.safetensors", models[names[1]])
    d = tmp_path / names[2]
    d.mkdir()
    keys = sorted(models[names[2]])
    half = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for file, ks in half.items():
        write_safetensors(d / file, {k: models[names[2]][k] for k in ks})
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in half.items() for k in ks}}))
    args = ["--n-trees", "1", "--direction-layers", "timm-vit:hidden"]
    assert record_folder(tmp_path)["new"] == 4
    hashed = []
    real = dl.sha256_file
    monkeypatch.setattr(dl, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert cli_main([str(tmp_path), *args]) == 0 and "3 models" in capsys.readouterr().out
    assert len(hashed) == 4
    shard = d / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    assert cli_main([str(tmp_path), *args]) == 1
    assert f"{shard}: sha256" in capsys.readouterr().err
    assert cli_main([str(tmp_path), *args, "--no-verify"]) == 0
    write_safetensors(tmp_path / "extra.safetensors", models[names[0]])
    assert cli_main([str(tmp_path), *args]) == 1
    assert f"{tmp_path / 'extra.safetensors'}: not in the lock file" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- VTHR paper path

def _lookalike_graph_pkl(path, nodes, lora=False):
    """Pickle a graph the way the official code does: objects of module `model_graph`'s classes (for the
    LoRA splits, of `model_graph_lora`'s LoRA* subclasses)."""
    mod = types.ModuleType("model_graph")
    src = textwrap.dedent("""
        class ModelGraphNodeMetadata:
            def __init__(self, component_id, depth, dataset_name, num_classes, dataset_short_name, seed, uuid):
                self.component_id = component_id; self.depth = depth; self.dataset_name = dataset_name
                self.num_classes = num_classes; self.dataset_short_name = dataset_short_name
                self.seed = seed; self.uuid = uuid; self.model_path = f"out/{dataset_short_name}__{uuid}"
        class ModelGraphNode:
            def __init__(self, parent, metadata, is_root=False, is_leaf=False):
                self.is_root = is_root; self.is_leaf = is_leaf; self.metadata = metadata
                self.children = []; self.parent = parent
        class ModelGraph:
            def __init__(self, roots):
                self.roots = roots
    """)
    exec(src, mod.__dict__)
    classes = {}
    for cls in ("ModelGraphNodeMetadata", "ModelGraphNode", "ModelGraph"):
        getattr(mod, cls).__module__ = "model_graph"
        classes[cls] = getattr(mod, cls)
    sys.modules["model_graph"] = mod
    if lora:
        lmod = types.ModuleType("model_graph_lora")
        for cls, base in list(classes.items()):
            classes[cls] = type("LoRA" + cls, (base,), {"__module__": "model_graph_lora"})
            setattr(lmod, "LoRA" + cls, classes[cls])
        sys.modules["model_graph_lora"] = lmod
    try:
        objs, roots = {}, []
        for uuid, parent, tree, depth in nodes:
            md = classes["ModelGraphNodeMetadata"](tree, depth, None if parent is None else "vtab-cifar100", 100,
                                                   "c100", 0, uuid)
            node = classes["ModelGraphNode"](objs.get(parent), md, is_root=parent is None)
            objs[uuid] = node
            if parent is None:
                roots.append(node)
            else:
                objs[parent].children.append(node)
        with open(path, "wb") as f:
            pickle.dump(classes["ModelGraph"](roots), f)
    finally:
        del sys.modules["model_graph"]
        sys.modules.pop("model_graph_lora", None)


def test_vthr_names():
    name = vthr.repo_name("lora-v", 3, 2, "ab12CD34")
    assert name == "VTHR-LoRA-V-ModelTree_3-Depth_2-Node_ab12CD34"
    assert vthr.parse_repo_name("MoTHer-VTHR/" + name) == dict(split="lora-v", tree=3, depth=2, uuid="ab12CD34")
    with pytest.raises(MotherError, match="not a VTHR model name"):
        vthr.parse_repo_name("VTHR-XX-ModelTree_1-Depth_0-Node_abcdefgh")


def test_vthr_split_lookalike_end_to_end(tmp_path):
    """A downloaded-split look-alike: HF ViTForImageClassification checkpoints in the real folder layout,
    and the official-format ground-truth pickle converted to JSON; MoTHer with the hf-vit preset."""
    g = torch.Generator().manual_seed(4)
    root_model = _hf_vit()
    root = {k: v.detach().clone() for k, v in root_model.state_dict().items()}
    for k in root:
        if k.endswith("weight") and root[k].ndim == 2:
            root[k] = _heavy(g, *root[k].shape) * 0.02
    models, parents = _family(g, root)
    uuids = {n: f"{i:02d}abcdef" for i, n in enumerate(models)}
    nodes = [(uuids[n], uuids[p] if p else None, 1, n.count("c") + n.count("g")) for n, p in parents.items()]
    pkl = tmp_path / vthr.GRAPH_FILES["ft"]
    _lookalike_graph_pkl(pkl, nodes)
    rows = vthr.read_graph_pkl(pkl)
    assert {r["uuid"]: r["parent"] for r in rows} == {u: p for u, p, _, _ in nodes}
    split_dir = tmp_path / "vthr" / "ft"
    split_dir.mkdir(parents=True)
    vthr.write_graph_json(rows, split_dir / vthr.GRAPH_JSON)
    for n, sd in models.items():
        depth = n.count("c") + n.count("g")
        root_model.load_state_dict(sd)
        root_model.save_pretrained(split_dir / vthr.repo_name("ft", 1, depth, uuids[n]), safe_serialization=True)
    with pytest.warns(UserWarning, match="verify='none'"):     # no lock here: the lock is tested below
        loaded, truth = vthr.load_split(tmp_path / "vthr", "ft", verify="none")
    assert len(loaded) == 7 and sum(p is None for p in truth.values()) == 1
    pred = recover(loaded, layers="hf-vit", distance="ft", direction_layers="hf-vit:hidden", n_trees=1)
    assert edge_accuracy(pred, truth_graph(truth)) == 1.0


def test_vthr_pickle_reader_refuses_other_objects(tmp_path):
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps(subprocess.Popen))
    with pytest.raises(MotherError, match="refusing to load subprocess.Popen"):
        vthr.read_graph_pkl(bad)


def test_vthr_lora_pickles_use_the_lora_subclasses(tmp_path):
    """The official LoRA-V / LoRA-F pickles hold model_graph_lora.LoRAModelGraph* objects."""
    pkl = tmp_path / vthr.GRAPH_FILES["lora-v"]
    _lookalike_graph_pkl(pkl, [("aaaaaaaa", None, 0, 0), ("bbbbbbbb", "aaaaaaaa", 0, 1)], lora=True)
    assert b"model_graph_lora" in pkl.read_bytes() and b"LoRAModelGraphNode" in pkl.read_bytes()
    assert [(r["uuid"], r["parent"]) for r in vthr.read_graph_pkl(pkl)] == [("aaaaaaaa", None),
                                                                          ("bbbbbbbb", "aaaaaaaa")]


def test_download_script_skips_only_complete_files(tmp_path):
    f = tmp_path / "model.safetensors"
    write_safetensors(f, {"w": torch.randn(64, 64)})
    assert vthr.safetensors_complete(f)
    f.write_bytes(f.read_bytes()[:-100])          # an interrupted download
    assert not vthr.safetensors_complete(f)
    assert not vthr.safetensors_complete(tmp_path / "missing.safetensors")


def _vthr_script():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "data_scripts" / "download_vthr.py"
    spec = importlib.util.spec_from_file_location("download_vthr", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _FakeHub:
    """huggingface_hub and GitHub as the VTHR script sees them, with every call recorded."""

    def __init__(self, tmp_path, names, nodes, monkeypatch):
        import hashlib
        import urllib.request

        import huggingface_hub

        from weightspace.zoo.format import safetensors_bytes

        self.calls, self.names, self.corrupt = [], names, set()
        self.files = {}
        for k, n in enumerate(names):
            self.files[n] = {"model.safetensors": safetensors_bytes({"w": torch.full((4, 4), float(k))}),
                             "config.json": json.dumps({"name": n}).encode()}
        self.commit = {n: f"{k:040x}" for k, n in enumerate(names)}
        self.pkl = tmp_path / "official.pkl"
        _lookalike_graph_pkl(self.pkl, nodes)
        self.pkl_sha = hashlib.sha256(self.pkl.read_bytes()).hexdigest()
        hub = self

        class Api:
            def list_models(self, author, search):
                hub.calls.append(("list", author))
                return [types.SimpleNamespace(id=f"{author}/{n}") for n in hub.names]

            def model_info(self, repo_id, revision=None, files_metadata=False):
                hub.calls.append(("info", repo_id, revision))
                name = repo_id.split("/")[1]
                sib = [types.SimpleNamespace(rfilename="model.safetensors", blob_id="x", lfs={
                           "sha256": hashlib.sha256(hub.files[name]["model.safetensors"]).hexdigest()}),
                       types.SimpleNamespace(rfilename="config.json", lfs=None, blob_id=hashlib.sha1(
                           b"blob %d\0" % len(hub.files[name]["config.json"]) + hub.files[name]["config.json"]
                       ).hexdigest())]
                return types.SimpleNamespace(sha=hub.commit[name], siblings=sib)

        def hf_hub_download(repo_id, filename, revision, local_dir, force_download=False):
            hub.calls.append(("download", repo_id, filename, revision))
            name = repo_id.split("/")[1]
            assert revision == hub.commit[name]
            data = hub.files[name][filename]
            if name in hub.corrupt and filename == "model.safetensors":
                data = data[:-4] + b"\x00\x00\x80\x7f"                   # one tensor value changed
            out = local_dir / filename
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            return str(out)

        def urlretrieve(url, dest):
            hub.calls.append(("url", url))
            dest.write_bytes(hub.pkl.read_bytes())

        monkeypatch.setattr(huggingface_hub, "HfApi", Api)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
        monkeypatch.setattr(urllib.request, "urlretrieve", urlretrieve)


def _vthr_names():
    uuids = ["aaaaaaaa", "bbbbbbbb", "cccccccc"]
    names = [vthr.repo_name("ft", 0, d, u) for d, u in zip((0, 1, 1), uuids)]
    nodes = [("aaaaaaaa", None, 0, 0), ("bbbbbbbb", "aaaaaaaa", 0, 1), ("cccccccc", "aaaaaaaa", 0, 1)]
    return names, nodes


def test_vthr_ground_truth_is_pinned_and_hash_checked(tmp_path, monkeypatch):
    from weightspace.downloads import DownloadError, Lock

    mod = _vthr_script()
    names, nodes = _vthr_names()
    hub = _FakeHub(tmp_path, names, nodes, monkeypatch)
    root = tmp_path / "vthr"
    with pytest.raises(DownloadError, match=f"sha256 is {hub.pkl_sha}, but {vthr.GRAPH_SHA256['ft']} was "
                                            "published.*refusing to use it"):
        mod.fetch_graph("ft", Lock(root))                # a look-alike is not the official pickle
    url = ("https://raw.githubusercontent.com/eliahuhorwitz/MoTHer/9ac0d5d6a7ac82777334d853db7c48e4728bb08e"
           "/dataset/full_ft_model_graph.pkl")
    assert hub.calls == [("url", url)]
    assert not any((root / "ft").iterdir()) and Lock(root).entries == {}
    assert mod.main(["--splits", "ft", "--root", str(root)]) == 1
    monkeypatch.setitem(vthr.GRAPH_SHA256, "ft", hub.pkl_sha)
    out = mod.fetch_graph("ft", Lock(root))
    assert [r["uuid"] for r in json.loads(out.read_text())] == ["aaaaaaaa", "bbbbbbbb", "cccccccc"]
    assert Lock(root).get("ft/full_ft_model_graph.pkl")["revision"] == vthr.GRAPH_COMMIT
    n = len(hub.calls)
    mod.fetch_graph("ft", Lock(root))
    assert len(hub.calls) == n                         # present and as pinned: no second download


def test_vthr_download_pins_checks_and_resumes(tmp_path, monkeypatch, capsys):
    from weightspace.downloads import Lock

    mod = _vthr_script()
    names, nodes = _vthr_names()
    hub = _FakeHub(tmp_path, names, nodes, monkeypatch)
    monkeypatch.setitem(vthr.GRAPH_SHA256, "ft", hub.pkl_sha)
    monkeypatch.setattr(mod.time, "sleep", lambda s: None)
    root = tmp_path / "vthr"
    hub.corrupt = {names[2]}                           # its download differs from the published sha256
    c = mod.download("ft", root)
    assert c["present"] == 0 and c["downloaded"] == 2 and len(c["failed"]) == 1
    assert names[2] in c["failed"][0] and "was published" in c["failed"][0]
    assert not (root / "ft" / names[2] / "model.safetensors").exists()
    lock = Lock(root)
    assert f"ft/{names[2]}/model.safetensors" not in lock.entries
    e = lock.get(f"ft/{names[0]}/model.safetensors")
    assert e["revision"] == hub.commit[names[0]] and e["source"] == f"hf:MoTHer-VTHR/{names[0]}/model.safetensors"
    assert {c[3] for c in hub.calls if c[0] == "download" and c[1].endswith(names[0])} == {hub.commit[names[0]]}

    hub.corrupt, hub.calls[:] = set(), []
    c = mod.download("ft", root)                       # the failed one now; the others without the network
    assert (c["present"], c["downloaded"], c["failed"]) == (2, 1, [])
    assert {x[1] for x in hub.calls} == {f"MoTHer-VTHR/{names[2]}"}
    hub.calls[:] = []
    c = mod.download("ft", root)
    assert (c["present"], c["downloaded"], hub.calls) == (3, 0, [])
    models, parents = vthr.load_split(root, "ft")
    assert parents == {names[0]: None, names[1]: names[0], names[2]: names[0]}
    (root / "ft" / vthr.GRAPH_JSON).write_text("[]")             # parents come from the verified pickle
    assert vthr.load_split(root, "ft")[1] == parents
    f0 = root / "ft" / names[0] / "model.safetensors"
    key = next(iter(models[names[0]]))
    g = bytearray(f0.read_bytes())
    g[-1] ^= 0x01
    f0.write_bytes(bytes(g))                                     # changed after loading: refused when read
    with pytest.raises(ZooError, match="changed after its sha256 was verified"):
        models[names[0]][key]
    with pytest.raises(DownloadError, match=rf"{f0}: sha256 [0-9a-f]{{64}}, the lock says"):
        vthr.load_split(root, "ft")
    g[-1] ^= 0x01
    f0.write_bytes(bytes(g))
    pkl = root / "ft" / vthr.GRAPH_FILES["ft"]
    pkl.write_bytes(pkl.read_bytes() + b"\0")
    with pytest.raises(DownloadError, match=rf"{pkl}: size"):
        vthr.load_split(root, "ft")
    pkl.write_bytes(pkl.read_bytes()[:-1])
    extra = root / "ft" / vthr.repo_name("ft", 0, 1, "zzzzzzzz") / "model.safetensors"
    extra.parent.mkdir()
    extra.write_bytes(f0.read_bytes())
    with pytest.raises(DownloadError, match=rf"{extra}: not in the lock file"):
        vthr.load_split(root, "ft")
    extra.unlink()
    extra.parent.rmdir()
    saved = (root / LOCK_NAME).read_text()
    (root / LOCK_NAME).unlink()
    with pytest.raises(DownloadError, match=r"no weightspace-downloads.lock.json.*download_vthr.py --splits ft"):
        vthr.load_split(root, "ft")
    (root / LOCK_NAME).write_text(saved)

    f = root / "ft" / names[1] / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-8])                 # changed on disk: re-downloaded at the locked commit
    c = mod.download("ft", root)
    assert (c["present"], c["downloaded"]) == (2, 1)
    assert hub.calls == [("download", f"MoTHer-VTHR/{names[1]}", "model.safetensors", hub.commit[names[1]])]
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01                                   # same size and header: only --verify sees it
    f.write_bytes(bytes(data))
    assert mod.main(["--root", str(root), "--verify"]) == 1
    assert f"ft/{names[1]}/model.safetensors: sha256" in capsys.readouterr().err


def test_cli_bad_arguments_and_inputs_never_give_a_traceback(tmp_path, capsys, caplog):
    """Each case once gave a raw traceback (or silently did the wrong thing); now a clear message and exit 2."""
    g = torch.Generator().manual_seed(5)
    models, _ = _family(g, _timm_like(g), n_children=2)
    for name, sd in models.items():
        write_safetensors(tmp_path / f"{name}.safetensors", sd)
    base = [str(tmp_path), "--n-trees", "1", "--direction-layers", "timm-vit:hidden"]

    def err(*extra):
        assert cli_main(base + list(extra)) == 2
        return capsys.readouterr().err

    assert "--lam nan" in err("--lam", "nan") and "finite number >= 0" in err("--lam", "-1")
    assert "device 'frobnicator'" in err("--device", "frobnicator")
    assert "does not exist" in err("--json", str(tmp_path / "missing" / "tree.json"))
    assert "--variant 'ft'" in err("--variant", "ft") and "no variants" in err("--variant", "ft")
    # finite but huge weights: float32 squares overflow; distances are redone in float64, not inf
    huge = {k: v * 1e25 for k, v in models["root"].items()}
    write_safetensors(tmp_path / "zz_huge.safetensors", huge)
    assert cli_main(base) == 0
    capsys.readouterr()
    (tmp_path / "zz_huge.safetensors").unlink()
    # a folder of pickles is skipped with a word, never loaded
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with caplog.at_level("WARNING", logger="weightspace.mother"):
        assert cli_main(base) == 0
    assert "skipped" in caplog.text and "pytorch_model.bin" in caplog.text and "never load" in caplog.text


def test_cli_shard_indexes(tmp_path, capsys):
    g = torch.Generator().manual_seed(6)
    sd = _timm_like(g)
    one = tmp_path / "one"
    one.mkdir()
    keys = sorted(sd)
    half = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for file, ks in half.items():
        write_safetensors(one / file, {k: sd[k] for k in ks})
    index = one / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {k: f for f, ks in half.items() for k in ks}}))
    # a folder that IS one sharded checkpoint is one model, not one model per shard
    assert cli_main([str(one)]) == 1 and "at least 2 models to relate, got 1" in capsys.readouterr().err
    index.write_text("{not json")
    assert cli_main([str(one)]) == 1 and "not a readable shard index" in capsys.readouterr().err
    index.write_text(json.dumps({"metadata": {}}))
    assert cli_main([str(one)]) == 1 and 'needs a non-empty "weight_map"' in capsys.readouterr().err
    index.write_text(json.dumps({"weight_map": {keys[0]: "../elsewhere.safetensors"}}))
    assert cli_main([str(one)]) == 1 and "not a .safetensors file beside the index" in capsys.readouterr().err
    index.write_text(json.dumps({"weight_map": {"no.such.tensor": "model-00001-of-00002.safetensors"}}))
    assert cli_main([str(one)]) == 1 and "has no such tensor" in capsys.readouterr().err
