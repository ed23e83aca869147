"""The deployment's limits, enforced by every composing model (they are all reachable on the same gRPC port, not
only through the pipelines' request step). Each check raises :class:`InvalidRequest` naming the served input.

Limits come from the run config: at most ``max_frames`` frames of ``max_height`` x ``max_width`` pixels (the same
rule the DiT engine applies to a latent shape). Tensors must be non-empty and finite; frames must suit the MP4
encoder (uint8 RGB, even height and width for libx264's yuv420p).
"""
from __future__ import annotations

import numpy as np

from .config import RunConfig
from .errors import InvalidRequest
from .requests import Geometry

__all__ = ["check_video_size", "check_finite", "check_latents", "check_frames", "check_i2v_geometry"]

LATENT_CHANNELS, VAE_TIME, VAE_SPACE = 16, 4, 8


def check_video_size(name: str, frames: int, height: int, width: int, run: RunConfig) -> None:
    """``frames`` of ``height`` x ``width`` pixels within the deployment's limits, else INVALID_ARGUMENT ``name``."""
    if not (1 <= frames <= run.max_frames and 1 <= height <= run.max_height and 1 <= width <= run.max_width):
        raise InvalidRequest(name, f"{frames} frames of {height}x{width} is outside this deployment: at most "
                                   f"{run.max_frames} frames of {run.max_height}x{run.max_width}")


def check_finite(name: str, a: np.ndarray) -> None:
    """Non-empty and (for floating tensors) free of NaN / Inf."""
    if a.size == 0:
        raise InvalidRequest(name, f"must not be empty, got shape {list(a.shape)}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise InvalidRequest(name, f"must hold only finite values (found {bad} NaN or Inf of {a.size})")


def check_latents(latents: np.ndarray, run: RunConfig) -> None:
    """LATENTS float32 [16, t, h, w] -> frames 1+4(t-1) of 8h x 8w within the limits, finite."""
    if latents.dtype != np.float32 or latents.ndim != 4 or latents.shape[0] != LATENT_CHANNELS:
        raise InvalidRequest("LATENTS", f"must be float32 [16, t, h, w], got {latents.dtype} {list(latents.shape)}")
    check_finite("LATENTS", latents)
    _, t, h, w = latents.shape
    check_video_size("LATENTS", VAE_TIME * (t - 1) + 1, VAE_SPACE * h, VAE_SPACE * w, run)


def check_frames(frames: np.ndarray, run: RunConfig) -> None:
    """FRAMES uint8 [F, H, W, 3], F >= 1, H and W even (libx264 yuv420p), within the limits."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise InvalidRequest("FRAMES", f"must be uint8 [F, H, W, 3] RGB, got {frames.dtype} {list(frames.shape)}")
    check_finite("FRAMES", frames)
    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise InvalidRequest("FRAMES", f"height and width must be even (H.264 yuv420p), got {h}x{w}")
    check_video_size("FRAMES", f, h, w, run)


def check_i2v_geometry(geo: Geometry, run: RunConfig) -> None:
    """The I2V output size (the image's aspect ratio at the requested area) within the limits, else IMAGE named:
    a very tall or wide picture would otherwise make a video side beyond what the DiT and encoder accept."""
    try:
        check_video_size("IMAGE", geo.num_frames, geo.height, geo.width, run)
    except InvalidRequest as e:
        raise InvalidRequest("IMAGE", f"its aspect ratio gives a {geo.height}x{geo.width} video; {e.rule}") from None
