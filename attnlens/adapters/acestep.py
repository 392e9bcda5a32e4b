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

from .base import AdapterError, AttentionFacts

DEFAULT_LATENT_RATE = 25.0


def _is_transformer(obj: Any) -> bool:
    return type(obj).__name__ == "AceStepTransformer1DModel" or (
        isinstance(obj, nn.Module) and hasattr(obj, "layers") and hasattr(obj, "proj_in_conv")
    )


def _is_pipeline(obj: Any) -> bool:
    return hasattr(obj, "transformer") and hasattr(obj, "condition_encoder")


class AceStepAdapter:
    """Adapter for a diffusers ``AceStepPipeline`` or a bare ``AceStepTransformer1DModel``."""

    name = "ace-step"

    def __init__(self, model: Any, latent_rate: float | None = None):
        if _is_pipeline(model):
            self.pipeline = model
            self.transformer = model.transformer
        elif _is_transformer(model):
            self.pipeline = None
            self.transformer = model
        else:
            raise AdapterError(
                f"attnlens cannot capture a {type(model).__module__}.{type(model).__name__}: expected a diffusers "
                "AceStepPipeline or AceStepTransformer1DModel (searched for .transformer/.condition_encoder, or "
                ".layers[i].cross_attn with norm_q/norm_k)"
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
        if self.facts.heads % self.facts.kv_heads:
            raise AdapterError(f"query heads {self.facts.heads} not a multiple of KV heads {self.facts.kv_heads}")
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

    def value_module(self, layer: int) -> nn.Module:
        return self.cross_attention(layer).to_v

    # ---------------------------------------------------------------- calls
    def timestep_of_call(self, args: tuple, kwargs: dict) -> Any:
        """The call's ``t``: a float, or a 0-d tensor left on its device (reading it would synchronize a GPU): a copy,
        since a loop may refill one timestep tensor in place from step to step."""
        t = kwargs.get("timestep")
        if t is None and len(args) > 1:
            t = args[1]
        if t is None:
            raise ValueError("transformer call without a `timestep` argument: cannot tell which step this is")
        if hasattr(t, "reshape"):
            t = t.detach().reshape(-1)[0]
            return float(t) if t.device.type == "cpu" else t.clone()
        return float(t)

    def encoder_length_of_call(self, args: tuple, kwargs: dict) -> int | None:
        ehs = kwargs.get("encoder_hidden_states")
        if ehs is None and len(args) > 3:
            ehs = args[3]
        return None if ehs is None else int(ehs.shape[1])

    def batch_of_call(self, args: tuple, kwargs: dict) -> int:
        hs = kwargs.get("hidden_states", args[0] if args else None)
        return int(hs.shape[0])

    def model_info(self) -> dict[str, Any]:
        f = self.facts
        cfg = getattr(self.transformer, "config", {})
        return {
            "class": type(self.transformer).__name__,
            "adapter": self.name,
            "layers": f.n_layers,
            "heads": f.heads,
            "kv_heads": f.kv_heads,
            "head_dim": f.head_dim,
            "scale": f.scale,
            "patch_size": self.patch_size,
            "latent_rate": self.latent_rate,
            "frame_rate": self.frame_rate,
            "is_turbo": bool(getattr(cfg, "is_turbo", False)) if cfg else False,
            "hidden_size": int(getattr(cfg, "hidden_size", 0) or 0) if cfg else 0,
        }


def frames_to_seconds(n_frames: int, frame_rate: float) -> float:
    return n_frames / frame_rate


def dit_frames(audio_seconds: float, latent_rate: float = DEFAULT_LATENT_RATE, patch_size: int = 2) -> int:
    """Number of cross-attention frames for a clip: ``ceil(ceil(s * latent_rate) / patch_size)``."""
    return math.ceil(math.ceil(audio_seconds * latent_rate) / patch_size)
