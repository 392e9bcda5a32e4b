"""Static (matplotlib) attention maps: one map, per-head grids, side-by-side comparisons with difference maps.

Every figure is a :class:`matplotlib.figure.Figure` built without pyplot (no global state; notebooks show it
inline, :func:`attnlens.plot.save` writes it). Orientation as in the study's figures: rows = lyric words (top to
bottom in singing order), columns = time in seconds. Long captures are pooled along time to the figure's pixel
width (max-pooling by default) and the figure says so.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from ..captures.result import Capture
from ._data import Keys, MapData, map_data, pool_map, segment_spans, short_list, step_label
from .fonts import with_cjk_font

KIND_COLORS = {
    "sung": "black",
    "piece": "black",
    "tag": "tab:blue",
    "header": "dimgray",
    "space": "gray",
    "end": "gray",
    "timbre": "tab:purple",
    "caption": "tab:green",
    "padding": "tab:brown",
    "unknown": "black",
}
SINK_COLOR = "red"


def _max_columns(panel_width_in: float, dpi: float, pool: str | None, max_frames: int | None) -> int | None:
    if pool is None:
        return None
    if max_frames is not None:
        return max_frames
    return max(16, int(panel_width_in * dpi))


def draw_map(
    ax: Axes,
    md: MapData,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    row_labels: bool = True,
    time_label: bool = True,
    fontsize: float = 8.0,
    max_labels: int | None = None,
    mark_sink: bool = True,
    boundaries: bool = True,
    sink_tick: bool = True,
) -> Any:
    """Draw ``md`` on ``ax`` (rows top to bottom, time in seconds on x); returns the image."""
    n_rows, n_cols = md.values.shape
    k = md.pool_factor
    extent = (0.0, n_cols * k / md.frame_rate, n_rows - 0.5, -0.5)
    im = ax.imshow(md.values, aspect="auto", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax, origin="upper")
    ax.set_xlim(0.0, md.duration)
    ax.set_ylim(n_rows - 0.5, -0.5)
    if time_label:
        ax.set_xlabel("time (s)", fontsize=fontsize)
    ax.tick_params(labelsize=fontsize)
    if max_labels is None:
        height_pt = ax.get_position().height * ax.figure.get_figheight() * 72
        max_labels = max(4, int(height_pt / (fontsize * 1.15)))
    every = max(1, int(np.ceil(n_rows / max_labels)))
    ticks = list(range(0, n_rows, every))
    if sink_tick and mark_sink and md.sink_row >= 0 and md.sink_row not in ticks:
        ticks = sorted({*ticks, md.sink_row})
    # with shared y axes the ticks and their texts are shared: every panel sets the same ones
    ax.set_yticks(ticks, [md.rows[i].label for i in ticks], fontsize=fontsize)
    if row_labels:
        for lab, i in zip(ax.get_yticklabels(), ticks):
            lab.set_color(KIND_COLORS.get(md.rows[i].kind, "black"))
            if md.rows[i].kind == "header":
                lab.set_fontstyle("italic")
            if mark_sink and i == md.sink_row:
                lab.set_color(SINK_COLOR)
                lab.set_fontweight("bold")
    else:
        ax.tick_params(labelleft=False)
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    if mark_sink and md.sink_row >= 0:
        ax.plot([1.0], [md.sink_row], marker="<", color=SINK_COLOR, markersize=5, transform=trans, clip_on=False)
    if boundaries:
        spans = segment_spans(md.rows)
        if len(spans) > 1:
            for name, lo, hi in spans:
                if lo > 0:
                    ax.axhline(lo - 0.5, color="white", lw=0.8, ls="--")
                if (hi - lo) < 0.06 * n_rows:
                    continue  # too thin to name; its tick labels carry the segment colour
                ax.text(
                    1.012,
                    (lo + hi - 1) / 2,
                    name,
                    transform=trans,
                    rotation=90,
                    va="center",
                    ha="left",
                    fontsize=fontsize * 0.85,
                    color="dimgray",
                    clip_on=False,
                )
        else:
            lines = [r.line for r in md.rows]
            for i in range(1, n_rows):
                if lines[i] >= 0 and lines[i - 1] >= 0 and lines[i] != lines[i - 1]:
                    ax.axhline(i - 0.5, color="white", lw=0.5, ls=":", alpha=0.6)
    return im


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """Wrap every line of a title to the figure width (about 0.55 em per character)."""
    chars = max(30, int(width_in * 72 / (fontsize * 0.55)))
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in text.split("\n"))


def _notes_line(mds: list[MapData]) -> str:
    notes: list[str] = []
    for md in mds:
        for n in md.notes:
            if n not in notes:
                notes.append(n)
    return "; ".join(notes)


@with_cjk_font
def attention_map(
    cap: Capture,
    step: int | str = -1,
    layer: int | list[int] | None = None,
    head: int | list[int] | None = None,
    batch: int = 0,
    *,
    keys: Keys = "words",
    merge: bool = True,
    normalize: Literal["lyric"] | None = None,
    pool: str | None = "max",
    max_frames: int | None = None,
    cmap: str = "viridis",
    vmax: float | None = None,
    figsize: tuple[float, float] = (10.0, 5.0),
    dpi: float = 100.0,
    ax: Axes | None = None,
) -> Figure:
    """One attention map: rows = lyric words (``keys="words"``: pieces of a word *summed*), columns = time (s).

    ``layer`` / ``head``: an int, a list (mean over them) or ``None`` (mean over every kept one). ``keys``:
    ``"words"`` (sung words), ``"lyrics"`` (also header, ``[tags]``, line breaks), ``"all"`` (every packed key,
    segment boundaries drawn). ``merge=False`` shows BPE pieces. ``normalize="lyric"`` shows the lyric-only
    renormalized map ``A[f,i] = P[f,L_i] / Σ_i P[f,L_i]``. The sink (the key with the largest mean weight) is
    marked in red; the figure says when time was pooled (``pool="max"|"mean"``, ``None`` = never) to fit
    ``max_frames`` columns (default: the axes' pixel width). Needs ``al.capture(..., maps=True)``.
    """
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained") if ax is None else ax.figure
    if ax is None:
        ax = fig.add_subplot()
    width_in = ax.get_position().width * fig.get_figwidth()
    md = map_data(
        cap, step, layer, head, batch, keys, merge, normalize, pool, _max_columns(width_in, dpi, pool, max_frames)
    )
    im = draw_map(ax, md, vmin=0.0, vmax=vmax, cmap=cmap)
    label = "weight (lyric-renormalized)" if normalize == "lyric" else "attention weight"
    fig.colorbar(im, ax=ax, label=label, pad=0.05)
    ax.set_ylabel({"words": "lyric words", "lyrics": "lyric keys", "all": "packed keys"}[keys])
    sub = "; ".join(x for x in (_notes_line([md]), md.sink_note()) if x)
    ax.set_title(_wrap(f"{md.title}\n{sub}", ax.get_position().width * fig.get_figwidth(), 9), fontsize=9)
    return fig


@with_cjk_font
def heads(
    cap: Capture,
    step: int | str = -1,
    layers: int | list[int] | None = None,
    heads: int | list[int] | None = None,
    batch: int = 0,
    *,
    average_layers: bool | None = None,
    keys: Keys = "words",
    merge: bool = True,
    normalize: Literal["lyric"] | None = None,
    pool: str | None = "max",
    max_frames: int | None = None,
    scale: Literal["shared", "panel"] = "shared",
    cmap: str = "viridis",
    vmax: float | None = None,
    ncols: int | None = None,
    panel_size: tuple[float, float] = (3.0, 2.2),
    dpi: float = 100.0,
) -> Figure:
    """Grid of per-head maps at one step.

    ``layers=None`` (default): one panel per head, the mean over every kept layer. ``layers=[3]`` or a list with
    ``average_layers=False``: one panel per (layer, head), a row of panels per layer. ``average_layers=True`` with
    a list: mean over those layers. Rows, pooling and normalization as in :func:`map`; ``scale="shared"`` uses
    one colour scale for all panels (fair comparison), ``"panel"`` scales each panel to its own max. The red mark
    on each panel is that head's sink (largest mean weight)."""
    if scale not in ("shared", "panel"):
        raise ValueError(f"scale must be 'shared' or 'panel'; got {scale!r}")
    if average_layers is None:
        average_layers = layers is None
    layer_list = list(cap.layers) if layers is None else ([layers] if isinstance(layers, int) else list(layers))
    head_list = list(cap.heads) if heads is None else ([heads] if isinstance(heads, int) else list(heads))
    if not layer_list or not head_list:
        raise ValueError("layers and heads must not be empty")
    mcols = _max_columns(panel_size[0], dpi, pool, max_frames)
    panels: list[tuple[str, MapData]] = []
    if average_layers:
        for h in head_list:
            md = map_data(cap, step, layer_list, h, batch, keys, merge, normalize, pool, mcols)
            panels.append((f"head {h}", md))
        grid_cols = ncols or min(len(panels), 4 if len(panels) <= 16 else 8)
        grid_rows = int(np.ceil(len(panels) / grid_cols))
    else:
        for lyr in layer_list:
            for h in head_list:
                md = map_data(cap, step, lyr, h, batch, keys, merge, normalize, pool, mcols)
                panels.append((f"L{lyr} H{h}", md))
        # one layer: wrap its heads like the averaged grid; several layers: a row of panels per layer
        wrap = min(len(head_list), 4 if len(head_list) <= 16 else 8)
        grid_cols = ncols or (wrap if len(layer_list) == 1 else len(head_list))
        grid_rows = int(np.ceil(len(panels) / grid_cols))
    fig = Figure(
        figsize=(panel_size[0] * grid_cols + 1.6, panel_size[1] * grid_rows + 0.9),
        dpi=dpi,
        layout="constrained" if len(panels) <= 64 else None,
    )
    axes = fig.subplots(grid_rows, grid_cols, squeeze=False, sharex=True, sharey=True)
    shared_max = vmax if vmax is not None else max(float(md.values.max()) for _, md in panels)
    fs = 7.0
    im = None
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_visible(False)
            continue
        name, md = panels[i]
        r, c = divmod(i, grid_cols)
        last_row = r == grid_rows - 1 or i + grid_cols >= len(panels)
        im = draw_map(
            ax,
            md,
            vmin=0.0,
            vmax=shared_max if scale == "shared" else (vmax or float(md.values.max())),
            cmap=cmap,
            row_labels=c == 0,
            time_label=last_row,
            fontsize=fs,
            max_labels=max(4, int(panel_size[1] * 72 * 0.8 / (fs * 1.15))),
            sink_tick=False,
        )
        ax.set_title(name, fontsize=8)
        if last_row:
            ax.xaxis.set_tick_params(labelbottom=True)
    if scale == "shared" and im is not None:
        label = "weight (lyric-renormalized)" if normalize == "lyric" else "attention weight"
        fig.colorbar(im, ax=axes.ravel().tolist(), label=label, shrink=0.8)
    what = f"mean over layers {short_list(layer_list)}" if average_layers else f"layers {short_list(layer_list)}"
    first = panels[0][1]
    head_txt = first.title.split(" · ")[-1]
    title = (
        f"{step_label(cap, step)} · {what} · {head_txt}\n{_notes_line([md for _, md in panels])}; "
        f"red ◀ = sink (largest mean weight); {'one colour scale' if scale == 'shared' else 'each panel its own scale'}"
    )
    fig.suptitle(_wrap(title, fig.get_figwidth(), 9), fontsize=9)
    return fig


@with_cjk_font
def compare(
    captures: Mapping[str, Capture],
    step: int | str = -1,
    layer: int | list[int] | None = None,
    head: int | list[int] | None = None,
    batch: int = 0,
    *,
    reference: str | None = None,
    keys: Keys = "words",
    merge: bool = True,
    normalize: Literal["lyric"] | None = None,
    pool: str | None = "max",
    max_frames: int | None = None,
    cmap: str = "viridis",
    diff_cmap: str = "RdBu_r",
    vmax: float | None = None,
    panel_size: tuple[float, float] = (3.6, 3.0),
    dpi: float = 100.0,
) -> Figure:
    """The same map (step, layer, head, batch item; ``None`` = mean over every kept layer/head) of several variants
    side by side, with one shared colour scale and the same token axis (their rows must match).

    With ``reference="baseline"`` a second row shows ``variant - reference`` for every other variant on a diverging
    colour scale centred on 0 (symmetric limits shared by all difference panels); differences are computed at
    full time resolution and pooled keeping the sign of the largest magnitude."""
    if not isinstance(captures, Mapping) or not captures:
        raise TypeError("compare needs a non-empty dict {name: Capture}")
    for name, c in captures.items():
        if not isinstance(c, Capture):
            raise TypeError(f"compare: {name!r} is a {type(c).__name__}, expected a Capture")
    if reference is not None and reference not in captures:
        raise ValueError(f"reference {reference!r} is not one of the variants {list(captures)}")
    names = list(captures)
    full = {n: map_data(captures[n], step, layer, head, batch, keys, merge, normalize, None) for n in names}
    base = names[0]
    for n in names[1:]:
        if full[n].labels != full[base].labels:
            a, b = full[base].labels, full[n].labels
            i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise ValueError(
                f"compare needs the same token axis: {n!r} has {len(b)} rows, {base!r} has {len(a)}; first difference "
                f"at row {i}: {a[i] if i < len(a) else '-'!r} vs {b[i] if i < len(b) else '-'!r} (same lyrics needed)"
            )
    mcols = _max_columns(panel_size[0], dpi, pool, max_frames)
    shown = {n: pool_map(md, mcols, pool) for n, md in full.items()}
    diffs: dict[str, MapData] = {}
    if reference is not None:
        ref = full[reference]
        for n in names:
            if n == reference:
                continue
            if full[n].n_frames != ref.n_frames:
                raise ValueError(
                    f"difference {n!r} - {reference!r} needs the same number of frames; got {full[n].n_frames} and "
                    f"{ref.n_frames}"
                )
            d = replace(
                full[n], values=full[n].values - ref.values, sink_row=-1, sink_key=-1, notes=list(full[n].notes)
            )
            diffs[n] = pool_map(d, mcols, "absmax" if pool is not None else None)
    ncols = len(names)
    nrows = 2 if diffs else 1
    fig = Figure(figsize=(panel_size[0] * ncols + 1.6, panel_size[1] * nrows + 1.0), dpi=dpi, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    top = vmax if vmax is not None else max(float(md.values.max()) for md in shown.values())
    duration = max(md.duration for md in full.values())
    im = None
    for j, n in enumerate(names):
        ax = axes[0, j]
        im = draw_map(ax, shown[n], vmin=0.0, vmax=top, cmap=cmap, row_labels=j == 0, fontsize=7.5, sink_tick=False)
        ax.set_xlim(0, duration)
        ax.set_title(f"{n}\n{shown[n].sink_note()}", fontsize=8)
    label = "weight (lyric-renormalized)" if normalize == "lyric" else "attention weight"
    fig.colorbar(im, ax=axes[0].tolist(), label=label, shrink=0.9)
    if diffs:
        lim = max(float(np.abs(md.values).max()) for md in diffs.values()) or 1e-12
        dim = None
        for j, n in enumerate(names):
            ax = axes[1, j]
            if n not in diffs:
                ax.axis("off")
                ax.text(0.5, 0.5, f"reference:\n{n}", ha="center", va="center", transform=ax.transAxes, fontsize=9)
                continue
            dim = draw_map(
                ax,
                diffs[n],
                vmin=-lim,
                vmax=lim,
                cmap=diff_cmap,
                row_labels=j == 0 or names[0] == reference and j == 1,
                fontsize=7.5,
                mark_sink=False,
            )
            ax.set_xlim(0, duration)
            ax.set_title(f"{n} − {reference}", fontsize=8)
        fig.colorbar(dim, ax=axes[1].tolist(), label="difference (0 = same)", shrink=0.9)
    notes = _notes_line(list(shown.values()) + list(diffs.values()))
    title = f"{full[base].title}\n{notes}; one colour scale for all variants"
    fig.suptitle(_wrap(title, fig.get_figwidth(), 9), fontsize=9)
    return fig
