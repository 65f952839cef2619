"""weightspace.downloads: the safetensors header check, hash checks and the lock file (no network)."""
import json
import struct
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from weightspace.downloads import (
    LOCK_NAME,
    DownloadError,
    Lock,
    check_safetensors,
    expect_hash,
    git_blob_sha1,
    published_hashes,
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
