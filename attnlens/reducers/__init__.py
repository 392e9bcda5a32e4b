"""Reducers: turn attention probabilities into what is kept (per-frame statistics, maps, differentiable stats)."""

from .stats import frame_stats_from_logits, probabilities, reduce_reference

__all__ = ["frame_stats_from_logits", "probabilities", "reduce_reference"]
