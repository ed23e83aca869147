"""Tensor plumbing shared by the model.py adapters (lives beside the models; imported after a sys.path insert).

Every adapter: Triton tensors in -> one typed call into ``wan_distill`` -> Triton tensors out. A bad request becomes a
per-request ``TritonError(INVALID_ARG)`` naming the field; a cancelled one ``CANCELLED``; the instance keeps serving.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable

import numpy as np
import triton_python_backend_utils as pb_utils

from wan_distill.errors import InvalidRequest
from wan_distill.pipeline import Cancelled


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


def respond(requests, handle: Callable, model_name: str) -> list:
    """Run ``handle(request) -> list[pb_utils.Tensor]`` per request, turning failures into per-request errors."""
    logger = pb_utils.Logger
    responses = []
    for request in requests:
        try:
            responses.append(pb_utils.InferenceResponse(output_tensors=handle(request)))
        except InvalidRequest as e:
            responses.append(pb_utils.InferenceResponse(
                error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
        except Cancelled as e:
            logger.log_info(f"{model_name}: {e}")
            responses.append(pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"{model_name}: request cancelled ({e})", pb_utils.TritonError.CANCELLED)))
        except Exception as e:  # a bug or a resource problem: report it, keep serving
            logger.log_error(f"{model_name}: {traceback.format_exc()}")
            responses.append(pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"{model_name}: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL)))
    return responses
