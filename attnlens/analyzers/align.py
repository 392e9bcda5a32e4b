"""``al.align``: word and line timestamps from the cross-attention of chosen heads (Whisper's recipe, see
:mod:`attnlens.metrics.wordalign`), with LRC export."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..captures.result import Capture
from ..metrics.wordalign import TokenAlignment, align_tokens, format_lrc
from .capture_arrays import lyric_maps, parse_heads


@dataclass
class WordTiming:
    word: str
    start: float
    """seconds"""
    end: float
    """seconds"""
    line: int
    """index into :attr:`Alignment.lines`"""


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

    def lrc(self) -> str:
        """LRC text, one ``[mm:ss.xx]line`` per sung line."""
        return format_lrc([(ln.start, ln.text) for ln in self.lines])

    def to_dataframe(self) -> pd.DataFrame:
        """One row per word: word, start, end, line."""
        return pd.DataFrame([vars(w) for w in self.words], columns=["word", "start", "end", "line"])


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
        WordTiming(word=it.words[w], start=float(ta.word_start[w]), end=float(ta.word_end[w]), line=int(word_line[w]))
        for w in range(n_words)
    ]
    lines: list[LineTiming] = []
    for li in sorted(set(word_line)):
        ws = [w for w in range(n_words) if word_line[w] == li]
        text = it.lines[li] if li < len(it.lines) else " ".join(it.words[w] for w in ws)
        lines.append(LineTiming(text=text.strip(), start=words[ws[0]].start, end=words[ws[-1]].end, words=ws))
    return Alignment(words=words, lines=lines, heads=pairs, step=step, batch=b, tokens=ta)
