"""attnlens.metrics: pure functions of arrays, each with its formula in the docstring.

Per frame (maps ``P[..., frame, key]``): :func:`segment_masses`, :func:`lyric_mass`, :func:`entropy`,
:func:`entropy_lyric`, :func:`lyric_map`, :func:`frame_stats` (the reference for a Capture's statistics).
Per head (lyric argmax ``a[..., frame]``): :func:`switch_rate`, :func:`token_span`, :func:`diag_corr`,
:func:`diagonal_score`, :func:`monotonic_alignment`, :func:`dominant_token`, :func:`sung_frames`,
:func:`sink_tokens`. Alignment: :func:`dtw`, :func:`align_tokens`, :func:`lyrics_alignment_score`,
:func:`timing_error`. Names load lazily (numba compiles only when DTW is first used).
"""

from __future__ import annotations

from ..lazy import lazy_attributes
from .frame_stats import check_map, frame_stats  # eager: the name is also the submodule's

_LAZY: dict[str, str] = {
    "segment_masses": "masses",
    "lyric_mass": "masses",
    "entropy": "masses",
    "entropy_lyric": "masses",
    "lyric_map": "masses",
    "switch_rate": "sequence",
    "token_span": "sequence",
    "diag_corr": "sequence",
    "diagonal_score": "sequence",
    "monotonic_alignment": "sequence",
    "dominant_token": "sequence",
    "sung_frames": "sequence",
    "sink_tokens": "sinks",
    "dtw": "warping",
    "path_cost": "warping",
    "RULES": "warping",
    "lyrics_alignment_score": "aas",
    "LyricsAlignmentScore": "aas",
    "tag_mask_from_tokens": "aas",
    "energy_matrix": "aas",
    "align_tokens": "wordalign",
    "alignment_matrix": "wordalign",
    "TokenAlignment": "wordalign",
    "format_lrc": "wordalign",
    "timing_error": "timing",
    "TimingError": "timing",
}

__all__ = sorted(_LAZY) + ["check_map", "frame_stats"]


__getattr__, __dir__ = lazy_attributes(__name__, {name: (f".{mod}", name) for name, mod in _LAZY.items()}, globals())
