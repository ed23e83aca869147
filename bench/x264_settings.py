#!/usr/bin/env python3
"""x264 settings (preset / CRF / threads) against the default (medium, CRF 23, x264's own threads): encode time,
file size, PSNR against the source frames and against the default's output. CPU (the MP4 encode runs on the CPU on a
GPU host too).

    .venv/bin/python bench/x264_settings.py [--height 480 --width 832 --frames 81] [--reps 2] [--write]

The frames are synthetic (no real Wan output here): a 1/f-noise texture (natural-image-like spectrum) panning and
slowly zooming, with a moving disc, so motion search and texture coding both matter. Random-weight decoder output is
noise and would say nothing about a codec.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import emit, header  # noqa: E402

import numpy as np  # noqa: E402

from wan_distill.video import X264Settings, decode_mp4, encode_mp4  # noqa: E402

SETTINGS = (  # (label, settings); the first is the default
    ("default: medium, CRF 23, threads auto", X264Settings()),
    ("medium, CRF 23, threads 1", X264Settings(threads=1)),
    ("medium, CRF 23, threads 2", X264Settings(threads=2)),
    ("medium, CRF 23, lookahead 10", X264Settings(lookahead=10)),
    ("fast, CRF 23", X264Settings(preset="fast")),
    ("faster, CRF 23", X264Settings(preset="faster")),
    ("veryfast, CRF 23", X264Settings(preset="veryfast")),
    ("veryfast, CRF 21", X264Settings(preset="veryfast", crf=21)),
    ("veryfast, CRF 23, lookahead 10", X264Settings(preset="veryfast", lookahead=10)),
    ("superfast, CRF 23", X264Settings(preset="superfast")),
    ("ultrafast, CRF 23", X264Settings(preset="ultrafast")),
)


def synthetic_video(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [F, H, W, 3]: a 1/f texture seen through a window that pans and zooms, plus a moving disc."""
    rng = np.random.default_rng(seed)
    ch, cw = int(height * 1.5), int(width * 1.5)
    fy, fx = np.fft.fftfreq(ch)[:, None], np.fft.fftfreq(cw)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(ch, cw))
    canvas = np.stack([np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((ch, cw)))).real for _ in range(3)], -1)
    canvas = (canvas - canvas.mean()) / canvas.std()
    canvas = np.clip(128 + 40 * canvas + np.array([10, 0, -10]), 0, 255).astype(np.float32)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        s = 1.0 - 0.15 * i / max(frames - 1, 1)                      # zoom in by 15 % over the clip
        oy, ox = 0.1 * ch + 0.8 * i, 0.1 * cw + 2.5 * i               # pan right/down
        sy = np.clip((oy + y * s).astype(np.int64), 0, ch - 1)
        sx = np.clip((ox + x * s).astype(np.int64), 0, cw - 1)
        frame = canvas[sy, sx]
        cy, cx = height * (0.3 + 0.4 * i / max(frames - 1, 1)), width * (0.8 - 0.6 * i / max(frames - 1, 1))
        disc = (y - cy) ** 2 + (x - cx) ** 2 < (0.12 * height) ** 2
        frame[disc] = (230, 60, 40)
        out[i] = frame.astype(np.uint8)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--write", action="store_true", help="write bench/results/x264_settings.md")
    a = p.parse_args()
    video = synthetic_video(a.frames, a.height, a.width)
    rows, ref = [], None
    for label, settings in SETTINGS:
        encode_mp4(video[:5], 16, settings=settings)  # warm-up
        times, mp4 = [], b""
        for _ in range(a.reps):
            t0 = time.perf_counter()
            mp4 = encode_mp4(video, 16, settings=settings)
            times.append(time.perf_counter() - t0)
        decoded = decode_mp4(mp4)
        ref = decoded if ref is None else ref
        rows.append((label, statistics.median(times), len(mp4), psnr(decoded, video), psnr(decoded, ref),
                     np.array_equal(decoded, ref)))
    base_t = rows[0][1]
    md = header("x264 settings (CPU)")
    md += (f"- {a.frames} frames of {a.height}x{a.width} (synthetic 1/f texture, pan + zoom + a moving disc), 16 fps, "
           f"yuv420p; median of {a.reps} encodes after a warm-up; PSNR over all frames and RGB channels\n\n")
    md += ("| settings | encode s | vs default | size KiB | PSNR vs source dB | PSNR vs default's output dB | "
           "same frames as default |\n|---|---|---|---|---|---|---|\n")
    for label, t, size, p_src, p_ref, same in rows:
        p_ref_s = "∞" if p_ref == float("inf") else f"{p_ref:.1f}"
        md += (f"| {label} | {t:.2f} | {base_t / t:.2f}× faster | {size / 1024:.0f} | {p_src:.2f} | {p_ref_s} | "
               f"{'yes' if same else 'no'} |\n")
    md += ("\nThe default stays x264's medium / CRF 23 / automatic threads: every faster preset changes the video "
           "(PSNR above), so it is opt-in per deployment (`preset`, `crf`, `x264_threads`, `x264_lookahead` parameters "
           "of `wan_decode_to_mp4` / `wan_video_encoder`). Even the same settings do not give byte-identical files "
           "run to run with this libx264 build, hence PSNR rather than equality.\n")
    emit("x264_settings", md, a.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
