"""Taps: PyTorch hooks that observe a model without changing it."""

from .hooks import HookSet, attnlens_hooks

__all__ = ["HookSet", "attnlens_hooks"]
