"""Find, read and strictly load Wan2.1 DiT weights (official, LightX2V distill, single-file).

Layouts understood (first match wins, see :func:`find_dit_weights`):

* ``run.dit_original_ckpt``: one file, or a folder of ``*.safetensors`` (LightX2V ``Wan2.1-Distill-Models``);
* distill run without LoRAs: ``<model_dir>/distill_models/distill_model.safetensors``, then ``.pt``, then
  ``<model_dir>/distill_model.pt`` (the first T2V release);
* otherwise the base model: ``diffusion_pytorch_model*.safetensors`` (sharded via its ``.index.json``).

``.pt/.pth`` files are only ever read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import DiTConfig, RunConfig
from ..errors import CheckpointError
from ..models.dit import WanDiT
from .files import (DIT_PREFIXES, assign_checked, check_state_dict, common_prefix, iter_state_dict_file,
                    load_state_dict_file, strip_prefix)
from .lora import merge_loras

log = logging.getLogger(__name__)

__all__ = ["load_state_dict_file", "iter_state_dict_file", "strip_prefix", "common_prefix", "find_dit_weights",
           "read_dit_state_dict", "check_state_dict", "assign_checked", "load_dit", "DIT_PREFIXES"]

def _safetensors_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def _base_weights(model_dir: Path) -> list[Path]:
    index = model_dir / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index (needs 'weight_map'): {e}") from None
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        absent = [str(p) for p in files if not p.is_file()]
        if absent:
            raise CheckpointError(f"{index} lists shard(s) that do not exist: {', '.join(absent)}")
        return files
    return sorted(p for p in model_dir.glob("diffusion_pytorch_model*.safetensors") if p.is_file())


def find_dit_weights(model_dir: str | Path, run: RunConfig) -> list[Path]:
    """The DiT weight file(s) this run loads, in order (see module docstring for the search order)."""
    model_dir = Path(model_dir)
    if run.dit_original_ckpt is not None:
        ckpt = Path(run.dit_original_ckpt)
        tried = [ckpt] if ckpt.is_absolute() else [ckpt, model_dir / ckpt]
        for p in tried:
            if p.is_file():
                return [p]
            if p.is_dir():
                files = _safetensors_in(p)
                if not files:
                    raise CheckpointError(f"dit_original_ckpt {p} is a folder without *.safetensors files")
                return files
        raise CheckpointError(f"dit_original_ckpt not found; looked at: {', '.join(str(p) for p in tried)}")

    if run.is_distill and not run.lora_configs:
        candidates = [model_dir / "distill_models" / "distill_model.safetensors",
                      model_dir / "distill_models" / "distill_model.pt",
                      model_dir / "distill_model.pt"]
        for p in candidates:
            if p.is_file():
                return [p]
        raise CheckpointError(
            f"no step-distilled DiT weights in {model_dir}: looked for "
            f"{', '.join(str(p.relative_to(model_dir)) for p in candidates)}. Put the distilled checkpoint there, "
            "or set dit_original_ckpt, or use the base model with the distill LoRA (lora_configs)")

    files = _base_weights(model_dir)
    if not files:
        raise CheckpointError(
            f"no base DiT weights in {model_dir}: looked for diffusion_pytorch_model.safetensors.index.json "
            "and diffusion_pytorch_model*.safetensors")
    return files


# ----------------------------------------------------------------------------------------------
# Strict loading
# ----------------------------------------------------------------------------------------------
def read_dit_state_dict(files: list[Path], device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Read all files tensor by tensor, each cast to (device, dtype) at once; per-file prefix stripped."""
    sd: dict[str, torch.Tensor] = {}
    for path in files:
        raw = {key: (t.to(device=device, dtype=dtype) if t.is_floating_point() else t)
               for key, t in iter_state_dict_file(path)}
        for name, tensor in strip_prefix(raw).items():  # renames keys only, no tensor copy
            if name in sd:
                raise CheckpointError(f"{path}: key {name!r} appears in more than one of {[str(f) for f in files]}")
            sd[name] = tensor
        del raw
    return sd


def load_dit(model_dir: str | Path, run: RunConfig, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> WanDiT:
    """Build the DiT of ``<model_dir>/config.json`` on meta, read its weights, merge LoRAs, load strictly.

    Tensors are cast to ``dtype`` and moved to ``device`` one by one while reading, so only one full copy
    of the model is ever held. LoRAs (``run.lora_configs``) are merged in fp32 and cast back.
    """

    model_dir = Path(model_dir)
    cfg = DiTConfig.from_json(model_dir / "config.json")
    files = find_dit_weights(model_dir, run)
    log.info("loading %s DiT (%d layers, dim %d) from %s", cfg.model_type, cfg.num_layers, cfg.dim,
             ", ".join(str(p) for p in files))
    with torch.device("meta"):
        model = WanDiT(cfg)
    sd = read_dit_state_dict(files, device=device, dtype=dtype)
    check_state_dict(model, sd, files)
    if run.lora_configs:
        merge_loras(sd, run.lora_configs)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False)
