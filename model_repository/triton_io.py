"""Tensor plumbing shared by the model.py adapters (lives beside the models; imported after a sys.path insert).

Every adapter: Triton tensors in -> one typed call into ``wan_distill`` -> Triton tensors out. A bad request becomes a
per-request ``TritonError(INVALID_ARG)`` naming the field; a cancelled one ``CANCELLED``; a full queue ``UNAVAILABLE``
(clients retry it); the instance keeps serving. No torch here: the video encoder and request steps do without it.
"""
from __future__ import annotations

import re
import traceback
from collections.abc import Callable

import numpy as np
import triton_python_backend_utils as pb_utils

from wan_distill.errors import Cancelled, InvalidRequest, Overloaded


def scalar(request, name: str, required: bool = False):
    """The single element of a [1]-shaped input, or None when the optional input is absent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise InvalidRequest(name, "is required")
        return None
    array = tensor.as_numpy()
    if array.size != 1:
        raise InvalidRequest(name, f"must hold exactly one element, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    return value if isinstance(value, (bytes, str)) else value.item()


def array(request, name: str, required: bool = True) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise InvalidRequest(name, "is required")
        return None
    return tensor.as_numpy()


def tensor(name: str, value: np.ndarray) -> pb_utils.Tensor:
    return pb_utils.Tensor(name, np.ascontiguousarray(value))


def bytes_tensor(name: str, value: bytes) -> pb_utils.Tensor:
    return pb_utils.Tensor(name, np.array([value], dtype=np.object_))


def error_response(exc: BaseException, model_name: str) -> pb_utils.InferenceResponse:
    """The response for a failed request: INVALID_ARG naming the field, CANCELLED, UNAVAILABLE, or INTERNAL."""
    if isinstance(exc, InvalidRequest):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
    if isinstance(exc, Cancelled):
        pb_utils.Logger.log_info(f"{model_name}: {exc}")
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(
            f"{model_name}: request cancelled ({exc})", pb_utils.TritonError.CANCELLED))
    if isinstance(exc, Overloaded):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(
            f"{model_name}: {exc}", pb_utils.TritonError.UNAVAILABLE))
    pb_utils.Logger.log_error(f"{model_name}: {''.join(traceback.format_exception(exc))}")
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(
        f"{model_name}: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL))


def respond(requests, handle: Callable, model_name: str) -> list:
    """Run ``handle(request) -> list[pb_utils.Tensor]`` per request, turning failures into per-request errors."""
    responses = []
    for request in requests:
        try:
            responses.append(pb_utils.InferenceResponse(output_tensors=handle(request)))
        except Exception as e:  # a bad request, or a bug / resource problem: report it, keep serving
            responses.append(error_response(e, model_name))
    return responses


def send_final(request, response: pb_utils.InferenceResponse) -> None:
    """Send the one response of a request whose execute() returned early (the DiT's background engine)."""
    request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


_INPUT_NAME = re.compile(r"^(?:[A-Z][A-Z0-9_]*(?:/[A-Z][A-Z0-9_]*)*|wan_[a-z_]+): ")


def error_code_of(message: str, model_name: str) -> str:
    """The TritonError code name of an error a BLS call to ``model_name`` returned. Triton 2.51 hands every BLS error
    to the caller as INTERNAL; the code is read back from the shapes :func:`error_response` writes: INVALID_ARG
    messages start with the input's name ("HEIGHT: ..."), the others with the model's name and say which they are;
    a full Triton queue (``max_queue_size``) is UNAVAILABLE; anything else stays INTERNAL."""
    if "Exceeds maximum queue size" in message:
        return "UNAVAILABLE"
    if message.startswith(f"{model_name}: "):
        if ": request cancelled (" in message:
            return "CANCELLED"
        return "UNAVAILABLE" if message.endswith("retry later") else "INTERNAL"
    return "INVALID_ARG" if _INPUT_NAME.match(message) else "INTERNAL"
