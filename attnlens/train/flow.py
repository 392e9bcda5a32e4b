"""Flow matching as ACE-Step samples it.

The pipeline integrates ``x_{t-Δ} = x_t - Δ · v(x_t, t)`` from ``t = 1`` (noise) down to ``t = 0`` (data)
(``FlowMatchEulerDiscreteScheduler.step`` with ``sigmas = t``: ``prev = x + (σ_next - σ) · v``). The straight path
that this Euler step follows exactly is::

    x_t = t · noise + (1 - t) · x0          ⇒  dx_t/dt = noise - x0 = v

so the regression target is ``v = noise - x0`` and the loss ``mean((v_θ(x_t, t) - (noise - x0))²)``.

Times ``t`` are drawn from

- ``"turbo"``: the sampler's own grid, ``t_i = s·u / (1 + (s-1)·u)`` for ``u = 1, 1 - 1/N, ..., 1/N`` (shift
  ``s = 3``, ``N = 8``: 1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3), uniformly;
- ``"logit_normal"``: ``t = sigmoid(m + σ·z)``, ``z ~ N(0, 1)``;
- ``"uniform"``: ``u ~ U(0, 1)`` then the same shift ``t = s·u / (1 + (s-1)·u)``.
"""

from __future__ import annotations

from typing import Literal

import torch

TimeSampling = Literal["turbo", "logit_normal", "uniform"]


def shift_time(u: torch.Tensor, shift: float) -> torch.Tensor:
    """``t = s·u / (1 + (s-1)·u)`` (the pipeline's timestep shift)."""
    if shift == 1.0:
        return u
    return shift * u / (1 + (shift - 1) * u)


def turbo_timesteps(num_steps: int = 8, shift: float = 3.0) -> torch.Tensor:
    """The sampler's grid (float64): ``linspace(1, 0, N+1)[:-1]`` shifted, exactly as the pipeline builds it."""
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift_time(u, shift)[:-1]


def sample_times(
    n: int,
    generator: torch.Generator,
    mode: TimeSampling = "turbo",
    shift: float = 3.0,
    num_steps: int = 8,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> torch.Tensor:
    """``n`` training times in ``(0, 1]`` (float32, CPU), drawn with ``generator``."""
    if mode == "turbo":
        grid = turbo_timesteps(num_steps, shift).float()
        idx = torch.randint(len(grid), (n,), generator=generator)
        return grid[idx]
    if mode == "logit_normal":
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.sigmoid(logit_mean + logit_std * z).float()
    if mode == "uniform":
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return shift_time(u, shift).float()
    raise ValueError(f"time sampling must be 'turbo', 'logit_normal' or 'uniform'; got {mode!r}")


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = t · noise + (1 - t) · x0``; ``x0``/``noise`` ``[B, T, C]``, ``t`` ``[B]``."""
    tt = t.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return tt * noise + (1 - tt) * x0


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``v = noise - x0`` (what the pipeline's Euler step integrates)."""
    return noise - x0


def flow_matching_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``mean((pred - (noise - x0))²)`` in fp32."""
    return torch.mean((pred.float() - velocity_target(x0.float(), noise.float())) ** 2)
