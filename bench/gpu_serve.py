#!/usr/bin/env python3
"""Served T2V on a real tritonserver + gRPC client, through a deployment profile (issue 11 §3). Random weights.

For each ``--arch`` (1.3b, 14b; tiny for the CPU check) it writes a Wan2.1-layout model root with random weights
(the DiT made on the device, bf16 on CUDA), serves it with the profile (t2v-1.3b / t2v-14b, ``+baseline`` with
``--baseline``) from its generated repository, and reports:
  * end-to-end latency of the ``wan_t2v`` ensemble (after one warm-up request) with the per-stage breakdown from the
    server (text encoder and the decode->MP4 step: Triton's compute time; DiT steps, VAE decode and the overlapped
    MP4 encoder's busy time: the models' own metrics; the rest is transfer and scheduling);
  * peak memory per model process (GPU: nvidia-smi per stub PID, polled; CPU: the stub's peak RSS);
  * served frames vs the in-process pipeline on the same device, same seed (CPU: exact; GPU bf16: stated tolerance);
  * with ``--baseline``: the served 50-step CFG baseline latency and the baseline / distilled ratio;
  * at 14B: the figure next to LightX2V's published 14 s (H200, 480P, 4 steps; quoted, not measured here).

The text encoder is UMT5 at XXL width (d_model 4096, d_ff 10240, 64 heads) with ``--t5-layers`` of its 24 layers
(default 2) and a tiny sentencepiece vocabulary, so the DiT sees real-size context; the text stage time is not
UMT5-XXL's. The VAE is Wan's at full width (dim 96, fp32).

On CPU (this is how the script is tested; numbers mean nothing):
    bench/gpu_bundle.sh pack --python 3.11 --out /tmp/bundle
    bench/gpu_bundle.sh unpack /tmp/bundle/call1 /tmp/gpuenv && bench/gpu_bundle.sh wheels /tmp/bundle/call2 /tmp/gpuenv
    /tmp/gpuenv/venv/bin/python bench/gpu_serve.py --env /tmp/gpuenv --device cpu --arch tiny --baseline \\
        --height 32 --width 48 --frames 5 --out /tmp/gpu_serve_cpu.md
On the GPU machine (tool `run`; the bundle copied into an ignored folder of the checkout that travels, e.g.
.gpu_bundle/ from ``bench/gpu_bundle.sh pack``), two calls, the second at once (the machine stays warm briefly):
    carry [".gpu_bundle/call1"]: bench/gpu_bundle.sh unpack .gpu_bundle/call1 /tmp/gpuenv
    carry [".gpu_bundle/call2"]: bench/gpu_bundle.sh wheels .gpu_bundle/call2 /tmp/gpuenv &&
        PYTHONUNBUFFERED=1 /tmp/gpuenv/venv/bin/python bench/gpu_serve.py --env /tmp/gpuenv --arch 1.3b --baseline \\
        --arch 14b --work /tmp/gpu_serve --out $OUT/gpu_serve.md
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_model import header, model_stats, process_tree  # noqa: E402  (puts scripts/, python_backend/ on sys.path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from triton_server import TritonServer, prepare_profile  # noqa: E402
from wan_distill.config import DiTConfig, RunConfig  # noqa: E402

DISTILL = ROOT / "configs" / "distill" / "wan_t2v_distill_4step_cfg.json"
BASELINE = ROOT / "configs" / "baseline" / "wan_t2v_baseline_50step_cfg.json"
PROMPT = "a red fox running through fresh snow, cinematic lighting"
LIGHTX2V_14B_S = 14.0  # LightX2V, Wan2.1 14B distilled, 4 steps, 480P, one H200 (published; not measured here)
# GPU bf16: served and in-process frames run the same kernels but not necessarily in the same order (cuDNN / SDPA
# algorithm choice per process), so they may differ by rounding: allowed mean |diff| <= 1 level, 99th pct <= 8.
BF16_MEAN, BF16_P99 = 1.0, 8.0


# ----------------------------------------------------------------------------------------------
# model roots with random weights
# ----------------------------------------------------------------------------------------------
def write_root(root: Path, arch: str, device: torch.device, t5_layers: int) -> Path:
    """A Wan2.1 T2V model root: config.json, the DiT (base file; the distilled file links to it), UMT5, VAE."""
    from safetensors.torch import save_file

    from wan_distill.loaders.layout import T5_FILE, TOKENIZER_DIR, VAE_FILE
    from wan_distill.tiny import write_model_dir, write_tiny_tokenizer, write_tiny_umt5, write_tiny_vae

    if root.exists():
        shutil.rmtree(root)
    if arch == "tiny":
        return write_model_dir(root, "t2v")
    # "small": the same writer at toy sizes (checks this path on a CPU host)
    cfg = {"1.3b": DiTConfig.t2v_1_3b(), "14b": DiTConfig.t2v_14b(),
           "small": DiTConfig("t2v", 128, 256, 256, 2, 2, 16, 16, text_dim=64)}[arch]
    t5 = dict(d_model=4096, heads=64, d_ff=10240) if arch != "small" else dict(d_model=64, heads=2, d_ff=128)
    (root / "distill_models").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    from gpu_check import build_dit  # random normals written on the device (bench/gpu_check.py)

    dit = build_dit(cfg, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    save_file({k: v.contiguous().cpu() for k, v in dit.state_dict().items()},
              str(root / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    del dit
    torch.cuda.empty_cache() if device.type == "cuda" else None
    (root / "distill_models" / "distill_model.safetensors").symlink_to("../diffusion_pytorch_model.safetensors")
    vocab = write_tiny_tokenizer(root / TOKENIZER_DIR)
    write_tiny_umt5(root / T5_FILE, vocab_size=vocab, layers=t5_layers, seed=1, **t5)
    write_tiny_vae(root / VAE_FILE, dim=96, seed=2)
    return root


# ----------------------------------------------------------------------------------------------
# measuring a served deployment
# ----------------------------------------------------------------------------------------------
class GpuMemoryPoller:
    """Peak used GPU memory per PID (nvidia-smi --query-compute-apps), polled on a thread."""

    def __init__(self, period_s: float = 0.25):
        self.peak: dict[int, int] = {}
        self.period_s = period_s
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10, check=True).stdout
                for line in out.strip().splitlines():
                    pid, mib = (int(v) for v in line.split(","))
                    self.peak[pid] = max(self.peak.get(pid, 0), mib << 20)
            except (OSError, subprocess.SubprocessError, ValueError) as e:
                self.error = str(e)
            self._stop.wait(self.period_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def metric_sums(url: str) -> dict[str, float]:
    """{'<metric>{model}': value} of the *_sum / *_count series of the wan_* histograms (Prometheus text)."""
    text = urllib.request.urlopen(f"http://{url}", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("wan_") and ("_sum{" in line or "_count{" in line):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _metric(d: dict[str, float], name: str, model: str) -> float:
    return sum(v for k, v in d.items() if k.startswith(name + "{") and f'model="{model}"' in k)


def infer(client, model: str, seed: int, geo: dict) -> tuple[float, bytes, np.ndarray]:
    import tritonclient.grpc as grpcclient

    items = []
    for name, value in (("PROMPT", PROMPT.encode()), ("SEED", seed), ("HEIGHT", geo["height"]),
                        ("WIDTH", geo["width"]), ("NUM_FRAMES", geo["num_frames"])):
        t = grpcclient.InferInput(name, [1], "BYTES" if name == "PROMPT" else "INT64")
        t.set_data_from_numpy(np.array([value], dtype=object if name == "PROMPT" else np.int64))
        items.append(t)
    t0 = time.perf_counter()
    r = client.infer(model, items, outputs=[grpcclient.InferRequestedOutput("VIDEO_MP4"),
                                            grpcclient.InferRequestedOutput("FRAMES")], client_timeout=3600)
    return time.perf_counter() - t0, r.as_numpy("VIDEO_MP4")[0], r.as_numpy("FRAMES")


def served(args, arch: str, root: Path, work: Path, device: torch.device) -> dict:
    import tritonclient.grpc as grpcclient

    cuda = device.type == "cuda"
    profile = ("t2v-14b" if arch == "14b" else "t2v-1.3b") + ("+baseline" if args.baseline else "")
    env = {"WAN_T2V_MODEL_PATH": str(root), "WAN_T2V_CONFIG": str(DISTILL), "WAN_T2V_BASELINE_CONFIG": str(BASELINE)}
    if not cuda:
        env["WAN_NUM_THREADS"] = str(args.threads)
    if args.gpu_map:
        env["WAN_GPU_MAP"] = args.gpu_map
    repo, tritonserver_args, model_env = prepare_profile(profile, work / "repo", env=env,
                                                         device="gpu" if cuda else "cpu", memory_check=cuda)
    triton_dir, venv = triton_and_venv(args)
    server_env = {**env, **model_env, "LD_LIBRARY_PATH": str(triton_dir / "lib")}
    geo = dict(height=args.height, width=args.width, num_frames=args.frames)
    res: dict = {"profile": profile, "models": tritonserver_args[1:]}
    t0 = time.perf_counter()
    with GpuMemoryPoller() if cuda else _Null() as poller, \
            TritonServer(repo, env=server_env, extra_args=tritonserver_args, log_path=work / "server.log",
                         ready_timeout_s=1800, triton_dir=triton_dir, venv=venv) as srv:
        res["load_s"] = time.perf_counter() - t0
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        res["warmup_s"], _, _ = infer(client, "wan_t2v", args.seed, geo)
        before_m, before_t = metric_sums(srv.metrics_url), model_stats(client, "wan_text_encoder")
        before_d = model_stats(client, "wan_decode_to_mp4")
        runs = []
        for _ in range(args.reps):
            s, mp4, frames = infer(client, "wan_t2v", args.seed, geo)
            runs.append(s)
        after_m, after_t = metric_sums(srv.metrics_url), model_stats(client, "wan_text_encoder")
        after_d = model_stats(client, "wan_decode_to_mp4")
        n = args.reps
        res.update(e2e_s=runs, frames_shape=list(frames.shape), mp4_bytes=len(mp4), served_frames=frames,
                   text_s=(after_t["compute_infer_s"] - before_t["compute_infer_s"]) / n,
                   decode_step_s=(after_d["compute_infer_s"] - before_d["compute_infer_s"]) / n,
                   dit_s=(_metric(after_m, "wan_dit_step_duration_seconds_sum", "wan_t2v_dit")
                          - _metric(before_m, "wan_dit_step_duration_seconds_sum", "wan_t2v_dit")) / n,
                   vae_s=(_metric(after_m, "wan_vae_decode_duration_seconds_sum", "wan_decode_to_mp4")
                          - _metric(before_m, "wan_vae_decode_duration_seconds_sum", "wan_decode_to_mp4")) / n,
                   mp4_s=(_metric(after_m, "wan_mp4_encode_duration_seconds_sum", "wan_decode_to_mp4")
                          - _metric(before_m, "wan_mp4_encode_duration_seconds_sum", "wan_decode_to_mp4")) / n)
        if args.baseline:
            res["baseline_s"], _, _ = infer(client, "wan_t2v_baseline", args.seed, geo)  # one cold run
        client.close()
        tree = process_tree(srv.pid)
        labels = {int(k.rsplit("pid ", 1)[1].rstrip(")")): k.rsplit(" (pid", 1)[0] for k in tree}
        if cuda:
            res["memory"] = {labels.get(pid, str(pid)): b for pid, b in poller.peak.items()}
            res["memory_kind"] = "peak GPU memory (nvidia-smi, polled every 0.25 s)" + \
                (f"; poll error: {poller.error}" if poller.error and not poller.peak else "")
        else:
            res["memory"] = {k.rsplit(" (pid", 1)[0]: v.get("VmHWM", 0) for k, v in tree.items()}
            res["memory_kind"] = "peak host RSS (VmHWM; CPU run)"
    return res


def triton_and_venv(args) -> tuple[Path, Path]:
    """--env (a bench/gpu_bundle.sh folder): its triton/ and venv/, with this checkout put on the stub venv's path
    (a .pth in its own site-packages); otherwise the development layout (.triton/server, .venv)."""
    if not args.env:
        return ROOT / ".triton" / "server", ROOT / ".venv"
    env = Path(args.env)
    site = sorted((env / "venv").glob("lib/python3.*/site-packages"))[-1]
    (site / "wan_checkout.pth").write_text(f"{ROOT / 'python_backend'}\n{ROOT / 'client'}\n")
    return env / "triton", env / "venv"


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def in_process(args, root: Path, device: torch.device) -> np.ndarray:
    from wan_distill.pipeline import WanPipeline

    pipe = WanPipeline.from_model_dir(root, RunConfig.from_json(DISTILL), device=device)
    out = pipe.text_to_video(PROMPT, seed=args.seed, height=args.height, width=args.width, num_frames=args.frames)
    del pipe
    return out.frames


def compare(a: np.ndarray, b: np.ndarray, cuda: bool) -> dict:
    if a.shape != b.shape:
        return {"shape": f"{a.shape} vs {b.shape}", "ok": False}
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    out = {"max": int(d.max()), "mean": float(d.mean()), "p99": float(np.percentile(d, 99)),
           "equal": float((d == 0).mean())}
    out["ok"] = (out["mean"] <= BF16_MEAN and out["p99"] <= BF16_P99) if cuda else out["max"] == 0
    return out


# ----------------------------------------------------------------------------------------------
def render(args, results: dict, device: torch.device, argv: list[str]) -> str:
    cuda = device.type == "cuda"
    dev = torch.cuda.get_device_name(device) if cuda else "CPU (script check; figures mean nothing)"
    md = [header(f"Served T2V through a deployment profile ({dev})", argv),
          f"- geometry {args.height}x{args.width}x{args.frames}, seed {args.seed}, {args.reps} timed run(s) after one "
          f"warm-up; weights random ({'bf16' if cuda else 'fp32'} DiT), UMT5 at XXL width with {args.t5_layers} of 24 "
          f"layers (tiny vocabulary), Wan VAE dim 96 fp32" if any(a in ("1.3b", "14b") for a in results) else
          f"- geometry {args.height}x{args.width}x{args.frames}, seed {args.seed}; tiny demo-size models",
          "", "| arch | profile | load s | e2e s (runs) | text s | DiT steps s | decode->MP4 step s (VAE decode / "
          "MP4 encoder busy, overlapped) | rest s | frames | served = in-process |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for arch, r in results.items():
        if "error" in r:
            md.append(f"| {arch} | {r.get('profile', '')} | error: {r['error']} ||||||||")
            continue
        e2e = sorted(r["e2e_s"])[len(r["e2e_s"]) // 2]
        rest = e2e - r["text_s"] - r["dit_s"] - r["decode_step_s"]
        c = r.get("compare", {})
        eq = ("n/a" if not c else f"{'yes' if c.get('ok') else 'NO'} (max {c.get('max')}, mean {c.get('mean', 0):.3f}, "
              f"p99 {c.get('p99', 0):.1f}, {100 * c.get('equal', 0):.1f}% equal)")
        md.append(f"| {arch} | {r['profile']} | {r['load_s']:.1f} | **{e2e:.2f}** ({' / '.join(f'{x:.2f}' for x in r['e2e_s'])}) "
                  f"| {r['text_s']:.2f} | {r['dit_s']:.2f} | {r['decode_step_s']:.2f} ({r['vae_s']:.2f} / "
                  f"{r['mp4_s']:.2f}) | {rest:.2f} "
                  f"| {'x'.join(map(str, r['frames_shape']))} | {eq} |")
    md.append("")
    for arch, r in results.items():
        if "memory" in r:
            md.append(f"- {arch} {r['memory_kind']}: " + ", ".join(f"{k} {v / 2**30:.2f} GiB"
                                                                 for k, v in sorted(r["memory"].items())))
        if "baseline_s" in r:
            e2e = sorted(r["e2e_s"])[len(r["e2e_s"]) // 2]
            md.append(f"- {arch} served 50-step CFG baseline (one cold run): {r['baseline_s']:.2f} s = "
                      f"**{r['baseline_s'] / e2e:.1f}x** the served distilled video")
        if arch == "14b" and "e2e_s" in r:
            e2e = sorted(r["e2e_s"])[len(r["e2e_s"]) // 2]
            md.append(f"- 14b end-to-end {e2e:.1f} s vs LightX2V's published {LIGHTX2V_14B_S:.0f} s (H200, 480P, 4 steps; "
                      "quoted, not measured here)")
    rule = f"mean |diff| <= {BF16_MEAN} and p99 <= {BF16_P99} levels (bf16 tolerance)" if cuda else \
        "exact equality (CPU fp32)"
    md.append(f"- served vs in-process frames (same seed, same device): {rule}")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", action="append", choices=("tiny", "small", "1.3b", "14b"), help="repeatable (default 1.3b, 14b)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--env", default="", help="folder made by bench/gpu_bundle.sh unpack (triton/, venv/); "
                                              "default: this checkout's .triton/server and .venv (make setup)")
    ap.add_argument("--work", default="/tmp/gpu_serve", help="model roots, generated repository, server log")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--baseline", action="store_true", help="also serve and time the 50-step CFG baseline")
    ap.add_argument("--t5-layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="CPU: torch threads per model process")
    ap.add_argument("--gpu-map", default="", help="WAN_GPU_MAP for the profile")
    ap.add_argument("--skip-in-process", action="store_true")
    ap.add_argument("--out", default=None, help="markdown report (written after each arch)")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    work = Path(a.work)
    results: dict[str, dict] = {}
    cmd = ["python", "bench/gpu_serve.py", *(sys.argv[1:] if argv is None else argv)]
    for arch in a.arch or ["1.3b", "14b"]:
        r: dict = {}
        results[arch] = r
        try:
            t = time.perf_counter()
            root = write_root(work / f"Wan2.1-T2V-{arch}", arch, device, a.t5_layers)
            r["write_s"] = time.perf_counter() - t
            r.update(served(a, arch, root, work / arch, device))
            if not a.skip_in_process:
                r["compare"] = compare(r["served_frames"], in_process(a, root, device), device.type == "cuda")
            shutil.rmtree(root, ignore_errors=True)  # disk: the next root may be 30 GB
        except Exception as e:  # keep the other archs' figures
            r["error"] = f"{type(e).__name__}: {e}".replace("\n", " ")[:400]
        r.pop("served_frames", None)
        md = render(a, results, device, cmd)
        print(md, flush=True)
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(md)
            Path(a.out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
