import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from weightspace import plotting  # noqa: E402


def _figure():
    plotting.style()
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1, 0, 2])
    ax.set_title("same numbers, same bytes")
    return fig


def test_savefig_is_deterministic(tmp_path):
    a = plotting.savefig(_figure(), tmp_path / "a", "fig").read_bytes()
    b = plotting.savefig(_figure(), tmp_path / "b", "fig").read_bytes()
    assert a == b and a[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"matplotlib version" not in a
    plt.close("all")


def test_save_results_rounds_and_sorts(tmp_path):
    path = plotting.save_results(tmp_path, "07_x", {"b": np.float32(0.1234567891), "a": [np.int64(3)], "n": float("nan"),
                                                    "e": 1.91083999e-08, "t": 708.1234567})
    data = json.loads(path.read_text())
    assert list(data) == ["a", "b", "e", "n", "t"] and data["b"] == 0.123457 and data["a"] == [3] and data["n"] is None
    assert data["e"] == 1.91084e-08 and data["t"] == 708.123


def test_weight_grid_shapes():
    fig = plotting.weight_grid([np.eye(3), -np.eye(3), np.zeros((3, 3))], titles=["a", "b", "c"], ncols=2)
    assert len(fig.axes) == 4
    plt.close(fig)


def test_annotate_cells_skips_missing_values_and_picks_readable_colours():
    fig, ax = plt.subplots()
    plotting.annotate_cells(ax, [[0.5, np.nan], [0.9, 1.0]], dark_below=0.7)
    texts = {(t.get_position(), t.get_text()): t.get_color() for t in ax.texts}
    assert texts == {((0, 0), "0.50"): "w", ((0, 1), "0.90"): "k", ((1, 1), "1.00"): "k"}
    plt.close(fig)
