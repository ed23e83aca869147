"""The memory plan (wan_distill.memory): weight bytes from the architecture equal the modules' parameter counts
(built at full size on meta), dtypes (fp8 too), the activation formulas' scaling, and the refusal before a GPU model
loads, with simulated free memory (no GPU here)."""
import json

import pytest
import torch

from wan_distill import memory as M
from wan_distill.config import DiTConfig
from wan_distill.deployment import Deployment, check_memory_plan
from wan_distill.models.dit import WanDiT

GiB = 1 << 30


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("cfg", [DiTConfig.t2v_1_3b(), DiTConfig.t2v_14b(), DiTConfig.i2v_14b(),
                                 DiTConfig("i2v", 64, 128, 256, 2, 2, 36, 16, text_dim=32, image_dim=160)],
                         ids=["t2v-1.3b", "t2v-14b", "i2v-14b", "tiny-i2v"])
def test_dit_parameter_count_equals_the_module(cfg):
    with torch.device("meta"):
        dit = WanDiT(cfg)
    total, linear_w, rows = M.dit_params(cfg)
    assert total == n_params(dit)
    quantized = [m for name, m in dit.named_modules() if isinstance(m, torch.nn.Linear) and name.startswith("blocks.")]
    assert linear_w == sum(m.weight.numel() for m in quantized) and rows == sum(m.out_features for m in quantized)


def test_released_component_sizes_equal_the_modules():
    from transformers import CLIPVisionModel, UMT5EncoderModel

    from wan_distill.models.image_encoder import vit_h_14_config
    from wan_distill.models.text_encoder import umt5_xxl_config
    from wan_distill.models.vae import WanVAE

    with torch.device("meta"):
        assert M.umt5_params() == n_params(UMT5EncoderModel(umt5_xxl_config()))
        assert M.clip_params() == n_params(CLIPVisionModel(vit_h_14_config()))
        assert M.WAN_VAE_PARAMS == n_params(WanVAE(dim=96))


def test_weight_bytes_by_dtype():
    cfg = DiTConfig.t2v_14b()
    total, linear_w, rows = M.dit_params(cfg)
    assert 14.2e9 < total < 14.4e9  # "14B"
    assert M.dit_weight_bytes(cfg, "bf16") == 2 * total and M.dit_weight_bytes(cfg, "fp32") == 4 * total
    fp8 = M.dit_weight_bytes(cfg, "fp8")
    assert fp8 == linear_w + 4 * rows + 2 * (total - linear_w)
    assert 0.5 * M.dit_weight_bytes(cfg, "bf16") < fp8 < 0.52 * M.dit_weight_bytes(cfg, "bf16")  # linears are ~98 %


def test_activation_peaks_scale_with_geometry_rows_and_width():
    g480, g720 = M.Geometry(480, 832, 81), M.Geometry(720, 1280, 81)
    assert g480.tokens == 21 * 30 * 52 == 32760 and g720.tokens == 21 * 45 * 80
    small, big = DiTConfig.t2v_1_3b(), DiTConfig.t2v_14b()
    a = M.dit_activation_bytes(small, g480, 1)
    assert M.dit_activation_bytes(small, g480, 4) == 4 * a
    assert M.dit_activation_bytes(big, g480, 1) == a * 5120 // 1536
    assert M.dit_activation_bytes(small, g720, 1) == a * g720.tokens // g480.tokens
    assert M.vae_decode_peak(g720) > 2 * M.vae_decode_peak(g480)
    assert M.image_encoder_memory("x", g720).activations > M.image_encoder_memory("x", g480).activations


def test_activation_formula_stays_near_the_measured_dit_peaks():
    """bench/results/gpu_check.md (H200, in-process): DiT peak minus weights at 480x832x81 = 1.7 GiB (1.3B) and
    5.1 GiB (14B). The formula may be conservative, but not by more than 20 %, and never below."""
    g = M.Geometry(480, 832, 81)
    for cfg, measured in ((DiTConfig.t2v_1_3b(), 1.7), (DiTConfig.t2v_14b(), 5.1)):
        planned = M.dit_activation_bytes(cfg, g, 1) / GiB
        assert measured * 0.97 <= planned <= measured * 1.2, (cfg.dim, planned)


def _params(need: int, profile: str = "") -> dict[str, str]:
    return {"memory_need_bytes": str(need), "memory_plan": "weights 26.6 GiB + ...", "wan_profile": profile,
            "wan_gpu_map": ""}


def test_refused_before_load_with_model_need_and_free():
    free = {0: (20 * GiB, 80 * GiB)}
    with pytest.raises(M.MemoryPlanError) as e:
        check_memory_plan("wan_t2v_dit", _params(40 * GiB), 0, free_memory=free.__getitem__, gpu_count=1)
    msg = str(e.value)
    assert "wan_t2v_dit" in msg and "cuda:0" in msg and "40.0 GiB" in msg and "20.0 GiB is free" in msg
    check_memory_plan("wan_t2v_dit", _params(20 * GiB), 0, free_memory=free.__getitem__, gpu_count=1)  # fits
    check_memory_plan("wan_t2v_dit", {}, 0, free_memory=free.__getitem__, gpu_count=1)  # no plan: no check


def test_refusal_names_a_split_or_the_profiles_that_fit():
    # t2v-14b+baseline on two 80 GB GPUs: the baseline DiT cannot share GPU 0, but a split exists
    frees = {0: (79 * GiB, 80 * GiB), 1: (79 * GiB, 80 * GiB)}
    with pytest.raises(M.MemoryPlanError, match=r"fits as WAN_GPU_MAP=.*t2v_dit_baseline=\d"):
        check_memory_plan("wan_t2v_dit_baseline", _params(127 * GiB, "t2v-14b+baseline"), 0,
                          free_memory=frees.__getitem__, gpu_count=2)
    # one 40 GB GPU: nothing of t2v-14b fits; the small profile does
    small = {0: (40 * GiB, 40 * GiB)}
    with pytest.raises(M.MemoryPlanError, match=r"profiles that fit: t2v-1\.3b$"):
        check_memory_plan("wan_t2v_dit", _params(41 * GiB, "t2v-14b"), 0, free_memory=small.__getitem__, gpu_count=1)


def test_a_gpu_instance_checks_before_loading(tmp_path, monkeypatch):
    """Deployment.from_triton_args on a KIND_GPU instance runs the check before anything is loaded."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t2v"}))
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"infer_steps": 4, "denoising_step_list": [1000, 750, 500, 250]}))
    params = {**_params(40 * GiB), "model_path": str(tmp_path), "config_json": str(run)}
    args = {"model_name": "wan_t2v_dit", "model_repository": str(tmp_path / "repo" / "wan_t2v_dit"),
            "model_instance_kind": "GPU", "model_instance_device_id": "1",
            "model_config": json.dumps({"parameters": {k: {"string_value": v} for k, v in params.items()}})}
    seen = []
    monkeypatch.setattr(M, "cuda_free_memory", lambda i: seen.append(i) or (10 * GiB, 80 * GiB))
    with pytest.raises(M.MemoryPlanError, match="wan_t2v_dit does not fit on cuda:1"):
        Deployment.from_triton_args(args)
    assert seen == [1]
