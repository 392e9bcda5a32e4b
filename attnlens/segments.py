"""Names of the packed-key segments, shared by every layer of the library (a leaf module: no imports)."""

SEGMENTS: tuple[str, ...] = ("lyric", "lyric_meta", "timbre", "caption", "padding")
"""Segment names in the order used by the ``mass`` statistic's last axis."""

SEGMENT_CODE: dict[str, int] = {name: i for i, name in enumerate(SEGMENTS)}
UNKNOWN = "unknown"
