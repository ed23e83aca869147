"""The streamed pipelines (<pipeline>_stream) on the real tritonserver with the tiny checkpoints: event order and
step count, the final video equal to the unary result for the same seed, bad input = the unary INVALID_ARGUMENT, a
cancel that frees the DiT slot (the next request starts; a cancelled queued request never starts), Ctrl-C in the CLI,
and the Prometheus metrics counted after known requests.

The server serves a copy of model_repository/ whose baseline T2V DiT takes one request per DiT call
(max_jobs_per_call 1), so "the slot is free" is observable: a second request waits until the first leaves."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, make_png

sys.path.insert(0, str(ROOT / "scripts"))
from demo import demo_env, repository_copy  # noqa: E402
from triton_server import TritonServer  # noqa: E402

from wan_client import (DenoiseProgress, InvalidRequestError, RequestCancelledError,  # noqa: E402
                        StageFinished, VideoReady, WanClient, WanClientError)

pytestmark = pytest.mark.server
SMALL = dict(height=32, width=48, num_frames=5)
LONG = dict(height=256, width=256, num_frames=9)  # 50 CFG steps of the tiny DiT: seconds on 2 loaded cores
MODELS = ["wan_t2v", "wan_i2v", "wan_t2v_stream", "wan_i2v_stream", "wan_t2v_baseline_stream", "wan_t2v_request",
          "wan_i2v_request", "wan_t2v_baseline_request", "wan_text_encoder", "wan_image_encoder", "wan_t2v_dit",
          "wan_i2v_dit", "wan_t2v_dit_baseline", "wan_decode_to_mp4"]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    repo = repository_copy(tmp / "model_repository", {"max_jobs_per_call": "1"}, only="wan_t2v_dit_baseline")
    env = {**demo_env(tiny_models["t2v"], tiny_models["i2v"]), "WAN_NUM_THREADS": "1"}
    extra = ["--model-control-mode=explicit", *[f"--load-model={m}" for m in MODELS]]
    with TritonServer(repo, env=env, log_path=tmp / "server.log", extra_args=extra, ready_timeout_s=300) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with WanClient(server.grpc_url, timeout_s=300, retries=0) as c:
        yield c


def names(events) -> list[str]:
    return [type(e).__name__ + (f":{e.stage}" if hasattr(e, "stage") else "") for e in events]


def wait_until(check, timeout_s=60.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def log_lines(server, pattern: str) -> list[re.Match]:
    return list(re.finditer(pattern, server.log_path.read_text(errors="replace")))


# ------------------------------------------------------------------------------------------------------------
# Prometheus text from the metrics port
# ------------------------------------------------------------------------------------------------------------
def scrape(server) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://{server.metrics_url}", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(values, name: str, **labels) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)


# ------------------------------------------------------------------------------------------------------------
# events and the video
# ------------------------------------------------------------------------------------------------------------
def test_t2v_stream_events_in_order_and_the_video_equals_unary(client):
    stream = client.stream_t2v("a red fox running through snow", seed=11, return_frames=True, **SMALL)
    events = list(stream)
    assert names(events) == ["RequestAccepted", "StageStarted:text", "StageFinished:text", "StageStarted:denoise",
                             *["DenoiseProgress"] * 4, "StageFinished:denoise", "StageStarted:decode",
                             "StageStarted:encode", "StageFinished:decode", "StageFinished:encode",
                             "VideoReady"]  # the MP4 encode runs inside the decode step, overlapped
    accepted, done = events[0], events[-1]
    assert (accepted.pipeline, accepted.seed, accepted.height, accepted.width, accepted.num_frames, accepted.fps,
            accepted.num_steps) == ("wan_t2v", 11, 32, 48, 5, 16, 4)
    steps = [e for e in events if isinstance(e, DenoiseProgress)]
    assert [e.step for e in steps] == [1, 2, 3, 4] and all(e.num_steps == 4 for e in steps)
    assert all(a.denoise_elapsed_s < b.denoise_elapsed_s for a, b in zip(steps, steps[1:])) and steps[-1].eta_s == 0
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(events, events[1:]))  # server clock, monotonic
    assert all(e.seconds >= 0 for e in events if isinstance(e, StageFinished))
    assert (done.num_frames, done.height, done.width) == (5, 32, 48) and done.result.frames.shape == (5, 32, 48, 3)
    unary = client.t2v("a red fox running through snow", seed=11, return_frames=True, **SMALL)
    assert np.array_equal(done.result.frames, unary.frames)  # same seed, same video, bit for bit
    assert done.result.mp4[4:8] == b"ftyp"


def test_i2v_stream_encodes_image_then_text_and_equals_unary(client):
    image = make_png(width=48, height=32, seed=3)
    events = list(client.stream_i2v(image, "waves", seed=5, return_frames=True, **SMALL))
    ns = names(events)
    assert ns.index("StageFinished:image") < ns.index("StageStarted:text")  # a chain, as the ensemble (the spec)
    assert ns.index("StageFinished:text") < ns.index("StageStarted:denoise") and ns.count("DenoiseProgress") == 4
    unary = client.i2v(image, "waves", seed=5, return_frames=True, **SMALL)
    assert np.array_equal(events[-1].result.frames, unary.frames)


@pytest.mark.parametrize("kind, kw, field", [
    ("t2v", dict(height=40, width=48, num_frames=5), "HEIGHT"),
    ("t2v", dict(height=32, width=48, num_frames=6), "NUM_FRAMES"),
    ("t2v", dict(fps=500, **SMALL), "FPS"),
    ("i2v", dict(image=b"\x89PNG garbage", **SMALL), "IMAGE"),
], ids=["height", "frames", "fps", "bad-image"])
def test_bad_input_on_the_stream_is_the_unary_invalid_argument(client, kind, kw, field):
    def call(streamed):
        if kind == "t2v":
            return list(client.stream_t2v("x", seed=1, **kw)) if streamed else client.t2v("x", seed=1, **kw)
        kw2 = dict(kw)
        image = kw2.pop("image")
        return list(client.stream_i2v(image, "x", seed=1, **kw2)) if streamed else client.i2v(image, "x", seed=1, **kw2)
    with pytest.raises(InvalidRequestError) as streamed:
        call(True)
    with pytest.raises(InvalidRequestError) as unary:
        call(False)
    assert streamed.value.code == "INVALID_ARGUMENT" and streamed.value.message.startswith(f"{field}: ")
    assert unary.value.message.endswith(streamed.value.message)  # the ensemble only prefixes "in ensemble '...', "
    assert list(client.stream_t2v("after", seed=2, **SMALL))[-1].result.mp4  # the server keeps serving


def test_dit_control_requests_are_checked(server):
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as e:
        grpc.infer("wan_t2v_dit", [], outputs=[grpcclient.InferRequestedOutput("PROGRESS")],
                   parameters={"wan_control": "pause", "wan_job_id": "x"})
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "wan_control" in e.value.message()
    with pytest.raises(InferenceServerException) as e:  # a job request: every input is optional in the config
        grpc.infer("wan_t2v_dit", [], outputs=[grpcclient.InferRequestedOutput("LATENTS")])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "SEED" in e.value.message()
    r = grpc.infer("wan_t2v_dit", [], outputs=[grpcclient.InferRequestedOutput("PROGRESS")],
                   parameters={"wan_control": "watch", "wan_job_id": "nobody", "wan_wait_ms": 50})
    assert b'"status": "unknown"' in r.as_numpy("PROGRESS")[0]


# ------------------------------------------------------------------------------------------------------------
# cancellation
# ------------------------------------------------------------------------------------------------------------
class Consumer(threading.Thread):
    """Iterates a VideoStream on its own thread, keeping the events and the error."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.events, self.error = stream, [], None
        self.start()

    def run(self):
        try:
            for event in self.stream:
                self.events.append(event)
        except WanClientError as e:
            self.error = e

    def steps(self) -> list[DenoiseProgress]:
        return [e for e in self.events if isinstance(e, DenoiseProgress)]


def test_cancel_frees_the_dit_slot_and_a_cancelled_queued_request_never_starts(client, server):
    """One DiT slot: A runs (50 CFG steps), B and C wait. C is cancelled while queued: it never starts. A is
    cancelled mid-run: the DiT stops it at the next step boundary and B, which waited behind it, runs to the end."""
    dit = "wan_t2v_dit_baseline"
    m0 = scrape(server)
    queued = lambda: metric(scrape(server), "wan_dit_queued_jobs", model=dit)  # noqa: E731
    a = Consumer(client.stream_t2v("long A", seed=1, model="wan_t2v_baseline", **LONG))
    wait_until(lambda: len(a.steps()) >= 2, what="A's second step")
    b = Consumer(client.stream_t2v("short B", seed=2, model="wan_t2v_baseline", **SMALL))
    wait_until(lambda: queued() == 1, what="B queued")
    c = Consumer(client.stream_t2v("short C", seed=3, model="wan_t2v_baseline", **SMALL))
    wait_until(lambda: queued() == 2, what="C queued")
    c.stream.cancel()
    c.join(30)
    assert isinstance(c.error, RequestCancelledError) and c.steps() == []
    wait_until(lambda: log_lines(server, rf"{dit}: cancelled by the client while waiting; never started"),
               what="C dropped by the DiT")
    assert queued() == 1 and b.steps() == [] and a.error is None
    t_cancel = time.time()
    a.stream.cancel()
    a.join(30)
    b.join(120)
    assert isinstance(a.error, RequestCancelledError) and len(a.steps()) < 50
    stop = log_lines(server, rf"{dit}: cancelled by the client before denoising step (\d+)")
    assert len(stop) == 1 and len(a.steps()) <= int(stop[0].group(1)) <= 50
    assert b.error is None and [e.step for e in b.steps()] == list(range(1, 51)) and isinstance(b.events[-1], VideoReady)
    assert b.steps()[0].started_at > t_cancel - 0.05  # B's first step began only after A was cancelled
    m1 = scrape(server)
    stopped = lambda phase, m: metric(m, "wan_dit_cancellations_total", model=dit, reason="cancelled", phase=phase)  # noqa
    assert stopped("queued", m1) - stopped("queued", m0) == 1
    assert stopped("running", m1) - stopped("running", m0) == 1
    assert metric(m1, "wan_dit_active_jobs", model=dit) == 0 and metric(m1, "wan_dit_queued_jobs", model=dit) == 0


def test_cli_ctrl_c_stops_the_dit_and_exits_130(server, tmp_path):
    dit = "wan_t2v_dit_baseline"
    before = len(log_lines(server, rf"{dit}: cancelled by the client before denoising step"))
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "wan_client", "t2v", "--server", server.grpc_url, "--prompt", "ctrl-c",
                             "--model", "wan_t2v_baseline", "--height", "256", "--width", "256", "--frames", "9",
                             "-o", str(out)], stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 120
    while b"2/50 steps" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += os.read(proc.stderr.fileno(), 4096)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, (seen + rest)[-2000:]
    assert b"wan-client: cancelled (Ctrl-C): the server was told to stop the request" in rest
    wait_until(lambda: len(log_lines(server, rf"{dit}: cancelled by the client before denoising step")) > before,
               timeout_s=30, what="the DiT to stop")
    step = int(log_lines(server, rf"{dit}: cancelled by the client before denoising step (\d+)")[-1].group(1))
    assert 2 < step <= 50 and not out.exists()


# ------------------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------------------
def test_metrics_count_known_requests(client, server):
    """Two unary requests and one stream, one after the other (4 DiT calls of 1 row each), then a CFG stream
    (50 calls of 2 rows: cond + uncond)."""
    m0 = scrape(server)
    client.t2v("m1", seed=1, **SMALL)
    client.t2v("m2", seed=2, **SMALL)
    list(client.stream_t2v("m3", seed=3, **SMALL))
    m1 = scrape(server)
    d = lambda name, m_a, m_b, **labels: metric(m_b, name, **labels) - metric(m_a, name, **labels)  # noqa: E731
    dit = {"model": "wan_t2v_dit"}
    assert d("wan_dit_steps_total", m0, m1, **dit) == 12
    assert d("wan_dit_step_duration_seconds_count", m0, m1, **dit) == 12
    assert d("wan_dit_step_duration_seconds_sum", m0, m1, **dit) > 0
    assert d("wan_dit_rows_per_call_count", m0, m1, **dit) == 12 and d("wan_dit_rows_per_call_sum", m0, m1, **dit) == 12
    assert d("wan_dit_step_duration_seconds_bucket", m0, m1, le="+Inf", **dit) == 12
    assert d("wan_vae_decode_duration_seconds_count", m0, m1, model="wan_decode_to_mp4") == 3
    assert d("wan_mp4_encode_duration_seconds_count", m0, m1, model="wan_decode_to_mp4") == 3
    assert metric(m1, "wan_dit_active_jobs", **dit) == 0 and metric(m1, "wan_dit_queued_jobs", **dit) == 0
    list(client.stream_t2v("m4", seed=4, model="wan_t2v_baseline", **SMALL))
    m2, cfg = scrape(server), {"model": "wan_t2v_dit_baseline"}
    assert d("wan_dit_steps_total", m1, m2, **cfg) == 50 and d("wan_dit_rows_per_call_count", m1, m2, **cfg) == 50
    assert d("wan_dit_rows_per_call_sum", m1, m2, **cfg) == 100
    assert d("wan_dit_rows_per_call_bucket", m1, m2, le="1", **cfg) == 0
    assert d("wan_dit_rows_per_call_bucket", m1, m2, le="2", **cfg) == 50
