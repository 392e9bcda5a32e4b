"""Reading what the analyzers need out of a Capture."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..captures.result import STAT_NAMES, Capture, NotCapturedError
from ..metrics.frame_stats import frame_stats


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def stats_from_maps(maps: Any, cap: Capture) -> dict[str, np.ndarray]:
    """Per-frame statistics ``[..., batch, head, frame(, segment)]`` of maps ``[..., batch, head, frame, key]``,
    computed item by item with :func:`attnlens.metrics.frame_stats`."""
    m = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    b_axis = m.ndim - 4
    per_item = [frame_stats(m.select(b_axis, b), cap.layout[b]) for b in range(m.shape[b_axis])]
    return {k: np.stack([_np(d[k]) for d in per_item], axis=b_axis) for k in STAT_NAMES}


def capture_stats(cap: Capture) -> dict[str, np.ndarray]:
    """The five per-frame statistics as NumPy arrays ``[step, layer, batch, head, frame(, segment)]``: the kept ones,
    or computed from full maps when the capture kept maps only."""
    if all(k in cap.stats for k in STAT_NAMES):
        out = {k: _np(cap.stats[k]) for k in STAT_NAMES}
    elif cap.maps is not None:
        out = stats_from_maps(cap.maps, cap)
    else:
        missing = [k for k in STAT_NAMES if k not in cap.stats]
        raise NotCapturedError(f"the capture holds neither the per-frame statistics {missing} nor full maps")
    shape = out["entropy"].shape
    if len(shape) != 5:
        raise ValueError(f"stats['entropy'] has shape {shape}; expected [step, layer, batch, head, frame]")
    for k in STAT_NAMES:
        want = shape + ((out["mass"].shape[-1],) if k == "mass" else ())
        if out[k].shape != want:
            raise ValueError(f"stats[{k!r}] has shape {out[k].shape}; expected {want}")
    S, L, B, H, _ = shape
    if (S, L, H) != (len(cap.steps), len(cap.layers), len(cap.heads)):
        raise ValueError(
            f"stats shape {shape} does not match the capture's steps {len(cap.steps)}, layers {len(cap.layers)}, "
            f"heads {len(cap.heads)}"
        )
    for k in ("entropy", "mass", "entropy_lyric"):
        bad = ~np.isfinite(out[k])
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            s, li, b, h = idx[:4]
            where = sorted({(cap.steps[i], cap.layers[j]) for i, j in np.argwhere(bad.reshape(S, L, -1).any(-1))})
            raise ValueError(
                f"stats[{k!r}] holds NaN/inf, first at index {idx} [step, layer, batch, head, frame] = step "
                f"{cap.steps[s]}, layer {cap.layers[li]}, batch {b}, head {cap.heads[h]}; in (step, layer) "
                f"{where[:6]}{' ...' if len(where) > 6 else ''}. The model's "
                "attention logits were not finite there, so no statistic can be computed. Analyze other steps/layers "
                "(cap.meta['nonfinite'] lists them) or fix the model's numerics"
            )
    if len(cap.layout) != B:
        raise ValueError(f"stats have {B} batch items but the layout describes {len(cap.layout)}")
    return out


def lyric_maps(
    cap: Capture, heads: list[tuple[int, int]], step: Any, batch: int, positions: np.ndarray
) -> torch.Tensor:
    """``[head, token, frame]`` float32: the chosen (layer, head) maps restricted to the key ``positions``."""
    out = []
    for layer, head in heads:
        try:
            P = cap.attention(step, layer, head, batch=batch)  # [frame, key]
        except NotCapturedError as e:
            layers = sorted({ly for ly, _ in heads})
            hs = sorted({h for _, h in heads})
            raise NotCapturedError(
                f"{e}. This needs the full maps of heads {heads}: capture with "
                f"al.capture(pipe, layers={layers}, heads={hs}, maps=True)"
            ) from None
        out.append(torch.as_tensor(P).detach().cpu().float()[:, torch.as_tensor(positions, dtype=torch.long)].T)
    return torch.stack(out)


def parse_heads(heads: Any) -> list[tuple[int, int]]:
    """(layer, head) pairs from a dict ``{layer: [heads]}``, a list of pairs, a DataFrame with layer/head columns, or
    the path of a head set (:func:`attnlens.analyzers.heads.save_head_set`)."""
    if heads is None:
        raise ValueError("heads must be given: a dict {layer: [head, ...]} or a list of (layer, head) pairs")
    if isinstance(heads, (str, os.PathLike)):
        from .heads import load_head_set

        return load_head_set(heads)
    if hasattr(heads, "columns") and "layer" in heads.columns and "head" in heads.columns:
        pairs = [(int(a), int(b)) for a, b in zip(heads["layer"], heads["head"])]
    elif isinstance(heads, dict):
        pairs = [(int(layer), int(h)) for layer, hs in heads.items() for h in (hs if hasattr(hs, "__iter__") else [hs])]
    else:
        try:
            pairs = [(int(a), int(b)) for a, b in heads]
        except (TypeError, ValueError):
            raise ValueError(
                f"heads must be a dict {{layer: [head, ...]}} or (layer, head) pairs; got {heads!r}"
            ) from None
    if not pairs:
        raise ValueError("no heads given")
    return pairs
