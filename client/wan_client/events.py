"""Typed events of a streamed generation (``stream_t2v`` / ``stream_i2v``), in the order the server sends them::

    RequestAccepted                      the request passed the server's checks (resolved seed, size, steps)
    StageStarted("text") ... StageFinished("text")          (+ "image" for I2V, at the same time)
    StageStarted("denoise")  DenoiseProgress(step=1..N)  StageFinished("denoise")
    StageStarted("decode") ... StageFinished("decode")
    StageStarted("encode") ... StageFinished("encode")
    VideoReady                           the last event: the MP4 (and frames when asked)

``elapsed_s`` on every event: seconds since the server received the request.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["VideoResult", "StreamEvent", "RequestAccepted", "StageStarted", "StageFinished", "DenoiseProgress", "VideoReady",
           "STAGES", "event_from_wire"]

STAGES = ("text", "image", "denoise", "decode", "encode")


@dataclass
class VideoResult:
    """One generated video. ``frames``: (T, H, W, 3) uint8 when requested, else None."""

    mp4: bytes
    frames: np.ndarray | None
    elapsed_s: float


@dataclass(frozen=True)
class StreamEvent:
    elapsed_s: float


@dataclass(frozen=True)
class RequestAccepted(StreamEvent):
    """The server checked the request; values are the resolved ones (defaults filled). For I2V, height x width is
    the area bound: the image's aspect ratio decides the final size (see :class:`VideoReady`)."""

    pipeline: str
    seed: int
    height: int
    width: int
    num_frames: int
    fps: int
    num_steps: int


@dataclass(frozen=True)
class StageStarted(StreamEvent):
    stage: str  # one of STAGES


@dataclass(frozen=True)
class StageFinished(StreamEvent):
    stage: str
    seconds: float


@dataclass(frozen=True)
class DenoiseProgress(StreamEvent):
    """Denoising step ``step`` of ``num_steps`` is done. ``denoise_elapsed_s`` / ``eta_s``: seconds of denoising so
    far / estimated left (from the mean step time); ``queued_s``: how long the request waited for a DiT slot;
    ``started_at``: unix time the first step began on the server."""

    step: int
    num_steps: int
    denoise_elapsed_s: float
    eta_s: float
    queued_s: float | None = None
    started_at: float | None = None

    @property
    def fraction(self) -> float:
        return self.step / self.num_steps if self.num_steps else 1.0


@dataclass(frozen=True)
class VideoReady(StreamEvent):
    """The last event. ``result.mp4`` (and ``result.frames`` when asked); ``seconds``: server time in all."""

    result: VideoResult
    seconds: float
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None


def event_from_wire(data: dict, result: VideoResult | None = None) -> StreamEvent | None:
    """One JSON event from the server -> its typed event (None for a type this client does not know)."""
    kind, t = data.get("type"), float(data.get("t", 0.0))
    if kind == "accepted":
        return RequestAccepted(t, data["pipeline"], data["seed"], data["height"], data["width"], data["num_frames"],
                               data["fps"], data["num_steps"])
    if kind == "stage_start":
        return StageStarted(t, data["stage"])
    if kind == "stage_end":
        return StageFinished(t, data["stage"], float(data["seconds"]))
    if kind == "step":
        return DenoiseProgress(t, int(data["step"]), int(data["num_steps"]), float(data["elapsed_s"]),
                               float(data["eta_s"]), data.get("queued_s"), data.get("started_at"))
    if kind == "done":
        if result is None:
            raise ValueError("a done event needs the video")
        return VideoReady(t, result, float(data.get("seconds", t)), data.get("height"), data.get("width"),
                          data.get("num_frames"))
    return None
