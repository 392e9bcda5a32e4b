"""``al.find_alignment_heads``: rank heads by how well their lyric argmax follows the lyrics in time."""

from __future__ import annotations

import pandas as pd

from ..captures.result import Capture
from .table import analyze, summarize_heads


def find_alignment_heads(
    cap: Capture,
    top_k: int = 8,
    step: int | None = None,
    batch: int | None = None,
    sung_threshold: float = 0.5,
    table: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The ``top_k`` (layer, head) pairs ranked by ``monotonic_alignment_sung`` (mean over the kept steps and batch
    items, or one ``step`` / ``batch``), ties broken by ``diagonal_score`` then ``monotonic_alignment``.

    Returns a DataFrame (layer, head, monotonic_alignment_sung, monotonic_alignment, diagonal_score, diag_corr,
    switch_rate, token_span, dominant_fraction, lyric_mass, dominant_token_label); ``df.attrs["heads"]`` holds the
    pairs, and the frame itself can be passed as ``heads=`` to :func:`attnlens.align`.
    Needs only per-frame statistics. Pass ``table`` (an :func:`attnlens.analyze` result) to skip recomputing it.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1; got {top_k}")
    df = table if table is not None else analyze(cap, sung_threshold=sung_threshold)
    if step is not None:
        s = cap.steps[cap.step_index(step)]
        df = df[df["step"] == s]
    if batch is not None:
        cap.batch_index(batch)
        df = df[df["batch"] == batch]
    cols = [
        "monotonic_alignment_sung",
        "monotonic_alignment",
        "diagonal_score",
        "diag_corr",
        "switch_rate",
        "token_span",
        "dominant_fraction",
        "lyric_mass",
    ]
    summary = summarize_heads(df, by=("layer", "head"), metrics=cols, sort_by=None)
    summary = summary.sort_values(
        ["monotonic_alignment_sung", "diagonal_score", "monotonic_alignment", "layer", "head"],
        ascending=[False, False, False, True, True],
        kind="stable",
        ignore_index=True,
    ).head(top_k)
    summary.attrs["heads"] = [(int(a), int(b)) for a, b in zip(summary["layer"], summary["head"])]
    return summary


def heads_dict(pairs: list[tuple[int, int]]) -> dict[int, list[int]]:
    """``{layer: [heads]}`` from (layer, head) pairs."""
    out: dict[int, list[int]] = {}
    for layer, head in pairs:
        out.setdefault(int(layer), []).append(int(head))
    return out
