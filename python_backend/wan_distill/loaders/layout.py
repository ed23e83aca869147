"""Where each component's weights live in a Wan2.1 / LightX2V model root: every file name, defined once.

    <model root>/
      config.json                                             DiT architecture
      diffusion_pytorch_model*.safetensors (+ .index.json)    base DiT
      distill_models/distill_model.safetensors | .pt          full distilled DiT (LightX2V)
      distill_model.pt                                        full distilled DiT (the first T2V release)
      loras/                                                  LoRA files named by a run config
      models_t5_umt5-xxl-enc-bf16.pth | umt5-xxl/             UMT5 encoder (Wan .pth, or an HF encoder folder)
      google/umt5-xxl/                                        tokenizer
      Wan2.1_VAE.pth                                          VAE
      models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth (I2V) CLIP
      taew2_1.pth                                             taehv tiny decoder (optional; a run config's use_tae)
"""
from __future__ import annotations

DIT_CONFIG_FILE = "config.json"
BASE_INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
BASE_SHARD_GLOB = "diffusion_pytorch_model*.safetensors"
DISTILL_FILES = ("distill_models/distill_model.safetensors", "distill_models/distill_model.pt", "distill_model.pt")
LORA_DIR = "loras"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_HF_DIR = "umt5-xxl"
TOKENIZER_DIR = "google/umt5-xxl"
VAE_FILE = "Wan2.1_VAE.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
TAE_FILE = "taew2_1.pth"
