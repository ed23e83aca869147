"""CLIP ViT-H/14 image encoder for I2V (visual tower of Wan2.1's
``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``) served through transformers' ``CLIPVisionModel``.

Wan ``visual.*`` -> HF ``CLIPVisionModel`` (transformers 5 names, no ``vision_model.`` prefix):

    visual.patch_embedding.weight        [W,3,P,P]  -> embeddings.patch_embedding.weight   (both bias-free)
    visual.cls_embedding                 [1,1,W]    -> embeddings.class_embedding [W]
    visual.pos_embedding                 [1,N,W]    -> embeddings.position_embedding.weight [N,W]
    visual.pre_norm.*                               -> pre_layrnorm.*
    visual.transformer.{i}.norm1.*                  -> encoder.layers.{i}.layer_norm1.*
    visual.transformer.{i}.attn.to_qkv.*  [3W,..]   -> encoder.layers.{i}.self_attn.{q,k,v}_proj.*  (thirds)
    visual.transformer.{i}.attn.proj.*              -> encoder.layers.{i}.self_attn.out_proj.*
    visual.transformer.{i}.norm2.*                  -> encoder.layers.{i}.layer_norm2.*
    visual.transformer.{i}.mlp.{0,2}.*              -> encoder.layers.{i}.mlp.{fc1,fc2}.*
    visual.post_norm.*                              -> post_layernorm.*   (never used for Wan's features)

Present in the file but unused (accepted and dropped): ``textual.*``, ``log_scale``, ``visual.head``.
Wan's features = output of the first N-1 blocks (HF ``hidden_states[-2]``), all 257 tokens, no post-norm.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import key_mismatch_error

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_DIM = 80

_BLOCK = re.compile(r"^visual\.transformer\.(\d+)\.(.+)$")
BLOCK_RENAMES: dict[str, str] = {
    "norm1.weight": "layer_norm1.weight", "norm1.bias": "layer_norm1.bias",
    "attn.proj.weight": "self_attn.out_proj.weight", "attn.proj.bias": "self_attn.out_proj.bias",
    "norm2.weight": "layer_norm2.weight", "norm2.bias": "layer_norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight", "mlp.0.bias": "mlp.fc1.bias",
    "mlp.2.weight": "mlp.fc2.weight", "mlp.2.bias": "mlp.fc2.bias",
}
TOP_RENAMES: dict[str, str] = {
    "visual.patch_embedding.weight": "embeddings.patch_embedding.weight",
    "visual.pre_norm.weight": "pre_layrnorm.weight", "visual.pre_norm.bias": "pre_layrnorm.bias",
    "visual.post_norm.weight": "post_layernorm.weight", "visual.post_norm.bias": "post_layernorm.bias",
}


def is_dropped_clip_key(key: str) -> bool:
    """Keys of the real file that the vision features never use: text tower, logit scale, visual projection."""
    return key.startswith("textual.") or key in ("log_scale", "visual.head")


def wan_clip_to_hf(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Wan CLIP state dict -> (``CLIPVisionModel`` state dict, unknown Wan keys). Dropped keys are skipped silently."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for k, v in sd.items():
        if is_dropped_clip_key(k):
            continue
        if k in TOP_RENAMES:
            out[TOP_RENAMES[k]] = v
        elif k == "visual.cls_embedding":                     # [1,1,W] -> [W]
            out["embeddings.class_embedding"] = v.reshape(-1)
        elif k == "visual.pos_embedding":                     # [1,N,W] -> [N,W]
            out["embeddings.position_embedding.weight"] = v.reshape(v.shape[-2], v.shape[-1])
        elif (m := _BLOCK.match(k)) and m.group(2) in BLOCK_RENAMES:
            out[f"encoder.layers.{m.group(1)}.{BLOCK_RENAMES[m.group(2)]}"] = v
        elif m and m.group(2) in ("attn.to_qkv.weight", "attn.to_qkv.bias"):
            kind = m.group(2).rsplit(".", 1)[1]               # rows: q | k | v
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[f"encoder.layers.{m.group(1)}.self_attn.{name}.{kind}"] = part
        else:
            unknown.append(k)
    return out, unknown


def hf_clip_key_to_wan(key: str) -> str:
    """The Wan key an HF ``CLIPVisionModel`` key is read from (q/k/v projections -> the fused ``to_qkv``)."""
    inv_top = {v: k for k, v in TOP_RENAMES.items()}
    inv_top.update({"embeddings.class_embedding": "visual.cls_embedding",
                    "embeddings.position_embedding.weight": "visual.pos_embedding"})
    if key in inv_top:
        return inv_top[key]
    m = re.match(r"^encoder\.layers\.(\d+)\.(.+)$", key)
    if m:
        inv = {v: k for k, v in BLOCK_RENAMES.items()}
        sub = m.group(2)
        if sub in inv:
            return f"visual.transformer.{m.group(1)}.{inv[sub]}"
        qkv = re.match(r"^self_attn\.[qkv]_proj\.(weight|bias)$", sub)
        if qkv:
            return f"visual.transformer.{m.group(1)}.attn.to_qkv.{qkv.group(1)}"
    raise KeyError(f"no Wan CLIP key for {key}")


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
def _vision_config(width: int, layers: int, mlp: int, patch: int, image_size: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=width, intermediate_size=mlp, num_attention_heads=max(1, width // HEAD_DIM),
        num_hidden_layers=layers, patch_size=patch, image_size=image_size, num_channels=3, hidden_act="gelu",
        layer_norm_eps=1e-5, projection_dim=1024, attention_dropout=0.0,
    )


def vit_h_14_config():
    """Wan's CLIP visual tower: ViT-H/14, width 1280, 32 layers, 16 heads (x80), mlp 5120, 224 px, exact GELU."""
    return _vision_config(width=1280, layers=32, mlp=5120, patch=14, image_size=224)


def clip_vision_config_from_wan(sd: dict[str, Tensor], source: str | Path = "<state dict>"):
    """Infer the vision config from a Wan CLIP state dict's shapes (heads = width // 80, at least 1)."""
    need = ["visual.patch_embedding.weight", "visual.pos_embedding", "visual.transformer.0.mlp.0.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise key_mismatch_error("CLIP image encoder", [source], missing, [],
                                 hint="not a Wan CLIP file (cannot infer its config)")
    width, _, patch, _ = sd["visual.patch_embedding.weight"].shape
    grid = math.isqrt(sd["visual.pos_embedding"].shape[-2] - 1)
    layers = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK.match(k)))
    return _vision_config(width=width, layers=layers, mlp=sd["visual.transformer.0.mlp.0.weight"].shape[0],
                          patch=patch, image_size=grid * patch)


# ------------------------------------------------------------------------------------------------
# Encoder
# ------------------------------------------------------------------------------------------------
class WanImageEncoder:
    """Image ``[3,H,W]`` in [-1,1] -> CLIP features ``[257, width]`` float32 on CPU (Wan ``clip.visual``)."""

    def __init__(self, model):
        self.model = model.eval()
        cfg = model.config
        self.image_size = cfg.image_size
        self.width = cfg.hidden_size
        self.num_tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
        self.mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        return self.model.embeddings.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embeddings.patch_embedding.weight.dtype

    def preprocess(self, image: Tensor) -> Tensor:
        """[3,H,W] in [-1,1] -> [1,3,S,S] normalized: bicubic squash (no crop, no antialias), ->[0,1], OpenAI mean/std."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
        x = image[None].to(self.device, torch.float64 if self.dtype == torch.float64 else torch.float32)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return (x * 0.5 + 0.5 - self.mean.to(x)) / self.std.to(x)

    @torch.inference_mode()
    def encode(self, image: Tensor) -> Tensor:
        x = self.preprocess(image).to(self.dtype)
        out = self.model(pixel_values=x, output_hidden_states=True)
        return out.hidden_states[-2][0].float().cpu()                 # [257, width], penultimate block

    __call__ = encode
