"""Baseline (non-distilled) flow-matching solvers: Wan2.1's default UniPC (bh2) and plain Euler.

Same convention as the distill scheduler: ``x_t = (1 - sigma) x0 + sigma noise``, flow ``v ~ noise - x0``.

Sigma schedule: Wan2.1 ``FlowUniPCMultistepScheduler(shift=1).set_timesteps(N, shift=shift)``::

    sigma_max = float32(1 - 1/1000) = 0.999                     (float64 below)
    s_i   = linspace(sigma_max, 0, N + 1)[i],  i = 0..N-1
    s'_i  = shift * s_i / (1 + (shift - 1) * s_i)
    timesteps = int64(1000 * s'_i)   (truncated, as Wan feeds them to the DiT)   -> float32 here
    sigmas    = float32([s'_0 .. s'_{N-1}, 0])

diffusers' ``UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift)`` (its Wan pipelines) instead starts
from ``linspace(1, 1/1000, N + 1)[:-1]`` (and nudges a first sigma of 1 down by 1e-6), i.e. every unshifted sigma is
0.001 higher than Wan's. We follow Wan; diffusers gives the identical schedule when handed Wan's unshifted
sigmas (``set_timesteps(sigmas=...)``), and from there its UniPC trajectory is the same as Wan's.

UniPC state: a run's multistep history lives in a :class:`UniPCState` from ``scheduler.new_state()`` passed to
every ``step(i, x, v, state)`` (the sampler interface of :mod:`.base`), so one scheduler instance serves concurrent
requests. Scalar coefficients are computed in float64 from the float32 sigmas; tensor math is float32. The number of
steps, the shift and the solver name were validated by :class:`~wan_distill.config.RunConfig`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
import numpy as np
import torch

from .base import SamplerState

__all__ = ["wan_flow_sigmas", "FlowEulerScheduler", "FlowUniPCScheduler", "UniPCState"]


def wan_flow_sigmas(num_steps: int, shift: float = 5.0,
                    num_train_timesteps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan2.1's N-step schedule -> (timesteps [N] float32 integer-valued, sigmas [N+1] float32 ending in 0)."""
    sigma_max = float(np.float32(1.0 - 1.0 / num_train_timesteps))
    s = np.linspace(sigma_max, 0.0, num_steps + 1)[:-1]                     # float64, unshifted
    s = shift * s / (1 + (shift - 1) * s)
    timesteps = torch.from_numpy(s * num_train_timesteps).to(torch.int64).to(torch.float32)
    sigmas = torch.from_numpy(np.concatenate([s, [0.0]]).astype(np.float32))
    return timesteps, sigmas


class FlowEulerScheduler:
    """First-order flow ODE step on Wan's schedule: ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v``. Stateless."""

    def __init__(self, num_steps: int, shift: float = 5.0, num_train_timesteps: int = 1000):
        self.num_steps, self.shift, self.num_train_timesteps = num_steps, float(shift), num_train_timesteps
        self.timesteps, self.sigmas = wan_flow_sigmas(num_steps, self.shift, num_train_timesteps)  # [N], [N+1]

    def __len__(self) -> int:
        return self.num_steps

    def new_state(self, generator: torch.Generator | None = None) -> SamplerState:
        """Euler keeps no history."""
        return SamplerState(generator)

    def step(self, i: int, x_t: torch.Tensor, flow_pred: torch.Tensor, state: SamplerState | None = None) -> torch.Tensor:
        """x_t [...] at sigmas[i], flow_pred [...] -> latents at sigmas[i+1] (dtype of x_t)."""
        if not 0 <= i < self.num_steps:
            raise IndexError(f"step index {i} out of range for {self.num_steps} steps")
        dt = self.sigmas[i + 1] - self.sigmas[i]
        return (x_t.float() + dt * flow_pred.float()).to(x_t.dtype)


@dataclass
class UniPCState(SamplerState):
    """Per-run multistep history of :class:`FlowUniPCScheduler` (never share between requests)."""

    next_step: int = 0                                             # steps must run 0, 1, ..., N-1
    x0_preds: list[torch.Tensor] = field(default_factory=list)     # newest last, at most solver_order
    last_sample: torch.Tensor | None = None                        # (corrected) input of the previous step


class FlowUniPCScheduler:
    """UniPC multistep (predict-x0, B(h) = e^-h - 1 "bh2"), UniC corrector on every step after the first,
    warm-up and final steps at lower order (order_i = min(solver_order, i + 1, N - i)), as Wan2.1/diffusers.

    Usage (one state per request)::

        state = sched.new_state()
        for i, t in enumerate(sched.timesteps):
            x = sched.step(i, x, dit(x, t), state)
    """

    def __init__(self, num_steps: int, shift: float = 5.0, num_train_timesteps: int = 1000, solver_order: int = 2):
        self.num_steps, self.shift, self.num_train_timesteps = num_steps, float(shift), num_train_timesteps
        self.solver_order = solver_order
        self.timesteps, self.sigmas = wan_flow_sigmas(num_steps, self.shift, num_train_timesteps)  # [N], [N+1]
        s = [float(v) for v in self.sigmas]
        # log-SNR lambda = log(alpha / sigma), alpha = 1 - sigma; +inf at sigma = 0
        self._sigma = s
        self._lambda = [math.log(1 - v) - math.log(v) if v > 0 else math.inf for v in s]

    def __len__(self) -> int:
        return self.num_steps

    def new_state(self, generator: torch.Generator | None = None) -> UniPCState:
        return UniPCState(generator)

    def order(self, i: int) -> int:
        """Solver order of the predictor at step i (warm-up from 1, lower order at the end)."""
        return min(self.solver_order, i + 1, self.num_steps - i)

    def _bh_update(self, x: torch.Tensor, s0: int, t: int, x0_hist: list[torch.Tensor], order: int,
                   x0_t: torch.Tensor | None = None) -> torch.Tensor:
        """UniP (x0_t None) or UniC (x0_t = x0 prediction at t) from sample x at sigma[s0] to sigma[t].

        x0_hist: x0 predictions at steps s0, s0-1, ... (newest first, >= order entries used).
        """
        sigma_t, alpha_t = self._sigma[t], 1 - self._sigma[t]
        h = self._lambda[t] - self._lambda[s0]
        if sigma_t == 0:                                   # final step to sigma 0: e^-h -> 0
            if order != 1 or x0_t is not None:
                raise ValueError("the step to sigma = 0 must be a first-order predictor")
            h_phi_1, ratio = -1.0, 0.0
        else:
            h_phi_1, ratio = math.expm1(-h), sigma_t / self._sigma[s0]
        b_h = h_phi_1                                      # bh2: B(h) = expm1(-h)

        m0 = x0_hist[0]
        x_next = ratio * x - alpha_t * h_phi_1 * m0
        if x0_t is None and order == 1:                    # first-order predictor (DDIM-like)
            return x_next

        rks = [(self._lambda[s0 - k] - self._lambda[s0]) / h for k in range(1, order)] + [1.0]
        d1s = [(x0_hist[k] - m0) / rks[k - 1] for k in range(1, order)]
        # b_k = h phi_{k+1}(h) * k! / B(h), with hh = -h (predict-x0 form); R_kj = r_j^(k-1)
        hh, fact, h_phi_k, b = -h, 1, h_phi_1 / -h - 1, []
        for k in range(1, order + 1):
            b.append(h_phi_k * fact / b_h)
            fact *= k + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        r_mat = np.array([[r ** (k - 1) for r in rks] for k in range(1, order + 1)], dtype=np.float64)

        if x0_t is None:                                   # predictor, order >= 2
            rhos = [0.5] if order == 2 else np.linalg.solve(r_mat[:-1, :-1], np.array(b[:-1])).tolist()
            res = sum(r * d for r, d in zip(rhos, d1s))
        else:                                              # corrector
            rhos = [0.5] if order == 1 else np.linalg.solve(r_mat, np.array(b)).tolist()
            res = sum((r * d for r, d in zip(rhos[:-1], d1s)), rhos[-1] * (x0_t - m0))
        return x_next - alpha_t * b_h * res

    def step(self, i: int, x_t: torch.Tensor, flow_pred: torch.Tensor, state: UniPCState) -> torch.Tensor:
        """x_t [...] at sigmas[i], flow_pred [...] at timesteps[i] -> latents at sigmas[i+1] (dtype of x_t).

        Updates ``state`` in place; steps of one run must be called in order 0..N-1.
        """
        if state is None:
            raise ValueError("FlowUniPCScheduler.step needs state=scheduler.new_state() (one per run)")
        if i != state.next_step or i >= self.num_steps:
            raise ValueError(f"UniPC steps must run in order 0..{self.num_steps - 1}: got {i}, "
                             f"expected {state.next_step}")
        x = x_t.float()
        x0 = x - self._sigma[i] * flow_pred.float()        # x0 prediction at step i
        if i > 0:                                          # UniC: correct x_t with the new x0 prediction
            x = self._bh_update(state.last_sample, i - 1, i, state.x0_preds[::-1], self.order(i - 1), x0_t=x0)
        state.x0_preds = (state.x0_preds + [x0])[-self.solver_order:]
        state.last_sample = x
        state.next_step = i + 1
        x_next = self._bh_update(x, i, i + 1, state.x0_preds[::-1], self.order(i))
        return x_next.to(x_t.dtype)
