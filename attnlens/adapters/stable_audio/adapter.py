"""Adapter for Stable Audio in diffusers (``StableAudioPipeline`` / ``StableAudioDiTModel``).

Facts used (diffusers 0.42.1, ``StableAudioDiTBlock`` and ``StableAudioAttnProcessor2_0``):

- every block ``transformer.transformer_blocks[i]`` has ``attn2``, the cross-attention, built with ``kv_heads``
  (GQA): its processor projects ``q = to_q(x)`` ``[B, 1 + T, H · D]`` and ``k = to_k(c)`` ``[B, S, KVH · D]``,
  repeats each KV head for ``H // KVH`` consecutive query heads (query head ``h`` reads KV head ``h // group``), has
  no q/k norms and no RoPE (the block passes none to ``attn2``), and calls SDPA with its **default** scale
  ``1/√D`` (the processor ignores ``attn.scale``);
- the block passes ``attention_mask=encoder_attention_mask`` to ``attn2``: a boolean ``[B, S]`` (True: attend) or
  a float mask that SDPA adds to the logits; the pipeline passes none;
- the transformer prepends one global token (timing and time-step embedding) to the latent frames and drops it
  from its output: query position 0 is not audio, so the tap keeps positions ``1 ..`` (the latent frames);
- latents run at ``sampling_rate / hop`` = 44100 / 2048 ≈ 21.53 Hz, one query per latent (no patching);
- the pipeline calls the transformer with ``t`` as the second positional argument; under classifier-free guidance
  the unconditional half comes first.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...families import AttentionFacts, FamilyBase
from ..diffusers_blocks import attn2_blocks, bind
from .layout import STABLE_AUDIO_SEGMENTS, StableAudioLayoutRecorder

DEFAULT_SAMPLE_RATE = 44100
DEFAULT_HOP = 2048
PROCESSOR = "StableAudioAttnProcessor2_0"


def _is_transformer(obj: Any) -> bool:
    return type(obj).__name__ == "StableAudioDiTModel" or (
        isinstance(obj, nn.Module) and hasattr(obj, "transformer_blocks") and hasattr(obj, "global_proj")
    )


def _is_pipeline(obj: Any) -> bool:
    return hasattr(obj, "transformer") and hasattr(obj, "projection_model") and _is_transformer(obj.transformer)


class StableAudioAdapter(FamilyBase):
    """Adapter for a diffusers ``StableAudioPipeline`` or a bare ``StableAudioDiTModel``."""

    name = "stable-audio"
    describes = "a diffusers StableAudioPipeline or StableAudioDiTModel"
    segments = STABLE_AUDIO_SEGMENTS
    cfg_order = ("uncond", "cond")  # the pipeline concatenates the negative (or null) condition first
    timestep_arg = ("timestep", 1)
    encoder_arg = ("encoder_hidden_states", 2)
    mask_arg = ("encoder_attention_mask", 7)
    frame_slice = slice(1, None)  # position 0 of the queries is the prepended global token

    @classmethod
    def accepts(cls, model: Any) -> bool:
        return _is_pipeline(model) or _is_transformer(model)

    def __init__(self, model: Any):
        bind(self, model, _is_pipeline, _is_transformer, f"{self.describes} (with .transformer_blocks[i].attn2)")
        blocks = attn2_blocks(
            self.transformer,
            (PROCESSOR,),
            "its scale, mask and head layout",
            "restore it with transformer.set_default_attn_processor() or capture before replacing it",
        )
        attn = blocks[0].attn2
        heads = int(attn.heads)
        head_dim = attn.to_q.out_features // heads
        kv_heads = attn.to_k.out_features // head_dim
        self.facts = AttentionFacts(
            n_layers=len(blocks), heads=heads, kv_heads=kv_heads, head_dim=head_dim, scale=1.0 / math.sqrt(head_dim)
        )
        vae = getattr(self.pipeline, "vae", None)
        sr = getattr(getattr(vae, "config", None), "sampling_rate", None) or DEFAULT_SAMPLE_RATE
        hop = getattr(vae, "hop_length", None) or DEFAULT_HOP
        self.sample_rate = int(sr)
        self.hop = int(hop)
        self.frame_rate = self.sample_rate / self.hop

    # -------------------------------------------------------------- modules
    def cross_attention(self, layer: int) -> nn.Module:
        return self.transformer.transformer_blocks[layer].attn2

    def query_key_modules(self, layer: int) -> tuple[nn.Module, nn.Module]:
        attn = self.cross_attention(layer)
        return attn.to_q, attn.to_k

    def query_of(self, output: torch.Tensor) -> torch.Tensor:
        """``to_q``'s output ``[B, 1 + T, H · D]`` -> the latent frames' queries ``[B, T, H, D]`` (a view: the
        prepended global token, position 0, is left out)."""
        B, n, _ = output.shape
        return output.view(B, n, self.facts.heads, self.facts.head_dim)[:, self.frame_slice]

    def key_of(self, output: torch.Tensor) -> torch.Tensor:
        """``to_k``'s output ``[B, S, KVH · D]`` -> ``[B, S, KVH, D]`` (a view)."""
        B, S, _ = output.shape
        return output.view(B, S, self.facts.kv_heads, self.facts.head_dim)

    # ---------------------------------------------------------------- calls
    def layout_recorder(self) -> StableAudioLayoutRecorder | None:
        return StableAudioLayoutRecorder(self.pipeline) if self.pipeline is not None else None

    def model_info(self) -> dict[str, Any]:
        cfg = getattr(self.transformer, "config", None)
        return {
            **super().model_info(),
            "sample_rate": self.sample_rate,
            "hop": self.hop,
            "sample_size": int(getattr(cfg, "sample_size", 0) or 0),
            "cross_attention_dim": int(getattr(cfg, "cross_attention_dim", 0) or 0),
        }
