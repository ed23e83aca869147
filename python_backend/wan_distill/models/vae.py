"""Wan2.1 causal 3D VAE (``Wan2.1_VAE.pth``): 8x spatial / 4x temporal compression, 16 latent channels.

Written from Wan2.1's published architecture; module names equal the checkpoint keys
(``encoder.downsamples.N.residual.2.weight``, ``decoder.upsamples.N.time_conv.weight``, ``conv1``, ``conv2`` ...),
so ``load_state_dict(strict=True)`` works on the released file.

Time is processed causally in chunks (encode: frames 1, 4, 4, ...; decode: one latent frame at a time). Every
cached causal conv remembers the last ``CACHE_T`` input frames of the previous chunk in a :class:`FrameCache`
that belongs to one call, so calls never share state.

Video tensors are ``[B, 3, T, H, W]`` in [-1, 1]; latents are ``[B, 16, 1 + (T-1)//4, H/8, W/8]``, normalised
with the per-channel Wan2.1 mean/std.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CACHE_T", "LATENT_MEAN", "LATENT_STD", "FrameCache", "WanVAE", "collect_frames", "to_uint8_frames"]

CACHE_T = 2

LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


class FrameCache(dict):
    """Per-call temporal state: ``{conv module: its last input frames [B, C, <=CACHE_T, H, W]}``."""


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
class CausalConv3d(nn.Conv3d):
    """Conv3d zero-padded only in front along T (2*pt frames), symmetric in H/W.

    ``forward(x [B,Ci,T,H,W], prev [B,Ci,Tp,H,W] | None) -> [B,Co,T',H',W']``: ``prev`` (the previous chunk's
    last frames) replaces as many front zero frames.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pt, ph, pw = self.padding
        self._pad = (pw, pw, ph, ph, 2 * pt, 0)  # F.pad order: W, H, T(front, back)
        self.padding = (0, 0, 0)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        pad = list(self._pad)
        if prev is not None and pad[4] > 0:
            x = torch.cat([prev.to(x), x], dim=2)
            pad[4] -= prev.shape[2]
        x = F.pad(x, pad)
        if x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available():
            # PyTorch picks its slow reference conv3d for batch 1 when N*C*T*H <= 20480 (small widths, e.g. the tiny
            # and pruned VAEs): oneDNN is ~7x faster there and equal up to float summation order.
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride,
                                                     self.dilation, self.groups)
        return super().forward(x)


def cached_conv(conv: CausalConv3d, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
    """Run ``conv`` on this chunk, continuing from the previous chunk's frames; remember the new last frames."""
    prev = cache.get(conv)
    last = x[:, :, -CACHE_T:].clone()
    if last.shape[2] < CACHE_T and prev is not None:
        last = torch.cat([prev[:, :, -1:].to(last), last], dim=2)
    cache[conv] = last
    return conv(x, prev)


class RMSNorm(nn.Module):
    """``F.normalize(x, dim=1) * sqrt(C) * gamma`` over channels; gamma [C,1,1] (images) or [C,1,1,1]."""

    def __init__(self, dim: int, images: bool = True):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x / max(||x||_2 over C, 1e-12), as F.normalize, but with a plain sum of squares: PyTorch's vector-norm kernel
        # reduces over dim 1 of [B,C,T,H,W] ~20x slower on CPU (80 % of the decode at small widths). Trade-off,
        # measured: differs from F.normalize by <= 1 ulp per element.
        xf = x.float()
        norm = xf.square().sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)  # out of place: trainable
        return (xf / norm * self.scale * self.gamma.float()).to(x.dtype)


class NearestUpsample2x(nn.Upsample):
    """2x nearest upsampling of [N,C,H,W], computed in fp32 (exact for any dtype)."""

    def __init__(self):
        super().__init__(scale_factor=(2.0, 2.0), mode="nearest-exact")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


class Resample(nn.Module):
    """Spatial 2x up/down per frame (``resample``), plus a temporal 2x step (``time_conv``) in the *3d modes.

    up:   [B,C,T,H,W] -> [B,C/2,T',2H,2W], T' = 2T (upsample3d, T on the first chunk) or T (upsample2d)
    down: [B,C,T,H,W] -> [B,C,T',H/2,W/2], time_conv (k=3, stride 2) over 1 cached + T frames in downsample3d
    """

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(NearestUpsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))
        else:
            raise ValueError(f"unknown Resample mode {mode!r}")

    def _spatial(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        x = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        return x.reshape(b, t, *x.shape[1:]).transpose(1, 2)

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            if self.time_conv not in cache:
                # first chunk passes through unchanged; later chunks see 2 zero frames before it (as a fresh conv)
                b, c, _, h, w = x.shape
                cache[self.time_conv] = x.new_zeros(b, c, CACHE_T, h, w)
            else:
                b, c, t, h, w = x.shape
                x = cached_conv(self.time_conv, x, cache)                      # [B, 2C, T, H, W]
                x = x.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5)      # [B, C, T, 2, H, W]
                x = x.reshape(b, c, 2 * t, h, w)                               # frame 2i / 2i+1 = halves
        x = self._spatial(x)
        if self.mode == "downsample3d":
            prev = cache.get(self.time_conv)
            if prev is None:
                cache[self.time_conv] = x.clone()  # first chunk keeps its frame
            else:
                cache[self.time_conv] = x[:, :, -1:].clone()
                x = self.time_conv(torch.cat([prev[:, :, -1:].to(x), x], dim=2))
        return x


class ResidualBlock(nn.Module):
    """``residual`` = [norm, SiLU, conv3, norm, SiLU, dropout, conv3] + ``shortcut`` (1x1x1 conv if in != out)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False), nn.SiLU(), nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        """[B,Ci,T,H,W] -> [B,Co,T,H,W]"""
        h = self.shortcut(x)
        for layer in self.residual:
            x = cached_conv(layer, x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention per frame: [B,C,T,H,W] -> same."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        identity = x
        x = self.norm(x.transpose(1, 2).reshape(b * t, c, h, w))
        q, k, v = self.to_qkv(x).reshape(b * t, 1, 3 * c, h * w).transpose(2, 3).chunk(3, dim=-1)
        x = F.scaled_dot_product_attention(q, k, v)                       # [BT, 1, HW, C]
        x = self.proj(x.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return x.reshape(b, t, c, h, w).transpose(1, 2) + identity


def _middle(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout))


def _head(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1))


def _run(layers: nn.Sequential, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
    for layer in layers:
        if isinstance(layer, (ResidualBlock, Resample)):
            x = layer(x, cache)
        elif isinstance(layer, CausalConv3d):
            x = cached_conv(layer, x, cache)
        else:
            x = layer(x)
    return x


class Encoder3d(nn.Module):
    """[B,3,T,H,W] chunk -> [B,2*z_dim,T',H/8,W/8] (T' = 1 for the 1- and 4-frame chunks)."""

    def __init__(self, dim=96, z_dim=32, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 temperal_downsample=(False, True, True), dropout=0.0):
        super().__init__()
        dims = [dim * u for u in (1, *dim_mult)]                         # 96, 96, 192, 384, 384
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if temperal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = _middle(dims[-1], dropout)
        self.head = _head(dims[-1], z_dim)

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        x = cached_conv(self.conv1, x, cache)
        x = _run(self.downsamples, x, cache)
        x = _run(self.middle, x, cache)
        return _run(self.head, x, cache)


class Decoder3d(nn.Module):
    """[B,z_dim,1,h,w] latent frame -> [B,3,n,8h,8w] (n = 1 for the first latent frame, 4 after)."""

    def __init__(self, dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 temperal_upsample=(True, True, False), dropout=0.0):
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1], *dim_mult[::-1])]       # 384, 384, 384, 192, 96
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0], dropout)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2                                            # previous upsampler halved channels
            for _ in range(num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*blocks)
        self.head = _head(dims[-1], 3)

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        x = cached_conv(self.conv1, x, cache)
        x = _run(self.middle, x, cache)
        x = _run(self.upsamples, x, cache)
        return _run(self.head, x, cache)


# ----------------------------------------------------------------------------------------------
# the VAE
# ----------------------------------------------------------------------------------------------
class WanVAE(nn.Module):
    """Wan2.1 VAE. ``conv1`` = quant conv (2z -> 2z), ``conv2`` = post-quant conv (z -> z), both 1x1x1."""

    def __init__(self, dim: int = 96, z_dim: int = 16, dim_mult=(1, 2, 4, 4), num_res_blocks: int = 2,
                 temperal_downsample=(False, True, True), dropout: float = 0.0):
        super().__init__()
        if z_dim != len(LATENT_MEAN):
            raise ValueError(f"WanVAE: z_dim must be {len(LATENT_MEAN)} (the latent mean/std are per channel)")
        self.dim, self.z_dim = dim, z_dim
        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, tuple(temperal_downsample), dropout)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, tuple(temperal_downsample)[::-1], dropout)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(LATENT_MEAN, device=like.device, dtype=like.dtype).view(1, -1, 1, 1, 1)
        std = torch.tensor(LATENT_STD, device=like.device, dtype=like.dtype).view(1, -1, 1, 1, 1)
        return mean, std

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B,3,T,H,W] in [-1,1] (T = 4k+1; extra frames are dropped) -> normalised mu [B,16,1+(T-1)//4,H/8,W/8]."""
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"WanVAE.encode: expected [B,3,T,H,W], got {tuple(video.shape)}")
        w = self.conv1.weight
        video = video.to(device=w.device, dtype=w.dtype)
        cache = FrameCache()
        chunks = [video[:, :, :1]] + [video[:, :, 1 + 4 * i: 5 + 4 * i] for i in range((video.shape[2] - 1) // 4)]
        x = torch.cat([self.encoder(c, cache) for c in chunks], dim=2)
        mu = self.conv1(x)[:, : self.z_dim]
        mean, std = self._stats(mu)
        return ((mu - mean) * (1.0 / std)).float()

    def _decode_chunks(self, z: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """[B,16,t,h,w] normalised -> yields (first frame index, [B,3,n,8h,8w] clamped chunk)."""
        if z.dim() != 5 or z.shape[1] != self.z_dim:
            raise ValueError(f"WanVAE.decode: expected [B,{self.z_dim},t,h,w], got {tuple(z.shape)}")
        w = self.conv2.weight
        z = z.to(device=w.device, dtype=w.dtype)
        mean, std = self._stats(z)
        x = self.conv2(z / (1.0 / std) + mean)
        cache = FrameCache()
        frame = 0
        for i in range(x.shape[2]):
            out = self.decoder(x[:, :, i: i + 1], cache).clamp_(-1, 1)
            n = out.shape[2]
            yield frame, out
            del out  # do not hold the previous chunk while decoding the next
            frame += n

    @staticmethod
    def num_frames(latent_frames: int) -> int:
        return 1 + 4 * (latent_frames - 1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B,16,t,h,w] -> float32 video [B,3,1+4(t-1),8h,8w] in [-1,1]."""
        b, _, t, h, w = z.shape
        video = torch.empty(b, 3, self.num_frames(t), 8 * h, 8 * w, dtype=torch.float32, device=self.conv2.weight.device)
        for f0, chunk in self._decode_chunks(z):
            video[:, :, f0: f0 + chunk.shape[2]] = chunk
        return video

    @torch.no_grad()
    def decode_uint8_chunks(self, z: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Normalised latents [16,t,h,w] -> yields (first frame index, uint8 frames [n, 8h, 8w, 3] on CPU), one latent
        frame at a time (n = 1, then 4), so a consumer (the MP4 encoder) can work while the next one decodes."""
        if z.dim() != 4:
            raise ValueError(f"WanVAE.decode_to_uint8: expected [16,t,h,w], got {tuple(z.shape)}")
        for f0, chunk in self._decode_chunks(z[None]):
            yield f0, to_uint8_frames(chunk[0])
            del chunk

    @torch.no_grad()
    def decode_to_uint8(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents [16,t,h,w] -> uint8 frames [1+4(t-1), 8h, 8w, 3] (on CPU), written chunk by chunk."""
        return collect_frames(self.decode_uint8_chunks(z), self.num_frames(z.shape[1]) if z.dim() == 4 else 0)


def to_uint8_frames(chunk: torch.Tensor) -> torch.Tensor:
    """[3, n, H, W] in [-1, 1] (any device, any float dtype: converted in fp32) -> uint8 [n, H, W, 3] on CPU."""
    pixels = chunk.float().add(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu()


def collect_frames(chunks: Iterator[tuple[int, torch.Tensor]], num_frames: int) -> torch.Tensor:
    """(first frame index, uint8 [n, H, W, 3]) chunks -> one preallocated uint8 [num_frames, H, W, 3]."""
    frames = None
    for f0, chunk in chunks:
        if frames is None:
            frames = torch.empty(num_frames, *chunk.shape[1:], dtype=torch.uint8)
        frames[f0: f0 + chunk.shape[0]] = chunk
    return frames
