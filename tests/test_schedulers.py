"""Schedulers: the 4-step distill table/update (hand-derived values) and the baseline Euler / UniPC solvers
(against diffusers' independent implementations, configured as diffusers' Wan pipelines configure them)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from wan_distill.config import ConfigError, RunConfig
from wan_distill.schedulers import SamplerState, make_sampler
from wan_distill.schedulers.flow_match import FlowEulerScheduler, FlowUniPCScheduler, wan_flow_sigmas
from wan_distill.schedulers.step_distill import StepDistillScheduler

SHAPE = (4, 2, 3, 5)   # tiny [C, F, H, W] latents


def _shifted(s: float, shift: float) -> float:
    return shift * s / (1 + (shift - 1) * s)


# ------------------------------------------------------------------------------------------------
# step-distill table
# ------------------------------------------------------------------------------------------------
def test_distill_table_shift5():
    sch = StepDistillScheduler([1000, 750, 500, 250], shift=5.0)
    # s = 1, .75, .5, .25 -> 5s/(1+4s) = 1, 3.75/4, 2.5/3, 1.25/2
    assert sch.timesteps.dtype == torch.float32 and sch.timesteps.shape == (4,)
    torch.testing.assert_close(sch.sigmas, torch.tensor([1.0, 0.9375, 5 / 6, 0.625]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sch.timesteps, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]), rtol=1e-6, atol=1e-4)
    assert len(sch) == 4


def test_distill_table_999_and_shift8():
    sch = StepDistillScheduler([999, 750, 500, 250], shift=5.0)
    # index 1 of linspace(1, 0, 1001) = 0.999 -> 4.995 / 4.996
    assert sch.timesteps[0].item() == pytest.approx(1000 * 4.995 / 4.996, rel=1e-6)
    assert sch.timesteps[0].item() != pytest.approx(1000.0, abs=0.1)
    torch.testing.assert_close(sch.timesteps[1:], torch.tensor([937.5, 2500 / 3, 625.0]), rtol=1e-6, atol=1e-4)

    sch8 = StepDistillScheduler([999, 750, 500, 250], shift=8.0)
    # 8s/(1+7s): .999 -> 7.992/7.993, .75 -> 6/6.25, .5 -> 4/4.5, .25 -> 2/2.75
    torch.testing.assert_close(sch8.sigmas, torch.tensor([7.992 / 7.993, 0.96, 8 / 9, 8 / 11]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sch8.timesteps, 1000 * torch.tensor([7.992 / 7.993, 0.96, 8 / 9, 8 / 11]),
                               rtol=1e-6, atol=1e-4)
    # float values equal to integers are accepted by the run config (a JSON 1000.0 means 1000)
    run = RunConfig.from_dict({"infer_steps": 4, "denoising_step_list": [1000.0, 750.0, 500.0, 250.0]})
    assert run.denoising_step_list == (1000, 750, 500, 250)
    torch.testing.assert_close(make_sampler(run).timesteps, StepDistillScheduler([1000, 750, 500, 250]).timesteps,
                               rtol=0, atol=0)


@pytest.mark.parametrize("steps", [[1000, 750.5, 500], [999.5, 500], [1001, 750], [1000, 0], [], [750, 1000], "1000"])
def test_run_config_rejects_bad_step_lists(steps):
    """The step list is validated once, in RunConfig (the scheduler trusts it)."""
    n = len(steps) if isinstance(steps, list) else 1
    with pytest.raises(ConfigError, match="denoising_step_list"):
        RunConfig.from_dict({"infer_steps": n, "denoising_step_list": steps})


@pytest.mark.parametrize("key, value", [("distill_update", "ddim"), ("sample_solver", "dpm++"), ("sample_shift", 0),
                                        ("infer_steps", 0)])
def test_run_config_rejects_bad_sampler_settings(key, value):
    data = {"infer_steps": 4, "denoising_step_list": [1000, 750, 500, 250]}
    if key in ("sample_solver", "infer_steps"):
        data = {"infer_steps": 4, "enable_cfg": True}  # a baseline run
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_dict({**data, key: value})


def test_make_sampler_picks_the_configured_solver():
    assert isinstance(make_sampler(RunConfig()), StepDistillScheduler)
    base = {"infer_steps": 4, "enable_cfg": True}
    assert isinstance(make_sampler(RunConfig.from_dict(base)), FlowUniPCScheduler)
    assert isinstance(make_sampler(RunConfig.from_dict({**base, "sample_solver": "euler"})), FlowEulerScheduler)
    euler = make_sampler(RunConfig.from_dict({"infer_steps": 4, "denoising_step_list": [1000, 750, 500, 250],
                                              "distill_update": "euler"}))
    assert euler.update == "euler"


# ------------------------------------------------------------------------------------------------
# step-distill update
# ------------------------------------------------------------------------------------------------
def _xv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


def test_distill_renoise_step_hand_computed():
    sch = StepDistillScheduler([1000, 750, 500, 250], shift=5.0, update="renoise")
    x, v = _xv()
    out = sch.step(1, x, v, sch.new_state(torch.Generator().manual_seed(123)))
    eps = torch.randn(SHAPE, dtype=torch.float32, generator=torch.Generator().manual_seed(123))
    x0 = x - 0.9375 * v                          # sigma_1 = 15/16
    expected = (1 - 5 / 6) * x0 + (5 / 6) * eps  # sigma_2 = 5/6
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert out.dtype == torch.float32


def test_distill_last_step_returns_x0():
    for update in ("renoise", "euler"):
        sch = StepDistillScheduler([1000, 750, 500, 250], shift=5.0, update=update)
        x, v = _xv(1)
        g = torch.Generator().manual_seed(5)
        state_before = g.get_state()
        out = sch.step(3, x, v, sch.new_state(g))
        torch.testing.assert_close(out, x - 0.625 * v, rtol=1e-6, atol=1e-6)
        assert torch.equal(g.get_state(), state_before)   # no noise drawn at the last step


def test_distill_euler_step():
    sch = StepDistillScheduler([1000, 750, 500, 250], shift=5.0, update="euler")
    x, v = _xv(2)
    sig = [1.0, 0.9375, 5 / 6, 0.625]
    for i in range(3):
        out = sch.step(i, x, v, sch.new_state())
        torch.testing.assert_close(out, x + (sig[i + 1] - sig[i]) * v, rtol=1e-5, atol=1e-6)
    # per-step deltas -0.0625, -0.10417, -0.20833
    torch.testing.assert_close(sch.step(0, x, v, SamplerState()) - x, -0.0625 * v, rtol=1e-5, atol=1e-6)


def test_distill_renoise_uses_given_generator():
    sch = StepDistillScheduler([1000, 750, 500, 250])
    x, v = _xv(3)
    torch.manual_seed(0)
    a = sch.step(0, x, v, sch.new_state(torch.Generator().manual_seed(42)))
    torch.manual_seed(1)   # the global RNG must not matter
    b = sch.step(0, x, v, sch.new_state(torch.Generator().manual_seed(42)))
    c = sch.step(0, x, v, sch.new_state(torch.Generator().manual_seed(43)))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # a single generator advances: the same generator gives fresh noise on the next step
    g = torch.Generator().manual_seed(42)
    state = sch.new_state(g)
    assert not torch.equal(sch.step(0, x, v, state), sch.step(0, x, v, state))


# ------------------------------------------------------------------------------------------------
# baseline schedules
# ------------------------------------------------------------------------------------------------
def _wan_unshifted(n: int) -> np.ndarray:
    """Wan2.1's unshifted sigmas: linspace(float32(0.999), 0, n + 1)[:-1]."""
    return np.linspace(float(np.float32(0.999)), 0.0, n + 1)[:-1]


def _diffusers_unipc(shift: float, order: int = 2) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                                   flow_shift=shift, solver_order=order)


def test_wan_schedule_hand_values():
    ts, sig = wan_flow_sigmas(4, 5.0)
    # unshifted .999, .74925, .4995, .24975 -> 5s/(1+4s); timesteps truncated like Wan's int64 cast
    expect = [_shifted(s, 5.0) for s in (0.999, 0.74925, 0.4995, 0.24975)]
    torch.testing.assert_close(sig, torch.tensor(expect + [0.0]), rtol=1e-6, atol=1e-7)
    assert ts.tolist() == [999.0, 937.0, 833.0, 624.0]
    assert ts.dtype == torch.float32 and sig.shape == (5,)


@pytest.mark.parametrize("n,shift", [(50, 5.0), (40, 3.0), (4, 8.0), (1, 5.0)])
def test_baseline_schedule_matches_diffusers(n, shift):
    ours = FlowUniPCScheduler(n, shift)
    ref = _diffusers_unipc(shift)
    ref.set_timesteps(sigmas=_wan_unshifted(n))   # diffusers shifts them with flow_shift
    assert torch.equal(ours.sigmas, ref.sigmas)
    assert torch.equal(ours.timesteps, ref.timesteps.float())

    eul = FlowEulerScheduler(n, shift)
    assert torch.equal(eul.sigmas, ours.sigmas) and torch.equal(eul.timesteps, ours.timesteps)
    ref_e = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref_e.set_timesteps(sigmas=_wan_unshifted(n).tolist())   # (diffusers shifts in float32 here)
    torch.testing.assert_close(eul.sigmas, ref_e.sigmas, rtol=1e-6, atol=1e-7)


def test_wan_schedule_differs_from_diffusers_default():
    # diffusers' own flow sigmas start from linspace(1, 1/1000, N+1): every unshifted sigma is 0.001 above Wan's.
    ours = FlowUniPCScheduler(10, 5.0)
    ref = _diffusers_unipc(5.0)
    ref.set_timesteps(10)
    assert not torch.allclose(ours.sigmas[1:-1], ref.sigmas[1:-1], rtol=0, atol=1e-5)
    unshift = lambda s: s / (5.0 - 4.0 * s)   # inverse of 5s/(1+4s)
    torch.testing.assert_close(unshift(ref.sigmas[1:-1].double()) - unshift(ours.sigmas[1:-1].double()),
                               torch.full((9,), 0.001, dtype=torch.float64), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# baseline trajectories on a synthetic model
# ------------------------------------------------------------------------------------------------
def _model(x: torch.Tensor, t: float, c: torch.Tensor) -> torch.Tensor:
    """Synthetic 'DiT': linear in x, t-dependent coefficients."""
    return (0.6 + 0.3 * t / 1000) * x - (0.9 - 0.4 * t / 1000) * c


@pytest.mark.parametrize("n,shift,order", [(10, 5.0, 2), (6, 3.0, 2), (8, 8.0, 3), (2, 5.0, 2)])
def test_unipc_trajectory_matches_diffusers(n, shift, order):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(SHAPE, generator=g)
    c = torch.randn(SHAPE, generator=g)
    ours = FlowUniPCScheduler(n, shift, solver_order=order)
    ref = _diffusers_unipc(shift, order)
    ref.set_timesteps(sigmas=_wan_unshifted(n))
    state = ours.new_state()
    x_ref = x[None].clone()
    for i, t in enumerate(ours.timesteps):
        x = ours.step(i, x, _model(x, float(t), c), state)
        x_ref = ref.step(_model(x_ref, float(ref.timesteps[i]), c[None]), ref.timesteps[i], x_ref,
                         return_dict=False)[0]
        torch.testing.assert_close(x, x_ref[0], rtol=1e-5, atol=1e-5, msg=f"step {i}")
    assert [ours.order(i) for i in range(n)] == [min(order, i + 1, n - i) for i in range(n)]


def test_euler_trajectory_matches_diffusers():
    n, shift = 8, 5.0
    g = torch.Generator().manual_seed(11)
    x, c = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    ours = FlowEulerScheduler(n, shift)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(sigmas=_wan_unshifted(n).tolist())
    x_ref = x[None].clone()
    for i, t in enumerate(ours.timesteps):
        x = ours.step(i, x, _model(x, float(t), c), ours.new_state())
        x_ref = ref.step(_model(x_ref, float(t), c[None]), ref.timesteps[i], x_ref, return_dict=False)[0]
        torch.testing.assert_close(x, x_ref[0], rtol=1e-5, atol=1e-5)
    # hand check of one Euler step
    x0, v = _xv(4)
    torch.testing.assert_close(ours.step(2, x0, v, ours.new_state()), x0 + (ours.sigmas[3] - ours.sigmas[2]) * v)


@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_perfect_x0_model_lands_on_data(solver):
    # single-point data c: exact flow v = (x_t - c) / sigma, so x0 = c at every step and the output must be c
    sch = make_sampler(RunConfig.from_dict({"infer_steps": 5, "enable_cfg": True, "sample_solver": solver}))
    g = torch.Generator().manual_seed(0)
    c, x = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    state = sch.new_state()
    for i in range(5):
        x = sch.step(i, x, (x - c) / sch.sigmas[i], state)
    torch.testing.assert_close(x, c, rtol=1e-4, atol=1e-4)


def test_unipc_states_are_independent():
    n = 6
    sch = FlowUniPCScheduler(n, 5.0)
    g = torch.Generator().manual_seed(9)
    xa, xb, c = (torch.randn(SHAPE, generator=g) for _ in range(3))

    def run_alone(x):
        st = sch.new_state()
        for i, t in enumerate(sch.timesteps):
            x = sch.step(i, x, _model(x, float(t), c), st)
        return x

    alone_a, alone_b = run_alone(xa), run_alone(xb)
    sa, sb = sch.new_state(), sch.new_state()
    for i, t in enumerate(sch.timesteps):   # interleaved requests on one scheduler
        xa = sch.step(i, xa, _model(xa, float(t), c), sa)
        xb = sch.step(i, xb, _model(xb, float(t), c), sb)
    assert torch.equal(xa, alone_a) and torch.equal(xb, alone_b)


def test_unipc_misuse_raises():
    sch = FlowUniPCScheduler(4, 5.0)
    x, v = _xv(5)
    with pytest.raises(ValueError):
        sch.step(0, x, v, None)
    st = sch.new_state()
    sch.step(0, x, v, st)
    with pytest.raises(ValueError):
        sch.step(2, x, v, st)     # skipped a step

