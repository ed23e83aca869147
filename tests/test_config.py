"""RunConfig / DiTConfig parsing: LightX2V files load unchanged, contradictions fail with a clear message."""
import json
import logging
from pathlib import Path

import pytest

from wan_distill.config import ConfigError, DiTConfig, RunConfig

ROOT = Path(__file__).resolve().parents[1]
DISTILL = sorted((ROOT / "configs" / "distill").glob("*.json"))
BASELINE = sorted((ROOT / "configs" / "baseline").glob("*.json"))


def test_shipped_configs_exist():
    names = {p.name for p in DISTILL}
    assert {"wan_t2v_distill_4step_cfg.json", "wan_i2v_distill_4step_cfg.json",
            "wan_t2v_distill_4step_cfg_lora.json", "wan_i2v_distill_4step_cfg_lora.json"} <= names
    assert len(BASELINE) == 2


@pytest.mark.parametrize("path", DISTILL, ids=lambda p: p.name)
def test_distill_configs(path):
    run = RunConfig.from_json(path)
    assert run.is_distill and not run.enable_cfg
    assert run.infer_steps == 4 and run.num_dit_calls == 4
    assert run.denoising_step_list == (1000, 750, 500, 250) and run.sample_shift == 5
    assert (run.target_video_length, run.target_height, run.target_width) == (81, 480, 832)
    assert len(run.lora_configs) == ("lora" in path.name)


@pytest.mark.parametrize("path,steps", zip(BASELINE, (40, 50)), ids=lambda p: getattr(p, "name", str(p)))
def test_baseline_configs(path, steps):
    run = RunConfig.from_json(path)
    assert not run.is_distill and run.enable_cfg
    assert run.infer_steps == steps and run.num_dit_calls == 2 * steps
    assert run.sample_solver == "unipc"


def test_unused_lightx2v_keys_logged_once(tmp_path, caplog):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"infer_steps": 4, "denoising_step_list": [1000, 750, 500, 250],
                             "offload_granularity": "block", "mm_config": {"mm_type": "x"}}))
    with caplog.at_level(logging.INFO, logger="wan_distill.config"):
        RunConfig.from_json(p)
        RunConfig.from_json(p)
    lines = [r.getMessage() for r in caplog.records if "offload_granularity" in r.getMessage()]
    assert len(lines) == 1 and "mm_config" in lines[0]


def test_seed_document_keys(tmp_path):
    """The older form: [999, 750, 500, 250] and lora_path list."""
    lora = tmp_path / "distill_lora.safetensors"
    lora.write_bytes(b"")
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"infer_steps": 4, "denoising_step_list": [999, 750, 500, 250], "enable_cfg": False,
                             "lora_path": ["distill_lora.safetensors"]}))
    run = RunConfig.from_json(p)
    assert run.denoising_step_list == (999, 750, 500, 250)
    assert [(s.path, s.strength) for s in run.lora_configs] == [(lora, 1.0)]


@pytest.mark.parametrize("patch,needle", [
    ({"infer_steps": 5}, "infer_steps (5) must equal the length of denoising_step_list"),
    ({"enable_cfg": True}, "must have enable_cfg false"),
    ({"denoising_step_list": [250, 500, 750, 1000]}, "strictly decreasing"),
    ({"denoising_step_list": [1200, 750, 500, 250]}, "integers in [1, 1000]"),
    ({"target_video_length": 80}, "4k+1"),
    ({"target_height": 470}, "multiple of 16"),
    ({"dit_quantized": True}, "dit_quant_scheme 'Default' is not supported with dit_quantized; use one of"),
    ({"dit_quantized": True, "dit_quant_scheme": "nvfp4"}, "dit_quant_scheme 'nvfp4' is not supported"),
    ({"dit_quantized": True, "dit_quant_scheme": "fp8-b128-deepgemm"}, "per-output-channel fp8 / int8"),
    ({"dit_quant_scheme": "fp8-sgl"}, "dit_quant_scheme 'fp8-sgl' needs dit_quantized true"),
    ({"dit_quantized_ckpt": "q.safetensors"}, "dit_quantized_ckpt is set but dit_quantized is false"),
    ({"dit_quantized": "yes", "dit_quant_scheme": "fp8-sgl"}, "dit_quantized must be true or false"),
    ({"dit_quantized": True, "dit_quant_scheme": 8}, "dit_quant_scheme must be a string"),
    ({"use_tae": 1}, "use_tae must be true or false"),
    ({"need_scaled": "no"}, "need_scaled must be true, false or null"),
    ({"use_tiny_vae": True, "use_tae": False}, "use_tiny_vae (True) and use_tae (False) disagree"),
    ({"feature_caching": "Tea"}, "incompatible"),
    ({"sample_shift": "5"}, "sample_shift must be a number"),
    ({"lora_configs": [{"strength": 1.0}]}, "needs a 'path'"),
    ({"distill_update": "ddim"}, "distill_update"),
    ({"compile_dit": "yes"}, "compile_dit must be true or false"),
])
def test_contradictions_are_named(patch, needle):
    base = {"infer_steps": 4, "denoising_step_list": [1000, 750, 500, 250], "enable_cfg": False}
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({**base, **patch}, source="x.json")
    assert needle in str(e.value) and "x.json" in str(e.value)


# LightX2V's configs/distill files that quantize the DiT, as published (the keys this server reads).
LIGHTX2V_FP8 = {"infer_steps": 4, "target_video_length": 81, "text_len": 512, "target_height": 480, "target_width": 832,
                "self_attn_1_type": "flash_attn3", "sample_guide_scale": 6, "sample_shift": 5, "enable_cfg": False,
                "cpu_offload": False, "offload_granularity": "model", "denoising_step_list": [1000, 750, 500, 250],
                "dit_quantized": True, "dit_quant_scheme": "fp8-sgl",
                "dit_quantized_ckpt": "lightx2v/Wan2.1-Distill-Models/"
                                      "wan2.1_t2v_14b_scaled_fp8_e4m3_lightx2v_4step.safetensors"}
LIGHTX2V_4090 = {"infer_steps": 4, "target_video_length": 81, "target_height": 480, "target_width": 832,
                 "self_attn_1_type": "sage_attn2", "sample_guide_scale": 5, "sample_shift": 5, "enable_cfg": False,
                 "cpu_offload": True, "offload_granularity": "block", "t5_cpu_offload": False,
                 "denoising_step_list": [1000, 750, 500, 250], "dit_quantized": True, "dit_quant_scheme": "fp8-q8f",
                 "t5_quantized": True, "t5_quant_scheme": "fp8-q8f", "clip_quantized": True,
                 "clip_quant_scheme": "fp8-q8f",
                 "lora_configs": [{"path": "lightx2v/Wan2.1-Distill-Loras/"
                                           "wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors", "strength": 1.0}]}


def test_lightx2v_quantized_configs_load(tmp_path):
    fp8 = RunConfig.from_dict(LIGHTX2V_FP8, source="wan_t2v_distill_fp8_4step_cfg.json", base_dir=tmp_path)
    assert fp8.dit_quantized and fp8.dit_quant_format == "fp8" and fp8.is_distill
    assert fp8.dit_quantized_ckpt == Path(LIGHTX2V_FP8["dit_quantized_ckpt"])     # kept as given: not under base_dir
    card = RunConfig.from_dict(LIGHTX2V_4090, source="wan_i2v_distill_lora_4step_cfg_4090.json")
    assert card.dit_quant_format == "fp8" and card.dit_quantized_ckpt is None and len(card.lora_configs) == 1
    int8 = RunConfig.from_dict({**LIGHTX2V_FP8, "dit_quant_scheme": "int8-vllm"})
    assert int8.dit_quant_format == "int8"
    assert RunConfig().dit_quant_format is None and not RunConfig().use_tae
    (tmp_path / "q.safetensors").write_bytes(b"")
    rel = RunConfig.from_dict({**LIGHTX2V_FP8, "dit_quantized_ckpt": "q.safetensors"}, base_dir=tmp_path)
    assert rel.dit_quantized_ckpt == tmp_path / "q.safetensors"                   # beside the config file


def test_tiny_decoder_keys(tmp_path):
    (tmp_path / "taew2_1.pth").write_bytes(b"")
    new = RunConfig.from_dict({"use_tae": True, "tae_path": "taew2_1.pth"}, base_dir=tmp_path)
    old = RunConfig.from_dict({"use_tiny_vae": True, "tiny_vae_path": "taew2_1.pth"}, base_dir=tmp_path)
    assert new.use_tae and old.use_tae and new.tae_path == old.tae_path == tmp_path / "taew2_1.pth"
    assert new.need_scaled is None and RunConfig.from_dict({"need_scaled": True}).need_scaled is True


def test_dit_config_from_wan_config_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "i2v",
                             "dim": 5120, "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "in_dim": 36,
                             "num_heads": 40, "num_layers": 40, "out_dim": 16, "text_len": 512}))
    cfg = DiTConfig.from_json(p)
    assert cfg == DiTConfig.i2v_14b() and cfg.head_dim == 128 and cfg.text_dim == 4096
    with pytest.raises(ConfigError, match="in_dim 36"):
        DiTConfig.from_dict({"model_type": "i2v", "in_dim": 16})
    assert DiTConfig.from_dict(DiTConfig.t2v_1_3b().to_dict()) == DiTConfig.t2v_1_3b()
