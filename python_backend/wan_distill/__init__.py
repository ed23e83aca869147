"""Pure-PyTorch core of the Wan2.1 step-distill server (no Triton imports).

Layout:
  config        typed DiTConfig / RunConfig parsed from config.json and LightX2V run JSONs
  models/       dit (Wan2.1 DiT), vae (Wan2.1 causal 3D VAE), text_encoder (UMT5), image_encoder (CLIP ViT-H/14),
                fp8 (scaled-fp8 linear), tiny_vae (taew2_1 decoder): modules and rename tables, no file access
  schedulers/   step_distill (4-step warped list), flow_match (baseline Euler / UniPC with CFG)
  loaders/      every find -> read -> rename -> strict-assign path, the dtype/device policy, LoRA, quantized DiTs
  pipeline      T2V / I2V stages used both in-process and by the Triton adapters
  tiny          writes tiny random checkpoints in the exact Wan2.1 / LightX2V / taehv file layouts
"""
