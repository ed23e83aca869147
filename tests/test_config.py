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
    ({"dit_quantized": True}, "not supported"),
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
