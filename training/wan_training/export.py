"""Write the trained models in the released Wan2.1 / LightX2V file layout, and extract the distill LoRA.

    <root>/config.json                                   DiT config
    <root>/diffusion_pytorch_model-0000{1,2}-of-00002.safetensors + .index.json   teacher (the "base" model)
    <root>/distill_models/distill_model.safetensors      4-step student (the released distilled checkpoint)
    <root>/loras/<LORA_FILE>                             student - teacher as a LightX2V LoRA (SVD, rank r)
    <root>/models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/   frozen tiny UMT5 + tokenizer
    <root>/Wan2.1_VAE.pth                                trained tiny VAE
    <root>/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth   (I2V) frozen tiny CLIP

Roots: ``Wan2.1-T2V-toy`` and ``Wan2.1-I2V-toy`` (the layout of Wan2.1-T2V-1.3B / Wan2.1-I2V-14B-480P), the task
taken from the DiT's config.

LoRA keys (LightX2V's extractor format, ``diffusion_model.`` prefix): every 2-D weight -> ``X.lora_up.weight``
[out, r] + ``X.lora_down.weight`` [r, in] from the truncated SVD of the difference; biases ``X.diff_b``;
modulations ``X.diff_m``; every other tensor (norm scales, the 5-D patch embedding) ``X.diff`` (full difference).
"""
from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_distill.loaders.layout import DISTILL_FILES, LORA_DIR, VAE_FILE
from wan_distill.models.dit import WanDiT
from wan_distill.models.vae import WanVAE
from wan_distill.tiny import save_sharded

from .common import write_image_encoder, write_text_encoder

ROOT_NAMES = {"t2v": "Wan2.1-T2V-toy", "i2v": "Wan2.1-I2V-toy"}
ROOT_NAME = ROOT_NAMES["t2v"]


def lora_file(rank: int, task: str = "t2v") -> str:
    return f"Wan21_{task.upper()}_toy_lightx2v_cfg_step_distill_lora_rank{rank}.safetensors"


def extract_lora(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], rank: int
                 ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """LoRA of ``tuned - base`` -> (lora state dict, errors). Errors: ``relative_error`` = ||sum of low-rank
    residuals||_F / ||sum of low-rank deltas||_F over the 2-D weights; ``max_layer_error`` the worst layer's."""
    lora: dict[str, torch.Tensor] = {}
    res2 = tot2 = worst = 0.0
    for key in sorted(base):
        delta = (tuned[key].float() - base[key].float())
        stem, leaf = key.rsplit(".", 1) if "." in key else ("", key)
        if leaf == "weight" and delta.ndim == 2:
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            r = min(rank, s.numel())
            up, down = (u[:, :r] * s[:r]).contiguous(), vh[:r].contiguous()
            lora[f"diffusion_model.{stem}.lora_up.weight"] = up
            lora[f"diffusion_model.{stem}.lora_down.weight"] = down
            resid = (delta - up @ down).pow(2).sum().item()
            norm = delta.pow(2).sum().item()
            res2, tot2 = res2 + resid, tot2 + norm
            worst = max(worst, (resid / norm) ** 0.5 if norm > 0 else 0.0)
        elif leaf == "bias":
            lora[f"diffusion_model.{stem}.diff_b"] = delta
        elif leaf == "modulation":
            lora[f"diffusion_model.{stem + '.' if stem else ''}diff_m"] = delta
        else:
            lora[f"diffusion_model.{stem}.diff"] = delta
    return lora, {"relative_error": (res2 / tot2) ** 0.5 if tot2 else 0.0, "max_layer_error": worst}


def write_encoders(root: Path, vae: WanVAE, task: str) -> None:
    """The root's VAE, text encoder and (I2V) image encoder files: what the I2V conditioning is built from."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for path in root.rglob("*"):          # a rerun writes real files, never through a link of link_identical_files
        if path.is_symlink():
            path.unlink()
    torch.save({k: v.detach().clone() for k, v in vae.state_dict().items()}, root / VAE_FILE)
    write_text_encoder(root)
    if task == "i2v":
        write_image_encoder(root)


def write_model_root(root: Path, teacher: WanDiT, student: WanDiT, vae: WanVAE, lora_rank: int) -> dict[str, float]:
    """Write every file of the model root (T2V or I2V, from the DiT's config); returns the LoRA's reconstruction
    errors."""
    root = Path(root)
    task = teacher.cfg.model_type
    (root / "distill_models").mkdir(parents=True, exist_ok=True)
    (root / LORA_DIR).mkdir(exist_ok=True)
    (root / "config.json").write_text(json.dumps(teacher.cfg.to_dict(), indent=2))
    base = {k: v.detach().float().contiguous() for k, v in teacher.state_dict().items()}
    tuned = {k: v.detach().float().contiguous() for k, v in student.state_dict().items()}
    save_sharded(base, root)
    save_file(tuned, str(root / DISTILL_FILES[0]), metadata={"format": "pt"})
    lora, errors = extract_lora(base, tuned, lora_rank)
    save_file(lora, str(root / LORA_DIR / lora_file(lora_rank, task)), metadata={"format": "pt"})
    write_encoders(root, vae, task)
    return errors


def link_identical_files(source: Path, root: Path) -> list[str]:
    """Replace each file of ``root`` that is byte-identical to the file at the same relative path in ``source`` by a
    relative symlink to it (the two toy roots share their VAE and text encoder: committed once). Returns the
    linked relative paths."""
    source, root = Path(source), Path(root)
    linked = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root)
        twin = source / rel
        if twin.is_file() and not twin.is_symlink() and filecmp.cmp(path, twin, shallow=False):
            path.unlink()
            path.symlink_to(os.path.relpath(twin, path.parent))
            linked.append(str(rel))
    return linked
