"""LoRA / diff merge: W += strength * scale * B @ A and the full-delta keys, checked in float64."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wan_distill.config import LoraSpec
from wan_distill.errors import CheckpointError
from wan_distill.loaders.lora import merge_loras, read_lora

D = 8


def _state_dict(dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {
        "blocks.0.self_attn.q.weight": (D, D), "blocks.0.self_attn.q.bias": (D,),
        "blocks.0.ffn.0.weight": (2 * D, D), "blocks.0.ffn.0.bias": (2 * D,),
        "blocks.0.modulation": (1, 6, D), "blocks.0.norm3.weight": (D,), "blocks.0.norm3.bias": (D,),
        "patch_embedding.weight": (D, 16, 1, 2, 2), "patch_embedding.bias": (D,),
        "head.head.weight": (64, D), "head.modulation": (1, 2, D),
    }
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}


def _save(tmp_path: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    p = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(p))
    return p


def _rand(*shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prefix", ["diffusion_model.", "model.", ""])
@pytest.mark.parametrize("up_sfx, down_sfx", [(".lora_up.weight", ".lora_down.weight"),
                                              (".lora_B.weight", ".lora_A.weight")])
def test_low_rank_pair(tmp_path, prefix, up_sfx, down_sfx):
    sd = _state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    B, A = _rand(2 * D, 3, seed=1), _rand(3, D, seed=2)
    lora = _save(tmp_path, "l.safetensors", {prefix + "blocks.0.ffn.0" + up_sfx: B, prefix + "blocks.0.ffn.0" + down_sfx: A})
    merge_loras(sd, [LoraSpec(lora, 0.7)])
    expected = before["blocks.0.ffn.0.weight"].double() + 0.7 * B.double() @ A.double()
    torch.testing.assert_close(sd["blocks.0.ffn.0.weight"].double(), expected, atol=1e-5, rtol=1e-6)
    assert not torch.equal(sd["blocks.0.ffn.0.weight"], before["blocks.0.ffn.0.weight"])
    for k in sd:
        if k != "blocks.0.ffn.0.weight":
            assert torch.equal(sd[k], before[k]), k


def test_alpha_scales_by_alpha_over_rank(tmp_path):
    sd = _state_dict()
    w0 = sd["blocks.0.self_attn.q.weight"].clone()
    B, A = _rand(D, 4, seed=3), _rand(4, D, seed=4)
    lora = _save(tmp_path, "l.safetensors", {
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": B,
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": A,
        "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(8.0)})
    merge_loras(sd, [LoraSpec(lora, 1.0)])
    expected = w0.double() + (8.0 / 4) * B.double() @ A.double()  # rank 4, alpha 8 -> x2
    torch.testing.assert_close(sd["blocks.0.self_attn.q.weight"].double(), expected, atol=1e-5, rtol=1e-6)


def test_diff_keys_and_5d_targets(tmp_path):
    sd = _state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    diffs = {
        "diffusion_model.blocks.0.diff_m": ("blocks.0.modulation", _rand(1, 6, D, seed=5)),
        "diffusion_model.head.diff_m": ("head.modulation", _rand(1, 2, D, seed=6)),
        "diffusion_model.blocks.0.norm3.diff": ("blocks.0.norm3.weight", _rand(D, seed=7)),
        "diffusion_model.blocks.0.norm3.diff_b": ("blocks.0.norm3.bias", _rand(D, seed=8)),
        "diffusion_model.blocks.0.self_attn.q.diff_b": ("blocks.0.self_attn.q.bias", _rand(D, seed=9)),
        "diffusion_model.head.head.diff": ("head.head.weight", _rand(64, D, seed=10)),
        "diffusion_model.patch_embedding.diff": ("patch_embedding.weight", _rand(D, 16, 1, 2, 2, seed=11)),
    }
    # a low-rank update of the 5-D conv weight too (flattened [D, 64] = up [D, r] @ down [r, 64])
    up, down = _rand(D, 2, seed=12), _rand(2, 16 * 4, seed=13)
    lora = _save(tmp_path, "d.safetensors", {k: v for k, (_, v) in diffs.items()})
    lora2 = _save(tmp_path, "p.safetensors", {"patch_embedding.lora_up.weight": up,
                                              "patch_embedding.lora_down.weight": down})
    merge_loras(sd, [LoraSpec(lora, 0.5), LoraSpec(lora2, 2.0)])
    for target, delta in diffs.values():
        expected = before[target].double() + 0.5 * delta.double()
        if target == "patch_embedding.weight":
            expected = expected + 2.0 * (up.double() @ down.double()).reshape(D, 16, 1, 2, 2)
        torch.testing.assert_close(sd[target].double(), expected, atol=1e-5, rtol=1e-6)
    assert torch.equal(sd["blocks.0.ffn.0.weight"], before["blocks.0.ffn.0.weight"])


def test_two_loras_in_order_with_strengths(tmp_path):
    sd = _state_dict()
    w0 = sd["blocks.0.ffn.0.weight"].clone()
    B1, A1, B2, A2 = _rand(2 * D, 2, seed=20), _rand(2, D, seed=21), _rand(2 * D, 5, seed=22), _rand(5, D, seed=23)
    l1 = _save(tmp_path, "a.safetensors", {"blocks.0.ffn.0.lora_B.weight": B1, "blocks.0.ffn.0.lora_A.weight": A1})
    l2 = _save(tmp_path, "b.safetensors", {"diffusion_model.blocks.0.ffn.0.lora_up.weight": B2,
                                           "diffusion_model.blocks.0.ffn.0.lora_down.weight": A2})
    merge_loras(sd, [LoraSpec(l1, 1.0), LoraSpec(l2, -0.25)])
    expected = w0.double() + B1.double() @ A1.double() - 0.25 * B2.double() @ A2.double()
    torch.testing.assert_close(sd["blocks.0.ffn.0.weight"].double(), expected, atol=1e-5, rtol=1e-6)


def test_bf16_target_merged_in_fp32_then_cast(tmp_path):
    sd = _state_dict(torch.bfloat16)
    w0 = sd["blocks.0.ffn.0.weight"].clone()
    B, A = _rand(2 * D, 3, seed=30).bfloat16(), _rand(3, D, seed=31).bfloat16()
    lora = _save(tmp_path, "l.safetensors", {"blocks.0.ffn.0.lora_up.weight": B, "blocks.0.ffn.0.lora_down.weight": A})
    merge_loras(sd, [LoraSpec(lora, 1.0)])
    assert sd["blocks.0.ffn.0.weight"].dtype == torch.bfloat16
    expected = (w0.float() + B.float() @ A.float()).bfloat16()  # fp32 math, one rounding at the end
    assert torch.equal(sd["blocks.0.ffn.0.weight"], expected)
    assert not torch.equal(expected, w0 + B @ A)  # bf16 math would differ: the check can tell them apart


def test_unknown_keys_are_listed_and_nothing_changes(tmp_path):
    sd = _state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    lora = _save(tmp_path, "bad.safetensors", {
        "diffusion_model.blocks.0.ffn.0.lora_up.weight": _rand(2 * D, 2), "diffusion_model.blocks.0.ffn.0.lora_down.weight": _rand(2, D),
        "diffusion_model.blocks.7.self_attn.q.lora_up.weight": _rand(D, 2), "diffusion_model.blocks.7.self_attn.q.lora_down.weight": _rand(2, D),
        "diffusion_model.blocks.0.cross_attn.k_img.diff_b": _rand(D)})
    with pytest.raises(CheckpointError) as e:
        merge_loras(sd, [LoraSpec(lora, 1.0)])
    msg = str(e.value)
    assert "bad.safetensors" in msg and "2 key(s) match no parameter" in msg
    assert "blocks.7.self_attn.q.weight" in msg and "blocks.0.cross_attn.k_img.bias" in msg
    assert all(torch.equal(sd[k], before[k]) for k in sd)  # checked before any change


def test_unknown_forms_and_bad_shapes(tmp_path):
    sd = _state_dict()
    odd = _save(tmp_path, "odd.safetensors", {"blocks.0.self_attn.q.lora_down.weight": _rand(2, D),
                                              "blocks.0.ffn.0.dora_scale": _rand(1, D)})
    with pytest.raises(CheckpointError, match="lora_down.weight.*dora_scale|dora_scale.*lora_down.weight"):
        merge_loras(sd, [LoraSpec(odd, 1.0)])
    shape = _save(tmp_path, "shape.safetensors", {"blocks.0.ffn.0.lora_up.weight": _rand(D, 2),
                                                  "blocks.0.ffn.0.lora_down.weight": _rand(2, D),
                                                  "blocks.0.diff_m": _rand(6, D)})
    with pytest.raises(CheckpointError, match="2 key\\(s\\) with mismatched shapes") as e:
        merge_loras(sd, [LoraSpec(shape, 1.0)])
    assert "blocks.0.ffn.0.weight" in str(e.value) and "blocks.0.modulation" in str(e.value)


def test_read_lora_strips_prefixes(tmp_path):
    p = _save(tmp_path, "l.safetensors", {"diffusion_model.a.diff": torch.zeros(1), "model.b.diff": torch.zeros(1),
                                          "c.diff": torch.zeros(1)})
    assert set(read_lora(p)) == {"a.diff", "b.diff", "c.diff"}
    pt = tmp_path / "l.pt"
    torch.save({"diffusion_model.head.diff_m": torch.ones(1, 2, D)}, pt)
    sd = _state_dict()
    h0 = sd["head.modulation"].clone()
    merge_loras(sd, [LoraSpec(pt, 3.0)])
    torch.testing.assert_close(sd["head.modulation"], h0 + 3.0)
