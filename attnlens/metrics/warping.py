"""Exact dynamic time warping on a cost matrix, compiled with numba.

``dtw(cost)`` returns the monotone path from ``(0, 0)`` to ``(N-1, M-1)`` through ``cost[N, M]`` (steps (1, 1),
(1, 0), (0, 1)) that minimizes the summed cost, by full dynamic programming (no windowing, no coarsening):

    D[0, 0] = 0, D[i, 0] = D[0, j] = inf,   D[i, j] = cost[i-1, j-1] + min(D[i-1, j-1], D[i-1, j], D[i, j-1])

By convention (Whisper's and ACE-Step's) rows are tokens and columns are time frames. Two rules:

``rule="exact"`` (default): ``D`` in float64; the step is a true minimum; ties go to the time step (0, 1), then to
    the diagonal, then to the token step (1, 0). The path is always a minimum-cost path.
``rule="whisper"``: bit-for-bit the rule of ``whisper.timing.dtw_cpu`` and ACE-Step's ``dtw_cpu``: the diagonal is
    taken only if strictly smaller than both others, the token step only if strictly smaller than both others,
    otherwise the time step — so when the diagonal and token steps tie below the time step, the (costlier) time step
    is taken. ``D`` in float64, as those programs really run: their source writes
    ``np.ones(..., dtype=np.float32) * np.inf``, but inside their numba function that product is typed float64
    (a float32 array times a float64 scalar), so the table, and every sum stored in it, is float64. Use it to
    reproduce those programs' paths exactly.

``path_cost(cost, path)`` sums the cost along a path.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch

RULES = ("exact", "whisper")


@numba.njit(cache=True, nogil=True)
def _dtw_exact(x):  # pragma: no cover - compiled
    N, M = x.shape
    D = np.empty((N + 1, M + 1), dtype=np.float64)
    trace = np.empty((N + 1, M + 1), dtype=np.int8)
    D[0, :] = np.inf
    D[:, 0] = np.inf
    D[0, 0] = 0.0
    for i in range(1, N + 1):
        for j in range(1, M + 1):
            c0 = D[i - 1, j - 1]
            c1 = D[i - 1, j]
            c2 = D[i, j - 1]
            if c2 <= c0 and c2 <= c1:
                c = c2
                t = 2
            elif c0 <= c1:
                c = c0
                t = 0
            else:
                c = c1
                t = 1
            D[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    return _backtrace(trace, N, M), D[N, M]


@numba.njit(cache=True, nogil=True)
def _dtw_whisper(x):  # pragma: no cover - compiled
    N, M = x.shape
    D = np.empty((N + 1, M + 1), dtype=np.float64)  # numba types whisper's float32 * inf table float64
    trace = np.empty((N + 1, M + 1), dtype=np.int8)
    D[0, :] = np.inf
    D[:, 0] = np.inf
    D[0, 0] = 0.0
    for i in range(1, N + 1):
        for j in range(1, M + 1):
            c0 = D[i - 1, j - 1]
            c1 = D[i - 1, j]
            c2 = D[i, j - 1]
            if c0 < c1 and c0 < c2:
                c = c0
                t = 0
            elif c1 < c0 and c1 < c2:
                c = c1
                t = 1
            else:
                c = c2
                t = 2
            D[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    return _backtrace(trace, N, M), D[N, M]


@numba.njit(cache=True, nogil=True)
def _backtrace(trace, N, M):  # pragma: no cover - compiled
    # borders: on row 0 only time steps, on column 0 only token steps (never reached from a finite path end)
    for j in range(M + 1):
        trace[0, j] = 2
    for i in range(N + 1):
        trace[i, 0] = 1
    out = np.empty((2, N + M), dtype=np.int64)
    i = N
    j = M
    k = N + M
    while i > 0 or j > 0:
        k -= 1
        out[0, k] = i - 1
        out[1, k] = j - 1
        t = trace[i, j]
        if t == 0:
            i -= 1
            j -= 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    return out[:, k:]


def _as_cost(cost: Any) -> np.ndarray:
    x = (
        cost.detach().cpu().to(torch.float64).numpy()
        if isinstance(cost, torch.Tensor)
        else np.asarray(cost, dtype=np.float64)
    )
    if x.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix [tokens, frames]; got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"cost matrix is empty (shape {x.shape})")
    if not np.all(np.isfinite(x)):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise ValueError(f"cost matrix holds a non-finite value at index {idx}")
    return np.ascontiguousarray(x)


def dtw(cost: Any, rule: str = "exact", return_cost: bool = False) -> Any:
    """Minimum-cost monotone path through ``cost[N, M]`` (rows: tokens, columns: frames).

    Returns ``(rows, cols)``: two int64 arrays of equal length (N + M - 1 at most), starting at (0, 0) and ending at
    (N-1, M-1); with ``return_cost=True`` also the accumulated cost ``D[N, M]``. See the module docstring for
    ``rule``. Raises ``ValueError`` for an empty matrix or NaN/inf entries.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}; got {rule!r}")
    x = _as_cost(cost)
    path, total = (_dtw_exact if rule == "exact" else _dtw_whisper)(x)
    rows, cols = path[0].copy(), path[1].copy()
    return (rows, cols, float(total)) if return_cost else (rows, cols)


def path_cost(cost: Any, rows: Any, cols: Any) -> float:
    """Sum of ``cost[rows[k], cols[k]]`` along a path (float64)."""
    x = _as_cost(cost)
    return float(x[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)].sum())
