"""Reliability on the real tritonserver (tiny checkpoints), as a hostile client sees it: raw gRPC with tritonclient,
not our client library. Bursts of failing requests do not wedge the server; every bad request to an ensemble or to
a composing model gets INVALID_ARGUMENT naming the input and the server keeps serving.

The server is started by the launcher with its stub supervisor (scripts/triton_server.py ``supervise``)."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from conftest import ROOT, make_png

sys.path.insert(0, str(ROOT / "scripts"))
from demo import demo_env  # noqa: E402
from triton_server import TritonServer  # noqa: E402

from wan_client import WanClient  # noqa: E402
from wan_distill.serving.supervisor import list_stubs  # noqa: E402

pytestmark = pytest.mark.server
SMALL = dict(HEIGHT=32, WIDTH=48, NUM_FRAMES=5)
MODELS = ["wan_t2v", "wan_i2v", "wan_i2v_baseline", "wan_t2v_request", "wan_i2v_request", "wan_i2v_baseline_request",
          "wan_text_encoder", "wan_image_encoder", "wan_t2v_dit", "wan_i2v_dit", "wan_i2v_dit_baseline",
          "wan_vae_decoder", "wan_video_encoder"]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    env = {**demo_env(tiny_models["t2v"], tiny_models["i2v"]), "WAN_NUM_THREADS": "1"}
    extra = ["--model-control-mode=explicit", *[f"--load-model={m}" for m in MODELS]]
    with TritonServer(ROOT / "model_repository", env=env, log_path=tmp / "server.log", extra_args=extra,
                      ready_timeout_s=300, supervise=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def tensors(**values) -> list[grpcclient.InferInput]:
    """gRPC inputs from numpy arrays / Python scalars (bytes -> BYTES [1], int -> INT64 [1])."""
    items = []
    for name, value in values.items():
        if isinstance(value, (bytes, str)):
            arr = np.array([value], dtype=np.object_)
        elif isinstance(value, int):
            arr = np.array([value], dtype=np.int64)
        else:
            arr = np.asarray(value)
        dtype = "BYTES" if arr.dtype == np.object_ else np_to_triton_dtype(arr.dtype)
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        items.append(t)
    return items


def t2v(prompt=b"a red fox", seed=1, **kw) -> dict:
    return {"PROMPT": prompt, "SEED": seed, **SMALL, **kw}


def i2v(prompt=b"a boat at sea", seed=2, image=None, **kw) -> dict:
    return {"PROMPT": prompt, "SEED": seed, "IMAGE": make_png() if image is None else image, **SMALL, **kw}


def call(grpc, model: str, values: dict, outputs=("VIDEO_MP4",), timeout: float = 120):
    """One request; returns the result or the InferenceServerException (never raises it)."""
    try:
        return grpc.infer(model, tensors(**values), outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                          client_timeout=timeout)
    except InferenceServerException as e:
        return e


def assert_serves(grpc, timeout: float = 120) -> None:
    """Good T2V and I2V requests are answered with a video (within ``timeout`` each)."""
    for model, values in (("wan_t2v", t2v()), ("wan_i2v", i2v()), ("wan_i2v_baseline", i2v(NUM_FRAMES=1))):
        r = call(grpc, model, values, timeout=timeout)
        assert not isinstance(r, Exception), f"{model} after the burst: {r}"
        assert r.as_numpy("VIDEO_MP4")[0][:12].find(b"ftyp") == 4, model


def assert_invalid(result, field: str) -> None:
    assert isinstance(result, InferenceServerException), f"expected INVALID_ARGUMENT naming {field}, got a result"
    assert result.status() == "StatusCode.INVALID_ARGUMENT", f"{field}: {result.status()} {result.message()}"
    assert field in result.message(), result.message()


# ---------------------------------------------------------------------------------------------------------------
# §1: bursts of failing requests
# ---------------------------------------------------------------------------------------------------------------
BURSTS = {
    "i2v bad IMAGE": ("wan_i2v", i2v(image=b"not an image"), "IMAGE"),
    "i2v bad PROMPT, good image": ("wan_i2v", i2v(prompt=b"\xff\xfe bad utf-8"), "PROMPT"),
    "i2v_baseline bad IMAGE": ("wan_i2v_baseline", i2v(image=b"\x89PNG\r\n\x1a\n truncated"), "IMAGE"),
    "t2v bad HEIGHT": ("wan_t2v", t2v(HEIGHT=17), "HEIGHT"),
}


@pytest.mark.parametrize("case", list(BURSTS))
def test_burst_of_failing_requests_then_good_ones_are_served(grpc, case):
    model, values, field = BURSTS[case]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: call(grpc, model, values, timeout=60), range(200)))
    for r in results:
        assert_invalid(r, field)
    assert grpc.is_server_ready()
    assert_serves(grpc)


# ---------------------------------------------------------------------------------------------------------------
# §2: crashed stubs are reloaded by the supervisor; the model-control API needs its token
# ---------------------------------------------------------------------------------------------------------------
def test_model_control_api_is_refused_without_the_supervisors_token(grpc):
    with pytest.raises(InferenceServerException) as ei:
        grpc.unload_model("wan_t2v")
    assert "restricted" in ei.value.message().lower() or "unavailable" in str(ei.value.status()).lower(), ei.value
    assert grpc.is_model_ready("wan_t2v") and grpc.is_server_ready()


def stub_of(server, model: str):
    stubs = [s for s in list_stubs(server.pid).values() if s.model == model]
    assert len(stubs) == 1, f"{model}: stubs {stubs}"
    return stubs[0]


def wait_recovered(grpc, server, model: str, old_pid: int, timeout_s: float = 30.0) -> float:
    """Seconds until ``model`` has a new stub, is ready and a T2V/I2V request succeeds (fails past ``timeout_s``)."""
    t0, errors = time.monotonic(), []
    while time.monotonic() - t0 < timeout_s:
        stubs = [s for s in list_stubs(server.pid).values() if s.model == model]
        if stubs and stubs[0].pid != old_pid and grpc.is_model_ready(model):
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"{model} not recovered in {timeout_s} s; log:\n{server.log_tail(30)}")


def test_idle_stub_killed_is_reloaded_and_its_shm_removed(grpc, server):
    dead = stub_of(server, "wan_t2v_dit")
    assert (Path("/dev/shm") / dead.shm_region).exists(), dead
    os.kill(dead.pid, signal.SIGKILL)
    recovery_s = wait_recovered(grpc, server, "wan_t2v_dit", dead.pid)
    assert recovery_s < 30
    assert_serves(grpc)
    assert not (Path("/dev/shm") / dead.shm_region).exists(), "the dead stub's shared memory is left behind"
    assert any(m == "wan_t2v_dit" and what == "reloaded" for _, m, what in server.supervisor.events)
    assert grpc.is_server_ready()


def test_the_client_retries_a_dead_stub_until_it_is_reloaded(server):
    dead = stub_of(server, "wan_vae_decoder")
    os.kill(dead.pid, signal.SIGKILL)
    with WanClient(server.grpc_url, timeout_s=60, retries=6, backoff_s=0.5) as client:
        result = client.t2v("a red fox", seed=3, height=32, width=48, num_frames=5)
    assert result.mp4[4:8] == b"ftyp"
    assert stub_of(server, "wan_vae_decoder").pid != dead.pid


def test_stub_killed_mid_request_fails_that_request_and_is_reloaded(grpc, server):
    model, dit = "wan_i2v_baseline", "wan_i2v_dit_baseline"
    before = grpc.get_inference_statistics(dit).model_stats[0].execution_count
    box = {}
    thread = threading.Thread(target=lambda: box.update(r=call(grpc, model, i2v(HEIGHT=256, WIDTH=256, NUM_FRAMES=9),
                                                                timeout=90)))
    thread.start()
    deadline = time.monotonic() + 30
    while grpc.get_inference_statistics(dit).model_stats[0].execution_count == before and time.monotonic() < deadline:
        time.sleep(0.05)
    dead = stub_of(server, dit)
    os.kill(dead.pid, signal.SIGKILL)  # the DiT engine is denoising the request (40 CFG steps)
    thread.join(95)
    assert not thread.is_alive(), "the request in flight never ended"
    assert isinstance(box["r"], InferenceServerException), "a request whose DiT died cannot have a video"
    wait_recovered(grpc, server, dit, dead.pid)
    r = call(grpc, model, i2v(NUM_FRAMES=1))
    assert not isinstance(r, Exception), r
