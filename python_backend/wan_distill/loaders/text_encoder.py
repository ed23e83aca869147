"""UMT5-XXL text encoder: Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (or an HF encoder folder) + the tokenizer."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError, key_mismatch_error
from ..models.text_encoder import TIED_KEY, WanTextEncoder, hf_t5_key_to_wan, umt5_config_from_wan, wan_t5_to_hf
from .files import assign_checked, load_state_dict_file
from .layout import T5_FILE, T5_HF_DIR, TOKENIZER_DIR
from .policy import weights_dtype

__all__ = ["load_umt5_encoder", "load_tokenizer", "load_text_encoder"]


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


def load_tokenizer(tokenizer_dir: str | Path):
    """Offline ``AutoTokenizer`` (never the hub)."""
    from transformers import AutoTokenizer

    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise CheckpointError(f"tokenizer directory not found: {tokenizer_dir} (expected the google/umt5-xxl "
                              "tokenizer files, e.g. spiece.model + tokenizer_config.json)")
    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def load_text_encoder(model_dir: str | Path, device: str | torch.device = "cpu", text_len: int = 512,
                      dtype: torch.dtype | None = None) -> WanTextEncoder:
    """``<model_dir>/umt5-xxl`` (HF dir) if present else ``<model_dir>/models_t5_umt5-xxl-enc-bf16.pth``;
    tokenizer from ``<model_dir>/google/umt5-xxl`` (local files only). ``dtype`` defaults to the device policy."""
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
    dtype = dtype or weights_dtype("text_encoder", device)
    return WanTextEncoder(load_umt5_encoder(src, device, dtype), load_tokenizer(tok_dir), text_len)
