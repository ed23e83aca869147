"""taehv's ``taew2_1.pth`` (LightX2V ``use_tae`` / ``tae_path``; older configs ``use_tiny_vae`` / ``tiny_vae_path``).

The file holds ``encoder.*`` and ``decoder.*``; only the decoder is used (I2V conditioning encodes the image with the
full Wan VAE), so ``encoder.*`` keys are accepted and dropped, and every ``decoder.*`` key must match exactly. Widths
and temporal strides are read from the file's shapes, so same-layout files of other widths (the tiny test files) load
too. ``.pth`` (weights only) and ``.safetensors`` are both read.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import CheckpointError, key_mismatch_error
from ..models.tiny_vae import TinyVAEDecoder
from .files import assign_checked, load_state_dict_file
from .layout import TAE_FILE
from .policy import weights_dtype

log = logging.getLogger(__name__)

__all__ = ["load_tiny_vae", "find_tiny_vae", "load_tiny_vae_from_run"]

_CONV_IN, _WIDTH_CONVS, _TGROWS = "decoder.1.weight", ("decoder.8.weight", "decoder.14.weight", "decoder.20.weight"), (
    "decoder.7.conv.weight", "decoder.13.conv.weight", "decoder.19.conv.weight")


def _architecture(sd: dict[str, torch.Tensor], path: Path) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(latent channels, widths c0..c3, time strides) from the decoder's weight shapes."""
    missing = [k for k in (_CONV_IN, *_WIDTH_CONVS, *_TGROWS) if k not in sd]
    if missing:
        raise key_mismatch_error("taew2_1 tiny decoder", [path], missing, [],
                                 hint="not a taehv decoder file (cannot read its widths)")
    c0, latent = sd[_CONV_IN].shape[:2]
    widths = (int(c0), *(int(sd[k].shape[0]) for k in _WIDTH_CONVS))
    strides = []
    for key, c in zip(_TGROWS, widths[:3]):
        rows = int(sd[key].shape[0])
        if rows % c:
            raise CheckpointError(f"{path}: {key} {tuple(sd[key].shape)} is not a multiple of its width {c}")
        strides.append(rows // c)
    return int(latent), widths, tuple(strides)


def load_tiny_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  denormalize: bool | None = None) -> TinyVAEDecoder:
    """Load the decoder half of a taew2_1-layout file strictly (``encoder.*`` dropped).

    ``denormalize`` (LightX2V's ``need_scaled``): None -> True only for LightX2V's ``lighttae*`` files, which decode
    de-normalised latents."""
    path = Path(path)
    sd = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("encoder.")}
    latent, widths, strides = _architecture(sd, path)
    if denormalize is None:
        denormalize = "lighttae" in path.name
    with torch.device("meta"):
        model = TinyVAEDecoder(latent, widths, strides, denormalize=denormalize)
    model = assign_checked(model, sd, [path], "taew2_1 tiny decoder", device, dtype)
    log.info("tiny decoder %s: widths %s, time strides %s, %s latents", path, widths, strides,
             "de-normalised" if denormalize else "normalised")
    return model


def find_tiny_vae(model_dir: str | Path, run: RunConfig) -> Path:
    """``run.tae_path`` (as given, else under the model root), or ``<model_dir>/taew2_1.pth``."""
    model_dir = Path(model_dir)
    if run.tae_path is not None:
        p = Path(run.tae_path)
        tried = [p] if p.is_absolute() else [p, model_dir / p]
        what = f"tae_path in {run.source}"
    else:
        tried = [model_dir / TAE_FILE]
        what = f"use_tae in {run.source} without tae_path"
    for p in tried:
        if p.is_file():
            return p
    raise CheckpointError(f"tiny decoder weights not found ({what}); looked at: {', '.join(str(p) for p in tried)}")


def load_tiny_vae_from_run(model_dir: str | Path, run: RunConfig, device: str | torch.device = "cpu") -> TinyVAEDecoder:
    return load_tiny_vae(find_tiny_vae(model_dir, run), device, weights_dtype("tiny_vae", device), run.need_scaled)
