"""GPU check: Wan2.1 DiT forward cost (1.3B / 14B) and the whole 4-step in-process pipeline, random bf16 weights.

    # on a CUDA machine (the device check), with PyAV/ftfy wheels installed or not:
    PYTHONPATH=python_backend python3 bench/gpu_check.py --out $OUT/gpu_check.md
    # here, on CPU, tiny sizes (tests the script, numbers mean nothing):
    PYTHONPATH=python_backend .venv/bin/python bench/gpu_check.py --smoke

Sections (each one guarded: a failure is written into the report and the next section still runs):
  calib     an 8192^3 bf16 matmul and one 14B-shaped SDPA on this GPU (what the kernels reach here)
  dit13     DiT at Wan2.1-1.3B size, latent [1,16,21,60,104] (480x832, 81 frames, 32760 tokens), context [1,512,4096]:
            1 warm-up forward (t=1000), then the median of 3 (t=937.5 / 1000 / 937.5); peak GPU memory; FLOP estimate
  dit14     the same at 14B size (the 1.3B model is freed first)
  pipeline  WanPipeline(run, text encoder, DenoiseEngine(1.3B DiT), VAE) built in memory: real-size UMT5-XXL encoder
            (random bf16), real-size VAE (dim 96, fp32 as loaded by the server), tiny sentencepiece tokenizer;
            text_to_video at 480x832x81, 4 distilled steps; per-stage seconds of a cold and a warm call + peak memory.

Weights are built on the meta device, materialised with ``to_empty(device)`` and filled with small random normals on
the device itself (no CPU copy). Random weights do not change the cost of any stage.
If PyAV or ftfy is missing, stand-ins are installed (MP4 stage skipped / prompt cleaning = identity) and the report
says so. The served (tritonserver) pipeline is not run here: the GPU machine has no tritonserver.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python_backend"))

import torch  # noqa: E402

NOTES: list[str] = []

# Reference numbers quoted in the report (not measured here).
BF16_PEAK_TFLOPS = 790.0  # dense bf16 matmul bound of an H100/H200 SXM, as measured on these machines (KINDS.md)
LIGHTX2V_14B_I2V_S_PER_STEP = 5.18  # LightX2V, Wan2.1-I2V-14B, one H100, 40-step CFG run -> 2 forwards per step


# ----------------------------------------------------------------------------------------------
# optional dependencies: stand-ins so the package imports where PyAV / ftfy are absent
# ----------------------------------------------------------------------------------------------
def install_standins() -> dict[str, bool]:
    have = {}
    try:
        import av  # noqa: F401
        have["av"] = True
    except ImportError:
        have["av"] = False
        from wan_distill import video

        class NoMp4:  # stand-in for video._Writer: frames are taken and dropped, the "MP4" is b""
            def __init__(self, *args, **kwargs):
                pass

            def write(self, frames):
                pass

            def finish(self):
                return b""

            def close(self):
                pass

        video._Writer = NoMp4
        NOTES.append("PyAV is not installed: the MP4 stage is a stand-in that returns b'' (its time is not real).")
    try:
        import ftfy  # noqa: F401
        have["ftfy"] = True
    except ImportError:
        have["ftfy"] = False
        ftfy = types.ModuleType("ftfy")
        ftfy.fix_text = lambda s: s
        sys.modules["ftfy"] = ftfy
        NOTES.append("ftfy is not installed: prompt cleaning used an identity stand-in for ftfy.fix_text.")
    return have


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gib(n: float) -> float:
    return n / 2**30


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def alloc_gib(device: torch.device) -> float | None:
    return gib(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fmt(x, spec=".2f", none="n/a") -> str:
    return none if x is None else format(x, spec)


@torch.no_grad()
def random_init_on_device(module: torch.nn.Module, seed: int) -> None:
    """Small random normals written in place on the parameters' own device (fan-in scaled; norms ~1; biases ~0)."""
    dev = next(module.parameters()).device
    gen = torch.Generator(dev).manual_seed(seed)
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "gamma" or (p.ndim == 1 and "norm" in name and leaf == "weight") or "layer_norm" in name \
                or name.endswith("final_layer_norm.weight"):
            p.fill_(1.0)
        elif leaf == "bias" or p.ndim == 1:
            p.normal_(0.0, 0.02, generator=gen)
        elif leaf == "modulation":
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]), generator=gen)
        elif "embed_tokens" in name or name == "shared.weight" or "relative_attention_bias" in name:
            p.normal_(0.0, 1.0, generator=gen)
        else:
            p.normal_(0.0, 1.0 / math.sqrt(max(1, p[0].numel())), generator=gen)
    for _, b in module.named_buffers():
        if b.is_floating_point():
            b.zero_()


def build_dit(cfg, device: torch.device, dtype: torch.dtype, seed: int = 0):
    from wan_distill.models.dit import WanDiT

    with torch.device("meta"):
        model = WanDiT(cfg)
    model = model.to(dtype).to_empty(device=device)
    random_init_on_device(model, seed)
    return model.eval().requires_grad_(False)


def dit_attention_flops(cfg, tokens: int) -> float:
    """The SDPA part of :func:`dit_flops` (self + cross attention QK^T and PV)."""
    return cfg.num_layers * (4 * tokens * tokens * cfg.dim + 4 * tokens * cfg.text_len * cfg.dim)


def dit_flops(cfg, tokens: int, ctx_len: int) -> float:
    """Matmul + attention FLOPs of one DiT forward (2 per MAC); elementwise work not counted."""
    d, f, L, Lc = cfg.dim, cfg.ffn_dim, tokens, cfg.text_len
    per_block = (
        4 * 2 * L * d * d          # self-attn q, k, v, o
        + 2 * 2 * L * L * d        # self-attn QK^T and PV
        + 2 * 2 * L * d * d        # cross-attn q, o
        + 2 * 2 * Lc * d * d       # cross-attn k, v on the context
        + 2 * 2 * L * Lc * d       # cross-attn QK^T and PV
        + 2 * 2 * L * d * f        # FFN
    )
    patch = math.prod(cfg.patch_size)
    other = (2 * L * d * cfg.in_dim * patch                          # patch embedding
             + 2 * ctx_len * (cfg.text_dim * d + d * d)               # text embedding
             + 2 * L * d * cfg.out_dim * patch)                       # head
    return cfg.num_layers * per_block + other


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------
def section_calib(args, device) -> dict:
    """What the GPU's kernels reach: bf16 matmul and a 14B-shaped SDPA (40 heads x 128, 32760 tokens)."""
    import torch.nn.functional as F

    n = args.calib_n
    a = torch.randn(n, n, device=device, dtype=args.dtype)
    b = torch.randn(n, n, device=device, dtype=args.dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    mm_s = (time.perf_counter() - t0) / reps
    del a, b
    heads, hd, L = args.sdpa_shape
    q = torch.randn(1, heads, L, hd, device=device, dtype=args.dtype)
    k, v = torch.randn_like(q), torch.randn_like(q)
    F.scaled_dot_product_attention(q, k, v)
    sync(device)
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        F.scaled_dot_product_attention(q, k, v)
    sync(device)
    sdpa_s = (time.perf_counter() - t0) / reps
    del q, k, v
    free(device)
    return {"matmul_n": n, "matmul_tflops": 2 * n ** 3 / mm_s / 1e12, "sdpa_shape": [1, heads, L, hd],
            "sdpa_s": sdpa_s, "sdpa_tflops": 4 * L * L * heads * hd / sdpa_s / 1e12}


def section_dit(args, device, name: str) -> dict:
    from wan_distill.config import DiTConfig

    cfg = args.dit_cfgs[name]
    free(device)
    t0 = time.perf_counter()
    model = build_dit(cfg, device, args.dtype)
    sync(device)
    build_s = time.perf_counter() - t0
    weights = alloc_gib(device)
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn((1, 16, *args.latent_thw), generator=gen, device=device, dtype=args.dtype)
    ctx = torch.randn((1, cfg.text_len, cfg.text_dim), generator=gen, device=device, dtype=args.dtype)
    f, h, w = (args.latent_thw[0] // cfg.patch_size[0], args.latent_thw[1] // cfg.patch_size[1],
               args.latent_thw[2] // cfg.patch_size[2])
    tokens = f * h * w
    reset_peak(device)
    times = []
    with torch.inference_mode():
        for i, t in enumerate([1000.0, 937.5, 1000.0, 937.5][: 1 + args.reps]):
            tt = torch.tensor([t], device=device)
            sync(device)
            t0 = time.perf_counter()
            out = model(x, tt, ctx)
            sync(device)
            dt = time.perf_counter() - t0
            times.append(dt)
            finite = bool(torch.isfinite(out).all())
            del out
            print(f"  {name} forward {i} (t={t}): {dt:.3f} s{'' if i else ' (warm-up)'}", flush=True)
    peak = peak_gib(device)
    breakdown = None
    if args.breakdown:
        breakdown = dit_breakdown(model, x, ctx, (f, h, w), device)
    del model, x, ctx
    free(device)
    med = statistics.median(times[1:])
    flops = dit_flops(cfg, tokens, cfg.text_len)
    assert isinstance(cfg, DiTConfig)
    return {"params_b": params / 1e9, "tokens": tokens, "build_s": build_s, "weights_gib": weights,
            "peak_gib": peak, "warmup_s": times[0], "times_s": times[1:], "median_s": med,
            "tflop": flops / 1e12, "achieved_tflops": flops / med / 1e12,
            "frac_of_bound": flops / med / 1e12 / BF16_PEAK_TFLOPS, "bound_s": flops / (BF16_PEAK_TFLOPS * 1e12),
            "output_finite": finite, "breakdown": breakdown}


def _op_category(key: str) -> str:
    k = key.lower()
    if any(w in k for w in ("scaled_dot_product", "flash", "efficient_attention", "cudnn_attention")):
        return "attention (SDPA)"
    if k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation", "aten::matmul",
             "aten::linear"):
        return "matmul (linears)"
    if "conv" in k:
        return "conv (patch embedding)"
    return "elementwise / norms / casts / copies"


@torch.no_grad()
def dit_breakdown(model, x, ctx, grid, device) -> dict:
    """One more forward under torch.profiler: device time per op category; plus RoPE alone at this shape."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from wan_distill.models.dit import rope_apply

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tt = torch.tensor([937.5], device=device)
    with torch.inference_mode(), profile(activities=acts) as prof:
        model(x, tt, ctx)
        sync(device)
    cats: dict[str, float] = {}
    top = []
    for ev in prof.key_averages():
        if getattr(ev, "device_type", DeviceType.CPU) != DeviceType.CPU:
            continue  # kernel rows: their time is already the self device time of the op that launched them
        if "::" not in ev.key:
            continue  # profiler markers such as 'Command Buffer Full' (launch queue full), not device work
        us = getattr(ev, "self_device_time_total", 0) if device.type == "cuda" else ev.self_cpu_time_total
        if us <= 0:
            continue
        cats[_op_category(ev.key)] = cats.get(_op_category(ev.key), 0.0) + us / 1e6
        top.append((us / 1e6, ev.key, ev.count))
    top.sort(reverse=True)
    # RoPE (float64 complex) alone: q and k of every block = 2 * num_layers calls per forward.
    cfg = model.cfg
    q = torch.randn(1, x.shape[2] * x.shape[3] * x.shape[4] // math.prod(cfg.patch_size), cfg.num_heads,
                    cfg.head_dim, device=device, dtype=model.dtype)
    freqs = model.rope(*grid, device)
    rope_apply(q, freqs)
    sync(device)
    n = 5
    t0 = time.perf_counter()
    for _ in range(n):
        rope_apply(q, freqs)
    sync(device)
    rope_s = (time.perf_counter() - t0) / n
    del q
    return {"categories_s": cats, "profiled_total_s": sum(cats.values()), "markers_excluded": True,
            "top_ops": [{"s": round(t, 4), "op": k, "calls": c} for t, k, c in top[:8]],
            "rope_call_s": rope_s, "rope_per_forward_s": rope_s * 2 * cfg.num_layers}


def build_text_encoder(args, device):
    from transformers import UMT5EncoderModel

    from wan_distill.loaders.text_encoder import load_tokenizer
    from wan_distill.models.text_encoder import WanTextEncoder, _umt5_config, umt5_xxl_config
    from wan_distill.tiny import write_tiny_tokenizer

    tok_dir = Path(tempfile.mkdtemp(prefix="wan_tok_")) / "google" / "umt5-xxl"
    write_tiny_tokenizer(tok_dir)
    tokenizer = load_tokenizer(tok_dir)
    if args.t5 == "xxl":
        cfg = umt5_xxl_config()
    else:  # small encoder of the DiT's text width (smoke runs)
        cfg = _umt5_config(vocab_size=512, d_model=args.text_dim, d_kv=16, d_ff=2 * args.text_dim,
                           num_heads=max(1, args.text_dim // 16), num_layers=2)
    with torch.device("meta"):
        enc = UMT5EncoderModel(cfg)
    enc = enc.to(args.dtype).to_empty(device=device)
    enc.encoder.embed_tokens.weight = enc.shared.weight  # tie (as the loader does)
    random_init_on_device(enc, seed=1)
    enc = enc.eval().requires_grad_(False)
    return WanTextEncoder(enc, tokenizer, text_len=args.text_len), cfg


def build_vae(args, device):
    from wan_distill.models.vae import WanVAE

    with torch.device("meta"):
        vae = WanVAE(dim=args.vae_dim)
    vae = vae.to(torch.float32).to_empty(device=device)  # the server loads the VAE in fp32 (load_vae_from_dir)
    random_init_on_device(vae, seed=2)
    return vae.eval().requires_grad_(False)


def section_pipeline(args, device, have: dict) -> dict:
    from wan_distill.config import RunConfig
    from wan_distill.engine import DenoiseEngine
    from wan_distill.pipeline import WanPipeline

    free(device)
    height, width, frames = args.video
    run = RunConfig(target_height=height, target_width=width, target_video_length=frames)
    t0 = time.perf_counter()
    te, t5cfg = build_text_encoder(args, device)
    sync(device)
    t5_build = time.perf_counter() - t0
    t5_gib = alloc_gib(device)
    dit = build_dit(args.dit_cfgs["dit13"], device, args.dtype)
    vae = build_vae(args, device)
    sync(device)
    build_s = time.perf_counter() - t0
    weights = alloc_gib(device)
    pipe = WanPipeline(run, te, DenoiseEngine(dit, run, device), vae)
    runs = []
    for i in range(args.pipeline_runs):
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        res = pipe.text_to_video("a red fox runs through the snow at dawn", seed=42)
        sync(device)
        total = time.perf_counter() - t0
        r = {"label": "cold" if i == 0 else "warm", "total_s": total, **{k: v for k, v in res.timings.items()},
             "peak_gib": peak_gib(device), "frames": list(res.frames.shape), "mp4_bytes": len(res.mp4),
             "latents_finite": bool(torch.isfinite(res.latents).all())}
        runs.append(r)
        print(f"  pipeline run {i} ({r['label']}): " + ", ".join(f"{k} {v:.2f}s" for k, v in res.timings.items())
              + f", total {total:.2f}s, peak {fmt(r['peak_gib'])} GiB", flush=True)
        del res
    del pipe, te, dit, vae
    free(device)
    t5_desc = (f"UMT5 {'XXL (real size)' if args.t5 == 'xxl' else 'small'}: d_model {t5cfg.d_model}, "
               f"{t5cfg.num_layers} layers, vocab {t5cfg.vocab_size}")
    return {"t5": t5_desc, "t5_build_s": t5_build, "t5_gib": t5_gib, "build_s": build_s, "weights_gib": weights,
            "runs": runs, "mp4_real": have.get("av", False), "ftfy_real": have.get("ftfy", False),
            "geometry": [height, width, frames]}


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def device_desc(device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name}, {gib(p.total_memory):.0f} GiB, {p.multi_processor_count} SMs"
    return "CPU (smoke run: tiny sizes, numbers mean nothing)"


def cpu_desc() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def clean_results(results: dict) -> dict:
    """Saved results of an older version of this script: drop profiler markers from the breakdown."""
    for name in ("dit13", "dit14"):
        b = (results.get(name) or {}).get("breakdown")
        if b and not b.get("markers_excluded"):
            for op in b["top_ops"]:
                if "::" not in op["op"]:
                    cat = _op_category(op["op"])
                    b["categories_s"][cat] -= op["s"]
                    b["profiled_total_s"] -= op["s"]
            b["top_ops"] = [op for op in b["top_ops"] if "::" in op["op"]]
            b["markers_excluded"] = True
    return results


def render(args, device, results: dict, command: str) -> str:
    L = []
    L.append(f"## GPU check{' (SMOKE: tiny sizes on CPU, not a measurement)' if args.smoke else ''}")
    L.append("")
    env = results["env"]
    L.append(f"- device: {env['device']}; host CPU: {env['cpu']}")
    L.append(f"- torch {env['torch']}" + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
             + f", Python {env['python']}; date {results['date']}")
    L.append(f"- command: `{env['command']}`" + (f" (markdown re-rendered here with `{command}`)"
                                                 if command != env["command"] else ""))
    L.append(f"- weights: random {str(args.dtype).replace('torch.', '')} (built on meta, `to_empty` on the device, "
             "random normals written there); random weights do not change any stage's cost")
    c = results.get("calib")
    if isinstance(c, dict) and "error" not in c:
        L.append(f"- calibration on this GPU: {c['matmul_n']}^3 bf16 matmul {c['matmul_tflops']:.0f} TFLOP/s; "
                 f"SDPA {c['sdpa_shape']} (14B self-attention shape) {c['sdpa_s'] * 1e3:.1f} ms = "
                 f"{c['sdpa_tflops']:.0f} TFLOP/s")
    elif isinstance(c, dict):
        L.append(f"- calibration failed: {c['error']}")
    L.append("")
    thw = args.latent_thw
    L.append(f"### DiT forward (= one distilled step; no CFG), latent [1,16,{thw[0]},{thw[1]},{thw[2]}], "
             f"context [1,{args.text_len},{args.text_dim}]")
    L.append("")
    L.append("| model | params | tokens | s / forward (median of 3) | runs (s) | warm-up (s) | weights GiB | "
             "peak GiB | TFLOP / forward | achieved TFLOP/s | of 790 bound | bound s |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, label in (("dit13", "Wan2.1 1.3B"), ("dit14", "Wan2.1 14B")):
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            L.append(f"| {label} | failed: {r['error']} |" + " |" * 10)
            continue
        L.append(f"| {label} | {r['params_b']:.2f} B | {r['tokens']} | **{r['median_s']:.3f}** | "
                 f"{' / '.join(f'{t:.3f}' for t in r['times_s'])} | {r['warmup_s']:.2f} | {fmt(r['weights_gib'], '.1f')} | "
                 f"{fmt(r['peak_gib'], '.1f')} | {r['tflop']:.0f} | {r['achieved_tflops']:.0f} | "
                 f"{r['frac_of_bound'] * 100:.0f}% | {r['bound_s']:.2f} |")
    bd = [(label, results[name]["breakdown"]) for name, label in (("dit13", "1.3B"), ("dit14", "14B"))
          if isinstance(results.get(name), dict) and results[name].get("breakdown")]
    if bd:
        L.append("")
        L.append("Where one forward's device time goes (torch.profiler, self device time of one extra forward; "
                 "the profiler adds a little overhead):")
        L.append("")
        cats = sorted({c for _, b in bd for c in b["categories_s"]})
        L.append("| model | " + " | ".join(cats) + " | profiled total | RoPE alone (fp64, 2 x layers calls) |")
        L.append("| --- |" + " --- |" * (len(cats) + 2))
        for label, b in bd:
            tot = b["profiled_total_s"]
            L.append(f"| {label} | " + " | ".join(
                f"{b['categories_s'].get(c, 0.0):.3f} s ({100 * b['categories_s'].get(c, 0.0) / tot:.0f}%)"
                for c in cats) + f" | {tot:.3f} s | {b['rope_per_forward_s']:.3f} s "
                f"({100 * b['rope_per_forward_s'] / tot:.0f}%) |")
        for name, label in (("dit13", "1.3B"), ("dit14", "14B")):
            r = results.get(name)
            if not (isinstance(r, dict) and r.get("breakdown")):
                continue
            b, cfg = r["breakdown"], args.dit_cfgs[name]
            att = dit_attention_flops(cfg, r["tokens"])
            lin = r["tflop"] * 1e12 - att
            c = b["categories_s"]
            t_att, t_lin = c.get("attention (SDPA)", 0.0), c.get("matmul (linears)", 0.0)
            rest = b["profiled_total_s"] - t_att - t_lin
            if t_att > 0 and t_lin > 0:
                L.append(f"- {label}: linears {lin / 1e12:.0f} TFLOP in {t_lin:.3f} s = {lin / t_lin / 1e12:.0f} TFLOP/s; "
                         f"SDPA {att / 1e12:.0f} TFLOP in {t_att:.3f} s = {att / t_att / 1e12:.0f} TFLOP/s; everything "
                         f"else (fp32 residual/norms/modulation, dtype casts, fp64 RoPE, GELU) {rest:.3f} s = "
                         f"{100 * rest / b['profiled_total_s']:.0f}% of the profiled forward (RoPE alone "
                         f"{b['rope_per_forward_s']:.3f} s)")
        for label, b in bd:
            L.append(f"- {label} top ops: " + "; ".join(f"{o['op']} {o['s']:.3f} s ({o['calls']} calls)"
                                                       for o in b["top_ops"][:6]))
    r14 = results.get("dit14")
    if isinstance(r14, dict) and "error" not in r14 and not args.smoke:
        lx = LIGHTX2V_14B_I2V_S_PER_STEP / 2
        L.append("")
        L.append(f"14B vs LightX2V: their 5.18 s/step for Wan2.1-I2V-14B on one H100 is a 40-step CFG run "
                 f"(2 forwards/step) = {lx:.2f} s per forward; ours {r14['median_s']:.2f} s per forward = "
                 f"**{r14['median_s'] / lx:.2f}x** theirs (their number is quoted, not measured in this run; I2V adds "
                 f"257 image tokens of cross-attention, a <1% difference). Compute bound at 790 TFLOP/s: "
                 f"{r14['bound_s']:.2f} s per forward; ours is **{r14['median_s'] / r14['bound_s']:.2f}x** the bound. "
                 f"A 4-step distilled 14B video = 4 forwards = {4 * r14['median_s']:.1f} s of DiT here.")
        if "H200" in results["env"]["device"]:
            L.append("")
            L.append("This ran on an H200 while LightX2V's figure is an H100: same GH100 compute (132 SMs, same "
                     "clocks, the same ~790 TFLOP/s bf16 matmul), but 4.8 vs 3.35 TB/s HBM, so the memory-bound "
                     "elementwise share above would run ~1.4x slower on an H100 (an estimate, not measured).")
    L.append("")
    p = results.get("pipeline")
    h, w, fr = args.video
    L.append(f"### Whole 4-step in-process pipeline (WanPipeline.text_to_video), 1.3B DiT, {h}x{w}x{fr}")
    L.append("")
    if isinstance(p, dict) and "error" not in p:
        L.append(f"- text encoder: {p['t5']}, random {str(args.dtype).replace('torch.', '')} ({fmt(p['t5_gib'], '.1f')} GiB, built in "
                 f"{p['t5_build_s']:.1f} s); tokenizer: tiny sentencepiece from `write_tiny_tokenizer`; "
                 f"VAE: dim {args.vae_dim}, fp32 (as the server loads it); all weights {fmt(p['weights_gib'], '.1f')} GiB")
        L.append(f"- MP4 stage: {'real (PyAV/libx264, wheel carried)' if p['mp4_real'] else 'SKIPPED (no PyAV): time is a stand-in'}; "
                 f"ftfy: {'real' if p['ftfy_real'] else 'stand-in'}")
        L.append("")
        stages = [k for k in ("text", "dit", "vae", "mp4") if any(k in r for r in p["runs"])]
        L.append("| call | " + " | ".join(f"{s} s" for s in stages) + " | total s | peak GiB | frames | MP4 bytes |")
        L.append("| --- |" + " --- |" * (len(stages) + 4))
        for r in p["runs"]:
            L.append(f"| {r['label']} | " + " | ".join(f"{r.get(s, float('nan')):.2f}" for s in stages)
                     + f" | **{r['total_s']:.2f}** | {fmt(r['peak_gib'], '.1f')} | {'x'.join(map(str, r['frames']))} | "
                     f"{r['mp4_bytes']} |")
        last = p["runs"][-1]
        L.append("")
        L.append("Shares of the " + last["label"] + " call: " + ", ".join(
            f"{s} {100 * last[s] / last['total_s']:.0f}%" for s in stages) + ".")
    elif isinstance(p, dict):
        L.append(f"- failed: {p['error']}")
    L.append("")
    L.append("### Served pipeline (tritonserver)")
    L.append("")
    L.append("Not run on the GPU machine: it has no tritonserver (and no registry access to install one); the "
             "carry limit (64 MiB) rules out bringing a Triton server image. The served ensembles are exercised on "
             "CPU by tests/test_server.py (real tritonserver, tiny models).")
    notes = results["env"].get("notes", []) + results.get("notes", [])
    if notes:
        L.append("")
        L.append("Notes:")
        for n in notes:
            L.append(f"- {n}")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (checks the script, not a measurement)")
    ap.add_argument("--device", default=None, help="default: cuda if available (cpu with --smoke)")
    ap.add_argument("--sections", default="calib,dit13,dit14,pipeline")
    ap.add_argument("--reps", type=int, default=3, help="timed DiT forwards after the warm-up")
    ap.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                    help="skip the profiled extra forward + RoPE timing per DiT size")
    ap.add_argument("--pipeline-runs", type=int, default=2, help="pipeline calls (first = cold)")
    ap.add_argument("--t5", choices=("xxl", "small"), default=None, help="default: xxl (small with --smoke)")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="re-render the markdown of a saved <out>.json (e.g. the device run's) without measuring")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    ap.add_argument("--write", action="store_true", help="write bench/results/gpu_check.md")
    args = ap.parse_args(argv)
    exe = Path(sys.executable)
    exe_s = os.path.relpath(exe, ROOT) if str(exe).startswith(str(ROOT)) else exe.name
    command = ("PYTHONPATH=python_backend " + exe_s + " "
               + " ".join(shlex.quote(a) for a in (["bench/gpu_check.py"] + sys.argv[1:])))

    from wan_distill.config import DiTConfig

    have = install_standins()
    if args.smoke:
        args.device = args.device or "cpu"
        args.dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
        args.t5 = args.t5 or "small"
        args.text_dim, args.text_len = 32, 512
        small = dict(freq_dim=256, num_heads=2, in_dim=16, out_dim=16, text_dim=args.text_dim)
        args.dit_cfgs = {"dit13": DiTConfig("t2v", dim=64, ffn_dim=128, num_layers=2, **small),
                         "dit14": DiTConfig("t2v", dim=96, ffn_dim=192, num_layers=3, **small)}
        args.latent_thw = (3, 8, 12)
        args.video = (64, 96, 9)
        args.vae_dim = 8
        args.calib_n, args.sdpa_shape = 256, (2, 64, 256)
    else:
        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        args.dtype = torch.bfloat16
        args.t5 = args.t5 or "xxl"
        args.text_dim, args.text_len = 4096, 512
        args.dit_cfgs = {"dit13": DiTConfig.t2v_1_3b(), "dit14": DiTConfig.t2v_14b()}
        args.latent_thw = (21, 60, 104)
        args.video = (480, 832, 81)
        args.vae_dim = 96
        args.calib_n, args.sdpa_shape = 8192, (40, 128, 32760)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # defaults; stated so the fp32 islands are what they are
    results: dict = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "notes": [],
                     "env": {"device": device_desc(device), "cpu": cpu_desc(), "torch": torch.__version__,
                             "cuda": torch.version.cuda, "python": platform.python_version(), "command": command,
                             "notes": list(NOTES)}}
    if args.from_json:
        results = clean_results(json.loads(args.from_json.read_text()))
        md = render(args, device, results, command)
        if args.write:
            (ROOT / "bench" / "results" / "gpu_check.md").write_text(md)
        print(md)
        return 0
    print(f"device {device_desc(device)}, torch {torch.__version__}, av={have['av']} ftfy={have['ftfy']}", flush=True)

    def emit():
        md = render(args, device, results, command)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(md)
            args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
        if args.write:
            (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
            (ROOT / "bench" / "results" / "gpu_check.md").write_text(md)
        return md

    for sec in [s.strip() for s in args.sections.split(",") if s.strip()]:
        print(f"== {sec}", flush=True)
        t0 = time.perf_counter()
        try:
            if sec == "calib":
                results[sec] = section_calib(args, device)
            elif sec in ("dit13", "dit14"):
                results[sec] = section_dit(args, device, sec)
            elif sec == "pipeline":
                results[sec] = section_pipeline(args, device, have)
            else:
                raise SystemExit(f"unknown section {sec}")
        except Exception as e:  # noqa: BLE001 - record and go on to the next section
            traceback.print_exc()
            results[sec] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            free(device)
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
        emit()  # partial results survive a later crash or timeout
    print(emit())
    return 0


if __name__ == "__main__":
    sys.exit(main())
