"""Find, read and strictly load Wan2.1 DiT weights (official, LightX2V distill, single-file, quantized).

Layouts understood (first match wins, see :func:`find_dit_weights`):

* ``run.dit_quantized_ckpt`` (with ``dit_quantized``): LightX2V's fp8 / int8 file, or a folder of ``*.safetensors``;
* ``run.dit_original_ckpt``: one file, or a folder of ``*.safetensors`` (LightX2V ``Wan2.1-Distill-Models``);
* distill run without LoRAs: ``<model_dir>/distill_models/distill_model.safetensors``, then ``.pt``, then
  ``<model_dir>/distill_model.pt`` (the first T2V release);
* otherwise the base model: ``diffusion_pytorch_model*.safetensors`` (sharded via its ``.index.json``).

Whichever file is found, fp8 / int8 linears in it are recognised by their dtype and ``.weight_scale`` keys (see
:mod:`.quantized` for what a run then gets). ``.pt/.pth`` files are only ever read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import DiTConfig, RunConfig
from ..errors import CheckpointError
from ..models.dit import WanDiT
from ..models.fp8 import replace_linears
from .files import (DIT_PREFIXES, assign_checked, check_state_dict, common_prefix, iter_state_dict_file,
                    load_state_dict_file, strip_prefix)
from .layout import BASE_INDEX_FILE, BASE_SHARD_GLOB, DIT_CONFIG_FILE, DISTILL_FILES
from .lora import merge_loras, resolve_loras
from .policy import weights_dtype
from .quantized import (block_linears, dequantize_layers, fake_quantize_layers, find_quantized, is_stored_as_is,
                        quantize_layers)

log = logging.getLogger(__name__)

__all__ = ["load_state_dict_file", "iter_state_dict_file", "strip_prefix", "common_prefix", "find_dit_weights",
           "read_dit_state_dict", "check_state_dict", "assign_checked", "load_dit", "DIT_PREFIXES"]


def _find_named(ckpt: Path, model_dir: Path, key: str) -> list[Path]:
    tried = [ckpt] if ckpt.is_absolute() else [ckpt, model_dir / ckpt]
    for p in tried:
        if p.is_file():
            return [p]
        if p.is_dir():
            files = _safetensors_in(p)
            if not files:
                raise CheckpointError(f"{key} {p} is a folder without *.safetensors files")
            return files
    raise CheckpointError(f"{key} not found; looked at: {', '.join(str(p) for p in tried)}")


def _safetensors_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def _base_weights(model_dir: Path) -> list[Path]:
    index = model_dir / BASE_INDEX_FILE
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
    return sorted(p for p in model_dir.glob(BASE_SHARD_GLOB) if p.is_file())


def find_dit_weights(model_dir: str | Path, run: RunConfig) -> list[Path]:
    """The DiT weight file(s) this run loads, in order (see module docstring for the search order)."""
    model_dir = Path(model_dir)
    if run.dit_quantized and run.dit_quantized_ckpt is not None:
        if run.dit_original_ckpt is not None:
            log.info("%s: dit_quantized: loading dit_quantized_ckpt, not dit_original_ckpt", run.source)
        return _find_named(Path(run.dit_quantized_ckpt), model_dir, "dit_quantized_ckpt")
    if run.dit_original_ckpt is not None:
        return _find_named(Path(run.dit_original_ckpt), model_dir, "dit_original_ckpt")

    if run.is_distill and not run.lora_configs:
        candidates = [model_dir / name for name in DISTILL_FILES]
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
            f"no base DiT weights in {model_dir}: looked for {BASE_INDEX_FILE} and {BASE_SHARD_GLOB}")
    return files


# ----------------------------------------------------------------------------------------------
# Strict loading
# ----------------------------------------------------------------------------------------------
def read_dit_state_dict(files: list[Path], device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Read all files tensor by tensor, each cast to (device, dtype) at once; per-file prefix stripped.

    fp8 / int8 weights and their scales keep the file's dtype (they are moved to ``device`` only)."""
    sd: dict[str, torch.Tensor] = {}
    for path in files:
        raw = {}
        for key, t in iter_state_dict_file(path):
            if is_stored_as_is(key, t):
                raw[key] = t.to(device)
            else:
                raw[key] = t.to(device=device, dtype=dtype) if t.is_floating_point() else t
        raw.pop("scaled_fp8", None)  # ComfyUI fp8 marker (no prefix): must not defeat the common-prefix strip
        for name, tensor in strip_prefix(raw).items():  # renames keys only, no tensor copy
            if name in sd:
                raise CheckpointError(f"{path}: key {name!r} appears in more than one of {[str(f) for f in files]}")
            sd[name] = tensor
        del raw
    return sd


def load_dit(model_dir: str | Path, run: RunConfig, device: torch.device | str = "cpu",
             dtype: torch.dtype | None = None, keep_fp8: bool | None = None) -> WanDiT:
    """Build the DiT of ``<model_dir>/config.json`` on meta, read its weights, merge LoRAs, load strictly.

    ``dtype`` defaults to the device policy (:func:`.policy.weights_dtype`); tensors are cast and moved one by one
    while reading, so only one full copy of the model is ever held. LoRAs (``run.lora_configs``, looked up as in
    :func:`.lora.resolve_loras`) are merged in fp32 and cast back. Quantized weights (in the file, or asked for by
    ``run.dit_quantized``) follow :mod:`.quantized`; ``keep_fp8`` overrides "fp8 layers stay fp8" (default: on CUDA).
    """
    model_dir = Path(model_dir)
    dtype = dtype or weights_dtype("dit", device)
    keep_fp8 = torch.device(device).type == "cuda" if keep_fp8 is None else keep_fp8
    run = resolve_loras(run, model_dir)
    cfg = DiTConfig.from_json(model_dir / DIT_CONFIG_FILE)
    files = find_dit_weights(model_dir, run)
    log.info("loading %s DiT (%d layers, dim %d) from %s", cfg.model_type, cfg.num_layers, cfg.dim,
             ", ".join(str(p) for p in files))
    with torch.device("meta"):
        model = WanDiT(cfg)
    sd = read_dit_state_dict(files, device=device, dtype=dtype)
    fp8_layers = _prepare_quantized(model, sd, run, files, dtype, keep_fp8)
    if fp8_layers:
        replace_linears(model, fp8_layers)
    check_state_dict(model, sd, files)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _prepare_quantized(model: WanDiT, sd: dict[str, torch.Tensor], run: RunConfig, files: list[Path],
                       dtype: torch.dtype, keep_fp8: bool) -> dict[str, bool]:
    """Dequantize / merge LoRAs / quantize ``sd`` in place as the table in :mod:`.quantized` says.

    Returns the layers that stay fp8 ({name: per_row}), to become :class:`~..models.fp8.Fp8Linear` modules."""
    names = ", ".join(str(p) for p in files)
    dtype_name = str(dtype).removeprefix("torch.")
    found, layers = find_quantized(sd, files)
    wanted = run.dit_quant_format
    if found and wanted and found != wanted:
        raise CheckpointError(f"{run.source}: dit_quant_scheme {run.dit_quant_scheme!r} is {wanted}, but {names} "
                              f"holds {found} linear weights; set a matching {found}-* scheme")
    linears = block_linears(model)
    keep = keep_fp8 and (found or wanted) == "fp8"
    kept: dict[str, bool] = {}
    if found:
        kept = {n: per_row for n, per_row in layers.items() if n in set(linears)} if keep else {}
        how = "kept fp8 for scaled fp8 matmuls" if kept else f"dequantized to {dtype_name}"
        if kept and run.lora_configs:
            how = f"dequantized to {dtype_name} for the LoRA merge, then re-quantized to fp8 per output row"
        log.warning("%s holds a quantized DiT: %d %s linear weights with %s scales (%s); %s", names, len(layers),
                    found, "per-row" if all(layers.values()) else "per-tensor",
                    "dit_quantized in the run config" if run.dit_quantized else
                    f"recognised by their dtype: {run.source} does not set dit_quantized", how)
        dequantize_layers(sd, [n for n in layers if run.lora_configs or n not in kept], dtype)
    if run.lora_configs:
        merge_loras(sd, run.lora_configs)
        if kept:
            quantize_layers(sd, kept, "fp8")
            kept = dict.fromkeys(kept, True)
    if wanted and not found:
        if keep:
            log.warning("%s: dit_quantized (%s) but %s holds plain weights: quantizing %d linears to fp8 e4m3 per "
                        "output row at load", run.source, run.dit_quant_scheme, names, len(linears))
            quantize_layers(sd, linears, "fp8")
            kept = dict.fromkeys(linears, True)
        else:
            log.warning("%s: dit_quantized (%s) but %s holds plain weights: rounding %d linears to %s per output "
                        "row at load, run dequantized in %s", run.source, run.dit_quant_scheme, names, len(linears),
                        wanted, dtype_name)
            fake_quantize_layers(sd, linears, wanted)
    return kept
