#!/usr/bin/env python3
"""Memory: peak RSS of the served demo (tritonserver + every python stub, per process) and of the in-process pipeline
per stage.

    flock /tmp/wan-bench.lock .venv/bin/python bench/memory.py --write

Served: the full model_repository on the tiny demo checkpoints (as ``make demo``), one T2V and one I2V request at the
run configs' default geometry (192x320, 17 frames); VmRSS / VmHWM (peak) of every process from /proc.
In-process: each stage runs in a FRESH subprocess that loads only what the stage needs (inputs prepared by the
previous stage and passed through a file), so one stage's peak never hides another's: peak = ru_maxrss at the end,
"load" = ru_maxrss after loading (before running), "run" = the increase while running. A last subprocess runs the whole
``WanPipeline.text_to_video`` for reference.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_model import (DEMO_CONFIGS, PROMPT, demo_env, emit, ensure_demo_models, header, mib, process_tree,
                         start_server, total)

GEO = dict(height=192, width=320, num_frames=17)
STAGES = ("import", "text", "dit", "vae", "mp4", "pipeline")


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def stage(name: str, model_dir: Path, work: Path) -> dict:
    """Runs in a fresh subprocess."""
    import torch
    from wan_distill.config import RunConfig
    from wan_distill.pipeline import (WanPipeline, load_engine, load_text_encoder, load_vae_from_dir, text_len_of)
    from wan_distill.requests import check_geometry
    from wan_distill.video import encode_mp4
    run = RunConfig.from_json(DEMO_CONFIGS / "wan_t2v_distill_4step_demo.json")
    geo = check_geometry(run, GEO["height"], GEO["width"], GEO["num_frames"])
    out = {"start": maxrss()}
    t0 = time.perf_counter()
    with torch.inference_mode():
        if name == "import":
            pass
        elif name == "text":
            enc = load_text_encoder(model_dir, torch.device("cpu"), text_len_of(model_dir, run))
            out["load"] = maxrss()
            torch.save(enc.encode([PROMPT])[0].float(), work / "context.pt")
        elif name == "dit":
            engine = load_engine(model_dir, run, torch.device("cpu"))
            ctx = torch.load(work / "context.pt")
            out["load"] = maxrss()
            torch.save(engine.denoise(ctx, 7, geo.latent_shape), work / "latents.pt")
        elif name == "vae":
            vae = load_vae_from_dir(model_dir, torch.device("cpu"))
            z = torch.load(work / "latents.pt")
            out["load"] = maxrss()
            torch.save(vae.decode_to_uint8(z), work / "frames.pt")
        elif name == "mp4":
            frames = torch.load(work / "frames.pt").numpy()
            out["load"] = maxrss()
            out["bytes"] = len(encode_mp4(frames, run.fps))
        elif name == "pipeline":
            pipe = WanPipeline.from_model_dir(model_dir, run, device="cpu")
            out["load"] = maxrss()
            pipe.text_to_video(PROMPT, seed=7, **GEO)
    out["peak"] = maxrss()
    out["seconds"] = time.perf_counter() - t0
    return out


def served(dirs) -> dict:
    from wan_client import WanClient
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from demo import demo_image
    with start_server(demo_env(dirs), ["wan_t2v", "wan_i2v"], "memory") as srv:
        trees = {"idle after load": process_tree(srv.pid)}
        with WanClient(srv.grpc_url, timeout_s=3600, retries=0) as client:
            client.t2v(PROMPT, seed=1, **GEO)
            trees["after 1 T2V"] = process_tree(srv.pid)
            client.i2v(demo_image(), "waves roll onto the beach at sunset", seed=1, **GEO)
            trees["after 1 T2V + 1 I2V"] = process_tree(srv.pid)
    return trees


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="write bench/results/memory.md")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stage:
        print(json.dumps(stage(a.stage, a.model_dir, a.work)))
        return 0

    dirs = ensure_demo_models()
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for s in STAGES:
            p = subprocess.run([sys.executable, __file__, "--stage", s, "--work", work, "--model-dir", str(dirs["t2v"])],
                               capture_output=True, text=True, check=True)
            rows[s] = json.loads(p.stdout.strip().splitlines()[-1])
            print(s, rows[s], flush=True)
    trees = served(dirs)

    md = header("Memory: served demo (per process) and in-process pipeline (per stage)")
    md += "- tiny demo checkpoints (TinySpec() defaults), configs/demo run configs, 192x320, 17 frames, fp32 on CPU\n\n"
    md += "### Served (tritonserver + python stubs; MiB)\n\n"
    names = sorted({k.split(" (")[0] for t in trees.values() for k in t})
    md += "| process | " + " | ".join(f"RSS {w}" for w in trees) + " | peak (VmHWM) |\n"
    md += "|---|" + "---|" * (len(trees) + 1) + "\n"
    last = list(trees.values())[-1]
    for n in names:
        vals = [next((v for k, v in t.items() if k.split(" (")[0] == n), {}) for t in trees.values()]
        md += f"| {n} | " + " | ".join(mib(v.get("VmRSS", 0)) for v in vals) + f" | {mib(vals[-1].get('VmHWM', 0))} |\n"
    md += ("| **total** | " + " | ".join(f"**{mib(total(t))}**" for t in trees.values())
           + f" | **{mib(total(last, 'VmHWM'))}** (sum of per-process peaks) |\n")
    md += ("\n### In-process, one fresh subprocess per stage (ru_maxrss; MiB)\n\n"
           "| stage | what is loaded | peak after load | peak after run | increase while running | seconds |\n"
           "|---|---|---|---|---|---|\n")
    what = {"import": "python + torch + wan_distill imports only", "text": "UMT5 + tokenizer", "dit": "DiT",
            "vae": "VAE", "mp4": "uint8 frames + PyAV", "pipeline": "whole WanPipeline (DiT + VAE + UMT5)"}
    for s, r in rows.items():
        load = r.get("load", r["start"])
        md += (f"| {s} | {what[s]} | {mib(load)} | {mib(r['peak'])} | {mib(r['peak'] - load)} | "
               f"{r['seconds']:.2f} |\n")
    emit("memory", md, a.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
