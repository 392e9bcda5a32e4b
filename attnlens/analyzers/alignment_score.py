"""``al.lyrics_alignment_score``: ACE-Step's lyrics alignment score ("AAS") on a captured step, and ACE-Step's own
protocol (one extra transformer pass at t = 1/steps on the re-noised final latent).

The math is :func:`attnlens.metrics.lyrics_alignment_score`. Rows are the lyric keys ACE-Step scores: every lyric key
between the ``# Languages / # Lyric`` header and ``<|endoftext|>`` (sung tokens, structure tags and whitespace
tokens, in packed order); tag rows (decoded token between ``[`` and ``]``) are excluded from coverage and
monotonicity. The map is the attention probability itself (over all packed keys), as ACE-Step takes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..captures.layout import ItemLayout
from ..captures.result import Capture
from ..metrics.aas import LyricsAlignmentScore, tag_mask_from_tokens
from ..metrics.aas import lyrics_alignment_score as _score
from .capture_arrays import lyric_maps, parse_heads

DEFAULT_HEADS: dict[int, list[int]] = {2: [6], 3: [10, 11], 4: [3], 5: [8, 9], 6: [8]}
"""ACE-Step's default heads: layer 2 head 6, layer 3 heads 10-11, layer 4 head 3, layer 5 heads 8-9, layer 6 head 8."""


def scored_rows(it: ItemLayout) -> tuple[np.ndarray, np.ndarray]:
    """(packed positions of ACE-Step's lyric rows, tag mask over them)."""
    pos = [
        i
        for i, (seg, kind) in enumerate(zip(it.segments, it.kinds))
        if seg == "lyric" or (seg == "lyric_meta" and kind in ("tag", "space"))
    ]
    pos_a = np.asarray(pos, dtype=np.int64)
    toks = [it.tokens[i] for i in pos]
    if any(t is not None for t in toks):
        tags = tag_mask_from_tokens(toks)
    else:
        tags = np.asarray([it.kinds[i] == "tag" for i in pos], dtype=bool)
    return pos_a, tags


def lyrics_alignment_score(
    cap: Capture,
    heads: Any = None,
    step: Any = -1,
    batch: int = 0,
    dtw_rule: str = "whisper",
) -> LyricsAlignmentScore:
    """ACE-Step's lyrics alignment score of batch item ``batch`` at generation ``step`` (negative counts from the end;
    ``"mean"`` for a mean-over-steps capture), averaging ``heads`` (default :data:`DEFAULT_HEADS`; a dict
    ``{layer: [heads]}`` or (layer, head) pairs). Needs the full maps of those heads. ``.score`` is the 4-decimal
    value ACE-Step reports; see :class:`attnlens.metrics.LyricsAlignmentScore` for the parts."""
    pairs = parse_heads(DEFAULT_HEADS if heads is None else heads)
    b = cap.batch_index(batch)
    pos, tags = scored_rows(cap.layout[b])
    if len(pos) == 0:
        raise ValueError(f"batch item {b} has no lyric rows to score (no sung, tag or whitespace lyric token)")
    maps = lyric_maps(cap, pairs, step, b, pos)
    return _score(maps, tags, dtw_rule=dtw_rule)


def acestep_protocol_score(
    pipe: Any,
    latents: torch.Tensor,
    *,
    prompt: Any,
    lyrics: Any,
    num_inference_steps: int = 8,
    seed: int = 42,
    heads: Any = None,
    batch: int = 0,
    **pipe_kwargs: Any,
) -> LyricsAlignmentScore:
    """ACE-Step's protocol: re-noise the final latent ``x0`` to ``t = 1 / num_inference_steps``
    (``x_t = t * noise + (1 - t) * x0``, noise from ``torch.Generator("cpu").manual_seed(seed)``), run the pipeline
    for that single step under ``al.capture(pipe, ..., maps=True)`` (guidance 1, ``output_type="latent"``), and
    score the captured maps. ``latents`` ``[batch, latent frames, channels]`` at the pipeline's latent rate;
    ``prompt``/``lyrics`` and ``pipe_kwargs`` as for the generation that produced them."""
    try:
        from ..captures.session import capture
    except ImportError as e:  # pragma: no cover - depends on the capture core
        raise ImportError("acestep_protocol_score needs attnlens.captures.session (al.capture)") from e
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1; got {num_inference_steps}")
    pairs = parse_heads(DEFAULT_HEADS if heads is None else heads)
    x0 = torch.as_tensor(latents)
    if x0.ndim != 3:
        raise ValueError(f"latents must be [batch, frames, channels]; got shape {tuple(x0.shape)}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float32).to(device=x0.device, dtype=x0.dtype)
    t = 1.0 / num_inference_steps
    xt = t * noise + (1.0 - t) * x0
    rate = float(getattr(pipe, "latents_per_second", 25.0))
    kwargs = dict(pipe_kwargs)
    kwargs.setdefault("audio_duration", x0.shape[1] / rate)
    layers = sorted({layer for layer, _ in pairs})
    hs = sorted({h for _, h in pairs})
    with capture(pipe, layers=layers, heads=hs, maps=True) as cap:
        pipe(
            prompt=prompt,
            lyrics=lyrics,
            latents=xt,
            timesteps=[t],
            guidance_scale=1.0,
            output_type="latent",
            **kwargs,
        )
    return lyrics_alignment_score(cap, heads=pairs, step=-1, batch=batch)
