"""Toy training recipe (issue 12): clips are deterministic by seed, every stage runs (smoke), a run is reproducible
from its seeds, the written root loads strictly with the project's loaders and configs, the LoRA is the student
minus the teacher, DMD's gradient vanishes when the fake score equals the real one, and the served trained demo
video for a fixed prompt is classified as that prompt."""
from __future__ import annotations

import copy
import hashlib
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from wan_distill.config import LoraSpec, RunConfig
from wan_distill.loaders.checkpoint import find_dit_weights, load_dit
from wan_distill.loaders.lora import merge_loras
from wan_distill.loaders.text_encoder import load_text_encoder
from wan_distill.loaders.vae import load_vae_from_dir
from wan_distill.models.vae import WanVAE
from wan_training import data
from wan_training.common import ToySpec, new_dit
from wan_training.distill import DistillConfig, dmd_loss
from wan_training.export import ROOT_NAME, extract_lora, lora_file
from wan_training.recipe import Recipe, run
from wan_training.vae import reconstruction_psnr, standardise_latents_

from conftest import ROOT

TOY = ROOT / "configs" / "toy"
RUNS = {name: RunConfig.from_json(TOY / f"{name}.json") for name in (
    "wan_t2v_distill_4step_toy", "wan_t2v_distill_4step_toy_lora", "wan_t2v_baseline_50step_cfg_toy")}
RUNS = dict(zip(("distill_4step", "distill_4step_lora", "baseline_50step_cfg"), RUNS.values()))


def test_clips_are_deterministic_by_seed_and_balanced():
    a, b, other = data.make_clip(7, 3), data.make_clip(7, 3), data.make_clip(8, 3)
    assert torch.equal(a.video, b.video) and not torch.equal(a.video, other.video)
    assert a.video.shape == (3, data.NUM_FRAMES, data.HEIGHT, data.WIDTH)
    assert float(a.video.min()) >= -1 and float(a.video.max()) <= 1
    clips = [data.make_clip(0, i) for i in range(len(data.COMBOS))]
    assert {c.caption for c in clips} == set(data.CAPTIONS) and len(data.CAPTIONS) == 60
    assert data.make_clip(0, 0).caption == "a red circle moving left"
    # motion is visible: the shape's colour centroid moves left over the clip
    left = data.make_clip(0, 0).video
    mass = (left[0] - left[2]).clamp_min(0)                      # red minus blue: the red shape
    xs = torch.arange(data.WIDTH, dtype=torch.float32)
    cx = (mass.sum(1) * xs).sum(-1) / mass.sum((1, 2))
    assert cx[-1] < cx[0] - 5


def test_vae_latent_standardisation_is_a_pure_reparametrisation():
    torch.manual_seed(0)
    vae = WanVAE(dim=4).eval()
    videos, _ = data.make_batch(5, 0, 3, num_frames=5, height=16, width=16)
    before = vae.decode(vae.encode(videos))
    mean, std = standardise_latents_(vae, videos)
    z = vae.encode(videos)
    assert torch.allclose(vae.decode(z), before, atol=1e-4)
    assert z.mean(dim=(0, 2, 3, 4)).abs().max() < 1e-3 and (z.std(dim=(0, 2, 3, 4)) - 1).abs().max() < 1e-2
    assert not torch.allclose(std, torch.ones_like(std))          # the fold did change the parametrisation
    assert 0 < reconstruction_psnr(vae, videos) < 60


def test_dmd_gradient_is_zero_when_fake_score_equals_real_score():
    spec = ToySpec(dit_dim=32, dit_ffn=64, dit_layers=1)
    teacher = new_dit(spec, 0).eval().requires_grad_(False)
    sample = torch.randn(2, 16, 2, 2, 2, requires_grad=True)
    cond, uncond = torch.randn(2, 5, spec.dit_config().text_dim), torch.zeros(2, 5, spec.dit_config().text_dim)
    cfg = DistillConfig(guidance_scale=1.0)                      # real score = conditional teacher
    loss = dmd_loss(sample, teacher, copy.deepcopy(teacher), cond, uncond, cfg, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() == 0 and sample.grad.abs().max() == 0
    other = new_dit(spec, 1).eval().requires_grad_(False)
    sample.grad = None
    loss = dmd_loss(sample, teacher, other, cond, uncond, cfg, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0 and sample.grad.abs().max() > 0


def test_lora_is_student_minus_teacher():
    spec = ToySpec(dit_dim=32, dit_ffn=64, dit_layers=1)
    base = new_dit(spec, 0).state_dict()
    tuned = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(i))
             for i, (k, v) in enumerate(base.items())}
    full, errors = extract_lora(base, tuned, rank=256)
    assert errors["relative_error"] < 1e-5
    low, low_errors = extract_lora(base, tuned, rank=4)
    assert 0.1 < low_errors["relative_error"] < 1
    assert all(k.startswith("diffusion_model.") for k in full)
    assert any(k.endswith(".lora_up.weight") for k in full) and any(k.endswith(".diff_m") for k in full)
    assert any(k.endswith(".diff_b") for k in full) and any(k.endswith(".diff") for k in full)


@pytest.fixture(scope="module")
def smoke_roots(tmp_path_factory):
    """The smoke recipe twice with the same seeds and once with another teacher seed."""
    recipe = Recipe().smoke()
    out = {}
    for name, r in (("a", recipe), ("b", recipe), ("other", replace(recipe, teacher=replace(recipe.teacher, seed=1)))):
        path = tmp_path_factory.mktemp(f"smoke_{name}")
        run(r, path, log=lambda msg: None)
        out[name] = path / ROOT_NAME
    return out


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_smoke_recipe_is_deterministic_by_seed(smoke_roots):
    files = ["distill_models/distill_model.safetensors", "Wan2.1_VAE.pth", "loras/" + lora_file(32),
             "diffusion_pytorch_model-00001-of-00002.safetensors"]
    for f in files:
        assert _digest(smoke_roots["a"] / f) == _digest(smoke_roots["b"] / f), f
    a = load_dit(smoke_roots["a"], RUNS["distill_4step"]).state_dict()
    other = load_dit(smoke_roots["other"], RUNS["distill_4step"]).state_dict()
    assert any(not torch.equal(a[k], other[k]) for k in a)


def test_smoke_root_loads_strictly_with_the_project_configs(smoke_roots):
    root = smoke_roots["a"]
    assert find_dit_weights(root, RUNS["distill_4step"]) == [root / "distill_models" / "distill_model.safetensors"]
    student = load_dit(root, RUNS["distill_4step"]).state_dict()
    teacher = load_dit(root, RUNS["baseline_50step_cfg"]).state_dict()
    merged = load_dit(root, RUNS["distill_4step_lora"]).state_dict()
    # the LoRA moves the teacher towards the student: the merged model is closer to the student than the teacher is
    gap = sum((student[k] - teacher[k]).pow(2).sum() for k in student)
    rest = sum((student[k] - merged[k]).pow(2).sum() for k in student)
    assert gap > 0 and rest < gap
    # a full-rank LoRA merged by the project's loader reproduces the student exactly
    full, _ = extract_lora(teacher, student, rank=1024)
    exact = dict(teacher)
    from safetensors.torch import save_file
    path = root / "loras" / "full.safetensors"
    save_file(full, str(path))
    merge_loras(exact, [LoraSpec(path, 1.0)])
    assert max((exact[k] - student[k]).abs().max().item() for k in student) < 1e-5
    assert load_vae_from_dir(root).dim == ToySpec().vae_dim
    assert load_text_encoder(root, text_len=ToySpec().text_len).encode(["a red circle moving left"])[0].shape[1] == 32


DEMO_PROMPTS = ("a red circle moving left", "a blue square moving up")


@pytest.fixture(scope="module")
def served_toy_frames(tiny_models, tmp_path_factory):
    """The trained toy root served by tritonserver (wan_t2v only): frames of DEMO_PROMPTS at seed 42."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from demo import TOY_ROOT, has_toy_root, toy_env
    from triton_server import TritonServer
    from wan_client import WanClient

    if not has_toy_root(TOY_ROOT):
        pytest.skip("trained toy models not in training/models (python -m wan_training.recipe)")
    env = {**toy_env(TOY_ROOT, tiny_models["i2v"]), "WAN_NUM_THREADS": "1"}
    log = tmp_path_factory.mktemp("toy_server") / "server.log"
    with TritonServer(ROOT / "model_repository", env=env, log_path=log, ready_timeout_s=300,
                      extra_args=["--model-control-mode=explicit", "--load-model=wan_t2v"]) as srv:
        with WanClient(srv.grpc_url, timeout_s=300) as client:
            return TOY_ROOT, {p: client.t2v(p, seed=42, return_frames=True).frames for p in DEMO_PROMPTS}


@pytest.mark.server
def test_served_trained_demo_is_the_in_process_student(served_toy_frames):
    from wan_distill.pipeline import WanPipeline

    root, served = served_toy_frames
    pipe = WanPipeline.from_model_dir(root, RUNS["distill_4step"], "cpu")
    for prompt, frames in served.items():
        assert frames.shape == (data.NUM_FRAMES, data.HEIGHT, data.WIDTH, 3)
        assert frames.std() > 5                                   # a picture, not a flat frame
        np.testing.assert_array_equal(frames, pipe.text_to_video(prompt, seed=42).frames)


def _classified(root, frames) -> tuple[str, str, str]:
    from wan_training.classifier import predict
    from wan_training.evaluate import load_classifier

    labels, _ = predict(load_classifier(root.parent / "attribute_classifier.safetensors"),
                        data.from_uint8_frames(frames)[None])
    return list(data.COLOURS)[labels[0, 0]], data.SHAPES[labels[0, 1]], list(data.MOTIONS)[labels[0, 2]]


@pytest.mark.server
def test_served_trained_demo_has_the_prompts_colour_and_motion(served_toy_frames):
    root, served = served_toy_frames
    for prompt, frames in served.items():
        colour, _, motion = _classified(root, frames)
        assert (colour, motion) == tuple(prompt.split()[i] for i in (1, -1)), prompt


@pytest.mark.server
@pytest.mark.xfail(reason="the T2V student gets the shape right for 76 % of prompts (bench/results/training.md); "
                          "at seed 42 one of the two demo prompts is among the misses", strict=False)
def test_served_trained_demo_has_the_prompts_shape(served_toy_frames):
    root, served = served_toy_frames
    for prompt, frames in served.items():
        assert _classified(root, frames)[1] == prompt.split()[2], prompt
