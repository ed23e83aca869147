#!/usr/bin/env python3
"""On paper: Ulysses sequence-parallel communication per DiT step vs the step's FLOPs, Wan2.1 14B, bf16.

    .venv/bin/python bench/sp_comm.py [--sp 8]

Bytes come from ``wan_distill.parallel.ulysses_bytes_per_forward`` (the formula tests/test_sequence_parallel.py checks
against the bytes a real gloo group sends); FLOPs count the 40 blocks' matmuls (2 per multiply-add: projections,
attention scores and values, FFN), leaving out the patch embedding, time/text embeddings and head (< 0.1 %).
Nothing here runs on a GPU.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_backend"))
from wan_distill.config import DiTConfig  # noqa: E402
from wan_distill.parallel import ulysses_bytes_per_forward  # noqa: E402

GEOMETRIES = {"480P": (480, 832, 81), "720P": (720, 1280, 81)}
TEXT_TOKENS, IMAGE_TOKENS = 512, 257


def tokens(height: int, width: int, frames: int) -> int:
    """Video tokens: latent (1 + (F-1)/4, H/8, W/8), patches (1, 2, 2)."""
    return (1 + (frames - 1) // 4) * (height // 16) * (width // 16)


def block_flops(cfg: DiTConfig, L: int) -> int:
    D, Dff, Lc = cfg.dim, cfg.ffn_dim, TEXT_TOKENS
    f = 4 * 2 * L * D * D  # self-attention q, k, v, o
    f += 2 * 2 * L * L * D  # scores and values over all L keys
    f += 2 * 2 * L * D * D + 2 * 2 * Lc * D * D + 2 * 2 * L * Lc * D  # cross-attention: q, o; k, v of the text; attn
    if cfg.is_i2v:
        f += 2 * 2 * IMAGE_TOKENS * D * D + 2 * 2 * L * IMAGE_TOKENS * D  # image k_img, v_img and attention
    return f + 2 * 2 * L * D * Dff  # FFN


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sp", type=int, default=8)
    args = ap.parse_args()
    p = args.sp
    print(f"| Wan2.1 14B, sp_size {p}, bf16 | tokens L | L/P | all-to-all per layer per rank | per step per rank "
          "| per step, all ranks | output all-gather per rank | FLOPs per step (T2V / I2V) | per rank "
          "| FLOP per byte sent |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, geo in GEOMETRIES.items():
        L = tokens(*geo)
        t2v, i2v = DiTConfig.t2v_14b(), DiTConfig.i2v_14b()
        b = ulysses_bytes_per_forward(t2v, L, p, batch=1, act_bytes=2)
        flops = [c.num_layers * block_flops(c, L) for c in (t2v, i2v)]
        print(f"| {name} {'x'.join(map(str, geo))} | {L} | {math.ceil(L / p)} | {b['per_layer'] / 1e6:.1f} MB "
              f"| {b['all_to_all'] / 1e9:.2f} GB | {p * b['all_to_all'] / 1e9:.1f} GB | {b['gather'] / 1e6:.1f} MB "
              f"| {flops[0] / 1e15:.2f} / {flops[1] / 1e15:.2f} PFLOP | {flops[0] / p / 1e12:.0f} TFLOP "
              f"| {flops[0] / p / b['total']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
