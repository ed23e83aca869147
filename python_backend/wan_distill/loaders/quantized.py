"""LightX2V's quantized DiT checkpoints (fp8 / int8 linears), recognised by their contents.

Layout (``wan2.1_*_scaled_fp8_e4m3_lightx2v_4step.safetensors``, ``wan2.1_*_int8_lightx2v_4step.safetensors``, written
by LightX2V's ``tools/convert/converter.py --quantized``): the 2-D weights of every block's ``self_attn``,
``cross_attn`` and ``ffn`` linears are float8_e4m3fn or int8 with a float32 ``<layer>.weight_scale`` [out, 1] beside
them (one symmetric scale per output row); everything else (biases, norms, modulation, embeddings, head) stays
bf16 / fp32. The ComfyUI variant (``*_comfyui.safetensors``) has one per-tensor ``<layer>.scale_weight`` and a
``scaled_fp8`` marker tensor instead; both are read.

A file is quantized when any ``.weight`` is fp8 / int8, whatever the run config says (LightX2V's own
``wan_i2v_distill_model_4step_cfg.json`` names an int8 file as ``dit_original_ckpt``): the loader logs it and
handles it as below. What a run gets:

==================================  =============================================  ====================================
weights found                       CPU (fp32)                                     CUDA (bf16)
==================================  =============================================  ====================================
plain                               as is                                          as is
plain + ``dit_quantized`` (fp8/int8) quantized at load, then dequantized (fp32)     fp8: quantized at load, kept fp8
                                                                                   (:class:`Fp8Linear`); int8: as CPU
fp8 file                            dequantized                                    kept fp8 (:class:`Fp8Linear`)
int8 file                           dequantized                                    dequantized to bf16
==================================  =============================================  ====================================

LoRAs on a quantized file are merged into the dequantized weights (re-quantized afterwards when kept fp8).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import CheckpointError, preview
from ..models.fp8 import QUANT_DTYPES, dequantize, quantize_rowwise

log = logging.getLogger(__name__)

__all__ = ["QUANTIZED_BLOCK_PARTS", "SCALE_SUFFIX", "is_stored_as_is", "find_quantized", "dequantize_layers",
           "quantize_layers", "fake_quantize_layers", "block_linears"]

SCALE_SUFFIX = ".weight_scale"
COMFY_SCALE_SUFFIX = ".scale_weight"
COMFY_MARKER = "scaled_fp8"
# LightX2V's converter quantizes the 2-D weights whose third key part is one of these (blocks.N.<part>.…).
QUANTIZED_BLOCK_PARTS = ("self_attn", "cross_attn", "ffn")
_KIND_OF = {dtype: kind for kind, dtype in QUANT_DTYPES.items()}


def is_stored_as_is(key: str, tensor: torch.Tensor) -> bool:
    """Quantized weights and their scales are kept in the file's dtype while reading (never cast to the DiT dtype)."""
    return tensor.dtype in _KIND_OF or key.endswith((SCALE_SUFFIX, COMFY_SCALE_SUFFIX)) or key == COMFY_MARKER


def find_quantized(sd: dict[str, torch.Tensor], files: Iterable[Path | str]) -> tuple[str | None, dict[str, bool]]:
    """Recognise quantized linears in a (prefix-stripped) state dict, checking every pair; canonicalise in place.

    Returns (``"fp8"`` / ``"int8"`` / None, {layer name: per_row}). ComfyUI ``.scale_weight`` keys are renamed to
    ``.weight_scale`` and the ``scaled_fp8`` marker is dropped. Raises :class:`CheckpointError` naming the files and
    keys for a quantized weight without a scale, a scale without a quantized weight, a scale of the wrong shape, or
    fp8 and int8 mixed in one checkpoint.
    """
    files = [str(f) for f in files]
    sd.pop(COMFY_MARKER, None)
    for key in [k for k in sd if k.endswith(COMFY_SCALE_SUFFIX)]:
        sd[key[: -len(COMFY_SCALE_SUFFIX)] + SCALE_SUFFIX] = sd.pop(key)
    kinds: dict[str, str] = {}
    layers: dict[str, bool] = {}
    problems: list[str] = []
    for key, t in sd.items():
        if t.dtype not in _KIND_OF:
            continue
        stem = key[: -len(".weight")] if key.endswith(".weight") else None
        if stem is None or t.ndim != 2:
            problems.append(f"{key} ({t.dtype}, {tuple(t.shape)}): only 2-D .weight tensors may be quantized")
            continue
        kinds[stem] = _KIND_OF[t.dtype]
        scale = sd.get(stem + SCALE_SUFFIX)
        if scale is None:
            problems.append(f"{key} is {t.dtype} but {stem + SCALE_SUFFIX} is missing")
        elif not scale.is_floating_point() or tuple(scale.shape) not in ((t.shape[0], 1), (t.shape[0],), (), (1,)):
            problems.append(f"{stem + SCALE_SUFFIX} {scale.dtype} {tuple(scale.shape)} (expected float "
                            f"[{t.shape[0]}, 1] per row or a single per-tensor scale)")
        else:
            layers[stem] = scale.numel() != 1 or t.shape[0] == 1
    orphans = [k for k in sd if k.endswith(SCALE_SUFFIX) and k[: -len(SCALE_SUFFIX)] not in kinds]
    problems += [f"{k} has no fp8/int8 {k[: -len(SCALE_SUFFIX)]}.weight" for k in orphans]
    if len(set(kinds.values())) > 1:
        counts = {kind: sum(1 for v in kinds.values() if v == kind) for kind in sorted(set(kinds.values()))}
        problems.append(f"fp8 and int8 weights mixed in one checkpoint ({counts})")
    if problems:
        raise CheckpointError(f"quantized DiT checkpoint {', '.join(files)}: {len(problems)} problem(s): "
                              f"{preview(problems, 10, '; ')}")
    for stem in layers:  # per-row scales as [out, 1], per-tensor as a scalar: the shapes Fp8Linear declares
        scale = sd[stem + SCALE_SUFFIX].float()
        sd[stem + SCALE_SUFFIX] = scale.reshape(-1, 1) if layers[stem] else scale.reshape(())
    return (next(iter(kinds.values())) if kinds else None), layers


def dequantize_layers(sd: dict[str, torch.Tensor], layers: Iterable[str], dtype: torch.dtype) -> None:
    """In place: ``<layer>.weight`` = weight * weight_scale (fp32 math) in ``dtype``; the scale keys are removed."""
    for stem in layers:
        sd[stem + ".weight"] = dequantize(sd[stem + ".weight"], sd.pop(stem + SCALE_SUFFIX), dtype)


def quantize_layers(sd: dict[str, torch.Tensor], layers: Iterable[str], kind: str) -> None:
    """In place: plain ``<layer>.weight`` -> (fp8/int8 weight, float32 per-row ``weight_scale``)."""
    for stem in layers:
        sd[stem + ".weight"], sd[stem + SCALE_SUFFIX] = quantize_rowwise(sd[stem + ".weight"], kind)


def fake_quantize_layers(sd: dict[str, torch.Tensor], layers: Iterable[str], kind: str) -> None:
    """In place: each weight replaced by its per-row quantized-then-dequantized value, in its own dtype."""
    for stem in layers:
        w = sd[stem + ".weight"]
        sd[stem + ".weight"] = dequantize(*quantize_rowwise(w, kind), dtype=w.dtype)


def block_linears(model: nn.Module) -> list[str]:
    """The linears LightX2V quantizes: ``blocks.N.{self_attn,cross_attn,ffn}.*`` (q/k/v/o, k_img/v_img, ffn.0/2)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith("blocks.") and name.split(".")[2] in QUANTIZED_BLOCK_PARTS]
