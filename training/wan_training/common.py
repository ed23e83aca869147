"""What every stage shares: the toy model sizes, the frozen text (and, for I2V, image) encoders, the caption
embeddings, the I2V first-frame conditioning, flow-matching noise levels on Wan's shifted schedule, and a batched DiT
call."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wan_distill.config import DiTConfig, RunConfig
from wan_distill.loaders.image_encoder import load_image_encoder
from wan_distill.loaders.layout import CLIP_FILE, T5_FILE, TOKENIZER_DIR
from wan_distill.loaders.text_encoder import load_text_encoder
from wan_distill.loaders.vae import load_vae_from_dir
from wan_distill.models.dit import WanDiT
from wan_distill.pipeline import ImageConditioner
from wan_distill.tiny import TinySpec, write_tiny_clip, write_tiny_tokenizer, write_tiny_umt5

from .data import CAPTIONS

SHIFT = 5.0
NULL_CAPTION = ""          # caption dropout / the CFG negative prompt


@dataclass(frozen=True)
class ToySpec:
    """Model sizes of the trained toy models (T2V and I2V: the same DiT sizes, I2V with 36 input channels and
    ``img_emb``). The text encoder is the project's tiny UMT5 (TinySpec), the I2V image encoder its tiny CLIP (257
    tokens of width 160), both frozen with their random weights."""

    dit_dim: int = 96
    dit_ffn: int = 256
    dit_heads: int = 2
    dit_layers: int = 3
    text_len: int = 32
    vae_dim: int = 8

    def dit_config(self, task: str = "t2v") -> DiTConfig:
        t5 = TinySpec()
        return DiTConfig(model_type=task, dim=self.dit_dim, ffn_dim=self.dit_ffn, freq_dim=256,
                         num_heads=self.dit_heads, num_layers=self.dit_layers, in_dim=36 if task == "i2v" else 16,
                         out_dim=16, text_len=self.text_len, text_dim=t5.t5_dim, image_dim=t5.clip_width)


def new_dit(spec: ToySpec, seed: int, task: str = "t2v") -> WanDiT:
    torch.manual_seed(seed)
    return WanDiT(spec.dit_config(task))


def write_text_encoder(root: Path) -> None:
    """The tiny UMT5 + tokenizer of ``wan_distill.tiny`` (same seeds), in the model root's file layout."""
    t5 = TinySpec()
    vocab = write_tiny_tokenizer(root / TOKENIZER_DIR)
    write_tiny_umt5(root / T5_FILE, vocab_size=vocab, d_model=t5.t5_dim, layers=t5.t5_layers, heads=t5.t5_heads,
                    d_ff=t5.t5_ffn, seed=1)


def write_image_encoder(root: Path) -> None:
    """The tiny CLIP of ``wan_distill.tiny``'s I2V root (same sizes and seed, random weights), in the root's layout."""
    t = TinySpec()
    write_tiny_clip(Path(root) / CLIP_FILE, width=t.clip_width, layers=t.clip_layers, mlp=t.clip_mlp, seed=3)


@dataclass(frozen=True)
class ImageConditioning:
    """I2V conditioning of a batch, exactly as the serving pipeline builds it (``wan_distill.pipeline.
    ImageConditioner``): ``clip_fea`` [B, 257, image_dim] CLIP tokens of the first frame; ``y`` [B, 20, t, h, w]
    = 4 mask channels (1 on latent frame 0) + the VAE latent of [first frame, zeros, ...]. Indexing selects rows."""

    clip_fea: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.clip_fea.shape[0]

    def __getitem__(self, idx) -> "ImageConditioning":
        return ImageConditioning(self.clip_fea[idx], self.y[idx])

    def repeat(self, times: int) -> "ImageConditioning":
        """The batch ``times`` times over (e.g. the conditional and unconditional CFG rows share the image)."""
        return ImageConditioning(torch.cat([self.clip_fea] * times), torch.cat([self.y] * times))


def image_conditioner(root: Path) -> ImageConditioner:
    """The serving pipeline's I2V conditioner on the root's CLIP and VAE (CPU, the policy's dtypes)."""
    return ImageConditioner(load_image_encoder(root, "cpu"), load_vae_from_dir(root, "cpu"), torch.device("cpu"),
                            RunConfig().max_image_pixels)


def condition_on_first_frames(conditioner: ImageConditioner, first_frames, num_frames: int) -> ImageConditioning:
    """uint8 pictures [H, W, 3] (the first frames of clips, as a client would send them) -> their conditioning for
    ``num_frames``-frame videos of the pictures' size (Wan's max_area = H * W keeps that size)."""
    conds = [conditioner(Image.fromarray(np.asarray(f, dtype=np.uint8)), f.shape[0] * f.shape[1], num_frames)
             for f in first_frames]
    return ImageConditioning(torch.stack([c.clip_fea for c in conds]), torch.stack([c.y for c in conds]))


class CaptionBank:
    """UMT5 embeddings of every caption (and the null caption), computed once with the project's text encoder.

    ``context(captions)`` -> [B, L, text_dim] zero-padded at the end, as the engine batches served requests."""

    def __init__(self, root: Path, text_len: int, captions=CAPTIONS):
        encoder = load_text_encoder(root, "cpu", text_len)
        names = list(captions) + [NULL_CAPTION]
        self.embeddings = dict(zip(names, encoder.encode(names)))
        longest = max(e.shape[0] for e in self.embeddings.values())
        if longest >= text_len:
            raise ValueError(f"a caption has {longest} tokens, text_len is {text_len}")

    def context(self, captions: list[str]) -> torch.Tensor:
        embs = [self.embeddings[c] for c in captions]
        longest = max(e.shape[0] for e in embs)
        return torch.stack([F.pad(e, (0, 0, 0, longest - e.shape[0])) for e in embs])


def shifted_sigma(u: torch.Tensor, shift: float = SHIFT) -> torch.Tensor:
    """Uniform u in [0, 1] -> Wan's shifted noise level ``shift u / (1 + (shift - 1) u)``."""
    return shift * u / (1 + (shift - 1) * u)


def sample_sigma(batch: int, gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """[batch] noise levels, u ~ U(lo, hi) mapped through the shift (training timesteps = 1000 sigma)."""
    return shifted_sigma(lo + (hi - lo) * torch.rand(batch, generator=gen))


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Flow-matching interpolation ``(1 - sigma) x0 + sigma noise`` (sigma [B])."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * noise


def flow(dit: WanDiT, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
         image: ImageConditioning | None = None) -> torch.Tensor:
    """The DiT's flow prediction (noise - x0) at noise level sigma [B] (timestep 1000 sigma); ``image`` [B] for
    an I2V DiT."""
    if image is None:
        return dit(x, sigma * 1000.0, context)
    return dit(x, sigma * 1000.0, context, clip_fea=image.clip_fea, y=image.y)


def x0_of(x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x - sigma.view(-1, *([1] * (x.ndim - 1))) * v


class EMA:
    """Exponential moving average of a module's parameters."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            self.shadow[k].lerp_(v.detach(), 1 - self.decay)

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict(self.shadow)
