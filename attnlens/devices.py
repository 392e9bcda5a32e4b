"""Moving small host tensors to the model's device without making the host wait."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def upload(x: torch.Tensor, device: Any) -> torch.Tensor:
    """``x`` on ``device``. A CPU tensor bound for CUDA goes through pinned memory with a non-blocking copy: a plain
    ``.to("cuda")`` from ordinary (pageable) memory synchronizes the stream, which in a loop bound by kernel
    launches costs the host its lead over the GPU. PyTorch keeps the pinned staging memory until the copy is done.
    Elsewhere this is ``x.to(device)``."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


class TableArena:
    """Small int64 tables for kernel launches (the layers' offsets), on ``device`` without a synchronization and
    without an allocation per table.

    :meth:`put` writes the values into a pinned host slab and issues one non-blocking copy of that stretch to the
    same place in a device slab; the device stretch is returned. Every place of a slab is written once, so a write
    never touches host memory that a pending copy still reads; a full slab is replaced by a new pair (PyTorch frees
    the old host slab once its copies are done, and the old device slab in the order of the stream it was allocated
    on). A table equal to one already in the current slab is not written again: its stretch is returned (a
    capture's tables repeat from step to step, because the caching allocator gives the layers' tensors the same
    places every step); ``uploads`` counts the copies issued. Use one arena per stream: the tables and the kernels
    that read them must run on the stream that was current when the arena's slab was allocated (as a capture's
    do); a table returned again was copied on that stream, so only its kernels are ordered after the copy. Tables
    start at multiples of 16 bytes. On a device other than CUDA, ``put`` is a plain ``torch.tensor(values,
    device=device)``.
    """

    def __init__(self, device: Any, size: int = 4096):
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.size = int(size)
        self._pos = self.size  # no slab yet: the first put allocates
        self._host: torch.Tensor | None = None
        self._host_np: Any = None
        self._dev: torch.Tensor | None = None
        self._known: dict[tuple[int, ...], torch.Tensor] = {}  # tables in the current slab
        self.uploads = 0

    def put(self, values: Sequence[int]) -> torch.Tensor:
        """``values`` as an int64 tensor ``[len(values)]`` on the device (the copy is queued, not waited for)."""
        n = len(values)
        if self.device.type != "cuda" or n == 0:
            return torch.tensor(values, dtype=torch.int64, device=self.device)
        key = tuple(values)
        known = self._known.get(key)
        if known is not None:
            return known
        span = n + (n & 1)  # keep the next table 16-byte aligned
        if self._pos + span > self.size:
            size = max(self.size, span)
            self._host = torch.empty(size, dtype=torch.int64, pin_memory=True)
            self._host_np = self._host.numpy()
            self._dev = torch.empty(size, dtype=torch.int64, device=self.device)
            self._pos = 0
            self._known = {}
        p = self._pos
        self._host_np[p : p + n] = values
        out = self._dev[p : p + span]
        out.copy_(self._host[p : p + span], non_blocking=True)
        self._pos = p + span
        self.uploads += 1
        out = out[:n] if span != n else out
        self._known[key] = out
        return out
