#!/usr/bin/env python3
"""Two opt-in GPU levers, random weights at Wan2.1 sizes, 480x832x81 (latent 16x21x60x104, 32760 tokens):
(1) fp8 DiT (block linears quantized per output row at load -> Fp8Linear / torch._scaled_mm) vs bf16: seconds per
forward and the output's distance from bf16; (2) the taew2_1 tiny decoder (bf16) vs the Wan VAE (fp32, as served):
seconds per decode_to_uint8 and the frame count. Random weights say nothing about picture quality (needs real ones).

    PYTHONPATH=python_backend python3 bench/gpu_fp8_tae.py --out $OUT/gpu_fp8_tae.md    # on a GPU host
    PYTHONPATH=python_backend .venv/bin/python bench/gpu_fp8_tae.py --smoke            # CPU, tiny sizes (script check)
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import build_dit, free, random_init_on_device, sync  # noqa: E402

from wan_distill.config import DiTConfig  # noqa: E402
from wan_distill.loaders.quantized import block_linears  # noqa: E402
from wan_distill.models.fp8 import Fp8Linear  # noqa: E402
from wan_distill.models.tiny_vae import TinyVAEDecoder  # noqa: E402
from wan_distill.models.vae import WanVAE  # noqa: E402


def timed(fn, device, reps: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(1 + reps):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times[1:], out


def to_fp8_(model) -> int:
    """Quantize the block linears in place (what load_dit does for dit_quantized on CUDA)."""
    names = block_linears(model)
    for name in names:
        parent, _, child = name.rpartition(".")
        mod = model.get_submodule(parent)
        setattr(mod, child, Fp8Linear.from_linear(getattr(mod, child)))
        free(next(model.parameters()).device)
    return len(names)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default="1.3B,14B")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    cfgs = {"1.3B": DiTConfig.t2v_1_3b(), "14B": DiTConfig.t2v_14b()}
    thw, vae_dim, widths = (21, 60, 104), 96, (256, 128, 64, 64)
    if args.smoke:
        cfgs = {k: DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32) for k in cfgs}
        thw, vae_dim, widths = (3, 8, 8), 8, (16, 8, 8, 8)
    gen = torch.Generator(device).manual_seed(0)
    dit_rows = []
    for name in args.models.split(","):
        cfg = cfgs[name]
        model = build_dit(cfg, device, dtype)
        x = torch.randn((1, 16, *thw), generator=gen, device=device, dtype=dtype)
        ctx = torch.randn((1, cfg.text_len, cfg.text_dim), generator=gen, device=device, dtype=dtype)
        t = torch.tensor([937.5], device=device)
        with torch.inference_mode():
            bf16, ref = timed(lambda: model(x, t, ctx), device, args.reps)
            n = to_fp8_(model)
            if args.smoke:  # CPU: force the scaled-mm path this torch build also has on CPU
                for m in model.modules():
                    if isinstance(m, Fp8Linear):
                        m.use_scaled_mm = True
            fp8, out = timed(lambda: model(x, t, ctx), device, args.reps)
        diff = out.float() - ref.float()
        dit_rows.append((name, n, statistics.median(bf16), statistics.median(fp8), diff.abs().max().item(),
                         (diff.norm() / ref.float().norm()).item()))
        print(dit_rows[-1], flush=True)
        del model, x, ctx, ref, out
        free(device)

    z = torch.randn((16, *thw), generator=gen, device=device)
    with torch.device("meta"):
        vae, tae = WanVAE(dim=vae_dim), TinyVAEDecoder(16, widths)
    vae, tae = vae.to_empty(device=device).eval(), tae.to(dtype).to_empty(device=device).eval()  # as served
    with torch.no_grad():
        random_init_on_device(vae, 1)
        random_init_on_device(tae, 2)
    vae_times, frames_vae = timed(lambda: vae.decode_to_uint8(z), device, args.reps)
    del vae
    free(device)
    tae_rows = []
    for chunk in sorted({1, 3, thw[0]}):
        times, frames_tae = timed(lambda: tae.decode_to_uint8(z, latents_per_chunk=chunk), device, args.reps)
        tae_rows.append((chunk, statistics.median(times)))
        print(("tae", chunk, tae_rows[-1][1]), flush=True)
    assert frames_tae.shape == frames_vae.shape, (frames_tae.shape, frames_vae.shape)

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    when = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    md = ["## fp8 DiT and the taew2_1 tiny decoder\n",
          f"- {dev}, torch {torch.__version__}, {when}; latent [16,{thw[0]},{thw[1]},{thw[2]}], random weights; "
          f"median of {args.reps} runs after a warm-up",
          f"- command: `{' '.join(['python3', *sys.argv])}`\n",
          f"| DiT | fp8 linears | {str(dtype).removeprefix('torch.')} s/forward | fp8 s/forward | speedup | max abs diff "
          "| rel. L2 diff |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {name} | {n} | {b:.3f} | {f:.3f} | **{b / f:.2f}x** | {dmax:.2e} | {drel:.2e} |"
           for name, n, b, f, dmax, drel in dit_rows]
    vae_s = statistics.median(vae_times)
    md += ["", f"| decoder ({tuple(frames_vae.shape)} uint8 frames) | s/decode | vs VAE |", "|---|---|---|",
           f"| Wan VAE dim {vae_dim}, fp32 | {vae_s:.3f} | 1.00x |"]
    md += [f"| taew2_1 {widths}, {str(dtype).removeprefix('torch.')}, {c} latent frame(s) per chunk | {s:.3f} | "
           f"**{vae_s / s:.1f}x** |" for c, s in tae_rows]
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
