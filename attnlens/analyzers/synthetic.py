"""Synthetic layouts, maps and captures with planted answers (for tests, examples and benchmarks).

``synthetic_layout`` builds the packed layout ACE-Step would produce for some lines of lyrics (header tokens,
a ``[verse]`` tag, sung tokens grouped into words, newline tokens, ``<|endoftext|>``, timbre, caption, padding);
``staircase_maps`` plants a lyric staircase (word ``w`` sung over known frames); ``capture_from_maps`` wraps maps
into a :class:`~attnlens.captures.result.Capture` with statistics from :func:`attnlens.metrics.frame_stats`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..captures.layout import ItemLayout, Layout
from ..captures.result import Capture
from .capture_arrays import stats_from_maps


def synthetic_layout(
    lines: list[list[str]] | None = None,
    tokens_per_word: int = 2,
    n_timbre: int = 1,
    n_caption: int = 4,
    n_padding: int = 0,
    tag: str | None = "[verse]",
) -> ItemLayout:
    """Layout: 2 header tokens, ``tag`` (2 tokens ``[``/``verse]``), then per line its words (each
    ``tokens_per_word`` sung tokens) and a ``"\\n"`` token, ``<|endoftext|>``, timbre, caption, padding keys."""
    lines = lines if lines is not None else [["walking", "down", "the"], ["morning", "road"]]
    seg: list[str] = []
    tok: list[str | None] = []
    kind: list[str | None] = []
    wid: list[int] = []
    lid: list[int] = []

    def add(s: str, t: str | None, k: str | None, w: int = -1, li: int = -1) -> None:
        seg.append(s)
        tok.append(t)
        kind.append(k)
        wid.append(w)
        lid.append(li)

    add("lyric_meta", "# Languages\n", "header")
    add("lyric_meta", "# Lyric\n", "header")
    if tag:
        add("lyric_meta", "[", "tag")
        add("lyric_meta", tag[1:], "tag")
    words: list[str] = []
    word_line: list[int] = []
    for li, line in enumerate(lines):
        for w in line:
            for k in range(tokens_per_word):
                piece = w[k * len(w) // tokens_per_word : (k + 1) * len(w) // tokens_per_word] or w
                add("lyric", (" " if k == 0 else "") + piece, "sung", len(words), li)
            words.append(w)
            word_line.append(li)
        add("lyric_meta", "\n", "space")
    add("lyric_meta", "<|endoftext|>", "end")
    for _ in range(n_timbre):
        add("timbre", None, None)
    for i in range(n_caption):
        add("caption", f"c{i}", None)
    for _ in range(n_padding):
        add("padding", None, None)
    lyrics = ((tag + "\n") if tag else "") + "\n".join(" ".join(line) for line in lines)
    return ItemLayout(
        segments=seg,
        tokens=tok,
        kinds=kind,
        word_index=wid,
        line_index=lid,
        lyrics=lyrics,
        words=words,
        word_line=word_line,
        lines=[" ".join(line) for line in lines],
    )


def staircase_maps(
    item: ItemLayout,
    word_frames: list[int],
    lyric_mass: float = 0.8,
    peak: float = 0.9,
) -> np.ndarray:
    """Map ``P[frame, key]`` (float64) that sings word ``w`` over frames ``[word_frames[w], word_frames[w+1])`` (the
    last entry is the frame count). Inside a word its tokens share the frames in equal consecutive parts. In every
    frame the lyric segment holds ``lyric_mass`` (``peak`` of it on the current token, the rest spread over the
    other sung tokens) and the other keys share ``1 - lyric_mass`` equally."""
    F = word_frames[-1]
    K = item.n_keys
    L = item.lyric_positions()
    wid = item.lyric_word_ids()
    n = len(L)
    P = np.zeros((F, K))
    others = np.setdiff1d(np.arange(K), L)
    P[:, others] = (1 - lyric_mass) / max(len(others), 1)
    for w in range(len(word_frames) - 1):
        toks = np.flatnonzero(wid == w)
        f0, f1 = word_frames[w], word_frames[w + 1]
        edges = np.linspace(f0, f1, len(toks) + 1).round().astype(int)
        for j, t in enumerate(toks):
            for f in range(edges[j], edges[j + 1]):
                P[f, L] = lyric_mass * (1 - peak) / max(n - 1, 1)
                P[f, L[t]] = lyric_mass * peak if n > 1 else lyric_mass
    return P


def capture_from_maps(
    maps: Any,
    layout: Layout | list[ItemLayout],
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    steps: list[int] | None = None,
    timesteps: list[float] | None = None,
    frame_rate: float = 12.5,
    keep_maps: bool = True,
) -> Capture:
    """A Capture of maps ``[step, layer, batch, head, frame, key]`` with statistics from
    :func:`attnlens.metrics.frame_stats` (and the maps themselves when ``keep_maps``)."""
    m = torch.tensor(np.array(maps, dtype=np.float32))
    if m.ndim != 6:
        raise ValueError(f"maps must be [step, layer, batch, head, frame, key]; got shape {tuple(m.shape)}")
    S, Ly, B, H = m.shape[:4]
    lay = layout if isinstance(layout, Layout) else Layout(items=list(layout), source="user")
    steps = list(range(S)) if steps is None else steps
    timesteps = [1.0 - i / max(len(steps), 1) for i in range(max(steps) + 1)] if timesteps is None else timesteps
    cap = Capture(
        layers=list(range(Ly)) if layers is None else layers,
        heads=list(range(H)) if heads is None else heads,
        steps=steps,
        timesteps=timesteps,
        layout=lay,
        frame_rate=frame_rate,
        batch_labels=[f"cond:{b}" for b in range(B)],
    )
    st = stats_from_maps(m, cap)
    cap.stats = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in st.items()}
    if keep_maps:
        cap.maps = m
    return cap
