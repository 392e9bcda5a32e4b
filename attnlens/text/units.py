"""Units of timing by script: words where the script puts spaces between words, characters where it does not.

``unit_spans(text)`` splits a line (or a whole lyric) into the units that word timestamps are given for:

- **Space-delimited scripts** (Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, …): a unit is a maximal run of
  non-space characters (a *word*), punctuation included (``"don't"``, ``"road,"``), as before.
- **CJK** — Han (汉字/漢字/kanji/hanja), Hiragana, Katakana and Hangul syllables (and Hangul jamo): every character
  is its own unit (a *character*): Chinese and Japanese write no spaces between words, and a sung syllable is one
  character in all three scripts (Korean too, although it puts spaces between words: one Hangul syllable block is
  one sung syllable). This is the unit of the character error rate that the ASR literature reports for these
  languages.
- Joined to the character before: combining marks, variation selectors, zero-width joiners, emoji skin tones, the
  small kana ``ぁぃぅぇぉゃゅょゎ`` (and katakana's) that form one syllable with the kana before (``きょ``), and the
  prolonged sound mark ``ー`` (``ラー``).
- Punctuation and symbols next to a CJK character join it (``界!``); before one, they join the next character
  (``「我``). A run of non-space characters with no letter or digit at all (``"😀"``, ``"..."``) is one word.
- Mixed lines mix the units: ``"我爱你 hello world"`` is 我 / 爱 / 你 / hello / world (five units), ``"hello世界"`` is
  hello / 世 / 界.

The unit is stated with every timing (``kind``: ``"word"`` or ``"char"``). A token is the finest thing attention
times, so units that one token covers are timed together: :func:`merge_units_by_tokens` merges them (``中国`` is
one token of the Qwen vocabulary, and so one unit of two characters).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

UNIT_WORD = "word"
UNIT_CHAR = "char"

# (first, last) code points, inclusive
_CJK_RANGES = (
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3005, 0x3007),  # 々 〆 〇
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3031, 0x3035),  # kana repeat marks
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3130, 0x318F),  # Hangul compatibility jamo
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA960, 0xA97F),  # Hangul jamo extended-A
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xD7B0, 0xD7FF),  # Hangul jamo extended-B
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # halfwidth Katakana
    (0xFFA0, 0xFFDC),  # halfwidth Hangul
    (0x1B000, 0x1B16F),  # kana supplement / extended
    (0x20000, 0x3134F),  # CJK extensions B-G, compatibility supplement
)
_SMALL_KANA = set("ぁぃぅぇぉゃゅょゎゕゖァィゥェォャュョヮヵヶㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿｧｨｩｪｫｬｭｮ")
_JOIN_CHARS = set("ーｰ゙゚ﾞﾟ\u200d\u200c") | _SMALL_KANA
_RUN = re.compile(r"\S+")


def is_cjk(ch: str) -> bool:
    """True for a Han, Kana or Hangul character (timed one character at a time)."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES) and ch not in "\u30fb"  # ・ is punctuation


def _joins_previous(ch: str) -> bool:
    if ch in _JOIN_CHARS:
        return True
    cp = ord(ch)
    if 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF or 0x1F3FB <= cp <= 0x1F3FF or 0xE0020 <= cp <= 0xE007F:
        return True  # variation selectors, emoji skin tones, tag characters
    return unicodedata.category(ch).startswith("M")


def _is_wordish(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LN"


def unit_kind(text: str) -> str:
    """``"char"`` for a unit that holds a CJK character, else ``"word"``."""
    return UNIT_CHAR if any(is_cjk(c) for c in text) else UNIT_WORD


def units_name(kinds: list[str]) -> str:
    """How a list of unit kinds is described: ``"words"``, ``"characters"`` or ``"words and characters"``."""
    s = set(kinds)
    if s == {UNIT_CHAR}:
        return "characters"
    if s == {UNIT_CHAR, UNIT_WORD}:
        return "words and characters"
    return "words"


@dataclass(frozen=True)
class Unit:
    """A unit of timing: ``text[start:end]``, of ``kind`` ``"word"`` or ``"char"``."""

    start: int
    end: int
    kind: str


def _split_run(run: str, offset: int) -> list[Unit]:
    """Units of one run of non-space characters starting at ``offset``."""
    if not any(_is_wordish(c) for c in run):
        return [Unit(offset, offset + len(run), UNIT_WORD)]
    pieces: list[list] = []  # [start, end, kind]
    pending = -1  # start of leading punctuation waiting for the next CJK character
    for i, ch in enumerate(run):
        p = offset + i
        last = pieces[-1] if pieces else None
        if last is not None and _joins_previous(ch):
            last[1] = p + 1
        elif is_cjk(ch):
            pieces.append([pending if pending >= 0 else p, p + 1, UNIT_CHAR])
            pending = -1
        elif last is not None and last[2] == UNIT_WORD:
            last[1] = p + 1  # a word goes on until a CJK character
        elif _is_wordish(ch):
            pieces.append([pending if pending >= 0 else p, p + 1, UNIT_WORD])
            pending = -1
        elif last is not None:
            last[1] = p + 1  # punctuation after a CJK character joins it
        elif pending < 0:
            pending = p
    return [Unit(s, e, k) for s, e, k in pieces]


def unit_spans(text: str) -> list[Unit]:
    """The units of ``text`` in order (see the module docstring); spans index ``text``."""
    out: list[Unit] = []
    for m in _RUN.finditer(text):
        out.extend(_split_run(m.group(), m.start()))
    return out


def merge_units_by_tokens(units: list[Unit], token_spans: list[tuple[int, int] | None]) -> list[Unit]:
    """Merge consecutive units that one token overlaps (``token_spans`` in the same coordinates as the units;
    ``None`` or empty spans are skipped). A merged unit is ``"char"`` if any part was."""
    if not units:
        return []
    parent = list(range(len(units)))  # each unit points at the first unit of its group
    for span in token_spans:
        if span is None or span[1] <= span[0]:
            continue
        s, e = span
        hit = [i for i in range(_first_ending_after(units, s), len(units)) if units[i].start < e]
        hit = [i for i in hit if units[i].end > s]
        for i in hit[1:]:
            parent[i] = parent[hit[0]]
    out: list[Unit] = []
    for i, u in enumerate(units):
        if parent[i] != i and out:
            prev = out[-1]
            kind = UNIT_CHAR if UNIT_CHAR in (prev.kind, u.kind) else UNIT_WORD
            out[-1] = Unit(prev.start, u.end, kind)
        else:
            out.append(u)
    return out


def _first_ending_after(units: list[Unit], pos: int) -> int:
    """Index of the first unit that ends after ``pos`` (units are sorted and disjoint)."""
    lo, hi = 0, len(units)
    while lo < hi:
        mid = (lo + hi) // 2
        if units[mid].end <= pos:
            lo = mid + 1
        else:
            hi = mid
    return lo


def unit_separators(text: str, spans: list[tuple[int, int]]) -> list[str]:
    """What goes before each unit when a line is written back: ``" "`` where ``text`` has whitespace between it and
    the unit before, ``""`` otherwise (and for the first)."""
    out = []
    for i, (s, _) in enumerate(spans):
        gap = text[spans[i - 1][1] : s] if i else ""
        out.append(" " if gap and any(c.isspace() for c in gap) else "")
    return out
