"""One kernel launch over several layers' tensors, read in place: a table of offsets from a base tensor.

The fused kernels take layer ``l``'s tensor at ``base + table[l] · 16`` elements (grid axis 2 = layer). Counting in
units of 16 elements tells the compiler that every layer's pointer keeps the base's alignment, so loads stay
vectorized. The layers' tensors are never copied; the caller keeps them alive until the kernels have run.
"""

from __future__ import annotations

import torch

from ..devices import upload

UNIT = 16  # elements per offset unit


def layer_table(xs: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(base, table)`` for a launch over ``xs`` (one shape, dtype and set of strides): layer ``l`` starts
    ``table[l] · 16`` elements after ``base`` (``table``: int64 ``[L]`` on ``base``'s device, copied without
    waiting; ``None`` for a single tensor).

    When a tensor's distance from ``xs[0]`` is not a multiple of 16 elements, or shapes or strides differ, the
    layers are stacked into one new contiguous block instead (``base`` is then a view of it and keeps it alive).
    Tensors on different devices are an error (``ValueError``).
    """
    base = xs[0]
    if len(xs) == 1:
        return base, None
    devices = {x.device for x in xs}
    if len(devices) > 1:  # addresses on different devices do not share one address space
        raise ValueError(f"one launch over several layers needs them on one device; got {sorted(map(str, devices))}")
    unit = UNIT * base.element_size()
    offs: list[int] | None = []
    for x in xs:
        d = x.data_ptr() - base.data_ptr()
        if x.shape != base.shape or x.stride() != base.stride() or x.dtype != base.dtype or d % unit:
            offs = None
            break
        offs.append(d // unit)
    if offs is None:  # layer l at l · numel, a multiple of 16 when the last dim is (head_dim >= 16)
        block = torch.stack([x.contiguous() for x in xs])
        base = block[0]
        if base.numel() % UNIT:
            raise ValueError(f"cannot lay out layers of {base.numel()} elements in units of {UNIT}")
        offs = [i * (base.numel() // UNIT) for i in range(len(xs))]
    return base, upload(torch.tensor(offs, dtype=torch.int64), base.device)
