"""Wan2.1 VAE: checkpoint layout, shapes/frame counts, numerics vs diffusers' AutoencoderKLWan, loading errors."""
from __future__ import annotations

import threading

import pytest
import torch

from wan_distill.errors import CheckpointError
from wan_distill.loaders.vae import load_vae
from wan_distill.models.vae import WanVAE

# Latent statistics as published with Wan2.1's VAE, used to check ours and diffusers' defaults.
NOTES_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
NOTES_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


# ----------------------------------------------------------------------------------------------
# expected key list, from the enumeration rules in the notes (Appendix A), independent of the model code
# ----------------------------------------------------------------------------------------------
def _res(prefix, i, o):
    keys = {f"{prefix}.residual.0.gamma": (i, 1, 1, 1), f"{prefix}.residual.2.weight": (o, i, 3, 3, 3),
            f"{prefix}.residual.2.bias": (o,), f"{prefix}.residual.3.gamma": (o, 1, 1, 1),
            f"{prefix}.residual.6.weight": (o, o, 3, 3, 3), f"{prefix}.residual.6.bias": (o,)}
    if i != o:
        keys |= {f"{prefix}.shortcut.weight": (o, i, 1, 1, 1), f"{prefix}.shortcut.bias": (o,)}
    return keys


def _attn(prefix, d):
    return {f"{prefix}.norm.gamma": (d, 1, 1), f"{prefix}.to_qkv.weight": (3 * d, d, 1, 1),
            f"{prefix}.to_qkv.bias": (3 * d,), f"{prefix}.proj.weight": (d, d, 1, 1), f"{prefix}.proj.bias": (d,)}


def _down(prefix, d, temporal):
    keys = {f"{prefix}.resample.1.weight": (d, d, 3, 3), f"{prefix}.resample.1.bias": (d,)}
    if temporal:
        keys |= {f"{prefix}.time_conv.weight": (d, d, 3, 1, 1), f"{prefix}.time_conv.bias": (d,)}
    return keys


def _up(prefix, d, temporal):
    keys = {f"{prefix}.resample.1.weight": (d // 2, d, 3, 3), f"{prefix}.resample.1.bias": (d // 2,)}
    if temporal:
        keys |= {f"{prefix}.time_conv.weight": (2 * d, d, 3, 1, 1), f"{prefix}.time_conv.bias": (2 * d,)}
    return keys


def expected_keys(c: int = 96) -> dict[str, tuple[int, ...]]:
    a, b, d = c, 2 * c, 4 * c  # 96, 192, 384
    k = {"encoder.conv1.weight": (a, 3, 3, 3, 3), "encoder.conv1.bias": (a,)}
    enc = [("r", a, a), ("r", a, a), ("d", a, False), ("r", a, b), ("r", b, b), ("d", b, True),
           ("r", b, d), ("r", d, d), ("d", d, True), ("r", d, d), ("r", d, d)]
    for n, spec in enumerate(enc):
        k |= _res(f"encoder.downsamples.{n}", spec[1], spec[2]) if spec[0] == "r" else \
            _down(f"encoder.downsamples.{n}", spec[1], spec[2])
    k |= _res("encoder.middle.0", d, d) | _attn("encoder.middle.1", d) | _res("encoder.middle.2", d, d)
    k |= {"encoder.head.0.gamma": (d, 1, 1, 1), "encoder.head.2.weight": (32, d, 3, 3, 3), "encoder.head.2.bias": (32,)}
    k |= {"conv1.weight": (32, 32, 1, 1, 1), "conv1.bias": (32,), "conv2.weight": (16, 16, 1, 1, 1), "conv2.bias": (16,)}
    k |= {"decoder.conv1.weight": (d, 16, 3, 3, 3), "decoder.conv1.bias": (d,)}
    k |= _res("decoder.middle.0", d, d) | _attn("decoder.middle.1", d) | _res("decoder.middle.2", d, d)
    dec = [("r", d, d)] * 3 + [("u", d, True), ("r", b, d), ("r", d, d), ("r", d, d), ("u", d, True)] + \
          [("r", b, b)] * 3 + [("u", b, False)] + [("r", a, a)] * 3
    for n, spec in enumerate(dec):
        k |= _res(f"decoder.upsamples.{n}", spec[1], spec[2]) if spec[0] == "r" else \
            _up(f"decoder.upsamples.{n}", spec[1], spec[2])
    k |= {"decoder.head.0.gamma": (a, 1, 1, 1), "decoder.head.2.weight": (3, a, 3, 3, 3), "decoder.head.2.bias": (3,)}
    return k


def test_real_size_keys_and_shapes_match_appendix_a():
    exp = expected_keys(96)
    assert len(exp) == 194
    total = 0
    for s in exp.values():
        n = 1
        for x in s:
            n *= x
        total += n
    assert total == 126_892_531
    with torch.device("meta"):
        model = WanVAE()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) - set(exp)) == [] and sorted(set(exp) - set(got)) == []
    assert {k: s for k, s in got.items() if exp[k] != s} == {}
    assert sum(p.numel() for p in model.parameters()) == 126_892_531


def test_latent_stats_constants():
    from wan_distill.models import vae
    assert list(vae.LATENT_MEAN) == NOTES_MEAN and list(vae.LATENT_STD) == NOTES_STD


# ----------------------------------------------------------------------------------------------
# tiny models
# ----------------------------------------------------------------------------------------------
def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random gammas/biases too (defaults are ones/zeros-ish), so every parameter matters in comparisons."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return _randomise(WanVAE(dim=8))


def _video(t, h=32, w=32, b=1, seed=1):
    return torch.rand(b, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("frames,latents", [(1, 1), (5, 2), (81, 21)])
def test_encode_decode_frame_counts(tiny, frames, latents):
    z = tiny.encode(_video(frames))
    assert z.shape == (1, 16, latents, 4, 4) and z.dtype == torch.float32
    x = tiny.decode(z)
    assert x.shape == (1, 3, frames, 32, 32) and x.dtype == torch.float32
    assert x.abs().max() <= 1.0 and torch.isfinite(x).all()


def test_encode_drops_frames_beyond_4k_plus_1(tiny):
    v = _video(7)
    assert torch.equal(tiny.encode(v), tiny.encode(v[:, :, :5]))


def test_decode_is_causal_in_latent_frames(tiny):
    # the chunk cache must make decoding a prefix equal the prefix of a full decode
    z = torch.randn(1, 16, 3, 2, 3, generator=torch.Generator().manual_seed(3))
    full = tiny.decode(z)
    torch.testing.assert_close(tiny.decode(z[:, :, :2]), full[:, :, :5], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(full[:, :, 5:], full[:, :, 1:5])  # later frames actually differ


def test_decode_to_uint8_matches_float_decode(tiny):
    z = torch.randn(1, 16, 3, 2, 3, generator=torch.Generator().manual_seed(4))
    ref = tiny.decode(z)[0]                                             # [3, F, H, W]
    expect = ((ref + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0)
    got = tiny.decode_to_uint8(z[0])
    assert got.shape == (9, 16, 24, 3) and got.dtype == torch.uint8
    assert (got.int() - expect.int()).abs().max() <= 1                  # rounding ties only
    assert (got != expect).float().mean() < 1e-3


def test_calls_are_independent(tiny):
    a, b = _video(5, seed=5), _video(5, seed=6)
    za = tiny.encode(a)
    tiny.encode(b)
    assert torch.equal(tiny.encode(a), za)
    # concurrent calls on the same module do not share caches
    out = {}
    def work(key, v):
        out[key] = tiny.decode(tiny.encode(v))
    threads = [threading.Thread(target=work, args=(i, v)) for i, v in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(out[0], tiny.decode(za), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1], tiny.decode(tiny.encode(b)), rtol=0, atol=1e-6)


def test_batch_matches_single(tiny):
    v = _video(5, b=2, seed=7)
    z = tiny.encode(v)
    torch.testing.assert_close(z[1:], tiny.encode(v[1:]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tiny.decode(z)[1:], tiny.decode(z[1:]), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# numerics vs diffusers (independent implementation, weights converted by diffusers' own converter)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusers_pair(tiny):
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    ref = AutoencoderKLWan(base_dim=8, z_dim=16).eval()
    converted = convert_wan_vae_to_diffusers({k: v.clone() for k, v in tiny.state_dict().items()})
    ref.load_state_dict(converted, strict=True)
    assert list(ref.config.latents_mean) == NOTES_MEAN and list(ref.config.latents_std) == NOTES_STD
    return tiny, ref


def _stats(ref):
    mean = torch.tensor(ref.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, 16, 1, 1, 1)
    return mean, std


def test_encode_matches_diffusers(diffusers_pair):
    ours, ref = diffusers_pair
    v = _video(9, h=16, w=24, b=2, seed=8)                                  # 3 chunks, non-square
    mean, std = _stats(ref)
    with torch.no_grad():
        expect = (ref.encode(v).latent_dist.mode() - mean) * (1.0 / std)
    got = ours.encode(v)
    assert got.shape == expect.shape == (2, 16, 3, 2, 3)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


def test_decode_matches_diffusers(diffusers_pair):
    ours, ref = diffusers_pair
    z = torch.randn(2, 16, 3, 2, 3, generator=torch.Generator().manual_seed(9))
    mean, std = _stats(ref)
    with torch.no_grad():
        expect = ref.decode(z / (1.0 / std) + mean).sample
    got = ours.decode(z)
    assert got.shape == expect.shape == (2, 3, 9, 16, 24)
    assert (expect.abs() < 0.999).float().mean() > 0.5                     # mostly not saturated by the clamp
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
def test_load_width_8_file(tiny, tmp_path):
    path = tmp_path / "vae8.pth"
    torch.save(tiny.state_dict(), path)
    model = load_vae(path)
    assert model.dim == 8 and not any(p.is_meta for p in model.parameters())
    z = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(model.decode(z), tiny.decode(z), rtol=0, atol=0)


def test_load_missing_key_is_named(tiny, tmp_path):
    sd = dict(tiny.state_dict())
    del sd["decoder.upsamples.3.time_conv.weight"]
    path = tmp_path / "missing.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_vae(path)
    assert "decoder.upsamples.3.time_conv.weight" in str(e.value) and str(path) in str(e.value)
    assert "missing" in str(e.value)


def test_load_unexpected_key_is_named(tiny, tmp_path):
    sd = dict(tiny.state_dict())
    sd["decoder.upsamples.99.extra"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_vae(path)
    assert "decoder.upsamples.99.extra" in str(e.value) and str(path) in str(e.value)
    assert "unexpected" in str(e.value)


def test_load_rejects_missing_file_and_pickled_objects(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_vae(tmp_path / "nope.pth")
    path = tmp_path / "obj.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(8, 3, 3, 3, 3), "x": threading.Lock}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_vae(path)


def test_load_missing_width_key_and_wrong_shape(tiny, tmp_path):
    sd = dict(tiny.state_dict())
    del sd["encoder.conv1.weight"]
    path = tmp_path / "nowidth.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="encoder.conv1.weight"):
        load_vae(path)
    sd = dict(tiny.state_dict())
    sd["decoder.head.2.weight"] = torch.zeros(3, 8, 3, 3, 1)
    path = tmp_path / "shape.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"decoder\.head\.2\.weight"):
        load_vae(path)


def test_load_safetensors_same_layout(tiny, tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "vae8.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    model = load_vae(path, dtype=torch.bfloat16)
    assert model.conv2.weight.dtype == torch.bfloat16
    torch.testing.assert_close(model.conv2.weight.float(), tiny.conv2.weight.bfloat16().float())
