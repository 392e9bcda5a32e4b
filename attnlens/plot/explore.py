"""Interactive explorer: one standalone HTML file (plotly.js inline, works offline, no server).

Dropdowns pick step, layer and head; hovering a cell shows the token (word), the time and the weight. The maps of
every selected (step, layer, head) are embedded in the file as float16 (about 3 significant digits); long
captures are pooled along time so that the whole file stays within ``max_values`` numbers, and the figure says
how. Nothing is dropped: every frame is inside some pooled column and every key inside some row.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go

from ..captures.io import atomic_write_bytes
from ..captures.result import Capture
from ._data import Keys, MapData, _as_list, batch_label, map_data, pool_factor, pool_map, segment_spans, step_label

MIN_COLUMNS = 32

_SCRIPT = r"""
var gd = document.getElementById('{plot_id}');
var P = __PAYLOAD__;
var bin = atob(P.data), bytes = new Uint8Array(bin.length);
for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
var u16 = new Uint16Array(bytes.buffer);
var T = new Float32Array(65536);
for (var h = 0; h < 65536; h++) {
  var s = (h & 0x8000) ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  T[h] = e === 0 ? s * f * Math.pow(2, -24) : (e === 31 ? (f ? NaN : s * Infinity) : s * (1 + f / 1024) * Math.pow(2, e - 15));
}
var R = P.shape[1], C = P.shape[2];
var state = P.dims.map(function (d) { return d.active; });
function mapIndex() {
  var m = 0;
  for (var d = 0; d < P.dims.length; d++) m = m * P.dims[d].labels.length + state[d];
  return m;
}
function zOf(m) {
  var z = new Array(R), off = m * R * C;
  for (var r = 0; r < R; r++) {
    var row = new Array(C), o = off + r * C;
    for (var c = 0; c < C; c++) row[c] = T[u16[o + c]];
    z[r] = row;
  }
  return z;
}
function draw() {
  var m = mapIndex(), sink = P.sink[m];
  var lay = {'title.text': P.titles[m], 'annotations[0].visible': sink >= 0,
             'annotations[0].y': sink >= 0 ? P.ylabels[sink] : P.ylabels[0]};
  return Plotly.update(gd, {z: [zOf(m)], zmin: [0], zmax: [P.zmax[m]]}, lay).then(function () {
    gd.setAttribute('data-attnlens-map', String(m));
  });
}
gd.on('plotly_buttonclicked', function (ev) {
  var name = ev.menu && ev.menu.name;
  for (var d = 0; d < P.dims.length; d++) if (P.dims[d].name === name) { state[d] = ev.active; draw(); }
});
gd.attnlens = {
  state: function () { var o = {}; P.dims.forEach(function (d, i) { o[d.name] = d.labels[state[i]]; }); return o; },
  mapIndex: mapIndex,
  select: function (name, label) {
    var d = P.dims.findIndex(function (x) { return x.name === name; });
    if (d < 0) throw new Error('no selector ' + name);
    var i = P.dims[d].labels.indexOf(String(label));
    if (i < 0) throw new Error(name + ' ' + label + ' is not one of ' + P.dims[d].labels);
    state[d] = i;
    var u = {}; u['updatemenus[' + d + '].active'] = i;
    return Plotly.relayout(gd, u).then(draw);
  }
};
draw();
"""


class ExplorerFigure(go.Figure):
    """A plotly Figure whose HTML carries the embedded maps and the script that switches between them.

    ``write_html(path)`` writes one standalone file (plotly.js inline, atomic); notebooks show it inline. The
    selectors only work where that script runs: in this figure's own HTML, not after copying it into a plain
    ``go.Figure``."""

    def __init__(self, *args: Any, script: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._attnlens_script = script

    def to_html(self, *args: Any, **kwargs: Any) -> str:
        kwargs.setdefault("include_plotlyjs", True)
        extra = kwargs.pop("post_script", None)
        scripts = [self._attnlens_script] if self._attnlens_script else []
        if extra:
            scripts += list(extra) if isinstance(extra, (list, tuple)) else [extra]
        return super().to_html(*args, post_script=scripts or None, **kwargs)

    def write_html(self, file: Any, *args: Any, **kwargs: Any) -> Any:
        """Write the standalone explorer page to ``file`` (a path: atomically; or a text file object)."""
        kwargs.pop("auto_open", None)
        text = self.to_html(*args, **kwargs)
        if isinstance(file, (str, os.PathLike)):
            atomic_write_bytes(file, text.encode("utf-8"))
            return str(file)
        file.write(text)
        return file

    def _repr_html_(self) -> str:
        return self.to_html(full_html=False, include_plotlyjs=True)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> dict[str, str]:
        return {"text/html": self._repr_html_()}

    def show(self, *args: Any, **kwargs: Any) -> None:
        """Show inline in a notebook, else open the page in a web browser."""
        try:
            from IPython import get_ipython
            from IPython.display import HTML, display

            if get_ipython() is not None:
                display(HTML(self._repr_html_()))
                return
        except ImportError:
            pass
        import webbrowser

        fd, path = tempfile.mkstemp(prefix="attnlens-explore-", suffix=".html")
        os.close(fd)
        self.write_html(path)
        webbrowser.open(f"file://{path}")


def _unique(labels: list[str]) -> list[str]:
    """Labels made unique for a categorical axis by appending zero-width spaces to repeats (they look the same)."""
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        n = seen.get(lab, 0)
        seen[lab] = n + 1
        out.append(lab + "\u200b" * n)
    return out


def explore(
    cap: Capture,
    steps: int | list[int] | None = None,
    layers: int | list[int] | None = None,
    heads: int | list[int] | None = None,
    batch: int = 0,
    *,
    keys: Keys = "words",
    merge: bool = True,
    normalize: Literal["lyric"] | None = None,
    pool: Literal["max", "mean"] = "max",
    max_frames: int = 800,
    max_values: int = 8_000_000,
    scale: Literal["map", "shared"] = "map",
    colorscale: str = "Viridis",
    height: int | None = None,
) -> ExplorerFigure:
    """Interactive explorer of the maps of one batch item: dropdowns for step, layer and head (``None`` = every
    kept one), hover = token, time, weight. Rows as in :func:`attnlens.plot.attention_map` (``keys``, ``merge``,
    ``normalize``).

    Time is pooled (``pool``) to at most ``max_frames`` columns, fewer if the maps would hold more than
    ``max_values`` numbers in all; the figure states the pooling. ``scale="map"`` scales each map to its own
    max, ``"shared"`` uses one scale for all. ``explore(cap).write_html("explore.html")`` writes one offline file.
    Needs ``al.capture(..., maps=True)``."""
    if scale not in ("map", "shared"):
        raise ValueError(f"scale must be 'map' or 'shared'; got {scale!r}")
    if pool not in ("max", "mean"):
        raise ValueError(f"pool must be 'max' or 'mean'; got {pool!r}")
    n_seen = len(cap.timesteps)
    step_list = [cap.steps[i] for i in range(len(cap.steps))] if steps is None else _as_list("step", steps, cap.steps)
    step_list = [s + n_seen if s < 0 else s for s in step_list]
    layer_list = _as_list("layer", layers, cap.layers)
    head_list = _as_list("head", heads, cap.heads)
    if cap.maps is None:
        cap.attention(step_list[0], layer_list[0], head_list[0], batch)  # raises NotCapturedError with the fix
    n_maps = len(step_list) * len(layer_list) * len(head_list)
    probe = map_data(cap, step_list[0], layer_list[0], head_list[0], batch, keys, merge, normalize, None)
    n_rows, n_frames = probe.values.shape
    fit = max_values // max(n_maps * n_rows, 1)
    if fit < MIN_COLUMNS and n_frames > fit:
        raise ValueError(
            f"{n_maps} maps × {n_rows} rows would leave only {fit} time columns under max_values={max_values:,}; "
            f"select fewer (steps=[-1], layers=[...], heads=[...]), use merge=True / keys='words', or raise max_values"
        )
    k = pool_factor(n_frames, min(max_frames, max(fit, 1)))
    mds: list[MapData] = []
    for s in step_list:
        for lyr in layer_list:
            for h in head_list:
                md = map_data(cap, s, lyr, h, batch, keys, merge, normalize, None)
                if md.labels != probe.labels:
                    raise ValueError(f"rows differ between maps of batch item {batch}: the layout is inconsistent")
                if k > 1:
                    md = pool_map(md, -(-n_frames // k), pool)
                mds.append(md)
    vals = np.stack([md.values for md in mds]).astype(np.float16)  # [map, row, column]
    n_cols = vals.shape[-1]
    x_edges = mds[0].x_edges()
    ylabels = _unique(probe.labels)
    zmax = [float(v.max()) or 1e-12 for v in vals.astype(np.float32)]
    if scale == "shared":
        zmax = [max(zmax)] * len(zmax)
    notes = list(mds[0].notes) + ["weights stored as float16 (≈3 significant digits)"]
    if k == 1:
        notes.append(f"all {n_frames} frames shown")
    titles = [f"{md.title}<br><sup>{md.sink_note()}</sup>" for md in mds]
    dims = [
        {"name": "step", "labels": [str(s) for s in step_list], "active": len(step_list) - 1},
        {"name": "layer", "labels": [str(x) for x in layer_list], "active": 0},
        {"name": "head", "labels": [str(x) for x in head_list], "active": 0},
    ]
    payload = {
        "dims": dims,
        "shape": [len(mds), n_rows, n_cols],
        "data": base64.b64encode(vals.astype("<f2").tobytes()).decode("ascii"),
        "zmax": zmax,
        "sink": [md.sink_row for md in mds],
        "titles": titles,
        "ylabels": ylabels,
    }
    first = (len(step_list) - 1) * len(layer_list) * len(head_list)
    kinds = [r.kind for r in probe.rows]
    hover = "%{y}<br>time %{x:.2f} s<br>weight %{z:.4g}<extra></extra>"
    if k > 1:
        hover = f"%{{y}}<br>time %{{x:.2f}} s (column of {k} frames, {pool})<br>weight %{{z:.4g}}<extra></extra>"
    heat = go.Heatmap(
        z=mds[first].values.astype(np.float16).astype(np.float32),
        x=x_edges,
        y=ylabels,
        zmin=0.0,
        zmax=zmax[first],
        colorscale=colorscale,
        colorbar={"title": {"text": "weight (lyric-renorm.)" if normalize == "lyric" else "weight"}},
        hovertemplate=hover,
        name="attention",
    )
    menus = []
    x0 = 0.0
    for d in dims:
        menus.append(
            {
                "name": d["name"],
                "type": "dropdown",
                "direction": "down",
                "active": d["active"],
                "showactive": True,
                "x": x0,
                "xanchor": "left",
                "y": 1.0,
                "yanchor": "bottom",
                "pad": {"t": 4, "b": 4},
                "buttons": [{"label": f"{d['name']} {lab}", "method": "skip", "args": []} for lab in d["labels"]],
            }
        )
        x0 += 0.16
    shapes = []
    annotations: list[dict[str, Any]] = [
        {
            "x": 1.0,
            "xref": "paper",
            "y": ylabels[max(mds[first].sink_row, 0)],
            "yref": "y",
            "text": "◀ sink",
            "showarrow": False,
            "xanchor": "left",
            "font": {"color": "red", "size": 11},
            "visible": mds[first].sink_row >= 0,
        },
        {
            "x": 0.0,
            "xref": "paper",
            "y": 0.0,
            "yref": "paper",
            "yshift": -48,
            "yanchor": "top",
            "xanchor": "left",
            "showarrow": False,
            "align": "left",
            "text": "; ".join(notes),
            "font": {"size": 11, "color": "#444"},
        },
    ]
    spans = segment_spans(probe.rows)
    if len(spans) > 1:
        for name, lo, hi in spans:
            if lo > 0:
                shapes.append(
                    {
                        "type": "line",
                        "xref": "paper",
                        "x0": 0,
                        "x1": 1,
                        "yref": "y",
                        "y0": lo - 0.5,
                        "y1": lo - 0.5,
                        "line": {"color": "white", "width": 1, "dash": "dash"},
                    }
                )
            annotations.append(
                {
                    "x": 0.0,
                    "xref": "paper",
                    "xanchor": "right",
                    "xshift": -4,
                    "y": ylabels[(lo + hi - 1) // 2],
                    "yref": "y",
                    "text": f"<b>{name}</b>",
                    "showarrow": False,
                    "textangle": -90,
                    "font": {"size": 10, "color": "#666"},
                }
            )
    tick_colors = {"tag": "#1f77b4", "header": "#666", "space": "#888", "end": "#888", "caption": "#2ca02c"}
    every = max(1, -(-n_rows // 60))
    tick_rows = list(range(0, n_rows, every))
    ticktext = [
        f"<span style='color:{tick_colors[kinds[i]]}'>{probe.labels[i]}</span>"
        if kinds[i] in tick_colors
        else probe.labels[i]
        for i in tick_rows
    ]
    fig = ExplorerFigure(data=[heat], script=_SCRIPT.replace("__PAYLOAD__", json.dumps(payload)))
    fig.update_layout(
        title={"text": titles[first], "x": 0.5, "xanchor": "center", "yref": "container", "y": 0.985, "yanchor": "top"},
        updatemenus=menus,
        shapes=shapes,
        annotations=annotations,
        xaxis={"title": {"text": "time (s)"}, "range": [0, n_frames / cap.frame_rate]},
        yaxis={
            "title": {"text": {"words": "lyric words", "lyrics": "lyric keys", "all": "packed keys"}[keys]},
            "type": "category",
            "autorange": "reversed",
            "tickmode": "array",
            "tickvals": [ylabels[i] for i in tick_rows],
            "ticktext": ticktext,
            "automargin": True,
        },
        height=height or int(min(1100, max(460, 220 + 14 * n_rows))),
        margin={"t": 120, "b": 100, "l": 90, "r": 60},
        meta={"attnlens": "explorer", "batch": batch_label(cap, batch), "first_step": step_label(cap, step_list[-1])},
    )
    return fig
