"""The streamed pipeline: one pipeline's ensemble steps run as BLS calls, with progress events and a real cancel.

``<pipeline>_stream`` (a decoupled python model) runs exactly the steps of the unary ensemble, read from the
repository spec: request check first (so bad input gets the same INVALID_ARGUMENT naming the field), then the
encoders (for I2V the image encoder, then the text encoder), the DiT, and the decode with the MP4 encode overlapped in it (stage
``decode``; ``encode`` names a separate video-encoder step, which the pipelines no longer have). Around the DiT:

* the job request carries a job id (request parameter ``wan_job_id``); the DiT stays non-decoupled, so the unary
  ensembles and perf_analyzer are unchanged;
* a long-poll "watch" control request to the same DiT answers after each denoising step -> one ``step`` event each;
* while any step runs, the client's cancellation is polled every ``poll_s``; once it is cancelled a "cancel"
  control request stops the DiT job at its next step boundary (a queued job never starts) and the stream ends.

Events (JSON objects, each with ``type`` and ``t`` = seconds since the request arrived)::

    {"type": "accepted", "pipeline", "seed", "height", "width", "num_frames", "fps", "num_steps"}
    {"type": "stage_start", "stage"}                 stage: text | image | denoise | decode | encode
    {"type": "step", "step", "num_steps", "elapsed_s", "eta_s", "queued_s", "started_at"}
    {"type": "stage_end", "stage", "seconds"}
    {"type": "done", "seconds", "height", "width", "num_frames"}   (sent with VIDEO_MP4, + FRAMES if asked)
    {"type": "error", "code", "message"}             instead of done (sent by the adapter; then the error response)

``elapsed_s`` / ``eta_s`` count denoising time (from the job's first step); ``queued_s`` is how long the job waited
for a DiT slot; ``started_at`` is the unix time its first step began. This module is pure asyncio: the Triton adapter
supplies a :class:`Transport` (BLS calls, cancellation check, event sending).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, Protocol

from ..jobs import AFTER_STEP, CONTROL, FINISHED, JOB_ID, WAIT_MS
from .repository import Pipeline, Step, ensemble_steps

log = logging.getLogger(__name__)

__all__ = ["StepFailed", "Transport", "StreamedPipeline", "STAGES"]

STAGES = ("text", "image", "denoise", "decode", "encode")


class StepFailed(Exception):
    """A step answered an error (or the client went away). ``code``: Triton error name (INVALID_ARG, CANCELLED,
    UNAVAILABLE, INTERNAL, ...); the message is passed on unchanged."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Transport(Protocol):
    """What the orchestrator needs from Triton (tensors are opaque handles passed from step to step)."""

    async def infer(self, model: str, inputs: dict[str, Any], outputs: list[str],
                    parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """One BLS call; raises :class:`StepFailed` with the callee's error."""

    def is_cancelled(self) -> bool: ...

    def emit(self, event: dict) -> None: ...

    def value(self, tensor: Any) -> Any:
        """The single element of a [1] tensor (int or bytes)."""

    def shape(self, tensor: Any) -> tuple[int, ...]: ...


class StreamedPipeline:
    """Runs ``pipeline``'s ensemble steps for one request at a time per :meth:`run` call (many calls run at once)."""

    def __init__(self, pipeline: Pipeline, num_steps: int, poll_s: float = 0.05, watch_wait_s: float = 10.0):
        self.pipeline, self.num_steps = pipeline, num_steps
        self.steps = ensemble_steps(pipeline)
        self.poll_s, self.watch_wait_s = poll_s, watch_wait_s

    async def run(self, transport: Transport, inputs: dict[str, Any], want: set[str]) -> tuple[dict[str, Any], dict]:
        """Client tensors by name (only those sent) -> (the ensemble outputs named in ``want``: VIDEO_MP4, FRAMES;
        the ``done`` event to send with them). Emits the other events through ``transport``; raises StepFailed
        (CANCELLED when the client went away)."""
        run = _Run(self, transport, inputs, want)
        outputs = await run.run()
        return outputs, run.done_event()


class _Run:
    def __init__(self, spec: StreamedPipeline, transport: Transport, inputs: dict[str, Any], want: set[str]):
        self.spec, self.io, self.want = spec, transport, set(want)
        self.tensors: dict[str, Any] = dict(inputs)
        self.client_inputs = {io.name for io in spec.pipeline.client_inputs}
        self.t0 = time.monotonic()
        self.cancelled = False

    def emit(self, kind: str, **fields) -> None:
        self.io.emit({"type": kind, "t": round(time.monotonic() - self.t0, 6), **fields})

    def check_cancelled(self) -> None:
        if not self.cancelled and self.io.is_cancelled():
            self.cancelled = True
        if self.cancelled:
            raise StepFailed("CANCELLED", "request cancelled by the client")

    # --- the graph -------------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        todo, running = list(self.spec.steps), {}
        try:
            while todo or running:
                self.check_cancelled()
                for step in [s for s in todo if self._ready(s)]:
                    todo.remove(step)
                    running[asyncio.ensure_future(self._step(step))] = step
                if not running:
                    missing = {v for s in todo for v in s.inputs.values()} - set(self.tensors) - self.client_inputs
                    raise StepFailed("INTERNAL", f"{self.spec.pipeline.stream}: steps wait on {sorted(missing)}")
                done, _ = await asyncio.wait(running, timeout=self.spec.poll_s, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    running.pop(task)
                    task.result()  # a failed step ends the request with its error
        finally:
            for task in running:  # the client went away or a sibling failed: let these finish unobserved
                self._keep_in_background(task)
        return {name: self.tensors[name] for name in self.want if name in self.tensors}

    def done_event(self) -> dict:
        """The last event: total seconds and the video's size (from the DiT's latents [16, t, h, w]: both decoders
        give 1 + 4(t-1) frames of 8h x 8w)."""
        denoised = next((s for s in self.spec.steps if s.stage == "denoise"), None)
        size = {}
        if denoised is not None and next(iter(denoised.outputs.values())) in self.tensors:
            _, t, h, w = self.io.shape(self.tensors[next(iter(denoised.outputs.values()))])
            size = {"num_frames": 1 + 4 * (int(t) - 1), "height": 8 * int(h), "width": 8 * int(w)}
        seconds = round(time.monotonic() - self.t0, 6)
        return {"type": "done", "t": seconds, "seconds": seconds, **size}

    def _ready(self, step: Step) -> bool:
        return all(v in self.tensors or v in self.client_inputs for v in step.inputs.values())

    def _needed(self, step: Step) -> list[str]:
        """The step's outputs someone reads: a later step, or the client (ensemble outputs it asked for)."""
        later = {v for s in self.spec.steps for v in s.inputs.values()}
        return [k for k, v in step.outputs.items() if v in later or v in self.want]

    async def _step(self, step: Step) -> None:
        inputs = {k: self.tensors[v] for k, v in step.inputs.items() if v in self.tensors}
        outputs = self._needed(step)
        t = time.monotonic()
        if step.stage:
            self.emit("stage_start", stage=step.stage)
        if step.model == self.spec.pipeline.dit:
            result = await self._denoise(step, inputs, outputs)
        else:
            result = await self.io.infer(step.model, inputs, outputs)
        for k, v in step.outputs.items():
            if k in result:
                self.tensors[v] = result[k]
        if step.stage:
            self.emit("stage_end", stage=step.stage, seconds=round(time.monotonic() - t, 6))
        if step.model == self.spec.pipeline.request:
            self._accepted(result)

    def _accepted(self, checked: dict[str, Any]) -> None:
        value = lambda name: None if name not in checked else self.io.value(checked[name])  # noqa: E731
        self.emit("accepted", pipeline=self.spec.pipeline.name, seed=value("SEED"), height=value("HEIGHT"),
                  width=value("WIDTH"), num_frames=value("NUM_FRAMES"), fps=value("FPS"),
                  num_steps=self.spec.num_steps)

    # --- the DiT step: job id, progress long-polls, cancel ---------------------------------------------------------
    async def _denoise(self, step: Step, inputs: dict[str, Any], outputs: list[str]) -> dict[str, Any]:
        dit, job_id = step.model, uuid.uuid4().hex
        main = asyncio.ensure_future(self.io.infer(dit, inputs, outputs, {JOB_ID: job_id}))
        follow = asyncio.ensure_future(self._follow(dit, job_id, main))
        cancel_sent = False
        try:
            while not main.done():
                await asyncio.wait({main}, timeout=self.spec.poll_s)
                if not cancel_sent and (self.cancelled or self.io.is_cancelled()):
                    self.cancelled = cancel_sent = True
                    await self._control(dit, job_id, "cancel")
                    log.info("%s: client went away; DiT job %s told to stop", self.spec.pipeline.stream, job_id)
            result = main.result()  # raises the DiT's error (CANCELLED after a cancel, a timeout, ...)
            await asyncio.wait({follow}, timeout=5.0)  # the last step events, before stage_end
            return result
        finally:
            if not follow.done():
                self._keep_in_background(follow)
            if not main.done():
                self._keep_in_background(main)

    async def _follow(self, dit: str, job_id: str, main: asyncio.Future) -> None:
        """Long-poll the job's progress and emit one ``step`` event per completed denoising step."""
        after = 0
        while True:
            try:
                snap = await self._control(dit, job_id, "watch", after)
            except StepFailed:
                return
            for s in snap["steps"]:
                self.emit("step", step=s["step"], num_steps=s["num_steps"], elapsed_s=s["elapsed_s"],
                          eta_s=s["eta_s"], queued_s=snap["queued_s"], started_at=snap["started_at"])
                after = max(after, s["step"])
            if snap["status"] in FINISHED or (main.done() and snap["status"] == "unknown"):
                return

    async def _control(self, dit: str, job_id: str, control: str, after: int = 0) -> dict:
        params = {CONTROL: control, JOB_ID: job_id}
        if control == "watch":
            params.update({AFTER_STEP: after, WAIT_MS: int(self.spec.watch_wait_s * 1000)})
        out = await self.io.infer(dit, {}, ["PROGRESS"], params)
        return json.loads(self.io.value(out["PROGRESS"]))

    @staticmethod
    def _keep_in_background(task: asyncio.Future) -> None:
        """Keep a reference until ``task`` ends and swallow its outcome (the request has already been answered)."""
        _BACKGROUND.add(task)
        task.add_done_callback(_forget)


_BACKGROUND: set[asyncio.Future] = set()


def _forget(task: asyncio.Future) -> None:
    _BACKGROUND.discard(task)
    if not task.cancelled():
        task.exception()
