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
    assert list(data) == ["a", "b", "e", "environment", "n", "t"] and data["b"] == 0.123457 and data["a"] == [3] and data["n"] is None
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


def _claim(lhs, op, rhs, **kw):
    return dict(claim=kw.pop("claim", "c"), paper="the paper's words", lhs=lhs, op=op, rhs=rhs, how="by hand",
                **kw)


def test_each_op_and_tol_by_hand():
    r = {"x": 0.5, "y": 0.5, "z": 0.6}
    holds = lambda *a, **kw: plotting.resolve_claim(r, _claim(*a, **kw))["holds"]
    assert holds("x", ">=", "y") and not holds("x", ">", "y")
    assert holds("x", "<=", "y") and not holds("x", "<", "y")
    assert not holds("x", ">=", "z") and holds("x", ">=", "z", tol=0.1)
    assert not holds("x", ">=", "z", tol=0.09)
    assert not holds("x", ">", "z", tol=0.1) and holds("x", ">", "z", tol=0.11)
    assert not holds("z", "<=", "x") and holds("z", "<=", "x", tol=0.1) and not holds("z", "<", "x", tol=0.1)
    assert holds("z", "<", 0.61) and not holds(0.62, "<", "z") and holds(0.7, ">", 0.6)


def test_key_paths_reach_list_items_and_dotted_keys(tmp_path):
    r = {"per_layer": {"blocks.0.attn.qkv.weight": {"acc": [0.51, 0.83]}},
         "table": [{"mean": 0.7}, {"mean": 0.2}],
         "curve": {10: 0.6, 20: 0.75},
         "claims": [_claim("per_layer/blocks.0.attn.qkv.weight/acc/1", ">", "table/0/mean", claim="a"),
                    _claim("curve/20", ">=", "curve/10", tol=0.01, claim="b")]}
    data = json.loads(plotting.save_results(tmp_path, "09_x", r).read_text())
    a, b = data["claims"]
    assert a == {"claim": "a", "paper": "the paper's words", "how": "by hand", "holds": True,
                 "ours": {"lhs": 0.83, "lhs_key": "per_layer/blocks.0.attn.qkv.weight/acc/1", "op": ">",
                          "rhs": 0.7, "rhs_key": "table/0/mean", "tol": 0.0}}
    assert b["ours"]["lhs"] == 0.75 and b["ours"]["rhs"] == 0.6 and b["holds"] is True
    assert plotting.check_claims(data) == data["claims"]
    assert "claims" not in json.loads(plotting.save_results(tmp_path, "09_y", {"n": 1}).read_text())


def test_bad_claims_raise_naming_the_claim_and_key(tmp_path):
    import pytest

    r = {"a": {"b": [0.1, 0.2]}, "n": float("nan"), "s": "text", "inf": float("inf")}
    cases = [(_claim("a/c", ">", 0, claim="typo"), r"claim 'typo': lhs key 'a/c': no key 'c' in a"),
             (_claim(0, ">", "a/b/2", claim="idx"),
              r"claim 'idx': rhs key 'a/b/2': '2' is not an index of a/b"),
             (_claim("a/b/0/x", ">", 0, claim="deep"), r"claim 'deep': .*a/b/0 is a float"),
             (_claim("n", ">", 0, claim="nan"),
              r"claim 'nan': lhs key 'n' is None \(NaN is stored as None\), not a finite number"),
             (_claim("inf", ">", 0, claim="inf"), r"claim 'inf': lhs key 'inf' is inf, not a finite number"),
             (_claim(float("nan"), ">", 0, claim="lit"), r"claim 'lit': lhs value is None \(NaN"),
             (_claim("s", ">", 0, claim="str"), r"claim 'str': lhs key 's' is 'text'"),
             (_claim("a", ">", 0, claim="dict"), r"claim 'dict': lhs key 'a' is \{"),
             (_claim(1, "==", 0, claim="op"), r"claim 'op': unknown op '=='"),
             (_claim(1, ">", 0, claim="tol", tol=-1), r"claim 'tol': tol must be"),
             (dict(claim="short", lhs=1, op=">", rhs=0), r"claim 'short': missing fields \['how', 'paper'\]"),
             (_claim(1, ">", 0, claim="extra", holds=True), r"claim 'extra': .*unknown fields \['holds'\]")]
    for c, msg in cases:
        with pytest.raises(plotting.ClaimError, match=msg):
            plotting.save_results(tmp_path, "09_bad", {**r, "claims": [c]})
    assert not (tmp_path / "09_bad.json").exists()


def test_check_claims_catches_a_typed_verdict_and_a_changed_number(tmp_path):
    import pytest

    r = {"ours": 0.8, "chance": 0.05, "claims": [_claim("ours", ">", "chance", claim="above chance")]}
    data = json.loads(plotting.save_results(tmp_path, "09_x", r).read_text())
    assert data["claims"][0]["holds"] is True and plotting.check_claims(data)[0]["holds"] is True
    typed = json.loads(json.dumps(data))
    typed["claims"][0]["holds"] = False
    with pytest.raises(plotting.ClaimError, match="claim 'above chance': stored holds=False, but 0.8 > 0.05"):
        plotting.check_claims(typed)
    edited = json.loads(json.dumps(data))
    edited["ours"] = 0.01
    with pytest.raises(plotting.ClaimError, match=r"claim 'above chance': stored lhs 0.8 but 'ours' is 0.01"):
        plotting.check_claims(edited)
    with pytest.raises(plotting.ClaimError, match="not resolved"):
        plotting.check_claims(r)


def test_change_a_number_and_the_verdict_follows(tmp_path):
    r = {"within": 0.8, "across": 0.55, "claims": [_claim("within", ">", "across", tol=0.0)]}
    first = json.loads(plotting.save_results(tmp_path, "09_x", r).read_text())
    r["within"] = 0.5
    second = json.loads(plotting.save_results(tmp_path, "09_x", r).read_text())
    assert first["claims"][0]["holds"] is True and second["claims"][0]["holds"] is False
    assert plotting.check_claims(second)[0]["ours"]["lhs"] == 0.5
    again = json.loads(plotting.save_results(tmp_path, "09_y", {**second, "within": 0.9}).read_text())
    assert again["claims"][0]["holds"] is True and again["claims"][0]["ours"]["lhs"] == 0.9


def test_claims_table_lists_the_resolved_records(tmp_path):
    r = {"a": 0.3, "claims": [_claim("a", "<", 0.5, claim="small", tol=0.01)]}
    t = plotting.claims_table(plotting.save_results(tmp_path, "09_x", r))
    assert list(t.columns) == ["claim", "paper", "ours", "holds", "how"]
    assert t.iloc[0].tolist() == ["small", "the paper's words", "a 0.3 < 0.5 (tol 0.01)", True, "by hand"]
