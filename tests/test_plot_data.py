"""The numbers behind the figures: rows, grouping, renormalization, pooling, sinks, score matrices, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_plot_helpers import make_capture, make_layout

import attnlens.plot as alp
from attnlens.captures.layout import ItemLayout, Layout
from attnlens.captures.result import NotCapturedError
from attnlens.plot._data import pool_frames, segment_spans


def test_rows_words_lyrics_all():
    item = make_layout(n_padding=3, n_caption=7)
    words = alp.key_rows(item, item.n_keys, "words")
    assert [r.label for r in words] == ["walking", "down", "the", "morning", "road", "the"]
    # each word row holds exactly the keys with that word index
    for w, r in enumerate(words):
        assert list(r.keys) == [k for k in range(item.n_keys) if item.word_index[k] == w]
    assert [r.line for r in words] == [0, 0, 0, 1, 1, 1]
    pieces = alp.key_rows(item, item.n_keys, "words", merge=False)
    assert [r.label for r in pieces][:4] == ["walk", "·ing", "do", "·wn"]
    lyr = [r.label for r in alp.key_rows(item, item.n_keys, "lyrics")]
    assert lyr == ["<header>", "[verse]", "↵", "walking", "down", "the", "↵", "morning", "road", "the", "↵", "<end>"]
    all_rows = alp.key_rows(item, item.n_keys, "all")
    labels = [r.label for r in all_rows]
    assert labels[12:] == ["timbre[0]", "#", "Caption", "↵", "folk,", "padding ×3"]
    # every key appears in exactly one row
    keys = sorted(k for r in all_rows for k in r.keys)
    assert keys == list(range(item.n_keys))
    assert [s[0] for s in segment_spans(all_rows)] == ["lyrics", "timbre", "caption", "padding"]
    unmerged = alp.key_rows(item, item.n_keys, "all", merge=False)
    assert len(unmerged) == item.n_keys


def test_unknown_layout_needs_keys_all():
    unknown = ItemLayout.unknown(7)
    with pytest.raises(ValueError, match="keys='all'"):
        alp.key_rows(unknown, 7, "words")
    assert [r.label for r in alp.key_rows(unknown, 7, "all")][:2] == ["key[0]", "key[1]"]
    with pytest.raises(ValueError, match="7 keys but the map has 8"):
        alp.key_rows(unknown, 8, "all")


def test_map_data_sums_pieces_per_word():
    cap = make_capture()
    item = cap.layout[0]
    md = alp.map_data(cap, step=-1, layer=1, head=2)
    p = cap.maps[1, 1, 0, 2].double().numpy()  # [frame, key]
    # independent: loop over keys and add each sung key to its word's row
    want = np.zeros((len(item.words), p.shape[0]))
    for k in range(item.n_keys):
        if item.segments[k] == "lyric":
            want[item.word_index[k]] += p[:, k]
    np.testing.assert_allclose(md.values, want, rtol=1e-6, atol=1e-7)
    assert md.values.shape == (6, 50) and md.pool_factor == 1
    assert "step 1 (t=0.5)" in md.title and "layer 1" in md.title and "head 2" in md.title
    np.testing.assert_allclose(md.x_edges()[[0, 1, -1]], [0.0, 0.08, 4.0])


def test_lyric_renormalization_and_layer_mean():
    cap = make_capture()
    item = cap.layout[0]
    L = item.lyric_positions()
    wid = item.lyric_word_ids()
    md = alp.map_data(cap, step=0, layer=[0, 2], head=3, normalize="lyric")
    want = np.zeros((6, 50))
    for layer in (0, 2):
        p = cap.maps[0, layer, 0, 3].double().numpy()
        a = p[:, L] / p[:, L].sum(1, keepdims=True)  # A[f, i] = P[f, L_i] / sum_i P[f, L_i]
        for i, w in enumerate(wid):
            want[w] += a[:, i] / 2
    np.testing.assert_allclose(md.values, want, rtol=1e-5)
    np.testing.assert_allclose(md.values.sum(0), 1.0, rtol=1e-5)
    assert "mean over layers 0, 2" in md.title
    assert any("renormalized" in n for n in md.notes)
    with pytest.raises(ValueError, match="keys='words' or keys='lyrics'"):
        alp.map_data(cap, keys="all", normalize="lyric")


def test_pool_frames_by_hand():
    x = np.array([[1.0, 5.0, 2.0, -7.0, 3.0]])
    np.testing.assert_array_equal(pool_frames(x, 2, "max"), [[5.0, 2.0, 3.0]])
    np.testing.assert_allclose(pool_frames(x, 2, "mean"), [[3.0, -2.5, 3.0]])
    np.testing.assert_array_equal(pool_frames(x, 2, "absmax"), [[5.0, -7.0, 3.0]])
    np.testing.assert_array_equal(pool_frames(x, 1, "max"), x)
    with pytest.raises(ValueError, match="pool must be one of"):
        pool_frames(x, 2, "median")


def test_map_data_pooling_is_stated_and_keeps_every_frame():
    cap = make_capture(n_frames=50)
    full = alp.map_data(cap, -1, 0, 0, pool=None)
    md = alp.map_data(cap, -1, 0, 0, pool="max", max_frames=12)
    assert md.pool_factor == 5 and md.values.shape == (6, 10)
    np.testing.assert_allclose(md.values[:, 3], full.values[:, 15:20].max(1))
    assert any("max-pooled" in n and "5 frames" in n and "50 → 10" in n for n in md.notes)
    np.testing.assert_allclose(md.x_edges()[-1], 4.0)


def test_sink_is_the_key_with_largest_mean_weight():
    cap = make_capture()
    item = cap.layout[0]
    timbre = item.segments.index("timbre")
    md = alp.map_data(cap, -1, 1, 0, keys="all")  # odd layers carry a planted timbre sink
    p = cap.maps[1, 1, 0, 0].double().numpy()
    assert md.sink_key == int(p.mean(0).argmax()) == timbre
    assert md.rows[md.sink_row].label == "timbre[0]"
    np.testing.assert_allclose(md.sink_weight, p.mean(0)[timbre], rtol=1e-6)
    words = alp.map_data(cap, -1, 1, 0, keys="words")
    assert words.sink_row == -1 and "outside this view" in words.sink_note()


def test_not_captured_errors_name_the_capture_call():
    cap = make_capture(maps=False)
    with pytest.raises(NotCapturedError, match=r"maps=True"):
        alp.map_data(cap, -1, 0, 0)
    cap = make_capture()
    with pytest.raises(NotCapturedError, match=r"al.capture\(\.\.\., layers=\[5\]\)"):
        alp.map_data(cap, -1, 5, 0)
    with pytest.raises(NotCapturedError, match=r"heads=\[9\]"):
        alp.map(cap, -1, 0, 9)
    with pytest.raises(NotCapturedError, match="maps='mean'"):
        alp.map_data(cap, "mean", 0, 0)


def test_score_matrix_planted():
    rows = []
    for step in (3, 7):
        for layer in range(3):
            for head in range(4):
                rows.append({"step": step, "batch": 0, "layer": layer, "head": head, "s": layer * 10 + head + step})
    df = pd.DataFrame(rows)
    m = alp.score_matrix(df, "s")
    # mean over steps 3 and 7: layer*10 + head + 5
    np.testing.assert_allclose(m.to_numpy(), np.arange(3)[:, None] * 10 + np.arange(4)[None, :] + 5)
    assert m.attrs["averaged"] == ["steps 3, 7"] and m.attrs["missing"] == 0
    last = alp.score_matrix(df, "s", step=-1)
    np.testing.assert_allclose(last.to_numpy()[2, 3], 2 * 10 + 3 + 7)
    assert last.attrs["selected"] == ["step 7"]
    holes = alp.score_matrix(df[~((df["layer"] == 1) & (df["head"] == 2))], "s")
    assert holes.attrs["missing"] == 1 and np.isnan(holes.loc[1, 2])
    with pytest.raises(ValueError, match=r"no column\(s\) \['nope'\]"):
        alp.score_matrix(df, "nope")
    with pytest.raises(ValueError, match="not numeric"):
        alp.score_matrix(df.assign(t="x"), "t")
    with pytest.raises(ValueError, match=r"step \[5\] not in the table"):
        alp.score_matrix(df, "s", step=5)
    with pytest.raises(ValueError, match="NaN"):
        alp.score_matrix(df.assign(s=np.nan), "s")


def test_map_data_on_a_layout_without_lyrics_info():
    cap = make_capture()
    cap.layout = Layout(items=[ItemLayout.unknown(cap.maps.shape[-1])])
    with pytest.raises(ValueError, match="layout unknown"):
        alp.map_data(cap, -1, 0, 0)
    md = alp.map_data(cap, -1, 0, 0, keys="all")
    np.testing.assert_allclose(md.values, cap.maps[-1, 0, 0, 0].numpy().T, rtol=1e-6)
    assert isinstance(cap.maps, torch.Tensor)
