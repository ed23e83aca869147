"""GPU memory plan: what each served model needs on its device, computed before it loads (no torch at import).

need = weights + activation peak at the deployment's largest geometry + one CUDA context (every served model is its
own process, each holding its own context and its own caching-allocator peak, and they run concurrently: a DiT step
of one request overlaps the VAE decode of another, so the needs of the models on one GPU add up).

Weights, from the architecture (``config.json`` for the DiT; the released UMT5-XXL, CLIP ViT-H/14 and Wan VAE sizes
for the rest) and the dtype of ``loaders/policy.py`` (bf16 DiT / UMT5, fp32 VAE / CLIP; an fp8 DiT keeps its block
linears as 1-byte weights + an fp32 scale per output row, everything else bf16).

Activation peaks (formulas; constants calibrated on the in-process H200 run of bench/gpu_check.py, not served):

* DiT, per batch row: ``36 B x tokens x dim`` with tokens = (1 + (F-1)/4) x H/16 x W/16 (VAE stride 4x8x8, patch
  1x2x2). 36 B per token per model dim = fp32 residual + norm/modulation copies (12), their bf16 cast (2), q/k/v (6)
  and RoPE's float64 copy and complex product (16); attention is O(tokens) (flash / cuDNN SDPA). Rows = requests
  stacked into one DiT call (``max_jobs_per_call``) x 2 with CFG. At 480x832x81 (32760 tokens) it gives 1.69 GiB
  (1.3B; measured 1.7) and 5.6 GiB (14B; measured 5.1).
* VAE decode: ``23,150 B x H x W`` (the full-resolution stages of the causal decoder, one chunk at a time; measured
  8.7 GiB at 480x832x81 above the weights) + the uint8 frames F x H x W x 3.
* VAE encode (I2V conditioning video, in wan_image_encoder): assumed equal to the decode peak (not measured).
* UMT5: 2 rows x 512 tokens x (16 d_model + 6 d_ff) x 2 B; CLIP: 257 tokens x (16 width + 6 mlp) x 4 B.
* CUDA context + allocator slack: 1 GiB per model process (assumed, not measured).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from .config import ConfigError, DiTConfig

__all__ = ["Geometry", "ModelMemory", "MemoryPlanError", "dit_params", "dit_weight_bytes", "dit_activation_bytes",
           "dit_memory", "umt5_params", "clip_params", "text_encoder_memory", "image_encoder_memory",
           "vae_decoder_memory", "vae_decode_peak", "cuda_free_memory", "gib", "GiB", "DTYPE_BYTES",
           "CUDA_CONTEXT_BYTES"]

GiB = 1 << 30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
CUDA_CONTEXT_BYTES = 1 * GiB
DIT_BYTES_PER_TOKEN_DIM = 36
VAE_BYTES_PER_PIXEL = 23_150

# Released component sizes (tests/test_memory.py checks them against the modules built at full size on meta).
UMT5_XXL = dict(vocab=256384, d_model=4096, d_kv=64, heads=64, d_ff=10240, layers=24, buckets=32, text_len=512)
CLIP_VIT_H_14 = dict(width=1280, layers=32, mlp=5120, patch=14, image_size=224)
WAN_VAE_PARAMS = 126_892_531  # Wan2.1_VAE.pth (encoder + decoder + the two 1x1 convs), base width 96


class MemoryPlanError(ConfigError):
    """A model would not fit in the free memory of its device (raised before anything is loaded)."""


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


@dataclass(frozen=True)
class Geometry:
    """The largest video a deployment plans for: height x width pixels, frames."""

    height: int
    width: int
    frames: int

    @property
    def tokens(self) -> int:
        """DiT tokens: latent frames x (H/8/2) x (W/8/2)."""
        return (1 + (self.frames - 1) // 4) * (self.height // 16) * (self.width // 16)

    def __str__(self) -> str:
        return f"{self.height}x{self.width}x{self.frames}"


@dataclass(frozen=True)
class ModelMemory:
    """What one served model needs on its GPU (bytes), with how it was computed."""

    model: str
    weights: int
    activations: int
    note: str
    context: int = CUDA_CONTEXT_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.context

    def describe(self) -> str:
        return (f"{gib(self.total)} = weights {gib(self.weights)} + activations {gib(self.activations)} + "
                f"CUDA context {gib(self.context)} ({self.note})")


# ----------------------------------------------------------------------------------------------
# DiT
# ----------------------------------------------------------------------------------------------
def dit_params(cfg: DiTConfig) -> tuple[int, int, int]:
    """(parameters, of which block-linear weights (what fp8 checkpoints quantize), their output rows)."""
    d, f, t = cfg.dim, cfg.ffn_dim, cfg.freq_dim
    patch = math.prod(cfg.patch_size)
    attn_linears = 8 + (2 if cfg.is_i2v else 0)  # self q/k/v/o, cross q/k/v/o (+ k_img, v_img)
    linear_w = attn_linears * d * d + 2 * d * f
    linear_rows = attn_linears * d + f + d
    block = (linear_w + attn_linears * d + f + d            # + their biases
             + 4 * d + (d if cfg.is_i2v else 0)             # RMSNorm q/k of self and cross (+ k_img)
             + (2 * d if cfg.cross_attn_norm else 0)        # norm3 (affine LayerNorm)
             + 6 * d)                                       # modulation
    total = (cfg.in_dim * d * patch + d                     # patch embedding
             + cfg.text_dim * d + d + d * d + d             # text embedding
             + t * d + d + d * d + d                        # time embedding
             + 6 * d * d + 6 * d                            # time projection
             + cfg.num_layers * block
             + d * cfg.out_dim * patch + cfg.out_dim * patch + 2 * d)  # head
    if cfg.is_i2v:
        c = cfg.image_dim
        total += 2 * c + c * c + c + c * d + d + 2 * d      # img_emb: LN, Linear, Linear, LN
    return total, cfg.num_layers * linear_w, cfg.num_layers * linear_rows


def dit_weight_bytes(cfg: DiTConfig, dtype: str) -> int:
    """Bytes of the DiT's weights held on the GPU; ``fp8``: block linears as fp8 + fp32 row scales, the rest bf16."""
    total, linear_w, linear_rows = dit_params(cfg)
    if dtype == "fp8":
        return linear_w + 4 * linear_rows + 2 * (total - linear_w)
    return DTYPE_BYTES[dtype] * total


def dit_activation_bytes(cfg: DiTConfig, geometry: Geometry, rows: int) -> int:
    """Peak activation bytes of one DiT call of ``rows`` batch rows at ``geometry`` (formula in the module doc)."""
    return rows * DIT_BYTES_PER_TOKEN_DIM * geometry.tokens * cfg.dim


def dit_memory(model: str, cfg: DiTConfig, dtype: str, geometry: Geometry, rows: int) -> ModelMemory:
    total, _, _ = dit_params(cfg)
    return ModelMemory(model, dit_weight_bytes(cfg, dtype), dit_activation_bytes(cfg, geometry, rows),
                       f"{cfg.model_type} DiT dim {cfg.dim}, {cfg.num_layers} layers, {total / 1e9:.2f} B params "
                       f"{dtype}; {rows} row(s) x {geometry.tokens} tokens at {geometry}")


# ----------------------------------------------------------------------------------------------
# Encoders and VAE (released sizes)
# ----------------------------------------------------------------------------------------------
def umt5_params(c: dict = UMT5_XXL) -> int:
    d, inner = c["d_model"], c["heads"] * c["d_kv"]
    layer = 4 * d * inner + c["buckets"] * c["heads"] + 3 * d * c["d_ff"] + 2 * d
    return c["vocab"] * d + c["layers"] * layer + d


def clip_params(c: dict = CLIP_VIT_H_14) -> int:
    w, mlp = c["width"], c["mlp"]
    positions = (c["image_size"] // c["patch"]) ** 2 + 1
    layer = 4 * (w * w + w) + w * mlp + mlp + mlp * w + w + 4 * w
    return w + 3 * w * c["patch"] ** 2 + positions * w + 2 * w + c["layers"] * layer + 2 * w


def text_encoder_memory(model: str, dtype: str = "bf16") -> ModelMemory:
    c = UMT5_XXL
    act = 2 * c["text_len"] * (16 * c["d_model"] + 6 * c["d_ff"]) * 2
    return ModelMemory(model, DTYPE_BYTES[dtype] * umt5_params(), act,
                       f"UMT5-XXL encoder {umt5_params() / 1e9:.2f} B params {dtype}")


def vae_decode_peak(geometry: Geometry) -> int:
    px = geometry.height * geometry.width
    return VAE_BYTES_PER_PIXEL * px + geometry.frames * px * 3


def vae_decoder_memory(model: str, geometry: Geometry) -> ModelMemory:
    return ModelMemory(model, 4 * WAN_VAE_PARAMS, vae_decode_peak(geometry),
                       f"Wan VAE {WAN_VAE_PARAMS / 1e6:.0f} M params fp32; decode at {geometry}")


def image_encoder_memory(model: str, geometry: Geometry) -> ModelMemory:
    """CLIP ViT-H/14 (fp32) + the VAE (fp32) that encodes the conditioning video, and the VAE encode peak."""
    c = CLIP_VIT_H_14
    clip_act = 257 * (16 * c["width"] + 6 * c["mlp"]) * 4
    return ModelMemory(model, 4 * (clip_params() + WAN_VAE_PARAMS), clip_act + vae_decode_peak(geometry),
                       f"CLIP ViT-H/14 {clip_params() / 1e6:.0f} M + Wan VAE {WAN_VAE_PARAMS / 1e6:.0f} M params "
                       f"fp32; VAE encode at {geometry} (assumed = decode peak)")


# ----------------------------------------------------------------------------------------------
# Free memory (the check itself: wan_distill.deployment.check_memory_plan, before each GPU model loads)
# ----------------------------------------------------------------------------------------------
def cuda_free_memory(index: int) -> tuple[int, int]:
    """(free, total) bytes of GPU ``index`` (``torch.cuda.mem_get_info``)."""
    import torch  # only where a GPU check runs

    return torch.cuda.mem_get_info(index)
