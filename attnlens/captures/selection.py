"""What a capture was asked to keep: layer, head and step selections, and a user's layout (pure functions)."""

from __future__ import annotations

from typing import Any

from .layout import ItemLayout, Layout


class CaptureError(RuntimeError):
    """The capture cannot go on (a second generation in one capture, a layout that does not fit, ...)."""


def normalize_selection(name: str, values: Any, n: int | None) -> list[int] | None:
    """``values`` (``None``, an int or ints; negative ones count from the end of ``n``) as a list of distinct
    indices in ``0 .. n - 1`` (``None`` stays ``None``: all). Errors name ``name`` and the valid range."""
    if values is None:
        return None
    if isinstance(values, int):
        values = [values]
    try:
        vals = [int(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be None, an int or a list of ints; got {values!r}") from None
    if not vals:
        raise ValueError(f"{name} is empty: pass None for all, or at least one index")
    if len(set(vals)) != len(vals):
        raise ValueError(f"{name} has duplicates: {vals}")
    if n is not None:
        bad = [v for v in vals if not -n <= v < n]
        if bad:
            raise IndexError(f"{name} {bad} out of range: the model has {n} (valid: 0..{n - 1} or {-n}..-1)")
        vals = [v % n for v in vals]
    return vals


def as_layout(layout: Any) -> Layout | None:
    """A user's ``layout=`` argument as a :class:`Layout` (an item or a list of items is wrapped)."""
    if layout is None or isinstance(layout, Layout):
        return layout
    if isinstance(layout, ItemLayout):
        return Layout(items=[layout], source="user")
    if isinstance(layout, (list, tuple)) and all(isinstance(x, ItemLayout) for x in layout):
        return Layout(items=list(layout), source="user")
    raise TypeError(f"layout must be a Layout, an ItemLayout or a list of ItemLayout; got {type(layout).__name__}")
