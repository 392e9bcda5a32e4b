"""Segment vocabularies: what the keys of a model family's cross-attention are (a leaf module: no imports).

Every model family packs its conditioning into the keys of cross-attention in its own way, and names the parts:
ACE-Step packs sung lyrics, lyric headers/tags, timbre, caption and padding; Stable Audio packs prompt tokens,
padding and two timing tokens. A :class:`Segments` vocabulary lists a family's segment names in the order of the
``mass`` statistic's last axis, and says which segment (if any) is the ordered text whose tokens the lyric-only
statistics and the word alignment work on (the *sequence* ``L``). The core reads the vocabulary from a capture's
layout, never from a global.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNKNOWN = "unknown"
"""Segment name of a key whose segment is not known (a bare transformer captured without a layout)."""

MASKED_CODE = -2
"""Segment code of a key the model masks out of its softmax (probability exactly 0)."""


@dataclass(frozen=True)
class Segments:
    """A family's segment vocabulary.

    ``names``: segment names, in the order of the ``mass`` statistic's last axis (their masses add to 1 for every
    frame when the layout is known). ``sequence``: the segment whose tokens, in packed order, form the set ``L`` of
    the lyric-only statistics (``entropy_lyric``, ``lyric_argmax``) and word alignment, or ``None``.
    ``sequence_meta``: a segment of the same text whose tokens are not in ``L`` (headers, tags), counted with ``L``
    when a caller asks for ``include_meta``, or ``None``. ``family``: the family that declared it.
    """

    names: tuple[str, ...]
    sequence: str | None = None
    sequence_meta: str | None = None
    family: str = ""

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"a segment vocabulary needs one or more non-empty names; got {names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"segment names repeat: {names!r}")
        if UNKNOWN in names:
            raise ValueError(f"{UNKNOWN!r} is reserved for keys of no known segment; pick another name")
        if len(names) > 15:
            raise ValueError(f"at most 15 segments (the statistics kernel's limit); got {len(names)}")
        for role in ("sequence", "sequence_meta"):
            v = getattr(self, role)
            if v is not None and v not in names:
                raise ValueError(f"{role} {v!r} is not one of the segment names {names}")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def code(self, name: str) -> int:
        """Index of ``name`` in :attr:`names`; -1 for ``"unknown"``. Raises ``ValueError`` for any other name."""
        if name == UNKNOWN:
            return -1
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"unknown segment {name!r}; expected one of {self.names + (UNKNOWN,)}") from None

    def sequence_names(self, include_meta: bool = False) -> set[str]:
        """Segments whose keys form ``L`` (with ``include_meta``, also the sequence's meta segment)."""
        keep = {self.sequence} if self.sequence else set()
        if include_meta and self.sequence_meta:
            keep.add(self.sequence_meta)
        return keep

    def to_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "sequence": self.sequence,
            "sequence_meta": self.sequence_meta,
            "family": self.family,
        }

    @classmethod
    def from_json(cls, d: Any) -> Segments:
        if not isinstance(d, dict) or not isinstance(d.get("names"), list):
            raise ValueError(f"malformed segment vocabulary: expected an object with a 'names' list; got {d!r}")
        return cls(
            names=tuple(str(n) for n in d["names"]),
            sequence=d.get("sequence"),
            sequence_meta=d.get("sequence_meta"),
            family=str(d.get("family", "")),
        )


DEFAULT_SEGMENTS = Segments(
    names=("lyric", "lyric_meta", "timbre", "caption", "padding"),
    sequence="lyric",
    sequence_meta="lyric_meta",
    family="ace-step",
)
"""The vocabulary of a layout built without one: ACE-Step's (the first family), so that layouts written by hand
for it and capture files saved before vocabularies were recorded read as they always did."""

SEGMENTS: tuple[str, ...] = DEFAULT_SEGMENTS.names
"""Names of :data:`DEFAULT_SEGMENTS` (kept for code written against them; the core reads a layout's own)."""
SEGMENT_CODE: dict[str, int] = {name: i for i, name in enumerate(SEGMENTS)}
