"""``al.analyze(cap)``: one row per (step, layer, batch, head), from the per-frame statistics alone.

Columns (per-frame quantities are means over frames; definitions in attnlens.metrics and docs/metrics/):

    step, timestep, layer, head, batch, batch_label, n_frames, n_lyric_tokens,
    lyric_mass, lyric_meta_mass, timbre_mass, caption_mass, padding_mass      (they add to 1)
    entropy (all keys, / log K), entropy_lyric (lyric-only map, / log n),
    dominant_token_idx, dominant_token_label, dominant_fraction, switch_rate, token_span,
    diag_corr, diagonal_score, monotonic_alignment (all frames),
    monotonic_alignment_sung (sung frames only), sung_fraction (share of frames counted as sung)

Sung frames: ``lyric_mass(f) > 0`` and ``lyric_mass(f) >= sung_threshold * max_f lyric_mass(f)`` of the same
(step, layer, batch, head) (``sung_relative=True``, default threshold 0.5), or ``lyric_mass(f) >= sung_threshold``
(``sung_relative=False``). A batch item without sung lyric tokens gets dominant_token_idx -1, an empty label and 0
for every lyric score (never NaN).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..captures.layout import Layout
from ..captures.result import Capture
from ..metrics import sequence as seq
from .capture_arrays import capture_stats


def mass_columns(layout: Layout) -> list[str]:
    """``"{segment}_mass"`` for every segment of the layout's vocabulary, in the ``mass`` statistic's order (ACE-Step:
    ``lyric_mass, lyric_meta_mass, timbre_mass, caption_mass, padding_mass``)."""
    return [f"{s}_mass" for s in layout.vocabulary.names]


HEAD_METRICS = (
    "dominant_fraction",
    "switch_rate",
    "token_span",
    "diag_corr",
    "diagonal_score",
    "monotonic_alignment",
    "monotonic_alignment_sung",
    "sung_fraction",
)
"""Per-head metrics of the lyric argmax sequence (:func:`head_metrics`), one column each."""

SCORE_COLUMNS = ["entropy", "entropy_lyric", *HEAD_METRICS]
"""The columns :func:`summarize_heads` averages (with every ``*_mass`` column of the table)."""


def head_metrics(
    lyric_argmax: np.ndarray, lyric_mass: np.ndarray, n: int, sung_threshold: float = 0.5, sung_relative: bool = True
) -> dict[str, np.ndarray]:
    """Per-head metrics of argmax sequences ``[..., frame]`` with their lyric mass ``[..., frame]`` (vectorized)."""
    a = np.asarray(lyric_argmax, dtype=np.int64)
    F = a.shape[-1]
    idx, frac = seq.dominant_token(a, n)
    sw = np.asarray(seq.switch_rate(a), dtype=np.float64)
    span = np.asarray(seq.token_span(a, n), dtype=np.float64)
    corr = np.asarray(seq.diag_corr(a), dtype=np.float64)
    if n == 0:
        zeros = np.zeros(a.shape[:-1])
        sw, span, corr = zeros, zeros, zeros
    sung = seq.sung_frames(lyric_mass, sung_threshold, sung_relative)
    return {
        "dominant_token_idx": np.asarray(idx, dtype=np.int64),
        "dominant_fraction": np.asarray(frac, dtype=np.float64),
        "switch_rate": sw,
        "token_span": span,
        "diag_corr": corr,
        "diagonal_score": np.asarray(seq.diagonal_score(diag_corr=corr, token_span=span, switch_rate=sw)),
        "monotonic_alignment": np.asarray(seq.monotonic_alignment(a, n), dtype=np.float64),
        "monotonic_alignment_sung": np.asarray(seq.monotonic_alignment(a, n, sung), dtype=np.float64),
        "sung_fraction": sung.sum(-1) / F if F else np.zeros(a.shape[:-1]),
    }


def analyze(cap: Capture, sung_threshold: float = 0.5, sung_relative: bool = True) -> pd.DataFrame:
    """One row per (step, layer, batch, head) of ``cap`` (see the module docstring for the columns). Needs only the
    per-frame statistics (full maps are used to compute them when the capture kept maps only)."""
    st = capture_stats(cap)
    S, L, B, H, F = st["entropy"].shape
    kept_t = [cap.timesteps[s] if 0 <= s < len(cap.timesteps) else float("nan") for s in cap.steps]
    if any(np.isnan(kept_t)):
        raise ValueError(f"cap.steps {cap.steps} point outside cap.timesteps ({len(cap.timesteps)} seen)")
    labels_b = cap.batch_labels if len(cap.batch_labels) == B else [str(b) for b in range(B)]
    voc = cap.layout.vocabulary
    seq_codes = [voc.code(s) for s in voc.sequence_names()]  # the sequence segment's mass (ACE-Step: lyric mass)
    mass_names = mass_columns(cap.layout)
    si, li, hi = np.meshgrid(np.arange(S), np.arange(L), np.arange(H), indexing="ij")  # [S, L, H]
    frames = []
    for b in range(B):
        it = cap.layout[b]
        n = len(it.lyric_positions())
        labels = it.lyric_labels()
        a = st["lyric_argmax"][:, :, b]  # [S, L, H, F]
        mass = st["mass"][:, :, b].astype(np.float64)  # [S, L, H, F, seg]
        m = head_metrics(a, mass[..., seq_codes].sum(-1), n, sung_threshold, sung_relative)
        cols: dict[str, Any] = {
            "step": np.asarray(cap.steps)[si].ravel(),
            "timestep": np.asarray(kept_t, dtype=np.float64)[si].ravel(),
            "layer": np.asarray(cap.layers)[li].ravel(),
            "head": np.asarray(cap.heads)[hi].ravel(),
            "batch": np.full(S * L * H, b),
            "batch_label": [labels_b[b]] * (S * L * H),
            "n_frames": np.full(S * L * H, F),
            "n_lyric_tokens": np.full(S * L * H, n),
        }
        mm = mass.mean(axis=-2)  # [S, L, H, seg]
        for g, name in enumerate(mass_names):
            cols[name] = mm[..., g].ravel()
        cols["entropy"] = st["entropy"][:, :, b].astype(np.float64).mean(-1).ravel()
        cols["entropy_lyric"] = st["entropy_lyric"][:, :, b].astype(np.float64).mean(-1).ravel()
        idx = m["dominant_token_idx"].ravel()
        cols["dominant_token_idx"] = idx
        cols["dominant_token_label"] = [labels[i] if i >= 0 else "" for i in idx]
        for k in HEAD_METRICS:
            cols[k] = m[k].ravel()
        frames.append(pd.DataFrame(cols))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df = df.sort_values(["step", "layer", "batch", "head"], kind="stable", ignore_index=True)
    df.attrs["sung_threshold"] = sung_threshold
    df.attrs["sung_relative"] = sung_relative
    return df


def summarize_heads(
    df: pd.DataFrame,
    by: tuple[str, ...] | list[str] | str = ("layer", "head"),
    metrics: list[str] | None = None,
    sort_by: str | None = "monotonic_alignment_sung",
    ascending: bool = False,
    top: int | None = None,
) -> pd.DataFrame:
    """Mean of the score columns of an :func:`analyze` table over everything not in ``by`` (steps and batch items by
    default), with ``n_rows`` (rows averaged) and the most frequent ``dominant_token_label``; sorted by ``sort_by``.
    Use ``by="layer"`` for a per-layer summary or ``by=("step", "layer", "head")`` to keep steps apart."""
    keys = [by] if isinstance(by, str) else list(by)
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the table; it has {list(df.columns)}")
    masses = [c for c in df.columns if c.endswith("_mass")]
    cols = metrics if metrics is not None else masses + [c for c in SCORE_COLUMNS if c in df.columns]
    bad = [c for c in cols if c not in df.columns]
    if bad:
        raise ValueError(f"metrics {bad} are not in the table")
    g = df.groupby(keys, sort=True)
    out = g[cols].mean()
    out.insert(0, "n_rows", g.size())
    if "dominant_token_label" in df.columns:
        out["dominant_token_label"] = g["dominant_token_label"].agg(lambda s: s.value_counts().index[0])
    out = out.reset_index()
    if sort_by is not None:
        if sort_by not in out.columns:
            raise ValueError(f"sort_by {sort_by!r} is not a column of the summary: {list(out.columns)}")
        out = out.sort_values(sort_by, ascending=ascending, kind="stable", ignore_index=True)
    return out.head(top) if top is not None else out
