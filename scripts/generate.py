#!/usr/bin/env python3
"""Generate one video in-process (no Triton): the same stages the served ensembles chain.

    python scripts/generate.py --model-dir checkpoints/demo/Wan2.1-T2V-tiny \
        --config configs/demo/wan_t2v_distill_4step_demo.json --prompt "a red fox" -o outputs/inprocess_t2v.mp4
    python scripts/generate.py --model-dir <Wan2.1-I2V-14B-480P> --config configs/distill/wan_i2v_distill_4step_cfg.json \
        --image in.png --prompt "..." -o out.mp4

Prints the time of each stage (text, image, dit, vae, mp4).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from wan_distill.config import RunConfig
from wan_distill.pipeline import WanPipeline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="Wan2.1 model root (config.json + weights)")
    p.add_argument("--config", type=Path, required=True, help="LightX2V-style run config JSON")
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", type=Path, help="input image for image-to-video (PNG/JPEG/WebP)")
    p.add_argument("--negative-prompt")
    p.add_argument("--seed", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--fps", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    t0 = time.perf_counter()
    pipe = WanPipeline.from_model_dir(args.model_dir, RunConfig.from_json(args.config), device=args.device)
    print(f"loaded {args.model_dir} in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    common = dict(seed=args.seed, height=args.height, width=args.width, num_frames=args.frames, fps=args.fps,
                  negative_prompt=args.negative_prompt)
    t0 = time.perf_counter()
    if args.image:
        out = pipe.image_to_video(args.image.read_bytes(), args.prompt, **common)
    else:
        out = pipe.text_to_video(args.prompt, **common)
    total = time.perf_counter() - t0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_bytes(out.mp4)
    tmp.replace(args.output)
    stages = ", ".join(f"{k} {v:.3f} s" for k, v in out.timings.items())
    print(f"{list(out.frames.shape)} frames -> {args.output} ({len(out.mp4)} bytes) in {total:.3f} s: {stages}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
