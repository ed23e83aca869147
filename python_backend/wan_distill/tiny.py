"""Tiny, deterministic, random-weight Wan2.1 model directories in the exact released file layout.

    python -m wan_distill.tiny --out checkpoints/demo

writes, for T2V and I2V::

    Wan2.1-{T2V,I2V}-tiny/
      config.json                                         Wan2.1 DiT config (+ text_dim/image_dim of the tiny encoders)
      diffusion_pytorch_model-0000{1,2}-of-00002.safetensors + diffusion_pytorch_model.safetensors.index.json   (base)
      distill_models/distill_model.safetensors            full distilled DiT = base + the LoRA's delta
      loras/Wan21_{T2V,I2V}_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors   LightX2V-format distill LoRA
      models_t5_umt5-xxl-enc-bf16.pth                     UMT5 encoder, Wan key names, bf16
      google/umt5-xxl/                                    offline tokenizer
      Wan2.1_VAE.pth                                      causal 3D VAE, Wan key names, small base width
      models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth   (I2V) CLIP, Wan key names

The weights are random: videos made from them are noise. They exist so that every loader, the pipeline and the
Triton repository run for real, fast, on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import DiTConfig
from .models.dit import WanDiT
from .models.image_encoder import CLIP_FILE, write_tiny_clip
from .models.text_encoder import T5_FILE, TOKENIZER_DIR, write_tiny_tokenizer, write_tiny_umt5
from .models.vae import VAE_FILE, WanVAE

LORA_NAMES = {"t2v": "Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors",
              "i2v": "Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors"}


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny components (all small enough for the test suite on 2 CPU cores)."""

    dit_dim: int = 64
    dit_ffn: int = 128
    dit_heads: int = 2
    dit_layers: int = 2
    t5_dim: int = 32
    t5_layers: int = 2
    t5_heads: int = 2
    t5_ffn: int = 64
    clip_width: int = 160
    clip_layers: int = 3
    clip_mlp: int = 320
    vae_dim: int = 8
    lora_rank: int = 4
    text_len: int = 512

    def dit_config(self, task: str) -> DiTConfig:
        return DiTConfig(model_type=task, dim=self.dit_dim, ffn_dim=self.dit_ffn, freq_dim=256,
                         num_heads=self.dit_heads, num_layers=self.dit_layers, in_dim=36 if task == "i2v" else 16,
                         out_dim=16, text_len=self.text_len, text_dim=self.t5_dim, image_dim=self.clip_width)


def random_init_(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Deterministic init independent of the modules' own init: fan-in scaled weights, norm scales near 1."""
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("gamma",) or (p.ndim == 1 and "norm" in name and leaf == "weight"):
                value = 1.0 + 0.1 * noise
            elif leaf == "bias" or p.ndim == 1:
                value = 0.02 * noise
            elif leaf == "modulation":
                value = noise / math.sqrt(p.shape[-1])
            else:
                value = noise / math.sqrt(max(1, p[0].numel()))
            p.copy_(value.to(p.dtype))


def make_distill_lora(base: dict[str, torch.Tensor], rank: int, gen: torch.Generator
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A LightX2V-format LoRA over the DiT blocks and the distilled weights it implies.

    Returns (lora, distilled): 2-D block weights get lora_up/lora_down pairs; biases, norms, modulations and the head get
    full ``.diff`` / ``.diff_b`` / ``.diff_m`` deltas, as lightx2v's extractor writes them. distilled = base + delta.
    """
    lora: dict[str, torch.Tensor] = {}
    distilled = {k: v.clone() for k, v in base.items()}

    def rand(*shape: int, std: float) -> torch.Tensor:  # values exactly representable in the file's bf16
        return (std * torch.randn(*shape, generator=gen)).to(torch.bfloat16).float()

    for key in sorted(base):
        w = base[key]
        if key.startswith("blocks.") and key.endswith(".weight") and w.ndim == 2:
            stem = key[: -len(".weight")]
            up = rand(w.shape[0], rank, std=0.05)
            down = rand(rank, w.shape[1], std=0.05)
            lora[f"diffusion_model.{stem}.lora_up.weight"] = up
            lora[f"diffusion_model.{stem}.lora_down.weight"] = down
            distilled[key] = w + up @ down
        elif key.endswith(".bias") and key.startswith("blocks."):
            diff = rand(*w.shape, std=0.01)
            lora[f"diffusion_model.{key[: -len('.bias')]}.diff_b"] = diff
            distilled[key] = w + diff
        elif key.endswith("modulation"):
            diff = rand(*w.shape, std=0.01)
            lora[f"diffusion_model.{key[: -len('modulation')]}diff_m"] = diff
            distilled[key] = w + diff
        elif key.startswith("head.head.weight") or (key.startswith("blocks.") and "norm" in key):
            diff = rand(*w.shape, std=0.01)
            lora[f"diffusion_model.{key[: -len('.weight')]}.diff"] = diff
            distilled[key] = w + diff
    return lora, distilled


def save_sharded(state: dict[str, torch.Tensor], out_dir: Path, shards: int = 2) -> None:
    """diffusers-style sharded safetensors + index json, as in the Wan-AI repos."""
    keys = sorted(state)
    per = math.ceil(len(keys) / shards)
    weight_map, total = {}, 0
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i * per:(i + 1) * per]}
        save_file(part, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_model_dir(out_dir: Path, task: str, spec: TinySpec = TinySpec(), seed: int = 0) -> Path:
    """One complete tiny Wan2.1 model root for ``task`` ('t2v' or 'i2v')."""
    out_dir = Path(out_dir)
    (out_dir / "distill_models").mkdir(parents=True, exist_ok=True)
    (out_dir / "loras").mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    cfg = spec.dit_config(task)
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    dit = WanDiT(cfg)
    random_init_(dit, gen)
    base = {k: v.detach().clone().contiguous() for k, v in dit.state_dict().items()}
    save_sharded(base, out_dir)
    lora, distilled = make_distill_lora(base, spec.lora_rank, gen)
    save_file(distilled, str(out_dir / "distill_models" / "distill_model.safetensors"), metadata={"format": "pt"})
    save_file({k: v.to(torch.bfloat16) for k, v in lora.items()}, str(out_dir / "loras" / LORA_NAMES[task]))

    # Like the released roots, every tiny root ships the same T5, tokenizer, VAE (and CLIP): fixed seeds.
    vocab = write_tiny_tokenizer(out_dir / TOKENIZER_DIR)
    write_tiny_umt5(out_dir / T5_FILE, vocab_size=vocab, d_model=spec.t5_dim, layers=spec.t5_layers,
                    heads=spec.t5_heads, d_ff=spec.t5_ffn, seed=1)
    vae = WanVAE(dim=spec.vae_dim)
    random_init_(vae, torch.Generator().manual_seed(2))
    torch.save(vae.state_dict(), out_dir / VAE_FILE)
    if task == "i2v":
        write_tiny_clip(out_dir / CLIP_FILE, width=spec.clip_width, layers=spec.clip_layers, mlp=spec.clip_mlp,
                        seed=3)
    return out_dir


def write_demo_checkpoints(out: Path, spec: TinySpec = TinySpec()) -> dict[str, Path]:
    out = Path(out)
    return {task: write_model_dir(out / f"Wan2.1-{task.upper()}-tiny", task, spec, seed=seed)
            for task, seed in (("t2v", 0), ("i2v", 100))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("checkpoints/demo"))
    parser.add_argument("--force", action="store_true", help="rewrite even if the directories exist")
    args = parser.parse_args(argv)
    done = [args.out / f"Wan2.1-{t}-tiny" / "distill_models" / "distill_model.safetensors" for t in ("T2V", "I2V")]
    if all(p.is_file() for p in done) and not args.force:
        print(f"tiny checkpoints already in {args.out} (use --force to rewrite)")
        return
    for task, path in write_demo_checkpoints(args.out).items():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"wrote tiny {task} model: {path} ({size / 1e6:.1f} MB, random weights)")


if __name__ == "__main__":
    main()
