"""Moving small host tensors to the model's device without making the host wait."""

from __future__ import annotations

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
