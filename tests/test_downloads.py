"""weightspace.downloads: the safetensors header check, hash checks and the lock file (no network)."""
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from weightspace.downloads import (
    LOCK_NAME,
    DownloadError,
    Lock,
    Verifier,
    check_safetensors,
    expect_hash,
    find_lock,
    git_blob_sha1,
    published_hashes,
    record_folder,
    sha256_file,
    verify_root,
)
from weightspace.zoo import write_safetensors


def _craft(path, header, data_len):
    """A safetensors file with a hand-written header and `data_len` zero bytes of data."""
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + bytes(data_len))
    return path


def test_well_formed_files_pass(tmp_path):
    ours = tmp_path / "ours.safetensors"
    write_safetensors(ours, {"a": torch.randn(3, 5), "b": torch.zeros(0), "c": torch.arange(7)}, {"k": "v"})
    theirs = tmp_path / "theirs.safetensors"
    save_file({"x": torch.randn(4, 4).half(), "y": torch.ones(3, dtype=torch.bool)}, str(theirs))
    assert check_safetensors(ours) is None and check_safetensors(theirs) is None
    assert check_safetensors(_craft(tmp_path / "h.safetensors", {
        "w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
        "v": {"dtype": "I64", "shape": [2], "data_offsets": [12, 28]}}, 28)) is None


def test_truncated_and_short_files(tmp_path):
    f = tmp_path / "m.safetensors"
    write_safetensors(f, {"w": torch.randn(64, 64)})
    whole = f.read_bytes()
    f.write_bytes(whole[:-100])
    assert "truncated" in check_safetensors(f)
    f.write_bytes(whole + b"x")
    assert "trailing bytes" in check_safetensors(f)
    f.write_bytes(whole[:5])
    assert "shorter than the 8-byte header length" in check_safetensors(f)
    assert "cannot read" in check_safetensors(tmp_path / "missing.safetensors")


def test_flipped_bytes_in_the_header(tmp_path):
    f = tmp_path / "m.safetensors"
    write_safetensors(f, {"w": torch.randn(4, 4)})
    whole = bytearray(f.read_bytes())
    bad = bytearray(whole)
    bad[7] ^= 0x01                                   # the top byte of the header length
    f.write_bytes(bytes(bad))
    assert "runs past the end of the file" in check_safetensors(f)
    bad = bytearray(whole)
    bad[8] = ord("[")                                # the header's opening brace
    f.write_bytes(bytes(bad))
    assert "not valid JSON" in check_safetensors(f)
    bad = bytearray(whole)
    i = bad.index(b"[4,4]")
    bad[i + 1] = ord("5")                            # shape [5,4]: the size no longer matches the span
    f.write_bytes(bytes(bad))
    assert check_safetensors(f) == (f"{f}: tensor 'w' is F32 [5, 4] = 80 bytes but its data_offsets [0, 64] "
                                    "span 64")


def test_offsets_must_tile_the_data(tmp_path):
    overlap = _craft(tmp_path / "o.safetensors", {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, 24)
    assert "tensors 'a' and 'b' overlap" in check_safetensors(overlap)
    gap = _craft(tmp_path / "g.safetensors", {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [20, 36]}}, 36)
    assert "a gap of 4 bytes before tensor 'b'" in check_safetensors(gap)
    late = _craft(tmp_path / "l.safetensors", {"a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}, 8)
    assert "a gap of 4 bytes before tensor 'a'" in check_safetensors(late)


def test_dtype_and_header_shape_problems(tmp_path):
    size = _craft(tmp_path / "s.safetensors", {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, 8)
    assert "'w' is F32 [2, 2] = 16 bytes but its data_offsets [0, 8] span 8" in check_safetensors(size)
    unknown = _craft(tmp_path / "u.safetensors", {"w": {"dtype": "F31", "shape": [2], "data_offsets": [0, 8]}}, 8)
    assert "unknown dtype 'F31'" in check_safetensors(unknown)
    listed = _craft(tmp_path / "a.safetensors", [1, 2], 0)
    assert "a JSON list, not an object" in check_safetensors(listed)
    partial = _craft(tmp_path / "p.safetensors", {"w": {"dtype": "F32", "shape": [2]}}, 8)
    assert "needs dtype, shape and data_offsets" in check_safetensors(partial)


def test_hashes_against_hand_computed_references(tmp_path):
    empty, hello = tmp_path / "empty", tmp_path / "hello"
    empty.write_bytes(b"")
    hello.write_bytes(b"hello\n")
    assert git_blob_sha1(empty) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"     # `git hash-object`
    assert git_blob_sha1(hello) == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert sha256_file(hello) == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert expect_hash(hello, ("git-sha1", "ce013625030ba8dba906f756967f9e9ca394464a"), "x") == sha256_file(hello)
    with pytest.raises(DownloadError, match="hello: the downloaded file's sha256 is 5891b5b5.*but 00 was published"):
        expect_hash(hello, ("sha256", "00"), "hello")
    assert not hello.exists()


def test_published_hashes_from_hub_metadata():
    info = SimpleNamespace(sha="c" * 40, siblings=[
        SimpleNamespace(rfilename="model.safetensors", blob_id="b1", lfs={"sha256": "aa", "size": 3}),
        SimpleNamespace(rfilename="config.json", blob_id="b2", lfs=None),
        SimpleNamespace(rfilename="README.md", blob_id=None, lfs=None)])
    assert published_hashes(info) == {"model.safetensors": ("sha256", "aa"), "config.json": ("git-sha1", "b2")}


def test_lock_records_and_verifies(tmp_path, capsys):
    f = tmp_path / "ft" / "m" / "model.safetensors"
    f.parent.mkdir(parents=True)
    write_safetensors(f, {"w": torch.randn(8, 8)})
    lock = Lock(tmp_path)
    assert lock.verify("ft/m/model.safetensors") == f"ft/m/model.safetensors: not in {LOCK_NAME}"
    lock.record("ft/m/model.safetensors", source="hf:o/m/model.safetensors", revision="r1")
    again = Lock(tmp_path)                                              # written to disk at once
    assert again.get("ft/m/model.safetensors") == {"sha256": sha256_file(f), "size": f.stat().st_size,
                                                   "source": "hf:o/m/model.safetensors", "revision": "r1"}
    assert again.present("ft/m/model.safetensors", rehash=True) and verify_root(tmp_path) == 0
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF                                                    # same size: only a re-hash sees it
    f.write_bytes(bytes(data))
    assert again.present("ft/m/model.safetensors")
    assert "changed on disk" in again.verify("ft/m/model.safetensors", rehash=True)
    assert verify_root(tmp_path) == 1 and "changed on disk" in capsys.readouterr().err
    f.write_bytes(bytes(data[:-4]))
    assert "the lock says" in again.verify("ft/m/model.safetensors")
    f.unlink()
    assert again.verify("ft/m/model.safetensors") == "ft/m/model.safetensors: missing"
    (tmp_path / LOCK_NAME).write_text("{not json")
    with pytest.raises(DownloadError, match="not a JSON lock file"):
        Lock(tmp_path)


def test_verifier_serves_files_as_locked_and_hashes_each_once(tmp_path, monkeypatch):
    import hashlib

    import weightspace.downloads as dl

    a, b = tmp_path / "d" / "a.safetensors", tmp_path / "d" / "sub" / "b.safetensors"
    b.parent.mkdir(parents=True)
    write_safetensors(a, {"w": torch.randn(4, 4)})
    write_safetensors(b, {"w": torch.randn(2)})
    (tmp_path / "d" / "notes.txt").write_text("x")
    lock = Lock(tmp_path)
    lock.record("d/a.safetensors", source="hf:o/a", revision="r")
    lock.record("d/sub/b.safetensors", source="hf:o/b", revision="r")
    assert find_lock(tmp_path / "d" / "sub").root == tmp_path and find_lock(tmp_path.parent) is None
    hashed = []
    monkeypatch.setattr(dl, "sha256_file", lambda p: hashed.append(Path(p).name) or sha256_file(p))
    v = Verifier(tmp_path / "d" / "sub")                          # the lock of a folder above
    assert v.check(a) == a and hashed == []                      # opening: size and header only
    assert v.verified(a) == a and v.verified(a) == a and Verifier(tmp_path).verified(a) == a
    assert hashed == ["a.safetensors"]                           # once per process while unchanged
    assert hashlib.sha256(a.read_bytes()).hexdigest() == lock.get("d/a.safetensors")["sha256"]
    with pytest.raises(DownloadError, match=rf"{tmp_path / 'd' / 'notes.txt'}: not in the lock file "
                                            rf"{tmp_path / LOCK_NAME}; record it with"):
        v.check(tmp_path / "d" / "notes.txt")
    data = bytearray(b.read_bytes())
    data[-1] ^= 0x01                                             # same size and header
    b.write_bytes(bytes(data))
    assert v.check(b) == b
    with pytest.raises(DownloadError, match=rf"{b}: sha256 {hashlib.sha256(bytes(data)).hexdigest()}, "
                                            rf"the lock says {lock.get('d/sub/b.safetensors')['sha256']}"):
        v.verified(b)
    b.write_bytes(bytes(data[:-4]))
    with pytest.raises(DownloadError, match=rf"{b}: size {len(data) - 4} bytes, the lock says {len(data)}"):
        v.check(b)
    b.write_bytes(bytes(data[:9]) + b"x" * (len(data) - 9))       # the header broken, the size as locked
    with pytest.raises(DownloadError, match="header"):
        v.check(b)
    b.unlink()
    with pytest.raises(DownloadError, match=rf"{b}: missing"):
        v.verified(b)
    with pytest.raises(DownloadError, match=rf"{tmp_path.parent / 'x.safetensors'}: outside {tmp_path}"):
        v.check(tmp_path.parent / "x.safetensors")
    with pytest.raises(ValueError, match="verify='yes'"):
        Verifier(tmp_path, "yes")
    with pytest.warns(UserWarning, match="verify='none'"):
        none = Verifier(tmp_path.parent, "none", reader="R")
    assert none.verified(b) == b                                 # not checked at all


def test_lock_cli_records_and_verifies_own_files(tmp_path, capsys):
    import hashlib

    from weightspace.__main__ import main as ws_main
    from weightspace.downloads import main

    root = tmp_path / "mine"
    f1, f2 = root / "train" / "m0" / "x.safetensors", root / "y.safetensors"
    f1.parent.mkdir(parents=True)
    write_safetensors(f1, {"w": torch.randn(3, 3)})
    write_safetensors(f2, {"w": torch.randn(5)})
    assert ws_main(["lock", str(root)]) == 0
    assert "2 new, 0 updated, 0 unchanged" in capsys.readouterr().out
    entries = json.loads((root / LOCK_NAME).read_text())
    assert entries == {rel: {"sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "size": f.stat().st_size,
                             "source": f"local:{rel}", "revision": None}
                       for rel, f in (("train/m0/x.safetensors", f1), ("y.safetensors", f2))}
    assert main([str(root), "--verify"]) == 0 and "2 of 2 locked files are as locked" in capsys.readouterr().out
    assert main([str(root)]) == 0 and "0 new, 0 updated, 2 unchanged" in capsys.readouterr().out
    data = bytearray(f1.read_bytes())
    data[-1] ^= 0x01
    f1.write_bytes(bytes(data))
    assert main([str(root), "--verify"]) == 1
    assert "train/m0/x.safetensors: sha256" in capsys.readouterr().err
    assert record_folder(root) == {"new": 0, "updated": 1, "unchanged": 1, "kept": 0}   # one's own: re-recorded
    assert Verifier(root).verified(f1) == f1

    Lock(root).record("y.safetensors", source="hf:o/y", revision="r")      # as a download script records it
    before = (root / LOCK_NAME).read_text()
    assert main([str(root)]) == 0 and "1 locked by a download kept" in capsys.readouterr().out
    data = bytearray(f2.read_bytes())
    data[-1] ^= 0x01
    f2.write_bytes(bytes(data))                                             # never re-recorded as one's own
    assert record_folder(root) == {"new": 0, "updated": 0, "unchanged": 1, "kept": 1}
    assert (root / LOCK_NAME).read_text() == before
    with pytest.raises(DownloadError, match=rf"{f2}: sha256"):
        Verifier(root).verified(f2)
    f2.write_bytes(bytes(data) + bytes(8))
    assert main([str(root)]) == 1
    err = capsys.readouterr().err
    assert "y.safetensors: " in err and "downloaded from hf:o/y" in err and "nothing recorded" in err
    assert (root / LOCK_NAME).read_text() == before
    f2.write_bytes(bytes(data))
    (root / "z.safetensors").write_bytes(f1.read_bytes()[:-2])              # a broken file is not recorded
    assert main([str(root)]) == 1 and "z.safetensors" in capsys.readouterr().err
    assert (root / LOCK_NAME).read_text() == before
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1 and "no *.safetensors" in capsys.readouterr().err
    assert main([str(tmp_path / "gone")]) == 1 and "no such folder" in capsys.readouterr().err
    assert main([str(tmp_path / "empty"), "--verify"]) == 1
    with pytest.raises(SystemExit) as e:
        main([str(root), "--rehash"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
