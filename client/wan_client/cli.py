"""``wan-client`` CLI: generate a video over gRPC and write it atomically.

    wan-client t2v --prompt "a red fox in the snow" -o fox.mp4 [--server 127.0.0.1:8001 --seed 42 ...]
    wan-client i2v --image cat.png --prompt "the cat turns its head" -o cat.mp4
    wan-client health [--model wan_t2v]

Generation streams from the pipeline's ``_stream`` model: a progress bar on stderr shows the stage and the denoising
steps with the server's ETA (``--quiet``: none). Ctrl-C cancels the request on the server (the DiT stops at its next
step) and exits 130. A server without the stream model is asked over the unary pipeline (elapsed time only).

Exit codes: 0 ok, 1 server/other error, 2 invalid request (or bad CLI usage), 3 server unavailable,
4 timeout, 5 cancelled, 130 interrupted.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from .errors import (InvalidRequestError, RequestCancelledError, RequestTimeoutError, ServerError,
                     ServerUnavailableError, WanClientError)
from .events import DenoiseProgress, RequestAccepted, StageFinished, StageStarted, StreamEvent

EXIT_CODES = {InvalidRequestError: 2, ServerUnavailableError: 3, RequestTimeoutError: 4, RequestCancelledError: 5}


def exit_code(err: WanClientError) -> int:
    for cls, code in EXIT_CODES.items():
        if isinstance(err, cls):
            return code
    return 1


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync, then os.replace (never a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the final file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class Progress:
    """Elapsed-time ticker on stderr while waiting: a spinner line on a TTY, a line every ``every_s`` otherwise."""

    def __init__(self, label: str, stream=sys.stderr, enabled: bool = True, every_s: float = 10.0):
        self.label, self.stream, self.enabled, self.every_s = label, stream, enabled, every_s
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def _run(self) -> None:
        spin = itertools.cycle("|/-\\")
        last = 0.0
        while not self._stop.wait(0.1 if self.tty else 0.5):
            el = time.monotonic() - self.t0
            if self.tty:
                self.stream.write(f"\r{next(spin)} {self.label} ... {el:6.1f} s")
                self.stream.flush()
            elif el - last >= self.every_s:
                last = el
                self.stream.write(f"{self.label} ... {el:.0f} s\n")
                self.stream.flush()

    def __enter__(self) -> "Progress":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()
            if self.tty:
                self.stream.write("\r\033[K")
                self.stream.flush()


class StreamProgress:
    """A tqdm bar on stderr fed by stream events: the current stage, denoising steps n/N, the server's ETA."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]"

    def __init__(self, label: str, stream=sys.stderr, enabled: bool = True):
        self.label, self.stream, self.enabled = label, stream, enabled
        self.bar = None
        self.stages: dict[str, float] = {}

    def update(self, event: StreamEvent) -> None:
        if isinstance(event, StageFinished):
            self.stages[event.stage] = event.seconds
        if not self.enabled:
            return
        if isinstance(event, RequestAccepted):
            from tqdm import tqdm  # a kept library for the bar; imported only when one is shown
            self.bar = tqdm(total=event.num_steps, desc=f"{self.label} queued", unit="step", file=self.stream,
                            bar_format=self.FORMAT, mininterval=0, dynamic_ncols=True, leave=True)
        elif self.bar is None:
            return
        elif isinstance(event, StageStarted):
            self.bar.set_description_str(f"{self.label} {event.stage}")
        elif isinstance(event, DenoiseProgress):
            self.bar.set_postfix_str(f"ETA {event.eta_s:.1f} s", refresh=False)
            self.bar.update(event.step - self.bar.n)

    def summary(self) -> str:
        return ", ".join(f"{stage} {sec:.2f} s" for stage, sec in self.stages.items())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=os.environ.get("WAN_SERVER", "127.0.0.1:8001"),
                        help="Triton gRPC address host:port (env WAN_SERVER; default %(default)s)")
    common.add_argument("--timeout", type=float, default=900.0, help="seconds per attempt (default %(default)s)")
    common.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE (default %(default)s)")
    common.add_argument("--quiet", action="store_true", help="no progress display")

    gen = argparse.ArgumentParser(add_help=False)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("-o", "--output", required=True, help="output .mp4 path (written atomically)")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--frames", type=int, default=None, help="NUM_FRAMES (4k+1)")
    gen.add_argument("--fps", type=int, default=None)
    gen.add_argument("--save-frames", default=None, metavar="OUT.npy",
                     help="also fetch the raw (T,H,W,3) uint8 frames and save them as .npy")

    ap = argparse.ArgumentParser(prog="wan-client", description="Generate videos with Wan2.1 served by Triton.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t2v = sub.add_parser("t2v", parents=[common, gen], help="text -> video")
    t2v.add_argument("--model", default="wan_t2v")
    i2v = sub.add_parser("i2v", parents=[common, gen], help="image + text -> video")
    i2v.add_argument("--image", required=True, help="PNG/JPEG/WebP file (read locally, sent as bytes)")
    i2v.add_argument("--model", default="wan_i2v")
    health = sub.add_parser("health", parents=[common], help="server / model readiness")
    health.add_argument("--model", default=None)
    return ap


def _generate(client, args, kw):
    """Stream the request with a progress bar; (VideoResult, stage summary). Ctrl-C cancels it on the server."""
    if args.cmd == "t2v":
        stream = client.stream_t2v(args.prompt, **kw)
    else:
        stream = client.stream_i2v(args.image, args.prompt, **kw)
    progress = StreamProgress(f"{args.model}", enabled=not args.quiet)
    try:
        for event in stream:
            progress.update(event)
        return stream.result, progress.summary()
    except KeyboardInterrupt:
        stream.cancel()
        progress.close()
        stream.close()
        print("wan-client: cancelled (Ctrl-C): the server was told to stop the request", file=sys.stderr)
        raise _Interrupted() from None
    except ServerError as e:  # "Request for unknown model: '<m>_stream' is not found" (a stream error has no status)
        if "unknown model" not in e.message or stream.model not in e.message:
            raise
    finally:
        progress.close()
    # the server has no stream model for this pipeline (e.g. only the ensembles are loaded): unary, elapsed only
    print(f"wan-client: {stream.model} is not served; asking {args.model} without progress", file=sys.stderr)
    with Progress(f"{args.model} @ {args.server}", enabled=not args.quiet):
        res = client.t2v(args.prompt, **kw) if args.cmd == "t2v" else client.i2v(args.image, args.prompt, **kw)
    return res, ""


class _Interrupted(Exception):
    """Ctrl-C during a stream: the request was cancelled on the server and the message printed."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .client import WanClient  # imported late: tritonclient import is slow, --help stays fast

    client = WanClient(args.server, timeout_s=args.timeout, retries=args.retries)
    try:
        if args.cmd == "health":
            h = client.health(args.model)
            print(" ".join(f"{k}={v}" for k, v in h.items()))
            return 0 if all(h.values()) else 3
        kw = dict(seed=args.seed, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                  num_frames=args.frames, fps=args.fps, return_frames=args.save_frames is not None, model=args.model)
        res, stages = _generate(client, args, kw)
        atomic_write(args.output, lambda f: f.write(res.mp4))
        msg = f"wrote {args.output} ({len(res.mp4)} bytes)"
        if args.save_frames is not None:
            import numpy as np
            atomic_write(args.save_frames, lambda f: np.save(f, res.frames))
            msg += f" and {args.save_frames} {tuple(res.frames.shape)}"
        print(f"{msg} in {res.elapsed_s:.1f} s" + (f" ({stages})" if stages else ""), file=sys.stderr)
        return 0
    except WanClientError as e:
        print(f"wan-client: error: {e}", file=sys.stderr)
        return exit_code(e)
    except _Interrupted:
        return 130
    except KeyboardInterrupt:
        print("wan-client: interrupted", file=sys.stderr)
        return 130
    finally:
        client.close()
