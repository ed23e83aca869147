"""gRPC clients for the served Wan ensembles (``wan_t2v``, ``wan_i2v``, ``*_baseline``).

Tensor interface (all ``max_batch_size: 0``): PROMPT STRING[1], SEED INT64[1], optional NEGATIVE_PROMPT STRING[1],
HEIGHT/WIDTH/NUM_FRAMES/FPS INT64[1]; i2v adds IMAGE STRING[1] (encoded PNG/JPEG/WebP bytes).
Outputs: VIDEO_MP4 STRING[1] (MP4 bytes) and, only when asked, FRAMES UINT8[T, H, W, 3].

Only UNAVAILABLE is retried (exponential backoff ``backoff_s * 2**i``); every other status maps to a typed
:class:`~wan_client.errors.WanClientError` carrying the server's message. The tritonclient default channel
options are kept on purpose (custom ``channel_args`` would drop the 2 GiB message limits).
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .errors import InvalidRequestError, ServerError, ServerUnavailableError, WanClientError, from_triton

SEED_MAX = 2**63 - 1
ImageLike = bytes | bytearray | memoryview | str | os.PathLike


@dataclass
class VideoResult:
    """One generated video. ``frames``: (T, H, W, 3) uint8 when requested, else None."""

    mp4: bytes
    frames: np.ndarray | None
    elapsed_s: float


@dataclass
class GenerationRequest:
    """One item for :meth:`AsyncWanClient.generate_many`; ``image`` set -> i2v, else t2v."""

    prompt: str
    seed: int = 42
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    image: ImageLike | None = None
    return_frames: bool = False
    model: str | None = None
    client_timeout: float | None = None


# ------------------------------------------------------------------------------------------------------
# request building / response parsing (shared by the sync and asyncio clients)
# ------------------------------------------------------------------------------------------------------
def read_image(image: ImageLike) -> bytes:
    """bytes -> bytes; str/Path -> the file's bytes (read client-side)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        try:
            data = Path(image).read_bytes()
        except OSError as e:
            raise InvalidRequestError(f"IMAGE: cannot read {image}: {e.strerror or e}") from None
    else:
        raise InvalidRequestError(f"IMAGE: expected bytes or a file path, got {type(image).__name__}")
    if not data:
        raise InvalidRequestError("IMAGE: is empty")
    return data


def _check_int(name: str, v: Any, lo: int = 1, hi: int = SEED_MAX) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidRequestError(f"{name}: must be an integer, got {type(v).__name__}")
    if not lo <= int(v) <= hi:
        raise InvalidRequestError(f"{name}: must be in [{lo}, {hi}], got {v}")


def build_inputs(prompt: str, seed: int, negative_prompt: str | None = None, height: int | None = None,
                 width: int | None = None, num_frames: int | None = None, fps: int | None = None,
                 image: bytes | None = None) -> list[grpcclient.InferInput]:
    """Typed arguments -> InferInputs (each shape [1]). Only obviously malformed arguments are rejected here."""
    if not isinstance(prompt, str):
        raise InvalidRequestError(f"PROMPT: must be a string, got {type(prompt).__name__}")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InvalidRequestError(f"NEGATIVE_PROMPT: must be a string, got {type(negative_prompt).__name__}")
    _check_int("SEED", seed, 0, SEED_MAX)
    for name, v in (("HEIGHT", height), ("WIDTH", width), ("NUM_FRAMES", num_frames), ("FPS", fps)):
        _check_int(name, v)

    def text(name: str, value: bytes) -> grpcclient.InferInput:
        t = grpcclient.InferInput(name, [1], "BYTES")
        t.set_data_from_numpy(np.array([value], dtype=np.object_))
        return t

    def int64(name: str, value: int) -> grpcclient.InferInput:
        t = grpcclient.InferInput(name, [1], "INT64")
        t.set_data_from_numpy(np.array([value], dtype=np.int64))
        return t

    inputs = [text("PROMPT", prompt.encode("utf-8")), int64("SEED", int(seed))]
    if negative_prompt is not None:
        inputs.append(text("NEGATIVE_PROMPT", negative_prompt.encode("utf-8")))
    for name, v in (("HEIGHT", height), ("WIDTH", width), ("NUM_FRAMES", num_frames), ("FPS", fps)):
        if v is not None:
            inputs.append(int64(name, int(v)))
    if image is not None:
        inputs.append(text("IMAGE", image))
    return inputs


def build_outputs(return_frames: bool) -> list[grpcclient.InferRequestedOutput]:
    names = ["VIDEO_MP4"] + (["FRAMES"] if return_frames else [])
    return [grpcclient.InferRequestedOutput(n) for n in names]


def parse_result(result: Any, return_frames: bool, elapsed_s: float, model: str) -> VideoResult:
    mp4 = result.as_numpy("VIDEO_MP4")
    if mp4 is None or mp4.size != 1:
        raise ServerError(f"response from '{model}' has no VIDEO_MP4 output", model=model)
    frames = None
    if return_frames:
        frames = result.as_numpy("FRAMES")
        if frames is None:
            raise ServerError(f"response from '{model}' has no FRAMES output", model=model)
    return VideoResult(mp4=bytes(mp4.reshape(-1)[0]), frames=frames, elapsed_s=elapsed_s)


def server_timeout_us(client_timeout_s: float) -> int:
    """The request ``timeout`` (µs) sent along with the gRPC deadline: Triton's ensembles forward it to the DiT step,
    which stops between denoising steps once it has passed (they do not forward a client's cancellation)."""
    return max(1, int(client_timeout_s * 1e6))


def _retry_delay(backoff_s: float, attempt: int) -> float:
    """Delay before retry number ``attempt`` (0-based): backoff_s * 2**attempt."""
    return backoff_s * (2 ** attempt)


# ------------------------------------------------------------------------------------------------------
# synchronous client
# ------------------------------------------------------------------------------------------------------
class WanClient:
    """Blocking client. ``timeout_s`` = default end-to-end deadline per attempt; ``retries`` = extra attempts on
    UNAVAILABLE only, waiting ``backoff_s * 2**i`` before retry i."""

    def __init__(self, url: str = "127.0.0.1:8001", timeout_s: float = 900.0, retries: int = 3,
                 backoff_s: float = 0.5, verbose: bool = False):
        self.url, self.timeout_s, self.retries, self.backoff_s = url, timeout_s, retries, backoff_s
        self._client = grpcclient.InferenceServerClient(url, verbose=verbose)

    # --- generation ------------------------------------------------------------------------------------
    def t2v(self, prompt: str, seed: int = 42, negative_prompt: str | None = None, height: int | None = None,
            width: int | None = None, num_frames: int | None = None, fps: int | None = None,
            return_frames: bool = False, model: str = "wan_t2v", client_timeout: float | None = None) -> VideoResult:
        """Text -> video. Returns MP4 bytes (and (T, H, W, 3) uint8 frames if ``return_frames``)."""
        inputs = build_inputs(prompt, seed, negative_prompt, height, width, num_frames, fps)
        return self._infer(model, inputs, return_frames, client_timeout)

    def i2v(self, image: ImageLike, prompt: str, seed: int = 42, negative_prompt: str | None = None,
            height: int | None = None, width: int | None = None, num_frames: int | None = None,
            fps: int | None = None, return_frames: bool = False, model: str = "wan_i2v",
            client_timeout: float | None = None) -> VideoResult:
        """Image (+ text) -> video. ``image``: encoded PNG/JPEG/WebP bytes, or a local file path (read here)."""
        inputs = build_inputs(prompt, seed, negative_prompt, height, width, num_frames, fps, read_image(image))
        return self._infer(model, inputs, return_frames, client_timeout)

    def generate(self, request: GenerationRequest | Mapping[str, Any]) -> VideoResult:
        r = request if isinstance(request, GenerationRequest) else GenerationRequest(**request)
        kw = dict(seed=r.seed, negative_prompt=r.negative_prompt, height=r.height, width=r.width,
                  num_frames=r.num_frames, fps=r.fps, return_frames=r.return_frames, client_timeout=r.client_timeout)
        if r.image is not None:
            return self.i2v(r.image, r.prompt, model=r.model or "wan_i2v", **kw)
        return self.t2v(r.prompt, model=r.model or "wan_t2v", **kw)

    def generate_many(self, requests: Iterable[GenerationRequest | Mapping[str, Any]], concurrency: int = 2,
                      return_exceptions: bool = False) -> list[VideoResult | WanClientError]:
        """Run many requests with at most ``concurrency`` in flight (asyncio client underneath); results in order."""
        async def run():
            async with AsyncWanClient(self.url, self.timeout_s, self.retries, self.backoff_s) as c:
                return await c.generate_many(requests, concurrency, return_exceptions)
        return asyncio.run(run())

    def _infer(self, model: str, inputs, return_frames: bool, client_timeout: float | None) -> VideoResult:
        timeout = self.timeout_s if client_timeout is None else client_timeout
        t0 = time.monotonic()
        for attempt in range(self.retries + 1):
            try:
                result = self._client.infer(model, inputs, outputs=build_outputs(return_frames),
                                            client_timeout=timeout, timeout=server_timeout_us(timeout))
                return parse_result(result, return_frames, time.monotonic() - t0, model)
            except InferenceServerException as e:
                err = from_triton(e, model, attempt + 1)
            if not isinstance(err, ServerUnavailableError) or attempt == self.retries:
                raise err
            time.sleep(_retry_delay(self.backoff_s, attempt))
        raise AssertionError("unreachable")

    # --- health ----------------------------------------------------------------------------------------
    def health(self, model: str | None = None) -> dict[str, bool]:
        """{"live": ..., "ready": ...} (+ "model_ready" when ``model`` is given); False when unreachable."""
        out = {}
        for key, fn in (("live", self._client.is_server_live), ("ready", self._client.is_server_ready)):
            try:
                out[key] = bool(fn(client_timeout=5.0))
            except InferenceServerException:
                out[key] = False
        if model is not None:
            try:
                out["model_ready"] = bool(self._client.is_model_ready(model, client_timeout=5.0))
            except InferenceServerException:
                out["model_ready"] = False
        return out

    def wait_ready(self, timeout_s: float = 60.0, model: str | None = None, poll_s: float = 0.25) -> None:
        """Block until the server (and ``model``, if given) is ready; ServerUnavailableError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            h = self.health(model)
            if all(h.values()):
                return
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"server at {self.url} not ready after {timeout_s:.0f} s: {h}",
                                             code="UNAVAILABLE", model=model)
            time.sleep(poll_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "WanClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------------
# asyncio client
# ------------------------------------------------------------------------------------------------------
class AsyncWanClient:
    """asyncio twin of :class:`WanClient` (``tritonclient.grpc.aio``); use ``async with`` or ``await close()``.
    Cancelling the awaiting task cancels the gRPC call (the server sees the request as cancelled)."""

    def __init__(self, url: str = "127.0.0.1:8001", timeout_s: float = 900.0, retries: int = 3,
                 backoff_s: float = 0.5, verbose: bool = False):
        self.url, self.timeout_s, self.retries, self.backoff_s = url, timeout_s, retries, backoff_s
        self._verbose = verbose
        self._client_obj = None  # created inside the running loop

    @property
    def _client(self):
        if self._client_obj is None:
            import tritonclient.grpc.aio as aioclient
            self._client_obj = aioclient.InferenceServerClient(self.url, verbose=self._verbose)
        return self._client_obj

    async def t2v(self, prompt: str, seed: int = 42, negative_prompt: str | None = None, height: int | None = None,
                  width: int | None = None, num_frames: int | None = None, fps: int | None = None,
                  return_frames: bool = False, model: str = "wan_t2v",
                  client_timeout: float | None = None) -> VideoResult:
        inputs = build_inputs(prompt, seed, negative_prompt, height, width, num_frames, fps)
        return await self._infer(model, inputs, return_frames, client_timeout)

    async def i2v(self, image: ImageLike, prompt: str, seed: int = 42, negative_prompt: str | None = None,
                  height: int | None = None, width: int | None = None, num_frames: int | None = None,
                  fps: int | None = None, return_frames: bool = False, model: str = "wan_i2v",
                  client_timeout: float | None = None) -> VideoResult:
        inputs = build_inputs(prompt, seed, negative_prompt, height, width, num_frames, fps, read_image(image))
        return await self._infer(model, inputs, return_frames, client_timeout)

    async def generate(self, request: GenerationRequest | Mapping[str, Any]) -> VideoResult:
        r = request if isinstance(request, GenerationRequest) else GenerationRequest(**request)
        kw = dict(seed=r.seed, negative_prompt=r.negative_prompt, height=r.height, width=r.width,
                  num_frames=r.num_frames, fps=r.fps, return_frames=r.return_frames, client_timeout=r.client_timeout)
        if r.image is not None:
            return await self.i2v(r.image, r.prompt, model=r.model or "wan_i2v", **kw)
        return await self.t2v(r.prompt, model=r.model or "wan_t2v", **kw)

    async def generate_many(self, requests: Iterable[GenerationRequest | Mapping[str, Any]], concurrency: int = 2,
                            return_exceptions: bool = False) -> list[VideoResult | WanClientError]:
        """At most ``concurrency`` requests in flight; results in input order. With ``return_exceptions=False``
        the first error cancels the rest and is raised; otherwise errors take their request's place."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        sem = asyncio.Semaphore(concurrency)

        async def one(r):
            async with sem:
                return await self.generate(r)

        tasks = [asyncio.ensure_future(one(r)) for r in list(requests)]
        if return_exceptions:
            out = await asyncio.gather(*tasks, return_exceptions=True)
            for x in out:  # only client errors are results; anything else (bugs, cancellation) propagates
                if isinstance(x, BaseException) and not isinstance(x, WanClientError):
                    raise x
            return out
        try:
            return await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _infer(self, model: str, inputs, return_frames: bool, client_timeout: float | None) -> VideoResult:
        timeout = self.timeout_s if client_timeout is None else client_timeout
        t0 = time.monotonic()
        for attempt in range(self.retries + 1):
            try:
                result = await self._client.infer(model, inputs, outputs=build_outputs(return_frames),
                                                  client_timeout=timeout, timeout=server_timeout_us(timeout))
                return parse_result(result, return_frames, time.monotonic() - t0, model)
            except InferenceServerException as e:
                err = from_triton(e, model, attempt + 1)
            if not isinstance(err, ServerUnavailableError) or attempt == self.retries:
                raise err
            await asyncio.sleep(_retry_delay(self.backoff_s, attempt))
        raise AssertionError("unreachable")

    async def health(self, model: str | None = None) -> dict[str, bool]:
        out = {}
        for key, fn in (("live", self._client.is_server_live), ("ready", self._client.is_server_ready)):
            try:
                out[key] = bool(await fn(client_timeout=5.0))
            except InferenceServerException:
                out[key] = False
        if model is not None:
            try:
                out["model_ready"] = bool(await self._client.is_model_ready(model, client_timeout=5.0))
            except InferenceServerException:
                out["model_ready"] = False
        return out

    async def wait_ready(self, timeout_s: float = 60.0, model: str | None = None, poll_s: float = 0.25) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            h = await self.health(model)
            if all(h.values()):
                return
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"server at {self.url} not ready after {timeout_s:.0f} s: {h}",
                                             code="UNAVAILABLE", model=model)
            await asyncio.sleep(poll_s)

    async def close(self) -> None:
        if self._client_obj is not None:
            await self._client_obj.close()
            self._client_obj = None

    async def __aenter__(self) -> "AsyncWanClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def generate_many(requests: Sequence[GenerationRequest | Mapping[str, Any]], url: str = "127.0.0.1:8001",
                  concurrency: int = 2, return_exceptions: bool = False, **client_kw) -> list:
    """Blocking convenience wrapper around :meth:`AsyncWanClient.generate_many`."""
    async def run():
        async with AsyncWanClient(url, **client_kw) as c:
            return await c.generate_many(requests, concurrency, return_exceptions)
    return asyncio.run(run())
