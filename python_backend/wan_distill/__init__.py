"""Pure-PyTorch core of the Wan2.1 step-distill server (no Triton imports).

Layout:
  config        typed DiTConfig / RunConfig parsed from config.json and LightX2V run JSONs
  models/       dit (Wan2.1 DiT), vae (Wan2.1 causal 3D VAE), text_encoder (UMT5), image_encoder (CLIP ViT-H/14)
  schedulers/   step_distill (4-step warped list), flow_match (baseline Euler / UniPC with CFG)
  loaders/      checkpoint discovery + strict loading, LoRA merge
  pipeline      T2V / I2V stages used both in-process and by the Triton adapters
  tiny          writes tiny random checkpoints in the exact Wan2.1 / LightX2V file layout
"""
