"""What the figures draw, as plain arrays: token rows, grouped/renormalized maps, frame pooling, score matrices.

Everything here is a pure function of a :class:`~attnlens.captures.result.Capture` (or a DataFrame) and returns
NumPy/pandas objects, so the numbers behind every figure can be checked without drawing it.

Rows (the y axis of every map) come from the batch item's :class:`~attnlens.captures.layout.ItemLayout`:

- ``keys="words"``: the sung lyric set ``L`` only; with ``merge=True`` one row per sung word, the *sum* of its BPE
  pieces' weights (a word's row is the share of attention that word receives).
- ``keys="lyrics"``: every key of the lyric side (header, structure tags, line breaks, sung words, end token), in
  packed order; with ``merge=True`` tags become one row each (``[verse]``), the header one row (``<header>``).
- ``keys="all"``: every packed key: lyric side as above, then timbre, caption (pieces merged at whitespace when
  ``merge=True``) and padding (one summed row ``padding ×n`` when ``merge=True``).

``normalize="lyric"`` renormalizes every frame over the keys of the view (docs/metrics/entropy.md:
``A[f, i] = P[f, L_i] / Σ_i P[f, L_i]``; over ``L`` for ``"words"``, over ``L`` plus header/tag keys for
``"lyrics"``), then sums pieces per row.

The numbers behind every figure (rows, frames, pooling, normalization, score matrices) in one place, so that every
figure draws the same numbers; hence over 400 lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from ..captures.layout import ItemLayout
from ..captures.result import Capture

Keys = Literal["words", "lyrics", "all"]
Pool = Literal["max", "mean", "absmax"]
KEY_VIEWS: tuple[str, ...] = ("words", "lyrics", "all")
POOLS: tuple[str, ...] = ("max", "mean", "absmax")

MERGE_UNLABELLED = 4
"""With ``merge``, a segment of keys without tokens (padding, or more than this many keys) is drawn as one row."""

SEGMENT_GROUP = {
    "lyric": "lyrics",
    "lyric_meta": "lyrics",
    "timbre": "timbre",
    "caption": "caption",
    "padding": "padding",
    "unknown": "keys",
}


@dataclass(frozen=True)
class Row:
    """One row of a drawn map: the packed keys it sums and how to label it."""

    label: str
    kind: str
    """sung | piece | tag | header | space | end | timbre | caption | padding | unknown"""
    segment: str
    keys: tuple[int, ...]
    line: int = -1
    """lyric line of a sung row (-1 elsewhere)."""


@dataclass
class MapData:
    """One map ready to draw: ``values[row, column]``; columns are frames or pooled windows of ``pool_factor``
    frames (column ``j`` covers frames ``j*pool_factor .. min((j+1)*pool_factor, n_frames) - 1``)."""

    values: np.ndarray  # [row, column]
    rows: list[Row]
    n_frames: int
    frame_rate: float
    pool_factor: int = 1
    pool: str | None = None
    title: str = ""
    """what was selected: step, layers, heads, batch item."""
    notes: list[str] = field(default_factory=list)
    """how the values were made: row merging, normalization, pooling, blank frames."""
    sink_key: int = -1
    """packed key with the largest mean weight over frames (before any renormalization), -1 if unknown."""
    sink_label: str = ""
    sink_weight: float = 0.0
    sink_row: int = -1
    """row holding :attr:`sink_key`, -1 when that key is outside the view."""

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.rows]

    @property
    def duration(self) -> float:
        """seconds covered: ``n_frames / frame_rate``."""
        return self.n_frames / self.frame_rate

    def x_edges(self) -> np.ndarray:
        """Column edges in seconds (length columns + 1); the last edge is the end of the last frame."""
        starts = np.arange(0, self.n_frames, self.pool_factor, dtype=np.float64)
        return np.append(starts, self.n_frames) / self.frame_rate

    def sink_note(self) -> str:
        if self.sink_key < 0:
            return ""
        where = "" if self.sink_row >= 0 else " (outside this view)"
        return f"sink: key {self.sink_key} {self.sink_label} holds {self.sink_weight:.2f} of attention{where}"


# --------------------------------------------------------------------------- rows
def _piece(tok: str | None) -> str:
    if tok is None:
        return ""
    if tok.strip() == "":
        return "↵" if "\n" in tok else "␣"
    return tok.strip()


def _lyric_rows(item: ItemLayout, positions: list[int], merge: bool) -> list[Row]:
    """Rows of the sequence segment's keys (ACE-Step: sung lyrics, with header and tag keys of ``lyric_meta``)."""
    seq = item.vocabulary.sequence or ""
    meta = item.vocabulary.sequence_meta or seq
    rows: list[Row] = []
    cur: list[int] = []
    cur_kind = ""
    cur_word = -2

    def flush() -> None:
        nonlocal cur, cur_kind, cur_word
        if not cur:
            return
        k0 = cur[0]
        if cur_kind == "sung":
            w = item.word_index[k0]
            label = item.words[w] if 0 <= w < len(item.words) else "".join(_piece(item.tokens[k]) for k in cur)
            rows.append(Row(label, "sung", seq, tuple(cur), item.line_index[k0]))
        elif cur_kind == "tag":
            rows.append(Row("".join((item.tokens[k] or "") for k in cur).strip(), "tag", meta, tuple(cur)))
        elif cur_kind == "header":
            rows.append(Row("<header>", "header", meta, tuple(cur)))
        cur, cur_kind, cur_word = [], "", -2

    for k in positions:
        seg, kind, tok = item.segments[k], item.kinds[k], item.tokens[k]
        if seg == seq and kind in (None, "sung"):
            w = item.word_index[k]
            if not merge:
                flush()
                prev = rows[-1] if rows else None
                cont = (
                    prev is not None
                    and prev.kind in ("sung", "piece")
                    and w >= 0
                    and item.word_index[prev.keys[0]] == w
                )
                rows.append(Row(("·" if cont else "") + _piece(tok), "piece", seg, (k,), item.line_index[k]))
                continue
            if cur_kind != "sung" or w < 0 or w != cur_word:
                flush()
                cur_kind, cur_word = "sung", w
            cur.append(k)
            if w < 0:
                flush()
            continue
        if merge and kind == "tag":
            closed = bool(cur) and "]" in "".join((item.tokens[j] or "") for j in cur)
            if cur_kind != "tag" or closed:
                flush()
                cur_kind = "tag"
            cur.append(k)
            continue
        if merge and kind == "header":
            if cur_kind != "header":
                flush()
                cur_kind = "header"
            cur.append(k)
            continue
        flush()
        if kind == "end":
            label = "<end>"
        elif kind == "header" and not merge:
            label = _piece(tok)
        else:
            label = _piece(tok)
        rows.append(Row(label, kind or "unknown", seg, (k,)))
    flush()
    return rows


def _caption_rows(item: ItemLayout, positions: list[int], merge: bool, segment: str = "caption") -> list[Row]:
    """Rows of a text segment other than the sequence (ACE-Step's caption): tokens merged into words."""
    if not merge:
        return [
            Row(_piece(item.tokens[k]) or f"{segment}[{i}]", "caption", segment, (k,)) for i, k in enumerate(positions)
        ]
    rows: list[Row] = []
    cur: list[int] = []
    for k in positions:
        tok = item.tokens[k] or ""
        starts_new = (
            not cur
            or tok[:1].isspace()
            or tok.startswith("<|")
            or (item.tokens[cur[-1]] or "").endswith("\n")
            or (item.tokens[cur[-1]] or "").startswith("<|")
        )
        if tok.strip() == "" or starts_new:
            if cur:
                rows.append(
                    Row("".join(item.tokens[j] or "" for j in cur).strip() or "↵", "caption", segment, tuple(cur))
                )
            cur = [k]
            if tok.strip() == "":
                rows.append(Row(_piece(tok), "caption", segment, (k,)))
                cur = []
        else:
            cur.append(k)
    if cur:
        rows.append(Row("".join(item.tokens[j] or "" for j in cur).strip() or "↵", "caption", segment, tuple(cur)))
    return rows


def key_rows(item: ItemLayout | None, n_keys: int, keys: Keys = "words", merge: bool = True) -> list[Row]:
    """Rows of the y axis for one batch item (see the module docstring for ``keys`` and ``merge``)."""
    if keys not in KEY_VIEWS:
        raise ValueError(f"keys must be one of {KEY_VIEWS}; got {keys!r}")
    if item is not None and item.n_keys != n_keys:
        raise ValueError(f"the layout describes {item.n_keys} keys but the map has {n_keys}")
    if item is None or not item.known:
        if keys != "all":
            raise ValueError(
                f"keys={keys!r} needs a lyric layout, but this capture does not know which keys are lyrics "
                "(layout unknown: pass layout=... to al.capture, or use keys='all')"
            )
        return [Row(f"key[{k}]", "unknown", "unknown", (k,)) for k in range(n_keys)]
    segs = item.segments
    voc = item.vocabulary
    if keys == "words":
        rows = _lyric_rows(item, [k for k in range(n_keys) if segs[k] in voc.sequence_names()], merge)
        if not rows:
            raise ValueError(
                f"this batch item has no {voc.sequence or 'sequence'} tokens: use keys='lyrics' or keys='all'"
            )
        return rows
    seq_names = voc.sequence_names(include_meta=True)
    rows = _lyric_rows(item, [k for k in range(n_keys) if segs[k] in seq_names], merge)
    if keys == "lyrics":
        if not rows:
            raise ValueError(f"this batch item has no {voc.sequence or 'sequence'} keys: use keys='all'")
        return rows
    for name in voc.names:  # the other segments, in the vocabulary's order
        if name in seq_names:
            continue
        pos = [k for k in range(n_keys) if segs[k] == name]
        if any(item.tokens[k] is not None for k in pos):  # a text segment (ACE-Step's caption)
            rows += _caption_rows(item, pos, merge, name)
        elif pos and merge and (name == "padding" or len(pos) > MERGE_UNLABELLED):
            rows.append(Row(f"{name} ×{len(pos)}", name, name, tuple(pos)))
        else:
            short = "pad" if name == "padding" else name
            rows += [Row(f"{short}[{i}]", name, name, (k,)) for i, k in enumerate(pos)]
    return rows


def group_rows(p: np.ndarray, rows: list[Row]) -> np.ndarray:
    """Sum the keys of every row: ``[..., frame, key] -> [..., frame, row]``."""
    order = np.fromiter((k for r in rows for k in r.keys), dtype=np.int64)
    starts = np.cumsum([0] + [len(r.keys) for r in rows[:-1]])
    return np.add.reduceat(p[..., order], starts, axis=-1)


def segment_spans(rows: list[Row]) -> list[tuple[str, int, int]]:
    """``(group name, first row, last row + 1)`` of each run of rows in one segment group
    (lyrics | timbre | caption | padding)."""
    spans: list[tuple[str, int, int]] = []
    for i, r in enumerate(rows):
        g = SEGMENT_GROUP.get(r.segment, r.segment)
        if spans and spans[-1][0] == g:
            spans[-1] = (g, spans[-1][1], i + 1)
        else:
            spans.append((g, i, i + 1))
    return spans


# ------------------------------------------------------------------------ pooling
def pool_factor(n_frames: int, max_columns: int | None) -> int:
    """Smallest factor ``k`` with ``ceil(n_frames / k) <= max_columns`` (1 when no limit)."""
    if max_columns is None or n_frames <= max_columns:
        return 1
    if max_columns < 1:
        raise ValueError(f"max_frames must be >= 1; got {max_columns}")
    return math.ceil(n_frames / max_columns)


def pool_frames(x: np.ndarray, factor: int, how: str = "max") -> np.ndarray:
    """Pool the last axis (frames) in windows of ``factor`` frames; the last window may be shorter.

    ``max``: largest value of the window; ``mean``: mean of the frames it holds; ``absmax``: the value of largest
    magnitude, sign kept (for difference maps)."""
    if how not in POOLS:
        raise ValueError(f"pool must be one of {POOLS} or None; got {how!r}")
    if factor <= 1:
        return x
    n = x.shape[-1]
    starts = np.arange(0, n, factor)
    if how == "max":
        return np.maximum.reduceat(x, starts, axis=-1)
    if how == "mean":
        counts = np.minimum(starts + factor, n) - starts
        return np.add.reduceat(x, starts, axis=-1) / counts
    hi = np.maximum.reduceat(x, starts, axis=-1)
    lo = np.minimum.reduceat(x, starts, axis=-1)
    return np.where(np.abs(hi) >= np.abs(lo), hi, lo)


def pool_map(md: MapData, max_frames: int | None, how: str | None = "max") -> MapData:
    """``md`` with its frames pooled to at most ``max_frames`` columns (unchanged when it fits or ``how`` is None);
    the pooling is recorded in :attr:`MapData.notes`."""
    if how is None or md.pool_factor != 1:
        return md
    k = pool_factor(md.values.shape[-1], max_frames)
    if k == 1:
        return md
    vals = pool_frames(md.values, k, how)
    name = {"max": "max", "mean": "mean", "absmax": "signed largest-|value|"}[how]
    note = (
        f"time {name}-pooled: 1 column = {k} frames ({k / md.frame_rate:.2f}\u00a0s), {md.n_frames} → {vals.shape[-1]}"
    )
    return replace(md, values=vals, pool_factor=k, pool=how, notes=[*md.notes, note])


# --------------------------------------------------------------------- selection
def _as_list(name: str, value: Any, kept: list[int]) -> list[int]:
    if value is None:
        return list(kept)
    if isinstance(value, (int, np.integer)):
        return [int(value)]
    try:
        vals = [int(v) for v in value]
    except TypeError:
        raise TypeError(f"{name} must be None, an int or a list of ints; got {value!r}") from None
    if not vals:
        raise ValueError(f"{name} is empty: pass None for all kept {name}s or at least one index")
    return vals


def short_list(xs: list[int]) -> str:
    if len(xs) > 2 and xs == list(range(xs[0], xs[-1] + 1)):
        return f"{xs[0]}..{xs[-1]}"
    return ", ".join(str(x) for x in xs)


def step_label(cap: Capture, step: int | str) -> str:
    if step == "mean":
        return "mean over kept steps"
    n = len(cap.timesteps)
    s = step + n if isinstance(step, int) and step < 0 else step
    t = cap.timesteps[s] if isinstance(s, int) and 0 <= s < n else float("nan")
    return f"step {s} (t={t:.4g})"


def batch_label(cap: Capture, batch: int) -> str:
    lab = cap.batch_labels[batch] if 0 <= batch < len(cap.batch_labels) else str(batch)
    return f"batch {batch} ({lab})" if lab != str(batch) else f"batch {batch}"


def item_layout(cap: Capture, batch: int) -> ItemLayout | None:
    cap.batch_index(batch)
    return cap.layout[batch] if batch < len(cap.layout) else None


def map_data(
    cap: Capture,
    step: int | str = -1,
    layer: int | list[int] | None = None,
    head: int | list[int] | None = None,
    batch: int = 0,
    keys: Keys = "words",
    merge: bool = True,
    normalize: Literal["lyric"] | None = None,
    pool: str | None = "max",
    max_frames: int | None = None,
) -> MapData:
    """The map of one (step, layer, head, batch item) as rows × frames, or the mean over several layers/heads
    (``None`` = every kept one). Each map is grouped into rows (pieces *summed*) and, with ``normalize="lyric"``,
    renormalized per frame over the view's keys before averaging, so every (layer, head) counts equally.

    Needs full maps (``al.capture(..., maps=True)``); ``step="mean"`` uses ``maps="mean"``.
    """
    if normalize not in (None, "lyric"):
        raise ValueError(f"normalize must be None or 'lyric'; got {normalize!r}")
    if normalize == "lyric" and keys == "all":
        raise ValueError("normalize='lyric' renormalizes over lyric keys: use it with keys='words' or keys='lyrics'")
    layers = _as_list("layer", layer, cap.layers)
    heads = _as_list("head", head, cap.heads)
    item = item_layout(cap, batch)
    rows: list[Row] | None = None
    acc: np.ndarray | None = None  # [frame, row]
    key_mean: np.ndarray | None = None  # [key]
    blank = 0
    for lyr in layers:
        for h in heads:
            p = cap.attention(step, lyr, h, batch).detach().to(torch.float32).cpu().numpy()  # [frame, key]
            if rows is None:
                rows = key_rows(item, p.shape[-1], keys, merge)
            g = group_rows(p, rows).astype(np.float64)  # [frame, row]
            if normalize == "lyric":
                tot = g.sum(-1, keepdims=True)
                zero = tot[:, 0] <= 0
                blank += int(zero.sum())
                g = np.divide(g, tot, out=np.zeros_like(g), where=~zero[:, None])
            km = p.mean(0, dtype=np.float64)
            acc = g if acc is None else acc + g
            key_mean = km if key_mean is None else key_mean + km
    assert acc is not None and key_mean is not None and rows is not None
    n_maps = len(layers) * len(heads)
    vals = (acc / n_maps).T.astype(np.float32)  # [row, frame]
    key_mean /= n_maps
    sel = [step_label(cap, step)]
    sel.append(f"layer {layers[0]}" if len(layers) == 1 else f"mean over layers {short_list(layers)}")
    sel.append(f"head {heads[0]}" if len(heads) == 1 else f"mean over heads {short_list(heads)}")
    sel.append(batch_label(cap, batch))
    notes = []
    if merge and keys != "all":
        notes.append("rows: BPE pieces summed per word")
    elif merge:
        notes.append("rows: pieces summed per word, padding summed")
    if normalize == "lyric":
        notes.append("lyric-only renormalized: A[f,i] = P[f,L_i] / Σ_i P[f,L_i]")
    if blank:
        notes.append(f"{blank} frame(s) with no lyric weight left at 0")
    sk = int(np.argmax(key_mean))
    sink_row = next((i for i, r in enumerate(rows) if sk in r.keys), -1)
    sink_label = item.label(sk) if item is not None else f"key[{sk}]"
    md = MapData(
        values=vals,
        rows=rows,
        n_frames=vals.shape[-1],
        frame_rate=float(cap.frame_rate),
        title=" · ".join(sel),
        notes=notes,
        sink_key=sk,
        sink_label=sink_label,
        sink_weight=float(key_mean[sk]),
        sink_row=sink_row,
    )
    return pool_map(md, max_frames, pool)


# ------------------------------------------------------------------------ scores
def score_matrix(
    df: pd.DataFrame,
    column: str,
    step: int | list[int] | None = None,
    batch: int | list[int] | None = None,
) -> pd.DataFrame:
    """Layer × head matrix of ``column``: the mean over all rows of ``df`` that share a (layer, head) — steps and
    batch items unless ``step`` / ``batch`` select some (``step=-1`` is the last step in the table).

    Returns a DataFrame indexed by layer with one column per head; a (layer, head) absent from the table is NaN
    and is counted in ``attrs["missing"]``. ``attrs["averaged"]`` says what was averaged."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"scores needs a pandas DataFrame (al.analyze(cap)); got {type(df).__name__}")
    need = ["layer", "head", column]
    missing_cols = [c for c in need if c not in df.columns]
    if missing_cols:
        raise ValueError(f"the table has no column(s) {missing_cols}; it has {list(df.columns)}")
    if not pd.api.types.is_numeric_dtype(df[column]) or pd.api.types.is_bool_dtype(df[column]):
        raise ValueError(f"column {column!r} is not numeric (dtype {df[column].dtype}); pick a score column")
    d = df
    averaged: list[str] = []
    selected: list[str] = []
    for name, sel in (("step", step), ("batch", batch)):
        if sel is None:
            if name in d.columns and d[name].nunique() > 1:
                averaged.append(f"{name}s {short_list(sorted(int(v) for v in d[name].unique()))}")
            continue
        if name not in d.columns:
            raise ValueError(f"{name}={sel!r} was given but the table has no {name!r} column")
        vals = [sel] if isinstance(sel, (int, np.integer)) else list(sel)
        present = sorted(int(v) for v in d[name].unique())
        vals = [present[-1] if (name == "step" and v == -1) else int(v) for v in vals]
        absent = [v for v in vals if v not in present]
        if absent:
            raise ValueError(f"{name} {absent} not in the table; it has {name}s {present}")
        d = d[d[name].isin(vals)]
        selected.append(f"{name} {short_list(vals)}")
        if len(vals) > 1:
            averaged.append(f"{name}s {short_list(vals)}")
    if d.empty:
        raise ValueError("no rows left to plot")
    bad = ~np.isfinite(d[column].to_numpy(dtype=np.float64))
    if bad.any():
        raise ValueError(f"column {column!r} holds {int(bad.sum())} NaN/inf value(s); drop or fix them first")
    m = d.pivot_table(index="layer", columns="head", values=column, aggfunc="mean")
    m = m.reindex(index=sorted(m.index), columns=sorted(m.columns))
    m.attrs["missing"] = int(m.isna().to_numpy().sum())
    m.attrs["averaged"] = averaged
    m.attrs["selected"] = selected
    m.attrs["column"] = column
    return m
