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
import io
import json
import logging
import re
from pathlib import Path

import torch
from torch import Tensor

from wan_distill.errors import CheckpointError, key_mismatch_error
from wan_distill.loaders.files import assign_checked, load_state_dict_file

log = logging.getLogger(__name__)

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_HF_DIR = "umt5-xxl"
TOKENIZER_DIR = "google/umt5-xxl"
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
# Loading
# ------------------------------------------------------------------------------------------------
def load_umt5_encoder(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a UMT5 encoder as ``transformers.UMT5EncoderModel`` (eval mode).

    ``path``: a Wan ``.pth`` (``models_t5_umt5-xxl-enc-bf16.pth`` or a tiny file of the same layout), or an HF
    encoder directory (config.json + safetensors, local files only).
    """
    from transformers import UMT5EncoderModel

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"UMT5 encoder directory {path} has no config.json")
        model = UMT5EncoderModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        return model.to(device).eval()
    wan_sd = load_state_dict_file(path)
    cfg = umt5_config_from_wan(wan_sd, path)
    with torch.device("meta"):
        model = UMT5EncoderModel(cfg)
    expected = {hf_t5_key_to_wan(k) for k in model.state_dict() if k != TIED_KEY}
    if expected != wan_sd.keys():  # strict check under the file's own (Wan) key names
        raise key_mismatch_error("UMT5 encoder", [path], expected - wan_sd.keys(), wan_sd.keys() - expected)
    hf_sd = wan_t5_to_hf(wan_sd)
    del wan_sd
    assign_checked(model, hf_sd, [path], "UMT5 encoder", device, dtype)
    model.encoder.embed_tokens.weight = model.shared.weight  # re-tie after assign
    return model.eval()


# ------------------------------------------------------------------------------------------------
# Text pipeline
# ------------------------------------------------------------------------------------------------
def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'``: ftfy fix, unescape HTML twice, collapse whitespace runs, strip."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def load_tokenizer(tokenizer_dir: str | Path):
    """Offline ``AutoTokenizer`` (never the hub)."""
    from transformers import AutoTokenizer

    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise CheckpointError(f"tokenizer directory not found: {tokenizer_dir} (expected the google/umt5-xxl "
                              "tokenizer files, e.g. spiece.model + tokenizer_config.json)")
    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


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

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, text_len: int = 512) -> WanTextEncoder:
        """``<model_dir>/umt5-xxl`` (HF dir) if present else ``<model_dir>/models_t5_umt5-xxl-enc-bf16.pth``;
        tokenizer from ``<model_dir>/google/umt5-xxl`` (local files only)."""
        model_dir = Path(model_dir)
        hf_dir, pth, tok_dir = model_dir / T5_HF_DIR, model_dir / T5_FILE, model_dir / TOKENIZER_DIR
        missing = []
        if not (hf_dir / "config.json").is_file() and not pth.is_file():
            missing.append(f"text encoder weights ({pth} or an HF encoder dir {hf_dir})")
        if not tok_dir.is_dir():
            missing.append(f"tokenizer dir {tok_dir}")
        if missing:
            raise CheckpointError(f"{model_dir}: missing {' and '.join(missing)}")
        src = hf_dir if (hf_dir / "config.json").is_file() else pth
        return cls(load_umt5_encoder(src, device, dtype), load_tokenizer(tok_dir), text_len)


# ------------------------------------------------------------------------------------------------
# Tiny writers (for tests and the tiny-checkpoint command)
# ------------------------------------------------------------------------------------------------
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

    def rnd(*shape: int, std: float) -> Tensor:
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    def norm_w() -> Tensor:
        return (1.0 + 0.1 * torch.randn(d_model, generator=g)).to(torch.bfloat16)

    sd: dict[str, Tensor] = {"token_embedding.weight": rnd(vocab_size, d_model, std=1.0)}
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
