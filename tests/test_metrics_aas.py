"""ACE-Step's lyrics alignment score, on hand-computed energy maps."""

import numpy as np
import pytest

from attnlens.metrics import lyrics_alignment_score, tag_mask_from_tokens

E = np.array(
    [
        [1.0, 0.5, 0.0, 0.0],
        [0.0, 1.0, 0.2, 0.0],
        [0.0, 0.0, 0.05, 0.9],
    ]
)


def test_hand_computed_score():
    r = lyrics_alignment_score(E)
    assert r.coverage == 1.0 and r.monotonicity == 1.0
    # best path on -E^2: (0,0) (0,1) (1,1) (1,2) (2,2) (2,3)  (sum of E^2 = 3.1025, the largest)
    assert r.path.T.tolist() == [[0, 0], [0, 1], [1, 1], [1, 2], [2, 2], [2, 3]]
    assert r.confidence == pytest.approx((1 + 0.5 + 1 + 0.2 + 0.05 + 0.9) / 6, abs=1e-7)
    assert r.score == 0.6083
    assert r.to_dict()["score"] == 0.6083 and float(r) == 0.6083


def test_min_max_and_head_average():
    heads = np.stack([E * 0.02 + 0.001, E * 0.04 + 0.003])  # mean = 0.03 E + 0.002 -> same E after min-max
    r = lyrics_alignment_score(heads)
    assert np.allclose(r.energy, E, atol=1e-6)
    assert r.score == 0.6083


def test_coverage_and_tags():
    Ec = E.copy()
    Ec[1] = [0.0, 0.09, 0.05, 0.0]  # max 0.09 <= 0.1: not covered
    r = lyrics_alignment_score(Ec)
    assert r.coverage == pytest.approx(2 / 3)
    r_tag = lyrics_alignment_score(Ec, tag_mask=[False, True, False])  # the weak row is a tag: not scored
    assert r_tag.coverage == 1.0
    # confidence counts every path step, tag rows included; score = cov^2 mono^2 conf
    assert r.score_raw == pytest.approx((2 / 3) ** 2 * r.monotonicity**2 * r.confidence)


def test_monotonicity_tolerance_nine_frames():
    F = 30
    base = np.zeros((2, F))
    base[0, 25] = 1.0
    base[1, 17] = 1.0  # 8 frames back: within the 9-frame tolerance
    assert lyrics_alignment_score(base).monotonicity == 1.0
    base[1, 17], base[1, 15] = 0.0, 1.0  # 10 frames back
    r = lyrics_alignment_score(base)
    assert r.monotonicity == 0.0 and r.score == 0.0
    # energies <= 0.01 are ignored for centroids
    base[1] = 0.005
    base[1, 26] = 1.0
    base[0] = 0.0
    base[0, 3] = 1.0
    assert lyrics_alignment_score(base).monotonicity == 1.0


def test_flat_map_is_zero():
    r = lyrics_alignment_score(np.full((3, 5), 0.2))
    assert r.coverage == 0.0 and r.score == 0.0 and r.confidence == 0.0


def test_tag_mask_from_tokens():
    toks = ["[", "verse", "]", "\n", " walk", "ing", "[chorus]", " sun"]
    assert tag_mask_from_tokens(toks).tolist() == [True, True, True, False, False, False, True, False]


def test_bad_input():
    with pytest.raises(ValueError, match="tag_mask"):
        lyrics_alignment_score(E, tag_mask=[True])
    bad = E.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        lyrics_alignment_score(bad)
    with pytest.raises(ValueError, match="head, token, frame"):
        lyrics_alignment_score(np.zeros((1, 2, 3, 4)))
