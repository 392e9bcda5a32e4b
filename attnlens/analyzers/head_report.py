"""``al.head_report``: per-head statistics of one step and batch item, ranked lists and sink tokens, as JSON.

Schema of ``to_dict()``::

    {"meta": {step, timestep, batch, batch_label, n_frames, n_lyric_tokens, sink_min_fraction, sung_threshold},
     "head_stats": [{layer_idx, head_idx, switch_rate, dominant_fraction, dominant_token_idx, dominant_token_label,
                     token_span, entropy_mean, entropy_all_keys_mean, lyric_mass, diag_corr, diagonal_score,
                     monotonic_alignment, monotonic_alignment_sung}, ...],          (layer, head order)
     "top_by_diagonal_score": [...], "top_by_monotonic_alignment": [...], "top_by_switch_rate": [...],
     "most_collapsed": [...],                                                        (highest dominant_fraction)
     "sink_tokens": [{token_idx, label, n_heads, share_of_heads, mean_fraction}, ...]}

``entropy_mean`` is the mean entropy of the lyric-only renormalized map (the seed study's convention);
``entropy_all_keys_mean`` the mean entropy over all packed keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..captures.result import Capture
from ..files import atomic_write_json
from ..metrics.sinks import sink_tokens
from .capture_arrays import capture_stats
from .table import analyze

_FIELDS = [
    "layer_idx",
    "head_idx",
    "switch_rate",
    "dominant_fraction",
    "dominant_token_idx",
    "dominant_token_label",
    "token_span",
    "entropy_mean",
    "entropy_all_keys_mean",
    "lyric_mass",
    "diag_corr",
    "diagonal_score",
    "monotonic_alignment",
    "monotonic_alignment_sung",
]


@dataclass
class HeadReport:
    head_stats: list[dict[str, Any]]
    top_by_diagonal_score: list[dict[str, Any]]
    top_by_monotonic_alignment: list[dict[str, Any]]
    top_by_switch_rate: list[dict[str, Any]]
    most_collapsed: list[dict[str, Any]]
    sink_tokens: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "head_stats": self.head_stats,
            "top_by_diagonal_score": self.top_by_diagonal_score,
            "top_by_monotonic_alignment": self.top_by_monotonic_alignment,
            "top_by_switch_rate": self.top_by_switch_rate,
            "most_collapsed": self.most_collapsed,
            "sink_tokens": self.sink_tokens,
        }

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(self.head_stats, columns=_FIELDS)

    def to_json(self, path: str | os.PathLike[str], indent: int = 2) -> str:
        """Write :meth:`to_dict` as JSON to ``path`` atomically (temp file in the same folder, then rename)."""
        path = os.fspath(path)
        atomic_write_json(path, self.to_dict(), indent=indent, allow_nan=False)
        return path


def _py(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def head_report(
    cap: Capture,
    step: int = -1,
    batch: int = 0,
    top_k: int = 10,
    sink_min_fraction: float = 0.9,
    sung_threshold: float = 0.5,
) -> HeadReport:
    """Per-head statistics at generation ``step`` (negative counts from the end) for batch item ``batch``, the
    ``top_k`` heads by diagonal score, monotonic alignment and switch rate, the ``top_k`` most collapsed heads
    (highest dominant fraction) and the sink tokens (dominant token of heads with dominant fraction >=
    ``sink_min_fraction``). Needs only per-frame statistics."""
    s_idx = cap.step_index(step)
    b = cap.batch_index(batch)
    df = analyze(cap, sung_threshold=sung_threshold)
    gen_step = cap.steps[s_idx]
    df = df[(df["step"] == gen_step) & (df["batch"] == b)].sort_values(["layer", "head"], ignore_index=True)
    rows = []
    for r in df.itertuples(index=False):
        rows.append(
            {
                "layer_idx": int(r.layer),
                "head_idx": int(r.head),
                "switch_rate": float(r.switch_rate),
                "dominant_fraction": float(r.dominant_fraction),
                "dominant_token_idx": int(r.dominant_token_idx),
                "dominant_token_label": str(r.dominant_token_label),
                "token_span": float(r.token_span),
                "entropy_mean": float(r.entropy_lyric),
                "entropy_all_keys_mean": float(r.entropy),
                "lyric_mass": float(r.lyric_mass),
                "diag_corr": float(r.diag_corr),
                "diagonal_score": float(r.diagonal_score),
                "monotonic_alignment": float(r.monotonic_alignment),
                "monotonic_alignment_sung": float(r.monotonic_alignment_sung),
            }
        )

    def top(key: str) -> list[dict[str, Any]]:
        return sorted(rows, key=lambda d: (-d[key], d["layer_idx"], d["head_idx"]))[:top_k]

    it = cap.layout[b]
    n = len(it.lyric_positions())
    a = capture_stats(cap)["lyric_argmax"][s_idx, :, b]  # [layer, head, frame]
    sinks = sink_tokens(a, n, it.lyric_labels(), sink_min_fraction) if n else []
    meta = {
        "step": int(gen_step),
        "timestep": float(cap.timesteps[gen_step]),
        "batch": b,
        "batch_label": cap.batch_labels[b] if b < len(cap.batch_labels) else str(b),
        "n_frames": int(cap.n_frames),
        "n_lyric_tokens": n,
        "sink_min_fraction": sink_min_fraction,
        "sung_threshold": sung_threshold,
    }
    return HeadReport(
        head_stats=rows,
        top_by_diagonal_score=top("diagonal_score"),
        top_by_monotonic_alignment=top("monotonic_alignment_sung"),
        top_by_switch_rate=top("switch_rate"),
        most_collapsed=top("dominant_fraction"),
        sink_tokens=[{k: _py(v) for k, v in d.items()} for d in sinks],
        meta=meta,
    )
