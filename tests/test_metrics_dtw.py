"""Exact DTW: against Whisper's dtw_cpu (peer), brute force over all paths, and a planted path."""

import numpy as np
import pytest

from attnlens.metrics import dtw, path_cost


def _all_paths(N, M):
    """Every monotone path from (0, 0) to (N-1, M-1) with steps (1,1), (1,0), (0,1)."""

    def rec(i, j):
        if (i, j) == (N - 1, M - 1):
            yield [(i, j)]
            return
        for di, dj in ((1, 1), (1, 0), (0, 1)):
            a, b = i + di, j + dj
            if a < N and b < M:
                for rest in rec(a, b):
                    yield [(i, j)] + rest

    return rec(0, 0)


@pytest.mark.parametrize("seed", range(20))
def test_exact_rule_is_minimum_over_all_paths(seed):
    rng = np.random.default_rng(seed)
    N, M = rng.integers(1, 5, size=2)
    x = rng.random((N, M))
    if seed % 4 == 0:
        x = rng.integers(0, 3, size=(N, M)).astype(float)  # many ties
    rows, cols, total = dtw(x, return_cost=True)
    best = min(sum(x[i, j] for i, j in p) for p in _all_paths(N, M))
    assert total == pytest.approx(best, abs=1e-12)
    assert path_cost(x, rows, cols) == pytest.approx(best, abs=1e-12)
    assert (rows[0], cols[0], rows[-1], cols[-1]) == (0, 0, N - 1, M - 1)
    steps = set(zip(np.diff(rows), np.diff(cols)))
    assert steps <= {(1, 1), (1, 0), (0, 1)}


def test_planted_path():
    # a cheap corridor: token k is cheap on frames 3k..3k+2
    N, M = 6, 18
    x = np.ones((N, M))
    for k in range(N):
        x[k, 3 * k : 3 * k + 3] = 0
    rows, cols = dtw(x)
    for k in range(N):
        assert set(cols[rows == k]) == {3 * k, 3 * k + 1, 3 * k + 2}


def test_ties_go_to_time_first():
    # all costs equal: walking back from the end, ties take the time step, so tokens advance early
    rows, cols = dtw(np.zeros((2, 3)))
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 0), (1, 1), (1, 2)]
    rows_w, cols_w = dtw(np.zeros((2, 3)), rule="whisper")
    assert np.array_equal(rows_w, rows) and np.array_equal(cols_w, cols)


def test_whisper_quirk_costs_more_than_exact():
    # diagonal and token steps tie below the time step: whisper's rule takes the time step (costlier path)
    x = np.array([[1.0, 2.0, 0.0], [2.0, 2.0, 0.0], [1.0, 2.0, 1.0]])
    best = min(sum(x[i, j] for i, j in p) for p in _all_paths(3, 3))
    _, _, tot_e = dtw(x, return_cost=True)
    r_w, c_w, tot_w = dtw(x, rule="whisper", return_cost=True)
    assert tot_e == best == 4.0
    assert tot_w == path_cost(x, r_w, c_w) == 7.0


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        dtw(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"index \(1, 0\)"):
        dtw(np.array([[0.0, 1.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match="2-D"):
        dtw(np.zeros(3))
    with pytest.raises(ValueError, match="rule"):
        dtw(np.zeros((2, 2)), rule="fast")


whisper_timing = pytest.importorskip("whisper.timing", reason="openai-whisper is not installed (peer for DTW paths)")


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_whisper_rule_equals_whisper(seed, dtype):
    rng = np.random.default_rng(seed)
    N, M = int(rng.integers(2, 60)), int(rng.integers(2, 200))
    x = rng.standard_normal((N, M)).astype(dtype)
    if seed % 3 == 0:
        x = np.round(x).astype(dtype)  # heavy ties
    want = whisper_timing.dtw_cpu(x)
    rows, cols = dtw(x, rule="whisper")
    assert np.array_equal(np.stack([rows, cols]), want)


@pytest.mark.parametrize("seed", range(8))
def test_exact_rule_equals_whisper_on_random_costs(seed):
    # continuous random costs have no exact ties, so the two rules give the same path
    rng = np.random.default_rng(100 + seed)
    x = rng.random((int(rng.integers(2, 80)), int(rng.integers(2, 300))))
    rows, cols = dtw(x)
    assert np.array_equal(np.stack([rows, cols]), whisper_timing.dtw_cpu(x))


def test_whisper_rule_matches_peer_on_large_matrix():
    x = -(np.random.default_rng(7).random((300, 512)) ** 2)
    rows, cols = dtw(x, rule="whisper")
    assert np.array_equal(np.stack([rows, cols]), whisper_timing.dtw_cpu(x))


def test_whisper_rule_smallest_near_tie():
    # E·3 = [[1,3],[1,1],[3,3]], cost -E² in float32: two paths whose sums differ only in the last float32 bit.
    # Whisper's numba table is float64 (a float32 array times inf is typed float64), so it sees them apart.
    E = np.array([[1, 3], [1, 1], [3, 3]], dtype=np.float32) / np.float32(3)
    x = -(E**2)
    want = whisper_timing.dtw_cpu(x)
    assert want.tolist() == [[0, 1, 2, 2], [0, 0, 0, 1]]
    rows, cols = dtw(x, rule="whisper")
    assert np.stack([rows, cols]).tolist() == want.tolist()


def _tie_heavy_costs(rng, n):
    """Small matrices with exact and near ties: integer costs and -E² of E on a grid of thirds (float32)."""
    for k in range(n):
        N, M = int(rng.integers(1, 9)), int(rng.integers(1, 12))
        if k % 2 == 0:
            yield rng.integers(-2, 3, size=(N, M)).astype(np.float64)
        else:
            E = rng.integers(0, 4, size=(N, M)).astype(np.float32) / np.float32(3)
            yield -(E**2)


def test_whisper_rule_equals_whisper_on_tie_heavy_costs():
    # 400 small integer and -E² (float32) matrices: the paths must be Whisper's own, element for element
    rng = np.random.default_rng(2024)
    n_diff_from_exact = 0
    for x in _tie_heavy_costs(rng, 400):
        want = whisper_timing.dtw_cpu(x)
        rows, cols, total = dtw(x, rule="whisper", return_cost=True)
        assert np.array_equal(np.stack([rows, cols]), want), x
        assert total == pytest.approx(path_cost(x, rows, cols), abs=1e-9)
        n_diff_from_exact += not np.array_equal(np.stack(dtw(x)), want)
    # the inputs really are tie-heavy: the exact rule's tie-breaking picks another path on many of them
    assert n_diff_from_exact > 20


def test_lyrics_score_path_is_whisper_dtw_on_tie_heavy_maps():
    # ACE-Step's scorer runs dtw_cpu (Whisper's code) on -(E²) in float32; the score's path must be that path
    from attnlens.metrics import lyrics_alignment_score

    rng = np.random.default_rng(5)
    for _ in range(200):
        N, F = int(rng.integers(2, 7)), int(rng.integers(2, 10))
        maps = rng.integers(0, 4, size=(N, F)).astype(np.float32)
        if maps.max() == maps.min():
            continue
        r = lyrics_alignment_score(maps)
        E = (maps - maps.min()) / (maps.max() - maps.min())
        want = whisper_timing.dtw_cpu(-(E**2).astype(np.float32))
        assert np.array_equal(r.path, want)
        assert r.confidence == pytest.approx(float(E.astype(np.float64)[want[0], want[1]].mean()), abs=1e-12)
