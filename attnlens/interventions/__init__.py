"""Interventions: act on cross-attention heads (ablate, steer, patch) while a model runs; a consumer of the family
seam and the taps, like the capture."""

from .intervene import MODES, HeadAction, Intervention, InterventionError, intervene

__all__ = ["MODES", "HeadAction", "Intervention", "InterventionError", "intervene"]
