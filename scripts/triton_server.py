#!/usr/bin/env python3
"""Start/stop the real tritonserver (laid out by ``scripts/setup_triton.sh`` in ``.triton/``) on loopback.

The python-backend stub embeds CPython in isolated mode: PYTHONPATH is ignored and the venv is found through
the first ``python3`` on PATH, so the server runs with ``<venv>/bin`` first on PATH and with
LD_LIBRARY_PATH = pytriton's bundled libs + the base interpreter's LIBDIR.

Library use::

    from triton_server import TritonServer
    with TritonServer("model_repository", env={"WAN_T2V_MODEL_PATH": "/weights/Wan2.1-T2V-14B"}) as srv:
        print(srv.grpc_url)             # 127.0.0.1:<free port>

CLI (``make serve``)::

    python scripts/triton_server.py --model-repository model_repository --grpc-port 8001 --http-port 8000 --metrics-port 8002
    # a deployment profile (or $WAN_PROFILE): its generated repository under outputs/profiles/, explicit model control
    python scripts/triton_server.py --profile t2v-14b --grpc-port 8001
    # in a container: exec the image's tritonserver on all interfaces (docker/Dockerfile)
    WAN_PROFILE=t2v-14b python scripts/triton_server.py --exec tritonserver -- --exit-timeout-secs=30
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import shutil
import secrets
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping

from wan_distill.serving.supervisor import CONTROL_HEADER, StubSupervisor, supervised_args

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRITON_DIR = REPO_ROOT / ".triton" / "server"
DEFAULT_VENV = REPO_ROOT / ".venv"
# Log lines that mean startup cannot succeed (the server usually exits on its own soon after).
_FATAL_MARKERS = ("failed to load", "Poll failed for model directory", "error: creating server")


class TritonServerError(RuntimeError):
    """The server did not come up (died, a model failed to load, or readiness timed out); carries the log tail."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int, taken: Iterable[int]) -> list[int]:
    ports: list[int] = []
    taken = set(taken)
    while len(ports) < n:
        p = free_port()
        if p not in taken and p not in ports:
            ports.append(p)
    return ports


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3.*/site-packages"))
    if not found:
        raise TritonServerError(f"no site-packages under {venv}/lib (is {venv} a venv?)")
    return found[-1]


def server_env(venv: Path = DEFAULT_VENV, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver: os.environ + ``env``, venv bin first on PATH, libs on LD_LIBRARY_PATH."""
    venv = Path(venv).resolve()
    out = dict(os.environ)
    out.update({k: str(v) for k, v in (env or {}).items()})
    out.pop("PYTHONHOME", None)
    out["VIRTUAL_ENV"] = str(venv)
    out["PATH"] = os.pathsep.join([str(venv / "bin")] + [p for p in out.get("PATH", "").split(os.pathsep)
                                                         if p and p != str(venv / "bin")])
    libs = [str(_site_packages(venv) / "nvidia_pytriton.libs")]
    libdir = sysconfig.get_config_var("LIBDIR")  # base interpreter's libpython (venvs share it)
    if libdir:
        libs.append(libdir)
    if out.get("LD_LIBRARY_PATH"):
        libs.append(out["LD_LIBRARY_PATH"])
    out["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    return out


def remove_stray_pycache(model_repository: Path) -> bool:
    """Triton polls every sub-directory of the repository as a model, so a ``__pycache__/`` left by a model.py
    importing a helper module that lives beside the models would fail startup ("Poll failed for model
    directory '__pycache__'"). Remove it when it holds nothing but bytecode. Returns True if removed."""
    cache = Path(model_repository) / "__pycache__"
    if not cache.is_dir() or any(not (f.is_file() and f.suffix == ".pyc") for f in cache.iterdir()):
        return False
    shutil.rmtree(cache, ignore_errors=True)
    return True


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class TritonServer:
    """A tritonserver process bound to 127.0.0.1; context manager. Ports left as None are picked free."""

    def __init__(self, model_repository: str | os.PathLike, grpc_port: int | None = None,
                 http_port: int | None = None, metrics_port: int | None = None,
                 log_path: str | os.PathLike | None = None, extra_args: Iterable[str] = (),
                 ready_timeout_s: float = 120.0, env: Mapping[str, str] | None = None,
                 exit_timeout_s: int = 5, triton_dir: str | os.PathLike = DEFAULT_TRITON_DIR,
                 venv: str | os.PathLike = DEFAULT_VENV, die_with_parent: bool = True,
                 supervise: bool = False, supervise_interval_s: float = 1.0):
        self.model_repository = Path(model_repository).resolve()
        self.triton_dir = Path(triton_dir).resolve()
        self.venv = Path(venv)
        chosen = [p for p in (grpc_port, http_port, metrics_port) if p]
        auto = iter(_free_ports(sum(p is None for p in (grpc_port, http_port, metrics_port)), chosen))
        self.grpc_port = grpc_port or next(auto)
        self.http_port = http_port or next(auto)
        self.metrics_port = metrics_port or next(auto)
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / \
            f"tritonserver-{os.getpid()}-{self.grpc_port}.log"
        self.extra_args = list(extra_args)
        self.ready_timeout_s = ready_timeout_s
        self.env = dict(env or {})
        self.exit_timeout_s = exit_timeout_s
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None
        # supervise: a thread reloads the model of a crashed python stub (wan_distill.serving.supervisor); the
        # server then runs in explicit model-control mode with that API restricted to the supervisor's token
        self.supervise, self.supervise_interval_s = supervise, supervise_interval_s
        self.control_token = secrets.token_hex(16) if supervise else ""
        self.supervisor: StubSupervisor | None = None
        self.killed = False  # stop() had to SIGKILL

    # --- addresses -------------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        exe = self.triton_dir / "bin" / "tritonserver"
        return [str(exe),
                f"--model-repository={self.model_repository}",
                f"--backend-directory={self.triton_dir / 'backends'}",
                f"--cache-directory={self.triton_dir / 'caches'}",
                "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                f"--metrics-port={self.metrics_port}",
                "--disable-auto-complete-config", f"--exit-timeout-secs={self.exit_timeout_s}",
                *(supervised_args(self.extra_args, self.control_token) if self.supervise else self.extra_args)]

    @property
    def control_headers(self) -> dict[str, str]:
        """Headers a model-control call (load / unload / index) needs on a supervised server."""
        return {CONTROL_HEADER: self.control_token} if self.control_token else {}

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> "TritonServer":
        """Launch and block until ``/v2/health/ready``; raises :class:`TritonServerError` with the log tail."""
        if self.proc is not None:
            raise TritonServerError("server already started")
        exe = self.triton_dir / "bin" / "tritonserver"
        if not exe.exists():
            raise TritonServerError(f"{exe} not found: run scripts/setup_triton.sh first")
        if not self.model_repository.is_dir():
            raise TritonServerError(f"model repository {self.model_repository} is not a directory")
        remove_stray_pycache(self.model_repository)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=server_env(self.venv, self.env),
                                         cwd=str(self.model_repository), start_new_session=True,
                                         preexec_fn=_die_with_parent if self.die_with_parent else None)
        try:
            self._wait_ready()
            if self.supervise:
                self.supervisor = StubSupervisor(self.proc.pid, self.http_url, self.control_token,
                                                 self.supervise_interval_s, log=self._log_line)
                self.supervisor.check()  # learn the stubs now
                self.supervisor.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _log_line(self, message: str) -> None:
        """Supervisor messages go to stderr and into the server log (one place to read what happened)."""
        line = f"[supervisor] {message}"
        print(line, file=sys.stderr, flush=True)
        with open(self.log_path, "a") as log:
            log.write(line + "\n")

    def _wait_ready(self) -> None:
        url = f"http://{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise TritonServerError(f"tritonserver exited with code {rc} during startup; "
                                        f"log {self.log_path}:\n{self.log_tail()}")
            text = self._read_log()
            bad = [ln for ln in text.splitlines() if any(m in ln for m in _FATAL_MARKERS)]
            if bad:
                raise TritonServerError(f"tritonserver failed to start: {bad[0].strip()}\n"
                                        f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TritonServerError(f"tritonserver not ready after {self.ready_timeout_s:.0f} s; "
                                        f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.1)

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self._read_log().splitlines()[-n:])

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM by PID, SIGKILL after ``timeout_s`` (default exit timeout + 10 s). Returns the exit code."""
        if self.proc is None:
            return None
        if self.supervisor is not None:
            self.supervisor.stop()
        timeout_s = self.exit_timeout_s + 10.0 if timeout_s is None else timeout_s
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.killed = True
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        return self.proc.wait()

    def __enter__(self) -> "TritonServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(model_repository: str | os.PathLike, grpc_port: int | None = None, http_port: int | None = None,
          metrics_port: int | None = None, log_path: str | os.PathLike | None = None,
          extra_args: Iterable[str] = (), ready_timeout_s: float = 120.0, **kw) -> TritonServer:
    """Start a server and wait until it is ready; the caller stops it (``.stop()``)."""
    return TritonServer(model_repository, grpc_port, http_port, metrics_port, log_path, extra_args,
                        ready_timeout_s, **kw).start()


# --- deployment profiles (wan_distill.profiles): what a GPU deployment serves ---------------------------
def _profiles():
    try:
        from wan_distill import profiles
    except ImportError:  # a checkout without `pip install .`
        sys.path.insert(0, str(REPO_ROOT / "python_backend"))
        from wan_distill import profiles
    return profiles


def gpu_free_bytes() -> dict[int, int] | None:
    """Free bytes of every visible GPU (nvidia-smi; no CUDA context is created), or None when it cannot tell."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index,memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    free = {}
    for line in out.strip().splitlines():
        index, mib = (v.strip() for v in line.split(","))
        free[int(index)] = int(mib) << 20
    return free or None


def prepare_profile(name: str, out: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                    device: str = "gpu", memory_check: bool = True,
                    free_bytes=gpu_free_bytes) -> tuple[Path, list[str], dict[str, str]]:
    """Resolve profile ``name`` with the WAN_* settings of ``env`` (default os.environ), refuse it when its memory plan
    does not fit the visible GPUs, and write its repository (default outputs/profiles/<name>/). Returns (repository,
    tritonserver arguments: explicit mode + one --load-model per model, environment for the models)."""
    profiles = _profiles()
    env = dict(os.environ if env is None else env)
    resolved = profiles.resolve(name, env, project_root=REPO_ROOT)
    if device == "gpu" and memory_check:
        free = free_bytes()
        if free is None:
            print("[triton_server] no GPU query (nvidia-smi): each model checks its own plan before it loads",
                  file=sys.stderr)
        else:
            resolved.check(free)
    out = Path(out) if out else REPO_ROOT / "outputs" / "profiles" / resolved.name.replace("+", "_")
    repo = profiles.write_repository(resolved, out, REPO_ROOT / "model_repository", REPO_ROOT, device=device)
    for gpu, models in resolved.by_gpu().items() if device == "gpu" else ():
        print(f"[triton_server] profile {resolved.name}, GPU {gpu}: "
              + "; ".join(f"{m.model} {m.describe()}" for m in models), file=sys.stderr)
    model_env = {k: v for k, v in resolved.env.items() if not env.get(k)}
    return repo, resolved.tritonserver_args(), model_env


def add_profile_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--profile", default=None,
                    help="deployment profile (default $WAN_PROFILE unless --model-repository is given; none: serve "
                         "the repository as it is), "
                         "e.g. t2v-14b, t2v-1.3b, i2v-14b-480p, i2v-14b-720p, t2v+i2v, t2v-14b+baseline")
    ap.add_argument("--profile-repository", default=os.environ.get("WAN_PROFILE_REPOSITORY") or None,
                    help="where the profile's generated repository goes (default $WAN_PROFILE_REPOSITORY, else "
                         "outputs/profiles/<profile>)")
    ap.add_argument("--profile-device", choices=("gpu", "cpu"), default="gpu",
                    help="cpu: the profile's models as KIND_CPU instances (to try a profile on a CPU host)")
    ap.add_argument("--no-memory-check", action="store_true",
                    help="skip the launcher's check of the profile's memory plan against free GPU memory")
    ap.add_argument("--exec", dest="exec_binary", default=None, metavar="COMMAND",
                    help="exec this tritonserver command line in place of the launcher (containers): no loopback "
                         "binding, extra arguments passed as they are")


def apply_profile(a: argparse.Namespace, env: dict[str, str]) -> None:
    """With a profile: point ``a`` at its generated repository and add its tritonserver arguments and settings."""
    if a.profile is None and a.model_repository is None:
        a.profile = os.environ.get("WAN_PROFILE", "")
    if a.model_repository is None:
        a.model_repository = str(REPO_ROOT / "model_repository")
    if not a.profile:
        return
    repo, args, model_env = prepare_profile(a.profile, a.profile_repository, device=a.profile_device,
                                            memory_check=not a.no_memory_check)
    a.model_repository = str(repo)
    a.extra = args + list(a.extra)
    for key, value in model_env.items():
        env.setdefault(key, value)


def exec_tritonserver(command: str, model_repository: str, extra: list[str], env: Mapping[str, str],
                      supervise: bool = False) -> None:
    """Replace this process by ``command --model-repository=... extra`` (signals then reach it directly).
    ``command`` is a command line: ``tritonserver``, or e.g. ``python3 -m wan_distill.serving.supervisor -- tritonserver``;
    ``supervise`` puts the stub supervisor in front of it (``python -m wan_distill.serving.supervisor -- command ...``)."""
    remove_stray_pycache(Path(model_repository))
    argv = [*shlex.split(command), f"--model-repository={model_repository}", *extra]
    if supervise:
        argv = [sys.executable, "-m", "wan_distill.serving.supervisor", "--", *argv]
    print(f"[triton_server] exec {' '.join(argv)}", file=sys.stderr, flush=True)
    os.execvpe(argv[0], argv, {**os.environ, **env})


def _follow(path: Path, stop: threading.Event, out=sys.stdout) -> None:
    """Echo a growing log file (tail -f)."""
    with open(path, errors="replace") as f:
        while not stop.is_set():
            line = f.readline()
            if line:
                out.write(line)
                out.flush()
            else:
                time.sleep(0.2)
        out.write(f.read())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run tritonserver in the foreground on 127.0.0.1 (Ctrl-C stops it).")
    ap.add_argument("--model-repository", default=None, help="default: model_repository/ (or the profile's)")
    ap.add_argument("--grpc-port", type=int, default=None, help="default: a free port")
    ap.add_argument("--http-port", type=int, default=None, help="default: a free port")
    ap.add_argument("--metrics-port", type=int, default=None, help="default: a free port")
    ap.add_argument("--log-path", default=None, help="server log file (default: outputs/logs/tritonserver-<grpc>.log)")
    ap.add_argument("--ready-timeout", type=float, default=1800.0, help="seconds to wait for all models to load")
    ap.add_argument("--exit-timeout", type=int, default=30, help="--exit-timeout-secs for in-flight requests")
    ap.add_argument("--quiet", action="store_true", help="do not echo the server log to stdout")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the models (e.g. WAN_T2V_MODEL_PATH=/weights/Wan2.1-T2V-14B); repeatable")
    ap.add_argument("--supervise", action="store_true",
                    help="reload the model of a crashed python stub (explicit model control; README, Reliability)")
    ap.add_argument("extra", nargs="*", help="extra tritonserver arguments (after --)")
    add_profile_arguments(ap)
    a = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in a.env)
    try:
        apply_profile(a, env)
    except ValueError as e:  # ProfileError / MemoryPlanError (ConfigError): refused before anything starts
        print(f"[triton_server] {e}", file=sys.stderr)
        return 2
    if a.exec_binary:
        exec_tritonserver(a.exec_binary, a.model_repository, a.extra, env, a.supervise)
    srv = TritonServer(a.model_repository, a.grpc_port, a.http_port, a.metrics_port, a.log_path,
                       a.extra, a.ready_timeout, env=env, exit_timeout_s=a.exit_timeout, supervise=a.supervise)
    if a.log_path is None:
        srv.log_path = REPO_ROOT / "outputs" / "logs" / f"tritonserver-{srv.grpc_port}.log"
    stop_follow = threading.Event()
    interrupted = False

    def on_signal(signum, _frame):
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    print(f"[triton_server] starting; log {srv.log_path}", file=sys.stderr, flush=True)
    try:
        follower = None
        srv.log_path.parent.mkdir(parents=True, exist_ok=True)
        srv.log_path.write_bytes(b"")
        if not a.quiet:
            follower = threading.Thread(target=_follow, args=(srv.log_path, stop_follow), daemon=True)
            follower.start()
        srv.start()
        print(f"[triton_server] ready (pid {srv.pid}): gRPC {srv.grpc_url}  HTTP {srv.http_url}  "
              f"metrics http://{srv.metrics_url}  -- Ctrl-C to stop", file=sys.stderr, flush=True)
        rc = srv.proc.wait()
        print(f"[triton_server] tritonserver exited with code {rc}", file=sys.stderr)
        return rc or 1
    except KeyboardInterrupt:
        print("\n[triton_server] stopping ...", file=sys.stderr, flush=True)
        rc = srv.stop()
        # tritonserver exits 1 after SIGTERM even when it stopped cleanly; only a stop that needed SIGKILL is not clean
        print(f"[triton_server] stopped (tritonserver exit code {rc}; "
              f"{'killed after the exit timeout' if srv.killed else 'a clean stop'})", file=sys.stderr)
        return 1 if srv.killed else 0
    except TritonServerError as e:
        print(f"[triton_server] {e}", file=sys.stderr)
        return 1
    finally:
        stop_follow.set()


if __name__ == "__main__":
    sys.exit(main())
