#!/usr/bin/env python3
"""The benchmark model: a Wan2.1-layout T2V model dir whose DiT dominates a 50-step CFG run, as in real Wan2.1-14B,
with the tiny T5 and a tiny VAE. Also the helpers every served benchmark shares (server start, Triton statistics,
process RSS, the markdown header).

    .venv/bin/python bench/bench_model.py            # write bench/out/models/ (once) and print sizes
    .venv/bin/python bench/bench_model.py --probe    # + time one in-process distilled run per stage and one DiT call

Weights are random (written by ``wan_distill.tiny.write_model_dir`` with :data:`BENCH_SPEC`); timings do not depend
on the values. Everything goes under ``bench/out/`` (git-ignored).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODELS = OUT / "models"
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "python_backend"))
sys.path.insert(0, str(ROOT / "client"))

from demo import demo_env as scripts_demo_env, repository_copy as scripts_repository_copy  # noqa: E402
from wan_distill.tiny import TinySpec, write_demo_checkpoints, write_model_dir  # noqa: E402

# DiT: 8 layers at width 1024 (head_dim 128 as in Wan2.1), ffn 4x; T5 as the demo's (32 wide, 2 layers);
# VAE base width 4 (the demo's is 8). At 128x224, 17 frames the DiT sees 5 x 8 x 14 = 560 video tokens + 512 text tokens.
BENCH_SPEC = TinySpec(dit_dim=1024, dit_ffn=4096, dit_heads=8, dit_layers=8, vae_dim=4)
GEOMETRY = dict(height=128, width=224, num_frames=17)
BENCH_DIR = MODELS / "Wan2.1-T2V-bench"
DEMO_DIR = MODELS / "demo"
DEMO_CONFIGS = ROOT / "configs" / "demo"
PROMPT = "a red fox running through fresh snow, cinematic lighting"


# ----------------------------------------------------------------------------------------------------------------
# models and configs
# ----------------------------------------------------------------------------------------------------------------
def ensure_bench_model(force: bool = False) -> dict[str, Path]:
    """Write the bench model dir + its two run configs (distill 4 steps; baseline 50 steps CFG on the SAME DiT file)."""
    stamp = BENCH_DIR / "bench_spec.json"
    want = json.dumps({"spec": dataclasses.asdict(BENCH_SPEC), "seed": 0}, sort_keys=True)
    if force or not stamp.is_file() or stamp.read_text() != want:
        print(f"bench_model: writing {BENCH_DIR} ({BENCH_SPEC}) ...", flush=True)
        write_model_dir(BENCH_DIR, "t2v", BENCH_SPEC, seed=0)
        stamp.write_text(want)
    geo = {"target_height": GEOMETRY["height"], "target_width": GEOMETRY["width"],
           "target_video_length": GEOMETRY["num_frames"], "seed": 42}
    distill = {"infer_steps": 4, "denoising_step_list": [1000, 750, 500, 250], "sample_shift": 5,
               "enable_cfg": False, **geo}
    baseline = {"infer_steps": 50, "sample_shift": 5.0, "sample_solver": "unipc", "enable_cfg": True,
                "sample_guide_scale": 5.0, **geo,
                # the same DiT weights as the distilled run: only the sampler differs
                "dit_original_ckpt": str(BENCH_DIR / "distill_models" / "distill_model.safetensors")}
    paths = {"model": BENCH_DIR, "distill": BENCH_DIR / "run_distill_4step.json",
             "baseline": BENCH_DIR / "run_baseline_50step_cfg.json"}
    for key, cfg in (("distill", distill), ("baseline", baseline)):
        text = json.dumps(cfg, indent=2)
        if not paths[key].is_file() or paths[key].read_text() != text:
            paths[key].write_text(text)
    return paths


def ensure_demo_models() -> dict[str, Path]:
    """The tiny demo checkpoints (same as ``make tiny``), written under bench/out/models/demo."""
    dirs = {"t2v": DEMO_DIR / "Wan2.1-T2V-tiny", "i2v": DEMO_DIR / "Wan2.1-I2V-tiny"}
    if not all((d / "distill_models" / "distill_model.safetensors").is_file() for d in dirs.values()):
        write_demo_checkpoints(DEMO_DIR)
    return dirs


def bench_env(paths: dict[str, Path]) -> dict[str, str]:
    return {"WAN_T2V_MODEL_PATH": str(paths["model"]), "WAN_T2V_CONFIG": str(paths["distill"]),
            "WAN_T2V_BASELINE_CONFIG": str(paths["baseline"])}


def demo_env(dirs: dict[str, Path]) -> dict[str, str]:
    return scripts_demo_env(dirs["t2v"], dirs["i2v"])


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def dit_params(spec: TinySpec = BENCH_SPEC) -> int:
    import torch
    from wan_distill.models.dit import WanDiT
    with torch.device("meta"):
        return sum(p.numel() for p in WanDiT(spec.dit_config("t2v")).parameters())


# ----------------------------------------------------------------------------------------------------------------
# server
# ----------------------------------------------------------------------------------------------------------------
def start_server(env: dict[str, str], models: list[str], name: str, repository: Path | None = None):
    """tritonserver on model_repository/ (or ``repository``) loading only ``models`` (ensembles pull in their steps)."""
    from triton_server import TritonServer
    log = OUT / "logs" / f"{name}-tritonserver.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    extra = ["--model-control-mode=explicit"] + [f"--load-model={m}" for m in models]
    return TritonServer(repository or ROOT / "model_repository", env=env, log_path=log, extra_args=extra, ready_timeout_s=900)


def repository_copy(name: str, params: dict[str, str], only: str = "") -> Path:
    """bench/out/model_repository_<name>: model_repository/ with config.pbtxt ``parameters`` set to ``params`` in every
    python model whose name contains ``only`` (model.py files symlinked; scripts/demo.py ``repository_copy``)."""
    import shutil
    dst = OUT / f"model_repository_{name}"
    if dst.exists():
        shutil.rmtree(dst)
    return scripts_repository_copy(dst, params, only)


STAT_KEYS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def model_stats(grpc, model: str) -> dict[str, float]:
    """Cumulative Triton statistics of one model: counts and seconds per field (+ execution_count)."""
    st = grpc.get_inference_statistics(model, as_json=True)["model_stats"][0]
    inf = st.get("inference_stats", {})
    out = {"execution_count": float(st.get("execution_count", 0))}
    for k in STAT_KEYS:
        out[f"{k}_count"] = float(inf.get(k, {}).get("count", 0))
        out[f"{k}_s"] = float(inf.get(k, {}).get("ns", 0)) / 1e9
    return out


def stats_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {m: {k: after[m][k] - before[m][k] for k in after[m]} for m in after}


def snapshot(grpc, models: list[str]) -> dict[str, dict[str, float]]:
    return {m: model_stats(grpc, m) for m in models}


# ----------------------------------------------------------------------------------------------------------------
# process memory (/proc)
# ----------------------------------------------------------------------------------------------------------------
def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def process_tree(pid: int) -> dict[str, dict[str, int]]:
    """{label: /proc status (bytes)} for a tritonserver and all its descendants (python stubs labelled by instance)."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        if p == pid:
            label = "tritonserver"
        elif argv and argv[0].endswith("triton_python_backend_stub") and len(argv) > 8:
            label = argv[8]  # stub argv: model.py, shm region, 2 sizes, parent pid, backend dir, ipc size, instance
        else:
            label = Path(argv[0]).name if argv else str(p)
        out[f"{label} (pid {p})"] = _status(p)
        todo += _children(p)
    return out


def total(tree: dict[str, dict[str, int]], key: str = "VmRSS") -> int:
    return sum(v.get(key, 0) for v in tree.values())


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


# ----------------------------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    import torch
    cpu = platform.processor() or "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "torch": torch.__version__, "threads": str(torch.get_num_threads()),
            "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "python": platform.python_version()}


def header(title: str, argv: list[str] | None = None) -> str:
    m = machine()
    cmd = " ".join(shlex.quote(a) for a in (argv if argv is not None else [".venv/bin/python", *sys.argv]))
    return (f"## {title}\n\n"
            f"- machine: {m['cpu']}, {m['cores']} cores (shared), torch {m['torch']} ({m['threads']} intra-op threads), "
            f"Python {m['python']}\n- date: {m['date']}\n- command: `{cmd}`\n")


def emit(name: str, markdown: str, write: bool) -> None:
    print("\n" + markdown, flush=True)
    if write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.md").write_text(markdown)
        print(f"wrote {RESULTS / f'{name}.md'}", flush=True)


def med(xs) -> float:
    return statistics.median(xs)


def spec_line() -> str:
    s, g = BENCH_SPEC, GEOMETRY
    lat = (16, (g["num_frames"] - 1) // 4 + 1, g["height"] // 8, g["width"] // 8)
    tokens = lat[1] * lat[2] // 2 * lat[3] // 2
    return (f"bench model: DiT dim {s.dit_dim}, ffn {s.dit_ffn}, {s.dit_heads} heads, {s.dit_layers} layers "
            f"({dit_params() / 1e6:.0f} M params, fp32 on CPU); T5 dim {s.t5_dim} x {s.t5_layers} layers, text_len "
            f"{s.text_len}; VAE base width {s.vae_dim}; geometry {g['height']}x{g['width']}, {g['num_frames']} frames "
            f"(latent {list(lat)}, {tokens} video tokens)")


# ----------------------------------------------------------------------------------------------------------------
def probe(paths: dict[str, Path], reps: int) -> None:
    """In-process: per-stage seconds of the distilled run and one DiT call -> the DiT share of a 50-step CFG run."""
    import torch
    from wan_distill.config import RunConfig
    from wan_distill.pipeline import WanPipeline
    pipe = WanPipeline.from_model_dir(paths["model"], RunConfig.from_json(paths["distill"]), device="cpu")
    pipe.text_to_video(PROMPT, seed=1)  # warm-up
    runs = [pipe.text_to_video(PROMPT, seed=1).timings for _ in range(reps)]
    t = {k: med([r[k] for r in runs]) for k in runs[0]}
    per_call = t["dit"] / 4
    other = t["text"] + t["vae"] + t["mp4"]
    base = 100 * per_call + other
    print(f"distilled run (median of {reps}): " + ", ".join(f"{k} {v:.3f} s" for k, v in t.items()))
    print(f"one DiT call ~ {per_call:.3f} s; estimated 50-step CFG run ~ {base:.1f} s, DiT share "
          f"{100 * per_call * 100 / base:.1f} %; estimated distill speedup {base / (4 * per_call + other):.1f}x "
          f"(threads {torch.get_num_threads()})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rewrite the model dir")
    ap.add_argument("--probe", action="store_true", help="time the in-process stages")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    t0 = time.perf_counter()
    paths = ensure_bench_model(a.force)
    print(spec_line())
    print(f"{paths['model']}: {dir_size_mb(paths['model']):.0f} MB on disk ({time.perf_counter() - t0:.1f} s)")
    if a.probe:
        probe(paths, a.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
