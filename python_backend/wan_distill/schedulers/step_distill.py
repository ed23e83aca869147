"""4-step distill scheduler of LightX2V / Self-Forcing-Plus (``WanStepDistillScheduler``), no CFG.

Flow-matching convention (the DiT predicts the flow ``v ~ noise - x0``)::

    x_t = (1 - sigma) * x0 + sigma * noise          x0 = x_t - sigma * v

The ``denoising_step_list`` (e.g. ``[1000, 750, 500, 250]``) is *warped* through the 1000-entry shifted
training table (Self-Forcing ``warp_denoising_step``), all in float32 like LightX2V::

    s_k  = linspace(1, 0, 1001)[k],  k = 0..999
    s'_k = shift * s_k / (1 + (shift - 1) * s_k)       t_k = 1000 * s'_k
    index_i = 1000 - step_i

-> shift 5, ``[1000, 750, 500, 250]``: sigmas ``[1, .9375, .8333, .625]``, timesteps ``[1000, 937.5, 833.33, 625]``.

Update between steps (``update``):

* ``"renoise"``: ``x = (1 - s_next) * x0 + s_next * eps``, fresh ``eps`` from the request's seeded generator
  (matches Self-Forcing training and LightX2V Jul-Nov 2025);
* ``"euler"``:   ``x = x0 + s_next * v`` = ``x_t + (s_next - s) * v`` (deterministic; LightX2V since 2025-11-24).

The last step returns ``x0``. The scheduler only holds its tables, so one instance serves all requests; the step list
was validated by :class:`~wan_distill.config.RunConfig` (integers in [1, 1000], strictly decreasing).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from .base import SamplerState

__all__ = ["StepDistillScheduler", "shifted_sigma_table"]


def shifted_sigma_table(shift: float, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Shifted training sigmas s'_k, k = 0..num_train_timesteps-1 (float32, s'_0 = 1, decreasing) -> [T]."""
    s = torch.linspace(1.0, 0.0, num_train_timesteps + 1, dtype=torch.float32)[:-1]
    return shift * s / (1 + (shift - 1) * s)


class StepDistillScheduler:
    """Warped few-step schedule + x0 / re-noise update.

    Attributes:
        timesteps: [N] float32, the values fed to the DiT's sinusoidal embedding (1000 * sigma, not rounded).
        sigmas:    [N] float32, noise level of the input of each step.
    """

    def __init__(self, denoising_step_list: Sequence[float], shift: float = 5.0,
                 num_train_timesteps: int = 1000, update: Literal["renoise", "euler"] = "renoise"):
        self.denoising_step_list = tuple(int(s) for s in denoising_step_list)
        self.shift = float(shift)
        self.num_train_timesteps = num_train_timesteps
        self.update = update

        table = shifted_sigma_table(self.shift, num_train_timesteps)                         # [T]
        index = torch.tensor([num_train_timesteps - s for s in self.denoising_step_list])   # [N]
        self.sigmas = table[index]                                                           # [N]
        self.timesteps = table[index] * num_train_timesteps                                  # [N]

    @property
    def num_steps(self) -> int:
        return len(self.denoising_step_list)

    def __len__(self) -> int:
        return self.num_steps

    def new_state(self, generator: torch.Generator | None = None) -> SamplerState:
        return SamplerState(generator)

    def step(self, i: int, x_t: torch.Tensor, flow_pred: torch.Tensor, state: SamplerState) -> torch.Tensor:
        """One denoising step.

        Args:
            i: step index in [0, N).
            x_t: [C, F, H, W] (any shape) latents at ``sigmas[i]``.
            flow_pred: same shape, the DiT's flow prediction at ``timesteps[i]``.
            state: from :meth:`new_state`; ``"renoise"`` draws its noise from ``state.generator`` (None = global RNG).
        Returns:
            latents at ``sigmas[i+1]``, or the clean ``x0`` at the last step; dtype of ``x_t``.
        """
        if not 0 <= i < self.num_steps:
            raise IndexError(f"step index {i} out of range for {self.num_steps} steps")
        v = flow_pred.float()
        x0 = x_t.float() - self.sigmas[i] * v
        if i == self.num_steps - 1:
            return x0.to(x_t.dtype)
        sigma_next = self.sigmas[i + 1]
        if self.update == "euler":
            x = x0 + sigma_next * v
        else:
            eps = torch.randn(x0.shape, dtype=torch.float32, device=x0.device, generator=state.generator)
            x = (1 - sigma_next) * x0 + sigma_next * eps
        return x.to(x_t.dtype)

    def __repr__(self) -> str:
        return (f"StepDistillScheduler(denoising_step_list={list(self.denoising_step_list)}, shift={self.shift}, "
                f"update={self.update!r})")
