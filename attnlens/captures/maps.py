"""Full probability maps of the selected heads, kept when a capture asks for them (``maps=True`` or ``"mean"``).

Maps of a step's layers arrive a run of layer slots at a time (``[L, B, h, T, S]``). With ``maps=True`` they are
copied to the host without waiting, into one pinned block with a slot per (expected step, layer); with
``maps="mean"`` running sums stay on the device and are divided by the number of kept steps at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .host import HostBlock, HostCopies


class MapsKeeper:
    """Keeps maps for ``n_layers`` layer slots; ``mode`` is ``True`` (every kept step) or ``"mean"``.

    ``copies``: the capture's side-stream copies (their device memory in flight is bounded by ``limit_bytes``);
    ``expected_steps``: how many steps the host block should hold (``None``: unknown, a copy per step instead).
    """

    def __init__(
        self,
        mode: bool | str,
        n_layers: int,
        copies: HostCopies,
        expected_steps: Callable[[], int | None],
        limit_bytes: Callable[[], int],
    ):
        self.mode = mode
        self.n_layers = n_layers
        self.copies = copies
        self.expected_steps = expected_steps
        self.limit_bytes = limit_bytes
        self.kept: dict[tuple[int, int], torch.Tensor] = {}  # (step position, layer slot) -> host map
        self.sums: dict[int, torch.Tensor] = {}  # layer slot -> running sum over steps ("mean")
        self.count = 0
        self.host: HostBlock | None = None

    def keep(self, pos: int, first: int, maps: torch.Tensor) -> None:
        """Keep ``maps`` ``[L, B, h, T, S]`` of step position ``pos``, layer slots ``first .. first + L - 1``."""
        if self.mode == "mean":
            for i, m in enumerate(maps):
                li = first + i
                if li in self.sums:
                    self.sums[li] += m
                else:
                    self.sums[li] = m.clone()
            if first == 0:
                self.count += 1
            return
        if self.host is None:
            self.host = HostBlock(self.expected_steps(), inner=(self.n_layers,))
        with self.copies.side_stream(maps) as side:
            kept = self.host.put_run((pos, first), maps)
            if side is not None:
                done = torch.cuda.Event()
                done.record(side)
                self.copies.bound(done, maps.nbytes, self.limit_bytes())
        for i in range(maps.shape[0]):
            self.kept[(pos, first + i)] = kept[i]

    def assemble(self, cap: Any, n_steps: int) -> None:
        """Set ``cap.maps`` ``[step, layer, batch, head, frame, key]`` and/or ``cap.maps_mean``."""
        nl = self.n_layers
        if self.kept:
            block = self.host.complete(n_steps) if self.host is not None else None
            if block is not None:
                cap.maps = block  # every slot written in place: no copy
            else:
                cap.maps = torch.stack([torch.stack([self.kept[(s, li)] for li in range(nl)]) for s in range(n_steps)])
        if self.sums:
            cap.maps_mean = torch.stack([(self.sums[li] / self.count).cpu() for li in range(nl)])

    @property
    def pending(self) -> bool:
        """True when maps were copied to the host (the copies may still be running)."""
        return bool(self.kept)

    def clear(self) -> None:
        self.kept.clear()
        self.sums.clear()
        self.host = None


def layers_per_group(q: torch.Tensor, k: torch.Tensor, n_heads: int, budget_bytes: int) -> int:
    """How many layers' maps one batched product may compute: a group's stacked inputs and its fp32 logits and
    probabilities (``2 · B · h · T · S · 4`` bytes per layer) stay within ``budget_bytes``."""
    B, T, S = q.shape[0], q.shape[1], k.shape[1]
    maps_bytes = B * n_heads * T * S * 4
    per_layer = max(1, 2 * maps_bytes + q.nbytes + k.nbytes)
    return max(1, budget_bytes // per_layer)
