"""The one sampler interface every denoising run goes through (distilled 4-step and the CFG baselines).

    state = sampler.new_state(generator)          # per request: its seeded generator (+ solver history)
    for i, t in enumerate(sampler.timesteps):     # t: the DiT's timestep input at step i
        x = sampler.step(i, x, flow_pred(x, t), state)

:func:`wan_distill.schedulers.make_sampler` builds the sampler a run config describes. ``step`` maps latents at noise
level ``sigmas[i]`` to ``sigmas[i + 1]`` (the last step returns the clean latents). One sampler instance holds only its
tables and serves every request of a deployment; CFG is applied by the caller to the flow prediction before ``step``. Samplers trust :class:`~wan_distill.config.RunConfig`, which validated the run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["Sampler", "SamplerState"]


@dataclass
class SamplerState:
    """Per-request state: the request's seeded generator (the distill "renoise" update draws from it)."""

    generator: torch.Generator | None = None


class Sampler(Protocol):
    timesteps: torch.Tensor  # [N] float32, fed to the DiT
    sigmas: torch.Tensor     # noise level of each step's input ([N], or [N + 1] ending in 0)

    def __len__(self) -> int: ...

    def new_state(self, generator: torch.Generator | None = None) -> SamplerState: ...

    def step(self, i: int, x_t: torch.Tensor, flow_pred: torch.Tensor, state: SamplerState) -> torch.Tensor: ...
