"""Adapter for ACE-Step 1.5 in diffusers (``AceStepPipeline`` / ``AceStepTransformer1DModel``).

Facts used (diffusers 0.42.1):

- every block ``transformer.layers[i]`` has ``cross_attn`` (an ``AceStepAttention``) whose processor computes
  ``q = norm_q(to_q(x))`` ``[B, T, H, D]`` and ``k = norm_k(to_k(c))`` ``[B, S, KVH, D]`` and calls SDPA with
  ``scale = attn.scaling`` and GQA (query head ``h`` uses KV head ``h // (H // KVH)``). No RoPE, no mask.
- latents run at ``sample_rate / prod(vae downsampling)`` = 48000 / 1920 = 25 Hz; the DiT patchifies by
  ``patch_size`` = 2, so cross-attention queries are frames at 12.5 Hz (80 ms).
- the transformer's ``timestep`` argument carries the flow-matching time ``t`` of the step.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ...families import AdapterError, AttentionFacts, FamilyBase
from ..diffusers_blocks import bind
from .layout import ACE_STEP_SEGMENTS, LayoutRecorder

DEFAULT_LATENT_RATE = 25.0


def _is_transformer(obj: Any) -> bool:
    return type(obj).__name__ == "AceStepTransformer1DModel" or (
        isinstance(obj, nn.Module) and hasattr(obj, "layers") and hasattr(obj, "proj_in_conv")
    )


def _is_pipeline(obj: Any) -> bool:
    return hasattr(obj, "transformer") and hasattr(obj, "condition_encoder")


class AceStepAdapter(FamilyBase):
    """Adapter for a diffusers ``AceStepPipeline`` or a bare ``AceStepTransformer1DModel``."""

    name = "ace-step"
    describes = "a diffusers AceStepPipeline or AceStepTransformer1DModel"
    segments = ACE_STEP_SEGMENTS
    cfg_order = ("cond", "uncond")  # base models double the batch: conditional first, then the null condition
    encoder_arg = ("encoder_hidden_states", 3)

    @classmethod
    def accepts(cls, model: Any) -> bool:
        return _is_pipeline(model) or _is_transformer(model)

    def __init__(self, model: Any, latent_rate: float | None = None):
        bind(
            self,
            model,
            _is_pipeline,
            _is_transformer,
            "a diffusers AceStepPipeline or AceStepTransformer1DModel (searched for .transformer/.condition_encoder, "
            "or .layers[i].cross_attn with norm_q/norm_k)",
        )
        layers = getattr(self.transformer, "layers", None)
        if layers is None or len(layers) == 0:
            raise AdapterError(f"{type(self.transformer).__name__} has no .layers: found no transformer blocks")
        missing = [
            i
            for i, blk in enumerate(layers)
            if not all(hasattr(getattr(blk, "cross_attn", None), a) for a in ("norm_q", "norm_k", "to_v", "heads"))
        ]
        if missing:
            raise AdapterError(
                f"{type(self.transformer).__name__} has no cross-attention in layer(s) {missing}: searched "
                "layers[i].cross_attn with norm_q, norm_k, to_v and heads"
            )
        ca = layers[0].cross_attn
        self.facts = AttentionFacts(
            n_layers=len(layers),
            heads=int(ca.heads),
            kv_heads=int(ca.kv_heads),
            head_dim=int(ca.head_dim),
            scale=float(ca.scaling),
        )
        self.patch_size = int(getattr(self.transformer.config, "patch_size", 2))
        if latent_rate is None:
            latent_rate = float(
                getattr(self.pipeline, "latents_per_second", DEFAULT_LATENT_RATE) or DEFAULT_LATENT_RATE
            )
        self.latent_rate = float(latent_rate)
        self.frame_rate = self.latent_rate / self.patch_size

    # -------------------------------------------------------------- modules
    def cross_attention(self, layer: int) -> nn.Module:
        return self.transformer.layers[layer].cross_attn

    def query_key_modules(self, layer: int) -> tuple[nn.Module, nn.Module]:
        ca = self.cross_attention(layer)
        return ca.norm_q, ca.norm_k

    def layout_recorder(self) -> LayoutRecorder | None:
        return LayoutRecorder(self.pipeline) if self.pipeline is not None else None

    def model_info(self) -> dict[str, Any]:
        cfg = getattr(self.transformer, "config", {})
        return {
            **super().model_info(),
            "patch_size": self.patch_size,
            "latent_rate": self.latent_rate,
            "is_turbo": bool(getattr(cfg, "is_turbo", False)) if cfg else False,
            "hidden_size": int(getattr(cfg, "hidden_size", 0) or 0) if cfg else 0,
        }


def frames_to_seconds(n_frames: int, frame_rate: float) -> float:
    return n_frames / frame_rate


def dit_frames(audio_seconds: float, latent_rate: float = DEFAULT_LATENT_RATE, patch_size: int = 2) -> int:
    """Number of cross-attention frames for a clip: ``ceil(ceil(s * latent_rate) / patch_size)``."""
    return math.ceil(math.ceil(audio_seconds * latent_rate) / patch_size)
