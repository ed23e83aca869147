"""Reading weight files and assigning them strictly into meta-built modules (shared by every loader).

``.pt/.pth`` files are only ever read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import CheckpointError, key_mismatch_error, preview

__all__ = ["iter_state_dict_file", "load_state_dict_file", "check_state_dict", "assign_checked", "DIT_PREFIXES",
           "common_prefix", "strip_prefix"]

_PICKLE_SUFFIXES = (".pt", ".pth")


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) serialization cannot be mmapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: not a weights-only checkpoint (torch.load(weights_only=True) failed: "
            f"{str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise CheckpointError(f"{path}: expected a flat dict of name -> tensor (or {{'state_dict': ...}})")
    return obj


def iter_state_dict_file(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) one at a time from a .safetensors or .pt/.pth file (tensors on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except SafetensorError as e:
            raise CheckpointError(f"{path}: not a valid safetensors file: {e}") from None
    elif suffix in _PICKLE_SUFFIXES:
        yield from _torch_load(path).items()
    else:
        raise CheckpointError(f"{path}: unsupported weights format {suffix or '(no suffix)'!r}; "
                              "expected .safetensors, .pt or .pth")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Whole file -> dict (see :func:`iter_state_dict_file`)."""
    return dict(iter_state_dict_file(path))


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], files: list[Path],
                     what: str = "WanDiT") -> None:
    """Raise a :class:`CheckpointError` naming files, missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    bad_shapes = [f"{k} {tuple(sd[k].shape)} (model {tuple(v.shape)})" for k, v in expected.items()
                  if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or bad_shapes:
        hint = ""
        if bad_shapes:
            hint = f"{len(bad_shapes)} shape mismatch(es): {preview(bad_shapes, 10, '; ', sort=False)}"
        if any(k.startswith("img_emb.") for k in unexpected) or any(k.startswith("img_emb.") for k in missing):
            hint += ("; " if hint else "") + "an i2v checkpoint needs an i2v config.json (in_dim 36) and vice versa"
        raise key_mismatch_error(what, files, missing, unexpected, hint)


def assign_checked(model: torch.nn.Module, sd: dict[str, torch.Tensor], files: list[Path], what: str,
                   device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Strict key/shape check, then cast floating tensors to ``dtype`` on ``device`` one at a time and assign them
    into a meta-built ``model`` (no second full copy; tensors tied in ``sd`` stay tied). Returns it in eval mode."""
    check_state_dict(model, sd, files, what)
    converted: dict[int, torch.Tensor] = {}
    for k, t in sd.items():
        if id(t) not in converted:
            converted[id(t)] = t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
        sd[k] = converted[id(t)]
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False)


# Longest first: "model.diffusion_model." must win over "model.".
DIT_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")


def common_prefix(keys) -> str:
    """The one of :data:`DIT_PREFIXES` that every key starts with, or ''."""
    keys = list(keys)
    for prefix in DIT_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a leading ``model.`` / ``diffusion_model.`` / ``model.diffusion_model.`` shared by all keys."""
    prefix = common_prefix(sd)
    return {k[len(prefix):]: v for k, v in sd.items()} if prefix else dict(sd)


# ----------------------------------------------------------------------------------------------
# Finding the files
# ----------------------------------------------------------------------------------------------
