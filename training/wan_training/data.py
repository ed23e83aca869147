"""Synthetic captioned clips, deterministic by seed: one coloured shape moving on a plain background.

    clip = make_clip(seed, index)      # clip.video float32 [3, F, H, W] in [-1, 1]; clip.caption "a red circle moving left"

Attributes cycle through every (colour, shape, motion) combination (index -> combination), so any run of
``len(COMBOS)`` consecutive indices is balanced; the nuisance parameters (background grey level, size, start
position, speed) come from ``numpy.random.default_rng([seed, index])``. Shapes are drawn from signed distances
with a one-pixel soft edge (anti-aliased).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

COLOURS = {"red": (220, 45, 45), "green": (40, 190, 70), "blue": (55, 95, 235), "yellow": (235, 205, 40)}
SHAPES = ("circle", "square", "triangle")
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
COMBOS = tuple(itertools.product(COLOURS, SHAPES, MOTIONS))   # 60 (colour, shape, motion)

NUM_FRAMES, HEIGHT, WIDTH = 9, 32, 32


def caption(colour: str, shape: str, motion: str) -> str:
    """'a red circle moving left' / 'a blue square standing still'."""
    return f"a {colour} {shape} " + ("standing still" if motion == "still" else f"moving {motion}")


CAPTIONS = tuple(caption(*c) for c in COMBOS)


@dataclass(frozen=True)
class Clip:
    video: torch.Tensor      # [3, F, H, W] float32 in [-1, 1]
    colour: str
    shape: str
    motion: str

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.motion)

    @property
    def labels(self) -> tuple[int, int, int]:
        """(colour, shape, motion) class indices."""
        return list(COLOURS).index(self.colour), SHAPES.index(self.shape), list(MOTIONS).index(self.motion)


def _coverage(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape of 'radius' r centred at (cx, cy) over pixel centres."""
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        d = np.sqrt(dx ** 2 + dy ** 2) - r
    elif shape == "square":
        d = np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    else:  # upward equilateral triangle: intersection of three half-planes
        k = np.sqrt(3.0)
        d = np.maximum.reduce([dy - 0.6 * r, (-k * dx - dy) / 2 - 0.6 * r, (k * dx - dy) / 2 - 0.6 * r]) * 1.2
    return np.clip(0.5 - d, 0.0, 1.0)


def make_clip(seed: int, index: int, num_frames: int = NUM_FRAMES, height: int = HEIGHT, width: int = WIDTH,
              combo: tuple[str, str, str] | None = None) -> Clip:
    """Clip ``index`` of the stream ``seed`` (``combo`` overrides the attribute cycle)."""
    colour, shape, motion = combo or COMBOS[index % len(COMBOS)]
    rng = np.random.default_rng([seed, index])
    bg = rng.uniform(15, 70) * np.ones(3) + rng.uniform(-8, 8, 3)
    r = rng.uniform(0.22, 0.27) * min(height, width)               # 7-8.6 px at 32x32 (0.15-0.20 lost the shape
    dx, dy = MOTIONS[motion]                                       # in the 8x-downsampling VAE: 44 % readable)
    travel = rng.uniform(0.22, 0.28) * min(height, width)          # pixels over the clip
    margin = 1.2 * r + 1                                           # the triangle's apex is 1.2 r out
    lo_x, hi_x = margin + max(0, -dx) * travel, width - margin - max(0, dx) * travel
    lo_y, hi_y = margin + max(0, -dy) * travel, height - margin - max(0, dy) * travel
    x0, y0 = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    fg = np.asarray(COLOURS[colour], np.float64)
    frames = np.empty((num_frames, height, width, 3), np.float32)
    for f in range(num_frames):
        a = f / max(1, num_frames - 1)
        cov = _coverage(shape, xx, yy, x0 + dx * travel * a, y0 + dy * travel * a, r)[..., None]
        frames[f] = bg * (1 - cov) + fg * cov
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).div(127.5).sub(1.0)   # [3, F, H, W]
    return Clip(video.contiguous(), colour, shape, motion)


def make_batch(seed: int, start: int, count: int, **kw) -> tuple[torch.Tensor, list[Clip]]:
    """Clips start .. start+count-1 -> (videos [count, 3, F, H, W], clips)."""
    clips = [make_clip(seed, i, **kw) for i in range(start, start + count)]
    return torch.stack([c.video for c in clips]), clips


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3] (the layout the pipeline's VAE decode returns)."""
    return video.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()


def from_uint8_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> [3, F, H, W] float32 in [-1, 1]."""
    return torch.from_numpy(np.array(frames)).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def frame_strip(frames: np.ndarray, every: int = 4, scale: int = 3) -> np.ndarray:
    """uint8 [F, H, W, 3] -> one row of every ``every``-th frame, nearest-upscaled ``scale`` x, 2-px white gaps."""
    tiles = [np.repeat(np.repeat(f, scale, 0), scale, 1) for f in frames[::every]]
    gap = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
    return np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1)
