#!/usr/bin/env python3
"""Eager vs ``compile_dit`` (torch.compile of each DiT block): seconds per DiT forward at Wan2.1 sizes, random bf16
weights, 480x832x81 (32760 tokens); plus how far the compiled output is from the eager one.

    PYTHONPATH=python_backend python3 bench/gpu_compile.py --out $OUT/gpu_compile.md     # on a GPU host
    PYTHONPATH=python_backend .venv/bin/python bench/gpu_compile.py --smoke             # CPU, tiny sizes (script check)
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import build_dit, free, sync  # noqa: E402

from wan_distill.config import DiTConfig  # noqa: E402


def time_forwards(model, x, ctx, device, reps: int) -> tuple[float, list[float], torch.Tensor]:
    times, out = [], None
    with torch.inference_mode():
        for i, t in enumerate([1000.0, 937.5, 1000.0, 937.5, 1000.0][: 1 + reps]):
            sync(device)
            t0 = time.perf_counter()
            out = model(x, torch.tensor([t], device=device), ctx)
            sync(device)
            times.append(time.perf_counter() - t0)
    return times[0], times[1:], out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default="1.3B,14B")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    cfgs = {"1.3B": DiTConfig.t2v_1_3b(), "14B": DiTConfig.t2v_14b()}
    thw = (21, 60, 104)
    if args.smoke:
        cfgs = {k: DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32) for k in cfgs}
        thw = (3, 8, 8)
    rows = []
    for name in args.models.split(","):
        cfg = cfgs[name]
        model = build_dit(cfg, device, dtype)
        gen = torch.Generator(device).manual_seed(0)
        x = torch.randn((1, 16, *thw), generator=gen, device=device, dtype=dtype)
        ctx = torch.randn((1, cfg.text_len, cfg.text_dim), generator=gen, device=device, dtype=dtype)
        _, eager, ref = time_forwards(model, x, ctx, device, args.reps)
        model.compile_blocks()
        first, compiled, out = time_forwards(model, x, ctx, device, args.reps)
        diff = (out.float() - ref.float()).abs()
        rows.append((name, statistics.median(eager), first, statistics.median(compiled),
                     diff.max().item(), (diff.norm() / ref.float().norm()).item()))
        print(rows[-1], flush=True)
        del model, x, ctx, ref, out
        free(device)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    md = ["## DiT: eager vs compiled blocks (`compile_dit`)\n",
          f"- {dev}, torch {torch.__version__}, {dtype}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; latent [1,16,{thw[0]},"
          f"{thw[1]},{thw[2]}], random weights; median of {args.reps} forwards after a warm-up",
          f"- command: `{' '.join(['python3', *sys.argv])}`\n",
          "| model | eager s/forward | compiled: first call s (compile) | compiled s/forward | speedup | max abs diff | rel. L2 diff |",
          "|---|---|---|---|---|---|---|"]
    for name, e, first, c, dmax, drel in rows:
        md.append(f"| {name} | {e:.3f} | {first:.1f} | {c:.3f} | **{e / c:.2f}x** | {dmax:.2e} | {drel:.2e} |")
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
