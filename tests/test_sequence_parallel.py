"""Ulysses sequence parallel (gloo, CPU): a group of 2 or 3 processes gives the single-process DiT's output.

Measured on this machine with the 6-head tiny DiT below: max |SP - single| = 0.0 for every case (same fp32 kernels
on each token row); the tests allow 1e-5 absolute + 1e-5 relative (outputs are O(1)), the fp32 rounding of a
reordered reduction, so a different BLAS blocking for L/P rows still passes while any mis-sharded token does not.
"""
from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from wan_distill.config import ConfigError, RunConfig
from wan_distill.parallel import SequenceParallelDiT, check_sp_geometry, ulysses_bytes_per_forward, valid_sp_sizes
from wan_distill.engine import DenoiseEngine
from wan_distill.pipeline import load_dit_for_run, load_run_dit
from wan_distill.tiny import write_model_dir

from sp_helpers import CPU, SPEC, inputs, process_gone

ATOL = RTOL = 1e-5


@pytest.fixture(scope="session")
def sp_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp")
    return {task: write_model_dir(root / task, task, SPEC, seed=seed) for task, seed in (("t2v", 0), ("i2v", 100))}


@pytest.fixture(scope="module")
def references(sp_models):
    return {task: load_run_dit(path, RunConfig(), CPU) for task, path in sp_models.items()}


@pytest.fixture(scope="module", params=[("t2v", 2), ("t2v", 3), ("i2v", 2), ("i2v", 3)], ids=lambda p: f"{p[0]}-sp{p[1]}")
def group(request, sp_models):
    task, size = request.param
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 1 thread per rank on a small CPU host (the workers copy the caller's count)
    dit = load_dit_for_run(sp_models[task], RunConfig(sp_size=size), CPU)
    assert isinstance(dit, SequenceParallelDiT) and len(dit.worker_pids) == size - 1
    yield task, dit
    pids = dit.worker_pids
    dit.close()
    torch.set_num_threads(threads)
    assert all(process_gone(pid) for pid in pids)
    assert not torch.distributed.is_initialized()  # the process group is left: the next group may start


# (B, F, H, W): L = F * H/2 * W/2 tokens; 30 and 18 divide by 2 and 3, 7 and 5 by neither (padding), 1 < P.
GEOMETRIES = [(1, 2, 6, 10), (2, 3, 4, 6), (2, 1, 2, 14), (1, 1, 2, 10), (2, 1, 2, 2)]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "B{}-L{}".format(g[0], g[1] * g[2] * g[3] // 4))
def test_output_equals_single_process(group, references, geometry):
    task, dit = group
    ref = references[task]
    args = inputs(ref.cfg, *geometry)
    with torch.inference_mode():
        expected = ref(*args)
    sent = dit.bytes_sent
    out = dit(*args)
    assert out.shape == expected.shape == (geometry[0], 16, *geometry[1:]) and out.dtype == torch.float32
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)
    # the work was shared: rank 0 sent exactly what the per-forward formula says (fp32 activations on CPU)
    num_tokens = math.prod(geometry[1:]) // 4
    assert dit.bytes_sent - sent == ulysses_bytes_per_forward(ref.cfg, num_tokens, dit.sp_size, geometry[0], 4)["total"]


def test_rows_are_independent(group, references):
    """B = 2 with different timesteps: each row equals its own B = 1 call."""
    task, dit = group
    x, t, context, clip_fea, y = inputs(references[task].cfg, 2, 1, 2, 14, seed=3)
    both = dit(x, t, context, clip_fea, y)
    row = lambda a: None if a is None else a[1:]  # noqa: E731
    single = dit(row(x), t[1:], row(context), row(clip_fea), row(y))
    torch.testing.assert_close(both[1:], single, atol=ATOL, rtol=RTOL)
    assert not torch.allclose(both[0], both[1])


def test_engine_latents_equal(group, references):
    """The 4-step distilled sampler over a group gives the single-process latents (the group stands in for the DiT),
    also when the engine batches two requests into each call."""
    task, dit = group
    ref = references[task]
    run = RunConfig()
    context = torch.randn(7, ref.cfg.text_dim, generator=torch.Generator().manual_seed(5))
    extra = {}
    if ref.cfg.is_i2v:
        extra = {"clip_fea": torch.randn(257, ref.cfg.image_dim), "y": torch.randn(20, 2, 4, 6)}
    expected = DenoiseEngine(ref, run, CPU).denoise(context, 7, (16, 2, 4, 6), **extra)
    engine = DenoiseEngine(dit, run, CPU)
    torch.testing.assert_close(engine.denoise(context, 7, (16, 2, 4, 6), **extra), expected, atol=ATOL, rtol=RTOL)
    jobs = [engine.new_job(context, seed, (16, 2, 4, 6), **extra) for seed in (7, 8)]
    engine.run_until_done(jobs)
    torch.testing.assert_close(jobs[0].result(), expected, atol=ATOL, rtol=RTOL)
    assert not torch.allclose(jobs[1].result(), expected)


def test_bad_input_is_refused_before_the_workers_see_it(group, references):
    task, dit = group
    pids = dit.worker_pids
    x, t, context, clip_fea, y = inputs(references[task].cfg, 1, 1, 2, 10)
    with pytest.raises(ValueError, match="context"):
        dit(x, t, context[..., :-1], clip_fea, y)
    with pytest.raises(ValueError, match="patch_size"):
        dit(x[..., :-1], t, context, clip_fea, None if y is None else y[..., :-1])
    assert dit.worker_pids == pids
    torch.testing.assert_close(dit(x, t, context, clip_fea, y), references[task](x, t, context, clip_fea, y),
                               atol=ATOL, rtol=RTOL)


# ----------------------------------------------------------------------------------------------
# Geometry and config (no processes)
# ----------------------------------------------------------------------------------------------
def test_heads_not_divisible_refused_before_loading(sp_models):
    cfg = SPEC.dit_config("t2v")
    assert valid_sp_sizes(cfg) == [1, 2, 3, 6]
    with pytest.raises(ConfigError, match=r"sp_size 4 does not divide the DiT's num_heads 6.*\[1, 2, 3, 6\]"):
        check_sp_geometry(cfg, 4)
    calls = []
    with pytest.raises(ConfigError, match="sp_size 4"):
        SequenceParallelDiT(calls.append, 4, CPU, cfg=cfg)
    assert calls == []
    with pytest.raises(ConfigError, match="num_heads 6"):
        load_dit_for_run(sp_models["t2v"], RunConfig(sp_size=5), CPU)


def write(tmp_path, data) -> RunConfig:
    p = tmp_path / "run.json"
    p.write_text(json.dumps({"infer_steps": 4, "denoising_step_list": [1000, 750, 500, 250], **data}))
    return RunConfig.from_json(p)


def test_lightx2v_parallel_block_maps_to_sp_size(tmp_path, caplog):
    assert RunConfig().sp_size == 1
    assert write(tmp_path, {"parallel": {"seq_p_size": 4, "seq_p_attn_type": "ulysses"}}).sp_size == 4
    assert write(tmp_path, {"parallel": {"seq_p_size": 2}}).sp_size == 2  # LightX2V's default type is ulysses
    assert write(tmp_path, {"parallel": {"seq_p_size": 8, "seq_p_attn_type": "ulysses-4090"}}).sp_size == 8
    assert write(tmp_path, {"parallel": {"seq_p_size": 2, "cfg_p_size": 1}, "sp_size": 2}).sp_size == 2
    assert write(tmp_path, {"sp_size": 3}).sp_size == 3
    for off in (False, {}, None):
        assert write(tmp_path, {"parallel": off}).sp_size == 1
    with caplog.at_level(logging.INFO, logger="wan_distill.config"):
        assert write(tmp_path, {"parallel": {"seq_p_size": 2, "seq_p_head_parallel": True}}).sp_size == 2
    assert any("parallel.seq_p_head_parallel" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("data, needle", [
    ({"parallel": {"seq_p_size": 4, "seq_p_attn_type": "ring"}}, "seq_p_attn_type 'ring' is not supported"),
    ({"parallel": {"seq_p_size": 2, "cfg_p_size": 2}}, r"cfg_p_size 2 \(CFG parallelism\) is not supported"),
    ({"parallel": {"tensor_p_size": 2}}, r"tensor_p_size 2 \(tensor parallelism\)"),
    ({"parallel": {"seq_p_size": 2, "seq_p_fp8_comm": True}}, "seq_p_fp8_comm .quantized all-to-all"),
    ({"parallel": {"seq_p_size": 0}}, "seq_p_size must be an integer >= 1"),
    ({"parallel": "ulysses"}, "parallel must be an object"),
    ({"parallel": {"seq_p_size": 2}, "sp_size": 4}, r"sp_size \(4\) contradicts parallel.seq_p_size \(2\)"),
    ({"sp_size": 0}, "sp_size must be >= 1"),
    ({"sp_size": "2"}, "sp_size must be an integer"),
    ({"sp_size": 2, "compile_dit": True}, "compile_dit is not supported with sp_size > 1"),
])
def test_parallel_refusals_name_the_key(tmp_path, data, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        write(tmp_path, data)
    assert "run.json" in str(e.value)

