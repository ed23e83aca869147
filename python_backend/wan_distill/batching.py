"""Continuous step-level batching: one background thread drives a :class:`~wan_distill.engine.DenoiseEngine`.

Requests are submitted as jobs at any time. At every step boundary the thread admits waiting jobs (first come first,
up to ``max_active`` running at once), drops the ones that were cancelled while they waited (they never start), and
advances every running job by one step with :meth:`DenoiseEngine.step` (jobs of one geometry share a DiT call). A job
that finishes, is cancelled or fails leaves at once and its ``on_done`` runs. A new request therefore waits at most
one step, not a whole video, while a slot is free; when ``max_queued`` jobs already wait, :meth:`submit` raises
:class:`~wan_distill.errors.Overloaded` at once (served as UNAVAILABLE, which clients retry).

An idle engine waits up to ``max_wait_s`` after the first arrival so that requests sent together start together.
``on_counts(active, queued)`` is called whenever either count changes (serving metrics).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from .engine import DenoiseEngine, DenoiseJob, JobStatus
from .errors import Cancelled, Overloaded

log = logging.getLogger(__name__)

__all__ = ["ContinuousBatcher"]


class ContinuousBatcher:
    def __init__(self, engine: DenoiseEngine, max_active: int | None = None, max_queued: int = 32,
                 max_wait_s: float = 0.002, name: str = "denoise",
                 on_counts: Callable[[int, int], None] | None = None):
        self.engine, self.on_counts = engine, on_counts
        self.max_active = max_active or engine.max_jobs_per_call
        self.max_queued, self.max_wait_s = max_queued, max_wait_s
        self._pending: deque[DenoiseJob] = deque()
        self._active: list[DenoiseJob] = []
        self._cv = threading.Condition()
        self._closed = False
        self._last_counts, self._report_lock = (0, 0), threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"{name}-engine", daemon=True)
        self._thread.start()

    # --- public ------------------------------------------------------------------------------------------
    def submit(self, job: DenoiseJob) -> None:
        """Queue a job; its ``on_done`` runs on the engine thread once it has left. Raises Overloaded when full."""
        with self._cv:
            if self._closed:
                raise Overloaded("the denoising engine is shutting down")
            if len(self._pending) >= self.max_queued:
                raise Overloaded(f"{len(self._pending)} requests are already waiting for the denoiser "
                                 f"(max_queued_jobs {self.max_queued}); retry later")
            self._pending.append(job)
            self._cv.notify_all()
        self._report()

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._active)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop: running and waiting jobs are cancelled (their on_done runs), the thread ends."""
        with self._cv:
            self._closed = True
            for job in [*self._pending, *self._active]:
                job.cancel("the server is shutting down")
            self._cv.notify_all()
        self._thread.join(timeout_s)

    # --- engine thread -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._active and not self._closed:
                    self._cv.wait()
                if self._closed and not self._active:
                    dropped, self._pending = list(self._pending), deque()
                    break
                if not self._active and self.max_wait_s > 0:  # idle: let requests sent together start together
                    deadline = time.monotonic() + self.max_wait_s
                    while len(self._pending) < self.max_active and (left := deadline - time.monotonic()) > 0:
                        self._cv.wait(left)
                waiting = list(self._pending)
            stopped = [job for job in waiting if job.stop_reason() is not None]  # outside the lock: may call the server
            with self._cv:
                for job in stopped:
                    self._pending.remove(job)
                while self._pending and len(self._active) < self.max_active:
                    self._active.append(self._pending.popleft())
                running = list(self._active)
            self._report()
            for job in stopped:
                job.finish(JobStatus.CANCELLED, Cancelled(f"{job.stop_reason()} while waiting; never started"))
                self._done(job)
            if not running:
                continue
            left = self.engine.step(running)
            with self._cv:
                for job in left:
                    self._active.remove(job)
            if left:
                self._report()
            for job in left:
                self._done(job)
        for job in dropped:
            job.finish(JobStatus.CANCELLED, Cancelled("the server is shutting down; never started"))
            self._done(job)

    def _report(self) -> None:
        if self.on_counts is None:
            return
        with self._report_lock:  # submit() and the engine thread both report; the last call sees the last counts
            counts = (len(self._active), len(self._pending))
            if counts == self._last_counts:
                return
            self._last_counts = counts
            try:
                self.on_counts(*counts)
            except Exception:
                log.exception("on_counts callback failed")

    @staticmethod
    def _done(job: DenoiseJob) -> None:
        if job.on_done is None:
            return
        try:
            job.on_done(job)
        except Exception:
            log.exception("completion callback of job %s failed", job.job_id)
