"""Test-only reference math for Wan's T5 encoder and CLIP visual tower, computed DIRECTLY from Wan-key state dicts.

Written from the published formulas of Wan2.1's UMT5 and CLIP encoders, in float64, with no
transformers / wan_distill code involved, so it is an independent check of the HF-mapped models.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _f64(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.double() for k, v in sd.items()}


# ------------------------------------------------------------------------------------------------
# T5 (UMT5) encoder
# ------------------------------------------------------------------------------------------------
def t5_relative_bucket(rel: Tensor, num_buckets: int = 32, max_dist: int = 128) -> Tensor:
    """Bidirectional bucket of ``rel = k_pos - q_pos``: half the buckets per sign; exact below 8, log-spaced to 128."""
    nb = num_buckets // 2
    bucket = (rel > 0).long() * nb
    r = rel.abs()
    max_exact = nb // 2
    large = max_exact + (torch.log(r.clamp(min=1).double() / max_exact) / math.log(max_dist / max_exact)
                         * (nb - max_exact)).long()
    large = large.clamp(max=nb - 1)
    return bucket + torch.where(r < max_exact, r, large)


def _rms(x: Tensor, w: Tensor, eps: float = 1e-6) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _gelu_tanh(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def t5_encoder_reference(wan_sd: dict[str, Tensor], ids: Tensor, mask: Tensor) -> Tensor:
    """ids, mask [B, L] -> hidden [B, L, D] (float64), Wan ``T5Encoder`` math."""
    sd = _f64(wan_sd)
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    b, L = ids.shape
    x = sd["token_embedding.weight"][ids]                                  # [B, L, D], no scaling
    pos = torch.arange(L)
    buckets = t5_relative_bucket(pos[None, :] - pos[:, None])              # [Lq, Lk]
    neg = torch.finfo(torch.float64).min
    for i in range(layers):
        p = f"blocks.{i}."
        heads = sd[p + "pos_embedding.embedding.weight"].shape[1]
        h = _rms(x, sd[p + "norm1.weight"])
        q, k, v = (
            (h @ sd[p + f"attn.{n}.weight"].T).view(b, L, heads, -1).transpose(1, 2) for n in "qkv"
        )                                                                   # [B, H, L, d]
        bias = sd[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)[None]   # [1, H, Lq, Lk]
        scores = q @ k.transpose(-1, -2) + bias                             # no 1/sqrt(d)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, neg)
        a = scores.softmax(-1) @ v                                          # [B, H, L, d]
        x = x + a.transpose(1, 2).reshape(b, L, -1) @ sd[p + "attn.o.weight"].T
        h = _rms(x, sd[p + "norm2.weight"])
        gated = (h @ sd[p + "ffn.fc1.weight"].T) * _gelu_tanh(h @ sd[p + "ffn.gate.0.weight"].T)
        x = x + gated @ sd[p + "ffn.fc2.weight"].T
    return _rms(x, sd["norm.weight"])


# ------------------------------------------------------------------------------------------------
# CLIP visual tower
# ------------------------------------------------------------------------------------------------
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess_reference(image: Tensor, size: int) -> Tensor:
    """[3,H,W] in [-1,1] -> [1,3,size,size]: bicubic squash, to [0,1], OpenAI normalize (float64)."""
    x = F.interpolate(image[None].double(), size=(size, size), mode="bicubic", align_corners=False)
    x = x * 0.5 + 0.5
    return (x - torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)) / torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)


def clip_visual_reference(wan_sd: dict[str, Tensor], image: Tensor, head_dim: int = 80) -> Tensor:
    """[3,H,W] in [-1,1] -> [N, W] (float64): Wan ``VisionTransformer`` with ``use_31_block`` (first N-1 blocks)."""
    sd = _f64({k: v for k, v in wan_sd.items() if k.startswith("visual.")})
    w = sd["visual.patch_embedding.weight"]
    width, patch = w.shape[0], w.shape[-1]
    grid = math.isqrt(sd["visual.pos_embedding"].shape[1] - 1)
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("visual.transformer."))
    heads = max(1, width // head_dim)
    x = F.conv2d(clip_preprocess_reference(image, grid * patch), w, stride=patch)   # [1, W, g, g]
    x = x.flatten(2).transpose(1, 2)                                                 # [1, g*g, W]
    x = torch.cat([sd["visual.cls_embedding"], x], dim=1) + sd["visual.pos_embedding"]

    def ln(t: Tensor, name: str) -> Tensor:
        return F.layer_norm(t, (width,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    x = ln(x, "visual.pre_norm")
    n = x.shape[1]
    for i in range(layers - 1):
        p = f"visual.transformer.{i}."
        qkv = ln(x, p + "norm1") @ sd[p + "attn.to_qkv.weight"].T + sd[p + "attn.to_qkv.bias"]
        q, k, v = qkv.view(1, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)   # each [1, H, N, d]
        a = ((q @ k.transpose(-1, -2)) / math.sqrt(width // heads)).softmax(-1) @ v
        x = x + a.transpose(1, 2).reshape(1, n, width) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = ln(x, p + "norm2") @ sd[p + "mlp.0.weight"].T + sd[p + "mlp.0.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))                              # exact GELU
        x = x + h @ sd[p + "mlp.2.weight"].T + sd[p + "mlp.2.bias"]
    return x[0]
