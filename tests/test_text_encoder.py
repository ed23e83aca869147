"""UMT5 text encoder: key table at real size, numerics vs independent Wan math, tokenizer pipeline, load errors."""
from __future__ import annotations

import logging

import pytest
import sentencepiece as spm
import torch

from reference_encoders import t5_encoder_reference, t5_relative_bucket
from wan_distill.errors import CheckpointError
from wan_distill.loaders.layout import T5_FILE, TOKENIZER_DIR
from wan_distill.loaders.text_encoder import load_text_encoder, load_tokenizer, load_umt5_encoder
from wan_distill.models.text_encoder import (clean_prompt, hf_t5_to_wan, umt5_config_from_wan, umt5_xxl_config,
                                             wan_t5_to_hf)
from wan_distill.tiny import write_tiny_tokenizer, write_tiny_umt5

PROMPTS = ["a red fox runs through the snow", "一只狐狸在雪地里奔跑，夕阳下的海边", ""]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("t5")
    vocab = write_tiny_tokenizer(d / TOKENIZER_DIR)
    assert vocab == len(load_tokenizer(d / TOKENIZER_DIR)) > 100
    write_tiny_umt5(d / T5_FILE, vocab_size=vocab, d_model=32, layers=2, heads=2, d_ff=64, seed=0)
    return d


@pytest.fixture(scope="module")
def encoder(model_dir):
    return load_text_encoder(model_dir, text_len=24)


def sp_ids(model_dir, text):
    """Independent tokenization: raw sentencepiece + EOS (id 1)."""
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / TOKENIZER_DIR / "spiece.model"))
    return sp.encode(text) + [1]


# ---------------------------------------------------------------- real-size key names
def wan_t5_real_keys() -> dict[str, tuple[int, ...]]:
    """Key list of models_t5_umt5-xxl-enc-bf16.pth, written out from the released file's key list."""
    keys = {"token_embedding.weight": (256384, 4096), "norm.weight": (4096,)}
    for i in range(24):
        p = f"blocks.{i}."
        keys |= {p + "norm1.weight": (4096,), p + "norm2.weight": (4096,),
                 p + "ffn.gate.0.weight": (10240, 4096), p + "ffn.fc1.weight": (10240, 4096),
                 p + "ffn.fc2.weight": (4096, 10240), p + "pos_embedding.embedding.weight": (32, 64)}
        keys |= {p + f"attn.{n}.weight": (4096, 4096) for n in "qkvo"}
    return keys


def test_real_size_key_table_matches_hf_umt5_xxl():
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        hf = UMT5EncoderModel(umt5_xxl_config())
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    wan = {k: torch.empty(s, device="meta") for k, s in wan_t5_real_keys().items()}
    mapped = wan_t5_to_hf(wan)
    assert set(mapped) == set(hf_shapes)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == hf_shapes
    back = hf_t5_to_wan(hf.state_dict())
    assert {k: tuple(v.shape) for k, v in back.items()} == wan_t5_real_keys()
    # the shape-inferred config of the real layout is the umt5-xxl config
    inferred, xxl = umt5_config_from_wan(wan), umt5_xxl_config()
    for f in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers", "relative_attention_num_buckets",
              "relative_attention_max_distance", "dense_act_fn", "is_gated_act", "layer_norm_epsilon"):
        assert getattr(inferred, f) == getattr(xxl, f), f
    assert (xxl.dense_act_fn, xxl.is_gated_act, xxl.dropout_rate) == ("gelu_new", True, 0.0)


def test_unknown_key_in_table_functions_raises():
    with pytest.raises(CheckpointError, match="blocks.0.attn.bogus"):
        wan_t5_to_hf({"blocks.0.attn.bogus": torch.zeros(1)})


# ---------------------------------------------------------------- numerics
def test_reference_bucket_hand_values():
    rel = torch.tensor([0, 1, -1, 7, -7, 8, -8, -16, 16, -128, 200, -1000])
    # hand-derived: exact below 8; 8 + int(log(r/8)/log(16) * 8), capped at 15; +16 for positive rel
    assert t5_relative_bucket(rel).tolist() == [0, 17, 1, 23, 7, 24, 8, 10, 26, 15, 31, 15]


def test_encoder_matches_wan_math_reference(model_dir, encoder):
    wan_sd = torch.load(model_dir / T5_FILE, weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in wan_sd.values())
    ids, mask = encoder.tokenize(PROMPTS)
    ref = t5_encoder_reference(wan_sd, ids, mask)                          # [B, L, D] float64
    out = encoder.encode(PROMPTS)
    assert len(out) == len(PROMPTS)
    for i, o in enumerate(out):
        n = int(mask[i].sum())
        assert o.shape == (n, 32) and o.dtype == torch.float32 and o.device.type == "cpu"
        torch.testing.assert_close(o.double(), ref[i, :n], rtol=1e-5, atol=1e-5)
    # padding must not leak: each prompt alone gives the same result as inside the batch
    for p, o in zip(PROMPTS, out):
        torch.testing.assert_close(encoder.encode([p])[0], o, rtol=1e-5, atol=1e-5)


def test_hf_directory_loads_same_model(model_dir, encoder, tmp_path):
    encoder.encoder.save_pretrained(tmp_path / "umt5-xxl")
    hf = load_umt5_encoder(tmp_path / "umt5-xxl")
    wan = load_umt5_encoder(model_dir / T5_FILE)
    ids, mask = encoder.tokenize(PROMPTS[:2])
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        b = wan(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a, b)
    assert wan.shared.weight is wan.encoder.embed_tokens.weight
    # load_text_encoder prefers <dir>/umt5-xxl (HF format) when there is no .pth
    import shutil
    shutil.copytree(model_dir / TOKENIZER_DIR, tmp_path / TOKENIZER_DIR)
    enc = load_text_encoder(tmp_path, text_len=24)
    for x, y in zip(enc.encode(PROMPTS), encoder.encode(PROMPTS)):
        torch.testing.assert_close(x, y)


def test_load_in_bf16_keeps_file_values(model_dir):
    wan_sd = torch.load(model_dir / T5_FILE, weights_only=True)
    m = load_umt5_encoder(model_dir / T5_FILE, dtype=torch.bfloat16)
    assert m.shared.weight.dtype == torch.bfloat16
    assert torch.equal(m.encoder.block[1].layer[1].DenseReluDense.wi_0.weight, wan_sd["blocks.1.ffn.gate.0.weight"])
    assert torch.equal(m.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight,
                       wan_sd["blocks.0.pos_embedding.embedding.weight"])


# ---------------------------------------------------------------- tokenizer pipeline
def test_tokenizer_offline_matches_sentencepiece(model_dir, encoder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer(model_dir / TOKENIZER_DIR)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids, mask = encoder.tokenize(PROMPTS)
    assert ids.shape == mask.shape == (3, 24)
    for i, p in enumerate(PROMPTS):
        ref = sp_ids(model_dir, p)
        assert ids[i, : len(ref)].tolist() == ref
        assert mask[i].sum() == len(ref) and ids[i, len(ref):].eq(0).all()


def test_tiny_tokenizer_is_deterministic(tmp_path):
    assert write_tiny_tokenizer(tmp_path / "a") == write_tiny_tokenizer(tmp_path / "b")
    assert (tmp_path / "a" / "spiece.model").read_bytes() == (tmp_path / "b" / "spiece.model").read_bytes()


def test_truncation_warns_with_dropped_count(model_dir, encoder, caplog):
    long = "a red fox runs through the snow at dawn " * 6
    n_full = len(sp_ids(model_dir, clean_prompt(long)))
    assert n_full > 24
    with caplog.at_level(logging.WARNING, logger="wan_distill.models.text_encoder"):
        out = encoder.encode([long, "a cat"])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{n_full - 24} tokens dropped" in warnings[0].getMessage()
    assert out[0].shape[0] == 24 and out[1].shape[0] == len(sp_ids(model_dir, "a cat"))
    ids, _ = encoder.tokenize([long])
    assert ids[0, -1] == 1                                                  # EOS kept after truncation


def test_empty_prompt_is_eos_only(encoder):
    caplog_free = encoder.encode(["", "   "])
    assert [o.shape for o in caplog_free] == [(1, 32), (1, 32)]
    torch.testing.assert_close(caplog_free[0], caplog_free[1])


@pytest.mark.parametrize("raw, clean", [
    ("a &amp;amp; b", "a & b"),
    ("<i> &amp;amp; </i>", "<i> & </i>"),              # ftfy leaves HTML-looking text alone; html.unescape twice
    ("&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b>"),
    ("  hello \n\t  world  ", "hello world"),
    ("line1\r\n\r\nline2\u3000end", "line1 line2 end"),
    ("", ""),
    ("doesnâ€™t", "doesn't"),                         # ftfy repairs mojibake (and uncurls the quote)
])
def test_clean_prompt(raw, clean):
    assert clean_prompt(raw) == clean


def test_clean_prompt_is_applied_before_tokenizing(encoder):
    a, b = encoder.encode(["  a   red&amp;fox "]), encoder.encode(["a red&fox"])
    torch.testing.assert_close(a[0], b[0])


# ---------------------------------------------------------------- load errors
def test_load_errors_name_file_and_keys(model_dir, tmp_path):
    sd = torch.load(model_dir / T5_FILE, weights_only=True)
    del sd["blocks.1.norm2.weight"]
    sd["blocks.1.attn.extra.weight"] = torch.zeros(2)
    bad = tmp_path / "bad_t5.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError) as e:
        load_umt5_encoder(bad)
    msg = str(e.value)
    assert str(bad) in msg and "blocks.1.norm2.weight" in msg and "blocks.1.attn.extra.weight" in msg
    assert "missing 1" in msg and "unexpected 1" in msg


def test_shape_mismatch_is_reported(model_dir, tmp_path):
    sd = torch.load(model_dir / T5_FILE, weights_only=True)
    sd["blocks.0.ffn.fc2.weight"] = torch.zeros(32, 63, dtype=torch.bfloat16)
    bad = tmp_path / "shape.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match=r"shape\.pth.*DenseReluDense\.wo\.weight \(32, 63\)"):
        load_umt5_encoder(bad)


def test_missing_files_are_named(tmp_path, model_dir):
    with pytest.raises(CheckpointError, match="nope.pth"):
        load_umt5_encoder(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth: refused to load: not a weights-only checkpoint"):
        load_umt5_encoder(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match=r"models_t5_umt5-xxl-enc-bf16\.pth.*tokenizer dir"):
        load_text_encoder(tmp_path)
    (tmp_path / T5_FILE).write_bytes((model_dir / T5_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="google/umt5-xxl"):
        load_text_encoder(tmp_path)
