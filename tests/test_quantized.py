"""LightX2V's quantized DiT checkpoints (fp8 / int8 linears + float32 .weight_scale): files written in that layout,
loaded and checked against a dequantized reference computed here from the file's own tensors; fp8 at load;
the Fp8Linear module (CUDA's path, run here on CPU through its dequantized fallback and, where this torch build
has a CPU kernel, through torch._scaled_mm itself)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from wan_distill.config import DiTConfig, LoraSpec, RunConfig
from wan_distill.errors import CheckpointError
from wan_distill.loaders.checkpoint import load_dit
from wan_distill.models.dit import WanDiT
from wan_distill.models.fp8 import Fp8Linear
from wan_distill.tiny import write_quantized_dit

DISTILL = RunConfig()
CFG = DiTConfig("i2v", dim=32, ffn_dim=64, freq_dim=32, num_heads=2, num_layers=2, in_dim=36, text_len=8,
                text_dim=16, image_dim=24)
# The layers LightX2V's converter quantizes (blocks.N.{self_attn,cross_attn,ffn}), written out for this config.
BLOCK_LINEARS = sorted(f"blocks.{i}.{p}" for i in range(2) for p in
                       ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                        "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2"])


@pytest.fixture
def plain(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A model root (config.json only) and random plain DiT weights."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CFG.to_dict()))
    torch.manual_seed(0)
    model = WanDiT(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return d, {k: v.contiguous() for k, v in model.state_dict().items()}


def quantized_run(path: Path, scheme: str = "fp8-sgl", **kw) -> RunConfig:
    return RunConfig(dit_quantized=True, dit_quant_scheme=scheme, dit_quantized_ckpt=path, **kw)


def reference_from_file(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Plain fp32 weights the file stands for: weight * weight_scale (or * scale_weight), in float64, then fp32."""
    with safe_open(str(path), "pt") as f:
        raw = {k[len(prefix):] if k.startswith(prefix) else k: f.get_tensor(k) for k in f.keys()}
    raw.pop("scaled_fp8", None)
    out = {}
    for k, t in raw.items():
        if k.endswith((".weight_scale", ".scale_weight")):
            continue
        stem = k[: -len(".weight")]
        scale = raw.get(stem + ".weight_scale", raw.get(stem + ".scale_weight"))
        out[k] = (t.double() * scale.double()).float() if scale is not None else t.float()
    return out


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([700.0]), torch.randn(1, 5, 16, generator=g),
            torch.randn(1, 257, 24, generator=g), torch.randn(1, 20, 2, 4, 4, generator=g))


def plain_model(sd: dict[str, torch.Tensor]) -> WanDiT:
    m = WanDiT(CFG)
    m.load_state_dict(sd, strict=True)
    return m.eval()


# ----------------------------------------------------------------------------------------------- the file layout
@pytest.mark.parametrize("fmt, dtype, qmax", [("fp8", torch.float8_e4m3fn, 448.0), ("int8", torch.int8, 127.0)])
def test_writer_uses_lightx2v_layout(plain, tmp_path, fmt, dtype, qmax):
    _, sd = plain
    path = write_quantized_dit(sd, tmp_path / f"wan_{fmt}.safetensors", fmt)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        quantized = sorted(k[: -len(".weight")] for k in keys if f.get_tensor(k).dtype == dtype)
        assert quantized == BLOCK_LINEARS
        for stem in quantized:
            q, s = f.get_tensor(stem + ".weight"), f.get_tensor(stem + ".weight_scale")
            assert s.dtype == torch.float32 and s.shape == (q.shape[0], 1)
            assert torch.allclose(q.float().abs().amax(dim=1, keepdim=True), torch.full_like(s, qmax), rtol=0.01)
        assert keys == set(sd) | {s + ".weight_scale" for s in quantized}
        others = [f.get_tensor(k).dtype for k in keys if k[: -len(".weight")] not in quantized and "_scale" not in k]
        assert set(others) == {torch.bfloat16 if fmt == "fp8" else torch.float32}


# ----------------------------------------------------------------------------------------------- CPU: dequantized
@pytest.mark.parametrize("fmt", ["fp8", "int8"])
def test_quantized_file_dequantized_on_cpu(plain, tmp_path, fmt, caplog):
    d, sd = plain
    path = write_quantized_dit(sd, tmp_path / f"q_{fmt}.safetensors", fmt)
    with caplog.at_level(logging.WARNING, logger="wan_distill.loaders.checkpoint"):
        model = load_dit(d, quantized_run(path, f"{fmt}-sgl" if fmt == "fp8" else "int8-vllm"))
    ref = reference_from_file(path)
    got = model.state_dict()
    assert set(got) == set(ref) == set(sd)
    for k, v in ref.items():
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], v, atol=0, rtol=0, msg=k)
    assert not any(isinstance(m, Fp8Linear) for m in model.modules())
    # dequantization is not a no-op: the weights really moved to the fp8 / int8 grid
    assert not torch.equal(got["blocks.0.ffn.0.weight"], sd["blocks.0.ffn.0.weight"])
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"24 {fmt} linear weights" in msg and "dequantized to float32" in msg
    with torch.no_grad():
        # the weights are equal bit for bit (above); the forward passes only to fp32 rounding: on some CPUs (seen on
        # an AMD EPYC, int8 case) the matmul kernels round two equal-valued weight tensors differently (1.6e-5)
        torch.testing.assert_close(model(*inputs()), plain_model(ref)(*inputs()), atol=1e-4, rtol=1e-4)


def test_int8_file_named_as_dit_original_ckpt_is_recognised(plain, tmp_path, caplog):
    """LightX2V's wan21/wan_i2v_distill_model_4step_cfg.json names an int8 file as dit_original_ckpt."""
    d, sd = plain
    path = write_quantized_dit(sd, d / "wan2.1_i2v_480p_int8_lightx2v_4step.safetensors", "int8")
    run = RunConfig.from_dict({"infer_steps": 4, "denoising_step_list": [1000, 750, 500, 250],
                               "dit_original_ckpt": path.name}, source="wan_i2v_distill_model_4step_cfg.json")
    with caplog.at_level(logging.WARNING, logger="wan_distill.loaders.checkpoint"):
        model = load_dit(d, run)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "quantized DiT" in msg and "int8" in msg and "does not set dit_quantized" in msg and path.name in msg
    for k, v in reference_from_file(path).items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=0, rtol=0)


def test_comfyui_per_tensor_fp8_with_prefix(plain, tmp_path):
    d, sd = plain
    path = write_quantized_dit(sd, tmp_path / "q_comfyui.safetensors", "fp8", comfyui=True,
                               prefix="model.diffusion_model.")
    with safe_open(str(path), "pt") as f:
        assert "scaled_fp8" in f.keys() and f.get_tensor("model.diffusion_model.blocks.0.ffn.0.scale_weight").ndim == 0
    model = load_dit(d, quantized_run(path))
    for k, v in reference_from_file(path, "model.diffusion_model.").items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=0, rtol=0)


def test_saved_by_block_folder(plain, tmp_path):
    """LightX2V's --save_by_block: a folder of safetensors (non-block weights + one file per block)."""
    d, sd = plain
    whole = write_quantized_dit(sd, tmp_path / "whole.safetensors", "fp8")
    folder = tmp_path / "fp8_blocks"
    folder.mkdir()
    with safe_open(str(whole), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for name, pick in (("non_block", lambda k: not k.startswith("blocks.")),
                       ("block_0", lambda k: k.startswith("blocks.0.")), ("block_1", lambda k: k.startswith("blocks.1."))):
        save_file({k: v for k, v in tensors.items() if pick(k)}, str(folder / f"{name}.safetensors"))
    model = load_dit(d, quantized_run(folder))
    for k, v in reference_from_file(whole).items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------- fp8 kept (CUDA path)
def test_fp8_kept_as_fp8linear_with_checkpoint_names(plain, tmp_path):
    d, sd = plain
    path = write_quantized_dit(sd, tmp_path / "q.safetensors", "fp8")
    model = load_dit(d, quantized_run(path), keep_fp8=True)     # what CUDA does by default
    fp8 = sorted(n for n, m in model.named_modules() if isinstance(m, Fp8Linear))
    assert fp8 == BLOCK_LINEARS
    with safe_open(str(path), "pt") as f:
        file_keys = set(f.keys())
        got = model.state_dict()
        assert set(got) == file_keys                               # parameter names == the checkpoint's keys
        for k in file_keys:
            t = f.get_tensor(k)
            if t.dtype == torch.float8_e4m3fn or k.endswith(".weight_scale"):
                assert got[k].dtype == t.dtype and torch.equal(got[k].float(), t.float()), k
    dequantized = load_dit(d, quantized_run(path))
    with torch.no_grad():   # off CUDA Fp8Linear multiplies with the dequantized weight: same numbers exactly
        torch.testing.assert_close(model(*inputs()), dequantized(*inputs()), atol=0, rtol=0)


def _cpu_scaled_mm_available() -> bool:
    try:
        a = torch.zeros(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError):
        return False


@pytest.mark.skipif(not _cpu_scaled_mm_available(), reason="this torch build has no CPU torch._scaled_mm")
def test_fp8linear_scaled_mm_path_matches_dequantized_math(plain, tmp_path):
    """The exact call CUDA makes (dynamic fp8 activations, per-row scales, torch._scaled_mm), run by the CPU kernel."""
    d, sd = plain
    model = load_dit(d, quantized_run(write_quantized_dit(sd, tmp_path / "q.safetensors", "fp8")), keep_fp8=True)
    with torch.no_grad():
        ref = model(*inputs())
        for m in model.modules():
            if isinstance(m, Fp8Linear):
                m.use_scaled_mm = True
        out = model(*inputs())
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.05, rel        # fp8 activations: close, and not silently the same path


@pytest.mark.skipif(not _cpu_scaled_mm_available(), reason="this torch build has no CPU torch._scaled_mm")
@pytest.mark.parametrize("per_row", [True, False])
def test_fp8linear_scaled_mm_layer_exact(per_row):
    """One layer: _scaled_mm's result == (fp8 activations * their scale) @ (fp8 weight * its scale).T + bias, computed
    in float64 here, up to the bf16 output rounding."""
    torch.manual_seed(4)
    lin = torch.nn.Linear(64, 48)
    layer = Fp8Linear.from_linear(lin, per_row=per_row)
    layer.use_scaled_mm = True
    x = torch.randn(3, 7, 64, dtype=torch.bfloat16) * 3
    x2 = x.reshape(-1, 64)                                     # activations quantized as the layer does (in bf16)
    amax = x2.abs().amax(dim=1, keepdim=True)                  # per row in both cases: batch-invariant
    xs = (amax.float() / 448).to(torch.bfloat16)
    xq = (x2 / xs).clamp(-448, 448).to(torch.float8_e4m3fn).double()
    xs = xs.double()
    ws = layer.weight_scale.double().reshape(-1, 1) if per_row else layer.weight_scale.double()
    expect = (xq * xs) @ (layer.weight.double() * ws).t() + lin.bias.double().bfloat16().double()
    got = layer(x).reshape(-1, 48).double()
    assert got.dtype == torch.float64 and layer(x).dtype == torch.bfloat16
    torch.testing.assert_close(got, expect, rtol=8e-3, atol=8e-3 * expect.abs().max().item())
    # a row's output does not depend on the rows batched with it
    torch.testing.assert_close(layer(x[:1, 2:3] * 1), layer(torch.cat([x[:1, 2:3], 50 * x[1:2, :1]]))[:1], atol=0, rtol=0)


def test_fp8linear_module_math():
    torch.manual_seed(3)
    lin = torch.nn.Linear(32, 48)
    for per_row in (True, False):
        layer = Fp8Linear.from_linear(lin, per_row=per_row)
        assert [n for n, _ in layer.named_parameters()] == ["weight", "weight_scale", "bias"]
        assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
        assert layer.weight_scale.shape == ((48, 1) if per_row else ())
        w = layer.weight.double() * (layer.weight_scale.double() if per_row else layer.weight_scale.double().item())
        assert (w.float() - lin.weight).abs().max() <= lin.weight.abs().max() / 16        # 3 mantissa bits
        x = torch.randn(2, 5, 32)
        expect = torch.nn.functional.linear(x.double(), w, lin.bias.double()).float()
        torch.testing.assert_close(layer(x), expect, rtol=1e-5, atol=1e-5)
        copy = Fp8Linear(32, 48, per_row=per_row)
        copy.load_state_dict(layer.state_dict())
        torch.testing.assert_close(copy(x), layer(x), atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------- fp8 / int8 at load
def _fake_quant_reference(w: torch.Tensor, fmt: str) -> torch.Tensor:
    w = w.double()
    qmax = 448.0 if fmt == "fp8" else 127.0
    scale = (w.abs().amax(dim=1, keepdim=True).clamp_min(1e-5) / qmax).float().double()
    x = w / scale
    q = x.float().clamp(-448, 448).to(torch.float8_e4m3fn).double() if fmt == "fp8" else x.round().clamp(-128, 127)
    return (q * scale).float()


@pytest.mark.parametrize("scheme, fmt", [("fp8-sgl", "fp8"), ("int8-q8f", "int8")])
def test_plain_weights_quantized_at_load(plain, scheme, fmt, caplog):
    """dit_quantized without a quantized file (LightX2V's *_4090.json): the plain distilled weights are quantized."""
    d, sd = plain
    (d / "distill_models").mkdir()
    save_file(sd, str(d / "distill_models" / "distill_model.safetensors"))
    run = RunConfig(dit_quantized=True, dit_quant_scheme=scheme)
    with caplog.at_level(logging.WARNING, logger="wan_distill.loaders.checkpoint"):
        model = load_dit(d, run)
    assert "holds plain weights" in caplog.text and "24 linears" in caplog.text
    got = model.state_dict()
    for k, v in sd.items():
        stem = k[: -len(".weight")]
        expect = _fake_quant_reference(v, fmt) if stem in BLOCK_LINEARS else v
        torch.testing.assert_close(got[k], expect, rtol=1e-6, atol=1e-7, msg=k)
    if fmt == "fp8":
        kept = load_dit(d, run, keep_fp8=True)
        assert sorted(n for n, m in kept.named_modules() if isinstance(m, Fp8Linear)) == BLOCK_LINEARS
        with torch.no_grad():
            torch.testing.assert_close(kept(*inputs()), model(*inputs()), rtol=1e-5, atol=1e-5)


def test_lora_merged_into_dequantized_weights(plain, tmp_path):
    d, sd = plain
    path = write_quantized_dit(sd, tmp_path / "q.safetensors", "int8")
    g = torch.Generator().manual_seed(7)
    up, down = torch.randn(64, 4, generator=g) * 0.1, torch.randn(4, 32, generator=g) * 0.1
    lora = tmp_path / "lora.safetensors"
    save_file({"diffusion_model.blocks.1.ffn.0.lora_up.weight": up,
               "diffusion_model.blocks.1.ffn.0.lora_down.weight": down}, str(lora))
    run = quantized_run(path, "int8-sgl", lora_configs=(LoraSpec(lora, 0.5),))
    model = load_dit(d, run)
    ref = reference_from_file(path)
    got = model.state_dict()
    torch.testing.assert_close(got["blocks.1.ffn.0.weight"], ref["blocks.1.ffn.0.weight"] + 0.5 * up @ down,
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["blocks.0.ffn.0.weight"], ref["blocks.0.ffn.0.weight"], atol=0, rtol=0)


def test_lora_on_kept_fp8_is_requantized(plain, tmp_path):
    d, sd = plain
    path = write_quantized_dit(sd, tmp_path / "q.safetensors", "fp8")
    lora = tmp_path / "lora.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.diff": torch.full((32, 32), 0.25)}, str(lora))
    model = load_dit(d, quantized_run(path, lora_configs=(LoraSpec(lora, 1.0),)), keep_fp8=True)
    layer = model.blocks[0].self_attn.q
    assert isinstance(layer, Fp8Linear) and layer.weight.dtype == torch.float8_e4m3fn
    expect = reference_from_file(path)["blocks.0.self_attn.q.weight"] + 0.25
    err = (layer.dequantized_weight() - expect).abs().max()
    assert err <= expect.abs().max() / 16, err


# ----------------------------------------------------------------------------------------------- errors
def _write_raw(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _quantized_tensors(sd, tmp_path) -> dict[str, torch.Tensor]:
    with safe_open(str(write_quantized_dit(sd, tmp_path / "ok.safetensors", "fp8")), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("damage, needles", [
    (lambda t: t.pop("blocks.0.ffn.2.weight_scale"), ["blocks.0.ffn.2.weight is torch.float8_e4m3fn",
                                                       "blocks.0.ffn.2.weight_scale is missing"]),
    (lambda t: t.update({"blocks.1.norm3.weight_scale": torch.ones(1)}),
     ["blocks.1.norm3.weight_scale has no fp8/int8"]),
    (lambda t: t.update({"blocks.0.ffn.0.weight_scale": torch.ones(64, 2)}),
     ["blocks.0.ffn.0.weight_scale", "(64, 2)"]),
    (lambda t: t.update({"blocks.1.ffn.0.weight": t["blocks.1.ffn.0.weight"].float().to(torch.int8)}),
     ["fp8 and int8 weights mixed"]),
])
def test_broken_quantized_files_are_named(plain, tmp_path, damage, needles):
    d, sd = plain
    tensors = _quantized_tensors(sd, tmp_path)
    damage(tensors)
    path = _write_raw(tmp_path, tensors)
    with pytest.raises(CheckpointError) as e:
        load_dit(d, quantized_run(path))
    assert str(path) in str(e.value)
    for needle in needles:
        assert needle in str(e.value)


def test_unknown_extra_quantization_keys_are_unexpected(plain, tmp_path):
    """e.g. fp8-pertensor's static .input_scale: not part of the model -> named by the strict check."""
    d, sd = plain
    tensors = _quantized_tensors(sd, tmp_path)
    tensors["blocks.0.self_attn.q.input_scale"] = torch.ones(1)
    path = _write_raw(tmp_path, tensors)
    with pytest.raises(CheckpointError, match=r"unexpected 1 key\(s\): blocks\.0\.self_attn\.q\.input_scale"):
        load_dit(d, quantized_run(path))


def test_scheme_must_match_the_file(plain, tmp_path):
    d, sd = plain
    path = write_quantized_dit(sd, tmp_path / "q.safetensors", "int8")
    with pytest.raises(CheckpointError, match=r"dit_quant_scheme 'fp8-sgl' is fp8, but .*q\.safetensors holds int8"):
        load_dit(d, quantized_run(path, "fp8-sgl"))


def test_quantized_ckpt_not_found_is_named(plain, tmp_path):
    d, _ = plain
    with pytest.raises(CheckpointError, match=r"dit_quantized_ckpt not found; looked at: .*nope\.safetensors"):
        load_dit(d, quantized_run(Path("nope.safetensors")))


# ----------------------------------------------------------------------------------------------- end to end
def test_pipeline_with_quantized_checkpoint_equals_its_dequantized_weights(tiny_models, tmp_path):
    from wan_distill.pipeline import WanPipeline

    root = tiny_models["t2v"]
    with safe_open(str(root / "distill_models" / "distill_model.safetensors"), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    qpath = write_quantized_dit(sd, tmp_path / "wan2.1_t2v_tiny_scaled_fp8_e4m3_lightx2v_4step.safetensors", "fp8")
    plain_path = tmp_path / "dequantized.safetensors"
    save_file(reference_from_file(qpath), str(plain_path))
    kw = dict(target_height=32, target_width=32, target_video_length=5)
    quant = WanPipeline.from_model_dir(root, quantized_run(qpath, **kw), device="cpu")
    ref = WanPipeline.from_model_dir(root, RunConfig(dit_original_ckpt=plain_path, **kw), device="cpu")
    a, b = quant.text_to_video("a fox", seed=5), ref.text_to_video("a fox", seed=5)
    assert a.frames.shape == (5, 32, 32, 3)
    assert torch.equal(a.latents, b.latents)
