#!/usr/bin/env python3
"""GPU speed, stage by stage on one GPU (issue 13): every lever measured in one script against its target.

    # GPU host: all sections take ~8 min (estimated, never run), so split in two commands under 10 min each:
    PYTHONPATH=python_backend python3 bench/gpu_speed.py --sections sdpa,rope,dit14,fp8 --out $OUT/gpu_speed_dit.md
    PYTHONPATH=python_backend python3 bench/gpu_speed.py --sections vae,overlap,tae,e2e --out $OUT/gpu_speed_vae.md
    PYTHONPATH=python_backend .venv/bin/python bench/gpu_speed.py --tiny                    # CPU smoke (a test runs it)

Sections (each guarded: a failure is written into the report and the next section runs):
  sdpa      PyTorch SDPA backends (flash, cuDNN, efficient; math only --tiny) on the 14B self-attention shape
            [1, 40, 32760, 128]: seconds per call, rel. L2 vs flash; FlashAttention-3 if its wheel imports
  rope      RoPE fp32 (real cos/sin) vs the shipped fp64 complex rotation on a 14B q [1, 32760, 40, 128]: error, time
  dit14     14B DiT forward at 480x832x81: eager; eager with the fastest SDPA backend forced; compiled blocks
            (`compile_dit`); compiled with fp32 RoPE; each output's rel. L2 vs eager
  fp8       14B: 4-step distilled latents bf16 vs fp8 at load (block linears quantized per row, torch._scaled_mm):
            s per forward and latent rel. L2 (same seed)
  vae       Wan VAE decode (dim 96) of 16x21x60x104 latents: fp32 (served), bf16, each with cuDNN autotuning +
            channels-last 3D weights; frame PSNR vs fp32
  overlap   decode + MP4 encode: sequential vs overlapped (wan_distill.video.decode_to_mp4, wan_decode_to_mp4's
            path), with the fp32 VAE and the fastest VAE variant of the vae section; x264 default, lookahead 10,
            veryfast + lookahead 10 (the host CPU encodes)
  tae       taew2_1 tiny decoder (bf16, as served): s per decode, overlapped with the encode; PSNR vs the VAE's frames
  e2e       WanPipeline.text_to_video, 1.3B and 14B T2V, 480x832x81, 4 steps (UMT5-XXL random bf16, VAE fp32,
            decode/encode overlapped): eager and compiled DiT, cold + warm call each

Weights are random (no real weights on the GPU host): built on meta, ``to_empty`` on the device, random normals
written there. Random weights do not change any stage's cost; PSNR / rel. L2 figures then measure numerics (bf16 vs
fp32, fp8 vs bf16), not picture quality, and the tiny decoder's PSNR vs the VAE means nothing without real weights
(pass --vae-weights / --tae-weights to load real files). ``--tiny``: tiny sizes (CPU by default), only checks that
the script runs; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import datetime
import math
import platform
import shlex
import statistics
import sys
import time
import traceback
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import build_dit, build_text_encoder, free, install_standins, random_init_on_device, sync  # noqa: E402

from wan_distill.config import DiTConfig, RunConfig  # noqa: E402

SECTIONS = ("sdpa", "rope", "dit14", "fp8", "vae", "overlap", "tae", "e2e")
TARGETS = (  # (key in results["measured"], what, target seconds)
    ("dit14", "14B DiT forward (best exact lever)", 2.2),
    ("vae", "VAE decode (best variant within PSNR 40 dB of fp32)", 1.0),
    ("overlap", "VAE decode + MP4 encode, overlapped (default x264)", 1.2),
    ("e2e14", "end to end 14B T2V, 4 steps", 10.0),
    ("e2e13", "end to end 1.3B T2V, 4 steps", 3.0),
)
LIGHTX2V_14B_E2E_S = 14.0  # LightX2V's published 4-step Wan2.1-14B 480P on one H200 (sage attn, fp8 DiT, tiled VAE)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def timed(fn, device, reps: int, warmup: int = 1):
    """-> (median seconds of ``reps`` calls after ``warmup`` calls, first call seconds, last output)."""
    times, out = [], None
    for _ in range(warmup + reps):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[warmup:]), times[0], out


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def psnr(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def rope_apply_fp32(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoPE as real fp32 arithmetic: x [B, L, n, d], freqs complex [L, 1, d/2] -> x rotated, in x's dtype."""
    b, s, n, d = x.shape
    cos, sin = freqs.real.float(), freqs.imag.float()
    xr = x.float().reshape(b, s, n, d // 2, 2)
    a, c = xr[..., 0], xr[..., 1]
    return torch.stack([a * cos - c * sin, a * sin + c * cos], dim=-1).flatten(3).to(x.dtype)


class Geometry(types.SimpleNamespace):
    """Sizes of one run: the real ones, or --tiny's."""


def geometry(tiny: bool) -> Geometry:
    if tiny:
        small = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32)
        return Geometry(video=(32, 48, 5), dit14=small, dit13=small, vae_dim=8, tae_widths=(16, 8, 8, 8),
                        t5="small", text_dim=32, sdpa=(2, 192, 32))
    return Geometry(video=(480, 832, 81), dit14=DiTConfig.t2v_14b(), dit13=DiTConfig.t2v_1_3b(), vae_dim=96,
                    tae_widths=(256, 128, 64, 64), t5="xxl", text_dim=4096, sdpa=(40, 32760, 128))


def latent_shape(g: Geometry) -> tuple[int, int, int, int]:
    h, w, f = g.video
    return 16, (f - 1) // 4 + 1, h // 8, w // 8


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------
def section_sdpa(a, g, device, res):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, L, hd = g.sdpa
    gen = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(1, heads, L, hd, generator=gen, device=device, dtype=a.dtype) for _ in range(3))
    backends = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION)] + ([("math", SDPBackend.MATH)] if a.tiny else [])
    rows = []
    with torch.inference_mode():
        default_s, _, default_out = timed(lambda: F.scaled_dot_product_attention(q, k, v), device, a.reps)
        rows.append({"backend": "default dispatch", "s": default_s, "rel_l2": 0.0})
        for name, backend in backends:
            try:
                with sdpa_kernel([backend]):
                    s, _, out = timed(lambda: F.scaled_dot_product_attention(q, k, v), device, a.reps)
                rows.append({"backend": name, "s": s, "rel_l2": rel_l2(out, default_out)})
            except Exception as exc:  # noqa: BLE001 - a backend this GPU / build lacks
                rows.append({"backend": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"})
        try:
            import flash_attn_interface  # FlashAttention-3 (Hopper), if a wheel is installed

            qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
            s, _, out = timed(lambda: flash_attn_interface.flash_attn_func(qt, kt, vt), device, a.reps)
            out = out[0] if isinstance(out, tuple) else out
            rows.append({"backend": "FlashAttention-3", "s": s, "rel_l2": rel_l2(out.transpose(1, 2), default_out)})
        except Exception as exc:  # noqa: BLE001
            rows.append({"backend": "FlashAttention-3", "error": f"not usable: {type(exc).__name__}: "
                                                              f"{str(exc).splitlines()[0][:100] if str(exc) else ''}"})
    ok = [r for r in rows if "s" in r and r["backend"] not in ("default dispatch", "FlashAttention-3")]
    best = min(ok, key=lambda r: r["s"]) if ok else None
    res["sdpa"] = {"shape": [1, heads, L, hd], "rows": rows, "best": best["backend"] if best else None,
                   "flops": 4 * L * L * heads * hd}


def section_rope(a, g, device, res):
    from wan_distill.models.dit import rope_apply, rope_freqs

    cfg = g.dit14
    _, t, h, w = latent_shape(g)
    grid = (t, h // 2, w // 2)
    freqs = rope_freqs(cfg.head_dim, *grid, device)
    gen = torch.Generator(device).manual_seed(1)
    x = torch.randn(1, math.prod(grid), cfg.num_heads, cfg.head_dim, generator=gen, device=device, dtype=a.dtype)
    with torch.inference_mode():
        exact = torch.view_as_real(torch.view_as_complex(x.double().reshape(*x.shape[:3], -1, 2)) * freqs).flatten(3)
        s64, _, out64 = timed(lambda: rope_apply(x, freqs), device, a.reps)
        s32, _, out32 = timed(lambda: rope_apply_fp32(x, freqs), device, a.reps)
    res["rope"] = {"shape": list(x.shape), "fp64_s": s64, "fp32_s": s32, "calls_per_forward": 2 * cfg.num_layers,
                   "fp64_rel_l2_vs_exact": rel_l2(out64, exact), "fp32_rel_l2_vs_exact": rel_l2(out32, exact),
                   "fp32_vs_fp64_rel_l2": rel_l2(out32, out64),
                   "fp32_vs_fp64_max_abs": float((out32.double() - out64.double()).abs().max())}


def _dit_inputs(a, g, cfg, device):
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn((1, *latent_shape(g)), generator=gen, device=device, dtype=a.dtype)
    ctx = torch.randn((1, cfg.text_len, cfg.text_dim), generator=gen, device=device, dtype=a.dtype)
    return x, torch.tensor([937.5], device=device), ctx


def _compile_opts(a) -> dict:
    return {"backend": "eager"} if a.tiny and a.device_type == "cpu" else {}


def _uncompile(model) -> None:
    """Undo ``compile_blocks`` (nn.Module.compile keeps the compiled call in ``_compiled_call_impl``)."""
    for block in model.blocks:
        block._compiled_call_impl = None
    torch._dynamo.reset()


def section_dit14(a, g, device, res):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import wan_distill.models.dit as dit_module

    cfg = g.dit14
    model = build_dit(cfg, device, a.dtype)
    x, t, ctx = _dit_inputs(a, g, cfg, device)
    rows, ref = [], None
    fwd = lambda: model(x, t, ctx)  # noqa: E731
    best = (res.get("sdpa") or {}).get("best")
    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}.get(best)

    def variant(label, fn, exact: bool, context=None):
        nonlocal ref
        try:
            with torch.inference_mode():
                if context is not None:
                    with context():
                        s, first, out = timed(fn, device, a.reps)
                else:
                    s, first, out = timed(fn, device, a.reps)
            ref = out if ref is None else ref
            rows.append({"variant": label, "s": s, "first_s": first, "rel_l2": rel_l2(out, ref), "exact": exact})
        except Exception as exc:  # noqa: BLE001
            rows.append({"variant": label, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
        print(f"  dit14 {rows[-1]}", flush=True)

    try:
        variant("eager (shipped default)", fwd, True)
        if backend is not None:
            variant(f"eager, SDPA forced to {best}", fwd, True, lambda: sdpa_kernel([backend]))
        model.compile_blocks(**_compile_opts(a))
        variant("compiled blocks (compile_dit)", fwd, True)
        _uncompile(model)
        shipped = dit_module.rope_apply
        dit_module.rope_apply = rope_apply_fp32
        try:
            model.compile_blocks(**_compile_opts(a))
            variant("compiled blocks + fp32 RoPE", fwd, False)
        finally:
            dit_module.rope_apply = shipped
            _uncompile(model)
    finally:
        del model
        free(device)
    res["dit14"] = {"rows": rows, "tokens": x.shape[2] * x.shape[3] * x.shape[4] // 4}
    exact = [r for r in rows if "s" in r and r["exact"]]
    if exact:
        best_row = min(exact, key=lambda r: r["s"])
        res["measured"]["dit14"] = (best_row["s"], best_row["variant"])


def section_fp8(a, g, device, res):
    from gpu_fp8_tae import to_fp8_
    from wan_distill.engine import DenoiseEngine

    cfg = g.dit14
    model = build_dit(cfg, device, a.dtype)
    x, t, ctx = _dit_inputs(a, g, cfg, device)
    h, w, f = g.video
    run = RunConfig(target_height=h, target_width=w, target_video_length=f)
    context = torch.randn(64, cfg.text_dim, generator=torch.Generator().manual_seed(3))  # a prompt of 64 tokens
    out = {}
    try:
        with torch.inference_mode():
            out["bf16_s"], _, ref_fwd = timed(lambda: model(x, t, ctx), device, a.reps)
            t0 = time.perf_counter()
            ref = DenoiseEngine(model, run, device).denoise(context, 42, latent_shape(g))
            out["bf16_denoise_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            out["fp8_linears"] = to_fp8_(model)
            sync(device)
            out["quantize_s"] = time.perf_counter() - t0
            out["fp8_s"], _, fwd = timed(lambda: model(x, t, ctx), device, a.reps)
            t0 = time.perf_counter()
            lat = DenoiseEngine(model, run, device).denoise(context, 42, latent_shape(g))
            out["fp8_denoise_s"] = time.perf_counter() - t0
        out["forward_rel_l2"] = rel_l2(fwd, ref_fwd)
        out["latent_rel_l2"] = rel_l2(lat, ref)
        out["scaled_mm"] = device.type == "cuda"
    finally:
        del model
        free(device)
    res["fp8"] = out


def _build_vae(g, device, dtype, seed=2):
    """Random weights drawn in fp32, then cast: every dtype variant is the same network."""
    from wan_distill.models.vae import WanVAE

    with torch.device("meta"):
        vae = WanVAE(dim=g.vae_dim)
    vae = vae.to_empty(device=device)
    random_init_on_device(vae, seed)
    return vae.to(dtype).eval().requires_grad_(False)


def _load_or_build_vae(a, g, device, dtype):
    if a.vae_weights:
        from wan_distill.loaders.vae import load_vae
        return load_vae(a.vae_weights, device=device, dtype=dtype).eval()
    return _build_vae(g, device, dtype)


def _channels_last_3d(vae) -> None:
    """Conv3d weights to channels-last 3D (NDHWC); cuDNN then picks NDHWC kernels for the matching activations."""
    for m in vae.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)


def section_vae(a, g, device, res):
    z = torch.randn(latent_shape(g), generator=torch.Generator().manual_seed(4)).to(device)
    rows, ref = [], None
    variants = [("fp32 (served)", torch.float32, False), ("fp32 + cudnn.benchmark + channels-last 3D", torch.float32, True),
                ("bf16", torch.bfloat16, False), ("bf16 + cudnn.benchmark + channels-last 3D", torch.bfloat16, True)]
    bench_flag = torch.backends.cudnn.benchmark
    for label, dtype, tuned in variants:
        vae = None
        try:
            vae = _load_or_build_vae(a, g, device, dtype)
            torch.backends.cudnn.benchmark = tuned
            if tuned:
                _channels_last_3d(vae)
            with torch.inference_mode():
                s, first, frames = timed(lambda: vae.decode_to_uint8(z), device, a.reps)
            ref = frames if ref is None else ref
            rows.append({"variant": label, "s": s, "first_s": first, "psnr": psnr(frames, ref),
                         "frames": list(frames.shape), "dtype": dtype, "tuned": tuned})
        except Exception as exc:  # noqa: BLE001
            rows.append({"variant": label, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
        finally:
            torch.backends.cudnn.benchmark = bench_flag
            del vae
            free(device)
        print(f"  vae {rows[-1]}", flush=True)
    res["vae"] = {"rows": rows, "latents": list(z.shape), "real_weights": bool(a.vae_weights)}
    good = [r for r in rows if "s" in r and r["psnr"] >= 40.0]
    if good:
        best = min(good, key=lambda r: r["s"])
        res["measured"]["vae"] = (best["s"], best["variant"])
        res["vae"]["best"] = best


def section_overlap(a, g, device, res):
    from wan_distill.video import X264Settings, decode_to_mp4, encode_mp4

    z = torch.randn(latent_shape(g), generator=torch.Generator().manual_seed(4)).to(device)
    variants = [("fp32 (served)", torch.float32, False)]
    best = (res.get("vae") or {}).get("best")
    if best and best["variant"] != "fp32 (served)":
        variants.append((best["variant"], best["dtype"], best["tuned"]))
    encoders = [("x264 default (medium, CRF 23)", X264Settings()),                      # exact: the shipped encode
                ("lookahead 10 (opt-in)", X264Settings(lookahead=10)),
                ("veryfast + lookahead 10 (opt-in)", X264Settings(preset="veryfast", lookahead=10))]
    rows = []
    bench_flag = torch.backends.cudnn.benchmark
    for label, dtype, tuned in variants:
        vae = _load_or_build_vae(a, g, device, dtype)
        torch.backends.cudnn.benchmark = tuned
        if tuned:
            _channels_last_3d(vae)
        n = vae.num_frames(z.shape[1])
        try:
            with torch.inference_mode():
                seq_s, _, frames = timed(lambda: vae.decode_to_uint8(z).numpy(), device, a.reps)
                for x264_label, x264 in (encoders if label == "fp32 (served)" else encoders[:1]):
                    enc_s, _, _ = timed(lambda: encode_mp4(frames, 16, settings=x264), device, a.reps)
                    ovl_s, _, out = timed(lambda: decode_to_mp4(vae.decode_uint8_chunks(z), n, 16, x264), device, a.reps)
                    rows.append({"vae": label, "x264": x264_label, "sequential_s": seq_s + enc_s, "decode_s": seq_s,
                                 "encode_s": enc_s, "overlapped_s": ovl_s, "exact": x264_label.startswith("x264 default")})
                    print(f"  overlap {rows[-1]}", flush=True)
        finally:
            torch.backends.cudnn.benchmark = bench_flag
            del vae
            free(device)
    res["overlap"] = {"rows": rows, "mp4_real": a.have.get("av", False)}
    exact = [r for r in rows if r["exact"]]
    res["measured"]["overlap"] = min((r["overlapped_s"], f"VAE {r['vae']}, {r['x264']}") for r in exact)
    res["overlap"]["best_any"] = min((r["overlapped_s"], f"VAE {r['vae']}, {r['x264']}") for r in rows)


def section_tae(a, g, device, res):
    from wan_distill.models.tiny_vae import TinyVAEDecoder
    from wan_distill.video import decode_to_mp4

    z = torch.randn(latent_shape(g), generator=torch.Generator().manual_seed(4)).to(device)
    if a.tae_weights:
        from wan_distill.loaders.tiny_vae import load_tiny_vae
        tae = load_tiny_vae(a.tae_weights, device=device, dtype=a.dtype).eval()
    else:
        with torch.device("meta"):
            tae = TinyVAEDecoder(16, g.tae_widths)
        tae = tae.to(a.dtype).to_empty(device=device).eval()
        random_init_on_device(tae, 5)
    vae = _load_or_build_vae(a, g, device, torch.float32)
    try:
        with torch.inference_mode():
            vae_frames = vae.decode_to_uint8(z)
            del vae
            free(device)
            s, first, frames = timed(lambda: tae.decode_to_uint8(z), device, a.reps)
            n = tae.num_frames(z.shape[1])
            ovl_s, _, _ = timed(lambda: decode_to_mp4(tae.decode_uint8_chunks(z), n, 16), device, a.reps)
        res["tae"] = {"s": s, "first_s": first, "overlapped_s": ovl_s, "frames": list(frames.shape),
                      "psnr_vs_vae": psnr(frames, vae_frames), "real_weights": bool(a.tae_weights and a.vae_weights)}
    finally:
        del tae
        free(device)


def section_e2e(a, g, device, res):
    from wan_distill.engine import DenoiseEngine
    from wan_distill.pipeline import WanPipeline

    h, w, f = g.video
    run = RunConfig(target_height=h, target_width=w, target_video_length=f)
    te, _ = build_text_encoder(types.SimpleNamespace(t5=g.t5, text_dim=g.text_dim, dtype=a.dtype, text_len=512),
                               device)
    vae = _build_vae(g, device, torch.float32)
    rows = []
    try:
        for name, cfg in (("1.3B", g.dit13), ("14B", g.dit14)):
            dit = build_dit(cfg, device, a.dtype)
            pipe = WanPipeline(run, te, DenoiseEngine(dit, run, device), vae)
            try:
                for mode in ("eager", "compiled"):
                    if mode == "compiled":
                        dit.compile_blocks(**_compile_opts(a))
                    for call in ("cold", "warm"):
                        sync(device)
                        t0 = time.perf_counter()
                        out = pipe.text_to_video("a red fox runs through the snow at dawn", seed=42)
                        sync(device)
                        rows.append({"model": name, "mode": mode, "call": call, "total_s": time.perf_counter() - t0,
                                     **out.timings, "frames": list(out.frames.shape)})
                        print(f"  e2e {rows[-1]}", flush=True)
                        del out
            finally:
                _uncompile(dit)
                del pipe, dit
                free(device)
            warm = [r for r in rows if r["model"] == name and r["call"] == "warm"]
            best = min(warm, key=lambda r: r["total_s"])
            res["measured"]["e2e13" if name == "1.3B" else "e2e14"] = (best["total_s"], f"{best['mode']} DiT")
    finally:
        res["e2e"] = {"rows": rows, "mp4_real": a.have.get("av", False), "t5": g.t5}
        del te, vae
        free(device)


RUNNERS = {"sdpa": section_sdpa, "rope": section_rope, "dit14": section_dit14, "fp8": section_fp8,
           "vae": section_vae, "overlap": section_overlap, "tae": section_tae, "e2e": section_e2e}


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def _err(r) -> str:
    return f"failed: {r['error']}"


def render(a, g, device, res) -> str:
    dev = (f"{torch.cuda.get_device_name(device)}, {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f}"
           f" GiB" if device.type == "cuda" else "CPU")
    cuda = f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if device.type == "cuda" else ""
    h, w, f = g.video
    L = [f"## GPU speed, stage by stage{' (--tiny: tiny sizes, script check only, numbers mean nothing)' if a.tiny else ''}",
         "",
         f"- machine: {dev}; host {platform.processor() or platform.machine()}; torch {torch.__version__}{cuda}, "
         f"Python {platform.python_version()}",
         f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
         f"- command: `{a.command}`",
         f"- {h}x{w}x{f} (latent {'x'.join(map(str, latent_shape(g)))}), {str(a.dtype).removeprefix('torch.')}, "
         f"random weights (cost only); median of {a.reps} after a warm-up", "",
         "### Targets (issue 13)", "", "| stage | target s | measured s | how | met |", "|---|---|---|---|---|"]
    for key, what, target in TARGETS:
        m = res["measured"].get(key)
        L.append(f"| {what} | ≤ {target} | " + (f"**{m[0]:.3f}** | {m[1]} | {'yes' if m[0] <= target else 'no'} |"
                                               if m else "not measured | – | – |"))
    if "e2e14" in res["measured"]:
        L.append(f"\nLightX2V publishes {LIGHTX2V_14B_E2E_S} s end to end for the 4-step 14B 480P video on one H200 "
                 f"(sage attention, fp8 DiT, tiled VAE; quoted, not run here): ours "
                 f"{res['measured']['e2e14'][0]:.2f} s bf16.")
    r = res.get("sdpa")
    if r:
        L += ["", f"### SDPA backends, q/k/v {r['shape']}" if "error" not in r else "### SDPA backends", ""]
        if "error" in r:
            L.append(_err(r))
        else:
            L += ["| backend | ms / call | TFLOP/s | rel. L2 vs default |", "|---|---|---|---|"]
            for row in r["rows"]:
                L.append(f"| {row['backend']} | " + (
                    f"{row['s'] * 1e3:.2f} | {r['flops'] / row['s'] / 1e12:.0f} | {row['rel_l2']:.1e} |"
                    if "s" in row else f"{row['error']} | | |"))
            L.append(f"\nFastest PyTorch backend: **{r['best']}**.")
    r = res.get("rope")
    if r:
        L += ["", "### RoPE: fp32 vs fp64", ""]
        L.append(_err(r) if "error" in r else (
            f"x {r['shape']}: fp64 (shipped) {r['fp64_s'] * 1e3:.2f} ms, fp32 {r['fp32_s'] * 1e3:.2f} ms per call "
            f"({r['calls_per_forward']} calls per forward: {r['calls_per_forward'] * (r['fp64_s'] - r['fp32_s']):.3f} s "
            f"saved eager). Rel. L2 vs exact (fp64 on the bf16 input): fp64 {r['fp64_rel_l2_vs_exact']:.1e} (the bf16 "
            f"output rounding), fp32 {r['fp32_rel_l2_vs_exact']:.1e}; fp32 vs fp64 outputs {r['fp32_vs_fp64_rel_l2']:.1e} "
            f"(max abs {r['fp32_vs_fp64_max_abs']:.1e})."))
    r = res.get("dit14")
    if r:
        L += ["", "### 14B DiT forward", ""]
        if "error" in r:
            L.append(_err(r))
        else:
            L += ["| variant | s / forward | first call s | rel. L2 vs eager | exact |", "|---|---|---|---|---|"]
            for row in r["rows"]:
                L.append(f"| {row['variant']} | " + (
                    f"**{row['s']:.3f}** | {row['first_s']:.1f} | {row['rel_l2']:.1e} | {'yes' if row['exact'] else 'no (opt-in)'} |"
                    if "s" in row else f"{row['error']} | | | |"))
    r = res.get("fp8")
    if r:
        L += ["", "### fp8 at load vs bf16 (14B)", ""]
        L.append(_err(r) if "error" in r else (
            f"{r['fp8_linears']} block linears quantized per output row in {r['quantize_s']:.1f} s "
            f"({'torch._scaled_mm' if r['scaled_mm'] else 'CPU: dequantized fallback'}): "
            f"**{r['bf16_s']:.3f} → {r['fp8_s']:.3f} s** per forward ({r['bf16_s'] / r['fp8_s']:.2f}×); one forward "
            f"rel. L2 vs bf16 {r['forward_rel_l2']:.1e}; 4-step latents (same seed) rel. L2 **{r['latent_rel_l2']:.1e}** "
            f"(4-step denoise {r['bf16_denoise_s']:.1f} → {r['fp8_denoise_s']:.1f} s). Opt-in (`dit_quantized`)."))
    r = res.get("vae")
    if r:
        L += ["", "### VAE decode" + ("" if "error" in r else f", latents {r['latents']}"), ""]
        if "error" in r:
            L.append(_err(r))
        else:
            L += ["| variant | s / decode | first call s | frame PSNR vs fp32 dB |", "|---|---|---|---|"]
            for row in r["rows"]:
                L.append(f"| {row['variant']} | " + (f"**{row['s']:.3f}** | {row['first_s']:.1f} | {row['psnr']:.1f} |"
                                                    if "s" in row else f"{row['error']} | | |"))
            if not r["real_weights"]:
                L.append("\nRandom weights: the PSNR measures bf16 / layout numerics on this network, not picture "
                         "quality (rerun with --vae-weights for that).")
    r = res.get("overlap")
    if r:
        L += ["", "### Decode + MP4 encode: sequential vs overlapped", ""]
        if "error" in r:
            L.append(_err(r))
        else:
            L += ["| VAE | x264 | decode s | encode s | sequential s | overlapped s | ratio |",
                  "|---|---|---|---|---|---|---|"]
            for row in r["rows"]:
                L.append(f"| {row['vae']} | {row['x264']} | {row['decode_s']:.3f} | {row['encode_s']:.3f} | "
                         f"{row['sequential_s']:.3f} | **{row['overlapped_s']:.3f}** | "
                         f"{row['overlapped_s'] / row['sequential_s']:.2f}× |")
            L.append(f"\nFastest with any setting: {r['best_any'][0]:.3f} s ({r['best_any'][1]}); the x264 rows other "
                     "than the default change the video (bench/results/x264_settings.md has their PSNR).")
            if not r["mp4_real"]:
                L.append("\nPyAV missing on this host: the encoder is a stand-in, these times are the decode only.")
    r = res.get("tae")
    if r:
        L += ["", "### taew2_1 tiny decoder", ""]
        L.append(_err(r) if "error" in r else (
            f"{str(a.dtype).removeprefix('torch.')}: **{r['s']:.3f} s** per decode (first {r['first_s']:.1f} s), "
            f"{r['overlapped_s']:.3f} s with the MP4 encode overlapped; frames {r['frames']}; PSNR vs the VAE's frames "
            + (f"{r['psnr_vs_vae']:.1f} dB (real weights)." if r["real_weights"]
               else f"{r['psnr_vs_vae']:.1f} dB with random weights: meaningless (needs real weights). Opt-in (`use_tae`).")))
    r = res.get("e2e")
    if r:
        L += ["", "### End to end (WanPipeline.text_to_video, 4 steps)", ""]
        if "error" in r and not r.get("rows"):
            L.append(_err(r))
        if r.get("rows"):
            L += ["| model | DiT | call | text s | DiT s | VAE s | MP4 tail s | total s |", "|---|---|---|---|---|---|---|---|"]
            for row in r["rows"]:
                L.append(f"| {row['model']} | {row['mode']} | {row['call']} | {row.get('text', 0):.2f} | "
                         f"{row.get('dit', 0):.2f} | {row.get('vae', 0):.2f} | {row.get('mp4', 0):.2f} | "
                         f"**{row['total_s']:.2f}** |")
            L.append(f"\nText encoder: UMT5 {'XXL (real size)' if r['t5'] == 'xxl' else 'small'}, random; VAE fp32; "
                     "MP4 overlapped with the decode (MP4 tail = encode left after the last frame decoded)"
                     + ("" if r["mp4_real"] else "; PyAV missing: MP4 is a stand-in") + ".")
            if "error" in r:
                L.append(_err(r))
    if res["notes"]:
        L += ["", "Notes:"] + [f"- {n}" for n in res["notes"]]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (CPU unless --device): checks the script runs")
    ap.add_argument("--device", default=None, help="default: cuda if available (cpu with --tiny)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--vae-weights", default=None, help="a real Wan2.1_VAE.pth (else random weights)")
    ap.add_argument("--tae-weights", default=None, help="a real taew2_1.pth (else random weights)")
    ap.add_argument("--out", type=Path, help="write the markdown block here")
    a = ap.parse_args(argv)
    a.command = " ".join(shlex.quote(x) for x in ["python3", "bench/gpu_speed.py", *(argv if argv is not None else sys.argv[1:])])
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.tiny else "cpu"))
    a.device_type = device.type
    a.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a.have = install_standins()
    sections = [s for s in a.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    g = geometry(a.tiny)
    res = {"measured": {}, "notes": []}
    if not a.have.get("av"):
        res["notes"].append("PyAV is not installed: MP4 encodes are stand-ins (b''), their times are not real.")
    for name in SECTIONS:
        if name not in sections:
            continue
        print(f"[gpu_speed] {name}", flush=True)
        t0 = time.perf_counter()
        try:
            RUNNERS[name](a, g, device, res)
        except Exception as exc:  # noqa: BLE001 - report it, run the next section
            traceback.print_exc()
            res.setdefault(name, {})["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            free(device)
        print(f"[gpu_speed] {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    text = render(a, g, device, res)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
