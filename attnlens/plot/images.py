"""Per-word heatmaps over a generated image (DAAM's picture, for diffusion transformers whose cross-attention queries
are image patches: PixArt).

The numbers come from :func:`~attnlens.plot._image_data.token_heatmap_data`; this module only draws them, each
word's map bilinearly upsampled to the image and laid over it. Built without pyplot (no global state).
"""

from __future__ import annotations

import textwrap
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure

from ..captures.result import Capture
from ._image_data import TokenHeatmaps, token_heatmap_data
from .fonts import with_cjk_font


def as_rgb(image: Any) -> np.ndarray:
    """An image as a float array ``[height, width, 3]`` in ``[0, 1]``: a PIL image, an ``[H, W(, C)]`` array (uint8 or
    floats in ``[0, 1]``) or a ``[C, H, W]`` / ``[H, W, C]`` tensor."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):  # torch
        image = image.detach().float().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
            image = image.transpose(1, 2, 0)
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image of shape {a.shape}; expected [height, width(, 1|3|4 channels)]")
    a = a[..., :3]
    a = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.clip(a, 0.0, 1.0)


@with_cjk_font
def token_heatmaps(
    cap: Capture,
    image: Any = None,
    words: list[str | int] | None = None,
    step: int | list[int] | str = -1,
    layers: int | list[int] | None = None,
    heads: int | list[int] | None = None,
    batch: int | None = None,
    *,
    scale: Literal["word", "shared"] = "word",
    alpha: float = 0.55,
    cmap: str = "jet",
    ncols: int | None = None,
    panel_size: float = 2.4,
    dpi: float = 100.0,
) -> Figure:
    """Per-word heatmaps laid over the generated ``image`` (DAAM's picture): one panel per word, the image first.

    Each word's map is the attention on its tokens summed, averaged over the chosen ``step`` (an int, a list,
    ``"all"`` or ``"mean"``), ``layers`` and ``heads`` (:func:`~attnlens.plot._image_data.token_heatmap_data`), then
    upsampled bilinearly to the image. ``scale="word"`` stretches each panel's colours to its own maximum (where a
    word looks, whatever its share); ``"shared"`` uses one scale for all (which word gets more). Each panel's title
    gives the word's mean share of the image's attention. Without ``image`` the maps are drawn on their own grid.
    Needs ``al.capture(..., maps=True)`` on an image family (PixArt)."""
    if scale not in ("word", "shared"):
        raise ValueError(f"scale must be 'word' or 'shared'; got {scale!r}")
    data = token_heatmap_data(cap, words, step, layers, heads, batch)
    rgb = None if image is None else as_rgb(image)
    n = len(data.words) + (rgb is not None)
    ncols = ncols or min(n, 5)
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(panel_size * ncols, panel_size * nrows + 0.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    flat = list(axes.flat)
    if rgb is not None:
        flat[0].imshow(rgb)
        flat[0].set_title("image", fontsize=8)
        flat = flat[1:]
    maps = _maps_to_draw(data, rgb)
    top = float(maps.max()) if scale == "shared" else None
    for ax, word, m, share in zip(flat, data.words, maps, data.mass):
        if rgb is not None:
            ax.imshow(rgb.mean(axis=-1), cmap="gray", vmin=0.0, vmax=1.0)
        vmax = top if top is not None else float(m.max())
        ax.imshow(m, cmap=cmap, alpha=alpha if rgb is not None else 1.0, vmin=0.0, vmax=vmax or 1.0)
        ax.set_title(f"{word}  ({share:.2f})", fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(data.title, 90)), fontsize=8)
    return fig


def _maps_to_draw(data: TokenHeatmaps, rgb: np.ndarray | None) -> np.ndarray:
    if rgb is None:
        return data.values
    return data.upsampled(rgb.shape[0], rgb.shape[1])
