"""Error types shared by loaders, pipeline and the Triton adapters."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class CheckpointError(ValueError):
    """A weights file is missing, of the wrong format, or does not match the model's keys."""


def preview(items: Iterable[str], limit: int = 20, sep: str = ", ", sort: bool = True) -> str:
    """The first ``limit`` items joined by ``sep`` (sorted unless told not to), then how many more there are."""
    items = sorted(items) if sort else list(items)
    shown = sep.join(items[:limit])
    return f"{shown}{sep}... ({len(items) - limit} more)" if len(items) > limit else shown


def key_mismatch_error(what: str, files: Iterable[Path | str], missing: Iterable[str],
                       unexpected: Iterable[str], hint: str = "") -> CheckpointError:
    """Build the one error message all strict loaders use: which files, which keys are missing/unexpected."""
    missing, unexpected = list(missing), list(unexpected)
    parts = [f"{what}: the weights in {', '.join(str(f) for f in files)} do not match the model"]
    if missing:
        parts.append(f"missing {len(missing)} key(s): {preview(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {preview(unexpected)}")
    if hint:
        parts.append(hint)
    return CheckpointError("; ".join(parts))


class InvalidRequest(ValueError):
    """A request field breaks a rule. ``field`` names the input, ``rule`` says what is allowed."""

    def __init__(self, field: str, rule: str):
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class Cancelled(RuntimeError):
    """The caller asked to stop (cancelled or timed out); checked between denoising steps."""


class Overloaded(RuntimeError):
    """The server is at capacity (queue full): retry later. Served as UNAVAILABLE."""
