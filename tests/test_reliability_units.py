"""Reliability pieces without a server: the client's retryable errors, the supervisor's flags and stub parsing."""
from __future__ import annotations

import pytest

from wan_client.errors import ServerError, ServerUnavailableError, from_triton
from wan_distill.serving.supervisor import _stub_of, http_address, supervised_args


class FakeTritonError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self._status, self._message = status, message

    def status(self):
        return self._status

    def message(self):
        return self._message


def test_a_dead_stub_is_retryable_other_internal_errors_are_not():
    dead = from_triton(FakeTritonError("StatusCode.INTERNAL", "Stub process 'wan_t2v_dit_0_0' is not healthy."))
    assert isinstance(dead, ServerUnavailableError) and dead.code == "UNAVAILABLE"
    reloading = from_triton(FakeTritonError("StatusCode.NOT_FOUND",
                                            "Request for unknown model: 'wan_t2v' has no available versions"))
    assert isinstance(reloading, ServerUnavailableError)
    unknown = from_triton(FakeTritonError("StatusCode.NOT_FOUND", "Request for unknown model: 'wan_x' is not found"))
    assert unknown.code == "NOT_FOUND" and not isinstance(unknown, ServerUnavailableError)
    bug = from_triton(FakeTritonError("StatusCode.INTERNAL", "wan_t2v_dit: RuntimeError: boom"))
    assert isinstance(bug, ServerError) and bug.code == "INTERNAL"


def test_supervised_args_add_explicit_mode_and_restrict_model_control():
    args = supervised_args(["--model-repository=/m"], "tok")
    assert "--model-control-mode=explicit" in args and "--load-model=*" in args
    assert "--http-restricted-api=model-repository:wan-model-control=tok" in args
    assert "--grpc-restricted-protocol=model-repository:wan-model-control=tok" in args
    chosen = supervised_args(["--model-control-mode=explicit", "--load-model=wan_t2v"], "tok")
    assert "--load-model=*" not in chosen
    with pytest.raises(ValueError, match="explicit"):
        supervised_args(["--model-control-mode=poll"], "tok")
    assert http_address(["--http-address=0.0.0.0", "--http-port", "9000"]) == "127.0.0.1:9000"


def test_stub_command_line_gives_model_instance_and_shm_region():
    argv = ["/opt/tritonserver/backends/python/triton_python_backend_stub", "/repo/wan_t2v_dit/1/model.py",
            "/triton_python_backend_shm_region_4f2a", "1048576", "1048576", "123", "/opt/python/lib", "336",
            "wan_t2v_dit_0_0", "/opt/tritonserver/backends/python"]
    stub = _stub_of(7, argv)
    assert (stub.model, stub.instance, stub.shm_region) == ("wan_t2v_dit", "wan_t2v_dit_0_0",
                                                            "triton_python_backend_shm_region_4f2a")
    assert _stub_of(8, ["/usr/bin/python3", "x"]) is None


# ---------------------------------------------------------------------------------------------------------------
# wan_distill.limits: what every composing model refuses
# ---------------------------------------------------------------------------------------------------------------
import io  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from wan_distill.config import RunConfig  # noqa: E402
from wan_distill.errors import InvalidRequest  # noqa: E402
from wan_distill.limits import check_frames, check_i2v_geometry, check_latents  # noqa: E402
from wan_distill.requests import Geometry, decode_image  # noqa: E402

RUN = RunConfig()


@pytest.mark.parametrize("latents, rule", [
    (np.zeros((16, 1, 200, 200), np.float32), "1600x1600"),
    (np.zeros((16, 42, 2, 2), np.float32), "165 frames"),
    (np.zeros((16, 0, 4, 4), np.float32), "empty"),
    (np.full((16, 1, 4, 4), np.nan, np.float32), "finite"),
    (np.zeros((16, 1, 4, 4), np.float64), "float32"),
    (np.zeros((15, 1, 4, 4), np.float32), "[16, t, h, w]"),
])
def test_latents_outside_the_limits_are_refused_by_name(latents, rule):
    with pytest.raises(InvalidRequest, match="LATENTS") as ei:
        check_latents(latents, RUN)
    assert rule in str(ei.value)


def test_good_latents_and_frames_pass():
    check_latents(np.zeros((16, 3, 4, 6), np.float32), RUN)
    check_frames(np.zeros((9, 32, 48, 3), np.uint8), RUN)


@pytest.mark.parametrize("frames, rule", [
    (np.zeros((1, 33, 47, 3), np.uint8), "even"),
    (np.zeros((0, 32, 48, 3), np.uint8), "empty"),
    (np.zeros((200, 16, 16, 3), np.uint8), "200 frames"),
    (np.zeros((1, 32, 48, 3), np.float32), "uint8"),
])
def test_frames_the_encoder_cannot_take_are_refused_by_name(frames, rule):
    with pytest.raises(InvalidRequest, match="FRAMES") as ei:
        check_frames(frames, RUN)
    assert rule in str(ei.value)


def test_an_i2v_size_beyond_the_limits_names_the_image():
    check_i2v_geometry(Geometry(480, 832, 81), RUN)
    with pytest.raises(InvalidRequest, match="^IMAGE: its aspect ratio gives a 10240x160 video"):
        check_i2v_geometry(Geometry(10240, 160, 1), RUN)


def test_exif_orientation_turns_the_picture_upright():
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display: a portrait photo stored landscape
    Image.new("RGB", (96, 64)).save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue(), RUN.max_image_pixels).size == (64, 96)


# ---------------------------------------------------------------------------------------------------------------
# StubSupervisor against fake stubs (children of this process) and a fake model-control API
# ---------------------------------------------------------------------------------------------------------------
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402

from wan_distill.serving.supervisor import CONTROL_HEADER, StubSupervisor, list_stubs  # noqa: E402


class FakeTriton:
    """Python processes whose argv looks like a python stub's, and the three model-control calls the supervisor
    makes (index / unload / load; load starts a new stub)."""

    def __init__(self, tmp: Path, models: tuple[str, ...] = ("wan_fake", "wan_other")):
        self.tmp, self.calls, self.procs, self.ready = tmp, [], [], set(models)
        self.on_load = None  # called while a load request is being answered
        for model in models:
            (tmp / model / "1").mkdir(parents=True)
            (tmp / model / "1" / "model.py").write_text("import time\ntime.sleep(120)\n")
        (tmp / "triton_python_backend_stub").symlink_to(sys.executable)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.calls.append((self.path, self.headers.get(CONTROL_HEADER)))
                body = b"{}"
                if self.path.endswith("/index"):
                    body = json.dumps([{"name": m, "state": "READY"} for m in fake.ready]).encode()
                elif self.path.endswith("/load"):
                    fake.start_stub(self.path.split("/")[-2])
                    if fake.on_load:
                        fake.on_load()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"127.0.0.1:{self.http.server_address[1]}"

    def start_stub(self, model: str = "wan_fake") -> Path:
        region = f"triton_python_backend_shm_region_test_{uuid.uuid4().hex}"
        shm = Path("/dev/shm") / region
        shm.write_bytes(b"\0" * 16)
        self.procs.append(subprocess.Popen([str(self.tmp / "triton_python_backend_stub"),
                                            str(self.tmp / model / "1" / "model.py"), f"/{region}", "1", "1",
                                            str(os.getpid()), "lib", "1", f"{model}_0_0", "dir"]))
        return shm

    def close(self):
        self.http.shutdown()
        for p in self.procs:
            p.kill()
            p.wait()
        for shm in Path("/dev/shm").glob("triton_python_backend_shm_region_test_*"):
            shm.unlink()


@pytest.fixture
def fake_triton(tmp_path):
    fake = FakeTriton(tmp_path)
    yield fake
    fake.close()


def wait_for(check, timeout_s: float = 10.0):
    import time
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_supervisor_reloads_the_model_of_a_dead_stub_and_removes_its_shm(fake_triton):
    shm = fake_triton.start_stub()
    wait_for(lambda: "wan_fake_0_0" in list_stubs(os.getpid()))
    sup = StubSupervisor(os.getpid(), fake_triton.url, token="tok", log=lambda m: None)
    assert sup.check() == [] and sup.known["wan_fake_0_0"].shm_region == shm.name
    os.kill(fake_triton.procs[0].pid, signal.SIGKILL)  # not reaped: a zombie, as under tritonserver
    wait_for(lambda: "wan_fake_0_0" not in list_stubs(os.getpid()))
    assert sup.check() == ["wan_fake"]
    paths = [p for p, _ in fake_triton.calls]
    assert paths == ["/v2/repository/index", "/v2/repository/models/wan_fake/unload",
                     "/v2/repository/models/wan_fake/load"]
    assert all(token == "tok" for _, token in fake_triton.calls)
    assert not shm.exists() and sup.recoveries == 1
    assert sup.known["wan_fake_0_0"].pid == fake_triton.procs[1].pid  # the new stub is watched now
    assert sup.check() == [] and len(fake_triton.calls) == 3


def test_a_stub_that_dies_during_another_reload_is_found_at_the_next_check(fake_triton):
    fake_triton.start_stub("wan_fake")
    other = fake_triton.start_stub("wan_other")
    wait_for(lambda: {"wan_fake_0_0", "wan_other_0_0"} <= set(list_stubs(os.getpid())))
    sup = StubSupervisor(os.getpid(), fake_triton.url, log=lambda m: None)
    sup.check()
    victim = fake_triton.procs[1]

    def kill_other():  # wan_other's stub dies while wan_fake is being loaded again
        victim.kill()
        wait_for(lambda: "wan_other_0_0" not in list_stubs(os.getpid()))

    fake_triton.on_load = kill_other
    os.kill(fake_triton.procs[0].pid, signal.SIGKILL)
    wait_for(lambda: "wan_fake_0_0" not in list_stubs(os.getpid()))
    assert sup.check() == ["wan_fake"]
    fake_triton.on_load = None
    assert sup.check() == ["wan_other"] and sup.recoveries == 2 and not other.exists()


def test_supervisor_leaves_a_model_an_operator_unloaded(fake_triton):
    fake_triton.start_stub()
    wait_for(lambda: "wan_fake_0_0" in list_stubs(os.getpid()))
    sup = StubSupervisor(os.getpid(), fake_triton.url, log=lambda m: None)
    sup.check()
    fake_triton.ready.discard("wan_fake")  # unloaded on purpose: the index no longer says READY
    fake_triton.procs[0].terminate()
    wait_for(lambda: "wan_fake_0_0" not in list_stubs(os.getpid()))
    assert sup.check() == ["wan_fake"]
    assert [p for p, _ in fake_triton.calls] == ["/v2/repository/index"] and sup.recoveries == 0
    assert sup.known == {}


# ---------------------------------------------------------------------------------------------------------------
# The wrapper's exit code: a stop it was asked for is 0 (tritonserver exits 1 on SIGTERM), a crash is not
# ---------------------------------------------------------------------------------------------------------------
FAKE_SERVER = ("import signal, sys, time\n"
               "signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))  # as tritonserver: 1 after a clean SIGTERM stop\n"
               "time.sleep(float(sys.argv[1]))\n"
               "sys.exit(3)\n")


def wrapper(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wan_distill.serving.supervisor", "--ready-timeout", "30", "--",
                             sys.executable, "-c", FAKE_SERVER, str(seconds), "--http-port=1"],
                            stderr=subprocess.DEVNULL)


def test_wrapper_reports_a_requested_stop_as_clean_and_a_crash_as_is():
    import time
    proc = wrapper(60)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert wrapper(0.2).wait(20) == 3


def test_launcher_exec_with_supervise_runs_tritonserver_under_the_supervisor(tmp_path):
    """The container path (docker/Dockerfile's wan-serve): triton_server.py --exec BINARY --supervise."""
    import time
    fake = tmp_path / "tritonserver"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv))\n"
                    + FAKE_SERVER.replace("float(sys.argv[1])", "60"))
    fake.chmod(0o755)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, str(root / "scripts" / "triton_server.py"), "--exec", str(fake),
                             "--supervise", "--model-repository", str(tmp_path), "--", "--http-port=1"],
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: (tmp_path / "argv.json").exists(), 30)
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert "--model-control-mode=explicit" in argv and any(a.startswith("--grpc-restricted-protocol=") for a in argv)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
