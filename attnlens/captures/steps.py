"""Step bookkeeping: which transformer calls are kept, and the diffusion time ``t`` of each call.

One transformer call is one generation step. ``t`` may arrive as a device tensor: it is kept on the device and read
once when the capture ends (reading it per call would make the host wait for the GPU mid-run). A ``t`` that goes up
means a second generation started inside one capture, which is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .selection import CaptureError


def check_generation(previous: float | None, t: float) -> None:
    """Refuse a ``t`` above the previous one (a new generation inside one capture)."""
    if previous is not None and t > previous + 1e-9:
        raise CaptureError(
            f"a new generation started inside one capture (t went from {previous:.4g} up to {t:.4g}); "
            "a capture holds one generation: open a new al.capture(...) for each pipeline call"
        )


class StepClock:
    """Counts transformer calls and decides which are kept.

    ``requested``: the kept steps (``None``: all; negative ones count from the end, resolved at the first call
    with ``total_steps()``). ``timesteps`` / ``steps``: the lists it fills (``t`` of every call; generation step of
    every kept call), usually the capture's own.
    """

    def __init__(
        self,
        requested: list[int] | None,
        total_steps: Callable[[], int | None],
        timesteps: list[float],
        steps: list[int],
    ):
        self.requested = requested
        self.total_steps = total_steps
        self.timesteps = timesteps
        self.steps = steps
        self.step = -1  # generation step of the current call
        self.kept: set[int] | None = None  # resolved at the first call
        self.pending: dict[int, torch.Tensor] = {}  # call index -> device t, read at the end

    def begin(self, t: Any) -> int | None:
        """Start a call with time ``t`` (a float or a 0-d device tensor): the call's position among the kept steps,
        or ``None`` when it is not kept."""
        if isinstance(t, float):
            check_generation(self.timesteps[-1] if self.timesteps else None, t)
        else:  # a device tensor: read it at the end, so that capture never synchronizes the GPU mid-run
            self.pending[len(self.timesteps)] = t
            t = float("nan")
        self.step += 1
        self.timesteps.append(t)
        if self.kept is None:
            self.kept = self._resolve()
        if self.requested is not None and self.step not in self.kept:
            return None
        self.steps.append(self.step)
        return len(self.steps) - 1

    def _resolve(self) -> set[int]:
        if self.requested is None:
            return set()  # all: decided per step
        total = self.total_steps()
        if any(s < 0 for s in self.requested) and total is None:
            raise CaptureError("cannot resolve negative steps: the number of steps is unknown (pass num_steps=)")
        self._total = total
        return set(self.resolved_requests())

    def resolved_requests(self) -> list[int]:
        """The requested steps with negative ones counted from the end (as resolved at the first call; steps out of
        range are reported when the capture ends, naming the steps that ran)."""
        total = getattr(self, "_total", None)
        return [s + total if s < 0 and total is not None else s for s in self.requested or []]

    def expected(self) -> int | None:
        """How many steps will be kept, when that is known."""
        return len(self.kept) if self.kept else self.total_steps()

    def resolve_timesteps(self) -> None:
        """Device timesteps read once, at the end (one copy), then checked for a second generation."""
        if not self.pending:
            return
        idx = sorted(self.pending)
        values = torch.stack([self.pending[i].float() for i in idx]).cpu().tolist()
        for i, v in zip(idx, values):
            self.timesteps[i] = float(v)
        for a, b in zip(self.timesteps, self.timesteps[1:]):
            check_generation(a, b)
        self.pending.clear()
