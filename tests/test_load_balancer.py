"""Two real tritonserver replicas behind a real nginx (deploy/nginx) doing per-request gRPC load balancing.

* 20 requests through nginx are spread over both replicas: each replica's Triton statistics count exactly the
  requests nginx's access log says it sent there; the same seed gives the same frames on either replica.
* One replica is SIGKILLed while it has requests in flight: those requests get HTTP 502 from nginx (gRPC
  UNAVAILABLE), wan_client resends them, and every request succeeds with the frames of the undisturbed run.
* A request that nginx sends to the dead replica's closed port never reaches it and is passed on by nginx itself.

Skipped only when nginx is not installed (.ci/run installs the Debian package)."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "deploy" / "nginx"))
from balancer import NginxBalancer, find_nginx, parse_access_log, render  # noqa: E402
from demo import demo_env  # noqa: E402
from triton_server import TritonServer, free_port  # noqa: E402

from wan_client import GenerationRequest, WanClient, generate_many  # noqa: E402
from wan_client.client import build_inputs, build_outputs  # noqa: E402
from wan_client.errors import ServerError, ServerUnavailableError, from_triton  # noqa: E402

pytestmark = pytest.mark.server
SMALL = dict(height=32, width=48, num_frames=5)
FAIL_TIMEOUT_S = 2  # nginx: a failed replica gets no requests for this long, then is tried again


def requests(seeds):
    return [GenerationRequest("a red fox", seed=s, return_frames=True, **SMALL) for s in seeds]


def success_counts(url: str) -> dict[str, int]:
    """{model: successful inferences} from the replica's Triton statistics (all loaded models)."""
    with grpcclient.InferenceServerClient(url) as c:
        stats = c.get_inference_statistics(as_json=True)["model_stats"]
    return {m["name"]: int(m["inference_stats"]["success"].get("count", 0)) for m in stats}


def python_stubs(server_pid: int) -> dict[int, str]:
    """{pid: shared-memory region} of the server's python-backend stub processes (its children)."""
    stubs = {}
    for d in os.listdir("/proc"):
        try:
            ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            argv = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server_pid and argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 2:
            stubs[int(d)] = argv[2].decode()
    return stubs


def reap_stubs(stubs: dict[int, str]) -> None:
    """A SIGKILLed tritonserver leaves some stubs running (reparented to init) and their /dev/shm regions behind:
    end those processes by PID and remove their regions."""
    for pid, region in stubs.items():
        try:
            if b"triton_python_backend_stub" in open(f"/proc/{pid}/cmdline", "rb").read():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in stubs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for region in stubs.values():
        if region.startswith("triton_python_backend_shm_region_"):
            try:
                os.unlink(f"/dev/shm/{region}")
            except OSError:
                pass


def entries_since(balancer, start: int, successes: int, timeout_s: float = 10.0):
    """Access-log entries after the first ``start``, once ``successes`` of them are 200s (nginx writes a line just
    after the response has gone out, so the last one may lag the client by a moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        entries = balancer.access_entries()[start:]
        if sum(e.status == 200 for e in entries) >= successes or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def test_render_rejects_bad_addresses(tmp_path):
    conf = render(["127.0.0.1:8001", "10.0.0.5:8001"], "127.0.0.1:8080", tmp_path, max_fails=2, fail_timeout_s=7)
    assert "server 127.0.0.1:8001 max_fails=2 fail_timeout=7s;" in conf
    assert "server 10.0.0.5:8001 max_fails=2 fail_timeout=7s;" in conf
    assert "listen 127.0.0.1:8080 http2;" in conf and "grpc_pass grpc://triton_grpc;" in conf
    assert "daemon off;" in conf and f"pid {tmp_path.resolve()}/nginx.pid;" in conf and "{{" not in conf
    for bad in (["127.0.0.1"], ["127.0.0.1:80; evil"], []):
        with pytest.raises(ValueError):
            render(bad, "127.0.0.1:8080", tmp_path)


def test_parse_access_log():
    text = ('2026-01-01T00:00:00+00:00 "POST /inference.GRPCInferenceService/ModelInfer HTTP/2.0" status=200 '
            'grpc_status=0 upstream=127.0.0.1:1, 127.0.0.1:2 upstream_status=502, 200 request_time=0.1\n'
            '2026-01-01T00:00:01+00:00 "POST /x HTTP/2.0" status=502 grpc_status=- upstream=127.0.0.1:1 '
            'upstream_status=502 request_time=0.2\nnot a log line\n')
    a, b = parse_access_log(text)
    assert (a.status, a.grpc_status, a.upstreams, a.upstream_statuses) == (200, "0", ["127.0.0.1:1", "127.0.0.1:2"],
                                                                            ["502", "200"])
    assert (b.status, b.grpc_status, b.upstreams) == (502, "-", ["127.0.0.1:1"])


@pytest.fixture(scope="module")
def replicas(tiny_models, tmp_path_factory):
    """Two replicas serving only wan_t2v (and its composing models), 1 torch thread per model."""
    if find_nginx() is None:
        pytest.skip("nginx is not installed (Debian package 'nginx'; .ci/run installs it with apt-get)")
    logs = tmp_path_factory.mktemp("replicas")
    env = {**demo_env(tiny_models["t2v"], tiny_models["i2v"]), "WAN_NUM_THREADS": "1"}
    args = ["--model-control-mode=explicit", "--load-model=wan_t2v"]
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(TritonServer(ROOT / "model_repository", env=env, extra_args=args,
                                        log_path=logs / f"{name}.log", ready_timeout_s=300).start())
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def balancer(replicas, tmp_path_factory):
    with NginxBalancer([s.grpc_url for s in replicas], tmp_path_factory.mktemp("nginx"),
                       fail_timeout_s=FAIL_TIMEOUT_S) as lb:
        yield lb


@pytest.fixture(scope="module")
def reference(replicas, balancer):
    """20 requests through nginx, 4 at a time (seeds 100..109, each twice); returns {seed: frames}."""
    before = [success_counts(s.grpc_url) for s in replicas]
    log_start = len(balancer.access_entries())
    seeds = [100 + i // 2 for i in range(20)]
    results = generate_many(requests(seeds), url=balancer.grpc_url, concurrency=4, timeout_s=120)
    after = [success_counts(s.grpc_url) for s in replicas]
    return dict(seeds=seeds, results=results, before=before, after=after,
                entries=entries_since(balancer, log_start, 20))


def test_requests_spread_over_both_replicas(replicas, balancer, reference):
    entries = reference["entries"]
    assert len(entries) == 20 and all(e.status == 200 and e.grpc_status == "0" for e in entries)
    via_nginx = [sum(e.upstreams == [s.grpc_url] for e in entries) for s in replicas]
    served = [after["wan_t2v"] - before["wan_t2v"] for before, after in zip(reference["before"], reference["after"])]
    assert served == via_nginx, (served, via_nginx)      # Triton's own counts agree with nginx's log
    assert sum(served) == 20 and min(served) >= 5, served  # round robin: both replicas carry the load
    for before, after in zip(reference["before"], reference["after"]):  # the composing models ran as often
        assert after["wan_t2v_dit"] - before["wan_t2v_dit"] == after["wan_t2v"] - before["wan_t2v"]


def test_same_seed_same_frames_on_either_replica(reference):
    """Why resending a request is safe: the video depends only on the request (seed included), not on the replica."""
    by_seed = {}
    for seed, r in zip(reference["seeds"], reference["results"]):
        assert r.frames.shape == (5, 32, 48, 3)
        by_seed.setdefault(seed, []).append(r.frames)
    for seed, frames in by_seed.items():
        assert (frames[0] == frames[1]).all(), seed
    assert len({f[0].tobytes() for f in by_seed.values()}) == len(by_seed)  # different seeds, different videos


def test_replica_killed_mid_run(replicas, balancer, reference):
    """SIGKILL one replica while it has requests in flight; every request still succeeds (runs last: the
    replica stays dead)."""
    victim, survivor = replicas
    ref = {seed: r.frames for seed, r in zip(reference["seeds"], reference["results"])}
    seeds = [100 + i % 10 for i in range(16)]
    log_start = len(balancer.access_entries())
    survivor_before = success_counts(survivor.grpc_url)["wan_t2v"]

    out = {}
    run = threading.Thread(target=lambda: out.update(results=generate_many(
        requests(seeds), url=balancer.grpc_url, concurrency=4, timeout_s=120, backoff_s=0.2)))
    run.start()
    # Kill once the victim has answered a request of this run and holds another one inside its ensemble
    # (past the text encoder, not finished): Triton's statistics say so.
    deadline, killed = time.monotonic() + 60, False
    victim_before = success_counts(victim.grpc_url)["wan_t2v"]
    stubs = python_stubs(victim.pid)
    assert len(stubs) == len(success_counts(victim.grpc_url)) - 1, stubs  # one per model but the ensemble
    try:
        while time.monotonic() < deadline and run.is_alive():
            c = success_counts(victim.grpc_url)
            if c["wan_t2v"] > victim_before and c["wan_text_encoder"] > c["wan_t2v"]:
                os.kill(victim.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.005)
        run.join(timeout=300)
        assert killed, "the victim never had a request in flight: the run finished first"
        assert victim.proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if killed:
            reap_stubs(stubs)

    results = out["results"]
    assert len(results) == 16
    for seed, r in zip(seeds, results):                 # every request succeeded, with the undisturbed video
        assert (r.frames == ref[seed]).all(), seed
    entries = entries_since(balancer, log_start, 16)
    died = [e for e in entries if e.status == 502]
    # What a client sees when the replica dies mid-request: HTTP 502 without a grpc-status trailer, which gRPC
    # maps to UNAVAILABLE; wan_client retried each of those once, so nginx logged one extra request per 502.
    assert died and all(e.upstreams == [victim.grpc_url] and e.grpc_status == "-" for e in died), died
    assert len(entries) == 16 + len(died)
    completed_on_victim = sum(e.status == 200 and e.upstreams[-1] == victim.grpc_url for e in entries)
    assert success_counts(survivor.grpc_url)["wan_t2v"] - survivor_before == 16 - completed_on_victim
    assert "upstream prematurely closed connection" in balancer.error_log.read_text()

    # Passive health: after fail_timeout nginx tries the dead replica again; the connection is refused, so the
    # request never reached it and nginx passes it to the survivor itself (the client sees one plain success).
    time.sleep(FAIL_TIMEOUT_S + 0.5)
    log_start = len(balancer.access_entries())
    with WanClient(balancer.grpc_url, timeout_s=60, retries=0) as client:
        for seed in (100, 101, 102, 103):
            assert (client.t2v("a red fox", seed=seed, return_frames=True, **SMALL).frames == ref[seed]).all()
    entries = entries_since(balancer, log_start, 4)
    assert len(entries) == 4 and all(e.status == 200 for e in entries)
    assert [victim.grpc_url, survivor.grpc_url] in [e.upstreams for e in entries], entries


def test_stream_reset_by_proxy_is_unavailable():
    """wan_client retries gRPC's report of a stream reset (RST_STREAM code 2) as UNAVAILABLE; an INTERNAL that Triton
    sent for a failed model is raised (a dead stub's "is not healthy" is the one other retried INTERNAL:
    tests/test_reliability.py)."""
    reset = from_triton(InferenceServerException(
        "Stream removed (RST_STREAM (Received RST_STREAM with error code 2))", status="StatusCode.INTERNAL"))
    assert isinstance(reset, ServerUnavailableError) and reset.code == "UNAVAILABLE"
    triton = from_triton(InferenceServerException("Failed to process the request(s) for model 'wan_t2v_dit_0_0', "
                                                  "message: RuntimeError: boom", status="StatusCode.INTERNAL"))
    assert type(triton) is ServerError and triton.code == "INTERNAL"


class DyingUpstream:
    """tests/dying_grpc_upstream.py on a free port: dies in the middle of its first ModelInfer response."""

    def __enter__(self):
        self.url = f"127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "dying_grpc_upstream.py"),
                                      self.url.rsplit(":", 1)[1]], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "listening"
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


def raw_infer_status(url: str) -> tuple[str, str]:
    with grpcclient.InferenceServerClient(url) as c:
        with pytest.raises(InferenceServerException) as ei:
            c.infer("wan_t2v", build_inputs("a red fox", 1), outputs=build_outputs(False), client_timeout=30)
    return ei.value.status(), ei.value.message()


def test_replica_dying_mid_response(replicas, tmp_path):
    """A replica that dies after its response headers went out: a direct client sees UNAVAILABLE, a client behind
    nginx sees INTERNAL "RST_STREAM with error code 2" (nginx can only reset the stream it already answered), which
    wan_client treats as UNAVAILABLE: the request is resent and succeeds on the other replica."""
    live = next(s for s in replicas if s.is_running())  # after test_replica_killed_mid_run only one is left
    with DyingUpstream() as up:
        assert raw_infer_status(up.url)[0] == "StatusCode.UNAVAILABLE"
    with DyingUpstream() as up, NginxBalancer([up.url], tmp_path / "alone") as lb:
        status, message = raw_infer_status(lb.grpc_url)
        assert status == "StatusCode.INTERNAL" and "RST_STREAM with error code 2" in message, (status, message)
        (entry,) = entries_since(lb, 0, 1)
        assert entry.grpc_status == "-" and entry.upstreams == [up.url]  # headers (200) went out, no trailer came

    with DyingUpstream() as up, NginxBalancer([up.url, live.grpc_url], tmp_path / "pair") as lb:
        with WanClient(lb.grpc_url, timeout_s=60, backoff_s=0.1) as client:
            for seed in (7, 8):
                assert client.t2v("a red fox", seed=seed, return_frames=True, **SMALL).frames.shape == (5, 32, 48, 3)
        entries = entries_since(lb, 0, 3)
        cut = [e for e in entries if e.upstreams == [up.url]]
        assert len(cut) == 1 and cut[0].grpc_status == "-", entries  # the dying replica got one request
        assert len(entries) == 3 and sum(e.grpc_status == "0" for e in entries) == 2, entries  # + one resend
