"""Text utilities, pure functions of strings, offsets and token ids: timing units by script
(:mod:`attnlens.text.units`) and readable token labels (:mod:`attnlens.text.labels`)."""

from .labels import readable_labels, token_bytes, token_char_spans, token_labels
from .units import (
    UNIT_CHAR,
    UNIT_WORD,
    Unit,
    is_cjk,
    merge_units_by_tokens,
    unit_kind,
    unit_separators,
    unit_spans,
    units_name,
)

__all__ = [
    "UNIT_CHAR",
    "UNIT_WORD",
    "Unit",
    "is_cjk",
    "merge_units_by_tokens",
    "readable_labels",
    "token_bytes",
    "token_char_spans",
    "token_labels",
    "unit_kind",
    "unit_separators",
    "unit_spans",
    "units_name",
]
