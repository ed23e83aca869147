"""Step distillation of the CFG teacher into a 4-step CFG-free student: DMD (distribution matching) with a
Self-Forcing-style rollout, written from the papers' descriptions (DMD: Yin et al. 2024, "One-step Diffusion with
Distribution Matching Distillation"; DMD2: Yin et al. 2024, "Improved Distribution Matching Distillation";
Self-Forcing: Huang et al. 2025).

Three networks, all the project's WanDiT: the student G and the fake-score critic f start as copies of the
teacher; the real score is the frozen teacher with classifier-free guidance.

Generator update (one per iteration):
  1. rollout: from pure noise, G runs the 4-step schedule exactly as served (``StepDistillScheduler`` on
     ``denoising_step_list [1000, 750, 500, 250]``, shift 5, re-noise update), stopping at a random exit step k;
     only step k carries gradients (Self-Forcing's / DMD2's backward simulation with a stochastic exit), its x0
     prediction is the sample x̂;
  2. distribution matching: noise x̂ to a random sigma (shifted schedule), x0_real from the CFG teacher
     (``v_u + g (v_c - v_u)``), x0_fake from the critic; the DMD gradient ``(x0_fake - x0_real) / mean|x̂ - x0_real|``
     is pushed into G with the loss ``0.5 || x̂ - sg(x̂ - grad) ||^2``.
Critic updates (``critic_steps`` per generator update, DMD2's two time-scale rule): flow-matching loss of f on
fresh student samples (no gradient into G).

I2V: the same code with an :class:`~.common.ImageConditioning` threaded through every call of G, f and the teacher
(both CFG rows share the image, as served); each rollout is conditioned on one training clip's first frame and its
caption (the student never sees the rest of the clip).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wan_distill.models.dit import WanDiT
from wan_distill.schedulers.step_distill import StepDistillScheduler

from .common import NULL_CAPTION, SHIFT, CaptionBank, ImageConditioning, flow, noised, sample_sigma, x0_of
from .data import CAPTIONS

STEP_LIST = (1000, 750, 500, 250)


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 800               # generator updates
    critic_steps: int = 5          # DMD2: critic updates per generator update
    batch: int = 16
    lr_generator: float = 1e-4
    lr_critic: float = 1e-4
    guidance_scale: float = 4.0    # real score = CFG teacher
    sigma_range: tuple[float, float] = (0.02, 0.98)   # u range of the distribution-matching noise level
    seed: int = 0


def rollout(student: WanDiT, sched: StepDistillScheduler, noise: torch.Tensor, context: torch.Tensor, exit_step: int,
            gen: torch.Generator, grad: bool, image: ImageConditioning | None = None) -> torch.Tensor:
    """The served 4-step sampler from ``noise`` [B, 16, t, h, w] (I2V: given ``image`` [B]), stopped at
    ``exit_step``: returns that step's x0 prediction (with gradients through that step only when ``grad``)."""
    x = noise
    state = sched.new_state(gen)
    for i in range(exit_step):
        with torch.no_grad():
            sigma = sched.sigmas[i].expand(x.shape[0])
            x = sched.step(i, x, flow(student, x, sigma, context, image), state)
    sigma = sched.sigmas[exit_step].expand(x.shape[0])
    with torch.set_grad_enabled(grad):
        return x0_of(x, sigma, flow(student, x, sigma, context, image))


def dmd_loss(sample: torch.Tensor, teacher: WanDiT, critic: WanDiT, cond: torch.Tensor, uncond: torch.Tensor,
             cfg: DistillConfig, gen: torch.Generator, image: ImageConditioning | None = None) -> torch.Tensor:
    """DMD's distribution-matching loss of a student sample [B, ...] (gradient = fake score - real score); I2V:
    every score is conditioned on ``image`` [B] (the CFG teacher's two rows alike)."""
    b = sample.shape[0]
    with torch.no_grad():
        sigma = sample_sigma(b, gen, *cfg.sigma_range)
        x_t = noised(sample, torch.randn(sample.shape, generator=gen), sigma)
        v = flow(teacher, torch.cat([x_t, x_t]), torch.cat([sigma, sigma]), torch.cat([cond, uncond]),
                 None if image is None else image.repeat(2))
        v_c, v_u = v.chunk(2)
        x0_real = x0_of(x_t, sigma, v_u + cfg.guidance_scale * (v_c - v_u))
        x0_fake = x0_of(x_t, sigma, flow(critic, x_t, sigma, cond, image))
        weight = (sample - x0_real).abs().mean(dim=tuple(range(1, sample.ndim)), keepdim=True).clamp_min(1e-6)
        grad = (x0_fake - x0_real) / weight
        target = (sample - grad).detach()
    return 0.5 * F.mse_loss(sample, target)


def critic_loss(critic: WanDiT, sample: torch.Tensor, cond: torch.Tensor, gen: torch.Generator,
                image: ImageConditioning | None = None) -> torch.Tensor:
    """Flow matching of the fake score on (detached) student samples."""
    sigma = sample_sigma(sample.shape[0], gen)
    noise = torch.randn(sample.shape, generator=gen)
    return F.mse_loss(flow(critic, noised(sample, noise, sigma), sigma, cond, image), noise - sample)


def distill(teacher: WanDiT, bank: CaptionBank, latent_shape: tuple[int, ...], cfg: DistillConfig,
            captions=CAPTIONS, log=print, images: ImageConditioning | None = None) -> WanDiT:
    """-> the 4-step student (eval, no grad). ``latent_shape`` [16, t, h, w] of the training clips. Prompts are
    drawn from ``captions``; I2V: ``images`` [N] is the first-frame conditioning of N training clips and
    ``captions`` their N captions (a prompt = one clip's image + caption)."""
    if images is not None and len(images) != len(captions):
        raise ValueError(f"{len(images)} images for {len(captions)} captions")
    name = "distill" if images is None else "i2v distill"
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    teacher = teacher.eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    critic = copy.deepcopy(teacher).train().requires_grad_(True)
    sched = StepDistillScheduler(STEP_LIST, SHIFT, update="renoise")
    opt_g = torch.optim.AdamW(student.parameters(), lr=cfg.lr_generator, betas=(0.0, 0.999), weight_decay=0.0)
    opt_f = torch.optim.AdamW(critic.parameters(), lr=cfg.lr_critic, betas=(0.0, 0.999), weight_decay=0.0)
    uncond = bank.context([NULL_CAPTION] * cfg.batch)
    n = len(sched)

    def batch() -> tuple[torch.Tensor, torch.Tensor, ImageConditioning | None]:
        idx = torch.randint(0, len(captions), (cfg.batch,), generator=gen)
        return (torch.randn((cfg.batch, *latent_shape), generator=gen),
                bank.context([captions[i] for i in idx.tolist()]), None if images is None else images[idx])

    t0, run_g, run_f = time.perf_counter(), 0.0, 0.0
    for step in range(cfg.steps):
        for _ in range(cfg.critic_steps):
            noise, cond, image = batch()
            exit_step = int(torch.randint(0, n, (1,), generator=gen))
            sample = rollout(student, sched, noise, cond, exit_step, gen, grad=False, image=image)
            loss_f = critic_loss(critic, sample, cond, gen, image)
            opt_f.zero_grad(set_to_none=True)
            loss_f.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
            opt_f.step()
        noise, cond, image = batch()
        exit_step = int(torch.randint(0, n, (1,), generator=gen))
        sample = rollout(student, sched, noise, cond, exit_step, gen, grad=True, image=image)
        uncond_b = uncond[:, : cond.shape[1]] if uncond.shape[1] >= cond.shape[1] else F.pad(
            uncond, (0, 0, 0, cond.shape[1] - uncond.shape[1]))
        loss_g = dmd_loss(sample, teacher, critic, cond, uncond_b, cfg, gen, image)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt_g.step()
        run_g, run_f = 0.95 * run_g + 0.05 * loss_g.item(), 0.95 * run_f + 0.05 * loss_f.item()
        if step % 50 == 0 or step == cfg.steps - 1:
            log(f"{name} step {step}/{cfg.steps}: dmd {run_g:.4f}, critic {run_f:.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    return student.eval().requires_grad_(False)
