"""Layout of the packed conditioning keys that cross-attention attends to.

For every batch item and every packed key position: which segment it belongs to, what token it is, and for
lyric tokens where it sits in the user's lyrics (character span, word and line index).

Segment names come from the layout's vocabulary (:class:`~attnlens.segments.Segments`), which the model family
declares; their masses add to 1 for every frame. ``"unknown"`` marks keys of a layout that is not known (a bare
transformer captured without one). ACE-Step's vocabulary (also the default of a layout built without one)::

    lyric       sung lyric tokens (the lyric set L of the metric definitions)
    lyric_meta  lyric tokens that are not sung: the "# Languages / # Lyric" header, structure tags such as
                "[verse]", whitespace-only tokens and the closing <|endoftext|>
    timbre      timbre (reference-audio) embeddings
    caption     caption / text-prompt tokens
    padding     keys past the item's valid length (attended to: ACE-Step passes no mask to cross-attention)

A key the model masks out of its softmax (an attention mask) keeps its segment name here; the capture records the
mask itself (``key_valid``) and gives such keys probability 0, as the model does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..segments import DEFAULT_SEGMENTS, SEGMENT_CODE, SEGMENTS, UNKNOWN, Segments  # noqa: F401 (re-exported)

__all__ = ["SEGMENTS", "SEGMENT_CODE", "UNKNOWN", "Segments", "DEFAULT_SEGMENTS", "ItemLayout", "Layout"]

# fine-grained kinds of lyric tokens
KIND_SUNG = "sung"
KIND_HEADER = "header"
KIND_TAG = "tag"
KIND_SPACE = "space"
KIND_END = "end"


@dataclass
class ItemLayout:
    """Layout of one batch item's packed keys (all lists have one entry per packed key)."""

    segments: list[str]
    """segment of every packed key (a name of :attr:`vocabulary`, or ``"unknown"``)."""
    tokens: list[str | None] = field(default_factory=list)
    """decoded token text (``None`` for timbre/padding keys)."""
    kinds: list[str | None] = field(default_factory=list)
    """for lyric keys: ``sung``/``header``/``tag``/``space``/``end``; ``None`` elsewhere."""
    char_spans: list[tuple[int, int] | None] = field(default_factory=list)
    """for lyric keys: ``(start, end)`` character span in :attr:`lyrics` (``None`` for header/end tokens)."""
    word_index: list[int] = field(default_factory=list)
    """for sung keys: index of the sung word (into :attr:`words`); -1 elsewhere."""
    line_index: list[int] = field(default_factory=list)
    """for sung keys: index of the sung line (into :attr:`lines`); -1 elsewhere."""
    lyrics: str = ""
    """the user's lyrics (without the header the pipeline adds)."""
    caption: str = ""
    words: list[str] = field(default_factory=list)
    """sung words in order (structure tags removed)."""
    word_spans: list[tuple[int, int]] = field(default_factory=list)
    """character span of every sung word in :attr:`lyrics`."""
    word_line: list[int] = field(default_factory=list)
    """line index of every sung word."""
    lines: list[str] = field(default_factory=list)
    """lines that hold sung words, in order."""
    vocabulary: Segments = DEFAULT_SEGMENTS
    """the family's segment vocabulary (order of the ``mass`` statistic's segments)."""

    def __post_init__(self) -> None:
        n = len(self.segments)
        for name in ("tokens", "kinds", "char_spans"):
            if not getattr(self, name):
                setattr(self, name, [None] * n)
        for name in ("word_index", "line_index"):
            if not getattr(self, name):
                setattr(self, name, [-1] * n)
        for name in ("tokens", "kinds", "char_spans", "word_index", "line_index"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"ItemLayout.{name} has {len(getattr(self, name))} entries; expected {n} (one per key)"
                )
        if not isinstance(self.vocabulary, Segments):
            raise TypeError(f"ItemLayout.vocabulary must be a Segments; got {type(self.vocabulary).__name__}")
        names = self.vocabulary.names
        bad = sorted({s for s in self.segments if s not in names and s != UNKNOWN})
        if bad:
            raise ValueError(f"unknown segment name(s) {bad}; expected one of {names + (UNKNOWN,)}")

    @property
    def n_keys(self) -> int:
        return len(self.segments)

    @property
    def known(self) -> bool:
        return UNKNOWN not in self.segments

    def segment_codes(self) -> np.ndarray:
        """int array ``[key]`` of segment codes (index into the vocabulary's names; -1 for unknown)."""
        code = {name: i for i, name in enumerate(self.vocabulary.names)}
        return np.array([code.get(s, -1) for s in self.segments], dtype=np.int64)

    def lyric_positions(self, include_meta: bool = False) -> np.ndarray:
        """Packed key positions of the set L: keys of the vocabulary's sequence segment (ACE-Step: sung lyric tokens;
        with ``include_meta`` also its meta segment, ACE-Step's header/tag tokens). Empty when the vocabulary has no
        sequence segment."""
        keep = self.vocabulary.sequence_names(include_meta)
        return np.array([i for i, s in enumerate(self.segments) if s in keep], dtype=np.int64)

    def lyric_labels(self, include_meta: bool = False) -> list[str]:
        """Token text of the lyric set L, in packed order."""
        return [self.tokens[i] or "" for i in self.lyric_positions(include_meta)]

    def lyric_word_ids(self) -> np.ndarray:
        """Word index of every token of L (sung tokens), in packed order."""
        return np.array([self.word_index[i] for i in self.lyric_positions()], dtype=np.int64)

    def lyric_line_ids(self) -> np.ndarray:
        """Line index of every token of L (sung tokens), in packed order."""
        return np.array([self.line_index[i] for i in self.lyric_positions()], dtype=np.int64)

    def label(self, key: int) -> str:
        """Human-readable label of one packed key, e.g. ``'lyric:" morning"'`` or ``'timbre[0]'``."""
        seg = self.segments[key]
        tok = self.tokens[key]
        if tok is not None:
            return f"{seg}:{tok!r}"
        first = self.segments.index(seg)
        return f"{seg}[{key - first}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "segments": self.segments,
            "tokens": self.tokens,
            "kinds": self.kinds,
            "char_spans": [list(s) if s is not None else None for s in self.char_spans],
            "word_index": self.word_index,
            "line_index": self.line_index,
            "lyrics": self.lyrics,
            "caption": self.caption,
            "words": self.words,
            "word_spans": [list(s) for s in self.word_spans],
            "word_line": self.word_line,
            "lines": self.lines,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], vocabulary: Segments = DEFAULT_SEGMENTS) -> ItemLayout:
        """The item written by :meth:`to_json` (the vocabulary is stored once per :class:`Layout`)."""
        try:
            return cls(
                segments=list(d["segments"]),
                tokens=list(d["tokens"]),
                kinds=list(d["kinds"]),
                char_spans=[tuple(s) if s is not None else None for s in d["char_spans"]],
                word_index=[int(x) for x in d["word_index"]],
                line_index=[int(x) for x in d["line_index"]],
                lyrics=str(d.get("lyrics", "")),
                caption=str(d.get("caption", "")),
                words=list(d.get("words", [])),
                word_spans=[tuple(s) for s in d.get("word_spans", [])],
                word_line=[int(x) for x in d.get("word_line", [])],
                lines=list(d.get("lines", [])),
                vocabulary=vocabulary,
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed item layout in capture file: {e!r}") from e

    @classmethod
    def unknown(cls, n_keys: int, vocabulary: Segments = DEFAULT_SEGMENTS) -> ItemLayout:
        """A layout that says it does not know what the keys are."""
        return cls(segments=[UNKNOWN] * n_keys, vocabulary=vocabulary)

    @classmethod
    def from_segment_lengths(cls, vocabulary: Segments = DEFAULT_SEGMENTS, **lengths: int) -> ItemLayout:
        """Build a layout from segment lengths in packed order, e.g. ``from_segment_lengths(lyric=20, timbre=1,
        caption=40, padding=3)`` (names of ``vocabulary``, ACE-Step's by default). Useful for maps that did not come
        from a pipeline."""
        segs: list[str] = []
        for name, n in lengths.items():
            if name not in vocabulary:
                raise ValueError(f"unknown segment {name!r}; expected one of {vocabulary.names}")
            if n < 0:
                raise ValueError(f"segment {name!r} has negative length {n}")
            segs += [name] * int(n)
        return cls(segments=segs, vocabulary=vocabulary)


@dataclass
class Layout:
    """Layout of every batch item (see :class:`ItemLayout`). ``items[b]`` describes batch item ``b``; all items
    share one segment vocabulary."""

    items: list[ItemLayout]
    source: str = "unknown"
    """where it came from: ``"pipeline"`` (hooks + re-tokenization), ``"user"``, or ``"unknown"``."""
    vocabulary_: Segments | None = None
    """the vocabulary of a layout without items (else the items'); read it as :attr:`vocabulary`."""

    def __post_init__(self) -> None:
        vocs = {it.vocabulary for it in self.items}
        if self.vocabulary_ is not None:
            vocs.add(self.vocabulary_)
        if len(vocs) > 1:
            raise ValueError(
                "the items of one layout must share one segment vocabulary; got "
                + ", ".join(repr(v.names) for v in vocs)
            )

    @property
    def vocabulary(self) -> Segments:
        """The segment vocabulary (order of the ``mass`` statistic's segments)."""
        if self.items:
            return self.items[0].vocabulary
        return self.vocabulary_ or DEFAULT_SEGMENTS

    @property
    def segment_names(self) -> tuple[str, ...]:
        return self.vocabulary.names

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, b: int) -> ItemLayout:
        return self.items[b]

    @property
    def known(self) -> bool:
        return all(it.known for it in self.items)

    def segment_codes(self) -> np.ndarray:
        """int array ``[batch, key]`` of segment codes (-1 for unknown)."""
        return np.stack([it.segment_codes() for it in self.items])

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "vocabulary": self.vocabulary.to_json(),
            "items": [it.to_json() for it in self.items],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Layout:
        """The layout written by :meth:`to_json`; a file without a vocabulary (written before vocabularies were
        recorded) has :data:`~attnlens.segments.DEFAULT_SEGMENTS`."""
        if not isinstance(d, dict) or not isinstance(d.get("items"), list):
            raise ValueError("malformed layout in capture file: expected an object with an 'items' list")
        voc = Segments.from_json(d["vocabulary"]) if "vocabulary" in d else DEFAULT_SEGMENTS
        items = [ItemLayout.from_json(x, voc) if isinstance(x, dict) else _bad_item(x) for x in d["items"]]
        return cls(items=items, source=str(d.get("source", "unknown")), vocabulary_=voc)

    def __repr__(self) -> str:
        parts = []
        for b, it in enumerate(self.items):
            counts = {s: it.segments.count(s) for s in it.vocabulary.names + (UNKNOWN,) if it.segments.count(s)}
            parts.append(f"  [{b}] " + ", ".join(f"{k}={v}" for k, v in counts.items()) + f"; words={len(it.words)}")
        return f"Layout(source={self.source!r}, keys={[it.n_keys for it in self.items]}\n" + "\n".join(parts) + ")"


def _bad_item(x: Any) -> ItemLayout:
    raise ValueError(f"malformed item layout in capture file: expected an object; got {type(x).__name__}")
