"""ACE-Step's lyrics alignment score ("AAS"), computed from attention maps.

The math of ``MusicLyricScorer`` (``acestep/dit_alignment_score.py`` in ace-step/ACE-Step-1.5), re-implemented:

1. ``W = mean over the chosen heads`` of the lyric maps ``[token, frame]`` (float32, as ACE-Step does).
2. ``E = (W - min W) / (max W - min W)`` (all zeros when the range is <= 1e-9).
3. Rows inside ``[...]`` structure tags are not scored (``tag_mask``: True = tag row).
4. coverage      = share of scored rows with ``max_f E > 0.1`` (1 when no row is scored).
5. monotonicity  = with ``E' = E where E > 0.01 else 0``, each scored row's centroid ``c_i = sum_f f E' / sum_f E'``
                   (rows with ``sum E' <= 1e-9`` skipped); share of consecutive centroids with ``c_{i+1} >= c_i - 9``
                   (1 when fewer than 2 centroids).
6. confidence    = mean of ``E`` along the DTW path found on ``-E**2`` (float32 cost, Whisper/ACE-Step tie rule);
                   every path step counts, tag rows included.
7. score         = clip(coverage**2 * monotonicity**2 * confidence, 0, 1), rounded to 4 decimals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .warping import dtw

COVERAGE_THRESHOLD = 0.1
ENERGY_FLOOR = 0.01
OVERLAP_FRAMES = 9.0


@dataclass
class LyricsAlignmentScore:
    """Result of :func:`lyrics_alignment_score`."""

    score: float
    """clip(coverage² · monotonicity² · confidence, 0, 1) rounded to 4 decimals (ACE-Step's reported value)."""
    coverage: float
    monotonicity: float
    confidence: float
    score_raw: float
    """the score before rounding."""
    path: np.ndarray = field(repr=False)
    """DTW path ``[2, steps]``: token rows, frame columns."""
    energy: np.ndarray = field(repr=False)
    """E ``[token, frame]`` (float32)."""
    tag_mask: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, float]:
        d = asdict(self)
        return {k: float(d[k]) for k in ("score", "coverage", "monotonicity", "confidence", "score_raw")}

    def __float__(self) -> float:
        return float(self.score)


def tag_mask_from_tokens(tokens: list[str | None]) -> np.ndarray:
    """True for rows whose decoded token lies between a ``[`` and the next ``]`` (both inclusive), as ACE-Step
    marks structure tags such as ``[verse]``."""
    out = np.zeros(len(tokens), dtype=bool)
    inside = False
    for i, tok in enumerate(tokens):
        t = tok or ""
        if "[" in t:
            inside = True
        if inside:
            out[i] = True
        if "]" in t:
            inside = False
            out[i] = True
    return out


def energy_matrix(maps: Any) -> np.ndarray:
    """E ``[token, frame]`` (float32): head mean of ``maps [head, token, frame]`` (or a single map ``[token, frame]``),
    min-max normalized."""
    w = maps.detach().cpu() if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    w = w.float()
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3:
        raise ValueError(f"expected maps [head, token, frame] or one map [token, frame]; got shape {tuple(w.shape)}")
    if w.shape[0] == 0 or w.shape[1] == 0 or w.shape[2] == 0:
        raise ValueError(f"empty maps (shape {tuple(w.shape)})")
    if not bool(torch.isfinite(w).all()):
        idx = tuple(int(i) for i in torch.nonzero(~torch.isfinite(w))[0].tolist())
        raise ValueError(f"maps hold a non-finite value at index {idx} [head, token, frame]")
    avg = w.mean(dim=0).numpy()  # [token, frame] float32
    lo, hi = avg.min(), avg.max()
    if hi - lo > 1e-9:
        return ((avg - lo) / (hi - lo)).astype(np.float32)
    return np.zeros_like(avg)


def lyrics_alignment_score(maps: Any, tag_mask: Any = None, *, dtw_rule: str = "whisper") -> LyricsAlignmentScore:
    """ACE-Step's lyrics alignment score of ``maps [head, token, frame]`` (heads averaged) or one map / E
    ``[token, frame]`` (min-max normalization leaves E unchanged). Rows are the lyric tokens ACE-Step scores (between
    the header and ``<|endoftext|>``); ``tag_mask [token]`` marks tag rows (True = not scored); None = none.
    See the module docstring for the formula. ``dtw_rule="whisper"`` reproduces ACE-Step's path bit for bit;
    ``"exact"`` takes a true minimum-cost path."""
    E = energy_matrix(maps)
    n_rows, n_frames = E.shape
    if tag_mask is None:
        tags = np.zeros(n_rows, dtype=bool)
    else:
        tags = np.asarray(tag_mask.cpu() if isinstance(tag_mask, torch.Tensor) else tag_mask).astype(bool)
        if tags.shape != (n_rows,):
            raise ValueError(f"tag_mask has shape {tags.shape}; expected ({n_rows},), one entry per token row")
    calc = E**2
    rows, cols = dtw(-calc.astype(np.float32), rule=dtw_rule)
    coverage, monotonicity, confidence = _components(E.astype(np.float64), ~tags, rows, cols)
    raw = coverage**2 * monotonicity**2 * confidence
    raw = float(np.clip(raw, 0.0, 1.0))
    return LyricsAlignmentScore(
        score=round(raw, 4),
        coverage=coverage,
        monotonicity=monotonicity,
        confidence=confidence,
        score_raw=raw,
        path=np.stack([rows, cols]),
        energy=E,
        tag_mask=tags,
    )


def _components(E: np.ndarray, scored: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[float, float, float]:
    n_scored = int(scored.sum())
    if n_scored > 0:
        coverage = float((scored & (E.max(axis=1) > COVERAGE_THRESHOLD)).sum() / n_scored)
    else:
        coverage = 1.0
    w = np.where(E > ENERGY_FLOOR, E, 0.0)
    sw = w.sum(axis=1)
    st = (w * np.arange(E.shape[1], dtype=np.float64)).sum(axis=1)
    valid = sw > 1e-9
    cent = np.where(valid, st / np.where(valid, sw, 1.0), -1.0)
    seq = cent[scored & valid]
    if len(seq) > 1:
        monotonicity = float((seq[1:] >= seq[:-1] - OVERLAP_FRAMES).sum() / (len(seq) - 1))
    else:
        monotonicity = 1.0
    confidence = float(E[rows, cols].mean()) if len(rows) else 0.0
    return coverage, monotonicity, confidence
