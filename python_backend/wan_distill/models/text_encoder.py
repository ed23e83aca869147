"""UMT5-XXL text encoder (Wan2.1 ``models_t5_umt5-xxl-enc-bf16.pth``) served through transformers' ``UMT5EncoderModel``.

Wan's ``T5Encoder`` and HF's ``UMT5EncoderModel`` are the same network (pre-norm RMS blocks, per-layer bidirectional
relative position bias, no 1/sqrt(d) score scaling, gated GELU-tanh FFN), so loading is a pure key rename:

    token_embedding.weight                      -> shared.weight  (tied to encoder.embed_tokens.weight)
    blocks.{i}.norm1.weight                     -> encoder.block.{i}.layer.0.layer_norm.weight
    blocks.{i}.attn.{q,k,v,o}.weight            -> encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight
    blocks.{i}.pos_embedding.embedding.weight   -> encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight
    blocks.{i}.norm2.weight                     -> encoder.block.{i}.layer.1.layer_norm.weight
    blocks.{i}.ffn.gate.0.weight                -> encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight   (GELU branch)
    blocks.{i}.ffn.fc1.weight                   -> encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight   (linear branch)
    blocks.{i}.ffn.fc2.weight                   -> encoder.block.{i}.layer.1.DenseReluDense.wo.weight
    norm.weight                                 -> encoder.final_layer_norm.weight

Text pipeline (Wan ``HuggingfaceTokenizer(clean='whitespace')`` + ``T5EncoderModel.__call__``): clean, tokenize to
``text_len`` with padding/truncation and EOS, run with the mask, trim every output to its true length (incl. EOS).
"""
from __future__ import annotations

import html
import logging
import re
from pathlib import Path

import torch
from torch import Tensor

from ..errors import key_mismatch_error

log = logging.getLogger(__name__)

EMBED_KEY = "shared.weight"
TIED_KEY = "encoder.embed_tokens.weight"

# ------------------------------------------------------------------------------------------------
# Key mapping
# ------------------------------------------------------------------------------------------------
# Per-block renames: Wan suffix after ``blocks.{i}.`` -> HF suffix after ``encoder.block.{i}.``.
BLOCK_RENAMES: dict[str, str] = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
TOP_RENAMES: dict[str, str] = {"token_embedding.weight": EMBED_KEY, "norm.weight": "encoder.final_layer_norm.weight"}

_WAN_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")
_BLOCK_INVERSE = {v: k for k, v in BLOCK_RENAMES.items()}
_TOP_INVERSE = {v: k for k, v in TOP_RENAMES.items()}


def wan_t5_key_to_hf(key: str) -> str | None:
    """One Wan T5 key -> its ``UMT5EncoderModel`` key, or None if the key is not part of the encoder."""
    if key in TOP_RENAMES:
        return TOP_RENAMES[key]
    m = _WAN_BLOCK.match(key)
    if m and m.group(2) in BLOCK_RENAMES:
        return f"encoder.block.{m.group(1)}.{BLOCK_RENAMES[m.group(2)]}"
    return None


def hf_t5_key_to_wan(key: str) -> str | None:
    """Inverse of :func:`wan_t5_key_to_hf`; the tied ``encoder.embed_tokens.weight`` maps to None (it is ``shared``)."""
    if key in _TOP_INVERSE:
        return _TOP_INVERSE[key]
    m = _HF_BLOCK.match(key)
    if m and m.group(2) in _BLOCK_INVERSE:
        return f"blocks.{m.group(1)}.{_BLOCK_INVERSE[m.group(2)]}"
    return None


def _rename(sd: dict[str, Tensor], fn, what: str, skip: tuple[str, ...] = ()) -> dict[str, Tensor]:
    out, unknown = {}, []
    for k, v in sd.items():
        if k in skip:
            continue
        new = fn(k)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise key_mismatch_error(what, ["<state dict>"], [], unknown)
    return out


def wan_t5_to_hf(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Wan T5 state dict -> ``UMT5EncoderModel`` state dict (adds the tied ``encoder.embed_tokens.weight``)."""
    out = _rename(sd, wan_t5_key_to_hf, "UMT5 (Wan -> HF)")
    if EMBED_KEY in out:
        out[TIED_KEY] = out[EMBED_KEY]
    return out


def hf_t5_to_wan(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """``UMT5EncoderModel`` state dict -> Wan T5 state dict (the tied embedding copy is dropped)."""
    return _rename(sd, hf_t5_key_to_wan, "UMT5 (HF -> Wan)", skip=(TIED_KEY,))


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
def _umt5_config(vocab_size: int, d_model: int, d_kv: int, d_ff: int, num_heads: int, num_layers: int,
                 num_buckets: int = 32):
    from transformers import UMT5Config

    return UMT5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_heads=num_heads, num_layers=num_layers,
        num_decoder_layers=num_layers, relative_attention_num_buckets=num_buckets, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6, scalable_attention=True,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


def umt5_xxl_config():
    """``google/umt5-xxl`` encoder config (Wan ``umt5_xxl``): 24 layers, d_model 4096, 64 heads x 64, d_ff 10240."""
    return _umt5_config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24)


def umt5_config_from_wan(sd: dict[str, Tensor], source: str | Path = "<state dict>"):
    """Infer a ``UMT5Config`` from a Wan-format state dict's shapes (real or tiny files)."""
    need = ["token_embedding.weight", "blocks.0.attn.q.weight", "blocks.0.ffn.fc1.weight",
            "blocks.0.pos_embedding.embedding.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise key_mismatch_error("UMT5 encoder", [source], missing, [],
                                 hint="not a Wan T5 encoder file (cannot infer its config)")
    vocab, d_model = sd["token_embedding.weight"].shape
    num_buckets, num_heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
    dim_attn = sd["blocks.0.attn.q.weight"].shape[0]
    layers = 1 + max(int(m.group(1)) for k in sd if (m := _WAN_BLOCK.match(k)))
    return _umt5_config(vocab_size=vocab, d_model=d_model, d_kv=dim_attn // num_heads,
                        d_ff=sd["blocks.0.ffn.fc1.weight"].shape[0], num_heads=num_heads, num_layers=layers,
                        num_buckets=num_buckets)


# ------------------------------------------------------------------------------------------------
# Text pipeline
# ------------------------------------------------------------------------------------------------
def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'``: ftfy fix, unescape HTML twice, collapse whitespace runs, strip."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class WanTextEncoder:
    """Prompts -> list of UMT5 embeddings ``[L_i, d_model]`` float32 on CPU (L_i = true token count incl. EOS)."""

    def __init__(self, encoder, tokenizer, text_len: int = 512):
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.text_len = text_len

    @property
    def device(self) -> torch.device:
        return self.encoder.shared.weight.device

    @property
    def dim(self) -> int:
        return self.encoder.config.d_model

    def tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Clean + tokenize -> ids, mask ``[B, text_len]`` (int64); warns for prompts cut at ``text_len``."""
        texts = [clean_prompt(p) for p in prompts]
        full = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        for i, ids in enumerate(full):
            if len(ids) > self.text_len:
                log.warning("prompt %d has %d tokens; truncated to text_len=%d (%d tokens dropped)",
                            i, len(ids), self.text_len, len(ids) - self.text_len)
        enc = self.tokenizer(texts, return_tensors="pt", padding="max_length", truncation=True,
                             max_length=self.text_len, add_special_tokens=True)
        return enc["input_ids"], enc["attention_mask"]

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> list[Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        ids, mask = self.tokenize(list(prompts))
        h = self.encoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        h = h.float().cpu()                                            # [B, text_len, d_model]
        return [u[:n] for u, n in zip(h, mask.gt(0).sum(1).tolist())]

    __call__ = encode
