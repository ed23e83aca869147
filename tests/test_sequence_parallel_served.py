"""A served sequence-parallel DiT: the wan_t2v_dit instance leads a gloo group of sp_size - 1 worker processes it
starts. The served video equals the single-process in-process one; a worker that dies mid-request fails that request
with a clear error naming the rank, and the instance recovers for the next request; workers die with the instance."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from wan_distill.config import RunConfig
from wan_distill.pipeline import WanPipeline

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from demo import demo_env  # noqa: E402
from triton_server import TritonServer  # noqa: E402

pytestmark = pytest.mark.server
SMALL = dict(height=32, width=48, num_frames=5)


def children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def sp_workers(server_pid: int) -> list[int]:
    """Worker processes of the wan_t2v_dit stub (spawned by multiprocessing)."""
    stubs = [p for p in children(server_pid) if "wan_t2v_dit_0_0" in cmdline(p)]
    return [w for s in stubs for w in children(s) if "spawn_main" in cmdline(w)]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def infer(grpc, seed: int, **geo):
    items = []
    for name, value, dtype in (("PROMPT", [b"a red fox"], "BYTES"), ("SEED", [seed], "INT64"),
                               *((k.upper(), [v], "INT64") for k, v in geo.items())):
        arr = np.array(value, dtype=np.object_ if dtype == "BYTES" else np.int64)
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        items.append(t)
    r = grpc.infer("wan_t2v", items, outputs=[grpcclient.InferRequestedOutput("FRAMES")], client_timeout=300)
    return r.as_numpy("FRAMES")


@pytest.fixture(scope="module")
def sp_config(tmp_path_factory):
    data = json.loads((ROOT / "configs" / "demo" / "wan_t2v_distill_4step_demo.json").read_text())
    path = tmp_path_factory.mktemp("sp") / "t2v_sp2.json"
    path.write_text(json.dumps({**data, "sp_size": 2}))
    return path


@pytest.fixture(scope="module")
def sp_server(tiny_models, sp_config, tmp_path_factory):
    env = {**demo_env(tiny_models["t2v"], tiny_models["i2v"]), "WAN_T2V_CONFIG": str(sp_config),
           "WAN_NUM_THREADS": "1"}
    log = tmp_path_factory.mktemp("sp_server") / "server.log"
    with TritonServer(ROOT / "model_repository", env=env, log_path=log, ready_timeout_s=300,
                      extra_args=["--model-control-mode=explicit", "--load-model=wan_t2v"]) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        yield srv, client
        client.close()


def test_served_sp_video_equals_single_process(sp_server, tiny_models, sp_config):
    srv, grpc = sp_server
    assert len(sp_workers(srv.pid)) == 1  # sp_size 2: the instance + one worker
    frames = infer(grpc, 7, **SMALL)
    run = RunConfig.from_json(sp_config).replace(sp_size=1)
    ref = WanPipeline.from_model_dir(tiny_models["t2v"], run, device="cpu").text_to_video("a red fox", seed=7, **SMALL)
    assert np.array_equal(frames, ref.frames)


def test_worker_dying_mid_request_fails_it_clearly_then_the_instance_recovers(sp_server):
    srv, grpc = sp_server
    (worker,) = sp_workers(srv.pid)
    os.kill(worker, signal.SIGSTOP)  # the next DiT call blocks on this rank, so the kill lands mid-call
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(infer, grpc, 8, **SMALL)
            time.sleep(2.0)
            assert not pending.done()
            os.kill(worker, signal.SIGKILL)
            with pytest.raises(InferenceServerException) as e:
                pending.result(timeout=120)
    finally:
        try:
            os.kill(worker, signal.SIGCONT)
        except ProcessLookupError:
            pass
    message = e.value.message()
    assert "rank 1" in message and "SIGKILL" in message and "sequence-parallel" in message, message
    frames = infer(grpc, 8, **SMALL)            # the group restarts its worker for the next call
    assert frames.shape == (5, 32, 48, 3)
    (new_worker,) = sp_workers(srv.pid)
    assert new_worker != worker and not alive(worker)


def test_workers_die_with_the_instance(sp_server):
    srv, grpc = sp_server
    workers = sp_workers(srv.pid)
    assert workers
    grpc.unload_model("wan_t2v", unload_dependents=True)
    grpc.unload_model("wan_t2v_dit")
    deadline = time.monotonic() + 60
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(w) for w in workers)
