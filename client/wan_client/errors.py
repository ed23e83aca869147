"""Typed client errors. Each carries the server's message, the gRPC status name and the number of attempts."""
from __future__ import annotations

import re


class WanClientError(Exception):
    """Base class. ``message``: the server's (or client's) text; ``code``: gRPC status name, e.g. "INVALID_ARGUMENT"."""

    def __init__(self, message: str, code: str | None = None, model: str | None = None, attempts: int = 1):
        super().__init__(message)
        self.message, self.code, self.model, self.attempts = message, code, model, attempts

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}" if self.code else self.message


class InvalidRequestError(WanClientError, ValueError):
    """INVALID_ARGUMENT: the request was rejected (the message names the input); also raised for client-side checks."""


class ServerUnavailableError(WanClientError):
    """UNAVAILABLE: server unreachable / not ready / model refused the request, after all retries."""


class RequestTimeoutError(WanClientError, TimeoutError):
    """DEADLINE_EXCEEDED: the call did not finish within its client timeout."""


class RequestCancelledError(WanClientError):
    """CANCELLED: the request was cancelled (by the server, or the client went away)."""


class ServerError(WanClientError):
    """Any other failure status (INTERNAL, NOT_FOUND, UNKNOWN, ...)."""


_BY_CODE = {
    "INVALID_ARGUMENT": InvalidRequestError,
    "UNAVAILABLE": ServerUnavailableError,
    "DEADLINE_EXCEEDED": RequestTimeoutError,
    "CANCELLED": RequestCancelledError,
}


_RETRYABLE_INTERNAL = re.compile(r"RST_STREAM with error code 2|Stub process '[^']*' is not healthy")  # from_triton


def status_name(status: str | None) -> str | None:
    """ "StatusCode.INVALID_ARGUMENT" -> "INVALID_ARGUMENT"."""
    return status.rsplit(".", 1)[-1] if status else None


def from_triton(exc: Exception, model: str | None = None, attempts: int = 1) -> WanClientError:
    """tritonclient's InferenceServerException -> the matching :class:`WanClientError` subclass.

    One INTERNAL is a transport failure, not a server verdict: an HTTP/2 proxy (nginx) whose upstream dies after
    the response headers went out can only reset the stream (RST_STREAM INTERNAL_ERROR, code 2), which gRPC
    reports as INTERNAL; a direct connection losing its server is UNAVAILABLE. It becomes UNAVAILABLE (retried).

    So does INTERNAL "Stub process '<instance>' is not healthy": a crashed python-backend stub, which the server's
    stub supervisor reloads within seconds (README, Reliability); a retry after that succeeds. While it reloads, the
    model and the pipelines using it are unloaded: NOT_FOUND "... has no available versions", also retried."""
    code = status_name(exc.status()) if hasattr(exc, "status") else None
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    if code == "INTERNAL" and _RETRYABLE_INTERNAL.search(message or ""):
        code = "UNAVAILABLE"
    if code == "NOT_FOUND" and "has no available versions" in (message or ""):  # being reloaded, not unknown
        code = "UNAVAILABLE"
    return _BY_CODE.get(code, ServerError)(message or str(exc), code=code, model=model, attempts=attempts)
