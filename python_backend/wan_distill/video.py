"""uint8 frames -> MP4 bytes (H.264, yuv420p) with PyAV."""
from __future__ import annotations

import io

import av
import numpy as np


def encode_mp4(frames: np.ndarray, fps: int = 16, crf: int = 23, preset: str = "medium") -> bytes:
    """frames: uint8 [F, H, W, 3] RGB -> MP4 bytes. H and W must be even (yuv420p); ours are multiples of 16."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    _, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def decode_mp4(data: bytes) -> np.ndarray:
    """MP4 bytes -> uint8 [F, H, W, 3] RGB (for tests and clients)."""
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
