"""``al.plot.save``: write a matplotlib or plotly figure as PNG / SVG / PDF / HTML, atomically."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

from ..captures.io import atomic_write_bytes

MPL_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg")
PLOTLY_IMAGE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "webp")


def _format(path: Path, fmt: str | None) -> str:
    f = (fmt or path.suffix.lstrip(".")).lower()
    if not f:
        raise ValueError(f"cannot tell the format of {str(path)!r}: give it a suffix (.png, .svg, .pdf, .html)")
    return f


def save(fig: Any, path: str | os.PathLike, *, dpi: float | None = None, format: str | None = None) -> str:
    """Write ``fig`` to ``path``; the format comes from the suffix (or ``format``). Atomic: a temporary file in the
    same folder is renamed over ``path`` once complete. Returns the path.

    - matplotlib ``Figure``: ``.png .svg .pdf .jpg`` (``dpi`` for raster formats) or ``.html`` (a page holding the
      PNG inline);
    - plotly ``Figure``: ``.html`` (standalone, plotly.js inline: works offline); ``.png .svg .pdf`` need the
      ``kaleido`` package.
    """
    p = Path(path)
    fmt = _format(p, format)
    from matplotlib.figure import Figure as MplFigure

    if isinstance(fig, MplFigure):
        if fmt == "html":
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi or fig.dpi)
            b64 = base64.b64encode(buf.getvalue()).decode("ascii")
            title = html.escape(p.stem)
            page = (
                f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
                f"<body><img alt='{title}' style='max-width:100%' src='data:image/png;base64,{b64}'></body></html>"
            )
            atomic_write_bytes(p, page.encode("utf-8"))
            return str(p)
        if fmt not in MPL_FORMATS:
            raise ValueError(f"cannot write a matplotlib figure as {fmt!r}; use one of {MPL_FORMATS + ('html',)}")
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi or fig.dpi)
        atomic_write_bytes(p, buf.getvalue())
        return str(p)
    try:
        import plotly.graph_objects as go
    except ImportError:  # pragma: no cover - plotly is a dependency
        go = None
    if go is not None and isinstance(fig, go.Figure):
        if fmt == "html":
            atomic_write_bytes(p, fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8"))
            return str(p)
        if fmt not in PLOTLY_IMAGE_FORMATS:
            raise ValueError(f"cannot write a plotly figure as {fmt!r}; use .html or one of {PLOTLY_IMAGE_FORMATS}")
        try:
            data = fig.to_image(format=fmt)
        except (ValueError, ImportError, RuntimeError) as e:
            raise RuntimeError(
                f"writing a plotly figure as {fmt.upper()} needs the kaleido package (pip install kaleido) and a "
                f"Chrome/Chromium it can drive; save it as .html instead (works offline). ({e})"
            ) from e
        atomic_write_bytes(p, data)
        return str(p)
    raise TypeError(f"save needs a matplotlib or plotly Figure; got {type(fig).__name__}")
