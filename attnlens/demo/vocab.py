"""Words, voices and caption extras of the "tiny songs" demo task.

Every word is lowercase, plain ASCII, left unchanged by Whisper's English text normalizer (no number
words, contractions or British spellings), and is a single token of the GPT-2 byte-level BPE both with
and without a leading space (the first sung word follows ``"[verse]\\n"`` and carries no space). Caption
words are disjoint from the sung words, so a token's segment never has to be guessed from its text.
``single_token_violations`` checks these facts against any tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

# 64 short common English words, one token each (with and without a leading space) in GPT-2's BPE.
DEMO_WORDS: tuple[str, ...] = (
    "sun", "moon", "star", "sky", "rain", "wind", "fire", "light",
    "night", "day", "home", "heart", "love", "song", "dream", "sea",
    "road", "tree", "bird", "rose", "gold", "blue", "green", "red",
    "cold", "fast", "high", "low", "run", "walk", "fly", "sing",
    "hold", "fall", "rise", "shine", "burn", "call", "see", "feel",
    "know", "find", "keep", "stay", "come", "away", "back", "down",
    "over", "near", "far", "still", "again", "free", "wild", "sweet",
    "long", "young", "old", "new", "open", "sleep", "wake", "cry",
)  # fmt: skip

# Named voices: each colours the latents with its own per-channel gain and offset (see task.make_voices).
VOICE_NAMES: tuple[str, ...] = ("warm", "bright", "airy", "dark", "clear")

# Style words appended to the caption; they carry no acoustic effect (a distractor, as in real captions).
CAPTION_EXTRAS: tuple[str, ...] = ("pop", "folk", "jazz", "soul", "rock", "blues")


def demo_vocabulary() -> list[str]:
    """The sung vocabulary of the demo task (64 words), in a fixed order."""
    return list(DEMO_WORDS)


def _encode_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens, for a `tokenizers.Tokenizer` or a transformers tokenizer."""
    if hasattr(tokenizer, "encode") and type(tokenizer).__module__.startswith("tokenizers"):
        return list(tokenizer.encode(text, add_special_tokens=False).ids)
    if callable(tokenizer):
        out = tokenizer(text, add_special_tokens=False)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out.input_ids
        return list(ids)
    raise TypeError(
        f"tokenizer must be a tokenizers.Tokenizer or a transformers tokenizer, got {type(tokenizer).__name__}"
    )


def single_token_violations(
    tokenizer: Any, words: Iterable[str] | None = None, *, forms: Sequence[str] = (" {}", "{}")
) -> dict[str, dict[str, int]]:
    """Words that do not encode to exactly one token in every form.

    ``forms`` are format strings: ``" {}"`` is the word after a space (every word but the first of a
    line), ``"{}"`` the word after a newline (the first word of a line). Returns
    ``{word: {form: n_tokens}}`` for every failing word/form; an empty dict means all words pass.
    """
    words = list(DEMO_WORDS if words is None else words)
    bad: dict[str, dict[str, int]] = {}
    for word in words:
        for form in forms:
            n = len(_encode_ids(tokenizer, form.format(word)))
            if n != 1:
                bad.setdefault(word, {})[form] = n
    return bad


def _encode_offsets(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """Character offsets of each token of ``text`` (no special tokens)."""
    if type(tokenizer).__module__.startswith("tokenizers"):
        return [tuple(o) for o in tokenizer.encode(text, add_special_tokens=False).offsets]
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [tuple(o) for o in out["offset_mapping"]]


def tokens_per_word(tokenizer: Any, text: str, words: Sequence[str]) -> list[int]:
    """How many tokens of ``text`` overlap each occurrence of ``words`` (in order), read from offsets.

    Use it on the exact string the model sees (e.g. the wrapped lyric prompt) to verify one token per
    sung word in context; each entry should be 1. A word missing from ``text`` raises ``ValueError``.
    Byte-level offsets may include a leading space in a token; a token counts for a word when their
    character spans intersect.
    """
    offsets = _encode_offsets(tokenizer, text)
    counts: list[int] = []
    pos = 0
    for word in words:
        match = re.compile(r"(?<!\w)" + re.escape(word) + r"(?!\w)").search(text, pos)
        if match is None:
            raise ValueError(f"word {word!r} not found in text after character {pos}: {text!r}")
        start, end = match.span()
        counts.append(sum(1 for a, b in offsets if a < end and b > start))
        pos = end
    return counts
