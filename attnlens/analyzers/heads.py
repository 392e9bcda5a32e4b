"""``al.find_alignment_heads``: rank heads by evidence — word-start error against reference timings, pooled over
many captures — or, without references, by how well their lyric argmax follows the lyrics in time; head sets saved
as small JSON files that :func:`attnlens.align` reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..captures.result import Capture
from .table import analyze, summarize_heads

RANKED_BY_REFERENCE = "reference word starts: median |error| (ms), then the share within the tolerance"
RANKED_BY_MONOTONIC = "monotonic_alignment_sung (no reference timings given: a heuristic, not a measured error)"
HEAD_SET_FORMAT = "attnlens.head_set"


def _captures(captures: Any) -> list[Capture]:
    """A capture, a list of captures or capture files, or a folder of ``*.attn`` files."""
    from ..captures.io import load_capture

    if isinstance(captures, Capture):
        return [captures]
    if isinstance(captures, (str, Path)):
        p = Path(captures)
        if p.is_dir():
            files = sorted(p.glob("*.attn"))
            if not files:
                raise ValueError(f"{p}: the folder holds no capture file (*.attn)")
            return [load_capture(str(f)) for f in files]
        return [load_capture(str(p))]
    out = [c if isinstance(c, Capture) else load_capture(str(c)) for c in captures]
    if not out:
        raise ValueError("no captures given")
    return out


def find_alignment_heads(
    cap: Any,
    top_k: int = 8,
    step: int | None = None,
    batch: int | None = None,
    sung_threshold: float = 0.5,
    table: pd.DataFrame | None = None,
    reference: Any = None,
    recipe: str = "song",
    tolerance_s: float = 0.16,
) -> pd.DataFrame:
    """The ``top_k`` (layer, head) pairs best at aligning the lyrics, from one capture or many (a list of captures or
    capture files, or a folder of ``*.attn`` files), pooled.

    **With** ``reference`` (word timings of every capture: a list with one entry per capture, each what
    :func:`attnlens.metrics.timing_error` reads — start times in seconds, ``(word, start, end)`` tuples, dicts or
    ``al.align(...).words``; one capture may take its list directly; or a callable ``capture -> timings``), every head
    whose maps were kept aligns the words alone (:func:`attnlens.align` with ``recipe``, at ``step`` (default: the
    last) and ``batch`` (default 0)) and heads are ranked by the median absolute word-start error over all captures'
    words, then by the share within ``tolerance_s`` (160 ms: two ACE-Step frames). Columns: layer, head,
    median_abs_ms, within_tol, mean_abs_ms, n_words, n_captures.

    **Without**, heads are ranked by ``monotonic_alignment_sung`` (mean over the kept steps, batch items and
    captures, or one ``step`` / ``batch``), ties broken by ``diagonal_score`` then ``monotonic_alignment``: a heuristic
    that needs only per-frame statistics. Columns: layer, head, monotonic_alignment_sung, monotonic_alignment,
    diagonal_score, diag_corr, switch_rate, token_span, dominant_fraction, lyric_mass, dominant_token_label. Pass
    ``table`` (an :func:`attnlens.analyze` result of a single capture) to skip recomputing it.

    ``df.attrs["heads"]`` holds the pairs and ``df.attrs["ranked_by"]`` says which ranking was used; the frame can be
    passed as ``heads=`` to :func:`attnlens.align`, and :func:`save_head_set` writes it for later runs.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1; got {top_k}")
    caps = _captures(cap)
    if reference is not None:
        return _rank_by_reference(caps, reference, top_k, step, batch, recipe, tolerance_s)
    if len(caps) > 1:
        if table is not None:
            raise ValueError("table= is the analysis of one capture; pass one capture with it, or no table")
        df = pd.concat([analyze(c, sung_threshold=sung_threshold) for c in caps], ignore_index=True)
    else:
        df = table if table is not None else analyze(caps[0], sung_threshold=sung_threshold)
    cap = caps[0]
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
    summary.attrs["ranked_by"] = RANKED_BY_MONOTONIC
    return summary


def _references(caps: list[Capture], reference: Any) -> list[Any]:
    """One word-timing list per capture (one capture may take its list directly)."""
    if callable(reference):
        return [reference(c) for c in caps]
    refs = [reference] if len(caps) == 1 and _is_word_list(reference) else list(reference)
    if len(refs) != len(caps):
        raise ValueError(f"reference has {len(refs)} entries for {len(caps)} captures: give one word list per capture")
    return refs


def _is_word_list(x: Any) -> bool:
    """True for one capture's word timings (starts, (word, start, end) tuples, dicts or objects with .start)."""
    if not isinstance(x, (list, tuple)) or not x:
        return False
    first = x[0]
    return (
        isinstance(first, (int, float, np.number, dict))
        or hasattr(first, "start")
        or (isinstance(first, tuple) and bool(first) and isinstance(first[0], str))
    )


def _rank_by_reference(
    caps: list[Capture], reference: Any, top_k: int, step: Any, batch: Any, recipe: str, tolerance_s: float
) -> pd.DataFrame:
    from ..metrics.timing import timing_error
    from .align import align

    refs = _references(caps, reference)
    step = -1 if step is None else step
    batch = 0 if batch is None else batch
    pairs = None
    errors: dict[tuple[int, int], list[np.ndarray]] = {}
    for c, ref in zip(caps, refs):
        if c.maps is None:
            raise ValueError(
                "ranking by reference aligns the words with each head's maps: capture with maps=True "
                "(al.capture(pipe, layers=[...], heads=[...], maps=True))"
            )
        here = [(int(layer), int(h)) for layer in c.layers for h in c.heads]
        pairs = here if pairs is None else [p for p in pairs if p in here]
        for p in here:
            words = align(c, heads=[p], step=step, batch=batch, recipe=recipe).words
            errors.setdefault(p, []).append(timing_error(words, ref).error_ms)
    rows = []
    for p in pairs or []:
        err = np.abs(np.concatenate(errors[p]))
        rows.append(
            {
                "layer": p[0],
                "head": p[1],
                "median_abs_ms": float(np.median(err)),
                "within_tol": float(np.mean(err <= tolerance_s * 1000 + 1e-6)),
                "mean_abs_ms": float(err.mean()),
                "n_words": int(err.size),
                "n_captures": len(errors[p]),
            }
        )
    if not rows:
        raise ValueError("no (layer, head) pair has maps in every capture")
    df = pd.DataFrame(rows).sort_values(
        ["median_abs_ms", "within_tol", "mean_abs_ms", "layer", "head"],
        ascending=[True, False, True, True, True],
        kind="stable",
        ignore_index=True,
    )
    out = df.head(top_k).reset_index(drop=True)
    out.attrs["heads"] = [(int(a), int(b)) for a, b in zip(out["layer"], out["head"])]
    out.attrs["ranked_by"] = RANKED_BY_REFERENCE
    out.attrs["tolerance_s"] = tolerance_s
    return out


def save_head_set(heads: Any, path: str | Path, **notes: Any) -> Path:
    """Write alignment heads (a :func:`find_alignment_heads` frame, pairs or ``{layer: [heads]}``) to a small JSON
    file that :func:`load_head_set` and :func:`attnlens.align` (``heads="file.json"``) read. The frame's ranking and
    per-head numbers are kept; ``notes`` are added as they are (e.g. the model's name)."""
    from .capture_arrays import parse_heads

    doc: dict[str, Any] = {"format": HEAD_SET_FORMAT, "version": 1, "heads": [list(p) for p in parse_heads(heads)]}
    if isinstance(heads, pd.DataFrame):
        doc["ranked_by"] = heads.attrs.get("ranked_by", "")
        doc["scores"] = json.loads(heads.to_json(orient="records"))
    doc.update(notes)
    p = Path(path)
    p.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def load_head_set(path: str | Path) -> list[tuple[int, int]]:
    """The (layer, head) pairs of a head set written by :func:`save_head_set`."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not a readable head set ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != HEAD_SET_FORMAT or not isinstance(doc.get("heads"), list):
        raise ValueError(f"{p}: not a head set (expected a JSON object with format {HEAD_SET_FORMAT!r} and heads)")
    return [(int(a), int(b)) for a, b in doc["heads"]]


def heads_dict(pairs: list[tuple[int, int]]) -> dict[int, list[int]]:
    """``{layer: [heads]}`` from (layer, head) pairs."""
    out: dict[int, list[int]] = {}
    for layer, head in pairs:
        out.setdefault(int(layer), []).append(int(head))
    return out
