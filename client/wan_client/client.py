"""gRPC clients for the served Wan pipelines: unary (``wan_t2v``, ``wan_i2v``, ``*_baseline``) and streamed
(``<pipeline>_stream``: typed progress events, a cancel that stops the server's work).

Tensor interface (all ``max_batch_size: 0``): PROMPT STRING[1], SEED INT64[1], optional NEGATIVE_PROMPT STRING[1],
HEIGHT/WIDTH/NUM_FRAMES/FPS INT64[1]; i2v adds IMAGE STRING[1] (encoded PNG/JPEG/WebP bytes).
Outputs: VIDEO_MP4 STRING[1] (MP4 bytes) and, only when asked, FRAMES UINT8[T, H, W, 3]; a stream adds EVENT.

One implementation: :class:`AsyncWanClient` (``tritonclient.grpc.aio``). :class:`WanClient` runs it on a private
event-loop thread, so both behave the same, a blocking call interrupted by Ctrl-C cancels its gRPC call, and a
stream's ``cancel()`` works from any thread or task.

Only UNAVAILABLE is retried (exponential backoff ``backoff_s * 2**i``; a stream only before its first event); every
other status maps to a typed :class:`~wan_client.errors.WanClientError` carrying the server's message. The
tritonclient default channel options are kept on purpose (custom ``channel_args`` would drop the 2 GiB message limits).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .errors import (InvalidRequestError, RequestCancelledError, ServerError, ServerUnavailableError, WanClientError,
                     from_triton)
from .events import StreamEvent, VideoResult, event_from_wire

T = TypeVar("T")

SEED_MAX = 2**63 - 1
ImageLike = bytes | bytearray | memoryview | str | os.PathLike


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


def build_outputs(return_frames: bool, stream: bool = False) -> list[grpcclient.InferRequestedOutput]:
    names = ["EVENT"] * stream + ["VIDEO_MP4"] + (["FRAMES"] if return_frames else [])
    return [grpcclient.InferRequestedOutput(n) for n in names]


def stream_model(model: str) -> str:
    """The streamed twin of a pipeline: "wan_t2v" -> "wan_t2v_stream" (a name ending in _stream is kept)."""
    return model if model.endswith("_stream") else f"{model}_stream"


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


def _as_request(request: GenerationRequest | Mapping[str, Any]) -> GenerationRequest:
    return request if isinstance(request, GenerationRequest) else GenerationRequest(**request)


def _request_kw(r: GenerationRequest) -> dict[str, Any]:
    return dict(seed=r.seed, negative_prompt=r.negative_prompt, height=r.height, width=r.width,
                num_frames=r.num_frames, fps=r.fps, return_frames=r.return_frames, client_timeout=r.client_timeout)


def _grpc_error(e: grpc.RpcError) -> InferenceServerException:
    """A raw gRPC error (the asyncio stream raises these) -> tritonclient's exception, for :func:`from_triton`."""
    return InferenceServerException(msg=e.details(), status=str(e.code()), debug_details=e.debug_error_string())


# ------------------------------------------------------------------------------------------------------
# asyncio client: the implementation
# ------------------------------------------------------------------------------------------------------
class AsyncWanClient:
    """asyncio client (``tritonclient.grpc.aio``); use ``async with`` or ``await close()``. ``timeout_s`` = default
    end-to-end deadline per attempt; ``retries`` = extra attempts on UNAVAILABLE only, waiting ``backoff_s * 2**i``
    before retry i. Cancelling the awaiting task cancels the gRPC call (the server sees the request as cancelled)."""

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

    # --- generation ------------------------------------------------------------------------------------
    async def t2v(self, prompt: str, seed: int = 42, negative_prompt: str | None = None, height: int | None = None,
                  width: int | None = None, num_frames: int | None = None, fps: int | None = None,
                  return_frames: bool = False, model: str = "wan_t2v",
                  client_timeout: float | None = None) -> VideoResult:
        """Text -> video. Returns MP4 bytes (and (T, H, W, 3) uint8 frames if ``return_frames``)."""
        inputs = build_inputs(prompt, seed, negative_prompt, height, width, num_frames, fps)
        return await self._infer(model, inputs, return_frames, client_timeout)

    async def i2v(self, image: ImageLike, prompt: str, seed: int = 42, negative_prompt: str | None = None,
                  height: int | None = None, width: int | None = None, num_frames: int | None = None,
                  fps: int | None = None, return_frames: bool = False, model: str = "wan_i2v",
                  client_timeout: float | None = None) -> VideoResult:
        """Image (+ text) -> video. ``image``: encoded PNG/JPEG/WebP bytes, or a local file path (read here)."""
        inputs = build_inputs(prompt, seed, negative_prompt, height, width, num_frames, fps, read_image(image))
        return await self._infer(model, inputs, return_frames, client_timeout)

    async def generate(self, request: GenerationRequest | Mapping[str, Any]) -> VideoResult:
        """One :class:`GenerationRequest` (or a dict of its fields): ``image`` set -> i2v, else t2v."""
        r = _as_request(request)
        if r.image is not None:
            return await self.i2v(r.image, r.prompt, model=r.model or "wan_i2v", **_request_kw(r))
        return await self.t2v(r.prompt, model=r.model or "wan_t2v", **_request_kw(r))

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

    # --- streaming -------------------------------------------------------------------------------------
    def stream_t2v(self, prompt: str, seed: int = 42, negative_prompt: str | None = None, height: int | None = None,
                   width: int | None = None, num_frames: int | None = None, fps: int | None = None,
                   return_frames: bool = False, model: str = "wan_t2v",
                   client_timeout: float | None = None) -> AsyncVideoStream:
        """Text -> video, streamed: ``async for event in client.stream_t2v(...)`` (events: wan_client.events),
        ``stream.cancel()`` from anywhere. ``model`` names the pipeline; its ``_stream`` twin serves the call."""
        inputs = build_inputs(prompt, seed, negative_prompt, height, width, num_frames, fps)
        return AsyncVideoStream(self, stream_model(model), inputs, return_frames, self._timeout(client_timeout))

    def stream_i2v(self, image: ImageLike, prompt: str, seed: int = 42, negative_prompt: str | None = None,
                   height: int | None = None, width: int | None = None, num_frames: int | None = None,
                   fps: int | None = None, return_frames: bool = False, model: str = "wan_i2v",
                   client_timeout: float | None = None) -> AsyncVideoStream:
        """Image (+ text) -> video, streamed (see :meth:`stream_t2v`)."""
        inputs = build_inputs(prompt, seed, negative_prompt, height, width, num_frames, fps, read_image(image))
        return AsyncVideoStream(self, stream_model(model), inputs, return_frames, self._timeout(client_timeout))

    def stream(self, request: GenerationRequest | Mapping[str, Any]) -> AsyncVideoStream:
        """One :class:`GenerationRequest`, streamed."""
        r = _as_request(request)
        if r.image is not None:
            return self.stream_i2v(r.image, r.prompt, model=r.model or "wan_i2v", **_request_kw(r))
        return self.stream_t2v(r.prompt, model=r.model or "wan_t2v", **_request_kw(r))

    # --- health ----------------------------------------------------------------------------------------
    async def health(self, model: str | None = None) -> dict[str, bool]:
        """{"live": ..., "ready": ...} (+ "model_ready" when ``model`` is given); False when unreachable."""
        checks = [("live", self._client.is_server_live), ("ready", self._client.is_server_ready)]
        if model is not None:
            checks.append(("model_ready", functools.partial(self._client.is_model_ready, model)))
        out = {}
        for key, fn in checks:
            try:
                out[key] = bool(await fn(client_timeout=5.0))
            except InferenceServerException:
                out[key] = False
        return out

    async def wait_ready(self, timeout_s: float = 60.0, model: str | None = None, poll_s: float = 0.25) -> None:
        """Wait until the server (and ``model``, if given) is ready; ServerUnavailableError after ``timeout_s``."""
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

    # --- internals -------------------------------------------------------------------------------------
    def _timeout(self, client_timeout: float | None) -> float:
        return self.timeout_s if client_timeout is None else client_timeout

    async def _infer(self, model: str, inputs, return_frames: bool, client_timeout: float | None) -> VideoResult:
        timeout = self._timeout(client_timeout)
        t0 = time.monotonic()

        async def attempt():
            result = await self._client.infer(model, inputs, outputs=build_outputs(return_frames),
                                              client_timeout=timeout, timeout=server_timeout_us(timeout))
            return parse_result(result, return_frames, time.monotonic() - t0, model)
        return await self._retrying(model, attempt)

    async def _retrying(self, model: str, attempt: Callable[[], Awaitable[T]]) -> T:
        for i in range(self.retries + 1):
            try:
                return await attempt()
            except InferenceServerException as e:
                err = from_triton(e, model, i + 1)
            if not isinstance(err, ServerUnavailableError) or i == self.retries:
                raise err
            await asyncio.sleep(_retry_delay(self.backoff_s, i))
        raise AssertionError("unreachable")


class AsyncVideoStream:
    """One streamed generation: an async iterator of :mod:`wan_client.events`, ending with :class:`VideoReady`.

    Nothing is sent before the first ``__anext__``. Errors arrive as the typed WanClientError of the unary calls.
    :meth:`cancel` (any thread, any task; idempotent) closes the stream: the server stops the DiT at its next step
    boundary (a queued request never starts), and iteration raises :class:`RequestCancelledError`. Cancelling the
    task that iterates cancels the stream too. ``result``: the VideoResult once the stream is done."""

    def __init__(self, client: AsyncWanClient, model: str, inputs: list, return_frames: bool, timeout_s: float):
        self.model, self.return_frames, self.timeout_s = model, return_frames, timeout_s
        self._client, self._inputs = client, inputs
        self.result: VideoResult | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._responses = None     # tritonclient's response iterator of the current attempt
        self._end: asyncio.Event | None = None  # set: the request side of the gRPC stream may close
        self._cancelled = self._finished = self._got_event = False
        self._error: InferenceServerException | None = None  # from the server's "error" event
        self._attempt = 0
        self._t0: float | None = None

    def __aiter__(self) -> "AsyncVideoStream":
        return self

    async def __anext__(self) -> StreamEvent:
        if self._finished:
            raise StopAsyncIteration
        while True:
            if self._cancelled:
                raise self._finish_cancelled()
            if self._responses is None:
                self._open()
            try:
                result, error = await self._responses.__anext__()
            except asyncio.CancelledError:
                self._abort()
                if self._cancelled:
                    raise self._finish_cancelled() from None
                raise  # the iterating task was cancelled: so is the gRPC call
            except grpc.RpcError as e:
                result, error = None, _grpc_error(e)
            except StopAsyncIteration:
                result, error = None, InferenceServerException("the stream ended before the video arrived")
            if error is not None and self._error is not None:
                error = self._error  # the error event said what this is; the final error response repeats it
            if error is None and self._error_event(result):
                continue  # the final error response follows at once
            if error is not None:
                err = from_triton(error, self.model, self._attempt)
                self._release()  # the server has ended this request: close our side, never cancel it
                if isinstance(err, ServerUnavailableError) and not self._got_event and \
                        self._attempt <= self._client.retries:
                    await asyncio.sleep(_retry_delay(self._client.backoff_s, self._attempt - 1))
                    continue
                self._finished = True
                raise err
            event = self._event(result)
            if event is not None:
                self._got_event = True
                return event

    def cancel(self) -> None:
        """Stop the request on the server (no-op once the video has arrived). Safe from any thread or task."""
        if self._finished:
            return
        self._cancelled = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not started: the next __anext__ raises RequestCancelledError without sending anything
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._abort()
        else:
            loop.call_soon_threadsafe(self._abort)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    async def wait(self) -> VideoResult:
        """Consume the remaining events; the video."""
        async for _ in self:
            pass
        return self.result

    async def aclose(self) -> None:
        """Cancel the request if it is still running."""
        if not self._finished:
            self.cancel()
            self._abort()
            self._finished = True

    async def __aenter__(self) -> "AsyncVideoStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def __del__(self):
        # a stream dropped unfinished (a consumer that stopped iterating) must not keep the server working
        try:
            if not self._finished and self._responses is not None:
                self.cancel()
        except Exception:
            pass

    # --- internals -------------------------------------------------------------------------------------
    def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._attempt += 1
        self._error = None
        self._t0 = self._t0 or time.monotonic()
        end = self._end = asyncio.Event()
        request = {"model_name": self.model, "inputs": self._inputs,
                   "outputs": build_outputs(self.return_frames, stream=True),
                   "timeout": server_timeout_us(self.timeout_s)}

        async def requests():
            yield request
            await end.wait()  # the request side stays open until the last response: closing it ends the stream

        # not the triton_grpc_error header (real gRPC statuses on streams): it crashes tritonserver 2.51; the
        # server's streams send an "error" event with the status name instead
        self._responses = self._client._client.stream_infer(requests(), stream_timeout=self.timeout_s)

    def _abort(self) -> None:
        """Cancel the gRPC call (the server sees the client go away)."""
        if self._responses is not None:
            self._responses.cancel()
            self._responses = None
        if self._end is not None:
            self._end.set()

    def _release(self) -> None:
        """Close the request side of a call the server has ended. Not a cancel: tritonserver 2.51 can crash
        (SIGSEGV in its stream handler) when a stream it closed with an error status is then cancelled."""
        self._responses = None
        if self._end is not None:
            self._end.set()

    def _finish_cancelled(self) -> RequestCancelledError:
        self._abort()
        self._finished = True
        return RequestCancelledError("request cancelled by the client", code="CANCELLED", model=self.model,
                                     attempts=self._attempt)

    def _error_event(self, result) -> bool:
        """An ``error`` event (gRPC status name + the server's message): kept to be raised as its typed error."""
        raw = result.as_numpy("EVENT")
        if raw is None or not raw.size:
            return False
        data = json.loads(raw.reshape(-1)[0])
        if data.get("type") != "error":
            return False
        self._error = InferenceServerException(msg=data.get("message", ""), status=f"StatusCode.{data.get('code')}")
        return True

    def _event(self, result) -> StreamEvent | None:
        raw = result.as_numpy("EVENT")
        data = json.loads(raw.reshape(-1)[0]) if raw is not None and raw.size else {}
        final = result.get_response().parameters["triton_final_response"].bool_param
        if not final and data.get("type") != "done":
            return event_from_wire(data)
        self.result = parse_result(result, self.return_frames, time.monotonic() - self._t0, self.model)
        self._finished = True
        self._end.set()  # the request side closes; the server ends the call
        return event_from_wire({"type": "done", **data}, self.result)


# ------------------------------------------------------------------------------------------------------
# blocking client: the asyncio client on a private event-loop thread
# ------------------------------------------------------------------------------------------------------
class _LoopThread:
    """An event loop on a daemon thread; :meth:`run` blocks the caller until a coroutine has finished there."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="wan-client-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T]) -> T:
        if self.loop.is_closed():
            coro.close()
            raise WanClientError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()  # cancels the task and so its gRPC call: the server sees the client go away
            concurrent.futures.wait([future], timeout=5.0)
            raise

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)
            self.loop.close()


def _blocking(name: str):
    method = getattr(AsyncWanClient, name)

    @functools.wraps(method)
    def call(self: "WanClient", *args, **kwargs):
        return self._loop.run(method(self._aio, *args, **kwargs))
    call.__doc__ = f"Blocking :meth:`AsyncWanClient.{name}`. {method.__doc__ or ''}"
    return call


def _streaming(name: str):
    method = getattr(AsyncWanClient, name)

    @functools.wraps(method)
    def call(self: "WanClient", *args, **kwargs) -> VideoStream:
        return VideoStream(self._loop, method(self._aio, *args, **kwargs))
    call.__doc__ = f"Blocking :meth:`AsyncWanClient.{name}`: a :class:`VideoStream`. {method.__doc__ or ''}"
    return call


class WanClient:
    """Blocking client with the methods of :class:`AsyncWanClient` (same arguments, same errors); streams are
    :class:`VideoStream` (a plain iterator). Thread-safe: calls from many threads run at once."""

    def __init__(self, url: str = "127.0.0.1:8001", timeout_s: float = 900.0, retries: int = 3,
                 backoff_s: float = 0.5, verbose: bool = False):
        self._aio = AsyncWanClient(url, timeout_s, retries, backoff_s, verbose)
        self._loop = _LoopThread()

    url = property(lambda self: self._aio.url)
    timeout_s = property(lambda self: self._aio.timeout_s)
    retries = property(lambda self: self._aio.retries)
    backoff_s = property(lambda self: self._aio.backoff_s)

    t2v = _blocking("t2v")
    i2v = _blocking("i2v")
    generate = _blocking("generate")
    generate_many = _blocking("generate_many")
    health = _blocking("health")
    wait_ready = _blocking("wait_ready")
    stream_t2v = _streaming("stream_t2v")
    stream_i2v = _streaming("stream_i2v")
    stream = _streaming("stream")

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            self._loop.run(self._aio.close())
            self._loop.close()

    def __enter__(self) -> "WanClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoStream:
    """Blocking :class:`AsyncVideoStream`: ``for event in stream``; :meth:`cancel` from any thread (e.g. a UI's
    Cancel button while another thread iterates); ``with`` cancels a stream left unfinished."""

    def __init__(self, loop: _LoopThread, stream: AsyncVideoStream):
        self._loop, self._stream = loop, stream

    def __iter__(self) -> "VideoStream":
        return self

    def __next__(self) -> StreamEvent:
        try:
            return self._loop.run(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def cancel(self) -> None:
        self._stream.cancel()

    @property
    def cancelled(self) -> bool:
        return self._stream.cancelled

    @property
    def result(self) -> VideoResult | None:
        return self._stream.result

    @property
    def model(self) -> str:
        return self._stream.model

    def wait(self) -> VideoResult:
        for _ in self:
            pass
        return self.result

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            self._loop.run(self._stream.aclose())

    def __enter__(self) -> "VideoStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def generate_many(requests: Sequence[GenerationRequest | Mapping[str, Any]], url: str = "127.0.0.1:8001",
                  concurrency: int = 2, return_exceptions: bool = False, **client_kw) -> list:
    """Blocking convenience wrapper around :meth:`AsyncWanClient.generate_many`."""
    async def run():
        async with AsyncWanClient(url, **client_kw) as c:
            return await c.generate_many(requests, concurrency, return_exceptions)
    return asyncio.run(run())
