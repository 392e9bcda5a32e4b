"""Word and character error rates (jiwer) with explicit text normalization.

Normalization modes (``normalize=``):

- ``"auto"`` (default): by the lyric's ``language`` — English (``"en"``, or no language given): Whisper's English
  normalizer (below); any other language: Whisper's ``BasicTextNormalizer`` (lowercase, bracketed annotations,
  punctuation and symbols removed; diacritics, kana voicing marks and every script's letters kept), as Whisper's own
  evaluation does for non-English speech.
- ``"whisper"``: openai-whisper's ``EnglishTextNormalizer`` on both texts (lowercase, punctuation and
  bracketed annotations removed, contractions/numbers/spellings standardized). Needs the ``openai-whisper`` package
  (only its pure-Python normalizer is used). English only: it strips diacritics, so Japanese ``で`` reads ``て``.
- ``"basic"``: Whisper's ``BasicTextNormalizer`` whatever the language.
- ``"lower"``: lowercase only; punctuation is kept, so ``"me."`` and ``"me"`` are different words. This is how the
  published seed numbers were computed and reproduces them to the last digit.
- ``"none"``: texts are compared as given.
- any callable ``str -> str``.

Scoring rules (the same in every mode):

- WER = (S + D + I) / N over words, CER = (S + D + I) / N over characters (spaces included), computed by jiwer on the
  normalized texts; N is the length of the normalized reference. Both can exceed 1 (insertions).
- Chinese, Japanese, Korean and Cantonese (``CJK_LANGUAGES``): the CER ignores spaces (they are not characters of
  those scripts, and a transcriber places them at will) and is the headline error rate (:func:`headline_metric`):
  without spaces between words a "word" error rate measures the transcriber's spacing, so the ASR literature reports
  character error rates for these languages.
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

NORMALIZE_MODES: tuple[str, ...] = ("auto", "whisper", "basic", "lower", "none")
CJK_LANGUAGES: frozenset[str] = frozenset({"zh", "ja", "ko", "yue", "cmn", "wuu", "zh-cn", "zh-tw", "zh-hk"})
"""Language codes whose headline error rate is the CER (spaces ignored)."""
ENGLISH: frozenset[str] = frozenset({"en", "eng", "english", "en-us", "en-gb"})

_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")


@functools.lru_cache(maxsize=2)
def _whisper_normalizer(kind: str = "English") -> Callable[[str], str]:
    """openai-whisper's ``EnglishTextNormalizer`` (``kind="English"``) or ``BasicTextNormalizer`` (``"Basic"``)."""
    try:
        from whisper import normalizers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"normalize={'whisper' if kind == 'English' else 'basic'!r} needs openai-whisper's text normalizer. Install "
            "it without its GPU extras: `pip install --no-deps openai-whisper more-itertools tiktoken`, or pass "
            "normalize='lower'."
        ) from e
    return getattr(normalizers, f"{kind}TextNormalizer")()


def _lang(language: str | None) -> str | None:
    return language.strip().lower() if isinstance(language, str) and language.strip() else None


def is_cjk_language(language: str | None) -> bool:
    """True for Chinese, Japanese, Korean and Cantonese language codes (``CJK_LANGUAGES``)."""
    lang = _lang(language)
    return lang is not None and (lang in CJK_LANGUAGES or lang.split("-")[0] in CJK_LANGUAGES)


def headline_metric(language: str | None) -> str:
    """``"cer"`` for CJK languages, ``"wer"`` otherwise (see the module docstring)."""
    return "cer" if is_cjk_language(language) else "wer"


def get_normalizer(normalize: Normalizer, language: str | None = None) -> Callable[[str], str]:
    """Return the ``str -> str`` function for a normalization mode name (``"auto"`` reads ``language``) or
    callable."""
    if callable(normalize):
        return normalize
    if normalize == "auto":
        lang = _lang(language)
        return _whisper_normalizer() if lang is None or lang in ENGLISH else _whisper_normalizer("Basic")
    if normalize == "whisper":
        return _whisper_normalizer()
    if normalize == "basic":
        return _whisper_normalizer("Basic")
    if normalize == "lower":
        return str.lower
    if normalize == "none":
        return lambda s: s
    raise ValueError(f"normalize must be one of {NORMALIZE_MODES} or a callable, got {normalize!r}")


def normalize_text(text: str, normalize: Normalizer = "auto", language: str | None = None) -> str:
    """Apply a normalization mode (for ``language``) and collapse whitespace."""
    if not isinstance(text, str):
        raise TypeError(f"expected a str, got {type(text).__name__}")
    return " ".join(get_normalizer(normalize, language)(text).split())


def is_non_speech(text: str) -> bool:
    """True when ``text`` holds no words: no letter or digit outside ``[..]``, ``(..)`` or ``*..*`` annotations."""
    stripped = _ANNOTATION.sub(" ", text)
    return not any(unicodedata.category(ch)[0] in "LN" for ch in stripped)


def _prepare(
    reference: str, hypothesis: str, normalize: Normalizer, language: str | None = None
) -> tuple[str, str | None]:
    """Normalized (reference, hypothesis); hypothesis None means non-speech (a full error)."""
    if not isinstance(reference, str) or not isinstance(hypothesis, str):
        raise TypeError(
            f"reference and hypothesis must be str, got {type(reference).__name__} and {type(hypothesis).__name__}"
        )
    ref = normalize_text(reference, normalize, language)
    if not ref:
        raise ValueError(f"reference is empty after normalization (normalize={normalize!r}): {reference!r}")
    if is_non_speech(hypothesis):
        return ref, None
    hyp = normalize_text(hypothesis, normalize, language)
    return ref, (hyp or None)


def _cer(ref: str, hyp: str, language: str | None) -> float:
    if is_cjk_language(language):  # spaces are no characters of these scripts
        ref, hyp = ref.replace(" ", ""), hyp.replace(" ", "")
        if not hyp:
            return 1.0
    return float(jiwer.cer(ref, hyp))


def wer(reference: str, hypothesis: str, normalize: Normalizer = "auto", language: str | None = None) -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words, after ``normalize`` (for
    ``language``).

    Non-speech hypotheses (see the module docstring) score 1.0. Raises ``ValueError`` for an empty reference.
    """
    ref, hyp = _prepare(reference, hypothesis, normalize, language)
    if hyp is None:
        return 1.0
    return float(jiwer.wer(ref, hyp))


def cer(reference: str, hypothesis: str, normalize: Normalizer = "auto", language: str | None = None) -> float:
    """Character error rate: (S + D + I) / reference characters (spaces count, except in CJK languages), after
    ``normalize`` (for ``language``).

    Non-speech hypotheses score 1.0. Raises ``ValueError`` for an empty reference.
    """
    ref, hyp = _prepare(reference, hypothesis, normalize, language)
    if hyp is None:
        return 1.0
    return _cer(ref, hyp, language)


def error_rates(
    reference: str, hypothesis: str, normalize: Normalizer = "auto", language: str | None = None
) -> dict[str, float]:
    """``{"wer": ..., "cer": ...}`` in one call (normalizes once). The headline of the two for ``language`` is
    :func:`headline_metric`."""
    ref, hyp = _prepare(reference, hypothesis, normalize, language)
    if hyp is None:
        return {"wer": 1.0, "cer": 1.0}
    return {"wer": float(jiwer.wer(ref, hyp)), "cer": _cer(ref, hyp, language)}


def lyrics_to_reference(lyrics: str) -> str:
    """Sung words of a lyrics field: ``[tag]`` lines/spans removed, lines joined by single spaces."""
    no_tags = re.sub(r"\[[^\]]*\]", " ", lyrics)
    return " ".join(no_tags.split())
