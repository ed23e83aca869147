"""Wan2.1 VAE (``Wan2.1_VAE.pth``) and the decoder a run decodes with (the VAE, or the opt-in taew2_1 tiny decoder)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import CheckpointError
from ..models.tiny_vae import TinyVAEDecoder
from ..models.vae import WanVAE
from .files import assign_checked, load_state_dict_file
from .layout import VAE_FILE
from .policy import weights_dtype
from .tiny_vae import load_tiny_vae_from_run

__all__ = ["load_vae", "load_vae_from_dir", "load_decoder"]


def load_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> WanVAE:
    """Load ``Wan2.1_VAE.pth`` (or a same-layout file with another base width, e.g. 8 or 24) strictly."""
    path = Path(path)
    sd = load_state_dict_file(path)
    width = sd.get("encoder.conv1.weight")
    with torch.device("meta"):
        model = WanVAE(dim=96 if width is None else int(width.shape[0]))  # base width, 96 for Wan2.1_VAE.pth
    return assign_checked(model, sd, [path], "WanVAE", device, dtype)


def load_vae_from_dir(model_dir: str | Path, device: str | torch.device = "cpu") -> WanVAE:
    """``<model_dir>/Wan2.1_VAE.pth`` in the policy's dtype (fp32)."""
    path = Path(model_dir) / VAE_FILE
    if not path.is_file():
        raise CheckpointError(f"VAE weights not found: {path} (expected Wan2.1's {VAE_FILE} in the model directory)")
    return load_vae(path, device=device, dtype=weights_dtype("vae", device))


def load_decoder(model_dir: str | Path, run: RunConfig, device: str | torch.device = "cpu") -> WanVAE | TinyVAEDecoder:
    """What latents are decoded with: the full VAE, or the taew2_1 tiny decoder when ``run.use_tae`` is set.

    Both take normalised latents [16, t, h, w] and return ``decode_to_uint8`` frames [1 + 4(t-1), 8h, 8w, 3]."""
    if run.use_tae:
        return load_tiny_vae_from_run(model_dir, run, device)
    return load_vae_from_dir(model_dir, device)
