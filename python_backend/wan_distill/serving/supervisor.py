"""Stub supervisor: finds python-backend stubs that died and reloads their models through the model-control API.

Triton 2.47+ never restarts a crashed python stub: its model keeps answering every request with INTERNAL
"Stub process '<instance>' is not healthy" while ``/v2/health/ready`` and model-ready stay true. The supervisor,
a thread beside tritonserver, every ``interval_s``:

1. lists tritonserver's child ``triton_python_backend_stub`` processes (``/proc``): model, instance, pid, and the
   stub's shared-memory region (``/dev/shm/<region>``);
2. a stub seen alive before that is gone or a zombie -> its model is broken: the supervisor **unloads** it (model-ready
   of the model and of every ensemble using it turns false at once: the honest signal, since 2.51 ignores a python
   model's ``is_ready()``), **loads** it again (a fresh stub; Triton reloads the dependent ensembles too), and removes
   the dead stub's ``/dev/shm`` region when Triton left it behind;
3. a model that is no longer READY in the repository index (an operator unloaded it) is not touched.

Needs ``--model-control-mode=explicit`` (``--load-model=*`` loads everything at start). The model-control API is then
restricted to callers sending the header ``wan-model-control: <token>`` (``--http-restricted-api`` /
``--grpc-restricted-protocol``), so a client on the inference port cannot unload models.

As a wrapper (the Docker image's CMD)::

    python -m wan_distill.serving.supervisor [--interval 1] -- tritonserver --model-repository=... [args]

adds those flags, runs tritonserver as its child, forwards SIGTERM/SIGINT, and exits 0 when a stop it was asked for
ended cleanly (tritonserver itself exits 1 on SIGTERM even when healthy). No Triton import: /proc and HTTP only.
"""
from __future__ import annotations

import argparse
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Stub", "list_stubs", "StubSupervisor", "supervised_args", "CONTROL_HEADER", "main"]

STUB_EXE = "triton_python_backend_stub"
CONTROL_HEADER = "wan-model-control"


@dataclass(frozen=True)
class Stub:
    """One python-backend stub process: ``argv`` = stub, model.py path, shm region, ..., instance name, ..."""

    pid: int
    model: str      # model folder name (<repository>/<model>/<version>/model.py)
    instance: str   # e.g. "wan_t2v_dit_0_0"
    shm_region: str  # name under /dev/shm ("" when not found)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _stub_of(pid: int, argv: list[str]) -> Stub | None:
    if not argv or not argv[0].endswith(STUB_EXE) or len(argv) < 3:
        return None
    model_py = Path(argv[1])
    model = model_py.parent.parent.name if model_py.name == "model.py" else model_py.parent.name
    instance = next((a for a in reversed(argv) if a.startswith(f"{model}_")), model)
    return Stub(pid, model, instance, argv[2].lstrip("/"))


def list_stubs(server_pid: int) -> dict[str, Stub]:
    """The live (not zombie) stubs that are children of ``server_pid``, by instance name."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        st = _stat(pid)
        if st is None or st[1] != server_pid or st[0] in "ZX":
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        stub = _stub_of(pid, [a for a in argv if a])
        if stub is not None:
            stubs[stub.instance] = stub
    return stubs


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in "ZX"


class StubSupervisor(threading.Thread):
    """Polls tritonserver's stubs; reloads the model of a dead one (see the module docstring).

    ``events``: (monotonic time, model, what) for each detection / reload, for tests and benches."""

    def __init__(self, server_pid: int, http_url: str, token: str = "", interval_s: float = 1.0,
                 log: Callable[[str], None] | None = None, load_timeout_s: float = 1800.0):
        super().__init__(name="stub-supervisor", daemon=True)
        self.server_pid, self.base = server_pid, f"http://{http_url}"
        self.headers = {CONTROL_HEADER: token} if token else {}
        self.interval_s, self.load_timeout_s = interval_s, load_timeout_s
        self.log = log or (lambda msg: print(f"[supervisor] {msg}", file=sys.stderr, flush=True))
        self.known: dict[str, Stub] = {}
        self.events: list[tuple[float, str, str]] = []
        self.recoveries = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not _alive(self.server_pid):
                return
            try:
                self.check()
            except Exception as e:  # never let a probe problem end supervision
                self.log(f"check failed: {type(e).__name__}: {e}")

    def check(self) -> list[str]:
        """One poll: returns the models found broken (and reloaded)."""
        live = list_stubs(self.server_pid)
        # an instance with no live stub any more (one replaced by a new stub was reloaded by Triton: fine)
        dead = [stub for name, stub in self.known.items() if name not in live and not _alive(stub.pid)]
        broken = sorted({stub.model for stub in dead})
        if broken:
            ready = self._ready_models()
            for model in broken:
                stubs = [s for s in dead if s.model == model]
                if model not in ready:  # unloaded on purpose (or being reloaded by someone): not ours to restart
                    for s in stubs:
                        self.known.pop(s.instance, None)
                    continue
                self._recover(model, stubs)
            live = list_stubs(self.server_pid)
        # a stub that died meanwhile (during a reload above) stays known, so the next check finds it
        self.known.update(live)
        return broken

    def _recover(self, model: str, stubs: list[Stub]) -> None:
        names = ", ".join(f"{s.instance} (pid {s.pid})" for s in stubs)
        t0 = time.monotonic()
        self.events.append((t0, model, "dead"))
        self.log(f"{model}: stub {names} died; unloading and loading it again")
        try:
            self._post(f"/v2/repository/models/{model}/unload", timeout=30)
        except OSError as e:  # still reload: a load replaces the broken instance either way
            self.log(f"{model}: unload failed ({e}); loading anyway")
        for s in stubs:
            self.known.pop(s.instance, None)
        try:
            self._post(f"/v2/repository/models/{model}/load", timeout=self.load_timeout_s)
        except OSError as e:
            self.events.append((time.monotonic(), model, "load failed"))
            self.log(f"{model}: reload failed: {e}")
            return
        removed = [s.shm_region for s in stubs if s.shm_region and _unlink_shm(s.shm_region)]
        self.recoveries += 1
        self.events.append((time.monotonic(), model, "reloaded"))
        self.log(f"{model}: reloaded in {time.monotonic() - t0:.1f} s"
                 + (f"; removed /dev/shm/{', /dev/shm/'.join(removed)}" if removed else ""))

    def _ready_models(self) -> set[str]:
        index = json.loads(self._post("/v2/repository/index", timeout=10) or b"[]")
        return {m["name"] for m in index if m.get("state") == "READY"}

    def _post(self, path: str, timeout: float) -> bytes:
        req = urllib.request.Request(self.base + path, data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json", **self.headers})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise OSError(f"HTTP {e.code}: {e.read().decode(errors='replace')[:300]}") from None


def _unlink_shm(region: str) -> bool:
    path = Path("/dev/shm") / region
    if "/" in region or not region.startswith("triton_python_backend_shm"):
        return False  # only ever the stub's own region
    try:
        path.unlink()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# Wrapper: tritonserver as a supervised child
# ---------------------------------------------------------------------------------------------------------------
def _flag(args: Sequence[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


def supervised_args(args: Sequence[str], token: str) -> list[str]:
    """tritonserver ``args`` + what supervision needs: explicit model control (everything loaded at start unless
    ``--load-model`` is given) and the model-control API restricted to the ``wan-model-control: <token>`` header."""
    out = list(args)
    mode = _flag(out, "--model-control-mode")
    if mode is None:
        out.append("--model-control-mode=explicit")
        if _flag(out, "--load-model") is None:
            out.append("--load-model=*")
    elif mode != "explicit":
        raise ValueError(f"stub supervision needs --model-control-mode=explicit, got {mode}")
    out += [f"--http-restricted-api=model-repository:{CONTROL_HEADER}={token}",
            f"--grpc-restricted-protocol=model-repository:{CONTROL_HEADER}={token}"]
    return out


def http_address(args: Sequence[str]) -> str:
    host = _flag(args, "--http-address") or "127.0.0.1"
    return f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{_flag(args, '--http-port') or 8000}"


def _wait_ready(base: str, proc: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://{base}/v2/health/ready", timeout=1.0) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run tritonserver with the stub supervisor (reloads crashed stubs).")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between stub checks")
    ap.add_argument("--ready-timeout", type=float, default=3600.0, help="seconds to wait for the first ready")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- tritonserver [args]")
    a = ap.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("give the tritonserver command after --")
    token = secrets.token_hex(16)
    full = [command[0], *supervised_args(command[1:], token)]
    proc = subprocess.Popen(full)
    stopping = threading.Event()

    def forward(signum, _frame):
        stopping.set()
        if proc.poll() is None:
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    supervisor = None
    if _wait_ready(http_address(full), proc, a.ready_timeout):
        supervisor = StubSupervisor(proc.pid, http_address(full), token, a.interval)
        supervisor.check()  # learn the stubs now, so a stub that dies before the first poll is noticed
        supervisor.start()
    rc = proc.wait()
    if supervisor is not None:
        supervisor.stop()
    if stopping.is_set() and rc in (0, 1):  # tritonserver exits 1 after a SIGTERM even when it stopped cleanly
        print(f"[supervisor] tritonserver stopped (exit code {rc}: a clean stop)", file=sys.stderr, flush=True)
        return 0
    return rc if rc > 0 else 128 - rc if rc < 0 else 0


if __name__ == "__main__":
    sys.exit(main())
