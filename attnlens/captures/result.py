"""The :class:`Capture`: what a capture kept, with named dimensions.

Per-frame statistics (always kept for every selected step/layer/head)::

    stats["entropy"]        float32 [step, layer, batch, head, frame]           normalized entropy over all keys
    stats["mass"]           float32 [step, layer, batch, head, frame, segment]  mass per segment (the layout vocabulary's order)
    stats["argmax"]         int32   [step, layer, batch, head, frame]           packed key index of the max weight
    stats["entropy_lyric"]  float32 [step, layer, batch, head, frame]           entropy of the lyric-only map / log n
    stats["lyric_argmax"]   int32   [step, layer, batch, head, frame]           index i into L of argmax_i A[f, i]
                                                                                (-1 when the item has no lyric token)

Full maps, only when asked for (``maps=True``)::

    maps                    float32 [step, layer, batch, head, frame, key]
    maps_mean               float32 [layer, batch, head, frame, key]            (``maps="mean"``: mean over steps)

``step`` indexes the *kept* steps; ``cap.steps[i]`` is the generation step of kept step ``i`` and
``cap.timesteps`` lists the ``t`` of every step seen. ``layer`` and ``head`` index ``cap.layers`` / ``cap.heads``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import torch

from .layout import Layout

STAT_NAMES: tuple[str, ...] = ("entropy", "mass", "argmax", "entropy_lyric", "lyric_argmax")


class NotCapturedError(LookupError):
    """Asked for something the capture did not keep."""


@dataclass
class Capture:
    """Result of :func:`attnlens.capture`. See the module docstring for the arrays and their dims."""

    layers: list[int]
    heads: list[int]
    steps: list[int]
    """generation step index of every kept step."""
    timesteps: list[float]
    """``t`` of every step seen (kept or not), in order."""
    layout: Layout
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    maps: torch.Tensor | None = None
    maps_mean: torch.Tensor | None = None
    frame_rate: float = 12.5
    """DiT frames per second (cross-attention queries)."""
    batch_labels: list[str] = field(default_factory=list)
    """``"cond"`` / ``"uncond"`` (CFG halves) with the prompt index, e.g. ``"cond:0"``."""
    model: dict[str, Any] = field(default_factory=dict)
    """model facts: class, layers, heads, kv_heads, head_dim, scale, patch_size, latent_rate."""
    meta: dict[str, Any] = field(default_factory=dict)
    """anything else: attnlens version, dtype, device, reducer path, ..."""

    # ------------------------------------------------------------------ dims
    @property
    def n_frames(self) -> int:
        if self.stats:
            return int(self.stats["entropy"].shape[-1])
        if self.maps is not None:
            return int(self.maps.shape[-2])
        return 0

    @property
    def n_keys(self) -> int:
        return self.layout.items[0].n_keys if self.layout.items else 0

    @property
    def batch_size(self) -> int:
        return len(self.batch_labels)

    @property
    def kept_timesteps(self) -> list[float]:
        """``t`` of each kept step."""
        return [self.timesteps[s] for s in self.steps]

    def frame_times(self) -> torch.Tensor:
        """Start time in seconds of every DiT frame: ``f / frame_rate``."""
        return torch.arange(self.n_frames, dtype=torch.float64) / self.frame_rate

    # --------------------------------------------------------------- indices
    def step_index(self, step: int) -> int:
        """Position in the kept-step axis of generation step ``step`` (negative counts from the end of the
        steps seen)."""
        n = len(self.timesteps)
        s = step + n if step < 0 else step
        if not 0 <= s < n:
            raise IndexError(f"step {step} is out of range: {n} steps were seen (valid: {-n}..{n - 1})")
        if s not in self.steps:
            raise NotCapturedError(
                f"step {step} (t={self.timesteps[s]:.4g}) was not kept; kept steps are {self.steps}. "
                f"Capture it with al.capture(..., steps=[{step}])"
            )
        return self.steps.index(s)

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise NotCapturedError(
                f"layer {layer} was not kept; kept layers are {self.layers}. Capture it with al.capture(..., layers=[{layer}])"
            )
        return self.layers.index(layer)

    def head_index(self, head: int) -> int:
        if head not in self.heads:
            raise NotCapturedError(
                f"head {head} was not kept; kept heads are {self.heads}. Capture it with al.capture(..., heads=[{head}])"
            )
        return self.heads.index(head)

    def batch_index(self, batch: int) -> int:
        if not 0 <= batch < self.batch_size:
            raise IndexError(
                f"batch {batch} out of range; this capture has {self.batch_size} items {self.batch_labels}"
            )
        return batch

    # ------------------------------------------------------------------ maps
    def attention(self, step: int, layer: int, head: int, batch: int = 0) -> torch.Tensor:
        """Attention probabilities ``[frame, key]`` (rows sum to 1) of one (step, layer, head, batch item).

        Needs ``maps=True``. ``step`` is a generation step (negative counts from the end); with
        ``maps="mean"`` pass ``step="mean"`` for the mean over steps.
        """
        b = self.batch_index(batch)
        if step == "mean":
            if self.maps_mean is None:
                raise NotCapturedError("no mean map was kept: capture with al.capture(..., maps='mean')")
            return self.maps_mean[self.layer_index(layer), b, self.head_index(head)]
        if self.maps is None:
            raise NotCapturedError(
                "full attention maps were not kept: capture with al.capture(..., maps=True) "
                "(and layers=/heads=/steps= to keep only what you need)"
            )
        return self.maps[self.step_index(step), self.layer_index(layer), b, self.head_index(head)]

    def stat(self, name: str) -> torch.Tensor:
        """One per-frame statistic array (see module docstring)."""
        if name not in self.stats:
            raise NotCapturedError(f"statistic {name!r} was not kept; kept: {sorted(self.stats)}")
        return self.stats[name]

    # ------------------------------------------------------------------ I/O
    def save(self, path: str) -> str:
        """Write the capture to ``path`` (one safetensors file, metadata as JSON inside). Atomic."""
        from .io import save_capture

        return save_capture(self, path)

    # --------------------------------------------------------------- display
    def summary(self) -> str:
        kept_maps = "none"
        if self.maps is not None:
            kept_maps = f"full {tuple(self.maps.shape)}"
        elif self.maps_mean is not None:
            kept_maps = f"mean over steps {tuple(self.maps_mean.shape)}"
        ts = ", ".join(f"{t:.4g}" for t in self.kept_timesteps)
        return (
            f"Capture of {self.model.get('class', '?')}: steps {self.steps} (t = {ts}) of {len(self.timesteps)}, "
            f"layers {_short(self.layers)}, heads {_short(self.heads)}, batch {self.batch_labels}, "
            f"{self._queries()}, "
            f"{self.n_keys} keys; maps: {kept_maps}; layout: {self.layout.source}"
        )

    def _queries(self) -> str:
        """The query axis in words: frames in time, or an image's patches (``model["query_grid"]``)."""
        grid = self.model.get("query_grid")
        if grid:
            return f"{self.n_frames} patches ({grid[0]} × {grid[1]})"
        return f"{self.n_frames} frames @ {self.frame_rate:g} Hz ({self.n_frames / self.frame_rate:.2f} s)"

    def __repr__(self) -> str:
        return f"<{self.summary()}>"

    def _repr_html_(self) -> str:
        rows = [
            ("model", self.model.get("class", "?")),
            ("steps kept", f"{self.steps} of {len(self.timesteps)}"),
            ("timesteps", ", ".join(f"{t:.4g}" for t in self.timesteps)),
            ("layers", _short(self.layers)),
            ("heads", _short(self.heads)),
            ("batch", ", ".join(self.batch_labels)),
            ("queries", self._queries()),
            ("keys", str(self.n_keys)),
            ("statistics", ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.stats.items())),
            ("maps", "none" if self.maps is None else str(tuple(self.maps.shape))),
        ]
        for b, it in enumerate(self.layout.items):
            counts = ", ".join(f"{s} {it.segments.count(s)}" for s in it.vocabulary.names if it.segments.count(s))
            rows.append((f"layout[{b}]", f"{counts}; {len(it.words)} sung words"))
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
        )
        return f"<table><caption>attnlens Capture</caption>{body}</table>"


def _short(xs: list[int]) -> str:
    if len(xs) > 2 and xs == list(range(xs[0], xs[-1] + 1)):
        return f"{xs[0]}..{xs[-1]}"
    return str(xs)
