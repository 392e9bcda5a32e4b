"""Conditioning built exactly as ``AceStepPipeline.__call__`` builds it (text2music, no reference audio).

1. ``pipe.encode_prompt(prompt, lyrics, audio_duration=...)``: caption through the SFT prompt template and the
   text encoder; lyrics ``"# Languages\\n{lang}\\n\\n# Lyric\\n{lyrics}<|endoftext|>"`` through the embedding table.
2. Timbre: ``condition_encoder.silence_latent[:, :ceil(30 · latents_per_second)]`` for every item,
   ``refer_audio_order_mask = arange(B)``.
3. ``condition_encoder(...)`` packs ``[lyric | timbre | caption | padding]`` -> ``encoder_hidden_states``.
4. ``context_latents = cat([src_latents, chunk_mask], -1)``: ``src_latents`` = the silence latent tiled to the
   clip length, ``chunk_mask`` = ones ``[B, T, acoustic_dim]``.

Ids and masks are recorded by :class:`attnlens.adapters.acestep.layout.LayoutRecorder` hooks during the call, so
the layout (which packed key is which sung token) is the one the pipeline would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..adapters.acestep.layout import LayoutRecorder
from ..captures.layout import Layout
from ..taps.hooks import HookSet


@dataclass
class Condition:
    """What the transformer needs besides the noisy latents, for one batch."""

    encoder_hidden_states: torch.Tensor  # [B, S, hidden]
    layout: Layout
    audio_duration: float

    def lyric_positions(self) -> list[list[int]]:
        return [it.lyric_positions().tolist() for it in self.layout.items]


def timbre_inputs(pipe: Any, batch_size: int, device: Any, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The silence timbre the pipeline uses without reference audio."""
    frames = math.ceil(30 * pipe.latents_per_second)
    ref = pipe.condition_encoder.silence_latent[:, :frames, :].to(device=device, dtype=dtype)
    return ref.expand(batch_size, -1, -1).contiguous(), torch.arange(batch_size, device=device, dtype=torch.long)


@torch.no_grad()
def encode_condition(
    pipe: Any,
    captions: list[str],
    lyrics: list[str],
    audio_duration: float,
    languages: list[str] | str = "en",
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> Condition:
    """``encoder_hidden_states`` and layout for a batch, as the pipeline computes them (frozen encoders)."""
    if len(captions) != len(lyrics):
        raise ValueError(f"{len(captions)} captions but {len(lyrics)} lyrics")
    device = device if device is not None else pipe.transformer.device
    dtype = dtype or pipe.transformer.dtype
    hooks = HookSet()
    rec = LayoutRecorder(pipe)
    try:
        rec.attach(hooks)
        th, tm, lh, lm = pipe.encode_prompt(
            prompt=list(captions),
            lyrics=list(lyrics),
            device=device,
            vocal_language=languages,
            audio_duration=audio_duration,
        )
        ref, order = timbre_inputs(pipe, len(captions), device, dtype)
        ehs, _ = pipe.condition_encoder(
            text_hidden_states=th,
            text_attention_mask=tm,
            lyric_hidden_states=lh,
            lyric_attention_mask=lm,
            refer_audio_acoustic_hidden_states_packed=ref,
            refer_audio_order_mask=order,
        )
    finally:
        hooks.remove()
    if rec.layout is None:
        raise RuntimeError("the condition encoder ran but its ids/masks were not seen: cannot build the layout")
    return Condition(encoder_hidden_states=ehs.to(dtype), layout=rec.layout, audio_duration=audio_duration)


def context_latents(pipe: Any, batch_size: int, latent_length: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """``cat([src_latents (silence), chunk_mask (ones)], -1)`` ``[B, T, 2·acoustic_dim]`` (text2music)."""
    src, _ = pipe.prepare_src_latents(device=device, dtype=dtype, batch_size=batch_size, latent_length=latent_length)
    acoustic_dim = pipe.transformer.config.audio_acoustic_hidden_dim
    mask = torch.ones(batch_size, latent_length, acoustic_dim, device=device, dtype=dtype)
    return torch.cat([src, mask], dim=-1)
