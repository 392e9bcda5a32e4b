"""Where a capture's results land on the host: pinned blocks with a slot per step, filled by copies that do not
wait, on a side stream that overlaps the model's next kernels."""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch


class HostBlock:
    """One CPU tensor (pinned when the source is on CUDA) with a slot for every expected step: :meth:`put` copies
    into slots without waiting, so nothing is allocated per step and nothing is stacked at the end. A slot past
    the expected steps (an extra transformer call) gets its own copy instead."""

    def __init__(self, n_steps: int | None, inner: tuple[int, ...] = ()):
        self.n_steps = n_steps
        self.inner = inner  # dims between the step and the tensor's own, e.g. (n_layers,)
        self.block: torch.Tensor | None = None
        self.written: set[tuple[int, ...]] = set()

    def put(self, index: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        """Copy ``x`` into slot ``index`` (``(step, *inner)``); returns the CPU tensor that holds it."""
        return self.put_run(index, x.unsqueeze(0))[0]

    def put_run(self, index: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        """Copy ``x`` ``[L, ...]`` into the ``L`` slots that start at ``index`` (``(step, *inner)``) and run along its
        last position, in one copy; returns the CPU tensor ``[L, ...]`` that holds it."""
        if self.block is None and self.n_steps:
            shape = (self.n_steps, *self.inner, *x.shape[1:])
            self.block = torch.empty(shape, dtype=x.dtype, pin_memory=x.device.type == "cuda")
        *head, first = index
        steps_end = first + x.shape[0] if not head else index[0] + 1
        if self.block is None or steps_end > self.n_steps:
            return to_cpu(x)
        slot = self.block[(*head, slice(first, first + x.shape[0]))]
        slot.copy_(x, non_blocking=True)
        self.written.update((*head, first + i) for i in range(x.shape[0]))
        return slot

    def complete(self, n_steps: int) -> torch.Tensor | None:
        """The whole block when exactly ``n_steps`` steps ran and every slot was written, else ``None``."""
        n_slots = n_steps * math.prod(self.inner)
        if self.block is None or self.block.shape[0] != n_steps or len(self.written) != n_slots:
            return None
        return self.block


class HostCopies:
    """Copies to the host on a CUDA side stream, and a bound on the device memory they hold.

    :meth:`side_stream`: copies issued inside run on a side stream: they wait for the kernels that wrote their
    sources and then overlap the model's next kernels instead of queueing in front of them; the sources are marked
    as used by that stream, so their memory is not reused before the copies finish. Elsewhere nothing changes.
    :meth:`bound`: device tensors stay allocated until their copy is done; those in flight are held to ``limit``
    bytes, the host waiting for the oldest copies past that (finished ones are dropped without waiting).
    """

    def __init__(self) -> None:
        self.stream: Any = None
        self.in_flight: collections.deque[tuple[Any, int]] = collections.deque()  # (copy done event, bytes)

    @contextlib.contextmanager
    def side_stream(self, *tensors: torch.Tensor) -> Iterator[Any]:
        dev = tensors[0].device
        if dev.type != "cuda":
            yield None
            return
        if self.stream is None:
            self.stream = torch.cuda.Stream(device=dev)
        side = self.stream
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            yield side
        for t in tensors:
            t.record_stream(side)

    def bound(self, done: Any, nbytes: int, limit: int) -> None:
        flight = self.in_flight
        flight.append((done, nbytes))
        while flight and flight[0][0].query():
            flight.popleft()
        held = sum(b for _, b in flight)
        while flight and held > limit:
            ev, b = flight.popleft()
            ev.synchronize()
            held -= b

    def clear(self) -> None:
        self.stream = None
        self.in_flight.clear()


def to_cpu(x: torch.Tensor) -> torch.Tensor:
    """``x`` on the CPU: a pinned copy issued without waiting when it is on CUDA, else ``x`` itself."""
    if x.device.type == "cuda":
        out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        out.copy_(x, non_blocking=True)
        return out
    return x
