"""WanDiT: checkpoint key names/shapes, parameter counts, numerics vs diffusers and hand-derived values."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wan_distill.config import DiTConfig
from wan_distill.models.dit import WanDiT, rope_apply, rope_dims, rope_freqs, sinusoidal_embedding_1d


# ----------------------------------------------------------------------------------------------
# Key names and shapes, written from the reference table (lightx2v-distill-and-wan-dit.md §5.2)
# ----------------------------------------------------------------------------------------------
def reference_shapes(D: int, Fd: int, in_dim: int, layers: int, i2v: bool,
                     text_dim: int = 4096, image_dim: int = 1280) -> dict[str, tuple[int, ...]]:
    s = {
        "patch_embedding.weight": (D, in_dim, 1, 2, 2), "patch_embedding.bias": (D,),
        "text_embedding.0.weight": (D, text_dim), "text_embedding.0.bias": (D,),
        "text_embedding.2.weight": (D, D), "text_embedding.2.bias": (D,),
        "time_embedding.0.weight": (D, 256), "time_embedding.0.bias": (D,),
        "time_embedding.2.weight": (D, D), "time_embedding.2.bias": (D,),
        "time_projection.1.weight": (6 * D, D), "time_projection.1.bias": (6 * D,),
        "head.head.weight": (64, D), "head.head.bias": (64,), "head.modulation": (1, 2, D),
    }
    if i2v:
        s |= {"img_emb.proj.0.weight": (image_dim,), "img_emb.proj.0.bias": (image_dim,),
              "img_emb.proj.1.weight": (image_dim, image_dim), "img_emb.proj.1.bias": (image_dim,),
              "img_emb.proj.3.weight": (D, image_dim), "img_emb.proj.3.bias": (D,),
              "img_emb.proj.4.weight": (D,), "img_emb.proj.4.bias": (D,)}
    for i in range(layers):
        b = f"blocks.{i}."
        s[b + "modulation"] = (1, 6, D)
        for attn in ("self_attn", "cross_attn"):
            for lin in ("q", "k", "v", "o"):
                s[f"{b}{attn}.{lin}.weight"] = (D, D)
                s[f"{b}{attn}.{lin}.bias"] = (D,)
            s[f"{b}{attn}.norm_q.weight"] = (D,)
            s[f"{b}{attn}.norm_k.weight"] = (D,)
        if i2v:
            for lin in ("k_img", "v_img"):
                s[f"{b}cross_attn.{lin}.weight"] = (D, D)
                s[f"{b}cross_attn.{lin}.bias"] = (D,)
            s[f"{b}cross_attn.norm_k_img.weight"] = (D,)
        s[b + "norm3.weight"] = (D,)
        s[b + "norm3.bias"] = (D,)
        s[b + "ffn.0.weight"] = (Fd, D)
        s[b + "ffn.0.bias"] = (Fd,)
        s[b + "ffn.2.weight"] = (D, Fd)
        s[b + "ffn.2.bias"] = (D,)
    return s


@pytest.mark.parametrize("preset, ref, billions", [
    (DiTConfig.t2v_1_3b, dict(D=1536, Fd=8960, in_dim=16, layers=30, i2v=False), 1.419),
    (DiTConfig.t2v_14b, dict(D=5120, Fd=13824, in_dim=16, layers=40, i2v=False), 14.288),
    (DiTConfig.i2v_14b, dict(D=5120, Fd=13824, in_dim=36, layers=40, i2v=True), 16.395),
])
def test_released_models_keys_shapes_and_counts(preset, ref, billions):
    with torch.device("meta"):
        model = WanDiT(preset())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = reference_shapes(**ref)
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    assert got == expected
    assert all(p.is_meta for p in model.parameters())
    assert list(model.buffers()) == []
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e9, 3) == billions


# ----------------------------------------------------------------------------------------------
# Hand-derived values
# ----------------------------------------------------------------------------------------------
def test_sinusoidal_embedding_cos_first_at_937_5():
    emb = sinusoidal_embedding_1d(8, torch.tensor([937.5, 0.0]))
    assert emb.dtype == torch.float64 and emb.shape == (2, 8)
    freqs = [1.0, 0.1, 0.01, 0.001]  # 10000 ** (-j / 4), j = 0..3 (denominator half = 4)
    expected = [math.cos(937.5 * f) for f in freqs] + [math.sin(937.5 * f) for f in freqs]
    assert emb[0].tolist() == pytest.approx(expected, abs=1e-12)
    assert emb[1].tolist() == [1.0] * 4 + [0.0] * 4
    # 256-dim: element 1 uses 10000 ** (-1/128)
    e256 = sinusoidal_embedding_1d(256, torch.tensor([937.5]))
    assert e256[0, 1].item() == pytest.approx(math.cos(937.5 * 10000 ** (-1 / 128)), abs=1e-12)
    assert e256[0, 128 + 5].item() == pytest.approx(math.sin(937.5 * 10000 ** (-5 / 128)), abs=1e-12)


def test_rope_dim_split():
    assert rope_dims(128) == (44, 42, 42)
    assert rope_dims(32) == (12, 10, 10)
    assert rope_freqs(128, 2, 3, 4).shape == (24, 1, 64)


def test_rope_rotates_interleaved_pairs_by_axis_position():
    # head_dim 12 -> (t, h, w) dims (4, 4, 4) -> complex pairs: 0,1 time; 2,3 height; 4,5 width.
    # axis frequencies for a 4-dim axis: 10000 ** (-0/4) = 1 and 10000 ** (-2/4) = 0.01.
    f, h, w = 2, 3, 4
    freqs = rope_freqs(12, f, h, w)
    x = torch.zeros(1, f * h * w, 1, 12)
    x[..., 0::2] = 1.0  # every pair = 1 + 0i, so the output pair is (cos a, sin a)
    out = rope_apply(x, freqs)
    token = 1 * h * w + 2 * w + 3  # frame 1, row 2, col 3
    angles = [1 * 1.0, 1 * 0.01, 2 * 1.0, 2 * 0.01, 3 * 1.0, 3 * 0.01]
    expected = [v for a in angles for v in (math.cos(a), math.sin(a))]
    assert out[0, token, 0].tolist() == pytest.approx(expected, abs=1e-6)
    # token 0 is not rotated
    assert out[0, 0, 0].tolist() == pytest.approx([1.0, 0.0] * 6, abs=0)


# ----------------------------------------------------------------------------------------------
# Numerics vs diffusers' WanTransformer3DModel (weights converted by diffusers' own converter)
# ----------------------------------------------------------------------------------------------
def _tiny(model_type: str) -> DiTConfig:
    # text_len stays 512: diffusers hard-codes 512 text tokens when it splits the i2v context.
    return DiTConfig(model_type, dim=64, ffn_dim=128, freq_dim=64, num_heads=2, num_layers=2,
                     in_dim=36 if model_type == "i2v" else 16, out_dim=16, text_len=512,
                     text_dim=32, image_dim=48)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.ndim >= 2 and not name.endswith("modulation"):
                p.copy_(r * p[0].numel() ** -0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * r)  # norms must not be identities, or swaps would go unseen
            else:
                p.copy_(0.3 * r)


def _diffusers_reference(cfg: DiTConfig, sd: dict[str, torch.Tensor]):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    ref = WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=cfg.eps, image_dim=cfg.image_dim if cfg.is_i2v else None,
        added_kv_proj_dim=cfg.dim if cfg.is_i2v else None)
    ref.load_state_dict(convert_wan_transformer_to_diffusers({k: v.clone() for k, v in sd.items()}), strict=True)
    return ref.eval()


@pytest.mark.parametrize("model_type", ["t2v", "i2v"])
def test_matches_diffusers(model_type):
    torch.manual_seed(0)
    cfg = _tiny(model_type)
    model = WanDiT(cfg).eval()
    _randomize(model, seed=1)
    ref = _diffusers_reference(cfg, model.state_dict())

    B, Fl, H, W = 2, 3, 4, 6
    x = torch.randn(B, 16, Fl, H, W)
    context = torch.randn(B, 7, cfg.text_dim)
    clip_fea = torch.randn(B, 257, cfg.image_dim) if cfg.is_i2v else None
    y = torch.randn(B, 20, Fl, H, W) if cfg.is_i2v else None
    ref_x = torch.cat([x, y], dim=1) if cfg.is_i2v else x
    ref_ctx = F.pad(context, (0, 0, 0, cfg.text_len - context.shape[1]))  # zero-pad to text_len
    with torch.no_grad():
        # small t: diffusers' fp32 sinusoid is exact enough for a tight comparison
        for t, tol in ((torch.tensor([0.5, 0.25]), 2e-5), (torch.tensor([937.5, 833.3333]), 2e-4)):
            out = model(x, t, context, clip_fea, y)
            expected = ref(ref_x, t, ref_ctx, clip_fea, return_dict=False)[0]
            assert out.shape == (B, 16, Fl, H, W) and out.dtype == torch.float32
            assert expected.abs().max() > 1.0
            torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
        # batch element 1 does not depend on element 0
        single = model(x[1:], torch.tensor([833.3333]), context[1:],
                       None if clip_fea is None else clip_fea[1:], None if y is None else y[1:])
        torch.testing.assert_close(single, out[1:], atol=1e-5, rtol=1e-5)


def test_context_padding_and_input_checks():
    cfg = DiTConfig("t2v", dim=32, ffn_dim=64, freq_dim=32, num_heads=2, num_layers=1, text_len=8, text_dim=16)
    model = WanDiT(cfg).eval()
    _randomize(model, seed=2)
    x, t, ctx = torch.randn(1, 16, 1, 2, 2), torch.tensor([500.0]), torch.randn(1, 5, 16)
    with torch.no_grad():
        out = model(x, t, ctx)
        torch.testing.assert_close(model(x, t, F.pad(ctx, (0, 0, 0, 3))), out, atol=0, rtol=0)
        assert not torch.allclose(model(x, t, ctx[:, :4]), out)  # every real token matters
        with pytest.raises(ValueError, match="context"):
            model(x, t, torch.randn(1, 9, 16))  # longer than text_len
        with pytest.raises(ValueError, match="patch_size"):
            model(torch.randn(1, 16, 1, 3, 2), t, ctx)  # odd height
    # the RoPE cache never enters the state dict
    assert set(model.state_dict()) == set(reference_shapes(32, 64, 16, 1, False, text_dim=16))
    assert len(model._rope_cache) == 1


def test_i2v_needs_clip_and_y():
    cfg = DiTConfig("i2v", dim=32, ffn_dim=64, freq_dim=32, num_heads=2, num_layers=1, in_dim=36,
                    text_len=8, text_dim=16, image_dim=24)
    model = WanDiT(cfg).eval()
    x, t, ctx = torch.randn(1, 16, 1, 2, 2), torch.tensor([500.0]), torch.randn(1, 5, 16)
    with torch.no_grad(), pytest.raises(ValueError, match="y"):
        model(x, t, ctx, torch.randn(1, 257, 24))
    with torch.no_grad(), pytest.raises(ValueError, match="clip_fea"):
        model(x, t, ctx, None, torch.randn(1, 20, 1, 2, 2))
