"""Job control in-process: the JobBoard (watch / cancel by job id, before or after the job arrives), the engine and
batcher callbacks the metrics hang on, and the streamed pipeline's orchestration over a fake transport (event order,
step events, cancel sent to the DiT, errors passed on)."""
from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import weakref

import pytest

from wan_distill.batching import ContinuousBatcher
from wan_distill.engine import DenoiseEngine, JobStatus
from wan_distill.errors import InvalidRequest
from wan_distill.jobs import AFTER_STEP, CONTROL, JOB_ID, JobBoard
from wan_distill.serving.repository import pipeline
from wan_distill.serving.stream import StepFailed, StreamedPipeline

from test_engine import DISTILL, SHAPE_A, CountingDiT, cond, job, tiny_dit


class Replies:
    """Collects watch answers (called from any thread)."""

    def __init__(self):
        self.items, self.event = [], threading.Event()

    def __call__(self, snapshot):
        self.items.append(snapshot)
        self.event.set()

    def wait(self, timeout=10.0):
        assert self.event.wait(timeout), "no answer"
        self.event.clear()
        return self.items[-1]


def engine(delay_s=0.0, max_jobs=4):
    return DenoiseEngine(CountingDiT(tiny_dit(), delay_s), DISTILL, "cpu", max_jobs_per_call=max_jobs)


def test_watch_answers_after_each_step_and_at_the_end():
    eng, board = engine(), JobBoard()
    j = job(eng, 1, SHAPE_A, cond(1), job_id="a", on_step=None)
    j.on_step = board.step
    board.attach(j)
    replies = Replies()
    board.watch("a", 0, 5.0, replies)
    assert not replies.items  # queued: nothing yet
    eng.step([j])
    snap = replies.wait()
    assert snap["status"] == "running" and [s["step"] for s in snap["steps"]] == [1] and snap["num_steps"] == 4
    assert snap["started_at"] == pytest.approx(time.time(), abs=5) and snap["queued_s"] >= 0
    eng.step([j])
    eng.step([j])
    board.watch("a", 1, 5.0, replies)  # two steps already passed: answered at once with both
    assert [s["step"] for s in replies.wait()["steps"]] == [2, 3]
    board.watch("a", 3, 5.0, replies)
    eng.step([j])
    board.finish(j)
    snap = replies.wait()
    assert snap["status"] == "done" and [s["step"] for s in snap["steps"]] == [4]
    board.close()


def test_watch_before_the_job_arrives_and_watch_timeout():
    eng, board = engine(), JobBoard()
    early, late = Replies(), Replies()
    board.watch("b", 0, 5.0, early)       # the watch overtakes its job
    board.watch("nobody", 0, 0.2, late)   # a job that never comes: answered when the wait is over
    assert late.wait(3.0)["status"] == "unknown" and late.items[0]["steps"] == []
    j = job(eng, 2, SHAPE_A, cond(2), job_id="b", on_step=board.step)
    board.attach(j)
    eng.step([j])
    assert early.wait()["steps"][0]["step"] == 1
    board.close()


def test_refused_request_answers_its_watches():
    board, replies = JobBoard(), Replies()
    board.watch("c", 0, 30.0, replies)
    board.refuse("c", "HEIGHT: must be a multiple of 16")
    snap = replies.wait(2.0)
    assert snap["status"] == "failed" and "HEIGHT" in snap["error"]
    board.close()


def test_duplicate_job_id_is_refused():
    eng, board = engine(), JobBoard()
    board.attach(job(eng, 1, SHAPE_A, cond(1), job_id="d"))
    with pytest.raises(InvalidRequest, match=JOB_ID):
        board.attach(job(eng, 2, SHAPE_A, cond(2), job_id="d"))
    board.close()


def test_cancel_stops_a_running_job_at_the_next_step_and_a_queued_one_never_starts():
    """One slot (max_jobs 1): A runs, B waits. B is cancelled by id before its turn: it never starts. A is cancelled
    mid-run: it stops at the next step boundary and C, queued behind it, starts right after."""
    eng = engine(delay_s=0.05, max_jobs=1)
    board, done = JobBoard(), {}
    finished = threading.Event()

    def on_done(j):
        board.finish(j)
        done[j.job_id] = j
        if len(done) == 3:
            finished.set()

    batcher = ContinuousBatcher(eng, max_queued=8, max_wait_s=0)
    jobs = {}
    for name in "ABC":
        jobs[name] = job(eng, ord(name), SHAPE_A, cond(ord(name)), job_id=name, on_step=board.step, on_done=on_done)
        board.attach(jobs[name])
        batcher.submit(jobs[name])
    replies = Replies()
    board.watch("A", 0, 5.0, replies)
    replies.wait()
    board.cancel("B")
    assert board.cancel("A")["status"] == "running"
    assert finished.wait(20)
    batcher.close()
    a, b, c = done["A"], done["B"], done["C"]
    assert a.status is JobStatus.CANCELLED and 1 <= a.step_index < 4 and "before denoising step" in str(a.error)
    assert b.status is JobStatus.CANCELLED and b.started_at is None and "never started" in str(b.error)
    assert c.status is JobStatus.DONE and c.step_index == 4
    board.close()


def test_cancel_before_the_job_arrives_applies_on_arrival():
    eng, board = engine(), JobBoard()
    assert board.cancel("e")["status"] == "unknown"
    j = job(eng, 1, SHAPE_A, cond(1), job_id="e")
    board.attach(j)
    assert eng.step([j]) == [j] and j.status is JobStatus.CANCELLED and j.started_at is None
    board.close()


def test_board_forgets_finished_and_orphan_records():
    eng, board = engine(), JobBoard(linger_s=0.2)
    j = job(eng, 1, SHAPE_A, cond(1), job_id="f")
    board.attach(j)
    eng.run_until_done([j])
    board.finish(j)
    board.cancel("never-comes")
    assert len(board) == 2
    deadline = time.monotonic() + 5
    while len(board) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(board) == 0
    board.close()


def test_a_finished_job_is_not_kept_alive_by_its_record():
    """The record outlives the job (late watches) but keeps no tensors: RSS stayed flat over cancels only after this."""
    eng, board = engine(), JobBoard()
    j = job(eng, 1, SHAPE_A, cond(1), job_id="g", on_step=board.step)
    board.attach(j)
    eng.run_until_done([j])
    board.finish(j)
    ref = weakref.ref(j)
    del j
    gc.collect()
    assert ref() is None
    snap = board.snapshot("g")
    assert snap["status"] == "done" and len(snap["steps"]) == 4 and snap["started_at"] is not None
    replies = Replies()
    board.watch("g", 2, 5.0, replies)
    assert [s["step"] for s in replies.wait()["steps"]] == [3, 4]
    board.close()


def test_engine_and_batcher_callbacks_count_calls_rows_and_occupancy():
    eng = engine()
    calls, counts = [], []
    eng.on_call = calls.append
    batcher = ContinuousBatcher(eng, max_wait_s=0.05, on_counts=lambda a, q: counts.append((a, q)))
    left = threading.Semaphore(0)
    for seed in (1, 2):
        batcher.submit(job(eng, seed, SHAPE_A, cond(seed), on_done=lambda j: left.release()))
    assert left.acquire(timeout=20) and left.acquire(timeout=20)
    batcher.close()
    assert sum(c.jobs for c in calls) == 8 and sum(c.rows for c in calls) == 8  # 2 jobs x 4 steps, no CFG
    assert all(c.seconds > 0 for c in calls)
    assert counts[0] in ((0, 1), (0, 2)) and counts[-1] == (0, 0) and (2, 0) in counts


# ----------------------------------------------------------------------------------------------------------
# the streamed pipeline over a fake transport
# ----------------------------------------------------------------------------------------------------------
class FakeTransport:
    """Answers each BLS call like the served models would (tensors are plain values); the DiT's job and watch
    requests are answered from a scripted progress list."""

    def __init__(self, dit_steps=4, dit_delay_s=0.01, fail=None):
        self.calls, self.events, self.cancelled_flag = [], [], False
        self.dit_steps, self.dit_delay_s, self.fail = dit_steps, dit_delay_s, fail
        self.job_done, self.done_steps, self.cancel_sent = asyncio.Event(), 0, False

    async def infer(self, model, inputs, outputs, parameters=None):
        self.calls.append((model, sorted(inputs), sorted(outputs), dict(parameters or {})))
        if self.fail and self.fail[0] == model:
            raise StepFailed(*self.fail[1:])
        if model.endswith("_request"):
            checked = {"PROMPT": b"p", "SEED": 7, "HEIGHT": 32, "WIDTH": 48, "NUM_FRAMES": 5, "FPS": 16, "IMAGE": b"png"}
            return {k: v for k, v in checked.items() if k in outputs}
        if model == "wan_text_encoder":
            await asyncio.sleep(0.005)
            return {"TEXT_EMBEDDING": "ctx"}
        if model.endswith("_dit") and parameters and parameters.get(CONTROL):
            return {"PROGRESS": await self._control(parameters)}
        if model.endswith("_dit"):
            for _ in range(self.dit_steps):
                await asyncio.sleep(self.dit_delay_s)
                if self.cancel_sent:
                    self.job_done.set()
                    raise StepFailed("CANCELLED", "wan_t2v_dit: request cancelled (cancelled by the client)")
                self.done_steps += 1
            self.job_done.set()
            return {"LATENTS": (16, 2, 4, 6)}  # shape() of a fake tensor is the tensor
        if model == "wan_decode_to_mp4":
            return {"VIDEO_MP4": b"mp4", **({"FRAMES": "frames"} if "FRAMES" in outputs else {})}
        raise AssertionError(model)

    async def _control(self, params):
        if params[CONTROL] == "cancel":
            self.cancel_sent = True
            return json.dumps({"status": "running", "steps": []}).encode()
        after = params[AFTER_STEP]
        while self.done_steps <= after and not self.job_done.is_set():
            await asyncio.sleep(0.002)
        status = "done" if self.job_done.is_set() and not self.cancel_sent else \
            ("cancelled" if self.job_done.is_set() else "running")
        steps = [{"step": s, "num_steps": self.dit_steps, "elapsed_s": 0.01 * s, "eta_s": 0.0}
                 for s in range(after + 1, self.done_steps + 1)]
        return json.dumps({"status": status, "steps": steps, "queued_s": 0.0, "started_at": 1.0}).encode()

    def is_cancelled(self):
        return self.cancelled_flag

    def emit(self, event):
        self.events.append(event)

    def value(self, tensor):
        return tensor

    def shape(self, tensor):
        return tensor


def run(transport, want=frozenset({"VIDEO_MP4"}), name="wan_t2v", steps=4):
    streamed = StreamedPipeline(pipeline(name), steps, poll_s=0.005)
    return asyncio.run(streamed.run(transport, {"PROMPT": b"p", "SEED": 7}, set(want)))


def kinds(events):
    return [e["type"] + (f":{e['stage']}" if "stage" in e else "") for e in events]


def test_stream_runs_the_ensemble_steps_with_events_in_order():
    t = FakeTransport()
    out, done = run(t)
    assert out == {"VIDEO_MP4": b"mp4"}
    assert done["type"] == "done" and (done["num_frames"], done["height"], done["width"]) == (5, 32, 48)
    ks = kinds(t.events)
    assert ks[0] == "accepted" and ks[1:3] == ["stage_start:text", "stage_end:text"]
    assert ks[3] == "stage_start:denoise" and ks[4:8] == ["step"] * 4 and ks[8] == "stage_end:denoise"
    assert ks[9:] == ["stage_start:decode", "stage_end:decode"]  # the MP4 encode runs inside the decode step
    assert [e["step"] for e in t.events if e["type"] == "step"] == [1, 2, 3, 4]
    assert t.events[0]["seed"] == 7 and t.events[0]["num_steps"] == 4
    models = [c[0] for c in t.calls if not c[3].get(CONTROL)]
    assert models == ["wan_t2v_request", "wan_text_encoder", "wan_t2v_dit", "wan_decode_to_mp4"]
    dit = next(c for c in t.calls if c[0] == "wan_t2v_dit" and not c[3].get(CONTROL))
    assert dit[1] == ["HEIGHT", "NUM_FRAMES", "SEED", "TEXT_EMBEDDING", "WIDTH"] and dit[3][JOB_ID]
    decode = next(c for c in t.calls if c[0] == "wan_decode_to_mp4")
    assert decode[1] == ["FPS", "LATENTS"] and decode[2] == ["VIDEO_MP4"]  # FRAMES only when asked


def test_stream_asks_for_frames_only_when_the_client_does():
    out, _ = run(FakeTransport(), want={"VIDEO_MP4", "FRAMES"})
    assert out == {"VIDEO_MP4": b"mp4", "FRAMES": "frames"}


def test_stream_cancel_during_denoise_sends_the_cancel_to_the_dit():
    t = FakeTransport(dit_steps=50, dit_delay_s=0.01)

    async def go():
        streamed = StreamedPipeline(pipeline("wan_t2v"), 4, poll_s=0.005)
        task = asyncio.ensure_future(streamed.run(t, {"PROMPT": b"p", "SEED": 7}, {"VIDEO_MP4"}))
        while t.done_steps < 2:
            await asyncio.sleep(0.002)
        t.cancelled_flag = True
        with pytest.raises(StepFailed) as e:
            await task
        await asyncio.wait_for(t.job_done.wait(), 5)
        return e.value
    err = asyncio.run(go())
    assert err.code == "CANCELLED"
    cancels = [c for c in t.calls if c[3].get(CONTROL) == "cancel"]
    assert len(cancels) == 1 and cancels[0][3][JOB_ID] == next(c for c in t.calls if JOB_ID in c[3])[3][JOB_ID]
    assert t.done_steps < 50 and not any(c[0] == "wan_decode_to_mp4" for c in t.calls)


def test_stream_passes_a_step_error_on_and_stops():
    t = FakeTransport(fail=("wan_t2v_request", "INVALID_ARG", "HEIGHT: must be a multiple of 16"))
    with pytest.raises(StepFailed) as e:
        run(t)
    assert (e.value.code, e.value.message) == ("INVALID_ARG", "HEIGHT: must be a multiple of 16")
    assert [c[0] for c in t.calls] == ["wan_t2v_request"] and t.events == []


def test_i2v_stream_runs_the_encoders_one_after_the_other_before_the_dit():
    class I2V(FakeTransport):
        async def infer(self, model, inputs, outputs, parameters=None):
            if model == "wan_image_encoder":
                self.calls.append((model, sorted(inputs), sorted(outputs), {}))
                await asyncio.sleep(0.02)
                return {"CLIP_FEATURE": "clip", "IMAGE_LATENT": "y", "PROMPT_OUT": inputs["PROMPT"]}
            return await super().infer(model, inputs, outputs, parameters)
    t = I2V()
    run(t, name="wan_i2v")
    ks = kinds(t.events)
    # the ensemble's chain (no parallel steps: a failing one beside a running one can wedge tritonserver 2.51)
    assert ks.index("stage_end:image") < ks.index("stage_start:text")
    assert ks.index("stage_end:text") < ks.index("stage_start:denoise")
    dit = next(c for c in t.calls if c[0] == "wan_i2v_dit" and not c[3].get(CONTROL))
    assert dit[1] == ["CLIP_FEATURE", "IMAGE_LATENT", "SEED", "TEXT_EMBEDDING"]
