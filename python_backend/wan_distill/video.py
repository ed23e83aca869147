"""uint8 frames -> MP4 bytes (H.264, yuv420p) with PyAV: all at once, or streamed while the frames are decoded.

``encode_mp4(frames)`` encodes a whole frame tensor. ``Mp4StreamEncoder`` takes frames chunk by chunk and encodes
them on a background thread, so the caller (the VAE decode loop, :func:`decode_to_mp4`) decodes the next latent
frame meanwhile; both hand x264 the same frames in the same order with the same settings. (This libx264 build does
not write byte-identical files run to run, ~1 % size jitter even with one thread; tests compare decoded frames.)
x264's knobs are one typed value, :class:`X264Settings`.
"""
from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["X264_PRESETS", "X264Settings", "Mp4StreamEncoder", "DecodedVideo", "decode_to_mp4", "encode_mp4",
           "decode_mp4"]

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass(frozen=True)
class X264Settings:
    """libx264 settings. Defaults = x264's own (``medium``, CRF 23, threads chosen by x264: ~1.5 x cores, the
    preset's rate-control lookahead: 40 frames for medium).

    A faster preset or a higher CRF changes the video; ``threads`` mostly changes speed (frame threads can shift the
    rate control slightly). ``lookahead`` (x264's rc-lookahead; -1 = the preset's): x264 holds that many frames
    before it encodes the first, so with the default 40 most of an 81-frame encode waits for the end of the decode;
    a short lookahead lets the encode keep pace with the decode (slightly different video). Measured:
    bench/results/x264_settings.md, bench/results/decode_encode.md."""

    preset: str = "medium"
    crf: int = 23
    threads: int = 0  # 0 = x264 decides
    lookahead: int = -1  # -1 = the preset's rc-lookahead

    def __post_init__(self):
        if self.preset not in X264_PRESETS:
            raise ValueError(f"preset: must be one of {', '.join(X264_PRESETS)}, got {self.preset!r}")
        if not (isinstance(self.crf, int) and 0 <= self.crf <= 51):
            raise ValueError(f"crf: must be an integer in [0, 51], got {self.crf!r}")
        if not (isinstance(self.threads, int) and 0 <= self.threads <= 64):
            raise ValueError(f"threads: must be an integer in [0, 64] (0 = x264 decides), got {self.threads!r}")
        if not (isinstance(self.lookahead, int) and -1 <= self.lookahead <= 250):
            raise ValueError(f"lookahead: must be an integer in [-1, 250] (-1 = the preset's), got {self.lookahead!r}")

    @classmethod
    def from_params(cls, params: dict[str, str]) -> X264Settings:
        """From config.pbtxt string parameters ``preset``, ``crf``, ``x264_threads``, ``x264_lookahead`` (absent or
        empty = default)."""
        d = cls()

        def integer(key: str, default: int) -> int:
            value = params.get(key, "")
            try:
                return int(value) if value != "" else default
            except ValueError:
                raise ValueError(f"{key}: must be an integer, got {value!r}") from None
        return cls(preset=params.get("preset", "") or d.preset, crf=integer("crf", d.crf),
                   threads=integer("x264_threads", d.threads), lookahead=integer("x264_lookahead", d.lookahead))

    def options(self) -> dict[str, str]:
        """libx264 options (``threads`` / lookahead only when set: unset is x264's own choice, the previous encode)."""
        opts = {"crf": str(self.crf), "preset": self.preset}
        if self.threads:
            opts["threads"] = str(self.threads)
        if self.lookahead >= 0:
            opts["x264-params"] = f"rc-lookahead={self.lookahead}"
        return opts


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")


class _Writer:
    """One MP4 container being written into memory (single thread)."""

    def __init__(self, height: int, width: int, fps: int, settings: X264Settings):
        import av  # here, not at import: the package imports where PyAV is missing (bench/gpu_check.py's stand-in)

        self.av = av
        self.buf = io.BytesIO()
        self.container = av.open(self.buf, mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=int(fps))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.options = settings.options()

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            self.container.mux(self.stream.encode(self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                                             format="rgb24")))

    def finish(self) -> bytes:
        self.container.mux(self.stream.encode())
        self.container.close()
        return self.buf.getvalue()

    def close(self) -> None:
        self.container.close()


def encode_mp4(frames: np.ndarray, fps: int = 16, crf: int = 23, preset: str = "medium",
               settings: X264Settings | None = None) -> bytes:
    """frames: uint8 [F, H, W, 3] RGB -> MP4 bytes. H and W must be even (yuv420p); ours are multiples of 16.
    ``settings`` (if given) replaces ``crf`` / ``preset``."""
    _check_frames(frames)
    settings = settings or X264Settings(preset=preset, crf=crf)
    writer = _Writer(frames.shape[1], frames.shape[2], fps, settings)
    try:
        writer.write(frames)
        return writer.finish()
    except BaseException:
        writer.close()
        raise


_END = object()


class Mp4StreamEncoder:
    """Frames in chunks -> MP4 bytes, encoded on a background thread while the caller makes the next chunk.

    ``put(frames [n, H, W, 3] uint8)`` queues a chunk (returns at once; the array must not be modified afterwards),
    ``finish() -> bytes`` waits for the encoder and returns the MP4 (an encoder error is raised there, or by the next
    ``put``). Use as a context manager: leaving the block without ``finish`` (an exception) stops the thread.
    ``encode_seconds``: time the thread spent encoding (not waiting for frames)."""

    def __init__(self, height: int, width: int, fps: int = 16, settings: X264Settings | None = None):
        if height % 2 or width % 2 or height < 2 or width < 2:
            raise ValueError(f"frames must have an even height and width (yuv420p), got {height}x{width}")
        self.shape = (height, width, 3)
        self.fps, self.settings = int(fps), settings or X264Settings()
        self.encode_seconds = 0.0
        self.frames = 0
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._result: bytes | None = None
        self._closed = self._aborted = False
        self._thread = threading.Thread(target=self._run, name="mp4-encoder", daemon=True)
        self._thread.start()

    def put(self, frames: np.ndarray) -> None:
        if self._closed:
            raise RuntimeError("Mp4StreamEncoder: put after finish")
        if self._error is not None:
            raise self._error
        _check_frames(frames)
        if frames.shape[1:] != self.shape:
            raise ValueError(f"frames must be [n, {', '.join(map(str, self.shape))}], got {list(frames.shape)}")
        self.frames += frames.shape[0]
        self._queue.put(frames)

    def finish(self) -> bytes:
        self._stop()
        if self._error is not None:
            raise self._error
        return self._result

    def _stop(self, abort: bool = False) -> None:
        """End the thread: after encoding what is queued, or (``abort``) dropping it without writing the file."""
        if not self._closed:
            self._closed, self._aborted = True, abort
            self._queue.put(_END)
        self._thread.join()

    def _run(self) -> None:
        writer, ended = None, False
        try:
            t = time.perf_counter()
            writer = _Writer(self.shape[0], self.shape[1], self.fps, self.settings)
            self.encode_seconds += time.perf_counter() - t
            while not (ended := (chunk := self._queue.get()) is _END):
                if not self._aborted:
                    t = time.perf_counter()
                    writer.write(chunk)
                    self.encode_seconds += time.perf_counter() - t
            if self._aborted:
                writer.close()
                return
            t = time.perf_counter()
            self._result = writer.finish()
            self.encode_seconds += time.perf_counter() - t
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in put / finish
            self._error = exc
            if writer is not None:
                writer.close()
            while not ended and self._queue.get() is not _END:   # let the producer finish; its put raises the error
                pass

    def __enter__(self) -> Mp4StreamEncoder:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop(abort=exc_type is not None)


@dataclass
class DecodedVideo:
    """What :func:`decode_to_mp4` returns: the MP4, the frames (if kept) and the time split."""

    mp4: bytes
    frames: np.ndarray | None      # uint8 [F, H, W, 3], only with keep_frames
    decode_seconds: float          # the decode loop, including handing chunks over
    encode_seconds: float          # the encoder thread's busy time (mostly hidden behind the decode)
    total_seconds: float


def decode_to_mp4(chunks: Iterable[tuple[int, np.ndarray]], num_frames: int, fps: int = 16,
                  settings: X264Settings | None = None, keep_frames: bool = False) -> DecodedVideo:
    """Decoded uint8 chunks ``(first frame index, [n, H, W, 3])`` (numpy or CPU torch) in order (``decoder.decode_uint8_chunks(z)``) ->
    the MP4, encoded while the next chunk decodes. ``keep_frames``: also return all frames [num_frames, H, W, 3]."""
    t0 = time.perf_counter()
    it: Iterator[tuple[int, np.ndarray]] = iter(chunks)
    frames = encoder = None
    finished = False
    try:
        for f0, chunk in it:
            chunk = np.asarray(chunk)  # a CPU torch tensor shares its memory
            if encoder is None:
                encoder = Mp4StreamEncoder(chunk.shape[1], chunk.shape[2], fps, settings)
                if keep_frames:
                    frames = np.empty((num_frames, *chunk.shape[1:]), np.uint8)
            if keep_frames:
                frames[f0: f0 + chunk.shape[0]] = chunk
            encoder.put(chunk)
        if encoder is None:
            raise ValueError("decode_to_mp4: the decoder yielded no frames")
        decode_seconds = time.perf_counter() - t0
        mp4 = encoder.finish()
        finished = True
    finally:
        if encoder is not None and not finished:
            encoder._stop(abort=True)   # the decode failed: drop the queued frames, write nothing
    if encoder.frames != num_frames:
        raise ValueError(f"decode_to_mp4: expected {num_frames} frames, the decoder yielded {encoder.frames}")
    return DecodedVideo(mp4, frames, decode_seconds, encoder.encode_seconds, time.perf_counter() - t0)


def decode_mp4(data: bytes) -> np.ndarray:
    """MP4 bytes -> uint8 [F, H, W, 3] RGB (for tests and clients)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
