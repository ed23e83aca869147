"""Our in-process pipeline vs diffusers' WanPipeline / WanImageToVideoPipeline on the same tiny weights.

Both run 4 distilled steps without CFG from the same initial noise; diffusers' FlowMatchEulerDiscreteScheduler is
handed our sigmas and our ``distill_update="euler"`` is the same Euler step, so the two are numerically equivalent:
the remaining differences come from float order and from diffusers' float32 time sinusoid (ours is float64, as Wan's).
The builders live in bench/diffusers_side_by_side.py (also the timing benchmark).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from wan_distill.pipeline import WanPipeline
from wan_distill.schedulers.step_distill import StepDistillScheduler

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import diffusers_side_by_side as sbs  # noqa: E402

pytest.importorskip("diffusers")

# Observed on the tiny demo model: latents 1e-5 (values up to ~6), float video 2e-5; uint8 at most 1 (a value on a
# rounding boundary), on < 0.1 % of the values. The tolerances leave 10x room and still catch any real mismatch
# (a wrong sigma, timestep, noise, mask or weight gives differences of order 1e-1 and more).
LATENT_TOL = 2e-4
VIDEO_TOL = 2e-4
MAX_DIFFERING_UINT8 = 0.005


def check(result: sbs.Equivalence) -> None:
    assert result.latents_max_abs < LATENT_TOL, result
    assert result.video_max_abs < VIDEO_TOL, result
    assert result.frames_max_abs <= 1, result
    assert result.frames_diff_fraction < MAX_DIFFERING_UINT8, result


def test_diffusers_scheduler_follows_our_sigmas():
    run = sbs.distill_run(32, 48, 5)
    ours = StepDistillScheduler(run.denoising_step_list, run.sample_shift, update="euler")
    sched = sbs.fixed_sigma_scheduler(sbs.distill_sigmas(run))
    sched.set_timesteps(4)
    assert torch.equal(sched.sigmas, torch.cat([ours.sigmas, torch.zeros(1)]))
    assert torch.equal(sched.timesteps, ours.timesteps)
    assert sched.sigmas.tolist()[:4] == pytest.approx([1.0, 0.9375, 0.8333333, 0.625])
    # one Euler step equals ours up to float order (ours: x0 = x - s v, then x0 + s' v)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(16, 2, 4, 6, generator=g), torch.randn(16, 2, 4, 6, generator=g)
    sched.set_begin_index(0)
    for i, t in enumerate(sched.timesteps):
        theirs = sched.step(v, t, x, return_dict=False)[0]
        torch.testing.assert_close(theirs, ours.step(i, x, v, ours.new_state()), rtol=0, atol=1e-6)


def test_t2v_matches_diffusers(tiny_models):
    h, w, f = 32, 48, 5
    run = sbs.distill_run(h, w, f)
    ours = WanPipeline.from_model_dir(tiny_models["t2v"], run, device="cpu")
    theirs = sbs.build_diffusers(tiny_models["t2v"], run)
    check(sbs.compare("t2v", ours, theirs, seed=3, height=h, width=w, num_frames=f))
    # with Wan's float64 time sinusoid the rest is float order: 10x closer again
    with sbs.diffusers_float64_sinusoid()(theirs):
        close = sbs.compare("t2v", ours, theirs, seed=3, height=h, width=w, num_frames=f)
    assert close.latents_max_abs < 2e-5, close


@pytest.fixture(scope="module")
def small_clip_i2v(tmp_path_factory):
    """The tiny I2V model with a 64 px CLIP (patch 16, 17 tokens) instead of 224 px, so that image == video size ==
    CLIP size stays cheap (the benchmark runs the demo model itself at 224x224)."""
    from wan_distill.loaders.layout import CLIP_FILE
    from wan_distill.tiny import TinySpec, write_model_dir, write_tiny_clip

    spec = TinySpec()
    root = write_model_dir(tmp_path_factory.mktemp("i2v_clip64") / "Wan2.1-I2V-tiny", "i2v", spec, seed=100)
    write_tiny_clip(root / CLIP_FILE, width=spec.clip_width, layers=spec.clip_layers, mlp=spec.clip_mlp, patch=16,
                    image_size=64, seed=3)
    return root


def test_i2v_matches_diffusers(small_clip_i2v):
    # image == video size == CLIP size: every resize is the identity on both sides (see clip_image_processor)
    size, f = 64, 5
    run = sbs.distill_run(size, size, f)
    ours = WanPipeline.from_model_dir(small_clip_i2v, run, device="cpu")
    theirs = sbs.build_diffusers(small_clip_i2v, run)
    check(sbs.compare("i2v", ours, theirs, seed=5, height=size, width=size, num_frames=f,
                      image=sbs.png_bytes(size, size)))


def test_to_uint8_matches_our_quantisation():
    v = torch.linspace(-1, 1, 1001)
    ours = v.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    assert np.array_equal(sbs.to_uint8(((v / 2 + 0.5).clamp(0, 1)).numpy()), ours)
