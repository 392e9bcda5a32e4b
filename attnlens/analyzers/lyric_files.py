"""Word timings written for players and editors: enhanced LRC, SRT, WebVTT and JSON from an :class:`Alignment`.

- **LRC** (``words=True``: enhanced, "A2" word stamps): one line per sung line,
  ``[mm:ss.xx]<mm:ss.xx>unit <mm:ss.xx>unit …<mm:ss.xx>`` — each unit after the stamp of its start, the text between
  units as the lyrics have it (a space between words, nothing between CJK characters), and a closing stamp at the
  line's end. ``words=False``: ``[mm:ss.xx]line``. Centiseconds.
- **SRT**: one cue per line (``level="line"``) or per unit (``level="word"``), ``hh:mm:ss,mmm``.
- **WebVTT**: one cue per line with an inline ``<hh:mm:ss.mmm>`` stamp before every unit after the first (WebVTT's
  karaoke cue timestamps), or one cue per unit; the header line says the unit.
- **JSON**: Whisper's output shape (``segments`` with ``start``, ``end``, ``text`` and ``words`` of ``word``,
  ``start``, ``end``), each word with its ``unit`` (``"word"`` or ``"char"``), and at the top ``units``, the heads,
  step, batch item and frame rate.

Every format states times in seconds from the start of the clip (the capture's frame times).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .align import Alignment

FORMATS = ("lrc", "srt", "vtt", "json")
SUFFIXES = {".lrc": "lrc", ".srt": "srt", ".vtt": "vtt", ".json": "json"}


def _check_time(seconds: float) -> int:
    """Milliseconds of a finite non-negative time."""
    if not (seconds == seconds and seconds >= 0 and seconds != float("inf")):
        raise ValueError(f"times must be finite non-negative seconds; got {seconds}")
    return int(round(seconds * 1000))


def lrc_stamp(seconds: float) -> str:
    """``mm:ss.xx`` (centiseconds; minutes grow past 99 if needed)."""
    cs = int(round(_check_time(seconds) / 10))
    return f"{cs // 6000:02d}:{(cs % 6000) // 100:02d}.{cs % 100:02d}"


def clock(seconds: float, sep: str) -> str:
    """``hh:mm:ss{sep}mmm``: SRT (``,``) and WebVTT (``.``) times."""
    ms = _check_time(seconds)
    return f"{ms // 3_600_000:02d}:{(ms // 60_000) % 60:02d}:{(ms // 1000) % 60:02d}{sep}{ms % 1000:03d}"


def _line_units(aln: Alignment, li: int) -> list[tuple[str, Any]]:
    """``(separator, WordTiming)`` of line ``li``'s units."""
    return [(aln.separators[w] if w < len(aln.separators) else " ", aln.words[w]) for w in aln.lines[li].words]


def to_lrc(aln: Alignment, words: bool = True) -> str:
    """Enhanced LRC with word stamps (``words=True``) or one stamp per line (see the module docstring)."""
    out = []
    for li, line in enumerate(aln.lines):
        if not words:
            out.append(f"[{lrc_stamp(line.start)}]{line.text}")
            continue
        body = "".join(
            f"{sep if k else ''}<{lrc_stamp(w.start)}>{w.word}" for k, (sep, w) in enumerate(_line_units(aln, li))
        )
        out.append(f"[{lrc_stamp(line.start)}]{body}<{lrc_stamp(line.end)}>")
    return "\n".join(out)


def _cues(aln: Alignment, level: str) -> list[tuple[float, float, str, int]]:
    """``(start, end, text, line)`` per line or per unit."""
    if level == "line":
        return [(ln.start, ln.end, ln.text, li) for li, ln in enumerate(aln.lines)]
    if level == "word":
        return [(w.start, w.end, w.word, w.line) for w in aln.words]
    raise ValueError(f"level must be 'line' or 'word'; got {level!r}")


def to_srt(aln: Alignment, level: str = "line") -> str:
    """SubRip: one numbered cue per line (``level="line"``) or per unit (``level="word"``)."""
    blocks = [
        f"{i}\n{clock(s, ',')} --> {clock(e, ',')}\n{text}\n" for i, (s, e, text, _) in enumerate(_cues(aln, level), 1)
    ]
    return "\n".join(blocks)


def to_vtt(aln: Alignment, level: str = "line") -> str:
    """WebVTT: per line with an inline stamp before each later unit (``level="line"``), or one cue per unit."""
    head = f"WEBVTT - timing units: {aln.units}\n"
    blocks = [head]
    for s, e, text, li in _cues(aln, level):
        if level == "line":
            text = "".join(
                f"{sep}<{clock(w.start, '.')}>{w.word}" if k else w.word
                for k, (sep, w) in enumerate(_line_units(aln, li))
            )
        blocks.append(f"{clock(s, '.')} --> {clock(e, '.')}\n{text}\n")
    return "\n".join(blocks)


def to_dict(aln: Alignment) -> dict[str, Any]:
    """The JSON document as a dict (see the module docstring)."""
    segments = []
    for li, line in enumerate(aln.lines):
        segments.append(
            {
                "id": li,
                "start": line.start,
                "end": line.end,
                "text": line.text,
                "words": [
                    {"word": w.word, "start": w.start, "end": w.end, "unit": w.unit} for _, w in _line_units(aln, li)
                ],
            }
        )
    return {
        "units": aln.units,
        "text": "\n".join(ln.text for ln in aln.lines),
        "segments": segments,
        "heads": [list(h) for h in aln.heads],
        "step": aln.step if isinstance(aln.step, (int, str)) else str(aln.step),
        "batch": aln.batch,
        "frame_rate": aln.tokens.frame_rate,
    }


def to_json(aln: Alignment, indent: int | None = 2) -> str:
    """The JSON document as text (UTF-8 characters kept as they are)."""
    return json.dumps(to_dict(aln), ensure_ascii=False, indent=indent) + "\n"


def render(aln: Alignment, format: str, level: str = "line", words: bool = True) -> str:
    """The text of one format: ``"lrc"`` (``words``: word stamps), ``"srt"``, ``"vtt"`` (``level``) or ``"json"``."""
    if format == "lrc":
        return to_lrc(aln, words=words)
    if format == "srt":
        return to_srt(aln, level=level)
    if format == "vtt":
        return to_vtt(aln, level=level)
    if format == "json":
        return to_json(aln)
    raise ValueError(f"format must be one of {FORMATS}; got {format!r}")


def format_of(path: str | Path, format: str | None = None) -> str:
    """The format named, or read from the file's suffix."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}; got {format!r}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot tell the format of {str(path)!r} from its suffix; pass format= one of {FORMATS}")
    return SUFFIXES[suffix]


def write(aln: Alignment, path: str | Path, format: str | None = None, **kwargs: Any) -> Path:
    """Write ``aln`` to ``path`` (UTF-8) in ``format`` or the one its suffix names; returns the path."""
    p = Path(path)
    text = render(aln, format_of(p, format), **kwargs)
    p.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return p
