"""Layer × head matrix of any analyzer column (``al.analyze(cap)``)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ._data import score_matrix
from .fonts import with_cjk_font


@with_cjk_font
def scores(
    df: pd.DataFrame,
    column: str = "diagonal_score",
    step: int | list[int] | None = None,
    batch: int | list[int] | None = None,
    *,
    annotate: bool | None = None,
    cmap: str | None = None,
    fmt: str = ".2f",
    figsize: tuple[float, float] | None = None,
    dpi: float = 100.0,
) -> Figure:
    """Heatmap of ``column`` with layers as rows and heads as columns: the mean over every row of ``df`` with that
    (layer, head) — over steps and batch items unless ``step`` / ``batch`` pick some (``step=-1``: the last step in
    the table). The numbers come from :func:`attnlens.plot.score_matrix`.

    Columns with negative values get a diverging colour scale centred on 0; cells absent from the table are grey
    and counted in the title; the best cell is outlined. ``annotate`` writes the values into the cells (default:
    when there are at most 400 cells)."""
    m = score_matrix(df, column, step, batch)
    vals = m.to_numpy(dtype=np.float64)  # [layer, head]
    n_l, n_h = vals.shape
    finite = vals[np.isfinite(vals)]
    lo, hi = float(finite.min()), float(finite.max())
    if cmap is None:
        cmap = "RdBu_r" if lo < 0 else "viridis"
    if lo < 0:
        lim = max(abs(lo), abs(hi)) or 1e-12
        vmin, vmax = -lim, lim
    else:
        vmin, vmax = 0.0, hi if hi > 0 else 1e-12
    if figsize is None:
        figsize = (min(2.0 + 0.45 * n_h, 16.0), min(1.6 + 0.32 * n_l, 14.0))
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(vals)
    cm = (matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap).with_extremes(bad="lightgray")
    im = ax.imshow(masked, aspect="auto", cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(n_h), [str(h) for h in m.columns], fontsize=7)
    ax.set_yticks(range(n_l), [str(lyr) for lyr in m.index], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label=column)
    if annotate is None:
        annotate = n_l * n_h <= 400
    if annotate:
        norm = im.norm
        for i in range(n_l):
            for j in range(n_h):
                v = vals[i, j]
                if not np.isfinite(v):
                    continue
                shade = im.cmap(norm(v))
                light = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] > 0.55
                ax.text(
                    j, i, format(v, fmt), ha="center", va="center", fontsize=5.5, color="black" if light else "white"
                )
    bi, bj = np.unravel_index(np.nanargmax(vals), vals.shape)
    ax.add_patch(Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
    avg = m.attrs.get("averaged") or []
    parts = [f"{column}: mean over {' and '.join(avg)}" if avg else f"{column}"]
    parts += list(m.attrs.get("selected") or [])
    parts.append(f"max {vals[bi, bj]:{fmt}} at layer {m.index[bi]} head {m.columns[bj]}")
    if m.attrs.get("missing"):
        parts.append(f"{m.attrs['missing']} (layer, head) cell(s) not in the table (grey)")
    ax.set_title("\n".join([parts[0], "; ".join(parts[1:])]), fontsize=9)
    return fig
