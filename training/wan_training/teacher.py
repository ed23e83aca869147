"""T2V / I2V teacher: the project's WanDiT trained with flow matching on Wan's shifted schedule, caption dropout for
CFG.

Per step: clean latents x0 of a batch of clips (pre-encoded with the trained VAE), noise level
``sigma = shift u / (1 + (shift - 1) u)``, u ~ U(0, 1), ``x_t = (1 - sigma) x0 + sigma eps``, loss
``|| v_theta(x_t, 1000 sigma, c) - (eps - x0) ||^2``; the caption is replaced by the null caption with probability
``caption_dropout`` (so the same network gives the unconditional flow for classifier-free guidance).
The released weights are an EMA of the trained ones.

I2V (``image`` given): the same loss with each clip's first-frame conditioning (CLIP tokens + mask + first-frame
latent, :class:`~.common.ImageConditioning`). Only the caption is dropped, never the image: the served CFG (the
engine, like Wan2.1's ``WanI2V.generate``) gives the conditional and the unconditional rows the same image, so the
branch CFG needs is "image, no text"; an image-free branch would never be queried. :func:`i2v_init` starts the I2V
teacher from the trained T2V teacher, with the image paths zeroed so that it starts out as exactly that model.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wan_distill.models.dit import WanDiT

from .common import EMA, NULL_CAPTION, CaptionBank, ImageConditioning, ToySpec, flow, new_dit, noised, sample_sigma


@dataclass(frozen=True)
class TeacherTrainConfig:
    steps: int = 10000
    batch: int = 32
    lr: float = 6e-4
    warmup: int = 150
    weight_decay: float = 0.01
    caption_dropout: float = 0.1
    ema_decay: float = 0.998
    seed: int = 0


def flow_matching_loss(dit: WanDiT, x0: torch.Tensor, context: torch.Tensor, gen: torch.Generator,
                       image: ImageConditioning | None = None) -> torch.Tensor:
    sigma = sample_sigma(x0.shape[0], gen)
    noise = torch.randn(x0.shape, generator=gen)
    return F.mse_loss(flow(dit, noised(x0, noise, sigma), sigma, context, image), noise - x0)


@torch.no_grad()
def i2v_init(t2v: WanDiT, spec: ToySpec, seed: int) -> WanDiT:
    """An I2V DiT that computes exactly what the T2V DiT ``t2v`` computes, whatever its image: every shared weight
    copied, the 20 extra input channels of the patch embedding (mask + image latent) zero, the image branch of the
    cross-attention (``img_emb``, ``k_img``, ``norm_k_img`` fresh) silenced by ``v_img`` = 0."""
    dit = new_dit(spec, seed, task="i2v")
    state = dit.state_dict()
    for key, value in t2v.state_dict().items():
        if key == "patch_embedding.weight":
            state[key].zero_()[:, : value.shape[1]] = value
        else:
            state[key] = value.clone()
    for key in state:
        if ".cross_attn.v_img." in key:
            state[key].zero_()
    dit.load_state_dict(state)
    return dit


def train_teacher(latents: torch.Tensor, captions: list[str], bank: CaptionBank, spec: ToySpec,
                  cfg: TeacherTrainConfig, log=print, image: ImageConditioning | None = None,
                  init: WanDiT | None = None) -> WanDiT:
    """latents [N, 16, t, h, w] with their captions (I2V: and their first-frame conditioning ``image`` [N]) -> the
    EMA teacher (eval, no grad). ``init``: the weights to start from (default: a fresh DiT, seed ``cfg.seed``)."""
    dit = (copy.deepcopy(init) if init is not None else new_dit(spec, cfg.seed)).train().requires_grad_(True)
    name = "teacher" if image is None else "i2v teacher"
    ema = EMA(dit, cfg.ema_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(dit.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    t0, running = time.perf_counter(), None
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, latents.shape[0], (cfg.batch,), generator=gen)
        drop = torch.rand(cfg.batch, generator=gen) < cfg.caption_dropout
        caps = [NULL_CAPTION if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist())]
        loss = flow_matching_loss(dit, latents[idx], bank.context(caps), gen, None if image is None else image[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        ema.update(dit)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 250 == 0 or step == cfg.steps - 1:
            log(f"{name} step {step}/{cfg.steps}: loss {running:.4f} ({time.perf_counter() - t0:.0f} s)")
    ema.copy_to(dit)
    return dit.eval().requires_grad_(False)
