#!/usr/bin/env python3
"""nginx (the Debian package) as a gRPC load balancer in front of tritonserver replicas.

Renders ``nginx.conf.template`` beside this file with the replica addresses and runs nginx in the foreground as a
self-contained instance: its own prefix folder (config, pid file, logs, temp folders), ``daemon off``, listening on
127.0.0.1 only, stopped by PID. Clients use the balancer's address like a single server's::

    from balancer import NginxBalancer
    with NginxBalancer(["127.0.0.1:8001", "127.0.0.1:9001"], prefix="/tmp/lb") as lb:
        WanClient(lb.grpc_url).t2v("a red fox", seed=1)

CLI::

    python deploy/nginx/balancer.py --upstream 127.0.0.1:8001 --upstream 127.0.0.1:9001 --port 8080 --prefix /tmp/lb
    python deploy/nginx/balancer.py --upstream ... --render   # print the rendered config only
"""
from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"
_ADDRESS = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):\d{1,5}$")


class NginxError(RuntimeError):
    """nginx is missing, rejected its config, or did not come up; carries the error log tail."""


def find_nginx() -> str | None:
    """The nginx binary (PATH first, then Debian's /usr/sbin/nginx, which is off a normal user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def render(upstreams: Sequence[str], listen: str, prefix: str | os.PathLike, max_fails: int = 1,
           fail_timeout_s: int = 10, error_log_level: str = "warn") -> str:
    """The nginx config for ``upstreams`` ("host:port" each) with the server listening on ``listen`` ("host:port")."""
    if not upstreams:
        raise ValueError("at least one upstream replica is needed")
    for a in (*upstreams, listen):
        if not _ADDRESS.match(a):
            raise ValueError(f"not a host:port address: {a!r}")
    if max_fails < 1 or fail_timeout_s < 1:
        raise ValueError(f"max_fails and fail_timeout_s must be >= 1, got {max_fails}, {fail_timeout_s}")
    servers = "\n".join(f"        server {a} max_fails={max_fails} fail_timeout={fail_timeout_s}s;" for a in upstreams)
    values = {"PREFIX": str(Path(prefix).resolve()), "UPSTREAM_SERVERS": servers, "LISTEN": listen,
              "ERROR_LOG_LEVEL": error_log_level, "NEXT_UPSTREAM_TRIES": str(len(upstreams))}
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:
        raise ValueError(f"template placeholders left unfilled: {sorted(set(left))}")
    if os.geteuid() == 0:
        # Started by root, nginx would switch its workers to "nobody", which cannot enter a private prefix
        # (e.g. a 0700 temp folder): keep them as the invoking user instead.
        text = text.replace("daemon off;", f"daemon off;\nuser {pwd.getpwuid(os.geteuid()).pw_name};", 1)
    return text


@dataclass
class AccessLogEntry:
    """One line of the balancer's access log (format ``grpc_lb`` in the template)."""

    request: str
    status: int
    grpc_status: str       # "-" when the upstream sent no grpc-status trailer (e.g. it died mid-request)
    upstreams: list[str]   # every replica tried for this request, in order
    upstream_statuses: list[str]


_LOG_LINE = re.compile(r'^\S+ "(?P<request>[^"]*)" status=(?P<status>\d+) grpc_status=(?P<grpc>\S+) '
                       r'upstream=(?P<up>.*?) upstream_status=(?P<ups>.*?) request_time=\S+$')


def parse_access_log(text: str) -> list[AccessLogEntry]:
    entries = []
    for line in text.splitlines():
        m = _LOG_LINE.match(line.strip())
        if not m:
            continue
        split = lambda s: [x.strip() for x in re.split(r"[,:]\s(?=\S)", s)] if s != "-" else []  # noqa: E731
        entries.append(AccessLogEntry(m["request"], int(m["status"]), m["grpc"], split(m["up"]), split(m["ups"])))
    return entries


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NginxBalancer:
    """An nginx instance balancing gRPC over ``upstreams``; context manager. ``port`` None -> a free port."""

    def __init__(self, upstreams: Iterable[str], prefix: str | os.PathLike, port: int | None = None,
                 max_fails: int = 1, fail_timeout_s: int = 10, nginx: str | None = None,
                 ready_timeout_s: float = 15.0):
        self.upstreams = list(upstreams)
        self.prefix = Path(prefix).resolve()
        self.port = port or _free_port()
        self.max_fails, self.fail_timeout_s = max_fails, fail_timeout_s
        self.nginx = nginx or find_nginx()
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.prefix / "conf" / "nginx.conf"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "access.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _command(self, *extra: str) -> list[str]:
        return [self.nginx, "-p", str(self.prefix), "-c", str(self.conf_path), "-e", str(self.error_log), *extra]

    def start(self) -> "NginxBalancer":
        if self.proc is not None:
            raise NginxError("nginx already started")
        if not self.nginx:
            raise NginxError("nginx not found: install the Debian package 'nginx' (.ci/run does)")
        for sub in ("conf", "logs", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(render(self.upstreams, self.grpc_url, self.prefix, self.max_fails,
                                         self.fail_timeout_s))
        test = subprocess.run(self._command("-t", "-q"), capture_output=True, text=True)
        if test.returncode != 0:
            raise NginxError(f"nginx rejected {self.conf_path}:\n{test.stderr.strip()}")
        self.proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise NginxError(f"nginx exited with code {self.proc.returncode}:\n{self.error_log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise NginxError(f"nginx not listening on {self.grpc_url} after {self.ready_timeout_s:.0f} s:\n"
                                 f"{self.error_log_tail()}")
            time.sleep(0.05)

    def error_log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def access_entries(self) -> list[AccessLogEntry]:
        """The access log so far (nginx writes each line when the request ends)."""
        try:
            return parse_access_log(self.access_log.read_text(errors="replace"))
        except OSError:
            return []

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGQUIT (graceful: finish in-flight requests) by PID, SIGKILL after ``timeout_s``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGQUIT)
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # master and its workers (own session)
                self.proc.wait()
            except ProcessLookupError:
                pass
        return self.proc.wait()

    def __enter__(self) -> "NginxBalancer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run nginx in the foreground as a gRPC load balancer on 127.0.0.1.")
    ap.add_argument("--upstream", action="append", required=True, metavar="HOST:PORT",
                    help="a tritonserver gRPC address; repeat for each replica")
    ap.add_argument("--port", type=int, default=8080, help="port to listen on (127.0.0.1)")
    ap.add_argument("--prefix", default="outputs/nginx", help="folder for config, pid file, logs and temp files")
    ap.add_argument("--max-fails", type=int, default=1)
    ap.add_argument("--fail-timeout", type=int, default=10, help="seconds")
    ap.add_argument("--render", action="store_true", help="print the rendered config and exit")
    a = ap.parse_args(argv)
    if a.render:
        print(render(a.upstream, f"127.0.0.1:{a.port}", a.prefix, a.max_fails, a.fail_timeout), end="")
        return 0
    lb = NginxBalancer(a.upstream, a.prefix, a.port, a.max_fails, a.fail_timeout)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        lb.start()
        print(f"[balancer] nginx (pid {lb.pid}) on {lb.grpc_url} -> {', '.join(lb.upstreams)}; "
              f"logs in {lb.prefix / 'logs'}; Ctrl-C to stop", file=sys.stderr, flush=True)
        return lb.proc.wait()
    except KeyboardInterrupt:
        lb.stop()
        return 0
    except NginxError as e:
        print(f"[balancer] {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
