"""Client library + CLI (``wan-client``) for Wan2.1 distilled video models served by Triton over gRPC."""
from .client import (AsyncVideoStream, AsyncWanClient, GenerationRequest, VideoResult, VideoStream, WanClient,
                     generate_many, read_image)
from .errors import (InvalidRequestError, RequestCancelledError, RequestTimeoutError, ServerError,
                     ServerUnavailableError, WanClientError)
from .events import (STAGES, DenoiseProgress, RequestAccepted, StageFinished, StageStarted, StreamEvent,
                     VideoReady)

__all__ = ["WanClient", "AsyncWanClient", "VideoStream", "AsyncVideoStream", "GenerationRequest", "VideoResult",
           "generate_many", "read_image",
           "StreamEvent", "RequestAccepted", "StageStarted", "StageFinished", "DenoiseProgress", "VideoReady", "STAGES",
           "WanClientError", "InvalidRequestError", "ServerUnavailableError", "RequestTimeoutError",
           "RequestCancelledError", "ServerError"]
