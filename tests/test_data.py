import numpy as np
import pytest
import torch

from weightspace.data import STYLES, digits, styled_digits
from weightspace.data.digits import base_split_indices


def test_styled_digits_shape_names_and_classes():
    ds = styled_digits()
    assert ds.n_classes >= 30 and len(ds.styles) >= 3
    names = ds.class_names
    assert len(set(names)) == ds.n_classes
    assert names[ds.class_of("mirrored", 7)] == "a mirrored seven"
    assert names[ds.class_of("inverted", 2)] == "an inverted two"
    for split in (ds.train, ds.val, ds.test):
        assert split.x.shape[1:] == (1, 8, 8) and split.x.dtype == torch.float32
        assert split.x.min() >= -1 and split.x.max() <= 1
        assert set(split.y.unique().tolist()) == set(range(ds.n_classes))
        assert torch.equal(split.y, split.style * 10 + split.digit)


def test_same_seed_same_data_bit_for_bit_and_other_seed_differs():
    a = styled_digits(seed=3)
    styled_digits.cache_clear()
    b = styled_digits(seed=3)
    assert a is not b
    for s in ("train", "val", "test"):
        assert torch.equal(a.split(s).x, b.split(s).x) and torch.equal(a.split(s).y, b.split(s).y)
    c = styled_digits(seed=4)
    assert not torch.equal(a.train.x, c.train.x)


def test_splits_partition_base_images_with_no_overlap():
    parts = base_split_indices(0)
    all_idx = np.concatenate(list(parts.values()))
    assert len(all_idx) == len(set(all_idx)) == 1797
    assert abs(len(parts["train"]) / 1797 - 0.6) < 0.01


def test_styles_are_what_their_names_say():
    ds = styled_digits(("plain", "mirrored", "inverted", "upside-down", "transposed"))
    tr = ds.train
    plain = tr.x[tr.style == 0]
    assert torch.equal(tr.x[tr.style == 1], plain.flip(-1))
    assert torch.allclose(tr.x[tr.style == 2], -plain)          # 16 - v maps to -(v/8 - 1)
    assert torch.equal(tr.x[tr.style == 3], plain.flip(-2))
    assert torch.equal(tr.x[tr.style == 4], plain.transpose(-1, -2))
    assert set(STYLES) >= {"plain", "mirrored", "inverted", "bold"}


def test_plain_digits_and_bad_styles():
    d = digits()
    assert d.n_classes == 10 and d.class_names[3] == "a plain three"
    with pytest.raises(ValueError, match="unknown style"):
        styled_digits(("plain", "sparkly"))
    with pytest.raises(ValueError, match="repeat"):
        styled_digits(("plain", "plain"))
    with pytest.raises(ValueError, match="unknown split"):
        d.split("dev")
