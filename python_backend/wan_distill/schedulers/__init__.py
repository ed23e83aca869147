"""Samplers behind one interface (:mod:`.base`): the 4-step distill schedule and Wan's UniPC / Euler baselines."""
from .base import Sampler, SamplerState, make_sampler

__all__ = ["Sampler", "SamplerState", "make_sampler"]
