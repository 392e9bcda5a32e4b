"""Per-frame masses, entropies and the reference frame_stats, against hand-computed values."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import attnlens as al
from attnlens.captures.layout import ItemLayout, Layout
from attnlens.metrics.frame_stats import frame_stats

M = al.metrics


def _item():
    # keys: meta, lyric, lyric, timbre, caption, padding
    return ItemLayout(
        segments=["lyric_meta", "lyric", "lyric", "timbre", "caption", "padding"],
        tokens=["[", " hi", " yo", None, "c", None],
    )


P = np.array(
    [
        [0.1, 0.2, 0.2, 0.1, 0.3, 0.1],
        [0.0, 0.6, 0.0, 0.0, 0.4, 0.0],
    ]
)


def test_hand_computed():
    it = _item()
    m = M.segment_masses(P, it)
    assert m["lyric"].tolist() == pytest.approx([0.4, 0.6])
    assert m["lyric_meta"].tolist() == pytest.approx([0.1, 0.0])
    assert m["timbre"].tolist() == pytest.approx([0.1, 0.0])
    assert m["caption"].tolist() == pytest.approx([0.3, 0.4])
    assert m["padding"].tolist() == pytest.approx([0.1, 0.0])
    assert M.lyric_mass(P, it).tolist() == pytest.approx([0.4, 0.6])
    h0 = -(3 * 0.1 * math.log(0.1) + 2 * 0.2 * math.log(0.2) + 0.3 * math.log(0.3)) / math.log(6)
    h1 = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(6)
    assert M.entropy(P).tolist() == pytest.approx([h0, h1], abs=1e-14)
    assert M.entropy(P, normalized=False)[1] == pytest.approx(h1 * math.log(6), abs=1e-14)
    A = M.lyric_map(P, it)
    assert np.allclose(A, [[0.5, 0.5], [1.0, 0.0]])
    assert M.entropy_lyric(P, it).tolist() == pytest.approx([1.0, 0.0])
    fs = frame_stats(P, it)
    assert fs["argmax"].tolist() == [4, 1]
    assert fs["lyric_argmax"].tolist() == [0, 0]  # first on ties
    assert fs["entropy"].tolist() == pytest.approx([h0, h1], abs=1e-7)
    assert fs["mass"].dtype == np.float32 and fs["argmax"].dtype == np.int32
    assert fs["mass"][1].tolist() == pytest.approx([0.6, 0.0, 0.0, 0.4, 0.0])
    # torch in -> torch out, same values
    ft = frame_stats(torch.tensor(P), it)
    assert isinstance(ft["entropy"], torch.Tensor)
    assert np.array_equal(ft["entropy"].numpy(), fs["entropy"])


def test_layout_forms():
    assert M.lyric_mass(P, Layout(items=[_item()])).tolist() == pytest.approx([0.4, 0.6])
    with pytest.raises(ValueError, match="2 batch items"):
        M.lyric_mass(P, Layout(items=[_item(), _item()]))
    with pytest.raises(ValueError, match="5 keys"):
        M.lyric_mass(P[:, :5], _item())


def test_degenerate_layouts():
    no_lyric = ItemLayout.from_segment_lengths(timbre=1, caption=2)
    Q = np.array([[0.2, 0.3, 0.5]])
    fs = frame_stats(Q, no_lyric)
    assert fs["lyric_argmax"].tolist() == [-1] and fs["entropy_lyric"].tolist() == [0.0]
    assert M.entropy_lyric(Q, no_lyric).tolist() == [0.0]
    with pytest.raises(ValueError, match="no sung lyric"):
        M.lyric_map(Q, no_lyric)
    one_key = ItemLayout.from_segment_lengths(lyric=1)
    fs1 = frame_stats(np.ones((3, 1)), one_key)
    assert fs1["entropy"].tolist() == [0, 0, 0] and fs1["entropy_lyric"].tolist() == [0, 0, 0]
    assert fs1["lyric_argmax"].tolist() == [0, 0, 0]
    # lyric mass exactly 0: A uniform -> entropy_lyric 1, lyric_argmax 0
    it = ItemLayout.from_segment_lengths(lyric=2, caption=1)
    f0 = frame_stats(np.array([[0.0, 0.0, 1.0]]), it)
    assert f0["entropy_lyric"].tolist() == [1.0] and f0["lyric_argmax"].tolist() == [0]


def test_bad_maps_name_the_position():
    it = _item()
    bad = P.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"index \(1, 3\)"):
        frame_stats(bad, it)
    with pytest.raises(ValueError, match=r"index \(1, 3\)"):
        M.segment_masses(bad, it)
    z = P.copy()
    z[1] = 0
    with pytest.raises(ValueError, match="all-zero row at index \\(1,\\)"):
        frame_stats(z, it)
    neg = P.copy()
    neg[0, 0] = -0.1
    with pytest.raises(ValueError, match="negative"):
        M.entropy(neg)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.just(6)), elements=st.floats(0.0, 1.0)))
def test_masses_sum_to_one_and_entropies_in_range(raw):
    raw = raw + 1e-3  # no all-zero rows
    Pm = raw / raw.sum(-1, keepdims=True)
    it = _item()
    total = sum(M.segment_masses(Pm, it).values())
    assert np.allclose(total, 1.0, atol=1e-12)
    fs = frame_stats(Pm, it)
    assert np.allclose(fs["mass"].sum(-1), 1.0, atol=1e-6)
    for k in ("entropy", "entropy_lyric"):
        assert np.all((fs[k] >= 0) & (fs[k] <= 1 + 1e-6))
    e = M.entropy(Pm)
    assert np.all((e >= 0) & (e <= 1 + 1e-12))


def test_the_reference_reducer_agrees_with_the_metric_definition_under_a_key_mask():
    """reducers.stats (the capture's reference path, from q and k) against metrics.frame_stats (the definition, from
    the maps): one definition, every implementation tested against it."""
    from attnlens.captures import ItemLayout
    from attnlens.reducers.stats import reduce_reference, segment_onehot
    from attnlens.segments import Segments

    voc = Segments(names=("text", "style", "pad"), sequence="text")
    it = ItemLayout(segments=["text"] * 5 + ["style"] * 2 + ["pad"] * 3, vocabulary=voc)
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 6, 2, 8, generator=g), torch.randn(1, 10, 1, 8, generator=g)
    valid = torch.tensor([[True, False, True, True, True, True, False, True, True, False]])
    codes = torch.as_tensor(it.segment_codes())[None].masked_fill(~valid, -2)
    lidx = torch.tensor([[0, -1, 2, 3, 4] + [-1] * 5])
    stats, maps = reduce_reference(
        q, k, 0.4, torch.tensor([0, 0]), segment_onehot(codes, 3), lidx, (lidx >= 0).sum(1), True, key_valid=valid
    )
    ref = frame_stats(maps[0], it, key_valid=valid[0])
    for name in ("entropy", "mass", "entropy_lyric"):
        assert torch.allclose(stats[name][0], ref[name], atol=1e-6), name
    for name in ("argmax", "lyric_argmax"):
        assert torch.equal(stats[name][0], ref[name]), name
