"""One kernel launch over several layers' tensors, read in place: a table of offsets from a base tensor.

The fused kernels take layer ``l``'s tensor at ``base + table[l] · 16`` elements (grid axis 2 = layer). Counting in
units of 16 elements tells the compiler that every layer's pointer keeps the base's alignment, so loads stay
vectorized. The layers' tensors are never copied; the caller keeps them alive until the kernels have run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..devices import TableArena, upload

UNIT = 16  # elements per offset unit


def layer_offsets(xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """``(base, offsets)`` on the host: layer ``l`` starts ``offsets[l] · 16`` elements after ``base``.

    When a tensor's distance from ``xs[0]`` is not a multiple of 16 elements, or shapes, strides or dtypes differ,
    the layers are stacked into one new contiguous block instead (``base`` is then a view of it and keeps it
    alive). Tensors on different devices are an error (``ValueError``).
    """
    base = xs[0]
    dev, shape, stride, dtype = base.device, base.shape, base.stride(), base.dtype
    unit = UNIT * base.element_size()
    b0 = base.data_ptr()
    offsets: list[int] = []
    for x in xs:  # one pass (this runs for every launch, inside a loop bound by the host)
        d = x.data_ptr() - b0
        if d % unit or x.shape != shape or x.stride() != stride or x.dtype != dtype or x.device != dev:
            break
        offsets.append(d // unit)
    else:
        return base, offsets
    if any(x.device != dev for x in xs):  # addresses on different devices do not share one address space
        devices = sorted({str(x.device) for x in xs})
        raise ValueError(f"one launch over several layers needs them on one device; got {devices}")
    # layer l at l · numel, a multiple of 16 when the last dim is (head_dim >= 16)
    block = torch.stack([x.contiguous() for x in xs])
    base = block[0]
    if base.numel() % UNIT:
        raise ValueError(f"cannot lay out layers of {base.numel()} elements in units of {UNIT}")
    return base, [i * (base.numel() // UNIT) for i in range(len(xs))]


def layer_tables(
    groups: Sequence[Sequence[torch.Tensor]], arena: TableArena | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """``(bases, tables)`` for several groups of layers (e.g. the queries and the keys of one launch), uploaded
    together: one copy to the device for all of them (through ``arena`` when given, which allocates nothing per
    call). A group of one tensor gets no table (``None``). See :func:`layer_offsets`."""
    bases: list[torch.Tensor] = []
    flat: list[int] = []
    spans: list[tuple[int, int] | None] = []
    for xs in groups:
        base, offs = layer_offsets(xs)
        bases.append(base)
        if len(xs) == 1:
            spans.append(None)
            continue
        spans.append((len(flat), len(offs)))
        flat += offs
        if len(flat) & 1:  # every table starts 16-byte aligned
            flat.append(0)
    if not flat:
        return bases, [None] * len(groups)
    dev = bases[0].device
    if any(b.device != dev for b in bases):
        raise ValueError(
            f"one launch needs all its tensors on one device; got {sorted({str(b.device) for b in bases})}"
        )
    if arena is not None and arena.device == dev:
        tab = arena.put(flat)
    else:  # no arena, or one for another device
        tab = upload(torch.tensor(flat, dtype=torch.int64), dev)
    return bases, [None if s is None else tab[s[0] : s[0] + s[1]] for s in spans]


def layer_table(
    xs: Sequence[torch.Tensor], arena: TableArena | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(base, table)`` for a launch over ``xs`` (one shape, dtype and set of strides): layer ``l`` starts
    ``table[l] · 16`` elements after ``base`` (``table``: int64 ``[L]`` on ``base``'s device, copied without
    waiting; ``None`` for a single tensor). See :func:`layer_offsets` for the stacked fallback."""
    bases, tables = layer_tables([xs], arena)
    return bases[0], tables[0]
