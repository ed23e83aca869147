"""What every stage shares: the toy model sizes, the frozen text encoder and the caption embeddings, flow-matching
noise levels on Wan's shifted schedule, and a batched DiT call."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from wan_distill.config import DiTConfig
from wan_distill.loaders.layout import T5_FILE, TOKENIZER_DIR
from wan_distill.loaders.text_encoder import load_text_encoder
from wan_distill.models.dit import WanDiT
from wan_distill.tiny import TinySpec, write_tiny_tokenizer, write_tiny_umt5

from .data import CAPTIONS

SHIFT = 5.0
NULL_CAPTION = ""          # caption dropout / the CFG negative prompt


@dataclass(frozen=True)
class ToySpec:
    """Model sizes of the trained toy models (T2V). The text encoder is the project's tiny UMT5 (TinySpec),
    frozen with its random weights."""

    dit_dim: int = 96
    dit_ffn: int = 256
    dit_heads: int = 2
    dit_layers: int = 3
    text_len: int = 32
    vae_dim: int = 8

    def dit_config(self) -> DiTConfig:
        t5 = TinySpec()
        return DiTConfig(model_type="t2v", dim=self.dit_dim, ffn_dim=self.dit_ffn, freq_dim=256,
                         num_heads=self.dit_heads, num_layers=self.dit_layers, in_dim=16, out_dim=16,
                         text_len=self.text_len, text_dim=t5.t5_dim, image_dim=t5.clip_width)


def new_dit(spec: ToySpec, seed: int) -> WanDiT:
    torch.manual_seed(seed)
    return WanDiT(spec.dit_config())


def write_text_encoder(root: Path) -> None:
    """The tiny UMT5 + tokenizer of ``wan_distill.tiny`` (same seeds), in the model root's file layout."""
    t5 = TinySpec()
    vocab = write_tiny_tokenizer(root / TOKENIZER_DIR)
    write_tiny_umt5(root / T5_FILE, vocab_size=vocab, d_model=t5.t5_dim, layers=t5.t5_layers, heads=t5.t5_heads,
                    d_ff=t5.t5_ffn, seed=1)


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


def flow(dit: WanDiT, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The DiT's flow prediction (noise - x0) at noise level sigma [B] (timestep 1000 sigma)."""
    return dit(x, sigma * 1000.0, context)


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
