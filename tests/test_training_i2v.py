"""Toy I2V training (issue 12): every I2V stage runs in the recipe's smoke mode, a run is reproducible from its seeds,
the I2V conditioning used in training is the serving pipeline's for the exported root, the written I2V root loads
strictly with the project's loaders and configs (and generates through WanPipeline.image_to_video), the I2V teacher
starts as exactly the T2V teacher, and the I2V LoRA has LightX2V's key format."""
from __future__ import annotations

import hashlib
import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from wan_distill.config import LoraSpec, RunConfig
from wan_distill.loaders.checkpoint import find_dit_weights, load_dit
from wan_distill.loaders.image_encoder import load_image_encoder
from wan_distill.loaders.lora import merge_loras
from wan_distill.pipeline import WanPipeline
from wan_training import data
from wan_training.common import ImageConditioning, ToySpec, condition_on_first_frames, image_conditioner, new_dit
from wan_training.distill import DistillConfig, dmd_loss
from wan_training.export import ROOT_NAMES, extract_lora, lora_file
from wan_training.recipe import Recipe, first_frames, run
from wan_training.teacher import i2v_init

from conftest import ROOT

TOY = ROOT / "configs" / "toy"
RUNS = {name: RunConfig.from_json(TOY / f"wan_i2v_{file}.json") for name, file in (
    ("distill_4step", "distill_4step_toy"), ("distill_4step_lora", "distill_4step_toy_lora"),
    ("baseline_50step_cfg", "baseline_50step_cfg_toy"))}
I2V_FILES = ["distill_models/distill_model.safetensors", "loras/" + lora_file(32, "i2v"),
             "diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"]


@pytest.fixture(scope="module")
def smoke_outs(tmp_path_factory):
    """The smoke recipe twice with the same seeds and once with another I2V teacher seed -> {name: out dir}."""
    recipe = Recipe().smoke()
    runs = (("a", recipe), ("b", recipe), ("other", replace(recipe, i2v_teacher=replace(recipe.i2v_teacher, seed=1))))
    out = {}
    for name, r in runs:
        out[name] = tmp_path_factory.mktemp(f"i2v_smoke_{name}")
        run(r, out[name], log=lambda msg: None)
    return out


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_i2v_smoke_is_deterministic_by_seed(smoke_outs):
    a, b, other = (smoke_outs[k] / ROOT_NAMES["i2v"] for k in ("a", "b", "other"))
    for f in I2V_FILES:
        assert _digest(a / f) == _digest(b / f), f
    # another I2V teacher seed changes the I2V models, not the T2V ones
    assert _digest(a / I2V_FILES[0]) != _digest(other / I2V_FILES[0])
    t2v = "distill_models/distill_model.safetensors"
    assert _digest(smoke_outs["a"] / ROOT_NAMES["t2v"] / t2v) == _digest(smoke_outs["other"] / ROOT_NAMES["t2v"] / t2v)


def test_i2v_root_loads_strictly_and_generates_through_the_serving_pipeline(smoke_outs):
    root = smoke_outs["a"] / ROOT_NAMES["i2v"]
    assert find_dit_weights(root, RUNS["distill_4step"]) == [root / "distill_models" / "distill_model.safetensors"]
    student = load_dit(root, RUNS["distill_4step"])
    teacher = load_dit(root, RUNS["baseline_50step_cfg"]).state_dict()
    merged = load_dit(root, RUNS["distill_4step_lora"]).state_dict()
    assert student.cfg.is_i2v and student.cfg.in_dim == 36 and "img_emb.proj.1.weight" in teacher
    student = student.state_dict()
    gap = sum((student[k] - teacher[k]).pow(2).sum() for k in student)
    rest = sum((student[k] - merged[k]).pow(2).sum() for k in student)
    assert gap > 0 and rest < gap                                # the LoRA moves the teacher towards the student
    assert load_image_encoder(root).num_tokens == 257            # the CLIP file is there, with Wan's 257 tokens
    buf = io.BytesIO()
    Image.fromarray(first_frames(5000, 1)[0]).save(buf, format="PNG")
    for run_cfg in RUNS.values():
        pipe = WanPipeline.from_model_dir(root, run_cfg, "cpu")
        out = pipe.image_to_video(buf.getvalue(), "a red circle moving left", seed=3)
        assert out.frames.shape == (data.NUM_FRAMES, data.HEIGHT, data.WIDTH, 3)


def test_training_conditioning_is_the_served_conditioning_of_the_root(smoke_outs):
    """What the I2V stages trained on = what WanPipeline computes for the same first frame sent as a PNG."""
    root = smoke_outs["a"] / ROOT_NAMES["i2v"]
    frames = first_frames(Recipe().data_seed, 2)
    cond = condition_on_first_frames(image_conditioner(root), frames, data.NUM_FRAMES)
    pipe = WanPipeline.from_model_dir(root, RUNS["distill_4step"], "cpu")
    for i, frame in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        served = pipe.conditioner(pipe.conditioner.decode(buf.getvalue()), data.HEIGHT * data.WIDTH, data.NUM_FRAMES)
        assert torch.equal(served.clip_fea, cond.clip_fea[i]) and torch.equal(served.y, cond.y[i])
    assert cond.y.shape == (2, 20, 3, 4, 4) and cond.clip_fea.shape == (2, 257, ToySpec().dit_config().image_dim)
    assert torch.equal(cond.y[:, :4, 0], torch.ones(2, 4, 4, 4)) and cond.y[:, :4, 1:].abs().max() == 0   # the mask
    assert not torch.equal(cond.y[0, 4:, 0], cond.y[1, 4:, 0])  # the first-frame latent depends on the image
    assert not torch.equal(cond.clip_fea[0], cond.clip_fea[1])


def test_i2v_lora_has_lightx2v_keys(smoke_outs):
    root = smoke_outs["a"] / ROOT_NAMES["i2v"]
    lora = load_file(str(root / "loras" / lora_file(32, "i2v")))
    base = load_dit(root, RUNS["baseline_50step_cfg"]).state_dict()
    assert all(k.startswith("diffusion_model.") for k in lora)
    ups = {k[len("diffusion_model."):-len(".lora_up.weight")] for k in lora if k.endswith(".lora_up.weight")}
    downs = {k[len("diffusion_model."):-len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")}
    assert ups == downs == {k[:-len(".weight")] for k, v in base.items() if k.endswith(".weight") and v.ndim == 2}
    assert {"blocks.0.cross_attn.k_img", "blocks.0.cross_attn.v_img", "img_emb.proj.1"} <= ups   # the I2V layers
    assert lora["diffusion_model.patch_embedding.diff"].shape[1] == 36      # the 5-D patch embedding: a full delta
    assert any(k.endswith(".diff_b") for k in lora) and any(k.endswith(".diff_m") for k in lora)
    r = lora["diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight"].shape[1]
    assert r == min(32, base["blocks.0.cross_attn.k_img.weight"].shape[0])


def test_i2v_teacher_starts_as_the_t2v_teacher_whatever_the_image():
    spec = ToySpec(dit_dim=32, dit_ffn=64, dit_layers=2)
    t2v = new_dit(spec, 0).eval()
    i2v = i2v_init(t2v, spec, seed=5).eval()
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 16, 2, 4, 4, generator=g), torch.randn(2, 7, spec.dit_config().text_dim, generator=g)
    t = torch.tensor([900.0, 300.0])
    image = dict(clip_fea=torch.randn(2, 257, spec.dit_config().image_dim, generator=g),
                 y=torch.randn(2, 20, 2, 4, 4, generator=g))
    with torch.no_grad():
        torch.testing.assert_close(i2v(x, t, ctx, **image), t2v(x, t, ctx), atol=1e-5, rtol=1e-5)
        # ... and it can learn to use the image: its image weights are live (a fresh v_img changes the output)
        fresh = new_dit(spec, 5, task="i2v")
        for name, p in i2v.named_parameters():
            if ".v_img." in name:
                p.copy_(dict(fresh.named_parameters())[name])
        assert not torch.allclose(i2v(x, t, ctx, **image), t2v(x, t, ctx), atol=1e-3)


def test_i2v_dmd_gradient_follows_the_image():
    """The real and fake scores see the image: with the critic = teacher the DMD gradient vanishes only when both
    get the same image conditioning."""
    spec = ToySpec(dit_dim=32, dit_ffn=64, dit_layers=1)
    teacher = new_dit(spec, 0, task="i2v").eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 16, 2, 2, 2, generator=g)
    cond, uncond = torch.randn(2, 5, spec.dit_config().text_dim, generator=g), torch.zeros(2, 5, 32)
    image = ImageConditioning(torch.randn(2, 257, 160, generator=g), torch.randn(2, 20, 2, 2, 2, generator=g))
    cfg = DistillConfig(guidance_scale=1.0)
    same = dmd_loss(sample, teacher, teacher, cond, uncond, cfg, torch.Generator().manual_seed(0), image)
    assert same.item() < 1e-12            # (the CFG teacher runs both rows in one batch: rounding only)

    class OtherImage(torch.nn.Module):          # the critic = the teacher given the other sample's image
        def forward(self, x, t, c, clip_fea, y):
            return teacher(x, t, c, clip_fea=clip_fea.flip(0), y=y.flip(0))

    other = dmd_loss(sample, teacher, OtherImage(), cond, uncond, cfg, torch.Generator().manual_seed(0), image)
    assert other.item() > 1e-6


def test_lora_of_an_i2v_dit_reproduces_it_at_full_rank(tmp_path):
    spec = ToySpec(dit_dim=32, dit_ffn=64, dit_layers=1)
    base, tuned = new_dit(spec, 0, task="i2v").state_dict(), new_dit(spec, 1, task="i2v").state_dict()
    lora, errors = extract_lora(base, tuned, rank=1024)
    assert errors["relative_error"] < 1e-5
    save_file(lora, str(tmp_path / "full.safetensors"))
    merged = dict(base)
    merge_loras(merged, [LoraSpec(tmp_path / "full.safetensors", 1.0)])
    assert max((merged[k] - tuned[k]).abs().max().item() for k in tuned) < 1e-5


def test_i2v_evaluation_prompts_and_scoring_run_on_the_exported_root(smoke_outs):
    from wan_training.classifier import AttributeClassifier
    from wan_training.evaluate import METHODS, Generator, i2v_prompts, real_features, score

    prompts = i2v_prompts([100, 101])
    assert len(prompts) == 2 * len(data.COMBOS) and len({p.image for p in prompts}) == len(prompts)
    p = prompts[7]
    clip = data.make_clip(*p.image, combo=(p.colour, p.shape, p.motion))
    assert clip.caption == p.text and np.array_equal(p.first_frame, data.to_uint8_frames(clip.video)[0])
    assert p.image[0] != Recipe().data_seed                      # held out: not the training stream
    root = smoke_outs["a"] / ROOT_NAMES["i2v"]
    gen = Generator(root, *(TOY / f"wan_i2v_{f}.json" for f in (
        "distill_4step_toy", "distill_4step_toy_lora", "baseline_50step_cfg_toy")))
    engines = gen.engines()
    assert list(engines) == list(METHODS) and gen.is_i2v
    frames = gen.videos(engines["student 4-step"], prompts[:2])
    pipe = WanPipeline.from_model_dir(root, RUNS["distill_4step"], "cpu")
    np.testing.assert_array_equal(frames[0], pipe.image_to_video(prompts[0].image_png(), prompts[0].text,
                                                                 seed=prompts[0].seed).frames)
    torch.manual_seed(0)
    clf = AttributeClassifier().eval()
    row = score(clf, frames, prompts[:2], real_features(clf, 3000, 8))
    assert 0 <= row["accuracy"] <= row["colour"] <= 1 and np.isfinite(row["frechet"])


@pytest.fixture(scope="module")
def served_toy_i2v(tiny_models, tmp_path_factory):
    """The trained toy I2V root served by tritonserver (wan_i2v only): frames of the demo's I2V prompts."""
    import sys
    sys.path.insert(0, str(ROOT / "scripts"))
    from demo import TOY_I2V_ROOT, TOY_ROOT, has_toy_root, toy_env, toy_i2v_prompts
    from triton_server import TritonServer
    from wan_client import WanClient

    if not has_toy_root(TOY_I2V_ROOT):
        pytest.skip("trained toy I2V model not in training/models (python -m wan_training.recipe)")
    env = {**toy_env(TOY_ROOT, tiny_models["i2v"], i2v_root=TOY_I2V_ROOT), "WAN_NUM_THREADS": "1"}
    log = tmp_path_factory.mktemp("toy_i2v_server") / "server.log"
    prompts = toy_i2v_prompts(42)[:2]
    with TritonServer(ROOT / "model_repository", env=env, log_path=log, ready_timeout_s=300,
                      extra_args=["--model-control-mode=explicit", "--load-model=wan_i2v"]) as srv:
        with WanClient(srv.grpc_url, timeout_s=300) as client:
            return TOY_I2V_ROOT, [(p, client.i2v(p.image_png(), p.text, seed=p.seed, return_frames=True).frames)
                                  for p in prompts]


@pytest.mark.server
def test_served_trained_i2v_demo_is_the_in_process_student_and_follows_colour_and_motion(served_toy_i2v):
    from wan_training.classifier import predict
    from wan_training.evaluate import load_classifier

    root, served = served_toy_i2v
    pipe = WanPipeline.from_model_dir(root, RUNS["distill_4step"], "cpu")
    classifier = load_classifier(root.parent / "attribute_classifier.safetensors")
    for prompt, frames in served:
        np.testing.assert_array_equal(frames, pipe.image_to_video(prompt.image_png(), prompt.text,
                                                                  seed=prompt.seed).frames)
        labels, _ = predict(classifier, data.from_uint8_frames(frames)[None])
        assert (labels[0, 0].item(), labels[0, 2].item()) == (prompt.labels[0], prompt.labels[2]), prompt.text
