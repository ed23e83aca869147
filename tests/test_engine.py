"""The denoising engine: batched == alone, CFG folded into the batch, mixed geometries, continuous batching
(join mid-run, cancelled jobs leave, queue bound), and one denoising loop in the whole code base."""
from __future__ import annotations

import re
import threading
import time

import pytest
import torch

from wan_distill.batching import ContinuousBatcher
from wan_distill.config import DiTConfig, RunConfig
from wan_distill.engine import DenoiseEngine, JobStatus
from wan_distill.errors import Cancelled, InvalidRequest, Overloaded
from wan_distill.models.dit import WanDiT

from conftest import ROOT

TEXT_DIM, IMAGE_DIM = 32, 48
DISTILL = RunConfig()                                                     # 4 steps, renoise
BASELINE = RunConfig.from_dict({"infer_steps": 5, "enable_cfg": True, "sample_guide_scale": 4.0})  # UniPC + CFG
SHAPE_A, SHAPE_B = (16, 2, 4, 6), (16, 3, 2, 4)


def tiny_dit(task: str = "t2v", seed: int = 0) -> WanDiT:
    torch.manual_seed(seed)
    cfg = DiTConfig(task, dim=48, ffn_dim=96, num_heads=2, num_layers=2, in_dim=36 if task == "i2v" else 16,
                    text_len=16, text_dim=TEXT_DIM, image_dim=IMAGE_DIM)
    dit = WanDiT(cfg).eval()
    with torch.no_grad():  # Wan initialises the head and modulations near zero; make every layer matter
        for p in dit.parameters():
            p.normal_(0, 0.2)
    return dit


class CountingDiT:
    """Wraps a DiT, records the batch size of every call (optionally slowed down, to test threading)."""

    def __init__(self, dit: WanDiT, delay_s: float = 0.0):
        self.dit, self.cfg, self.dtype, self.delay_s, self.calls = dit, dit.cfg, dit.dtype, delay_s, []

    def __call__(self, x, t, context, clip_fea=None, y=None):
        self.calls.append(x.shape[0])
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.dit(x, t, context, clip_fea=clip_fea, y=y)


def cond(seed: int, length: int = 5, i2v_shape: tuple[int, ...] | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {"context": torch.randn(length, TEXT_DIM, generator=g)}
    out["negative_context"] = torch.randn(length + 2, TEXT_DIM, generator=g)
    if i2v_shape is not None:
        out["clip_fea"] = torch.randn(257, IMAGE_DIM, generator=g)
        out["y"] = torch.randn(20, *i2v_shape[1:], generator=g)
    return out


def alone(engine: DenoiseEngine, seed: int, shape, c: dict) -> torch.Tensor:
    return engine.denoise(c["context"], seed, shape, negative_context=c.get("negative_context"),
                          clip_fea=c.get("clip_fea"), y=c.get("y"))


def job(engine: DenoiseEngine, seed: int, shape, c: dict, **kw):
    return engine.new_job(c["context"], seed, shape, negative_context=c.get("negative_context"),
                          clip_fea=c.get("clip_fea"), y=c.get("y"), **kw)


# Bit-identical on CPU fp32: every batch row goes through the same kernels as when it runs alone (the DiT computes
# its time embedding per row and its patch embedding as a matmul, see WanDiT.embed_time / embed_patches).
BATCH_TOL = 0.0


@pytest.mark.parametrize("task, run", [("t2v", DISTILL), ("i2v", DISTILL), ("t2v", BASELINE), ("i2v", BASELINE)],
                         ids=["t2v-distill", "i2v-distill", "t2v-cfg", "i2v-cfg"])
def test_batched_equals_alone(task, run):
    dit = CountingDiT(tiny_dit(task))
    engine = DenoiseEngine(dit, run, "cpu", max_jobs_per_call=4)
    shapes = [SHAPE_A, SHAPE_A, SHAPE_A]
    conds = [cond(i, length=4 + i, i2v_shape=s if task == "i2v" else None) for i, s in enumerate(shapes)]
    ref = [alone(engine, 10 + i, s, c) for i, (s, c) in enumerate(zip(shapes, conds))]
    dit.calls.clear()
    jobs = [job(engine, 10 + i, s, c) for i, (s, c) in enumerate(zip(shapes, conds))]
    engine.run_until_done(jobs)
    rows = 2 if run.uses_cfg else 1
    assert dit.calls == [3 * rows] * engine.num_steps  # one DiT call per step for all three jobs
    diff = max((j.result() - r).abs().max().item() for j, r in zip(jobs, ref))
    print(f"{task} {'cfg' if run.uses_cfg else 'distill'}: max |batched - alone| = {diff:.3g}")
    assert diff <= BATCH_TOL


def test_mixed_geometries_go_in_separate_calls_and_chunks_respect_the_limit():
    dit = CountingDiT(tiny_dit())
    engine = DenoiseEngine(dit, DISTILL, "cpu", max_jobs_per_call=2)
    specs = [(SHAPE_A, 1), (SHAPE_B, 2), (SHAPE_A, 3), (SHAPE_A, 4)]
    ref = [alone(engine, seed, shape, cond(seed)) for shape, seed in specs]
    dit.calls.clear()
    jobs = [job(engine, seed, shape, cond(seed)) for shape, seed in specs]
    engine.run_until_done(jobs)
    # per step: geometry A (3 jobs) -> calls of 2 and 1, geometry B -> 1
    assert sorted(dit.calls) == sorted([2, 1, 1] * 4)
    for j, r in zip(jobs, ref):
        assert (j.result() - r).abs().max().item() <= BATCH_TOL


def test_a_job_joining_mid_run_and_a_cancelled_job_leaving():
    dit = CountingDiT(tiny_dit())
    engine = DenoiseEngine(dit, DISTILL, "cpu")
    ref_a, ref_b = alone(engine, 1, SHAPE_A, cond(1)), alone(engine, 2, SHAPE_A, cond(2))
    a, b, c = job(engine, 1, SHAPE_A, cond(1)), job(engine, 2, SHAPE_A, cond(2)), job(engine, 3, SHAPE_A, cond(3))
    dit.calls.clear()
    engine.step([a, c])
    engine.step([a, c])
    c.cancel("client went away")
    left = engine.step([a, b, c])          # b joins at a's third step; c leaves before it
    assert left == [c] and c.status is JobStatus.CANCELLED and c.step_index == 2
    with pytest.raises(Cancelled, match="client went away before denoising step 3"):
        c.result()
    assert dit.calls == [2, 2, 2]
    engine.run_until_done([a, b])
    assert a.status is b.status is JobStatus.DONE
    assert (a.result() - ref_a).abs().max().item() <= BATCH_TOL
    assert (b.result() - ref_b).abs().max().item() <= BATCH_TOL


def test_progress_events_and_should_stop():
    engine = DenoiseEngine(tiny_dit(), DISTILL, "cpu")
    events = []
    j = job(engine, 0, SHAPE_A, cond(0), on_step=events.append,
            should_stop=lambda: "timed out" if len(events) == 3 else None)
    engine.run_until_done([j])
    assert [(e.step, e.num_steps) for e in events] == [(1, 4), (2, 4), (3, 4)]
    assert events[0].eta_s > 0 and events[-1].elapsed_s >= events[0].elapsed_s
    assert j.status is JobStatus.CANCELLED and "timed out before denoising step 4" in str(j.error)


def test_new_job_names_the_bad_tensor():
    t2v, i2v = DenoiseEngine(tiny_dit(), DISTILL, "cpu"), DenoiseEngine(tiny_dit("i2v"), BASELINE, "cpu")
    c = cond(0, i2v_shape=SHAPE_A)
    cases = [
        (t2v, dict(context=torch.randn(4, TEXT_DIM + 1)), "TEXT_EMBEDDING"),
        (t2v, dict(context=torch.randn(17, TEXT_DIM)), "TEXT_EMBEDDING"),          # longer than text_len 16
        (t2v, dict(context=torch.full((4, TEXT_DIM), float("nan"))), "TEXT_EMBEDDING"),
        (t2v, dict(context=c["context"], clip_fea=c["clip_fea"]), "CLIP_FEATURE"),
        (t2v, dict(context=c["context"], latent_shape=(16, 2, 3, 6)), "HEIGHT/WIDTH/NUM_FRAMES"),  # odd latent h
        (t2v, dict(context=c["context"], latent_shape=(16, 2, 200, 6)), "HEIGHT/WIDTH/NUM_FRAMES"),  # > max_height
        (i2v, dict(context=c["context"], clip_fea=c["clip_fea"], y=c["y"]), "NEGATIVE_TEXT_EMBEDDING"),
        (i2v, dict(context=c["context"], negative_context=c["negative_context"], y=c["y"]), "CLIP_FEATURE"),
        (i2v, dict(context=c["context"], negative_context=c["negative_context"], clip_fea=c["clip_fea"],
                   y=torch.randn(20, 2, 3, 5)), "IMAGE_LATENT"),
        (i2v, dict(context=c["context"], negative_context=c["negative_context"], clip_fea=c["clip_fea"],
                   y=c["y"] * float("inf")), "IMAGE_LATENT"),
    ]
    for engine, kw, name in cases:
        shape = kw.pop("latent_shape", SHAPE_A)
        with pytest.raises(InvalidRequest) as e:
            engine.new_job(kw.pop("context"), 0, shape, **kw)
        assert e.value.field == name, (kw, str(e.value))


def test_a_failing_dit_call_fails_its_jobs_only():
    dit = CountingDiT(tiny_dit())
    engine = DenoiseEngine(dit, DISTILL, "cpu")
    good, bad = job(engine, 1, SHAPE_A, cond(1)), job(engine, 2, SHAPE_B, cond(2))
    real = dit.dit

    def fail_on_b(x, t, context, clip_fea=None, y=None):
        if tuple(x.shape[1:]) == SHAPE_B:
            raise RuntimeError("out of memory (simulated)")
        return real(x, t, context, clip_fea=clip_fea, y=y)
    dit.dit = fail_on_b
    engine.run_until_done([good, bad])
    assert good.status is JobStatus.DONE and bad.status is JobStatus.FAILED
    with pytest.raises(RuntimeError, match="simulated"):
        bad.result()


# ---------------------------------------------------------------------------------------------------------------
# continuous batching from a background thread
# ---------------------------------------------------------------------------------------------------------------
def wait_done(jobs, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not all(j.finished for j in jobs):
        assert time.monotonic() < deadline, [j.status for j in jobs]
        time.sleep(0.005)


def test_continuous_batcher_joins_mid_run_and_matches_alone():
    dit = CountingDiT(tiny_dit(), delay_s=0.05)
    engine = DenoiseEngine(dit, DISTILL, "cpu")
    ref = [alone(engine, s, SHAPE_A, cond(s)) for s in (1, 2)]
    dit.calls.clear()
    done = []
    batcher = ContinuousBatcher(engine, max_wait_s=0.0)
    try:
        steps = threading.Event()
        first = job(engine, 1, SHAPE_A, cond(1), on_done=done.append,
                    on_step=lambda e: e.step == 2 and steps.set())
        batcher.submit(first)
        assert steps.wait(10)
        second = job(engine, 2, SHAPE_A, cond(2), on_done=done.append)
        batcher.submit(second)               # joins while the first is mid-way
        wait_done([first, second])
    finally:
        batcher.close()
    assert done == [first, second]            # on_done ran once each, first finished first
    assert 2 in dit.calls and dit.calls.count(1) >= 2  # shared steps once the second joined
    assert sum(dit.calls) == 8
    for j, r in zip((first, second), ref):
        assert j.status is JobStatus.DONE and (j.result() - r).abs().max().item() <= BATCH_TOL


def test_queued_job_cancelled_before_its_turn_never_starts_and_queue_is_bounded():
    dit = CountingDiT(tiny_dit(), delay_s=0.05)
    engine = DenoiseEngine(dit, DISTILL, "cpu", max_jobs_per_call=1)
    batcher = ContinuousBatcher(engine, max_queued=1, max_wait_s=0.0)
    try:
        running = job(engine, 1, SHAPE_A, cond(1))
        batcher.submit(running)
        deadline = time.monotonic() + 10
        while running.status is not JobStatus.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        queued = job(engine, 2, SHAPE_A, cond(2))
        batcher.submit(queued)                   # waits: only one job runs at a time
        with pytest.raises(Overloaded, match="max_queued_jobs 1"):
            batcher.submit(job(engine, 3, SHAPE_A, cond(3)))
        queued.cancel("client cancelled")
        wait_done([running, queued])
    finally:
        batcher.close()
    assert running.status is JobStatus.DONE
    assert queued.status is JobStatus.CANCELLED and queued.started_at is None and queued.step_index == 0
    assert "never started" in str(queued.error)
    assert dit.calls == [1] * 4


def test_close_cancels_running_and_waiting_jobs():
    engine = DenoiseEngine(CountingDiT(tiny_dit(), delay_s=0.05), BASELINE, "cpu", max_jobs_per_call=1)
    batcher = ContinuousBatcher(engine, max_wait_s=0.0)
    jobs = [job(engine, s, SHAPE_A, cond(s)) for s in (1, 2)]
    for j in jobs:
        batcher.submit(j)
    time.sleep(0.1)
    batcher.close()
    assert all(j.status is JobStatus.CANCELLED for j in jobs)
    with pytest.raises(Overloaded):
        batcher.submit(job(engine, 3, SHAPE_A, cond(3)))


# ---------------------------------------------------------------------------------------------------------------
# one denoising loop
# ---------------------------------------------------------------------------------------------------------------
def test_one_denoising_loop_in_the_code():
    """Only the engine steps a sampler or indexes its timesteps; every other module goes through the engine."""
    pattern = re.compile(r"\b(sampler|sched\w*)\.step\(|\.timesteps\[")
    offenders = []
    for folder in ("python_backend", "model_repository", "scripts", "client"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.endswith("wan_distill/engine.py") or "/schedulers/" in rel:
                continue
            offenders += [f"{rel}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1)
                          if pattern.search(line)]
    assert offenders == []
