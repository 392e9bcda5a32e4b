"""Per-head metrics of the lyric argmax sequence ``a_f = argmax_i A[f, i]`` (``a [..., frame]``, ints in [0, n)).

With ``F`` frames and ``n`` sung lyric tokens (definitions in docs/metrics/):

    dominant token       = most frequent a_f (smallest index on ties); dominant_fraction = its count / F
    switch_rate          = #{f >= 1 : a_f != a_{f-1}} / (F - 1)
    token_span           = (max_f a_f - min_f a_f) / (n - 1)
    diag_corr            = Pearson correlation of (f, a_f); 0 when a_f is constant
    diagonal_score       = max(diag_corr, 0) * token_span * switch_rate
    monotonic_alignment  = max(0, rho) * token_span,  rho = Spearman correlation of (f, a_f) over the scored frames
                           (ties get average ranks; 0 when a_f is constant); token_span over the same frames

Everything is vectorized over the leading dims. Degenerate cases give defined values, never NaN:
F < 2 -> switch_rate 0, diag_corr 0, monotonic_alignment 0; n < 2 -> token_span 0 (so both scores are 0);
n == 0 (``a`` all -1) -> dominant index -1 and fraction 0, every score 0. Fewer than 2 scored frames ->
monotonic_alignment 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _ints(a: Any) -> np.ndarray:
    x = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if x.ndim < 1:
        raise ValueError(f"expected an argmax sequence [..., frame]; got a scalar {x!r}")
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise ValueError("argmax sequence holds NaN/inf")
        if not np.all(x == np.round(x)):
            raise ValueError("argmax sequence must hold integer token indices")
    elif x.dtype.kind not in "iub":
        raise ValueError(f"argmax sequence must hold integer token indices; got dtype {x.dtype}")
    return x.astype(np.int64)


def _check_range(a: np.ndarray, n: int) -> None:
    if n < 0:
        raise ValueError(f"n (number of lyric tokens) must be >= 0; got {n}")
    if n == 0:
        if a.size and not np.all(a == -1):
            raise ValueError("n == 0 (no lyric token) but the argmax sequence holds indices other than -1")
        return
    if a.size and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"argmax indices must lie in [0, {n}); found min {a.min()}, max {a.max()}")


def _mask(frames: Any, a: np.ndarray) -> np.ndarray:
    """Bool mask [..., frame] of scored frames from None (all), a bool mask, or an index array into the frames."""
    if frames is None:
        return np.ones(a.shape, dtype=bool)
    m = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if m.dtype == bool:
        try:
            return np.broadcast_to(m, a.shape)
        except ValueError:
            raise ValueError(
                f"frames mask of shape {m.shape} does not broadcast to the sequence shape {a.shape}"
            ) from None
    if m.ndim != 1:
        raise ValueError("frames must be a bool mask [..., frame] or a 1-D array of frame indices")
    F = a.shape[-1]
    if m.size and (m.min() < -F or m.max() >= F):
        raise ValueError(f"frame indices out of range for {F} frames")
    out = np.zeros(F, dtype=bool)
    out[m.astype(np.int64)] = True
    return np.broadcast_to(out, a.shape)


def switch_rate(a: Any) -> np.ndarray | float:
    """``#{f >= 1 : a_f != a_{f-1}} / (F - 1)`` per sequence (0 when F < 2)."""
    x = _ints(a)
    F = x.shape[-1]
    if F < 2:
        return _out(np.zeros(x.shape[:-1]))
    return _out(np.count_nonzero(x[..., 1:] != x[..., :-1], axis=-1) / (F - 1))


def token_span(a: Any, n: int, frames: Any = None) -> np.ndarray | float:
    """``(max a_f - min a_f) / (n - 1)`` over the scored frames (0 when n < 2 or no frame is scored)."""
    x = _ints(a)
    _check_range(x, n)
    m = _mask(frames, x)
    if n < 2:
        return _out(np.zeros(x.shape[:-1]))
    hi = np.where(m, x, -1).max(-1, initial=-1)
    lo = np.where(m, x, n).min(-1, initial=n)
    has = m.any(-1)
    return _out(np.where(has, (hi - lo) / (n - 1), 0.0))


_switch_rate_fn = switch_rate
_token_span_fn = token_span


def _pearson(x: np.ndarray, y: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Weighted-by-mask Pearson correlation along the last axis; 0 where either side has no variance."""
    w = m.astype(np.float64)
    cnt = w.sum(-1, keepdims=True)
    safe = np.where(cnt > 0, cnt, 1.0)
    dx = (x - (w * x).sum(-1, keepdims=True) / safe) * w
    dy = (y - (w * y).sum(-1, keepdims=True) / safe) * w
    sxy = (dx * dy).sum(-1)
    sxx = (dx * dx).sum(-1)
    syy = (dy * dy).sum(-1)
    den = np.sqrt(sxx * syy)
    ok = den > 0
    r = np.where(ok, sxy / np.where(ok, den, 1.0), 0.0)
    return np.clip(r, -1.0, 1.0)


def diag_corr(a: Any) -> np.ndarray | float:
    """Pearson correlation of (f, a_f) over all frames; 0 when a_f is constant or F < 2."""
    x = _ints(a)
    F = x.shape[-1]
    f = np.broadcast_to(np.arange(F, dtype=np.float64), x.shape)
    return _out(_pearson(f, x.astype(np.float64), np.ones(x.shape, dtype=bool)))


_diag_corr_fn = diag_corr


def diagonal_score(
    A: Any = None, *, diag_corr: Any = None, token_span: Any = None, switch_rate: Any = None
) -> np.ndarray | float:
    """``max(diag_corr, 0) * token_span * switch_rate`` (multiplied in that order).

    Either pass ``A`` — a lyric-only map ``[..., frame, lyric token]`` (rows need not be normalized; the argmax
    per frame is used) — or the three fields by keyword. Bounded by ``(n-1)/(F-1)`` for a clean staircase, and
    raised by argmax flicker: never use it as a training target (see docs/metrics/diagonal_score.md).
    """
    if A is not None:
        if diag_corr is not None or token_span is not None or switch_rate is not None:
            raise ValueError("pass either the map A or the fields diag_corr/token_span/switch_rate, not both")
        m = A.detach().cpu().numpy() if isinstance(A, torch.Tensor) else np.asarray(A, dtype=np.float64)
        if m.ndim < 2:
            raise ValueError(f"A must be a lyric-only map [..., frame, lyric token]; got shape {m.shape}")
        if not np.all(np.isfinite(m)):
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(m))[0])
            raise ValueError(f"A holds a non-finite value at index {idx}")
        n = m.shape[-1]
        a = m.argmax(-1)
        return _out(_diag_score(_diag_corr_fn(a), _token_span_fn(a, n), _switch_rate_fn(a)))
    if diag_corr is None or token_span is None or switch_rate is None:
        raise ValueError("diagonal_score needs a map A or all of diag_corr=, token_span=, switch_rate=")
    return _out(_diag_score(diag_corr, token_span, switch_rate))


def _diag_score(c: Any, span: Any, sw: Any) -> np.ndarray:
    c, span, sw = (np.asarray(v, dtype=np.float64) for v in (c, span, sw))
    for name, v in (("diag_corr", c), ("token_span", span), ("switch_rate", sw)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} holds NaN/inf")
    return np.maximum(c, 0.0) * span * sw


def dominant_token(a: Any, n: int) -> tuple[np.ndarray | int, np.ndarray | float]:
    """``(index, fraction)``: most frequent a_f (smallest index on ties) and its count / F. ``(-1, 0.0)`` when
    n == 0 or F == 0."""
    x = _ints(a)
    _check_range(x, n)
    F = x.shape[-1]
    if n == 0 or F == 0:
        return _out(np.full(x.shape[:-1], -1, dtype=np.int64)), _out(np.zeros(x.shape[:-1]))
    counts = _counts(x, np.ones(x.shape, dtype=bool), n)
    idx = counts.argmax(-1)
    return _out(idx), _out(counts.max(-1) / F)


def _counts(x: np.ndarray, m: np.ndarray, n: int) -> np.ndarray:
    """counts[..., v] = #{scored f : a_f == v}."""
    lead = x.shape[:-1]
    R = int(np.prod(lead)) if lead else 1
    xf = x.reshape(R, -1)
    mf = m.reshape(R, -1)
    rows = np.broadcast_to(np.arange(R)[:, None], xf.shape)
    flat = (rows * n + xf)[mf]
    return np.bincount(flat, minlength=R * n).reshape(*lead, n)


def monotonic_alignment(a: Any, n: int, frames: Any = None) -> np.ndarray | float:
    """``max(0, rho) * token_span`` over the scored frames (``frames``: None = all, a bool mask ``[..., frame]`` or
    frame indices). rho is Spearman's rank correlation of (f, a_f) with average ranks for ties (equal to
    ``scipy.stats.spearmanr``); 0 when a_f is constant, when n < 2 or when fewer than 2 frames are scored.
    A clean staircase over all n tokens scores 1; a sink head 0; random flicker about 0."""
    x = _ints(a)
    _check_range(x, n)
    m = _mask(frames, x)
    if n < 2 or x.shape[-1] < 2:
        return _out(np.zeros(x.shape[:-1]))
    counts = _counts(x, m, n).astype(np.float64)  # [..., n]
    below = np.cumsum(counts, -1) - counts
    rank_table = below + (counts + 1.0) / 2.0  # average rank of each value among scored frames
    ra = np.take_along_axis(rank_table, x, axis=-1)
    rf = np.cumsum(m, axis=-1).astype(np.float64)
    rho = _pearson(rf, ra, m)
    span = token_span(x, n, m)
    return _out(np.maximum(rho, 0.0) * span)


def sung_frames(lyric_mass: Any, threshold: float = 0.5, relative: bool = True) -> np.ndarray:
    """Bool mask ``[..., frame]`` of "sung" frames, judged from the lyric mass of each sequence.

    ``relative=True`` (default): ``lyric_mass(f) > 0`` and ``lyric_mass(f) >= threshold * max_f lyric_mass(f)``
    (frames where this head reads the lyrics at least half as much as it ever does, with the default 0.5).
    ``relative=False``: ``lyric_mass(f) >= threshold``.
    """
    lm = (
        lyric_mass.detach().cpu().to(torch.float64).numpy()
        if isinstance(lyric_mass, torch.Tensor)
        else np.asarray(lyric_mass, dtype=np.float64)
    )
    if not np.all(np.isfinite(lm)):
        raise ValueError("lyric mass holds NaN/inf")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must lie in [0, 1]; got {threshold}")
    if relative:
        top = lm.max(-1, keepdims=True) if lm.shape[-1] else lm
        return (lm > 0) & (lm >= threshold * top)
    return lm >= threshold


def _out(x: np.ndarray) -> Any:
    """0-d arrays come back as Python scalars."""
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return x.item()
    return x
