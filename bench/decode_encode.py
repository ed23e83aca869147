#!/usr/bin/env python3
"""VAE decode + MP4 encode, sequential (decode_to_uint8, then encode_mp4: what wan_vae_decoder -> wan_video_encoder
do) vs overlapped (wan_distill.video.decode_to_mp4: each latent frame's frames go to the encoder thread while the next
one decodes; what wan_decode_to_mp4 does). Same latents, same decoder, alternating runs, medians; CPU.

    .venv/bin/python bench/decode_encode.py [--reps 3] [--threads 1] [--frames 17,81] [--write]

The decoder is the tiny demo checkpoint's VAE (random weights; time does not depend on the values) at the demo
size, 192x320, with the demo's 17 frames and the product's 81. ``--threads``: torch intra-op threads (1 = what a served stub gets with
WAN_NUM_THREADS=1); x264 picks its own threads in both runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import DEMO_CONFIGS, emit, ensure_demo_models, header  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from wan_distill.config import RunConfig  # noqa: E402
from wan_distill.loaders.vae import load_decoder  # noqa: E402
from wan_distill.video import X264Settings, decode_mp4, decode_to_mp4, encode_mp4  # noqa: E402

SHORT_LOOKAHEAD = X264Settings(lookahead=10)  # opt-in: x264 starts encoding after 10 frames instead of 40


def sequential(decoder, z, fps):
    t0 = time.perf_counter()
    frames = decoder.decode_to_uint8(z).numpy()
    t1 = time.perf_counter()
    mp4 = encode_mp4(frames, fps)
    t2 = time.perf_counter()
    return {"decode": t1 - t0, "encode": t2 - t1, "total": t2 - t0}, frames, mp4


def overlapped(decoder, z, fps, settings=None):
    out = decode_to_mp4(decoder.decode_uint8_chunks(z), decoder.num_frames(z.shape[1]), fps, settings, keep_frames=True)
    return {"decode": out.decode_seconds, "encode": out.encode_seconds, "total": out.total_seconds}, out.frames, out.mp4


def overlapped_short_lookahead(decoder, z, fps):
    return overlapped(decoder, z, fps, SHORT_LOOKAHEAD)


def measure(decoder, z, fps: int, reps: int) -> dict[str, dict[str, float]]:
    """Median seconds per path (decode, encode busy, total); the paths alternate; frames checked equal."""
    for fn in RUNS.values():
        fn(decoder, z, fps)  # warm-up
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in RUNS}
    ref = None
    for _ in range(reps):
        for name, fn in RUNS.items():
            times, frames, mp4 = fn(decoder, z, fps)
            samples[name].append(times)
            ref = frames if ref is None else ref
            assert np.array_equal(frames, ref), "frames differ between the paths"
            assert decode_mp4(mp4).shape == frames.shape
    return {k: {s: statistics.median(x[s] for x in v) for s in ("decode", "encode", "total")}
            for k, v in samples.items()}


RUNS = {"sequential (decode, then encode)": sequential, "overlapped (wan_decode_to_mp4, x264 defaults)": overlapped,
        "overlapped, x264 lookahead 10 (opt-in)": overlapped_short_lookahead}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--frames", default="17,81", help="frame counts to run (4k+1), comma separated")
    p.add_argument("--write", action="store_true", help="write bench/results/decode_encode.md")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dirs = ensure_demo_models()
    run = RunConfig.from_json(DEMO_CONFIGS / "wan_t2v_distill_4step_demo.json")
    decoder = load_decoder(dirs["t2v"], run, "cpu")
    md = header("Decode + encode: sequential vs overlapped (CPU)")
    md += (f"- tiny demo VAE (random weights) at {a.height}x{a.width}, torch threads {a.threads}, x264 with its own "
           f"threads; median of {a.reps} alternating runs after a warm-up; frames identical in every run\n")
    for frames in (int(f) for f in a.frames.split(",")):
        z = torch.randn(16, (frames - 1) // 4 + 1, a.height // 8, a.width // 8,
                        generator=torch.Generator().manual_seed(0))
        med = measure(decoder, z, 16, a.reps)
        seq = med["sequential (decode, then encode)"]
        md += (f"\n{frames} frames (latents 16x{z.shape[1]}x{z.shape[2]}x{z.shape[3]}):\n\n"
               "| path | decode s | encode s (busy) | decode + encode s | vs sequential |\n|---|---|---|---|---|\n")
        for name, m in med.items():
            md += (f"| {name} | {m['decode']:.3f} | {m['encode']:.3f} | **{m['total']:.3f}** | "
                   f"{m['total'] / seq['total']:.2f}× |\n")
        print(md, flush=True)
    md += ("\nOn this shared 2-core VM the decode (torch) and x264's threads compete for the same two cores, and other "
           "jobs load them too, so no gain is expected here; on a GPU host the decode runs on the GPU and "
           "the encoder thread on the host CPU (`bench/gpu_speed.py`, not run yet). x264 holds `rc-lookahead` frames "
           "(40 for medium) before it encodes the first, so with the defaults a 17-frame video is encoded entirely "
           "after the decode and an 81-frame one about half; a 10-frame lookahead lets the encode keep pace (a "
           "slightly different video: `bench/results/x264_settings.md`).\n")
    emit("decode_encode", md, a.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
