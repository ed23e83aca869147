"""``wan-client`` CLI: generate a video over gRPC and write it atomically.

    wan-client t2v --prompt "a red fox in the snow" -o fox.mp4 [--server 127.0.0.1:8001 --seed 42 ...]
    wan-client i2v --image cat.png --prompt "the cat turns its head" -o cat.mp4
    wan-client health [--model wan_t2v]

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

from .errors import (InvalidRequestError, RequestCancelledError, RequestTimeoutError, ServerUnavailableError,
                     WanClientError)

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
        with Progress(f"{args.model} @ {args.server}", enabled=not args.quiet):
            if args.cmd == "t2v":
                res = client.t2v(args.prompt, **kw)
            else:
                res = client.i2v(args.image, args.prompt, **kw)
        atomic_write(args.output, lambda f: f.write(res.mp4))
        msg = f"wrote {args.output} ({len(res.mp4)} bytes)"
        if args.save_frames is not None:
            import numpy as np
            atomic_write(args.save_frames, lambda f: np.save(f, res.frames))
            msg += f" and {args.save_frames} {tuple(res.frames.shape)}"
        print(f"{msg} in {res.elapsed_s:.1f} s", file=sys.stderr)
        return 0
    except WanClientError as e:
        print(f"wan-client: error: {e}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("wan-client: interrupted", file=sys.stderr)
        return 130
    finally:
        client.close()
