"""Word timing error against ground-truth word timings.

error_ms[w]  = (pred_start[w] - true_start[w]) * 1000          signed, one per word (matched in order)
within_100   = share of words with |error_ms| <= 100
within_200   = share of words with |error_ms| <= 200
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TimingError:
    """Result of :func:`timing_error`."""

    error_ms: np.ndarray = field(repr=False)
    """[word] signed start error in milliseconds (prediction minus truth)."""
    n: int
    mean_abs_ms: float
    median_abs_ms: float
    within_100: float
    within_200: float

    def to_dict(self) -> dict[str, float]:
        return {
            "n": self.n,
            "mean_abs_ms": self.mean_abs_ms,
            "median_abs_ms": self.median_abs_ms,
            "within_100": self.within_100,
            "within_200": self.within_200,
        }


def _start_and_text(item: Any, where: str) -> tuple[float, str | None]:
    if isinstance(item, (int, float, np.integer, np.floating)):
        return float(item), None
    if isinstance(item, dict):
        if "start" not in item:
            raise ValueError(f"{where}: a word dict needs a 'start' key; got keys {sorted(item)}")
        return float(item["start"]), item.get("word", item.get("text"))
    if hasattr(item, "start"):
        return float(item.start), getattr(item, "word", getattr(item, "text", None))
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return float(item[1]), str(item[0])
    raise ValueError(
        f"{where}: expected a start time, a (word, start, end) tuple, a dict or an object with .start; got {item!r}"
    )


def _norm(w: str) -> str:
    return re.sub(r"[^\w']", "", w.lower())


def timing_error(pred_words: Any, true_words: Any, check_words: bool = True) -> TimingError:
    """Per-word start error of ``pred_words`` against ``true_words``, matched in order (same number of words).

    Words may be start times in seconds, ``(word, start, end)`` tuples, dicts with ``start`` (and ``word``), or objects
    with ``.start`` (and ``.word``), e.g. ``al.align(...).words``. With ``check_words`` and text on both sides, the
    words must agree after lowercasing and removing punctuation, else ``ValueError`` names the first mismatch.
    """
    pred = [_start_and_text(x, f"pred_words[{i}]") for i, x in enumerate(pred_words)]
    true = [_start_and_text(x, f"true_words[{i}]") for i, x in enumerate(true_words)]
    if len(pred) != len(true):
        raise ValueError(f"pred_words has {len(pred)} words and true_words {len(true)}; they are matched in order")
    if not pred:
        raise ValueError("no words to compare")
    if check_words:
        for i, ((_, a), (_, b)) in enumerate(zip(pred, true)):
            if a is not None and b is not None and _norm(a) != _norm(b):
                raise ValueError(f"word {i} differs: predicted {a!r}, true {b!r} (pass check_words=False to ignore)")
    ps = np.array([p for p, _ in pred])
    ts = np.array([t for t, _ in true])
    if not (np.all(np.isfinite(ps)) and np.all(np.isfinite(ts))):
        raise ValueError("word start times must be finite")
    err = (ps - ts) * 1000.0
    ab = np.abs(err)
    tol = 1e-9  # times in seconds carry float rounding; 0.1 s read as 100.00000000000001 ms still counts
    return TimingError(
        error_ms=err,
        n=len(err),
        mean_abs_ms=float(ab.mean()),
        median_abs_ms=float(np.median(ab)),
        within_100=float(np.mean(ab <= 100 + tol)),
        within_200=float(np.mean(ab <= 200 + tol)),
    )
