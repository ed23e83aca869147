"""Client library + CLI (``wan-client``) for Wan2.1 distilled video models served by Triton over gRPC."""
from .client import AsyncWanClient, GenerationRequest, VideoResult, WanClient, generate_many, read_image
from .errors import (InvalidRequestError, RequestCancelledError, RequestTimeoutError, ServerError,
                     ServerUnavailableError, WanClientError)

__all__ = ["WanClient", "AsyncWanClient", "GenerationRequest", "VideoResult", "generate_many", "read_image",
           "WanClientError", "InvalidRequestError", "ServerUnavailableError", "RequestTimeoutError",
           "RequestCancelledError", "ServerError"]
