"""Per-head argmax-sequence metrics: the seed's published row, hand-computed cases, scipy as the peer."""

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import attnlens as al
from attnlens.metrics import sequence as seq

M = al.metrics


def test_seed_row_diagonal_score_exact():
    # the seed's best folk head (LoRA with lyrics, layer 3 head 11): 29 lyric tokens over 250 frames
    row = dict(switch_rate=0.30120481927710846, token_span=0.9642857142857143, diag_corr=0.7723115484782588)
    assert M.diagonal_score(**row) == 0.2243159617998385
    # its switch rate and span come out of a 250-frame, 29-token sequence with 75 switches and span 27
    vals = np.arange(76) % 28  # 76 runs, consecutive runs differ -> 75 switches; tokens 0..27
    a = np.repeat(vals, [3] * 75 + [250 - 3 * 75])
    assert len(a) == 250 and a.max() - a.min() == 27
    assert M.switch_rate(a) == 0.30120481927710846
    assert M.token_span(a, 29) == 0.9642857142857143


def test_seed_table_rows_are_consistent():
    # published (rounded) rows: diagonal score, correlation; switch*span must lie in [0, 1]
    for score, corr in [(0.224, 0.77), (0.188, 0.41), (0.165, 0.82), (0.146, 0.69), (0.090, 0.16)]:
        assert 0 < score / corr <= 1
        assert M.diagonal_score(diag_corr=corr, token_span=1.0, switch_rate=score / corr) == pytest.approx(score)


def test_hand_computed_small_sequence():
    a = np.array([0, 0, 1, 1, 2, 1])  # F = 6, n = 4
    assert M.switch_rate(a) == 3 / 5
    assert M.token_span(a, 4) == 2 / 3
    f = np.arange(6)
    r = np.corrcoef(f, a)[0, 1]
    assert M.diag_corr(a) == pytest.approx(r, abs=1e-15)
    assert M.diagonal_score(diag_corr=M.diag_corr(a), token_span=2 / 3, switch_rate=3 / 5) == pytest.approx(
        r * 2 / 3 * 3 / 5, abs=1e-15
    )
    # Spearman with ties by hand: ranks of a = [1.5, 1.5, 4, 4, 6, 4]
    ra = np.array([1.5, 1.5, 4, 4, 6, 4])
    rho = np.corrcoef(np.arange(1, 7), ra)[0, 1]
    assert M.monotonic_alignment(a, 4) == pytest.approx(rho * 2 / 3, abs=1e-15)
    idx, frac = M.dominant_token(a, 4)
    assert (idx, frac) == (1, 3 / 6)


def test_dominant_tie_takes_smallest_index():
    assert M.dominant_token([2, 2, 0, 0, 1], 3) == (0, 0.4)


def test_staircase_and_sink_and_reverse():
    a = np.repeat(np.arange(10), 25)  # clean staircase over 10 tokens, 250 frames
    assert M.monotonic_alignment(a, 10) == pytest.approx(scipy.stats.spearmanr(np.arange(250), a)[0])
    assert M.monotonic_alignment(a, 10) > 0.99
    # the diagonal score of a clean staircase is bounded by (n-1)/(F-1)
    assert M.diagonal_score(np.eye(10)[a]) <= 9 / 249 + 1e-15
    sink = np.full(250, 3)
    assert M.monotonic_alignment(sink, 10) == 0.0 and M.diag_corr(sink) == 0.0 and M.switch_rate(sink) == 0.0
    assert M.monotonic_alignment(a[::-1].copy(), 10) == 0.0
    assert M.diag_corr(a[::-1].copy()) < 0 and M.diagonal_score(np.eye(10)[a[::-1]]) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_vectorized_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 30))
    a = rng.integers(0, n, size=(3, 4, 57))
    a[0, 0] = np.sort(a[0, 0])
    mask = rng.random((3, 4, 57)) > 0.3
    ma = M.monotonic_alignment(a, n)
    ms = M.monotonic_alignment(a, n, mask)
    dc = M.diag_corr(a)
    for i in range(3):
        for j in range(4):
            x = a[i, j]
            rho = scipy.stats.spearmanr(np.arange(57), x)[0]
            span = (x.max() - x.min()) / (n - 1)
            assert ma[i, j] == pytest.approx(max(rho, 0) * span, abs=1e-12)
            xm = x[mask[i, j]]
            rho_m = scipy.stats.spearmanr(np.flatnonzero(mask[i, j]), xm)[0]
            assert ms[i, j] == pytest.approx(max(rho_m, 0) * (xm.max() - xm.min()) / (n - 1), abs=1e-12)
            assert dc[i, j] == pytest.approx(scipy.stats.pearsonr(np.arange(57), x)[0], abs=1e-12)


def test_frames_as_indices_equal_mask():
    a = np.array([0, 3, 1, 2, 2, 4, 0])
    assert M.monotonic_alignment(a, 5, frames=[1, 2, 3, 5]) == M.monotonic_alignment(
        a, 5, frames=np.array([0, 1, 1, 1, 0, 1, 0], bool)
    )


def test_degenerate_cases_are_defined():
    assert M.switch_rate([4]) == 0.0
    assert M.diag_corr([4]) == 0.0
    assert M.monotonic_alignment([0], 5) == 0.0
    assert M.token_span([0, 0, 0], 1) == 0.0
    assert M.monotonic_alignment([0, 0, 0], 1) == 0.0
    assert M.dominant_token([-1, -1], 0) == (-1, 0.0)
    assert M.monotonic_alignment([1, 2, 3], 5, frames=np.array([True, False, False])) == 0.0
    assert M.token_span([1, 2, 3], 5, frames=np.zeros(3, bool)) == 0.0


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        M.token_span([0, 5], 3)
    with pytest.raises(ValueError, match="integer"):
        M.switch_rate([0.5, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        M.switch_rate([np.nan, 1.0])
    with pytest.raises(ValueError, match="non-finite"):
        M.diagonal_score(np.array([[np.nan, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="either"):
        M.diagonal_score(np.eye(3), diag_corr=0.5)
    with pytest.raises(ValueError, match="NaN"):
        M.diagonal_score(diag_corr=float("nan"), token_span=1.0, switch_rate=1.0)


def test_sung_frames_rule():
    lm = np.array([0.0, 0.1, 0.3, 0.6, 0.5, 0.29])
    assert M.sung_frames(lm).tolist() == [False, False, True, True, True, False]
    assert M.sung_frames(lm, 0.5, relative=False).tolist() == [False, False, False, True, True, False]
    assert not M.sung_frames(np.zeros(4)).any()


@settings(max_examples=60, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 4), st.integers(1, 40)), elements=st.integers(0, 6)))
def test_ranges_property(a):
    n = 7
    for v in (M.switch_rate(a), M.token_span(a, n), M.monotonic_alignment(a, n), seq.dominant_token(a, n)[1]):
        v = np.asarray(v)
        assert np.all((v >= 0) & (v <= 1))
    c = np.asarray(M.diag_corr(a))
    assert np.all((c >= -1) & (c <= 1))
    d = np.asarray(
        M.diagonal_score(diag_corr=M.diag_corr(a), token_span=M.token_span(a, n), switch_rate=M.switch_rate(a))
    )
    assert np.all((d >= 0) & (d <= 1))
