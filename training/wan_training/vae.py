"""Train a tiny Wan2.1-layout VAE (:class:`wan_distill.models.vae.WanVAE`, small base width) on synthetic clips.

The released ``encode`` / ``decode`` run under ``no_grad`` and in causal chunks (encode: frames 1, 4, 4, ...;
decode: one latent frame at a time, each continuing the previous chunk's :class:`FrameCache`);
:func:`vae_forward` runs the very same modules the same way with gradients. The model is a plain autoencoder on the
posterior mean (no KL: Wan's ``encode`` returns mu only), with a small latent L2 and latent noise so the decoder
tolerates the diffusion model's errors. After training, :func:`standardise_latents_` folds the per-channel
latent mean / std (measured on clips) into ``conv1`` / ``conv2``, so that Wan's fixed normalisation
(``LATENT_MEAN`` / ``LATENT_STD``) yields zero-mean unit-variance latents: a pure reparametrisation, the decoded
video does not change.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wan_distill.models.vae import FrameCache, WanVAE

from .data import make_batch


@dataclass(frozen=True)
class VAETrainConfig:
    dim: int = 8
    steps: int = 1000
    batch: int = 4
    crop_frames: int = 9        # training crops: the first 9 frames (3 latent frames: first chunk + 2 cached ones)
    crop_size: int = 24         # random 24x24 windows (the nets are convolutional; attention is per frame)
    lr: float = 6e-4
    latent_l2: float = 1e-4
    latent_noise: float = 0.05
    seed: int = 0
    data_seed: int = 1000


def encode_with_grad(vae: WanVAE, video: torch.Tensor) -> torch.Tensor:
    """WanVAE.encode with gradients: [B, 3, T, H, W] -> normalised mu [B, 16, 1 + (T-1)//4, H/8, W/8]."""
    cache = FrameCache()
    chunks = [video[:, :, :1]] + [video[:, :, 1 + 4 * i: 5 + 4 * i] for i in range((video.shape[2] - 1) // 4)]
    x = torch.cat([vae.encoder(c, cache) for c in chunks], dim=2)
    mu = vae.conv1(x)[:, : vae.z_dim]
    mean, std = vae._stats(mu)
    return (mu - mean) / std


def decode_with_grad(vae: WanVAE, z: torch.Tensor) -> torch.Tensor:
    """WanVAE.decode with gradients and without the clamp: [B, 16, t, h, w] -> [B, 3, 1 + 4(t-1), 8h, 8w]."""
    mean, std = vae._stats(z)
    x = vae.conv2(z * std + mean)
    cache = FrameCache()
    return torch.cat([vae.decoder(x[:, :, i: i + 1], cache) for i in range(x.shape[2])], dim=2)


def vae_loss(vae: WanVAE, video: torch.Tensor, cfg: VAETrainConfig, gen: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (loss, reconstruction MSE) of one batch."""
    z = encode_with_grad(vae, video)
    noisy = z + cfg.latent_noise * z.detach().std() * torch.randn(z.shape, generator=gen)
    rec = decode_with_grad(vae, noisy)
    mse = F.mse_loss(rec, video)
    return mse + 0.5 * F.l1_loss(rec, video) + cfg.latent_l2 * z.pow(2).mean(), mse


def train_vae(cfg: VAETrainConfig, log=print) -> WanVAE:
    """Train from a seeded init; batches are clips ``data_seed``, step * batch ... (deterministic by the seeds)."""
    torch.manual_seed(cfg.seed)
    vae = WanVAE(dim=cfg.dim)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        video, _ = make_batch(cfg.data_seed, step * cfg.batch, cfg.batch)
        video = random_crop(video, cfg.crop_frames, cfg.crop_size, gen)
        loss, mse = vae_loss(vae, video, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"vae step {step}/{cfg.steps}: loss {loss.item():.4f}, psnr {psnr_of_mse(mse.item()):.2f} dB "
                f"({time.perf_counter() - t0:.0f} s)")
    return vae.eval().requires_grad_(False)


def random_crop(video: torch.Tensor, frames: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """[B, 3, T, H, W] -> [B, 3, frames, size, size]: the first ``frames`` frames, one random window per clip."""
    _, _, _, h, w = video.shape
    out = []
    for v in video:
        y, x = (int(torch.randint(0, n - size + 1, (1,), generator=gen)) for n in (h, w))
        out.append(v[:, :frames, y:y + size, x:x + size])
    return torch.stack(out)


def psnr_of_mse(mse: float) -> float:
    """PSNR for videos in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def standardise_latents_(vae: WanVAE, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold per-channel latent statistics into conv1 (rows of mu) and conv2 so ``vae.encode`` gives zero-mean
    unit-variance channels on ``videos`` [N, 3, T, H, W] and ``vae.decode(vae.encode(v))`` is unchanged.
    Returns the (mean, std) [16] measured before the fold."""
    z = torch.cat([vae.encode(v[None]) for v in videos])                      # [N, 16, t, h, w]
    m, s = z.mean(dim=(0, 2, 3, 4)), z.std(dim=(0, 2, 3, 4)).clamp_min(1e-4)
    mean, std = (t.view(-1) for t in vae._stats(z))
    a = 1.0 / s                                                               # mu' = a * mu + b
    b = mean - (mean + std * m) / s
    zc = vae.z_dim
    w1, b1 = vae.conv1.weight, vae.conv1.bias
    w1[:zc] *= a.view(-1, 1, 1, 1, 1)
    b1[:zc] = a * b1[:zc] + b
    w2, b2 = vae.conv2.weight, vae.conv2.bias                                 # conv2(mu) = conv2'(mu')
    b2 -= (w2.flatten(1) @ (b / a)).view(-1)
    w2 /= a.view(1, -1, 1, 1, 1)
    return m, s


@torch.no_grad()
def reconstruction_psnr(vae: WanVAE, videos: torch.Tensor) -> float:
    """Mean PSNR (dB) of encode -> decode (the served path: clamped, per-clip) over ``videos`` [N, 3, T, H, W]."""
    vals = [psnr_of_mse(F.mse_loss(vae.decode(vae.encode(v[None])), v[None]).item()) for v in videos]
    return sum(vals) / len(vals)
