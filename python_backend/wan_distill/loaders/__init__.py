"""Loading, in one place by one rule: find the file(s) -> read (weights only) -> rename keys -> strict assign into a
meta-built module, in the dtype / device :mod:`.policy` decides. One module per component:

  layout         every file name of a Wan2.1 / LightX2V model root
  policy         which dtype each component runs in on CPU / CUDA
  files          reading .safetensors / .pt (weights_only) and the strict assign all loaders share
  checkpoint     the DiT (base shards, distilled, single file, quantized) + LoRA merge (lora)
  quantized      LightX2V's fp8 / int8 DiT checkpoints: recognition, dequantization, fp8 at load
  vae            the Wan2.1 VAE, and ``load_decoder``: the VAE or the tiny decoder, as the run config says
  tiny_vae       taehv's taew2_1 tiny decoder
  text_encoder   UMT5-XXL + tokenizer
  image_encoder  CLIP ViT-H/14 (I2V)

``models/`` never imports this package (nn.Modules and rename tables only).
"""
