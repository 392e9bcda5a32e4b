"""Per-frame masses and entropies of attention maps ``P[..., frame, key]`` (rows sum to 1).

    segment mass(f, g) = sum_{s in g} P[f, s]           g in lyric, lyric_meta, timbre, caption, padding (add to 1)
    lyric_mass(f)      = sum_{s in L} P[f, s]            L = sung lyric keys (header and [tag] tokens excluded)
    entropy(f)         = -sum_s P log P / log K          K keys; 0 log 0 = 0; in [0, 1] (normalized=True)
    A[f, i]            = P[f, L_i] / sum_i P[f, L_i]     lyric-only renormalized map
    entropy_lyric(f)   = -sum_i A log A / log n          n = |L|

All functions take NumPy arrays or torch tensors and return NumPy float64 arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..captures.layout import ItemLayout, Layout
from .frame_stats import check_map


def _item(layout: ItemLayout | Layout) -> ItemLayout:
    if isinstance(layout, Layout):
        if len(layout) != 1:
            raise ValueError(
                f"layout has {len(layout)} batch items; pass the item of this map, e.g. layout[b] (an ItemLayout)"
            )
        return layout[0]
    if not isinstance(layout, ItemLayout):
        raise TypeError(f"expected an ItemLayout (or a one-item Layout); got {type(layout).__name__}")
    return layout


def _as_maps(P: Any, n_keys: int | None = None) -> np.ndarray:
    x = P.detach().cpu().to(torch.float64).numpy() if isinstance(P, torch.Tensor) else np.asarray(P, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"expected maps [..., frame, key]; got shape {x.shape}")
    if n_keys is not None and x.shape[-1] != n_keys:
        raise ValueError(f"maps have {x.shape[-1]} keys but the layout describes {n_keys}")
    check_map(torch.from_numpy(x))
    return x


def segment_masses(P: Any, layout: ItemLayout | Layout) -> dict[str, np.ndarray]:
    """Mass of every segment per frame: ``{name: [..., frame]}`` for every segment of the layout's vocabulary. They add to 1 when the layout is
    known (keys of an ``"unknown"`` segment count in none)."""
    it = _item(layout)
    x = _as_maps(P, it.n_keys)
    codes = it.segment_codes()
    return {name: x[..., codes == g].sum(-1) for g, name in enumerate(it.vocabulary.names)}


def lyric_mass(P: Any, layout: ItemLayout | Layout) -> np.ndarray:
    """``sum_{s in L} P[f, s]`` per frame ``[..., frame]`` (sung lyric tokens only; 0 when there are none)."""
    it = _item(layout)
    x = _as_maps(P, it.n_keys)
    return x[..., it.lyric_positions()].sum(-1)


def _entropy_last(x: np.ndarray, normalized: bool) -> np.ndarray:
    k = x.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)
    h = -plogp.sum(-1)
    if not normalized:
        return h
    return h / math.log(k) if k > 1 else np.zeros_like(h)


def entropy(P: Any, normalized: bool = True) -> np.ndarray:
    """Entropy of every row ``[..., frame]``: ``-sum P log P``, divided by ``log K`` when ``normalized`` (then in
    [0, 1]; 0 for a single key). Rows are used as given (not renormalized)."""
    return _entropy_last(_as_maps(P), normalized)


def lyric_map(P: Any, layout: ItemLayout | Layout) -> np.ndarray:
    """Lyric-only renormalized map ``A[..., frame, i]`` over the sung tokens (uniform where the lyric mass is 0).
    Raises ``ValueError`` when the layout has no sung lyric token."""
    it = _item(layout)
    x = _as_maps(P, it.n_keys)
    L = it.lyric_positions()
    if len(L) == 0:
        raise ValueError("the layout has no sung lyric token: the lyric-only map is undefined")
    X = x[..., L]
    s = X.sum(-1, keepdims=True)
    return np.where(s > 0, X / np.where(s > 0, s, 1.0), 1.0 / len(L))


def entropy_lyric(P: Any, layout: ItemLayout | Layout) -> np.ndarray:
    """Entropy of the lyric-only map divided by ``log n`` ``[..., frame]`` (0 when n <= 1; 0 without sung tokens)."""
    it = _item(layout)
    if len(it.lyric_positions()) == 0:
        x = _as_maps(P, it.n_keys)
        return np.zeros(x.shape[:-1])
    return _entropy_last(lyric_map(P, it), True)
