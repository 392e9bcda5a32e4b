"""``al.align``: word and line timestamps from the cross-attention of chosen heads (Whisper's recipe, see
:mod:`attnlens.metrics.wordalign`), written as enhanced LRC, SRT, WebVTT or JSON (:mod:`.lyric_files`).

The units timed are the layout's sung units: words in space-delimited scripts, characters in CJK scripts
(:mod:`attnlens.text.units`); each timing says which (``unit``: ``"word"`` or ``"char"``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..captures.result import Capture
from ..metrics.wordalign import TokenAlignment, align_tokens
from ..text.units import UNIT_CHAR, unit_kind, unit_separators, units_name
from . import lyric_files
from .capture_arrays import lyric_maps, parse_heads


@dataclass
class WordTiming:
    """One timed unit: a word, or a CJK character (several where one token covers them)."""

    word: str
    start: float
    """seconds"""
    end: float
    """seconds"""
    line: int
    """index into :attr:`Alignment.lines`"""
    unit: str = "word"
    """``"word"`` or ``"char"`` (a unit of CJK characters), see :mod:`attnlens.text.units`"""


@dataclass
class LineTiming:
    text: str
    start: float
    end: float
    words: list[int] = field(default_factory=list)
    """indices into :attr:`Alignment.words`"""


@dataclass
class Alignment:
    """Result of :func:`align`: word and line times in seconds."""

    words: list[WordTiming]
    lines: list[LineTiming]
    heads: list[tuple[int, int]]
    step: Any
    batch: int
    tokens: TokenAlignment = field(repr=False)
    separators: list[str] = field(default_factory=list, repr=False)
    """what precedes each unit within its line: ``" "`` between words, ``""`` between CJK characters"""

    @property
    def units(self) -> str:
        """The units timed: ``"words"``, ``"characters"`` or ``"words and characters"``."""
        return units_name([w.unit for w in self.words])

    def lrc(self, words: bool = False) -> str:
        """LRC text: one ``[mm:ss.xx]line`` per sung line, or with ``words=True`` enhanced LRC with a
        ``<mm:ss.xx>`` stamp before every unit (see :mod:`attnlens.analyzers.lyric_files`)."""
        return lyric_files.to_lrc(self, words=words)

    def srt(self, level: str = "line") -> str:
        """SubRip text: a cue per line (``level="line"``) or per unit (``"word"``)."""
        return lyric_files.to_srt(self, level=level)

    def vtt(self, level: str = "line") -> str:
        """WebVTT text: a cue per line with a stamp before every later unit, or a cue per unit (``"word"``)."""
        return lyric_files.to_vtt(self, level=level)

    def json(self) -> str:
        """JSON in Whisper's output shape (segments of words), each word with its unit."""
        return lyric_files.to_json(self)

    def save(self, path: Any, format: str | None = None, **kwargs: Any) -> Any:
        """Write the timings to ``path`` as ``format`` (``"lrc"``, ``"srt"``, ``"vtt"``, ``"json"``; default: from
        the suffix). ``words=`` (LRC) and ``level=`` (SRT, WebVTT) as for the methods above."""
        return lyric_files.write(self, path, format=format, **kwargs)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per unit: word, start, end, line, unit."""
        return pd.DataFrame([vars(w) for w in self.words], columns=["word", "start", "end", "line", "unit"])


def align(
    cap: Capture,
    heads: Any,
    step: Any = -1,
    batch: int = 0,
    medfilt_width: int | None = None,
    dtw_rule: str = "exact",
    open_ends: bool | None = None,
    lyric_weight: bool | None = None,
    recipe: str = "whisper",
) -> Alignment:
    """Word and line timestamps for batch item ``batch`` at generation ``step`` (negative counts from the end;
    ``"mean"`` for a mean-over-steps capture) from the full maps of ``heads`` (a list of (layer, head) pairs, a dict
    ``{layer: [heads]}``, or the frame :func:`attnlens.find_alignment_heads` returns).

    Needs the maps of those heads (``al.capture(pipe, layers=..., heads=..., maps=True)``) and a layout that knows
    the sung words (captures of a pipeline have one). Times in seconds from ``cap.frame_rate``.

    ``recipe="whisper"`` (default) is Whisper's ``timing.py``; ``recipe="song"`` weights frames by the heads' lyric
    mass, lets leading and trailing frames belong to no word (an intro or outro) and sizes the median filter to
    Whisper's 140 ms (none at 12.5 Hz). ``medfilt_width``, ``lyric_weight`` and ``open_ends`` override the recipe one
    by one (see :mod:`attnlens.metrics.wordalign`).
    """
    pairs = parse_heads(heads)
    b = cap.batch_index(batch)
    it = cap.layout[b]
    pos = it.lyric_positions()
    if len(pos) == 0:
        raise ValueError(f"batch item {b} has no sung lyric token: nothing to align")
    word_ids = it.lyric_word_ids()
    if not it.words or (word_ids < 0).all():
        raise ValueError(
            f"the layout of batch item {b} holds no word information (words / word_index); captures of a pipeline "
            "have it, layouts built from segment lengths do not"
        )
    if (word_ids < 0).any():
        raise ValueError("some sung lyric tokens carry no word index (word_index -1) in the layout")
    maps = lyric_maps(cap, pairs, step, b, pos)  # [head, token, frame]
    ta = align_tokens(
        maps,
        word_ids,
        cap.frame_rate,
        medfilt_width=medfilt_width,
        dtw_rule=dtw_rule,
        open_ends=open_ends,
        lyric_weight=lyric_weight,
        recipe=recipe,
    )
    n_words = len(ta.word_start_frame)
    if n_words != len(it.words):
        raise ValueError(f"the layout lists {len(it.words)} sung words but its tokens cover {n_words}")
    word_line = list(it.word_line) if len(it.word_line) == n_words else [0] * n_words
    words = [
        WordTiming(
            word=it.words[w],
            start=float(ta.word_start[w]),
            end=float(ta.word_end[w]),
            line=int(word_line[w]),
            unit=unit_kind(it.words[w]),
        )
        for w in range(n_words)
    ]
    seps = _separators(it, words)
    lines: list[LineTiming] = []
    for li in sorted(set(word_line)):
        ws = [w for w in range(n_words) if word_line[w] == li]
        text = (
            it.lines[li]
            if li < len(it.lines)
            else "".join((seps[w] if k else "") + it.words[w] for k, w in enumerate(ws))
        )
        lines.append(LineTiming(text=text.strip(), start=words[ws[0]].start, end=words[ws[-1]].end, words=ws))
    return Alignment(words=words, lines=lines, heads=pairs, step=step, batch=b, tokens=ta, separators=seps)


def _separators(it: Any, words: list[WordTiming]) -> list[str]:
    """What precedes each unit in its line: read from the lyrics where the layout has the units' spans, else a
    space except between two CJK units."""
    spans = list(getattr(it, "word_spans", None) or [])
    if len(spans) == len(words) and it.lyrics:
        seps = unit_separators(it.lyrics, [tuple(s) for s in spans])
    else:
        seps = ["" if k and UNIT_CHAR == w.unit == words[k - 1].unit else " " if k else "" for k, w in enumerate(words)]
    return ["" if k == 0 or w.line != words[k - 1].line else seps[k] for k, w in enumerate(words)]
