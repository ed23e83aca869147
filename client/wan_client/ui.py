"""``wan-ui``: a Gradio web UI over the streamed pipelines, talking to Triton over gRPC through :class:`WanClient`.

    wan-ui --server 127.0.0.1:8001 [--host 127.0.0.1 --port 7860]

Two tabs (text -> video, image -> video), each with a pipeline choice (the distilled ``wan_t2v`` / ``wan_i2v`` or
their CFG baselines), prompt, negative prompt, seed (-1: a random one, shown once the server accepts the request),
height, width, frames and fps (empty: the server's run-config default). A progress bar follows the stream's events
(stage, denoising step n/N, the server's ETA); Cancel stops the request on the server (the DiT stops at its next
step). The finished MP4 is shown with a download button. The UI never loads a model: gradio + wan_client only.
Runs offline: no analytics, no version check, no fonts from a CDN, no server-side rendering.
"""
from __future__ import annotations

import argparse
import html
import os
import secrets
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .errors import (InvalidRequestError, RequestCancelledError, RequestTimeoutError, ServerUnavailableError,
                     WanClientError)
from .events import DenoiseProgress, RequestAccepted, StageFinished, StageStarted, StreamEvent, VideoReady

SEED_RANDOM = -1
PIPELINES = {"t2v": [("distilled (LightX2V, no CFG)", "wan_t2v"), ("baseline (Wan2.1 sampler, CFG)", "wan_t2v_baseline")],
             "i2v": [("distilled (LightX2V, no CFG)", "wan_i2v"), ("baseline (Wan2.1 sampler, CFG)", "wan_i2v_baseline")]}
TITLES = {"t2v": "Text → video", "i2v": "Image → video"}


def offline_environment() -> None:
    """Gradio without network: no analytics / version check, no Hugging Face hub calls, and loopback never through
    a proxy (gradio checks its own local URL with httpx at launch). Call before importing gradio."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    no_proxy = [h for h in os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")).split(",") if h]
    for host in ("127.0.0.1", "localhost"):
        if host not in no_proxy:
            no_proxy.append(host)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(no_proxy)


# ------------------------------------------------------------------------------------------------------------
# what the page shows, from the stream's events (no gradio here)
# ------------------------------------------------------------------------------------------------------------
@dataclass
class ProgressView:
    """The progress bar's state, fed one event at a time: ``step`` of ``num_steps`` denoising steps, the stage."""

    stage: str = "waiting"
    step: int = 0
    num_steps: int = 0
    eta_s: float | None = None
    accepted: RequestAccepted | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def update(self, event: StreamEvent) -> None:
        if isinstance(event, RequestAccepted):
            self.accepted, self.num_steps, self.stage = event, event.num_steps, "queued"
        elif isinstance(event, StageStarted):
            self.stage = event.stage
        elif isinstance(event, StageFinished):
            self.stage_seconds[event.stage] = event.seconds
        elif isinstance(event, DenoiseProgress):
            self.step, self.num_steps, self.eta_s = event.step, event.num_steps, event.eta_s
        elif isinstance(event, VideoReady):
            self.stage = "done"

    def label(self) -> str:
        text = self.stage
        if self.num_steps:
            text += f" · step {self.step}/{self.num_steps}"
        if self.eta_s is not None and self.stage == "denoise":
            text += f" · ETA {self.eta_s:.1f} s"
        return text

    def html(self, state: str = "running") -> str:
        """A <progress> bar (value = denoising steps done, max = steps) and its label; ``state``: running, done,
        cancelled, error or idle (a data attribute, for styling and tests)."""
        top = max(self.num_steps, 1)
        label = self.label() if state in ("running", "done") else state
        return (f'<div class="wan-progress" data-state="{state}" data-step="{self.step}">'
                f'<progress value="{self.step}" max="{top}"></progress>'
                f'<span class="wan-progress-label">{html.escape(label)}</span></div>')

    def request_line(self) -> str:
        a = self.accepted
        if a is None:
            return ""
        return (f"seed {a.seed} · {a.height}×{a.width} · {a.num_frames} frames at {a.fps} fps · "
                f"{a.num_steps} steps ({a.pipeline})")


def status_html(kind: str, text: str) -> str:
    """One status line; ``kind``: idle, running, done, cancelled, invalid, unreachable, error."""
    return f'<div class="wan-status" data-kind="{kind}">{text}</div>'


def error_status(err: WanClientError, server: str) -> str:
    """The status line for a failed request: the server's own message, and what to do."""
    msg = html.escape(err.message)
    if isinstance(err, InvalidRequestError):
        return status_html("invalid", f"<b>Invalid request</b>: the server refused it: {msg}")
    if isinstance(err, ServerUnavailableError):
        return status_html("unreachable", f"<b>Server unreachable</b> at {html.escape(server)}: is tritonserver "
                                          f"running there (<code>make serve</code>)? ({msg})")
    if isinstance(err, RequestCancelledError):
        return status_html("cancelled", "<b>Cancelled</b>: the server stopped the request.")
    if isinstance(err, RequestTimeoutError):
        return status_html("error", f"<b>Timed out</b>: {msg}")
    return status_html("error", f"<b>Server error</b> [{html.escape(err.code or 'unknown')}]: {msg}")


def resolve_seed(seed: float | int | None) -> int:
    """The seed to send: the box's value, or a random one for -1 / empty."""
    if seed is None or int(seed) == SEED_RANDOM:
        return secrets.randbelow(2**31)
    return int(seed)


def optional_int(v: float | int | None) -> int | None:
    return None if v is None else int(v)


# ------------------------------------------------------------------------------------------------------------
# generation: one stream per browser session and tab
# ------------------------------------------------------------------------------------------------------------
class Generator:
    """Runs the streams for the page: ``run`` yields the page's outputs after each event; ``cancel`` stops the
    session's running stream on the server. One :class:`WanClient` (thread-safe) serves every session."""

    def __init__(self, client, server: str, out_dir: Path):
        self.client, self.server, self.out_dir = client, server, Path(out_dir)
        self._streams: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def run(self, kind: str, session: str, pipeline: str, prompt: str, negative_prompt: str, seed, height, width,
            frames, fps, image: str | None = None):
        """Yields (progress_html, status_html, video, generate_enabled, cancel_enabled); video: an MP4 path, "" to
        clear the player, None to leave it as it is."""
        view = ProgressView()
        if kind == "i2v" and not image:
            yield view.html("idle"), status_html("invalid", "<b>Invalid request</b>: IMAGE: choose a picture"), \
                None, True, False
            return
        kw = dict(seed=resolve_seed(seed), negative_prompt=negative_prompt or None, height=optional_int(height),
                  width=optional_int(width), num_frames=optional_int(frames), fps=optional_int(fps), model=pipeline)
        try:
            stream = self.client.stream_t2v(prompt, **kw) if kind == "t2v" else \
                self.client.stream_i2v(image, prompt, **kw)
        except WanClientError as e:  # client-side checks (e.g. an unreadable image)
            yield view.html("error"), error_status(e, self.server), None, True, False
            return
        key = (session, kind)
        with self._lock:
            self._streams[key] = stream
        yield view.html(), status_html("running", f"Sending the request to {html.escape(self.server)} …"), "", \
            False, True
        try:
            for event in stream:
                view.update(event)
                if isinstance(event, VideoReady):
                    path = self.out_dir / f"{kind}-{uuid.uuid4().hex[:12]}.mp4"
                    path.write_bytes(event.result.mp4)
                    stages = ", ".join(f"{s} {t:.2f} s" for s, t in view.stage_seconds.items())
                    yield view.html("done"), status_html(
                        "done", f"<b>Done</b> in {event.result.elapsed_s:.1f} s: {html.escape(view.request_line())}"
                                f" ({html.escape(stages)})"), str(path), True, False
                    return
                yield view.html(), status_html("running", html.escape(view.request_line() or "accepted")), None, \
                    False, True
        except WanClientError as e:
            state = "cancelled" if isinstance(e, RequestCancelledError) else "error"
            yield view.html(state), error_status(e, self.server), None, True, False
        finally:
            with self._lock:
                if self._streams.get(key) is stream:
                    del self._streams[key]
            stream.close()  # cancels a stream left unfinished (the browser went away)

    def cancel(self, kind: str, session: str) -> bool:
        """Cancel the session's running stream of this tab; False when none runs."""
        with self._lock:
            stream = self._streams.get((session, kind))
        if stream is None:
            return False
        stream.cancel()
        return True


# ------------------------------------------------------------------------------------------------------------
# the page
# ------------------------------------------------------------------------------------------------------------
CSS = """
.wan-progress { display: flex; align-items: center; gap: 0.75em; padding: 0.4em 0; }
.wan-progress progress { flex: 1; height: 1.1em; accent-color: var(--color-accent); }
.wan-progress-label { min-width: 16em; font-variant-numeric: tabular-nums; }
.wan-status { padding: 0.5em 0.75em; border-radius: 6px; background: var(--block-background-fill); }
.wan-status[data-kind="invalid"], .wan-status[data-kind="unreachable"], .wan-status[data-kind="error"] {
  background: #fdecec; color: #8a1c1c; }
.wan-status[data-kind="cancelled"] { background: #fff6e0; color: #6b4b00; }
.wan-status[data-kind="done"] { background: #e9f7ee; color: #17552f; }
"""


def build_app(generator: Generator, server_health=None):
    """The gr.Blocks page. ``server_health``: a callable giving {"live": bool, "ready": bool} for the header."""
    import gradio as gr

    with gr.Blocks(title="Wan2.1 on Triton", analytics_enabled=False) as app:
        gr.Markdown("## Wan2.1 video generation on Triton")
        server_line = gr.HTML(status_html("idle", f"Server: {html.escape(generator.server)}"), elem_id="server")
        with gr.Tabs():
            for kind in ("t2v", "i2v"):
                with gr.Tab(TITLES[kind], id=kind, elem_id=f"{kind}-tab"):
                    _tab(gr, generator, kind)
        if server_health is not None:
            def check_server():
                h = server_health()
                if h.get("ready"):
                    return status_html("done", f"Server {html.escape(generator.server)}: ready")
                return status_html("unreachable", f"<b>Server unreachable</b> at {html.escape(generator.server)}"
                                                  f" (live={h.get('live')}, ready={h.get('ready')})")
            app.load(check_server, outputs=server_line, queue=False)
    return app


def _tab(gr, generator: Generator, kind: str) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            pipeline = gr.Radio(PIPELINES[kind], value=PIPELINES[kind][0][1], label="Pipeline",
                                elem_id=f"{kind}-pipeline")
            image = None
            if kind == "i2v":
                image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="First frame",
                                 elem_id="i2v-image", height=200)
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id=f"{kind}-prompt",
                                placeholder="a red fox running through fresh snow, cinematic")
            negative = gr.Textbox(label="Negative prompt", lines=1, elem_id=f"{kind}-negative",
                                  placeholder="empty: the server's default (CFG pipelines only)")
            seed = gr.Number(SEED_RANDOM, label="Seed", info="-1: random (the seed used is shown below)",
                             precision=0, minimum=-1, elem_id=f"{kind}-seed")
            area = " (area bound: the image's aspect ratio decides)" if kind == "i2v" else ""
            with gr.Row():
                height = gr.Number(None, label="Height" + area, precision=0, elem_id=f"{kind}-height",
                                   placeholder="server default")
                width = gr.Number(None, label="Width", precision=0, elem_id=f"{kind}-width",
                                  placeholder="server default")
            with gr.Row():
                frames = gr.Number(None, label="Frames (4k+1)", precision=0, elem_id=f"{kind}-frames",
                                   placeholder="server default")
                fps = gr.Number(None, label="FPS", precision=0, elem_id=f"{kind}-fps", placeholder="server default")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id=f"{kind}-generate")
                cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id=f"{kind}-cancel")
        with gr.Column(scale=1):
            progress = gr.HTML(ProgressView().html("idle"), elem_id=f"{kind}-progress")
            status = gr.HTML(status_html("idle", "Ready."), elem_id=f"{kind}-status")
            video = gr.Video(label="Video", interactive=False, buttons=["download"], elem_id=f"{kind}-video")

    def updates(session, args, image_=None):
        for bar, line, path, gen_on, cancel_on in generator.run(kind, session, *args, image=image_):
            yield (bar, line, gr.skip() if path is None else (path or None), gr.update(interactive=gen_on),
                   gr.update(interactive=cancel_on))

    # gradio passes the request to a parameter annotated gr.Request, positionally after the inputs
    def run_t2v(pipeline_, prompt_, negative_, seed_, height_, width_, frames_, fps_, request):
        yield from updates(request.session_hash, (pipeline_, prompt_ or "", negative_, seed_, height_, width_,
                                                  frames_, fps_))

    def run_i2v(pipeline_, prompt_, negative_, seed_, height_, width_, frames_, fps_, image_, request):
        yield from updates(request.session_hash, (pipeline_, prompt_ or "", negative_, seed_, height_, width_,
                                                  frames_, fps_), image_)

    def stop(request):
        # only the button: the run's own last update says "cancelled" (a status set here could arrive after it)
        generator.cancel(kind, request.session_hash)
        return gr.update(interactive=False)

    run = run_t2v if kind == "t2v" else run_i2v
    for fn in (run, stop):  # the annotation object (this module's annotations are strings)
        fn.__annotations__["request"] = gr.Request
    inputs = [pipeline, prompt, negative, seed, height, width, frames, fps] + ([image] if image is not None else [])
    generate.click(run, inputs, [progress, status, video, generate, cancel], concurrency_limit=None,
                   show_progress="hidden", api_name=f"generate_{kind}")
    cancel.click(stop, None, cancel, queue=False, show_progress="hidden", api_name=f"cancel_{kind}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="wan-ui", description="Web UI for the Wan pipelines served by Triton.")
    ap.add_argument("--server", default=os.environ.get("WAN_SERVER", "127.0.0.1:8001"),
                    help="Triton gRPC address host:port (env WAN_SERVER; default %(default)s)")
    ap.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default %(default)s)")
    ap.add_argument("--port", type=int, default=7860, help="UI port (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per request (default %(default)s)")
    ap.add_argument("--retries", type=int, default=1, help="retries on UNAVAILABLE (default %(default)s)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    offline_environment()
    from .client import WanClient

    client = WanClient(args.server, timeout_s=args.timeout, retries=args.retries)
    with tempfile.TemporaryDirectory(prefix="wan-ui-") as out_dir:
        generator = Generator(client, args.server, Path(out_dir))
        app = build_app(generator, server_health=client.health)
        url = f"http://{args.host}:{args.port}"
        print(f"wan-ui: {url} (Triton gRPC at {args.server}); Ctrl-C stops", flush=True)
        try:
            app.queue(default_concurrency_limit=None).launch(
                server_name=args.host, server_port=args.port, share=False, inbrowser=False, ssr_mode=False,
                pwa=False, mcp_server=False, enable_monitoring=False, allowed_paths=[out_dir], css=CSS,
                footer_links=[], quiet=True)
        except KeyboardInterrupt:
            pass
        finally:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
