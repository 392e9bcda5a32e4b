"""Fonts for lyrics in every script: matplotlib's default font (DejaVu Sans) has no Han, Kana or Hangul glyphs and
draws them as empty boxes. The figures of :mod:`attnlens.plot` add, after the default font, the first installed
font that has glyphs for all three scripts (matplotlib falls back glyph by glyph along the family list).

:func:`cjk_font` finds it once: a known CJK font by name (Noto Sans CJK, Source Han Sans, WenQuanYi, the macOS and
Windows system fonts), else any installed font whose character map covers ``我あア한``. None when there is none:
then figures draw as before, and matplotlib warns about the missing glyphs. On Debian and Ubuntu,
``apt-get install fonts-wqy-microhei`` (1.6 MB) or ``fonts-noto-cjk`` installs one (``scripts/setup.sh`` does).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

SAMPLE = "我あア한"
"""Han, Hiragana, Katakana and Hangul: a font for lyrics must have all four."""
KNOWN = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK KR",
    "Source Han Sans",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Sarasa Gothic SC",
    "Microsoft YaHei",
    "PingFang SC",
    "Hiragino Sans",
    "Apple SD Gothic Neo",
    "Arial Unicode MS",
)
_F = TypeVar("_F", bound=Callable[..., Any])


def _covers(path: str, text: str = SAMPLE) -> bool:
    from matplotlib.ft2font import FT2Font

    try:
        cmap = FT2Font(path).get_charmap()
    except (OSError, RuntimeError, ValueError):
        return False
    return all(ord(c) in cmap for c in text)


@functools.lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The family name of an installed font with Han, Kana and Hangul glyphs, or None (see the module docstring)."""
    import matplotlib as mpl
    from matplotlib import font_manager as fm

    known = {f.name: f.fname for f in fm.fontManager.ttflist}
    for name in KNOWN:
        if name in known and _covers(known[name]):
            return name
    # matplotlib's own fonts have no CJK glyphs, except its "Last Resort" font, whose glyphs are the boxes
    listed = [f for f in fm.fontManager.ttflist if not f.fname.startswith(mpl.get_data_path())]
    for f in listed:
        if _covers(f.fname):
            return f.name
    # fonts installed after matplotlib built its cache
    seen = {f.fname for f in fm.fontManager.ttflist}
    for path in sorted(fm.findSystemFonts(fontext="ttf")):  # .ttf, .otf and .ttc files
        if path in seen or not _covers(path):
            continue
        try:
            fm.fontManager.addfont(path)
        except (OSError, RuntimeError, ValueError):
            continue
        return fm.FontProperties(fname=path).get_name()
    return None


def font_families() -> list[str]:
    """The family list the figures draw with: matplotlib's own, then :func:`cjk_font` (if any)."""
    import matplotlib as mpl

    fam = mpl.rcParams["font.family"]
    fams = [fam] if isinstance(fam, str) else list(fam)
    extra = cjk_font()
    return fams + [extra] if extra and extra not in fams else fams


def with_cjk_font(func: _F) -> _F:
    """Decorator: the figure ``func`` builds uses :func:`font_families` (text keeps the families it was made with)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib as mpl

        with mpl.rc_context({"font.family": font_families()}):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
