#!/usr/bin/env python3
"""In-process stage times on the tiny demo checkpoints: 4-step distill vs 50-step CFG baseline (T2V), and the I2V
stages (text, image, dit, vae, mp4). One run, same machine; the ratio is the number to read.

    .venv/bin/python bench/inprocess_stages.py [--reps 3] [--write]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import DEMO_CONFIGS as DEMO, emit, ensure_demo_models, header  # noqa: E402
from demo import demo_image  # noqa: E402  (scripts/demo.py: the demo's synthetic 320x192 picture)

from wan_distill.config import RunConfig  # noqa: E402
from wan_distill.pipeline import WanPipeline  # noqa: E402

STAGES = ("text", "image", "dit", "vae", "mp4")


def median_timings(run, reps: int) -> dict[str, float]:
    run()  # warm-up
    samples = [run().timings for _ in range(reps)]
    out = {k: statistics.median(s.get(k, 0.0) for s in samples) for k in STAGES if any(k in s for s in samples)}
    out["total"] = statistics.median(sum(s.values()) for s in samples)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--write", action="store_true", help="write bench/results/inprocess_stages.md")
    args = p.parse_args()
    dirs = ensure_demo_models()
    t2v_dir, i2v_dir = dirs["t2v"], dirs["i2v"]

    distill = WanPipeline.from_model_dir(t2v_dir, RunConfig.from_json(DEMO / "wan_t2v_distill_4step_demo.json"), "cpu")
    baseline = WanPipeline.from_model_dir(t2v_dir, RunConfig.from_json(DEMO / "wan_t2v_baseline_50step_cfg_demo.json"),
                                          "cpu")
    i2v = WanPipeline.from_model_dir(i2v_dir, RunConfig.from_json(DEMO / "wan_i2v_distill_4step_demo.json"), "cpu")
    image = demo_image()
    rows = {
        "T2V distill, 4 steps, no CFG (4 DiT calls)": median_timings(lambda: distill.text_to_video("a red fox", seed=1), args.reps),
        "T2V baseline, 50 steps, CFG (100 DiT calls)": median_timings(lambda: baseline.text_to_video("a red fox", seed=1), args.reps),
        "I2V distill, 4 steps, no CFG": median_timings(lambda: i2v.image_to_video(image, "waves", seed=1), args.reps),
    }
    geo = f"{distill.run.target_height}x{distill.run.target_width}, {distill.run.target_video_length} frames"
    lines = [
        header("In-process stages on the tiny demo checkpoints").rstrip(),
        f"- geometry {geo}, median of {args.reps} after a warm-up",
        "",
        "| run | " + " | ".join(STAGES) + " | total s |",
        "|---|" + "---|" * (len(STAGES) + 1),
    ]
    for name, t in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{t[k]:.3f}" if k in t else "–" for k in STAGES) + f" | {t['total']:.3f} |")
    d, b = rows["T2V distill, 4 steps, no CFG (4 DiT calls)"], rows["T2V baseline, 50 steps, CFG (100 DiT calls)"]
    lines += ["", f"Baseline / distill: end to end **{b['total'] / d['total']:.1f}×**, DiT stage {b['dit'] / d['dit']:.1f}× "
                  "(ideal 25×). The tiny DiT is cheap next to the tiny VAE here, so the end-to-end ratio is small; "
                  "`bench/distill_speedup.py` measures a DiT-dominated model."]
    emit("inprocess_stages", "\n".join(lines) + "\n", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
