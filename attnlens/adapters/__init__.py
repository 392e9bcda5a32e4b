"""Model adapters: where a model family keeps its cross-attention, and what its keys are."""

from __future__ import annotations

from typing import Any

from .acestep import AceStepAdapter
from .base import Adapter, AdapterError, AttentionFacts

__all__ = ["Adapter", "AdapterError", "AttentionFacts", "AceStepAdapter", "adapter_for"]


def adapter_for(model: Any) -> AceStepAdapter:
    """The adapter that knows ``model`` (an ``AceStepPipeline`` or ``AceStepTransformer1DModel``)."""
    if isinstance(model, AceStepAdapter):
        return model
    return AceStepAdapter(model)
