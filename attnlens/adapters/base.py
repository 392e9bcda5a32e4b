"""The adapter interface: everything the capture core needs to know about one model family.

The core never hard-codes a model: it asks an adapter where the cross-attention modules are, which submodules
emit the post-norm query and key exactly as the attention kernel sees them, the head structure, how the
diffusion step is read from a transformer call, and how frames map to seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import nn


@dataclass(frozen=True)
class AttentionFacts:
    """Head structure of a model's cross-attention."""

    n_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    scale: float

    @property
    def group(self) -> int:
        """Query heads per KV head: query head ``h`` reads KV head ``h // group``."""
        return self.heads // self.kv_heads


@runtime_checkable
class Adapter(Protocol):
    """What the capture core asks of a model family."""

    name: str
    transformer: nn.Module
    """the denoiser whose forward call is one diffusion step."""
    pipeline: Any | None
    facts: AttentionFacts
    frame_rate: float
    """cross-attention query frames per second."""

    def cross_attention(self, layer: int) -> nn.Module:
        """The cross-attention module of ``layer``."""

    def query_key_modules(self, layer: int) -> tuple[nn.Module, nn.Module]:
        """Modules whose forward outputs are the post-norm query ``[B, T, H, D]`` and key ``[B, S, KVH, D]``."""

    def value_module(self, layer: int) -> nn.Module:
        """Module whose forward output is the value projection ``[B, S, KVH * D]``."""

    def timestep_of_call(self, args: tuple, kwargs: dict) -> Any:
        """The diffusion time ``t`` of one transformer call (a float, or a 0-d device tensor read later)."""

    def model_info(self) -> dict[str, Any]:
        """Facts recorded in a capture (class, sizes, rates)."""


class AdapterError(TypeError):
    """The model is not one an adapter knows."""
