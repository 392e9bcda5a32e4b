"""Model families: one subpackage per family, each the only place that knows its model.

- :mod:`attnlens.adapters.acestep`: ACE-Step 1.5 (``AceStepPipeline`` / ``AceStepTransformer1DModel``).
- :mod:`attnlens.adapters.stable_audio`: Stable Audio (``StableAudioPipeline`` / ``StableAudioDiTModel``).
- :mod:`attnlens.adapters.pixart`: PixArt-Σ / PixArt-α (``PixArtSigmaPipeline``, ``PixArtAlphaPipeline`` /
  ``PixArtTransformer2DModel``).

The seam they implement, and the registry, are in :mod:`attnlens.families`; ``register`` adds a user's own family.
"""

from __future__ import annotations

from typing import Any

from ..families import (
    AdapterError,
    AttentionFacts,
    Family,
    FamilyBase,
    register,
    registered,
    resolve,
    unregister,
)
from .acestep import AceStepAdapter
from .pixart import PixArtAdapter
from .stable_audio import StableAudioAdapter

Adapter = Family  # the name the first version used

__all__ = [
    "Adapter",
    "AdapterError",
    "AttentionFacts",
    "AceStepAdapter",
    "Family",
    "FamilyBase",
    "PixArtAdapter",
    "StableAudioAdapter",
    "adapter_for",
    "register",
    "registered",
    "resolve",
    "unregister",
]


def adapter_for(model: Any, adapter: Any = None) -> Any:
    """The family instance that knows ``model`` (a pipeline or a bare transformer); see
    :func:`attnlens.families.resolve`."""
    return resolve(model, adapter)
