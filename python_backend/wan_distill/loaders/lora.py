"""Merge LoRA / diff files into a Wan2.1 DiT state dict (LightX2V distill LoRAs and the common variants).

Key formats (after an optional ``diffusion_model.`` / ``model.`` / ``model.diffusion_model.`` prefix):

* ``X.lora_up.weight`` + ``X.lora_down.weight`` or ``X.lora_B.weight`` + ``X.lora_A.weight``, optional
  ``X.alpha``:  ``X.weight += strength * (alpha / rank or 1) * up @ down``  (rank = down.shape[0]);
* full deltas ``X.diff`` -> ``X.weight``, ``X.diff_b`` -> ``X.bias``, ``X.diff_m`` -> ``X.modulation``:
  ``W += strength * diff`` (norms, modulation, head and the 5-D patch embedding included).

Math in float32, result cast back to the target's dtype. Every LoRA key must land on a parameter of the
right shape; anything else is an error that lists the offending keys (never a silent skip).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import LoraSpec, RunConfig
from ..errors import CheckpointError, preview
from .files import DIT_PREFIXES, load_state_dict_file
from .layout import LORA_DIR

log = logging.getLogger(__name__)

__all__ = ["read_lora", "merge_loras", "LoraDelta", "plan_lora", "resolve_loras"]

_PAIRS = ((".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight"))
_DIFFS = ((".diff_b", ".bias"), (".diff_m", ".modulation"), (".diff", ".weight"))


@dataclass
class LoraDelta:
    """One update of ``target``: low-rank (``up``/``down``, ``scale``) or full (``diff``)."""

    target: str
    source: str
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    scale: float = 1.0
    diff: torch.Tensor | None = None

    def delta_shape_ok(self, shape: torch.Size) -> bool:
        if self.diff is not None:
            return self.diff.shape == shape
        up, down = self.up.flatten(1), self.down.flatten(1)
        return (up.shape[1] == down.shape[0] and len(shape) >= 2 and up.shape[0] == shape[0]
                and down.shape[1] == shape[1:].numel())

    def delta(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """The fp32 update, shaped like the target."""
        if self.diff is not None:
            return self.diff.to(device=device, dtype=torch.float32)
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)
        down = self.down.to(device=device, dtype=torch.float32).flatten(1)
        return (self.scale * (up @ down)).reshape(shape)


def _strip(key: str) -> str:
    for prefix in DIT_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """LoRA file (.safetensors / .pt) -> {key without model prefix: tensor}."""
    path = Path(path)
    raw = load_state_dict_file(path)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = _strip(key)
        if name in out:
            raise CheckpointError(f"LoRA {path}: key {name!r} appears twice (with and without a prefix)")
        out[name] = tensor
    return out


def plan_lora(lora: dict[str, torch.Tensor], path: str | Path = "<lora>") -> list[LoraDelta]:
    """Group the keys of one LoRA into updates; keys of no known form -> :class:`CheckpointError`."""
    deltas: list[LoraDelta] = []
    used: set[str] = set()
    problems: list[str] = []
    for key in lora:
        for up_sfx, down_sfx in _PAIRS:
            if key.endswith(up_sfx):
                base = key[: -len(up_sfx)]
                down_key, alpha_key = base + down_sfx, base + ".alpha"
                if down_key not in lora:
                    problems.append(f"{key} (no matching {down_key})")
                    break
                down = lora[down_key]
                scale = 1.0
                if alpha_key in lora:
                    scale = float(lora[alpha_key].float().reshape(-1)[0]) / down.shape[0]
                    used.add(alpha_key)
                deltas.append(LoraDelta(base + ".weight", key, up=lora[key], down=down, scale=scale))
                used.update((key, down_key))
                break
        else:
            for diff_sfx, target_sfx in _DIFFS:
                if key.endswith(diff_sfx):
                    deltas.append(LoraDelta(key[: -len(diff_sfx)] + target_sfx, key, diff=lora[key]))
                    used.add(key)
                    break
    unknown = [k for k in lora if k not in used]
    problems += [k for k in unknown if not any(k.endswith(up) for up, _ in _PAIRS)]
    if problems:
        raise CheckpointError(f"LoRA {path}: {len(problems)} key(s) of no known LoRA form "
                              f"(pairs .lora_up/.lora_down, .lora_B/.lora_A [+ .alpha], or .diff/.diff_b/.diff_m): "
                              f"{preview(problems)}")
    return deltas


def merge_loras(state_dict: dict[str, torch.Tensor], loras: Sequence[LoraSpec]) -> None:
    """Merge each LoRA in order into ``state_dict`` (in place: entries are replaced by merged tensors).

    A LoRA is fully checked (keys exist, shapes fit) before any tensor of it is changed.
    """
    for spec in loras:
        path = Path(spec.path)
        deltas = plan_lora(read_lora(path), path)
        targets = [d.target for d in deltas]
        dup = sorted({t for t in targets if targets.count(t) > 1})
        missing = [f"{d.source} -> {d.target}" for d in deltas if d.target not in state_dict]
        bad = [f"{d.source} -> {d.target} {list(state_dict[d.target].shape)}" for d in deltas
               if d.target in state_dict and not d.delta_shape_ok(state_dict[d.target].shape)]
        if missing or bad or dup:
            parts = [f"LoRA {path} does not fit the model"]
            if missing:
                parts.append(f"{len(missing)} key(s) match no parameter: {preview(missing)}")
            if bad:
                parts.append(f"{len(bad)} key(s) with mismatched shapes: {preview(bad)}")
            if dup:
                parts.append(f"{len(dup)} parameter(s) updated twice: {preview(dup)}")
            raise CheckpointError("; ".join(parts))
        for d in deltas:
            w = state_dict[d.target]
            state_dict[d.target] = (w.float() + spec.strength * d.delta(w.shape, w.device)).to(w.dtype)
        log.info("merged LoRA %s (strength %g): %d tensors updated", path, spec.strength, len(deltas))


def resolve_loras(run: RunConfig, model_dir: str | Path) -> RunConfig:
    """LightX2V configs name LoRAs relative to the working dir or the model root: find each file or fail clearly.

    Looked up as given, under the model root, beside it, and in ``<model root>/loras/``.
    """
    model_dir = Path(model_dir)
    resolved = []
    for spec in run.lora_configs:
        candidates = [spec.path] if spec.path.is_absolute() else [spec.path, model_dir / spec.path,
                                                                   model_dir.parent / spec.path,
                                                                   model_dir / LORA_DIR / spec.path.name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CheckpointError(f"{run.source}: LoRA file {spec.path} not found; looked at "
                                  + ", ".join(str(c) for c in candidates))
        resolved.append(LoraSpec(found, spec.strength))
    return run.replace(lora_configs=tuple(resolved))
