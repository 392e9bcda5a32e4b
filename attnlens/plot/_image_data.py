"""What the image figures draw, as plain arrays: per-word heatmaps over the grid of image patches.

A family whose cross-attention queries are an image's patches (PixArt) records the grid in
``cap.model["query_grid"]`` = ``[rows, cols]``; query ``n`` is the patch at row ``n // cols``, column ``n % cols``.
A word's heatmap is, for every patch, the attention probability on the word's tokens *summed* (the share of the
patch's attention the word receives), then *averaged* over the chosen steps, layers and heads — DAAM's
aggregation, on the probabilities the model computed (masked keys have probability 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..captures.layout import ItemLayout
from ..captures.result import Capture
from ._data import _as_list, batch_label, item_layout, short_list, step_label


@dataclass
class TokenHeatmaps:
    """Per-word heatmaps over the image's grid of patches: ``values[word, row, col]`` is the attention mass on the
    word's tokens, mean over :attr:`steps`, :attr:`layers` and :attr:`heads`."""

    values: np.ndarray  # [word, row, col]
    words: list[str]
    keys: list[tuple[int, ...]]
    """the packed keys summed for each word."""
    grid: tuple[int, int]
    batch: int
    steps: list[int]
    layers: list[int]
    heads: list[int]
    title: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def mass(self) -> np.ndarray:
        """Mean over patches of every word's map: the share of the image's attention each word receives."""
        return self.values.reshape(len(self.words), -1).mean(axis=1)

    def argmax(self) -> list[tuple[int, int]]:
        """``(row, col)`` of every word's hottest patch."""
        cols = self.grid[1]
        return [divmod(int(v.argmax()), cols) for v in self.values]

    def upsampled(self, height: int, width: int) -> np.ndarray:
        """The maps bilinearly resized to an image of ``height × width`` pixels: ``[word, height, width]``."""
        return upsample(self.values, height, width)


def upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (pixel centres, as an image is scaled) of ``maps [n, rows, cols]`` to ``[n, height, width]``."""
    t = torch.as_tensor(np.asarray(maps, dtype=np.float32))[:, None]
    out = torch.nn.functional.interpolate(t, size=(int(height), int(width)), mode="bilinear", align_corners=False)
    return out[:, 0].numpy()


def query_grid(cap: Capture) -> tuple[int, int]:
    """``(rows, cols)`` of the capture's image patches; an error for captures whose queries are frames in time."""
    grid = cap.model.get("query_grid")
    if not grid:
        raise ValueError(
            f"this capture's queries are not an image's patches (no query grid recorded; model "
            f"{cap.model.get('class', '?')}): token heatmaps need an image family such as PixArt"
        )
    rows, cols = int(grid[0]), int(grid[1])
    if cap.n_frames and rows * cols != cap.n_frames:
        raise ValueError(f"the query grid {rows} x {cols} does not hold the capture's {cap.n_frames} queries")
    return rows, cols


def default_batch(cap: Capture) -> int:
    """The first conditional row (``cond:…``; the unconditional rows of guidance see the negative prompt), else 0."""
    return next((b for b, lab in enumerate(cap.batch_labels) if lab.startswith("cond")), 0)


def word_keys(item: ItemLayout, words: list[str | int] | None) -> tuple[list[str], list[tuple[int, ...]]]:
    """Labels and packed keys of the chosen words: ``None`` = every word of the prompt; a string = every occurrence
    of that word (case-insensitive; their tokens summed), or a token's text (``"</s>"``); an int = a word's index."""
    seq = item.vocabulary.sequence_names()
    by_word: dict[int, list[int]] = {}
    for k, (seg, w) in enumerate(zip(item.segments, item.word_index)):
        if seg in seq and w >= 0:
            by_word.setdefault(w, []).append(k)
    if words is None:
        if not by_word:
            raise ValueError("this batch item has no prompt words (an unknown layout, or an empty prompt)")
        return [item.words[w] for w in sorted(by_word)], [tuple(by_word[w]) for w in sorted(by_word)]
    labels, keys = [], []
    for x in words:
        if isinstance(x, (int, np.integer)):
            if int(x) not in by_word:
                raise ValueError(
                    f"word index {x} is not a word of this prompt (it has {len(item.words)}: {item.words})"
                )
            labels.append(item.words[int(x)])
            keys.append(tuple(by_word[int(x)]))
            continue
        ks = [k for w, kk in sorted(by_word.items()) if item.words[w].lower() == str(x).lower() for k in kk]
        if not ks:  # a token's text: a special token such as </s>
            ks = [
                k
                for k, (seg, tok) in enumerate(zip(item.segments, item.tokens))
                if tok is not None and seg != "padding" and tok.strip() == str(x)
            ]
        if not ks:
            raise ValueError(f"{x!r} is not a word or token of this prompt; its words: {item.words}")
        labels.append(str(x))
        keys.append(tuple(ks))
    return labels, keys


def token_heatmap_data(
    cap: Capture,
    words: list[str | int] | None = None,
    step: int | list[int] | str = -1,
    layers: int | list[int] | None = None,
    heads: int | list[int] | None = None,
    batch: int | None = None,
) -> TokenHeatmaps:
    """Per-word heatmaps over the image's patches (see :class:`TokenHeatmaps`).

    ``step``: a generation step (negative counts from the end), a list of them, ``"all"`` (every kept step) or
    ``"mean"`` (the mean map of ``maps="mean"``); ``layers`` / ``heads``: kept ones to average (``None`` = all);
    ``batch``: the row (default: the first conditional one). Needs ``al.capture(..., maps=True)`` (or
    ``maps="mean"``) on a family whose queries are image patches."""
    rows, cols = query_grid(cap)
    b = default_batch(cap) if batch is None else cap.batch_index(batch)
    item = item_layout(cap, b)
    if item is None or not item.known:
        raise ValueError("token heatmaps need the key layout (capture the pipeline, or pass layout=... to al.capture)")
    labels, keys = word_keys(item, words)
    layer_list = _as_list("layers", layers, cap.layers)
    head_list = _as_list("heads", heads, cap.heads)
    li = [cap.layer_index(x) for x in layer_list]
    hi = [cap.head_index(x) for x in head_list]
    if step == "mean":
        if cap.maps_mean is None:
            raise ValueError("no mean map was kept: capture with al.capture(..., maps='mean')")
        P = cap.maps_mean[li][:, b][:, hi][None]  # [1, layer, head, patch, key]
        steps: list[int] = []
    else:
        if cap.maps is None:
            raise ValueError("full attention maps were not kept: capture with al.capture(..., maps=True)")
        step_list = list(cap.steps) if step == "all" else _as_list("step", step, cap.steps)
        si = [cap.step_index(s) for s in step_list]
        steps = [cap.steps[i] for i in si]
        P = cap.maps[si][:, li][:, :, b][:, :, hi]  # [step, layer, head, patch, key]
    P = P.double()
    values = np.stack([P[..., list(k)].sum(-1).mean(dim=(0, 1, 2)).numpy() for k in keys])  # [word, patch]
    where = step_label(cap, step) if isinstance(step, (int, str)) and step != "all" else f"steps {short_list(steps)}"
    title = (
        f"{where}, layers {short_list(layer_list)}, heads {short_list(head_list)}, {batch_label(cap, b)}: "
        f"{rows} × {cols} patches"
    )
    notes = [f"{lab!r}: {len(k)} token(s) summed" for lab, k in zip(labels, keys) if len(k) > 1]
    return TokenHeatmaps(
        values=values.reshape(len(keys), rows, cols),
        words=labels,
        keys=keys,
        grid=(rows, cols),
        batch=b,
        steps=steps,
        layers=layer_list,
        heads=head_list,
        title=title,
        notes=notes,
    )
