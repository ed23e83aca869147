"""DiT checkpoint discovery and strict loading, for every layout the server accepts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wan_distill.config import DiTConfig, LoraSpec, RunConfig
from wan_distill.errors import CheckpointError
from wan_distill.loaders.checkpoint import find_dit_weights, load_dit, load_state_dict_file, strip_prefix
from wan_distill.models.dit import WanDiT

DISTILL = RunConfig()  # defaults: 4-step distill list, no LoRA
BASE = RunConfig(denoising_step_list=None, infer_steps=40, enable_cfg=True)


def _cfg(model_type: str = "t2v") -> DiTConfig:
    return DiTConfig(model_type, dim=32, ffn_dim=64, freq_dim=32, num_heads=2, num_layers=2,
                     in_dim=36 if model_type == "i2v" else 16, text_len=8, text_dim=16, image_dim=24)


def _weights(cfg: DiTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = WanDiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _model_dir(tmp_path: Path, cfg: DiTConfig) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    return d


def _assert_loaded(model: WanDiT, sd: dict[str, torch.Tensor], dtype=torch.float32) -> None:
    got = model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert got[k].dtype == dtype, k
        torch.testing.assert_close(got[k], v.to(dtype), atol=0, rtol=0)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(p.is_meta for p in model.parameters())


def _sharded(d: Path, sd: dict[str, torch.Tensor]) -> None:
    keys = sorted(sd)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(d / name))
        weight_map |= {k: name for k in ks}
    (d / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_sharded_base_with_index(tmp_path):
    cfg = _cfg()
    sd = _weights(cfg)
    d = _model_dir(tmp_path, cfg)
    _sharded(d, sd)
    files = find_dit_weights(d, BASE)
    assert [p.name for p in files] == ["diffusion_pytorch_model-00001-of-00002.safetensors",
                                       "diffusion_pytorch_model-00002-of-00002.safetensors"]
    _assert_loaded(load_dit(d, BASE), sd)
    # bf16 cast while reading
    _assert_loaded(load_dit(d, BASE, dtype=torch.bfloat16), sd, torch.bfloat16)


def test_sharded_index_naming_an_absent_shard(tmp_path):
    cfg = _cfg()
    d = _model_dir(tmp_path, cfg)
    _sharded(d, _weights(cfg))
    (d / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="00002-of-00002"):
        find_dit_weights(d, BASE)


@pytest.mark.parametrize("model_type", ["t2v", "i2v"])
def test_distill_models_safetensors(tmp_path, model_type):
    cfg = _cfg(model_type)
    sd, base = _weights(cfg, seed=1), _weights(cfg, seed=2)
    d = _model_dir(tmp_path, cfg)
    save_file(base, str(d / "diffusion_pytorch_model.safetensors"))
    (d / "distill_models").mkdir()
    save_file(sd, str(d / "distill_models" / "distill_model.safetensors"))
    assert find_dit_weights(d, DISTILL) == [d / "distill_models" / "distill_model.safetensors"]
    _assert_loaded(load_dit(d, DISTILL), sd)
    # the baseline run of the same folder loads the base weights
    _assert_loaded(load_dit(d, BASE), base)


def test_distill_pt_files_and_their_order(tmp_path):
    cfg = _cfg()
    sd, other = _weights(cfg, seed=3), _weights(cfg, seed=4)
    d = _model_dir(tmp_path, cfg)
    torch.save(other, d / "distill_model.pt")  # the first T2V release: at the model root
    assert find_dit_weights(d, DISTILL) == [d / "distill_model.pt"]
    _assert_loaded(load_dit(d, DISTILL), other)
    (d / "distill_models").mkdir()
    torch.save({"state_dict": sd}, d / "distill_models" / "distill_model.pt")  # wrapped form
    assert find_dit_weights(d, DISTILL) == [d / "distill_models" / "distill_model.pt"]
    _assert_loaded(load_dit(d, DISTILL), sd)


@pytest.mark.parametrize("prefix", ["model.", "diffusion_model.", "model.diffusion_model."])
def test_single_file_with_prefix(tmp_path, prefix):
    cfg = _cfg()
    sd = _weights(cfg)
    d = _model_dir(tmp_path, cfg)
    (d / "distill_models").mkdir()
    save_file({prefix + k: v for k, v in sd.items()}, str(d / "distill_models" / "distill_model.safetensors"))
    _assert_loaded(load_dit(d, DISTILL), sd)


def test_strip_prefix_only_when_shared():
    t = torch.zeros(1)
    assert set(strip_prefix({"model.a": t, "model.b": t})) == {"a", "b"}
    assert set(strip_prefix({"model.diffusion_model.a": t})) == {"a"}
    assert set(strip_prefix({"model.a": t, "b": t})) == {"model.a", "b"}


def test_dit_original_ckpt_file_dir_and_relative(tmp_path):
    cfg = _cfg()
    sd = _weights(cfg)
    d = _model_dir(tmp_path, cfg)
    ext = tmp_path / "Wan2.1-Distill-Models"
    ext.mkdir()
    f = ext / "wan2.1_t2v_14b_lightx2v_4step.safetensors"
    save_file(sd, str(f))
    (d / "distill_models").mkdir()
    save_file(_weights(cfg, seed=9), str(d / "distill_models" / "distill_model.safetensors"))  # must lose
    run = DISTILL.replace(dit_original_ckpt=f)
    assert find_dit_weights(d, run) == [f]
    _assert_loaded(load_dit(d, run), sd)
    assert find_dit_weights(d, DISTILL.replace(dit_original_ckpt=ext)) == [f]
    # relative to the model folder
    (d / "sub").mkdir()
    save_file(sd, str(d / "sub" / "w.safetensors"))
    assert find_dit_weights(d, DISTILL.replace(dit_original_ckpt=Path("sub/w.safetensors"))) == [
        d / "sub" / "w.safetensors"]
    with pytest.raises(CheckpointError, match="nowhere.safetensors"):
        find_dit_weights(d, DISTILL.replace(dit_original_ckpt=tmp_path / "nowhere.safetensors"))


def test_distill_with_lora_uses_base_weights(tmp_path):
    cfg = _cfg()
    base = _weights(cfg)
    d = _model_dir(tmp_path, cfg)
    save_file(base, str(d / "diffusion_pytorch_model.safetensors"))
    (d / "distill_models").mkdir()
    save_file(_weights(cfg, seed=5), str(d / "distill_models" / "distill_model.safetensors"))
    key = "blocks.1.ffn.0.weight"
    up, down = torch.randn(64, 4), torch.randn(4, 32)
    lora = tmp_path / "lora.safetensors"
    save_file({f"diffusion_model.{key[:-7]}.lora_up.weight": up,
               f"diffusion_model.{key[:-7]}.lora_down.weight": down}, str(lora))
    run = DISTILL.replace(lora_configs=(LoraSpec(lora, 0.5),))
    assert find_dit_weights(d, run) == [d / "diffusion_pytorch_model.safetensors"]
    model = load_dit(d, run)
    expected = dict(base)
    expected[key] = base[key] + 0.5 * (up @ down)  # fp32, as the merge does (LoRA math is in test_lora.py)
    _assert_loaded(model, expected)


def test_nothing_found_says_what_and_where(tmp_path):
    cfg = _cfg()
    d = _model_dir(tmp_path, cfg)
    with pytest.raises(CheckpointError) as e:
        find_dit_weights(d, DISTILL)
    msg = str(e.value)
    assert str(d) in msg and "distill_models/distill_model.safetensors" in msg and "distill_model.pt" in msg
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model"):
        find_dit_weights(d, BASE)


def test_wrong_file_names_file_and_missing_keys(tmp_path):
    cfg = _cfg("i2v")
    d = _model_dir(tmp_path, cfg)
    (d / "distill_models").mkdir()
    f = d / "distill_models" / "distill_model.safetensors"
    save_file(_weights(_cfg("t2v")), str(f))  # a t2v checkpoint under an i2v config
    with pytest.raises(CheckpointError) as e:
        load_dit(d, DISTILL)
    msg = str(e.value)
    assert str(f) in msg
    assert "img_emb.proj.0.weight" in msg and "blocks.0.cross_attn.k_img.weight" in msg
    assert "missing 18 key(s)" in msg  # 8 img_emb + 2 blocks x (k_img w/b, v_img w/b, norm_k_img)
    assert "shape mismatch" in msg and "patch_embedding.weight" in msg  # in_dim 16 vs 36


def test_extra_key_is_named(tmp_path):
    cfg = _cfg()
    sd = _weights(cfg)
    sd["blocks.0.self_attn.extra.weight"] = torch.zeros(2)
    d = _model_dir(tmp_path, cfg)
    save_file(sd, str(d / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected 1 key\(s\): blocks.0.self_attn.extra.weight"):
        load_dit(d, BASE)


_executed: list[str] = []


def _mark_executed() -> list:
    _executed.append("ran")
    return []


class _NotWeights:
    def __reduce__(self):
        return (_mark_executed, ())


def test_pickle_that_is_not_weights_only_is_refused(tmp_path):
    f = tmp_path / "distill_model.pt"
    torch.save({"patch_embedding.weight": torch.zeros(1), "payload": _NotWeights()}, f)
    with pytest.raises(CheckpointError, match="weights-only") as e:
        load_state_dict_file(f)
    assert str(f) in str(e.value)
    assert _executed == []


def test_unknown_format_and_garbage(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x" * 100)
    with pytest.raises(CheckpointError, match="weights.bin"):
        load_state_dict_file(f)
    g = tmp_path / "broken.safetensors"
    g.write_bytes(b"x" * 100)
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        load_state_dict_file(g)
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "absent.pt")
