"""Wan2.1 diffusion transformer (DiT), T2V and I2V.

Module and parameter names equal the keys of the released Wan2.1 / LightX2V checkpoints, so a plain
``load_state_dict(strict=True)`` works. Precision follows the official model: the residual stream, LayerNorm,
RMSNorm, modulation, gating, time embedding and head run in float32 ("fp32 islands"); the sinusoidal
embedding and RoPE are computed in float64; the big linears and attention run in the weights' dtype
(fp32 on CPU, bf16 on GPU).

Shapes: B batch, C latent channels, F/H/W latent frames/height/width, f/h/w patch grid (F, H/2, W/2),
L = f*h*w video tokens, D = dim, n heads, d = head_dim, Lc context tokens.

Sequence-parallel seam: ``WanDiT.sequence_parallel`` (default None: every token stays in this process, nothing
changes) maps L to a token layout with three methods, ``shard`` (after the patch embedding), ``attend`` (around
self-attention) and ``gather`` (after the head); :class:`LocalTokens` is the identity layout and
``wan_distill.parallel`` the Ulysses one.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import DiTConfig

__all__ = ["WanDiT", "LocalTokens", "attention", "sinusoidal_embedding_1d", "rope_dims", "rope_freqs", "rope_apply"]


# ----------------------------------------------------------------------------------------------
# Position / time encodings
# ----------------------------------------------------------------------------------------------
def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """position [B] (float timesteps, not rounded) -> [B, dim] float64, ``cat(cos, sin)``.

    Frequencies ``10000 ** (-j / half)`` for j < half = dim // 2 (denominator half, not half - 1).
    """
    half = dim // 2
    position = position.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_dims(head_dim: int) -> tuple[int, int, int]:
    """Real dims of the head given to the (time, height, width) axes: 44/42/42 at head_dim 128."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_freqs(head_dim: int, f: int, h: int, w: int, device: torch.device | str | None = None,
               theta: float = 10000.0) -> torch.Tensor:
    """Rotations of every token of an (f, h, w) grid -> complex128 [f*h*w, 1, head_dim // 2].

    Each axis uses ``theta ** (-2j / axis_dim)`` for its own ``axis_dim``; positions are integer token
    indices; tokens are ordered f-major, then h, then w (the order of the patchified latent).
    """
    tables = []
    for n, axis_dim in zip((f, h, w), rope_dims(head_dim)):
        inv = 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float64, device=device) / axis_dim)
        angles = torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv)  # [n, axis_dim/2]
        tables.append(torch.polar(torch.ones_like(angles), angles))
    ft, fh, fw = tables
    freqs = torch.cat([
        ft[:, None, None].expand(f, h, w, -1),
        fh[None, :, None].expand(f, h, w, -1),
        fw[None, None, :].expand(f, h, w, -1),
    ], dim=-1)
    return freqs.reshape(f * h * w, 1, -1)


def rope_apply(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x [B, L, n, d] rotated by freqs complex [L, 1, d/2]; adjacent pairs (2j, 2j+1) are (real, imag).

    Computed in float64, returned in x's dtype.
    """
    b, s, n, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, s, n, d // 2, 2))
    return torch.view_as_real(xc * freqs).flatten(3).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B, Lq, n, d], k/v [B, Lk, n, d] -> [B, Lq, n*d]; no mask, scale 1/sqrt(d)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


class LocalTokens:
    """Token layout of a single-process forward: all L tokens here, plain attention (the seam's identity, no cost).

    A sequence-parallel layout has the same three methods: ``shard`` x [B, L, D], freqs [L, 1, d/2] -> this
    process's tokens; ``attend`` q/k/v [B, L', n, d] (RoPE applied) -> [B, L', n*d] over the whole sequence;
    ``gather`` [B, L', C] -> [B, L, C].
    """

    @staticmethod
    def shard(x: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, freqs

    attend = staticmethod(attention)

    @staticmethod
    def gather(x: torch.Tensor) -> torch.Tensor:
        return x


LOCAL_TOKENS = LocalTokens()


def _linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A small linear computed in float32 whatever the weights' dtype (time embedding, head)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


# ----------------------------------------------------------------------------------------------
# Norms
# ----------------------------------------------------------------------------------------------
class WanRMSNorm(nn.Module):
    """RMSNorm over the full last dim: ``x * rsqrt(mean(x^2) + eps) * weight`` (statistics in fp32)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (affine params cast too), returned in the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


# ----------------------------------------------------------------------------------------------
# Attention layers
# ----------------------------------------------------------------------------------------------
class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps=eps)
        self.norm_k = WanRMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, attend=attention) -> torch.Tensor:
        """x [B, L, D], freqs complex [L, 1, d/2] -> [B, L, D]; ``attend`` is the token layout's attention."""
        b, s, n, d = *x.shape[:2], self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, s, n, d)
        k = self.norm_k(self.k(x)).view(b, s, n, d)
        v = self.v(x).view(b, s, n, d)
        return self.o(attend(rope_apply(q, freqs), rope_apply(k, freqs), v))


class WanT2VCrossAttention(WanSelfAttention):
    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], context [B, text_len, D] -> [B, L, D]."""
        b, n, d = x.shape[0], self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, -1, n, d)
        k = self.norm_k(self.k(context)).view(b, -1, n, d)
        v = self.v(context).view(b, -1, n, d)
        return self.o(attention(q, k, v))


class WanI2VCrossAttention(WanSelfAttention):
    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6, text_len: int = 512):
        super().__init__(dim, num_heads, eps)
        self.text_len = text_len
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_k_img = WanRMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], context [B, 257 + text_len, D] (image tokens first) -> [B, L, D]."""
        b, n, d = x.shape[0], self.num_heads, self.head_dim
        img_len = context.shape[1] - self.text_len
        ctx_img, ctx_txt = context[:, :img_len], context[:, img_len:]
        q = self.norm_q(self.q(x)).view(b, -1, n, d)
        k = self.norm_k(self.k(ctx_txt)).view(b, -1, n, d)
        v = self.v(ctx_txt).view(b, -1, n, d)
        k_img = self.norm_k_img(self.k_img(ctx_img)).view(b, -1, n, d)
        v_img = self.v_img(ctx_img).view(b, -1, n, d)
        return self.o(attention(q, k, v) + attention(q, k_img, v_img))


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------
class WanAttentionBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim, eps = cfg.dim, cfg.eps
        self.norm1 = WanLayerNorm(dim, eps)
        self.self_attn = WanSelfAttention(dim, cfg.num_heads, eps)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = (WanI2VCrossAttention(dim, cfg.num_heads, eps, cfg.text_len) if cfg.is_i2v
                           else WanT2VCrossAttention(dim, cfg.num_heads, eps))
        self.norm2 = WanLayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor,
                freqs: torch.Tensor, attend=attention) -> torch.Tensor:
        """x [B, L, D] fp32 residual stream, e0 [B, 6, D] fp32, context [B, Lc, D] -> [B, L, D] fp32."""
        dt = self.modulation.dtype
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation.float() + e0).chunk(6, dim=1)
        y = self.self_attn((self.norm1(x) * (1 + scale_sa) + shift_sa).to(dt), freqs, attend)
        x = x + y.float() * gate_sa
        x = x + self.cross_attn(self.norm3(x).to(dt), context).float()
        y = self.ffn((self.norm2(x) * (1 + scale_ff) + shift_ff).to(dt))
        return x + y.float() * gate_ff


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] fp32, e [B, D] fp32 (time embedding, before time_projection) -> [B, L, out*prod(patch)] fp32."""
        shift, scale = (self.modulation.float() + e.unsqueeze(1)).chunk(2, dim=1)
        return _linear_fp32(self.head, self.norm(x) * (1 + scale) + shift)


class MLPProj(nn.Module):
    """CLIP image tokens -> DiT width: LayerNorm, Linear, GELU (exact), Linear, LayerNorm (torch eps 1e-5)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            WanLayerNorm(in_dim, eps=1e-5, elementwise_affine=True), nn.Linear(in_dim, in_dim), nn.GELU(),
            nn.Linear(in_dim, out_dim), WanLayerNorm(out_dim, eps=1e-5, elementwise_affine=True))

    def forward(self, clip_fea: torch.Tensor) -> torch.Tensor:
        """clip_fea [B, 257, image_dim] -> [B, 257, D]."""
        return self.proj(clip_fea)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
class WanDiT(nn.Module):
    """Wan2.1 DiT (``WanModel``), T2V or I2V after ``cfg.model_type``.

    Builds on any device, including meta (``with torch.device("meta"): WanDiT(cfg)``). RoPE tables are
    not parameters: they are built on first use per (f, h, w) grid and device and cached on the instance.
    ``sequence_parallel``: None, or a callable L -> token layout (see :class:`LocalTokens`) set by a
    sequence-parallel group on each of its ranks.
    """

    _ROPE_CACHE_SIZE = 8

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([WanAttentionBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        if cfg.is_i2v:
            self.img_emb = MLPProj(cfg.image_dim, dim)
        self._rope_cache: dict[tuple, torch.Tensor] = {}
        self.sequence_parallel: Callable[[int], LocalTokens] | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def rope(self, f: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Cached ``rope_freqs`` for an (f, h, w) grid -> complex128 [f*h*w, 1, d/2]."""
        key = (f, h, w, str(device))
        freqs = self._rope_cache.get(key)
        if freqs is None:
            if len(self._rope_cache) >= self._ROPE_CACHE_SIZE:
                self._rope_cache.pop(next(iter(self._rope_cache)))
            freqs = self._rope_cache[key] = rope_freqs(self.cfg.head_dim, f, h, w, device)
        return freqs

    def embed_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B] -> (e [B, D], e0 [B, 6, D]), both fp32.

        Row by row: a [1, K] matmul may round differently from the same row inside a [B, K] one (CPU BLAS uses
        another kernel for one row), and a request's output must not depend on what it was batched with."""
        rows = []
        for t_row in t.split(1):
            e = _linear_fp32(self.time_embedding[2], F.silu(_linear_fp32(
                self.time_embedding[0], sinusoidal_embedding_1d(self.cfg.freq_dim, t_row).float())))
            rows.append((e, _linear_fp32(self.time_projection[1], F.silu(e))))
        e, e0 = (torch.cat(parts) for parts in zip(*rows))
        return e, e0.unflatten(1, (6, self.cfg.dim))

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in_dim, F, H, W] -> tokens [B, L, D] fp32: ``patch_embedding`` (a Conv3d whose stride equals its
        kernel) computed as one matmul over the flattened patches, which gives every batch row the same rounding
        as when it runs alone (CPU conv kernels do not)."""
        (pt, ph, pw), conv = self.cfg.patch_size, self.patch_embedding
        b, c, nf, nh, nw = x.shape
        patches = (x.to(self.dtype).reshape(b, c, nf // pt, pt, nh // ph, ph, nw // pw, pw)
                   .permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c * pt * ph * pw))
        return F.linear(patches, conv.weight.flatten(1), conv.bias).float()

    def embed_context(self, context: torch.Tensor, clip_fea: torch.Tensor | None = None) -> torch.Tensor:
        """context [B, L<=text_len, text_dim] (+ clip_fea [B, 257, image_dim]) -> [B, (257 +) text_len, D]."""
        cfg = self.cfg
        context = F.pad(context.to(self.dtype), (0, 0, 0, cfg.text_len - context.shape[1]))
        context = self.text_embedding(context)
        if cfg.is_i2v:
            context = torch.cat([self.img_emb(clip_fea.to(self.dtype)), context], dim=1)
        return context

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                     clip_fea: torch.Tensor | None = None, y: torch.Tensor | None = None) -> None:
        """Raise ValueError naming the first malformed input of :meth:`forward`, before any computation (a
        sequence-parallel leader checks a call this way before its workers see it)."""
        cfg = self.cfg
        if cfg.is_i2v:
            if y is None:
                raise ValueError("an i2v model needs y [B, 20, F, H, W] (mask + image latent)")
            if x.ndim != 5 or y.ndim != 5 or (x.shape[0], *x.shape[2:]) != (y.shape[0], *y.shape[2:]):
                raise ValueError(f"x {list(x.shape)} and y {list(y.shape)} must share B, F, H, W")
            x_shape = [x.shape[0], x.shape[1] + y.shape[1], *x.shape[2:]]
        else:
            x_shape = list(x.shape)
        if len(x_shape) != 5 or x_shape[1] != cfg.in_dim:
            raise ValueError(f"x (+ y) must be [B, {cfg.in_dim}, F, H, W], got {x_shape}")
        b, (nf, nh, nw) = x_shape[0], x_shape[2:]
        if nf % cfg.patch_size[0] or nh % cfg.patch_size[1] or nw % cfg.patch_size[2]:
            raise ValueError(f"latent F/H/W {nf}/{nh}/{nw} must be multiples of patch_size {cfg.patch_size}")
        if t.numel() not in (1, b):
            raise ValueError(f"t must hold 1 or B = {b} timesteps, got shape {list(t.shape)}")
        if (context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.text_dim
                or context.shape[1] > cfg.text_len):
            raise ValueError(f"context must be [B = {b}, <= {cfg.text_len}, {cfg.text_dim}], got {list(context.shape)}")
        if cfg.is_i2v and (clip_fea is None or clip_fea.ndim != 3 or clip_fea.shape[0] != b
                           or clip_fea.shape[-1] != cfg.image_dim):
            got = None if clip_fea is None else list(clip_fea.shape)
            raise ValueError(f"an i2v model needs clip_fea [B = {b}, 257, {cfg.image_dim}], got {got}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                clip_fea: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Flow prediction (noise - x0).

        x [B, 16, F, H, W] noisy latent; t [B] float timesteps; context [B, L, text_dim], L <= text_len
        (zero-padded here); i2v: clip_fea [B, 257, image_dim], y [B, 20, F, H, W] (mask 4 + image latent 16).
        Returns [B, out_dim, F, H, W] float32.
        """
        self.check_inputs(x, t, context, clip_fea, y)
        cfg = self.cfg
        if cfg.is_i2v:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        pt, ph, pw = cfg.patch_size
        b, _, nf, nh, nw = x.shape
        f, h, w = nf // pt, nh // ph, nw // pw
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)
        tokens = LOCAL_TOKENS if self.sequence_parallel is None else self.sequence_parallel(f * h * w)

        x = self.embed_patches(x)  # [B, L, D]
        e, e0 = self.embed_time(t)
        context = self.embed_context(context, clip_fea)
        x, freqs = tokens.shard(x, self.rope(f, h, w, x.device))  # this process's tokens and their rotations
        for block in self.blocks:
            x = block(x, e0, context, freqs, tokens.attend)
        x = tokens.gather(self.head(x, e))  # [B, L, out*pt*ph*pw]
        return self.unpatchify(x, (f, h, w))

    def compile_blocks(self, **options) -> WanDiT:
        """``torch.compile`` every transformer block in place (regional compilation: one graph, reused by all
        blocks), fusing the fp32 modulation / norm / gating elementwise work around the matmuls. Opt-in
        (``RunConfig.compile_dit``); the first forward per geometry pays the compile time."""
        for block in self.blocks:
            block.compile(**options)
        return self

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """x [B, f*h*w, out*pt*ph*pw] -> [B, out, f*pt, h*ph, w*pw]."""
        (f, h, w), (pt, ph, pw) = grid, self.cfg.patch_size
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, self.cfg.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(x.shape[0], self.cfg.out_dim, f * pt, h * ph, w * pw)
