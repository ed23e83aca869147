"""Request validation: every field checked once, errors name the field and the rule (:class:`InvalidRequest`)."""
from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image, ImageOps

from .config import RunConfig
from .errors import InvalidRequest

MAX_PROMPT_BYTES = 64 * 1024
MAX_IMAGE_BYTES = 32 * 1024 * 1024
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
SEED_MAX = 2**63 - 1


@dataclass(frozen=True)
class Geometry:
    """Output video size. ``latent_shape`` = [16, 1+(F-1)//4, H/8, W/8]."""

    height: int
    width: int
    num_frames: int

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (16, (self.num_frames - 1) // 4 + 1, self.height // 8, self.width // 8)


def decode_text(name: str, raw: bytes | str | None, required: bool = True) -> str | None:
    """UTF-8 bytes from a BYTES tensor -> str."""
    if raw is None:
        if required:
            raise InvalidRequest(name, "is required")
        return None
    if isinstance(raw, str):
        text = raw
    else:
        if len(raw) > MAX_PROMPT_BYTES:
            raise InvalidRequest(name, f"must be at most {MAX_PROMPT_BYTES} bytes, got {len(raw)}")
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidRequest(name, f"must be valid UTF-8 ({e.reason} at byte {e.start})") from None
    if "\x00" in text:
        raise InvalidRequest(name, "must not contain NUL characters")
    return text


def check_seed(seed: int | None, run: RunConfig) -> int:
    if seed is None:
        return run.seed
    seed = int(seed)
    if not 0 <= seed <= SEED_MAX:
        raise InvalidRequest("SEED", f"must be an integer in [0, 2^63-1], got {seed}")
    return seed


def check_geometry(run: RunConfig, height: int | None = None, width: int | None = None,
                   num_frames: int | None = None) -> Geometry:
    """Fill unset fields from the run config; height/width multiples of 16 within limits, frames 4k+1 within limits."""
    h = run.target_height if height is None else int(height)
    w = run.target_width if width is None else int(width)
    f = run.target_video_length if num_frames is None else int(num_frames)
    for name, value, limit in (("HEIGHT", h, run.max_height), ("WIDTH", w, run.max_width)):
        if value % 16 or not 16 <= value <= limit:
            raise InvalidRequest(name, f"must be a multiple of 16 in [16, {limit}], got {value}")
    if (f - 1) % 4 or not 1 <= f <= run.max_frames:
        raise InvalidRequest("NUM_FRAMES", f"must be of the form 4k+1 in [1, {run.max_frames}], got {f}")
    return Geometry(h, w, f)


def check_fps(fps: int | None, run: RunConfig) -> int:
    fps = run.fps if fps is None else int(fps)
    if not 1 <= fps <= 120:
        raise InvalidRequest("FPS", f"must be in [1, 120], got {fps}")
    return fps


@dataclass(frozen=True)
class VideoRequest:
    """One generation request, every field checked and every default filled from the run config.

    ``geometry``: the output size for T2V; for I2V its ``height * width`` is Wan's ``max_area`` and the image's aspect
    ratio decides the final size. ``negative_prompt``: the unconditional text of a CFG run, None for distilled runs.
    """

    prompt: str
    seed: int
    geometry: Geometry
    fps: int
    negative_prompt: str | None = None
    image: bytes | None = None                                   # I2V: the encoded image as sent
    picture: Image.Image | None = field(default=None, compare=False, repr=False)  # I2V: decoded RGB


def parse_video_request(run: RunConfig, *, prompt: bytes | str | None, seed: int | None = None,
                        negative_prompt: bytes | str | None = None, height: int | None = None,
                        width: int | None = None, num_frames: int | None = None, fps: int | None = None,
                        image: bytes | None = None, i2v: bool = False, require_seed: bool = False) -> VideoRequest:
    """Validate a request against ``run`` (limits, defaults). Raises :class:`InvalidRequest` naming the field.

    ``require_seed``: served pipelines ask for an explicit SEED (same seed -> same video); in-process callers may omit
    it and get the run config's ``seed``."""
    text = decode_text("PROMPT", prompt)
    negative = decode_text("NEGATIVE_PROMPT", negative_prompt, required=False)
    if seed is None and require_seed:
        raise InvalidRequest("SEED", "is required (an integer in [0, 2^63-1]; the same seed gives the same video)")
    picture = None
    if i2v:
        picture = decode_image(image, run.max_image_pixels)
    elif image is not None:
        raise InvalidRequest("IMAGE", "is only accepted by image-to-video pipelines")
    return VideoRequest(text, check_seed(seed, run), check_geometry(run, height, width, num_frames),
                        check_fps(fps, run), (run.negative_prompt if negative is None else negative)
                        if run.uses_cfg else None, bytes(image) if i2v else None, picture)


def decode_image(data: bytes | None, max_pixels: int) -> Image.Image:
    """Encoded PNG/JPEG/WebP bytes -> upright RGB PIL image (EXIF orientation applied), bounded in size before any
    pixel is decoded."""
    if data is None or len(data) == 0:
        raise InvalidRequest("IMAGE", "is required for image-to-video (encoded PNG, JPEG or WebP bytes)")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidRequest("IMAGE", f"must be at most {MAX_IMAGE_BYTES} bytes, got {len(data)}")
    try:
        img = Image.open(io.BytesIO(bytes(data)), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise InvalidRequest("IMAGE", f"has more pixels than the limit {max_pixels}") from None
    except Exception:
        raise InvalidRequest("IMAGE", "could not be decoded: send PNG, JPEG or WebP bytes") from None
    w, h = img.size
    if w * h > max_pixels:
        raise InvalidRequest("IMAGE", f"has {w}x{h} = {w * h} pixels, more than the limit {max_pixels}")
    if w < 16 or h < 16:
        raise InvalidRequest("IMAGE", f"must be at least 16x16 pixels, got {w}x{h}")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)  # a camera's orientation tag (portrait shots) turns the pixels upright
    except Exception:
        raise InvalidRequest("IMAGE", "is truncated or corrupt and could not be decoded") from None
    return img.convert("RGB")
