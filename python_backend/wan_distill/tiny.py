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
      taew2_1.pth                                         taehv tiny decoder (+ encoder stand-ins), small widths
      models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth   (I2V) CLIP, Wan key names

The weights are random: videos made from them are noise. They exist so that every loader, the pipeline and the
Triton repository run for real, fast, on 2 CPU cores. Every writer of a component's file layout lives here
(:func:`write_tiny_umt5`, :func:`write_tiny_tokenizer`, :func:`write_tiny_clip`, :func:`write_tiny_vae`,
:func:`write_tiny_taew2_1`, :func:`write_quantized_dit` for LightX2V's fp8 / int8 DiT files).
"""
from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import DiTConfig
from .loaders.layout import CLIP_FILE, T5_FILE, TAE_FILE, TOKENIZER_DIR, VAE_FILE
from .loaders.quantized import COMFY_MARKER, COMFY_SCALE_SUFFIX, QUANTIZED_BLOCK_PARTS, SCALE_SUFFIX
from .models.dit import WanDiT
from .models.fp8 import FP8_MAX, quantize_rowwise
from .models.tiny_vae import TinyVAEDecoder
from .models.vae import WanVAE

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
    tae_widths: tuple[int, int, int, int] = (16, 8, 8, 8)
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
    write_tiny_vae(out_dir / VAE_FILE, dim=spec.vae_dim, seed=2)
    write_tiny_taew2_1(out_dir / TAE_FILE, widths=spec.tae_widths, seed=4)
    if task == "i2v":
        write_tiny_clip(out_dir / CLIP_FILE, width=spec.clip_width, layers=spec.clip_layers, mlp=spec.clip_mlp,
                        seed=3)
    return out_dir


# ----------------------------------------------------------------------------------------------
# Component files
# ----------------------------------------------------------------------------------------------
def write_tiny_vae(path: str | Path, dim: int = 8, seed: int = 2) -> Path:
    """A random ``Wan2.1_VAE.pth`` (Wan key names) with base width ``dim`` (96 in the real file)."""
    vae = WanVAE(dim=dim)
    random_init_(vae, torch.Generator().manual_seed(seed))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(vae.state_dict(), path)
    return path


def write_tiny_taew2_1(path: str | Path, widths: tuple[int, ...] = (16, 8, 8, 8), time_strides=(1, 2, 2),
                       encoder_width: int = 8, seed: int = 4) -> Path:
    """A random ``taew2_1.pth`` in taehv's layout: ``decoder.*`` exactly as :class:`TinyVAEDecoder` (real widths
    256/128/64/64) and ``encoder.*`` stand-ins of the right structure (present so loading exercises the drop rule).
    The last conv's bias is centred at 0.5 so random frames are not all clamped to black."""
    gen = torch.Generator().manual_seed(seed)
    dec = TinyVAEDecoder(16, tuple(widths), tuple(time_strides))
    random_init_(dec, gen)
    with torch.no_grad():
        dec.decoder[-1].bias.add_(0.5)
    sd = {k: v.detach().clone() for k, v in dec.state_dict().items()}
    w = encoder_width

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) / math.sqrt(max(1, math.prod(shape[1:])))

    def mem(i: int) -> dict[str, torch.Tensor]:
        return {f"encoder.{i}.conv.0.weight": rnd(w, 2 * w, 3, 3), f"encoder.{i}.conv.0.bias": rnd(w),
                f"encoder.{i}.conv.2.weight": rnd(w, w, 3, 3), f"encoder.{i}.conv.2.bias": rnd(w),
                f"encoder.{i}.conv.4.weight": rnd(w, w, 3, 3), f"encoder.{i}.conv.4.bias": rnd(w)}

    sd |= {"encoder.0.weight": rnd(w, 3, 3, 3), "encoder.0.bias": rnd(w)}
    for first, pool in ((2, 2), (7, 2), (12, 1)):     # TPool (time stride), strided conv, 3 MemBlocks
        sd[f"encoder.{first}.conv.weight"] = rnd(w, w * pool, 1, 1)
        sd[f"encoder.{first + 1}.weight"] = rnd(w, w, 3, 3)
        for i in range(first + 2, first + 5):
            sd |= mem(i)
    sd |= {"encoder.17.weight": rnd(16, w, 3, 3), "encoder.17.bias": rnd(16)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


def write_quantized_dit(state_dict: dict[str, torch.Tensor], path: str | Path, fmt: str = "fp8",
                        comfyui: bool = False, non_linear_dtype: torch.dtype | None = None,
                        prefix: str = "") -> Path:
    """Write a plain Wan DiT state dict as LightX2V's quantized checkpoint (``converter.py --quantized``).

    The 2-D weights of ``blocks.N.{self_attn,cross_attn,ffn}.*`` become float8_e4m3fn / int8 with a float32
    ``.weight_scale`` [out, 1] (symmetric per output row: max |w| -> 448 / 127); everything else is cast to
    ``non_linear_dtype`` (LightX2V's commands: bf16 for fp8 files, fp32 for int8). ``comfyui``: one per-tensor
    ``.scale_weight`` per layer and a ``scaled_fp8`` marker (fp8 only). ``prefix`` (e.g. ``model.diffusion_model.``)
    is put in front of every key but the marker.
    """
    if non_linear_dtype is None:
        non_linear_dtype = torch.bfloat16 if fmt == "fp8" else torch.float32
    out: dict[str, torch.Tensor] = {}
    for key in sorted(state_dict):
        t = state_dict[key]
        parts = key.split(".")
        if t.ndim == 2 and len(parts) > 2 and parts[0] == "blocks" and parts[2] in QUANTIZED_BLOCK_PARTS:
            stem = key[: -len(".weight")]
            if comfyui:
                if fmt != "fp8":
                    raise ValueError("ComfyUI-format files are fp8")
                scale = t.float().abs().max().clamp_min(1e-5) / FP8_MAX
                out[prefix + key] = (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
                out[prefix + stem + COMFY_SCALE_SUFFIX] = scale
            else:
                out[prefix + key], out[prefix + stem + SCALE_SUFFIX] = quantize_rowwise(t, fmt)
        else:
            out[prefix + key] = t.to(non_linear_dtype) if t.is_floating_point() else t
    if comfyui:
        out[COMFY_MARKER] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path), metadata={"format": "pt"})
    return path


TINY_CORPUS = [
    "a red fox runs through the snow at dawn",
    "a cat sitting on a wooden table next to a window",
    "slow motion shot of waves crashing on rocky cliffs",
    "an astronaut rides a horse on the surface of the moon",
    "close up of a hummingbird drinking from a flower",
    "a busy city street at night with neon lights and rain",
    "two dogs playing with a ball in a green park",
    "aerial view of a mountain lake surrounded by pine trees",
    "a chef slices vegetables in a bright kitchen",
    "the camera pans across a field of sunflowers",
    "un chat noir dort sur le canapé près de la fenêtre",
    "ein kleiner Junge läuft über die Brücke im Regen",
    "una mujer baila flamenco en una plaza soleada",
    "一只狐狸在雪地里奔跑",
    "镜头晃动，色调艳丽，过曝，静态，细节模糊不清",
    "夕阳下的海边，海浪轻轻拍打着沙滩",
    "東京の夜の街を歩く人々",
    "고양이가 창가에서 잠을 잔다",
    "кошка спит на диване у окна",
    "blurry, low quality, worst quality, jpeg artifacts, ugly, deformed",
]


def write_tiny_tokenizer(directory: str | Path, vocab_size: int = 256) -> int:
    """Write an offline T5 tokenizer dir: ``spiece.model`` (unigram, pad 0 / eos 1 / unk 2) + tokenizer_config.json.

    Deterministic (single-threaded training on :data:`TINY_CORPUS`). ``vocab_size`` is an upper bound
    (``hard_vocab_limit=False``). Returns the real vocabulary size (= ``len(tokenizer)``, 231 for the defaults),
    the ``vocab_size`` to give :func:`write_tiny_umt5`.
    """
    import sentencepiece as spm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TINY_CORPUS * 4), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1,
        seed_sentencepiece_size=100000, shuffle_input_sentence=False, minloglevel=2,
    )
    (directory / "spiece.model").write_bytes(buf.getvalue())
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512}, indent=2))
    return spm.SentencePieceProcessor(model_proto=buf.getvalue()).get_piece_size()


def write_tiny_umt5(path: str | Path, vocab_size: int, d_model: int = 32, layers: int = 2, heads: int = 2,
                    d_ff: int = 64, seed: int = 0, num_buckets: int = 32) -> Path:
    """Write a random Wan-format T5 encoder ``.pth`` (Wan key names, bf16 like the real file)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    def norm_w() -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(d_model, generator=g)).to(torch.bfloat16)

    sd: dict[str, torch.Tensor] = {"token_embedding.weight": rnd(vocab_size, d_model, std=1.0)}
    s = d_model ** -0.5
    for i in range(layers):
        p = f"blocks.{i}."
        sd[p + "norm1.weight"] = norm_w()
        for n in "qkvo":
            sd[p + f"attn.{n}.weight"] = rnd(d_model, d_model, std=s)
        sd[p + "norm2.weight"] = norm_w()
        sd[p + "ffn.gate.0.weight"] = rnd(d_ff, d_model, std=s)
        sd[p + "ffn.fc1.weight"] = rnd(d_ff, d_model, std=s)
        sd[p + "ffn.fc2.weight"] = rnd(d_model, d_ff, std=d_ff ** -0.5)
        sd[p + "pos_embedding.embedding.weight"] = rnd(num_buckets, heads, std=1.0)
    sd["norm.weight"] = norm_w()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


def write_tiny_clip(path: str | Path, width: int = 160, layers: int = 3, mlp: int = 320, patch: int = 14,
                    image_size: int = 224, seed: int = 0) -> Path:
    """Write a random Wan-format CLIP ``.pth``: ``visual.*`` + a few tiny ``textual.*`` keys + ``log_scale``."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def ln(prefix: str, dim: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": (1 + rnd(dim, std=0.1)), f"{prefix}.bias": rnd(dim, std=0.1)}

    n = (image_size // patch) ** 2 + 1
    sd: dict[str, torch.Tensor] = {"log_scale": torch.tensor(math.log(1 / 0.07)),
                             "visual.patch_embedding.weight": rnd(width, 3, patch, patch, std=0.05),
                             "visual.cls_embedding": rnd(1, 1, width, std=width ** -0.5),
                             "visual.pos_embedding": rnd(1, n, width, std=width ** -0.5),
                             **ln("visual.pre_norm", width)}
    for i in range(layers):
        p = f"visual.transformer.{i}."
        sd |= ln(p + "norm1", width)
        sd[p + "attn.to_qkv.weight"] = rnd(3 * width, width, std=width ** -0.5)
        sd[p + "attn.to_qkv.bias"] = rnd(3 * width, std=0.02)
        sd[p + "attn.proj.weight"] = rnd(width, width, std=width ** -0.5)
        sd[p + "attn.proj.bias"] = rnd(width)
        sd |= ln(p + "norm2", width)
        sd[p + "mlp.0.weight"] = rnd(mlp, width, std=width ** -0.5)
        sd[p + "mlp.0.bias"] = rnd(mlp)
        sd[p + "mlp.2.weight"] = rnd(width, mlp, std=mlp ** -0.5)
        sd[p + "mlp.2.bias"] = rnd(width)
    sd |= ln("visual.post_norm", width)
    sd["visual.head"] = rnd(width, 16, std=width ** -0.5)
    # text tower stand-ins (real: XLM-R large, 24 blocks); present only so loading exercises the drop rule
    sd |= {"textual.token_embedding.weight": rnd(32, 16), "textual.type_embedding.weight": rnd(1, 16),
           "textual.pos_embedding.weight": rnd(18, 16), **ln("textual.norm", 16),
           "textual.blocks.0.attn.q.weight": rnd(16, 16), "textual.head.0.weight": rnd(16, 16)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


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
