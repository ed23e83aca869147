"""Device and dtype policy: the one place that decides where each component runs and in which precision.

======================  ==============  ======  ===================================================================
component               CUDA            CPU     why
======================  ==============  ======  ===================================================================
``dit``                 bfloat16        fp32    as Wan / LightX2V run it; fp32 "islands" stay inside the model
``text_encoder``        bfloat16        fp32    the released UMT5 file is bf16
``vae``                 fp32            fp32    decode quality; cuDNN may still use TF32 for fp32 convolutions
``image_encoder``       fp32            fp32    CLIP features feed the DiT's image branch
``tiny_vae``            bfloat16        fp32    as LightX2V runs taew2_1
======================  ==============  ======  ===================================================================

Quantized DiT checkpoints (fp8 / int8 linears) are dequantized into the DiT's dtype, except fp8 on CUDA, which stays
fp8 and runs scaled fp8 matmuls (see :mod:`.quantized`). CPU is always fp32.
"""
from __future__ import annotations

import torch

CUDA_DTYPES: dict[str, torch.dtype] = {
    "dit": torch.bfloat16,
    "text_encoder": torch.bfloat16,
    "vae": torch.float32,
    "image_encoder": torch.float32,
    "tiny_vae": torch.bfloat16,
}

__all__ = ["CUDA_DTYPES", "default_device", "default_dtype", "weights_dtype"]


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def weights_dtype(component: str, device: torch.device | str) -> torch.dtype:
    """The dtype ``component``'s weights are held and run in on ``device`` (table above)."""
    if component not in CUDA_DTYPES:
        raise KeyError(f"unknown component {component!r}; one of {', '.join(CUDA_DTYPES)}")
    return CUDA_DTYPES[component] if torch.device(device).type == "cuda" else torch.float32


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The DiT's dtype on ``device``: bf16 on GPU (as LightX2V / Wan run), fp32 on CPU."""
    return weights_dtype("dit", device)
