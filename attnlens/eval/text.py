"""Word and character error rates (jiwer) with explicit text normalization.

Normalization modes (``normalize=``):

- ``"whisper"`` (default): openai-whisper's ``EnglishTextNormalizer`` on both texts (lowercase, punctuation and
  bracketed annotations removed, contractions/numbers/spellings standardized). Needs the ``openai-whisper`` package
  (only its pure-Python normalizer is used).
- ``"lower"``: lowercase only; punctuation is kept, so ``"me."`` and ``"me"`` are different words. This is how the
  published seed numbers were computed and reproduces them to the last digit.
- ``"none"``: texts are compared as given.
- any callable ``str -> str``.

Scoring rules (the same in every mode):

- WER = (S + D + I) / N over words, CER = (S + D + I) / N over characters (spaces included), computed by jiwer on the
  normalized texts; N is the length of the normalized reference. Both can exceed 1 (insertions).
- An empty reference (after normalization) is an error: there is nothing to score against.
- A *non-speech* hypothesis scores WER = CER = 1.0 exactly. A hypothesis is non-speech when, after removing
  bracketed/parenthesized annotations (``[Music]``, ``(applause)``, ``*music*``), it has no letter and no digit
  (``""``, ``"🎵"``, ``"♪ ♪"``, ``"..."``), or when its normalized form is empty. Hallucinated words such as
  ``"Thank you."`` are words and are scored normally.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from typing import Union

import jiwer

Normalizer = Union[str, Callable[[str], str]]

NORMALIZE_MODES: tuple[str, ...] = ("whisper", "lower", "none")

_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")


@functools.lru_cache(maxsize=1)
def _whisper_normalizer() -> Callable[[str], str]:
    try:
        from whisper.normalizers import EnglishTextNormalizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "normalize='whisper' needs openai-whisper's text normalizer. Install it without its GPU extras: "
            "`pip install --no-deps openai-whisper more-itertools tiktoken`, or pass normalize='lower'."
        ) from e
    return EnglishTextNormalizer()


def get_normalizer(normalize: Normalizer) -> Callable[[str], str]:
    """Return the ``str -> str`` function for a normalization mode name or callable."""
    if callable(normalize):
        return normalize
    if normalize == "whisper":
        return _whisper_normalizer()
    if normalize == "lower":
        return str.lower
    if normalize == "none":
        return lambda s: s
    raise ValueError(f"normalize must be one of {NORMALIZE_MODES} or a callable, got {normalize!r}")


def normalize_text(text: str, normalize: Normalizer = "whisper") -> str:
    """Apply a normalization mode and collapse whitespace."""
    if not isinstance(text, str):
        raise TypeError(f"expected a str, got {type(text).__name__}")
    return " ".join(get_normalizer(normalize)(text).split())


def is_non_speech(text: str) -> bool:
    """True when ``text`` holds no words: no letter or digit outside ``[..]``, ``(..)`` or ``*..*`` annotations."""
    stripped = _ANNOTATION.sub(" ", text)
    return not any(unicodedata.category(ch)[0] in "LN" for ch in stripped)


def _prepare(reference: str, hypothesis: str, normalize: Normalizer) -> tuple[str, str | None]:
    """Normalized (reference, hypothesis); hypothesis None means non-speech (a full error)."""
    if not isinstance(reference, str) or not isinstance(hypothesis, str):
        raise TypeError(
            f"reference and hypothesis must be str, got {type(reference).__name__} and {type(hypothesis).__name__}"
        )
    ref = normalize_text(reference, normalize)
    if not ref:
        raise ValueError(f"reference is empty after normalization (normalize={normalize!r}): {reference!r}")
    if is_non_speech(hypothesis):
        return ref, None
    hyp = normalize_text(hypothesis, normalize)
    return ref, (hyp or None)


def wer(reference: str, hypothesis: str, normalize: Normalizer = "whisper") -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words, after ``normalize``.

    Non-speech hypotheses (see the module docstring) score 1.0. Raises ``ValueError`` for an empty reference.
    """
    ref, hyp = _prepare(reference, hypothesis, normalize)
    if hyp is None:
        return 1.0
    return float(jiwer.wer(ref, hyp))


def cer(reference: str, hypothesis: str, normalize: Normalizer = "whisper") -> float:
    """Character error rate: (S + D + I) / reference characters (spaces count), after ``normalize``.

    Non-speech hypotheses score 1.0. Raises ``ValueError`` for an empty reference.
    """
    ref, hyp = _prepare(reference, hypothesis, normalize)
    if hyp is None:
        return 1.0
    return float(jiwer.cer(ref, hyp))


def error_rates(reference: str, hypothesis: str, normalize: Normalizer = "whisper") -> dict[str, float]:
    """``{"wer": ..., "cer": ...}`` in one call (normalizes once)."""
    ref, hyp = _prepare(reference, hypothesis, normalize)
    if hyp is None:
        return {"wer": 1.0, "cer": 1.0}
    return {"wer": float(jiwer.wer(ref, hyp)), "cer": float(jiwer.cer(ref, hyp))}


def lyrics_to_reference(lyrics: str) -> str:
    """Sung words of a lyrics field: ``[tag]`` lines/spans removed, lines joined by single spaces."""
    no_tags = re.sub(r"\[[^\]]*\]", " ", lyrics)
    return " ".join(no_tags.split())
