"""CLIP ViT-H/14 image encoder (I2V): the visual tower of Wan's
``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError, key_mismatch_error
from ..models.image_encoder import WanImageEncoder, clip_vision_config_from_wan, hf_clip_key_to_wan, wan_clip_to_hf
from .files import assign_checked, load_state_dict_file
from .layout import CLIP_FILE
from .policy import weights_dtype

__all__ = ["load_clip_vision", "load_image_encoder"]


def load_clip_vision(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load the visual tower of a Wan CLIP ``.pth`` as ``transformers.CLIPVisionModel`` (eval mode).

    Accepted and dropped: ``textual.*``, ``log_scale``, ``visual.head``; any other key must match exactly."""
    from transformers import CLIPVisionModel

    path = Path(path)
    wan_sd = load_state_dict_file(path)
    cfg = clip_vision_config_from_wan(wan_sd, path)
    hf_sd, unknown = wan_clip_to_hf(wan_sd)
    with torch.device("meta"):
        model = CLIPVisionModel(cfg)
    expected = model.state_dict().keys()
    if "post_layernorm.weight" not in hf_sd:  # unused by Wan's features: tolerate files without it (identity LN)
        hf_sd["post_layernorm.weight"] = torch.ones(cfg.hidden_size)
        hf_sd["post_layernorm.bias"] = torch.zeros(cfg.hidden_size)
    missing = {hf_clip_key_to_wan(k) for k in expected - hf_sd.keys()}
    unknown += [k for k in hf_sd.keys() - expected]
    if missing or unknown:
        raise key_mismatch_error("CLIP image encoder", [path], missing, unknown,
                                 hint="accepted extra keys: textual.*, log_scale, visual.head")
    del wan_sd
    assign_checked(model, hf_sd, [path], "CLIP image encoder", device, dtype)
    emb = model.embeddings  # non-persistent buffer stayed on meta
    emb.register_buffer("position_ids", torch.arange(emb.num_positions, device=device)[None], persistent=False)
    return model.eval()


def load_image_encoder(model_dir: str | Path, device: str | torch.device = "cpu",
                       dtype: torch.dtype | None = None) -> WanImageEncoder:
    """``<model_dir>/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``; ``dtype`` defaults to the policy."""
    path = Path(model_dir) / CLIP_FILE
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: missing CLIP image encoder weights {path} (needed for i2v)")
    return WanImageEncoder(load_clip_vision(path, device, dtype or weights_dtype("image_encoder", device)))
