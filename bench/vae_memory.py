"""Peak host memory (ru_maxrss) of Wan2.1 VAE decoding: streaming uint8 vs full-float decodes.

Each case runs in a fresh subprocess so peaks do not mix:
  model   build the VAE + random latents only (baseline)
  naive   Wan-style: decode every latent frame, keep the float chunks, torch.cat, then convert to uint8 frames
  float   WanVAE.decode (preallocated float video), then convert to uint8 frames
  stream  WanVAE.decode_to_uint8 (each chunk written straight into a preallocated uint8 [F,H,W,3])

  .venv/bin/python bench/vae_memory.py --dim 96 --latent-frames 5 --height 256 --width 256
  .venv/bin/python bench/vae_memory.py --weights /models/Wan2.1_VAE.pth --height 480 --width 832 --latent-frames 21
Random weights are used unless --weights is given (memory does not depend on the values).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = ("model", "naive", "float", "stream")


def _to_uint8(video):
    """[3, F, H, W] float in [-1,1] -> [F, H, W, 3] uint8, written the obvious (full-size temporaries) way."""
    import torch
    return ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).contiguous()


def run_case(args) -> dict:
    import torch
    from wan_distill.loaders.vae import load_vae
    from wan_distill.models.vae import WanVAE

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.weights:
        vae = load_vae(args.weights, device=args.device, dtype=dtype)
    else:
        torch.manual_seed(0)
        vae = WanVAE(dim=args.dim).eval().requires_grad_(False).to(args.device, dtype)
    z = torch.randn(16, args.latent_frames, args.height // 8, args.width // 8, device=args.device)
    cuda = args.device.startswith("cuda")
    if cuda:  # warm up cuDNN on the same geometry (2 latent frames), then measure from a clean peak
        with torch.inference_mode():
            vae.decode_to_uint8(z[:, :2])
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        gpu_model = torch.cuda.memory_allocated()
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.inference_mode():
        if args.case == "naive":
            chunks = [c for _, c in vae._decode_chunks(z[None])]
            frames = _to_uint8(torch.cat(chunks, dim=2)[0])
        elif args.case == "float":
            frames = _to_uint8(vae.decode(z[None])[0])
        elif args.case == "stream":
            frames = vae.decode_to_uint8(z)
        else:
            frames = None
        if frames is not None:
            frames = frames.cpu()
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    shape = tuple(frames.shape) if frames is not None else None
    return {"case": args.case, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "model_rss_mib": rss_model / 1024, "seconds": secs, "frames_shape": shape,
            "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "gpu_model_mib": gpu_model / 2**20 if cuda else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=96, help="VAE base width for random weights (96 = real)")
    p.add_argument("--weights", default=None, help="a Wan2.1_VAE.pth to load instead of random weights")
    p.add_argument("--latent-frames", type=int, default=5)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (then the GPU peak is reported as well)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # child mode
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return

    frames = 1 + 4 * (args.latent_frames - 1)
    out_float = 3 * frames * args.height * args.width * 4 / 2**20
    print(f"geometry: {frames} frames x {args.height}x{args.width}, latents 16x{args.latent_frames}x"
          f"{args.height // 8}x{args.width // 8}, dim {args.dim if not args.weights else args.weights}, "
          f"{args.device} {args.dtype}; "
          f"float video = {out_float:.0f} MiB, uint8 video = {out_float / 4:.0f} MiB")
    print(f"{'case':<8} {'peak RSS MiB':>13} {'over model MiB':>15} {'seconds':>8}"
          + (f" {'GPU peak MiB':>13} {'GPU over model':>15}" if args.device.startswith("cuda") else ""))
    base = ["--dim", str(args.dim), "--latent-frames", str(args.latent_frames), "--height", str(args.height),
            "--width", str(args.width), "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype] + (["--weights", args.weights] if args.weights else [])
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, *base, "--case", case]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{case:<8} {res['peak_rss_mib']:>13.0f} {res['peak_rss_mib'] - res['model_rss_mib']:>15.0f} "
              f"{res['seconds']:>8.1f}"
              + (f" {res['gpu_peak_mib']:>13.0f} {res['gpu_peak_mib'] - res['gpu_model_mib']:>15.0f}"
                 if res["gpu_peak_mib"] is not None else ""))


if __name__ == "__main__":
    main()
