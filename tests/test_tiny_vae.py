"""taehv's taew2_1 tiny decoder (LightX2V use_tae): key layout at real size, frame count equal to the full VAE's,
streaming decode == a whole-video reference written here, determinism, strict loading, run-config wiring."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from wan_distill.config import RunConfig
from wan_distill.errors import CheckpointError
from wan_distill.loaders.layout import TAE_FILE
from wan_distill.loaders.tiny_vae import load_tiny_vae
from wan_distill.loaders.vae import load_decoder, load_vae_from_dir
from wan_distill.models.tiny_vae import TinyVAEDecoder
from wan_distill.models.vae import LATENT_MEAN, LATENT_STD, WanVAE
from wan_distill.tiny import write_tiny_taew2_1


def taew2_1_decoder_keys(c=(256, 128, 64, 64), strides=(1, 2, 2), z=16) -> dict[str, tuple[int, ...]]:
    """decoder.* of taew2_1.pth, enumerated from the layout (positions 0..22 of taehv's decoder Sequential)."""
    keys = {"decoder.1.weight": (c[0], z, 3, 3), "decoder.1.bias": (c[0],),
            "decoder.22.weight": (3, c[3], 3, 3), "decoder.22.bias": (3,)}
    for stage, first in enumerate((3, 9, 15)):
        w = c[stage]
        for i in range(first, first + 3):              # MemBlock(w, w): conv.0 (2w -> w), conv.2, conv.4
            keys |= {f"decoder.{i}.conv.0.weight": (w, 2 * w, 3, 3), f"decoder.{i}.conv.0.bias": (w,),
                     f"decoder.{i}.conv.2.weight": (w, w, 3, 3), f"decoder.{i}.conv.2.bias": (w,),
                     f"decoder.{i}.conv.4.weight": (w, w, 3, 3), f"decoder.{i}.conv.4.bias": (w,)}
        keys[f"decoder.{first + 4}.conv.weight"] = (w * strides[stage], w, 1, 1)    # TGrow
        keys[f"decoder.{first + 5}.weight"] = (c[stage + 1], w, 3, 3)              # conv, no bias
    return keys


@pytest.fixture(scope="module")
def tae_file(tmp_path_factory):
    return write_tiny_taew2_1(tmp_path_factory.mktemp("tae") / TAE_FILE, widths=(16, 8, 8, 8), seed=4)


@pytest.fixture(scope="module")
def tae(tae_file):
    return load_tiny_vae(tae_file)


def latents(t=3, h=4, w=6, seed=0):
    return torch.randn(16, t, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------- layout
def test_real_size_module_names_and_shapes():
    with torch.device("meta"):
        model = TinyVAEDecoder()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == taew2_1_decoder_keys()
    assert sum(v.numel() for v in model.state_dict().values()) == sum(
        torch.Size(s).numel() for s in taew2_1_decoder_keys().values())


def test_tiny_file_layout(tae_file):
    sd = torch.load(tae_file, weights_only=True)
    dec = {k: tuple(v.shape) for k, v in sd.items() if k.startswith("decoder.")}
    assert dec == taew2_1_decoder_keys((16, 8, 8, 8))
    assert any(k.startswith("encoder.") for k in sd)


# ----------------------------------------------------------------------------------------------- decoding
def whole_video_reference(model: TinyVAEDecoder, z: torch.Tensor) -> torch.Tensor:
    """All frames at once, TAEHV's parallel form: every MemBlock sees its input shifted one frame back in time
    (zeros first), TGrow turns each frame into `stride` frames; the first (4 - 1) frames are dropped. [16,t,h,w] ->
    [3, F, 8h, 8w] in [0, 1]."""
    x = z.transpose(0, 1).float()                                          # [t, 16, h, w]
    for layer in model.decoder:
        name = type(layer).__name__
        if name == "MemBlock":
            past = torch.cat([torch.zeros_like(x[:1]), x[:-1]])
            x = F.relu(layer.conv(torch.cat([x, past], 1)) + x)
        elif name == "TGrow":
            t, c, h, w = x.shape
            x = layer.conv(x).reshape(t, layer.stride, c, h, w).reshape(t * layer.stride, c, h, w)
        elif name == "SoftClamp":
            x = torch.tanh(x / 3) * 3
        elif name == "Upsample2x":
            x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        else:
            x = layer(x)
    return x[3:].clamp(0, 1).transpose(0, 1)


@pytest.mark.parametrize("t", [1, 2, 5])
def test_streaming_decode_equals_whole_video_reference(tae, t):
    z = latents(t)
    ref = whole_video_reference(tae, z)
    for chunk in (1, 2, t):
        got = tae.decode(z[None], latents_per_chunk=chunk)[0]
        assert got.shape == ref.shape == (3, 1 + 4 * (t - 1), 32, 48)
        torch.testing.assert_close((got + 1) / 2, ref, rtol=1e-5, atol=1e-5)


def test_frame_count_equals_the_full_vae(tiny_models):
    root = tiny_models["t2v"]
    vae, tae = load_vae_from_dir(root), load_tiny_vae(root / TAE_FILE)
    for t in (1, 2, 4):
        z = latents(t, 2, 3, seed=t)
        a, b = vae.decode_to_uint8(z), tae.decode_to_uint8(z)
        assert a.shape == b.shape == (1 + 4 * (t - 1), 16, 24, 3) and a.dtype == b.dtype == torch.uint8
        assert tae.num_frames(t) == WanVAE.num_frames(t)


def test_uint8_frames_deterministic_and_depend_on_the_weights(tae, tmp_path):
    z = latents(2)
    a, b = tae.decode_to_uint8(z), tae.decode_to_uint8(z)
    assert torch.equal(a, b)
    ref = whole_video_reference(tae, z).permute(1, 2, 3, 0).mul(255).round().to(torch.uint8)
    assert (a.int() - ref.int()).abs().max() <= 1
    saturated = ((a == 0) | (a == 255)).float().mean()
    assert saturated < 0.5 and a.float().std() > 10                       # real pictures of noise, not flat
    other = load_tiny_vae(write_tiny_taew2_1(tmp_path / TAE_FILE, widths=(16, 8, 8, 8), seed=5))
    assert not torch.equal(other.decode_to_uint8(z), a)


def test_need_scaled_denormalizes_first(tae_file):
    scaled = load_tiny_vae(tae_file, denormalize=True)
    plain = load_tiny_vae(tae_file, denormalize=False)
    z = latents(2)
    mean, std = torch.tensor(LATENT_MEAN).view(-1, 1, 1, 1), torch.tensor(LATENT_STD).view(-1, 1, 1, 1)
    torch.testing.assert_close(scaled.decode(z[None]), plain.decode((z * std + mean)[None]), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(scaled.decode(z[None]), plain.decode(z[None]))


def test_bad_latents_shape(tae):
    with pytest.raises(ValueError, match=r"\[16,t,h,w\]"):
        tae.decode_to_uint8(torch.zeros(1, 16, 2, 2, 2))
    with pytest.raises(ValueError, match=r"\[B,16,t,h,w\]"):
        tae.decode(torch.zeros(1, 8, 2, 2, 2))


# ----------------------------------------------------------------------------------------------- loading
def test_loads_safetensors_and_bf16(tae_file, tae, tmp_path):
    from safetensors.torch import save_file
    sd = torch.load(tae_file, weights_only=True)
    path = tmp_path / "taew2_1.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    again = load_tiny_vae(path)
    z = latents(2)
    assert torch.equal(again.decode_to_uint8(z), tae.decode_to_uint8(z))
    assert load_tiny_vae(path, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_missing_and_unexpected_decoder_keys_are_named(tae_file, tmp_path):
    sd = torch.load(tae_file, weights_only=True)
    del sd["decoder.10.conv.2.bias"]
    sd["decoder.10.conv.9.weight"] = torch.zeros(1)
    bad = tmp_path / "bad_tae.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError) as e:
        load_tiny_vae(bad)
    msg = str(e.value)
    assert str(bad) in msg and "missing 1 key(s): decoder.10.conv.2.bias" in msg
    assert "unexpected 1 key(s): decoder.10.conv.9.weight" in msg and "encoder." not in msg


def test_not_a_taehv_file(tmp_path):
    path = tmp_path / "vae.pth"
    torch.save({"decoder.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"vae\.pth.*decoder\.1\.weight.*not a taehv decoder file"):
        load_tiny_vae(path)


def test_load_decoder_follows_the_run_config(tiny_models, tmp_path):
    root = tiny_models["t2v"]
    assert isinstance(load_decoder(root, RunConfig()), WanVAE)
    tiny = load_decoder(root, RunConfig(use_tae=True))                     # <root>/taew2_1.pth
    assert isinstance(tiny, TinyVAEDecoder) and tiny.dtype == torch.float32 and not tiny.denormalize
    cfg = tmp_path / "run.json"
    other = write_tiny_taew2_1(tmp_path / "lighttaew2_1.pth", widths=(8, 8, 8, 8))
    cfg.write_text(json.dumps({"infer_steps": 4, "denoising_step_list": [1000, 750, 500, 250],
                               "use_tiny_vae": True, "tiny_vae_path": other.name}))   # older LightX2V key names
    tiny = load_decoder(root, RunConfig.from_json(cfg))
    assert tiny.widths == (8, 8, 8, 8) and tiny.denormalize                 # lighttae* files decode de-normalised
    with pytest.raises(CheckpointError, match=r"tiny decoder weights not found \(tae_path in .*nope\.pth"):
        load_decoder(root, RunConfig(use_tae=True, tae_path=tmp_path / "nope.pth"))
    with pytest.raises(CheckpointError, match=r"use_tae in .* without tae_path.*taew2_1\.pth"):
        load_decoder(tmp_path, RunConfig(use_tae=True))


def test_pipeline_decodes_with_the_tiny_decoder(tiny_models):
    from wan_distill.pipeline import WanPipeline

    kw = dict(target_height=32, target_width=48, target_video_length=9)
    full = WanPipeline.from_model_dir(tiny_models["t2v"], RunConfig(**kw), device="cpu")
    fast = WanPipeline.from_model_dir(tiny_models["t2v"], RunConfig(use_tae=True, **kw), device="cpu")
    assert isinstance(fast.vae, TinyVAEDecoder)
    a, b = full.text_to_video("a fox", seed=1), fast.text_to_video("a fox", seed=1)
    assert torch.equal(a.latents, b.latents)
    assert a.frames.shape == b.frames.shape == (9, 32, 48, 3)
    assert (a.frames != b.frames).any() and len(b.mp4) > 0
    ref = whole_video_reference(fast.vae, b.latents).permute(1, 2, 3, 0).mul(255).round().numpy()
    assert abs(b.frames.astype(int) - ref.astype(int)).max() <= 1


def test_i2v_keeps_the_full_vae_for_the_image_latent(tiny_models):
    from wan_distill.pipeline import WanPipeline

    pipe = WanPipeline.from_model_dir(tiny_models["i2v"], RunConfig(use_tae=True), device="cpu")
    assert isinstance(pipe.vae, TinyVAEDecoder) and isinstance(pipe.conditioner.vae, WanVAE)


@pytest.mark.server
def test_served_vae_decoder_uses_the_tiny_decoder(tiny_models, tmp_path):
    """wan_vae_decoder alone in a real tritonserver, run config with use_tae: frames == in-process load_decoder's."""
    import sys

    import numpy as np
    import tritonclient.grpc as grpcclient

    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "scripts"))
    from demo import demo_env
    from triton_server import TritonServer

    cfg = tmp_path / "tae_run.json"
    cfg.write_text(json.dumps({"infer_steps": 4, "denoising_step_list": [1000, 750, 500, 250], "use_tae": True}))
    env = {**demo_env(tiny_models["t2v"], tiny_models["i2v"]), "WAN_T2V_CONFIG": str(cfg)}
    z = latents(3, 2, 3, seed=11)
    expect = load_decoder(tiny_models["t2v"], RunConfig.from_json(cfg)).decode_to_uint8(z).numpy()
    with TritonServer(ROOT / "model_repository", env=env, log_path=tmp_path / "server.log", ready_timeout_s=300,
                      extra_args=["--model-control-mode=explicit", "--load-model=wan_vae_decoder"]) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        inp = grpcclient.InferInput("LATENTS", list(z.shape), "FP32")
        inp.set_data_from_numpy(z.numpy())
        frames = client.infer("wan_vae_decoder", [inp]).as_numpy("FRAMES")
        client.close()
    assert frames.shape == (9, 16, 24, 3) and np.array_equal(frames, expect)
    assert not np.array_equal(frames, load_vae_from_dir(tiny_models["t2v"]).decode_to_uint8(z).numpy())
