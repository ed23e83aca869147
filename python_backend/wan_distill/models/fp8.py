"""Weight-quantized linears as LightX2V stores them, and a scaled-fp8 linear layer whose parameters carry those names.

A quantized linear ``X`` of LightX2V's DiT checkpoints (``*_scaled_fp8_e4m3_*`` / ``*_int8_*`` files) is

    X.weight        [out, in]  float8_e4m3fn or int8   symmetric, one scale per output row
    X.weight_scale  [out, 1]   float32                 W ~= X.weight * X.weight_scale
    X.bias          [out]      unchanged (bf16 / fp32)

(per-tensor files carry a single scale). Rows are scaled so that their largest |w| maps to 448 (fp8 e4m3) or 127
(int8, rounded, clamped to [-128, 127]).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FP8_MAX", "INT8_MAX", "QUANT_DTYPES", "Fp8Linear", "dequantize", "quantize_rowwise", "replace_linears"]

FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT8_MAX = 127.0
QUANT_DTYPES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}
_MIN_ABSMAX = 1e-5  # rows of zeros get a tiny scale instead of 0 / 0


def quantize_rowwise(w: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] float -> (q [out, in] fp8/int8, scale [out, 1] float32), symmetric per output row."""
    if w.ndim != 2:
        raise ValueError(f"quantize_rowwise: expected a 2-D weight, got {tuple(w.shape)}")
    w = w.float()
    qmax = FP8_MAX if kind == "fp8" else INT8_MAX
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(_MIN_ABSMAX) / qmax
    x = w / scale
    if kind == "fp8":
        q = x.clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)       # round to nearest even
    elif kind == "int8":
        q = x.round_().clamp_(-128, 127).to(torch.int8)
    else:
        raise ValueError(f"unknown quantized format {kind!r}; expected 'fp8' or 'int8'")
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q [out, in] fp8/int8 * scale ([out, 1], [out], [] or [1]) computed in float32 -> dtype."""
    s = scale.float()
    if s.numel() != 1:
        s = s.reshape(-1, 1)
    return (q.float() * s).to(dtype)


class Fp8Linear(nn.Module):
    """``y = x @ (weight * weight_scale).T + bias`` with float8_e4m3fn weights (names as in the checkpoint).

    weight [out, in] float8_e4m3fn, weight_scale [out, 1] (per row) or [] (per tensor) float32, bias [out] or None.
    On CUDA the activations are quantized to fp8 on the fly, one scale per row (token), so a row's result never
    depends on the other rows of a batch, and multiplied with ``torch._scaled_mm`` (a per-tensor weight scale is
    applied as a row of equal scales); elsewhere, or for sizes ``_scaled_mm`` cannot take (in/out not multiples of
    16), the weight is dequantized into x's dtype and applied with ``F.linear``. ``use_scaled_mm`` forces either
    path (``None``: scaled only on CUDA).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, per_row: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features, self.per_row = in_features, out_features, per_row
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=torch.float8_e4m3fn, device=device),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty((out_features, 1) if per_row else (), dtype=torch.float32,
                                                     device=device), requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
                     if bias else None)
        self.use_scaled_mm: bool | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, per_row: bool = True) -> Fp8Linear:
        """Quantize a plain linear (per output row, or per tensor)."""
        w = linear.weight.detach()
        if per_row:
            q, scale = quantize_rowwise(w, "fp8")
        else:
            scale = (w.float().abs().amax().clamp_min(_MIN_ABSMAX) / FP8_MAX).reshape(())
            q = (w.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, per_row, device=w.device,
                    dtype=None if linear.bias is None else linear.bias.dtype)
        layer.weight.data, layer.weight_scale.data = q, scale
        if linear.bias is not None:
            layer.bias.data = linear.bias.detach().clone()
        return layer

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.weight, self.weight_scale, dtype)

    def _scaled_mm_ok(self, x: torch.Tensor) -> bool:
        if self.use_scaled_mm is not None:
            return self.use_scaled_mm
        return x.is_cuda and self.in_features % 16 == 0 and self.out_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype."""
        if not self._scaled_mm_ok(x):
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.dequantized_weight(x.dtype), bias)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        absmax = x2.abs().amax(dim=1, keepdim=True)                                    # [M, 1]
        x_scale = (absmax.float().clamp_min(1e-12) / FP8_MAX).to(x2.dtype)           # the scale used both ways
        xq = (x2 / x_scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        w_scale = self.weight_scale.float().reshape(1, -1).expand(1, self.out_features).contiguous()  # [1, N]
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        y = torch._scaled_mm(xq, self.weight.t(), scale_a=x_scale.float(), scale_b=w_scale, bias=bias,
                             out_dtype=torch.bfloat16)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"scale={'per row' if self.per_row else 'per tensor'}")


def replace_linears(model: nn.Module, layers: dict[str, bool]) -> None:
    """Swap each named ``nn.Linear`` of ``model`` for an empty :class:`Fp8Linear` on the same device (``meta`` while
    building for an assign-load); ``layers`` maps the module name to per_row (True) or per tensor (False)."""
    for name, per_row in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        if not isinstance(old, nn.Linear):
            raise TypeError(f"{name} is a {type(old).__name__}, not an nn.Linear")
        setattr(parent, child, Fp8Linear(old.in_features, old.out_features, old.bias is not None, per_row,
                                         device=old.weight.device,
                                         dtype=None if old.bias is None else old.bias.dtype))
