"""CLIP ViT-H/14 image encoder: key mapping at real size, numerics vs independent Wan math, drop rule, load errors."""
from __future__ import annotations

import pytest
import torch

from reference_encoders import clip_visual_reference
from wan_distill.errors import CheckpointError
from wan_distill.loaders.image_encoder import load_clip_vision, load_image_encoder
from wan_distill.loaders.layout import CLIP_FILE
from wan_distill.models.image_encoder import (WanImageEncoder, clip_vision_config_from_wan, vit_h_14_config,
                                              wan_clip_to_hf)
from wan_distill.tiny import write_tiny_clip


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / CLIP_FILE, width=160, layers=3, mlp=320, seed=0)


@pytest.fixture(scope="module")
def encoder(tiny_file):
    return load_image_encoder(tiny_file.parent)


def wan_clip_real_visual_keys() -> dict[str, tuple[int, ...]]:
    """visual.* keys of the real CLIP file, written out from the released file's key list."""
    W = 1280
    keys = {"visual.patch_embedding.weight": (W, 3, 14, 14), "visual.cls_embedding": (1, 1, W),
            "visual.pos_embedding": (1, 257, W), "visual.pre_norm.weight": (W,), "visual.pre_norm.bias": (W,),
            "visual.post_norm.weight": (W,), "visual.post_norm.bias": (W,), "visual.head": (W, 1024)}
    for i in range(32):
        p = f"visual.transformer.{i}."
        keys |= {p + "norm1.weight": (W,), p + "norm1.bias": (W,), p + "norm2.weight": (W,), p + "norm2.bias": (W,),
                 p + "attn.to_qkv.weight": (3 * W, W), p + "attn.to_qkv.bias": (3 * W,),
                 p + "attn.proj.weight": (W, W), p + "attn.proj.bias": (W,),
                 p + "mlp.0.weight": (4 * W, W), p + "mlp.0.bias": (4 * W,),
                 p + "mlp.2.weight": (W, 4 * W), p + "mlp.2.bias": (W,)}
    return keys


def test_real_size_mapping_covers_hf_vit_h_14():
    from transformers import CLIPVisionModel

    cfg = vit_h_14_config()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size, cfg.patch_size,
            cfg.image_size, cfg.hidden_act, cfg.layer_norm_eps) == (1280, 32, 16, 5120, 14, 224, "gelu", 1e-5)
    with torch.device("meta"):
        hf = CLIPVisionModel(cfg)
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    wan = {k: torch.empty(s, device="meta") for k, s in wan_clip_real_visual_keys().items()}
    wan |= {"log_scale": torch.empty((), device="meta"),
            "textual.token_embedding.weight": torch.empty(250002, 1024, device="meta"),
            "textual.blocks.23.ffn.2.weight": torch.empty(1024, 4096, device="meta")}
    mapped, unknown = wan_clip_to_hf(wan)
    assert unknown == []
    assert {k: tuple(v.shape) for k, v in mapped.items()} == hf_shapes
    inferred = clip_vision_config_from_wan(wan)
    for f in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
              "image_size", "hidden_act", "layer_norm_eps"):
        assert getattr(inferred, f) == getattr(cfg, f), f


def test_qkv_is_split_in_thirds_q_k_v():
    W = 4
    qkv = torch.arange(3 * W * W, dtype=torch.float32).view(3 * W, W)
    bias = torch.arange(3 * W, dtype=torch.float32)
    mapped, _ = wan_clip_to_hf({"visual.transformer.5.attn.to_qkv.weight": qkv,
                                "visual.transformer.5.attn.to_qkv.bias": bias})
    for j, n in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(mapped[f"encoder.layers.5.self_attn.{n}.weight"], qkv[j * W:(j + 1) * W])
        assert torch.equal(mapped[f"encoder.layers.5.self_attn.{n}.bias"], bias[j * W:(j + 1) * W])


@pytest.mark.parametrize("hw", [(100, 180), (224, 224), (300, 240)])
def test_encode_matches_wan_math_reference(tiny_file, encoder, hw):
    g = torch.Generator().manual_seed(hw[0])
    image = torch.rand(3, *hw, generator=g) * 2 - 1
    out = encoder.encode(image)
    assert out.shape == (257, 160) and out.dtype == torch.float32
    ref = clip_visual_reference(torch.load(tiny_file, weights_only=True), image)
    # fp32 end to end: bicubic resize in fp32 alone differs from fp64 by ~6e-5 (outputs are O(1..10))
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=3e-4)
    # the same mapped model run in fp64 equals the reference up to the final fp32 rounding of encode()
    out64 = WanImageEncoder(load_clip_vision(tiny_file, dtype=torch.float64)).encode(image.double())
    torch.testing.assert_close(out64.double(), ref, rtol=1e-6, atol=1e-6)


def test_output_is_penultimate_block(tiny_file, encoder):
    image = torch.rand(3, 64, 64) * 2 - 1
    x = encoder.preprocess(image)
    with torch.no_grad():
        hs = encoder.model(pixel_values=x, output_hidden_states=True).hidden_states
    assert len(hs) == 4                                                  # embeddings + 3 blocks
    out = encoder.encode(image)
    torch.testing.assert_close(out, hs[2][0])
    assert not torch.allclose(out, hs[3][0], atol=1e-3)


def test_tiny_file_layout(tiny_file):
    sd = torch.load(tiny_file, weights_only=True)
    assert "log_scale" in sd and "visual.head" in sd and any(k.startswith("textual.") for k in sd)
    assert sd["visual.cls_embedding"].shape == (1, 1, 160) and sd["visual.pos_embedding"].shape == (1, 257, 160)
    assert "visual.patch_embedding.bias" not in sd
    m = load_clip_vision(tiny_file)
    assert m.config.num_attention_heads == 2 and m.embeddings.patch_embedding.bias is None


def test_load_dtype(tiny_file):
    m = load_clip_vision(tiny_file, dtype=torch.float16)
    assert m.embeddings.patch_embedding.weight.dtype == torch.float16
    assert m.embeddings.position_ids.device.type == "cpu"


def test_unexpected_and_missing_keys_named(tiny_file, tmp_path):
    sd = torch.load(tiny_file, weights_only=True)
    del sd["visual.transformer.1.attn.to_qkv.weight"]
    sd["visual.transformer.1.attn.extra"] = torch.zeros(3)
    sd["something_else"] = torch.zeros(1)
    bad = tmp_path / "bad_clip.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError) as e:
        load_clip_vision(bad)
    msg = str(e.value)
    assert str(bad) in msg
    assert "visual.transformer.1.attn.to_qkv.weight" in msg
    assert "visual.transformer.1.attn.extra" in msg and "something_else" in msg
    assert "textual." not in msg.split("accepted extra keys")[0]          # dropped keys are not reported


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth"):
        load_clip_vision(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match=CLIP_FILE.replace(".", r"\.")):
        load_image_encoder(tmp_path)


def test_bad_image_shape(encoder):
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        encoder.encode(torch.zeros(1, 3, 32, 32))
