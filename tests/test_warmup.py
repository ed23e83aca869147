"""DiT warm-up at load (compile_dit on CUDA): one throw-away denoising step at the run's default size, so the first
request does not pay the compile; never on CPU; ``warmup_dit: false`` turns it off."""
from __future__ import annotations

import pytest
import torch

from wan_distill import pipeline
from wan_distill.config import ConfigError, RunConfig
from wan_distill.engine import DenoiseEngine
from wan_distill.pipeline import load_engine, warms_up_at_load

from test_engine import BASELINE, DISTILL, CountingDiT, tiny_dit
from conftest import ROOT


def test_warm_up_only_for_a_compiled_dit_on_cuda():
    compiled = RunConfig(compile_dit=True)
    assert warms_up_at_load(compiled, "cuda") and warms_up_at_load(compiled, torch.device("cuda", 1))
    assert not warms_up_at_load(compiled, "cpu")
    assert not warms_up_at_load(RunConfig(), "cuda")                                   # eager: nothing to compile
    assert not warms_up_at_load(RunConfig(compile_dit=True, warmup_dit=False), "cuda")
    assert RunConfig.from_dict({"warmup_dit": False}).warmup_dit is False
    with pytest.raises(ConfigError, match="warmup_dit must be true or false"):
        RunConfig.from_dict({"warmup_dit": "yes"})


@pytest.mark.parametrize("task, run, rows", [("t2v", DISTILL, [1]), ("t2v", BASELINE, [2]), ("i2v", DISTILL, [1])])
def test_warm_up_runs_one_step_of_the_default_size(task, run, rows):
    dit = CountingDiT(tiny_dit(task))
    shapes = []
    inner = dit.dit.forward
    dit.dit.forward = lambda x, *a, **k: (shapes.append(tuple(x.shape)), inner(x, *a, **k))[1]
    engine = DenoiseEngine(dit, run, "cpu")
    seen = []
    engine.on_call = seen.append
    seconds = engine.warm_up(32, 48, 9)
    assert dit.calls == rows and seconds > 0
    assert shapes == [(rows[0], 16, 3, 4, 6)]                 # 9 frames of 32x48 -> latent [16, 3, 4, 6]
    assert seen == [] and engine.on_call == seen.append       # no metrics for the warm-up; callback restored


def test_load_engine_warms_up_at_the_run_size_only_when_asked(tiny_models, monkeypatch):
    calls = []
    monkeypatch.setattr(DenoiseEngine, "warm_up", lambda self, *size: calls.append(size) or 0.0)
    run = RunConfig.from_json(ROOT / "configs" / "demo" / "wan_t2v_distill_4step_demo.json")
    load_engine(tiny_models["t2v"], run, torch.device("cpu"))
    assert calls == []                                        # CPU: never
    monkeypatch.setattr(pipeline, "warms_up_at_load", lambda r, d: True)
    load_engine(tiny_models["t2v"], run, torch.device("cpu"))
    assert calls == [(run.target_height, run.target_width, run.target_video_length)]
