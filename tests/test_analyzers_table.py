"""al.analyze / summarize_heads / find_alignment_heads / head_report on synthetic captures with planted answers."""

import json

import numpy as np
import pytest
import torch

import attnlens as al
from attnlens.analyzers.synthetic import capture_from_maps, staircase_maps, synthetic_layout
from attnlens.captures.layout import ItemLayout
from attnlens.captures.result import NotCapturedError

WORDS = [0, 10, 20, 30, 40, 50]


def _capture(keep_maps=True):
    """2 steps x 2 layers x 1 item x 3 heads: head 0 a staircase, head 1 a sink on sung token 4, head 2 reversed."""
    it = synthetic_layout()
    stair = staircase_maps(it, WORDS)
    L = it.lyric_positions()
    sink = stair.copy()
    sink[:, L] = stair[:, L].mean(0)  # same lyric mass per frame, no peak ...
    sink[:, L[4]] += 0.05
    sink[:, L[:4]] -= 0.0125
    rev = stair[::-1].copy()
    heads = np.stack([stair, sink, rev])  # [head, frame, key]
    maps = np.broadcast_to(heads, (2, 2, 1) + heads.shape).copy()
    return capture_from_maps(maps, [it], layers=[3, 7], steps=[0, 1], timesteps=[1.0, 0.5], keep_maps=keep_maps)


def test_columns_and_values():
    cap = _capture()
    df = al.analyze(cap)
    assert len(df) == 2 * 2 * 1 * 3
    for c in [
        "step", "timestep", "layer", "head", "batch", "lyric_mass", "entropy", "entropy_lyric", "dominant_fraction",
        "dominant_token_idx", "dominant_token_label", "switch_rate", "token_span", "diag_corr", "diagonal_score",
        "monotonic_alignment", "monotonic_alignment_sung", "lyric_meta_mass", "timbre_mass", "caption_mass",
        "padding_mass",
    ]:  # fmt: skip
        assert c in df.columns
    assert not df.select_dtypes("number").isna().any().any()
    masses = df[["lyric_mass", "lyric_meta_mass", "timbre_mass", "caption_mass", "padding_mass"]].sum(1)
    assert np.allclose(masses, 1.0, atol=1e-6)
    assert df["lyric_mass"].to_numpy() == pytest.approx(0.8, abs=1e-6)
    assert sorted(df["layer"].unique()) == [3, 7] and df["timestep"].tolist()[:3] == [1.0, 1.0, 1.0]
    h = df[(df.step == 1) & (df.layer == 7)].set_index("head")
    # staircase head: 10 tokens, 5 frames each over 50 frames
    a = np.repeat(np.arange(10), 5)
    assert h.loc[0, "switch_rate"] == 9 / 49 and h.loc[0, "token_span"] == 1.0
    assert h.loc[0, "diag_corr"] == pytest.approx(np.corrcoef(np.arange(50), a)[0, 1], abs=1e-12)
    assert h.loc[0, "diagonal_score"] == pytest.approx(h.loc[0, "diag_corr"] * 9 / 49, abs=1e-15)
    assert h.loc[0, "monotonic_alignment"] == pytest.approx(al.metrics.monotonic_alignment(a, 10), abs=1e-12)
    assert h.loc[0, "dominant_fraction"] == 0.1 and h.loc[0, "dominant_token_label"] == " wal"
    # sink head: token 4 everywhere
    assert h.loc[1, "dominant_fraction"] == 1.0 and h.loc[1, "dominant_token_idx"] == 4
    assert h.loc[1, "dominant_token_label"] == " t" and h.loc[1, "monotonic_alignment"] == 0.0
    # reversed staircase: negative correlation -> 0 scores
    assert h.loc[2, "diag_corr"] < -0.9 and h.loc[2, "diagonal_score"] == 0.0 and h.loc[2, "monotonic_alignment"] == 0.0


def test_stats_only_equals_maps_only():
    full = _capture()
    stats_only = _capture(keep_maps=False)
    maps_only = _capture()
    maps_only.stats = {}
    a, b, c = al.analyze(full), al.analyze(stats_only), al.analyze(maps_only)
    assert a.equals(b) and a.equals(c)


def test_sung_frames_restrict_the_score():
    it = synthetic_layout()
    P = staircase_maps(it, WORDS)
    L = it.lyric_positions()
    # first 10 frames: an instrumental intro, lyric mass 0.05 with the argmax on the last token
    P[:10] = (1 - 0.05) / (it.n_keys - len(L))
    P[:10, L] = 0.05 * 0.1 / (len(L) - 1)
    P[:10, L[-1]] = 0.05 * 0.9
    cap = capture_from_maps(P[None, None, None, None], [it])
    row = al.analyze(cap).iloc[0]
    assert row["sung_fraction"] == 0.8
    a = np.repeat(np.arange(10), 5)
    a[:10] = 9
    mask = np.arange(50) >= 10
    assert row["monotonic_alignment_sung"] == pytest.approx(al.metrics.monotonic_alignment(a, 10, mask), abs=1e-12)
    assert row["monotonic_alignment_sung"] > row["monotonic_alignment"]


def test_no_lyric_item_gives_defined_values():
    it = ItemLayout.from_segment_lengths(timbre=1, caption=3)
    P = np.random.default_rng(0).dirichlet(np.ones(4), size=12)
    df = al.analyze(capture_from_maps(P[None, None, None, None], [it]))
    r = df.iloc[0]
    assert r["dominant_token_idx"] == -1 and r["dominant_token_label"] == ""
    for c in ("switch_rate", "token_span", "diag_corr", "diagonal_score", "monotonic_alignment", "lyric_mass"):
        assert r[c] == 0.0
    assert not df.select_dtypes("number").isna().any().any()


def test_nan_in_stats_is_named():
    cap = _capture(keep_maps=False)
    cap.stats["entropy"][1, 0, 0, 2, 7] = float("nan")
    with pytest.raises(ValueError, match=r"entropy.*\(1, 0, 0, 2, 7\)"):
        al.analyze(cap)


def test_nothing_kept_is_a_clear_error():
    cap = _capture(keep_maps=False)
    cap.stats = {}
    with pytest.raises(NotCapturedError, match="neither"):
        al.analyze(cap)


def test_summarize_and_find_heads():
    cap = _capture()
    df = al.analyze(cap)
    s = al.summarize_heads(df)
    assert len(s) == 6 and (s["n_rows"] == 2).all()
    assert (s.iloc[0]["head"], s.iloc[0]["monotonic_alignment_sung"]) == (
        0,
        df[df["head"] == 0].monotonic_alignment_sung.mean(),
    )
    by_layer = al.summarize_heads(df, by="layer", sort_by=None)
    assert by_layer["layer"].tolist() == [3, 7] and (by_layer["n_rows"] == 6).all()
    top = al.find_alignment_heads(cap, top_k=2)
    assert top.attrs["heads"] == [(3, 0), (7, 0)]
    assert al.find_alignment_heads(cap, top_k=1, step=-1).attrs["heads"] == [(3, 0)]
    with pytest.raises(ValueError, match="sort_by"):
        al.summarize_heads(df, sort_by="nope")


def test_head_report(tmp_path):
    cap = _capture()
    rep = al.head_report(cap, top_k=2)
    d = rep.to_dict()
    assert set(d) == {
        "meta", "head_stats", "top_by_diagonal_score", "top_by_monotonic_alignment", "top_by_switch_rate",
        "most_collapsed", "sink_tokens",
    }  # fmt: skip
    assert len(d["head_stats"]) == 6 and d["meta"]["step"] == 1 and d["meta"]["timestep"] == 0.5
    fields = {"layer_idx", "head_idx", "switch_rate", "dominant_fraction", "dominant_token_idx", "dominant_token_label",
              "token_span", "entropy_mean", "diag_corr", "diagonal_score", "monotonic_alignment"}  # fmt: skip
    assert fields <= set(d["head_stats"][0])
    assert [(r["layer_idx"], r["head_idx"]) for r in d["top_by_monotonic_alignment"]] == [(3, 0), (7, 0)]
    assert d["most_collapsed"][0]["dominant_fraction"] == 1.0 and d["most_collapsed"][0]["head_idx"] == 1
    assert d["sink_tokens"] == [
        {"token_idx": 4, "label": " t", "n_heads": 2, "share_of_heads": 2 / 6, "mean_fraction": 1.0}
    ]
    p = rep.to_json(tmp_path / "stats.json")
    assert json.loads(open(p).read()) == json.loads(json.dumps(d))
    assert [f.name for f in tmp_path.iterdir()] == ["stats.json"]


def test_benchmark_shape_is_fast():
    """24 layers x 16 heads x 8 steps x 250 frames from statistics alone (the full timing is in benchmarks/)."""
    import time

    S, L, H, F, n = 8, 24, 16, 250, 29
    it = synthetic_layout(lines=[["w"] * 14, ["v"] * 15], tokens_per_word=1)
    rng = np.random.default_rng(0)
    from attnlens.captures.result import Capture

    mass = rng.dirichlet(np.ones(5), size=(S, L, 1, H, F)).astype(np.float32)
    cap = Capture(
        layers=list(range(L)), heads=list(range(H)), steps=list(range(S)), timesteps=[1.0 - s / 8 for s in range(S)],
        layout=al.Layout([it]), batch_labels=["cond:0"],
        stats={
            "entropy": torch.rand(S, L, 1, H, F), "mass": torch.from_numpy(mass),
            "argmax": torch.randint(0, it.n_keys, (S, L, 1, H, F), dtype=torch.int32),
            "entropy_lyric": torch.rand(S, L, 1, H, F),
            "lyric_argmax": torch.randint(0, n, (S, L, 1, H, F), dtype=torch.int32),
        },
    )  # fmt: skip
    al.analyze(cap)
    t = time.perf_counter()
    df = al.analyze(cap)
    assert len(df) == S * L * H
    assert time.perf_counter() - t < 3.0  # budget 1 s; loose here for a shared machine
