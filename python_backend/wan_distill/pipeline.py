"""T2V / I2V pipeline stages, shared by the in-process API and the Triton adapters.

Stages (each one Triton model in the served ensembles):
  text   : prompt -> T5 context [L, text_dim]                         (:class:`~.models.text_encoder.WanTextEncoder`)
  image  : RGB image -> CLIP tokens [257, image_dim] + y [20, t, h, w]  (:class:`ImageConditioner`, I2V only)
  dit    : context (+ clip, y) + seed -> latents [16, t, h, w]         (:class:`~.engine.DenoiseEngine`)
  vae    : latents -> uint8 frames [F, H, W, 3]                        (:meth:`~.models.vae.WanVAE.decode_uint8_chunks`)
  mp4    : frames -> H.264 MP4 bytes, encoded while the next latent frame decodes      (:func:`~.video.decode_to_mp4`)
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import DiTConfig, RunConfig
from .engine import DenoiseEngine
from .errors import InvalidRequest
from .loaders.checkpoint import load_dit
from .loaders.image_encoder import load_image_encoder
from .loaders.lora import resolve_loras
from .loaders.policy import default_device, default_dtype
from .loaders.text_encoder import load_text_encoder
from .loaders.vae import load_decoder, load_vae_from_dir
from .models.dit import WanDiT
from .models.image_encoder import WanImageEncoder
from .models.text_encoder import WanTextEncoder
from .models.vae import WanVAE
from .parallel import SequenceParallelDiT
from .requests import Geometry, VideoRequest, decode_image, parse_video_request
from .video import decode_to_mp4

log = logging.getLogger(__name__)

VAE_STRIDE = (4, 8, 8)


# ----------------------------------------------------------------------------------------------
# I2V conditioning
# ----------------------------------------------------------------------------------------------
@dataclass
class ImageCondition:
    clip_fea: torch.Tensor  # [257, image_dim] float32
    y: torch.Tensor  # [20, t, h/8, w/8] float32: 4 mask channels | 16 VAE channels of [image, 0, 0, ...]
    geometry: Geometry  # the size Wan derives from max_area and the image's aspect ratio


def i2v_geometry(image_hw: tuple[int, int], max_area: int, num_frames: int) -> Geometry:
    """Wan2.1 I2V size rule: keep the image's aspect ratio at ``max_area`` pixels, latent sides even."""
    h, w = image_hw
    aspect = h / w
    lat_h = round(np.sqrt(max_area * aspect) // VAE_STRIDE[1] // 2 * 2)
    lat_w = round(np.sqrt(max_area / aspect) // VAE_STRIDE[2] // 2 * 2)
    if lat_h < 2 or lat_w < 2:
        raise InvalidRequest("IMAGE", f"aspect ratio {w}x{h} is too extreme for a {max_area}-pixel video")
    return Geometry(lat_h * 8, lat_w * 8, num_frames)


def i2v_mask(num_frames: int, lat_h: int, lat_w: int) -> torch.Tensor:
    """[4, 1+(F-1)//4, lat_h, lat_w]: 1 on latent frame 0 (the given image), 0 elsewhere."""
    t = (num_frames - 1) // 4 + 1
    mask = torch.zeros(4, t, lat_h, lat_w)
    mask[:, 0] = 1.0
    return mask


class ImageConditioner:
    """CLIP tokens + VAE-encoded first frame + mask for I2V (Wan2.1 ``WanI2V.generate``)."""

    def __init__(self, clip: WanImageEncoder, vae: WanVAE, device: torch.device, max_image_pixels: int):
        self.clip, self.vae, self.device, self.max_image_pixels = clip, vae, device, max_image_pixels

    def decode(self, data: bytes | None) -> Image.Image:
        return decode_image(data, self.max_image_pixels)

    @torch.inference_mode()
    def __call__(self, image: Image.Image, max_area: int, num_frames: int) -> ImageCondition:
        img = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, H, W] in [0, 1]
        img = img.sub_(0.5).div_(0.5).to(self.device)
        geo = i2v_geometry(tuple(img.shape[1:]), max_area, num_frames)
        clip_fea = self.clip.encode(img).float()
        first = F.interpolate(img[None], size=(geo.height, geo.width), mode="bicubic", align_corners=False)
        video = torch.cat([first.transpose(0, 1), img.new_zeros(3, num_frames - 1, geo.height, geo.width)], dim=1)
        latent = self.vae.encode(video[None].to(self._vae_dtype()))[0].float()
        _, t, lat_h, lat_w = latent.shape
        y = torch.cat([i2v_mask(num_frames, lat_h, lat_w).to(latent.device), latent])
        return ImageCondition(clip_fea.cpu(), y.cpu(), geo)

    def _vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype


# ----------------------------------------------------------------------------------------------
# In-process pipeline
# ----------------------------------------------------------------------------------------------
@dataclass
class VideoResult:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    mp4: bytes
    latents: torch.Tensor  # [16, t, h, w] fp32
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


def load_run_dit(model_dir: Path, run: RunConfig, device: torch.device) -> WanDiT:
    """The DiT of a run in this process: its weights (LoRAs merged, quantized formats handled), the policy's dtype
    (bf16 on GPU / fp32 on CPU, see ``loaders.policy``), compiled if asked."""
    dit = load_dit(model_dir, run, device=device)
    if run.compile_dit:
        dit.compile_blocks()
    return dit


def load_dit_for_run(model_dir: Path, run: RunConfig, device: torch.device) -> WanDiT | SequenceParallelDiT:
    """``run.sp_size`` 1: :func:`load_run_dit`; more: a :class:`SequenceParallelDiT` led by this process, whose
    ``sp_size - 1`` workers load the DiT with the same call (close it with ``.close()``; it also stops on exit)."""
    if run.sp_size == 1:
        return load_run_dit(model_dir, run, device)
    model_dir = Path(model_dir)
    return SequenceParallelDiT(functools.partial(load_run_dit, model_dir, run), run.sp_size, device,
                               cfg=DiTConfig.from_json(model_dir / "config.json"))


def warms_up_at_load(run: RunConfig, device: torch.device | str) -> bool:
    """Compile at load: a compiled DiT on CUDA (``compile_dit``) runs one warm-up step unless ``warmup_dit`` is false;
    never on CPU (nothing to compile there by default, and a CPU step at the default size is slow)."""
    return run.compile_dit and run.warmup_dit and torch.device(device).type == "cuda"


def load_engine(model_dir: Path, run: RunConfig, device: torch.device, max_jobs_per_call: int = 4) -> DenoiseEngine:
    """The DiT of ``model_dir`` (weights chosen by ``run``; a sequence-parallel group when ``run.sp_size`` > 1)
    behind a denoising engine on ``device``; warmed up at the run's default size when :func:`warms_up_at_load`."""
    engine = DenoiseEngine(load_dit_for_run(model_dir, run, device), run, device, max_jobs_per_call)
    if warms_up_at_load(run, device):
        size = (run.target_height, run.target_width, run.target_video_length)
        seconds = engine.warm_up(*size)
        log.info("%s: DiT warmed up (compiled) at %dx%dx%d in %.1f s", run.source, *size, seconds)
    return engine


def text_len_of(model_dir: Path, run: RunConfig) -> int:
    return run.text_len or DiTConfig.from_json(Path(model_dir) / "config.json").text_len


class WanPipeline:
    """In-process T2V / I2V: the same stages the Triton ensembles chain, in one process."""

    def __init__(self, run: RunConfig, text_encoder: WanTextEncoder, engine: DenoiseEngine, vae: WanVAE,
                 conditioner: ImageConditioner | None = None):
        self.run, self.text_encoder, self.engine, self.vae, self.conditioner = (
            run, text_encoder, engine, vae, conditioner)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, run: RunConfig, device: str | torch.device | None = None) -> WanPipeline:
        model_dir = Path(model_dir)
        device = torch.device(device) if device is not None else default_device()
        engine = load_engine(model_dir, run, device)
        vae = load_decoder(model_dir, run, device)  # the Wan VAE, or the tiny decoder when the run sets use_tae
        text_encoder = load_text_encoder(model_dir, device, text_len_of(model_dir, run))
        conditioner = None
        if engine.cfg.is_i2v:
            encoder_vae = vae if isinstance(vae, WanVAE) else load_vae_from_dir(model_dir, device)
            conditioner = ImageConditioner(load_image_encoder(model_dir, device), encoder_vae, device,
                                           run.max_image_pixels)
        return cls(run, text_encoder, engine, vae, conditioner)

    def encode_text(self, prompt: str, negative_prompt: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> context [L, text_dim] (+ the negative prompt's, when given) fp32 CPU."""
        prompts = [prompt] + ([negative_prompt] if negative_prompt is not None else [])
        out = [c.float().cpu() for c in self.text_encoder.encode(prompts)]
        return out[0], (out[1] if len(out) > 1 else None)

    def text_to_video(self, prompt: str, seed: int | None = None, height: int | None = None, width: int | None = None,
                      num_frames: int | None = None, fps: int | None = None, negative_prompt: str | None = None,
                      should_stop: Callable[[], bool] | None = None) -> VideoResult:
        req = parse_video_request(self.run, prompt=prompt, seed=seed, negative_prompt=negative_prompt, height=height,
                                  width=width, num_frames=num_frames, fps=fps)
        timings: dict[str, float] = {}
        with _timed(timings, "text"):
            context, negative = self.encode_text(req.prompt, req.negative_prompt)
        with _timed(timings, "dit"):
            latents = self.engine.denoise(context, req.seed, req.geometry.latent_shape, negative_context=negative,
                                          should_stop=should_stop)
        return self._finish(latents, req, timings)

    def image_to_video(self, image: bytes, prompt: str, seed: int | None = None, height: int | None = None,
                       width: int | None = None, num_frames: int | None = None, fps: int | None = None,
                       negative_prompt: str | None = None, should_stop: Callable[[], bool] | None = None) -> VideoResult:
        if self.conditioner is None:
            raise InvalidRequest("IMAGE", "this deployment serves a text-to-video model; image-to-video needs an I2V model")
        req = parse_video_request(self.run, prompt=prompt, seed=seed, negative_prompt=negative_prompt, height=height,
                                  width=width, num_frames=num_frames, fps=fps, image=image, i2v=True)
        timings: dict[str, float] = {}
        with _timed(timings, "text"):
            context, negative = self.encode_text(req.prompt, req.negative_prompt)
        geo = req.geometry
        with _timed(timings, "image"):
            cond = self.conditioner(req.picture, geo.height * geo.width, geo.num_frames)
        with _timed(timings, "dit"):
            latents = self.engine.denoise(context, req.seed, (16, *cond.y.shape[1:]), negative_context=negative,
                                          clip_fea=cond.clip_fea, y=cond.y, should_stop=should_stop)
        return self._finish(latents, req, timings)

    def _finish(self, latents: torch.Tensor, req: VideoRequest, timings: dict[str, float]) -> VideoResult:
        """Decode with the MP4 encode overlapped (as wan_decode_to_mp4): ``vae`` = the decode loop, ``mp4`` = the
        encode left after the last frame decoded (the rest ran behind the decode)."""
        out = decode_to_mp4(self.vae.decode_uint8_chunks(latents.to(self.engine.device)),
                            self.vae.num_frames(latents.shape[1]), req.fps, keep_frames=True)
        timings["vae"] = out.decode_seconds
        timings["mp4"] = out.total_seconds - out.decode_seconds
        return VideoResult(out.frames, out.mp4, latents, timings)


class _timed:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0


__all__ = ["ImageCondition", "ImageConditioner", "VideoResult", "WanPipeline", "default_device", "default_dtype",
           "i2v_geometry", "i2v_mask", "load_decoder", "load_dit_for_run", "load_engine", "load_image_encoder",
           "load_run_dit", "load_text_encoder", "load_vae_from_dir", "resolve_loras", "text_len_of", "warms_up_at_load"]
