"""Which layout item and which label each row of a transformer call's batch has (pure functions, no hooks).

A pipeline runs its transformer on one row per prompt, or, under classifier-free guidance, on a batch doubled with
the null (or negative) condition; the family says in which order the halves come (``cfg_order``: ACE-Step puts the
conditional half first, Stable Audio the unconditional one). A layout recorder may also give one item and one
label per row itself (when the halves' keys differ, e.g. a negative prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..segments import Segments
from .layout import ItemLayout, Layout


class BatchLayoutError(ValueError):
    """The layout does not fit the transformer call (batch size or key count)."""


@dataclass(frozen=True)
class BatchLayout:
    """The layout of every row of one transformer call, and the rows' labels (``"cond:0"``, ``"uncond:0"``, ...)."""

    layout: Layout
    labels: list[str]
    known: bool


def batch_layout(
    layout: Layout | None,
    batch: int,
    n_keys: int | None,
    vocabulary: Segments,
    cfg_order: tuple[str, str] = ("cond", "uncond"),
    labels: list[str] | None = None,
    from_user: bool = False,
) -> BatchLayout:
    """Match ``layout`` to a call of ``batch`` rows with ``n_keys`` keys.

    - no layout: every row unknown (``vocabulary``'s names, keys ``"unknown"``), labelled ``cond:i``;
    - one item per row: as given (``labels`` from the recorder when it has them, else ``cond:i``);
    - one item given by the user: repeated on every row;
    - half as many items as rows: the batch is doubled for guidance, halves in ``cfg_order``.
    Raises :class:`BatchLayoutError` when nothing fits or an item's key count differs from ``n_keys``.
    """
    if layout is None:
        items = [ItemLayout.unknown(n_keys or 0, vocabulary) for _ in range(batch)]
        return BatchLayout(Layout(items=items, source="unknown"), [f"cond:{i}" for i in range(batch)], False)
    n = len(layout)
    if n == batch:
        items = list(layout.items)
        out_labels = list(labels) if labels is not None and len(labels) == batch else [f"cond:{i}" for i in range(n)]
    elif n == 1 and from_user:
        items = layout.items * batch
        out_labels = [f"cond:{i}" for i in range(batch)]
    elif 2 * n == batch:
        items = layout.items + layout.items
        first, second = cfg_order
        out_labels = [f"{first}:{i}" for i in range(n)] + [f"{second}:{i}" for i in range(n)]
    else:
        raise BatchLayoutError(f"the transformer batch is {batch} but the layout describes {n} item(s)")
    for b, it in enumerate(items):
        if n_keys is not None and it.n_keys != n_keys:
            raise BatchLayoutError(
                f"layout of batch item {b} has {it.n_keys} keys but the transformer got {n_keys} encoder positions"
            )
    if layout.vocabulary != vocabulary and layout.known:
        raise BatchLayoutError(
            f"the layout's segments {layout.vocabulary.names} are not the model family's {vocabulary.names}"
        )
    full = layout if items == layout.items else Layout(items=items, source=layout.source)
    return BatchLayout(full, out_labels, True)


def recorded_rows(recorder: Any, batch: int, args: tuple, kwargs: dict) -> tuple[Layout | None, list[str] | None]:
    """What a family's layout recorder saw: ``recorder.rows(batch, args, kwargs)`` (a layout and a label per row)
    when it has that method, else ``recorder.layout`` (labels from the batch size and the family's CFG order)."""
    rows = getattr(recorder, "rows", None)
    if rows is None:
        return recorder.layout, None
    got = rows(batch, args, kwargs)
    return (None, None) if got is None else got


@dataclass(frozen=True)
class CallKeys:
    """What one transformer call says about its keys: batch size, key count, key mask, and the layout — the user's,
    or what the family's recorder saw (with a label per row when it gives them)."""

    batch: int
    n_keys: int | None
    mask: Any
    layout: Layout | None
    labels: list[str] | None
    from_user: bool

    @property
    def key(self) -> tuple:
        """Equal for calls whose rows, layout and mask are the same objects (their device tables can be reused)."""
        m = self.mask
        return (id(self.layout), self.batch, self.n_keys, None if m is None else (id(m), m._version))

    def rows(self, vocabulary: Segments, cfg_order: tuple[str, str]) -> BatchLayout:
        """:func:`batch_layout` of this call."""
        return batch_layout(
            self.layout, self.batch, self.n_keys, vocabulary, cfg_order, self.labels, from_user=self.from_user
        )


def call_keys(family: Any, recorder: Any, user_layout: Layout | None, args: tuple, kwargs: dict) -> CallKeys:
    """Read a transformer call's keys through its ``family`` (batch, key count, mask) and its layout: ``user_layout``,
    else what ``recorder`` recorded (:func:`recorded_rows`)."""
    B = family.batch_of_call(args, kwargs)
    layout, labels = user_layout, None
    if layout is None and recorder is not None:
        layout, labels = recorded_rows(recorder, B, args, kwargs)
    return CallKeys(
        batch=B,
        n_keys=family.encoder_length_of_call(args, kwargs),
        mask=family.key_mask_of_call(args, kwargs),
        layout=layout,
        labels=labels,
        from_user=user_layout is not None,
    )
