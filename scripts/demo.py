#!/usr/bin/env python3
"""`make demo`: serve the demo models with the real tritonserver, generate T2V and I2V videos through the gRPC
client, write them to outputs/, stop the server.

T2V serves the trained toy model (training/models/Wan2.1-T2V-toy: a 4-step DMD student trained on synthetic clips of
coloured shapes, 9 frames of 32x32; ``python -m wan_training.recipe`` reproduces it) with configs/toy/, and writes
one video per demo prompt (outputs/t2v.mp4 is the first) plus a frame strip (outputs/t2v_strip.png). I2V serves the
trained toy I2V root (training/models/Wan2.1-I2V-toy, same recipe) when present: each demo prompt with the first frame
of a held-out clip of that caption as the image (outputs/i2v_*.mp4, outputs/i2v.mp4 the first, outputs/i2v_strip.png);
otherwise the random tiny checkpoint (``--checkpoints``), whose video is noise. Without the trained T2V root, T2V falls
back to the random tiny checkpoint too. Point WAN_T2V_MODEL_PATH / WAN_I2V_MODEL_PATH at real Wan2.1 model roots (see README) to
serve real models with the same repository.
"""
from __future__ import annotations

import argparse
import io
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import triton_server  # noqa: E402
from triton_server import TritonServer  # noqa: E402

from wan_client import WanClient  # noqa: E402
from wan_client.cli import atomic_write  # noqa: E402
from wan_training.data import COLOURS, MOTIONS, SHAPES, frame_strip  # noqa: E402
from wan_training.evaluate import I2V_IMAGE_SEED, Prompt  # noqa: E402

DEMO_CONFIGS = ROOT / "configs" / "demo"
TOY_CONFIGS = ROOT / "configs" / "toy"
TOY_ROOT = ROOT / "training" / "models" / "Wan2.1-T2V-toy"
TOY_I2V_ROOT = ROOT / "training" / "models" / "Wan2.1-I2V-toy"
TOY_PROMPTS = ("a red circle moving left", "a blue square moving up", "a yellow triangle moving right",
               "a green circle standing still")


def demo_env(t2v_dir: Path, i2v_dir: Path, lora: bool = False) -> dict[str, str]:
    """The WAN_* variables that make model_repository/ serve the tiny demo roots with the demo run configs
    (``lora``: base weights + the distill LoRA instead of the full distilled DiT)."""
    suffix = "_lora" if lora else ""
    return {"WAN_T2V_MODEL_PATH": str(Path(t2v_dir).resolve()), "WAN_I2V_MODEL_PATH": str(Path(i2v_dir).resolve()),
            "WAN_T2V_CONFIG": str(DEMO_CONFIGS / f"wan_t2v_distill_4step_demo{suffix}.json"),
            "WAN_I2V_CONFIG": str(DEMO_CONFIGS / f"wan_i2v_distill_4step_demo{suffix}.json"),
            "WAN_T2V_BASELINE_CONFIG": str(DEMO_CONFIGS / "wan_t2v_baseline_50step_cfg_demo.json"),
            "WAN_I2V_BASELINE_CONFIG": str(DEMO_CONFIGS / "wan_i2v_baseline_40step_cfg_demo.json")}


def toy_env(t2v_root: Path, i2v_dir: Path, lora: bool = False, i2v_root: Path | None = None) -> dict[str, str]:
    """``demo_env`` with T2V served from the trained toy root and its run configs (configs/toy/); I2V from ``i2v_dir``
    with the demo configs, or from the trained toy I2V root ``i2v_root`` with its configs/toy/ ones."""
    suffix = "_lora" if lora else ""
    env = {**demo_env(t2v_root, i2v_root or i2v_dir, lora),
           "WAN_T2V_CONFIG": str(TOY_CONFIGS / f"wan_t2v_distill_4step_toy{suffix}.json"),
           "WAN_T2V_BASELINE_CONFIG": str(TOY_CONFIGS / "wan_t2v_baseline_50step_cfg_toy.json")}
    if i2v_root is not None:
        env |= {"WAN_I2V_CONFIG": str(TOY_CONFIGS / f"wan_i2v_distill_4step_toy{suffix}.json"),
                "WAN_I2V_BASELINE_CONFIG": str(TOY_CONFIGS / "wan_i2v_baseline_50step_cfg_toy.json")}
    return env


def has_toy_root(root: Path = TOY_ROOT) -> bool:
    return (Path(root) / "distill_models" / "distill_model.safetensors").is_file()


def toy_i2v_prompts(seed: int) -> list[Prompt]:
    """The demo prompts for the trained I2V root: each caption of TOY_PROMPTS with the first frame of a held-out clip
    of that caption (the evaluation's image stream, indices past the evaluated ones)."""
    out = []
    for i, text in enumerate(TOY_PROMPTS):
        words = text.split()
        motion = "still" if words[-1] == "still" else words[-1]
        assert words[1] in COLOURS and words[2] in SHAPES and motion in MOTIONS, text
        out.append(Prompt(words[1], words[2], motion, seed, image=(I2V_IMAGE_SEED, 10_000 + i)))
    return out


def repository_copy(dst: Path, params: dict[str, str], only: str = "") -> Path:
    """model_repository/ written to ``dst`` with config.pbtxt ``parameters`` set to ``params`` in every python model
    whose name contains ``only`` (model.py files are symlinks to the real adapters), e.g.
    ``repository_copy(tmp, {"max_jobs_per_call": "1"}, only="wan_t2v_dit_baseline")`` for one DiT slot. Paths must
    then come from the WAN_* variables (``demo_env`` gives absolute ones)."""
    src = ROOT / "model_repository"
    for model in sorted(p for p in src.iterdir() if (p / "config.pbtxt").is_file()):
        (dst / model.name / "1").mkdir(parents=True)
        cfg = (model / "config.pbtxt").read_text()
        if 'backend: "python"' in cfg:
            (dst / model.name / "1" / "model.py").symlink_to((model / "1" / "model.py").resolve())
            if only in model.name:
                for key, value in params.items():
                    line = f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
                    cfg, n = re.subn(rf'^parameters {{ key: "{key}" .*$', line, cfg, flags=re.M)
                    cfg += "" if n else line + "\n"
        (dst / model.name / "config.pbtxt").write_text(cfg)
    return dst


def demo_image(width: int = 320, height: int = 192) -> bytes:
    """A synthetic input picture (sky, sun, sea) so the demo needs no files."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    sky = y < height * 0.6
    img[sky] = np.stack([90 + 60 * y / height, 150 + 50 * y / height, np.full_like(y, 235)], -1)[sky]
    img[~sky] = np.stack([20 + 0 * y, 70 + 40 * (y / height), 140 + 40 * (y / height)], -1)[~sky]
    sun = (x - width * 0.7) ** 2 + (y - height * 0.3) ** 2 < (height * 0.12) ** 2
    img[sun] = (255, 220, 120)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints" / "demo")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--t2v-root", type=Path, default=TOY_ROOT, help="trained T2V model root served for T2V")
    parser.add_argument("--i2v-root", type=Path, default=TOY_I2V_ROOT, help="trained I2V model root served for I2V")
    parser.add_argument("--serve", action="store_true", help="only serve the demo models in the foreground (make serve)")
    parser.add_argument("serve_args", nargs="*", help="with --serve: extra scripts/triton_server.py arguments")
    args = parser.parse_args()

    i2v_dir = args.checkpoints / "Wan2.1-I2V-tiny"
    trained, i2v_trained = has_toy_root(args.t2v_root), has_toy_root(args.i2v_root)
    i2v_root = args.i2v_root if i2v_trained else None
    env = demo_env(args.checkpoints / "Wan2.1-T2V-tiny", i2v_root or i2v_dir)
    toy = toy_env(args.t2v_root, i2v_dir, i2v_root=i2v_root)
    env |= {k: v for k, v in toy.items()
            if (trained and k.startswith("WAN_T2V")) or (i2v_trained and k.startswith("WAN_I2V"))}
    if args.serve:  # `make serve`: the same deployment, in the foreground, until Ctrl-C
        return triton_server.main(["--model-repository", str(ROOT / "model_repository"),
                                   *[f"--env={k}={v}" for k, v in env.items()], *args.serve_args])
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "tritonserver.log"
    print(f"demo: starting tritonserver on model_repository/ (log: {log}) ...", flush=True)
    t0 = time.perf_counter()
    with TritonServer(ROOT / "model_repository", env=env, log_path=log, ready_timeout_s=600) as server:
        print(f"demo: server ready in {time.perf_counter() - t0:.1f} s, gRPC at {server.grpc_url}", flush=True)
        with WanClient(server.grpc_url, timeout_s=900) as client:
            # (task, file name, prompt for the strip or "", request)
            if trained:
                jobs = [("t2v", f"t2v_{p.replace(' ', '_')}", p,
                         lambda p=p: client.t2v(p, seed=args.seed, return_frames=True)) for p in TOY_PROMPTS]
            else:
                jobs = [("t2v", "t2v", "", lambda: client.t2v("a red fox running through fresh snow, cinematic",
                                                              seed=args.seed))]
            if i2v_trained:
                prompts = toy_i2v_prompts(args.seed)
                image = prompts[0].image_png()
                jobs += [("i2v", f"i2v_{p.text.replace(' ', '_')}", p.text,
                          lambda p=p: client.i2v(p.image_png(), p.text, seed=args.seed, return_frames=True))
                         for p in prompts]
            else:
                image = demo_image()
                jobs.append(("i2v", "i2v", "", lambda: client.i2v(image, "waves roll onto the beach at sunset",
                                                                  seed=args.seed)))
            atomic_write(args.out / "i2v_input.png", lambda f: f.write(image))
            strips: dict[str, list[np.ndarray]] = {}
            for task, name, prompt, run in jobs:
                result = run()
                paths = [args.out / f"{name}.mp4"]
                if task not in strips and name != task:
                    paths.append(args.out / f"{task}.mp4")            # t2v.mp4 / i2v.mp4: the first of the task
                for path in paths:
                    atomic_write(path, lambda f: f.write(result.mp4))
                if prompt:
                    strips.setdefault(task, []).append(frame_strip(result.frames, every=1))
                print(f"demo: {name}: {len(result.mp4)} bytes -> {paths[0]} ({result.elapsed_s:.2f} s end to end)",
                      flush=True)
    for task, rows in strips.items():
        strip = args.out / f"{task}_strip.png"
        Image.fromarray(np.concatenate(rows, axis=0)).save(strip)
        print(f"demo: {task} frame strips (one row per prompt: {'; '.join(TOY_PROMPTS)}) -> {strip}", flush=True)
    served = [f"T2V served the trained toy model {args.t2v_root}" if trained else "T2V served random tiny weights",
              f"I2V served the trained toy model {args.i2v_root} (first frames of held-out clips as images)"
              if i2v_trained else "I2V served random tiny weights"]
    noise = [t for t, ok in (("outputs/t2v.mp4", trained), ("outputs/i2v.mp4", i2v_trained)) if not ok]
    print(f"demo: done. {'; '.join(served)} (4-step DMD students, 9 frames of 32x32 shapes where trained)."
          + (f" Random weights make noise: {', '.join(noise)}; see README to serve real Wan2.1 weights (or train the "
             "toy models: make train)." if noise else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
