"""Adapter for PixArt in diffusers (``PixArtSigmaPipeline`` / ``PixArtAlphaPipeline`` / ``PixArtTransformer2DModel``).

Facts used (diffusers 0.42.1, ``PixArtTransformer2DModel``, ``BasicTransformerBlock``, ``AttnProcessor2_0``):

- every block ``transformer.transformer_blocks[i]`` is a ``BasicTransformerBlock`` whose ``attn2`` is the
  cross-attention from the image patches to the (projected) T5 tokens; its processor projects ``q = to_q(x)``
  ``[B, N, H · D]`` and ``k = to_k(c)`` ``[B, S, H · D]`` (as many KV heads as query heads), has no q/k norms (the
  block builds ``attn2`` without ``qk_norm``) and no RoPE, and calls SDPA with its **default** scale ``1/√D``
  (``AttnProcessor2_0`` ignores ``attn.scale``; ``AttnProcessor``, which ``set_default_attn_processor`` installs,
  uses ``attn.scale``, the same ``1/√D``);
- the transformer turns ``encoder_attention_mask`` ``[B, S]`` (1 keep, 0 discard) into an additive bias
  ``(1 − mask) · −10000`` ``[B, 1, S]`` and the block hands it to ``attn2``; a 3-D mask is taken as that bias
  already. ``exp(−10000 + …)`` underflows to exactly 0 in every float type (the logits of a row would have to
  span more than ~9900 for it not to), so a discarded key's probability is exactly 0: the family reports the mask
  as booleans (True: attend);
- the queries are the latent's ``patch_size × patch_size`` patches in row-major order (``PatchEmbed`` flattens
  ``[B, C, h, w]``): ``rows = height // patch_size``, ``cols = width // patch_size``
  (:meth:`PixArtAdapter.query_grid`); there is no time axis, so ``frame_rate`` is 1.0 and a "frame" is a patch;
- the pipeline calls ``transformer(latents, encoder_hidden_states=…, encoder_attention_mask=…, timestep=…)``; under
  classifier-free guidance the negative (unconditional) half comes first.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...families import AdapterError, AttentionFacts, FamilyBase
from ..diffusers_blocks import attn2_blocks, bind
from .layout import PIXART_SEGMENTS, PixArtLayoutRecorder

PROCESSORS = ("AttnProcessor2_0", "AttnProcessor")
IMAGE_FRAME_RATE = 1.0
"""PixArt's queries tile an image, not time: one "frame" per patch, at a nominal 1 per second."""
MASKS_KEPT = 4
"""Masks converted lately, kept alive with their booleans (see ``key_mask_of_call``)."""
DROP_BIAS = -9900.0
"""A bias at or below this discards a key: −10000 as any float type holds it (bf16 rounds it to −9984), or −inf."""


def _is_transformer(obj: Any) -> bool:
    return isinstance(obj, nn.Module) and any(c.__name__ == "PixArtTransformer2DModel" for c in type(obj).__mro__)


def _is_pipeline(obj: Any) -> bool:
    return (
        _is_transformer(getattr(obj, "transformer", None))
        and hasattr(obj, "text_encoder")
        and hasattr(obj, "tokenizer")
    )


class PixArtAdapter(FamilyBase):
    """Adapter for a diffusers PixArt-Σ / PixArt-α pipeline or a bare ``PixArtTransformer2DModel``."""

    name = "pixart"
    describes = "a diffusers PixArtSigmaPipeline, PixArtAlphaPipeline or PixArtTransformer2DModel"
    segments = PIXART_SEGMENTS
    cfg_order = ("uncond", "cond")  # the pipeline concatenates the negative prompt's rows first
    timestep_arg = ("timestep", 2)
    encoder_arg = ("encoder_hidden_states", 1)
    mask_arg = ("encoder_attention_mask", 6)

    @classmethod
    def accepts(cls, model: Any) -> bool:
        return _is_pipeline(model) or _is_transformer(model)

    def __init__(self, model: Any):
        bind(self, model, _is_pipeline, _is_transformer, f"{self.describes} (with .transformer_blocks[i].attn2)")
        blocks = attn2_blocks(
            self.transformer,
            PROCESSORS,
            "its to_q / to_k, scale and mask; fused projections bypass to_k",
            "unfuse them (transformer.unfuse_qkv_projections()) or restore the processor "
            "(transformer.set_default_attn_processor()), or capture before replacing it",
        )
        for i, blk in enumerate(blocks):
            if blk.attn2.norm_q is not None or blk.attn2.norm_k is not None:
                raise AdapterError(f"block {i}'s attn2 normalizes q/k after to_q/to_k: not PixArt's cross-attention")
        attn = blocks[0].attn2
        heads = int(attn.heads)
        head_dim = attn.to_k.out_features // heads
        if attn.to_q.out_features != heads * head_dim:
            raise AdapterError(f"attn2's to_q has {attn.to_q.out_features} features; expected {heads} x {head_dim}")
        scale = 1.0 / math.sqrt(head_dim)
        if type(attn.processor).__name__ == "AttnProcessor" and not math.isclose(float(attn.scale), scale):
            raise AdapterError(f"attn2.scale is {attn.scale}, not 1/sqrt({head_dim}): not PixArt's cross-attention")
        self.facts = AttentionFacts(n_layers=len(blocks), heads=heads, kv_heads=heads, head_dim=head_dim, scale=scale)
        self.patch_size = int(self.transformer.config.patch_size)
        self.frame_rate = IMAGE_FRAME_RATE
        # (the call's mask, its version, its booleans) of the last calls: the booleans stay alive, so a capture that
        # tells masks apart by identity never sees a new one at the address of a freed one
        self._masks_seen: list[tuple[Any, int, torch.Tensor]] = []

    # -------------------------------------------------------------- modules
    def cross_attention(self, layer: int) -> nn.Module:
        return self.transformer.transformer_blocks[layer].attn2

    def query_key_modules(self, layer: int) -> tuple[nn.Module, nn.Module]:
        attn = self.cross_attention(layer)
        return attn.to_q, attn.to_k

    def query_of(self, output: torch.Tensor) -> torch.Tensor:
        """``to_q``'s output ``[B, N, H · D]`` -> ``[B, N, H, D]`` (a view; ``N = rows · cols`` patches)."""
        B, n, _ = output.shape
        return output.view(B, n, self.facts.heads, self.facts.head_dim)

    def key_of(self, output: torch.Tensor) -> torch.Tensor:
        """``to_k``'s output ``[B, S, H · D]`` -> ``[B, S, H, D]`` (a view)."""
        B, S, _ = output.shape
        return output.view(B, S, self.facts.kv_heads, self.facts.head_dim)

    # ---------------------------------------------------------------- calls
    def query_grid(self, args: tuple, kwargs: dict) -> tuple[int, int] | None:
        """``(rows, cols)`` of the call's patches: the latent's height and width over ``patch_size``."""
        hs = kwargs.get("hidden_states", args[0] if args else None)
        if hs is None or hs.ndim != 4:
            return None
        return int(hs.shape[-2]) // self.patch_size, int(hs.shape[-1]) // self.patch_size

    def key_mask_of_call(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The call's ``encoder_attention_mask`` as booleans ``[B, S]`` (True: attend): a 2-D mask of 1 and 0 (what
        the pipeline passes), or a 3-D bias ``[B, 1, S]`` of 0 and −10000 (or −inf). Other values (a soft bias)
        are refused: a capture records keys that are kept or dropped. Read once per mask tensor."""
        mask = super().key_mask_of_call(args, kwargs)
        if mask is None:
            return None
        for src, version, valid in self._masks_seen:
            if src is mask and version == mask._version:
                return valid
        valid = boolean_key_mask(mask)
        self._masks_seen = [*self._masks_seen, (mask, mask._version, valid)][-MASKS_KEPT:]
        return valid

    def layout_recorder(self) -> PixArtLayoutRecorder | None:
        return PixArtLayoutRecorder(self.pipeline) if self.pipeline is not None else None

    def model_info(self) -> dict[str, Any]:
        cfg = self.transformer.config
        info = {
            **super().model_info(),
            "patch_size": self.patch_size,
            "sample_size": int(getattr(cfg, "sample_size", 0) or 0),
            "caption_channels": int(getattr(cfg, "caption_channels", 0) or 0),
        }
        vsf = getattr(self.pipeline, "vae_scale_factor", None)
        if vsf is not None:
            info["vae_scale_factor"] = int(vsf)  # image pixels per latent pixel
        return info


def boolean_key_mask(mask: torch.Tensor) -> torch.Tensor:
    """PixArt's ``encoder_attention_mask`` as booleans ``[B, S]`` (True: the key is in the softmax).

    ``[B, S]``: the transformer adds ``(1 − mask) · −10000``, so 1 keeps a key and 0 drops it (booleans as 1/0);
    ``[B, 1, S]``: the bias itself, 0 keeps and −10000 (or −inf) drops. Any other value, or a row that drops every
    key (its softmax would then be uniform, not empty), raises ``ValueError``."""
    if mask.ndim == 3 and mask.shape[1] == 1:
        bias = mask[:, 0].float()
        keep, drop = bias == 0, bias <= DROP_BIAS
        what = "bias (0 keeps a key, -10000 drops it)"
    elif mask.ndim == 2:
        m = mask.float()
        keep, drop = m == 1, m == 0
        what = "mask (1 keeps a key, 0 drops it)"
    else:
        raise ValueError(
            f"encoder_attention_mask of shape {tuple(mask.shape)}; expected [batch, keys] or [batch, 1, keys]"
        )
    if not bool((keep | drop).all()):
        raise ValueError(
            f"PixArt's encoder_attention_mask holds values other than a {what}: a soft bias, which a capture (keys "
            "kept or dropped) cannot record"
        )
    if not bool(keep.any(dim=-1).all()):
        raise ValueError("a row of encoder_attention_mask drops every key (the model's softmax is then uniform)")
    return keep
