"""Shared by the sequence-parallel tests: the 6-head tiny DiT spec, inputs, a process-liveness check."""
from __future__ import annotations

import torch

from wan_distill.tiny import TinySpec

SPEC = TinySpec(dit_dim=96, dit_ffn=128, dit_heads=6, dit_layers=2, text_len=16)  # heads divisible by 2 and 3
CPU = torch.device("cpu")


def inputs(cfg, batch: int, frames: int, height: int, width: int, seed: int = 0):
    """Random DiT inputs (x, t, context, clip_fea, y) with one timestep per row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, frames, height, width, generator=g)
    t = torch.tensor([937.5, 312.25][:batch])
    context = torch.randn(batch, 7, cfg.text_dim, generator=g)
    clip_fea = torch.randn(batch, 257, cfg.image_dim, generator=g) if cfg.is_i2v else None
    y = torch.randn(batch, 20, frames, height, width, generator=g) if cfg.is_i2v else None
    return x, t, context, clip_fea, y


def process_gone(pid: int) -> bool:
    """No such process, or a zombie waiting for its parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
