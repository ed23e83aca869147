#!/usr/bin/env python3
"""`make ui`: serve the tiny demo models (like `make serve`) and the web UI (``wan-ui``, in .venv-ui) on 127.0.0.1,
print the URL, stop both on Ctrl-C. ``--screenshot docs/ui.png`` (`make ui-screenshot`) instead generates one video
in headless Chromium and saves a small PNG of the page.

Library use (tests/test_ui.py): :class:`WanUi` runs ``wan-ui`` as a subprocess; :func:`launch_chromium` starts the
system Chromium through playwright (never a downloaded browser).
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from demo import TOY_I2V_ROOT, TOY_ROOT, demo_env, has_toy_root, toy_env  # noqa: E402
from triton_server import TritonServer, _die_with_parent, free_port  # noqa: E402

UI_VENV = ROOT / ".venv-ui"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    """Debian's chromium (``apt-get install chromium``), or None."""
    for path in (os.environ.get("WAN_CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def launch_chromium(playwright, user_data_dir: str | os.PathLike, viewport=(1280, 900)):
    """A headless persistent context of the system Chromium with a fresh ``user_data_dir``."""
    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("no chromium: apt-get install -y chromium chromium-driver")
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": viewport[0], "height": viewport[1]})


class WanUi:
    """``wan-ui --server <grpc_url>`` from .venv-ui on 127.0.0.1:<port>; context manager, stopped by PID."""

    def __init__(self, grpc_url: str, port: int | None = None, log_path: str | os.PathLike | None = None,
                 ready_timeout_s: float = 120.0, extra_args: list[str] | tuple[str, ...] = ()):
        self.grpc_url, self.port = grpc_url, port or free_port()
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"wan-ui-{self.port}.log"
        self.ready_timeout_s, self.extra_args = ready_timeout_s, list(extra_args)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> "WanUi":
        exe = UI_VENV / "bin" / "wan-ui"
        if not exe.exists():
            raise FileNotFoundError(f"{exe} missing: `make ui-env` builds .venv-ui")
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([str(exe), "--server", self.grpc_url, "--host", "127.0.0.1", "--port",
                                      str(self.port), *self.extra_args], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wan-ui exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"wan-ui not up after {self.ready_timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "WanUi":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def small_png(png: bytes, max_bytes: int = 300_000) -> bytes:
    """A page screenshot as a palette PNG (a few hundred KB at most): quantized, halved until it fits."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    while True:
        buf = io.BytesIO()
        img.quantize(colors=128).save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes or img.width < 400:
            return buf.getvalue()
        img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS)


def screenshot(ui_url: str, out: Path, prompt: str = "a red fox running through fresh snow, cinematic") -> None:
    """Generate one T2V video in the page and save the page as a small PNG."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="wan-ui-chromium-") as profile, sync_playwright() as p:
        browser = launch_chromium(p, profile, viewport=(1200, 860))
        page = browser.new_page()
        page.goto(ui_url)
        page.locator("#t2v-prompt textarea").fill(prompt)
        page.locator("#t2v-seed input").fill("42")
        page.locator("#t2v-generate").click()
        page.wait_for_selector('#t2v-status [data-kind="done"]', timeout=300_000)
        page.wait_for_selector("#t2v-video video", timeout=60_000)
        page.wait_for_timeout(1000)  # the first frame painted
        png = page.screenshot(full_page=True)
        browser.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    data = small_png(png)
    out.write_bytes(data)
    print(f"ui_demo: wrote {out} ({len(data)} bytes)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints" / "demo")
    parser.add_argument("--port", type=int, default=int(os.environ.get("WAN_UI_PORT", "7860")), help="UI port")
    parser.add_argument("--screenshot", type=Path, default=None, metavar="OUT.png",
                        help="generate one video in headless Chromium, save a PNG of the page, stop")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill stops the UI and the server too

    trained = has_toy_root()  # the trained toy models as in `make demo` (I2V: random tiny weights without its root)
    i2v = args.checkpoints / "Wan2.1-I2V-tiny"
    i2v_root = TOY_I2V_ROOT if has_toy_root(TOY_I2V_ROOT) else None
    env = toy_env(TOY_ROOT, i2v, i2v_root=i2v_root) if trained else demo_env(args.checkpoints / "Wan2.1-T2V-tiny", i2v)
    log_dir = ROOT / "outputs" / "ui"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"ui_demo: starting tritonserver with the demo models (log: {log_dir / 'tritonserver.log'}) ...", flush=True)
    with TritonServer(ROOT / "model_repository", env=env, log_path=log_dir / "tritonserver.log",
                      ready_timeout_s=600) as server:
        print(f"ui_demo: tritonserver ready, gRPC at {server.grpc_url}", flush=True)
        with WanUi(server.grpc_url, port=args.port, log_path=log_dir / "wan-ui.log") as ui:
            if args.screenshot is not None:
                screenshot(ui.url, args.screenshot, *(["a red circle moving left"] if trained else []))
                return 0
            what = ("T2V: the trained toy model (try 'a red circle moving left'); I2V: random weights, noise"
                    if trained else "the demo weights are random: videos are noise")
            print(f"ui_demo: open {ui.url}  ({what}). Ctrl-C stops.", flush=True)
            try:
                ui.proc.wait()
            except KeyboardInterrupt:
                print("ui_demo: stopping the UI and tritonserver", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
