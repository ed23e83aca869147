"""Train a tiny Wan2.1-layout VAE (:class:`wan_distill.models.vae.WanVAE`, small base width) on synthetic clips.

The released ``encode`` / ``decode`` run under ``no_grad`` and in causal chunks (encode: frames 1, 4, 4, ...;
decode: one latent frame at a time, each continuing the previous chunk's :class:`FrameCache`);
:func:`vae_forward` runs the very same modules the same way with gradients. The model is a plain autoencoder on the
posterior mean (no KL: Wan's ``encode`` returns mu only): L2 + L1 reconstruction weighted up on shape pixels, an
auxiliary target for 12 of the 16 latent channels (:func:`latent_target`), a curriculum (single frames, then 5-frame
clips, then 9-frame clips), a small latent L2 and latent noise so the decoder
tolerates the diffusion model's errors (noise relative to each channel's spread: Wan's fixed latent offsets dwarf
an untrained encoder's signal, and noise scaled by the overall spread drowns it). After training, :func:`standardise_latents_` folds the per-channel
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
    # curriculum of (steps, frames per clip): single frames first (cheap: the spatial code), then 5-frame clips (the
    # first latent frame + one 4-frame chunk continuing its cache), then whole 9-frame clips (a chunk continuing a
    # 4-frame chunk). Measured here: 800 whole-clip steps after 1500 single frames read the shape of 44 % of
    # reconstructed clips; 2500 5-frame steps after 2000 single frames 97 %, but their third latent frame came
    # back in the wrong colour, hence the last phase.
    curriculum: tuple[tuple[int, int], ...] = ((2000, 1), (2000, 5), (800, 9))
    image_batch: int = 8        # batch of the single-frame phase
    batch: int = 2              # batch of the clip phases
    crop_size: int = 32         # windows of this size (32 = whole frames)
    foreground_weight: float = 10.0   # extra loss weight on shape pixels (else the AE settles on the background)
    latent_target: float = 1.0  # weight of the auxiliary latent target (see latent_target)
    lr: float = 1e-3
    latent_l2: float = 1e-4
    latent_noise: float = 0.02
    seed: int = 0
    data_seed: int = 1000

    @property
    def steps(self) -> int:
        return sum(n for n, _ in self.curriculum)

    def frames_at(self, step: int) -> int:
        for n, frames in self.curriculum:
            if step < n:
                return frames
            step -= n
        raise IndexError(step)


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
    spread = z.detach().std(dim=(0, 2, 3, 4), keepdim=True)       # per channel: the signal, not Wan's offsets
    noisy = z + cfg.latent_noise * spread * torch.randn(z.shape, generator=gen)
    rec = decode_with_grad(vae, noisy)
    mse = F.mse_loss(rec, video)
    weight = 1 + cfg.foreground_weight * foreground(video)
    err = (rec - video).pow(2) + 0.5 * (rec - video).abs()
    target = latent_target(video)
    aux = F.mse_loss(z[:, : target.shape[1]], target)
    return (weight * err).mean() / weight.mean() + cfg.latent_target * aux + cfg.latent_l2 * z.pow(2).mean(), mse


def latent_target(video: torch.Tensor) -> torch.Tensor:
    """Auxiliary target of the first 12 latent channels: each latent frame's last video frame (0, 4, 8, ...),
    average-pooled 4x and pixel-unshuffled 2x -> [B, 12, t, H/8, W/8]. Without it, joint training from scratch sits
    for thousands of steps on a plateau where the decoder paints only the background colour (measured here: 15-18 dB
    after 1000 steps); with it the encoder carries where and what the shape is from the first steps."""
    frames = video[:, :, ::4]                                                  # [B, 3, t, H, W]
    b, c, t, h, w = frames.shape
    pooled = F.avg_pool2d(frames.transpose(1, 2).reshape(b * t, c, h, w), 4)   # [B t, 3, H/4, W/4]
    target = F.pixel_unshuffle(pooled, 2)                                      # [B t, 12, H/8, W/8]
    return 1.5 * target.reshape(b, t, 4 * c, h // 8, w // 8).transpose(1, 2)


def foreground(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] -> [B, 1, T, H, W] 1 where a pixel differs from its frame's median colour (the plain
    background) by more than 0.1."""
    bg = video.flatten(3).median(dim=3).values[..., None, None]
    return ((video - bg).abs().amax(dim=1, keepdim=True) > 0.1).float()


def train_vae(cfg: VAETrainConfig, log=print) -> WanVAE:
    """Train from a seeded init; batches are clips ``data_seed``, step * batch ... (deterministic by the seeds)."""
    torch.manual_seed(cfg.seed)
    vae = WanVAE(dim=cfg.dim)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    t0, running = time.perf_counter(), None
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        frames = cfg.frames_at(step)
        count = cfg.image_batch if frames == 1 else cfg.batch
        video, _ = make_batch(cfg.data_seed, step * cfg.image_batch, count)
        video = random_crop(video, frames, cfg.crop_size, gen)
        loss, mse = vae_loss(vae, video, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running = mse.item() if running is None else 0.95 * running + 0.05 * mse.item()
        if step % 50 == 0 or step == cfg.steps - 1:
            log(f"vae step {step}/{cfg.steps}: loss {loss.item():.4f}, running psnr {psnr_of_mse(running):.2f} dB "
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
