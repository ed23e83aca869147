"""wan_*_stream (decoupled): the pipeline's ensemble steps by BLS, streamed as JSON events, with a cancel that stops
the DiT (``wan_distill.serving.stream``). Inputs: the ensemble's. Responses: EVENT each; the last one (FINAL) carries
VIDEO_MP4 (+ FRAMES when the client asks for that output). A failure (the first failing step's error, unchanged) is an
``error`` event with its gRPC status name, then the final error response: a stream error reaches a gRPC client as a
message without a status unless the stream asked for ``triton_grpc_error``, which crashes tritonserver 2.51 (SIGSEGV
in its stream handler after a few hundred failed streams; measured).

``async def execute`` starts one task per request and returns, so any number of streams run at once in this process
(no torch here: it only moves tensors between the other models). Shared by wan_t2v_stream, wan_i2v_stream and the
*_baseline_stream models (symlinks).
"""
import asyncio
import json
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__/ in model_repository/: Triton would take it for a model
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # model_repository/ (triton_io)

import numpy as np  # noqa: E402
import triton_io  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from wan_distill.deployment import run_config_from_triton_args  # noqa: E402
from wan_distill.serving.repository import pipeline  # noqa: E402
from wan_distill.serving.stream import StepFailed, StreamedPipeline  # noqa: E402

class TritonPythonModel:
    def initialize(self, args):
        self.name, run, params = run_config_from_triton_args(args)
        self.pipeline = StreamedPipeline(pipeline(params["pipeline"]), run.infer_steps,
                                         poll_s=int(params.get("poll_ms") or 50) / 1000)
        self.tasks = set()

    async def execute(self, requests):
        loop = asyncio.get_running_loop()
        for request in requests:
            task = loop.create_task(self._serve(request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return None

    async def _serve(self, request):
        sender = request.get_response_sender()
        transport = BlsTransport(request, sender)
        want = set(request.requested_output_names()) & {"VIDEO_MP4", "FRAMES"}
        inputs = {t.name(): t for t in request.inputs()}
        try:
            out, done = await self.pipeline.run(transport, inputs, want | {"VIDEO_MP4"})
            tensors = [event_tensor(done)] + [_named(name, out[name]) for name in sorted(want) if name in out]
            sender.send(pb_utils.InferenceResponse(output_tensors=tensors),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except StepFailed as e:
            if e.code == "CANCELLED":
                pb_utils.Logger.log_info(f"{self.name}: {e.message}")
            _fail(sender, e.code, e.message)
        except Exception as e:
            _fail(sender, "INTERNAL", triton_io.error_response(e, self.name).error().message())

    def finalize(self):
        for task in list(self.tasks):
            task.cancel()


class BlsTransport:
    """``wan_distill.serving.stream.Transport`` over BLS: children get the time left of this request's timeout."""

    def __init__(self, request, sender):
        self.request, self.sender = request, sender
        timeout_us = request.timeout()
        self.deadline = time.monotonic() + timeout_us / 1e6 if timeout_us else None

    async def infer(self, model, inputs, outputs, parameters=None):
        timeout_us = 0
        if self.deadline is not None:
            timeout_us = int((self.deadline - time.monotonic()) * 1e6)
            if timeout_us <= 0:
                raise StepFailed("CANCELLED", f"request timed out before {model}")
        bls = pb_utils.InferenceRequest(
            model_name=model, inputs=[_named(name, t) for name, t in inputs.items()], requested_output_names=outputs,
            parameters=parameters or {}, timeout=timeout_us)
        response = await bls.async_exec()
        if response.has_error():
            message = response.error().message()
            raise StepFailed(triton_io.error_code_of(message, model), message)
        result = {name: pb_utils.get_output_tensor_by_name(response, name) for name in outputs}
        return {k: v for k, v in result.items() if v is not None}

    def is_cancelled(self):
        return self.sender.is_cancelled()

    def emit(self, event):
        self.sender.send(pb_utils.InferenceResponse(output_tensors=[event_tensor(event)]))

    def value(self, tensor):
        value = tensor.as_numpy().reshape(-1)[0]
        return value if isinstance(value, (bytes, str)) else value.item()

    def shape(self, tensor):
        return tuple(tensor.shape())


def event_tensor(event):
    return pb_utils.Tensor("EVENT", np.array([json.dumps(event).encode("utf-8")], dtype=np.object_))


def _named(name, tensor):
    """``tensor`` under ``name`` (a step's output feeds an input or a client output of another name, e.g. the video
    encoder's FRAMES_OUT is the client's FRAMES)."""
    return tensor if tensor.name() == name else pb_utils.Tensor(name, tensor.as_numpy())


GRPC_STATUS = {"INVALID_ARG": "INVALID_ARGUMENT", "UNSUPPORTED": "UNIMPLEMENTED"}  # the others keep their name


def _fail(sender, code, message):
    """The ``error`` event (what the client raises), then the final error response (Triton's failure count)."""
    event = {"type": "error", "code": GRPC_STATUS.get(code, code), "message": message}
    try:
        sender.send(pb_utils.InferenceResponse(output_tensors=[event_tensor(event)]))
        sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, getattr(pb_utils.TritonError, code))),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    except Exception:  # the client is gone (cancelled stream): nothing left to tell it
        pass
