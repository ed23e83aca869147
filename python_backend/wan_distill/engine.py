"""The denoising engine: the one place where "one denoising step of one request" happens.

A :class:`DenoiseJob` is one request's run: its latents, step index, sampler state (holding the request's seeded
generator), conditioning, CFG on/off, a stop check and a progress callback. :meth:`DenoiseEngine.step` advances a set
of jobs by one step. Jobs of the same latent geometry share one DiT call: one row per job (two with CFG: cond and
uncond), per-row timesteps, per-row text context and I2V conditioning. Jobs of other geometries go in other calls.

* :meth:`DenoiseEngine.run_until_done` drives jobs to the end in the calling thread (the in-process pipeline);
* :class:`~wan_distill.batching.ContinuousBatcher` drives them from a background thread (the Triton DiT models):
  requests join at the next step and leave as soon as they finish or stop.

A job's result does not depend on which other jobs shared its DiT calls: every row is computed independently and
its noise comes from its own generator (tests/test_engine.py measures batched against alone).
"""
from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import RunConfig
from .errors import Cancelled, InvalidRequest
from .schedulers import SamplerState, make_sampler

log = logging.getLogger(__name__)

__all__ = ["DenoiseEngine", "DenoiseJob", "DiTCall", "JobStatus", "StepEvent"]

CLIP_TOKENS = 257  # CLIP ViT-H/14 at 224 px: class token + 16 x 16 patches


class JobStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class StepEvent:
    """Progress after a denoising step: ``step`` of ``num_steps`` done, seconds since the first step began."""

    job_id: str
    step: int
    num_steps: int
    elapsed_s: float
    eta_s: float


@dataclass(frozen=True)
class DiTCall:
    """One DiT forward of :meth:`DenoiseEngine.step`: ``rows`` batch rows (two per CFG job) for ``jobs`` jobs, each
    advanced by one step, in ``seconds``."""

    rows: int
    jobs: int
    seconds: float


@dataclass(eq=False)
class DenoiseJob:
    """One request's denoising run (made by :meth:`DenoiseEngine.new_job`)."""

    job_id: str
    latents: torch.Tensor                  # [16, t, h, w] fp32 on the engine's device: x at the current step
    context: torch.Tensor                  # [L, text_dim] in the DiT's dtype
    negative_context: torch.Tensor | None  # [L', text_dim], CFG runs only
    clip_fea: torch.Tensor | None          # [257, image_dim], I2V only
    y: torch.Tensor | None                 # [20, t, h, w], I2V only: 4 mask + 16 image-latent channels
    state: SamplerState                    # holds the request's seeded generator
    num_steps: int
    guidance_scale: float | None           # None: no CFG
    should_stop: Callable[[], bool | str] | None = None  # polled between steps; a str says why (e.g. "timed out")
    on_step: Callable[[StepEvent], None] | None = None
    on_done: Callable[[DenoiseJob], None] | None = None  # called by the driver once the job has left
    step_index: int = 0
    status: JobStatus = JobStatus.QUEUED
    error: BaseException | None = None
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    step_seconds: list[float] = field(default_factory=list)
    _stop_reason: str | None = None

    @property
    def geometry(self) -> tuple[int, ...]:
        return tuple(self.latents.shape)

    @property
    def rows(self) -> int:
        """DiT batch rows this job takes per step."""
        return 1 if self.guidance_scale is None else 2

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.DONE, JobStatus.CANCELLED, JobStatus.FAILED)

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the job to stop at the next step boundary (thread-safe: only sets a flag)."""
        self._stop_reason = self._stop_reason or reason

    def stop_reason(self) -> str | None:
        if self._stop_reason is None and self.should_stop is not None:
            stop = self.should_stop()
            if stop:
                self._stop_reason = stop if isinstance(stop, str) else "cancelled"
        return self._stop_reason

    def finish(self, status: JobStatus, error: BaseException | None = None) -> None:
        self.status, self.error = status, error

    def result(self) -> torch.Tensor:
        """The denoised latents [16, t, h, w] fp32 on CPU; raises the job's error if it did not finish cleanly."""
        if self.status is JobStatus.DONE:
            return self.latents.cpu()
        if self.error is not None:
            raise self.error
        raise RuntimeError(f"job {self.job_id} is {self.status.value}, not done")


class DenoiseEngine:
    """Runs the DiT over the sampler's steps for many jobs at once.

    ``dit``: a :class:`~wan_distill.models.dit.WanDiT` or anything with its call signature, ``.cfg`` and ``.dtype``
    (e.g. a sequence-parallel group). ``max_jobs_per_call``: at most this many jobs share one DiT call.
    ``on_call``: called after every DiT forward with its :class:`DiTCall` (serving metrics); set it any time.
    """

    def __init__(self, dit, run: RunConfig, device: torch.device | str, max_jobs_per_call: int = 4):
        if max_jobs_per_call < 1:
            raise ValueError(f"max_jobs_per_call must be >= 1, got {max_jobs_per_call}")
        self.dit, self.run, self.device = dit, run, torch.device(device)
        self.cfg, self.dtype = dit.cfg, dit.dtype
        self.sampler = make_sampler(run)
        self.max_jobs_per_call = max_jobs_per_call
        self.on_call: Callable[[DiTCall], None] | None = None

    @property
    def needs_negative_context(self) -> bool:
        return self.run.uses_cfg

    @property
    def num_steps(self) -> int:
        return len(self.sampler)

    # --- jobs --------------------------------------------------------------------------------------------
    def new_job(self, context: torch.Tensor, seed: int, latent_shape: Sequence[int],
                negative_context: torch.Tensor | None = None, clip_fea: torch.Tensor | None = None,
                y: torch.Tensor | None = None, *, job_id: str | None = None,
                should_stop: Callable[[], bool | str] | None = None, on_step: Callable[[StepEvent], None] | None = None,
                on_done: Callable[[DenoiseJob], None] | None = None) -> DenoiseJob:
        """Check the conditioning (errors name the served tensor) and draw the initial noise from ``seed``.

        context [L, text_dim] (+ negative [L', text_dim] for CFG; clip_fea [<=257, image_dim] and y [20, t, h, w] for
        I2V, which then fixes the latent shape) -> a queued job with latents [16, t, h, w]."""
        cfg = self.cfg
        context = self._text("TEXT_EMBEDDING", context)
        if self.needs_negative_context:
            if negative_context is None:
                raise InvalidRequest("NEGATIVE_TEXT_EMBEDDING", "is required by a CFG (baseline) model")
            negative_context = self._text("NEGATIVE_TEXT_EMBEDDING", negative_context)
        else:
            negative_context = None
        if cfg.is_i2v:
            clip_fea = self._finite("CLIP_FEATURE", clip_fea, (-1, cfg.image_dim))
            if clip_fea.shape[0] > CLIP_TOKENS:
                raise InvalidRequest("CLIP_FEATURE", f"must have at most {CLIP_TOKENS} tokens, got {clip_fea.shape[0]}")
            y = self._finite("IMAGE_LATENT", y, (20, -1, -1, -1))
            latent_shape = (16, *y.shape[1:])
        elif clip_fea is not None or y is not None:
            raise InvalidRequest("CLIP_FEATURE" if clip_fea is not None else "IMAGE_LATENT",
                                 "is only accepted by an image-to-video model")
        latent_shape = tuple(int(s) for s in latent_shape)
        self._check_latent_shape(latent_shape, "IMAGE_LATENT" if cfg.is_i2v else "HEIGHT/WIDTH/NUM_FRAMES")
        generator = torch.Generator(self.device).manual_seed(int(seed))
        latents = torch.randn(latent_shape, generator=generator, dtype=torch.float32, device=self.device)
        to = lambda a: None if a is None else a.to(self.device, self.dtype)  # noqa: E731
        return DenoiseJob(job_id or uuid.uuid4().hex, latents, to(context), to(negative_context), to(clip_fea), to(y),
                          self.sampler.new_state(generator), self.num_steps,
                          self.run.sample_guide_scale if self.run.uses_cfg else None,
                          should_stop=should_stop, on_step=on_step, on_done=on_done)

    def _finite(self, name: str, a: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
        if a is None:
            raise InvalidRequest(name, "is required")
        if a.ndim != len(shape) or any(s not in (-1, n) for s, n in zip(shape, a.shape)) or a.numel() == 0:
            want = ", ".join("*" if s == -1 else str(s) for s in shape)
            raise InvalidRequest(name, f"must have shape [{want}], got {list(a.shape)}")
        if not torch.isfinite(a).all():
            raise InvalidRequest(name, "must hold only finite values (found NaN or Inf)")
        return a

    def _text(self, name: str, a: torch.Tensor) -> torch.Tensor:
        a = self._finite(name, a, (-1, self.cfg.text_dim))
        if a.shape[0] > self.cfg.text_len:
            raise InvalidRequest(name, f"must have at most {self.cfg.text_len} tokens, got {a.shape[0]}")
        return a

    def _check_latent_shape(self, shape: tuple[int, ...], name: str) -> None:
        run, (pt, ph, pw) = self.run, self.cfg.patch_size
        c, t, h, w = shape
        frames, height, width = 4 * (t - 1) + 1, 8 * h, 8 * w
        if (c != 16 or t < 1 or h < 1 or w < 1 or t % pt or h % ph or w % pw or frames > run.max_frames
                or height > run.max_height or width > run.max_width):
            raise InvalidRequest(name, f"latent shape {list(shape)} ({frames} frames of {height}x{width}) is outside "
                                       f"this deployment: latent h, w multiples of {ph}, {pw}; at most "
                                       f"{run.max_frames} frames of {run.max_height}x{run.max_width}")

    def warm_up(self, height: int, width: int, num_frames: int) -> float:
        """One denoising step of a throw-away job of this video size (zero conditioning; for CFG both rows, for I2V
        a zero image latent of that size), so a compiled DiT (``compile_dit``) compiles its graph now instead of
        during the first request. Returns the seconds it took. ``on_call`` is not called."""
        cfg = self.cfg
        shape = (16, (num_frames - 1) // 4 + 1, height // 8, width // 8)
        context = torch.zeros(1, cfg.text_dim)
        kw = {"negative_context": context} if self.needs_negative_context else {}
        if cfg.is_i2v:
            kw.update(clip_fea=torch.zeros(CLIP_TOKENS, cfg.image_dim), y=torch.zeros(20, *shape[1:]))
        job = self.new_job(context, 0, shape, **kw)
        on_call, self.on_call = self.on_call, None
        t0 = time.perf_counter()
        try:
            self.step([job])
            if job.status == JobStatus.FAILED:
                raise RuntimeError(f"DiT warm-up step failed: {job.error}") from job.error
        finally:
            self.on_call = on_call
        return time.perf_counter() - t0

    # --- stepping ------------------------------------------------------------------------------------------
    def step(self, jobs: Sequence[DenoiseJob]) -> list[DenoiseJob]:
        """Advance every unfinished job by one denoising step. Returns the jobs that left at this step (done,
        stopped before it, or failed in it); the caller hands those to ``job.on_done``."""
        left, live = [], []
        for job in jobs:
            if job.finished:
                continue
            reason = job.stop_reason()
            if reason is not None:
                job.finish(JobStatus.CANCELLED, Cancelled(f"{reason} before denoising step {job.step_index + 1}"))
                left.append(job)
            else:
                live.append(job)
        for batch in self._batches(live):
            try:
                self._step_batch(batch)
            except Exception as e:  # one bad DiT call fails its rows only
                log.exception("denoising step failed for %d job(s)", len(batch))
                for job in batch:
                    job.finish(JobStatus.FAILED, e)
            left += [job for job in batch if job.finished]
        return left

    def run_until_done(self, jobs: Sequence[DenoiseJob]) -> None:
        """Drive ``jobs`` to the end in this thread (batched as :meth:`step` does)."""
        active = list(jobs)
        while active:
            self.step(active)
            active = [job for job in active if not job.finished]

    def denoise(self, context: torch.Tensor, seed: int, latent_shape: Sequence[int], **kw) -> torch.Tensor:
        """One job, start to end: :meth:`new_job` + :meth:`run_until_done` -> latents [16, t, h, w] fp32 CPU."""
        job = self.new_job(context, seed, latent_shape, **kw)
        self.run_until_done([job])
        return job.result()

    def _batches(self, jobs: list[DenoiseJob]) -> list[list[DenoiseJob]]:
        """Jobs of one latent geometry together, first come first, at most ``max_jobs_per_call`` per call."""
        groups: dict[tuple[int, ...], list[DenoiseJob]] = {}
        for job in jobs:
            groups.setdefault(job.geometry, []).append(job)
        n = self.max_jobs_per_call
        return [g[i:i + n] for g in groups.values() for i in range(0, len(g), n)]

    @torch.inference_mode()
    def _step_batch(self, batch: list[DenoiseJob]) -> None:
        t0 = time.monotonic()
        x, t, contexts, clip, y = [], [], [], [], []
        for job in batch:
            if job.started_at is None:
                job.started_at, job.status = t0, JobStatus.RUNNING
            rows = job.rows
            x += [job.latents] * rows
            t += [self.sampler.timesteps[job.step_index]] * rows
            contexts += [job.context] if rows == 1 else [job.context, job.negative_context]
            if job.clip_fea is not None:
                clip += [job.clip_fea] * rows
                y += [job.y] * rows
        flow = self.dit(torch.stack(x).to(self.dtype), torch.stack(t).to(self.device, torch.float32),
                        context=_pad_stack(contexts), clip_fea=torch.stack(clip) if clip else None,
                        y=torch.stack(y) if y else None).float()  # [rows, 16, t, h, w]
        seconds = time.monotonic() - t0
        if self.on_call is not None:
            try:
                self.on_call(DiTCall(len(x), len(batch), seconds))
            except Exception:  # a metrics consumer must never break the run
                log.exception("DiT call callback failed")
        row = 0
        for job in batch:
            v = flow[row]
            if job.guidance_scale is not None:
                v_uncond = flow[row + 1]
                v = v_uncond + job.guidance_scale * (v - v_uncond)
            row += job.rows
            job.latents = self.sampler.step(job.step_index, job.latents, v, job.state)
            job.step_index += 1
            job.step_seconds.append(seconds)
            if job.step_index == job.num_steps:
                job.finish(JobStatus.DONE)
            if job.on_step is not None:
                mean = sum(job.step_seconds) / len(job.step_seconds)
                event = StepEvent(job.job_id, job.step_index, job.num_steps, time.monotonic() - job.started_at,
                                  mean * (job.num_steps - job.step_index))
                try:
                    job.on_step(event)
                except Exception:  # a progress consumer must never break the run
                    log.exception("progress callback of job %s failed", job.job_id)


def _pad_stack(contexts: list[torch.Tensor]) -> torch.Tensor:
    """[L_i, C] each -> [B, max L_i, C], zero-padded at the end (the DiT zero-pads to text_len the same way)."""
    longest = max(c.shape[0] for c in contexts)
    return torch.stack([F.pad(c, (0, 0, 0, longest - c.shape[0])) for c in contexts])
