"""Samplers behind one interface (:mod:`.base`): the 4-step distill schedule and Wan's UniPC / Euler baselines."""
from ..config import RunConfig
from .base import Sampler, SamplerState
from .flow_match import FlowEulerScheduler, FlowUniPCScheduler
from .step_distill import StepDistillScheduler

__all__ = ["Sampler", "SamplerState", "make_sampler"]


def make_sampler(run: RunConfig) -> Sampler:
    """The sampler a (validated) run config describes: the warped few-step distill schedule, or Wan's UniPC / Euler
    baseline. Built once per deployment; one instance serves every request."""
    if run.is_distill:
        return StepDistillScheduler(run.denoising_step_list, run.sample_shift, update=run.distill_update)
    if run.sample_solver == "unipc":
        return FlowUniPCScheduler(run.infer_steps, run.sample_shift)
    return FlowEulerScheduler(run.infer_steps, run.sample_shift)
