"""Tiny decoder for Wan2.1 latents in taehv's ``taew2_1`` layout (the TAEHV decoder LightX2V runs with ``use_tae``).

Plain 2-D convolutions with ReLU; each ``MemBlock`` also sees its own input one frame earlier. 8x space and 4x time
upsampling. Module names equal the keys of ``taew2_1.pth`` (``decoder.N`` is position N of one nn.Sequential):

    0      soft clamp ``tanh(z / 3) * 3``          1   conv3x3 16 -> c0 (bias)       2   ReLU
    3-5    MemBlock(c0) x3                         6   2x nearest upsample           7   TGrow(c0, 1)
    8      conv3x3 c0 -> c1 (no bias)              9-11  MemBlock(c1) x3             12  upsample   13  TGrow(c1, 2)
    14     conv3x3 c1 -> c2 (no bias)              15-17 MemBlock(c2) x3             18  upsample   19  TGrow(c2, 2)
    20     conv3x3 c2 -> c3 (no bias)              21  ReLU                          22  conv3x3 c3 -> 3 (bias)

with widths ``c = (256, 128, 64, 64)`` in ``taew2_1``. MemBlock(c): ``relu(conv.4(relu(conv.2(relu(conv.0(
cat[x_t, x_t-1]))))) + x_t)`` (3x3 convs with bias; ``x_-1 = 0``). TGrow(c, s): 1x1 conv c -> s*c (no bias); output
frame j of each input frame is channel block j.

Time: every latent frame becomes 1 * 2 * 2 = 4 frames and the first 3 frames of the video are dropped, so t latent
frames give 4t - 3 = 1 + 4(t-1) frames: the full VAE's count, frame for frame. Frames come out in [0, 1]. The input is
the DiT's normalised latent ([16, t, h, w]): taew2_1 uses no latent mean / std; ``denormalize`` (LightX2V's
``need_scaled``, for its ``lighttaew2_1``) first maps it back with Wan's mean / std.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vae import LATENT_MEAN, LATENT_STD, collect_frames, to_uint8_frames

__all__ = ["MemBlock", "TGrow", "TinyVAEDecoder", "TAEW2_1_WIDTHS", "TAEW2_1_TIME_STRIDES"]

TAEW2_1_WIDTHS = (256, 128, 64, 64)
TAEW2_1_TIME_STRIDES = (1, 2, 2)


def _conv(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """``tanh(x / 3) * 3``: keeps latents in (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Upsample2x(nn.Module):
    """2x nearest upsampling of [N, C, H, W]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class MemBlock(nn.Module):
    """x [N, Ci, H, W], past [N, Ci, H, W] (the same block's input one frame earlier) -> [N, Co, H, W]."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(2 * c_in, c_out), nn.ReLU(), _conv(c_out, c_out), nn.ReLU(),
                                  _conv(c_out, c_out))
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + self.skip(x))


class TGrow(nn.Module):
    """[N, C, H, W] -> [N * stride, C, H, W]: each frame becomes ``stride`` consecutive frames (1x1 conv)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.conv(x).reshape(n * self.stride, c, h, w)


class TinyVAEDecoder(nn.Module):
    """taew2_1 decoder: normalised latents [B, 16, t, h, w] -> video [B, 3, 1 + 4(t-1), 8h, 8w].

    Decodes causally, a few latent frames at a time (``latents_per_chunk``; any value gives the same frames), each
    MemBlock carrying its last input frame to the next chunk.
    """

    def __init__(self, latent_channels: int = 16, widths: tuple[int, ...] = TAEW2_1_WIDTHS,
                 time_strides: tuple[int, ...] = TAEW2_1_TIME_STRIDES, denormalize: bool = False):
        super().__init__()
        if len(widths) != 4 or len(time_strides) != 3:
            raise ValueError(f"TinyVAEDecoder: need 4 widths and 3 time strides, got {widths}, {time_strides}")
        c0, c1, c2, c3 = widths
        self.latent_channels, self.widths, self.time_strides = latent_channels, tuple(widths), tuple(time_strides)
        self.denormalize = denormalize
        layers: list[nn.Module] = [SoftClamp(), _conv(latent_channels, c0), nn.ReLU()]
        for c, c_next, stride in zip((c0, c1, c2), (c1, c2, c3), time_strides):
            layers += [MemBlock(c, c), MemBlock(c, c), MemBlock(c, c), Upsample2x(), TGrow(c, stride),
                       _conv(c, c_next, bias=False)]
        layers += [nn.ReLU(), _conv(c3, 3)]
        self.decoder = nn.Sequential(*layers)
        self.time_upscale = 1
        for s in time_strides:
            self.time_upscale *= s
        self.frames_to_trim = self.time_upscale - 1

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder[1].weight.device

    def num_frames(self, latent_frames: int) -> int:
        """Frames decoded from ``latent_frames`` latent frames: 1 + 4(t-1) for taew2_1 (as the full VAE)."""
        return max(0, latent_frames * self.time_upscale - self.frames_to_trim)

    def _chunk(self, x: torch.Tensor, memory: dict[int, torch.Tensor]) -> torch.Tensor:
        """x [B, n, C, h, w] (n consecutive latent frames) -> [B, n * time_upscale, 3, 8h, 8w], raw decoder output."""
        b = x.shape[0]
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, MemBlock):
                prev = memory.get(i)
                if prev is None:
                    prev = torch.zeros_like(x[:, :1])
                past = torch.cat([prev, x[:, :-1]], dim=1)   # each frame's input one frame earlier
                memory[i] = x[:, -1:]
                x = layer(x.flatten(0, 1), past.flatten(0, 1))
            else:
                x = layer(x.flatten(0, 1))
            x = x.unflatten(0, (b, x.shape[0] // b))
        return x

    def _decode_chunks(self, z: torch.Tensor, latents_per_chunk: int = 1) -> Iterator[tuple[int, torch.Tensor]]:
        """Normalised latents [B, 16, t, h, w] -> yields (first frame index, [B, 3, n, 8h, 8w] in [-1, 1])."""
        if z.dim() != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"TinyVAEDecoder.decode: expected [B,{self.latent_channels},t,h,w], got {tuple(z.shape)}")
        z = z.to(device=self.device, dtype=torch.float32)
        if self.denormalize:
            mean = torch.tensor(LATENT_MEAN, device=z.device).view(1, -1, 1, 1, 1)
            std = torch.tensor(LATENT_STD, device=z.device).view(1, -1, 1, 1, 1)
            z = z * std + mean
        x = z.to(self.dtype).transpose(1, 2)                  # [B, t, 16, h, w]
        memory: dict[int, torch.Tensor] = {}
        to_trim, frame = self.frames_to_trim, 0
        for start in range(0, x.shape[1], latents_per_chunk):
            out = self._chunk(x[:, start: start + latents_per_chunk], memory)
            drop = min(to_trim, out.shape[1])
            out, to_trim = out[:, drop:], to_trim - drop
            if out.shape[1]:
                out = out.float().clamp_(0, 1).mul_(2).sub_(1).transpose(1, 2)   # [B, 3, n, H, W]
                yield frame, out
                frame += out.shape[2]

    @torch.no_grad()
    def decode(self, z: torch.Tensor, latents_per_chunk: int = 1) -> torch.Tensor:
        """Normalised latents [B, 16, t, h, w] -> float32 video [B, 3, 1 + 4(t-1), 8h, 8w] in [-1, 1]."""
        chunks = [c for _, c in self._decode_chunks(z, latents_per_chunk)]
        return torch.cat(chunks, dim=2)

    @torch.no_grad()
    def decode_uint8_chunks(self, z: torch.Tensor, latents_per_chunk: int = 1) -> Iterator[tuple[int, torch.Tensor]]:
        """Normalised latents [16, t, h, w] -> yields (first frame index, uint8 frames [n, 8h, 8w, 3] on CPU), as
        ``WanVAE.decode_uint8_chunks`` (the first latent frame yields 1 frame, each later one 4)."""
        if z.dim() != 4:
            raise ValueError(f"TinyVAEDecoder.decode_to_uint8: expected [16,t,h,w], got {tuple(z.shape)}")
        for f0, chunk in self._decode_chunks(z[None], latents_per_chunk):
            yield f0, to_uint8_frames(chunk[0])

    @torch.no_grad()
    def decode_to_uint8(self, z: torch.Tensor, latents_per_chunk: int = 1) -> torch.Tensor:
        """Normalised latents [16, t, h, w] -> uint8 frames [1 + 4(t-1), 8h, 8w, 3] (on CPU), as ``WanVAE``'s."""
        return collect_frames(self.decode_uint8_chunks(z, latents_per_chunk),
                              self.num_frames(z.shape[1]) if z.dim() == 4 else 0)
