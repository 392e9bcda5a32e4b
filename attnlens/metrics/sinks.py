"""Sink tokens: tokens that one head attends to (as its argmax) in almost every frame.

For argmax sequences ``a[..., frame]`` (one per head; lyric argmax into L, or packed argmax into all keys):

    head h is a sink head on token v  <=>  dominant_fraction(h) >= min_fraction and dominant token(h) == v
    sink_tokens = tokens v with at least one sink head, with the number and share of heads, most heads first
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .sequence import dominant_token


def sink_tokens(a: Any, n: int, labels: list[str] | None = None, min_fraction: float = 0.9) -> list[dict[str, Any]]:
    """Tokens on which heads collapse. ``a [..., frame]``: argmax sequences (all leading dims are heads); ``n``:
    number of tokens ``a`` indexes; ``labels``: optional text of each token. Returns a list of
    ``{"token_idx", "label", "n_heads", "share_of_heads", "mean_fraction"}`` sorted by ``n_heads`` (then index)."""
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must lie in (0, 1]; got {min_fraction}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries; expected n = {n}")
    idx, frac = dominant_token(a, n)
    idx = np.atleast_1d(np.asarray(idx)).ravel()
    frac = np.atleast_1d(np.asarray(frac, dtype=np.float64)).ravel()
    n_heads = idx.size
    sink = (frac >= min_fraction) & (idx >= 0)
    out = []
    for v in np.unique(idx[sink]):
        sel = sink & (idx == v)
        out.append(
            {
                "token_idx": int(v),
                "label": labels[int(v)] if labels is not None else str(int(v)),
                "n_heads": int(sel.sum()),
                "share_of_heads": float(sel.sum() / n_heads),
                "mean_fraction": float(frac[sel].mean()),
            }
        )
    out.sort(key=lambda d: (-d["n_heads"], d["token_idx"]))
    return out
